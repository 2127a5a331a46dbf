"""Cell components tried on the first frame, before the residual search.

A strong unmodelled cell phase (a 20 wt% Al current collector, a steel casing) does not leave
clean lines in the residual of the recipe's fit: the fit itself is pulled (the recipe's phases
move, widen or put Le Bail intensity under its lines), and the residual is structured
everywhere. The residual-line search of :mod:`~insitu_xrd.pipeline.sequential.cell_lines` then
finds little that stands out. What does not fail is asking each crystalline library component
directly whether the data want it. The same holds for a binder line next to a strong cathode
line (PTFE 100 at 4.90 A beside H2 003 at 4.73-4.82 A): the residual search counts it as the
cathode's misfit, a trial does not.

1. a matched filter: the component's calculated pattern (crystalline: its structure at the library
   cell scaled within its tolerance; line list: its lines at their library places scaled within
   the tolerance, relative intensities and widths of the library convolved with the fit's
   instrument profile) against the weighted residual of the current fit of the first frame
   (:func:`~insitu_xrd.pipeline.sequential.search.curve_match`); only a component whose pattern
   is in the residual at > ``TRIAL_Z`` is tried;
2. a trial: the first frame refitted by the sequential chain with the component, as a phase
   (scale, lattice within its tolerance, microstrain) or as peaks at fixed places and widths with
   free areas (background humps);
3. acceptance, by evidence that a serially correlated residual does not fake: chi2 falls by more
   than ``ACCEPT_CHI2_GAIN`` of its value (a term that only soaks up correlated misfit lowers it
   by a few tenths of a per cent), the component's scale (its strongest peak's area) exceeds
   ``ACCEPT_SCALE_SIGMA`` statistical esds, and a lattice ends inside its tolerance.

The best accepted component is kept, and the others are tried again against the new fit, until
none is accepted. What is kept goes into the :class:`~insitu_xrd.pipeline.sequential.cell_lines.CellLines`
as identified components; the residual search then runs on a fit that already models them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.core.cell_components import CELL_COMPONENTS, CellComponent, component_phase, expected_lines
from insitu_xrd.core.profiles import peak_fwhm_eta, pseudo_voigt
from insitu_xrd.fit.spec import HumpSpec, PhaseSpec, RefinementSpec
from insitu_xrd.pipeline.sequential.records import param_value, statistical_value
from insitu_xrd.pipeline.sequential.search import curve_match, fit_profile, residual_match

__all__ = ["TrialResult", "try_components", "TRIAL_Z", "ACCEPT_CHI2_GAIN", "ACCEPT_SCALE_SIGMA",
           "component_phase_spec", "STRONG_LINE_REL", "MISSING_FRACTION"]

#: matched-filter z (in GoF-scaled esds of the residual) for a component to be tried by a fit
TRIAL_Z = 8.0
#: relative chi2 drop of the first frame's fit with the component, for it to be accepted
ACCEPT_CHI2_GAIN = 0.02
#: the component's scale, in statistical (uncorrected) esds
ACCEPT_SCALE_SIGMA = 10.0
#: microstrain (1e-6) of a component's start pattern: foils and casings are cold-worked metals
START_MUSTRAIN = 300.0
#: components kept at most (each trial costs a fit of one frame)
MAX_KEPT = 6
#: lines of a line-list component modelled: at least this strong (strongest in the range = 100)
LINE_MIN_REL = 5.0
#: lines of a line-list component that must be there: at least this strong ...
STRONG_LINE_REL = 20.0
#: ... with at least this fraction of the area the strongest line implies
MISSING_FRACTION = 0.25


class TrialResult:
    """One component tried: its z, lattice scale, chi2 before/after, scale z, verdict, reason."""

    def __init__(self, comp: CellComponent, z: float, lattice_scale: float) -> None:
        self.comp = comp
        self.z = z
        self.lattice_scale = lattice_scale
        self.chi2_before = math.nan
        self.chi2_after = math.nan
        self.scale_sigma = math.nan
        self.accepted = False
        self.reason = ""
        self.spec: PhaseSpec | None = None  # crystalline: the phase added
        self.humps: list[HumpSpec] = []  # line list: its peaks, in the order of ``lines``
        self.lines: list[Any] = []  # line list: the ExpectedLines modelled
        self.first_hump = 0  # index of its first peak among the background humps

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.comp.key, "z": round(self.z, 1), "lattice_scale": round(self.lattice_scale, 6),
                "chi2_gain": round(1.0 - self.chi2_after / self.chi2_before, 4)
                if self.chi2_before > 0 and np.isfinite(self.chi2_after) else None,
                "scale_sigma": round(self.scale_sigma, 1) if np.isfinite(self.scale_sigma) else None,
                "accepted": self.accepted, "reason": self.reason}


def component_phase_spec(comp: CellComponent, name: str, lattice_scale: float) -> PhaseSpec:
    """The PhaseSpec of a crystalline component: scale, lattice within its tolerance, microstrain."""
    ph = component_phase(comp, lattice_scale=lattice_scale)
    hexagonal = abs(ph.c - ph.a) > 1e-9 * ph.a
    refine = ["a", "scale", "mustrain"] + (["c"] if hexagonal else [])
    start: dict[str, Any] = {"a": round(ph.a, 6)}
    if hexagonal:
        start["c"] = round(ph.c, 6)
    return PhaseSpec(name=name, template=comp.template, mustrain=START_MUSTRAIN, refine=refine,
                     lattice_bound_pct=max(0.3, 200.0 * comp.d_tolerance), **start)


def line_peaks(comp: CellComponent, fit: Any, wavelength_A: float, lattice_scale: float) -> tuple[list[Any], list[HumpSpec]]:
    """A line-list component's lines inside the fit's range and their peaks: at the library place
    times ``lattice_scale``, the library's intrinsic width (a Scherrer-like 1/cos(theta) term)
    with the fit's instrument profile, only the area free."""
    x = np.asarray(fit.two_theta_deg, dtype=float)
    lines = expected_lines(comp, wavelength_A, (float(x.min()), float(x.max())), lattice_scale=lattice_scale,
                           min_rel_intensity=LINE_MIN_REL)
    inst = {k: v for k, v in fit_profile(fit).items() if k in ("U", "V", "W", "X", "Y")}
    humps = []
    for ln in lines:
        size_um = 1e-4 / ln.fwhm_inv_A if ln.fwhm_inv_A > 0 else np.inf  # width in 1/d = 1 / size
        fw, eta = peak_fwhm_eta(np.array([ln.two_theta_deg]), wavelength_A, size_um=size_um, **inst)
        humps.append(HumpSpec(center_deg=float(ln.two_theta_deg), fwhm_deg=float(fw[0]), eta=float(eta[0]),
                              refine=["area"]))
    return lines, humps


