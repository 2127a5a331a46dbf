"""The stages of ``insitu-xrd run`` and their cache.

Each stage has a cache key: a hash of its recipe section(s) and of its inputs (file contents or
the previous stage's output fingerprint). Keys and outputs are kept in ``<outputs.dir>/stages.json``;
a stage whose key and output file are unchanged is reused, so re-running after editing only the
``refinement:`` section re-refines but does not re-calibrate or re-integrate.

Stages: ``calibrate`` (PONI from the calibrant image, or an existing PONI reused), ``instrument``
(the GSAS-II ``.instprm`` named by ``refinement.profile.instrument``, fitted on the calibrant's own
integrated pattern when the file does not exist, reused when it does; by default
(``calibration.instrument_profile: auto``) a recipe that refines microstrain or size and names no
file gets ``<outputs.dir>/instrument.instprm``, so the sample broadening is measured against the
calibrant's), ``integrate``
(frames -> patterns.nc; resumable, new frames only), ``refine`` (sequential refinement ->
sequential.nc, checkpointed, resumable), ``echem`` (cycler log -> voltage, capacity, x, soc coords;
results.nc), ``strain`` (strain/*.nc, .csv, .json, COMSOL table), ``report`` (report.md + figures).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError, RecipeError
from insitu_xrd.pipeline.recipe import Recipe, section_hash

__all__ = [
    "StageInfo",
    "StageCache",
    "file_digest",
    "calibrate_stage",
    "instrument_stage",
    "instrument_file",
    "integrate_stage",
    "patterns_fingerprint",
    "sequential_sigma_source",
    "refine_stage",
    "sequential_cache_key",
    "watch_cache_key",
    "echem_stage",
    "strain_stage",
    "make_factory",
    "instrument_attrs",
    "integration_settings",
    "time_source_of",
]


@dataclass
class StageInfo:
    """What a stage did: ``ran``, ``reused``, ``resumed`` or ``skipped`` (with why), time, outputs."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    outputs: list[str] = field(default_factory=list)


