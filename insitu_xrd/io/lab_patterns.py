"""Laboratory diffractometer 1D files: PowBase/Rietveld ``.dat``, Bruker ``.uxd``, PANalytical
``.xrdml``, Rigaku ``.ras``, GSAS ``.gsa``/``.fxye``, Bruker binary ``.raw`` v3 and v4.

Each parser returns a :class:`RawColumns` (the file's own axis and unit, counts, the esd column if
the file has one, the wavelength if it states one); :func:`insitu_xrd.io.pattern_files.read_pattern_1d`
converts and checks it (axis monotonic and in range, counts finite and not constant, enough
points). Parsers raise :class:`~insitu_xrd.errors.InsituXRDError` naming the file and what is
wrong; they never guess a layout the file does not state.

No maintained Python reader covers these formats (looked for: ``xylib-py`` / ``xylib-py-wheels``
ship only a C++ source build needing Boost, last released 2022; ``fairmat-readers-xrd`` reads
``.xrdml`` through xmltodict + pint and Bruker RAW v4 at fixed byte offsets learned from example
files; ``xrdtools`` (xrdml only) is unmaintained), and the text formats are short and documented,
so they are parsed here with the standard library. Bruker ``.raw``: v3 (``RAW1.01``) is read by
the layout Bruker published (DIFFRAC^plus XCH manual, Appendix A), v4 (``RAW4.00``) by the one
xylib documents (see the layout notes above ``_bruker_raw``), each field checked (header
lengths, counts within the file, coupled scans only, step > 0); other versions are refused
naming the version found, with the advice to export ``.uxd`` or ``.xy``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from insitu_xrd.errors import InsituXRDError

__all__ = ["RawColumns", "read_lab_pattern", "lab_format_of", "powbase_columns", "LAB_FORMATS"]

# suffix -> format name understood by read_lab_pattern
LAB_FORMATS = {".xrdml": "xrdml", ".ras": "ras", ".uxd": "uxd", ".gsa": "gsas", ".gsas": "gsas", ".gss": "gsas",
               ".fxye": "gsas", ".raw": "raw"}
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass
class RawColumns:
    """What a file holds, before conversion: x in ``x_unit`` ("2th_deg", "q_A^-1", "q_nm^-1"),
    intensity, the file's esd column (None if it has none), the wavelength it states (A) and
    everything else learned (``format``, header fields)."""

    x: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    x_unit: str = "2th_deg"
    wavelength_A: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def lab_format_of(path: Path, text_head: str) -> str | None:
    """The lab format of ``path`` from its suffix, else from its first bytes (None: a plain
    column file)."""
    fmt = LAB_FORMATS.get(path.suffix.lower())
    if fmt:
        return fmt
    head = text_head.lstrip("\ufeff \t\r\n")
    if head.startswith("<?xml") and "xrdMeasurement" in text_head:
        return "xrdml"
    if head.startswith("*RAS_"):
        return "ras"
    if text_head.startswith(("RAW1.01", "RAW4.00")):
        return "raw"
    if re.search(r"^\s*_(2THETA|STEPSIZE|STEPTIME|START|COUNTS|2THETACOUNTS)\b", text_head, re.M):
        return "uxd"
    if re.search(r"^BANK\s+\d+", text_head, re.M):
        return "gsas"
    return None


def read_lab_pattern(path: Path, fmt: str, data: bytes) -> RawColumns:
    """Parse ``data`` (the bytes of ``path``) as lab format ``fmt``."""
    if fmt == "raw":
        return _bruker_raw(path, data)
    text = data.decode("utf-8", errors="replace")
    if "\x00" in text[:4096]:
        raise InsituXRDError(f"pattern file {path}: is binary, not a {fmt} text file")
    parser = {"xrdml": _xrdml, "ras": _ras, "uxd": _uxd, "gsas": _gsas}[fmt]
    out = parser(path, text)
    out.metadata["format"] = fmt
    return out


# --------------------------------------------------------------------------------------------
def powbase_columns(path: Path, rows: list[list[float]]) -> RawColumns | None:
    """PowBase / Rietveld ``.dat`` (``start step stop`` on the first data line, then the counts,
    any number per line) if ``rows`` has that layout, else None.

    The layout is taken only when the first line is three numbers with ``0 <= start < stop <= 180``,
    ``step > 0`` and the number of counts that follow is the ``(stop - start) / step + 1`` points
    they promise (to within one, for rounding of ``stop``); a file whose counts happen to fill
    whole lines of two is therefore not read as x = counts. A first line that looks like the
    layout but whose count of values disagrees is refused, saying both numbers."""
    if len(rows) < 2 or len(rows[0]) != 3:
        return None
    start, step, stop = rows[0]
    if not (0.0 <= start < stop <= 180.0 and step > 0 and math.isfinite(step)):
        return None
    expect = (stop - start) / step + 1.0
    counts = [v for r in rows[1:] for v in r]
    widths = {len(r) for r in rows[1:]}
    if abs(len(counts) - expect) <= 1.0 + 1e-6 * expect:
        x = start + step * np.arange(len(counts))
        return RawColumns(x, np.asarray(counts, dtype=float), None, "2th_deg",
                          metadata={"format": "powbase_dat", "start_deg": start, "step_deg": step, "stop_deg": stop})
    if widths != {3} and expect >= 10 and abs(round(expect) - expect) < 1e-3:
        # not three columns below a start-step-stop line: the file means that layout but is short/long
        raise InsituXRDError(
            f"pattern file {path}: first line '{start:g} {step:g} {stop:g}' reads as PowBase start/step/stop "
            f"({round(expect)} points) but {len(counts)} counts follow (truncated or not that layout)")
    return None


# --------------------------------------------------------------------------------------------
def _uxd(path: Path, text: str) -> RawColumns:
    """Bruker/Siemens ``.uxd``: ``_KEY=value`` header lines, ``;`` comments, one or more ranges
    of either ``_2THETACOUNTS``/``_2THETACPS`` (two columns) or ``_COUNTS``/``_CPS`` (counts only,
    the axis from ``_START`` or ``_2THETA`` and ``_STEPSIZE``)."""
    keys: dict[str, str] = {}
    ranges: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("_"):
            m = re.match(r"_([A-Z0-9_]+)\s*(?:=\s*(.*))?$", line, re.I)
            if not m:
                raise InsituXRDError(f"pattern file {path}: line {lineno} is not a _KEY=value line: {line[:60]!r}")
            key, val = m.group(1).upper(), (m.group(2) or "").strip().strip("'\"")
            if key in ("2THETACOUNTS", "2THETACPS", "COUNTS", "CPS", "COUNT"):
                cur = {"kind": key, "keys": dict(keys), "values": [], "line": lineno}
                ranges.append(cur)
            else:
                keys[key] = val
                if key == "DRIVE" or key == "STEPTIME":
                    cur = None if key == "DRIVE" else cur
            continue
        if cur is None:
            raise InsituXRDError(f"pattern file {path}: line {lineno} has data before a _COUNTS or _2THETACOUNTS line")
        try:
            cur["values"].append([float(v) for v in line.replace(",", " ").split()])
        except ValueError:
            raise InsituXRDError(f"pattern file {path}: line {lineno} is not numeric: {line[:60]!r}") from None
    if not ranges:
        raise InsituXRDError(f"pattern file {path}: no _COUNTS or _2THETACOUNTS data block (not a .uxd pattern)")
    xs, ys = [], []
    for rg in ranges:
        vals, kind, k = rg["values"], rg["kind"], rg["keys"]
        if not vals:
            raise InsituXRDError(f"pattern file {path}: the _{kind} block of line {rg['line']} has no values")
        if kind.startswith("2THETA"):
            if any(len(v) != 2 for v in vals):
                raise InsituXRDError(f"pattern file {path}: _{kind} block of line {rg['line']} needs 2 columns per line")
            arr = np.asarray(vals, dtype=float)
            xs.append(arr[:, 0])
            ys.append(arr[:, 1])
        else:
            counts = np.asarray([v for r in vals for v in r], dtype=float)
            start = _key_float(path, k, ("START", "2THETA", "THETA2"))
            step = _key_float(path, k, ("STEPSIZE",))
            if not step > 0:
                raise InsituXRDError(f"pattern file {path}: _STEPSIZE must be positive, found {step:g}")
            xs.append(start + step * np.arange(counts.size))
            ys.append(counts)
    wl = keys.get("WL1")
    meta: dict[str, Any] = {"header": {k: v for k, v in keys.items()}, "ranges": len(ranges)}
    return RawColumns(np.concatenate(xs), np.concatenate(ys), None, "2th_deg", _positive_wavelength(path, wl, "_WL1"), meta)


def _key_float(path: Path, keys: dict[str, str], names: tuple[str, ...]) -> float:
    for n in names:
        if n in keys:
            try:
                return float(keys[n])
            except ValueError:
                raise InsituXRDError(f"pattern file {path}: _{n}={keys[n]!r} is not a number") from None
    raise InsituXRDError(f"pattern file {path}: a _COUNTS block needs _{names[0]} and _STEPSIZE in the header")


def _positive_wavelength(path: Path, text: str | None, what: str) -> float | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        wl = float(str(text).split()[0])
    except (ValueError, IndexError):
        raise InsituXRDError(f"pattern file {path}: wavelength {what}={text!r} is not a number") from None
    if not (0.01 < wl < 10.0):
        raise InsituXRDError(f"pattern file {path}: wavelength {what}={wl:g} A is outside 0.01-10 A")
    return wl


# --------------------------------------------------------------------------------------------
def _ras(path: Path, text: str) -> RawColumns:
    """Rigaku ``.ras``: ``*KEY "value"`` header between ``*RAS_HEADER_START``/``END``, data
    between ``*RAS_INT_START``/``*RAS_INT_END``: angle, counts, attenuator factor (intensity =
    counts x factor). Only the first scan of a multi-scan file is read (the count is noted)."""
    keys: dict[str, str] = {}
    rows: list[list[float]] = []
    state = "header"
    scans = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("*RAS_INT_START"):
            scans += 1
            state = "data" if scans == 1 else "skip"
            continue
        if line.startswith("*RAS_INT_END"):
            state = "header"
            continue
        if state == "data":
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError:
                raise InsituXRDError(f"pattern file {path}: line {lineno} in *RAS_INT is not numeric: {line[:60]!r}") from None
        elif state == "header" and line.startswith("*") and scans == 0:
            parts = line[1:].split(None, 1)
            keys[parts[0].upper()] = parts[1].strip().strip('"') if len(parts) > 1 else ""
    if not rows:
        raise InsituXRDError(f"pattern file {path}: no *RAS_INT_START data block (not a Rigaku .ras, or truncated)")
    if any(len(r) != len(rows[0]) or len(r) < 2 for r in rows):
        raise InsituXRDError(f"pattern file {path}: *RAS_INT rows must all have 2 or 3 columns")
    arr = np.asarray(rows, dtype=float)
    intensity = arr[:, 1] * arr[:, 2] if arr.shape[1] >= 3 else arr[:, 1]
    unit = keys.get("MEAS_SCAN_UNIT_X", "deg").lower()
    axis = keys.get("MEAS_SCAN_AXIS_X", "TwoThetaTheta")
    if unit not in ("deg", "degree", "") or not re.search(r"2theta|twotheta", axis, re.I):
        raise InsituXRDError(f"pattern file {path}: scan axis {axis!r} in {unit!r} is not 2theta in degrees")
    wl = _positive_wavelength(path, keys.get("HW_XG_WAVE_LENGTH_ALPHA1"), "HW_XG_WAVE_LENGTH_ALPHA1")
    return RawColumns(arr[:, 0], intensity, None, "2th_deg", wl, {"header": keys, "scans_in_file": scans})


# --------------------------------------------------------------------------------------------
def _xrdml(path: Path, text: str) -> RawColumns:
    """PANalytical ``.xrdml``: the first ``dataPoints`` of the first scan; the 2Theta axis from
    ``positions axis="2Theta"`` (``listPositions`` or ``startPosition``/``endPosition``), the
    ``intensities`` or ``counts`` (divided by nothing: counts as stored), Ka1 from
    ``usedWavelength``."""
    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as exc:
        raise InsituXRDError(f"pattern file {path}: not well-formed XML ({exc}); truncated?") from None

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    def find(node: ET.Element, name: str) -> ET.Element | None:
        return next((e for e in node.iter() if local(e.tag) == name), None)

    dp = find(root, "dataPoints")
    if dp is None:
        raise InsituXRDError(f"pattern file {path}: no <dataPoints> (not an .xrdml scan)")
    counts_el = next((e for e in dp if local(e.tag) in ("intensities", "counts")), None)
    if counts_el is None or not (counts_el.text or "").strip():
        raise InsituXRDError(f"pattern file {path}: <dataPoints> has no <intensities> or <counts>")
    try:
        y = np.asarray((counts_el.text or "").split(), dtype=float)
    except ValueError:
        raise InsituXRDError(f"pattern file {path}: <{local(counts_el.tag)}> holds non-numbers") from None
    pos = next((e for e in dp if local(e.tag) == "positions" and e.get("axis", "").lower() == "2theta"), None)
    if pos is None:
        axes = [e.get("axis") for e in dp if local(e.tag) == "positions"]
        raise InsituXRDError(f"pattern file {path}: no 2Theta <positions> in <dataPoints> (axes {axes})")
    unit = (pos.get("unit") or "deg").lower()
    if unit not in ("deg", "degree", "degrees"):
        raise InsituXRDError(f"pattern file {path}: 2Theta positions in {unit!r}, not degrees")
    listed = next((e for e in pos if local(e.tag) == "listPositions"), None)
    try:
        if listed is not None:
            x = np.asarray((listed.text or "").split(), dtype=float)
        else:
            start = float(next(e for e in pos if local(e.tag) == "startPosition").text or "")
            end = float(next(e for e in pos if local(e.tag) == "endPosition").text or "")
            x = np.linspace(start, end, y.size) if y.size > 1 else np.array([start])
    except (ValueError, StopIteration):
        raise InsituXRDError(f"pattern file {path}: 2Theta <positions> lack numeric start/end or list") from None
    if x.size != y.size:
        raise InsituXRDError(f"pattern file {path}: {x.size} 2Theta positions for {y.size} intensities")
    meta: dict[str, Any] = {}
    ct = next((e for e in dp if local(e.tag) == "commonCountingTime"), None)
    if ct is not None and (ct.text or "").strip():
        meta["counting_time_s"] = ct.text.strip()
    wl_el = find(root, "usedWavelength")
    wl = None
    if wl_el is not None:
        k1 = next((e for e in wl_el if local(e.tag) == "kAlpha1"), None)
        wl = _positive_wavelength(path, k1.text if k1 is not None else None, "kAlpha1")
        k2 = next((e for e in wl_el if local(e.tag) == "kAlpha2"), None)
        ratio = next((e for e in wl_el if local(e.tag) == "ratioKAlpha2KAlpha1"), None)
        if k2 is not None and ratio is not None:
            meta["kalpha2_A"], meta["kalpha2_ratio"] = (k2.text or "").strip(), (ratio.text or "").strip()
    return RawColumns(x, y, None, "2th_deg", wl, meta)


# --------------------------------------------------------------------------------------------
def _gsas(path: Path, text: str) -> RawColumns:
    """GSAS ``.gsa``/``.fxye`` (constant-wavelength banks): ``BANK n nchan nrec CONST start step
    0 0 FMT`` with 2theta in centidegrees; FMT ``STD`` (ten I2,F6.0 fields per line: counter
    count, value), ``ESD`` (count, esd pairs), ``FXYE`` (2theta centideg, y, esd per line).
    Only the first bank is read; time-of-flight banks are refused."""
    lines = text.splitlines()
    bank_at = next((i for i, ln in enumerate(lines) if ln.startswith("BANK")), None)
    if bank_at is None:
        raise InsituXRDError(f"pattern file {path}: no BANK line (not a GSAS .gsa/.fxye)")
    parts = lines[bank_at].split()
    if len(parts) < 5:
        raise InsituXRDError(f"pattern file {path}: BANK line too short: {lines[bank_at][:60]!r}")
    try:
        nchan = int(parts[2])
        bintyp = parts[4].upper()
        fmt = parts[-1].upper() if parts[-1].upper() in ("STD", "ESD", "FXYE", "ALT") else "STD"
        coeffs = [float(v) for v in parts[5:9] if re.fullmatch(_FLOAT, v)]
    except ValueError:
        raise InsituXRDError(f"pattern file {path}: BANK line is not 'BANK n nchan nrec BINTYP ...': {lines[bank_at][:60]!r}") from None
    if bintyp not in ("CONST", "CONS") and fmt != "FXYE":
        raise InsituXRDError(f"pattern file {path}: BANK binning {bintyp!r} is not constant-wavelength 2theta (CONST)")
    if not 0 < nchan <= 10_000_000:
        raise InsituXRDError(f"pattern file {path}: BANK says {nchan} channels")
    body = []
    for ln in lines[bank_at + 1:]:
        if ln.startswith("BANK"):
            break
        if ln.strip() and not ln.lstrip().startswith("#"):
            body.append(ln)
    meta: dict[str, Any] = {"bank": parts[1], "gsas_format": fmt}
    try:
        if fmt == "FXYE":
            arr = np.asarray([[float(v) for v in ln.split()[:3]] for ln in body], dtype=float)
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise InsituXRDError(f"pattern file {path}: FXYE lines need 3 columns (2theta centideg, y, esd)")
            return RawColumns(arr[:, 0] / 100.0, arr[:, 1], arr[:, 2], "2th_deg", None, meta)
        if len(coeffs) < 2:
            raise InsituXRDError(f"pattern file {path}: CONST BANK needs start and step (centidegrees)")
        start, step = coeffs[0] / 100.0, coeffs[1] / 100.0
        if fmt == "ESD":
            vals = [float(v) for ln in body for v in _fixed_fields(ln, 8)]
            arr = np.asarray(vals, dtype=float).reshape(-1, 2) if len(vals) % 2 == 0 else None
            if arr is None:
                raise InsituXRDError(f"pattern file {path}: ESD data is not (count, esd) pairs")
            y, e = arr[:, 0], arr[:, 1]
        else:
            y = np.asarray([v for ln in body for v in _std_fields(ln)], dtype=float)
            e = None
    except ValueError as exc:
        raise InsituXRDError(f"pattern file {path}: BANK data is not numeric ({exc})") from None
    if y.size < nchan:
        raise InsituXRDError(f"pattern file {path}: BANK promises {nchan} points, file holds {y.size} (truncated?)")
    y, e = y[:nchan], (e[:nchan] if e is not None else None)
    if not step > 0:
        raise InsituXRDError(f"pattern file {path}: BANK step {step:g} deg must be positive")
    return RawColumns(start + step * np.arange(nchan), y, e, "2th_deg", None, meta)


def _fixed_fields(line: str, width: int) -> list[str]:
    """Fixed-width fields of a GSAS data line (blank fields skipped)."""
    line = line.rstrip("\r\n")
    return [f for f in (line[i:i + width].strip() for i in range(0, min(len(line), 80), width)) if f]


def _std_fields(line: str) -> list[float]:
    """The values of a GSAS STD line: ten (I2 counter count, F6.0 value) fields; the counter count
    is dropped (no esd is invented from it)."""
    line = line.rstrip("\r\n")[:80]
    return [float(line[i + 2:i + 8]) for i in range(0, len(line), 8) if line[i + 2:i + 8].strip()]


# --------------------------------------------------------------------------------------------
# Bruker (Siemens) DIFFRAC binary .raw. Layouts, all little-endian:
# * v3, magic "RAW1.01": DIFFRAC^plus XCH V.5.0 (Bruker AXS 2002), User's Manual, Appendix A
#   ("RAW file format"): a 712-byte file header (range count, u32 at 12; anode, 4 chars at 608;
#   Ka average, Ka1, Ka2, Kb, Ka2/Ka1 ratio, f64 at 616..648), then per range a 304-byte header
#   (its own length, u32 at 0; steps, u32 at 4; start 2theta, f64 at 16; step, f64 at 176;
#   supplementary header bytes, u32 at 256), those bytes, and the counts as f32.
# * v4, magic "RAW4.00" (DIFFRAC.SUITE): no manual describes it; the layout is the one xylib
#   (wojdyr/xylib, bruker_raw.cpp) documents: a 61-byte file header, then tagged segments
#   (u32 type, u32 length; type 30 holds the wavelengths at +80 (Ka1), +88 (Ka2), +104 (ratio) and
#   the anode at +116) until a range starts (type 0 or 160): a 160-byte range header (scan type,
#   24 chars at +32; start angle f64 at +72; step f64 at +80; steps u32 at +88; datum size u32 at
#   +136; extra header bytes u32 at +140), the extra header, the counts.
# Only coupled theta-2theta scans are read (their start angle is 2theta); anything else is refused.
_RAW_V4_COUPLED = ("Locked Coupled", "Unlocked Coupled")


def _raw_text(data: bytes, start: int, size: int) -> str:
    return data[start:start + size].split(b"\x00")[0].decode("latin-1").strip()


def _raw_unpack(path: Path, fmt: str, data: bytes, offset: int, what: str) -> tuple:
    import struct

    try:
        return struct.unpack_from("<" + fmt, data, offset)
    except struct.error:
        raise InsituXRDError(f"pattern file {path}: Bruker .raw truncated: {what} at byte {offset} is past the end "
                             f"({len(data)} bytes)") from None


def _raw_counts(path: Path, data: bytes, offset: int, steps: int, range_no: int) -> np.ndarray:
    end = offset + 4 * steps
    if steps < 1 or end > len(data):
        raise InsituXRDError(f"pattern file {path}: Bruker .raw range {range_no} promises {steps} counts from byte "
                             f"{offset} but the file has {len(data)} bytes (truncated)")
    return np.frombuffer(data, dtype="<f4", count=steps, offset=offset).astype(float)


def _raw_v3(path: Path, data: bytes) -> tuple[list[tuple[float, float, np.ndarray]], dict[str, Any]]:
    (n_ranges,) = _raw_unpack(path, "I", data, 12, "the range count")
    avg, ka1, ka2, _kb, ratio = _raw_unpack(path, "5d", data, 616, "the wavelengths")
    meta = {"anode": _raw_text(data, 608, 4), "kalpha_average_A": avg, "kalpha1_A": ka1, "kalpha2_A": ka2,
            "kalpha2_ratio": ratio, "sample": _raw_text(data, 326, 60), "date": _raw_text(data, 16, 10)}
    if not 1 <= n_ranges <= 1000:
        raise InsituXRDError(f"pattern file {path}: Bruker RAW1.01 header states {n_ranges} ranges (not a sane count)")
    ranges, pos = [], 712
    for k in range(n_ranges):
        header_len, steps = _raw_unpack(path, "II", data, pos, f"range {k + 1} header")
        if header_len != 304:
            raise InsituXRDError(f"pattern file {path}: Bruker RAW1.01 range {k + 1} header length {header_len} "
                                 "(the format has 304)")
        (start,) = _raw_unpack(path, "d", data, pos + 16, f"range {k + 1} start 2theta")
        (step,) = _raw_unpack(path, "d", data, pos + 176, f"range {k + 1} step")
        (extra,) = _raw_unpack(path, "I", data, pos + 256, f"range {k + 1} supplementary size")
        pos += header_len + extra
        ranges.append((start, step, _raw_counts(path, data, pos, steps, k + 1)))
        pos += 4 * steps
    return ranges, meta


def _raw_v4(path: Path, data: bytes) -> tuple[list[tuple[float, float, np.ndarray]], dict[str, Any]]:
    meta: dict[str, Any] = {"date": _raw_text(data, 12, 12)}
    pos = 61
    (kind,) = _raw_unpack(path, "I", data, pos, "the first segment")
    while kind not in (0, 160):
        (length,) = _raw_unpack(path, "I", data, pos + 4, f"segment {kind} length")
        if length < 8:
            raise InsituXRDError(f"pattern file {path}: Bruker RAW4.00 segment of type {kind} at byte {pos} has length "
                                 f"{length} (< 8: damaged)")
        if kind == 30 and length >= 120:
            avg, ka1, ka2, _kb, ratio = _raw_unpack(path, "5d", data, pos + 72, "the wavelengths")
            meta.update(anode=_raw_text(data, pos + 116, 4), kalpha_average_A=avg, kalpha1_A=ka1, kalpha2_A=ka2,
                        kalpha2_ratio=ratio)
        pos += length
        (kind,) = _raw_unpack(path, "I", data, pos, "the next segment")
    ranges = []
    while pos < len(data):
        k = len(ranges) + 1
        scan = _raw_text(data, pos + 32, 24)
        start, step = _raw_unpack(path, "dd", data, pos + 72, f"range {k} start and step")
        (steps,) = _raw_unpack(path, "I", data, pos + 88, f"range {k} steps")
        datum, extra = _raw_unpack(path, "II", data, pos + 136, f"range {k} datum size")
        if scan not in _RAW_V4_COUPLED:
            raise InsituXRDError(f"pattern file {path}: Bruker RAW4.00 range {k} is a {scan!r} scan; only coupled "
                                 f"theta-2theta scans ({', '.join(_RAW_V4_COUPLED)}) are powder patterns read here")
        if datum != 4:
            raise InsituXRDError(f"pattern file {path}: Bruker RAW4.00 range {k} has {datum}-byte data points "
                                 "(only 4-byte floats are read)")
        pos += 160 + extra
        ranges.append((start, step, _raw_counts(path, data, pos, steps, k)))
        pos += 4 * steps
        if pos < len(data):
            (kind,) = _raw_unpack(path, "I", data, pos, "the next range")
            if kind not in (0, 160):
                raise InsituXRDError(f"pattern file {path}: Bruker RAW4.00: {len(data) - pos} bytes after range {k} "
                                     f"are not a range (type {kind})")
    return ranges, meta


def _bruker_raw(path: Path, data: bytes) -> RawColumns:
    """Bruker .raw v3 (RAW1.01) or v4 (RAW4.00): the ranges joined in file order (the axis check
    after reading refuses ranges that overlap or go back); Ka1 is the wavelength."""
    magic = data[:7].decode("latin-1")
    if magic == "RAW1.01":
        ranges, meta = _raw_v3(path, data)
    elif magic == "RAW4.00":
        ranges, meta = _raw_v4(path, data)
    else:
        found = data[:7].split(b"\x00")[0].decode("latin-1", errors="replace")
        what = f"version {found!r}" if found.startswith("RAW") else f"no Bruker RAW magic (starts {found!r})"
        raise InsituXRDError(f"pattern file {path}: Bruker .raw with {what}; read are RAW1.01 (v3) and RAW4.00 (v4): "
                             "export it as .uxd or .xy (DIFFRAC.EVA, PowDLL)")
    if not ranges:
        raise InsituXRDError(f"pattern file {path}: Bruker {magic} holds no range")
    for k, (_start, step, _y) in enumerate(ranges, start=1):
        if not (math.isfinite(step) and step > 0):
            raise InsituXRDError(f"pattern file {path}: Bruker {magic} range {k} has step {step} (must be > 0)")
    x = np.concatenate([start + step * np.arange(y.size) for start, step, y in ranges])
    y = np.concatenate([y for _s, _st, y in ranges])
    ka1 = meta.get("kalpha1_A")
    wavelength = float(ka1) if isinstance(ka1, float) and 0.1 < ka1 < 10.0 else None
    meta.update(format="bruker_raw", version=magic, n_ranges=len(ranges))
    return RawColumns(x, y, None, "2th_deg", wavelength, meta)
