"""Forward model of a 1D powder pattern in 2theta (degrees). Plain numpy.

y(2theta) = background + sum over phases and reflections of area_k * pV(2theta; 2theta_k, H_k, eta_k)
          + diffuse (broad pseudo-Voigt) components.

- |F|^2 of the phase as it is: with resonant f' + i f'' when the phase carries them
  (`Phase.at_wavelength`; the lab simulator's phases, a fit with `resonant_scattering`).
- Peak area (integrated intensity, in intensity x degrees): scale * multiplicity * |F|^2 * Lorentz
  * texture * polarization * absorption, Lorentz = 1 / (sin^2(theta) cos(theta)) (powder).
  Polarization is applied only when `Instrument.polarization` is set (1D laboratory data): by
  default the integration stage has divided it out (pyFAI polarization_factor), as it does the
  solid angle. Absorption by the geometry (`Instrument.geometry`, `insitu_xrd.core.absorption`):
  cylinder (muR) for debye_scherrer, flat plate (mu t) for transmission, none (constant) for
  bragg_brentano. Texture: March-Dollase per phase (`insitu_xrd.core.texture`).
- Peak positions: 2theta_obs = 2theta_Bragg(d, lambda) + zero_deg + displacement shift. Geometries
  debye_scherrer and transmission (flat area detector at `distance_mm`, the default): a sample
  moved by `displacement_um` towards the detector, d(2theta) = -(delta/D) sin(2theta) cos(2theta)
  (rad). bragg_brentano: specimen displacement `displacement_um` (GSAS-II Shift) and transparency
  `transparency_mm` (1/mu_eff) on a goniometer of radius `goniometer_radius_mm`:
  d(2theta) = -2 s cos(theta)/R - sin(2theta)/(2 mu_eff R) (rad).
- Laboratory Ka doublet (`Instrument.kalpha2_wavelength_A`, `kalpha2_ratio`): every reflection
  also at the Ka2 wavelength, from the same d, with its width at its own angle and the Ka1
  area times the ratio (GSAS-II's I(L2)/I(L1): the pair shares one intensity).
- Widths: GSAS-II CW U,V,W,X,Y plus microstrain/size (see `insitu_xrd.core.profiles`), evaluated
  with the Lorentz factor at the Bragg angle; optional GSAS-II SH/L (Finger-Cox-Jephcoat)
  low-angle asymmetry of the Bragg peaks, about the observed position.
- Background: Chebyshev polynomial of the first kind on 2theta mapped to [-1, 1] over
  `background_range_deg`, plus optional broad pseudo-Voigt humps (amorphous / electrolyte).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from insitu_xrd.core.absorption import (bragg_brentano_shift_deg, cylinder_transmission, plate_transmission,
                                        polarization_factor)
from insitu_xrd.core.broadening import (cos_angle_to_axis, generalized_mustrain, stephens_names, uniaxial_mustrain,
                                        uniaxial_size_um)
from insitu_xrd.core.crystal import Phase, Reflections, parse_hkl_label, reciprocal_metric
from insitu_xrd.core.texture import invariant_harmonics, laue_equivalents, march_dollase_factor, sh_texture_factor
from insitu_xrd.core.profiles import fcj_extent_deg, fcj_node_count, fcj_nodes, peak_fwhm_eta, pseudo_voigt

__all__ = [
    "Instrument",
    "PhaseState",
    "DiffusePeak",
    "BroadPeak",
    "PeakTable",
    "PatternComponents",
    "lorentz_factor",
    "intensity_factor",
    "two_theta_deg_from_d",
    "d_from_two_theta_deg",
    "peak_table",
    "sum_peaks",
    "kalpha2_peaks",
    "chebyshev_background",
    "diffuse_center_deg",
    "calc_pattern",
    "WINDOW_FWHM",
    "LAB_ANODE_KA1_A",
    "lab_anode_warning",
]

#: Peaks are evaluated within +/- WINDOW_FWHM * FWHM of their centre (a Lorentzian loses
#: 1/(pi * WINDOW_FWHM) of its area outside, 0.6 % here, absorbed by the background).
WINDOW_FWHM = 50.0

#: Ka1 wavelengths (A) of laboratory anodes (Hoelzer et al. 1997 / International Tables C, rounded
#: as GSAS-II and instrument software write them); Ka2 / Ka1 intensity 0.5 for all of them.
LAB_ANODE_KA1_A: dict[str, float] = {"Cu": 1.5406, "Co": 1.7890, "Mo": 0.7093, "Ag": 0.5594, "Cr": 2.2897,
                                     "Fe": 1.9360}


def lab_anode_warning(wavelength_A: float, kalpha2_wavelength_A: float | None) -> str:
    """One line when a single wavelength is a laboratory anode's Ka1 (within 2e-4 A) and no Ka2 is
    given (the fitted lattice would be biased by the unmodelled doublet); '' otherwise."""
    if kalpha2_wavelength_A is not None:
        return ""
    for anode, ka1 in LAB_ANODE_KA1_A.items():
        if abs(float(wavelength_A) - ka1) <= 2e-4:
            return (f"wavelength_A {wavelength_A} is the {anode} Ka1 line but no kalpha2 is given: a laboratory "
                    f"{anode} tube also emits Ka2 (fit it with kalpha2: {{wavelength_A: ..., ratio: 0.5}} or an "
                    ".instprm with Lam1/Lam2), else the lattice comes out biased low")
    return ""


@dataclass
class Instrument:
    """Instrument (diffractometer) parameters in GSAS-II CW conventions.

    wavelength_A : X-ray wavelength (A).
    U, V, W : Gaussian variance coefficients (centideg^2).
    X, Y : Lorentzian FWHM coefficients (centideg).
    zero_deg : 2theta zero shift (deg), added to calculated positions.
    displacement_um : sample displacement towards the detector along the beam (um).
    distance_mm : sample-detector distance used by the displacement term (mm).
    sh_l : GSAS-II SH/L = S/L + H/L, Finger-Cox-Jephcoat axial-divergence asymmetry (0: symmetric
        peaks; see `insitu_xrd.core.profiles.fcj_nodes`).

    Geometry, absorption and polarization (`insitu_xrd.core.absorption`):
    geometry : debye_scherrer (default) | bragg_brentano | transmission.
    absorption_muR : cylinder mu*R (debye_scherrer); absorption_mut : plate mu*t (transmission).
    transparency_mm : 1/mu_eff (mm), goniometer_radius_mm : R (mm) (bragg_brentano).
    polarization : GSAS-II Polariz. applied to the intensities; None = already divided out.
    With bragg_brentano ``displacement_um`` is the specimen displacement (GSAS-II Shift).
    kalpha2_wavelength_A, kalpha2_ratio : laboratory Ka doublet (GSAS-II Lam2, I(L2)/I(L1)):
        ``wavelength_A`` is then Ka1; None or a ratio of 0: a single wavelength.
    """

    wavelength_A: float
    U: float = 0.0
    V: float = 0.0
    W: float = 1.0
    X: float = 0.0
    Y: float = 0.0
    zero_deg: float = 0.0
    displacement_um: float = 0.0
    distance_mm: float = 1000.0
    sh_l: float = 0.0
    # geometry, absorption, polarization (issue 18)
    geometry: str = "debye_scherrer"
    absorption_muR: float = 0.0
    absorption_mut: float = 0.0
    transparency_mm: float = 0.0
    goniometer_radius_mm: float = 240.0
    polarization: float | None = None

    def intensity_factor(self, two_theta_deg: np.ndarray) -> np.ndarray:
        """Lorentz x polarization x absorption at Bragg angles 2theta (deg) (see `intensity_factor`)."""
        return intensity_factor(two_theta_deg, self.geometry, self.absorption_muR, self.absorption_mut,
                                self.polarization)
    kalpha2_wavelength_A: float | None = None
    kalpha2_ratio: float = 0.0

    @property
    def kalpha2(self) -> tuple[float, float] | None:
        """(Ka2 wavelength (A), Ka2/Ka1 intensity ratio), None for a single wavelength."""
        if self.kalpha2_wavelength_A is None or not self.kalpha2_ratio > 0:
            return None
        return float(self.kalpha2_wavelength_A), float(self.kalpha2_ratio)

    def position_shift_deg(self, two_theta_deg: np.ndarray) -> np.ndarray:
        """Shift (deg) added to Bragg positions by zero and sample displacement (and, in
        Bragg-Brentano geometry, transparency)."""
        if self.geometry == "bragg_brentano":
            return self.zero_deg + bragg_brentano_shift_deg(two_theta_deg, self.displacement_um, self.transparency_mm,
                                                            self.goniometer_radius_mm)
        tth = np.radians(np.asarray(two_theta_deg, dtype=float))
        disp = -(self.displacement_um * 1e-3 / self.distance_mm) * np.sin(tth) * np.cos(tth)
        return self.zero_deg + np.degrees(disp)


@dataclass
class PhaseState:
    """A phase with its sample-dependent parameters for one pattern.

    scale : Rietveld scale (peak area = scale * m * |F|^2 * Lorentz).
    mustrain : GSAS-II isotropic microstrain (1e-6).
    size_um : isotropic crystallite size (um), inf = no size broadening.
    mustrain_mix, size_mix : Lorentzian fraction of each sample broadening (GSAS-II 'mx').
    reflections : fixed reflection list (hkl, multiplicity); d is recomputed from the current
        cell. Default: all reflections in the pattern range.
    areas : per-reflection peak areas overriding the structure-factor areas (Le Bail).
    f_sq : per-reflection |F|^2 (cached); computed from the structure when None.
    mustrain_axial, mustrain_axis : uniaxial microstrain (GSAS-II): ``mustrain`` is then the
        equatorial value and ``mustrain_axial`` the one along the reciprocal axis [h, k, l].
    mustrain_S : generalized microstrain (Stephens 1999), {S400: ..., ...} in GSAS-II units for
        the phase's Laue class (replaces ``mustrain``); see `insitu_xrd.core.broadening`.
    size_axial_um, size_axis : uniaxial size: ``size_um`` equatorial, ``size_axial_um`` along the axis.
    md_ratio, md_axis : March-Dollase preferred orientation (ratio r, reciprocal axis [h, k, l]);
        None = random powder (`insitu_xrd.core.texture`).
    sh_coefficients : spherical-harmonics texture (cylindrical sample symmetry), {"C2_1": ..., "C4_1": ...}
        (the names of `insitu_xrd.core.texture.sh_texture_terms`); None = none.
    """

    phase: Phase
    scale: float = 1.0
    mustrain: float = 0.0
    size_um: float = np.inf
    mustrain_mix: float = 1.0
    size_mix: float = 1.0
    reflections: Reflections | None = None
    areas: np.ndarray | None = None
    f_sq: np.ndarray | None = None
    mustrain_axial: float | None = None
    mustrain_axis: tuple[int, int, int] = (0, 0, 1)
    mustrain_S: dict[str, float] | None = None
    size_axial_um: float | None = None
    size_axis: tuple[int, int, int] = (0, 0, 1)
    md_ratio: float | None = None
    md_axis: tuple[int, int, int] = (0, 0, 1)
    sh_coefficients: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return self.phase.name

    def texture_factor(self, hkl: np.ndarray) -> np.ndarray | None:
        """March-Dollase factor per reflection of ``hkl`` at the phase's cell; None without texture."""
        if self.md_ratio is None and not self.sh_coefficients:
            return None
        gs = reciprocal_metric(self.phase.cell)
        out = np.ones(len(np.asarray(hkl).reshape(-1, 3)))
        if self.md_ratio is not None:
            out = out * march_dollase_factor(laue_equivalents(self.phase.spacegroup, hkl), self.md_axis, self.md_ratio, gs)
        if self.sh_coefficients:
            orders = {int(n[1:].split("_")[0]) for n in self.sh_coefficients}
            bases = {l: invariant_harmonics(self.phase.spacegroup, gs, l) for l in orders}
            coeffs = {l: np.array([self.sh_coefficients.get(f"C{l}_{j + 1}", 0.0) for j in range(bases[l].shape[1])])
                      for l in orders}
            out = out * sh_texture_factor(hkl, gs, bases, coeffs)
        return out

    def effective_broadening(self, hkl: np.ndarray, d_A: np.ndarray) -> tuple:
        """(microstrain, size_um) per reflection of ``hkl`` (scalars when isotropic)."""
        mustrain, size = self.mustrain, self.size_um
        if self.mustrain_S is not None:
            sg = self.phase.spacegroup
            mustrain = generalized_mustrain(sg, hkl, d_A, [self.mustrain_S.get(n, 0.0) for n in stephens_names(sg)])
        elif self.mustrain_axial is not None:
            cos_p = cos_angle_to_axis(hkl, self.mustrain_axis, reciprocal_metric(self.phase.cell))
            mustrain = uniaxial_mustrain(cos_p, self.mustrain, self.mustrain_axial)
        if self.size_axial_um is not None:
            cos_s = cos_angle_to_axis(hkl, self.size_axis, reciprocal_metric(self.phase.cell))
            size = uniaxial_size_um(cos_s, self.size_um, self.size_axial_um)
        return mustrain, size


