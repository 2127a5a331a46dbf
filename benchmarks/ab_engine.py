"""A/B check of two versions of the refinement engine: the same fits, every number compared.

Runs a fixed set of fits (Le Bail and Rietveld; cold starts and warm starts from the previous
result; H2 only, H2 + H3, Li and Al phases, diffuse components, a hump, an optional phase on
probation and one held as not significant, site parameters (NMC aliases, occupancy sums, B groups,
a monoclinic C2/m phase with beta and O1 x/z/B), lmfit constraints, SH/L asymmetry, Le Bail
cycles without the Pawley polish, exclusions, caller-given Parameters) with the code on
PYTHONPATH (side B, this process) and with an old checkout (side A, a subprocess with
``PYTHONPATH=<old>``), and compares every value, esd, chi2, Rwp, gof, the calculated curve,
the correlation matrix and the Le Bail intensities. Patterns come from this checkout's test
helpers (tests/test_fit_engine.py, tests/test_crystallography.py) and the simulator, identical
on both sides; the real Ni patterns of ../shared/data/real are added when that folder exists
beside the checkout.

Run: PYTHONPATH=$PWD python benchmarks/ab_engine.py --old /tmp/engine_old
Prints per fit the largest relative difference (0 = bit-identical) and a summary.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _summary(res) -> dict:
    return dict(
        values=dict(res.values), esds=dict(res.esds), chi2=res.chi2, rwp=res.rwp, rp=res.rp, gof=res.gof,
        dw=res.durbin_watson, nvarys=res.nvarys, esd_factor=res.esd_factor,
        phase_fraction={k: tuple(v) for k, v in res.phase_fraction.items()},
        calc=np.asarray(res.calc).copy(), background=np.asarray(res.background).copy(),
        correlation=np.asarray(res.correlation).copy(), correlation_names=list(res.correlation_names),
        lebail_areas={k: np.asarray(v[1]).copy() for k, v in res.lebail_areas.items()},
        params={n: (p.value, p.vary, p.stderr) for n, p in res.params.items()},
        message=res.message, warnings=list(res.warnings), at_bounds=list(res.at_bounds),
        active=list(res.active_phases),
    )


def run_cases() -> dict[str, dict]:
    sys.path.insert(0, str(TESTS))
    import test_crystallography as tc
    import test_fit_engine as tf

    from insitu_xrd.core.crystal import make_template
    from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern
    from insitu_xrd.fit import Refinement, RefinementSpec
    from insitu_xrd.simulate.pattern1d import CellModel, simulate_pattern_1d

    out: dict[str, dict] = {}

    def chain(tag: str, ref, patterns, phases=None, **kw) -> None:
        prev = None
        for i, (x, y, s) in enumerate(patterns):
            res = ref.fit(x, y, s, start=prev, phases=phases, **kw)
            out[f"{tag}/{'cold' if prev is None else 'warm'}{i}"] = _summary(res)
            prev = res

    for mode in ("rietveld", "lebail"):
        # H2 only: cold, then two warm starts
        chain(f"{mode}/H2", Refinement(tf.make_spec(mode, h3=False), tf.LAM),
              [tf.simulate(s, h3_fraction=0.0) for s in (0, 1, 2)])
        # H2 + H3
        chain(f"{mode}/H2H3", Refinement(tf.make_spec(mode), tf.LAM),
              [tf.simulate(s) for s in (3, 4, 5)], phases=["H2", "H3"])
        # H2 + H3 + Li + diffuse
        chain(f"{mode}/H2H3Li_diffuse", Refinement(tf.make_spec(mode, li=True, diffuse=True), tf.LAM),
              [tf.simulate(s, li=True, diffuse=True) for s in (6, 7)], phases=["H2", "H3", "Li"])
        # simulator: H2 + H3 + Li + Al, hump, diffuse, size
        x = np.linspace(1.0, 12.0, 2750)
        sims = [simulate_pattern_1d(xl, x, seed=sd, cell=CellModel(peak_counts=60000.0))
                for xl, sd in ((0.25, 0), (0.24, 1))]
        chain(f"{mode}/simulator", Refinement(tf._simulator_spec(mode, sims[0].truth), tf.LAM),
              [(x, s.observed, s.sigma) for s in sims])
        # optional H3 on a pure-H2 pattern: probation and the not-significant hold
        ref = Refinement(tf.make_spec(mode, start_error=0.001), tf.LAM)
        xx, yy, ss = tf.simulate(4, h3_fraction=0.0)
        out[f"{mode}/absent_H3/cold"] = _summary(ref.fit(xx, yy, ss, phases=["H2", "H3"]))
        out[f"{mode}/absent_H3/default"] = _summary(ref.fit(xx, yy, ss))
        # a newly activated phase in a warm start (probation)
        ref = Refinement(tf.make_spec(mode), tf.LAM)
        xa, ya, sa = tf.simulate(8)
        h2only = ref.fit(xa, ya, sa, phases=["H2"])
        out[f"{mode}/probation/cold"] = _summary(h2only)
        out[f"{mode}/probation/warm"] = _summary(ref.fit(xa, ya, sa, start=h2only, phases=["H2", "H3"]))
        # tie between phases
        chain(f"{mode}/constraint", Refinement(tf.make_spec(mode, constraints={"H3_mustrain": "H2_mustrain"}), tf.LAM),
              [tf.simulate(s, h3_fraction=0.4) for s in (9, 10)], phases=["H2", "H3"])
        # exclusions, no esd correction
        chain(f"{mode}/exclude", Refinement(tf.make_spec(mode, start_error=0.001, diffuse=True, h3=False,
                                                         exclude_2theta_deg=[[6.0, 6.2]], esd_correction="none"), tf.LAM),
              [tf.simulate(s, h3_fraction=0.0, diffuse=True) for s in (11, 12)])
        # monoclinic C2/m: beta and O1 x, z, B
        truth = tc.li2mno3()
        pats = [tc.pattern(truth, s) for s in (3, 4)]
        spec = tc.spec_for(truth, ["a", "b", "c", "beta"], tc.off(truth.cell), mode=mode,
                           sites={"O1": {"refine": ["x", "z", "biso_A2"]}} if mode == "rietveld" else None)
        chain(f"{mode}/monoclinic", Refinement(spec, tc.LAM, phases={"M": truth}), pats)
    # SH/L asymmetry (FCJ profiles)
    x = np.linspace(1.2, 11.8, 2750)
    h2 = make_template("nmc811", name="H2", a=tf.TRUTH["H2_a"], c=tf.TRUTH["H2_c"])
    rng = np.random.default_rng(13)
    comp = calc_pattern(x, [PhaseState(h2, scale=2e5, mustrain=900.0)],
                        Instrument(tf.LAM, zero_deg=0.002, sh_l=0.02, **tf.PROFILE), background_coeffs=(400.0, -50.0, 30.0))
    y = rng.poisson(comp.total).astype(float)
    for mode in ("rietveld", "lebail"):
        spec = tf.make_spec(mode, start_error=0.001, h3=False)
        spec.profile.refine = ["W", "X", "zero_deg", "sh_l"]
        chain(f"{mode}/sh_l", Refinement(spec, tf.LAM), [(x, y, np.sqrt(np.maximum(y, 1.0)))] * 2)
    # Le Bail cycles without the Pawley polish; no phase-fraction step
    spec = tf.make_spec("lebail", pawley_polish=False)
    chain("lebail/cycles", Refinement(spec, tf.LAM), [tf.simulate(s) for s in (14, 15)], phases=["H2", "H3"])
    spec = tf.make_spec("lebail", h3=False, phase_fraction_step=False)
    chain("lebail/no_fraction_step", Refinement(spec, tf.LAM), [tf.simulate(16, h3_fraction=0.0)])
    # NMC site parameters: aliases; occupancy sum + B group
    truth_nmc = make_template("nmc811", name="H2", a=2.867, c=14.25, ni_li_mixing=0.05, biso_tm_A2=0.5, biso_o_A2=0.5)
    pats = [tc.pattern(truth_nmc, s, two_theta=(1.2, 11.8), npts=2750, mustrain=900.0, counts=1.0) for s in (5, 6)]
    spec = RefinementSpec(mode="rietveld", background={"chebyshev": 6}, profile=dict(**tc.PROFILE), phases=[dict(
        name="H2", template="nmc811", a=2.867, c=14.25, refine=["a", "c", "scale", "mustrain"], mustrain=900.0,
        occupancy_sums=[{"terms": ["Li:Ni", "Li:Li"], "total": 1.0}], biso_groups=[["TM", "O"]])])
    chain("rietveld/occ_sum_biso_group", Refinement(spec, tc.LAM), pats)
    spec = RefinementSpec(mode="rietveld", background={"chebyshev": 6}, profile=dict(**tc.PROFILE), phases=[dict(
        name="H2", template="nmc811", a=2.867, c=14.25, mustrain=900.0,
        refine=["a", "c", "scale", "mustrain", "o_z", "ni_li_mixing", "biso_o_A2"])])
    chain("rietveld/nmc_aliases", Refinement(spec, tc.LAM), pats)
    # triclinic: all six lattice parameters and a site
    tri = tc.triclinic()
    pats = [tc.pattern(tri, 21)]
    spec = tc.spec_for(tri, ["a", "b", "c", "alpha", "beta", "gamma"], tc.off(tri.cell), sites={"Mn": {"refine": ["x"]}})
    chain("rietveld/triclinic", Refinement(spec, tc.LAM, phases={"T": tri}), pats)
    # the caller's Parameters (bounds, a fixed value)
    ref = Refinement(tf.make_spec("rietveld"), tf.LAM)
    pars = ref.initial_params(["H2", "H3"])
    pars["H3_mustrain"].set(value=1100.0, vary=False)
    pars["H2_a"].set(min=2.86, max=2.87)
    xx, yy, ss = tf.simulate(17)
    out["rietveld/given_params/cold"] = _summary(ref.fit(xx, yy, ss, phases=["H2", "H3"], params=pars))
    # real Ni patterns (../shared/data/real beside the project, when present): Le Bail and
    # Rietveld, cold and warm
    real = TESTS.parents[1] / "shared" / "data" / "real"
    if real.is_dir():
        import test_real_ni as tn

        from insitu_xrd.io.pattern_files import read_pattern_1d

        for chi, poni, rng_deg in (("Ni_chi_file.chi", None, (3.0, 30.0)), ("Ni.chi", "Ni_calib.poni", (3.0, 40.0))):
            wl = tn._poni_wavelength_A(real / poni) if poni else None
            pat = read_pattern_1d(real / chi, wavelength_A=wl)
            for mode in ("lebail", "rietveld"):
                spec = tn._lebail_spec(rng_deg)
                spec.mode = mode
                chain(f"{mode}/real_{chi}", Refinement(spec, pat.wavelength_A),
                      [(pat.two_theta_deg, pat.intensity, pat.sigma)] * 2)
    return out


def _rel(a, b) -> float:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return np.inf
    both_nan = np.isnan(a) & np.isnan(b)
    if np.any(np.isnan(a) != np.isnan(b)):
        return np.inf
    a, b = a[~both_nan], b[~both_nan]
    if not a.size:
        return 0.0
    if np.array_equal(a, b):
        return 0.0
    den = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(den > 0, np.abs(a - b) / den, 0.0)
    d = np.where(np.isinf(a) & (a == b), 0.0, d)
    return float(np.max(d))


def compare(old: dict, new: dict) -> tuple[float, list[str]]:
    worst = 0.0
    notes = []
    for key in ("chi2", "rwp", "rp", "gof", "dw", "nvarys", "esd_factor", "calc", "background", "correlation"):
        d = _rel(old[key], new[key])
        if d:
            notes.append(f"{key} {d:.3g}")
        worst = max(worst, d)
    for key in ("values", "esds"):
        if list(old[key]) != list(new[key]):
            notes.append(f"{key}: names differ")
            worst = np.inf
            continue
        for n in old[key]:
            d = _rel(old[key][n], new[key][n])
            if d:
                notes.append(f"{key}[{n}] {d:.3g}")
            worst = max(worst, d)
    for n in old["phase_fraction"]:
        d = _rel(old["phase_fraction"][n], new["phase_fraction"].get(n, (np.nan, np.nan)))
        worst = max(worst, d)
    if list(old["lebail_areas"]) != list(new["lebail_areas"]):
        worst = np.inf
        notes.append("lebail phases differ")
    for n in old["lebail_areas"]:
        worst = max(worst, _rel(old["lebail_areas"][n], new["lebail_areas"].get(n, [])))
    for n, (v, vary, e) in old["params"].items():
        v2, vary2, e2 = new["params"][n]
        worst = max(worst, _rel(v, v2), _rel(np.nan if e is None else e, np.nan if e2 is None else e2))
        if vary != vary2:
            worst = np.inf
            notes.append(f"vary {n}")
    for key in ("message", "warnings", "at_bounds", "active", "correlation_names"):
        if old[key] != new[key]:
            notes.append(f"{key} differs")
            worst = np.inf
    return worst, notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="checkout of the old engine (side A, run in a subprocess)")
    ap.add_argument("--dump", help="internal: run the cases here and pickle the summaries to this file")
    args = ap.parse_args()
    if args.dump:
        t0 = time.perf_counter()
        res = run_cases()
        with open(args.dump, "wb") as fh:
            pickle.dump((res, time.perf_counter() - t0), fh)
        return
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "old.pkl")
        env = dict(os.environ, PYTHONPATH=str(Path(args.old).resolve()))
        subprocess.run([sys.executable, __file__, "--dump", dump], env=env, check=True)
        with open(dump, "rb") as fh:
            old, t_old = pickle.load(fh)
    import insitu_xrd

    t0 = time.perf_counter()
    new = run_cases()
    t_new = time.perf_counter() - t0
    print(f"A: {Path(args.old).resolve()}  B: {Path(insitu_xrd.__file__).parents[1]}")
    assert list(old) == list(new)
    identical = 0
    worst_all = 0.0
    for name in old:
        worst, notes = compare(old[name], new[name])
        identical += worst == 0.0
        worst_all = max(worst_all, worst)
        print(f"{name:45s} max rel diff {worst:.3g}  {'; '.join(notes[:4])}")
    print(f"{len(old)} fits: {identical} bit-identical, largest relative difference {worst_all:.3g}; "
          f"time A {t_old:.1f} s, B {t_new:.1f} s")


if __name__ == "__main__":
    main()
