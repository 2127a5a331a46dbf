"""Instrumental profile (GSAS-II U, V, W, X, Y) and zero shift from a calibrant's 1D pattern.

The calibrant's lattice parameter is held at its certified value
(:data:`insitu_xrd.core.crystal.CALIBRANT_LATTICE_A`: NIST SRM 674b CeO2, 660c LaB6, 640e Si, Ni),
its microstrain at 0 and its size at infinity, so all peak broadening is attributed to the
instrument (the standard GSAS-II practice: the instrument file then contains the calibrant's own,
small, broadening, which the sample's microstrain/size are measured against). Refined: U, V, W,
X, Y, zero, the Chebyshev background and either the Rietveld scale and one B_iso (``rietveld``) or
the reflection intensities (``lebail``, no structure needed).

The start values matter on a real pattern (the widths of a 1 m synchrotron geometry and of a
170 mm one differ by 10x): unless given, W is started from the measured FWHM of the strongest
peak and the zero from the median offset of the strongest peaks from their calculated positions.

Pure numpy + the refinement engine; writing the ``.instprm`` file is done by the caller
(:mod:`insitu_xrd.io.instprm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from insitu_xrd.core.crystal import CALIBRANT_LATTICE_A, make_template
from insitu_xrd.core.pattern import Instrument, two_theta_deg_from_d
from insitu_xrd.core.profiles import EIGHT_LN2, half_maximum_span
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.engine import Refinement
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import RefinementSpec

__all__ = [
    "INSTRUMENT_PARAMS",
    "INSTRUMENT_REFINABLE",
    "InstrumentFit",
    "calibrant_template",
    "estimate_start",
    "instrument_spec",
    "fit_instrument",
]

#: Profile parameters refined by default.
INSTRUMENT_PARAMS: tuple[str, ...] = ("U", "V", "W", "X", "Y", "zero_deg")
#: Every profile parameter a calibrant fit can refine (``sh_l``: GSAS-II SH/L asymmetry, on request).
INSTRUMENT_REFINABLE: tuple[str, ...] = INSTRUMENT_PARAMS + ("sh_l",)

_ALIASES = {"ceo2": "ceo2", "ni": "ni", "lab6": "lab6", "si": "si", "al": "al"}


def calibrant_template(calibrant: str) -> str:
    """Template name for a calibrant name (case-insensitive: CeO2, Ni, LaB6, Si, Al)."""
    key = calibrant.strip().lower()
    if key not in _ALIASES:
        raise InsituXRDError(f"calibrant {calibrant!r} is not supported; use one of CeO2, Ni, LaB6, Si, Al")
    return _ALIASES[key]


@dataclass
class InstrumentFit:
    """Result of :func:`fit_instrument`.

    instrument : the refined Instrument (wavelength, U, V, W, X, Y, zero_deg; displacement 0).
    result : the full FitResult (esds, Rwp, curves for the Rietveld plot).
    calibrant : calibrant name; lattice_A : the fixed lattice parameter used (A).
    """

    instrument: Instrument
    result: FitResult
    calibrant: str
    lattice_A: float

    def summary_lines(self) -> list[str]:
        """Provenance/quality lines for the .instprm header comments."""
        r = self.result
        esd = r.esds
        lines = [
            f"insitu-xrd instrument profile from {self.calibrant} (a fixed at {self.lattice_A} A), {r.mode} fit",
            f"Rwp {r.rwp:.4f}  Rexp {r.rexp:.4f}  GoF(chi2_red) {r.gof:.3f}  points {r.nobs}",
        ]
        for n in INSTRUMENT_REFINABLE:
            if n in r.values:
                lines.append(f"{n} = {r.values[n]:.6g} +/- {esd.get(n, float('nan')):.2g}")
        lines += [w for w in r.warnings if w.startswith("SH/L")]
        return lines


def estimate_start(
    two_theta_deg: np.ndarray, intensity: np.ndarray, calibrant: str, wavelength_A: float
) -> dict[str, float]:
    """Rough W (centideg^2) and zero (deg) from the data: FWHM of the strongest peak, and the
    median offset of the strongest peaks from the nearest calibrant reflection."""
    x = np.asarray(two_theta_deg, dtype=float)
    y = np.asarray(intensity, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    if x.size < 20:
        raise InsituXRDError(f"calibrant pattern has only {x.size} finite points")
    # running-minimum background so the peak heights are measured above it
    win = max(5, x.size // 40)
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    bkg = uniform_filter1d(minimum_filter1d(y, win, mode="nearest"), win, mode="nearest")
    net = y - bkg
    i0 = int(np.argmax(net))
    half = net[i0] / 2.0
    lo, hi = half_maximum_span(net, i0, half)
    fwhm_deg = max(float(x[hi] - x[lo]), float(np.median(np.diff(x))) * 1.5)
    w = (fwhm_deg * 100.0) ** 2 / EIGHT_LN2
    # zero: strongest local maxima vs calculated positions
    template = make_template(calibrant_template(calibrant))
    dmin = wavelength_A / (2.0 * np.sin(np.radians(min(x.max(), 170.0)) / 2.0))
    calc = two_theta_deg_from_d(template.reflections(dmin).d_A, wavelength_A)
    calc = calc[np.isfinite(calc)]
    from scipy.signal import find_peaks

    peaks, props = find_peaks(net, height=0.05 * net[i0], distance=max(1, int(fwhm_deg / np.median(np.diff(x)))))
    zero = 0.0
    if peaks.size and calc.size:
        order = np.argsort(props["peak_heights"])[::-1][:8]
        offs = []
        for p in peaks[order]:
            j = int(np.argmin(np.abs(calc - x[p])))
            if abs(calc[j] - x[p]) < 1.5 * fwhm_deg:
                offs.append(x[p] - calc[j])
        if offs:
            zero = float(np.median(offs))
    return {"W": float(w), "zero_deg": zero}


def instrument_spec(
    calibrant: str,
    mode: str = "rietveld",
    range_2theta_deg: tuple[float, float] | None = None,
    chebyshev: int = 8,
    refine: Sequence[str] = INSTRUMENT_PARAMS,
    start: dict[str, float] | None = None,
    exclude_2theta_deg: Sequence[tuple[float, float]] = (),
    kalpha2: tuple[float, float] | None = None,
) -> RefinementSpec:
    """The refinement spec of a calibrant fit: lattice fixed, no sample broadening; ``kalpha2``:
    (Ka2 wavelength (A), ratio) of a laboratory doublet."""
    tpl = calibrant_template(calibrant)
    name = {"ceo2": "CeO2", "ni": "Ni", "lab6": "LaB6", "si": "Si", "al": "Al"}[tpl]
    start = dict(start or {})
    profile = {k: start[k] for k in ("U", "V", "W", "X", "Y", "zero_deg", "sh_l") if k in start}
    profile.setdefault("U", 0.0)
    profile.setdefault("V", 0.0)
    profile.setdefault("W", 1.0)
    profile.setdefault("X", 0.0)
    profile.setdefault("Y", 0.0)
    if kalpha2 is not None:
        profile["kalpha2"] = {"wavelength_A": float(kalpha2[0]), "ratio": float(kalpha2[1])}
    phase_refine = ["scale", "biso_A2"] if mode == "rietveld" else ["scale"]
    try:
        return RefinementSpec.model_validate(
            {
                "mode": mode,
                "range_2theta_deg": list(range_2theta_deg) if range_2theta_deg is not None else None,
                "exclude_2theta_deg": [list(r) for r in exclude_2theta_deg],
                "background": {"chebyshev": chebyshev},
                "profile": {**profile, "refine": list(refine)},
                "phases": [
                    {"name": name, "template": tpl, "a": CALIBRANT_LATTICE_A[tpl], "mustrain": 0.0, "refine": phase_refine}
                ],
            }
        )
    except ValueError as exc:  # pydantic ValidationError: bad refine name or range
        raise InsituXRDError(f"instrument fit settings: {exc}") from None


def fit_instrument(
    two_theta_deg: np.ndarray,
    intensity: np.ndarray,
    sigma: np.ndarray | None,
    calibrant: str,
    wavelength_A: float,
    mode: str = "rietveld",
    range_2theta_deg: tuple[float, float] | None = None,
    chebyshev: int = 8,
    refine: Sequence[str] = INSTRUMENT_PARAMS,
    start: Instrument | None = None,
    exclude_2theta_deg: Sequence[tuple[float, float]] = (),
    kalpha2: tuple[float, float] | None = None,
) -> InstrumentFit:
    """Fit the instrumental profile to a calibrant pattern (see the module docstring).

    two_theta_deg, intensity, sigma: the pattern (deg, counts); sigma None -> sqrt(max(I, 1)).
    calibrant: CeO2, Ni, LaB6, Si or Al; its lattice parameter is fixed at the certified value.
    wavelength_A: X-ray wavelength (A), fixed (Ka1 with ``kalpha2``).
    kalpha2: (Ka2 wavelength (A), Ka2/Ka1 ratio) of a laboratory tube; the instrument returned
    carries it (written as GSAS-II Lam1/Lam2/I(L2)/I(L1)).
    mode: "rietveld" (scale + one B refined) or "lebail" (intensities free).
    start: start values of the profile (default: estimated from the data).
    refine: profile parameters to refine (any of ``INSTRUMENT_REFINABLE``). With ``sh_l`` the GSAS-II
    SH/L asymmetry is tried after the symmetric fit and kept only if it lowers chi^2 by more than
    9 x gof x esd_factor^2 (3 esd for one parameter); the decision is in ``result.warnings``.
    A multi-pass fit is used: Gaussian W and zero (with U=V=X=Y at 0) first, then everything in
    ``refine`` from there, which converges from the rough data-driven start.
    """
    if mode not in ("rietveld", "lebail"):
        raise InsituXRDError(f"instrument fit mode must be 'rietveld' or 'lebail', got {mode!r}")
    tpl = calibrant_template(calibrant)
    if start is not None:
        first = {"U": start.U, "V": start.V, "W": start.W, "X": start.X, "Y": start.Y, "zero_deg": start.zero_deg,
                 "sh_l": start.sh_l}
    else:
        x = np.asarray(two_theta_deg, dtype=float)
        y = np.asarray(intensity, dtype=float)
        if range_2theta_deg is not None:
            sel = (x >= range_2theta_deg[0]) & (x <= range_2theta_deg[1])
            x, y = x[sel], y[sel]
        first = estimate_start(x, y, tpl, wavelength_A)
    stage1_refine = [p for p in ("W", "zero_deg") if p in refine]
    spec1 = instrument_spec(tpl, "rietveld", range_2theta_deg, chebyshev, stage1_refine or ["W"], first, exclude_2theta_deg,
                            kalpha2)
    res1 = Refinement(spec1, wavelength_A).fit(two_theta_deg, intensity, sigma)
    symmetric = [p for p in refine if p != "sh_l"]
    spec2 = instrument_spec(tpl, mode, range_2theta_deg, chebyshev, symmetric, first, exclude_2theta_deg, kalpha2)
    result = Refinement(spec2, wavelength_A).fit(two_theta_deg, intensity, sigma, start=res1)
    if "sh_l" in refine:
        # SH/L is kept only when it improves the fit significantly: chi2 drop > 9 x (gof x esd
        # factor^2), a 3-esd test of one extra parameter (with the serial-correlation correction)
        spec3 = instrument_spec(tpl, mode, range_2theta_deg, chebyshev, list(refine), first, exclude_2theta_deg, kalpha2)
        res3 = Refinement(spec3, wavelength_A).fit(two_theta_deg, intensity, sigma, start=result)
        gain = result.chi2 - res3.chi2
        threshold = 9.0 * res3.gof * res3.esd_factor**2
        if gain > threshold:
            result = res3
            result.warnings.append(
                f"SH/L asymmetry refined: {res3.values['sh_l']:.4g} (chi2 lower by {gain:.4g}, > {threshold:.3g})")
        else:
            # a negative gain is a higher chi2 with SH/L (a worse local minimum): said as such
            change = f"chi2 lower by {gain:.3g}" if gain >= 0 else f"chi2 higher by {-gain:.3g}"
            result.warnings.append(
                f"SH/L asymmetry not significant ({change} with it, < {threshold:.3g} lower needed): "
                "symmetric profile kept")
    vals = result.params.valuesdict()
    instrument = Instrument(
        wavelength_A=float(wavelength_A),
        U=float(vals["U"]), V=float(vals["V"]), W=float(vals["W"]), X=float(vals["X"]), Y=float(vals["Y"]),
        zero_deg=float(vals["zero_deg"]),
        displacement_um=float(vals.get("displacement_um", 0.0)),
        sh_l=float(vals.get("sh_l", 0.0)),
        kalpha2_wavelength_A=float(kalpha2[0]) if kalpha2 is not None else None,
        kalpha2_ratio=float(kalpha2[1]) if kalpha2 is not None else 0.0,
    )
    return InstrumentFit(instrument, result, calibrant, CALIBRANT_LATTICE_A[tpl])
