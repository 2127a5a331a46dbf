"""Covariance and esds: the full weighted Jacobian at the solution, and its inverse.

Plain functions. `full_jacobian`: nonlinear columns (`ModelDerivatives.total_derivatives`),
linear columns and, in Le Bail mode, one Pawley-type column per group of coincident reflections
(so that lattice esds include the intensity/position correlation of overlapping peaks).
`covariance_from_jacobian`: the inverse normal matrix scaled by the reduced chi^2 and the
serial-correlation factor (`esd_factor`: Durbin-Watson AR(1) form of Berar & Lelann's
correction), NaN for near-null directions; optionally the Gauss-Newton step from the point.
`covariance` combines them at the final point (its step feeds the final check,
`insitu_xrd.fit.solvers.take_gn_step`); `linear_scale_esds` gives phase scales and esds at fixed
nonlinear parameters (the significance test of a newly activated phase). ``esd_correction``
is the spec's: "none" or the Durbin-Watson correction.
"""

from __future__ import annotations

import numpy as np

from insitu_xrd.fit.derivatives import ModelDerivatives
from insitu_xrd.fit.model import Problem

__all__ = ["full_jacobian", "covariance", "covariance_from_jacobian", "esd_factor", "linear_scale_esds"]


def full_jacobian(prob: Problem, derivs: ModelDerivatives, vals: dict[str, float], free_nl: list[str], lebail: bool,
                  pre=None):
    """Full weighted Jacobian at `vals` (linear parameters at their least-squares values).

    Columns: nonlinear parameters (`ModelDerivatives.total_derivatives`), linear parameters, and in Le Bail mode
    one Pawley-type column per group of coincident reflections of a phase (derivative with
    respect to the group's area). Returns (J, r, names, groups) with r the weighted residual
    and groups [(phase, member indices, member shares)] for the Pawley columns.
    """
    if pre is not None:  # ((names, cols, fixed, info), coef, r) of `prob.residual(vals)`
        (names, cols, fixed, info), coef, r = pre
    else:
        names, cols, fixed, info = prob.columns(vals, lebail)
        coef, r = prob.solve_linear(cols, fixed, names)
    lin = dict(zip(names, coef))
    jac_names: list[str] = list(free_nl)
    jac_cols: list[np.ndarray] = derivs.total_derivatives(vals, lin, free_nl, lebail) if free_nl else []
    # a linear parameter held at its bound 0 (`Problem.solve_linear`) is not a column: fixed there
    for n, c, zero in zip(names, cols, prob.at_zero(names, cols, coef)):
        if n.endswith("_lebail_k") or zero:
            continue
        jac_cols.append(c)
        jac_names.append(n)
    groups_out: list[tuple[str, np.ndarray]] = []
    m = int(prob.fitmask.sum())
    # Pawley columns of all phases as (fitted-row position, column among the group columns
    # (-1: dropped), value) entries, scattered into J in one pass below
    scatter: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_groups = 0
    if lebail:
        # position of each grid point among the fitted points (m: not fitted)
        fitpos = np.full(len(prob.x), m)
        fitpos[prob.fitmask] = np.arange(m)
        for name, pd in prob.pd.items():
            blocks, t, fwhm, eta, tthb, d = info[name]
            if not blocks:
                continue
            k = max(lin.get(f"{name}_lebail_k", 1.0), 0.0)
            # groups of coincident reflections (same position within 1e-3 FWHM); with a Ka
            # doublet by their Ka1 peaks, a reflection's column being Ka1 + ratio x Ka2
            n_refl = len(pd.hkl)
            t1, fwhm1 = t[:n_refl], fwhm[:n_refl]
            order = np.argsort(t1)
            new_group = np.ones(n_refl, bool)
            new_group[1:] = np.abs(np.diff(t1[order])) >= 1e-3 * fwhm1[order][1:]
            gid = np.empty(n_refl, int)
            gid[order] = np.cumsum(new_group) - 1
            ng = int(gid.max()) + 1
            # a group's column is the profile of its members weighted by their share of the
            # group intensity (equal shares when all are zero): derivative w.r.t. the group area
            areas = pd.areas * k
            tot = np.bincount(gid, weights=areas, minlength=ng)
            cnt = np.bincount(gid, minlength=ng)
            share = np.where(tot[gid] > 0, areas / np.where(tot[gid] > 0, tot[gid], 1.0), 1.0 / cnt[gid])
            share_pk = prob.peak_areas(share)  # per peak (Ka2 copies: x ratio)
            gid_pk = gid if prob.lam2 is None else np.concatenate([gid, gid])
            if np.all(share_pk == 1.0):  # single-member groups (the usual case): P * 1 = P
                wts = np.concatenate([prof.ravel() for _k, _i, prof in blocks])
            else:
                wts = np.concatenate([(prof * share_pk[idx_pk][:, None]).ravel() for idx_pk, _i, prof in blocks])
            # only reflections with most of their profile on fitted points get a column
            fitted = np.zeros(len(t))
            for idx_pk, idx, prof in blocks:
                fitted[idx_pk] = np.sum(prof * prob.dxf[idx], axis=1)
            inside = np.bincount(gid, weights=prob.fold(fitted), minlength=ng) / np.maximum(cnt, 1)
            if prob.lam2 is not None:
                inside = inside / (1.0 + prob.ratio2)
            pos = np.concatenate([fitpos[idx].ravel() for _k, idx, _p in blocks])
            gent = np.concatenate([np.broadcast_to(gid_pk[idx_pk][:, None], idx.shape).ravel()
                                   for idx_pk, idx, _p in blocks])
            if wts.size and wts.min() >= 0.0 and np.all(share > 0.0):
                # profiles >= 0, every member sharing: more than half of a group's profile on
                # fitted points means non-zero entries there, so the column is not zero
                keep = inside > 0.5
            elif wts.size and wts.min() >= 0.0:
                # non-negative weights: a column is non-zero iff one of its entries on a
                # fitted point is (no cancellation)
                keep = (inside > 0.5) & (np.bincount(gent[(wts != 0.0) & (pos < m)], minlength=ng) > 0)
            else:
                # signed weights (Pawley-negative members): sum the columns to see which vanish
                Gf = np.bincount(pos * ng + gent, weights=wts, minlength=(m + 1) * ng).reshape(m + 1, ng)[:m]
                keep = (inside > 0.5) & np.any(Gf != 0, axis=0)
            nk = int(keep.sum())
            column = np.full(ng, -1)
            column[keep] = n_groups + np.arange(nk)
            scatter.append((pos, column[gent], wts))
            n_groups += nk
            by_group = np.argsort(gid, kind="stable")
            ends = np.cumsum(cnt)
            for gi in np.nonzero(keep)[0]:
                members = by_group[ends[gi] - cnt[gi]:ends[gi]]
                groups_out.append((name, members, share[members]))
    n_dense = len(jac_cols)
    ncol = n_dense + n_groups
    wf = prob.wf
    if scatter:
        # one weighted scatter-add of every profile entry into (fitted row, column); a spare
        # row and column collect the entries on non-fitted points and of dropped groups
        pos = np.concatenate([p for p, _c, _w in scatter])
        col = np.concatenate([c for _p, c, _w in scatter])
        col = np.where(col >= 0, col + n_dense, ncol)
        wts = np.concatenate([w for _p, _c, w in scatter]) * np.append(wf, 0.0)[pos]
        J = np.bincount(pos * (ncol + 1) + col, weights=wts,
                        minlength=(m + 1) * (ncol + 1)).reshape(m + 1, ncol + 1)[:m, :ncol]
    else:
        J = np.empty((m, ncol))
    for j, c in enumerate(jac_cols):
        np.multiply(c[prob.fitmask], wf, out=J[:, j])
    return J, r, jac_names, groups_out

