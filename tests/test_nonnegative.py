"""Linear parameters with a physical sign (phase scales, hump and diffuse areas, Le Bail
intensities) are >= 0 (issue 20, item 4): a component the pattern does not need ends at 0,
reported at its bound (esd NaN, in ``at_bounds``); where nothing is negative the solve is the
unconstrained one, bit for bit (and a fit that ends with nothing negative is the unconstrained
fit: the bound is applied from the point where one ended negative)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from insitu_xrd.fit import Refinement
from insitu_xrd.fit.linear import is_nonnegative, nonnegative_lstsq
from test_fit_engine import LAM, make_spec, simulate


def _brute_force(A: np.ndarray, b: np.ndarray, nonneg: np.ndarray) -> float:
    """Least chi^2 over every choice of constrained columns held at 0 (feasible solutions only)."""
    best = np.inf
    idx = np.nonzero(nonneg)[0]
    for k in range(len(idx) + 1):
        for zero in itertools.combinations(idx, k):
            keep = np.setdiff1d(np.arange(A.shape[1]), zero)
            x = np.zeros(A.shape[1])
            x[keep] = np.linalg.lstsq(A[:, keep], b, rcond=None)[0]
            if np.all(x[nonneg] >= 0):
                best = min(best, float(np.sum((A @ x - b) ** 2)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_nonnegative_lstsq_is_the_constrained_optimum(seed: int) -> None:
    """Against the exhaustive search over active sets; bound coefficients exactly 0; KKT signs."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(40, 6))
    b = A @ rng.normal(size=6) + 0.3 * rng.normal(size=40)
    nonneg = np.array([True, True, True, False, True, False])
    x = nonnegative_lstsq(A, b, nonneg)
    assert np.all(x[nonneg] >= 0)
    chi2 = float(np.sum((A @ x - b) ** 2))
    assert chi2 == pytest.approx(_brute_force(A, b, nonneg), rel=1e-10)
    grad = A.T @ (b - A @ x)  # > 0 would mean raising x_j lowers chi^2
    at0 = nonneg & (x == 0.0)
    assert np.all(grad[at0] <= 1e-9 * np.abs(grad).max())
    assert np.allclose(grad[~at0], 0.0, atol=1e-9 * np.abs(A.T @ b).max())


def test_names_with_a_sign() -> None:
    assert all(is_nonnegative(n) for n in ("H2_scale", "bkg_hump0_area", "diff_H2_104_area", "H3_lebail_k"))
    assert not any(is_nonnegative(n) for n in ("bkg_0", "bkg_5", "H2_a", "diff_H2_104_fwhm_deg", "zero_deg"))


def _h2_problem(humps: list | None = None):
    """A Problem for an H2 pattern with its two diffuse components (Rietveld mode)."""
    from insitu_xrd.fit.model import Problem
    from insitu_xrd.fit.parameters import split_free

    x, y, s = simulate(2, h3_fraction=0.0, diffuse=True)
    spec = make_spec("rietveld", start_error=0.0, h3=False, diffuse=True,
                     background={"chebyshev": 6, "humps": humps or []})
    ref = Refinement(spec, LAM)
    params = ref.initial_params()
    split_free(params)
    prob = Problem(spec, ref.structures, LAM, ref.instrument.distance_mm, x, y, s, np.ones(len(x), bool), ["H2"], params)
    return prob, params.valuesdict()


def test_feasible_solve_is_the_unconstrained_one() -> None:
    """Nothing negative: the constrained solve returns the plain least-squares result, bit for bit."""
    prob, vals = _h2_problem()
    vals["diff_H2_104_offset_deg"] = 0.01
    vals["diff_H2_104_fwhm_deg"], vals["diff_H2_108_110_fwhm_deg"] = 0.25, 0.3
    names, cols, fixed, _info = prob.columns(vals, False)
    plain, r_plain = prob.solve_linear(cols, fixed)
    signed, r_signed = prob.solve_linear(cols, fixed, names, signed=True)
    assert min(plain[i] for i, n in enumerate(names) if is_nonnegative(n)) > 0
    assert np.array_equal(plain, signed) and np.array_equal(r_plain, r_signed)
    assert not any(prob.at_zero(names, cols, signed))


