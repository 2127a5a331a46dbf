"""Electrochemistry arithmetic: capacity -> Li content x and state of charge, time alignment.

Pure numpy (plus xraydb's atomic-mass table for formula masses); no file I/O.

Conventions
-----------
- Capacity is the *net* charge passed since the start of the log, in mAh, positive when the
  cathode is oxidised (charge, Li extracted). ``x_li = x_start - Q_specific / Q_theoretical``.
- The theoretical capacity of one electron (one Li) per formula unit is
  ``Q = n F / (3.6 M)`` mAh/g with F in C/mol and M the formula mass in g/mol
  (1 mAh = 3.6 C). NMC811, LiNi0.8Mn0.1Co0.1O2, M = 97.28 g/mol -> 275.5 mAh/g.
- Frame times and log times are both seconds; ``offset_s`` is the cycler clock minus the frame
  clock, so a frame at ``t`` is looked up in the log at ``t + offset_s``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FARADAY_C_MOL",
    "formula_mass_g_mol",
    "theoretical_capacity_mAh_g",
    "integrate_capacity_mAh",
    "specific_capacity_mAh_g",
    "x_li_from_capacity",
    "soc_from_capacity",
    "LogAlignment",
    "align_times",
    "offset_from_clocks_s",
]

FARADAY_C_MOL = 96485.33212  # CODATA 2018, exact since the 2019 SI

_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)|(\()|(\))(\d*\.?\d*)")


def formula_mass_g_mol(formula: str) -> float:
    """Formula mass (g/mol) of a chemical formula with optional fractional counts and brackets.

    ``"LiNi0.8Mn0.1Co0.1O2"`` -> 97.28; ``"Li(Ni0.8Mn0.1Co0.1)O2"`` gives the same.
    Raises ValueError for an unknown element or unbalanced brackets.
    """
    import xraydb

    text = formula.replace(" ", "")
    if not text:
        raise ValueError("empty chemical formula")
    stack: list[float] = [0.0]
    pos = 0
    for m in _FORMULA_TOKEN.finditer(text):
        if m.start() != pos:
            raise ValueError(f"cannot parse chemical formula {formula!r} at {text[pos:]!r}")
        pos = m.end()
        if m.group(1):
            symbol, count = m.group(1), m.group(2)
            try:
                mass = float(xraydb.atomic_mass(symbol))
            except Exception:
                raise ValueError(f"unknown element {symbol!r} in formula {formula!r}") from None
            stack[-1] += mass * (float(count) if count else 1.0)
        elif m.group(3):
            stack.append(0.0)
        else:
            if len(stack) < 2:
                raise ValueError(f"unbalanced ')' in formula {formula!r}")
            group = stack.pop()
            stack[-1] += group * (float(m.group(5)) if m.group(5) else 1.0)
    if pos != len(text):
        raise ValueError(f"cannot parse chemical formula {formula!r} at {text[pos:]!r}")
    if len(stack) != 1:
        raise ValueError(f"unbalanced '(' in formula {formula!r}")
    return stack[0]


def theoretical_capacity_mAh_g(formula_or_mass: str | float, electrons: float = 1.0) -> float:
    """Capacity (mAh/g) of ``electrons`` per formula unit: n F / (3.6 M).

    ``formula_or_mass`` is a chemical formula (e.g. "LiNi0.8Mn0.1Co0.1O2") or the formula mass in
    g/mol. For NMC811 and one Li this is 275.5 mAh/g.
    """
    mass = formula_mass_g_mol(formula_or_mass) if isinstance(formula_or_mass, str) else float(formula_or_mass)
    if not mass > 0:
        raise ValueError(f"formula mass must be > 0 g/mol, got {mass}")
    return electrons * FARADAY_C_MOL / (3.6 * mass)


def integrate_capacity_mAh(time_s: np.ndarray, current_mA: np.ndarray) -> np.ndarray:
    """Net charge passed since the first sample (mAh), trapezoid rule on current (mA) vs time (s).

    Positive current (charge, oxidation of the cathode) increases the capacity.
    """
    t = np.asarray(time_s, dtype=float)
    i = np.asarray(current_mA, dtype=float)
    if t.shape != i.shape or t.ndim != 1:
        raise ValueError("time_s and current_mA must be 1-D arrays of the same length")
    if t.size == 0:
        return np.zeros(0)
    dq_mAs = 0.5 * (i[1:] + i[:-1]) * np.diff(t)
    return np.concatenate([[0.0], np.cumsum(dq_mAs)]) / 3600.0


def specific_capacity_mAh_g(capacity_mAh: np.ndarray, active_mass_mg: float) -> np.ndarray:
    """Capacity per gram of active material: Q (mAh) / (m (mg) / 1000)."""
    if not active_mass_mg > 0:
        raise ValueError(f"active_mass_mg must be > 0, got {active_mass_mg}")
    return np.asarray(capacity_mAh, dtype=float) / (active_mass_mg * 1e-3)


def x_li_from_capacity(capacity_mAh_g: np.ndarray, theoretical_capacity_mAh_g: float, x_start: float = 1.0) -> np.ndarray:
    """Li content per formula unit: x = x_start - Q / Q_theoretical (Q > 0 on charge)."""
    if not theoretical_capacity_mAh_g > 0:
        raise ValueError(f"theoretical_capacity_mAh_g must be > 0, got {theoretical_capacity_mAh_g}")
    return x_start - np.asarray(capacity_mAh_g, dtype=float) / theoretical_capacity_mAh_g


def soc_from_capacity(capacity_mAh_g: np.ndarray, reference_capacity_mAh_g: float, soc_start: float = 0.0) -> np.ndarray:
    """State of charge: soc_start + Q / Q_reference (0 = discharged, 1 = Q_reference extracted).

    Not clipped: a value outside 0..1 says the reference capacity or the start state is off.
    """
    if not reference_capacity_mAh_g > 0:
        raise ValueError(f"reference_capacity_mAh_g must be > 0, got {reference_capacity_mAh_g}")
    return soc_start + np.asarray(capacity_mAh_g, dtype=float) / reference_capacity_mAh_g


@dataclass(frozen=True)
class LogAlignment:
    """Where each frame falls in the cycler log.

    ``index_lo``/``weight_hi`` give the linear interpolation between log samples ``index_lo`` and
    ``index_lo + 1`` (sorted log order); ``status`` per frame is one of ``ok``,
    ``before_log``, ``after_log``, ``no_time`` (frame time NaN) or ``gap`` (the bracketing log
    samples are further apart than ``max_gap_s``).
    """

    log_time_s: np.ndarray  # frame time + offset (s), in the cycler clock
    index_lo: np.ndarray
    weight_hi: np.ndarray
    status: np.ndarray  # str per frame

    @property
    def inside(self) -> np.ndarray:
        return self.status == "ok"

    def interpolate(self, values: np.ndarray) -> np.ndarray:
        """Values of a log column at the frames (NaN where the frame is not ``ok``)."""
        v = np.asarray(values, dtype=float)
        lo = self.index_lo
        hi = np.minimum(lo + 1, v.size - 1)
        out = v[lo] * (1.0 - self.weight_hi) + v[hi] * self.weight_hi
        return np.where(self.inside, out, np.nan)


def align_times(
    frame_time_s: np.ndarray,
    log_time_s: np.ndarray,
    offset_s: float = 0.0,
    max_gap_s: float | None = None,
) -> LogAlignment:
    """Locate frames (time_s, frame clock) in a log (time_s, cycler clock, strictly increasing).

    A frame at ``t`` is looked up at ``t + offset_s``. Frames before the first or after the last
    log sample are flagged, never extrapolated.
    """
    tl = np.asarray(log_time_s, dtype=float)
    if tl.ndim != 1 or tl.size < 2:
        raise ValueError("the cycler log needs at least two samples")
    if not np.all(np.diff(tl) > 0):
        raise ValueError("log times must be strictly increasing")
    tq = np.asarray(frame_time_s, dtype=float) + float(offset_s)
    status = np.full(tq.shape, "ok", dtype=object)
    finite = np.isfinite(tq)
    status[~finite] = "no_time"
    # tolerance of a part in 1e12 of the span so a frame exactly on the last sample is inside
    tol = 1e-12 * max(1.0, abs(tl[-1]), abs(tl[0]))
    status[finite & (tq < tl[0] - tol)] = "before_log"
    status[finite & (tq > tl[-1] + tol)] = "after_log"
    tc = np.clip(np.where(finite, tq, tl[0]), tl[0], tl[-1])
    lo = np.clip(np.searchsorted(tl, tc, side="right") - 1, 0, tl.size - 2)
    w = (tc - tl[lo]) / (tl[lo + 1] - tl[lo])
    if max_gap_s is not None:
        gap = (tl[lo + 1] - tl[lo]) > max_gap_s
        status[(status == "ok") & gap] = "gap"
    return LogAlignment(log_time_s=tq, index_lo=lo, weight_hi=np.clip(w, 0.0, 1.0), status=status.astype(str))


def offset_from_clocks_s(frame_origin_epoch_s: float, log_origin_epoch_s: float) -> float:
    """``offset_s`` for logs and frames whose time zero are known absolute times (POSIX seconds).

    A frame at frame-clock ``t`` happened at ``frame_origin + t``, i.e. at log time
    ``frame_origin + t - log_origin``: offset = frame_origin - log_origin.
    """
    return float(frame_origin_epoch_s) - float(log_origin_epoch_s)
