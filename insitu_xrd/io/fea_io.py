"""Inputs and outputs of the FEA stage: measured strain curves in, the FEA result file out.

Strain inputs (:func:`read_strain_curve`, :func:`load_strain_table`) — all give the lattice
strains ``eps_a(x)``, ``eps_c(x)`` (dimensionless fractions) against the Li content ``x_li``
(Li per formula unit):

* the strain stage's ``strain.nc`` (:func:`insitu_xrd.io.strain_export.write_strain_netcdf`):
  the smoothed curves ``curve_eps_a``, ``curve_eps_c`` on its ``point`` grid, whose abscissa
  ``x`` is named by the attr ``versus``. ``versus = x_li`` is used as it is; any other abscissa
  (``soc``, ``capacity_mAh_g``, ``time_s``, ``voltage_V``, ``frame``) is mapped to ``x_li``
  through the file's own per-frame pairs (abscissa, ``x_li``) of the frames used for the curve,
  which must be strictly monotone; without per-frame ``x_li`` a ``soc`` grid falls back to the
  SoC rule below. A folder is read as ``<folder>/strain.nc``.
* the strain stage's ``strain_curve.csv`` and **any CSV** (``,``, ``;``, tab or blank separated;
  ``#`` comment lines) with a column ``x_li`` — or ``soc`` — and columns ``eps_a``, ``eps_c``
  (names case-insensitive; other columns are ignored). The strain stage's ``strain.json`` is read
  as well (its ``curve`` block).

SoC rule: with no ``x_li`` column, ``x_li = x_start - soc * soc_to_x``. The defaults
``x_start = 1`` and ``soc_to_x = 1`` are the echem convention of this project
(:mod:`insitu_xrd.core.electrochem`: ``x = x_start - Q/Q_theo`` and ``soc = Q/Q_ref`` with
``Q_ref = Q_theo`` unless the recipe gives another reference, so ``soc_to_x = Q_ref/Q_theo``).

Checks (each failure is one :class:`~insitu_xrd.errors.InsituXRDError` line naming the file and
the problem): the file exists and is readable, is not empty, has the columns, every value is a
number, at least two rows with finite values remain (rows with a NaN in x, eps_a or eps_c are
dropped), x is strictly monotone (increasing or decreasing), x_li lies in [0, 2], and the
strains are fractions: any |eps| >= 0.10 (10 %, beyond any lattice strain of an intercalation
cathode; NMC811 reaches ~2-3 %) or a column named in % (``eps_c_pct``, ``eps_c (%)``) is taken
as strain given in percent and refused (divide by 100).

FEA result file: :func:`write_fea_result` writes the Dataset of
:func:`insitu_xrd.core.fea.run_fea` atomically (``<file>.partial`` + ``os.replace``, through
:func:`insitu_xrd.io.store.write_dataset_atomic`) with provenance attrs;
:func:`read_fea_result` reads it back and checks it is an FEA result.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.store import load_netcdf, write_dataset_atomic
from insitu_xrd.provenance import software_versions_json, utc_now_iso

__all__ = [
    "StrainTable",
    "PERCENT_THRESHOLD",
    "X_LI_RANGE",
    "load_strain_table",
    "read_strain_curve",
    "curve_from_table",
    "soc_to_x_li",
    "write_fea_result",
    "read_fea_result",
    "fea_params_json",
]

#: |eps| at or above this (10 %) is taken as strain given in percent
PERCENT_THRESHOLD = 0.10
#: allowed Li content per formula unit
X_LI_RANGE = (0.0, 2.0)
#: variables every FEA result file has (checked by :func:`read_fea_result`)
_FEA_REQUIRED = ("damage_mean", "cracked_fraction", "node_x_um", "node_y_um", "cell_nodes", "damage")


@dataclass(frozen=True)
class StrainTable:
    """Strain curve read from a file, before it becomes a :class:`insitu_xrd.core.fea.StrainCurve`.

    x_li: Li content per formula unit (strictly monotone, in file order).
    eps_a, eps_c: lattice strain of a (basal plane) and c (stacking axis), fractions.
    source: the file read. abscissa: the abscissa in the file (``x_li``, ``soc``, ...).
    note: how x_li was obtained (e.g. the SoC rule used).
    """

    x_li: np.ndarray
    eps_a: np.ndarray
    eps_c: np.ndarray
    source: str
    abscissa: str
    note: str = ""

    def __len__(self) -> int:
        return int(self.x_li.size)


def soc_to_x_li(soc: np.ndarray, x_start: float = 1.0, soc_to_x: float = 1.0) -> np.ndarray:
    """Li content from state of charge: ``x_li = x_start - soc * soc_to_x`` (module docstring)."""
    return float(x_start) - np.asarray(soc, dtype=float) * float(soc_to_x)


# ---------------------------------------------------------------------------------------------
# checks shared by every reader


def _check_table(path: Path, abscissa: str, x_li: np.ndarray, eps_a: np.ndarray, eps_c: np.ndarray,
                 note: str, rows: np.ndarray | None = None) -> StrainTable:
    """Drop NaN rows, then check count, monotony, x range and fraction units; one line per failure."""
    x_li, eps_a, eps_c = (np.asarray(v, dtype=float).ravel() for v in (x_li, eps_a, eps_c))
    is_curve = rows is None  # a curve grid (strain.nc / strain.json), not lines of a CSV
    rows = np.arange(1, x_li.size + 1) if rows is None else np.asarray(rows)
    keep = np.isfinite(x_li) & np.isfinite(eps_a) & np.isfinite(eps_c)
    x_li, eps_a, eps_c, rows = x_li[keep], eps_a[keep], eps_c[keep], rows[keep]
    if x_li.size < 2:
        raise InsituXRDError(f"strain file {path}: fewer than two rows with finite {abscissa}, eps_a and eps_c "
                             f"({x_li.size} found); a strain curve needs at least two points")
    for name, e in (("eps_a", eps_a), ("eps_c", eps_c)):
        big = np.abs(e) >= PERCENT_THRESHOLD
        if big.any():
            raise InsituXRDError(
                f"strain file {path}: column {name} reaches {e[big][np.argmax(np.abs(e[big]))]:+.4g}, which looks like "
                f"strain in percent; give fractions (e.g. 0.02 for 2 %): divide the column by 100")
    d = np.diff(x_li)
    if not (np.all(d > 0) or np.all(d < 0)):
        nz = d[d != 0]
        direction = float(np.sign(nz[0])) if nz.size else 1.0  # the direction of the first step
        bad = int(np.flatnonzero(direction * d <= 0)[0])
        what = "repeats" if d[bad] == 0 else "turns back"
        where = f"curve point {int(rows[bad + 1])}" if is_curve else f"line {int(rows[bad + 1])}"
        raise InsituXRDError(
            f"strain file {path}: {abscissa} is not strictly monotone: it {what} at {where} "
            f"({x_li[bad]:.6g} -> {x_li[bad + 1]:.6g}); give one branch (charge or discharge) sorted by x")
    lo, hi = X_LI_RANGE
    if x_li.min() < lo or x_li.max() > hi:
        raise InsituXRDError(f"strain file {path}: x_li spans {x_li.min():.4g} .. {x_li.max():.4g}, outside "
                             f"[{lo:g}, {hi:g}] Li per formula unit" + (f" ({note})" if note else ""))
    return StrainTable(x_li, eps_a, eps_c, str(path), abscissa, note)


# ---------------------------------------------------------------------------------------------
# CSV


_PCT = re.compile(r"(%|pct|percent)", re.IGNORECASE)


def _norm(name: str) -> str:
    """Column name for matching: lower case, no blanks/BOM, unit suffix ``[..]``/``(..)`` kept out."""
    s = name.strip().lstrip("\ufeff").strip().strip('"').strip()
    return s.lower()


def _base(name: str) -> str:
    """``eps_c (%)`` -> ``eps_c``; ``eps_c [1]`` -> ``eps_c``."""
    return re.split(r"[\s(\[]", _norm(name), maxsplit=1)[0]


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and their 1-based line numbers of a delimited text file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InsituXRDError(f"strain file {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InsituXRDError(f"strain file {path}: not a text (CSV) file") from None
    if "\x00" in text:
        raise InsituXRDError(f"strain file {path}: not a text (CSV) file (binary content)")
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith(("#", "%"))]
    if not lines:
        raise InsituXRDError(f"strain file {path}: empty (no header and no data rows)")
    head = lines[0][1]
    if "," in head:
        delim: str | None = ","
    elif ";" in head:
        delim = ";"
    elif "\t" in head:
        delim = "\t"
    else:
        delim = None  # blank separated
    if delim is None:
        split = [ln.split() for _, ln in lines]
    else:
        split = list(csv.reader(io.StringIO("\n".join(ln for _, ln in lines)), delimiter=delim))
    return split[0], split[1:], [n for n, _ in lines[1:]]


def _csv_table(path: Path, x_start: float, soc_to_x: float) -> StrainTable:
    header, body, line_no = _read_csv_rows(path)
    names = [_norm(h) for h in header]
    bases = [_base(h) for h in header]
    for h, b in zip(header, bases):
        if re.match(r"eps_[ac]", b) and not b.endswith("_esd") and _PCT.search(_norm(h)[5:]):
            raise InsituXRDError(f"strain file {path}: column {h.strip()!r} is strain in percent; give fractions "
                                 f"in a column {b[:5]!r} (percent / 100)")

    def find(*wanted: str) -> int | None:
        for w in wanted:
            for j, b in enumerate(bases):
                if b == w:
                    return j
        return None

    jx = find("x_li")
    abscissa = "x_li"
    if jx is None:
        jx = find("soc")
        abscissa = "soc"
    ja, jc = find("eps_a"), find("eps_c")
    missing = [n for n, j in (("x_li (or soc)", jx), ("eps_a", ja), ("eps_c", jc)) if j is None]
    if missing:
        shown = ", ".join(h.strip() for h in header) or "none"
        raise InsituXRDError(f"strain file {path}: missing column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}; columns found: {shown}")
    if not body:
        raise InsituXRDError(f"strain file {path}: header only, no data rows")
    cols = {"x": jx, "eps_a": ja, "eps_c": jc}
    vals = {k: np.empty(len(body)) for k in cols}
    for i, row in enumerate(body):
        for k, j in cols.items():
            name = names[j] if k != "x" else abscissa
            if j >= len(row):
                raise InsituXRDError(f"strain file {path}: line {line_no[i]} has {len(row)} fields, "
                                     f"no value for column {name}")
            cell = row[j].strip()
            try:
                vals[k][i] = float(cell) if cell.lower() not in ("", "nan", "null", "none", "na") else np.nan
            except ValueError:
                if cell.endswith("%"):
                    raise InsituXRDError(f"strain file {path}: line {line_no[i]}, column {name}: {cell!r} is in "
                                         "percent; give fractions (percent / 100)") from None
                raise InsituXRDError(f"strain file {path}: line {line_no[i]}, column {name}: {cell!r} is not a "
                                     "number") from None
    x = vals["x"]
    note = ""
    if abscissa == "soc":
        note = f"x_li = {x_start:g} - soc * {soc_to_x:g} (no x_li column)"
        x = soc_to_x_li(x, x_start, soc_to_x)
    return _check_table(path, abscissa, x, vals["eps_a"], vals["eps_c"], note, rows=np.array(line_no))


# ---------------------------------------------------------------------------------------------
# strain.nc and strain.json


def _map_to_x_li(path: Path, versus: str, grid: np.ndarray, frames_v: np.ndarray | None,
                 frames_x: np.ndarray | None, x_start: float, soc_to_x: float) -> tuple[np.ndarray, str]:
    """x_li on a curve grid whose abscissa is ``versus`` (see the module docstring)."""
    if versus == "x_li":
        return grid, ""
    if frames_v is not None and frames_x is not None:
        ok = np.isfinite(frames_v) & np.isfinite(frames_x)
        v, x = frames_v[ok], frames_x[ok]
        if v.size >= 2:
            order = np.argsort(v, kind="stable")
            v, x = v[order], x[order]
            dv, dx = np.diff(v), np.diff(x)
            if np.all(dv > 0) and (np.all(dx > 0) or np.all(dx < 0)):
                return np.interp(grid, v, x), f"x_li mapped from {versus} through the file's per-frame (" \
                                              f"{versus}, x_li) pairs"
            if versus != "soc":
                raise InsituXRDError(f"strain file {path}: the curves are against {versus!r} and x_li is not a "
                                     f"monotone function of it over the frames; run `insitu-xrd strain --versus x_li`")
    if versus == "soc":
        return soc_to_x_li(grid, x_start, soc_to_x), f"x_li = {x_start:g} - soc * {soc_to_x:g}"
    raise InsituXRDError(f"strain file {path}: the curves are against {versus!r} and the file has no per-frame x_li to "
                         "map it to the Li content; run `insitu-xrd strain --versus x_li` (needs the cycler log)")


def _netcdf_table(path: Path, x_start: float, soc_to_x: float) -> StrainTable:
    ds = load_netcdf(path, "strain file")
    missing = [v for v in ("curve_eps_a", "curve_eps_c", "x") if v not in ds.variables]
    if missing:
        hint = " (it looks like a results file: run `insitu-xrd strain` on it first)" if "a" in ds and "frame" in ds.dims else ""
        raise InsituXRDError(f"strain file {path}: not a strain file of `insitu-xrd strain`: no "
                             f"{', '.join(missing)}{hint}")
    versus = str(ds.attrs.get("versus", "x_li"))
    grid = np.asarray(ds["x"].values, dtype=float)
    fv = fx = None
    if "x_li" in ds.variables and "frame" in ds.dims:
        use = np.asarray(ds["used_in_curve"].values, dtype=bool) if "used_in_curve" in ds else np.ones(ds.sizes["frame"], bool)
        fx = np.asarray(ds["x_li"].values, dtype=float)[use]
        if versus == "frame":
            fv = np.asarray(ds["frame"].values, dtype=float)[use]
        elif versus in ds.variables and ds[versus].dims == ("frame",):
            fv = np.asarray(ds[versus].values, dtype=float)[use]
    x, note = _map_to_x_li(path, versus, grid, fv, fx, x_start, soc_to_x)
    return _check_table(path, versus, x, ds["curve_eps_a"].values, ds["curve_eps_c"].values, note)


def _json_table(path: Path, x_start: float, soc_to_x: float) -> StrainTable:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InsituXRDError(f"strain file {path}: cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InsituXRDError(f"strain file {path}: not valid JSON ({exc})") from None
    curve = doc.get("curve") if isinstance(doc, dict) else None
    if not isinstance(curve, dict):
        raise InsituXRDError(f"strain file {path}: no 'curve' block (not a strain.json of `insitu-xrd strain`)")
    versus = str((doc.get("attrs") or {}).get("versus", "x_li"))
    need = [k for k in (versus, "eps_a", "eps_c") if k not in curve]
    if need:
        raise InsituXRDError(f"strain file {path}: curve block lacks {', '.join(need)}")

    def arr(v: Any) -> np.ndarray:
        return np.array([np.nan if e is None else e for e in v], dtype=float)

    frames = doc.get("frames") or {}
    fv = fx = None
    if "x_li" in frames and (versus in frames or versus == "frame"):
        use = arr(frames.get("used_in_curve", [1] * len(frames["x_li"]))) > 0
        fx = arr(frames["x_li"])[use]
        fv = arr(frames["frame" if versus == "frame" else versus])[use]
    x, note = _map_to_x_li(path, versus, arr(curve[versus]), fv, fx, x_start, soc_to_x)
    return _check_table(path, versus, x, arr(curve["eps_a"]), arr(curve["eps_c"]), note)


# ---------------------------------------------------------------------------------------------
# public readers


def load_strain_table(path: str | Path, x_start: float = 1.0, soc_to_x: float = 1.0) -> StrainTable:
    """Strain curve eps_a(x_li), eps_c(x_li) (fractions) from a strain.nc, strain.json or any CSV.

    path: ``strain.nc`` (or the folder holding it), ``strain.json``, ``strain_curve.csv`` or a
        CSV with columns ``x_li`` (or ``soc``), ``eps_a``, ``eps_c``.
    x_start, soc_to_x: the SoC rule ``x_li = x_start - soc * soc_to_x`` for a SoC abscissa.

    Raises:
        InsituXRDError: one line naming the file and the problem (module docstring).
    """
    path = Path(path)
    if path.is_dir():
        cand = path / "strain.nc"
        if not cand.is_file():
            raise InsituXRDError(f"strain input {path} is a folder without strain.nc; give strain.nc, "
                                 "strain_curve.csv or a CSV with x_li, eps_a, eps_c")
        path = cand
    if not path.exists():
        raise InsituXRDError(f"strain file {path} does not exist")
    if not path.is_file():
        raise InsituXRDError(f"strain file {path} is not a regular file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InsituXRDError(f"strain file {path}: cannot be read ({exc.strerror or exc})") from None
    if not magic:
        raise InsituXRDError(f"strain file {path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in (".nc", ".h5", ".nc4", ".hdf5") or magic.startswith(b"\x89HDF") or magic.startswith(b"CDF"):
        return _netcdf_table(path, x_start, soc_to_x)
    if suffix == ".json":
        return _json_table(path, x_start, soc_to_x)
    return _csv_table(path, x_start, soc_to_x)


def read_strain_curve(path: str | Path, x_start: float = 1.0, soc_to_x: float = 1.0) -> Any:
    """The :class:`insitu_xrd.core.fea.StrainCurve` of a strain file (see :func:`load_strain_table`).

    Raises:
        InsituXRDError: one line naming the file and the problem; a curve the model refuses
        (its own checks) is reported with the file name too.
    """
    return curve_from_table(load_strain_table(path, x_start=x_start, soc_to_x=soc_to_x))


def curve_from_table(tab: StrainTable) -> Any:
    """The :class:`insitu_xrd.core.fea.StrainCurve` of a table read by :func:`load_strain_table`.

    Raises:
        InsituXRDError: the model refuses the curve (its message, prefixed with the file name).
    """
    from insitu_xrd.core.fea import StrainCurve

    try:
        return StrainCurve(x_li=tab.x_li, eps_a=tab.eps_a, eps_c=tab.eps_c)
    except InsituXRDError as exc:
        raise InsituXRDError(f"strain file {tab.source}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# FEA result file


def fea_params_json(ds: xr.Dataset) -> dict[str, Any]:
    """The model parameters recorded in an FEA result (attr ``params_json``, JSON) as a nested dict
    (``{}`` when the attr is absent or not JSON)."""
    raw = ds.attrs.get("params_json", ds.attrs.get("params"))
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {}


def _attr_value(v: Any) -> Any:
    """A NetCDF-storable attr: dicts/lists/tuples -> JSON, bools -> int, None -> ''."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if v is None:
        return ""
    return v


