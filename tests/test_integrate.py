"""Integration of simulated frames (pyFAI calcfrom1d from a known 1D curve, Poisson noise).

Small 256x256 detector (400 um pixels at 0.5 m) for speed, plus one full-size Perkin frame.
"""

from __future__ import annotations

import json

import fabio
import h5py
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import read_pattern_1d, two_theta_deg_to_q_invA
from insitu_xrd.io.patterns import read_patterns
from insitu_xrd.io.poni import write_poni
from insitu_xrd.reduction import integrate as integ
from insitu_xrd.reduction.integrate import IntegrationSettings
from insitu_xrd.reduction.series import integrate_series

WL_A = 0.1173
SHAPE = (256, 256)
PEAKS_DEG = [(3.0, 2000.0), (5.0, 4000.0), (7.5, 1500.0)]  # (centre, height) in counts/pixel
FWHM_DEG = 0.25


def truth_curve(tth: np.ndarray) -> np.ndarray:
    """Known 1D pattern: flat 300 counts + Gaussian peaks (per pixel, corrections removed)."""
    y = np.full_like(tth, 300.0, dtype=float)
    s = FWHM_DEG / 2.3548
    for c, h in PEAKS_DEG:
        y += h * np.exp(-0.5 * ((tth - c) / s) ** 2)
    return y


def make_ai(shape=SHAPE, pixel_m=4e-4, dist_m=0.5):
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=pixel_m, pixel2=pixel_m, max_shape=shape)
    # beam centre near one corner so that 2theta reaches ~10 deg; small tilts
    return AzimuthalIntegrator(dist=dist_m, poni1=0.2 * shape[0] * pixel_m, poni2=0.25 * shape[1] * pixel_m,
                               rot1=0.01, rot2=-0.008, detector=det, wavelength=WL_A * 1e-10)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """6 noisy frames + their mean expectation image, PONI, times."""
    root = tmp_path_factory.mktemp("series")
    ai = make_ai()
    tth = np.linspace(0.0, 14.0, 4000)
    expected = ai.calcfrom1d(tth, truth_curve(tth), shape=SHAPE, dim1_unit="2th_deg", correctSolidAngle=True,
                             polarization_factor=0.99)
    poni = write_poni(ai, root / "geo.poni")
    rng = np.random.default_rng(42)
    fdir = root / "frames"
    fdir.mkdir()
    names = []
    for i in range(6):
        img = rng.poisson(expected).astype(np.int32)
        name = f"frame_{i:04d}.tif"
        fabio.tifimage.TifImage(data=img, header={"time_s": f"{12.5 * i}", "exposure_s": "10"}).write(str(fdir / name))
        names.append(name)
    return {"root": root, "poni": poni, "expected": expected, "frames": fdir, "names": names, "ai": ai}


SETTINGS = dict(npt=400, workers=2)


def noise_free(series, settings: IntegrationSettings) -> np.ndarray:
    """The expectation image integrated with the same settings: the pattern every noisy frame
    scatters around (the known curve seen through the finite pixel size)."""
    fi = integ.FrameIntegrator(make_ai(), SHAPE, settings)
    return fi.integrate(series["expected"].astype(np.float32))["intensity"]


def test_integrated_pattern_matches_truth_within_sigma(series, tmp_path):
    out = tmp_path / "p.nc"
    rep = integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_ok == 6 and rep.n_error == 0
    ds = read_patterns(out)
    assert ds.attrs["unit"] == "2th_deg" and ds.attrs["wavelength_A"] == pytest.approx(WL_A)
    assert list(ds["time_s"].values) == pytest.approx([12.5 * i for i in range(6)])
    assert list(ds["frame_name"].values) == series["names"]
    assert set(ds["status"].values) == {"ok"}
    corr = json.loads(ds.attrs["corrections"])
    assert corr["polarization_factor"] == 0.99 and corr["solid_angle"] is True
    assert ds.attrs["method"] == "full,csc,cython" and "pyFAI" in json.loads(ds.attrs["software_versions"])
    assert "Distance" in ds.attrs["poni"] and ds.attrs["created_utc"]
    tth = ds["two_theta"].values
    inten = ds["intensity"].values
    sig = ds["sigma"].values
    good = np.all(np.isfinite(inten), axis=0) & (ds["n_pixels"].values.min(axis=0) > 20)
    assert good.sum() > 200
    # noise-free: the known curve, up to the pixel-size smoothing of the 0.25 deg peaks (< 3 %)
    ref = noise_free(series, IntegrationSettings(**SETTINGS))
    truth = truth_curve(tth)
    background = good & np.all([np.abs(tth - c) > 0.6 for c, _ in PEAKS_DEG], axis=0)
    assert np.abs(ref[background] / truth[background] - 1).max() < 1e-3
    assert np.abs(ref[good] / truth[good] - 1).max() < 0.03
    for c, _h in PEAKS_DEG:
        win = good & (np.abs(tth - c) < 0.3)
        assert abs(tth[win][np.argmax(ref[win])] - c) <= (tth[1] - tth[0])
    # each frame: normalised residuals behave like N(0, 1)
    z = (inten[:, good] - ref[good]) / sig[:, good]
    assert abs(z.mean()) < 0.05
    assert 0.9 < z.std() < 1.1
    # Poisson sigma agrees with the frame-to-frame scatter (6 frames, > 200 bins)
    scatter = inten[:, good].std(axis=0, ddof=1)
    ratio = np.sqrt(np.mean(scatter**2) / np.mean(sig[:, good] ** 2))
    assert 0.85 < ratio < 1.15


