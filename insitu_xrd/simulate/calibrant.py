"""Realistic 2D calibrant images (CeO2, Ni, LaB6, Si, ...) with known geometry, for tests and demos.

The image is built from a 1D powder pattern I(2theta) (pseudo-Voigt peaks at the calibrant's ring
positions with structure-factor x multiplicity x Lorentz areas when the calibrant has a built-in
crystal template, equal areas otherwise) that pyFAI maps onto the detector pixels
(``AzimuthalIntegrator.calcfrom1d``) with the solid-angle and polarization factors a real detector
sees; a smooth, slightly anisotropic background is added and the counts are Poisson-sampled.

Each pixel averages the pattern over 2 x 2 sub-pixel positions by default (pixel-area broadening);
keep the peak FWHM above ~2 pixel widths (e.g. >= 0.025 deg for a Perkin at 1 m) when sampling
pixel centres only (``oversampling=1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pyFAI.detectors
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from insitu_xrd.core.crystal import CALIBRANT_LATTICE_A, Phase, make_template
from insitu_xrd.core.pattern import lorentz_factor, two_theta_deg_from_d
from insitu_xrd.core.profiles import peak_fwhm_eta, pseudo_voigt
from insitu_xrd.errors import InsituXRDError

__all__ = ["render_calibrant_image", "make_geometry", "Caglioti"]


@dataclass(frozen=True)
class Caglioti:
    """Instrumental profile in GSAS-II CW units: U, V, W (centideg^2), X, Y (centideg).

    Defaults give a FWHM of ~0.03 deg 2theta at low angle, typical of a Perkin flat panel at 1 m
    with a high-energy beam.
    """

    U: float = 1.0
    V: float = -0.2
    W: float = 1.6
    X: float = 0.8
    Y: float = 0.3


def make_geometry(
    detector: str | pyFAI.detectors.Detector = "Perkin",
    distance_mm: float = 1000.0,
    center_px: tuple[float, float] | None = None,
    tilt_deg: float = 0.0,
    tilt_plane_rotation_deg: float = 0.0,
    wavelength_A: float | None = None,
    binning: int = 1,
) -> AzimuthalIntegrator:
    """Geometry from Fit2D-style parameters.

    center_px is the direct-beam centre (x = column, y = row, in pixels of the possibly binned
    detector), default the detector centre; tilt and its plane rotation in degrees.
    """
    det = _make_detector(detector, binning)
    if center_px is None:
        center_px = (det.shape[1] / 2.0, det.shape[0] / 2.0)
    ai = AzimuthalIntegrator(detector=det)
    ai.setFit2D(distance_mm, center_px[0], center_px[1], tilt=tilt_deg, tiltPlanRotation=tilt_plane_rotation_deg)
    if wavelength_A is not None:
        ai.wavelength = wavelength_A * 1e-10
    return ai


def _make_detector(detector: str | pyFAI.detectors.Detector, binning: int) -> pyFAI.detectors.Detector:
    if isinstance(detector, pyFAI.detectors.Detector):
        det = detector
    else:
        try:
            det = pyFAI.detectors.detector_factory(detector)
        except Exception as exc:  # pyFAI raises RuntimeError for unknown names
            raise InsituXRDError(f"unknown detector {detector!r}: {exc}") from None
    if binning > 1:
        if det.shape is None:
            raise InsituXRDError(f"detector {detector!r} has no fixed shape; cannot bin it")
        shape = (det.shape[0] // binning, det.shape[1] // binning)
        det = pyFAI.detectors.Detector(
            pixel1=det.pixel1 * binning, pixel2=det.pixel2 * binning, max_shape=shape, orientation=det.orientation
        )
    return det


def _geometry(geometry: AzimuthalIntegrator | Mapping[str, float] | str | Path, det: pyFAI.detectors.Detector) -> AzimuthalIntegrator:
    if isinstance(geometry, AzimuthalIntegrator):
        ai = AzimuthalIntegrator(
            dist=geometry.dist, poni1=geometry.poni1, poni2=geometry.poni2,
            rot1=geometry.rot1, rot2=geometry.rot2, rot3=geometry.rot3, detector=geometry.detector,
        )
        return ai
    if isinstance(geometry, (str, Path)):
        ai = AzimuthalIntegrator()
        try:
            ai.load(str(geometry))
        except Exception as exc:
            raise InsituXRDError(f"cannot read PONI file {geometry}: {exc}") from None
        return ai
    keys = {"dist", "poni1", "poni2", "rot1", "rot2", "rot3"}
    unknown = set(geometry) - keys
    if unknown:
        raise InsituXRDError(f"geometry mapping has unknown keys {sorted(unknown)}; allowed: {sorted(keys)} (SI units: m, rad)")
    return AzimuthalIntegrator(detector=det, **{k: float(v) for k, v in geometry.items()})


def _ring_table(calibrant: str | Phase, wavelength_A: float, tth_max_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Ring positions (deg) and relative integrated areas for a calibrant name or a Phase."""
    phase: Phase | None = None
    if isinstance(calibrant, Phase):
        phase = calibrant
    elif calibrant.lower() in CALIBRANT_LATTICE_A:
        phase = make_template(calibrant.lower())
    if phase is not None:
        dmin = wavelength_A / (2.0 * np.sin(np.radians(tth_max_deg) / 2.0))
        refl = phase.reflections(dmin)
        f2 = phase.structure_factor_sq(refl.hkl)
        tth = two_theta_deg_from_d(refl.d_A, wavelength_A)
        area = refl.multiplicity * f2 * lorentz_factor(tth)
        keep = np.isfinite(tth) & (area > 1e-6 * np.nanmax(area))
        return tth[keep], area[keep]
    # Any other pyFAI calibrant: positions only, equal areas.
    from insitu_xrd.reduction.calibrate import resolve_calibrant  # lazy: same layer, avoid cycle at import

    cal = resolve_calibrant(calibrant, wavelength_A)
    tth = np.degrees(np.asarray([t for t in cal.get_2th() if t is not None], dtype=float))
    tth = tth[tth <= tth_max_deg]
    return tth, np.ones_like(tth)