def test_infeasible_solve_holds_the_component_at_zero() -> None:
    """A diffuse column shaped to be fitted with a negative area: held at exactly 0, the others
    the least-squares solution without it."""
    prob, vals = _h2_problem([{"center_deg": 3.0, "fwhm_deg": 1.5, "refine": ["area"]}])
    names, cols, fixed, _info = prob.columns(vals, False)
    j = names.index("diff_H2_104_area")
    plain, _ = prob.solve_linear(cols, fixed)
    # subtract twice the diffuse peak from the data: its unconstrained area goes negative
    prob.yf = prob.yf - 2.0 * abs(plain[j]) * cols[j][prob.fitmask] - 400.0 * cols[j][prob.fitmask]
    plain, _ = prob.solve_linear(cols, fixed)
    assert plain[j] < 0
    assert np.array_equal(prob.solve_linear(cols, fixed, names)[0], plain)  # the problem's default: unsigned
    coef, _r = prob.solve_linear(cols, fixed, names, signed=True)
    assert coef[j] == 0.0 and prob.at_zero(names, cols, coef)[j]
    rest = [i for i in range(len(names)) if i != j]
    sub, _ = prob.solve_linear([cols[i] for i in rest], fixed, [names[i] for i in rest], signed=True)
    assert np.allclose(coef[rest], sub, rtol=1e-9, atol=1e-9 * np.abs(sub).max())


@pytest.mark.parametrize("mode", ["rietveld", "lebail"])
def test_unneeded_diffuse_component_ends_at_zero(mode: str) -> None:
    """H2 without diffuse scattering, a recipe with two diffuse components and a hump: the
    unconstrained fit gave -10.5 +/- 16 and -2.7 +/- 1.9 for the diffuse areas (seed 2); now they
    end at 0, flagged at bound with esd NaN, every Le Bail intensity >= 0, a good fit."""
    x, y, s = simulate(2, h3_fraction=0.0)
    spec = make_spec(mode, start_error=0.001, h3=False, diffuse=True,
                     background={"chebyshev": 6, "humps": [{"center_deg": 3.0, "fwhm_deg": 1.5, "refine": ["area"]}]})
    res = Refinement(spec, LAM).fit(x, y, s)
    for n in ("diff_H2_104_area", "diff_H2_108_110_area", "bkg_hump0_area"):
        assert res.values[n] >= 0.0, n
        if res.values[n] == 0.0:
            assert n in res.at_bounds and np.isnan(res.esds[n]), n
        else:
            assert n not in res.at_bounds and np.isfinite(res.esds[n])
    assert any(res.values[n] == 0.0 for n in ("diff_H2_104_area", "diff_H2_108_110_area"))
    assert res.values["H2_scale"] > 0
    assert 0.8 < res.gof < 1.3
    assert abs(res.values["H2_a"] - 2.8650) < 2e-4
    for hkl, areas in res.lebail_areas.values():
        assert np.all(areas >= 0.0)


def test_needed_diffuse_component_unchanged() -> None:
    """Diffuse scattering present: the areas are refined as before (truth within 15 %, positive,
    finite esds, not at a bound)."""
    x, y, s = simulate(0, h3_fraction=0.0, diffuse=True)
    res = Refinement(make_spec("rietveld", start_error=0.001, h3=False, diffuse=True), LAM).fit(x, y, s)
    for label, area in {"H2_104": 300.0, "H2_108_110": 200.0}.items():
        n = f"diff_{label}_area"
        assert res.values[n] == pytest.approx(area, rel=0.15)
        assert np.isfinite(res.esds[n]) and n not in res.at_bounds