class StageCache:
    """``stages.json`` in the output folder: {stage: {key, outputs, finished_utc}}."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "stages.json"
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def hit(self, stage: str, key: str, outputs: list[Path]) -> bool:
        entry = self.data.get(stage)
        return bool(entry) and entry.get("key") == key and all(Path(p).exists() for p in outputs)

    def store(self, stage: str, key: str, outputs: list[Path], **extra: Any) -> None:
        """Record a finished stage (``extra``: more JSON-able fields kept with it)."""
        from insitu_xrd.provenance import utc_now_iso

        self.data[stage] = {"key": key, "outputs": [str(p) for p in outputs], "finished_utc": utc_now_iso(), **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    def invalidate(self, stage: str) -> None:
        self.data.pop(stage, None)


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file's content (None for None / a missing file)."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# calibrate


def _read_image(path: Path, what: str) -> np.ndarray:
    import fabio

    if not path.is_file():
        raise InsituXRDError(f"{what} {path} does not exist")
    try:
        return np.asarray(fabio.open(str(path)).data)
    except Exception as exc:
        raise InsituXRDError(f"{what} {path}: cannot be read ({type(exc).__name__}: {exc})") from None


def _detector_for(name: str, shape: tuple[int, ...], binning: int | None, where: str) -> Any:
    """pyFAI detector, binned to the image shape when its full shape is an integer multiple."""
    from insitu_xrd.reduction.calibrate import resolve_detector

    det = resolve_detector(name)
    # some detectors are binned by default (pyFAI's Perkin: 4096 max_shape, 2x2 -> 2048 x 2048,
    # 200 um); a recipe's binning is relative to that nominal shape, pyFAI's to max_shape
    native = tuple(det.binning or (1, 1))
    full = tuple(det.max_shape or det.shape or shape)
    b_abs: int | None = binning * native[0] if binning else None
    if b_abs is None and tuple(det.shape or ()) != tuple(shape):
        ratios = {full[0] / shape[0], full[1] / shape[1]}
        if len(ratios) == 1 and float(next(iter(ratios))).is_integer():
            b_abs = int(next(iter(ratios)))
    if b_abs and (b_abs, b_abs) != native:
        det.binning = (b_abs, b_abs)  # property setter (set_binning is deprecated since pyFAI 2025.09)
    if det.shape is not None and tuple(det.shape) != tuple(shape):
        raise InsituXRDError(f"{where}: image shape {tuple(shape)} does not match detector {name!r} "
                             f"{tuple(det.shape)} (set calibration.binning or the detector name)")
    return det


def calibrate_stage(recipe: Recipe, cache: StageCache, say: Callable[[str], None] = lambda m: None) -> tuple[Path, StageInfo]:
    """The PONI to use: an existing ``calibration.poni`` is reused; otherwise the calibrant image
    is calibrated and the PONI written (to ``calibration.poni`` or ``<outputs>/geometry.poni``)."""
    t0 = time.perf_counter()
    cal = recipe.calibration
    poni = recipe.path(cal.poni) if cal.poni else recipe.output_dir / "geometry.poni"
    key = section_hash(cal, recipe.wavelength_A, file_digest(recipe.path(cal.image)))
    if cal.poni and poni.is_file():
        written_by_us = cache.data.get("calibrate", {}).get("outputs") == [str(poni)]
        if not written_by_us or cache.hit("calibrate", key, [poni]) or not cal.image:
            return poni, StageInfo("calibrate", "reused", time.perf_counter() - t0, f"existing PONI {poni}", [str(poni)])
    elif not cal.poni and cache.hit("calibrate", key, [poni]):
        return poni, StageInfo("calibrate", "reused", time.perf_counter() - t0, f"cached PONI {poni}", [str(poni)])
    if not cal.image:
        raise RecipeError(f"recipe {recipe.source}: key 'calibration.poni': file {poni} does not exist and no "
                          "'calibration.image' is given to make it")
    from insitu_xrd.reduction.calibrate import calibrate_image

    img_path = recipe.path(cal.image)
    img = _read_image(img_path, "calibration image (calibration.image)")
    mask = _read_image(recipe.path(cal.mask), "calibration mask (calibration.mask)") != 0 if cal.mask else None
    det = _detector_for(cal.detector, img.shape, cal.binning, f"calibration image {img_path}")
    wl = cal.wavelength_A or recipe.wavelength_A
    center = tuple(cal.center_px) if cal.center_px else None
    if center is not None and cal.binning:
        center = (center[0], center[1])
    say(f"calibrating {img_path.name} ({cal.calibrant}, {wl} A)")
    res = calibrate_image(img, cal.calibrant, wl, det, distance_mm=cal.distance_mm, center_px=center, mask=mask,
                          progress=say)
    res.write_poni(poni)
    cache.store("calibrate", key, [poni])
    detail = (f"{cal.calibrant}: distance {res.distance_mm:.3f} mm, rms {res.rms_residual_mdeg:.3f} mdeg "
              f"({len(res.control_points)} points) -> {poni}")
    return poni, StageInfo("calibrate", "ran", time.perf_counter() - t0, detail, [str(poni)])


# ---------------------------------------------------------------------------------------------
# instrument profile from the calibrant


def instrument_file(recipe: Recipe) -> Path | None:
    """The ``refinement.profile.instrument`` file, resolved against the recipe's folder (None
    when the recipe has no refinement or names no instrument file)."""
    ref = recipe.refinement
    if ref is None or not ref.profile.instrument:
        return None
    return recipe.path(ref.profile.instrument)


def instrument_stage(recipe: Recipe, poni: Path, cache: StageCache,
                     say: Callable[[str], None] = lambda m: None) -> tuple[Path | None, StageInfo]:
    """The instrument profile file ``refinement.profile.instrument`` (GSAS-II ``.instprm``).

    An existing file is reused (as the PONI is), unless this stage wrote it and its inputs
    changed since. A missing one is made from the calibrant, as on a beamline: the calibration
    image is integrated with the PONI and the recipe's ``integration`` settings (the frames' npt,
    unit, range, polarization, method and automatic masking; ``calibration.mask`` or else
    ``frames.mask``; the frames' flat field, no dark), the profile U, V, W, X, Y, zero (and SH/L
    when significant) is fitted to it with the calibrant's lattice fixed
    (:func:`insitu_xrd.fit.instrument.fit_instrument`, Rietveld mode, over
    ``refinement.range_2theta_deg`` with the recipe's Chebyshev count), and the file is written
    atomically. Without a file name in the recipe the stage is skipped.
    """
    t0 = time.perf_counter()
    path = instrument_file(recipe)
    if path is None:
        return None, StageInfo("instrument", "skipped", 0.0, "no refinement.profile.instrument file in the recipe")
    cal = recipe.calibration
    ref = recipe.refinement
    assert ref is not None
    poni_lines = "\n".join(l for l in Path(poni).read_text().splitlines() if l.strip() and not l.startswith("#"))
    fr = recipe.frames
    mask = recipe.path(cal.mask) if cal.mask else (recipe.path(fr.mask) if fr is not None and fr.mask else None)
    flat = recipe.path(fr.flat) if fr is not None and fr.flat else None
    key = section_hash(cal.image, cal.calibrant, cal.wavelength_A, recipe.wavelength_A, recipe.integration,
                       ref.range_2theta_deg, ref.background.chebyshev, poni_lines, str(path),
                       file_digest(recipe.path(cal.image)), file_digest(mask), file_digest(flat))
    if path.is_file():
        written_by_us = cache.data.get("instrument", {}).get("outputs") == [str(path)]
        if not written_by_us or cache.hit("instrument", key, [path]) or not cal.image:
            return path, StageInfo("instrument", "reused", time.perf_counter() - t0, f"existing instrument file {path}",
                                   [str(path)])
    if not cal.image:
        raise RecipeError(f"recipe {recipe.source}: key 'refinement.profile.instrument': file {path} does not exist "
                          "and no 'calibration.image' is given to fit it from (give the calibrant image, an existing "
                          ".instprm file, or U, V, W, X, Y under 'refinement.profile' instead)")
    wl = float(cal.wavelength_A or recipe.wavelength_A)
    if abs(wl - recipe.wavelength_A) > 1e-4 * recipe.wavelength_A:
        raise RecipeError(f"recipe {recipe.source}: key 'refinement.profile.instrument': file {path} does not exist "
                          f"and the calibrant image is at calibration.wavelength_A = {wl} A, not the frames' "
                          f"wavelength_A = {recipe.wavelength_A} A; a profile fitted at one wavelength does not hold "
                          "at another (make the instrument file from a calibrant at the data wavelength)")
    import tempfile

    from insitu_xrd.fit.instrument import INSTRUMENT_PARAMS, fit_instrument
    from insitu_xrd.io.frames import FrameRef
    from insitu_xrd.io.instprm import write_instrument
    from insitu_xrd.io.patterns import read_patterns, two_theta_deg_axis
    from insitu_xrd.reduction.series import integrate_series

    img_path = recipe.path(cal.image)
    assert img_path is not None
    if not img_path.is_file():
        raise InsituXRDError(f"calibration image (calibration.image) {img_path} does not exist")
    say(f"integrating {img_path.name} for the instrument profile")
    settings = integration_settings(recipe)
    with tempfile.TemporaryDirectory(prefix="calibrant_", dir=recipe.output_dir) as tmp:
        pat_path = Path(tmp) / "calibrant.nc"
        rep = integrate_series([FrameRef(img_path.resolve())], poni, pat_path, settings, mask=mask, flat=flat,
                               wavelength_A=wl, time_source={"period_s": float("nan")}, overwrite=True)
        pats = read_patterns(pat_path)
    if rep.n_ok != 1 or str(pats["status"].values[0]) != "ok":
        raise InsituXRDError(f"calibration image {img_path}: integration failed ({pats['status'].values[0]})")
    tth = two_theta_deg_axis(pats)
    y = np.asarray(pats["intensity"].values[0], dtype=float)
    sig = np.asarray(pats["sigma"].values[0], dtype=float)
    good = np.isfinite(tth) & np.isfinite(y) & np.isfinite(sig) & (sig > 0)
    rng = tuple(ref.range_2theta_deg) if ref.range_2theta_deg else None
    say(f"fitting the instrument profile to {cal.calibrant}")
    fit = fit_instrument(tth[good], y[good], sig[good], cal.calibrant, wl, mode="rietveld", range_2theta_deg=rng,
                         chebyshev=ref.background.chebyshev, refine=list(INSTRUMENT_PARAMS) + ["sh_l"])
    comments = [f"source: {img_path} integrated with {poni} (insitu-xrd run, recipe {recipe.source})"]
    if getattr(recipe, "_instrument_note", ""):
        comments.append(recipe._instrument_note)
    comments += fit.summary_lines()
    pol = recipe.integration.polarization
    write_instrument(path, fit.instrument, polarization=0.99 if pol is None else float(pol), comments=comments)
    cache.store("instrument", key, [path])
    ins = fit.instrument
    detail = (f"{cal.calibrant}: U {ins.U:.3g} V {ins.V:.3g} W {ins.W:.3g} X {ins.X:.3g} Y {ins.Y:.3g} "
              f"zero {ins.zero_deg:+.4f} deg" + (f" SH/L {ins.sh_l:.3g}" if ins.sh_l else "")
              + f", Rwp {fit.result.rwp:.4f} -> {path}"
              + (" (calibration.instrument_profile: default for microstrain)" if getattr(recipe, "_instrument_note", "") else ""))
    return path, StageInfo("instrument", "ran", time.perf_counter() - t0, detail, [str(path)])


# ---------------------------------------------------------------------------------------------
# integrate


def time_source_of(recipe: Recipe, section: Any = None) -> Any:
    """The ``time_source`` argument of io.frames for the recipe's frames section (or ``section``,
    e.g. its patterns section: the same time keys)."""
    fr = section if section is not None else recipe.frames
    assert fr is not None
    if fr.time_source == "sidecar":
        return {"sidecar": str(recipe.path(fr.sidecar))}
    if fr.time_source == "period":
        return {"period_s": float(fr.period_s)}
    if fr.time_source == "none":
        return {"period_s": float("nan")}
    return "header"


def integration_settings(recipe: Recipe) -> Any:
    from insitu_xrd.reduction.integrate import IntegrationSettings

    it = recipe.integration
    kw: dict[str, Any] = dict(npt=it.npt, unit=it.unit, radial_range=tuple(it.range) if it.range else None,
                              polarization_factor=it.polarization, auto_mask=it.auto_mask)
    if it.method is not None:
        kw["method"] = tuple(it.method)
    if it.sigma_clip is not None:
        kw["sigma_clip"] = True
        kw["sigma_clip_threshold"] = float(it.sigma_clip)
    if it.engine != "cython":
        kw["engine"] = it.engine
    return IntegrationSettings(**kw)


def _frame_specs(recipe: Recipe) -> str:
    fr = recipe.frames
    assert fr is not None
    return str(recipe.path(fr.files))


def integration_key(recipe: Recipe, poni: Path) -> str:
    """Cache key of the integration: its settings, the geometry and the correction files' content."""
    fr = recipe.frames
    assert fr is not None
    poni_lines = "\n".join(l for l in Path(poni).read_text().splitlines() if l.strip() and not l.startswith("#"))
    key = section_hash(recipe.integration, fr.model_dump(exclude={"files"}), recipe.wavelength_A, poni_lines,
                       file_digest(recipe.path(fr.dark)), file_digest(recipe.path(fr.flat)),
                       file_digest(recipe.path(fr.mask)))
    if recipe.integration.engine != "cython":  # an engine gives numbers equal within tolerance only
        key = section_hash(key, recipe.integration.engine)
    return key


