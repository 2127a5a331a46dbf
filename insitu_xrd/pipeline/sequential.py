"""Sequential refinement of an in-situ pattern series (GSAS-II-style "seqrefine").

Every frame of a patterns Dataset is fitted in order (forward or reverse), each fit seeded from
the previous good result. Around that loop:

* **Phase appearance is detected, not given.** Fits start with the non-optional phases (H2). While
  an ``optional: true`` phase (H3) is absent, every frame is also fitted with it (its start lattice
  found by a grid search on the residual of the fit without it). It is added when the data justify
  it: an F-test on the chi2 improvement for the extra parameters, p < ``f_test_alpha``; its
  weight fraction above ``min_fraction_sigma`` esds and above ``min_fraction``; and its lattice
  distinct from the phase it splits from (so a single-phase collapse stays single-phase). It is
  dropped again when its fraction stays below ``drop_fraction_sigma`` esds or ``drop_fraction`` for
  ``drop_after_frames`` frames. The frame and x where it first appears are reported.
* **Divergence.** A fit that fails, has a lattice parameter at its bound, or whose Rwp jumps above
  ``rwp_jump_factor`` x the running median is refit from the last good frame and from a fresh
  lattice search; the best is kept and flagged (``status = "refit"``), or ``"diverged"`` if no
  attempt is acceptable. A frame whose pattern has status != "ok" is skipped (``"skipped: ..."``).
  The run never stops on one frame.
* **Chunks.** With ``chunks > 1`` the frame order is split into contiguous chunks fitted in
  parallel processes; a chunk after the first is cold-started (grid search of the lattice on its
  first frame) one frame early, and that overlap frame must agree with the previous chunk's fit;
  otherwise the chunk is refit serially, seeded from the previous chunk's last frame.
* **Checkpoints.** Results are written to the output NetCDF as frames finish (at most every
  ``checkpoint_interval_s``), with the chain's state (the last FitResult with its Le Bail
  intensities, the optional-phase counters) pickled beside it; an interrupted run restarted with
  the same inputs keeps the finished frames and continues from the last one exactly as if it had
  not stopped (without a usable state file: seeded from the stored values of the last frame).
* **Label continuity.** A fit in which the optional phase took over the lattice that continues the
  main phase's (H2/H3 names exchanged) counts as diverged and is refit.
* **Optional-phase prescreen.** The full fit with the absent optional phase runs only when a cheap
  matched filter finds its pattern in the residual (``prescreen_sigma``) with an implied fraction
  worth testing (``prescreen_fraction_factor`` x ``min_fraction``).
* **Onset details.** A fit without the optional phase that diverged while the fit with it is sound
  and F-test significant adds the phase (:meth:`SequentialRefiner._rescue`); an onset frame where
  the new phase's lattice stayed held is fitted again from the next frame
  (:meth:`SequentialRefiner._look_back`); non-lattice parameters that ended at a bound restart
  from the recipe value on the next frame (:meth:`SequentialRefiner._unstuck`).

Output Dataset (see :func:`records_to_dataset`): dims ``frame``, ``phase`` (and ``two_theta`` for
the fitted curves); ``a, c, volume, microstrain, size, phase_fraction, scale`` (+ ``_esd``);
``rwp, gof, zero_shift(_esd), status, active, optional_phase_p``; ``calc, background``;
``microstrain_correlation, size_correlation`` (frame x phase x ``corr_with``: correlation with
microstrain, size and the instrument terms U..Y). ``insitu-xrd refine`` writes the same schema for
one fit (:mod:`insitu_xrd.pipeline.single_fit`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage, stats

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.provenance import software_versions_json, utc_now_iso

__all__ = [
    "FrameRecord",
    "SequentialRefiner",
    "coarse_lattice_search",
    "seeded_spec",
    "refine_sequence",
    "records_to_dataset",
    "refit_frame",
    "phase_onset_attrs",
    "dataset_to_records",
    "chain_state_path",
    "read_chain_state",
    "write_chain_state",
    "PER_PHASE_VARS",
    "CORR_WITH",
    "UNITS",
]

#: Per-phase output variables -> FitResult parameter suffix.
PER_PHASE_VARS: dict[str, str] = {
    "a": "a",
    "c": "c",
    "volume": "volume_A3",
    "microstrain": "mustrain",
    "size": "size_um",
    "scale": "scale",
}

#: What microstrain and size are correlated with (``microstrain_correlation`` /
#: ``size_correlation`` over the ``corr_with`` dimension): each other and the instrument terms.
CORR_WITH: dict[str, str] = {"microstrain": "{p}_mustrain", "size": "{p}_size_um", "U": "U", "V": "V", "W": "W",
                             "X": "X", "Y": "Y"}

UNITS: dict[str, str] = {
    "a": "A",
    "c": "A",
    "volume": "A^3",
    "microstrain": "1e-6 (GSAS-II mu-strain)",
    "size": "um",
    "scale": "1 (Rietveld scale)",
    "phase_fraction": "1 (weight fraction of all refined phases)",
    "cathode_fraction": "1 (weight fraction within the cathode phases)",
    "rwp": "1 (fraction, not %)",
    "gof": "1 (reduced chi^2)",
    "zero_shift": "deg 2theta",
    "time_s": "s",
    "calc": "counts (same as intensity)",
    "background": "counts (same as intensity)",
}

RefinementFactory = Callable[[RefinementSpec], Any]


# ---------------------------------------------------------------------------------------------
# per-frame record


@dataclass
class FrameRecord:
    """What is kept of one frame's fit (plain data: picklable, storable)."""

    index: int
    status: str
    rwp: float = math.nan
    time_s: float = math.nan  # the frame's time (spacing for the lattice extrapolation)
    key: str = ""  # the caller's stable name of the frame (watch mode: its file), kept by look-backs
    gof: float = math.nan
    zero_shift: float = math.nan
    zero_shift_esd: float = math.nan
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> var -> value (+ var_esd)
    active: list[str] = field(default_factory=list)
    optional_p: float = math.nan  # F-test p-value of the optional phase on this frame (NaN: not tested)
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)  # every refined value (for seeding)
    fit_two_theta: np.ndarray | None = None
    calc: np.ndarray | None = None
    background: np.ndarray | None = None
    correlations: dict[str, float] | None = None  # "<P>_mustrain|W" -> correlation (see broadening_correlations)

    @property
    def good(self) -> bool:
        return self.status in ("ok", "refit")


def _param_value(fit: Any, name: str) -> tuple[float, float]:
    if name in fit.values:
        return float(fit.values[name]), float(fit.esds.get(name, math.nan))
    params = getattr(fit, "params", None)
    if params is not None and name in params:
        p = params[name]
        esd = p.stderr if (p.vary and p.stderr is not None) else math.nan
        return float(p.value), float(esd)
    return math.nan, math.nan


def record_from_fit(index: int, fit: Any, spec: RefinementSpec, status: str = "ok", message: str = "",
                    optional_p: float = math.nan) -> FrameRecord:
    """Flatten a FitResult into a FrameRecord (absent phases: NaN values, fraction 0)."""
    rec = FrameRecord(index=index, status=status, rwp=float(fit.rwp), gof=float(fit.gof), message=message,
                      optional_p=optional_p, active=list(fit.active_phases))
    rec.zero_shift, rec.zero_shift_esd = _param_value(fit, "zero_deg")
    for ph in spec.phases:
        d: dict[str, float] = {}
        active = ph.name in fit.active_phases
        for var, suffix in PER_PHASE_VARS.items():
            v, e = _param_value(fit, f"{ph.name}_{suffix}") if active else (math.nan, math.nan)
            d[var], d[f"{var}_esd"] = v, e
        frac, frac_esd = fit.phase_fraction.get(ph.name, (0.0, math.nan)) if active else (0.0, math.nan)
        d["phase_fraction"], d["phase_fraction_esd"] = float(frac), float(frac_esd)
        rec.phases[ph.name] = d
    rec.values = {k: float(v) for k, v in fit.values.items()}
    params = getattr(fit, "params", None)
    if params is not None:
        for name, p in params.items():
            rec.values.setdefault(name, float(p.value))
    rec.fit_two_theta = np.asarray(fit.two_theta_deg, dtype=float)
    rec.calc = np.asarray(fit.calc, dtype=float)
    rec.background = np.asarray(fit.background, dtype=float)
    rec.correlations = broadening_correlations(fit, spec)
    return rec


