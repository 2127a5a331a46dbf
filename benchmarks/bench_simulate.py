"""Simulator speed: frame rendering against pyFAI calcfrom1d (baseline, same run), and a full
dataset with 1 worker against all cores.

    .venv/bin/python benchmarks/bench_simulate.py [--binning 1] [--frames 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from insitu_xrd.simulate.dataset import FRAME_GEOMETRY, simulate_dataset
from insitu_xrd.simulate.frames import FrameRenderer, make_integrator
from insitu_xrd.simulate.pattern1d import simulate_pattern_1d


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binning", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    ai = make_integrator(FRAME_GEOMETRY, 0.1173, args.binning)
    shape = ai.detector.shape
    r1 = FrameRenderer(ai, 0.99, oversampling=1)
    r2 = FrameRenderer(ai, 0.99, oversampling=2)
    x = np.arange(0.0, r1.tth_max_deg + 0.3, 0.002)
    y = simulate_pattern_1d(0.5, x, seed=None).expected
    r1.expected(x, y), r2.expected(x, y)  # warm caches
    ai.calcfrom1d(x, y, shape=shape, dim1_unit="2th_deg", correctSolidAngle=True, polarization_factor=0.99)
    t_ref = _best(lambda: ai.calcfrom1d(x, y, shape=shape, dim1_unit="2th_deg", correctSolidAngle=True, polarization_factor=0.99))
    t_1 = _best(lambda: r1.expected(x, y))
    t_2 = _best(lambda: r2.expected(x, y))
    print(f"detector {shape}: calcfrom1d {t_ref:.3f} s (baseline); renderer 1x1 {t_1:.3f} s (x{t_ref / t_1:.2f}); "
          f"2x2 sub-pixels {t_2:.3f} s (x{t_ref / t_2:.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        t_serial = _best(lambda: simulate_dataset(f"{tmp}/a", frames=args.frames, binning=args.binning, workers=1), 1)
        t_pool = _best(lambda: simulate_dataset(f"{tmp}/b", frames=args.frames, binning=args.binning), 1)
    print(f"dataset of {args.frames} frames: 1 worker {t_serial:.1f} s (baseline); all cores {t_pool:.1f} s (x{t_serial / t_pool:.2f})")


if __name__ == "__main__":
    main()
