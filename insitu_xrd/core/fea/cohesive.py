"""Zero-thickness cohesive interface elements on grain boundaries and the secant solver.

Why not scikit-fem: it has no cohesive/interface element. Its interior-facet bases need facets
shared by two cells of one connected mesh, while a cohesive crack needs the two sides to move
apart (doubled nodes). So the interfaces are 4-node line elements between the node copies of a
grain-boundary edge, assembled here with vectorised numpy + scipy.sparse (no loop over pairs).

Kinematics: jump [u] = u_B - u_A (side B minus side A), normal opening u_n = [u].n (n from A to
B), sliding u_t = [u].t. Integration: 2-point nodal (Newton-Cotes/Lobatto) rule, weight L/2 at
each end, which avoids the traction oscillations of Gauss integration with a stiff penalty
(Schellekens & de Borst, IJNME 36, 43 (1993)). Each (edge, end) is one integration point with its
own history.

Law (the seed paper's damage law; bilinear traction-separation on the effective opening
u = sqrt(<u_n>^2 + u_t^2), Macaulay bracket <.>: compression does not damage)::

    D(u) = 0                                  u <= u0 = sigma_c / K0
         = u_f / (u_f - u0) * (1 - u0 / u)    u0 < u < u_f = 2 Gamma / sigma_c
         = 1                                  u >= u_f
    D_n = max(D_{n-1}, D(u_n))                (irreversible: history variable)
    T = ((1 - D) + r) K0 [u]   (r: residual_stiffness_ratio, keeps floating grains bounded)
    compression: T_n = (1 + r) K0 u_n (contact penalty, undamaged), T_t = ((1 - D) + r) K0 u_t.

Then T = sigma_c (u_f - u)/(u_f - u0) on the softening branch, unloading is secant to the
origin, and the energy dissipated up to u_max is Gamma (u_max - u0)/(u_f - u0) (Gamma at full
separation).

Solver (:class:`SecantSolver`): secant (fixed-point) iterations on D per load step with the secant
stiffness K_bulk + K_int(D, contact); the bulk is condensed once onto the interface dofs, each
iteration is a preconditioned CG solve (the last LU of the condensed matrix as preconditioner,
refactorised only when CG slows down), the damage iterates are Anderson-mixed; converged when no
interface traction changes by more than tolerance * strength and no contact state flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, cg, splu

__all__ = ["CohesiveLaw", "InterfaceElements", "SecantSolver"]


@dataclass(frozen=True)
class CohesiveLaw:
    """Bilinear cohesive law. strength_Pa, fracture_energy_J_m2, penalty_Pa_m, residual_ratio."""

    strength_Pa: float
    fracture_energy_J_m2: float
    penalty_Pa_m: float
    residual_ratio: float = 0.0

    @property
    def u0_m(self) -> float:
        """Opening at damage onset (m)."""
        return self.strength_Pa / self.penalty_Pa_m

    @property
    def uf_m(self) -> float:
        """Opening at full separation (m)."""
        return 2.0 * self.fracture_energy_J_m2 / self.strength_Pa

    @staticmethod
    def effective_opening(u_n: np.ndarray, u_t: np.ndarray) -> np.ndarray:
        """sqrt(<u_n>^2 + u_t^2) (m)."""
        return np.hypot(np.maximum(u_n, 0.0), u_t)

    def damage(self, u_eff: np.ndarray) -> np.ndarray:
        """D(u) of the law for an effective opening u (m), no history."""
        u = np.asarray(u_eff, float)
        u0, uf = self.u0_m, self.uf_m
        with np.errstate(divide="ignore", invalid="ignore"):
            d = uf / (uf - u0) * (1.0 - u0 / u)
        return np.where(u <= u0, 0.0, np.where(u >= uf, 1.0, np.clip(d, 0.0, 1.0)))

    def stiffness(self, D: np.ndarray, u_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Secant normal and tangential stiffness (Pa/m) at damage D and normal opening u_n."""
        k = ((1.0 - D) + self.residual_ratio) * self.penalty_Pa_m
        kn = np.where(u_n < 0.0, (1.0 + self.residual_ratio) * self.penalty_Pa_m, k)
        return kn, k

    def traction(self, u_n: np.ndarray, u_t: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T_n, T_t) in Pa for openings (m) at damage D."""
        kn, kt = self.stiffness(D, u_n)
        return kn * u_n, kt * u_t

    def dissipated_energy(self, u_max: np.ndarray) -> np.ndarray:
        """Energy dissipated per unit area (J/m^2) after loading to u_max: Gamma (u-u0)/(uf-u0)."""
        u = np.asarray(u_max, float)
        return self.fracture_energy_J_m2 * np.clip((u - self.u0_m) / (self.uf_m - self.u0_m), 0.0, 1.0)


class InterfaceElements:
    """Interface (edge, end) integration points between node copies; vectorised assembly.

    nodes (K, 4): [a1, a2, b1, b2] node ids; normal (K, 2) unit, A -> B; length_m (K,);
    bonded (K,) bool: never damaged (e.g. grain-coating). Dofs are interleaved (2i, 2i+1).
    """

    def __init__(self, nodes: np.ndarray, normal: np.ndarray, length_m: np.ndarray,
                 bonded: np.ndarray | None = None) -> None:
        nodes = np.asarray(nodes, int).reshape(-1, 4)
        self.n_edges = nodes.shape[0]
        # integration points: end 1 -> (a1, b1), end 2 -> (a2, b2); point index = 2 * edge + end
        self.node_a = nodes[:, [0, 1]].ravel()
        self.node_b = nodes[:, [2, 3]].ravel()
        n = np.repeat(np.asarray(normal, float).reshape(-1, 2), 2, axis=0)
        self.normal = n
        self.tangent = np.column_stack([-n[:, 1], n[:, 0]])
        self.weight_m = np.repeat(0.5 * np.asarray(length_m, float).ravel(), 2)
        self.bonded = np.zeros(2 * self.n_edges, bool) if bonded is None else np.repeat(np.asarray(bonded, bool), 2)
        dofs = np.column_stack([2 * self.node_a, 2 * self.node_a + 1, 2 * self.node_b, 2 * self.node_b + 1])
        self.dofs = dofs  # (P, 4)
        self._rows = np.repeat(dofs, 4, axis=1).ravel()
        self._cols = np.tile(dofs, (1, 4)).ravel()

    @property
    def n_points(self) -> int:
        return int(self.node_a.size)

    def jumps(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u_n, u_t) at every point (m) for the displacement vector u (m, interleaved)."""
        u2 = np.asarray(u).reshape(-1, 2)
        d = u2[self.node_b] - u2[self.node_a]
        return np.einsum("ij,ij->i", d, self.normal), np.einsum("ij,ij->i", d, self.tangent)

    def local_matrices(self, kn: np.ndarray, kt: np.ndarray) -> np.ndarray:
        """(P, 4, 4) matrices w [[k, -k], [-k, k]], k = kn n n^T + kt t t^T, on the dofs (a_x, a_y, b_x, b_y)."""
        n, t, w = self.normal, self.tangent, self.weight_m
        k2 = w[:, None, None] * (kn[:, None, None] * n[:, :, None] * n[:, None, :]
                                 + kt[:, None, None] * t[:, :, None] * t[:, None, :])
        return np.concatenate([np.concatenate([k2, -k2], axis=2), np.concatenate([-k2, k2], axis=2)], axis=1)

    def matrix(self, kn: np.ndarray, kt: np.ndarray, n_dofs: int) -> csr_matrix:
        """Stiffness (n_dofs x n_dofs) of the springs across all points (vectorised COO assembly)."""
        k4 = self.local_matrices(kn, kt)
        return coo_matrix((k4.ravel(), (self._rows, self._cols)), shape=(n_dofs, n_dofs)).tocsr()

    def edge_mean(self, point_values: np.ndarray) -> np.ndarray:
        """(K,) mean of a per-point quantity over the two ends of each edge."""
        return np.asarray(point_values).reshape(-1, 2).mean(axis=1)


