"""Inputs of the chemo-mechanical FEA model: the measured strain curve and the model parameters.

Every numeric field carries its unit in its name. Defaults and their sources (see docs/fea.md,
"Parameters"); "VERIFY" marks engineering defaults that have not been checked against the full
text of the cited papers (the papers could not be read while this was written):

- geometry: secondary particle radius 5 um (Chen et al., J. Electrochem. Soc. 167 (2020),
  DOI 10.1149/1945-7111/ab9050: LG M50 NMC811 R = 5.22 um, as tabulated in PyBaMM ``Chen2020``);
  40 primary grains in the quarter (~0.8 um equivalent diameter, SEM of NMC811; VERIFY vs the
  model figure of Hou et al. PNAS 2022);
  coating 0.16 um when on (seed paper: 160 +/- 20 nm).
- transport: D_ab = 1e-14 m^2/s chosen so that the 2-D random-orientation effective diffusivity
  sqrt(D_ab D_c) = 3.2e-15 m^2/s matches the Chen2020 NMC811 value 4e-15 m^2/s (engineering
  default, VERIFY vs Hou et al. SI); D_c = D_ab/10 (Hou et al.); c_max = 49,000 mol/m^3 from the
  NMC811 crystal density (M = 97.28 g/mol, a = 2.872 A, c = 14.20 A, Z = 3); 1C = 200 mAh/g of a
  275.5 mAh/g theoretical capacity -> x_per_1C_hour = 0.726 Li per formula unit per hour
  (engineering default: the usual practical-capacity C-rate of NMC811, VERIFY which 1C Hou et al. use).
  Surface condition "kinetic" (docs/fea.md Sec. 1): kinetic_x_limit_1C = 0.02, where the NMC811
  exchange current of Chen et al., J. Electrochem. Soc. 167, 080534 (2020) (PyBaMM's
  parameterisation) needs ~54 mV of overpotential to carry this model's 1C flux (engineering default,
  VERIFY: not fitted to a measurement).
- elastic: transversely isotropic C11/C12/C13/C33/C44 = 260/90/70/200/60 GPa, an engineering
  default (positive definite, Voigt average E = 186 GPa, nu = 0.26, c axis softer), NOT verified
  against the DFT table of Sun & Zhao, J. Phys. Chem. C 121, 6002 (2017); coating isotropic with
  the Voigt-average modulus of the grains (E = 186 GPa, nu = 0.26): engineering default, the
  coating material's modulus is not verified.
- cohesive: strength 100 MPa and fracture energy 1 J/m^2 (fracture-toughness consistency
  K_IC ~ 0.5 MPa m^0.5, G = K^2/E ~ 1.3 J/m^2; VERIFY vs Xu et al. Exp. Mech. 58, 549 (2018) and
  Li et al. Nat. Commun. 11, 4433 (2020)); penalty stiffness 1e19 Pa/m ~ 50 E / L_grain (Turon et
  al., Eng. Fract. Mech. 74, 1665 (2007): K = alpha E / t, alpha >~ 50).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from insitu_xrd.errors import InsituXRDError

__all__ = [
    "StrainCurve",
    "GeometryParams",
    "TransportParams",
    "ElasticParams",
    "CohesiveParams",
    "TimeParams",
    "FEAParams",
    "MESHERS",
    "RATE_RULES",
    "SURFACE_CONDITIONS",
    "UNVERIFIED_DEFAULTS",
    "UNVERIFIED_ASSUMPTIONS",
    "unverified_defaults",
]

#: meshing backends of :func:`insitu_xrd.core.fea.mesh.build_mesh`
MESHERS = ("auto", "gmsh", "triangle", "builtin")
#: how the C-rates are put on the surface grains (see :class:`TransportParams`)
RATE_RULES = ("shuffled", "cyclic", "uniform")
#: outer-surface conditions of the Li transport (see :class:`TransportParams`, docs/fea.md Sec. 1)
SURFACE_CONDITIONS = ("kinetic", "constant_flux")
#: |eps| at or above this is taken as strain in percent (same rule as the strain-file reader)
_PERCENT_LIMIT = 0.1


# ---------------------------------------------------------------------------------------------
# strain curve


@dataclass(frozen=True)
class StrainCurve:
    """Lattice strain of the a and c axes against the Li content x (fractions, not %).

    x_li: Li per formula unit, strictly monotone (stored increasing).
    eps_a, eps_c: strain of a (basal plane) and c (stacking axis) against any reference; the model
    uses differences eps(x) - eps(x_start), so the reference does not matter.
    Call the curve (or :meth:`eval`) to interpolate linearly; x outside the range is clamped to the
    end values.

    Raises:
        InsituXRDError: arrays not 1-D of the same length >= 2, non-finite values, x not strictly
        monotone, or |eps| >= 0.1 (strain in percent).
    """

    x_li: np.ndarray
    eps_a: np.ndarray
    eps_c: np.ndarray

    def __post_init__(self) -> None:
        arrs = []
        for name in ("x_li", "eps_a", "eps_c"):
            try:
                a = np.array(getattr(self, name), dtype=float)
            except (TypeError, ValueError):
                raise InsituXRDError(f"strain curve: {name} is not an array of numbers") from None
            if a.ndim != 1:
                raise InsituXRDError(f"strain curve: {name} must be 1-D, got shape {a.shape}")
            arrs.append(a)
        x, ea, ec = arrs
        if not (x.size == ea.size == ec.size):
            raise InsituXRDError(f"strain curve: x_li, eps_a, eps_c have different lengths "
                                 f"({x.size}, {ea.size}, {ec.size})")
        if x.size < 2:
            raise InsituXRDError(f"strain curve: needs at least 2 points, got {x.size}")
        for name, a in (("x_li", x), ("eps_a", ea), ("eps_c", ec)):
            if not np.all(np.isfinite(a)):
                raise InsituXRDError(f"strain curve: {name} has non-finite values (NaN or inf)")
        for name, a in (("eps_a", ea), ("eps_c", ec)):
            if np.max(np.abs(a)) >= _PERCENT_LIMIT:
                raise InsituXRDError(f"strain curve: {name} reaches {a[np.argmax(np.abs(a))]:+.4g}; strains must be "
                                     "fractions (0.02 for 2 %), this looks like percent: divide by 100")
        d = np.diff(x)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise InsituXRDError("strain curve: x_li must be strictly monotone (one branch, no repeated x)")
        if d[0] < 0:
            x, ea, ec = x[::-1], ea[::-1], ec[::-1]
        for name, a in (("x_li", x), ("eps_a", ea), ("eps_c", ec)):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def eval(self, x_li: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(eps_a, eps_c) at Li content ``x_li`` (linear interpolation, clamped outside the range)."""
        x = np.asarray(x_li, dtype=float)
        return np.interp(x, self.x_li, self.eps_a), np.interp(x, self.x_li, self.eps_c)

    __call__ = eval

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-able copy (lists, x increasing)."""
        return {"x_li": self.x_li.tolist(), "eps_a": self.eps_a.tolist(), "eps_c": self.eps_c.tolist()}


# ---------------------------------------------------------------------------------------------
# parameter groups


def _bad(group: str, key: str, value: Any, allowed: str) -> InsituXRDError:
    return InsituXRDError(f"FEA parameter {group}.{key} = {value!r} is invalid: {allowed}")


def _check_positive(group: str, obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise _bad(group, n, v, "must be a finite number > 0")


@dataclass(frozen=True)
class GeometryParams:
    """Quarter of a circular secondary particle made of Voronoi grains.

    radius_um: radius of the NMC secondary particle (um); the coating, when on, lies outside it
        (outer radius radius_um + coating_um), so bare and coated particles hold the same NMC.
    n_grains: number of Voronoi grains in the quarter. seed: seed of the grain seeds, the
        orientations (c axis angle uniform in [0, pi)) and nothing else.
    coating_um: thickness of the isotropic outer coating (um); 0 = bare.
    mesh_size_um: target edge length of the triangles (um); grain boundaries are split at this
        spacing. 0.1 um gives ~8 elements per grain diameter at the defaults (docs/fea.md has the
        mesh-convergence table).
    lloyd_iterations: Lloyd (centroidal Voronoi) steps on the seeds: more equiaxed grains and
        fewer very short grain-boundary facets (2 is an engineering choice).
    mesher: "auto" (gmsh if importable, else builtin), "gmsh", "triangle" or "builtin".
    """

    radius_um: float = 5.0
    n_grains: int = 40
    seed: int = 0
    coating_um: float = 0.0
    mesh_size_um: float = 0.1
    lloyd_iterations: int = 2
    mesher: str = "auto"

    def __post_init__(self) -> None:
        g = "geometry"
        _check_positive(g, self, "radius_um", "mesh_size_um")
        for n in ("n_grains", "seed", "lloyd_iterations"):
            v = getattr(self, n)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if n == "n_grains" else 0):
                raise _bad(g, n, v, "must be an integer >= " + ("1" if n == "n_grains" else "0"))
        if not (isinstance(self.coating_um, (int, float)) and 0.0 <= self.coating_um <= 5 * self.radius_um):
            raise _bad(g, "coating_um", self.coating_um, f"must be >= 0 and <= 5 radius_um ({5 * self.radius_um:g})")
        if self.mesh_size_um > self.radius_um / 4:
            raise _bad(g, "mesh_size_um", self.mesh_size_um, f"must be <= radius_um/4 ({self.radius_um / 4:g})")
        if self.mesher not in MESHERS:
            raise _bad(g, "mesher", self.mesher, f"must be one of {', '.join(MESHERS)}")


@dataclass(frozen=True)
class TransportParams:
    """Fickian Li transport (concentration in Li per formula unit x = c / c_max).

    D_ab_m2_s: in-plane (basal) diffusivity; D_c_over_D_ab: ratio along c (Hou et al.: 1/10).
    D_coating_m2_s: isotropic diffusivity of the coating (None -> D_ab, as in Hou et al.).
    c_max_mol_m3: Li concentration at x = 1 (converts the flux to mol m^-2 s^-1 in the output).
    rates_C: C-rates put on the surface grains. rate_rule: "shuffled" (the list repeated to the
        number of surface grains, then a seeded random permutation: every rate used about equally
        often), "cyclic" (repeated in order of the grains along the arc) or "uniform" (all
        grains get rates_C[0]). rate_seed: seed of the shuffle.
    x_per_1C_hour: Li fraction removed per hour at 1C (0.726 = 200 / 275.5 mAh/g, module docstring).
    surface_condition: "kinetic" (default): every surface node delivers min(j_g, kappa x_s), the
        grain's prescribed flux j_g while its surface can deliver it, else a kinetically limited
        flux kappa x_s that vanishes as the surface Li content x_s -> 0 (Butler-Volmer extraction
        at a capped overpotential with an exchange current first order in the surface Li; docs/fea.md
        Sec. 1), so x stays in [0, 1]. "constant_flux": j_g whatever the surface holds (the seed
        paper's set-up; drives x below 0 where a surface empties, kept for comparison).
    kinetic_x_limit_1C: surface Li content at which a facet charged at 1C reaches the kinetic limit
        (kappa = j_1C / kinetic_x_limit_1C; a facet at n C is limited below n * kinetic_x_limit_1C).
    """

    D_ab_m2_s: float = 1e-14
    D_c_over_D_ab: float = 0.1
    D_coating_m2_s: float | None = None
    c_max_mol_m3: float = 49000.0
    rates_C: tuple[float, ...] = (1.0, 0.5, 0.1)
    rate_rule: str = "shuffled"
    rate_seed: int = 0
    x_per_1C_hour: float = 200.0 / 275.5
    surface_condition: str = "kinetic"
    kinetic_x_limit_1C: float = 0.02

    def __post_init__(self) -> None:
        g = "transport"
        _check_positive(g, self, "D_ab_m2_s", "D_c_over_D_ab", "c_max_mol_m3", "x_per_1C_hour", "kinetic_x_limit_1C")
        if self.surface_condition not in SURFACE_CONDITIONS:
            raise _bad(g, "surface_condition", self.surface_condition, f"must be one of {', '.join(SURFACE_CONDITIONS)}")
        if self.kinetic_x_limit_1C >= 1.0:
            raise _bad(g, "kinetic_x_limit_1C", self.kinetic_x_limit_1C, "must be < 1 (a Li content)")
        if self.D_coating_m2_s is not None:
            _check_positive(g, self, "D_coating_m2_s")
        try:
            rates = tuple(float(r) for r in self.rates_C)
        except (TypeError, ValueError):
            raise _bad(g, "rates_C", self.rates_C, "must be a list of C-rates > 0") from None
        if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
            raise _bad(g, "rates_C", self.rates_C, "must be a non-empty list of C-rates > 0")
        object.__setattr__(self, "rates_C", rates)
        if self.rate_rule not in RATE_RULES:
            raise _bad(g, "rate_rule", self.rate_rule, f"must be one of {', '.join(RATE_RULES)}")
        if not isinstance(self.rate_seed, (int, np.integer)) or isinstance(self.rate_seed, bool) or self.rate_seed < 0:
            raise _bad(g, "rate_seed", self.rate_seed, "must be an integer >= 0")
        if self.x_per_1C_hour > 2.0:
            raise _bad(g, "x_per_1C_hour", self.x_per_1C_hour, "must be <= 2 Li per formula unit per hour")

    @property
    def D_c_m2_s(self) -> float:
        """Diffusivity along the c axis (m^2/s)."""
        return self.D_ab_m2_s * self.D_c_over_D_ab

    @property
    def coating_D_m2_s(self) -> float:
        """Diffusivity of the coating (m^2/s): D_coating_m2_s or D_ab."""
        return self.D_ab_m2_s if self.D_coating_m2_s is None else self.D_coating_m2_s


@dataclass(frozen=True)
class ElasticParams:
    """Transversely isotropic grains (symmetry axis = c) and an isotropic coating.

    C11..C44_GPa: Voigt constants in the crystal frame (1, 2 = a axes, 3 = c); C66 = (C11-C12)/2.
    coating_E_GPa, coating_nu: isotropic coating (no lithiation strain).
    plane: "strain" (total eps_zz = 0, default) or "stress" (sigma_zz = 0).
    """

    C11_GPa: float = 260.0
    C12_GPa: float = 90.0
    C13_GPa: float = 70.0
    C33_GPa: float = 200.0
    C44_GPa: float = 60.0
    coating_E_GPa: float = 186.0
    coating_nu: float = 0.26
    plane: str = "strain"

    def __post_init__(self) -> None:
        g = "elastic"
        _check_positive(g, self, "C11_GPa", "C33_GPa", "C44_GPa", "coating_E_GPa")
        for n in ("C12_GPa", "C13_GPa"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise _bad(g, n, v, "must be a finite number")
        if np.linalg.eigvalsh(self.voigt_6x6_GPa()).min() <= 0:
            raise _bad(g, "C11_GPa..C44_GPa", (self.C11_GPa, self.C12_GPa, self.C13_GPa, self.C33_GPa, self.C44_GPa),
                       "the stiffness matrix must be positive definite "
                       "(C11 > |C12|, C33 (C11 + C12) > 2 C13^2, C44 > 0)")
        if not (isinstance(self.coating_nu, (int, float)) and -1.0 < self.coating_nu < 0.5):
            raise _bad(g, "coating_nu", self.coating_nu, "must lie in (-1, 0.5)")
        if self.plane not in ("strain", "stress"):
            raise _bad(g, "plane", self.plane, "must be 'strain' or 'stress'")

    def voigt_6x6_GPa(self) -> np.ndarray:
        """Crystal-frame 6x6 Voigt stiffness (GPa), order 11, 22, 33, 23, 13, 12 (3 = c)."""
        c11, c12, c13, c33, c44 = self.C11_GPa, self.C12_GPa, self.C13_GPa, self.C33_GPa, self.C44_GPa
        c = np.zeros((6, 6))
        c[:3, :3] = [[c11, c12, c13], [c12, c11, c13], [c13, c13, c33]]
        c[3, 3] = c[4, 4] = c44
        c[5, 5] = 0.5 * (c11 - c12)
        return c


@dataclass(frozen=True)
class CohesiveParams:
    """Bilinear cohesive law on the grain boundaries (docs/fea.md, "Cohesive zone").

    strength_MPa: peak traction sigma_c. fracture_energy_J_m2: Gamma = sigma_c u_f / 2.
    penalty_Pa_m: initial (penalty) stiffness K0; u0 = sigma_c / K0.
    residual_stiffness_ratio: stiffness kept by a fully damaged interface, as a fraction of K0,
        so a grain whose boundaries are all cracked is not a free rigid body (spurious traction
        <= ratio * K0 * opening: 0.05 MPa at 50 nm with the defaults, 0.05 % of sigma_c).
    max_iterations: secant iterations per time step (a step that does not converge within them is
        counted in the attr ``n_cohesive_unconverged_steps`` and the run goes on).
    tolerance: convergence of the secant iterations: the secant traction of every interface point
        changes by at most tolerance * strength between two iterations (|Delta D| K0 u_eff).
    """

    strength_MPa: float = 100.0
    fracture_energy_J_m2: float = 1.0
    penalty_Pa_m: float = 1e19
    residual_stiffness_ratio: float = 1e-7
    max_iterations: int = 60
    tolerance: float = 1e-2

    def __post_init__(self) -> None:
        g = "cohesive"
        _check_positive(g, self, "strength_MPa", "fracture_energy_J_m2", "penalty_Pa_m", "tolerance")
        if not (isinstance(self.residual_stiffness_ratio, (int, float)) and 0 <= self.residual_stiffness_ratio < 0.01):
            raise _bad(g, "residual_stiffness_ratio", self.residual_stiffness_ratio, "must lie in [0, 0.01)")
        if not isinstance(self.max_iterations, (int, np.integer)) or isinstance(self.max_iterations, bool) \
                or self.max_iterations < 1:
            raise _bad(g, "max_iterations", self.max_iterations, "must be an integer >= 1")
        u0 = self.strength_MPa * 1e6 / self.penalty_Pa_m
        uf = 2.0 * self.fracture_energy_J_m2 / (self.strength_MPa * 1e6)
        if u0 >= 0.5 * uf:
            raise _bad(g, "penalty_Pa_m", self.penalty_Pa_m,
                       f"too soft: u0 = strength/penalty = {u0:.3g} m must be < u_f/2 = {uf / 2:.3g} m")


@dataclass(frozen=True)
class TimeParams:
    """Time integration to a final state of charge.

    soc_end: final state of charge, soc = x_start - mean x_li (project convention), reached
        exactly at the last step. 0.7 ends at mean x = 0.3: inside the H2 -> H3 c collapse of bare
        NMC811 (onset x ~ 0.35), with the surface of the 1C grains near the kinetic limit.
    n_steps: implicit-Euler steps, each removing the same amount of Li (soc_end / n_steps): with
        the prescribed fluxes delivered the steps are of equal length; where surfaces are
        kinetically limited a step takes longer (its length is solved for, docs/fea.md).
        n_snapshots: field snapshots saved, spread evenly over the steps, always including t = 0
        and the last step.
    x_start: Li content of the pristine particle (initial concentration = maximum = x_start <= 1).
    """

    soc_end: float = 0.7
    n_steps: int = 100
    n_snapshots: int = 11
    x_start: float = 1.0

    def __post_init__(self) -> None:
        g = "time"
        _check_positive(g, self, "soc_end", "x_start")
        for n in ("n_steps", "n_snapshots"):
            v = getattr(self, n)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if n == "n_steps" else 2):
                raise _bad(g, n, v, "must be an integer >= " + ("1" if n == "n_steps" else "2"))
        if self.n_snapshots > self.n_steps + 1:
            raise _bad(g, "n_snapshots", self.n_snapshots, f"must be <= n_steps + 1 ({self.n_steps + 1})")
        if self.x_start > 1.0:
            raise _bad(g, "x_start", self.x_start, "must be <= 1 Li per formula unit (x = c / c_max)")
        if self.soc_end >= self.x_start:
            raise _bad(g, "soc_end", self.soc_end, f"must be < x_start ({self.x_start}): the mean x must stay > 0")


_GROUPS: dict[str, type] = {
    "geometry": GeometryParams,
    "transport": TransportParams,
    "elastic": ElasticParams,
    "cohesive": CohesiveParams,
    "time": TimeParams,
}


@dataclass(frozen=True)
class FEAParams:
    """All parameters of :func:`insitu_xrd.core.fea.run_fea` (frozen; groups are frozen too)."""

    geometry: GeometryParams = field(default_factory=GeometryParams)
    transport: TransportParams = field(default_factory=TransportParams)
    elastic: ElasticParams = field(default_factory=ElasticParams)
    cohesive: CohesiveParams = field(default_factory=CohesiveParams)
    time: TimeParams = field(default_factory=TimeParams)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "FEAParams":
        """Parameters from a nested dict ``{"geometry": {...}, "time": {...}}`` (missing = default).

        Raises:
            InsituXRDError: an unknown group or key (the message names it and lists the allowed
            ones) or a bad value (names the key and what is allowed).
        """
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise InsituXRDError(f"FEA parameters must be a mapping of groups ({', '.join(_GROUPS)}), "
                                 f"got {type(d).__name__}")
        unknown = [k for k in d if k not in _GROUPS]
        if unknown:
            raise InsituXRDError(f"unknown FEA parameter group {unknown[0]!r}; allowed: {', '.join(_GROUPS)}")
        groups = {}
        for gname, gcls in _GROUPS.items():
            sub = d.get(gname) or {}
            if not isinstance(sub, dict):
                raise InsituXRDError(f"FEA parameter group {gname!r} must be a mapping, got {type(sub).__name__}")
            allowed = {f.name: f for f in fields(gcls)}
            bad = [k for k in sub if k not in allowed]
            if bad:
                raise InsituXRDError(f"unknown FEA parameter {gname}.{bad[0]}; allowed in {gname}: "
                                     f"{', '.join(allowed)}")
            kwargs = {k: _coerce(gname, k, v, allowed[k].default) for k, v in sub.items()}
            try:
                groups[gname] = gcls(**kwargs)
            except TypeError as exc:  # a value of the wrong kind inside a check
                raise InsituXRDError(f"FEA parameter group {gname}: {exc}") from None
        return cls(**groups)

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-able dict (tuples as lists); ``from_dict(to_dict())`` gives the same params."""
        out = dataclasses.asdict(self)
        out["transport"]["rates_C"] = list(out["transport"]["rates_C"])
        return json.loads(json.dumps(out))

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def coated(self, thickness_um: float = 0.16) -> "FEAParams":
        """Copy with the coating on (``thickness_um`` thick, seed paper: 160 +/- 20 nm)."""
        return dataclasses.replace(self, geometry=dataclasses.replace(self.geometry, coating_um=float(thickness_um)))

    def bare(self) -> "FEAParams":
        """Copy with the coating off."""
        return dataclasses.replace(self, geometry=dataclasses.replace(self.geometry, coating_um=0.0))

    def replace(self, **groups: dict[str, Any]) -> "FEAParams":
        """Copy with some fields changed, e.g. ``p.replace(time={"n_steps": 10})``."""
        d = self.to_dict()
        for g, sub in groups.items():
            if g not in _GROUPS:
                raise InsituXRDError(f"unknown FEA parameter group {g!r}; allowed: {', '.join(_GROUPS)}")
            d[g].update(sub)
        return FEAParams.from_dict(d)


def _coerce(group: str, key: str, value: Any, default: Any) -> Any:
    """A dict/JSON/YAML value to the type of the field's default (ints stay ints, lists -> tuples)."""
    if isinstance(default, bool):
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise _bad(group, key, value, "must be an integer")
    if isinstance(default, float) or (default is None and key.endswith("_m2_s")):
        if value is None and default is None:
            return None
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(group, key, value, "must be a number" + (" or null" if default is None else ""))
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise _bad(group, key, value, "must be a list")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise _bad(group, key, value, "must be a string")
    return value


# ---------------------------------------------------------------------------------------------
# what a user should calibrate: defaults not checked against the cited papers (docs/fea.md Sec. 3)

_CIJ_NOTE = "engineering default, not the DFT table of Sun & Zhao, J. Phys. Chem. C 121, 6002 (2017)"
_COHESIVE_NOTE = "fracture-toughness estimate, not checked against Xu et al. Exp. Mech. 58, 549 (2018) / Li et al. " \
                 "Nat. Commun. 11, 4433 (2020)"

#: "group.key" -> why the default is not a checked value (the VERIFY items of docs/fea.md)
UNVERIFIED_DEFAULTS: dict[str, str] = {
    "geometry.radius_um": "LG M50 NMC811 radius (Chen et al. 2020), Hou et al.'s particle size not checked",
    "geometry.n_grains": "~0.8 um grains from SEM of NMC811, Hou et al.'s model figure not checked",
    "transport.D_ab_m2_s": "chosen so sqrt(D_ab D_c) matches Chen et al. 2020's 4e-15 m^2/s, Hou et al. SI not checked",
    "transport.c_max_mol_m3": "crystallographic density of NMC811, Hou et al. SI not checked",
    "transport.x_per_1C_hour": "1C = 200 mAh/g, which 1C Hou et al. use not checked",
    "transport.kinetic_x_limit_1C": "where a Chen et al. 2020 NMC811 exchange current needs ~54 mV to carry 1C, "
                                    "not fitted to a measurement",
    "elastic.C11_GPa": _CIJ_NOTE,
    "elastic.C12_GPa": _CIJ_NOTE,
    "elastic.C13_GPa": _CIJ_NOTE,
    "elastic.C33_GPa": _CIJ_NOTE,
    "elastic.C44_GPa": _CIJ_NOTE,
    "elastic.coating_E_GPa": "Voigt average of the grains, the coating material's modulus not checked",
    "elastic.coating_nu": "Voigt average of the grains, the coating material's Poisson ratio not checked",
    "elastic.plane": "which 2-D assumption Hou et al. use not checked",
    "cohesive.strength_MPa": _COHESIVE_NOTE,
    "cohesive.fracture_energy_J_m2": _COHESIVE_NOTE,
}

#: modelling assumptions of the same status (not parameters)
UNVERIFIED_ASSUMPTIONS: tuple[str, ...] = (
    "grain-boundary damage does not block Li transport (whether Hou et al. lower it is not checked)",
    "the coating stores no Li (Hou et al. do not state its capacity)",
)


def unverified_defaults(params: FEAParams) -> list[str]:
    """``"group.key = value (why)"`` for the parameters of ``params`` still at an unchecked default
    (keys sharing one reason on one line). A value the user changed is theirs and is not listed."""
    mine, ref = params.to_dict(), FEAParams().to_dict()
    by_note: dict[str, list[tuple[str, str]]] = {}
    for name, why in UNVERIFIED_DEFAULTS.items():
        group, key = name.split(".")
        value = mine[group][key]
        if value == ref[group][key]:
            by_note.setdefault(why, []).append((name, f"{value:g}" if isinstance(value, float) else str(value)))
    return [f"{', '.join(n for n, _ in items)} = {', '.join(v for _, v in items)} ({why})"
            for why, items in by_note.items()]