@dataclass
class DiffusePeak:
    """A broad pseudo-Voigt component tied to reflections of a phase (disordered surface layer).

    Its centre follows the lattice: mean position of the named reflections + offset_deg.
    area in intensity x deg; fwhm_deg in deg 2theta; eta Lorentzian fraction.
    """

    phase_name: str
    reflections: tuple[str, ...]
    area: float
    fwhm_deg: float
    eta: float = 0.5
    offset_deg: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.phase_name}_{'_'.join(self.reflections)}"


@dataclass
class BroadPeak:
    """A background hump at a fixed position (amorphous carbon, electrolyte, window)."""

    center_deg: float
    fwhm_deg: float
    area: float
    eta: float = 0.5


@dataclass
class PeakTable:
    """Peaks of one phase in a pattern."""

    phase_name: str
    hkl: np.ndarray
    multiplicity: np.ndarray
    d_A: np.ndarray
    two_theta_deg: np.ndarray
    fwhm_deg: np.ndarray
    eta: np.ndarray
    area: np.ndarray
    f_sq: np.ndarray

    def __len__(self) -> int:
        return int(len(self.d_A))


@dataclass
class PatternComponents:
    """Result of `calc_pattern`: total and every component on the same 2theta grid."""

    two_theta_deg: np.ndarray
    total: np.ndarray
    background: np.ndarray
    phases: dict[str, np.ndarray] = field(default_factory=dict)
    diffuse: dict[str, np.ndarray] = field(default_factory=dict)
    peaks: dict[str, PeakTable] = field(default_factory=dict)