def open_integration(recipe: Recipe, poni: Path, cache: StageCache, frames: list[Any],
                     output: Path | None = None, export: bool = True, key: str | None = None) -> tuple[Any, str]:
    """The recipe's integration into ``<outputs>/patterns.nc`` opened as a
    :class:`~insitu_xrd.reduction.series.SeriesIntegration` (resumed when the settings are
    unchanged, started anew when they changed), and its cache key (``cache.store`` it after
    closing). ``frames``: the frames known now (the static mask is found on the first ones);
    ``key``: :func:`integration_key`, when the caller has it already (it reads the correction files)."""
    from insitu_xrd.pipeline.executors import get_executor
    from insitu_xrd.reduction.series import SeriesIntegration

    fr = recipe.frames
    if fr is None:
        raise RecipeError(f"recipe {recipe.source}: no 'frames' section; nothing to integrate")
    out = output or (recipe.output_dir / "patterns.nc")
    key = key or integration_key(recipe, poni)
    same_settings = cache.hit("integrate", key, [out])
    series = SeriesIntegration(frames, poni, out, integration_settings(recipe), mask=recipe.path(fr.mask),
                               dark=recipe.path(fr.dark), flat=recipe.path(fr.flat), wavelength_A=recipe.wavelength_A,
                               time_source=time_source_of(recipe), hdf5_dataset=fr.hdf5_dataset,
                               overwrite=False if same_settings else "if_different", resume_key=key,
                               executor=get_executor(recipe.executor), batch_frames=recipe.integration.batch_frames,
                               export=export)
    return series, key


