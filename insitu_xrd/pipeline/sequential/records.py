"""Per-frame records of a sequential refinement and the results Dataset they make.

:class:`FrameRecord` is what is kept of one frame's fit (plain data: picklable, storable);
:func:`record_from_fit` flattens a FitResult into one. :func:`records_to_dataset` assembles the
sequential-refinement Dataset (dims ``frame``, ``phase``, ``two_theta``, ``corr_with``) and
:func:`dataset_to_records` reads records back from it (checkpoints, resumes).
:func:`frame_arrays` reads one frame's arrays from a patterns Dataset.

Neither the chain's decisions (:mod:`insitu_xrd.pipeline.sequential.chain`) nor how the frames are run
(:mod:`insitu_xrd.pipeline.sequential.run`) live here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.provenance import software_versions_json, utc_now_iso

__all__ = ["site_parameter_dataset", "FrameRecord", "record_from_fit", "broadening_correlations", "records_to_dataset", "dataset_to_records",
           "cathode_phases", "phase_onset_attrs", "automation_attrs", "param_value", "statistical_value", "two_theta_axis", "frame_arrays", "without_esds", "PER_PHASE_VARS",
           "CORR_WITH", "UNITS"]

#: Per-phase output variables -> FitResult parameter suffix.
PER_PHASE_VARS: dict[str, str] = {
    "a": "a",
    "b": "b",
    "c": "c",
    "alpha": "alpha",
    "beta": "beta",
    "gamma": "gamma",
    "volume": "volume_A3",
    "microstrain": "mustrain",
    "microstrain_axial": "mustrain_axial",
    "size": "size_um",
    "size_axial": "size_axial_um",
    "texture_ratio": "md_ratio",
    "texture_index": "texture_index",
    "scale": "scale",
}

#: What microstrain and size are correlated with (``microstrain_correlation`` /
#: ``size_correlation`` over the ``corr_with`` dimension): each other and the instrument terms.
CORR_WITH: dict[str, str] = {"microstrain": "{p}_mustrain", "size": "{p}_size_um", "U": "U", "V": "V", "W": "W",
                             "X": "X", "Y": "Y"}

UNITS: dict[str, str] = {
    "a": "A",
    "b": "A",
    "c": "A",
    "alpha": "deg",
    "beta": "deg",
    "gamma": "deg",
    "volume": "A^3",
    "microstrain": "1e-6 (GSAS-II mu-strain; uniaxial model: equatorial)",
    "microstrain_axial": "1e-6 (uniaxial model: along the axis)",
    "size_axial": "um (uniaxial model: along the axis)",
    "texture_ratio": "1 (March-Dollase ratio; NaN: no texture model)",
    "texture_index": "1 (spherical-harmonics texture index J; NaN: no such model)",
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
    site_labels: dict[str, str] = field(default_factory=dict)  # refined site parameter -> "phase/site/quantity"
    site_esds: dict[str, float] = field(default_factory=dict)  # their esds (values: in ``values``)
    held: dict[str, str] = field(default_factory=dict)  # active phase -> why its parameters were held ('' = refined)
    at_bounds: list[str] = field(default_factory=list)  # refined parameters that ended at a bound (no esd reported)

    @property
    def good(self) -> bool:
        return self.status in ("ok", "refit")


def param_value(fit: Any, name: str) -> tuple[float, float]:
    """(value, esd) of the parameter ``name`` of a FitResult (nan when it has none)."""
    if name in fit.values:
        return float(fit.values[name]), float(fit.esds.get(name, math.nan))
    params = getattr(fit, "params", None)
    if params is not None and name in params:
        p = params[name]
        esd = p.stderr if (p.vary and p.stderr is not None) else math.nan
        return float(p.value), float(esd)
    return math.nan, math.nan


def statistical_value(fit: Any, name: str) -> tuple[float, float]:
    """(value, statistical esd) of the parameter ``name``: the fit's serial-correlation factor
    (``esd_factor``) taken out of its esd, for decisions a correlated residual must not sway."""
    val, esd = param_value(fit, name)
    factor = float(getattr(fit, "esd_factor", 1.0) or 1.0)
    return val, (esd / factor if np.isfinite(factor) and factor > 0 else esd)


#: refined per-phase parameters whose missing esd means the fit held the phase
HOLDABLE = ("a", "b", "c", "alpha", "beta", "gamma", "mustrain", "size_um")


def held_phase_reasons(fit: Any, spec: RefinementSpec) -> dict[str, str]:
    """{active phase: why its refined lattice/profile parameters were held ('' = refined)}.

    A phase is held when the fit says so (its warning "phase P: scale not significant ...") or
    when a lattice length or width the recipe refines has no esd in the fit."""
    warnings = [str(w) for w in (getattr(fit, "warnings", None) or [])]
    out: dict[str, str] = {}
    for name in fit.active_phases:
        why = next((w for w in warnings if w.startswith(f"phase {name}: ") and "held" in w), "")
        if not why:
            try:
                refine = spec.phase(name).refine
            except KeyError:
                refine = []
            nolesd = [k for k in HOLDABLE if k in refine and np.isfinite(param_value(fit, f"{name}_{k}")[0])
                      and not np.isfinite(param_value(fit, f"{name}_{k}")[1])]
            if nolesd:
                why = f"phase {name}: {', '.join(nolesd)} not refined on this frame (no esd)"
        out[name] = why
    return out


def record_from_fit(index: int, fit: Any, spec: RefinementSpec, status: str = "ok", message: str = "",
                    optional_p: float = math.nan) -> FrameRecord:
    """Flatten a FitResult into a FrameRecord (absent phases: NaN values, fraction 0).

    A parameter that ended at a bound is no estimate: its esd is NaN here and its name is in
    ``at_bounds`` (the report shows "at bound"). On a ``diverged`` frame the parameters the fit
    held (no esd) are NaN: they would be another frame's values."""
    rec = FrameRecord(index=index, status=status, rwp=float(fit.rwp), gof=float(fit.gof), message=message,
                      optional_p=optional_p, active=list(fit.active_phases))
    rec.at_bounds = [str(n) for n in (getattr(fit, "at_bounds", None) or [])]
    rec.held = held_phase_reasons(fit, spec)
    rec.zero_shift, rec.zero_shift_esd = param_value(fit, "zero_deg")
    if "zero_deg" in rec.at_bounds:
        rec.zero_shift_esd = math.nan
    for ph in spec.phases:
        d: dict[str, float] = {}
        active = ph.name in fit.active_phases
        for var, suffix in PER_PHASE_VARS.items():
            v, e = param_value(fit, f"{ph.name}_{suffix}") if active else (math.nan, math.nan)
            if f"{ph.name}_{suffix}" in rec.at_bounds:
                e = math.nan
            if status == "diverged" and suffix in HOLDABLE and suffix in ph.refine and not np.isfinite(e):
                v = math.nan
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
    labels = dict(getattr(fit, "site_parameters", {}) or {})
    rec.site_labels = labels
    rec.site_esds = {n: float(fit.esds.get(n, math.nan)) for n in labels}
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
    tth_grid = two_theta_axis(patterns)
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
    held = np.zeros((nf, npn), dtype=bool)
    held_reason = np.full((nf, npn), "", dtype=object)
    at_bounds = np.array([""] * nf, dtype=object)
    sites_json = np.array([""] * nf, dtype=object)
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
        at_bounds[i] = ", ".join(rec.at_bounds)
        for j, name in enumerate(phases):
            d = rec.phases.get(name)
            active[i, j] = name in rec.active and rec.good
            why = rec.held.get(name, "") if name in rec.active else ""
            held[i, j], held_reason[i, j] = bool(why), why
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
        if rec.site_labels:
            sites_json[i] = json.dumps({n: [rec.values.get(n, math.nan), rec.site_esds.get(n, math.nan), lab]
                                        for n, lab in rec.site_labels.items()})
    dims2 = ("frame", "phase")
    for k, v in per.items():
        data[k] = (dims2, v)
    # fraction within the electrode phases (cathode_phases): the lever-rule H2/H3 fraction,
    # independent of cell lines (Al, Li) and impurities in the beam
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
    data["held"] = (dims2, held)
    data["held_reason"] = (dims2, held_reason.astype(str))
    data["at_bounds"] = (("frame",), at_bounds.astype(str))
    data["rwp"] = (("frame",), rwp)
    data["gof"] = (("frame",), gof)
    data["zero_shift"] = (("frame",), zero)
    data["zero_shift_esd"] = (("frame",), zero_esd)
    data["optional_phase_p"] = (("frame",), opt_p)
    data["status"] = (("frame",), status.astype(str))
    data["message"] = (("frame",), message.astype(str))
    data["fit_values"] = (("frame",), values_json.astype(str))
    data["site_parameters"] = (("frame",), sites_json.astype(str))
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
    ds["held"].attrs["long_name"] = ("the fit held the phase's lattice/profile parameters (scale not significant: "
                                     "|S| < 3 statistical esd; recipe key hold: never turns this off)")
    ds["held_reason"].attrs["long_name"] = "why the phase was held on this frame ('' = refined)"
    ds["at_bounds"].attrs["long_name"] = "refined parameters that ended at a bound (no esd reported for them)"
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


