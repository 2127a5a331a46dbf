"""Benchmark: scaling of integration with the series length and the number of workers.

Usage::

    .venv/bin/python benchmarks/bench_scale.py [--store-frames 10000] [--netcdf-frames 2000]
        [--memory-frames 1000 10000] [--speed-frames 120] [--speed-shape 512] [--quick]

Prints, each measured in this run on this machine:

1. **time per checkpoint against the number of frames already stored**, for the NetCDF store
   (the whole file rewritten at each checkpoint: the earlier behaviour) and the Zarr working store
   (only the new batch appended). Synthetic records of 3000 bins (intensity, sigma float64,
   n_pixels float32 + per-frame scalars), one checkpoint per batch of 100 frames. Flat = the
   cost per frame does not grow with the series. The NetCDF export at the end is timed too.
2. **per-worker peak memory** (RSS high-water mark of the worker process, and of the writer
   process) for integrating 1,000 and 10,000 small synthetic frames (64x64, one HDF5 stack, 300
   bins) with one local worker process; each case runs in a fresh interpreter so the high-water
   marks are its own.
3. **frames/s for 1 and 2 local workers** on ``--speed-frames`` frames of ``--speed-shape``^2
   pixels (full pixel splitting, 1000 bins; the engine build and worker start are excluded: the
   rate is taken from the first to the last completed batch), and the **parallel efficiency**
   fps(2) / (2 fps(1)). On a shared machine the efficiency is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


# ------------------------------------------------------------------------------------ 1: store
def bench_store(n_frames: int, n_netcdf: int, batch: int = 100, npt: int = 3000) -> None:
    from insitu_xrd.io.patterns import open_patterns_store

    radial = np.linspace(1.0, 12.0, npt)
    rng = np.random.default_rng(0)
    rec_i = rng.random(npt)
    marks = sorted({m for m in (0, 1000, 2000, 5000, 10000, n_netcdf - batch, n_frames - batch) if m < n_frames})
    results: dict[str, list[tuple[int, float]]] = {}
    export_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for working, n in (("netcdf", n_netcdf), ("zarr", n_frames)):
            st = open_patterns_store(Path(tmp) / f"{working}.nc", radial, "2th_deg", {"wavelength_A": 0.1173},
                                     working=working, checkpoint_every_frames=batch, checkpoint_every_s=1e9,
                                     chunk_frames=batch)
            times: list[tuple[int, float]] = []
            for i in range(n):
                st.append(f"/data/frame_{i:06d}.tif", {"intensity": rec_i, "sigma": rec_i, "n_pixels": rec_i,
                                                       "status": "ok", "time_s": float(i), "epoch_s": float(i),
                                                       "frame_name": f"frame_{i:06d}.tif"}, checkpoint=False)
                if (i + 1) % batch == 0:
                    t0 = time.perf_counter()
                    st.checkpoint()
                    times.append((i + 1 - batch, time.perf_counter() - t0))
            t0 = time.perf_counter()
            st.close()
            export_s[working] = time.perf_counter() - t0
            results[working] = times

    def at(working: str, m: int) -> str:
        # median of the checkpoints made with m .. m + 3 batches already stored (a shared machine)
        sel = [dt for stored, dt in results[working] if m <= stored < m + 3 * batch]
        return f"{np.median(sel):.3f}" if sel else "-"

    print(f"\n1. time per checkpoint of {batch} new frames ({npt} bins) vs frames already stored "
          "(median of 3 checkpoints from there; the first includes imports)")
    print(f"{'stored':>8} {'netcdf s':>10} {'zarr s':>9}")
    for m in marks:
        print(f"{m:>8} {at('netcdf', m):>10} {at('zarr', m):>9}")
    print(f"close: netcdf {export_s['netcdf']:.2f} s (last checkpoint), zarr {export_s['zarr']:.2f} s "
          f"(NetCDF export of {n_frames} frames)")


# ----------------------------------------------------------------------------------- 2: memory
MEMORY_CASE = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from insitu_xrd.pipeline.executors import LocalProcessExecutor, worker_peak_rss_mb as peak_rss_mb
from insitu_xrd.reduction.integrate import IntegrationSettings
from insitu_xrd.reduction.series import integrate_series

frames, poni, out = sys.argv[1], sys.argv[2], sys.argv[3]
pool = LocalProcessExecutor(1)
t0 = time.perf_counter()
rep = integrate_series([frames], poni, out, IntegrationSettings(npt=300, auto_mask=False), executor=pool,
                       batch_frames=100, time_source={"period_s": 1.0}, overwrite=True)
dt = time.perf_counter() - t0
worker = pool.submit(peak_rss_mb).result()
pool.close()
print(json.dumps({"n": rep.n_ok, "worker_mb": worker, "writer_mb": peak_rss_mb(), "s": dt}))
"""


