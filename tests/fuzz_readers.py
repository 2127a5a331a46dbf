"""The readers under fuzz: for each, a valid sample file (with its truth), the reader, and what a
read result must satisfy; plus the input mutations and the outcome tally.

The property (issue 22): a reader either reads correctly or raises InsituXRDError with one line
naming the file and what is wrong; never another exception, never a silently wrong result. A
result is "silently wrong" when it breaks a check that holds for any real input of its kind
(pattern: axis strictly increasing inside 0 < 2theta < 180, >= 10 finite points, counts finite and
not all equal, esd > 0; frame: the original shape; cycler log: time increasing, values finite,
a cell voltage), or, for an input that only lost its end (truncation), when a value differs from
the original (except the last, which may itself be cut). Used by tests/test_fuzz_readers.py
(bounded, seeded: ``make test``) and, with more examples, by ``make fuzz``.
"""

from __future__ import annotations

import math
import shutil
import signal
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from insitu_xrd.errors import InsituXRDError

TALLY: Counter = Counter()  # tried, read, refused, crash, misread (per run)
TEXT_TOKENS = ["nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e400", "0", "-1", "-0", "abc", "", "1e-320", "9" * 40]
COLUMN_FACTORS = [60.0, 1 / 60.0, 10.0, 0.1, 1000.0, -1.0, math.pi / 180.0, 180.0 / math.pi, 0.0]


@dataclass
class Mutation:
    """One change to a valid file: kind and its parameters (fractions pick positions)."""

    kind: str  # none, truncate, flip, garbage, empty, token, dup_line, swap_lines, scale_column, repeat
    a: float = 0.0
    b: float = 0.0
    data: bytes = b""
    token: str = ""
    factor: float = 1.0

    def apply(self, raw: bytes, text: bool) -> bytes:
        n = len(raw)
        if self.kind == "none":
            return raw
        if self.kind == "truncate":
            return raw[: int(self.a * n)]
        if self.kind == "empty":
            return b""
        if self.kind == "flip":
            buf = bytearray(raw)
            for k, byte in enumerate(self.data or b"\x01"):
                if n:
                    buf[int(((self.a + 0.137 * k) % 1.0) * n)] ^= byte or 1
            return bytes(buf)
        if self.kind == "garbage":  # the header kept, a garbage body
            return raw[: int(self.a * n)] + self.data
        if self.kind == "repeat":  # a body written twice (duplicated axis)
            return raw + raw[int(self.a * n):]
        if not text:
            return raw
        lines = raw.decode("utf-8", errors="replace").split("\n")
        if not lines:
            return raw
        i, j = int(self.a * len(lines)) % len(lines), int(self.b * len(lines)) % len(lines)
        if self.kind == "dup_line":
            lines.insert(i, lines[i])
        elif self.kind == "swap_lines":
            lines[i], lines[j] = lines[j], lines[i]
        elif self.kind == "token":
            words = lines[i].split(" ")
            numeric = [k for k, w in enumerate(words) if _is_number(w)]
            if numeric:
                words[numeric[int(self.b * len(numeric)) % len(numeric)]] = self.token
            lines[i] = " ".join(words)
        elif self.kind == "scale_column":  # wrong units: a column multiplied on every data line
            col = int(self.b * 3)
            for k, line in enumerate(lines):
                words = line.split()
                if len(words) >= 2 and all(_is_number(w) for w in words) and col < len(words):
                    words[col] = repr(float(words[col]) * self.factor)
                    lines[k] = " ".join(words)
        return "\n".join(lines).encode("utf-8")


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# checks of a read result ("silent misread" when any fails)

def pattern_problems(pat: Any, truth: tuple[np.ndarray, np.ndarray], m: Mutation) -> list[str]:
    t, y, s = (np.asarray(v, dtype=float) for v in (pat.two_theta_deg, pat.intensity, pat.sigma))
    out = []
    if not (t.size == y.size == s.size) or t.size < 10:
        return [f"{t.size} points"]
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y)) and np.all(np.isfinite(s))):
        out.append("non-finite values")
    if not np.all(np.diff(t) > 0):
        out.append("axis not strictly increasing")
    if not (t[0] > 0 and t[-1] < 180):
        out.append(f"2theta {t[0]}..{t[-1]} outside (0, 180)")
    if np.ptp(y) == 0:
        out.append("all counts equal")
    if not np.all(s > 0):
        out.append("esd <= 0")
    tt, yt = truth
    if m.kind == "none":
        if t.size != tt.size or not np.allclose(t, tt, atol=1e-6) or not np.allclose(y, yt, rtol=1e-6):
            out.append("the unchanged file read differently")
    elif m.kind == "truncate":
        k = np.searchsorted(tt, t[:-1] - 1e-6)
        k = np.clip(k, 0, tt.size - 1)
        if not (np.allclose(tt[k], t[:-1], atol=1e-6) and np.allclose(yt[k], y[:-1], rtol=1e-6)):
            out.append("a truncated file gave values the original does not have")
    return out


