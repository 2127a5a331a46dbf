"""Diffraction lines of the cell parts that are neither cathode, Li metal nor Al: the PTFE binder
and the conductive carbon of a pressed cathode pellet (carbon black, optionally graphite).

This is the simulator's own forward model, written from the literature and independent of any
cell-component library of the refinement (the simulator must stay an independent truth). Each
part is a list of lines at fixed d-spacings: they do not move with the state of charge, only with
the instrument (zero shift). A line is a pseudo-Voigt whose width is the instrument profile plus
the Lorentzian size broadening of the part's coherent domains (GSAS-II convention,
FWHM = lambda / (L cos theta)); its area follows the relative intensities published for Cu Ka
patterns, converted to the simulated wavelength (divided by the Cu Ka Lorentz-polarisation factor
of a diffractometer without monochromator, multiplied by the instrument's own Lorentz x
absorption factor, `Instrument.intensity_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from insitu_xrd.core.pattern import Instrument, sum_peaks, two_theta_deg_from_d
from insitu_xrd.core.profiles import peak_fwhm_eta

__all__ = ["PartLine", "CellPart", "PTFE", "CARBON_BLACK", "GRAPHITE", "CU_KA1_A", "part_lines", "part_pattern"]

#: Cu Ka1 wavelength (A) of the published patterns the relative intensities come from.
CU_KA1_A = 1.5406


@dataclass(frozen=True)
class PartLine:
    """One line: label, d-spacing (A), relative integrated intensity in a Cu Ka pattern
    (strongest line of the part = 100) and coherent-domain size (nm) that broadens it."""

    label: str
    d_A: float
    rel_intensity_cuka: float
    size_nm: float


@dataclass(frozen=True)
class CellPart:
    """A cell part: its name and lines."""

    name: str
    lines: tuple[PartLine, ...]


# PTFE binder at room temperature (19-30 C) is in phase IV: hexagonal, 15/7 helices, a = 5.66 A,
# c = 19.50 A (Clark & Muus, Z. Kristallogr. 117 (1962) 119; Clark, J. Macromol. Sci. B 45 (2006)
# 201, "The crystal structure of polytetrafluoroethylene, forms I and IV"). Its pattern is
# dominated by the 100 line (d = 4.90 A, 2theta = 18.1 deg with Cu Ka); the other hk0 lines and the
# 107/108 layer lines are a few % of it (rotational disorder of the helices weakens l != 0;
# Bouznik, Kirik, Solovyov, Tsvetnikov, Powder Diffraction, "A crystal structure of ultra-dispersed
# form of polytetrafluoroethylene based on X-ray powder diffraction data": 2D hexagonal cell
# a = 5.685 A with 100 by far the strongest). Relative intensities are rounded values of such
# Cu Ka patterns; d from the phase IV cell. Crystallite size 40 nm: Scherrer sizes of 20-70 nm are
# reported for sintered and fibrillated PTFE.
_PTFE_A, _PTFE_C = 5.66, 19.50


def _hex_d(h: int, k: int, l: int, a: float, c: float) -> float:
    return float(1.0 / np.sqrt(4.0 / 3.0 * (h * h + h * k + k * k) / a**2 + l * l / c**2))


PTFE = CellPart("PTFE", tuple(
    PartLine(lbl, _hex_d(*hkl, _PTFE_A, _PTFE_C), rel, 40.0)
    for lbl, hkl, rel in (("100", (1, 0, 0), 100.0), ("110", (1, 1, 0), 5.0), ("200", (2, 0, 0), 3.0),
                          ("107", (1, 0, 7), 4.0), ("108", (1, 0, 8), 2.5), ("210", (2, 1, 0), 2.0),
                          ("300", (3, 0, 0), 1.0))
))

# Carbon black (Super P-type conductive additive): turbostratic stacks of a few graphene layers.
# Biscoe & Warren, J. Appl. Phys. 13 (1942) 364, "An X-ray study of carbon black": interlayer
# spacing d(002) ~ 3.5-3.6 A, stack height Lc ~ 1.3 nm, layer diameter La ~ 2 nm; the 2D (hk)
# bands 10 and 11 at d ~ 2.09 and ~ 1.21 A (Warren, Phys. Rev. 59 (1941) 693, "X-ray diffraction
# in random layer lattices": the bands peak slightly beyond the graphite 100/110 positions,
# 2.13 and 1.23 A). Widths: Lc for 002, La for the bands; band areas relative to 002 as read from
# Biscoe & Warren's Cu Ka patterns (the asymmetric tails of the hk bands are not modelled).
CARBON_BLACK = CellPart("carbon_black", (
    PartLine("002", 3.55, 100.0, 1.3),
    PartLine("10", 2.09, 45.0, 2.0),
    PartLine("11", 1.21, 25.0, 2.0),
))

# Graphite (e.g. a KS6-type additive): Bernal hexagonal graphite a = 2.4612 A, c = 6.7079 A
# (Trucano & Chen, Nature 258 (1975) 136): sharp 002 at d = 3.354 A, weaker 101 (2.03 A),
# 004 (1.677 A), 110 (1.231 A); relative intensities rounded from Cu Ka powder patterns of graphite.
# Crystallite size 60 nm (Lc of synthetic graphite powders is 30-100 nm).
_GR_A, _GR_C = 2.4612, 6.7079
GRAPHITE = CellPart("graphite", tuple(
    PartLine(lbl, _hex_d(*hkl, _GR_A, _GR_C), rel, 60.0)
    for lbl, hkl, rel in (("002", (0, 0, 2), 100.0), ("101", (1, 0, 1), 5.0), ("004", (0, 0, 4), 5.0),
                          ("110", (1, 1, 0), 2.0))
))


def _lp_cuka(two_theta_deg: np.ndarray) -> np.ndarray:
    # Lorentz-polarisation of a Bragg-Brentano diffractometer without monochromator, in which the
    # published relative intensities were measured: (1 + cos^2 2theta) / (sin^2 theta cos theta)
    tth = np.radians(two_theta_deg)
    th = tth / 2.0
    return (1.0 + np.cos(tth) ** 2) / (np.sin(th) ** 2 * np.cos(th))


def part_lines(part: CellPart, instrument: Instrument, strongest_area: float) -> dict[str, np.ndarray]:
    """Position (deg, with the instrument's zero), FWHM (deg), eta and area of every line of `part`
    at the instrument's wavelength; the line with the largest relative intensity gets area
    `strongest_area` (counts x deg) and the others follow the converted Cu Ka intensities.
    Lines beyond 2theta = 180 deg are left out."""
    d = np.array([ln.d_A for ln in part.lines])
    rel = np.array([ln.rel_intensity_cuka for ln in part.lines])
    size_um = np.array([ln.size_nm * 1e-3 for ln in part.lines])
    tth_bragg = two_theta_deg_from_d(d, instrument.wavelength_A)
    tth_cu = two_theta_deg_from_d(d, CU_KA1_A)
    ok = np.isfinite(tth_bragg)
    weight = rel / _lp_cuka(tth_cu) * instrument.intensity_factor(np.where(ok, tth_bragg, 90.0))
    ref = int(np.argmax(rel))
    area = strongest_area * weight / weight[ref]
    fwhm, eta = peak_fwhm_eta(np.where(ok, tth_bragg, 90.0), instrument.wavelength_A, instrument.U, instrument.V,
                              instrument.W, instrument.X, instrument.Y, 0.0, size_um)
    tth = tth_bragg + instrument.position_shift_deg(np.where(ok, tth_bragg, 90.0))
    labels = np.array([ln.label for ln in part.lines])
    return {"label": labels[ok], "d_A": d[ok], "two_theta_deg": tth[ok], "fwhm_deg": np.asarray(fwhm)[ok],
            "eta": np.asarray(eta)[ok], "area": area[ok]}


def part_pattern(two_theta_deg: np.ndarray, part: CellPart, instrument: Instrument, strongest_area: float) -> np.ndarray:
    """Intensity (counts) of the lines of `part` on the sorted grid (deg)."""
    ln = part_lines(part, instrument, strongest_area)
    return sum_peaks(np.asarray(two_theta_deg, dtype=float), ln["two_theta_deg"], ln["fwhm_deg"], ln["eta"], ln["area"])
