"""Cycler logs: generic CSV/TSV, BioLogic .mpr (binary) and .mpt (text), Neware .nda/.ndax.

Everything becomes a :class:`CyclerLog` in fixed units: time (s), voltage (V), current (mA),
net capacity (mAh since the first sample, positive on charge = Li extracted from the cathode),
sorted by time.

Formats (``format=`` or from the extension with ``"auto"``):

- ``csv`` / ``tsv`` / ``txt``: any delimited text with a header row (the delimiter is sniffed;
  ``#`` lines are comments). Columns are taken from ``columns`` (``{time_s: <name in file>,
  voltage_V: ..., current_mA: ..., capacity_mAh: ...}``) or recognised from common names
  (``time_s``, ``time/s``, ``Total Time``, ``Test_Time(s)``, ``Ewe/V``, ``Voltage(V)``,
  ``I/mA``, ``Current(A)``, ``(Q-Qo)/mA.h``, ``Capacity(mAh)`` ...). Units come from the file's
  column name (``time/h``, ``Time (min)``, ``Capacity(Ah)``, ``current_A``, ``Q/C`` ...) or from the
  optional keys ``time_unit``, ``voltage_unit``, ``current_unit``, ``capacity_unit`` in
  ``columns``; a bare name (``time_s`` mapped to ``Time``) is taken in the key's unit. Time may
  also be ``h:mm:ss(.fff)`` text (Neware "Total Time") or ISO date-times (then ``start_utc`` is set).
- ``mpr``: BioLogic EC-Lab binary, read with the maintained ``galvani`` package
  (``galvani.BioLogic.MPRfile``); capacity from ``(Q-Qo)/mA.h`` (or ``(Q-Qo)/C``), else current
  integrated.
- ``mpt``: BioLogic EC-Lab ASCII export, read with ``galvani.BioLogic.MPTfile`` (decimal commas
  accepted); exports with column headers galvani does not know fall back to this module's
  reader of the documented layout (line 2 ``Nb header lines : N``, tab-separated columns).
- ``nda`` / ``ndax``: Neware binary, read with the ``NewareNDA`` package when it is installed
  (``pip install NewareNDA``). Its capacities restart every step, so the net capacity is
  integrated from the current.

When no capacity column exists the net capacity is the trapezoid integral of the current;
``CyclerLog.capacity_source`` says which was used (it goes into the results' attrs).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from insitu_xrd.core.electrochem import integrate_capacity_mAh
from insitu_xrd.errors import InsituXRDError

__all__ = ["CyclerLog", "read_cycler_log", "ECHEM_FORMATS", "QUANTITIES"]

ECHEM_FORMATS = ("auto", "csv", "tsv", "txt", "mpr", "mpt", "nda", "ndax")
QUANTITIES = ("time_s", "voltage_V", "current_mA", "capacity_mAh")
MAX_CELL_VOLTAGE_V = 50.0  # beyond any cell or small stack; a larger value is a unit mistake (mV)

# Scale factors to the canonical unit of each quantity.
_UNITS: dict[str, dict[str, float]] = {
    "time_s": {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "min": 60.0, "minute": 60.0,
               "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0},
    "voltage_V": {"v": 1.0, "mv": 1e-3},
    "current_mA": {"ma": 1.0, "a": 1e3, "ua": 1e-3, "µa": 1e-3, "na": 1e-6},
    "capacity_mAh": {"mah": 1.0, "ma.h": 1.0, "ah": 1e3, "a.h": 1e3, "uah": 1e-3, "µah": 1e-3, "ua.h": 1e-3,
                     "µa.h": 1e-3, "c": 1.0 / 3.6, "mc": 1e-3 / 3.6, "as": 1.0 / 3.6, "mas": 1e-3 / 3.6},
}
_CANONICAL_UNIT = {"time_s": "s", "voltage_V": "V", "current_mA": "mA", "capacity_mAh": "mAh"}

# Recognised column names (normalised: lower case, no spaces/underscores) in order of preference.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "time_s": ("time_s", "time/s", "time", "totaltime", "testtime", "test_time", "time(s)", "elapsedtime",
               "relativetime", "runtime", "t"),
    "voltage_V": ("voltage_v", "ewe/v", "<ewe>/v", "ecell/v", "voltage", "voltage(v)", "potential", "ewe", "e", "v",
                  "cellvoltage", "u"),
    "current_mA": ("current_ma", "i/ma", "<i>/ma", "current", "current(ma)", "current(a)", "i"),
    "capacity_mAh": ("capacity_mah", "(q-qo)/ma.h", "(q-qo)/c", "q-qo", "capacity", "capacity(mah)", "capacity(ah)",
                     "netcapacity", "q"),
}


@dataclass
class CyclerLog:
    """A cycler log in canonical units, sorted by time with duplicate times removed."""

    time_s: np.ndarray
    voltage_V: np.ndarray
    current_mA: np.ndarray | None
    capacity_mAh: np.ndarray
    source: str
    format: str
    capacity_source: str
    columns_used: dict[str, str] = field(default_factory=dict)
    start_utc: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.time_s.size)

    def attrs(self) -> dict[str, Any]:
        """Provenance for NetCDF attrs (strings and numbers only)."""
        out: dict[str, Any] = {
            "echem_file": self.source,
            "echem_format": self.format,
            "echem_capacity_source": self.capacity_source,
            "echem_columns": ", ".join(f"{k}<-{v}" for k, v in self.columns_used.items()),
            "echem_time_range_s": [float(self.time_s[0]), float(self.time_s[-1])],
            "echem_n_samples": int(self.time_s.size),
        }
        if self.start_utc:
            out["echem_start_utc"] = self.start_utc
        if self.notes:
            out["echem_notes"] = "; ".join(self.notes)
        return out


# ---------------------------------------------------------------------------------------------
# helpers


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "", str(name).strip().lower())


def _unit_of(column_name: str) -> str | None:
    """Unit written in a column name: 'time/h', 'Time (min)', 'Capacity[Ah]', 'current_A', 'Q/mA.h'."""
    name = str(column_name).strip()
    for pat in (r"\(([^()]*)\)\s*$", r"\[([^\[\]]*)\]\s*$", r"/\s*([A-Za-zµ.]+)\s*$", r"[_ ]([A-Za-zµ.]+)\s*$"):
        m = re.search(pat, name)
        if m:
            return m.group(1).strip()
    return None


def _scale(quantity: str, column_name: str, explicit_unit: str | None, source: str) -> tuple[float, str]:
    """Factor converting the column to the canonical unit, and the unit it was read in."""
    table = _UNITS[quantity]
    if explicit_unit is not None:
        key = explicit_unit.strip().lower()
        if key not in table:
            raise InsituXRDError(f"{source}: unknown {quantity.split('_')[0]} unit {explicit_unit!r}; "
                                 f"allowed: {', '.join(sorted(table))}")
        return table[key], explicit_unit
    unit = _unit_of(column_name)
    if unit is not None and unit.lower() in table:
        return table[unit.lower()], unit
    # no recognisable unit in the name: the quantity's canonical unit (time_s -> s, ...)
    return 1.0, _CANONICAL_UNIT[quantity]


def _find_column(names: list[str], quantity: str) -> str | None:
    normed = {_norm(n): n for n in names}
    for cand in _CANDIDATES[quantity]:
        if _norm(cand) in normed:
            return normed[_norm(cand)]
    # 'time/h', 'Capacity(Ah)', 'Voltage [mV]', 'current_A': the base name before a unit of this quantity
    for cand in _CANDIDATES[quantity]:
        c = _norm(re.sub(r"[/(\[].*$", "", cand))
        if not c:
            continue
        for n in names:
            unit = _unit_of(n)
            if unit is None or unit.lower() not in _UNITS[quantity]:
                continue
            base = re.sub(r"\s*(\([^()]*\)|\[[^\[\]]*\]|/\s*[A-Za-zµ.]+|[_ ][A-Za-zµ.]+)\s*$", "", str(n).strip())
            if _norm(base) == c:
                return n
    return None


def _parse_time_column(values: np.ndarray, column: str, source: str) -> tuple[np.ndarray, str | None, str | None]:
    """Numeric seconds from numbers, 'h:mm:ss(.f)' text or ISO date-times.

    Returns (values, start_utc, parsed_as) where parsed_as is None for plain numbers.
    """
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.datetime64):
        t_ns = arr.astype("datetime64[ns]")
        secs = (t_ns - t_ns[0]).astype("timedelta64[ns]").astype(np.int64) * 1e-9
        start = str(t_ns[0].astype("datetime64[us]"))
        return secs, start, "date-time"
    try:
        return np.asarray(values, dtype=float), None, None
    except (TypeError, ValueError):
        pass
    text = [str(v).strip() for v in values]
    hms = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
    out = np.empty(len(text))
    ok = True
    for k, s in enumerate(text):
        m = hms.match(s)
        if not m:
            ok = False
            break
        days = float(m.group(1) or 0)
        out[k] = days * 86400 + float(m.group(2)) * 3600 + float(m.group(3)) * 60 + float(m.group(4))
    if ok:
        return out, None, "h:mm:ss"
    try:
        stamps = [_dt.datetime.fromisoformat(s.replace("/", "-")) for s in text]
    except ValueError:
        bad = next((s for s in text if not _is_float(s) and not hms.match(s)), text[0] if text else "")
        raise InsituXRDError(f"{source}: column {column!r} (time) holds {bad!r}, which is neither a number, "
                             "h:mm:ss nor an ISO date-time") from None
    t0 = stamps[0]
    secs = np.array([(s - t0).total_seconds() for s in stamps])
    start = t0 if t0.tzinfo else t0.replace(tzinfo=_dt.timezone.utc)
    return secs, start.astimezone(_dt.timezone.utc).isoformat(), "ISO date-time"


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _numeric(values: Any, column: str, quantity: str, source: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        arr = np.asarray(values, dtype=object)
        bad = next((v for v in arr if not _is_float(str(v).replace(",", "."))), None)
        # decimal commas (European locale exports)
        try:
            return np.array([float(str(v).replace(",", ".")) for v in arr])
        except ValueError:
            raise InsituXRDError(f"{source}: column {column!r} ({quantity}) holds non-numeric value {bad!r}") from None


def _build_log(
    table: Mapping[str, np.ndarray],
    columns: Mapping[str, str] | None,
    source: str,
    fmt: str,
    integrate_only: bool = False,
    notes: list[str] | None = None,
    start_utc: str | None = None,
) -> CyclerLog:
    """Pick, convert and clean the four quantities from a table of named columns."""
    columns = dict(columns or {})
    names = list(table.keys())
    units_given = {q: columns.pop(q.split("_")[0] + "_unit", None) for q in QUANTITIES}
    unknown = [k for k in columns if k not in QUANTITIES]
    if unknown:
        raise InsituXRDError(f"{source}: unknown column-map key(s) {unknown}; allowed: {', '.join(QUANTITIES)} "
                             "and time_unit, voltage_unit, current_unit, capacity_unit")
    chosen: dict[str, str] = {}
    for q in QUANTITIES:
        if q in columns and columns[q] in ("", None, "none"):
            continue  # explicitly not used (e.g. capacity_mAh: none -> integrate the current)
        if q in columns:
            if columns[q] not in table:
                raise InsituXRDError(f"{source}: column {columns[q]!r} (mapped to {q}) not found; "
                                     f"columns in the file: {', '.join(map(str, names))}")
            chosen[q] = columns[q]
        else:
            found = _find_column(names, q)
            if found is not None:
                chosen[q] = found
    if integrate_only:
        chosen.pop("capacity_mAh", None)
    for q in ("time_s", "voltage_V"):
        if q not in chosen:
            raise InsituXRDError(f"{source}: no {q.split('_')[0]} column found; columns in the file: "
                                 f"{', '.join(map(str, names))}; map one with columns: {{{q}: <name>}}")
    if "capacity_mAh" not in chosen and "current_mA" not in chosen:
        raise InsituXRDError(f"{source}: neither a capacity nor a current column found (one is needed for x_li); "
                             f"columns in the file: {', '.join(map(str, names))}; map one with "
                             "columns: {capacity_mAh: <name>} or {current_mA: <name>}")
    notes = list(notes or [])
    t_raw, start, parsed_as = _parse_time_column(np.asarray(table[chosen["time_s"]]), chosen["time_s"], source)
    start_utc = start_utc or start
    if parsed_as is not None:
        notes.append(f"time column {chosen['time_s']!r} parsed as {parsed_as}")
        t = t_raw
    else:
        f, _ = _scale("time_s", chosen["time_s"], units_given["time_s"], source)
        t = t_raw * f
    data: dict[str, np.ndarray] = {"time_s": t}
    used: dict[str, str] = {}
    for q in ("voltage_V", "current_mA", "capacity_mAh"):
        if q not in chosen:
            continue
        raw = _numeric(table[chosen[q]], chosen[q], q, source)
        f, unit = _scale(q, chosen[q], units_given[q], source)
        data[q] = raw * f
        used[q] = f"{chosen[q]} [{unit}]"
    used = {"time_s": f"{chosen['time_s']} [{parsed_as or _scale('time_s', chosen['time_s'], units_given['time_s'], source)[1]}]", **used}

    # clean: rows with a finite time and voltage; sort; duplicate times keep the last sample
    good = np.isfinite(data["time_s"]) & np.isfinite(data["voltage_V"])
    if "capacity_mAh" in data:
        good &= np.isfinite(data["capacity_mAh"])
    elif "current_mA" in data:
        good &= np.isfinite(data["current_mA"])
    n_bad = int((~good).sum())
    if n_bad:
        notes.append(f"{n_bad} row(s) with missing/NaN values dropped")
    data = {k: v[good] for k, v in data.items()}
    if data["time_s"].size < 2:
        raise InsituXRDError(f"{source}: fewer than two usable rows (time {chosen['time_s']!r}, "
                             f"voltage {chosen['voltage_V']!r})")
    if np.any(np.diff(data["time_s"]) < 0):
        notes.append("rows were not in time order and have been sorted")
    order = np.argsort(data["time_s"], kind="stable")
    data = {k: v[order] for k, v in data.items()}
    t_sorted = data["time_s"]
    keep = np.ones(t_sorted.size, bool)
    keep[:-1] = np.diff(t_sorted) > 0  # of equal times keep the last (cycler writes step ends twice)
    if not keep.all():
        if keep.sum() < max(2, keep.size // 2):  # a constant or coarse column, not the log's clock
            raise InsituXRDError(f"{source}: time column {chosen['time_s']!r} has {int(keep.sum())} distinct values "
                                 f"in {keep.size} rows: not the log's time (map another with columns: {{time_s: <name>}})")
        notes.append(f"{int((~keep).sum())} duplicate time stamp(s) merged (last kept)")
        data = {k: v[keep] for k, v in data.items()}

    if "capacity_mAh" in data:
        capacity = data["capacity_mAh"]
        cap_source = f"column {chosen['capacity_mAh']!r} (net charge, converted to mAh)"
        if "current_mA" in data:
            # a per-step or unsigned capacity (many cycler exports) disagrees with the current
            q_int = capacity[0] + integrate_capacity_mAh(data["time_s"], data["current_mA"])
            worst = float(np.max(np.abs(capacity - q_int)))
            scale = float(max(np.max(np.abs(q_int - capacity[0])), np.max(np.abs(capacity - capacity[0]))))
            if scale > 0 and worst > 0.05 * scale:
                notes.append(f"capacity column {chosen['capacity_mAh']!r} differs from the integrated current by up to "
                             f"{worst:.4g} mAh ({100 * worst / scale:.0f} % of the range): it may restart every step or "
                             "be unsigned; set columns: {capacity_mAh: none} to integrate the current instead")
        if capacity[0] != 0.0:
            # x_start is the Li content at the first log sample: count charge from there
            notes.append(f"capacity column starts at {capacity[0]:.6g} mAh; counted from the first sample")
            capacity = capacity - capacity[0]
    else:
        capacity = integrate_capacity_mAh(data["time_s"], data["current_mA"])
        cap_source = f"integrated current column {chosen['current_mA']!r} over time (trapezoid rule)"
    v_max = float(np.max(np.abs(data["voltage_V"])))
    if v_max > MAX_CELL_VOLTAGE_V:
        raise InsituXRDError(f"{source}: voltage column {chosen['voltage_V']!r} reaches {v_max:.4g} V, not a cell "
                             f"voltage (beyond {MAX_CELL_VOLTAGE_V:g} V): mV read as V? set columns: {{voltage_unit: mV}}")
    if not (np.all(np.isfinite(capacity)) and np.all(np.isfinite(data["time_s"]))):
        raise InsituXRDError(f"{source}: times or capacities overflow (values beyond floating point); check the "
                             "time and current/capacity columns and their units")
    return CyclerLog(
        time_s=data["time_s"],
        voltage_V=data["voltage_V"],
        current_mA=data.get("current_mA"),
        capacity_mAh=capacity,
        source=source,
        format=fmt,
        capacity_source=cap_source,
        columns_used=used,
        start_utc=start_utc,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# format readers


def _read_delimited(path: Path, sep: str | None) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=sep, engine="python", comment="#", skipinitialspace=True)
    except Exception as exc:
        raise InsituXRDError(f"{path}: cannot read as delimited text: {exc}") from None
    if df.shape[1] < 2:
        raise InsituXRDError(f"{path}: found {df.shape[1]} column(s) ({', '.join(map(str, df.columns))}); "
                             "expected a header row and delimited columns (comma, tab, semicolon)")
    return {str(c).strip(): df[c].to_numpy() for c in df.columns}


def _mpt_header_count(path: Path) -> int:
    with open(path, "rb") as fh:
        first = fh.readline().strip()
        if first not in (b"EC-Lab ASCII FILE", b"BT-Lab ASCII FILE"):
            raise InsituXRDError(f"{path}: not an EC-Lab/BT-Lab ASCII export (first line {first[:40]!r})")
        m = re.match(rb"Nb header lines\s*:\s*(\d+)", fh.readline().strip())
        if not m:
            raise InsituXRDError(f"{path}: second line must be 'Nb header lines : N' (EC-Lab ASCII export)")
        return int(m.group(1))


def _read_mpt(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """EC-Lab ASCII: galvani first; a header galvani does not know -> own reader of the same layout."""
    n_header = _mpt_header_count(path)
    try:
        from galvani.BioLogic import MPTfile

        with open(path, "rb") as fh:
            arr, _comments = MPTfile(fh, encoding="latin-1")
        return {name: np.asarray(arr[name]) for name in arr.dtype.names}, ["read with galvani.BioLogic.MPTfile"]
    except Exception as exc:  # unknown column header, odd line endings: the documented layout below
        note = f"galvani could not read it ({exc}); read with insitu_xrd's EC-Lab ASCII reader"
    lines = path.read_text(encoding="latin-1").splitlines()
    if len(lines) < n_header:
        raise InsituXRDError(f"{path}: shorter than its {n_header} header lines")
    names = [h.strip() for h in lines[n_header - 1].split("\t")]
    names = [n for n in names if n] if names and not names[-1] else names
    rows = [ln.rstrip("\t").split("\t") for ln in lines[n_header:] if ln.strip()]
    if not rows:
        raise InsituXRDError(f"{path}: no data rows after the header")
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        vals = [r[j] if j < len(r) else "nan" for r in rows]
        try:
            cols[name] = np.array([float(v.replace(",", ".")) for v in vals])
        except ValueError:
            cols[name] = np.array(vals, dtype=object)
    return cols, [note]


def _read_mpr(path: Path) -> tuple[dict[str, np.ndarray], list[str], str | None]:
    try:
        from galvani.BioLogic import MPRfile
    except ImportError:
        raise InsituXRDError(f"{path}: reading BioLogic .mpr needs the 'galvani' package (pip install galvani)") from None
    try:
        with open(path, "rb") as fh:
            mpr = MPRfile(fh)
    except Exception as exc:
        raise InsituXRDError(f"{path}: galvani cannot read this .mpr file: {exc}") from None
    data = mpr.data
    cols = {name: np.asarray(data[name]) for name in data.dtype.names if name != "flags"}
    for flag in getattr(mpr, "flags_dict", {}):
        cols[flag] = mpr.get_flag(flag)
    start = None
    ts = getattr(mpr, "timestamp", None)
    if ts is not None:
        # EC-Lab writes local wall-clock time; the time zone is not stored
        start = ts.isoformat()
    notes = ["read with galvani.BioLogic.MPRfile"]
    if start:
        notes.append("start time from the .mpr LOG module is local time of the cycler PC (no time zone)")
    return cols, notes, start


def _read_neware(path: Path) -> dict[str, np.ndarray]:
    try:
        import NewareNDA  # type: ignore[import-not-found]
    except ImportError:
        raise InsituXRDError(f"{path}: reading Neware .nda/.ndax needs the 'NewareNDA' package "
                             "(pip install NewareNDA), or export the log to CSV from BTSDA") from None
    try:
        df = NewareNDA.read(str(path))
    except Exception as exc:
        raise InsituXRDError(f"{path}: NewareNDA cannot read this file: {exc}") from None
    if hasattr(df, "to_pandas"):  # polars
        df = df.to_pandas()
    return {str(c): np.asarray(df[c]) for c in df.columns}


def _detect_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext in ("csv", "tsv", "txt", "dat", "mpr", "mpt", "nda", "ndax"):
        if ext in ("txt", "dat"):
            with open(path, "rb") as fh:
                head = fh.read(32)
            return "mpt" if head.startswith((b"EC-Lab ASCII FILE", b"BT-Lab ASCII FILE")) else "csv"
        return ext
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"BIO-LOGIC MODULAR FILE"):
        return "mpr"
    if head.startswith((b"EC-Lab ASCII FILE", b"BT-Lab ASCII FILE")):
        return "mpt"
    if head.startswith(b"NEWARE"):
        return "nda"
    if head.startswith(b"PK"):
        return "ndax"
    return "csv"


def read_cycler_log(path: str | Path, format: str = "auto", columns: Mapping[str, str] | None = None) -> CyclerLog:
    """Read a cycler log into canonical units (s, V, mA, net mAh).

    ``format``: one of ``ECHEM_FORMATS`` (``auto``: from the extension, then the file's first
    bytes). ``columns``: optional map {time_s, voltage_V, current_mA, capacity_mAh} -> column
    names in the file, plus optional ``time_unit``/``voltage_unit``/``current_unit``/
    ``capacity_unit``. Raises InsituXRDError naming the file and column for bad input.
    """
    path = Path(path)
    if not path.is_file():
        raise InsituXRDError(f"cycler log {path} does not exist")
    fmt = format.lower().lstrip(".")
    if fmt not in ECHEM_FORMATS:
        raise InsituXRDError(f"cycler log {path}: unknown format {format!r}; allowed: {', '.join(ECHEM_FORMATS)}")
    if fmt == "auto":
        fmt = _detect_format(path)
    source = str(path)
    if fmt in ("csv", "txt"):
        return _build_log(_read_delimited(path, None), columns, source, fmt)
    if fmt == "tsv":
        return _build_log(_read_delimited(path, "\t"), columns, source, fmt)
    if fmt == "mpt":
        table, notes = _read_mpt(path)
        return _build_log(table, columns, source, fmt, notes=notes)
    if fmt == "mpr":
        table, notes, start = _read_mpr(path)
        return _build_log(table, columns, source, fmt, notes=notes, start_utc=start)
    # Neware: per-step capacities restart at every step, so the net charge comes from the current
    table = _read_neware(path)
    cols = dict(columns or {})
    # NewareNDA's 'Time' restarts every step; 'Timestamp' is the absolute wall-clock time
    for q, name in (("time_s", "Timestamp"), ("voltage_V", "Voltage"), ("current_mA", "Current(mA)")):
        if q not in cols and name in table:
            cols[q] = name
    return _build_log(table, cols, source, fmt, integrate_only="capacity_mAh" not in (columns or {}),
                      notes=["read with NewareNDA; per-step capacities ignored, net capacity integrated from current"])
