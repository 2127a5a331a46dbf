"""Lines that appear later in a series than the frames the cell-line search used.

They are never absorbed into the model: a line the cell did not have at the start may be a new
phase. :func:`late_lines` searches every later frame's residual with the same statistics as the
cell-line search (:mod:`insitu_xrd.core.residual_lines`) and reports each line no modelled peak
explains, with its d-spacing and the frames it is in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from insitu_xrd.core.pattern import d_from_two_theta_deg
from insitu_xrd.core.residual_lines import excess_maps, residual_lines
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.sequential.cell_lines import DETECT_SIGMA, INDEX_HEIGHT_FRACTION, MISFIT_HEIGHT_FACTOR

__all__ = ["late_lines"]


def late_lines(results: xr.Dataset, patterns: xr.Dataset, spec: RefinementSpec, after: Sequence[int],
               min_sigma: float = DETECT_SIGMA) -> list[dict]:
    """Lines of the residual (patterns' intensity - the results' calc) of frames after the first
    ones (``after``: the frames searched by :func:`detect_cell_lines`) that are significant
    (``min_sigma``) where the model of that frame has no peak: never absorbed, flagged with their
    d-spacing and the frames they are in (first frame first). [{d_A, two_theta_deg, first_frame,
    frames, max_sigma}] sorted by first frame."""
    wavelength = float(patterns.attrs["wavelength_A"])
    x_all = np.asarray(results["two_theta"].values, float)
    first_set = set(int(i) for i in after)
    start = max(first_set) + 1 if first_set else 0
    found: list[dict] = []
    st = [str(s) for s in results["status"].values]
    for i in range(start, results.sizes["frame"]):
        if st[i] not in ("ok", "refit"):
            continue
        calc = np.asarray(results["calc"].values[i], float)
        obs = np.asarray(patterns["intensity"].values[i], float)
        keep = np.isfinite(calc) & np.isfinite(obs)
        if keep.sum() < 50:
            continue
        x, r = x_all[keep], (obs - calc)[keep]
        step = float(np.median(np.diff(x)))
        # the model's peaks (phases, diffuse components, the cell's peaks): calc above a smooth floor
        size = max(3, int(0.3 / step))
        floor = ndimage.uniform_filter1d(ndimage.minimum_filter1d(calc[keep], size), size)
        model = calc[keep] - np.minimum(floor, calc[keep])
        tops = np.nonzero((model >= ndimage.maximum_filter1d(model, 5)) & (model > 0))[0]
        sig = (np.asarray(patterns["sigma"].values[i], float)[keep] if "sigma" in patterns
               else np.sqrt(np.abs(obs[keep]) + 1.0))
        maps = excess_maps(x, r, sig, 3 * step, max_scales=6)
        def explained(center: float, fwhm: float, height: float) -> bool:
            """A modelled peak is there: misfit of a listed phase, not a new line."""
            at = float(np.interp(center, x, model))
            near = tops[np.abs(x[tops] - center) <= 1.5 * fwhm]
            return at >= MISFIT_HEIGHT_FACTOR * height or bool(
                len(near) and float(np.max(model[near])) >= INDEX_HEIGHT_FRACTION * height)

        for ln in residual_lines(x, r, maps, min_sigma, explained=explained):
            if explained(ln.two_theta_deg, ln.fwhm_deg, ln.height):
                continue
            d = float(d_from_two_theta_deg(np.array([ln.two_theta_deg]), wavelength)[0])
            for g in found:
                if abs(g["two_theta_deg"] - ln.two_theta_deg) <= max(g["fwhm_deg"], ln.fwhm_deg):
                    if i not in g["frames"]:
                        g["frames"].append(i)
                    g["max_sigma"] = max(g["max_sigma"], round(ln.sigma, 1))
                    break
            else:
                found.append({"d_A": round(d, 5), "two_theta_deg": round(ln.two_theta_deg, 5), "fwhm_deg": round(ln.fwhm_deg, 5),
                              "first_frame": i, "frames": [i], "max_sigma": round(ln.sigma, 1)})
    return sorted(found, key=lambda g: (g["first_frame"], g["d_A"]))
