"""Numerical core against closed-form results: d spacings, multiplicities, |F|^2, profiles, areas."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.core.crystal import form_factor, make_template, parse_hkl_label
from insitu_xrd.core.pattern import (
    DiffusePeak,
    Instrument,
    PhaseState,
    calc_pattern,
    lorentz_factor,
    scale_for_weight_fraction,
    two_theta_deg_from_d,
    weight_fractions,
)
from insitu_xrd.core.profiles import peak_fwhm_eta, pseudo_voigt, pseudo_voigt_dx0, tch_fwhm_eta
from insitu_xrd.errors import InsituXRDError


def test_hexagonal_d_spacing_and_multiplicities() -> None:
    phase = make_template("nmc811", a=2.872, c=14.20)
    refl = phase.reflections(1.2)
    by_label = dict(zip(refl.labels(), zip(refl.multiplicity, refl.d_A)))
    # R-3m obverse: -h+k+l = 3n; the familiar layered-oxide reflections and multiplicities.
    for label, mult in {"003": 2, "101": 6, "006": 2, "012": 6, "104": 6, "015": 6, "107": 6, "018": 6, "110": 6, "113": 12}.items():
        assert by_label[label][0] == mult, label
    for label in ("001", "002", "100", "102", "111"):
        assert label not in by_label
    h, k, l = 1, 0, 4
    d_expected = 1.0 / np.sqrt(4.0 / 3.0 * (h * h + h * k + k * k) / 2.872**2 + l * l / 14.20**2)
    assert by_label["104"][1] == pytest.approx(d_expected, rel=1e-12)


def test_cubic_multiplicities_and_extinctions() -> None:
    refl = make_template("ceo2").reflections(1.0)
    assert refl.labels()[:5] == ["111", "200", "220", "311", "222"]
    assert list(refl.multiplicity[:5]) == [8, 6, 12, 24, 8]
    bcc = make_template("li_metal").reflections(1.0)
    assert bcc.labels()[:3] == ["110", "200", "211"]


def test_ceo2_structure_factors_closed_form() -> None:
    phase = make_template("ceo2", biso_A2=0.0)
    hkl = np.array([[1, 1, 1], [2, 0, 0], [2, 2, 0]])
    f_sq = phase.structure_factor_sq(hkl)
    s = 0.5 / phase.d_spacing(hkl)
    f_ce = form_factor("Ce", s)
    f_o = form_factor("O", s)
    # Fluorite: all odd, the O pairs at r and 3r cancel: 16 f_Ce^2; h+k+l = 4n+2: 4f_Ce - 8f_O;
    # h+k+l = 4n: 4f_Ce + 8f_O.
    expected = np.array([16 * f_ce[0] ** 2, (4 * f_ce[1] - 8 * f_o[1]) ** 2, (4 * f_ce[2] + 8 * f_o[2]) ** 2])
    np.testing.assert_allclose(f_sq, expected, rtol=1e-9)


def test_debye_waller_and_cell_mass() -> None:
    cold = make_template("ni", biso_A2=0.0)
    warm = make_template("ni", biso_A2=0.5)
    hkl = np.array([[2, 2, 0]])
    s = 0.5 / cold.d_spacing(hkl)
    ratio = warm.structure_factor_sq(hkl) / cold.structure_factor_sq(hkl)
    np.testing.assert_allclose(ratio, np.exp(-2 * 0.5 * s**2), rtol=1e-12)
    assert cold.cell_mass_amu == pytest.approx(4 * 58.6934, rel=1e-4)
    nmc = make_template("nmc811", li_occupancy=1.0, ni_li_mixing=0.0)
    formula = 6.941 + 0.8 * 58.6934 + 0.1 * 54.938 + 0.1 * 58.933 + 2 * 15.999
    assert nmc.cell_mass_amu == pytest.approx(3 * formula, rel=1e-3)


def test_with_cell_keeps_symmetry() -> None:
    nmc = make_template("nmc811").with_cell(a=2.85, c=14.4)
    assert nmc.cell[:3] == (2.85, 2.85, 14.4)
    assert nmc.volume_A3 == pytest.approx(np.sqrt(3) / 2 * 2.85**2 * 14.4)
    assert make_template("ni").with_cell(a=3.6).cell[:3] == (3.6, 3.6, 3.6)


def test_bad_template_and_label() -> None:
    with pytest.raises(InsituXRDError, match="allowed"):
        make_template("nmc622")
    assert parse_hkl_label("1,0,10") == (1, 0, 10)
    with pytest.raises(InsituXRDError):
        parse_hkl_label("10")


def test_pseudo_voigt_normalised_and_derivative() -> None:
    x = np.linspace(-60, 60, 400001)
    for eta in (0.0, 0.4, 1.0):
        area = np.trapezoid(pseudo_voigt(x, 0.3, 0.05, eta), x)
        assert area == pytest.approx(1.0, abs=1e-3 if eta > 0 else 1e-9)
    xs = np.linspace(-0.2, 0.2, 41)
    h = 1e-7
    numeric = (pseudo_voigt(xs, 0.01 + h, 0.05, 0.3) - pseudo_voigt(xs, 0.01 - h, 0.05, 0.3)) / (2 * h)
    np.testing.assert_allclose(pseudo_voigt_dx0(xs, 0.01, 0.05, 0.3), numeric, rtol=1e-5, atol=1e-3)


def test_tch_limits() -> None:
    fwhm, eta = tch_fwhm_eta(np.array([0.1, 0.0]), np.array([0.0, 0.1]))
    np.testing.assert_allclose(fwhm, [0.1, 0.1])
    np.testing.assert_allclose(eta, [0.0, 1.0], atol=1e-5)


def test_gsas_microstrain_and_size_conventions() -> None:
    tth = np.array([10.0])
    theta = np.radians(5.0)
    # Pure microstrain (mixing 1): Lorentzian FWHM(2theta, rad) = mu * 1e-6 * tan(theta).
    fwhm, eta = peak_fwhm_eta(tth, 0.1173, 0, 0, 1e-12, 0, 0, mustrain=1000.0)
    assert eta[0] == pytest.approx(1.0, abs=1e-4)
    assert np.radians(fwhm[0]) == pytest.approx(1000e-6 * np.tan(theta), rel=1e-4)
    # Pure size (Scherrer K = 1): FWHM(2theta, rad) = lambda / (L cos(theta)).
    fwhm, _ = peak_fwhm_eta(tth, 0.1173, 0, 0, 1e-12, 0, 0, size_um=0.1)
    assert np.radians(fwhm[0]) == pytest.approx(0.1173 / (0.1e4 * np.cos(theta)), rel=1e-4)
    # Instrument: W alone is the Gaussian variance in centideg^2.
    fwhm, eta = peak_fwhm_eta(tth, 0.1173, 0, 0, 4.0, 0, 0)
    assert fwhm[0] == pytest.approx(np.sqrt(8 * np.log(2) * 4.0) / 100.0, rel=1e-9)
    assert eta[0] == pytest.approx(0.0)


def test_peak_area_convention_and_weight_fractions() -> None:
    inst = Instrument(0.1173, U=0.0, V=0.0, W=0.5, X=0.1, Y=0.0)
    ni = make_template("ni")
    state = PhaseState(ni, scale=2e-3)
    x = np.linspace(2.0, 6.0, 40001)
    comps = calc_pattern(x, [state], inst)
    table = comps.peaks["ni"]
    i111 = 0
    expected_area = 2e-3 * 8 * ni.structure_factor_sq(np.array([[1, 1, 1]]))[0] * lorentz_factor(table.two_theta_deg[i111])
    assert table.area[i111] == pytest.approx(expected_area, rel=1e-12)
    tth111 = float(two_theta_deg_from_d(ni.d_spacing(np.array([[1, 1, 1]])), 0.1173)[0])
    window = np.abs(x - tth111) < 0.2
    measured = np.trapezoid(comps.total[window], x[window])
    # The window holds all but the far Lorentzian tails (eta ~ 0.1 here).
    assert measured == pytest.approx(expected_area, rel=0.01)

    h2 = make_template("nmc811", name="H2")
    h3 = make_template("nmc811", name="H3", a=2.82, c=14.0)
    phases = {"H2": h2, "H3": h3}
    scales = {n: scale_for_weight_fraction(w, phases[n]) for n, w in (("H2", 0.7), ("H3", 0.3))}
    fractions = weight_fractions(scales, phases)
    assert fractions["H2"] == pytest.approx(0.7) and fractions["H3"] == pytest.approx(0.3)


def test_zero_shift_and_diffuse_follow_lattice() -> None:
    x = np.linspace(0.3, 6.3, 12001)
    h2 = make_template("nmc811", name="H2")
    diffuse = DiffusePeak("H2", ("104",), area=10.0, fwhm_deg=0.2, eta=0.5)
    base = calc_pattern(x, [PhaseState(h2, scale=0.0)], Instrument(0.1173, zero_deg=0.0), diffuse=[diffuse])
    shifted = calc_pattern(x, [PhaseState(h2.with_cell(a=2.84), scale=0.0)], Instrument(0.1173, zero_deg=0.01), diffuse=[diffuse])
    c0 = x[np.argmax(base.diffuse["H2_104"])]
    c1 = x[np.argmax(shifted.diffuse["H2_104"])]
    d104 = h2.d_spacing(np.array([[1, 0, 4]]))[0]
    d104_new = h2.with_cell(a=2.84).d_spacing(np.array([[1, 0, 4]]))[0]
    expected = two_theta_deg_from_d(d104_new, 0.1173) - two_theta_deg_from_d(d104, 0.1173) + 0.01
    assert c1 - c0 == pytest.approx(expected, abs=1e-3)
    # +/- 3 deg around the centre holds all but 1 % of a 0.2 deg wide eta = 0.5 pseudo-Voigt.
    assert np.trapezoid(base.diffuse["H2_104"], x) == pytest.approx(10.0 * (1 - 0.5 * (1 - 2 / np.pi * np.arctan(30.0))), rel=2e-3)


@pytest.mark.parametrize("tth, fwhm, sh_l", [(1.5, 0.03, 0.002), (3.0, 0.02, 0.01), (20.0, 0.05, 0.02), (150.0, 0.1, 0.02)])
def test_fcj_asymmetry_against_direct_convolution(tth: float, fwhm: float, sh_l: float) -> None:
    """GSAS-II SH/L profile = FCJ (1994) convolution with S/L = H/L = SH/L/2, computed here directly
    from the FCJ weight W/(h cos 2phi), W = H + S - h, by brute-force quadrature over 2phi."""
    from insitu_xrd.core.profiles import fcj_extent_deg, fcj_pseudo_voigt

    eta = 0.4
    p = np.radians(tth)
    # FCJ eq. 6: cos(2phi_min) = cos(2theta) sqrt(((H + S)/L)^2 + 1)
    phi_min = np.arccos(np.cos(p) * np.sqrt(sh_l**2 + 1.0))
    assert np.degrees(abs(p - phi_min)) == pytest.approx(float(fcj_extent_deg(tth, sh_l)), rel=1e-6)
    # 2phi grid from 2phi_min to 2theta, midpoints (integrable 1/sqrt singularity at 2theta)
    edges = np.linspace(phi_min, p, 400001)
    phi = 0.5 * (edges[1:] + edges[:-1])
    h_over_l = np.sqrt(np.cos(phi) ** 2 / np.cos(p) ** 2 - 1.0)
    weight = np.clip(sh_l - h_over_l, 0, None) / (h_over_l * np.cos(phi)) * np.abs(np.diff(edges))
    weight /= weight.sum()
    x = np.linspace(tth - 8 * fwhm - np.degrees(abs(p - phi_min)), tth + 8 * fwhm + np.degrees(abs(p - phi_min)), 801)
    direct = np.zeros_like(x)
    for centre, w in zip(np.degrees(phi)[::200], np.add.reduceat(weight, np.arange(0, weight.size, 200))):
        direct += w * pseudo_voigt(x, centre, fwhm, eta)
    model = fcj_pseudo_voigt(x, tth, fwhm, eta, sh_l)
    np.testing.assert_allclose(model, direct, atol=2e-3 * direct.max())
    # the tail is on the low-angle side below 90 deg (centroid shift ~ -extent/6), high-angle above
    centroid = np.sum(x * model) / np.sum(model) - tth
    assert np.sign(centroid) == (-1 if tth < 90 else 1)
    assert fcj_pseudo_voigt(x, tth, fwhm, eta, 0.0) == pytest.approx(pseudo_voigt(x, tth, fwhm, eta))


def test_calc_pattern_applies_instrument_sh_l() -> None:
    """calc_pattern's peaks carry the instrument's SH/L asymmetry; area is unchanged."""
    x = np.linspace(1.0, 4.0, 30001)
    ni = make_template("ni")
    sym = calc_pattern(x, [PhaseState(ni, scale=1e-3)], Instrument(0.1173, W=0.5, X=0.1)).total
    asym = calc_pattern(x, [PhaseState(ni, scale=1e-3)], Instrument(0.1173, W=0.5, X=0.1, sh_l=0.01)).total
    assert np.trapezoid(asym, x) == pytest.approx(np.trapezoid(sym, x), rel=1e-3)
    assert np.trapezoid(x * asym, x) < np.trapezoid(x * sym, x)  # intensity moved to low angle


def test_half_maximum_span_of_a_sampled_gaussian():
    from insitu_xrd.core.profiles import half_maximum_span

    x = np.linspace(-5.0, 5.0, 1001)
    y = np.exp(-0.5 * (x / 1.0) ** 2)
    lo, hi = half_maximum_span(y, 500, 0.5)
    assert x[hi] - x[lo] == pytest.approx(2.3548, abs=0.03)  # FWHM of a unit-sigma Gaussian
    assert half_maximum_span(np.array([3.0, 2.0, 1.0]), 0, 0.5) == (0, 2)  # clipped at the ends
