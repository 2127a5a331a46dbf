"""Cold starts of the sequential chain: the lattice grid search and seeded specs.

:func:`search_lattice` finds the free lattice parameters (:func:`coarse_lattice_search`: the
lengths a, c of a cubic, tetragonal or hexagonal cell) that put a phase's reflections on the
peaks of a pattern (a frame without a seed: the first frame of a chain or of a segment, a refit
from a fresh lattice search, an absent optional phase's trial lattice); :func:`seeded_spec` makes
a spec whose start values come from a previous result.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from insitu_xrd.core.symmetry import reciprocal_metric_and_derivatives, row_echelon
from insitu_xrd.fit.spec import RefinementSpec

__all__ = ["coarse_lattice_search", "search_lattice", "seeded_spec", "phase_object", "with_lattice", "residual_match", "curve_match", "fit_profile"]


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


def search_lattice(
    phase: Any,
    wavelength_A: float,
    two_theta_deg: np.ndarray,
    intensity: np.ndarray,
    bound_pct: float = 3.0,
    zero_deg: float = 0.0,
    sweeps: int = 3,
) -> dict[str, float]:
    """Every free lattice parameter of ``phase`` (A, deg) that puts its reflections on the peaks.

    Cubic, tetragonal and hexagonal cells: the (a, c) grid of :func:`coarse_lattice_search`.
    Lower symmetry (orthorhombic, monoclinic, triclinic) and rhombohedral axes: one scale of all
    lengths first (the same grid), then ``sweeps`` cyclic one-dimensional grid searches over each
    free parameter (lengths and angles, +/- ``bound_pct`` % of the start, 0.05 % steps on the
    smoothed pattern, then +/- 0.08 % in 0.005 % steps on the fine one). Same score as
    :func:`coarse_lattice_search`. Returns {name: value} for the free parameters."""
    lat = phase.lattice
    free = lat.free
    if lat.system != "rhombohedral" and set(free) <= {"a", "c"}:
        a, c = coarse_lattice_search(phase, wavelength_A, two_theta_deg, intensity, bound_pct, zero_deg)
        return {"a": a, "c": c} if "c" in free else {"a": a}
    a_iso, _ = coarse_lattice_search(phase, wavelength_A, two_theta_deg, intensity, bound_pct, zero_deg)
    cell = np.array(phase.cell, dtype=float)
    cell[:3] *= a_iso / phase.a
    tth = np.asarray(two_theta_deg, dtype=float)
    ok = np.isfinite(intensity)
    tth, y = tth[ok], np.asarray(intensity, dtype=float)[ok]
    lo, hi = float(tth.min()), float(tth.max())
    dmin = wavelength_A / (2 * math.sin(math.radians(hi) / 2)) * (1 - bound_pct / 100)
    found = _search_reflections(phase, dmin, wavelength_A)
    if found is None or len(tth) < 20:
        return {n: float(phase.cell[_CELL_INDEX[n]]) for n in free}
    refl, weight = found
    h = refl.hkl.astype(float)
    hh = np.stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2],
                   2 * h[:, 1] * h[:, 2]], axis=1)
    # search in the reciprocal metric: 1/d^2 = hh . g*, linear in its components, and each free
    # component moves its own set of reflections (a, c and beta of a monoclinic cell are strongly
    # correlated; g*11, g*33, g*13 far less): directions = the free components (row-echelon basis
    # of what the free cell parameters can change), steps relative to the diagonal terms
    gs0, dgs = reciprocal_metric_and_derivatives(tuple(cell))
    jac = np.stack([_metric_vector(d) for d in np.einsum("ij,ikl->jkl", lat.matrix(), dgs)], axis=0)  # (k, 6)
    rref, pivots = row_echelon(jac, rel_tol=1e-12)
    basis = rref[: len(pivots)]  # (k, 6)
    v = _metric_vector(gs0)
    diag = np.abs(v[:3])
    scale_of = np.array([diag[0], diag[1], diag[2], np.sqrt(diag[0] * diag[1]), np.sqrt(diag[0] * diag[2]),
                         np.sqrt(diag[1] * diag[2])])
    steps = np.array([scale_of[int(np.argmax(np.abs(b)))] for b in basis])

    def scores(vs: np.ndarray, signal: np.ndarray) -> np.ndarray:
        sin_t = np.clip(wavelength_A * np.sqrt(np.clip(vs @ hh.T, 0, None)) / 2, 0, 0.999999)
        t = np.degrees(2 * np.arcsin(sin_t)) + zero_deg
        val = np.interp(t, tth, signal, left=0.0, right=0.0)
        return np.sum(val * weight * ((t >= lo) & (t <= hi)), axis=-1)

    # a local polish of each free component around the isotropic scale, +/- 0.16 % in 1/d^2 (a
    # global search of several free components is an indexing problem: grids and sweeps from a
    # start a few % off in several directions ended on side maxima of the score for Cmcm and P-1
    # cells, while the refinement's own cold start converged from there)
    signal = _smooth_signal(tth, y, 1.0)
    rel = np.arange(-0.0016, 0.0016 + 1e-12, 0.0001)
    for _ in range(sweeps):
        for j in range(len(basis)):
            trial = v[None, :] + np.outer(rel * steps[j], basis[j])
            v = trial[int(np.argmax(scores(trial, signal)))]
    g = np.linalg.inv(np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]]))
    lengths = np.sqrt(np.diag(g))
    angles = np.degrees(np.arccos([g[1, 2] / (lengths[1] * lengths[2]), g[0, 2] / (lengths[0] * lengths[2]),
                                   g[0, 1] / (lengths[0] * lengths[1])]))
    found_cell = np.concatenate([lengths, angles])
    return {n: float(found_cell[_CELL_INDEX[n]]) for n in free}


def _metric_vector(g: np.ndarray) -> np.ndarray:
    return np.array([g[0, 0], g[1, 1], g[2, 2], g[0, 1], g[0, 2], g[1, 2]])


_CELL_INDEX = {"a": 0, "b": 1, "c": 2, "alpha": 3, "beta": 4, "gamma": 5}


def phase_object(spec: RefinementSpec, name: str, refinement: Any = None) -> Any | None:
    """core.crystal.Phase at the spec's start values (None for a CIF phase without the object)."""
    from insitu_xrd.core.crystal import make_template

    ph = spec.phase(name)
    if ph.template is None:
        phases = getattr(refinement, "phases", None) or getattr(refinement, "phase_objects", None)
        if isinstance(phases, dict) and name in phases:
            p = phases[name]
            cell = {k: getattr(ph, k) for k in _CELL_INDEX if getattr(ph, k) is not None}
            return p.with_cell(**cell) if cell else p
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
            for key in ("a", "b", "c", "alpha", "beta", "gamma", "mustrain", "size_um", "mustrain_mix", "size_mix",
                        "o_z", "li_occupancy", "ni_li_mixing", "biso_A2"):
                v = values.get(f"{ph.name}_{key}")
                if v is not None and np.isfinite(v):
                    if key in ("b", "alpha", "beta", "gamma") and getattr(ph, key) is None and key not in ph.refine:
                        continue  # tied or fixed by symmetry (results carry them for every phase)
                    if key in ("size_um",) and v <= 0:
                        continue
                    upd[key] = float(v)
            md = values.get(f"{ph.name}_md_ratio")
            if md is not None and np.isfinite(md) and ph.texture is not None and ph.texture.march_dollase is not None:
                upd["texture"] = ph.texture.model_copy(update={"march_dollase": ph.texture.march_dollase.model_copy(
                    update={"ratio": float(md)})})
            sh = ph.texture.spherical_harmonics if ph.texture is not None else None
            if sh is not None:
                pre = f"{ph.name}_sh_"
                start = {n[len(pre):]: float(v) for n, v in values.items() if n.startswith(pre) and np.isfinite(v)}
                if start:
                    upd["texture"] = ph.texture.model_copy(update={"spherical_harmonics": sh.model_copy(
                        update={"coefficients": {**sh.coefficients, **start}})})
        new_phases.append(ph.model_copy(update=upd))
    prof_upd = {}
    for key in ("U", "V", "W", "X", "Y", "zero_deg", "displacement_um", "absorption_muR", "absorption_mut", "transparency_mm"):
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


