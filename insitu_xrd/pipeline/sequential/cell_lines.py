"""Cell components found in a series' residual and modelled (``refinement.cell_lines: auto``).

An operando pattern carries lines of the cell besides the sample's: current collectors, casing,
windows, binder, carbon, separator. Unmodelled, every such line pulls the lattice of the phase
whose peaks it overlaps (H2 a by 3-7e-4 A, 20-70 x its error on clean data). They are told from
the sample by three properties: they are there from the first frame, they do not move with the
charge, and no phase of the recipe indexes them.

:func:`detect_cell_lines`

1. fits the first ``FIRST_FRAMES`` frames with the recipe (the sequential chain itself, so the
   optional phases are tested as in the run);
2. finds the lines of their mean residual: at a ladder of widths (from the narrowest peak of the
   fit to a sixth of the range) the *integrated excess* of the residual over a core of one width,
   above the level of its flanks (2-3 half-widths away), is compared with the local robust
   spread of that same statistic (1.4826 x MAD over ~50 widths; :mod:`insitu_xrd.core.residual_lines`).
   A serially correlated misfit raises that spread as much as it raises the excess, so a
   significant line is one that stands out of the residual's own structure, not a multiple of
   inflated esds;
3. keeps a line that is significant in the mean (``DETECT_SIGMA``), present in every one of the
   first frames (``FRAME_SIGMA``), not moving between them (within a width), and not indexed by a
   listed phase (no reflection within a width whose calculated peak is at least a tenth of the
   line's height; not a small feature on a model peak); a line within two widths of a model peak
   20 x higher (whose flanks' misfit the spread over ~50 widths underrates) must reach twice
   ``DETECT_SIGMA``;
4. names the lines with the library (:mod:`insitu_xrd.core.cell_components`): a component is
   identified when its strong lines inside the range are there (a line list's strongest among
   them observed; crystalline ones at one lattice scale within the
   component's tolerance for crystalline ones, each within tolerance for line lists; widths
   compatible) and none of its lines that should stand clearly out of the noise is missing;
   the best-explained component takes its lines first; a component the recipe already lists (same
   template) is not added again;
5. models them: crystalline components as phases (scale, lattice within a narrow bound, microstrain),
   line-list components and the lines nothing explains ("free" peaks) as background humps at the
   measured position and width with only their area refined; the first frames are fitted again
   with them (hump positions and widths refined once there, then fixed) and the residual searched
   once more.

Lines that appear only later are never added: :func:`late_lines` flags them per frame (d-spacing,
first frame) after the run; they may be a new phase. What was found is recorded as JSON attrs of
the results (``cell_components``, ``cell_free_peaks``, ``cell_late_lines``; see
:meth:`CellLines.attrs`) and named in the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from insitu_xrd.core.cell_components import CELL_COMPONENTS, CellComponent, component_phase, expected_lines
from insitu_xrd.core.profiles import pseudo_voigt
from insitu_xrd.core.residual_lines import CORE_AREA, ExcessMap, ResidualLine, excess_maps, residual_lines
from insitu_xrd.fit.spec import HumpSpec, PhaseSpec, RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential.cell_trials import try_components
from insitu_xrd.pipeline.sequential.records import param_value

__all__ = ["CellLines", "detect_cell_lines", "resumed_cell_lines", "STATE_VERSION", "first_usable_frames", "FIRST_FRAMES", "DETECT_SIGMA", "FRAME_SIGMA",
           "INDEX_HEIGHT_FRACTION", "MISFIT_HEIGHT_FACTOR"]

#: version of :meth:`CellLines.to_state`'s JSON
STATE_VERSION = 1
#: frames at the start of the series whose residual is searched
FIRST_FRAMES = 3
#: a line's integrated excess in the mean residual of the first frames, in local robust spreads
DETECT_SIGMA = 6.0
#: ... and in each first frame on its own
FRAME_SIGMA = 2.5
#: a listed phase indexes a line when its calculated peak there is at least this fraction of the line
INDEX_HEIGHT_FRACTION = 0.1
#: a model peak explains residual lines up to this many times its width (a misfit of its shape) ...
MISFIT_WIDTH_FACTOR = 3.0
#: ... and any line smaller than 1/MISFIT_HEIGHT_FACTOR of the model curve at its centre
MISFIT_HEIGHT_FACTOR = 5.0
#: a line within two widths of a model peak this many times higher must reach 2 x DETECT_SIGMA
STRONG_NEIGHBOUR = 20.0
#: a library line is missing when it should stand this many spreads out of the noise and is
#: observed below MISSING_FRACTION of its expected area
MISSING_SIGMA = 8.0
MISSING_FRACTION = 0.25
#: library lines at least this strong (strongest in the range = 100) must be there
STRONG_REL = 20.0


# ---------------------------------------------------------------------------------------------
# what the listed phases explain


@dataclass
class ModelPeaks:
    """Peaks of the listed model of a fit: positions and FWHMs (deg) of the reflections of every
    active phase, their calculated curve (without background), and the recipe's humps."""

    two_theta_deg: np.ndarray
    fwhm_deg: np.ndarray
    grid_deg: np.ndarray
    curve: np.ndarray
    #: the humps (centre, FWHM, eta, area), kept apart: a band much broader than a line is no
    #: peak whose misfit that line could be
    humps: tuple[tuple[float, float, float, float], ...] = ()

    def _curve_for(self, fwhm_deg: float) -> np.ndarray:
        """The calculated curve with only the humps at most MISFIT_WIDTH_FACTOR x broader than a
        line of ``fwhm_deg``."""
        out = self.curve
        for cen, wid, eta, area in self.humps:
            if wid <= MISFIT_WIDTH_FACTOR * fwhm_deg:
                out = out + area * pseudo_voigt(self.grid_deg, cen, wid, eta)
        return out

    def indexes(self, center_deg: float, fwhm_deg: float, height: float) -> bool:
        """The model explains a line at ``center_deg`` of that FWHM and height: a model peak no
        more than MISFIT_WIDTH_FACTOR times narrower or broader lies within a width of it and the calculated
        curve there is at least INDEX_HEIGHT_FRACTION of ``height``; or the line is a small
        feature on a model peak (the curve at its centre is MISFIT_HEIGHT_FACTOR x its height:
        a misfit of that peak's shape)."""
        if not len(self.two_theta_deg):
            return False
        curve = self._curve_for(fwhm_deg)
        at = float(np.interp(center_deg, self.grid_deg, curve))
        if at >= MISFIT_HEIGHT_FACTOR * height:
            return True
        tol = np.maximum(fwhm_deg, self.fwhm_deg)
        # comparable widths both ways: a sharp line is no reflection of a broad band (a carbon
        # band 0.4 deg wide would otherwise index every line within 0.4 deg of it)
        near = (np.abs(self.two_theta_deg - center_deg) <= tol) & (fwhm_deg <= MISFIT_WIDTH_FACTOR * self.fwhm_deg) \
            & (self.fwhm_deg <= MISFIT_WIDTH_FACTOR * max(fwhm_deg, 1e-12))
        if not near.any():
            return False
        w = float(np.max(tol[near]))
        sel = np.abs(self.grid_deg - center_deg) <= w
        top = float(np.max(curve[sel])) if sel.any() else 0.0
        return top >= INDEX_HEIGHT_FRACTION * height


    def beside_strong_peak(self, center_deg: float, fwhm_deg: float, height: float) -> bool:
        """A model peak STRONG_NEIGHBOUR times higher than the line lies within two widths of it:
        there the misfit of that peak's flanks exceeds the residual's spread over ~50 widths,
        so such a line must stand twice as far out to count."""
        w = 2.0 * max(fwhm_deg, float(np.min(self.fwhm_deg)) if len(self.fwhm_deg) else fwhm_deg)
        sel = np.abs(self.grid_deg - center_deg) <= w
        return bool(sel.any() and float(np.max(self.curve[sel])) >= STRONG_NEIGHBOUR * height)


