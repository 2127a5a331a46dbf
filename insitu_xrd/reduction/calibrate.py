"""Automatic detector-geometry calibration from a calibrant image (no GUI).

Pipeline (`calibrate_image`):

1. Mask: user mask | pixels < 0 (module gaps, dead pixels) | non-finite | the detector's own mask.
2. Beam centre, coarse: a powder image is point-symmetric about the ring centre, so the
   self-convolution of the high-passed image peaks at twice the centre (one FFT). With a
   ``center_px`` guess the peak is searched within ``center_search_px`` of it; without one, over
   the whole detector. The centre is then polished on a 0.25 px grid by maximising the sharpness of
   the radial profile (fraction of the high-passed image variance explained by radius).
3. Distance, coarse: the radial profile about that centre is matched to the calibrant's ring radii
   r_k = D tan(2theta_k) over a grid of sample-detector distances D (+/-25 % of the guess, or
   20 mm-5 m without one). The best few distances are kept as starting points.
4. pyFAI refinement: ``SingleGeometry.extract_cp`` picks control points on the rings (massif peak
   search) and ``GeometryRefinement.refine3`` fits dist, poni1, poni2, rot1, rot2 (rot3 fixed at 0:
   ring positions do not determine it; wavelength fixed). Each pass refines twice, the second
   time without outlier points (> 5 robust sigma); passes use the first 6, then 15, then all
   separable rings as the geometry improves, and the all-ring pass is repeated once only if it
   moved the rings by more than a tenth of their FWHM.
   A start whose final rms residual exceeds ``max_rms_px`` pixels is rejected and the next
   distance candidate is tried.

The calibrant ring list: for Ni, CeO2, LaB6, Si and Al the rings are generated from the cubic cell
(pyFAI's bundled Ni file lists only 5 reflections); any other name is taken from pyFAI's calibrant
library, and a path to a pyFAI ``.D`` file (d-spacings in A) is accepted too.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyFAI.detectors
from pyFAI.calibrant import CALIBRANT_FACTORY, Calibrant, Cell
from pyFAI.goniometer import SingleGeometry
from pyFAI.integrator.azimuthal import AzimuthalIntegrator
from scipy import ndimage

from insitu_xrd.core.profiles import half_maximum_span
from insitu_xrd.errors import InsituXRDError

__all__ = [
    "CUBIC_CALIBRANTS",
    "RingResidual",
    "CalibrationResult",
    "resolve_calibrant",
    "resolve_detector",
    "calibrate_image",
    "max_two_theta_difference_deg",
]

logger = logging.getLogger(__name__)

#: Cubic calibrants whose ring lists are generated from the cell: name -> (lattice type, a in A).
#: "diamond" applies the Fd-3m extinctions (Si). Values: NIST SRM 674b CeO2, SRM 660c LaB6,
#: SRM 640d Si, Ni and Al at room temperature (the same as pyFAI's calibrant files).
CUBIC_CALIBRANTS: dict[str, tuple[str, float]] = {
    "CeO2": ("F", 5.411651),
    "Ni": ("F", 3.5238),
    "LaB6": ("P", 4.156826),
    "Si": ("diamond", 5.431179),
    "Al": ("F", 4.0495),
}

_DEFAULT_DMIN_A = 0.25


def _cell_calibrant(lattice: str, a_A: float, dmin_A: float) -> Calibrant:
    cell = Cell.diamond(a_A) if lattice == "diamond" else Cell.cubic(a_A, lattice_type=lattice)
    return cell.to_calibrant(dmin=dmin_A)


def allowed_calibrant_names() -> list[str]:
    """Built-in cubic calibrants first, then every name in pyFAI's calibrant library."""
    extra = sorted((n for n in CALIBRANT_FACTORY.keys() if n.lower() not in {k.lower() for k in CUBIC_CALIBRANTS}), key=str.lower)
    return list(CUBIC_CALIBRANTS) + extra


