"""Refinement engine: Le Bail and Rietveld fits of 1D powder patterns (pure numpy/scipy/lmfit).

API summary (stable; the pipeline, CLI and plots build on it)
------------------------------------------------------------
``RefinementSpec`` (insitu_xrd.fit.spec): pydantic model of the recipe's ``refinement:`` section.

``Refinement(spec, wavelength_A, instrument=None, phases=None)``
    instrument: ``core.pattern.Instrument`` read by the caller from ``profile.instrument``
    (spec values override it); phases: ``{name: core.crystal.Phase}`` for phases given as ``cif``
    (templates are built from the spec).

``Refinement.fit(two_theta_deg, intensity, sigma, start=None, phases=None, mode=None) -> FitResult``
    sigma: Poisson esds of the intensities (None: sqrt(max(I, 1))); start: a previous FitResult
    (warm start: its ``params`` and Le Bail intensities); phases: names of active phases (default:
    every non-optional phase); mode: override spec.mode. A phase newly activated (optional on a
    cold start, or absent from ``start``) is held at its start lattice until its scale is
    significant (> 3 esd), so an absent H3 is reported as a fraction ~0 +/- esd (see ``warnings``).

``Refinement.initial_params(active=None) -> lmfit.Parameters``: the spec's starting parameters.

Phase fractions in ``lebail`` mode come from a structure-factor scale step (lattice, profile and
positions fixed at the Le Bail result; one scale per phase, background and diffuse re-solved);
the scales are reported as ``<P>_scale`` (their esds include the uncertainty of the refined
lattice/profile). Esds: covariance of the full Jacobian (Le Bail: including the reflection
intensities) x reduced chi^2, times sqrt((1+rho)/(1-rho)) with rho = max(0, 1 - DW/2)
(``esd_factor``; Durbin-Watson AR(1) correction).

``FitResult``: ``params`` (lmfit.Parameters, usable as the next start), ``values``/``esds`` dicts,
``rwp, rp, rexp, gof (= reduced chi^2), durbin_watson, chi2, nobs, nvarys, success, message``,
``at_bounds``, ``phase_fraction {phase: (value, esd)}``, ``correlation`` (+ ``correlation_names``),
curves ``two_theta_deg, obs, sigma, calc, background, diff`` (fitted points only: range and
exclusions applied), ``phase_curves``, ``diffuse_curves``, ``peaks`` {phase: PeakTable} (tick
positions, hkl, d, areas), ``lebail_areas``, ``warnings``, ``esd_factor``, ``elapsed_s``,
``active_phases``, ``to_dataset()`` -> xarray Dataset (dims two_theta, peak, param, param2, phase,
diffuse; one scalar per refined value with an ``_esd`` twin, ``<P>_phase_fraction[_esd]``,
``<P>_volume_A3[_esd]``, ``correlation``; attrs rwp, rp, rexp, gof, durbin_watson, mode,
wavelength_A, sigma_source, kalpha2_wavelength_A and kalpha2_ratio (a Ka doublet), polarization note,
software_versions).

Parameter names: profile ``U V W X Y zero_deg displacement_um sh_l`` (``sh_l``: GSAS-II SH/L) and, by
geometry, ``absorption_muR absorption_mut transparency_mm``; background ``bkg_0..``,
``bkg_hump<i>_area|center_deg|fwhm_deg|eta``; phase ``<P>_a|b|c|alpha|beta|gamma`` (the free ones of
its crystal system; results carry all six and ``<P>_volume_A3``), ``<P>_scale|mustrain|size_um|
mustrain_mix|size_mix|biso_A2|md_ratio|sh_C<l>_<j>`` (and the derived ``<P>_texture_index``); site parameters of any phase ``<P>_<SITE>_x|y|z|occ|occ_<El>|biso_A2``
and the nmc811 aliases ``<P>_o_z|li_occupancy|ni_li_mixing|biso_tm_A2|biso_li_A2|biso_o_A2``
(``insitu_xrd.fit.phase_model``; ``FitResult.site_parameters`` labels them); diffuse
``diff_<P>_<hkl>[_<hkl>]_area|fwhm_deg|offset_deg|eta`` (e.g. ``diff_H2_108_110_area``).

How one fit flows through the modules (parameter model -> model evaluation -> solvers ->
covariance -> result): the docstring of ``insitu_xrd.fit.engine`` and docs/refinement.md, section 5.
"""

from insitu_xrd.fit.engine import Refinement
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import BackgroundSpec, DiffuseSpec, HumpSpec, PhaseSpec, ProfileSpec, RefinementSpec

__all__ = [
    "Refinement",
    "FitResult",
    "RefinementSpec",
    "ProfileSpec",
    "BackgroundSpec",
    "HumpSpec",
    "PhaseSpec",
    "DiffuseSpec",
]
