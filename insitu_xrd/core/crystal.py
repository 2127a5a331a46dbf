"""Crystal model: space group, cell, sites, reflection lists and X-ray structure factors.

Pure numpy (plus gemmi for symmetry operations and xraydb for form factors); no file I/O.

Conventions
-----------
- Cell lengths in A, angles in degrees; reciprocal-space quantities in 1/A.
- ``Reflections`` hold one representative per powder reflection (all hkl related by the Laue
  group, Friedel pairs included, are merged) with its powder multiplicity.
- ``structure_factor_sq`` returns |F|^2 in electrons^2 *per unit cell* (all symmetry-generated
  positions, centring included), with isotropic Debye-Waller factors exp(-B s^2), s = 1/(2d).
  Resonant (anomalous) scattering f' + i f'' is included when the phase carries it for the
  wavelength (`Phase.at_wavelength`: the refinement engine calls it when the recipe sets
  `refinement.resonant_scattering`, the laboratory simulator always; Chantler's tables via
  xraydb, as GSAS-II adds Cromer-Liberman's): the scattering factor is
  f0(s) + f' + i f''. At Cu Ka it is large for transition metals (Ni f' = -3.0, Co f'' = 3.6
  electrons): NMC811 intensities change by up to ~30 % relative to one another; at ~100 keV it
  is below 1 % of f0. A Phase built directly has none (f' = f'' = 0).
- Form factors: Waasmaier & Kirfel (1995) coefficients via the maintained `xraydb` package.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable

import gemmi
import numpy as np
import xraydb

from insitu_xrd.core.symmetry import LatticeConstraints, find_space_group, lattice_constraints, site_orbit
from insitu_xrd.errors import InsituXRDError

__all__ = [
    "Site",
    "Phase",
    "Reflections",
    "form_factor",
    "resonant_scattering",
    "make_template",
    "TEMPLATE_NAMES",
    "CELL_PART_LATTICE_A",
    "parse_hkl_label",
    "systematically_absent",
]


@functools.lru_cache(maxsize=256)
def _f0_table(symbol: str) -> tuple[np.ndarray, np.ndarray]:
    # Tabulate f0 on a fine s grid once per element; interpolation is ~100x faster than xraydb
    # calls inside fit loops and exact to < 1e-4 electrons on this grid.
    s_grid = np.linspace(0.0, 6.0, 6001)
    try:
        f_grid = np.asarray(xraydb.f0(symbol, s_grid), dtype=float)
    except Exception as exc:  # xraydb raises ValueError/KeyError for unknown ions
        raise InsituXRDError(f"no X-ray form factor for element or ion {symbol!r} in xraydb") from exc
    return s_grid, f_grid


def form_factor(symbol: str, s_invA: np.ndarray) -> np.ndarray:
    """X-ray atomic form factor f0 (electrons) at s = sin(theta)/lambda = 1/(2d) in 1/A."""
    s_grid, f_grid = _f0_table(symbol)
    return np.interp(np.asarray(s_invA, dtype=float), s_grid, f_grid)


def _element(symbol: str) -> str:
    return "".join(ch for ch in symbol if ch.isalpha())


@functools.lru_cache(maxsize=512)
def resonant_scattering(symbol: str, wavelength_A: float) -> tuple[float, float]:
    """(f', f'') in electrons of an element or ion symbol at the X-ray wavelength (A): Chantler's
    tables (NIST FFAST) through xraydb; the ion takes its element's values."""
    energy_eV = 12398.419843 / float(wavelength_A)
    element = _element(symbol)
    try:
        return float(xraydb.f1_chantler(element, energy_eV)), float(xraydb.f2_chantler(element, energy_eV))
    except Exception as exc:  # xraydb raises ValueError/KeyError for unknown elements
        raise InsituXRDError(f"no resonant scattering factors for {symbol!r} at {wavelength_A} A in xraydb") from exc


def atomic_mass_amu(symbol: str) -> float:
    """Atomic mass (g/mol) of an element or ion symbol such as 'Ni' or 'O2-'."""
    return float(xraydb.atomic_mass(_element(symbol)))


@dataclass
class Site:
    """One crystallographic site.

    Attributes
    ----------
    label : site name, e.g. "TM", "Li", "O".
    xyz : fractional coordinates.
    occupancy : element (or ion) symbol -> fractional occupancy on this site.
    biso_A2 : isotropic displacement parameter B (A^2).
    """

    label: str
    xyz: tuple[float, float, float]
    occupancy: dict[str, float]
    biso_A2: float = 0.5


@dataclass
class Reflections:
    """Powder reflections of a phase: one representative hkl per reflection."""

    hkl: np.ndarray  # (n, 3) int
    multiplicity: np.ndarray  # (n,) int
    d_A: np.ndarray  # (n,) float, at the cell the list was made for

    def __len__(self) -> int:
        return int(self.hkl.shape[0])

    def labels(self) -> list[str]:
        """Labels such as '104' (or '1,-1,4' when an index is negative or > 9)."""
        out = []
        for h, k, l in self.hkl:
            if all(0 <= v <= 9 for v in (h, k, l)):
                out.append(f"{h}{k}{l}")
            else:
                out.append(f"{h},{k},{l}")
        return out


def parse_hkl_label(label: str) -> tuple[int, int, int]:
    """Parse '104', '1 0 4' or '1,-1,4' into integers."""
    text = label.strip()
    if "," in text or " " in text:
        parts = [p for p in text.replace(",", " ").split() if p]
        if len(parts) == 3:
            return tuple(int(p) for p in parts)  # type: ignore[return-value]
    elif len(text) == 3 and text.isdigit():
        return int(text[0]), int(text[1]), int(text[2])
    raise InsituXRDError(f"reflection label {label!r} is not of the form '104' or '1,-1,4'")


def systematically_absent(spacegroup: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """Per hkl row: extinct by the space group's centring or screw/glide translations (gemmi's
    ``GroupOps.is_systematically_absent``, vectorised): h . c not an integer for a centring
    vector c, or h R = h and h . t not an integer for an operation (R, t)."""
    ops = spacegroup.operations()
    h = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    den = gemmi.Op.DEN
    absent = np.zeros(len(h), dtype=bool)
    for cen in ops.cen_ops[1:]:
        absent |= (h @ np.array(cen, dtype=np.int64)) % den != 0
    for op in ops.sym_ops[1:]:
        rot = np.array(op.rot, dtype=np.int64)
        fixed = np.all(h @ rot == den * h, axis=1)
        absent |= fixed & ((h @ np.array(op.tran, dtype=np.int64)) % den != 0)
    return absent


def reciprocal_metric(cell: tuple[float, float, float, float, float, float]) -> np.ndarray:
    """Reciprocal metric tensor G* (1/A^2) of a cell (A, deg): 1/d^2 = h G* h^T."""
    a, b, c, al, be, ga = cell
    al, be, ga = np.radians([al, be, ga])
    g = np.array(
        [
            [a * a, a * b * np.cos(ga), a * c * np.cos(be)],
            [a * b * np.cos(ga), b * b, b * c * np.cos(al)],
            [a * c * np.cos(be), b * c * np.cos(al), c * c],
        ]
    )
    return np.linalg.inv(g)


@dataclass
class Phase:
    """A crystalline phase: space group, cell and sites.

    Attributes
    ----------
    name : phase name used in parameter names (e.g. "H2" -> "H2_a").
    space_group : Hermann-Mauguin symbol understood by gemmi ("R -3 m:H", "F m -3 m", ...).
    cell : (a, b, c, alpha, beta, gamma) in A and degrees.
    sites : the asymmetric-unit sites.
    z_formula : formula units per unit cell (informational; weight fractions use the cell mass).
    resonant : element or ion symbol -> (f', f'') in electrons at the wavelength of the data
        (`at_wavelength`); empty: no resonant scattering.
    """

    name: str
    space_group: str
    cell: tuple[float, float, float, float, float, float]
    sites: list[Site] = field(default_factory=list)
    z_formula: int = 1
    resonant: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sg = find_space_group(self.space_group)
        if sg is None:
            raise InsituXRDError(
                f"phase {self.name!r}: unknown space group {self.space_group!r} (give a Hermann-Mauguin symbol such as "
                "'R -3 m:H', 'R-3m', 'P6_3/mmc', 'C2/m', 'Fd-3m:2' or 'Fd-3mZ')")
        self._sg = sg
        self.cell = tuple(float(v) for v in self.cell)  # type: ignore[assignment]

    # ----- symmetry -------------------------------------------------------------------------
    @property
    def spacegroup(self) -> gemmi.SpaceGroup:
        return self._sg

    @property
    def lattice_system(self) -> str:
        """'cubic', 'hexagonal' (incl. trigonal in hexagonal axes), 'tetragonal', ..."""
        system = self._sg.crystal_system_str()
        if system == "trigonal":
            return "hexagonal"
        return system

    @property
    def a(self) -> float:
        return self.cell[0]

    @property
    def b(self) -> float:
        return self.cell[1]

    @property
    def c(self) -> float:
        return self.cell[2]

    @property
    def lattice(self) -> LatticeConstraints:
        """Free and symmetry-tied cell parameters of this phase's space group."""
        return lattice_constraints(self._sg)

    def with_cell(self, a: float | None = None, b: float | None = None, c: float | None = None,
                  alpha: float | None = None, beta: float | None = None, gamma: float | None = None) -> "Phase":
        """Copy with new cell parameters (A, deg), keeping the symmetry constraints of the lattice
        system: a value for a parameter that symmetry ties or fixes is ignored (b of a hexagonal
        cell follows a)."""
        given = {k: v for k, v in dict(a=a, b=b, c=c, alpha=alpha, beta=beta, gamma=gamma).items() if v is not None}
        cell = self.lattice.cell(self.cell, given)
        new = dataclasses.replace(self, cell=cell, sites=[dataclasses.replace(s) for s in self.sites])
        return new

    @property
    def volume_A3(self) -> float:
        """Unit-cell volume in A^3."""
        a, b, c, al, be, ga = self.cell
        ca, cb, cg = np.cos(np.radians([al, be, ga]))
        return float(a * b * c * np.sqrt(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg))

    def d_spacing(self, hkl: np.ndarray, cell: tuple[float, ...] | None = None) -> np.ndarray:
        """d spacings (A) of integer hkl rows for this cell (or another cell of the same phase)."""
        gstar = reciprocal_metric(tuple(cell) if cell is not None else self.cell)  # type: ignore[arg-type]
        h = np.asarray(hkl, dtype=float).reshape(-1, 3)
        inv_d2 = np.einsum("ni,ij,nj->n", h, gstar, h)
        return 1.0 / np.sqrt(inv_d2)

    def _laue_rotations(self) -> np.ndarray:
        rots = []
        for op in self._sg.operations().sym_ops:
            r = np.array(op.rot, dtype=float) / gemmi.Op.DEN
            rots.append(r)
            rots.append(-r)  # Friedel: powder reflections merge h and -h
        return np.unique(np.rint(np.array(rots)).astype(int), axis=0)

    def reflections(self, dmin_A: float, dmax_A: float = np.inf) -> Reflections:
        """All symmetry-allowed powder reflections with dmin_A <= d <= dmax_A at the current cell."""
        if dmin_A <= 0:
            raise ValueError("dmin_A must be positive")
        # h = d* . a (a* . a = 1, b* . a = c* . a = 0), so |h| <= |d*| |a| <= a / dmin for any
        # cell shape: per-axis bounds (a generous common one made the grid of a long-c layered
        # cell 60x larger); the list does not depend on the grid (np.unique sorts it)
        hmax = [int(np.ceil(length / dmin_A)) + 1 for length in self.cell[:3]]
        axes = [np.arange(-m, m + 1) for m in hmax]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        grid = grid[np.any(grid != 0, axis=1)]
        d = self.d_spacing(grid)
        keep = (d >= dmin_A) & (d <= dmax_A)
        grid, d = grid[keep], d[keep]
        allowed = ~systematically_absent(self._sg, grid)
        grid, d = grid[allowed], d[allowed]
        if grid.size == 0:
            return Reflections(np.zeros((0, 3), int), np.zeros(0, int), np.zeros(0))
        rots = self._laue_rotations()
        # Equivalents of every hkl: h' = h R (row vector convention for reciprocal vectors).
        equiv = np.einsum("ni,rij->nrj", grid, rots)  # (n, nrot, 3)
        # Canonical representative: the equivalent with most non-negative indices (012 rather than
        # 1,0,-2), then the lexicographically largest; this gives the labels users know (104, 110).
        nonneg = np.sum(equiv >= 0, axis=2)
        lex = (equiv[..., 0] + 500) * 1_000_000 + (equiv[..., 1] + 500) * 1_000 + (equiv[..., 2] + 500)
        keys = nonneg.astype(np.int64) * 10**12 + lex
        best = np.argmax(keys, axis=1)
        rep = equiv[np.arange(len(grid)), best]
        uniq, inverse, counts = np.unique(rep, axis=0, return_inverse=True, return_counts=True)
        d_uniq = self.d_spacing(uniq)
        order = np.argsort(-d_uniq, kind="stable")
        return Reflections(uniq[order].astype(int), counts[order].astype(int), d_uniq[order])

    # ----- structure factors -----------------------------------------------------------------
    def site_positions(self, site: Site) -> np.ndarray:
        """All positions (fractional, wrapped into [0,1)) generated from a site by the space group."""
        return site_orbit(self._sg, site.xyz)[0]

    def site_multiplicity(self, site: Site) -> int:
        return int(len(self.site_positions(site)))

    @property
    def cell_mass_amu(self) -> float:
        """Mass of the unit-cell contents (g/mol per cell) = Z * formula mass."""
        total = 0.0
        for site in self.sites:
            m = self.site_multiplicity(site)
            total += m * sum(occ * atomic_mass_amu(el) for el, occ in site.occupancy.items())
        return total

    def at_wavelength(self, wavelength_A: float) -> "Phase":
        """Copy with the resonant scattering (f', f'') of every species at the wavelength (A)."""
        species = {el for site in self.sites for el in site.occupancy}
        return dataclasses.replace(self, sites=[dataclasses.replace(s) for s in self.sites],
                                   resonant={el: resonant_scattering(el, float(wavelength_A)) for el in sorted(species)})

    def scattering_factor(self, symbol: str, s_invA: np.ndarray) -> np.ndarray:
        """f0(s) + f' + i f'' (electrons, complex) of a species at s = 1/(2d) (1/A)."""
        fp, fpp = self.resonant.get(symbol, (0.0, 0.0))
        return form_factor(symbol, s_invA) + (fp + 1j * fpp)

    def structure_factor_sq(self, hkl: np.ndarray, cell: tuple[float, ...] | None = None,
                            positions_of: Callable[[Site], np.ndarray] | None = None) -> np.ndarray:
        """|F(hkl)|^2 (electrons^2 per unit cell) with form factors and isotropic B.
        ``positions_of(site)``: the site's symmetry-equivalent positions (default
        :meth:`site_positions`; a fit passes a memoised one)."""
        h = np.asarray(hkl, dtype=float).reshape(-1, 3)
        d = self.d_spacing(h, cell)
        s = 0.5 / d
        f_real = np.zeros(len(h))
        f_imag = np.zeros(len(h))
        for site in self.sites:
            positions = (positions_of or self.site_positions)(site)
            phase = 2.0 * np.pi * h @ positions.T  # (n, npos)
            geom_re = np.cos(phase).sum(axis=1)
            geom_im = np.sin(phase).sum(axis=1)
            if self.resonant:  # complex scattering factors: F = sum (f0 + f' + i f'') T
                f_site = sum(occ * self.scattering_factor(el, s) for el, occ in site.occupancy.items())
                f_site = f_site * np.exp(-site.biso_A2 * s * s)
                f_real += f_site.real * geom_re - f_site.imag * geom_im
                f_imag += f_site.real * geom_im + f_site.imag * geom_re
                continue
            f_site = np.zeros(len(h))
            for element, occ in site.occupancy.items():
                f_site += occ * form_factor(element, s)
            f_site *= np.exp(-site.biso_A2 * s * s)
            f_real += f_site * geom_re
            f_imag += f_site * geom_im
        return f_real**2 + f_imag**2

    def site(self, label: str) -> Site:
        for s in self.sites:
            if s.label == label:
                return s
        raise KeyError(f"phase {self.name!r} has no site {label!r}")


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

#: Reference lattice parameters of the calibrants (A): NIST SRM 674b CeO2, 660c LaB6, 640e Si;
#: Ni at room temperature as in pyFAI's calibrant; Li metal and Al as cell parts.
CALIBRANT_LATTICE_A = {"ceo2": 5.411651, "ni": 3.5238, "lab6": 4.156826, "si": 5.431179, "li_metal": 3.51, "al": 4.0495}


def _nmc811(
    name: str = "NMC811",
    a: float = 2.872,
    c: float = 14.20,
    li_occupancy: float = 1.0,
    ni_li_mixing: float = 0.03,
    o_z: float = 0.2590,
    biso_tm_A2: float = 0.3,
    biso_li_A2: float = 1.0,
    biso_o_A2: float = 0.5,
) -> Phase:
    """LiNi0.8Mn0.1Co0.1O2 in R-3m (hexagonal axes), Z = 3.

    TM site 3a (0,0,0): Ni 0.8, Mn 0.1, Co 0.1. Li site 3b (0,0,1/2): Li with occupancy
    `li_occupancy` (the Li content x of the layer, capped at 1 - ni_li_mixing) plus Ni
    `ni_li_mixing` (Ni in the Li layer, "Li/Ni mixing"). O on 6c (0,0,z).
    """
    li = min(max(li_occupancy, 0.0), 1.0 - ni_li_mixing)
    sites = [
        Site("TM", (0.0, 0.0, 0.0), {"Ni": 0.8, "Mn": 0.1, "Co": 0.1}, biso_tm_A2),
        Site("Li", (0.0, 0.0, 0.5), {"Li": li, "Ni": ni_li_mixing}, biso_li_A2),
        Site("O", (0.0, 0.0, o_z), {"O": 1.0}, biso_o_A2),
    ]
    return Phase(name, "R -3 m:H", (a, a, c, 90.0, 90.0, 120.0), sites, z_formula=3)


def _cubic(name: str, sg: str, a: float, sites: list[Site], z: int) -> Phase:
    return Phase(name, sg, (a, a, a, 90.0, 90.0, 90.0), sites, z_formula=z)


#: Room-temperature cells (A) of cell parts that are not calibrants (cell components, see
#: `insitu_xrd.core.cell_components`): Cu 3.6150 and alpha-Fe 2.8664 (Swanson & Tatge, NBS
#: Circular 539 vol. 1 (1953) and vol. 4 (1955), ICDD 04-0836 / 06-0696); austenitic stainless
#: steel Cr0.19Fe0.7Ni0.11, a = 3.5911 (ICDD 33-0397; 304/316 foils and casings 3.585-3.600);
#: Be a = 2.2858, c = 3.5843 (Mackay & Hill, J. Nucl. Mater. 8 (1963) 263); graphite (Bernal,
#: AB) a = 2.464, c = 6.711 (Trucano & Chen, Nature 258 (1975) 136).
CELL_PART_LATTICE_A: dict[str, tuple[float, float | None]] = {
    "cu": (3.6150, None), "steel_fcc": (3.5911, None), "steel_bcc": (2.8664, None),
    "be": (2.2858, 3.5843), "graphite": (2.464, 6.711)}


def _cell_part(key: str, label: str, a: float, c: float | None, b: float) -> Phase:
    if key == "cu":
        return _cubic(label, "F m -3 m", a, [Site("Cu", (0, 0, 0), {"Cu": 1.0}, max(b, 0.55))], 4)
    if key == "steel_fcc":  # austenite: Fe, Cr, Ni (+ Mn) disordered on the fcc site
        occ = {"Fe": 0.70, "Cr": 0.18, "Ni": 0.10, "Mn": 0.02}
        return _cubic(label, "F m -3 m", a, [Site("M", (0, 0, 0), occ, max(b, 0.5))], 4)
    if key == "steel_bcc":  # ferrite (ferritic / martensitic steel, alpha-Fe)
        return _cubic(label, "I m -3 m", a, [Site("Fe", (0, 0, 0), {"Fe": 1.0}, max(b, 0.35))], 2)
    hexagonal = (a, a, float(c), 90.0, 90.0, 120.0)  # type: ignore[arg-type]
    if key == "be":
        return Phase(label, "P 63/m m c", hexagonal, [Site("Be", (1 / 3, 2 / 3, 0.25), {"Be": 1.0}, max(b, 0.45))], 2)
    if key == "graphite":
        sites = [Site("C1", (0.0, 0.0, 0.25), {"C": 1.0}, max(b, 0.3)), Site("C2", (1 / 3, 2 / 3, 0.25), {"C": 1.0}, max(b, 0.3))]
        return Phase(label, "P 63/m m c", hexagonal, sites, 4)
    raise AssertionError("unreachable")


def make_template(template: str, name: str | None = None, **kwargs: float) -> Phase:
    """Build a built-in phase.

    Templates: "nmc811" (kwargs: a, c, li_occupancy, ni_li_mixing, o_z, biso_*_A2), "ceo2", "ni",
    "lab6", "si", "li_metal", "al", "cu", "steel_fcc", "steel_bcc" (kwargs: a, biso_A2), "be",
    "graphite" (kwargs: a, c, biso_A2).
    """
    key = template.lower()
    if key == "nmc811":
        return _nmc811(name=name or "NMC811", **kwargs)
    if key in CELL_PART_LATTICE_A:
        a0, c0 = CELL_PART_LATTICE_A[key]
        a = float(kwargs.pop("a", a0))
        c = float(kwargs.pop("c", c0)) if c0 is not None else None
        b = float(kwargs.pop("biso_A2", 0.4))
        if kwargs:
            raise InsituXRDError(f"template {template!r} does not take {sorted(kwargs)}")
        return _cell_part(key, name or template, a, c, b)
    if key not in CALIBRANT_LATTICE_A:
        raise InsituXRDError(f"unknown phase template {template!r}; allowed: {', '.join(TEMPLATE_NAMES)}")
    a = float(kwargs.pop("a", CALIBRANT_LATTICE_A[key]))
    b = float(kwargs.pop("biso_A2", 0.4))
    if kwargs:
        raise InsituXRDError(f"template {template!r} does not take {sorted(kwargs)}")
    label = name or template
    if key == "ceo2":
        return _cubic(label, "F m -3 m", a, [Site("Ce", (0, 0, 0), {"Ce": 1.0}, b), Site("O", (0.25, 0.25, 0.25), {"O": 1.0}, b)], 4)
    if key == "ni":
        return _cubic(label, "F m -3 m", a, [Site("Ni", (0, 0, 0), {"Ni": 1.0}, b)], 4)
    if key == "lab6":
        return _cubic(label, "P m -3 m", a, [Site("La", (0, 0, 0), {"La": 1.0}, b), Site("B", (0.1996, 0.5, 0.5), {"B": 1.0}, b)], 1)
    if key == "si":
        return _cubic(label, "F d -3 m:2", a, [Site("Si", (0.125, 0.125, 0.125), {"Si": 1.0}, b)], 8)
    if key == "li_metal":
        return _cubic(label, "I m -3 m", a, [Site("Li", (0, 0, 0), {"Li": 1.0}, max(b, 1.5))], 2)
    if key == "al":
        return _cubic(label, "F m -3 m", a, [Site("Al", (0, 0, 0), {"Al": 1.0}, max(b, 0.8))], 4)
    raise AssertionError("unreachable")


TEMPLATE_NAMES: tuple[str, ...] = ("nmc811", "ceo2", "ni", "lab6", "si", "li_metal", "al") + tuple(CELL_PART_LATTICE_A)


def unique_positions(positions: Iterable[np.ndarray]) -> np.ndarray:
    """Deduplicate fractional positions modulo lattice translations."""
    out: list[np.ndarray] = []
    for p in positions:
        if not any(np.all(np.abs(((p - q) + 0.5) % 1.0 - 0.5) < 1e-4) for q in out):
            out.append(np.asarray(p, dtype=float))
    return np.array(out)
