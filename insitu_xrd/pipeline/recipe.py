"""The recipe file: one YAML document that drives the whole pipeline (``insitu-xrd run/watch``).

Every section is a pydantic model with ``extra="forbid"``: a misspelt key is an error that names
the key, the recipe file and the allowed keys. Relative paths are relative to the recipe file's
folder (``Recipe.base_dir``); :meth:`Recipe.path` resolves them.

Minimal recipe (as written by ``insitu-xrd simulate``)::

    name: nmc811-charge
    wavelength_A: 0.1173
    calibration: {image: calib/ceo2.tif, calibrant: CeO2, detector: Perkin, distance_mm: 1000,
                  poni: calib/geometry.poni}
    frames: {files: "frames/*.tif", time_source: header}
    integration: {npt: 2750, unit: 2th_deg, range: [1.0, 12.0], polarization: 0.99}
    refinement: {...}                       # insitu_xrd.fit.spec.RefinementSpec
    sequential: {direction: forward}
    echem: {file: cycler.csv, columns: {...}, active_mass_mg: 4.0, theoretical_capacity_mAh_g: 275,
            x_start: 1.0}
    strain: {reference: first}
    outputs: {dir: results}
    fea: {geometry: {n_grains: 40}, time: {soc_end: 0.55}}   # optional: FEA of particle cracking

See docs/recipes.md for every key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from insitu_xrd.errors import RecipeError
from insitu_xrd.fit.spec import KAlpha2Spec, RefinementSpec

__all__ = [
    "CalibrationSection",
    "FramesSection",
    "PatternsSection",
    "IntegrationSection",
    "OptionalPhaseTest",
    "DivergenceSection",
    "SequentialSection",
    "EchemSection",
    "StrainSection",
    "OutputsSection",
    "FEAGeometrySection",
    "FEATransportSection",
    "FEAElasticSection",
    "FEACohesiveSection",
    "FEATimeSection",
    "FEASection",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "check_fea_section",
    "fea_section_from_file",
    "section_hash",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationSection(_Strict):
    """Detector geometry: an existing PONI is reused; otherwise it is refined from ``image``."""

    image: str | None = Field(None, description="Calibrant image (TIFF/EDF/... readable by fabio), relative to the recipe.")
    calibrant: str = Field("CeO2", description="Calibrant name (CeO2, Ni, LaB6, Si, Al, any pyFAI calibrant) or a .D file.")
    detector: str = Field("Perkin", description="pyFAI detector name (Perkin = Perkin-Elmer 2048x2048, 200 um).")
    distance_mm: float | None = Field(None, gt=0, description="Rough sample-detector distance (mm); none = searched.")
    center_px: tuple[float, float] | None = Field(None, description="Rough beam centre [x, y] (pixels); none = searched.")
    wavelength_A: float | None = Field(None, gt=0, description="Wavelength of the calibrant image (A) if it differs from the recipe's (ex-situ calibration).")
    mask: str | None = Field(None, description="Mask image for the calibrant (non-zero = ignore).")
    binning: int | None = Field(None, ge=1, le=16, description="Pixel binning of the images relative to the detector's nominal shape (Perkin: 2 -> 1024 x 1024, 400 um); none = inferred from the image shape.")
    poni: str | None = Field(None, description="PONI file: reused when it exists, written by the calibration otherwise.")
    instrument_profile: Literal["auto", "fit", "off"] = Field(
        "auto", description="Instrument profile (U, V, W, X, Y, SH/L) from the calibrant image when the refinement names no "
        "profile.instrument file: auto = fitted when a phase refines microstrain or size (held in the fits; it is written to "
        "<outputs.dir>/instrument.instprm and the recipe's U..Y and their refine flags are not used), fit = always, "
        "off = never (the recipe's U..Y are used; the results then carry a microstrain_warning).")

    @model_validator(mode="after")
    def _need_one(self) -> "CalibrationSection":
        if self.image is None and self.poni is None:
            raise ValueError("give 'image' (to calibrate) or 'poni' (an existing geometry), or both")
        return self


class FramesSection(_Strict):
    """Detector frames of the in-situ series and their acquisition times."""

    files: str = Field(..., description="Glob pattern of the frames (e.g. frames/*.tif), a folder, or an HDF5/NeXus file; natural-sorted by name.")
    hdf5_dataset: str | None = Field(None, description="Dataset path of the image stack inside HDF5/NeXus files (default: auto-detected).")
    time_source: Literal["header", "sidecar", "period", "none"] | None = Field(
        None, description="Where the frame times come from; default: 'sidecar' if a sidecar is given, 'period' if period_s is given, else 'header'.")
    sidecar: str | None = Field(None, description="CSV with columns file,time_s (file names relative to the CSV's folder).")
    period_s: float | None = Field(None, gt=0, description="Constant frame period (s): time_s = index * period_s.")
    dark: str | None = Field(None, description="Dark image subtracted from every frame.")
    flat: str | None = Field(None, description="Flat-field image (frames are divided by it).")
    mask: str | None = Field(None, description="Mask image (non-zero = ignore pixel), combined with the detector's mask and gaps.")

    @model_validator(mode="after")
    def _source(self) -> "FramesSection":
        return _default_time_source(self)


def _default_time_source(section: Any) -> Any:
    """``time_source`` of a frames/patterns section defaulted from the keys given, and checked."""
    if section.time_source is None:
        section.time_source = "sidecar" if section.sidecar else ("period" if section.period_s else "header")
    if section.time_source == "sidecar" and not section.sidecar:
        raise ValueError("time_source 'sidecar' needs 'sidecar: <file.csv>'")
    if section.time_source == "period" and not section.period_s:
        raise ValueError("time_source 'period' needs 'period_s: <seconds>'")
    return section


class PatternsSection(_Strict):
    """1D patterns integrated elsewhere (beamline pipeline, Dioptas, GSAS-II, pyFAI scripts): the
    series of files that replaces ``frames`` + ``calibration`` + ``integration``."""

    files: str = Field(..., description="Glob pattern of the 1D pattern files (e.g. data/*.xye), or a folder (every file in it); natural-sorted by name.")
    format: Literal["auto"] = Field("auto", description="File format: auto = what the 1D reader (insitu_xrd.io.pattern_files.read_pattern_1d) finds from the file's name and content; every format it reads is accepted.")
    x_unit: Literal["2th_deg", "q_A^-1", "q_nm^-1"] | None = Field(None, description="x unit of column files whose header does not state it; default: from the header, else 2th_deg.")
    time_source: Literal["header", "sidecar", "period", "none"] | None = Field(
        None, description="Where the pattern times come from (header: a 'time_s=' or date line in the file's header); default: 'sidecar' if a sidecar is given, 'period' if period_s is given, else 'header'.")
    sidecar: str | None = Field(None, description="CSV with columns file,time_s (file names relative to the CSV's folder).")
    period_s: float | None = Field(None, gt=0, description="Constant pattern period (s): time_s = index * period_s.")

    @model_validator(mode="after")
    def _source(self) -> "PatternsSection":
        return _default_time_source(self)


class IntegrationSection(_Strict):
    """Azimuthal integration of every frame (pyFAI, Poisson error model)."""

    npt: int = Field(2750, ge=10, le=100000, description="Number of radial bins.")
    unit: Literal["2th_deg", "q_A^-1"] = Field("2th_deg", description="Radial unit.")
    range: tuple[float, float] | None = Field(None, description="Radial range [lo, hi] in the unit; none = full detector.")
    polarization: float | None = Field(0.99, ge=-1, le=1, description="Polarization factor (0.99 for horizontal synchrotron polarization); none = no correction.")
    sigma_clip: float | None = Field(None, gt=0, description="Sigma-clipping threshold (robust azimuthal outlier rejection, e.g. single-crystal spots); none = plain integration.")
    method: tuple[str, str, str] | None = Field(None, description="pyFAI method (split, algorithm, implementation); none = ('full', 'csc', 'cython').")
    auto_mask: bool = Field(True, description="Mask gap/dead/hot pixels found on the first frames.")
    # execution only (not part of the stage cache key through this section: exclude=True)
    engine: Literal["cython", "opencl"] = Field("cython", exclude=True, description="pyFAI engine: 'cython' (CPU) or 'opencl' (GPU through pyopencl; falls back to the CPU with a message when no device or no pyopencl).")
    batch_frames: int = Field(32, ge=1, le=100000, exclude=True, description="Frames per integration task (and per Zarr chunk); every frame gets its row in frame order first, and each batch is written into its rows as soon as it completes.")

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"range {list(v)} must be [lo, hi] with lo < hi")
        return v


class DaskLocalSection(_Strict):
    """A Dask ``LocalCluster`` started for the run (one thread per worker process)."""

    n_workers: int | None = Field(None, ge=1, le=1024, description="Worker processes; none = all cores.")
    memory_limit: str | None = Field(None, description="Per-worker memory limit (e.g. '4GB'); none = Dask's default.")


class ExecutorSection(_Strict):
    """Where integration tasks run: ``serial``, ``local`` processes (default, all cores) or ``dask``
    (an existing scheduler at ``address``, e.g. from dask-jobqueue, or a ``local`` cluster)."""

    type: Literal["serial", "local", "dask"] = Field("local", description="serial | local | dask.")
    workers: int | None = Field(None, ge=1, le=1024, description="local: worker processes; none = all cores.")
    address: str | None = Field(None, description="dask: scheduler address (tcp://host:8786).")
    local: DaskLocalSection | None = Field(None, description="dask: start a LocalCluster with these settings (when no address).")
    retries: int = Field(2, ge=0, le=10, description="dask: times a failed task is retried (a task whose worker died is also rescheduled by Dask).")

    @model_validator(mode="after")
    def _dask(self) -> "ExecutorSection":
        if self.type != "dask" and (self.address or self.local is not None):
            raise ValueError(f"'address' and 'local' are for executor type 'dask', not {self.type!r}")
        if self.address and self.local is not None:
            raise ValueError("give either 'address' (an existing Dask cluster) or 'local' (start one), not both")
        return self


class OptionalPhaseTest(_Strict):
    """When an ``optional: true`` phase (H3) is added to, or dropped from, the sequential fits."""

    f_test_alpha: float = Field(1e-3, gt=0, lt=0.5, description="Significance level of the F-test on the chi2 improvement from the extra parameters.")
    min_fraction_sigma: float = Field(3.0, ge=0, description="The optional phase's fraction must exceed this many esds to be added.")
    min_fraction: float = Field(0.01, ge=0, lt=1, description="... and this absolute fraction (0..1).")
    drop_fraction_sigma: float = Field(1.0, ge=0, description="An active optional phase is dropped when its fraction falls below this many esds ...")
    drop_fraction: float = Field(0.005, ge=0, lt=1, description="... or below this absolute fraction (0..1; hysteresis below min_fraction) ...")
    drop_after_frames: int = Field(2, ge=1, description="... for this many consecutive frames.")
    try_every: int = Field(1, ge=1, description="Test the optional phase every n-th frame while it is absent.")
    prescreen_sigma: float = Field(2.0, ge=0, description="Cheap matched-filter gate: the full fit with the optional phase runs only when its calculated pattern explains the residual at > this many sigma (0 = always run the full fit).")
    prescreen_fraction_factor: float = Field(0.25, ge=0, le=1, description="... and when the weight fraction that match implies exceeds this factor times min_fraction (0 = no fraction gate). The match underestimates the fraction (approximate lattice and width): 3.5-5x at the H3 onset of the simulated bare and coated charges, hence 1/4.")


class DivergenceSection(_Strict):
    """Detection of a diverged frame fit, which is then refit from the last good frame."""

    rwp_jump_factor: float = Field(1.5, gt=1, description="A fit whose Rwp exceeds this factor times the running median Rwp is suspect.")
    check_bounds: bool = Field(True, description="A lattice parameter at its bound marks the fit as suspect.")


class SequentialSection(_Strict):
    """Sequential refinement of all frames (each seeded from the previous result)."""

    direction: Literal["forward", "reverse"] = Field("forward", description="Order in which frames are fitted.")
    optional_phase: OptionalPhaseTest = Field(default_factory=OptionalPhaseTest)
    divergence: DivergenceSection = Field(default_factory=DivergenceSection)
    chunks: int = Field(1, ge=1, le=64, description="Independent chunks of frames (each cold-started, one overlap frame with the previous chunk).")
    workers: int = Field(1, ge=1, le=64, description="Processes running the chunks in parallel (without an executor section; with one, the chunks run on it).")
    checkpoint_every: int = Field(1, ge=1, description="Write the checkpoint (sequential.nc) after at least n new frames ...")
    checkpoint_interval_s: float = Field(10.0, ge=0, description="... and at least this many seconds after the previous write (an interruption loses at most this much fitting; 0 = after every n frames).")


class EchemSection(_Strict):
    """Cycler log aligned to the frames (voltage, capacity, Li content x, state of charge)."""

    file: str = Field(..., description="Cycler log file (CSV, BioLogic .mpr/.mpt, ...).")
    format: str = Field("auto", description="File format (auto = from the extension/content); see insitu_xrd.io.echem.")
    columns: dict[str, str] = Field(default_factory=dict, description="Column map {time_s, voltage_V, current_mA, capacity_mAh} -> names in the file.")
    active_mass_mg: float | None = Field(None, gt=0, description="Active material mass (mg) for specific capacity.")
    theoretical_capacity_mAh_g: float = Field(275.0, gt=0, description="Capacity of one Li per formula unit (mAh/g); x_li = x_start - Q/Q_theo.")
    x_start: float = Field(1.0, ge=0, le=2, description="Li content at the start of the log.")
    offset_s: float = Field(0.0, description="Cycler clock minus frame clock (s): added to frame times before interpolation.")


class StrainSection(_Strict):
    """Lattice strain curves relative to a reference state."""

    reference: Literal["first", "frame", "values"] = Field("first", description="Reference lattice: first frame, a given frame, or given values.")
    frame: int | None = Field(None, ge=0, description="reference: frame -> its index.")
    values: dict[str, float] | None = Field(None, description="reference: values -> {a: A, c: A} (per phase: {H2_a: ..., H2_c: ...}).")
    versus: Literal["x_li", "soc", "capacity_mAh_g", "time_s", "voltage_V", "frame"] = Field("x_li", description="Abscissa of the strain curves.")
    phase: str | None = Field(None, description="Phase whose lattice gives the strain (default: the first phase).")
    phases: list[str] | None = Field(None, description="Phases strained and fraction-averaged (default: the cathode phases, e.g. H2 and H3; cell lines are left out).")

    @model_validator(mode="after")
    def _ref(self) -> "StrainSection":
        if self.reference == "frame" and self.frame is None:
            raise ValueError("reference 'frame' needs 'frame: <index>'")
        if self.reference == "values" and not self.values:
            raise ValueError("reference 'values' needs 'values: {a: ..., c: ...}'")
        return self


class OutputsSection(_Strict):
    """Where results go and what is written."""

    dir: str = Field("results", description="Output folder (relative to the recipe).")
    figures: bool = Field(True, description="Write the standard figures (PNG).")
    figure_format: Literal["png", "pdf", "svg"] = Field("png", description="Figure file format.")
    report: bool = Field(True, description="Write report.md.")
    rietveld_frames: list[int] | None = Field(None, description="Frames whose Rietveld plot is drawn (default: first, H3 onset, last).")


# ---------------------------------------------------------------------------------------------
# fea: the chemo-mechanical particle model driven by the measured strain curves
#
# Every model key defaults to None = the model's own default (insitu_xrd.core.fea.FEAParams, listed
# in docs/recipes.md); the groups mirror FEAParams' groups and are converted with
# FEAParams.from_dict, whose range checks name the key.


class FEAGeometrySection(_Strict):
    """Quarter-disc secondary particle of Voronoi primary grains, optional coating shell."""

    radius_um: float | None = Field(None, gt=0, description="Secondary-particle radius (um).")
    n_grains: int | None = Field(None, ge=1, le=2000, description="Primary grains in the quarter disc.")
    seed: int | None = Field(None, ge=0, description="Seed of the grain seeds and orientations (same seed = same microstructure).")
    coating_um: float | None = Field(None, ge=0, description="Thickness of the isotropic coating shell outside radius_um (um); 0 = bare. `coated: true` sets 0.16 um unless given here.")
    mesh_size_um: float | None = Field(None, gt=0, description="Target triangle edge length (um), at most radius_um / 4.")
    lloyd_iterations: int | None = Field(None, ge=0, le=100, description="Lloyd relaxation steps of the grain seeds (more = more equiaxed grains).")
    mesher: str | None = Field(None, description="Mesh generator: auto (gmsh if installed, else builtin), gmsh, triangle or builtin.")


class FEATransportSection(_Strict):
    """Anisotropic Fickian Li diffusion and the surface flux per grain."""

    D_ab_m2_s: float | None = Field(None, gt=0, description="In-plane (ab) Li diffusivity (m^2/s).")
    D_c_over_D_ab: float | None = Field(None, gt=0, description="Ratio D_c / D_ab along the c axis (1).")
    D_coating_m2_s: float | None = Field(None, gt=0, description="Li diffusivity of the coating (m^2/s); none = D_ab.")
    c_max_mol_m3: float | None = Field(None, gt=0, description="Li concentration at x = 1 (mol/m^3).")
    rates_C: list[float] | None = Field(None, min_length=1, description="C-rates put on the surface grains (1/h), e.g. [1.0, 0.5, 0.1].")
    rate_rule: str | None = Field(None, description="How the rates go on the surface grains: shuffled (seeded permutation, each rate about equally often), cyclic (in order along the arc) or uniform (all rates_C[0]).")
    rate_seed: int | None = Field(None, ge=0, description="Seed of the shuffled rate assignment.")
    x_per_1C_hour: float | None = Field(None, gt=0, description="Li per formula unit removed in one hour at 1C (1).")
    surface_condition: str | None = Field(None, description="Outer-surface condition: kinetic (each grain delivers its rate while its surface can, then a flux that vanishes as the surface Li content -> 0; x stays in [0, 1]) or constant_flux (the seed paper's set-up; can drive x below 0).")
    kinetic_x_limit_1C: float | None = Field(None, gt=0, lt=1, description="Surface Li content at which a 1C facet reaches the kinetic limit (a facet at n C: n times it); kinetic only.")


class FEAElasticSection(_Strict):
    """Transversely isotropic stiffness of a grain (c = symmetry axis) and the coating."""

    C11_GPa: float | None = Field(None, gt=0, description="Stiffness C11 (GPa).")
    C12_GPa: float | None = Field(None, description="Stiffness C12 (GPa).")
    C13_GPa: float | None = Field(None, description="Stiffness C13 (GPa).")
    C33_GPa: float | None = Field(None, gt=0, description="Stiffness C33 (GPa).")
    C44_GPa: float | None = Field(None, gt=0, description="Stiffness C44 (GPa).")
    coating_E_GPa: float | None = Field(None, gt=0, description="Young's modulus of the coating (GPa).")
    coating_nu: float | None = Field(None, gt=-1, lt=0.5, description="Poisson ratio of the coating (1).")
    plane: str | None = Field(None, description="2-D assumption: strain (total eps_zz = 0) or stress (sigma_zz = 0).")


class FEACohesiveSection(_Strict):
    """Bilinear cohesive law on the grain boundaries and its iterations."""

    strength_MPa: float | None = Field(None, gt=0, description="Cohesive (peak) strength of a grain boundary (MPa).")
    fracture_energy_J_m2: float | None = Field(None, gt=0, description="Fracture energy per GB area (J/m^2).")
    penalty_Pa_m: float | None = Field(None, gt=0, description="Initial (penalty) stiffness K0 of an intact grain boundary (Pa/m); u0 = strength / K0.")
    residual_stiffness_ratio: float | None = Field(None, ge=0, lt=0.01, description="Stiffness a fully damaged boundary keeps, as a fraction of K0 (1).")
    max_iterations: int | None = Field(None, ge=1, le=10000, description="Secant (damage) iterations per time step at most.")
    tolerance: float | None = Field(None, gt=0, description="Convergence tolerance on max |Delta D| between iterations (1).")


class FEATimeSection(_Strict):
    """How far the charge is run and what is saved."""

    soc_end: float | None = Field(None, gt=0, le=2, description="State of charge at the end of the run, soc = x_start - mean x_li (1); must be < x_start.")
    n_steps: int | None = Field(None, ge=1, le=100000, description="Implicit-Euler time steps (equal dt).")
    n_snapshots: int | None = Field(None, ge=2, le=100001, description="Steps whose fields (x_li, stresses, damage) are saved, spread evenly, t = 0 and the last step included (<= n_steps + 1).")
    x_start: float | None = Field(None, gt=0, le=2, description="Li content of the pristine particle (Li per formula unit).")


class FEASection(_Strict):
    """FEA of intergranular cracking driven by the measured strain curves (``insitu-xrd fea``)."""

    strain: str | None = Field(None, description="Strain file that drives the model (strain.nc, strain_curve.csv or any CSV with x_li/soc, eps_a, eps_c; relative to the recipe); none = this run's own <outputs.dir>/strain/strain.nc.")
    coated: bool = Field(False, description="Coated particle: adds the default 160 nm coating shell unless geometry.coating_um is given.")
    output: str = Field("fea/fea.nc", description="FEA result NetCDF, relative to outputs.dir; figures go next to it.")
    display_soc: float | None = Field(None, gt=0, le=1.5, description="SoC of the maps (the nearest saved snapshot); none = 0.55 or the last snapshot.")
    animation: bool = Field(True, description="Write an animated GIF of x_li and damage over the snapshots (with outputs.figures).")
    geometry: FEAGeometrySection = Field(default_factory=FEAGeometrySection)
    transport: FEATransportSection = Field(default_factory=FEATransportSection)
    elastic: FEAElasticSection = Field(default_factory=FEAElasticSection)
    cohesive: FEACohesiveSection = Field(default_factory=FEACohesiveSection)
    time: FEATimeSection = Field(default_factory=FEATimeSection)

    def model_dict(self) -> dict[str, dict[str, Any]]:
        """The model keys given (None left out), nested by group, as FEAParams.from_dict takes them."""
        out: dict[str, dict[str, Any]] = {}
        for group in ("geometry", "transport", "elastic", "cohesive", "time"):
            given = getattr(self, group).model_dump(exclude_none=True)
            if given:
                out[group] = given
        return out

    def to_params(self) -> Any:
        """The :class:`insitu_xrd.core.fea.FEAParams` of this section (``coated`` applied).

        Raises:
            InsituXRDError: a value the model refuses (its message names the key).
        """
        from insitu_xrd.core.fea import FEAParams

        params = FEAParams.from_dict(self.model_dict())
        if self.coated and self.geometry.coating_um is None:
            params = params.coated()
        return params


class Recipe(_Strict):
    """A whole recipe. ``base_dir`` (not a key) is the recipe file's folder."""

    name: str = Field("insitu-xrd", description="Name of the experiment (report title).")
    wavelength_A: float = Field(..., gt=0, description="X-ray wavelength (A); Ka1 when kalpha2 is given.")
    kalpha2: KAlpha2Spec | None = Field(
        None, description="Laboratory Ka doublet: {wavelength_A: <Ka2, A>, ratio: <I(Ka2)/I(Ka1)>}, e.g. Cu {wavelength_A: "
        "1.5444, ratio: 0.5}; every reflection is also fitted at Ka2 (refinement.profile.kalpha2).")
    calibration: CalibrationSection | None = Field(None, description="Detector geometry; required with frames, not allowed with patterns.")
    frames: FramesSection | None = Field(None, description="Frames to integrate; none = a calibration-only recipe (or one with patterns).")
    patterns: PatternsSection | None = Field(None, description="1D patterns integrated elsewhere, instead of frames + calibration + integration.")
    integration: IntegrationSection = Field(default_factory=IntegrationSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection, description="Where the integration runs (serial, local processes, Dask); when given, also the segments of sequential.chunks > 1.")
    refinement: RefinementSpec | None = Field(None, description="Refinement section; none = stop after integration.")
    sequential: SequentialSection = Field(default_factory=SequentialSection)
    echem: EchemSection | None = None
    strain: StrainSection = Field(default_factory=StrainSection)
    outputs: OutputsSection = Field(default_factory=OutputsSection)
    fea: FEASection | None = Field(None, description="FEA of particle cracking after the strain stage; none = no FEA.")

    _base_dir: Path = Path(".")
    _source: str = "<recipe>"
    _instrument_note: str = ""  # what calibration.instrument_profile did ("" = nothing)

    @model_validator(mode="after")
    def _frames_or_patterns(self) -> "Recipe":
        """The data are 2D frames (with calibration and integration) or 1D patterns, never both."""
        if self.patterns is not None:
            both = [k for k in ("frames", "calibration", "integration") if k in self.model_fields_set]
            if both:
                raise ValueError(f"'patterns' (1D patterns integrated elsewhere) replaces 'frames', 'calibration' and "
                                 f"'integration'; remove {', '.join(repr(k) for k in both)} or 'patterns'")
        elif self.calibration is None:
            raise ValueError("missing required key 'calibration' (the detector geometry of the frames); a recipe "
                             "over 1D patterns integrated elsewhere gives 'patterns' instead")
        return self

    @model_validator(mode="after")
    def _kalpha2_to_refinement(self) -> "Recipe":
        """The top-level ``kalpha2`` is the refinement's doublet (``refinement.profile.kalpha2``)."""
        ref = self.refinement
        if self.kalpha2 is None or ref is None:
            return self
        if ref.profile.kalpha2 is not None and ref.profile.kalpha2 != self.kalpha2:
            raise ValueError("kalpha2 and refinement.profile.kalpha2 differ; give the doublet once (top-level kalpha2)")
        prof = ref.profile.model_copy(update={"kalpha2": self.kalpha2})
        self.refinement = ref.model_copy(update={"profile": prof})
        return self

    @model_validator(mode="after")
    def _instrument_from_calibrant(self) -> "Recipe":
        """``calibration.instrument_profile``: name ``<outputs.dir>/instrument.instprm`` as the
        refinement's instrument file (fitted on the calibrant image by the ``instrument`` stage)
        and hold U, V, W, X, Y, SH/L at it, when no instrument file is named and the refinement
        refines microstrain or size (``auto``) or always (``fit``)."""
        ref, cal = self.refinement, self.calibration
        if ref is None or cal is None or ref.profile.instrument or cal.instrument_profile == "off":
            return self
        broad = [f"{p.name} {'microstrain' if k == 'mustrain' else 'size'}" for p in ref.phases
                 for k in ("mustrain", "size_um") if k in p.refine]
        if cal.instrument_profile == "auto" and not broad:
            return self
        if not cal.image:
            if cal.instrument_profile == "fit":
                raise ValueError("calibration.instrument_profile 'fit' needs calibration.image (the calibrant to fit)")
            return self
        if cal.wavelength_A is not None and abs(cal.wavelength_A - self.wavelength_A) > 1e-4 * self.wavelength_A:
            if cal.instrument_profile == "fit":
                raise ValueError(f"calibration.instrument_profile 'fit': the calibrant image is at {cal.wavelength_A} A, "
                                 f"not the frames' {self.wavelength_A} A")
            return self
        held = ("U", "V", "W", "X", "Y", "sh_l")
        name = str(Path(self.outputs.dir) / "instrument.instprm")
        dropped = [n for n in held if n in ref.profile.refine]
        prof = ref.profile.model_copy(update={**{n: None for n in held}, "instrument": name,
                                              "refine": [n for n in ref.profile.refine if n not in held]})
        # a refined X or Y stood in for the sample's Lorentzian size broadening (1/cos theta, the
        # shape of X); held at the calibrant's value, that broadening needs the size term, or it
        # goes into the microstrain (+43 % on the simulator's 0.8 um crystallites, +2.5 % with it)
        sized: list[str] = []
        phases = list(ref.phases)
        constraints = dict(ref.constraints)
        if {"X", "Y"} & set(dropped):
            base = next((p for p in phases if not p.optional and "mustrain" in p.refine), None)
            for i, p in enumerate(phases):
                if "mustrain" in p.refine and "size_um" not in p.refine and p.size_um is None:
                    phases[i] = p.model_copy(update={"refine": list(p.refine) + ["size_um"]})
                    sized.append(p.name)
                    if p.optional and base is not None and base is not p and f"{p.name}_size_um" not in constraints \
                            and (p.template or "").lower() == (base.template or "").lower():
                        constraints[f"{p.name}_size_um"] = f"{base.name}_size_um"  # same particles
        self.refinement = ref.model_copy(update={"profile": prof, "phases": phases, "constraints": constraints})
        why = f"{', '.join(broad)} refined" if broad else "calibration.instrument_profile: fit"
        self._instrument_note = (
            f"instrument profile fitted on the calibrant image (calibration.instrument_profile: "
            f"{cal.instrument_profile}; {why}) -> {name}, held in the fits"
            + (f"; the recipe's {', '.join(dropped)} are not refined" if dropped else "")
            + (f"; size_um refined for {', '.join(sized)} (the sample's Lorentzian broadening the refined X/Y took up)"
               if sized else "")
            + " (calibration.instrument_profile: off keeps the recipe's profile)")
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def path(self, rel: str | Path | None) -> Path | None:
        """Resolve a recipe path (relative to the recipe's folder); None stays None."""
        if rel is None:
            return None
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    @property
    def output_dir(self) -> Path:
        return self.path(self.outputs.dir)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# loading and error messages


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model that owns the last element of ``loc`` (for unknown-key errors)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        cur = _unwrap(cur.model_fields[part].annotation)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return None


