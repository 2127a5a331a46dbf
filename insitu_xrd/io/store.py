"""Incremental, atomic, resumable per-frame result files (NetCDF via h5netcdf).

:class:`FrameStore` collects one record per frame (per-frame scalars, strings and N-D arrays on
fixed axes) and checkpoints the whole collection to a NetCDF file by writing ``<file>.partial``
and ``os.replace``-ing it over the target. The target is therefore always either absent or a
complete, readable file — an interrupted run (Ctrl-C, kill, crash) leaves the last checkpoint.
Re-opening the same path resumes: the records already on disk are loaded and
:meth:`FrameStore.done_keys` tells the caller which frames need no work.

Typical use (integration, sequential refinement, watch mode)::

    store = FrameStore(
        "patterns.nc",
        variables={"intensity": ("two_theta",), "sigma": ("two_theta",), "status": (),
                   "time_s": ()},
        axes={"two_theta": tth_deg},           # fixed coordinates of the array dims
        coords=("time_s", "frame_name"),        # per-frame variables stored as coordinates
        attrs={"wavelength_A": 0.1173, ...},
        signature={"poni": poni_text, "npt": 3000},  # must match to resume
    )
    with store:                                 # final checkpoint on exit, even on error
        for ref in refs:
            if ref.key in store.done_keys():
                continue
            store.append(ref.key, {"intensity": I, "sigma": s, "status": "ok", ...})

Record layout on disk: dimension ``frame`` (name configurable) with integer coordinate 0..n-1
in insertion order; the record key is the coordinate ``frame_key`` (str); each declared variable
has dims ``(frame, *its_dims)``; the axes are coordinates; ``attrs`` are the file attrs, plus
``store_signature`` (JSON of ``signature``). Floats missing from a record are NaN, strings "".

Checkpoint policy: after :meth:`append`, a checkpoint is written when ``checkpoint_every_frames``
records or ``checkpoint_every_s`` seconds have passed since the last one; the time interval grows
automatically to at least 20x the duration of the last write, so that rewriting a large file
never costs more than ~5 % of the run. :meth:`checkpoint` forces one; closing writes the last.

Memory: all records are held in memory (a 1000-frame x 3000-bin float64 pattern series with
sigma is ~50 MB); the store is meant for reduced data, not for raw frames.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError

__all__ = ["FrameStore", "write_dataset_atomic"]


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


def _json_norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class FrameStore:
    """Append-only (with upsert) per-frame record store checkpointed atomically to NetCDF.

    Args:
        path: the NetCDF file.
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
        resume: load an existing file at ``path`` (default). ``overwrite=True`` ignores it.

    Raises:
        InsituXRDError: existing file unreadable, of other settings (signature) or other axes.
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
    ) -> None:
        self.path = Path(path)
        self.variables = {k: tuple(v) for k, v in variables.items()}
        self.axes = {k: np.asarray(v) for k, v in (axes or {}).items()}
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
        self._records: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}
        self._dirty = 0
        self._last_write = time.monotonic()
        self._last_write_duration = 0.0
        self.n_checkpoints = 0
        stale = self.path.with_name(self.path.name + ".partial")
        if stale.exists():  # left by a run killed while writing; the target is still intact
            try:
                stale.unlink()
            except OSError:
                pass
        if self.path.exists() and resume and not overwrite:
            self._load_existing()

    # ---------------------------------------------------------------- loading
    def _load_existing(self) -> None:
        import xarray as xr

        try:
            ds = xr.load_dataset(self.path, engine="h5netcdf")
        except Exception as exc:  # corrupt/foreign file: refuse rather than overwrite silently
            raise InsituXRDError(
                f"output {self.path}: exists but cannot be read as a results file ({type(exc).__name__}: {exc}); "
                "remove it or choose another output (or use --overwrite)"
            ) from None
        if self.KEY not in ds.variables or self.frame_dim not in ds.dims:
            raise InsituXRDError(f"output {self.path}: exists but is not a resumable frame store "
                                 f"(no {self.KEY!r}); remove it or use --overwrite")
        old_sig = ds.attrs.get("store_signature")
        if old_sig is not None and self.signature:
            old = json.loads(old_sig)
            new = json.loads(_json_norm(self.signature))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise InsituXRDError(
                    f"output {self.path}: was made with other settings ({', '.join(diff)} differ); "
                    "cannot resume into it — use another output file or --overwrite"
                )
        for name, axis in self.axes.items():
            if name in ds.coords:
                old_axis = ds[name].values
                if old_axis.shape != axis.shape or not np.allclose(old_axis, axis, rtol=1e-9, atol=0):
                    raise InsituXRDError(f"output {self.path}: axis {name!r} differs from this run; "
                                         "cannot resume — use another output file or --overwrite")
        keys = [str(k) for k in ds[self.KEY].values]
        for i, key in enumerate(keys):
            rec: dict[str, Any] = {}
            for name in self.variables:
                if name in ds.variables:
                    val = ds[name].values[i]
                    rec[name] = val.item() if np.ndim(val) == 0 and hasattr(val, "item") else val
            self._index[key] = len(self._records)
            self._records.append(rec)
        # keep provenance attrs of the first run that are not set by this one (e.g. time zero)
        for k, v in ds.attrs.items():
            if k not in self.attrs and k != "store_signature":
                self.attrs[k] = v

    # ---------------------------------------------------------------- records
    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        """Record keys in storage order."""
        return list(self._index)

    def done_keys(self, variable: str | None = None, equals: Any = None) -> set[str]:
        """Keys of stored records; with ``variable``/``equals`` only those whose value matches
        (e.g. ``done_keys("status", "ok")`` to retry failed frames)."""
        if variable is None:
            return set(self._index)
        return {k for k, i in self._index.items() if self._records[i].get(variable) == equals}

    def get(self, key: str) -> dict[str, Any]:
        """The stored record (name -> value) of a key. Raises KeyError if absent."""
        return dict(self._records[self._index[key]])

    def append(self, key: str, values: Mapping[str, Any], checkpoint: bool = True) -> int:
        """Add (or replace, if ``key`` exists) one frame's record; returns its frame index.

        Args:
            key: unique frame identity (e.g. absolute file path).
            values: variable name -> scalar / str / array of the declared dims' shape. Unknown
                names raise ValueError; omitted variables are written as NaN / "".
            checkpoint: apply the checkpoint policy after adding.
        """
        rec: dict[str, Any] = {}
        for name, val in values.items():
            if name not in self.variables:
                raise ValueError(f"FrameStore {self.path}: unknown variable {name!r}")
            dims = self.variables[name]
            if dims:
                arr = np.asarray(val)
                shape = tuple(self.axes[d].size for d in dims)
                if arr.shape != shape:
                    raise ValueError(f"FrameStore {self.path}: {name!r} has shape {arr.shape}, expected {shape}")
                rec[name] = arr
            else:
                rec[name] = val
        if key in self._index:
            i = self._index[key]
            self._records[i] = rec
        else:
            i = len(self._records)
            self._index[key] = i
            self._records.append(rec)
        self._dirty += 1
        if checkpoint:
            self.maybe_checkpoint()
        return i

    # ---------------------------------------------------------------- writing
    def to_dataset(self) -> Any:
        """All records as an xarray Dataset (layout in the module docstring)."""
        import xarray as xr

        n = len(self._records)
        data_vars: dict[str, Any] = {}
        coords: dict[str, Any] = {self.frame_dim: np.arange(n, dtype=np.int64)}
        coords[self.KEY] = ((self.frame_dim,), np.array(list(self._index), dtype=object) if n else np.array([], dtype=object))
        for name, arr in self.axes.items():
            coords[name] = ((name,), arr)
        for name, dims in self.variables.items():
            vals = [rec.get(name) for rec in self._records]
            if dims:
                shape = tuple(self.axes[d].size for d in dims)
                dtype = self.dtypes.get(name)
                if dtype is None:
                    present = [v for v in vals if v is not None]
                    dtype = np.result_type(*present) if present else np.dtype(float)
                    if dtype.kind not in "fc":
                        dtype = np.dtype(float)
                out = np.full((n,) + shape, np.nan, dtype=dtype)
                for i, v in enumerate(vals):
                    if v is not None:
                        out[i] = v
                entry = ((self.frame_dim,) + dims, out)
            else:
                is_str = self.dtypes.get(name, None) is not None and self.dtypes[name].kind in "US" or any(
                    isinstance(v, str) for v in vals)
                if is_str:
                    out = np.array(["" if v is None else str(v) for v in vals], dtype=object)
                else:
                    dtype = self.dtypes.get(name, np.dtype(float))
                    if dtype.kind in "iub":
                        out = np.array([0 if v is None else v for v in vals], dtype=dtype)
                    else:
                        out = np.array([math.nan if v is None else v for v in vals], dtype=dtype)
                entry = ((self.frame_dim,), out)
            if name in self.coords:
                coords[name] = entry
            else:
                data_vars[name] = entry
        attrs = {}
        for k, v in self.attrs.items():
            attrs[k] = _json_norm(v) if isinstance(v, (dict, list, tuple)) else ("" if v is None else v)
        if self.signature:
            attrs["store_signature"] = _json_norm(self.signature)
        return xr.Dataset(data_vars=data_vars, coords=coords, attrs=attrs)

    def checkpoint(self) -> Path:
        """Write all records now (atomically) and reset the checkpoint counters."""
        t0 = time.monotonic()
        write_dataset_atomic(self.to_dataset(), self.path)
        now = time.monotonic()
        self._last_write_duration = now - t0
        self._last_write = now
        self._dirty = 0
        self.n_checkpoints += 1
        return self.path

    def maybe_checkpoint(self) -> bool:
        """Checkpoint if the policy says so; returns whether a file was written."""
        if not self._dirty:
            return False
        interval = max(self.checkpoint_every_s, 20.0 * self._last_write_duration)
        if self._dirty >= self.checkpoint_every_frames or time.monotonic() - self._last_write >= interval:
            self.checkpoint()
            return True
        return False

    def close(self) -> None:
        """Final checkpoint if anything is unwritten (also when nothing was ever written)."""
        if self._dirty or not self.path.exists():
            self.checkpoint()

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