def resolve_calibrant(calibrant: str | Path | Calibrant, wavelength_A: float, dmin_A: float = _DEFAULT_DMIN_A) -> Calibrant:
    """A pyFAI Calibrant with the given wavelength and unique, decreasing d-spacings.

    ``calibrant`` is a Calibrant, a path to a pyFAI ``.D`` file, a built-in cubic name
    (``CUBIC_CALIBRANTS``, rings from the cell down to ``dmin_A``) or any pyFAI calibrant name
    (case-insensitive).
    """
    if wavelength_A is None or not np.isfinite(wavelength_A) or wavelength_A <= 0:
        raise InsituXRDError(f"wavelength_A must be a positive number of angstrom, got {wavelength_A}")
    if isinstance(calibrant, Calibrant):
        cal = calibrant
    else:
        text = str(calibrant)
        path = Path(text)
        by_lower = {k.lower(): k for k in CUBIC_CALIBRANTS}
        lib_lower = {k.lower(): k for k in CALIBRANT_FACTORY.keys()}
        if path.suffix.lower() in {".d", ".txt"} or path.is_file():
            if not path.is_file():
                raise InsituXRDError(f"calibrant file {path} does not exist")
            try:
                cal = Calibrant(filename=str(path))
                _ = cal.dspacing
            except Exception as exc:
                raise InsituXRDError(f"cannot read calibrant file {path}: {exc}") from None
        elif text.lower() in by_lower:
            lattice, a_A = CUBIC_CALIBRANTS[by_lower[text.lower()]]
            cal = _cell_calibrant(lattice, a_A, dmin_A)
        elif text.lower() in lib_lower:
            cal = CALIBRANT_FACTORY(lib_lower[text.lower()])
        else:
            raise InsituXRDError(
                f"unknown calibrant {text!r}; allowed: {', '.join(allowed_calibrant_names())}, "
                "or a path to a pyFAI .D file of d-spacings (A)"
            )
    d = np.asarray([x for x in cal.dspacing if x is not None and x > 0], dtype=float)
    d = np.unique(np.round(d, 7))[::-1]  # unique and decreasing: ring index == order of 2theta
    if d.size == 0:
        raise InsituXRDError(f"calibrant {calibrant!r} has no d-spacing")
    out = Calibrant(dspacing=list(d), wavelength=wavelength_A * 1e-10)
    return out


def _detector_names() -> list[str]:
    return sorted({k for k in pyFAI.detectors.ALL_DETECTORS})


def resolve_detector(detector: str | pyFAI.detectors.Detector) -> pyFAI.detectors.Detector:
    """A fresh pyFAI detector from its name (any pyFAI detector name, case-insensitive)."""
    if isinstance(detector, pyFAI.detectors.Detector):
        return copy.deepcopy(detector)  # the calibration sets its mask; leave the caller's alone
    det_logger = logging.getLogger("pyFAI.detectors")
    level = det_logger.level
    det_logger.setLevel(logging.CRITICAL)  # pyFAI logs the whole name table on failure; we raise one line
    try:
        return pyFAI.detectors.detector_factory(str(detector))
    except Exception:
        common = ["Perkin", "Pilatus1M", "Pilatus2M", "Pilatus6M", "Eiger2_4M", "Eiger2_9M", "Mar345", "Rayonix"]
        raise InsituXRDError(
            f"unknown detector {detector!r}; allowed: any pyFAI detector name, e.g. {', '.join(common)} "
            f"(full list: {', '.join(_detector_names())})"
        ) from None
    finally:
        det_logger.setLevel(level)


@dataclass(frozen=True)
class RingResidual:
    """Fit residual of one calibrant ring."""

    ring_index: int  # index in the calibrant's ring list (increasing 2theta)
    d_A: float
    two_theta_deg: float
    n_points: int
    mean_mdeg: float  # mean of 2theta_observed - 2theta_calibrant
    rms_mdeg: float


