"""``insitu-xrd watch FOLDER --recipe RECIPE``: integrate and refine frames as they land (beamtime).

Each poll:

1. lists the frame files in FOLDER (the recipe's ``frames.files`` pattern, applied inside FOLDER;
   hidden files and ``*.tmp``/``*.part``/``*.partial`` are ignored). A file is *settled* once its
   size is non-zero and its size and modification time have not changed for ``settle_s`` seconds
   (a detector still writing it is waited for). A settled file is integrated when it opens; one
   that still cannot be read after ``bad_after_s`` seconds is integrated anyway, which records it
   with an ``error: ...`` status (a truncated or corrupt frame: flagged, never fitted). A flagged
   file is tried again only if it changes.
2. integrates the new frames into the working store ``<outputs>/patterns.zarr`` (same settings,
   store and stage cache as ``insitu-xrd run``) through one
   :class:`~insitu_xrd.reduction.series.SeriesIntegration` kept open for the whole session (engine,
   mask and store set up once; ``patterns.nc`` is exported at exit);
3. refines every new frame in order, seeded from the previous one (the same
   :class:`~insitu_xrd.pipeline.sequential.SequentialRefiner` as the batch run, so the results are
   the same as ``run`` on the same frames), reading only the new frames' patterns, and appends each
   to ``<outputs>/sequential.zarr`` (:class:`~insitu_xrd.pipeline.sequential.store.SequentialStore`) with
   the chain state beside it: the cost of a frame does not grow with the frames before it;
4. refreshes ``sequential.nc``, ``results.nc`` (with echem), the strain files, ``report.md`` and
   the figures from the stores at most every ``refresh_s`` seconds and at least
   ``REFRESH_COST_FACTOR`` times the last refresh's duration apart (the one step whose cost grows
   with the series), and once at exit.

Restarting the command resumes: integrated frames are not integrated again and the refinement
continues after the last stored frame, from the chain state saved beside ``sequential.nc``
(``sequential.nc.state``, written with the stored frames: the same fits as without the
interruption), or seeded from the last
stored values when that state is missing. A later ``insitu-xrd run``
of the same recipe adopts the frames the watch refined (see
:func:`insitu_xrd.pipeline.stages.refine_stage`). The watch stops after ``idle_exit_s`` seconds
without a new frame, after ``max_frames`` frames refined in this session, or on Ctrl-C.

A recipe with ``patterns:`` (1D patterns integrated elsewhere) is watched the same way: its
``patterns.files`` name pattern inside FOLDER, a file is complete when it reads as a 1D pattern,
and step 2 collects it into the same stores
(:class:`~insitu_xrd.pipeline.pattern_series.PatternSeries`) instead of integrating it; there is
no calibration.
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.io.store import open_frame_dataset
from insitu_xrd.pipeline.pattern_series import open_pattern_series, pattern_readable
from insitu_xrd.pipeline.recipe import FramesSection, Recipe, load_recipe
from insitu_xrd.pipeline.report import FigureWriter
from insitu_xrd.pipeline.sequential import (
    FrameRecord,
    SequentialRefiner,
    frame_arrays,
    chain_state_path,
    read_chain_state,
    write_chain_state,
)
from insitu_xrd.pipeline.sequential.cell_lines import resumed_cell_lines
from insitu_xrd.pipeline.sequential.cell_live import LiveCellLines, cell_lines_summary
from insitu_xrd.pipeline.sequential.store import SequentialStore
from insitu_xrd.pipeline.stages import (
    StageCache,
    StageInfo,
    calibrate_stage,
    instrument_attrs,
    instrument_stage,
    make_factory,
    watch_cache_key,
)

__all__ = ["WatchSummary", "FolderScanner", "watch_folder"]

IGNORED_SUFFIXES = (".tmp", ".part", ".partial")
# a frame's result is stored when it is refined; a backlog of frames (a restart, a burst) is
# stored every FLUSH_EVERY_S seconds and at the end of the poll: one Zarr append of ~30 arrays
# costs ~0.2 s, as much as a fit of a small pattern (a crash loses at most this much fitting)
FLUSH_EVERY_S = 2.0
# the outputs are refreshed at most every refresh_s and at least this many times the duration of
# the last refresh apart: the one step whose cost grows with the series then takes < 5 % of the time
REFRESH_COST_FACTOR = 20.0


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
    section = recipe.patterns if recipe.patterns is not None else recipe.frames
    if section is None:
        return "*"
    return Path(section.files).name or "*"


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
    readable: whether a file opens completely (default: as a detector frame).
    extensions: the file suffixes considered (default: the frame readers'; None: any).
    """

    def __init__(self, folder: Path, pattern: str, settle_s: float = 2.0, bad_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, readable: Callable[[Path], bool] = _readable,
                 extensions: Any = "frames") -> None:
        from insitu_xrd.io.frames import IMAGE_EXTENSIONS

        self.folder = Path(folder)
        self.pattern = pattern
        self.settle_s = float(settle_s)
        self.bad_after_s = max(float(bad_after_s), float(settle_s))
        self.clock = clock
        self.readable = readable
        self.extensions = IMAGE_EXTENSIONS if extensions == "frames" else extensions
        self.state: dict[str, tuple[int, float, float]] = {}  # path -> (size, mtime, unchanged since)
        self.handed: dict[str, tuple[int, float]] = {}  # path -> (size, mtime) when handed on

    def _candidates(self) -> list[Path]:
        try:
            entries = [p for p in self.folder.iterdir() if p.is_file()]
        except OSError as exc:
            raise InsituXRDError(f"watched folder {self.folder}: cannot be listed ({exc})") from None
        return [p for p in entries if fnmatch.fnmatch(p.name, self.pattern) and not p.name.startswith(".")
                and not p.name.endswith(IGNORED_SUFFIXES)
                and (self.extensions is None or p.suffix.lower() in self.extensions)]

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
            if self.readable(p):
                good.append(p)
            elif now - since >= self.bad_after_s:
                bad.append(p)
            else:
                continue
            self.handed[key] = sig
        return sorted(good, key=_name_order), sorted(bad, key=_name_order)


