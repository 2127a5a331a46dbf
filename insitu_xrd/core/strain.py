"""Lattice strain, its esd, phase-fraction averages, smooth curves for FEA, eigenstrain tensors.

Pure numpy/scipy; no file I/O.

- Strain against a reference: eps = value / value_ref - 1 (a, c, or the cell volume V).
  esd: sigma_eps^2 = (sigma / ref)^2 + (value * sigma_ref / ref^2)^2, the reference term only when
  the reference's esd is included (a reference taken from a measured frame); the reference frame
  itself has eps = 0 exactly and esd 0 (fully correlated with itself).
- Phase-fraction average over the phases present at a frame (finite fraction and strain):
  eps = sum f_p eps_p / sum f_p, esd from the strain esds and the fraction esds
  (d eps / d f_p = (eps_p - eps) / sum f), all assumed independent.
- Smooth curve: duplicated abscissae are merged (inverse-variance mean), a penalised cubic
  smoothing spline (scipy ``make_smoothing_spline``, weights 1/esd^2) is fitted with the penalty
  chosen so that chi2 = sum((y - f)/esd)^2 equals the number of independent points (Reinsch's
  criterion: the curve departs from the data by about one esd per point), and a PCHIP through the
  smoothed node values gives the final curve, which is monotone wherever the smoothed nodes are
  (no overshoot between nodes). The esd of the curve is propagated through the (linear) smoother.
- Eigenstrain: a hexagonal (R-3m, hexagonal axes) crystal strained by eps_a, eps_c has
  eps = diag(eps_a, eps_a, eps_c) in the crystal frame (x, y in the basal plane, z || c); its
  average over random crystal orientations is isotropic, (2 eps_a + eps_c)/3 times the identity
  (tr/3 is rotation invariant), the linearised volumetric strain divided by 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "relative_strain",
    "hexagonal_volume_A3",
    "phase_weighted_mean",
    "merge_duplicates",
    "SmoothCurve",
    "smooth_curve",
    "eigenstrain_tensor",
    "isotropic_eigenstrain",
]


def relative_strain(
    value: np.ndarray,
    value_esd: np.ndarray | None,
    reference: float,
    reference_esd: float = 0.0,
    include_reference_esd: bool = True,
    reference_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Strain eps = value / reference - 1 and its esd.

    ``reference_index``: position (last axis) of the frame that *is* the reference; its strain is
    0 and its esd 0 exactly. Without esds (``value_esd`` None) the esd is NaN.
    """
    v = np.asarray(value, dtype=float)
    ref = float(reference)
    if not np.isfinite(ref) or ref == 0.0:
        raise ValueError(f"reference value must be finite and non-zero, got {reference}")
    eps = v / ref - 1.0
    if value_esd is None:
        esd = np.full_like(eps, np.nan)
    else:
        s = np.asarray(value_esd, dtype=float)
        var = (s / ref) ** 2
        if include_reference_esd and reference_esd:
            var = var + (v * float(reference_esd) / ref**2) ** 2
        esd = np.sqrt(var)
    if reference_index is not None:
        eps = np.array(eps, copy=True)
        esd = np.array(esd, copy=True)
        eps[..., reference_index] = np.where(np.isfinite(v[..., reference_index]), 0.0, np.nan)
        esd[..., reference_index] = np.where(np.isfinite(v[..., reference_index]), 0.0, np.nan)
    return eps, esd


def hexagonal_volume_A3(a_A: float | np.ndarray, c_A: float | np.ndarray) -> np.ndarray:
    """Volume of the hexagonal cell, sqrt(3)/2 a^2 c (A^3)."""
    return np.sqrt(3.0) / 2.0 * np.asarray(a_A, dtype=float) ** 2 * np.asarray(c_A, dtype=float)


