"""Azimuthal integration of detector frame series into a Patterns Dataset (pyFAI).

:func:`integrate_series` (in :mod:`.series`, with :class:`~insitu_xrd.reduction.series.SeriesIntegration`
for a series that grows) is the library behind ``insitu-xrd integrate``:

1. frames are discovered (:mod:`insitu_xrd.io.frames`), the PONI is validated, the wavelength is
   resolved (``wavelength_A`` argument > PONI > frame header ``Wavelength``), dark/flat/mask files
   are loaded and checked against the detector shape, and the static mask is built (mask file +
   detector gaps + dead/hot/gap pixels found on the first frames, :mod:`.masking`);
2. one :class:`FrameIntegrator` builds the pyFAI engine once (sparse CSC matrix with full pixel
   splitting by default) and is shared by two worker threads (pyFAI's Cython engines release the
   GIL), each reading and integrating frames while the main thread stores results in order — or,
   with an ``executor`` (:mod:`insitu_xrd.pipeline.executors`: serial, local processes, Dask),
   batches of frames go to workers that get only small settings and file paths and build their
   own integrator once (:func:`integrate_frames_task`); every frame gets its row first, in frame
   order, and each batch is region-written into its rows as it completes (in any order);
3. results go to a :class:`~insitu_xrd.io.store.FrameStore` (a Zarr working store ``<stem>.zarr``
   with appends whose cost does not grow with the series, the NetCDF output exported at the end;
   resume: frames already "ok" are not integrated again; failed frames are retried);
4. unreadable / truncated / wrong-shape frames get ``status = "error: <reason>"`` and NaN data.

Intensities are per-pixel averages after dark subtraction, flat division, polarization and
solid-angle correction (pyFAI's normalised intensity); ``sigma`` comes from pyFAI's "poisson"
error model (variance = raw counts, propagated through the same corrections).

Method: ``("full", "csc", "cython")`` — full pixel splitting. At ~1 m with 200 um pixels a pixel
spans ~0.011 deg while 3000 bins over ~16 deg are ~0.005 deg wide: without splitting single bins
are off by up to 31 % (measured); full splitting costs the same as bbox splitting in the CSC
engine (~18 frames/s per core on 2048x2048).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from insitu_xrd.errors import FrameError, InsituXRDError
from insitu_xrd.io.frames import FrameRef, discover_frames, read_frame
from insitu_xrd.io.poni import load_poni, poni_text
from insitu_xrd.reduction.masking import DELTA_DUMMY, DUMMY, dynamic_bad_pixels

__all__ = ["IntegrationSettings", "FrameIntegrator", "IntegrationReport", "DEFAULT_METHOD", "resolve_engine",
           "integrate_frames_task", "cached_integrator", "earlier_mask_frames", "file_digest", "header_wavelength_A",
           "integrate_one", "sample_frames", "ThreadRunner", "write_context", "opencl_status", "limit_worker_threads"]

DEFAULT_METHOD = ("full", "csc", "cython")
_PYFAI_UNIT = {"2th_deg": "2th_deg", "q_A^-1": "q_A^-1"}


@dataclass
class IntegrationSettings:
    """Everything that shapes the integrated numbers (all of it is recorded in the output).

    Attributes:
        npt: number of radial bins.
        unit: "2th_deg" or "q_A^-1".
        radial_range: (lo, hi) in ``unit``; None = the detector's full range.
        polarization_factor: pyFAI polarization factor (0.99 for a horizontally polarised
            synchrotron beam); None = no polarization correction.
        correct_solid_angle: divide by the pixel solid angle.
        method: pyFAI (split, algorithm, implementation).
        sigma_clip: reject azimuthal outliers (single-crystal spots) with pyFAI ``sigma_clip``.
        sigma_clip_threshold: rejection threshold in Poisson sigma; sigma_clip_max_iter: passes.
        cake: also store a 2D cake (chi x radial); cake_npt_azim: number of azimuth bins.
        dark_scale: factor applied to the dark image (e.g. ratio of exposure times).
        auto_mask: find gap/dead/hot pixels on the first ``auto_mask_frames`` frames.
        saturation_counts: raw level treated as saturated (per frame); None = dtype maximum for
            integer frames.
        workers: threads reading+integrating frames (2 uses both cores of a 2-core machine)
            when no executor is given to :func:`integrate_series`.
        engine: "cython" (CPU, default) or "opencl" (pyFAI's OpenCL CSR engine on a GPU; falls
            back to the CPU method with a message when pyopencl or an OpenCL device is missing).
    """

    npt: int = 3000
    unit: str = "2th_deg"
    radial_range: tuple[float, float] | None = None
    polarization_factor: float | None = 0.99
    correct_solid_angle: bool = True
    method: tuple[str, str, str] = DEFAULT_METHOD
    sigma_clip: bool = False
    sigma_clip_threshold: float = 5.0
    sigma_clip_max_iter: int = 5
    cake: bool = False
    cake_npt_azim: int = 72
    dark_scale: float = 1.0
    auto_mask: bool = True
    auto_mask_frames: int = 3
    saturation_counts: float | None = None
    workers: int = 2
    engine: str = "cython"

    def validate(self) -> None:
        if self.engine not in ("cython", "opencl"):
            raise InsituXRDError(f"integration engine {self.engine!r}: must be 'cython' or 'opencl'")
        if self.unit not in _PYFAI_UNIT:
            raise InsituXRDError(f"--unit {self.unit!r}: must be one of {', '.join(_PYFAI_UNIT)}")
        if self.npt < 10:
            raise InsituXRDError(f"--npt {self.npt}: need at least 10 bins")
        if self.radial_range is not None:
            lo, hi = self.radial_range
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo >= 0):
                raise InsituXRDError(f"--range {lo} {hi}: need 0 <= LO < HI")
        if self.polarization_factor is not None and not -1.0 <= self.polarization_factor <= 1.0:
            raise InsituXRDError(f"--polarization {self.polarization_factor}: must be within [-1, 1]")
        if self.sigma_clip_threshold <= 0:
            raise InsituXRDError("--sigma-clip-thres must be positive")


@dataclass
class _Result1D:
    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    count: np.ndarray


class FrameIntegrator:
    """A pyFAI integrator with its engine built once, shared by threads.

    Args:
        ai: pyFAI AzimuthalIntegrator (geometry + wavelength).
        shape: frame shape (ny, nx).
        settings: IntegrationSettings.
        static_mask: bool image, True = excluded (None = nothing masked).
        dark: dark image (already scaled), or None. flat: flat image normalised to ~1, or None.
        saturation: raw level treated as saturated per frame, or None.

    ``integrate(data)`` returns a dict: intensity, sigma, n_pixels (radial), n_dynamic_masked
    (int) and with ``settings.cake`` cake_intensity, cake_sigma (chi x radial).
    """

    def __init__(
        self,
        ai: Any,
        shape: tuple[int, int],
        settings: IntegrationSettings,
        static_mask: np.ndarray | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        saturation: float | None = None,
    ) -> None:
        self.ai = ai
        self.shape = tuple(shape)
        self.settings = settings
        self.mask = None if static_mask is None or not static_mask.any() else np.ascontiguousarray(static_mask, dtype=np.int8)
        self.dark = None if dark is None else np.ascontiguousarray(dark, dtype=np.float32)
        self.flat = None if flat is None else np.ascontiguousarray(flat, dtype=np.float32)
        self.saturation = saturation
        ai.empty = np.nan  # bins without any pixel are NaN, not 0
        self.unit = _PYFAI_UNIT[settings.unit]
        if settings.radial_range is None:
            # pin the range so the radial axis is known before any frame and stable on resume
            corners = ai.corner_array(self.shape, unit=self.unit, scale=True)[..., 0]  # cached: the engine reuses it
            lo = float(np.nanmin(corners))
            hi = float(np.nanmax(corners))
            self.radial_range: tuple[float, float] = (max(lo, 0.0), hi)
        else:
            self.radial_range = tuple(map(float, settings.radial_range))
        self._lock = threading.Lock()
        # build the engine(s) once on a blank image
        blank = np.zeros(self.shape, dtype=np.float32)
        first = self._integrate1d(blank)
        self.radial = np.asarray(first.radial, dtype=float)
        self.chi_deg = None
        if settings.cake:
            cake = self._integrate2d(blank)
            self.chi_deg = np.asarray(cake.azimuthal, dtype=float)

    def _common(self) -> dict[str, Any]:
        s = self.settings
        return dict(
            unit=self.unit,
            radial_range=self.radial_range,
            mask=self.mask,
            dark=self.dark,
            flat=self.flat,
            polarization_factor=s.polarization_factor,
            correctSolidAngle=s.correct_solid_angle,
            dummy=float(DUMMY),
            delta_dummy=DELTA_DUMMY,
            error_model="poisson",
        )

    def _integrate1d(self, data: np.ndarray) -> Any:
        s = self.settings
        if s.sigma_clip:
            # the clip and the Poisson pass share pyFAI's ("no","csr") engine, whose sigma_clip is
            # not safe against a concurrent call (measured); the plain 1D CSC path is
            with self._lock:
                return self._sigma_clip(data)
        return self.ai.integrate1d(data, s.npt, method=s.method, **self._common())

    def _sigma_clip(self, data: np.ndarray) -> Any:
        """Azimuthal outlier rejection with Poisson sigma.

        The rejection itself uses pyFAI's "azimuthal" error model: with the Poisson model every
        pixel on a steep peak flank deviates from the bin mean by many Poisson sigma (the radial
        gradient inside a bin) and would be clipped. pyFAI reports only the sigma of the model it
        clipped with, and the azimuthal one overestimates peak sigma (shared README), so the
        Poisson sigma is rebuilt from an unclipped Poisson pass over the same bins:
        sigma_clip = sigma_all * sqrt((I_clip / I_all) * (n_all / n_kept)) — Poisson variance of a
        mean of n pixels scales as I / n.
        """
        s = self.settings
        common = self._common()
        common["error_model"] = "azimuthal"
        clip = self.ai.sigma_clip(data, s.npt, method=("no", "csr", "cython"), thres=s.sigma_clip_threshold,
                                  max_iter=s.sigma_clip_max_iter, **common)
        full = self.ai.integrate1d(data, s.npt, method=("no", "csr", "cython"), **self._common())
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = (np.asarray(clip.intensity) / np.asarray(full.intensity)) * (
                np.asarray(full.count) / np.asarray(clip.count))
            sigma = np.asarray(full.sigma) * np.sqrt(np.where(scale > 0, scale, np.nan))
        return _Result1D(np.asarray(clip.radial), np.asarray(clip.intensity), sigma, np.asarray(clip.count))

    def _integrate2d(self, data: np.ndarray) -> Any:
        s = self.settings
        return self.ai.integrate2d(data, s.npt, s.cake_npt_azim, method=("bbox", "csr", "cython"), **self._common())

    def integrate(self, data: np.ndarray) -> dict[str, Any]:
        """Integrate one raw frame (any numeric dtype). Thread-safe."""
        if tuple(data.shape) != self.shape:
            raise FrameError(f"shape {data.shape} differs from the detector {self.shape}")
        bad = dynamic_bad_pixels(data, self.saturation)
        n_bad = 0
        if bad is not None:
            n_bad = int(bad.sum())
            data = data.astype(np.float32)
            data[bad] = DUMMY
        res = self._integrate1d(data)
        out: dict[str, Any] = {
            "intensity": np.asarray(res.intensity, dtype=float),
            "sigma": np.asarray(res.sigma, dtype=float),
            "n_dynamic_masked": n_bad,
        }
        count = getattr(res, "count", None)
        if count is not None:
            out["n_pixels"] = np.asarray(count, dtype=np.float32)
        if self.settings.cake:
            # pyFAI's 2D CSR integration is not thread-safe (measured: results differ between
            # concurrent calls); the 1D engines are
            with self._lock:
                cake = self._integrate2d(data)
            out["cake_intensity"] = np.asarray(cake.intensity, dtype=np.float32)
            out["cake_sigma"] = np.asarray(cake.sigma, dtype=np.float32)
        empty = ~np.isfinite(out["intensity"]) | (out.get("n_pixels", np.ones(1)) <= 0)
        out["intensity"][empty] = np.nan
        out["sigma"][empty] = np.nan
        return out


@dataclass
class IntegrationReport:
    """Summary of a run."""

    output: Path
    n_frames: int
    n_skipped_done: int
    n_ok: int
    n_error: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    frames_per_s: float = 0.0
    wavelength_A: float = math.nan
    masked_pixels: dict[str, int] = field(default_factory=dict)
    xye_files: int = 0
    notes: list[str] = field(default_factory=list)
    executor: str = "threads"
    n_batches: int = 0


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{Path(path).name} sha256:{h.hexdigest()[:16]}"


def header_wavelength_A(header: dict[str, Any]) -> float | None:
    for key in ("wavelength_A", "qxrd.Wavelength", "Wavelength", "wavelength"):
        if key in header:
            try:
                val = float(str(header[key]).split()[0])
            except (ValueError, IndexError):
                continue
            if 0.01 < val < 10:  # Angstrom
                return val
            if 1e-12 < val < 1e-9:  # metres
                return val * 1e10
    return None


def sample_frames(refs: Sequence[FrameRef], n: int, max_tries: int = 20) -> list[Any]:
    out = []
    for ref in refs[:max_tries]:
        try:
            out.append(read_frame(ref))
        except FrameError:
            continue
        if len(out) >= n:
            break
    return out


_INTEGRATOR_CACHE: dict[str, FrameIntegrator] = {}


def _array_digest(arr: np.ndarray | None) -> str:
    if arr is None:
        return "none"
    return hashlib.sha1(np.ascontiguousarray(arr).view(np.uint8)).hexdigest()


def cached_integrator(ai: Any, shape: tuple[int, int], settings: IntegrationSettings, static: np.ndarray,
                       dark: np.ndarray | None, flat: np.ndarray | None, saturation: float | None) -> FrameIntegrator:
    """Reuse the last FrameIntegrator of this process when nothing that shapes it changed (the
    watch mode integrates each new batch of frames with a new call; building a full-splitting
    engine for 2048x2048 takes seconds)."""
    geometry = "\n".join(l for l in poni_text(ai).splitlines() if l.strip() and not l.startswith("#"))
    key = hashlib.sha1(json.dumps([geometry, list(shape), asdict(settings), _array_digest(static),
                                   _array_digest(dark), _array_digest(flat), saturation],
                                  sort_keys=True, default=str).encode()).hexdigest()
    cached = _INTEGRATOR_CACHE.get(key)
    if cached is not None:
        return cached
    integ = FrameIntegrator(ai, shape, settings, static_mask=static, dark=dark, flat=flat, saturation=saturation)
    _INTEGRATOR_CACHE.clear()  # keep one engine: each holds a large sparse matrix
    _INTEGRATOR_CACHE[key] = integ
    return integ


def earlier_mask_frames(output: Path, hdf5_dataset: str | None) -> list[FrameRef]:
    """Frames the auto-mask of an existing output was computed from (empty if none/unknown)."""
    from insitu_xrd.io.store import read_store_attrs

    text = read_store_attrs(output).get("auto_mask_frames_used")  # Zarr working store, else NetCDF
    try:
        keys = json.loads(text.decode() if isinstance(text, bytes) else text) if text else []
    except (ValueError, TypeError, AttributeError):  # unreadable output: the store reports it later
        return []
    refs: list[FrameRef] = []
    for key in keys:
        # keys: a file path, or "path:index" for a frame of a stack / multi-frame file
        m = re.fullmatch(r"(.+):(\d+)", key)
        path = Path(m.group(1)) if m and Path(m.group(1)).is_file() else Path(key)
        if not path.is_file():
            continue
        try:
            found = [r for r in discover_frames([path], hdf5_dataset=hdf5_dataset) if r.key == key]
        except InsituXRDError:
            continue
        refs.extend(found)
    return refs


# ---------------------------------------------------------------------------------------------
# engines (OpenCL) and the worker side of out-of-process executors


_PROBE_KERNEL = "__kernel void probe(__global float *a) { a[get_global_id(0)] = 1.0f; }"


def opencl_status() -> tuple[bool, str]:
    """(usable, what): whether pyFAI's OpenCL CSR engine can run here and on which device (the
    one pyFAI picks), or why not.

    Listing a device is not enough: a CPU driver can list a device it cannot compile for (PoCL 3.0
    on CPUs newer than its LLVM: "unknown target CPU"), and pyFAI silently swaps a method it has
    no device for. So the device pyFAI selects must build a one-line kernel (milliseconds).
    """
    try:
        import pyopencl as cl  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a broken ICD loader
        return False, f"pyopencl is not installed or does not load ({type(exc).__name__}: {exc})"
    try:
        import pyFAI.integrator.azimuthal  # noqa: F401  (fills pyFAI's method registry)
        from pyFAI.method_registry import IntegrationMethod
        from pyFAI.opencl import ocl

        method = IntegrationMethod.select_one_available(("full", "csr", "opencl"), dim=1, degradable=False)
    except Exception as exc:
        return False, f"no OpenCL platform ({type(exc).__name__}: {exc})"
    if method is None or ocl is None or method.target is None:
        return False, "no OpenCL device usable by pyFAI"
    name = str(method.target_name or "OpenCL device").strip()
    try:
        ctx = ocl.create_context(platformid=method.target[0], deviceid=method.target[1])
        cl.Program(ctx, _PROBE_KERNEL).build()
    except Exception as exc:
        err = next((line.strip() for line in str(exc).splitlines() if "error" in line.lower()), type(exc).__name__)
        return False, f"OpenCL device {name} cannot compile kernels ({err})"
    return True, name


def resolve_engine(settings: IntegrationSettings) -> tuple[IntegrationSettings, str | None]:
    """The settings to integrate with and a message for the user (None when nothing to say).

    ``engine: opencl`` uses pyFAI's OpenCL CSR engine with the same pixel splitting
    (``(split, "csr", "opencl")``); without pyopencl or an OpenCL device it falls back to the CPU
    method and says so. The 2D cake and the sigma-clip pass stay on their CPU engines.
    """
    if settings.engine != "opencl":
        return settings, None
    ok, what = opencl_status()
    if ok:
        method = (settings.method[0], "csr", "opencl")
        return replace(settings, method=method), f"integration engine opencl: pyFAI {','.join(method)} on {what}"
    cpu = replace(settings, engine="cython")
    return cpu, (f"integration engine 'opencl' requested but {what}: integrating on the CPU with "
                 f"{','.join(cpu.method)} instead (same results within pyFAI's tolerance)")


_WORKER_CACHE: dict[str, FrameIntegrator] = {}
_THREADS_LIMITED = False
FAULT_ENV = "INSITU_XRD_FAULT_EXIT_ONCE"  # test hook: "<frame name>|<marker file>"


def limit_worker_threads() -> None:
    """One BLAS/OpenMP thread in this (worker) process: the executors run one task per process."""
    global _THREADS_LIMITED
    if _THREADS_LIMITED:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except Exception:  # threadpoolctl missing or no pool loaded yet: the env vars hold
        pass
    _THREADS_LIMITED = True


def _worker_integrator(spec: dict[str, Any]) -> FrameIntegrator:
    """This process's FrameIntegrator for ``spec``, built once and cached by the spec's hash."""
    key = spec["key"]
    integ = _WORKER_CACHE.get(key)
    if integ is not None:
        return integ
    ai = load_poni(spec["poni"], orientation=spec["orientation"])
    shape = tuple(spec["shape"])
    if getattr(ai.detector, "shape", None) is None:
        ai.detector.shape = shape
        ai.detector.max_shape = shape
    ai.wavelength = float(spec["wavelength_A"]) * 1e-10
    with np.load(spec["context"]) as ctx:
        static = ctx["static"] if "static" in ctx.files else None
        dark = ctx["dark"] if "dark" in ctx.files else None
        flat = ctx["flat"] if "flat" in ctx.files else None
    kw = dict(spec["settings"])
    kw["method"] = tuple(kw["method"])
    if kw.get("radial_range") is not None:
        kw["radial_range"] = tuple(kw["radial_range"])
    integ = FrameIntegrator(ai, shape, IntegrationSettings(**kw), static_mask=static, dark=dark, flat=flat,
                            saturation=spec["saturation"])
    _WORKER_CACHE.clear()  # one engine per worker: each holds a large sparse matrix
    _WORKER_CACHE[key] = integ
    return integ


def integrate_one(integrator: FrameIntegrator, ref: FrameRef, fr: Any = None
                   ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """(result, header, error) of one frame; never raises for a bad frame."""
    if fr is None:
        try:
            fr = read_frame(ref)
        except FrameError as exc:
            return None, None, str(exc)
    try:
        return integrator.integrate(fr.data), fr.header, None
    except FrameError as exc:
        return None, fr.header, f"frame {ref.name}: {exc}"
    except Exception as exc:  # a frame pyFAI chokes on must not stop the series
        return None, fr.header, f"frame {ref.name}: integration failed ({type(exc).__name__}: {exc})"


def _fault_hook(ref: FrameRef) -> None:
    """Test hook (env ``INSITU_XRD_FAULT_EXIT_ONCE=<frame name>|<marker>``): the worker process
    dies at that frame the first time (the marker file records that it did)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, marker = spec.partition("|")
    if ref.name == name and marker and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(17)


