"""Preferred orientation (texture) corrections of Bragg intensities. Plain numpy.

March-Dollase (Dollase 1986, J. Appl. Cryst. 19, 267; GSAS-II ``MD``): platelets or needles
whose reciprocal direction ``axis`` [h, k, l] is oriented with ratio r (r < 1: platelets with the
axis along the scattering vector in Bragg-Brentano, the usual case of layered oxides pressed or
cast; r > 1: needles; r = 1: random powder). A reflection's intensity is multiplied by the
average, over its symmetry-equivalent reflections, of

    P(alpha) = (r^2 cos^2(alpha) + sin^2(alpha) / r)^(-3/2),

alpha the angle between the equivalent's reciprocal vector and the axis (as GSAS-II's
``GetPrefOri`` does). The correction keeps the total intensity over the orientation sphere
(the average of P over all directions is 1 for every r), so scales stay comparable.
"""

from __future__ import annotations

import gemmi
import numpy as np

__all__ = ["laue_equivalents", "march_dollase", "march_dollase_factor", "real_spherical_harmonics", "invariant_harmonics",
           "sh_texture_terms", "sh_texture_factor", "texture_index"]


def laue_equivalents(sg: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """Every reflection's equivalents under the Laue group of ``sg`` (point-group rotations and
    Friedel's inversion), shape (n, n_ops, 3): each distinct equivalent appears equally often, so a
    plain mean over axis 1 is the mean over the distinct equivalents."""
    rots = []
    for op in sg.operations().sym_ops:
        r = np.rint(np.array(op.rot, dtype=float) / gemmi.Op.DEN).astype(int)
        rots.append(r)
        rots.append(-r)
    rots_arr = np.unique(np.array(rots), axis=0)
    h = np.asarray(hkl, dtype=int).reshape(-1, 3)
    return np.einsum("ni,rij->nrj", h, rots_arr)


def march_dollase(cos_alpha: np.ndarray, ratio: float) -> np.ndarray:
    """March-Dollase P(alpha) = (r^2 cos^2 + sin^2 / r)^(-3/2) (ratio r > 0)."""
    c2 = np.asarray(cos_alpha, dtype=float) ** 2
    r = float(ratio)
    return (r * r * c2 + (1.0 - c2) / r) ** -1.5


def march_dollase_factor(equivalents: np.ndarray, axis_hkl: np.ndarray, ratio: float,
                         reciprocal_metric: np.ndarray) -> np.ndarray:
    """Texture factor per reflection: mean of `march_dollase` over its equivalents
    (``equivalents`` from `laue_equivalents`), the angles taken with the reciprocal metric G* (1/A^2)."""
    e = np.asarray(equivalents, dtype=float)
    p = np.asarray(axis_hkl, dtype=float)
    g = np.asarray(reciprocal_metric, dtype=float)
    hp = e @ (g @ p)
    hh = np.einsum("nri,ij,nrj->nr", e, g, e)
    cos_a = np.clip(hp / np.sqrt(hh * (p @ g @ p)), -1.0, 1.0)
    return march_dollase(cos_a, ratio).mean(axis=1)


# ----- spherical harmonics, cylindrical sample symmetry ----------------------------------------
# GSAS-II's "SH" texture with cylindrical sample symmetry (the sample's symmetry axis along the
# scattering vector: Bragg-Brentano, and the usual powder convention in every geometry). Bunge's
# expansion of the orientation distribution reduces to the pole density along the axis,
#
#     A(h) = 1 + sum_{l even >= 2} sqrt(4 pi / (2l + 1)) sum_mu C_l^mu k_l^mu(h),
#
# k_l^mu the real spherical harmonics of degree l invariant under the phase's Laue group,
# orthonormal on the sphere, evaluated at the reflection's reciprocal vector (Cartesian frame: the
# Cholesky factor of G*); the texture index is J = 1 + sum_l sum_mu (C_l^mu)^2 / (2l + 1) (Bunge;
# GSAS-II reports the same J). The invariant harmonics are derived numerically from the space
# group's rotations: the projector onto the invariant subspace is the Laue-group average of the
# rotation matrices of the degree-l harmonics; Gram-Schmidt of its columns in the order m = -l..l
# gives a basis that does not depend on the cell within a crystal system (parameter names
# <phase>_sh_C<l>_<j>, j = 1.. in that order; they are not GSAS-II's C(l,m,n) indices).


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def real_spherical_harmonics(l: int, unit: np.ndarray) -> np.ndarray:
    """Real spherical harmonics of degree l (orthonormal on the unit sphere) at unit vectors
    ``unit`` (n, 3): shape (n, 2l + 1), columns m = -l..l (sin for m < 0, cos for m > 0)."""
    from math import factorial

    from scipy.special import lpmv

    u = np.asarray(unit, dtype=float).reshape(-1, 3)
    cos_t = np.clip(u[:, 2], -1.0, 1.0)
    phi = np.arctan2(u[:, 1], u[:, 0])
    out = np.empty((len(u), 2 * l + 1))
    for m in range(-l, l + 1):
        am = abs(m)
        norm = np.sqrt((2 * l + 1) / (4 * np.pi) * factorial(l - am) / factorial(l + am))
        p = lpmv(am, l, cos_t)
        if m == 0:
            out[:, l] = norm * p
        elif m > 0:
            out[:, l + m] = np.sqrt(2.0) * norm * p * np.cos(am * phi)
        else:
            out[:, l + m] = np.sqrt(2.0) * norm * p * np.sin(am * phi)
    return out


def _cartesian_frame(reciprocal_metric: np.ndarray) -> np.ndarray:
    """L with G* = L L^T: the Cartesian reciprocal vector of row h is h @ L (a* along x)."""
    return np.linalg.cholesky(np.asarray(reciprocal_metric, dtype=float))


def invariant_harmonics(sg: gemmi.SpaceGroup, reciprocal_metric: np.ndarray, l: int) -> np.ndarray:
    """Coefficients (2l + 1, n_l) of the orthonormal real harmonics of degree l invariant under
    the Laue group of ``sg`` (see the section comment); n_l may be 0."""
    L = _cartesian_frame(reciprocal_metric)
    Linv = np.linalg.inv(L)
    rots = np.unique(laue_equivalents(sg, np.eye(3, dtype=int)).transpose(1, 0, 2), axis=0)  # h' = h R
    u = _fibonacci_sphere(max(200, 8 * (2 * l + 1)))
    y = real_spherical_harmonics(l, u)
    avg = np.zeros_like(y)
    for r in rots:
        v = u @ (Linv @ r @ L)  # the Cartesian image of every direction under the rotation
        avg += real_spherical_harmonics(l, v / np.linalg.norm(v, axis=1, keepdims=True))
    avg /= len(rots)
    proj = np.linalg.lstsq(y, avg, rcond=None)[0]
    proj = 0.5 * (proj + proj.T)
    basis: list[np.ndarray] = []
    for col in proj.T:  # Gram-Schmidt in the order m = -l..l
        w = col.copy()
        for b in basis:
            w -= (b @ w) * b
        norm = np.linalg.norm(w)
        if norm > 1e-6:
            basis.append(w / norm)
    return np.array(basis).T if basis else np.zeros((2 * l + 1, 0))


def sh_texture_terms(sg: gemmi.SpaceGroup, reciprocal_metric: np.ndarray, order: int) -> list[tuple[int, int]]:
    """(l, j) of every coefficient of a cylindrical-symmetry SH texture up to ``order`` (even l >= 2)."""
    out = []
    for l in range(2, int(order) + 1, 2):
        n = invariant_harmonics(sg, reciprocal_metric, l).shape[1]
        out += [(l, j + 1) for j in range(n)]
    return out


def sh_texture_factor(hkl: np.ndarray, reciprocal_metric: np.ndarray, bases: dict[int, np.ndarray],
                      coefficients: dict[int, np.ndarray]) -> np.ndarray:
    """A(h) = 1 + sum_l sqrt(4 pi/(2l+1)) sum_mu C_l^mu k_l^mu(h) per reflection; ``bases`` {l: the
    `invariant_harmonics` of degree l}, ``coefficients`` {l: C_l^mu (one per basis column)}."""
    h = np.asarray(hkl, dtype=float).reshape(-1, 3)
    q = h @ _cartesian_frame(reciprocal_metric)
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    out = np.ones(len(h))
    for l, basis in bases.items():
        c = np.asarray(coefficients.get(l, ()), dtype=float)
        if basis.shape[1] and c.size:
            out += np.sqrt(4 * np.pi / (2 * l + 1)) * (real_spherical_harmonics(l, unit) @ basis) @ c
    return out


def texture_index(coefficients: dict[int, np.ndarray]) -> float:
    """Texture index J = 1 + sum_l sum_mu (C_l^mu)^2 / (2l + 1) (1: random powder)."""
    return 1.0 + float(sum(np.sum(np.asarray(c, dtype=float) ** 2) / (2 * l + 1) for l, c in coefficients.items()))
