"""1D patterns integrated elsewhere as the pipeline's Patterns Dataset (the recipe's ``patterns:``).

Beamline pipelines, Dioptas, GSAS-II and pyFAI scripts write one 1D pattern per exposure. A recipe
with ``patterns: {files: "data/*.xye", ...}`` instead of ``frames`` + ``calibration`` +
``integration`` collects those files into ``<outputs>/patterns.nc``, the same Patterns Dataset the
integration writes (``frame`` x ``two_theta``, ``intensity``, ``sigma``, ``status``, ``time_s``,
``frame_name``, ``frame_key``), so the sequential refinement, echem, strain, report and FEA run
on it unchanged, with the same caching; ``watch`` collects files as they land
(:class:`PatternSeries` plays the part of the open integration).

Every file is read by :func:`insitu_xrd.io.pattern_files.read_pattern_1d` (every format it reads
is accepted; q axes are converted with the recipe's ``wavelength_A``). The files share one 2theta
axis, that of the first file that reads (a file may lack points of it, e.g. masked bins: they are
NaN in its row). A file without an esd column gets a NaN sigma row (no esds are invented here):
the refinement weighs it per frame by ``refinement.sigma``
(:func:`insitu_xrd.pipeline.sequential.frame_arrays`), and the store's ``sigma_source`` says so.
A file that cannot be read, whose points are not on that axis, or whose header
states another wavelength is kept as a row with status ``error: <reason>`` (never fitted; the run
goes on). Times: ``time_source`` ``header`` reads a ``time_s=<s>`` line (as ``insitu-xrd
integrate --xye`` and :func:`insitu_xrd.io.patterns.export_xye` write it) or a date line of the
file's header; ``sidecar``, ``period`` and ``none`` as for frames.
"""

from __future__ import annotations

import glob
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.io.frames import FrameClock, FrameRef, natural_sort_key
from insitu_xrd.io.pattern_files import Pattern1D, read_pattern_1d
from insitu_xrd.io.patterns import open_patterns_store
from insitu_xrd.io.store import open_frame_dataset, read_store_attrs, working_store_path
from insitu_xrd.pipeline.recipe import Recipe, section_hash
from insitu_xrd.pipeline.stages import StageCache, StageInfo, file_digest, time_source_of
from insitu_xrd.provenance import software_versions, utc_now_iso

__all__ = ["PatternSeries", "PatternsReport", "discover_pattern_files", "header_mapping", "pattern_readable",
           "patterns_key", "open_pattern_series", "patterns_stage", "NO_ESD_SIGMA"]

# files a writer has not finished (renamed when complete) and hidden files are never patterns
IGNORED_SUFFIXES = (".tmp", ".part", ".partial")
# two files' 2theta points are the same bin when closer than this fraction of the axis step (text
# files round 2theta to a few decimals; the step is > 100 times that rounding)
AXIS_TOLERANCE_STEPS = 0.01
# a header wavelength that differs from the recipe's by more than this (relative) flags the file
WAVELENGTH_RTOL = 1e-5

#: the Patterns Dataset's ``sigma_source`` when a file had no esd column: its row's sigma is NaN
#: (no esds recorded), and the refinement's ``refinement.sigma`` chooses its weights per frame
NO_ESD_SIGMA = "none: a file had no esd column (its sigma row is NaN; weights per frame by refinement.sigma)"


@dataclass
class PatternsReport:
    """What :meth:`PatternSeries.add` did."""

    n_frames: int = 0
    n_skipped_done: int = 0
    n_ok: int = 0
    n_error: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and not path.name.endswith(IGNORED_SUFFIXES)


def discover_pattern_files(files: str | Path, exclude: Sequence[Path] = ()) -> list[FrameRef]:
    """The pattern files of a glob pattern or a folder (every file in it), natural-sorted by name;
    hidden, ``*.tmp``/``*.part``/``*.partial`` files and ``exclude`` (e.g. the time sidecar) left out."""
    spec = Path(files).expanduser()
    paths = sorted(spec.iterdir()) if spec.is_dir() else [Path(p) for p in glob.glob(str(spec))]
    skip = {Path(p).resolve() for p in exclude}
    found = [p.resolve() for p in paths if _is_candidate(p) and p.resolve() not in skip]
    return [FrameRef(p) for p in sorted(found, key=lambda p: natural_sort_key(p.name))]


