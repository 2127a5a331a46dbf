"""PONI geometry files (pyFAI): read with validation, write, detector orientation.

pyFAI itself accepts almost any text as a PONI (a garbage file gives a default geometry at 1 m),
so :func:`load_poni` checks the keys first and raises :class:`InsituXRDError` naming the file and
the problem: missing file, no ``Distance``/``Poni1``/``Poni2``, no detector definition
(``Detector`` or ``PixelSize1/2``), non-numeric or non-physical values, unknown detector name.

Orientation: pyFAI >= 2025 stores the detector orientation (1-4, ``Detector_config`` key
``orientation``; 3 = BottomRight, pyFAI's historical default). PONI files written before that
(e.g. DIOPTAS 2015, ``poni_version`` 1 or 2 without ``orientation``) are read with orientation 3,
which for some tools' files means the image is flipped (see docs/integration.md). ``orientation``
in :func:`load_poni` overrides the file's value; :func:`poni_orientation` reports what the file
stated (None if nothing).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from insitu_xrd.errors import InsituXRDError

__all__ = ["read_poni_fields", "load_poni", "poni_text", "write_poni", "poni_orientation", "wavelength_A_of"]

_REQUIRED = ("Distance", "Poni1", "Poni2")


def read_poni_fields(path: str | Path) -> dict[str, str]:
    """The ``Key: value`` fields of a PONI file (comments dropped; key case kept).

    Raises:
        InsituXRDError: missing/unreadable file, or a file without PONI keys.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InsituXRDError(f"PONI file {path}: does not exist") from None
    except OSError as exc:
        raise InsituXRDError(f"PONI file {path}: cannot be read ({exc})") from None
    if "\x00" in text[:2048]:
        raise InsituXRDError(f"PONI file {path}: is binary, not a pyFAI PONI text file")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_][\w ]*?)\s*[:=]\s*(.*)$", line)
        if m:
            fields[m.group(1).strip()] = m.group(2).strip()
    return fields


def _num(fields: dict[str, str], key: str, path: Path) -> float:
    try:
        val = float(fields[key])
    except ValueError:
        raise InsituXRDError(f"PONI file {path}: {key} = {fields[key]!r} is not a number") from None
    if not math.isfinite(val):
        raise InsituXRDError(f"PONI file {path}: {key} = {fields[key]!r} is not finite")
    return val


def poni_orientation(path: str | Path) -> int | None:
    """Detector orientation (1-4) stated in the PONI's Detector_config, or None if absent."""
    fields = read_poni_fields(path)
    cfg = fields.get("Detector_config")
    if not cfg:
        return None
    try:
        val = json.loads(cfg).get("orientation")
    except (json.JSONDecodeError, AttributeError):
        return None
    return int(val) if val is not None else None


def load_poni(path: str | Path, orientation: int | None = None) -> Any:
    """Validated pyFAI ``AzimuthalIntegrator`` from a PONI file.

    Args:
        path: the PONI file.
        orientation: detector orientation 1-4 to impose (overrides the file); None keeps the
            file's (pyFAI default 3 when the file has none).

    Returns:
        ``pyFAI.integrator.azimuthal.AzimuthalIntegrator``; its ``wavelength`` may be None when
        the PONI has none (the caller must then supply one).

    Raises:
        InsituXRDError: see module docstring.
    """
    path = Path(path)
    fields = read_poni_fields(path)
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InsituXRDError(f"PONI file {path}: missing {', '.join(missing)} (not a pyFAI PONI file?)")
    dist = _num(fields, "Distance", path)
    if not 1e-3 < dist < 100:
        raise InsituXRDError(f"PONI file {path}: Distance = {dist} m is not physical (expect metres, e.g. 1.0)")
    for key in ("Poni1", "Poni2", "Rot1", "Rot2", "Rot3"):
        if key in fields:
            _num(fields, key, path)
    if "Wavelength" in fields:
        wl = _num(fields, "Wavelength", path)
        if not 1e-12 < wl < 1e-8:
            raise InsituXRDError(f"PONI file {path}: Wavelength = {wl} m is not physical (expect metres, e.g. 1.173e-11)")
    if "Detector" not in fields and not ("PixelSize1" in fields and "PixelSize2" in fields):
        raise InsituXRDError(f"PONI file {path}: no detector (needs 'Detector' or 'PixelSize1'/'PixelSize2')")
    if orientation is not None and orientation not in (1, 2, 3, 4):
        raise InsituXRDError(f"detector orientation {orientation}: must be 1, 2, 3 or 4")

    import pyFAI
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    try:
        loaded = pyFAI.load(str(path))
    except Exception as exc:  # pyFAI raises KeyError/ValueError/RuntimeError for bad detector specs
        raise InsituXRDError(f"PONI file {path}: pyFAI cannot use it ({type(exc).__name__}: {exc})") from None
    ai = loaded if isinstance(loaded, AzimuthalIntegrator) else AzimuthalIntegrator()
    if ai is not loaded:
        ai.set_config(loaded.get_config())
    if orientation is not None:
        cfg = ai.get_config()
        det_cfg = dict(cfg.get("detector_config") or {})
        det_cfg["orientation"] = int(orientation)
        cfg["detector_config"] = det_cfg
        try:
            ai = AzimuthalIntegrator()
            ai.set_config(cfg)
        except Exception as exc:
            raise InsituXRDError(f"PONI file {path}: cannot set orientation {orientation} ({exc})") from None
    det = ai.detector
    sizes = (getattr(det, "pixel1", None), getattr(det, "pixel2", None))
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in sizes):
        raise InsituXRDError(f"PONI file {path}: detector {fields.get('Detector')!r} has no pixel size "
                             f"(pixel1, pixel2 = {sizes}); give Detector_config or PixelSize1/PixelSize2")
    return ai


def wavelength_A_of(ai: Any) -> float | None:
    """Wavelength of an integrator in Angstrom, or None if unset."""
    wl = getattr(ai, "wavelength", None)
    return None if not wl else float(wl) * 1e10


def poni_text(ai: Any) -> str:
    """PONI (pyFAI format, version of the installed pyFAI) text of an integrator's geometry."""
    from pyFAI.io.ponifile import PoniFile
    import io

    buf = io.StringIO()
    PoniFile(ai).write(buf)
    return buf.getvalue()


def write_poni(ai: Any, path: str | Path) -> Path:
    """Write an integrator's geometry as a PONI file (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(poni_text(ai), encoding="utf-8")
    tmp.replace(path)
    return path
