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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import lmfit
import numpy as np
import scipy.linalg
import scipy.sparse
from scipy.optimize import least_squares

from insitu_xrd.core.crystal import Phase, Reflections, _metric_reciprocal, make_template, parse_hkl_label
from insitu_xrd.core.pattern import (
    WINDOW_FWHM,
    Instrument,
    PeakTable,
    lorentz_factor,
    two_theta_deg_from_d,
    d_from_two_theta_deg,
)
from insitu_xrd.core.profiles import fcj_extent_deg, fcj_node_count, fcj_nodes, peak_fwhm_eta, pseudo_voigt
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import NMC_SITE_PARAMS, DiffuseSpec, PhaseSpec, RefinementSpec

__all__ = ["Refinement"]

_PROFILE_NAMES = ("U", "V", "W", "X", "Y", "zero_deg", "displacement_um", "sh_l")
_SITE_NAMES = NMC_SITE_PARAMS + ("biso_A2",)
_SIGNIFICANCE = 3.0
_FOUR_LN2 = 4.0 * np.log(2.0)
_GAUSS_NORM = np.sqrt(4.0 * np.log(2.0) / np.pi)
#: Ridge weight (on unit-normalised Jacobian columns) of the reflection intensities in the
#: Pawley polish: damps trades between reflections whose profiles correlate above ~0.999.
_PAWLEY_RIDGE = 1e-3
#: The polish stops when every shift is below _POLISH_STEP_ESD esd or (Le Bail mode) chi^2 falls
#: by less than this fraction in a step (GSAS-II's default criterion "min delta-M/M" is 1e-3).
_POLISH_DM_M = 3e-4
_POLISH_STEP_ESD = 0.1
#: After a polish step below this many esd (every nonlinear parameter) the Jacobian is kept.
_CHORD_STEP_ESD = 1.0
#: Rietveld mode: the fit ends where the exact-Jacobian Gauss-Newton step moves no nonlinear
#: parameter by more than _FINAL_STEP_ESD esd (at most _VERIFY_STEPS such steps are taken).
_FINAL_STEP_ESD = 0.05
_VERIFY_STEPS = 3
#: Most Gauss-Newton steps of a Rietveld polish (warm start; after the trust-region solver).
_GN_STEPS = 10


def _lattice_names(phase: Phase) -> tuple[str, ...]:
    system = phase.lattice_system
    if system == "cubic":
        return ("a",)
    if system in ("hexagonal", "tetragonal"):
        return ("a", "c")
    return ("a", "b", "c")


def _cell_from(phase: Phase, vals: dict[str, float]) -> tuple[float, ...]:
    a0, b0, c0, al, be, ga = phase.cell
    p = phase.name
    a = vals.get(f"{p}_a", a0)
    system = phase.lattice_system
    if system == "cubic":
        return (a, a, a, al, be, ga)
    c = vals.get(f"{p}_c", c0)
    if system in ("hexagonal", "tetragonal"):
        return (a, a, c, al, be, ga)
    return (a, vals.get(f"{p}_b", b0), c, al, be, ga)


class _LazyTransposed:
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


def _is_reciprocal(name: str) -> bool:
    """Parameters the optimisers move as 1/value (crystallite size: broadening ~ 1/size)."""
    return name.endswith("_size_um")


def _opt_space(params: lmfit.Parameters, free: Sequence[str], recip: np.ndarray):
    """Start values and bounds of the free parameters in optimiser space (1/value where recip)."""
    x0 = np.array([params[n].value for n in free], dtype=float)
    lb = np.array([params[n].min for n in free], dtype=float)
    ub = np.array([params[n].max for n in free], dtype=float)
    with np.errstate(divide="ignore"):
        x0 = np.where(recip, 1.0 / np.where(recip, x0, 1.0), x0)
        lb, ub = (np.where(recip, 1.0 / np.where(recip, ub, 1.0), lb),
                  np.where(recip, 1.0 / np.where(recip, lb, 1.0), ub))
    return x0, lb, ub


@dataclass
class _PhaseData:
    """Per-fit cache of one phase: reflections, |F|^2, Le Bail intensities."""

    name: str
    spec: PhaseSpec
    phase: Phase
    hkl: np.ndarray
    mult: np.ndarray
    fsq: np.ndarray
    fsq_key: tuple = ((), ())  # (site parameters, cell to 1e-4 A) of fsq
    areas: np.ndarray | None = None  # Le Bail intensities (area units), one per reflection
    cache: dict = field(default_factory=dict)
    hh: np.ndarray | None = None  # hkl products for 1/d^2 = hh @ (g11, g22, g33, g12, g13, g23)
    geo: dict = field(default_factory=dict)  # cell -> (d, Bragg 2theta, its sin and cos) (see `_Problem.peak_params`)
    widths: dict = field(default_factory=dict)  # (cell, profile, sample) -> (FWHM, eta)


