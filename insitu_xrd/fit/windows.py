"""Windowed peak profiles on the pattern grid: the inner loop of every model evaluation.

Plain functions of arrays (like lmfit's lineshapes), and `GridProfiles`, which holds one
pattern's grid and the window geometry of its last few evaluations.

Each reflection's area-normalised pseudo-Voigt (with GSAS-II SH/L: its Finger-Cox-Jephcoat sum
of pseudo-Voigts) is evaluated only within +/- `WINDOW_FWHM` FWHM of its position, for all
reflections of a phase at once, in a few groups of similar window width (`window_groups`). With
``derivs`` the same pass gives d/d(centre), d/d(FWHM) and d/d(eta) for the Jacobian
(`insitu_xrd.fit.derivatives`). A block is (peak indices, grid indices (k, 2K), profile values
(k, 2K)) and, with derivatives, also dP/dt, dP/dH, dP/deta.
"""

from __future__ import annotations

import numpy as np

from insitu_xrd.core.pattern import WINDOW_FWHM
from insitu_xrd.core.profiles import fcj_extent_deg, fcj_node_count, fcj_nodes

__all__ = ["FOUR_LN2", "GAUSS_NORM", "window_groups", "fcj_blocks", "window_geometry", "pv_blocks", "GridProfiles"]

FOUR_LN2 = 4.0 * np.log(2.0)
GAUSS_NORM = np.sqrt(4.0 * np.log(2.0) / np.pi)


