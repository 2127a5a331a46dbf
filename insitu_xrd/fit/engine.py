"""Le Bail / Rietveld refinement of one 1D powder pattern (numpy + scipy + lmfit Parameters).

Model (identical to `insitu_xrd.core.pattern.calc_pattern`): Chebyshev background + humps +
per-phase sums of area-normalised TCH pseudo-Voigts (GSAS-II CW U,V,W,X,Y plus isotropic
microstrain and size; optional GSAS-II SH/L Finger-Cox-Jephcoat asymmetry) + diffuse
pseudo-Voigts tied to reflections of a phase.

Algorithm
---------
- Linear parameters (background coefficients, hump and diffuse areas, phase scales, the Le Bail
  phase multipliers) are eliminated by variable projection: for every trial value of the nonlinear
  parameters (lattice, profile, zero, displacement, microstrain, size, diffuse widths/offsets, site
  parameters) they are the weighted linear least-squares solution. The nonlinear problem is solved
  by scipy's trust-region reflective least squares with bounds, with an analytic Jacobian of the
  projected residual (Kaufman's form, `_Problem.projected_jacobian`): profile derivatives in
  closed form, per-reflection position/width/area derivatives by differences of those cheap
  functions, assembled with sparse matrices (`_Problem.model_derivatives`). Crystallite sizes are
  moved as 1/size (broadening ~ 1/size). Peaks are evaluated vectorised in windows of
  +/- `WINDOW_FWHM` FWHM; a phase's profiles are reused while its positions/widths do not change,
  the window geometry is shared by the profiles and their derivatives at one point, and the
  finite differences at one point are shared by the Le Bail Jacobian and the phase-fraction step
  (memoised by their inputs: results identical to recomputing them).
- Rietveld: area = scale * m |F|^2 / (sin^2(theta) cos(theta)); |F|^2 recomputed when the site
  parameters or the cell (to 1e-4 A) change, and cached between fits. A cold start runs the
  trust-region solver, then Levenberg-Marquardt steps (`Refinement._polish`); a warm start (the
  previous frame's result) goes straight to those steps, which keep their Jacobian once a step
  is below 1 esd (chord steps: a new residual only). Every Rietveld fit ends with a check at the
  final point: the Gauss-Newton step with the exact Jacobian (the covariance's) must move no
  nonlinear parameter by more than 0.05 esd, else it is taken and the check repeated.
- Le Bail, cold start: a structure-factor (Rietveld-like) stage first brings lattice and profile
  into the basin (robust to a few tenths of a percent of starting lattice error); then Le Bail
  intensity extraction (partition of obs - background among overlapping peaks) and the Pawley
  polish: Levenberg-Marquardt steps on the joint problem (nonlinear + linear + reflection
  intensities, ridge-damped on the intensities) to the least-squares optimum. If the polish has
  not converged in 8 steps, cycles of (i) extraction and (ii) the nonlinear fit with the
  intensities held (until chi^2 changes by < 0.1 % or rises: the Le Bail fixed point is not a
  chi^2 minimum where peaks overlap) and a second polish follow.
  Warm start: the previous intensities (matched by hkl), re-partitioned for the new pattern, and
  the previous lattice/profile go straight to the polish. The polish keeps its Jacobian once a
  step is below 1 esd (chord steps; a fresh one if a chord step fails).
- Phase fractions in Le Bail mode: with lattice, profile and Le Bail positions fixed, one linear
  least-squares step with structure-factor curves (one scale per phase) plus background/diffuse
  gives the scales, hence Hill-Howard weight fractions W_p = S_p (ZMV)_p / sum (ZMV S); their
  esds include the uncertainty of the refined nonlinear parameters.
- Covariance: from the full weighted Jacobian at the solution (nonlinear and linear columns; in
  Le Bail mode the reflection intensities are included as Pawley-type columns, so lattice esds
  account for intensity/position correlation in overlaps), scaled by the reduced chi^2 (gof).
  Serial correlation: the Durbin-Watson statistic DW of the weighted residuals gives the lag-1
  autocorrelation rho = 1 - DW/2; for rho > 0 every esd is multiplied by sqrt((1 + rho)/(1 - rho))
  (AR(1) form of Berar & Lelann's 1991 correction).
- A phase whose scale is not significant (|S| < 3 esd) in a multi-phase fit has its nonlinear
  parameters held at their start values and the fit is repeated, so an absent H3 is reported as
  a fraction ~0 +/- esd instead of a lattice wandering onto noise or another phase.
- Degenerate combinations are avoided automatically (reported in ``warnings``): Y is held when a
  Lorentzian microstrain is refined (both ~ tan(theta)), X when a Lorentzian size is refined
  (both ~ 1/cos(theta)), U when a Gaussian microstrain is refined.

Modules (insitu_xrd.fit; each holds the methods of one job, mixed into `Refinement` or `_Problem`)
-------------------------------------------------------------------------------------------------
- ``engine`` (here): `Refinement` — set-up, `fit`, data preparation and the fit stages (`_run`).
- ``parameters``: parameter names, start values, bounds, constraints, linear/nonlinear split.
- ``structures``: phase structures with site parameters; cached reflections and |F|^2.
- ``model``: `_Problem`, one fit's data and the model evaluation (peaks, linear columns, residual).
- ``windows``: windowed peak profiles on the grid (and their closed-form derivatives).
- ``derivatives``: model derivatives and the projected Jacobian.
- ``lebail``: Le Bail intensity extraction and the Le Bail-mode phase-fraction step.
- ``solvers``: trust-region solve, Gauss-Newton/Levenberg-Marquardt polish, final check.
- ``covariance``: full Jacobian, covariance, esds and the serial-correlation factor.
- ``assemble``: the `FitResult` (indices, curves, values/esds, fractions, volumes).
"""