def integrate_stage(recipe: Recipe, poni: Path, cache: StageCache, progress: bool = True,
                    frames: list[Any] | None = None, output: Path | None = None) -> tuple[Path, StageInfo]:
    """Integrate the recipe's frames into ``<outputs>/patterns.nc`` (new frames only when the
    settings are unchanged; everything again when they changed)."""
    from insitu_xrd.io.frames import discover_frames

    t0 = time.perf_counter()
    fr = recipe.frames
    if fr is None:
        raise RecipeError(f"recipe {recipe.source}: no 'frames' section; nothing to integrate")
    out = output or (recipe.output_dir / "patterns.nc")
    key = integration_key(recipe, poni)
    refs = frames if frames is not None else discover_frames(_frame_specs(recipe), hdf5_dataset=fr.hdf5_dataset)
    if cache.hit("integrate", key, [out]):
        try:
            with xr.open_dataset(out, engine="h5netcdf") as old:
                # a row still "pending" (a batch run interrupted) is not done
                have = ({str(k) for k, st in zip(old["frame_key"].values, old["status"].values) if str(st) != "pending"}
                        if "frame_key" in old.variables else set())
        except Exception:
            have = set()
        if all(r.key in have for r in refs):
            return out, StageInfo("integrate", "reused", time.perf_counter() - t0, f"{len(refs)} frames in {out}", [str(out)])
    if not refs:
        raise InsituXRDError("no frames given")
    bar = _Bar("integrate", progress)
    from insitu_xrd.reduction.series import with_setup_time

    series, key = open_integration(recipe, poni, cache, refs, output=out, key=key)
    with bar, series:
        rep = with_setup_time(series.add(refs, progress=bar.update, on_start=bar.start), series.setup_s)
    cache.store("integrate", key, [out])
    status = "resumed" if rep.n_skipped_done else "ran"
    detail = (f"{rep.n_ok} frames integrated ({rep.frames_per_s:.1f} frames/s, {rep.executor}), "
              f"{rep.n_skipped_done} already done, {rep.n_error} errors" + "".join(f"; {n}" for n in rep.notes))
    return out, StageInfo("integrate", status, time.perf_counter() - t0, detail, [str(out)])


