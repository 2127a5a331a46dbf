"""``insitu-xrd fea``, ``fea-compare``, the recipe's ``fea:`` section chained by ``run``, and the
demo's FEA path, end to end with tiny model settings (4 grains, a coarse mesh, 8 steps).

The module fixture runs the real pipeline (``insitu-xrd run``) on a 4-frame simulated charge
(binning 2, no cell lines or diffuse bands, the true PONI so nothing is calibrated, a Le Bail fit
of H2 + optional H3, no figures or report) with a tiny ``fea:`` section: its ``strain/strain.nc`` is a real strain-stage output, and its ``fea/fea.nc`` shows the
FEA stage chained after the strain stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.errors import RecipeError
from insitu_xrd.io.fea_io import read_fea_result
from insitu_xrd.pipeline.recipe import fea_section_from_file, recipe_from_dict
from insitu_xrd.simulate.dataset import simulate_dataset

PROJECT = Path(__file__).resolve().parents[1]
TINY_SECTION = {"geometry": {"n_grains": 4, "mesh_size_um": 0.8, "seed": 3}, "time": {"n_steps": 8, "n_snapshots": 3}}
TINY_OPTS = ["--grains", "4", "--mesh-size-um", "0.8", "--seed", "3", "--steps", "8", "--snapshots", "3", "--no-progress"]


def _invoke(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    data = tmp_path_factory.mktemp("fea_run") / "data"
    simulate_dataset(data, frames=4, seed=3, binning=2, cell_lines=False, diffuse=False)
    rec = yaml.safe_load((PROJECT / "recipes" / "demo.yaml").read_text())
    rec["calibration"]["poni"] = "calib/ceo2_true.poni"  # reused: no calibration in this test
    # a quick refinement of the cathode only (no cell lines, diffuse bands or microstrain simulated
    # or refined): the strain stage's output is what this test needs, not the refinement's accuracy
    ref = rec["refinement"]
    ref["background"] = {"chebyshev": 4}
    ref.pop("diffuse", None)
    ref["phases"] = [{"name": "H2", "template": "nmc811", "a": 2.87, "c": 14.21, "refine": ["a", "c", "scale"]},
                     {"name": "H3", "template": "nmc811", "a": 2.82, "c": 14.00, "refine": ["a", "c", "scale"],
                      "optional": True}]
    rec["outputs"] = {"dir": "results", "figures": False, "report": True}
    rec["fea"] = TINY_SECTION
    recipe = data / "fea_recipe.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    res = _invoke(["run", recipe, "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"data": data, "recipe": recipe, "output": res.output, "out": data / "results"}


@pytest.fixture(scope="module")
def strain_csv(tmp_path_factory) -> Path:
    """A hand-made strain CSV (fractions): a shrinks 2 %, c rises 1.5 % then falls."""
    x = np.linspace(1.0, 0.2, 17)
    p = tmp_path_factory.mktemp("csv") / "curve.csv"
    rows = ["x_li,eps_a,eps_c"] + [f"{xi:.4f},{-0.025 * (1 - xi):.6f},{0.015 * np.sin(np.pi * (1 - xi) / 0.8):.6f}"
                                   for xi in x]
    p.write_text("\n".join(rows) + "\n")
    return p


# ---------------------------------------------------------------------------------------------
# insitu-xrd fea


def test_fea_from_a_csv_writes_result_figures_and_animation(strain_csv, tmp_path):
    out, figs = tmp_path / "bare.nc", tmp_path / "figs"
    res = _invoke(["fea", strain_csv, "-o", out, "--figures", figs, *TINY_OPTS])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    # the headline leads: dissipated energy and fully open length first, the law's D as damage onset
    lines = res.output.splitlines()
    assert lines[0].startswith("dissipated energy / Gamma") and lines[1].startswith("fully open GB length")
    assert lines[2].startswith("damage onset (D of the bilinear law)")
    assert "unchecked defaults" in res.output and "cohesive.strength_MPa" in res.output
    ds = read_fea_result(out)
    assert ds.attrs["label"] == "bare" and ds.attrs["strain_source"] == str(strain_csv)
    assert ds.attrs["strain_abscissa"] == "x_li" and ds.attrs["strain_note"] == ""
    assert int(ds.attrs["n_grains"]) == 4 and ds.sizes["snapshot"] == 3
    assert ds.sizes["step"] >= 8 and float(ds.attrs.get("coating_um", 0)) == 0
    d = ds["damage_mean"].values
    assert np.all(np.isfinite(d)) and np.all((d >= 0) & (d <= 1)) and np.all(np.diff(d) >= -1e-12)  # irreversible
    for name in ("bare_state.png", "bare_damage.png", "bare_rates.png", "bare.gif"):
        assert (figs / name).stat().st_size > 1000, name
    from PIL import Image

    with Image.open(figs / "bare.gif") as gif:
        assert gif.n_frames == ds.sizes["snapshot"]


def test_fea_from_pipeline_strain_nc_coated_with_recipe_and_compare(pipeline, strain_csv, tmp_path):
    strain_nc = pipeline["out"] / "strain" / "strain.nc"
    bare = tmp_path / "bare.nc"
    res = _invoke(["fea", strain_nc, "-o", bare, *TINY_OPTS])
    assert res.exit_code == 0, res.output
    coated, figs = tmp_path / "coated.nc", tmp_path / "figs"
    # parameters from the recipe's fea: section; options override it (--grains 5)
    res = _invoke(["fea", strain_nc, "-o", coated, "--coated", "--recipe", pipeline["recipe"], "--grains", "5",
                   "--figures", figs, "--no-animation", "--compare", bare, "--no-progress"])
    assert res.exit_code == 0, res.output
    c = read_fea_result(coated)
    assert float(c.attrs["coating_um"]) == pytest.approx(0.16) and int(c.attrs["n_grains"]) == 5
    assert c.attrs["label"] == "coated" and c.attrs["strain_source"] == str(strain_nc)
    assert (c["cell_grain"].values == -1).any()  # the coating shell
    assert {p.name for p in figs.iterdir()} == {"coated_state.png", "coated_damage.png", "coated_rates.png",
                                                "fea_compare.png", "fea_compare_damage.png"}
    # fea-compare draws the two side by side and their damage curves together
    cmp_dir = tmp_path / "cmp"
    res = _invoke(["fea-compare", bare, coated, "-o", cmp_dir, "--soc", "0.4", "--labels", "bare,coated"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith("coated / bare: dissipated energy ") and "fully open GB length" in first
    assert "damage onset (D of the bilinear law)" in res.output
    for name in ("fea_compare.png", "fea_compare_damage.png"):
        assert (cmp_dir / name).stat().st_size > 1000


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "missing column eps_c"),
    ("non_monotone", "not strictly monotone"),
    ("percent", "strain in percent"),
    ("no_file", "does not exist"),
    ("bad_recipe_key", "unknown key 'fea.geometry.n_grain'; allowed keys here: radius_um, n_grains"),
    ("bad_value", "time.soc_end"),
    ("compare_not_fea", "cannot be read as NetCDF"),
])
def test_bad_input_gives_one_line_and_exit_2(case, expected, strain_csv, tmp_path):
    src = strain_csv
    args: list = []
    if case == "missing_column":
        src = tmp_path / "s.csv"
        src.write_text("x_li,eps_a\n1,0\n0.5,-0.01\n")
    elif case == "non_monotone":
        src = tmp_path / "s.csv"
        src.write_text("x_li,eps_a,eps_c\n1,0,0\n0.6,-0.01,0.01\n0.8,-0.012,0.01\n")
    elif case == "percent":
        src = tmp_path / "s.csv"
        src.write_text("x_li,eps_a,eps_c\n1,0,0\n0.6,-1.2,1.5\n")
    elif case == "no_file":
        src = tmp_path / "absent.csv"
    elif case == "bad_recipe_key":
        r = tmp_path / "r.yaml"
        r.write_text(yaml.safe_dump({"fea": {"geometry": {"n_grain": 4}}}))
        args = ["--recipe", r]
    elif case == "bad_value":
        args = ["--soc-end", "1.5"]
    if case == "compare_not_fea":
        res = _invoke(["fea-compare", strain_csv, strain_csv, "-o", tmp_path / "cmp"])
    else:
        res = _invoke(["fea", src, "-o", tmp_path / "fea.nc", *TINY_OPTS, *args])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "fea.nc").exists()


# ---------------------------------------------------------------------------------------------
# recipe fea: section, chained by run


def _recipe(fea: dict) -> dict:
    return {"wavelength_A": 0.1173, "calibration": {"poni": "g.poni"}, "fea": fea}


def test_recipe_fea_section_names_key_file_and_allowed(tmp_path):
    rec = recipe_from_dict(_recipe({"coated": True, **TINY_SECTION}), tmp_path, "my.yaml")
    params = rec.fea.to_params()
    assert params.geometry.n_grains == 4 and params.geometry.coating_um == pytest.approx(0.16)
    assert params.time.n_steps == 8 and params.cohesive == type(params.cohesive)()  # the rest: model defaults
    with pytest.raises(RecipeError, match=r"recipe my\.yaml: unknown key 'fea\.cohesive\.strength'; allowed keys "
                                          r"here: strength_MPa, fracture_energy_J_m2"):
        recipe_from_dict(_recipe({"cohesive": {"strength": 50}}), tmp_path, "my.yaml")
    with pytest.raises(RecipeError, match=r"recipe my\.yaml: unknown key 'fea\.grains'; allowed keys here: strain, coated"):
        recipe_from_dict(_recipe({"grains": 4}), tmp_path, "my.yaml")
    with pytest.raises(RecipeError, match=r"recipe my\.yaml: key 'fea\.time\.n_steps': .*greater than or equal to 1"):
        recipe_from_dict(_recipe({"time": {"n_steps": 0}}), tmp_path, "my.yaml")
    # a value only the model can judge: its message names the key
    with pytest.raises(RecipeError, match=r"recipe my\.yaml: section 'fea': .*geometry\.mesher.*auto, gmsh"):
        recipe_from_dict(_recipe({"geometry": {"mesher": "netgen"}}), tmp_path, "my.yaml")
    # insitu-xrd fea --recipe reads the fea: section of a whole recipe or a file of fea keys
    f = tmp_path / "only_fea.yaml"
    f.write_text(yaml.safe_dump({"coated": True, "time": {"soc_end": 0.5}}))
    assert fea_section_from_file(f).to_params().time.soc_end == 0.5
    f.write_text(yaml.safe_dump({"time": {"soc_ende": 0.5}}))
    with pytest.raises(RecipeError, match=r"only_fea\.yaml: unknown key 'time\.soc_ende'; allowed keys here: soc_end"):
        fea_section_from_file(f)


def test_run_chains_fea_after_strain_and_reuses_it(pipeline):
    out = pipeline["out"]
    assert "fea        ran" in pipeline["output"] and "FEA: dissipated energy / Gamma" in pipeline["output"]
    fea_nc = out / "fea" / "fea.nc"
    ds = read_fea_result(fea_nc)
    assert ds.attrs["strain_source"] == str(out / "strain" / "strain.nc")
    assert ds.attrs["recipe"] == str(pipeline["recipe"]) and int(ds.attrs["n_grains"]) == 4
    report = out / "report.md"
    text = report.read_text()
    assert text.count("## FEA") == 1 and "dissipated energy / Gamma" in text and "fully open GB length" in text
    assert text.index("dissipated energy / Gamma") < text.index("damage onset (D of the bilinear law)")
    assert "unchecked defaults" in text and "transport.kinetic_x_limit_1C" in text
    # nothing changed: every stage reused, fea.nc and the report not rewritten
    before = fea_nc.stat().st_mtime_ns
    report_before = report.stat().st_mtime_ns
    res = _invoke(["run", pipeline["recipe"], "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "fea        reused" in res.output and fea_nc.stat().st_mtime_ns == before
    assert report.stat().st_mtime_ns == report_before
    # only the fea: section changed: only the FEA runs again
    rec = yaml.safe_load(pipeline["recipe"].read_text())
    rec["fea"]["time"]["soc_end"] = 0.5
    changed = pipeline["recipe"].with_name("fea_recipe_2.yaml")
    changed.write_text(yaml.safe_dump(rec))
    res = _invoke(["run", changed, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "finish     reused" in res.output and "fea        ran" in res.output
    assert float(read_fea_result(fea_nc)["soc"].values[-1]) == pytest.approx(0.5)
    text = report.read_text()
    assert text.count("## FEA") == 1 and "SoC 0.000 .. 0.500" in text  # replaced, not added twice


def test_demo_fea_path_bare_and_coated(pipeline, strain_csv, tmp_path):
    """The demo's FEA step (:func:`insitu_xrd.pipeline.demo.demo_fea`) on a measured (bare) and a
    hand-made curve, tiny settings: both results, their figures and the final-damage lines."""
    from insitu_xrd.pipeline.demo import demo_fea
    from insitu_xrd.plots.fea import write_fea_compare, write_fea_figures

    said: list[str] = []
    res = demo_fea(pipeline["out"] / "strain" / "strain.nc", strain_csv, tmp_path / "fea",
                   overrides={"grains": 4, "mesh_size_um": 0.8, "seed": 3, "n_steps": 8, "n_snapshots": 3},
                   progress=False, say=said.append, figure_writer=write_fea_figures, compare_writer=write_fea_compare,
                   animation=False)
    assert (tmp_path / "fea" / "bare.nc").is_file() and (tmp_path / "fea" / "coated.nc").is_file()
    assert float(res.coated.result.attrs["coating_um"]) == pytest.approx(0.16)
    assert float(res.bare.result.attrs.get("coating_um", 0)) == 0
    # same microstructure: same grains, same orientations
    np.testing.assert_array_equal(res.bare.result["grain_theta_rad"].values, res.coated.result["grain_theta_rad"].values)
    names = {p.name for p in res.figures}
    assert {"bare_state.png", "coated_state.png", "fea_compare.png", "fea_compare_damage.png"} <= names
    assert not res.figure_errors
    lines = res.lines()
    assert lines[1].startswith("FEA headline, coated / bare: dissipated energy")
    assert any("FEA coated: dissipated energy / Gamma" in s for s in said)


def test_maps_mirror_the_quarter_into_four_quadrants(pipeline):
    """The display mesh is the quarter reflected across x = 0 and y = 0: four times the area, the
    same radius, and every mirrored node carries its quarter node's value."""
    from insitu_xrd.plots.fea import mirror_mesh, mirror_segments, nearest_snapshot

    ds = read_fea_result(pipeline["out"] / "fea" / "fea.nc")
    tri, copies = mirror_mesh(ds)
    assert copies == 4

    def area(x, y, t):
        return 0.5 * np.abs(np.cross(np.c_[x[t[:, 1]] - x[t[:, 0]], y[t[:, 1]] - y[t[:, 0]]],
                                     np.c_[x[t[:, 2]] - x[t[:, 0]], y[t[:, 2]] - y[t[:, 0]]])).sum()

    xq, yq, tq = ds["node_x_um"].values, ds["node_y_um"].values, ds["cell_nodes"].values
    assert area(tri.x, tri.y, tri.triangles) == pytest.approx(4 * area(xq, yq, tq), rel=1e-12)
    n = xq.size
    np.testing.assert_allclose(tri.x[n:2 * n], -xq)
    np.testing.assert_allclose(tri.y[2 * n:3 * n], -yq)
    assert tri.x.min() == pytest.approx(-xq.max()) and tri.y.min() == pytest.approx(-yq.max())
    segs = mirror_segments(ds)
    assert segs.shape == (4 * ds.sizes["segment"], 2, 2)
    # the snapshot nearest a SoC; the default is 0.55 (or the last when the run ends below it)
    socs = ds["snapshot_soc"].values
    assert nearest_snapshot(ds, float(socs[-1])) == socs.size - 1
    assert nearest_snapshot(ds, -1.0) == int(np.argmin(socs))


