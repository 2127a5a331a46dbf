"""Automatic geometry calibration: accuracy from a rough guess (simulated CeO2/Ni), real Pilatus
CeO2 against its human calibration, the CLI end to end and its bad-input handling."""

from __future__ import annotations

from pathlib import Path

import fabio
import numpy as np
import pyFAI.detectors
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.reduction.calibrate import (
    calibrate_image,
    max_two_theta_difference_deg,
    resolve_calibrant,
)
from insitu_xrd.simulate.calibrant import make_geometry, render_calibrant_image

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Simulated in-situ geometry (Perkin 2048x2048, 200 um, 0.1173 A, ~1 m, 0.6 deg tilt).
WL_CEO2_A = 0.1173
TRUE_DIST_MM = 1003.7
TRUE_CENTER_PX = (1030.3, 1012.7)
TRUE_TILT_DEG, TRUE_TILT_ROT_DEG = 0.6, 35.0


def _errors(result, true_ai: AzimuthalIntegrator) -> tuple[float, float, float]:
    """|distance error| (mm), |direct-beam centre error| (px), max |2theta error| over all pixels (mdeg)."""
    f = true_ai.getFit2D()
    dd = abs(result.distance_mm - f["directDist"])
    dc = float(np.hypot(result.center_px[0] - f["centerX"], result.center_px[1] - f["centerY"]))
    dtth = 1e3 * max_two_theta_difference_deg(result.ai, true_ai)
    return dd, dc, dtth


@pytest.fixture(scope="module")
def ceo2_perkin() -> tuple[np.ndarray, AzimuthalIntegrator]:
    true = make_geometry("Perkin", TRUE_DIST_MM, TRUE_CENTER_PX, tilt_deg=TRUE_TILT_DEG,
                         tilt_plane_rotation_deg=TRUE_TILT_ROT_DEG, wavelength_A=WL_CEO2_A)
    img = render_calibrant_image("CeO2", true, WL_CEO2_A, detector="Perkin", seed=11)
    return img, true


def test_renderer_is_realistic_and_reproducible(ceo2_perkin) -> None:
    img, true = ceo2_perkin
    assert img.shape == (2048, 2048) and img.dtype == np.int32
    again = render_calibrant_image("CeO2", true, WL_CEO2_A, detector="Perkin", binning=4, seed=3)
    assert np.array_equal(again, render_calibrant_image("CeO2", true, WL_CEO2_A, detector="Perkin", binning=4, seed=3))
    # Poisson noise: two seeds differ by noise whose variance is the sum of the means.
    other = render_calibrant_image("CeO2", true, WL_CEO2_A, detector="Perkin", binning=4, seed=4)
    diff = again.astype(float) - other
    assert abs(diff.var() / (again.astype(float) + other).mean() - 1.0) < 0.05
    assert again.min() > 0  # smooth background everywhere
    # The strongest ring (111) is where the true geometry puts it.
    ai = make_geometry("Perkin", TRUE_DIST_MM, TRUE_CENTER_PX, tilt_deg=TRUE_TILT_DEG,
                       tilt_plane_rotation_deg=TRUE_TILT_ROT_DEG, wavelength_A=WL_CEO2_A)
    res = ai.integrate1d(img, 3000, unit="2th_deg", radial_range=(1.5, 3.0), polarization_factor=0.99)
    tth_111 = 2 * np.degrees(np.arcsin(WL_CEO2_A / (2 * 5.411651 / np.sqrt(3))))
    assert abs(res.radial[np.argmax(res.intensity)] - tth_111) < 0.002


