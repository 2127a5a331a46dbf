"""Where the work runs: serial, local processes (default) or a Dask cluster.

The recipe's ``executor:`` section (:class:`insitu_xrd.pipeline.recipe.ExecutorSection`) picks one::

    executor: {type: serial}                            # in this process, one task at a time
    executor: {type: local}                             # local processes, all cores (default)
    executor: {type: local, workers: 4}
    executor: {type: dask, address: tcp://10.0.0.5:8786}   # an existing cluster (dask-jobqueue...)
    executor: {type: dask, local: {n_workers: 4}}          # a LocalCluster started here

Every executor has the same small interface, used by
:func:`insitu_xrd.reduction.series.integrate_series`: ``submit(fn, *args) -> future`` (the
future has ``result()`` and ``cancel()``), ``n_workers``, ``in_process`` (tasks share this
process's memory: the serial executor) and ``name``. Tasks sent to processes are module-level
functions whose arguments are small settings and file paths (never arrays or integrator objects);
each worker builds its pyFAI integrator once, cached by a hash of the settings, and runs with one
BLAS/OpenMP thread. The segments of a sequential refinement (``sequential.chunks > 1`` with an
``executor:`` section) run on the same executors as tasks of the same kind
(:func:`insitu_xrd.pipeline.sequential.segments.refine_segment`: the patterns path, frame indices and
the sections as JSON in; the worker builds its refinement factory once per settings hash).

Local processes use the ``spawn`` start method (no fork of a process holding threads or OpenCL
contexts). Dask futures are retried by the scheduler when a worker is lost (``retries``; a task
whose worker died is rescheduled by Dask itself, up to ``distributed.scheduler.allowed-failures``
times). Executors are kept open for the process's lifetime (:func:`get_executor` reuses one for
the same settings: the watch mode integrates each poll with the workers' integrators already
built) and shut down at exit.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Mapping

from insitu_xrd.errors import InsituXRDError

__all__ = ["SerialExecutor", "LocalProcessExecutor", "DaskExecutor", "make_executor", "get_executor",
           "shutdown_executors", "worker_peak_rss_mb"]

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1"}


def _init_worker() -> None:
    os.environ.update(THREAD_ENV)
    from insitu_xrd.reduction.integrate import limit_worker_threads

    limit_worker_threads()
    _exit_with_parent()


PARENT_POLL_S = 2.0


def _exit_with_parent() -> None:
    """A worker whose parent is killed (``kill -9``: no shutdown reaches the pool) would wait for
    tasks for ever, holding its engine's memory; it exits once it has been re-parented."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_peak_rss_mb() -> float:
    """Task: this worker process's peak resident memory (MB; Linux ``ru_maxrss``). Benchmarks."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class SerialExecutor:
    """Runs each task at once in the calling process (debugging, tiny series, tests)."""

    name = "serial"
    in_process = True
    n_workers = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # delivered by result(), like a pool's future
            fut.set_exception(exc)
        return fut

    def close(self) -> None:
        pass


class LocalProcessExecutor:
    """A pool of local worker processes (spawned, one thread each).

    A worker that dies breaks the pool (``BrokenProcessPool`` from ``result()``): the run stops
    with everything completed so far stored, and a re-run resumes.
    """

    name = "local"
    in_process = False

    def __init__(self, workers: int | None = None) -> None:
        self.n_workers = max(1, int(workers or os.cpu_count() or 1))
        self._pool = ProcessPoolExecutor(max_workers=self.n_workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Tasks on a Dask cluster: an existing scheduler (``address``) or a ``LocalCluster`` started
    here (``local={"n_workers": N}``; one thread per worker process).

    Raises:
        InsituXRDError: dask.distributed is not installed (``pip install 'insitu-xrd[dask]'``), or
            the scheduler cannot be reached.
    """

    name = "dask"
    in_process = False

    def __init__(self, address: str | None = None, local: Mapping[str, Any] | None = None,
                 retries: int = 2, timeout_s: float = 30.0) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InsituXRDError(
                "executor type 'dask' needs dask.distributed, which is not installed: "
                "pip install 'insitu-xrd[dask]' (or dask distributed), or use executor type 'local'"
            ) from None
        self.retries = int(retries)
        self._cluster = None
        if address:
            try:
                self.client = Client(address, timeout=timeout_s, set_as_default=False)
            except Exception as exc:
                raise InsituXRDError(f"executor dask: cannot connect to the scheduler at {address} "
                                     f"({type(exc).__name__}: {exc})") from None
        else:
            kw = dict(local or {})
            kw.setdefault("n_workers", max(1, os.cpu_count() or 1))
            kw.setdefault("threads_per_worker", 1)
            kw.setdefault("processes", True)
            kw.setdefault("dashboard_address", ":0")  # a free port: never clashes with a running cluster
            env = dict(THREAD_ENV)
            env.update(kw.pop("env", {}) or {})
            self._cluster = LocalCluster(env=env, **kw)
            self.client = Client(self._cluster, set_as_default=False)

    @property
    def n_workers(self) -> int:
        try:
            return max(1, len(self.client.scheduler_info().get("workers", {})))
        except Exception:
            return 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False, retries=self.retries)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


def make_executor(config: Any = None) -> Any:
    """A new executor from a recipe ``executor`` section (pydantic model or dict; None = local).

    Keys: ``type`` (serial | local | dask), ``workers`` (local), ``address`` / ``local`` /
    ``retries`` (dask).
    """
    cfg = _as_dict(config)
    kind = cfg.get("type", "local")
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        return LocalProcessExecutor(cfg.get("workers"))
    if kind == "dask":
        local = {k: v for k, v in (cfg.get("local") or {}).items() if v is not None}
        return DaskExecutor(address=cfg.get("address") or None, local=local, retries=int(cfg.get("retries", 2)))
    raise InsituXRDError(f"executor type {kind!r}: must be 'serial', 'local' or 'dask'")


_OPEN: dict[str, Any] = {}


def get_executor(config: Any = None) -> Any:
    """The open executor for these settings (made on first use, reused afterwards)."""
    cfg = _as_dict(config)
    key = json.dumps(cfg, sort_keys=True, default=str)
    ex = _OPEN.get(key)
    if ex is None:
        ex = make_executor(cfg)
        _OPEN[key] = ex
    return ex


def shutdown_executors() -> None:
    """Close every executor :func:`get_executor` opened."""
    while _OPEN:
        _key, ex = _OPEN.popitem()
        try:
            ex.close()
        except Exception:
            pass


atexit.register(shutdown_executors)


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return dict(config.model_dump())
    return dict(config)
