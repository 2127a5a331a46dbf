"""Recipe validation: the documented shape works as written; every error names key, file, allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from insitu_xrd.errors import RecipeError
from insitu_xrd.pipeline.recipe import load_recipe, recipe_from_dict, section_hash

PROJECT = Path(__file__).resolve().parents[1]

BRIEF_RECIPE = """
name: nmc811-charge
wavelength_A: 0.1173
calibration: {image: calib/ceo2.tif, calibrant: CeO2, detector: Perkin, distance_mm: 1000,
              poni: calib/geometry.poni}          # poni is written by calibrate and reused
frames: {files: "frames/*.tif", time_source: header}   # or {sidecar: frames/times.csv} or {period_s: 10}
integration: {npt: 2750, unit: 2th_deg, range: [1.0, 12.0], polarization: 0.99}
refinement:
  phases:
    - {name: H2, template: nmc811, a: 2.872, c: 14.20, refine: [a, c, mustrain, scale]}
    - {name: H3, template: nmc811, a: 2.82, c: 14.00, refine: [a, c, mustrain, scale], optional: true}
sequential: {direction: forward}
echem: {file: cycler.csv, columns: {time_s: time_s, voltage_V: voltage_V, current_mA: current_mA,
        capacity_mAh: capacity_mAh}, active_mass_mg: 4.0, theoretical_capacity_mAh_g: 275, x_start: 1.0}
strain: {reference: first}
outputs: {dir: results}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_brief_recipe_validates_and_resolves_paths(tmp_path):
    r = load_recipe(_write(tmp_path, BRIEF_RECIPE))
    assert r.wavelength_A == 0.1173
    assert r.frames.time_source == "header"
    assert r.path(r.calibration.image) == tmp_path.resolve() / "calib/ceo2.tif"
    assert r.output_dir == tmp_path.resolve() / "results"
    assert r.refinement.phase("H3").optional
    assert r.echem.active_mass_mg == 4.0
    assert r.integration.range == (1.0, 12.0)


@pytest.mark.parametrize("frames, source", [
    ({"files": "f/*.tif", "sidecar": "f/times.csv"}, "sidecar"),
    ({"files": "f/*.tif", "period_s": 10}, "period"),
    ({"files": "f/*.tif"}, "header"),
])
def test_time_source_inferred(tmp_path, frames, source):
    d = yaml.safe_load(BRIEF_RECIPE)
    d["frames"] = frames
    assert recipe_from_dict(d, tmp_path).frames.time_source == source


def test_unknown_key_names_key_file_and_allowed_keys(tmp_path):
    p = _write(tmp_path, BRIEF_RECIPE.replace("time_source: header", "time_sorce: header"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "frames.time_sorce" in msg and str(p) in msg and "time_source" in msg and "sidecar" in msg


def test_bad_literal_lists_allowed_values(tmp_path):
    p = _write(tmp_path, BRIEF_RECIPE.replace("unit: 2th_deg", "unit: degrees").replace("direction: forward", "direction: sideways"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "integration.unit" in msg and "q_A^-1" in msg and "2th_deg" in msg
    assert "sequential.direction" in msg and "reverse" in msg


def test_nested_refinement_errors_named(tmp_path):
    d = yaml.safe_load(BRIEF_RECIPE)
    d["refinement"]["phases"][0]["refine"] = ["a", "cc"]
    d["sequential"]["optional_phase"] = {"alpha": 0.01}
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(d, tmp_path, "x.yaml")
    msg = str(e.value)
    assert "refinement.phases.0.refine.1" in msg and "'mustrain'" in msg
    assert "sequential.optional_phase.alpha" in msg and "f_test_alpha" in msg and "x.yaml" in msg


def test_missing_and_inconsistent_keys(tmp_path):
    d = yaml.safe_load(BRIEF_RECIPE)
    del d["wavelength_A"]
    d["calibration"] = {"calibrant": "CeO2"}
    d["strain"] = {"reference": "frame"}
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(d, tmp_path, "x.yaml")
    msg = str(e.value)
    assert "missing required key 'wavelength_A'" in msg
    assert "calibration" in msg and "'poni'" in msg
    assert "strain" in msg and "frame" in msg


def test_not_yaml_or_not_mapping(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_section_hash_changes_with_content_only(tmp_path):
    r1 = recipe_from_dict(yaml.safe_load(BRIEF_RECIPE), tmp_path)
    r2 = recipe_from_dict(yaml.safe_load(BRIEF_RECIPE), tmp_path)
    assert section_hash(r1.integration) == section_hash(r2.integration)
    d = yaml.safe_load(BRIEF_RECIPE)
    d["refinement"]["phases"][0]["a"] = 2.87
    r3 = recipe_from_dict(d, tmp_path)
    assert section_hash(r1.refinement) != section_hash(r3.refinement)
    assert section_hash(r1.integration) == section_hash(r3.integration)


@pytest.mark.parametrize("path", sorted((PROJECT / "recipes").glob("*.yaml")) + sorted((PROJECT / "insitu_xrd" / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    assert r.wavelength_A > 0


def test_shipped_recipes_exist():
    names = {p.name for p in (PROJECT / "recipes").glob("*.yaml")}
    assert {"demo.yaml", "calibrate_ceo2.yaml", "exsitu_ni.yaml"} <= names
    assert (PROJECT / "insitu_xrd" / "recipes" / "demo.yaml").is_file()


def _section_keys(model, prefix=""):
    """Dotted keys of a section model, nested sections included (e.g. optional_phase.min_fraction)."""
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _section_keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_recipe_key_is_documented():
    """docs/recipes.md documents every key of every section (refinement: docs/refinement.md)."""
    from insitu_xrd.pipeline import recipe as R

    doc = (PROJECT / "docs" / "recipes.md").read_text()
    missing = []
    for name in R.Recipe.model_fields:
        if f"`{name}`" not in doc:
            missing.append(name)
    # nested sections are documented by their dotted key (`local.n_workers`, `geometry.radius_um`)
    for section, prefix in ((R.CalibrationSection, ""), (R.FramesSection, ""), (R.PatternsSection, ""),
                            (R.IntegrationSection, ""),
                            (R.SequentialSection, ""), (R.EchemSection, ""), (R.StrainSection, ""),
                            (R.OutputsSection, ""), (R.ExecutorSection, ""), (R.DaskLocalSection, "local."),
                            (R.FEASection, ""), (R.FEAGeometrySection, "geometry."),
                            (R.FEATransportSection, "transport."), (R.FEAElasticSection, "elastic."),
                            (R.FEACohesiveSection, "cohesive."), (R.FEATimeSection, "time.")):
        for key in _section_keys(section):
            # a row may document several keys at once: `dark`, `flat`, `mask`
            if f"`{prefix}{key}`" not in doc:
                missing.append(f"{section.__name__}: {prefix}{key}")
    assert not missing, missing
