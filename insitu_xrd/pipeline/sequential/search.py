"""Cold starts of the sequential chain: the lattice grid search and seeded specs.

:func:`coarse_lattice_search` finds the lattice lengths that put a phase's reflections on the
peaks of a pattern (a frame without a seed: the first frame of a chain or of a segment, a refit
from a fresh lattice search, an absent optional phase's trial lattice); :func:`seeded_spec` makes
a spec whose start values come from a previous result.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from insitu_xrd.fit.spec import RefinementSpec

__all__ = ["coarse_lattice_search", "seeded_spec", "phase_object", "with_lattice"]


def _smooth_signal(tth: np.ndarray, intensity: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Background-free, dynamic-range-compressed, smoothed signal for peak-position matching."""
    y = np.nan_to_num(np.asarray(intensity, dtype=float))
    n = len(y)
    win = max(5, int(n / 40))
    base = ndimage.uniform_filter1d(ndimage.minimum_filter1d(y, win), win)
    sig = np.sqrt(np.clip(y - base, 0.0, None))
    if sigma_bins > 0:
        sig = ndimage.gaussian_filter1d(sig, sigma_bins)
    return sig


_REFL_CACHE: dict[str, tuple[Any, np.ndarray]] = {}


def _search_reflections(phase: Any, dmin: float, wavelength_A: float) -> tuple[Any, np.ndarray] | None:
    """Reflections of ``phase`` down to ``dmin`` and their search weights sqrt(m |F|^2 Lorentz)
    (normalised to 1), cached: the lattice search runs on every frame with the same start phase,
    and listing the reflections with their structure factors is half of its cost."""
    from insitu_xrd.core.pattern import lorentz_factor, two_theta_deg_from_d

    key = repr((phase.space_group, tuple(round(float(v), 9) for v in phase.cell), repr(phase.sites),
                round(float(dmin), 9), round(float(wavelength_A), 9)))
    hit = _REFL_CACHE.get(key)
    if hit is not None:
        return hit
    refl = phase.reflections(dmin)
    if len(refl) == 0:
        return None
    try:
        fsq = np.asarray(phase.structure_factor_sq(refl.hkl), dtype=float)
    except Exception:  # a phase without usable sites: equal weights
        fsq = np.ones(len(refl))
    tth0 = two_theta_deg_from_d(refl.d_A, wavelength_A)
    weight = np.sqrt(np.clip(refl.multiplicity * fsq * lorentz_factor(tth0), 0, None))
    weight = weight / (weight.max() or 1.0)
    if len(_REFL_CACHE) >= 32:
        _REFL_CACHE.pop(next(iter(_REFL_CACHE)))
    _REFL_CACHE[key] = (refl, weight)
    return refl, weight


def coarse_lattice_search(
    phase: Any,
    wavelength_A: float,
    two_theta_deg: np.ndarray,
    intensity: np.ndarray,
    bound_pct: float = 3.0,
    zero_deg: float = 0.0,
) -> tuple[float, float]:
    """Grid search of the lattice lengths (a, c) that put the phase's reflections on the peaks.

    phase: core.crystal.Phase at the start cell; the search spans +/- ``bound_pct`` % of a and c
    (independently for hexagonal/tetragonal, one scale for cubic and lower symmetry), coarse
    (0.05 % steps, smoothed pattern) then fine (0.005 % steps). The score is the sum over
    reflections of sqrt(m |F|^2 Lorentz) x the background-free sqrt-intensity at the predicted
    position. Returns (a, c) in A.
    """
    tth = np.asarray(two_theta_deg, dtype=float)
    ok = np.isfinite(intensity)
    tth, y = tth[ok], np.asarray(intensity, dtype=float)[ok]
    if len(tth) < 20:
        return phase.a, phase.c
    lo, hi = float(tth.min()), float(tth.max())
    dmin = wavelength_A / (2 * math.sin(math.radians(hi) / 2)) * (1 - bound_pct / 100)
    found = _search_reflections(phase, dmin, wavelength_A)
    if found is None:
        return phase.a, phase.c
    refl, weight = found
    a0, c0 = phase.a, phase.c
    system = phase.lattice_system
    l2 = refl.hkl[:, 2].astype(float) ** 2
    inv_d2 = 1.0 / refl.d_A**2
    if system in ("hexagonal", "tetragonal"):
        p_a = (inv_d2 - l2 / c0**2) * a0**2  # 1/d^2 = p_a / a^2 + l^2 / c^2
        two_d = True
    else:
        p_a = inv_d2 * a0**2
        two_d = False
    step_deg = float(np.median(np.diff(tth)))
    # integrated patterns are on a uniform axis: interpolate by index (no binary search)
    uniform = len(tth) > 1 and bool(np.allclose(np.diff(tth), step_deg, rtol=1e-6, atol=0))

    def interp(t: np.ndarray, signal: np.ndarray) -> np.ndarray:
        if not uniform:
            return np.interp(t, tth, signal, left=0.0, right=0.0)
        u = (t - lo) / step_deg
        i0 = np.clip(np.floor(u).astype(np.intp), 0, len(tth) - 2)
        f = u - i0
        val = signal[i0] * (1.0 - f) + signal[i0 + 1] * f
        return np.where((u >= 0) & (u <= len(tth) - 1), val, 0.0)

    def scores(sa: np.ndarray, sc: np.ndarray, signal: np.ndarray) -> np.ndarray:
        a = a0 * sa[:, None, None]
        c = c0 * sc[None, :, None]
        if two_d:
            inv = p_a[None, None, :] / a**2 + l2[None, None, :] / c**2
        else:
            inv = p_a[None, None, :] / a**2 + 0 * c
        s = np.clip(wavelength_A * np.sqrt(inv) / 2, 0, 0.999999)
        t = np.degrees(2 * np.arcsin(s)) + zero_deg
        val = interp(t, signal)
        inside = (t >= lo) & (t <= hi)
        return np.sum(val * weight * inside, axis=-1)

    span = bound_pct / 100
    # coarse: smoothing ~0.05 % of the mid-range angle
    mid = 0.5 * (lo + hi)
    coarse_sigma = max(1.0, 0.0005 * mid / step_deg)
    sig_c = _smooth_signal(tth, y, coarse_sigma)
    grid = 1 + np.arange(-span, span + 1e-12, 0.0005)
    sc_grid = grid if two_d else np.array([1.0])
    sa_grid = grid
    s = scores(sa_grid, sc_grid, sig_c)
    if not two_d:
        s = s  # (na, 1)
    ia, ic = np.unravel_index(int(np.argmax(s)), s.shape)
    best_a, best_c = sa_grid[ia], sc_grid[ic]
    # fine
    sig_f = _smooth_signal(tth, y, 1.0)
    fine = np.arange(-0.0008, 0.0008 + 1e-12, 0.00005)
    sa_f = best_a + fine
    sc_f = best_c + fine if two_d else np.array([1.0])
    s = scores(sa_f, sc_f, sig_f)
    ia, ic = np.unravel_index(int(np.argmax(s)), s.shape)
    a_best = a0 * sa_f[ia]
    c_best = c0 * sc_f[ic] if two_d else c0 * sa_f[ia]
    return float(a_best), float(c_best)


