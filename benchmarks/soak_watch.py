"""Soak test of the live mode (``make soak``, minutes): ``insitu-xrd watch`` under a beamtime's abuse.

Usage::

    .venv/bin/python benchmarks/soak_watch.py [--frames 240] [--bad-share 0.08] [--slow-share 0.08]
        [--kills 2] [--seed 3] [--keep DIR]

A few hundred small frames (96 x 96 pixel TIFFs of the Ni rings at 0.1173 A, Poisson noise, the
lattice growing 0.01 % per frame, times in the TIFF headers) land in a watched folder one by one
with random delays (0-60 ms); a share is written slowly (a third, a pause longer than
``--settle-s``, the rest) and a share is truncated and never completed (bad frames). The watch
runs as a separate process and is killed (SIGKILL, a crash) at ``--kills`` random moments while
frames land (each once the session has fitted a frame, plus a random 0-1 s: the kill lands while
it integrates, fits or writes), and restarted each time; after the last frame the session is
stopped with Ctrl-C and a last session runs until idle. Then the batch pipeline
(``insitu-xrd run``) is run on the good frames alone, and the two are compared.

Printed, like a benchmark: frames written, good, bad, slow; kills; frames lost (a good frame
missing from the watch's results), duplicated (a frame name twice), bad frames not recorded as
bad, good frames not fitted; mismatches (a good frame whose refined a, scale or Rwp differs from
the batch run's by more than 1e-3 of its esd, or whose status differs) and the largest
difference in esd. The exit status is 1 when any of those counts is not 0.

Why these limits: the watch fits the same patterns in the same order as the batch run and, after
a restart, continues from the saved chain state (exact resume), so the numbers agree to rounding
(tests/test_watch.py measures < 1e-4 esd); a bad frame is skipped without touching the chain.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WAVELENGTH_A = 0.1173
A_NI = 3.5238
SHAPE = (96, 96)
PIXEL_M = 8e-4
WATCH_OPTS = ["--poll-s", "0.1", "--settle-s", "0.3", "--bad-after-s", "2", "--no-figures"]


def _ni_ring_curve(tth: np.ndarray, a_A: float) -> np.ndarray:
    """Counts per pixel vs 2theta (deg): Ni fcc reflections (h, k, l all odd or all even) with
    rough relative intensities on a flat background."""
    curve = np.full_like(tth, 300.0)
    for hkl, height in (((1, 1, 1), 900.0), ((2, 0, 0), 450.0), ((2, 2, 0), 300.0), ((3, 1, 1), 320.0),
                        ((2, 2, 2), 120.0)):
        d = a_A / math.sqrt(sum(v * v for v in hkl))
        centre = math.degrees(2 * math.asin(WAVELENGTH_A / (2 * d)))
        curve += height * np.exp(-0.5 * ((tth - centre) / 0.02) ** 2)
    return curve


def write_source_frames(src: Path, n: int, seed: int) -> Path:
    """n frames into ``src`` and the geometry ``geo.poni`` beside them; returns the PONI."""
    import fabio
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from insitu_xrd.io.poni import write_poni

    det = Detector(pixel1=PIXEL_M, pixel2=PIXEL_M, max_shape=SHAPE)
    ai = AzimuthalIntegrator(dist=0.5, poni1=0.2 * SHAPE[0] * PIXEL_M, poni2=0.25 * SHAPE[1] * PIXEL_M, rot1=0.01,
                             detector=det, wavelength=WAVELENGTH_A * 1e-10)
    tth = np.linspace(0.0, 10.0, 4000)
    rng = np.random.default_rng(seed)
    src.mkdir(parents=True)
    for i in range(n):
        curve = _ni_ring_curve(tth, A_NI * (1 + 1e-4 * i))
        img = ai.calcfrom1d(tth, curve, shape=SHAPE, dim1_unit="2th_deg", correctSolidAngle=True,
                            polarization_factor=0.99)
        fabio.tifimage.TifImage(data=rng.poisson(img).astype(np.int32), header={"time_s": f"{10.0 * i}"}).write(
            str(src / f"frame_{i:04d}.tif"))
    return write_poni(ai, src.parent / "geo.poni")


def write_recipe(path: Path, frames_glob: str, poni: Path, out_dir: str) -> Path:
    path.write_text(f"""name: soak