def frames_problems(frames: list[np.ndarray], written: dict[str, Any], m: Mutation) -> list[str]:
    """``written``: {"frames": the images, "checksummed": True when the format carries a checksum
    of its pixels (CBF Content-MD5): then any change must be refused, never read}."""
    out = []
    truth = written["frames"]
    for f in frames:
        if f.ndim != 2 or f.shape != truth[0].shape:
            out.append(f"frame shape {f.shape}, written {truth[0].shape}")
    if (m.kind in ("none", "truncate") or written["checksummed"]) and not out:
        if len(frames) > len(truth) or any(not np.array_equal(f, t) for f, t in zip(frames, truth)):
            out.append("pixels differ from those written" + (" (truncated file)" if m.kind == "truncate" else ""))
    return out


def cycler_problems(log: Any, truth: dict[str, np.ndarray], m: Mutation) -> list[str]:
    out = []
    t, v, q = log.time_s, log.voltage_V, log.capacity_mAh
    if t.size < 2 or not np.all(np.diff(t) > 0):
        out.append("time not strictly increasing")
    for name, arr in (("time", t), ("voltage", v), ("capacity", q)):
        if not np.all(np.isfinite(arr)):
            out.append(f"non-finite {name}")
    if np.any(np.abs(v) > 100):
        out.append(f"voltage up to {np.max(np.abs(v)):.3g} V")
    if m.kind == "none" and (t.size != truth["time_s"].size or not np.allclose(v, truth["voltage_V"])):
        out.append("the unchanged file read differently")
    return out


# --------------------------------------------------------------------------------------------
# running one input

HANG_S = 20  # a read of these small files takes milliseconds; 20 s is a hang (slow CI included)


class ReaderHang(BaseException):
    """Raised by the alarm in a read that hangs (a BaseException: readers that catch every
    Exception, as fabio wrappers do, cannot turn it into an error message)."""


def _hang(signum: int, frame: Any) -> None:
    raise ReaderHang()


def run_one(reader: Callable[[Path], Any], problems: Callable[[Any, Any, Mutation], list[str]], path: Path,
            truth: Any, m: Mutation) -> str:
    """Read ``path``; 'read' or 'refused', or raise AssertionError for a crash or a misread."""
    TALLY["tried"] += 1
    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_S)
    try:
        result = reader(path)
    except ReaderHang:
        TALLY["crash"] += 1
        raise AssertionError(f"{path.name}: the reader hangs (> {HANG_S} s) ({m})") from None
    except InsituXRDError as exc:
        msg = str(exc)
        if "\n" in msg or path.name not in msg:
            TALLY["crash"] += 1
            raise AssertionError(f"error message must be one line naming {path.name}: {msg!r} ({m})") from None
        TALLY["refused"] += 1
        return "refused"
    except Exception as exc:  # the property's failure: another exception type
        TALLY["crash"] += 1
        raise AssertionError(f"{path.name}: {type(exc).__name__}: {exc} ({m})") from exc
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    bad = problems(result, truth, m)
    if bad:
        TALLY["misread"] += 1
        raise AssertionError(f"{path.name}: read silently wrong: {'; '.join(bad)} ({m})")
    TALLY["read"] += 1
    return "read"


class Scratch:
    """A temporary folder for one reader's mutated inputs (removed at exit)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="insitu_fuzz_"))
        self.n = 0

    def path(self, name: str) -> Path:
        self.n += 1
        d = self.root / f"{self.n}"
        d.mkdir()
        return d / name

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def tally_line() -> str:
    return (f"inputs tried {TALLY['tried']}, read {TALLY['read']}, refused {TALLY['refused']}, "
            f"crashes {TALLY['crash']}, silent misreads {TALLY['misread']}")


