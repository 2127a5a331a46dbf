"""The fit's parameters: names, start values, bounds, constraints, and which ones are free.

The parameter model of a fit is the phases' `PhaseModel`s (lattice parameters by crystal system,
site parameters with their symmetry constraints: `insitu_xrd.fit.phase_model`) plus the profile,
background, sample and diffuse parameters of the spec. `ParameterBuilder` turns it into the lmfit
Parameters of a fit: from the spec (`initial_params`), a previous result and the caller's
Parameters (`start_params`), with the recipe's bounds and lmfit expressions
(`apply_limits_constraints`); it holds a phase's nonlinear parameters (`hold_phase`).

Plain functions: what a parameter name means (`PROFILE_NAMES`, `is_linear`: solved by linear least
squares at every step), the linear/nonlinear split of the free parameters (`split_free`), and the
optimiser space (crystallite sizes are moved as 1/size, broadening ~ 1/size: `is_reciprocal`,
`optimiser_space`).
"""

from __future__ import annotations

import re
from typing import Sequence

import lmfit
import numpy as np

from insitu_xrd.core.broadening import isotropic_stephens
from insitu_xrd.core.crystal import reciprocal_metric
from insitu_xrd.core.texture import sh_texture_terms
from insitu_xrd.core.crystal import Phase
from insitu_xrd.core.pattern import Instrument
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.phase_model import PhaseModel
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import PhaseSpec, RefinementSpec

__all__ = ["PROFILE_NAMES", "GEOMETRY_NAMES", "ParameterBuilder", "is_linear", "is_reciprocal", "optimiser_space", "split_free",
           "store_linear", "held_phases"]

PROFILE_NAMES = ("U", "V", "W", "X", "Y", "zero_deg", "displacement_um", "sh_l")
#: Parameters of the geometry (absorption, transparency), present in a fit only where its geometry has
#: them and the recipe gives or refines them: name -> (geometry, lower bound, upper bound).
GEOMETRY_NAMES = {"absorption_muR": ("debye_scherrer", 0.0, 10.0), "absorption_mut": ("transmission", 0.0, 10.0),
                  "transparency_mm": ("bragg_brentano", 0.0, 10.0)}


def is_linear(name: str) -> bool:
    """Parameters solved by weighted linear least squares at every step (variable projection):
    background coefficients, hump and diffuse areas, phase scales."""
    return (name.startswith("bkg_") and (name[4:].isdigit() or name.endswith("_area"))) or name.endswith(
        "_scale") or (name.startswith("diff_") and name.endswith("_area"))


def is_reciprocal(name: str) -> bool:
    """Parameters the optimisers move as 1/value (crystallite size: broadening ~ 1/size)."""
    return name.endswith(("_size_um", "_size_axial_um"))


def optimiser_space(params: lmfit.Parameters, free: Sequence[str], recip: np.ndarray):
    """Start values and bounds of the free parameters in optimiser space (1/value where recip)."""
    x0 = np.array([params[n].value for n in free], dtype=float)
    lb = np.array([params[n].min for n in free], dtype=float)
    ub = np.array([params[n].max for n in free], dtype=float)
    with np.errstate(divide="ignore"):
        x0 = np.where(recip, 1.0 / np.where(recip, x0, 1.0), x0)
        lb, ub = (np.where(recip, 1.0 / np.where(recip, ub, 1.0), lb),
                  np.where(recip, 1.0 / np.where(recip, lb, 1.0), ub))
    return x0, lb, ub


def held_phases(held: list[str]) -> set[str]:
    """Phases of the held parameter names ``held``."""
    return {n.split("_", 1)[0] for n in held}


def split_free(params: lmfit.Parameters) -> tuple[list[str], list[str]]:
    """(free nonlinear, free linear) parameter names; marks each parameter's ``vary_linear``
    (free and linear: a column of the linear least-squares solve)."""
    free_nl, free_lin = [], []
    for n, p in params.items():
        p.vary_linear = False  # type: ignore[attr-defined]
        if not p.vary or p.expr:
            continue
        if is_linear(n):
            free_lin.append(n)
            p.vary_linear = True  # type: ignore[attr-defined]
        else:
            free_nl.append(n)
    return free_nl, free_lin


def store_linear(params: lmfit.Parameters, lin: dict[str, float]) -> None:
    """Set the solved linear parameters ``lin`` (names not in ``params`` are ignored)."""
    for n, v in lin.items():
        if n in params:
            params[n].value = float(v)


