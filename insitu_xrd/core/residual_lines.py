"""Lines in a residual: where a diffraction pattern's residual has a line the model lacks.

At a ladder of widths (from the narrowest peak up to a sixth of the pattern) the residual's
*integrated excess* over a core of one width (+/- 0.6 FWHM) above the higher of its two flanks
(2-3 half-widths out: a line stands above its surroundings on both sides, a flat stretch beside a
dip of the misfit does not) is compared with the local robust spread of that same statistic
(1.4826 x MAD over ~50 half-widths). A serially correlated misfit raises that spread as much as it
raises the excess, so a line is judged by how far it stands out of the residual's own structure,
not by a multiple of (inflated) esds. At widths where the pattern holds too few independent
windows for a MAD (RELIABLE_WINDOWS), broad lines would set the spread they are judged by: there
the spread is the statistical one (from the esds) times the largest inflation measured at the
reliable widths. Candidates are then measured by a local pseudo-Voigt fit.

Used by :mod:`insitu_xrd.pipeline.sequential.cell_lines` (the cell's lines in a series). Pure
numpy/scipy; no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from insitu_xrd.core.profiles import pseudo_voigt

__all__ = ["ExcessMap", "ResidualLine", "excess_maps", "residual_lines", "CORE_AREA", "RELIABLE_WINDOWS"]

#: widths with fewer independent windows than this in the pattern get a spread from the esds
RELIABLE_WINDOWS = 40
#: fraction of a Gaussian's area within +/- 0.6 FWHM (the excess core)
CORE_AREA = 0.76


@dataclass
class ExcessMap:
    """Integrated excess of a residual at one width: ``excess`` (counts x deg) and its local robust
    spread ``spread`` per point; ``half`` the core half-width in points."""

    half: int
    excess: np.ndarray
    spread: np.ndarray
    stat: np.ndarray  # the purely statistical spread (from the esds)

    @property
    def z(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.excess / self.spread


def _excess_map(resid: np.ndarray, dx: np.ndarray, half: int, sigma: np.ndarray) -> ExcessMap:
    """The integrated excess of ``resid`` over a core of +/- ``half`` points above the higher of
    its two flanks (2-3 half-widths out), and its local robust spread."""
    n = len(resid)
    c = np.concatenate([[0.0], np.cumsum(resid)])
    v = np.concatenate([[0.0], np.cumsum(np.asarray(sigma, float) ** 2)])
    j = np.arange(n)
    lo_core, hi_core = j - half, j + half + 1
    lo_l, hi_l = j - 3 * half, j - 2 * half
    lo_r, hi_r = j + 2 * half + 1, j + 3 * half + 1
    ok = (lo_l >= 0) & (hi_r <= n)
    e = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    if ok.sum() < 10:
        return ExcessMap(half, e, spread, spread.copy())
    jj = j[ok]
    ncore = 2 * half + 1
    core = c[hi_core[ok]] - c[lo_core[ok]]
    # a line stands above its surroundings on both sides: the excess over the higher flank (a
    # flat stretch beside a dip of the misfit is no line)
    left, right = c[hi_l[ok]] - c[lo_l[ok]], c[hi_r[ok]] - c[lo_r[ok]]
    flank = np.maximum(left, right) / float(half)
    e[ok] = (core - ncore * flank) * dx[jj]
    # the local robust spread of the statistic itself (1.4826 x MAD over ~50 half-widths, at least
    # 201 points): serially correlated misfit raises it as much as it raises the excess
    ev = e[ok]
    s0 = _running_mad(ev, int(min(len(ev), max(201, 50 * half + 1))))
    s0 = np.maximum(s0, 0.2 * 1.4826 * float(np.median(np.abs(ev - np.median(ev)))) + 1e-12)
    spread[ok] = s0
    var_flank = np.maximum(v[hi_l[ok]] - v[lo_l[ok]], v[hi_r[ok]] - v[lo_r[ok]])
    stat = np.full(n, np.nan)
    stat[ok] = dx[jj] * np.sqrt(v[hi_core[ok]] - v[lo_core[ok]] + (ncore / half) ** 2 * var_flank)
    return ExcessMap(half, e, spread, stat)


def _running_mad(values: np.ndarray, window: int) -> np.ndarray:
    """1.4826 x the median absolute deviation of ``values`` over ~``window`` points around each
    point: computed on windows half a window apart and interpolated between their centres
    (linear in the number of points, unlike a running median)."""
    n = len(values)
    step = max(1, window // 2)
    centres, mads = [], []
    for start in range(0, max(1, n - window + 1) + step - 1, step):
        seg = values[start:start + window] if n > window else values
        med = np.median(seg)
        centres.append(min(start + window / 2.0, n / 2.0) if n <= window else start + window / 2.0)
        mads.append(1.4826 * float(np.median(np.abs(seg - med))))
        if n <= window:
            break
    return np.interp(np.arange(n), centres, mads)


def _halves(n: int, narrowest_pts: float) -> list[int]:
    """Core half-widths (points): 0.6 x FWHM from the narrowest peak up to a sixth of the pattern."""
    out, f = [], max(narrowest_pts, 3.0)
    while True:
        h = max(1, int(round(0.6 * f)))
        if 6 * h + 1 > n / 3:
            break
        if not out or h > out[-1]:
            out.append(h)
        f *= 1.6
    return out


@dataclass
class ResidualLine:
    """A line of a residual: position, width, area (counts x deg), significance."""

    index: int
    two_theta_deg: float
    fwhm_deg: float
    eta: float
    area: float
    height: float
    sigma: float  # integrated excess / local robust spread
    half: int
    spread: float  # spread of the integrated excess there (counts x deg)
    d_A: float = math.nan


def excess_maps(x_deg: np.ndarray, resid: np.ndarray, sigma: np.ndarray, narrowest_fwhm_deg: float,
                max_scales: int | None = None) -> list[ExcessMap]:
    """:class:`ExcessMap` of a residual (counts, esds ``sigma``) at the ladder of widths from the
    narrowest peak (deg) up (``max_scales`` of them at most).

    A local MAD needs many independent windows: at widths with fewer than
    RELIABLE_WINDOWS in the pattern, broad lines themselves would set the spread they are judged
    by, so there the spread is at most the statistical one times the largest inflation (empirical
    / statistical spread, the residual's serial correlation) measured at the reliable widths."""
    x = np.asarray(x_deg, float)
    dx = np.gradient(x)
    halves = _halves(len(x), narrowest_fwhm_deg / float(np.median(dx)))[:max_scales]
    maps = [_excess_map(np.asarray(resid, float), dx, h, np.asarray(sigma, float)) for h in halves]
    inflation = []
    for m in maps:
        if len(x) / (6 * m.half + 1) >= RELIABLE_WINDOWS:
            with np.errstate(invalid="ignore", divide="ignore"):
                inflation.append(float(np.nanmedian(m.spread / m.stat)))
        elif inflation and np.isfinite(max(inflation)):
            m.spread = np.fmin(m.spread, max(max(inflation), 1.0) * m.stat)
    return maps


def residual_lines(x_deg: np.ndarray, resid: np.ndarray, maps: list[ExcessMap], min_sigma: float,
                   explained: Any = None) -> list[ResidualLine]:
    """Positive lines of ``resid`` (counts) on ``x_deg`` whose integrated excess (``maps``, see
    :func:`excess_maps`) stands more than ``min_sigma`` spreads out, each measured by a local
    pseudo-Voigt fit (position, FWHM, area); strongest first. ``explained(center_deg, fwhm_deg,
    height)``: True for a line the model explains, left out before it is measured (the
    candidate's own position, width and height are used for that)."""
    x = np.asarray(x_deg, float)
    r = np.asarray(resid, float)
    cands: list[tuple[float, int, ExcessMap]] = []
    for m in maps:
        z = m.z
        zf = np.where(np.isfinite(z), z, -np.inf)
        peak = ndimage.maximum_filter1d(zf, size=2 * m.half + 1, mode="nearest")
        idx = np.nonzero((zf >= peak) & (zf > min_sigma) & (m.excess > 0))[0]
        cands += [(float(zf[i]), int(i), m) for i in idx]
    cands.sort(key=lambda t: -t[0])
    accepted: list[tuple[int, int]] = []
    out: list[ResidualLine] = []
    for z, i, m in cands:
        # a weaker candidate near a stronger one is the same line seen at another width, unless it
        # is much narrower (a narrow line on a broad hump)
        if any(abs(i - j) <= 1.5 * max(h, m.half) and 3 * m.half >= h for j, h in accepted):
            continue
        accepted.append((i, m.half))
        if explained is not None:
            f0 = (2 * m.half + 1) / 1.2 * float(np.median(np.diff(x)))
            if explained(float(x[i]), f0, 0.94 * float(m.excess[i]) / CORE_AREA / f0):
                continue
        line = _measure(x, r, i, m, z)
        if line is not None:
            out.append(line)
    return out


def _measure(x: np.ndarray, r: np.ndarray, i: int, m: ExcessMap, z: float) -> ResidualLine | None:
    """Pseudo-Voigt (eta 0.5) + linear baseline fitted to the residual around a candidate; when
    that fit leaves the candidate (another line in the window) or runs to a width bound, the
    candidate's own estimate (its excess, core width and position) is kept."""
    h = m.half
    step = float(np.median(np.diff(x)))
    f0 = max((2 * h + 1) / 1.2 * step, 1e-6)
    area0 = max(float(m.excess[i]) / CORE_AREA, 1e-12)
    lo, hi = max(0, i - 4 * h - 2), min(len(x), i + 4 * h + 3)
    xs, ys = x[lo:hi], r[lo:hi]
    c, f, a = float(x[i]), f0, area0

    def pv(t, c, f, a, b0, b1):
        return a * pseudo_voigt(t, c, f, 0.5) + b0 + b1 * (t - x[i])

    try:
        p, _ = optimize.curve_fit(pv, xs, ys, p0=[x[i], f0, area0, 0.0, 0.0],
                                  bounds=([xs[0], f0 / 3, 0.0, -np.inf, -np.inf], [xs[-1], f0 * 3, np.inf, np.inf, np.inf]),
                                  max_nfev=80, x_scale="jac")
        if abs(p[0] - x[i]) <= max(2 * h, 1) * step and f0 / 2.9 < p[1] < 2.9 * f0 and p[2] > 0:
            c, f, a = float(p[0]), float(p[1]), float(p[2])
    except (RuntimeError, ValueError):
        pass
    height = a * float(pseudo_voigt(np.array([c]), c, f, 0.5)[0])
    return ResidualLine(i, c, f, 0.5, a, height, float(z), h, float(m.spread[i]))