from __future__ import annotations

import time
from typing import Sequence

import lmfit
import numpy as np

from insitu_xrd.core.crystal import Phase, Reflections, make_template
from insitu_xrd.core.pattern import Instrument
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.assemble import _ResultAssembly
from insitu_xrd.fit.covariance import _Covariance
from insitu_xrd.fit.lebail import _LeBail
from insitu_xrd.fit.model import _Problem
from insitu_xrd.fit.parameters import _ParameterSetup, held_phases
from insitu_xrd.fit.phase_model import PhaseModel
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.solvers import _Solvers
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.fit.structures import _StructureCache

# Module-level names of the engine before it was split, importable from here as before.
from insitu_xrd.fit.derivatives import _LazyTransposed  # noqa: F401
from insitu_xrd.fit.model import _PhaseData, _default_phase_spec  # noqa: F401
from insitu_xrd.fit.parameters import (  # noqa: F401
    _PROFILE_NAMES,
    _cell_from,
    _is_reciprocal,
    _lattice_names,
    _opt_space,
)
from insitu_xrd.fit.solvers import (  # noqa: F401
    _CHORD_STEP_ESD,
    _FINAL_STEP_ESD,
    _PAWLEY_RIDGE,
    _POLISH_DM_M,
    _POLISH_STEP_ESD,
)
from insitu_xrd.fit.structures import _POSITIONS, _site_positions, _structure_factor_sq  # noqa: F401
from insitu_xrd.fit.windows import _FOUR_LN2, _GAUSS_NORM  # noqa: F401

__all__ = ["Refinement"]


_SIGNIFICANCE = 3.0
#: Rietveld mode: at most _VERIFY_STEPS final exact-Jacobian Gauss-Newton steps are taken (each
#: only if it moves a nonlinear parameter by more than `solvers._FINAL_STEP_ESD` esd).
_VERIFY_STEPS = 3
#: Most Gauss-Newton steps of a Rietveld polish (warm start; after the trust-region solver).
_GN_STEPS = 10


