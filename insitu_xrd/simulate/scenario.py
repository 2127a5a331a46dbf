"""First-charge scenario of an NMC811 cathode with every true value known as a function of x.

x is the Li content per formula unit (Li_x Ni0.8Mn0.1Co0.1O2), 1 at the start of the first
charge and ~0.2 at a 4.5 V cut-off. The scenario gives, for any x, the lattice parameters,
microstrain and crystallite size of the layered phases H2 (H1/H2 solid solution) and H3, their
fractions, and the open-circuit voltage. Pure numpy; no file I/O.

Lattice curves (piecewise smooth, C1, monotone where the literature is)
----------------------------------------------------------------------
Shapes and magnitudes follow operando synchrotron studies of Ni-rich layered oxides:

- Märker, Reeves, Xu, Griffith, Grey, *Chem. Mater.* 31 (2019) 2545 (NMC811 operando XRD):
  a falls from 2.872 A nearly linearly and flattens near ~2.815-2.82 A at high states of charge;
  c rises from 14.20 A to a maximum of ~14.47 A near x ~ 0.5 and then collapses.
- Li, Manthiram et al. / Ryu, Park, Yoon, Sun, *Chem. Mater.* 30 (2018) 1155 (Ni-rich NCM,
  "Capacity fading of Ni-rich Li[NixCoyMn1-x-y]O2"): the H2 -> H3 transition at ~4.15-4.2 V is a
  two-phase region; H3 has c ~ 14.0-14.05 A.
- de Biasi, Kondrakov, Geßwein, Brezesinski, Hartmann, Janek, *J. Phys. Chem. C* 121 (2017)
  26163: a ~ 2.87 -> 2.82 A, c maximum ~14.46-14.47 A, collapse ~ -2 % to ~4.5 V.

The forms used (u = (x - x_on) / (1 - x_on), 0 at the H3 onset, 1 at x = 1):

    H2: a(x) = a_on + (a_0 - a_on) * (0.7 u + 0.3 u^2)                           x >= x_on
        c(x) = c_max - (c_max - c_0) * ((x - x_pk) / (1 - x_pk))^2               x >= x_pk
        c(x) = c_max - (c_max - c_on) * ((x_pk - x) / (x_pk - x_on))^2           x_on <= x < x_pk
        below x_on H2 keeps (a_on, c_on) and Li content x_on (two-phase region: the compositions
        of coexisting phases are fixed, the lever rule moves material between them).
    H3: a = a_h3, c = c_h3, Li content x_h3, present for x < x_on with cathode fraction
        f(x) = (x_on - x) / (x_on - x_h3) (lever rule); below x_h3 H3 is a single phase whose c
        keeps falling (c_h3 - 0.3 A per unit x) and a stays at a_h3.

The "c decrement" of the seed paper (2.0 % bare, 0.6 % coated) is taken as
(c_max - c_mean(x = 0.2)) / c_max, with c_mean the fraction-weighted mean c of H2 and H3; the
parameter sets below reproduce it (see `ChargeScenario.c_decrement_pct`).

Microstrain
-----------
GSAS-II isotropic mu-strain (dimensionless x 1e-6): the Lorentzian 2theta FWHM (rad) is
mu_S * 1e-6 * tan(theta), i.e. the FWHM of the distribution of Delta d / d is mu_S * 1e-6 / 2.
The seed paper's "microstrain 0.2114 % (coated) vs 0.0914 % (bare)" is read as GSAS-II output,
mu_S = 2114 and 914 (0.2114 % = 2114e-6 x 100 %). These are the values at the start (x = 1);
the model grows them mildly on charge (+30 % at x = 0), H3 carries 1.3x the H2 value.

Voltage
-------
A monotone (PCHIP) open-circuit-voltage curve for the first charge of NMC811 through points
read off typical 0.1C first-charge curves (e.g. Märker 2019, Ryu 2018): ~3.6 V at the start,
the H2-H3 plateau near 4.15-4.2 V, 4.5 V at x ~ 0.17-0.2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = [
    "LatticeCurveParams",
    "BARE_PARAMS",
    "COATED_PARAMS",
    "PhaseTruth",
    "ScenarioState",
    "ChargeScenario",
    "nmc811_ocv_V",
]

#: (x, OCV in V) of the first charge of NMC811 (see module docstring).
_OCV_POINTS = np.array(
    [
        (0.00, 4.85), (0.10, 4.70), (0.17, 4.50), (0.22, 4.33), (0.28, 4.22), (0.35, 4.17),
        (0.42, 4.12), (0.50, 4.02), (0.60, 3.92), (0.70, 3.83), (0.80, 3.76), (0.90, 3.70),
        (0.97, 3.62), (1.00, 3.45),
    ]
)
_OCV = PchipInterpolator(_OCV_POINTS[:, 0], _OCV_POINTS[:, 1], extrapolate=True)


def nmc811_ocv_V(x_li: np.ndarray | float) -> np.ndarray:
    """Open-circuit voltage (V vs Li/Li+) of NMC811 on first charge at Li content x (0..1)."""
    x = np.clip(np.asarray(x_li, dtype=float), 0.0, 1.0)
    return _OCV(x)


@dataclass(frozen=True)
class LatticeCurveParams:
    """Parameters of the lattice curves (A), onsets (x) and broadening of one scenario."""

    a_0: float = 2.872
    a_on: float = 2.822
    a_h3: float = 2.815
    c_0: float = 14.20
    c_max: float = 14.47
    x_peak: float = 0.50
    c_on: float = 14.42
    c_h3: float = 14.03
    x_on: float = 0.35
    x_h3: float = 0.10
    mustrain_0: float = 914.0
    mustrain_growth: float = 0.30
    mustrain_h3_factor: float = 1.3
    #: microstrain along c (00l) / in the layers (hk0): 1 = isotropic; > 1 = the c-axis strain
    #: distribution of a charged layered oxide (uniaxial model about [001], GSAS-II convention)
    mustrain_axial_factor: float = 1.0
    #: March-Dollase ratio of the layered phases about [001] (1 = random powder; < 1: platelets
    #: lying flat in a cast electrode or pressed pellet; `insitu_xrd.core.texture`)
    texture_ratio: float = 1.0
    size_um: float = 0.8
    #: width (sigma of ln L) of a log-normal crystallite-size distribution of H2 and H3; 0 = every
    #: crystallite of size_um, > 0: size_um is the volume-weighted median (`simulate.size_tails`)
    size_sigma: float = 0.0
    ni_li_mixing: float = 0.03
    o_z: float = 0.2590
    diffuse_fraction: float = 0.08
    diffuse_fwhm_deg: tuple[float, float] = (0.16, 0.22)


#: Bare NMC811 (c decrement 2.0 %, mu-strain 914 at x = 1).
BARE_PARAMS = LatticeCurveParams()
#: Coated NMC811: smaller lattice change, H3 later and less, larger microstrain (2114), stronger
#: diffuse scattering from the disordered surface layer.
COATED_PARAMS = LatticeCurveParams(
    a_on=2.830, a_h3=2.825, c_max=14.40, c_on=14.37, c_h3=14.10, x_on=0.25, x_h3=0.0,
    mustrain_0=2114.0, diffuse_fraction=0.20, diffuse_fwhm_deg=(0.20, 0.26),
)


@dataclass
class PhaseTruth:
    """True state of one layered phase at one x. Lattice in A, volume in A^3, size in um."""

    name: str
    present: bool
    cathode_fraction: float
    a_A: float | None
    c_A: float | None
    volume_A3: float | None
    mustrain: float | None
    size_um: float | None
    li_occupancy: float | None
    ni_li_mixing: float
    o_z: float
    mustrain_axial: float | None = None  # uniaxial microstrain along [001] (None: isotropic)
    md_ratio: float | None = None  # March-Dollase ratio about [001] (None: random powder)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScenarioState:
    """Everything true about the cathode at Li content x."""

    x_li: float
    ocv_V: float
    h2: PhaseTruth
    h3: PhaseTruth
    c_mean_A: float = field(default=np.nan)
    a_mean_A: float = field(default=np.nan)

    @property
    def phases(self) -> list[PhaseTruth]:
        return [self.h2, self.h3]


def _hex_volume(a: float, c: float) -> float:
    return float(np.sqrt(3.0) / 2.0 * a * a * c)


@dataclass(frozen=True)
class ChargeScenario:
    """First charge of NMC811 from x = 1 (bare or coated); call `state(x)` for the truth."""

    coated: bool = False
    params: LatticeCurveParams | None = None

    @property
    def p(self) -> LatticeCurveParams:
        if self.params is not None:
            return self.params
        return COATED_PARAMS if self.coated else BARE_PARAMS

    @property
    def name(self) -> str:
        return "nmc811-first-charge-coated" if self.coated else "nmc811-first-charge-bare"

    # --- lattice curves ---------------------------------------------------------------------
    def h2_a_A(self, x: np.ndarray | float) -> np.ndarray:
        p = self.p
        u = np.clip((np.asarray(x, dtype=float) - p.x_on) / (1.0 - p.x_on), 0.0, None)
        return p.a_on + (p.a_0 - p.a_on) * (0.7 * u + 0.3 * u * u)

    def h2_c_A(self, x: np.ndarray | float) -> np.ndarray:
        p = self.p
        xx = np.maximum(np.asarray(x, dtype=float), p.x_on)
        rise = p.c_max - (p.c_max - p.c_0) * ((xx - p.x_peak) / (1.0 - p.x_peak)) ** 2
        fall = p.c_max - (p.c_max - p.c_on) * ((p.x_peak - xx) / (p.x_peak - p.x_on)) ** 2
        return np.where(xx >= p.x_peak, rise, fall)

    def h3_fraction(self, x: np.ndarray | float) -> np.ndarray:
        """Cathode (weight ~ mole) fraction of H3 by the lever rule; 0 for x >= x_on."""
        p = self.p
        xx = np.asarray(x, dtype=float)
        return np.clip((p.x_on - xx) / (p.x_on - p.x_h3), 0.0, 1.0)

    def h3_c_A(self, x: np.ndarray | float) -> np.ndarray:
        p = self.p
        xx = np.asarray(x, dtype=float)
        return p.c_h3 - 0.3 * np.clip(p.x_h3 - xx, 0.0, None)

    def mustrain(self, x: float, phase: str = "H2") -> float:
        p = self.p
        mu = p.mustrain_0 * (1.0 + p.mustrain_growth * (1.0 - float(x)))
        return float(mu * (p.mustrain_h3_factor if phase == "H3" else 1.0))

    def _axial(self, mustrain: float) -> float | None:
        factor = self.p.mustrain_axial_factor
        return None if factor == 1.0 else float(mustrain * factor)

    def _md_ratio(self) -> float | None:
        return None if self.p.texture_ratio == 1.0 else float(self.p.texture_ratio)

    def state(self, x_li: float) -> ScenarioState:
        """True state at Li content x_li (0..1)."""
        p = self.p
        x = float(np.clip(x_li, 0.0, 1.0))
        f3 = float(self.h3_fraction(x))
        h2_present = f3 < 1.0
        h3_present = f3 > 0.0
        a2, c2 = float(self.h2_a_A(x)), float(self.h2_c_A(x))
        h2 = PhaseTruth(
            "H2", h2_present, 1.0 - f3,
            a2 if h2_present else None, c2 if h2_present else None,
            _hex_volume(a2, c2) if h2_present else None,
            self.mustrain(x, "H2") if h2_present else None,
            p.size_um if h2_present else None,
            max(x, p.x_on) if h2_present else None, p.ni_li_mixing, p.o_z,
            self._axial(self.mustrain(x, "H2")) if h2_present else None,
            self._md_ratio() if h2_present else None,
        )
        a3, c3 = p.a_h3, float(self.h3_c_A(x))
        h3 = PhaseTruth(
            "H3", h3_present, f3,
            a3 if h3_present else None, c3 if h3_present else None,
            _hex_volume(a3, c3) if h3_present else None,
            self.mustrain(x, "H3") if h3_present else None,
            p.size_um if h3_present else None,
            min(x, p.x_h3) if f3 >= 1.0 else (p.x_h3 if h3_present else None), p.ni_li_mixing, p.o_z,
            self._axial(self.mustrain(x, "H3")) if h3_present else None,
            self._md_ratio() if h3_present else None,
        )
        c_mean = (1 - f3) * c2 + f3 * c3 if h3_present else c2
        a_mean = (1 - f3) * a2 + f3 * a3 if h3_present else a2
        return ScenarioState(x, float(nmc811_ocv_V(x)), h2, h3, float(c_mean), float(a_mean))

    # --- derived numbers quoted in the docs -----------------------------------------------
    def c_decrement_pct(self, x_end: float = 0.2) -> float:
        """(c_max - c_mean(x_end)) / c_max in %, c_mean weighted by the phase fractions."""
        return 100.0 * (self.p.c_max - self.state(x_end).c_mean_A) / self.p.c_max

    def a_shrink_pct(self, x_end: float = 0.2) -> float:
        """(a_0 - a_mean(x_end)) / a_0 in %."""
        return 100.0 * (self.p.a_0 - self.state(x_end).a_mean_A) / self.p.a_0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.p)
        d["diffuse_fwhm_deg"] = list(self.p.diffuse_fwhm_deg)
        return {"name": self.name, "coated": self.coated, "params": d,
                "c_decrement_pct_at_x0.2": self.c_decrement_pct(), "a_shrink_pct_at_x0.2": self.a_shrink_pct()}
