"""Laboratory Ka doublets (issue 18, item 4) and honest weights (item 6).

A Cu Ka1/Ka2 pattern of NMC811 from the forward model (Poisson counts) is fitted to the truth in
Le Bail and Rietveld with the doublet; with Ka1 alone the lattice is biased and chi2 doubles.
The engine's model and Jacobian with the doublet are checked against the forward model and
central differences; the .instprm Lam1/Lam2 items, the recipe's kalpha2, the anode warning,
the refinement.sigma modes and background-subtracted (negative) data are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import (Instrument, PhaseState, calc_pattern, lab_anode_warning, scale_for_weight_fraction,
                                     two_theta_deg_from_d)
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit import Refinement, RefinementSpec

LAM1, LAM2, RATIO = 1.5406, 1.5444, 0.5
PROFILE = dict(U=3.0, V=-2.0, W=4.0, X=0.5, Y=3.0)  # a laboratory diffractometer (centideg^2, centideg)
TRUE = dict(a=2.8650, c=14.310)
ZERO = 0.01
BKG = (200.0, -30.0, 10.0)
X = np.arange(15.0, 100.0, 0.02)


def lab_instrument(**kw) -> Instrument:
    return Instrument(LAM1, zero_deg=ZERO, kalpha2_wavelength_A=LAM2, kalpha2_ratio=RATIO, **PROFILE, **kw)


def lab_state() -> PhaseState:
    # at Cu Ka the transition metals scatter resonantly (f', f''), as the fit's default
    # resonant_scattering: auto models it
    ph = make_template("nmc811", name="H2", **TRUE).at_wavelength(LAM1)
    return PhaseState(ph, scale=scale_for_weight_fraction(1.0, ph, 20.0), mustrain=500.0)


_PATTERN: dict = {}


def cu_pattern():
    """Poisson counts of the doublet pattern (peaks ~5000 counts), made once."""
    if not _PATTERN:
        expected = calc_pattern(X, [lab_state()], lab_instrument(), background_coeffs=BKG).total
        y = np.random.default_rng(1).poisson(expected).astype(float)
        _PATTERN.update(y=y, expected=expected)
    return X, _PATTERN["y"], np.sqrt(np.maximum(_PATTERN["y"], 1.0))


def spec(mode: str, doublet: bool = True, **extra) -> RefinementSpec:
    prof = dict(**PROFILE, refine=["zero_deg"])
    if doublet:
        prof["kalpha2"] = {"wavelength_A": LAM2, "ratio": RATIO}
    phase = dict(name="H2", template="nmc811", a=TRUE["a"] * 1.001, c=TRUE["c"] * 0.999, mustrain=600.0,
                 refine=["a", "c", "scale", "mustrain"])
    return RefinementSpec(mode=mode, background={"chebyshev": 6}, profile=prof, phases=[phase], **extra)


# ------------------------------------------------------------------------------------------------
# forward model


def test_forward_model_puts_each_reflection_at_both_wavelengths() -> None:
    """The doublet pattern is the Ka1 pattern plus ratio x a copy at the Ka2 angles of the same d
    (width at that angle; area = Ka1 area x ratio, not its own Lorentz factor)."""
    state = lab_state()
    single = Instrument(LAM1, zero_deg=ZERO, **PROFILE)
    both = calc_pattern(X, [state], lab_instrument())
    one = calc_pattern(X, [state], single)
    table = both.peaks["H2"]
    np.testing.assert_allclose(table.two_theta_deg, one.peaks["H2"].two_theta_deg)  # the table lists Ka1
    # the Ka2 copy alone, made as the Ka1 pattern of a Ka2 tube with the Ka1 areas x ratio
    ka2_state = PhaseState(state.phase, mustrain=500.0, areas=RATIO * table.area,
                           reflections=type(state.phase.reflections(1.0))(table.hkl, table.multiplicity,
                                                                           table.d_A))
    ka2 = calc_pattern(X, [ka2_state], Instrument(LAM2, zero_deg=ZERO, **PROFILE))
    np.testing.assert_allclose(both.total, one.total + ka2.total, rtol=1e-12, atol=1e-9 * both.total.max())
    # the strongest reflection's Ka2 maximum lies where Bragg's law puts it
    i = int(np.argmax(table.area))
    t2 = two_theta_deg_from_d(table.d_A[i], LAM2) + ZERO
    near = np.abs(X - t2) < 0.5 * (t2 - table.two_theta_deg[i])
    assert abs(X[near][np.argmax((both.total - one.total)[near])] - t2) <= 0.02


def test_engine_model_equals_forward_model_with_doublet() -> None:
    """The engine's Rietveld columns at the truth equal calc_pattern's phase curve (doublet)."""
    from insitu_xrd.fit.model import Problem
    from insitu_xrd.fit.parameters import split_free

    sp = spec("rietveld")
    ref = Refinement(sp, LAM1)
    params = ref.initial_params()
    split_free(params)
    for n, v in (("H2_a", TRUE["a"]), ("H2_c", TRUE["c"]), ("H2_mustrain", 500.0), ("zero_deg", ZERO)):
        params[n].value = v
    prob = Problem(sp, ref.structures, LAM1, ref.instrument.distance_mm, X, X * 0, X * 0 + 1, np.ones_like(X, bool),
                   ["H2"], params, kalpha2=ref.instrument.kalpha2)
    names, cols, fixed, _ = prob.columns(params.valuesdict(), False)
    state = lab_state()
    want = calc_pattern(X, [state], lab_instrument()).phases["H2"] / state.scale
    got = cols[names.index("H2_scale")]
    # the windows differ (the engine's cut at 50 FWHM vs the forward model's): 1e-6 of the peak
    np.testing.assert_allclose(got, want, atol=1e-6 * want.max())


@pytest.mark.parametrize("mode", ["rietveld", "lebail"])
def test_doublet_jacobian_matches_differences(mode: str) -> None:
    """Analytic derivatives of the doublet model (lattice, zero, W, microstrain) against central
    differences of the engine's own model curve."""
    from insitu_xrd.fit.derivatives import ModelDerivatives
    from insitu_xrd.fit.model import Problem
    from insitu_xrd.fit.parameters import split_free

    sp = spec(mode)
    ref = Refinement(sp, LAM1)
    params = ref.initial_params()
    split_free(params)
    x = X[(X > 15) & (X < 70)]
    prob = Problem(sp, ref.structures, LAM1, ref.instrument.distance_mm, x, x * 0, x * 0 + 1, np.ones_like(x, bool),
                   ["H2"], params, kalpha2=ref.instrument.kalpha2)
    vals = params.valuesdict()
    prob.base_vals = vals
    pd = prob.pd["H2"]
    if mode == "lebail":
        pd.areas = np.random.default_rng(0).uniform(1.0, 2.0, len(pd.hkl))
    lin = {"H2_scale": 1.0, "H2_lebail_k": 1.0}
    lin.update({n: 0.0 for n in params if n.startswith("bkg_")})
    names = ["H2_a", "H2_c", "zero_deg", "H2_mustrain"]
    analytic = ModelDerivatives(prob).model_derivatives(vals, lin, names, lebail=mode == "lebail")
    prob.update_fsq = lambda v: None  # |F|^2 at the cell rounded to 1e-4 A: frozen (engine convention)

    def model(v):
        cols_names, cols, fixed, _ = prob.columns(v, mode == "lebail")
        return fixed + sum(lin.get(n, 0.0) * c for n, c in zip(cols_names, cols))

    for n, col in zip(names, analytic):
        h = 1e-6 * max(abs(vals[n]), 1.0)
        vp, vm = dict(vals), dict(vals)
        vp[n] += h
        vm[n] -= h
        fd = (model(vp) - model(vm)) / (2 * h)
        np.testing.assert_allclose(col, fd, rtol=0, atol=2e-4 * np.abs(fd).max(), err_msg=n)


