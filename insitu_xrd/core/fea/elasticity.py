"""Small-strain 2-D elasticity with a lithiation eigenstrain (scikit-fem P1 assembly).

Voigt notation with engineering shear, in-plane components (xx, yy, xy) plus zz::

    plane strain (eps_zz = 0):   sigma = C_pp (eps - eps*) - C_pz eps*_zz
                                 sigma_zz = C_pz . (eps - eps*) - C_zz eps*_zz
    plane stress (sigma_zz = 0): sigma = (C_pp - C_pz C_pz^T / C_zz) (eps - eps*)

so the equilibrium problem is K u = f with K = int B^T C B and the eigenstress load
f = int B^T s0, s0 = C_pp eps* + C_pz eps*_zz (plane strain; the out-of-plane eigenstrain adds
an in-plane eigenstress, which is the usual thing to forget) or s0 = C_red eps* (plane stress).

Grain frame (brief Sec. 6): x' = crystal a1 (in plane), y' = crystal c (in plane, at angle theta
from x), z = crystal a2 (out of plane). With transversely isotropic constants (3 = c)::

    C'_pp = [[C11, C13, 0], [C13, C33, 0], [0, 0, C44]],  C'_pz = [C12, C13, 0],  C'_zz = C11
    eigenstrain in the grain frame: (eps_a, eps_c, 0) in plane, eps_a out of plane.

Rotation: eps' = T eps with T the strain transformation for engineering shear, C = T^T C' T,
C_pz = T^T C'_pz (energy invariance), eps* = T^-1 eps*'. All per cell, vectorised.
"""

from __future__ import annotations

import numpy as np
from skfem import Basis, BilinearForm, ElementTriP0, ElementTriP1, ElementVector, LinearForm, MeshTri, asm
from skfem.helpers import sym_grad

from insitu_xrd.core.fea.params import ElasticParams

__all__ = [
    "strain_rotation",
    "grain_stiffness_Pa",
    "isotropic_stiffness_Pa",
    "grain_eigenstrain",
    "effective_stiffness",
    "eigenstress",
    "stress_zz",
    "ElasticProblem",
]


