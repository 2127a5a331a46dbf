"""The sequential chain's exact-resume state as data (``<checkpoint>.state``): JSON, versioned, no pickle.

The state (previous :class:`~insitu_xrd.fit.result.FitResult` with its Le Bail intensities and
lmfit Parameters, the last good frame records, optional-phase counters, Rwp history, the spec of
the last fit, a pending look-back frame) is encoded by :mod:`insitu_xrd.io.state_codec`; cached
Refinement objects are not saved (they are rebuilt from the specs). A file that is not a state of
this version, or whose checksum does not match, is refused with a warning naming the file and the
reason, and the run resumes from the stored per-frame values as it would without a state.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from insitu_xrd.core.pattern import PeakTable
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.io.state_codec import state_from_bytes, state_header, state_to_bytes, with_header

__all__ = ["CHAIN_STATE_KIND", "CHAIN_STATE_VERSION", "encode_chain_state", "decode_chain_state",
           "read_chain_state_file", "write_chain_state_file", "ChainStateWarning"]

CHAIN_STATE_KIND = "sequential chain"
CHAIN_STATE_VERSION = 1
_BASE_CLASSES = (FitResult, PeakTable, RefinementSpec)


class ChainStateWarning(UserWarning):
    """A saved chain state was refused (the run resumes from the stored values)."""


def _classes(extra: Iterable[type]) -> tuple[type, ...]:
    return _BASE_CLASSES + tuple(extra)


def encode_chain_state(state: dict[str, Any], extra_classes: Iterable[type] = ()) -> bytes:
    """The chain's state fields (a dict) as a JSON document; ``extra_classes``: dataclasses of the
    caller's layer it holds (e.g. the frame records)."""
    return state_to_bytes(state, CHAIN_STATE_KIND, CHAIN_STATE_VERSION, _classes(extra_classes))


def decode_chain_state(blob: bytes, fields: Iterable[str], extra_classes: Iterable[type] = (),
                       source: str = "chain state") -> dict[str, Any]:
    """The state dict of :func:`encode_chain_state`; raises InsituXRDError (one line naming
    ``source``) when it is not exactly the expected ``fields``."""
    state, _ = state_from_bytes(blob, CHAIN_STATE_KIND, CHAIN_STATE_VERSION, _classes(extra_classes), source)
    want = set(fields)
    if not isinstance(state, dict) or set(state) != want:
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise InsituXRDError(f"{source}: holds {got}, expected the fields {sorted(want)}")
    return state


def write_chain_state_file(path: Path, cache_key: str | None, after: str, state_blob: bytes) -> None:
    """Write ``state_blob`` (of :func:`encode_chain_state`) to ``path`` atomically, stamped with
    the run's cache key and the frame it follows."""
    path = Path(path)
    blob = with_header(state_blob, CHAIN_STATE_KIND, CHAIN_STATE_VERSION, str(path),
                       cache_key=cache_key or "", after=str(after))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def read_chain_state_file(path: Path, cache_key: str | None, after: str) -> bytes | None:
    """The state in ``path`` if it is a valid state written with ``cache_key`` right after the
    frame ``after``; None otherwise (a refused file -- old pickle, other version, edited, damaged --
    also warns with :class:`ChainStateWarning`)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        head = state_header(blob, CHAIN_STATE_KIND, CHAIN_STATE_VERSION, str(path))
    except InsituXRDError as exc:
        warnings.warn(f"{exc}; resuming from the stored results", ChainStateWarning, stacklevel=2)
        return None
    if head.get("cache_key") != (cache_key or "") or str(head.get("after")) != str(after):
        return None  # another run's state, or one behind/ahead of the stored frames
    return blob