# ------------------------------------------------------------------------------------------------
# fits


@pytest.mark.parametrize("mode", ["lebail", "rietveld"])
def test_cu_doublet_fitted_to_truth_and_ka1_alone_is_biased(mode: str) -> None:
    x, y, s = cu_pattern()
    res = Refinement(spec(mode), LAM1).fit(x, y, s)
    for n in ("a", "c"):
        v, e = res.values[f"H2_{n}"], res.esds[f"H2_{n}"]
        assert abs(v - TRUE[n]) < 2 * e, (mode, n, v, e)
    assert 0.8 < res.gof < 1.25, res.gof
    assert res.kalpha2 == (LAM2, RATIO)
    ka1 = Refinement(spec(mode, doublet=False), LAM1).fit(x, y, s)
    assert ka1.chi2 > 2.0 * res.chi2, (ka1.chi2, res.chi2)
    bias = abs(ka1.values["H2_a"] - TRUE["a"]) / ka1.esds["H2_a"]
    assert bias > 3.0, (ka1.values["H2_a"], ka1.esds["H2_a"])


# ------------------------------------------------------------------------------------------------
# instrument file, recipe, warning


INSTPRM = """#GSAS-II instrument parameter file; do not add/delete items!
Type:PXC
Bank:1.0
Lam1:1.5406
Lam2:1.5444
I(L2)/I(L1):0.5
Zero:0.01
Polariz.:0.7
Azimuth:0.0
U:3.0
V:-2.0
W:4.0
X:0.5
Y:3.0
Z:0.0
SH/L:0.002
"""


