"""Executors (serial / local processes / Dask LocalCluster) driving batched integration: identical
results, worker loss (Dask reschedules; a broken local pool resumes on re-run), OpenCL fallback."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.patterns import read_patterns
from insitu_xrd.io.store import open_frame_dataset, working_store_path
from insitu_xrd.pipeline import executors as ex
from insitu_xrd.reduction import integrate as integ
from insitu_xrd.reduction.integrate import IntegrationSettings
from insitu_xrd.reduction.series import integrate_series
from ring_frames import write_ring_series

SHAPE = (128, 128)
N_FRAMES = 8
SETTINGS = dict(npt=200)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """8 frames of one ring, frame 3 unreadable (an error record), and their PONI."""
    return write_ring_series(tmp_path_factory.mktemp("exec_series"), SHAPE, N_FRAMES, [(5.0, 3000.0, 0.15)], seed=3,
                             bad_frame=3)


@pytest.fixture(scope="module")
def local_pool():
    pool = ex.LocalProcessExecutor(2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def dask_executor(tmp_path_factory):
    pytest.importorskip("distributed")
    marker = tmp_path_factory.mktemp("fault") / "killed"
    dx = ex.DaskExecutor(local={"n_workers": 2, "env": {integ.FAULT_ENV: f"frame_0005.tif|{marker}"}})
    dx.marker = marker
    yield dx
    dx.close()


def _run(series, out, executor=None, store="zarr", **kw):
    return integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS),
                            executor=executor, batch_frames=3, store=store, **kw)


def _same(a, b):
    assert [str(k) for k in a["frame_key"].values] == [str(k) for k in b["frame_key"].values]
    assert [str(s) for s in a["status"].values] == [str(s) for s in b["status"].values]
    np.testing.assert_array_equal(a["intensity"].values, b["intensity"].values)  # bit-identical
    np.testing.assert_array_equal(a["sigma"].values, b["sigma"].values)
    np.testing.assert_array_equal(a["time_s"].values, b["time_s"].values)


def test_serial_local_dask_and_stores_give_identical_results(series, tmp_path, dask_executor, local_pool):
    ref_path = tmp_path / "threads_netcdf.nc"
    _run(series, ref_path, store="netcdf")  # the earlier behaviour: threads, whole-file NetCDF
    ref = read_patterns(ref_path)
    assert ref.sizes["frame"] == N_FRAMES and str(ref["status"].values[3]).startswith("error")
    runs = [("serial", ex.SerialExecutor(), "netcdf"), ("serial", ex.SerialExecutor(), "zarr"),
            ("local", local_pool, "zarr"), ("dask", dask_executor, "zarr")]
    for name, executor, store in runs:
        out = tmp_path / f"{name}_{store}.nc"
        rep = _run(series, out, executor=executor, store=store)
        assert rep.executor == name and rep.n_batches == 3 and rep.n_ok == N_FRAMES - 1
        _same(read_patterns(out), ref)
        if store == "zarr":  # the working store holds the same records as the export
            _same(open_frame_dataset(working_store_path(out)), ref)
            _same(read_patterns(working_store_path(out)), ref)
    # workers got file paths and small settings: the context file sits beside the output
    assert list(tmp_path.glob(".serial_zarr.context-*.npz")) == []  # serial: in process, none needed
    assert len(list(tmp_path.glob(".local_zarr.context-*.npz"))) == 1


def test_dask_worker_killed_mid_run_loses_and_duplicates_nothing(series, tmp_path, dask_executor):
    marker = dask_executor.marker
    if marker.exists():
        marker.unlink()
    out = tmp_path / "p.nc"
    rep = _run(series, out, executor=dask_executor)
    assert marker.exists(), "the worker integrating frame_0005.tif did not die"
    ds = read_patterns(out)
    names = [str(n) for n in ds["frame_name"].values]
    assert names == [f"frame_{i:04d}.tif" for i in range(N_FRAMES)] and rep.n_ok == N_FRAMES - 1
    ref_path = tmp_path / "serial.nc"
    _run(series, ref_path, executor=ex.SerialExecutor())
    _same(ds, read_patterns(ref_path))


def test_local_pool_broken_by_lost_worker_resumes_on_rerun(series, tmp_path, monkeypatch, local_pool):
    marker = tmp_path / "killed"
    monkeypatch.setenv(integ.FAULT_ENV, f"frame_0005.tif|{marker}")  # inherited by spawned workers
    out = tmp_path / "p.nc"
    pool = ex.LocalProcessExecutor(1)
    try:
        with pytest.raises(InsituXRDError, match="worker process died.*run the same command again to resume"):
            _run(series, out, executor=pool)
    finally:
        pool.close()
    assert marker.exists()
    crashed = open_frame_dataset(working_store_path(out))
    stored = [str(k) for k in crashed["frame_key"].values]
    status = [str(v) for v in crashed["status"].values]
    # every frame got its row in frame order before the batches ran (a known-length list); the
    # batches that completed were written into their rows, whole; the rest stayed "pending"
    assert len(stored) == N_FRAMES
    done = [k for k, v in zip(stored, status) if v != "pending"]
    assert 0 < len(done) < N_FRAMES and len(done) % 3 == 0, status
    assert all(np.isnan(crashed["intensity"].values[i]).all() for i, v in enumerate(status) if v == "pending")
    rep = _run(series, out, executor=local_pool)  # its workers started before the fault was set
    assert rep.n_skipped_done == sum(1 for k in done if not k.endswith("frame_0003.tif"))
    ds = read_patterns(out)
    keys = [str(k) for k in ds["frame_key"].values]
    assert len(keys) == len(set(keys)) == N_FRAMES and keys == stored
    assert "pending" not in {str(v) for v in ds["status"].values}
    ref_path = tmp_path / "serial.nc"
    _run(series, ref_path, executor=ex.SerialExecutor())
    _same(ds, read_patterns(ref_path))


def test_executor_config_errors_and_reuse(monkeypatch):
    assert isinstance(ex.make_executor({"type": "serial"}), ex.SerialExecutor)
    with pytest.raises(InsituXRDError, match="must be"):
        ex.make_executor({"type": "slurm"})
    a = ex.get_executor({"type": "serial"})
    assert ex.get_executor({"type": "serial"}) is a
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # `import distributed` raises ImportError
    with pytest.raises(InsituXRDError, match=r"insitu-xrd\[dask\]"):
        ex.make_executor({"type": "dask", "local": {"n_workers": 1}})


def test_opencl_engine_falls_back_to_cpu_with_a_clear_message(series, tmp_path, monkeypatch):
    monkeypatch.setattr(integ, "opencl_status", lambda: (False, "pyopencl is not installed"))
    out = tmp_path / "cl.nc"
    with pytest.warns(RuntimeWarning, match="opencl.*CPU"):
        rep = integrate_series([series["frames"]], series["poni"], out,
                               IntegrationSettings(engine="opencl", **SETTINGS))
    assert any("pyopencl is not installed" in n and "CPU" in n for n in rep.notes)
    cpu = tmp_path / "cpu.nc"
    integrate_series([series["frames"]], series["poni"], cpu, IntegrationSettings(**SETTINGS))
    _same(read_patterns(out), read_patterns(cpu))
    # with a device the OpenCL CSR engine is chosen, same pixel splitting
    monkeypatch.setattr(integ, "opencl_status", lambda: (True, "Fake GPU"))
    s, note = integ.resolve_engine(IntegrationSettings(engine="opencl"))
    assert s.method == ("full", "csr", "opencl") and "Fake GPU" in note
    with pytest.raises(InsituXRDError, match="engine"):
        IntegrationSettings(engine="cuda").validate()


def test_same_recipe_with_each_executor_section_gives_identical_patterns(series, tmp_path):
    """The recipe's ``executor:`` section is the only change: serial, local, Dask LocalCluster."""
    pytest.importorskip("distributed")
    import shutil

    from insitu_xrd.pipeline.recipe import load_recipe
    from insitu_xrd.pipeline.stages import StageCache, integrate_stage

    shutil.copytree(series["frames"], tmp_path / "frames")
    shutil.copy(series["poni"], tmp_path / "geo.poni")
    sections = {"serial": "{type: serial}", "local": "{type: local, workers: 2}",
                "dask": "{type: dask, local: {n_workers: 2}}"}
    got = {}
    try:
        for name, section in sections.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(f"wavelength_A: 0.1173\ncalibration: {{poni: geo.poni}}\n"
                            f"frames: {{files: 'frames/*.tif', time_source: header}}\n"
                            f"integration: {{npt: 200, batch_frames: 3}}\nexecutor: {section}\n"
                            f"outputs: {{dir: out_{name}}}\n")
            recipe = load_recipe(path)
            out, info = integrate_stage(recipe, tmp_path / "geo.poni", StageCache(recipe.output_dir), progress=False)
            assert info.status == "ran" and f", {name})" in info.detail
            got[name] = read_patterns(out)
            again, info = integrate_stage(recipe, tmp_path / "geo.poni", StageCache(recipe.output_dir), progress=False)
            assert info.status == "reused"
    finally:
        ex.shutdown_executors()
    _same(got["serial"], got["local"])
    _same(got["serial"], got["dask"])


