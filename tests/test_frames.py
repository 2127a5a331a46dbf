"""Frame discovery/reading/times (io.frames), the resumable FrameStore (io.store), PONI checks."""

from __future__ import annotations

import shutil

import fabio
import h5py
import numpy as np
import pytest
import xarray as xr

from insitu_xrd.errors import FrameError, InsituXRDError
from insitu_xrd.io.frames import (
    FrameClock,
    discover_frames,
    header_times,
    parse_datetime_epoch_s,
    parse_time_source,
    read_frame,
)
from insitu_xrd.io.poni import load_poni, poni_orientation, poni_text, write_poni
from insitu_xrd.io.store import FrameStore


def _tif(path, value=1, header=None, shape=(8, 10)):
    fabio.tifimage.TifImage(data=np.full(shape, value, np.int32), header=header or {}).write(str(path))
    return path


def test_discovery_natural_sort_globs_folders_and_dedup(tmp_path):
    for i in (10, 2, 1):
        _tif(tmp_path / f"f_{i}.tif")
    (tmp_path / "f_1.tif.metadata").write_text("[metadata]\n")
    (tmp_path / "times.csv").write_text("file,time_s\n")
    by_folder = discover_frames(tmp_path)
    assert [r.name for r in by_folder] == ["f_1.tif", "f_2.tif", "f_10.tif"]
    by_glob = discover_frames([str(tmp_path / "f_*"), tmp_path / "f_2.tif"])
    assert [r.name for r in by_glob] == ["f_1.tif", "f_2.tif", "f_10.tif"]  # sidecar skipped, duplicate dropped
    with pytest.raises(InsituXRDError, match="matches no file"):
        discover_frames(str(tmp_path / "*.edf"))
    with pytest.raises(InsituXRDError, match="no such file"):
        discover_frames(tmp_path / "absent.tif")


def test_simulator_tiff_header_times_and_sidecar_and_period(tmp_path):
    _tif(tmp_path / "frame_0000.tif", header={"time_s": "0.0", "acquisition_time": "2026-01-01T00:00:00Z"})
    _tif(tmp_path / "frame_0001.tif", header={"time_s": "30.5", "acquisition_time": "2026-01-01T00:00:30.5Z"})
    refs = discover_frames(tmp_path)
    clock = FrameClock("header")
    frames = [read_frame(r) for r in refs]
    assert [clock.times(f.ref, f.header, i)[0] for i, f in enumerate(frames)] == [0.0, 30.5]
    # acquisition_time alone (no time_s): relative to the first frame
    h = {"acquisition_time": "2026-01-01T00:00:30.5Z"}
    clock2 = FrameClock("header", time_zero_epoch_s=parse_datetime_epoch_s("2026-01-01T00:00:00Z"))
    assert clock2.times(refs[1], h, 1)[0] == pytest.approx(30.5)
    (tmp_path / "times.csv").write_text("file,time_s\nframe_0000.tif,100\nframe_0001.tif,200\n")
    side = FrameClock({"sidecar": tmp_path / "times.csv"})
    assert [side.times(r, None, i)[0] for i, r in enumerate(refs)] == [100.0, 200.0]
    per = FrameClock(parse_time_source("period_s: 7.5"))
    assert [per.times(r, None, i)[0] for i, r in enumerate(refs)] == [0.0, 7.5]
    assert np.isnan(FrameClock("header").times(refs[0], {}, 0)[0])  # unknown -> NaN, never invented
    assert np.isnan(FrameClock("none").times(refs[0], frames[0].header, 0)[0])
    assert np.isnan(FrameClock({"period_s": float("nan")}).times(refs[1], None, 1)[0])


def test_time_source_errors(tmp_path):
    for bad in ("hourly", {"period_s": -1}, {"foo": 1}):
        with pytest.raises(InsituXRDError, match="time_source"):
            parse_time_source(bad)
    (tmp_path / "t.csv").write_text("name,t\na,1\n")
    with pytest.raises(InsituXRDError, match="file.*time_s"):
        FrameClock({"sidecar": tmp_path / "t.csv"})


def test_qxrd_metadata_sidecar_time(real_data_dir, tmp_path):
    frame = _tif(tmp_path / "d350_CeO2-000000.tif")
    shutil.copy(real_data_dir / "d350_CeO2-000000.tif.metadata", tmp_path)
    fr = read_frame(discover_frames(frame)[0])
    assert fr.header["qxrd.Wavelength"] == "0.21160"
    t, epoch, src = header_times(fr.header)
    assert t is None and epoch == pytest.approx(1666110442.162) and "QXRD" in src