def lorentz_factor(two_theta_deg: np.ndarray) -> np.ndarray:
    """Debye-Scherrer powder Lorentz factor 1 / (sin^2(theta) cos(theta))."""
    th = np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0
    return 1.0 / (np.sin(th) ** 2 * np.cos(th))


def intensity_factor(two_theta_deg: np.ndarray, geometry: str = "debye_scherrer", absorption_muR: float = 0.0,
                     absorption_mut: float = 0.0, polarization: float | None = None) -> np.ndarray:
    """Lorentz factor x polarization (when given) x the geometry's absorption at Bragg angles 2theta
    (deg): cylinder transmission (debye_scherrer, muR), plate transmission (transmission, mu t),
    none (bragg_brentano: 1/(2 mu) at every angle, in the scale). The defaults give `lorentz_factor`."""
    out = lorentz_factor(two_theta_deg)
    if polarization is not None:
        out = out * polarization_factor(two_theta_deg, polarization)
    if geometry == "debye_scherrer" and absorption_muR:
        out = out * cylinder_transmission(two_theta_deg, absorption_muR)
    elif geometry == "transmission" and absorption_mut:
        out = out * plate_transmission(two_theta_deg, absorption_mut)
    return out


def two_theta_deg_from_d(d_A: np.ndarray, wavelength_A: float) -> np.ndarray:
    """Bragg angle 2theta (deg) for spacings d (A); NaN where lambda/(2d) > 1."""
    ratio = wavelength_A / (2.0 * np.asarray(d_A, dtype=float))
    with np.errstate(invalid="ignore"):
        return np.where(ratio < 1.0, 2.0 * np.degrees(np.arcsin(np.minimum(ratio, 1.0))), np.nan)