def header_mapping(lines: Sequence[str]) -> dict[str, str]:
    """``key=value`` / ``key: value`` header lines (comment characters stripped) as a mapping, the
    keys :func:`insitu_xrd.io.frames.header_times` reads (``time_s``, ``date``, ``time``, ...)."""
    out: dict[str, str] = {}
    for line in lines:
        m = re.match(r"^[#!;%\s]*([A-Za-z_][\w. ]*?)\s*[=:]\s*(.+?)\s*$", str(line))
        if m:
            out.setdefault(m.group(1).strip(), m.group(2))
    return out


def pattern_readable(path: Path, wavelength_A: float | None = None, x_unit: str | None = None) -> bool:
    """The file reads as a 1D pattern (the watch's test of a complete file)."""
    try:
        return len(read_pattern_1d(path, wavelength_A=wavelength_A, unit=x_unit)) > 1
    except InsituXRDError:
        return False


def _on_axis(axis: np.ndarray, tth: np.ndarray) -> np.ndarray | None:
    """Row positions of ``tth`` on ``axis`` (ascending), or None when a point is off the axis."""
    step = float(np.min(np.diff(axis))) if axis.size > 1 else 1.0
    j = np.clip(np.searchsorted(axis, tth), 1, axis.size - 1)
    nearest = np.where(np.abs(axis[j - 1] - tth) <= np.abs(axis[j] - tth), j - 1, j)
    if not np.all(np.abs(axis[nearest] - tth) <= AXIS_TOLERANCE_STEPS * step):
        return None
    return nearest