def test_q_unit_axis_and_values(series, tmp_path):
    out = tmp_path / "q.nc"
    integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(unit="q_A^-1", **SETTINGS))
    ds = read_patterns(out)
    assert "q" in ds.dims and ds.attrs["unit"] == "q_A^-1"
    q_peak = two_theta_deg_to_q_invA(5.0, WL_A)
    mean = np.nanmean(ds["intensity"].values, axis=0)
    qv = ds["q"].values
    win = (qv > q_peak - 0.3) & (qv < q_peak + 0.3)
    assert abs(qv[win][np.argmax(mean[win])] - q_peak) < 2 * (qv[1] - qv[0])


def test_dark_flat_and_mask_are_applied(series, tmp_path):
    rng = np.random.default_rng(7)
    exp = series["expected"]
    dark = np.full(SHAPE, 150.0)
    flat = rng.uniform(0.7, 1.3, SHAPE)
    flat /= np.median(flat)
    fdir = tmp_path / "frames"
    fdir.mkdir()
    for i in range(4):
        img = rng.poisson(exp * flat + dark).astype(np.int32)
        img[100:120, 100:120] = 500000  # a region only the mask file removes (stays below saturation)
        fabio.tifimage.TifImage(data=img).write(str(fdir / f"f{i}.tif"))
    fabio.edfimage.EdfImage(data=dark.astype(np.float32)).write(str(tmp_path / "dark.edf"))
    fabio.edfimage.EdfImage(data=flat.astype(np.float32)).write(str(tmp_path / "flat.edf"))
    mask = np.zeros(SHAPE, np.uint8)
    mask[98:122, 98:122] = 1
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "c.nc"
    rep = integrate_series([fdir], series["poni"], out, IntegrationSettings(auto_mask=False, **SETTINGS),
                           dark=tmp_path / "dark.edf", flat=tmp_path / "flat.edf", mask=tmp_path / "mask.npy",
                           time_source={"period_s": 5})
    assert rep.masked_pixels["mask_file"] == 24 * 24
    ds = read_patterns(out)
    assert list(ds["time_s"].values) == [0, 5, 10, 15]
    good = np.all(np.isfinite(ds["intensity"].values), axis=0) & (ds["n_pixels"].values.min(axis=0) > 20)
    # poisson variance with a dark: raw counts (signal + dark) -> compare with that sigma
    ref = noise_free(series, IntegrationSettings(auto_mask=False, **SETTINGS))
    z = (ds["intensity"].values[:, good] - ref[good]) / ds["sigma"].values[:, good]
    # sigma includes the dark's counts (raw-count Poisson variance): |z| spread <= 1
    assert abs(z.mean()) < 0.1 and 0.6 < z.std() < 1.1
    # without the mask file the bright block shows up
    out2 = tmp_path / "c2.nc"
    integrate_series([fdir], series["poni"], out2, IntegrationSettings(auto_mask=False, **SETTINGS),
                     dark=tmp_path / "dark.edf", flat=tmp_path / "flat.edf")
    assert np.nanmax(read_patterns(out2)["intensity"].values) > 10 * np.nanmax(ds["intensity"].values)


