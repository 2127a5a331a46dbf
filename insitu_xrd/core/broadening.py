"""Anisotropic sample broadening per reflection, GSAS-II conventions. Plain numpy (+ gemmi ops).

Each model gives an *effective* isotropic microstrain (1e-6) or size (um) per reflection, which
enters the profile exactly as the isotropic value does (`insitu_xrd.core.profiles.peak_fwhm_eta`:
Lorentzian FWHM in 2theta rad = mu * 1e-6 * tan(theta), size: lambda / (size cos(theta))):

- **uniaxial** microstrain (GSAS-II ``Mustrain;i``, ``Mustrain;a`` about an axis [h, k, l] of the
  reciprocal lattice): mu = mu_eq mu_ax / sqrt((mu_eq cos P)^2 + (mu_ax sin P)^2), P the angle
  between the reflection's reciprocal vector and the axis; mu = mu_ax along the axis, mu_eq
  perpendicular to it.
- **uniaxial** size: size = s_eq s_ax / sqrt((s_ax sin P)^2 + (s_eq cos P)^2): s_ax along the axis.
- **generalized** microstrain (Stephens 1999, J. Appl. Cryst. 32, 281): mu = d^2 sqrt(sum_j S_j
  t_j(hkl)) (d in A), the t_j the quartic forms in h, k, l invariant under the Laue group.
  They are derived here from the group's rotations (the invariant subspace of the 15 quartic
  monomials), not tabulated: each basis form is written with its leading monomial h^H k^K l^L
  (first in GSAS-II's order S400 S040 S004 S220 S202 S022 S310 S103 S031 S130 S301 S013 S211
  S121 S112) at GSAS-II's weight for that kind of monomial (h^4: 1, h^2 k^2: 3, h^3 k: 2,
  h^2 k l: 4), which gives GSAS-II's terms and names (cubic: S400 (h^4+k^4+l^4) + S220
  3(h^2k^2+h^2l^2+k^2l^2); hexagonal: S400 (h^2+hk+k^2)^2, S004 l^4, S202 3 l^2(h^2+hk+k^2)).
  Where GSAS-II merges Laue classes (-3m1 with 6/mmm, 4/m with 4/mmm) the derived set keeps the
  extra invariant Stephens lists (-3m1: S031; 4/m: S310), so those classes have one term more.
  S_j in GSAS-II's units ((1e-6)^2 / A^4): an isotropic mu of a cubic phase of lattice a is
  S400 = mu^2 / a^4, S220 = 2 S400 / 3.
"""

from __future__ import annotations

import functools

import gemmi
import numpy as np

from insitu_xrd.core.symmetry import reciprocal_metric_and_derivatives, row_echelon

__all__ = [
    "STEPHENS_MONOMIALS",
    "stephens_terms",
    "stephens_names",
    "generalized_mustrain",
    "uniaxial_mustrain",
    "uniaxial_size_um",
    "cos_angle_to_axis",
    "isotropic_stephens",
]

#: quartic monomials (H, K, L) in GSAS-II's order of the Stephens coefficient names
STEPHENS_MONOMIALS: tuple[tuple[int, int, int], ...] = (
    (4, 0, 0), (0, 4, 0), (0, 0, 4), (2, 2, 0), (2, 0, 2), (0, 2, 2), (3, 1, 0), (1, 0, 3), (0, 3, 1),
    (1, 3, 0), (3, 0, 1), (0, 1, 3), (2, 1, 1), (1, 2, 1), (1, 1, 2))


def _weight(mono: tuple[int, int, int]) -> float:
    powers = sorted(mono, reverse=True)
    return {(4, 0, 0): 1.0, (2, 2, 0): 3.0, (3, 1, 0): 2.0, (2, 1, 1): 4.0}[tuple(powers)]


def _monomial_values(hkl: np.ndarray) -> np.ndarray:
    h = np.asarray(hkl, dtype=float).reshape(-1, 3)
    return np.stack([h[:, 0] ** a * h[:, 1] ** b * h[:, 2] ** c for a, b, c in STEPHENS_MONOMIALS], axis=1)