def test_edf_and_cbf_header_times(tmp_path):
    p = tmp_path / "a.edf"
    fabio.edfimage.EdfImage(data=np.zeros((4, 5), np.float32), header={"time_of_day": "1700000000.25"}).write(str(p))
    fr = read_frame(discover_frames(p)[0])
    assert header_times(fr.header)[1] == pytest.approx(1700000000.25)
    cbf_header = {"_array_data.header_contents": "# Detector: PILATUS\n# 2012-09-20T13:40:48.123\n# Exposure_time 1 s"}
    assert header_times(cbf_header)[1] == pytest.approx(parse_datetime_epoch_s("2012-09-20T13:40:48.123"))
    assert parse_datetime_epoch_s("Thu Sep 20 13:40:48 2012") == parse_datetime_epoch_s("2012-09-20T13:40:48")


def test_multi_frame_edf_gives_one_ref_per_frame_and_single_edf_one(tmp_path):
    multi = tmp_path / "series.edf"
    edf = fabio.edfimage.EdfImage(data=np.zeros((6, 7), np.float32), header={"time_s": "0"})
    for i in (1, 2):
        edf.append_frame(data=np.full((6, 7), i, np.float32), header={"time_s": f"{2.5 * i}"})
    edf.write(str(multi))
    single = tmp_path / "one.edf"
    fabio.edfimage.EdfImage(data=np.full((6, 7), 9, np.float32), header={"time_s": "7"}).write(str(single))
    refs = discover_frames(tmp_path)
    assert [r.name for r in refs] == ["one.edf", "series.edf:0", "series.edf:1", "series.edf:2"]
    frames = [read_frame(r) for r in refs]
    assert [float(f.data[0, 0]) for f in frames] == [9.0, 0.0, 1.0, 2.0]
    clock = FrameClock("header")
    assert [clock.times(f.ref, f.header, i)[0] for i, f in enumerate(frames)] == [7.0, 0.0, 2.5, 5.0]


def test_real_spe_frame_is_read(real_data_dir):
    refs = discover_frames(real_data_dir / "CeO2_PI_CCD_Mo.SPE")
    assert len(refs) == 1 and refs[0].name == "CeO2_PI_CCD_Mo.SPE"
    fr = read_frame(refs[0])
    assert fr.data.shape == (1042, 1042) and fr.data.dtype == np.uint16 and fr.data.max() > 1000


def test_hdf5_stack_discovery_names_and_times(tmp_path):
    p = tmp_path / "scan.h5"
    with h5py.File(p, "w") as fh:
        fh.create_dataset("entry/data/data", data=np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7))
        fh["entry/start_time"] = "2026-02-01T10:00:00"
        fh["entry/instrument/detector/count_time"] = 0.5
    refs = discover_frames(p)
    assert [r.name for r in refs] == ["scan.h5:0", "scan.h5:1", "scan.h5:2"]
    fr = read_frame(refs[2])
    assert fr.data.shape == (6, 7) and fr.data[0, 0] == 2 * 42
    clock = FrameClock()
    times = [clock.times(r, read_frame(r).header, i)[0] for i, r in enumerate(refs)]
    assert times == [0.0, 0.5, 1.0]
    # Eiger-style master with split data_00000N datasets
    q = tmp_path / "eiger_master.h5"
    with h5py.File(q, "w") as fh:
        fh.create_dataset("entry/data/data_000001", data=np.zeros((2, 4, 4), np.uint32))
        fh.create_dataset("entry/data/data_000002", data=np.ones((1, 4, 4), np.uint32))
    with h5py.File(tmp_path / "eiger_data_000001.h5", "w") as fh:  # the data file beside its master
        fh.create_dataset("entry/data/data", data=np.zeros((2, 4, 4), np.uint32))
    refs = discover_frames(str(tmp_path / "eiger_*.h5"))  # the data file is not listed twice
    assert [r.name for r in refs] == ["eiger_master.h5:0", "eiger_master.h5:1", "eiger_master.h5:2"]
    assert read_frame(refs[2]).data.sum() == 16