def _unwrap(annotation: Any) -> Any:
    """BaseModel class inside Optional[...] / list[...] annotations, else the annotation."""
    args = getattr(annotation, "__args__", None)
    if args:
        for a in args:
            inner = _unwrap(a)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] = Recipe) -> str:
    """One readable message: every problem with its dotted key, the file and the allowed values."""
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<top level>"
        typ = err.get("type", "")
        ctx = err.get("ctx") or {}
        if typ == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            msg = f"unknown key '{key}'"
            if allowed is not None:
                msg += f"; allowed keys here: {', '.join(allowed)}"
        elif typ == "missing":
            msg = f"missing required key '{key}'"
        elif typ == "literal_error":
            msg = f"key '{key}': got {err.get('input')!r}; allowed values: {ctx.get('expected', '?')}"
        else:
            text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            inp = err.get("input")
            shown = "" if isinstance(inp, dict) else f" (got {inp!r})"
            msg = f"key '{key}': {text}{shown}" if loc else text  # a whole-recipe rule names its keys
        lines.append(msg)
    return f"recipe {source}: " + "; ".join(lines)


def recipe_from_dict(data: dict[str, Any], base_dir: str | Path = ".", source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as a dict (paths relative to ``base_dir``); raises RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source}: the file must hold a mapping of sections (name, wavelength_A, calibration, frames, ...), got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None
    if recipe.fea is not None:
        check_fea_section(recipe.fea, source)
    recipe._base_dir = Path(base_dir).resolve()
    recipe._source = source
    return recipe