def broadening_correlations(fit: Any, spec: RefinementSpec) -> dict[str, float]:
    """Correlations of each phase's microstrain and size with each other and with the refined
    instrument terms (``CORR_WITH``), from the fit's correlation matrix: {"H2_mustrain|W": r}.
    Only pairs of refined parameters are present."""
    names = list(getattr(fit, "correlation_names", []) or [])
    corr = getattr(fit, "correlation", None)
    if not names or corr is None:
        return {}
    corr = np.asarray(corr, dtype=float)
    pos = {n: i for i, n in enumerate(names)}
    out: dict[str, float] = {}
    for ph in spec.phases:
        for own in ("{p}_mustrain", "{p}_size_um"):
            i = pos.get(own.format(p=ph.name))
            if i is None:
                continue
            for other in CORR_WITH.values():
                j = pos.get(other.format(p=ph.name))
                if j is not None and i < corr.shape[0] and j < corr.shape[1]:
                    out[f"{names[i]}|{names[j]}"] = 1.0 if j == i else float(corr[i, j])
    return out


# ---------------------------------------------------------------------------------------------
# cold starts: lattice grid search and seeded specs


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


def _phase_object(spec: RefinementSpec, name: str, refinement: Any = None) -> Any | None:
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


def _with_lattice(spec: RefinementSpec, name: str, a: float, c: float) -> RefinementSpec:
    phases = [p.model_copy(update={"a": a, "c": c}) if p.name == name else p for p in spec.phases]
    return spec.model_copy(update={"phases": phases})


# ---------------------------------------------------------------------------------------------
# the sequential refiner (one chain of frames)