def write_fea_result(ds: xr.Dataset, path: str | Path, source: str | None = None,
                     extra_attrs: dict[str, Any] | None = None) -> Path:
    """Write an FEA result Dataset to NetCDF atomically (``<path>.partial`` + ``os.replace``).

    ds: the Dataset of :func:`insitu_xrd.core.fea.run_fea`.
    source: the strain file the run was driven by (attr ``strain_source``).
    extra_attrs: more attrs (e.g. ``recipe``, ``label``); dicts are stored as JSON.
    Adds ``software_versions`` and ``created_utc``. Returns the path.

    Raises:
        InsituXRDError: the file cannot be written (names it).
    """
    out = ds.copy()
    attrs = dict(out.attrs)
    if source is not None:
        attrs["strain_source"] = str(source)
    attrs.update(extra_attrs or {})
    attrs.setdefault("software_versions", software_versions_json())
    attrs["created_utc"] = utc_now_iso()
    out.attrs = {str(k): _attr_value(v) for k, v in attrs.items()}
    for name in list(out.variables):
        var = out[name]
        var.attrs = {str(k): _attr_value(v) for k, v in var.attrs.items()}
        if var.dtype == bool:
            out[name] = var.astype("int8")
            out[name].attrs["dtype_note"] = "boolean stored as int8"
    return write_dataset_atomic(out, path)


def read_fea_result(path: str | Path) -> xr.Dataset:
    """Read an FEA result written by :func:`write_fea_result` (loaded into memory).

    Raises:
        InsituXRDError: missing, unreadable, or not an FEA result (one line naming the file).
    """
    path = Path(path)
    ds = load_netcdf(path, "FEA result")
    missing = [v for v in _FEA_REQUIRED if v not in ds.variables]
    if missing:
        raise InsituXRDError(f"FEA result {path}: not a result of `insitu-xrd fea` (no {', '.join(missing)})")
    for name in list(ds.variables):
        if ds[name].attrs.get("dtype_note") == "boolean stored as int8":
            attrs = {k: v for k, v in ds[name].attrs.items() if k != "dtype_note"}
            ds[name] = ds[name].astype(bool)
            ds[name].attrs = attrs
    return ds
