"""Strain curves from a sequential-results Dataset, and their exports for FEA.

:func:`compute_strain` turns the results of the sequential refinement (dims ``frame``, ``phase``;
``a``, ``c``, ``volume``, ``phase_fraction`` with ``_esd`` twins; per-frame ``status``; coords
``x_li``, ``soc``, ...) into a strain Dataset:

- per frame and phase: ``eps_a``, ``eps_c``, ``eps_V`` (+ ``_esd``);
- per frame, phase-fraction weighted over the phases present: ``eps_a_avg``, ``eps_c_avg``,
  ``eps_V_avg``, ``eps_iso_avg`` = (2 eps_a + eps_c)/3 (+ ``_esd``);
- on a uniform grid (dim ``point``, coord ``x``, the abscissa named by attr ``versus``):
  smooth curves ``curve_eps_a``, ``curve_eps_c``, ``curve_eps_V``, ``curve_eps_iso`` (+ ``_esd``)
  and the crystal-frame eigenstrain tensor ``curve_eigenstrain`` (point, i, j);
- the curves at each frame's abscissa, ``curve_eps_a_at_frame``, ... (dim ``frame``), to check
  them against the per-frame points (every point used is within 2 esd of its curve).

Writers/readers (every writer has a reader; the tests round-trip them): NetCDF
(:func:`write_strain_netcdf`), CSV (per frame and curve), JSON (all of it, with the reference
and smoothing metadata), COMSOL interpolation table (:func:`write_comsol_table`, spreadsheet
format, ``%`` comment lines). See docs/strain_fea.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from insitu_xrd.core.strain import (
    eigenstrain_tensor,
    hexagonal_volume_A3,
    isotropic_eigenstrain,
    phase_weighted_mean,
    relative_strain,
    smooth_curve,
)
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.provenance import software_versions_json, utc_now_iso

__all__ = [
    "VERSUS_CHOICES",
    "compute_strain",
    "cathode_phases_in",
    "phase_change_breaks",
    "write_strain_netcdf",
    "read_strain_netcdf",
    "write_strain_frames_csv",
    "write_strain_curve_csv",
    "read_csv_table",
    "write_strain_json",
    "read_strain_json",
    "write_comsol_table",
    "read_comsol_table",
    "write_strain_outputs",
    "COMSOL_COLUMNS",
]

VERSUS_CHOICES = ("x_li", "soc", "capacity_mAh_g", "voltage_V", "time_s", "frame")
_STRAINS = ("a", "c", "V")
# value columns of the COMSOL table, in file order after the argument column
COMSOL_COLUMNS = ("eps_a", "eps_c", "eps_iso", "eps_V", "eps_11", "eps_22", "eps_33", "eps_a_esd", "eps_c_esd", "eps_iso_esd")
_UNITS = {"x_li": "1", "soc": "1", "capacity_mAh_g": "mAh/g", "voltage_V": "V", "time_s": "s", "frame": "1"}


def cathode_phases_in(ds: xr.Dataset) -> list[str] | None:
    """The ``cathode_phases`` attr (a JSON list) restricted to the phases in ``ds``; None if absent."""
    raw = ds.attrs.get("cathode_phases")
    if raw is None:
        return None
    try:
        names = json.loads(raw) if isinstance(raw, str) else list(raw)
    except (TypeError, ValueError):
        return None
    present = {str(p) for p in ds["phase"].values} if "phase" in ds.coords else set()
    names = [str(n) for n in names if str(n) in present]
    return names or None


def phase_change_breaks(x: np.ndarray, eps: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Abscissae where the set of phases present changes between consecutive frames (in frame order).

    A phase is present where its fraction is finite and > 0 and its strain finite (as in the
    fraction-weighted mean). Where a phase appears (H2 -> H2 + H3) the weighted mean kinks: its
    slope jumps as the new phase's fraction grows from 0. The break is put halfway between the two
    frames; :func:`insitu_xrd.core.strain.smooth_curve` splits the curve there.
    """
    present = np.isfinite(frac) & (frac > 0) & np.isfinite(eps)
    change = np.any(present[1:] != present[:-1], axis=1)
    k = np.flatnonzero(change)
    return np.unique(0.5 * (x[k] + x[k + 1]))


