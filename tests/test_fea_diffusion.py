"""Li diffusion of the FEA model against analytic references (docs/fea.md, "Verification")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import j0, jn_zeros
from skfem import condense, solve

from insitu_xrd.core.fea.diffusion import DiffusionProblem, diffusivity_tensors
from insitu_xrd.core.fea.mesh import build_mesh
from insitu_xrd.core.fea.params import GeometryParams
from insitu_xrd.core.fea.surface import SurfaceFlux


def _disc_series(r_over_a: np.ndarray, tau: float, n_terms: int = 400) -> np.ndarray:
    """Carslaw & Jaeger (Ch. 7) / Crank (Ch. 5): solid cylinder, constant inward flux F, c(r,0)=0.

    Returns (c - c0) / (F a / D) at tau = D t / a^2.
    """
    alpha = jn_zeros(1, n_terms)
    rr = np.asarray(r_over_a)[:, None]
    series = np.sum(np.exp(-alpha**2 * tau) * j0(alpha * rr) / (alpha**2 * j0(alpha)), axis=1)
    return 2 * tau + rr[:, 0] ** 2 / 2 - 0.25 - 2 * series


def _quarter_disc(radius_um: float, h_um: float):
    return build_mesh(GeometryParams(radius_um=radius_um, n_grains=1, mesh_size_um=h_um, lloyd_iterations=0,
                                     mesher="builtin"))


def test_series_reference_is_consistent() -> None:
    # the reference itself: zero at t = 0 and mean = 2 tau (mass balance of the exact solution)
    r = np.linspace(0, 1, 2001)
    assert np.max(np.abs(_disc_series(r, 0.0))) < 2e-3
    prof = _disc_series(r, 0.1)
    mean = np.trapezoid(prof * 2 * r, r)
    assert mean == pytest.approx(0.2, abs=1e-4)


def test_quarter_disc_constant_flux_matches_series() -> None:
    """Isotropic quarter disc, zero flux on the cuts, constant outward flux: < 1 % of the change."""
    a_um, D = 1.0, 1e-14
    m = _quarter_disc(a_um, 0.04)
    a = a_um * 1e-6
    Dc = np.repeat(D * np.eye(2)[None], m.n_cells, axis=0)
    prob = DiffusionProblem(m.base_nodes_um * 1e-6, m.base_triangles, Dc, np.ones(m.n_cells), m.outer_edges)
    j = 1e-9  # outward flux in x m/s (delithiation)
    F = prob.flux_load(np.full(len(m.outer_edges), j))
    tau_end, n = 0.15, 300
    t_end = tau_end * a * a / D
    prob.set_dt(t_end / n)
    x = np.ones(m.base_nodes_um.shape[0])
    for _ in range(n):
        x = prob.step(x, F)
    r = np.linalg.norm(m.base_nodes_um, axis=1) / a_um
    exact = 1.0 - (j * a / D) * _disc_series(r, tau_end)
    change = np.max(np.abs(exact - 1.0))
    err = np.max(np.abs(x - exact)) / change
    assert err < 0.01, f"max error {err:.4f} of the concentration change"
    # the shape of the profile (surface minus centre) is resolved too, not only the mean
    assert x[r > 0.999].mean() < x[r < 0.05].mean()


def test_kinetic_surface_matches_series_while_far_from_empty() -> None:
    """The kinetic surface condition, stepped by equal Li removal, is the constant-flux problem
    while the surface is far above its limit: same Carslaw & Jaeger series, equal step lengths."""
    a_um, D = 1.0, 1e-14
    m = _quarter_disc(a_um, 0.04)
    a = a_um * 1e-6
    Dc = np.repeat(D * np.eye(2)[None], m.n_cells, axis=0)
    prob = DiffusionProblem(m.base_nodes_um * 1e-6, m.base_triangles, Dc, np.ones(m.n_cells), m.outer_edges)
    j = 1e-9  # outward flux in x m/s; the surface ends near x = 0.93, the 1C limit is x = 0.02
    surf = SurfaceFlux(prob, np.full(len(m.outer_edges), j), np.zeros(len(m.outer_edges), int), 1, j, 0.02)
    tau_end, n = 0.15, 300
    t_end = tau_end * a * a / D
    removed = t_end * surf.prescribed_total / n
    x = np.ones(m.base_nodes_um.shape[0])
    dts = []
    for _ in range(n):
        st = surf.advance(x, removed)
        x = st.x
        dts.append(st.dt_s)
    assert surf.n_limited_steps == 0
    np.testing.assert_allclose(dts, t_end / n, rtol=1e-12)
    r = np.linalg.norm(m.base_nodes_um, axis=1) / a_um
    exact = 1.0 - (j * a / D) * _disc_series(r, tau_end)
    err = np.max(np.abs(x - exact)) / np.max(np.abs(exact - 1.0))
    assert err < 0.01, f"max error {err:.4f} of the concentration change"


def test_mass_balance_is_exact_for_anisotropic_grains() -> None:
    """sum(M x) falls by exactly dt * sum(F) per step (1^T K = 0), for random grains and rates."""
    m = build_mesh(GeometryParams(radius_um=2.0, n_grains=8, seed=3, mesh_size_um=0.15, mesher="builtin"))
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, np.pi, m.n_grains)[m.cell_grain]
    Dc = diffusivity_tensors(theta, 1e-14, 1e-15)
    prob = DiffusionProblem(m.base_nodes_um * 1e-6, m.base_triangles, Dc, np.ones(m.n_cells), m.outer_edges)
    rates = rng.choice([1.0, 0.5, 0.1], m.n_grains)[m.outer_edge_grain]
    F = prob.flux_load(rates * 3e-10)
    dt = 20.0
    prob.set_dt(dt)
    x = np.ones(m.base_nodes_um.shape[0])
    total0 = prob.total(x)
    for k in range(1, 21):
        x = prob.step(x, F)
        expected = total0 - k * dt * F.sum()
        assert abs(prob.total(x) - expected) / total0 < 1e-10
    # the load is the integral of the flux: sum(F) = sum(j * edge length)
    assert F.sum() == pytest.approx(np.sum(rates * 3e-10 * prob.edge_length_m), rel=1e-12)


@pytest.mark.parametrize("theta", [0.0, 0.4, 1.2, np.pi / 2, 2.6])
def test_rotated_grain_gives_rotated_flux(theta: float) -> None:
    """Linear field x = g.X imposed on the boundary: exact for any constant D, flux = -R D R^T g."""
    m = _quarter_disc(1.0, 0.2)
    Dc = diffusivity_tensors(np.full(m.n_cells, theta), 1e-14, 1e-15)
    prob = DiffusionProblem(m.base_nodes_um * 1e-6, m.base_triangles, Dc, np.ones(m.n_cells), m.outer_edges)
    g = np.array([3.0e5, -1.0e5])  # 1/m
    X = m.base_nodes_um * 1e-6
    x_exact = X @ g
    boundary = prob.mesh.boundary_nodes()
    x = solve(*condense(prob.K, np.zeros(len(x_exact)), x=x_exact, D=boundary))
    assert np.max(np.abs(x - x_exact)) < 1e-9 * np.max(np.abs(x_exact))
    c = np.array([np.cos(theta), np.sin(theta)])
    a1 = np.array([np.sin(theta), -np.cos(theta)])
    expected = -(1e-14 * np.outer(a1, a1) + 1e-15 * np.outer(c, c)) @ g
    q = prob.cell_flux(x, Dc)
    assert np.max(np.abs(q - expected)) < 1e-8 * np.linalg.norm(expected)
    # anisotropy really acts: the flux is not along -g unless g lies on a principal axis
    if abs(np.sin(2 * (np.arctan2(g[1], g[0]) - theta))) > 0.3:
        cosang = -expected @ g / (np.linalg.norm(expected) * np.linalg.norm(g))
        assert cosang < 0.999


def test_diffusivity_tensor_principal_axes() -> None:
    D = diffusivity_tensors(np.array([0.7]), 1e-14, 1e-15)[0]
    w, v = np.linalg.eigh(D)
    assert w == pytest.approx([1e-15, 1e-14], rel=1e-12)
    assert abs(abs(v[:, 0] @ np.array([np.cos(0.7), np.sin(0.7)])) - 1) < 1e-12  # slow axis = c