def covariance(prob: Problem, derivs: ModelDerivatives, vals: dict[str, float], free_nl: list[str], lebail: bool,
               esd_correction: str, pre=None):
    """Covariance (scaled by gof and the serial-correlation factor) of the refined parameters,
    and the Gauss-Newton step of them from `vals` (natural units; the same order)."""
    J, r, jac_names, groups = full_jacobian(prob, derivs, vals, free_nl, lebail, pre)
    cov, step = covariance_from_jacobian(J, r, J.shape[1], esd_correction, gn_step=True)
    npar = len(jac_names)
    return jac_names, cov[:npar, :npar], len(groups), step[:npar]

def covariance_from_jacobian(J: np.ndarray, r: np.ndarray, nvarys: int, esd_correction: str, gn_step: bool = False):
    """Covariance of the parameters of the weighted Jacobian J at residual r (scaled by gof and
    the serial-correlation factor); with gn_step also the Gauss-Newton step from this point
    (minimum-norm in near-null directions)."""
    m = len(r)
    dof = max(m - nvarys, 1)
    gof = float(r @ r) / dof
    factor = esd_factor(r, esd_correction) ** 2
    norms = np.sqrt(np.sum(J * J, axis=0))
    norms = np.where(norms > 0, norms, 1.0)
    Js = J / norms
    # eigen-decomposition of the normal matrix of unit-normalised columns (its eigenvalues
    # are the squared singular values of Js); near-null directions are excluded
    ev, vec = np.linalg.eigh(Js.T @ Js) if Js.size else (np.zeros(0), np.zeros((0, 0)))
    vt = vec.T
    tol = ev.max() * 1e-13 if ev.size else 0.0
    inv = np.where(ev > tol, 1.0 / np.where(ev > tol, ev, 1.0), np.inf)
    covs = (vt.T * np.where(np.isfinite(inv), inv, 0.0)) @ vt
    cov_u = covs / np.outer(norms, norms)
    step = cov_u @ (J.T @ r) if gn_step else None
    cov = cov_u * gof * factor
    # parameters in the null space get an infinite variance
    if np.any(~np.isfinite(inv)):
        null = vt[~np.isfinite(inv)]
        bad = np.any(np.abs(null) > 1e-3, axis=0)
        cov[bad, :] = np.nan
        cov[:, bad] = np.nan
    return (cov, step) if gn_step else cov

