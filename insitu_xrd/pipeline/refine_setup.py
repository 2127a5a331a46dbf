"""Build a :class:`insitu_xrd.fit.Refinement` from a recipe's ``refinement:`` section.

The engine (``insitu_xrd.fit``) does no file I/O; this module resolves the files a spec names —
the GSAS-II instrument file (``profile.instrument``) and phase CIFs (``phases[].cif``) — relative to
the recipe's folder, and turns every problem into an :class:`InsituXRDError` that names the file
or key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from insitu_xrd.core.crystal import Phase
from insitu_xrd.core.pattern import Instrument, lab_anode_warning
from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.fit.spec import KAlpha2Spec, RefinementSpec

__all__ = [
    "RecipeRefinement",
    "format_validation_error",
    "parse_refinement_spec",
    "load_recipe_refinement",
    "resolve_path",
    "load_instrument",
    "load_cif_phases",
    "make_refinement",
    "wavelength_warning",
]


class RecipeRefinement:
    """The parts of a recipe the ``refine`` and ``instrument`` commands use.

    spec : the validated ``refinement:`` section.
    wavelength_A : the recipe's top-level ``wavelength_A`` (None if absent).
    base_dir : folder that relative file names in the recipe refer to (the recipe's folder).
    source : the recipe file.
    instrument_note : what :func:`insitu_xrd.pipeline.refine_instrument.calibrant_instrument` did ('' = nothing).
    """

    def __init__(self, spec: RefinementSpec, wavelength_A: float | None, base_dir: Path, source: Path | None) -> None:
        self.spec = spec
        self.wavelength_A = wavelength_A
        self.base_dir = base_dir
        self.source = source
        self.instrument_note = ""

    @property
    def calibrant_profile(self) -> bool:
        """The spec's instrument profile is a file (from a calibrant: ``profile.instrument``)."""
        return bool(self.spec.profile.instrument)


def format_validation_error(exc: ValidationError, where: str, prefix: str = "refinement") -> str:
    """One line per problem: ``<where>: key refinement.phases[0].refine[1]: <message>``."""
    parts = []
    for err in exc.errors():
        loc = prefix
        for item in err.get("loc", ()):
            loc += f"[{item}]" if isinstance(item, int) else f".{item}"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        parts.append(f"key {loc}: {msg}")
    return f"{where}: " + "; ".join(parts)


def parse_refinement_spec(section: Mapping[str, Any], where: str = "recipe") -> RefinementSpec:
    """Validate a ``refinement:`` mapping; errors become RecipeError naming the key."""
    if not isinstance(section, Mapping):
        raise RecipeError(f"{where}: 'refinement' must be a mapping, got {type(section).__name__}")
    try:
        return RefinementSpec.model_validate(dict(section))
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, where)) from None


def load_recipe_refinement(path: str | Path) -> RecipeRefinement:
    """Read the ``refinement:`` section and top-level ``wavelength_A`` of a recipe YAML file.

    The rest of the recipe is not looked at here (the pipeline validates the full recipe).
    """
    path = Path(path)
    if not path.is_file():
        raise InsituXRDError(f"recipe {path}: does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise InsituXRDError(f"recipe {path}: cannot be read ({exc})") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"recipe {path}: must be a YAML mapping of keys")
    if "refinement" not in data:
        raise RecipeError(f"recipe {path}: has no 'refinement' section (keys: {sorted(map(str, data))})")
    spec = parse_refinement_spec(data["refinement"], where=f"recipe {path}")
    if data.get("kalpha2") is not None:  # the top-level doublet is the refinement's (as in the full recipe)
        try:
            k2 = KAlpha2Spec.model_validate(data["kalpha2"])
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, f"recipe {path}", prefix="kalpha2")) from None
        spec = spec.model_copy(update={"profile": spec.profile.model_copy(update={"kalpha2": k2})})
    wl = data.get("wavelength_A")
    if wl is not None:
        try:
            wl = float(wl)
        except (TypeError, ValueError):
            raise RecipeError(f"recipe {path}: key wavelength_A: {wl!r} is not a number (A)") from None
        if not wl > 0:
            raise RecipeError(f"recipe {path}: key wavelength_A: must be positive (A), got {wl}")
    return RecipeRefinement(spec, wl, path.resolve().parent, path)


