"""`insitu-xrd refine` / `insitu-xrd instrument`, make_refinement and the Rietveld plot, on simulated
patterns with known truth (core forward model + Poisson noise, fixed seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.instrument import fit_instrument
from insitu_xrd.io.instprm import read_instrument, write_instrument
from insitu_xrd.io.pattern_files import write_xye
from insitu_xrd.pipeline.refine_setup import load_recipe_refinement, make_refinement
from insitu_xrd.plots.rietveld import plot_rietveld, zoom_windows

WL = 0.1173
TRUE_INST = Instrument(WL, U=1.2, V=-0.4, W=0.9, X=0.15, Y=0.3, zero_deg=0.0)
TRUTH = {"H2_a": 2.8405, "H2_c": 14.43, "Li_a": 3.5100, "H2_mustrain": 900.0}


def _sample_pattern(seed: int = 1):
    x = np.linspace(1.0, 12.0, 2750)
    h2 = make_template("nmc811", name="H2", a=TRUTH["H2_a"], c=TRUTH["H2_c"])
    li = make_template("li_metal", name="Li", a=TRUTH["Li_a"])
    comp = calc_pattern(x, [PhaseState(h2, scale=3e-4, mustrain=TRUTH["H2_mustrain"]), PhaseState(li, scale=2e-3, mustrain=300)],
                        TRUE_INST, background_coeffs=[300, -80, 30])
    y = np.random.default_rng(seed).poisson(comp.total).astype(float)
    return x, y, np.sqrt(np.maximum(y, 1.0))


def _ceo2_pattern(seed: int = 2):
    x = np.linspace(1.0, 12.0, 2750)
    comp = calc_pattern(x, [PhaseState(make_template("ceo2"), scale=2e-5)], TRUE_INST, background_coeffs=[200, -50, 20])
    y = np.random.default_rng(seed).poisson(comp.total).astype(float)
    return x, y, np.sqrt(np.maximum(y, 1.0))


def _recipe(tmp_path: Path, profile: dict, mode: str = "lebail", wavelength: float | None = WL, extra: dict | None = None) -> Path:
    refinement = {
        "mode": mode,
        "range_2theta_deg": [1.2, 11.8],
        "background": {"chebyshev": 6},
        "profile": profile,
        "phases": [
            {"name": "H2", "template": "nmc811", "a": 2.845, "c": 14.40, "refine": ["a", "c", "scale", "mustrain"]},
            {"name": "Li", "template": "li_metal", "refine": ["a", "scale", "mustrain"]},
        ],
    }
    refinement.update(extra or {})
    recipe = {"refinement": refinement, "frames": "ignored by refine"}
    if wavelength is not None:
        recipe["wavelength_A"] = wavelength
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


_VAR = {"a": "a", "c": "c", "mustrain": "microstrain", "size_um": "size", "scale": "scale"}


def _value(ds: xr.Dataset, name: str) -> tuple[float, float]:
    """(value, esd) of a parameter name (``H2_a``) in a results Dataset: the per-phase variables
    over frame x phase (the sequential schema; one frame), else ``param_value``."""
    phase, _, par = name.partition("_")
    if par in _VAR and phase in [str(p) for p in ds["phase"].values]:
        var = _VAR[par]
        return float(ds[var].sel(phase=phase).values[0]), float(ds[f"{var}_esd"].sel(phase=phase).values[0])
    return float(ds["param_value"].sel(param=name)), float(ds["param_value_esd"].sel(param=name))


def _check_truth(ds: xr.Dataset) -> None:
    for name, true in TRUTH.items():
        value, esd = _value(ds, name)
        assert np.isfinite(esd) and esd > 0
        # 5 esd, with a floor for the tiny esds of a noise-only simulation
        tol = max(5 * esd, 2e-5 * abs(true))
        assert abs(value - true) < tol, (name, value, esd)


@pytest.fixture(scope="module")
def instrument_file(tmp_path_factory) -> Path:
    """The calibrant workflow: fit CeO2 (lattice fixed), write .instprm."""
    out = tmp_path_factory.mktemp("inst")
    x, y, s = _ceo2_pattern()
    xye = write_xye(out / "ceo2.xye", x, y, s, wavelength_A=WL)
    res = CliRunner().invoke(app, ["instrument", str(xye), "--calibrant", "CeO2", "-o", str(out / "inst.instprm"),
                                   "--plot", str(out / "inst.png"), "--chebyshev", "4"])
    assert res.exit_code == 0, res.output
    assert (out / "inst.png").stat().st_size > 10_000
    return out / "inst.instprm"


def test_instrument_fit_recovers_profile(instrument_file: Path):
    inst = read_instrument(instrument_file, wavelength_A=WL)
    # the widths, not the (correlated) coefficients, are what the instrument file must get right
    from insitu_xrd.core.profiles import peak_fwhm_eta

    tth = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    f_fit, e_fit = peak_fwhm_eta(tth, WL, inst.U, inst.V, inst.W, inst.X, inst.Y)
    f_true, e_true = peak_fwhm_eta(tth, WL, TRUE_INST.U, TRUE_INST.V, TRUE_INST.W, TRUE_INST.X, TRUE_INST.Y)
    np.testing.assert_allclose(f_fit, f_true, rtol=0.01)
    np.testing.assert_allclose(e_fit, e_true, atol=0.03)
    assert abs(inst.zero_deg) < 2e-4


def test_instrument_fit_from_poor_start_lebail():
    x, y, s = _ceo2_pattern(seed=5)
    fit = fit_instrument(x, y, s, "ceo2", WL, mode="lebail", chebyshev=4)
    r = fit.result
    assert r.gof < 1.3
    assert fit.instrument.W == pytest.approx(TRUE_INST.W, abs=5 * r.esds["W"] + 0.02)
    assert fit.lattice_A == pytest.approx(5.411651)


def test_refine_cli_xye_with_instrument_file(tmp_path: Path, instrument_file: Path):
    x, y, s = _sample_pattern()
    xye = write_xye(tmp_path / "sample.xye", x, y, s)  # no wavelength in the file: the recipe gives it
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "inst.instprm").write_text(instrument_file.read_text())
    recipe = _recipe(tmp_path, {"instrument": "cal/inst.instprm"})
    res = CliRunner().invoke(app, ["refine", str(xye), "--recipe", str(recipe), "-o", str(tmp_path / "fit.nc"),
                                   "--plot", str(tmp_path / "fit.png")])
    assert res.exit_code == 0, res.output
    assert "H2_a" in res.output and "Rwp" in res.output
    ds = xr.load_dataset(tmp_path / "fit.nc", engine="h5netcdf")
    _check_truth(ds)
    assert ds.attrs["mode"] == "lebail" and ds.attrs["wavelength_A"] == pytest.approx(WL)
    assert ds.attrs["gof"] < 1.5
    assert {"obs", "calc", "background", "diff", "phase_curve", "peak_two_theta", "peak_hkl", "correlation"} <= set(ds.variables)
    assert (tmp_path / "fit.png").stat().st_size > 20_000


def test_refine_cli_patterns_nc_frame_rietveld(tmp_path: Path):
    x, y0, s0 = _sample_pattern(seed=3)
    _, y1, s1 = _sample_pattern(seed=4)
    ds = xr.Dataset(
        {"intensity": (("frame", "two_theta"), np.stack([y0, y1])), "sigma": (("frame", "two_theta"), np.stack([s0, s1])),
         "status": (("frame",), np.array(["ok", "ok"]))},
        coords={"frame": [0, 1], "two_theta": x, "time_s": ("frame", [0.0, 60.0]), "frame_name": ("frame", ["a.tif", "b.tif"])},
        attrs={"wavelength_A": WL, "unit": "2th_deg"},
    )
    nc = tmp_path / "patterns.nc"
    ds.to_netcdf(nc, engine="h5netcdf")
    recipe = _recipe(tmp_path, {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3}, mode="rietveld", wavelength=None)
    out = tmp_path / "fit1.nc"
    res = CliRunner().invoke(app, ["refine", str(nc), "--recipe", str(recipe), "--frame", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    fit = xr.load_dataset(out, engine="h5netcdf")
    _check_truth(fit)
    assert "frame 1 (b.tif)" in fit.attrs["source_pattern"]
    # several frames and no --frame: a clear error
    res = CliRunner().invoke(app, ["refine", str(nc), "--recipe", str(recipe), "-o", str(out)])
    assert res.exit_code == 2 and "--frame" in res.stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bad_key", "refinement.phases[0].refin"),
        ("bad_refine_name", "refinement.phases[0].refine[0]"),
        ("missing_pattern", "does not exist"),
        ("missing_instrument", "instrument file (refinement.profile.instrument)"),
        ("no_wavelength", "no wavelength"),
        ("bad_yaml", "not valid YAML"),
        ("no_section", "no 'refinement' section"),
    ],
)
def test_refine_cli_errors_exit_2(tmp_path: Path, case: str, expected: str):
    x, y, s = _sample_pattern()
    xye = write_xye(tmp_path / "p.xye", x, y, s)
    profile = {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3}
    recipe = _recipe(tmp_path, profile)
    data = yaml.safe_load(recipe.read_text())
    if case == "bad_key":
        data["refinement"]["phases"][0]["refin"] = data["refinement"]["phases"][0].pop("refine")
    elif case == "bad_refine_name":
        data["refinement"]["phases"][0]["refine"] = ["lattice_a"]
    elif case == "missing_pattern":
        xye = tmp_path / "nope.xye"
    elif case == "missing_instrument":
        data["refinement"]["profile"] = {"instrument": "absent.instprm"}
    elif case == "no_wavelength":
        data.pop("wavelength_A")
    elif case == "no_section":
        data.pop("refinement")
    recipe.write_text(yaml.safe_dump(data) if case != "bad_yaml" else "refinement: [unclosed\n")
    res = CliRunner().invoke(app, ["refine", str(xye), "--recipe", str(recipe), "-o", str(tmp_path / "f.nc")])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in res.output


def test_make_refinement_resolves_cif_relative_to_base(tmp_path: Path):
    from test_cif import NMC_CIF

    (tmp_path / "phases").mkdir()
    (tmp_path / "phases" / "nmc.cif").write_text(NMC_CIF)
    recipe = _recipe(tmp_path, {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3}, mode="rietveld")
    data = yaml.safe_load(recipe.read_text())
    data["refinement"]["phases"][0] = {"name": "H2", "cif": "phases/nmc.cif", "a": 2.845, "c": 14.40,
                                       "refine": ["a", "c", "scale", "mustrain"]}
    recipe.write_text(yaml.safe_dump(data))
    rr = load_recipe_refinement(recipe)
    ref = make_refinement(rr.spec, rr.wavelength_A, rr.base_dir)
    x, y, s = _sample_pattern()
    res = ref.fit(x, y, s)
    assert res.values["H2_a"] == pytest.approx(TRUTH["H2_a"], abs=max(5 * res.esds["H2_a"], 1e-4))
    assert res.values["H2_c"] == pytest.approx(TRUTH["H2_c"], abs=max(5 * res.esds["H2_c"], 1e-3))
    data["refinement"]["phases"][0]["cif"] = "phases/missing.cif"
    recipe.write_text(yaml.safe_dump(data))
    rr = load_recipe_refinement(recipe)
    with pytest.raises(InsituXRDError, match=r"CIF file \(refinement.phases\[0\].cif\).*missing.cif"):
        make_refinement(rr.spec, rr.wavelength_A, rr.base_dir)


def test_instrument_file_wavelength_must_match(tmp_path: Path):
    write_instrument(tmp_path / "i.instprm", Instrument(0.2, W=1.0))
    recipe = _recipe(tmp_path, {"instrument": "i.instprm"})
    rr = load_recipe_refinement(recipe)
    with pytest.raises(InsituXRDError, match="Lam = 0.2 A but the data wavelength is 0.1173"):
        make_refinement(rr.spec, WL, rr.base_dir)


def test_rietveld_plot_zoom_windows(tmp_path: Path):
    rr = load_recipe_refinement(_recipe(tmp_path, {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3}, mode="rietveld"))
    x, y, s = _sample_pattern()
    ds = make_refinement(rr.spec, WL, tmp_path).fit(x, y, s).to_dataset()
    wins = zoom_windows(ds)
    # the main phase's (H2's) three strongest reflections; 101 and 006 share a panel
    assert [w[0] for w in wins] == ["003", "101 / 006", "104"]
    d003 = TRUTH["H2_c"] / 3
    t003 = 2 * math.degrees(math.asin(WL / (2 * d003)))
    assert wins[0][1] < t003 < wins[0][2]
    with pytest.raises(InsituXRDError, match="no such reflection"):
        zoom_windows(ds, ["999"])
    out = plot_rietveld(ds, tmp_path / "r.png", zooms=["003", (4.5, 4.9)])
    assert out.stat().st_size > 20_000


def test_instrument_file_without_asymmetry_keeps_sh_l_zero(instrument_file: Path):
    """The symmetric simulated CeO2: the SH/L test finds nothing significant; the file says SH/L 0."""
    text = instrument_file.read_text()
    assert "SH/L:0.0\n" in text and "SH/L asymmetry not significant" in text
    assert read_instrument(instrument_file, wavelength_A=WL).sh_l == 0.0


def test_instrument_asymmetry_carried_to_sample_fit(tmp_path: Path):
    """GSAS-II SH/L asymmetry in the beamline: `insitu-xrd instrument` finds it on CeO2, writes it
    to the .instprm, and the sample Le Bail fit that reads the file recovers the lattice (which a
    symmetric profile would bias by several esd)."""
    inst = Instrument(WL, U=1.2, V=-0.4, W=0.9, X=0.15, Y=0.3, zero_deg=0.0, sh_l=0.003)
    x = np.linspace(1.0, 12.0, 2750)
    ceo2 = calc_pattern(x, [PhaseState(make_template("ceo2"), scale=2e-5)], inst, background_coeffs=[200, -50, 20]).total
    y = np.random.default_rng(7).poisson(ceo2).astype(float)
    xye = write_xye(tmp_path / "ceo2.xye", x, y, np.sqrt(np.maximum(y, 1.0)), wavelength_A=WL)
    res = CliRunner().invoke(app, ["instrument", str(xye), "--calibrant", "CeO2", "--chebyshev", "4",
                                   "-o", str(tmp_path / "asym.instprm")])
    assert res.exit_code == 0, res.output
    found = read_instrument(tmp_path / "asym.instprm", wavelength_A=WL)
    assert found.sh_l == pytest.approx(0.003, rel=0.15)
    h2 = make_template("nmc811", name="H2", a=TRUTH["H2_a"], c=TRUTH["H2_c"])
    li = make_template("li_metal", name="Li", a=TRUTH["Li_a"])
    comp = calc_pattern(x, [PhaseState(h2, scale=3e-4, mustrain=TRUTH["H2_mustrain"]), PhaseState(li, scale=2e-3, mustrain=300)],
                        inst, background_coeffs=[300, -80, 30])
    y = np.random.default_rng(8).poisson(comp.total).astype(float)
    sample = write_xye(tmp_path / "sample.xye", x, y, np.sqrt(np.maximum(y, 1.0)))
    recipe = _recipe(tmp_path, {"instrument": "asym.instprm"})
    res = CliRunner().invoke(app, ["refine", str(sample), "--recipe", str(recipe), "-o", str(tmp_path / "fit.nc")])
    assert res.exit_code == 0, res.output
    _check_truth(xr.load_dataset(tmp_path / "fit.nc", engine="h5netcdf"))


def test_refine_cli_with_the_demo_recipe(tmp_path: Path):
    """`refine` reads the refinement section of a full recipe (recipes/demo.yaml: Le Bail, H2 + Li +
    Al, diffuse components) on a simulator pattern of the pristine cathode, plot included."""
    from insitu_xrd.simulate.pattern1d import simulate_pattern_1d

    demo = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    x = np.linspace(1.0, 12.0, 2750)
    sim = simulate_pattern_1d(1.0, x, seed=3)
    xye = write_xye(tmp_path / "pristine.xye", x, sim.observed, sim.sigma, wavelength_A=WL)
    res = CliRunner().invoke(app, ["refine", str(xye), "--recipe", str(demo), "-o", str(tmp_path / "fit.nc"),
                                   "--plot", str(tmp_path / "fit.png")])
    assert res.exit_code == 0, res.output
    ds = xr.load_dataset(tmp_path / "fit.nc", engine="h5netcdf")
    h2 = sim.truth["phases"]["H2"]
    for ln in ("a", "c"):
        value, esd = _value(ds, f"H2_{ln}")
        assert abs(value - h2[f"{ln}_A"]) < 3 * esd + 1e-4
    assert json.loads(ds.attrs["active_phases"]) == ["H2", "Li", "Al"] and ds.attrs["mode"] == "lebail"
    assert (tmp_path / "fit.png").stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------
# microstrain against the instrument profile (issue point 2) and the results schema (point 4)

SIM_INST = Instrument(WL, U=2.0, V=-0.5, W=1.5, X=0.25, Y=0.4, zero_deg=0.0)  # the simulator's profile
MU_TRUE = 914.0  # x 1e-6


@pytest.fixture(scope="module")
def microstrain_case(tmp_path_factory):
    """A CeO2 calibrant and an NMC811 sample (microstrain 914) measured with the same instrument;
    the instrument file from `insitu-xrd instrument` on the calibrant."""
    out = tmp_path_factory.mktemp("mustrain")
    x = np.linspace(1.0, 12.0, 2750)
    cal = calc_pattern(x, [PhaseState(make_template("ceo2"), scale=2e-5)], SIM_INST, background_coeffs=[200, -50, 20]).total
    y = np.random.default_rng(21).poisson(cal).astype(float)
    ceo2 = write_xye(out / "ceo2.xye", x, y, np.sqrt(np.maximum(y, 1.0)), wavelength_A=WL)
    res = CliRunner().invoke(app, ["instrument", str(ceo2), "--calibrant", "CeO2", "--chebyshev", "4",
                                   "-o", str(out / "cal.instprm")])
    assert res.exit_code == 0, res.output
    h2 = make_template("nmc811", name="H2", a=2.865, c=14.36)
    comp = calc_pattern(x, [PhaseState(h2, scale=3e-4, mustrain=MU_TRUE)], SIM_INST, background_coeffs=[300, -80, 30])
    y = np.random.default_rng(22).poisson(comp.total).astype(float)
    sample = write_xye(out / "sample.xye", x, y, np.sqrt(np.maximum(y, 1.0)), wavelength_A=WL)
    return out, sample


def _one_phase_recipe(path: Path, profile: dict, **top) -> Path:
    data = {"wavelength_A": WL, **top, "refinement": {
        "mode": "lebail", "range_2theta_deg": [1.2, 11.8], "background": {"chebyshev": 6}, "profile": profile,
        "phases": [{"name": "H2", "template": "nmc811", "a": 2.872, "c": 14.20, "refine": ["a", "c", "scale", "mustrain"]}]}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_microstrain_right_with_the_calibrant_instrument_and_warned_without(microstrain_case):
    out, sample = microstrain_case
    # instrument fitted on the (simulated) calibrant, held: microstrain within 5 % (measured -0.3 %)
    rec = _one_phase_recipe(out / "with.yaml", {"instrument": "cal.instprm"})
    res = CliRunner().invoke(app, ["refine", str(sample), "--recipe", str(rec), "-o", str(out / "with.nc")])
    assert res.exit_code == 0, res.output
    ds = xr.load_dataset(out / "with.nc", engine="h5netcdf")
    mu = float(ds["microstrain"].sel(phase="H2").values[0])
    assert abs(mu / MU_TRUE - 1) < 0.05, mu
    assert "microstrain_warning" not in ds.attrs and ds.attrs["instrument_profile"] == "calibrant: cal.instprm"
    assert "microstrain warning" not in res.output and "H2 microstrain" in res.output  # value + correlations
    # the recipe's rough profile, W, X, Y refined with the microstrain: the warning names them
    rec = _one_phase_recipe(out / "without.yaml", {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3,
                                                   "refine": ["W", "X", "Y"]})
    res = CliRunner().invoke(app, ["refine", str(sample), "--recipe", str(rec), "-o", str(out / "without.nc")])
    assert res.exit_code == 0, res.output
    ds = xr.load_dataset(out / "without.nc", engine="h5netcdf")
    warning = ds.attrs["microstrain_warning"]
    assert "H2_mustrain refined without an instrument profile from a calibrant" in warning
    assert "W, X, Y refined with it" in warning and "U, V fixed at the recipe's values" in warning
    assert "microstrain warning:" in res.output
    # microstrain's correlations with the refined instrument terms are reported; size not refined
    corr = ds["microstrain_correlation"].sel(phase="H2").isel(frame=0)
    for term in ("W", "X"):  # (Y ends at its bound 0 here: held, no correlation)
        assert np.isfinite(float(corr.sel(corr_with=term))) and abs(float(corr.sel(corr_with=term))) <= 1
    assert np.isnan(float(corr.sel(corr_with="size"))) and np.isnan(float(corr.sel(corr_with="U")))
    assert float(corr.sel(corr_with="microstrain")) == 1.0
    # the report's section (one schema: the single fit's Dataset reads as a series)
    from insitu_xrd.pipeline.recipe import recipe_from_dict
    from insitu_xrd.pipeline.report import broadening_lines

    recipe = recipe_from_dict({"wavelength_A": WL, "calibration": {"poni": "g.poni"},
                               "refinement": yaml.safe_load(rec.read_text())["refinement"]}, out)
    text = "\n".join(broadening_lines(recipe, ds))
    assert "**Warning (microstrain):** H2_mustrain refined without an instrument profile" in text
    assert "| 0 | H2 | " in text and "W " in text.split("| 0 | H2 | ")[1]


def test_recipe_instrument_profile_default_and_opt_out(tmp_path: Path):
    from insitu_xrd.errors import RecipeError
    from insitu_xrd.pipeline.recipe import recipe_from_dict
    from insitu_xrd.pipeline.stages import instrument_attrs

    def recipe(cal: dict, refine=("a", "c", "mustrain", "scale"), profile=None):
        prof = profile or {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3, "refine": ["W", "X", "Y", "zero_deg"]}
        return recipe_from_dict({"wavelength_A": WL, "calibration": {"poni": "g.poni", **cal},
                                 "refinement": {"profile": prof, "phases": [
                                     {"name": "H2", "template": "nmc811", "refine": list(refine)}]}}, tmp_path)

    # microstrain refined + calibrant image: the instrument stage's file, U..Y held, zero still refined
    r = recipe({"image": "ceo2.tif"})
    prof = r.refinement.profile
    assert prof.instrument == "results/instrument.instprm" and prof.refine == ["zero_deg"]
    assert prof.W is None and "H2 microstrain refined" in r._instrument_note
    # X, Y no longer refined: the sample's Lorentzian (size) broadening gets its own term
    assert r.refinement.phases[0].refine[-1] == "size_um" and "size_um refined for H2" in r._instrument_note
    attrs = instrument_attrs(r)
    assert attrs["instrument_profile"].startswith("calibrant: ") and "microstrain_warning" not in attrs
    # opted out: the recipe's profile, and the warning naming the confounded terms
    r = recipe({"image": "ceo2.tif", "instrument_profile": "off"})
    assert r.refinement.profile.instrument is None and r.refinement.profile.refine == ["W", "X", "Y", "zero_deg"]
    assert "W, X, Y refined with it" in instrument_attrs(r)["microstrain_warning"]
    # no calibrant image, or no microstrain/size refined: unchanged (a warning only for the first)
    r = recipe({})
    assert r.refinement.profile.instrument is None and "microstrain_warning" in instrument_attrs(r)
    r = recipe({"image": "ceo2.tif"}, refine=("a", "c", "scale"))
    assert r.refinement.profile.instrument is None and "microstrain_warning" not in instrument_attrs(r)
    # an instrument file given: used as it is
    r = recipe({"image": "ceo2.tif"}, profile={"instrument": "mine.instprm"})
    assert r.refinement.profile.instrument == "mine.instprm" and not r._instrument_note
    # 'fit' without an image, and an unknown value: errors naming the key
    with pytest.raises(RecipeError, match="instrument_profile 'fit' needs calibration.image"):
        recipe({"instrument_profile": "fit"})
    with pytest.raises(RecipeError, match=r"calibration\.instrument_profile.*'auto', 'fit' or 'off'"):
        recipe({"image": "ceo2.tif", "instrument_profile": "yes"})


def test_refine_writes_the_sequential_schema(tmp_path: Path, microstrain_case):
    """`refine -o fit.nc` is a one-frame series: the variables and dims of the sequential results
    (frame x phase, _esd twins, cathode fraction, correlations), plus its curves and matrix."""
    from insitu_xrd.pipeline.sequential import dataset_to_records, records_to_dataset

    out, sample = microstrain_case
    rec = _recipe(tmp_path, {"instrument": str(out / "cal.instprm")})
    x, y, s = _sample_pattern(seed=6)
    pats = xr.Dataset({"intensity": (("frame", "two_theta"), np.stack([y, y])),
                       "sigma": (("frame", "two_theta"), np.stack([s, s])), "status": (("frame",), ["ok", "ok"])},
                      coords={"frame": [0, 1], "two_theta": x, "time_s": ("frame", [0.0, 30.0]),
                              "frame_name": ("frame", ["f0.tif", "f1.tif"])}, attrs={"wavelength_A": WL})
    pats.to_netcdf(tmp_path / "patterns.nc", engine="h5netcdf")
    res = CliRunner().invoke(app, ["refine", str(tmp_path / "patterns.nc"), "--frame", "1", "--recipe", str(rec),
                                   "-o", str(tmp_path / "fit.nc"), "--plot", str(tmp_path / "fit.png")])
    assert res.exit_code == 0, res.output
    fit = xr.load_dataset(tmp_path / "fit.nc", engine="h5netcdf")
    # the series schema of the same recipe: every variable (curves aside) with the same dims
    rr = load_recipe_refinement(rec)
    series = records_to_dataset([None, None], pats, rr.spec)
    for name, var in series.data_vars.items():
        if name in ("calc", "background"):
            continue
        assert name in fit and fit[name].dims == var.dims, name
    assert fit.sizes["frame"] == 1 and int(fit["frame"].values[0]) == 1
    assert [str(p) for p in fit["phase"].values] == ["H2", "Li"]
    assert float(fit["time_s"].values[0]) == 30.0 and str(fit["frame_name"].values[0]) == "f1.tif"
    assert str(fit["status"].values[0]) == "ok"
    for v in ("a", "c", "volume", "microstrain", "phase_fraction", "cathode_fraction", "scale"):
        # a value at a bound (microstrain 0 here) is no estimate: no esd, named in at_bounds
        at_bound = v == "microstrain" and "H2_mustrain" in str(fit["at_bounds"].values[0]).split(", ")
        assert np.isfinite(fit[f"{v}_esd"].sel(phase="H2").values[0]) is not at_bound, v
    assert float(fit["cathode_fraction"].sel(phase="H2").values[0]) == 1.0  # the only cathode phase
    assert np.isnan(fit["cathode_fraction"].sel(phase="Li").values[0])
    assert fit["a"].attrs["units"] == "A"
    assert not [v for v in fit.data_vars if v.startswith("H2_")]  # no per-parameter scalars any more
    # kept as they were: curves on the fitted points, ticks, correlation matrix, R factors in attrs
    assert fit["calc"].dims == ("two_theta",) and fit["phase_curve"].dims == ("phase", "two_theta")
    assert fit["correlation"].dims == ("param", "param2") and "H2_a" in fit["param"].values
    assert float(fit["param_value"].sel(param="H2_a")) == pytest.approx(float(fit["a"].sel(phase="H2").values[0]))
    assert fit.attrs["mode"] == "lebail" and np.isfinite(fit.attrs["rp"]) and json.loads(fit.attrs["cold_start"])["tried"]
    # read back as a series record (e.g. to seed a sequential run from a single fit)
    back = dataset_to_records(fit)[0]
    assert back is not None and back.values["H2_a"] == pytest.approx(float(fit["a"].sel(phase="H2").values[0]))
    assert back.correlations and "H2_mustrain|H2_mustrain" in back.correlations
    assert (tmp_path / "fit.png").stat().st_size > 20_000
