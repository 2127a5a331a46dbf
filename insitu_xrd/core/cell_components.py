"""A library of the parts of an operando cell that diffract besides the electrode.

An in-situ pattern of a coin, pouch or capillary cell carries lines of the cell as well as of the
sample: current collectors (Al, Cu), tabs and meshes (Ni), windows (Be, Kapton), casings and
springs (austenitic or ferritic stainless steel), the Li counter electrode, the binder (PTFE),
the conductive carbon (carbon black, graphite) and the separator (polyethylene, polypropylene).
Unmodelled, each such line pulls the lattice of any phase whose peaks it overlaps.

Two kinds of component:

* **crystalline** (:attr:`CellComponent.template` set): a structure the refinement fits as a
  phase (scale, lattice), built by :func:`insitu_xrd.core.crystal.make_template` at the
  literature cell of :data:`insitu_xrd.core.crystal.CELL_PART_LATTICE_A` (Al, Li and Ni at their
  calibrant-table cells). Its expected lines at a wavelength come from the structure factors
  (:func:`expected_lines`: m |F|^2 x Debye-Scherrer Lorentz factor).
* **line lists** (polymers and disordered carbons, whose crystal model is not usable in a powder
  fit): d-spacings, integrated relative intensities (strongest = 100) and typical intrinsic widths
  as FWHM in 1/d (1/A; K/L of Scherrer, independent of the wavelength: the width in 2theta is
  ``lambda * fwhm_inv_A / cos(theta)`` rad), fitted as peaks at fixed positions. Their relative intensities are the published Cu Ka ones,
  converted to the data's wavelength.

Sources of the line lists (room temperature, Cu or synchrotron powder data):

* PTFE: hexagonal phase IV, a = 5.66 A, c = 19.5 A (15/7 helix): Clark & Muus, Z. Kristallogr.
  117 (1962) 119; Weeks, Clark & Eby, Polymer 22 (1981) 1496. (100) dominates; 110, 200, 108, 210
  are weak. Crystallites ~20 nm.
* carbon black (turbostratic): (002) d = 3.5-3.6 A, (10) band ~2.10 A, (11) band ~1.22 A, coherent
  lengths 1-3 nm: Warren, Phys. Rev. 59 (1941) 693; Biscoe & Warren, J. Appl. Phys. 13 (1942) 364.
* PVDF (alpha form, the usual cathode binder): monoclinic a = 4.96, b = 9.64, c = 4.62 A
  (Hasegawa, Takahashi, Chatani & Tadokoro, Polym. J. 3 (1972) 600): (100) 4.96, (020) 4.82,
  (110) 4.41, (021) 3.34 A; crystallites ~10 nm.
* polyethylene: orthorhombic a = 7.41, b = 4.94, c = 2.55 A (Bunn, Trans. Faraday Soc. 35 (1939)
  482): (110) 4.11, (200) 3.70, (020) 2.47 A.
* isotactic polypropylene, alpha form: monoclinic a = 6.65, b = 20.96, c = 6.50 A, beta = 99.3 deg
  (Natta & Corradini, Nuovo Cimento Suppl. 15 (1960) 40; Turner-Jones, Aizlewood & Beckett,
  Makromol. Chem. 75 (1964) 134): (110) 6.26, (040) 5.24, (130) 4.78, (111) 4.19, (131/041) 4.05 A.
* Kapton (PMDA-ODA polyimide film): only broad maxima, about 4.9 A (interchain) and 3.5 A, with a
  weak meridional line near 15.5 A; approximate positions (the film is semi-crystalline with
  small, variably ordered domains), hence the wide tolerance.

Pure numpy (the structures through :mod:`insitu_xrd.core.crystal`); no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from insitu_xrd.core.crystal import Phase, make_template
from insitu_xrd.core.pattern import lorentz_factor
from insitu_xrd.errors import InsituXRDError

#: Cu Ka1 wavelength (A) of the published patterns the line lists' intensities come from
CU_KA1_A = 1.5406

__all__ = ["CellLine", "CellComponent", "ExpectedLine", "CELL_COMPONENTS", "component", "component_phase",
           "expected_lines", "two_theta_fwhm_deg"]


@dataclass(frozen=True)
class CellLine:
    """One line of a line-list component.

    d_A : d-spacing (A). rel_intensity : integrated intensity relative to the component's
    strongest line (100) in a Cu Ka Bragg-Brentano pattern, as published (converted to the data's
    wavelength by :func:`expected_lines`). fwhm_inv_A : typical intrinsic FWHM in 1/d (1/A).
    label : hkl or band.
    """

    d_A: float
    rel_intensity: float
    fwhm_inv_A: float
    label: str = ""


@dataclass(frozen=True)
class CellComponent:
    """A diffracting part of a cell.

    key : library key ("al", "ptfe"). name : name in the refinement and the report (a phase name
    for crystalline ones, the prefix of the peaks' names for line lists). part : what it is in a
    cell. template : the :func:`~insitu_xrd.core.crystal.make_template` name (crystalline), or
    None (line list). lines : the line list (None for crystalline). d_tolerance : how far (relative)
    the positions of a real part may lie from the library's (alloying, temperature, residual
    strain, crystallinity). source : where the numbers come from.
    """

    key: str
    name: str
    part: str
    template: str | None
    lines: tuple[CellLine, ...] | None
    d_tolerance: float
    source: str

    @property
    def crystalline(self) -> bool:
        return self.template is not None


@dataclass(frozen=True)
class ExpectedLine:
    """A component's line at a wavelength: d (A), 2theta (deg), relative intensity (strongest in
    the range = 100), intrinsic FWHM in 1/d (1/A; 0 = instrument-limited), label."""

    d_A: float
    two_theta_deg: float
    rel_intensity: float
    fwhm_inv_A: float
    label: str


CELL_COMPONENTS: tuple[CellComponent, ...] = (
    CellComponent("al", "Al", "current collector (Al foil) or casing", "al", None, 0.003,
                  "fcc a = 4.0495 A (ICDD 04-0787)"),
    CellComponent("cu", "Cu", "current collector (Cu foil)", "cu", None, 0.003,
                  "fcc a = 3.6150 A (Swanson & Tatge 1953, ICDD 04-0836)"),
    CellComponent("ni", "Ni", "tab, mesh or plating (Ni)", "ni", None, 0.003, "fcc a = 3.5238 A (ICDD 04-0850)"),
    CellComponent("be", "Be", "window (Be)", "be", None, 0.003, "hcp a = 2.2858, c = 3.5843 A (Mackay & Hill 1963)"),
    CellComponent("steel_fcc", "SteelFcc", "casing, spacer or spring (austenitic stainless steel)", "steel_fcc", None,
                  0.005, "fcc a = 3.5911 A (ICDD 33-0397; 304/316: 3.585-3.600 A)"),
    CellComponent("steel_bcc", "SteelBcc", "casing or spring (ferritic steel)", "steel_bcc", None, 0.004,
                  "bcc a = 2.8664 A (alpha-Fe, Swanson et al. 1955, ICDD 06-0696)"),
    CellComponent("li", "Li", "counter electrode (Li metal)", "li_metal", None, 0.004, "bcc a = 3.51 A (Li at 295 K)"),
    CellComponent("graphite", "Graphite", "graphite (anode or conductive additive)", "graphite", None, 0.006,
                  "hexagonal a = 2.464, c = 6.711 A (Trucano & Chen 1975)"),
    CellComponent("ptfe", "PTFE", "binder (PTFE)", None, (
        CellLine(4.90, 100.0, 0.005, "100"), CellLine(2.83, 5.0, 0.006, "110"), CellLine(2.45, 4.0, 0.006, "200"),
        CellLine(2.18, 3.0, 0.008, "108"), CellLine(1.853, 3.0, 0.008, "210")), 0.015,
        "phase IV a = 5.66, c = 19.5 A (Clark & Muus 1962; Weeks, Clark & Eby 1981)"),
    CellComponent("carbon_black", "CarbonBlack", "conductive carbon (carbon black)", None, (
        CellLine(3.55, 100.0, 0.060, "002"), CellLine(2.10, 50.0, 0.045, "10"), CellLine(1.22, 25.0, 0.040, "11")), 0.04,
        "turbostratic carbon (Warren 1941; Biscoe & Warren 1942)"),
    CellComponent("pvdf", "PVDF", "binder (PVDF, alpha form)", None, (
        CellLine(4.96, 55.0, 0.009, "100"), CellLine(4.82, 60.0, 0.009, "020"), CellLine(4.41, 100.0, 0.009, "110"),
        CellLine(3.34, 40.0, 0.012, "021")), 0.015,
        "alpha-PVDF monoclinic a = 4.96, b = 9.64, c = 4.62 A (Hasegawa, Takahashi, Chatani & Tadokoro 1972)"),
    CellComponent("polyethylene", "PE", "separator (polyethylene)", None, (
        CellLine(4.11, 100.0, 0.006, "110"), CellLine(3.70, 30.0, 0.008, "200"), CellLine(2.47, 4.0, 0.010, "020")), 0.015,
        "orthorhombic a = 7.41, b = 4.94, c = 2.55 A (Bunn 1939)"),
    CellComponent("polypropylene", "PP", "separator (polypropylene)", None, (
        CellLine(6.26, 100.0, 0.008, "110"), CellLine(5.24, 70.0, 0.008, "040"), CellLine(4.78, 55.0, 0.008, "130"),
        CellLine(4.19, 40.0, 0.010, "111"), CellLine(4.05, 40.0, 0.010, "131/041")), 0.015,
        "alpha-iPP monoclinic a = 6.65, b = 20.96, c = 6.50 A, beta = 99.3 deg (Natta & Corradini 1960)"),
    CellComponent("kapton", "Kapton", "window (Kapton polyimide)", None, (
        CellLine(4.9, 100.0, 0.060, "interchain"), CellLine(3.5, 60.0, 0.060, "interchain 2"),
        CellLine(15.5, 15.0, 0.015, "002")), 0.05, "PMDA-ODA polyimide film, broad maxima (approximate)"),
)


def component(key: str) -> CellComponent:
    """The library component ``key`` (InsituXRDError naming the keys when unknown)."""
    for c in CELL_COMPONENTS:
        if c.key == key.lower():
            return c
    raise InsituXRDError(f"unknown cell component {key!r}; known: {', '.join(c.key for c in CELL_COMPONENTS)}")


def component_phase(comp: CellComponent, name: str | None = None, lattice_scale: float = 1.0) -> Phase:
    """The structure of a crystalline component at its library cell times ``lattice_scale``."""
    if comp.template is None:
        raise InsituXRDError(f"cell component {comp.key!r} is a line list, not a structure")
    phase = make_template(comp.template, name=name or comp.name)
    if lattice_scale != 1.0:
        a, _b, c = phase.cell[:3]
        phase = phase.with_cell(a=a * lattice_scale, c=c * lattice_scale)
    return phase


def _two_theta_deg(d_A: np.ndarray, wavelength_A: float) -> np.ndarray:
    s = wavelength_A / (2.0 * np.asarray(d_A, dtype=float))
    return np.where(s < 1.0, 2.0 * np.degrees(np.arcsin(np.clip(s, -1.0, 1.0))), np.nan)


def _lp_cu_ka(d_A: float) -> float:
    """Lorentz-polarization factor of a Cu Ka1 Bragg-Brentano pattern (no monochromator) at d (A);
    lines beyond Cu's reach get the factor at 2theta = 170 deg."""
    s = min(CU_KA1_A / (2.0 * d_A), math.sin(math.radians(85.0)))
    th = math.asin(s)
    return (1.0 + math.cos(2 * th) ** 2) / (math.sin(th) ** 2 * math.cos(th))


