"""Read and write 1D powder patterns as text files (.xye, .xy, .dat, .chi).

Formats understood by :func:`read_pattern_1d`:

* ``.xye`` / ``.xy`` / ``.dat`` / ``.txt``: 2 or 3 whitespace- or comma-separated columns
  (x, intensity[, sigma]); comment lines start with ``#``, ``!``, ``;`` or ``%``.
* pyFAI ``.chi`` / ``.dat`` / ``.xy`` with a pyFAI header (``# Wavelength: 1.671e-11 m`` ... and a
  column line such as ``#  q_A^-1  I``, ``# 2th_deg I`` or ``# q_nm^-1 I sigma``).
* Fit2D / xPDFsuite-style ``.chi`` with free-text header lines without ``#`` (e.g. the PDFstream
  ``Ni.chi``): header lines are every line before the first purely numeric line; the x unit is
  taken from the header text ("2-Theta", "Q", "q_A^-1", ...).

The x axis is always returned as 2theta in degrees; q is converted with the wavelength (from the
header if present, else the ``wavelength_A`` argument). When the file has no sigma column,
``sigma = sqrt(max(I, 1))`` (Poisson on the counts, floored at 1 count) and
``metadata["sigma_source"]`` says so.

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

__all__ = [
    "Pattern1D",
    "read_pattern_1d",
    "write_xye",
    "q_invA_to_two_theta_deg",
    "two_theta_deg_to_q_invA",
]

_COMMENT_CHARS = ("#", "!", ";", "%")
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
    """

    two_theta_deg: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    wavelength_A: float | None = None
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

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


def _parse_pyfai_header(header: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for raw in header:
        line = raw.lstrip("#!;% \t")
        m = re.match(r"Wavelength\s*[:=]\s*([-+0-9.eE]+)\s*(m|A|nm|angstrom)?", line, re.I)
        if m:
            val = float(m.group(1))
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
        m = re.match(r"Distance Sample to Detector\s*:\s*([-+0-9.eE]+)\s*m", line, re.I)
        if m:
            meta["distance_m"] = float(m.group(1))
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
        path: .xye, .xy, .dat, .txt or .chi file (see module docstring for the layouts).
        wavelength_A: wavelength in Angstrom; used when the header has none, required to convert
            a q axis. A header value wins (the mismatch, if any, is noted in metadata).
        unit: force the x unit ("2th_deg", "q_A^-1", "q_nm^-1") when the header does not state
            it; default: from the header, else 2th_deg.

    Returns:
        Pattern1D sorted by ascending 2theta, with non-finite rows removed.

    Raises:
        InsituXRDError: file missing/unreadable, no numeric columns, fewer than 2 columns,
            q axis without any wavelength, unsupported unit.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InsituXRDError(f"pattern file {path}: does not exist") from None
    except (OSError, UnicodeError) as exc:
        raise InsituXRDError(f"pattern file {path}: cannot be read ({exc})") from None
    if "\x00" in text[:4096]:
        raise InsituXRDError(f"pattern file {path}: is binary, not a text pattern (.xye/.xy/.chi)")

    header: list[str] = []
    rows: list[list[float]] = []
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
        elif not data_started:
            header.append(line)  # free-text header (Fit2D/xPDFsuite .chi)
        else:
            raise InsituXRDError(f"pattern file {path}: line {lineno} is not numeric data: {line[:60]!r}")
    if not rows:
        raise InsituXRDError(f"pattern file {path}: contains no numeric data columns")
    ncol = min(len(r) for r in rows)
    if ncol < 2:
        raise InsituXRDError(f"pattern file {path}: needs at least 2 columns (x, intensity), found {ncol}")
    data = np.array([r[:ncol] for r in rows], dtype=float)

    meta: dict[str, Any] = {"header": header}
    meta.update({k: v for k, v in _parse_pyfai_header(header).items() if k != "wavelength_A"})
    header_wl = _parse_pyfai_header(header).get("wavelength_A")
    wl: float | None
    if header_wl is not None:
        wl = float(header_wl)
        meta["wavelength_source"] = "header"
        if wavelength_A is not None and abs(wavelength_A - wl) > 1e-6 * wl:
            meta["wavelength_argument_ignored_A"] = float(wavelength_A)
    elif wavelength_A is not None:
        wl = float(wavelength_A)
        meta["wavelength_source"] = "argument"
    else:
        wl = None

    # the column-name line (last header line) is the most reliable place for the unit
    x_unit = unit or (_detect_unit(header[-1:]) if header else None) or _detect_unit(header)
    if x_unit is None:
        x_unit = "2th_deg"
        meta["x_unit_assumed"] = True
    meta["x_unit_in_file"] = x_unit
    x = data[:, 0]
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
        tth = q_invA_to_two_theta_deg(q, wl)
    else:
        raise InsituXRDError(f"pattern file {path}: x unit {x_unit!r} is not supported (need 2theta or q)")

    intensity = data[:, 1]
    if ncol >= 3:
        sigma = data[:, 2].copy()
        meta["sigma_source"] = "file"
    else:
        sigma = np.sqrt(np.maximum(intensity, 1.0))
        meta["sigma_source"] = "poisson sqrt(max(I,1)) (no sigma column in file)"

    good = np.isfinite(tth) & np.isfinite(intensity) & np.isfinite(sigma)
    if good.sum() < 2:
        raise InsituXRDError(f"pattern file {path}: fewer than 2 finite data points")
    order = np.argsort(tth[good], kind="stable")
    return Pattern1D(
        two_theta_deg=tth[good][order],
        intensity=intensity[good][order],
        sigma=sigma[good][order],
        wavelength_A=wl,
        source=path,
        metadata=meta,
    )