#: without a phase marked ``role: electrode``, the phases of these templates are the electrode
#: (optional ones included: the H3 that grows from H2); impurities, cell lines (Li, Al) and a
#: sample of other phases are not
DEFAULT_ELECTRODE_TEMPLATES = ("nmc811",)


def cathode_phases(spec: RefinementSpec) -> list[str]:
    """Phases of the electrode material (``cathode_fraction`` is the fraction within them; the
    strain and the in-situ figures default to them).

    The phases the recipe marks ``role: electrode`` when any is marked; otherwise the phases of a
    :data:`DEFAULT_ELECTRODE_TEMPLATES` template (the nmc811 template and its optional phases).
    Empty for a sample with no electrode phase (then ``cathode_fraction`` is NaN throughout).
    """
    marked = [p.name for p in spec.phases if getattr(p, "role", None) == "electrode"]
    if marked:
        return marked
    return [p.name for p in spec.phases if (p.template or "").lower() in DEFAULT_ELECTRODE_TEMPLATES]


def phase_onset_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """Frame (index and name) where each optional phase first appears and stays, and for every
    phase that is gone before the series ends the last frame where it is present (attrs
    ``<P>_last_frame``, ``_name``, ``_time_s``...; the end of a two-phase reaction is a result).
    Present: in the fit and not held for a scale below significance."""
    out: dict[str, Any] = {}
    phases = [str(p) for p in ds["phase"].values]
    out.update(_phase_end_attrs(ds, phases))
    out.update(automation_attrs(ds))
    for name in json.loads(ds.attrs.get("optional_phases", "[]")):
        if name not in phases:
            continue
        act = ds["active"].sel(phase=name).values.astype(bool)
        onset = _onset_index(act, ds["status"].values)
        out[f"{name}_onset_frame"] = int(onset) if onset is not None else -1
        if onset is not None:
            out.update(_frame_attrs(ds, onset, f"{name}_onset"))
    return out


