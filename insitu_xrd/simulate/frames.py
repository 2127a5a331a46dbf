"""2D detector frames from 1D patterns (the inverse of azimuthal integration), with known geometry.

A pixel's expected count is I(2theta_pixel) x solid-angle factor x polarization factor, exactly
what pyFAI's `AzimuthalIntegrator.calcfrom1d` computes; the renderer precomputes the
per-pixel 2theta (optionally at n x n sub-pixel positions, which adds the pixel-area broadening
of a real flat panel) and the two factors once, so that a 2048 x 2048 frame costs a gather and a
Poisson draw. With ``oversampling=1`` it equals ``calcfrom1d`` (checked in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import fabio
import numpy as np
import pyFAI.detectors
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from insitu_xrd.errors import InsituXRDError

__all__ = ["GeometrySpec", "detector_for", "make_integrator", "FrameRenderer", "write_frame_tiff"]


@dataclass(frozen=True)
class GeometrySpec:
    """Fit2D-style geometry on the *unbinned* detector: direct-beam distance (mm), beam centre
    (x = column, y = row, unbinned pixels), tilt and tilt-plane rotation (deg)."""

    distance_mm: float = 998.6
    center_x_px: float = 1027.4
    center_y_px: float = 1019.2
    tilt_deg: float = 0.30
    tilt_plane_rotation_deg: float = 35.0

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def detector_for(binning: int = 1, name: str = "Perkin") -> pyFAI.detectors.Detector:
    """The pyFAI detector, binned `binning` x `binning` (a generic detector with larger pixels)."""
    try:
        det = pyFAI.detectors.detector_factory(name)
    except Exception as exc:
        raise InsituXRDError(f"unknown detector {name!r}: {exc}") from None
    if binning == 1:
        return det
    if binning < 1 or det.shape[0] % binning or det.shape[1] % binning:
        raise InsituXRDError(f"binning {binning} does not divide the {name} detector shape {det.shape}")
    return pyFAI.detectors.Detector(
        pixel1=det.pixel1 * binning, pixel2=det.pixel2 * binning,
        max_shape=(det.shape[0] // binning, det.shape[1] // binning), orientation=det.orientation,
    )


def make_integrator(geometry: GeometrySpec, wavelength_A: float, binning: int = 1, detector: str = "Perkin") -> AzimuthalIntegrator:
    """AzimuthalIntegrator for a geometry defined on the unbinned detector (PONI is in metres, so
    the same physical geometry holds for every binning)."""
    full = AzimuthalIntegrator(detector=detector_for(1, detector))
    full.setFit2D(geometry.distance_mm, geometry.center_x_px, geometry.center_y_px,
                  tilt=geometry.tilt_deg, tiltPlanRotation=geometry.tilt_plane_rotation_deg)
    ai = AzimuthalIntegrator(dist=full.dist, poni1=full.poni1, poni2=full.poni2, rot1=full.rot1, rot2=full.rot2,
                             rot3=full.rot3, detector=detector_for(binning, detector), wavelength=wavelength_A * 1e-10)
    return ai


class FrameRenderer:
    """Maps 1D patterns I(2theta in deg) onto the detector of an integrator.

    polarization_factor: horizontal linear polarization (0.99); oversampling: n x n sub-pixel
    positions averaged per pixel (1 = pixel centres, as calcfrom1d).
    """

    def __init__(self, ai: AzimuthalIntegrator, polarization_factor: float = 0.99, oversampling: int = 2) -> None:
        self.ai = ai
        self.shape = tuple(ai.detector.shape)
        self.polarization_factor = polarization_factor
        self.oversampling = max(int(oversampling), 1)
        rows, cols = np.indices(self.shape, dtype=np.float64)
        offsets = (np.arange(self.oversampling) + 0.5) / self.oversampling - 0.5 if self.oversampling > 1 else np.zeros(1)
        self._tth_sub = [np.degrees(ai.tth(rows + o1, cols + o2)) for o1 in offsets for o2 in offsets]
        self.tth_max_deg = float(max(t.max() for t in self._tth_sub))
        self.factor = (ai.solidAngleArray(self.shape) * ai.polarization(self.shape, polarization_factor, with_checksum=False)).astype(np.float64)
        self._grid_key: tuple[float, float, int] | None = None

    def _prepare(self, grid: np.ndarray) -> None:
        # Uniform grids: precompute gather indices and weights once per grid (linear interpolation).
        key = (float(grid[0]), float(grid[-1]), int(grid.size))
        if key == self._grid_key:
            return
        step = (grid[-1] - grid[0]) / (grid.size - 1)
        if not np.allclose(np.diff(grid), step, rtol=1e-6, atol=1e-9):
            raise InsituXRDError("FrameRenderer needs a uniform 2theta grid")
        if grid[0] > min(t.min() for t in self._tth_sub) or grid[-1] < self.tth_max_deg:
            raise InsituXRDError(f"the 1D grid {grid[0]:.3f}-{grid[-1]:.3f} deg does not cover the detector "
                                 f"(2theta up to {self.tth_max_deg:.3f} deg)")
        self._idx, self._w = [], []
        for t in self._tth_sub:
            f = (t - grid[0]) / step
            i0 = np.clip(np.floor(f).astype(np.int32), 0, grid.size - 2)
            self._idx.append(i0)
            self._w.append((f - i0).astype(np.float32))
        self._grid_key = key

    def expected(self, two_theta_deg: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """Expected counts per pixel (float) for the pattern on a uniform grid (deg)."""
        grid = np.asarray(two_theta_deg, dtype=float)
        y = np.asarray(intensity, dtype=float)
        self._prepare(grid)
        acc = np.zeros(self.shape)
        for i0, w in zip(self._idx, self._w):
            acc += y[i0] * (1.0 - w) + y[i0 + 1] * w
        acc /= len(self._idx)
        return acc * self.factor

    def render(self, two_theta_deg: np.ndarray, intensity: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Poisson-sampled int32 frame (rng None: the rounded expectation)."""
        lam = np.clip(self.expected(two_theta_deg, intensity), 0.0, None)
        if rng is None:
            return np.rint(lam).astype(np.int32)
        return rng.poisson(lam).astype(np.int32)


def write_frame_tiff(path: str | Path, data: np.ndarray, header: Mapping[str, Any]) -> Path:
    """Write an int32 TIFF with fabio; header keys go to the ImageDescription as key=value lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdr = {str(k): str(v) for k, v in header.items()}
    tmp = path.with_name("." + path.name + ".partial")  # not matched by "*.tif" globs
    fabio.tifimage.TifImage(data=np.ascontiguousarray(data, dtype=np.int32), header=hdr).write(str(tmp))
    tmp.replace(path)
    return path