def test_instprm_with_lam1_lam2_is_read_and_written(tmp_path) -> None:
    from insitu_xrd.io.instprm import format_instprm, parse_instprm, read_instrument

    path = tmp_path / "cu.instprm"
    path.write_text(INSTPRM)
    inst = read_instrument(path, wavelength_A=1.5406)
    assert inst.wavelength_A == 1.5406 and inst.kalpha2 == (1.5444, 0.5)
    assert (inst.U, inst.W, inst.Y, inst.zero_deg, inst.sh_l) == (3.0, 4.0, 3.0, 0.01, 0.002)
    again = parse_instprm(format_instprm(inst))
    assert again.is_doublet and "Lam" not in again.items
    assert (again.items["Lam1"], again.items["Lam2"], again.items["I(L2)/I(L1)"]) == (1.5406, 1.5444, 0.5)
    with pytest.raises(InsituXRDError, match="Lam = 1.5406 A but the data wavelength is 1.5444"):
        read_instrument(path, wavelength_A=1.5444)


def test_refinement_takes_the_doublet_of_the_instrument_file(tmp_path) -> None:
    from insitu_xrd.pipeline.refine_setup import make_refinement, wavelength_warning

    (tmp_path / "cu.instprm").write_text(INSTPRM)
    sp = RefinementSpec(profile={"instrument": "cu.instprm"}, phases=[{"name": "H2", "template": "nmc811"}])
    ref = make_refinement(sp, 1.5406, tmp_path)
    assert ref.instrument.kalpha2 == (1.5444, 0.5) and ref.instrument.sh_l == 0.002
    assert wavelength_warning(sp, 1.5406, tmp_path) == ""


