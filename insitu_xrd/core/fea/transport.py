"""The Li-transport half of the model: grains -> diffusivities, surface rates, stepping by SoC.

:class:`LiTransport` builds the diffusion problem of a mesh (:mod:`diffusion`) and its surface
condition (:mod:`surface`) from the parameters and advances the Li content in steps of equal
state-of-charge increments; :func:`run_transport` runs it alone (no mechanics), which is what the
tests of the surface condition and a quick look at the delivered rates need.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from insitu_xrd.core.fea.diffusion import DiffusionProblem, diffusivity_tensors
from insitu_xrd.core.fea.mesh import FEAMesh, build_mesh
from insitu_xrd.core.fea.params import FEAParams
from insitu_xrd.core.fea.surface import SurfaceFlux, SurfaceStep

__all__ = ["grain_orientations", "grain_rates", "LiTransport", "run_transport"]


def grain_orientations(n_grains: int, seed: int) -> np.ndarray:
    """c-axis angle (rad, from x, uniform in [0, pi)) of each grain, from its own seeded stream."""
    return np.random.default_rng([int(seed), 1]).uniform(0.0, np.pi, int(n_grains))


def grain_rates(mesh: FEAMesh, params: FEAParams) -> np.ndarray:
    """C-rate of each grain (NaN for grains without outer surface), per ``transport.rate_rule``."""
    tp = params.transport
    rates = np.full(mesh.n_grains, np.nan)
    surf = np.flatnonzero(mesh.grain_on_surface)
    if surf.size == 0:
        return rates
    # order the surface grains along the arc (mean angle of their outer edges)
    mid = 0.5 * (mesh.base_nodes_um[mesh.outer_edges[:, 0]] + mesh.base_nodes_um[mesh.outer_edges[:, 1]])
    ang = np.arctan2(mid[:, 1], mid[:, 0])
    mean_ang = np.bincount(mesh.outer_edge_grain, ang, mesh.n_grains) / np.maximum(
        np.bincount(mesh.outer_edge_grain, None, mesh.n_grains), 1)
    surf = surf[np.argsort(mean_ang[surf], kind="stable")]
    values = np.resize(np.asarray(tp.rates_C, float), surf.size)
    if tp.rate_rule == "shuffled":
        values = np.random.default_rng([int(tp.rate_seed), 2]).permutation(values)
    elif tp.rate_rule == "uniform":
        values = np.full(surf.size, tp.rates_C[0])
    rates[surf] = values
    return rates


class LiTransport:
    """Diffusion + surface condition of one mesh, stepped by equal SoC increments.

    Attributes used by the model: ``diff`` (DiffusionProblem), ``surface`` (SurfaceFlux),
    ``cell_theta`` (rad per cell, 0 in the coating), ``is_grain`` (per cell), ``rates``
    (C-rate per grain), ``flux_1C`` (x m/s), ``area_nmc`` (m^2, Li-storing area).
    """

    def __init__(self, mesh: FEAMesh, params: FEAParams, theta_rad: np.ndarray) -> None:
        tp = params.transport
        self.params = params
        self.rates = grain_rates(mesh, params)
        cg = mesh.cell_grain
        self.is_grain = cg >= 0
        self.cell_theta = np.where(self.is_grain, np.asarray(theta_rad, float)[np.maximum(cg, 0)], 0.0)
        D_cells = diffusivity_tensors(self.cell_theta, tp.D_ab_m2_s, tp.D_c_m2_s)
        D_cells[~self.is_grain] = tp.coating_D_m2_s * np.eye(2)
        self.diff = DiffusionProblem(mesh.base_nodes_um * 1e-6, mesh.base_triangles, D_cells,
                                     self.is_grain.astype(float), mesh.outer_edges)
        self.area_nmc = float(self.diff.M.sum())
        # outward flux (x m/s) of 1C: a uniform 1C lowers the mean x by x_per_1C_hour per hour
        self.flux_1C = tp.x_per_1C_hour / 3600.0 * self.area_nmc / float(self.diff.edge_length_m.sum())
        edge_rate = self.rates[mesh.outer_edge_grain]
        limit = tp.kinetic_x_limit_1C if tp.surface_condition == "kinetic" else None
        self.surface = SurfaceFlux(self.diff, edge_rate * self.flux_1C, mesh.outer_edge_grain, mesh.n_grains,
                                   self.flux_1C, limit)

    @property
    def nominal_duration_s(self) -> float:
        """Time to soc_end with every surface at its prescribed rate (s)."""
        return self.params.time.soc_end * self.area_nmc / self.surface.prescribed_total

    def initial(self) -> np.ndarray:
        """Pristine nodal Li content (x_start everywhere)."""
        return np.full(self.diff.M.size, self.params.time.x_start)

    def advance(self, x: np.ndarray) -> SurfaceStep:
        """One step from x removing soc_end / n_steps of Li (per NMC area)."""
        tm = self.params.time
        return self.surface.advance(x, tm.soc_end / tm.n_steps * self.area_nmc)

    def particle_rate_C(self, step: SurfaceStep) -> float:
        """C-rate of the whole particle over the step: d soc/dt in units of x_per_1C_hour per hour."""
        dsoc_dt = float(step.outflow.sum()) / self.area_nmc
        return dsoc_dt * 3600.0 / self.params.transport.x_per_1C_hour


def run_transport(params: FEAParams | None = None,
                  progress: Callable[[int, int], None] | None = None) -> xr.Dataset:
    """Li transport alone (no mechanics) to ``time.soc_end``: per step the time, SoC (from the
    integrated outflow), mesh-mean, smallest and largest nodal Li content, and the delivered C-rate
    of every grain. Uses the same mesh, orientations and surface condition as :func:`run_fea`."""
    p = FEAParams() if params is None else params
    mesh = build_mesh(p.geometry)
    tr = LiTransport(mesh, p, grain_orientations(mesh.n_grains, p.geometry.seed))
    n = p.time.n_steps
    x = tr.initial()
    li0 = tr.diff.total(x)
    t = np.zeros(n + 1)
    removed = np.zeros(n + 1)
    x_mean, x_min, x_max = np.empty(n + 1), np.empty(n + 1), np.empty(n + 1)
    grain_rate = np.empty((n + 1, mesh.n_grains))
    x_mean[0], x_min[0], x_max[0] = tr.diff.mean(x), x.min(), x.max()
    grain_rate[0] = tr.surface.grain_rate_C(tr.surface.delivered(x))
    for k in range(1, n + 1):  # loop over time steps
        st = tr.advance(x)
        x = st.x
        t[k] = t[k - 1] + st.dt_s
        removed[k] = removed[k - 1] + st.dt_s * float(st.outflow.sum())
        x_mean[k], x_min[k], x_max[k] = tr.diff.mean(x), x.min(), x.max()
        grain_rate[k] = tr.surface.grain_rate_C(st.outflow)
        if progress is not None:
            progress(k, n)
    return xr.Dataset(
        {"x_li_min": ("step", x_min), "x_li_max": ("step", x_max),
         "grain_rate_C": ("grain", tr.rates), "grain_delivered_rate_C": (("step", "grain"), grain_rate)},
        coords={"step": np.arange(n + 1), "time_s": ("step", t), "soc": ("step", removed / tr.area_nmc),
                "x_li_mean": ("step", x_mean)},
        attrs={"mass_balance_rel_error": float((li0 - tr.diff.total(x) - removed[-1]) / li0),
               "surface_condition": p.transport.surface_condition,
               "n_limited_steps": int(tr.surface.n_limited_steps),
               "n_bound_corrections": int(tr.surface.n_bound_corrections),
               "bound_correction_max": float(tr.surface.bound_correction_max),
               "n_factorizations": int(tr.diff.n_factorizations)})
