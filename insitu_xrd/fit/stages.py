"""The stages of one fit: which solver runs when, from the start point to the final point.

`FitStages.run` takes one fit's `Problem` (data, Parameters, model) and moves its parameters:
a structure-factor stage on a cold Le Bail start or for phases on probation (newly activated:
held until their scale is significant), then the Rietveld fit (trust-region solve and
Gauss-Newton polish; a warm start goes straight to the polish) or the Le Bail extraction and
Pawley polish (Le Bail cycles as the fallback), then the covariance at the final point (Rietveld:
with the exact-Jacobian check, `take_gn_step`) and the phase scales. It returns the final point
as a dict for `insitu_xrd.fit.assemble.assemble_result`. The derivatives of the problem's model
(`ModelDerivatives`) are built here, one per problem.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from insitu_xrd.fit.covariance import covariance, esd_factor, full_jacobian, linear_scale_esds
from insitu_xrd.fit.derivatives import ModelDerivatives
from insitu_xrd.fit.lebail import assign_start, extract, fraction_step
from insitu_xrd.fit.linear import is_nonnegative
from insitu_xrd.fit.model import Problem
from insitu_xrd.fit.parameters import ParameterBuilder, is_linear, split_free, store_linear
from insitu_xrd.fit.solvers import polish, solve_nonlinear, take_gn_step
from insitu_xrd.fit.spec import RefinementSpec

__all__ = ["FitStages", "SIGNIFICANCE", "VERIFY_STEPS", "GN_STEPS"]

#: A phase scale below SIGNIFICANCE statistical esds is not significant (its phase is held).
#: The esd of this test is the statistical one (covariance x reduced chi^2), never inflated by the
#: serial-correlation factor: on real patterns Durbin-Watson is 0.05-0.12 and that factor is
#: 5.7-9, which held real 4-6 wt% phases at their start lattice (issue 20). A phase the recipe
#: marks ``hold: never`` is never held.
SIGNIFICANCE = 3.0
#: Rietveld mode: at most VERIFY_STEPS final exact-Jacobian Gauss-Newton steps are taken (each
#: only if it moves a nonlinear parameter by more than `solvers.FINAL_STEP_ESD` esd).
VERIFY_STEPS = 3
#: Most Gauss-Newton steps of a Rietveld polish (warm start; after the trust-region solver).
GN_STEPS = 10


class FitStages:
    """The fit stages for one recipe ``refinement:`` section; ``builder`` holds phases' parameters."""

    def __init__(self, spec: RefinementSpec, builder: ParameterBuilder):
        self.spec = spec
        self.builder = builder

    def _polish(self, prob: Problem, derivs: ModelDerivatives, free_nl: list[str], lebail: bool, steps: int):
        """`solvers.polish` with the full Jacobian of this problem (`covariance.full_jacobian`)."""
        return polish(prob, lambda vals, pre: full_jacobian(prob, derivs, vals, free_nl, lebail, pre), free_nl, lebail,
                      steps=steps)

    def run(self, prob: Problem, mode: str, lebail_start: dict, held: list[str],
            probation: Sequence[str] = (), warm: bool = False) -> dict:
        """Fit stages for one set of active phases; ``held`` collects the names of parameters held
        (phases not significant). Returns the final point for `assemble_result`.

        Stage A (`_structure_stage`: structure-factor intensities, loose tolerance) runs on a cold
        Le Bail start or when phases are on probation (newly activated): their nonlinear
        parameters are held during it and released only if their scale is significant (linear esd
        at the stage-A solution). Stage B: the Rietveld fit (`_rietveld`) or the Le Bail
        extraction and Pawley polish (`_lebail`). Then the final point (`_final_point`: its
        covariance; Rietveld fits end with the exact-Jacobian check, `take_gn_step`) and the phase
        scales (`_scales`).
        """
        derivs = ModelDerivatives(prob)
        warnings: list[str] = []
        probation = [p for p in probation if self.may_hold(p)]
        lebail = mode == "lebail"
        missing = assign_start(prob, lebail_start) if lebail else set()
        if probation or missing:
            self._structure_stage(prob, derivs, lebail, missing, probation, held, warnings)
        free_nl, _free_lin = split_free(prob.params)
        if not lebail:
            success, messages, final_eval = self._rietveld(prob, derivs, free_nl, warm and not probation)
        else:
            success, messages, final_eval = self._lebail(prob, derivs, free_nl, bool(missing) or bool(probation))
        # every Rietveld fit ends with the exact-Jacobian check
        out = self._final_point(prob, derivs, free_nl, lebail, not lebail, final_eval)
        negative = [n for n in out["columns"][0] if is_nonnegative(n) and not n.endswith("_lebail_k")
                    and out["vals"].get(n, 0.0) < 0.0]
        if negative:
            # a scale or area with a physical sign ended negative: continue from this point with
            # them held >= 0 in every linear solve (a fit that ends with none negative is the
            # unconstrained one, bit for bit; the bound applied from the start would change the
            # solver's path on the way)
            prob.nonnegative = True
            if lebail:
                ok, more, final_eval = self._lebail(prob, derivs, free_nl, False)
            else:
                ok, more, final_eval = self._rietveld(prob, derivs, free_nl, True)
            success &= ok
            messages += [f"{', '.join(negative)} < 0: refit with them >= 0"] + more
            out = self._final_point(prob, derivs, free_nl, lebail, not lebail, final_eval)
        out.update(success=success, message="; ".join(messages), held=list(held), warnings=warnings)
        out.update(self._scales(prob, derivs, out, free_nl, lebail))
        out["lebail_areas"] = {name: (pd.hkl.copy(), pd.areas.copy()) for name, pd in prob.pd.items()
                               if pd.areas is not None}
        return out

    def may_hold(self, name: str) -> bool:
        """The recipe lets the fit hold phase ``name`` when its scale is not significant (``hold: auto``)."""
        try:
            return getattr(self.spec.phase(name), "hold", "auto") != "never"
        except KeyError:
            return True

    def weak_phases(self, outcome: dict, active: Sequence[str], held: Sequence[str]) -> list[tuple[str, str]]:
        """(phase, reason) of the phases of a multi-phase fit whose scale is not significant at the
        final point ``outcome`` (|S| < SIGNIFICANCE statistical esds: the esd without the
        serial-correlation factor), not held yet and not marked ``hold: never``."""
        already = {n.split("_", 1)[0] for n in held}
        stat = outcome.get("scales_statistical", outcome["scales"])
        out = []
        for name in active:
            sc, esd = stat.get(name, (np.nan, np.nan))
            if name in already or not self.may_hold(name):
                continue
            if f"{name}_scale" in outcome.get("at_zero", ()):
                out.append((name, f"phase {name}: scale at its bound 0 (not significant)"))
                continue
            if np.isfinite(esd) and esd > 0 and abs(sc) < SIGNIFICANCE * esd:
                out.append((name, f"phase {name}: scale not significant (|S| {abs(sc):.3g} < {SIGNIFICANCE:g} x "
                                  f"statistical esd {esd:.3g})"))
        return out

    def _structure_stage(self, prob: Problem, derivs: ModelDerivatives, lebail: bool, missing: set[str],
                         probation: Sequence[str], held: list[str], warnings: list[str]) -> None:
        """Stage A: the nonlinear parameters (no site parameters) with structure-factor
        intensities, the phases on probation held; those whose scale is significant are released
        (and the stage restarts from the start values), the others stay held (added to ``held``).
        Le Bail: the phases without intensities start from the structure-factor ones."""
        params = prob.params
        max_nfev = self.spec.max_nfev
        on_hold = {name: self.builder.hold_phase(params, name, reset=False) for name in probation}
        free_nl, _ = split_free(params)
        nl = [n for n in free_nl if not self.builder.is_site(n)]
        vals, lin, r, ok, msg = solve_nonlinear(prob, derivs, nl, False, max_nfev, ftol=1e-4)
        store_linear(params, lin)
        # the statistical esd (no serial-correlation factor): see SIGNIFICANCE
        sig = linear_scale_esds(prob, params.valuesdict(), "none")
        released = False
        for name, names in on_hold.items():
            sc, esd = sig.get(name, (0.0, np.inf))
            if np.isfinite(esd) and esd > 0 and abs(sc) >= SIGNIFICANCE * esd:
                for pn in names:
                    params[pn].set(vary=True)
                released = True
            else:
                held.extend(names)
                warnings.append(
                    f"phase {name}: scale not significant (|S| {abs(sc):.3g} < {SIGNIFICANCE:g} x statistical esd "
                    f"{esd:.3g}) at its start lattice; "
                    "its lattice/profile parameters were held at their start values")
        if released:
            # the held stage distorts the other phases' parameters: restart from the start
            # values (and, for Le Bail, redo the structure stage with every phase free)
            for par in params.values():
                if par.user_data and par.vary and not is_linear(par.name):
                    par.set(value=par.user_data["start"])
            if lebail:
                free_nl, _ = split_free(params)
                nl = [n for n in free_nl if not self.builder.is_site(n)]
                vals, lin, r, ok, msg = solve_nonlinear(prob, derivs, nl, False, max_nfev, ftol=1e-4)
                store_linear(params, lin)
        if lebail:
            vals = params.valuesdict()
            for name, pd in prob.pd.items():
                if name in missing or pd.areas is None or released:
                    _, t, fwhm, eta, tthb, d = prob.phase_blocks(pd, vals)
                    pd.areas = max(lin.get(f"{name}_scale", params[f"{name}_scale"].value), 0.0) * \
                        prob.structure_areas(pd, tthb, vals)

    def _rietveld(self, prob: Problem, derivs: ModelDerivatives, free_nl: list[str], warm: bool):
        """Stage B, Rietveld: the trust-region solver, then damped Gauss-Newton steps
        (`solvers.polish`); a warm start (the previous frame's result, no phase on probation)
        takes the steps alone and falls back to the solver only if they do not converge.
        Returns (success, messages, the polish's evaluation at the final point or None)."""
        params = prob.params
        success = True
        messages: list[str] = []
        final_eval = None
        polished = False
        if warm:
            # next to the previous frame's optimum: Gauss-Newton converges in a few steps,
            # most of them with the kept Jacobian (a trust-region solve recomputes it each time)
            steps, polished, final_eval = self._polish(prob, derivs, free_nl, False, steps=GN_STEPS)
            if polished:
                messages.append(f"warm start (Gauss-Newton steps: {steps})")
        if not polished:
            vals, lin, r, ok, msg = solve_nonlinear(prob, derivs, free_nl, False, self.spec.max_nfev)
            store_linear(params, lin)
            success &= ok
            messages.append(msg)
            # the trust-region solver's ftol test can stop short in a shallow valley (scales,
            # widths and diffuse areas trade): the same Gauss-Newton steps finish the fit
            steps, _, final_eval = self._polish(prob, derivs, free_nl, False, steps=GN_STEPS)
            messages.append(f"Gauss-Newton steps: {steps}")
        return success, messages, final_eval

    def _lebail(self, prob: Problem, derivs: ModelDerivatives, free_nl: list[str], cold: bool):
        """Stage B, Le Bail: extraction and the Pawley polish; Le Bail cycles (extraction /
        nonlinear fit with the intensities held) without the polish or when a cold polish has not
        converged. Returns (success, messages, the polish's evaluation at the final point or None)."""
        params = prob.params
        max_nfev = self.spec.max_nfev
        success = True
        final_eval = None
        nl_lebail = [n for n in free_nl if not self.builder.is_site(n)]
        prev = np.inf
        polish = self.spec.pawley_polish
        converged = False
        if polish:
            # Intensities by Le Bail extraction at the current lattice/profile (cold: the
            # structure stage's; warm: the previous frame's, its intensities re-partitioned for
            # this pattern), then the damped Gauss-Newton (Levenberg-Marquardt) polish on the
            # joint problem. From the structure stage this reaches the optimum the Le Bail cycles
            # below reach, in a fraction of the time (the cycles crept for 15 s on patterns whose
            # structure-model intensities were far off); they remain the fallback.
            extract(prob, params.valuesdict(), passes=6 if cold else 3)
            steps, converged, final_eval = self._polish(prob, derivs, nl_lebail, True, steps=8)
            msg = "cold start" if cold else "warm start"
            stages = ("Le Bail extraction after the structure stage" if cold
                      else "Le Bail extraction from the previous intensities")
        # a warm start keeps its polished result (the previous frame's fit was the start);
        # a cold one that has not converged falls back to the Le Bail cycles
        if not polish or (cold and not converged):
            for cycle in range(self.spec.lebail_cycles):
                extract(prob, params.valuesdict(), passes=6 if cycle == 0 else 2)
                if cycle == 0:
                    prob.base_vals = params.valuesdict()
                    r0 = prob.residual(prob.base_vals, True)[0]
                    prev = float(r0 @ r0)
                # intensities are held in this stage, so its optimum moves with the next
                # extraction: a loose tolerance and a cap on evaluations (a shallow valley, e.g.
                # diffuse width vs microstrain, can otherwise creep for hundreds of steps); the
                # Pawley polish below converges the joint problem
                vals, lin, r, ok, msg = solve_nonlinear(prob, derivs, nl_lebail, True, min(max_nfev, 50), ftol=1e-5)
                for name, pd in prob.pd.items():
                    k = lin.pop(f"{name}_lebail_k", 1.0)
                    pd.areas = pd.areas * max(k, 0.0)
                store_linear(params, lin)
                success &= ok
                chi2 = float(r @ r)
                # converged, or drifting (the Le Bail fixed point is not a chi2 minimum: with
                # overlapping peaks chi2 can creep up cycle after cycle; the polish takes over)
                if abs(prev - chi2) < 1e-3 * chi2 or chi2 > prev:
                    break
                prev = chi2
            extract(prob, params.valuesdict(), passes=1)
            stages = ("polish not converged in 8 steps; " if polish else "") + f"Le Bail cycles: {cycle + 1}"
            if polish:
                steps, _, final_eval = self._polish(prob, derivs, nl_lebail, True, steps=6)
            else:
                steps = 0
        return success, [f"{msg} ({stages}; Pawley polish steps: {steps})"], final_eval

    def _final_point(self, prob: Problem, derivs: ModelDerivatives, free_nl: list[str], lebail: bool,
                     verify: bool, final_eval) -> dict:
        """Linear parameters, residual, columns and covariance at the final point; with ``verify``
        the exact-Jacobian Gauss-Newton check (at most VERIFY_STEPS steps taken)."""
        params = prob.params
        for check in range(VERIFY_STEPS + 1):
            vals = params.valuesdict()
            prob.base_vals = vals
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
            store_linear(params, {n: v for n, v in lin.items() if not n.endswith("_lebail_k")})
            vals = params.valuesdict()
            # the columns just built are those at `vals` (storing the solved linear values changes
            # no column): the covariance Jacobian and the result reuse them
            final_cols = (lnames, cols, fixed, info)
            cov_names, cov, extra_cols, gn = covariance(prob, derivs, vals, free_nl, lebail, self.spec.esd_correction,
                                                        pre=(final_cols, [lin.get(n, 1.0) for n in lnames], r))
            if not verify or check == VERIFY_STEPS or not take_gn_step(prob, free_nl, gn, cov, r):
                break
        # linear parameters held at their bound 0 (`Problem.solve_linear`): fixed, no esd
        at_zero = [n for n, z in zip(lnames, prob.at_zero(lnames, cols, [lin.get(n, 1.0) for n in lnames])) if z]
        return dict(vals=vals, r=r, cov_names=cov_names, cov=cov, info=info, n_extra=extra_cols, columns=final_cols,
                    at_zero=at_zero)

    def _scales(self, prob: Problem, derivs: ModelDerivatives, out: dict, free_nl: list[str], lebail: bool) -> dict:
        """Phase scales with esds at the final point ``out``: Rietveld from its covariance, Le Bail
        from the structure-factor fraction step (with its covariance, ``frac_cov``)."""
        vals, cov_names, cov = out["vals"], out["cov_names"], out["cov"]
        found: dict = {}
        scales: dict[str, tuple[float, float]] = {}
        if lebail and self.spec.phase_fraction_step:
            scales, frac_cov, frac_names, frac_zero = fraction_step(
                prob, derivs, vals, self.spec.esd_correction, [n for n in free_nl if not self.builder.is_site(n)])
            found["frac_cov"] = (frac_names, frac_cov)
            found["at_zero"] = [n for n in out.get("at_zero", []) if not n.endswith("_lebail_k")] + [
                n for n in frac_zero if n.endswith("_scale")]
        elif not lebail:
            for name in prob.pd:
                n = f"{name}_scale"
                e = np.nan
                if n in cov_names and np.isfinite(cov[cov_names.index(n), cov_names.index(n)]):
                    e = float(np.sqrt(max(cov[cov_names.index(n), cov_names.index(n)], 0.0)))
                scales[name] = (vals[n], e)
        found["scales"] = scales
        # the significance test's esds: without the serial-correlation factor (see SIGNIFICANCE);
        # Le Bail: the factor of the final residual (the scale step's own residual is smoother,
        # so this errs towards larger esds, i.e. towards holding)
        factor = esd_factor(out["r"], self.spec.esd_correction)
        found["scales_statistical"] = {n: (v, e / factor) for n, (v, e) in scales.items()}
        return found