def model_peaks(fit: Any, spec: RefinementSpec) -> ModelPeaks:
    """:class:`ModelPeaks` of a FitResult (active phases, diffuse components, the spec's humps)."""
    tth, fw = [], []
    for name in fit.active_phases:
        table = fit.peaks.get(name)
        if table is not None and len(table):
            tth.append(np.asarray(table.two_theta_deg, float))
            fw.append(np.asarray(table.fwhm_deg, float))
    grid = np.asarray(fit.two_theta_deg, float)
    curve = np.zeros(len(grid))
    for c in list(fit.phase_curves.values()) + list(fit.diffuse_curves.values()):
        curve = curve + np.asarray(c, float)
    for c in fit.diffuse_curves.values():
        k = int(np.argmax(c))
        tth.append(np.array([grid[k]]))
        fw.append(np.array([_curve_fwhm(grid, np.asarray(c, float))]))
    humps = []
    for i, h in enumerate(spec.background.humps):
        cen = fit.values.get(f"bkg_hump{i}_center_deg", h.center_deg)
        wid = fit.values.get(f"bkg_hump{i}_fwhm_deg", h.fwhm_deg)
        area = max(fit.values.get(f"bkg_hump{i}_area", 0.0), 0.0)
        tth.append(np.array([cen]))
        fw.append(np.array([wid]))
        humps.append((float(cen), float(wid), float(h.eta), float(area)))
    return ModelPeaks(np.concatenate(tth) if tth else np.zeros(0), np.concatenate(fw) if fw else np.zeros(0), grid, curve,
                      tuple(humps))


def _curve_fwhm(x: np.ndarray, c: np.ndarray) -> float:
    top = float(np.max(c)) if len(c) else 0.0
    above = x[c >= top / 2] if top > 0 else x[:1]
    return float(above.max() - above.min()) if len(above) > 1 else float(np.median(np.diff(x)))


def _narrowest_fwhm_deg(fit: Any) -> float:
    widths = [float(np.min(t.fwhm_deg)) for n, t in fit.peaks.items() if len(t) and n in fit.active_phases]
    step = float(np.median(np.diff(fit.two_theta_deg)))
    return max(min(widths) if widths else 3 * step, 3 * step)


# ---------------------------------------------------------------------------------------------
# naming lines with the library


