"""Figures of an FEA result (:func:`insitu_xrd.core.fea.run_fea`, Agg backend).

The model is a quarter disc with symmetry cuts on x = 0 and y = 0; every map here is mirrored into
the four quadrants to show the full particle cross-section, as in Fig. 5 of Hou et al. (PNAS 2022).
Mirroring is exact for the scalar fields drawn (Li content, GB damage, von Mises and hydrostatic
stress are invariant under the reflections); the shear stress sigma_xy would change sign and is
not drawn mirrored.

* :func:`plot_fea_state`: Li content x_li, dissipated energy / Gamma on each grain-boundary segment
  (the law's D, "damage onset", for results without it), von Mises and hydrostatic stress (MPa) at
  one saved step (the snapshot nearest a chosen SoC).
* :func:`plot_damage_curves`: versus time and versus SoC, several runs (bare vs coated) on the same
  axes: first the dissipated energy / Gamma and the fully open GB length fraction (the headline
  measures), then the damage onset (mean D of the bilinear law, fraction with D > 0.99).
* :func:`plot_surface_rates`: the C-rate each surface grain delivered over time against its
  prescribed rate, and the particle's C-rate (kinetic surface condition, docs/fea.md).
* :func:`plot_fea_compare`: two runs side by side (x_li, dissipated-energy and damage-onset maps at
  the same SoC) over their curves.
* :func:`animate_fea`: GIF (matplotlib ``PillowWriter``; Pillow is a matplotlib dependency) or MP4
  (``FFMpegWriter``, needs ffmpeg) of x_li and damage over the saved snapshots.
* :func:`write_fea_figures` / :func:`write_fea_compare`: the figure writers of ``insitu-xrd fea``,
  ``fea-compare``, ``run`` and ``demo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from insitu_xrd.errors import InsituXRDError  # noqa: E402

__all__ = [
    "DEFAULT_DISPLAY_SOC",
    "nearest_snapshot",
    "mirror_mesh",
    "mirror_segments",
    "plot_fea_state",
    "plot_damage_curves",
    "plot_surface_rates",
    "plot_fea_compare",
    "animate_fea",
    "write_fea_figures",
    "write_fea_compare",
]

#: SoC of the maps when none is asked for (Hou et al. Fig. 5 show the particle at ~55 % SoC)
DEFAULT_DISPLAY_SOC = 0.55
#: the four quadrants: (sign of x, sign of y)
_QUADRANTS = ((1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))
_DAMAGE_CMAP = "inferno_r"
_RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange")


# ---------------------------------------------------------------------------------------------
# geometry helpers


def nearest_snapshot(ds: xr.Dataset, soc: float | None) -> int:
    """Index of the saved snapshot whose SoC is nearest ``soc`` (None: :data:`DEFAULT_DISPLAY_SOC`,
    or the last snapshot when the run ended below it)."""
    socs = np.asarray(ds["snapshot_soc"].values, dtype=float)
    if socs.size == 0:
        raise InsituXRDError("FEA result has no saved snapshot to draw")
    target = DEFAULT_DISPLAY_SOC if soc is None else float(soc)
    if soc is None and np.nanmax(socs) < target:
        return int(np.nanargmax(socs))
    return int(np.nanargmin(np.abs(socs - target)))


def mirror_mesh(ds: xr.Dataset) -> tuple[mtri.Triangulation, int]:
    """The quarter-disc mesh mirrored into four quadrants: (triangulation, copies = 4).

    Node values of the quarter are tiled 4 times (``np.tile(v, 4)``), cell values likewise.
    """
    x = np.asarray(ds["node_x_um"].values, dtype=float)
    y = np.asarray(ds["node_y_um"].values, dtype=float)
    tri = np.asarray(ds["cell_nodes"].values, dtype=np.int64)
    n = x.size
    xs = np.concatenate([sx * x for sx, _ in _QUADRANTS])
    ys = np.concatenate([sy * y for _, sy in _QUADRANTS])
    tris = np.concatenate([tri + k * n for k in range(len(_QUADRANTS))])
    return mtri.Triangulation(xs, ys, tris), len(_QUADRANTS)


def mirror_segments(ds: xr.Dataset) -> np.ndarray:
    """Grain-boundary segments mirrored into four quadrants: array (4 * n_segment, 2, 2) in um."""
    gx = np.asarray(ds["gb_x_um"].values, dtype=float)
    gy = np.asarray(ds["gb_y_um"].values, dtype=float)
    segs = [np.stack([sx * gx, sy * gy], axis=-1) for sx, sy in _QUADRANTS]
    return np.concatenate(segs) if segs[0].size else np.zeros((0, 2, 2))


def _radius_um(ds: xr.Dataset) -> float:
    r = np.hypot(np.asarray(ds["node_x_um"].values, dtype=float), np.asarray(ds["node_y_um"].values, dtype=float))
    return float(np.nanmax(r))


def _frame_axes(ax: plt.Axes, ds: xr.Dataset) -> None:
    r = _radius_um(ds) * 1.04
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.axhline(0, color="0.5", lw=0.4, ls=":")  # the symmetry cuts of the model
    ax.axvline(0, color="0.5", lw=0.4, ls=":")


def _label(ds: xr.Dataset, label: str | None) -> str:
    if label:
        return label
    if "label" in ds.attrs and str(ds.attrs["label"]):
        return str(ds.attrs["label"])
    return f"coated ({float(ds.attrs.get('coating_um', 0)) * 1000:.0f} nm)" if int(ds.attrs.get("coated", 0)) else "bare"


def _snap_title(ds: xr.Dataset, k: int) -> str:
    soc = float(ds["snapshot_soc"].values[k])
    t_min = float(ds["snapshot_time_s"].values[k]) / 60.0
    return f"SoC {soc:.2f}, t = {t_min:.1f} min"


# ---------------------------------------------------------------------------------------------
# panels


def _panel_x_li(fig: plt.Figure, ax: plt.Axes, ds: xr.Dataset, k: int, tri: mtri.Triangulation,
                norm: Normalize | None = None) -> None:
    """Li content (Li per formula unit) on the nodes, grain boundaries in thin black."""
    v = np.tile(np.asarray(ds["x_li"].isel(snapshot=k).values, dtype=float), 4)
    pc = ax.tripcolor(tri, v, shading="gouraud", cmap="viridis", norm=norm)
    ax.add_collection(LineCollection(mirror_segments(ds), colors="k", linewidths=0.3, alpha=0.6))
    fig.colorbar(pc, ax=ax, shrink=0.8, label="x in Li$_x$TMO$_2$ (Li per f.u.)")
    _frame_axes(ax, ds)


def _panel_damage(fig: plt.Figure, ax: plt.Axes, ds: xr.Dataset, k: int, tri: mtri.Triangulation,
                  var: str = "damage", label: str = "damage onset (D of the bilinear law)") -> None:
    """Damage D (0 intact .. 1 fully cracked) on every grain-boundary segment over the grain map
    (``var="separation"``: the separation, dissipated / fracture energy, shown on 0..1)."""
    grains = np.tile(np.asarray(ds["cell_grain"].values), 4)
    face = np.where(grains < 0, 0.75, 0.93)  # coating darker than the grains
    ax.tripcolor(tri, facecolors=face, cmap="gray", vmin=0, vmax=1, shading="flat")
    d = np.tile(np.asarray(ds[var].isel(snapshot=k).values, dtype=float), 4)
    lc = LineCollection(mirror_segments(ds), array=d, cmap=_DAMAGE_CMAP, norm=Normalize(0.0, 1.0),
                        linewidths=0.6 + 1.6 * np.clip(d, 0, 1))
    ax.add_collection(lc)
    fig.colorbar(lc, ax=ax, shrink=0.8, label=label)
    _frame_axes(ax, ds)


def _panel_stress(fig: plt.Figure, ax: plt.Axes, ds: xr.Dataset, k: int, tri: mtri.Triangulation,
                  var: str, label: str, diverging: bool) -> None:
    v = np.tile(np.asarray(ds[var].isel(snapshot=k).values, dtype=float), 4)
    if diverging:
        lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
        pc = ax.tripcolor(tri, facecolors=v, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, shading="flat")
    else:
        pc = ax.tripcolor(tri, facecolors=v, cmap="magma", shading="flat")
    ax.add_collection(LineCollection(mirror_segments(ds), colors="k", linewidths=0.2, alpha=0.4))
    fig.colorbar(pc, ax=ax, shrink=0.8, label=label)
    _frame_axes(ax, ds)


# ---------------------------------------------------------------------------------------------
# figures


def plot_fea_state(ds: xr.Dataset, path: str | Path, soc: float | None = None, label: str | None = None,
                   dpi: int = 150) -> Path:
    """Four mirrored full-disc maps at the snapshot nearest ``soc``: x_li, dissipated energy / Gamma
    per GB segment (damage onset D for older results), von Mises stress (MPa) and hydrostatic
    stress (MPa, tension positive)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = nearest_snapshot(ds, soc)
    tri, _ = mirror_mesh(ds)
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 9.0), constrained_layout=True)
    _panel_x_li(fig, axes[0, 0], ds, k, tri)
    axes[0, 0].set_title("Li content")
    if "separation" in ds:
        _panel_damage(fig, axes[0, 1], ds, k, tri, var="separation", label=_SEPARATION_LABEL)
        axes[0, 1].set_title("grain-boundary cracking: dissipated energy / Gamma")
    else:
        _panel_damage(fig, axes[0, 1], ds, k, tri)
        axes[0, 1].set_title("grain-boundary damage onset")
    _panel_stress(fig, axes[1, 0], ds, k, tri, "stress_von_mises_MPa", "von Mises stress (MPa)", False)
    axes[1, 0].set_title("von Mises stress")
    _panel_stress(fig, axes[1, 1], ds, k, tri, "stress_hydrostatic_MPa", "hydrostatic stress (MPa, + tension)", True)
    axes[1, 1].set_title("hydrostatic stress")
    fig.suptitle(f"{_label(ds, label)}: {_snap_title(ds, k)}; {int(ds.attrs.get('n_grains', 0))} grains "
                 f"(quarter-disc model mirrored)", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


_SEPARATION_LABEL = "dissipated energy / Gamma (1; 1 = traction-free crack)"
#: per-step curves drawn: (variable, label, line style) by panel kind; "separation" only when present
_CURVES = {
    "damage": (("damage_mean", "damage onset: mean D of the bilinear law", "-"),
               ("cracked_fraction", "GB fraction with D > 0.99", "--")),
    "separation": (("separation_mean", "dissipated energy / Gamma", "-"),
                   ("open_crack_fraction", "fully open GB length fraction", "--")),
}
_CURVE_YLABEL = {"damage": "damage onset (D of the bilinear law),\nlength-weighted (1)",
                 "separation": "dissipated energy / (Gamma L_GB),\nfully open GB fraction (1)"}


def _kinds(runs: Sequence[xr.Dataset]) -> list[str]:
    """Curve rows: the headline (dissipated energy, open length) first when every run has it."""
    return (["separation"] if _has_separation(runs) else []) + ["damage"]


def _has_separation(runs: Sequence[xr.Dataset]) -> bool:
    return all("separation_mean" in ds and "open_crack_fraction" in ds for ds in runs)


def _curves(ax_t: plt.Axes, ax_s: plt.Axes, runs: Sequence[tuple[xr.Dataset, str]], kind: str = "damage") -> None:
    """Per-step curves of every run versus time (min) on ``ax_t`` and versus SoC on ``ax_s``."""
    for i, (ds, lab) in enumerate(runs):
        col = _RUN_COLOURS[i % len(_RUN_COLOURS)]
        t_min = np.asarray(ds["time_s"].values, dtype=float) / 60.0
        soc = np.asarray(ds["soc"].values, dtype=float)
        for var, what, style in _CURVES[kind]:
            y = np.asarray(ds[var].values, dtype=float)
            for ax, xv in ((ax_t, t_min), (ax_s, soc)):
                ax.plot(xv, y, style, color=col, lw=1.6 if style == "-" else 1.1, label=f"{lab}: {what}")
    ax_t.set_xlabel("time (min)")
    ax_s.set_xlabel("state of charge")
    for ax in (ax_t, ax_s):
        ax.set_ylabel(_CURVE_YLABEL[kind])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_s.legend(fontsize=7, loc="best")


def plot_damage_curves(runs: Sequence[xr.Dataset], path: str | Path, labels: Sequence[str] | None = None,
                       dpi: int = 150) -> Path:
    """Versus time (min) and versus SoC, one colour per run: dissipated energy / Gamma and fully open
    GB length fraction (when the results have them), then the damage onset (mean D of the bilinear
    law, which saturates near 1 on any boundary in tension, docs/fea.md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = list(runs)
    labs = list(labels) if labels else [_label(ds, None) for ds in runs]
    kinds = _kinds(runs)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10.0, 4.0 * len(kinds)), constrained_layout=True, squeeze=False)
    for row, kind in enumerate(kinds):
        _curves(axes[row, 0], axes[row, 1], list(zip(runs, labs)), kind)
    fig.suptitle("grain-boundary cracking during charge", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_surface_rates(ds: xr.Dataset, path: str | Path, label: str | None = None, dpi: int = 150) -> Path:
    """Delivered C-rate of every surface grain versus time (colour = its prescribed rate; dashed:
    the prescribed rates) and the particle's C-rate, from ``grain_delivered_rate_C``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "grain_delivered_rate_C" not in ds:
        raise InsituXRDError(f"surface-rate figure {path.name}: the result has no grain_delivered_rate_C "
                             "(written before the surface condition was an output)")
    t_min = np.asarray(ds["time_s"].values, dtype=float) / 60.0
    rate = np.asarray(ds["grain_delivered_rate_C"].values, dtype=float)
    pres = np.asarray(ds["grain_rate_C"].values, dtype=float)
    levels = sorted({float(r) for r in pres[np.isfinite(pres)]}, reverse=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0), constrained_layout=True)
    for i, lev in enumerate(levels):
        col = _RUN_COLOURS[i % len(_RUN_COLOURS)]
        idx = np.flatnonzero(pres == lev)
        for n, g in enumerate(idx):
            ax1.step(t_min, rate[:, g], where="pre", color=col, lw=0.9, alpha=0.8,
                     label=f"grains at {lev:g} C ({idx.size})" if n == 0 else None)
        ax1.axhline(lev, color=col, ls="--", lw=0.8)
    ax1.set_xlabel("time (min)")
    ax1.set_ylabel("delivered C-rate of the grain (1/h)")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="best")
    ax2.step(np.asarray(ds["soc"].values, dtype=float), np.asarray(ds["particle_rate_C"].values, dtype=float),
             where="pre", color="k", lw=1.2)
    ax2.set_xlabel("state of charge")
    ax2.set_ylabel("C-rate of the particle (1/h)")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    cond = str(ds.attrs.get("surface_condition", "constant_flux"))
    fig.suptitle(f"{_label(ds, label)}: rates the surface delivered ({cond} surface condition)", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_fea_compare(runs: Sequence[xr.Dataset], path: str | Path, soc: float | None = None,
                     labels: Sequence[str] | None = None, dpi: int = 150) -> Path:
    """Runs side by side (rows: x_li and GB damage maps, mirrored, at the snapshot nearest the same
    SoC; common x_li colour scale) above their damage curves versus time and SoC."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = list(runs)
    if not runs:
        raise InsituXRDError("fea-compare: no FEA result given")
    labs = list(labels) if labels else [_label(ds, None) for ds in runs]
    ks = [nearest_snapshot(ds, soc) for ds in runs]
    vals = np.concatenate([np.asarray(ds["x_li"].isel(snapshot=k).values, dtype=float) for ds, k in zip(runs, ks)])
    norm = Normalize(float(np.nanmin(vals)), float(np.nanmax(vals)) + 1e-12)
    n = len(runs)
    kinds = _kinds(runs)
    maps = 2 + int("separation" in kinds and all("separation" in ds for ds in runs))
    fig = plt.figure(figsize=(5.0 * n, 5.0 * maps + 3.0 * len(kinds)), constrained_layout=True)
    gs = fig.add_gridspec(maps + len(kinds), 2 * n, height_ratios=[1.0] * maps + [0.75] * len(kinds))
    for j, (ds, k, lab) in enumerate(zip(runs, ks, labs)):
        tri, _ = mirror_mesh(ds)
        ax1 = fig.add_subplot(gs[0, 2 * j:2 * j + 2])
        _panel_x_li(fig, ax1, ds, k, tri, norm=norm)
        ax1.set_title(f"{lab}: Li content, {_snap_title(ds, k)}", fontsize=9)
        if maps == 3:
            ax3 = fig.add_subplot(gs[1, 2 * j:2 * j + 2])
            _panel_damage(fig, ax3, ds, k, tri, var="separation", label=_SEPARATION_LABEL)
            ax3.set_title(f"{lab}: dissipated energy / Gamma (final {float(ds['separation_mean'].values[-1]):.3f}, "
                          f"fully open {float(ds['open_crack_fraction'].values[-1]):.3f})", fontsize=9)
        ax2 = fig.add_subplot(gs[maps - 1, 2 * j:2 * j + 2])
        _panel_damage(fig, ax2, ds, k, tri)
        fd = float(ds["damage_mean"].values[-1])
        ax2.set_title(f"{lab}: damage onset, D of the bilinear law (final mean {fd:.3f})", fontsize=9)
    for row, kind in enumerate(kinds):
        _curves(fig.add_subplot(gs[maps + row, :n]), fig.add_subplot(gs[maps + row, n:]), list(zip(runs, labs)), kind)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def animate_fea(ds: xr.Dataset, path: str | Path, fps: float = 4.0, dpi: int = 80, label: str | None = None) -> Path:
    """Animation of x_li and GB damage (mirrored) over the saved snapshots.

    ``.gif``: matplotlib's PillowWriter; ``.mp4``: FFMpegWriter (needs ffmpeg on the PATH).
    """
    from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if not FFMpegWriter.isAvailable():
            raise InsituXRDError(f"animation {path}: MP4 needs ffmpeg on the PATH; write a .gif instead")
        writer = FFMpegWriter(fps=fps)
    else:
        raise InsituXRDError(f"animation {path}: use a .gif or .mp4 file name")
    tri, _ = mirror_mesh(ds)
    xl = np.asarray(ds["x_li"].values, dtype=float)
    norm = Normalize(float(np.nanmin(xl)), float(np.nanmax(xl)) + 1e-12)
    segs = mirror_segments(ds)
    grains = np.tile(np.asarray(ds["cell_grain"].values), 4)
    face = np.where(grains < 0, 0.75, 0.93)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.6), constrained_layout=True)
    pc = ax1.tripcolor(tri, np.tile(xl[0], 4), shading="gouraud", cmap="viridis", norm=norm)
    ax1.add_collection(LineCollection(segs, colors="k", linewidths=0.3, alpha=0.6))
    fig.colorbar(pc, ax=ax1, shrink=0.8, label="x in Li$_x$TMO$_2$ (Li per f.u.)")
    ax2.tripcolor(tri, facecolors=face, cmap="gray", vmin=0, vmax=1, shading="flat")
    d0 = np.tile(np.asarray(ds["damage"].values[0], dtype=float), 4)
    lc = LineCollection(segs, array=d0, cmap=_DAMAGE_CMAP, norm=Normalize(0.0, 1.0), linewidths=1.2)
    ax2.add_collection(lc)
    fig.colorbar(lc, ax=ax2, shrink=0.8, label="damage onset (D of the bilinear law)")
    for ax in (ax1, ax2):
        _frame_axes(ax, ds)
    title = fig.suptitle("", fontsize=10)
    lab = _label(ds, label)

    def update(k: int) -> list:
        nonlocal pc
        pc.remove()
        pc = ax1.tripcolor(tri, np.tile(xl[k], 4), shading="gouraud", cmap="viridis", norm=norm)
        d = np.tile(np.asarray(ds["damage"].values[k], dtype=float), 4)
        lc.set_array(d)
        lc.set_linewidths(0.6 + 1.6 * np.clip(d, 0, 1))
        title.set_text(f"{lab}: {_snap_title(ds, k)}")
        return [pc, lc, title]

    anim = FuncAnimation(fig, update, frames=range(ds.sizes["snapshot"]), blit=False)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        anim.save(str(tmp), writer=writer, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------------------------
# writers used by the CLI and the pipeline


def write_fea_figures(ds: xr.Dataset, out_dir: str | Path, stem: str = "fea", soc: float | None = None,
                      animation: bool = True, label: str | None = None, figure_format: str = "png") -> list[Path]:
    """``{stem}_state.{fmt}`` (maps at ``soc``), ``{stem}_damage.{fmt}`` (curves),
    ``{stem}_rates.{fmt}`` (delivered surface rates, results that have them) and, with
    ``animation``, ``{stem}.gif`` into ``out_dir``. Returns the paths written."""
    out = Path(out_dir)
    paths = [plot_fea_state(ds, out / f"{stem}_state.{figure_format}", soc=soc, label=label),
             plot_damage_curves([ds], out / f"{stem}_damage.{figure_format}", labels=[_label(ds, label)])]
    if "grain_delivered_rate_C" in ds:
        paths.append(plot_surface_rates(ds, out / f"{stem}_rates.{figure_format}", label=label))
    if animation:
        paths.append(animate_fea(ds, out / f"{stem}.gif", label=label))
    return paths


def write_fea_compare(runs: Sequence[xr.Dataset], out_dir: str | Path, soc: float | None = None,
                      labels: Sequence[str] | None = None, figure_format: str = "png") -> list[Path]:
    """``fea_compare.{fmt}`` (maps side by side + curves) and ``fea_compare_damage.{fmt}`` (the
    damage curves together) into ``out_dir``. Returns the paths written."""
    out = Path(out_dir)
    return [plot_fea_compare(runs, out / f"fea_compare.{figure_format}", soc=soc, labels=labels),
            plot_damage_curves(runs, out / f"fea_compare_damage.{figure_format}", labels=labels)]
