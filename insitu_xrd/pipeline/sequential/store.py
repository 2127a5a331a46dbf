"""The working store of a growing sequential refinement (watch mode): one row per fitted frame.

A watch session refines one frame at a time. Rewriting ``sequential.nc`` after each frame (what
the watch did before) costs in proportion to the frames already refined, so a long beamtime
slowed down with every frame. :class:`SequentialStore` keeps the refined frames in a Zarr store
``sequential.zarr`` (:class:`~insitu_xrd.io.store.FrameStore`, one writer): a new frame is one
append, a frame fitted again (a look-back, a frame that failed to integrate and is fine now) is
one region write, and memory holds only the keys and statuses. ``sequential.nc``, the file users
and the batch run open, is exported from it (:meth:`SequentialStore.export`) when the watch
refreshes its outputs and when it stops.

Rows have exactly the layout of :func:`~insitu_xrd.pipeline.sequential.records.records_to_dataset`
(each row is built by it, from the frame's record and pattern), so the export is the same
Dataset the whole-series function gives; frames integrated but not refined yet are exported as
"pending" rows, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.io.store import FrameStore, load_netcdf, open_frame_dataset, write_dataset_atomic
from insitu_xrd.pipeline.sequential.records import (FrameRecord, dataset_to_records, phase_onset_attrs, records_to_dataset,
                                                     site_parameter_dataset)

__all__ = ["SequentialStore"]

_COORDS = ("time_s", "frame_name")


def _one_frame_patterns(two_theta_deg: np.ndarray, wavelength_A: float) -> xr.Dataset:
    """A one-frame stand-in for the patterns, to get the row layout of records_to_dataset."""
    return xr.Dataset(coords={"frame": ("frame", [0]), "two_theta": ("two_theta", np.asarray(two_theta_deg, float)),
                              "time_s": ("frame", [np.nan]), "frame_name": ("frame", np.array([""], dtype=object))},
                      attrs={"wavelength_A": float(wavelength_A)})


class SequentialStore:
    """Per-frame store of sequential-refinement rows (see module docstring).

    Args:
        path: the exported NetCDF (``.../sequential.nc``); the store is ``sequential.zarr`` beside it.
        spec: the refinement (phases: the row layout).
        two_theta_deg: the patterns' radial axis as 2theta (deg).
        wavelength_A: wavelength (A).
        cache_key: the refinement settings' key; a store made with another key is started anew.
        integration_key: the integration settings' key (patterns integrated anew: refined anew).
        attrs: file attrs of the export (mode, recipe, ...).
        say: where to say that an existing store was started anew or imported.
        keys: the patterns' frame keys, to import a NetCDF checkpoint that has no ``frame_key``
            (the batch run's, by frame position; only when it has as many frames).
    """

    def __init__(self, path: str | Path, spec: RefinementSpec, two_theta_deg: np.ndarray, wavelength_A: float,
                 cache_key: str, integration_key: str = "", attrs: dict[str, Any] | None = None,
                 say: Callable[[str], None] = lambda m: None, keys: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.zarr_path = self.path.with_suffix(".zarr")
        self.spec = spec
        self.cache_key = cache_key
        self.attrs = dict(attrs or {})
        self.attrs["cache_key"] = cache_key
        self._one = _one_frame_patterns(two_theta_deg, wavelength_A)
        self.template = records_to_dataset([None], self._one, spec)
        variables: dict[str, tuple[str, ...]] = {}
        dtypes: dict[str, Any] = {}
        for name, var in self.template.variables.items():
            if var.dims[:1] != ("frame",) or name in ("frame",):
                continue
            variables[name] = tuple(var.dims[1:])
            dtypes[name] = str if var.dtype.kind in "OUS" else var.dtype
        axes = {d: self.template[d].values for d in ("phase", "corr_with", "two_theta")}
        opts = dict(variables=variables, axes=axes, coords=_COORDS, attrs=self.attrs,
                    signature={"cache_key": cache_key, "integration_key": integration_key}, dtypes=dtypes, working="zarr",
                    checkpoint_every_frames=1, chunk_frames=32)
        fresh = not (self.zarr_path / "zarr.json").is_file()
        try:
            self.store = FrameStore(self.zarr_path, **opts)
        except InsituXRDError as exc:  # other refinement settings (or unreadable): start anew
            say(f"{self.zarr_path.name}: {exc}; starting a new one")
            self.store = FrameStore(self.zarr_path, overwrite=True, **opts)
            fresh = True
        if fresh:
            self._import_netcdf(say, keys)

    def _import_netcdf(self, say: Callable[[str], None], keys: Sequence[str] | None) -> None:
        """Adopt the refined frames of a ``sequential.nc`` without a Zarr store beside it (an
        earlier version's, or one the batch run adopted from a watch session) when it was made
        with the same settings."""
        if not self.path.is_file():
            return
        try:
            old = load_netcdf(self.path, "sequential results")
        except InsituXRDError:
            return
        if old.attrs.get("cache_key") != self.cache_key:
            return
        if "frame_key" in old.variables:
            old_keys = [str(k) for k in old["frame_key"].values]
        elif keys is not None and len(keys) == old.sizes.get("frame"):
            old_keys = list(keys)
        else:
            return
        n = 0
        for i, (key, rec) in enumerate(zip(old_keys, dataset_to_records(old))):
            if rec is not None:
                self.put(str(key), rec, old.isel(frame=[i]))
                n += 1
        self.store.flush()
        if n:
            say(f"imported {n} refined frames from {self.path.name}")

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def keys(self) -> list[str]:
        return self.store.keys()

    def status(self, key: str) -> str | None:
        """Stored status of a frame ("ok", "refit", "skipped: ...", ...), None if not refined."""
        st = self.store.scalar(key, "status")
        return None if st is None else str(st)

    def put(self, key: str, record: FrameRecord, pattern: xr.Dataset) -> int:
        """Store (or replace) a frame's record; ``pattern``: that frame's patterns, one frame
        (its time and name). Returns the row. Written at the next :meth:`flush`."""
        row = records_to_dataset([record], pattern, self.spec)
        values = {name: row[name].values[0] for name in self.store.variables}
        return self.store.append(key, values, checkpoint=False)

    def record(self, key: str) -> FrameRecord | None:
        """The stored record of a frame (values, esds, curves), None if not refined."""
        i = self.store.index_of(key)
        if i is None:
            return None
        rec = dataset_to_records(self.store.read_rows([i]))[0]
        if rec is not None:
            rec.index, rec.key = i, key
        return rec

    def records(self) -> dict[str, FrameRecord]:
        """Every stored record by frame key (one read of the whole store: for a resume)."""
        if not len(self.store):
            return {}
        self.flush()
        ds = open_frame_dataset(self.zarr_path, load=True)
        out: dict[str, FrameRecord] = {}
        for i, (key, rec) in enumerate(zip(ds["frame_key"].values, dataset_to_records(ds))):
            if rec is not None:
                rec.key = str(key)
                out[str(key)] = rec
        return out

    def flush(self) -> None:
        """Write the rows added since the last flush (one append or region write)."""
        self.store.flush()

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------------
    def export(self, pattern_keys: Sequence[str], pending_patterns: Callable[[Sequence[int]], xr.Dataset],
               extra_attrs: dict[str, Any] | None = None) -> xr.Dataset:
        """Write ``sequential.nc`` (atomically) and return it: one row per frame of the patterns
        (``pattern_keys``, in patterns order), "pending" for frames not refined yet.

        pending_patterns: the patterns of the given patterns rows (for the pending rows' time and name).
        """
        self.flush()
        keys = list(pattern_keys)
        stored = self.store.keys()
        n = len(stored)
        if n and stored == keys[:n]:
            ds = open_frame_dataset(self.zarr_path, load=True)
            ds = ds.drop_vars([v for v in ("frame",) if v in ds.coords]).assign_coords(frame=np.arange(n))
            if len(keys) > n:
                ds = xr.concat([ds, self._pending_rows(keys, range(n, len(keys)), pending_patterns)], dim="frame",
                               data_vars="minimal", coords="minimal", compat="override", join="override")
        else:  # refined frames not in patterns order (not produced by the watch): rebuild by key
            ds = self._by_key(keys, pending_patterns)
        ds = self._dress(ds)
        if extra_attrs:
            ds.attrs.update(extra_attrs)
        write_dataset_atomic(ds, self.path)
        return ds

    def _pending_rows(self, keys: Sequence[str], rows: Sequence[int],
                      pending_patterns: Callable[[Sequence[int]], xr.Dataset]) -> xr.Dataset:
        rows = list(rows)
        pat = pending_patterns(rows)
        pend = records_to_dataset([None] * len(rows), pat, self.spec)
        pend = pend.assign_coords(frame=np.asarray(rows), frame_key=("frame", np.array([keys[i] for i in rows], dtype=object)))
        pend.attrs = {}
        return pend[[v for v in self.store.variables if v in pend.variables] + ["frame_key"]]

    def _by_key(self, keys: Sequence[str], pending_patterns: Callable[[Sequence[int]], xr.Dataset]) -> xr.Dataset:
        pat = pending_patterns(range(len(keys)))
        recs = [self.record(k) for k in keys]
        ds = records_to_dataset(recs, pat, self.spec)
        return ds.assign_coords(frame=np.arange(len(keys)), frame_key=("frame", np.array(keys, dtype=object)))

    def _dress(self, ds: xr.Dataset) -> xr.Dataset:
        """Attrs of the whole-series Dataset: the template's file and variable attrs, the onsets."""
        for name, var in self.template.variables.items():
            if name in ds.variables and var.attrs:
                ds[name].attrs.update(var.attrs)
        attrs = dict(self.template.attrs)
        attrs.update(self.attrs)
        for k in [k for k in attrs if k.endswith(("_onset_frame", "_onset_frame_name", "_onset_time_s"))]:
            attrs.pop(k)  # the template's onsets are those of an empty series
        ds.attrs = attrs
        ds.attrs.update(phase_onset_attrs(ds))
        return site_parameter_dataset(ds)
