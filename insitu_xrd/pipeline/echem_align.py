"""Attach the cycler log to frames: voltage, capacity, Li content x and state of charge per frame.

Frames are located in the log by their ``time_s`` coordinate (frame clock) plus ``offset_s``
(cycler clock minus frame clock) and the log is linearly interpolated between its samples.
Frames outside the log keep their place in the Dataset: their echem coords are NaN and the
per-frame variable ``echem_status`` says why (``before_log``, ``after_log``, ``no_time``,
``gap``); ``ok`` frames lie inside the log.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from insitu_xrd.core.electrochem import (
    align_times,
    soc_from_capacity,
    specific_capacity_mAh_g,
    x_li_from_capacity,
)
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.echem import CyclerLog

__all__ = ["attach_echem", "ECHEM_COORDS"]

ECHEM_COORDS = ("voltage_V", "current_mA", "capacity_mAh", "capacity_mAh_g", "x_li", "soc")


def attach_echem(
    results_or_patterns: xr.Dataset,
    log: CyclerLog,
    offset_s: float = 0.0,
    active_mass_mg: float | None = None,
    theoretical_capacity_mAh_g: float = 275.0,
    x_start: float = 1.0,
    *,
    soc_reference_mAh_g: float | None = None,
    max_gap_s: float | None = None,
) -> xr.Dataset:
    """Return a copy of the Dataset with per-frame echem coords and an ``echem_status`` variable.

    Parameters
    ----------
    results_or_patterns: a Dataset with dim ``frame`` and coord ``time_s`` (s, frame clock).
    log: a :class:`~insitu_xrd.io.echem.CyclerLog`.
    offset_s: cycler clock minus frame clock (s); a frame at t is looked up at t + offset_s.
    active_mass_mg: active material mass (mg). Without it capacity_mAh_g, x_li and soc are NaN
        (voltage and capacity_mAh are still attached) and the attrs say so.
    theoretical_capacity_mAh_g: capacity of one Li per formula unit (mAh/g), e.g.
        ``insitu_xrd.core.electrochem.theoretical_capacity_mAh_g("LiNi0.8Mn0.1Co0.1O2")`` = 275.5.
    x_start: Li content per formula unit at log time 0.
    soc_reference_mAh_g: capacity taken as soc = 1 (default: the theoretical capacity).
    max_gap_s: frames between two log samples further apart than this are flagged ``gap``.

    Coords added (dim ``frame``): voltage_V, current_mA (if the log has current), capacity_mAh
    (net, positive on charge), capacity_mAh_g, x_li, soc.
    """
    ds = results_or_patterns
    if "frame" not in ds.dims:
        raise InsituXRDError("attach_echem: the Dataset has no 'frame' dimension")
    if "time_s" not in ds.variables:
        raise InsituXRDError("attach_echem: the Dataset has no 'time_s' coordinate; frame times are needed "
                             "to align the cycler log (frames.time_source in the recipe)")
    frame_t = np.asarray(ds["time_s"].values, dtype=float)
    try:
        align = align_times(frame_t, log.time_s, offset_s=offset_s, max_gap_s=max_gap_s)
    except ValueError as exc:
        raise InsituXRDError(f"cycler log {log.source}: {exc}") from None

    capacity_mAh = align.interpolate(log.capacity_mAh)
    new: dict[str, np.ndarray] = {
        "voltage_V": align.interpolate(log.voltage_V),
        "capacity_mAh": capacity_mAh,
    }
    if log.current_mA is not None:
        new["current_mA"] = align.interpolate(log.current_mA)
    soc_ref = float(soc_reference_mAh_g) if soc_reference_mAh_g is not None else float(theoretical_capacity_mAh_g)
    if active_mass_mg is not None:
        q_g = specific_capacity_mAh_g(capacity_mAh, active_mass_mg)
        new["capacity_mAh_g"] = q_g
        new["x_li"] = x_li_from_capacity(q_g, theoretical_capacity_mAh_g, x_start)
        new["soc"] = soc_from_capacity(q_g, soc_ref)
    else:
        nan = np.full(frame_t.shape, np.nan)
        new.update(capacity_mAh_g=nan, x_li=nan.copy(), soc=nan.copy())

    units = {"voltage_V": "V", "current_mA": "mA", "capacity_mAh": "mAh", "capacity_mAh_g": "mAh/g", "x_li": "1", "soc": "1"}
    long = {
        "voltage_V": "cell voltage interpolated from the cycler log",
        "current_mA": "cell current interpolated from the cycler log",
        "capacity_mAh": "net charge passed since the log start (positive on charge)",
        "capacity_mAh_g": "specific net capacity per gram of active material",
        "x_li": f"Li per formula unit: x_start - capacity_mAh_g / {theoretical_capacity_mAh_g:g}",
        "soc": f"state of charge: capacity_mAh_g / {soc_ref:g} (not clipped)",
    }
    out = ds.copy()
    # remove stale echem from an earlier call
    out = out.drop_vars([v for v in (*ECHEM_COORDS, "echem_status") if v in out.variables])
    coords = {name: ("frame", vals, {"units": units[name], "long_name": long[name]}) for name, vals in new.items()}
    out = out.assign_coords(coords)
    out["echem_status"] = ("frame", align.status.astype(str), {
        "long_name": "frame position in the cycler log: ok, before_log, after_log, no_time, gap",
    })
    out.attrs.update({k: (np.asarray(v, dtype=float) if isinstance(v, list) else v) for k, v in log.attrs().items()})
    out.attrs.update({
        "echem_offset_s": float(offset_s),
        "echem_active_mass_mg": float(active_mass_mg) if active_mass_mg is not None else "not given: x_li/soc unavailable",
        "echem_theoretical_capacity_mAh_g": float(theoretical_capacity_mAh_g),
        "echem_x_start": float(x_start),
        "echem_soc_reference_mAh_g": soc_ref,
        "echem_frames_outside_log": int((align.status != "ok").sum()),
    })
    return out
