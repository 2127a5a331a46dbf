"""A laboratory Cu Ka operando dataset with known truth (`insitu-xrd simulate --lab-cu`).

The second scenario of the simulator: the first charge of NMC811 (the same `ChargeScenario`
lattice curves as the synchrotron dataset) measured in a coin cell on a laboratory
Bragg-Brentano diffractometer, through a Be window, one 1D scan per state of charge:

- Cu Ka1/Ka2 doublet (`Instrument.kalpha2_wavelength_A`, ratio 0.5) and a secondary graphite
  monochromator (Polariz. = 1 / (1 + cos^2 2theta_m), 2theta_m = 26.6 deg: the GSAS-II form of
  the monochromator polarisation);
- Bragg-Brentano geometry: constant absorption (thick specimen), a specimen displacement
  (~ cos(theta) shift), FCJ axial-divergence asymmetry (SH/L) and a lab profile (U V W X Y);
- a cast electrode of platelets: March-Dollase texture about [001] of H2 and H3;
- the Al current collector and the Be window lines (weight fractions of the diffracting volume);
- resonant scattering f', f'' of every atom at Cu Ka1 (`Phase.at_wavelength`);
- Poisson counts, written as 2-column ``.xy`` files (2theta, counts: no esd column, as a
  diffractometer exports them), each with a ``time_s=`` header line (mid-scan time).

Layout of OUT_DIR (see docs/simulator.md, "Laboratory Cu Ka scenario"):

    patterns/scan_0000.xy ...   2theta (deg), counts
    cu_kalpha_bb.instprm        GSAS-II instrument file: Lam1 Lam2 I(L2)/I(L1) Polariz. U V W X Y SH/L
    be.cif                      the Be window phase (P 63/m m c) for the recipe
    cycler.csv                  time_s, voltage_V, current_mA, capacity_mAh
    truth.json                  every true value per scan
    recipe.yaml                 ready-to-run recipe on the ``patterns:`` route (Rietveld)

Pure numpy on top of `insitu_xrd.core.pattern.calc_pattern`; the Be phase is read from the CIF
text written (`insitu_xrd.io.cif.phase_from_cif_text`), so the model and the recipe use one
structure.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from insitu_xrd.core.crystal import Phase, make_template
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction, weight_fractions
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.cif import phase_from_cif_text
from insitu_xrd.io.instprm import write_instrument
from insitu_xrd.provenance import software_versions
from insitu_xrd.simulate.cycler import CyclerSpec, simulate_cycler
from insitu_xrd.simulate.pattern1d import cathode_phase
from insitu_xrd.simulate.scenario import ChargeScenario

__all__ = ["LabSpec", "LAB_INSTRUMENT", "MONOCHROMATOR_POLARIZATION", "BE_CIF", "lab_instrument", "lab_pattern",
           "simulate_lab_dataset"]

#: Cu Ka1, Ka2 (A; as GSAS-II writes them) and the Ka2/Ka1 intensity ratio.
CU_KA1_A, CU_KA2_A, CU_KA2_RATIO = 1.540593, 1.544427, 0.5
#: GSAS-II Polariz. of a graphite (002) secondary monochromator at Cu Ka (2theta_m = 26.6 deg):
#: P + (1 - P) cos^2(2theta) with P = 1 / (1 + cos^2 2theta_m) is (1 + cos^2 2theta_m cos^2 2theta)
#: / (1 + cos^2 2theta_m), the unpolarised tube beam after the monochromator.
MONOCHROMATOR_POLARIZATION = round(1.0 / (1.0 + math.cos(math.radians(26.6)) ** 2), 4)
#: The lab profile (GSAS-II CW: U, V, W centideg^2; X, Y centideg; SH/L) of a 240 mm
#: Bragg-Brentano goniometer with 0.3 deg divergence slits: FWHM ~0.06 deg at 20 deg, 0.09 deg at 80 deg.
LAB_INSTRUMENT = dict(U=3.0, V=-1.5, W=2.5, X=1.2, Y=2.0, sh_l=0.02)

#: The Be window: hexagonal close packed, a = 2.2858 A, c = 3.5843 A (ICDD 00-006-0710).
BE_CIF = """data_Be
_symmetry_space_group_name_H-M 'P 63/m m c'
_cell_length_a 2.2858
_cell_length_b 2.2858
_cell_length_c 3.5843
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
_atom_site_B_iso_or_equiv
Be1 Be 0.333333 0.666667 0.25 1.0 0.6
"""
START_UTC = _dt.datetime(2025, 6, 2, 8, 0, 0, tzinfo=_dt.timezone.utc)


@dataclass(frozen=True)
class LabSpec:
    """Everything that defines a lab dataset (defaults: the documented scenario).

    patterns: number of scans, evenly spread over the first ``charge_fraction`` of the charge
    (1: to the cut-off; a smaller one keeps a short series in the H2 region); scan_s: duration of one scan (s)
    (the time stamp is its middle). two_theta_deg: (start, stop, step) of the scans (deg).
    texture_ratio: March-Dollase ratio of H2/H3 about [001] (< 1: platelets lying flat).
    displacement_um: specimen displacement (GSAS-II Shift sign: > 0 moves peaks to lower angle).
    peak_counts: height (counts) of the H2 003 Ka1 peak at x = 1. weight fractions of the
    diffracting volume: cathode, Al current collector, Be window. sh_l: GSAS-II SH/L axial-divergence
    asymmetry (FCJ; `LAB_INSTRUMENT`'s 0.02 by default).
    """

    patterns: int = 12
    seed: int = 0
    charge_fraction: float = 1.0
    scan_s: float = 1800.0
    two_theta_deg: tuple[float, float, float] = (15.0, 80.0, 0.02)
    texture_ratio: float = 0.8
    displacement_um: float = 30.0
    goniometer_radius_mm: float = 240.0
    polarization: float = MONOCHROMATOR_POLARIZATION
    peak_counts: float = 15000.0
    cathode_weight_fraction: float = 0.80
    al_weight_fraction: float = 0.08
    be_weight_fraction: float = 0.12
    background_coeffs: tuple[float, ...] = (180.0, -60.0, 25.0, -8.0)
    sh_l: float = LAB_INSTRUMENT["sh_l"]
    cycler: CyclerSpec = field(default_factory=CyclerSpec)


def lab_instrument(spec: LabSpec | None = None, kalpha2: bool = True) -> Instrument:
    """The true instrument of the scenario (Cu Ka doublet unless ``kalpha2`` is False)."""
    spec = spec or LabSpec()
    return Instrument(CU_KA1_A, U=LAB_INSTRUMENT["U"], V=LAB_INSTRUMENT["V"], W=LAB_INSTRUMENT["W"],
                      X=LAB_INSTRUMENT["X"], Y=LAB_INSTRUMENT["Y"], sh_l=spec.sh_l,
                      geometry="bragg_brentano", displacement_um=spec.displacement_um,
                      goniometer_radius_mm=spec.goniometer_radius_mm, polarization=spec.polarization,
                      kalpha2_wavelength_A=CU_KA2_A if kalpha2 else None, kalpha2_ratio=CU_KA2_RATIO if kalpha2 else 0.0)


def _phase_states(spec: LabSpec, scenario: ChargeScenario, x_li: float, k: float) -> list[PhaseState]:
    state = scenario.state(x_li)
    out: list[PhaseState] = []
    for pt in state.phases:
        if not pt.present:
            continue
        ph = cathode_phase(pt.name, pt.a_A, pt.c_A, pt.li_occupancy, pt.ni_li_mixing, pt.o_z)  # type: ignore[arg-type]
        ph = ph.at_wavelength(CU_KA1_A)  # resonant f', f'' at Cu Ka1 (Ni, Co, Mn: up to ~30 % in |F|^2)
        w = spec.cathode_weight_fraction * pt.cathode_fraction
        out.append(PhaseState(ph, scale=scale_for_weight_fraction(w, ph, k), mustrain=float(pt.mustrain),  # type: ignore[arg-type]
                              size_um=float(pt.size_um) if pt.size_um else np.inf,
                              md_ratio=spec.texture_ratio if spec.texture_ratio != 1.0 else None, md_axis=(0, 0, 1)))
    al = make_template("al", name="Al").at_wavelength(CU_KA1_A)
    be = phase_from_cif_text(BE_CIF, name="Be").at_wavelength(CU_KA1_A)
    out.append(PhaseState(al, scale=scale_for_weight_fraction(spec.al_weight_fraction, al, k), mustrain=500.0))
    out.append(PhaseState(be, scale=scale_for_weight_fraction(spec.be_weight_fraction, be, k), mustrain=300.0))
    return out


def _grid(spec: LabSpec) -> np.ndarray:
    start, stop, step = spec.two_theta_deg
    return np.round(np.arange(start, stop + 0.5 * step, step), 6)


def _intensity_scale(spec: LabSpec, scenario: ChargeScenario) -> float:
    """k such that the H2 003 peak at x = 1 is ``spec.peak_counts`` high (Ka1 line, no background)."""
    x = np.arange(16.0, 21.0, 0.002)
    h2 = [s for s in _phase_states(spec, scenario, 1.0, 1.0) if s.name == "H2"]
    comps = calc_pattern(x, h2, replace(lab_instrument(spec), kalpha2_wavelength_A=None), (0.0,), (x[0], x[-1]))
    return spec.peak_counts / float(comps.total.max())


def lab_pattern(spec: LabSpec, x_li: float, scenario: ChargeScenario | None = None, k: float | None = None,
                kalpha2: bool = True) -> tuple[np.ndarray, np.ndarray, list[PhaseState]]:
    """(2theta grid (deg), noise-free counts, phase states) of the cell at Li content ``x_li``."""
    scenario = scenario or ChargeScenario()
    k = _intensity_scale(spec, scenario) if k is None else k
    x = _grid(spec)
    phases = _phase_states(spec, scenario, x_li, k)
    comps = calc_pattern(x, phases, lab_instrument(spec, kalpha2), spec.background_coeffs, (x[0], x[-1]))
    return x, np.clip(comps.total, 0.0, None), phases


def _scan_times(spec: LabSpec) -> np.ndarray:
    if spec.patterns < 1:
        raise InsituXRDError(f"--frames must be >= 1 for the lab scenario, got {spec.patterns}")
    if not 0.0 < spec.charge_fraction <= 1.0:
        raise InsituXRDError(f"charge_fraction must be in (0, 1], got {spec.charge_fraction}")
    t_end = spec.charge_fraction * spec.cycler.end_time_s()
    first, last = 0.5 * spec.scan_s, t_end - 0.5 * spec.scan_s
    if spec.patterns == 1:
        return np.array([first])
    return np.linspace(first, last, spec.patterns)


def _recipe(spec: LabSpec) -> dict[str, Any]:
    """A user's recipe: rough starts, Rietveld (texture needs intensities), the instrument file."""
    def cathode(name: str, a: float, c: float) -> dict[str, Any]:
        return {"name": name, "template": "nmc811", "a": a, "c": c, "refine": ["a", "c", "mustrain", "size_um", "scale", "md_ratio"],
                "texture": {"march_dollase": {"axis": [0, 0, 1], "ratio": 1.0}}}

    phases = [
        cathode("H2", 2.87, 14.21),
        cathode("H3", 2.82, 14.00) | {"optional": True},
        {"name": "Al", "template": "al", "mustrain": 500.0, "refine": ["scale"]},
        {"name": "Be", "cif": "be.cif", "mustrain": 300.0, "refine": ["a", "c", "scale"]},
    ]
    start, stop, _step = spec.two_theta_deg
    cyc = spec.cycler
    return {
        "name": "nmc811-charge-lab-cu",
        "wavelength_A": CU_KA1_A,
        "patterns": {"files": "patterns/*.xy", "time_source": "header"},
        "refinement": {
            "mode": "rietveld",
            "range_2theta_deg": [start + 0.5, stop - 0.5],
            "background": {"chebyshev": 6},
            "resonant_scattering": "on",
            "profile": {"instrument": "cu_kalpha_bb.instprm", "geometry": "bragg_brentano",
                        "goniometer_radius_mm": spec.goniometer_radius_mm, "displacement_um": 0.0,
                        "refine": ["displacement_um"]},
            "phases": phases,
        },
        "sequential": {"direction": "forward"},
        "echem": {"file": "cycler.csv",
                  "columns": {"time_s": "time_s", "voltage_V": "voltage_V", "current_mA": "current_mA",
                              "capacity_mAh": "capacity_mAh"},
                  "active_mass_mg": cyc.active_mass_mg, "theoretical_capacity_mAh_g": cyc.theoretical_capacity_mAh_g,
                  "x_start": cyc.x_start},
        "strain": {"reference": "first"},
        "outputs": {"dir": "results"},
    }


def _write_xy(path: Path, tth: np.ndarray, counts: np.ndarray, header: list[str]) -> None:
    lines = [f"# {h}" for h in header] + [f"{a:.4f} {int(b)}" for a, b in zip(tth, counts)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def simulate_lab_dataset(out_dir: str | Path, patterns: int = 12, seed: int = 0, texture_ratio: float = 0.8,
                         progress: Callable[[int, int], None] | None = None, **overrides: Any) -> Path:
    """Write the laboratory Cu Ka coin-cell dataset to ``out_dir``; returns the path of truth.json.

    patterns: number of scans; seed: Poisson seed (and the cycler's voltage noise);
    texture_ratio: March-Dollase ratio of the cathode about [001]; overrides: other `LabSpec`
    fields. ``progress(done, total)`` is called after each scan.
    """
    spec = LabSpec(patterns=patterns, seed=seed, texture_ratio=texture_ratio, **overrides)
    out = Path(out_dir)
    (out / "patterns").mkdir(parents=True, exist_ok=True)
    scenario = ChargeScenario()
    k = _intensity_scale(spec, scenario)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.patterns + 1)
    simulate_cycler(spec.cycler, seed=np.random.default_rng(seeds[-1])).write_csv(out / "cycler.csv")
    inst = lab_instrument(spec)
    # the instrument file knows the goniometer, not this specimen's displacement (refined per scan)
    write_instrument(out / "cu_kalpha_bb.instprm", replace(inst, displacement_um=0.0), polarization=spec.polarization,
                     comments=["insitu-xrd simulate --lab-cu: Cu Ka doublet, graphite secondary monochromator",
                               "Bragg-Brentano goniometer, 240 mm radius"],
                     extra={"Diff-type": "Bragg-Brentano", "Gonio.radius": spec.goniometer_radius_mm})
    (out / "be.cif").write_text(BE_CIF, encoding="utf-8")
    scans: list[dict[str, Any]] = []
    for i, t in enumerate(_scan_times(spec)):
        x_li = float(spec.cycler.x_li(t))
        tth, expected, phases = lab_pattern(spec, x_li, scenario, k)
        counts = np.random.default_rng(seeds[i]).poisson(expected)
        name = f"scan_{i:04d}.xy"
        acq = (START_UTC + _dt.timedelta(seconds=float(t))).isoformat().replace("+00:00", "Z")
        _write_xy(out / "patterns" / name, tth, counts,
                  [f"insitu-xrd simulate --lab-cu: scan {i}, Cu Ka, Bragg-Brentano", f"time_s={t:.3f}",
                   f"date={acq}", "columns: 2theta_deg counts"])
        wf = weight_fractions({p.name: p.scale for p in phases}, {p.name: p.phase for p in phases})
        scans.append({
            "index": i, "file": f"patterns/{name}", "time_s": float(t), "acquisition_time": acq, "x_li": x_li,
            "voltage_V": float(spec.cycler.voltage_V(t)),
            "phases": {p.name: {"a_A": float(p.phase.a), "c_A": float(p.phase.c), "scale": float(p.scale),
                                "weight_fraction": float(wf[p.name]), "mustrain": float(p.mustrain),
                                "md_ratio": p.md_ratio} for p in phases},
            "max_counts": int(counts.max()),
        })
        if progress is not None:
            progress(i + 1, spec.patterns)
    truth = {
        "schema_version": 1,
        "scenario": "nmc811-first-charge-lab-cu-kalpha",
        "scenario_params": scenario.to_dict(),
        "seed": spec.seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "software_versions": software_versions(),
        "wavelength_A": CU_KA1_A,
        "instrument": {"kalpha1_A": CU_KA1_A, "kalpha2_A": CU_KA2_A, "kalpha2_ratio": CU_KA2_RATIO,
                       "polarization": spec.polarization, "geometry": "bragg_brentano",
                       "displacement_um": spec.displacement_um, "goniometer_radius_mm": spec.goniometer_radius_mm,
                       **LAB_INSTRUMENT, "sh_l": spec.sh_l, "units": "GSAS-II CW: U,V,W centideg^2; X,Y centideg"},
        "texture_ratio": spec.texture_ratio,
        "weight_fractions_of_volume": {"cathode": spec.cathode_weight_fraction, "Al": spec.al_weight_fraction,
                                       "Be": spec.be_weight_fraction},
        "background": {"chebyshev_coeffs": list(spec.background_coeffs), "range_deg": list(spec.two_theta_deg[:2])},
        "rendering": {"counts": "Poisson", "intensity_k": k, "peak_counts_H2_003_at_x1": spec.peak_counts,
                      "scan_s": spec.scan_s, "two_theta_deg": list(spec.two_theta_deg)},
        "echem": spec.cycler.to_dict() | {"file": "cycler.csv"},
        "frames": scans,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    (out / "recipe.yaml").write_text(
        "# Ready-to-run recipe for this simulated lab dataset (start values are rough, as a user's).\n"
        + yaml.safe_dump(_recipe(spec), sort_keys=False, default_flow_style=None, width=120), encoding="utf-8")
    return out / "truth.json"