def test_recipe_kalpha2_and_anode_warning(tmp_path) -> None:
    import yaml

    from insitu_xrd.pipeline.recipe import recipe_from_dict
    from insitu_xrd.pipeline.refine_setup import load_recipe_refinement, make_refinement, wavelength_warning
    from insitu_xrd.pipeline.stages import instrument_attrs

    base = {"name": "lab", "wavelength_A": 1.5406, "patterns": {"files": "*.xy"},
            "refinement": {"phases": [{"name": "H2", "template": "nmc811"}]}}
    recipe = recipe_from_dict({**base, "kalpha2": {"wavelength_A": 1.5444, "ratio": 0.5}}, tmp_path)
    assert recipe.refinement.profile.kalpha2.wavelength_A == 1.5444
    assert make_refinement(recipe.refinement, 1.5406, tmp_path).instrument.kalpha2 == (1.5444, 0.5)
    assert "wavelength_warning" not in instrument_attrs(recipe)
    plain = recipe_from_dict(base, tmp_path)
    warning = instrument_attrs(plain)["wavelength_warning"]
    assert "Cu Ka1" in warning and "kalpha2" in warning and "\n" not in warning
    # the refine command's reader of the recipe
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, "kalpha2": {"wavelength_A": 1.5444}}))
    rr = load_recipe_refinement(path)
    assert rr.spec.profile.kalpha2.ratio == 0.5 and wavelength_warning(rr.spec, 1.5406, tmp_path) == ""
    path.write_text(yaml.safe_dump({**base, "kalpha2": {"wavelength_A": 1.5444, "ratio": 2}}))
    with pytest.raises(InsituXRDError, match="kalpha2.ratio"):
        load_recipe_refinement(path)
    # every anode, and only near its Ka1 line
    for lam in (1.5406, 1.7890, 0.7093, 0.5594, 2.2897, 1.9360):
        assert lab_anode_warning(lam, None)
        assert lab_anode_warning(lam, lam * 1.0025) == ""
    assert lab_anode_warning(0.1173, None) == "" and lab_anode_warning(1.5444, None) == ""


# ------------------------------------------------------------------------------------------------
# weights


def test_sigma_modes_are_reported() -> None:
    from insitu_xrd.fit.engine import weights

    x, y, s = cu_pattern()
    given = s * 1.1
    auto = Refinement(spec("rietveld"), LAM1).fit(x, y, given)
    assert auto.sigma_source == "from_file" and auto.to_dataset().attrs["sigma_source"] == "from_file"
    np.testing.assert_array_equal(auto.sigma, given[np.argsort(x)])
    none = Refinement(spec("rietveld"), LAM1).fit(x, y, None)
    assert none.sigma_source == "poisson"
    np.testing.assert_allclose(none.sigma, np.sqrt(np.maximum(y, 1.0)))
    # poisson ignores the file's esds; unit weighs every point alike
    assert weights("poisson", y, given)[1] == "poisson"
    np.testing.assert_array_equal(weights("poisson", y, given)[0], np.sqrt(np.maximum(y, 1.0)))
    unit = Refinement(spec("rietveld", sigma="unit"), LAM1).fit(x, y, given)
    assert unit.sigma_source == "unit" and np.all(unit.sigma == 1.0)
    # unweighted least squares on counts: still unbiased (within 2e-5 relative here), but its esds
    # assume equal variances and are too small for Poisson data (why it is not the default)
    assert abs(unit.values["H2_a"] - TRUE["a"]) < 2e-5 * TRUE["a"]
    with pytest.raises(InsituXRDError, match="from_file but the data have no esd column"):
        Refinement(spec("rietveld", sigma="from_file"), LAM1).fit(x, y, None)
    with pytest.raises(ValueError, match="sigma"):
        spec("rietveld", sigma="sqrt")


def test_background_subtracted_data_get_honest_weights() -> None:
    """Counts minus their known background (negative points, no esds): the weights sqrt(max(I, 0)
    + s0^2) give GoF ~ 1 and the truth within 2 esd; sqrt(max(I, 1)) would weigh the background
    points ~ sqrt(bkg) too much (GoF far above 1 there) - the old default."""
    from insitu_xrd.core.pattern import chebyshev_background
    from insitu_xrd.fit.engine import weights

    x, y, _s = cu_pattern()
    net = y - chebyshev_background(x, BKG)
    assert (net < 0).mean() > 0.2
    sig, source = weights("auto", net, None)
    assert source == "poisson_background_subtracted"
    low = _PATTERN["expected"] - chebyshev_background(x, BKG) < 1.0  # background-only points
    # s0 is the background's Poisson noise: sigma there ~ sqrt(bkg) (within 5 %)
    np.testing.assert_allclose(np.median(sig[low]), np.sqrt(np.median(chebyshev_background(x, BKG)[low])), rtol=0.05)
    res = Refinement(spec("rietveld"), LAM1).fit(x, net, None)
    assert res.sigma_source == "poisson_background_subtracted"
    assert any("negative intensities" in w for w in res.warnings)
    assert 0.8 < res.gof < 1.3, res.gof
    for n in ("a", "c"):
        assert abs(res.values[f"H2_{n}"] - TRUE[n]) < 2 * res.esds[f"H2_{n}"]
    old = np.sqrt(np.maximum(net, 1.0))
    assert np.median(old[low]) < 0.2 * np.median(sig[low])  # the weight of 1 per point it replaces


