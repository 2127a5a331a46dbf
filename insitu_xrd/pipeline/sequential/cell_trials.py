"""Crystalline cell components tried as phases on the first frame, before the residual search.

A strong unmodelled cell phase (a 20 wt% Al current collector, a steel casing) does not leave
clean lines in the residual of the recipe's fit: the fit itself is pulled (the recipe's phases
move, widen or put Le Bail intensity under its lines), and the residual is structured
everywhere. The residual-line search of :mod:`~insitu_xrd.pipeline.sequential.cell_lines` then
finds little that stands out. What does not fail is asking each crystalline library component
directly whether the data want it:

1. a matched filter: the component's calculated pattern (library cell scaled within its
   tolerance, the fit's instrument profile) against the weighted residual of the current fit of
   the first frame (:func:`~insitu_xrd.pipeline.sequential.search.residual_match`); only a
   component whose pattern is in the residual at > ``TRIAL_Z`` is tried;
2. a trial: the first frame refitted by the sequential chain with the component as a phase
   (scale, lattice within its tolerance, microstrain);
3. acceptance, by evidence that a serially correlated residual does not fake: chi2 falls by more
   than ``ACCEPT_CHI2_GAIN`` of its value (a phase that only soaks up correlated misfit lowers it
   by a few tenths of a per cent), the component's scale exceeds ``ACCEPT_SCALE_SIGMA``
   statistical esds, and its lattice ends inside its tolerance, not at the bound.

The best accepted component is kept, and the others are tried again against the new fit, until
none is accepted. What is kept goes into the :class:`~insitu_xrd.pipeline.sequential.cell_lines.CellLines`
as identified components; the residual search then runs on a fit that already models them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.core.cell_components import CELL_COMPONENTS, CellComponent, component_phase
from insitu_xrd.fit.spec import PhaseSpec, RefinementSpec
from insitu_xrd.pipeline.sequential.records import param_value
from insitu_xrd.pipeline.sequential.search import residual_match

__all__ = ["TrialResult", "try_crystalline_components", "TRIAL_Z", "ACCEPT_CHI2_GAIN", "ACCEPT_SCALE_SIGMA",
           "component_phase_spec"]

#: matched-filter z (in GoF-scaled esds of the residual) for a component to be tried by a fit
TRIAL_Z = 8.0
#: relative chi2 drop of the first frame's fit with the component, for it to be accepted
ACCEPT_CHI2_GAIN = 0.02
#: the component's scale, in statistical (uncorrected) esds
ACCEPT_SCALE_SIGMA = 10.0
#: microstrain (1e-6) of a component's start pattern: foils and casings are cold-worked metals
START_MUSTRAIN = 300.0
#: crystalline components tried at most (each kept one costs a cold fit of one frame)
MAX_KEPT = 4


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
        self.spec: PhaseSpec | None = None

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


def _best_scale(fit: Any, comp: CellComponent, wavelength_A: float) -> tuple[float, float]:
    """(z, lattice scale) of the component's best match in the residual of ``fit``, the scale
    stepped across the component's tolerance finely enough that no line moves by more than
    about a third of the narrowest fitted width."""
    x = np.asarray(fit.two_theta_deg, dtype=float)
    step_deg = float(np.median(np.diff(x)))
    theta_max = math.radians(float(x.max()) / 2.0)
    # d(2theta) = -2 tan(theta) dd/d: the relative step that moves the highest line by ~2 points
    rel = max(2.0 * step_deg * math.pi / 180.0 / (2.0 * math.tan(theta_max)), 1e-5)
    n = int(min(max(2 * math.ceil(comp.d_tolerance / rel) + 1, 3), 201))
    best = (-math.inf, 1.0)
    for s in np.linspace(1.0 - comp.d_tolerance, 1.0 + comp.d_tolerance, n):
        amp, z = residual_match(fit, component_phase(comp, lattice_scale=float(s)), wavelength_A, START_MUSTRAIN)
        if amp > 0 and z > best[0]:
            best = (z, float(s))
    return best


def _scale_sigma(fit: Any, name: str) -> float:
    """The phase's scale over its statistical esd (the serial-correlation factor taken out)."""
    val, esd = param_value(fit, f"{name}_scale")
    factor = float(getattr(fit, "esd_factor", 1.0) or 1.0)
    if np.isfinite(factor) and factor > 0:
        esd = esd / factor
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


def try_crystalline_components(spec: RefinementSpec, wavelength_A: float,
                               fit_first: Callable[[RefinementSpec], Any],
                               exclude_keys: Sequence[str] = (),
                               taken_names: Sequence[str] = ()) -> tuple[list[TrialResult], Any]:
    """Crystalline library components the first frame wants (module docstring).

    ``fit_first``: spec -> FitResult of the first frame (None when it fails);
    ``exclude_keys``: library keys not to try (listed in the recipe, found already).
    Returns every component tried (accepted ones carry their PhaseSpec in ``.spec``, in the order
    kept) and the last accepted fit (or the recipe's fit when none was).
    """
    base = fit_first(spec)
    if base is None:
        return [], None
    listed = {(p.template or "").lower() for p in spec.phases}
    pool = [c for c in CELL_COMPONENTS if c.crystalline and c.key not in exclude_keys
            and (c.template or "").lower() not in listed]
    taken = set(taken_names) | {p.name for p in spec.phases}
    tried: list[TrialResult] = []
    kept: list[PhaseSpec] = []
    current_spec, current = spec, base
    while pool and len(kept) < MAX_KEPT:
        ranked = sorted((TrialResult(c, *_best_scale(current, c, wavelength_A)) for c in pool), key=lambda t: -t.z)
        ranked = [t for t in ranked if t.z > TRIAL_Z]
        if not ranked:
            break
        accepted = None
        for trial in ranked:
            pool.remove(trial.comp)
            name = trial.comp.name
            k = 2
            while name in taken:
                name, k = f"{trial.comp.name}{k}", k + 1
            trial.spec = component_phase_spec(trial.comp, name, trial.lattice_scale)
            tspec = current_spec.model_copy(update={"phases": list(current_spec.phases) + [trial.spec]})
            fit = fit_first(tspec)
            trial.chi2_before = float(current.chi2)
            tried.append(trial)
            if fit is None or name not in getattr(fit, "active_phases", [name]):
                trial.reason = "the fit with it failed"
                continue
            trial.chi2_after = float(fit.chi2)
            trial.scale_sigma = _scale_sigma(fit, name)
            why = []
            if not trial.chi2_after < (1.0 - ACCEPT_CHI2_GAIN) * trial.chi2_before:
                why.append(f"chi2 {trial.chi2_before:.4g} -> {trial.chi2_after:.4g} (< {ACCEPT_CHI2_GAIN:.0%} lower)")
            if not trial.scale_sigma > ACCEPT_SCALE_SIGMA:
                why.append(f"scale {trial.scale_sigma:.3g} statistical esd (<= {ACCEPT_SCALE_SIGMA:g})")
            if not _lattice_inside(fit, name, trial.spec):
                why.append("lattice at its bound (not the library's cell)")
            if why:
                trial.reason = "; ".join(why)
                continue
            trial.accepted = True
            trial.reason = f"chi2 {trial.chi2_before:.4g} -> {trial.chi2_after:.4g}, scale {trial.scale_sigma:.1f} esd"
            taken.add(name)
            kept.append(trial.spec)
            accepted = (tspec, fit)
            break  # the others are matched again against the fit that models this one
        if accepted is None:
            break
        current_spec, current = accepted
    return tried, current
