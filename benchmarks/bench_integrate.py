"""Benchmark: `insitu-xrd integrate` end to end vs a bare pyFAI loop, same frames, same method.

Usage::

    .venv/bin/python benchmarks/bench_integrate.py [--frames 120] [--npt 3000] [--keep DIR]

Writes N simulated Perkin-Elmer frames (2048x2048 int32 TIFF, 200 um pixels, 1 m, 0.1173 A,
Poisson noise; ~16 MB each) to a temporary folder, then times, in the same run:

* bare pyFAI: ``fabio.open(f).data`` + ``ai.integrate1d(..., method=full/csc/cython,
  error_model="poisson", polarization_factor=0.99)`` in a plain loop, one process, results kept
  in a list (no file written);
* ``insitu-xrd integrate FRAMES --poni P -o out.nc`` as a subprocess (Python start-up, engine
  build, auto-mask, read + integrate + NetCDF checkpoints included);

and prints frames/s of both, end to end (all setup included) and steady state (first frame
excluded: engine build), and the ratio ours / bare. Frames are read once before timing so both
loops see them in the page cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHOD = ("full", "csc", "cython")


def make_frames(folder: Path, n: int) -> Path:
    import fabio
    from pyFAI.detectors import detector_factory
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from insitu_xrd.io.poni import write_poni

    det = detector_factory("Perkin", {"pixel1": 2e-4, "pixel2": 2e-4})
    ai = AzimuthalIntegrator(dist=1.0, poni1=0.2048, poni2=0.2048, rot1=0.004, rot2=0.007, detector=det,
                             wavelength=0.1173e-10)
    tth = np.linspace(0, 18, 8000)
    curve = 300 + sum(h * np.exp(-0.5 * ((tth - c) / 0.02) ** 2) for c, h in ((2.6, 4e3), (4.1, 8e3), (5.3, 3e3)))
    expected = ai.calcfrom1d(tth, curve, shape=det.shape, dim1_unit="2th_deg", polarization_factor=0.99)
    rng = np.random.default_rng(0)
    frames = folder / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.poisson(expected).astype(np.int32)
        fabio.tifimage.TifImage(data=img, header={"time_s": f"{10.0 * i}"}).write(str(frames / f"frame_{i:04d}.tif"))
    return write_poni(ai, folder / "geo.poni")


def bare_pyfai(files: list[Path], poni: Path, npt: int) -> tuple[float, float]:
    import fabio
    import pyFAI

    t0 = time.perf_counter()
    ai = pyFAI.load(str(poni))
    out = []
    t_first = None
    for f in files:
        data = fabio.open(str(f)).data
        out.append(ai.integrate1d(data, npt, unit="2th_deg", method=METHOD, error_model="poisson",
                                  polarization_factor=0.99, correctSolidAngle=True))
        if t_first is None:
            t_first = time.perf_counter()
    t1 = time.perf_counter()
    return len(files) / (t1 - t0), (len(files) - 1) / (t1 - t_first)


def ours(frames_dir: Path, poni: Path, npt: int, out: Path) -> float:
    exe = Path(sys.executable).with_name("insitu-xrd")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "insitu_xrd.cli.main"]),
           "integrate", str(frames_dir), "--poni", str(poni), "--npt", str(npt), "-o", str(out), "--overwrite"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.perf_counter()
    if res.returncode != 0:
        raise SystemExit(f"insitu-xrd integrate failed:\n{res.stderr}")
    import xarray as xr

    with xr.open_dataset(out, engine="h5netcdf") as ds:
        n = int((ds["status"].values == "ok").sum())
    return n / (t1 - t0)


def ours_library_steady(frames_dir: Path, poni: Path, npt: int, out: Path) -> float:
    """Library call with a progress hook: rate after the first frame is stored (setup excluded)."""
    from insitu_xrd.reduction.integrate import IntegrationSettings, integrate_series

    stamps: list[float] = []
    integrate_series([frames_dir], poni, out, IntegrationSettings(npt=npt), overwrite=True,
                     progress=lambda done, total, name, status: stamps.append(time.perf_counter()))
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120, help="number of 2048x2048 frames")
    ap.add_argument("--npt", type=int, default=3000, help="radial bins")
    ap.add_argument("--keep", type=Path, default=None,
                    help="folder to keep frames in and reuse on the next run (default: temporary)")
    args = ap.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_integrate_"))
    try:
        t = time.perf_counter()
        existing = sorted((folder / "frames").glob("*.tif")) if (folder / "frames").is_dir() else []
        if args.keep is not None and len(existing) == args.frames and (folder / "geo.poni").is_file():
            poni = folder / "geo.poni"  # frames kept from an earlier run of this script
        else:
            poni = make_frames(folder, args.frames)
        files = sorted((folder / "frames").glob("*.tif"))
        for f in files:  # warm the page cache for both contenders
            f.read_bytes()
        print(f"{len(files)} frames 2048x2048 int32 written in {time.perf_counter() - t:.1f} s; "
              f"method {','.join(METHOD)}, {args.npt} bins, poisson sigma, {os.cpu_count()} CPUs")
        bare_e2e, bare_steady = bare_pyfai(files, poni, args.npt)
        ours_e2e = ours(folder / "frames", poni, args.npt, folder / "out.nc")
        ours_steady = ours_library_steady(folder / "frames", poni, args.npt, folder / "out_lib.nc")
        print(f"bare pyFAI loop (fabio.open + integrate1d): {bare_e2e:6.1f} frames/s end to end, "
              f"{bare_steady:6.1f} frames/s steady")
        print(f"insitu-xrd integrate (CLI, read+integrate+write): {ours_e2e:6.1f} frames/s end to end, "
              f"{ours_steady:6.1f} frames/s steady (library)")
        print(f"ratio ours/bare: end to end {ours_e2e / bare_e2e:.2f}, steady {ours_steady / bare_steady:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