def _d_of(tth_deg: float, wavelength_A: float) -> float:
    return wavelength_A / (2.0 * math.sin(math.radians(tth_deg) / 2.0))


def _width_inv_A(fwhm_deg: float, tth_deg: float, wavelength_A: float) -> float:
    return math.radians(fwhm_deg) * math.cos(math.radians(tth_deg) / 2.0) / wavelength_A


@dataclass
class _Observed:
    """Observation of the mean residual at any position and width (for missing-line checks)."""

    x: np.ndarray
    maps: list[ExcessMap]

    def at(self, tth_deg: float, fwhm_deg: float) -> tuple[float, float]:
        """(area, spread of the area) (counts x deg) at a position and width, from the excess map
        of the nearest width."""
        step = float(np.median(np.diff(self.x)))
        h = 0.6 * fwhm_deg / step
        m = min(self.maps, key=lambda mm: abs(math.log(max(mm.half, 1) / max(h, 1e-9))))
        i = int(np.clip(np.searchsorted(self.x, tth_deg), 0, len(self.x) - 1))
        e, s = m.excess[i], m.spread[i]
        if not (np.isfinite(e) and np.isfinite(s)):
            return math.nan, math.nan
        return float(e) / CORE_AREA, float(s) / CORE_AREA


@dataclass
class _Match:
    comp: CellComponent
    lines: list[tuple[Any, ResidualLine]]  # (expected line, observed line)
    lattice_scale: float
    score: float
    error: float


