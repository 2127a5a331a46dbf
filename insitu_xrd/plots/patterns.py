"""Figure of a pattern series versus time: intensity map (2theta or q vs time) + selected patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

from insitu_xrd.io.patterns import ok_frames, radial_name  # noqa: E402

__all__ = ["plot_patterns_map"]

_AXIS_LABEL = {"2th_deg": "2$\\theta$ (deg)", "q_A^-1": "q (1/$\\AA$)"}


def plot_patterns_map(
    ds: Any,
    path: str | Path,
    radial_range: tuple[float, float] | None = None,
    log: bool = True,
    versus: str = "time_s",
    overlay: Sequence[Any] | None = None,
    overlay_label: str = "",
    n_traces: int = 4,
    dpi: int = 150,
    title: str | None = None,
) -> Path:
    """Save a two-panel figure of a Patterns Dataset.

    Top: intensity map, radial axis (2theta deg or q 1/A) horizontal, time (h) — or frame index if
    no frame has a time — vertical, only frames with status "ok"; colour in log scale (default)
    clipped to the 1st-99.9th percentile. Bottom: ``n_traces`` patterns evenly spread through the
    series. Optional ``overlay``: a 1D per-frame quantity (e.g. cell voltage, same length as the
    ok frames) drawn on a twin axis beside the map.

    Args:
        ds: Patterns Dataset (see :mod:`insitu_xrd.io.patterns`).
        path: output image (png/pdf/svg).
        radial_range: (lo, hi) zoom in the dataset's radial unit.
        log: log colour scale.
        versus: per-frame coordinate for the vertical axis ("time_s" or "frame").
        overlay / overlay_label: optional per-frame curve and its label.
        n_traces: patterns in the lower panel.

    Returns:
        the written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unit = ds.attrs.get("unit", "2th_deg")
    rname = radial_name(unit)
    good = ok_frames(ds)
    x = np.asarray(good[rname].values, dtype=float)
    z = np.asarray(good["intensity"].values, dtype=float)
    if radial_range is not None:
        sel = (x >= radial_range[0]) & (x <= radial_range[1])
        x, z = x[sel], z[:, sel]
    t = np.asarray(good["time_s"].values, dtype=float) if versus == "time_s" else np.arange(good.sizes["frame"], dtype=float)
    if versus == "time_s" and (t.size == 0 or not np.all(np.isfinite(t))):
        t, ylabel = np.arange(good.sizes["frame"], dtype=float), "frame"
    elif versus == "time_s":
        t, ylabel = t / 3600.0, "time (h)"
    else:
        ylabel = "frame"

    fig, (ax_map, ax_tr) = plt.subplots(2, 1, figsize=(7.0, 7.5), height_ratios=[3, 2], constrained_layout=True)
    if z.size:
        finite = z[np.isfinite(z)]
        lo, hi = (np.percentile(finite, [1, 99.9]) if finite.size else (0.0, 1.0))
        if log:
            lo = max(lo, hi * 1e-4, 1e-12)
            norm = LogNorm(vmin=lo, vmax=max(hi, lo * 10))
            zplot = np.where(z > lo, z, lo)
        else:
            norm = Normalize(vmin=lo, vmax=hi)
            zplot = z
        if t.size > 1:
            mesh = ax_map.pcolormesh(x, t, zplot, norm=norm, shading="nearest", cmap="viridis", rasterized=True)
        else:
            mesh = ax_map.imshow(zplot, aspect="auto", norm=norm, extent=(x[0], x[-1], -0.5, 0.5), cmap="viridis")
        fig.colorbar(mesh, ax=ax_map, label="intensity (counts/pixel)")
        if overlay is not None and len(overlay) == t.size:
            ax2 = ax_map.twiny()
            ax2.plot(np.asarray(overlay, dtype=float), t, color="w", lw=1.0)
            ax2.set_xlabel(overlay_label)
        idx = np.unique(np.linspace(0, z.shape[0] - 1, min(n_traces, z.shape[0])).round().astype(int))
        cmap = plt.get_cmap("plasma")
        for k, i in enumerate(idx):
            lab = f"{good['frame_name'].values[i]}"
            if versus == "time_s" and ylabel == "time (h)":
                lab += f"  t = {t[i]:.2f} h"
            ax_tr.plot(x, z[i], lw=0.8, color=cmap(k / max(1, len(idx) - 1) * 0.85), label=lab)
        ax_tr.legend(fontsize=7, loc="upper right")
    else:
        ax_map.text(0.5, 0.5, "no frame with status ok", ha="center", va="center", transform=ax_map.transAxes)
    n_bad = ds.sizes["frame"] - good.sizes["frame"]
    ax_map.set_ylabel(ylabel)
    ax_map.set_title(title or f"{good.sizes['frame']} patterns, $\\lambda$ = {float(ds.attrs.get('wavelength_A', np.nan)):.4f} $\\AA$"
                     + (f" ({n_bad} failed frames not shown)" if n_bad else ""), fontsize=10)
    ax_tr.set_xlabel(_AXIS_LABEL.get(unit, rname))
    ax_tr.set_ylabel("intensity")
    if log:
        ax_tr.set_yscale("log")
    ax_tr.set_xlim(ax_map.get_xlim())
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
