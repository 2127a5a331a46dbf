"""Read and write GSAS-II instrument parameter files (``.instprm``) for constant-wavelength data.

Format (as GSAS-II's ``ReadInstprm``/``WriteInstprm`` handle it):

* the first line contains ``GSAS-II`` (``#GSAS-II instrument parameter file; do not add/delete
  items!``);
* every other line holds ``name:value`` items, several items may share a line separated by ``;``
  (``Lam:0.1173;Zero:0.0;Polariz.:0.99``); spaces are insignificant;
* a ``#Bank n: ...`` line starts the block of bank ``n`` in multi-bank files (GSAS-II "Save all
  profiles"); a ``#`` line after the items of the bank being read ends them: GSAS-II reads no item
  after it, so insitu-xrd writes its own comments (and the displacement comment) *after* the items.
  GSAS-II's ``ReadInstprm`` skips only the first line before the items: a second ``#`` line there
  is read as an item and the next one ends the file, so a file with several comment lines before
  its items has no parameters for GSAS-II (insitu-xrd before 0.1 wrote such files; this reader
  still takes comments before the items);
* CW X-ray items: ``Type`` (``PXC``), ``Bank``, ``Lam`` (or ``Lam1``, ``Lam2``, ``I(L2)/I(L1)`` for
  a Kalpha doublet), ``Zero`` (deg 2theta, added to calculated positions), ``Polariz.``,
  ``Azimuth`` (deg), ``U``, ``V``, ``W`` (centideg^2), ``X``, ``Y``, ``Z`` (centideg), ``SH/L``
  (axial-divergence asymmetry); sample items GSAS-II keeps with the instrument: ``Diff-type``
  (``Debye-Scherrer`` or ``Bragg-Brentano``), ``Gonio.radius`` (mm), ``InstrName``.

Mapping to :class:`insitu_xrd.core.pattern.Instrument`: Lam -> wavelength_A, U V W X Y as they are
(the same GSAS-II CW units), Zero -> zero_deg, Gonio.radius -> distance_mm. GSAS-II has no item for
insitu-xrd's flat-detector sample displacement, so ``displacement_um`` travels in a header comment
``#insitu-xrd displacement_um: <value>`` after the items, which GSAS-II does not read. ``SH/L`` -> sh_l, the
Finger-Cox-Jephcoat axial-divergence asymmetry of the same (GSAS-II) profile function. ``Z`` (a
Gaussian term in 1/cos^2(theta)) is not part of the insitu-xrd profile model:
:func:`instrument_from_instprm` refuses a non-zero ``Z`` (the profile would be wrong). A Kalpha
doublet (``Lam1``, ``Lam2``, ``I(L2)/I(L1)`` > 0) -> wavelength_A = Lam1, kalpha2_wavelength_A =
Lam2, kalpha2_ratio = I(L2)/I(L1) (every reflection computed at both wavelengths); a file written
for such an Instrument has those three items instead of ``Lam``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insitu_xrd.core.pattern import Instrument
from insitu_xrd.errors import InsituXRDError

__all__ = [
    "InstprmFile",
    "parse_instprm",
    "read_instprm",
    "format_instprm",
    "write_instprm",
    "instrument_from_instprm",
    "read_instrument",
    "write_instrument",
]

HEADER = "#GSAS-II instrument parameter file; do not add/delete items!"
_DISPLACEMENT_COMMENT = re.compile(r"^#\s*insitu-xrd\s+displacement_um\s*:\s*([-+0-9.eE]+)", re.I)
_BANK_HEADER = re.compile(r"^#\s*Bank\s+(\d+)\s*:", re.I)
#: Item order GSAS-II writes for a CW X-ray histogram.
_CW_ORDER = ("Type", "Bank", "Lam", "Lam1", "Lam2", "I(L2)/I(L1)", "Zero", "Polariz.", "Azimuth",
             "U", "V", "W", "X", "Y", "Z", "SH/L")
_NUMERIC_REQUIRED = ("Zero", "U", "V", "W", "X", "Y")


@dataclass
class InstprmFile:
    """Contents of one bank of a ``.instprm`` file.

    items : every ``name:value`` item in file order (floats where the value is numeric), including
        ``Diff-type``, ``Gonio.radius`` and ``InstrName`` when present.
    displacement_um : the insitu-xrd sample displacement comment (um), 0 if absent.
    bank : the bank read (1 for single-bank files).
    comments : the ``#`` comment lines before the items (header line excluded).
    source : the file read, if any.
    """

    items: dict[str, Any]
    displacement_um: float = 0.0
    bank: int = 1
    comments: list[str] = field(default_factory=list)
    source: Path | None = None

    @property
    def type(self) -> str:
        return str(self.items.get("Type", ""))

    @property
    def wavelength_A(self) -> float | None:
        """Lam, or Lam1 for a Kalpha doublet; None if neither is present."""
        for key in ("Lam", "Lam1"):
            value = self.items.get(key)
            if isinstance(value, float):
                return value
        return None

    @property
    def is_doublet(self) -> bool:
        """True when the file describes a Kalpha1/Kalpha2 doublet with a non-zero Lam2 intensity."""
        ratio = self.items.get("I(L2)/I(L1)", 0.0)
        return "Lam2" in self.items and isinstance(ratio, float) and ratio > 0.0


def _where(source: Path | str | None) -> str:
    return f"instrument file {source}" if source is not None else "instrument parameters"


def _as_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def parse_instprm(text: str, bank: int | None = None, source: Path | str | None = None) -> InstprmFile:
    """Parse the text of a ``.instprm`` file (one bank: ``bank``, default the first).

    Raises InsituXRDError (naming ``source``) when the header is missing, an item is malformed, the
    bank does not exist or the file has no items.
    """
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    where = _where(source)
    if not lines or "GSAS-II" not in lines[0]:
        raise InsituXRDError(f"{where}: not a GSAS-II .instprm file (the first line must contain 'GSAS-II')")
    banks = sorted({int(m.group(1)) for ln in lines if (m := _BANK_HEADER.match(ln.strip()))})
    if banks:
        want = banks[0] if bank is None else int(bank)
        if want not in banks:
            raise InsituXRDError(f"{where}: bank {want} not found (banks in file: {banks})")
    else:
        want = 1 if bank is None else int(bank)
        if want != 1:
            raise InsituXRDError(f"{where}: has a single bank; bank {want} requested")
    # A multi-bank file starts with '#Bank n:' lines that carry 'GSAS-II' too.
    first_line_is_bank = bool(_BANK_HEADER.match(lines[0].strip()))
    items: dict[str, Any] = {}
    comments: list[str] = []
    displacement = 0.0
    in_bank = not banks
    found = trailer = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if lineno == 1 and not first_line_is_bank:
            continue
        if line.startswith("#"):
            m = _BANK_HEADER.match(line)
            if m:
                if found:
                    break
                in_bank = int(m.group(1)) == want
                continue
            if found:
                trailer = True  # GSAS-II stops at the first comment after the items: the rest is comments
            if in_bank:
                dm = _DISPLACEMENT_COMMENT.match(line)
                if dm:
                    displacement = float(dm.group(1))
                else:
                    comments.append(line)
            continue
        if not in_bank or trailer:
            continue  # GSAS-II reads no item after a comment that follows the items; neither do we
        found = True
        if '"""' in line or "'''" in line:
            raise InsituXRDError(f"{where}, line {lineno}: multi-line (TOF/EDX table) items are not supported")
        for chunk in line.replace(" ", "").split(";"):
            if not chunk:
                continue
            if ":" not in chunk:
                raise InsituXRDError(f"{where}, line {lineno}: item {chunk!r} is not of the form name:value")
            name, value = chunk.split(":", 1)
            items[name] = _as_value(value)
    if not items:
        raise InsituXRDError(f"{where}: no name:value items found")
    return InstprmFile(items=items, displacement_um=displacement, bank=want, comments=comments,
                       source=Path(source) if source is not None else None)


