"""The model of one fit: its data on the grid, and the calculated pattern for parameter values.

`Problem` holds the data of one fit (grid, weights, fitted points), the lmfit Parameters, and one
`PhaseData` per active phase (reflections, |F|^2, Le Bail intensities, per-phase caches), and
evaluates the model: positions and widths of a phase's reflections (`peak_params`), their
profiles (`phase_blocks`, through its `GridProfiles`: insitu_xrd.fit.windows), the linear columns
(background, humps, phase curves, diffuse peaks: `columns`), their weighted least-squares
coefficients (`solve_linear`: the linear parameters are eliminated by variable projection) and
the weighted residual (`residual`). Its collaborators: the refinement's `StructureCache`
(structures, reflections and |F|^2 of the phases) and a `GridProfiles`. Derivatives of this model
are `insitu_xrd.fit.derivatives.ModelDerivatives` (built on a Problem).

Caches, memoised by their inputs (results identical to recomputing them): a phase's profiles
while its positions and widths do not change, its geometry per cell, its widths per (cell,
profile, sample), single-peak columns and diffuse centres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import lmfit
import numpy as np

from insitu_xrd.core.absorption import bragg_brentano_shift_deg
from insitu_xrd.core.crystal import Phase, parse_hkl_label, reciprocal_metric
from insitu_xrd.core.pattern import Instrument, d_from_two_theta_deg, intensity_factor, two_theta_deg_from_d
from insitu_xrd.core.profiles import peak_fwhm_eta, pseudo_voigt
from insitu_xrd.core.texture import invariant_harmonics, laue_equivalents, march_dollase_factor, sh_texture_factor
from insitu_xrd.fit.linear import is_nonnegative, nonnegative_lstsq
from insitu_xrd.fit.phase_model import cell_from_values
from insitu_xrd.fit.spec import DiffuseSpec, PhaseSpec, RefinementSpec
from insitu_xrd.fit.structures import StructureCache
from insitu_xrd.fit.widths import anisotropy_key, sample_widths, width_args
from insitu_xrd.fit.windows import GridProfiles

__all__ = ["PhaseData", "Problem", "default_phase_spec"]


@dataclass
class PhaseData:
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
    geo: dict = field(default_factory=dict)  # cell -> (d, Bragg 2theta, its sin and cos) (see `Problem.peak_params`)
    widths: dict = field(default_factory=dict)  # (cell, profile, sample) -> (FWHM, eta)
    equivalents: np.ndarray | None = None  # Laue-equivalent hkl of every reflection (texture)
    sh_bases: dict | None = None  # l -> invariant harmonics (spherical-harmonics texture)


def default_phase_spec(name: str) -> PhaseSpec:
    """The spec of a phase the recipe does not name (a plain template phase)."""
    return PhaseSpec(name=name, template="ni")


class Problem:
    """One fit: data on the grid, the fit's Parameters and the vectorised model.

    spec: the refinement section (background, humps, diffuse components, phases); structures:
    the refinement's `StructureCache`; wavelength_A; distance_mm: sample-detector distance (sample
    displacement); x, y, sig: the sorted pattern (deg, counts, esds), fitmask: fitted points;
    active: phase names; params: lmfit Parameters (their ``vary_linear`` set by
    `insitu_xrd.fit.parameters.split_free`). ``base_vals``: the parameter values that
    `values_from` completes (set by the stage that moves the parameters). instrument: its
    geometry, goniometer radius and polarization (default: debye_scherrer, none applied); the
    refinable absorption and transparency values come from the parameters. kalpha2: (Ka2
    wavelength (A), Ka2/Ka1 ratio) of a laboratory doublet: every reflection is then two peaks,
    the per-peak arrays of `peak_params` and the profile blocks are [Ka1 peaks, Ka2 peaks] (2n),
    the per-reflection ones (intensities, |F|^2) stay n (`peak_areas`, `fold`)."""

    def __init__(self, spec: RefinementSpec, structures: StructureCache, wavelength_A: float, distance_mm: float,
                 x: np.ndarray, y: np.ndarray, sig: np.ndarray, fitmask: np.ndarray,
                 active: list[str], params: lmfit.Parameters, instrument: Instrument | None = None,
                 kalpha2: tuple[float, float] | None = None):
        geometry = instrument if instrument is not None else Instrument(wavelength_A)
        self.geometry = geometry.geometry
        self.goniometer_radius_mm = geometry.goniometer_radius_mm
        self.polarization = geometry.polarization
        self.spec = spec
        self.structures = structures
        self.lam = wavelength_A
        # Ka doublet: (Ka2 wavelength, ratio); the per-peak arrays are then [Ka1 peaks, Ka2 peaks]
        self.lam2, self.ratio2 = kalpha2 if kalpha2 is not None else (None, 0.0)
        self.x, self.y, self.sig = x, y, sig
        self.fitmask = fitmask
        self.w = 1.0 / sig
        self.xf, self.yf, self.wf = x[fitmask], y[fitmask], self.w[fitmask]
        self.profiles = GridProfiles(x)
        dx = np.gradient(x)
        self.dxf = np.where(fitmask, dx, 0.0)
        self.active = active
        self.params = params
        self.distance_mm = distance_mm
        lo, hi = float(x.min()), float(x.max())
        t = (2.0 * x - (lo + hi)) / (hi - lo)
        nb = spec.background.chebyshev
        self.cheb = [np.polynomial.chebyshev.chebval(t, np.eye(nb)[i]) for i in range(nb)]
        self.humps = spec.background.humps
        self.pd: dict[str, PhaseData] = {}
        for name in active:
            self.pd[name] = self._phase_data(name, params)
        self.diffuse = [d for d in spec.diffuse if d.phase in active]
        self.diffuse_hkl = {d.label: np.array([parse_hkl_label(r) for r in d.reflections]) for d in self.diffuse}
        self.has_expr = any(p.expr for p in params.values())
        self.base_vals: dict[str, float] = {}
        # the signed linear parameters are held >= 0 in every solve (`solve_linear`): set by
        # the stages once a fit ends with one negative (insitu_xrd.fit.stages)
        self.nonnegative = False
        self._pv_cache: dict = {}
        self._center_cache: dict = {}

    # ----- phases -----------------------------------------------------------------------------
    def _phase_data(self, name: str, params: lmfit.Parameters) -> PhaseData:
        vals = params.valuesdict()
        phase = self.structures.structure(name, vals)
        names = [p.name for p in self.spec.phases]
        spec = self.spec.phase(name) if name in names else default_phase_spec(name)
        cell = cell_from_values(phase, vals)
        bound = spec.lattice_bound_pct / 100.0
        tmax = float(self.x.max()) + 1.0
        dmin = float(d_from_two_theta_deg(min(tmax, 179.0), self.lam)) * (1.0 - 1.5 * bound)
        refl = self.structures.reflections(name, phase, cell, dmin)
        fsq = self.structures.fsq(name, phase, refl.hkl, cell, self.structures.site_key(name, vals))
        pd = PhaseData(name, spec, phase, refl.hkl, refl.multiplicity, fsq, self._fsq_key(name, phase, vals))
        h = refl.hkl.astype(float)
        pd.hh = np.stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2],
                          2 * h[:, 1] * h[:, 2]], axis=1)
        return pd

    def _fsq_key(self, name: str, phase: Phase, vals: dict[str, float]) -> tuple:
        """What |F|^2 depends on: the site parameters and, through the form factors and
        Debye-Waller terms, the cell (to 1e-4 A, as `StructureCache.fsq` caches it)."""
        return self.structures.site_key(name, vals), tuple(np.round(cell_from_values(phase, vals), 4))

    def update_fsq(self, vals: dict[str, float]) -> None:
        """Recompute |F|^2 where the site parameters or the cell changed (`structures.fsq`)."""
        for name, pd in self.pd.items():
            key = self._fsq_key(name, pd.phase, vals)
            if key == pd.fsq_key:
                continue
            if key[0] != pd.fsq_key[0]:  # new site parameters: new structure
                pd.phase = self.structures.structure(name, vals)
                pd.cache.clear()
            pd.fsq = self.structures.fsq(name, pd.phase, pd.hkl, cell_from_values(pd.phase, vals), key[0])
            pd.fsq_key = key

    def shift(self, tthb: np.ndarray, vals: dict[str, float],
              sin_cos: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Zero and sample-displacement shift (deg) of Bragg angles ``tthb``; ``sin_cos``: their
        sin and cos when already known (see `insitu_xrd.core.pattern.Instrument.position_shift_deg`)."""
        if self.geometry == "bragg_brentano":
            return vals.get("zero_deg", 0.0) + bragg_brentano_shift_deg(
                tthb, vals.get("displacement_um", 0.0), vals.get("transparency_mm", 0.0), self.goniometer_radius_mm)
        if sin_cos is None:
            tth = np.radians(tthb)
            sin_cos = (np.sin(tth), np.cos(tth))
        disp = -(vals.get("displacement_um", 0.0) * 1e-3 / self.distance_mm) * sin_cos[0] * sin_cos[1]
        return vals.get("zero_deg", 0.0) + np.degrees(disp)

    def peak_params(self, pd: PhaseData, vals: dict[str, float]):
        """Positions t (deg), FWHM (deg), eta and Bragg angles of a phase's reflections."""
        p = pd.name
        cell = cell_from_values(pd.phase, vals)
        # memoised by their inputs (the finite differences of `model_derivatives` change one
        # parameter at a time: most perturbations leave the cell or the widths unchanged)
        geo = pd.geo.get(cell)
        if geo is None:
            g = reciprocal_metric(cell)
            d = 1.0 / np.sqrt(pd.hh @ np.array([g[0, 0], g[1, 1], g[2, 2], g[0, 1], g[0, 2], g[1, 2]]))
            tthb = 2.0 * np.degrees(np.arcsin(np.minimum(self.lam / (2.0 * d), 1.0)))
            if self.lam2 is not None:  # the Ka2 copies from the same d (none beyond 180 deg: NaN)
                d = np.concatenate([d, d])
                tthb = np.concatenate([tthb, two_theta_deg_from_d(d[len(tthb):], self.lam2)])
            if len(pd.geo) > 64:
                pd.geo.clear()
            tth = np.radians(tthb)
            geo = pd.geo[cell] = (d, tthb, np.sin(tth), np.cos(tth))
        d, tthb, sin_t, cos_t = geo
        t = tthb + self.shift(tthb, vals, (sin_t, cos_t))
        wkey = (cell, width_args(p, vals), anisotropy_key(pd, vals))
        widths = pd.widths.get(wkey)
        if widths is None:
            if len(pd.widths) > 64:
                pd.widths.clear()
            widths = pd.widths[wkey] = self.fwhm_eta(pd, tthb, sample_widths(pd, vals, cell, d[:len(pd.hkl)]))
        fwhm, eta = widths
        return t, fwhm, eta, tthb, d

    def fwhm_eta(self, pd: PhaseData, tthb: np.ndarray, wargs: tuple) -> tuple[np.ndarray, np.ndarray]:
        """FWHM (deg) and eta of a phase's peaks at Bragg angles ``tthb`` (per peak) for the
        `sample_widths` arguments ``wargs`` (per reflection): each peak at its own wavelength."""
        if self.lam2 is None:
            return peak_fwhm_eta(tthb, self.lam, *wargs)
        n = len(pd.hkl)
        f1, e1 = peak_fwhm_eta(tthb[:n], self.lam, *wargs)
        with np.errstate(invalid="ignore"):
            f2, e2 = peak_fwhm_eta(tthb[n:], self.lam2, *wargs)
        return np.concatenate([f1, f2]), np.concatenate([e1, e2])

    def peak_areas(self, areas: np.ndarray) -> np.ndarray:
        """Per-peak areas from per-reflection ones (rows): with a Ka doublet the Ka2 copy is the
        Ka1 area times the ratio (one intensity shared by the pair)."""
        if self.lam2 is None:
            return areas
        return np.concatenate([areas, self.ratio2 * areas])

    def fold(self, per_peak: np.ndarray) -> np.ndarray:
        """The transpose of `peak_areas`: per-reflection sums Ka1 + ratio x Ka2 of per-peak values."""
        if self.lam2 is None:
            return per_peak
        n = len(per_peak) // 2
        return per_peak[:n] + self.ratio2 * per_peak[n:]

    def phase_blocks(self, pd: PhaseData, vals: dict[str, float]):
        t, fwhm, eta, tthb, d = self.peak_params(pd, vals)
        sh_l = max(float(vals.get("sh_l", 0.0)), 0.0)
        key = (t.tobytes(), fwhm.tobytes(), eta.tobytes(), sh_l)
        hit = pd.cache.get(key)
        if hit is None:
            hit = (self.profiles.blocks(t, fwhm, eta, sh_l), t, fwhm, eta, tthb, d)
            if len(pd.cache) > 6:
                pd.cache.pop(next(iter(pd.cache)))
            pd.cache[key] = hit
        return hit

    def curve(self, blocks, areas: np.ndarray) -> np.ndarray:
        y = np.zeros(len(self.x))
        for idx_pk, idx, prof in blocks:
            y += np.bincount(idx.ravel(), weights=(prof * areas[idx_pk, None]).ravel(), minlength=len(self.x))
        return y

    def intensity_factor(self, tthb: np.ndarray, vals: dict[str, float]) -> np.ndarray:
        """Lorentz x polarization x absorption at Bragg angles ``tthb`` (`core.pattern.intensity_factor`)."""
        return intensity_factor(tthb, self.geometry, vals.get("absorption_muR", 0.0), vals.get("absorption_mut", 0.0),
                                self.polarization)

    def texture(self, pd: PhaseData, vals: dict[str, float]) -> np.ndarray | None:
        """Texture factor of a phase's reflections (March-Dollase or spherical harmonics; None: no
        texture model)."""
        tex = pd.spec.texture
        if tex is None:
            return None
        if tex.spherical_harmonics is not None:
            gs = reciprocal_metric(cell_from_values(pd.phase, vals))
            if pd.sh_bases is None:
                pd.sh_bases = {l: invariant_harmonics(pd.phase.spacegroup, gs, l)
                               for l in range(2, tex.spherical_harmonics.order + 1, 2)}
            coeffs = {l: np.array([vals[f"{pd.name}_sh_C{l}_{j + 1}"] for j in range(b.shape[1])])
                      for l, b in pd.sh_bases.items()}
            return sh_texture_factor(pd.hkl, gs, pd.sh_bases, coeffs)
        if pd.equivalents is None:
            pd.equivalents = laue_equivalents(pd.phase.spacegroup, pd.hkl)
        gs = reciprocal_metric(cell_from_values(pd.phase, vals))
        return march_dollase_factor(pd.equivalents, tex.march_dollase.axis, vals[f"{pd.name}_md_ratio"], gs)

    def structure_areas(self, pd: PhaseData, tthb: np.ndarray, vals: dict[str, float]) -> np.ndarray:
        """m |F|^2 x Lorentz x polarization x absorption (x texture) of a phase's reflections at
        unit scale, the angle factors at the Ka1 angle (a Ka2 copy shares the intensity: `peak_areas`)."""
        areas = pd.mult * pd.fsq * self.intensity_factor(tthb[:len(pd.mult)], vals)
        tex = self.texture(pd, vals)
        return areas if tex is None else areas * tex

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
        cell = cell_from_values(pd.phase, vals)
        key = (d.label, cell, vals.get("zero_deg", 0.0), vals.get("displacement_um", 0.0), vals.get("transparency_mm", 0.0))
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
        for i, _h in enumerate(self.humps):
            p = f"bkg_hump{i}"
            col = self.pv_column(vals[f"{p}_center_deg"], vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
            add(f"{p}_area", col, pars[f"{p}_area"].vary_linear)  # type: ignore[attr-defined]
        info = {}
        for name, pd in self.pd.items():
            blocks, t, fwhm, eta, tthb, d = self.phase_blocks(pd, vals)
            info[name] = (blocks, t, fwhm, eta, tthb, d)
            if lebail and not structure_scales:
                areas = pd.areas if pd.areas is not None else np.zeros(len(pd.hkl))
                add(f"{name}_lebail_k", self.curve(blocks, self.peak_areas(areas)), True)
            else:
                col = self.curve(blocks, self.peak_areas(self.structure_areas(pd, tthb, vals)))
                free = structure_scales or pars[f"{name}_scale"].vary_linear  # type: ignore[attr-defined]
                add(f"{name}_scale", col, free)
        for dspec in self.diffuse:
            p = f"diff_{dspec.label}"
            col = self.pv_column(self.diffuse_center(dspec, vals), vals[f"{p}_fwhm_deg"], vals[f"{p}_eta"])
            add(f"{p}_area", col, pars[f"{p}_area"].vary_linear)  # type: ignore[attr-defined]
        return names, cols, fixed, info

    # ----- linear least squares ---------------------------------------------------------------
    def solve_linear(self, cols: list[np.ndarray], fixed: np.ndarray, names: Sequence[str] = (),
                     signed: bool | None = None):
        """Weighted least-squares coefficients of the linear columns ``cols`` (the model minus
        ``fixed``) and the weighted residual. ``names``: the columns' parameter names; with
        ``signed`` (default: this problem's ``nonnegative``) those with a physical sign
        (`is_nonnegative`: scales, hump and diffuse areas, Le Bail multipliers) are constrained
        to >= 0. The unconstrained solution is returned whenever it is feasible (identical to a
        solve without the constraint); otherwise the bounded problem is solved
        (`nonnegative_lstsq`) and a coefficient held at its bound is exactly 0 (`at_zero`)."""
        b = (self.yf - fixed[self.fitmask]) * self.wf
        if not cols:
            return np.zeros(0), b
        A = np.stack([c[self.fitmask] for c in cols], axis=1) * self.wf[:, None]
        norms = np.sqrt(np.sum(A * A, axis=0))
        good = norms > 0
        coef = np.zeros(A.shape[1])
        if good.any():
            An = A[:, good] / norms[good]
            sol = np.linalg.lstsq(An, b, rcond=None)[0]
            if names and (self.nonnegative if signed is None else signed):
                sign = np.array([is_nonnegative(n) for n in names], dtype=bool)[good]
                if np.any(sign & (sol < 0)):
                    sol = nonnegative_lstsq(An, b, sign)
            coef[good] = sol / norms[good]
        return coef, b - A @ coef

    def at_zero(self, names: Sequence[str], cols: list[np.ndarray], coef: Sequence[float]) -> list[bool]:
        """Per linear column: held at its bound 0 by `solve_linear` (a parameter with a physical
        sign, coefficient exactly 0, column not zero on the fitted points)."""
        return [is_nonnegative(n) and float(c) == 0.0 and bool(np.any(col[self.fitmask] != 0.0))
                for n, col, c in zip(names, cols, coef)]

    def residual(self, vals: dict[str, float], lebail: bool):
        names, cols, fixed, info = self.columns(vals, lebail)
        coef, r = self.solve_linear(cols, fixed, names)
        return r, dict(zip(names, coef)), (names, cols, fixed, info)

    # ----- parameter vectors ------------------------------------------------------------------
    def values_from(self, free: list[str], xvec: np.ndarray) -> dict[str, float]:
        if self.has_expr:
            for n, v in zip(free, xvec):
                self.params[n].value = float(v)
            self.params.update_constraints()
            return self.params.valuesdict()
        vals = self.base_vals.copy()
        vals.update(zip(free, (float(v) for v in xvec)))
        return vals
