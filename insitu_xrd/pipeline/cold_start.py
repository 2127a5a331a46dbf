"""Cold starts of a fit: lattice grid search, then restarts that must not end higher.

A fit with no previous result to start from (``insitu-xrd refine``, the first frame of a
sequential chain or chunk, a diverged frame refit "from a lattice search") depends on where it
starts. The lattice is the first problem: a start 1 % off in c puts the high-l reflections more
than a peak width away from their peaks. The second is everything that adapts to a wrong lattice
while the optimizer gets there: Le Bail intensities of overlapping reflections, microstrain, and
the bounded components (a diffuse component's offset and width end at a bound) — those can stay
in a false minimum once the lattice is right (seen: chi2 3378 against 2770 for the same lattice,
microstrain 1323 against 1012 x 1e-6).

:func:`cold_start` therefore

1. puts the main phase's lattice on the peaks by the search of
   :func:`insitu_xrd.pipeline.sequential.search.search_lattice` over +/- 0.95 x
   ``lattice_bound_pct`` of the start (for cubic, tetragonal and hexagonal cells the (a, c) grid
   the sequential cold start always used; lower symmetry: one scale of the lengths and a local
   polish of every free lattice parameter), and fits from there (the *first* fit);
2. with a CIF phase in the recipe (possibly of low symmetry, where the search is not global),
   restarts from the recipe's own start (``start``); then restarts from the lattice of the best
   fit with every other value at the recipe's start
   (``lattice``), and then from all the refined values of the best fit so far with fresh Le Bail
   intensities (``values``; repeated while it helps, at most ``max_restarts`` in all);
3. keeps the lowest chi2: a restart replaces the current fit only when it is lower by more than
   ``tol_chi2`` x max(1, GoF) (half a chi2 unit at a GoF of 1; convergence noise is far below
   that), so an unambiguous minimum gives exactly the first fit back (``deterministic``: the
   restart from the lattice is taken within that tolerance too, see :func:`cold_start`);
4. says so when a restart was lower: :attr:`ColdStart.notes` (the fit's warnings, the results'
   attrs, the CLI output): the first fit was a false minimum.

The search makes the start independent of the recipe's lattice to within the grid step
(0.005 %), so starts anywhere within +/- 2 % of the truth end at the same chi2 within a small
fraction of one and the same values within 0.1 esd (``tests/test_cold_start.py``).

Cost (2 cores): one phase + 2 diffuse, 2650 points: 0.2-0.4 s for the plain fit before, 0.1 s
search + 3-5 fits = 0.5-0.9 s now; the bench's H2 + H3 + Li + Al frame: 1.6-2.2 s against 0.2-0.3 s
for one fit from a start 0.1-0.3 % off (``benchmarks/bench_refine.py`` prints the spread and cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.core.symmetry import LATTICE_NAMES
from insitu_xrd.fit.spec import RefinementSpec

__all__ = ["ColdStart", "searched_spec", "lattice_restart_spec", "cold_start", "recipe_name_order", "DEFAULT_TOL_CHI2",
           "DEFAULT_RESTARTS"]

#: A restart replaces the current fit when its chi2 is lower by more than this x max(1, GoF).
DEFAULT_TOL_CHI2 = 0.5
#: Restarts after the first fit: from its lattice, narrow diffuse components (when the spec has
#: any), then from the best values so far while that helps.
DEFAULT_RESTARTS = 4

FitFn = Callable[[RefinementSpec], Any]


@dataclass
class ColdStart:
    """Outcome of :func:`cold_start`.

    fit : the FitResult reported (lowest chi2 of the fits tried).
    spec : the spec that produced it (its start values; lattice bounds are centred on them).
    first_chi2 : chi2 of the first fit (from the lattice search); chi2 of the fit reported is
        ``fit.chi2``.
    tried : (label, chi2) of every fit, in order (``search``/``start``, ``lattice``, ``values``...).
    chosen : label of the fit reported.
    notes : warnings (non-empty when a restart was lower than the first fit).
    searched : {phase: (a, c)} lattices found by the grid search (empty: no search).
    false_minimum : a restart was lower than the first fit by more than the tolerance.
    """

    fit: Any
    spec: RefinementSpec
    first_chi2: float
    tried: list[tuple[str, float]] = field(default_factory=list)
    chosen: str = ""
    notes: list[str] = field(default_factory=list)
    searched: dict[str, tuple[float, float]] = field(default_factory=dict)
    false_minimum: bool = False

    @property
    def improved(self) -> bool:
        """A restart found a lower chi2 than the first fit (the first one was a false minimum)."""
        return self.false_minimum

    def attrs(self) -> dict[str, Any]:
        """Provenance attrs for a results Dataset."""
        import json

        return {
            "cold_start": json.dumps({"tried": [[k, float(v)] for k, v in self.tried], "chosen": self.chosen,
                                      "searched": {k: list(v) for k, v in self.searched.items()}}),
            "cold_start_warning": "; ".join(self.notes),
        }


def searched_spec(spec: RefinementSpec, wavelength_A: float, two_theta_deg: np.ndarray, intensity: np.ndarray,
                  phases: Sequence[str], refinement: Any = None) -> tuple[RefinementSpec, dict[str, tuple[float, float]]]:
    """``spec`` with the main phase's start lattice from the grid search on this pattern.

    The main phase is the first of ``phases`` (the non-optional phases, in recipe order) whose a
    or c is refined and whose structure is known; the other phases keep their starts (the main
    phase dominates the pattern). The search spans +/- 0.95 x ``lattice_bound_pct`` % of the
    start (so the fit's bounds, centred on the result, still hold the start). ``refinement``: a
    Refinement built from ``spec``, or a callable returning one (it holds the Phase objects of
    CIF phases). Returns (spec, {phase: (a, c)}); the spec unchanged and {} when there is
    nothing to search.
    """
    from insitu_xrd.pipeline.sequential.search import phase_object, search_lattice, with_lattice

    zero = float(spec.profile.zero_deg or 0.0)
    for name in phases:
        ph = spec.phase(name)
        if not set(LATTICE_NAMES) & set(ph.refine):
            continue
        phase = phase_object(spec, name, refinement() if callable(refinement) else refinement)
        if phase is None:
            continue
        found = search_lattice(phase, wavelength_A, two_theta_deg, intensity, ph.lattice_bound_pct * 0.95, zero)
        a, c = found.get("a", phase.a), found.get("c", phase.c)
        return with_lattice(spec, name, a, c, **{k: v for k, v in found.items() if k not in ("a", "c")}), {name: (float(a), float(c))}
    return spec, {}


def lattice_restart_spec(spec: RefinementSpec, fit: Any) -> RefinementSpec:
    """``spec`` (every start value as given) with the lattice lengths and zero shift of ``fit``
    for the phases it refined."""
    phases = []
    for p in spec.phases:
        upd = {}
        if p.name in getattr(fit, "active_phases", []):
            for key in LATTICE_NAMES:
                v = fit.values.get(f"{p.name}_{key}")
                # a, c as always; b and the angles when the recipe starts or refines them (results
                # carry every phase's whole cell, tied and fixed parameters included)
                if v is not None and np.isfinite(v) and (key in ("a", "c") or getattr(p, key) is not None
                                                         or key in p.refine):
                    upd[key] = float(v)
        phases.append(p.model_copy(update=upd) if upd else p)
    prof = spec.profile
    z = fit.values.get("zero_deg")
    if "zero_deg" in prof.refine and z is not None and np.isfinite(z):
        prof = prof.model_copy(update={"zero_deg": float(z)})
    return spec.model_copy(update={"phases": phases, "profile": prof})


def _values_restart_spec(base: RefinementSpec, fit: Any) -> RefinementSpec:
    """``base`` with every refined value of ``fit`` as start (:func:`seeded_spec`), the diffuse
    widths' bounds kept at ``base``'s (by default they follow the start value: restarts from a
    width at its bound would otherwise widen the range each time)."""
    from insitu_xrd.pipeline.sequential.search import seeded_spec

    sp = seeded_spec(base, fit.values, phases=list(getattr(fit, "active_phases", [])) or None)
    diffuse = []
    for d0, d in zip(base.diffuse, sp.diffuse):
        lo, hi = d0.fwhm_bounds_deg
        diffuse.append(d.model_copy(update={"fwhm_range_deg": (lo, hi), "fwhm_deg": float(np.clip(d.fwhm_deg, lo, hi))}))
    return sp.model_copy(update={"diffuse": diffuse})


def _diffuse_restart_spec(base: RefinementSpec, fit: Any) -> RefinementSpec:
    """Every refined value of ``fit`` as start except the diffuse components', which start at half
    their recipe width (inside the recipe's bounds) and zero offset. A diffuse component started
    at the recipe width can open up to its upper width bound and a negative area under the Bragg
    peak (a false minimum 3 chi2 above the narrow one on a pattern with a 0.15 deg component and a
    0.3 deg start); started narrower it finds the narrow one when there is one."""

    class _Values:
        values = {k: v for k, v in fit.values.items() if not k.startswith("diff_")}
        active_phases = list(getattr(fit, "active_phases", []))

    narrow = []
    for d in base.diffuse:
        lo, hi = d.fwhm_bounds_deg
        narrow.append(d.model_copy(update={"fwhm_deg": float(np.clip(0.5 * d.fwhm_deg, lo, hi)), "offset_deg": 0.0,
                                           "fwhm_range_deg": (lo, hi)}))
    return _values_restart_spec(base.model_copy(update={"diffuse": narrow}), _Values())


def _family(spec: RefinementSpec, name: str) -> str:
    """Phases of one family share a structure: the same template or CIF file."""
    ph = spec.phase(name)
    return f"template:{ph.template.lower()}" if ph.template else f"cif:{ph.cif}"


def _start_cell(spec: RefinementSpec, name: str) -> dict[str, float]:
    """The recipe's start lengths of ``name`` (a template's own where the recipe gives none)."""
    ph = spec.phase(name)
    out = {k: float(getattr(ph, k)) for k in ("a", "b", "c") if getattr(ph, k) is not None}
    if ph.template and not {"a", "c"} <= set(out):
        from insitu_xrd.core.crystal import make_template

        tp = make_template(ph.template)
        out.setdefault("a", float(tp.a))
        out.setdefault("c", float(tp.c))
    return out


def recipe_name_order(spec: RefinementSpec, fit: Any) -> dict[str, str]:
    """{fitted name: recipe name} for the fitted phases whose names must be exchanged ({} when
    none): within a family (same template or CIF), the fitted cells go to the recipe phases
    whose start cells they are closest to (the assignment with the least summed relative
    distance |dl/l| over a, b, c). A cold fit of a frame where one phase dominates can otherwise
    put the main phase's name on the other lattice."""
    import itertools

    active = [n for n in getattr(fit, "active_phases", []) if n in [p.name for p in spec.phases]]
    families: dict[str, list[str]] = {}
    for n in active:
        families.setdefault(_family(spec, n), []).append(n)
    out: dict[str, str] = {}
    for names in families.values():
        if len(names) < 2 or len(names) > 5:
            continue
        starts = {n: _start_cell(spec, n) for n in names}

        def dist(fitted: str, recipe: str) -> float:
            terms = [abs(float(fit.values.get(f"{fitted}_{k}", math.nan)) / v0 - 1.0) for k, v0 in starts[recipe].items()]
            terms = [t for t in terms if np.isfinite(t)]
            return float(sum(terms)) if terms else math.nan

        def total(perm: Sequence[str]) -> float:
            return float(sum(dist(f, r) for f, r in zip(names, perm)))

        same = total(names)
        best = min(itertools.permutations(names), key=total)
        if np.isfinite(same) and np.isfinite(total(best)) and total(best) < same - 1e-6:
            out.update({f: r for f, r in zip(names, best) if f != r})
    return out


def _renamed_spec(base: RefinementSpec, fit: Any, names: dict[str, str]) -> RefinementSpec:
    """``base`` with every refined value of ``fit`` as start, the phases' values moved to the
    recipe names ``names`` ({fitted: recipe}) gives them."""
    from insitu_xrd.pipeline.sequential.search import seeded_spec

    values = {}
    for k, v in fit.values.items():
        ph, _, rest = k.partition("_")
        values[f"{names[ph]}_{rest}" if ph in names and rest else k] = v
    return seeded_spec(base, values, phases=list(getattr(fit, "active_phases", [])) or None)


def _chi2(fit: Any) -> float:
    v = float(getattr(fit, "chi2", math.nan))
    return v if np.isfinite(v) and getattr(fit, "success", True) else math.inf


def cold_start(
    spec: RefinementSpec,
    fit_spec: FitFn,
    *,
    wavelength_A: float | None = None,
    two_theta_deg: np.ndarray | None = None,
    intensity: np.ndarray | None = None,
    phases: Sequence[str] = (),
    refinement: Any = None,
    search: bool = True,
    first: tuple[RefinementSpec, Any] | None = None,
    max_restarts: int = DEFAULT_RESTARTS,
    tol_chi2: float = DEFAULT_TOL_CHI2,
    deterministic: bool = False,
) -> ColdStart:
    """Fit from a cold start that does not stop in a false minimum (see the module docstring).

    spec : the start values (recipe, or the last good frame's values for a refit).
    fit_spec : spec -> FitResult of the caller's data, phases and mode, from no previous result.
    wavelength_A, two_theta_deg, intensity, phases, refinement : for the lattice search
        (``phases``: the phases fitted; the main one is searched); not needed with ``search=False``.
    search : run the lattice search before the first fit.
    first : (spec, fit) of a first fit the caller has already made (then no search or first fit
        here; the restarts are made from it).
    max_restarts : fits after the first (0: the first fit only).
    tol_chi2 : a restart is taken when lower by more than tol_chi2 x max(1, GoF).
    deterministic : also take the restart from the first fit's lattice when it is within the
        tolerance of the first fit (not only when lower): it starts from the recipe's values and
        the converged lattice, a function of the data alone, so the fit reported no longer
        depends on the recipe's start lattice even in the flat directions of the minimum (the
        shape of an insignificant diffuse component: 0.15 esd between starts otherwise).
        ``insitu-xrd refine`` uses it; the sequential chain does not (its first frame stays the
        fit from the lattice search unless a restart is lower).
    """
    searched: dict[str, tuple[float, float]] = {}
    if first is not None:
        spec0, fit0 = first
        label0 = "search"
    else:
        spec0, label0 = spec, "start"
        if search and two_theta_deg is not None and intensity is not None and wavelength_A:
            spec0, searched = searched_spec(spec, float(wavelength_A), two_theta_deg, intensity, list(phases), refinement)
            label0 = "search" if searched else "start"
        fit0 = fit_spec(spec0)
    best, best_spec, chosen = fit0, spec0, label0
    tried: list[tuple[str, float]] = [(label0, float(fit0.chi2))]
    seen: list[RefinementSpec] = [spec0]
    plan = ["lattice"] + (["diffuse"] if spec.diffuse else [])
    if spec0 != spec and any(p.cif is not None for p in spec.phases):
        # a CIF phase may be of low symmetry, where the search only scales the lengths and polishes
        # (`search_lattice`): from a start off in several directions that can land on a side
        # maximum the recipe's own start does not (seen for Cmcm and P-1 cells 2.5 % off), so the
        # recipe start is tried too (template phases are cubic or hexagonal: grid-searched)
        plan = ["start"] + plan
    n_values = 0
    for k in range(max(0, int(max_restarts))):
        if not np.isfinite(float(getattr(best, "chi2", math.nan))):
            break  # no values to restart from (a failed fit that did not converge is restarted)
        kind = plan[k] if k < len(plan) else "values"
        if kind == "start":
            label, sp = kind, spec
        elif kind == "lattice":
            label, sp = kind, lattice_restart_spec(spec, fit0)
        elif kind == "diffuse":
            label, sp = kind, _diffuse_restart_spec(spec, best)
        else:
            n_values += 1
            label, sp = f"values{n_values}", _values_restart_spec(spec, best)
        if any(sp == s for s in seen):  # same start again: same fit
            if kind != "values":
                continue
            break
        seen.append(sp)
        try:
            fit = fit_spec(sp)
        except Exception:  # a restart must never lose the fit already made
            tried.append((label, math.nan))
            continue
        tried.append((label, float(fit.chi2)))
        tol = tol_chi2 * max(1.0, float(best.gof) if np.isfinite(best.gof) else 1.0)
        if _chi2(fit) < _chi2(best) - tol or (deterministic and kind == "lattice" and _chi2(fit) <= _chi2(best) + tol):
            best, best_spec, chosen = fit, sp, label
        elif kind == "values":
            break  # a values restart that does not help: the minimum is stable
    notes: list[str] = []
    # names follow the recipe: each fitted lattice keeps the name of the closest recipe start cell
    rename = recipe_name_order(spec, best) if np.isfinite(_chi2(best)) else {}
    if rename:
        sp = _renamed_spec(spec, best, rename)
        try:
            fit = fit_spec(sp)
        except Exception:  # the fit already made is kept (with its note)
            fit = None
        tol = tol_chi2 * max(1.0, float(best.gof) if np.isfinite(best.gof) else 1.0)
        what = ", ".join(f"{f} -> {r}" for f, r in rename.items())
        if fit is not None and _chi2(fit) <= _chi2(best) + tol and not recipe_name_order(spec, fit):
            tried.append(("names", float(fit.chi2)))
            best, best_spec, chosen = fit, sp, "names"
            notes.append(f"cold start: the fitted lattices were exchanged ({what}) so that each keeps the name of the "
                         "recipe phase whose start cell it is closest to")
        else:
            notes.append(f"cold start: the fitted lattices are closer to other recipe phases' start cells ({what}); the "
                         "refit with the names exchanged did not reach the same chi2: names as fitted")
        _add_warning(best, notes[-1])
    tol0 = tol_chi2 * max(1.0, float(fit0.gof) if np.isfinite(fit0.gof) else 1.0)
    false_min = bool(_chi2(best) < _chi2(fit0) - tol0)
    if false_min:
        first_chi2 = float(fit0.chi2)
        notes.append(
            f"cold start: a restart ({chosen}) reached chi2 {float(best.chi2):.1f}, lower by {first_chi2 - float(best.chi2):.1f} "
            f"than the first fit ({first_chi2:.1f}, from the {'lattice search' if label0 == 'search' else 'recipe start'}): "
            "that was a false minimum; the lower fit is reported (fits tried: "
            + ", ".join(f"{k} {v:.1f}" for k, v in tried) + ")")
        _add_warning(best, notes[-1])
    return ColdStart(best, best_spec, float(fit0.chi2), tried, chosen, notes, searched, false_min)


def _add_warning(fit: Any, note: str) -> None:
    w = getattr(fit, "warnings", None)
    if isinstance(w, list) and note not in w:
        w.append(note)
