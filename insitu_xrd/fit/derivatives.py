"""Derivatives of the model with respect to the nonlinear parameters (the analytic Jacobian).

`ModelDerivatives` is built on one fit's `insitu_xrd.fit.model.Problem` and differentiates its
model. Bragg peaks: sum_k [dA_k P_k + A_k (P_t dt_k + P_H dH_k + P_eta deta_k)], the profile
derivatives in closed form (`insitu_xrd.fit.windows`, ``derivs=True``). Lattice parameters (all
six, through the reciprocal metric: d(1/d^2)/dp = h dG*/dp h^T, dG* = -G* dG G*) give
d(2theta_Bragg)/dp analytically; the position, width, eta and Lorentz factor follow through their
derivatives with respect to the Bragg angle (one central difference of those cheap
per-reflection functions, shared by every lattice parameter). Site parameters change |F|^2 only:
analytic derivatives (`insitu_xrd.core.structure_factor`). Other parameters (profile, sample
broadening): central differences of the per-reflection functions (step `fd_step`), assembled
with sparse matrices (`LazyTransposed`); single-peak components (humps, diffuse) and SH/L by
central differences of their curves (`model_derivatives`); lmfit expressions by the chain rule
(`total_derivatives`); the Jacobian of the residual with the linear parameters projected out
(`projected_jacobian`, Kaufman's form) for the trust-region solver. The finite differences at one
point are kept: the Le Bail Jacobian and the phase-fraction step share them. With a Ka doublet
the position/width columns run over both peaks of every reflection (d(2theta)/dQ at each
wavelength), the area columns over the reflections, their Ka2 copy x ratio (`Problem.peak_areas`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse

from insitu_xrd.core.profiles import pseudo_voigt
from insitu_xrd.core.structure_factor import structure_factor_sq_derivatives
from insitu_xrd.core.symmetry import LATTICE_NAMES, reciprocal_metric_and_derivatives, site_orbit
from insitu_xrd.fit.model import PhaseData, Problem
from insitu_xrd.fit.widths import sample_widths
from insitu_xrd.fit.parameters import GEOMETRY_NAMES, PROFILE_NAMES
from insitu_xrd.fit.phase_model import cell_from_values

__all__ = ["LazyTransposed", "ModelDerivatives", "fd_step"]


def fd_step(name: str, value: float) -> float:
    """Central-difference step of parameter `name` at `value` (microstrain: at least 1e-2)."""
    h = max(abs(value) * 1e-6, 1e-8)
    return max(h, 1e-2) if name.endswith("_mustrain") else h


class LazyTransposed:
    """Profile blocks with derivatives ((peaks, grid idx, P, dP/dt, dP/dH, dP/deta)) as sparse
    matrices (CSC, nx rows, one column per windowed reflection; ``rows[i]`` is the reflection
    of column i), built per component on first use."""

    def __init__(self, blocks, nx: int):
        self.blocks = blocks
        self.nx = nx
        self._mats: dict[int, scipy.sparse.csc_matrix] = {}
        if blocks:
            self.rows = np.concatenate([b[0] for b in blocks])
            widths = np.concatenate([np.full(len(b[0]), b[1].shape[1]) for b in blocks])
            self._indptr = np.concatenate([[0], np.cumsum(widths)])
            self._indices = np.concatenate([b[1].ravel() for b in blocks])
            if max(nx, len(self._indices)) < np.iinfo(np.int32).max:
                # scipy would scan and downcast int64 indices for every matrix: do it once
                self._indptr = self._indptr.astype(np.int32)
                self._indices = self._indices.astype(np.int32)
        else:
            self.rows = np.zeros(0, int)

    def T(self, component: int):
        mat = self._mats.get(component)
        if mat is None:
            if not self.blocks:
                mat = scipy.sparse.csc_matrix((self.nx, 0))
            else:
                data = np.concatenate([b[component].ravel() for b in self.blocks])
                mat = scipy.sparse.csc_matrix((data, self._indices, self._indptr), shape=(self.nx, len(self.rows)))
            self._mats[component] = mat
        return mat


class ModelDerivatives:
    """Derivatives of the model of one `Problem` and the projected Jacobian (see the module docstring)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self._fd_key: tuple | None = None  # point of the finite differences kept in `_fd`
        self._fd: dict = {}

    def deriv_blocks(self, pd: PhaseData, vals: dict[str, float]):
        """Profiles and their derivatives of a phase's reflections as transposed sparse matrices
        (`LazyTransposed`: components 2..5 = P, dP/dt, dP/dH, dP/deta), cached like `phase_blocks`."""
        prob = self.problem
        t, fwhm, eta, tthb, d = prob.peak_params(pd, vals)
        sh_l = max(float(vals.get("sh_l", 0.0)), 0.0)
        key = ("d", t.tobytes(), fwhm.tobytes(), eta.tobytes(), sh_l)
        hit = pd.cache.get(key)
        if hit is None:
            sparse = LazyTransposed(prob.profiles.blocks(t, fwhm, eta, sh_l, derivs=True), len(prob.x))
            hit = (sparse, t, fwhm, eta, tthb, d)
            if len(pd.cache) > 6:
                pd.cache.pop(next(iter(pd.cache)))
            pd.cache[key] = hit
        return hit

    def _affects_phase(self, param: str, phase: str) -> bool:
        return param in PROFILE_NAMES or param in GEOMETRY_NAMES or param.startswith(f"{phase}_")

    def _fd_cache(self, vals: dict[str, float]) -> dict:
        """Finite differences of per-reflection quantities and single-peak curves at `vals`, kept
        while derivatives are taken at the same point (e.g. the Le Bail Jacobian and the
        phase-fraction step)."""
        key = tuple(vals.items())
        if self._fd_key != key:
            self._fd_key = key
            self._fd = {}
        return self._fd

    def _fd_peak(self, fd: dict, pd: PhaseData, n: str, vp: dict[str, float], vm: dict[str, float]):
        """(t+ - t-, FWHM+ - FWHM-, eta+ - eta-, Bragg 2theta+, Bragg 2theta-) of a phase's
        reflections for the perturbed parameter values vp, vm of parameter n."""
        prob = self.problem
        hit = fd.get((pd.name, n))
        if hit is None:
            tp, fp, ep, bp, _ = prob.peak_params(pd, vp)
            tm, fm, em, bm, _ = prob.peak_params(pd, vm)
            hit = fd[(pd.name, n)] = (tp - tm, fp - fm, ep - em, bp, bm)
        return hit

    def model_derivatives(self, vals: dict[str, float], lin: dict[str, float], free_nl: Sequence[str],
                          lebail: bool) -> list[np.ndarray]:
        """d(model)/d(parameter) on the full grid (unweighted) for the nonlinear parameters
        `free_nl`, the linear coefficients held at `lin` (values of fixed linear parameters from
        `vals`).

        Bragg peaks: sum_k [dA_k P_k + A_k (P_t dt_k + P_H dH_k + P_eta deta_k)], the profile
        derivatives analytic (`GridProfiles.blocks(derivs=True)`), the per-reflection position, width, eta and
        area derivatives by central differences of those cheap per-reflection functions (site
        parameters through |F|^2). GSAS-II SH/L and the single-peak components (diffuse, humps):
        central differences of their curves."""
        prob = self.problem
        nx = len(prob.x)
        out = {n: np.zeros(nx) for n in free_nl}

        def coef(name: str) -> float:
            return float(lin[name]) if name in lin else float(vals.get(name, 0.0))

        prob.update_fsq(vals)
        fd = self._fd_cache(vals)
        for name, pd in prob.pd.items():
            relevant = [n for n in free_nl if n != "sh_l" and self._affects_phase(n, name)]
            if lebail:
                k = coef(f"{name}_lebail_k")
                base_areas = pd.areas * k if pd.areas is not None else np.zeros(len(pd.hkl))
            else:
                k = coef(f"{name}_scale")
            if relevant:
                mats, t, fwhm, eta, tthb, d = self.deriv_blocks(pd, vals)
                rows = mats.rows
                areas = prob.peak_areas(base_areas if lebail else k * prob.structure_areas(pd, tthb, vals))
                tex = None if lebail else prob.texture(pd, vals)
                q = len(relevant)
                n_refl = len(pd.hkl)
                # position/width columns per peak (Ka2 copies included), area columns per
                # reflection (the Ka2 area follows the Ka1 one: `Problem.peak_areas`)
                c_t, c_h, c_e = (np.zeros((len(t), q)) for _ in range(3))
                c_a = np.zeros((n_refl, q))
                any_area = False
                model = prob.structures.models.get(name)
                lattice = [n for n in relevant if model is not None and n[len(name) + 1:] in model.lattice_names]
                sites = [n for n in relevant if model is not None and n in model.params]
                if lattice:
                    dtth = self._bragg_angle_derivatives(pd, vals, [n[len(name) + 1:] for n in lattice])
                    dt_b, df_b, de_b, dl_b = self._bragg_angle_sensitivities(fd, pd, vals)
                if sites and not lebail:
                    dfsq = self._fsq_derivatives(pd, vals, [model.params[n].changes for n in sites])
                for j, n in enumerate(relevant):
                    if n in lattice:
                        g = dtth[:, lattice.index(n)]
                        c_t[:, j] = areas * dt_b * g
                        c_h[:, j] = areas * df_b * g
                        c_e[:, j] = areas * de_b * g
                        if not lebail:
                            any_area = True
                            c_a[:, j] = k * pd.mult * pd.fsq * dl_b[:n_refl] * g[:n_refl]
                            if tex is not None:  # (its dependence on the cell is not followed)
                                c_a[:, j] *= tex
                        continue
                    if n in sites:
                        # |F|^2 only: positions and widths do not depend on site parameters
                        if not lebail:
                            any_area = True
                            c_a[:, j] = k * pd.mult * dfsq[:, sites.index(n)] * prob.intensity_factor(tthb[:n_refl], vals)
                            if tex is not None:
                                c_a[:, j] *= tex
                        continue
                    h = fd_step(n, vals[n])
                    vp, vm = dict(vals), dict(vals)
                    vp[n] += h
                    vm[n] -= h
                    dt, df, de, bp, bm = self._fd_peak(fd, pd, n, vp, vm)
                    c_t[:, j] = areas * dt / (2 * h)
                    c_h[:, j] = areas * df / (2 * h)
                    c_e[:, j] = areas * de / (2 * h)
                    if lebail:
                        continue
                    any_area = True
                    if tex is not None and (n == f"{name}_md_ratio" or n.startswith(f"{name}_sh_C")):
                        c_a[:, j] = (k * pd.mult * pd.fsq * prob.intensity_factor(tthb[:n_refl], vals) *
                                     (prob.texture(pd, vp) - prob.texture(pd, vm)) / (2 * h))
                        continue
                    c_a[:, j] = k * pd.mult * pd.fsq * (prob.intensity_factor(bp[:n_refl], vp) - prob.intensity_factor(bm[:n_refl], vm)) / (2 * h)
                    if tex is not None:
                        c_a[:, j] *= tex
                block = mats.T(3) @ c_t[rows] + mats.T(4) @ c_h[rows] + mats.T(5) @ c_e[rows]
                if any_area:
                    block += mats.T(2) @ prob.peak_areas(c_a)[rows]
                for j, n in enumerate(relevant):
                    out[n] += block[:, j]
            if "sh_l" in out:
                h = fd_step("sh_l", vals["sh_l"])
                t, fwhm, eta, tthb, d = prob.peak_params(pd, vals)
                areas = prob.peak_areas(base_areas if lebail else k * prob.structure_areas(pd, tthb, vals))
                lo = max(vals["sh_l"] - h, 0.0)
                hi = vals["sh_l"] + h
                yp = prob.curve(prob.profiles.blocks(t, fwhm, eta, hi), areas)
                ym = prob.curve(prob.profiles.blocks(t, fwhm, eta, lo), areas)
                out["sh_l"] += (yp - ym) / (hi - lo)
        for dspec in prob.diffuse:
            pre = f"diff_{dspec.label}"
            amp = coef(f"{pre}_area")
            for n in free_nl:
                if not (n in ("zero_deg", "displacement_um", "transparency_mm") or n.startswith(pre + "_") or
                        (n.startswith(f"{dspec.phase}_") and n.split("_", 1)[1] in LATTICE_NAMES)):
                    continue
                h = fd_step(n, vals[n])
                dy = fd.get((pre, n))
                if dy is None:
                    vp, vm = dict(vals), dict(vals)
                    vp[n] += h
                    vm[n] -= h
                    yp = pseudo_voigt(prob.x, prob.diffuse_center(dspec, vp), vp[f"{pre}_fwhm_deg"], vp[f"{pre}_eta"])
                    ym = pseudo_voigt(prob.x, prob.diffuse_center(dspec, vm), vm[f"{pre}_fwhm_deg"], vm[f"{pre}_eta"])
                    dy = fd[(pre, n)] = yp - ym
                out[n] += amp * dy / (2 * h)
        for i, _h in enumerate(prob.humps):
            pre = f"bkg_hump{i}"
            amp = coef(f"{pre}_area")
            for n in free_nl:
                if not n.startswith(pre + "_"):
                    continue
                h = fd_step(n, vals[n])
                vp, vm = dict(vals), dict(vals)
                vp[n] += h
                vm[n] -= h
                yp = pseudo_voigt(prob.x, vp[f"{pre}_center_deg"], vp[f"{pre}_fwhm_deg"], vp[f"{pre}_eta"])
                ym = pseudo_voigt(prob.x, vm[f"{pre}_center_deg"], vm[f"{pre}_fwhm_deg"], vm[f"{pre}_eta"])
                out[n] += amp * (yp - ym) / (2 * h)
        return [out[n] for n in free_nl]

    def total_derivatives(self, vals: dict[str, float], lin: dict[str, float], free: Sequence[str],
                          lebail: bool) -> list[np.ndarray]:
        """`model_derivatives` of the free parameters including, by the chain rule, their effect
        through lmfit expressions (d model/d dep x d dep/d free, the latter by central differences
        of the expressions)."""
        prob = self.problem
        deps = [n for n, p in prob.params.items() if p.expr]
        if not deps:
            return self.model_derivatives(vals, lin, free, lebail)
        free = list(free)
        D = self.model_derivatives(vals, lin, free + deps, lebail)
        E = np.zeros((len(deps), len(free)))
        for j, n in enumerate(free):
            h = fd_step(n, vals[n])
            rows = []
            for v in (vals[n] + h, vals[n] - h):
                prob.params[n].value = v
                prob.params.update_constraints()
                rows.append(np.array([prob.params[d].value for d in deps]))
            prob.params[n].value = vals[n]
            E[:, j] = (rows[0] - rows[1]) / (2 * h)
        prob.params.update_constraints()
        out = []
        for j in range(len(free)):
            col = D[j].copy()
            for i in np.nonzero(E[:, j])[0]:
                col += D[len(free) + i] * E[i, j]
            out.append(col)
        return out

    def projected_jacobian(self, vals: dict[str, float], free: Sequence[str], lebail: bool) -> np.ndarray:
        """Jacobian of the weighted residual after the linear parameters are eliminated (variable
        projection, Kaufman's form): J = -(I - Q Q^T) W dmodel/dtheta, Q an orthonormal basis of
        the weighted linear columns."""
        prob = self.problem
        names, cols, fixed, info = prob.columns(vals, lebail)
        coef, _r = prob.solve_linear(cols, fixed, names)
        D = self.total_derivatives(vals, dict(zip(names, coef)), free, lebail)
        J = -np.stack([d[prob.fitmask] for d in D], axis=1) * prob.wf[:, None]
        # a coefficient held at its bound 0 is fixed there: its column is not projected out
        cols = [c for c, z in zip(cols, prob.at_zero(names, cols, coef)) if not z]
        if cols:
            A = np.stack([c[prob.fitmask] for c in cols], axis=1) * prob.wf[:, None]
            norms = np.sqrt(np.sum(A * A, axis=0))
            A = A[:, norms > 0] / norms[norms > 0]
            if A.shape[1]:
                U, sv, _ = np.linalg.svd(A, full_matrices=False)
                U = U[:, sv > sv[0] * 1e-12]
                J = J - U @ (U.T @ J)
        return J

    def _bragg_angle_derivatives(self, pd: PhaseData, vals: dict[str, float], names: Sequence[str]) -> np.ndarray:
        """d(2theta_Bragg, deg)/d(lattice parameter) of a phase's reflections, shape (n, len(names));
        names among the phase's free lattice parameters (A or deg)."""
        prob = self.problem
        model = self.problem.structures.models[pd.name]
        cell = cell_from_values(pd.phase, vals)
        gs, dgs = reciprocal_metric_and_derivatives(cell)
        m = model.lattice.matrix()
        free = list(model.lattice_names)
        vec = np.array([gs[0, 0], gs[1, 1], gs[2, 2], gs[0, 1], gs[0, 2], gs[1, 2]])
        q = pd.hh @ vec  # 1/d^2
        sin_t = np.minimum(prob.lam * np.sqrt(q) / 2.0, 1.0 - 1e-15)
        # 2theta = 2 asin(lam sqrt(Q)/2): d(2theta)/dQ = lam / (2 sqrt(Q) cos(theta)), in degrees
        dtth_dq = np.degrees(prob.lam / (2.0 * np.sqrt(q) * np.sqrt(1.0 - sin_t**2)))
        if prob.lam2 is not None:  # the Ka2 copies: the same Q at the Ka2 wavelength
            sin_2 = np.minimum(prob.lam2 * np.sqrt(q) / 2.0, 1.0 - 1e-15)
            dtth_dq = np.concatenate([dtth_dq, np.degrees(prob.lam2 / (2.0 * np.sqrt(q) * np.sqrt(1.0 - sin_2**2)))])
        out = np.zeros((len(dtth_dq), len(names)))
        for j, ln in enumerate(names):
            dg = np.einsum("i,ijk->jk", m[:, free.index(ln)], dgs)
            dq = pd.hh @ np.array([dg[0, 0], dg[1, 1], dg[2, 2], dg[0, 1], dg[0, 2], dg[1, 2]])
            out[:, j] = dtth_dq * (dq if prob.lam2 is None else np.concatenate([dq, dq]))
        return out

    def _bragg_angle_sensitivities(self, fd: dict, pd: PhaseData, vals: dict[str, float]):
        """d(position, FWHM, eta, Lorentz factor)/d(2theta_Bragg) per reflection (central
        differences of the per-reflection functions; kept with the point's other differences)."""
        prob = self.problem
        hit = fd.get((pd.name, "bragg_angle"))
        if hit is None:
            t, fwhm, eta, tthb, d = prob.peak_params(pd, vals)
            h = 1e-5  # deg
            # effective microstrain / size per reflection held at the point's (their dependence on
            # the cell through d or the axis angle is not followed: below 1e-4 of the width's)
            wargs = sample_widths(pd, vals, cell_from_values(pd.phase, vals), d[:len(pd.hkl)])
            out = []
            for sign in (1.0, -1.0):
                b = tthb + sign * h
                fw, et = prob.fwhm_eta(pd, b, wargs)
                out.append((b + prob.shift(b, vals), fw, et, prob.intensity_factor(b, vals)))
            hit = fd[(pd.name, "bragg_angle")] = tuple((p - m) / (2 * h) for p, m in zip(*out))
        return hit

    def _fsq_derivatives(self, pd: PhaseData, vals: dict[str, float], changes: Sequence) -> np.ndarray:
        """d|F|^2/d(site parameter) at the current structure, at the cell |F|^2 is cached for."""
        cell = tuple(float(v) for v in np.round(cell_from_values(pd.phase, vals), 4))
        sg = pd.phase.spacegroup
        _, dfsq = structure_factor_sq_derivatives(pd.phase, pd.hkl, cell, changes,
                                                  orbit_of=lambda site: site_orbit(sg, site.xyz))
        return dfsq
