"""Segments of a sequential run fitted in parallel, stitched and checked at the seams.

A run of frames (in fit order) is split into contiguous segments (``sequential.chunks``). The first
segment continues from the record before the run (or cold-starts); every later segment starts one
frame early, on the last frame of the segment before it, with the chain's cold start there (a
grid search of the lattice on that frame and a fit from it: a quick fit independent of the
neighbour). The segments are fitted in parallel, each by its own
:class:`~insitu_xrd.pipeline.sequential.chain.SequentialRefiner`, and stitched in order: a segment is accepted
when its fit of the overlap frame agrees with its neighbour's (:func:`~insitu_xrd.pipeline.sequential.chain.seam_fits_agree`:
same phases, lattices within 5 esd, Rwp within 5 %); otherwise it is refit serially here, seeded
from the neighbour's last good frame, and its frames say so in ``message``. What stays serial: the
chain inside a segment, the stitching, and the refit of a segment that disagrees. ``chunks: 1``
is the serial chain, the reference.

Where the segments run:

* :func:`refine_segments_in_processes`, without an executor (the default): a pool of ``sequential.workers`` forked
  local processes that receive the frames' arrays.
* :func:`refine_segments_on_executor`, with an executor of :mod:`insitu_xrd.pipeline.executors`
  (serial, local processes, Dask): each segment is one task, :func:`refine_segment`, whose
  argument is a small JSON-able dict (the patterns file path, the segment's frame indices, the
  refinement and sequential sections as JSON, the wavelength, the recipe folder and the seed's
  values); the worker reads its frames from the file and builds the refinement factory once per
  settings (cached by their hash, like the integrators of the integration tasks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential.chain import RefinementFactory, run_chain, seam_fits_agree
from insitu_xrd.pipeline.sequential.records import FrameRecord, frame_arrays

__all__ = ["refine_segment", "segment_task", "seed_dict", "seed_before", "refine_segments_in_processes",
           "refine_segments_on_executor"]

# worker-process globals of the built-in pool (set by the pool initializer)
_W: dict[str, Any] = {}


def _worker_init(spec_json: str, wavelength_A: float, base_dir: str, options_json: str, queue: Any) -> None:
    from insitu_xrd.pipeline.refine_setup import make_refinement

    spec = RefinementSpec.model_validate_json(spec_json)
    _W.update(spec=spec, wavelength=wavelength_A, options=SequentialSection.model_validate_json(options_json), queue=queue,
              factory=lambda sp: make_refinement(sp, wavelength_A, base_dir))


def _worker_chain(order: list[int], frames: dict[int, tuple], seed: FrameRecord | None) -> list[FrameRecord]:
    q = _W["queue"]
    return run_chain(_W["spec"], _W["wavelength"], _W["factory"], _W["options"], order, frames, seed,
                      lambda rec: q.put(rec.index))


def seed_before(records: list[FrameRecord | None], order: list[int], k: int) -> FrameRecord | None:
    """The last good record before position ``k`` of ``order`` (the seed of a run starting there), or None."""
    for j in range(k - 1, -1, -1):
        rec = records[order[j]]
        if rec is not None and rec.good:
            return rec
    return None


def _plan_segments(order: list[int], nchunks: int) -> list[list[int]]:
    """``order`` split into ``nchunks`` contiguous segments; each after the first starts with the
    last frame of the one before it (the overlap frame, fitted by both)."""
    bounds = np.linspace(0, len(order), nchunks + 1).round().astype(int)
    chunks = []
    for k in range(nchunks):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        part = order[lo:hi]
        if k > 0:
            part = [order[lo - 1]] + part  # overlap frame, fitted by both chunks
        chunks.append(part)
    return chunks


def refine_segments_in_processes(run: tuple[list[int], FrameRecord | None], nchunks: int, opt: SequentialSection,
                                 spec: RefinementSpec, wavelength: float, factory: RefinementFactory,
                                 frames: dict[int, tuple], patterns: xr.Dataset, records: list[FrameRecord | None],
                                 emit: Callable[[FrameRecord], None], prog: Any, task: Any,
                                 base_dir: str | Path | None) -> None:
    """Fit chunks of one run in parallel processes; check overlap frames; refit disagreeing chunks."""
    import concurrent.futures as cf
    import multiprocessing as mp

    order, seed = run
    chunks = _plan_segments(order, nchunks)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    workers = max(1, min(opt.workers if opt.workers > 1 else nchunks, nchunks, os.cpu_count() or 1))
    results: list[list[FrameRecord] | None] = [None] * nchunks
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(spec.model_dump_json(), wavelength, str(base_dir or "."),
                                          opt.model_dump_json(), queue)) as pool:
        futs = {pool.submit(_worker_chain, chunks[k], {i: frames[i] for i in chunks[k]}, seed if k == 0 else None): k
                for k in range(nchunks)}
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=0.2)
            while not queue.empty():
                idx = queue.get()
                prog.update(task, description=f"frame {idx} (parallel, {nchunks} chunks)")
            for f in done:
                results[futs[f]] = f.result()
    manager.shutdown()
    _stitch(results, order, opt, spec, wavelength, factory, frames, records, emit)


def _stitch(results: list[list[FrameRecord] | None], order: list[int], opt: SequentialSection, spec: RefinementSpec,
            wavelength: float, factory: RefinementFactory, frames: dict[int, tuple], records: list[FrameRecord | None],
            emit: Callable[[FrameRecord], None]) -> None:
    """Accept chunk 0, then each next chunk only if its overlap frame agrees with the previous
    chunk's fit of it; a chunk that disagrees is refit serially (here, with ``factory``), seeded
    from the previous chunk's last good frame."""
    prev_last: FrameRecord | None = None
    for k, res in enumerate(results):
        assert res is not None
        if k == 0:
            for rec in res:
                emit(rec)
            prev_last = res[-1]
            continue
        overlap_other = records[res[0].index]
        if seam_fits_agree(overlap_other, res[0], spec):
            for rec in res[1:]:
                emit(rec)
        else:
            seed_rec = seed_before(records, order, order.index(res[1].index))
            serial = run_chain(spec, wavelength, factory, opt, list(dict.fromkeys(r.index for r in res[1:])), frames,
                                seed_rec, lambda r: None)
            # a serially refit chunk is seeded from a stored record, so re-seed properly by
            # fitting the overlap frame first (keeps seeding continuous); emit the refit frames
            for rec in serial:
                rec.message = (rec.message + "; " if rec.message else "") + "chunk refit serially (overlap disagreed)"
                emit(rec)
        prev_last = records[res[-1].index]


