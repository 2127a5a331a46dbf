"""Cell components found in a series' residual and modelled (``refinement.cell_lines``, issue 20).

Series are calculated with the core model plus Poisson noise (known truth): NMC H2 whose lattice
moves frame by frame, plus lines of the cell the recipe does not list: an Al current collector
(a crystalline phase), PTFE binder and carbon black (line lists of the library, drawn as peaks of
the library's widths convolved with the instrument), one stationary line the library does not
know (d = 2.95 A) and a line that appears at frame 3 (d = 2.60 A, a new phase). 5 frames of 1500
points, a few seconds per run.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.core.cell_components import CELL_COMPONENTS, component, expected_lines, two_theta_fwhm_deg
from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import BroadPeak, Instrument, PhaseState, calc_pattern, scale_for_weight_fraction
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.refine_setup import make_refinement
from insitu_xrd.pipeline.report import cell_line_lines
from insitu_xrd.pipeline.sequential import refine_sequence

LAM = 0.1173
INST = dict(U=1.0, V=-0.3, W=0.8, X=0.1, Y=0.2)
TTH = np.linspace(1.0, 9.0, 1500)
NF = 5
LATE_FRAME = 3


def _tth(d_A: float) -> float:
    return float(2 * np.degrees(np.arcsin(LAM / (2 * d_A))))


def _truth(i: int) -> tuple[float, float]:
    return 2.85 - 0.002 * i, 14.3 + 0.01 * i


def _library_peaks(key: str, area_strongest: float) -> list[BroadPeak]:
    """The library's lines of a component as peaks: its relative areas, its intrinsic width
    convolved with the instrument (FWHM ~0.02 deg here)."""
    return [BroadPeak(ln.two_theta_deg, float(np.hypot(0.02, two_theta_fwhm_deg(ln.fwhm_inv_A, ln.two_theta_deg, LAM))),
                      area_strongest * ln.rel_intensity / 100.0, 0.5)
            for ln in expected_lines(component(key), LAM, (TTH[0], TTH[-1]))]


def _series(cell: bool = True, late: bool = True, nf: int = NF, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    al = make_template("al", name="Al")
    intensity, sigma = [], []
    for i in range(nf):
        h2 = make_template("nmc811", name="H2", a=_truth(i)[0], c=_truth(i)[1])
        states = [PhaseState(h2, scale=scale_for_weight_fraction(0.95 if cell else 1.0, h2, 4.0), mustrain=900)]
        peaks: list[BroadPeak] = []
        if cell:
            states.append(PhaseState(al, scale=scale_for_weight_fraction(0.05, al, 4.0), mustrain=200))
            peaks += _library_peaks("ptfe", 40.0) + _library_peaks("carbon_black", 120.0)
            peaks.append(BroadPeak(_tth(2.95), 0.025, 8.0, 0.5))  # a stationary line nobody knows
        if late and i >= LATE_FRAME:
            peaks.append(BroadPeak(_tth(2.60), 0.025, 15.0, 0.5))  # a new phase's line
        y = calc_pattern(TTH, states, Instrument(LAM, **INST), background_coeffs=[300, -60, 20], broad_peaks=peaks).total
        obs = rng.poisson(np.clip(y, 0, None)).astype(float)
        intensity.append(obs)
        sigma.append(np.sqrt(np.maximum(obs, 1)))
    return xr.Dataset(
        {"intensity": (("frame", "two_theta"), np.array(intensity)), "sigma": (("frame", "two_theta"), np.array(sigma)),
         "status": (("frame",), np.array(["ok"] * nf))},
        coords={"frame": np.arange(nf), "two_theta": TTH, "time_s": ("frame", 60.0 * np.arange(nf)),
                "frame_name": ("frame", np.array([f"f{i:03d}.tif" for i in range(nf)]))},
        attrs={"wavelength_A": LAM, "unit": "2th_deg"})


def _spec(cell_lines: str = "auto", extra: list[dict] | None = None) -> RefinementSpec:
    phases = [dict(name="H2", template="nmc811", a=2.85, c=14.3, mustrain=900, refine=["a", "c", "mustrain", "scale"])]
    return RefinementSpec.model_validate(dict(mode="rietveld", background={"chebyshev": 4},
                                              profile=dict(**INST, refine=["zero_deg"]), phases=phases + (extra or []),
                                              cell_lines=cell_lines))


def _factory(spec):
    return make_refinement(spec, LAM, ".")


def _run(ds: xr.Dataset, spec: RefinementSpec) -> xr.Dataset:
    return refine_sequence(ds, spec, _factory, SequentialSection(), progress=False)


# ---------------------------------------------------------------------------------------------
# the library


def test_library_lines_follow_the_structures_and_the_line_lists():
    """Crystalline components give their reflections at the literature cell (Al 111 at a/sqrt(3),
    the fcc 111:200 ratio of a random powder), line lists their d-spacings; every component is
    known by its key and every crystalline template is a valid recipe phase."""
    al = expected_lines(component("al"), LAM, (1.0, 9.0))
    by = {ln.label: ln for ln in al}
    assert by["111"].d_A == pytest.approx(4.0495 / np.sqrt(3), rel=1e-6)
    assert by["111"].rel_intensity == 100.0 and 40 < by["200"].rel_intensity < 60
    ptfe = expected_lines(component("ptfe"), LAM, (1.0, 9.0))
    assert ptfe[0].label == "100" and ptfe[0].d_A == pytest.approx(4.90)
    assert ptfe[0].two_theta_deg == pytest.approx(_tth(4.90))
    assert expected_lines(component("ptfe"), LAM, (1.5, 9.0))[0].label != "100"  # 100 below 1.5 deg
    for comp in CELL_COMPONENTS:
        assert component(comp.key) is comp
        if comp.template:
            spec = _spec(extra=[dict(name="X", template=comp.template, refine=["a", "scale"])])
            assert spec.phase("X").template == comp.template
    with pytest.raises(Exception, match="unknown cell component"):
        component("unobtainium")


def test_cell_lines_key_is_validated():
    with pytest.raises(Exception, match="cell_lines"):
        _spec(cell_lines="sometimes")
    import yaml

    # an unquoted YAML off (read as false) means off, on means auto
    for text, value in (("off", "off"), ("on", "auto"), ("auto", "auto")):
        raw = yaml.safe_load(f"cell_lines: {text}")["cell_lines"]
        assert RefinementSpec.model_validate(dict(phases=[dict(name="H2", template="nmc811")],
                                                  cell_lines=raw)).cell_lines == value


# ---------------------------------------------------------------------------------------------
# found, named, modelled; late lines flagged


@pytest.fixture(scope="module")
def runs() -> tuple[xr.Dataset, xr.Dataset]:
    ds = _series()
    return _run(ds, _spec("off")), _run(ds, _spec("auto"))


def test_cell_components_are_identified_named_and_modelled(runs):
    _off, out = runs
    comps = {c["name"]: c for c in json.loads(out.attrs["cell_components"])}
    assert {"Al", "PTFE", "CarbonBlack"} <= set(comps), list(comps)
    assert comps["Al"]["kind"] == "phase" and "Al" in out["phase"].values
    np.testing.assert_allclose(out["a"].sel(phase="Al").values, 4.0495, atol=2e-3)
    ptfe = {ln["label"]: ln for ln in comps["PTFE"]["lines"]}
    assert ptfe["100"]["observed"] and ptfe["100"]["d_A"] == pytest.approx(4.90, abs=0.02)
    cb = {ln["label"]: ln for ln in comps["CarbonBlack"]["lines"]}
    assert any(ln["observed"] for ln in cb.values()) and cb["002"]["d_A"] == pytest.approx(3.55, rel=0.02)
    assert set(cb) >= {"002", "10", "11"}  # the whole component is modelled, not only what stood out
    free = json.loads(out.attrs["cell_free_peaks"])
    assert any(abs(f["d_A"] - 2.95) < 0.005 for f in free), free  # unknown but stationary: a free peak
    assert [str(s) for s in out["status"].values] == ["ok"] * NF


def test_modelling_the_cell_removes_the_lattice_bias(runs):
    """Without the cell lines H2 c is biased by ~8e-4 A on every frame (the effect the feature
    exists for); with them a and c are back at the truth within the clean-data error."""
    off, out = runs
    truth = np.array([_truth(i) for i in range(NF)])
    dc_off = off["c"].sel(phase="H2").values - truth[:, 1]
    da_on = out["a"].sel(phase="H2").values - truth[:, 0]
    dc_on = out["c"].sel(phase="H2").values - truth[:, 1]
    assert np.all(np.abs(dc_off) > 5e-4), dc_off
    assert np.all(np.abs(da_on) < 3e-5), da_on
    assert np.all(np.abs(dc_on) < 2.5e-4), dc_on
    assert np.all(out["gof"].values < 0.25 * off["gof"].values)


def test_a_line_appearing_later_is_flagged_not_absorbed(runs):
    _off, out = runs
    late = json.loads(out.attrs["cell_late_lines"])
    hit = [g for g in late if abs(g["d_A"] - 2.60) < 0.005]
    assert hit and hit[0]["first_frame"] == LATE_FRAME and hit[0]["frames"] == list(range(LATE_FRAME, NF)), late
    modelled = [ln["d_A"] for c in json.loads(out.attrs["cell_components"]) for ln in c["lines"]]
    modelled += [f["d_A"] for f in json.loads(out.attrs["cell_free_peaks"])]
    assert all(abs(d - 2.60) > 0.02 for d in modelled)
    assert all(g["first_frame"] >= LATE_FRAME for g in late)


def test_the_report_names_components_free_peaks_and_late_lines(runs):
    off, out = runs
    text = "\n".join(cell_line_lines(out))
    for needle in ("**Al**", "**PTFE**", "**CarbonBlack**", "fitted as phase `Al`", "**Free peaks**",
                   "d = 2.9", "**Lines that appear later**", f"from frame {LATE_FRAME} (f00{LATE_FRAME}.tif)"):
        assert needle in text, (needle, text)
    # PTFE 100 with its d (the library's 4.90 A within the component's 1.5 % tolerance)
    assert re.search(r"100 4\.(8[3-9]|9[0-7])\d* A", text), text
    assert cell_line_lines(off) == []  # cell_lines: off: no section


def test_a_component_listed_in_the_recipe_is_not_added_again():
    ds = _series(late=False, nf=3, seed=5)
    out = _run(ds, _spec("auto", extra=[dict(name="Foil", template="al", mustrain=200, refine=["a", "scale"])]))
    names = [c["name"] for c in json.loads(out.attrs["cell_components"])]
    assert "Al" not in names and "PTFE" in names
    assert list(out["phase"].values).count("Foil") == 1 and "Al" not in out["phase"].values


def test_off_and_a_clean_series_change_nothing():
    """cell_lines: off runs the chain exactly as before; on a series without cell lines, auto
    finds nothing and gives bit-identical results."""
    ds = _series(cell=False, late=False, nf=3, seed=2)
    off, auto = _run(ds, _spec("off")), _run(ds, _spec("auto"))
    assert "cell_components" not in off.attrs
    assert json.loads(auto.attrs["cell_components"]) == [] and json.loads(auto.attrs["cell_free_peaks"]) == []
    for var in ("a", "c", "scale", "rwp", "calc"):
        np.testing.assert_array_equal(off[var].values, auto[var].values)


# ---------------------------------------------------------------------------------------------
# live: the watch mode searches once the first frames are in


def test_watch_finds_the_same_cell_lines_once_the_first_frames_are_in(runs, tmp_path):
    """.xye files of the series land in a watched folder; the watch waits for the first frames,
    finds the same components as the batch run, refines every frame with them (the same H2 lattice
    within the .xye text rounding) and flags the late line."""
    import yaml

    from insitu_xrd.io.patterns import export_xye
    from insitu_xrd.pipeline.watch import watch_folder

    _off, batch = runs
    incoming = tmp_path / "incoming"
    export_xye(_series(), incoming)
    recipe = {"name": "cell lines", "wavelength_A": LAM,
              "patterns": {"files": str(incoming / "*.xye"), "format": "auto", "time_source": "header"},
              "refinement": _spec("auto").model_dump(exclude_defaults=True),
              "strain": {"versus": "frame"}, "outputs": {"dir": str(tmp_path / "out"), "figures": False}}
    path = tmp_path / "watch.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    log: list[str] = []
    summary = watch_folder(incoming, path, poll_s=0.0, settle_s=0.0, bad_after_s=0.0, idle_exit_s=0.5,
                           refresh_s=1e9, say=log.append)
    assert summary.n_refined == NF, log
    assert any(m.startswith("cell lines found in frames [0, 1, 2]") for m in log), log
    res = summary.results
    names = {c["name"] for c in json.loads(res.attrs["cell_components"])}
    assert names == {c["name"] for c in json.loads(batch.attrs["cell_components"])}
    np.testing.assert_allclose(res["a"].sel(phase="H2").values, batch["a"].sel(phase="H2").values, atol=2e-6)
    late = json.loads(res.attrs["cell_late_lines"])
    assert any(abs(g["d_A"] - 2.60) < 0.005 and g["first_frame"] == LATE_FRAME for g in late), late
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Cell components" in report and "**PTFE**" in report


def test_a_resumed_run_reuses_the_stored_search(tmp_path, monkeypatch):
    """The search result is stored with the refined frames (attr cell_lines_state): a resumed run
    (same checkpoint and settings) refits with that model and does not search again, so its
    frames match those refined before the interruption."""
    import insitu_xrd.pipeline.sequential.run as seq_run
    from insitu_xrd.pipeline.sequential.cell_lines import CellLines

    ds = _series(late=False, nf=3, seed=7)
    spec = _spec("auto")
    ckpt = tmp_path / "sequential.nc"
    first = refine_sequence(ds, spec, _factory, SequentialSection(), checkpoint=ckpt, cache_key="k1", progress=False)
    stored = CellLines.from_state(first.attrs["cell_lines_state"])
    assert stored is not None and stored.attrs() == {k: first.attrs[k] for k in stored.attrs()}

    def no_search(*_a, **_k):
        raise AssertionError("searched again")

    monkeypatch.setattr(seq_run, "detect_cell_lines", no_search)
    again = refine_sequence(ds, spec, _factory, SequentialSection(), checkpoint=ckpt, cache_key="k1", progress=False)
    assert again.attrs["cell_components"] == first.attrs["cell_components"]
    np.testing.assert_array_equal(again["a"].values, first["a"].values)
    # other settings (another cache key): the stored search is not taken
    with pytest.raises(AssertionError, match="searched again"):
        refine_sequence(ds, spec, _factory, SequentialSection(), checkpoint=ckpt, cache_key="k2", progress=False)
