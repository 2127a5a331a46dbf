"""The ``patterns:`` route: 1D patterns integrated elsewhere, through ``run`` and ``watch``.

The module fixture simulates a small operando series (4 frames of the NMC811 first charge, seed 3,
512 x 512 frames, without the cell's Li/Al lines and the diffuse components, so the fits are the
demo recipe's H2 + optional H3 only), runs the frames route on it (the true PONI, the
recipe's profile: ``calibration.instrument_profile: off``, so both routes fit with the same
instrument), exports its patterns as .xye files (``export_xye``: 2theta to 1e-6 deg, intensities
to 8 digits, ``time_s=`` in the header) and runs the same recipe with ``patterns:`` instead of
frames + calibration + integration. The results must be the same fits: the .xye text rounding
moves the values by < 0.002 esd (measured 0.0014 esd at most), so 0.01 esd is the bound; status,
phases present, times and x_li identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.errors import RecipeError
from insitu_xrd.io.patterns import export_xye, read_patterns
from insitu_xrd.pipeline.pattern_series import patterns_stage
from insitu_xrd.pipeline.recipe import load_recipe
from insitu_xrd.pipeline.run import run_pipeline
from insitu_xrd.pipeline.stages import StageCache
from insitu_xrd.pipeline.watch import watch_folder
from insitu_xrd.simulate.dataset import simulate_dataset

PROJECT = Path(__file__).resolve().parents[1]
N_FRAMES = 4
# text rounding of the .xye files: measured < 0.0015 esd with the recipe as written; the cell-line
# search (refinement.cell_lines: auto) then settles a free peak's place and width on the first
# frames (here the same one, d = 3.32 A, in both routes), which the rounding moves a little:
# measured 0.012 esd in a, 0.010 in microstrain
ESD_BOUND = 0.05
COMPARED = ("a", "c", "microstrain", "phase_fraction", "cathode_fraction")


def _patterns_recipe(frames_recipe: dict, files: str, out: str) -> dict:
    rec = {k: v for k, v in frames_recipe.items() if k not in ("calibration", "frames", "integration")}
    rec["patterns"] = {"files": files, "format": "auto", "time_source": "header"}
    rec["outputs"] = {"dir": out, "figures": False}
    return rec


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    data = tmp_path_factory.mktemp("patterns_route") / "data"
    simulate_dataset(data, frames=N_FRAMES, seed=3, binning=4, workers=1, cell_lines=False, diffuse=False)
    rec = yaml.safe_load((PROJECT / "recipes" / "demo.yaml").read_text())
    rec["refinement"]["phases"] = [p for p in rec["refinement"]["phases"] if p["template"] == "nmc811"]
    rec["refinement"].pop("diffuse")
    rec["calibration"].update(poni="calib/ceo2_true.poni", instrument_profile="off")
    rec["executor"] = {"type": "serial"}
    rec["outputs"] = {"dir": "res_frames", "figures": False}
    (data / "frames.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    frames_run = run_pipeline(data / "frames.yaml", progress=False)
    xye = export_xye(read_patterns(data / "res_frames" / "patterns.nc"), data / "xye")
    assert len(xye) == N_FRAMES
    (data / "patterns.yaml").write_text(yaml.safe_dump(_patterns_recipe(rec, "xye/*.xye", "res_xye"), sort_keys=False))
    cli = CliRunner().invoke(app, ["run", str(data / "patterns.yaml"), "--no-progress", "--no-figures"])
    assert cli.exit_code == 0, cli.output
    return {"data": data, "recipe": rec, "frames": frames_run.results, "cli": cli.output, "xye": xye,
            "patterns": xr.load_dataset(data / "res_xye" / "results.nc", engine="h5netcdf")}


def _assert_same_fits(ref: xr.Dataset, got: xr.Dataset, names: list[str] | None = None) -> float:
    """Frame by frame (by frame name): same status and phases, values within ESD_BOUND esd."""
    at = {str(n): i for i, n in enumerate(got["frame_name"].values)}
    worst = 0.0
    for i, name in enumerate(map(str, ref["frame_name"].values)):
        if names is not None and name not in names:
            continue
        j = at[name.rsplit(".", 1)[0] + ".xye"] if name not in at else at[name]
        assert str(ref["status"].values[i]) == str(got["status"].values[j]), name
        assert list(ref["active"].values[i]) == list(got["active"].values[j]), name
        for var in COMPARED:
            vr, vg, esd = ref[var].values[i], got[var].values[j], ref[f"{var}_esd"].values[i]
            assert np.array_equal(np.isnan(vr), np.isnan(vg)), (name, var)
            ok = np.isfinite(vr) & np.isfinite(esd) & (esd > 0)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(vr[ok] - vg[ok]) / esd[ok])))
    assert worst < ESD_BOUND, worst
    return worst


def test_run_on_patterns_gives_the_frames_route_results(routes):
    f, p = routes["frames"], routes["patterns"]
    assert p.sizes["frame"] == f.sizes["frame"] == N_FRAMES
    for key in ("cell_components", "cell_free_peaks"):  # the same cell lines found by both routes
        assert [c["name"] for c in json.loads(p.attrs[key])] == [c["name"] for c in json.loads(f.attrs[key])], key
    _assert_same_fits(f, p)
    np.testing.assert_allclose(p["time_s"].values, f["time_s"].values, rtol=1e-12)  # from the xye header
    np.testing.assert_allclose(p["x_li"].values, f["x_li"].values, atol=1e-9)
    out = routes["data"] / "res_xye"
    for name in ("patterns.nc", "sequential.nc", "results.nc", "report.md", "strain/strain.nc"):
        assert (out / name).is_file(), name
    stages = routes["cli"]
    assert "patterns" in stages and "calibrate" not in stages and "integrate" not in stages


def test_run_on_patterns_reuses_its_stages_and_reads_new_files_only(routes):
    data = routes["data"]
    again = run_pipeline(data / "patterns.yaml", progress=False)
    assert {s.name: s.status for s in again.stages} == {"patterns": "reused", "refine": "reused", "finish": "reused"}
    # one more file lands (a copy of the last pattern under a later name): the patterns stage reads
    # only it (the refinement, whose key fingerprints the patterns, is not run here)
    recipe = load_recipe(data / "patterns.yaml")
    cache = StageCache(recipe.output_dir)
    shutil.copy2(routes["xye"][-1], data / "xye" / "zz_extra.xye")
    try:
        path, info = patterns_stage(recipe, cache, progress=False)
        assert info.status == "resumed" and info.detail.startswith(f"1 pattern files read, {N_FRAMES} already done"), info.detail
        ds = read_patterns(path)
        assert [str(n) for n in ds["frame_name"].values][-1] == "zz_extra.xye" and ds.sizes["frame"] == N_FRAMES + 1
        np.testing.assert_array_equal(ds["intensity"].values[-1], ds["intensity"].values[-2])
    finally:
        (data / "xye" / "zz_extra.xye").unlink()


def test_watch_on_xye_files_landing_one_by_one_equals_the_batch(routes, tmp_path):
    """Files land one by one while the watch runs (the next one after each of its messages, so
    polls see them in turn, whatever the machine's speed), a corrupt one among them; the session
    stops after 3 frames, more files land, and a restarted watch finishes: the fits are those of
    the batch run on the same files."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    recipe = tmp_path / "watch.yaml"
    rec = _patterns_recipe(routes["recipe"], str(incoming / "*.xye"), "results")
    rec["echem"]["file"] = str(routes["data"] / "cycler.csv")
    recipe.write_text(yaml.safe_dump(rec, sort_keys=False))
    files = routes["xye"]
    landing = iter(files[1:3])
    (incoming / "frame_0002b.xye").write_bytes(b"\x00\x01 not a pattern \x00" * 40)  # corrupt
    opts = dict(poll_s=0.0, settle_s=0.0, bad_after_s=0.0, refresh_s=1e9)

    def land_one(_msg: str) -> None:
        nxt = next(landing, None)
        if nxt is not None:
            shutil.copy2(nxt, incoming / nxt.name)

    shutil.copy2(files[0], incoming / files[0].name)
    first = watch_folder(incoming, recipe, max_frames=3, say=land_one, **opts)
    assert first.n_refined == 3 and first.n_flagged == 1, first.events  # the corrupt file among them
    for f in files[3:]:  # land while the watch is down
        shutil.copy2(f, incoming / f.name)
    log: list[str] = []
    second = watch_folder(incoming, recipe, idle_exit_s=1.0, say=log.append, **opts)
    assert second.n_refined == N_FRAMES + 1 - 3 and second.n_frames_total == N_FRAMES + 1
    assert any(m.startswith("resuming: 3 frames already refined") for m in log), log
    assert any("continuing the chain of the previous session" in m for m in log), log
    w = xr.load_dataset(tmp_path / "results" / "results.nc", engine="h5netcdf")
    names = [str(n) for n in w["frame_name"].values]
    assert sorted(names) == sorted([f.name for f in files] + ["frame_0002b.xye"])
    bad = str(w["status"].values[names.index("frame_0002b.xye")])
    assert bad.startswith("skipped: ") and "frame_0002b.xye" in bad, bad
    _assert_same_fits(routes["patterns"], w, names=[f.name for f in files])
    assert w.attrs["mode"] == "watch"


@pytest.mark.parametrize("extra, keys", [
    ({"frames": {"files": "frames/*.tif"}}, ["'frames'"]),
    ({"calibration": {"poni": "calib/geometry.poni"}}, ["'calibration'"]),
    ({"integration": {"npt": 2000}}, ["'integration'"]),
])
def test_patterns_with_frames_calibration_or_integration_is_a_recipe_error(tmp_path, extra, keys):
    rec = {"wavelength_A": 0.1173, "patterns": {"files": "xye/*.xye"}, **extra}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(rec))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert str(path) in msg and "'patterns'" in msg and all(k in msg for k in keys), msg
    assert "\n" not in msg


