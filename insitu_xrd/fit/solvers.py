"""Moving the nonlinear parameters: trust-region solve, Gauss-Newton polish, final check.

`trust_region`: scipy's trust-region reflective least squares, given residual and Jacobian
callables of the nonlinear parameters (sizes moved as 1/size); `solve_nonlinear` applies it to a
`Problem`, the linear parameters eliminated (variable projection), with the analytic projected
Jacobian (`ModelDerivatives.projected_jacobian`). `polish`: damped Gauss-Newton
(Levenberg-Marquardt) steps on the joint problem (Le Bail: nonlinear + linear + reflection
intensities, ridge-damped on the intensities; Rietveld: the nonlinear parameters, the linear ones
re-solved at every trial point), given the full-Jacobian callable
(`insitu_xrd.fit.covariance.full_jacobian`), keeping the Jacobian once a step is below 1 esd
(chord steps). `take_gn_step`: the final check of a Rietveld fit, the exact-Jacobian Gauss-Newton
step (from `insitu_xrd.fit.covariance.covariance`), taken when it moves a parameter by more than
`FINAL_STEP_ESD` esd and lowers chi^2. Which of them runs when is decided by
`insitu_xrd.fit.stages.FitStages`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.linalg
from scipy.optimize import least_squares

from insitu_xrd.fit.derivatives import ModelDerivatives
from insitu_xrd.fit.model import Problem
from insitu_xrd.fit.parameters import is_reciprocal, optimiser_space, store_linear

__all__ = ["PAWLEY_RIDGE", "POLISH_DM_M", "POLISH_STEP_ESD", "CHORD_STEP_ESD", "FINAL_STEP_ESD", "trust_region",
           "solve_nonlinear", "polish", "take_gn_step"]


#: Ridge weight (on unit-normalised Jacobian columns) of the reflection intensities in the
#: Pawley polish: damps trades between reflections whose profiles correlate above ~0.999.
PAWLEY_RIDGE = 1e-3
#: The polish stops when every shift is below POLISH_STEP_ESD esd or (Le Bail mode) chi^2 falls
#: by less than this fraction in a step (GSAS-II's default criterion "min delta-M/M" is 1e-3).
POLISH_DM_M = 3e-4
POLISH_STEP_ESD = 0.1
#: After a polish step below this many esd (every nonlinear parameter) the Jacobian is kept.
CHORD_STEP_ESD = 1.0
#: Rietveld mode: the fit ends where the exact-Jacobian Gauss-Newton step moves no nonlinear
#: parameter by more than FINAL_STEP_ESD esd (`take_gn_step`; at most `stages.VERIFY_STEPS`
#: such steps are taken).
FINAL_STEP_ESD = 0.05


def trust_region(residual: Callable[[np.ndarray], np.ndarray], jacobian: Callable[[np.ndarray], np.ndarray],
                 x0: np.ndarray, lb: np.ndarray, ub: np.ndarray, recip: np.ndarray, max_nfev: int,
                 ftol: float = 1e-7) -> tuple[np.ndarray, bool, str]:
    """Least squares of ``residual(v)`` (v: the parameters in natural units) with its Jacobian
    ``jacobian(v)``, by scipy's trust-region reflective method within bounds. x0, lb, ub: start
    and bounds in optimiser space (1/value where ``recip``: crystallite sizes, broadening ~ 1/size,
    nearly linear). Returns (solution in natural units, success, message)."""
    span = np.where(np.isfinite(ub - lb), ub - lb, np.abs(x0) + 1.0)
    x0 = np.clip(x0, lb + 1e-9 * span, ub - 1e-9 * span)

    def natural(u: np.ndarray) -> np.ndarray:
        return np.where(recip, 1.0 / np.where(recip, u, 1.0), u)

    def fun(u: np.ndarray) -> np.ndarray:
        return residual(natural(u))

    def jac(u: np.ndarray) -> np.ndarray:
        v = natural(u)
        return jacobian(v) * np.where(recip, -v * v, 1.0)

    sol = least_squares(fun, x0, jac=jac, bounds=(lb, ub), method="trf",
                        x_scale="jac", max_nfev=max_nfev,
                        ftol=ftol, xtol=1e-8 if ftol <= 1e-7 else 1e-6, gtol=1e-8)
    return natural(sol.x), bool(sol.success), str(sol.message)


def solve_nonlinear(prob: Problem, derivs: ModelDerivatives, free: list[str], lebail: bool, max_nfev: int,
                    ftol: float = 1e-7):
    """`trust_region` on the free nonlinear parameters ``free`` of ``prob`` (the linear ones
    eliminated by variable projection; analytic projected Jacobian, lmfit expressions by the
    chain rule). Sets the parameters; returns (values, linear solution, residual, success, message)."""
    params = prob.params
    prob.base_vals = params.valuesdict()
    if not free:
        r, lin, _ = prob.residual(prob.base_vals, lebail)
        return prob.base_vals, lin, r, True, "no nonlinear parameters"
    recip = np.array([is_reciprocal(n) for n in free])
    x0, lb, ub = optimiser_space(params, free, recip)
    xs, success, message = trust_region(
        lambda v: prob.residual(prob.values_from(free, v), lebail)[0],
        lambda v: derivs.projected_jacobian(prob.values_from(free, v), free, lebail),
        x0, lb, ub, recip, max_nfev, ftol)
    vals = prob.values_from(free, xs)
    for n, v in zip(free, xs):
        params[n].value = float(v)
    r, lin, _ = prob.residual(vals, lebail)
    return vals, lin, r, success, message


def polish(prob: Problem, jacobian: Callable, free_nl: list[str], lebail: bool,
           steps: int = 6) -> tuple[int, bool, tuple | None]:
    """Levenberg-Marquardt steps on the joint problem (nonlinear + linear + reflection
    intensities), from the Le Bail fixed point (Rietveld mode: see the end).

    The Le Bail fixed point is not the least-squares optimum where reflections overlap (the
    partition shares intensity in proportion to the current profile, which biases widths: +3 to
    +6 % in microstrain on simulated H2+H3+Li patterns, more with size and microstrain both
    free); a few damped Gauss-Newton steps from it reach the Pawley optimum. The intensity
    columns carry a fixed ridge (`PAWLEY_RIDGE`): directions in which overlapped reflections
    trade intensity (correlation ~ 1) stay near the Le Bail partition instead of running off
    into large opposite pairs. The nonlinear parameters get an adaptive Marquardt damping and
    are kept inside their bounds (a parameter at a bound and pushed outwards is held for the
    step). The reflection intensities stay >= 0: a step past 0 stops at 0, and a group at 0
    whose gradient pushes it downwards is held for the step.

    Once a step has moved every nonlinear parameter by less than `CHORD_STEP_ESD` esd, the
    Jacobian is kept for the following steps (chord steps: only the residual is new); they
    creep along the ridge-damped directions, where the Jacobian no longer changes appreciably.
    A chord step that does not lower chi^2 is retried with a fresh Jacobian.

    Rietveld mode (`lebail` False; no intensity columns): the same steps on the nonlinear
    parameters with the linear ones re-solved at each trial point, used from a warm start.
    Returns (accepted steps, converged: the last step moved every parameter < 0.1 esd, or no
    step lowers chi^2 where the least-damped one would move every parameter < 0.1 esd (at the
    optimum, chi^2 flat to rounding), the residual evaluation ((names, cols, fixed, info), coef,
    r) at the final point or None).
    """
    params = prob.params
    taken = 0
    lam = 1e-3
    recip = np.array([is_reciprocal(n) for n in free_nl], dtype=bool)
    nnl = len(free_nl)
    lin_state = None  # (Jn, norms, N0, ngrp, groups, esd_diag) of the last full Jacobian
    # the accepted trial's evaluation ((names, cols, fixed, info), coef, r), valid at the current
    # point: the areas were rescaled by the Le Bail multipliers, which are then 1 (the columns
    # built from them are not used)
    current = None
    chord_ok = False
    converged = False
    for _ in range(steps):
        vals = params.valuesdict()
        prob.base_vals = vals
        u0, ulo, uhi = optimiser_space(params, free_nl, recip)
        if chord_ok:  # (after an accepted step: lin_state and current are set)
            Jn, norms, N0, ngrp, groups, esd_diag = lin_state
            r = current[2]
            chord = True
        else:
            J, r, names, groups = jacobian(vals, current)
            ngrp = len(groups)
            # optimiser space: reciprocal sizes (see trust_region)
            vnat = np.array([vals[n] for n in free_nl])
            J[:, :nnl] *= np.where(recip, -vnat * vnat, 1.0)
            norms = np.sqrt(np.sum(J * J, axis=0))
            norms = np.where(norms > 0, norms, 1.0)
            # Normal equations of unit-normalised columns (10x faster than a QR/SVD of the
            # tall matrix; the damping keeps them well conditioned).
            Jn = J / norms
            N0 = Jn.T @ Jn
            esd_diag = None
            chord = False
        npar = N0.shape[0]
        chi0 = float(r @ r)
        g = Jn.T @ r
        # hold nonlinear parameters sitting at a bound with the gradient pushing outwards
        hold = np.zeros(npar, bool)
        for j in range(nnl):
            span = (uhi[j] - ulo[j]) if np.isfinite(uhi[j] - ulo[j]) else max(abs(u0[j]), 1.0)
            at_lo = np.isfinite(ulo[j]) and u0[j] - ulo[j] <= 1e-9 * span
            at_hi = np.isfinite(uhi[j]) and uhi[j] - u0[j] <= 1e-9 * span
            hold[j] = (at_lo and g[j] < 0) or (at_hi and g[j] > 0)
        # Le Bail intensities are >= 0: a group at 0 pushed downwards is held for the step
        totals = np.array([float(np.sum(prob.pd[name].areas[members])) for name, members, _s in groups])
        for gi in range(ngrp):
            hold[npar - ngrp + gi] = g[npar - ngrp + gi] < 0 and not totals[gi] > 0
        old_areas = {n: pd.areas.copy() for n, pd in prob.pd.items() if pd.areas is not None}
        accepted = False
        for _attempt in range(1 if chord else 5):
            N = N0.copy()
            N[np.arange(npar - ngrp, npar), np.arange(npar - ngrp, npar)] += PAWLEY_RIDGE
            N[np.arange(nnl), np.arange(nnl)] += lam
            N[np.diag_indices(npar)] += 1e-12
            delta = _bounded_step(N, g, norms, hold, totals)
            trial = dict(vals)
            u1 = np.clip(u0 + delta[:nnl], ulo, uhi)
            if _attempt == 0:
                first_shift = np.abs(u1 - u0)
            for j, n in enumerate(free_nl):
                trial[n] = float(1.0 / u1[j] if recip[j] else u1[j])
            if prob.has_expr:
                trial = prob.values_from(free_nl, np.array([trial[n] for n in free_nl]))
            for gi, (name, members, share) in enumerate(groups):
                dg = delta[npar - ngrp + gi]
                # (a step past 0 stops there: intensities >= 0, like the bounds above)
                prob.pd[name].areas[members] = np.maximum(old_areas[name][members] + dg * share, 0.0)
            prob.base_vals = trial
            r1, lin1, last_cols = prob.residual(trial, lebail)
            chi1 = float(r1 @ r1)
            if chi1 < chi0:
                accepted = True
                for j, n in enumerate(free_nl):
                    params[n].value = trial[n]
                if lebail:
                    for name, pd in prob.pd.items():
                        pd.areas = pd.areas * max(lin1.pop(f"{name}_lebail_k", 1.0), 0.0)
                store_linear(params, lin1)
                lam = max(lam / 10.0, 1e-7)
                break
            for name, areas in old_areas.items():
                prob.pd[name].areas = areas.copy()
            if prob.has_expr:
                prob.values_from(free_nl, np.array([vals[n] for n in free_nl]))
            if not chord:
                lam *= 10.0
        if not accepted:
            if chord:  # the kept Jacobian no longer describes the problem: take a fresh one
                chord_ok = False
                continue
            # no step lowers chi^2: at the optimum when the least-damped step would have moved
            # every nonlinear parameter by < POLISH_STEP_ESD esd (chi^2 there is flat to
            # rounding; without this a warm fit at its optimum fell back to the trust-region
            # solver, 2-3x its cost)
            if nnl:
                try:
                    esd_diag = _esd_diag(N0, npar, ngrp, nnl) if esd_diag is None else esd_diag
                    esd_u = np.sqrt(np.maximum(esd_diag, 0.0) * chi0 / max(len(r) - npar, 1)) / norms[:nnl]
                    converged = bool(np.all((first_shift <= POLISH_STEP_ESD * esd_u) | hold[:nnl]))
                except (np.linalg.LinAlgError, ValueError):
                    pass
            break
        taken += 1
        current = (last_cols, [1.0 if n.endswith("_lebail_k") else lin1[n] for n in last_cols[0]], r1)
        # converged when the step moved every nonlinear parameter by < 0.1 of its esd, or
        # lowered chi^2 by < POLISH_DM_M (relative): further steps only creep along weakly
        # determined directions (broad diffuse widths, intensity pairs held by the ridge)
        if nnl:
            try:
                if esd_diag is None:
                    esd_diag = _esd_diag(N0, npar, ngrp, nnl)
                esd_u = np.sqrt(np.maximum(esd_diag, 0.0) * chi1 / max(len(r1) - npar, 1)) / norms[:nnl]
                shift = np.abs(u1 - u0)
                if np.all((shift <= POLISH_STEP_ESD * esd_u) | hold[:nnl]):
                    converged = True
                    break
                chord_ok = bool(np.all((shift <= CHORD_STEP_ESD * esd_u) | hold[:nnl]))
            except (np.linalg.LinAlgError, ValueError):
                chord_ok = False
        lin_state = (Jn, norms, N0, ngrp, groups, esd_diag)
        # (Rietveld mode, no ridge: steps shrink fast, the esd criterion alone decides)
        if lebail and chi0 - chi1 < POLISH_DM_M * chi0:
            converged = True
            break
    prob.base_vals = params.valuesdict()
    return taken, converged, current

def _esd_diag(N0: np.ndarray, npar: int, ngrp: int, nnl: int) -> np.ndarray:
    """Diagonal of the inverse normal matrix (unit-normalised columns, the intensity ridge
    added) for the nonlinear parameters: their variances up to the reduced chi^2."""
    cf = scipy.linalg.cho_factor(N0 + np.diag(np.where(np.arange(npar) >= npar - ngrp, PAWLEY_RIDGE, 1e-12)))
    return np.diag(scipy.linalg.cho_solve(cf, np.eye(npar)[:, :nnl])[:nnl])


def _solve_step(N: np.ndarray, g: np.ndarray, fixed: np.ndarray, z_fixed: np.ndarray) -> np.ndarray:
    """Solution z of the damped normal equations N z = g (unit-normalised columns) with the
    components ``fixed`` set to ``z_fixed`` (the others: the conditional solution)."""
    N = N.copy()
    rhs = np.where(fixed, 0.0, g)
    if np.any(z_fixed[fixed] != 0.0):
        rhs = rhs - N[:, fixed] @ z_fixed[fixed]
        rhs[fixed] = z_fixed[fixed]
    N[fixed, :] = 0.0
    N[:, fixed] = 0.0
    N[fixed, fixed] = 1.0
    try:
        return scipy.linalg.solve(N, rhs, assume_a="pos")
    except (np.linalg.LinAlgError, ValueError):
        return np.linalg.lstsq(N, rhs, rcond=1e-12)[0]


def _bounded_step(N: np.ndarray, g: np.ndarray, norms: np.ndarray, hold: np.ndarray,
                  totals: np.ndarray) -> np.ndarray:
    """The polish step (natural units) with the ``hold`` components at 0 and the last
    ``len(totals)`` ones (Le Bail group intensities, current totals ``totals``) kept >= 0: a group
    the step would take below 0 is set to exactly 0 and the others re-solved with it fixed
    (active set, a few passes)."""
    ngrp = len(totals)
    npar = len(g)
    fixed = hold.copy()
    z_fixed = np.zeros(npar)
    for _pass in range(6):
        delta = _solve_step(N, g, fixed, z_fixed) / norms
        if not ngrp:
            return delta
        below = (totals + delta[npar - ngrp:] < 0.0) & ~fixed[npar - ngrp:]
        if not below.any():
            return delta
        idx = npar - ngrp + np.nonzero(below)[0]
        fixed[idx] = True
        z_fixed[idx] = -totals[below] * norms[idx]
    return delta


def take_gn_step(prob: Problem, free_nl: list[str], gn: np.ndarray, cov: np.ndarray, r: np.ndarray) -> bool:
    """Rietveld mode, end of the fit: the Gauss-Newton step with the exact Jacobian at the
    final point (from the covariance computation). Taken (True) if it moves a nonlinear
    parameter by more than `FINAL_STEP_ESD` esd and lowers chi^2: the fixed point of the
    polish's chord steps can lie a fraction of an esd from the optimum along shallow
    directions (e.g. diffuse width and offset). `gn` and `cov` cover the nonlinear parameters
    (first, in `free_nl` order) and the linear ones. Nonlinear parameters at a bound that the
    step pushes outwards are held: the step of the others is then the conditional one,
    gn_F - C_FH C_HH^-1 gn_H (the least-squares step with H fixed)."""
    params = prob.params
    vals = params.valuesdict()
    nnl = len(free_nl)
    held = [j for j, n in enumerate(free_nl) if np.isfinite(gn[j]) and (
        (vals[n] <= params[n].min and gn[j] < 0) or (vals[n] >= params[n].max and gn[j] > 0))]
    if held:
        keep = np.setdiff1d(np.arange(len(gn)), held)
        c_fh, c_hh = cov[np.ix_(keep, held)], cov[np.ix_(held, held)]
        if not (np.all(np.isfinite(c_fh)) and np.all(np.isfinite(c_hh))):
            return False
        gn = gn.copy()
        gn[keep] -= c_fh @ np.linalg.solve(c_hh, gn[held])
        gn[held] = 0.0
    gn = gn[:nnl]
    trial = dict(vals)
    for j, n in enumerate(free_nl):
        if np.isfinite(gn[j]):
            trial[n] = float(np.clip(vals[n] + gn[j], params[n].min, params[n].max))
    # the move each parameter would make (a parameter at a bound pushed outwards makes none)
    move = np.array([trial[n] - vals[n] for n in free_nl])
    esd = np.sqrt(np.abs(np.diag(cov)[:nnl]))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(move) / esd
    if not np.any(np.isfinite(z) & (z > FINAL_STEP_ESD)):
        return False
    if prob.has_expr:
        trial = prob.values_from(free_nl, np.array([trial[n] for n in free_nl]))
    r1, lin1, _ = prob.residual(trial, False)
    if not float(r1 @ r1) < float(r @ r):
        if prob.has_expr:
            prob.values_from(free_nl, np.array([vals[n] for n in free_nl]))
        return False
    for n in free_nl:
        params[n].value = trial[n]
    store_linear(params, lin1)
    return True