def _frame_attrs(ds: xr.Dataset, i: int, prefix: str) -> dict[str, Any]:
    """Name, time and the echem coordinates of frame ``i`` as attrs ``<prefix>_frame_name``,
    ``<prefix>_time_s``, ``<prefix>_x_li`` ... (those the Dataset has)."""
    out: dict[str, Any] = {f"{prefix}_frame_name": str(ds["frame_name"].values[i]) if "frame_name" in ds.coords else str(i)}
    if "time_s" in ds.coords:
        out[f"{prefix}_time_s"] = float(ds["time_s"].values[i])
    for xc in ("x_li", "soc", "voltage_V", "capacity_mAh_g"):
        if xc in ds.coords:
            out[f"{prefix}_{xc}"] = float(ds[xc].values[i])
    return out


def automation_attrs(ds: xr.Dataset) -> dict[str, str]:
    """What the automatic decisions did over the series, as JSON attrs (the report lists them):

    ``held_phases``: {phase: frames where the fit held it (scale not significant)};
    ``refined_never_moved``: {parameter: value} of parameters the recipe refines that kept one
    value on every good frame where their phase was fitted and not held (or, on one frame, their
    recipe start value): refined in name only;
    ``parameters_at_bound``: {parameter: frames where it ended at a bound} (no esd reported);
    ``unphysical``: {parameter: frames} profile terms below zero (W, X, Y, U), negative diffuse or
    hump areas and phase scales below zero by more than 2 esd."""
    if "status" not in ds or "fit_values" not in ds:
        return {}
    try:
        spec = RefinementSpec.model_validate_json(ds.attrs.get("refinement_spec", ""))
    except Exception:  # no or an older spec: nothing to compare with
        return {}
    good = [i for i, st in enumerate(ds["status"].values) if str(st) in ("ok", "refit")]
    values = {i: (json.loads(str(ds["fit_values"].values[i])) if str(ds["fit_values"].values[i]) else {}) for i in good}
    phases = [str(p) for p in ds["phase"].values]
    held = ds["held"].values if "held" in ds else np.zeros((ds.sizes["frame"], len(phases)), bool)
    active = ds["active"].values
    out_held = {p: [i for i in good if active[i, j] and held[i, j]] for j, p in enumerate(phases)}
    refined: list[tuple[str, str | None, float | None]] = []  # (parameter, phase, recipe start)
    for ph in spec.phases:
        for k in ph.refine:
            if k != "scale" and k in set(PER_PHASE_VARS.values()):
                start = getattr(ph, k, None)
                refined.append((f"{ph.name}_{k}", ph.name, float(start) if isinstance(start, (int, float)) else None))
    for k in spec.profile.refine:
        start = getattr(spec.profile, k, None)
        refined.append((k, None, float(start) if start is not None else None))
    never: dict[str, float] = {}
    for name, phase, start in refined:
        j = phases.index(phase) if phase in phases else None
        vals = [values[i].get(name) for i in good
                if j is None or (active[i, j] and not held[i, j])]
        vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
        if not vals or any(v != vals[0] for v in vals):
            continue
        if len(vals) >= 2 or (start is not None and abs(vals[0] - start) <= 1e-12 * max(abs(start), 1.0)):
            never[name] = vals[0]
    bound: dict[str, list[int]] = {}
    if "at_bounds" in ds:
        for i in good:
            for n in (x for x in str(ds["at_bounds"].values[i]).split(", ") if x):
                bound.setdefault(n, []).append(i)
    bad: dict[str, list[int]] = {}
    for i in good:
        for n, v in values[i].items():
            neg = (n in ("U", "W", "X", "Y") or (n.startswith(("diff_", "bkg_hump")) and n.endswith("_area")))
            if neg and np.isfinite(v) and v < 0:
                bad.setdefault(n, []).append(i)
        for j, p in enumerate(phases):
            sc, e = float(ds["scale"].values[i, j]), float(ds["scale_esd"].values[i, j])
            if active[i, j] and np.isfinite(sc) and sc < 0 and (not np.isfinite(e) or sc < -2 * e):
                bad.setdefault(f"{p}_scale", []).append(i)
    return {"held_phases": json.dumps({p: v for p, v in out_held.items() if v}),
            "refined_never_moved": json.dumps(never), "parameters_at_bound": json.dumps(bound),
            "unphysical": json.dumps(bad)}


