"""The standard Rietveld/Le Bail figure from a fit Dataset (``FitResult.to_dataset()``). Agg backend.

Layout: observed points, calculated line and background on top; one row of reflection ticks per
phase (labelled); the difference curve obs - calc below on the same 2theta axis; optional zoom
panels underneath, each with its own difference: by default around the main phase's strongest
reflections (for NMC811 the 003 and 104), or the reflections / 2theta ranges asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from insitu_xrd.core.crystal import parse_hkl_label  # noqa: E402
from insitu_xrd.errors import InsituXRDError  # noqa: E402

__all__ = ["plot_rietveld", "zoom_windows", "default_zooms", "DEFAULT_ZOOM_COUNT"]

#: Zoom panels drawn when none are given: around this many of the main phase's strongest
#: reflections (by fitted peak area) inside the fitted range.
DEFAULT_ZOOM_COUNT = 3

ZoomSpec = Union[str, tuple[float, float], Sequence[float]]

_PHASE_COLOURS = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _canonical(label: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in parse_hkl_label(label))  # type: ignore[return-value]


def _match_by_d(keys: list, phase_of: np.ndarray, d_of: np.ndarray, phase: str, labels: list[str]) -> np.ndarray | None:
    """Peaks of ``phase`` whose d equals that of any of ``labels`` (None unless every label
    matches). The reciprocal metric is fitted to the phase's own (hkl, d) list."""
    idx = [i for i, (k, q) in enumerate(zip(keys, phase_of)) if q == phase and k is not None]
    if not idx:
        return None
    h = np.array([keys[i] for i in idx], dtype=float)
    inv_d2 = 1.0 / d_of[idx] ** 2
    design = np.stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2],
                       2 * h[:, 1] * h[:, 2]], axis=1)
    g, *_ = np.linalg.lstsq(design, inv_d2, rcond=None)
    exact = np.max(np.abs(design @ g - inv_d2) / inv_d2) < 1e-6 if len(idx) >= 6 else False
    hits = np.zeros(len(keys), dtype=bool)
    for label in labels:
        hl = np.array(_canonical(label), dtype=float)
        if exact:
            row = np.array([hl[0] ** 2, hl[1] ** 2, hl[2] ** 2, 2 * hl[0] * hl[1], 2 * hl[0] * hl[2], 2 * hl[1] * hl[2]])
            target = float(row @ g)
            found = [i for i, v in zip(idx, inv_d2) if abs(v - target) < 1e-6 * target]
        else:
            found = [i for i in idx if keys[i] == tuple(int(v) for v in hl)]
        if not found:
            return None
        hits[found] = True
    return hits


def default_zooms(ds: xr.Dataset, count: int = DEFAULT_ZOOM_COUNT) -> list[str]:
    """Zoom specs (reflection labels) of the main phase's ``count`` strongest reflections.

    The main phase is the fit's first phase that has reflections inside the fitted range (the
    recipe's first phase, e.g. H2). Its reflections are taken by fitted peak area (``peak_area``),
    strongest first; one that lies inside the window of a stronger one joins its panel ("108 110"),
    so each panel shows a distinct region. Sorted by 2theta; [] when the fit lists no reflections.
    """
    if "peak_hkl" not in ds or ds.sizes.get("peak", 0) == 0:
        return []
    x = np.asarray(ds["two_theta"].values, dtype=float)
    tth = np.asarray(ds["peak_two_theta"].values, dtype=float)
    phase_of = np.array([str(p) for p in ds["peak_phase"].values])
    hkl = [str(h) for h in ds["peak_hkl"].values]
    area = np.asarray(ds["peak_area"].values, dtype=float) if "peak_area" in ds else np.ones(tth.size)
    inside = (tth >= x.min()) & (tth <= x.max()) & np.isfinite(area)
    order = [str(p) for p in ds["phase"].values] if "phase" in ds.coords else []
    main = next((p for p in order + list(dict.fromkeys(phase_of.tolist())) if np.any(inside & (phase_of == p))), None)
    if main is None:
        return []
    idx = np.flatnonzero(inside & (phase_of == main))
    groups: list[list[int]] = []
    for i in idx[np.argsort(-area[idx], kind="stable")]:
        home = next((g for g in groups if any(abs(tth[i] - tth[j]) <= max(0.05, 0.03 * tth[j]) for j in g)), None)
        if home is not None:
            home.append(int(i))
        elif len(groups) < count:
            groups.append([int(i)])
    groups.sort(key=lambda g: min(tth[g]))
    return [" ".join(dict.fromkeys(hkl[j] for j in sorted(g, key=lambda j: tth[j]))) for g in groups]


