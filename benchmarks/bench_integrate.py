"""Benchmark: `insitu-xrd integrate` end to end vs a bare pyFAI loop, same frames, same method.

Usage::

    .venv/bin/python benchmarks/bench_integrate.py [--frames 40] [--npt 3000] [--repeat 3] [--keep DIR]

Writes N simulated Perkin-Elmer frames (2048x2048 int32 TIFF, 200 um pixels, 1 m, 0.1173 A,
Poisson noise; ~16 MB each) to a folder, then times, in the same run and on the same frames:

* bare pyFAI: a Python process running ``fabio.open(f).data`` + ``ai.integrate1d(...,
  method=full/csc/cython, error_model="poisson", polarization_factor=0.99)`` in a plain loop,
  results kept in a list (no file written);
* ``insitu-xrd integrate FRAMES --poni P -o out.nc`` (engine build, auto-mask, read + integrate
  + NetCDF checkpoints, progress bar).

Both run as fresh processes and their wall time is taken from outside (interpreter start-up,
imports, engine build included): "end to end". "Steady" is the rate after the first frame is
done (engine build excluded), measured inside the process (ours: the library call behind the
command, with its progress hook). The frames are read once before timing so that both see them
in the page cache. Each contender runs ``--repeat`` times, alternating; the best run of each is
reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHOD = ("full", "csc", "cython")

BARE_LOOP = r"""
import json, sys, time
import fabio, pyFAI
npt, poni, files = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
ai = pyFAI.load(poni)
out, stamps = [], []
for f in files:
    data = fabio.open(f).data
    out.append(ai.integrate1d(data, npt, unit="2th_deg", method=("full", "csc", "cython"), error_model="poisson",
                              polarization_factor=0.99, correctSolidAngle=True))
    stamps.append(time.perf_counter())
print(json.dumps({"n": len(out), "steady_fps": (len(stamps) - 1) / (stamps[-1] - stamps[0])}))
"""

OURS_STEADY = r"""
import json, sys, time
from pathlib import Path
from insitu_xrd.reduction.integrate import IntegrationSettings
from insitu_xrd.reduction.series import integrate_series
npt, poni, frames, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
stamps = []
rep = integrate_series([frames], poni, out, IntegrationSettings(npt=npt), overwrite=True,
                       progress=lambda done, total, name, status: stamps.append(time.perf_counter()))
print(json.dumps({"n": rep.n_ok, "steady_fps": (len(stamps) - 1) / (stamps[-1] - stamps[0])}))
"""


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


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{res.stderr}")
    return wall, res.stdout


def bare_pyfai(files: list[Path], poni: Path, npt: int) -> tuple[float, float]:
    """(end-to-end frames/s, steady frames/s) of the bare loop in a fresh process."""
    wall, stdout = _run([sys.executable, "-c", BARE_LOOP, str(npt), str(poni), *map(str, files)])
    info = json.loads(stdout.strip().splitlines()[-1])
    return info["n"] / wall, info["steady_fps"]


def ours_cli(frames_dir: Path, poni: Path, npt: int, out: Path) -> float:
    """End-to-end frames/s of `insitu-xrd integrate` in a fresh process."""
    exe = Path(sys.executable).with_name("insitu-xrd")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "insitu_xrd.cli.main"]),
           "integrate", str(frames_dir), "--poni", str(poni), "--npt", str(npt), "-o", str(out), "--overwrite"]
    wall, _ = _run(cmd)
    import xarray as xr

    with xr.open_dataset(out, engine="h5netcdf") as ds:
        n = int((ds["status"].values == "ok").sum())
    return n / wall


def ours_steady(frames_dir: Path, poni: Path, npt: int, out: Path) -> float:
    """Steady frames/s of the library call behind the command (fresh process, progress hook)."""
    _, stdout = _run([sys.executable, "-c", OURS_STEADY, str(npt), str(poni), str(frames_dir), str(out)])
    return json.loads(stdout.strip().splitlines()[-1])["steady_fps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="number of 2048x2048 frames")
    ap.add_argument("--npt", type=int, default=3000, help="radial bins")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender (best reported)")
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
        print(f"{len(files)} frames 2048x2048 int32 ready in {time.perf_counter() - t:.1f} s; "
              f"method {','.join(METHOD)}, {args.npt} bins, poisson sigma, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")
        bare_e2e, bare_st, ours_e2e, ours_st = [], [], [], []
        for _ in range(max(1, args.repeat)):
            e, st = bare_pyfai(files, poni, args.npt)
            bare_e2e.append(e)
            bare_st.append(st)
            ours_e2e.append(ours_cli(folder / "frames", poni, args.npt, folder / "out.nc"))
            ours_st.append(ours_steady(folder / "frames", poni, args.npt, folder / "out_lib.nc"))
        runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"bare pyFAI loop (fabio.open + integrate1d):       end to end {max(bare_e2e):5.1f} frames/s "
              f"(runs {runs(bare_e2e)}), steady {max(bare_st):5.1f} frames/s (runs {runs(bare_st)})")
        print(f"insitu-xrd integrate (read+integrate+write, CLI): end to end {max(ours_e2e):5.1f} frames/s "
              f"(runs {runs(ours_e2e)}), steady {max(ours_st):5.1f} frames/s (runs {runs(ours_st)})")
        print(f"ratio ours/bare (best of each): end to end {max(ours_e2e) / max(bare_e2e):.2f}, "
              f"steady {max(ours_st) / max(bare_st):.2f}; load average now {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
