"""Eigenstrain elasticity of the FEA model against analytic references (docs/fea.md)."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.core.fea.cohesive import CohesiveLaw, InterfaceElements, SecantSolver
from insitu_xrd.core.fea.elasticity import (
    ElasticProblem,
    effective_stiffness,
    eigenstress,
    grain_eigenstrain,
    grain_stiffness_Pa,
    isotropic_stiffness_Pa,
    strain_rotation,
    stress_zz,
)
from insitu_xrd.core.fea.mesh import build_mesh
from insitu_xrd.core.fea.params import ElasticParams, GeometryParams

EP = ElasticParams()


def _isotropic_params(E_GPa: float, nu: float) -> ElasticParams:
    lam = E_GPa * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E_GPa / (2 * (1 + nu))
    return ElasticParams(C11_GPa=lam + 2 * mu, C12_GPa=lam, C13_GPa=lam, C33_GPa=lam + 2 * mu, C44_GPa=mu,
                         coating_E_GPa=E_GPa, coating_nu=nu)


def test_rotation_preserves_strain_energy() -> None:
    rng = np.random.default_rng(1)
    theta = rng.uniform(0, np.pi, 7)
    Cpp, Cpz, _ = grain_stiffness_Pa(theta, EP)
    Cl = grain_stiffness_Pa(np.array([np.pi / 2]), EP)[0][0]
    # theta = pi/2 puts c along y and a1 along x, so the global matrix IS the grain-frame matrix
    assert Cl == pytest.approx(np.array([[EP.C11_GPa, EP.C13_GPa, 0], [EP.C13_GPa, EP.C33_GPa, 0],
                                         [0, 0, EP.C44_GPa]]) * 1e9, abs=1e-3)
    T = strain_rotation(theta)
    for k in range(theta.size):
        e = rng.normal(size=3)
        el = T[k] @ e
        assert e @ Cpp[k] @ e == pytest.approx(el @ Cl @ el, rel=1e-12)
        assert np.allclose(Cpp[k], Cpp[k].T)
        assert np.all(np.linalg.eigvalsh(Cpp[k]) > 0)


def test_isotropic_reduces_to_thermal_problem() -> None:
    """Isotropic constants: rotation does nothing; eps_a = eps_c = e0 gives s0 = (3 lam + 2 mu) e0 (1, 1, 0)."""
    E, nu, e0 = 186.0, 0.26, 0.01
    ip = _isotropic_params(E, nu)
    theta = np.array([0.0, 0.5, 2.0])
    Cpp, Cpz, Czz = grain_stiffness_Pa(theta, ip)
    Ci = isotropic_stiffness_Pa(E, nu, 3)
    for a, b in zip((Cpp, Cpz, Czz), Ci):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-3)
    eps_p, eps_zz = grain_eigenstrain(theta, np.full(3, e0), np.full(3, e0))
    assert np.allclose(eps_p, [[e0, e0, 0]] * 3, atol=1e-15)
    s0 = eigenstress(Cpp, Cpz, eps_p, eps_zz, "strain")
    lam = E * 1e9 * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E * 1e9 / (2 * (1 + nu))
    assert np.allclose(s0, [[(3 * lam + 2 * mu) * e0, (3 * lam + 2 * mu) * e0, 0]] * 3, rtol=1e-12, atol=1e-3)
    # plane stress: s0 = E e0 / (1 - nu) (1, 1, 0), the plane-stress thermal eigenstress
    Cps = effective_stiffness(Cpp, Cpz, Czz, "stress")
    s0s = eigenstress(Cps, Cpz, eps_p, eps_zz, "stress")
    assert s0s[:, 0] == pytest.approx(E * 1e9 * e0 / (1 - nu), rel=1e-12)


def _single_grain(h: float = 0.25):
    return build_mesh(GeometryParams(radius_um=1.0, n_grains=1, mesh_size_um=h, lloyd_iterations=0, mesher="builtin"))


@pytest.mark.parametrize("plane", ["strain", "stress"])
@pytest.mark.parametrize("theta", [0.0, 0.3, 1.1, np.pi / 2, 2.5])
def test_free_uniform_eigenstrain_is_stress_free(theta: float, plane: str) -> None:
    """One grain, uniform anisotropic eigenstrain, only rigid motions fixed: in-plane stress ~ 0."""
    m = _single_grain()
    n = m.n_cells
    th = np.full(n, theta)
    Cpp, Cpz, Czz = grain_stiffness_Pa(th, EP)
    C = effective_stiffness(Cpp, Cpz, Czz, plane)
    prob = ElasticProblem(m.nodes_um * 1e-6, m.triangles, C)
    ea, ec = -0.012, 0.018
    eps_p, eps_zz = grain_eigenstrain(th, np.full(n, ea), np.full(n, ec))
    s0 = eigenstress(C, Cpz, eps_p, eps_zz, plane)
    f = prob.load(s0)
    # pin the node at the origin (2 dofs) and u_y of the node at (R, 0): no rigid motion, no constraint
    i0 = int(np.argmin(np.linalg.norm(m.nodes_um, axis=1)))
    i1 = int(np.argmin(np.linalg.norm(m.nodes_um - [1.0, 0.0], axis=1)))
    fixed = np.array([2 * i0, 2 * i0 + 1, 2 * i1 + 1])
    free = np.setdiff1d(np.arange(prob.n_dofs), fixed)
    from scipy.sparse.linalg import spsolve

    u = np.zeros(prob.n_dofs)
    u[free] = spsolve(prob.K[free][:, free].tocsc(), f[free])
    sig = prob.stress(u, s0)
    scale = 186e9 * (ec - ea)
    assert np.max(np.abs(sig)) < 1e-8 * scale
    eps = prob.cell_strain(u)
    if plane == "strain":
        # total eps_zz = 0 with eps*_zz = eps_a: the grain strains by C^-1 C_pz eps_a more in plane and
        # carries sigma_zz = -(C_zz - C_pz^T C_pp^-1 C_pz) eps_a
        extra = np.linalg.solve(Cpp[0], Cpz[0]) * ea
        assert np.allclose(eps, eps_p + extra, atol=1e-10)
        szz = stress_zz(Cpz, Czz, eps, eps_p, eps_zz, plane)
        expected = -(Czz[0] - Cpz[0] @ np.linalg.solve(Cpp[0], Cpz[0])) * ea
        assert np.allclose(szz, expected, rtol=1e-8)
        assert abs(expected) > 1e-3 * scale  # the out-of-plane term is not negligible
    else:
        assert np.allclose(eps, eps_p, atol=1e-10)


def _inclusion_solution(r: np.ndarray, a: float, b: float, E: float, nu: float, e0: float):
    """Plane strain, 3-D eigenstrain e0 for r < a in a free cylinder of radius b (Timoshenko &
    Goodier, long circular cylinder, alpha T -> e0): (sigma_rr, sigma_tt)."""
    k = E * e0 / (2 * (1 - nu))
    inside = r < a
    srr = np.where(inside, -k * (1 - a**2 / b**2), -k * a**2 * (1 / r**2 - 1 / b**2))
    stt = np.where(inside, -k * (1 - a**2 / b**2), k * a**2 * (1 / r**2 + 1 / b**2))
    return srr, stt


def test_circular_inclusion_matches_plane_strain_solution() -> None:
    """Inclusion (r < a, the 'grain') with eigenstrain e0 bonded to a matrix ring (the 'coating')."""
    a_um, b_um, E, nu, e0 = 1.0, 3.0, 186.0, 0.26, 0.01
    m = build_mesh(GeometryParams(radius_um=a_um, n_grains=1, coating_um=b_um - a_um, mesh_size_um=0.1,
                                  lloyd_iterations=0, mesher="builtin"))
    ip = _isotropic_params(E, nu)
    n = m.n_cells
    th = np.zeros(n)
    Cpp, Cpz, Czz = grain_stiffness_Pa(th, ip)
    prob = ElasticProblem(m.nodes_um * 1e-6, m.triangles, Cpp)
    inc = m.cell_grain >= 0
    eps_p, eps_zz = grain_eigenstrain(th, np.where(inc, e0, 0.0), np.where(inc, e0, 0.0))
    f = prob.load(eigenstress(Cpp, Cpz, eps_p, eps_zz, "strain"))
    # the grain/matrix interface is bonded: a stiff penalty (compliance ~1e-5 of the displacement)
    law = CohesiveLaw(1e8, 1.0, 1e22)
    itf = InterfaceElements(m.interface_nodes, m.interface_normal, m.interface_length_um * 1e-6,
                            bonded=np.ones(len(m.interface_nodes), bool))
    fixed = np.concatenate([2 * m.sym_x_nodes, 2 * m.sym_y_nodes + 1])
    u = SecantSolver(prob.K, itf, law, fixed).solve(f)
    s0 = eigenstress(Cpp, Cpz, eps_p, eps_zz, "strain")
    sig = prob.stress(u, s0)
    cen = m.nodes_um[m.triangles].mean(axis=1)
    r = np.linalg.norm(cen, axis=1)
    c, s = cen[:, 0] / r, cen[:, 1] / r
    srr = sig[:, 0] * c**2 + sig[:, 1] * s**2 + 2 * sig[:, 2] * c * s
    stt = sig[:, 0] * s**2 + sig[:, 1] * c**2 - 2 * sig[:, 2] * c * s
    ex_rr, ex_tt = _inclusion_solution(r, a_um, b_um, E * 1e9, nu, e0)
    scale = E * 1e9 * e0 / (2 * (1 - nu))
    area = prob.area_m2
    # inside: uniform hydrostatic in-plane stress, area-weighted mean and spread
    inside_mean = np.sum(area[inc] * 0.5 * (srr + stt)[inc]) / area[inc].sum()
    assert inside_mean == pytest.approx(ex_rr[inc][0], rel=0.02)
    # matrix: radial profile in bins (P1 stress is cellwise constant: compare bin means)
    bins = np.linspace(1.2, 2.8, 9)
    k = np.digitize(r, bins)
    for comp, ex in ((srr, ex_rr), (stt, ex_tt)):
        for i in range(1, len(bins)):
            sel = (k == i) & ~inc
            fe = np.sum(area[sel] * comp[sel]) / area[sel].sum()
            an = np.sum(area[sel] * ex[sel]) / area[sel].sum()
            assert abs(fe - an) < 0.02 * scale, (i, fe / scale, an / scale)
    # whole field, area-weighted L2 error relative to the stress scale
    err = np.sqrt(np.sum(area * ((srr - ex_rr) ** 2 + (stt - ex_tt) ** 2)) / np.sum(area * (ex_rr**2 + ex_tt**2)))
    assert err < 0.05