def _match(fit: Any, comp: CellComponent, wavelength_A: float, scale: float) -> tuple[float, float]:
    if comp.crystalline:
        return residual_match(fit, component_phase(comp, lattice_scale=scale), wavelength_A, START_MUSTRAIN)
    lines, humps = line_peaks(comp, fit, wavelength_A, scale)
    if not lines:
        return 0.0, 0.0
    x = np.asarray(fit.two_theta_deg, dtype=float)
    curve = sum(ln.rel_intensity * pseudo_voigt(x, h.center_deg, h.fwhm_deg, h.eta) for ln, h in zip(lines, humps))
    return curve_match(fit, np.asarray(curve, dtype=float))


def _best_scale(fit: Any, comp: CellComponent, wavelength_A: float) -> tuple[float, float]:
    """(z, lattice scale) of the component's best match in the residual of ``fit``, the scale
    stepped across the component's tolerance finely enough that the highest-angle line moves by
    about two points per step."""
    x = np.asarray(fit.two_theta_deg, dtype=float)
    step_deg = float(np.median(np.diff(x)))
    theta_max = math.radians(float(x.max()) / 2.0)
    # d(2theta) = -2 tan(theta) dd/d
    rel = max(2.0 * math.radians(step_deg) / (2.0 * math.tan(theta_max)), 1e-5)
    n = int(min(max(2 * math.ceil(comp.d_tolerance / rel) + 1, 3), 301))
    best = (-math.inf, 1.0)
    for s in np.linspace(1.0 - comp.d_tolerance, 1.0 + comp.d_tolerance, n):
        amp, z = _match(fit, comp, wavelength_A, float(s))
        if amp > 0 and z > best[0]:
            best = (z, float(s))
    return best


def _significance(fit: Any, name: str) -> float:
    """The parameter over its statistical esd."""
    val, esd = statistical_value(fit, name)
    return val / esd if np.isfinite(val) and np.isfinite(esd) and esd > 0 else math.nan


def _lattice_inside(fit: Any, name: str, spec: PhaseSpec) -> bool:
    """Every refined lattice length of the phase ends strictly inside its bound."""
    for par in ("a", "c"):
        if par not in spec.refine:
            continue
        val, esd = param_value(fit, f"{name}_{par}")
        start = getattr(spec, par)
        if not (np.isfinite(val) and np.isfinite(esd)) or start is None:
            return False
        if abs(val / start - 1.0) > 0.98 * spec.lattice_bound_pct / 100.0:
            return False
    return True


def _trial_spec(trial: TrialResult, current: RefinementSpec, fit: Any, wavelength_A: float, taken: set[str]
                ) -> RefinementSpec:
    """``current`` with the component added (sets ``trial.spec`` or ``trial.humps``)."""
    comp = trial.comp
    if comp.crystalline:
        name, k = comp.name, 2
        while name in taken:
            name, k = f"{comp.name}{k}", k + 1
        trial.spec = component_phase_spec(comp, name, trial.lattice_scale)
        return current.model_copy(update={"phases": list(current.phases) + [trial.spec]})
    trial.lines, trial.humps = line_peaks(comp, fit, wavelength_A, trial.lattice_scale)
    trial.first_hump = len(current.background.humps)
    bg = current.background.model_copy(update={"humps": list(current.background.humps) + trial.humps})
    return current.model_copy(update={"background": bg})