def phase_weighted_mean(
    values: np.ndarray,
    values_esd: np.ndarray,
    fractions: np.ndarray,
    fractions_esd: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction-weighted mean over the last axis (phases) of per-phase quantities.

    A phase is present at a frame when its fraction is finite and > 0 and its value finite;
    absent phases are left out (a NaN fraction means the phase was not refined). Frames with no
    phase present give NaN. esd: value esds and fraction esds (NaN esd -> 0) propagated.
    """
    y = np.asarray(values, dtype=float)
    sy = np.nan_to_num(np.asarray(values_esd, dtype=float), nan=0.0)
    f = np.asarray(fractions, dtype=float)
    sf = np.zeros_like(f) if fractions_esd is None else np.nan_to_num(np.asarray(fractions_esd, dtype=float), nan=0.0)
    present = np.isfinite(f) & (f > 0) & np.isfinite(y)
    w = np.where(present, f, 0.0)
    wsum = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, y, 0.0) * w
        mean = mean.sum(axis=-1) / wsum
        dy = w / wsum[..., None]
        df = np.where(present, y - mean[..., None], 0.0) / wsum[..., None]
        var = np.sum(np.where(present, (dy * sy) ** 2 + (df * sf) ** 2, 0.0), axis=-1)
    ok = wsum > 0
    return np.where(ok, mean, np.nan), np.where(ok, np.sqrt(var), np.nan)


def merge_duplicates(
    x: np.ndarray, y: np.ndarray, y_esd: np.ndarray | None = None, x_tol: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by x, drop non-finite points, merge points whose x differ by <= ``x_tol``.

    Merged points: x is the plain mean, y the inverse-variance mean and its esd
    1/sqrt(sum 1/esd^2) (plain mean and esd/sqrt(n) when esds are missing or zero).
    Returns (x, y, esd) strictly increasing in x.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    s = np.full_like(y, np.nan) if y_esd is None else np.asarray(y_esd, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    x, y, s = x[good], y[good], s[good]
    order = np.argsort(x, kind="stable")
    x, y, s = x[order], y[order], s[order]
    if x.size == 0:
        return x, y, s
    group = np.concatenate([[0], np.cumsum(np.diff(x) > x_tol)])
    n_groups = int(group[-1]) + 1
    if n_groups == x.size:
        return x, y, s
    xs, ys, ss = np.empty(n_groups), np.empty(n_groups), np.empty(n_groups)
    for g in range(n_groups):
        sel = group == g
        xg, yg, sg = x[sel], y[sel], s[sel]
        xs[g] = xg.mean()
        if np.all(np.isfinite(sg) & (sg > 0)):
            w = 1.0 / sg**2
            ys[g] = np.sum(w * yg) / w.sum()
            ss[g] = 1.0 / np.sqrt(w.sum())
        else:
            ys[g] = yg.mean()
            ss[g] = np.nanmean(sg) / np.sqrt(sel.sum()) if np.any(np.isfinite(sg)) else np.nan
    return xs, ys, ss


@dataclass
class SmoothCurve:
    """A smooth curve y(x) through data with esds; call it to evaluate (NaN outside the data)."""

    x_nodes: np.ndarray
    y_nodes: np.ndarray  # smoothed values at the (merged) data abscissae
    y_nodes_esd: np.ndarray
    method: str  # "spline" (smoothing spline -> PCHIP) or "pchip" (through the data)
    lam: float = np.nan  # smoothing-spline penalty (x scaled to 0..1, weights 1/esd^2 scaled to mean 1)
    chi2: float = np.nan  # sum of squared normalised residuals at the nodes
    n_points: int = 0
    target_chi2: float = np.nan
    notes: list[str] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._interp(self.y_nodes, x)

    def esd(self, x: np.ndarray) -> np.ndarray:
        """esd of the curve at x (propagated from the data esds through the smoother)."""
        return self._interp(self.y_nodes_esd, x)

    def _interp(self, nodes: np.ndarray, x: np.ndarray) -> np.ndarray:
        from scipy.interpolate import PchipInterpolator

        xq = np.asarray(x, dtype=float)
        if not np.all(np.isfinite(nodes)):
            return np.full(xq.shape, np.nan)
        if self.x_nodes.size == 1:
            return np.where(np.isclose(xq, self.x_nodes[0]), nodes[0], np.nan)
        return PchipInterpolator(self.x_nodes, nodes, extrapolate=False)(xq)


def _spline_operator(x: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """Matrix S with smoothed = S @ y for the weighted smoothing spline at penalty lam."""
    from scipy.interpolate import make_smoothing_spline

    eye = np.eye(x.size)
    try:  # recent scipy fits all columns of a 2-D y at once
        return np.asarray(make_smoothing_spline(x, eye, w=w, lam=lam)(x))
    except ValueError:  # older scipy: one unit vector at a time
        return np.stack([make_smoothing_spline(x, e, w=w, lam=lam)(x) for e in eye], axis=1)


def smooth_curve(
    x: np.ndarray,
    y: np.ndarray,
    y_esd: np.ndarray | None,
    method: str = "spline",
    x_tol: float = 0.0,
    target_chi2: float | None = None,
) -> SmoothCurve:
    """Smooth, shape-preserving curve through (x, y +/- esd) for use as an FEA input table.

    ``method="spline"``: smoothing spline with chi2 = ``target_chi2`` (default: the number of
    merged points N), then PCHIP through the smoothed nodes. Needs finite, positive esds and at
    least 5 distinct x; otherwise (or with ``method="pchip"``) a PCHIP through the merged data.
    Repeated / unsorted x are sorted and merged first (``merge_duplicates``).
    """
    from scipy.interpolate import make_smoothing_spline

    if method not in ("spline", "pchip"):
        raise ValueError(f"method must be 'spline' or 'pchip', got {method!r}")
    xs, ys, ss = merge_duplicates(x, y, y_esd, x_tol=x_tol)
    n = xs.size
    notes: list[str] = []
    if n == 0:
        raise ValueError("no finite (x, y) points to build a curve from")
    positive = np.isfinite(ss) & (ss > 0)
    if positive.any() and np.all(np.isfinite(ss)) and not positive.all():
        # an exact point (the reference frame: eps = 0, esd 0) gets the smallest esd of the others
        ss = np.where(positive, ss, ss[positive].min())
        notes.append("zero esd (reference frame) replaced by the smallest esd of the other points")
    have_esd = bool(np.all(np.isfinite(ss) & (ss > 0)))
    if method == "spline" and not have_esd:
        notes.append("esds missing or zero: PCHIP through the data instead of a smoothing spline")
        method = "pchip"
    if method == "spline" and n < 5:
        notes.append(f"only {n} distinct points: PCHIP through the data instead of a smoothing spline")
        method = "pchip"
    if method == "pchip":
        return SmoothCurve(xs, ys, ss if have_esd else np.full(n, np.nan), "pchip", n_points=n, notes=notes,
                           chi2=0.0 if have_esd else np.nan)

    w = 1.0 / ss**2
    wn = w / w.mean()  # normalised weights: the penalty scale below is independent of the esd size
    # rescale x to 0..1 so the penalty range below does not depend on the abscissa's units
    span = xs[-1] - xs[0]
    u = (xs - xs[0]) / span
    target = float(n if target_chi2 is None else target_chi2)

    def chi2_at(log_lam: float) -> float:
        f = make_smoothing_spline(u, ys, w=wn, lam=10.0**log_lam)(u)
        return float(np.sum(w * (ys - f) ** 2))

    lo, hi = -16.0, 8.0
    c_hi = chi2_at(hi)
    if c_hi <= target:
        # even (almost) a straight line fits within the esds: the stiffest curve
        log_lam = hi
        notes.append("data within their esds of a straight line: the stiffest spline is used")
    else:
        c_lo = chi2_at(lo)
        if c_lo >= target:
            log_lam = lo
            notes.append("chi2 target not reachable: near-interpolating spline")
        else:
            for _ in range(60):  # bisection on log10(lam); chi2 increases with lam
                mid = 0.5 * (lo + hi)
                if chi2_at(mid) > target:
                    hi = mid
                else:
                    lo = mid
                if hi - lo < 1e-3:
                    break
            log_lam = 0.5 * (lo + hi)
    lam = 10.0**log_lam
    fitted = make_smoothing_spline(u, ys, w=wn, lam=lam)(u)
    chi2 = float(np.sum(w * (ys - fitted) ** 2))
    S = _spline_operator(u, wn, lam)
    esd_nodes = np.sqrt(np.einsum("ij,j,ij->i", S, ss**2, S))
    return SmoothCurve(xs, fitted, esd_nodes, "spline", lam=lam, chi2=chi2, n_points=n,
                       target_chi2=target, notes=notes)


def eigenstrain_tensor(eps_a: np.ndarray, eps_c: np.ndarray) -> np.ndarray:
    """Crystal-frame eigenstrain diag(eps_a, eps_a, eps_c), shape (..., 3, 3)."""
    ea = np.asarray(eps_a, dtype=float)
    ec = np.broadcast_to(np.asarray(eps_c, dtype=float), ea.shape)
    out = np.zeros(ea.shape + (3, 3))
    out[..., 0, 0] = ea
    out[..., 1, 1] = ea
    out[..., 2, 2] = ec
    return out


def isotropic_eigenstrain(eps_a: np.ndarray, eps_c: np.ndarray) -> np.ndarray:
    """Orientation-averaged (random polycrystal) eigenstrain: (2 eps_a + eps_c) / 3."""
    return (2.0 * np.asarray(eps_a, dtype=float) + np.asarray(eps_c, dtype=float)) / 3.0