def window_groups(x: np.ndarray, step: float, t: np.ndarray, fwhm: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Reflections at positions ``t`` (deg) near the grid ``x`` (smallest spacing ``step``), in up
    to 4 groups of similar window half-width: [(peak indices, half-width k in grid steps)]
    (k = WINDOW_FWHM FWHM / step + 1, <= len(x))."""
    n = len(x)
    ok = np.isfinite(t) & (t > x[0] - 0.5 - 5 * np.nanmax(fwhm, initial=0)) & (t < x[-1] + 0.5 + 5 * np.nanmax(fwhm, initial=0))
    sel = np.nonzero(ok)[0]
    if sel.size == 0:
        return []
    K = np.minimum(np.ceil(WINDOW_FWHM * fwhm[sel] / step).astype(int) + 1, n)
    order = np.argsort(K)
    return [(sel[g], int(K[g].max())) for g in np.array_split(order, min(4, len(order))) if g.size]


def fcj_blocks(x: np.ndarray, step: float, uniform: bool, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray,
               sh_l: float, derivs: bool = False) -> list[tuple]:
    """Windowed profiles with GSAS-II SH/L asymmetry (sh_l > 0): each the FCJ weighted sum of
    pseudo-Voigts (`insitu_xrd.core.profiles.fcj_nodes`), the window widened on the tail side.
    ``uniform``: the grid is x[0] + i * step. With derivs the derivatives hold the node
    positions and weights fixed (a < 1 % approximation of d/d(centre), used only for the
    Jacobian)."""
    n = len(x)
    x0 = float(x[0])
    out = []
    for idx_pk, k in window_groups(x, step, t, fwhm):
        tk = t[idx_pk]
        h = fwhm[idx_pk, None]
        e = eta[idx_pk, None]
        ext = fcj_extent_deg(tk, sh_l)
        kext = int(np.ceil(float(ext.max()) / step))
        shift, weight = fcj_nodes(tk, sh_l, fcj_node_count(tk, sh_l, h[:, 0]))
        # the tail is on the low-angle side below 90 deg, on the high-angle side above
        lo_side = kext if np.any(tk <= 90.0) else 0
        hi_side = kext if np.any(tk > 90.0) else 0
        ic = np.searchsorted(x, tk)
        offs = np.arange(-k - lo_side, k + hi_side + 1)
        idx = ic[:, None] + offs[None, :]
        valid = (idx >= 0) & (idx < n)
        idx = np.clip(idx, 0, n - 1)
        if uniform:
            dx = (x0 + idx * step) - tk[:, None]
        else:
            dx = x[idx] - tk[:, None]
        valid &= np.abs(dx) < WINDOW_FWHM * h + ext[:, None]
        # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
        kg = min(k, int(np.ceil(3.5 * float(h.max()) / step)) + 1)
        centre = k + lo_side  # column of dx ~ 0
        sl = slice(centre - kg - lo_side, centre + kg + hi_side + 1)
        prof = np.zeros(dx.shape)
        if derivs:
            d_t, d_h, d_e = np.zeros(dx.shape), np.zeros(dx.shape), np.zeros(dx.shape)
        for j in range(shift.shape[1]):
            wj = weight[:, j, None]
            dj = dx - shift[:, j, None]
            den = h * h + 4.0 * dj * dj
            lor = (h * (2.0 / np.pi)) / den
            prof += (wj * e) * lor
            if derivs:
                d_t += (wj * e) * lor * (8.0 * dj / den)
                d_h += (wj * e) * (2.0 / np.pi) * (4.0 * dj * dj - h * h) / (den * den)
                d_e += wj * lor
            dg = dj[:, sl]
            gau = (GAUSS_NORM / h) * np.exp((-FOUR_LN2) * (dg / h) ** 2)
            prof[:, sl] += (wj * (1.0 - e)) * gau
            if derivs:
                d_t[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * FOUR_LN2 * dg / (h * h))
                d_h[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * FOUR_LN2 * dg * dg / (h * h * h) - 1.0 / h)
                d_e[:, sl] -= wj * gau
        prof *= valid
        if derivs:
            out.append((idx_pk, idx, prof, d_t * valid, d_h * valid, d_e * valid))
        else:
            out.append((idx_pk, idx, prof))
    return out


def window_geometry(x: np.ndarray, points: np.ndarray, step: float, t: np.ndarray, fwhm: np.ndarray) -> list[tuple]:
    """Windows of the pseudo-Voigt blocks (no FCJ): per group of reflections (peak indices, grid
    indices, dx = grid - centre, valid mask as 0/1 floats, Gaussian column slice). ``points``:
    the grid values used for dx (x itself, or x[0] + i * step on a uniform grid)."""
    n = len(x)
    out = []
    for idx_pk, k in window_groups(x, step, t, fwhm):
        tk = t[idx_pk]
        h = fwhm[idx_pk, None]
        ic = np.searchsorted(x, tk)
        offs = np.arange(-k, k + 1)
        idx = ic[:, None] + offs[None, :]
        valid = idx.view(np.uint64) < n  # 0 <= idx < n (negative: huge as unsigned)
        np.clip(idx, 0, n - 1, out=idx)
        dx = points[idx] - tk[:, None]
        valid &= np.abs(dx) < WINDOW_FWHM * h
        # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
        kg = min(k, int(np.ceil(3.5 * float(h.max()) / step)) + 1)
        # the mask as 0/1 floats: multiplying by it is exact and faster than by booleans
        out.append((idx_pk, idx, dx, valid.astype(float), slice(k - kg, k + kg + 1)))
    return out


def pv_blocks(geometry: list[tuple], fwhm: np.ndarray, eta: np.ndarray, derivs: bool = False) -> list[tuple]:
    """Windowed pseudo-Voigt profiles (no asymmetry) on the windows of `window_geometry`."""
    out = []
    # (the same arithmetic as the plain expressions, operation for operation, in fewer
    # temporaries: the results are identical and the window arrays are the big ones)
    for idx_pk, idx, dx, valid, sl in geometry:
        h = fwhm[idx_pk, None]
        e = eta[idx_pk, None]
        hh = h * h
        dx2 = 4.0 * dx
        np.multiply(dx2, dx, out=dx2)  # 4 dx^2
        dg = dx[:, sl]
        gau = dg / h
        np.multiply(gau, gau, out=gau)  # (dg / h)^2
        np.multiply(gau, -FOUR_LN2, out=gau)
        np.exp(gau, out=gau)
        if not derivs:
            # Lorentzian part over the whole window: (2/pi) h / (h^2 + 4 dx^2)
            prof = np.add(hh, dx2, out=dx2)
            np.divide(e * h * (2.0 / np.pi), prof, out=prof)
            np.multiply((1.0 - e) * (GAUSS_NORM / h), gau, out=gau)
            prof[:, sl] += gau
            prof *= valid
            out.append((idx_pk, idx, prof))
            continue
        np.multiply(GAUSS_NORM / h, gau, out=gau)
        den = hh + dx2
        lor = (h * (2.0 / np.pi)) / den
        prof = e * lor
        d_t = 8.0 * dx
        np.divide(d_t, den, out=d_t)
        np.multiply(prof, d_t, out=d_t)
        d_h = dx2
        np.subtract(dx2, hh, out=d_h)
        np.multiply(e * (2.0 / np.pi), d_h, out=d_h)
        np.multiply(den, den, out=den)
        np.divide(d_h, den, out=d_h)
        d_e = lor
        ge = (1.0 - e) * gau
        prof[:, sl] += ge
        tmp = 2.0 * FOUR_LN2 * dg
        np.divide(tmp, hh, out=tmp)
        np.multiply(ge, tmp, out=tmp)
        d_t[:, sl] += tmp  # ge * (2 4ln2 dg / h^2)
        tmp = 2.0 * FOUR_LN2 * dg
        np.multiply(tmp, dg, out=tmp)
        np.divide(tmp, hh * h, out=tmp)
        np.subtract(tmp, 1.0 / h, out=tmp)
        np.multiply(ge, tmp, out=tmp)
        d_h[:, sl] += tmp  # ge * (2 4ln2 dg^2 / h^3 - 1/h)
        d_e[:, sl] -= gau
        prof *= valid
        d_t *= valid
        d_h *= valid
        d_e *= valid
        out.append((idx_pk, idx, prof, d_t, d_h, d_e))
    return out


class GridProfiles:
    """Profiles on one pattern's grid ``x`` (sorted, deg): `blocks` picks the pseudo-Voigt or the
    FCJ form. The window geometry is kept for the last few (t, FWHM): the profiles and their
    derivatives at one point share it."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.step = float(np.min(np.diff(x))) if len(x) > 1 else 1.0
        # uniform grids (the usual case) get their offsets arithmetically instead of by gathering
        self.uniform = bool(len(x) > 1 and np.allclose(np.diff(x), self.step, rtol=1e-9, atol=0.0))
        self.points = (float(x[0]) + np.arange(len(x)) * self.step) if self.uniform else x
        self._geometry: dict = {}

    def geometry(self, t: np.ndarray, fwhm: np.ndarray) -> list[tuple]:
        """`window_geometry` of (t, fwhm), kept for the last 8."""
        key = (t.tobytes(), fwhm.tobytes())
        hit = self._geometry.get(key)
        if hit is None:
            hit = window_geometry(self.x, self.points, self.step, t, fwhm)
            if len(self._geometry) >= 8:
                self._geometry.pop(next(iter(self._geometry)))
            self._geometry[key] = hit
        return hit

    def blocks(self, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray, sh_l: float = 0.0, derivs: bool = False):
        """Windowed profiles of reflections at t (deg) with FWHM (deg), eta and SH/L (see the
        module docstring for the block layout)."""
        if sh_l <= 0:
            return pv_blocks(self.geometry(t, fwhm), fwhm, eta, derivs)
        return fcj_blocks(self.x, self.step, self.uniform, t, fwhm, eta, sh_l, derivs)
