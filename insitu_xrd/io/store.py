"""Incremental, resumable per-frame result stores: NetCDF (small series) or Zarr v3 (long series).

:class:`FrameStore` collects one record per frame (per-frame scalars, strings and N-D arrays on
fixed axes). Two working stores:

* ``working="netcdf"`` (default, small series): every checkpoint rewrites the whole collection to
  the NetCDF file by writing ``<file>.partial`` and ``os.replace``-ing it over the target; all
  records are held in memory. Cost per checkpoint and memory grow with the number of frames.
* ``working="zarr"`` (long series; used by ``insitu-xrd integrate`` and the pipeline): the records
  live in a Zarr v3 store ``<file stem>.zarr`` written through xarray. A checkpoint writes only the
  records added or replaced since the previous one: new frames are *appended* along the frame
  dimension (``to_zarr(append_dim=...)``; whole chunks when the checkpoint interval equals
  ``chunk_frames``), replaced frames (a failed frame retried) are written in place with *region*
  writes. A known-length list of frames can :meth:`~FrameStore.reserve` its rows first (keys and
  scalars such as ``status="pending"`` written, arrays grown without being written); each record
  is then a region write into its row, in whatever order the records arrive (the integration's
  batches as workers finish them). Cost per checkpoint and memory are flat in the number of frames already stored (memory:
  only the unflushed records' arrays; the keys and per-frame scalars, ~100 bytes a frame, stay in
  memory for :meth:`done_keys`). On :meth:`close` the NetCDF file ``path`` users open in
  notebooks is exported from the Zarr store (streamed chunk by chunk when dask is installed).
  If ``path`` itself ends in ``.zarr`` no NetCDF is exported.

Crash safety (Zarr): zarr-python's local store replaces every chunk and metadata file atomically;
after each checkpoint the number of complete frames is written to the group attr
``committed_frames`` (atomically, after the data; while a checkpoint writes, the attr keeps the
previous count). Re-opening truncates whatever a killed checkpoint wrote beyond that
count, so a crash loses at most the records of the checkpoint being written. A replaced record is
written data first and its scalars (status, key) last, so an interrupted replacement never marks
half-written data as done. One process writes a store (the caller's); workers never do.

Re-opening the same path resumes: the records already stored are found (Zarr store first, else a
NetCDF file of an earlier version, which is imported) and :meth:`FrameStore.done_keys` tells the
caller which frames need no work.

Typical use (integration, watch mode)::

    store = FrameStore(
        "patterns.nc",
        variables={"intensity": ("two_theta",), "sigma": ("two_theta",), "status": (),
                   "time_s": ()},
        axes={"two_theta": tth_deg},           # fixed coordinates of the array dims
        coords=("time_s", "frame_name"),        # per-frame variables stored as coordinates
        attrs={"wavelength_A": 0.1173, ...},
        signature={"poni": poni_text, "npt": 3000},  # must match to resume
        working="zarr", chunk_frames=32,
    )
    with store:                                 # final checkpoint (+ NetCDF export) on exit
        for ref in refs:
            if ref.key in store.done_keys():
                continue
            store.append(ref.key, {"intensity": I, "sigma": s, "status": "ok", ...})

Record layout (both stores and the export): dimension ``frame`` (name configurable) with integer
coordinate 0..n-1 in insertion order; the record key is the coordinate ``frame_key`` (str); each
declared variable has dims ``(frame, *its_dims)``; the axes are coordinates; ``attrs`` are the
file attrs, plus ``store_signature`` (JSON of ``signature``). Floats missing from a record are
NaN, strings "".

Checkpoint policy: after :meth:`append`, a checkpoint is written when ``checkpoint_every_frames``
records or ``checkpoint_every_s`` seconds have passed since the last one; the time interval grows
automatically to at least 20x the duration of the last write. :meth:`checkpoint` forces one;
closing writes the last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError

__all__ = ["FrameStore", "write_dataset_atomic", "load_netcdf", "working_store_path", "read_store_attrs",
           "open_frame_dataset"]

COMMIT_ATTR = "committed_frames"  # group attr of the Zarr store, written after the data


def write_dataset_atomic(ds: Any, path: str | Path) -> Path:
    """Write an xarray Dataset to NetCDF (h5netcdf) via ``<path>.partial`` + ``os.replace``.

    Readers never see a half-written file; the previous file stays intact if writing fails.

    Raises:
        InsituXRDError: the folder is not writable or the disk is full (message names the file).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_netcdf(tmp, engine="h5netcdf")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise InsituXRDError(f"output {path}: cannot be written ({exc})") from None
    return path