def integrate_frames_task(spec: dict[str, Any], refs: Sequence[FrameRef]
                          ) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]]:
    """Worker task: integrate a batch of frames (file references) with the integrator described by
    ``spec`` (small settings and file paths: PONI, a context ``.npz`` with the static mask, dark
    and flat; built once per worker process). Returns per frame (result, header, error)."""
    limit_worker_threads()
    integ = _worker_integrator(spec)
    out = []
    for ref in refs:
        _fault_hook(ref)
        out.append(integrate_one(integ, ref))
    return out


def write_context(output: Path, static: np.ndarray, dark: np.ndarray | None, flat: np.ndarray | None) -> tuple[Path, str]:
    """The arrays workers need, in one ``.npz`` beside the output (named by their digest)."""
    digest = hashlib.sha1("|".join([_array_digest(static), _array_digest(dark), _array_digest(flat)]).encode()).hexdigest()[:16]
    path = output.with_name(f".{output.stem}.context-{digest}.npz")
    if not path.is_file():
        for old in output.parent.glob(f".{output.stem}.context-*.npz"):
            try:
                old.unlink()
            except OSError:
                pass
        arrays: dict[str, np.ndarray] = {"static": np.ascontiguousarray(static)}
        if dark is not None:
            arrays["dark"] = dark
        if flat is not None:
            arrays["flat"] = flat
        tmp = path.with_name(path.name + ".partial.npz")
        output.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return path, digest


class ThreadRunner:
    """The default executor of :func:`integrate_series`: threads in this process sharing one
    integrator (pyFAI's Cython engines release the GIL)."""

    in_process = True
    name = "threads"

    def __init__(self, n: int) -> None:
        self.n_workers = max(1, int(n))
        self._pool = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix="integrate")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
