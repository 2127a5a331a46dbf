"""Slow drifts of the beam during an operando series: incident flux and 2theta zero.

Flux: a storage ring between injections loses current (decay), and each injection ("top-up" or
refill) restores it in a step. The factor multiplies the whole 1D pattern of a frame (Bragg lines,
background, cell lines), as an unnormalised flux does: it is 1 at t = 0, falls exponentially by
`flux_drift_pct` % over each fill of `fill_period_s`, and steps back to 1 at each refill.

Zero: the beam position and the detector move by fractions of a pixel with the hutch
temperature, which shifts every ring by the same 2theta. The shift is 0 at t = 0 (the in-situ
calibration) and drifts as a slow ramp plus a daily-cycle-like oscillation:
zero(t) = Z (0.7 t / t_end + 0.3 sin(2 pi t / zero_period_s)), Z = `zero_drift_mdeg` 1e-3 deg.
Both are recorded per frame in truth.json (`flux_factor`, `zero_deg`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["BeamDrift"]


@dataclass(frozen=True)
class BeamDrift:
    """Flux loss per fill (%), fill period (s), zero drift scale (mdeg), zero oscillation period (s)."""

    flux_drift_pct: float = 0.0
    fill_period_s: float = 9000.0
    zero_drift_mdeg: float = 0.0
    zero_period_s: float = 10800.0

    @property
    def active(self) -> bool:
        return bool(self.flux_drift_pct) or bool(self.zero_drift_mdeg)

    def flux_factor(self, time_s: float) -> float:
        """Incident flux relative to t = 0 (decay within a fill, step back to 1 at each refill)."""
        if not self.flux_drift_pct:
            return 1.0
        phase = (float(time_s) % self.fill_period_s) / self.fill_period_s
        return float(np.exp(np.log1p(-self.flux_drift_pct / 100.0) * phase))

    def zero_deg(self, time_s: float, end_time_s: float) -> float:
        """2theta zero shift (deg) at time_s of a series that ends at end_time_s."""
        if not self.zero_drift_mdeg:
            return 0.0
        t = float(time_s)
        shape = 0.7 * t / max(float(end_time_s), 1.0) + 0.3 * np.sin(2.0 * np.pi * t / self.zero_period_s)
        return float(self.zero_drift_mdeg * 1e-3 * shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
