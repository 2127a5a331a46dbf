"""Segments of a sequential refinement on the executors (serial / local processes / Dask).

The same small series (tests/test_sequential.py's charge, 12 frames, H3 from frame 6, written to a
patterns NetCDF) is refined in 3 segments with every executor and with the built-in forked pool
(the default): the results agree to rtol 1e-10. The segments are the same deterministic
computation wherever they run (the same task function on the same inputs, read from the same
file), so they are expected to be bit-identical (they are, here); the tolerance only leaves room
for a BLAS that sums in another order with a different thread count in the workers (one thread
each) than in this process. The serial chain (chunks: 1) stays the reference: the segmented
results agree with it within their esds. A seam that disagrees (a segment's overlap-frame fit
moved off by 0.01 A, monkeypatched into the task) is refit serially from its neighbour, and
``insitu-xrd run`` with an ``executor:`` section refines its segments through it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from insitu_xrd.pipeline import executors as ex
from insitu_xrd.pipeline.sequential import segments as seq_segments
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential import frame_arrays, run_chain, refine_sequence
from test_sequential import LAM, SPEC, _factory, _series

CHUNKS = 3
NUMERIC = ("a", "c", "a_esd", "c_esd", "volume", "microstrain", "scale", "phase_fraction", "phase_fraction_esd",
           "cathode_fraction", "rwp", "gof", "zero_shift", "optional_phase_p", "calc", "background")
RTOL = 1e-10


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    ds, truth = _series(12, onset=6, seed=7)
    path = tmp_path_factory.mktemp("seq_exec") / "patterns.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    # the built-in forked pool (today's default for chunks > 1) and the serial chain (the reference)
    forked = refine_sequence(ds, SPEC, _factory, SequentialSection(chunks=CHUNKS), progress=False, base_dir=".")
    serial_chain = refine_sequence(ds, SPEC, _factory, SequentialSection(), progress=False)
    return {"ds": ds, "path": path, "truth": truth, "forked": forked, "serial_chain": serial_chain}


@pytest.fixture(scope="module")
def dask_executor():
    pytest.importorskip("distributed")
    dx = ex.DaskExecutor(local={"n_workers": 2})
    yield dx
    dx.close()


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert [str(s) for s in a["status"].values] == [str(s) for s in b["status"].values]
    assert [str(m) for m in a["message"].values] == [str(m) for m in b["message"].values]
    np.testing.assert_array_equal(a["active"].values, b["active"].values)
    for v in NUMERIC:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=RTOL, atol=0, equal_nan=True, err_msg=v)


def test_serial_local_and_dask_segments_agree(series, dask_executor):
    runs = [("serial", ex.SerialExecutor(), None),  # no file given: the frames go through a temporary copy
            ("local", ex.LocalProcessExecutor(2), series["path"]),
            ("dask", dask_executor, series["path"])]
    outs = {}
    try:
        for name, executor, path in runs:
            outs[name] = refine_sequence(series["ds"], SPEC, _factory, SequentialSection(chunks=CHUNKS), progress=False,
                                         base_dir=".", executor=executor, patterns_path=path)
            assert outs[name].attrs["segment_executor"] == f"{name}: {CHUNKS} segments"
    finally:
        runs[1][1].close()
    for name, out in outs.items():
        _same(out, series["forked"])
        assert "segment_executor" not in series["forked"].attrs
        assert not any("refit serially" in str(m) for m in out["message"].values), name
    # the serial chain stays the reference: the segmented lattices agree with it within their esds
    ref, seg = series["serial_chain"], outs["dask"]
    for var in ("a", "c"):
        d = np.abs(seg[var].sel(phase="H2").values - ref[var].sel(phase="H2").values)
        esd = np.hypot(seg[f"{var}_esd"].sel(phase="H2").values, ref[f"{var}_esd"].sel(phase="H2").values)
        assert np.all(d <= 3 * esd + 1e-6), (var, d / esd)
    np.testing.assert_array_equal(seg["active"].values, ref["active"].values)


def test_segment_tasks_are_small_settings_and_build_once(series):
    order = list(range(4, 9))
    task = seq_segments.segment_task(series["path"], order, SPEC, SequentialSection(), LAM, ".", seed=None)
    text = json.dumps(task)  # JSON-able: paths, indices and settings, no arrays
    assert len(text) < 20_000 and str(series["path"]) in text
    seq_segments._SETTINGS_CACHE.clear()
    first = seq_segments.refine_segment(task)
    built = next(iter(seq_segments._SETTINGS_CACHE.values()))
    again = seq_segments.refine_segment(dict(task))
    assert len(seq_segments._SETTINGS_CACHE) == 1 and next(iter(seq_segments._SETTINGS_CACHE.values())) is built
    assert [r.index for r in first] == [r.index for r in again]
    np.testing.assert_array_equal([r.rwp for r in first], [r.rwp for r in again])
    # a seed travels as its values (no curves) and starts the chain like the full record
    from insitu_xrd.pipeline.sequential import dataset_to_records

    seed = dataset_to_records(series["serial_chain"])[3]
    seeded = seq_segments.refine_segment(seq_segments.segment_task(series["path"], order, SPEC, SequentialSection(), LAM,
                                                                   ".", seed=seed))
    assert "calc" not in json.dumps(seq_segments.seed_dict(seed))
    frames = {i: frame_arrays(series["ds"], i) for i in order}
    direct = run_chain(SPEC, LAM, _factory, SequentialSection(), order, frames, seed, lambda r: None)
    np.testing.assert_array_equal([r.rwp for r in seeded], [r.rwp for r in direct])


def test_disagreeing_seam_is_refit_serially_from_its_neighbour(series, monkeypatch):
    original = seq_segments.refine_segment
    segments = seq_segments._plan_segments(list(range(12)), CHUNKS)  # [[0..3], [3..7], [7..11]]

    def off_minimum(task):
        recs = original(task)
        if task["frames"][0] == segments[1][0]:  # the middle segment's overlap fit lands 0.01 A off
            recs[0].phases["H2"]["a"] += 0.01
        return recs

    monkeypatch.setattr(seq_segments, "refine_segment", off_minimum)
    out = refine_sequence(series["ds"], SPEC, _factory, SequentialSection(chunks=CHUNKS), progress=False,
                          base_dir=".", executor=ex.SerialExecutor())
    refit = [i for i, m in enumerate(out["message"].values) if "chunk refit serially (overlap disagreed)" in str(m)]
    assert refit == segments[1][1:]  # only the middle segment, its overlap frame is its neighbour's
    # refit serially here, seeded from the neighbour's last frame (exactly that chain)
    from insitu_xrd.pipeline.sequential import dataset_to_records

    recs = dataset_to_records(series["forked"])
    frames = {i: frame_arrays(series["ds"], i) for i in refit}
    chain = run_chain(SPEC, LAM, _factory, SequentialSection(chunks=CHUNKS), refit, frames, recs[segments[1][0]],
                       lambda r: None)
    np.testing.assert_array_equal(out["rwp"].values[refit], [r.rwp for r in chain])
    np.testing.assert_array_equal(out["a"].sel(phase="H2").values[refit], [r.phases["H2"]["a"] for r in chain])
    # the segments around it are untouched, and the shifted value went nowhere
    keep = [i for i in range(12) if i not in refit]
    np.testing.assert_array_equal(out["rwp"].values[keep], series["forked"]["rwp"].values[keep])
    np.testing.assert_allclose(out["a"].sel(phase="H2").values, series["truth"]["a"], atol=2e-4)


def test_run_with_an_executor_section_refines_its_segments_through_it(tmp_path):
    from insitu_xrd.cli.main import app
    from insitu_xrd.io.patterns import read_patterns
    from insitu_xrd.pipeline.refine_setup import make_refinement
    from insitu_xrd.fit.spec import RefinementSpec
    from insitu_xrd.simulate.dataset import simulate_dataset

    data = tmp_path / "data"
    simulate_dataset(data, frames=8, seed=3, binning=4, workers=1, cell_lines=False, diffuse=False)
    shutil.copyfile(data / "calib" / "ceo2_true.poni", data / "calib" / "geometry.poni")  # no calibration fit
    refinement = {"mode": "lebail", "range_2theta_deg": [1.2, 8.8], "background": {"chebyshev": 4},
                  "profile": {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3, "refine": ["W", "X"]},
                  "phases": [{"name": "H2", "template": "nmc811", "a": 2.87, "c": 14.21,
                              "refine": ["a", "c", "mustrain", "scale"]},
                             {"name": "H3", "template": "nmc811", "a": 2.82, "c": 14.0,
                              "refine": ["a", "c", "mustrain", "scale"], "optional": True}]}
    recipe = {"name": "seg", "wavelength_A": 0.1173,
              "calibration": {"image": "calib/ceo2.tif", "calibrant": "CeO2", "detector": "Perkin",
                              "poni": "calib/geometry.poni", "instrument_profile": "off"},
              "frames": {"files": "frames/*.tif", "time_source": "header"},
              "integration": {"npt": 1200, "unit": "2th_deg", "range": [1.0, 9.0], "polarization": 0.99},
              "executor": {"type": "serial"}, "refinement": refinement, "sequential": {"chunks": 2},
              "outputs": {"dir": "results", "figures": False, "report": False}}
    (data / "seg.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(data / "seg.yaml"), "--no-progress"])
    assert res.exit_code == 0, res.output
    seq = xr.load_dataset(data / "results" / "sequential.nc", engine="h5netcdf")
    assert seq.attrs["segment_executor"] == "serial: 2 segments"
    assert set(map(str, seq["status"].values)) <= {"ok", "refit"}
    # the same as the built-in pool on the same patterns
    patterns = read_patterns(seq.attrs["patterns_file"])
    spec = RefinementSpec.model_validate(refinement)
    forked = refine_sequence(patterns, spec, lambda sp: make_refinement(sp, 0.1173, data), SequentialSection(chunks=2),
                             progress=False, base_dir=data)
    _same(seq, forked)