def d_from_two_theta_deg(two_theta_deg: np.ndarray, wavelength_A: float) -> np.ndarray:
    """Spacing d (A) at Bragg angle 2theta (deg)."""
    return wavelength_A / (2.0 * np.sin(np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0))


def _reflections_for(state: PhaseState, instrument: Instrument, tth_max_deg: float) -> Reflections:
    if state.reflections is not None:
        return state.reflections
    dmin = float(d_from_two_theta_deg(min(tth_max_deg + 0.5, 179.0), instrument.wavelength_A))
    return state.phase.reflections(dmin)


def peak_table(
    state: PhaseState,
    instrument: Instrument,
    two_theta_range_deg: tuple[float, float],
) -> PeakTable:
    """Positions, widths, eta and areas of the reflections of one phase inside the range
    (extended by a margin so tails of peaks just outside are included)."""
    lo, hi = two_theta_range_deg
    refl = _reflections_for(state, instrument, hi)
    d = state.phase.d_spacing(refl.hkl) if len(refl) else np.zeros(0)
    tth_bragg = two_theta_deg_from_d(d, instrument.wavelength_A)
    tth = tth_bragg + instrument.position_shift_deg(tth_bragg)
    mustrain, size_um = state.effective_broadening(refl.hkl, d)
    fwhm, eta = peak_fwhm_eta(
        tth_bragg, instrument.wavelength_A, instrument.U, instrument.V, instrument.W, instrument.X, instrument.Y,
        mustrain, size_um, state.mustrain_mix, state.size_mix,
    )
    if state.areas is not None:
        area = np.asarray(state.areas, dtype=float)
        f_sq = state.f_sq if state.f_sq is not None else np.full(len(refl), np.nan)
    else:
        f_sq = state.f_sq if state.f_sq is not None else state.phase.structure_factor_sq(refl.hkl)
        area = state.scale * refl.multiplicity * f_sq * instrument.intensity_factor(tth_bragg)
        texture = state.texture_factor(refl.hkl)
        if texture is not None:
            area = area * texture
    margin = 0.5 + 5.0 * float(np.nanmax(fwhm)) if len(refl) else 0.0
    keep = np.isfinite(tth) & (tth > lo - margin) & (tth < hi + margin)
    return PeakTable(
        state.name, refl.hkl[keep], refl.multiplicity[keep], d[keep], tth[keep], fwhm[keep], eta[keep],
        area[keep], np.asarray(f_sq)[keep],
    )


