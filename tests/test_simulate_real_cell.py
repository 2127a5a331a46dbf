"""A real operando cell in the simulator (`insitu-xrd simulate --real-cell`): PTFE and carbon lines,
size tails, flux and zero drift, spotty Li rings, dead lines, hot pixels; the default unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import fabio
import numpy as np
import pytest
import yaml
from scipy.optimize import brentq
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, two_theta_deg_from_d
from insitu_xrd.simulate.beam_drift import BeamDrift
from insitu_xrd.simulate.cell_parts import CARBON_BLACK, GRAPHITE, PTFE
from insitu_xrd.simulate.dataset import FRAME_GEOMETRY, simulate_dataset
from insitu_xrd.simulate.frames import FrameRenderer, make_integrator
from insitu_xrd.simulate.pattern1d import TRUE_INSTRUMENT, CellModel, simulate_pattern_1d
from insitu_xrd.simulate.scenario import ChargeScenario
from insitu_xrd.simulate.size_tails import SizeDistribution, size_distributed_pattern

WL = 0.1173


@pytest.fixture(scope="module")
def real_cell(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rc") / "ds"
    res = CliRunner().invoke(app, ["simulate", str(out), "--real-cell", "--frames", "3", "--binning", "2", "--seed", "4",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    return out


def _frames(out: Path) -> list[np.ndarray]:
    return [fabio.open(str(p)).data for p in sorted((out / "frames").glob("frame_*.tif"))]


def test_plain_recipe_and_truth_of_every_effect(real_cell: Path) -> None:
    recipe = yaml.safe_load((real_cell / "recipe.yaml").read_text())
    ref = recipe["refinement"]
    assert ref["mode"] == "lebail"
    assert [p["name"] for p in ref["phases"]] == ["H2", "H3", "Li"]  # nothing about binder, carbon, Al
    for ph in ref["phases"]:
        assert not {"texture", "mustrain_model", "mustrain_axis"} & set(ph)
    truth = json.loads((real_cell / "truth.json").read_text())
    rc = truth["real_cell"]
    assert rc["binder_carbon"] and rc["plain_recipe"] and set(rc["cell_parts"]) == {"PTFE", "carbon_black"}
    assert rc["beam_drift"]["flux_drift_pct"] == 3.0 and rc["beam_drift"]["zero_drift_mdeg"] == 2.0
    assert rc["texture_ratio"] == 0.85 and rc["mustrain_axial_factor"] == 1.5
    h2 = truth["frames"][0]["phases"]["H2"]
    assert h2["md_ratio"] == 0.85 and h2["mustrain_axial"] == pytest.approx(1.5 * h2["mustrain"])
    assert h2["size_distribution"]["sigma_ln"] == 0.6 and h2["size_um"] == 0.15
    # the cell parts are in the data from the first frame, at the same place in every frame
    first = truth["frames"][0]["cell_parts"]["PTFE"]["lines"]
    assert first[0]["label"] == "100" and first[0]["d_A"] == pytest.approx(4.90, abs=0.02)
    for fr in truth["frames"]:
        assert [ln["d_A"] for ln in fr["cell_parts"]["PTFE"]["lines"]] == [ln["d_A"] for ln in first]


def test_dead_lines_zero_and_hot_pixels_saturated(real_cell: Path) -> None:
    truth = json.loads((real_cell / "truth.json").read_text())
    dd = truth["real_cell"]["detector_defects"]
    assert len(dd["dead_rows"]) >= 1 and len(dd["dead_cols"]) >= 1 and len(dd["hot_pixels_row_col"]) >= 5
    hot = np.array(dd["hot_pixels_row_col"])
    for img in _frames(real_cell):
        assert tuple(img.shape) == tuple(dd["shape"])
        assert np.all(img[dd["dead_rows"], :] == 0) and np.all(img[:, dd["dead_cols"]] == 0)
        assert np.all(img[hot[:, 0], hot[:, 1]] == dd["saturation_counts"])
        # isolated: the 4 neighbours of a hot pixel are ordinary counts, far below saturation
        r, c = hot[:, 0], hot[:, 1]
        inner = (r > 0) & (c > 0) & (r < img.shape[0] - 1) & (c < img.shape[1] - 1)
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            assert np.median(img[r[inner] + dr, c[inner] + dc]) < 0.1 * dd["saturation_counts"]
        # elsewhere no pixel reads 0 or saturation
        ok = np.ones(img.shape, bool)
        ok[dd["dead_rows"], :] = False
        ok[:, dd["dead_cols"]] = False
        ok[r, c] = False
        assert img[ok].min() > 0 and img[ok].max() < dd["saturation_counts"]


def _azimuthal_cv(img: np.ndarray, tth: np.ndarray, chi: np.ndarray, factor: np.ndarray, ring_deg: float,
                  bad: np.ndarray) -> float:
    sel = (np.abs(tth - ring_deg) < 0.008) & ~bad
    bins = np.floor((chi[sel] + 180.0) / 10.0).astype(int)
    means = np.array([np.mean(img[sel][bins == b] / factor[sel][bins == b]) for b in np.unique(bins)])
    return float(means.std() / means.mean())


def test_li_rings_spotty_h2_rings_uniform(real_cell: Path) -> None:
    truth = json.loads((real_cell / "truth.json").read_text())
    ai = make_integrator(FRAME_GEOMETRY, WL, 2)
    shape = ai.detector.shape
    tth = np.degrees(ai.center_array(shape, unit="2th_rad", scale=False))
    chi = np.degrees(ai.center_array(shape, unit="chi_rad", scale=False))
    factor = FrameRenderer(ai, 0.99, 1).factor
    img = _frames(real_cell)[0].astype(float)
    bad = (img == 0) | (img >= truth["real_cell"]["detector_defects"]["saturation_counts"])
    fr = truth["frames"][0]
    li_200 = float(two_theta_deg_from_d(fr["phases"]["Li"]["a_A"] / 2.0, WL)) + fr["zero_deg"]
    h2_003 = float(two_theta_deg_from_d(fr["phases"]["H2"]["c_A"] / 3.0, WL)) + fr["zero_deg"]
    cv_li = _azimuthal_cv(img, tth, chi, factor, li_200, bad)
    cv_h2 = _azimuthal_cv(img, tth, chi, factor, h2_003, bad)
    # a powder ring scatters by Poisson noise only (< 1 %); the Li ring is a few spots
    assert cv_h2 < 0.02
    assert cv_li > 10 * cv_h2 and cv_li > 0.3
    spots = truth["real_cell"]["spotty_li"]["spots"]
    assert {round(s["ring_two_theta_deg"], 3) for s in spots} >= {round(li_200 - fr["zero_deg"], 3)}


def test_flux_and_zero_drift_recorded_and_applied(real_cell: Path) -> None:
    truth = json.loads((real_cell / "truth.json").read_text())
    drift = BeamDrift(flux_drift_pct=3.0, zero_drift_mdeg=2.0)
    end = truth["echem"]["end_time_s"]
    for fr in truth["frames"]:
        assert fr["flux_factor"] == pytest.approx(drift.flux_factor(fr["time_s"]), rel=1e-12)
        assert fr["zero_deg"] == pytest.approx(drift.zero_deg(fr["time_s"], end), abs=1e-12)
    flux = [fr["flux_factor"] for fr in truth["frames"]]
    assert 0.95 < min(flux) < 0.99 and max(flux) <= 1.0  # a few % over the series
    assert 2e-4 < max(abs(fr["zero_deg"]) for fr in truth["frames"][1:]) < 3e-3  # a few mdeg
    # the truth pattern of a frame is the flux factor x the pattern at that frame's zero
    npz = np.load(real_cell / "truth_patterns.npz")
    fr = truth["frames"][1]
    sc = ChargeScenario(params=replace(ChargeScenario().p, size_sigma=0.6, size_um=0.15, texture_ratio=0.85,
                                       mustrain_axial_factor=1.5))
    ins = Instrument(wavelength_A=WL, zero_deg=fr["zero_deg"], distance_mm=FRAME_GEOMETRY.distance_mm, **TRUE_INSTRUMENT)
    sim = simulate_pattern_1d(fr["x_li"], npz["two_theta_deg"], scenario=sc, instrument=ins, cell=CellModel(binder_carbon=True), seed=None)
    assert np.allclose(npz["expected"][1], fr["flux_factor"] * sim.expected, rtol=2e-6, atol=1e-3)


def test_frame_intensity_follows_flux(tmp_path: Path) -> None:
    # same seed with and without drift: the total counts of each frame scale by its flux factor.
    # The drifting set is --real-cell with every other effect switched off by its own option, so
    # any option that failed to override the real-cell value would change the counts too.
    plain = simulate_dataset(tmp_path / "plain", frames=2, binning=8, seed=2, workers=1)
    res = CliRunner().invoke(app, [
        "simulate", str(tmp_path / "drift"), "--frames", "2", "--binning", "8", "--seed", "2", "--workers", "1",
        "--real-cell", "--flux-drift-pct", "20", "--zero-drift-mdeg", "0", "--no-binder-carbon", "--no-size-tails",
        "--no-spotty-li", "--no-detector-defects", "--texture-ratio", "1", "--mustrain-axial-factor", "1"])
    assert res.exit_code == 0, res.output
    drifting = tmp_path / "drift" / "truth.json"
    truth = json.loads(drifting.read_text())
    assert truth["real_cell"]["plain_recipe"] and not truth["real_cell"]["binder_carbon"]
    assert all(fr["zero_deg"] == 0.0 for fr in truth["frames"])
    flux = [fr["flux_factor"] for fr in truth["frames"]]
    assert flux[0] > 0.99 and flux[1] < 0.97
    for i, (a, b) in enumerate(zip(_frames(plain.parent), _frames(drifting.parent))):
        ratio = b.sum(dtype=np.float64) / a.sum(dtype=np.float64)
        assert ratio == pytest.approx(flux[i], rel=5e-4)  # Poisson: ~1e9 counts per frame


@pytest.mark.parametrize("part", [PTFE, CARBON_BLACK, GRAPHITE])
def test_cell_part_lines_at_their_d_and_fixed_with_charge(part) -> None:
    x = np.arange(0.5, 12.0, 0.001)
    cell = CellModel(binder_carbon=True, graphite=True)
    sims = [simulate_pattern_1d(xl, x, cell=cell, seed=None) for xl in (1.0, 0.2)]
    y = sims[0].cell_parts[part.name]
    assert np.array_equal(y, sims[1].cell_parts[part.name])  # does not move with the charge
    strongest = max(part.lines, key=lambda ln: ln.rel_intensity_cuka)
    tth = float(two_theta_deg_from_d(strongest.d_A, WL))
    win = np.abs(x - tth) < 0.3
    assert x[win][np.argmax(y[win])] == pytest.approx(tth, abs=0.0011)
    expected_d = {"PTFE": (4.85, 4.95), "carbon_black": (3.45, 3.65), "graphite": (3.35, 3.36)}[part.name]
    assert expected_d[0] < strongest.d_A < expected_d[1]
    # the parts are in the total: total with parts - total without = the parts
    bare = simulate_pattern_1d(1.0, x, seed=None)
    assert np.allclose(sims[0].expected - bare.expected, sum(sims[0].cell_parts.values()), atol=1e-6)
    # visible but minor: strongest line of the part below 10 % of the H2 003 height
    assert 0.002 * bare.expected.max() < y.max() < 0.1 * bare.expected.max()


def _h2_profile(distribution: SizeDistribution | None, size_um: float, ins: Instrument, x: np.ndarray) -> np.ndarray:
    ph = make_template("nmc811", name="H2", a=2.87, c=14.2)
    st = PhaseState(ph, scale=1.0, mustrain=900.0, size_um=size_um, reflections=ph.reflections(1.0))
    if distribution is not None:
        return size_distributed_pattern(x, st, ins, distribution)
    return calc_pattern(x, [st], ins).phases["H2"]


def _fwhm(x: np.ndarray, y: np.ndarray) -> float:
    i = int(np.argmax(y))
    h = y[i] / 2.0
    left = i - int(np.argmax(y[i::-1] < h))
    right = i + int(np.argmax(y[i:] < h))
    xl = np.interp(h, [y[left], y[left + 1]], [x[left], x[left + 1]])
    xr = np.interp(h, [y[right], y[right - 1]], [x[right], x[right - 1]])
    return float(xr - xl)


@pytest.mark.parametrize("median_um, min_excess", [(0.15, 1.02), (0.03, 1.12)])
def test_size_tails_heavier_than_one_size_of_same_fwhm(median_um: float, min_excess: float) -> None:
    # H2 003 alone (1.2-1.7 deg: no other H2 line); real-cell sizes (0.15 um) and small ones
    ins = Instrument(wavelength_A=WL, **TRUE_INSTRUMENT)
    x = np.arange(1.2, 1.7, 0.0002)
    dist = SizeDistribution(median_um, 0.6)
    y_dist = _h2_profile(dist, median_um, ins, x)
    fw = _fwhm(x, y_dist)
    size_eq = brentq(lambda s: _fwhm(x, _h2_profile(None, s, ins, x)) - fw, 0.2 * median_um, 5.0 * median_um, xtol=1e-6)
    y_one = _h2_profile(None, size_eq, ins, x)
    assert _fwhm(x, y_one) == pytest.approx(fw, rel=1e-4)
    # same area (within the window: the heavier tails put more of it beyond +/- 0.25 deg)
    assert np.trapezoid(y_dist, x) == pytest.approx(np.trapezoid(y_one, x), rel=1.5e-2)
    centre = x[np.argmax(y_dist)]
    tails = (np.abs(x - centre) > 4 * fw) & (np.abs(x - centre) < 7 * fw)
    excess = y_dist[tails].sum() / y_one[tails].sum()
    assert excess > min_excess
    # the quadrature is converged: 4x the nodes changes nothing visible
    fine = _h2_profile(SizeDistribution(median_um, 0.6, nodes=60), median_um, ins, x)
    assert np.max(np.abs(fine - y_dist)) < 1e-4 * y_dist.max()


def test_default_dataset_unchanged(tmp_path: Path) -> None:
    """No new option: every frame is exactly Poisson(render(1D truth)) with the frame's own seed,
    as before the real-cell effects (checked once byte for byte against main's frames)."""
    truth_path = simulate_dataset(tmp_path / "d", frames=2, binning=4, seed=3, workers=1)
    truth = json.loads(truth_path.read_text())
    assert truth["real_cell"]["beam_drift"]["flux_drift_pct"] == 0.0 and truth["real_cell"]["detector_defects"] is None
    ai = make_integrator(FRAME_GEOMETRY, WL, 4)
    renderer = FrameRenderer(ai, 0.99, 2)
    grid = np.arange(0.0, renderer.tth_max_deg + 0.3, 0.002)
    ins = Instrument(wavelength_A=WL, zero_deg=0.0, distance_mm=FRAME_GEOMETRY.distance_mm, **TRUE_INSTRUMENT)
    seeds = np.random.SeedSequence(3).spawn(4)[0].spawn(2)
    for i, img in enumerate(_frames(truth_path.parent)):
        fr = truth["frames"][i]
        assert "flux_factor" not in fr and "cell_parts" not in fr
        sim = simulate_pattern_1d(fr["x_li"], grid, instrument=ins, seed=None)
        ref = renderer.render(grid, sim.expected, np.random.default_rng(seeds[i].generate_state(4)))
        assert np.array_equal(img, ref)
