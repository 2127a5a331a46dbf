"""Le Bail intensity extraction, and the Le Bail-mode phase-fraction step (plain functions).

The reflection intensities of a Le Bail fit come from partitioning obs - background among the
overlapping peaks in proportion to the current model (`extract`); a warm start begins from a
previous fit's intensities matched by hkl (`assign_start`). Phase fractions need structure
factors: with lattice, profile and positions at the Le Bail result, one linear solve with one
structure-factor scale per phase (`fraction_step`) gives the scales and their covariance,
including the refined nonlinear parameters. The intensities live on the `Problem`'s phase data
(``PhaseData.areas``). The Pawley polish, which refines the extracted intensities jointly with
the other parameters, is `insitu_xrd.fit.solvers.polish`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from insitu_xrd.fit.covariance import covariance_from_jacobian
from insitu_xrd.fit.derivatives import ModelDerivatives
from insitu_xrd.fit.model import Problem

__all__ = ["assign_start", "extract", "fraction_step"]


def assign_start(prob: Problem, start: dict) -> set[str]:
    """Le Bail intensities from a previous fit, matched by hkl; returns the phases without any."""
    missing = set()
    for name, pd in prob.pd.items():
        if name not in start:
            pd.areas = None
            missing.add(name)
            continue
        hkl0, a0 = start[name]
        lut = {tuple(h): a for h, a in zip(np.asarray(hkl0).tolist(), a0)}
        pd.areas = np.array([lut.get(tuple(h), np.nan) for h in pd.hkl.tolist()], dtype=float)
        if np.isnan(pd.areas).any():
            fill = np.nanmedian(pd.areas) if np.isfinite(pd.areas).any() else 0.0
            pd.areas = np.where(np.isnan(pd.areas), fill, pd.areas)
        # extraction needs >= 0 (a start from another source, e.g. a stored series, may hold negatives)
        pd.areas = np.maximum(pd.areas, 0.0)
    return missing

def extract(prob: Problem, vals: dict[str, float], passes: int) -> None:
    """Le Bail partition of (obs - background) among the reflections (`passes` iterations)."""
    prob.base_vals = vals
    dens: dict = {}  # profile integrals over the fitted points: the same on every pass
    for _ in range(passes):
        names, cols, fixed, info = prob.columns(vals, True)
        coef, _r = prob.solve_linear(cols, fixed, names)
        lin = dict(zip(names, coef))
        model = fixed.copy()
        for n, c in zip(names, cols):
            model += lin[n] * c
        bkg = np.zeros(len(prob.x))
        for i, c in enumerate(prob.cheb):
            bkg += lin.get(f"bkg_{i}", vals[f"bkg_{i}"]) * c
        for i, _h in enumerate(prob.humps):
            p = f"bkg_hump{i}"
            bkg += lin.get(f"{p}_area", vals[f"{p}_area"]) * prob.pv_column(
                vals[f"{p}_center_deg"], vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
        peaks = model - bkg
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(peaks > 1e-12 * max(float(peaks.max()), 1e-300), (prob.y - bkg) / peaks, 0.0)
        ratio = np.clip(ratio, 0.0, None) * prob.dxf
        for name, pd in prob.pd.items():
            blocks = info[name][0]
            k = lin.get(f"{name}_lebail_k", 1.0)
            new = pd.areas * max(k, 0.0)
            # a small floor lets reflections at zero (or negative after a Pawley step) revive
            new = np.maximum(new, 1e-4 * max(float(new.max(initial=0.0)), 0.0))
            if prob.lam2 is None:
                for ib, (idx_pk, idx, prof) in enumerate(blocks):
                    num = np.sum(prof * ratio[idx], axis=1)
                    den = _profile_integrals(dens, name, ib, prof, prob.dxf[idx])
                    # reflections with less than half of their profile on fitted points (outside
                    # the range or in an excluded region) keep their intensity: tails alone do not
                    # determine it
                    upd = np.where(den > 0.5, num / np.where(den > 0, den, 1.0), 1.0)
                    new[idx_pk] = new[idx_pk] * upd
            else:
                # Ka doublet: a reflection's profile is its Ka1 peak + ratio x its Ka2 peak
                num_pk = np.zeros(2 * len(new))
                den_pk = np.zeros(2 * len(new))
                for ib, (idx_pk, idx, prof) in enumerate(blocks):
                    num_pk[idx_pk] = np.sum(prof * ratio[idx], axis=1)
                    den_pk[idx_pk] = _profile_integrals(dens, name, ib, prof, prob.dxf[idx])
                num, den = prob.fold(num_pk), prob.fold(den_pk)
                upd = np.where(den > 0.5 * (1.0 + prob.ratio2), num / np.where(den > 0, den, 1.0), 1.0)
                new = new * upd
            pd.areas = new


def _profile_integrals(dens: dict, name: str, ib: int, prof: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Integrals of the profiles of block ``ib`` over the fitted points (kept in ``dens`` while the
    profiles are the same objects)."""
    prof_den = dens.get((name, ib))
    if prof_den is None or prof_den[0] is not prof:  # profiles changed: recompute
        prof_den = dens[(name, ib)] = (prof, np.sum(prof * dx, axis=1))
    return prof_den[1]

def fraction_step(prob: Problem, derivs: ModelDerivatives, vals: dict[str, float], esd_correction: str,
                  free_nl: Sequence[str] = ()):
    """Le Bail mode: structure-factor scales at the Le Bail lattice/profile (linear solve with
    background and diffuse areas). Their covariance includes the refined nonlinear
    parameters (lattice, widths, zero...: analytic Rietveld-model derivatives at this point),
    whose uncertainty the scales inherit (widths and scales correlate). The scales and areas
    are >= 0 (`Problem.solve_linear`); returns (scales {phase: (value, esd)}, covariance, its
    parameter names, the linear parameters held at 0 (esd NaN))."""
    names, cols, fixed, info = prob.columns(vals, True, structure_scales=True)
    coef, r = prob.solve_linear(cols, fixed, names, signed=True)
    lin = dict(zip(names, coef))
    # scales and areas held at their bound 0 are fixed there (no column: esd NaN, `at_zero`)
    zero = prob.at_zero(names, cols, coef)
    at_zero = [n for n, z in zip(names, zero) if z]
    names = [n for n, z in zip(names, zero) if not z]
    cols = [c for c, z in zip(cols, zero) if not z]
    A = (np.stack([c[prob.fitmask] for c in cols], axis=1) * prob.wf[:, None] if cols
         else np.zeros((int(prob.fitmask.sum()), 0)))
    free_nl = list(free_nl)
    if free_nl:
        D = derivs.total_derivatives(vals, lin, free_nl, lebail=False)
        A = np.concatenate([np.stack([d[prob.fitmask] for d in D], axis=1) * prob.wf[:, None], A], axis=1)
        names = free_nl + list(names)
    cov = covariance_from_jacobian(A, r, len(names), esd_correction)
    scales = {}
    for name in prob.pd:
        n = f"{name}_scale"
        if n not in names:
            scales[name] = (0.0, np.nan)
            continue
        i = names.index(n)
        scales[name] = (float(lin[n]), float(np.sqrt(cov[i, i])) if np.isfinite(cov[i, i]) else np.nan)
    return scales, cov, names, at_zero