def kalpha2_peaks(state: PhaseState, instrument: Instrument, table: PeakTable) -> tuple[np.ndarray, ...]:
    """(2theta (deg), FWHM (deg), eta, area) of the Ka2 copies of the reflections of ``table``
    (same d; width at the Ka2 angle; area x ratio); empty arrays for a single wavelength."""
    doublet = instrument.kalpha2
    if doublet is None or not len(table):
        return tuple(np.zeros(0) for _ in range(4))
    lam2, ratio = doublet
    tth_bragg = two_theta_deg_from_d(table.d_A, lam2)  # NaN where lam2 / 2d > 1
    mustrain, size_um = state.effective_broadening(table.hkl, table.d_A)
    fwhm, eta = peak_fwhm_eta(
        tth_bragg, lam2, instrument.U, instrument.V, instrument.W, instrument.X, instrument.Y,
        mustrain, size_um, state.mustrain_mix, state.size_mix,
    )
    ok = np.isfinite(tth_bragg)
    tth = tth_bragg[ok] + instrument.position_shift_deg(tth_bragg[ok])
    return tth, fwhm[ok], eta[ok], ratio * np.asarray(table.area, dtype=float)[ok]


def sum_peaks(
    x: np.ndarray,
    centers: np.ndarray,
    fwhms: np.ndarray,
    etas: np.ndarray,
    areas: np.ndarray,
    window_fwhm: float = WINDOW_FWHM,
    sh_l: float = 0.0,
) -> np.ndarray:
    """Sum of area-weighted pseudo-Voigts on a sorted grid x, each within +/- window_fwhm*FWHM
    (widened on the tail side by the FCJ extent when sh_l > 0: GSAS-II SH/L asymmetry)."""
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    centers = np.asarray(centers, dtype=float)
    extent = fcj_extent_deg(centers, sh_l) if sh_l > 0 else np.zeros_like(centers)
    lo_idx = np.searchsorted(x, centers - window_fwhm * fwhms - extent)
    hi_idx = np.searchsorted(x, centers + window_fwhm * fwhms + extent)
    for i0, i1, c, w, e, a in zip(lo_idx, hi_idx, centers, fwhms, etas, areas):
        if i1 > i0 and a != 0.0:
            if sh_l > 0:
                shift, weight = fcj_nodes(c, sh_l, fcj_node_count(c, sh_l, w))
                for s_j, w_j in zip(shift[0], weight[0]):
                    out[i0:i1] += (a * w_j) * pseudo_voigt(x[i0:i1], c + s_j, w, e)
            else:
                out[i0:i1] += a * pseudo_voigt(x[i0:i1], c, w, e)
    return out


