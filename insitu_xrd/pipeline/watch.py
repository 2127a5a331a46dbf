"""``insitu-xrd watch FOLDER --recipe RECIPE``: integrate and refine frames as they land (beamtime).

Each poll:

1. lists the frame files in FOLDER (the recipe's ``frames.files`` pattern, applied inside FOLDER;
   hidden files and ``*.tmp``/``*.part``/``*.partial`` are ignored). A file is *settled* once its
   size is non-zero and its size and modification time have not changed for ``settle_s`` seconds
   (a detector still writing it is waited for). A settled file is integrated when it opens; one
   that still cannot be read after ``bad_after_s`` seconds is integrated anyway, which records it
   with an ``error: ...`` status (a truncated or corrupt frame: flagged, never fitted). A flagged
   file is tried again only if it changes.
2. integrates the new frames into ``<outputs>/patterns.nc`` (same settings, same file and same
   stage cache as ``insitu-xrd run``);
3. refines every new frame in order, seeded from the previous one (the same
   :class:`~insitu_xrd.pipeline.sequential.SequentialRefiner` as the batch run, so the results are
   the same as ``run`` on the same frames), and rewrites ``<outputs>/sequential.nc``;
4. refreshes ``results.nc`` (with echem), the strain files and ``report.md`` after every new frame;
   figures at most every ``refresh_s`` seconds, and once at exit.

Restarting the command resumes: integrated frames are not integrated again and the refinement
continues after the last stored frame, from the chain state saved beside ``sequential.nc``
(``sequential.nc.state``: the same fits as without the interruption), or seeded from the last
stored values when that state is missing. A later ``insitu-xrd run``
of the same recipe adopts the frames the watch refined (see
:func:`insitu_xrd.pipeline.stages.refine_stage`). The watch stops after ``idle_exit_s`` seconds
without a new frame, after ``max_frames`` frames refined in this session, or on Ctrl-C.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.io.store import write_dataset_atomic
from insitu_xrd.pipeline.recipe import FramesSection, Recipe, load_recipe
from insitu_xrd.pipeline.report import FigureWriter
from insitu_xrd.pipeline.sequential import (
    FrameRecord,
    SequentialRefiner,
    _frame_arrays,
    chain_state_path,
    dataset_to_records,
    read_chain_state,
    records_to_dataset,
    write_chain_state,
)
from insitu_xrd.pipeline.stages import (
    StageCache,
    StageInfo,
    calibrate_stage,
    instrument_attrs,
    instrument_stage,
    integrate_stage,
    make_factory,
    watch_cache_key,
)

__all__ = ["WatchSummary", "FolderScanner", "watch_folder"]

IGNORED_SUFFIXES = (".tmp", ".part", ".partial")


@dataclass
class WatchSummary:
    """What a watch session did."""

    n_integrated: int = 0
    n_refined: int = 0
    n_frames_total: int = 0
    n_flagged: int = 0
    polls: int = 0
    stopped_because: str = ""
    results_path: Path | None = None
    results: xr.Dataset | None = None
    events: list[str] = field(default_factory=list)


def _pattern_of(recipe: Recipe) -> str:
    if recipe.frames is None:
        return "*"
    return Path(recipe.frames.files).name or "*"


def _name_order(path: Path) -> list:
    """Natural sort key of a file name (frame_2 before frame_10)."""
    from insitu_xrd.io.frames import natural_sort_key

    return natural_sort_key(path.name)


def _readable(path: Path) -> bool:
    """The file opens as a frame (the same reader as the integration). fabio's own error log is
    silenced: a file still being written is expected to fail here, poll after poll."""
    import logging

    from insitu_xrd.io.frames import FrameRef, read_frame

    log = logging.getLogger("fabio")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        fr = read_frame(FrameRef(path.resolve()))
        return fr.data is not None and fr.data.size > 0
    except Exception:
        return False
    finally:
        log.setLevel(level)


class FolderScanner:
    """Decides which files of a watched folder are complete frames (see module docstring).

    folder, pattern: where and which files (fnmatch pattern on the file name).
    settle_s: a file is settled once unchanged (size, mtime) for this long (s).
    bad_after_s: a settled file that cannot be opened for this long is handed on as bad (s).
    clock: monotonic clock (s), replaceable in tests.
    """

    def __init__(self, folder: Path, pattern: str, settle_s: float = 2.0, bad_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from insitu_xrd.io.frames import IMAGE_EXTENSIONS

        self.folder = Path(folder)
        self.pattern = pattern
        self.settle_s = float(settle_s)
        self.bad_after_s = max(float(bad_after_s), float(settle_s))
        self.clock = clock
        self.extensions = IMAGE_EXTENSIONS
        self.state: dict[str, tuple[int, float, float]] = {}  # path -> (size, mtime, unchanged since)
        self.handed: dict[str, tuple[int, float]] = {}  # path -> (size, mtime) when handed on

    def _candidates(self) -> list[Path]:
        try:
            entries = [p for p in self.folder.iterdir() if p.is_file()]
        except OSError as exc:
            raise InsituXRDError(f"watched folder {self.folder}: cannot be listed ({exc})") from None
        return [p for p in entries if fnmatch.fnmatch(p.name, self.pattern) and not p.name.startswith(".")
                and not p.name.endswith(IGNORED_SUFFIXES) and p.suffix.lower() in self.extensions]

    def poll(self) -> tuple[list[Path], list[Path]]:
        """(new complete frames, new bad frames), natural-sorted; each file is handed on once
        per content (a file that changes after being handed on is handed on again)."""
        now = self.clock()
        good: list[Path] = []
        bad: list[Path] = []
        for p in self._candidates():
            try:
                st = p.stat()
            except OSError:
                continue
            key = str(p)
            sig = (st.st_size, st.st_mtime)
            old = self.state.get(key)
            since = old[2] if old is not None and (old[0], old[1]) == sig else now
            self.state[key] = (sig[0], sig[1], since)
            if st.st_size == 0 or self.handed.get(key) == sig or now - since < self.settle_s:
                continue
            if _readable(p):
                good.append(p)
            elif now - since >= self.bad_after_s:
                bad.append(p)
            else:
                continue
            self.handed[key] = sig
        return sorted(good, key=_name_order), sorted(bad, key=_name_order)


def watch_folder(
    folder: str | Path,
    recipe: Recipe | str | Path,
    poll_s: float = 2.0,
    settle_s: float = 2.0,
    bad_after_s: float = 30.0,
    idle_exit_s: float | None = None,
    max_frames: int | None = None,
    refresh_s: float = 30.0,
    figure_writer: FigureWriter | None = None,
    say: Callable[[str], None] | None = None,
) -> WatchSummary:
    """Watch ``folder`` and process frames as they land (see module docstring).

    folder: where the detector writes frames (replaces the folder of ``frames.files``).
    recipe: Recipe or recipe path (calibration, integration, refinement, echem, outputs).
    poll_s: seconds between polls. settle_s: a file is read once unchanged for this long (s).
    bad_after_s: a settled file that cannot be opened for this long is recorded as a bad frame (s).
    idle_exit_s: stop after this many seconds without a new frame (None: never).
    max_frames: stop once this many frames were refined in this session (None: never).
    refresh_s: minimum seconds between figure refreshes.
    figure_writer: draws the figures (``insitu_xrd.plots.insitu.write_figures``); None: none.
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
    if rec.refinement.profile.instrument:  # before the key: it fingerprints the file's content
        _, info = instrument_stage(rec, poni, cache)
        say(f"instrument {info.status}: {info.detail}")
    scanner = FolderScanner(folder, _pattern_of(rec), settle_s=settle_s, bad_after_s=bad_after_s)
    seq_path = out_dir / "sequential.nc"
    patterns_path = out_dir / "patterns.nc"
    key = watch_cache_key(rec)
    records: dict[str, FrameRecord] = {}  # frame_key -> record
    # on a restart the files already integrated are handed on again at the first poll: the
    # integration stage skips them (and reuses patterns.nc) when its settings are unchanged
    patterns: xr.Dataset | None = None
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
    state_path = chain_state_path(seq_path)
    chain_after: str | None = None  # key of the last frame the chain stepped
    factory = None
    last_new = time.monotonic()
    last_fig = 0.0
    dirty = False

    def write_sequential(patterns: xr.Dataset) -> xr.Dataset:
        keys = [str(k) for k in patterns["frame_key"].values]
        # by position; the records themselves are left alone: the running chain holds some of
        # them (its last good frames), and their positions at fit time are part of its state
        recs = [records.get(k) for k in keys]
        ds = records_to_dataset(recs, patterns, rec.refinement, {"cache_key": key, "direction": "forward",
                                                                  "mode": "watch", "recipe": str(rec.source),
                                                                  "patterns_file": str(patterns_path),
                                                                  "recipe_name": rec.name, **instrument_attrs(rec)})
        ds = ds.assign_coords(frame_key=("frame", np.array(keys, dtype=object)))
        write_dataset_atomic(ds, seq_path)
        return ds

    def finish(patterns: xr.Dataset, seq: xr.Dataset, with_figures: bool) -> None:
        from insitu_xrd.pipeline.run import finish_results

        stages: list[StageInfo] = [StageInfo("watch", "ran", 0.0, f"{len(records)} frames refined from {folder}")]
        res, _strain, _figs, _report = finish_results(rec, patterns, seq, stages,
                                                      figure_writer=figure_writer if with_figures else None)
        summary.results = res
        summary.results_path = out_dir / "results.nc"

    def chain_key_before(keys: list[str], i: int) -> str | None:
        """Key of the frame the chain last fitted before position ``i``: frames without a
        pattern ("skipped: ...", they leave the chain unchanged) are passed over."""
        for j in range(i - 1, -1, -1):
            r = records.get(keys[j])
            if r is None or not r.status.startswith("skipped: "):
                return keys[j]
        return None

    def seed_before(keys: list[str], i: int) -> FrameRecord | None:
        for j in range(i - 1, -1, -1):
            r = records.get(keys[j])
            if r is not None and r.good:
                return r
        return None

    try:
        while True:
            summary.polls += 1
            good, bad = scanner.poll()
            for p in bad:
                msg = f"{p.name}: cannot be read {scanner.bad_after_s:g} s after its last change; recorded as a bad frame"
                summary.events.append(msg)
                say(msg)
            todo = good + bad
            if todo:
                refs = [FrameRef(p.resolve()) for p in sorted(todo, key=_name_order)]
                _, info = integrate_stage(rec, poni, cache, progress=False, frames=refs)
                if info.status != "reused":
                    summary.n_integrated += len(todo)
                patterns = read_patterns(patterns_path)
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
                    tth, y, s, st, t_s = _frame_arrays(patterns, i)
                    if redo:
                        # a frame that failed to integrate earlier and is fine now: fit it alone,
                        # seeded from its predecessor, without disturbing the running chain
                        one = SequentialRefiner(rec.refinement, wl, factory, rec.sequential, seed=seed_before(keys, i))
                        records[k] = one.step(i, tth, y, s, st, time_s=t_s, key=k)
                    else:
                        if refiner is None:
                            refiner = SequentialRefiner(rec.refinement, wl, factory, rec.sequential,
                                                        seed=seed_before(keys, i))
                            after = chain_key_before(keys, i)
                            blob = read_chain_state(state_path, key, after) if after is not None else None
                            if blob is not None and refiner.restore_state(blob):
                                say(f"continuing the chain of the previous session after {Path(after).name}")
                        records[k] = refiner.step(i, tth, y, s, st, time_s=t_s, key=k)
                        if not records[k].status.startswith("skipped: "):
                            # a frame without a usable pattern leaves the chain as it was: the state
                            # stays keyed to the last frame it fitted (a corrupt file that sorts
                            # earlier may be seen after later frames, depending on when it lands)
                            chain_after = k
                        summary.n_refined += 1
                        for rv in refiner.pop_revised():  # an earlier frame fitted again from this one
                            # by its key: positions shift when a file that sorts earlier lands late
                            j = keys.index(rv.key) if rv.key in keys else rv.index
                            records[keys[j]] = rv
                            say(f"frame {j} {patterns['frame_name'].values[j]}: fitted again ({rv.status})")
                    r = records[k]
                    if not r.good:
                        summary.n_flagged += 1
                    msg = (f"frame {i} {patterns['frame_name'].values[i]}: {r.status}"
                           + (f" Rwp {100 * r.rwp:.2f} %" if np.isfinite(r.rwp) else "")
                           + (f" ({r.message})" if r.message else ""))
                    summary.events.append(msg)
                    say(msg)
                    new_any = True
                if new_any:
                    last_new = time.monotonic()
                    if refiner is not None and chain_after is not None:
                        write_chain_state(state_path, key, chain_after, refiner)
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
