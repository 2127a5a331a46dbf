"""Read and write 1D powder patterns as text files (.xye, .xy, .dat, .chi).

Formats understood by :func:`read_pattern_1d`:

* ``.xye`` / ``.xy`` / ``.dat`` / ``.txt``: 2 or 3 whitespace- or comma-separated columns
  (x, intensity[, sigma]); comment lines start with ``#``, ``!``, ``;`` or ``%``.
* pyFAI ``.chi`` / ``.dat`` / ``.xy`` with a pyFAI header (``# Wavelength: 1.671e-11 m`` ... and a
  column line such as ``#  q_A^-1  I``, ``# 2th_deg I`` or ``# q_nm^-1 I sigma``).
* Fit2D / xPDFsuite-style ``.chi`` with free-text header lines without ``#`` (e.g. the PDFstream
  ``Ni.chi``): header lines are every line before the first purely numeric line; the x unit is
  taken from the header text ("2-Theta", "Q", "q_A^-1", ...).
* PowBase / Rietveld ``.dat``: a first data line ``start step stop`` (deg) then the counts, any
  number per line (recognised by the number of counts matching ``start step stop``).
* Lab formats by suffix or content: Bruker ``.uxd``, PANalytical ``.xrdml``, Rigaku ``.ras``,
  GSAS ``.gsa``/``.fxye``, Bruker binary ``.raw`` v3 (RAW1.01) and v4 (RAW4.00)
  (:mod:`insitu_xrd.io.lab_patterns`); other .raw versions are refused naming the version
  with advice.

Every file is checked after reading: the axis strictly monotonic (a descending one is reversed)
and inside 0 < 2theta < 180 deg (a q axis inside 0 < q < 4 pi / lambda), at least ``MIN_POINTS``
finite points, intensities finite, below 1e20 and not all equal, a file esd column > 0.
docs/readers.md lists what each format accepts and refuses.

The x axis is always returned as 2theta in degrees; q is converted with the wavelength (from the
header if present, else the ``wavelength_A`` argument). When the file has no sigma column,
``sigma = sqrt(max(I, 1))`` (Poisson on the counts, floored at 1 count), ``Pattern1D.sigma_source``
is "none" (else "file") and ``metadata["sigma_source"]`` says so in words.

:func:`write_xye` writes 3 columns (2theta deg, intensity, sigma) with ``#`` comment lines, read by
GSAS-II ("xye" importer), TOPAS (``xye`` keyword), FullProf (format 10 after stripping the header)
and by :func:`read_pattern_1d`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.lab_patterns import RawColumns, lab_format_of, powbase_columns, read_lab_pattern

__all__ = [
    "Pattern1D",
    "read_pattern_1d",
    "write_xye",
    "q_invA_to_two_theta_deg",
    "two_theta_deg_to_q_invA",
]

_COMMENT_CHARS = ("#", "!", ";", "%")
MIN_POINTS = 10  # fewer points than this is not a powder pattern (a refinement has ~10 parameters)
MAX_ABS_INTENSITY = 1e20  # beyond any count rate; squares and sums of squares stay finite
_NUMBER_LINE = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eEdD][-+]?\d+)?([\s,;]+[-+]?(\d+\.?\d*|\.\d+|nan|inf)([eEdD][-+]?\d+)?)*\s*$", re.I)


@dataclass
class Pattern1D:
    """A 1D powder pattern on a 2theta axis.

    Attributes:
        two_theta_deg: scattering angle 2theta in degrees, ascending (n,).
        intensity: intensity per bin (n,), in the file's units (counts or normalised counts).
        sigma: one-standard-deviation uncertainty of ``intensity`` (n,), same units.
        wavelength_A: X-ray wavelength in Angstrom, or None if neither the file nor the caller
            gave one (then the x axis must have been 2theta).
        source: path of the file read (None for in-memory patterns).
        metadata: everything else learned from the file: ``x_unit_in_file`` ("2th_deg",
            "q_A^-1", "q_nm^-1"), ``sigma_source`` ("file" or "poisson sqrt(max(I,1))"),
            ``wavelength_source`` ("header", "argument"), ``header`` (list of header lines),
            plus parsed pyFAI header fields (``polarization_factor``, ``distance_m``, ...).
        sigma_source: "file" when ``sigma`` is the file's esd column, "none" when the file has
            none (then ``sigma = sqrt(max(I, 1))``, Poisson on counts: say so downstream).
    """

    two_theta_deg: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    wavelength_A: float | None = None
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sigma_source: str = "none"

    @property
    def q_invA(self) -> np.ndarray:
        """Scattering vector magnitude q = 4 pi sin(theta) / lambda in 1/Angstrom."""
        if self.wavelength_A is None:
            raise InsituXRDError(
                f"pattern {self.source or '<memory>'}: no wavelength known, cannot compute q; "
                "pass wavelength_A"
            )
        return two_theta_deg_to_q_invA(self.two_theta_deg, self.wavelength_A)

    def __len__(self) -> int:
        return int(self.two_theta_deg.size)


def q_invA_to_two_theta_deg(q_invA: np.ndarray | float, wavelength_A: float) -> np.ndarray:
    """2theta (deg) from q (1/A): 2theta = 2 asin(q lambda / 4 pi). NaN where q lambda/4pi > 1."""
    s = np.asarray(q_invA, dtype=float) * wavelength_A / (4.0 * math.pi)
    with np.errstate(invalid="ignore"):
        return np.degrees(2.0 * np.arcsin(np.where(np.abs(s) <= 1.0, s, np.nan)))


def two_theta_deg_to_q_invA(two_theta_deg: np.ndarray | float, wavelength_A: float) -> np.ndarray:
    """q (1/A) from 2theta (deg): q = 4 pi sin(theta) / lambda."""
    return 4.0 * math.pi * np.sin(np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0) / wavelength_A


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def write_xye(
    path: str | Path,
    two_theta_deg: Sequence[float] | np.ndarray,
    intensity: Sequence[float] | np.ndarray,
    sigma: Sequence[float] | np.ndarray | None = None,
    header_lines: Iterable[str] = (),
    wavelength_A: float | None = None,
) -> Path:
    """Write a 3-column .xye file: 2theta (deg), intensity, sigma.

    Args:
        path: output file; parent folders are created.
        two_theta_deg: 2theta in degrees (n,).
        intensity: intensity (n,).
        sigma: uncertainty (n,); None writes ``sqrt(max(I,1))``.
        header_lines: free comment lines, written after ``# `` (no '#' needed).
        wavelength_A: if given, a ``# Wavelength: <m> m`` line in pyFAI style is written so that
            :func:`read_pattern_1d` (and pyFAI/DIOPTAS readers) recover it.

    Non-finite points (masked bins) are dropped, since GSAS-II and TOPAS reject NaN. The file is
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    x = np.asarray(two_theta_deg, dtype=float).ravel()
    y = np.asarray(intensity, dtype=float).ravel()
    if sigma is None:
        e = np.sqrt(np.maximum(y, 1.0))
    else:
        e = np.asarray(sigma, dtype=float).ravel()
    if not (x.size == y.size == e.size):
        raise InsituXRDError(
            f"write_xye {path}: column lengths differ (2theta {x.size}, intensity {y.size}, sigma {e.size})"
        )
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(e)
    lines = []
    for h in header_lines:
        for sub in str(h).splitlines() or [""]:
            lines.append("# " + sub)
    if wavelength_A is not None:
        lines.append(f"# Wavelength: {wavelength_A * 1e-10:.9e} m")
    lines.append("# 2th_deg  I  sigma")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = np.column_stack([x[good], y[good], e[good]])
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        np.savetxt(fh, data, fmt=("%.6f", "%.8g", "%.8g"))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _detect_unit(header: list[str]) -> str | None:
    """x unit from header text: '2th_deg', 'q_A^-1', 'q_nm^-1', or None if not stated."""
    text = "\n".join(header)
    # pyFAI column line / unit names, most specific first
    if re.search(r"q_nm\^-1|q_nm-1|q\s*\(\s*nm", text, re.I):
        return "q_nm^-1"
    if re.search(r"q_A\^-1|q_A-1|q\s*\(\s*(1/)?A", text, re.I):
        return "q_A^-1"
    if re.search(r"2th_deg|2-?theta|two_?theta|2th\b|tth", text, re.I):
        return "2th_deg"
    if re.search(r"2th_rad", text, re.I):
        return "2th_rad"
    if re.search(r"r_mm|chi_deg", text, re.I):
        return "unsupported"
    # xPDFsuite/PDFgetX-style free text: "First column represents Q values (Angstroms)"
    if re.search(r"\bQ\b\s*(values|\(|\[)", text):
        return "q_A^-1"
    return None


