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

__all__ = ["laue_equivalents", "march_dollase", "march_dollase_factor"]


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