def load_netcdf(path: str | Path, what: str) -> Any:
    """The NetCDF file ``path`` loaded into memory (h5netcdf); a missing or unreadable file raises
    InsituXRDError naming ``what`` (e.g. "FEA result"), the file and the reason, in one line."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise InsituXRDError(f"{what} {path}: does not exist")
    try:
        return xr.load_dataset(path, engine="h5netcdf")
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InsituXRDError(f"{what} {path}: cannot be read as NetCDF ({type(exc).__name__}: {first})") from None


def working_store_path(path: str | Path) -> Path:
    """The Zarr working store of an output: ``x.nc`` -> ``x.zarr`` (``x.zarr`` stays itself)."""
    path = Path(path)
    return path if path.suffix == ".zarr" else path.with_suffix(".zarr")


def _read_commit(zpath: Path) -> int | None:
    """Committed frame count of a Zarr store (group attr ``COMMIT_ATTR``), None if unknown."""
    try:
        import zarr

        return int(zarr.open_group(str(zpath), mode="r").attrs[COMMIT_ATTR])
    except Exception:
        return None


def _write_commit(zpath: Path, n: int) -> None:
    import zarr

    zarr.open_group(str(zpath), mode="r+").attrs.update({COMMIT_ATTR: int(n)})


def _roll_back(zpath: Path, frame_dim: str) -> int:
    """Truncate every frame-dim array of a Zarr store to the committed frame count (what a
    checkpoint killed half-way wrote beyond it is dropped); returns that count."""
    import zarr

    group = zarr.open_group(str(zpath), mode="r+")
    arrays = [a for _name, a in group.arrays()
              if a.metadata.dimension_names and a.metadata.dimension_names[0] == frame_dim]
    if not arrays:
        return 0
    n_commit = _read_commit(zpath)
    n_min = min(int(a.shape[0]) for a in arrays)
    n = n_min if n_commit is None else min(n_commit, n_min)
    for a in arrays:
        if a.shape[0] != n:
            a.resize((n,) + tuple(a.shape[1:]))
    return n


def read_store_attrs(path: str | Path) -> dict[str, Any]:
    """Attrs of a results store without loading data: its Zarr working store if there is one, else
    the NetCDF file ({} when neither exists or is readable)."""
    path = Path(path)
    zpath = working_store_path(path)
    try:
        if (zpath / "zarr.json").is_file():
            import zarr

            return dict(zarr.open_group(str(zpath), mode="r").attrs)
        if path.is_file():
            import h5py

            with h5py.File(path, "r") as fh:
                return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
    except Exception:  # unreadable: the store itself reports it properly later
        return {}
    return {}


def _plain_strings(ds: Any) -> Any:
    """Zarr v3 strings come back as numpy StringDType: make them object str (as NetCDF gives) and
    drop the zarr encodings, so the dataset exports and compares like one read from NetCDF."""
    for name in list(ds.variables):
        var = ds.variables[name]
        if var.dtype.kind == "T":
            ds[name] = var.copy(data=np.asarray(var.values, dtype=object))
        ds[name].encoding = {}
    return ds


def _open_committed(path: str | Path, chunks: Any = None) -> Any:
    """The Zarr store of ``path`` opened lazily (nothing read but metadata and the index),
    truncated to the committed frames."""
    import xarray as xr

    zpath = working_store_path(path)
    ds = xr.open_zarr(str(zpath), consolidated=False, chunks=chunks, zarr_format=3)
    n = _read_commit(zpath)
    dims = [d for d in ds.dims if d != "frame"]
    frame_dim = "frame" if "frame" in ds.dims else (dims[0] if dims else "frame")
    if n is not None and frame_dim in ds.dims and ds.sizes[frame_dim] > n:
        ds = ds.isel({frame_dim: slice(0, n)})
    ds.attrs.pop(COMMIT_ATTR, None)
    return ds


def open_frame_dataset(path: str | Path, load: bool = True) -> Any:
    """A FrameStore's records as an xarray Dataset from its Zarr store (``path`` = the ``.zarr`` or
    its NetCDF export path), truncated to the committed frames; ``load=False`` keeps the numeric
    arrays lazy (dask-chunked when dask is installed; the per-frame strings are read)."""
    chunks: Any = None
    if not load:
        try:
            import dask  # noqa: F401

            chunks = {}
        except ImportError:
            chunks = None
    ds = _open_committed(path, chunks)
    if load:
        ds = ds.load()
    return _plain_strings(ds)


def _json_norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class FrameStore:
    """Append-only (with upsert) per-frame record store with atomic checkpoints.

    Args:
        path: the NetCDF file (the export with ``working="zarr"``; a ``.zarr`` path: no export).
        variables: name -> dims after the frame dim (``()`` for per-frame scalars/strings,
            ``("two_theta",)`` for a 1D array on that axis, ``("chi", "two_theta")``...).
        axes: name -> 1D coordinate array for every non-frame dim used in ``variables``.
        coords: names (from ``variables``) written as coordinates rather than data variables.
        attrs: file attributes (str, numbers; dicts/lists are stored as JSON strings).
        signature: settings that must be identical to resume into an existing file (stored as
            the JSON attr ``store_signature``); a mismatch raises InsituXRDError.
        frame_dim: name of the record dimension.
        dtypes: optional name -> numpy dtype for array/numeric variables (default float64;
            str for variables first appended as str).
        checkpoint_every_frames / checkpoint_every_s: checkpoint policy (see module docstring).
        resume: load an existing store at ``path`` (default). ``overwrite=True`` ignores it.
        working: "netcdf" (rewrite the whole file at each checkpoint) or "zarr" (see module).
        chunk_frames: frames per Zarr chunk (default ``checkpoint_every_frames``).

    Raises:
        InsituXRDError: existing store unreadable, of other settings (signature) or other axes.
    """

    KEY = "frame_key"

    def __init__(
        self,
        path: str | Path,
        variables: Mapping[str, Sequence[str]],
        axes: Mapping[str, np.ndarray] | None = None,
        coords: Iterable[str] = (),
        attrs: Mapping[str, Any] | None = None,
        signature: Mapping[str, Any] | None = None,
        frame_dim: str = "frame",
        dtypes: Mapping[str, Any] | None = None,
        checkpoint_every_frames: int = 100,
        checkpoint_every_s: float = 10.0,
        resume: bool = True,
        overwrite: bool = False,
        working: str = "netcdf",
        chunk_frames: int | None = None,
    ) -> None:
        if working not in ("netcdf", "zarr"):
            raise ValueError(f"FrameStore: working store {working!r} must be 'netcdf' or 'zarr'")
        self.path = Path(path)
        self.working = working
        self.zarr_path = working_store_path(self.path) if working == "zarr" else None
        self.export_netcdf = working == "netcdf" or self.path.suffix != ".zarr"
        self.variables = {k: tuple(v) for k, v in variables.items()}
        self.axes = {k: np.asarray(v) for k, v in (axes or {}).items()}
        for k, v in self.axes.items():  # labels as variable-length strings (zarr v3 has no fixed-length str)
            if v.dtype.kind in "US":
                self.axes[k] = v.astype(object)
        for name, dims in self.variables.items():
            for d in dims:
                if d not in self.axes:
                    raise ValueError(f"FrameStore: variable {name!r} uses dim {d!r} with no axis given")
        self.coords = set(coords)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.signature = dict(signature or {})
        self.frame_dim = frame_dim
        self.dtypes = {k: np.dtype(v) for k, v in (dtypes or {}).items()}
        self.checkpoint_every_frames = int(checkpoint_every_frames)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.chunk_frames = max(1, int(chunk_frames or checkpoint_every_frames))
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._scalars: dict[str, list[Any]] = {n: [] for n, d in self.variables.items() if not d}
        # arrays: all records (netcdf) or only the records not yet written (zarr: index -> values)
        self._arrays: dict[str, list[Any]] = {n: [] for n, d in self.variables.items() if d}
        self._pending: dict[int, dict[str, Any]] = {}
        self._reserved: set[int] = set()  # rows reserved (scalars only) and not yet written
        self._n_disk = 0  # zarr: frames in the store (committed)
        self._zarr_dtypes: dict[str, np.dtype] = {}
        self._dirty = 0
        self._dirty_since_export = False
        self._last_write = time.monotonic()
        self._last_write_duration = 0.0
        self.n_checkpoints = 0
        self.checkpoint_seconds: list[float] = []  # duration of each checkpoint (benchmarks)
        stale = self.path.with_name(self.path.name + ".partial")
        if stale.exists():  # left by a run killed while writing; the target is still intact
            try:
                stale.unlink()
            except OSError:
                pass
        if overwrite or not resume:  # start anew: an earlier working store must not be appended to
            if self.zarr_path is not None and self.zarr_path.exists():
                shutil.rmtree(self.zarr_path, ignore_errors=True)
            return
        if self.zarr_path is not None and (self.zarr_path / "zarr.json").is_file():
            self._load_zarr()
        elif self.path.is_file():
            self._load_netcdf()
            if self.working == "zarr":  # an earlier version's file: imported at the first checkpoint
                self._dirty = len(self._keys)
                for i in range(len(self._keys)):
                    self._pending[i] = {n: self._arrays[n][i] for n in self._arrays}
                self._arrays = {n: [] for n in self._arrays}

    # ---------------------------------------------------------------- loading
    def _check_compatible(self, ds: Any, source: Path) -> None:
        if self.KEY not in ds.variables or self.frame_dim not in ds.dims:
            raise InsituXRDError(f"output {source}: exists but is not a resumable frame store "
                                 f"(no {self.KEY!r}); remove it or use --overwrite")
        old_sig = ds.attrs.get("store_signature")
        if old_sig is not None and self.signature:
            old = json.loads(old_sig)
            new = json.loads(_json_norm(self.signature))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise InsituXRDError(
                    f"output {source}: was made with other settings ({', '.join(diff)} differ); "
                    "cannot resume into it — use another output file or --overwrite"
                )
        for name, axis in self.axes.items():
            if name in ds.coords:
                old_axis = ds[name].values
                if axis.dtype.kind in "fiu":
                    same = old_axis.shape == axis.shape and np.allclose(old_axis, axis, rtol=1e-9, atol=0)
                else:  # labels (phase names...)
                    same = [str(v) for v in old_axis] == [str(v) for v in axis]
                if not same:
                    raise InsituXRDError(f"output {source}: axis {name!r} differs from this run; "
                                         "cannot resume — use another output file or --overwrite")
        # keep provenance attrs of the first run that are not set by this one (e.g. time zero)
        for k, v in ds.attrs.items():
            if k not in self.attrs and k not in ("store_signature", COMMIT_ATTR):
                self.attrs[k] = v

    def _load_netcdf(self) -> None:
        import xarray as xr

        try:
            ds = xr.load_dataset(self.path, engine="h5netcdf")
        except Exception as exc:  # corrupt/foreign file: refuse rather than overwrite silently
            raise InsituXRDError(
                f"output {self.path}: exists but cannot be read as a results file ({type(exc).__name__}: {exc}); "
                "remove it or choose another output (or use --overwrite)"
            ) from None
        self._check_compatible(ds, self.path)
        keys = [str(k) for k in ds[self.KEY].values]
        for i, key in enumerate(keys):
            self._index[key] = i
            self._keys.append(key)
        for name in self._scalars:
            if name in ds.variables:
                self._scalars[name] = [v.item() if hasattr(v, "item") else v for v in ds[name].values]
            else:
                self._scalars[name] = [None] * len(keys)
        for name in self._arrays:
            self._arrays[name] = list(ds[name].values) if name in ds.variables else [None] * len(keys)

    def _load_zarr(self) -> None:
        import xarray as xr

        zpath = self.zarr_path
        assert zpath is not None
        try:
            _roll_back(zpath, self.frame_dim)
            ds = xr.open_zarr(str(zpath), consolidated=False, chunks=None, zarr_format=3)
        except Exception as exc:
            raise InsituXRDError(
                f"output {zpath}: exists but cannot be read as a results store ({type(exc).__name__}: {exc}); "
                "remove it or choose another output (or use --overwrite)"
            ) from None
        self._check_compatible(ds, zpath)
        n_commit = _read_commit(zpath)
        n = int(ds.sizes[self.frame_dim])
        keys = [str(k) for k in ds[self.KEY].values]
        self._keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        for name in self._scalars:
            if name in ds.variables:
                self._scalars[name] = [v.item() if hasattr(v, "item") else v for v in ds[name].values]
                if ds[name].dtype.kind == "T":
                    self._scalars[name] = [str(v) for v in self._scalars[name]]
            else:
                self._scalars[name] = [None] * n
        for name in ds.variables:
            self._zarr_dtypes[name] = ds[name].dtype
        self._n_disk = n
        if n_commit != n:
            _write_commit(zpath, n)

    # ---------------------------------------------------------------- records
    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        """Record keys in storage order."""
        return list(self._keys)

    def done_keys(self, variable: str | None = None, equals: Any = None) -> set[str]:
        """Keys of stored records; with ``variable``/``equals`` only those whose value matches
        (e.g. ``done_keys("status", "ok")`` to retry failed frames)."""
        if variable is None:
            return set(self._index)
        vals = self._scalars.get(variable)
        if vals is None:
            return set()
        return {k for k, v in zip(self._keys, vals) if v == equals}

    def key_at(self, i: int) -> str:
        """Key of storage row ``i``."""
        return self._keys[i]

    def index_of(self, key: str) -> int | None:
        """Storage row of a key (None if absent)."""
        return self._index.get(key)

    def scalar(self, key: str, name: str) -> Any:
        """One per-frame scalar of a stored record (None when absent or never set), from memory."""
        i = self._index.get(key)
        vals = self._scalars.get(name)
        return None if i is None or vals is None else vals[i]

    def _array_row(self, name: str, i: int) -> Any:
        if self.working == "netcdf":
            return self._arrays[name][i]
        if i in self._pending:
            return self._pending[i].get(name)
        import zarr

        assert self.zarr_path is not None
        try:
            return np.asarray(zarr.open_array(str(self.zarr_path / name), mode="r")[i])
        except Exception:
            return None

    def get(self, key: str) -> dict[str, Any]:
        """The stored record (name -> value) of a key. Raises KeyError if absent."""
        i = self._index[key]
        rec: dict[str, Any] = {}
        for name, vals in self._scalars.items():
            if vals[i] is not None:
                rec[name] = vals[i]
        for name in self._arrays:
            val = self._array_row(name, i)
            if val is not None:
                rec[name] = val
        return rec

    def append(self, key: str, values: Mapping[str, Any], checkpoint: bool = True) -> int:
        """Add (or replace, if ``key`` exists) one frame's record; returns its frame index.

        Args:
            key: unique frame identity (e.g. absolute file path).
            values: variable name -> scalar / str / array of the declared dims' shape. Unknown
                names raise ValueError; omitted variables are written as NaN / "".
            checkpoint: apply the checkpoint policy after adding.
        """
        arrays: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        for name, val in values.items():
            if name not in self.variables:
                raise ValueError(f"FrameStore {self.path}: unknown variable {name!r}")
            dims = self.variables[name]
            if dims:
                arr = np.asarray(val)
                shape = tuple(self.axes[d].size for d in dims)
                if arr.shape != shape:
                    raise ValueError(f"FrameStore {self.path}: {name!r} has shape {arr.shape}, expected {shape}")
                arrays[name] = arr
            else:
                scalars[name] = val
        if key in self._index:
            i = self._index[key]
        else:
            i = len(self._keys)
            self._index[key] = i
            self._keys.append(key)
            for vals in self._scalars.values():
                vals.append(None)
            if self.working == "netcdf":
                for vals in self._arrays.values():
                    vals.append(None)
        for name, vals in self._scalars.items():
            vals[i] = scalars.get(name)
        if self.working == "netcdf":
            for name, vals in self._arrays.items():
                vals[i] = arrays.get(name)
        else:
            self._pending[i] = {name: arrays.get(name) for name in self._arrays}
        self._dirty += 1
        if checkpoint:
            self.maybe_checkpoint()
        return i

    def reserve(self, keys: Sequence[str], values: Mapping[str, Any] | None = None) -> list[int]:
        """Rows for records that will come later, in this order (a known-length batch): the keys
        get their rows now, with only the scalars in ``values`` (e.g. ``{"status": "pending"}``;
        per-key lists allowed); their arrays read as missing (NaN) until :meth:`append` fills the
        row. The next checkpoint writes the keys and scalars and grows the arrays without writing
        them (Zarr: metadata only); each later append of a reserved key is a *region* write of its
        row, in whatever order the records arrive. Keys already stored keep their rows. Returns the
        rows of ``keys``."""
        values = dict(values or {})
        for name in values:
            if name not in self.variables or self.variables[name]:
                raise ValueError(f"FrameStore {self.path}: reserve takes per-frame scalars, not {name!r}")
        rows = []
        for n, key in enumerate(keys):
            i = self._index.get(key)
            if i is None:
                i = len(self._keys)
                self._index[key] = i
                self._keys.append(key)
                for name, vals in self._scalars.items():
                    v = values.get(name)
                    vals.append(v[n] if isinstance(v, (list, tuple)) else v)
                if self.working == "netcdf":
                    for vals in self._arrays.values():
                        vals.append(None)
                self._reserved.add(i)
                self._dirty += 1
            rows.append(i)
        return rows

    # ---------------------------------------------------------------- datasets
    def _file_attrs(self, commit: bool = False) -> dict[str, Any]:
        """File attrs (JSON for containers); ``commit``: with the committed frame count (Zarr)."""
        attrs: dict[str, Any] = {}
        for k, v in self.attrs.items():
            attrs[k] = _json_norm(v) if isinstance(v, (dict, list, tuple)) else ("" if v is None else v)
        if self.signature:
            attrs["store_signature"] = _json_norm(self.signature)
        if commit:
            attrs[COMMIT_ATTR] = int(self._n_disk)
        return attrs

    def _scalar_array(self, name: str, vals: list[Any]) -> np.ndarray:
        known = self._zarr_dtypes.get(name)
        if known is not None:
            is_str = known.kind in "TUSO"
        else:
            is_str = (self.dtypes.get(name) is not None and self.dtypes[name].kind in "US") or any(
                isinstance(v, str) for v in self._scalars[name])
        if is_str:
            return np.array(["" if v is None else str(v) for v in vals], dtype=object)
        dtype = known if known is not None else self.dtypes.get(name, np.dtype(float))
        if dtype.kind in "iub":
            return np.array([0 if v is None else v for v in vals], dtype=dtype)
        return np.array([math.nan if v is None else v for v in vals], dtype=dtype)

    def _rows_dataset(self, rows: Sequence[int], arrays_of: Any, with_axes: bool,
                      only: set[str] | None = None, commit: bool = False) -> Any:
        """Dataset of the given rows (frame coordinate = row index); ``arrays_of(name, rows)``
        gives each array variable's values (None = missing)."""
        import xarray as xr

        rows = list(rows)
        n = len(rows)
        data_vars: dict[str, Any] = {}
        coords: dict[str, Any] = {self.frame_dim: np.asarray(rows, dtype=np.int64)}
        if only is None or self.KEY in only:
            coords[self.KEY] = ((self.frame_dim,), np.array([self._keys[i] for i in rows], dtype=object))
        if with_axes:
            for name, arr in self.axes.items():
                coords[name] = ((name,), arr)
        for name, dims in self.variables.items():
            if only is not None and name not in only:
                continue
            if dims:
                vals = arrays_of(name, rows)
                shape = tuple(self.axes[d].size for d in dims)
                dtype = self._zarr_dtypes.get(name) or self.dtypes.get(name)
                if dtype is None:
                    present = [v for v in vals if v is not None]
                    dtype = np.result_type(*present) if present else np.dtype(float)
                    if dtype.kind not in "fc":
                        dtype = np.dtype(float)
                out = np.full((n,) + shape, _missing(dtype), dtype=dtype)
                for j, v in enumerate(vals):
                    if v is not None:
                        out[j] = v
                entry = ((self.frame_dim,) + dims, out)
            else:
                vals = self._scalars[name]
                entry = ((self.frame_dim,), self._scalar_array(name, [vals[i] for i in rows]))
            if name in self.coords:
                coords[name] = entry
            else:
                data_vars[name] = entry
        return xr.Dataset(data_vars=data_vars, coords=coords, attrs=self._file_attrs(commit))

    def read_rows(self, rows: Sequence[int]) -> Any:
        """The records at storage rows ``rows`` as a Dataset (layout of :meth:`to_dataset`, frame
        coordinate = the rows), read from the working store: the cost is that of the rows, not
        of the series. Unwritten rows are written first."""
        rows = [int(r) for r in rows]
        if self.working == "netcdf":
            return self._rows_dataset(rows, lambda name, rr: [self._arrays[name][i] for i in rr], with_axes=True)
        if self._pending:
            self.checkpoint()
        assert self.zarr_path is not None
        ds = _open_committed(self.zarr_path)  # lazy: only the rows' chunks are read below
        part = ds.isel({self.frame_dim: rows}).load()
        ds.close()
        part.attrs = self._file_attrs()
        return _plain_strings(part)

    def to_dataset(self) -> Any:
        """All records as an xarray Dataset (layout in the module docstring; loads everything)."""
        if self.working == "netcdf":
            return self._rows_dataset(range(len(self._keys)), lambda name, rows: [self._arrays[name][i] for i in rows],
                                      with_axes=True)
        self.checkpoint()
        ds = open_frame_dataset(self.zarr_path, load=True)
        ds.attrs = self._file_attrs()
        return ds

    # ---------------------------------------------------------------- writing
    def _flush_zarr(self) -> None:
        if any(i >= self._n_disk for i in self._reserved):
            self._flush_zarr_reserved()
            return
        zpath = self.zarr_path
        assert zpath is not None
        pending = self._pending

        def arrays_of(name: str, rows: Sequence[int]) -> list[Any]:
            return [pending[i].get(name) for i in rows]

        new_rows = sorted(i for i in pending if i >= self._n_disk)
        old_rows = sorted(i for i in pending if i < self._n_disk)
        if not (zpath / "zarr.json").is_file():
            ds = self._rows_dataset(new_rows, arrays_of, with_axes=True, commit=True)
            enc = {}
            for name in ds.variables:
                var = ds[name]
                if var.dims[:1] == (self.frame_dim,):
                    enc[name] = {"chunks": (self.chunk_frames,) + tuple(var.shape[1:])}
            zpath.parent.mkdir(parents=True, exist_ok=True)
            ds.to_zarr(str(zpath), mode="w", zarr_format=3, consolidated=False, encoding=enc)
            for name in ds.variables:
                self._zarr_dtypes[name] = np.dtype(object) if ds[name].dtype == object else ds[name].dtype
        else:
            if old_rows:
                # in place, data first, then the scalars that say the record is there (status, key)
                self._write_regions(zpath, old_rows, arrays_of, self._array_names())
                self._write_regions(zpath, old_rows, arrays_of, self._scalar_names())
            if new_rows:
                ds = self._rows_dataset(new_rows, arrays_of, with_axes=False, commit=True)
                ds.to_zarr(str(zpath), append_dim=self.frame_dim, consolidated=False, zarr_format=3)
        self._n_disk = len(self._keys)
        self._commit_attrs(zpath)
        self._pending = {}

    def _array_names(self) -> set[str]:
        return {n for n, d in self.variables.items() if d}

    def _scalar_names(self) -> set[str]:
        """The per-frame scalars and the key: written after the arrays, they say a record is there."""
        return {self.KEY} | {n for n, d in self.variables.items() if not d}

    def _write_regions(self, zpath: Path, rows: Sequence[int], arrays_of: Any, names: set[str]) -> None:
        """Region writes of the variables ``names`` at the sorted storage ``rows`` (contiguous runs);
        the file attrs and the commit count are written separately, after the data."""
        if not names:
            return
        for j0, j1 in _runs(rows):
            part = self._rows_dataset(range(j0, j1), arrays_of, with_axes=False, only=names)
            part = part.drop_vars([c for c in part.coords if c not in part.dims and c not in names])
            part.attrs = {}
            part.to_zarr(str(zpath), region={self.frame_dim: slice(j0, j1)}, mode="r+",
                         consolidated=False, safe_chunks=False, zarr_format=3)

    def _commit_attrs(self, zpath: Path) -> None:
        """The file attrs (they change during a run: e.g. the time zero after the first frame)
        and the committed frame count, in one metadata write after the data."""
        import zarr

        zarr.open_group(str(zpath), mode="r+").attrs.update(self._file_attrs(commit=True))

    def _flush_zarr_reserved(self) -> None:
        """A checkpoint with reserved rows among the new ones: the arrays grow (metadata only),
        then the rows that carry arrays are region-written, then every new row's scalars and key,
        then the commit count (a crash before it: the new rows are rolled back on re-opening)."""
        import zarr

        zpath = self.zarr_path
        assert zpath is not None
        pending = self._pending

        def arrays_of(name: str, rows: Sequence[int]) -> list[Any]:
            return [pending.get(i, {}).get(name) for i in rows]

        start = self._n_disk
        n_total = len(self._keys)
        if not (zpath / "zarr.json").is_file():  # the layout from the first row (one row of arrays)
            ds = self._rows_dataset([0], arrays_of, with_axes=True)
            ds.attrs[COMMIT_ATTR] = 0
            enc = {name: {"chunks": (self.chunk_frames,) + tuple(ds[name].shape[1:])}
                   for name in ds.variables if ds[name].dims[:1] == (self.frame_dim,)}
            zpath.parent.mkdir(parents=True, exist_ok=True)
            ds.to_zarr(str(zpath), mode="w", zarr_format=3, consolidated=False, encoding=enc)
            for name in ds.variables:
                self._zarr_dtypes[name] = np.dtype(object) if ds[name].dtype == object else ds[name].dtype
            start = 0
        group = zarr.open_group(str(zpath), mode="r+")
        for _name, arr in group.arrays():
            dims = arr.metadata.dimension_names
            if dims and dims[0] == self.frame_dim and arr.shape[0] != n_total:
                arr.resize((n_total,) + tuple(arr.shape[1:]))
        if n_total > start:  # the frame index (xarray leaves index coordinates out of region writes)
            group[self.frame_dim][start:n_total] = np.arange(start, n_total, dtype=np.int64)
        # rows already on disk are rewritten whole (a record without arrays: NaN); new rows only
        # where a record brought arrays (the others read as the fill value, NaN)
        with_arrays = sorted(i for i, vals in pending.items() if i < start or any(v is not None for v in vals.values()))
        self._write_regions(zpath, with_arrays, arrays_of, self._array_names())
        self._write_regions(zpath, sorted(set(range(start, n_total)) | {i for i in pending if i < start}), arrays_of,
                            self._scalar_names())
        self._n_disk = n_total
        self._commit_attrs(zpath)
        self._pending = {}
        self._reserved = set()

    def checkpoint(self) -> Path:
        """Write the records now (atomically) and reset the checkpoint counters. Returns the
        file written (the NetCDF file, or the Zarr store)."""
        t0 = time.monotonic()
        if self.working == "netcdf":
            write_dataset_atomic(self.to_dataset(), self.path)
            target = self.path
            self._reserved = set()
        else:
            try:
                self._flush_zarr()
            except OSError as exc:
                raise InsituXRDError(f"output {self.zarr_path}: cannot be written ({exc})") from None
            target = self.zarr_path
            self._dirty_since_export = True
        now = time.monotonic()
        self._last_write_duration = now - t0
        self.checkpoint_seconds.append(self._last_write_duration)
        self._last_write = now
        self._dirty = 0
        self.n_checkpoints += 1
        assert target is not None
        return target

    def flush(self) -> bool:
        """Checkpoint if any record is unwritten; returns whether a file was written."""
        if not self._dirty and not self._pending:
            return False
        self.checkpoint()
        return True

    def maybe_checkpoint(self) -> bool:
        """Checkpoint if the policy says so; returns whether a file was written."""
        if not self._dirty:
            return False
        interval = max(self.checkpoint_every_s, 20.0 * self._last_write_duration)
        if self._dirty >= self.checkpoint_every_frames or time.monotonic() - self._last_write >= interval:
            self.checkpoint()
            return True
        return False

    def export(self) -> Path:
        """Write the NetCDF file ``path`` from the Zarr store (atomic; streamed chunk by chunk
        when dask is installed, else one variable at a time in memory)."""
        assert self.zarr_path is not None
        if self._dirty or not (self.zarr_path / "zarr.json").is_file():
            self.checkpoint()
        ds = open_frame_dataset(self.zarr_path, load=False)
        ds.attrs = self._file_attrs()
        try:
            import dask
        except ImportError:
            dask = None
        if dask is not None:
            # computed here, chunk by chunk, even when a dask.distributed Client is around
            with dask.config.set(scheduler="threads"):
                write_dataset_atomic(ds, self.path)
        else:
            write_dataset_atomic(ds, self.path)
        ds.close()
        self._dirty_since_export = False
        return self.path

    def close(self) -> None:
        """Final checkpoint if anything is unwritten (also when nothing was ever written); with the
        Zarr working store, export the NetCDF file when it is out of date."""
        if self.working == "netcdf":
            if self._dirty or not self.path.exists():
                self.checkpoint()
            return
        assert self.zarr_path is not None
        if self._dirty or not (self.zarr_path / "zarr.json").is_file():
            self.checkpoint()
        if self.export_netcdf and (self._dirty_since_export or not self.path.exists()):
            self.export()

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _missing(dtype: np.dtype) -> Any:
    """Fill value of a missing array record: NaN for floats, False/0 for booleans and integers."""
    kind = np.dtype(dtype).kind
    return False if kind == "b" else (0 if kind in "iu" else np.nan)


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of sorted row indices."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out
