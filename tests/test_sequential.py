"""Sequential refinement: seeding, H3 appearance detected from the data, bad frames, resume, chunks.

Patterns are calculated with the core model (`calc_pattern`) plus Poisson noise, so the true
lattice, H3 onset and fraction of every frame are known; tolerances are a few esd.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern, scale_for_weight_fraction
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.refine_setup import make_refinement
from insitu_xrd.pipeline.sequential import (
    SequentialRefiner,
    coarse_lattice_search,
    dataset_to_records,
    records_to_dataset,
    refine_sequence,
)

LAM = 0.1173
INST = dict(U=1.0, V=-0.3, W=0.8, X=0.1, Y=0.2)


def _series(nf: int, onset: int | None, seed: int, collapse: bool = False, npt: int = 1600, frac_max: float = 0.5):
    """nf frames of a charge: a shrinks, c grows; H3 (c 14.03) from frame `onset` with a growing
    fraction; `collapse`: c of the single phase falls to 14.05 instead (no H3)."""
    rng = np.random.default_rng(seed)
    tth = np.linspace(1.0, 9.0, npt)
    inst = Instrument(LAM, **INST)
    u = np.linspace(0, 1, nf)
    a = 2.872 - 0.05 * u
    c = 14.20 + 0.25 * np.sin(np.pi * u * 0.9) if not collapse else 14.20 + 0.27 * u - 0.65 * np.clip(u - 0.6, 0, None) ** 1 * 1.5
    frac = np.zeros(nf)
    if onset is not None:
        frac[onset:] = np.linspace(0.12, frac_max, nf - onset)
    I, S = [], []
    for i in range(nf):
        h2 = make_template("nmc811", name="H2", a=a[i], c=c[i])
        st = [PhaseState(h2, scale=scale_for_weight_fraction(1 - frac[i], h2, 4.0), mustrain=900)]
        if frac[i] > 0:
            h3 = make_template("nmc811", name="H3", a=2.816, c=14.03)
            st.append(PhaseState(h3, scale=scale_for_weight_fraction(frac[i], h3, 4.0), mustrain=1200))
        y = calc_pattern(tth, st, inst, background_coeffs=[300, -60, 20]).total
        obs = rng.poisson(np.clip(y, 0, None)).astype(float)
        I.append(obs)
        S.append(np.sqrt(np.maximum(obs, 1)))
    ds = xr.Dataset(
        {"intensity": (("frame", "two_theta"), np.array(I)), "sigma": (("frame", "two_theta"), np.array(S)),
         "status": (("frame",), np.array(["ok"] * nf))},
        coords={"frame": np.arange(nf), "two_theta": tth, "time_s": ("frame", 60.0 * np.arange(nf)),
                "frame_name": ("frame", np.array([f"f{i:03d}.tif" for i in range(nf)]))},
        attrs={"wavelength_A": LAM, "unit": "2th_deg"})
    return ds, {"a": a, "c": c, "frac": frac}


SPEC = RefinementSpec.model_validate(dict(
    mode="rietveld", background={"chebyshev": 4}, profile=dict(**INST, refine=["zero_deg"]),
    phases=[dict(name="H2", template="nmc811", a=2.872, c=14.2, mustrain=900, refine=["a", "c", "mustrain", "scale"]),
            dict(name="H3", template="nmc811", a=2.82, c=14.0, mustrain=1200, refine=["a", "c", "mustrain", "scale"],
                 optional=True)]))


def _factory(spec):
    return make_refinement(spec, LAM, ".")


@pytest.fixture(scope="module")
def two_phase():
    ds, truth = _series(9, onset=5, seed=11)
    out = refine_sequence(ds, SPEC, _factory, SequentialSection(), progress=False)
    return ds, truth, out


def test_two_phase_lattice_onset_and_fraction(two_phase):
    ds, truth, out = two_phase
    st = [str(s) for s in out["status"].values]
    assert all(s in ("ok", "refit") for s in st), st
    a = out["a"].sel(phase="H2").values
    c = out["c"].sel(phase="H2").values
    np.testing.assert_allclose(a, truth["a"], atol=2e-4)
    np.testing.assert_allclose(c, truth["c"], atol=1e-3)
    # H3 appears where the data say, within one frame, and is reported in attrs
    assert abs(out.attrs["H3_onset_frame"] - 5) <= 1
    assert out.attrs["H3_onset_frame_name"] in ("f004.tif", "f005.tif", "f006.tif")
    frac = out["phase_fraction"].sel(phase="H3").values
    np.testing.assert_allclose(frac, truth["frac"], atol=0.05)
    # absent phase -> NaN lattice, fraction 0
    assert np.all(np.isnan(out["a"].sel(phase="H3").values[:4]))
    assert np.all(out["phase_fraction"].sel(phase="H3").values[:4] == 0)
    # esd twins and units
    for v in ("a", "c", "volume", "microstrain", "phase_fraction", "scale"):
        assert f"{v}_esd" in out and out[v].dims == ("frame", "phase")
    assert out["a"].attrs["units"] == "A"
    assert np.all(np.isfinite(out["rwp"].values)) and np.all(np.isfinite(out["gof"].values))
    assert "zero_shift" in out and "time_s" in out.coords and "frame_name" in out.coords


def test_single_phase_collapse_stays_single_phase():
    """A continuous c collapse without a second phase must not produce an H3."""
    ds, truth = _series(7, onset=None, seed=5, collapse=True)
    out = refine_sequence(ds, SPEC, _factory, SequentialSection(), progress=False)
    assert out.attrs["H3_onset_frame"] == -1
    assert not out["active"].sel(phase="H3").values.any()
    np.testing.assert_allclose(out["c"].sel(phase="H2").values, truth["c"], atol=1e-3)


def test_bad_frames_are_flagged_and_run_continues(tmp_path):
    ds, truth = _series(6, onset=None, seed=3)
    ds["status"].values[2] = "error: truncated file"
    rng = np.random.default_rng(0)
    junk = rng.poisson(300, ds.sizes["two_theta"]).astype(float)  # no diffraction at all
    ds["intensity"].values[3] = junk
    ds["sigma"].values[3] = np.sqrt(junk)
    out = refine_sequence(ds, SPEC, _factory, SequentialSection(), checkpoint=tmp_path / "seq.nc", cache_key="k",
                          progress=False)
    st = [str(s) for s in out["status"].values]
    assert st[2].startswith("skipped")
    assert st[3] in ("refit", "diverged")
    assert st[4] == "ok" and st[5] == "ok"
    np.testing.assert_allclose(out["a"].sel(phase="H2").values[[0, 1, 4, 5]], truth["a"][[0, 1, 4, 5]], atol=2e-4)
    assert (tmp_path / "seq.nc").is_file()


def test_resume_from_checkpoint_gives_same_result(tmp_path, two_phase):
    ds, truth, full = two_phase
    ck = tmp_path / "seq.nc"
    # a checkpoint of an interrupted run: only the first 6 frames done
    recs = dataset_to_records(full)
    part = records_to_dataset(recs[:6] + [None] * (len(recs) - 6), ds, SPEC, {"cache_key": "key1"})
    part.to_netcdf(ck, engine="h5netcdf")
    calls = []

    def counting(spec):
        calls.append(1)
        return _factory(spec)

    out = refine_sequence(ds, SPEC, counting, SequentialSection(), checkpoint=ck, cache_key="key1", progress=False)
    np.testing.assert_array_equal(out["a"].values[:6], full["a"].values[:6])  # kept, not refitted
    np.testing.assert_allclose(out["a"].sel(phase="H2").values, truth["a"], atol=2e-4)
    np.testing.assert_allclose(out["phase_fraction"].sel(phase="H3").values, truth["frac"], atol=0.05)
    assert xr.load_dataset(ck, engine="h5netcdf").attrs["cache_key"] == "key1"
    # a different cache key starts over
    out2 = refine_sequence(ds.isel(frame=slice(0, 3)), SPEC, _factory, SequentialSection(), checkpoint=tmp_path / "b.nc",
                           cache_key="other", progress=False)
    assert list(map(str, out2["status"].values)) == ["ok"] * 3


def test_chunks_in_parallel_and_reverse_agree(two_phase):
    ds, truth, serial = two_phase
    par = refine_sequence(ds, SPEC, _factory, SequentialSection(chunks=2, workers=2), progress=False, base_dir=".")
    np.testing.assert_allclose(par["a"].sel(phase="H2").values, truth["a"], atol=2e-4)
    np.testing.assert_allclose(par["c"].sel(phase="H2").values, truth["c"], atol=1e-3)
    assert abs(par.attrs["H3_onset_frame"] - 5) <= 1
    rev = refine_sequence(ds, SPEC, _factory, SequentialSection(direction="reverse"), progress=False)
    np.testing.assert_allclose(rev["c"].sel(phase="H2").values, truth["c"], atol=1e-3)
    assert rev.attrs["direction"] == "reverse"


def test_coarse_lattice_search_finds_a_2pct_shifted_cell():
    ds, truth = _series(1, onset=None, seed=2)
    h2 = make_template("nmc811", name="H2", a=2.872 * 1.02, c=14.2 * 0.985)
    a, c = coarse_lattice_search(h2, LAM, ds["two_theta"].values, ds["intensity"].values[0], bound_pct=3.0)
    assert abs(a - truth["a"][0]) < 0.002 and abs(c - truth["c"][0]) < 0.01


def test_refiner_step_never_raises_on_garbage():
    r = SequentialRefiner(SPEC, LAM, _factory, SequentialSection())
    rec = r.step(0, np.linspace(1, 9, 100), np.full(100, np.nan), np.ones(100))
    assert rec.status.startswith("skipped")


_FITS = {"n": 0, "limit": None}


class _CountingRefinement:
    """A Refinement that counts fits and, past ``_FITS["limit"]``, is interrupted (Ctrl-C)."""

    def __init__(self, ref):
        self.ref = ref

    def __getattr__(self, name):  # otherwise a Refinement (its reflection lists: exact resume)
        return getattr(self.ref, name)

    def fit(self, *args, **kw):
        _FITS["n"] += 1
        if _FITS["limit"] is not None and _FITS["n"] > _FITS["limit"]:
            raise KeyboardInterrupt
        return self.ref.fit(*args, **kw)


def test_exact_resume_after_an_interruption(tmp_path, two_phase):
    """Interrupted during frame 6, restarted: the chain state saved with the checkpoint makes the
    remaining fits those of the uninterrupted run (not merely the same minimum)."""
    ds, truth, full = two_phase
    ck = tmp_path / "seq.nc"
    opt = SequentialSection(checkpoint_interval_s=0)  # a checkpoint after every frame
    _FITS.update(n=0, limit=None)
    first6 = refine_sequence(ds.isel(frame=slice(0, 6)), SPEC, lambda sp: _CountingRefinement(_factory(sp)), opt,
                             progress=False)
    _FITS.update(n=0, limit=_FITS["n"])  # the fits of frames 0-5, then the interruption
    with pytest.raises(KeyboardInterrupt):
        refine_sequence(ds, SPEC, lambda sp: _CountingRefinement(_factory(sp)), opt, checkpoint=ck, cache_key="k",
                        progress=False)
    part = xr.load_dataset(ck, engine="h5netcdf")
    assert list(map(str, part["status"].values)) == ["ok"] * 6 + ["pending"] * 3
    assert (tmp_path / "seq.nc.state").is_file()
    # a kill -9 leaves no NetCDF written at the interruption: the Zarr working store is enough
    ck.unlink()
    assert (tmp_path / "seq.zarr").is_dir()
    _FITS["limit"] = None  # (the saved state holds these counting refinements)
    out = refine_sequence(ds, SPEC, _factory, opt, checkpoint=ck, cache_key="k", progress=False)
    np.testing.assert_array_equal(out["a"].values[:6], first6["a"].values)
    # bit-identical (re-seeding from the stored values alone differs by ~1e-9 esd here, and by
    # 0.1 esd on the simulated charge of test_watch.py, where the Le Bail start matters)
    for var in ("a", "c", "microstrain", "phase_fraction"):
        np.testing.assert_array_equal(out[var].values, full[var].values, err_msg=var)
    assert not (tmp_path / "seq.nc.state").exists()  # a finished run needs no resume state


def test_exchanged_phase_labels_are_detected():
    """After a frame with H2 and H3, a fit whose H2 sits on the previous H3 lattice (and H3 on
    the previous H2) is flagged; the continuous assignment is not."""
    from types import SimpleNamespace

    from insitu_xrd.pipeline.sequential import FrameRecord

    prev = FrameRecord(index=0, status="ok", active=["H2", "H3"],
                       phases={"H2": {"a": 2.822, "c": 14.42}, "H3": {"a": 2.816, "c": 14.03}})
    r = SequentialRefiner(SPEC, LAM, _factory, SequentialSection(), seed=prev)

    def fit(h2, h3):
        vals = {"H2_a": h2[0], "H2_c": h2[1], "H3_a": h3[0], "H3_c": h3[1]}
        return SimpleNamespace(values=vals, esds={k: 1e-4 for k in vals}, active_phases=["H2", "H3"])

    assert r._swapped(fit((2.8221, 14.419), (2.8158, 14.031))) == ""
    assert "exchanged" in r._swapped(fit((2.8158, 14.031), (2.8221, 14.419)))
    # H3 newly present: it must not take over the previous H2 lattice
    r.last_good = FrameRecord(index=0, status="ok", active=["H2"], phases={"H2": {"a": 2.822, "c": 14.42}})
    assert r._swapped(fit((2.8221, 14.419), (2.8158, 14.031))) == ""
    assert "exchanged" in r._swapped(fit((2.8158, 14.031), (2.8221, 14.419)))


def test_reverse_run_starting_where_h3_dominates_keeps_the_names():
    """Fitted backwards from a frame with 80 % H3, the cold start's lattice search lands on the
    stronger H3 pattern; the H3 test then finds the H2 lattice, and the names are exchanged
    back (the recipe's start cells say H3 is the smaller one): H2 stays H2 on every frame."""
    ds, truth = _series(7, onset=3, seed=17, frac_max=0.8)
    out = refine_sequence(ds, SPEC, _factory, SequentialSection(direction="reverse"), progress=False)
    st = [str(s) for s in out["status"].values]
    assert all(s in ("ok", "refit") for s in st), st
    np.testing.assert_allclose(out["a"].sel(phase="H2").values, truth["a"], atol=2e-4)
    np.testing.assert_allclose(out["c"].sel(phase="H2").values, truth["c"], atol=1e-3)
    h3 = out["active"].sel(phase="H3").values
    assert h3[3:].all() and not h3[:2].any()
    np.testing.assert_allclose(out["phase_fraction"].sel(phase="H3").values, truth["frac"], atol=0.05)
    assert "exchanged" in str(out["message"].values[-1])


class _StartRecorder:
    """A Refinement that records the H2 lattice of each warm start it is given."""

    def __init__(self, ref, starts):
        self.ref, self.starts = ref, starts

    def fit(self, *args, **kw):
        start = kw.get("start")
        if start is not None and "H3" not in (kw.get("phases") or ()):  # (not an H3 trial fit)
            self.starts.append((start.params["H2_a"].value, start.params["H2_c"].value))
        return self.ref.fit(*args, **kw)


def test_warm_start_lattice_extrapolated(two_phase):
    """From the third frame on, the start lattice continues the last two frames' change (the
    lattice drifts steadily; frames many esd apart would otherwise cost extra fit steps)."""
    ds = two_phase[0].isel(frame=slice(0, 4))
    starts: list[tuple[float, float]] = []
    spec = SPEC.model_copy(update={"cell_lines": "off"})  # the recorder would record the cell-line search's fits too
    out = refine_sequence(ds, spec, lambda sp: _StartRecorder(_factory(sp), starts), progress=False)
    a = out["a"].sel(phase="H2").values
    c = out["c"].sel(phase="H2").values
    # frame 1 starts at frame 0's values; frames 2 and 3 at the linear continuation
    assert starts[0] == pytest.approx((a[0], c[0]), rel=1e-12)
    for i in (2, 3):
        a_start, c_start = starts[i - 1]
        assert a_start == pytest.approx(2 * a[i - 1] - a[i - 2], rel=1e-12)
        assert c_start == pytest.approx(2 * c[i - 1] - c[i - 2], rel=1e-12)


def test_extra_unreadable_file_does_not_change_the_chain(two_phase):
    """A corrupt extra file that sorts between two frames (watch mode sees it whenever it lands,
    which depends on the machine's speed) is no step of the charge: the real frames' fits are
    bit-identical to the run without it, and the start lattice is extrapolated by the frames'
    times (here spaced unevenly: 60 s, 60 s, 90 s)."""
    ds = two_phase[0].isel(frame=slice(0, 4)).copy(deep=True)
    ds = ds.assign_coords(time_s=("frame", np.array([0.0, 60.0, 120.0, 210.0])))
    bad = ds.isel(frame=[3]).copy(deep=True)
    bad["intensity"][:] = np.nan
    bad["status"][:] = "error: truncated file"
    bad = bad.assign_coords(time_s=("frame", [np.nan]), frame_name=("frame", ["f002b.tif"]))
    with_bad = xr.concat([ds.isel(frame=[0, 1, 2]), bad, ds.isel(frame=[3])], dim="frame")
    with_bad = with_bad.assign_coords(frame=np.arange(5))
    starts: list[tuple[float, float]] = []
    spec = SPEC.model_copy(update={"cell_lines": "off"})  # the recorder would record the cell-line search's fits too
    clean = refine_sequence(ds, spec, lambda sp: _StartRecorder(_factory(sp), starts), progress=False)
    extra = refine_sequence(with_bad, spec, _factory, progress=False)
    assert str(extra["status"].values[3]).startswith("skipped")
    keep = [0, 1, 2, 4]
    for var in ("a", "c", "microstrain", "phase_fraction", "rwp"):
        np.testing.assert_array_equal(extra[var].values[keep], clean[var].values, err_msg=var)
    assert [str(s) for s in extra["status"].values[keep]] == [str(s) for s in clean["status"].values]
    a = clean["a"].sel(phase="H2").values
    a_start = starts[2][0]  # frame 3: 90 s after frame 2, which was 60 s after frame 1
    assert a_start == pytest.approx(a[2] + 1.5 * (a[2] - a[1]), rel=1e-12)


def test_sequential_store_rows_export_the_whole_series_dataset(tmp_path, two_phase):
    """The watch's working store: rows put one frame at a time (and one replaced) export the same
    Dataset as records_to_dataset on the whole series; frames not refined yet are "pending"."""
    from insitu_xrd.pipeline.sequential.store import SequentialStore

    ds, _truth, full = two_phase
    recs = dataset_to_records(full)
    keys = [f"/beam/f{i:03d}.tif" for i in range(ds.sizes["frame"])]
    path = tmp_path / "sequential.nc"
    tth = ds["two_theta"].values

    def open_store(key="watch-key"):
        return SequentialStore(path, SPEC, tth, LAM, cache_key=key, attrs={"mode": "watch"})

    store = open_store()
    for i in range(6):
        store.put(keys[i], recs[i if i != 3 else 2], ds.isel(frame=[i]))  # frame 3 wrong at first
        store.flush()
    store.put(keys[3], recs[3], ds.isel(frame=[3]))  # ... replaced in place (a look-back)
    store.flush()
    assert len(store) == 6 and store.status(keys[0]) == "ok" and store.status(keys[7]) is None
    back = store.record(keys[4])
    assert back.index == 4 and back.key == keys[4]
    assert back.phases["H2"]["a"] == recs[4].phases["H2"]["a"] and np.array_equal(back.calc, recs[4].calc)
    exported = store.export(keys, lambda rows: ds.isel(frame=list(rows)))
    want = records_to_dataset(recs[:6] + [None] * 3, ds, SPEC)
    assert [str(s) for s in exported["status"].values] == ["ok"] * 6 + ["pending"] * 3
    for var in ("a", "c", "microstrain", "phase_fraction", "cathode_fraction", "active", "rwp", "calc", "fit_values",
                "microstrain_correlation"):
        np.testing.assert_array_equal(exported[var].values, want[var].values, err_msg=var)
    assert [str(k) for k in exported["frame_key"].values] == keys
    assert exported.attrs["mode"] == "watch" and exported.attrs["cache_key"] == "watch-key"
    assert exported.attrs["H3_onset_frame"] == want.attrs["H3_onset_frame"]
    assert exported["a"].attrs["units"] == want["a"].attrs["units"]
    assert xr.load_dataset(path, engine="h5netcdf")["a"].shape == (9, 2)
    store.close()
    assert len(open_store()) == 6  # a restart finds the rows
    assert len(open_store("other settings")) == 0  # another refinement: started anew


def test_the_chain_state_does_not_grow_with_the_series(two_phase):
    """The watch pickles the chain state after every frame: its size must not grow with the frames
    fitted (only the last RWP_WINDOW Rwp values are kept, all the divergence check uses)."""
    from insitu_xrd.pipeline.sequential.chain import RWP_WINDOW

    ds, _truth, _full = two_phase
    one = ds.isel(frame=[0, 1, 2, 3]).copy()
    refiner = SequentialRefiner(SPEC, LAM, _factory, SequentialSection())
    sizes = []
    for i in range(3 * RWP_WINDOW):
        j = i % 2  # the same two H2-only frames again and again
        refiner.step(i, one["two_theta"].values, one["intensity"].values[j], one["sigma"].values[j], "ok",
                     time_s=60.0 * i, key=str(i))
        sizes.append(len(refiner.state_bytes()))
    assert len(refiner.rwp_history) == RWP_WINDOW
    # the size varies with what the last fits hold (Le Bail intensities, cached refinements, a
    # look-back frame), not with how many came before
    assert max(sizes[2 * RWP_WINDOW:]) <= max(sizes[RWP_WINDOW:2 * RWP_WINDOW]) + 200, sizes