def phase_object(spec: RefinementSpec, name: str, refinement: Any = None) -> Any | None:
    """core.crystal.Phase at the spec's start values (None for a CIF phase without the object)."""
    from insitu_xrd.core.crystal import make_template

    ph = spec.phase(name)
    if ph.template is None:
        phases = getattr(refinement, "phases", None) or getattr(refinement, "phase_objects", None)
        if isinstance(phases, dict) and name in phases:
            p = phases[name]
            return p.with_cell(a=ph.a, c=ph.c) if (ph.a or ph.c) else p
        return None
    kw: dict[str, float] = {}
    for key in ("a", "c", "li_occupancy", "ni_li_mixing", "o_z"):
        v = getattr(ph, key)
        if v is not None and (ph.template.lower() == "nmc811" or key in ("a", "c")):
            kw[key] = v
    try:
        phase = make_template(ph.template, name=name, **kw)
    except TypeError:
        phase = make_template(ph.template, name=name)
        phase = phase.with_cell(a=ph.a, c=ph.c)
    return phase


def seeded_spec(spec: RefinementSpec, values: dict[str, float], phases: Iterable[str] | None = None) -> RefinementSpec:
    """Copy of ``spec`` whose start values are taken from a previous result's ``values``.

    Lattice, microstrain, size, site and profile/zero values present in ``values`` replace the
    spec's starts (lattice bounds are then centred on them). ``phases``: restrict to these phases.
    """
    new_phases = []
    for ph in spec.phases:
        upd: dict[str, Any] = {}
        if phases is None or ph.name in phases:
            for key in ("a", "b", "c", "mustrain", "size_um", "mustrain_mix", "size_mix", "o_z",
                        "li_occupancy", "ni_li_mixing", "biso_A2"):
                v = values.get(f"{ph.name}_{key}")
                if v is not None and np.isfinite(v):
                    if key == "b" and ph.b is None:
                        continue
                    if key in ("size_um",) and v <= 0:
                        continue
                    upd[key] = float(v)
        new_phases.append(ph.model_copy(update=upd))
    prof_upd = {}
    for key in ("U", "V", "W", "X", "Y", "zero_deg", "displacement_um"):
        v = values.get(key)
        if v is not None and np.isfinite(v):
            prof_upd[key] = float(v)
    new_diff = []
    for d in spec.diffuse:
        upd = {}
        for key in ("fwhm_deg", "eta", "offset_deg"):
            v = values.get(f"diff_{d.label}_{key}")
            if v is not None and np.isfinite(v):
                upd[key] = float(v)
        new_diff.append(d.model_copy(update=upd))
    return spec.model_copy(update={"phases": new_phases, "profile": spec.profile.model_copy(update=prof_upd),
                                   "diffuse": new_diff})


def with_lattice(spec: RefinementSpec, name: str, a: float, c: float) -> RefinementSpec:
    """``spec`` with phase ``name`` starting from the lattice a, c (A)."""
    phases = [p.model_copy(update={"a": a, "c": c}) if p.name == name else p for p in spec.phases]
    return spec.model_copy(update={"phases": phases})
