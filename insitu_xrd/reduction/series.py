"""A frame series being integrated: set up once, frames added in one call or in many.

:class:`SeriesIntegration` does the set-up of a series once (PONI and wavelength, dark/flat/mask,
the static mask found on the first frames, the pyFAI engine, the results store, the workers'
context) and then integrates frames given to :meth:`SeriesIntegration.add` into the same store,
as often as frames arrive. :func:`integrate_series` (``insitu-xrd integrate``, the pipeline's
integrate stage) is one set-up and one ``add``; the watch mode keeps one open for the whole
session, so a new frame costs its integration and one append to the Zarr store, however many
frames are stored already (no re-reading of the first frames, no engine build, no NetCDF
export per poll; the export is written when the session closes).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.frames import FrameClock, FrameRef, discover_frames
from insitu_xrd.io.patterns import open_patterns_store, radial_name
from insitu_xrd.io.pattern_files import q_invA_to_two_theta_deg, write_xye
from insitu_xrd.io.poni import load_poni, poni_text, wavelength_A_of
from insitu_xrd.provenance import software_versions, utc_now_iso
from insitu_xrd.reduction.integrate import (
    IntegrationReport,
    IntegrationSettings,
    cached_integrator,
    earlier_mask_frames,
    file_digest,
    header_wavelength_A,
    integrate_one,
    sample_frames,
    ThreadRunner,
    write_context,
    integrate_frames_task,
    resolve_engine,
)
from insitu_xrd.reduction.masking import (
    default_saturation_level,
    detector_mask,
    find_bad_pixels,
    load_image_file,
    load_mask_file,
)

__all__ = ["SeriesIntegration", "integrate_series", "as_frame_refs", "with_setup_time"]

RecordCallback = Callable[[int, str, dict[str, Any]], None]


class SeriesIntegration:
    """An open integration of a frame series into one Patterns store (see module docstring).

    Args:
        frames: the frames known at set-up (paths, globs, folders or FrameRefs): the static mask
            is found on the first of them (or, on resume, on the frames the first run used).
        Other arguments: as :func:`integrate_series`.

    Use as a context manager, or call :meth:`close` (final checkpoint, NetCDF export).

    Raises:
        InsituXRDError: as :func:`integrate_series`.
    """

    def __init__(
        self,
        frames: Sequence[str | Path] | Sequence[FrameRef],
        poni: str | Path,
        output: str | Path,
        settings: IntegrationSettings | None = None,
        *,
        mask: str | Path | None = None,
        dark: str | Path | None = None,
        flat: str | Path | None = None,
        wavelength_A: float | None = None,
        orientation: int | None = None,
        time_source: Any = "header",
        time_zero_epoch_s: float | None = None,
        hdf5_dataset: str | None = None,
        xye_dir: str | Path | None = None,
        overwrite: bool | str = False,
        checkpoint_every_s: float = 10.0,
        checkpoint_every_frames: int = 100,
        executor: Any = None,
        batch_frames: int | None = None,
        resume_key: str | None = None,
        store: str = "zarr",
        export: bool = True,
    ) -> None:
        t_start = time.perf_counter()
        settings = settings or IntegrationSettings()
        settings.validate()
        settings, engine_note = resolve_engine(settings)
        self.notes = [engine_note] if engine_note else []
        if engine_note and settings.engine != "opencl":
            warnings.warn(engine_note, RuntimeWarning, stacklevel=3)
        self.settings = settings
        self.output = output = Path(output)
        self.hdf5_dataset = hdf5_dataset
        old_signature: dict[str, Any] | None = None
        if resume_key is not None or overwrite == "if_different":
            from insitu_xrd.io.store import read_store_attrs

            text = read_store_attrs(output).get("store_signature")
            try:
                old_signature = json.loads(text) if text else None
            except ValueError:
                old_signature = None
        if overwrite == "if_different":
            old_key = (old_signature or {}).get("resume_key")
            overwrite = old_key is None or old_key != resume_key
        overwrite = bool(overwrite)
        # an output of an earlier version (no resume_key in its signature) is resumed as it is
        legacy_output = not overwrite and old_signature is not None and "resume_key" not in old_signature
        refs = self.discover(frames)
        if not refs:
            raise InsituXRDError("no frames given")
        ai = load_poni(poni, orientation=orientation)
        poni_path = Path(poni)

        # on resume, find bad pixels on the same frames as the first run (the watch mode passes only
        # new frames): the static mask, hence the numbers, stay consistent across the whole series
        earlier = earlier_mask_frames(output, hdf5_dataset) if not overwrite else []
        samples = sample_frames(earlier + [r for r in refs if r not in earlier], max(1, settings.auto_mask_frames))
        if not samples:
            raise InsituXRDError(f"none of the first frames can be read (first: {refs[0].path}); nothing to integrate")
        det_shape = getattr(ai.detector, "shape", None)
        if det_shape is None:
            shape = tuple(samples[0].data.shape)
            ai.detector.shape = shape
            ai.detector.max_shape = shape
        else:
            shape = tuple(det_shape)
            matching = [s for s in samples if tuple(s.data.shape) == shape]
            if not matching:
                raise InsituXRDError(
                    f"detector/frame shape mismatch: PONI {poni_path} describes a {ai.detector.name} of shape {shape}, "
                    f"but frame {samples[0].ref.name} has shape {tuple(samples[0].data.shape)} (binning? wrong PONI?)"
                )
            samples = matching

        wl = wavelength_A
        wl_source = "--wavelength-a"
        if wl is None:
            wl = wavelength_A_of(ai)
            wl_source = f"PONI {poni_path.name}"
        if wl is None:
            wl = header_wavelength_A(samples[0].header)
            wl_source = f"frame header of {samples[0].ref.name}"
        if wl is None or not (0.01 < wl < 10):
            raise InsituXRDError(
                f"wavelength unknown: PONI {poni_path} has no Wavelength and the frames' headers have none; "
                "give --wavelength-a (Angstrom)"
            )
        ai.wavelength = wl * 1e-10
        self.wavelength_A = float(wl)

        dark_img = None
        if dark is not None:
            dark_img = load_image_file(dark, shape, "dark").astype(np.float32) * np.float32(settings.dark_scale)
        flat_img = None
        flat_masked = None
        if flat is not None:
            f = load_image_file(flat, shape, "flat").astype(np.float64)
            good = np.isfinite(f) & (f > 0)
            if good.sum() < 0.5 * f.size:
                raise InsituXRDError(f"flat file {flat}: fewer than half of the pixels are positive")
            # normalise so that the flat changes relative pixel response, not the intensity scale
            f = f / np.median(f[good])
            flat_masked = ~good
            f[~good] = 1.0
            flat_img = f.astype(np.float32)

        static = np.zeros(shape, dtype=bool)
        counts: dict[str, int] = {}
        if mask is not None:
            m = load_mask_file(mask, shape)
            counts["mask_file"] = int(m.sum())
            static |= m
        dm = detector_mask(ai.detector, shape)
        counts["detector"] = int(dm.sum())
        static |= dm
        if flat_masked is not None:
            counts["flat_nonpositive"] = int(flat_masked.sum())
            static |= flat_masked
        if settings.auto_mask:
            # hot pixels must stand out from their ring, not only from their neighbours (a ring
            # narrower than a pixel lights isolated pixels): pass the geometry
            found = find_bad_pixels([s.data for s in samples[: settings.auto_mask_frames]], dark=dark_img,
                                    radial_at=ai.tth, radial_step=0.5 * min(ai.detector.pixel1, ai.detector.pixel2) / ai.dist)
            for k, v in found.items():
                counts[k] = int(v.sum())
                static |= v
        counts["total_static"] = int(static.sum())
        self.masked_pixels = counts
        saturation = settings.saturation_counts
        if saturation is None:
            saturation = default_saturation_level(samples[0].data.dtype)

        integrator = cached_integrator(ai, shape, settings, static, dark_img, flat_img, saturation)
        self.integrator = integrator

        corrections = {
            "dark": file_digest(Path(dark)) if dark else None,
            "dark_scale": settings.dark_scale if dark else None,
            "flat": file_digest(Path(flat)) if flat else None,
            "flat_normalisation": "divided by median of positive pixels" if flat else None,
            "mask_file": file_digest(Path(mask)) if mask else None,
            "auto_mask": settings.auto_mask,
            "auto_mask_frames": settings.auto_mask_frames if settings.auto_mask else 0,
            "saturation_counts": saturation,
            "solid_angle": settings.correct_solid_angle,
            "polarization_factor": settings.polarization_factor,
            "sigma_clip": ({"threshold": settings.sigma_clip_threshold, "max_iter": settings.sigma_clip_max_iter,
                            "method": "no,csr,cython"} if settings.sigma_clip else None),
            "error_model": "poisson",
        }
        method_text = "sigma_clip no,csr,cython" if settings.sigma_clip else ",".join(settings.method)
        attrs = {
            "title": "insitu-xrd integrated powder patterns",
            "wavelength_A": float(wl),
            "wavelength_source": wl_source,
            "poni": poni_text(ai),
            "poni_file": str(poni_path),
            "polarization_factor": settings.polarization_factor if settings.polarization_factor is not None else "none",
            "corrections": json.dumps(corrections, sort_keys=True),
            "method": method_text,
            "npt": settings.npt,
            "radial_range": list(integrator.radial_range),
            "time_source": str(time_source if not isinstance(time_source, dict) else json.dumps(time_source)),
            "software_versions": json.dumps(software_versions(), sort_keys=True),
            "created_utc": utc_now_iso(),
            "auto_mask_frames_used": json.dumps([s.ref.key for s in samples[: settings.auto_mask_frames]]
                                                if settings.auto_mask else []),
        }
        signature = {k: attrs[k] for k in ("wavelength_A", "poni", "polarization_factor", "corrections", "method",
                                           "npt", "radial_range")}
        # the PONI text carries a "Calibration done on <now>" comment: compare the geometry lines only
        signature["poni"] = "\n".join(l for l in attrs["poni"].splitlines() if l.strip() and not l.startswith("#"))
        signature["unit"] = settings.unit
        signature["cake_npt_azim"] = settings.cake_npt_azim if settings.cake else None
        if resume_key is not None and not legacy_output:
            signature["resume_key"] = resume_key
        self.batch = max(1, int(batch_frames or checkpoint_every_frames))
        self.store = open_patterns_store(
            output, integrator.radial, settings.unit, attrs, signature=signature,
            cake_chi_deg=integrator.chi_deg, overwrite=overwrite,
            checkpoint_every_s=checkpoint_every_s, checkpoint_every_frames=checkpoint_every_frames,
            working=store, chunk_frames=self.batch,
        )
        if store == "zarr" and not export:
            self.store.export_netcdf = False
        t0_saved = self.store.attrs.get("time_zero_epoch_s")
        self.clock = FrameClock(time_source, time_zero_epoch_s=time_zero_epoch_s if time_zero_epoch_s is not None
                                else (float(t0_saved) if t0_saved not in (None, "") else None))
        self.xye_path = Path(xye_dir) if xye_dir is not None else None
        self.tth_axis = (integrator.radial if settings.unit == "2th_deg"
                         else q_invA_to_two_theta_deg(integrator.radial, wl))
        # the frames read for the auto-mask are integrated from memory, not read a second time
        self._prefetched = {s.ref.key: s for s in samples}
        self._own_runner = executor is None
        self.runner = ThreadRunner(settings.workers) if self._own_runner else executor
        self._in_process = bool(getattr(self.runner, "in_process", False))
        self._spec: dict[str, Any] | None = None
        if not self._in_process:
            # workers get small settings and file paths, never arrays or integrator objects
            ctx_path, ctx_digest = write_context(output, static, dark_img, flat_img)
            spec = {"poni": str(poni_path.resolve()), "orientation": orientation, "wavelength_A": float(wl),
                    "shape": list(shape), "settings": asdict(settings), "context": str(ctx_path),
                    "context_digest": ctx_digest, "saturation": saturation}
            spec["key"] = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
            self._spec = spec
        self.setup_s = time.perf_counter() - t_start
        self._closed = False

    # ------------------------------------------------------------------------------------------
    def discover(self, frames: Sequence[str | Path] | Sequence[FrameRef]) -> list[FrameRef]:
        """FrameRefs of paths, globs or folders (FrameRefs pass through)."""
        return as_frame_refs(frames, self.hdf5_dataset)

    def _work_batch(self, batch_refs: list[FrameRef]) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]]:
        return [integrate_one(self.integrator, r, self._prefetched.pop(r.key, None)) for r in batch_refs]

    def _submit(self, task: list[tuple[int, FrameRef]]) -> Any:
        refs = [r for _p, r in task]
        if self._in_process:
            return self.runner.submit(self._work_batch, refs)
        return self.runner.submit(integrate_frames_task, self._spec, refs)

    def add(
        self,
        frames: Sequence[str | Path] | Sequence[FrameRef],
        progress: Callable[[int, int, str, str], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
        on_record: RecordCallback | None = None,
        positions: Sequence[int] | None = None,
    ) -> IntegrationReport:
        """Integrate ``frames`` into the store; frames already stored as "ok" are skipped, failed
        ones retried. Every frame integrated here is on disk when this returns.

        Args:
            frames: paths, globs, folders or FrameRefs, in series order.
            progress: callback(done, total, frame_name, status) after each frame.
            on_start: callback(total, already_done) once the work list is known.
            on_record: callback(store_index, key, record) after each frame is stored (record:
                the stored values: intensity, sigma, status, time_s, frame_name, ...).
            positions: each frame's position in the series, for frame times from a period
                (``time_source={"period_s": ...}``); default: its place in ``frames``.
        """
        if self._closed:
            raise InsituXRDError(f"integration of {self.output}: already closed")
        t_start = time.perf_counter()
        refs = self.discover(frames)
        store = self.store
        settings = self.settings
        pos_of = list(positions) if positions is not None else list(range(len(refs)))
        # per frame, not a scan of the whole store: a watch adds a frame or two per call
        todo = [(pos_of[i], ref) for i, ref in enumerate(refs) if store.scalar(ref.key, "status") != "ok"]
        n_skipped = len(refs) - len(todo)
        if on_start is not None:
            on_start(len(refs), n_skipped)
        todo_keys = {ref.key for _pos, ref in todo}
        for k in [k for k in self._prefetched if k not in todo_keys]:
            self._prefetched.pop(k)
        per_task = 1 if self._own_runner else self.batch  # the default thread pool keeps one frame per task
        tasks = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
        rname = radial_name(settings.unit)
        n_ok = n_err = n_xye = 0
        errors: list[tuple[str, str]] = []
        window = max(2, 2 * int(getattr(self.runner, "n_workers", 1) or 1))
        pending: deque = deque()
        it = iter(tasks)
        if not self._own_runner and todo:
            # a known-length list of batches: every new frame gets its row now, in frame order
            # (status "pending"); a batch is region-written into its rows as soon as it completes,
            # in whatever order the workers finish, so one slow batch holds up no other
            store.reserve([ref.key for _p, ref in todo], {"status": "pending", "frame_name": [r.name for _p, r in todo]})
            store.checkpoint()

        def fill() -> None:
            while len(pending) < window:
                try:
                    task = next(it)
                except StopIteration:
                    return
                pending.append((task, self._submit(task)))

        try:
            fill()
            while pending:
                task, fut = _next_completed(pending, in_order=self._own_runner)
                results = fut.result()
                fill()
                for (pos, ref), (result, header, err) in zip(task, results):
                    t_s, e_s, _src = self.clock.times(ref, header, pos)
                    rec: dict[str, Any] = {"time_s": t_s, "epoch_s": e_s, "frame_name": ref.name}
                    if err is None and result is not None:
                        rec["status"] = "ok"
                        rec["intensity"] = result["intensity"]
                        rec["sigma"] = result["sigma"]
                        if "n_pixels" in result:
                            rec["n_pixels"] = result["n_pixels"]
                        if settings.cake:
                            rec["cake_intensity"] = result["cake_intensity"]
                            rec["cake_sigma"] = result["cake_sigma"]
                        n_ok += 1
                        if self.xye_path is not None:
                            stem = ref.name.replace(":", "_").rsplit(".", 1)[0] if ref.index is None else ref.name.replace(":", "_")
                            write_xye(self.xye_path / f"{stem}.xye", self.tth_axis, result["intensity"], result["sigma"],
                                      header_lines=[f"insitu-xrd integrate: frame {ref.name}", f"time_s={t_s!r}",
                                                    f"unit in dataset: {settings.unit} ({rname})"],
                                      wavelength_A=self.wavelength_A)
                            n_xye += 1
                    else:
                        reason = (err or "unknown error").replace("\n", " ")
                        rec["status"] = f"error: {reason}"
                        errors.append((ref.name, reason))
                        n_err += 1
                    if self.clock.time_zero_epoch_s is not None:
                        store.attrs["time_zero_epoch_s"] = float(self.clock.time_zero_epoch_s)
                    index = store.append(ref.key, rec, checkpoint=self._own_runner)
                    if on_record is not None:
                        on_record(index, ref.key, rec)
                    if progress is not None:
                        progress(n_skipped + n_ok + n_err, len(refs), ref.name, rec["status"])
                if not self._own_runner:
                    store.checkpoint()  # a batch is on disk as soon as it is complete (its rows)
        except BrokenExecutor as exc:  # a local worker process died: its pool cannot go on
            for _task, fut in pending:
                fut.cancel()
            raise InsituXRDError(
                f"integration into {self.output}: a worker process died ({type(exc).__name__}: {exc}); "
                f"the {len(store.done_keys('status', 'ok'))} frames integrated so far are kept — run the same "
                "command again to resume"
            ) from None
        except BaseException:
            for _task, fut in pending:
                fut.cancel()
            raise
        finally:
            store.flush()  # what was integrated is on disk, also when a frame's callback failed
        elapsed = time.perf_counter() - t_start
        return IntegrationReport(
            output=self.output,
            n_frames=len(refs),
            n_skipped_done=n_skipped,
            n_ok=n_ok,
            n_error=n_err,
            errors=errors,
            elapsed_s=elapsed,
            frames_per_s=(n_ok + n_err) / elapsed if elapsed > 0 else math.nan,
            wavelength_A=self.wavelength_A,
            masked_pixels=dict(self.masked_pixels),
            xye_files=n_xye,
            notes=list(self.notes),
            executor=str(getattr(self.runner, "name", type(self.runner).__name__)),
            n_batches=len(tasks),
        )

    def close(self) -> None:
        """Final checkpoint and, with the Zarr store, the NetCDF export; stops this object's own
        worker threads (an executor passed in stays open: it belongs to the caller)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.close()
        finally:
            if self._own_runner:
                self.runner.close()

    def __enter__(self) -> "SeriesIntegration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _next_completed(pending: deque, in_order: bool) -> tuple[Any, Any]:
    """Take the (task, future) of ``pending`` to store next: the oldest when ``in_order`` (the
    default threads: frames stored in order, one per task), else the first one done (waiting for
    one: concurrent.futures or dask.distributed futures; other futures in submission order)."""
    if in_order or len(pending) == 1:
        return pending.popleft()
    futs = [f for _t, f in pending]
    if all(isinstance(f, Future) for f in futs):
        wait(futs, return_when=FIRST_COMPLETED)
    elif all(callable(getattr(f, "done", None)) for f in futs):
        # dask.distributed futures (their wait() wants a default client; ours is private): poll
        while not any(f.done() for f in futs):
            time.sleep(0.01)
    else:
        return pending.popleft()
    for k, (task, fut) in enumerate(pending):  # the oldest of those done
        if fut.done():
            del pending[k]
            return task, fut
    return pending.popleft()


