"""Cycler log of a constant-current first charge to a voltage cut-off, with exact x(t).

V(t) = OCV(x(t)) + I R + eta_c (1 - exp(-t / tau)) + measurement noise, with
x(t) = x_start - Q(t) / (m Q_th), Q(t) = I t / 3600 (mAh), I = C_rate x Q_th x m (mA): the C-rate
is relative to the theoretical capacity (0.1C = 27.5 mA/g for 275 mAh/g). Pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from insitu_xrd.simulate.scenario import nmc811_ocv_V

__all__ = ["CyclerSpec", "CyclerLog", "simulate_cycler"]


@dataclass(frozen=True)
class CyclerSpec:
    """Electrochemical protocol and cell constants (mass in mg, capacities in mAh/g, R in ohm)."""

    active_mass_mg: float = 4.0
    theoretical_capacity_mAh_g: float = 275.0
    c_rate: float = 0.1
    cutoff_V: float = 4.5
    x_start: float = 1.0
    resistance_ohm: float = 250.0
    concentration_overpotential_V: float = 0.02
    relaxation_tau_s: float = 900.0
    voltage_noise_V: float = 0.0003
    sample_period_s: float = 30.0

    @property
    def current_mA(self) -> float:
        return self.c_rate * self.theoretical_capacity_mAh_g * self.active_mass_mg * 1e-3

    def x_li(self, time_s: np.ndarray | float) -> np.ndarray:
        """Exact Li content at time t (s)."""
        q_mAh = self.current_mA * np.asarray(time_s, dtype=float) / 3600.0
        return self.x_start - q_mAh / (self.active_mass_mg * 1e-3 * self.theoretical_capacity_mAh_g)

    def capacity_mAh(self, time_s: np.ndarray | float) -> np.ndarray:
        return self.current_mA * np.asarray(time_s, dtype=float) / 3600.0

    def voltage_V(self, time_s: np.ndarray | float) -> np.ndarray:
        """Noise-free cell voltage at time t (s) during the charge."""
        t = np.asarray(time_s, dtype=float)
        pol = self.current_mA * 1e-3 * self.resistance_ohm + self.concentration_overpotential_V * (1.0 - np.exp(-t / self.relaxation_tau_s))
        return nmc811_ocv_V(self.x_li(t)) + pol

    def end_time_s(self) -> float:
        """Time (s) at which the noise-free voltage reaches the cut-off."""
        t_full = (self.x_start - 0.0) * self.active_mass_mg * 1e-3 * self.theoretical_capacity_mAh_g / self.current_mA * 3600.0
        lo, hi = 0.0, t_full
        if self.voltage_V(hi) < self.cutoff_V:
            return hi
        for _ in range(80):  # bisection; V(t) is monotone
            mid = 0.5 * (lo + hi)
            if self.voltage_V(mid) < self.cutoff_V:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["current_mA"] = self.current_mA
        d["end_time_s"] = self.end_time_s()
        d["x_end"] = float(self.x_li(self.end_time_s()))
        return d


@dataclass
class CyclerLog:
    """Sampled log: time (s), voltage (V), current (mA), capacity (mAh) since the start."""

    time_s: np.ndarray
    voltage_V: np.ndarray
    current_mA: np.ndarray
    capacity_mAh: np.ndarray

    def write_csv(self, path) -> None:
        data = np.column_stack([self.time_s, self.voltage_V, self.current_mA, self.capacity_mAh])
        np.savetxt(path, data, delimiter=",", header="time_s,voltage_V,current_mA,capacity_mAh", comments="",
                   fmt=["%.1f", "%.5f", "%.6f", "%.6f"])


def simulate_cycler(spec: CyclerSpec, seed: int | np.random.Generator | None = 0) -> CyclerLog:
    """Constant-current charge from t = 0 to the cut-off, sampled every `spec.sample_period_s`
    plus the cut-off point itself."""
    t_end = spec.end_time_s()
    t = np.arange(0.0, t_end, spec.sample_period_s)
    t = np.append(t, t_end)
    v = spec.voltage_V(t)
    if seed is not None and spec.voltage_noise_V > 0:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        v = v + rng.normal(0.0, spec.voltage_noise_V, size=t.size)
    cur = np.full_like(t, spec.current_mA)
    return CyclerLog(t, v, cur, spec.capacity_mAh(t))
