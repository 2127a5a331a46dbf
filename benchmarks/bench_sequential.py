"""Sequential refinement speed (the pipeline's refine stage) with and without its savings.

Data: ``insitu-xrd simulate`` of a first charge (``--frames`` frames, binning 2, seed 11),
integrated once by the pipeline (``insitu-xrd run`` stages calibrate + integrate), then the
sequential refinement of the demo recipe is timed twice on the same patterns:

* baseline: the optional-phase prescreen off (``prescreen_sigma: 0``: the full fit with H3 is
  tried on every frame without H3) and a checkpoint written after every frame
  (``checkpoint_interval_s: 0``), i.e. the behaviour before these savings;
* default: the recipe defaults (prescreen gate on, checkpoints at most every 10 s).

Printed: seconds per frame of both, their ratio, the number of full optional-phase test fits,
and that both give the same H3 onset and lattices within 0.1 esd (the savings must not change
the result).

Run: .venv/bin/python benchmarks/bench_sequential.py [--frames 40] [--out /tmp/bench_seq]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from insitu_xrd.io.patterns import read_patterns
from insitu_xrd.pipeline.recipe import load_recipe
from insitu_xrd.pipeline.sequential import refine_sequence
from insitu_xrd.pipeline.stages import StageCache, calibrate_stage, integrate_stage, make_factory
from insitu_xrd.simulate.dataset import simulate_dataset

PROJECT = Path(__file__).resolve().parents[1]


def timed(patterns, recipe, options, checkpoint: Path) -> tuple[float, object, int]:
    tests = [0]
    factory = make_factory(recipe, float(patterns.attrs["wavelength_A"]))

    class Counting:
        def __init__(self, ref):
            self.ref = ref

        def fit(self, *args, phases=None, **kw):
            if phases is not None and any(recipe.refinement.phase(p).optional for p in phases):
                tests[0] += 1
            return self.ref.fit(*args, phases=phases, **kw)

    if checkpoint.exists():
        checkpoint.unlink()
    t0 = time.perf_counter()
    ds = refine_sequence(patterns, recipe.refinement, lambda sp: Counting(factory(sp)), options,
                         checkpoint=checkpoint, cache_key="bench", progress=False)
    return time.perf_counter() - t0, ds, tests[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_seq_"))
    data = work / "data"
    simulate_dataset(data, frames=args.frames, seed=11, binning=2)
    shutil.copyfile(PROJECT / "recipes" / "demo.yaml", data / "demo.yaml")
    recipe = load_recipe(data / "demo.yaml")
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(recipe.output_dir)
    poni, _ = calibrate_stage(recipe, cache)
    patterns_path, _ = integrate_stage(recipe, poni, cache, progress=False)
    patterns = read_patterns(patterns_path)
    nf = patterns.sizes["frame"]

    base = recipe.sequential.model_copy(deep=True)
    base.optional_phase.prescreen_sigma = 0.0
    base.checkpoint_interval_s = 0.0
    t_base, ds_base, n_base = timed(patterns, recipe, base, work / "base.nc")
    t_def, ds_def, n_def = timed(patterns, recipe, recipe.sequential, work / "default.nc")

    print(f"machine: {platform.processor() or platform.machine()}, {nf} frames of {patterns.sizes['two_theta']} points")
    print(f"baseline (no prescreen, checkpoint every frame): {t_base / nf:6.3f} s/frame, {n_base} optional-phase test fits")
    print(f"default  (prescreen gate, checkpoint <= 10 s)  : {t_def / nf:6.3f} s/frame, {n_def} optional-phase test fits")
    print(f"speed-up: {t_base / t_def:.2f}x")
    same_onset = ds_base.attrs["H3_onset_frame"] == ds_def.attrs["H3_onset_frame"]
    worst = 0.0
    for var in ("a", "c"):
        d = np.abs(ds_base[var].values - ds_def[var].values) / ds_base[f"{var}_esd"].values
        worst = max(worst, float(np.nanmax(d[np.isfinite(d)])) if np.isfinite(d).any() else 0.0)
    print(f"same H3 onset: {same_onset} (frame {ds_def.attrs['H3_onset_frame']}); "
          f"max lattice difference {worst:.3f} esd")


if __name__ == "__main__":
    main()