def _match_component(comp: CellComponent, cands: list[ResidualLine], wavelength_A: float,
                     tth_range: tuple[float, float], hidden: Any, observed: _Observed,
                     instrument_fwhm: Any) -> _Match | None:
    """The component's lines among ``cands``, or None when it is not identified (see module
    docstring). ``hidden(tth, fwhm, height)``: a listed phase's peak is there (line unobservable)."""
    exp = expected_lines(comp, wavelength_A, tth_range, min_rel_intensity=2.0)
    if not exp:
        return None

    def width_ok(ln: Any, c: ResidualLine) -> bool:
        w_obs = _width_inv_A(c.fwhm_deg, c.two_theta_deg, wavelength_A)
        w_ins = _width_inv_A(instrument_fwhm(c.two_theta_deg), c.two_theta_deg, wavelength_A)
        if comp.crystalline:
            return w_obs <= 3.0 * w_ins + 0.02
        return 0.3 * ln.fwhm_inv_A <= w_obs <= 3.0 * ln.fwhm_inv_A + 2.0 * w_ins

    def pos_tol(c: ResidualLine) -> float:
        """Relative d resolution of a line: half its FWHM."""
        return 0.5 * math.radians(c.fwhm_deg) / (2.0 * math.tan(math.radians(c.two_theta_deg) / 2.0)) + 2e-4

    strong = [ln for ln in exp if ln.rel_intensity >= STRONG_REL]
    if not comp.crystalline:
        # a line list is told by its strongest line in the range: that one must be observed
        top = exp[0]
        if not any(abs(c.d_A / top.d_A - 1.0) <= comp.d_tolerance and width_ok(top, c) for c in cands):
            return None
    scales = [1.0]
    if comp.crystalline:  # trial lattice scales from every candidate near a strong line
        scales = sorted({c.d_A / ln.d_A for ln in strong for c in cands
                         if abs(c.d_A / ln.d_A - 1.0) <= comp.d_tolerance})
    best: _Match | None = None
    for s in scales:
        pairs: list[tuple[Any, ResidualLine]] = []
        used: set[int] = set()
        for ln in exp:
            d_exp = ln.d_A * s
            tol = (lambda c: pos_tol(c)) if comp.crystalline else (lambda c: comp.d_tolerance)
            near = [c for c in cands if id(c) not in used and abs(c.d_A / d_exp - 1.0) <= tol(c) and width_ok(ln, c)]
            if near:
                c = min(near, key=lambda c: abs(c.d_A / d_exp - 1.0))
                pairs.append((ln, c))
                used.add(id(c))
        if not pairs:
            continue
        matched = {id(ln) for ln, _c in pairs}
        # the component's scale: least squares of the observed areas on the relative intensities
        rel = np.array([ln.rel_intensity for ln, _c in pairs])
        area = np.array([c.area for _ln, c in pairs])
        k = float(rel @ area / (rel @ rel))
        ok = True
        for ln in exp:
            if id(ln) in matched:
                continue
            tth = ln.two_theta_deg if s == 1.0 else 2 * math.degrees(math.asin(min(1.0, wavelength_A / (2 * ln.d_A * s))))
            fw = math.hypot(instrument_fwhm(tth), math.degrees(wavelength_A * ln.fwhm_inv_A / math.cos(math.radians(tth) / 2)))
            expected = k * ln.rel_intensity
            height = expected * 0.94 / fw
            if hidden(tth, fw, height):
                continue  # under a listed phase's peak: not observable
            obs_area, spread = observed.at(tth, fw)
            if not np.isfinite(spread):
                continue
            if not comp.crystalline and ln.rel_intensity >= STRONG_REL and expected > 3 * spread:
                ok = False  # a strong, observable line of a line list that no residual line matches
                break
            if ln.rel_intensity >= STRONG_REL or expected > MISSING_SIGMA * spread:
                if expected > MISSING_SIGMA * spread and not obs_area > MISSING_FRACTION * expected:
                    ok = False
                    break
                if ln.rel_intensity >= STRONG_REL and expected > 3 * spread and not obs_area > MISSING_FRACTION * expected:
                    ok = False
                    break
        if not ok:
            continue
        if comp.crystalline and len(pairs) < 2 and sum(1 for ln in exp if ln.rel_intensity >= STRONG_REL) >= 2:
            # one line of a lattice is no identification unless it is the only strong one in range
            continue
        explained = sum(ln.rel_intensity for ln, _c in pairs) / sum(ln.rel_intensity for ln in exp)
        err = float(np.mean([abs(c.d_A / (ln.d_A * s) - 1.0) for ln, c in pairs]))
        cand = _Match(comp, pairs, s, explained + 0.01 * len(pairs), err)
        if best is None or (cand.score, -cand.error) > (best.score, -best.error):
            best = cand
    return best


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class CellLines:
    """What :func:`detect_cell_lines` found, and the spec additions that model it.

    components : identified library components, each {name, key, part, kind, source,
        lattice_scale, lines: [{label, d_A, two_theta_deg, area, sigma}], phase or humps}.
    free : lines no library component explains, each {name, d_A, two_theta_deg, fwhm_deg, area,
        sigma, hump}.
    phases, humps : PhaseSpec / HumpSpec added to the refinement.
    frames : the frames searched. notes : what was done or why not.
    """

    components: list[dict] = field(default_factory=list)
    free: list[dict] = field(default_factory=list)
    phases: list[PhaseSpec] = field(default_factory=list)
    humps: list[HumpSpec] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    #: the crystalline component that fixes the 2theta zero: {phase, a[, c], frame} (empty: none)
    standard: dict = field(default_factory=dict)
    #: the first humps, of components kept by a trial: at the library's place and width, area only
    library_humps: int = 0

    @property
    def found(self) -> bool:
        return bool(self.phases or self.humps)

    def apply(self, spec: RefinementSpec) -> RefinementSpec:
        """``spec`` with the components' phases appended to its phases and their peaks to its humps;
        with an internal standard (``standard``), that phase's lattice held at its first-frame
        value and the 2theta zero refined on every frame."""
        if not self.found:
            return spec
        phases = list(self.phases)
        profile = spec.profile
        if self.standard:
            held = {k: v for k, v in self.standard.items() if k in ("a", "c")}
            phases = [p.model_copy(update={**held, "refine": [r for r in p.refine if r not in ("a", "c")]})
                      if p.name == self.standard["phase"] else p for p in phases]
            if "zero_deg" not in profile.refine:
                profile = profile.model_copy(update={"refine": list(profile.refine) + ["zero_deg"]})
        bg = spec.background.model_copy(update={"humps": list(spec.background.humps) + list(self.humps)})
        return spec.model_copy(update={"phases": list(spec.phases) + phases, "background": bg, "profile": profile})

    def attrs(self) -> dict[str, str]:
        """Results attrs (JSON strings): ``cell_components``, ``cell_free_peaks``, ``cell_lines_frames``,
        ``cell_lines_notes``, ``cell_component_trials``, ``cell_standard``, and ``cell_lines_state``
        (everything, for :meth:`from_state`: a resumed run reuses the search instead of repeating it)."""
        return {"cell_components": json.dumps(self.components), "cell_free_peaks": json.dumps(self.free),
                "cell_lines_frames": json.dumps(self.frames), "cell_lines_notes": json.dumps(self.notes),
                "cell_component_trials": json.dumps(self.trials), "cell_standard": json.dumps(self.standard),
                "cell_lines_state": self.to_state()}

    def to_state(self) -> str:
        """The whole search result as one JSON string (:meth:`from_state` reads it back)."""
        return json.dumps({"version": STATE_VERSION, "components": self.components, "free": self.free,
                           "phases": [p.model_dump(mode="json", exclude_unset=True) for p in self.phases],
                           "humps": [h.model_dump(mode="json", exclude_unset=True) for h in self.humps],
                           "frames": self.frames, "notes": self.notes, "trials": self.trials,
                           "standard": self.standard, "library_humps": self.library_humps})

    @classmethod
    def from_state(cls, text: str) -> "CellLines | None":
        """The search result :meth:`to_state` wrote; None when ``text`` is not one (another
        version, damaged): the caller then searches again."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
                return None
            return cls(components=list(d["components"]), free=list(d["free"]),
                       phases=[PhaseSpec.model_validate(p) for p in d["phases"]],
                       humps=[HumpSpec.model_validate(h) for h in d["humps"]], frames=[int(i) for i in d["frames"]],
                       notes=list(d["notes"]), trials=list(d["trials"]), standard=dict(d["standard"]),
                       library_humps=int(d["library_humps"]))
        except (TypeError, ValueError, KeyError):
            return None


def first_usable_frames(patterns: xr.Dataset, n: int) -> list[int]:
    """The first ``n`` frames of ``patterns`` whose status is ok."""
    st = [str(s) for s in patterns["status"].values] if "status" in patterns else ["ok"] * patterns.sizes["frame"]
    return [i for i, s in enumerate(st) if s == "ok"][:n]


def _fit_first(spec: RefinementSpec, wavelength_A: float, factory: Any, options: SequentialSection | None,
               patterns: xr.Dataset, frames: Sequence[int]) -> list[Any]:
    """FitResults of the first frames from a sequential chain of the recipe (diverged ones left out)."""
    from insitu_xrd.pipeline.sequential.chain import SequentialRefiner
    from insitu_xrd.pipeline.sequential.records import frame_arrays

    ref = SequentialRefiner(spec, wavelength_A, factory, options)
    fits = []
    for i in frames:
        tth, y, s, st, t_s = frame_arrays(patterns, i)
        rec = ref.step(i, tth, y, s, st, time_s=t_s)
        if rec.status != "diverged" and ref.prev_fit is not None:
            fits.append(ref.prev_fit)
    return fits


def _instrument_fwhm(fits: list[Any]) -> Any:
    """FWHM (deg) of the narrowest reflections of the fits as a function of 2theta."""
    xs, ws = [], []
    for fit in fits[-1:]:
        for name in fit.active_phases:
            t = fit.peaks.get(name)
            if t is not None and len(t):
                xs.append(np.asarray(t.two_theta_deg, float))
                ws.append(np.asarray(t.fwhm_deg, float))
    if not xs:
        step = float(np.median(np.diff(fits[-1].two_theta_deg)))
        return lambda tth: 3 * step
    x, w = np.concatenate(xs), np.concatenate(ws)
    order = np.argsort(x)
    x, w = x[order], np.minimum.accumulate(w[order][::-1])[::-1]  # a lower envelope, monotonic enough

    def f(tth: float) -> float:
        return float(np.interp(tth, x, w))

    return f


def _search(fits: list[Any], spec: RefinementSpec, wavelength_A: float) -> tuple[list[ResidualLine], _Observed, ModelPeaks, Any]:
    """Stationary lines of the first frames' residual that no listed phase indexes."""
    x = np.asarray(fits[-1].two_theta_deg, float)
    res = [np.interp(x, f.two_theta_deg, f.obs - f.calc) for f in fits]
    sig = [np.interp(x, f.two_theta_deg, f.sigma) for f in fits]
    mean = np.mean(res, axis=0)
    narrow = _narrowest_fwhm_deg(fits[-1])
    maps = excess_maps(x, mean, np.sqrt(np.sum(np.square(sig), axis=0)) / len(fits), narrow)
    model = model_peaks(fits[-1], spec)
    lines = residual_lines(x, mean, maps, DETECT_SIGMA, explained=model.indexes)
    frame_maps = [{m.half: m for m in excess_maps(x, r, sg, narrow)} for r, sg in zip(res, sig)]
    kept = []
    for ln in lines:
        ln.d_A = _d_of(ln.two_theta_deg, wavelength_A)  # (indexed candidates were left out by residual_lines)
        if model.beside_strong_peak(ln.two_theta_deg, ln.fwhm_deg, ln.height) and ln.sigma < 2 * DETECT_SIGMA:
            continue
        # present in each first frame, at the same place
        ok, where = True, []
        for fm in frame_maps:
            m = fm[ln.half]
            lo, hi = max(0, ln.index - ln.half), min(len(x), ln.index + ln.half + 1)
            z = m.z[lo:hi]
            if not np.any(np.isfinite(z)) or not np.nanmax(z) > FRAME_SIGMA:
                ok = False
                break
            where.append(lo + int(np.nanargmax(z)))
        if ok and max(where) - min(where) <= (2 * ln.half + 1) / 1.2:  # within one FWHM: not moving
            kept.append(ln)
    return kept, _Observed(x, maps), model, _instrument_fwhm(fits)


