"""Fickian Li transport on the undoubled mesh (scikit-fem P1 assembly, implicit Euler).

Unknown: the Li content x = c / c_max (Li per formula unit) at the nodes. Equation and weak form
(SI units: coordinates in m, time in s)::

    cap dx/dt = div(D grad x)          in each grain (cap = 1) and in the coating (cap = 0)
    -n . D grad x = j                  on the outer surface (j > 0: Li leaves; j is set by the
                                       surface condition, surface.py)
    -n . D grad x = 0                  on the symmetry cuts x = 0, y = 0

    (M / dt + K + R) x^{n+1} = M / dt x^n - F,   K_ij = int grad(phi_i) . D grad(phi_j),
    M = lumped capacity (row-sum lumping of P1: int cap phi_i), F_i = int_outer j phi_i ds,
    R = diagonal (lumped) Robin term of the surface nodes whose outflow is r_i x_i (kinetic limit).

D is the per-cell tensor D = D_ab a1 a1^T + D_c c c^T with c = (cos theta, sin theta) the in-plane
c axis of the grain and a1 = (sin theta, -cos theta) the in-plane a axis; the coating is isotropic.
Lumped mass keeps the scheme monotone (no undershoot at the surface at large dt), and because
1^T K = 0, the total Li obeys sum(M x^{n+1}) = sum(M x^n) - dt sum(F) to round-off (exact mass
balance; a Robin outflow r_i x_i counts in F the same way). The matrix is factorised (SuperLU)
once per (dt, R) and reused while they repeat: with constant flux, once per run. The coating is given zero capacity: it transports Li (D_coating) but stores
none, so the state of charge counts NMC only (docs/fea.md explains the choice).

The mesh is the undoubled one: the concentration is continuous across grain boundaries (ideal
contact; cracks do not block transport in this model, as in Hou et al.'s description).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import diags
from scipy.sparse.linalg import splu
from skfem import Basis, BilinearForm, ElementTriP1, FacetBasis, LinearForm, MeshTri, asm
from skfem.helpers import grad

__all__ = ["diffusivity_tensors", "DiffusionProblem"]


def diffusivity_tensors(theta_rad: np.ndarray, D_ab_m2_s: float, D_c_m2_s: float) -> np.ndarray:
    """(n, 2, 2) diffusivity (m^2/s) of grains whose in-plane c axis is at theta_rad from x."""
    th = np.asarray(theta_rad, dtype=float)
    c = np.stack([np.cos(th), np.sin(th)], axis=-1)
    a = np.stack([np.sin(th), -np.cos(th)], axis=-1)
    return D_ab_m2_s * a[:, :, None] * a[:, None, :] + D_c_m2_s * c[:, :, None] * c[:, None, :]


@BilinearForm
def _fick(u, v, w):
    # grad(v) . D grad(u) with D passed per cell: the physics term of Fick's law
    gu, gv = grad(u), grad(v)
    return gv[0] * (w.Dxx * gu[0] + w.Dxy * gu[1]) + gv[1] * (w.Dxy * gu[0] + w.Dyy * gu[1])


@LinearForm
def _capacity(v, w):
    return w.cap * v


@LinearForm
def _surface_flux(v, w):
    return w.j * v


class DiffusionProblem:
    """Assembled diffusion operators on a triangle mesh.

    nodes_m (N, 2) m; triangles (M, 3); D_cells (M, 2, 2) m^2/s; capacity_cells (M,) (1 = stores
    Li, 0 = transport only); flux_edges (E, 2) node ids of the boundary edges carrying flux.
    """

    def __init__(self, nodes_m: np.ndarray, triangles: np.ndarray, D_cells: np.ndarray,
                 capacity_cells: np.ndarray, flux_edges: np.ndarray) -> None:
        self.mesh = MeshTri(np.ascontiguousarray(np.asarray(nodes_m, float).T),
                            np.ascontiguousarray(np.asarray(triangles, np.int64).T), sort_t=False)
        self.basis = Basis(self.mesh, ElementTriP1(), intorder=1)
        nqp = self.basis.X.shape[1]
        D = np.asarray(D_cells, float)

        def field(a: np.ndarray) -> np.ndarray:
            return np.repeat(np.asarray(a, float)[:, None], nqp, axis=1)

        self.K = asm(_fick, self.basis, Dxx=field(D[:, 0, 0]), Dxy=field(D[:, 0, 1]), Dyy=field(D[:, 1, 1])).tocsc()
        self.M = asm(_capacity, self.basis, cap=field(capacity_cells))
        self.flux_edges = np.asarray(flux_edges, int)
        # facet ids of the flux edges in the scikit-fem facet table (sorted node pairs)
        f = self.mesh.facets
        n = self.mesh.p.shape[1]
        fkey = np.minimum(f[0], f[1]).astype(np.int64) * n + np.maximum(f[0], f[1])
        ekey = self.flux_edges.min(axis=1).astype(np.int64) * n + self.flux_edges.max(axis=1)
        order = np.argsort(fkey)
        pos = order[np.searchsorted(fkey, ekey, sorter=order)]
        if not np.array_equal(fkey[pos], ekey):
            raise ValueError("flux edges are not facets of the mesh")
        self.flux_facets = pos
        self.fbasis = FacetBasis(self.mesh, ElementTriP1(), facets=pos, intorder=1)
        self._lu = None
        self._dt = None
        self._key: tuple | None = None
        self.n_factorizations = 0

    @property
    def edge_length_m(self) -> np.ndarray:
        """(E,) length of the flux edges (m)."""
        p = self.mesh.p
        return np.linalg.norm(p[:, self.flux_edges[:, 1]] - p[:, self.flux_edges[:, 0]], axis=0)

    def flux_load(self, j_per_edge: np.ndarray) -> np.ndarray:
        """F_i = int j phi_i ds for an outward flux j (x m/s) constant on each flux edge."""
        nqp = self.fbasis.X.shape[1]
        j = np.repeat(np.asarray(j_per_edge, float)[:, None], nqp, axis=1)
        return asm(_surface_flux, self.fbasis, j=j)

    def set_dt(self, dt_s: float) -> None:
        """Factorise M/dt + K (no Robin term) for :meth:`step`."""
        self._factorize(float(dt_s), None)

    def _factorize(self, dt_s: float, robin: np.ndarray | None) -> None:
        key = (dt_s, None if robin is None else robin.tobytes())
        if key == self._key:
            return
        diag = self.M / dt_s if robin is None else self.M / dt_s + robin
        self._lu = splu((diags(diag) + self.K).tocsc())
        self._dt, self._key = dt_s, key
        self.n_factorizations += 1

    def step(self, x: np.ndarray, F: np.ndarray) -> np.ndarray:
        """One implicit Euler step of size dt (set by :meth:`set_dt`) from x with load F."""
        if self._lu is None or self._dt is None:
            raise RuntimeError("call set_dt first")
        return self.solve(x, self._dt, F)

    def solve(self, x_old: np.ndarray, dt_s: float, load: np.ndarray, robin: np.ndarray | None = None) -> np.ndarray:
        """x of one implicit Euler step of ``dt_s`` (s) from ``x_old``: (M/dt + K + diag(robin)) x =
        M/dt x_old - load. load: outflow per node (x m^2/s); robin: per-node outflow coefficient
        (m^2/s, outflow r_i x_i) or None. The factorisation is kept while (dt, robin) repeat."""
        self._factorize(float(dt_s), robin)
        assert self._lu is not None
        return self._lu.solve(self.M / float(dt_s) * x_old - load)

    def enforce_bounds(self, x: np.ndarray, lower: float = 0.0, upper: float = 1.0) -> tuple[np.ndarray, float]:
        """x with nodes outside [lower, upper] moved onto the bound, conserving sum(M x) exactly.

        The P1 Galerkin matrix of an anisotropic D on a general triangulation is not an M-matrix
        (positive couplings where a triangle's angles do not suit the rotated D), so the discrete
        maximum principle can fail by a little next to a steep front. A node below ``lower`` is set
        to it and the Li it lacked is taken from its mesh neighbours in proportion to what they hold
        above the bound (from every node if the neighbours hold too little); above ``upper`` the
        same with the room below it. Nodes without capacity (coating) are only clipped.
        Returns (x, largest violation removed)."""
        lo, hi = x < lower, x > upper
        if not (lo.any() or hi.any()):
            return x, 0.0
        worst = float(max(lower - x.min(), x.max() - upper, 0.0))
        x = x.copy()
        if not hasattr(self, "_adjacency"):
            self._adjacency = (self.K != 0).astype(np.int8).tocsr()
        store = self.M > 0
        for bad, bound, sign in ((lo, lower, 1.0), (hi, upper, -1.0)):
            if not bad.any():
                continue
            amount = float(np.sum(self.M[bad] * sign * (bound - x[bad])))  # Li missing (lower) / in excess
            x[bad] = bound
            room = np.where(store & ~bad, sign * (x - bound), 0.0)  # what each node can give / take
            near = (self._adjacency @ bad.astype(np.int8)) > 0
            donors = near & (room > 0)
            if float(np.sum(self.M[donors] * room[donors])) <= amount:
                donors = room > 0
            avail = float(np.sum(self.M[donors] * room[donors]))
            x[donors] -= sign * room[donors] * (amount / avail)
        return x, worst

    def total(self, x: np.ndarray) -> float:
        """sum(M x): amount of Li (x * m^2 per unit depth)."""
        return float(self.M @ x)

    def mean(self, x: np.ndarray) -> float:
        """Capacity-weighted mean of x (the mesh average over the Li-storing cells)."""
        return float(self.M @ x / self.M.sum())

    def cell_gradient(self, x: np.ndarray) -> np.ndarray:
        """(M, 2) gradient of the P1 field x per cell (1/m)."""
        g = self.basis.interpolate(x).grad
        return np.asarray(g)[:, :, 0].T

    def cell_flux(self, x: np.ndarray, D_cells: np.ndarray) -> np.ndarray:
        """(M, 2) flux q = -D grad x per cell (x m/s)."""
        return -np.einsum("eij,ej->ei", np.asarray(D_cells, float), self.cell_gradient(x))