def _axes(theta_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    th = np.asarray(theta_rad, dtype=float)
    a1 = np.stack([np.sin(th), -np.cos(th)], axis=-1)  # x' (a axis in the plane)
    c = np.stack([np.cos(th), np.sin(th)], axis=-1)  # y' (c axis in the plane)
    return a1, c


def strain_rotation(theta_rad: np.ndarray) -> np.ndarray:
    """(n, 3, 3) T with eps_grain = T eps_global (Voigt xx, yy, xy with engineering shear)."""
    l, m = _axes(theta_rad)
    T = np.empty(l.shape[:-1] + (3, 3))
    T[:, 0] = np.stack([l[:, 0] ** 2, l[:, 1] ** 2, l[:, 0] * l[:, 1]], axis=-1)
    T[:, 1] = np.stack([m[:, 0] ** 2, m[:, 1] ** 2, m[:, 0] * m[:, 1]], axis=-1)
    T[:, 2] = np.stack([2 * l[:, 0] * m[:, 0], 2 * l[:, 1] * m[:, 1], l[:, 0] * m[:, 1] + l[:, 1] * m[:, 0]], axis=-1)
    return T


def grain_stiffness_Pa(theta_rad: np.ndarray, ep: ElasticParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global-frame (C_pp (n,3,3), C_pz (n,3), C_zz (n,)) in Pa of grains with c axis at theta."""
    g = 1e9
    Cl = np.array([[ep.C11_GPa, ep.C13_GPa, 0.0], [ep.C13_GPa, ep.C33_GPa, 0.0], [0.0, 0.0, ep.C44_GPa]]) * g
    cz = np.array([ep.C12_GPa, ep.C13_GPa, 0.0]) * g
    T = strain_rotation(theta_rad)
    Cpp = np.einsum("eki,kl,elj->eij", T, Cl, T)
    Cpz = np.einsum("eki,k->ei", T, cz)
    return Cpp, Cpz, np.full(T.shape[0], ep.C11_GPa * g)


def isotropic_stiffness_Pa(E_GPa: float, nu: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C_pp, C_pz, C_zz) in Pa of n cells of an isotropic material."""
    E = E_GPa * 1e9
    lam = E * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E / (2 * (1 + nu))
    Cpp = np.array([[lam + 2 * mu, lam, 0.0], [lam, lam + 2 * mu, 0.0], [0.0, 0.0, mu]])
    return (np.broadcast_to(Cpp, (n, 3, 3)).copy(), np.broadcast_to([lam, lam, 0.0], (n, 3)).copy(),
            np.full(n, lam + 2 * mu))


def grain_eigenstrain(theta_rad: np.ndarray, eps_a: np.ndarray, eps_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global-frame eigenstrain: (n, 3) in-plane Voigt (engineering shear) and (n,) eps_zz = eps_a."""
    l, m = _axes(theta_rad)
    ea, ec = np.asarray(eps_a, float), np.asarray(eps_c, float)
    exx = ea * l[:, 0] ** 2 + ec * m[:, 0] ** 2
    eyy = ea * l[:, 1] ** 2 + ec * m[:, 1] ** 2
    gxy = 2 * (ea * l[:, 0] * l[:, 1] + ec * m[:, 0] * m[:, 1])
    return np.stack([exx, eyy, gxy], axis=-1), ea.copy()


def effective_stiffness(Cpp: np.ndarray, Cpz: np.ndarray, Czz: np.ndarray, plane: str) -> np.ndarray:
    """In-plane stiffness of the 2-D problem: C_pp (plane strain) or C_pp - C_pz C_pz^T / C_zz."""
    if plane == "strain":
        return Cpp
    return Cpp - Cpz[:, :, None] * Cpz[:, None, :] / Czz[:, None, None]


def _voigt(e):
    return (e[0, 0], e[1, 1], 2 * e[0, 1])


@BilinearForm
def _elastic(u, v, w):
    # eps(v) : C eps(u) with the per-cell stiffness C passed as a (3, 3, cells, qp) field
    eu, ev = _voigt(sym_grad(u)), _voigt(sym_grad(v))
    C = w.C
    return sum(ev[i] * C[i][j] * eu[j] for i in range(3) for j in range(3))


def _voigt_component_form(k: int) -> BilinearForm:
    @BilinearForm
    def form(s, v, w):
        # a cellwise-constant stress component s against eps_k(v): f = int B^T s0
        return s * _voigt(sym_grad(v))[k]
    return form


@LinearForm
def _area(v, w):
    return v


class ElasticProblem:
    """Assembled plane elasticity on a triangle mesh (coordinates in m, stresses in Pa).

    C_cells (M, 3, 3): effective in-plane stiffness per cell (:func:`effective_stiffness`).
    Attributes: K (stiffness, dofs interleaved per node: 2i = u_x, 2i+1 = u_y of node i),
    G (3 sparse (ndof, M) matrices: f = sum_k G[k] s0[:, k]), area_m2 (M,).
    """

    def __init__(self, nodes_m: np.ndarray, triangles: np.ndarray, C_cells: np.ndarray) -> None:
        self.mesh = MeshTri(np.ascontiguousarray(np.asarray(nodes_m, float).T),
                            np.ascontiguousarray(np.asarray(triangles, np.int64).T), sort_t=False)
        self.basis = Basis(self.mesh, ElementVector(ElementTriP1()), intorder=1)
        self.basis0 = Basis(self.mesh, ElementTriP0(), intorder=1)
        nqp = self.basis.X.shape[1]
        C = np.asarray(C_cells, float)
        Cf = np.repeat(np.moveaxis(C, 0, -1)[..., None], nqp, axis=-1)  # (3, 3, M, qp)
        self.K = asm(_elastic, self.basis, C=Cf).tocsr()
        self.G = [asm(_voigt_component_form(k), self.basis0, self.basis).tocsr() for k in range(3)]
        self.area_m2 = asm(_area, self.basis0)
        nd = self.basis.nodal_dofs
        if not (np.array_equal(nd[0], 2 * np.arange(nd.shape[1])) and np.array_equal(nd[1], nd[0] + 1)):
            raise RuntimeError("unexpected dof numbering of the vector P1 basis")
        self.C = C

    @property
    def n_dofs(self) -> int:
        return int(self.K.shape[0])

    def load(self, s0: np.ndarray) -> np.ndarray:
        """Nodal force vector (N per m of depth) of a per-cell eigenstress s0 (M, 3) in Pa."""
        return self.G[0] @ s0[:, 0] + self.G[1] @ s0[:, 1] + self.G[2] @ s0[:, 2]

    def cell_strain(self, u: np.ndarray) -> np.ndarray:
        """(M, 3) strain per cell (xx, yy, engineering xy) of the displacement u (m)."""
        return np.stack([g.T @ u for g in self.G], axis=-1) / self.area_m2[:, None]

    def stress(self, u: np.ndarray, s0: np.ndarray) -> np.ndarray:
        """(M, 3) in-plane stress C eps(u) - s0 (Pa)."""
        return np.einsum("eij,ej->ei", self.C, self.cell_strain(u)) - s0


def eigenstress(C_eff: np.ndarray, Cpz: np.ndarray, eps_p: np.ndarray, eps_zz: np.ndarray, plane: str) -> np.ndarray:
    """(M, 3) eigenstress s0 (Pa) of the eigenstrain (eps_p (M,3), eps_zz (M,))."""
    s0 = np.einsum("eij,ej->ei", C_eff, eps_p)
    if plane == "strain":
        s0 = s0 + Cpz * eps_zz[:, None]
    return s0


def stress_zz(Cpz: np.ndarray, Czz: np.ndarray, eps: np.ndarray, eps_p: np.ndarray, eps_zz: np.ndarray,
              plane: str) -> np.ndarray:
    """(M,) out-of-plane stress (Pa): 0 in plane stress, C_pz.(eps - eps*) - C_zz eps*_zz in plane strain."""
    if plane == "stress":
        return np.zeros(eps.shape[0])
    return np.einsum("ei,ei->e", Cpz, eps - eps_p) - Czz * eps_zz
