"""The chain's decisions: one sequential chain of frames (:class:`SequentialRefiner`).

Every frame is fitted seeded from the previous good result; the refiner decides, frame by frame:

* **Phase appearance** (an ``optional: true`` phase, H3): tried while absent (cheap matched-filter
  prescreen, then the fit with it from a grid-searched start lattice), added when an F-test on the
  chi2 improvement, its fraction's significance and its distinct lattice justify it, dropped when
  its fraction stays small for ``drop_after_frames`` frames; an onset frame whose new lattice stayed
  held is fitted again from the next frame (:meth:`SequentialRefiner._look_back`).
* **Divergence by evidence**: a failed fit, a base phase's lattice at its bound or a fit where no
  phase is significant is refit from the last good frame and from a fresh lattice search
  (``"refit"``, or ``"diverged"`` when no refit is sound); an Rwp jump (``rwp_jump_factor``) is
  only a suspicion: the frame is refit too, and the chained fit stays (``"ok"``, with a note)
  unless a refit reaches a clearly lower chi2. A phase that fades out (the main one included)
  is a result, not a failure.
* **Label continuity**: a fit in which the optional phase took over the main phase's lattice
  (names exchanged) counts as diverged and is refit.
* **Exact resume**: the whole state is saved as data (:meth:`SequentialRefiner.state_bytes`).

:func:`run_chain` fits an order of frames in one refiner; :func:`seam_fits_agree` is the seam test of two
fits of the same frame (used where independently started segments meet); :func:`refit_frame`
fits one stored frame again. How the frames are run (segments, processes, checkpoints) is
:mod:`insitu_xrd.pipeline.sequential.run`'s business, the records and the Dataset
:mod:`insitu_xrd.pipeline.sequential.records`'.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr
from scipy import stats

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.core.symmetry import LATTICE_NAMES
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.fit.stages import SIGNIFICANCE
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential.records import (FrameRecord, dataset_to_records, frame_arrays, param_value,
                                                     record_from_fit, statistical_value)
from insitu_xrd.pipeline.sequential.search import phase_object, residual_match, search_lattice, seeded_spec, with_lattice

__all__ = ["SequentialRefiner", "RefinementFactory", "refit_frame", "run_chain", "seam_fits_agree"]

RefinementFactory = Callable[[RefinementSpec], Any]
RWP_WINDOW = 7  # the divergence check compares a fit's Rwp with the median of the last 7 good fits
#: a refit replaces the chained fit of a suspect frame only when its chi2 is lower by more than
#: this fraction (and by more than 10 x the reduced chi2): "clearly lower", far above the
#: optimizer's convergence noise, below any false minimum seen (15-30 %)
REFIT_CHI2_GAIN = 0.01


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
        intensities, optional-phase counters, Rwp history), as versioned JSON data (no pickle:
        :mod:`insitu_xrd.io.chain_state`), so an interrupted run restored with
        :meth:`restore_state` continues exactly as if it had not stopped. Cached refinements are
        rebuilt from their specs with their reflection lists (saved as data). (The stored per-frame values alone give a
        re-seeded start: the same minimum only within the optimizer's tolerance.)"""
        from insitu_xrd.io.chain_state import encode_chain_state

        state = {k: getattr(self, k) for k in self._STATE_FIELDS if k != "_cache"}
        # the cached refinements' reflection lists: a list depends on the cell that filled the
        # cache, so rebuilt refinements would sum the peaks of a list made at another cell
        # (results then differ in the last bits); refinements are rebuilt from their specs
        state["refinement_reflections"] = [{"spec": sp, "lists": ref.reflection_lists()}
                                           for sp, ref in self._cache if hasattr(ref, "reflection_lists")]
        return encode_chain_state(state, [FrameRecord])

    def restore_state(self, blob: bytes, source: str = "chain state") -> bool:
        """Load a state written by :meth:`state_bytes` of a refiner with the same spec and options;
        False (state unchanged, a ChainStateWarning says why) when it cannot be read."""
        import warnings

        from insitu_xrd.io.chain_state import ChainStateWarning, decode_chain_state

        try:
            keys = [k for k in self._STATE_FIELDS if k != "_cache"] + ["refinement_reflections"]
            st = decode_chain_state(blob, keys, [FrameRecord], source)
        except InsituXRDError as exc:  # another version, edited or damaged: resume from the stored values
            warnings.warn(f"{exc}; resuming from the stored results", ChainStateWarning, stacklevel=2)
            return False
        saved = st.pop("refinement_reflections")
        for k, v in st.items():
            setattr(self, k, v)
        self._cache = []
        for entry in saved:
            spec = self.cur_spec if entry["spec"] == self.cur_spec else entry["spec"]
            ref = self.factory(spec)
            if hasattr(ref, "seed_reflection_lists"):
                ref.seed_reflection_lists(entry["lists"])
            self._cache.append((spec, ref))
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
        """Why a fit looks diverged ('' if it looks fine): a failure (:meth:`_failure`) or an Rwp
        jump. An Rwp jump alone is only a suspicion (the sample may really change): :meth:`_step`
        refits the frame and calls it diverged only on evidence."""
        why = self._failure(fit)
        if why:
            return why
        if len(self.rwp_history) >= 2:
            ref = float(np.median(self.rwp_history[-RWP_WINDOW:]))
            if fit.rwp > self.opt.divergence.rwp_jump_factor * ref:
                return f"Rwp jump {fit.rwp:.4f} > {self.opt.divergence.rwp_jump_factor} x median {ref:.4f}"
        return ""

    def _failure(self, fit: Any) -> str:
        """Why a fit failed ('' if it did not): no result, the optimizer failed, Rwp not finite, a
        base phase's lattice at its bound, or no phase significant (|S| < 3 statistical esd for
        every phase: no diffraction pattern of the recipe's phases). One phase fading out while
        another remains (the end of a two-phase reaction, the main phase included) is a result."""
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
        weak = []
        for name in fit.active_phases:
            sc, esd = statistical_value(fit, f"{name}_scale")
            if np.isfinite(esd) and esd > 0 and not sc > SIGNIFICANCE * esd:
                weak.append(f"{name} {sc:.4g} +/- {esd:.2g}")
        if weak and len(weak) == len(fit.active_phases):
            return f"no phase significant (scale {', '.join(weak)})"
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
            return param_value(fit, f"{name}_a")[0], param_value(fit, f"{name}_c")[0]

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
        vp, vo = volume(parent, lambda k: param_value(fit, k)[0]), volume(opt, lambda k: param_value(fit, k)[0])
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
                v = param_value(fit, f"{src}_{key}")[0]
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
                v1, e1 = param_value(fit, f"{name}_{par}")
                v0, e0 = param_value(fit, f"{base}_{par}")
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
        phase = phase_object(spec, name, self._refinement_for(spec))
        if phase is None or not set(LATTICE_NAMES) & set(ph.refine):
            return spec
        tth = np.asarray(fit0.two_theta_deg)
        resid = np.clip(np.asarray(fit0.obs) - np.asarray(fit0.calc), 0, None) + 0.0
        zero = param_value(fit0, "zero_deg")[0]
        found = search_lattice(phase, self.wavelength_A, tth, resid + np.asarray(fit0.background) * 0,
                               ph.lattice_bound_pct * 0.95, zero if np.isfinite(zero) else 0.0)
        spec = with_lattice(spec, name, found.get("a", phase.a), found.get("c", phase.c),
                            **{k: v for k, v in found.items() if k not in ("a", "c")})
        # peak width: unless the recipe gives one, start from the fitted microstrain of the phase
        # it grows from (same particles; a coated H3 at the onset is ~3x broader than the default
        # start, and a too narrow start leaves the new phase "not significant" at its start lattice)
        parent = self._split_from(name)
        mu = param_value(fit0, f"{parent}_mustrain")[0]
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
        try:
            phase = phase_object(spec, name, self._refinement_for(spec))
            if phase is None:
                return math.inf, math.inf
            ph = spec.phase(name)

            def v(key: str, default: float) -> float:
                val = param_value(fit0, key)[0]
                return val if np.isfinite(val) else default

            parent = self._split_from(name)
            mustrain = v(f"{parent}_mustrain", ph.mustrain) if parent in fit0.active_phases else ph.mustrain
            amp, z = residual_match(fit0, phase, self.wavelength_A, mustrain, ph.size_um)
            if amp == 0.0 and z == 0.0:
                return 0.0, 0.0
            # implied weight fraction: amp * ZMV / (amp * ZMV + sum_k S_k ZMV_k), the sum taken
            # from the main phase's scale and weight fraction in fit0
            frac = math.inf
            main = parent if parent in fit0.active_phases else self.base_phases[0]
            s_main = param_value(fit0, f"{main}_scale")[0]
            w_main = fit0.phase_fraction.get(main, (math.nan, math.nan))[0]
            main_obj = phase_object(spec, main, self._refinement_for(spec))
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
            for ln in LATTICE_NAMES:
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
            out, status, notes = self._by_evidence(out, tth, y, s)
        fit = out["fit"]
        rec = record_from_fit(index, fit, self.spec, status=status, message="; ".join(out["notes"] + notes),
                              optional_p=out["optional_p"])
        if status != "diverged":
            self._look_back(fit, out["spec"])
            self.prev_fit, self.cur_spec = fit, out["spec"]
            self.active, self.below_count = out["active"], out["below"]
            self.frames_since_test = 0 if out["tested"] else self.frames_since_test + 1
            self.before_last, self.last_good = self.last_good, rec
            # only the last RWP_WINDOW values are used: the chain state (saved after every frame
            # in watch mode) must not grow with the series
            self.rwp_history = self.rwp_history[-(RWP_WINDOW - 1):] + [float(fit.rwp)]
            held = [n for n in out["active"] if n in self.optional_phases and self._lattice_held(fit, n)]
            if held and self._lookback is None:
                self._lookback = {"index": index, "tth": tth, "y": y, "s": s, "active": list(out["active"]),
                                  "names": held, "record": rec, "chi2": float(fit.chi2)}
        else:
            self.prev_fit = None  # the next frame starts from the last good values
        return rec

    def _sound(self, c: dict) -> bool:
        """An attempt that did not fail (:meth:`_failure`) and kept the phase labels."""
        return not (self._failure(c["fit"]) or self._swapped(c["fit"]))

    def _by_evidence(self, out: dict, tth: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[dict, str, list[str]]:
        """Decide a suspect frame by evidence: (attempt kept, status, notes).

        The frame is fitted again from the last good frame's values and from a fresh lattice
        search. A chained fit that failed (:meth:`_failure`) or exchanged the labels is replaced
        by the sound refit with the lowest chi2 ("refit"), or the frame is "diverged" when no
        refit is sound. A chained fit that is only suspect (its Rwp rose by more than
        ``rwp_jump_factor``) stays ("ok") unless a sound refit reaches a chi2 clearly lower
        (:data:`REFIT_CHI2_GAIN`): an Rwp that rises with a real change of the sample is no
        divergence, and every refit then ends at the same chi2."""
        chained_fit = out["fit"]
        failed = not self._sound(out)
        candidates = []
        seeded = seeded_spec(self.spec, self.last_good.values) if self.last_good is not None else None
        if seeded is not None:
            candidates.append(self._attempt(seeded, None, tth, y, s))
        # the lattice search is centred on the last good lattice (other phases start there too)
        candidates.append(self._attempt(self._cold_spec(tth, y, seeded), None, tth, y, s,
                                        cold_base=seeded if seeded is not None else self.spec))
        candidates = [(self._rescue(c) or c) if c["why"] else c for c in candidates]
        sound = [c for c in candidates if self._sound(c) and np.isfinite(c["fit"].chi2)]
        best = min(sound, key=lambda c: float(c["fit"].chi2)) if sound else None
        if failed:
            if best is not None:
                return best, "refit", [f"suspect ({out['why']})", "refit from the last good frame / a lattice search"]
            least_bad = min([out] + candidates, key=lambda c: c["fit"].rwp if np.isfinite(c["fit"].rwp) else np.inf)
            return least_bad, "diverged", [f"diverged ({out['why']}); no refit from the last good frame or a lattice "
                                       "search is sound"]
        chi2 = float(chained_fit.chi2)
        gain = max(REFIT_CHI2_GAIN * chi2, 10.0 * max(1.0, float(chained_fit.gof)))
        if best is not None and float(best["fit"].chi2) < chi2 - gain:
            return best, "refit", [f"suspect ({out['why']}); a refit reached chi2 {float(best['fit'].chi2):.1f} < "
                                   f"{chi2:.1f} of the chained fit: refit from the last good frame / a lattice search"]
        best_txt = f"{float(best['fit'].chi2):.1f}" if best is not None else "none sound"
        return out, "ok", [f"{out['why']}: refits from the last good frame and a lattice search reach no clearly lower "
                           f"chi2 ({best_txt} vs {chi2:.1f}): a real change, not a divergence"]

    def pop_revised(self) -> list[FrameRecord]:
        """Records of earlier frames fitted again by a look-back since the last call."""
        out, self.revised = self.revised, []
        return out

    def _lattice_held(self, fit: Any, name: str) -> bool:
        """A lattice length of ``name`` that the recipe refines has no esd in ``fit`` (held)."""
        ph = self.spec.phase(name)
        for par in ("a", "c"):
            if par in ph.refine:
                v, e = param_value(fit, f"{name}_{par}")
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



def run_chain(spec: RefinementSpec, wavelength_A: float, factory: RefinementFactory, options: SequentialSection,
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


def seam_fits_agree(r1: FrameRecord | None, r2: FrameRecord | None, spec: RefinementSpec) -> bool:
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



def refit_frame(results: xr.Dataset, patterns: xr.Dataset, index: int, spec: RefinementSpec,
                factory: RefinementFactory) -> Any:
    """Fit one frame again from its stored sequential result (same phases, start = its values);
    gives the full FitResult (curves, reflection ticks) for a Rietveld plot of any frame."""
    recs = dataset_to_records(results.isel(frame=[index]))
    rec = recs[0]
    tth, y, s, st, _t = frame_arrays(patterns, index)
    if st != "ok":
        raise InsituXRDError(f"frame {index}: pattern status is {st!r}; nothing to fit")
    good = np.isfinite(y) & np.isfinite(s) & (s > 0)
    sp = seeded_spec(spec, rec.values) if rec is not None and rec.values else spec
    active = rec.active if rec is not None and rec.active else [p.name for p in spec.phases if not p.optional]
    return factory(sp).fit(tth[good], y[good], s[good], phases=active)