def test_unreadable_frames_raise_frame_error_naming_them(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(FrameError, match="junk.tif"):
        read_frame(discover_frames(tmp_path / "junk.tif")[0])
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF garbage")
    refs = discover_frames(tmp_path / "bad.h5")
    with pytest.raises(FrameError, match="bad.h5"):
        read_frame(refs[0])


# ------------------------------------------------------------------------------- FrameStore
def _store(path, **kw):
    return FrameStore(path, variables={"y": ("x",), "status": (), "t": ()}, axes={"x": np.arange(5.0)},
                      coords=("t",), attrs={"who": "test", "cfg": {"a": 1}}, signature={"npt": 5}, **kw)


def test_store_checkpoints_atomically_and_resumes(tmp_path):
    path = tmp_path / "s.nc"
    with _store(path, checkpoint_every_frames=2, checkpoint_every_s=1e9) as st:
        st.append("a", {"y": np.ones(5), "status": "ok", "t": 1.0})
        assert not path.exists()
        st.append("b", {"status": "error: unreadable", "t": 2.0})  # no y: NaN
        assert path.exists() and st.n_checkpoints == 1
        st.append("c", {"y": np.full(5, 3.0), "status": "ok", "t": 3.0})
        ds = xr.load_dataset(path, engine="h5netcdf")
        assert ds.sizes["frame"] == 2  # c not checkpointed yet: the file holds the last checkpoint
    ds = xr.load_dataset(path, engine="h5netcdf")
    assert list(ds["frame_key"].values) == ["a", "b", "c"]
    assert np.all(np.isnan(ds["y"].values[1])) and ds.attrs["cfg"] == '{"a": 1}'
    st = _store(path)
    assert st.done_keys() == {"a", "b", "c"} and st.done_keys("status", "ok") == {"a", "c"}
    st.append("b", {"y": np.full(5, 2.0), "status": "ok", "t": 2.0})  # retry replaces in place
    st.close()
    ds = xr.load_dataset(path, engine="h5netcdf")
    assert list(ds["frame_key"].values) == ["a", "b", "c"]
    assert ds["y"].values[1, 0] == 2.0 and list(ds["status"].values) == ["ok", "ok", "ok"]
    with pytest.raises(InsituXRDError, match="npt"):
        FrameStore(path, variables={"y": ("x",)}, axes={"x": np.arange(5.0)}, signature={"npt": 6})
    with pytest.raises(InsituXRDError, match="axis"):
        FrameStore(path, variables={"y": ("x",)}, axes={"x": np.arange(5.0) + 1}, signature={"npt": 5})
    assert len(FrameStore(path, variables={"y": ("x",)}, axes={"x": np.arange(5.0)}, overwrite=True)) == 0


def test_store_rejects_foreign_file_and_cleans_partial(tmp_path):
    path = tmp_path / "s.nc"
    path.write_text("not netcdf")
    with pytest.raises(InsituXRDError, match="cannot be read"):
        _store(path)
    path.unlink()
    (tmp_path / "s.nc.partial").write_text("half")
    st = _store(path)
    assert not (tmp_path / "s.nc.partial").exists()
    with pytest.raises(ValueError, match="shape"):
        st.append("a", {"y": np.ones(4)})


# ------------------------------------------------------------------------------- PONI
def test_poni_round_trip_orientation_and_errors(tmp_path, real_data_dir):
    ai = load_poni(real_data_dir / "2022-3_calib.poni")
    assert ai.detector.shape == (2048, 2048) and ai.wavelength == pytest.approx(0.2116e-10)
    assert poni_orientation(real_data_dir / "2022-3_calib.poni") is None  # written before pyFAI stored it
    out = write_poni(ai, tmp_path / "copy.poni")
    assert poni_orientation(out) == 3
    assert load_poni(out).dist == pytest.approx(ai.dist)
    flipped = load_poni(real_data_dir / "CeO2_Pilatus1M.poni", orientation=4)
    assert int(flipped.detector.orientation) == 4 and "orientation" in poni_text(flipped)
    bad = tmp_path / "bad.poni"
    bad.write_text("Distance: -1\nPoni1: 0\nPoni2: 0\nDetector: Perkin\n")
    with pytest.raises(InsituXRDError, match="bad.poni.*Distance"):
        load_poni(bad)
    bad.write_text("Distance: 1\nPoni1: x\nPoni2: 0\nDetector: Perkin\n")
    with pytest.raises(InsituXRDError, match="Poni1"):
        load_poni(bad)
    bad.write_text("Distance: 1\nPoni1: 0\nPoni2: 0\n")
    with pytest.raises(InsituXRDError, match="no detector"):
        load_poni(bad)