def _phase_end_attrs(ds: xr.Dataset, phases: list[str]) -> dict[str, Any]:
    good = np.array([str(s) in ("ok", "refit") for s in ds["status"].values])
    if not good.any() or "active" not in ds:
        return {}
    out: dict[str, Any] = {}
    last_good = int(np.flatnonzero(good)[-1])
    for j, name in enumerate(phases):
        present = ds["active"].values[:, j].astype(bool) & good
        if "held_reason" in ds:
            present &= np.array(["not significant" not in str(w) for w in ds["held_reason"].values[:, j]])
        idx = np.flatnonzero(present)
        if idx.size == 0 or int(idx[-1]) == last_good:
            continue  # never present, or present to the end
        last = int(idx[-1])
        out[f"{name}_last_frame"] = last
        out.update(_frame_attrs(ds, last, f"{name}_last"))
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
        if "held_reason" in ds:
            rec.held = {p: str(ds["held_reason"].values[i, j]) for j, p in enumerate(phases) if p in rec.active}
        if "at_bounds" in ds:
            rec.at_bounds = [n for n in str(ds["at_bounds"].values[i]).split(", ") if n]
        for j, p in enumerate(phases):
            d = {}
            for var in list(PER_PHASE_VARS) + ["phase_fraction"]:
                if var not in ds:  # stored before the variable existed (b and the angles)
                    continue
                d[var] = float(ds[var].values[i, j])
                d[var + "_esd"] = float(ds[var + "_esd"].values[i, j])
            rec.phases[p] = d
        vj = str(ds["fit_values"].values[i])
        rec.values = json.loads(vj) if vj else {}
        sj = str(ds["site_parameters"].values[i]) if "site_parameters" in ds else ""
        for n, (_, esd, lab) in (json.loads(sj) if sj else {}).items():
            rec.site_labels[n] = str(lab)
            rec.site_esds[n] = float(esd) if esd is not None else math.nan
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