def with_lattice(spec: RefinementSpec, name: str, a: float, c: float, **more: float) -> RefinementSpec:
    """``spec`` with phase ``name`` starting from the lattice a, c (A) and any other cell
    parameters given (b in A, alpha, beta, gamma in deg)."""
    update = {"a": a, "c": c, **{k: float(v) for k, v in more.items() if k in _CELL_INDEX}}
    phases = [p.model_copy(update=update) if p.name == name else p for p in spec.phases]
    return spec.model_copy(update={"phases": phases})


def fit_profile(fit: Any) -> dict[str, float]:
    """The fit's instrument profile (GSAS-II U, V, W, X, Y; zero_deg, deg; sh_l), each parameter
    the fit lacks at its neutral value (W = 1: a finite width)."""
    from insitu_xrd.pipeline.sequential.records import param_value

    out = {}
    for key, default in (("U", 0.0), ("V", 0.0), ("W", 1.0), ("X", 0.0), ("Y", 0.0), ("zero_deg", 0.0), ("sh_l", 0.0)):
        val = param_value(fit, key)[0]
        out[key] = val if np.isfinite(val) else default
    return out


def residual_match(fit: Any, phase: Any, wavelength_A: float, mustrain: float, size_um: float | None = None
                   ) -> tuple[float, float]:
    """How much of ``phase``'s calculated pattern is in the weighted residual of ``fit``.

    The pattern (scale 1, the fit's instrument profile and zero, the given microstrain in 1e-6
    and size in um) is scaled to the residual (obs - calc) / sigma by one linear amplitude.
    Returns (amplitude, z = amplitude / esd), the esd taken with the fit's GoF (at least 1). It
    ignores the correlations a full fit has (background, other phases, Le Bail intensities), so it
    overestimates what a full fit finds: a cheap gate before one, never a decision alone.
    """
    from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern

    inst = Instrument(wavelength_A, **fit_profile(fit))
    x = np.asarray(fit.two_theta_deg, dtype=float)
    curve = calc_pattern(x, [PhaseState(phase, scale=1.0, mustrain=max(mustrain, 0.0),
                                        size_um=size_um or np.inf)], inst).phases[phase.name]
    return curve_match(fit, curve)


def curve_match(fit: Any, curve: np.ndarray) -> tuple[float, float]:
    """(amplitude, z) of ``curve`` (on the fit's 2theta grid) in the weighted residual of ``fit``
    (see :func:`residual_match`)."""
    w = 1.0 / np.asarray(fit.sigma, dtype=float)
    r = (np.asarray(fit.obs) - np.asarray(fit.calc)) * w
    cw = curve * w
    den = float(np.dot(cw, cw))
    if not den > 0:
        return 0.0, 0.0
    amp = float(np.dot(r, cw)) / den
    esd = math.sqrt(max(float(fit.gof), 1.0) / den)
    return amp, amp / esd