def test_ceo2_from_rough_guess_centre_20px_distance_5pct(ceo2_perkin) -> None:
    img, true = ceo2_perkin
    f = true.getFit2D()
    guess_centre = (f["centerX"] + 20 / np.sqrt(2), f["centerY"] - 20 / np.sqrt(2))  # 20 px off
    result = calibrate_image(img, "CeO2", WL_CEO2_A, "Perkin", distance_mm=1.05 * f["directDist"], center_px=guess_centre)
    dd, dc, dtth = _errors(result, true)
    print(f"CeO2 Perkin, centre 20 px + distance +5 % off: dd={dd:.4f} mm dc={dc:.4f} px max2th={dtth:.3f} mdeg "
          f"rms={result.rms_residual_mdeg:.3f} mdeg t={result.elapsed_s:.1f} s")
    assert dd < 0.05
    assert dc < 0.1
    assert dtth < 2.0
    assert abs(result.tilt_deg - TRUE_TILT_DEG) < 0.02
    assert result.rms_residual_px < 0.2 and len(result.ring_residuals) >= 30
    assert all(abs(r.mean_mdeg) < 1.5 for r in result.ring_residuals if r.n_points >= 50)


def test_ceo2_without_centre_guess(ceo2_perkin) -> None:
    img, true = ceo2_perkin
    f = true.getFit2D()
    result = calibrate_image(img, "CeO2", WL_CEO2_A, "Perkin", distance_mm=0.95 * f["directDist"], center_px=None)
    dd, dc, dtth = _errors(result, true)
    print(f"CeO2 Perkin, no centre, distance -5 % off: dd={dd:.4f} mm dc={dc:.4f} px max2th={dtth:.3f} mdeg")
    assert dd < 0.05 and dc < 0.1 and dtth < 2.0


def test_ni_rings_from_cell_and_calibration() -> None:
    # pyFAI's bundled Ni lists 5 reflections; ours come from the Fm-3m cell.
    ni = resolve_calibrant("Ni", 0.1665)
    assert len(ni.dspacing) > 40
    d = np.sort(np.asarray(ni.dspacing))[::-1]
    assert d[0] == pytest.approx(3.5238 / np.sqrt(3), abs=1e-6) and d[1] == pytest.approx(3.5238 / 2, abs=1e-6)
    from_file = resolve_calibrant(PROJECT_ROOT / "calibrations" / "Ni_Fm-3m_a3.5238.D", 0.1665)
    assert np.allclose(np.sort(from_file.dspacing), np.sort([x for x in ni.dspacing if x >= 0.4]), atol=1e-6)

    # Ex-situ Ni at 0.1665 A on a 2x2-binned Perkin (1024x1024, 400 um): keeps the test fast.
    wl = 0.1665
    true = make_geometry("Perkin", 980.0, (498.4, 530.9), tilt_deg=0.45, tilt_plane_rotation_deg=-120.0,
                         wavelength_A=wl, binning=2)
    img = render_calibrant_image("Ni", true, wl, detector="Perkin", binning=2, seed=5)
    f = true.getFit2D()
    result = calibrate_image(img, "Ni", wl, true.detector, distance_mm=1.05 * f["directDist"],
                             center_px=(f["centerX"] - 10, f["centerY"] + 7))
    dd, dc, dtth = _errors(result, true)
    print(f"Ni binned Perkin: dd={dd:.4f} mm dc={dc:.4f} px max2th={dtth:.3f} mdeg rings={len(result.ring_residuals)}")
    assert len(result.ring_residuals) > 10  # far more than pyFAI's 5 bundled reflections
    assert dd < 0.1 and dc < 0.1 and dtth < 2.0


def test_real_pilatus_ceo2_matches_human_calibration(real_data_dir: Path) -> None:
    img = fabio.open(str(real_data_dir / "CeO2_Pilatus1M.tif")).data
    # The Dioptas PONI (2015) refers to the image flipped vertically (Dioptas flips on load).
    img = np.flipud(img)
    ref = AzimuthalIntegrator()
    ref.load(str(real_data_dir / "CeO2_Pilatus1M.poni"))
    ref.detector = pyFAI.detectors.detector_factory("Pilatus1M")
    result = calibrate_image(img, "CeO2", 0.4066, "Pilatus1M", distance_mm=200.0)
    dd, dc, dtth = _errors(result, ref)
    dtth_valid = 1e3 * max_two_theta_difference_deg(result.ai, ref, mask=img < 0)
    print(f"real Pilatus CeO2 vs human PONI: dd={dd:.4f} mm dc={dc:.4f} px max2th={dtth:.3f} mdeg "
          f"(valid pixels {dtth_valid:.3f}) rms={result.rms_residual_mdeg:.2f} mdeg t={result.elapsed_s:.1f} s")
    assert dd < 0.2
    assert dc < 1.0
    assert dtth < 10.0
    assert result.mask[img < 0].all()  # module gaps masked


