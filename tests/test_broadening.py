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
