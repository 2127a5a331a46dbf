"""The outer-surface condition of the FEA transport (issue 21; docs/fea.md Sec. 1).

Defaults' physics (radius, 40 grains, diffusivities, rates, kinetic limit) with a coarser mesh
(0.25 um instead of 0.1 um) and 30 instead of 100 steps, so ten layouts take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.core.fea import FEAParams, build_mesh
from insitu_xrd.core.fea.transport import LiTransport, grain_orientations, run_transport

COARSE = {"geometry": {"mesh_size_um": 0.25, "mesher": "builtin"}, "time": {"soc_end": 0.9, "n_steps": 30}}


def _params(seed: int, surface: str = "kinetic") -> FEAParams:
    return FEAParams().replace(geometry={**COARSE["geometry"], "seed": seed}, time=COARSE["time"],
                               transport={"surface_condition": surface})


def test_li_content_stays_in_0_1_for_10_layouts_to_soc_09_with_exact_mass_balance() -> None:
    limited, negative_without = 0, 0
    for seed in range(10):  # loop over grain layouts
        ds = run_transport(_params(seed))
        assert ds["x_li_min"].values.min() >= 0.0, f"seed {seed}: x = {ds['x_li_min'].values.min():.3g}"
        assert ds["x_li_max"].values.max() <= 1.0, f"seed {seed}: x = {ds['x_li_max'].values.max():.17g}"
        # mass balance to round-off: SoC from the integrated outflow == 1 - mesh mean, and the run
        # reaches exactly the requested SoC
        assert abs(ds.attrs["mass_balance_rel_error"]) < 1e-12
        assert np.max(np.abs(ds["soc"].values - (1.0 - ds["x_li_mean"].values))) < 1e-12
        assert ds["soc"].values[-1] == pytest.approx(0.9, rel=1e-9)
        # the anisotropic P1 matrix is no M-matrix: an undershoot is removed conservatively, and is tiny
        assert ds.attrs["bound_correction_max"] < 1e-4
        limited += ds.attrs["n_limited_steps"] > 0
        negative_without += run_transport(_params(seed, "constant_flux"))["x_li_min"].values.min() < 0
    # the law was exercised, and it is what keeps x >= 0: constant flux empties some surfaces below 0
    assert limited == 10 and negative_without == 10  # constant flux: x_min -0.09 .. -0.37 (docs/fea.md)


def test_delivered_rate_is_the_prescribed_one_above_the_limit_then_falls_monotonically() -> None:
    p = _params(2)
    mesh = build_mesh(p.geometry)
    tr = LiTransport(mesh, p, grain_orientations(mesh.n_grains, p.geometry.seed))
    surf = tr.surface
    edges = tr.diff.flux_edges
    x = tr.initial()
    rates, free = [], []
    for _ in range(p.time.n_steps):  # loop over time steps
        st = tr.advance(x)
        x = st.x
        # every node delivers min(prescribed, kinetic capacity) of its new state
        on = surf.on_surface
        np.testing.assert_allclose(st.outflow[on], np.minimum(surf.prescribed, surf.robin * x)[on], rtol=1e-12,
                                   atol=1e-4 * surf.prescribed.max())  # atol: an undershoot removed (enforce_bounds)
        rates.append(surf.grain_rate_C(st.outflow))
        ok_node = ~st.limited
        free.append(np.array([ok_node[edges[mesh.outer_edge_grain == g]].all() for g in range(mesh.n_grains)]))
    rates, free = np.array(rates), np.array(free)
    prescribed = tr.rates
    fell = 0
    for g in np.flatnonzero(np.isfinite(prescribed)):  # loop over surface grains
        r = rates[:, g]
        # above the limit (no surface node of the grain limited): exactly the prescribed rate
        np.testing.assert_allclose(r[free[:, g]], prescribed[g], rtol=1e-12)
        below = np.flatnonzero(r < prescribed[g] * (1 - 1e-12))
        if below.size:
            fell += 1
            assert not free[below[0], g]
            after = r[below[0]:]
            assert np.all(np.diff(after) <= 1e-9 * prescribed[g]), f"grain {g}: {after}"
            assert np.all(free[:below[0], g])  # it fell when its surface reached the limit, not before
    assert fell >= 3  # several grains reach the limit before SoC 0.9


def test_constant_flux_option_is_the_seed_papers_set_up() -> None:
    ds = run_transport(_params(0, "constant_flux"))
    dt = np.diff(ds["time_s"].values)
    np.testing.assert_allclose(dt, dt[0], rtol=1e-12)  # equal steps of the prescribed total flux
    pres = ds["grain_rate_C"].values
    has = np.isfinite(pres)
    np.testing.assert_allclose(ds["grain_delivered_rate_C"].values[:, has], np.broadcast_to(pres[has], (31, has.sum())),
                               rtol=1e-12)
    assert ds.attrs["n_limited_steps"] == 0


def test_enforce_bounds_conserves_li_and_takes_it_from_the_neighbours() -> None:
    p = _params(0)
    mesh = build_mesh(p.geometry)
    tr = LiTransport(mesh, p, grain_orientations(mesh.n_grains, 0))
    diff = tr.diff
    rng = np.random.default_rng(5)
    x = rng.uniform(0.2, 0.9, diff.M.size)
    x[[3, 40]] = [-0.01, 1.02]
    y, worst = diff.enforce_bounds(x)
    assert worst == pytest.approx(0.02) and y.min() >= 0.0 and y.max() <= 1.0
    assert diff.total(y) == pytest.approx(diff.total(x), rel=1e-14)
    K = diff.K.tocsr()
    changed = np.flatnonzero(y != x)
    assert set(changed) - {3, 40} <= set(K[3].indices) | set(K[40].indices)  # only the neighbours gave or took
    same, none = diff.enforce_bounds(y)
    assert none == 0.0 and same is y


# ---------------------------------------------------------------------------------------------
# the headline the user reads first


def _result(sep: float, open_frac: float, dmg: float, label: str) -> xr.Dataset:
    step = np.arange(3)
    return xr.Dataset(
        {"separation_mean": ("step", [0.0, sep / 2, sep]), "open_crack_fraction": ("step", [0.0, 0.0, open_frac]),
         "damage_mean": ("step", [0.0, dmg, dmg]), "x_li_min": ("step", [1.0, 0.4, 0.05]),
         "x_li_max": ("step", [1.0, 1.0, 0.9]), "gb_length_um": ("segment", [20.0, 20.0]),
         "cracked_fraction": ("step", [0.0, 0.5, 0.8])},
        coords={"step": step, "soc": ("step", [0.0, 0.35, 0.7]), "time_s": ("step", [0.0, 10.0, 20.0]),
                "snapshot_step": ("snapshot", [0, 2])},
        attrs={"n_grains": 40, "surface_condition": "kinetic", "kinetic_x_limit_1C": 0.02, "label": label})


def test_compare_headline_names_the_dissipated_energy_and_open_length_ratios() -> None:
    from insitu_xrd.pipeline.fea_stage import fea_compare_lines, fea_headline_lines

    bare, coated = _result(0.40, 0.15, 0.97, "bare"), _result(0.28, 0.045, 0.96, "coated")
    lines = fea_compare_lines(bare, coated)
    assert lines[-1] == "coated / bare: dissipated energy 0.70, fully open GB length 0.30"
    assert [ln.split()[-1] for ln in lines[1:4]] == ["0.70", "0.30", "0.99"]
    assert lines[3].startswith("damage onset (D of the bilinear law)") and "near 1 in both" in lines[4]
    assert "near 1" not in "".join(fea_compare_lines(bare, _result(0.28, 0.045, 0.5, "coated")))
    one = fea_headline_lines(bare)
    assert one[0].startswith("dissipated energy / Gamma   0.4000")
    assert one[1].startswith("fully open GB length        0.1500 of the GB length (6.00 um")
    assert one[2].startswith("damage onset (D of the bilinear law)")


def test_demo_prints_the_ratios_first(tmp_path) -> None:
    from insitu_xrd.pipeline.demo import DemoFEA
    from insitu_xrd.pipeline.fea_stage import FEARun

    bare, coated = _result(0.40, 0.15, 0.97, "bare"), _result(0.20, 0.05, 0.96, "coated")
    lines = DemoFEA(FEARun(bare, tmp_path / "bare.nc"), FEARun(coated, tmp_path / "coated.nc"), seconds=1.0).lines()
    assert lines[0].startswith("FEA: 40 grains, 2 steps to SoC 0.70 (kinetic surface)")
    assert lines[1] == "FEA headline, coated / bare: dissipated energy 0.50, fully open GB length 0.33"
    assert any(ln.startswith("Li content x, bare 0.050 .. 1.000") for ln in lines)
    # report.md: the same first, then the two runs' summaries
    rep = DemoFEA(FEARun(bare, tmp_path / "bare.nc"), FEARun(coated, tmp_path / "coated.nc")).report_lines()
    assert rep[1] == lines[1] and "bare particle:" in rep and "coated particle:" in rep
    assert rep[rep.index("bare particle:") + 1].startswith("dissipated energy / Gamma   0.4000")
