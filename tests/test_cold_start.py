"""Cold starts reach the same minimum from anywhere within +/- 2 % of the lattice.

Patterns with known truth from the core forward model (``calc_pattern``) plus fixed-seed Poisson
noise, one NMC811 phase at a 2.865, c 14.36 A (c 1.1 % above the template's pristine 14.20 A, the
issue's case), fitted with the demo recipe's model (Le Bail or Rietveld, two diffuse components
under 104 and 108/110, Chebyshev background, instrument held at the true profile):

* ``aniso``: hkl-dependent microstrain (850 x 1e-6 along c*, 1150 in the plane) that the
  isotropic model cannot fit exactly (GoF 1.35), no diffuse scattering in the data: the diffuse
  components are free to take up the misfit and a plain fit ends in one of several minima
  (chi2 3444 ... 3509 over the starts below: the false minimum of the issue);
* ``diffuse``: isotropic microstrain 1000 plus real diffuse components (0.15 deg wide): the fit
  from the lattice search puts the 104 component at its upper width bound (chi2 2555.3); the
  restart with narrow diffuse components finds 2552.2, and says so.

Starts: a and c each at -2 %, 0, +2 % of the truth, and the template's pristine lattice. Every
cold start must end at the same chi2 within half a chi2 unit and the same values within 0.1 esd
(the lattice search makes the start independent of the recipe's to 0.005 %; the differences left
are optimizer tolerance, measured <= 0.14 in chi2 and <= 0.03 esd).
"""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.core.crystal import Reflections, make_template
from insitu_xrd.core.pattern import BroadPeak, DiffusePeak, Instrument, PhaseState, calc_pattern, d_from_two_theta_deg
from insitu_xrd.fit import Refinement, RefinementSpec
from insitu_xrd.pipeline.cold_start import cold_start
from insitu_xrd.pipeline.sequential import SequentialRefiner

WL = 0.1173
PROFILE = dict(U=2.0, V=-0.5, W=1.5, X=0.25, Y=0.4)
A, C = 2.865, 14.36
X = np.linspace(1.0, 12.0, 2750)
STARTS = [(2.872, 14.20)] + [(A * (1 + fa), C * (1 + fc)) for fa in (-0.02, 0.0, 0.02) for fc in (-0.02, 0.0, 0.02)]
CORNERS = [(2.872, 14.20)] + [(A * (1 + fa), C * (1 + fc)) for fa in (-0.02, 0.02) for fc in (-0.02, 0.02)]