class SequentialRefiner:
    """Fits frames one after another, carrying the seed and the optional-phase state.

    Used by the batch run (one per chunk) and by the watch mode (one for the whole beamtime).

    Parameters
    ----------
    spec: refinement section; its optional phases are candidates for appearance.
    wavelength_A: X-ray wavelength (A).
    factory: callable spec -> Refinement (``make_refinement`` bound to wavelength and base dir).
    options: sequential section (thresholds).
    seed: a FrameRecord of the frame before the first one fitted here (resume / chunk seeding),
        or None for a cold start (lattice grid search on the first frame).
    """

    def __init__(self, spec: RefinementSpec, wavelength_A: float, factory: RefinementFactory,
                 options: SequentialSection | None = None, seed: FrameRecord | None = None) -> None:
        self.spec = spec
        self.wavelength_A = float(wavelength_A)
        self.factory = factory
        self.opt = options or SequentialSection()
        self.base_phases = [p.name for p in spec.phases if not p.optional]
        self.optional_phases = [p.name for p in spec.phases if p.optional]
        if not self.base_phases:
            raise InsituXRDError("refinement: every phase is optional; at least one phase must be always present")
        self.prev_fit: Any = None
        self.last_good: FrameRecord | None = seed if (seed is not None and seed.good) else None
        self.before_last: FrameRecord | None = None  # the good frame before last_good (start extrapolation)
        self.active: list[str] = list(self.base_phases)
        if seed is not None:
            self.active = [p for p in seed.active if p in self.base_phases or p in self.optional_phases] or list(self.base_phases)
        self.below_count: dict[str, int] = {p: 0 for p in self.optional_phases}
        self.rwp_history: list[float] = []
        self._cache: list[tuple[RefinementSpec, Any]] = []
        self.cur_spec: RefinementSpec = spec  # spec of the refinement that produced prev_fit
        self.frames_since_test = 0
        self._lookback: dict | None = None  # a frame to fit again from the next one (see _look_back)
        self.revised: list[FrameRecord] = []  # records replaced by a look-back, for the caller

    # -- exact resume ------------------------------------------------------------------------
    _STATE_FIELDS = ("prev_fit", "last_good", "before_last", "active", "below_count", "rwp_history", "_cache",
                     "cur_spec", "frames_since_test", "_lookback")

    def state_bytes(self) -> bytes:
        """The chain's whole state after the last step (previous FitResult with its Le Bail
        intensities, optional-phase counters, Rwp history, cached refinements), pickled, so an
        interrupted run restored with :meth:`restore_state` continues exactly as if it had not
        stopped. (The stored per-frame values alone give a re-seeded start: the same minimum
        only within the optimizer's tolerance.)"""
        import pickle

        state = {k: getattr(self, k) for k in self._STATE_FIELDS}
        try:
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # refinements from an unpicklable factory: rebuilt from the specs on restore
            state["_cache"] = []
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore_state(self, blob: bytes) -> bool:
        """Load a state written by :meth:`state_bytes` of a refiner with the same spec and options;
        False (state unchanged) when it cannot be read."""
        import pickle

        try:
            st = pickle.loads(blob)
            if not isinstance(st, dict) or set(st) != set(self._STATE_FIELDS):
                return False
        except Exception:  # written by another version: fall back to the stored values
            return False
        for k, v in st.items():
            setattr(self, k, v)
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _refinement_for(self, spec: RefinementSpec) -> Any:
        """Refinement built from ``spec`` (a few are cached: the seed spec and trial specs)."""
        for sp, ref in self._cache:
            if sp is spec:
                return ref
        ref = self.factory(spec)
        self._cache = ([(spec, ref)] + self._cache)[:3]
        return ref

    def _cold_spec(self, tth: np.ndarray, y: np.ndarray, base: RefinementSpec | None = None) -> RefinementSpec:
        """Spec whose main-phase lattice comes from a grid search on this pattern, centred on
        ``base``'s start lattice (default: the recipe's); the other phases keep ``base``'s starts."""
        from insitu_xrd.pipeline.cold_start import searched_spec

        spec = base or self.spec
        return searched_spec(spec, self.wavelength_A, tth, y, self.base_phases, lambda: self._refinement_for(spec))[0]

    def _fit(self, spec: RefinementSpec, tth, y, s, start, phases) -> Any:
        ref = self._refinement_for(spec)
        return ref.fit(tth, y, s, start=start, phases=list(phases))

    def _suspect(self, fit: Any) -> str:
        """Why a fit looks diverged ('' if it looks fine)."""
        if fit is None:
            return "no result"
        if not getattr(fit, "success", True):
            return f"fit failed: {getattr(fit, 'message', '')}".strip()
        if not np.isfinite(fit.rwp):
            return "Rwp not finite"
        if self.opt.divergence.check_bounds:
            lattice = [p for p in fit.at_bounds if p.rsplit("_", 1)[-1] in ("a", "b", "c")
                       and p.split("_", 1)[0] in fit.active_phases]
            # an optional phase's lattice at a bound is handled by the phase test, not here
            lattice = [p for p in lattice if p.split("_", 1)[0] in self.base_phases]
            if lattice:
                return f"at bound: {', '.join(lattice)}"
        for name in self.base_phases[:1]:  # the main phase; minor phases (cell lines) may be weak
            sc, esd = _param_value(fit, f"{name}_scale")
            if np.isfinite(esd) and esd > 0 and not sc > 3 * esd:
                return f"phase {name} not significant (scale {sc:.4g} +/- {esd:.2g})"
        if len(self.rwp_history) >= 2:
            ref = float(np.median(self.rwp_history[-7:]))
            if fit.rwp > self.opt.divergence.rwp_jump_factor * ref:
                return f"Rwp jump {fit.rwp:.4f} > {self.opt.divergence.rwp_jump_factor} x median {ref:.4f}"
        return ""

    def _swapped(self, fit: Any) -> str:
        """Why the fit's phase labels look exchanged ('' if they do not).

        Each phase keeps the lattice that continues its own lattice of the last good frame: with
        an optional phase (H3) and the phase it grows from (H2) both present, the assignment of
        the two fitted lattices to the two previous ones must be the closer of the two possible
        (relative distance |da/a| + |dc/c|); a newly present optional phase must be further from
        the previous main lattice than the main phase is. Near the end of a two-phase charge the
        optional phase dominates the pattern and a fit (or a lattice search) can otherwise hand
        the main phase's name to the other lattice.
        """
        prev = self.last_good

        def lattice(name: str) -> tuple[float, float]:
            return _param_value(fit, f"{name}_a")[0], _param_value(fit, f"{name}_c")[0]

        def dist(ac: tuple[float, float], ref: dict[str, float] | None) -> float:
            if not ref:
                return math.nan
            terms = [abs(v / r - 1.0) for v, r in zip(ac, (ref.get("a", math.nan), ref.get("c", math.nan)))
                     if np.isfinite(v) and np.isfinite(r) and r != 0]
            return float(sum(terms)) if terms else math.nan

        for opt in self.optional_phases:
            parent = self._split_from(opt)
            if opt not in fit.active_phases or parent not in fit.active_phases:
                continue
            if prev is None or parent not in prev.active:
                # no lattice to continue (first frame, cold start): the recipe's start lattices
                # say which phase has the smaller cell (H3: the collapsed one)
                why = self._order_violation(fit, parent, opt)
                if why:
                    return why
                continue
            lp, lo = lattice(parent), lattice(opt)
            prev_p, prev_o = prev.phases.get(parent), prev.phases.get(opt)
            if opt in prev.active:
                same = dist(lp, prev_p) + dist(lo, prev_o)
                swap = dist(lp, prev_o) + dist(lo, prev_p)
            else:
                same, swap = dist(lp, prev_p), dist(lo, prev_p)
            if np.isfinite(same) and np.isfinite(swap) and swap < same:
                return f"phase labels exchanged ({opt} continues the {parent} lattice of the last good frame)"
        return ""

    def _order_violation(self, fit: Any, parent: str, opt: str) -> str:
        """'' or why the fitted cells of ``parent`` and ``opt`` are in the opposite order (by
        volume) from the recipe's start cells, when those differ by more than 0.2 %."""
        def volume(name: str, values: Callable[[str], float]) -> float:
            a, c = values(f"{name}_a"), values(f"{name}_c")
            return a * a * c if np.isfinite(a) and np.isfinite(c) else math.nan

        def start(key: str) -> float:
            ph, par = key.split("_", 1)
            v = getattr(self.spec.phase(ph), par, None)
            return float(v) if v is not None else math.nan

        v0p, v0o = volume(parent, start), volume(opt, start)
        vp, vo = volume(parent, lambda k: _param_value(fit, k)[0]), volume(opt, lambda k: _param_value(fit, k)[0])
        if not all(np.isfinite(v) for v in (v0p, v0o, vp, vo)) or abs(v0o / v0p - 1.0) < 0.002:
            return ""
        if (vo - vp) * (v0o - v0p) < 0:
            return (f"phase labels exchanged ({opt} cell {vo:.2f} A^3 vs {parent} {vp:.2f}: the recipe's start "
                    f"cells are in the other order)")
        return ""

    def _swapped_spec(self, spec: RefinementSpec, fit: Any, parent: str, opt: str) -> RefinementSpec:
        """``spec`` with the fitted lattices and microstrains of ``parent`` and ``opt`` exchanged."""
        upd: dict[str, dict[str, float]] = {parent: {}, opt: {}}
        for src, dst in ((parent, opt), (opt, parent)):
            for key in ("a", "c", "mustrain"):
                v = _param_value(fit, f"{src}_{key}")[0]
                if np.isfinite(v):
                    upd[dst][key] = float(v)
        phases = [p.model_copy(update=upd[p.name]) if p.name in upd else p for p in spec.phases]
        return spec.model_copy(update={"phases": phases})

    def _f_test(self, fit0: Any, fit1: Any) -> float:
        """p-value of the chi2 improvement of fit1 (more parameters) over fit0."""
        extra = int(fit1.nvarys) - int(fit0.nvarys)
        dof1 = int(fit1.nobs) - int(fit1.nvarys)
        if extra <= 0 or dof1 <= 0 or not (fit1.chi2 > 0):
            return 1.0
        f = ((fit0.chi2 - fit1.chi2) / extra) / (fit1.chi2 / dof1)
        if not np.isfinite(f) or f <= 0:
            return 1.0
        return float(stats.f.sf(f, extra, dof1))

    def _distinct(self, fit: Any, name: str) -> bool:
        """The optional phase's lattice differs from every base phase's by > 3 esd and > 0.05 %."""
        for base in self.base_phases:
            diffs = []
            for par in ("a", "c"):
                v1, e1 = _param_value(fit, f"{name}_{par}")
                v0, e0 = _param_value(fit, f"{base}_{par}")
                if not (np.isfinite(v1) and np.isfinite(v0)):
                    continue
                e = math.hypot(e0 if np.isfinite(e0) else 0.0, e1 if np.isfinite(e1) else 0.0)
                diffs.append(abs(v1 - v0) > max(3 * e, 5e-4 * abs(v0)))
            if diffs and not any(diffs):
                return False
        return True

    def _optional_justified(self, fit0: Any, fit1: Any, name: str) -> tuple[bool, float, str]:
        o = self.opt.optional_phase
        p = self._f_test(fit0, fit1)
        frac, esd = fit1.phase_fraction.get(name, (0.0, math.nan))
        why = []
        if not p < o.f_test_alpha:
            why.append(f"F-test p={p:.3g}")
        if not (np.isfinite(esd) and frac > o.min_fraction_sigma * esd):
            why.append(f"fraction {frac:.4f} <= {o.min_fraction_sigma} x esd {esd:.4f}")
        if not frac > o.min_fraction:
            why.append(f"fraction {frac:.4f} <= {o.min_fraction}")
        if not self._distinct(fit1, name):
            why.append("lattice not distinct from the main phase")
        if self._suspect(fit1).startswith(("fit failed", "Rwp not")):
            why.append("fit failed")
        swapped = self._swapped(fit1)
        if swapped:
            why.append(swapped)
        return (not why), p, "; ".join(why)

    def _trial_spec_for_optional(self, spec: RefinementSpec, fit0: Any, name: str) -> RefinementSpec:
        """Start lattice of the optional phase from a grid search on the residual of fit0."""
        ph = spec.phase(name)
        phase = _phase_object(spec, name, self._refinement_for(spec))
        if phase is None or not {"a", "c"} & set(ph.refine):
            return spec
        tth = np.asarray(fit0.two_theta_deg)
        resid = np.clip(np.asarray(fit0.obs) - np.asarray(fit0.calc), 0, None) + 0.0
        zero = _param_value(fit0, "zero_deg")[0]
        a, c = coarse_lattice_search(phase, self.wavelength_A, tth, resid + np.asarray(fit0.background) * 0,
                                     ph.lattice_bound_pct * 0.95, zero if np.isfinite(zero) else 0.0)
        spec = _with_lattice(spec, name, a, c)
        # peak width: unless the recipe gives one, start from the fitted microstrain of the phase
        # it grows from (same particles; a coated H3 at the onset is ~3x broader than the default
        # start, and a too narrow start leaves the new phase "not significant" at its start lattice)
        parent = self._split_from(name)
        mu = _param_value(fit0, f"{parent}_mustrain")[0]
        if "mustrain" in ph.refine and "mustrain" not in self.spec.phase(name).model_fields_set and np.isfinite(mu) \
                and mu > 0:
            phases = [p.model_copy(update={"mustrain": float(mu)}) if p.name == name else p for p in spec.phases]
            spec = spec.model_copy(update={"phases": phases})
        return spec

    def _split_from(self, name: str) -> str:
        """The base phase an optional phase grows from: the first base phase of its template."""
        tpl = (self.spec.phase(name).template or "").lower()
        for base in self.base_phases:
            if tpl and (self.spec.phase(base).template or "").lower() == tpl:
                return base
        return self.base_phases[0]

    def _prescreen(self, spec: RefinementSpec, fit0: Any, name: str) -> tuple[float, float]:
        """Cheap estimate of the optional phase in the residual of fit0: (z, weight fraction).

        The phase's calculated pattern (lattice from the residual search, instrument profile of
        fit0, microstrain of the phase it grows from) is scaled to the weighted residual by one
        linear amplitude; z is that amplitude over its esd, the fraction is the Hill-Howard weight
        fraction the amplitude implies next to fit0's phases. Both ignore the correlations the full
        fit has (background, Le Bail intensities), so they overestimate what the full fit can find:
        a small z or fraction means the full test would reject the phase anyway.
        (inf, inf) when it cannot be computed (the full test then decides).
        """
        from insitu_xrd.core.pattern import Instrument, PhaseState, calc_pattern

        try:
            phase = _phase_object(spec, name, self._refinement_for(spec))
            if phase is None:
                return math.inf, math.inf
            ph = spec.phase(name)

            def v(key: str, default: float) -> float:
                val = _param_value(fit0, key)[0]
                return val if np.isfinite(val) else default

            parent = self._split_from(name)
            mustrain = v(f"{parent}_mustrain", ph.mustrain) if parent in fit0.active_phases else ph.mustrain
            inst = Instrument(self.wavelength_A, U=v("U", 0.0), V=v("V", 0.0), W=v("W", 1.0), X=v("X", 0.0),
                              Y=v("Y", 0.0), zero_deg=v("zero_deg", 0.0), sh_l=v("sh_l", 0.0))
            x = np.asarray(fit0.two_theta_deg, dtype=float)
            curve = calc_pattern(x, [PhaseState(phase, scale=1.0, mustrain=max(mustrain, 0.0),
                                                size_um=ph.size_um or np.inf)], inst).phases[name]
            w = 1.0 / np.asarray(fit0.sigma, dtype=float)
            r = (np.asarray(fit0.obs) - np.asarray(fit0.calc)) * w
            cw = curve * w
            den = float(np.dot(cw, cw))
            if not den > 0:
                return 0.0, 0.0
            amp = float(np.dot(r, cw)) / den
            esd = math.sqrt(max(float(fit0.gof), 1.0) / den)
            z = amp / esd
            # implied weight fraction: amp * ZMV / (amp * ZMV + sum_k S_k ZMV_k), the sum taken
            # from the main phase's scale and weight fraction in fit0
            frac = math.inf
            main = parent if parent in fit0.active_phases else self.base_phases[0]
            s_main = _param_value(fit0, f"{main}_scale")[0]
            w_main = fit0.phase_fraction.get(main, (math.nan, math.nan))[0]
            main_obj = _phase_object(spec, main, self._refinement_for(spec))
            if main_obj is not None and np.isfinite(s_main) and s_main > 0 and np.isfinite(w_main) and w_main > 0:
                a_m, c_m = v(f"{main}_a", main_obj.a), v(f"{main}_c", main_obj.c)
                main_obj = main_obj.with_cell(a=a_m, c=c_m)
                total = s_main * main_obj.cell_mass_amu * main_obj.volume_A3 / w_main
                opt = max(amp, 0.0) * phase.cell_mass_amu * phase.volume_A3
                frac = opt / (opt + total)
            return z, frac
        except Exception:
            return math.inf, math.inf

    # -- one frame ---------------------------------------------------------------------------
    def step(self, index: int, two_theta_deg: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
             pattern_status: str = "ok", time_s: float = math.nan, key: str = "") -> FrameRecord:
        """Fit one frame; never raises for a bad frame (the record's status says what happened).

        ``index``: the frame's position (the record's ``index``); ``time_s``: its time in s (the
        lattice start is extrapolated by time when the frames' times are known, by position
        otherwise); ``key``: a stable name the record carries (also through a look-back)."""
        rec = self._step_checked(index, two_theta_deg, intensity, sigma, pattern_status, float(time_s))
        rec.time_s, rec.key = float(time_s), key  # a fresh record (also the one kept as last_good)
        return rec

    def _step_checked(self, index: int, two_theta_deg: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                      pattern_status: str, time_s: float) -> FrameRecord:
        if pattern_status != "ok":
            return FrameRecord(index=index, status=f"skipped: {pattern_status}", active=list(self.active))
        tth = np.asarray(two_theta_deg, dtype=float)
        y = np.asarray(intensity, dtype=float)
        s = np.asarray(sigma, dtype=float)
        good = np.isfinite(y) & np.isfinite(s) & (s > 0)
        if good.sum() < 50:
            return FrameRecord(index=index, status="skipped: too few valid points", active=list(self.active))
        tth, y, s = tth[good], y[good], s[good]
        try:
            return self._step(index, tth, y, s, time_s)
        except InsituXRDError as exc:
            return FrameRecord(index=index, status="error", message=str(exc), active=list(self.active))
        except Exception as exc:  # numerical failure on one frame must not stop the run
            return FrameRecord(index=index, status="error", message=f"{type(exc).__name__}: {exc}",
                               active=list(self.active))

    def _start(self, tth: np.ndarray, y: np.ndarray, index: int, time_s: float) -> tuple[RefinementSpec, Any]:
        """(spec, start FitResult or None) for the fit of frame ``index`` (at ``time_s``)."""
        if self.prev_fit is not None:
            return self.cur_spec, self._extrapolated(self._unstuck(self.prev_fit), index, time_s)
        if self.last_good is not None:  # resumed or seeded chunk: values from the stored record
            return seeded_spec(self.spec, self.last_good.values), None
        return self._cold_spec(tth, y), None

    def _unstuck(self, fit: Any) -> Any:
        """``fit`` as the next frame's start, with every non-lattice parameter that ended at a
        bound (a diffuse component's offset or width, a profile term) back at its recipe start
        value. A value at a bound is no estimate, and carried from frame to frame it would keep
        the chain in that corner (seen: a diffuse offset at -0.3 deg with a negative area after
        a cold start in a two-phase frame, biasing H2 c by +1e-3 A for 25 frames)."""
        import dataclasses

        stuck = [n for n in getattr(fit, "at_bounds", []) or []
                 if not (n.count("_") == 1 and n.rsplit("_", 1)[-1] in ("a", "b", "c"))]
        params = getattr(fit, "params", None)
        if not stuck or params is None:
            return fit
        try:
            init = self._refinement_for(self.cur_spec).initial_params(list(fit.active_phases))
            new = params.copy()
            for n in stuck:
                if n in init and n in new:
                    new[n].set(value=float(np.clip(init[n].value, new[n].min, new[n].max)))
            return dataclasses.replace(fit, params=new)
        except Exception:  # a start that cannot be rebuilt: keep the previous fit as it is
            return fit

    def _extrapolated(self, fit: Any, index: int, time_s: float = math.nan) -> Any:
        """``fit`` as the start of frame ``index`` (at ``time_s``) with every refined lattice
        parameter moved on linearly from the last two good frames (scaled by the frame spacing;
        not across a gap of more than twice the last spacing, nor for a phase absent from either
        frame). The lattice drifts steadily during a charge: in the demo consecutive frames are
        ~100 esd apart, which costs a fit started at the previous values several Gauss-Newton steps.

        The spacing is the frames' time when all three are known, their position otherwise: a
        position counts files, and an extra file (a corrupt frame that sorts in between, seen in
        watch mode where it lands at a moment that depends on the machine's speed) is no step in
        the charge; the start must not depend on it."""
        import dataclasses

        prev, before = self.last_good, self.before_last
        params = getattr(fit, "params", None)
        if prev is None or before is None or params is None:
            return fit
        times = (before.time_s, prev.time_s, time_s)
        if all(np.isfinite(t) for t in times):
            step_prev, step_next = times[1] - times[0], times[2] - times[1]
        else:
            step_prev, step_next = prev.index - before.index, index - prev.index
        if step_prev == 0 or step_next * step_prev <= 0 or abs(step_next) > 2 * abs(step_prev):
            return fit
        ratio = step_next / step_prev
        new = params.copy()
        moved = False
        for name in fit.active_phases:
            if name not in before.active or name not in prev.active:
                continue
            for ln in ("a", "b", "c"):
                key = f"{name}_{ln}"
                par = new.get(key)
                v0 = before.values.get(key, math.nan)
                v1 = prev.values.get(key, math.nan)
                if par is None or par.expr or not par.vary or not (np.isfinite(v0) and np.isfinite(v1)):
                    continue
                if v1 != par.value:  # the record is not this fit's (e.g. replaced by a look-back)
                    continue
                par.set(value=float(np.clip(v1 + ratio * (v1 - v0), par.min, par.max)))
                moved = True
        return dataclasses.replace(fit, params=new) if moved else fit

    def _attempt(self, spec: RefinementSpec, start: Any, tth: np.ndarray, y: np.ndarray, s: np.ndarray,
                 cold_base: RefinementSpec | None = None) -> dict:
        """One fit of a frame with the optional-phase logic; returns the outcome without
        changing the refiner's state (committed by the caller). ``cold_base``: the start values
        a cold ``spec`` (lattice from a search) was made from; its fit is then restarted
        (:func:`insitu_xrd.pipeline.cold_start.cold_start`) and the lowest chi2 kept."""
        active = list(self.active)
        below = dict(self.below_count)
        notes: list[str] = []
        rejected: list[tuple[str, Any, RefinementSpec, float]] = []  # optional-phase fits not accepted
        optional_p = math.nan
        fit = self._fit(spec, tth, y, s, start, active)
        if cold_base is not None and start is None:
            from insitu_xrd.pipeline.cold_start import cold_start

            # restarts on refinements of their own (the chain's cached ones stay as they are)
            cs = cold_start(cold_base, lambda sp: self.factory(sp).fit(tth, y, s, start=None, phases=list(active)),
                            first=(spec, fit))
            fit, spec = cs.fit, cs.spec
            notes.extend(cs.notes)
        tested = False
        for name in self.optional_phases:
            if name not in active:
                if (self.frames_since_test + 1) < self.opt.optional_phase.try_every:
                    continue
                tested = True
                trial_spec = self._trial_spec_for_optional(spec, fit, name)
                o = self.opt.optional_phase
                if o.prescreen_sigma > 0:
                    z, frac = self._prescreen(trial_spec, fit, name)
                    if not z > o.prescreen_sigma:
                        notes.append(f"{name} not tested (residual match {z:.1f} sigma <= {o.prescreen_sigma:g})")
                        continue
                    if not frac > o.prescreen_fraction_factor * o.min_fraction:
                        notes.append(f"{name} not tested (residual match {z:.1f} sigma but implied fraction "
                                     f"{frac:.4f} <= {o.prescreen_fraction_factor:g} x {o.min_fraction:g})")
                        continue
                fit1 = self._fit(trial_spec, tth, y, s, fit, active + [name])
                if self._swapped(fit1):
                    # the main phase sits on the new phase's lattice (e.g. a cold start where H3
                    # dominates): start again with the two lattices exchanged
                    swapped_spec = self._swapped_spec(trial_spec, fit1, self._split_from(name), name)
                    fit1b = self._fit(swapped_spec, tth, y, s, None, active + [name])
                    if not self._swapped(fit1b):
                        fit1, trial_spec = fit1b, swapped_spec
                        notes.append(f"{name} and {self._split_from(name)} lattices exchanged")
                ok, p, why_not = self._optional_justified(fit, fit1, name)
                optional_p = p
                if ok:
                    active = active + [name]
                    below[name] = 0
                    fit, spec = fit1, trial_spec
                    notes.append(f"{name} added (F-test p={p:.2g})")
                else:
                    notes.append(f"{name} not added ({why_not})")
                    rejected.append((name, fit1, trial_spec, p))
            else:
                frac, esd = fit.phase_fraction.get(name, (0.0, math.nan))
                o = self.opt.optional_phase
                if np.isfinite(esd) and frac > o.drop_fraction_sigma * esd and frac > o.drop_fraction:
                    below[name] = 0
                else:
                    below[name] = below.get(name, 0) + 1
                if below[name] >= self.opt.optional_phase.drop_after_frames:
                    active = [p for p in active if p != name]
                    fit0 = self._fit(spec, tth, y, s, fit, active)
                    optional_p = self._f_test(fit0, fit)
                    fit = fit0
                    notes.append(f"{name} dropped (fraction {frac:.4f} +/- {esd:.2g})")
        return {"fit": fit, "spec": spec, "active": active, "below": below, "notes": notes,
                "optional_p": optional_p, "tested": tested, "why": self._suspect(fit) or self._swapped(fit),
                "rejected": rejected}

    def _rescue(self, out: dict) -> dict | None:
        """When the fit without an optional phase diverged (e.g. its Rwp jumped because the new
        phase's peaks are unmodelled) and the fit with it, rejected only for a fraction below
        ``min_fraction_sigma`` esds (large near the onset when the two phases overlap), is sound
        and strongly preferred by the F-test: that fit, with the phase added. None otherwise."""
        o = self.opt.optional_phase
        for name, fit1, trial_spec, p in out.get("rejected", []):
            frac, _esd = fit1.phase_fraction.get(name, (0.0, math.nan))
            if not (p < o.f_test_alpha and frac > o.min_fraction and self._distinct(fit1, name)):
                continue
            if self._suspect(fit1) or self._swapped(fit1):
                continue
            below = dict(out["below"])
            below[name] = 0
            notes = [n for n in out["notes"] if not n.startswith(f"{name} not added")]
            notes.append(f"{name} added although its fraction {frac:.4f} is < {o.min_fraction_sigma:g} esd: the fit "
                         f"without it diverged ({out['why']}), F-test p={p:.2g}")
            return {"fit": fit1, "spec": trial_spec, "active": out["active"] + [name], "below": below,
                    "notes": notes, "optional_p": p, "tested": True, "why": "", "rejected": []}
        return None

    def _step(self, index: int, tth: np.ndarray, y: np.ndarray, s: np.ndarray, time_s: float) -> FrameRecord:
        cold = self.prev_fit is None and self.last_good is None  # _start searches the lattice
        spec, start = self._start(tth, y, index, time_s)
        out = self._attempt(spec, start, tth, y, s, cold_base=self.spec if cold else None)
        status = "ok"
        notes: list[str] = []
        if out["why"]:
            # the optional phase may explain the jump: then it is a detection, not a divergence
            out = self._rescue(out) or out
        if out["why"]:
            notes.append(f"diverged ({out['why']})")
            # refit from the last good frame's values and from a fresh lattice search
            candidates = [out]
            seeded = seeded_spec(self.spec, self.last_good.values) if self.last_good is not None else None
            if seeded is not None:
                candidates.append(self._attempt(seeded, None, tth, y, s))
            # the lattice search is centred on the last good lattice (other phases start there too)
            candidates.append(self._attempt(self._cold_spec(tth, y, seeded), None, tth, y, s,
                                            cold_base=seeded if seeded is not None else self.spec))
            candidates = candidates[:1] + [(self._rescue(c) or c) if c["why"] else c for c in candidates[1:]]
            acceptable = [c for c in candidates[1:] if not c["why"]]
            if acceptable:
                out = min(acceptable, key=lambda c: c["fit"].rwp)
                status = "refit"
                notes.append("refit from the last good frame / a lattice search")
            else:
                out = min(candidates, key=lambda c: c["fit"].rwp if np.isfinite(c["fit"].rwp) else np.inf)
                status = "diverged"
        fit = out["fit"]
        rec = record_from_fit(index, fit, self.spec, status=status, message="; ".join(out["notes"] + notes),
                              optional_p=out["optional_p"])
        if status != "diverged":
            self._look_back(fit, out["spec"])
            self.prev_fit, self.cur_spec = fit, out["spec"]
            self.active, self.below_count = out["active"], out["below"]
            self.frames_since_test = 0 if out["tested"] else self.frames_since_test + 1
            self.before_last, self.last_good = self.last_good, rec
            self.rwp_history.append(float(fit.rwp))
            held = [n for n in out["active"] if n in self.optional_phases and self._lattice_held(fit, n)]
            if held and self._lookback is None:
                self._lookback = {"index": index, "tth": tth, "y": y, "s": s, "active": list(out["active"]),
                                  "names": held, "record": rec, "chi2": float(fit.chi2)}
        else:
            self.prev_fit = None  # the next frame starts from the last good values
        return rec

    def pop_revised(self) -> list[FrameRecord]:
        """Records of earlier frames fitted again by a look-back since the last call."""
        out, self.revised = self.revised, []
        return out

    def _lattice_held(self, fit: Any, name: str) -> bool:
        """A lattice length of ``name`` that the recipe refines has no esd in ``fit`` (held)."""
        ph = self.spec.phase(name)
        for par in ("a", "c"):
            if par in ph.refine:
                v, e = _param_value(fit, f"{name}_{par}")
                if np.isfinite(v) and not np.isfinite(e):
                    return True
        return False

    def _look_back(self, fit: Any, spec: RefinementSpec) -> None:
        """Fit a frame again from this one when the optional phase's lattice was held there.

        On the frame where H3 appears its fraction is small; the engine may then hold its lattice
        at the residual search's start value (its Le Bail structure scale below 3 esd), which is
        off by up to 0.3 % for broad overlapping peaks and biases the main phase of that frame
        (seen: H2 a by 4e-4 A on the coated charge). On the next frame H3 is stronger and refined;
        started from that fit, the onset frame converges too (chi2 -43 % there, H2 a within 1e-5 A;
        H3's lattice may stay held, now at the next frame's refined value: no esd). The better fit
        (lower chi2, sound) replaces the onset frame's record (see :meth:`pop_revised`).
        """
        lb, self._lookback = self._lookback, None
        if lb is None or any(n not in fit.active_phases or self._lattice_held(fit, n) for n in lb["names"]):
            return
        try:
            refit = self._fit(spec, lb["tth"], lb["y"], lb["s"], fit, lb["active"])
        except Exception:
            return
        if self._suspect(refit) or self._swapped(refit) or not refit.chi2 < lb["chi2"]:
            return
        old = lb["record"]
        still = [n for n in lb["names"] if self._lattice_held(refit, n)]
        note = (f"fitted again from the next frame ({', '.join(lb['names'])} lattice was held at its search start"
                + (f"; now held at the next frame's value" if still else "") + ")")
        rec = record_from_fit(old.index, refit, self.spec, status=old.status,
                              message="; ".join(m for m in (old.message, note) if m), optional_p=old.optional_p)
        rec.time_s, rec.key = old.time_s, old.key
        self.revised.append(rec)