def chebyshev_background(
    two_theta_deg: np.ndarray, coefficients: Sequence[float], range_deg: tuple[float, float] | None = None
) -> np.ndarray:
    """Chebyshev series sum_i c_i T_i(t), t = 2theta mapped linearly from range_deg to [-1, 1]."""
    x = np.asarray(two_theta_deg, dtype=float)
    if len(coefficients) == 0:
        return np.zeros_like(x)
    lo, hi = range_deg if range_deg is not None else (float(x.min()), float(x.max()))
    t = (2.0 * x - (lo + hi)) / (hi - lo)
    return np.polynomial.chebyshev.chebval(t, np.asarray(coefficients, dtype=float))


def diffuse_center_deg(peak: DiffusePeak, state: PhaseState, instrument: Instrument) -> float:
    """Centre (deg) of a diffuse component: mean observed position of its reflections + offset."""
    hkl = np.array([parse_hkl_label(lbl) for lbl in peak.reflections])
    d = state.phase.d_spacing(hkl)
    tth = two_theta_deg_from_d(d, instrument.wavelength_A)
    tth = tth + instrument.position_shift_deg(tth)
    return float(np.mean(tth)) + peak.offset_deg


def calc_pattern(
    two_theta_deg: np.ndarray,
    phases: Sequence[PhaseState],
    instrument: Instrument,
    background_coeffs: Sequence[float] = (),
    background_range_deg: tuple[float, float] | None = None,
    broad_peaks: Sequence[BroadPeak] = (),
    diffuse: Sequence[DiffusePeak] = (),
) -> PatternComponents:
    """Calculate a powder pattern and its components on the grid `two_theta_deg` (sorted, deg)."""
    x = np.asarray(two_theta_deg, dtype=float)
    rng = (float(x.min()), float(x.max()))
    background = chebyshev_background(x, background_coeffs, background_range_deg or rng)
    for hump in broad_peaks:
        background = background + hump.area * pseudo_voigt(x, hump.center_deg, hump.fwhm_deg, hump.eta)
    total = background.copy()
    comps = PatternComponents(x, total, background)
    by_name = {s.name: s for s in phases}
    for state in phases:
        table = peak_table(state, instrument, rng)
        y = sum_peaks(x, table.two_theta_deg, table.fwhm_deg, table.eta, table.area, sh_l=instrument.sh_l)
        if instrument.kalpha2 is not None:
            y = y + sum_peaks(x, *kalpha2_peaks(state, instrument, table), sh_l=instrument.sh_l)
        comps.phases[state.name] = y
        comps.peaks[state.name] = table
        total += y
    for peak in diffuse:
        if peak.phase_name not in by_name:
            raise KeyError(f"diffuse component refers to unknown phase {peak.phase_name!r}")
        center = diffuse_center_deg(peak, by_name[peak.phase_name], instrument)
        y = peak.area * pseudo_voigt(x, center, peak.fwhm_deg, peak.eta)
        comps.diffuse[peak.label] = y
        total += y
    comps.total = total
    return comps


def weight_fractions(scales: dict[str, float], phases: dict[str, Phase]) -> dict[str, float]:
    """Hill & Howard weight fractions W_p = S_p (ZMV)_p / sum_i S_i (ZMV)_i.

    ZM is the unit-cell mass (amu) and V the cell volume (A^3); valid for the scale convention
    above (|F|^2 per unit cell).
    """
    weights = {n: scales[n] * phases[n].cell_mass_amu * phases[n].volume_A3 for n in scales}
    total = sum(weights.values())
    return {n: (w / total if total > 0 else np.nan) for n, w in weights.items()}


def scale_for_weight_fraction(weight_fraction: float, phase: Phase, k: float = 1.0) -> float:
    """Inverse of `weight_fractions` for simulation: scale = k * W / (ZM V)."""
    return k * weight_fraction / (phase.cell_mass_amu * phase.volume_A3)