def _listed_templates(spec: RefinementSpec) -> set[str]:
    return {p.template.lower() for p in spec.phases if p.template}


def _unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{k}", k + 1
    taken.add(name)
    return name


def _identify(lines: list[ResidualLine], spec: RefinementSpec, wavelength_A: float, observed: _Observed,
              model: ModelPeaks, inst_fwhm: Any, cells: CellLines, tth_range: tuple[float, float],
              hump_offset: int) -> None:
    """Name ``lines`` with the library and add what models them to ``cells``."""
    listed = _listed_templates(spec) | {p.template for p in cells.phases if p.template}
    taken = {p.name for p in spec.phases} | {p.name for p in cells.phases}
    pool = list(lines)
    library = [c for c in CELL_COMPONENTS if not (c.template and c.template in listed)]
    library = [c for c in library if c.key not in {m["key"] for m in cells.components}]
    while pool:
        matches = [m for m in (_match_component(c, pool, wavelength_A, tth_range, model.indexes, observed, inst_fwhm)
                               for c in library) if m is not None]
        if not matches:
            break
        best = max(matches, key=lambda m: (m.score, -m.error))
        library.remove(best.comp)
        used = {id(c) for _ln, c in best.lines}
        pool = [c for c in pool if id(c) not in used]
        entry: dict[str, Any] = {
            "name": best.comp.name, "key": best.comp.key, "part": best.comp.part,
            "kind": "phase" if best.comp.crystalline else "lines", "source": best.comp.source,
            "lattice_scale": round(best.lattice_scale, 6),
            "lines": [{"label": ln.label, "d_A": round(c.d_A, 5), "two_theta_deg": round(c.two_theta_deg, 5),
                       "fwhm_deg": round(c.fwhm_deg, 5), "area": float(c.area), "sigma": round(c.sigma, 1),
                       "observed": True}
                      for ln, c in sorted(best.lines, key=lambda p: -p[1].d_A)]}
        if best.comp.crystalline:
            name = _unique_name(best.comp.name, taken)
            entry["name"] = name
            ref = ["a", "scale", "mustrain"] + (["c"] if best.comp.template in ("be", "graphite") else [])
            start: dict[str, Any] = {}
            ph = component_phase(best.comp, lattice_scale=best.lattice_scale)
            start["a"] = round(ph.a, 6)
            if "c" in ref:
                start["c"] = round(ph.c, 6)
            cells.phases.append(PhaseSpec(name=name, template=best.comp.template, mustrain=300.0, refine=ref,
                                          lattice_bound_pct=max(0.3, 200.0 * best.comp.d_tolerance), **start))
            entry["phase"] = name
        else:
            # every line of the component, not only those that stood out: the observed ones at their
            # measured place and width, the others at the library's (convolved with the instrument)
            idx = []
            seen = {ln.label: c for ln, c in best.lines}
            rows = []
            for ln in expected_lines(best.comp, wavelength_A, tth_range, min_rel_intensity=STRONG_REL / 4):
                c = seen.get(ln.label)
                if c is None:
                    fw = math.hypot(inst_fwhm(ln.two_theta_deg),
                                    math.degrees(wavelength_A * ln.fwhm_inv_A / math.cos(math.radians(ln.two_theta_deg) / 2)))
                    rows.append((ln, ln.two_theta_deg, fw, 0.5, math.nan, math.nan))
                else:
                    rows.append((ln, c.two_theta_deg, c.fwhm_deg, c.eta, float(c.area), round(c.sigma, 1)))
            for ln, c in best.lines:  # matched lines weaker than the cut above
                if not any(r[0].label == ln.label for r in rows):
                    rows.append((ln, c.two_theta_deg, c.fwhm_deg, c.eta, float(c.area), round(c.sigma, 1)))
            entry["lines"] = []
            for ln, t, fw, eta, area, sig in sorted(rows, key=lambda r: r[1]):
                idx.append(hump_offset + len(cells.humps))
                cells.humps.append(HumpSpec(center_deg=t, fwhm_deg=fw, eta=eta, refine=["area"]))
                seen_line = bool(np.isfinite(sig))
                entry["lines"].append({"label": ln.label, "d_A": round(_d_of(t, wavelength_A), 5), "two_theta_deg": round(t, 5),
                                       "fwhm_deg": round(fw, 5), "area": area if seen_line else None,
                                       "sigma": sig if seen_line else None, "observed": seen_line})
            entry["humps"] = idx
        cells.components.append(entry)
    for c in sorted(pool, key=lambda c: -c.d_A):
        cells.free.append({"name": f"free {c.d_A:.4f} A", "d_A": round(c.d_A, 5), "two_theta_deg": round(c.two_theta_deg, 5),
                           "fwhm_deg": round(c.fwhm_deg, 5), "area": float(c.area), "sigma": round(c.sigma, 1),
                           "hump": hump_offset + len(cells.humps)})
        cells.humps.append(HumpSpec(center_deg=c.two_theta_deg, fwhm_deg=c.fwhm_deg, eta=c.eta, refine=["area"]))