def _status_ok(ds: xr.Dataset) -> np.ndarray:
    n = ds.sizes["frame"]
    if "status" not in ds.variables:
        return np.ones(n, bool)
    st = np.asarray(ds["status"].values).astype(str)
    return np.char.startswith(np.char.lower(st), "ok")


def _var(ds: xr.Dataset, name: str, phases: list[str], source: str, required: bool = True) -> np.ndarray | None:
    """(frame, phase) array of a results variable (a per-frame variable is broadcast)."""
    if name not in ds.variables:
        if required:
            raise InsituXRDError(f"{source}: variable {name!r} missing; variables present: {', '.join(sorted(map(str, ds.data_vars)))}")
        return None
    da = ds[name]
    if "phase" in da.dims:
        da = da.transpose("frame", "phase")
        return np.asarray(da.values, dtype=float)
    return np.repeat(np.asarray(da.values, dtype=float)[:, None], len(phases), axis=1)


def compute_strain(
    results: xr.Dataset,
    reference: str = "first",
    reference_frame: int | None = None,
    a0_A: float | None = None,
    c0_A: float | None = None,
    a0_esd_A: float = 0.0,
    c0_esd_A: float = 0.0,
    reference_values: Mapping[str, float] | None = None,
    reference_phase: str | None = None,
    per_phase_reference: bool = False,
    include_reference_esd: bool = True,
    versus: str = "x_li",
    method: str = "spline",
    n_points: int = 201,
    x_tol: float = 0.0,
    source: str = "results",
    phases: list[str] | None = None,
) -> xr.Dataset:
    """Lattice strain per frame and phase, phase-weighted averages, and smooth curves vs ``versus``.

    Reference (``reference``):
      ``first`` the first frame with status ok where the reference phase has finite a and c;
      ``frame`` the frame whose ``frame`` coordinate equals ``reference_frame``;
      ``values`` given ``a0_A``, ``c0_A`` (A; V0 = sqrt(3)/2 a0^2 c0), with esds ``a0_esd_A``,
      ``c0_esd_A`` (default 0: exact); or ``reference_values`` as in the recipe's
      ``strain.values``: ``{a: .., c: ..}`` for every phase, or per phase ``{H2_a: .., H2_c: ..,
      H3_a: .., H3_c: ..}`` (optional ``a_esd``/``c_esd``, ``H2_a_esd``, ...).
    By default every phase is strained against the reference phase's lattice (default: the phase
    present in the most frames with status ok, the first on ties), i.e. H2 and H3 against the pristine H1 lattice; ``per_phase_reference=True`` uses each
    phase's own lattice at the reference frame (``first``: its first frame present).
    ``phases``: the phases strained and averaged. Default: the results' ``cathode_phases`` attr
    (written by the sequential refinement: the R-3m host and its optional phases), so the cell's
    Li metal and Al lines, strained against the cathode's reference, never enter the strain or its
    fraction-weighted mean; all phases when the attr is absent. With the cathode subset the mean
    is weighted by ``cathode_fraction`` (the fraction within the cathode) where present.
    ``include_reference_esd``: propagate the reference's esd into every strain esd (frames other
    than the reference frame itself).
    Curves use frames with status ok and a finite abscissa; ``method`` spline|pchip (see
    :func:`insitu_xrd.core.strain.smooth_curve`), evaluated on ``n_points`` uniform points.
    """
    if "frame" not in results.dims:
        raise InsituXRDError(f"{source}: no 'frame' dimension (is it a sequential-results file?)")
    if versus not in VERSUS_CHOICES:
        raise InsituXRDError(f"--versus {versus!r} unknown; allowed: {', '.join(VERSUS_CHOICES)}")
    if reference not in ("first", "frame", "values"):
        raise InsituXRDError(f"reference {reference!r} unknown; allowed: first, frame, values")
    ds = results
    frac_name = "phase_fraction"
    if "phase" in ds.dims:
        all_phases = [str(p) for p in ds["phase"].values] if "phase" in ds.coords else [f"phase{i}" for i in range(ds.sizes["phase"])]
        wanted = list(phases) if phases is not None else cathode_phases_in(ds)
        if wanted is not None:
            unknown = [p for p in wanted if p not in all_phases]
            if unknown:
                raise InsituXRDError(f"{source}: phase(s) {', '.join(unknown)} not in the results; phases: {', '.join(all_phases)}")
            if "phase" not in ds.coords:
                raise InsituXRDError(f"{source}: the 'phase' dimension has no names to select {', '.join(wanted)} by")
            ds = ds.sel(phase=wanted)
            if phases is None and "cathode_fraction" in ds:
                frac_name = "cathode_fraction"
            all_phases = wanted
        phases = all_phases
    else:
        phases = [str(ds.attrs.get("phase_name", "phase"))]
    nf = ds.sizes["frame"]
    a = _var(ds, "a", phases, source)
    c = _var(ds, "c", phases, source)
    a_esd = _var(ds, "a_esd", phases, source, required=False)
    c_esd = _var(ds, "c_esd", phases, source, required=False)
    vol = _var(ds, "volume", phases, source, required=False)
    vol_esd = _var(ds, "volume_esd", phases, source, required=False)
    if vol is None:
        vol = hexagonal_volume_A3(a, c)
        vol_esd = None if (a_esd is None or c_esd is None) else vol * np.sqrt((2 * a_esd / a) ** 2 + (c_esd / c) ** 2)
    frac = _var(ds, frac_name, phases, source, required=False)
    frac_esd = _var(ds, f"{frac_name}_esd", phases, source, required=False)
    if frac is None:
        if len(phases) > 1:
            raise InsituXRDError(f"{source}: {len(phases)} phases but no 'phase_fraction' variable to weight them")
        frac = np.where(np.isfinite(a), 1.0, np.nan)
    ok = _status_ok(ds)
    frame_ids = np.asarray(ds["frame"].values) if "frame" in ds.coords else np.arange(nf)

    if reference_phase is None:
        # the host phase: present (finite a, c) in the most frames with status ok; the first on ties
        counts = [int(np.sum(ok & np.isfinite(a[:, p]) & np.isfinite(c[:, p]))) for p in range(len(phases))]
        ip = int(np.argmax(counts))
    elif reference_phase in phases:
        ip = phases.index(reference_phase)
    else:
        raise InsituXRDError(f"{source}: reference phase {reference_phase!r} not in the results; phases: {', '.join(phases)}")

    # ---- reference lattice per phase: (a0, a0_esd, c0, ..., V0, ..., frame position or None)
    refs: dict[str, list[tuple[float, float, int | None]]] = {k: [] for k in _STRAINS}
    ref_desc: str
    ref_pos_main: int | None = None
    if reference == "values":
        vals = dict(reference_values or {})
        if a0_A is not None:
            vals.setdefault("a", a0_A)
            vals.setdefault("a_esd", a0_esd_A)
        if c0_A is not None:
            vals.setdefault("c", c0_A)
            vals.setdefault("c_esd", c0_esd_A)
        known = {f"{p_}{k}{e}" for p_ in ["", *(f"{q}_" for q in phases)] for k in ("a", "c") for e in ("", "_esd")}
        unknown = sorted(set(vals) - known)
        if unknown:
            raise InsituXRDError(f"reference values: unknown key(s) {unknown}; use a, c (all phases) or "
                                 f"<phase>_a, <phase>_c with phases {', '.join(phases)} (optional _esd)")
        for p in phases:
            a0 = vals.get(f"{p}_a", vals.get("a"))
            c0 = vals.get(f"{p}_c", vals.get("c"))
            if a0 is None or c0 is None or not (a0 > 0 and c0 > 0):
                raise InsituXRDError(f"reference 'values' needs a0 and c0 (angstrom, > 0) for phase {p!r}: "
                                     "--a0-a and --c0-a, or strain.values {a: .., c: ..} in the recipe")
            a0e = float(vals.get(f"{p}_a_esd", vals.get("a_esd", 0.0)) or 0.0)
            c0e = float(vals.get(f"{p}_c_esd", vals.get("c_esd", 0.0)) or 0.0)
            v0 = float(hexagonal_volume_A3(a0, c0))
            refs["a"].append((float(a0), a0e, None))
            refs["c"].append((float(c0), c0e, None))
            refs["V"].append((v0, v0 * math.hypot(2 * a0e / a0, c0e / c0), None))
        a0_A, c0_A = refs["a"][ip][0], refs["c"][ip][0]
        v0 = refs["V"][ip][0]
        ref_desc = (f"given values a0 = {a0_A} A, c0 = {c0_A} A, V0 = sqrt(3)/2 a0^2 c0 = {v0:.6f} A^3"
                    + (" (per phase: see reference_lattice_json)" if any(k.startswith(tuple(f"{q}_" for q in phases)) for k in vals) else ""))
    else:
        def pick(p: int) -> int | None:
            good = ok & np.isfinite(a[:, p]) & np.isfinite(c[:, p])
            if reference == "first":
                idx = np.flatnonzero(good)
                return int(idx[0]) if idx.size else None
            hits = np.flatnonzero(frame_ids == reference_frame)
            if hits.size == 0:
                raise InsituXRDError(f"{source}: reference frame {reference_frame} not found; frames run "
                                     f"{frame_ids.min()}..{frame_ids.max()}")
            k = int(hits[0])
            return k if (np.isfinite(a[k, p]) and np.isfinite(c[k, p])) else None

        main = pick(ip)
        if main is None:
            what = "any frame with status ok" if reference == "first" else f"frame {reference_frame}"
            raise InsituXRDError(f"{source}: phase {phases[ip]!r} has no finite a and c at {what}; cannot take the reference there")
        ref_pos_main = main
        for p in range(len(phases)):
            pos = pick(p) if per_phase_reference else main
            pp = p if per_phase_reference else ip
            if pos is None:
                refs["a"].append((np.nan, np.nan, None))
                refs["c"].append((np.nan, np.nan, None))
                refs["V"].append((np.nan, np.nan, None))
                continue
            def esd_at(arr: np.ndarray | None) -> float:
                return float(arr[pos, pp]) if arr is not None and np.isfinite(arr[pos, pp]) else 0.0
            # only the phase whose own lattice is the reference has eps = 0 exactly there
            same = pos if pp == p else None
            refs["a"].append((float(a[pos, pp]), esd_at(a_esd), same))
            refs["c"].append((float(c[pos, pp]), esd_at(c_esd), same))
            refs["V"].append((float(vol[pos, pp]), esd_at(vol_esd), same))
        ref_desc = (f"frame {frame_ids[main]} ({'first frame with status ok' if reference == 'first' else 'chosen'}), "
                    + ("each phase's own lattice" if per_phase_reference else f"lattice of phase {phases[ip]!r} for every phase"))

    values = {"a": (a, a_esd), "c": (c, c_esd), "V": (vol, vol_esd)}
    eps: dict[str, np.ndarray] = {}
    eps_esd: dict[str, np.ndarray] = {}
    for k in _STRAINS:
        arr, arr_esd = values[k]
        e = np.full((nf, len(phases)), np.nan)
        s = np.full((nf, len(phases)), np.nan)
        for p in range(len(phases)):
            r, r_esd, pos = refs[k][p]
            if not np.isfinite(r):
                continue
            e[:, p], s[:, p] = relative_strain(arr[:, p], None if arr_esd is None else arr_esd[:, p], r, r_esd,
                                               include_reference_esd=include_reference_esd, reference_index=pos)
        eps[k], eps_esd[k] = e, s

    avg = {k: phase_weighted_mean(eps[k], eps_esd[k], frac, frac_esd) for k in _STRAINS}
    iso = isotropic_eigenstrain(avg["a"][0], avg["c"][0])
    iso_esd = np.sqrt(4 * avg["a"][1] ** 2 + avg["c"][1] ** 2) / 3.0

    # ---- abscissa and curves
    if versus == "frame":
        xv = frame_ids.astype(float)
    elif versus in ds.variables:
        xv = np.asarray(ds[versus].values, dtype=float)
    else:
        raise InsituXRDError(f"{source}: no {versus!r} coordinate; attach the cycler log first (recipe 'echem' "
                             f"section) or choose another --versus ({', '.join(v for v in VERSUS_CHOICES if v == 'frame' or v in ds.variables)})")
    use = ok & np.isfinite(xv) & np.isfinite(avg["a"][0]) & np.isfinite(avg["c"][0])
    if use.sum() < 2:
        raise InsituXRDError(f"{source}: fewer than two frames with status ok, a finite {versus} and finite strain; "
                             "no curve can be built")
    x_lo, x_hi = float(xv[use].min()), float(xv[use].max())
    grid = np.linspace(x_lo, x_hi, int(n_points))
    breaks = phase_change_breaks(xv[use], eps["a"][use], frac[use])
    curves: dict[str, Any] = {}
    at_frame: dict[str, np.ndarray] = {}
    curve_meta: dict[str, dict[str, Any]] = {}
    for k in ("a", "c", "V"):
        y, s = avg[k]
        sc = smooth_curve(xv[use], y[use], s[use], method=method, x_tol=x_tol, breaks=breaks)
        curves[k] = (sc(grid), sc.esd(grid))
        at_frame[k] = np.where(use, sc(np.where(use, xv, np.nan)), np.nan)
        curve_meta[k] = {"method": sc.method, "criterion": sc.criterion, "lam_normalised": sc.lam, "chi2": sc.chi2,
                         "target_chi2": sc.target_chi2, "edf": sc.edf, "n_points": sc.n_points,
                         "max_dev_esd": sc.max_dev_esd, "max_abs_dev_esd": sc.max_abs_z,
                         "phase_change_x": [float(b) for b in breaks], "split_before_x": [float(b) for b in sc.breaks_x],
                         "notes": "; ".join(sc.notes)}
    c_iso = isotropic_eigenstrain(curves["a"][0], curves["c"][0])
    c_iso_esd = np.sqrt(4 * curves["a"][1] ** 2 + curves["c"][1] ** 2) / 3.0
    tensor = eigenstrain_tensor(curves["a"][0], curves["c"][0])

    # ---- Dataset
    out = xr.Dataset(coords={"frame": ("frame", frame_ids), "phase": ("phase", np.array(phases, dtype=str))})
    for name in ("time_s", "frame_name", "voltage_V", "current_mA", "capacity_mAh", "capacity_mAh_g", "x_li", "soc"):
        if name in ds.variables and ds[name].dims == ("frame",):
            out = out.assign_coords({name: ("frame", ds[name].values, dict(ds[name].attrs))})
    long = {"a": "a (basal plane)", "c": "c (stacking axis)", "V": "cell volume"}
    ref_esd_in = bool(include_reference_esd and any(r[1] > 0 for r in refs["a"] + refs["c"]))
    for k in _STRAINS:
        out[f"eps_{k}"] = (("frame", "phase"), eps[k], {"units": "1", "long_name": f"strain of {long[k]} relative to the reference"})
        out[f"eps_{k}_esd"] = (("frame", "phase"), eps_esd[k], {"units": "1"})
        out[f"eps_{k}_avg"] = ("frame", avg[k][0], {"units": "1", "long_name": f"phase-fraction weighted strain of {long[k]}"})
        out[f"eps_{k}_avg_esd"] = ("frame", avg[k][1], {"units": "1"})
    out["eps_iso_avg"] = ("frame", iso, {"units": "1", "long_name": "orientation-averaged eigenstrain (2 eps_a + eps_c)/3"})
    out["eps_iso_avg_esd"] = ("frame", iso_esd, {"units": "1"})
    out["phase_fraction"] = (("frame", "phase"), frac, {"units": "1"})
    out["used_in_curve"] = ("frame", use, {"long_name": "frame used for the curves (status ok, finite abscissa and strain)"})
    if "status" in ds.variables:
        out["status"] = ("frame", np.asarray(ds["status"].values).astype(str))
    if "echem_status" in ds.variables:
        out["echem_status"] = ("frame", np.asarray(ds["echem_status"].values).astype(str))
    out = out.assign_coords(x=("point", grid, {"long_name": versus, "units": _UNITS[versus]}))
    for k in ("a", "c", "V"):
        out[f"curve_eps_{k}"] = ("point", curves[k][0], {"units": "1", "long_name": f"smoothed phase-weighted strain of {long[k]} vs {versus}"})
        out[f"curve_eps_{k}_esd"] = ("point", curves[k][1], {"units": "1"})
        out[f"curve_eps_{k}_at_frame"] = ("frame", at_frame[k], {"units": "1", "long_name": f"smoothed curve of {long[k]} at each frame's {versus} (NaN: frame not in the curve)"})
    out["curve_eps_iso"] = ("point", c_iso, {"units": "1", "long_name": "orientation-averaged (isotropic) eigenstrain (2 eps_a + eps_c)/3"})
    out["curve_eps_iso_esd"] = ("point", c_iso_esd, {"units": "1"})
    out["curve_eigenstrain"] = (("point", "i", "j"), tensor, {"units": "1", "long_name": "crystal-frame eigenstrain diag(eps_a, eps_a, eps_c); i, j = x, y (basal), z (|| c)"})

    ref_table = {f"{k}0_{p}": refs[k][i][0] for k in _STRAINS for i, p in enumerate(phases)}
    ref_table.update({f"{k}0_esd_{p}": refs[k][i][1] for k in _STRAINS for i, p in enumerate(phases)})
    out.attrs.update({
        "title": "lattice strain relative to a reference state",
        "versus": versus,
        "reference": reference,
        "reference_description": ref_desc,
        "reference_frame": int(frame_ids[ref_pos_main]) if ref_pos_main is not None else -1,
        "reference_phase": phases[ip],
        "per_phase_reference": int(per_phase_reference),
        "reference_esd_included": int(ref_esd_in),
        "reference_esd_note": ("the reference's esd is propagated into every strain esd except at the reference frame "
                               "itself (eps = 0 exactly there)" if ref_esd_in else
                               "the reference is taken as exact (its esd is not included)"),
        "reference_lattice_json": json.dumps(ref_table),
        "averaging": "phase-fraction weighted mean over the phases present (finite, positive fraction); fraction esds propagated",
        "curve_method": method,
        "curve_json": json.dumps(curve_meta, default=float),
        "curve_note": ("merged duplicate abscissae (inverse-variance mean); cubic smoothing spline (weights 1/esd^2), "
                       "penalty by UBRE from the esds, split where the set of phases present changes, penalty lowered "
                       "locally until every point is within 2 esd of the curve; then PCHIP through the smoothed nodes; "
                       "esd propagated through the (final, linear) smoother"),
        "eigenstrain_note": "crystal frame: diag(eps_a, eps_a, eps_c); isotropic equivalent (2 eps_a + eps_c)/3 (small strain)",
        "source": source,
        "software_versions": software_versions_json(),
        "created_utc": utc_now_iso(),
    })
    return out


