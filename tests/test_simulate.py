"""Synthetic operando data (insitu_xrd.simulate): scenario truth, 1D statistics, 2D round trip, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import fabio
import numpy as np
import pytest
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.core.pattern import two_theta_deg_from_d
from insitu_xrd.simulate.cycler import CyclerSpec, simulate_cycler
from insitu_xrd.simulate.frames import FrameRenderer, GeometrySpec, make_integrator
from insitu_xrd.simulate.pattern1d import CellModel, simulate_pattern_1d
from insitu_xrd.simulate.scenario import ChargeScenario, nmc811_ocv_V


# ------------------------------------------------------------------ scenario
@pytest.mark.parametrize("coated", [False, True])
def test_scenario_curves_shape_and_targets(coated: bool) -> None:
    sc = ChargeScenario(coated=coated)
    p = sc.p
    x = np.linspace(1.0, 0.15, 400)
    a = sc.h2_a_A(x)
    c = sc.h2_c_A(x)
    on = x >= p.x_on
    # a shrinks monotonically on charge (x decreasing) in the solid-solution region
    assert np.all(np.diff(a[on]) < 0)
    # c rises to its maximum at x_peak, then falls to the H3 onset
    pk = x >= p.x_peak
    assert np.all(np.diff(c[pk]) > 0)
    assert np.all(np.diff(c[on & ~pk]) < 0)
    assert c.max() == pytest.approx(p.c_max, abs=2e-4)
    assert sc.state(1.0).h2.a_A == pytest.approx(2.872) and sc.state(1.0).h2.c_A == pytest.approx(14.20)
    # H3: absent before onset, growing monotonically after it
    f3 = np.array([sc.state(v).h3.cathode_fraction for v in x])
    assert np.all(f3[x >= p.x_on] == 0.0)
    assert not any(sc.state(v).h3.present for v in x[x >= p.x_on])
    after = x < p.x_on
    assert np.all(np.diff(f3[after]) > 0) and f3[after][0] > 0
    s = sc.state(0.2)
    assert s.h2.cathode_fraction + s.h3.cathode_fraction == pytest.approx(1.0)
    # seed-paper targets: c decrement 2.0 % bare vs 0.6 % coated; mu-strain 914 vs 2114 at x = 1
    assert sc.c_decrement_pct() == pytest.approx(0.6 if coated else 2.0, abs=0.1)
    assert sc.state(1.0).h2.mustrain == pytest.approx(2114.0 if coated else 914.0)
    assert 1.2 < sc.a_shrink_pct() < 2.2
    # H3 collapsed c ~ 14.0-14.1 A
    assert 13.95 < s.h3.c_A < 14.15


def test_coated_changes_less_than_bare() -> None:
    bare, coated = ChargeScenario(False), ChargeScenario(True)
    assert coated.a_shrink_pct() < bare.a_shrink_pct()
    assert coated.c_decrement_pct() < bare.c_decrement_pct()
    assert coated.state(0.2).h3.cathode_fraction < bare.state(0.2).h3.cathode_fraction


def test_cycler_log_consistent_with_x_and_cutoff() -> None:
    spec = CyclerSpec()
    log = simulate_cycler(spec, seed=1)
    assert spec.current_mA == pytest.approx(0.1 * 275 * 4.0e-3)
    # capacity integrates the constant current; x from capacity is the scenario's x(t)
    assert np.allclose(log.capacity_mAh, log.current_mA * log.time_s / 3600.0)
    x = 1.0 - log.capacity_mAh / (spec.active_mass_mg * 1e-3 * spec.theoretical_capacity_mAh_g)
    assert np.allclose(x, spec.x_li(log.time_s))
    assert 0.15 < x[-1] < 0.22  # ~0.2 at the 4.5 V cut-off
    assert spec.voltage_V(log.time_s[-1]) == pytest.approx(4.5, abs=1e-6)
    # voltage rises monotonically (noise-free) and the noisy log scatters by the set noise
    assert np.all(np.diff(spec.voltage_V(log.time_s)) > 0)
    resid = log.voltage_V - spec.voltage_V(log.time_s)
    assert np.std(resid) == pytest.approx(spec.voltage_noise_V, rel=0.15)
    assert nmc811_ocv_V(1.0) < nmc811_ocv_V(0.5) < nmc811_ocv_V(0.2)


# ------------------------------------------------------------------ 1D pattern
def test_pattern_1d_poisson_statistics_and_truth() -> None:
    sim = simulate_pattern_1d(0.3, seed=123)
    z = (sim.observed - sim.expected) / np.sqrt(sim.expected)
    n = z.size
    assert abs(z.mean()) < 4.0 / np.sqrt(n)
    assert z.std() == pytest.approx(1.0, abs=4.0 * np.sqrt(2.0 / n) + 0.01)
    assert sim.expected.min() > 50  # background everywhere
    t = sim.truth
    wf = sum(ph["weight_fraction"] for ph in t["phases"].values())
    assert wf == pytest.approx(1.0)
    assert t["phases"]["H3"]["present"] and t["phases"]["H3"]["weight_fraction"] > 0
    # H2 weight fraction = cathode fraction x cathode share of the cell
    cm = CellModel()
    assert t["phases"]["H2"]["weight_fraction"] == pytest.approx(cm.cathode_weight_fraction * t["phases"]["H2"]["cathode_fraction"])
    # Same seed -> same pattern; no seed -> noise-free
    assert np.array_equal(sim.observed, simulate_pattern_1d(0.3, seed=123).observed)
    assert np.array_equal(simulate_pattern_1d(0.3, seed=None).observed, sim.expected)


def test_pattern_1d_peak_positions_follow_truth() -> None:
    x = np.arange(1.0, 5.0, 0.001)
    sim = simulate_pattern_1d(0.6, x, seed=None, cell=CellModel(cell_lines=False, diffuse=False))
    h2 = sim.truth["phases"]["H2"]
    a, c = h2["a_A"], h2["c_A"]
    for hkl, d in (("003", c / 3.0), ("110", a / 2.0)):
        tth = float(two_theta_deg_from_d(d, 0.1173))
        win = np.abs(x - tth) < 0.02
        y = sim.components.phases["H2"][win]
        assert x[win][np.argmax(y)] == pytest.approx(tth, abs=0.0011), hkl
    # no H3 lines before onset; no diffuse, cell lines when switched off
    assert "H3" not in sim.components.phases and not sim.components.diffuse
    assert set(sim.components.phases) == {"H2"}


def test_diffuse_and_cell_lines_present_by_default() -> None:
    sim = simulate_pattern_1d(1.0, seed=None)
    assert set(sim.components.phases) == {"H2", "Li", "Al"}
    assert set(sim.components.diffuse) == {"H2_104", "H2_108_110"}
    d = {e["label"]: e for e in sim.truth["diffuse"]}
    area = np.trapezoid(sim.components.diffuse["H2_104"], sim.two_theta_deg)
    assert area == pytest.approx(d["H2_104"]["area"], rel=0.02)  # Lorentz tails beyond the grid
    # coated: stronger diffuse scattering
    coated = simulate_pattern_1d(1.0, seed=None, scenario=ChargeScenario(coated=True))
    assert coated.truth["diffuse"][0]["area"] > d["H2_104"]["area"]


# ------------------------------------------------------------------ 2D rendering
def test_renderer_equals_pyfai_calcfrom1d() -> None:
    ai = make_integrator(GeometrySpec(), 0.1173, binning=8)
    r = FrameRenderer(ai, polarization_factor=0.99, oversampling=1)
    x = np.arange(0.0, r.tth_max_deg + 0.2, 0.002)
    y = simulate_pattern_1d(0.5, x, seed=None).expected
    ours = r.expected(x, y)
    ref = ai.calcfrom1d(x, y, shape=ai.detector.shape, dim1_unit="2th_deg", correctSolidAngle=True, polarization_factor=0.99)
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    # 2theta at the detector edges ~11.5 deg (Perkin at ~1 m, beam near the centre)
    tth = np.degrees(ai.center_array(ai.detector.shape, unit="2th_rad", scale=False))
    assert 11.0 < tth[ai.detector.shape[0] // 2].max() < 12.0


# ------------------------------------------------------------------ dataset through the CLI
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "ds"
    res = CliRunner().invoke(app, ["simulate", str(out), "--frames", "3", "--binning", "2", "--seed", "7"])
    assert res.exit_code == 0, res.output
    return out


def test_dataset_layout_and_recipe(dataset: Path) -> None:
    for rel in ("frames/frame_0000.tif", "frames/frame_0002.tif", "frames/times.csv", "calib/ceo2.tif", "calib/ni.tif",
                "calib/ceo2_true.poni", "calib/ni_true.poni", "cycler.csv", "truth.json", "recipe.yaml"):
        assert (dataset / rel).is_file(), rel
    assert not (dataset / "frames/frame_0003.tif").exists()
    from insitu_xrd.pipeline.recipe import load_recipe

    recipe = load_recipe(dataset / "recipe.yaml")
    assert recipe.wavelength_A == pytest.approx(0.1173)
    assert (dataset / recipe.calibration.image).is_file()
    assert recipe.refinement.phases[0].a != json.loads((dataset / "truth.json").read_text())["frames"][0]["phases"]["H2"]["a_A"]
    img = fabio.open(str(dataset / "calib/ceo2.tif")).data
    assert img.shape == (1024, 1024) and img.dtype == np.int32


def test_truth_matches_scenario_and_cycler(dataset: Path) -> None:
    truth = json.loads((dataset / "truth.json").read_text())
    sc = ChargeScenario(coated=False)
    assert truth["scenario"] == sc.name and truth["seed"] == 7 and truth["wavelength_A"] == 0.1173
    assert set(truth["instrument"]) >= {"U", "V", "W", "X", "Y", "zero_deg"}
    spec = CyclerSpec()
    rows = list(csv.DictReader(open(dataset / "cycler.csv")))
    t_log = np.array([float(r["time_s"]) for r in rows])
    q_log = np.array([float(r["capacity_mAh"]) for r in rows])
    times = [f["time_s"] for f in truth["frames"]]
    assert np.all(np.diff(times) > 0)
    for f in truth["frames"]:
        s = sc.state(f["x_li"])
        for name, pt in (("H2", s.h2), ("H3", s.h3)):
            ph = f["phases"][name]
            assert ph["present"] == pt.present
            if pt.present:
                assert ph["a_A"] == pytest.approx(pt.a_A) and ph["c_A"] == pytest.approx(pt.c_A)
                assert ph["mustrain"] == pytest.approx(pt.mustrain)
                assert ph["volume_A3"] == pytest.approx(np.sqrt(3) / 2 * pt.a_A**2 * pt.c_A)
            else:
                assert ph["weight_fraction"] == 0.0
        # x from the cycler log (capacity interpolated at the frame time) = truth
        q = np.interp(f["time_s"], t_log, q_log)
        x_log = 1.0 - q / (spec.active_mass_mg * 1e-3 * spec.theoretical_capacity_mAh_g)
        assert x_log == pytest.approx(f["x_li"], abs=1e-5)
    assert truth["frames"][0]["x_li"] > 0.99 and truth["frames"][-1]["x_li"] < 0.25
    assert truth["frames"][-1]["phases"]["H3"]["present"]


def test_frame_headers_and_sidecar_times(dataset: Path) -> None:
    from insitu_xrd.io.frames import discover_frames, header_times, load_sidecar_times, read_frame_header

    truth = json.loads((dataset / "truth.json").read_text())
    side = load_sidecar_times(dataset / "frames/times.csv")
    refs = discover_frames(str(dataset / "frames/*.tif"))
    assert len(refs) == 3
    for ref, f in zip(refs, truth["frames"]):
        hdr = read_frame_header(ref)
        t, _, source = header_times(hdr, ref)
        assert t == pytest.approx(f["time_s"], abs=1e-3) and source == "header time_s"
        assert side[str((dataset / f["file"]).resolve())] == pytest.approx(f["time_s"], abs=1e-3)
        raw = fabio.open(str(dataset / f["file"]))
        desc = dict(line.split("=", 1) for line in raw.header["imageDescription"].splitlines() if "=" in line)
        assert desc["acquisition_time"] == f["acquisition_time"] and float(desc["exposure_s"]) == f["exposure_s"]
        assert raw.data.dtype == np.int32 and raw.data.shape == (1024, 1024)


def test_frame_integrates_back_to_1d_input(dataset: Path) -> None:
    """Integrating a frame with the true PONI returns the 1D input: peak areas and centroids
    within Poisson sigma, background within sigma (pixel/bin broadening preserves area)."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    ai = AzimuthalIntegrator()
    ai.load(str(dataset / "calib/ceo2_true.poni"))
    data = fabio.open(str(dataset / "frames/frame_0001.tif")).data
    ref = np.load(dataset / "truth_patterns.npz")
    grid, y_in = ref["two_theta_deg"], ref["expected"][1].astype(float)
    res = ai.integrate1d(data, 1500, unit="2th_deg", radial_range=(1.0, 11.0), polarization_factor=0.99,
                         correctSolidAngle=True, error_model="poisson", method=("bbox", "csr", "cython"))
    x, y, s = res.radial, res.intensity, res.sigma
    step = x[1] - x[0]
    y_ref = np.array([np.mean(np.interp(np.linspace(a - step / 2, a + step / 2, 21), grid, y_in)) for a in x])
    truth = json.loads((dataset / "truth.json").read_text())["frames"][1]
    h2 = truth["phases"]["H2"]
    d_104 = 1.0 / np.sqrt(4.0 / (3.0 * h2["a_A"] ** 2) + 16.0 / h2["c_A"] ** 2)
    for d in (h2["c_A"] / 3.0, d_104, h2["a_A"] / 2.0):  # 003, 104, 110
        tth = float(two_theta_deg_from_d(d, 0.1173))
        # window between the minima of the input on either side: pixel/bin broadening moves
        # intensity within the window, not out of it
        left = (x > tth - 0.15) & (x < tth - 0.04)
        right = (x > tth + 0.04) & (x < tth + 0.15)
        lo, hi = x[left][np.argmin(y_ref[left])], x[right][np.argmin(y_ref[right])]
        w = (x >= lo) & (x <= hi)
        diff = np.sum(y[w] - y_ref[w])
        assert abs(diff) < 4.0 * np.sqrt(np.sum(s[w] ** 2)) + 0.003 * np.sum(y_ref[w])
        n = np.abs(x - tth) < 0.04
        base = min(y_ref[w].min(), y[w].min())
        cen_obs = np.sum(x[n] * (y[n] - base)) / np.sum(y[n] - base)
        cen_ref = np.sum(x[n] * (y_ref[n] - base)) / np.sum(y_ref[n] - base)
        assert cen_obs == pytest.approx(cen_ref, abs=0.002)
    # Poisson counting: the frame scatters about the integrated noise-free expectation image
    # with the propagated sigma (chi^2 per bin ~ 1) and the bulk of bins agree with the input
    renderer = FrameRenderer(ai, polarization_factor=0.99, oversampling=2)
    lam = renderer.expected(grid, y_in)
    res0 = ai.integrate1d(lam, 1500, unit="2th_deg", radial_range=(1.0, 11.0), polarization_factor=0.99,
                          correctSolidAngle=True, method=("bbox", "csr", "cython"))
    chi2 = np.mean(((y - res0.intensity) / s) ** 2)
    assert 0.85 < chi2 < 1.15
    assert np.median(y / y_ref) == pytest.approx(1.0, abs=0.002)


def test_cli_rejects_bad_binning(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "x"), "--binning", "3"])
    assert res.exit_code == 2
    assert "binning" in res.output and "Traceback" not in res.output
