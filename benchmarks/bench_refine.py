"""Refinement speed and accuracy on a simulated operando sequence (the toolkit's simulator).

Frames: `insitu_xrd.simulate.pattern1d.simulate_pattern_1d` through the H2 -> H3 two-phase region of
the first charge (Li content x from 0.33 to 0.13: H3 weight fraction 0.04 -> 0.56), 2750 points
over 1-12 deg 2theta at 0.1173 A, Poisson noise (H2 003 ~12000 counts). Each pattern holds two
R-3m phases (H2, H3), the cell's Li metal (Im-3m) and Al (Fm-3m) lines, diffuse components under
H2 104 and 108/110, an electrolyte hump and a Chebyshev background; the instrument profile is known
(as from the calibrant's instrument file), the zero is refined.

Every frame is fitted (a) from a cold start (the recipe's start values, 0.1-0.3 % off) and (b)
warm-started from the previous frame's result (frames 1..N-1 timed), in Le Bail and in Rietveld
mode. Printed: the
median and max seconds per fit, the warm/cold ratio (the cold start is the baseline measured in
this run), and the accuracy reached against the simulator's truth (max |error| over the frames,
and max |error| / esd).

Cold-start spread (issue "a cold fit can stop in a false minimum"): frame 0 is also fitted from
a grid of start lattices over +/- 2 % in H2 a and c around its true lattice (``--spread-grid`` n:
n x n starts), once as a plain fit of the engine (``Refinement.fit``, no lattice search) and once
with the cold start of ``insitu-xrd refine`` and the sequential chain
(:func:`insitu_xrd.pipeline.cold_start.cold_start`: lattice search + restarts). Printed per mode:
the chi2 range over the starts, the largest spread of each reported value in units of its esd,
and the median seconds per cold start (the cost before/after).

Six-phase case (issues 17, 20): a Rietveld fit of 2,500 points of H2 + two low-symmetry phases (a
monoclinic C2/m Li2MnO3, a b c beta refined, and a triclinic P-1 oxide, all six lattice parameters
refined) + LiMn2O4 + Li + Al, cold (the first fit of a new Refinement, and with its caches) and
warm-started over drifting frames, timed against the H2-alone fit of the same pattern type in the
same run; the low-symmetry lattices' worst error in esd. Then the sequential chain over the same
series with and without an optional H3 that the data do not hold (the prescreen rules it out on
every frame): seconds per frame and their ratio.

Laboratory Ka-doublet case (issue 18): Cu Ka1/Ka2 patterns of NMC811 (H2, a drifting) with Al
lines, 15-100 deg at 0.02 deg, Rietveld, cold and warm-started; the doublet fit of doublet data
timed against the single-wavelength fit of single-wavelength data of the same pattern type in the
same run (target: < 2x), with the worst lattice error in esd and the bias of a Ka1-only fit.

Run: .venv/bin/python benchmarks/bench_refine.py [--frames N] [--repeats R] [--spread-grid N] [--six-phase-only]
     [--lab-doublet-only]
Target: < 0.3 s per warm-started fit on a 2-core machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from insitu_xrd.fit.engine import Refinement
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.cold_start import cold_start
from insitu_xrd.simulate.pattern1d import TRUE_INSTRUMENT, simulate_pattern_1d

WL = 0.1173
X = np.linspace(1.0, 12.0, 2750)


def frames(n: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    out = []
    for i, x_li in enumerate(np.linspace(0.33, 0.13, n)):
        sim = simulate_pattern_1d(float(x_li), X, seed=100 + i)
        out.append((sim.observed, sim.sigma, sim.truth))
    return out


def make_spec(mode: str) -> RefinementSpec:
    return RefinementSpec.model_validate(
        {
            "mode": mode,
            "range_2theta_deg": [1.2, 11.8],
            "background": {"chebyshev": 6, "humps": [{"center_deg": 1.9, "fwhm_deg": 1.4}]},
            "profile": {**TRUE_INSTRUMENT, "refine": ["zero_deg"]},
            "phases": [
                {"name": "H2", "template": "nmc811", "a": 2.825, "c": 14.40, "li_occupancy": 0.35,
                 "refine": ["a", "c", "scale", "mustrain", "size_um"]},
                {"name": "H3", "template": "nmc811", "a": 2.812, "c": 14.07, "li_occupancy": 0.1, "mustrain": 1400,
                 "refine": ["a", "c", "scale", "mustrain", "size_um"]},
                {"name": "Li", "template": "li_metal", "mustrain": 300, "refine": ["a", "scale"]},
                {"name": "Al", "template": "al", "mustrain": 400, "refine": ["a", "scale"]},
            ],
            "diffuse": [{"phase": "H2", "reflections": ["104"], "fwhm_deg": 0.2},
                        {"phase": "H2", "reflections": ["108", "110"], "fwhm_deg": 0.2}],
        }
    )


def errors(res, truth: dict) -> dict[str, tuple[float, float]]:
    """{quantity: (error, error/esd)}; relative errors for mustrain and diffuse areas."""
    ph = truth["phases"]
    out: dict[str, tuple[float, float]] = {}
    for p in ("H2", "H3"):
        for ln, key in (("a", "a_A"), ("c", "c_A")):
            err = res.values[f"{p}_{ln}"] - ph[p][key]
            out[f"{p}_{ln}"] = (err, err / res.esds[f"{p}_{ln}"])
        err = res.values[f"{p}_mustrain"] / ph[p]["mustrain"] - 1.0
        out[f"{p}_mustrain(rel)"] = (err, err * ph[p]["mustrain"] / res.esds[f"{p}_mustrain"])
    frac, esd = res.phase_fraction["H3"]
    err = frac - ph["H3"]["weight_fraction"]
    out["H3_wt"] = (err, err / esd)
    for d in truth["diffuse"]:
        name = f"diff_{d['label']}_area"
        err = res.values[name] / d["area"] - 1.0
        out[f"{d['label']}(rel)"] = (err, err * d["area"] / res.esds[name])
    return out


SPREAD_VALUES = ("H2_a", "H2_c", "H2_mustrain", "H2_size_um", "H3_a", "H3_c", "H3_mustrain", "H3_scale", "H2_scale")


def with_h2_start(spec: RefinementSpec, a: float, c: float) -> RefinementSpec:
    phases = [p.model_copy(update={"a": a, "c": c}) if p.name == "H2" else p for p in spec.phases]
    return spec.model_copy(update={"phases": phases})


def cold_start_spread(y: np.ndarray, s: np.ndarray, truth: dict, n_grid: int) -> None:
    """chi2 and values over starts of H2 a, c within +/- 2 % of the truth: plain fit vs cold start."""
    a0, c0 = truth["phases"]["H2"]["a_A"], truth["phases"]["H2"]["c_A"]
    grid = np.linspace(-0.02, 0.02, n_grid)
    starts = [(a0 * (1 + fa), c0 * (1 + fc)) for fa in grid for fc in grid]
    print(f"cold-start spread on frame 0: {len(starts)} starts of H2 (a, c) over +/- 2 % of the truth "
          f"({a0:.4f}, {c0:.3f} A); plain = Refinement.fit, cold = lattice search + restarts")
    print(f"{'mode':9s} {'start':5s} {'chi2 min':>10s} {'chi2 max':>10s} {'spread':>8s} {'median s':>9s}  "
          "max spread / esd of the values")
    for mode in ("lebail", "rietveld"):
        base = make_spec(mode)
        for how in ("plain", "cold"):
            fits, times = [], []
            for a, c in starts:
                spec = with_h2_start(base, a, c)
                t0 = time.perf_counter()
                if how == "plain":
                    fit = Refinement(spec, WL).fit(X, y, s)
                else:
                    fit = cold_start(spec, lambda sp: Refinement(sp, WL).fit(X, y, s), wavelength_A=WL,
                                     two_theta_deg=X, intensity=y, phases=["H2", "H3", "Li", "Al"],
                                     deterministic=True).fit
                times.append(time.perf_counter() - t0)
                fits.append(fit)
            chi2 = np.array([f.chi2 for f in fits])
            ref = fits[int(np.argmin(chi2))]
            spreads = []
            for name in SPREAD_VALUES:
                esd = ref.esds.get(name, np.nan)
                if name in ref.values and np.isfinite(esd) and esd > 0:
                    v = np.array([f.values.get(name, np.nan) for f in fits])
                    spreads.append(f"{name} {np.nanmax(v) - np.nanmin(v):.2g} ({(np.nanmax(v) - np.nanmin(v)) / esd:.2f})")
            print(f"{mode:9s} {how:5s} {chi2.min():10.1f} {chi2.max():10.1f} {np.ptp(chi2):8.2f} "
                  f"{statistics.median(times):9.2f}  " + "  ".join(spreads))
    print("spread = max - min over the starts (in esd units of the lowest-chi2 fit); the cold start must give a "
          "spread below 0.5 in chi2 and 0.1 esd in every value")


def run(n_frames: int, repeats: int, spread_grid: int = 3) -> None:
    data = frames(n_frames)
    print(f"{n_frames} frames (x = 0.33 -> 0.13), {X.size} points, phases H2 + H3 (R-3m) + Li (Im-3m) + Al (Fm-3m) "
          f"+ 2 diffuse + hump, lambda {WL} A; {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}; min over {repeats} repeat(s) of each median")
    print(f"{'mode':9s} {'start':5s} {'median s':>9s} {'max s':>7s} {'ratio':>6s}")
    acc_lines = []
    for mode in ("lebail", "rietveld"):
        ref = Refinement(make_spec(mode), WL)
        ref.fit(X, data[0][0], data[0][1])  # warm up caches (reflection lists, form-factor tables)
        best: dict[str, tuple[float, float]] = {}
        errs: dict[str, dict[str, list[tuple[float, float]]]] = {"cold": {}, "warm": {}}
        for _ in range(repeats):
            times: dict[str, list[float]] = {"cold": [], "warm": []}
            prev = None
            for y, s, truth in data:
                for start in ("cold", "warm"):
                    t0 = time.perf_counter()
                    res = ref.fit(X, y, s, start=prev if start == "warm" else None)
                    if start == "cold" or prev is not None:  # (frame 0 has no previous frame)
                        times[start].append(time.perf_counter() - t0)
                    for k, v in errors(res, truth).items():
                        errs[start].setdefault(k, []).append(v)
                    if start == "warm":
                        prev = res
            for start in ("cold", "warm"):
                med = statistics.median(times[start])
                if start not in best or med < best[start][0]:
                    best[start] = (med, max(times[start]))
        for start in ("cold", "warm"):
            med, mx = best[start]
            print(f"{mode:9s} {start:5s} {med:9.3f} {mx:7.3f} {med / best['cold'][0]:6.2f}")
            acc = "  ".join(f"{k} {max(abs(e) for e, _ in v):.1e} ({max(abs(z) for _, z in v):.1f})"
                            for k, v in errs[start].items())
            acc_lines.append(f"{mode:9s} {start:5s} {acc}")
    print("ratio = median time / median cold-start time of the same mode (baseline measured in this run)")
    print("target: < 0.3 s per warm-started fit")
    print("accuracy vs truth over the frames: max |error| (max |error|/esd); a, c in A, H3_wt weight fraction, "
          "(rel) relative errors")
    for line in acc_lines:
        print(line)
    if spread_grid > 0:
        cold_start_spread(data[0][0], data[0][1], data[0][2], spread_grid)


#: the six-phase case (issue 20, item 7): (name, builder or template, weight fraction,
#: microstrain); two low-symmetry phases, M (C2/m, Li2MnO3) and T (P-1, 2,500 reflections
#: in the range)
SIX_PHASES = (("H2", "nmc811", 0.55, 900.0), ("M", "li2mno3", 0.12, 1500.0), ("T", "triclinic_oxide", 0.10, 1200.0),
              ("S", "limn2o4", 0.09, 800.0), ("Li", "li_metal", 0.07, 400.0), ("Al", "al", 0.07, 300.0))
#: its grid: 2,500 points over the fitted range
X_SIX = np.linspace(1.2, 11.8, 2500)
SIX_INSTRUMENT = {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3}


def _six_phase_objects(drift: float) -> dict:
    """The six phases at frame ``drift`` (H2 a shrinks, the monoclinic phase's beta opens a little)."""
    from insitu_xrd.core.crystal import make_template
    from insitu_xrd.simulate import phases as examples

    out = {}
    for name, kind, _, _ in SIX_PHASES:
        if kind == "nmc811":
            out[name] = make_template("nmc811", name=name, a=2.8650 - 4e-4 * drift, c=14.310 + 6e-4 * drift)
        elif kind in ("li_metal", "al"):
            out[name] = make_template(kind, name=name)
        elif kind == "li2mno3":
            out[name] = examples.li2mno3(name, cell=(4.929, 8.531, 5.025, 90.0, 109.35 + 0.01 * drift, 90.0))
        else:
            out[name] = getattr(examples, kind)(name)
    return out


def _six_phase_frames(members, n_frames: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Poisson patterns of the phases ``members`` on X_SIX over ``n_frames`` drifting frames."""
    from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction

    inst = Instrument(WL, zero_deg=0.002, **SIX_INSTRUMENT)
    data = []
    for i in range(n_frames):
        objs = _six_phase_objects(i)
        states = [PhaseState(objs[n], scale=scale_for_weight_fraction(w, objs[n], 0.5), mustrain=mu)
                  for n, _, w, mu in members]
        comp = calc_pattern(X_SIX, states, inst, background_coeffs=(300.0, -30.0, 20.0))
        y = np.random.default_rng(500 + i).poisson(comp.total).astype(float)
        data.append((y, np.sqrt(np.maximum(y, 1.0)), objs))
    return data


def _six_phase_spec(members, optional_h3: bool = False) -> tuple[RefinementSpec, dict]:
    """Rietveld spec of ``members`` (every free lattice parameter refined; H2 starts 0.1 % off)
    and the example phases given to the Refinement; ``optional_h3``: an optional H3 (nmc811)
    beside them, absent from the data (the sequential chain tests it on every frame)."""
    objs0 = _six_phase_objects(0)
    phases_spec = []
    for n, kind, _, mu in members:
        entry = {"name": n, "refine": list(objs0[n].lattice.free) + ["scale", "mustrain"], "mustrain": mu}
        if kind in ("nmc811", "li_metal", "al"):
            entry["template"] = kind
            entry.update({"a": objs0[n].a * 1.001, "c": objs0[n].c * 0.999} if kind == "nmc811" else {})
        else:
            entry["cif"] = f"{kind}.cif"
        phases_spec.append(entry)
    if optional_h3:
        phases_spec.append({"name": "H3", "template": "nmc811", "a": 2.818, "c": 14.02, "mustrain": 1200.0,
                            "refine": ["a", "c", "scale", "mustrain"], "optional": True})
    spec = RefinementSpec.model_validate({"mode": "rietveld", "range_2theta_deg": [1.2, 11.8],
                                          "background": {"chebyshev": 6},
                                          "profile": {**SIX_INSTRUMENT, "refine": ["zero_deg"]},
                                          "phases": phases_spec})
    given = {n: objs0[n] for n, kind, _, _ in members if kind not in ("nmc811", "li_metal", "al")}
    return spec, given


def six_phase_case(repeats: int, n_frames: int = 6) -> None:
    """Cold and warm-started Rietveld fits of a six-phase pattern holding two low-symmetry phases
    (C2/m and P-1), timed against the one-phase (H2 alone) fit of the same pattern type in the
    same run. The cold fit is timed both as the first fit of a new Refinement (what
    ``insitu-xrd refine`` does: reflection lists, structures, |F|^2 built) and with those cached."""
    cases = {"1 phase": SIX_PHASES[:1], "6 phases": SIX_PHASES}
    print(f"\nsix-phase case: H2 (R-3m) + M (C2/m, Li2MnO3) + T (P-1) + S (Fd-3m) + Li + Al, Rietveld, "
          f"{X_SIX.size} points, every free lattice parameter refined (M: a b c beta, T: a b c alpha beta gamma), "
          f"{n_frames} frames (H2 and M drift); {platform.processor() or platform.machine()}")
    print(f"{'case':9s} {'start':5s} {'median s':>9s} {'ratio':>6s}  accuracy of M, T (max |error|/esd)")
    base: dict[str, float] = {}
    for label, members in cases.items():
        data = _six_phase_frames(members, n_frames)
        spec, given = _six_phase_spec(members)
        times: dict[str, list[float]] = {"first": [], "cold": [], "warm": []}
        worst = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = Refinement(spec, WL, phases=given)
            ref.fit(X_SIX, data[0][0], data[0][1])
            times["first"].append(time.perf_counter() - t0)
            prev = None
            for y, s, objs in data:
                for start in ("cold", "warm"):
                    t0 = time.perf_counter()
                    res = ref.fit(X_SIX, y, s, start=prev if start == "warm" else None)
                    if start == "cold" or prev is not None:
                        times[start].append(time.perf_counter() - t0)
                    if label != "1 phase":
                        for ph, lns in (("M", ("a", "b", "c", "beta")),
                                        ("T", ("a", "b", "c", "alpha", "beta", "gamma"))):
                            for ln in lns:
                                true = objs[ph].cell[("a", "b", "c", "alpha", "beta", "gamma").index(ln)]
                                worst = max(worst, abs(res.values[f"{ph}_{ln}"] - true) / res.esds[f"{ph}_{ln}"])
                    if start == "warm":
                        prev = res
        for start in ("first", "cold", "warm"):
            med = statistics.median(times[start])
            base.setdefault(start, med)
            acc = f"{worst:.1f}" if label != "1 phase" else "-"
            print(f"{label:9s} {start:5s} {med:9.3f} {med / base[start]:6.2f}  {acc}")
    print("first = a new Refinement's first (cold) fit; ratio = median time / median time of the 1-phase fit with "
          "the same start (measured in this run); target (issue 20): 6 phases cold < 3 s, warm < 1 s")


def six_phase_sequential(n_frames: int = 6, repeats: int = 2) -> None:
    """The sequential chain (pipeline/sequential) over the six-phase series, with and without an
    optional H3 that the data do not hold: on every frame the chain tests H3 and its prescreen
    (residual match) rules it out, which must cost about nothing. Printed: seconds per warm frame
    (median over frames 1..N-1; the two chains alternate ``repeats`` times, the least median
    kept: the machine is shared), their ratio, and what the chain noted about H3."""
    from insitu_xrd.pipeline.recipe import SequentialSection
    from insitu_xrd.pipeline.sequential.chain import SequentialRefiner

    data = _six_phase_frames(SIX_PHASES, n_frames)
    print(f"\nsix-phase sequential chain, {n_frames} frames: without / with an optional H3 absent from the data")
    per_frame: dict[str, float] = {}
    notes: dict[str, list[str]] = {}
    labels = (("6 phases", False), ("6 + optional H3", True))
    for _ in range(repeats):
        for label, optional in labels:
            spec, given = _six_phase_spec(SIX_PHASES, optional_h3=optional)
            chain = SequentialRefiner(spec, WL, lambda sp, given=given: Refinement(sp, WL, phases=given),
                                      SequentialSection())
            times = []
            notes[label] = []
            for i, (y, s, _objs) in enumerate(data):
                t0 = time.perf_counter()
                rec = chain.step(i, X_SIX, y, s)
                if i > 0:
                    times.append(time.perf_counter() - t0)
                notes[label] += [n for n in rec.message.split("; ") if "H3" in n]
            per_frame[label] = min(per_frame.get(label, np.inf), statistics.median(times))
    for label, _optional in labels:
        ratio = per_frame[label] / per_frame["6 phases"]
        print(f"{label:16s} warm frame median {per_frame[label]:.3f} s  ratio {ratio:.2f}  "
              f"{notes[label][-1] if notes[label] else ''}")
    print("ratio = seconds per warm frame / those of the chain without the optional phase (this run); "
          "target: ~1 where the prescreen rules the phase out")


def lab_doublet_case(repeats: int, n_frames: int = 6) -> None:
    """Rietveld fits of Cu Ka patterns (H2 + Al) with the Ka doublet, timed against the
    single-wavelength fit of single-wavelength patterns (same grid, profile and phases)."""
    from insitu_xrd.core.crystal import make_template
    from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction

    lam1, lam2, ratio = 1.5406, 1.5444, 0.5
    x = np.arange(15.0, 100.0, 0.02)
    profile = {"U": 3.0, "V": -2.0, "W": 4.0, "X": 0.5, "Y": 3.0}
    print(f"\nlab Ka-doublet case: Cu Ka1/Ka2 ({lam1}/{lam2} A, ratio {ratio}), H2 (nmc811) + Al, Rietveld, "
          f"{x.size} points, {n_frames} frames, {platform.processor() or platform.machine()}")
    print("fit                       start  median_s  ratio  worst |a,c err|/esd")

    def truth_of(i: int) -> dict[str, float]:
        return {"a": 2.8650 - 0.002 * i, "c": 14.310 + 0.004 * i}

    def pattern(i: int, doublet: bool) -> tuple[np.ndarray, np.ndarray]:
        t = truth_of(i)
        h2 = make_template("nmc811", name="H2", **t)
        al = make_template("al", name="Al")
        states = [PhaseState(h2, scale=scale_for_weight_fraction(0.8, h2, 20.0), mustrain=500.0),
                  PhaseState(al, scale=scale_for_weight_fraction(0.2, al, 20.0), mustrain=300.0)]
        k2 = {"kalpha2_wavelength_A": lam2, "kalpha2_ratio": ratio} if doublet else {}
        comp = calc_pattern(x, states, Instrument(lam1, zero_deg=0.01, **profile, **k2), background_coeffs=(200.0, -30.0, 10.0))
        y = np.random.default_rng(700 + i).poisson(comp.total).astype(float)
        return y, np.sqrt(np.maximum(y, 1.0))

    def spec(doublet: bool) -> RefinementSpec:
        prof = {**profile, "refine": ["zero_deg"]}
        if doublet:
            prof["kalpha2"] = {"wavelength_A": lam2, "ratio": ratio}
        t = truth_of(0)
        return RefinementSpec.model_validate({
            "mode": "rietveld", "background": {"chebyshev": 6}, "profile": prof,
            "phases": [{"name": "H2", "template": "nmc811", "a": t["a"] * 1.001, "c": t["c"] * 0.999, "mustrain": 600.0,
                        "refine": ["a", "c", "scale", "mustrain"]},
                       {"name": "Al", "template": "al", "mustrain": 300.0, "refine": ["a", "scale"]}]})

    base: dict[str, float] = {}
    for label, data_doublet, model_doublet in (("single line", False, False), ("Ka doublet", True, True),
                                              ("doublet data, Ka1 model", True, False)):
        data = [pattern(i, data_doublet) for i in range(n_frames)]
        ref = Refinement(spec(model_doublet), lam1)
        ref.fit(x, data[0][0], data[0][1])  # warm up caches
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        worst = 0.0
        for _ in range(repeats):
            prev = None
            for i, (y, s) in enumerate(data):
                for start in ("cold", "warm"):
                    t0 = time.perf_counter()
                    res = ref.fit(x, y, s, start=prev if start == "warm" else None)
                    if start == "cold" or prev is not None:
                        times[start].append(time.perf_counter() - t0)
                    for ln in ("a", "c"):
                        worst = max(worst, abs(res.values[f"H2_{ln}"] - truth_of(i)[ln]) / res.esds[f"H2_{ln}"])
                    if start == "warm":
                        prev = res
        for start in ("cold", "warm"):
            med = statistics.median(times[start])
            base.setdefault(start, med)
            print(f"{label:25s} {start:5s} {med:9.3f} {med / base[start]:6.2f}  {worst:.1f}")
    print("ratio = median time / median time of the single-line fit with the same start (measured in this run)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="number of simulated frames")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats (the minimum median is reported)")
    parser.add_argument("--spread-grid", type=int, default=3,
                        help="n: cold-start spread over n x n start lattices within +/- 2 %% (0 = skip)")
    parser.add_argument("--six-phase-only", action="store_true", help="run only the six-phase (monoclinic) case")
    parser.add_argument("--lab-doublet-only", action="store_true", help="run only the laboratory Ka-doublet case")
    args = parser.parse_args()
    if not (args.six_phase_only or args.lab_doublet_only):
        run(args.frames, args.repeats, args.spread_grid)
    if not args.lab_doublet_only:
        six_phase_case(args.repeats)
        six_phase_sequential()
    if not args.six_phase_only:
        lab_doublet_case(args.repeats)
