"""``insitu-xrd demo`` (as the batch reference) and ``insitu-xrd watch`` on frames landing one by one.

The module fixture runs ``insitu-xrd demo --frames 12`` (seed 5): a 12-frame first charge whose
H3 appears at frame 9, simulated, calibrated, integrated and refined in one batch. The watch
tests then copy the same frames into an empty folder the way a detector writes them, plus one
frame written slowly (a partial file that must be waited for) and one corrupt extra file, while
``insitu-xrd watch`` runs in a separate process; that process is killed midway and the watch is
started again. The watch must give the batch's numbers on the same frames, flag the corrupt file,
refit no frame after the restart, and leave a results file a later ``insitu-xrd run`` adopts.

Tolerance: the watch fits the same patterns in the same order as the batch run, and after the
restart it continues from the chain state saved beside sequential.nc (the previous FitResult
with its Le Bail intensities, the optional-phase counters), so every frame goes through the same
fits: required equal within 1e-3 esd (measured: identical before the kill, < 1e-4 esd after the
restart). A skipped bad frame does not touch the chain.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.io.store import open_frame_dataset
from insitu_xrd.pipeline.demo import compare_with_truth
from insitu_xrd.pipeline.run import run_pipeline

SEED = 5
N_FRAMES = 12
SLOW = "frame_0004.tif"  # written in two parts with a pause
BAD = "frame_0002b.tif"  # a truncated extra file (sorts between frames 2 and 3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # (the demo's coated run and FEA are covered by tests/test_fea_cli.py)
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--frames", str(N_FRAMES), "--seed", str(SEED),
                                   "--no-fea", "--no-progress"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    data = out / "data"
    batch = xr.load_dataset(data / "results" / "results.nc", engine="h5netcdf")
    return {"out": out, "data": data, "output": res.output, "batch": batch}


def test_demo_summary_is_readable_in_80_columns(demo):
    lines = demo["output"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("truth vs recovered"))
    table = lines[start:start + 16]
    assert all(len(line) <= 80 for line in table), "\n".join(table)
    assert not any("\u2026" in line for line in table), "\n".join(table)  # nothing truncated
    assert any("1e-4 A" in line for line in table)
    for key in ("max |a - a_true| (H2)", "max |H3 frac - true|", "H3 onset: true frame"):
        assert key in demo["output"]
    b = demo["batch"]
    assert all(str(s) in ("ok", "refit") for s in b["status"].values), b["status"].values
    m = compare_with_truth(b, demo["data"] / "truth.json")
    assert 0 < m["h3_onset_true_frame"] < N_FRAMES - 1  # the frames span the H3 onset
    assert abs(m["h3_onset_detected_frame"] - m["h3_onset_true_frame"]) <= 2
    assert m["max_abs_dfrac_H3"] < 0.05
    # lattice within 4 esd (the 2e-4 / 1e-3 A targets are checked on the 40-frame charge of
    # test_pipeline.py; here the last frames hold only 34 % H2 and its esds reach 7e-4 / 3e-3 A)
    for var in ("a", "c"):
        err = np.abs(m["per_frame"][var] - m["per_frame"][f"{var}_true"])
        assert np.all(err < 4 * b[f"{var}_esd"].sel(phase="H2").values), var


def _watch_recipe(demo, folder: Path) -> Path:
    """The demo recipe pointed at a watched folder, the demo's PONI and cycler log."""
    data = demo["data"]
    rec = yaml.safe_load((data / "demo.yaml").read_text())
    rec["frames"]["files"] = str(folder / "frame_*.tif")
    rec["calibration"]["poni"] = str(data / "calib" / "geometry.poni")
    rec["calibration"]["image"] = str(data / "calib" / "ceo2.tif")
    rec["echem"]["file"] = str(data / "cycler.csv")
    rec["outputs"] = {"dir": "results", "figures": False}
    path = folder.parent / "watch.yaml"
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    return path


def _fitted_names(seq_store: Path) -> list[str]:
    """Frames with a good fit in the watch's (still growing) working store sequential.zarr."""
    try:
        ds = open_frame_dataset(seq_store)
        return [str(n) for n, s in zip(ds["frame_name"].values, ds["status"].values) if str(s) in ("ok", "refit")]
    except Exception:  # not written yet
        return []