def _header_float(text: str) -> float | None:
    """A finite number of a header field, or None (damaged or not a number)."""
    try:
        val = float(text)
    except ValueError:
        return None
    return val if math.isfinite(val) else None


def _parse_pyfai_header(header: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for raw in header:
        line = raw.lstrip("#!;% \t")
        m = re.match(r"Wavelength\s*[:=]\s*(\S+)\s*(m|A|nm|angstrom)?", line, re.I)
        if m:
            val = _header_float(m.group(1))
            if val is None:
                meta["wavelength_unreadable"] = m.group(1)
                continue
            unit = (m.group(2) or "").lower()
            if unit == "m" or (not unit and val < 1e-6):
                val *= 1e10
            elif unit == "nm":
                val *= 10.0
            meta["wavelength_A"] = float(f"{val:.12g}")  # drop float noise of the m -> A scaling
            continue
        m = re.match(r"Polarization factor\s*:\s*(\S+)", line, re.I)
        if m:
            try:
                meta["polarization_factor"] = float(m.group(1))
            except ValueError:
                meta["polarization_factor"] = None
            continue
        m = re.match(r"Distance Sample to Detector\s*:\s*(\S+)\s*m", line, re.I)
        if m:
            meta["distance_m"] = _header_float(m.group(1))
            continue
        m = re.match(r"(Mask applied|Dark current applied|Flat field applied|Normalization factor)\s*:\s*(.*)", line, re.I)
        if m:
            meta[m.group(1).lower().replace(" ", "_")] = m.group(2).strip()
    return meta


def read_pattern_1d(
    path: str | Path,
    wavelength_A: float | None = None,
    unit: str | None = None,
) -> Pattern1D:
    """Read a 1D pattern file and return it on a 2theta (deg) axis.

    Args:
        path: a column file (.xye, .xy, .dat, .txt, .chi, PowBase .dat) or a lab format (.uxd,
            .xrdml, .ras, .gsa/.fxye; see :mod:`insitu_xrd.io.lab_patterns`).
        wavelength_A: wavelength in Angstrom; used when the file states none, required to convert
            a q axis. A file's value wins (the mismatch, if any, is noted in metadata).
        unit: force the x unit ("2th_deg", "q_A^-1", "q_nm^-1") of a column file whose header
            does not state it; default: from the header, else 2th_deg.

    Returns:
        Pattern1D on ascending 2theta (a descending file is reversed, noted in metadata), with
        non-finite rows removed (their count noted); ``sigma_source`` says whether the esds came
        from the file ("file") or not ("none": Poisson ``sqrt(max(I, 1))``).

    Raises:
        InsituXRDError (one line naming the file and the problem): file missing/unreadable/
            binary, no numeric data, rows of different widths, fewer than 2 columns, q axis
            without a wavelength or beyond 4 pi / wavelength, an axis that is not strictly
            monotonic (repeated or unsorted values) or not inside 0 < 2theta < 180 deg, fewer
            than ``MIN_POINTS`` finite points, intensities all equal or beyond 1e20, an esd
            column with values <= 0.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InsituXRDError(f"pattern file {path}: does not exist") from None
    except OSError as exc:
        raise InsituXRDError(f"pattern file {path}: cannot be read ({exc})") from None
    text_head = data[:4096].decode("utf-8", errors="replace")
    fmt = lab_format_of(path, text_head)
    if fmt is not None:
        raw = read_lab_pattern(path, fmt, data)
        header: list[str] = []
    else:
        if "\x00" in text_head:
            raise InsituXRDError(f"pattern file {path}: is binary, not a text pattern (.xye/.xy/.chi)")
        raw, header = _read_columns(path, data.decode("utf-8", errors="replace"), unit)
    return _checked_pattern(path, raw, header, wavelength_A)


def _read_columns(path: Path, text: str, unit: str | None) -> tuple[RawColumns, list[str]]:
    """A column file (or a PowBase ``start step stop`` + counts file) as RawColumns + header lines."""
    header: list[str] = []
    rows: list[list[float]] = []
    row_lines: list[int] = []
    data_started = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(_COMMENT_CHARS):
            if not data_started:
                header.append(line)
            continue
        if _NUMBER_LINE.match(line):
            data_started = True
            parts = re.split(r"[\s,;]+", line.replace("D", "E").replace("d", "e"))
            try:
                rows.append([float(p) for p in parts if p])
            except ValueError:
                raise InsituXRDError(f"pattern file {path}: line {lineno} is not numeric: {line[:60]!r}") from None
            row_lines.append(lineno)
        elif not data_started:
            header.append(line)  # free-text header (Fit2D/xPDFsuite .chi)
        else:
            raise InsituXRDError(f"pattern file {path}: line {lineno} is not numeric data: {line[:60]!r}")
    if not rows:
        raise InsituXRDError(f"pattern file {path}: contains no numeric data columns")
    if unit is None:
        powbase = powbase_columns(path, rows)
        if powbase is not None:
            return powbase, header
    ncol = len(rows[0])
    if ncol < 2:
        raise InsituXRDError(f"pattern file {path}: needs at least 2 columns (x, intensity), found {ncol}")
    odd = next((i for i, r in enumerate(rows) if len(r) != ncol), None)
    if odd is not None:
        raise InsituXRDError(f"pattern file {path}: line {row_lines[odd]} has {len(rows[odd])} values, the lines "
                             f"before it {ncol} (truncated or mixed layout)")
    arr = np.array(rows, dtype=float)
    meta: dict[str, Any] = {"header": header, "format": "columns", "columns_in_file": ncol}
    meta.update({k: v for k, v in _parse_pyfai_header(header).items() if k != "wavelength_A"})
    if "wavelength_unreadable" in meta:
        raise InsituXRDError(f"pattern file {path}: header Wavelength {meta['wavelength_unreadable']!r} is not a number")
    # the column-name line (last header line) is the most reliable place for the unit
    x_unit = unit or (_detect_unit(header[-1:]) if header else None) or _detect_unit(header)
    if x_unit is None:
        x_unit = "2th_deg"
        meta["x_unit_assumed"] = True
    return RawColumns(arr[:, 0], arr[:, 1], arr[:, 2].copy() if ncol >= 3 else None, x_unit,
                      _parse_pyfai_header(header).get("wavelength_A"), meta), header


def _checked_pattern(path: Path, raw: RawColumns, header: list[str], wavelength_A: float | None) -> Pattern1D:
    """Convert ``raw`` to 2theta and check it (see :func:`read_pattern_1d` for what is refused)."""
    meta: dict[str, Any] = {"header": header, **raw.metadata}
    wl: float | None
    if raw.wavelength_A is not None:
        wl = float(raw.wavelength_A)
        if not (0.01 < wl < 10.0):
            raise InsituXRDError(f"pattern file {path}: header wavelength {wl:g} A is outside 0.01-10 A")
        meta["wavelength_source"] = "header"
        if wavelength_A is not None and abs(wavelength_A - wl) > 1e-6 * wl:
            meta["wavelength_argument_ignored_A"] = float(wavelength_A)
    elif wavelength_A is not None:
        wl = float(wavelength_A)
        meta["wavelength_source"] = "argument"
    else:
        wl = None
    x_unit = raw.x_unit
    meta["x_unit_in_file"] = x_unit
    x = np.asarray(raw.x, dtype=float)
    if x_unit == "2th_deg":
        tth = x
    elif x_unit == "2th_rad":
        tth = np.degrees(x)
    elif x_unit in ("q_A^-1", "q_nm^-1"):
        if wl is None:
            raise InsituXRDError(
                f"pattern file {path}: x axis is {x_unit} but no wavelength is in the header; "
                "give the wavelength (wavelength_A / --wavelength-a)"
            )
        q = x if x_unit == "q_A^-1" else x / 10.0
        q_max = 4.0 * math.pi / wl
        bad = np.isfinite(q) & ((q <= 0) | (q >= q_max))
        if bad.any():
            raise InsituXRDError(
                f"pattern file {path}: q from {np.nanmin(q):.4g} to {np.nanmax(q):.4g} 1/A is outside 0 < q < "
                f"4 pi / lambda = {q_max:.4g} 1/A (wavelength {wl:g} A; wrong unit or wavelength?)")
        tth = q_invA_to_two_theta_deg(q, wl)
    else:
        raise InsituXRDError(f"pattern file {path}: x unit {x_unit!r} is not supported (need 2theta or q)")

    intensity = np.asarray(raw.intensity, dtype=float)
    if tth.size != intensity.size:
        raise InsituXRDError(f"pattern file {path}: {tth.size} x values for {intensity.size} intensities")
    if raw.sigma is not None:
        sigma = np.asarray(raw.sigma, dtype=float)
        sigma_source = "file"
        meta["sigma_source"] = "file"
    else:
        sigma = np.sqrt(np.maximum(intensity, 1.0))
        sigma_source = "none"
        meta["sigma_source"] = "poisson sqrt(max(I,1)) (no sigma column in file)"

    good = np.isfinite(tth) & np.isfinite(intensity) & np.isfinite(sigma)
    if good.sum() < MIN_POINTS:
        raise InsituXRDError(f"pattern file {path}: {int(good.sum())} finite data points, a pattern needs at least {MIN_POINTS}")
    if (~good).sum() > good.sum():
        raise InsituXRDError(f"pattern file {path}: {int((~good).sum())} of {good.size} points are NaN/inf")
    if (~good).any():
        meta["dropped_nonfinite_points"] = int((~good).sum())
    tth, intensity, sigma = tth[good], intensity[good], sigma[good]
    tth, intensity, sigma = _monotonic(path, tth, intensity, sigma, x_unit, meta)
    lo, hi = float(tth[0]), float(tth[-1])
    if not (lo > 0.0 and hi < 180.0):
        hint = " (no unit in the header: if the axis is not 2theta in degrees, give the unit)" if meta.get("x_unit_assumed") else ""
        raise InsituXRDError(f"pattern file {path}: 2theta runs from {lo:.6g} to {hi:.6g} deg, outside 0 < 2theta < 180{hint}")
    if float(np.max(np.abs(intensity))) > MAX_ABS_INTENSITY:
        raise InsituXRDError(f"pattern file {path}: intensity up to {float(np.max(np.abs(intensity))):.3g}, beyond "
                             f"{MAX_ABS_INTENSITY:.0e} (not counts)")
    if float(np.ptp(intensity)) == 0.0:
        raise InsituXRDError(f"pattern file {path}: all {intensity.size} intensities equal {intensity[0]:g} (no pattern)")
    if sigma_source == "file":
        nonpos = int((sigma <= 0).sum())
        if nonpos:
            raise InsituXRDError(f"pattern file {path}: the esd column has {nonpos} values <= 0 (first at 2theta "
                                 f"{float(tth[np.argmax(sigma <= 0)]):.6g} deg)")
    return Pattern1D(two_theta_deg=tth, intensity=intensity, sigma=sigma, wavelength_A=wl, source=path,
                     metadata=meta, sigma_source=sigma_source)


def _monotonic(path: Path, tth: np.ndarray, y: np.ndarray, s: np.ndarray, x_unit: str,
               meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points on a strictly increasing axis: a strictly decreasing file is reversed (noted);
    a repeated or unsorted axis is refused, saying where."""
    d = np.diff(tth)
    if np.all(d > 0):
        return tth, y, s
    if np.all(d < 0):
        meta["axis_descending_in_file"] = True
        return tth[::-1].copy(), y[::-1].copy(), s[::-1].copy()
    i = int(np.flatnonzero(d == 0)[0]) if np.any(d == 0) else int(np.flatnonzero(np.sign(d) != np.sign(d[0]))[0])
    what = "repeats" if d[i] == 0 else "turns back"
    raise InsituXRDError(f"pattern file {path}: the x axis ({x_unit}) {what} at point {i + 1} (2theta {tth[i]:.6g} "
                         f"then {tth[i + 1]:.6g} deg); it must be strictly monotonic (an unsorted, repeated or "
                         "wrongly read column)")
