"""Cohesive grain-boundary law and interface elements: two blocks pulled apart (docs/fea.md)."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.core.fea.cohesive import CohesiveLaw, InterfaceElements, SecantSolver
from insitu_xrd.core.fea.elasticity import ElasticProblem, isotropic_stiffness_Pa

SIGMA, GAMMA, K0 = 100e6, 1.0, 1e19
LAW = CohesiveLaw(SIGMA, GAMMA, K0, residual_ratio=0.0)


def test_law_shape() -> None:
    u0, uf = LAW.u0_m, LAW.uf_m
    assert u0 == pytest.approx(1e-11) and uf == pytest.approx(2e-8)
    u = np.array([0.5 * u0, u0, 0.3 * uf, 0.7 * uf, uf, 2 * uf])
    D = LAW.damage(u)
    assert D[0] == 0 and D[1] == 0 and D[4] == 1 and D[5] == 1
    T = LAW.traction(u, np.zeros_like(u), D)[0]
    expected = np.where(u <= u0, K0 * u, np.where(u >= uf, 0.0, SIGMA * (uf - u) / (uf - u0)))
    assert np.allclose(T, expected, rtol=1e-12, atol=1e-6)
    assert np.all(np.diff(D) >= 0)
    # compression: no damage and contact stiffness K0
    assert LAW.damage(LAW.effective_opening(np.array([-1e-9]), np.array([0.0])))[0] == 0
    assert LAW.traction(np.array([-1e-9]), np.array([0.0]), np.array([0.9]))[0][0] == pytest.approx(-K0 * 1e-9)


def _two_blocks(n: int = 4, L_um: float = 1.0):
    """Blocks [0, L] x [0, L] and [L, 2L] x [0, L] of n x n squares (2 triangles each), node copies at x = L."""
    xs = np.linspace(0, L_um, n + 1)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    pa = np.column_stack([X.ravel(), Y.ravel()])
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    q = np.column_stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()])
    ta = np.vstack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    nodes = np.vstack([pa, pa + [L_um, 0.0]])
    tris = np.vstack([ta, ta + len(pa)])
    a_side = idx[-1, :]  # x = L of block A
    b_side = idx[0, :] + len(pa)  # x = L of block B
    itf_nodes = np.column_stack([a_side[:-1], a_side[1:], b_side[:-1], b_side[1:]])
    normal = np.tile([1.0, 0.0], (n, 1))
    length = np.full(n, L_um / n)
    left = idx[0, :]
    right = idx[-1, :] + len(pa)
    return nodes, tris, itf_nodes, normal, length, left, right


def _setup(law: CohesiveLaw, mode: str):
    nodes, tris, itf_nodes, normal, length, left, right = _two_blocks()
    C = isotropic_stiffness_Pa(186.0, 0.0, len(tris))[0]  # nu = 0: exactly uniaxial
    prob = ElasticProblem(nodes * 1e-6, tris, C)
    itf = InterfaceElements(itf_nodes, normal, length * 1e-6)
    if mode == "I":  # pull the right edge along x; y held at the left edge and the right edge
        fixed = np.concatenate([2 * left, 2 * right, 2 * left + 1, 2 * right + 1])
        load = 2 * right
    else:  # mode II: block A held, block B translated rigidly along y (the slip is the imposed value)
        na = len(nodes) // 2
        fixed = np.arange(2 * len(nodes))
        load = 2 * np.arange(na, len(nodes)) + 1
    solver = SecantSolver(prob.K, itf, law, fixed, max_iterations=100, tolerance=1e-4)
    loaded = np.isin(solver.fixed, load)
    return prob, itf, solver, loaded, load


def _cycle(law: CohesiveLaw, delta_path: np.ndarray, mode: str = "I"):
    prob, itf, solver, loaded, load = _setup(law, mode)
    H = 1e-6
    force, opening, damage = [], [], []
    for d in delta_path:  # loop over load steps
        ud = np.where(loaded, d, 0.0)
        u = solver.solve(np.zeros(prob.n_dofs), fixed_values=ud)
        assert solver.last_converged
        un, ut = itf.jumps(u)
        if mode == "I":
            reaction = (prob.K @ u)[load].sum()  # the bulk carries the load to the loaded edge
        else:  # rigid translation: the load goes straight into the assembled interface springs
            kn, kt = law.stiffness(solver.D, un)
            reaction = (itf.matrix(kn, kt, prob.n_dofs) @ u)[load].sum()
        force.append(reaction / H)
        opening.append((un if mode == "I" else ut).mean())
        damage.append(solver.D.copy())
    return np.array(force), np.array(opening), np.array(damage), solver


def test_mode_I_traction_separation_curve() -> None:
    """Reaction (bulk) / length follows the law T(u) at the computed opening, through softening."""
    uf = LAW.uf_m
    path = np.linspace(0, 1.3 * uf, 131)
    T, u, D, _ = _cycle(LAW, path)
    expected = np.where(u <= LAW.u0_m, K0 * u, np.where(u >= uf, 0.0, SIGMA * (uf - u) / (uf - LAW.u0_m)))
    assert np.max(np.abs(T - expected)) < 1e-3 * SIGMA
    assert T.max() == pytest.approx(SIGMA, rel=0.05)  # peak reached within one load step of u0
    assert np.all(np.diff(D, axis=0) >= -1e-15) and D[-1].min() == 1.0


@pytest.mark.parametrize("u_max_over_uf", [0.5, 1.2])
def test_dissipated_energy(u_max_over_uf: float) -> None:
    """Load to u_max and unload to zero: W = closed-cycle work = Gamma (u_max - u0)/(u_f - u0) < 2 %."""
    uf = LAW.uf_m
    up = np.linspace(0, u_max_over_uf * uf, 201)
    path = np.concatenate([up, up[::-1][1:]])
    T, u, D, solver = _cycle(LAW, path)
    W = np.trapezoid(T, path)  # J/m^2 of interface (work of the edge load per interface length)
    # the opening is the imposed displacement minus the (small) elastic stretch of the blocks
    expected = float(LAW.dissipated_energy(u[: len(up)].max()))
    assert W == pytest.approx(expected, rel=0.02)
    if u_max_over_uf > 1:
        assert W == pytest.approx(GAMMA, rel=0.02)
    # unloading is secant towards the origin: no residual opening, damage kept
    assert abs(T[-1]) < 1e-6 * SIGMA and np.allclose(D[-1], D[len(up) - 1])


def test_irreversible_on_unloading_and_reloading() -> None:
    uf = LAW.uf_m
    path = np.concatenate([np.linspace(0, 0.4 * uf, 41), np.linspace(0.4 * uf, 0.1 * uf, 31),
                           np.linspace(0.1 * uf, 0.4 * uf, 31)])
    T, u, D, _ = _cycle(LAW, path)
    d_peak = D[40].mean()
    assert 0.9 < d_peak < 1.0
    # unloading and reloading below the old maximum: damage frozen, traction on the secant line
    assert np.allclose(D[40:], D[40], atol=1e-12)
    sec = (1 - d_peak) * K0
    assert np.allclose(T[41:], sec * u[41:], rtol=1e-3)


def test_compression_gives_no_damage_and_penalty_contact() -> None:
    path = -np.linspace(0, 5e-9, 11)  # pushes the blocks together (elastic shortening ~2e-9 at 400 MPa)
    T, u, D, _ = _cycle(LAW, path)
    assert np.all(D == 0)
    assert np.all(u <= 0) and T[-1] < -SIGMA  # well beyond the tensile strength, still undamaged
    assert np.allclose(u, T / K0, rtol=1e-6)  # interpenetration = sigma / K0


def test_mode_II_same_damage_as_mode_I() -> None:
    uf = LAW.uf_m
    path = np.linspace(0, 0.6 * uf, 61)
    T1, u1, D1, _ = _cycle(LAW, path, "I")
    T2, u2, D2, _ = _cycle(LAW, path, "II")
    # same effective opening -> same damage and the same magnitude of traction
    assert np.allclose(u2, path, rtol=1e-12)
    d1 = D1.mean(axis=1)
    d2 = D2.mean(axis=1)
    d1_at_u2 = np.interp(u2, u1, d1)
    assert np.allclose(d2, LAW.damage(u2), atol=1e-12)
    assert np.allclose(d1_at_u2[5:], d2[5:], atol=2e-3)
    T_law = np.where(u2 <= LAW.u0_m, K0 * u2, SIGMA * (LAW.uf_m - u2) / (LAW.uf_m - LAW.u0_m))
    assert np.allclose(T2, T_law, rtol=1e-6, atol=1e-6 * SIGMA)