@dataclass
class CalibrationResult:
    """A refined detector geometry and its diagnostics.

    ``center_px`` is the direct-beam centre (x = column, y = row, pixels; where the beam hits the
    detector, i.e. the PONI corrected for the tilts, as pyFAI's ``getFit2D``); ``distance_mm`` is the
    sample-to-beam-centre distance along the beam (Fit2D "direct distance"). ``poni_*`` and
    ``rot*`` are pyFAI's own parameters.
    """

    ai: AzimuthalIntegrator
    calibrant_name: str
    wavelength_A: float
    distance_mm: float
    center_px: tuple[float, float]
    tilt_deg: float
    tilt_plane_rotation_deg: float
    poni_distance_m: float
    poni1_m: float
    poni2_m: float
    rot1_rad: float
    rot2_rad: float
    rot3_rad: float
    rms_residual_mdeg: float
    rms_residual_px: float
    ring_residuals: list[RingResidual]
    control_points: np.ndarray  # (n, 3): row, column (pixels), ring index
    point_residuals_mdeg: np.ndarray  # (n,)
    ring_two_theta_deg: np.ndarray  # all calibrant rings (deg), index = ring index
    mask: np.ndarray | None = None
    coarse: dict = field(default_factory=dict)  # coarse-search diagnostics
    elapsed_s: float = 0.0

    def poni_text(self) -> str:
        """PONI file content (pyFAI format, version 2 with detector and orientation)."""
        from pyFAI.io.ponifile import PoniFile

        import io

        buf = io.StringIO()
        PoniFile(self.ai).write(buf)
        return buf.getvalue()

    def write_poni(self, path: str | Path) -> Path:
        """Write the geometry as a PONI file (overwrites)."""
        path = Path(path)
        try:
            path.write_text(
                f"# insitu-xrd calibration from {self.calibrant_name}, {len(self.control_points)} control points, "
                f"rms {self.rms_residual_mdeg:.3f} mdeg\n" + self.poni_text()
            )
        except OSError as exc:
            raise InsituXRDError(f"cannot write PONI file {path}: {exc}") from None
        return path

    def summary(self) -> str:
        """Human-readable multi-line summary (units in every label)."""
        lines = [
            f"calibrant            {self.calibrant_name} at {self.wavelength_A:.6g} A",
            f"distance_mm          {self.distance_mm:.4f}   (sample to direct-beam centre)",
            f"beam_center_px       x={self.center_px[0]:.3f}  y={self.center_px[1]:.3f}",
            f"tilt_deg             {self.tilt_deg:.4f}   tilt_plane_rotation_deg {self.tilt_plane_rotation_deg:.2f}",
            f"pyFAI                dist_m={self.poni_distance_m:.6f} poni1_m={self.poni1_m:.6f} poni2_m={self.poni2_m:.6f} "
            f"rot1_rad={self.rot1_rad:.6f} rot2_rad={self.rot2_rad:.6f} rot3_rad={self.rot3_rad:.6f}",
            f"rms_residual         {self.rms_residual_mdeg:.4f} mdeg 2theta = {self.rms_residual_px:.3f} px "
            f"({len(self.control_points)} points on {len(self.ring_residuals)} rings)",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# coarse search


def _bin_image(img: np.ndarray, valid: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of valid pixels (b x b) and the validity of each block."""
    if b == 1:
        return np.where(valid, img, 0.0), valid.copy()
    ny, nx = img.shape[0] // b, img.shape[1] // b
    v = valid[: ny * b, : nx * b].reshape(ny, b, nx, b).sum(axis=(1, 3))
    s = np.where(valid, img, 0.0)[: ny * b, : nx * b].reshape(ny, b, nx, b).sum(axis=(1, 3))
    ok = v >= 0.5 * b * b
    return np.where(ok, s / np.maximum(v, 1), 0.0), ok


def _highpass(img: np.ndarray, valid: np.ndarray, sigma_px: float) -> np.ndarray:
    """Image minus its masked Gaussian smooth, zero on invalid pixels; scaled to unit variance."""
    w = valid.astype(float)
    num = ndimage.gaussian_filter(img * w, sigma_px, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma_px, mode="nearest")
    hp = np.where(valid, img - num / np.maximum(den, 1e-6), 0.0)
    # Clip hot pixels/spots so that single bright features cannot dominate the symmetry search.
    s = np.std(hp[valid]) if valid.any() else 1.0
    hp = np.clip(hp, -5 * s, 5 * s) / max(s, 1e-12)
    return hp


def _symmetry_centre(hp: np.ndarray, guess_rc: tuple[float, float] | None, radius: float | None) -> tuple[float, float]:
    """Centre (row, col) of point symmetry: argmax of the self-convolution, divided by two."""
    ny, nx = hp.shape
    fy, fx = 2 * ny, 2 * nx
    f = np.fft.rfft2(hp, s=(fy, fx))
    conv = np.fft.irfft2(f * f, s=(fy, fx))
    # conv[p] = sum_x hp[x] hp[p - x]: maximal for p = 2 * centre. Normalise by overlap so that
    # centres near the edge (small overlap) are not penalised, then restrict to enough overlap.
    v = (hp != 0).astype(float)
    fv = np.fft.rfft2(v, s=(fy, fx))
    overlap = np.fft.irfft2(fv * fv, s=(fy, fx))
    score = conv / np.sqrt(np.maximum(overlap, 1.0))
    score[overlap < 0.05 * v.sum()] = -np.inf
    if guess_rc is not None and radius is not None:
        pr, pc = np.mgrid[0:fy, 0:fx]
        far = (pr / 2.0 - guess_rc[0]) ** 2 + (pc / 2.0 - guess_rc[1]) ** 2 > radius**2
        score[far] = -np.inf
    p = np.unravel_index(np.argmax(score), score.shape)
    # parabolic sub-sample interpolation
    pos = []
    for axis in (0, 1):
        i = p[axis]
        lo = list(p)
        hi = list(p)
        lo[axis] = (i - 1) % score.shape[axis]
        hi[axis] = (i + 1) % score.shape[axis]
        a, b0, c = score[tuple(lo)], score[p], score[tuple(hi)]
        den = a - 2 * b0 + c
        off = 0.5 * (a - c) / den if np.isfinite(den) and den < 0 else 0.0
        pos.append((i + float(np.clip(off, -1, 1))) / 2.0)
    return pos[0], pos[1]


def _radial_sharpness(hp: np.ndarray, valid: np.ndarray, centre_rc: tuple[float, float], bin_px: float) -> float:
    rows, cols = np.nonzero(valid)
    vals = hp[rows, cols]
    r = np.hypot(rows - centre_rc[0], cols - centre_rc[1])
    idx = (r / bin_px).astype(np.int64)
    n = np.bincount(idx)
    s = np.bincount(idx, vals)
    return float(np.sum(s**2 / np.maximum(n, 1)) / max(np.sum(vals**2), 1e-12))


def _polish_centre(hp: np.ndarray, valid: np.ndarray, centre_rc: tuple[float, float], half_px: float, step_px: float) -> tuple[float, float]:
    """Grid search of the radial-profile sharpness around centre_rc (pixels of hp)."""
    best = (-np.inf, centre_rc)
    offs = np.arange(-half_px, half_px + 1e-9, step_px)
    # subsample pixels for speed: rings are long, a random third of pixels keeps the profile sharp
    sub = valid.copy()
    rng = np.random.default_rng(1)
    sub &= rng.random(valid.shape) < min(1.0, 4e5 / max(valid.sum(), 1))
    for dy in offs:
        for dx in offs:
            c = (centre_rc[0] + dy, centre_rc[1] + dx)
            s = _radial_sharpness(hp, sub, c, 0.5)
            if s > best[0]:
                best = (s, c)
    return best[1]


def _radial_profile(hp: np.ndarray, valid: np.ndarray, centre_rc: tuple[float, float], bin_px: float) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(valid)
    r = np.hypot(rows - centre_rc[0], cols - centre_rc[1])
    idx = (r / bin_px).astype(np.int64)
    n = np.bincount(idx)
    s = np.bincount(idx, hp[rows, cols])
    prof = np.where(n > 5, s / np.maximum(n, 1), 0.0)
    radius = (np.arange(prof.size) + 0.5) * bin_px
    return radius, prof


def _distance_candidates(
    radius_px: np.ndarray, profile: np.ndarray, tth_rad: np.ndarray, pixel_m: float,
    d_lo_m: float, d_hi_m: float, n_best: int = 4,
) -> list[float]:
    """Distances whose predicted ring radii best match the radial profile (best first)."""
    prof = (profile - profile.mean()) / max(profile.std(), 1e-12)
    r_max = radius_px[-1]
    dists = np.exp(np.arange(np.log(d_lo_m), np.log(d_hi_m), 2e-4))
    tan = np.tan(tth_rad)
    scores = np.full(dists.size, -np.inf)
    for i, d in enumerate(dists):
        r = d * tan / pixel_m
        r = r[(r > 5) & (r < r_max)]
        if r.size < 3:
            continue
        # mean z-score at the predicted radii, with a mild reward for explaining more rings
        scores[i] = np.interp(r, radius_px, prof).mean() * np.sqrt(min(r.size, 30))
    order = np.argsort(scores)[::-1]
    picked: list[float] = []
    for j in order:
        if not np.isfinite(scores[j]):
            break
        if all(abs(np.log(dists[j] / p)) > 0.01 for p in picked):
            picked.append(float(dists[j]))
        if len(picked) >= n_best:
            break
    return picked


def _estimate_fwhm_px(radius_px: np.ndarray, profile: np.ndarray, ring_radii_px: np.ndarray) -> float:
    """Median FWHM (pixels) of the clearest inner rings in a raw radial profile; NaN if none."""
    step = radius_px[1] - radius_px[0]
    widths = []
    inside = ring_radii_px[(ring_radii_px > 20) & (ring_radii_px < radius_px[-1] - 40)]
    for k, r in enumerate(inside[:10]):
        gaps = np.diff(inside)
        half_gap = 0.5 * min(gaps[k - 1] if k > 0 else np.inf, gaps[k] if k < len(gaps) else np.inf, 60.0)
        lo, hi = np.searchsorted(radius_px, [r - half_gap, r + half_gap])
        seg = profile[lo:hi]
        if seg.size < 8:
            continue
        bg = min(np.percentile(seg[: max(2, seg.size // 6)], 50), np.percentile(seg[-max(2, seg.size // 6):], 50))
        i0 = int(np.argmax(seg))
        height = seg[i0] - bg
        noise = np.std(np.diff(seg)) + 1e-12
        if height < 8 * noise or i0 in (0, seg.size - 1):
            continue
        half = bg + 0.5 * height
        left, right = half_maximum_span(seg, i0, half)
        if left == 0 or right == seg.size - 1:
            continue
        # linear interpolation of the two half-maximum crossings
        xl = left + (half - seg[left]) / (seg[left + 1] - seg[left])
        xr = right - (half - seg[right]) / (seg[right - 1] - seg[right])
        widths.append((xr - xl) * step)
    return float(np.median(widths)) if widths else float("nan")


# --------------------------------------------------------------------------------------------
# refinement


def _residuals_mdeg(ai: AzimuthalIntegrator, points: np.ndarray, ring_tth_rad: np.ndarray) -> np.ndarray:
    tth = ai.tth(points[:, 0], points[:, 1])
    return np.degrees(tth - ring_tth_rad[points[:, 2].astype(int)]) * 1e3


_GEOMETRY_KEYS = ("dist", "poni1", "poni2", "rot1", "rot2", "rot3")


def _max_tth_change_deg(params_a: tuple[float, ...], params_b: tuple[float, ...], det: pyFAI.detectors.Detector) -> float:
    """max |2theta_a - 2theta_b| (deg) over a 65 x 65 grid of pixel positions spanning the detector.

    The difference of two nearby geometries is smooth over the detector, so a coarse grid that
    includes the edges and corners finds its maximum to a small fraction of itself.
    """
    ny, nx = det.shape
    rows, cols = np.meshgrid(np.linspace(0.0, ny - 1.0, 65), np.linspace(0.0, nx - 1.0, 65), indexing="ij")
    tth = [AzimuthalIntegrator(detector=det, **dict(zip(_GEOMETRY_KEYS, p))).tth(rows, cols) for p in (params_a, params_b)]
    return float(np.degrees(np.max(np.abs(tth[0] - tth[1]))))


def _refine_from(
    image: np.ndarray, mask: np.ndarray, det: pyFAI.detectors.Detector, cal: Calibrant,
    distance_m: float, centre_xy: tuple[float, float], ring_tth_rad: np.ndarray, usable: np.ndarray,
    pts_per_deg: float, ring_fwhm_deg: float,
) -> tuple[AzimuthalIntegrator, np.ndarray, np.ndarray]:
    """extract_cp + refine3 cycles from a Fit2D-style start (no tilt); returns ai, points, residuals.

    Control points are picked on the first 6, then 15 rings, then on all usable rings; the
    all-ring pass is repeated once if its refinement moved the rings by more than a tenth of
    their FWHM anywhere on the detector (points picked with the older geometry may then sit on
    the wrong ring or miss one); otherwise a repeat picks the same points and is skipped.
    """
    start = AzimuthalIntegrator(detector=det, wavelength=cal.wavelength)
    start.setFit2D(distance_m * 1e3, centre_xy[0], centre_xy[1], tilt=0.0, tiltPlanRotation=0.0)
    sg = SingleGeometry("calib", image=image, calibrant=cal, detector=det, geometry=start)
    gr = sg.geometry_refinement
    fix = ["wavelength", "rot3"]
    good_pts = np.zeros((0, 3))
    # Widen the 2theta range in stages: a rough geometry predicts inner rings well first.
    r_edge = np.hypot(*det.shape)
    n_usable = int(np.count_nonzero(usable))
    stages = [min(6, n_usable), min(15, n_usable), n_usable, n_usable]
    all_ring_passes = 0
    for stage, n_rings in enumerate(stages):
        if n_rings < 2:
            break
        if n_rings == n_usable:
            if all_ring_passes >= 2:
                break
            all_ring_passes += 1
        extraction_params = tuple(float(getattr(gr, k)) for k in _GEOMETRY_KEYS)
        last_ring = int(np.flatnonzero(usable)[n_rings - 1])
        cp = sg.extract_cp(max_rings=last_ring + 1, pts_per_deg=pts_per_deg)
        pts = np.asarray(cp.getList(), dtype=float).reshape(-1, 3)
        pts = pts[usable[pts[:, 2].astype(int)]] if pts.size else pts
        if len(pts) < 10:
            continue
        ai_now = gr
        res = _residuals_mdeg(ai_now, pts, ring_tth_rad)
        # Points assigned to a wrong ring or a spot sit far from the bulk: robust rejection.
        med = np.median(res)
        mad = 1.4826 * np.median(np.abs(res - med))
        keep = np.abs(res - med) < max(5 * mad, 1e-3)
        if stage == 0:
            keep = np.abs(res - med) < max(5 * mad, 1e-3) if len(pts) > 50 else np.ones(len(pts), bool)
        gr.data = pts[keep]
        gr.refine3(fix=fix)
        res = _residuals_mdeg(gr, pts, ring_tth_rad)
        mad = 1.4826 * np.median(np.abs(res - np.median(res)))
        keep = np.abs(res - np.median(res)) < max(5 * mad, 1e-4)
        gr.data = pts[keep]
        gr.refine3(fix=fix)
        good_pts = pts[keep]
        if n_rings == n_usable:
            moved_deg = _max_tth_change_deg(extraction_params, tuple(float(getattr(gr, k)) for k in _GEOMETRY_KEYS), det)
            if moved_deg < 0.1 * ring_fwhm_deg:
                break
    ai = AzimuthalIntegrator(
        dist=gr.dist, poni1=gr.poni1, poni2=gr.poni2, rot1=gr.rot1, rot2=gr.rot2, rot3=gr.rot3,
        detector=det, wavelength=cal.wavelength,
    )
    res = _residuals_mdeg(ai, good_pts, ring_tth_rad) if len(good_pts) else np.zeros(0)
    return ai, good_pts, res


def calibrate_image(
    image: np.ndarray,
    calibrant: str | Path | Calibrant,
    wavelength_A: float,
    detector: str | pyFAI.detectors.Detector,
    distance_mm: float | None = None,
    center_px: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
    center_search_px: float = 60.0,
    min_ring_separation_px: float = 4.0,
    pts_per_deg: float = 1.0,
    max_rms_px: float = 0.6,
    progress: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Refine a detector geometry from one calibrant image, starting from a rough guess.

    Parameters
    ----------
    image: 2D calibrant image (any numeric dtype); pixels < 0 are treated as gaps and masked.
    calibrant: calibrant name (CeO2, Ni, LaB6, Si, Al from their cells; any pyFAI calibrant), a
        path to a pyFAI .D file, or a pyFAI Calibrant.
    wavelength_A: X-ray wavelength (A); kept fixed.
    detector: pyFAI detector name or object; its shape must equal the image's.
    distance_mm: rough sample-detector distance (mm); None searches 20 mm - 5 m.
    center_px: rough direct-beam centre (x = column, y = row, pixels); None searches the detector.
    mask: boolean array, True = ignore pixel.
    center_search_px: how far from ``center_px`` the centre search looks (pixels).
    min_ring_separation_px: rings closer than this (radially, pixels; at least 1.2 x the measured ring
        FWHM) to a neighbouring ring are not used for control points (their peaks overlap).
    pts_per_deg: control points per azimuthal degree and ring.
    max_rms_px: a refinement with a larger rms residual (pixels; at least 0.15 x the measured ring
        FWHM) is treated as not converged.
    progress: optional callback receiving short stage messages.

    Returns
    -------
    CalibrationResult. Raises InsituXRDError on bad input or when no start converges.
    """
    import time

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    cal = resolve_calibrant(calibrant, wavelength_A)
    det = resolve_detector(detector)
    img = np.asarray(image)
    if img.ndim != 2:
        raise InsituXRDError(f"calibrant image must be 2D, got shape {img.shape}")
    if det.shape is not None and tuple(det.shape) != img.shape:
        raise InsituXRDError(
            f"image shape {img.shape} does not match detector {det.name!r} shape {tuple(det.shape)}"
        )
    cal_name = str(calibrant) if not isinstance(calibrant, Calibrant) else (calibrant.name or "calibrant")
    img = img.astype(np.float64)
    bad = ~np.isfinite(img) | (img < 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise InsituXRDError(f"mask shape {mask.shape} does not match image shape {img.shape}")
        bad |= mask.astype(bool)
    if det.mask is not None and det.mask.shape == img.shape:
        bad |= det.mask.astype(bool)
    valid = ~bad
    if valid.sum() < 0.1 * img.size:
        raise InsituXRDError("fewer than 10 % of the image pixels are valid (mask, gaps, negative values)")
    work = np.where(valid, img, 0.0)
    det.mask = bad.astype(np.int8)
    pixel_m = float(np.sqrt(det.pixel1 * det.pixel2))

    # ---- coarse centre: symmetry of a binned, high-passed image
    say("searching the beam centre")
    b = max(1, int(round(max(img.shape) / 512)))
    binned, bvalid = _bin_image(img, valid, b)
    hp_b = _highpass(binned, bvalid, sigma_px=max(2.0, 8.0 / b))
    guess_rc = None if center_px is None else (center_px[1] / b - 0.5 + 0.5 / b, center_px[0] / b - 0.5 + 0.5 / b)
    c_rc_b = _symmetry_centre(hp_b, guess_rc, None if center_px is None else center_search_px / b)
    # back to full-resolution pixel indices (pixel-centre convention: index i <-> coordinate i+0.5)
    c_rc = ((c_rc_b[0] + 0.5) * b - 0.5, (c_rc_b[1] + 0.5) * b - 0.5)
    hp = _highpass(img, valid, sigma_px=6.0)
    c_rc = _polish_centre(hp, valid, c_rc, half_px=1.5 * b, step_px=max(0.5, b / 2))
    c_rc = _polish_centre(hp, valid, c_rc, half_px=0.75, step_px=0.25)
    centre_xy = (c_rc[1] + 0.5, c_rc[0] + 0.5)  # Fit2D/pyFAI pixel coordinates (corner = 0)

    # ---- coarse distance: ring radii against the radial profile
    say("searching the distance")
    radius_px, prof = _radial_profile(hp, valid, c_rc, 0.5)
    tth_all = np.asarray(cal.get_2th(), dtype=float)
    if distance_mm is not None:
        if not np.isfinite(distance_mm) or distance_mm <= 0:
            raise InsituXRDError(f"distance_mm must be positive, got {distance_mm}")
        d_lo, d_hi = 0.75 * distance_mm * 1e-3, 1.25 * distance_mm * 1e-3
    else:
        d_lo, d_hi = 0.02, 5.0
    candidates = _distance_candidates(radius_px, prof, tth_all[:60], pixel_m, d_lo, d_hi)
    if not candidates:
        raise InsituXRDError("no calibrant ring found in the image: check calibrant, wavelength and distance")
    # Ring width (px) sets which rings are separable and what rms residual means "converged":
    # broad rings give proportionally noisier control points.
    raw_radius, raw_prof = _radial_profile(img, valid, c_rc, 0.25)
    fwhm_px = _estimate_fwhm_px(raw_radius, raw_prof, candidates[0] * np.tan(tth_all) / pixel_m)
    if not np.isfinite(fwhm_px):
        fwhm_px = 3.0
    separation_px = max(min_ring_separation_px, 1.2 * fwhm_px)
    rms_limit_px = max(max_rms_px, 0.15 * fwhm_px)

    # ---- pyFAI refinement from the best candidates
    best: tuple[float, AzimuthalIntegrator, np.ndarray, np.ndarray] | None = None
    tried = []
    for dist_m in candidates[:3]:
        say(f"refining from distance {dist_m * 1e3:.1f} mm, centre ({centre_xy[0]:.1f}, {centre_xy[1]:.1f}) px")
        # rings usable at this distance: inside the detector and radially separated from neighbours
        r_ring = dist_m * np.tan(tth_all) / pixel_m
        gap = np.minimum(np.diff(r_ring, prepend=-np.inf), np.diff(r_ring, append=np.inf))
        r_max = np.hypot(max(centre_xy[0], img.shape[1] - centre_xy[0]), max(centre_xy[1], img.shape[0] - centre_xy[1]))
        usable = (gap > separation_px) & (r_ring < r_max) & (r_ring > 10)
        if usable.sum() < 3:
            tried.append(f"{dist_m * 1e3:.1f} mm: fewer than 3 separated rings")
            continue
        # pyFAI's peak picking (massif) shuffles candidate points with numpy's global generator:
        # seed it so that an image always gives the same geometry; restore the caller's state
        rng_state = np.random.get_state()
        np.random.seed(1)
        try:
            ring_fwhm_deg = float(np.degrees(fwhm_px * pixel_m / dist_m))
            ai, pts, res = _refine_from(work, bad, det, cal, dist_m, centre_xy, tth_all, usable, pts_per_deg,
                                        ring_fwhm_deg)
        except Exception as exc:  # pyFAI may fail on a hopeless start; try the next candidate
            tried.append(f"{dist_m * 1e3:.1f} mm: {exc}")
            continue
        finally:
            np.random.set_state(rng_state)
        if len(pts) < 20:
            tried.append(f"{dist_m * 1e3:.1f} mm: only {len(pts)} control points")
            continue
        rms_mdeg = float(np.sqrt(np.mean(res**2)))
        rms_px = np.radians(rms_mdeg * 1e-3) * ai.dist / pixel_m
        tried.append(f"{dist_m * 1e3:.1f} mm: rms {rms_px:.3f} px")
        if best is None or rms_px < best[0]:
            best = (rms_px, ai, pts, res)
        if rms_px < rms_limit_px:
            break
    if best is None or best[0] >= rms_limit_px:
        raise InsituXRDError(
            "calibration did not converge (" + "; ".join(tried) + "); give a better --distance-mm/--center-px or a mask"
        )
    rms_px, ai, pts, res = best
    f2d = ai.getFit2D()
    rings = []
    ring_idx = pts[:, 2].astype(int)
    d_all = np.asarray(cal.dspacing, dtype=float)
    for k in np.unique(ring_idx):
        r = res[ring_idx == k]
        rings.append(RingResidual(int(k), float(d_all[k]), float(np.degrees(tth_all[k])), int(r.size),
                                  float(r.mean()), float(np.sqrt(np.mean(r**2)))))
    return CalibrationResult(
        ai=ai, calibrant_name=cal_name, wavelength_A=float(wavelength_A),
        distance_mm=float(f2d["directDist"]), center_px=(float(f2d["centerX"]), float(f2d["centerY"])),
        tilt_deg=float(f2d["tilt"]), tilt_plane_rotation_deg=float(f2d["tiltPlanRotation"]),
        poni_distance_m=float(ai.dist), poni1_m=float(ai.poni1), poni2_m=float(ai.poni2),
        rot1_rad=float(ai.rot1), rot2_rad=float(ai.rot2), rot3_rad=float(ai.rot3),
        rms_residual_mdeg=float(np.sqrt(np.mean(res**2))), rms_residual_px=float(rms_px),
        ring_residuals=rings, control_points=pts, point_residuals_mdeg=res,
        ring_two_theta_deg=np.degrees(tth_all), mask=bad,
        coarse={"center_px": centre_xy, "distance_candidates_mm": [c * 1e3 for c in candidates], "tried": tried,
                "ring_fwhm_px": fwhm_px, "ring_separation_px": separation_px, "rms_limit_px": rms_limit_px},
        elapsed_s=time.perf_counter() - t0,
    )


def max_two_theta_difference_deg(ai_a: AzimuthalIntegrator, ai_b: AzimuthalIntegrator, shape: tuple[int, int] | None = None,
                                 mask: np.ndarray | None = None) -> float:
    """max |2theta_a - 2theta_b| (deg) over all (unmasked) pixels of the detector."""
    shape = shape or ai_a.detector.shape
    ta = ai_a.center_array(shape, unit="2th_rad", scale=False)
    tb = ai_b.center_array(shape, unit="2th_rad", scale=False)
    diff = np.abs(ta - tb)
    if mask is not None:
        diff = diff[~mask.astype(bool)]
    return float(np.degrees(diff.max()))