def test_auto_mask_removes_hot_dead_and_saturated_pixels(series, tmp_path):
    rng = np.random.default_rng(3)
    fdir = tmp_path / "frames"
    fdir.mkdir()
    for i in range(4):
        img = rng.poisson(series["expected"]).astype(np.int32)
        img[50, 60] = 10_000_000  # hot in every frame
        img[80, 90] = 0  # dead
        if i == 2:
            img[150:153, 150:153] = np.iinfo(np.int32).max  # saturated in one frame only
        fabio.tifimage.TifImage(data=img).write(str(fdir / f"f{i}.tif"))
    out = tmp_path / "a.nc"
    rep = integrate_series([fdir], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.masked_pixels["hot"] >= 1 and rep.masked_pixels["dead"] >= 1
    ds = read_patterns(out)
    good = np.all(np.isfinite(ds["intensity"].values), axis=0) & (ds["n_pixels"].values.min(axis=0) > 20)
    ref = noise_free(series, IntegrationSettings(**SETTINGS))
    z = (ds["intensity"].values[:, good] - ref[good]) / ds["sigma"].values[:, good]
    assert np.abs(z).max() < 6  # neither the hot pixel nor the saturated block leaks in
    out2 = tmp_path / "a2.nc"
    integrate_series([fdir], series["poni"], out2, IntegrationSettings(auto_mask=False, **SETTINGS))
    ds2 = read_patterns(out2)
    assert np.nanmax(ds2["intensity"].values[:, good] - ds["intensity"].values[:, good]) > 1000


def test_hdf5_stack_input(series, tmp_path):
    frames = np.stack([fabio.open(str(series["frames"] / n)).data for n in series["names"][:3]])
    h5 = tmp_path / "scan_master.h5"
    with h5py.File(h5, "w") as fh:
        fh["entry/start_time"] = "2026-01-01T00:00:00Z"
        fh.create_dataset("entry/data/data", data=frames, compression="gzip")
        fh["entry/instrument/detector/frame_time"] = 2.0
    out = tmp_path / "h.nc"
    rep = integrate_series([h5], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_ok == 3
    ds = read_patterns(out)
    assert list(ds["frame_name"].values) == ["scan_master.h5:0", "scan_master.h5:1", "scan_master.h5:2"]
    assert list(ds["time_s"].values) == [0.0, 2.0, 4.0]
    ref = read_patterns_tiff = None
    out_t = tmp_path / "t.nc"
    integrate_series([series["frames"] / n for n in series["names"][:3]], series["poni"], out_t,
                     IntegrationSettings(**SETTINGS))
    ref = read_patterns(out_t)
    np.testing.assert_allclose(ds["intensity"].values, ref["intensity"].values, rtol=1e-6)
    assert read_patterns_tiff is None


def test_eiger_master_with_external_bitshuffle_data_files(series, tmp_path):
    """Eiger layout: <name>_master.h5 links /entry/data/data_00000N to <name>_data_00000N.h5
    (bitshuffle/LZ4, hdf5plugin); frames are numbered across the data files; a folder lists the
    master only."""
    import hdf5plugin

    frames = np.stack([fabio.open(str(series["frames"] / n)).data for n in series["names"][:5]])
    folder = tmp_path / "eiger"
    folder.mkdir()
    parts = {"data_000001": frames[:3], "data_000002": frames[3:]}
    for key, block in parts.items():
        with h5py.File(folder / f"scan_{key}.h5", "w") as fh:
            fh.create_dataset("entry/data/data", data=block, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(folder / "scan_master.h5", "w") as fh:
        for key in parts:
            fh[f"entry/data/{key}"] = h5py.ExternalLink(f"scan_{key}.h5", "/entry/data/data")
        fh["entry/instrument/detector/detectorSpecific/data_collection_date"] = "2026-01-01T00:00:00.000+00:00"
        fh["entry/instrument/detector/frame_time"] = 0.5
    out = tmp_path / "e.nc"
    rep = integrate_series([folder], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_ok == 5 and rep.n_error == 0
    ds = read_patterns(out)
    assert list(ds["frame_name"].values) == [f"scan_master.h5:{i}" for i in range(5)]
    assert list(ds["time_s"].values) == [0.0, 0.5, 1.0, 1.5, 2.0]
    out_t = tmp_path / "t.nc"
    integrate_series([series["frames"] / n for n in series["names"][:5]], series["poni"], out_t, IntegrationSettings(**SETTINGS))
    np.testing.assert_allclose(ds["intensity"].values, read_patterns(out_t)["intensity"].values, rtol=1e-6)
    # a missing data file is reported by name, not a crash
    (folder / "scan_data_000002.h5").unlink()
    with pytest.raises(InsituXRDError, match="scan_master.h5"):
        integrate_series([folder / "scan_master.h5"], series["poni"], tmp_path / "e2.nc", IntegrationSettings(**SETTINGS))


def test_dark_scale_multiplies_the_dark(series, tmp_path):
    """--dark-scale: a dark taken with another exposure is scaled before subtraction."""
    rng = np.random.default_rng(8)
    fdir = tmp_path / "frames"
    fdir.mkdir()
    dark_per_s = np.full(SHAPE, 20.0)  # dark current, counts per second
    for i in range(2):
        img = rng.poisson(series["expected"] + 10 * dark_per_s).astype(np.int32)  # 10 s frames
        fabio.tifimage.TifImage(data=img).write(str(fdir / f"f{i}.tif"))
    fabio.edfimage.EdfImage(data=(2 * dark_per_s).astype(np.float32)).write(str(tmp_path / "dark_2s.edf"))
    out = tmp_path / "d.nc"
    integrate_series([fdir], series["poni"], out, IntegrationSettings(dark_scale=5.0, **SETTINGS), dark=tmp_path / "dark_2s.edf")
    ds = read_patterns(out)
    good = np.all(np.isfinite(ds["intensity"].values), axis=0) & (ds["n_pixels"].values.min(axis=0) > 20)
    ref = noise_free(series, IntegrationSettings(**SETTINGS))
    z = (ds["intensity"].values[:, good] - ref[good]) / ds["sigma"].values[:, good]
    assert abs(z.mean()) < 0.1
    assert json.loads(ds.attrs["corrections"])["dark_scale"] == 5.0


def test_fast_bad_pixel_search_equals_full_median_filter():
    """find_bad_pixels evaluates the neighbourhood median only where a test can succeed; the
    result must equal the plain full-image median-filter formulation of the same criteria."""
    from scipy.ndimage import convolve, median_filter

    from insitu_xrd.reduction.masking import find_bad_pixels

    def reference(frames, dark=None, hot_sigma=20.0, dead_min=10.0):
        lo = np.min(np.stack(frames), axis=0).astype(np.float32)
        hi = np.max(np.stack(frames), axis=0)
        sig = lo if dark is None else lo - dark.astype(np.float32)
        cross = np.zeros((5, 5), bool)
        cross[2, :] = cross[:, 2] = True
        med = median_filter(sig, footprint=cross, mode="mirror")
        resid = (sig - med) / np.sqrt(np.maximum(med, 0) + 1.0)
        kernel = np.ones((3, 3), np.float32)
        kernel[1, 1] = 0
        nb = convolve((resid > 5.0).astype(np.float32), kernel, mode="constant")
        gaps = lo < 0
        # dead: the median of the 5x5 neighbours that counted in some frame, gaps left out (>= 8 of them)
        never = np.pad((hi == 0) | gaps, 2, mode="reflect")
        padded = np.pad(lo, 2, mode="reflect")  # raw counts (the dark is not subtracted)
        dead = np.zeros(sig.shape, bool)
        for r, c in zip(*np.nonzero(hi == 0)):
            box = padded[r:r + 5, c:c + 5][~never[r:r + 5, c:c + 5]]
            dead[r, c] = box.size >= 8 and np.median(box) > dead_min
        return {"gaps": gaps, "dead": dead & ~gaps,
                "hot": (resid > hot_sigma) & (nb <= 1) & ~gaps}

    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[0:300, 0:280]
    r = np.hypot(yy - 40.0, xx - 250.0)
    expected = 50 + 4000 * np.exp(-0.5 * ((r - 120) / 1.2) ** 2) + 900 * np.exp(-0.5 * ((r - 200) / 0.8) ** 2)
    frames = [rng.poisson(expected).astype(np.int32) for _ in range(3)]
    hot = (rng.integers(0, 300, 60), rng.integers(0, 280, 60))
    dead = (rng.integers(0, 300, 60), rng.integers(0, 280, 60))
    for f in frames:
        f[hot] += rng.integers(200, 5000, 60)  # some hot, some too weak to call
        f[dead] = 0
        f[0, 0] = f[299, 279] = 10**6  # hot pixels in corners (edge padding)
        f[150:152, 10:12] = 10**6  # a 2x2 spot: not isolated -> kept
        f[60, :] = 0  # a dead row and a dead column: their neighbourhoods are half dead
        f[:, 140] = 0
        f[250:300, 200:280] = 0  # a shadowed corner that counts nothing: not dead
        f[200:203, 0:280] = -1  # a gap row
    frames[1][10, 10] = 10**6  # hot in one frame only -> not hot
    for dark in (None, np.full((300, 280), 30.0)):
        got, want = find_bad_pixels(frames, dark=dark), reference(frames, dark=dark)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got["hot"].sum() > 20 and got["dead"].sum() > 20 and got["gaps"].sum() == 3 * 280
        assert got["hot"][0, 0] and not got["hot"][150, 10] and not got["hot"][10, 10]
        assert got["dead"][60, :199].all() and got["dead"][:199, 140].all()
        assert not got["dead"][253:300, 203:280].any()


def test_hot_pixels_must_stand_out_from_their_ring(tmp_path):
    """On an 8x8-binned Perkin (1.6 mm pixels) CeO2 rings are narrower than a pixel: ring pixels
    look like isolated hot pixels to the neighbourhood test. With the geometry they are compared
    with their ring and kept; real hot pixels (on rings or background) are still found."""
    from insitu_xrd.reduction.masking import find_bad_pixels
    from insitu_xrd.simulate.calibrant import make_geometry, render_calibrant_image

    geo = make_geometry("Perkin", 1000.0, (128.4, 127.4), tilt_deg=0.3, binning=8, wavelength_A=WL_A)
    frames = [render_calibrant_image("CeO2", geo, WL_A, binning=8, seed=s) for s in (1, 2, 3)]
    assert find_bad_pixels(frames)["hot"].sum() > 20  # ring pixels taken for hot pixels
    step = 0.5 * geo.detector.pixel1 / geo.dist
    assert find_bad_pixels(frames, radial_at=geo.tth, radial_step=step)["hot"].sum() == 0
    rng = np.random.default_rng(4)
    hot = (rng.integers(3, 253, 25), rng.integers(3, 253, 25))
    for f in frames:
        f[hot] = 10 * f[hot] + 5000
    local = find_bad_pixels(frames)["hot"]
    found = find_bad_pixels(frames, radial_at=geo.tth, radial_step=step)["hot"]
    # the ring test drops no real hot pixel; it only removes ring pixels (this dense-ring image
    # leaves some hot pixels next to ring pixels, where the isolation test cannot call them)
    assert np.array_equal(found[hot], local[hot]) and found[hot].sum() >= 8
    assert found.sum() == found[hot].sum() < local.sum()
    # integrate_series passes its geometry: no ring pixel of the clean frames is masked
    fdir = tmp_path / "frames"
    fdir.mkdir()
    for i, s in enumerate((1, 2, 3)):
        fabio.tifimage.TifImage(data=render_calibrant_image("CeO2", geo, WL_A, binning=8, seed=s)).write(str(fdir / f"f{i}.tif"))
    rep = integrate_series([fdir], write_poni(geo, tmp_path / "g.poni"), tmp_path / "h.nc", IntegrationSettings(npt=300))
    assert rep.masked_pixels["hot"] == 0


def test_bad_frames_are_recorded_and_skipped(series, tmp_path):
    fdir = tmp_path / "frames"
    fdir.mkdir()
    good = [series["frames"] / n for n in series["names"][:3]]
    for p in good:
        (fdir / p.name).write_bytes(p.read_bytes())
    raw = good[0].read_bytes()
    (fdir / "frame_0003.tif").write_bytes(raw[: len(raw) // 3])  # truncated
    fabio.tifimage.TifImage(data=np.ones((100, 120), np.int32)).write(str(fdir / "frame_0004.tif"))  # wrong shape
    (fdir / "frame_0005.tif").write_bytes(b"this is not an image" * 50)  # garbage
    out = tmp_path / "b.nc"
    rep = integrate_series([fdir], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_ok == 3 and rep.n_error == 3
    ds = read_patterns(out)
    status = dict(zip(ds["frame_name"].values, ds["status"].values))
    for name in ("frame_0003.tif", "frame_0004.tif", "frame_0005.tif"):
        assert status[name].startswith("error: ") and name in status[name]
    assert "shape" in status["frame_0004.tif"]
    bad = ds["status"].values != "ok"
    assert np.all(np.isnan(ds["intensity"].values[bad]))


def test_interrupted_run_is_readable_and_resumes_without_redoing(series, tmp_path, monkeypatch):
    out = tmp_path / "r.nc"
    calls = {"n": 0}
    orig = integ.FrameIntegrator.integrate

    def counting(self, data):
        calls["n"] += 1
        return orig(self, data)

    monkeypatch.setattr(integ.FrameIntegrator, "integrate", counting)

    def interrupt(done, total, name, status):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS), progress=interrupt)
    ds = read_patterns(out)  # the interrupted output is complete and readable
    assert ds.sizes["frame"] == 2 and set(ds["status"].values) == {"ok"}
    assert not (tmp_path / "r.nc.partial").exists()
    calls["n"] = 0
    rep = integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_skipped_done == 2 and rep.n_ok == 4
    assert calls["n"] == 4  # the two saved frames were not integrated again
    ds = read_patterns(out)
    assert list(ds["frame_name"].values) == series["names"]
    # watch-mode style: a later call with only a new frame appends it
    late = tmp_path / "late"
    late.mkdir()
    (late / "frame_0099.tif").write_bytes((series["frames"] / series["names"][0]).read_bytes())
    rep = integrate_series([late / "frame_0099.tif"], series["poni"], out, IntegrationSettings(**SETTINGS))
    assert rep.n_ok == 1 and rep.n_skipped_done == 0
    ds = read_patterns(out)
    assert ds.sizes["frame"] == 7 and ds["frame_name"].values[-1] == "frame_0099.tif"
    np.testing.assert_array_equal(ds["intensity"].values[-1], ds["intensity"].values[0])  # same mask, same numbers
    # other settings cannot resume into the same file
    with pytest.raises(InsituXRDError, match="other settings"):
        integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(npt=500))


def test_sigma_clip_removes_single_crystal_spot(series, tmp_path):
    rng = np.random.default_rng(11)
    fdir = tmp_path / "frames"
    fdir.mkdir()
    img = rng.poisson(series["expected"]).astype(np.int32)
    img[140:143, 170:173] += 200000  # a single-crystal spot (3x3 px, not isolated -> not auto-masked)
    fabio.tifimage.TifImage(data=img).write(str(fdir / "spot.tif"))
    plain = tmp_path / "plain.nc"
    clip = tmp_path / "clip.nc"
    integrate_series([fdir], series["poni"], plain, IntegrationSettings(npt=200))
    integrate_series([fdir], series["poni"], clip, IntegrationSettings(npt=200, sigma_clip=True))
    p = read_patterns(plain)
    c = read_patterns(clip)
    ref = noise_free(series, IntegrationSettings(npt=200))
    # pyFAI's sigma clipping has no pixel splitting: its noise-free reference is unsplit too
    ref_unsplit = noise_free(series, IntegrationSettings(npt=200, method=("no", "csr", "cython")))
    zc = (c["intensity"].values[0] - ref_unsplit) / c["sigma"].values[0]
    zp = (p["intensity"].values[0] - ref) / p["sigma"].values[0]
    assert np.nanmax(zp) > 20
    assert np.nanmax(np.abs(zc)) < 5
    assert 0.7 < np.nanstd(zc) < 1.3  # the rebuilt Poisson sigma is neither inflated nor shrunk


def test_cake_and_xye_export(series, tmp_path):
    out = tmp_path / "k.nc"
    xdir = tmp_path / "xye"
    integrate_series([series["frames"] / series["names"][0]], series["poni"], out,
                     IntegrationSettings(cake=True, cake_npt_azim=36, **SETTINGS), xye_dir=xdir)
    ds = read_patterns(out)
    assert ds["cake_intensity"].dims == ("frame", "chi", "two_theta") and ds.sizes["chi"] == 36
    pat = read_pattern_1d(xdir / "frame_0000.xye")
    assert pat.wavelength_A == pytest.approx(WL_A)
    good = np.isfinite(ds["intensity"].values[0])
    assert len(pat) == good.sum()
    from insitu_xrd.plots.patterns import plot_patterns_map

    png = plot_patterns_map(ds, tmp_path / "map.png", radial_range=(2, 9))
    assert png.stat().st_size > 10_000


def test_full_size_perkin_frame(tmp_path):
    """One 2048x2048 Perkin frame at 1 m, 0.1173 A, 3000 bins: the production geometry."""
    from pyFAI.detectors import detector_factory
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = detector_factory("Perkin", {"pixel1": 2e-4, "pixel2": 2e-4})
    ai = AzimuthalIntegrator(dist=1.0, poni1=0.2048, poni2=0.2048, rot1=0.004, rot2=0.007, detector=det,
                             wavelength=WL_A * 1e-10)
    tth = np.linspace(0, 18, 6000)
    curve = lambda x: 200 + 3000 * np.exp(-0.5 * ((x - 4.1) / 0.02) ** 2)  # noqa: E731  (FWHM 0.047 deg ~ 4 px)
    img = ai.calcfrom1d(tth, curve(tth), shape=det.shape, dim1_unit="2th_deg", polarization_factor=0.99)
    frame = np.random.default_rng(5).poisson(img).astype(np.int32)
    fabio.tifimage.TifImage(data=frame, header={"time_s": "0"}).write(str(tmp_path / "perkin.tif"))
    poni = write_poni(ai, tmp_path / "perkin.poni")
    out = tmp_path / "perkin.nc"
    integrate_series([tmp_path / "perkin.tif"], poni, out, IntegrationSettings(npt=3000, auto_mask=False))
    ds = read_patterns(out)
    x = ds["two_theta"].values
    y = ds["intensity"].values[0]
    s = ds["sigma"].values[0]
    good = np.isfinite(y) & (ds["n_pixels"].values[0] > 50)
    flat = good & (np.abs(x - 4.1) > 0.15)
    z = (y[flat] - curve(x[flat])) / s[flat]
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    # bins (0.0054 deg) are finer than a pixel (0.011 deg): with full splitting no single bin of
    # the 0.047 deg wide peak is off by more than the pixel-size smoothing (~1-2 %); unsplit
    # integration was off by up to 31 % (shared README)
    peak = (x > 4.0) & (x < 4.2) & good
    assert np.abs((y[peak] - curve(x[peak])) / curve(x[peak])).max() < 0.05


# ---------------------------------------------------------------------------------- CLI
runner = CliRunner()


def _cli(args):
    return runner.invoke(app, ["integrate", *map(str, args)])


def test_cli_runs_and_reports(series, tmp_path):
    out = tmp_path / "cli.nc"
    res = _cli([series["frames"], "--poni", series["poni"], "--npt", 300, "--range", 1, 9, "-o", out])
    assert res.exit_code == 0, res.output
    ds = read_patterns(out)
    assert ds.sizes["two_theta"] == 300
    assert ds["two_theta"].values[0] == pytest.approx(1 + 8 / 600)


def test_cli_bad_inputs_exit_2_with_one_clear_line(series, tmp_path):
    frames = series["frames"]
    out = tmp_path / "x.nc"
    bad_poni = tmp_path / "bad.poni"
    bad_poni.write_text("just some text\n")
    nowl = tmp_path / "nowl.poni"
    nowl.write_text("\n".join(l for l in series["poni"].read_text().splitlines() if not l.startswith("Wavelength")))
    wrong = tmp_path / "wrong.poni"
    wrong.write_text(series["poni"].read_text().replace("[256, 256]", "[512, 512]"))
    cases = [
        ([frames, "--poni", tmp_path / "missing.poni", "-o", out], "missing.poni"),
        ([frames, "--poni", bad_poni, "-o", out], "bad.poni"),
        ([frames, "--poni", nowl, "-o", out], "wavelength"),
        ([frames, "--poni", wrong, "-o", out], "shape"),
        ([tmp_path / "nothing_here", "--poni", series["poni"], "-o", out], "nothing_here"),
        ([frames, "--poni", series["poni"], "--unit", "r_mm", "-o", out], "unit"),
    ]
    for args, needle in cases:
        res = _cli(args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
        assert needle in res.output, res.output
    assert "[512, 512]" in wrong.read_text()  # the test really changed the detector shape
    res = _cli([frames, "--poni", nowl, "--wavelength-a", WL_A, "--npt", 200, "-o", out])
    assert res.exit_code == 0, res.output
    assert xr.load_dataset(out, engine="h5netcdf").attrs["wavelength_source"] == "--wavelength-a"


def test_real_pilatus_image_needs_orientation_2_for_its_old_dioptas_poni(real_data_dir, tmp_path):
    """Real CeO2 Pilatus 1M frame (negative gap pixels) + its 2015 DIOPTAS PONI: the PONI
    predates pyFAI's orientation field; only a vertical flip (orientation 2) reproduces the
    pattern DIOPTAS integrated from it."""
    ref = read_pattern_1d(real_data_dir / "CeO2_Pilatus1M.xy")
    corr = {}
    for orientation in (None, 2):
        out = tmp_path / f"pil{orientation}.nc"
        rep = integrate_series([real_data_dir / "CeO2_Pilatus1M.tif"], real_data_dir / "CeO2_Pilatus1M.poni", out,
                               IntegrationSettings(npt=1512, polarization_factor=None), orientation=orientation)
        assert rep.masked_pixels["gaps"] > 10000  # module gaps (-1) found by the auto-mask
        ds = read_patterns(out)
        x = ds["two_theta"].values
        y = ds["intensity"].values[0]
        g = np.isfinite(y)
        corr[orientation] = np.corrcoef(np.interp(ref.two_theta_deg, x[g], y[g]), ref.intensity)[0, 1]
    assert corr[2] > 0.99 and corr[None] < 0.5


def test_two_worker_threads_give_the_same_numbers_as_one(series):
    """pyFAI's 1D CSC engine is shared by the worker threads; the 2D cake and sigma-clip engines
    are not thread-safe and are serialised: concurrent results must equal serial ones."""
    ai = make_ai()
    imgs = [fabio.open(str(series["frames"] / n)).data for n in series["names"]]
    from concurrent.futures import ThreadPoolExecutor

    for kw in (dict(npt=400), dict(npt=200, cake=True, cake_npt_azim=36), dict(npt=200, sigma_clip=True)):
        fi = integ.FrameIntegrator(ai, SHAPE, IntegrationSettings(**kw))
        serial = [fi.integrate(im) for im in imgs]
        with ThreadPoolExecutor(2) as pool:
            parallel = list(pool.map(fi.integrate, imgs * 2))
        for a, b in zip(serial * 2, parallel):
            for key in a:
                np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=f"{kw} {key}")


def test_hard_kill_resumes_from_the_zarr_working_store(series, tmp_path):
    """After a kill that left no NetCDF export, the re-run resumes from ``<stem>.zarr``; the
    pipeline's ``overwrite="if_different"`` resumes only an output of the same ``resume_key``."""
    out = tmp_path / "k.nc"

    def interrupt(done, total, name, status):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS), progress=interrupt,
                         resume_key="A")
    assert (tmp_path / "k.zarr" / "zarr.json").is_file()
    out.unlink()  # as after SIGKILL: the export never happened
    rep = integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS),
                           overwrite="if_different", resume_key="A")
    assert rep.n_skipped_done == 2 and rep.n_ok == 4
    ds = read_patterns(out)
    assert list(ds["frame_name"].values) == series["names"]
    ref = tmp_path / "ref.nc"
    integrate_series([series["frames"]], series["poni"], ref, IntegrationSettings(**SETTINGS), store="netcdf")
    np.testing.assert_array_equal(read_patterns(ref)["intensity"].values, ds["intensity"].values)
    rep = integrate_series([series["frames"]], series["poni"], out, IntegrationSettings(**SETTINGS),
                           overwrite="if_different", resume_key="B", export=False)
    assert rep.n_skipped_done == 0 and rep.n_ok == 6  # another stage key: integrated again
    assert read_patterns(out).sizes["frame"] == 6 and read_patterns(tmp_path / "k.zarr").sizes["frame"] == 6
    assert json.loads(read_patterns(tmp_path / "k.zarr").attrs["store_signature"])["resume_key"] == "B"
    assert json.loads(read_patterns(out).attrs["store_signature"])["resume_key"] == "A"  # not exported
    # an output of the earlier version (NetCDF only, no resume_key) is resumed, not redone
    rep = integrate_series([series["frames"]], series["poni"], ref, IntegrationSettings(**SETTINGS), resume_key="C")
    assert rep.n_skipped_done == 6 and (tmp_path / "ref.zarr" / "zarr.json").is_file()