def integrate_series(
    frames: Sequence[str | Path] | Sequence[FrameRef],
    poni: str | Path,
    output: str | Path,
    settings: IntegrationSettings | None = None,
    *,
    progress: Callable[[int, int, str, str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    **options: Any,
) -> IntegrationReport:
    """Integrate a frame series into a Patterns Dataset NetCDF (resumable; see
    :mod:`insitu_xrd.reduction.integrate`).

    Args:
        frames: paths, globs, folders (or FrameRefs already discovered).
        poni: PONI geometry file.
        output: NetCDF output; if it exists (and not ``overwrite``) the run resumes into it.
        settings: IntegrationSettings (defaults: 3000 bins in 2theta, polarization 0.99).
        progress: callback(done, total, frame_name, status) after each frame.
        on_start: callback(total, already_done) once the work list is known.
        mask / dark / flat: image files (mask: non-zero = excluded).
        wavelength_A: overrides the PONI wavelength (Angstrom).
        orientation: detector orientation 1-4 overriding the PONI.
        time_source: "header", {"sidecar": csv}, {"period_s": s} (see io.frames).
        time_zero_epoch_s: absolute time (Unix s) of time_s = 0 for absolute frame times.
        hdf5_dataset: dataset path of the image stack in HDF5 files.
        xye_dir: also write one .xye per integrated frame there.
        overwrite: start a new output even if one exists; "if_different": only when the existing
            output was made with another ``resume_key`` (else resume into it).
        checkpoint_every_s / checkpoint_every_frames: checkpoint policy of the default threads.
        executor: where frames are integrated: None = ``settings.workers`` threads in this
            process, one frame per task; or an executor of :mod:`insitu_xrd.pipeline.executors`
            (anything with ``submit(fn, *args) -> future``, ``n_workers``, ``in_process``, ``name``):
            tasks of ``batch_frames`` frames; every frame gets its row first (frame order,
            "pending"), each batch is region-written into its rows as it completes, whatever the
            order, with a checkpoint after each batch. Out-of-process workers get only small settings and
            file paths (the PONI, a context ``.npz`` beside the output with mask/dark/flat) and
            build their integrator once (cached by the settings' hash).
        batch_frames: frames per task and per Zarr chunk (default ``checkpoint_every_frames``).
        resume_key: stored in the output's signature (see ``overwrite="if_different"``).
        store: "zarr" (working store ``<stem>.zarr``, NetCDF ``output`` exported at the end) or
            "netcdf" (the whole NetCDF rewritten at each checkpoint, the earlier behaviour).
        export: with the Zarr store, export ``output`` (NetCDF) when done; False leaves only the
            Zarr store up to date (for a series integrated in many calls, keep one
            :class:`SeriesIntegration` open instead).

    Raises:
        InsituXRDError: invalid PONI, missing wavelength, shape mismatch between detector and
            all sampled frames, unreadable dark/flat/mask, output of other settings.
    """
    refs = as_frame_refs(frames, options.get("hdf5_dataset"))
    if not refs:
        raise InsituXRDError("no frames given")
    series = SeriesIntegration(refs, poni, output, settings, **options)
    with series:
        report = series.add(refs, progress=progress, on_start=on_start)
    return with_setup_time(report, series.setup_s)


def as_frame_refs(frames: Sequence[str | Path] | Sequence[FrameRef], hdf5_dataset: str | None = None) -> list[FrameRef]:
    """FrameRefs of paths, globs or folders (FrameRefs pass through; see io.frames.discover_frames)."""
    if frames and isinstance(frames[0], FrameRef):
        return list(frames)  # type: ignore[arg-type]
    return discover_frames(list(frames), hdf5_dataset=hdf5_dataset) if frames else []  # type: ignore[arg-type]


def with_setup_time(report: IntegrationReport, setup_s: float) -> IntegrationReport:
    """The report of a one-shot integration: the set-up (s) counted in its time and frames/s."""
    report.elapsed_s += setup_s
    done = report.n_ok + report.n_error
    report.frames_per_s = done / report.elapsed_s if report.elapsed_s > 0 else math.nan
    return report