def _settle_humps(cells: CellLines, fit: Any, n_recipe_humps: int) -> None:
    """Fix the new humps at the position and width refined on the first frames (when refined there)."""
    new = list(cells.humps[:cells.library_humps])
    for k, h in enumerate(cells.humps[cells.library_humps:], start=cells.library_humps):
        i = n_recipe_humps + k
        c = fit.values.get(f"bkg_hump{i}_center_deg", h.center_deg)
        w = fit.values.get(f"bkg_hump{i}_fwhm_deg", h.fwhm_deg)
        # a width that ran to its bound or a centre that left its line: keep the measured one
        if not (abs(c - h.center_deg) <= 0.5 * h.fwhm_deg and 0.3 * h.fwhm_deg <= w <= 3 * h.fwhm_deg):
            c, w = h.center_deg, h.fwhm_deg
        new.append(h.model_copy(update={"center_deg": float(c), "fwhm_deg": float(w), "refine": ["area"]}))
    cells.humps = new
    wavelength = getattr(fit, "wavelength_A", math.nan)
    entries = list(cells.free) + [ln | {"hump": i} for e in cells.components if "humps" in e
                                  for ln, i in zip(e["lines"], e["humps"])]
    for entry in entries:
        h = cells.humps[entry["hump"] - n_recipe_humps]
        entry["two_theta_deg"], entry["fwhm_deg"] = round(h.center_deg, 5), round(h.fwhm_deg, 5)
        entry["d_A"] = round(_d_of(h.center_deg, wavelength), 5)
    for e in cells.components:
        if "humps" in e:
            for ln, i in zip(e["lines"], e["humps"]):
                h = cells.humps[i - n_recipe_humps]
                ln.update({"two_theta_deg": round(h.center_deg, 5), "fwhm_deg": round(h.fwhm_deg, 5),
                           "d_A": round(_d_of(h.center_deg, wavelength), 5)})
    for e in cells.free:
        if e["name"].startswith("free "):
            e["name"] = f"free {e['d_A']:.4f} A"