def test_an_open_series_fed_frame_by_frame_gives_the_one_shot_result(series, tmp_path):
    """The watch mode's path: one SeriesIntegration, frames added one call at a time (set-up once;
    each add stored when it returns, read back by rows) == integrate_series on all frames."""
    from insitu_xrd.reduction.series import SeriesIntegration

    paths = [series["frames"] / n for n in series["names"]]
    ref_out = tmp_path / "all.nc"
    integrate_series(paths, series["poni"], ref_out, IntegrationSettings(**SETTINGS))
    out = tmp_path / "grown.nc"
    seen: list[tuple[int, str]] = []
    with SeriesIntegration(paths[:1], series["poni"], out, IntegrationSettings(**SETTINGS)) as s:
        engine = s.integrator
        for p in paths:
            rep = s.add([p], on_record=lambda i, k, r: seen.append((i, r["status"])))
            assert rep.n_ok == 1
            assert s.integrator is engine  # built once
            row = s.store.read_rows([len(s.store) - 1])  # on disk already, read back by rows
            assert str(row["frame_name"].values[0]) == p.name
        assert s.add([paths[2]]).n_skipped_done == 1  # a frame already stored is not integrated again
        assert not out.exists()  # the NetCDF export is written once, at close
    assert seen == [(i, "ok") for i in range(len(paths))]
    a, b = read_patterns(ref_out), read_patterns(out)
    # the static mask: found on frame 0 alone here, on the first frames in the one-shot run
    np.testing.assert_array_equal(a["frame_key"].values, b["frame_key"].values)
    np.testing.assert_allclose(b["intensity"].values, a["intensity"].values, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(b["sigma"].values, a["sigma"].values, rtol=1e-12, equal_nan=True)
