"""Data-only encoding of saved state (no pickle): JSON with tagged values, a format version and a checksum.

Files the project reads back from an output folder (e.g. the sequential chain's exact-resume
state) sit on shared beamline file systems; a pickle there would run code as whoever resumes the
run. This module writes such state as plain JSON and rebuilds it with nothing but constructors
from an explicit list of classes.

Encoding is driven by the type of each value, so new fields of these kinds round-trip without
edits here:

* ``None``, ``bool``, ``int``, ``str``: JSON as they are; ``float``: JSON (``repr`` is exact), or
  ``{"$f": "nan" | "inf" | "-inf"}``;
* numpy scalars: ``{"$sc": dtype, "v": value}``; numpy arrays (numeric, bool or fixed-width
  strings, never object): ``{"$nd": dtype, "shape": [...], "b64": raw bytes}`` (bit-exact);
* ``list`` as a JSON list, ``tuple`` as ``{"$t": [...]}``, ``dict`` (any encodable keys) as
  ``{"$d": [[key, value], ...]}``, ``pathlib.Path`` as ``{"$path": str}``;
* dataclass instances of an allowed class: ``{"$dc": name, "f": {field: value}}`` over
  :func:`dataclasses.fields`;
* pydantic models of an allowed class: ``{"$pd": name, "v": model_dump(mode="json")}``, rebuilt
  with ``model_validate``;
* ``lmfit.Parameters``: ``{"$params": [...]}`` (value, bounds, vary, expr, stderr, correl,
  init_value, brute_step, user_data); an expression is restored only if it is plain arithmetic
  on parameter names.

A file is ``{"format": ..., "kind": ..., "version": N, "sha256": ..., "payload": ...}``. Reading
checks all of them; anything unknown, edited or truncated raises
:class:`~insitu_xrd.errors.InsituXRDError` with one line naming the file and the problem.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

import numpy as np

from insitu_xrd.errors import InsituXRDError

__all__ = ["FORMAT", "encode_value", "decode_value", "state_to_bytes", "state_from_bytes", "state_header", "with_header",
           "StateCodecError"]

FORMAT = "insitu-xrd saved state (JSON)"
_ARRAY_KINDS = "biufcUS"  # numeric, bool and fixed-width strings; never object arrays
# lmfit expressions restored from a file: names, numbers, arithmetic and calls of named functions
# only (no attribute access, subscripts, strings or keywords beyond those identifiers)
_SAFE_EXPR = re.compile(r"^[A-Za-z0-9_+\-*/().,\s]*$")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_])(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_EXPR_FUNCS = {"sqrt", "sin", "cos", "tan", "exp", "log", "abs", "arcsin", "arccos", "arctan", "pi", "radians", "degrees"}


class StateCodecError(InsituXRDError):
    """A value cannot be encoded, or a document is not a valid encoding."""


def _class_map(classes: Iterable[type]) -> dict[str, type]:
    return {c.__name__: c for c in classes}


def _is_pydantic(obj: Any) -> bool:
    return hasattr(type(obj), "model_validate") and hasattr(obj, "model_dump")


def encode_value(obj: Any, classes: Iterable[type] = (), where: str = "state") -> Any:
    """``obj`` as a JSON-compatible tree (see module docstring); ``classes``: the dataclasses and
    pydantic models allowed in it. Raises StateCodecError naming where an unencodable value is."""
    allowed = _class_map(classes)
    return _enc(obj, allowed, where)


def _enc(obj: Any, allowed: Mapping[str, type], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise StateCodecError(f"{where}: numpy array of dtype {obj.dtype} cannot be saved as data")
        arr = np.ascontiguousarray(obj)
        return {"$nd": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode("ascii")}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in "biufc":
            raise StateCodecError(f"{where}: numpy scalar of dtype {obj.dtype} cannot be saved as data")
        return {"$sc": obj.dtype.str, "v": _enc(obj.item(), allowed, where)}
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"$f": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, complex):
        return {"$c": [_enc(obj.real, allowed, where), _enc(obj.imag, allowed, where)]}
    if type(obj).__module__.startswith("lmfit") and type(obj).__name__ == "Parameters":  # a dict subclass
        return {"$params": [_enc_parameter(p, allowed, f"{where}.{p.name}") for p in obj.values()]}
    if isinstance(obj, list):
        return [_enc(v, allowed, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"$t": [_enc(v, allowed, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"$d": [[_enc(k, allowed, f"{where} key"), _enc(v, allowed, f"{where}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, PurePath):
        return {"$path": str(obj)}
    name = type(obj).__name__
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if allowed.get(name) is not type(obj):
            raise StateCodecError(f"{where}: dataclass {name} is not among the classes this state may hold")
        return {"$dc": name, "f": {f.name: _enc(getattr(obj, f.name), allowed, f"{where}.{f.name}")
                                   for f in dataclasses.fields(obj)}}
    if _is_pydantic(obj):
        if allowed.get(name) is not type(obj):
            raise StateCodecError(f"{where}: model {name} is not among the classes this state may hold")
        return {"$pd": name, "v": _enc(obj.model_dump(mode="json"), allowed, f"{where}.model")}
    raise StateCodecError(f"{where}: a {type(obj).__module__}.{name} cannot be saved as data")


_PARAM_ATTRS = ("value", "vary", "min", "max", "expr", "brute_step", "stderr", "correl", "init_value", "user_data")


def _enc_parameter(p: Any, allowed: Mapping[str, type], where: str) -> Any:
    d = {"name": p.name}
    for attr in _PARAM_ATTRS:
        v = p._val if attr == "value" else getattr(p, attr, None)  # the stored value (no expr evaluation)
        d[attr] = _enc(v, allowed, f"{where}.{attr}")
    return d


def decode_value(doc: Any, classes: Iterable[type] = (), where: str = "state") -> Any:
    """Rebuild what :func:`encode_value` wrote. Only the listed classes are constructed; anything
    else raises StateCodecError naming where in the document it is."""
    return _dec(doc, _class_map(classes), where)


def _dec(doc: Any, allowed: Mapping[str, type], where: str) -> Any:
    if doc is None or isinstance(doc, (bool, str, int)):
        return doc
    if isinstance(doc, float):
        return doc
    if isinstance(doc, list):
        return [_dec(v, allowed, f"{where}[{i}]") for i, v in enumerate(doc)]
    if not isinstance(doc, dict) or len(doc) == 0:
        raise StateCodecError(f"{where}: unexpected {type(doc).__name__} in the state")
    tag = next(iter(doc))
    try:
        if tag == "$f":
            val = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(doc["$f"])
            if val is None:
                raise StateCodecError(f"{where}: bad float {doc['$f']!r}")
            return val
        if tag == "$c":
            re_, im = (_dec(v, allowed, where) for v in doc["$c"])
            return complex(re_, im)
        if tag == "$nd":
            dtype = np.dtype(doc["$nd"])
            if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
                raise StateCodecError(f"{where}: array dtype {dtype} is not data")
            shape = tuple(int(n) for n in doc["shape"])
            raw = base64.b64decode(doc["b64"].encode("ascii"), validate=True)
            count = int(np.prod(shape)) if shape else 1
            if len(raw) != count * dtype.itemsize:
                raise StateCodecError(f"{where}: array of shape {shape} has {len(raw)} bytes")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if tag == "$sc":
            dtype = np.dtype(doc["$sc"])
            if dtype.kind not in "biufc":
                raise StateCodecError(f"{where}: scalar dtype {dtype} is not data")
            return dtype.type(_dec(doc["v"], allowed, where))
        if tag == "$t":
            return tuple(_dec(v, allowed, f"{where}[{i}]") for i, v in enumerate(doc["$t"]))
        if tag == "$d":
            return {_dec(k, allowed, f"{where} key"): _dec(v, allowed, f"{where}[{k!r}]") for k, v in doc["$d"]}
        if tag == "$path":
            return Path(str(doc["$path"]))
        if tag == "$params":
            return _dec_parameters(doc["$params"], allowed, where)
        if tag == "$dc":
            cls = allowed.get(doc["$dc"])
            if cls is None or not dataclasses.is_dataclass(cls):
                raise StateCodecError(f"{where}: class {doc['$dc']!r} is not allowed in this state")
            fields = {f.name for f in dataclasses.fields(cls)}
            given = doc["f"]
            unknown = set(given) - fields
            if unknown:
                raise StateCodecError(f"{where}: {cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
            return cls(**{k: _dec(v, allowed, f"{where}.{k}") for k, v in given.items()})
        if tag == "$pd":
            cls = allowed.get(doc["$pd"])
            if cls is None or not hasattr(cls, "model_validate"):
                raise StateCodecError(f"{where}: model {doc['$pd']!r} is not allowed in this state")
            return cls.model_validate(_dec(doc["v"], allowed, f"{where}.model"))
    except StateCodecError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # malformed document
        raise StateCodecError(f"{where}: malformed {tag} entry ({type(exc).__name__}: {exc})") from None
    raise StateCodecError(f"{where}: unknown tag {tag!r}")


def _dec_parameters(items: list, allowed: Mapping[str, type], where: str) -> Any:
    import lmfit

    params = lmfit.Parameters()
    exprs: list[tuple[str, str]] = []
    for item in items:
        name = str(item["name"])
        d = {k: _dec(item.get(k), allowed, f"{where}.{name}.{k}") for k in _PARAM_ATTRS}
        par = lmfit.Parameter(name, value=d["value"], vary=bool(d["vary"]), min=d["min"], max=d["max"],
                              brute_step=d["brute_step"], user_data=d["user_data"])
        par._val = d["value"]  # exactly as stored, even where the bounds would clip it
        par.stderr, par.correl, par.init_value = d["stderr"], d["correl"], d["init_value"]
        params.add(par)
        if d["expr"]:
            exprs.append((name, str(d["expr"])))
    for name, expr in exprs:
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", _NUMBER.sub(" ", expr)))
        if not _SAFE_EXPR.match(expr) or not words <= (set(params) | _EXPR_FUNCS) or "__" in expr:
            raise StateCodecError(f"{where}.{name}: expression {expr!r} is not plain arithmetic on parameters")
        val = params[name]._val
        params[name].expr = expr
        params[name]._val = val
    return params


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _seal(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    body["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")


def state_to_bytes(obj: Any, kind: str, version: int, classes: Iterable[type] = (), **header: Any) -> bytes:
    """``obj`` as a versioned JSON document whose checksum covers everything in it (``header``:
    extra plain JSON fields, e.g. which frame the state follows)."""
    return _seal({"format": FORMAT, "kind": kind, "version": int(version), **header,
                  "payload": encode_value(obj, classes)})


def with_header(blob: bytes, kind: str, version: int, source: str = "saved state", **header: Any) -> bytes:
    """A document of :func:`state_to_bytes` with header fields added or replaced (checksum renewed)."""
    doc = _checked(blob, kind, version, source)
    doc.update(header)
    return _seal(doc)


def state_header(blob: bytes, kind: str, version: int, source: str = "saved state") -> dict[str, Any]:
    """The header fields of a checked document (the payload is not decoded)."""
    return {k: v for k, v in _checked(blob, kind, version, source).items() if k not in ("payload", "sha256")}


def state_from_bytes(blob: bytes, kind: str, version: int, classes: Iterable[type] = (),
                     source: str = "saved state") -> tuple[Any, dict[str, Any]]:
    """The object and the header fields of a document written by :func:`state_to_bytes`.

    Raises StateCodecError (one line, naming ``source``) for anything but a well-formed document of
    this ``kind`` and ``version`` whose checksum matches (e.g. a pickle, an older format, an edit)."""
    doc = _checked(blob, kind, version, source)
    obj = decode_value(doc["payload"], classes, where=source)
    return obj, {k: v for k, v in doc.items() if k not in ("payload", "sha256")}


def _checked(blob: bytes, kind: str, version: int, source: str) -> dict[str, Any]:
    if not isinstance(blob, (bytes, bytearray)) or blob[:1] != b"{":
        raise StateCodecError(f"{source}: not a {FORMAT} document (an old pickled state or another file); ignored")
    try:
        doc = json.loads(bytes(blob).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateCodecError(f"{source}: unreadable JSON ({exc}); truncated or edited") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("kind") != kind:
        found = (doc.get("format"), doc.get("kind")) if isinstance(doc, dict) else type(doc).__name__
        raise StateCodecError(f"{source}: not a {kind} state (found {found!r})")
    if doc.get("version") != version:
        raise StateCodecError(f"{source}: {kind} state format version {doc.get('version')!r}; this version "
                              f"of insitu-xrd reads version {version}")
    body = {k: v for k, v in doc.items() if k != "sha256"}
    if "payload" not in doc or hashlib.sha256(_canonical(body)).hexdigest() != doc.get("sha256"):
        raise StateCodecError(f"{source}: checksum mismatch (the file was edited or damaged)")
    return doc