def _verdict(trial: TrialResult, fit: Any) -> list[str]:
    """Why the trial fit does not justify the component ([] when it does)."""
    trial.chi2_after = float(fit.chi2)
    if trial.spec is not None:
        trial.scale_sigma = _significance(fit, f"{trial.spec.name}_scale")
    else:
        strongest = int(np.argmax([ln.rel_intensity for ln in trial.lines]))
        trial.scale_sigma = _significance(fit, f"bkg_hump{trial.first_hump + strongest}_area")
    why = []
    if not trial.chi2_after < (1.0 - ACCEPT_CHI2_GAIN) * trial.chi2_before:
        why.append(f"chi2 {trial.chi2_before:.4g} -> {trial.chi2_after:.4g} (< {ACCEPT_CHI2_GAIN:.0%} lower)")
    if not trial.scale_sigma > ACCEPT_SCALE_SIGMA:
        why.append(f"{'scale' if trial.spec is not None else 'strongest area'} {trial.scale_sigma:.3g} statistical esd "
                   f"(<= {ACCEPT_SCALE_SIGMA:g})")
    if trial.spec is not None and not _lattice_inside(fit, trial.spec.name, trial.spec):
        why.append("lattice at its bound (not the library's cell)")
    if trial.spec is None:
        why += _missing_lines(trial, fit)
    return why


def _missing_lines(trial: TrialResult, fit: Any) -> list[str]:
    """A line-list component is its lines together: every strong line (>= STRONG_LINE_REL of the
    strongest) whose expected area, from the strongest line's fitted area and the library ratio,
    would stand 3 statistical esds out must come out with at least MISSING_FRACTION of it (one
    broad band alone, an electrolyte hump, is no carbon black)."""
    areas = [statistical_value(fit, f"bkg_hump{trial.first_hump + k}_area") for k in range(len(trial.lines))]
    strongest = int(np.argmax([ln.rel_intensity for ln in trial.lines]))
    top, top_esd = areas[strongest]
    out = []
    for k, ln in enumerate(trial.lines):
        if k == strongest or ln.rel_intensity < STRONG_LINE_REL:
            continue
        area, esd = areas[k]
        if not np.isfinite(esd) and area == 0.0:  # held at its bound of 0: no esd of its own
            esd = top_esd
        expected = top * ln.rel_intensity / trial.lines[strongest].rel_intensity
        if np.isfinite(esd) and expected > 3.0 * esd and not area >= MISSING_FRACTION * expected:
            out.append(f"line {ln.label} at {ln.d_A:.3f} A missing ({area:.3g} for {expected:.3g} expected)")
    return out


def try_components(spec: RefinementSpec, wavelength_A: float, fit_first: Callable[[RefinementSpec], Any],
                   exclude_keys: Sequence[str] = (), taken_names: Sequence[str] = ()) -> tuple[list[TrialResult], Any]:
    """Library components the first frame wants (module docstring).

    ``fit_first``: spec -> FitResult of the first frame (None when it fails);
    ``exclude_keys``: library keys not to try. Components whose template the recipe lists are not
    tried. Returns every component tried (accepted ones carry their PhaseSpec in ``.spec`` or
    their peaks in ``.humps``, in the order kept) and the last accepted fit (or the recipe's fit
    when none was; None when the first frame cannot be fitted).
    """
    base = fit_first(spec)
    if base is None:
        return [], None
    listed = {(p.template or "").lower() for p in spec.phases}
    pool = [c for c in CELL_COMPONENTS if c.key not in exclude_keys and not (c.crystalline and c.template.lower() in listed)]
    taken = set(taken_names) | {p.name for p in spec.phases}
    tried: list[TrialResult] = []
    kept = 0
    current_spec, current = spec, base
    while pool and kept < MAX_KEPT:
        ranked = sorted((TrialResult(c, *_best_scale(current, c, wavelength_A)) for c in pool), key=lambda t: -t.z)
        ranked = [t for t in ranked if t.z > TRIAL_Z]
        accepted = None
        for trial in ranked:
            pool.remove(trial.comp)
            tspec = _trial_spec(trial, current_spec, current, wavelength_A, taken)
            trial.chi2_before = float(current.chi2)
            tried.append(trial)
            fit = fit_first(tspec)
            if fit is None or (trial.spec is not None and trial.spec.name not in getattr(fit, "active_phases", [])):
                trial.reason = "the fit with it failed"
                continue
            why = _verdict(trial, fit)
            if why:
                trial.reason = "; ".join(why)
                continue
            trial.accepted = True
            trial.reason = f"chi2 {trial.chi2_before:.4g} -> {trial.chi2_after:.4g}, " \
                           f"{'scale' if trial.spec is not None else 'strongest area'} {trial.scale_sigma:.1f} esd"
            if trial.spec is not None:
                taken.add(trial.spec.name)
            kept += 1
            accepted = (tspec, fit)
            break  # the others are matched again against the fit that models this one
        if accepted is None:
            break
        current_spec, current = accepted
    return tried, current
