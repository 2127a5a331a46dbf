"""Result assembly: a `FitResult` from the final point of a fit (plain functions).

`assemble_result` takes the fit's `Problem` and what the stages found at the final point (the
dict of `insitu_xrd.fit.stages.FitStages.run`: values, residual, covariance, columns, scales...)
and computes agreement indices (Rwp, Rp, Rexp, gof, Durbin-Watson), curves on the fitted points
(calc, background, per-phase, diffuse), peak tables, values and esds of every refined parameter
(expression parameters: esds propagated through their expressions), correlations, weight
fractions with esds (Hill-Howard: `weight_fractions`), the whole cell (a, b, c, alpha, beta,
gamma) and volume of every phase with esds, parameters at a bound.
"""

from __future__ import annotations

import numpy as np

from insitu_xrd.core.crystal import Phase
from insitu_xrd.core.pattern import PeakTable
from insitu_xrd.core.profiles import pseudo_voigt
from insitu_xrd.core.texture import texture_index
from insitu_xrd.core.symmetry import LATTICE_NAMES
from insitu_xrd.fit.covariance import esd_factor
from insitu_xrd.fit.derivatives import fd_step
from insitu_xrd.fit.model import Problem
from insitu_xrd.fit.parameters import is_linear
from insitu_xrd.fit.phase_model import cell_from_values
from insitu_xrd.fit.result import FitResult

__all__ = ["assemble_result", "weight_fractions"]