@pytest.fixture(scope="module")
def pilatus_sim(tmp_path_factory) -> tuple[Path, AzimuthalIntegrator]:
    """A simulated CeO2 image on a Pilatus 1M (gaps set to -1 as the detector writes them)."""
    wl = 0.4066
    true = make_geometry("Pilatus1M", 205.0, (470.2, 530.6), tilt_deg=0.8, tilt_plane_rotation_deg=60.0,
                         wavelength_A=wl)
    img = render_calibrant_image("CeO2", true, wl, detector="Pilatus1M", peak_fwhm_deg=0.08, seed=2)
    img[pyFAI.detectors.detector_factory("Pilatus1M").mask.astype(bool)] = -1
    path = tmp_path_factory.mktemp("calib") / "ceo2_pilatus.tif"
    fabio.tifimage.TifImage(data=img).write(str(path))
    return path, true


def test_cli_end_to_end(pilatus_sim, tmp_path: Path) -> None:
    image, true = pilatus_sim
    poni, png = tmp_path / "geometry.poni", tmp_path / "diag.png"
    res = CliRunner().invoke(app, ["calibrate", str(image), "--calibrant", "CeO2", "--wavelength-a", "0.4066",
                                   "--detector", "Pilatus1M", "--distance-mm", "215", "-o", str(poni), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    for key in ("distance_mm", "beam_center_px", "tilt_deg", "rms_residual"):
        assert key in res.stdout
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"
    fitted = AzimuthalIntegrator()
    fitted.load(str(poni))
    assert fitted.detector.shape == (1043, 981)
    assert fitted.wavelength == pytest.approx(0.4066e-10)
    assert 1e3 * max_two_theta_difference_deg(fitted, true) < 2.0
    assert abs(fitted.getFit2D()["directDist"] - 205.0) < 0.05


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("unreadable", "cannot read image"),
        ("calibrant", "unknown calibrant 'CeO3'; allowed: CeO2, Ni, LaB6, Si"),
        ("detector", "unknown detector 'Perkn'"),
        ("shape", "does not match detector"),
        ("mask_shape", "mask shape"),
    ],
)
def test_cli_bad_input_exit_2(case: str, expected: str, pilatus_sim, tmp_path: Path) -> None:
    image, _ = pilatus_sim
    args = {"calibrant": "CeO2", "detector": "Pilatus1M"}
    img_arg = str(image)
    extra: list[str] = []
    if case == "missing":
        img_arg = str(tmp_path / "nope.tif")
    elif case == "unreadable":
        bad = tmp_path / "junk.tif"
        bad.write_text("not an image")
        img_arg = str(bad)
    elif case == "calibrant":
        args["calibrant"] = "CeO3"
    elif case == "detector":
        args["detector"] = "Perkn"
    elif case == "shape":
        args["detector"] = "Perkin"
    elif case == "mask_shape":
        m = tmp_path / "mask.npy"
        np.save(m, np.zeros((10, 10), np.int8))
        extra = ["--mask", str(m)]
    res = CliRunner().invoke(app, ["calibrate", img_arg, "--calibrant", args["calibrant"], "--wavelength-a", "0.4066",
                                   "--detector", args["detector"], "-o", str(tmp_path / "g.poni"), *extra])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert expected in err
    assert err.startswith("error:") and "Traceback" not in res.output
    assert len(err.splitlines()) == 1


def test_library_rejects_bad_numbers() -> None:
    img = np.zeros((1043, 981), np.int32)
    with pytest.raises(InsituXRDError, match="wavelength"):
        calibrate_image(img, "CeO2", -1.0, "Pilatus1M")
    with pytest.raises(InsituXRDError, match="2D"):
        calibrate_image(img[0], "CeO2", 0.4, "Pilatus1M")
