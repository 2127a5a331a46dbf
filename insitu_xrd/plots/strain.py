"""Figure of the strain curves: eps_a and eps_c versus x (or SoC) with esd bands."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["plot_strain"]

_LABEL = {"x_li": "x in Li$_x$TMO$_2$", "soc": "state of charge", "capacity_mAh_g": "capacity (mAh/g)",
          "voltage_V": "voltage (V)", "time_s": "time (s)", "frame": "frame"}


def plot_strain(strain: xr.Dataset, path: str | Path, dpi: int = 150) -> Path:
    """Two panels (eps_a, eps_c, in %) versus the strain Dataset's abscissa.

    Points: per-phase strains with esd error bars (frames used for the curve); line and band: the
    smooth phase-weighted curve +/- its esd. x_li decreases on charge, so its axis is inverted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    versus = str(strain.attrs.get("versus", "x_li"))
    use = np.asarray(strain["used_in_curve"].values, dtype=bool)
    if versus == "frame":
        xf = np.asarray(strain["frame"].values, dtype=float)
    else:
        xf = np.asarray(strain[versus].values, dtype=float)
    xg = strain["x"].values
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True, constrained_layout=True)
    markers = "osd^v<>"
    for ax, k, name in ((axes[0], "a", "$\\varepsilon_a$"), (axes[1], "c", "$\\varepsilon_c$")):
        for i, p in enumerate(strain["phase"].values):
            e = strain[f"eps_{k}"].values[use, i] * 100
            s = strain[f"eps_{k}_esd"].values[use, i] * 100
            good = np.isfinite(e)
            if good.any():
                ax.errorbar(xf[use][good], e[good], yerr=np.nan_to_num(s[good]), fmt=markers[i % len(markers)],
                            ms=3, lw=0.8, alpha=0.7, label=f"{p}")
        avg = strain[f"eps_{k}_avg"].values[use] * 100
        ax.plot(xf[use], avg, "x", color="k", ms=4, lw=0, label="phase-weighted")
        y = strain[f"curve_eps_{k}"].values * 100
        sy = strain[f"curve_eps_{k}_esd"].values * 100
        ax.plot(xg, y, "k-", lw=1.4, label="phase-weighted, smoothed")
        if np.any(np.isfinite(sy)):
            ax.fill_between(xg, y - sy, y + sy, color="k", alpha=0.2, lw=0, label="$\\pm$1 esd")
        ax.set_ylabel(f"{name} (%)")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.legend(fontsize=8, loc="best")
    axes[1].set_xlabel(_LABEL.get(versus, versus))
    if versus == "x_li":
        axes[1].invert_xaxis()
    axes[0].set_title(f"lattice strain vs {versus}\nreference: {strain.attrs.get('reference_description', '?')}", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