def zoom_windows(ds: xr.Dataset, zooms: Sequence[ZoomSpec] | None = None) -> list[tuple[str, float, float]]:
    """Resolve zoom specifications into (title, lo_deg, hi_deg) windows.

    A zoom is either an explicit (lo, hi) 2theta range in degrees or a string of reflection
    labels separated by spaces, '+' or '/' ("003", "108 110", "108+110"); a label window spans the
    positions of those reflections in every phase that has all of them, padded by max(0.05 deg, 3 % of
    2theta) each side. None: :func:`default_zooms` (the main phase's strongest reflections).
    Labels absent from the fit are skipped for the defaults and are an error when given explicitly.
    """
    x = np.asarray(ds["two_theta"].values, dtype=float)
    xmin, xmax = float(x.min()), float(x.max())
    explicit = zooms is not None
    specs = list(zooms) if zooms is not None else default_zooms(ds)
    out: list[tuple[str, float, float]] = []
    have_peaks = "peak_hkl" in ds and ds.sizes.get("peak", 0) > 0
    hkl = [str(h) for h in ds["peak_hkl"].values] if have_peaks else []
    tth = np.asarray(ds["peak_two_theta"].values, dtype=float) if have_peaks else np.zeros(0)
    phase_of = np.array([str(p) for p in ds["peak_phase"].values]) if have_peaks else np.array([], dtype=str)
    d_of = np.asarray(ds["peak_d_A"].values, dtype=float) if have_peaks else np.zeros(0)
    keys = []
    for h in hkl:
        try:
            keys.append(_canonical(h))
        except InsituXRDError:
            keys.append(None)
    for z in specs:
        if isinstance(z, str):
            labels = [t for t in z.replace("+", " ").replace("/", " ").split() if t]
            try:
                for t in labels:
                    _canonical(t)
            except InsituXRDError as exc:
                raise InsituXRDError(f"zoom {z!r}: {exc}") from None
            # Match by d-spacing in each phase's metric, so '108' finds R-3m's 018 (the same d, the
            # label papers use); only phases having every listed reflection count (Li metal's 110
            # is not part of NMC's 108/110 pair).
            sel = np.zeros(len(keys), dtype=bool)
            for p in dict.fromkeys(phase_of.tolist()):
                hits = _match_by_d(keys, phase_of, d_of, p, labels)
                if hits is not None:
                    sel |= hits
            pos = tth[sel] if sel.size else np.zeros(0)
            pos = pos[(pos >= xmin) & (pos <= xmax)]
            if pos.size == 0:
                if explicit:
                    raise InsituXRDError(f"zoom {z!r}: no such reflection inside the fitted range {xmin:.3f}-{xmax:.3f} deg")
                continue
            pad = max(0.05, 0.03 * float(pos.mean()))
            out.append((" / ".join(labels), float(pos.min() - pad), float(pos.max() + pad)))
        else:
            lo, hi = (float(v) for v in z)
            if not lo < hi:
                raise InsituXRDError(f"zoom range {z!r}: need lo < hi (deg)")
            out.append((f"{lo:g}-{hi:g} deg", lo, hi))
    return out