def test_frames_without_calibration_and_a_bad_patterns_key_are_recipe_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"wavelength_A": 0.1173, "frames": {"files": "f/*.tif"}}))
    with pytest.raises(RecipeError, match=r"r\.yaml: missing required key 'calibration'"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"wavelength_A": 0.1173, "patterns": {"files": "x/*.xye", "time_source": "period"}}))
    with pytest.raises(RecipeError, match=r"r\.yaml: key 'patterns': time_source 'period' needs 'period_s"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"wavelength_A": 0.1173, "patterns": {"files": "x/*.xye", "fmt": "xye"}}))
    with pytest.raises(RecipeError, match=r"unknown key 'patterns.fmt'; allowed keys here: files, format"):
        load_recipe(path)


def test_a_pattern_off_the_series_axis_or_at_another_wavelength_is_flagged(tmp_path):
    """Bad files are error rows that name the file and the problem; good files around them are kept."""
    from insitu_xrd.io.frames import FrameRef
    from insitu_xrd.io.pattern_files import write_xye
    from insitu_xrd.pipeline.pattern_series import PatternSeries

    tth = np.linspace(2.0, 10.0, 401)
    y = 100 + 50 * np.exp(-((tth - 5) / 0.05) ** 2)
    good = write_xye(tmp_path / "p1.xye", tth, y, np.sqrt(y), header_lines=["time_s=10.0"])
    gaps = write_xye(tmp_path / "p2.xye", tth[::2], y[::2], np.sqrt(y[::2]), header_lines=["time_s=20.0"])
    shifted = write_xye(tmp_path / "p3.xye", tth + 0.01, y, np.sqrt(y))
    other_wl = write_xye(tmp_path / "p4.xye", tth, y, np.sqrt(y), wavelength_A=0.2)
    refs = [FrameRef(p.resolve()) for p in (good, gaps, shifted, other_wl)]
    series = PatternSeries(tmp_path / "patterns.nc", refs, 0.1173, None, "header", "k")
    rep = series.add(refs)
    series.close()
    assert (rep.n_ok, rep.n_error) == (2, 2)
    ds = read_patterns(tmp_path / "patterns.nc")
    st = [str(s) for s in ds["status"].values]
    assert st[:2] == ["ok", "ok"]
    assert st[2].startswith("error: pattern file") and "p3.xye" in st[2] and "not on the series' axis" in st[2]
    assert "p4.xye" in st[3] and "wavelength" in st[3]
    np.testing.assert_allclose(ds["time_s"].values[:2], [10.0, 20.0])
    row = ds["intensity"].values[1]  # the file without every other point: NaN there, its values elsewhere
    assert np.isnan(row[1::2]).all() and np.allclose(row[::2], y[::2], rtol=1e-7)