def render_calibrant_image(
    calibrant: str | Phase,
    geometry: AzimuthalIntegrator | Mapping[str, float] | str | Path,
    wavelength_A: float,
    detector: str | pyFAI.detectors.Detector = "Perkin",
    binning: int = 1,
    peak_fwhm_deg: float | None = None,
    peak_eta: float = 0.3,
    profile: Caglioti = Caglioti(),
    peak_counts: float = 20000.0,
    background_counts: float = 300.0,
    polarization_factor: float = 0.99,
    oversampling: int = 2,
    seed: int | None = 0,
) -> np.ndarray:
    """Render a Poisson-noisy 2D powder image of a calibrant.

    Parameters
    ----------
    calibrant: a built-in template name ("CeO2", "Ni", "LaB6", "Si", "Al"; realistic intensities
        from the structure) or any pyFAI calibrant name (equal ring intensities), or a core
        ``Phase`` (its cell and structure).
    geometry: an AzimuthalIntegrator (its dist/poni/rot are used, its detector is replaced by
        ``detector``), a PONI file path, or a mapping with pyFAI keys dist, poni1, poni2 (m),
        rot1, rot2, rot3 (rad).
    wavelength_A: X-ray wavelength (A).
    detector: pyFAI detector name or object; binning >= 1 bins its pixels (smaller test images).
    peak_fwhm_deg / peak_eta: a constant pseudo-Voigt FWHM (deg 2theta) and mixing; when
        peak_fwhm_deg is None the FWHM and eta follow ``profile`` (GSAS-II U,V,W,X,Y).
    peak_counts: counts per pixel at the maximum of the strongest ring (before the
        solid-angle/polarization factors, which are ~1 near the beam).
    background_counts: mean level (counts/pixel) of the smooth background.
    polarization_factor: horizontal linear polarization (0.99 at a synchrotron).
    oversampling: each pixel averages the pattern over oversampling x oversampling sub-pixel
        positions (pixel-area broadening); 1 samples pixel centres only (faster).
    seed: seed of the Poisson noise; None gives the noise-free expectation (float counts rounded).

    Returns
    -------
    int32 array of the detector's (binned) shape.
    """
    if wavelength_A <= 0:
        raise InsituXRDError(f"wavelength_A must be positive, got {wavelength_A}")
    det = _make_detector(detector, binning)
    ai = _geometry(geometry, det)
    ai.detector = det
    ai.wavelength = wavelength_A * 1e-10
    shape = det.shape
    tth_px = np.degrees(ai.center_array(shape, unit="2th_rad", scale=False))
    tth_hi = float(tth_px.max()) + 0.5

    grid = np.arange(0.0, tth_hi + 0.5, 0.0005)
    ring_tth, ring_area = _ring_table(calibrant, wavelength_A, tth_hi + 0.3)
    if ring_tth.size == 0:
        raise InsituXRDError(f"calibrant {calibrant!r} has no ring below 2theta = {tth_hi:.2f} deg at {wavelength_A} A")
    if peak_fwhm_deg is None:
        fwhm, eta = peak_fwhm_eta(ring_tth, wavelength_A, profile.U, profile.V, profile.W, profile.X, profile.Y)
    else:
        fwhm = np.full_like(ring_tth, float(peak_fwhm_deg))
        eta = np.full_like(ring_tth, float(peak_eta))
    peaks = np.zeros_like(grid)
    for t, a, w, e in zip(ring_tth, ring_area, fwhm, eta):
        lo, hi = np.searchsorted(grid, [t - 40 * w, t + 40 * w])
        peaks[lo:hi] += a * pseudo_voigt(grid[lo:hi], t, w, e)
    peaks *= peak_counts / peaks.max()
    # Smooth isotropic background: air/sample scattering falling with angle plus a flat floor.
    iso_bg = background_counts * (0.6 + 0.8 * np.exp(-grid / max(tth_hi / 2.0, 1e-3)))
    pattern = peaks + iso_bg

    if oversampling <= 1:
        mapped = np.interp(tth_px, grid, pattern)
    else:
        # Average over an n x n grid of sub-pixel positions: a pixel integrates over its area, which
        # broadens rings by up to one pixel width (as on a real flat panel).
        offsets = (np.arange(oversampling) + 0.5) / oversampling - 0.5
        rows, cols = np.indices(shape, dtype=np.float64)
        mapped = np.zeros(shape)
        for o1 in offsets:
            for o2 in offsets:
                mapped += np.interp(np.degrees(ai.tth(rows + o1, cols + o2)), grid, pattern)
        mapped /= oversampling**2
    img = mapped * ai.solidAngleArray(shape) * ai.polarization(shape, polarization_factor, with_checksum=False)
    # Gentle anisotropic background (uneven sample thickness / air path): a low-order 2D gradient.
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    gradient = 1.0 + 0.08 * (rows / shape[0] - 0.5) - 0.05 * (cols / shape[1] - 0.5)
    expected = np.clip(img + background_counts * 0.2 * (gradient - 1.0), 0.0, None)
    if seed is None:
        return np.rint(expected).astype(np.int32)
    rng = np.random.default_rng(seed)
    return rng.poisson(expected).astype(np.int32)
