"""One fit as a one-frame series: ``insitu-xrd refine``'s result in the sequential schema.

:func:`fit_to_dataset` turns a FitResult into the Dataset :func:`insitu_xrd.pipeline.sequential.
records_to_dataset` writes for a series (same code, one frame): dims ``frame`` (length 1) and
``phase`` (every phase of the recipe; NaN values for a phase not fitted), variables ``a, c,
volume, microstrain, size, scale, phase_fraction, cathode_fraction`` (+ ``_esd``), ``active``,
``microstrain_correlation, size_correlation`` (over ``corr_with``), ``rwp, gof, zero_shift(_esd),
status, message, fit_values``; coords ``frame, time_s, frame_name``. A notebook reads a single
fit and a series the same way (``ds["a"].sel(phase="H2")``).

What only one fit has is kept as the fit Dataset has it (:meth:`FitResult.to_dataset`): the
curves on the fitted points (``obs, sigma, calc, background, diff`` over ``two_theta``,
``phase_curve`` over phase x two_theta, ``diffuse_curve``), the reflection ticks (``peak_*``),
the correlation matrix (``correlation`` over ``param`` x ``param2``) and every refined value with
its esd (``param_value``, ``param_value_esd`` over ``param``); R factors, chi2, Durbin-Watson,
nobs/nvarys and the notes in attrs.

:func:`microstrain_warning` names the parameters microstrain and size are confounded with when
the instrument profile is not one fitted on a calibrant (or is refined with them); the refine
stage and ``insitu-xrd refine`` put it in the results' attrs (``microstrain_warning``) and the
report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from insitu_xrd.fit.spec import RefinementSpec

__all__ = ["fit_to_dataset", "microstrain_warning", "broadening_phases", "INSTRUMENT_TERMS"]

#: Instrument profile terms that broaden every peak (held at the calibrant's values when known).
INSTRUMENT_TERMS = ("U", "V", "W", "X", "Y", "sh_l")


def broadening_phases(spec: RefinementSpec) -> list[str]:
    """['H2_mustrain', 'H2_size_um', ...]: the sample-broadening parameters the spec refines."""
    return [f"{p.name}_{k}" for p in spec.phases for k in ("mustrain", "size_um") if k in p.refine]


def microstrain_warning(spec: RefinementSpec, calibrant_profile: bool) -> str:
    """A warning naming what microstrain/size are confounded with ('' when nothing is).

    calibrant_profile : the instrument profile is a file fitted on a calibrant
        (``refinement.profile.instrument``; ``calibration.instrument_profile: auto`` makes one).
    Without it the widths U..Y are the recipe's guesses (refined or not), and microstrain takes up
    whatever they miss; with it, any of U..Y refined together with microstrain/size is named.
    """
    broad = broadening_phases(spec)
    if not broad:
        return ""
    refined = [n for n in INSTRUMENT_TERMS if n in spec.profile.refine]
    fixed = [n for n in INSTRUMENT_TERMS[:5] if n not in refined]
    if calibrant_profile and not refined:
        return ""
    what = ", ".join(broad)
    if calibrant_profile:
        return (f"{what} refined together with the instrument terms {', '.join(refined)}: they are confounded (each "
                "broadens every peak); hold the instrument at the calibrant's values (drop them from profile.refine)")
    parts = []
    if refined:
        parts.append(f"{', '.join(refined)} refined with it")
    if fixed:
        parts.append(f"{', '.join(fixed)} fixed at the recipe's values")
    return (f"{what} refined without an instrument profile from a calibrant ({'; '.join(parts)}): the sample "
            f"broadening is confounded with the instrument terms {', '.join(INSTRUMENT_TERMS[:5])} and takes up what they "
            "miss (45-130 % too high microstrain seen with W, X, Y refined). Fit the instrument on a calibrant: "
            "calibration.image with calibration.instrument_profile: auto (insitu-xrd run), or `insitu-xrd instrument` "
            "and refinement.profile.instrument; see docs/refinement.md, 'Getting microstrain right'")


def fit_to_dataset(fit: Any, spec: RefinementSpec, *, frame: int = 0, time_s: float = math.nan, frame_name: str = "",
                   status: str | None = None, attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """The one-frame results Dataset of ``fit`` (see the module docstring).

    spec : the refinement spec of the fit (its phases make the ``phase`` dimension).
    frame, time_s, frame_name : the frame's coordinates (a pattern file: frame 0, NaN, its name).
    status : "ok" (default for a converged fit, else "diverged").
    attrs : more attrs (provenance), added last.
    """
    from insitu_xrd.pipeline.sequential import record_from_fit, records_to_dataset, site_parameter_dataset

    st = status or ("ok" if getattr(fit, "success", True) else "diverged")
    msg = "; ".join(getattr(fit, "warnings", []) or [])
    if not getattr(fit, "success", True):
        msg = "; ".join(m for m in (msg, f"optimizer: {fit.message}") if m)
    rec = record_from_fit(0, fit, spec, status=st, message=msg)
    tth = np.asarray(fit.two_theta_deg, dtype=float)
    frame_ds = xr.Dataset(coords={"frame": ("frame", np.array([int(frame)])), "two_theta": ("two_theta", tth),
                                  "time_s": ("frame", np.array([float(time_s)])),
                                  "frame_name": ("frame", np.array([str(frame_name)]))},
                          attrs={"wavelength_A": float(fit.wavelength_A)})
    series = site_parameter_dataset(records_to_dataset([rec], frame_ds, spec))
    series = series.drop_vars(["calc", "background"])  # the fit's curves below, on the same points
    curves = fit.to_dataset()
    keep = [v for v in curves.data_vars if curves[v].dims]  # curves, ticks, correlation (not the scalars)
    curves = curves[keep]
    phases = [str(p) for p in series["phase"].values]
    if "phase_curve" in curves:
        pc = np.full((len(phases), tth.size), np.nan)
        for i, name in enumerate(str(p) for p in curves["phase"].values):
            pc[phases.index(name)] = curves["phase_curve"].values[i]
        curves = curves.drop_vars(["phase_curve", "phase"])
        curves["phase_curve"] = (("phase", "two_theta"), pc)
    names = [str(n) for n in curves["param"].values] if "param" in curves.coords else []
    curves["param_value"] = (("param",), np.array([float(fit.values.get(n, np.nan)) for n in names], dtype=float))
    # a parameter that ended at a bound is no estimate: no esd ("at bound", listed in at_bounds)
    bounded = set(getattr(fit, "at_bounds", None) or [])
    curves["param_value_esd"] = (("param",), np.array([np.nan if n in bounded else float(fit.esds.get(n, np.nan))
                                                       for n in names], dtype=float))
    out = xr.merge([series, curves.assign_coords(phase=series["phase"])], compat="override", combine_attrs="override")
    out.attrs = {**fit.to_dataset().attrs, **series.attrs, **(attrs or {})}
    if "phase_curve" in out:
        out["phase_curve"].attrs["long_name"] = "calculated pattern of the phase (NaN: not fitted)"
    out["param_value"].attrs["long_name"] = "refined value (every parameter of the correlation matrix)"
    out["param_value_esd"].attrs["long_name"] = "its esd (NaN: held, or at a bound: see at_bounds)"
    out.attrs["schema"] = "insitu-xrd results, one-frame series: the variables and dims of sequential.nc/results.nc"
    return out