class _Bar:
    """A rich progress bar fed by integrate_series callbacks."""

    def __init__(self, label: str, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.prog = Progress(TextColumn(f"[bold]{label}[/bold] {{task.description}}"), BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled)
        self.task = None

    def __enter__(self) -> "_Bar":
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def start(self, total: int, done: int) -> None:
        self.task = self.prog.add_task("", total=total, completed=done)

    def update(self, done: int, total: int, name: str, status: str) -> None:
        if self.task is not None:
            self.prog.update(self.task, completed=done, description=f"{name} {status[:30]}")


# ---------------------------------------------------------------------------------------------
# refine


def patterns_fingerprint(ds: xr.Dataset) -> str:
    """Hash of a Patterns Dataset's data, axis, statuses, names, times and wavelength."""
    h = hashlib.sha256()
    for name in ("intensity", "sigma"):
        h.update(np.ascontiguousarray(ds[name].values, dtype=np.float64).tobytes())
    rname = "two_theta" if "two_theta" in ds.coords else "q"
    h.update(np.ascontiguousarray(ds[rname].values, dtype=np.float64).tobytes())
    for name in ("status", "frame_name"):
        if name in ds.variables:
            h.update("\n".join(str(v) for v in ds[name].values).encode())
    if "time_s" in ds.variables:
        h.update(np.ascontiguousarray(ds["time_s"].values, dtype=np.float64).tobytes())
    h.update(repr(float(ds.attrs.get("wavelength_A", np.nan))).encode())
    return h.hexdigest()[:20]


def sequential_cache_key(recipe: Recipe, patterns: xr.Dataset) -> str:
    """Key of the batch refinement: refinement + sequential sections + the patterns' content + the
    content of the ``profile.instrument`` file (a rewritten file re-refines)."""
    from insitu_xrd import __version__

    seq = recipe.sequential.model_dump(exclude={"workers", "checkpoint_every", "checkpoint_interval_s"})
    return section_hash(recipe.refinement, seq, patterns_fingerprint(patterns), __version__,
                        file_digest(instrument_file(recipe)))


def watch_cache_key(recipe: Recipe) -> str:
    """Key of a watch session's refinement (the patterns grow, so only the recipe sections and the
    ``profile.instrument`` file's content)."""
    from insitu_xrd import __version__

    seq = recipe.sequential.model_dump(exclude={"workers", "checkpoint_every", "checkpoint_interval_s", "chunks"})
    return "watch:" + section_hash(recipe.refinement, seq, __version__, file_digest(instrument_file(recipe)))


def _adopt_watch_results(recipe: Recipe, patterns: xr.Dataset, out: Path, key: str) -> int:
    """Let the batch run continue from a watch session's ``sequential.nc``: when it was made by
    ``watch`` with the same refinement and sequential sections on the same frames in the same
    order (the patterns file both use), its frames count as done. Returns how many were adopted."""
    if recipe.sequential.direction != "forward" or not out.exists() or "frame_key" not in patterns.variables:
        return 0
    try:
        with xr.open_dataset(out, engine="h5netcdf") as old:
            if old.attrs.get("mode") != "watch" or old.attrs.get("cache_key") != watch_cache_key(recipe):
                return 0
            old = old.load()
    except Exception:
        return 0
    if "frame_key" not in old.variables or old.sizes.get("frame") != patterns.sizes["frame"]:
        return 0
    if [str(k) for k in old["frame_key"].values] != [str(k) for k in patterns["frame_key"].values]:
        return 0
    old.attrs["cache_key"] = key
    old.attrs["adopted_from"] = "watch"
    from insitu_xrd.io.store import write_dataset_atomic

    write_dataset_atomic(old, out)
    return int(sum(str(s) != "pending" for s in old["status"].values))


def instrument_attrs(recipe: Recipe) -> dict[str, str]:
    """Results attrs on the instrument profile: ``instrument_profile`` (where it came from),
    ``instrument_note`` (what ``calibration.instrument_profile`` did) and, when microstrain or
    size is refined without a calibrant profile (or with U..Y refined too), ``microstrain_warning``
    naming the confounded parameters."""
    from insitu_xrd.pipeline.single_fit import microstrain_warning

    ref = recipe.refinement
    if ref is None:
        return {}
    path = instrument_file(recipe)
    out = {"instrument_profile": f"calibrant: {path}" if path is not None
           else "recipe values (no instrument profile from a calibrant)"}
    note = getattr(recipe, "_instrument_note", "")
    if note:
        out["instrument_note"] = note
    warning = microstrain_warning(ref, path is not None)
    if warning:
        out["microstrain_warning"] = warning
    from insitu_xrd.pipeline.refine_setup import wavelength_warning

    lab = wavelength_warning(ref, recipe.wavelength_A, recipe.base_dir)
    if lab:
        out["wavelength_warning"] = lab
    out["polarization"] = polarization_attr(recipe)
    return out


def polarization_attr(recipe: Recipe) -> str:
    """The results attr ``polarization``: what the fits apply (the recipe's
    ``profile.polarization``, the instrument file's ``Polariz.`` for Bragg-Brentano 1D data) or
    that the integration divided it out."""
    from insitu_xrd.fit.engine import polarization_note
    from insitu_xrd.pipeline.refine_setup import load_instrument

    ref = recipe.refinement
    assert ref is not None
    applied = ref.profile.polarization
    if applied is None and ref.profile.instrument:
        try:
            instrument = load_instrument(ref, recipe.wavelength_A, recipe.base_dir)
            applied = instrument.polarization if instrument is not None else None
        except InsituXRDError:  # an unreadable file is reported by the refinement itself
            applied = None
    return polarization_note(ref.profile.polarization, applied)


def sequential_sigma_source(mode: str, patterns: xr.Dataset, where: str = "") -> str:
    """The results attr ``sigma_source`` of a sequential run: ``refinement.sigma`` and, when the
    patterns' esds are used, where they came from (the Patterns Dataset's ``sigma_source``).

    Frames without esds (a ``patterns:`` file without an esd column: a NaN sigma row,
    :func:`insitu_xrd.pipeline.sequential.without_esds`) are weighed per frame as
    ``refinement.sigma`` says; with ``auto`` the attr counts the frames weighed by their esds, by
    sqrt(max(I, 1)) and, background-subtracted (negative intensities), by sqrt(max(I, 0) + s0^2).
    ``from_file`` with such frames raises :class:`RecipeError` (``where``: the recipe, for the
    message)."""
    from insitu_xrd.pipeline.sequential import without_esds

    source = str(patterns.attrs.get("sigma_source", "the patterns file sigma"))
    n_esd = n_counts = n_subtracted = 0
    if "sigma" in patterns and "intensity" in patterns:
        inten = np.asarray(patterns["intensity"].values, dtype=float)
        sig = np.asarray(patterns["sigma"].values, dtype=float)
        status = [str(s) for s in patterns["status"].values] if "status" in patterns else ["ok"] * inten.shape[0]
        for y, s, st in zip(inten, sig, status):
            if st != "ok":
                continue
            if not without_esds(y, s):
                n_esd += 1
            elif np.any(y[np.isfinite(y)] < 0):
                n_subtracted += 1
            else:
                n_counts += 1
    n_none = n_counts + n_subtracted
    if n_none and mode == "from_file":
        raise RecipeError(f"{where}key 'refinement.sigma' is from_file, but {n_none} of the "
                          f"{n_none + n_esd} patterns have no esds (files without an esd column); "
                          "use auto, poisson or unit")
    if mode in ("poisson", "unit"):
        return f"{mode} (refinement.sigma)" + (f"; {n_none} of {n_none + n_esd} files had no esd column" if n_none else "")
    if not n_none:
        return f"from_file ({source})"
    parts = [f"from_file for {n_esd} frames with esds"] if n_esd else []
    if n_counts:
        parts.append(f"poisson sqrt(max(I, 1)) for {n_counts} frames without esds")
    if n_subtracted:
        parts.append(f"poisson_background_subtracted sqrt(max(I, 0) + s0^2), s0 the rms of the points below zero, "
                     f"for {n_subtracted} frames without esds and with negative intensities")
    return "auto (refinement.sigma; the files have no esd column): " + "; ".join(parts)


def make_factory(recipe: Recipe, wavelength_A: float) -> Callable[[Any], Any]:
    from insitu_xrd.pipeline.refine_setup import make_refinement

    base = recipe.base_dir
    return lambda spec: make_refinement(spec, wavelength_A, base)


def refine_stage(recipe: Recipe, patterns_path: Path, cache: StageCache, progress: bool = True) -> tuple[xr.Dataset, StageInfo]:
    """Sequential refinement of every frame into ``<outputs>/sequential.nc`` (checkpointed)."""
    from insitu_xrd.io.patterns import read_patterns
    from insitu_xrd.pipeline.sequential import refine_sequence

    t0 = time.perf_counter()
    if recipe.refinement is None:
        raise RecipeError(f"recipe {recipe.source}: no 'refinement' section")
    patterns = read_patterns(patterns_path)
    key = sequential_cache_key(recipe, patterns)
    out = recipe.output_dir / "sequential.nc"
    if cache.hit("refine", key, [out]):
        try:
            ds = xr.load_dataset(out, engine="h5netcdf")
            if ds.attrs.get("cache_key") == key and "pending" not in set(map(str, ds["status"].values)):
                return ds, StageInfo("refine", "reused", time.perf_counter() - t0, f"{ds.sizes['frame']} frames in {out}", [str(out)])
        except Exception:
            pass
    sigma_source = sequential_sigma_source(recipe.refinement.sigma, patterns, f"recipe {recipe.source}: ")
    resumed = False
    adopted = _adopt_watch_results(recipe, patterns, out, key)
    if out.exists():
        try:
            with xr.open_dataset(out, engine="h5netcdf") as old:
                resumed = old.attrs.get("cache_key") == key
        except Exception:
            resumed = False
    if not resumed:  # killed before the NetCDF checkpoint was written: the working store resumes
        from insitu_xrd.io.store import read_store_attrs

        sig = read_store_attrs(out.with_suffix(".zarr")).get("store_signature")
        resumed = bool(sig) and json.loads(sig).get("cache_key") == key
    wl = float(patterns.attrs["wavelength_A"])
    # segments (sequential.chunks > 1) run on the recipe's executor when it has an executor section
    # (the workers read patterns_path); without one, on sequential.workers forked processes
    executor = recipe.executor if "executor" in recipe.model_fields_set else None
    ds = refine_sequence(patterns, recipe.refinement, make_factory(recipe, wl), recipe.sequential, checkpoint=out,
                         cache_key=key, progress=progress, base_dir=recipe.base_dir,
                         attrs={"patterns_file": str(patterns_path), "recipe": str(recipe.source),
                                "recipe_name": recipe.name, **instrument_attrs(recipe),
                                "sigma_source": sigma_source},
                         executor=executor, patterns_path=patterns_path)
    cache.store("refine", key, [out])
    st = [str(s) for s in ds["status"].values]
    detail = (f"{len(st)} frames: {st.count('ok')} ok, {st.count('refit')} refit, {st.count('diverged')} diverged, "
              f"{sum(s.startswith('skipped') or s == 'error' for s in st)} skipped/error")
    if adopted:
        detail += f" ({adopted} refined by the watch session)"
    if ds.attrs.get("microstrain_warning"):
        detail += "; microstrain warning (no calibrant instrument profile; see report.md)"
    return ds, StageInfo("refine", "resumed" if resumed else "ran", time.perf_counter() - t0, detail, [str(out)])


# ---------------------------------------------------------------------------------------------
# echem and strain


def echem_stage(recipe: Recipe, ds: xr.Dataset) -> tuple[xr.Dataset, StageInfo]:
    """Attach voltage, capacity, x_li and soc per frame (no echem section: unchanged)."""
    from insitu_xrd.io.echem import read_cycler_log
    from insitu_xrd.pipeline.echem_align import attach_echem
    from insitu_xrd.pipeline.sequential import phase_onset_attrs

    t0 = time.perf_counter()
    ec = recipe.echem
    if ec is None:
        return ds, StageInfo("echem", "skipped", 0.0, "no echem section in the recipe")
    log = read_cycler_log(recipe.path(ec.file), format=ec.format, columns=ec.columns or None)
    out = attach_echem(ds, log, offset_s=ec.offset_s, active_mass_mg=ec.active_mass_mg,
                       theoretical_capacity_mAh_g=ec.theoretical_capacity_mAh_g, x_start=ec.x_start)
    out.attrs.update(phase_onset_attrs(out))
    n_out = int(out.attrs.get("echem_frames_outside_log", 0))
    return out, StageInfo("echem", "ran", time.perf_counter() - t0,
                          f"{log.source}: {len(log)} samples, {n_out} frames outside the log")


def strain_stage(recipe: Recipe, ds: xr.Dataset) -> tuple[xr.Dataset | None, StageInfo]:
    """Strain per frame and smooth curves; written to ``<outputs>/strain/``."""
    from insitu_xrd.io.strain_export import compute_strain, write_strain_outputs

    t0 = time.perf_counter()
    st = recipe.strain
    versus = st.versus
    if versus not in ds.variables and versus != "frame":
        return None, StageInfo("strain", "skipped", 0.0, f"abscissa {versus!r} not available (no echem section?)")
    kw: dict[str, Any] = dict(reference=st.reference, versus=versus, reference_phase=st.phase, phases=st.phases,
                              source=str(recipe.output_dir / "results.nc"))
    if st.reference == "frame":
        kw["reference_frame"] = st.frame
    if st.reference == "values":
        vals = dict(st.values or {})
        ph = st.phase or (recipe.refinement.phases[0].name if recipe.refinement else "")
        kw["a0_A"] = vals.get("a", vals.get(f"{ph}_a"))
        kw["c0_A"] = vals.get("c", vals.get(f"{ph}_c"))
        kw["a0_esd_A"] = vals.get("a_esd", 0.0)
        kw["c0_esd_A"] = vals.get("c_esd", 0.0)
        if kw["a0_A"] is None or kw["c0_A"] is None:
            raise RecipeError(f"recipe {recipe.source}: key 'strain.values' needs a and c (A)")
    strain = compute_strain(ds, **kw)
    out_dir = recipe.output_dir / "strain"
    paths = write_strain_outputs(strain, out_dir)
    return strain, StageInfo("strain", "ran", time.perf_counter() - t0, f"vs {versus} -> {out_dir}",
                             [str(p) for p in paths.values()])