# ---------------------------------------------------------------------------------------------
# segments as executor tasks (small settings and file paths in, records out)

_CURVES = ("fit_two_theta", "calc", "background")


def seed_dict(rec: FrameRecord | None) -> dict[str, Any] | None:
    """What a chain needs of its seed record (values, phases, active, index, time), without the
    fitted curves: plain data for a task."""
    if rec is None:
        return None
    return {k: v for k, v in dataclasses.asdict(rec).items() if k not in _CURVES}


def segment_task(patterns_path: str | Path, frames: list[int], spec: RefinementSpec, options: SequentialSection,
                 wavelength_A: float, base_dir: str | Path | None, seed: FrameRecord | None = None) -> dict[str, Any]:
    """The argument of :func:`refine_segment`: JSON-able settings and a file path, no arrays."""
    return {"patterns": str(patterns_path), "frames": [int(i) for i in frames], "spec": spec.model_dump_json(),
            "options": options.model_dump_json(), "wavelength_A": float(wavelength_A),
            "base_dir": str(base_dir or "."), "seed": seed_dict(seed)}


_SETTINGS_CACHE: dict[str, tuple[RefinementSpec, SequentialSection, RefinementFactory]] = {}
_PATTERNS_CACHE: dict[tuple[str, int, int], xr.Dataset] = {}


def _settings_key(task: dict[str, Any]) -> str:
    blob = json.dumps([task["spec"], task["options"], repr(float(task["wavelength_A"])), task["base_dir"]])
    return hashlib.sha256(blob.encode()).hexdigest()


