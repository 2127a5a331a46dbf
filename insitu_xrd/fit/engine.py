"""Le Bail / Rietveld refinement of one 1D powder pattern (numpy + scipy + lmfit Parameters).

Model (identical to `insitu_xrd.core.pattern.calc_pattern`): Chebyshev background + humps +
per-phase sums of area-normalised TCH pseudo-Voigts (GSAS-II CW U,V,W,X,Y plus isotropic
microstrain and size; optional GSAS-II SH/L Finger-Cox-Jephcoat asymmetry) + diffuse
pseudo-Voigts tied to reflections of a phase. A laboratory Ka doublet (``profile.kalpha2`` or the
instrument's Lam2) puts every reflection at both wavelengths, the Ka2 copy with the Ka1 area times
the ratio (`Problem.peak_areas`). Weights 1/sigma per ``refinement.sigma`` (`weights`), their
source in ``FitResult.sigma_source``.

Algorithm
---------
- Linear parameters (background coefficients, hump and diffuse areas, phase scales, the Le Bail
  phase multipliers) are eliminated by variable projection: for every trial value of the nonlinear
  parameters (lattice, profile, zero, displacement, microstrain, size, diffuse widths/offsets, site
  parameters) they are the weighted linear least-squares solution. Those with a physical sign
  (scales, hump and diffuse areas, Le Bail multipliers) are >= 0: a fit that ends with one
  negative continues from there with them bounded in every linear solve (`fit.linear`); one held
  at 0 is reported at its bound (esd NaN, ``at_bounds``). The nonlinear problem is solved
  by scipy's trust-region reflective least squares with bounds, with an analytic Jacobian of the
  projected residual (Kaufman's form, `ModelDerivatives.projected_jacobian`): profile derivatives in
  closed form, per-reflection position/width/area derivatives by differences of those cheap
  functions, assembled with sparse matrices (`ModelDerivatives.model_derivatives`). Crystallite sizes are
  moved as 1/size (broadening ~ 1/size). Peaks are evaluated vectorised in windows of
  +/- `WINDOW_FWHM` FWHM; a phase's profiles are reused while its positions/widths do not change,
  the window geometry is shared by the profiles and their derivatives at one point, and the
  finite differences at one point are shared by the Le Bail Jacobian and the phase-fraction step
  (memoised by their inputs: results identical to recomputing them).
- Rietveld: area = scale * m |F|^2 / (sin^2(theta) cos(theta)); |F|^2 recomputed when the site
  parameters or the cell (to 1e-4 A) change, and cached between fits. A cold start runs the
  trust-region solver, then Levenberg-Marquardt steps (`solvers.polish`); a warm start (the
  previous frame's result) goes straight to those steps, which keep their Jacobian once a step
  is below 1 esd (chord steps: a new residual only). Every Rietveld fit ends with a check at the
  final point: the Gauss-Newton step with the exact Jacobian (the covariance's) must move no
  nonlinear parameter by more than 0.05 esd, else it is taken and the check repeated.
- Le Bail, cold start: a structure-factor (Rietveld-like) stage first brings lattice and profile
  into the basin (robust to a few tenths of a percent of starting lattice error); then Le Bail
  intensity extraction (partition of obs - background among overlapping peaks) and the Pawley
  polish: Levenberg-Marquardt steps on the joint problem (nonlinear + linear + reflection
  intensities, ridge-damped on the intensities) to the least-squares optimum. If the polish has
  not converged in 8 steps, cycles of (i) extraction and (ii) the nonlinear fit with the
  intensities held (until chi^2 changes by < 0.1 % or rises: the Le Bail fixed point is not a
  chi^2 minimum where peaks overlap) and a second polish follow.
  Warm start: the previous intensities (matched by hkl), re-partitioned for the new pattern, and
  the previous lattice/profile go straight to the polish. The polish keeps its Jacobian once a
  step is below 1 esd (chord steps; a fresh one if a chord step fails).
- Phase fractions in Le Bail mode: with lattice, profile and Le Bail positions fixed, one linear
  least-squares step with structure-factor curves (one scale per phase) plus background/diffuse
  gives the scales, hence Hill-Howard weight fractions W_p = S_p (ZMV)_p / sum (ZMV S); their
  esds include the uncertainty of the refined nonlinear parameters.
- Covariance: from the full weighted Jacobian at the solution (nonlinear and linear columns; in
  Le Bail mode the reflection intensities are included as Pawley-type columns, so lattice esds
  account for intensity/position correlation in overlaps), scaled by the reduced chi^2 (gof).
  Serial correlation: the Durbin-Watson statistic DW of the weighted residuals gives the lag-1
  autocorrelation rho = 1 - DW/2; for rho > 0 every esd is multiplied by sqrt((1 + rho)/(1 - rho))
  (AR(1) form of Berar & Lelann's 1991 correction).
- A phase whose scale is not significant (|S| < 3 statistical esd: without the serial-correlation
  factor; `hold: never` phases excepted) in a multi-phase fit has its nonlinear
  parameters held at their start values and the fit is repeated, so an absent H3 is reported as
  a fraction ~0 +/- esd instead of a lattice wandering onto noise or another phase.
- Degenerate combinations are avoided automatically (reported in ``warnings``): Y is held when a
  Lorentzian microstrain is refined (both ~ tan(theta)), X when a Lorentzian size is refined
  (both ~ 1/cos(theta)), U when a Gaussian microstrain is refined.

How a fit flows (insitu_xrd.fit; objects composed, each module one job)
-----------------------------------------------------------------------
1. Parameter model: ``phase_model`` (`PhaseModel`: lattice parameters by crystal system, site
   parameters with their symmetry constraints, one per phase) and ``parameters``
   (`ParameterBuilder`: the lmfit Parameters of a fit from the spec, a previous result and the
   caller's Parameters; linear/nonlinear split). ``structures`` (`StructureCache`): the phases'
   structures with site parameters applied, reflections and |F|^2 cached between fits.
2. Model evaluation: ``windows`` (windowed profiles: plain functions of arrays, `GridProfiles`),
   ``model`` (`Problem`: one fit's data and Parameters, the calculated pattern, its linear
   columns and the weighted residual), ``derivatives`` (`ModelDerivatives` of a Problem: the
   analytic Jacobian).
3. Solvers: ``linear`` (the signed linear parameters, bounded linear least squares), ``solvers``
   (trust region given residual and Jacobian callables, Gauss-Newton
   polish, final check), ``lebail`` (intensity extraction, the phase-fraction step), ordered by
   ``stages`` (`FitStages.run`: which runs when).
4. ``covariance``: full Jacobian, covariance, esds and the serial-correlation factor.
5. ``assemble``: the `FitResult` from the final point (``result``: the `FitResult` itself).
``engine`` (here): `Refinement`, which builds the phase models and composes the above.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import lmfit
import numpy as np

from insitu_xrd.core.crystal import Phase, make_template
from insitu_xrd.core.pattern import Instrument
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.assemble import assemble_result
from insitu_xrd.fit.model import Problem
from insitu_xrd.fit.parameters import ParameterBuilder
from insitu_xrd.fit.phase_model import PhaseModel
from insitu_xrd.fit.result import NOT_APPLIED_POLARIZATION, FitResult
from insitu_xrd.fit.spec import RefinementSpec, resonant_on
from insitu_xrd.fit.stages import FitStages
from insitu_xrd.fit.structures import StructureCache

__all__ = ["Refinement", "prepare_data", "weights", "polarization_note"]


def _single_thread_blas():
    """BLAS threads cost more than they give on these small dense problems (measured 5x slower
    with OpenBLAS on 2 cores); limit them for the duration of a fit when threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class Refinement:
    """Refinement engine for one recipe ``refinement:`` section (see module docstring).

    Builds the phases and their parameter models (``phases``, ``models``) and composes a
    `StructureCache` (``structures``), a `ParameterBuilder` (``parameters``) and the `FitStages`;
    `fit` prepares the data, builds one `Problem` per set of active phases, runs the stages and
    assembles the `FitResult`."""

    def __init__(self, spec: RefinementSpec, wavelength_A: float, instrument: Instrument | None = None,
                 phases: dict[str, Phase] | None = None):
        if not (wavelength_A and wavelength_A > 0):
            raise InsituXRDError(f"refinement needs a positive wavelength_A, got {wavelength_A!r}")
        self.spec = spec
        self.wavelength_A = float(wavelength_A)
        prof = spec.profile
        base = instrument if instrument is not None else Instrument(self.wavelength_A)
        self.instrument = Instrument(
            self.wavelength_A,
            U=prof.U if prof.U is not None else base.U,
            V=prof.V if prof.V is not None else base.V,
            W=prof.W if prof.W is not None else base.W,
            X=prof.X if prof.X is not None else base.X,
            Y=prof.Y if prof.Y is not None else base.Y,
            zero_deg=prof.zero_deg if prof.zero_deg is not None else base.zero_deg,
            displacement_um=prof.displacement_um if prof.displacement_um is not None else base.displacement_um,
            distance_mm=prof.distance_mm if prof.distance_mm is not None else base.distance_mm,
            sh_l=prof.sh_l if prof.sh_l is not None else base.sh_l,
            kalpha2_wavelength_A=prof.kalpha2.wavelength_A if prof.kalpha2 is not None else base.kalpha2_wavelength_A,
            kalpha2_ratio=prof.kalpha2.ratio if prof.kalpha2 is not None else base.kalpha2_ratio,
        )
        # geometry, absorption, polarization (issue 18): the recipe's, else the given instrument's
        self.instrument = dataclasses.replace(
            self.instrument, geometry=prof.geometry,
            absorption_muR=prof.absorption_muR if prof.absorption_muR is not None else base.absorption_muR,
            absorption_mut=prof.absorption_mut if prof.absorption_mut is not None else base.absorption_mut,
            transparency_mm=prof.transparency_mm if prof.transparency_mm is not None else base.transparency_mm,
            goniometer_radius_mm=(prof.goniometer_radius_mm if prof.goniometer_radius_mm is not None
                                  else base.goniometer_radius_mm),
            polarization=prof.polarization if prof.polarization is not None else base.polarization)
        #: how polarisation enters the model (the result's ``polarization`` attr)
        self.polarization_note = polarization_note(prof.polarization, self.instrument.polarization)
        self.spec_names = [p.name for p in spec.phases]
        self.phases: dict[str, Phase] = {}
        self.models: dict[str, PhaseModel] = {}
        given = phases or {}
        for ps in spec.phases:
            if ps.cif is not None:
                if ps.name not in given:
                    raise InsituXRDError(
                        f"refinement.phases[{ps.name}]: cif {ps.cif!r} given but no Phase object was passed "
                        "to Refinement(phases=...) (the caller reads the CIF)")
                ph = given[ps.name]
                ph = Phase(ps.name, ph.space_group, ph.cell, [s for s in ph.sites], ph.z_formula)
            elif ps.name in given:
                ph = given[ps.name]
            else:
                kw = {}
                if ps.template.lower() == "nmc811":
                    for k in ("li_occupancy", "ni_li_mixing", "o_z"):
                        if getattr(ps, k) is not None:
                            kw[k] = getattr(ps, k)
                ph = make_template(ps.template, name=ps.name, **kw)
            ph = ph.with_cell(a=ps.a, b=ps.b, c=ps.c, alpha=ps.alpha, beta=ps.beta, gamma=ps.gamma)
            if resonant_on(spec.resonant_scattering, self.wavelength_A):  # f', f'' at the (Ka1) wavelength, as GSAS-II
                ph = ph.at_wavelength(self.wavelength_A)
            if ps.biso_A2 is not None:
                for s in ph.sites:
                    s.biso_A2 = float(ps.biso_A2)
            # lattice and site parameters with their symmetry constraints (insitu_xrd.fit.phase_model)
            model = PhaseModel(ps, ph)
            self.models[ps.name] = model
            self.phases[ps.name] = model.phase
        self.structures = StructureCache(self.phases, self.models)
        self.parameters = ParameterBuilder(spec, self.instrument, self.phases, self.models)
        self.stages = FitStages(spec, self.parameters)

    def initial_params(self, active: Sequence[str] | None = None) -> lmfit.Parameters:
        """lmfit Parameters from the spec (all non-optional phases, or only `active`)."""
        return self.parameters.initial_params(active)

    def reflection_lists(self) -> dict[str, dict]:
        """Cached reflection lists as plain data (`StructureCache.reflection_lists`: exact resume)."""
        return self.structures.reflection_lists()

    def seed_reflection_lists(self, lists: dict[str, dict]) -> None:
        """Restore lists saved by `reflection_lists`."""
        self.structures.seed_reflection_lists(lists)

    def structure(self, name: str, vals: dict[str, float]) -> Phase:
        """Phase `name` with its site parameters set from `vals` (cell as in the start phase)."""
        return self.structures.structure(name, vals)

    # ----- fitting ----------------------------------------------------------------------------
    def fit(
        self,
        two_theta_deg: np.ndarray,
        intensity: np.ndarray,
        sigma: np.ndarray | None,
        start: FitResult | None = None,
        phases: Sequence[str] | None = None,
        mode: str | None = None,
        params: lmfit.Parameters | None = None,
    ) -> FitResult:
        """Refine one pattern; see the module docstring for the algorithm.

        params: lmfit Parameters (e.g. from `initial_params`, edited) whose values, vary flags,
        bounds and expressions replace the spec's for the parameters they name; expressions may tie
        nonlinear parameters only (linear ones are solved by least squares at every step).
        """
        with _single_thread_blas():
            return self._fit(two_theta_deg, intensity, sigma, start, phases, mode, params)

    def _fit(self, two_theta_deg, intensity, sigma, start, phases, mode, given=None) -> FitResult:
        t0 = time.perf_counter()
        mode = mode or self.spec.mode
        if mode not in ("lebail", "rietveld"):
            raise InsituXRDError(f"refinement mode must be 'lebail' or 'rietveld', got {mode!r}")
        active = list(phases) if phases is not None else [p.name for p in self.spec.phases if not p.optional]
        unknown = [p for p in active if p not in self.spec_names]
        if unknown:
            raise InsituXRDError(f"unknown phase(s) {unknown}; recipe phases: {self.spec_names}")
        if not active:
            raise InsituXRDError("no active phase to refine")
        x, y, s, fitmask, sigma_source = prepare_data(self.spec, two_theta_deg, intensity, sigma)
        params, warnings = self.parameters.start_params(active, start, given)
        if self.polarization_note.startswith("Polariz."):  # from the instrument file: never silent
            warnings.append(self.polarization_note)
        if sigma_source == "poisson_background_subtracted":
            warnings.append("data have negative intensities (background-subtracted) and no esds: sigma = "
                            "sqrt(max(I, 0) + s0^2), s0 the rms of the points below zero (refinement.sigma)")
        prob = self._problem(x, y, s, fitmask, active, params)
        lebail_start = start.lebail_areas if (start is not None and mode == "lebail") else {}
        held: list[str] = []
        # Newly activated phases (optional ones on a cold start, phases absent from `start`) are on
        # probation: held at their start lattice until their scale proves significant (see `FitStages.run`).
        if start is None:
            new = [p for p in active if self.spec.phase(p).optional]
        else:
            new = [p for p in active if p not in start.active_phases]
        probation = new if (new and len(new) < len(active)) else []
        outcome = self.stages.run(prob, mode, lebail_start, held, probation, warm=start is not None)
        warnings += outcome["warnings"]
        # A phase that became insignificant in a multi-phase fit: hold its nonlinear parameters, refit.
        if len(active) > 1:
            weak = self.stages.weak_phases(outcome, active, held)
            if weak and len(weak) < len(active):
                for name, why in weak:
                    held += self.parameters.hold_phase(params, name, reset=True)
                    warnings.append(f"{why}; its lattice/profile parameters were held at their start values")
                prob = self._problem(x, y, s, fitmask, active, params)
                outcome = self.stages.run(prob, mode, outcome["lebail_areas"], held)
                warnings += outcome["warnings"]
        result = assemble_result(prob, outcome, mode, warnings, time.perf_counter() - t0)
        result.sigma_source = sigma_source
        result.kalpha2 = self.instrument.kalpha2
        result.polarization = self.polarization_note
        return result

    def _problem(self, x, y, s, fitmask, active, params) -> Problem:
        """One fit's `Problem` on this refinement's structures."""
        return Problem(self.spec, self.structures, self.wavelength_A, self.instrument.distance_mm, x, y, s, fitmask,
                       active, params, instrument=self.instrument, kalpha2=self.instrument.kalpha2)