class PatternSeries:
    """1D pattern files collected into a Patterns store (the ``patterns:`` route's integration).

    output: the patterns NetCDF (its Zarr working store beside it, as for the integration).
    refs: the files known now; the axis is the stored one when resuming, else the first file's
        that reads.
    wavelength_A: the recipe's wavelength (A): q axes are converted with it; a file whose header
        states another is flagged.
    x_unit: forced x unit of column files without one in their header (None: from the header).
    time_source: a :class:`~insitu_xrd.io.frames.FrameClock` source.
    resume_key: the section's cache key; a store made with another key is started anew.
    export: write ``output`` (NetCDF) when closed.
    """

    def __init__(self, output: Path, refs: Sequence[FrameRef], wavelength_A: float, x_unit: str | None,
                 time_source: Any, resume_key: str, export: bool = True) -> None:
        t0 = time.perf_counter()
        self.output = Path(output)
        self.wavelength_A = float(wavelength_A)
        self.x_unit = x_unit
        self._read: dict[str, Pattern1D | str] = {}  # files read to find the axis, kept for add()
        signature = {"resume_key": resume_key, "unit": "2th_deg"}
        axis = self._stored_axis(signature)
        overwrite = axis is None
        if axis is None:
            axis = self._first_axis(refs)
        attrs = {
            "title": "insitu-xrd 1D patterns (integrated elsewhere)",
            "wavelength_A": self.wavelength_A,
            "wavelength_source": "recipe wavelength_A",
            "poni": "", "polarization_factor": "none", "method": "integrated elsewhere",
            "corrections": json.dumps({"source": "1D pattern files; corrections as applied by their writer"}),
            "time_source": str(time_source if not isinstance(time_source, dict) else json.dumps(time_source)),
            "software_versions": json.dumps(software_versions(), sort_keys=True),
            "created_utc": utc_now_iso(),
        }
        self.store = open_patterns_store(self.output, axis, "2th_deg", attrs, signature=signature, with_counts=False,
                                         overwrite=overwrite)
        if not export:
            self.store.export_netcdf = False
        t0_saved = self.store.attrs.get("time_zero_epoch_s")
        self.clock = FrameClock(time_source, time_zero_epoch_s=float(t0_saved) if t0_saved not in (None, "") else None)
        self.tth_axis = np.asarray(axis, dtype=float)
        self.setup_s = time.perf_counter() - t0
        self._closed = False

    def _stored_axis(self, signature: dict[str, str]) -> np.ndarray | None:
        """The 2theta axis of an existing store made with the same key (None: start anew)."""
        stored = read_store_attrs(self.output).get("store_signature")
        try:
            if not stored or json.loads(stored).get("resume_key") != signature["resume_key"]:
                return None
            zpath = working_store_path(self.output)
            if (zpath / "zarr.json").is_file():
                return np.asarray(open_frame_dataset(zpath, load=False)["two_theta"].values, dtype=float)
            import xarray as xr

            with xr.open_dataset(self.output, engine="h5netcdf") as ds:
                return np.asarray(ds["two_theta"].values, dtype=float)
        except Exception:  # unreadable: started anew
            return None

    def _pattern(self, ref: FrameRef) -> Pattern1D | str:
        """The file's pattern, or the reason it is not usable."""
        got = self._read.pop(ref.key, None)
        if got is not None:
            return got
        try:
            pat = read_pattern_1d(ref.path, wavelength_A=self.wavelength_A, unit=self.x_unit)
        except InsituXRDError as exc:
            return str(exc)
        if pat.wavelength_A is not None and abs(pat.wavelength_A / self.wavelength_A - 1.0) > WAVELENGTH_RTOL:
            return (f"pattern file {ref.path}: its header states wavelength {pat.wavelength_A:.6g} A, the recipe's "
                    f"wavelength_A is {self.wavelength_A:.6g} A")
        if len(pat) < 2:
            return f"pattern file {ref.path}: fewer than 2 points"
        return pat

    def _first_axis(self, refs: Sequence[FrameRef]) -> np.ndarray:
        for ref in refs:
            got = self._pattern(ref)
            self._read[ref.key] = got
            if isinstance(got, Pattern1D):
                return np.asarray(got.two_theta_deg, dtype=float)
        raise InsituXRDError("none of the first pattern files can be read as a 1D pattern"
                             + (f" (e.g. {self._read[refs[0].key]})" if refs else ""))

    def add(self, frames: Sequence[FrameRef], progress: Callable[[int, int, str, str], None] | None = None,
            on_start: Callable[[int, int], None] | None = None,
            on_record: Callable[[int, str, dict[str, Any]], None] | None = None,
            positions: Sequence[int] | None = None) -> PatternsReport:
        """Read ``frames`` (in series order) into the store; files stored as "ok" are skipped,
        flagged ones read again. Same callbacks as
        :meth:`insitu_xrd.reduction.series.SeriesIntegration.add` (``positions``: each file's
        place in the series, for times from a period)."""
        if self._closed:
            raise InsituXRDError(f"patterns {self.output}: already closed")
        t0 = time.perf_counter()
        refs = list(frames)
        pos_of = list(positions) if positions is not None else list(range(len(refs)))
        store = self.store
        todo = [(pos_of[i], r) for i, r in enumerate(refs) if store.scalar(r.key, "status") != "ok"]
        rep = PatternsReport(n_frames=len(refs), n_skipped_done=len(refs) - len(todo))
        if on_start is not None:
            on_start(len(refs), rep.n_skipped_done)
        n = self.tth_axis.size
        try:
            for pos, ref in todo:
                got = self._pattern(ref)
                rec: dict[str, Any] = {"frame_name": ref.name}
                header = None
                if isinstance(got, Pattern1D):
                    header = header_mapping(got.metadata.get("header", []))
                    rows = _on_axis(self.tth_axis, np.asarray(got.two_theta_deg, dtype=float))
                    if rows is None:
                        got = (f"pattern file {ref.path}: its 2theta points are not on the series' axis "
                               f"({n} points, {self.tth_axis[0]:.4f}-{self.tth_axis[-1]:.4f} deg, from the first file)")
                    else:
                        y, s = np.full(n, np.nan), np.full(n, np.nan)
                        no_esd = getattr(got, "sigma_source", "file") == "none"
                        y[rows] = got.intensity
                        if not no_esd:  # a file without esds keeps a NaN sigma row: the refinement weighs it
                            s[rows] = got.sigma
                        rec.update(status="ok", intensity=y, sigma=s)
                        if no_esd:
                            # never silent: the reader's sqrt(max(I, 1)) is not stored as if it were esds
                            store.attrs["sigma_source"] = NO_ESD_SIGMA
                        elif "sigma_source" not in store.attrs:
                            store.attrs["sigma_source"] = "the files' esd column"
                        rep.n_ok += 1
                if isinstance(got, str):
                    rec["status"] = f"error: {got}".replace("\n", " ")
                    rep.errors.append((ref.name, got))
                    rep.n_error += 1
                rec["time_s"], rec["epoch_s"], _src = self.clock.times(ref, header, pos)
                if self.clock.time_zero_epoch_s is not None:
                    store.attrs["time_zero_epoch_s"] = float(self.clock.time_zero_epoch_s)
                index = store.append(ref.key, rec)
                if on_record is not None:
                    on_record(index, ref.key, rec)
                if progress is not None:
                    progress(rep.n_skipped_done + rep.n_ok + rep.n_error, len(refs), ref.name, rec["status"])
        finally:
            store.flush()  # what was read is on disk, also when a callback failed
        rep.elapsed_s = time.perf_counter() - t0
        return rep

    def close(self) -> None:
        """Final checkpoint and the NetCDF export."""
        if not self._closed:
            self._closed = True
            self.store.close()

    def __enter__(self) -> "PatternSeries":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def patterns_key(recipe: Recipe) -> str:
    """Cache key of the collected patterns: the section (files excepted, as for frames), the
    wavelength and the sidecar's content."""
    sec = recipe.patterns
    if sec is None:
        raise RecipeError(f"recipe {recipe.source}: no 'patterns' section")
    return section_hash("patterns", sec.model_dump(exclude={"files"}), recipe.wavelength_A,
                        file_digest(recipe.path(sec.sidecar)))


