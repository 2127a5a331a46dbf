"""Pydantic v2 models of a recipe's ``refinement:`` section.

Every model forbids unknown keys (``extra="forbid"``), so a misspelt key is an error that names it;
``refine`` lists are ``Literal`` lists, so an unknown parameter name is an error listing the allowed
names. The full recipe (owned by the pipeline) wraps :class:`RefinementSpec` and adds file names to
the messages.

Example (validates as written)::

    refinement:
      mode: lebail                                    # or rietveld
      range_2theta_deg: [1.2, 11.8]
      exclude_2theta_deg: [[3.05, 3.15]]             # optional
      background: {chebyshev: 8}
      profile: {U: 1.2, V: -0.4, W: 0.9, X: 0.15, Y: 0.3, refine: [W, X, Y]}
      phases:
        - {name: H2, template: nmc811, a: 2.872, c: 14.20, refine: [a, c, mustrain, scale]}
        - {name: H3, template: nmc811, a: 2.82, c: 14.00, refine: [a, c, mustrain, scale], optional: true}
        - {name: Li, template: li_metal, refine: [a, scale]}
      diffuse: [{phase: H2, reflections: ["104"]}, {phase: H2, reflections: ["108", "110"]}]
      constraints: {H3_size_um: H2_size_um}           # lmfit expressions (nonlinear parameters)
      limits: {H2_mustrain: [0, 5000]}

Units: angles in degrees 2theta, lattice lengths in A, microstrain in 1e-6 (GSAS-II mu-strain),
size in um, profile U, V, W in centideg^2 and X, Y in centideg, SH/L dimensionless (GSAS-II CW).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from insitu_xrd.core.crystal import TEMPLATE_NAMES

__all__ = [
    "resonant_on",
    "RESONANT_AUTO_MIN_WAVELENGTH_A",
    "SiteSpec",
    "OccupancySumSpec",
    "MarchDollaseSpec",
    "SphericalHarmonicsSpec",
    "TextureSpec",
    "ProfileSpec",
    "KAlpha2Spec",
    "BackgroundSpec",
    "HumpSpec",
    "PhaseSpec",
    "DiffuseSpec",
    "RefinementSpec",
    "PROFILE_REFINABLE",
    "PHASE_REFINABLE",
    "DIFFUSE_REFINABLE",
]

ProfileName = Literal["U", "V", "W", "X", "Y", "zero_deg", "displacement_um", "sh_l",
                      "absorption_muR", "absorption_mut", "transparency_mm"]
PhaseName = Literal[
    "a", "b", "c", "alpha", "beta", "gamma", "scale", "mustrain", "size_um", "mustrain_mix", "size_mix",
    "mustrain_axial", "mustrain_S", "size_axial_um", "md_ratio", "sh_texture",
    "o_z", "li_occupancy", "ni_li_mixing", "biso_A2", "biso_tm_A2", "biso_li_A2", "biso_o_A2",
]
DiffuseName = Literal["area", "fwhm_deg", "offset_deg", "eta"]
HumpName = Literal["area", "center_deg", "fwhm_deg", "eta"]

PROFILE_REFINABLE: tuple[str, ...] = ProfileName.__args__  # type: ignore[attr-defined]
PHASE_REFINABLE: tuple[str, ...] = PhaseName.__args__  # type: ignore[attr-defined]
DIFFUSE_REFINABLE: tuple[str, ...] = DiffuseName.__args__  # type: ignore[attr-defined]

#: Site parameters that exist only for the built-in ``nmc811`` template.
NMC_SITE_PARAMS = ("o_z", "li_occupancy", "ni_li_mixing", "biso_tm_A2", "biso_li_A2", "biso_o_A2")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KAlpha2Spec(_Strict):
    """The Ka2 line of a laboratory tube (GSAS-II ``Lam2`` and ``I(L2)/I(L1)``); the recipe's
    ``wavelength_A`` is then Ka1. Cu: ``{wavelength_A: 1.5444, ratio: 0.5}``."""

    wavelength_A: float = Field(..., gt=0, description="Ka2 wavelength (A), e.g. 1.5444 for Cu, 0.7136 for Mo.")
    ratio: float = Field(0.5, gt=0, le=1, description="Ka2/Ka1 intensity ratio (GSAS-II I(L2)/I(L1)), about 0.5.")


class ProfileSpec(_Strict):
    """Instrumental profile (GSAS-II CW) and peak-position corrections.

    Either give ``U, V, W, X, Y`` here or name a GSAS-II ``instrument`` parameter file (loaded by
    the caller and passed to ``Refinement(instrument=...)``); values given here override the file.
    Missing values without a file default to U=V=0, W=1, X=Y=0 (a flag the caller may refine).
    """

    instrument: str | None = Field(None, description="GSAS-II .instprm file with U,V,W,X,Y (and Lam); read by the caller.")
    U: float | None = Field(None, description="Gaussian U (centideg^2): sigma^2 = U tan^2(theta) + V tan(theta) + W.")
    V: float | None = Field(None, description="Gaussian V (centideg^2).")
    W: float | None = Field(None, description="Gaussian W (centideg^2).")
    X: float | None = Field(None, description="Lorentzian X (centideg): gamma = X/cos(theta) + Y tan(theta).")
    Y: float | None = Field(None, description="Lorentzian Y (centideg).")
    zero_deg: float | None = Field(None, description="2theta zero shift (deg), added to calculated positions.")
    displacement_um: float | None = Field(None, description=(
        "Sample displacement (um). debye_scherrer/transmission: towards the flat area detector along the beam, "
        "d2theta = -(s/D) sin 2theta cos 2theta; bragg_brentano: specimen displacement (GSAS-II Shift), "
        "d2theta = -2 s cos(theta)/R."))
    distance_mm: float | None = Field(None, description="Sample-detector distance for the displacement term (mm; debye_scherrer, transmission).")
    sh_l: float | None = Field(
        None, ge=0, le=0.1,
        description="GSAS-II SH/L = S/L + H/L: Finger-Cox-Jephcoat axial-divergence low-angle asymmetry (0 = symmetric peaks).")
    geometry: Literal["debye_scherrer", "bragg_brentano", "transmission"] = Field(
        "debye_scherrer", description="Diffraction geometry: debye_scherrer (capillary, area detector; the default), "
        "bragg_brentano (laboratory reflection: displacement ~ cos(theta), transparency), transmission (flat "
        "plate normal to the beam: pellets, coin and pouch cells).")
    absorption_muR: float | None = Field(None, ge=0, le=10, description="debye_scherrer: cylinder mu*R (cylinder transmission factor); none = no absorption.")
    absorption_mut: float | None = Field(None, ge=0, le=10, description="transmission: plate mu*t (flat-plate transmission factor, 2theta < 90 deg).")
    transparency_mm: float | None = Field(None, ge=0, description="bragg_brentano: specimen transparency 1/mu_eff (mm), d2theta = -sin(2theta)/(2 mu_eff R).")
    goniometer_radius_mm: float | None = Field(None, gt=0, description="bragg_brentano: goniometer radius R (mm); default 240.")
    polarization: float | None = Field(None, ge=0, le=1, description=(
        "GSAS-II Polariz. applied to the calculated intensities (P + (1-P) cos^2 2theta: 0.5 unpolarised tube, "
        "1/(1+cos^2 2theta_m) behind a monochromator); none = already divided out (integrated 2D data), or for "
        "bragg_brentano data the instrument file's Polariz. (docs/refinement.md section 3d)."))
    kalpha2: KAlpha2Spec | None = Field(
        None, description="Laboratory Ka doublet: every reflection also at the Ka2 wavelength, sharing its intensity "
        "(x ratio); set from the recipe's top-level kalpha2 or an .instprm with Lam1/Lam2.")
    refine: list[ProfileName] = Field(default_factory=list, description="Profile parameters to refine.")

    @model_validator(mode="after")
    def _geometry_terms(self) -> "ProfileSpec":
        belongs = {"absorption_muR": "debye_scherrer", "absorption_mut": "transmission",
                   "transparency_mm": "bragg_brentano", "goniometer_radius_mm": "bragg_brentano"}
        for key, geometry in belongs.items():
            if self.geometry != geometry and (getattr(self, key) is not None or key in self.refine):
                raise ValueError(f"profile.{key} belongs to geometry {geometry} (geometry is {self.geometry})")
        return self


class HumpSpec(_Strict):
    """A broad background hump (amorphous carbon, electrolyte, window) at a refinable position."""

    center_deg: float = Field(..., description="Centre (deg 2theta).")
    fwhm_deg: float = Field(1.0, gt=0, description="FWHM (deg 2theta).")
    eta: float = Field(0.5, ge=0, le=1, description="Lorentzian fraction.")
    area: float | None = Field(None, description="Start area (intensity x deg); solved linearly anyway.")
    refine: list[HumpName] = Field(default_factory=lambda: ["area"], description="Refined hump parameters (area is always linear).")


class BackgroundSpec(_Strict):
    """Background: Chebyshev polynomial (first kind) over the fitted range, plus optional humps."""

    chebyshev: int = Field(6, ge=1, le=36, description="Number of Chebyshev coefficients (GSAS-II 'chebyschev' count): bkg_0..bkg_{n-1}.")
    humps: list[HumpSpec] = Field(default_factory=list, description="Broad pseudo-Voigt humps (bkg_hump<i>_*).")


_SITE_REFINE = re.compile(r"^(x|y|z|occ|occ_[A-Z][a-z]?|biso_A2)$")


class SiteSpec(_Strict):
    """Start values and refined parameters of one site (``sites: {LABEL: {...}}`` of a phase).

    Refined names: ``x``, ``y``, ``z`` (only the coordinates the site symmetry leaves free; a
    coordinate tied to a free one, y of ``x, 2x, z``, follows it), ``occ`` (a single-species site's
    occupancy, or all species of a mixed site scaled together), ``occ_<El>`` (one species of a
    mixed site, e.g. ``occ_Ni``), ``biso_A2``. Parameters ``<phase>_<site>_<name>``."""

    x: float | None = Field(None, description="Start x (fractional).")
    y: float | None = Field(None, description="Start y (fractional).")
    z: float | None = Field(None, description="Start z (fractional).")
    occ: float | None = Field(None, ge=0, description="Start occupancy (single-species site).")
    biso_A2: float | None = Field(None, ge=0, description="Start isotropic B (A^2).")
    refine: list[str] = Field(default_factory=list, description="Refined site parameters: x, y, z, occ, occ_<El>, biso_A2.")

    @field_validator("refine")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not _SITE_REFINE.match(n)]
        if bad:
            raise ValueError(f"unknown site parameter(s) {bad}; allowed: x, y, z, occ, occ_<Element> (e.g. occ_Ni), biso_A2")
        return v


class OccupancySumSpec(_Strict):
    """Occupancies that keep a fixed sum: ``{terms: ["Li:Li", "Li:Ni"], total: 1.0}`` (``SITE:Element``;
    ``SITE`` alone for a single-species site). Every term but the last is refined (``occ`` /
    ``occ_<El>`` of its site in ``sites``, or added here); the last is ``total`` minus the others,
    exactly. Li/Ni exchange between 3a and 3b: ``{terms: ["TM:Ni", "Li:Ni"], total: 0.83}``."""

    terms: list[str] = Field(..., min_length=2, description="SITE:Element terms; the last one follows.")
    total: float = Field(..., ge=0, description="The fixed sum of the occupancies.")


class MarchDollaseSpec(_Strict):
    """March-Dollase preferred orientation (GSAS-II MD): ``{axis: [0, 0, 1], ratio: 1.0}``; parameter
    ``<phase>_md_ratio`` (refine ``md_ratio``). ratio < 1: platelets normal to the axis lying flat."""

    axis: tuple[int, int, int] = Field((0, 0, 1), description="Preferred-orientation axis [h, k, l] (reciprocal lattice).")
    ratio: float = Field(1.0, gt=0, description="Start March-Dollase ratio r (1 = random powder).")

    @field_validator("axis")
    @classmethod
    def _axis(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if tuple(v) == (0, 0, 0):
            raise ValueError("march_dollase.axis must not be [0, 0, 0]")
        return v


class SphericalHarmonicsSpec(_Strict):
    """Spherical-harmonics texture with cylindrical sample symmetry (GSAS-II SH, cylindrical):
    ``{order: 4}``; coefficients ``<phase>_sh_C<l>_<j>`` (refine ``sh_texture``), the texture
    index ``<phase>_texture_index`` reported (see `insitu_xrd.core.texture`)."""

    order: int = Field(..., ge=2, le=12, description="Highest (even) harmonic order l.")
    coefficients: dict[str, float] = Field(default_factory=dict, description="Start coefficients {C2_1: ..., C4_1: ...} (0).")

    @field_validator("order")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"spherical_harmonics.order must be even (2, 4, ..., 12), got {v}")
        return v


class TextureSpec(_Strict):
    """Preferred orientation of a phase (multiplies its structure-factor intensities): one model."""

    march_dollase: MarchDollaseSpec | None = Field(None, description="March-Dollase model: {axis: [h, k, l], ratio: r}.")
    spherical_harmonics: SphericalHarmonicsSpec | None = Field(
        None, description="Spherical harmonics, cylindrical sample symmetry: {order: N} (even N).")

    @model_validator(mode="after")
    def _one(self) -> "TextureSpec":
        if (self.march_dollase is None) == (self.spherical_harmonics is None):
            raise ValueError("texture: give exactly one of march_dollase or spherical_harmonics")
        return self


class PhaseSpec(_Strict):
    """One phase: built-in ``template`` or ``cif`` file (read by the caller), start values, refine list.

    Site parameters (``o_z``, ``li_occupancy``, ``ni_li_mixing``, ``biso_*_A2``) exist for the
    ``nmc811`` template; ``biso_A2`` (one B for every site) for any phase. ``optional: true`` phases
    are left out of a fit unless the caller activates them (the pipeline adds H3 when justified).
    """

    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9]*$", description="Phase name; parameter prefix (H2 -> H2_a). Letters/digits only.")
    template: str | None = Field(None, description=f"Built-in template: {', '.join(TEMPLATE_NAMES)}.")
    cif: str | None = Field(None, description="CIF file of the phase (read by the caller, passed as Refinement(phases=...)).")
    a: float | None = Field(None, gt=0, description="Start a (A).")
    b: float | None = Field(None, gt=0, description="Start b (A), orthorhombic and lower only.")
    c: float | None = Field(None, gt=0, description="Start c (A).")
    alpha: float | None = Field(None, gt=0, lt=180, description="Start alpha (deg), rhombohedral, monoclinic (a unique) and triclinic.")
    beta: float | None = Field(None, gt=0, lt=180, description="Start beta (deg), monoclinic (b unique) and triclinic.")
    gamma: float | None = Field(None, gt=0, lt=180, description="Start gamma (deg), monoclinic (c unique) and triclinic.")
    li_occupancy: float | None = Field(None, ge=0, le=1, description="nmc811: Li occupancy of the 3b site.")
    ni_li_mixing: float | None = Field(None, ge=0, le=0.5, description="nmc811: Ni fraction on the Li (3b) site.")
    o_z: float | None = Field(None, gt=0.2, lt=0.3, description="nmc811: O z on 6c.")
    biso_A2: float | None = Field(None, ge=0, description="One isotropic B (A^2) for every site (overrides the template's).")
    mustrain: float = Field(1000.0, ge=0, description="Isotropic microstrain (1e-6, GSAS-II mu-strain).")
    size_um: float | None = Field(None, gt=0, description="Isotropic crystallite size (um); none = no size broadening unless refined (then starts at 1 um).")
    mustrain_mix: float = Field(1.0, ge=0, le=1, description="Lorentzian fraction of the microstrain broadening (GSAS-II mx).")
    size_mix: float = Field(1.0, ge=0, le=1, description="Lorentzian fraction of the size broadening.")
    mustrain_model: Literal["isotropic", "uniaxial", "generalized"] = Field(
        "isotropic", description="Microstrain model (GSAS-II): isotropic; uniaxial (mustrain = equatorial, "
        "mustrain_axial along mustrain_axis); generalized (Stephens 1999: the Laue class's S_HKL terms, "
        "parameters <phase>_mustrain_S400 ...).")
    mustrain_axis: tuple[int, int, int] = Field((0, 0, 1), description="Unique axis [h, k, l] (reciprocal lattice) of the uniaxial microstrain.")
    mustrain_axial: float | None = Field(None, ge=0, description="Start microstrain along the axis (1e-6); default: mustrain.")
    mustrain_S: dict[str, float] = Field(default_factory=dict, description=(
        "Start Stephens coefficients {S400: ..., ...} (GSAS-II units); missing ones: the isotropic equivalent of mustrain."))
    size_model: Literal["isotropic", "uniaxial"] = Field(
        "isotropic", description="Size model (GSAS-II): isotropic; uniaxial (size_um = equatorial, size_axial_um along size_axis).")
    size_axis: tuple[int, int, int] = Field((0, 0, 1), description="Unique axis [h, k, l] of the uniaxial size.")
    size_axial_um: float | None = Field(None, gt=0, description="Start size along the axis (um); default: size_um (or 1).")
    texture: TextureSpec | None = Field(None, description=(
        "Preferred orientation: {march_dollase: {axis: [0, 0, 1], ratio: 1.0}} (refine md_ratio) or "
        "{spherical_harmonics: {order: 4}} (refine sh_texture)."))
    scale: float | None = Field(None, gt=0, description="Start scale (solved linearly; only informational).")
    lattice_bound_pct: float = Field(3.0, gt=0, le=20, description="Lattice lengths are bounded to +/- this % of the start values.")
    refine: list[PhaseName] = Field(default_factory=lambda: ["a", "c", "scale"], description=(
        "Refined phase parameters. Lattice names a b c alpha beta gamma: those the crystal system ties or fixes "
        "follow the free ones (b = a in a hexagonal cell) and are ignored here."))
    sites: dict[str, SiteSpec] = Field(default_factory=dict, description="Per-site start values and refined parameters (site labels of the CIF or template).")
    biso_groups: list[list[str]] = Field(default_factory=list, description=(
        "Sites sharing one refined B: [[TM, O], ...]; the parameter is <phase>_<first site>_biso_A2."))
    occupancy_sums: list[OccupancySumSpec] = Field(default_factory=list, description="Occupancies with a fixed sum (see OccupancySumSpec).")
    optional: bool = Field(False, description="Left out of fits unless activated by the caller (e.g. H3).")
    hold: Literal["auto", "never"] = Field(
        "auto", description="auto: the fit holds this phase's lattice/profile parameters at their start values on a "
        "pattern where its scale is not significant (|S| < 3 statistical esd, not inflated by the serial-correlation "
        "factor); never: they are always refined.")
    role: Literal["electrode"] | None = Field(
        None, description="'electrode': a phase of the electrode material (cathode_fraction, strain curves, the in-situ "
        "figures); none given in the recipe: the nmc811 template's phases.")

    @model_validator(mode="after")
    def _source(self) -> "PhaseSpec":
        if (self.template is None) == (self.cif is None):
            raise ValueError(f"phase {self.name!r}: give exactly one of 'template' or 'cif'")
        needs = {"mustrain_axial": ("mustrain_model", "uniaxial"), "mustrain_S": ("mustrain_model", "generalized"),
                 "size_axial_um": ("size_model", "uniaxial")}
        for name, (key, model) in needs.items():
            if name in self.refine and getattr(self, key) != model:
                raise ValueError(f"phase {self.name!r}: refine {name} needs {key}: {model} (it is {getattr(self, key)})")
        if "md_ratio" in self.refine and (self.texture is None or self.texture.march_dollase is None):
            raise ValueError(f"phase {self.name!r}: refine md_ratio needs texture: {{march_dollase: {{axis: [h, k, l]}}}}")
        if "sh_texture" in self.refine and (self.texture is None or self.texture.spherical_harmonics is None):
            raise ValueError(f"phase {self.name!r}: refine sh_texture needs texture: {{spherical_harmonics: {{order: N}}}}")
        if tuple(self.mustrain_axis) == (0, 0, 0) or tuple(self.size_axis) == (0, 0, 0):
            raise ValueError(f"phase {self.name!r}: mustrain_axis / size_axis must not be [0, 0, 0]")
        if self.template is not None and self.template.lower() not in TEMPLATE_NAMES:
            raise ValueError(f"phase {self.name!r}: unknown template {self.template!r}; allowed: {', '.join(TEMPLATE_NAMES)}")
        is_nmc = self.template is not None and self.template.lower() == "nmc811"
        if not is_nmc:
            bad = [p for p in self.refine if p in NMC_SITE_PARAMS]
            bad += [k for k in ("li_occupancy", "ni_li_mixing", "o_z") if getattr(self, k) is not None]
            if bad:
                raise ValueError(f"phase {self.name!r}: {sorted(set(bad))} exist only for template nmc811")
        return self


class DiffuseSpec(_Strict):
    """Broad pseudo-Voigt tied to reflections of a phase; its centre is the mean position of the
    reflections (following the lattice) plus ``offset_deg``. Parameters ``diff_<phase>_<hkl...>_*``."""

    phase: str = Field(..., description="Phase whose reflections carry this component.")
    reflections: list[str] = Field(..., min_length=1, description="Reflection labels, e.g. ['104'] or ['108', '110'].")
    fwhm_deg: float = Field(0.3, gt=0, description="Start FWHM (deg 2theta).")
    fwhm_range_deg: tuple[float, float] | None = Field(
        None, description="Bounds [lo, hi] of the refined FWHM (deg); default [fwhm_deg/4, 4 fwhm_deg] (keeps the "
        "component broad: narrower it would mimic a Bragg peak, broader the background).")
    eta: float = Field(0.5, ge=0, le=1, description="Lorentzian fraction.")
    offset_deg: float = Field(0.0, description="Start offset from the reflections' mean position (deg).")
    max_offset_deg: float = Field(0.3, gt=0, description="Bound on |offset_deg| (deg).")
    area: float | None = Field(None, description="Start area (intensity x deg); solved linearly anyway.")
    refine: list[DiffuseName] = Field(default_factory=lambda: ["area", "fwhm_deg", "offset_deg"], description="Refined parameters.")

    @model_validator(mode="after")
    def _fwhm_range(self) -> "DiffuseSpec":
        if self.fwhm_range_deg is not None:
            lo, hi = self.fwhm_range_deg
            if not (0 < lo <= self.fwhm_deg <= hi):
                raise ValueError(f"fwhm_range_deg {list(self.fwhm_range_deg)} must satisfy 0 < lo <= fwhm_deg ({self.fwhm_deg}) <= hi")
        return self

    @property
    def fwhm_bounds_deg(self) -> tuple[float, float]:
        """Bounds of the refined FWHM (deg)."""
        if self.fwhm_range_deg is not None:
            return (float(self.fwhm_range_deg[0]), float(self.fwhm_range_deg[1]))
        return (self.fwhm_deg / 4.0, self.fwhm_deg * 4.0)

    @property
    def label(self) -> str:
        return f"{self.phase}_{'_'.join(self.reflections)}"


class RefinementSpec(_Strict):
    """The ``refinement:`` section of a recipe.

    mode: ``lebail`` (reflection intensities extracted iteratively, no structure) or ``rietveld``
    (structure-factor intensities, one scale per phase). In ``lebail`` mode phase fractions are
    still reported (``phase_fraction_step``: a structure-factor scale fit with lattice and profile
    fixed at the Le Bail result).
    """

    mode: Literal["lebail", "rietveld"] = Field("rietveld", description="Refinement mode.")
    range_2theta_deg: tuple[float, float] | None = Field(None, description="Fitted 2theta range (deg); default: the whole pattern.")
    exclude_2theta_deg: list[tuple[float, float]] = Field(default_factory=list, description="Excluded 2theta regions [[lo, hi], ...] (deg).")
    background: BackgroundSpec = Field(default_factory=BackgroundSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    phases: list[PhaseSpec] = Field(..., min_length=1)
    diffuse: list[DiffuseSpec] = Field(default_factory=list)
    lebail_cycles: int = Field(8, ge=1, le=50, description="Maximum Le Bail intensity-extraction cycles (cold start, when "
                               "the Pawley polish has not converged in 8 steps or is off).")
    max_nfev: int = Field(400, ge=10, description="Maximum function evaluations per nonlinear stage.")
    pawley_polish: bool = Field(
        True,
        description="lebail mode: after the Le Bail intensity extraction take damped Gauss-Newton steps on the joint "
        "problem (intensities included) to reach the least-squares optimum where reflections overlap (false: Le Bail "
        "cycles only).",
    )
    phase_fraction_step: bool = Field(True, description="lebail mode: run the structure-factor scale step to report phase fractions.")
    constraints: dict[str, str] = Field(
        default_factory=dict,
        description="lmfit expressions tying nonlinear parameters, e.g. {H3_mustrain: 'H2_mustrain', H3_size_um: "
        "'H2_size_um'}: the parameter follows the expression instead of being refined (skipped while its phase is "
        "inactive). Linear parameters (scales, background, areas) cannot be constrained.")
    limits: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict,
        description="Bounds [min, max] (null = unbounded side) overriding the defaults, e.g. {H2_mustrain: [0, 4000]}.")
    sigma: Literal["auto", "poisson", "unit", "from_file"] = Field(
        "auto",
        description="Weights 1/sigma^2: from_file (the data's esds; an error without them), poisson (sqrt of the "
        "counts; background-subtracted data with negative points: sqrt(max(I, 0) + s0^2), s0 the noise of the "
        "points below zero), unit (1 everywhere), auto (from_file when the data have esds, else poisson). The "
        "choice is reported (FitResult.sigma_source, results attrs sigma_source).")
    cell_lines: Literal["auto", "off"] = Field(
        "auto",
        description="Series only (run, watch): auto finds diffraction lines of the cell (current collectors, casing, "
        "windows, binder, carbon, separator) in the residual of the first frames, lines no listed phase indexes that "
        "are there from the start and do not move; names those a library component explains and adds them to the "
        "refinement (crystalline ones as phases, line lists and unknown lines as fixed-position peaks with a free "
        "area); lines that appear later are never absorbed but reported. off: none of this. A component listed "
        "among the phases is not added again (see insitu_xrd.pipeline.sequential.cell_lines).")
    resonant_scattering: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Structure factors with the resonant f' + i f'' of every species at the data's (Ka1) wavelength "
        "(Chantler, xraydb; GSAS-II always adds Cromer-Liberman's). Needed for laboratory Cu/Co/Fe/Mo Ka data of "
        "transition-metal compounds (Ni, Co, Mn at Cu Ka: NMC811 intensities move by up to ~40 % relative to one "
        "another); below 1 % for them at ~100 keV. auto: on for wavelengths above 0.5 A (laboratory anodes, "
        "synchrotron energies below 25 keV), off below (high-energy synchrotron: the earlier model); on / off: always.")
    esd_correction: Literal["durbin_watson", "none"] = Field(
        "durbin_watson",
        description="Inflate esds for serially correlated residuals (AR(1) factor from the Durbin-Watson statistic, after Berar & Lelann 1991).",
    )

    @field_validator("cell_lines", "resonant_scattering", mode="before")
    @classmethod
    def _yaml_off(cls, v: object, info: ValidationInfo) -> object:
        # YAML 1.1 reads an unquoted off/on as false/true
        on = "on" if info.field_name == "resonant_scattering" else "auto"
        return {False: "off", True: on}.get(v, v) if isinstance(v, bool) else v

    @field_validator("range_2theta_deg")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0 < v[0] < v[1] < 180):
            raise ValueError(f"range_2theta_deg {list(v)} must be [lo, hi] with 0 < lo < hi < 180")
        return v

    @field_validator("exclude_2theta_deg")
    @classmethod
    def _excl(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for lo, hi in v:
            if not lo < hi:
                raise ValueError(f"exclude_2theta_deg region [{lo}, {hi}] must have lo < hi")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "RefinementSpec":
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"phase names must be unique; repeated: {dup}")
        if self.mode == "lebail":
            # Le Bail intensities absorb texture and absorption: they enter only the phase-fraction step
            bad = [n for n in ("absorption_muR", "absorption_mut") if n in self.profile.refine]
            bad += [f"{p.name}.{n}" for p in self.phases for n in ("md_ratio", "sh_texture") if n in p.refine]
            if bad:
                raise ValueError(f"{bad} are refined in rietveld mode only (in lebail mode the extracted intensities "
                                 "absorb them; their fixed values enter the phase-fraction step)")
        for d in self.diffuse:
            if d.phase not in names:
                raise ValueError(f"diffuse component refers to unknown phase {d.phase!r}; phases: {names}")
        return self

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, tuple[float | None, float | None]]) -> dict[str, tuple[float | None, float | None]]:
        for name, (lo, hi) in v.items():
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"limits.{name} [{lo}, {hi}] must have min < max")
        return v

    def phase(self, name: str) -> PhaseSpec:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)


#: ``resonant_scattering: auto`` turns f', f'' on above this wavelength (A): laboratory anodes and
#: synchrotron energies below ~25 keV, where they move the transition metals' intensities by
#: percents; at high energies they are below 1 % for them and the earlier model is kept
RESONANT_AUTO_MIN_WAVELENGTH_A = 0.5


def resonant_on(setting: str, wavelength_A: float) -> bool:
    """Whether a fit at ``wavelength_A`` (A) uses resonant scattering under ``setting``
    (``refinement.resonant_scattering``: auto, on, off)."""
    if setting == "auto":
        return float(wavelength_A) > RESONANT_AUTO_MIN_WAVELENGTH_A
    return setting == "on"