def polarization_note(recipe_polarization: float | None, applied: float | None) -> str:
    """How polarisation enters the model, for the fit output and results attrs: none applied
    (integrated data: divided out; `NOT_APPLIED_POLARIZATION`), else the P applied and where it
    came from (the recipe's ``profile.polarization``, or the instrument file's ``Polariz.``,
    applied to 1D Bragg-Brentano data by `insitu_xrd.pipeline.refine_setup.load_instrument`)."""
    if applied is None:
        return NOT_APPLIED_POLARIZATION
    if recipe_polarization is not None:
        return f"polarization P + (1 - P) cos^2(2theta) applied, P = {applied:g} (recipe profile.polarization)"
    return (f"Polariz. = {applied:g} of the instrument file applied: P + (1 - P) cos^2(2theta) (Bragg-Brentano 1D "
            "data; set refinement.profile.polarization to override)")


def prepare_data(spec: RefinementSpec, tth, inten, sigma):
    """The fitted pattern: (2theta (deg), intensity, sigma, fitted-point mask, sigma source),
    sorted by 2theta, non-finite points and points outside ``spec.range_2theta_deg`` dropped;
    excluded regions and sigma <= 0 are not fitted. The weights follow ``spec.sigma``
    (`weights`)."""
    x = np.asarray(tth, dtype=float)
    y = np.asarray(inten, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InsituXRDError(f"two_theta_deg and intensity must be 1D arrays of one length, got {x.shape}, {y.shape}")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=float)
        if sigma.shape != y.shape:
            raise InsituXRDError(f"sigma has shape {sigma.shape}, intensity {y.shape}")
    s, source = weights(spec.sigma, y, sigma)
    order = np.argsort(x)
    x, y, s = x[order], y[order], s[order]
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(s)
    rng = spec.range_2theta_deg
    if rng is not None:
        good &= (x >= rng[0]) & (x <= rng[1])
    x, y, s = x[good], y[good], s[good]
    fitmask = s > 0
    for lo, hi in spec.exclude_2theta_deg:
        fitmask &= ~((x >= lo) & (x <= hi))
    if fitmask.sum() < 20:
        raise InsituXRDError(f"only {int(fitmask.sum())} usable points in the refinement range {rng}")
    s = np.where(s > 0, s, 1.0)
    return x, y, s, fitmask, source