# ---------------------------------------------------------------------------------------------
# Dataset <-> records


def records_to_dataset(records: Sequence[FrameRecord | None], patterns: xr.Dataset, spec: RefinementSpec,
                       attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """Assemble the sequential-refinement Dataset (dims frame, phase, two_theta).

    ``records[i]`` belongs to frame i of ``patterns`` (None = not fitted yet: status "pending").
    """
    nf = patterns.sizes["frame"]
    phases = [p.name for p in spec.phases]
    npn = len(phases)
    xname = "two_theta" if "two_theta" in patterns.coords else ("q" if "q" in patterns.coords else "two_theta")
    tth_grid = _two_theta_axis(patterns)
    data: dict[str, Any] = {}
    per = {}
    for var in list(PER_PHASE_VARS) + ["phase_fraction"]:
        per[var] = np.full((nf, npn), np.nan)
        per[var + "_esd"] = np.full((nf, npn), np.nan)
    active = np.zeros((nf, npn), dtype=bool)
    rwp = np.full(nf, np.nan)
    gof = np.full(nf, np.nan)
    zero = np.full(nf, np.nan)
    zero_esd = np.full(nf, np.nan)
    opt_p = np.full(nf, np.nan)
    status = np.array(["pending"] * nf, dtype=object)
    message = np.array([""] * nf, dtype=object)
    calc = np.full((nf, len(tth_grid)), np.nan, dtype=np.float32)
    bkg = np.full((nf, len(tth_grid)), np.nan, dtype=np.float32)
    values_json = np.array([""] * nf, dtype=object)
    terms = list(CORR_WITH)
    corr_vars = {"microstrain_correlation": np.full((nf, npn, len(terms)), np.nan),
                 "size_correlation": np.full((nf, npn, len(terms)), np.nan)}
    for i, rec in enumerate(records):
        if rec is None:
            continue
        for j, name in enumerate(phases):
            for var, own in (("microstrain_correlation", "mustrain"), ("size_correlation", "size_um")):
                for k, term in enumerate(terms):
                    key = f"{name}_{own}|{CORR_WITH[term].format(p=name)}"
                    if rec.correlations and key in rec.correlations:
                        corr_vars[var][i, j, k] = rec.correlations[key]
        status[i] = rec.status
        message[i] = rec.message
        rwp[i], gof[i], zero[i], zero_esd[i], opt_p[i] = rec.rwp, rec.gof, rec.zero_shift, rec.zero_shift_esd, rec.optional_p
        for j, name in enumerate(phases):
            d = rec.phases.get(name)
            active[i, j] = name in rec.active and rec.good
            if d:
                for k in per:
                    per[k][i, j] = d.get(k, np.nan)
            elif rec.good or rec.status == "diverged":
                per["phase_fraction"][i, j] = 0.0
        if rec.fit_two_theta is not None and rec.calc is not None:
            idx = np.searchsorted(tth_grid, rec.fit_two_theta)
            idx = np.clip(idx, 0, len(tth_grid) - 1)
            hit = np.isclose(tth_grid[idx], rec.fit_two_theta, rtol=0, atol=1e-9)
            calc[i, idx[hit]] = rec.calc[hit]
            if rec.background is not None:
                bkg[i, idx[hit]] = rec.background[hit]
        values_json[i] = json.dumps(rec.values) if rec.values else ""
    dims2 = ("frame", "phase")
    for k, v in per.items():
        data[k] = (dims2, v)
    # fraction within the cathode (phases of the first phase's template, plus optional phases):
    # the lever-rule H2/H3 fraction, independent of cell lines (Al, Li) in the beam
    cath = cathode_phases(spec)
    cidx = [phases.index(p) for p in cath]
    wf = np.nan_to_num(per["phase_fraction"][:, cidx])
    wf_esd = np.nan_to_num(per["phase_fraction_esd"][:, cidx])
    tot = wf.sum(axis=1, keepdims=True)
    cf = np.full((nf, npn), np.nan)
    cf_esd = np.full((nf, npn), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_c = np.where(tot > 0, wf / tot, np.nan)
        # first-order propagation, treating the weight fractions as independent
        esd_c = np.where(tot > 0, np.sqrt(((1 - frac_c) * wf_esd) ** 2 + (frac_c**2) * (np.sum(wf_esd**2, axis=1, keepdims=True) - wf_esd**2)) / tot, np.nan)
    cf[:, cidx] = frac_c
    cf_esd[:, cidx] = esd_c
    no_fit = np.array([r is None or not (r.good or r.status == "diverged") for r in records] + [True] * (nf - len(records)))[:nf]
    cf[no_fit] = np.nan
    cf_esd[no_fit] = np.nan
    data["cathode_fraction"] = (dims2, cf)
    data["cathode_fraction_esd"] = (dims2, cf_esd)
    for var, arr in corr_vars.items():
        data[var] = (("frame", "phase", "corr_with"), arr)
    data["active"] = (dims2, active)
    data["rwp"] = (("frame",), rwp)
    data["gof"] = (("frame",), gof)
    data["zero_shift"] = (("frame",), zero)
    data["zero_shift_esd"] = (("frame",), zero_esd)
    data["optional_phase_p"] = (("frame",), opt_p)
    data["status"] = (("frame",), status.astype(str))
    data["message"] = (("frame",), message.astype(str))
    data["fit_values"] = (("frame",), values_json.astype(str))
    data["calc"] = (("frame", "two_theta"), calc)
    data["background"] = (("frame", "two_theta"), bkg)
    coords: dict[str, Any] = {
        "frame": ("frame", patterns["frame"].values if "frame" in patterns.coords else np.arange(nf)),
        "phase": ("phase", np.array(phases, dtype=str)),
        "corr_with": ("corr_with", np.array(terms, dtype=str)),
        "two_theta": ("two_theta", tth_grid, {"units": "deg", "long_name": "2theta"}),
    }
    for cname in ("time_s", "frame_name"):
        if cname in patterns.coords or cname in patterns:
            coords[cname] = ("frame", patterns[cname].values)
    ds = xr.Dataset(data, coords=coords)
    for k in list(ds.data_vars) + ["time_s"]:
        base = k[:-4] if k.endswith("_esd") else k
        if base in UNITS and k in ds.variables:
            ds[k].attrs["units"] = UNITS[base]
    ds["optional_phase_p"].attrs["long_name"] = "F-test p-value of the optional phase (NaN: not tested)"
    ds["active"].attrs["long_name"] = "phase present in this frame's fit"
    for var, what in (("microstrain_correlation", "microstrain"), ("size_correlation", "size")):
        ds[var].attrs["long_name"] = (f"correlation of the phase's {what} with its microstrain/size and the instrument "
                                      "terms U..Y (NaN: a parameter not refined)")
    ds.attrs.update({
        "wavelength_A": float(patterns.attrs.get("wavelength_A", np.nan)),
        "units": json.dumps({k: v for k, v in UNITS.items()}),
        "optional_phases": json.dumps([p.name for p in spec.phases if p.optional]),
        "cathode_phases": json.dumps(cath),
        "refinement_spec": spec.model_dump_json(),
        "software_versions": software_versions_json(),
        "created_utc": utc_now_iso(),
        "source_unit": xname,
    })
    ds.attrs.update(phase_onset_attrs(ds))
    if attrs:
        ds.attrs.update(attrs)
    return ds


def cathode_phases(spec: RefinementSpec) -> list[str]:
    """Phases of the electrode material: the first phase, phases with its template, optional phases."""
    first = spec.phases[0]
    out = []
    for p in spec.phases:
        same = p.template is not None and first.template is not None and p.template.lower() == first.template.lower()
        if p is first or same or p.optional:
            out.append(p.name)
    return out


def phase_onset_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """Frame (index and name) where each optional phase first appears and stays (attrs)."""
    out: dict[str, Any] = {}
    phases = [str(p) for p in ds["phase"].values]
    for name in json.loads(ds.attrs.get("optional_phases", "[]")):
        if name not in phases:
            continue
        act = ds["active"].sel(phase=name).values.astype(bool)
        onset = _onset_index(act, ds["status"].values)
        out[f"{name}_onset_frame"] = int(onset) if onset is not None else -1
        if onset is not None:
            out[f"{name}_onset_frame_name"] = str(ds["frame_name"].values[onset]) if "frame_name" in ds.coords else str(onset)
            if "time_s" in ds.coords:
                out[f"{name}_onset_time_s"] = float(ds["time_s"].values[onset])
            for xc in ("x_li", "soc", "voltage_V", "capacity_mAh_g"):
                if xc in ds.coords:
                    out[f"{name}_onset_{xc}"] = float(ds[xc].values[onset])
    return out


def _onset_index(active: np.ndarray, status: np.ndarray) -> int | None:
    """First frame from which the phase is present in the majority of the following good frames."""
    good = np.array([str(s) in ("ok", "refit") for s in status])
    idx = np.flatnonzero(active & good)
    if idx.size == 0:
        return None
    for i in idx:
        after = active[i:][good[i:]]
        if after.mean() >= 0.5:
            return int(i)
    return int(idx[0])


def dataset_to_records(ds: xr.Dataset) -> list[FrameRecord | None]:
    """Records back from a (checkpoint) Dataset; pending frames -> None. Curves are restored too."""
    phases = [str(p) for p in ds["phase"].values]
    tth = ds["two_theta"].values
    out: list[FrameRecord | None] = []
    for i in range(ds.sizes["frame"]):
        st = str(ds["status"].values[i])
        if st == "pending":
            out.append(None)
            continue
        rec = FrameRecord(index=i, status=st, rwp=float(ds["rwp"].values[i]), gof=float(ds["gof"].values[i]),
                          zero_shift=float(ds["zero_shift"].values[i]), zero_shift_esd=float(ds["zero_shift_esd"].values[i]),
                          optional_p=float(ds["optional_phase_p"].values[i]), message=str(ds["message"].values[i]),
                          time_s=_frame_time_s(ds, i))
        rec.active = [p for j, p in enumerate(phases) if bool(ds["active"].values[i, j])]
        for j, p in enumerate(phases):
            d = {}
            for var in list(PER_PHASE_VARS) + ["phase_fraction"]:
                d[var] = float(ds[var].values[i, j])
                d[var + "_esd"] = float(ds[var + "_esd"].values[i, j])
            rec.phases[p] = d
        vj = str(ds["fit_values"].values[i])
        rec.values = json.loads(vj) if vj else {}
        if "microstrain_correlation" in ds and "corr_with" in ds.coords:
            rec.correlations = {}
            for var, own in (("microstrain_correlation", "mustrain"), ("size_correlation", "size_um")):
                for j, p in enumerate(phases):
                    for k, term in enumerate(str(t) for t in ds["corr_with"].values):
                        v = float(ds[var].values[i, j, k])
                        if np.isfinite(v) and term in CORR_WITH:
                            rec.correlations[f"{p}_{own}|{CORR_WITH[term].format(p=p)}"] = v
        calc = ds["calc"].values[i].astype(float)
        keep = np.isfinite(calc)
        if keep.any():
            rec.fit_two_theta = tth[keep]
            rec.calc = calc[keep]
            rec.background = ds["background"].values[i].astype(float)[keep]
        out.append(rec)
    return out


def _two_theta_axis(patterns: xr.Dataset) -> np.ndarray:
    if "two_theta" in patterns.coords:
        return np.asarray(patterns["two_theta"].values, dtype=float)
    if "q" in patterns.coords:
        lam = float(patterns.attrs["wavelength_A"])
        q = np.asarray(patterns["q"].values, dtype=float)
        return np.degrees(2 * np.arcsin(np.clip(q * lam / (4 * np.pi), 0, 1)))
    raise InsituXRDError("patterns Dataset has neither a 'two_theta' nor a 'q' coordinate")


# ---------------------------------------------------------------------------------------------
# batch driver: chunks, processes, checkpoints


def _frame_time_s(patterns: xr.Dataset, i: int) -> float:
    """Time of frame ``i`` in s (NaN when the patterns carry none)."""
    if "time_s" not in patterns.coords and "time_s" not in patterns:
        return math.nan
    return float(patterns["time_s"].values[i])


def _frame_arrays(patterns: xr.Dataset, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, float]:
    """(two_theta_deg, intensity, sigma, pattern status, time_s) of frame ``i``."""
    tth = _two_theta_axis(patterns)
    y = np.asarray(patterns["intensity"].values[i], dtype=float)
    s = np.asarray(patterns["sigma"].values[i], dtype=float) if "sigma" in patterns else np.sqrt(np.clip(y, 1, None))
    st = str(patterns["status"].values[i]) if "status" in patterns else "ok"
    return tth, y, s, st, _frame_time_s(patterns, i)


def _run_chain(spec: RefinementSpec, wavelength_A: float, factory: RefinementFactory, options: SequentialSection,
               order: Sequence[int], frames: dict[int, tuple], seed: FrameRecord | None,
               emit: Callable[..., None], state: bytes | None = None, with_refiner: bool = False) -> list[FrameRecord]:
    """Fit ``order`` in one chain; ``state``: an exact resume state (see
    :meth:`SequentialRefiner.state_bytes`); ``emit(rec)`` or, with ``with_refiner``,
    ``emit(rec, refiner)`` after every frame."""
    ref = SequentialRefiner(spec, wavelength_A, factory, options, seed=seed)
    if state is not None:
        ref.restore_state(state)
    out = []
    for i in order:
        tth, y, s, st, t_s = frames[i]
        rec = ref.step(i, tth, y, s, st, time_s=t_s)
        for r in [rec] + ref.pop_revised():  # a look-back may replace an earlier frame's record
            out.append(r)
            if with_refiner:
                emit(r, ref)
            else:
                emit(r)
    return out


def chain_state_path(checkpoint: Path) -> Path:
    """Where the exact-resume state of a checkpoint lives (``<checkpoint>.state``, a pickle)."""
    return Path(checkpoint).with_name(Path(checkpoint).name + ".state")


def read_chain_state(path: Path, cache_key: str | None, after: str) -> bytes | None:
    """The pickled chain state in ``path`` if it was written with ``cache_key`` right after the
    frame ``after`` (index or frame key, as a string); else None."""
    import pickle

    try:
        with open(path, "rb") as fh:
            st = pickle.load(fh)
    except Exception:
        return None
    if not isinstance(st, dict) or st.get("cache_key") != (cache_key or "") or str(st.get("after")) != str(after):
        return None
    blob = st.get("state")
    return blob if isinstance(blob, bytes) else None


def write_chain_state(path: Path, cache_key: str | None, after: str, refiner: SequentialRefiner) -> bool:
    """Write the chain state (atomically) next to a checkpoint; see :func:`read_chain_state`.
    Never raises: without the state a resume is seeded from the stored values (returns False)."""
    import pickle

    tmp = path.with_name(path.name + ".tmp")
    try:
        blob = pickle.dumps({"cache_key": cache_key or "", "after": str(after), "state": refiner.state_bytes()},
                            protocol=pickle.HIGHEST_PROTOCOL)
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        return True
    except Exception:
        try:
            path.unlink(missing_ok=True)  # a stale state must not be taken for this one
        except OSError:
            pass
        return False


# worker-process globals (set by the pool initializer)
_W: dict[str, Any] = {}


def _worker_init(spec_json: str, wavelength_A: float, base_dir: str, options_json: str, queue: Any) -> None:
    from insitu_xrd.pipeline.refine_setup import make_refinement

    spec = RefinementSpec.model_validate_json(spec_json)
    _W.update(spec=spec, wavelength=wavelength_A, options=SequentialSection.model_validate_json(options_json), queue=queue,
              factory=lambda sp: make_refinement(sp, wavelength_A, base_dir))


def _worker_chain(order: list[int], frames: dict[int, tuple], seed: FrameRecord | None) -> list[FrameRecord]:
    q = _W["queue"]
    return _run_chain(_W["spec"], _W["wavelength"], _W["factory"], _W["options"], order, frames, seed,
                      lambda rec: q.put(rec.index))


def _agree(r1: FrameRecord | None, r2: FrameRecord | None, spec: RefinementSpec) -> bool:
    """Two fits of the same (overlap) frame agree: same phases, lattices within 5 esd (or 2e-4 rel)."""
    if r1 is None or r2 is None or not (r1.good and r2.good):
        return False
    if sorted(r1.active) != sorted(r2.active):
        return False
    for name in r1.active:
        for var in ("a", "c"):
            v1, v2 = r1.phases[name][var], r2.phases[name][var]
            e = math.hypot(np.nan_to_num(r1.phases[name][var + "_esd"]), np.nan_to_num(r2.phases[name][var + "_esd"]))
            if not abs(v1 - v2) <= max(5 * e, 2e-4 * abs(v1)):
                return False
    return abs(r1.rwp - r2.rwp) <= 0.05 * r1.rwp + 1e-6


def refine_sequence(
    patterns: xr.Dataset,
    spec: RefinementSpec,
    factory: RefinementFactory,
    options: SequentialSection | None = None,
    checkpoint: str | Path | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    base_dir: str | Path | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Sequentially refine every frame of a patterns Dataset.

    Parameters
    ----------
    patterns: Dataset with ``intensity``, ``sigma``, ``status`` (frame x two_theta or q).
    spec: refinement section.
    factory: spec -> Refinement, e.g. ``lambda s: make_refinement(s, wavelength_A, base_dir)``.
    options: sequential section (direction, thresholds, chunks, workers, checkpoint_every).
    checkpoint: NetCDF file written as frames finish (with the chain state in
        ``<checkpoint>.state`` for an exact resume); when it exists with the same ``cache_key`` its
        finished frames are kept and the run resumes after them.
    cache_key: identifies inputs + settings (stored in attrs; a different key restarts).
    progress: show a rich progress bar.
    base_dir: folder for relative files of the spec (needed by worker processes, chunks > 1).

    Returns the results Dataset (see module docstring); also written to ``checkpoint``.
    """
    opt = options or SequentialSection()
    wavelength = float(patterns.attrs.get("wavelength_A", np.nan))
    if not np.isfinite(wavelength):
        raise InsituXRDError("patterns Dataset has no wavelength_A attribute")
    nf = patterns.sizes["frame"]
    records: list[FrameRecord | None] = [None] * nf
    ckpt = Path(checkpoint) if checkpoint else None
    state_path = chain_state_path(ckpt) if ckpt is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            with xr.open_dataset(ckpt, engine="h5netcdf") as old:
                old = old.load()
            if old.attrs.get("cache_key") == cache_key and old.sizes.get("frame") == nf:
                records = dataset_to_records(old)
        except Exception:
            records = [None] * nf  # unreadable checkpoint (interrupted write): start over
    order = list(range(nf)) if opt.direction == "forward" else list(range(nf - 1, -1, -1))
    todo = [i for i in order if records[i] is None]
    all_attrs = dict(attrs or {})
    all_attrs.update({"cache_key": cache_key or "", "direction": opt.direction,
                      "sequential_options": opt.model_dump_json()})

    def write() -> None:
        if ckpt is None:
            return
        ds = records_to_dataset(records, patterns, spec, all_attrs)
        _atomic_write(ds, ckpt)

    # contiguous runs of pending frames in fit order, each seeded from the record before it
    runs: list[tuple[list[int], FrameRecord | None]] = []
    pos = {f: k for k, f in enumerate(order)}
    cur: list[int] = []
    for f in todo:
        if cur and pos[f] == pos[cur[-1]] + 1:
            cur.append(f)
        else:
            if cur:
                runs.append((cur, _seed_before(records, order, pos[cur[0]])))
            cur = [f]
    if cur:
        runs.append((cur, _seed_before(records, order, pos[cur[0]])))

    frames = {i: _frame_arrays(patterns, i) for i in todo}
    t0 = time.perf_counter()
    n_done = [0]
    since_write = [0]
    last_write = [t0]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]refine[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=False)
    with prog:
        task = prog.add_task(f"{len(todo)} frames", total=len(todo))

        def emit(rec: FrameRecord, refiner: SequentialRefiner | None = None) -> None:
            revision = records[rec.index] is not None and rec.index in frames
            records[rec.index] = rec
            if revision:  # an earlier frame fitted again (look-back): replaced, not counted again
                return
            n_done[0] += 1
            since_write[0] += 1
            prog.update(task, advance=1, description=f"frame {rec.index} {rec.status} Rwp={rec.rwp:.4f}")
            # writing the whole Dataset costs ~0.2 s for 40 frames: not after every fast frame
            if since_write[0] >= opt.checkpoint_every and time.perf_counter() - last_write[0] >= opt.checkpoint_interval_s:
                if refiner is not None and state_path is not None:
                    write_chain_state(state_path, cache_key, str(rec.index), refiner)
                write()
                since_write[0] = 0
                last_write[0] = time.perf_counter()

        nchunks = max(1, min(opt.chunks, len(todo) // 4 if len(todo) >= 8 else 1))
        if nchunks > 1 and len(runs) == 1:
            _parallel(runs[0], nchunks, opt, spec, wavelength, factory, frames, patterns, records, emit, prog, task,
                      base_dir)
        else:
            for run_order, seed in runs:
                k = pos[run_order[0]]
                state = (read_chain_state(state_path, cache_key, str(order[k - 1]))
                         if state_path is not None and k > 0 and state_path.exists() else None)
                _run_chain(spec, wavelength, factory, opt, run_order, frames, seed, emit, state=state,
                           with_refiner=True)
    write_attrs = {"elapsed_s": time.perf_counter() - t0}
    all_attrs.update(write_attrs)
    ds = records_to_dataset(records, patterns, spec, all_attrs)
    if ckpt is not None:
        _atomic_write(ds, ckpt)
        if state_path is not None and state_path.exists() and all(r is not None for r in records):
            state_path.unlink()  # only an interrupted run needs it
    return ds


def _seed_before(records: list[FrameRecord | None], order: list[int], k: int) -> FrameRecord | None:
    for j in range(k - 1, -1, -1):
        rec = records[order[j]]
        if rec is not None and rec.good:
            return rec
    return None


def _parallel(run: tuple[list[int], FrameRecord | None], nchunks: int, opt: SequentialSection, spec: RefinementSpec,
              wavelength: float, factory: RefinementFactory, frames: dict[int, tuple], patterns: xr.Dataset,
              records: list[FrameRecord | None], emit: Callable[[FrameRecord], None], prog: Any, task: Any,
              base_dir: str | Path | None) -> None:
    """Fit chunks of one run in parallel processes; check overlap frames; refit disagreeing chunks."""
    import concurrent.futures as cf
    import multiprocessing as mp

    order, seed = run
    bounds = np.linspace(0, len(order), nchunks + 1).round().astype(int)
    chunks = []
    for k in range(nchunks):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        part = order[lo:hi]
        if k > 0:
            part = [order[lo - 1]] + part  # overlap frame, fitted by both chunks
        chunks.append(part)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    workers = max(1, min(opt.workers if opt.workers > 1 else nchunks, nchunks, os.cpu_count() or 1))
    results: list[list[FrameRecord] | None] = [None] * nchunks
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(spec.model_dump_json(), wavelength, str(base_dir or "."),
                                          opt.model_dump_json(), queue)) as pool:
        futs = {pool.submit(_worker_chain, chunks[k], {i: frames[i] for i in chunks[k]}, seed if k == 0 else None): k
                for k in range(nchunks)}
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=0.2)
            while not queue.empty():
                idx = queue.get()
                prog.update(task, description=f"frame {idx} (parallel, {nchunks} chunks)")
            for f in done:
                results[futs[f]] = f.result()
    manager.shutdown()
    # accept chunk 0, then each next chunk only if its overlap frame agrees with the previous chunk
    prev_last: FrameRecord | None = None
    for k, res in enumerate(results):
        assert res is not None
        if k == 0:
            for rec in res:
                emit(rec)
            prev_last = res[-1]
            continue
        overlap_other = records[res[0].index]
        if _agree(overlap_other, res[0], spec):
            for rec in res[1:]:
                emit(rec)
        else:
            seed_rec = _seed_before(records, order, order.index(res[1].index))
            serial = _run_chain(spec, wavelength, factory, opt, list(dict.fromkeys(r.index for r in res[1:])), frames,
                                seed_rec, lambda r: None)
            # a serially refit chunk is seeded from a stored record, so re-seed properly by
            # fitting the overlap frame first (keeps seeding continuous); emit the refit frames
            for rec in serial:
                rec.message = (rec.message + "; " if rec.message else "") + "chunk refit serially (overlap disagreed)"
                emit(rec)
        prev_last = records[res[-1].index]


def _atomic_write(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def refit_frame(results: xr.Dataset, patterns: xr.Dataset, index: int, spec: RefinementSpec,
                factory: RefinementFactory) -> Any:
    """Fit one frame again from its stored sequential result (same phases, start = its values);
    gives the full FitResult (curves, reflection ticks) for a Rietveld plot of any frame."""
    recs = dataset_to_records(results.isel(frame=[index]))
    rec = recs[0]
    tth, y, s, st, _t = _frame_arrays(patterns, index)
    if st != "ok":
        raise InsituXRDError(f"frame {index}: pattern status is {st!r}; nothing to fit")
    good = np.isfinite(y) & np.isfinite(s) & (s > 0)
    sp = seeded_spec(spec, rec.values) if rec is not None and rec.values else spec
    active = rec.active if rec is not None and rec.active else [p.name for p in spec.phases if not p.optional]
    return factory(sp).fit(tth[good], y[good], s[good], phases=active)