def _rename_free(cells: CellLines, wavelength_A: float, observed: _Observed, model: ModelPeaks, inst: Any,
                 tth_range: tuple[float, float], n_recipe_humps: int) -> None:
    """Free peaks whose position and width, refined on the first frames, make them a library
    line-list component's lines (a broad line measured beside a strong misfit is first placed
    off its centre): they become that component, their humps unchanged."""
    lines = []
    for f in cells.free:
        h = cells.humps[f["hump"] - n_recipe_humps]
        ln = ResidualLine(-1, h.center_deg, h.fwhm_deg, h.eta, f["area"], f["area"] / h.fwhm_deg, f["sigma"], 1,
                          math.nan, _d_of(h.center_deg, wavelength_A))
        lines.append((f, ln))
    done = {c["key"] for c in cells.components}
    for comp in CELL_COMPONENTS:
        if comp.crystalline or comp.key in done:
            continue
        m = _match_component(comp, [ln for _f, ln in lines], wavelength_A, tth_range, model.indexes, observed, inst)
        if m is None:
            continue
        used = {id(c) for _e, c in m.lines}
        moved = [(f, ln) for f, ln in lines if id(ln) in used]
        label = {id(c): e.label for e, c in m.lines}
        cells.components.append({
            "name": comp.name, "key": comp.key, "part": comp.part, "kind": "lines", "source": comp.source,
            "lattice_scale": 1.0, "humps": [f["hump"] for f, _ln in moved],
            "lines": [{"label": label[id(ln)], "d_A": f["d_A"], "two_theta_deg": f["two_theta_deg"], "fwhm_deg": f["fwhm_deg"],
                       "area": f["area"], "sigma": f["sigma"], "observed": True} for f, ln in moved]})
        entry = cells.components[-1]
        for e in expected_lines(comp, wavelength_A, tth_range, min_rel_intensity=STRONG_REL / 4):
            if e.label in label.values():
                continue  # the rest of the component at the library's place and width
            fw = math.hypot(inst(e.two_theta_deg),
                            math.degrees(wavelength_A * e.fwhm_inv_A / math.cos(math.radians(e.two_theta_deg) / 2)))
            entry["humps"].append(n_recipe_humps + len(cells.humps))
            cells.humps.append(HumpSpec(center_deg=e.two_theta_deg, fwhm_deg=fw, eta=0.5, refine=["area"]))
            entry["lines"].append({"label": e.label, "d_A": round(e.d_A, 5), "two_theta_deg": round(e.two_theta_deg, 5),
                                   "fwhm_deg": round(fw, 5), "area": None, "sigma": None, "observed": False})
        cells.free = [f for f in cells.free if all(f is not g for g, _ln in moved)]
        lines = [(f, ln) for f, ln in lines if id(ln) not in used]


def _try_components(cells: CellLines, spec: RefinementSpec, wavelength_A: float, factory: Any,
                    options: SequentialSection | None, patterns: xr.Dataset) -> None:
    """Library components the first frame wants (:mod:`.cell_trials`), added to ``cells`` before
    the residual search (a strong unmodelled phase spoils that search)."""
    def fit_one(trial: RefinementSpec) -> Any:
        fits = _fit_first(trial, wavelength_A, factory, options, patterns, cells.frames[:1])
        return fits[-1] if fits else None

    tried, fit = try_components(spec, wavelength_A, fit_one)
    cells.trials = [t.as_dict() for t in tried]
    if fit is None:
        return
    x = np.asarray(fit.two_theta_deg, dtype=float)
    tth_range = (float(x.min()), float(x.max()))
    n_recipe_humps = len(spec.background.humps)
    for t in tried:
        if not t.accepted:
            continue
        entry: dict[str, Any] = {"name": t.comp.name, "key": t.comp.key, "part": t.comp.part, "source": t.comp.source,
                                 "evidence": t.reason}
        if t.spec is not None:
            lattice_scale = t.lattice_scale
            val = param_value(fit, f"{t.spec.name}_a")[0]
            if np.isfinite(val) and t.spec.a:
                lattice_scale *= val / t.spec.a
            shown = expected_lines(t.comp, wavelength_A, tth_range, lattice_scale=lattice_scale,
                                   min_rel_intensity=STRONG_REL)
            entry.update(kind="phase", phase=t.spec.name, lattice_scale=round(lattice_scale, 6), lines=[
                {"label": ln.label, "d_A": round(ln.d_A, 5), "two_theta_deg": round(ln.two_theta_deg, 5), "sigma": None,
                 "observed": True} for ln in sorted(shown, key=lambda ln: -ln.d_A)])
            cells.phases.append(t.spec)
            if not cells.standard and not {"zero_deg", "displacement_um"} & set(spec.profile.refine):
                # a stationary cell phase is an internal standard: its lattice, refined on the first
                # frame with the calibration's zero, is held; the zero then follows any drift of the
                # beam or the sample position from frame to frame
                held = {par: float(param_value(fit, f"{t.spec.name}_{par}")[0]) for par in ("a", "c") if par in t.spec.refine}
                if all(np.isfinite(v) for v in held.values()):
                    cells.standard = {"phase": t.spec.name, "frame": cells.frames[0],
                                      **{k: round(v, 6) for k, v in held.items()}}
        else:
            first = n_recipe_humps + len(cells.humps)
            rows = []
            for k, (ln, h) in enumerate(zip(t.lines, t.humps)):
                area, esd = param_value(fit, f"bkg_hump{t.first_hump + k}_area")
                rows.append({"label": ln.label, "d_A": round(ln.d_A, 5), "two_theta_deg": round(h.center_deg, 5),
                             "fwhm_deg": round(h.fwhm_deg, 5), "area": area,
                             "sigma": round(area / esd, 1) if np.isfinite(esd) and esd > 0 else None, "observed": True})
            entry.update(kind="lines", lattice_scale=round(t.lattice_scale, 6), lines=sorted(rows, key=lambda r: -r["d_A"]),
                         humps=list(range(first, first + len(t.humps))))
            cells.humps.extend(t.humps)
        cells.components.append(entry)
    cells.library_humps = len(cells.humps)