def _worker_settings(task: dict[str, Any]) -> tuple[RefinementSpec, SequentialSection, RefinementFactory]:
    """(spec, options, factory) of a task, built once per worker and settings."""
    key = _settings_key(task)
    hit = _SETTINGS_CACHE.get(key)
    if hit is None:
        from insitu_xrd.pipeline.refine_setup import make_refinement

        wl, base = float(task["wavelength_A"]), task["base_dir"]
        hit = (RefinementSpec.model_validate_json(task["spec"]), SequentialSection.model_validate_json(task["options"]),
               lambda sp: make_refinement(sp, wl, base))
        if len(_SETTINGS_CACHE) >= 4:
            _SETTINGS_CACHE.pop(next(iter(_SETTINGS_CACHE)))
        _SETTINGS_CACHE[key] = hit
    return hit


def _worker_patterns(path: str) -> xr.Dataset:
    """The patterns at ``path`` (NetCDF file or Zarr store), cached per worker by path and mtime."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    ds = _PATTERNS_CACHE.get(key)
    if ds is None:
        if p.is_dir():
            from insitu_xrd.io.patterns import read_patterns

            ds = read_patterns(p)
        else:
            ds = xr.load_dataset(p, engine="h5netcdf")
        _PATTERNS_CACHE.clear()  # one series at a time
        _PATTERNS_CACHE[key] = ds
    return ds


def refine_segment(task: dict[str, Any]) -> list[FrameRecord]:
    """Task: fit one segment (``task`` from :func:`segment_task`) in one chain; its records in fit
    order (look-back revisions included, as :func:`~insitu_xrd.pipeline.sequential.chain.run_chain` gives)."""
    spec, options, factory = _worker_settings(task)
    patterns = _worker_patterns(task["patterns"])
    order = list(task["frames"])
    frames = {i: frame_arrays(patterns, i) for i in order}
    seed = FrameRecord(**task["seed"]) if task.get("seed") else None
    return run_chain(spec, float(task["wavelength_A"]), factory, options, order, frames, seed, lambda rec: None)


def _patterns_file(patterns: xr.Dataset, folder: Path) -> Path:
    """A NetCDF of the variables a segment reads, for a patterns Dataset that has no file."""
    keep = [v for v in ("intensity", "sigma", "status") if v in patterns.variables]
    path = folder / "segment_patterns.nc"
    patterns[keep].to_netcdf(path, engine="h5netcdf")
    return path


def refine_segments_on_executor(run: tuple[list[int], FrameRecord | None], nchunks: int, opt: SequentialSection,
                                spec: RefinementSpec, wavelength: float, factory: RefinementFactory,
                                frames: dict[int, tuple], patterns: xr.Dataset, records: list[FrameRecord | None],
                                emit: Callable[[FrameRecord], None], prog: Any, task: Any, base_dir: str | Path | None,
                                executor: Any, patterns_path: str | Path | None = None) -> None:
    """:func:`refine_segments_in_processes` with the segments as :func:`refine_segment` tasks on ``executor``.

    ``patterns_path``: the file (or Zarr store) ``patterns`` was read from, which the workers read
    (on a cluster: a path the workers see); none = the frames are written to a temporary file.
    The stitching and the serial refit of a disagreeing segment run here, as in :func:`refine_segments_in_processes`.
    """
    order, seed = run
    chunks = _plan_segments(order, nchunks)
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        if patterns_path is None:
            tmp = tempfile.TemporaryDirectory(prefix="insitu-xrd-segments-")
            patterns_path = _patterns_file(patterns, Path(tmp.name))
        tasks = [segment_task(patterns_path, chunks[k], spec, opt, wavelength, base_dir, seed if k == 0 else None)
                 for k in range(nchunks)]
        futs = [executor.submit(refine_segment, t) for t in tasks]
        results: list[list[FrameRecord] | None] = []
        try:
            for k, fut in enumerate(futs):
                results.append(fut.result())
                prog.update(task, description=f"segment {k + 1}/{nchunks} done")
        except BaseException:
            for fut in futs:
                fut.cancel()
            raise
    finally:
        if tmp is not None:
            tmp.cleanup()
    _stitch(results, order, opt, spec, wavelength, factory, frames, records, emit)
