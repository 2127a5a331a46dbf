"""Detector frames: discovery (paths, globs, folders, HDF5 stacks), reading, and frame times.

Used by ``insitu-xrd integrate`` and by the pipeline (recipe ``frames:`` block).

Discovery
---------
:func:`discover_frames` expands a list of specs (file paths, glob patterns such as
``run/*.tif``, or folders) into :class:`FrameRef` objects, one per 2D frame, in natural sort order
(``f_2.tif`` before ``f_10.tif``). Folders contribute every file with a known image extension
(:data:`IMAGE_EXTENSIONS`; sidecars like ``.metadata``/``.csv`` are ignored). HDF5/NeXus files
(``.h5 .hdf5 .hdf .nxs``, Eiger ``*_master.h5``) are expanded into one ref per frame of the image
stack (a 3D dataset; ``/entry/data/data`` or the Eiger ``/entry/data/data_000001...`` links, or
the first 3D dataset found, or ``hdf5_dataset``); their names are ``file.h5:<index>``. Every other
file is read by fabio (TIFF, EDF, CBF, SPE, MAR, ADSC, ...); multi-frame files of the formats that
hold series (GE ``.ge*``, SPE, EDF) give one ref per frame, named ``file:<index>`` like stacks.

Frames are read one at a time (:func:`read_frame`), so a series is never held in memory.

Frame times
-----------
A :class:`TimeSource` says where times come from (recipe ``time_source``):

* ``"header"`` (default): from the frame's own metadata, first match wins:

  - ``time_s`` (seconds since the experiment start; simulator TIFF imageDescription lines
    ``key=value``, EDF header keys, HDF5 ``time_s`` dataset beside the stack).
  - absolute times, converted to seconds after ``time_zero`` (see below):
    TIFF imageDescription ``acquisition_time`` (ISO 8601; naive = UTC);
    QXRD sidecar ``<frame>.metadata`` ``timeStamp`` (Unix epoch s) or ``dateString``;
    EDF ``time_of_day`` (epoch s), ``acquisition_time``, ``date``/``time``/``Date``;
    CBF (Pilatus) date line ``# 2012-09-20T13:40:48.123`` in ``_array_data.header_contents``;
    HDF5/NeXus ``/entry/start_time`` (or Eiger ``detectorSpecific/data_collection_date``)
    plus ``index * frame_time`` (``/entry/instrument/detector/frame_time`` or ``count_time``);
    as a last resort the TIFF ``DateTime`` tag (fabio ``date``).
* ``{"sidecar": "times.csv"}``: a CSV with columns ``file,time_s`` (file relative to the CSV's
  folder, or ``name.h5:index`` for stack frames) — the simulator writes ``frames/times.csv``.
* ``{"period_s": 10}`` (optionally ``"start_s"``): time_s = start_s + position * period_s, with
  position the frame's place in the sorted discovery list.

Absolute times become ``time_s = epoch_s - time_zero_epoch_s``; ``time_zero_epoch_s`` is given
by the user (``FrameClock(time_zero_epoch_s=...)``) or is the first absolute time seen. A frame
whose time cannot be found gets ``time_s = NaN`` (never an invented time).
"""

from __future__ import annotations

import configparser
import csv
import datetime as _dt
import glob as _glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from insitu_xrd.errors import FrameError, InsituXRDError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MULTIFRAME_EXTENSIONS",
    "HDF5_EXTENSIONS",
    "FrameRef",
    "Frame",
    "TimeSource",
    "FrameClock",
    "discover_frames",
    "read_frame",
    "read_frame_header",
    "parse_time_source",
    "load_sidecar_times",
    "header_times",
    "parse_datetime_epoch_s",
    "natural_sort_key",
    "iter_read_frames",
]

HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
IMAGE_EXTENSIONS = (
    ".tif", ".tiff", ".edf", ".cbf", ".spe", ".img", ".mar3450", ".mar2300", ".mccd", ".sfrm",
    ".gfrm", ".ge", ".ge2", ".ge3", ".ge4", ".ge5", ".raw", ".npy", ".fit2d", ".mask", ".mar",
    ".gz", ".bz2",
) + HDF5_EXTENSIONS


def natural_sort_key(text: str) -> list[Any]:
    """Sort key treating digit runs as numbers: frame_2 < frame_10."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class FrameRef:
    """One 2D frame: a file, and for stacks the dataset and index inside it.

    Attributes:
        path: the file (absolute).
        index: position in the file's stack (HDF5 global index over all data_0000N parts, or
            the frame number in a multi-frame fabio file); None for single-frame files.
        dataset: HDF5 dataset path holding the frame; None for fabio files.
        local_index: index inside ``dataset`` (differs from ``index`` for Eiger split data).
    """

    path: Path
    index: int | None = None
    dataset: str | None = None
    local_index: int | None = None

    @property
    def name(self) -> str:
        """Short name stored as ``frame_name``: file name, or ``file:index`` for stacks."""
        return self.path.name if self.index is None else f"{self.path.name}:{self.index}"

    @property
    def key(self) -> str:
        """Unique identity used to resume work: absolute path (plus ``:index`` for stacks)."""
        return str(self.path) if self.index is None else f"{self.path}:{self.index}"

    @property
    def is_hdf5(self) -> bool:
        return self.dataset is not None


@dataclass
class Frame:
    """A frame read from disk: pixel data (native dtype), header dict, and its ref."""

    ref: FrameRef
    data: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)


#: fabio formats that may hold several frames in one file (checked at discovery)
MULTIFRAME_EXTENSIONS = (".ge", ".ge1", ".ge2", ".ge3", ".ge4", ".ge5", ".spe", ".edf")

# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------
def _edf_may_hold_more_frames(path: Path) -> bool:
    """Cheap test from the first EDF header (no pixel data read): is the file larger than one
    header block plus its data? A folder of single-frame EDFs is then not read twice."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
        size = path.stat().st_size
    except OSError:
        return False  # reported when the frame is read
    end = head.find(b"}")
    m = re.search(rb"\bSize\s*=\s*(\d+)", head[:end]) if end > 0 else None
    if m is None:
        return True  # unusual header: let fabio count the frames
    return size >= end + 2 + int(m.group(1)) + 512  # a second frame needs at least one more header block


def _fabio_frame_count(path: Path) -> int:
    """Number of frames in a fabio file of a multi-frame format (1 when unknown or unreadable:
    a broken file is reported by name when it is read)."""
    suffix = path.suffix.lower()
    if suffix not in MULTIFRAME_EXTENSIONS or (suffix == ".edf" and not _edf_may_hold_more_frames(path)):
        return 1
    try:
        import fabio

        with fabio.open(str(path)) as img:
            return max(1, int(getattr(img, "nframes", 1) or 1))
    except Exception:  # fabio raises many types for corrupt files
        return 1