def assemble_result(prob: Problem, out: dict, mode: str, warnings: list[str], elapsed: float) -> FitResult:
    """The `FitResult` of the fit of ``prob`` at its final point ``out`` (see the module docstring);
    ``elapsed``: seconds the fit took."""
    spec = prob.spec
    structures = prob.structures
    params = prob.params
    vals = out["vals"]
    r = out["r"]
    lebail = mode == "lebail"
    cov_names: list[str] = out["cov_names"]
    cov: np.ndarray = out["cov"]
    sd = np.sqrt(np.clip(np.diag(cov), 0, None)) if cov.size else np.zeros(0)
    sd = np.where(np.isfinite(np.diag(cov)) if cov.size else np.zeros(0, bool), sd, np.nan)
    esd_by = dict(zip(cov_names, sd))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd) if cov.size else np.zeros((0, 0))
    nobs = int(prob.fitmask.sum())
    nvarys = len(cov_names) + int(out["n_extra"])
    chi2 = float(r @ r)
    dof = max(nobs - nvarys, 1)
    gof = chi2 / dof
    yo = prob.yf
    sw_yo2 = float(np.sum((prob.wf * yo) ** 2))
    rwp = float(np.sqrt(chi2 / sw_yo2))
    names, cols, fixed, info = out["columns"] if "columns" in out else prob.columns(vals, lebail)
    lin = {n: vals.get(n, 0.0) for n in names}
    if lebail:
        lin.update({n: 1.0 for n in names if n.endswith("_lebail_k")})
    calc = fixed.copy()
    for n, c in zip(names, cols):
        calc += lin[n] * c
    background = np.zeros(len(prob.x))
    for i, c in enumerate(prob.cheb):
        background += vals[f"bkg_{i}"] * c
    for i, _h in enumerate(prob.humps):
        p = f"bkg_hump{i}"
        background += vals[f"{p}_area"] * pseudo_voigt(prob.x, vals[f"{p}_center_deg"], vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
    rp = float(np.sum(np.abs(yo - calc[prob.fitmask])) / np.sum(np.abs(yo)))
    rexp = float(np.sqrt(dof / sw_yo2))
    dw = float(np.sum(np.diff(r) ** 2) / max(chi2, 1e-300))
    factor = esd_factor(r, spec.esd_correction)
    phase_curves: dict[str, np.ndarray] = {}
    peaks: dict[str, PeakTable] = {}
    lo, hi = float(prob.x.min()), float(prob.x.max())
    for name, pd in prob.pd.items():
        blocks, t, fwhm, eta, tthb, d = info[name]
        if lebail:
            areas = pd.areas
            fsq = pd.fsq
        else:
            areas = vals[f"{name}_scale"] * prob.structure_areas(pd, tthb, vals)
            fsq = pd.fsq
        phase_curves[name] = prob.curve(blocks, prob.peak_areas(areas))[prob.fitmask]
        # the peak table lists the reflections (with a Ka doublet: their Ka1 peaks)
        n_refl = len(pd.hkl)
        t, fwhm, eta, d = t[:n_refl], fwhm[:n_refl], eta[:n_refl], d[:n_refl]
        keep = (t >= lo) & (t <= hi)
        peaks[name] = PeakTable(name, pd.hkl[keep], pd.mult[keep], d[keep], t[keep], fwhm[keep], eta[keep],
                                np.asarray(areas)[keep], np.asarray(fsq)[keep])
    diffuse_curves = {}
    for dspec in prob.diffuse:
        p = f"diff_{dspec.label}"
        diffuse_curves[dspec.label] = (vals[f"{p}_area"] * pseudo_voigt(
            prob.x, prob.diffuse_center(dspec, vals), vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"]))[prob.fitmask]
    # values/esds of every refined parameter
    values: dict[str, float] = {}
    esds: dict[str, float] = {}
    for n, p in params.items():
        if p.vary or n in out["held"] or (lebail and n.endswith("_scale") and spec.phase_fraction_step):
            values[n] = float(p.value)
            esds[n] = float(esd_by.get(n, np.nan))
    # constrained (expression) parameters: value and esd propagated through the expression
    deps = [n for n, p in params.items() if p.expr]
    if deps:
        free = [n for n in cov_names if not is_linear(n) and n in params and params[n].vary]
        g = np.zeros((len(deps), len(cov_names)))
        for n in free:
            j = cov_names.index(n)
            v0 = params[n].value
            h = fd_step(n, v0)
            rows = []
            for v in (v0 + h, v0 - h):
                params[n].value = v
                params.update_constraints()
                rows.append(np.array([params[d].value for d in deps]))
            params[n].value = v0
            g[:, j] = (rows[0] - rows[1]) / (2 * h)
        params.update_constraints()
        for i, n in enumerate(deps):
            values[n] = float(params[n].value)
            var = float(g[i] @ np.nan_to_num(cov) @ g[i]) if cov.size else np.nan
            esds[n] = float(np.sqrt(var)) if var > 0 else np.nan
    for n, p in params.items():
        p.stderr = esds.get(n) if (n in esd_by or n in deps) else None
        p.correl = None
    for i, n in enumerate(cov_names):
        params[n].correl = {m: float(corr[i, j]) for j, m in enumerate(cov_names) if j != i}
    # phase fractions
    phase_fraction: dict[str, tuple[float, float]] = {}
    if lebail:
        scales = out.get("scales", {})
        for name, (sc, e) in scales.items():
            values[f"{name}_scale"] = sc
            esds[f"{name}_scale"] = e
            params[f"{name}_scale"].value = sc
    # Le Bail without the structure-factor scale step has no fractions: its scales are
    # free intensity multipliers, not the phases' amounts
    if (not lebail or "frac_cov" in out) and all(f"{n}_scale" in values for n in prob.pd):
        phase_fraction = weight_fractions(prob, vals, values, out, lebail, cov_names, cov)
    # volumes
    for name, pd in prob.pd.items():
        ph = pd.phase
        cell = cell_from_values(ph, vals)
        vol = Phase(name, ph.space_group, cell, [], 1).volume_A3
        grads = []
        idx = []
        for ln in ph.lattice.free:
            n = f"{name}_{ln}"
            if n in cov_names:
                v2 = dict(vals)
                v2[n] = vals[n] * (1 + 1e-7)
                vol2 = Phase(name, ph.space_group, cell_from_values(ph, v2), [], 1).volume_A3
                grads.append((vol2 - vol) / (vals[n] * 1e-7))
                idx.append(cov_names.index(n))
        values[f"{name}_volume_A3"] = vol
        if idx:
            g = np.array(grads)
            sub = cov[np.ix_(idx, idx)]
            esds[f"{name}_volume_A3"] = float(np.sqrt(max(g @ sub @ g, 0.0)))
        else:
            esds[f"{name}_volume_A3"] = np.nan
        # texture index J = 1 + sum C^2/(2l+1) of a spherical-harmonics texture, esd propagated
        sh_names = [n for n in vals if n.startswith(f"{name}_sh_C")]
        if sh_names:
            orders = np.array([int(n[len(name) + 5:].split("_")[0]) for n in sh_names], dtype=float)
            coef = np.array([vals[n] for n in sh_names])
            values[f"{name}_texture_index"] = texture_index({int(l): coef[orders == l] for l in set(orders)})
            idx = [cov_names.index(n) for n in sh_names if n in cov_names]
            if idx:
                g = np.array([2 * vals[cov_names[i]] / (2 * orders[sh_names.index(cov_names[i])] + 1) for i in idx])
                esds[f"{name}_texture_index"] = float(np.sqrt(max(g @ cov[np.ix_(idx, idx)] @ g, 0.0)))
            else:
                esds[f"{name}_texture_index"] = np.nan
        # the whole cell for every phase (results schema a, b, c, alpha, beta, gamma): a tied
        # parameter carries the value and esd of the free one it follows, a fixed angle NaN esd
        lat = ph.lattice
        for i, ln in enumerate(LATTICE_NAMES):
            key = f"{name}_{ln}"
            if key in values:
                continue
            src = lat.follows.get(ln)
            values[key] = float(cell[i])
            esds[key] = float(esds.get(f"{name}_{src}", np.nan)) if src else np.nan
    at_bounds = []
    for n in cov_names:
        p = params[n]
        if is_linear(n):
            continue
        span = (p.max - p.min) if np.isfinite(p.max - p.min) else max(abs(p.value), 1.0)
        if (np.isfinite(p.min) and p.value - p.min < 1e-6 * span) or (np.isfinite(p.max) and p.max - p.value < 1e-6 * span):
            at_bounds.append(n)
    # linear parameters with a physical sign held at 0 (scales, hump and diffuse areas)
    at_bounds += [n for n in out.get("at_zero", []) if n in params and n not in at_bounds]
    if at_bounds:
        warnings = warnings + [f"parameters at a bound: {at_bounds}"]
    return FitResult(
        params=params, values=values, esds=esds, rwp=rwp, rp=rp, rexp=rexp, gof=gof, durbin_watson=dw,
        chi2=chi2, nobs=nobs, nvarys=nvarys, success=bool(out["success"]), message=out["message"],
        at_bounds=at_bounds, phase_fraction=phase_fraction,
        correlation=corr, correlation_names=list(cov_names),
        two_theta_deg=prob.xf.copy(), obs=prob.yf.copy(), sigma=prob.sig[prob.fitmask].copy(),
        calc=calc[prob.fitmask], background=background[prob.fitmask], phase_curves=phase_curves,
        diffuse_curves=diffuse_curves, peaks=peaks, mode=mode, wavelength_A=prob.lam,
        active_phases=list(prob.active), esd_factor=factor, elapsed_s=elapsed, warnings=warnings,
        lebail_areas=out["lebail_areas"],
        site_parameters={n: lab for name in prob.pd if name in structures.models
                     for n, lab in structures.models[name].labels().items() if n in values},
    )

def weight_fractions(prob: Problem, vals: dict[str, float], values: dict[str, float], out: dict, lebail: bool,
                     cov_names: list[str], cov: np.ndarray) -> dict[str, tuple[float, float]]:
    """Hill-Howard weight fractions W_p = S_p (ZMV)_p / sum (ZMV S) of the active phases with esds
    (from the scales' covariance: the Le Bail fraction step's, or the Rietveld fit's)."""
    names = list(prob.pd)
    zmv = {}
    for n in names:
        ph = prob.structures.structure(n, vals)
        zmv[n] = prob.structures.cell_mass(n, ph, prob.structures.site_key(n, vals)) * Phase(n, ph.space_group, cell_from_values(ph, vals), [], 1).volume_A3
    s = np.array([values[f"{n}_scale"] for n in names])
    k = np.array([zmv[n] for n in names])
    wts = s * k
    tot = wts.sum()
    frac = wts / tot if tot != 0 else np.full(len(names), np.nan)
    # Jacobian dW_i/dS_j = k_j (delta_ij tot - S_i k_i) / tot^2
    Jw = (np.diag(k) * tot - np.outer(wts, k)) / tot**2 if tot != 0 else np.full((len(names), len(names)), np.nan)
    if lebail:
        cov_names, cov = out.get("frac_cov", ([], np.zeros((0, 0))))
    # (a scale held at its bound 0 has no covariance entries: fixed)
    idx = [cov_names.index(f"{n}_scale") if f"{n}_scale" in cov_names else -1 for n in names]
    C = np.zeros((len(names), len(names)))
    for a_, ia in enumerate(idx):
        for b_, ib in enumerate(idx):
            if ia >= 0 and ib >= 0:
                C[a_, b_] = cov[ia, ib]
    fc = Jw @ C @ Jw.T
    # a phase whose scale is held at its bound 0 has fraction 0 "at bound" (esd NaN)
    at_zero = set(out.get("at_zero", ()))
    return {n: (float(frac[i]), float(np.sqrt(max(fc[i, i], 0.0)))
                if np.isfinite(fc[i, i]) and f"{n}_scale" not in at_zero else np.nan)
            for i, n in enumerate(names)}