@functools.lru_cache(maxsize=128)
def _stephens_basis(xhm: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, coefficients (n_terms, 15)) of the Laue-invariant quartic forms of a space group."""
    sg = gemmi.find_spacegroup_by_name(xhm)
    rots = [np.array(op.rot, dtype=float) / gemmi.Op.DEN for op in sg.operations().sym_ops]
    # a quartic form q(h) = c . m(h) is invariant when c . m(h R) = c . m(h) for all h and R:
    # evaluate at enough generic points to make that a linear system in c
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(40, 3))
    m0 = _monomial_values(pts)
    rows = [(_monomial_values(pts @ r) - m0) for r in rots]
    a = np.vstack(rows)
    _, sv, vt = np.linalg.svd(a)
    rank = int(np.sum(sv > 1e-9 * max(1.0, float(np.abs(m0).max()))))  # (triclinic: a is all zeros)
    null = vt[rank:]
    rref, pivots = row_echelon(null, rel_tol=1e-9)
    coeffs = rref[: len(pivots)]
    coeffs[np.abs(coeffs) < 1e-9] = 0.0
    names = []
    for row, p in zip(coeffs, pivots):
        mono = STEPHENS_MONOMIALS[p]
        row *= _weight(mono)
        names.append("S" + "".join(str(v) for v in mono))
    return tuple(names), np.round(coeffs, 9)


def stephens_names(sg: gemmi.SpaceGroup) -> tuple[str, ...]:
    """GSAS-II names of the generalized microstrain coefficients of the space group's Laue class."""
    return _stephens_basis(sg.xhm())[0]


def stephens_terms(sg: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """t_j(hkl) of the Laue class, shape (n, n_terms), in the order of :func:`stephens_names`."""
    _, coeffs = _stephens_basis(sg.xhm())
    return _monomial_values(hkl) @ coeffs.T


def generalized_mustrain(sg: gemmi.SpaceGroup, hkl: np.ndarray, d_A: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Effective microstrain (1e-6) per reflection: d^2 sqrt(sum_j S_j t_j(hkl)); a negative sum
    (coefficients outside the physical region) gives 0."""
    total = stephens_terms(sg, hkl) @ np.asarray(coefficients, dtype=float)
    return np.asarray(d_A, dtype=float) ** 2 * np.sqrt(np.clip(total, 0.0, None))


def cos_angle_to_axis(hkl: np.ndarray, axis_hkl: np.ndarray, reciprocal_metric: np.ndarray) -> np.ndarray:
    """cos of the angle between each reflection's reciprocal vector and the reciprocal-lattice
    direction ``axis_hkl`` (GSAS-II ``CosSinAngle`` with the reciprocal metric G*)."""
    h = np.asarray(hkl, dtype=float).reshape(-1, 3)
    p = np.asarray(axis_hkl, dtype=float)
    hp = h @ reciprocal_metric @ p
    hh = np.einsum("ni,ij,nj->n", h, reciprocal_metric, h)
    pp = p @ reciprocal_metric @ p
    return np.clip(hp / np.sqrt(hh * pp), -1.0, 1.0)


def uniaxial_mustrain(cos_p: np.ndarray, equatorial: float, axial: float) -> np.ndarray:
    """Effective microstrain (1e-6): mu_eq mu_ax / sqrt((mu_eq cos P)^2 + (mu_ax sin P)^2)."""
    c2 = np.asarray(cos_p, dtype=float) ** 2
    den = np.sqrt(equatorial**2 * c2 + axial**2 * (1.0 - c2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, equatorial * axial / np.where(den > 0, den, 1.0), 0.0)


def uniaxial_size_um(cos_p: np.ndarray, equatorial_um: float, axial_um: float) -> np.ndarray:
    """Effective size (um): s_eq s_ax / sqrt((s_ax sin P)^2 + (s_eq cos P)^2)."""
    c2 = np.asarray(cos_p, dtype=float) ** 2
    return equatorial_um * axial_um / np.sqrt(axial_um**2 * (1.0 - c2) + equatorial_um**2 * c2)



def isotropic_stephens(sg: gemmi.SpaceGroup, cell: tuple[float, ...], mustrain: float) -> dict[str, float]:
    """Stephens coefficients equivalent to an isotropic microstrain ``mustrain`` (1e-6) for the
    cell (A, deg): sum_j S_j t_j(hkl) = mustrain^2 (1/d^2)^2 for every hkl (the square of the
    reciprocal metric's quadratic form is a Laue-invariant quartic, so the fit is exact)."""
    gs, _ = reciprocal_metric_and_derivatives(tuple(cell))
    rng = np.arange(-3, 4)
    h = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), axis=-1).reshape(-1, 3)
    h = h[np.any(h != 0, axis=1)]
    q = np.einsum("ni,ij,nj->n", h, gs, h)
    coef, *_ = np.linalg.lstsq(stephens_terms(sg, h), mustrain**2 * q**2, rcond=None)
    return dict(zip(stephens_names(sg), (float(c) for c in coef)))
