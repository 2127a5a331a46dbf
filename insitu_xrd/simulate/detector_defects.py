"""What a real area-detector image of an operando cell has and an ideal powder frame has not.

- Spotty rings: the Li-metal counter electrode is a rolled foil of large, textured grains, so
  each of its rings is a few bright spots on a weak continuous ring, not a uniform circle.
  `spotty_ring_map` gives a per-pixel factor (mean 1 around every ring, so the azimuthal average
  keeps the powder intensity) that multiplies the Li part of a frame. The grains do not move, so
  the map is drawn once per dataset from a fixed seed.
- Dead lines: whole detector rows/columns that read 0 (a failed readout line of a flat panel).
- Hot pixels: isolated pixels that read the saturation value in every frame.

Both detector defects are fixed for a detector (same positions in every frame, from a fixed seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DetectorDefects", "spotty_ring_map", "PERKIN_SATURATION_COUNTS"]

#: a 16-bit flat panel (Perkin Elmer XRD 1621) saturates at 65535 counts
PERKIN_SATURATION_COUNTS = 65535


@dataclass(frozen=True)
class DetectorDefects:
    """Dead rows/columns (read 0) and hot pixels (read `saturation_counts`) of a detector."""

    shape: tuple[int, int]
    dead_rows: tuple[int, ...]
    dead_cols: tuple[int, ...]
    hot_pixels: tuple[tuple[int, int], ...]
    saturation_counts: int = PERKIN_SATURATION_COUNTS

    @classmethod
    def draw(cls, shape: tuple[int, int], rng: np.random.Generator, dead_rows: int = 2, dead_cols: int = 1,
             hot_fraction: float = 1e-4) -> "DetectorDefects":
        """Random defects: `dead_rows` rows and `dead_cols` columns away from the edges, and
        `hot_fraction` of the pixels (at least 5) hot, none of them on a dead line."""
        n_rows, n_cols = shape
        rows = tuple(sorted(int(r) for r in rng.choice(np.arange(n_rows // 10, n_rows - n_rows // 10), dead_rows, replace=False)))
        cols = tuple(sorted(int(c) for c in rng.choice(np.arange(n_cols // 10, n_cols - n_cols // 10), dead_cols, replace=False)))
        n_hot = max(5, int(round(hot_fraction * n_rows * n_cols)))
        flat = rng.choice(n_rows * n_cols, 3 * n_hot, replace=False)
        hot = [(int(f // n_cols), int(f % n_cols)) for f in flat]
        hot = [(r, c) for r, c in hot if r not in rows and c not in cols][:n_hot]
        return cls((int(n_rows), int(n_cols)), rows, cols, tuple(hot))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A copy of the image with the dead lines at 0 and the hot pixels saturated."""
        out = np.array(image, copy=True)
        if self.dead_rows:
            out[list(self.dead_rows), :] = 0
        if self.dead_cols:
            out[:, list(self.dead_cols)] = 0
        if self.hot_pixels:
            r, c = np.array(self.hot_pixels).T
            out[r, c] = self.saturation_counts
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dead_rows": list(self.dead_rows), "dead_cols": list(self.dead_cols),
                "hot_pixels_row_col": [list(p) for p in self.hot_pixels], "saturation_counts": self.saturation_counts}


def spotty_ring_map(two_theta_deg: np.ndarray, chi_deg: np.ndarray, ring_two_theta_deg: np.ndarray,
                    rng: np.random.Generator, spots_per_ring: tuple[int, int] = (3, 8),
                    spot_sigma_deg: tuple[float, float] = (1.0, 4.0), floor: float = 0.05) -> tuple[np.ndarray, list[dict]]:
    """Per-pixel intensity factor of a spotty (large-grained, textured) phase and the spots drawn.

    Every pixel belongs to the nearest ring in 2theta; around ring j the factor is
    floor + sum_k A_k exp(-(chi - chi_k)^2 / (2 s_k^2)) (chi periodic), with n_j spots drawn
    uniformly in `spots_per_ring`, chi_k uniform, s_k uniform in `spot_sigma_deg`, A_k exponential,
    then scaled so that its mean over the full circle is 1 (the powder average is kept).
    Returns (map with the shape of the inputs, [{ring_two_theta_deg, chi_deg, sigma_deg, height}]).
    """
    rings = np.sort(np.asarray(ring_two_theta_deg, dtype=float))
    tth = np.asarray(two_theta_deg, dtype=float)
    chi = np.asarray(chi_deg, dtype=float)
    if rings.size == 0:
        return np.ones_like(tth), []
    # nearest ring: midpoints between rings as bin edges
    which = np.searchsorted(0.5 * (rings[1:] + rings[:-1]), tth)
    chi_grid = np.linspace(-180.0, 180.0, 3601)
    profiles = np.empty((rings.size, chi_grid.size))
    spots: list[dict] = []
    for j, ring in enumerate(rings):
        n = int(rng.integers(spots_per_ring[0], spots_per_ring[1] + 1))
        centres = rng.uniform(-180.0, 180.0, n)
        sigmas = rng.uniform(*spot_sigma_deg, n)
        heights = rng.exponential(1.0, n)
        prof = np.zeros_like(chi_grid)
        for c, s, h in zip(centres, sigmas, heights):
            dchi = (chi_grid - c + 180.0) % 360.0 - 180.0
            prof += h * np.exp(-0.5 * (dchi / s) ** 2)
        prof = floor + prof / prof[:-1].mean() * (1.0 - floor)
        profiles[j] = prof / prof[:-1].mean()
        spots += [{"ring_two_theta_deg": float(ring), "chi_deg": float(c), "sigma_deg": float(s), "height": float(h)}
                  for c, s, h in zip(centres, sigmas, heights)]
    idx = np.clip(np.rint((chi + 180.0) / 0.1).astype(np.int64), 0, chi_grid.size - 1)
    return profiles[which, idx], spots
