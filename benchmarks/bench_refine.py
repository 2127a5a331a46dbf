"""Refinement speed and accuracy on a simulated operando sequence.

Each frame: two R-3m phases (NMC811 H2 + H3, lattice and H3 fraction changing from frame to frame)
plus the cell's Li metal (Im-3m), 2750 points over 1-12 deg 2theta at 0.1173 A, Poisson noise,
GSAS-II CW instrument profile known (as from an instrument file). Every frame is fitted
(a) from a cold start (the recipe's start values) and (b) warm-started from the previous frame's
result, in Le Bail and in Rietveld mode. Prints the median seconds per fit, the warm/cold ratio
(the cold start is the baseline measured in this run) and the accuracy reached against the truth
(max |error| and max |error|/esd over the frames).

Run: .venv/bin/python benchmarks/bench_refine.py [--frames N]
Target: < 0.3 s per warm-started fit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction
from insitu_xrd.fit.engine import Refinement
from insitu_xrd.fit.spec import RefinementSpec

WL = 0.1173
INST = Instrument(WL, U=1.2, V=-0.4, W=0.9, X=0.15, Y=0.3)
X = np.linspace(1.0, 12.0, 2750)


def truth_sequence(n: int) -> list[dict[str, float]]:
    s = np.linspace(0.0, 1.0, n)
    return [
        {
            "H2_a": 2.8400 - 0.010 * t, "H2_c": 14.445 - 0.040 * t,
            "H3_a": 2.8220 - 0.004 * t, "H3_c": 14.050 - 0.060 * t,
            "H2_mustrain": 900.0 + 300.0 * t, "H3_mustrain": 1400.0,
            "H3_fraction": 0.25 + 0.5 * t, "Li_a": 3.5100,
        }
        for t in s
    ]


def simulate(truth: dict[str, float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    h2 = make_template("nmc811", name="H2", a=truth["H2_a"], c=truth["H2_c"])
    h3 = make_template("nmc811", name="H3", a=truth["H3_a"], c=truth["H3_c"], li_occupancy=0.1)
    li = make_template("li_metal", name="Li", a=truth["Li_a"])
    k = 9e3
    states = [
        PhaseState(h2, scale=scale_for_weight_fraction(1 - truth["H3_fraction"], h2, k), mustrain=truth["H2_mustrain"]),
        PhaseState(h3, scale=scale_for_weight_fraction(truth["H3_fraction"], h3, k), mustrain=truth["H3_mustrain"]),
        PhaseState(li, scale=0.03, mustrain=300.0),
    ]
    total = calc_pattern(X, states, INST, background_coeffs=[400, -120, 40, -10]).total
    y = np.random.default_rng(seed).poisson(total).astype(float)
    return y, np.sqrt(np.maximum(y, 1.0))


def make_spec(mode: str) -> RefinementSpec:
    return RefinementSpec.model_validate(
        {
            "mode": mode,
            "range_2theta_deg": [1.2, 11.8],
            "background": {"chebyshev": 6},
            "profile": {"U": INST.U, "V": INST.V, "W": INST.W, "X": INST.X, "Y": INST.Y},
            "phases": [
                {"name": "H2", "template": "nmc811", "a": 2.840, "c": 14.44, "refine": ["a", "c", "scale", "mustrain"]},
                {"name": "H3", "template": "nmc811", "a": 2.822, "c": 14.04, "li_occupancy": 0.1, "mustrain": 1400,
                 "refine": ["a", "c", "scale", "mustrain"]},
                {"name": "Li", "template": "li_metal", "refine": ["a", "scale"]},
            ],
        }
    )


CHECK = ("H2_a", "H2_c", "H3_a", "H3_c", "Li_a")


def run(n_frames: int) -> None:
    truths = truth_sequence(n_frames)
    data = [simulate(t, seed=100 + i) for i, t in enumerate(truths)]
    print(f"{n_frames} frames, {X.size} points, phases H2 + H3 (R-3m) + Li (Im-3m), lambda {WL} A")
    print(f"{'mode':9s} {'start':5s} {'median s':>9s} {'max s':>7s} {'ratio':>6s}  accuracy: max |err| (max |err|/esd)")
    for mode in ("lebail", "rietveld"):
        ref = Refinement(make_spec(mode), WL)
        ref.fit(X, *data[0])  # warm up caches (reflection lists, form-factor tables)
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        errors: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
        prev = None
        for truth, (y, s) in zip(truths, data):
            for start in ("cold", "warm"):
                t0 = time.perf_counter()
                res = ref.fit(X, y, s, start=prev if start == "warm" else None)
                times[start].append(time.perf_counter() - t0)
                for name in CHECK:
                    err = res.values[name] - truth[name]
                    errors[start].setdefault(name, []).append(err)
                    errors[start].setdefault(name + "/esd", []).append(abs(err) / res.esds[name] if res.esds[name] > 0 else np.inf)
                frac = res.phase_fraction["H3"][0]
                errors[start].setdefault("H3_fraction", []).append(frac - truth["H3_fraction"])
                if start == "warm":
                    prev = res
        cold = statistics.median(times["cold"])
        for start in ("cold", "warm"):
            med = statistics.median(times[start])
            acc = "  ".join(
                f"{n} {max(abs(e) for e in errors[start][n]):.1e} ({max(errors[start][n + '/esd']):.1f})" for n in CHECK
            )
            acc += f"  H3_wt {max(abs(e) for e in errors[start]['H3_fraction']):.1e}"
            print(f"{mode:9s} {start:5s} {med:9.3f} {max(times[start]):7.3f} {med / cold:6.2f}  {acc}")
    print("ratio = median time / median cold-start time of the same mode (baseline measured in this run)")
    print("target: < 0.3 s per warm-started fit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="number of simulated frames")
    run(parser.parse_args().frames)