def check_fea_section(section: FEASection, source: str) -> Any:
    """The FEAParams of a recipe's ``fea:`` section; a value the model refuses raises RecipeError
    naming the recipe file and the key (the model's message names it)."""
    from insitu_xrd.errors import InsituXRDError

    try:
        return section.to_params()
    except RecipeError:
        raise
    except InsituXRDError as exc:
        raise RecipeError(f"recipe {source}: section 'fea': {exc}") from None


def _read_yaml(path: Path) -> Any:
    """The parsed YAML of a recipe file; a missing, unreadable or invalid file raises RecipeError."""
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"recipe {path}: cannot read: {exc}") from None


def fea_section_from_file(path: str | Path) -> FEASection:
    """The ``fea:`` section of a YAML file (a whole recipe, of which only ``fea:`` is read and
    checked, or a file holding just the section's keys); raises RecipeError naming file and key."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: the file must hold a mapping with an 'fea' section")
    if "fea" in data:
        block, prefix = data["fea"], ("fea",)
    elif set(data) <= set(FEASection.model_fields):
        block, prefix = data, ()
    else:
        raise RecipeError(f"recipe {path}: no 'fea' section (keys found: {', '.join(map(str, data))})")
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise RecipeError(f"recipe {path}: section 'fea' must be a mapping of keys, got {type(block).__name__}")
    try:
        section = FEASection.model_validate(block)
    except ValidationError as exc:
        msg = format_validation_error(exc, str(path), model=FEASection)
        if prefix:  # name the keys as they are written in the recipe
            msg = re.sub(r"key '([^']*)'", lambda m: f"key 'fea.{m.group(1)}'", msg)
        raise RecipeError(msg) from None
    check_fea_section(section, str(path))
    return section


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; every problem raises RecipeError naming file and key."""
    path = Path(path)
    data = _read_yaml(path)
    return recipe_from_dict(data, path.resolve().parent, str(path))


def section_hash(*parts: Any) -> str:
    """Stable short hash of recipe sections / input fingerprints (stage cache keys)."""

    def norm(x: Any) -> Any:
        if isinstance(x, BaseModel):
            return x.model_dump(mode="json")
        if isinstance(x, Path):
            return str(x)
        if isinstance(x, dict):
            return {str(k): norm(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        return x

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
