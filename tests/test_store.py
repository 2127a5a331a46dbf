"""The Zarr working store of FrameStore: same records as the NetCDF store, checkpoints that write
only the new frames, bounded memory, crash recovery, import of an earlier NetCDF file."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.store import FrameStore, open_frame_dataset, read_store_attrs, working_store_path

AX = np.linspace(1.0, 2.0, 6)


def _store(path, working="zarr", **kw):
    kw.setdefault("checkpoint_every_frames", 4)
    kw.setdefault("checkpoint_every_s", 1e9)
    return FrameStore(path, variables={"y": ("x",), "c": ("x",), "status": (), "t": (), "name": ()},
                      axes={"x": AX}, coords=("t", "name"), attrs={"who": "test", "cfg": {"a": 1}},
                      signature={"npt": 6}, dtypes={"c": np.float32, "status": str, "name": str},
                      working=working, **kw)


def _fill(st, keys, value=1.0):
    for i, k in enumerate(keys):
        rec = {"status": "ok" if i % 5 else "error: bad", "t": float(i), "name": f"f{k}"}
        if i % 5:
            rec["y"] = np.full(AX.size, value + i)
            rec["c"] = np.arange(AX.size, dtype=np.float32) * i
        st.append(k, rec)


def test_zarr_and_netcdf_stores_export_identical_files(tmp_path):
    keys = [f"k{i}" for i in range(11)]
    for working in ("netcdf", "zarr"):
        with _store(tmp_path / f"{working}.nc", working=working) as st:
            _fill(st, keys)
            st.append("k0", {"y": np.zeros(AX.size), "status": "ok", "t": 0.0, "name": "fk0"})  # retry in place
        st = _store(tmp_path / f"{working}.nc", working=working)  # resume
        assert st.done_keys("status", "ok") == set(keys) - {"k5", "k10"} and len(st) == 11
        np.testing.assert_array_equal(st.get("k0")["y"], np.zeros(AX.size))
        np.testing.assert_array_equal(st.get("k3")["c"], np.arange(AX.size) * 3)
        _fill(st, ["late1", "late2"], value=10.0)
        st.close()
    a = xr.load_dataset(tmp_path / "netcdf.nc", engine="h5netcdf")
    b = xr.load_dataset(tmp_path / "zarr.nc", engine="h5netcdf")
    xr.testing.assert_identical(a, b)
    assert b["c"].dtype == np.float32 and b["frame"].dtype == np.int64
    assert list(b["frame_key"].values[-2:]) == ["late1", "late2"]
    z = open_frame_dataset(tmp_path / "zarr.zarr")
    xr.testing.assert_identical(a.drop_attrs(), z.drop_attrs())
    assert read_store_attrs(tmp_path / "zarr.nc")["who"] == "test"


def test_checkpoint_writes_only_new_chunks_and_keeps_no_old_records(tmp_path):
    st = _store(tmp_path / "s.nc", chunk_frames=4)
    chunk_dir = tmp_path / "s.zarr" / "y" / "c"
    seen: dict[str, int] = {}
    for batch in range(6):
        _fill(st, [f"b{batch}_{i}" for i in range(4)])  # one checkpoint per 4 frames = one chunk
        assert st.n_checkpoints == batch + 1 and not st._pending  # nothing held after a checkpoint
        files = {str(p.relative_to(chunk_dir)): p.stat().st_ino for p in chunk_dir.rglob("*") if p.is_file()}
        assert len(files) == batch + 1
        for name, ino in seen.items():  # earlier chunks were not rewritten
            assert files[name] == ino
        seen = files
    assert all(len(v) == 0 for v in st._arrays.values())
    st.close()
    assert xr.load_dataset(tmp_path / "s.nc", engine="h5netcdf").sizes["frame"] == 24


def test_checkpoint_killed_half_way_is_rolled_back(tmp_path):
    import zarr

    st = _store(tmp_path / "s.nc")
    _fill(st, [f"k{i}" for i in range(8)])  # two checkpoints
    assert st.n_checkpoints == 2
    # a third checkpoint that died after growing 'y' but before the others and the commit
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "y"), mode="r+")
    arr.resize((11, AX.size))
    arr[8:11] = 99.0
    del st  # killed: no close, no NetCDF export
    assert not (tmp_path / "s.nc").exists()
    st = _store(tmp_path / "s.nc")
    assert len(st) == 8 and st.keys()[-1] == "k7"
    _fill(st, ["n0", "n1"])
    st.close()
    ds = xr.load_dataset(tmp_path / "s.nc", engine="h5netcdf")
    assert ds.sizes["frame"] == 10 and list(ds["frame_key"].values[-2:]) == ["n0", "n1"]
    assert not np.any(ds["y"].values == 99.0)
    assert [ds[v].shape[0] for v in ("y", "c", "status", "t")] == [10] * 4


def test_earlier_netcdf_file_is_imported_and_settings_checked(tmp_path):
    path = tmp_path / "old.nc"
    with _store(path, working="netcdf") as st:
        _fill(st, ["a", "b", "c"])
    st = _store(path)  # the Zarr store does not exist yet: the NetCDF records are taken over
    assert st.keys() == ["a", "b", "c"]
    _fill(st, ["d"])
    st.close()
    assert (tmp_path / "old.zarr" / "zarr.json").is_file()
    assert list(xr.load_dataset(path, engine="h5netcdf")["frame_key"].values) == ["a", "b", "c", "d"]
    with pytest.raises(InsituXRDError, match="npt"):
        FrameStore(path, variables={"y": ("x",)}, axes={"x": AX}, signature={"npt": 7}, working="zarr")
    with pytest.raises(InsituXRDError, match="axis"):
        FrameStore(path, variables={"y": ("x",)}, axes={"x": AX + 1}, signature={"npt": 6}, working="zarr")
    fresh = FrameStore(path, variables={"y": ("x",)}, axes={"x": AX}, working="zarr", overwrite=True)
    assert len(fresh) == 0 and not (tmp_path / "old.zarr").exists()


def test_zarr_only_store_has_no_netcdf_export(tmp_path):
    path = tmp_path / "w.zarr"
    assert working_store_path(path) == path and working_store_path(tmp_path / "w.nc") == path
    with _store(path) as st:
        _fill(st, ["a", "b"])
    assert not (tmp_path / "w.nc").exists()
    assert list(open_frame_dataset(path)["frame_key"].values) == ["a", "b"]


def test_reserved_rows_filled_in_any_order_equal_appends_in_order(tmp_path):
    """Region writes into reserved rows (out of order, a checkpoint after each, a re-open in the
    middle as after a crash) give the same store as appends in order; reserved rows read as NaN
    with their scalars until filled, and are not done."""
    axis = np.linspace(1.0, 2.0, 7)

    def store(name):
        return FrameStore(tmp_path / name, variables={"I": ("tth",), "status": (), "t": ()}, axes={"tth": axis},
                          working="zarr", chunk_frames=3, checkpoint_every_frames=100)

    def rec(i):
        return {"I": np.full(7, float(i)), "status": "ok", "t": 1.5 * i}

    ref = store("ref.nc")
    for i in range(8):
        ref.append(f"k{i}", rec(i))
    ref.close()
    st = store("res.nc")
    st.append("k0", rec(0))
    st.checkpoint()
    assert st.reserve([f"k{i}" for i in range(8)], {"status": "pending"}) == list(range(8))  # k0 keeps row 0
    st.checkpoint()
    mid = open_frame_dataset(tmp_path / "res.zarr")
    assert [str(s) for s in mid["status"].values] == ["ok"] + ["pending"] * 7 and np.isnan(mid["I"].values[1:]).all()
    for i in (6, 7, 3):
        st.append(f"k{i}", rec(i))
        st.checkpoint()
    st = store("res.nc")  # re-opened (a crash): the filled rows are done, the others pending
    assert st.done_keys("status", "ok") == {"k0", "k3", "k6", "k7"} and len(st) == 8
    for i in (1, 2, 5, 4):
        st.append(f"k{i}", rec(i))
        st.checkpoint()
    st.close()
    a, b = open_frame_dataset(tmp_path / "ref.zarr"), open_frame_dataset(tmp_path / "res.zarr")
    a.attrs, b.attrs = {}, {}
    xr.testing.assert_identical(a, b)
    assert list(b["frame"].values) == list(range(8))
