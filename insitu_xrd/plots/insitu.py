"""Standard in-situ figures (Agg backend).

* :func:`plot_insitu_map`: pattern intensity map (2theta x time) next to the voltage curve, with
  the regions of the main phase's strongest reflections zoomed (for NMC811 the 003 and 104, the
  c-axis and in-plane signatures of H2/H3; :func:`series_zoom_windows`).
* :func:`plot_lattice`: lattice parameters a, c, cell volume and phase fractions versus x (or
  SoC, time, ...) with esd error bars, one series per phase.
* :func:`write_figures`: the figure writer of ``insitu-xrd run/watch/demo`` (all of the above,
  the strain curves and Rietveld plots of selected frames into ``<outputs>/figures``).
Strain curves: :mod:`insitu_xrd.plots.strain`; the Rietveld fit of one frame:
:mod:`insitu_xrd.plots.rietveld`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["plot_insitu_map", "plot_lattice", "write_figures", "series_zoom_windows", "AXIS_LABELS"]

AXIS_LABELS = {
    "x_li": "x in Li$_x$TMO$_2$",
    "soc": "state of charge",
    "capacity_mAh_g": "capacity (mAh/g)",
    "voltage_V": "voltage (V)",
    "time_s": "time (h)",
    "frame": "frame",
}
_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def series_zoom_windows(fit: xr.Dataset, results: xr.Dataset) -> list[tuple[str, float, float]]:
    """Zoom windows (title, lo_deg, hi_deg) of the in-situ map: those of the Rietveld figure of one
    fitted frame (:func:`insitu_xrd.plots.rietveld.zoom_windows`: the main phase's strongest
    reflections), widened to where the reflections move over the series: by 2 tan(theta) times the
    spread (max - min) / min of the lattice lengths a, b, c of the electrode phases (the results'
    ``cathode_phases``, else the first phase) over every frame, pooled so that a second phase
    (H3) that the fitted frame lacks is inside too."""
    from insitu_xrd.io.strain_export import cathode_phases_in
    from insitu_xrd.plots.rietveld import zoom_windows

    phases = cathode_phases_in(results) or [str(results["phase"].values[0])]
    spread = 0.0
    for var in ("a", "b", "c"):
        if var in results:
            v = np.asarray(results[var].sel(phase=phases).values, dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            if v.size:
                spread = max(spread, float(v.max() / v.min() - 1.0))
    out = []
    for title, lo, hi in zoom_windows(fit):
        def shift(tth_deg: float) -> float:
            return math.degrees(2 * math.tan(math.radians(tth_deg) / 2) * spread)

        out.append((title, lo - shift(lo), hi + shift(hi)))
    return out


def _two_theta(patterns: xr.Dataset) -> np.ndarray:
    if "two_theta" in patterns.coords:
        return np.asarray(patterns["two_theta"].values, dtype=float)
    lam = float(patterns.attrs["wavelength_A"])
    q = np.asarray(patterns["q"].values, dtype=float)
    return np.degrees(2 * np.arcsin(np.clip(q * lam / (4 * np.pi), 0, 1)))


def _time_h(ds: xr.Dataset) -> np.ndarray | None:
    if "time_s" in ds.variables:
        t = np.asarray(ds["time_s"].values, dtype=float)
        if np.isfinite(t).sum() >= 2:
            return t / 3600.0
    return None


def plot_insitu_map(
    patterns: xr.Dataset,
    path: str | Path,
    results: xr.Dataset | None = None,
    echem: xr.Dataset | None = None,
    zooms: Sequence[tuple[str, float, float]] = (),
    title: str | None = None,
    dpi: int = 130,
) -> Path:
    """Intensity map (sqrt scale) of every frame versus time, zoomed maps, voltage curve.

    patterns: Patterns Dataset. results: sequential results (for the H3 onset line and, if it
    carries echem coords, the voltage curve); echem: any Dataset with ``time_s`` and
    ``voltage_V`` per frame (default: ``results``); zooms: (title, lo_deg, hi_deg) windows drawn
    as zoomed maps (:func:`series_zoom_windows`; none by default).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tth = _two_theta(patterns)
    inten = np.asarray(patterns["intensity"].values, dtype=float)
    ok = np.array([str(s) == "ok" for s in patterns["status"].values]) if "status" in patterns else np.ones(len(inten), bool)
    inten = np.where(ok[:, None], inten, np.nan)
    y = _time_h(patterns)
    ylabel = "time (h)"
    if y is None or not np.all(np.diff(y[np.isfinite(y)]) > 0):
        y = np.arange(inten.shape[0], dtype=float)
        ylabel = "frame"
    windows = [(str(t_), float(lo), float(hi)) for t_, lo, hi in zooms]
    ec = echem if echem is not None else results
    has_v = ec is not None and "voltage_V" in ec.variables and np.isfinite(np.asarray(ec["voltage_V"].values, float)).any()
    ncols = 1 + len(windows) + (1 if has_v else 0)
    widths = [4.0] + [1.6] * len(windows) + ([1.4] if has_v else [])
    fig, axes = plt.subplots(1, ncols, figsize=(sum(widths) + 1.2, 5.2), sharey=True, constrained_layout=True,
                             gridspec_kw={"width_ratios": widths})
    axes = np.atleast_1d(axes)
    sq = np.sqrt(np.clip(inten, 0, None))
    finite = sq[np.isfinite(sq)]
    vmin, vmax = (np.percentile(finite, 1), np.percentile(finite, 99.7)) if finite.size else (0, 1)

    def show(ax, lo: float, hi: float) -> None:
        sel = (tth >= lo) & (tth <= hi)
        if sel.sum() < 2:
            return
        ax.pcolormesh(tth[sel], y, sq[:, sel], shading="nearest", cmap="viridis", vmin=vmin,
                      vmax=np.nanpercentile(sq[:, sel], 99.7) if np.isfinite(sq[:, sel]).any() else vmax,
                      rasterized=True)

    show(axes[0], float(tth.min()), float(tth.max()))
    axes[0].set_xlabel("2$\\theta$ (deg)")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title("$\\sqrt{I}$", fontsize=9)
    for k, (label, lo, hi) in enumerate(windows):
        ax = axes[1 + k]
        show(ax, lo, hi)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("2$\\theta$ (deg)")
        ax.set_title(f"{label}", fontsize=9)
        axes[0].axvspan(lo, hi, color="w", alpha=0.12, lw=0)
    onset_y = None
    if results is not None:
        for key, val in results.attrs.items():
            if key.endswith("_onset_frame") and isinstance(val, (int, np.integer)) and val >= 0 and val < len(y):
                onset_y = (key.split("_onset")[0], y[int(val)])
    if has_v:
        ax = axes[-1]
        v = np.asarray(ec["voltage_V"].values, dtype=float)
        yv = y
        if ylabel == "time (h)" and _time_h(ec) is not None and len(_time_h(ec)) == len(v):
            yv = _time_h(ec)
        ax.plot(v, yv, "k-", lw=1.2)
        ax.set_xlabel("voltage (V)")
        ax.grid(alpha=0.3)
        if "x_li" in ec.variables:
            x = np.asarray(ec["x_li"].values, dtype=float)
            good = np.isfinite(x) & np.isfinite(yv)
            if good.sum() >= 2:
                sec = ax.secondary_yaxis("right", functions=(
                    lambda t, xs=x[good], ts=yv[good]: np.interp(t, ts, xs),
                    lambda xx, xs=x[good], ts=yv[good]: np.interp(xx, xs[::-1], ts[::-1])))
                sec.set_ylabel("x in Li$_x$TMO$_2$")
    if onset_y is not None:
        name, yo = onset_y
        for ax in axes:
            ax.axhline(yo, color="w" if ax is not axes[-1] or not has_v else "tab:red", ls="--", lw=0.8)
        axes[-1].annotate(f"{name} onset", (0.02, yo), xycoords=("axes fraction", "data"), fontsize=7,
                          color="tab:red" if has_v else "w", va="bottom")
    fig.suptitle(title or "operando patterns", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _abscissa(results: xr.Dataset, versus: str) -> tuple[np.ndarray, str]:
    if versus in results.variables:
        x = np.asarray(results[versus].values, dtype=float)
        if np.isfinite(x).sum() >= 2:
            if versus == "time_s":
                return x / 3600.0, AXIS_LABELS["time_s"]
            return x, AXIS_LABELS.get(versus, versus)
    t = _time_h(results)
    if t is not None:
        return t, AXIS_LABELS["time_s"]
    return np.asarray(results["frame"].values, dtype=float), "frame"


def plot_lattice(results: xr.Dataset, path: str | Path, versus: str = "x_li", title: str | None = None,
                 dpi: int = 130) -> Path:
    """a, c, volume, fraction and microstrain of the cathode phases (H2, H3: the attr
    ``cathode_phases``; cell lines such as Al and Li are constant and would flatten the axes)
    versus ``versus`` with esd bars; Rwp below. The fraction is the lever-rule fraction within
    the cathode (``cathode_fraction``) when present, else the weight fraction of all phases."""
    from insitu_xrd.io.strain_export import cathode_phases_in

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, xlabel = _abscissa(results, versus)
    phases = [str(p) for p in results["phase"].values]
    shown = cathode_phases_in(results) or phases
    good = np.array([str(s) in ("ok", "refit") for s in results["status"].values])
    fig, axes = plt.subplots(3, 2, figsize=(10, 9), sharex=True, constrained_layout=True)
    frac_var = "cathode_fraction" if "cathode_fraction" in results else "phase_fraction"
    frac_label = "fraction of the cathode" if frac_var == "cathode_fraction" else "weight fraction"
    panels = [("a", "a (Å)"), ("c", "c (Å)"), ("volume", "volume (Å$^3$)"), (frac_var, frac_label),
              ("microstrain", "microstrain (10$^{-6}$)")]
    for ax, (var, label) in zip(axes.ravel(), panels):
        if var not in results:
            ax.set_visible(False)
            continue
        for j, p in enumerate(phases):
            if p not in shown:
                continue
            v = np.asarray(results[var].values[:, j], dtype=float)
            e = np.asarray(results[f"{var}_esd"].values[:, j], dtype=float) if f"{var}_esd" in results else None
            m = good & np.isfinite(v) & np.isfinite(x)
            if var in ("phase_fraction", "cathode_fraction"):
                m = good & np.isfinite(x)
                v = np.nan_to_num(v)
            if not m.any():
                continue
            ax.errorbar(x[m], v[m], yerr=None if e is None else np.nan_to_num(e[m]), fmt="o-", ms=3, lw=0.8,
                        capsize=1.5, color=_COLOURS[j % len(_COLOURS)], label=p)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.ravel()[5]
    rwp = np.asarray(results["rwp"].values, dtype=float) * 100
    ax.plot(x[good], rwp[good], "k.-", lw=0.8, label="Rwp")
    bad = ~good & np.isfinite(x)
    if bad.any():
        ax.plot(x[bad], np.where(np.isfinite(rwp[bad]), rwp[bad], np.nanmax(rwp) if np.isfinite(rwp).any() else 0),
                "rx", label="not ok")
    ax.set_ylabel("Rwp (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for key, val in results.attrs.items():
        if key.endswith("_onset_frame") and isinstance(val, (int, np.integer)) and 0 <= val < len(x):
            for a_ in axes.ravel():
                a_.axvline(x[int(val)], color="0.4", ls="--", lw=0.8)
    for a_ in axes[-1]:
        a_.set_xlabel(xlabel)
    if versus == "x_li" and xlabel == AXIS_LABELS["x_li"]:
        axes[0, 0].invert_xaxis()
    fig.suptitle(title or "sequential refinement", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_figures(recipe: Any, patterns: xr.Dataset, results: xr.Dataset, strain: xr.Dataset | None,
                  rietveld: Sequence[int] | None = None) -> tuple[list[Path], list[str]]:
    """The standard figures of a pipeline run into ``<outputs.dir>/figures`` (format
    ``outputs.figure_format``): ``insitu_map``, ``lattice``, ``strain``, and
    ``rietveld_frame<NNNN>`` for ``rietveld`` or the frames
    :func:`insitu_xrd.pipeline.report.rietveld_frames` picks (each refitted from its stored
    result). Returns (written paths, one line per figure that failed: a figure never breaks a run).
    The figure writer handed to :func:`insitu_xrd.pipeline.run.run_pipeline` by the CLI.
    """
    from insitu_xrd.pipeline.report import rietveld_frames
    from insitu_xrd.pipeline.sequential import refit_frame
    from insitu_xrd.pipeline.stages import make_factory

    fig_dir = recipe.output_dir / "figures"
    ext = recipe.outputs.figure_format
    written: list[Path] = []
    errors: list[str] = []

    def attempt(fn: Any, *args: Any, **kw: Any) -> None:
        try:
            written.append(fn(*args, **kw))
        except Exception as exc:  # a figure must never break the run
            errors.append(f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc}")

    map_zooms: list[tuple[str, float, float]] = []
    if recipe.refinement is not None:
        from insitu_xrd.plots.rietveld import plot_rietveld

        factory = make_factory(recipe, float(patterns.attrs["wavelength_A"]))
        frames = rietveld_frames(recipe, results) if rietveld is None else list(rietveld)
        for i in frames:
            try:
                result = refit_frame(results, patterns, i, recipe.refinement, factory)
                fit = result.to_dataset()
                name = str(results["frame_name"].values[i]) if "frame_name" in results.coords else str(i)
                written.append(plot_rietveld(fit, fig_dir / f"rietveld_frame{i:04d}.{ext}",
                                             title=f"{recipe.name}: frame {i} ({name}), Rwp {100 * result.rwp:.2f} %"))
                if not map_zooms:  # the map zooms on the regions of the first Rietveld figure
                    map_zooms = series_zoom_windows(fit, results)
            except Exception as exc:
                errors.append(f"rietveld frame {i}: {type(exc).__name__}: {exc}")
    attempt(plot_insitu_map, patterns, fig_dir / f"insitu_map.{ext}", results=results, zooms=map_zooms,
            title=recipe.name)
    attempt(plot_lattice, results, fig_dir / f"lattice.{ext}", versus=recipe.strain.versus, title=recipe.name)
    if strain is not None:
        from insitu_xrd.plots.strain import plot_strain

        attempt(plot_strain, strain, fig_dir / f"strain.{ext}")
    return written, errors