def read_instprm(path: str | Path, bank: int | None = None) -> InstprmFile:
    """Read a ``.instprm`` file (see :func:`parse_instprm`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InsituXRDError(f"instrument file {path}: does not exist") from None
    except OSError as exc:
        raise InsituXRDError(f"instrument file {path}: cannot be read ({exc})") from None
    return parse_instprm(text, bank=bank, source=path)


def instrument_from_instprm(
    prm: InstprmFile, wavelength_A: float | None = None, wavelength_tolerance: float = 1e-4,
    apply_polarization: bool = False,
) -> Instrument:
    """Build an :class:`Instrument` from a parsed file.

    wavelength_A: the wavelength of the data (A). If given and the file's Lam differs by more than
    ``wavelength_tolerance`` (relative), this is an error: U,V,W,X,Y and Zero are angle-dependent
    and belong to one wavelength. If the file has no Lam, wavelength_A is required.
    apply_polarization: put the file's ``Polariz.`` into ``Instrument.polarization`` (applied to
    the calculated intensities: 1D laboratory data, where no integration divided it out); by
    default it is left out (patterns integrated by pyFAI have it removed).
    """
    where = _where(prm.source)
    if prm.type and not prm.type.upper().startswith("PX"):
        raise InsituXRDError(f"{where}: Type {prm.type!r} is not constant-wavelength X-ray (PXC)")
    missing = [k for k in _NUMERIC_REQUIRED if not isinstance(prm.items.get(k), float)]
    if missing:
        raise InsituXRDError(f"{where}: missing or non-numeric items {missing}")
    doublet: dict[str, float] = {}
    if prm.is_doublet:
        lam1, lam2, ratio = (prm.items.get(k) for k in ("Lam1", "Lam2", "I(L2)/I(L1)"))
        if not (isinstance(lam1, float) and isinstance(lam2, float) and lam1 > 0 and lam2 > 0):
            raise InsituXRDError(f"{where}: a Kalpha doublet needs numeric Lam1 and Lam2 > 0 (got {lam1!r}, {lam2!r})")
        if not 0.0 < ratio <= 1.0:  # type: ignore[operator]
            raise InsituXRDError(f"{where}: I(L2)/I(L1) = {ratio} is outside (0, 1] (about 0.5 for a Kalpha doublet)")
        doublet = {"kalpha2_wavelength_A": lam2, "kalpha2_ratio": float(ratio)}  # type: ignore[arg-type]
    z = prm.items.get("Z", 0.0)
    if isinstance(z, float) and z != 0.0:
        raise InsituXRDError(f"{where}: Z = {z} is not supported by the insitu-xrd profile model (set Z:0.0 and refine W)")
    file_wl = prm.wavelength_A
    if file_wl is None and wavelength_A is None:
        raise InsituXRDError(f"{where}: no Lam item and no wavelength given")
    if file_wl is not None and wavelength_A is not None:
        if abs(file_wl - wavelength_A) > wavelength_tolerance * wavelength_A:
            raise InsituXRDError(
                f"{where}: Lam = {file_wl} A but the data wavelength is {wavelength_A} A; the profile "
                "parameters belong to the file's wavelength (make the instrument file at the data wavelength)"
            )
    wl = float(wavelength_A if wavelength_A is not None else file_wl)  # type: ignore[arg-type]
    radius = prm.items.get("Gonio.radius")
    kwargs: dict[str, float] = {}
    if isinstance(radius, float) and radius > 0:
        kwargs["distance_mm"] = radius
    sh_l = prm.items.get("SH/L", 0.0)
    if isinstance(sh_l, float):
        if not 0.0 <= sh_l <= 0.1:
            raise InsituXRDError(f"{where}: SH/L = {sh_l} is outside [0, 0.1] (GSAS-II axial-divergence asymmetry S/L + H/L)")
        kwargs["sh_l"] = sh_l
    pol = prm.items.get("Polariz.")
    if apply_polarization and isinstance(pol, float):
        if not 0.0 <= pol <= 1.0:
            raise InsituXRDError(f"{where}: Polariz. = {pol} is outside [0, 1] (GSAS-II P + (1 - P) cos^2 2theta)")
        kwargs["polarization"] = pol
    return Instrument(
        wavelength_A=wl,
        U=prm.items["U"], V=prm.items["V"], W=prm.items["W"], X=prm.items["X"], Y=prm.items["Y"],
        zero_deg=prm.items["Zero"], displacement_um=float(prm.displacement_um), **kwargs, **doublet,
    )


def read_instrument(path: str | Path, wavelength_A: float | None = None, bank: int | None = None,
                    apply_polarization: bool = False) -> Instrument:
    """Read a ``.instprm`` file straight into an :class:`Instrument` (see
    :func:`instrument_from_instprm` for the wavelength check and ``apply_polarization``)."""
    return instrument_from_instprm(read_instprm(path, bank=bank), wavelength_A=wavelength_A,
                                   apply_polarization=apply_polarization)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InsituXRDError(f"instrument parameter value {value} is not finite")
        return repr(value)
    return str(value)


def format_instprm(
    instrument: Instrument,
    polarization: float = 0.99,
    azimuth_deg: float = 0.0,
    sh_l: float | None = None,
    comments: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> str:
    """Text of a single-bank CW ``.instprm`` file for ``instrument``.

    polarization: GSAS-II ``Polariz.`` (0.99 for a horizontally polarised synchrotron beam). It
        enters insitu-xrd fits only for Bragg-Brentano data (``profile.geometry: bragg_brentano``
        or ``Diff-type:Bragg-Brentano``, 1D laboratory patterns; `insitu_xrd.pipeline.refine_setup.load_instrument`);
        integrated 2D patterns have it divided out.
    sh_l: GSAS-II SH/L (FCJ axial-divergence asymmetry); default ``instrument.sh_l`` (0 unless
        refined), so GSAS-II and insitu-xrd compute the same profile from the file.
    comments: lines written as ``# ...`` after the items (provenance, fit quality; GSAS-II stops
        reading at the first of them); they must not contain 'Bank' (a bank header).
    extra: items overriding or adding to the standard ones (e.g. ``{"InstrName": "11-ID-C"}``).
    """
    items: dict[str, Any] = {
        "Type": "PXC",
        "Bank": 1.0,
        "Lam": float(instrument.wavelength_A),
        "Zero": float(instrument.zero_deg),
        "Polariz.": float(polarization),
        "Azimuth": float(azimuth_deg),
        "U": float(instrument.U),
        "V": float(instrument.V),
        "W": float(instrument.W),
        "X": float(instrument.X),
        "Y": float(instrument.Y),
        "Z": 0.0,
        "SH/L": float(instrument.sh_l if sh_l is None else sh_l),
    }
    tail: dict[str, Any] = {"Diff-type": "Debye-Scherrer", "Gonio.radius": float(instrument.distance_mm)}
    if instrument.kalpha2 is not None:  # GSAS-II's doublet items replace Lam
        lam2, ratio = instrument.kalpha2
        rest = {k: v for k, v in items.items() if k not in ("Type", "Bank", "Lam")}
        items = {"Type": "PXC", "Bank": 1.0, "Lam1": float(instrument.wavelength_A), "Lam2": lam2,
                 "I(L2)/I(L1)": ratio, **rest}
    for key, value in (extra or {}).items():
        (items if key in _CW_ORDER else tail)[key] = value
    comment_lines = []
    for c in comments:
        for sub in str(c).splitlines() or [""]:
            if re.search(r"bank", sub, re.I):
                raise InsituXRDError(f"instprm comment {sub!r} must not contain 'Bank' (GSAS-II reads it as a bank header)")
            comment_lines.append("# " + sub)
    ordered = [k for k in _CW_ORDER if k in items] + [k for k in items if k not in _CW_ORDER]
    lines = [HEADER] + [f"{k}:{_fmt(items[k])}" for k in ordered] + [f"{k}:{_fmt(v)}" for k, v in tail.items()]
    # comments after the items: GSAS-II's reader takes a comment line before them for an item
    lines += [f"#insitu-xrd displacement_um: {_fmt(float(instrument.displacement_um))}"] + comment_lines
    return "\n".join(lines) + "\n"


def write_instprm(path: str | Path, prm: InstprmFile) -> Path:
    """Write a parsed file back (items in their order, comments, displacement comment)."""
    path = Path(path)
    lines = [HEADER] + [f"{k}:{_fmt(v)}" for k, v in prm.items.items()]
    lines.append(f"#insitu-xrd displacement_um: {_fmt(float(prm.displacement_um))}")  # after the items (GSAS-II)
    lines += [c if c.startswith("#") else "# " + c for c in prm.comments]
    return _atomic_write(path, "\n".join(lines) + "\n")


def write_instrument(
    path: str | Path,
    instrument: Instrument,
    polarization: float = 0.99,
    azimuth_deg: float = 0.0,
    sh_l: float | None = None,
    comments: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``instrument`` as a GSAS-II ``.instprm`` file (see :func:`format_instprm`)."""
    text = format_instprm(instrument, polarization, azimuth_deg, sh_l, comments, extra)
    return _atomic_write(Path(path), text)


def _atomic_write(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InsituXRDError(f"instrument file {path}: cannot be written ({exc})") from None
    return path