wavelength_A: {WAVELENGTH_A}
calibration: {{poni: {poni}}}
frames: {{files: "{frames_glob}", time_source: header}}
integration: {{npt: 600, unit: 2th_deg, range: [2.5, 7.0], polarization: 0.99}}
refinement:
  mode: lebail
  background: {{chebyshev: 3}}
  profile: {{U: 0.0, V: 0.0, W: 2.0, X: 0.0, Y: 0.0, refine: [W]}}
  phases:
    - {{name: Ni, template: ni, a: {A_NI}, mustrain: 0.0, refine: [a, scale]}}
sequential: {{direction: forward}}
strain: {{reference: first, versus: frame}}
outputs: {{dir: {out_dir}, figures: false}}
""")
    return path


def _start_watch(incoming: Path, recipe: Path, log: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from insitu_xrd.cli.main import app; app()", "watch", str(incoming),
           "--recipe", str(recipe), *WATCH_OPTS, *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows each frame as it is done
    return subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=recipe.parent, env=env)


def _frames_logged(log: Path) -> int:
    """Frames the watch sessions reported done so far (lines 'frame N name: status')."""
    try:
        return sum(1 for line in log.read_text().splitlines() if line.startswith("frame "))
    except OSError:
        return 0


def _kill_while_busy(proc: subprocess.Popen, log: Path, since: int, rng: np.random.Generator) -> None:
    """SIGKILL ``proc`` at a random moment once it has fitted a frame in this session (so the kill
    lands while it integrates, fits or writes, not while it starts up)."""
    t0 = time.monotonic()
    while _frames_logged(log) <= since and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    time.sleep(float(rng.uniform(0.0, 1.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def land_frames(src: Path, incoming: Path, recipe: Path, logs: Path, bad: set[int], slow: set[int], kills: int,
                rng: np.random.Generator) -> int:
    """Copy the frames into ``incoming`` the way a detector writes them, killing and restarting
    the watch ``kills`` times at random frames; returns the number of kills done."""
    frames = sorted(src.glob("frame_*.tif"))
    kill_at = sorted(rng.choice(np.arange(len(frames) // 6, len(frames) - len(frames) // 6), size=kills, replace=False))
    log = logs / "session.log"
    proc = _start_watch(incoming, recipe, log, [])
    since = 0
    done = 0
    try:
        for i, f in enumerate(frames):
            blob = f.read_bytes()
            if i in bad:  # truncated and never completed
                (incoming / f.name).write_bytes(blob[: int(len(blob) * rng.uniform(0.2, 0.8))])
            elif i in slow:  # written slowly: a pause longer than --settle-s in the middle
                with open(incoming / f.name, "wb") as out:
                    out.write(blob[: len(blob) // 3])
                    out.flush()
                    time.sleep(0.5)
                    out.write(blob[len(blob) // 3:])
            else:
                shutil.copy2(f, incoming / f.name)
            time.sleep(float(rng.uniform(0.0, 0.06)))
            if done < len(kill_at) and i == kill_at[done]:
                _kill_while_busy(proc, log, since, rng)  # a crash while integrating, fitting or writing
                done += 1
                since = _frames_logged(log)
                proc = _start_watch(incoming, recipe, log, [])
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the watch stops cleanly (a last session finishes the frames)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--bad-share", type=float, default=0.08)
    ap.add_argument("--slow-share", type=float, default=0.08)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)

    import xarray as xr

    from insitu_xrd.pipeline.run import run_pipeline

    t0 = time.monotonic()
    root = args.keep or Path(tempfile.mkdtemp(prefix="insitu_soak_"))
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    poni = write_source_frames(root / "source", args.frames, args.seed)
    order = rng.permutation(np.arange(1, args.frames))  # frame 0 (the strain reference) is always good
    n_bad, n_slow = int(round(args.bad_share * args.frames)), int(round(args.slow_share * args.frames))
    bad = set(int(i) for i in order[:n_bad])
    slow = set(int(i) for i in order[n_bad:n_bad + n_slow])
    names = [f"frame_{i:04d}.tif" for i in range(args.frames)]
    good_names = [n for i, n in enumerate(names) if i not in bad]

    incoming = root / "beamtime" / "incoming"
    incoming.mkdir(parents=True)
    w_recipe = write_recipe(root / "beamtime" / "watch.yaml", str(incoming / "frame_*.tif"), poni, "results")
    logs = root / "beamtime"
    t_land = time.monotonic()
    kills = land_frames(root / "source", incoming, w_recipe, logs, bad, slow, args.kills, rng)
    last = subprocess.run([sys.executable, "-c", "from insitu_xrd.cli.main import app; app()", "watch", str(incoming),
                           "--recipe", str(w_recipe), *WATCH_OPTS, "--idle-exit-s", "6"],
                          cwd=w_recipe.parent, capture_output=True, text=True)
    (logs / "last_session.log").write_text(last.stdout + last.stderr)
    t_watch = time.monotonic() - t_land
    w = xr.load_dataset(root / "beamtime" / "results" / "results.nc", engine="h5netcdf")

    # the batch run on the good frames alone
    good_dir = root / "batch" / "frames"
    good_dir.mkdir(parents=True)
    for n in good_names:
        shutil.copy2(root / "source" / n, good_dir / n)
    b_recipe = write_recipe(root / "batch" / "batch.yaml", str(good_dir / "frame_*.tif"), poni, "results")
    t_b = time.monotonic()
    b = run_pipeline(b_recipe, progress=False).results
    t_batch = time.monotonic() - t_b

    w_names = [str(n) for n in w["frame_name"].values]
    w_status = {str(n): str(s) for n, s in zip(w["frame_name"].values, w["status"].values)}
    duplicated = len(w_names) - len(set(w_names))
    lost = [n for n in good_names if n not in w_status]
    bad_names = [names[i] for i in sorted(bad)]
    bad_not_flagged = [n for n in bad_names if n in w_status and not w_status[n].startswith(("skipped", "error"))]
    bad_missing = [n for n in bad_names if n not in w_status]
    unfitted = [n for n in good_names if n in w_status and w_status[n] not in ("ok", "refit")]
    bi = {str(n): i for i, n in enumerate(b["frame_name"].values)}
    wi = {n: i for i, n in enumerate(w_names)}
    mismatches, worst = [], 0.0
    for n, i in bi.items():
        if n not in wi:
            continue
        j = wi[n]
        if str(b["status"].values[i]) != str(w["status"].values[j]):
            mismatches.append(f"{n}: status {b['status'].values[i]} vs {w['status'].values[j]}")
            continue
        for var in ("a", "phase_fraction"):
            vb, vw = np.asarray(b[var].values[i], float), np.asarray(w[var].values[j], float)
            esd = np.asarray(b[f"{var}_esd"].values[i], float) if f"{var}_esd" in b else np.full(vb.shape, np.nan)
            ok = np.isfinite(vb) & np.isfinite(esd) & (esd > 0)
            if not np.array_equal(np.isnan(vb), np.isnan(vw)):
                mismatches.append(f"{n}: {var} NaN pattern differs")
            elif ok.any():
                d = float(np.max(np.abs(vb[ok] - vw[ok]) / esd[ok]))
                worst = max(worst, d)
                if d > 1e-3:
                    mismatches.append(f"{n}: {var} differs by {d:.2g} esd")
    print(f"soak: frames {args.frames} written ({len(good_names)} good, {len(bad)} bad, {len(slow)} slow), "
          f"kills {kills} (and a Ctrl-C), watch {t_watch:.0f} s, batch {t_batch:.0f} s, total {time.monotonic() - t0:.0f} s")
    session_log = (logs / "session.log").read_text() + (logs / "last_session.log").read_text()
    exact = session_log.count("continuing the chain of the previous session")
    print(f"soak: restarts that continued the exact chain state {exact}, frames logged by the killed sessions "
          f"{_frames_logged(logs / 'session.log')}")
    print(f"soak: lost {len(lost)}, duplicated {duplicated}, bad not recorded as bad {len(bad_not_flagged) + len(bad_missing)}, "
          f"good not fitted {len(unfitted)}, mismatches vs batch {len(mismatches)} (largest {worst:.2g} esd)")
    for line in (lost + bad_not_flagged + bad_missing + unfitted + mismatches)[:20]:
        print(f"  {line}")
    failed = bool(lost or duplicated or bad_not_flagged or bad_missing or unfitted or mismatches)
    if args.keep is None and not failed:
        shutil.rmtree(root, ignore_errors=True)
    elif failed:
        print(f"soak: kept {root} (session logs in beamtime/)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