# ---------------------------------------------------------------------------------------------
# writers / readers


def write_strain_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write the strain Dataset (engine h5netcdf)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = ds.copy()
    out["used_in_curve"] = out["used_in_curve"].astype("int8")
    out.to_netcdf(path, engine="h5netcdf")
    return path


def read_strain_netcdf(path: str | Path) -> xr.Dataset:
    """Read a strain NetCDF written by :func:`write_strain_netcdf`."""
    path = Path(path)
    if not path.is_file():
        raise InsituXRDError(f"strain file {path} does not exist")
    ds = xr.load_dataset(path, engine="h5netcdf")
    ds["used_in_curve"] = ds["used_in_curve"].astype(bool)
    return ds


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    return str(v)


def _frame_columns(ds: xr.Dataset) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"frame": np.asarray(ds["frame"].values)}
    for name in ("frame_name", "time_s", "voltage_V", "capacity_mAh_g", "x_li", "soc", "status", "echem_status", "used_in_curve"):
        if name in ds.variables:
            cols[name] = np.asarray(ds[name].values)
    for k in ("a", "c", "V", "iso"):
        cols[f"eps_{k}_avg"] = ds[f"eps_{k}_avg"].values
        cols[f"eps_{k}_avg_esd"] = ds[f"eps_{k}_avg_esd"].values
    for i, p in enumerate(ds["phase"].values):
        for k in ("a", "c", "V"):
            cols[f"eps_{k}_{p}"] = ds[f"eps_{k}"].values[:, i]
            cols[f"eps_{k}_esd_{p}"] = ds[f"eps_{k}_esd"].values[:, i]
        cols[f"phase_fraction_{p}"] = ds["phase_fraction"].values[:, i]
    return cols