class _FirstBatchWaits:
    """An in-process executor whose first batch cannot finish before a later batch was stored:
    the store must take batches as they complete (region writes into reserved rows), not in
    submission order (that would wait for ever: the event times out and the test fails)."""

    name = "first-batch-waits"
    in_process = True
    n_workers = 2

    def __init__(self, first_frame: str) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.first_frame = first_frame
        self.later_stored = threading.Event()
        self.timed_out = False
        self._pool = ThreadPoolExecutor(max_workers=2)

    def submit(self, fn, refs):
        def run():
            if refs[0].name == self.first_frame and not self.later_stored.wait(timeout=60):
                self.timed_out = True
            return fn(refs)

        return self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def test_batches_are_stored_as_they_complete_into_rows_in_frame_order(series, tmp_path):
    ref_path = tmp_path / "serial.nc"
    _run(series, ref_path, executor=ex.SerialExecutor())
    runner = _FirstBatchWaits("frame_0000.tif")
    order: list[str] = []
    rows_seen: list[list[str]] = []
    out = tmp_path / "out_of_order.nc"

    def progress(done, total, name, status):
        order.append(name)
        if name == "frame_0003.tif":  # batch 1 (frames 3-5) is stored while batch 0 still runs
            rows_seen.append([str(s) for s in open_frame_dataset(working_store_path(out))["status"].values])
            runner.later_stored.set()

    try:
        _run(series, out, executor=runner, progress=progress)
    finally:
        runner.close()
    assert not runner.timed_out
    assert order.index("frame_0003.tif") < order.index("frame_0000.tif")
    # when batch 1 was stored every frame had its row, batch 0's still "pending"
    assert rows_seen and len(rows_seen[0]) == N_FRAMES and rows_seen[0][:3] == ["pending"] * 3
    _same(read_patterns(out), read_patterns(ref_path))  # rows in frame order, the same numbers


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/stat"), reason="needs /proc (Linux) to see processes")
def test_local_workers_exit_when_their_parent_is_killed(tmp_path):
    """kill -9 of the process that owns a local pool (a crashed watch) leaves no worker behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from insitu_xrd.pipeline.executors import LocalProcessExecutor, worker_peak_rss_mb\n"
        "if __name__ == '__main__':\n"
        "    pool = LocalProcessExecutor(1)\n"
        "    pool.submit(worker_peak_rss_mb).result()\n"
        "    print(' '.join(str(p) for p in pool._pool._processes), flush=True)\n"
        "    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    t0 = time.monotonic()
    while any(alive(p) for p in workers) and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"
