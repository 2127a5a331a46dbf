"""insitu-xrd against GSAS-II on the laboratory Cu Ka Bragg-Brentano scenario (issue 18).

Not part of the test suite: it needs GSAS-II, which is not on PyPI (build it from source, see
../shared/README.md, "A reference to compare against"). Run it with the project's Python and
GSAS-II's site-packages appended to the path (GSAS-II needs only numpy, scipy and PyCifRW):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/compare_gsas2_lab.py \
        --gsas2-site /work/g2/g2venv/lib/python3.11/site-packages [--data DIR] [--scan 0]

What it does, on one scan of `insitu-xrd simulate DIR --lab-cu` (simulated into --work when
--data is not given):

1. Fits: ``insitu-xrd refine`` with the dataset's recipe, and GSAS-II (GSASIIscriptable) with the
   same .instprm, the phases written as CIFs from the simulator's true structures, Chebyshev
   background (6 terms), Bragg-Brentano Shift, March-Dollase about 001, isotropic microstrain
   and size of the cathode, a, c of the cathode and Be, phase fractions: the same refined set.
   Table: Rwp, a, c (against the truth and each other, in esds), md_ratio, weight fractions,
   microstrain, size, displacement.
2. Calculated curves at the TRUE parameters, per phase (no background): our `calc_pattern`
   curve is given to GSAS-II as noise-free data with unit weights and GSAS-II refines only its
   histogram scale, so its calculated curve is its own model at the true parameters. Per peak
   region (Ka1 to Ka2 +/- 2 FWHM, overlapping regions merged) the maximum |GSAS-II - ours|
   relative to the region's maximum, and the integrated ratio: GSAS-II as it is (Cromer-Liberman
   f', f''; insitu-xrd: Chantler's), both at SH/L 0.002 (GSAS-II's FCJ quadrature is coarse at
   larger SH/L, part 3), and GSAS-II with f' = f'' = 0 (what insitu-xrd computed before it had
   resonant scattering).
3. One FCJ peak: GSAS-II's getFCJVoigt3, insitu-xrd's fcj_pseudo_voigt and a brute-force
   integral of the same FCJ formula.

Exits with status 2 and a one-line message when GSAS-II cannot be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

#: GSAS-II holds a size at 10 um at most: phases without size broadening (Al, Be) get it in both models
G2_MAX_SIZE_UM = 10.0
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def import_gsas2(site: str | None):
    """GSASIIscriptable, or exit(2) with what to do."""
    if site:
        sys.path.append(site)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from GSASII import GSASIIscriptable as g2sc  # noqa: PLC0415
            from GSASII import GSASIIElem as g2el  # noqa: PLC0415
            from GSASII import GSASIIpath  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a GSAS-II build without its binaries
        print(f"compare_gsas2_lab: GSAS-II is not importable ({exc!r}); build it as in ../shared/README.md and "
              "pass --gsas2-site <its site-packages> (or GSAS2_SITE)", file=sys.stderr)
        sys.exit(2)
    return g2sc, g2el, GSASIIpath


# ----- the truth and the CIFs --------------------------------------------------------------------

def truth_states(data: Path, scan: int):
    """(truth dict, frame dict, 2theta grid, the simulator's PhaseStates, its Instrument) of one scan."""
    from insitu_xrd.simulate.lab_dataset import LabSpec, lab_instrument, lab_pattern

    truth = json.loads((data / "truth.json").read_text())
    frame = truth["frames"][scan]
    inst = truth["instrument"]
    spec = LabSpec(patterns=len(truth["frames"]), seed=truth["seed"], texture_ratio=truth["texture_ratio"],
                   displacement_um=inst["displacement_um"], polarization=inst["polarization"],
                   goniometer_radius_mm=inst["goniometer_radius_mm"], sh_l=inst["sh_l"])
    tth, _, states = lab_pattern(spec, frame["x_li"], k=truth["rendering"]["intensity_k"])
    for s in states:  # the states must be the scan's truth
        want = frame["phases"][s.name]
        assert abs(s.phase.a - want["a_A"]) < 1e-9 and abs(s.scale - want["scale"]) < 1e-12 * max(1.0, want["scale"]), s.name
    return truth, frame, tth, states, lab_instrument(spec)


def write_cif(phase, path: Path) -> None:
    """A CIF of a `Phase` (asymmetric unit; mixed sites as one row per element; U = B / 8 pi^2)."""
    a, b, c, al, be, ga = phase.cell
    hm = phase.spacegroup.hm.replace(":H", "")
    rows = []
    for site in phase.sites:
        for el, occ in site.occupancy.items():
            if occ > 0:
                x, y, z = site.xyz
                rows.append(f"{site.label}_{el} {el} {x:.6f} {y:.6f} {z:.6f} {occ:.6f} "
                            f"{site.biso_A2 / (8 * math.pi ** 2):.8f}")
    path.write_text("\n".join([
        f"data_{phase.name}", f"_symmetry_space_group_name_H-M '{hm}'",
        f"_cell_length_a {a:.6f}", f"_cell_length_b {b:.6f}", f"_cell_length_c {c:.6f}",
        f"_cell_angle_alpha {al:.4f}", f"_cell_angle_beta {be:.4f}", f"_cell_angle_gamma {ga:.4f}",
        "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
        "_atom_site_fract_z", "_atom_site_occupancy", "_atom_site_U_iso_or_equiv", *rows, ""]))


# ----- insitu-xrd ----------------------------------------------------------------------------------

def fit_insitu(data: Path, scan_file: str, work: Path) -> dict:
    """`insitu-xrd refine` of one scan with the dataset's recipe: values, esds, Rwp."""
    import xarray as xr

    out = work / "insitu_fit.nc"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "from insitu_xrd.cli.main import app; app()", "refine", scan_file,
           "--recipe", "recipe.yaml", "-o", str(out)]
    subprocess.run(cmd, cwd=data, env=env, check=True, capture_output=True, text=True)
    with xr.open_dataset(out) as ds:
        vals = dict(zip(ds["param"].values.tolist(), ds["param_value"].values.tolist()))
        esds = dict(zip(ds["param"].values.tolist(), ds["param_value_esd"].values.tolist()))
        phases = ds["phase"].values.tolist()
        wf = ds["phase_fraction"].values[0]
        wf_esd = ds["phase_fraction_esd"].values[0]
        res = {"rwp": float(ds.attrs["rwp"]), "gof": float(ds.attrs["gof"]), "values": vals, "esds": esds,
               "weight_fraction": {p: (float(wf[i]), float(wf_esd[i])) for i, p in enumerate(phases) if np.isfinite(wf[i])}}
    return res