def plot_rietveld(
    ds: xr.Dataset,
    path: str | Path,
    zooms: Sequence[ZoomSpec] | None = None,
    title: str | None = None,
    log_intensity: bool = False,
    dpi: int = 120,
) -> Path:
    """Write the Rietveld figure of a fit Dataset to ``path`` (PNG/PDF/SVG by suffix).

    zooms: see :func:`zoom_windows`; None: around the main phase's strongest reflections
        (:func:`default_zooms`), [] disables.
    log_intensity: sqrt-free log scale on the main panel (useful for weak phases).
    Returns the path written.
    """
    for var in ("obs", "calc", "diff"):
        if var not in ds:
            raise InsituXRDError(f"fit dataset has no {var!r} variable (not a refinement result?)")
    path = Path(path)
    x = np.asarray(ds["two_theta"].values, dtype=float)
    obs = np.asarray(ds["obs"].values, dtype=float)
    calc = np.asarray(ds["calc"].values, dtype=float)
    diff = np.asarray(ds["diff"].values, dtype=float)
    bkg = np.asarray(ds["background"].values, dtype=float) if "background" in ds else None
    phases = [str(p) for p in ds["phase"].values] if "phase" in ds.coords else []
    windows = zoom_windows(ds, zooms)
    have_peaks = "peak_phase" in ds and ds.sizes.get("peak", 0) > 0
    pk_phase = np.array([str(p) for p in ds["peak_phase"].values]) if have_peaks else np.array([], dtype=str)
    pk_tth = np.asarray(ds["peak_two_theta"].values, dtype=float) if have_peaks else np.zeros(0)
    tick_phases = [p for p in phases if np.any(pk_phase == p)] or sorted(set(pk_phase.tolist()))

    n_ticks = max(len(tick_phases), 1)
    heights = [5.0, 0.28 * n_ticks + 0.15, 1.6]
    nrows = 3 + (1 if windows else 0)
    if windows:
        heights.append(3.2)
    fig = plt.figure(figsize=(12, sum(heights) * 0.9 + 0.8), constrained_layout=True)
    gs = fig.add_gridspec(nrows, max(len(windows), 1), height_ratios=heights)
    ax = fig.add_subplot(gs[0, :])
    ax_tick = fig.add_subplot(gs[1, :], sharex=ax)
    ax_diff = fig.add_subplot(gs[2, :], sharex=ax)

    ax.plot(x, obs, "o", ms=2.0, mfc="none", mec="tab:blue", mew=0.6, label="observed")
    ax.plot(x, calc, "-", color="tab:red", lw=0.9, label="calculated")
    if bkg is not None:
        ax.plot(x, bkg, "-", color="0.45", lw=0.8, label="background")
    if "diffuse_curve" in ds and bkg is not None:
        for lbl in ds["diffuse"].values:
            ax.plot(x, bkg + np.asarray(ds["diffuse_curve"].sel(diffuse=lbl).values), ":", lw=0.9, label=f"diffuse {lbl}")
    if log_intensity:
        ax.set_yscale("log")
    ax.set_ylabel("intensity")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    attrs = ds.attrs
    stats = []
    for key, fmt in (("rwp", "Rwp {:.2%}"), ("rexp", "Rexp {:.2%}"), ("gof", "GoF(chi2_red) {:.2f}"),
                     ("durbin_watson", "DW {:.2f}")):
        if key in attrs and np.isfinite(attrs[key]):
            stats.append(fmt.format(float(attrs[key])))
    mode = attrs.get("mode", "")
    wl = attrs.get("wavelength_A")
    head = title or "refinement"
    sub = f"{mode}, lambda = {wl:.5g} A" if wl is not None else str(mode)
    ax.set_title(f"{head}   ({sub})\n" + "   ".join(stats), fontsize=10)
    plt.setp(ax.get_xticklabels(), visible=False)

    for row, name in enumerate(tick_phases):
        colour = _PHASE_COLOURS[row % len(_PHASE_COLOURS)]
        t = pk_tth[pk_phase == name]
        t = t[(t >= x.min()) & (t <= x.max())]
        ax_tick.vlines(t, -row - 0.38, -row + 0.38, color=colour, lw=0.8)
    ax_tick.set_ylim(-n_ticks + 0.4, 0.6)
    ax_tick.set_yticks([-i for i in range(len(tick_phases))])
    ax_tick.set_yticklabels(tick_phases, fontsize=8)
    ax_tick.tick_params(axis="y", length=0)
    for sp in ("top", "right"):
        ax_tick.spines[sp].set_visible(False)
    plt.setp(ax_tick.get_xticklabels(), visible=False)

    ax_diff.plot(x, diff, "-", color="0.2", lw=0.7)
    ax_diff.axhline(0.0, color="0.6", lw=0.5)
    ax_diff.set_ylabel("obs - calc")
    ax_diff.set_xlabel("2theta (deg)")
    ax.set_xlim(x.min(), x.max())

    for j, (label, lo, hi) in enumerate(windows):
        sub_ax = fig.add_subplot(gs[3, j])
        sel = (x >= lo) & (x <= hi)
        if not sel.any():
            sub_ax.set_title(f"{label}: outside range", fontsize=9)
            continue
        xs = x[sel]
        sub_ax.plot(xs, obs[sel], "o", ms=2.5, mfc="none", mec="tab:blue", mew=0.6)
        sub_ax.plot(xs, calc[sel], "-", color="tab:red", lw=0.9)
        if bkg is not None:
            sub_ax.plot(xs, bkg[sel], "-", color="0.45", lw=0.7)
        if "diffuse_curve" in ds and bkg is not None:
            for lbl in ds["diffuse"].values:
                sub_ax.plot(xs, bkg[sel] + np.asarray(ds["diffuse_curve"].sel(diffuse=lbl).values)[sel], ":", lw=0.9)
        top = max(float(np.max(obs[sel])), float(np.max(calc[sel])))
        # difference curve drawn below the pattern, as in GSAS-II's zoomed plots
        off = min(0.0, float(np.min(obs[sel]))) - float(np.max(diff[sel])) - 0.05 * top
        sub_ax.plot(xs, diff[sel] + off, "-", color="0.2", lw=0.7)
        span = top - (off + float(np.min(diff[sel])))
        for row, name in enumerate(tick_phases):
            colour = _PHASE_COLOURS[row % len(_PHASE_COLOURS)]
            t = pk_tth[(pk_phase == name) & (pk_tth >= lo) & (pk_tth <= hi)]
            y0 = off + float(np.min(diff[sel])) - (0.04 + 0.05 * row) * span
            sub_ax.vlines(t, y0 - 0.02 * span, y0 + 0.02 * span, color=colour, lw=1.0)
        sub_ax.set_xlim(lo, hi)
        sub_ax.set_title(label, fontsize=9)
        sub_ax.set_xlabel("2theta (deg)", fontsize=8)
        sub_ax.tick_params(labelsize=7)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise InsituXRDError(f"plot {path}: cannot be written ({exc})") from None
    finally:
        plt.close(fig)
    return path
