"""Diagnostic figure of a geometry calibration (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from insitu_xrd.errors import InsituXRDError  # noqa: E402
from insitu_xrd.reduction.calibrate import CalibrationResult  # noqa: E402

__all__ = ["plot_calibration"]


def plot_calibration(image: np.ndarray, result: CalibrationResult, path: str | Path, dpi: int = 110) -> Path:
    """Write a PNG: the image (log scale) with the fitted rings and control points overlaid,
    the residual (mdeg 2theta) per ring (mean and rms), and the residual of every point versus
    azimuth. Returns the path."""
    path = Path(path)
    img = np.asarray(image, dtype=float)
    shape = img.shape
    ai = result.ai
    tth = np.degrees(ai.center_array(shape, unit="2th_rad", scale=False))
    chi = np.degrees(ai.center_array(shape, unit="chi_rad", scale=False))

    fig = plt.figure(figsize=(13, 6.5), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.15, 1.0])
    ax_img = fig.add_subplot(gs[:, 0])
    ax_ring = fig.add_subplot(gs[0, 1])
    ax_chi = fig.add_subplot(gs[1, 1])

    shown = np.where(result.mask if result.mask is not None else img < 0, np.nan, img)
    positive = shown[np.isfinite(shown) & (shown > 0)]
    lo, hi = (np.percentile(positive, [5, 99.8]) if positive.size else (1, 10))
    ax_img.imshow(shown, cmap="gray_r", norm=LogNorm(vmin=max(lo, 1e-3), vmax=max(hi, lo * 10)), origin="upper",
                  interpolation="nearest")
    used = sorted({r.ring_index for r in result.ring_residuals})
    levels = np.sort(result.ring_two_theta_deg[used]) if used else []
    if len(levels):
        ax_img.contour(tth, levels=levels, colors="tab:red", linewidths=0.5, alpha=0.8)
    pts = result.control_points
    if len(pts):
        ax_img.scatter(pts[:, 1], pts[:, 0], s=0.6, c="tab:cyan", linewidths=0, alpha=0.6)
    cx, cy = result.center_px
    ax_img.plot([cx - 0.5], [cy - 0.5], "+", color="tab:orange", ms=14, mew=1.5)
    ax_img.set_xlim(-0.5, shape[1] - 0.5)
    ax_img.set_ylim(shape[0] - 0.5, -0.5)
    ax_img.set_title(
        f"{result.calibrant_name} {result.wavelength_A:.5g} A: distance {result.distance_mm:.3f} mm, "
        f"centre ({cx:.2f}, {cy:.2f}) px\ntilt {result.tilt_deg:.3f} deg @ {result.tilt_plane_rotation_deg:.1f} deg, "
        f"rms {result.rms_residual_mdeg:.3f} mdeg ({result.rms_residual_px:.3f} px)",
        fontsize=9,
    )
    ax_img.set_xlabel("column (px)")
    ax_img.set_ylabel("row (px)")

    rr = result.ring_residuals
    if rr:
        x = np.array([r.two_theta_deg for r in rr])
        ax_ring.errorbar(x, [r.mean_mdeg for r in rr], yerr=[r.rms_mdeg for r in rr], fmt="o", ms=3, capsize=2,
                         label="mean +/- rms per ring")
        ax_ring.axhline(0.0, color="k", lw=0.6)
        ax2 = ax_ring.twinx()
        ax2.bar(x, [r.n_points for r in rr], width=(x.max() - x.min() + 1e-3) / max(len(rr), 1) * 0.4, alpha=0.2,
                color="tab:gray")
        ax2.set_ylabel("control points", color="tab:gray")
        ax_ring.legend(loc="upper left", fontsize=8)
    ax_ring.set_xlabel("ring 2theta (deg)")
    ax_ring.set_ylabel("2theta residual (mdeg)")

    if len(pts):
        chi_pts = chi[np.clip(np.rint(pts[:, 0]).astype(int), 0, shape[0] - 1), np.clip(np.rint(pts[:, 1]).astype(int), 0, shape[1] - 1)]
        sc = ax_chi.scatter(chi_pts, result.point_residuals_mdeg, c=result.ring_two_theta_deg[pts[:, 2].astype(int)],
                            s=2, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax_chi, label="ring 2theta (deg)")
        ax_chi.axhline(0.0, color="k", lw=0.6)
    ax_chi.set_xlabel("azimuth chi (deg)")
    ax_chi.set_ylabel("point residual (mdeg)")
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise InsituXRDError(f"cannot write diagnostic plot {path}: {exc}") from None
    finally:
        plt.close(fig)
    return path