class ParameterBuilder:
    """The lmfit Parameters of a fit from the spec (see the module docstring).

    spec: the recipe's refinement section; instrument: the start profile (spec values already
    applied); phases/models: the start structures and `PhaseModel`s of every spec phase."""

    def __init__(self, spec: RefinementSpec, instrument: Instrument, phases: dict[str, Phase],
                 models: dict[str, PhaseModel]):
        self.spec = spec
        self.instrument = instrument
        self.phases = phases
        self.models = models
        self.spec_names = [p.name for p in spec.phases]

    # ----- parameters -------------------------------------------------------------------------
    def initial_params(self, active: Sequence[str] | None = None) -> lmfit.Parameters:
        """lmfit Parameters from the spec (all phases, or only `active`)."""
        spec = self.spec
        names = list(active) if active is not None else [p.name for p in spec.phases if not p.optional]
        pars = lmfit.Parameters()
        inst = self.instrument
        prof_refine = set(spec.profile.refine)
        for n in PROFILE_NAMES:
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
        for n, (geometry, lo, hi) in GEOMETRY_NAMES.items():
            if spec.profile.geometry == geometry and (getattr(spec.profile, n) is not None or n in prof_refine):
                pars.add(n, value=float(getattr(inst, n)), vary=n in prof_refine, min=lo, max=hi)
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
            self.add_phase_params(pars, ps)
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
        self.apply_limits_constraints(pars, names, spec.limits, spec.constraints, "refinement")
        return pars

    def inactive_name(self, name: str, active: Sequence[str]) -> bool:
        """True when `name` belongs to a phase of the spec that is not active in this fit."""
        inactive = [p for p in self.spec_names if p not in active]
        return any(name.startswith(f"{p}_") or name.startswith(f"diff_{p}_") for p in inactive)

    def apply_limits_constraints(self, pars: lmfit.Parameters, active: Sequence[str],
                                  limits: dict, constraints: dict, where: str) -> None:
        """Bounds and lmfit expressions on nonlinear parameters (skipped for inactive phases)."""
        for name, (lo, hi) in limits.items():
            if name not in pars:
                if self.inactive_name(name, active):
                    continue
                raise InsituXRDError(f"{where}.limits.{name}: no such parameter in this fit "
                                     f"(parameters: {', '.join(pars)})")
            pars[name].set(min=-np.inf if lo is None else float(lo), max=np.inf if hi is None else float(hi))
        for name, expr in constraints.items():
            if name not in pars:
                if self.inactive_name(name, active):
                    continue
                raise InsituXRDError(f"{where}.constraints.{name}: no such parameter in this fit "
                                     f"(parameters: {', '.join(pars)})")
            used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr))
            linear = sorted(n for n in used | {name} if n in pars and is_linear(n))
            if linear:
                raise InsituXRDError(
                    f"{where}.constraints.{name}: {linear} are linear parameters (scales, background, areas), solved "
                    "linearly at every step; they cannot be constrained or used in constraints")
            missing = sorted(n for n in used if n not in pars and self.inactive_name(n, active))
            if missing:
                raise InsituXRDError(f"{where}.constraints.{name}: {expr!r} uses {missing}, whose phase is not active")
            try:
                pars[name].set(expr=expr)
                pars.update_constraints()
            except Exception as exc:  # lmfit/asteval: NameError, SyntaxError...
                raise InsituXRDError(f"{where}.constraints.{name}: expression {expr!r} cannot be evaluated ({exc})") from None
            if not np.isfinite(pars[name].value):
                raise InsituXRDError(f"{where}.constraints.{name}: expression {expr!r} gives {pars[name].value}")

    def add_phase_params(self, pars: lmfit.Parameters, ps: PhaseSpec) -> None:
        ph = self.phases[ps.name]
        p = ps.name
        bound = ps.lattice_bound_pct / 100.0
        model = self.models[ps.name]
        for ln in model.lattice_names:
            v = ph.cell[("a", "b", "c", "alpha", "beta", "gamma").index(ln)]
            # angles get the same relative range as the lengths (3 % of 110 deg: 3.3 deg)
            pars.add(f"{p}_{ln}", value=v, vary=ln in ps.refine, min=v * (1 - bound), max=v * (1 + bound))
        pars.add(f"{p}_scale", value=ps.scale or 1.0, vary="scale" in ps.refine)
        generalized = ps.mustrain_model == "generalized"
        # generalized (Stephens): the S_HKL terms replace the isotropic value (refined by
        # "mustrain_S", or by "mustrain" as the default refine lists say)
        if not generalized:  # (no single microstrain: reported NaN, not a start value)
            pars.add(f"{p}_mustrain", value=ps.mustrain, vary="mustrain" in ps.refine, min=0.0, max=3e4)
        if ps.mustrain_model == "uniaxial":
            pars.add(f"{p}_mustrain_axial", value=ps.mustrain_axial if ps.mustrain_axial is not None else ps.mustrain,
                     vary="mustrain_axial" in ps.refine, min=0.0, max=3e4)
        elif generalized:
            start = isotropic_stephens(ph.spacegroup, ph.cell, ps.mustrain)
            unknown = sorted(set(ps.mustrain_S) - set(start))
            if unknown:
                raise InsituXRDError(f"phase {p}: mustrain_S names {unknown} are not terms of its Laue class "
                                     f"({', '.join(start)})")
            free = "mustrain_S" in ps.refine or "mustrain" in ps.refine
            for name, value in start.items():
                pars.add(f"{p}_mustrain_{name}", value=float(ps.mustrain_S.get(name, value)), vary=free)
        if ps.size_um is not None or "size_um" in ps.refine or ps.size_model == "uniaxial":
            pars.add(f"{p}_size_um", value=ps.size_um or 1.0, vary="size_um" in ps.refine, min=1e-3, max=1e3)
        if ps.size_model == "uniaxial":
            axial = ps.size_axial_um if ps.size_axial_um is not None else (ps.size_um or 1.0)
            pars.add(f"{p}_size_axial_um", value=axial, vary="size_axial_um" in ps.refine, min=1e-3, max=1e3)
        if ps.texture is not None and ps.texture.march_dollase is not None:
            pars.add(f"{p}_md_ratio", value=ps.texture.march_dollase.ratio, vary="md_ratio" in ps.refine, min=0.1, max=10.0)
        if ps.texture is not None and ps.texture.spherical_harmonics is not None:
            sh = ps.texture.spherical_harmonics
            names = [f"C{l}_{j}" for l, j in sh_texture_terms(ph.spacegroup, reciprocal_metric(ph.cell), sh.order)]
            unknown = sorted(set(sh.coefficients) - set(names))
            if unknown:
                raise InsituXRDError(f"phase {p}: texture coefficients {unknown} are not terms of order {sh.order} for its "
                                     f"Laue class ({', '.join(names)})")
            for n in names:
                pars.add(f"{p}_sh_{n}", value=float(sh.coefficients.get(n, 0.0)), vary="sh_texture" in ps.refine)
        pars.add(f"{p}_mustrain_mix", value=ps.mustrain_mix, vary="mustrain_mix" in ps.refine, min=0.0, max=1.0)
        pars.add(f"{p}_size_mix", value=ps.size_mix, vary="size_mix" in ps.refine, min=0.0, max=1.0)
        # site parameters (template aliases, sites:, biso_groups, occupancy_sums): the phase model's
        for n, sp in model.params.items():
            pars.add(n, value=sp.start, vary=True, min=sp.lower, max=sp.upper)

    def hold_phase(self, params: lmfit.Parameters, name: str, reset: bool) -> list[str]:
        """Fix the nonlinear parameters of a phase (and of its diffuse components); return their names."""
        out = []
        for pn, par in params.items():
            if pn.startswith(f"{name}_") and par.vary and not par.expr and not is_linear(pn):
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

    def start_params(self, active: list[str], start: FitResult | None, given: lmfit.Parameters | None = None):
        warnings: list[str] = []
        params = self.initial_params(active)
        if given is not None:
            # the caller's lmfit Parameters: values, vary flags, bounds and expressions
            unknown = [n for n in given if n not in params and not self.inactive_name(n, active)]
            if unknown:
                raise InsituXRDError(f"params: {unknown} are not parameters of this fit (parameters: {', '.join(params)})")
            for n, p in given.items():
                if n in params:
                    params[n].set(value=p.value, vary=p.vary, min=p.min, max=p.max)
            self.apply_limits_constraints(params, active, {}, {n: p.expr for n, p in given.items()
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

    def is_site(self, name: str) -> bool:
        """True for a site parameter of any phase (its phase model's)."""
        return any(name in m.params for m in self.models.values())