def detect_cell_lines(patterns: xr.Dataset, spec: RefinementSpec, factory: Any, options: SequentialSection | None = None,
                      n_frames: int = FIRST_FRAMES, passes: int = 2, wavelength_A: float | None = None) -> CellLines:
    """Find and name the cell's lines in the first ``n_frames`` usable frames of ``patterns`` (see
    module docstring); ``factory``: spec -> Refinement; ``wavelength_A``: default the patterns'
    attr. Never raises for the data: a failure is a note and nothing is added."""
    cells = CellLines(frames=first_usable_frames(patterns, n_frames))
    wavelength = float(wavelength_A if wavelength_A is not None else patterns.attrs["wavelength_A"])
    if not cells.frames:
        cells.notes.append("no usable frame to search")
        return cells
    n_recipe_humps = len(spec.background.humps)
    last = None
    try:
        _try_components(cells, spec, wavelength, factory, options, patterns)
        for k in range(passes + 1):
            # after the first pass the humps' positions and widths are refined on the first frames,
            # then fixed there
            trial = cells.apply(spec)
            if cells.humps:
                # the peaks of components kept by a trial stay at the library's place and width
                # (refined freely, a broad carbon band would spread over its neighbours' lines)
                bg = trial.background.model_copy(update={"humps": list(spec.background.humps) + [
                    h if k < cells.library_humps else h.model_copy(update={"refine": ["area", "center_deg", "fwhm_deg"]})
                    for k, h in enumerate(cells.humps)]})
                trial = trial.model_copy(update={"background": bg})
            fits = _fit_first(trial, wavelength, factory, options, patterns, cells.frames)
            if not fits:
                cells.notes.append("the first frames could not be fitted" + (" with the cell lines" if k else ""))
                break
            if cells.humps:
                _settle_humps(cells, fits[-1], n_recipe_humps)
            if k == passes:
                break
            lines, observed, model, inst = _search(fits, trial, wavelength)
            if not lines:
                break
            x = fits[-1].two_theta_deg
            before = len(cells.components) + len(cells.free)
            _identify(lines, trial, wavelength, observed, model, inst, cells, (float(x.min()), float(x.max())),
                      n_recipe_humps)
            if len(cells.components) + len(cells.free) == before:
                break
            last = (observed, model, inst, (float(x.min()), float(x.max())))
        if cells.free and last is not None:
            _rename_free(cells, wavelength, *last, n_recipe_humps)
    except Exception as exc:  # the search must never stop a run: the recipe is then fitted as written
        cells.notes.append(f"cell-line search failed ({type(exc).__name__}: {exc}); nothing added")
        cells.components, cells.free, cells.phases, cells.humps, cells.standard = [], [], [], [], {}
    return cells


def resumed_cell_lines(checkpoint: str | Path | None, cache_key: str) -> CellLines | None:
    """The search result stored with the refined frames of an earlier run or session
    (``checkpoint``: its sequential.nc, beside the working store sequential.zarr) made with the
    same settings (``cache_key``); None when there is none. A resumed run refits its remaining
    frames with the same model as the frames already refined, without searching again."""
    if checkpoint is None:
        return None
    from insitu_xrd.io.store import open_frame_dataset

    path = Path(checkpoint)
    for where in (path.with_suffix(".zarr"), path):
        if not where.exists():
            continue
        try:
            if where.suffix == ".zarr":
                stored = dict(open_frame_dataset(where, load=False).attrs)
            else:
                with xr.open_dataset(where, engine="h5netcdf") as ds:
                    stored = dict(ds.attrs)
        except Exception:  # unreadable or not a results file: search again
            continue
        if stored.get("cache_key") == cache_key and "cell_lines_state" in stored:
            return CellLines.from_state(str(stored["cell_lines_state"]))
    return None