def resolve_path(name: str | Path, base_dir: str | Path, what: str) -> Path:
    """``name`` if absolute, else ``base_dir / name``; InsituXRDError naming it if it is missing."""
    p = Path(name).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    if not p.is_file():
        raise InsituXRDError(f"{what} {p}: does not exist (named as {str(name)!r}, relative to {base_dir})")
    return p


def load_instrument(spec: RefinementSpec, wavelength_A: float, base_dir: str | Path) -> Instrument | None:
    """The Instrument of ``profile.instrument`` (None when the spec names no file).

    The file's ``Polariz.`` is applied to the calculated intensities when the data are 1D
    laboratory reflection data, i.e. ``profile.geometry: bragg_brentano`` or the file's
    ``Diff-type`` is Bragg-Brentano (no integration divided the polarisation out; behind a
    monochromator it is not 0.5), and the recipe sets no ``profile.polarization`` (which wins).
    The fit says so (`insitu_xrd.fit.Refinement`: a note and the result's ``polarization`` attr)."""
    from insitu_xrd.io.instprm import instrument_from_instprm, read_instprm

    name = spec.profile.instrument
    if not name:
        return None
    path = resolve_path(name, base_dir, "instrument file (refinement.profile.instrument)")
    prm = read_instprm(path)
    bragg_brentano = (spec.profile.geometry == "bragg_brentano"
                      or str(prm.items.get("Diff-type", "")).replace("-", "").lower() == "braggbrentano")
    return instrument_from_instprm(prm, wavelength_A=wavelength_A,
                                   apply_polarization=bragg_brentano and spec.profile.polarization is None)


def load_cif_phases(spec: RefinementSpec, base_dir: str | Path) -> dict[str, Phase]:
    """{phase name: Phase} for every phase given as ``cif``."""
    from insitu_xrd.io.cif import read_cif_phase

    phases: dict[str, Phase] = {}
    for i, p in enumerate(spec.phases):
        if p.cif:
            path = resolve_path(p.cif, base_dir, f"CIF file (refinement.phases[{i}].cif)")
            phases[p.name] = read_cif_phase(path, name=p.name)
    return phases


def make_refinement(spec: RefinementSpec, wavelength_A: float, base_dir: str | Path = ".") -> Any:
    """Resolve the files named in ``spec`` relative to ``base_dir`` and build the Refinement.

    wavelength_A : X-ray wavelength of the data (A); must match an instrument file's Lam.
    Returns ``insitu_xrd.fit.Refinement``.
    """
    from insitu_xrd.fit import Refinement

    if wavelength_A is None or not wavelength_A > 0:
        raise InsituXRDError(f"wavelength_A must be a positive number (A), got {wavelength_A!r}")
    base = Path(base_dir)
    instrument = load_instrument(spec, wavelength_A, base)
    phases = load_cif_phases(spec, base)
    try:
        return Refinement(spec, float(wavelength_A), instrument=instrument, phases=phases or None)
    except InsituXRDError:
        raise
    except (KeyError, ValueError) as exc:
        # the engine checks the spec against the structures (e.g. a refine name a CIF phase lacks)
        raise RecipeError(f"refinement setup: {exc}") from None


def wavelength_warning(spec: RefinementSpec, wavelength_A: float, base_dir: str | Path = ".") -> str:
    """One line when ``wavelength_A`` is a laboratory anode's Ka1 and neither the spec
    (``profile.kalpha2``) nor its instrument file (``Lam2``) gives the Ka2 line; '' otherwise
    (`insitu_xrd.core.pattern.lab_anode_warning`). An instrument file that cannot be read is
    left to `make_refinement` to report."""
    if spec.profile.kalpha2 is not None:
        return ""
    if spec.profile.instrument:
        from insitu_xrd.io.instprm import read_instprm

        try:
            path = resolve_path(spec.profile.instrument, base_dir, "instrument file")
            if read_instprm(path).is_doublet:
                return ""
        except InsituXRDError:
            pass
    return lab_anode_warning(wavelength_A, None)
