"""Windowed peak profiles on the pattern grid: the inner loop of every model evaluation.

Each reflection's area-normalised pseudo-Voigt (with GSAS-II SH/L: its Finger-Cox-Jephcoat sum
of pseudo-Voigts) is evaluated only within +/- `WINDOW_FWHM` FWHM of its position, for all
reflections of a phase at once, in a few groups of similar window width (`_window_groups`). With
``derivs`` the same pass gives d/d(centre), d/d(FWHM) and d/d(eta) for the Jacobian
(`insitu_xrd.fit.derivatives`). The window geometry is shared by the profiles and their
derivatives at one point (`_window_geometry`, kept for the last few points).

Mixed into `insitu_xrd.fit.model._Problem` (`_ProfileWindows`); uses its grid ``x``, ``step``,
``uniform``, ``x0``, ``_grid`` and ``_geometry_cache``.
"""

from __future__ import annotations

import numpy as np

from insitu_xrd.core.pattern import WINDOW_FWHM
from insitu_xrd.core.profiles import fcj_extent_deg, fcj_node_count, fcj_nodes


_FOUR_LN2 = 4.0 * np.log(2.0)
_GAUSS_NORM = np.sqrt(4.0 * np.log(2.0) / np.pi)


class _ProfileWindows:
    """`_Problem` methods evaluating windowed profiles (and their derivatives) on its grid."""

    def _window_groups(self, t: np.ndarray, fwhm: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Reflections near the fitted range, in up to 4 groups of similar window half-width:
        [(peak indices, half-width k in grid steps)] (k = WINDOW_FWHM FWHM / step + 1, <= n)."""
        x = self.x
        n = len(x)
        ok = np.isfinite(t) & (t > x[0] - 0.5 - 5 * np.nanmax(fwhm, initial=0)) & (t < x[-1] + 0.5 + 5 * np.nanmax(fwhm, initial=0))
        sel = np.nonzero(ok)[0]
        if sel.size == 0:
            return []
        K = np.minimum(np.ceil(WINDOW_FWHM * fwhm[sel] / self.step).astype(int) + 1, n)
        order = np.argsort(K)
        return [(sel[g], int(K[g].max())) for g in np.array_split(order, min(4, len(order))) if g.size]

    def _blocks(self, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray, sh_l: float = 0.0, derivs: bool = False):
        """Windowed profile values: list of (peak indices, grid indices (k, 2K), values (k, 2K)),
        with derivs also d/d(centre), d/d(FWHM), d/d(eta) of the (area-normalised) profiles:
        (peak indices, grid indices, P, dP/dt, dP/dH, dP/deta).

        With sh_l > 0 (GSAS-II SH/L) each profile is the FCJ weighted sum of pseudo-Voigts
        (`insitu_xrd.core.profiles.fcj_nodes`), the window widened on the tail side (the
        derivatives then hold the node positions and weights fixed: a < 1 % approximation of
        d/d(centre), used only for the Jacobian)."""
        if sh_l <= 0:
            return self._blocks_pv(t, fwhm, eta, derivs)
        x = self.x
        n = len(x)
        out = []
        for idx_pk, k in self._window_groups(t, fwhm):
            tk = t[idx_pk]
            h = fwhm[idx_pk, None]
            e = eta[idx_pk, None]
            ext = fcj_extent_deg(tk, sh_l)
            kext = int(np.ceil(float(ext.max()) / self.step))
            shift, weight = fcj_nodes(tk, sh_l, fcj_node_count(tk, sh_l, h[:, 0]))
            # the tail is on the low-angle side below 90 deg, on the high-angle side above
            lo_side = kext if np.any(tk <= 90.0) else 0
            hi_side = kext if np.any(tk > 90.0) else 0
            ic = np.searchsorted(x, tk)
            offs = np.arange(-k - lo_side, k + hi_side + 1)
            idx = ic[:, None] + offs[None, :]
            valid = (idx >= 0) & (idx < n)
            idx = np.clip(idx, 0, n - 1)
            if self.uniform:
                dx = (self.x0 + idx * self.step) - tk[:, None]
            else:
                dx = x[idx] - tk[:, None]
            valid &= np.abs(dx) < WINDOW_FWHM * h + ext[:, None]
            # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
            kg = min(k, int(np.ceil(3.5 * float(h.max()) / self.step)) + 1)
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
                gau = (_GAUSS_NORM / h) * np.exp((-_FOUR_LN2) * (dg / h) ** 2)
                prof[:, sl] += (wj * (1.0 - e)) * gau
                if derivs:
                    d_t[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * _FOUR_LN2 * dg / (h * h))
                    d_h[:, sl] += (wj * (1.0 - e)) * gau * (2.0 * _FOUR_LN2 * dg * dg / (h * h * h) - 1.0 / h)
                    d_e[:, sl] -= wj * gau
            prof *= valid
            if derivs:
                out.append((idx_pk, idx, prof, d_t * valid, d_h * valid, d_e * valid))
            else:
                out.append((idx_pk, idx, prof))
        return out

    def _window_geometry(self, t: np.ndarray, fwhm: np.ndarray) -> list:
        """Windows of the pseudo-Voigt blocks (no FCJ): per group of reflections (peak indices,
        grid indices, dx = grid - centre, valid mask, Gaussian column slice). Kept for the last
        few (t, FWHM): the profiles and their derivatives at one point share them."""
        key = (t.tobytes(), fwhm.tobytes())
        cache = self._geometry_cache
        hit = cache.get(key)
        if hit is not None:
            return hit
        x = self.x
        n = len(x)
        out = []
        for idx_pk, k in self._window_groups(t, fwhm):
            tk = t[idx_pk]
            h = fwhm[idx_pk, None]
            ic = np.searchsorted(x, tk)
            offs = np.arange(-k, k + 1)
            idx = ic[:, None] + offs[None, :]
            valid = idx.view(np.uint64) < n  # 0 <= idx < n (negative: huge as unsigned)
            np.clip(idx, 0, n - 1, out=idx)
            # uniform grid: x0 + i * step (`_grid`), as computed per element before
            dx = self._grid[idx] - tk[:, None]
            valid &= np.abs(dx) < WINDOW_FWHM * h
            # Gaussian part only where it is not negligible (|dx| < 3.5 FWHM: < 1e-14 beyond)
            kg = min(k, int(np.ceil(3.5 * float(h.max()) / self.step)) + 1)
            # the mask as 0/1 floats: multiplying by it is exact and faster than by booleans
            out.append((idx_pk, idx, dx, valid.astype(float), slice(k - kg, k + kg + 1)))
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[key] = out
        return out

    def _blocks_pv(self, t: np.ndarray, fwhm: np.ndarray, eta: np.ndarray, derivs: bool):
        """`_blocks` without FCJ asymmetry (single pseudo-Voigts)."""
        out = []
        for idx_pk, idx, dx, valid, sl in self._window_geometry(t, fwhm):
            h = fwhm[idx_pk, None]
            e = eta[idx_pk, None]
            dx2 = 4.0 * dx * dx
            if not derivs:
                # Lorentzian part over the whole window: (2/pi) h / (h^2 + 4 dx^2)
                prof = (e * h * (2.0 / np.pi)) / (h * h + dx2)
                dxg = dx[:, sl]
                prof[:, sl] += ((1.0 - e) * (_GAUSS_NORM / h)) * np.exp((-_FOUR_LN2) * (dxg / h) ** 2)
                prof *= valid
                out.append((idx_pk, idx, prof))
                continue
            den = h * h + dx2
            lor = (h * (2.0 / np.pi)) / den
            prof = e * lor
            d_t = prof * (8.0 * dx / den)
            d_h = e * (2.0 / np.pi) * (dx2 - h * h) / (den * den)
            d_e = lor
            dg = dx[:, sl]
            gau = (_GAUSS_NORM / h) * np.exp((-_FOUR_LN2) * (dg / h) ** 2)
            ge = (1.0 - e) * gau
            prof[:, sl] += ge
            d_t[:, sl] += ge * (2.0 * _FOUR_LN2 * dg / (h * h))
            d_h[:, sl] += ge * (2.0 * _FOUR_LN2 * dg * dg / (h * h * h) - 1.0 / h)
            d_e[:, sl] -= gau
            prof *= valid
            d_t *= valid
            d_h *= valid
            d_e *= valid
            out.append((idx_pk, idx, prof, d_t, d_h, d_e))
        return out