def _is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in HDF5_EXTENSIONS


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _hdf5_stack_datasets(path: Path, dataset: str | None) -> list[tuple[str, int]]:
    """(dataset path, n frames) of the image stack(s) of an HDF5/NeXus file."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers Eiger bitshuffle/LZ4 filters)

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise FrameError(f"frame file {path}: cannot be opened as HDF5 ({exc})") from None
    try:
        with fh:
            return _stack_datasets_in(fh, path, dataset)
    except FrameError:
        raise
    except Exception as exc:  # a damaged file: h5py raises RuntimeError, KeyError, ValueError, ...
        raise FrameError(f"frame file {path}: damaged HDF5 ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _stack_datasets_in(fh: Any, path: Path, dataset: str | None) -> list[tuple[str, int]]:
    import h5py

    def shape_of(name: str) -> tuple[int, ...] | None:
        try:
            obj = fh[name]
        except (KeyError, OSError):  # broken external link (missing Eiger data file)
            return None
        return obj.shape if isinstance(obj, h5py.Dataset) else None

    if dataset is not None:
        shp = shape_of(dataset)
        if shp is None:
            raise FrameError(f"frame file {path}: dataset {dataset!r} not found")
        if len(shp) == 2:
            return [(dataset, 0)]
        if len(shp) != 3:
            raise FrameError(f"frame file {path}: dataset {dataset!r} has shape {shp}, need (n, ny, nx)")
        return [(dataset, shp[0])]
    # Eiger master: /entry/data/data_000001, data_000002 ... (external links)
    if "entry/data" in fh and isinstance(fh["entry/data"], h5py.Group):
        names = sorted(k for k in fh["entry/data"].keys() if re.fullmatch(r"data_\d+", k))
        parts = []
        for k in names:
            shp = shape_of(f"entry/data/{k}")
            if shp is not None and len(shp) == 3:
                parts.append((f"/entry/data/{k}", shp[0]))
            elif shp is None:
                raise FrameError(f"frame file {path}: /entry/data/{k} cannot be opened "
                                 "(missing Eiger data file next to the master?)")
        if parts:
            return parts
    # NeXus default plot signal, then the conventional names, then any 3D dataset
    candidates: list[str] = []
    try:
        entry = fh.attrs.get("default")
        entry = entry.decode() if isinstance(entry, bytes) else entry
        if entry and entry in fh:
            grp = fh[entry]
            nxdata = grp.attrs.get("default")
            nxdata = nxdata.decode() if isinstance(nxdata, bytes) else nxdata
            if nxdata and nxdata in grp:
                sig = grp[nxdata].attrs.get("signal")
                sig = sig.decode() if isinstance(sig, bytes) else sig
                if sig:
                    candidates.append(f"/{entry}/{nxdata}/{sig}")
    except (KeyError, OSError, AttributeError):
        pass
    candidates += ["/entry/data/data", "/entry/instrument/detector/data", "/data", "/images"]
    for cand in candidates:
        shp = shape_of(cand)
        if shp is not None and len(shp) == 3:
            return [(cand, shp[0])]
    found: list[tuple[str, int]] = []

    def visit(name: str, obj: Any) -> None:
        if not found and isinstance(obj, h5py.Dataset) and obj.ndim == 3 and min(obj.shape[1:]) >= 8:
            found.append(("/" + name, obj.shape[0]))

    fh.visititems(visit)
    if found:
        return found
    raise FrameError(f"frame file {path}: no 3D image stack found (give the dataset path)")


def discover_frames(
    specs: str | Path | Sequence[str | Path],
    *,
    hdf5_dataset: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[FrameRef]:
    """Expand paths / globs / folders into frame refs, natural-sorted per spec, duplicates dropped.

    Args:
        specs: one spec or a list; each is a file, a glob (``data/*.tif``, ``**`` allowed), or a
            folder (all image files directly inside it).
        hdf5_dataset: dataset path of the image stack in HDF5 files (default: auto-detect).
        extensions: file suffixes taken from folders (lower case, with dot).

    Raises:
        InsituXRDError: a spec matches nothing; an HDF5 file holds no image stack.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    files: list[Path] = []
    for spec in specs:
        text = str(spec)
        p = Path(text).expanduser()
        if p.is_dir():
            matched = [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in extensions]
            if not matched:
                raise InsituXRDError(f"frames folder {p}: contains no image files ({', '.join(extensions[:6])}, ...)")
        elif p.is_file():
            matched = [p]
        elif _has_glob(text):
            matched = [Path(q) for q in _glob.glob(os.path.expanduser(text), recursive=True) if Path(q).is_file()]
            matched = [q for q in matched if not q.name.endswith((".metadata", ".csv", ".poni", ".json", ".yaml"))]
            if not matched:
                raise InsituXRDError(f"frames pattern {text!r}: matches no file")
        else:
            raise InsituXRDError(f"frames {text!r}: no such file or folder")
        files.extend(sorted(matched, key=lambda q: natural_sort_key(str(q))))

    # Eiger: <prefix>_master.h5 links to <prefix>_data_00000N.h5; list only the master
    masters = {f.name[: -len("_master.h5")] for f in files if f.name.endswith("_master.h5")}
    files = [f for f in files if not (re.fullmatch(r"(.+)_data_\d+\.h5", f.name)
                                      and re.fullmatch(r"(.+)_data_\d+\.h5", f.name).group(1) in masters)]
    refs: list[FrameRef] = []
    seen: set[Path] = set()
    for f in files:
        f = f.resolve()
        if f in seen:
            continue
        seen.add(f)
        if _is_hdf5(f):
            try:
                parts = _hdf5_stack_datasets(f, hdf5_dataset)
            except FrameError:
                # an unreadable stack is one bad "frame", reported later like any other
                refs.append(FrameRef(f, index=0, dataset="?", local_index=0))
                continue
            g = 0
            for dset, n in parts:
                for i in range(n):
                    refs.append(FrameRef(f, index=g, dataset=dset, local_index=i))
                    g += 1
        else:
            n = _fabio_frame_count(f)
            if n == 1:
                refs.append(FrameRef(f))
            else:
                refs.extend(FrameRef(f, index=i, local_index=i) for i in range(n))
    return refs


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _parse_key_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in str(text).splitlines():
        m = re.match(r"\s*([A-Za-z_][\w.\-]*)\s*[=:]\s*(.*?)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _qxrd_sidecar(path: Path) -> dict[str, str]:
    side = path.with_name(path.name + ".metadata")
    if not side.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keep key case (timeStamp)
    try:
        parser.read(side, encoding="utf-8")
    except (configparser.Error, UnicodeError, OSError):
        return {}
    return dict(parser["metadata"]) if parser.has_section("metadata") else {}


def _read_hdf5_frame(ref: FrameRef) -> tuple[np.ndarray, dict[str, Any]]:
    import h5py
    import hdf5plugin  # noqa: F401

    if ref.dataset == "?":
        raise FrameError(f"frame {ref.name}: file cannot be opened as an HDF5 image stack")
    try:
        with h5py.File(ref.path, "r") as fh:
            dset = fh[ref.dataset]
            data = dset[()] if dset.ndim == 2 else dset[ref.local_index]
            header = _hdf5_time_header(fh, ref)
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError, RuntimeError... for damaged files
        raise FrameError(f"frame {ref.name}: cannot read {ref.dataset} ({type(exc).__name__}: {_first_line(exc)})") from None
    return np.asarray(data), header


def _h5_scalar(fh: Any, name: str) -> Any:
    try:
        val = fh[name][()]
    except (KeyError, OSError, TypeError):
        return None
    if isinstance(val, bytes):
        return val.decode(errors="replace")
    if isinstance(val, np.ndarray):
        if val.dtype.kind in "SO" and val.size == 1:
            v = val.reshape(-1)[0]
            return v.decode(errors="replace") if isinstance(v, bytes) else v
        return val
    return val


def _hdf5_time_header(fh: Any, ref: FrameRef) -> dict[str, Any]:
    header: dict[str, Any] = {}
    parent = ref.dataset.rsplit("/", 1)[0] or "/"
    for name in (f"{parent}/time_s", "/entry/time_s"):
        arr = _h5_scalar(fh, name)
        if isinstance(arr, np.ndarray) and arr.ndim == 1 and ref.index is not None and ref.index < arr.size:
            header["time_s"] = float(arr[ref.index])
            break
    for name in ("/entry/start_time", "/entry/instrument/detector/detectorSpecific/data_collection_date"):
        val = _h5_scalar(fh, name)
        if isinstance(val, str) and val.strip():
            header["start_time"] = val.strip()
            break
    for name in ("/entry/instrument/detector/frame_time", "/entry/instrument/detector/count_time"):
        val = _h5_scalar(fh, name)
        if val is not None:
            try:
                header["frame_period_s"] = float(np.asarray(val).reshape(-1)[0])
                break
            except (TypeError, ValueError):
                pass
    header["hdf5_index"] = ref.index
    return header


def read_frame(ref: FrameRef) -> Frame:
    """Read one frame (pixel data in its native dtype, plus header/time metadata).

    Raises:
        FrameError: the file is missing, unreadable, truncated, or not a 2D image; the message
            names the frame.
    """
    if not ref.path.is_file():
        raise FrameError(f"frame {ref.name}: file {ref.path} does not exist")
    if ref.is_hdf5:
        data, header = _read_hdf5_frame(ref)
    else:
        import fabio

        _check_cbf(ref)
        try:
            # a frame of a multi-frame file is read alone (fabio seeks to it)
            img = fabio.open(str(ref.path)) if ref.index is None else fabio.open(str(ref.path), frame=ref.index)
            data = img.data
            header = dict(img.header)
        except Exception as exc:  # fabio raises many types for corrupt files
            raise FrameError(f"frame {ref.name}: cannot be read by fabio ({type(exc).__name__}: {exc})") from None
        if data is None:
            raise FrameError(f"frame {ref.name}: fabio returned no pixel data (truncated or unknown format)")
        if getattr(img, "incomplete_file", False):  # fabio pads a short EDF/... with zeros
            raise FrameError(f"frame {ref.name}: file is shorter than its header says (truncated or still being written)")
        _check_edf_header(ref, header, np.asarray(data))
        _check_tiff_strips(ref, header, np.asarray(data))
        desc = header.get("imageDescription")
        if desc:
            for k, v in _parse_key_values(desc).items():
                header.setdefault(k, v)
        for k, v in _qxrd_sidecar(ref.path).items():
            header.setdefault("qxrd." + k, v)
        data = np.asarray(data)
    if data.ndim != 2 or min(data.shape) == 0:
        raise FrameError(f"frame {ref.name}: pixel data has shape {data.shape}, expected a non-empty 2D image")
    return Frame(ref=ref, data=data, header=header)


_CBF_STARTER = b"\x0c\x1a\x04\xd5"  # start of a CBF binary section (after its MIME header)


def _check_cbf(ref: FrameRef) -> None:
    """Refuse a CBF whose binary section is missing, short or fails its Content-MD5 before fabio
    sees it: fabio 2026.6 loops forever on a CBF without the binary starter or the
    ``--CIF-BINARY-FORMAT-SECTION--`` line (a file cut in its header, e.g. still being written),
    pads a short one, and does not check the MD5."""
    import base64
    import hashlib

    try:
        with open(ref.path, "rb") as fh:
            head = fh.read(6)
            if ref.path.suffix.lower() != ".cbf" and head != b"###CBF":
                return
            raw = head + fh.read()
    except OSError as exc:
        raise FrameError(f"frame {ref.name}: cannot be read ({exc})") from None
    start = raw.find(_CBF_STARTER)
    if start < 0:
        raise FrameError(f"frame {ref.name}: CBF without a binary section (truncated or still being written)")
    section = raw.find(b"--CIF-BINARY-FORMAT-SECTION--", 0, start)
    if section < 0 or section > 8000:  # fabio looks for it in the first 8 kB only (else loops)
        raise FrameError(f"frame {ref.name}: CBF without its --CIF-BINARY-FORMAT-SECTION-- line in the first 8 kB (damaged)")
    mime = raw[section:start].decode("ascii", errors="replace")
    size = re.search(r"X-Binary-Size\s*:\s*(\d+)", mime)
    body = raw[start + len(_CBF_STARTER):]
    if size is not None and len(body) < int(size.group(1)):
        raise FrameError(f"frame {ref.name}: CBF binary section has {len(body)} of its {size.group(1)} bytes (truncated)")
    md5 = re.search(r"Content-MD5\s*:\s*(\S+)", mime)
    if size is not None and md5 is not None:
        digest = base64.b64encode(hashlib.md5(body[:int(size.group(1))]).digest()).decode("ascii")
        if digest != md5.group(1).strip():
            raise FrameError(f"frame {ref.name}: CBF pixel data fail their Content-MD5 (damaged file)")


def _check_edf_header(ref: FrameRef, header: dict[str, Any], data: np.ndarray) -> None:
    """An EDF's pixels must be what its header says: Dim_2 x Dim_1 pixels of Size bytes in all
    (fabio falls back to other dimensions when a damaged header cannot be parsed)."""
    if "Dim_1" not in header or "EDF_DataBlockID" not in header and ref.path.suffix.lower() != ".edf":
        return
    if str(header.get("Compression", "none")).strip().lower() not in ("none", "", "no"):
        return  # the compressed size says nothing of the pixels
    try:
        dims = (int(str(header["Dim_2"]).strip()), int(str(header["Dim_1"]).strip())) if "Dim_2" in header else None
        size = int(str(header["Size"]).strip()) if "Size" in header else None
    except ValueError:
        raise FrameError(f"frame {ref.name}: EDF header dimensions unreadable (Dim_1 {header.get('Dim_1')!r}, "
                         f"Dim_2 {header.get('Dim_2')!r}, Size {header.get('Size')!r}): damaged header") from None
    if (dims is not None and dims != data.shape) or (size is not None and size != data.nbytes):
        raise FrameError(f"frame {ref.name}: EDF header says {dims} pixels of {size} bytes, fabio read "
                         f"{data.shape} ({data.nbytes} bytes): damaged header")


def _check_tiff_strips(ref: FrameRef, header: dict[str, Any], data: np.ndarray) -> None:
    """An uncompressed TIFF's strips must hold exactly the pixels read (a damaged ImageLength tag
    makes PIL, fabio's fallback, return an image padded with zeros to the size it claims)."""
    counts = header.get("stripByteCounts")
    if counts is None or header.get("compression") not in (False, 1, "1", None):
        return
    try:
        total = int(np.sum(np.asarray(counts, dtype=np.int64)))
    except (TypeError, ValueError):
        return
    if total != data.nbytes:
        raise FrameError(f"frame {ref.name}: TIFF strips hold {total} bytes but the image read is {data.shape} "
                         f"({data.nbytes} bytes): damaged header")


def read_frame_header(ref: FrameRef) -> dict[str, Any]:
    """Header of one frame (reads the file; for fabio formats this includes the pixels)."""
    return read_frame(ref).header


# --------------------------------------------------------------------------------------------
# times
# --------------------------------------------------------------------------------------------
_DATE_FORMATS = (
    "%a %b %d %H:%M:%S %Y",
    "%Y.%m.%d : %H:%M:%S.%f",
    "%Y.%m.%d : %H:%M:%S",
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M:%S",
    "%d-%b-%Y %H:%M:%S",
    "%Y:%m:%d %H:%M:%S",  # TIFF DateTime tag
)


def parse_datetime_epoch_s(text: str) -> float | None:
    """Unix epoch seconds from a date string (ISO 8601 and common detector formats).

    Naive times (no zone) are taken as UTC. Returns None if the text is not a date.
    """
    s = str(text).strip()
    if not s:
        return None
    try:
        d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        d = None
        for fmt in _DATE_FORMATS:
            try:
                d = _dt.datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
        if d is None:
            return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def _float_or_none(val: Any) -> float | None:
    try:
        out = float(str(val).strip())
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def header_times(header: Mapping[str, Any], ref: FrameRef | None = None) -> tuple[float | None, float | None, str]:
    """(time_s, epoch_s, source) from a frame header (see module docstring for the keys).

    ``time_s`` is relative (seconds since the experiment start) when the header states it;
    ``epoch_s`` is an absolute Unix time; either may be None. ``source`` names the key used.
    """
    t = _float_or_none(header.get("time_s"))
    if t is not None:
        return t, None, "header time_s"
    for key in ("acquisition_time",):
        if key in header:
            e = parse_datetime_epoch_s(header[key])
            if e is not None:
                return None, e, f"header {key}"
    e = _float_or_none(header.get("qxrd.timeStamp"))
    if e is not None:
        return None, e, "QXRD .metadata timeStamp"
    if "qxrd.dateString" in header:
        e = parse_datetime_epoch_s(header["qxrd.dateString"])
        if e is not None:
            return None, e, "QXRD .metadata dateString"
    e = _float_or_none(header.get("time_of_day"))
    if e is not None and e > 1e8:
        return None, e, "EDF time_of_day"
    if "start_time" in header:
        e0 = parse_datetime_epoch_s(header["start_time"])
        if e0 is not None:
            idx = header.get("hdf5_index") or 0
            period = _float_or_none(header.get("frame_period_s")) or 0.0
            return None, e0 + idx * period, "HDF5 start_time + index*frame_time"
    contents = header.get("_array_data.header_contents")
    if contents:
        m = re.search(r"#\s*(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)", str(contents))
        if m:
            e = parse_datetime_epoch_s(m.group(1))
            if e is not None:
                return None, e, "CBF header date"
    # EDF/SPE date keys; for TIFF (fabio adds nBits) 'date' is the DateTime tag: last resort
    for key in ("date", "Date", "time", "Time"):
        if key in header:
            e = parse_datetime_epoch_s(header[key])
            if e is not None:
                return None, e, ("TIFF DateTime" if "nBits" in header else f"header {key}")
    return None, None, "none"


def load_sidecar_times(csv_path: str | Path) -> dict[str, float]:
    """Read a ``file,time_s`` CSV; keys are absolute paths (and ``path:index`` for stacks).

    Raises:
        InsituXRDError: missing file, missing columns, or a non-numeric time.
    """
    csv_path = Path(csv_path)
    try:
        fh = open(csv_path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InsituXRDError(f"frame-time sidecar {csv_path}: cannot be read ({exc})") from None
    out: dict[str, float] = {}
    with fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "file" not in fields or "time_s" not in fields:
            raise InsituXRDError(f"frame-time sidecar {csv_path}: needs columns 'file' and 'time_s', has {fields}")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            name = (row.get("file") or "").strip()
            t = _float_or_none(row.get("time_s"))
            if not name:
                continue
            if t is None:
                raise InsituXRDError(f"frame-time sidecar {csv_path}: line {lineno}: time_s {row.get('time_s')!r} is not a number")
            idx = ""
            m = re.fullmatch(r"(.*):(\d+)", name)
            if m and not os.path.isabs(name[:2] + "x"):  # 'file.h5:3' (not a Windows drive)
                name, idx = m.group(1), ":" + m.group(2)
            full = (csv_path.parent / name).resolve()
            out[str(full) + idx] = t
    return out


@dataclass(frozen=True)
class TimeSource:
    """Where frame times come from: kind 'header', 'sidecar' (path), 'period' (period_s) or
    'none' (all NaN)."""

    kind: str = "header"
    sidecar: Path | None = None
    period_s: float | None = None
    start_s: float = 0.0

    def describe(self) -> str:
        if self.kind == "sidecar":
            return f"sidecar {self.sidecar}"
        if self.kind == "period":
            return f"period_s={self.period_s} start_s={self.start_s}"
        return self.kind


def parse_time_source(value: Any) -> TimeSource:
    """TimeSource from a recipe/CLI value.

    Accepts ``"header"``, ``"none"`` (or ``{"period_s": nan}``: every time NaN),
    ``{"sidecar": path}``, ``{"period_s": 10, "start_s": 0}``, a string
    ``"sidecar:path"`` / ``"period_s:10"``, or a number (period in seconds).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "header"):
        return TimeSource("header")
    if isinstance(value, str) and value.strip().lower() == "none":
        return TimeSource("none")
    if isinstance(value, TimeSource):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"period_s": value}
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(sidecar|period_s)\s*[:=]\s*(.+?)\s*", value)
        if not m:
            raise InsituXRDError(f"time_source {value!r}: use 'header', 'sidecar: FILE.csv' or 'period_s: SECONDS'")
        value = {m.group(1): m.group(2)}
    if isinstance(value, Mapping):
        if "sidecar" in value:
            return TimeSource("sidecar", sidecar=Path(str(value["sidecar"])).expanduser())
        if "period_s" in value:
            try:
                if math.isnan(float(value["period_s"])):  # "no times": every time_s NaN
                    return TimeSource("none")
            except (TypeError, ValueError):
                pass
            p = _float_or_none(value["period_s"])
            s0 = _float_or_none(value.get("start_s", 0.0))
            if p is None or p <= 0 or s0 is None:
                raise InsituXRDError(f"time_source period_s {value['period_s']!r}: must be a positive number of seconds")
            return TimeSource("period", period_s=p, start_s=s0)
    raise InsituXRDError(f"time_source {value!r}: use 'header', 'sidecar: FILE.csv' or 'period_s: SECONDS'")


class FrameClock:
    """Assigns ``time_s`` (and ``epoch_s`` when known) to frames according to a TimeSource.

    Args:
        source: where times come from.
        time_zero_epoch_s: absolute time (Unix s) that maps to ``time_s = 0``; default: the first
            absolute time seen (persist ``clock.time_zero_epoch_s`` to keep it across resumes).
    """

    def __init__(self, source: TimeSource | Any = None, time_zero_epoch_s: float | None = None) -> None:
        self.source = parse_time_source(source)
        self.time_zero_epoch_s = time_zero_epoch_s
        self._sidecar: dict[str, float] | None = None
        if self.source.kind == "sidecar":
            self._sidecar = load_sidecar_times(self.source.sidecar)

    def times(self, ref: FrameRef, header: Mapping[str, Any] | None, position: int) -> tuple[float, float, str]:
        """(time_s, epoch_s, source) for a frame; NaN where unknown.

        Args:
            ref: the frame.
            header: its header (from :func:`read_frame`), or None if the frame was unreadable.
            position: the frame's index in the sorted series (for period_s).
        """
        if self.source.kind == "period":
            return self.source.start_s + position * self.source.period_s, math.nan, "period_s"
        if self.source.kind == "none":
            return math.nan, math.nan, "none"
        if self.source.kind == "sidecar":
            assert self._sidecar is not None
            t = self._sidecar.get(ref.key)
            if t is None and ref.index is None:
                t = self._sidecar.get(str(ref.path))
            return (t if t is not None else math.nan), math.nan, f"sidecar {self.source.sidecar.name}"
        if header is None:
            return math.nan, math.nan, "none"
        t, e, src = header_times(header, ref)
        if t is not None:
            return t, (e if e is not None else math.nan), src
        if e is not None:
            if self.time_zero_epoch_s is None:
                self.time_zero_epoch_s = e
            return e - self.time_zero_epoch_s, e, src
        return math.nan, math.nan, "none"


def iter_read_frames(refs: Iterable[FrameRef]) -> Iterator[tuple[FrameRef, Frame | None, str | None]]:
    """Yield (ref, frame or None, error message or None) reading one frame at a time."""
    for ref in refs:
        try:
            yield ref, read_frame(ref), None
        except FrameError as exc:
            yield ref, None, str(exc)