def two_theta_fwhm_deg(fwhm_inv_A: float, two_theta_deg: float, wavelength_A: float) -> float:
    """FWHM in 2theta (deg) of an intrinsic width ``fwhm_inv_A`` in 1/d (1/A) at 2theta."""
    return float(np.degrees(wavelength_A * fwhm_inv_A / np.cos(np.radians(two_theta_deg) / 2.0)))


def expected_lines(comp: CellComponent, wavelength_A: float, two_theta_range_deg: tuple[float, float],
                   lattice_scale: float = 1.0, min_rel_intensity: float = 0.5) -> list[ExpectedLine]:
    """The component's lines inside ``two_theta_range_deg`` (deg) at ``wavelength_A`` (A), strongest
    first; intensities relative to the strongest line of the component inside the range (100),
    lines weaker than ``min_rel_intensity`` left out. Crystalline components: m |F|^2 times the
    Debye-Scherrer Lorentz factor (polarization removed by the integration), reflections that
    coincide within 1e-4 relative merged; ``lattice_scale`` scales every d."""
    lo, hi = two_theta_range_deg
    dmin = wavelength_A / (2.0 * np.sin(np.radians(hi) / 2.0))
    dmax = wavelength_A / (2.0 * np.sin(np.radians(max(lo, 1e-3)) / 2.0))
    out: list[tuple[float, float, float, str]] = []
    if comp.template is not None:
        phase = component_phase(comp, lattice_scale=lattice_scale)
        refl = phase.reflections(dmin, dmax)
        if len(refl):
            tth = _two_theta_deg(refl.d_A, wavelength_A)
            inten = refl.multiplicity * phase.structure_factor_sq(refl.hkl) * lorentz_factor(tth)
            merged: list[list] = []
            for d, i, lab in zip(refl.d_A, inten, refl.labels()):
                if merged and abs(merged[-1][0] / d - 1.0) < 1e-4:
                    merged[-1][1] += i
                    merged[-1][2] += "/" + lab
                else:
                    merged.append([float(d), float(i), lab])
            out = [(d, i, 0.0, lab) for d, i, lab in merged]
    else:
        assert comp.lines is not None
        # published relative intensities are Cu Ka Bragg-Brentano ones: divided by that
        # Lorentz-polarization factor, times the Debye-Scherrer Lorentz factor at this wavelength
        out = []
        for ln in comp.lines:
            d = ln.d_A * lattice_scale
            if dmin <= d <= dmax:
                tth = float(_two_theta_deg(np.array([d]), wavelength_A)[0])
                weight = ln.rel_intensity / _lp_cu_ka(d) * float(lorentz_factor(np.array([tth]))[0])
                out.append((d, weight, ln.fwhm_inv_A, ln.label))
    if not out:
        return []
    top = max(i for _d, i, _w, _l in out)
    if not top > 0:
        return []
    lines = [ExpectedLine(d, float(_two_theta_deg(np.array([d]), wavelength_A)[0]), 100.0 * i / top, w, lab)
             for d, i, w, lab in out if 100.0 * i / top >= min_rel_intensity]
    return sorted(lines, key=lambda ln: -ln.rel_intensity)