class _Session:
    """One watch session's open integration, sequential store and chain (cost per frame flat:
    nothing here reads or writes the whole series except :meth:`refresh`)."""

    def __init__(self, rec: Recipe, poni: Path | None, cache: StageCache, folder: Path, summary: WatchSummary,
                 say: Callable[[str], None], max_frames: int | None) -> None:
        self.rec, self.poni, self.cache, self.folder = rec, poni, cache, folder
        self.summary, self.say, self.max_frames = summary, say, max_frames
        self.out_dir = rec.output_dir
        self.seq_path = self.out_dir / "sequential.nc"
        self.state_path = chain_state_path(self.seq_path)
        self.key = watch_cache_key(rec)
        self.series: Any = None  # SeriesIntegration, opened with the first frames
        self.integration_key = ""
        self.seq: SequentialStore | None = None
        self._stepping = False
        self.factory: Any = None
        self.refiner: SequentialRefiner | None = None
        self.cells: Any = None  # LiveCellLines, made with the first frames
        self.chain_after: str | None = None  # key of the last frame the chain fitted
        self.todo: list[int] = []  # patterns rows to refine, in order
        self._waiting: list[Any] = []  # files seen before any frame could be read
        self._last_flush = time.monotonic()

    # -- integration ---------------------------------------------------------------------------
    def _open(self, refs: list[Any]) -> None:
        if self.rec.patterns is not None:  # 1D patterns integrated elsewhere: collected, not integrated
            self.series, self.integration_key = open_pattern_series(self.rec, refs)
        else:
            from insitu_xrd.pipeline.stages import open_integration

            self.series, self.integration_key = open_integration(self.rec, self.poni, self.cache, refs)
        assert self.rec.refinement is not None
        self.factory = make_factory(self.rec, self.series.wavelength_A)
        # the cell's lines are searched in the first frames (a restart searches the same frames again)
        self.cells = LiveCellLines(self.rec.refinement, self.factory, self.rec.sequential)
        if self.rec.refinement.cell_lines == "auto":  # a restart keeps the model of the frames refined before
            self.cells.resume(resumed_cell_lines(self.seq_path, self.key))
        if len(self.series.store):
            self.cells.ready(self.series.store.read_rows(range(min(len(self.series.store), 20))), self.series.wavelength_A)
        store = self.series.store
        # frames integrated by an earlier session and never refined ("pending": a batch that never
        # completed; integrated again when the files are handed on)
        self.todo = [i for i in range(len(store)) if store.scalar(store.key_at(i), "status") != "pending"]
        if self.cells.pending:  # the results' store is made once the search has run (its components shape it)
            return
        self._open_results_store()
        self.todo = [i for i in self.todo if store.key_at(i) not in self.seq]

    def _open_results_store(self) -> None:
        """The working store of the refined frames, laid out for the spec the frames are refined with."""
        self.seq = SequentialStore(
            self.seq_path, self.cells.spec, self.series.tth_axis, self.series.wavelength_A,
            cache_key=self.key, integration_key=self.integration_key, say=self.say,
            attrs={"direction": "forward", "mode": "watch", "recipe": str(self.rec.source),
                   "patterns_file": str(self.out_dir / "patterns.nc"), "recipe_name": self.rec.name,
                   **instrument_attrs(self.rec), **self.cells.attrs()})
        if len(self.seq):
            self.say(f"resuming: {len(self.seq)} frames already refined")

    def integrate(self, paths: list[Path]) -> None:
        """Integrate new (or changed) files; queue what the refinement has to do with them."""
        from insitu_xrd.io.frames import FrameRef

        refs = [FrameRef(p.resolve()) for p in sorted(paths, key=_name_order)]
        if self.series is None:
            refs = self._waiting + refs
            try:
                self._open(refs)
            except InsituXRDError as exc:
                if not str(exc).startswith(("none of the first frames can be read",
                                            "none of the first pattern files can be read")):
                    raise
                # only bad files so far: nothing to build the mask and the engine from yet
                self._waiting = refs
                self.say(f"{exc}; waiting for a readable frame")
                return
            self._waiting = []
        store = self.series.store
        positions, nxt = [], len(store)
        for r in refs:  # each frame's place in the series (frame times from a period)
            i = store.index_of(r.key)
            if i is None:
                i, nxt = nxt, nxt + 1
            positions.append(i)
        rows: list[int] = []
        rep = self.series.add(refs, on_record=lambda i, _k, _r: rows.append(i), positions=positions)
        self.summary.n_integrated += rep.n_ok + rep.n_error
        for i in rows:
            if i not in self.todo and self._needs_fit(i):
                self.todo.append(i)

    def _needs_fit(self, i: int) -> bool:
        """Not refined yet, or flagged because its pattern was unusable and now integrated fine."""
        if self.seq is None:  # nothing refined yet (the cell-line search waits for the first frames)
            return True
        k = self.series.store.key_at(i)
        st = self.seq.status(k)
        return st is None or (st.startswith("skipped") and self.series.store.scalar(k, "status") == "ok")

    # -- refinement ----------------------------------------------------------------------------
    def _status_at(self, j: int) -> str | None:
        assert self.seq is not None
        return self.seq.status(self.series.store.key_at(j))

    def _chain_key_before(self, i: int) -> str | None:
        """Key of the frame the chain last fitted before row ``i``: frames without a pattern
        ("skipped: ...", they leave the chain unchanged) are passed over."""
        for j in range(i - 1, -1, -1):
            st = self._status_at(j)
            if st is None or not st.startswith("skipped: "):
                return self.series.store.key_at(j)
        return None

    def _seed_before(self, i: int) -> FrameRecord | None:
        assert self.seq is not None
        for j in range(i - 1, -1, -1):
            st = self._status_at(j)
            if st in ("ok", "refit"):
                return self.seq.record(self.series.store.key_at(j))
        return None

    def refine(self, final: bool = False) -> bool:
        """Refine the queued frames in order; returns whether any was refined. Frames wait until
        the cell-line search has the first frames it needs (``final``: search what there is)."""
        assert self.rec.refinement is not None
        if not self.todo:
            return False
        if self.seq is None:
            store = self.series.store
            rows = store.read_rows(range(min(len(store), 20)))
            if not self.cells.ready(rows, self.series.wavelength_A, final):
                n_ok = int((rows["status"].values == "ok").sum()) if "status" in rows else len(store)
                if n_ok != getattr(self, "_cells_seen", None):
                    self._cells_seen = n_ok
                    self.say(f"cell lines: waiting for the first usable frames to search ({n_ok} in)")
                return False
            self.say(cell_lines_summary(self.cells.cells))
            self._open_results_store()
            assert self.seq is not None
            self.todo = [i for i in self.todo if self._needs_fit(i)]
        store, seq, rec = self.series.store, self.seq, self.rec
        wl = self.series.wavelength_A
        rows = sorted(self.todo)
        window = store.read_rows(rows)  # this poll's patterns only
        done_any = unflushed = False
        for j, i in enumerate(rows):
            k = store.key_at(i)
            redo = seq.status(k) is not None
            if not redo and self.max_frames is not None and self.summary.n_refined >= self.max_frames:
                break
            self.todo.remove(i)
            tth, y, s, st, t_s = frame_arrays(window, j)
            if redo:
                # a frame that failed to integrate earlier and is fine now: fit it alone, seeded
                # from its predecessor, without disturbing the running chain
                one = SequentialRefiner(self.cells.spec, wl, self.factory, rec.sequential, seed=self._seed_before(i))
                r = one.step(i, tth, y, s, st, time_s=t_s, key=k)
            else:
                if self.refiner is None:
                    self.refiner = SequentialRefiner(self.cells.spec, wl, self.factory, rec.sequential,
                                                     seed=self._seed_before(i))
                    after = self._chain_key_before(i)
                    blob = read_chain_state(self.state_path, self.key, after) if after is not None else None
                    if blob is not None and self.refiner.restore_state(blob):
                        self.say(f"continuing the chain of the previous session after {Path(after).name}")
                self._stepping = True  # an interruption now leaves the refiner part-way through a frame
                r = self.refiner.step(i, tth, y, s, st, time_s=t_s, key=k)
                self._stepping = False
                if not r.status.startswith("skipped: "):
                    # a frame without a usable pattern leaves the chain as it was: the state stays
                    # keyed to the last frame it fitted (a corrupt file that sorts earlier may be
                    # seen after later frames, depending on when it lands)
                    self.chain_after = k
                self.summary.n_refined += 1
            seq.put(k, r, window.isel(frame=[j]))
            if not redo:
                for rv in self.refiner.pop_revised():  # an earlier frame fitted again from this one
                    jv = store.index_of(rv.key) if rv.key is not None else None
                    if jv is None:
                        continue
                    seq.put(rv.key, rv, window.isel(frame=[rows.index(jv)]) if jv in rows else store.read_rows([jv]))
                    self.say(f"frame {jv} {store.scalar(rv.key, 'frame_name')}: fitted again ({rv.status})")
            unflushed = True
            if j == len(rows) - 1 or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._flush()
                unflushed = False
            if not r.good:
                self.summary.n_flagged += 1
            msg = (f"frame {i} {store.scalar(k, 'frame_name')}: {r.status}"
                   + (f" Rwp {100 * r.rwp:.2f} %" if np.isfinite(r.rwp) else "")
                   + (f" ({r.message})" if r.message else ""))
            self.summary.events.append(msg)
            self.say(msg)
            done_any = True
        if unflushed:  # stopped early (max_frames)
            self._flush()
        return done_any

    def _flush(self) -> None:
        """The refined frames to disk, then the chain state after the last of them (so a restart
        never finds a state ahead of the stored frames)."""
        assert self.seq is not None
        self.seq.flush()
        if self.refiner is not None and self.chain_after is not None:
            write_chain_state(self.state_path, self.key, self.chain_after, self.refiner)
        self._last_flush = time.monotonic()

    # -- outputs -------------------------------------------------------------------------------
    def refresh(self, figure_writer: FigureWriter | None) -> float:
        """Export sequential.nc and write results.nc, the strain files, report.md (and figures
        with ``figure_writer``) from the stores; returns the seconds it took (this is the one
        step whose cost grows with the series: the caller spaces it out accordingly)."""
        from insitu_xrd.pipeline.run import finish_results

        t0 = time.monotonic()
        assert self.seq is not None
        store = self.series.store
        seq = self.seq.export(store.keys(), store.read_rows)
        patterns = open_frame_dataset(store.zarr_path, load=False) if store.zarr_path else store.to_dataset()
        seq.attrs.update(self.cells.late_line_attrs(seq, patterns))
        stages: list[StageInfo] = [StageInfo("watch", "ran", 0.0, f"{len(self.seq)} frames refined from {self.folder}")]
        res, _strain, _figs, _report = finish_results(self.rec, patterns, seq, stages, figure_writer=figure_writer)
        self.summary.results = res
        self.summary.results_path = self.out_dir / "results.nc"
        return time.monotonic() - t0

    def close(self) -> None:
        """Final writes: the patterns' NetCDF export, the stage cache entry, the Zarr stores."""
        if self.series is None:
            return
        self.series.close()
        self.cache.store("patterns" if self.rec.patterns is not None else "integrate", self.integration_key,
                         [self.series.output])
        if self.seq is not None:
            if not self._stepping:
                # the frames refined since the last flush, then the chain state after them (a
                # Ctrl-C between frames: the next session continues the chain exactly; inside a
                # frame the refiner is part-way, so the state stays at the last flush)
                self._flush()
            self.seq.close()


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
    refresh_s: minimum seconds between refreshes of sequential.nc, results.nc, the strain files,
        the report and the figures (and at least REFRESH_COST_FACTOR times the last refresh's
        duration); they are also written once at exit.
    figure_writer: draws the figures (``insitu_xrd.plots.insitu.write_figures``); None: none.
    """
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if rec.refinement is None:
        raise RecipeError(f"recipe {rec.source}: the watch mode needs a 'refinement' section")
    folder = Path(folder)
    if not folder.is_dir():
        raise InsituXRDError(f"watched folder {folder} does not exist")
    if rec.frames is None and rec.patterns is None:
        rec.frames = FramesSection(files=str(folder / "*"))
    say = say or (lambda m: None)
    summary = WatchSummary()
    rec.output_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(rec.output_dir)
    poni: Path | None = None
    if rec.patterns is not None:  # 1D patterns integrated elsewhere: no calibration, no integration
        sec, wl = rec.patterns, rec.wavelength_A
        scanner = FolderScanner(folder, _pattern_of(rec), settle_s=settle_s, bad_after_s=bad_after_s,
                                readable=lambda p: pattern_readable(p, wl, sec.x_unit), extensions=None)
    else:
        poni, info = calibrate_stage(rec, cache)
        say(f"calibrate  {info.status}: {info.detail}")
        if rec.refinement.profile.instrument:  # before the key: it fingerprints the file's content
            _, info = instrument_stage(rec, poni, cache)
            say(f"instrument {info.status}: {info.detail}")
        scanner = FolderScanner(folder, _pattern_of(rec), settle_s=settle_s, bad_after_s=bad_after_s)
    session = _Session(rec, poni, cache, folder, summary, say, max_frames)
    last_new = time.monotonic()
    last_refresh = -math.inf
    refresh_cost = 0.0
    dirty = False
    try:
        try:
            while True:
                summary.polls += 1
                good, bad = scanner.poll()
                for p in bad:
                    msg = f"{p.name}: cannot be read {scanner.bad_after_s:g} s after its last change; recorded as a bad frame"
                    summary.events.append(msg)
                    say(msg)
                if good or bad:
                    session.integrate(good + bad)
                if session.series is not None and session.refine():
                    last_new = time.monotonic()
                    dirty = True
                now = time.monotonic()
                if dirty and now - last_refresh >= max(refresh_s, REFRESH_COST_FACTOR * refresh_cost):
                    refresh_cost = session.refresh(figure_writer)
                    last_refresh, dirty = time.monotonic(), False
                if max_frames is not None and summary.n_refined >= max_frames:
                    summary.stopped_because = f"max_frames={max_frames} reached"
                    break
                if idle_exit_s is not None and time.monotonic() - last_new >= idle_exit_s:
                    summary.stopped_because = f"no new frame for {idle_exit_s:g} s"
                    break
                time.sleep(poll_s)
            if session.series is not None and session.cells.pending and session.refine(final=True):
                dirty = True  # fewer frames than the cell-line search waits for: refined now
        except KeyboardInterrupt:
            summary.stopped_because = "interrupted"
        if session.seq is not None and len(session.seq) and (dirty or summary.results is None):
            session.refresh(figure_writer)
    finally:
        session.close()
    summary.n_frames_total = len(session.seq) if session.seq is not None else 0
    return summary
