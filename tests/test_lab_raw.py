"""Bruker binary .raw v3 (RAW1.01) and v4 (RAW4.00), written here by a test writer in the layouts
documented in insitu_xrd/io/lab_patterns.py (DIFFRAC^plus XCH manual Appendix A for v3; xylib's
layout for v4): values read back exactly (f32 counts, f64 angles), several ranges joined, the
wavelength from the Ka1 field, and every refusal a one-line error naming the file."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import read_pattern_1d

KA1, KA2, RATIO = 1.540598, 1.544426, 0.5


def _put(buf: bytearray, offset: int, fmt: str, *values) -> None:
    struct.pack_into("<" + fmt, buf, offset, *values)


def raw_v3(ranges, supplementary: int = 0) -> bytes:
    """A RAW1.01 file: 712-byte header, per range 304-byte header (+ supplementary bytes), f32 counts."""
    head = bytearray(712)
    head[:7] = b"RAW1.01"
    _put(head, 8, "I", 1)  # status: done
    _put(head, 12, "I", len(ranges))
    head[16:26] = b"06/02/25\x00\x00"
    head[326:332] = b"NMC811"
    head[608:610] = b"Cu"
    _put(head, 616, "5d", (2 * KA1 + KA2) / 3, KA1, KA2, 1.39222, RATIO)
    out = bytes(head)
    for start, step, counts in ranges:
        rh = bytearray(304)
        _put(rh, 0, "II", 304, len(counts))
        _put(rh, 8, "dd", start / 2, start)
        _put(rh, 176, "d", step)
        _put(rh, 192, "f", 1.0)
        _put(rh, 240, "d", KA1)
        _put(rh, 256, "I", supplementary)
        out += bytes(rh) + bytes(supplementary) + np.asarray(counts, dtype="<f4").tobytes()
    return out


def raw_v4(ranges, scan: str = "Locked Coupled", datum: int = 4) -> bytes:
    """A RAW4.00 file: 61-byte header, a VarInfo (10) and a hardware (30) segment, then ranges of a
    160-byte header, a 64-byte drive sub-segment and f32 counts."""
    head = bytearray(61)
    head[:7] = b"RAW4.00"
    head[12:22] = b"06/02/2025"
    var = bytearray(40)
    _put(var, 0, "II", 10, 40)
    var[12:18] = b"SAMPLE"
    hw = bytearray(120)
    _put(hw, 0, "II", 30, 120)
    _put(hw, 72, "5d", (2 * KA1 + KA2) / 3, KA1, KA2, 1.39222, RATIO)
    hw[116:118] = b"Cu"
    out = bytes(head) + bytes(var) + bytes(hw)
    for start, step, counts in ranges:
        rh = bytearray(160)
        rh[32:32 + len(scan)] = scan.encode()
        _put(rh, 72, "ddI", start, step, len(counts))
        _put(rh, 112, "d", KA1)
        _put(rh, 136, "II", datum, 64)
        drive = bytearray(64)
        _put(drive, 0, "II", 50, 64)
        drive[12:18] = b"2Theta"
        _put(drive, 56, "d", start)
        out += bytes(rh) + bytes(drive) + np.asarray(counts, dtype="<f4").tobytes()
    return out


def _counts(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(200, n).astype(np.float32)


@pytest.mark.parametrize("writer", [raw_v3, raw_v4])
def test_raw_is_read_with_its_axis_counts_and_wavelength(tmp_path, writer):
    a, b = _counts(300, 1), _counts(200, 2)
    path = tmp_path / "scan.raw"
    path.write_bytes(writer([(10.0, 0.02, a), (16.0, 0.02, b)]))
    pat = read_pattern_1d(path)
    np.testing.assert_allclose(pat.two_theta_deg, np.r_[10.0 + 0.02 * np.arange(300), 16.0 + 0.02 * np.arange(200)],
                               rtol=0, atol=1e-9)
    np.testing.assert_array_equal(pat.intensity, np.r_[a, b])
    assert pat.sigma_source == "none" and pat.wavelength_A == pytest.approx(KA1)
    assert pat.metadata["kalpha2_A"] == pytest.approx(KA2) and pat.metadata["kalpha2_ratio"] == RATIO
    assert pat.metadata["anode"] == "Cu" and pat.metadata["n_ranges"] == 2
    # found by content as well as by suffix
    other = tmp_path / "scan.bin"
    other.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(read_pattern_1d(other).intensity, pat.intensity)


def test_raw_v3_supplementary_headers_are_skipped(tmp_path):
    a = _counts(100, 3)
    path = tmp_path / "s.raw"
    path.write_bytes(raw_v3([(20.0, 0.05, a)], supplementary=48))
    np.testing.assert_array_equal(read_pattern_1d(path).intensity, a)


def _error(path) -> str:
    with pytest.raises(InsituXRDError) as err:
        read_pattern_1d(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_raw_refusals_name_the_file_and_the_problem(tmp_path):
    a = _counts(100, 4)
    cases = {
        "v2.raw": (b"RAW2" + bytes(300), "version 'RAW2'; read are RAW1.01 (v3) and RAW4.00 (v4)"),
        "v1.raw": (b"RAW " + bytes(300), "version 'RAW '"),
        "other.raw": (b"XYZ\x00" + bytes(100), "no Bruker RAW magic"),
        "trunc3.raw": (raw_v3([(20.0, 0.05, a)])[:-40], "promises 100 counts"),
        "trunc4.raw": (raw_v4([(20.0, 0.05, a)])[:-40], "promises 100 counts"),
        "head.raw": (raw_v4([(20.0, 0.05, a)])[:100], "truncated"),
        "omega.raw": (raw_v4([(20.0, 0.05, a)], scan="Omega"), "'Omega' scan"),
        "datum.raw": (raw_v4([(20.0, 0.05, a)], datum=2), "2-byte data points"),
        "back.raw": (raw_v3([(20.0, 0.05, a), (21.0, 0.05, a)]), "turns back"),
        "range.raw": (raw_v4([(175.0, 0.1, a)]), "180"),
        "step.raw": (raw_v3([(20.0, 0.0, a)]), "step 0.0"),
    }
    for name, (blob, expect) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        msg = _error(path)
        assert expect in msg, (name, msg)