class SecantSolver:
    """Quasi-static equilibrium with cohesive interfaces, one call per load step.

    K_bulk: bulk stiffness (n_dofs x n_dofs, block-diagonal over the regions because the regions
    share no nodes); interfaces; law; fixed_dofs: Dirichlet dofs (zero or given values).

    The bulk is linear, so it is condensed once onto the interface dofs B (static condensation
    region by region: S = K_BB - K_BI K_II^-1 K_IB, the interior dofs I of each grain eliminated
    with its own sparse LU). The secant iterations then factorise only S + K_int(D), a few
    thousand dofs, and the interior displacement is recovered once per step.
    State: D (P,) committed damage, u_max (P,) largest effective opening, contact (P,).
    """

    def __init__(self, K_bulk: csr_matrix, interfaces: InterfaceElements, law: CohesiveLaw,
                 fixed_dofs: np.ndarray, max_iterations: int = 60, tolerance: float = 1e-2,
                 anderson_depth: int = 5) -> None:
        self.n_dofs = K_bulk.shape[0]
        K = K_bulk.tocsr()
        self.itf = interfaces
        self.law = law
        self.fixed = np.unique(np.asarray(fixed_dofs, int))
        self.max_iterations = int(max_iterations)
        self.tolerance = float(tolerance)
        self.anderson_depth = int(anderson_depth)
        nd = self.n_dofs
        is_fixed = np.zeros(nd, bool)
        is_fixed[self.fixed] = True
        is_b = np.zeros(nd, bool)
        is_b[interfaces.dofs.ravel()] = True
        is_b &= ~is_fixed
        self.bdofs = np.flatnonzero(is_b)
        self.idofs = np.flatnonzero(~is_b & ~is_fixed)
        self._K = K
        self._K_IB = K[self.idofs][:, self.bdofs].tocsc()
        self._K_Id = K[self.idofs][:, self.fixed].tocsr()
        self._K_Bd = K[self.bdofs][:, self.fixed].tocsr()
        K_II = K[self.idofs][:, self.idofs].tocsc()
        self._lu_II = splu(K_II) if self.idofs.size else None
        # Schur complement, region by region (the blocks of K_II are the connected regions)
        self.S = self._schur(K, K_II)
        # interface matrix rows/cols in the numbering of B (interface dofs are never interior)
        bpos = np.full(nd, -1)
        bpos[self.bdofs] = np.arange(self.bdofs.size)
        r, c = bpos[interfaces._rows], bpos[interfaces._cols]
        self._keep = (r >= 0) & (c >= 0)
        self._rb, self._cb = r[self._keep], c[self._keep]
        self.D = np.zeros(interfaces.n_points)
        self.u_max = np.zeros(interfaces.n_points)
        self.contact = np.zeros(interfaces.n_points, bool)
        self.u = np.zeros(nd)
        self.n_iterations_total = 0
        self.n_factorizations = 0
        self.n_unconverged_steps = 0
        self.last_iterations = 0
        self.last_converged = True
        self._lu = None
        self.cg_max = 20
        self.cg_rtol = 1e-10
        self.n_cg_iterations = 0

    def _schur(self, K: csr_matrix, K_II) -> csr_matrix:
        """S = K_BB - K_BI K_II^-1 K_IB assembled from dense per-region blocks."""
        nb = self.bdofs.size
        if self.idofs.size == 0 or nb == 0:
            return K[self.bdofs][:, self.bdofs].tocsr()
        # connected blocks of the free-dof graph = regions (grains, coating)
        free = np.concatenate([self.idofs, self.bdofs])
        Kf = K[free][:, free]
        n_comp, lab = connected_components(Kf, directed=False)
        lab_i, lab_b = lab[: self.idofs.size], lab[self.idofs.size:]
        K_BB = K[self.bdofs][:, self.bdofs].tocsr()
        rows, cols, vals = [], [], []
        for comp in range(n_comp):  # loop over regions (tens), not elements
            ii = np.flatnonzero(lab_i == comp)
            bb = np.flatnonzero(lab_b == comp)
            if bb.size == 0:
                continue
            if ii.size:
                Kii = K_II[ii][:, ii].tocsc()
                Kib = self._K_IB[ii][:, bb].toarray()
                X = splu(Kii).solve(Kib)
                Sg = -(Kib.T @ X)
            else:
                Sg = np.zeros((bb.size, bb.size))
            rr, cc = np.meshgrid(bb, bb, indexing="ij")
            rows.append(rr.ravel())
            cols.append(cc.ravel())
            vals.append(Sg.ravel())
        corr = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nb, nb))
        S = (K_BB + corr.tocsr()).tocsr()
        return 0.5 * (S + S.T)

    def _interface_BB(self, D: np.ndarray, contact: np.ndarray) -> csr_matrix:
        """Interface stiffness on the condensed dofs for damage D and contact state."""
        kn, kt = self.law.stiffness(D, np.where(contact, -1.0, 1.0))
        k4 = self.itf.local_matrices(kn, kt).ravel()
        nb = self.bdofs.size
        return coo_matrix((k4[self._keep], (self._rb, self._cb)), shape=(nb, nb)).tocsr()

    def _linear_solve(self, A: csr_matrix, b: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """Solve A x = b: conjugate gradients preconditioned by the last LU factorisation (A is
        SPD and differs from the factorised matrix only on interfaces whose damage moved);
        refactorise when CG needs more than ``cg_max`` iterations or fails."""
        if self._lu is not None:
            count = [0]

            def cb(_xk: np.ndarray) -> None:
                count[0] += 1

            prec = LinearOperator(A.shape, matvec=self._lu.solve, dtype=float)
            x, info = cg(A, b, x0=x0, rtol=self.cg_rtol, maxiter=self.cg_max, M=prec, callback=cb)
            self.n_cg_iterations += count[0]
            if info == 0:
                return x
        self._lu = splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A")
        self.n_factorizations += 1
        return self._lu.solve(b)

    def solve(self, f: np.ndarray, fixed_values: np.ndarray | None = None) -> np.ndarray:
        """Displacement (m) for the load f (N/m) and Dirichlet values (default 0); updates the state.

        The fixed point D = G(D) (G: solve with the secant stiffness of D, damage from the new
        jumps) is accelerated by Anderson mixing over the last ``anderson_depth`` iterates
        (Walker & Ni, SIAM J. Numer. Anal. 49, 1715 (2011)), projected back onto
        D_committed <= D <= 1: a plain secant iteration converges linearly with a rate close to 1
        when a grain held only by softening boundaries has almost no stiffness left, and the
        mixing removes those slow modes. Converged when the secant traction of every point changes
        by at most ``tolerance`` * strength (|Delta D| K0 u_eff) and no contact state flips.
        Returns u; ``last_iterations`` = iterations used, ``last_converged``.
        """
        f = np.asarray(f, float)
        ud = np.zeros(self.fixed.size) if fixed_values is None else np.asarray(fixed_values, float)
        # condensed right-hand side on B
        f_I = f[self.idofs] - (self._K_Id @ ud if ud.any() else 0.0)
        y_I = self._lu_II.solve(f_I) if self._lu_II is not None else np.zeros(0)
        g_B = f[self.bdofs] - (self._K_Bd @ ud if ud.any() else 0.0) - self._K_IB.T @ y_I
        D_lo = self.D
        D_trial = self.D.copy()
        contact = self.contact.copy()
        converged = False
        hist_x: list[np.ndarray] = []
        hist_g: list[np.ndarray] = []
        u = np.zeros(self.n_dofs)
        u[self.fixed] = ud
        scale = self.law.penalty_Pa_m / self.law.strength_Pa
        if self.bdofs.size == 0:  # no free interface dof (one grain, or all jumps imposed): no iteration
            if self._lu_II is not None:
                u[self.idofs] = self._lu_II.solve(f_I)
            # the jumps are imposed (or absent): the state follows from them directly
            un, ut = self.itf.jumps(u)
            ueff = self.law.effective_opening(un, ut)
            self.D = np.maximum(self.D, self.law.damage(np.maximum(ueff, self.u_max)))
            self.D[self.itf.bonded] = 0.0
            self.u_max = np.maximum(self.u_max, ueff)
            self.contact = un < -1e-6 * self.law.u0_m
            self.last_iterations, self.last_converged = 1, True
            self.n_iterations_total += 1
            self.u = u.copy()
            return self.u
        for it in range(1, self.max_iterations + 1):
            A = (self.S + self._interface_BB(D_trial, contact)).tocsr()
            u[self.bdofs] = self._linear_solve(A, g_B, u[self.bdofs])
            un, ut = self.itf.jumps(u)
            ueff = self.law.effective_opening(un, ut)
            D_new = np.maximum(D_lo, self.law.damage(np.maximum(ueff, self.u_max)))
            D_new[self.itf.bonded] = 0.0
            # contact when the faces overlap by more than round-off (an exactly zero normal jump,
            # e.g. pure sliding, must not flip the state between iterations)
            contact_new = un < -1e-6 * self.law.u0_m
            dT = np.abs(D_new - D_trial) * scale * np.maximum(ueff, self.law.u0_m)
            if (dT.max() if dT.size else 0.0) <= self.tolerance and np.array_equal(contact_new, contact):
                converged = True
                break
            hist_x.append(D_trial)
            hist_g.append(D_new)
            if self.anderson_depth > 0 and len(hist_x) >= 2:
                hist_x, hist_g = hist_x[-(self.anderson_depth + 1):], hist_g[-(self.anderson_depth + 1):]
                res = [g - x for g, x in zip(hist_g, hist_x)]
                dF = np.column_stack([res[k + 1] - res[k] for k in range(len(res) - 1)])
                dG = np.column_stack([hist_g[k + 1] - hist_g[k] for k in range(len(res) - 1)])
                gamma = np.linalg.lstsq(dF, res[-1], rcond=None)[0]
                D_next = np.clip(D_new - dG @ gamma, D_lo, 1.0)
                D_next[self.itf.bonded] = 0.0
            else:
                D_next = D_new
            D_trial, contact = D_next, contact_new
        # interior dofs: K_II u_I = f_I - K_IB u_B
        if self._lu_II is not None:
            u[self.idofs] = self._lu_II.solve(f_I - self._K_IB @ u[self.bdofs])
        self.last_iterations = it
        self.n_iterations_total += it
        if not converged:
            self.n_unconverged_steps += 1
        self.D = D_new
        self.u_max = np.maximum(self.u_max, ueff)
        self.contact = contact_new
        self.u = u.copy()
        self.last_converged = converged
        return self.u