def test_files_without_esds_keep_no_esds_and_are_weighed_by_the_refinement(tmp_path):
    """A series of 1D files without an esd column stores no esds (NaN sigma rows, said in the
    store's attrs); the frames' weights are then those refinement.sigma gives (auto: the engine's
    weights for data without esds), and a file with esds keeps its esds exactly."""
    from insitu_xrd.fit.engine import weights
    from insitu_xrd.io.frames import FrameRef
    from insitu_xrd.pipeline.pattern_series import NO_ESD_SIGMA, PatternSeries
    from insitu_xrd.pipeline.sequential import frame_arrays, without_esds
    from insitu_xrd.pipeline.stages import sequential_sigma_source

    tth = np.linspace(2.0, 10.0, 401)
    y = 100 + 50 * np.exp(-((tth - 5) / 0.05) ** 2)
    paths = []
    for i, with_esd in enumerate((True, False)):
        path = tmp_path / f"p{i}.xy"
        cols = np.column_stack([tth, y, 0.5 * np.sqrt(y)] if with_esd else [tth, y])
        np.savetxt(path, cols)
        paths.append(path)
    refs = [FrameRef(p.resolve()) for p in paths]
    series = PatternSeries(tmp_path / "patterns.nc", refs[:1], 0.1173, None, "none", "k")
    series.add(refs[:1])
    assert series.store.attrs["sigma_source"] == "the files' esd column"
    series.add(refs[1:])
    series.close()
    ds = read_patterns(tmp_path / "patterns.nc")
    assert ds.attrs["sigma_source"] == NO_ESD_SIGMA
    assert not without_esds(ds["intensity"].values[0], ds["sigma"].values[0])
    assert without_esds(ds["intensity"].values[1], ds["sigma"].values[1])
    assert np.isnan(ds["sigma"].values[1]).all()  # the reader's sqrt(max(I, 1)) is not stored as esds
    np.testing.assert_array_equal(frame_arrays(ds, 0)[2], ds["sigma"].values[0])  # esds untouched
    np.testing.assert_array_equal(frame_arrays(ds, 1)[2], weights("auto", ds["intensity"].values[1], None)[0])
    assert sequential_sigma_source("auto", ds) == ("auto (refinement.sigma; the files have no esd column): from_file "
                                                   "for 1 frames with esds; poisson sqrt(max(I, 1)) for 1 frames "
                                                   "without esds")
    assert sequential_sigma_source("unit", ds) == "unit (refinement.sigma); 1 of 2 files had no esd column"
    with pytest.raises(RecipeError, match=r"key 'refinement.sigma' is from_file, but 1 of the 2 patterns have no esds"):
        sequential_sigma_source("from_file", ds)
    # insitu-xrd refine on a frame of that patterns.nc: no esds passed (refinement.sigma decides)
    from insitu_xrd.cli.refine import load_pattern

    assert load_pattern(tmp_path / "patterns.nc", 1, None).sigma is None
    np.testing.assert_array_equal(load_pattern(tmp_path / "patterns.nc", 0, None).sigma, 0.5 * np.sqrt(y))