def _small_series(root: Path, n: int, shape: tuple[int, int] = (64, 64)) -> tuple[Path, Path]:
    import h5py
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from insitu_xrd.io.poni import write_poni

    det = Detector(pixel1=1e-3, pixel2=1e-3, max_shape=shape)
    ai = AzimuthalIntegrator(dist=0.3, poni1=0.3 * shape[0] * 1e-3, poni2=0.3 * shape[1] * 1e-3, detector=det,
                             wavelength=0.1173e-10)
    poni = write_poni(ai, root / "small.poni")
    rng = np.random.default_rng(1)
    base = rng.poisson(500.0, size=(8,) + shape).astype(np.int32)
    h5 = root / f"stack_{n}.h5"
    with h5py.File(h5, "w") as fh:
        dset = fh.create_dataset("entry/data/data", shape=(n,) + shape, dtype=np.int32, chunks=(1,) + shape)
        for i0 in range(0, n, 1000):
            i1 = min(n, i0 + 1000)
            dset[i0:i1] = base[np.arange(i0, i1) % 8]
    return h5, poni


def bench_memory(sizes: list[int]) -> None:
    print("\n2. peak memory (RSS high-water mark) integrating small frames with 1 local worker")
    print(f"{'frames':>7} {'worker MB':>10} {'writer MB':>10} {'frames/s':>9}")
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        for n in sizes:
            h5, poni = _small_series(Path(tmp), n)
            out = Path(tmp) / f"p{n}.nc"
            res = subprocess.run([sys.executable, "-c", MEMORY_CASE, str(h5), str(poni), str(out), str(HERE.parent)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{r['n']:>7} {r['worker_mb']:>10.0f} {r['writer_mb']:>10.0f} {r['n'] / r['s']:>9.0f}")


# ------------------------------------------------------------------------------------ 3: speed
def bench_speed(n: int, side: int, workers: list[int]) -> None:
    import fabio
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from insitu_xrd.io.poni import write_poni
    from insitu_xrd.pipeline.executors import LocalProcessExecutor
    from insitu_xrd.reduction.integrate import IntegrationSettings
    from insitu_xrd.reduction.series import integrate_series

    shape = (side, side)
    fps: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        root = Path(tmp)
        det = Detector(pixel1=2e-4, pixel2=2e-4, max_shape=shape)
        ai = AzimuthalIntegrator(dist=0.3, poni1=0.5 * side * 2e-4, poni2=0.5 * side * 2e-4, detector=det,
                                 wavelength=0.1173e-10)
        poni = write_poni(ai, root / "g.poni")
        fdir = root / "frames"
        fdir.mkdir()
        rng = np.random.default_rng(2)
        base = [rng.poisson(800.0, size=shape).astype(np.int32) for _ in range(4)]
        for i in range(n):
            fabio.tifimage.TifImage(data=base[i % 4]).write(str(fdir / f"f_{i:05d}.tif"))
        for w in workers:
            pool = LocalProcessExecutor(w)
            stamps: list[float] = []
            try:
                integrate_series([fdir], poni, root / f"o{w}.nc", IntegrationSettings(npt=1000, auto_mask=False),
                                 executor=pool, batch_frames=max(2, n // (8 * w)), overwrite=True,
                                 time_source={"period_s": 1.0}, progress=lambda *a: stamps.append(time.perf_counter()))
            finally:
                pool.close()
            # from the first stored frame to the last: engine builds and worker start excluded
            first = stamps[max(2, n // (8 * w)) - 1]
            fps[w] = (len(stamps) - max(2, n // (8 * w))) / (stamps[-1] - first)
    print(f"\n3. throughput, local processes, {n} frames {side}x{side}, full splitting, 1000 bins")
    for w in workers:
        print(f"  {w} worker{'s' if w > 1 else ' '}: {fps[w]:7.1f} frames/s")
    if 1 in fps and 2 in fps:
        print(f"  parallel efficiency fps(2) / (2 fps(1)) = {fps[2] / (2 * fps[1]):.2f} "
              f"(cores on this machine: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store-frames", type=int, default=10000)
    ap.add_argument("--netcdf-frames", type=int, default=2000)
    ap.add_argument("--memory-frames", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--speed-frames", type=int, default=120)
    ap.add_argument("--speed-shape", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--only", choices=["store", "memory", "speed"], nargs="+")
    a = ap.parse_args()
    if a.quick:
        a.store_frames, a.netcdf_frames, a.memory_frames, a.speed_frames, a.speed_shape = 1000, 500, [200, 1000], 24, 256
    parts = a.only or ["store", "memory", "speed"]
    print(f"bench_scale: python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; peak RSS unit: MB")
    if "store" in parts:
        bench_store(a.store_frames, a.netcdf_frames)
    if "memory" in parts:
        bench_memory(a.memory_frames)
    if "speed" in parts:
        bench_speed(a.speed_frames, a.speed_shape, [1, 2])


if __name__ == "__main__":
    main()
