"""Refinement result: refined values with esds, agreement indices, curves, and an xarray Dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import lmfit
import numpy as np
import xarray as xr

from insitu_xrd.core.pattern import PeakTable
from insitu_xrd.provenance import software_versions_json, utc_now_iso

__all__ = ["FitResult", "NOT_APPLIED_POLARIZATION"]


#: ``FitResult.polarization`` when the model applies none (integrated data: divided out)
NOT_APPLIED_POLARIZATION = "polarization removed by integration (not applied in the model)"


@dataclass
class FitResult:
    """Outcome of `Refinement.fit`.

    params : lmfit.Parameters with refined values, ``stderr`` (corrected esds) and ``correl``;
        pass the whole result as ``start=`` of the next fit.
    values, esds : {name: value} of every refined parameter (and derived ones: ``<P>_volume_A3``);
        esd = NaN for a value held fixed.
    rwp, rp, rexp : weighted-profile, profile and expected R factors (fractions, not %).
    gof : reduced chi^2 = chi2 / (nobs - nvarys) (GSAS-II "GOF" squared).
    durbin_watson : Durbin-Watson statistic of the weighted residuals (2 = uncorrelated).
    esd_factor : factor applied to every esd for serial correlation (1 = none), after
        sqrt(gof) scaling; see `insitu_xrd.fit.engine` for the convention.
    phase_fraction : {phase: (weight fraction, esd)}.
    correlation, correlation_names : correlation matrix of the refined parameters and its order.
    peaks : {phase: PeakTable} reflections inside the range (tick marks, hkl, d, areas).
    sigma_source : where the weights came from: ``from_file`` (the data's esds), ``poisson``
        (sqrt of the counts), ``poisson_background_subtracted`` (negative points present:
        sqrt(max(I, 0) + s0^2)), ``unit`` (see `insitu_xrd.fit.engine.prepare_data`).
    kalpha2 : (Ka2 wavelength (A), Ka2/Ka1 ratio) of a laboratory doublet, None for one wavelength
        (``wavelength_A`` is then Ka1).
    site_parameters : {refined site parameter: "<phase>/<site>/<quantity>"} (e.g. "M_O1_x":
        "M/O1/x"; a B group "M/O1+O2/biso_A2"), the parameters of `insitu_xrd.fit.phase_model`.
    """

    params: lmfit.Parameters
    values: dict[str, float]
    esds: dict[str, float]
    rwp: float
    rp: float
    rexp: float
    gof: float
    durbin_watson: float
    chi2: float
    nobs: int
    nvarys: int
    success: bool
    message: str
    at_bounds: list[str]
    phase_fraction: dict[str, tuple[float, float]]
    correlation: np.ndarray
    correlation_names: list[str]
    two_theta_deg: np.ndarray
    obs: np.ndarray
    sigma: np.ndarray
    calc: np.ndarray
    background: np.ndarray
    phase_curves: dict[str, np.ndarray]
    diffuse_curves: dict[str, np.ndarray]
    peaks: dict[str, PeakTable]
    mode: str
    wavelength_A: float
    active_phases: list[str]
    esd_factor: float = 1.0
    elapsed_s: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    lebail_areas: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    site_parameters: dict[str, str] = field(default_factory=dict)
    sigma_source: str = ""
    kalpha2: tuple[float, float] | None = None
    polarization: str = NOT_APPLIED_POLARIZATION

    @property
    def diff(self) -> np.ndarray:
        """obs - calc on the fitted points."""
        return self.obs - self.calc

    @property
    def chi2_red(self) -> float:
        return self.gof

    def to_dataset(self) -> xr.Dataset:
        """xarray Dataset of the fit (schema documented in insitu_xrd.fit)."""
        tth = np.asarray(self.two_theta_deg, dtype=float)
        phases = list(self.phase_curves)
        data: dict[str, Any] = {
            "obs": (("two_theta",), self.obs),
            "sigma": (("two_theta",), self.sigma),
            "calc": (("two_theta",), self.calc),
            "background": (("two_theta",), self.background),
            "diff": (("two_theta",), self.diff),
        }
        if phases:
            data["phase_curve"] = (("phase", "two_theta"), np.array([self.phase_curves[p] for p in phases]))
        if self.diffuse_curves:
            labels = list(self.diffuse_curves)
            data["diffuse_curve"] = (("diffuse", "two_theta"), np.array([self.diffuse_curves[d] for d in labels]))
        pk_tth, pk_phase, pk_hkl, pk_d, pk_area = [], [], [], [], []
        for name, table in self.peaks.items():
            for hkl, t, d, a in zip(table.hkl, table.two_theta_deg, table.d_A, table.area):
                pk_tth.append(float(t))
                pk_phase.append(name)
                pk_hkl.append(_hkl_label(hkl))
                pk_d.append(float(d))
                pk_area.append(float(a))
        data["peak_two_theta"] = (("peak",), np.array(pk_tth, dtype=float))
        data["peak_phase"] = (("peak",), np.array(pk_phase, dtype=str))
        data["peak_hkl"] = (("peak",), np.array(pk_hkl, dtype=str))
        data["peak_d_A"] = (("peak",), np.array(pk_d, dtype=float))
        data["peak_area"] = (("peak",), np.array(pk_area, dtype=float))
        for name, value in self.values.items():
            data[name] = ((), float(value))
            data[f"{name}_esd"] = ((), float(self.esds.get(name, np.nan)))
        for name, (frac, esd) in self.phase_fraction.items():
            data[f"{name}_phase_fraction"] = ((), float(frac))
            data[f"{name}_phase_fraction_esd"] = ((), float(esd))
        data["correlation"] = (("param", "param2"), np.asarray(self.correlation, dtype=float))
        coords: dict[str, Any] = {
            "two_theta": ("two_theta", tth, {"units": "deg", "long_name": "2theta"}),
            "param": ("param", np.array(self.correlation_names, dtype=str)),
            "param2": ("param2", np.array(self.correlation_names, dtype=str)),
        }
        if phases:
            coords["phase"] = ("phase", np.array(phases, dtype=str))
        if self.diffuse_curves:
            coords["diffuse"] = ("diffuse", np.array(list(self.diffuse_curves), dtype=str))
        attrs = {
            "rwp": float(self.rwp),
            "rp": float(self.rp),
            "rexp": float(self.rexp),
            "gof": float(self.gof),
            "chi2": float(self.chi2),
            "durbin_watson": float(self.durbin_watson),
            "esd_factor": float(self.esd_factor),
            "esd_convention": "esd = sqrt(diag(cov) * gof) * esd_factor; esd_factor = sqrt((1+rho)/(1-rho)), rho = max(0, 1 - DW/2)",
            "nobs": int(self.nobs),
            "nvarys": int(self.nvarys),
            "success": int(bool(self.success)),
            "message": self.message,
            "at_bounds": json.dumps(self.at_bounds),
            "warnings": json.dumps(self.warnings),
            "mode": self.mode,
            "active_phases": json.dumps(self.active_phases),
            "wavelength_A": float(self.wavelength_A),
            "sigma_source": self.sigma_source,
            **({"kalpha2_wavelength_A": float(self.kalpha2[0]), "kalpha2_ratio": float(self.kalpha2[1])}
               if self.kalpha2 is not None else {}),
            "polarization": self.polarization,
            "elapsed_s": float(self.elapsed_s),
            "software_versions": software_versions_json(),
            "created_utc": utc_now_iso(),
        }
        ds = xr.Dataset(data, coords=coords, attrs=attrs)
        ds["obs"].attrs["long_name"] = "observed intensity"
        ds["calc"].attrs["long_name"] = "calculated intensity"
        ds["peak_two_theta"].attrs["units"] = "deg"
        ds["peak_d_A"].attrs["units"] = "A"
        return ds


def _hkl_label(hkl: np.ndarray) -> str:
    h, k, l = (int(v) for v in hkl)
    if all(0 <= v <= 9 for v in (h, k, l)):
        return f"{h}{k}{l}"
    return f"{h},{k},{l}"