class _Problem:
    """One fit: data on the grid, parameter bookkeeping and the vectorised model."""

    def __init__(self, ref: "Refinement", x: np.ndarray, y: np.ndarray, sig: np.ndarray, fitmask: np.ndarray,
                 active: list[str], params: lmfit.Parameters):
        self.ref = ref
        self.lam = ref.wavelength_A
        self.x, self.y, self.sig = x, y, sig
        self.fitmask = fitmask
        self.w = 1.0 / sig
        self.xf, self.yf, self.wf = x[fitmask], y[fitmask], self.w[fitmask]
        self.step = float(np.min(np.diff(x))) if len(x) > 1 else 1.0
        self.x0 = float(x[0])
        # uniform grids (the usual case) get their offsets arithmetically instead of by gathering
        self.uniform = bool(len(x) > 1 and np.allclose(np.diff(x), self.step, rtol=1e-9, atol=0.0))
        if not self.uniform:
            self.step = float(np.min(np.diff(x)))
        dx = np.gradient(x)
        self.dxf = np.where(fitmask, dx, 0.0)
        self.active = active
        self.params = params
        self.distance_mm = ref.instrument.distance_mm
        lo, hi = float(x.min()), float(x.max())
        t = (2.0 * x - (lo + hi)) / (hi - lo)
        nb = ref.spec.background.chebyshev
        self.cheb = [np.polynomial.chebyshev.chebval(t, np.eye(nb)[i]) for i in range(nb)]
        self.pd: dict[str, _PhaseData] = {}
        for name in active:
            self.pd[name] = self._phase_data(name, params)
        self.diffuse = [d for d in ref.spec.diffuse if d.phase in active]
        self.diffuse_hkl = {d.label: np.array([parse_hkl_label(r) for r in d.reflections]) for d in self.diffuse}
        self.lebail = False
        self.has_expr = any(p.expr for p in params.values())
        self._geometry_cache: dict = {}
        self._grid = (self.x0 + np.arange(len(x)) * self.step) if self.uniform else x
        self._pv_cache: dict = {}
        self._center_cache: dict = {}
        self._fd_key: tuple | None = None  # point of the finite differences kept in `_fd`
        self._fd: dict = {}

    # ----- phases -----------------------------------------------------------------------------
    def _phase_data(self, name: str, params: lmfit.Parameters) -> _PhaseData:
        vals = params.valuesdict()
        phase = self.ref.structure(name, vals)
        spec = self.ref.spec.phase(name) if name in self.ref.spec_names else _default_phase_spec(name)
        cell = _cell_from(phase, vals)
        bound = spec.lattice_bound_pct / 100.0
        tmax = float(self.x.max()) + 1.0
        dmin = float(d_from_two_theta_deg(min(tmax, 179.0), self.lam)) * (1.0 - 1.5 * bound)
        refl = self.ref._reflections(name, phase, cell, dmin)
        fsq = self.ref.fsq(name, phase, refl.hkl, cell, self._site_key(name, vals))
        pd = _PhaseData(name, spec, phase, refl.hkl, refl.multiplicity, fsq, self._fsq_key(name, phase, vals))
        h = refl.hkl.astype(float)
        pd.hh = np.stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2],
                          2 * h[:, 1] * h[:, 2]], axis=1)
        return pd

    def _site_key(self, name: str, vals: dict[str, float]) -> tuple:
        return tuple(vals.get(f"{name}_{s}", np.nan) for s in _SITE_NAMES)

    def _fsq_key(self, name: str, phase: Phase, vals: dict[str, float]) -> tuple:
        """What |F|^2 depends on: the site parameters and, through the form factors and
        Debye-Waller terms, the cell (to 1e-4 A, as `Refinement.fsq` caches it)."""
        return self._site_key(name, vals), tuple(np.round(_cell_from(phase, vals), 4))

    def update_fsq(self, vals: dict[str, float]) -> None:
        """Recompute |F|^2 where the site parameters or the cell changed."""
        for name, pd in self.pd.items():
            key = self._fsq_key(name, pd.phase, vals)
            if key == pd.fsq_key:
                continue
            if key[0] != pd.fsq_key[0]:  # new site parameters: new structure
                pd.phase = self.ref.structure(name, vals)
                pd.cache.clear()
            pd.fsq = self.ref.fsq(name, pd.phase, pd.hkl, _cell_from(pd.phase, vals), key[0])
            pd.fsq_key = key

    def shift(self, tthb: np.ndarray, vals: dict[str, float],
              sin_cos: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Zero and sample-displacement shift (deg) of Bragg angles ``tthb``; ``sin_cos``: their
        sin and cos when already known."""
        if sin_cos is None:
            tth = np.radians(tthb)
            sin_cos = (np.sin(tth), np.cos(tth))
        disp = -(vals.get("displacement_um", 0.0) * 1e-3 / self.distance_mm) * sin_cos[0] * sin_cos[1]
        return vals.get("zero_deg", 0.0) + np.degrees(disp)

    def peak_params(self, pd: _PhaseData, vals: dict[str, float]):
        """Positions t (deg), FWHM (deg), eta and Bragg angles of a phase's reflections."""
        p = pd.name
        cell = _cell_from(pd.phase, vals)
        # memoised by their inputs (the finite differences of `model_derivatives` change one
        # parameter at a time: most perturbations leave the cell or the widths unchanged)
        geo = pd.geo.get(cell)
        if geo is None:
            g = _metric_reciprocal(cell)
            d = 1.0 / np.sqrt(pd.hh @ np.array([g[0, 0], g[1, 1], g[2, 2], g[0, 1], g[0, 2], g[1, 2]]))
            tthb = 2.0 * np.degrees(np.arcsin(np.minimum(self.lam / (2.0 * d), 1.0)))
            if len(pd.geo) > 64:
                pd.geo.clear()
            tth = np.radians(tthb)
            geo = pd.geo[cell] = (d, tthb, np.sin(tth), np.cos(tth))
        d, tthb, sin_t, cos_t = geo
        t = tthb + self.shift(tthb, vals, (sin_t, cos_t))
        size = vals.get(f"{p}_size_um", np.inf)
        wargs = (vals["U"], vals["V"], vals["W"], vals["X"], vals["Y"],
                 vals.get(f"{p}_mustrain", 0.0), size if size > 0 else np.inf,
                 vals.get(f"{p}_mustrain_mix", 1.0), vals.get(f"{p}_size_mix", 1.0))
        wkey = (cell, wargs)
        widths = pd.widths.get(wkey)
        if widths is None:
            if len(pd.widths) > 64:
                pd.widths.clear()
            widths = pd.widths[wkey] = peak_fwhm_eta(tthb, self.lam, *wargs)
        fwhm, eta = widths
        return t, fwhm, eta, tthb, d

    def _window_groups(self, t: np.ndarray, fwhm: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Reflections near the fitted range, in up to 4 groups of similar window half-width:
        [(peak indices, half-width k in grid steps)] (k = WINDOW_FWHM FWHM / step + 1, <= n)."""
        x = self.x
        n = len(x)
        ok = np.isfinite(t) & (t > x[0] - 0.5 - 5 * np.nanmax(fwhm, initial=0)) & (t < x[-1] + 0.5 + 5 * np.nanmax(fwhm, initial=0))
        sel = np.nonzero(ok)[0]
        if sel.size == 0:
            return []
        K = np.minimum(np.ceil(WINDOW_FWHM * fwhm[sel] / self.step).astype(int) + 1, n)
        order = np.argsort(K)
        return [(sel[g], int(K[g].max())) for g in np.array_split(order, min(4, len(order))) if g.size]

    def _blocks(self, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray, sh_l: float = 0.0, derivs: bool = False):
        """Windowed profile values: list of (peak indices, grid indices (k, 2K), values (k, 2K)),
        with derivs also d/d(centre), d/d(FWHM), d/d(eta) of the (area-normalised) profiles:
        (peak indices, grid indices, P, dP/dt, dP/dH, dP/deta).

        With sh_l > 0 (GSAS-II SH/L) each profile is the FCJ weighted sum of pseudo-Voigts
        (`insitu_xrd.core.profiles.fcj_nodes`), the window widened on the tail side (the
        derivatives then hold the node positions and weights fixed: a < 1 % approximation of
        d/d(centre), used only for the Jacobian)."""
        if sh_l <= 0:
            return self._blocks_pv(t, fwhm, eta, derivs)
        x = self.x
        n = len(x)
        out = []
        for idx_pk, k in self._window_groups(t, fwhm):
            tk = t[idx_pk]
            h = fwhm[idx_pk, None]
            e = eta[idx_pk, None]
            ext = fcj_extent_deg(tk, sh_l)
            kext = int(np.ceil(float(ext.max()) / self.step))
            shift, weight = fcj_nodes(tk, sh_l, fcj_node_count(tk, sh_l, h[:, 0]))
            # the tail is on the low-angle side below 90 deg, on the high-angle side above
            lo_side = kext if np.any(tk <= 90.0) else 0
            hi_side = kext if np.any(tk > 90.0) else 0
            ic = np.searchsorted(x, tk)
            offs = np.arange(-k - lo_side, k + hi_side + 1)
            idx = ic[:, None] + offs[None, :]
            valid = (idx >= 0) & (idx < n)
            idx = np.clip(idx, 0, n - 1)
            if self.uniform:
                dx = (self.x0 + idx * self.step) - tk[:, None]
            else:
                dx = x[idx] - tk[:, None]
            valid &= np.abs(dx) < WINDOW_FWHM * h + ext[:, None]
            # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
            kg = min(k, int(np.ceil(3.5 * float(h.max()) / self.step)) + 1)
            centre = k + lo_side  # column of dx ~ 0
            sl = slice(centre - kg - lo_side, centre + kg + hi_side + 1)
            prof = np.zeros(dx.shape)
            if derivs:
                d_t, d_h, d_e = np.zeros(dx.shape), np.zeros(dx.shape), np.zeros(dx.shape)
            for j in range(shift.shape[1]):
                wj = weight[:, j, None]
                dj = dx - shift[:, j, None]
                den = h * h + 4.0 * dj * dj
                lor = (h * (2.0 / np.pi)) / den
                prof += (wj * e) * lor
                if derivs:
                    d_t += (wj * e) * lor * (8.0 * dj / den)
                    d_h += (wj * e) * (2.0 / np.pi) * (4.0 * dj * dj - h * h) / (den * den)
                    d_e += wj * lor
                dg = dj[:, sl]
                gau = (_GAUSS_NORM / h) * np.exp((-_FOUR_LN2) * (dg / h) ** 2)
                prof[:, sl] += (wj * (1.0 - e)) * gau
                if derivs:
                    d_t[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * _FOUR_LN2 * dg / (h * h))
                    d_h[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * _FOUR_LN2 * dg * dg / (h * h * h) - 1.0 / h)
                    d_e[:, sl] -= wj * gau
            prof *= valid
            if derivs:
                out.append((idx_pk, idx, prof, d_t * valid, d_h * valid, d_e * valid))
            else:
                out.append((idx_pk, idx, prof))
        return out

    def _window_geometry(self, t: np.ndarray, fwhm: np.ndarray) -> list:
        """Windows of the pseudo-Voigt blocks (no FCJ): per group of reflections (peak indices,
        grid indices, dx = grid - centre, valid mask, Gaussian column slice). Kept for the last
        few (t, FWHM): the profiles and their derivatives at one point share them."""
        key = (t.tobytes(), fwhm.tobytes())
        cache = self._geometry_cache
        hit = cache.get(key)
        if hit is not None:
            return hit
        x = self.x
        n = len(x)
        out = []
        for idx_pk, k in self._window_groups(t, fwhm):
            tk = t[idx_pk]
            h = fwhm[idx_pk, None]
            ic = np.searchsorted(x, tk)
            offs = np.arange(-k, k + 1)
            idx = ic[:, None] + offs[None, :]
            valid = idx.view(np.uint64) < n  # 0 <= idx < n (negative: huge as unsigned)
            np.clip(idx, 0, n - 1, out=idx)
            # uniform grid: x0 + i * step (`_grid`), as computed per element before
            dx = self._grid[idx] - tk[:, None]
            valid &= np.abs(dx) < WINDOW_FWHM * h
            # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
            kg = min(k, int(np.ceil(3.5 * float(h.max()) / self.step)) + 1)
            # the mask as 0/1 floats: multiplying by it is exact and faster than by booleans
            out.append((idx_pk, idx, dx, valid.astype(float), slice(k - kg, k + kg + 1)))
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[key] = out
        return out

    def _blocks_pv(self, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray, derivs: bool):
        """`_blocks` without FCJ asymmetry (single pseudo-Voigts)."""
        out = []
        for idx_pk, idx, dx, valid, sl in self._window_geometry(t, fwhm):
            h = fwhm[idx_pk, None]
            e = eta[idx_pk, None]
            dx2 = 4.0 * dx * dx
            if not derivs:
                # Lorentzian part over the whole window: (2/pi) h / (h^2 + 4 dx^2)
                prof = (e * h * (2.0 / np.pi)) / (h * h + dx2)
                dxg = dx[:, sl]
                prof[:, sl] += ((1.0 - e) * (_GAUSS_NORM / h)) * np.exp((-_FOUR_LN2) * (dxg / h) ** 2)
                prof *= valid
                out.append((idx_pk, idx, prof))
                continue
            den = h * h + dx2
            lor = (h * (2.0 / np.pi)) / den
            prof = e * lor
            d_t = prof * (8.0 * dx / den)
            d_h = e * (2.0 / np.pi) * (dx2 - h * h) / (den * den)
            d_e = lor
            dg = dx[:, sl]
            gau = (_GAUSS_NORM / h) * np.exp((-_FOUR_LN2) * (dg / h) ** 2)
            ge = (1.0 - e) * gau
            prof[:, sl] += ge
            d_t[:, sl] += ge * (2.0 * _FOUR_LN2 * dg / (h * h))
            d_h[:, sl] += ge * (2.0 * _FOUR_LN2 * dg * dg / (h * h * h) - 1.0 / h)
            d_e[:, sl] -= gau
            prof *= valid
            d_t *= valid
            d_h *= valid
            d_e *= valid
            out.append((idx_pk, idx, prof, d_t, d_h, d_e))
        return out

    def phase_blocks(self, pd: _PhaseData, vals: dict[str, float]):
        t, fwhm, eta, tthb, d = self.peak_params(pd, vals)
        sh_l = max(float(vals.get("sh_l", 0.0)), 0.0)
        key = (t.tobytes(), fwhm.tobytes(), eta.tobytes(), sh_l)
        hit = pd.cache.get(key)
        if hit is None:
            hit = (self._blocks(t, fwhm, eta, sh_l), t, fwhm, eta, tthb, d)
            if len(pd.cache) > 6:
                pd.cache.pop(next(iter(pd.cache)))
            pd.cache[key] = hit
        return hit

    def curve(self, blocks, areas: np.ndarray) -> np.ndarray:
        y = np.zeros(len(self.x))
        for idx_pk, idx, prof in blocks:
            y += np.bincount(idx.ravel(), weights=(prof * areas[idx_pk, None]).ravel(), minlength=len(self.x))
        return y

    def structure_areas(self, pd: _PhaseData, tthb: np.ndarray) -> np.ndarray:
        return pd.mult * pd.fsq * lorentz_factor(tthb)

    def pv_column(self, center: float, fwhm: float, eta: float) -> np.ndarray:
        """pseudo_voigt on the grid (read-only; the last few kept: columns and residuals at
        nearby points share most single-peak components)."""
        key = (center, fwhm, eta)
        cache = self._pv_cache
        col = cache.get(key)
        if col is None:
            col = pseudo_voigt(self.x, center, fwhm, eta)
            col.flags.writeable = False
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[key] = col
        return col

    def diffuse_center(self, d: DiffuseSpec, vals: dict[str, float]) -> float:
        pd = self.pd[d.phase]
        cell = _cell_from(pd.phase, vals)
        key = (d.label, cell, vals.get("zero_deg", 0.0), vals.get("displacement_um", 0.0))
        base = self._center_cache.get(key)
        if base is None:
            dd = pd.phase.d_spacing(self.diffuse_hkl[d.label], cell)
            tthb = two_theta_deg_from_d(dd, self.lam)
            base = float(np.mean(tthb + self.shift(tthb, vals)))
            if len(self._center_cache) >= 64:
                self._center_cache.clear()
            self._center_cache[key] = base
        return base + vals.get(f"diff_{d.label}_offset_deg", 0.0)

    # ----- linear columns ---------------------------------------------------------------------
    def columns(self, vals: dict[str, float], lebail: bool, structure_scales: bool = False):
        """Model = fixed + sum_j coef_j * col_j. Returns (names, cols, fixed, phase_info)."""
        names: list[str] = []
        cols: list[np.ndarray] = []
        fixed = np.zeros(len(self.x))
        pars = self.params
        self.update_fsq(vals)

        def add(name: str, col: np.ndarray, linear_free: bool) -> None:
            if linear_free:
                names.append(name)
                cols.append(col)
            else:
                fixed[:] += vals.get(name, 0.0) * col

        for i, c in enumerate(self.cheb):
            add(f"bkg_{i}", c, pars[f"bkg_{i}"].vary_linear)  # type: ignore[attr-defined]
        for i, _h in enumerate(self.ref.spec.background.humps):
            p = f"bkg_hump{i}"
            col = self.pv_column(vals[f"{p}_center_deg"], vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
            add(f"{p}_area", col, pars[f"{p}_area"].vary_linear)  # type: ignore[attr-defined]
        info = {}
        for name, pd in self.pd.items():
            blocks, t, fwhm, eta, tthb, d = self.phase_blocks(pd, vals)
            info[name] = (blocks, t, fwhm, eta, tthb, d)
            if lebail and not structure_scales:
                areas = pd.areas if pd.areas is not None else np.zeros(len(t))
                add(f"{name}_lebail_k", self.curve(blocks, areas), True)
            else:
                col = self.curve(blocks, self.structure_areas(pd, tthb))
                free = structure_scales or pars[f"{name}_scale"].vary_linear  # type: ignore[attr-defined]
                add(f"{name}_scale", col, free)
        for dspec in self.diffuse:
            p = f"diff_{dspec.label}"
            col = self.pv_column(self.diffuse_center(dspec, vals), vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
            add(f"{p}_area", col, pars[f"{p}_area"].vary_linear)  # type: ignore[attr-defined]
        return names, cols, fixed, info

    # ----- derivatives -----------------------------------------------------------------------
    def deriv_blocks(self, pd: _PhaseData, vals: dict[str, float]):
        """Profiles and their derivatives of a phase's reflections as transposed sparse matrices
        (`_LazyTransposed`: components 2..5 = P, dP/dt, dP/dH, dP/deta), cached like `phase_blocks`."""
        t, fwhm, eta, tthb, d = self.peak_params(pd, vals)
        sh_l = max(float(vals.get("sh_l", 0.0)), 0.0)
        key = ("d", t.tobytes(), fwhm.tobytes(), eta.tobytes(), sh_l)
        hit = pd.cache.get(key)
        if hit is None:
            sparse = _LazyTransposed(self._blocks(t, fwhm, eta, sh_l, derivs=True), len(self.x))
            hit = (sparse, t, fwhm, eta, tthb, d)
            if len(pd.cache) > 6:
                pd.cache.pop(next(iter(pd.cache)))
            pd.cache[key] = hit
        return hit

    @staticmethod
    def fd_step(name: str, value: float) -> float:
        h = max(abs(value) * 1e-6, 1e-8)
        return max(h, 1e-2) if name.endswith("_mustrain") else h

    def _affects_phase(self, param: str, phase: str) -> bool:
        return param in _PROFILE_NAMES or param.startswith(f"{phase}_")

    def _fd_cache(self, vals: dict[str, float]) -> dict:
        """Finite differences of per-reflection quantities and single-peak curves at `vals`, kept
        while derivatives are taken at the same point (e.g. the Le Bail Jacobian and the
        phase-fraction step)."""
        key = tuple(vals.items())
        if self._fd_key != key:
            self._fd_key = key
            self._fd = {}
        return self._fd

    def _fd_peak(self, fd: dict, pd: _PhaseData, n: str, vp: dict[str, float], vm: dict[str, float]):
        """(t+ - t-, FWHM+ - FWHM-, eta+ - eta-, Bragg 2theta+, Bragg 2theta-) of a phase's
        reflections for the perturbed parameter values vp, vm of parameter n."""
        hit = fd.get((pd.name, n))
        if hit is None:
            tp, fp, ep, bp, _ = self.peak_params(pd, vp)
            tm, fm, em, bm, _ = self.peak_params(pd, vm)
            hit = fd[(pd.name, n)] = (tp - tm, fp - fm, ep - em, bp, bm)
        return hit

    def model_derivatives(self, vals: dict[str, float], lin: dict[str, float], free_nl: Sequence[str],
                          lebail: bool) -> list[np.ndarray]:
        """d(model)/d(parameter) on the full grid (unweighted) for the nonlinear parameters
        `free_nl`, the linear coefficients held at `lin` (values of fixed linear parameters from
        `vals`).

        Bragg peaks: sum_k [dA_k P_k + A_k (P_t dt_k + P_H dH_k + P_eta deta_k)], the profile
        derivatives analytic (`_blocks(derivs=True)`), the per-reflection position, width, eta and
        area derivatives by central differences of those cheap per-reflection functions (site
        parameters through |F|^2). GSAS-II SH/L and the single-peak components (diffuse, humps):
        central differences of their curves."""
        nx = len(self.x)
        out = {n: np.zeros(nx) for n in free_nl}

        def coef(name: str) -> float:
            return float(lin[name]) if name in lin else float(vals.get(name, 0.0))

        self.update_fsq(vals)
        fd = self._fd_cache(vals)
        for name, pd in self.pd.items():
            relevant = [n for n in free_nl if n != "sh_l" and self._affects_phase(n, name)]
            if lebail:
                k = coef(f"{name}_lebail_k")
                base_areas = pd.areas * k if pd.areas is not None else np.zeros(len(pd.hkl))
            else:
                k = coef(f"{name}_scale")
            if relevant:
                mats, t, fwhm, eta, tthb, d = self.deriv_blocks(pd, vals)
                rows = mats.rows
                areas = base_areas if lebail else k * self.structure_areas(pd, tthb)
                q = len(relevant)
                c_t, c_h, c_e, c_a = (np.zeros((len(t), q)) for _ in range(4))
                any_area = False
                for j, n in enumerate(relevant):
                    h = self.fd_step(n, vals[n])
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
                    if self._is_site(n, name):
                        fsq_p = _structure_factor_sq(self.ref.structure(name, vp), pd.hkl, _cell_from(pd.phase, vp))
                        fsq_m = _structure_factor_sq(self.ref.structure(name, vm), pd.hkl, _cell_from(pd.phase, vm))
                        c_a[:, j] = k * pd.mult * (fsq_p - fsq_m) / (2 * h) * lorentz_factor(tthb)
                    else:
                        c_a[:, j] = k * pd.mult * pd.fsq * (lorentz_factor(bp) - lorentz_factor(bm)) / (2 * h)
                block = mats.T(3) @ c_t[rows] + mats.T(4) @ c_h[rows] + mats.T(5) @ c_e[rows]
                if any_area:
                    block += mats.T(2) @ c_a[rows]
                for j, n in enumerate(relevant):
                    out[n] += block[:, j]
            if "sh_l" in out:
                h = self.fd_step("sh_l", vals["sh_l"])
                t, fwhm, eta, tthb, d = self.peak_params(pd, vals)
                areas = base_areas if lebail else k * self.structure_areas(pd, tthb)
                lo = max(vals["sh_l"] - h, 0.0)
                hi = vals["sh_l"] + h
                yp = self.curve(self._blocks(t, fwhm, eta, hi), areas)
                ym = self.curve(self._blocks(t, fwhm, eta, lo), areas)
                out["sh_l"] += (yp - ym) / (hi - lo)
        for dspec in self.diffuse:
            pre = f"diff_{dspec.label}"
            amp = coef(f"{pre}_area")
            for n in free_nl:
                if not (n in ("zero_deg", "displacement_um") or n.startswith(pre + "_") or
                        (n.startswith(f"{dspec.phase}_") and n.split("_", 1)[1] in ("a", "b", "c"))):
                    continue
                h = self.fd_step(n, vals[n])
                dy = fd.get((pre, n))
                if dy is None:
                    vp, vm = dict(vals), dict(vals)
                    vp[n] += h
                    vm[n] -= h
                    yp = pseudo_voigt(self.x, self.diffuse_center(dspec, vp), vp[f"{pre}_fwhm_deg"], vp[f"{pre}_eta"])
                    ym = pseudo_voigt(self.x, self.diffuse_center(dspec, vm), vm[f"{pre}_fwhm_deg"], vm[f"{pre}_eta"])
                    dy = fd[(pre, n)] = yp - ym
                out[n] += amp * dy / (2 * h)
        for i, _h in enumerate(self.ref.spec.background.humps):
            pre = f"bkg_hump{i}"
            amp = coef(f"{pre}_area")
            for n in free_nl:
                if not n.startswith(pre + "_"):
                    continue
                h = self.fd_step(n, vals[n])
                vp, vm = dict(vals), dict(vals)
                vp[n] += h
                vm[n] -= h
                yp = pseudo_voigt(self.x, vp[f"{pre}_center_deg"], vp[f"{pre}_fwhm_deg"], vp[f"{pre}_eta"])
                ym = pseudo_voigt(self.x, vm[f"{pre}_center_deg"], vm[f"{pre}_fwhm_deg"], vm[f"{pre}_eta"])
                out[n] += amp * (yp - ym) / (2 * h)
        return [out[n] for n in free_nl]

    def total_derivatives(self, vals: dict[str, float], lin: dict[str, float], free: Sequence[str],
                          lebail: bool) -> list[np.ndarray]:
        """`model_derivatives` of the free parameters including, by the chain rule, their effect
        through lmfit expressions (d model/d dep x d dep/d free, the latter by central differences
        of the expressions)."""
        deps = [n for n, p in self.params.items() if p.expr]
        if not deps:
            return self.model_derivatives(vals, lin, free, lebail)
        free = list(free)
        D = self.model_derivatives(vals, lin, free + deps, lebail)
        E = np.zeros((len(deps), len(free)))
        for j, n in enumerate(free):
            h = self.fd_step(n, vals[n])
            rows = []
            for v in (vals[n] + h, vals[n] - h):
                self.params[n].value = v
                self.params.update_constraints()
                rows.append(np.array([self.params[d].value for d in deps]))
            self.params[n].value = vals[n]
            E[:, j] = (rows[0] - rows[1]) / (2 * h)
        self.params.update_constraints()
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
        names, cols, fixed, info = self.columns(vals, lebail)
        coef, _r = self.solve_linear(cols, fixed)
        D = self.total_derivatives(vals, dict(zip(names, coef)), free, lebail)
        J = -np.stack([d[self.fitmask] for d in D], axis=1) * self.wf[:, None]
        if cols:
            A = np.stack([c[self.fitmask] for c in cols], axis=1) * self.wf[:, None]
            norms = np.sqrt(np.sum(A * A, axis=0))
            A = A[:, norms > 0] / norms[norms > 0]
            if A.shape[1]:
                U, sv, _ = np.linalg.svd(A, full_matrices=False)
                U = U[:, sv > sv[0] * 1e-12]
                J = J - U @ (U.T @ J)
        return J

    @staticmethod
    def _is_site(param: str, phase: str) -> bool:
        return param.startswith(f"{phase}_") and param[len(phase) + 1:] in _SITE_NAMES

    def solve_linear(self, cols: list[np.ndarray], fixed: np.ndarray):
        b = (self.yf - fixed[self.fitmask]) * self.wf
        if not cols:
            return np.zeros(0), b
        A = np.stack([c[self.fitmask] for c in cols], axis=1) * self.wf[:, None]
        norms = np.sqrt(np.sum(A * A, axis=0))
        good = norms > 0
        coef = np.zeros(A.shape[1])
        if good.any():
            sol = np.linalg.lstsq(A[:, good] / norms[good], b, rcond=None)[0]
            coef[good] = sol / norms[good]
        return coef, b - A @ coef

    def residual(self, vals: dict[str, float], lebail: bool):
        names, cols, fixed, info = self.columns(vals, lebail)
        coef, r = self.solve_linear(cols, fixed)
        return r, dict(zip(names, coef)), (names, cols, fixed, info)

    # ----- parameter vectors ------------------------------------------------------------------
    def values_from(self, free: list[str], xvec: np.ndarray) -> dict[str, float]:
        if self.has_expr:
            for n, v in zip(free, xvec):
                self.params[n].value = float(v)
            self.params.update_constraints()
            return self.params.valuesdict()
        vals = self._base_vals.copy()
        vals.update(zip(free, (float(v) for v in xvec)))
        return vals


#: Symmetry-generated site positions by (space group, site xyz): they do not depend on the cell
#: or the site occupancies, and generating them (gemmi operations, tolerance deduplication) costs
#: more than the structure factors themselves.
_POSITIONS: dict[tuple, np.ndarray] = {}


def _site_positions(phase: Phase, site) -> np.ndarray:
    key = (phase.space_group, tuple(float(v) for v in site.xyz))
    hit = _POSITIONS.get(key)
    if hit is None:
        if len(_POSITIONS) > 256:
            _POSITIONS.clear()
        hit = phase.site_positions(site)
        hit.flags.writeable = False
        _POSITIONS[key] = hit
    return hit


def _structure_factor_sq(phase: Phase, hkl: np.ndarray, cell: tuple[float, ...]) -> np.ndarray:
    """`Phase.structure_factor_sq` with the site positions memoised (same numbers)."""
    return phase.structure_factor_sq(hkl, cell, positions_of=lambda site: _site_positions(phase, site))


def held_phases(held: list[str]) -> set[str]:
    return {n.split("_", 1)[0] for n in held}


def _single_thread_blas():
    """BLAS threads cost more than they give on these small dense problems (measured 5x slower
    with OpenBLAS on 2 cores); limit them for the duration of a fit when threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _default_phase_spec(name: str) -> PhaseSpec:
    return PhaseSpec(name=name, template="ni")


class Refinement:
    """Refinement engine for one recipe ``refinement:`` section (see module docstring)."""

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
            ph = ph.with_cell(a=ps.a, b=ps.b, c=ps.c)
            if ps.biso_A2 is not None:
                for s in ph.sites:
                    s.biso_A2 = float(ps.biso_A2)
            self.phases[ps.name] = ph
        self._refl_cache: dict[str, tuple[float, tuple[float, ...], Reflections]] = {}
        self._fsq_cache: dict[tuple, np.ndarray] = {}
        self._mass_cache: dict[tuple, float] = {}

    def _reflections(self, name: str, phase: Phase, cell: tuple[float, ...], dmin: float) -> Reflections:
        """Reflection list (cached between fits while the cell stays within 1 % of the cached one)."""
        hit = self._refl_cache.get(name)
        if hit is not None:
            dmin0, cell0, refl = hit
            ratio = max(abs(c / c0 - 1.0) for c, c0 in zip(cell[:3], cell0[:3]))
            if ratio < 0.01 and dmin0 <= dmin * (1.0 - 0.01):
                return refl
        dmin_used = dmin * 0.98
        refl = phase.with_cell(cell[0], cell[1], cell[2]).reflections(dmin_used)
        self._refl_cache[name] = (dmin_used, tuple(cell), refl)
        return refl

    def fsq(self, name: str, phase: Phase, hkl: np.ndarray, cell: tuple[float, ...], site_key: tuple) -> np.ndarray:
        """|F|^2 of `hkl` at the cell rounded to 1e-4 A (the form factors and Debye-Waller terms
        change |F|^2 by < 1e-4 relative within that: 4.5e-5 for NMC811 reflections to d = 0.7 A
        at +5e-5 A), cached between fits for the same sites. Computed at the rounded cell, so that
        the value does not depend on which cell filled the cache (sequential runs reproduce)."""
        if not len(hkl):
            return np.zeros(0)
        cell_r = tuple(float(v) for v in np.round(cell, 4))
        key = (name, site_key, hkl.tobytes(), cell_r)
        hit = self._fsq_cache.get(key)
        if hit is None:
            hit = _structure_factor_sq(phase, hkl, cell_r)
            if len(self._fsq_cache) > 64:
                self._fsq_cache.pop(next(iter(self._fsq_cache)))
            self._fsq_cache[key] = hit
        return hit

    def cell_mass(self, name: str, phase: Phase, site_key: tuple) -> float:
        """Unit-cell mass (amu) of a phase with its site parameters (cached)."""
        key = (name, site_key)
        if key not in self._mass_cache:
            self._mass_cache[key] = phase.cell_mass_amu
        return self._mass_cache[key]

    # ----- structure with site parameters -----------------------------------------------------
    def structure(self, name: str, vals: dict[str, float]) -> Phase:
        """The phase with its site parameters set from `vals` (cell as in the base phase)."""
        base = self.phases[name]
        ps = self.spec.phase(name)
        has = {s: vals[f"{name}_{s}"] for s in _SITE_NAMES if f"{name}_{s}" in vals}
        if not has:
            return base
        if ps.template is not None and ps.template.lower() == "nmc811":
            kw = {k: has[k] for k in NMC_SITE_PARAMS if k in has}
            ph = make_template("nmc811", name=name, a=base.a, c=base.c, **_nmc_defaults(base, kw))
        else:
            ph = base.with_cell()
        if "biso_A2" in has:
            for s in ph.sites:
                s.biso_A2 = float(has["biso_A2"])
        return ph

    # ----- parameters -------------------------------------------------------------------------
    def initial_params(self, active: Sequence[str] | None = None) -> lmfit.Parameters:
        """lmfit Parameters from the spec (all phases, or only `active`)."""
        spec = self.spec
        names = list(active) if active is not None else [p.name for p in spec.phases if not p.optional]
        pars = lmfit.Parameters()
        inst = self.instrument
        prof_refine = set(spec.profile.refine)
        for n in _PROFILE_NAMES:
            v = getattr(inst, n) if hasattr(inst, n) else (getattr(spec.profile, n) or 0.0)
            v = float(v)
            p = lmfit.Parameter(n, value=v, vary=n in prof_refine)
            if n == "sh_l":
                # the profile depends on SH/L^2 near 0 (zero gradient there): a refined SH/L starts
                # at GSAS-II's default 0.002 unless a value is given
                p.set(min=0.0, max=0.1, value=v if (v > 0 or not p.vary) else 0.002)
            if n in ("U", "W", "X", "Y"):
                # negative values from a file (GSAS-II allows them) are kept: the total widths are
                # clipped at 0 in the profile
                p.set(min=min(-1e3 if n == "U" else 0.0, v), max=max(1e4, v))
            if n == "zero_deg":
                p.set(min=-1.0, max=1.0)
            pars.add(p)
        for i in range(spec.background.chebyshev):
            pars.add(f"bkg_{i}", value=0.0, vary=True)
        for i, h in enumerate(spec.background.humps):
            pre = f"bkg_hump{i}"
            pars.add(f"{pre}_area", value=h.area or 0.0, vary="area" in h.refine)
            pars.add(f"{pre}_center_deg", value=h.center_deg, vary="center_deg" in h.refine,
                     min=h.center_deg - 2 * h.fwhm_deg, max=h.center_deg + 2 * h.fwhm_deg)
            pars.add(f"{pre}_fwhm_deg", value=h.fwhm_deg, vary="fwhm_deg" in h.refine, min=h.fwhm_deg / 10, max=h.fwhm_deg * 10)
            pars.add(f"{pre}_eta", value=h.eta, vary="eta" in h.refine, min=0.0, max=1.0)
        for ps in spec.phases:
            if ps.name not in names:
                continue
            self._add_phase_params(pars, ps)
        for d in spec.diffuse:
            if d.phase not in names:
                continue
            pre = f"diff_{d.label}"
            pars.add(f"{pre}_area", value=d.area or 0.0, vary="area" in d.refine)
            lo, hi = d.fwhm_bounds_deg
            pars.add(f"{pre}_fwhm_deg", value=d.fwhm_deg, vary="fwhm_deg" in d.refine, min=lo, max=hi)
            pars.add(f"{pre}_offset_deg", value=d.offset_deg, vary="offset_deg" in d.refine,
                     min=-d.max_offset_deg, max=d.max_offset_deg)
            pars.add(f"{pre}_eta", value=d.eta, vary="eta" in d.refine, min=0.0, max=1.0)
        self._apply_limits_constraints(pars, names, spec.limits, spec.constraints, "refinement")
        return pars

    def _inactive_name(self, name: str, active: Sequence[str]) -> bool:
        """True when `name` belongs to a phase of the spec that is not active in this fit."""
        inactive = [p for p in self.spec_names if p not in active]
        return any(name.startswith(f"{p}_") or name.startswith(f"diff_{p}_") for p in inactive)

    def _apply_limits_constraints(self, pars: lmfit.Parameters, active: Sequence[str],
                                  limits: dict, constraints: dict, where: str) -> None:
        """Bounds and lmfit expressions on nonlinear parameters (skipped for inactive phases)."""
        import re

        for name, (lo, hi) in limits.items():
            if name not in pars:
                if self._inactive_name(name, active):
                    continue
                raise InsituXRDError(f"{where}.limits.{name}: no such parameter in this fit "
                                     f"(parameters: {', '.join(pars)})")
            pars[name].set(min=-np.inf if lo is None else float(lo), max=np.inf if hi is None else float(hi))
        for name, expr in constraints.items():
            if name not in pars:
                if self._inactive_name(name, active):
                    continue
                raise InsituXRDError(f"{where}.constraints.{name}: no such parameter in this fit "
                                     f"(parameters: {', '.join(pars)})")
            used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr))
            linear = sorted(n for n in used | {name} if n in pars and self._is_linear(n))
            if linear:
                raise InsituXRDError(
                    f"{where}.constraints.{name}: {linear} are linear parameters (scales, background, areas), solved "
                    "linearly at every step; they cannot be constrained or used in constraints")
            missing = sorted(n for n in used if n not in pars and self._inactive_name(n, active))
            if missing:
                raise InsituXRDError(f"{where}.constraints.{name}: {expr!r} uses {missing}, whose phase is not active")
            try:
                pars[name].set(expr=expr)
                pars.update_constraints()
            except Exception as exc:  # lmfit/asteval: NameError, SyntaxError...
                raise InsituXRDError(f"{where}.constraints.{name}: expression {expr!r} cannot be evaluated ({exc})") from None
            if not np.isfinite(pars[name].value):
                raise InsituXRDError(f"{where}.constraints.{name}: expression {expr!r} gives {pars[name].value}")

    def _add_phase_params(self, pars: lmfit.Parameters, ps: PhaseSpec) -> None:
        ph = self.phases[ps.name]
        p = ps.name
        bound = ps.lattice_bound_pct / 100.0
        for ln in _lattice_names(ph):
            v = {"a": ph.a, "b": ph.b, "c": ph.c}[ln]
            pars.add(f"{p}_{ln}", value=v, vary=ln in ps.refine, min=v * (1 - bound), max=v * (1 + bound))
        pars.add(f"{p}_scale", value=ps.scale or 1.0, vary="scale" in ps.refine)
        pars.add(f"{p}_mustrain", value=ps.mustrain, vary="mustrain" in ps.refine, min=0.0, max=3e4)
        if ps.size_um is not None or "size_um" in ps.refine:
            pars.add(f"{p}_size_um", value=ps.size_um or 1.0, vary="size_um" in ps.refine, min=1e-3, max=1e3)
        pars.add(f"{p}_mustrain_mix", value=ps.mustrain_mix, vary="mustrain_mix" in ps.refine, min=0.0, max=1.0)
        pars.add(f"{p}_size_mix", value=ps.size_mix, vary="size_mix" in ps.refine, min=0.0, max=1.0)
        is_nmc = ps.template is not None and ps.template.lower() == "nmc811"
        if is_nmc:
            li = ph.site("Li")
            start = {
                "o_z": ph.site("O").xyz[2],
                "li_occupancy": li.occupancy.get("Li", 0.0),
                "ni_li_mixing": li.occupancy.get("Ni", 0.0),
                "biso_tm_A2": ph.site("TM").biso_A2,
                "biso_li_A2": li.biso_A2,
                "biso_o_A2": ph.site("O").biso_A2,
            }
            lims = {"o_z": (0.24, 0.28), "li_occupancy": (0.0, 1.0), "ni_li_mixing": (0.0, 0.3),
                    "biso_tm_A2": (0.0, 5.0), "biso_li_A2": (0.0, 10.0), "biso_o_A2": (0.0, 5.0)}
            for k in NMC_SITE_PARAMS:
                if k in ps.refine:
                    pars.add(f"{p}_{k}", value=start[k], vary=True, min=lims[k][0], max=lims[k][1])
        if "biso_A2" in ps.refine:
            pars.add(f"{p}_biso_A2", value=ps.biso_A2 if ps.biso_A2 is not None else ph.sites[0].biso_A2,
                     vary=True, min=0.0, max=10.0)

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

    def _hold_phase(self, params: lmfit.Parameters, name: str, reset: bool) -> list[str]:
        """Fix the nonlinear parameters of a phase (and of its diffuse components); return their names."""
        out = []
        for pn, par in params.items():
            if pn.startswith(f"{name}_") and par.vary and not par.expr and not self._is_linear(pn):
                if reset and par.user_data:
                    par.set(value=par.user_data["start"])
                par.set(vary=False)
                out.append(pn)
        for d in self.spec.diffuse:
            if d.phase == name:
                for suff in ("fwhm_deg", "offset_deg", "eta"):
                    par = params[f"diff_{d.label}_{suff}"]
                    if par.vary:
                        par.set(vary=False)
                        out.append(par.name)
        return out

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

    def _start_params(self, active: list[str], start: FitResult | None, given: lmfit.Parameters | None = None):
        warnings: list[str] = []
        params = self.initial_params(active)
        if given is not None:
            # the caller's lmfit Parameters: values, vary flags, bounds and expressions
            unknown = [n for n in given if n not in params and not self._inactive_name(n, active)]
            if unknown:
                raise InsituXRDError(f"params: {unknown} are not parameters of this fit (parameters: {', '.join(params)})")
            for n, p in given.items():
                if n in params:
                    params[n].set(value=p.value, vary=p.vary, min=p.min, max=p.max)
            self._apply_limits_constraints(params, active, {}, {n: p.expr for n, p in given.items()
                                                               if p.expr and n in params}, "params")
        if start is not None:
            for n, p in start.params.items():
                if n in params and np.isfinite(p.value) and not params[n].expr:
                    q = params[n]
                    v = float(np.clip(p.value, q.min, q.max))
                    q.set(value=v)
                    if q.expr is None and n.split("_")[-1] in ("a", "b", "c") and n.count("_") == 1:
                        # keep the bound relative to the new start (sequential fits drift by %)
                        ps = self.spec.phase(n.split("_")[0])
                        bnd = ps.lattice_bound_pct / 100.0
                        q.set(min=v * (1 - bnd), max=v * (1 + bnd))
        if params["sh_l"].vary and params["sh_l"].value <= 0:
            params["sh_l"].set(value=0.002)  # see initial_params: zero gradient at SH/L = 0
        for par in params.values():
            par.user_data = {"start": par.value}
        # Degenerate profile/sample combinations.
        prof = set(self.spec.profile.refine)
        for name in active:
            ps = self.spec.phase(name)
            if "mustrain" in ps.refine:
                if ps.mustrain_mix >= 1.0 and "Y" in prof and params["Y"].vary:
                    params["Y"].set(vary=False)
                    warnings.append("Y held: it is degenerate with a Lorentzian microstrain (both ~ tan(theta))")
                if ps.mustrain_mix <= 0.0 and "U" in prof and params["U"].vary:
                    params["U"].set(vary=False)
                    warnings.append("U held: it is degenerate with a Gaussian microstrain (both ~ tan^2(theta))")
            if "size_um" in ps.refine and ps.size_mix >= 1.0 and "X" in prof and params["X"].vary:
                params["X"].set(vary=False)
                warnings.append("X held: it is degenerate with a Lorentzian size (both ~ 1/cos(theta))")
        return params, warnings

    # ----- stages -----------------------------------------------------------------------------
    @staticmethod
    def _is_linear(name: str) -> bool:
        return (name.startswith("bkg_") and (name[4:].isdigit() or name.endswith("_area"))) or name.endswith(
            "_scale") or (name.startswith("diff_") and name.endswith("_area"))

    def _split(self, params: lmfit.Parameters):
        free_nl, free_lin = [], []
        for n, p in params.items():
            p.vary_linear = False  # type: ignore[attr-defined]
            if not p.vary or p.expr:
                continue
            if self._is_linear(n):
                free_lin.append(n)
                p.vary_linear = True  # type: ignore[attr-defined]
            else:
                free_nl.append(n)
        return free_nl, free_lin

    def _nonlinear(self, prob: _Problem, free: list[str], lebail: bool, max_nfev: int, ftol: float = 1e-7):
        params = prob.params
        prob._base_vals = params.valuesdict()
        if not free:
            r, lin, _ = prob.residual(prob._base_vals, lebail)
            return prob._base_vals, lin, r, True, "no nonlinear parameters"
        # the optimiser works on reciprocal sizes (broadening ~ 1/size: nearly linear)
        recip = np.array([_is_reciprocal(n) for n in free])
        x0, lb, ub = _opt_space(params, free, recip)
        span = np.where(np.isfinite(ub - lb), ub - lb, np.abs(x0) + 1.0)
        x0 = np.clip(x0, lb + 1e-9 * span, ub - 1e-9 * span)

        def natural(u: np.ndarray) -> np.ndarray:
            return np.where(recip, 1.0 / np.where(recip, u, 1.0), u)

        def fun(u: np.ndarray) -> np.ndarray:
            return prob.residual(prob.values_from(free, natural(u)), lebail)[0]

        def jac(u: np.ndarray) -> np.ndarray:
            v = natural(u)
            J = prob.projected_jacobian(prob.values_from(free, v), free, lebail)
            return J * np.where(recip, -v * v, 1.0)

        # analytic Jacobian (see _Problem.model_derivatives; lmfit expressions by the chain rule)
        sol = least_squares(fun, x0, jac=jac, bounds=(lb, ub), method="trf",
                            x_scale="jac", max_nfev=max_nfev,
                            ftol=ftol, xtol=1e-8 if ftol <= 1e-7 else 1e-6, gtol=1e-8)
        xs = natural(sol.x)
        vals = prob.values_from(free, xs)
        for n, v in zip(free, xs):
            params[n].value = float(v)
        r, lin, _ = prob.residual(vals, lebail)
        return vals, lin, r, bool(sol.success), str(sol.message)

    def _store_linear(self, params: lmfit.Parameters, lin: dict[str, float]) -> None:
        for n, v in lin.items():
            if n in params:
                params[n].value = float(v)

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

    def _take_gn_step(self, prob: _Problem, free_nl: list[str], gn: np.ndarray, cov: np.ndarray, r: np.ndarray) -> bool:
        """Rietveld mode, end of the fit: the Gauss-Newton step with the exact Jacobian at the
        final point (from the covariance computation). Taken (True) if it moves a nonlinear
        parameter by more than `_FINAL_STEP_ESD` esd and lowers chi^2: the fixed point of the
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
        if not np.any(np.isfinite(z) & (z > _FINAL_STEP_ESD)):
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
        self._store_linear(params, lin1)
        return True

    def _assign_lebail_start(self, prob: _Problem, start: dict) -> set[str]:
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
            # Pawley-polished intensities may be slightly negative; extraction needs >= 0
            pd.areas = np.maximum(pd.areas, 0.0)
        return missing

    def _linear_scale_esds(self, prob: _Problem, vals: dict[str, float]) -> dict[str, tuple[float, float]]:
        """Phase scales and their esds from the linear problem at fixed nonlinear parameters."""
        names, cols, fixed, info = prob.columns(vals, False, structure_scales=True)
        coef, r = prob.solve_linear(cols, fixed)
        A = np.stack([c[prob.fitmask] for c in cols], axis=1) * prob.wf[:, None]
        cov = self._cov_from_jac(A, r, len(names))
        out = {}
        for name in prob.pd:
            i = names.index(f"{name}_scale")
            out[name] = (float(coef[i]), float(np.sqrt(cov[i, i])) if np.isfinite(cov[i, i]) else np.nan)
        return out

    def _extract(self, prob: _Problem, vals: dict[str, float], passes: int) -> None:
        """Le Bail partition of (obs - background) among the reflections (`passes` iterations)."""
        prob._base_vals = vals
        dens: dict = {}  # profile integrals over the fitted points: the same on every pass
        for _ in range(passes):
            names, cols, fixed, info = prob.columns(vals, True)
            coef, _r = prob.solve_linear(cols, fixed)
            lin = dict(zip(names, coef))
            model = fixed.copy()
            for n, c in zip(names, cols):
                model += lin[n] * c
            bkg = np.zeros(len(prob.x))
            for i, c in enumerate(prob.cheb):
                bkg += lin.get(f"bkg_{i}", vals[f"bkg_{i}"]) * c
            for i, _h in enumerate(self.spec.background.humps):
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
                for ib, (idx_pk, idx, prof) in enumerate(blocks):
                    num = np.sum(prof * ratio[idx], axis=1)
                    prof_den = dens.get((name, ib))
                    if prof_den is None or prof_den[0] is not prof:  # profiles changed: recompute
                        prof_den = dens[(name, ib)] = (prof, np.sum(prof * prob.dxf[idx], axis=1))
                    den = prof_den[1]
                    # reflections with less than half of their profile on fitted points (outside
                    # the range or in an excluded region) keep their intensity: tails alone do not
                    # determine it
                    upd = np.where(den > 0.5, num / np.where(den > 0, den, 1.0), 1.0)
                    new[idx_pk] = new[idx_pk] * upd
                pd.areas = new

    def _fraction_step(self, prob: _Problem, vals: dict[str, float], free_nl: Sequence[str] = ()):
        """Le Bail mode: structure-factor scales at the Le Bail lattice/profile (linear solve with
        background and diffuse areas). Their covariance includes the refined nonlinear
        parameters (lattice, widths, zero...: analytic Rietveld-model derivatives at this point),
        whose uncertainty the scales inherit (widths and scales correlate)."""
        names, cols, fixed, info = prob.columns(vals, True, structure_scales=True)
        coef, r = prob.solve_linear(cols, fixed)
        A = np.stack([c[prob.fitmask] for c in cols], axis=1) * prob.wf[:, None]
        free_nl = list(free_nl)
        if free_nl:
            D = prob.total_derivatives(vals, dict(zip(names, coef)), free_nl, lebail=False)
            A = np.concatenate([np.stack([d[prob.fitmask] for d in D], axis=1) * prob.wf[:, None], A], axis=1)
            names = free_nl + list(names)
        cov = self._cov_from_jac(A, r, len(names))
        scales = {}
        for name in prob.pd:
            i = names.index(f"{name}_scale")
            scales[name] = (float(coef[i - len(free_nl)]), float(np.sqrt(cov[i, i])) if np.isfinite(cov[i, i]) else np.nan)
        return scales, cov, names

    def _cov_from_jac(self, J: np.ndarray, r: np.ndarray, nvarys: int, gn_step: bool = False):
        """Covariance of the parameters of the weighted Jacobian J at residual r (scaled by gof and
        the serial-correlation factor); with gn_step also the Gauss-Newton step from this point
        (minimum-norm in near-null directions)."""
        m = len(r)
        dof = max(m - nvarys, 1)
        gof = float(r @ r) / dof
        factor = self._esd_factor(r) ** 2
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

    def _esd_factor(self, r: np.ndarray) -> float:
        if self.spec.esd_correction == "none" or len(r) < 3:
            return 1.0
        dw = float(np.sum(np.diff(r) ** 2) / max(float(r @ r), 1e-300))
        rho = max(0.0, 1.0 - dw / 2.0)
        rho = min(rho, 0.99)
        return float(np.sqrt((1.0 + rho) / (1.0 - rho)))

    def _jacobian(self, prob: _Problem, vals: dict[str, float], free_nl: list[str], lebail: bool, pre=None):
        """Full weighted Jacobian at `vals` (linear parameters at their least-squares values).

        Columns: nonlinear parameters (`_Problem.total_derivatives`), linear parameters, and in Le Bail mode
        one Pawley-type column per group of coincident reflections of a phase (derivative with
        respect to the group's area). Returns (J, r, names, groups) with r the weighted residual
        and groups [(phase, member indices, member shares)] for the Pawley columns.
        """
        if pre is not None:  # ((names, cols, fixed, info), coef, r) of `prob.residual(vals)`
            (names, cols, fixed, info), coef, r = pre
        else:
            names, cols, fixed, info = prob.columns(vals, lebail)
            coef, r = prob.solve_linear(cols, fixed)
        lin = dict(zip(names, coef))
        jac_names: list[str] = list(free_nl)
        jac_cols: list[np.ndarray] = prob.total_derivatives(vals, lin, free_nl, lebail) if free_nl else []
        for n, c in zip(names, cols):
            if n.endswith("_lebail_k"):
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
                # groups of coincident reflections (same position within 1e-3 FWHM)
                order = np.argsort(t)
                new_group = np.ones(len(t), bool)
                new_group[1:] = np.abs(np.diff(t[order])) >= 1e-3 * fwhm[order][1:]
                gid = np.empty(len(t), int)
                gid[order] = np.cumsum(new_group) - 1
                ng = int(gid.max()) + 1
                # a group's column is the profile of its members weighted by their share of the
                # group intensity (equal shares when all are zero): derivative w.r.t. the group area
                areas = pd.areas * k
                tot = np.bincount(gid, weights=areas, minlength=ng)
                cnt = np.bincount(gid, minlength=ng)
                share = np.where(tot[gid] > 0, areas / np.where(tot[gid] > 0, tot[gid], 1.0), 1.0 / cnt[gid])
                if np.all(share == 1.0):  # single-member groups (the usual case): P * 1 = P
                    wts = np.concatenate([prof.ravel() for _k, _i, prof in blocks])
                else:
                    wts = np.concatenate([(prof * share[idx_pk][:, None]).ravel() for idx_pk, _i, prof in blocks])
                # only reflections with most of their profile on fitted points get a column
                fitted = np.zeros(len(t))
                for idx_pk, idx, prof in blocks:
                    fitted[idx_pk] = np.sum(prof * prob.dxf[idx], axis=1)
                inside = np.bincount(gid, weights=fitted, minlength=ng) / np.maximum(cnt, 1)
                pos = np.concatenate([fitpos[idx].ravel() for _k, idx, _p in blocks])
                gent = np.concatenate([np.broadcast_to(gid[idx_pk][:, None], idx.shape).ravel()
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

    def _covariance(self, prob: _Problem, vals: dict[str, float], free_nl: list[str], lebail: bool, pre=None):
        """Covariance (scaled by gof and the serial-correlation factor) of the refined parameters,
        and the Gauss-Newton step of them from `vals` (natural units; the same order)."""
        J, r, jac_names, groups = self._jacobian(prob, vals, free_nl, lebail, pre)
        cov, step = self._cov_from_jac(J, r, J.shape[1], gn_step=True)
        npar = len(jac_names)
        return jac_names, cov[:npar, :npar], len(groups), step[:npar]

    def _polish(self, prob: _Problem, free_nl: list[str], lebail: bool, steps: int = 6) -> tuple[int, bool]:
        """Levenberg-Marquardt steps on the joint problem (nonlinear + linear + reflection
        intensities), from the Le Bail fixed point (Rietveld mode: see the end).

        The Le Bail fixed point is not the least-squares optimum where reflections overlap (the
        partition shares intensity in proportion to the current profile, which biases widths: +3 to
        +6 % in microstrain on simulated H2+H3+Li patterns, more with size and microstrain both
        free); a few damped Gauss-Newton steps from it reach the Pawley optimum. The intensity
        columns carry a fixed ridge (`_PAWLEY_RIDGE`): directions in which overlapped reflections
        trade intensity (correlation ~ 1) stay near the Le Bail partition instead of running off
        into large opposite pairs. The nonlinear parameters get an adaptive Marquardt damping and
        are kept inside their bounds (a parameter at a bound and pushed outwards is held for the
        step). As in Pawley refinement, weak intensities may come out slightly negative.

        Once a step has moved every nonlinear parameter by less than `_CHORD_STEP_ESD` esd, the
        Jacobian is kept for the following steps (chord steps: only the residual is new); they
        creep along the ridge-damped directions, where the Jacobian no longer changes appreciably.
        A chord step that does not lower chi^2 is retried with a fresh Jacobian.

        Rietveld mode (`lebail` False; no intensity columns): the same steps on the nonlinear
        parameters with the linear ones re-solved at each trial point, used from a warm start.
        Returns (accepted steps, converged: the last step moved every parameter < 0.1 esd, the
        residual evaluation ((names, cols, fixed, info), coef, r) at the final point or None).
        """
        params = prob.params
        taken = 0
        lam = 1e-3
        recip = np.array([_is_reciprocal(n) for n in free_nl], dtype=bool)
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
            prob._base_vals = vals
            u0, ulo, uhi = _opt_space(params, free_nl, recip)
            if chord_ok:  # (after an accepted step: lin_state and current are set)
                Jn, norms, N0, ngrp, groups, esd_diag = lin_state
                r = current[2]
                chord = True
            else:
                J, r, names, groups = self._jacobian(prob, vals, free_nl, lebail, pre=current)
                ngrp = len(groups)
                # optimiser space: reciprocal sizes (see _nonlinear)
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
            old_areas = {n: pd.areas.copy() for n, pd in prob.pd.items() if pd.areas is not None}
            accepted = False
            for _attempt in range(1 if chord else 5):
                N = N0.copy()
                N[np.arange(npar - ngrp, npar), np.arange(npar - ngrp, npar)] += _PAWLEY_RIDGE
                N[np.arange(nnl), np.arange(nnl)] += lam
                N[np.diag_indices(npar)] += 1e-12
                N[hold, :] = 0.0
                N[:, hold] = 0.0
                N[hold, hold] = 1.0
                rhs = np.where(hold, 0.0, g)
                try:
                    delta = scipy.linalg.solve(N, rhs, assume_a="pos") / norms
                except (np.linalg.LinAlgError, ValueError):
                    delta = np.linalg.lstsq(N, rhs, rcond=1e-12)[0] / norms
                trial = dict(vals)
                u1 = np.clip(u0 + delta[:nnl], ulo, uhi)
                for j, n in enumerate(free_nl):
                    trial[n] = float(1.0 / u1[j] if recip[j] else u1[j])
                if prob.has_expr:
                    trial = prob.values_from(free_nl, np.array([trial[n] for n in free_nl]))
                for gi, (name, members, share) in enumerate(groups):
                    dg = delta[npar - ngrp + gi]
                    prob.pd[name].areas[members] = old_areas[name][members] + dg * share
                prob._base_vals = trial
                r1, lin1, last_cols = prob.residual(trial, lebail)
                chi1 = float(r1 @ r1)
                if chi1 < chi0:
                    accepted = True
                    for j, n in enumerate(free_nl):
                        params[n].value = trial[n]
                    if lebail:
                        for name, pd in prob.pd.items():
                            pd.areas = pd.areas * max(lin1.pop(f"{name}_lebail_k", 1.0), 0.0)
                    self._store_linear(params, lin1)
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
                break
            taken += 1
            current = (last_cols, [1.0 if n.endswith("_lebail_k") else lin1[n] for n in last_cols[0]], r1)
            # converged when the step moved every nonlinear parameter by < 0.1 of its esd, or
            # lowered chi^2 by < _POLISH_DM_M (relative): further steps only creep along weakly
            # determined directions (broad diffuse widths, intensity pairs held by the ridge)
            if nnl:
                try:
                    if esd_diag is None:
                        cf = scipy.linalg.cho_factor(N0 + np.diag(np.where(np.arange(npar) >= npar - ngrp, _PAWLEY_RIDGE, 1e-12)))
                        esd_diag = np.diag(scipy.linalg.cho_solve(cf, np.eye(npar)[:, :nnl])[:nnl])
                    esd_u = np.sqrt(np.maximum(esd_diag, 0.0) * chi1 / max(len(r1) - npar, 1)) / norms[:nnl]
                    shift = np.abs(u1 - u0)
                    if np.all((shift <= _POLISH_STEP_ESD * esd_u) | hold[:nnl]):
                        converged = True
                        break
                    chord_ok = bool(np.all((shift <= _CHORD_STEP_ESD * esd_u) | hold[:nnl]))
                except (np.linalg.LinAlgError, ValueError):
                    chord_ok = False
            lin_state = (Jn, norms, N0, ngrp, groups, esd_diag)
            # (Rietveld mode, no ridge: steps shrink fast, the esd criterion alone decides)
            if lebail and chi0 - chi1 < _POLISH_DM_M * chi0:
                converged = True
                break
        prob._base_vals = params.valuesdict()
        return taken, converged, current

    @staticmethod
    def _has_site(name: str) -> bool:
        parts = name.split("_", 1)
        return len(parts) == 2 and parts[1] in _SITE_NAMES

    # ----- result -----------------------------------------------------------------------------
    def _result(self, prob: _Problem, out: dict, mode: str, warnings: list[str], elapsed: float) -> FitResult:
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
        for i, _h in enumerate(self.spec.background.humps):
            p = f"bkg_hump{i}"
            background += vals[f"{p}_area"] * pseudo_voigt(prob.x, vals[f"{p}_center_deg"], vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
        rp = float(np.sum(np.abs(yo - calc[prob.fitmask])) / np.sum(np.abs(yo)))
        rexp = float(np.sqrt(dof / sw_yo2))
        dw = float(np.sum(np.diff(r) ** 2) / max(chi2, 1e-300))
        factor = self._esd_factor(r)
        phase_curves: dict[str, np.ndarray] = {}
        peaks: dict[str, PeakTable] = {}
        lo, hi = float(prob.x.min()), float(prob.x.max())
        for name, pd in prob.pd.items():
            blocks, t, fwhm, eta, tthb, d = info[name]
            if lebail:
                areas = pd.areas
                fsq = pd.fsq
            else:
                areas = vals[f"{name}_scale"] * prob.structure_areas(pd, tthb)
                fsq = pd.fsq
            phase_curves[name] = prob.curve(blocks, areas)[prob.fitmask]
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
            if p.vary or n in out["held"] or (lebail and n.endswith("_scale") and self.spec.phase_fraction_step):
                values[n] = float(p.value)
                esds[n] = float(esd_by.get(n, np.nan))
        # constrained (expression) parameters: value and esd propagated through the expression
        deps = [n for n, p in params.items() if p.expr]
        if deps:
            free = [n for n in cov_names if not self._is_linear(n) and n in params and params[n].vary]
            g = np.zeros((len(deps), len(cov_names)))
            for n in free:
                j = cov_names.index(n)
                v0 = params[n].value
                h = prob.fd_step(n, v0)
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
        if all(f"{n}_scale" in values for n in prob.pd):
            phase_fraction = self._fractions(prob, vals, values, esds, out, lebail, cov_names, cov)
        # volumes
        for name, pd in prob.pd.items():
            ph = pd.phase
            cell = _cell_from(ph, vals)
            vol = Phase(name, ph.space_group, cell, [], 1).volume_A3
            grads = []
            idx = []
            for ln in _lattice_names(ph):
                n = f"{name}_{ln}"
                if n in cov_names:
                    v2 = dict(vals)
                    v2[n] = vals[n] * (1 + 1e-7)
                    vol2 = Phase(name, ph.space_group, _cell_from(ph, v2), [], 1).volume_A3
                    grads.append((vol2 - vol) / (vals[n] * 1e-7))
                    idx.append(cov_names.index(n))
            values[f"{name}_volume_A3"] = vol
            if idx:
                g = np.array(grads)
                sub = cov[np.ix_(idx, idx)]
                esds[f"{name}_volume_A3"] = float(np.sqrt(max(g @ sub @ g, 0.0)))
            else:
                esds[f"{name}_volume_A3"] = np.nan
        at_bounds = []
        for n in cov_names:
            p = params[n]
            if self._is_linear(n):
                continue
            span = (p.max - p.min) if np.isfinite(p.max - p.min) else max(abs(p.value), 1.0)
            if (np.isfinite(p.min) and p.value - p.min < 1e-6 * span) or (np.isfinite(p.max) and p.max - p.value < 1e-6 * span):
                at_bounds.append(n)
        if at_bounds:
            warnings = warnings + [f"parameters at a bound: {at_bounds}"]
        return FitResult(
            params=params, values=values, esds=esds, rwp=rwp, rp=rp, rexp=rexp, gof=gof, durbin_watson=dw,
            chi2=chi2, nobs=nobs, nvarys=nvarys, success=bool(out["success"]), message=out["message"],
            at_bounds=at_bounds, phase_fraction=phase_fraction,
            correlation=corr, correlation_names=list(cov_names),
            two_theta_deg=prob.xf.copy(), obs=prob.yf.copy(), sigma=prob.sig[prob.fitmask].copy(),
            calc=calc[prob.fitmask], background=background[prob.fitmask], phase_curves=phase_curves,
            diffuse_curves=diffuse_curves, peaks=peaks, mode=mode, wavelength_A=self.wavelength_A,
            active_phases=list(prob.active), esd_factor=factor, elapsed_s=elapsed, warnings=warnings,
            lebail_areas=out["lebail_areas"],
        )

    def _fractions(self, prob, vals, values, esds, out, lebail, cov_names, cov):
        names = list(prob.pd)
        zmv = {}
        for n in names:
            ph = self.structure(n, vals)
            zmv[n] = self.cell_mass(n, ph, prob._site_key(n, vals)) * Phase(n, ph.space_group, _cell_from(ph, vals), [], 1).volume_A3
        s = np.array([values[f"{n}_scale"] for n in names])
        k = np.array([zmv[n] for n in names])
        wts = s * k
        tot = wts.sum()
        frac = wts / tot if tot != 0 else np.full(len(names), np.nan)
        # Jacobian dW_i/dS_j = k_j (delta_ij tot - S_i k_i) / tot^2
        Jw = (np.diag(k) * tot - np.outer(wts, k)) / tot**2 if tot != 0 else np.full((len(names), len(names)), np.nan)
        if lebail:
            fnames, fcov = out.get("frac_cov", ([], np.zeros((0, 0))))
            idx = [fnames.index(f"{n}_scale") for n in names]
            C = fcov[np.ix_(idx, idx)]
        else:
            idx = [cov_names.index(f"{n}_scale") if f"{n}_scale" in cov_names else -1 for n in names]
            C = np.zeros((len(names), len(names)))
            for a_, ia in enumerate(idx):
                for b_, ib in enumerate(idx):
                    if ia >= 0 and ib >= 0:
                        C[a_, b_] = cov[ia, ib]
        fc = Jw @ C @ Jw.T
        return {n: (float(frac[i]), float(np.sqrt(max(fc[i, i], 0.0))) if np.isfinite(fc[i, i]) else np.nan)
                for i, n in enumerate(names)}


def _nmc_defaults(base: Phase, kw: dict[str, float]) -> dict[str, float]:
    """nmc811 template kwargs reproducing `base` except for those overridden in `kw`."""
    li = base.site("Li")
    cur = {
        "o_z": base.site("O").xyz[2],
        "li_occupancy": li.occupancy.get("Li", 0.0),
        "ni_li_mixing": li.occupancy.get("Ni", 0.0),
        "biso_tm_A2": base.site("TM").biso_A2,
        "biso_li_A2": li.biso_A2,
        "biso_o_A2": base.site("O").biso_A2,
    }
    cur.update(kw)
    return cur
