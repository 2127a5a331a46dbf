"""FEA speed and memory: a 40-grain quarter particle over 100 time steps (target: under 60 s on
2 cores), with the split between meshing, diffusion, mechanics and cohesive iterations as the
model measures them in the same run, and the meshing alone (``build_mesh``) timed as a check.

    .venv/bin/python benchmarks/bench_fea.py [--grains 40] [--steps 100] [--coated] [--mesh-size-um H]

Peak memory: the process's peak resident set size (``resource.getrusage``, Linux: kB) before the
run (imports, the strain curve) and after it; the difference is what the run added at its peak.
The run is not timed under tracemalloc (it slows numpy-heavy code). The mesh is built once
before the timed run (``build_mesh`` alone), so the model's own mesh timing is of a warm run.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from insitu_xrd.core.fea import FEAParams, StrainCurve, build_mesh, run_fea
from insitu_xrd.core.fea.transport import run_transport

TARGET_S = 60.0


def _rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _curve() -> StrainCurve:
    """NMC811-like first charge (fractions): a shrinks 2 %, c rises 1.5 % to x = 0.5 then collapses."""
    x = np.linspace(1.0, 0.15, 86)
    eps_a = -0.02 * (1 - x) / 0.85
    eps_c = np.where(x > 0.5, 0.015 * (1 - x) / 0.5, 0.015 - 0.035 * ((0.5 - x) / 0.35) ** 2)
    return StrainCurve(x, eps_a, eps_c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grains", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--coated", action="store_true")
    ap.add_argument("--mesh-size-um", type=float, default=None)
    ap.add_argument("--surface-condition", default="kinetic", choices=("kinetic", "constant_flux"))
    args = ap.parse_args()
    geometry = {"n_grains": args.grains}
    if args.mesh_size_um is not None:
        geometry["mesh_size_um"] = args.mesh_size_um
    params = FEAParams.from_dict({"geometry": geometry, "time": {"n_steps": args.steps},
                                  "transport": {"surface_condition": args.surface_condition}})
    if args.coated:
        params = params.coated()
    curve = _curve()

    t0 = time.perf_counter()
    build_mesh(params.geometry)
    t_mesh_alone = time.perf_counter() - t0

    rss0 = _rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    ds = run_fea(curve, params, None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss1 = _rss_mib()

    a = ds.attrs
    parts = {k: float(a.get(f"timing_{k}_s", np.nan)) for k in ("mesh", "diffusion", "mechanics", "cohesive")}
    total = float(a.get("timing_total_s", wall))
    print(f"FEA {'coated' if args.coated else 'bare'} quarter particle: {int(a['n_grains'])} grains, "
          f"{int(a['n_cells'])} cells, {int(a['n_nodes'])} nodes, {int(a['n_segments'])} GB segments "
          f"(mesher {a.get('mesher', '?')}), {params.time.n_steps} steps, {ds.sizes['snapshot']} snapshots")
    print(f"run time {wall:.1f} s wall (model's total {total:.1f} s), {cpu:.1f} s CPU of this process "
          f"(wall/CPU {wall / max(cpu, 1e-9):.2f}: ~1 when the run had a core to itself, more when other processes "
          f"shared the cores, below 1 with threaded BLAS)")
    print(f"target {TARGET_S:.0f} s wall: {'met' if wall < TARGET_S else 'NOT met'} (x{wall / TARGET_S:.2f} of the target)")
    for k, v in parts.items():
        print(f"  {k:<10} {v:7.2f} s  {100 * v / total:5.1f} %")
    other = total - sum(v for v in parts.values() if np.isfinite(v))
    print(f"  {'other':<10} {other:7.2f} s  {100 * other / total:5.1f} %  (output assembly, bookkeeping)")
    n_it = int(a.get("n_cohesive_iterations_total", 0))
    print(f"cohesive iterations {n_it} in all, {n_it / max(params.time.n_steps, 1):.1f} per step; "
          f"build_mesh alone {t_mesh_alone:.2f} s (model's mesh timing {parts['mesh']:.2f} s)")
    print(f"peak memory (RSS) {rss1:.0f} MiB; before the run {rss0:.0f} MiB; the run added {rss1 - rss0:.0f} MiB")
    print(f"at SoC {float(ds['soc'].values[-1]):.3f}: dissipated energy / Gamma {float(ds['separation_mean'].values[-1]):.4f}, "
          f"fully open GB length {float(ds['open_crack_fraction'].values[-1]):.4f}, damage onset (D of the bilinear "
          f"law) {float(ds['damage_mean'].values[-1]):.4f}; x_li {float(ds['x_li_min'].min()):.4f} .. "
          f"{float(ds['x_li_max'].max()):.4f}")
    # cost of the kinetic surface condition: Li transport alone, kinetic against constant flux (same run)
    times = {}
    for cond in ("constant_flux", "kinetic"):
        q = params.replace(transport={"surface_condition": cond})
        t0 = time.perf_counter()
        tr = run_transport(q)
        times[cond] = time.perf_counter() - t0
        print(f"transport alone, {cond:<13} {times[cond]:6.2f} s ({tr.attrs['n_factorizations']} factorisations, "
              f"{tr.attrs['n_limited_steps']} steps with limited surface nodes)")
    print(f"kinetic / constant flux (transport alone) x{times['kinetic'] / times['constant_flux']:.1f}; "
          f"the model's diffusion share above is what it costs in a full run")


if __name__ == "__main__":
    main()