def _noisy(total: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.random.default_rng(seed).poisson(np.clip(total, 0, None)).astype(float)
    return y, np.sqrt(np.maximum(y, 1.0))


def _background(inst: Instrument) -> np.ndarray:
    return calc_pattern(X, [], inst, background_coeffs=[300, -80, 30], broad_peaks=[BroadPeak(1.9, 1.4, 200.0)]).total


@pytest.fixture(scope="module")
def aniso():
    """Microstrain 850 x 1e-6 along c* to 1150 in the ab plane (linear in l^2 d^2 / c^2)."""
    inst = Instrument(WL, **PROFILE)
    h2 = make_template("nmc811", name="H2", a=A, c=C)
    refl = h2.reflections(float(d_from_two_theta_deg(12.5, WL)))
    frac_c = (refl.hkl[:, 2] ** 2 / C**2) * refl.d_A**2
    total = _background(inst)
    for i in range(len(refl)):
        one = Reflections(refl.hkl[i:i + 1], refl.multiplicity[i:i + 1], refl.d_A[i:i + 1])
        mu = 1150.0 + (850.0 - 1150.0) * frac_c[i]
        total = total + calc_pattern(X, [PhaseState(h2, scale=3e-4, mustrain=mu, reflections=one)], inst).total
    return _noisy(total, 1)


@pytest.fixture(scope="module")
def diffuse():
    inst = Instrument(WL, **PROFILE)
    h2 = make_template("nmc811", name="H2", a=A, c=C)
    dif = [DiffusePeak("H2", ("104",), area=8.0, fwhm_deg=0.15), DiffusePeak("H2", ("108", "110"), area=5.0, fwhm_deg=0.15)]
    comp = calc_pattern(X, [PhaseState(h2, scale=3e-4, mustrain=1000.0)], inst, background_coeffs=[300, -80, 30],
                        broad_peaks=[BroadPeak(1.9, 1.4, 200.0)], diffuse=dif)
    return _noisy(comp.total, 1)


def _spec(mode: str, a0: float, c0: float) -> RefinementSpec:
    return RefinementSpec.model_validate({
        "mode": mode, "range_2theta_deg": [1.2, 11.8], "background": {"chebyshev": 8}, "profile": dict(PROFILE),
        "phases": [{"name": "H2", "template": "nmc811", "a": a0, "c": c0, "refine": ["a", "c", "mustrain", "scale"]}],
        "diffuse": [{"phase": "H2", "reflections": ["104"]}, {"phase": "H2", "reflections": ["108", "110"]}]})


def _cold(spec: RefinementSpec, y: np.ndarray, s: np.ndarray, deterministic: bool = True):
    """The cold start of ``insitu-xrd refine`` (deterministic: the sequential chain's without)."""
    return cold_start(spec, lambda sp: Refinement(sp, WL).fit(X, y, s), wavelength_A=WL, two_theta_deg=X, intensity=y,
                      phases=["H2"], deterministic=deterministic)


def _assert_same_minimum(fits: list) -> None:
    chi2 = np.array([f.chi2 for f in fits])
    assert np.ptp(chi2) < 0.5, chi2
    ref = fits[0]
    for f in fits[1:]:
        for name, v0 in ref.values.items():
            esd = ref.esds.get(name, np.nan)
            if np.isfinite(esd) and esd > 0:
                assert abs(f.values[name] - v0) < 0.1 * esd, (name, f.values[name], v0, esd)


def test_lebail_cold_start_same_minimum_from_2pct_starts(aniso):
    y, s = aniso
    plain = [Refinement(_spec("lebail", a0, c0), WL).fit(X, y, s).chi2 for a0, c0 in CORNERS]
    # the false minima this is about: a plain fit from these starts ends anywhere in 3444 ... 3491
    assert np.ptp(plain) > 20, plain
    runs = [_cold(_spec("lebail", a0, c0), y, s) for a0, c0 in STARTS]
    fits = [r.fit for r in runs]
    _assert_same_minimum(fits)
    assert min(f.chi2 for f in fits) <= min(plain) + 0.5
    best = fits[0]
    assert abs(best.values["H2_a"] - A) < 5 * best.esds["H2_a"] and abs(best.values["H2_c"] - C) < 5 * best.esds["H2_c"]
    # the search found the lattice from every start (within the 0.005 % fine grid of it)
    for r in runs:
        a, c = r.searched["H2"]
        assert abs(a / A - 1) < 2e-4 and abs(c / C - 1) < 2e-4
        assert [k for k, _ in r.tried][0] == "search" and len(r.tried) >= 3


def test_rietveld_cold_start_same_minimum_from_2pct_starts(aniso):
    y, s = aniso
    plain = [Refinement(_spec("rietveld", a0, c0), WL).fit(X, y, s).chi2 for a0, c0 in CORNERS]
    assert np.ptp(plain) > 20, plain  # 3807 ... 3855
    _assert_same_minimum([_cold(_spec("rietveld", a0, c0), y, s).fit for a0, c0 in CORNERS])


def test_restart_lower_than_first_fit_is_kept_and_reported(diffuse):
    y, s = diffuse
    runs = [_cold(_spec("lebail", a0, c0), y, s) for a0, c0 in CORNERS[:3]]
    _assert_same_minimum([r.fit for r in runs])
    r = runs[0]
    assert r.improved and r.chosen == "diffuse"
    assert r.first_chi2 - r.fit.chi2 > 1.0  # 2555.3 -> 2552.2
    assert r.notes and "false minimum" in r.notes[0] and r.notes[0] in r.fit.warnings
    attrs = r.attrs()
    assert attrs["cold_start_warning"] == r.notes[0] and '"chosen": "diffuse"' in attrs["cold_start"]
    # the narrow 104 component: its width inside the bounds, near the true 0.15 deg
    assert 0.075 < r.fit.values["diff_H2_104_fwhm_deg"] < 0.3


def test_sequential_first_frame_uses_the_same_cold_start(diffuse):
    """The sequential chain's cold start (first frame) is the same code: same fit, same note."""
    y, s = diffuse
    spec = _spec("lebail", A * 1.02, C * 0.98)
    ref = SequentialRefiner(spec, WL, lambda sp: Refinement(sp, WL))
    rec = ref.step(0, X, y, s)
    cs = _cold(spec, y, s).fit
    assert rec.status == "ok" and "cold start: a restart (diffuse)" in rec.message
    for name in ("H2_a", "H2_c", "H2_mustrain", "diff_H2_104_area"):
        assert abs(rec.values[name] - cs.values[name]) < 0.1 * cs.esds[name]
    # the next frame is warm-started from the kept (restart) fit
    assert ref.prev_fit is not None and ref.prev_fit.chi2 == pytest.approx(cs.chi2, abs=0.5)


def test_no_restart_when_the_first_fit_is_the_minimum():
    """An unambiguous minimum: the first fit is reported unchanged, no note."""
    inst = Instrument(WL, **PROFILE)
    h2 = make_template("nmc811", name="H2", a=A, c=C)
    y, s = _noisy(calc_pattern(X, [PhaseState(h2, scale=3e-4, mustrain=1000.0)], inst,
                               background_coeffs=[300, -80, 30]).total, 2)
    spec = RefinementSpec.model_validate({
        "mode": "lebail", "range_2theta_deg": [1.2, 11.8], "background": {"chebyshev": 6}, "profile": dict(PROFILE),
        "phases": [{"name": "H2", "template": "nmc811", "a": 2.872, "c": 14.20, "refine": ["a", "c", "mustrain", "scale"]}]})
    r = _cold(spec, y, s, deterministic=False)  # as in the sequential chain
    assert r.chosen == "search" and not r.notes and not r.improved
    assert [k for k, _ in r.tried] == ["search", "lattice", "values1"]
    assert abs(r.fit.values["H2_mustrain"] - 1000.0) < 4 * r.fit.esds["H2_mustrain"]
    assert cold_start(spec, lambda sp: Refinement(sp, WL).fit(X, y, s), max_restarts=0, search=False).tried[0][0] == "start"