def _curve_columns(ds: xr.Dataset) -> dict[str, np.ndarray]:
    cols = {str(ds.attrs.get("versus", "x")): ds["x"].values}
    for k in ("a", "c", "V", "iso"):
        cols[f"eps_{k}"] = ds[f"curve_eps_{k}"].values
        cols[f"eps_{k}_esd"] = ds[f"curve_eps_{k}_esd"].values
    return cols


def _write_csv(cols: dict[str, np.ndarray], path: Path) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(cols)
    n = len(next(iter(cols.values())))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for r in range(n):
            w.writerow([_fmt(cols[c][r]) for c in names])
    return path


def write_strain_frames_csv(ds: xr.Dataset, path: str | Path) -> Path:
    """Per-frame CSV: echem coords, phase-weighted strains and per-phase strains (+ esd)."""
    return _write_csv(_frame_columns(ds), Path(path))


def write_strain_curve_csv(ds: xr.Dataset, path: str | Path) -> Path:
    """Curve CSV on the uniform grid: abscissa, eps_a, eps_c, eps_V, eps_iso (+ esd)."""
    return _write_csv(_curve_columns(ds), Path(path))


def read_csv_table(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CSV written here: numeric columns as float arrays, others as str arrays."""
    import csv

    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise InsituXRDError(f"{path}: empty CSV")
    names, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        col = [r[j] for r in body]
        try:
            out[name] = np.array([float(v) for v in col])
        except ValueError:
            out[name] = np.array(col, dtype=str)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def write_strain_json(ds: xr.Dataset, path: str | Path) -> Path:
    """JSON with the reference, smoothing metadata, per-frame table and curve (NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {k: (json.loads(v) if k.endswith("_json") else v) for k, v in ds.attrs.items()}
    doc = {
        "attrs": _jsonable(attrs),
        "phases": [str(p) for p in ds["phase"].values],
        "frames": {k: _jsonable(np.asarray(v)) for k, v in _frame_columns(ds).items()},
        "curve": {k: _jsonable(np.asarray(v)) for k, v in _curve_columns(ds).items()},
        "curve_eigenstrain": _jsonable(ds["curve_eigenstrain"].values),
    }
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def read_strain_json(path: str | Path) -> dict[str, Any]:
    """Read the JSON written by :func:`write_strain_json`; null -> NaN in numeric arrays."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InsituXRDError(f"{path}: cannot read strain JSON: {exc}") from None

    def arr(v: list) -> np.ndarray:
        if all(isinstance(x, (int, float)) or x is None for x in v):
            return np.array([np.nan if x is None else x for x in v], dtype=float)
        return np.array(v)

    doc["frames"] = {k: arr(v) for k, v in doc["frames"].items()}
    doc["curve"] = {k: arr(v) for k, v in doc["curve"].items()}
    doc["curve_eigenstrain"] = np.array(doc["curve_eigenstrain"], dtype=float)
    return doc


def write_comsol_table(ds: xr.Dataset, path: str | Path) -> Path:
    """COMSOL Interpolation function table (spreadsheet format).

    ``%`` comment lines, then one row per grid point: the argument (x_li, soc, ...) followed by
    the value columns ``COMSOL_COLUMNS`` (function positions 1..10 in COMSOL). Rows where the curve
    is undefined are left out.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    versus = str(ds.attrs.get("versus", "x"))
    x = ds["x"].values
    ea, ec = ds["curve_eps_a"].values, ds["curve_eps_c"].values
    cols = {
        "eps_a": ea, "eps_c": ec, "eps_iso": ds["curve_eps_iso"].values, "eps_V": ds["curve_eps_V"].values,
        "eps_11": ds["curve_eigenstrain"].values[:, 0, 0], "eps_22": ds["curve_eigenstrain"].values[:, 1, 1],
        "eps_33": ds["curve_eigenstrain"].values[:, 2, 2],
        "eps_a_esd": ds["curve_eps_a_esd"].values, "eps_c_esd": ds["curve_eps_c_esd"].values,
        "eps_iso_esd": ds["curve_eps_iso_esd"].values,
    }
    keep = np.isfinite(x) & np.isfinite(ea) & np.isfinite(ec)
    lines = [
        "% insitu-xrd lattice strain for a COMSOL Interpolation function (Data source: File, spreadsheet format)",
        f"% argument (column 1): {versus} [{ds['x'].attrs.get('units', '1')}]; values dimensionless strain",
        f"% reference: {ds.attrs.get('reference_description', '')}",
        "% eps_11 = eps_22 = eps_a (basal plane), eps_33 = eps_c (|| c): crystal-frame eigenstrain; "
        "eps_iso = (2 eps_a + eps_c)/3 orientation average",
        "% function positions in file: " + ", ".join(f"{i + 1}={n}" for i, n in enumerate(cols)),
        "% " + " ".join([versus, *cols]),
    ]
    for r in np.flatnonzero(keep):
        vals = [x[r]] + [cols[n][r] for n in cols]
        lines.append(" ".join(f"{v:.10g}" if np.isfinite(v) else "NaN" for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path


def read_comsol_table(path: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Read a COMSOL spreadsheet table: (column names from the last % line, data (n, k), comments)."""
    path = Path(path)
    comments, rows = [], []
    for ln in path.read_text().splitlines():
        s = ln.strip()
        if not s:
            continue
        if s.startswith("%"):
            comments.append(s)
            continue
        rows.append([float(v) for v in s.split()])
    names = comments[-1].lstrip("% ").split() if comments else []
    data = np.array(rows, dtype=float)
    if names and data.size and len(names) != data.shape[1]:
        raise InsituXRDError(f"{path}: header names {len(names)} columns but rows have {data.shape[1]}")
    return names, data, comments


def write_strain_outputs(ds: xr.Dataset, out_dir: str | Path, stem: str = "strain") -> dict[str, Path]:
    """All exports into ``out_dir``: {stem}.nc, {stem}_frames.csv, {stem}_curve.csv, {stem}.json,
    {stem}_comsol.txt. Returns {kind: path}. (The figure is drawn by insitu_xrd.plots.strain.)"""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InsituXRDError(f"cannot create output folder {out_dir}: {exc}") from None
    return {
        "netcdf": write_strain_netcdf(ds, out_dir / f"{stem}.nc"),
        "frames_csv": write_strain_frames_csv(ds, out_dir / f"{stem}_frames.csv"),
        "curve_csv": write_strain_curve_csv(ds, out_dir / f"{stem}_curve.csv"),
        "json": write_strain_json(ds, out_dir / f"{stem}.json"),
        "comsol": write_comsol_table(ds, out_dir / f"{stem}_comsol.txt"),
    }