def test_instrument_profile_of_a_lab_calibrant_with_the_doublet(tmp_path) -> None:
    """`fit_instrument` with kalpha2 recovers U..Y of a Cu Ka LaB6 pattern and writes Lam1/Lam2."""
    from insitu_xrd.fit.instrument import fit_instrument
    from insitu_xrd.io.instprm import read_instrument, write_instrument

    lab6 = make_template("lab6")
    inst = lab_instrument()
    y = np.random.default_rng(3).poisson(calc_pattern(X, [PhaseState(lab6, scale=2e-3, mustrain=0.0)], inst,
                                                      background_coeffs=(100.0,)).total).astype(float)
    fit = fit_instrument(X, y, None, "LaB6", LAM1, refine=("U", "V", "W", "X", "Y", "zero_deg"), kalpha2=(LAM2, RATIO))
    r = fit.result
    assert 0.8 < r.gof < 1.25 and fit.instrument.kalpha2 == (LAM2, RATIO)
    for n, true in (("W", PROFILE["W"]), ("Y", PROFILE["Y"]), ("zero_deg", ZERO)):
        assert abs(r.values[n] - true) < 3 * r.esds[n], (n, r.values[n], r.esds[n])
    write_instrument(tmp_path / "cu.instprm", fit.instrument)
    assert read_instrument(tmp_path / "cu.instprm", wavelength_A=LAM1).kalpha2 == (LAM2, RATIO)


def test_refine_cli_reports_weights_and_warns_on_a_single_cu_line(tmp_path) -> None:
    """`insitu-xrd refine` of a 2-column Cu file: the weights are named (poisson, no esd column)
    in the output and the fit file, and a recipe without kalpha2 is warned about; with kalpha2
    the doublet is fitted and there is no warning."""
    import xarray as xr
    import yaml
    from typer.testing import CliRunner

    from insitu_xrd.cli.main import app

    x, y, _s = cu_pattern()
    np.savetxt(tmp_path / "cu.xy", np.column_stack([x, y]), header="2theta intensity")
    refinement = {"mode": "rietveld", "background": {"chebyshev": 6}, "profile": dict(**PROFILE, refine=["zero_deg"]),
                  "phases": [dict(name="H2", template="nmc811", a=TRUE["a"] * 1.001, c=TRUE["c"] * 0.999,
                                  mustrain=600.0, refine=["a", "c", "scale", "mustrain"])]}
    outputs = {}
    for label, extra in (("single", {}), ("doublet", {"kalpha2": {"wavelength_A": LAM2, "ratio": RATIO}})):
        recipe = tmp_path / f"{label}.yaml"
        recipe.write_text(yaml.safe_dump({"wavelength_A": LAM1, "refinement": refinement, **extra}))
        out = tmp_path / f"{label}.nc"
        res = CliRunner().invoke(app, ["refine", str(tmp_path / "cu.xy"), "--recipe", str(recipe), "-o", str(out),
                                       "--no-lattice-search", "--restarts", "0"])
        assert res.exit_code == 0, res.output
        assert "weights (sigma): poisson" in res.output
        outputs[label] = (res.output, xr.load_dataset(out, engine="h5netcdf").attrs)
    text, attrs = outputs["single"]
    assert "wavelength warning" in text and "Cu Ka1" in attrs["wavelength_warning"]
    assert attrs["sigma_source"] == "poisson"
    text, attrs = outputs["doublet"]
    assert "wavelength warning" not in text and "wavelength_warning" not in attrs
    assert attrs["kalpha2_wavelength_A"] == LAM2 and attrs["sigma_source"] == "poisson"
    assert outputs["doublet"][1]["gof"] < 0.5 * outputs["single"][1]["gof"]