def _wait_for(cond, timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def watched(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("beamtime")
    incoming = root / "incoming"
    incoming.mkdir()
    recipe = _watch_recipe(demo, incoming)
    seq_store = root / "results" / "sequential.zarr"
    frames = sorted((demo["data"] / "frames").glob("frame_*.tif"))
    opts = ["--poll-s", "0.1", "--settle-s", "0.3", "--no-figures"]
    # session 1 in its own process, killed midway. Its --bad-after-s is far longer than the slow
    # write's pause, so a loaded machine (the writer's pause overrunning) cannot turn the slow
    # frame into a bad one: the test must not depend on timing between processes. The corrupt
    # file is then recorded as bad by session 2 (in this process, --bad-after-s 2).
    cmd = [sys.executable, "-c", "from insitu_xrd.cli.main import app; app()", "watch", str(incoming),
           "--recipe", str(recipe), *opts, "--bad-after-s", "60"]
    log1 = root / "session1.log"
    with open(log1, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=root)
        try:
            for f in frames[:4]:
                shutil.copy2(f, incoming / f.name)
                time.sleep(0.2)
            blob = frames[3].read_bytes()
            (incoming / BAD).write_bytes(blob[: len(blob) // 2])  # corrupt: never completed
            slow = next(f for f in frames if f.name == SLOW).read_bytes()
            with open(incoming / SLOW, "wb") as out:  # the detector writes a frame slowly
                out.write(slow[: len(slow) // 3])
                out.flush()
                time.sleep(1.2)  # longer than --settle-s: the watch sees an unreadable settled file
                out.write(slow[len(slow) // 3:])
            shutil.copy2(frames[5], incoming / frames[5].name)
            _wait_for(lambda: len(_fitted_names(seq_store)) >= 5, 180, "5 fitted frames in session 1")
        finally:
            proc.send_signal(signal.SIGKILL)  # a crash, not a clean stop
            proc.wait(timeout=30)
    after_kill = open_frame_dataset(seq_store)  # what a restart finds
    # frames that land while the watch is down, then session 2 (restart) until idle
    for f in frames[6:]:
        shutil.copy2(f, incoming / f.name)
    res2 = CliRunner().invoke(app, ["watch", str(incoming), "--recipe", str(recipe), *opts, "--bad-after-s", "2", "--idle-exit-s", "4"])
    assert res2.exit_code == 0, res2.output
    results = xr.load_dataset(root / "results" / "results.nc", engine="h5netcdf")
    return {"root": root, "recipe": recipe, "incoming": incoming, "after_kill": after_kill, "results": results,
            "session1": log1.read_text(), "session2": res2.output}


def _by_name(ds: xr.Dataset) -> dict[str, int]:
    return {str(n): i for i, n in enumerate(ds["frame_name"].values)}


def test_watch_survives_a_corrupt_frame_and_waits_for_a_slow_one(watched):
    r = watched["results"]
    names = _by_name(r)
    assert set(names) == {f"frame_{i:04d}.tif" for i in range(N_FRAMES)} | {BAD}
    st = {n: str(r["status"].values[i]) for n, i in names.items()}
    assert st[BAD].startswith("skipped: error"), st[BAD]
    assert all(s in ("ok", "refit") for n, s in st.items() if n != BAD), st
    # the partial file (unreadable for longer than --settle-s, shorter than --bad-after-s) was
    # waited for: never recorded as bad, fitted once complete
    assert f"{SLOW}: cannot be read" not in watched["session1"]
    assert st[SLOW] in ("ok", "refit")
    assert f"{BAD}: cannot be read" in watched["session1"] + watched["session2"]


def test_watch_gives_the_batch_results(demo, watched):
    b, w = demo["batch"], watched["results"]
    bi, wi = _by_name(b), _by_name(w)
    worst = 0.0
    for name, i in bi.items():
        j = wi[name]
        assert list(b["active"].values[i]) == list(w["active"].values[j]), name  # same phases present
        assert str(b["status"].values[i]) == str(w["status"].values[j]), name
        for var in ("a", "c", "microstrain", "phase_fraction", "cathode_fraction"):
            vb, vw = b[var].values[i], w[var].values[j]
            assert np.array_equal(np.isnan(vb), np.isnan(vw)), (name, var)
            esd = b[f"{var}_esd"].values[i]
            ok = np.isfinite(vb) & np.isfinite(esd) & (esd > 0)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(vb[ok] - vw[ok]) / esd[ok])))
    # the same fits in the same order, also across the restart (exact chain state): differences
    # are rounding in the restored state, measured < 1e-4 esd
    assert worst < 1e-3, worst
    onset_b = str(b["frame_name"].values[b.attrs["H3_onset_frame"]])
    assert str(w["frame_name"].values[w.attrs["H3_onset_frame"]]) == onset_b
    np.testing.assert_allclose(w["x_li"].values[[wi[n] for n in bi]], b["x_li"].values[list(bi.values())], atol=1e-9)


def test_restart_resumes_without_refitting(watched):
    before = watched["after_kill"]
    done = {str(n): str(v) for n, v, s in zip(before["frame_name"].values, before["fit_values"].values,
                                               before["status"].values) if str(s) != "pending"}
    assert 5 <= len(done) < N_FRAMES + 1
    assert "resuming:" in watched["session2"]
    assert "continuing the chain of the previous session" in watched["session2"]  # exact resume
    refit_names = {line.split()[2].rstrip(":") for line in watched["session2"].splitlines() if line.startswith("frame ")}
    assert refit_names and not (refit_names & set(done)), (refit_names, set(done))
    final = xr.load_dataset(watched["root"] / "results" / "sequential.nc", engine="h5netcdf")
    names = _by_name(final)
    for n, v in done.items():
        assert str(final["fit_values"].values[names[n]]) == v  # stored results kept as they were
    assert final.attrs["mode"] == "watch"


def test_batch_run_after_the_watch_adopts_its_frames(watched):
    res = run_pipeline(watched["recipe"], progress=False)
    st = {s.name: s for s in res.stages}
    assert st["calibrate"].status == "reused" and st["integrate"].status == "reused"
    assert st["refine"].status == "resumed" and "refined by the watch session" in st["refine"].detail
    w = watched["results"]
    np.testing.assert_array_equal(res.results["a"].values, w["a"].values)
    assert list(map(str, res.results["status"].values)) == list(map(str, w["status"].values))


def test_watch_options_are_documented():
    """Every option of `insitu-xrd watch` is in the table of docs/beamtime.md."""
    import typer.main

    cmd = typer.main.get_command(app).commands["watch"]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "beamtime.md").read_text()
    opts = [o for p in cmd.params if p.param_type_name == "option" for o in p.opts if o.startswith("--")]
    assert "--settle-s" in opts and "--bad-after-s" in opts and "--idle-exit-s" in opts and "--max-frames" in opts
    missing = [o for o in opts if f"`{o}`" not in doc and o != "--help"]
    assert not missing, missing


def test_folder_scanner_settles_waits_and_hands_each_content_on_once(tmp_path):
    """The watch's file logic on a controlled clock: a file is read once unchanged for
    --settle-s; an unreadable one is handed on as bad after --bad-after-s; a changed file again."""
    import fabio

    from insitu_xrd.pipeline.watch import FolderScanner

    now = [0.0]
    img = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    fabio.tifimage.TifImage(data=img, header={}).write(str(tmp_path / "frame_0001.tif"))
    blob = (tmp_path / "frame_0001.tif").read_bytes()
    (tmp_path / "frame_0002.tif").write_bytes(blob[: len(blob) // 2])  # still being written
    (tmp_path / "frame_0003.tif.part").write_bytes(blob)  # temporary names are ignored
    (tmp_path / ".frame_0004.tif").write_bytes(blob)
    sc = FolderScanner(tmp_path, "frame_*.tif", settle_s=2.0, bad_after_s=10.0, clock=lambda: now[0])
    assert sc.poll() == ([], [])  # nothing settled yet
    now[0] = 2.5
    good, bad = sc.poll()
    assert [p.name for p in good] == ["frame_0001.tif"] and bad == []
    now[0] = 5.0
    assert sc.poll() == ([], [])  # handed on once; the partial file is waited for
    now[0] = 12.6
    good, bad = sc.poll()
    assert good == [] and [p.name for p in bad] == ["frame_0002.tif"]
    (tmp_path / "frame_0002.tif").write_bytes(blob)  # the rest arrives: a new content
    now[0] = 13.0
    assert sc.poll() == ([], [])
    now[0] = 15.5
    good, bad = sc.poll()
    assert [p.name for p in good] == ["frame_0002.tif"] and bad == []
