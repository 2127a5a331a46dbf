"""How a sequential refinement is run: checkpoints, resumes, chain-state files, segments.

:func:`refine_sequence` fits every frame of a patterns Dataset with the chain of
:mod:`insitu_xrd.pipeline.sequential.chain`: the pending frames in fit order form runs, each continued from
the record before it (with the exact chain state of ``<checkpoint>.state`` when there is one),
and the results are written to the checkpoint as frames finish (appended to the working store
``sequential.zarr`` beside it, :mod:`insitu_xrd.pipeline.sequential.store`: a checkpoint costs the same
at frame 10 and at frame 10,000; the NetCDF checkpoint is written at the end and when the run is
interrupted). With ``chunks > 1`` a run is split
into segments fitted in parallel (:mod:`insitu_xrd.pipeline.sequential.segments`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.io.chain_state import read_chain_state_file, write_chain_state_file
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential.cell_late import late_lines
from insitu_xrd.pipeline.sequential.cell_lines import detect_cell_lines, resumed_cell_lines
from insitu_xrd.pipeline.sequential.chain import RefinementFactory, SequentialRefiner, run_chain
from insitu_xrd.pipeline.sequential.records import (FrameRecord, frame_arrays, records_to_dataset, site_parameter_dataset,
                                                     two_theta_axis)
from insitu_xrd.pipeline.sequential.segments import refine_segments_in_processes, refine_segments_on_executor, seed_before
from insitu_xrd.pipeline.sequential.store import SequentialStore

__all__ = ["refine_sequence", "chain_state_path", "read_chain_state", "write_chain_state"]


def chain_state_path(checkpoint: Path) -> Path:
    """Where the exact-resume state of a checkpoint lives (``<checkpoint>.state``, JSON data)."""
    return Path(checkpoint).with_name(Path(checkpoint).name + ".state")


def read_chain_state(path: Path, cache_key: str | None, after: str) -> bytes | None:
    """The chain state in ``path`` if it was written with ``cache_key`` right after the frame
    ``after`` (index or frame key, as a string); else None (see :mod:`insitu_xrd.io.chain_state`)."""
    return read_chain_state_file(path, cache_key, after)


def write_chain_state(path: Path, cache_key: str | None, after: str, refiner: SequentialRefiner) -> bool:
    """Write the chain state (atomically) next to a checkpoint; see :func:`read_chain_state`.
    Never raises: without the state a resume is seeded from the stored values (returns False)."""
    try:
        write_chain_state_file(path, cache_key, after, refiner.state_bytes())
        return True
    except Exception:
        try:
            path.unlink(missing_ok=True)  # a stale state must not be taken for this one
        except OSError:
            pass
        return False


def refine_sequence(
    patterns: xr.Dataset,
    spec: RefinementSpec,
    factory: RefinementFactory,
    options: SequentialSection | None = None,
    checkpoint: str | Path | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    base_dir: str | Path | None = None,
    attrs: dict[str, Any] | None = None,
    executor: Any = None,
    patterns_path: str | Path | None = None,
) -> xr.Dataset:
    """Sequentially refine every frame of a patterns Dataset.

    Parameters
    ----------
    patterns: Dataset with ``intensity``, ``sigma``, ``status`` (frame x two_theta or q).
    spec: refinement section.
    factory: spec -> Refinement, e.g. ``lambda s: make_refinement(s, wavelength_A, base_dir)``.
    options: sequential section (direction, thresholds, chunks, workers, checkpoint_every).
    checkpoint: NetCDF file written as frames finish (with the chain state in
        ``<checkpoint>.state`` for an exact resume); when it exists with the same ``cache_key`` its
        finished frames are kept and the run resumes after them.
    cache_key: identifies inputs + settings (stored in attrs; a different key restarts).
    progress: show a rich progress bar.
    base_dir: folder for relative files of the spec (needed by worker processes, chunks > 1).
    executor: where the segments of ``chunks > 1`` run: an executor of
        :mod:`insitu_xrd.pipeline.executors` or its settings (a recipe ``executor`` section or
        dict, opened with :func:`~insitu_xrd.pipeline.executors.get_executor`); none = a pool of
        ``options.workers`` forked processes (the default). Unused with ``chunks: 1``.
    patterns_path: the file or Zarr store ``patterns`` was read from; with an executor its workers
        read their frames from it (none: from a temporary copy of the frames).

    Returns the results Dataset (see module docstring); also written to ``checkpoint``.
    """
    opt = options or SequentialSection()
    wavelength = float(patterns.attrs.get("wavelength_A", np.nan))
    if not np.isfinite(wavelength):
        raise InsituXRDError("patterns Dataset has no wavelength_A attribute")
    nf = patterns.sizes["frame"]
    records: list[FrameRecord | None] = [None] * nf
    ckpt = Path(checkpoint) if checkpoint else None
    state_path = chain_state_path(ckpt) if ckpt is not None else None
    all_attrs = dict(attrs or {})
    all_attrs.update({"cache_key": cache_key or "", "direction": opt.direction,
                      "sequential_options": opt.model_dump_json()})
    cells = None
    if spec.cell_lines == "auto":  # the cell's own lines, found in the first frames, become part of the model
        # a resumed run keeps the model its stored frames were refined with
        cells = resumed_cell_lines(ckpt, cache_key or "") if ckpt is not None and cache_key else None
        if cells is None:
            cells = detect_cell_lines(patterns, spec, factory, opt)
        spec = cells.apply(spec)
        all_attrs.update(cells.attrs())
    keys = frame_keys(patterns)
    store: SequentialStore | None = None
    if ckpt is not None:
        # the working store sequential.zarr: a checkpoint appends the frames fitted since the last
        # one (flat cost); the NetCDF checkpoint is written from it at the end or on interruption
        store = SequentialStore(ckpt, spec, two_theta_axis(patterns), wavelength, cache_key=cache_key or "",
                                attrs=all_attrs, keys=keys)
        stored = store.records()
        for i, k in enumerate(keys):
            r = stored.get(k)
            if r is not None:
                r.index, r.key = i, ""
                records[i] = r
    order = list(range(nf)) if opt.direction == "forward" else list(range(nf - 1, -1, -1))
    todo = [i for i in order if records[i] is None]

    def write() -> None:
        if store is not None:
            store.flush()

    # contiguous runs of pending frames in fit order, each seeded from the record before it
    runs: list[tuple[list[int], FrameRecord | None]] = []
    pos = {f: k for k, f in enumerate(order)}
    cur: list[int] = []
    for f in todo:
        if cur and pos[f] == pos[cur[-1]] + 1:
            cur.append(f)
        else:
            if cur:
                runs.append((cur, seed_before(records, order, pos[cur[0]])))
            cur = [f]
    if cur:
        runs.append((cur, seed_before(records, order, pos[cur[0]])))

    frames = {i: frame_arrays(patterns, i) for i in todo}
    t0 = time.perf_counter()
    n_done = [0]
    since_write = [0]
    last_write = [t0]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]refine[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=False)
    with prog:
        task = prog.add_task(f"{len(todo)} frames", total=len(todo))

        def emit(rec: FrameRecord, refiner: SequentialRefiner | None = None) -> None:
            revision = records[rec.index] is not None and rec.index in frames
            records[rec.index] = rec
            if store is not None:
                store.put(keys[rec.index], rec, patterns.isel(frame=[rec.index]))
            if revision:  # an earlier frame fitted again (look-back): replaced, not counted again
                return
            n_done[0] += 1
            since_write[0] += 1
            prog.update(task, advance=1, description=f"frame {rec.index} {rec.status} Rwp={rec.rwp:.4f}")
            if since_write[0] >= opt.checkpoint_every and time.perf_counter() - last_write[0] >= opt.checkpoint_interval_s:
                if refiner is not None and state_path is not None:
                    write_chain_state(state_path, cache_key, str(rec.index), refiner)
                write()
                since_write[0] = 0
                last_write[0] = time.perf_counter()

        nchunks = max(1, min(opt.chunks, len(todo) // 4 if len(todo) >= 8 else 1))
        try:
            if nchunks > 1 and len(runs) == 1 and executor is not None:
                ex = executor if hasattr(executor, "submit") else _open_executor(executor)
                all_attrs["segment_executor"] = f"{getattr(ex, 'name', type(ex).__name__)}: {nchunks} segments"
                refine_segments_on_executor(runs[0], nchunks, opt, spec, wavelength, factory, frames, patterns, records, emit,
                                      prog, task, base_dir, ex, patterns_path)
            elif nchunks > 1 and len(runs) == 1:
                refine_segments_in_processes(runs[0], nchunks, opt, spec, wavelength, factory, frames, patterns, records, emit, prog, task,
                          base_dir)
            else:
                for run_order, seed in runs:
                    k = pos[run_order[0]]
                    state = (read_chain_state(state_path, cache_key, str(order[k - 1]))
                             if state_path is not None and k > 0 and state_path.exists() else None)
                    run_chain(spec, wavelength, factory, opt, run_order, frames, seed, emit, state=state,
                               with_refiner=True)
        except BaseException:
            if store is not None and ckpt is not None:  # interrupted: what was fitted stays, in both files
                store.flush()
                _atomic_write(records_to_dataset(records, patterns, spec, all_attrs), ckpt)
            raise
    write_attrs = {"elapsed_s": time.perf_counter() - t0}
    all_attrs.update(write_attrs)
    ds = site_parameter_dataset(records_to_dataset(records, patterns, spec, all_attrs))
    if cells is not None:  # lines that appear later are never absorbed: flagged
        ds.attrs["cell_late_lines"] = json.dumps(late_lines(ds, patterns, spec, cells.frames))
    if ckpt is not None:
        assert store is not None
        store.close()
        _atomic_write(ds, ckpt)
        if state_path is not None and state_path.exists() and all(r is not None for r in records):
            state_path.unlink()  # only an interrupted run needs it
    return ds


def frame_keys(patterns: xr.Dataset) -> list[str]:
    """The frames' stable names: the patterns' ``frame_key`` (the file), else ``frame:<index>``."""
    if "frame_key" in patterns.variables:
        return [str(k) for k in patterns["frame_key"].values]
    return [f"frame:{i}" for i in range(patterns.sizes["frame"])]


def _open_executor(config: Any) -> Any:
    from insitu_xrd.pipeline.executors import get_executor

    return get_executor(config)


def _atomic_write(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)
