"""The coupled model: mesh -> Li diffusion -> eigenstrain -> elasticity with cohesive grain boundaries.

Staggered scheme per time step n -> n+1 (docs/fea.md):

1. diffusion: one implicit-Euler step of Fick's law on the undoubled mesh with the surface
   condition (transport.py, surface.py): every step removes soc_end / n_steps of Li, its length
   follows from the delivered outflow;
2. eigenstrain: the strain curve at the new nodal Li content, relative to the curve at x_start,
   averaged over each cell's vertices, rotated to the grain axes (eps_a along a1 and out of plane,
   eps_c along c); the coating has none;
3. mechanics: quasi-static equilibrium of the doubled mesh with the cohesive interfaces, secant
   iterations until the damage and contact state stop changing.

The coupling is one-way (the stress does not act back on the diffusion and cracks do not block
it), so the staggering adds no splitting error: the mechanics at step n+1 sees exactly the
concentration of the diffusion at n+1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import xarray as xr

from insitu_xrd.core.fea.cohesive import CohesiveLaw, InterfaceElements, SecantSolver
from insitu_xrd.core.fea.elasticity import (
    ElasticProblem,
    effective_stiffness,
    eigenstress,
    grain_eigenstrain,
    grain_stiffness_Pa,
    isotropic_stiffness_Pa,
    stress_zz,
)
from insitu_xrd.core.fea.mesh import build_mesh
from insitu_xrd.core.fea.params import UNVERIFIED_ASSUMPTIONS, FEAParams, StrainCurve, unverified_defaults
from insitu_xrd.core.fea.transport import LiTransport, grain_orientations, grain_rates

__all__ = ["run_fea", "grain_orientations", "grain_rates", "snapshot_steps", "mesh_convergence_study",
           "bare_vs_coated_study", "SCHEME"]

SCHEME = ("staggered: per step, implicit-Euler Fick diffusion (lumped mass) with the surface condition, each step "
          "removing the same Li (its length solved for where surfaces are kinetically limited) -> eigenstrain from "
          "the strain curve at the new nodal x -> quasi-static elasticity with cohesive grain boundaries solved by "
          "secant iterations on the damage; one-way coupling, so no splitting error")


def snapshot_steps(n_steps: int, n_snapshots: int) -> np.ndarray:
    """Steps whose fields are saved: evenly spread, including 0 and n_steps."""
    return np.unique(np.round(np.linspace(0, n_steps, n_snapshots)).astype(int))


def _attrs(units: str, long_name: str) -> dict[str, str]:
    return {"units": units, "long_name": long_name}


def run_fea(curve: StrainCurve, params: FEAParams | None = None,
            progress: Callable[[int, int], None] | None = None) -> xr.Dataset:
    """Run the chemo-mechanical model of a quarter secondary particle; see docs/fea.md.

    curve: eps_a(x), eps_c(x) (fractions). params: :class:`FEAParams` (default values).
    progress: called as progress(step, n_steps) after every time step (step 1..n_steps).

    Returns an xarray Dataset (mesh, fields at the saved snapshots, damage curves, timings; the
    names and units are listed in docs/fea.md, "Output").
    """
    p = FEAParams() if params is None else params
    gp, tp, ep, cp, tm = p.geometry, p.transport, p.elastic, p.cohesive, p.time
    t_start = time.perf_counter()

    # ---- mesh --------------------------------------------------------------------------------
    mesh = build_mesh(gp)
    t_mesh = time.perf_counter() - t_start
    ng = mesh.n_grains
    theta = grain_orientations(ng, gp.seed)

    # ---- diffusion operators and surface condition ----------------------------------------------
    t0 = time.perf_counter()
    tr = LiTransport(mesh, p, theta)
    diff, rates, is_grain, cell_theta = tr.diff, tr.rates, tr.is_grain, tr.cell_theta
    area_nmc = tr.area_nmc
    n_steps = tm.n_steps
    x = tr.initial()
    t_diff = time.perf_counter() - t0

    # ---- mechanics operators -------------------------------------------------------------------
    t0 = time.perf_counter()
    nc = mesh.n_cells
    Cpp, Cpz, Czz = grain_stiffness_Pa(cell_theta, ep)
    if (~is_grain).any():
        ci = isotropic_stiffness_Pa(ep.coating_E_GPa, ep.coating_nu, int((~is_grain).sum()))
        Cpp[~is_grain], Cpz[~is_grain], Czz[~is_grain] = ci
    C_eff = effective_stiffness(Cpp, Cpz, Czz, ep.plane)
    elas = ElasticProblem(mesh.nodes_um * 1e-6, mesh.triangles, C_eff)
    law = CohesiveLaw(cp.strength_MPa * 1e6, cp.fracture_energy_J_m2, cp.penalty_Pa_m, cp.residual_stiffness_ratio)
    gb = mesh.is_grain_boundary
    itf = InterfaceElements(mesh.interface_nodes, mesh.interface_normal, mesh.interface_length_um * 1e-6,
                            bonded=~gb)
    fixed = np.concatenate([2 * mesh.sym_x_nodes, 2 * mesh.sym_y_nodes + 1])
    solver = SecantSolver(elas.K, itf, law, fixed, cp.max_iterations, cp.tolerance)
    ea0, ec0 = curve(tm.x_start)
    t_mech = time.perf_counter() - t0
    t_coh = 0.0

    # ---- storage ---------------------------------------------------------------------------------
    snaps = snapshot_steps(n_steps, tm.n_snapshots)
    ns = snaps.size
    n_nodes = mesh.n_nodes
    gb_len = mesh.interface_length_um[gb]
    n_seg = int(gb.sum())
    out_x = np.empty((ns, n_nodes))
    out_s = np.zeros((5, ns, nc))
    out_d = np.zeros((ns, n_seg))
    out_sep = np.zeros((ns, n_seg))
    sep_mean = np.zeros(n_steps + 1)
    sep_open = np.zeros(n_steps + 1)
    w_diss = np.zeros(n_steps + 1)
    x_mean = np.empty(n_steps + 1)
    soc_flux = np.empty(n_steps + 1)
    x_min = np.empty(n_steps + 1)
    x_max = np.empty(n_steps + 1)
    time_s = np.zeros(n_steps + 1)
    removed = np.zeros(n_steps + 1)  # Li removed through the surface, x m^2 per unit depth
    grain_rate = np.empty((n_steps + 1, ng))
    particle_rate = np.empty(n_steps + 1)
    limited_len = np.zeros(n_steps + 1)
    surf = tr.surface
    dmg_mean = np.zeros(n_steps + 1)
    cracked = np.zeros(n_steps + 1)
    max_p = np.zeros(n_steps + 1)
    iters = np.zeros(n_steps + 1, int)
    li0 = diff.total(x)
    x_mean[0], soc_flux[0], x_min[0], x_max[0] = diff.mean(x), 0.0, x.min(), x.max()
    out0 = surf.delivered(x)  # instantaneous rates of the pristine particle
    grain_rate[0] = surf.grain_rate_C(out0)
    particle_rate[0] = float(out0.sum()) / area_nmc * 3600.0 / tp.x_per_1C_hour
    out_x[0] = x[mesh.node_base]
    tri_b = mesh.base_triangles
    k_snap = 1

    for n in range(1, n_steps + 1):  # loop over time steps
        t0 = time.perf_counter()
        st = tr.advance(x)
        x = st.x
        time_s[n] = time_s[n - 1] + st.dt_s
        removed[n] = removed[n - 1] + st.dt_s * float(st.outflow.sum())
        grain_rate[n] = surf.grain_rate_C(st.outflow)
        particle_rate[n] = tr.particle_rate_C(st)
        limited_len[n] = float(surf.surface_length[st.limited].sum() / surf.surface_length.sum())
        t1 = time.perf_counter()
        t_diff += t1 - t0
        ea, ec = curve(x)
        dea = (ea - ea0)[tri_b].mean(axis=1)
        dec = (ec - ec0)[tri_b].mean(axis=1)
        eps_p, eps_zz = grain_eigenstrain(cell_theta, dea, dec)
        eps_p[~is_grain] = 0.0
        eps_zz[~is_grain] = 0.0
        s0 = eigenstress(C_eff, Cpz, eps_p, eps_zz, ep.plane)
        f = elas.load(s0)
        t2 = time.perf_counter()
        u = solver.solve(f)
        t3 = time.perf_counter()
        t_coh += t3 - t2
        iters[n] = solver.last_iterations
        sig = elas.stress(u, s0)
        szz = stress_zz(Cpz, Czz, elas.cell_strain(u), eps_p, eps_zz, ep.plane)
        c_avg = 0.5 * (sig[:, 0] + sig[:, 1])
        rad = np.hypot(0.5 * (sig[:, 0] - sig[:, 1]), sig[:, 2])
        max_p[n] = max(float(np.max(c_avg + rad)), float(np.max(szz))) / 1e6
        dseg = itf.edge_mean(solver.D)[gb]
        dmg_mean[n] = float(np.sum(gb_len * dseg) / gb_len.sum()) if n_seg else 0.0
        cracked[n] = float(np.sum(gb_len * (dseg > 0.99)) / gb_len.sum()) if n_seg else 0.0
        # separation = dissipated energy / Gamma = (u_max - u0)/(u_f - u0): how far the interface has
        # gone along the softening branch (independent of the penalty as K0 -> inf, unlike D)
        sep_pt = law.dissipated_energy(solver.u_max) / law.fracture_energy_J_m2
        sep_pt[itf.bonded] = 0.0
        sseg = itf.edge_mean(sep_pt)[gb]
        sep_mean[n] = float(np.sum(gb_len * sseg) / gb_len.sum()) if n_seg else 0.0
        sep_open[n] = float(np.sum(gb_len * (sseg >= 1.0)) / gb_len.sum()) if n_seg else 0.0
        w_diss[n] = float(np.sum(itf.weight_m * law.dissipated_energy(solver.u_max) * ~itf.bonded))
        x_mean[n] = diff.mean(x)
        soc_flux[n] = removed[n] / area_nmc
        x_min[n] = x.min()
        x_max[n] = x.max()
        if k_snap < ns and n == snaps[k_snap]:
            out_x[k_snap] = x[mesh.node_base]
            hyd = (sig[:, 0] + sig[:, 1] + szz) / 3.0
            vm = np.sqrt(0.5 * ((sig[:, 0] - sig[:, 1]) ** 2 + (sig[:, 1] - szz) ** 2 + (szz - sig[:, 0]) ** 2)
                         + 3.0 * sig[:, 2] ** 2)
            out_s[:, k_snap] = np.stack([sig[:, 0], sig[:, 1], sig[:, 2], hyd, vm]) / 1e6
            out_d[k_snap] = dseg
            out_sep[k_snap] = sseg
            k_snap += 1
        t_mech += time.perf_counter() - t3 + (t2 - t1)
        if progress is not None:
            progress(n, n_steps)
    t_total = time.perf_counter() - t_start
    mass_balance = (li0 - diff.total(x) - removed[-1]) / li0

    # ---- dataset ---------------------------------------------------------------------------------
    steps = np.arange(n_steps + 1)
    soc = soc_flux
    gbn = mesh.interface_nodes[gb]
    gb_x = mesh.nodes_um[gbn[:, :2], 0]
    gb_y = mesh.nodes_um[gbn[:, :2], 1]
    grain_flux = rates * tr.flux_1C * tp.c_max_mol_m3
    gb_total_um = float(gb_len.sum())
    limits = unverified_defaults(p)
    ds = xr.Dataset(
        data_vars={
            "node_x_um": ("node", mesh.nodes_um[:, 0], _attrs("um", "node x coordinate")),
            "node_y_um": ("node", mesh.nodes_um[:, 1], _attrs("um", "node y coordinate")),
            "cell_nodes": (("cell", "vertex"), mesh.triangles.astype(np.int64),
                           _attrs("1", "node indices of each triangle (counter-clockwise)")),
            "cell_grain": ("cell", mesh.cell_grain.astype(np.int64),
                           _attrs("1", "grain id of each triangle (-1: coating)")),
            "node_base": ("node", mesh.node_base.astype(np.int64),
                          _attrs("1", "undoubled node of each node (copies on grain boundaries share it)")),
            "grain_theta_rad": ("grain", theta, _attrs("rad", "c-axis angle from x (in the model plane)")),
            "grain_rate_C": ("grain", rates, _attrs("1/h", "surface C-rate of the grain (NaN: no outer surface)")),
            "grain_flux_mol_m2_s": ("grain", grain_flux,
                                    _attrs("mol m-2 s-1", "prescribed outward Li flux density on the grain's surface")),
            "grain_delivered_rate_C": (("step", "grain"), grain_rate,
                                       _attrs("1/h", "C-rate the grain's surface delivered over the step (mean outward "
                                              "flux / 1C flux; step 0: at the start; NaN: no outer surface)")),
            "particle_rate_C": ("step", particle_rate,
                                _attrs("1/h", "C-rate of the whole particle over the step (d soc/dt per x_per_1C_hour)")),
            "surface_limited_fraction": ("step", limited_len,
                                         _attrs("1", "fraction of the outer surface on the kinetic limit at the step's end")),
            "gb_x_um": (("segment", "end"), gb_x, _attrs("um", "x of the grain-boundary segment ends")),
            "gb_y_um": (("segment", "end"), gb_y, _attrs("um", "y of the grain-boundary segment ends")),
            "gb_length_um": ("segment", gb_len, _attrs("um", "length of the grain-boundary segment")),
            "gb_grains": (("segment", "end"), mesh.interface_grains[gb].astype(np.int64),
                          _attrs("1", "grains on the two sides of the segment")),
            "x_li": (("snapshot", "node"), out_x, _attrs("1", "local Li content x (Li per formula unit)")),
            "stress_xx_MPa": (("snapshot", "cell"), out_s[0], _attrs("MPa", "stress sigma_xx")),
            "stress_yy_MPa": (("snapshot", "cell"), out_s[1], _attrs("MPa", "stress sigma_yy")),
            "stress_xy_MPa": (("snapshot", "cell"), out_s[2], _attrs("MPa", "stress sigma_xy")),
            "stress_hydrostatic_MPa": (("snapshot", "cell"), out_s[3],
                                       _attrs("MPa", "hydrostatic stress (sxx + syy + szz)/3 (tension > 0)")),
            "stress_von_mises_MPa": (("snapshot", "cell"), out_s[4], _attrs("MPa", "von Mises stress (3-D, with szz)")),
            "damage": (("snapshot", "segment"), out_d,
                       _attrs("1", "damage onset (D of the bilinear law) of the grain-boundary segment; saturates "
                                   "near 1 once a boundary opens ~100 u0")),
            "separation": (("snapshot", "segment"), out_sep,
                           _attrs("1", "dissipated energy / Gamma of the segment = (u_max - u0)/(u_f - u0)")),
            "separation_mean": ("step", sep_mean,
                                _attrs("1", "dissipated energy over Gamma times the grain-boundary length (headline)")),
            "open_crack_fraction": ("step", sep_open,
                                    _attrs("1", "fully open grain-boundary length (opened beyond u_f, traction-free) "
                                                "over the total grain-boundary length (headline)")),
            "dissipated_energy_J_m": ("step", w_diss, _attrs("J m-1", "fracture energy dissipated per unit depth")),
            "damage_mean": ("step", dmg_mean,
                            _attrs("1", "damage onset (D of the bilinear law), grain-boundary-length-weighted mean")),
            "cracked_fraction": ("step", cracked,
                                 _attrs("1", "fraction of grain-boundary length with damage onset D > 0.99")),
            "max_principal_stress_MPa": ("step", max_p, _attrs("MPa", "largest principal stress over all cells")),
            "x_li_min": ("step", x_min, _attrs("1", "smallest nodal Li content")),
            "x_li_max": ("step", x_max, _attrs("1", "largest nodal Li content")),
            "cohesive_iterations": ("step", iters, _attrs("1", "secant iterations of the step")),
        },
        coords={
            "step": ("step", steps, _attrs("1", "time step (0 = pristine)")),
            "time_s": ("step", time_s, _attrs("s", "time")),
            "soc": ("step", soc, _attrs("1", "state of charge x_start - mean x from the integrated surface flux")),
            "x_li_mean": ("step", x_mean, _attrs("1", "mesh-average Li content of the NMC")),
            "snapshot": ("snapshot", np.arange(ns), _attrs("1", "saved field snapshot")),
            "snapshot_step": ("snapshot", snaps, _attrs("1", "time step of the snapshot")),
            "snapshot_time_s": ("snapshot", time_s[snaps], _attrs("s", "time of the snapshot")),
            "snapshot_soc": ("snapshot", soc[snaps], _attrs("1", "state of charge of the snapshot")),
        },
        attrs={
            "title": "chemo-mechanical FEA of a quarter NMC secondary particle",
            "coated": int(gp.coating_um > 0),
            "coating_um": float(gp.coating_um),
            "radius_um": float(gp.radius_um),
            "n_grains": int(ng),
            "n_nodes": int(n_nodes),
            "n_cells": int(nc),
            "n_segments": int(n_seg),
            "n_dofs": int(elas.n_dofs),
            "mesher": mesh.mesher,
            "mesh_min_angle_deg": float(mesh.min_angle_deg),
            "scheme": SCHEME,
            "params_json": p.to_json(),
            "strain_curve_x_li": curve.x_li.tolist(),
            "strain_curve_eps_a": curve.eps_a.tolist(),
            "strain_curve_eps_c": curve.eps_c.tolist(),
            "surface_condition": tp.surface_condition,
            "kinetic_x_limit_1C": float(tp.kinetic_x_limit_1C) if tp.surface_condition == "kinetic" else float("nan"),
            "n_limited_steps": int(surf.n_limited_steps),
            "n_diffusion_factorizations": int(diff.n_factorizations),
            "n_active_set_unconverged": int(surf.n_unconverged_solves),
            "n_bound_corrections": int(surf.n_bound_corrections),
            "bound_correction_max": float(surf.bound_correction_max),
            "dt_nominal_s": float(tr.nominal_duration_s / n_steps),
            "t_end_s": float(time_s[-1]),
            "unverified_defaults": "; ".join(limits),
            "unverified_assumptions": "; ".join(UNVERIFIED_ASSUMPTIONS),
            "timing_mesh_s": float(t_mesh),
            "timing_diffusion_s": float(t_diff),
            "timing_mechanics_s": float(t_mech),
            "timing_cohesive_s": float(t_coh),
            "timing_total_s": float(t_total),
            "timing_note": "mechanics = elastic assembly + eigenstrain load + stress output; cohesive = the secant "
                           "iterations with their sparse factorisations and solves",
            "n_cohesive_iterations_total": int(solver.n_iterations_total),
            "n_cohesive_unconverged_steps": int(solver.n_unconverged_steps),
            "n_factorizations": int(solver.n_factorizations),
            "n_cg_iterations": int(solver.n_cg_iterations),
            "mass_balance_rel_error": float(mass_balance),
            "final_damage_mean": float(dmg_mean[-1]),
            "final_cracked_fraction": float(cracked[-1]),
            "final_separation_mean": float(sep_mean[-1]),
            "final_open_crack_fraction": float(sep_open[-1]),
            "final_x_li_min": float(x_min[-1]),
            "x_li_min_overall": float(x_min.min()),
            "x_li_max_overall": float(x_max.max()),
            "gb_length_total_um": gb_total_um,
            "final_open_gb_length_um": float(sep_open[-1] * gb_total_um),
            "cohesive_u0_m": float(law.u0_m),
            "cohesive_uf_m": float(law.uf_m),
        },
    )
    return ds


def mesh_convergence_study(curve: StrainCurve, params: FEAParams | None = None,
                           mesh_sizes_um: tuple[float, ...] = (0.2, 0.1, 0.05)) -> list[dict[str, float]]:
    """Final damage measures of the same particle at several mesh sizes (docs/fea.md table)."""
    p = FEAParams() if params is None else params
    rows = []
    for h in mesh_sizes_um:  # loop over meshes
        q = replace(p, geometry=replace(p.geometry, mesh_size_um=float(h)))
        ds = run_fea(curve, q)
        rows.append({"mesh_size_um": float(h), "n_cells": ds.attrs["n_cells"], "n_segments": ds.attrs["n_segments"],
                     "final_damage_mean": ds.attrs["final_damage_mean"],
                     "final_cracked_fraction": ds.attrs["final_cracked_fraction"],
                     "final_separation_mean": ds.attrs["final_separation_mean"],
                     "final_open_crack_fraction": ds.attrs["final_open_crack_fraction"],
                     "timing_total_s": ds.attrs["timing_total_s"]})
    return rows


def bare_vs_coated_study(bare_curve: StrainCurve, coated_curve: StrainCurve, params: FEAParams | None = None,
                         coating_um: float = 0.16) -> dict[str, dict[str, float]]:
    """Final damage of the bare particle (bare curve, no coating) and the coated one (coated curve,
    coating on), everything else equal."""
    p = FEAParams() if params is None else params
    out = {}
    for name, crv, q in (("bare", bare_curve, p.bare()), ("coated", coated_curve, p.coated(coating_um))):
        ds = run_fea(crv, q)
        out[name] = {"final_damage_mean": ds.attrs["final_damage_mean"],
                     "final_cracked_fraction": ds.attrs["final_cracked_fraction"],
                     "final_separation_mean": ds.attrs["final_separation_mean"],
                     "final_open_crack_fraction": ds.attrs["final_open_crack_fraction"],
                     "max_principal_stress_MPa": float(ds["max_principal_stress_MPa"].max()),
                     "final_x_li_min": ds.attrs["final_x_li_min"],
                     "timing_total_s": ds.attrs["timing_total_s"]}
    return out