def site_parameter_dataset(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its refined site parameters as labelled variables: ``site_value`` and
    ``site_value_esd`` over (frame, site_param), the coordinate ``site_param`` holding the
    parameter names (``M_O1_x``) with ``site_phase``, ``site_label`` and ``site_quantity`` beside
    it (a B group's sites joined by '+'). NaN where a frame did not refine the parameter. The
    per-frame JSON ``site_parameters`` (the storage form: one layout for every row) stays.
    Returns ``ds`` unchanged when no frame refined a site parameter."""
    if "site_parameters" not in ds:
        return ds
    rows = [json.loads(str(t)) if str(t) else {} for t in ds["site_parameters"].values]
    names = sorted({n for r in rows for n in r})
    if not names:
        return ds
    val = np.full((len(rows), len(names)), np.nan)
    esd = np.full((len(rows), len(names)), np.nan)
    label = {}
    for i, r in enumerate(rows):
        for n, (v, e, lab) in r.items():
            j = names.index(n)
            val[i, j] = np.nan if v is None else float(v)
            esd[i, j] = np.nan if e is None else float(e)
            label[n] = str(lab)
    parts = [label[n].split("/") + ["", "", ""] for n in names]
    out = ds.assign_coords(site_param=("site_param", np.array(names, dtype=str)),
                           site_phase=("site_param", np.array([p[0] for p in parts], dtype=str)),
                           site_label=("site_param", np.array([p[1] for p in parts], dtype=str)),
                           site_quantity=("site_param", np.array([p[2] for p in parts], dtype=str)))
    out["site_value"] = (("frame", "site_param"), val)
    out["site_value_esd"] = (("frame", "site_param"), esd)
    out["site_value"].attrs["long_name"] = ("refined site parameter (coordinates fractional, occupancies 1, "
                                            "B in A^2; see site_quantity)")
    return out


def two_theta_axis(patterns: xr.Dataset) -> np.ndarray:
    """The patterns' 2theta axis in degrees (from ``two_theta``, or from ``q`` and the wavelength)."""
    if "two_theta" in patterns.coords:
        return np.asarray(patterns["two_theta"].values, dtype=float)
    if "q" in patterns.coords:
        lam = float(patterns.attrs["wavelength_A"])
        q = np.asarray(patterns["q"].values, dtype=float)
        return np.degrees(2 * np.arcsin(np.clip(q * lam / (4 * np.pi), 0, 1)))
    raise InsituXRDError("patterns Dataset has neither a 'two_theta' nor a 'q' coordinate")



def _frame_time_s(patterns: xr.Dataset, i: int) -> float:
    """Time of frame ``i`` in s (NaN when the patterns carry none)."""
    if "time_s" not in patterns.coords and "time_s" not in patterns:
        return math.nan
    return float(patterns["time_s"].values[i])


def without_esds(intensity: np.ndarray, sigma: np.ndarray) -> bool:
    """A frame whose pattern has no esds: intensities but not one finite sigma where they are
    (the ``patterns:`` route stores a file without an esd column as a NaN sigma row)."""
    have = np.isfinite(intensity)
    return bool(have.any()) and not bool(np.isfinite(sigma[have]).any())


def frame_arrays(patterns: xr.Dataset, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, float]:
    """(two_theta_deg, intensity, sigma, pattern status, time_s) of frame ``i``.

    A frame without esds (:func:`without_esds`) gets the weights ``refinement.sigma: auto`` gives
    data without esds (:func:`insitu_xrd.fit.engine.weights`: sqrt(max(I, 1)), or for
    background-subtracted data sqrt(max(I, 0) + s0^2)); ``poisson`` and ``unit`` recompute theirs
    in the fit, and ``from_file`` is refused for such a series before the run
    (:func:`insitu_xrd.pipeline.stages.sequential_sigma_source`)."""
    from insitu_xrd.fit.engine import weights

    tth = two_theta_axis(patterns)
    y = np.asarray(patterns["intensity"].values[i], dtype=float)
    s = np.asarray(patterns["sigma"].values[i], dtype=float) if "sigma" in patterns else np.sqrt(np.clip(y, 1, None))
    if without_esds(y, s):
        s = weights("poisson", y, None)[0]
    st = str(patterns["status"].values[i]) if "status" in patterns else "ok"
    return tth, y, s, st, _frame_time_s(patterns, i)