def test_recipes_md_documents_every_fea_key_with_the_models_default():
    """docs/recipes.md has a row for every key of the fea: section, and the defaults it states
    for the model keys are FEAParams' own (so the table cannot drift from the model)."""
    import re

    from insitu_xrd.core.fea import FEAParams
    from insitu_xrd.pipeline import recipe as R

    doc = (PROJECT / "docs" / "recipes.md").read_text()
    section = doc[doc.index("### fea"):doc.index("## What `run` writes")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            keys = re.findall(r"`([^`]+)`", cells[0])
            values = [cells[1]] if len(keys) == 1 else [v.strip() for v in cells[1].split(",")]
            rows.update(dict(zip(keys, values)))
    wanted = [n for n in R.FEASection.model_fields if n not in ("geometry", "transport", "elastic", "cohesive", "time")]
    defaults = FEAParams().to_dict()
    wanted += [f"{g}.{k}" for g, sub in defaults.items() for k in sub]
    assert not [k for k in wanted if k not in rows], [k for k in wanted if k not in rows]
    wrong = []
    for group, sub in defaults.items():
        for key, value in sub.items():
            text = rows[f"{group}.{key}"].strip("`")
            if value is None:
                continue  # "D_ab" and the like: stated in words
            if isinstance(value, str):
                ok = text == value
            elif isinstance(value, list):
                ok = yaml.safe_load(text) == value
            else:
                ok = float(text) == pytest.approx(float(value), rel=2e-3)
            if not ok:
                wrong.append(f"{group}.{key}: docs {text!r}, model {value!r}")
    assert not wrong, wrong
