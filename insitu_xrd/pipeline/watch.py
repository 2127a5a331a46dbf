"""``insitu-xrd watch FOLDER --recipe RECIPE``: integrate and refine frames as they land (beamtime).

Each poll:

1. lists the frame files in FOLDER (the recipe's ``frames.files`` pattern, applied inside FOLDER);
   a file is *ready* once its size is non-zero and unchanged since the previous poll (a detector
   still writing it is waited for) and it can be opened;
2. integrates the ready frames not yet in ``<outputs>/patterns.nc`` (same settings, same file as
   ``insitu-xrd run``; an unreadable frame gets an error status and is retried next poll);
3. refines every new frame in order, seeded from the previous one (same
   :class:`~insitu_xrd.pipeline.sequential.SequentialRefiner` as the batch run, so the results are
   the same), appends to ``<outputs>/sequential.nc``;
4. refreshes ``results.nc`` (with echem), strain files, figures and ``report.md`` (figures at most
   every ``refresh_s`` seconds, and once at exit).

Restarting the command resumes: integrated frames are not integrated again and the refinement
continues from the last stored frame. It stops after ``idle_exit_s`` seconds without a new
frame or after ``max_frames`` refined frames (or Ctrl-C).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.io.store import write_dataset_atomic
from insitu_xrd.pipeline.recipe import FramesSection, Recipe, load_recipe, section_hash
from insitu_xrd.pipeline.sequential import (
    FrameRecord,
    SequentialRefiner,
    _frame_arrays,
    dataset_to_records,
    records_to_dataset,
)
from insitu_xrd.pipeline.stages import StageCache, StageInfo, calibrate_stage, integrate_stage, make_factory

__all__ = ["WatchSummary", "watch_folder", "ready_files"]


@dataclass
class WatchSummary:
    """What a watch session did."""

    n_integrated: int = 0
    n_refined: int = 0
    n_frames_total: int = 0
    polls: int = 0
    stopped_because: str = ""
    results_path: Path | None = None
    results: xr.Dataset | None = None
    events: list[str] = field(default_factory=list)


def _pattern_of(recipe: Recipe) -> str:
    if recipe.frames is None:
        return "*"
    return Path(recipe.frames.files).name or "*"


def ready_files(folder: Path, pattern: str, seen: dict[str, tuple[int, float]]) -> list[Path]:
    """Files matching ``pattern`` whose size is non-zero and unchanged since the last call.

    ``seen`` maps path -> (size, mtime) of the previous poll and is updated in place.
    """
    from insitu_xrd.io.frames import IMAGE_EXTENSIONS, natural_sort_key

    out = []
    try:
        entries = [p for p in folder.iterdir() if p.is_file()]
    except OSError as exc:
        raise InsituXRDError(f"watched folder {folder}: cannot be listed ({exc})") from None
    for p in entries:
        if not fnmatch.fnmatch(p.name, pattern) or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.name.startswith(".") or p.name.endswith((".tmp", ".part", ".partial")):
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        now = (st.st_size, st.st_mtime)
        prev = seen.get(str(p))
        seen[str(p)] = now
        if st.st_size > 0 and prev is not None and prev == now:
            out.append(p)
    return sorted(out, key=lambda q: natural_sort_key(q.name))


def _readable(path: Path) -> bool:
    try:
        import fabio

        with fabio.open(str(path)) as img:
            return img.data is not None and img.data.size > 0
    except Exception:
        return False


def watch_folder(
    folder: str | Path,
    recipe: Recipe | str | Path,
    poll_s: float = 2.0,
    idle_exit_s: float | None = None,
    max_frames: int | None = None,
    refresh_s: float = 30.0,
    figures: bool = True,
    say: Callable[[str], None] | None = None,
) -> WatchSummary:
    """Watch ``folder`` and process frames as they land (see module docstring).

    folder: where the detector writes frames (overrides the folder of ``frames.files``).
    recipe: Recipe or recipe path (calibration, integration, refinement, echem, outputs).
    poll_s: seconds between polls. idle_exit_s: stop after this many seconds without a new frame
    (None: never). max_frames: stop once this many frames are refined in total (None: never).
    refresh_s: minimum seconds between figure refreshes.
    """
    from insitu_xrd.io.frames import FrameRef
    from insitu_xrd.io.patterns import read_patterns

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if rec.refinement is None:
        raise RecipeError(f"recipe {rec.source}: the watch mode needs a 'refinement' section")
    folder = Path(folder)
    if not folder.is_dir():
        raise InsituXRDError(f"watched folder {folder} does not exist")
    if rec.frames is None:
        rec.frames = FramesSection(files=str(folder / "*"))
    say = say or (lambda m: None)
    summary = WatchSummary()
    out_dir = rec.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out_dir)
    poni, info = calibrate_stage(rec, cache)
    say(f"calibrate  {info.status}: {info.detail}")
    pattern = _pattern_of(rec)
    seq_path = out_dir / "sequential.nc"
    key = "watch:" + section_hash(rec.refinement, rec.sequential.model_dump(exclude={"workers", "checkpoint_every", "chunks"}))
    records: dict[str, FrameRecord] = {}  # frame_key -> record
    if seq_path.exists():
        try:
            old = xr.load_dataset(seq_path, engine="h5netcdf")
            if old.attrs.get("cache_key") == key and "frame_key" in old.variables:
                for k, r in zip(old["frame_key"].values, dataset_to_records(old)):
                    if r is not None:
                        records[str(k)] = r
                say(f"resuming: {len(records)} frames already refined")
        except Exception:
            records = {}
    refiner: SequentialRefiner | None = None
    factory = None
    seen: dict[str, tuple[int, float]] = {}
    last_new = time.monotonic()
    last_fig = 0.0
    patterns = None
    dirty = False

    def write_sequential(patterns: xr.Dataset) -> xr.Dataset:
        keys = [str(k) for k in patterns["frame_key"].values]
        recs = []
        for i, k in enumerate(keys):
            r = records.get(k)
            if r is not None:
                r.index = i
            recs.append(r)
        ds = records_to_dataset(recs, patterns, rec.refinement, {"cache_key": key, "direction": "forward",
                                                                  "mode": "watch", "recipe": str(rec.source)})
        ds = ds.assign_coords(frame_key=("frame", np.array(keys, dtype=object)))
        write_dataset_atomic(ds, seq_path)
        return ds

    def finish(patterns: xr.Dataset, seq: xr.Dataset, with_figures: bool) -> None:
        from insitu_xrd.pipeline.run import finish_results

        stages: list[StageInfo] = [StageInfo("watch", "ran", 0.0, f"{len(records)} frames refined from {folder}")]
        res, _strain, _figs, _report = finish_results(rec, patterns, seq, stages, figures=with_figures and figures)
        summary.results = res
        summary.results_path = out_dir / "results.nc"

    try:
        while True:
            summary.polls += 1
            ready = [p for p in ready_files(folder, pattern, seen) if _readable(p)]
            if patterns is not None:
                have = set(str(k) for k in patterns["frame_key"].values)
            else:
                have = set()
            new_files = [p for p in ready if str(p) not in have]
            retry = patterns is not None and any(
                str(s) != "ok" for s in patterns["status"].values)
            if new_files or (retry and ready) or patterns is None and ready:
                refs = [FrameRef(p.resolve()) for p in ready]
                _, info = integrate_stage(rec, poni, cache, progress=False, frames=refs)
                if info.status != "reused":
                    summary.n_integrated += len(new_files)
                patterns = read_patterns(out_dir / "patterns.nc")
            if patterns is not None:
                wl = float(patterns.attrs["wavelength_A"])
                if factory is None:
                    factory = make_factory(rec, wl)
                keys = [str(k) for k in patterns["frame_key"].values]
                statuses = [str(s) for s in patterns["status"].values]
                new_any = False
                for i, k in enumerate(keys):
                    r = records.get(k)
                    redo = r is not None and r.status.startswith("skipped") and statuses[i] == "ok"
                    if r is not None and not redo:
                        continue
                    if max_frames is not None and summary.n_refined >= max_frames and not redo:
                        break
                    tth, y, s, st = _frame_arrays(patterns, i)
                    if redo:
                        # a frame that failed to integrate earlier and is fine now: fit it alone,
                        # seeded from its predecessor, without disturbing the running chain
                        prev = next((records.get(keys[j]) for j in range(i - 1, -1, -1)
                                     if records.get(keys[j]) is not None and records[keys[j]].good), None)
                        one = SequentialRefiner(rec.refinement, wl, factory, rec.sequential, seed=prev)
                        records[k] = one.step(i, tth, y, s, st)
                    else:
                        if refiner is None:
                            prev = next((records.get(keys[j]) for j in range(i - 1, -1, -1)
                                         if records.get(keys[j]) is not None and records[keys[j]].good), None)
                            refiner = SequentialRefiner(rec.refinement, wl, factory, rec.sequential, seed=prev)
                        records[k] = refiner.step(i, tth, y, s, st)
                        summary.n_refined += 1
                    r = records[k]
                    msg = (f"frame {i} {patterns['frame_name'].values[i]}: {r.status}"
                           + (f" Rwp {100 * r.rwp:.2f} %" if np.isfinite(r.rwp) else "")
                           + (f" ({r.message})" if r.message else ""))
                    summary.events.append(msg)
                    say(msg)
                    new_any = True
                if new_any:
                    last_new = time.monotonic()
                    seq = write_sequential(patterns)
                    want_fig = time.monotonic() - last_fig >= refresh_s
                    finish(patterns, seq, want_fig)
                    if want_fig:
                        last_fig = time.monotonic()
                        dirty = False
                    else:
                        dirty = True
            if max_frames is not None and summary.n_refined >= max_frames:
                summary.stopped_because = f"max_frames={max_frames} reached"
                break
            if idle_exit_s is not None and time.monotonic() - last_new >= idle_exit_s:
                summary.stopped_because = f"no new frame for {idle_exit_s:g} s"
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        summary.stopped_because = "interrupted"
    if patterns is not None and records and (dirty or summary.results is None):
        seq = write_sequential(patterns)
        finish(patterns, seq, True)
    summary.n_frames_total = len(records)
    return summary