def _single_thread_blas():
    """BLAS threads cost more than they give on these small dense problems (measured 5x slower
    with OpenBLAS on 2 cores); limit them for the duration of a fit when threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class Refinement(_ParameterSetup, _StructureCache, _Solvers, _LeBail, _Covariance, _ResultAssembly):
    """Refinement engine for one recipe ``refinement:`` section (see module docstring).

    Defined here: set-up, the fit entry points, data preparation and the fit stages (`_run`); the
    other methods, by job, in the modules parameters, structures, solvers, lebail, covariance and
    assemble of insitu_xrd.fit (mixed in)."""

    def __init__(self, spec: RefinementSpec, wavelength_A: float, instrument: Instrument | None = None,
                 phases: dict[str, Phase] | None = None):
        if not (wavelength_A and wavelength_A > 0):
            raise InsituXRDError(f"refinement needs a positive wavelength_A, got {wavelength_A!r}")
        self.spec = spec
        self.wavelength_A = float(wavelength_A)
        prof = spec.profile
        base = instrument if instrument is not None else Instrument(self.wavelength_A)
        self.instrument = Instrument(
            self.wavelength_A,
            U=prof.U if prof.U is not None else base.U,
            V=prof.V if prof.V is not None else base.V,
            W=prof.W if prof.W is not None else base.W,
            X=prof.X if prof.X is not None else base.X,
            Y=prof.Y if prof.Y is not None else base.Y,
            zero_deg=prof.zero_deg if prof.zero_deg is not None else base.zero_deg,
            displacement_um=prof.displacement_um if prof.displacement_um is not None else base.displacement_um,
            distance_mm=prof.distance_mm if prof.distance_mm is not None else base.distance_mm,
            sh_l=prof.sh_l if prof.sh_l is not None else base.sh_l,
        )
        self.spec_names = [p.name for p in spec.phases]
        self.phases: dict[str, Phase] = {}
        self.models: dict[str, PhaseModel] = {}
        given = phases or {}
        for ps in spec.phases:
            if ps.cif is not None:
                if ps.name not in given:
                    raise InsituXRDError(
                        f"refinement.phases[{ps.name}]: cif {ps.cif!r} given but no Phase object was passed "
                        "to Refinement(phases=...) (the caller reads the CIF)")
                ph = given[ps.name]
                ph = Phase(ps.name, ph.space_group, ph.cell, [s for s in ph.sites], ph.z_formula)
            elif ps.name in given:
                ph = given[ps.name]
            else:
                kw = {}
                if ps.template.lower() == "nmc811":
                    for k in ("li_occupancy", "ni_li_mixing", "o_z"):
                        if getattr(ps, k) is not None:
                            kw[k] = getattr(ps, k)
                ph = make_template(ps.template, name=ps.name, **kw)
            ph = ph.with_cell(a=ps.a, b=ps.b, c=ps.c, alpha=ps.alpha, beta=ps.beta, gamma=ps.gamma)
            if ps.biso_A2 is not None:
                for s in ph.sites:
                    s.biso_A2 = float(ps.biso_A2)
            # lattice and site parameters with their symmetry constraints (insitu_xrd.fit.phase_model)
            model = PhaseModel(ps, ph)
            self.models[ps.name] = model
            self.phases[ps.name] = model.phase
        self._refl_cache: dict[str, tuple[float, tuple[float, ...], Reflections]] = {}
        self._fsq_cache: dict[tuple, np.ndarray] = {}
        self._mass_cache: dict[tuple, float] = {}

    # ----- fitting ----------------------------------------------------------------------------
    def fit(
        self,
        two_theta_deg: np.ndarray,
        intensity: np.ndarray,
        sigma: np.ndarray | None,
        start: FitResult | None = None,
        phases: Sequence[str] | None = None,
        mode: str | None = None,
        params: lmfit.Parameters | None = None,
    ) -> FitResult:
        """Refine one pattern; see the module docstring for the algorithm.

        params: lmfit Parameters (e.g. from `initial_params`, edited) whose values, vary flags,
        bounds and expressions replace the spec's for the parameters they name; expressions may tie
        nonlinear parameters only (linear ones are solved by least squares at every step).
        """
        with _single_thread_blas():
            return self._fit(two_theta_deg, intensity, sigma, start, phases, mode, params)

    def _fit(self, two_theta_deg, intensity, sigma, start, phases, mode, given=None) -> FitResult:
        t0 = time.perf_counter()
        mode = mode or self.spec.mode
        if mode not in ("lebail", "rietveld"):
            raise InsituXRDError(f"refinement mode must be 'lebail' or 'rietveld', got {mode!r}")
        active = list(phases) if phases is not None else [p.name for p in self.spec.phases if not p.optional]
        unknown = [p for p in active if p not in self.spec_names]
        if unknown:
            raise InsituXRDError(f"unknown phase(s) {unknown}; recipe phases: {self.spec_names}")
        if not active:
            raise InsituXRDError("no active phase to refine")
        x, y, s, fitmask = self._prepare_data(two_theta_deg, intensity, sigma)
        params, warnings = self._start_params(active, start, given)
        prob = _Problem(self, x, y, s, fitmask, active, params)
        lebail_start = start.lebail_areas if (start is not None and mode == "lebail") else {}
        held: list[str] = []
        # Newly activated phases (optional ones on a cold start, phases absent from `start`) are on
        # probation: held at their start lattice until their scale proves significant (see _run).
        if start is None:
            new = [p for p in active if self.spec.phase(p).optional]
        else:
            new = [p for p in active if p not in start.active_phases]
        probation = new if (new and len(new) < len(active)) else []
        outcome = self._run(prob, mode, lebail_start, held, probation, warm=start is not None)
        warnings += outcome["warnings"]
        # A phase that became insignificant in a multi-phase fit: hold its nonlinear parameters, refit.
        if len(active) > 1:
            weak = []
            for name in active:
                sc, esd = outcome["scales"].get(name, (np.nan, np.nan))
                if name not in held_phases(held) and np.isfinite(esd) and esd > 0 and abs(sc) < _SIGNIFICANCE * esd:
                    weak.append(name)
            if weak and len(weak) < len(active):
                for name in weak:
                    held += self._hold_phase(params, name, reset=True)
                    warnings.append(
                        f"phase {name}: scale not significant (|S| < {_SIGNIFICANCE:g} esd); "
                        "its lattice/profile parameters were held at their start values")
                prob = _Problem(self, x, y, s, fitmask, active, params)
                outcome = self._run(prob, mode, outcome["lebail_areas"], held)
                warnings += outcome["warnings"]
        return self._result(prob, outcome, mode, warnings, time.perf_counter() - t0)

    def _prepare_data(self, tth, inten, sigma):
        x = np.asarray(tth, dtype=float)
        y = np.asarray(inten, dtype=float)
        if x.shape != y.shape or x.ndim != 1:
            raise InsituXRDError(f"two_theta_deg and intensity must be 1D arrays of one length, got {x.shape}, {y.shape}")
        if sigma is None:
            s = np.sqrt(np.maximum(y, 1.0))
        else:
            s = np.asarray(sigma, dtype=float)
            if s.shape != y.shape:
                raise InsituXRDError(f"sigma has shape {s.shape}, intensity {y.shape}")
        order = np.argsort(x)
        x, y, s = x[order], y[order], s[order]
        good = np.isfinite(x) & np.isfinite(y) & np.isfinite(s)
        rng = self.spec.range_2theta_deg
        if rng is not None:
            good &= (x >= rng[0]) & (x <= rng[1])
        x, y, s = x[good], y[good], s[good]
        fitmask = s > 0
        for lo, hi in self.spec.exclude_2theta_deg:
            fitmask &= ~((x >= lo) & (x <= hi))
        if fitmask.sum() < 20:
            raise InsituXRDError(f"only {int(fitmask.sum())} usable points in the refinement range {rng}")
        s = np.where(s > 0, s, 1.0)
        return x, y, s, fitmask

    # ----- stages -----------------------------------------------------------------------------
    def _run(self, prob: _Problem, mode: str, lebail_start: dict, held: list[str],
             probation: Sequence[str] = (), warm: bool = False) -> dict:
        """Fit stages for one set of active phases.

        Stage A (structure-factor intensities, loose tolerance) runs on a cold Le Bail start or when
        phases are on probation (newly activated): their nonlinear parameters are held during it and
        released only if their scale is significant (linear esd at the stage-A solution).
        Stage B: Rietveld fit, or Le Bail cycles and the Pawley polish. Rietveld: the trust-region
        solver, then damped Gauss-Newton steps (`_polish`); a warm start (the previous frame's
        result, no phase on probation) takes the steps alone and falls back to the solver only if
        they do not converge. Rietveld fits end with the exact-Jacobian check (`_take_gn_step`).
        """
        params = prob.params
        max_nfev = self.spec.max_nfev
        verify = False
        final_eval = None  # the residual evaluation at the final point, when the polish made it
        messages: list[str] = []
        warnings: list[str] = []
        success = True
        lebail = mode == "lebail"
        missing = self._assign_lebail_start(prob, lebail_start) if lebail else set()
        if probation or missing:
            on_hold = {name: self._hold_phase(params, name, reset=False) for name in probation}
            free_nl, _ = self._split(params)
            nl = [n for n in free_nl if not self._has_site(n)]
            vals, lin, r, ok, msg = self._nonlinear(prob, nl, False, max_nfev, ftol=1e-4)
            self._store_linear(params, lin)
            sig = self._linear_scale_esds(prob, params.valuesdict())
            released = False
            for name, names in on_hold.items():
                sc, esd = sig.get(name, (0.0, np.inf))
                if np.isfinite(esd) and esd > 0 and abs(sc) >= _SIGNIFICANCE * esd:
                    for pn in names:
                        params[pn].set(vary=True)
                    released = True
                else:
                    held.extend(names)
                    warnings.append(
                        f"phase {name}: scale not significant (|S| < {_SIGNIFICANCE:g} esd) at its start lattice; "
                        "its lattice/profile parameters were held at their start values")
            if released:
                # the held stage distorts the other phases' parameters: restart from the start
                # values (and, for Le Bail, redo the structure stage with every phase free)
                for par in params.values():
                    if par.user_data and par.vary and not self._is_linear(par.name):
                        par.set(value=par.user_data["start"])
                if lebail:
                    free_nl, _ = self._split(params)
                    nl = [n for n in free_nl if not self._has_site(n)]
                    vals, lin, r, ok, msg = self._nonlinear(prob, nl, False, max_nfev, ftol=1e-4)
                    self._store_linear(params, lin)
            if lebail:
                vals = params.valuesdict()
                for name, pd in prob.pd.items():
                    if name in missing or pd.areas is None or released:
                        _, t, fwhm, eta, tthb, d = prob.phase_blocks(pd, vals)
                        pd.areas = max(lin.get(f"{name}_scale", params[f"{name}_scale"].value), 0.0) * \
                            prob.structure_areas(pd, tthb)
        free_nl, free_lin = self._split(params)
        site_free = [n for n in free_nl if self._has_site(n)]
        if not lebail:
            polished = False
            if warm and not probation:
                # next to the previous frame's optimum: Gauss-Newton converges in a few steps,
                # most of them with the kept Jacobian (a trust-region solve recomputes it each time)
                steps, polished, final_eval = self._polish(prob, free_nl, False, steps=_GN_STEPS)
                if polished:
                    messages.append(f"warm start (Gauss-Newton steps: {steps})")
            if not polished:
                vals, lin, r, ok, msg = self._nonlinear(prob, free_nl, False, max_nfev)
                self._store_linear(params, lin)
                success &= ok
                messages.append(msg)
                # the trust-region solver's ftol test can stop short in a shallow valley (scales,
                # widths and diffuse areas trade): the same Gauss-Newton steps finish the fit
                steps, _, final_eval = self._polish(prob, free_nl, False, steps=_GN_STEPS)
                messages.append(f"Gauss-Newton steps: {steps}")
            # every Rietveld fit ends with the exact-Jacobian check (below)
            verify = True
        else:
            nl_lebail = [n for n in free_nl if n not in site_free]
            prev = np.inf
            cold = bool(missing) or bool(probation)
            polish = self.spec.pawley_polish
            converged = False
            if polish:
                # Intensities by Le Bail extraction at the current lattice/profile (cold: the
                # structure stage's; warm: the previous frame's, its intensities re-partitioned for
                # this pattern), then the damped Gauss-Newton (Levenberg-Marquardt) polish on the
                # joint problem. From the structure stage this reaches the optimum the Le Bail cycles
                # below reach, in a fraction of the time (the cycles crept for 15 s on patterns whose
                # structure-model intensities were far off); they remain the fallback.
                self._extract(prob, params.valuesdict(), passes=6 if cold else 3)
                steps, converged, final_eval = self._polish(prob, nl_lebail, True, steps=8)
                msg = "cold start" if cold else "warm start"
                stages = ("Le Bail extraction after the structure stage" if cold
                          else "Le Bail extraction from the previous intensities")
            # a warm start keeps its polished result (the previous frame's fit was the start);
            # a cold one that has not converged falls back to the Le Bail cycles
            if not polish or (cold and not converged):
                for cycle in range(self.spec.lebail_cycles):
                    self._extract(prob, params.valuesdict(), passes=6 if cycle == 0 else 2)
                    if cycle == 0:
                        prob._base_vals = params.valuesdict()
                        r0 = prob.residual(prob._base_vals, True)[0]
                        prev = float(r0 @ r0)
                    # intensities are held in this stage, so its optimum moves with the next
                    # extraction: a loose tolerance and a cap on evaluations (a shallow valley, e.g.
                    # diffuse width vs microstrain, can otherwise creep for hundreds of steps); the
                    # Pawley polish below converges the joint problem
                    vals, lin, r, ok, msg = self._nonlinear(prob, nl_lebail, True, min(max_nfev, 50), ftol=1e-5)
                    for name, pd in prob.pd.items():
                        k = lin.pop(f"{name}_lebail_k", 1.0)
                        pd.areas = pd.areas * max(k, 0.0)
                    self._store_linear(params, lin)
                    success &= ok
                    chi2 = float(r @ r)
                    # converged, or drifting (the Le Bail fixed point is not a chi2 minimum: with
                    # overlapping peaks chi2 can creep up cycle after cycle; the polish takes over)
                    if abs(prev - chi2) < 1e-3 * chi2 or chi2 > prev:
                        break
                    prev = chi2
                self._extract(prob, params.valuesdict(), passes=1)
                stages = ("polish not converged in 8 steps; " if polish else "") + f"Le Bail cycles: {cycle + 1}"
                if polish:
                    steps, _, final_eval = self._polish(prob, nl_lebail, True, steps=6)
                else:
                    steps = 0
            messages.append(f"{msg} ({stages}; Pawley polish steps: {steps})")
        for check in range(_VERIFY_STEPS + 1):
            vals = params.valuesdict()
            prob._base_vals = vals
            if final_eval is not None:
                (lnames, cols, fixed, info), coef, r = final_eval
                lin = dict(zip(lnames, coef))
                final_eval = None
            else:
                r, lin, (lnames, cols, fixed, info) = prob.residual(vals, lebail)
                if lebail:
                    for name, pd in prob.pd.items():
                        k = lin.pop(f"{name}_lebail_k", 1.0)
                        pd.areas = pd.areas * max(k, 0.0)
                    r, lin, (lnames, cols, fixed, info) = prob.residual(vals, lebail)
            self._store_linear(params, {n: v for n, v in lin.items() if not n.endswith("_lebail_k")})
            vals = params.valuesdict()
            # the columns just built are those at `vals` (storing the solved linear values changes
            # no column): the covariance Jacobian and the result reuse them
            final_cols = (lnames, cols, fixed, info)
            cov_names, cov, extra_cols, gn = self._covariance(prob, vals, free_nl, lebail,
                                                              pre=(final_cols, [lin.get(n, 1.0) for n in lnames], r))
            if not verify or check == _VERIFY_STEPS or not self._take_gn_step(prob, free_nl, gn, cov, r):
                break
        out = dict(vals=vals, r=r, cov_names=cov_names, cov=cov, info=info, success=success,
                   message="; ".join(messages), n_extra=extra_cols, held=list(held), warnings=warnings,
                   columns=final_cols)
        # phase fractions
        scales: dict[str, tuple[float, float]] = {}
        if lebail and self.spec.phase_fraction_step:
            scales, frac_cov, frac_names = self._fraction_step(
                prob, vals, [n for n in free_nl if not self._has_site(n)])
            out["frac_cov"] = (frac_names, frac_cov)
        elif not lebail:
            for name in prob.pd:
                n = f"{name}_scale"
                e = np.nan
                if n in cov_names and np.isfinite(cov[cov_names.index(n), cov_names.index(n)]):
                    e = float(np.sqrt(max(cov[cov_names.index(n), cov_names.index(n)], 0.0)))
                scales[name] = (vals[n], e)
        out["scales"] = scales
        out["lebail_areas"] = {name: (pd.hkl.copy(), pd.areas.copy()) for name, pd in prob.pd.items()
                               if pd.areas is not None}
        return out