def _files(recipe: Recipe) -> list[FrameRef]:
    sec = recipe.patterns
    assert sec is not None
    return discover_pattern_files(recipe.path(sec.files), exclude=[recipe.path(sec.sidecar)] if sec.sidecar else [])


def open_pattern_series(recipe: Recipe, refs: Sequence[FrameRef], output: Path | None = None,
                        export: bool = True) -> tuple[PatternSeries, str]:
    """The recipe's patterns store ``<outputs>/patterns.nc`` opened (resumed when the section is
    unchanged) and its cache key (``cache.store("patterns", ...)`` it after closing)."""
    sec = recipe.patterns
    if sec is None:
        raise RecipeError(f"recipe {recipe.source}: no 'patterns' section")
    key = patterns_key(recipe)
    series = PatternSeries(output or (recipe.output_dir / "patterns.nc"), refs, recipe.wavelength_A, sec.x_unit,
                           time_source_of(recipe, sec), key, export=export)
    return series, key


def patterns_stage(recipe: Recipe, cache: StageCache, progress: bool = True) -> tuple[Path, StageInfo]:
    """Collect the recipe's pattern files into ``<outputs>/patterns.nc`` (new files only when the
    section is unchanged; all again when it changed). Replaces calibrate + integrate."""
    import xarray as xr
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    t0 = time.perf_counter()
    out = recipe.output_dir / "patterns.nc"
    key = patterns_key(recipe)
    refs = _files(recipe)
    if not refs:
        raise InsituXRDError(f"recipe {recipe.source}: key 'patterns.files': no file matches {recipe.path(recipe.patterns.files)}")
    if cache.hit("patterns", key, [out]):
        try:
            with xr.open_dataset(out, engine="h5netcdf") as old:
                have = {str(k) for k in old["frame_key"].values}
        except Exception:
            have = set()
        if all(r.key in have for r in refs):
            return out, StageInfo("patterns", "reused", time.perf_counter() - t0, f"{len(refs)} patterns in {out}", [str(out)])
    bar = Progress(TextColumn("[bold]patterns[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   disable=not progress)
    task = bar.add_task("", total=len(refs))
    series, key = open_pattern_series(recipe, refs, output=out)
    with bar, series:
        rep = series.add(refs, progress=lambda done, _n, name, st: bar.update(task, completed=done,
                                                                             description=f"{name} {st[:30]}"))
    cache.store("patterns", key, [out])
    status = "resumed" if rep.n_skipped_done else "ran"
    detail = f"{rep.n_ok} pattern files read, {rep.n_skipped_done} already done, {rep.n_error} errors"
    if rep.errors:
        detail += f" (first: {rep.errors[0][1]})"
    return out, StageInfo("patterns", status, time.perf_counter() - t0, detail, [str(out)])