def esd_factor(r: np.ndarray, esd_correction: str) -> float:
    """Serial-correlation factor of the esds: sqrt((1 + rho)/(1 - rho)), rho = max(0, 1 - DW/2)
    (at most 0.99) from the Durbin-Watson statistic of the weighted residuals r; 1 for
    ``esd_correction`` "none"."""
    if esd_correction == "none" or len(r) < 3:
        return 1.0
    dw = float(np.sum(np.diff(r) ** 2) / max(float(r @ r), 1e-300))
    rho = max(0.0, 1.0 - dw / 2.0)
    rho = min(rho, 0.99)
    return float(np.sqrt((1.0 + rho) / (1.0 - rho)))

def linear_scale_esds(prob: Problem, vals: dict[str, float], esd_correction: str) -> dict[str, tuple[float, float]]:
    """Phase scales and their esds from the linear problem at fixed nonlinear parameters (the
    scales >= 0; the esd of one held at 0 is that of its column, for the significance test)."""
    names, cols, fixed, info = prob.columns(vals, False, structure_scales=True)
    coef, r = prob.solve_linear(cols, fixed, names)
    # (a scale held at 0 keeps its column here: its esd says how far from 0 it is determined)
    A = np.stack([c[prob.fitmask] for c in cols], axis=1) * prob.wf[:, None]
    cov = covariance_from_jacobian(A, r, len(names), esd_correction)
    out = {}
    for name in prob.pd:
        i = names.index(f"{name}_scale")
        out[name] = (float(coef[i]), float(np.sqrt(cov[i, i])) if np.isfinite(cov[i, i]) else np.nan)
    return out