# ----- GSAS-II --------------------------------------------------------------------------------------

def _quiet(fn, *args, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def g2_project(g2sc, gpx_path: Path, data_file: Path, instprm: Path, cifs: dict[str, Path], states: dict,
               limits: tuple[float, float]):
    """A GSAS-II project: the histogram (Bragg-Brentano, 240 mm) and the phases, HAP values from
    ``states`` (truth: mustrain, size, texture). A phase without size broadening gets GSAS-II's
    largest size, 10 um."""
    gpx = _quiet(g2sc.G2Project, newgpx=str(gpx_path))
    hist = _quiet(gpx.add_powder_histogram, str(data_file), str(instprm), fmthint="xye")
    phases = {}
    for name, cif in cifs.items():
        phases[name] = _quiet(gpx.add_phase, str(cif), phasename=name, histograms=[hist], fmthint="CIF")
    hist.set_refinements({"Limits": list(limits)})
    sample = hist.data["Sample Parameters"]
    sample["Type"] = "Bragg-Brentano"
    sample["Gonio. radius"] = 240.0
    sample["Shift"] = [0.0, False]
    sample["Transparency"] = [0.0, False]
    sample["Scale"] = [1.0, False]
    for name, ph in phases.items():
        hap = ph.data["Histograms"][hist.name]
        st = states[name]
        hap["Scale"] = [1.0, False]
        hap["Mustrain"][1][0] = float(st.mustrain)
        size = min(float(st.size_um), G2_MAX_SIZE_UM)  # GSAS-II's default is 1 um
        hap["Size"][1][0] = size
        if st.md_ratio is not None:
            hap["Pref.Ori."][0] = "MD"
            hap["Pref.Ori."][1] = float(st.md_ratio)
            hap["Pref.Ori."][3] = list(st.md_axis)
    return gpx, hist, phases


def g2_sig(gpx) -> dict:
    cov = gpx["Covariance"]["data"]
    return dict(zip(cov["varyList"], cov["sig"]))


def g2_weight_fractions(lst: Path) -> dict:
    """Weight fractions and their esds from the .lst (GSAS-II prints them per phase)."""
    text = lst.read_text(errors="replace")
    out = {}
    for m in re.finditer(r"Phase: (\S+) in histogram.*?Weight fraction\s*:\s*([-\d.eE+]+), sig\s*([-\d.eE+]+)", text, re.S):
        out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def fit_gsas2(g2sc, data: Path, scan_file: str, work: Path, cifs: dict, states: dict, recipe: dict, tag: str) -> dict:
    """GSAS-II Rietveld fit of the scan with the insitu-xrd recipe's refined set and starts, in
    stages (GSAS-II diverges when everything is freed at once from a flat start): background and
    histogram scale; + cells; + Shift; + phase fractions, microstrain, size, March-Dollase."""
    ref = recipe["refinement"]
    starts = {p["name"]: p for p in ref["phases"]}
    gpx, hist, phases = g2_project(g2sc, work / f"g2_fit_{tag}.gpx", data / scan_file,
                                   data / ref["profile"]["instrument"], cifs, states, tuple(ref["range_2theta_deg"]))
    for name, ph in phases.items():  # the recipe's starts (the CIFs hold the truth's cell)
        cell = ph.data["General"]["Cell"]
        st = starts[name]
        if "a" in st:
            cell[1] = cell[2] = float(st["a"])
        if "c" in st:
            cell[3] = float(st["c"])
        hap = ph.data["Histograms"][hist.name]
        hap["Mustrain"][1][0] = float(st.get("mustrain", 1000.0))
        if "size_um" in st.get("refine", []):
            hap["Size"][1][0] = 1.0
        if "md_ratio" in st.get("refine", []):
            hap["Pref.Ori."][1] = 1.0
    gpx.set_Controls("cycles", 20)
    cells = [n for n in phases if {"a", "c"} & set(starts[n].get("refine", []))]
    _quiet(gpx.do_refinements, [
        {"set": {"Background": {"type": "chebyschev-1", "no. coeffs": ref["background"]["chebyshev"], "refine": True},
                 "Sample Parameters": ["Scale"]}},
        {"set": {"Cell": True}, "phases": cells},
        {"set": {"Sample Parameters": ["Shift"]}},
    ])
    for name, ph in phases.items():
        refine = starts[name].get("refine", [])
        hap_ref = {"Scale": name != "H2"}  # the histogram scale and two phase fractions = three scales
        if "mustrain" in refine:
            hap_ref["Mustrain"] = {"type": "isotropic", "refine": True}
        if "size_um" in refine:
            hap_ref["Size"] = {"type": "isotropic", "refine": True}
        if "md_ratio" in refine:
            hap_ref["Pref.Ori."] = True
        ph.set_HAP_refinements(hap_ref, histograms=[hist])
    _quiet(gpx.do_refinements, [{}])
    sig = g2_sig(gpx)
    out = {"rwp": hist.get_wR() / 100.0, "gof": float(gpx["Covariance"]["data"]["Rvals"]["GOF"]),
           "weight_fraction": g2_weight_fractions(work / f"g2_fit_{tag}.lst"), "values": {}, "esds": {}}
    for name, ph in phases.items():
        cell, esd = ph.get_cell_and_esd()[:2]
        pid = ph.id
        hap = ph.data["Histograms"][hist.name]
        out["values"].update({f"{name}_a": float(cell["length_a"]), f"{name}_c": float(cell["length_c"])})
        out["esds"].update({f"{name}_a": float(esd["length_a"]), f"{name}_c": float(esd["length_c"])})
        for key, val, var in (("mustrain", hap["Mustrain"][1][0], f"{pid}:0:Mustrain;i"),
                              ("size_um", hap["Size"][1][0], f"{pid}:0:Size;i"),
                              ("md_ratio", hap["Pref.Ori."][1], f"{pid}:0:MD")):
            out["values"][f"{name}_{key}"] = float(val)
            out["esds"][f"{name}_{key}"] = float(sig.get(var, np.nan))
    out["values"]["displacement_um"] = float(hist.data["Sample Parameters"]["Shift"][0])
    out["esds"]["displacement_um"] = float(sig.get(":0:Shift", np.nan))
    return out


@contextlib.contextmanager
def resonant_scattering(g2el, on: bool):
    """GSAS-II with its f', f'' (on) or with f' = f'' = 0 (insitu-xrd's structure factors)."""
    fpcalc = g2el.FPcalc
    if not on:
        g2el.FPcalc = lambda orbs, kev: (0.0, 0.0, fpcalc(orbs, kev)[2])
    try:
        yield
    finally:
        g2el.FPcalc = fpcalc


def calc_gsas2_at_truth(g2sc, work: Path, instprm: Path, name: str, cif: Path, state, tth: np.ndarray,
                        y: np.ndarray, tag: str) -> tuple[np.ndarray, float]:
    """GSAS-II's curve of one phase at the true parameters: ``y`` (our curve) is its data with unit
    weights, and only the histogram scale is refined (linear). Returns (curve, scale)."""
    data_file = work / f"truth_{name}_{tag}.xye"
    np.savetxt(data_file, np.column_stack([tth, y, np.ones_like(y)]), fmt="%.6f %.8e %.1f")
    gpx, hist, phases = g2_project(g2sc, work / f"truth_{name}_{tag}.gpx", data_file, instprm, {name: cif},
                                   {name: state}, (float(tth[0]), float(tth[-1])))
    hist.set_refinements({"Background": {"type": "chebyschev-1", "no. coeffs": 1, "refine": False}})
    hist.data["Background"][0][3] = 0.0
    hist.data["Sample Parameters"]["Shift"] = [30.0, False]
    hist.data["Sample Parameters"]["Scale"] = [1.0, True]
    gpx.set_Controls("cycles", 5)
    _quiet(gpx.refine)
    return np.asarray(hist.getdata("ycalc"), dtype=float), float(hist.data["Sample Parameters"]["Scale"][0])


def fcj_reference(x: np.ndarray, tth: float, fwhm: float, eta: float, sh_l: float, n: int = 20000) -> np.ndarray:
    """The FCJ (1994) profile with S/L = H/L = SH/L / 2 integrated by brute force: W/(h cos 2phi)
    times the pseudo-Voigt at 2phi, over 2phi_min..2theta, with 2phi = 2theta - D t^2 (midpoint rule
    in t, n nodes), which removes the (2theta - 2phi)^-1/2 singularity. Area 1."""
    from insitu_xrd.core.profiles import pseudo_voigt

    t2 = math.radians(tth)
    d_ext = t2 - math.acos(math.sqrt(1.0 + sh_l ** 2) * math.cos(t2))
    t = (np.arange(n) + 0.5) / n
    phi2 = t2 - d_ext * t * t
    h = np.sqrt(np.maximum(np.cos(phi2) ** 2 / math.cos(t2) ** 2 - 1.0, 1e-300))  # h/L
    g = np.maximum(sh_l - h, 0.0) / (h * np.cos(phi2)) * 2.0 * d_ext * t
    return (g[None, :] * pseudo_voigt(x[:, None], np.degrees(phi2)[None, :], fwhm, eta)).sum(axis=1) / g.sum()


def fcj_check(inst) -> list[dict]:
    """GSAS-II's getFCJVoigt3 and insitu-xrd's fcj_pseudo_voigt against `fcj_reference`."""
    from GSASII import GSASIIpwd as g2pwd

    from insitu_xrd.core.profiles import (EIGHT_LN2, fcj_pseudo_voigt, gaussian_variance_centideg2,
                                          lorentzian_fwhm_centideg, tch_fwhm_eta)

    out = []
    for tth in (18.7, 38.5, 65.1):
        sig = float(gaussian_variance_centideg2(tth, inst.U, inst.V, inst.W))
        gam = float(lorentzian_fwhm_centideg(tth, inst.X, inst.Y))
        fwhm, eta = (float(v) for v in tch_fwhm_eta(math.sqrt(EIGHT_LN2 * sig) / 100.0, gam / 100.0))
        x = np.arange(tth - 1.0, tth + 1.0, 0.001)
        for sh_l in (0.002, 0.01, 0.02):
            ref = fcj_reference(x, tth, fwhm, eta, sh_l)
            ours = fcj_pseudo_voigt(x, tth, fwhm, eta, sh_l)
            g2 = 100.0 * g2pwd.getFCJVoigt3(tth, sig, gam, sh_l, x)[0]  # per centideg -> per deg
            cen = lambda y: 1e3 * (float(np.sum(x * y) / np.sum(y)) - tth)  # noqa: E731
            out.append({"two_theta": tth, "sh_l": sh_l, "centroid_exact_mdeg": cen(ref), "centroid_ours_mdeg": cen(ours),
                        "centroid_g2_mdeg": cen(g2), "ours_max_rel": float(np.abs(ours - ref).max() / ref.max()),
                        "g2_max_rel": float(np.abs(g2 - ref).max() / ref.max())})
    return out


def peak_regions(table, tth: np.ndarray) -> list[tuple[str, float, float]]:
    """(label, lo, hi) of the peak regions of a phase: each reflection's Ka1..Ka2 span +/- 2 FWHM,
    reflections whose regions overlap merged."""
    regions = []
    for hkl, pos, fwhm in zip(table.hkl, table.two_theta_deg, table.fwhm_deg):
        lo, hi = pos - 2.0 * fwhm, pos + 2.0 * fwhm + 0.0025 * math.degrees(math.tan(math.radians(pos / 2.0))) * 2.0
        if hi < tth[0] or lo > tth[-1]:
            continue
        label = "".join(str(int(v)) for v in hkl) if all(abs(v) < 10 for v in hkl) else " ".join(map(str, map(int, hkl)))
        if regions and lo <= regions[-1][2]:
            regions[-1] = (regions[-1][0] + "+" + label, regions[-1][1], max(hi, regions[-1][2]))
        else:
            regions.append((label, lo, hi))
    return regions


def compare_curves(ours: np.ndarray, theirs: np.ndarray, tth: np.ndarray, table) -> list[dict]:
    out = []
    for label, lo, hi in peak_regions(table, tth):
        m = (tth >= lo) & (tth <= hi)
        if m.sum() < 3 or ours[m].max() <= 0:
            continue
        peak = ours[m].max()
        out.append({"peak": label, "two_theta": float(tth[m][np.argmax(ours[m])]),
                    "max_rel_diff": float(np.max(np.abs(theirs[m] - ours[m])) / peak),
                    "area_ratio": float(theirs[m].sum() / ours[m].sum()), "height": float(peak)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="a `insitu-xrd simulate --lab-cu` folder (default: simulate 3 scans into --work)")
    ap.add_argument("--scan", type=int, default=0)
    ap.add_argument("--sh-l", type=float, default=0.02,
                    help="SH/L of the simulated scans when --data is not given (0.002: GSAS-II's FCJ quadrature is then exact)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--gsas2-site", default=os.environ.get("GSAS2_SITE"), help="GSAS-II's site-packages, appended to sys.path")
    ap.add_argument("--json", type=Path, help="write every number measured here")
    args = ap.parse_args(argv)
    g2sc, g2el, g2path = import_gsas2(args.gsas2_site)

    import yaml

    from insitu_xrd.core.pattern import calc_pattern, peak_table

    work = args.work or Path(tempfile.mkdtemp(prefix="g2lab_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from insitu_xrd.simulate.lab_dataset import simulate_lab_dataset
        data = work / "lab"
        simulate_lab_dataset(data, patterns=3, seed=0, sh_l=args.sh_l)
    truth, frame, tth, states, inst = truth_states(data, args.scan)
    by_name = {s.name: s for s in states}
    cifs = {}
    for s in states:
        cifs[s.name] = work / f"{s.name}.cif"
        write_cif(s.phase, cifs[s.name])
    recipe = yaml.safe_load((data / "recipe.yaml").read_text())
    report: dict = {"gsas2_version": g2path.GetVersionNumber(), "scan": frame["file"], "truth": frame["phases"]}

    # 1. the fits: insitu-xrd; GSAS-II as it is (f', f'' at Cu Ka1) and with f' = f'' = 0
    fits = {"insitu-xrd": fit_insitu(data, frame["file"], work)}
    for tag, on in (("GSAS-II", True), ("GSAS-II f'=0", False)):
        with resonant_scattering(g2el, on):
            fits[tag] = fit_gsas2(g2sc, data, frame["file"], work, cifs, by_name, recipe, "fp" if on else "nofp")
    report["fit"] = fits
    t = frame["phases"]
    true_vals = {"H2_a": t["H2"]["a_A"], "H2_c": t["H2"]["c_A"], "Be_a": t["Be"]["a_A"], "Be_c": t["Be"]["c_A"],
                 "H2_md_ratio": t["H2"]["md_ratio"], "H2_mustrain": t["H2"]["mustrain"],
                 "H2_size_um": float(by_name["H2"].size_um), "displacement_um": truth["instrument"]["displacement_um"]}
    for name in ("H2", "Al", "Be"):
        true_vals[f"{name}_weight_fraction"] = t[name]["weight_fraction"]
        for res in fits.values():
            res["values"][f"{name}_weight_fraction"], res["esds"][f"{name}_weight_fraction"] = \
                res["weight_fraction"].get(name, (np.nan, np.nan))
    print(f"GSAS-II {report['gsas2_version']}; {data / frame['file']}; value +/- esd (deviation from the truth in esd)")
    print(f"{'quantity':22s} {'truth':>10s}" + "".join(f" {k:>27s}" for k in fits))
    print(f"{'Rwp %':22s} {'':>10s}" + "".join(f" {100 * r['rwp']:27.3f}" for r in fits.values()))
    print(f"{'GoF':22s} {'':>10s}" + "".join(f" {r['gof']:27.3f}" for r in fits.values()))
    rows = []
    for key, tv in true_vals.items():
        row = {"quantity": key, "truth": tv}
        cells = []
        for tag, res in fits.items():
            v, e = res["values"][key], res["esds"][key]
            row[tag] = (v, e, (v - tv) / e if e > 0 else np.nan)
            cells.append(f"{v:11.6g} +/- {e:<7.2g}({row[tag][2]:+5.1f})")
        ov, oe = fits["insitu-xrd"]["values"][key], fits["insitu-xrd"]["esds"][key]
        gv, ge = fits["GSAS-II"]["values"][key], fits["GSAS-II"]["esds"][key]
        row["ours_minus_g2_esd"] = (ov - gv) / math.hypot(oe, ge)
        rows.append(row)
        print(f"{key:22s} {tv:10.6g} " + " ".join(cells) + f"  ours-G2 {row['ours_minus_g2_esd']:+.1f} esd")
    report["table"] = rows

    # 2. the calculated curves at the true parameters, per phase: GSAS-II as it is; with both models at
    # SH/L = 0.002 (GSAS-II's smallest), which takes the FCJ quadrature out; and GSAS-II with f' = f'' = 0
    instprm = data / recipe["refinement"]["profile"]["instrument"]
    report["curves"] = {}
    variants = [(f"G2 as is (f', f''), SH/L {inst.sh_l:g}", True, None)]
    if inst.sh_l != 0.002:
        variants.append(("G2 as is (f', f''), SH/L 0.002 in both", True, 0.002))
    variants.append(("G2 f'=f''=0, SH/L 0.002 in both", False, 0.002))
    for tag, on, sh_l in variants:
        inst_v, instprm_v = inst, instprm
        if sh_l is not None:
            inst_v = replace(inst, sh_l=sh_l)
            instprm_v = work / "shl.instprm"
            instprm_v.write_text(re.sub(r"SH/L:[^\n]*", f"SH/L:{sh_l}", instprm.read_text()))
        with resonant_scattering(g2el, on):
            for s in states:
                s_true = replace(s, size_um=min(s.size_um, G2_MAX_SIZE_UM))
                mine = calc_pattern(tth, [s_true], inst_v, (), (tth[0], tth[-1])).phases[s.name]
                table = peak_table(s_true, inst_v, (float(tth[0]), float(tth[-1])))
                g2curve, scale = calc_gsas2_at_truth(g2sc, work, instprm_v, s.name, cifs[s.name], s_true, tth, mine,
                                                     f"v{len(report['curves'])}")
                report["curves"].setdefault(tag, {})[s.name] = {"g2_scale": scale,
                                                                "regions": compare_curves(mine, g2curve, tth, table)}
    for tag, per_phase in report["curves"].items():
        print(f"\ncalculated curves at the truth, {tag} (one scale per phase): max |G2 - ours| / region peak, "
              "area ratio G2/ours")
        for name, res in per_phase.items():
            worst = sorted(res["regions"], key=lambda r: -r["max_rel_diff"])[:3]
            allmax = max(r["max_rel_diff"] for r in res["regions"])
            area = [r["area_ratio"] for r in res["regions"]]
            print(f"  {name:3s} {len(res['regions']):2d} regions: max {100 * allmax:5.2f} %, area ratio "
                  f"{min(area):.4f}..{max(area):.4f}; worst: " +
                  ", ".join(f"{r['peak']}@{r['two_theta']:.1f} {100 * r['max_rel_diff']:.2f}% ({r['area_ratio']:.4f})"
                            for r in worst))

    # 3. one FCJ peak: GSAS-II's quadrature, ours, and a converged brute-force integral of the same formula
    report["fcj"] = fcj_check(inst)
    print("\nFCJ asymmetry, one peak (U..Y of the .instprm): centroid shift (mdeg) and max |diff| / peak vs the "
          "converged integral")
    for r in report["fcj"]:
        print(f"  2theta {r['two_theta']:5.1f} SH/L {r['sh_l']:.3f}: converged {r['centroid_exact_mdeg']:6.2f}, "
              f"insitu-xrd {r['centroid_ours_mdeg']:6.2f} ({100 * r['ours_max_rel']:.2f} %), "
              f"GSAS-II {r['centroid_g2_mdeg']:6.2f} ({100 * r['g2_max_rel']:.2f} %)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
