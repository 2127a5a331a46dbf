"""Anisotropic broadening models (core.broadening) against their definitions and GSAS-II's terms."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from insitu_xrd.core.broadening import (
    cos_angle_to_axis,
    generalized_mustrain,
    stephens_names,
    stephens_terms,
    uniaxial_mustrain,
    uniaxial_size_um,
)
from insitu_xrd.core.symmetry import reciprocal_metric_and_derivatives

# (space group, number of Stephens terms): Stephens (1999) Table 1 by Laue class
COUNTS = [("F m -3 m", 2), ("P m -3", 2), ("P 63/m m c", 3), ("P 6/m", 3), ("R -3 m:H", 4), ("P -3 1 m", 4),
          ("P -3", 5), ("R -3 m:R", 4), ("P 4/m m m", 4), ("P 4/m", 5), ("C m c m", 6), ("C 1 2/m 1", 9),
          ("P 1 1 2/m", 9), ("P -1", 15)]


@pytest.mark.parametrize("hm, n", COUNTS)
def test_stephens_terms_are_the_laue_invariants(hm: str, n: int) -> None:
    sg = gemmi.find_spacegroup_by_name(hm)
    assert len(stephens_names(sg)) == n
    rng = np.random.default_rng(3)
    h = rng.integers(-6, 7, size=(50, 3))
    t = stephens_terms(sg, h)
    for op in sg.operations().sym_ops:
        r = np.rint(np.array(op.rot) / gemmi.Op.DEN).astype(int)
        np.testing.assert_allclose(stephens_terms(sg, h @ r), t, atol=1e-9)
    # independent forms: the terms at many reflections have full rank
    assert np.linalg.matrix_rank(stephens_terms(sg, rng.integers(-6, 7, size=(200, 3)))) == n


def test_stephens_terms_match_gsas2_forms() -> None:
    """GSAS-II's names and weights (MustrainCoeff): cubic h^4+k^4+l^4 and 3(h^2k^2+h^2l^2+k^2l^2);
    hexagonal (h^2+hk+k^2)^2, l^4, 3 l^2 (h^2+hk+k^2); orthorhombic h^4, k^4, l^4, 3h^2k^2, 3h^2l^2, 3k^2l^2;
    monoclinic b unique adds 2h^3l, 2hl^3, 4hk^2l."""
    h = np.array([[1, 2, 3], [2, -1, 1], [3, 0, -2], [1, 1, 1]])
    a, b, c = h.T
    cub = gemmi.find_spacegroup_by_name("F m -3 m")
    assert stephens_names(cub) == ("S400", "S220")
    np.testing.assert_allclose(stephens_terms(cub, h), np.stack([a**4 + b**4 + c**4, 3 * ((a * b) ** 2 + (a * c) ** 2 + (b * c) ** 2)], 1))
    hexa = gemmi.find_spacegroup_by_name("P 63/m m c")
    assert stephens_names(hexa) == ("S400", "S004", "S202")
    q = a**2 + a * b + b**2
    np.testing.assert_allclose(stephens_terms(hexa, h), np.stack([q**2, c**4, 3 * c**2 * q], 1))
    mono = gemmi.find_spacegroup_by_name("C 1 2/m 1")
    assert stephens_names(mono) == ("S400", "S040", "S004", "S220", "S202", "S022", "S103", "S301", "S121")
    want = np.stack([a**4, b**4, c**4, 3 * (a * b) ** 2, 3 * (a * c) ** 2, 3 * (b * c) ** 2, 2 * a * c**3, 2 * a**3 * c,
                     4 * a * b**2 * c], 1)
    np.testing.assert_allclose(stephens_terms(mono, h), want)


def test_generalized_reduces_to_isotropic_for_a_cubic_phase() -> None:
    """Cubic: with S400 = mu^2 / a^4 and S220 = 2 S400 / 3 the form is mu^2 (h^2+k^2+l^2)^2 / a^4 =
    mu^2 / d^4 ((h^2+k^2+l^2)^2 = sum h^4 + 2 sum h^2k^2), so the effective microstrain is mu for
    every reflection."""
    sg = gemmi.find_spacegroup_by_name("F m -3 m")
    a, mu = 4.05, 1200.0
    h = np.array([[1, 1, 1], [2, 0, 0], [2, 2, 0], [3, 1, 1], [4, 2, 2]])
    d = a / np.sqrt((h**2).sum(1))
    s400 = mu**2 / a**4
    got = generalized_mustrain(sg, h, d, [s400, 2.0 * s400 / 3.0])
    np.testing.assert_allclose(got, mu, rtol=1e-12)


def test_uniaxial_limits_and_angle() -> None:
    cell = (2.87, 2.87, 14.2, 90.0, 90.0, 120.0)
    gs, _ = reciprocal_metric_and_derivatives(cell)
    h = np.array([[0, 0, 3], [1, 1, 0], [1, 0, 4]])
    cos_p = cos_angle_to_axis(h, [0, 0, 1], gs)
    np.testing.assert_allclose(np.abs(cos_p[:2]), [1.0, 0.0], atol=1e-12)
    mu = uniaxial_mustrain(cos_p, equatorial=800.0, axial=2000.0)
    np.testing.assert_allclose(mu[:2], [2000.0, 800.0])
    assert 800.0 < mu[2] < 2000.0
    size = uniaxial_size_um(cos_p, equatorial_um=0.2, axial_um=0.05)
    np.testing.assert_allclose(size[:2], [0.05, 0.2])


# ------------------------------------------------------------------------------------------------
# fits of anisotropically broadened patterns (core forward model + Poisson noise)

from insitu_xrd.core.crystal import make_template  # noqa: E402
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction  # noqa: E402
from insitu_xrd.fit import Refinement, RefinementSpec  # noqa: E402

LAM = 0.1173
PROFILE = dict(U=1.2, V=-0.4, W=0.9, X=0.15, Y=0.3)
H2 = dict(a=2.8650, c=14.310)


def nmc_pattern(seed: int, **broadening):
    rng = np.random.default_rng(seed)
    x = np.linspace(1.2, 11.8, 2750)
    ph = make_template("nmc811", name="H2", **H2)
    state = PhaseState(ph, scale=scale_for_weight_fraction(1.0, ph, 1.0), **broadening)
    y = rng.poisson(calc_pattern(x, [state], Instrument(LAM, zero_deg=0.002, **PROFILE),
                                 background_coeffs=(400.0, -50.0, 30.0)).total).astype(float)
    return x, y, np.sqrt(np.maximum(y, 1.0))


def nmc_spec(mode: str, refine: list[str], **phase) -> RefinementSpec:
    ph = dict(name="H2", template="nmc811", a=H2["a"] * 1.001, c=H2["c"] * 0.999, refine=["a", "c", "scale"] + refine,
              **phase)
    return RefinementSpec(mode=mode, range_2theta_deg=[1.2, 11.8], background={"chebyshev": 6},
                          profile=dict(**PROFILE, refine=["zero_deg"]), phases=[ph])


@pytest.mark.parametrize("mode", ["lebail", "rietveld"])
def test_uniaxial_microstrain_recovered_and_needed(mode: str) -> None:
    """00l broadened 3x more than hk0 (c-axis strain distribution): the uniaxial model recovers
    both values within 2 esd; the isotropic model leaves a misfit (chi2 up by > 20 %)."""
    x, y, s = nmc_pattern(21, mustrain=700.0, mustrain_axial=2100.0, mustrain_axis=(0, 0, 1))
    res = Refinement(nmc_spec(mode, ["mustrain", "mustrain_axial"], mustrain_model="uniaxial", mustrain=1000.0),
                     LAM).fit(x, y, s)
    for name, true in (("H2_mustrain", 700.0), ("H2_mustrain_axial", 2100.0), ("H2_a", H2["a"]), ("H2_c", H2["c"])):
        assert abs(res.values[name] - true) < 2 * res.esds[name], (mode, name, res.values[name], res.esds[name])
    iso = Refinement(nmc_spec(mode, ["mustrain"], mustrain=1000.0), LAM).fit(x, y, s)
    assert iso.chi2 > 1.2 * res.chi2, (iso.chi2, res.chi2)


def test_generalized_microstrain_recovered() -> None:
    """Stephens terms of the -3m1 class from a pattern made with them (Rietveld)."""
    sg = make_template("nmc811").spacegroup
    from insitu_xrd.core.broadening import isotropic_stephens

    iso = isotropic_stephens(sg, (H2["a"], H2["a"], H2["c"], 90, 90, 120), 900.0)
    truth = dict(iso, S004=iso["S004"] * 4.0)  # 00l broadened 2x
    x, y, s = nmc_pattern(22, mustrain_S=truth)
    res = Refinement(nmc_spec("rietveld", ["mustrain_S"], mustrain_model="generalized", mustrain=900.0), LAM).fit(x, y, s)
    for n in ("S400", "S004"):
        v, e = res.values[f"H2_mustrain_{n}"], res.esds[f"H2_mustrain_{n}"]
        assert abs(v - truth[n]) < 2 * e, (n, v, e, truth[n])
    assert abs(res.values["H2_c"] - H2["c"]) < 2 * res.esds["H2_c"]
    assert "H2_mustrain" not in res.params  # no single microstrain in this model


def test_uniaxial_size_recovered() -> None:
    """Platelets thin along c (size 0.08 um along [001], 0.4 um across), Le Bail."""
    x, y, s = nmc_pattern(23, mustrain=500.0, size_um=0.4, size_axial_um=0.08, size_axis=(0, 0, 1))
    spec = nmc_spec("lebail", ["size_um", "size_axial_um"], size_model="uniaxial", size_um=0.3, size_axial_um=0.1,
                    mustrain=500.0, size_mix=1.0)
    res = Refinement(spec, LAM).fit(x, y, s)
    for name, true in (("H2_size_um", 0.4), ("H2_size_axial_um", 0.08)):
        assert abs(res.values[name] - true) < 2 * res.esds[name], (name, res.values[name], res.esds[name])


def test_anisotropic_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="mustrain_model: uniaxial"):
        nmc_spec("lebail", ["mustrain_axial"])
    with pytest.raises(Exception, match="not terms of its Laue class"):
        Refinement(nmc_spec("lebail", ["mustrain_S"], mustrain_model="generalized", mustrain_S={"S220": 1.0}),
                   LAM).initial_params()


def test_simulator_switches_on_00l_broadening() -> None:
    """The scenario's mustrain_axial_factor reaches the pattern (truth and a fit of it) and the
    recipe `insitu-xrd simulate --mustrain-axial-factor` writes."""
    import dataclasses

    from insitu_xrd.simulate.dataset import DatasetSpec, _recipe
    from insitu_xrd.simulate.pattern1d import simulate_pattern_1d
    from insitu_xrd.simulate.scenario import BARE_PARAMS, ChargeScenario

    scenario = ChargeScenario(params=dataclasses.replace(BARE_PARAMS, mustrain_axial_factor=3.0))
    x = np.linspace(1.2, 11.8, 2750)
    sim = simulate_pattern_1d(0.8, x, scenario=scenario, seed=5)
    h2 = sim.truth["phases"]["H2"]
    assert h2["mustrain_axial"] == pytest.approx(3.0 * h2["mustrain"])
    recipe = _recipe(DatasetSpec(mustrain_axial_factor=3.0))
    h2_recipe = recipe["refinement"]["phases"][0]
    assert h2_recipe["mustrain_model"] == "uniaxial" and "mustrain_axial" in h2_recipe["refine"]
    assert "mustrain_model" not in _recipe(DatasetSpec())["refinement"]["phases"][0]
