"""`insitu-xrd integrate` execution options (--executor, --executor-workers, --dask-*, --batch-frames,
--engine): the same patterns as the default threads, the OpenCL fallback message, clear errors for
combinations that do not go together, and every option documented in docs/integration.md."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.io.patterns import read_patterns
from insitu_xrd.reduction import integrate as integ
from ring_frames import write_ring_series

SHAPE = (96, 96)
N_FRAMES = 6
runner = CliRunner()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Six small Poisson frames of one ring (frame 3 unreadable: an error record) and their PONI."""
    return write_ring_series(tmp_path_factory.mktemp("cli_opts"), SHAPE, N_FRAMES, [(4.0, 3000.0, 0.15)], seed=11,
                             bad_frame=3)


def _cli(series, out: Path, *extra: object):
    args = ["integrate", str(series["frames"]), "--poni", str(series["poni"]), "--npt", "150", "-o", str(out),
            *map(str, extra)]
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def default_run(series):
    """The run without any of the new options: --workers threads in this process."""
    out = series["root"] / "default.nc"
    res = _cli(series, out)
    assert res.exit_code == 0, res.output
    assert "executor threads (2 threads)" in res.stdout
    return read_patterns(out)


def _same(a, b) -> None:
    assert [str(k) for k in a["frame_key"].values] == [str(k) for k in b["frame_key"].values]
    assert [str(s) for s in a["status"].values] == [str(s) for s in b["status"].values]
    np.testing.assert_array_equal(a["intensity"].values, b["intensity"].values)
    np.testing.assert_array_equal(a["sigma"].values, b["sigma"].values)
    np.testing.assert_array_equal(a["time_s"].values, b["time_s"].values)


def test_serial_and_local_executors_give_the_default_patterns(series, default_run, tmp_path):
    assert default_run.sizes["frame"] == N_FRAMES and str(default_run["status"].values[3]).startswith("error")
    out = tmp_path / "serial.nc"
    res = _cli(series, out, "--executor", "serial")
    assert res.exit_code == 0, res.output
    assert "executor serial (1 workers), 1 batches of <= 32 frames" in res.stdout  # the recipe's default batch
    assert "skipped frame_0003.tif" in res.output
    _same(read_patterns(out), default_run)

    out = tmp_path / "local.nc"
    res = _cli(series, out, "--executor", "local", "--executor-workers", 2, "--batch-frames", 2)
    assert res.exit_code == 0, res.output
    assert f"{N_FRAMES - 1} frames integrated, 1 failed" in res.stdout
    assert "executor local (2 workers), 3 batches of <= 2 frames" in res.stdout
    _same(read_patterns(out), default_run)
    assert len(list(tmp_path.glob(".local.context-*.npz"))) == 1  # workers got file paths, not arrays


def test_opencl_engine_falls_back_to_the_cpu_with_the_message(series, default_run, tmp_path, monkeypatch):
    monkeypatch.setattr(integ, "opencl_status", lambda: (False, "pyopencl is not installed (test)"))
    out = tmp_path / "cl.nc"
    res = _cli(series, out, "--engine", "opencl")
    assert res.exit_code == 0, res.output
    # at once on stderr (one line, no Python warning source line) and in the summary on stdout
    assert "warning: integration engine 'opencl' requested but pyopencl is not installed (test)" in res.stderr
    assert "RuntimeWarning" not in res.output
    note = [line for line in res.stdout.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and "pyopencl is not installed (test)" in note[0] and "on the CPU with full,csc,cython" in note[0]
    ds = read_patterns(out)
    assert ds.attrs["method"] == "full,csc,cython"
    _same(ds, default_run)


@pytest.mark.parametrize("extra, needles", [
    (["--dask-address", "tcp://127.0.0.1:8786"], ["--dask-address needs --executor dask"]),
    (["--dask-workers", 1], ["--dask-workers needs --executor dask"]),
    (["--executor-workers", 2], ["--executor-workers needs --executor local"]),
    (["--batch-frames", 4], ["--batch-frames needs --executor"]),
    (["--executor", "local", "--workers", 3], ["--workers", "--executor local", "--executor-workers"]),
    (["--executor", "dask", "--workers", 3], ["--workers", "--dask-workers"]),
    (["--executor", "serial", "--executor-workers", 2], ["--executor-workers is for --executor local"]),
    (["--executor", "dask", "--executor-workers", 2], ["--executor-workers", "--dask-workers"]),
    (["--executor", "local", "--dask-address", "tcp://127.0.0.1:8786"], ["--dask-address is for --executor dask"]),
    (["--executor", "serial", "--dask-workers", 2], ["--dask-workers is for --executor dask"]),
    (["--executor", "dask", "--dask-address", "tcp://127.0.0.1:8786", "--dask-workers", 1],
     ["--dask-address", "--dask-workers", "not both"]),
    (["--executor", "dask", "--dask-address", " "], ["--dask-address is empty"]),
    (["--executor", "local", "--batch-frames", 0], ["--batch-frames"]),
    (["--executor", "local", "--executor-workers", 0], ["--executor-workers"]),
    (["--executor", "slurm"], ["--executor"]),
    (["--engine", "cuda"], ["--engine"]),
])
def test_bad_combinations_exit_2_naming_the_option(series, tmp_path, extra, needles):
    out = tmp_path / "x.nc"
    res = _cli(series, out, *extra)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())  # click wraps its usage errors in a box
    for needle in needles:
        assert needle in text, (needle, res.output)
    assert not out.exists() and not out.with_suffix(".zarr").exists()


def test_dask_not_installed_gives_the_executor_message(series, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # `import distributed` raises ImportError
    out = tmp_path / "x.nc"
    res = _cli(series, out, "--executor", "dask", "--dask-workers", 1)
    assert res.exit_code == 2, res.output
    assert "error: executor type 'dask' needs dask.distributed" in res.stderr
    assert "insitu-xrd[dask]" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_dask_local_cluster_gives_the_default_patterns(series, default_run, tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed not installed (pip install 'insitu-xrd[dask]')")
    out = tmp_path / "dask.nc"
    res = _cli(series, out, "--executor", "dask", "--dask-workers", 1, "--batch-frames", 3)
    assert res.exit_code == 0, res.output
    assert "executor dask (1 workers), 2 batches of <= 3 frames" in res.stdout
    _same(read_patterns(out), default_run)


def test_every_integrate_option_is_documented():
    """Every option of `insitu-xrd integrate` is in the options table of docs/integration.md."""
    import typer.main

    cmd = typer.main.get_command(app).commands["integrate"]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "integration.md").read_text()
    opts = [o for p in cmd.params if p.param_type_name == "option" for o in p.opts if o.startswith("--")]
    assert {"--executor", "--executor-workers", "--dask-address", "--dask-workers", "--batch-frames",
            "--engine"} <= set(opts)
    missing = [o for o in opts if o != "--help" and not re.search(rf"`{re.escape(o)}[` ]", doc)]
    assert not missing, missing
