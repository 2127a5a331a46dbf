"""|F|^2 of a phase and its analytic derivatives with respect to site parameters.

F(h) = sum_s g_s(h) T_s(h), with the site's scattering g_s = (sum_e occ_e f_e(s)) exp(-B_s s^2)
and its geometric sum over the orbit T_s = sum_j exp(2 pi i h.r_j), r_j = R_j x + t_j. Then

- d F / d(x along v) = g_s sum_j 2 pi i (h R_j v) exp(2 pi i h.r_j)   (v an allowed displacement)
- d F / d occ_e      = f_e exp(-B_s s^2) T_s
- d F / d B_s        = -s^2 g_s T_s
- d |F|^2 / dp       = 2 Re(conj(F) dF/dp)

Same conventions as :meth:`insitu_xrd.core.crystal.Phase.structure_factor_sq` (electrons^2 per
cell, s = 1/(2d) in 1/A, neutral-atom form factors plus the phase's resonant f' + i f'', so the
site scattering g_s and dF/d occ_e are complex).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from insitu_xrd.core.crystal import Phase, Site
from insitu_xrd.core.symmetry import site_orbit

__all__ = ["SlotChange", "structure_factor_sq_derivatives"]


@dataclass(frozen=True)
class SlotChange:
    """How one structural quantity of a site changes per unit change of a refined parameter.

    site : index into ``Phase.sites``.
    kind : 'xyz' (coordinates move by ``coef * vector``), 'occ' (occupancy of ``element`` changes
        by ``coef``) or 'biso' (B in A^2 changes by ``coef``).
    """

    site: int
    kind: str
    coef: float = 1.0
    vector: tuple[float, float, float] = (0.0, 0.0, 0.0)
    element: str = ""


def structure_factor_sq_derivatives(
    phase: Phase,
    hkl: np.ndarray,
    cell: tuple[float, ...],
    parameters: Sequence[Sequence[SlotChange]],
    orbit_of: Callable[[Site], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """|F|^2 of ``hkl`` (n,) and d|F|^2/dp (n, len(parameters)) for parameters that each change
    one or more site quantities (``SlotChange``); ``orbit_of(site)``: positions and generating
    rotations of a site (default :func:`insitu_xrd.core.symmetry.site_orbit`)."""
    h = np.asarray(hkl, dtype=float).reshape(-1, 3)
    s = 0.5 / phase.d_spacing(h, cell)
    s2 = s * s
    n = len(h)
    f_total = np.zeros(n, dtype=complex)
    per_site = []
    for site in phase.sites:
        pos, rot = (orbit_of or (lambda st: site_orbit(phase.spacegroup, st.xyz)))(site)
        expo = np.exp(2j * np.pi * (h @ pos.T))  # (n, m)
        geom = expo.sum(axis=1)
        dw = np.exp(-site.biso_A2 * s2)
        scatter = sum(occ * phase.scattering_factor(el, s) for el, occ in site.occupancy.items()) * dw
        f_total += scatter * geom
        per_site.append((expo, rot, geom, dw, scatter))
    out = np.zeros((n, len(parameters)))
    conj = np.conj(f_total)
    for j, changes in enumerate(parameters):
        dF = np.zeros(n, dtype=complex)
        for ch in changes:
            expo, rot, geom, dw, scatter = per_site[ch.site]
            if ch.kind == "xyz":
                hv = np.einsum("ni,mij,j->nm", h, rot, np.asarray(ch.vector, dtype=float))
                dF += ch.coef * scatter * (2j * np.pi * hv * expo).sum(axis=1)
            elif ch.kind == "occ":
                dF += ch.coef * phase.scattering_factor(ch.element, s) * dw * geom
            elif ch.kind == "biso":
                dF += -ch.coef * s2 * scatter * geom
            else:
                raise ValueError(f"unknown site quantity {ch.kind!r}")
        out[:, j] = 2.0 * np.real(conj * dF)
    return np.abs(f_total) ** 2, out