def weights(mode: str, y: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(sigma per point, its source) for ``refinement.sigma`` ``mode`` and the data's esds
    ``sigma`` (None: the file has none).

    - ``from_file``: the esds as given (an error without them); ``auto`` uses them when present.
    - ``poisson`` (``auto`` without esds): sqrt(max(I, 1)) for counts. Data with negative points
      (background subtracted) get sqrt(max(I, 0) + s0^2), s0^2 the mean square of the points
      below zero: their background was Poisson noise about zero, whose variance the negative
      excursions measure (half of a zero-mean normal: E[I^2 | I < 0] = s0^2). sqrt(max(I, 1))
      would give the whole background a weight of 1 per point, far above that of the peaks on
      scaled data (GoF ~ 0.07); source ``poisson_background_subtracted``.
    - ``unit``: 1 everywhere (GoF then has no absolute meaning; esds are still scaled by it).
    """
    if mode in ("auto", "from_file") and sigma is not None:
        return sigma, "from_file"
    if mode == "from_file":
        raise InsituXRDError("refinement.sigma is from_file but the data have no esd column "
                             "(use poisson or unit, or a file with esds)")
    if mode == "unit":
        return np.ones_like(y), "unit"
    finite = y[np.isfinite(y)]
    negative = finite[finite < 0]
    if negative.size == 0:
        return np.sqrt(np.maximum(y, 1.0)), "poisson"
    s0_sq = max(float(np.mean(negative * negative)), np.finfo(float).tiny)
    return np.sqrt(np.maximum(y, 0.0) + s0_sq), "poisson_background_subtracted"
