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

See docs/recipes.md for every key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from insitu_xrd.errors import RecipeError
from insitu_xrd.fit.spec import RefinementSpec

__all__ = [
    "CalibrationSection",
    "FramesSection",
    "IntegrationSection",
    "OptionalPhaseTest",
    "DivergenceSection",
    "SequentialSection",
    "EchemSection",
    "StrainSection",
    "OutputsSection",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
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
        if self.time_source is None:
            self.time_source = "sidecar" if self.sidecar else ("period" if self.period_s else "header")
        if self.time_source == "sidecar" and not self.sidecar:
            raise ValueError("time_source 'sidecar' needs 'sidecar: <file.csv>'")
        if self.time_source == "period" and not self.period_s:
            raise ValueError("time_source 'period' needs 'period_s: <seconds>'")
        return self


class IntegrationSection(_Strict):
    """Azimuthal integration of every frame (pyFAI, Poisson error model)."""

    npt: int = Field(2750, ge=10, le=100000, description="Number of radial bins.")
    unit: Literal["2th_deg", "q_A^-1"] = Field("2th_deg", description="Radial unit.")
    range: tuple[float, float] | None = Field(None, description="Radial range [lo, hi] in the unit; none = full detector.")
    polarization: float | None = Field(0.99, ge=-1, le=1, description="Polarization factor (0.99 for horizontal synchrotron polarization); none = no correction.")
    sigma_clip: float | None = Field(None, gt=0, description="Sigma-clipping threshold (robust azimuthal outlier rejection, e.g. single-crystal spots); none = plain integration.")
    method: tuple[str, str, str] | None = Field(None, description="pyFAI method (split, algorithm, implementation); none = ('full', 'csc', 'cython').")
    auto_mask: bool = Field(True, description="Mask gap/dead/hot pixels found on the first frames.")

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"range {list(v)} must be [lo, hi] with lo < hi")
        return v


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
    workers: int = Field(1, ge=1, le=64, description="Processes running the chunks in parallel.")
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


class Recipe(_Strict):
    """A whole recipe. ``base_dir`` (not a key) is the recipe file's folder."""

    name: str = Field("insitu-xrd", description="Name of the experiment (report title).")
    wavelength_A: float = Field(..., gt=0, description="X-ray wavelength (A).")
    calibration: CalibrationSection
    frames: FramesSection | None = Field(None, description="Frames to integrate; none = a calibration-only recipe.")
    integration: IntegrationSection = Field(default_factory=IntegrationSection)
    refinement: RefinementSpec | None = Field(None, description="Refinement section; none = stop after integration.")
    sequential: SequentialSection = Field(default_factory=SequentialSection)
    echem: EchemSection | None = None
    strain: StrainSection = Field(default_factory=StrainSection)
    outputs: OutputsSection = Field(default_factory=OutputsSection)

    _base_dir: Path = Path(".")
    _source: str = "<recipe>"

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
            msg = f"key '{key}': {text}{shown}"
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
    recipe._base_dir = Path(base_dir).resolve()
    recipe._source = source
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file; every problem raises RecipeError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise RecipeError(f"recipe {path}: cannot read: {exc}") from None
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
