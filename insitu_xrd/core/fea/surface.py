"""Outer-surface condition of the Li transport, and time steps that each remove the same Li.

Each outer edge e carries the prescribed outward flux j_e = n_g j_1C of its grain (C-rate n_g).
Lumped onto the nodes (P1, one-point rule per edge, i.e. half of each edge to each end)::

    P_i = sum_e j_e L_e / 2          prescribed outflow of node i (x m^2/s per unit depth)
    w_i = sum_e L_e / 2              surface length of node i (m)

Surface conditions (``TransportParams.surface_condition``, docs/fea.md Sec. 1):

* ``constant_flux``: F_i = P_i whatever the surface holds (the seed paper's set-up);
* ``kinetic``: F_i = min(P_i, kappa w_i x_i), kappa = j_1C / kinetic_x_limit_1C. A node delivers its
  grain's rate while its Li content can support it; below that the outflow is the kinetically
  limited kappa x_i, which vanishes with the surface Li (Butler-Volmer extraction at a capped
  overpotential with an exchange current first order in the surface Li).

Implicit Euler with F taken at the new state: (M/dt + K) x + F(x) = M/dt x_old. F is piecewise
linear and concave, so the step is solved by a primal active set (semi-smooth Newton): on the
limited set A the outflow is the Robin term kappa w_i x_i (in the matrix), elsewhere the load P_i;
A is updated from the solution until it repeats (finite for this M-matrix-like problem). Off A the
content is >= P_i / (kappa w_i) > 0; on A the Robin sink cannot push it below 0 where the matrix is
an M-matrix. The anisotropic P1 matrix is not one everywhere, so a node can still undershoot by a
little (~1e-6) next to an emptied surface; such undershoots are removed conservatively
(:meth:`DiffusionProblem.enforce_bounds`) and counted (``n_bound_corrections``,
``bound_correction_max``).
Because 1^T K = 0, the Li removed by a step is exactly dt * sum(F): the state of charge from the
integrated outflow equals the mesh mean to round-off, whatever the set A.

Time steps: each step removes the same amount of Li (``advance``). With every node at its
prescribed rate the step length is exact (target / sum P, the equal steps of a constant-flux run);
where nodes are limited the removed amount dt * sum F(dt) increases monotonically with dt and the
step length is its root (Brent's method, relative tolerance 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from insitu_xrd.core.fea.diffusion import DiffusionProblem

__all__ = ["SurfaceFlux", "SurfaceStep"]

#: active-set iterations per solve at most (each is one factorisation and solve)
_MAX_ACTIVE_SET_ITERATIONS = 50
#: step-length doublings when bracketing a limited step (2^60: beyond any charge time)
_MAX_DOUBLINGS = 60
#: relative tolerance of the step length on the Li removed per step
_STEP_RTOL = 1e-12


@dataclass
class SurfaceStep:
    """One time step: the new nodal Li content, the step length and the outflow per node.

    x: (N,) Li content; dt_s: step length (s); outflow: (N,) delivered outflow F_i (x m^2/s per
    unit depth, 0 off the surface); limited: (N,) nodes on the kinetic limit."""

    x: np.ndarray
    dt_s: float
    outflow: np.ndarray
    limited: np.ndarray


class SurfaceFlux:
    """The outer-surface condition on a :class:`DiffusionProblem`.

    diff: the assembled diffusion problem (its flux edges are the outer surface).
    edge_flux: (E,) prescribed outward flux of each flux edge (x m/s: Li content times velocity).
    edge_grain: (E,) grain of each flux edge; n_grains: number of grains.
    flux_1C: the outward flux of a 1C facet (x m/s).
    kinetic_x_limit_1C: Li content at which a 1C facet reaches the kinetic limit; None = constant
        flux (no limit).
    """

    def __init__(self, diff: DiffusionProblem, edge_flux: np.ndarray, edge_grain: np.ndarray, n_grains: int,
                 flux_1C: float, kinetic_x_limit_1C: float | None) -> None:
        self.diff = diff
        edges = diff.flux_edges
        n = diff.M.size
        L = diff.edge_length_m
        self.edge_flux = np.asarray(edge_flux, float)
        self.edge_grain = np.asarray(edge_grain, int)
        self.n_grains = int(n_grains)
        self.flux_1C = float(flux_1C)
        half = np.concatenate([0.5 * L, 0.5 * L])
        ends = np.concatenate([edges[:, 0], edges[:, 1]])
        self.prescribed = np.bincount(ends, half * np.tile(self.edge_flux, 2), n)
        self.surface_length = np.bincount(ends, half, n)
        self.kinetic = kinetic_x_limit_1C is not None
        self.kappa = self.flux_1C / kinetic_x_limit_1C if kinetic_x_limit_1C is not None else np.inf
        self.robin = self.kappa * self.surface_length if self.kinetic else np.zeros(n)
        self.on_surface = self.surface_length > 0
        # per-grain bookkeeping: a grain's delivered outflow is its edges' share of their end nodes
        self.grain_length = np.bincount(self.edge_grain, L, self.n_grains)
        self.prescribed_total = float(self.prescribed.sum())
        self._limited = np.zeros(n, bool)
        self.n_active_set_iterations = 0
        self.n_unconverged_solves = 0
        self.n_limited_steps = 0
        self.n_bound_corrections = 0
        self.bound_correction_max = 0.0

    # ---- one implicit step at a given length ----------------------------------------------------
    def solve(self, x_old: np.ndarray, dt_s: float) -> SurfaceStep:
        """One implicit Euler step of length dt_s (s) from x_old with the surface condition."""
        if not self.kinetic:
            x = self.diff.solve(x_old, dt_s, self.prescribed)
            return SurfaceStep(x, float(dt_s), self.prescribed.copy(), np.zeros_like(self._limited))
        limited = self._limited.copy()
        for _ in range(_MAX_ACTIVE_SET_ITERATIONS):  # loop over active-set updates
            self.n_active_set_iterations += 1
            x = self.diff.solve(x_old, dt_s, np.where(limited, 0.0, self.prescribed),
                                np.where(limited, self.robin, 0.0))
            now = self.on_surface & (self.robin * x < self.prescribed)
            if np.array_equal(now, limited):
                break
            limited = now
        else:
            self.n_unconverged_solves += 1
            # keep the outflow of the last solve (mass balance stays exact), recompute x with it
            x = self.diff.solve(x_old, dt_s, np.where(limited, 0.0, self.prescribed),
                                np.where(limited, self.robin, 0.0))
        outflow = np.where(limited, self.robin * x, self.prescribed)
        # keep x in [0, 1] where the anisotropic P1 matrix misses the discrete maximum principle
        # (conservative, so the outflow and the mass balance are untouched; diffusion.py)
        x, moved = self.diff.enforce_bounds(x, 0.0, 1.0)
        if moved > 0:
            self.n_bound_corrections += 1
            self.bound_correction_max = max(self.bound_correction_max, moved)
        return SurfaceStep(x, float(dt_s), outflow, limited)

    # ---- one step removing a given amount of Li -------------------------------------------------
    def advance(self, x_old: np.ndarray, removed: float) -> SurfaceStep:
        """The step from x_old that removes ``removed`` (x m^2 per unit depth) of Li.

        Its length is removed / sum(P) while every node delivers its prescribed rate, else the
        root of dt * sum(F(dt)) = removed."""
        dt0 = removed / self.prescribed_total
        st = self.solve(x_old, dt0)
        if not st.limited.any():
            self._limited = st.limited
            return st
        self.n_limited_steps += 1
        cache: dict[float, SurfaceStep] = {dt0: st}

        def excess(dt: float) -> float:
            if dt not in cache:
                cache[dt] = self.solve(x_old, dt)
            s = cache[dt]
            return s.dt_s * float(s.outflow.sum()) - removed

        # the outflow only falls during a step, so removed / (outflow at its start) is a lower bound
        rate0 = float(self.delivered(x_old).sum())
        lo = max(dt0, removed / rate0) if rate0 > 0 else dt0
        if excess(lo) >= 0.0:
            lo = dt0
        hi = lo * 1.25
        for _ in range(_MAX_DOUBLINGS):  # the removed Li grows towards all of it as dt -> inf
            if excess(hi) >= 0.0:
                break
            lo, hi = hi, hi * 2.0
        else:
            raise RuntimeError(f"surface step: {removed:.3g} of Li cannot be removed in {hi:.3g} s "
                               "(is the requested state of charge beyond the Li the particle holds?)")
        dt = brentq(excess, lo, hi, xtol=1e-300, rtol=_STEP_RTOL)
        excess(dt)
        st = cache[dt]
        self._limited = st.limited
        return st

    # ---- rates -------------------------------------------------------------------------------------
    def delivered(self, x: np.ndarray) -> np.ndarray:
        """(N,) outflow the surface condition gives at the state x (x m^2/s per unit depth)."""
        if not self.kinetic:
            return self.prescribed.copy()
        return np.minimum(self.prescribed, self.robin * np.maximum(x, 0.0))

    def grain_rate_C(self, outflow: np.ndarray) -> np.ndarray:
        """(n_grains,) delivered C-rate of each grain: its mean outward flux over j_1C (NaN: no surface).

        Each edge is credited with the fraction F_i / P_i its end nodes delivered."""
        edges = self.diff.flux_edges
        frac = np.divide(outflow, self.prescribed, out=np.ones_like(outflow), where=self.prescribed > 0)
        L = self.diff.edge_length_m
        per_edge = self.edge_flux * 0.5 * L * (frac[edges[:, 0]] + frac[edges[:, 1]])
        total = np.bincount(self.edge_grain, per_edge, self.n_grains)
        out = np.full(self.n_grains, np.nan)
        has = self.grain_length > 0
        out[has] = total[has] / (self.flux_1C * self.grain_length[has])
        return out
