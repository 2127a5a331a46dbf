"""Lab 1D formats (PowBase .dat, Bruker .uxd, PANalytical .xrdml, Rigaku .ras, GSAS .gsa/.fxye)
and the axis checks every reader shares. Every file is written by the test from a known pattern
(a few Gaussian peaks on a background), so the values read back are compared with the truth."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import read_pattern_1d
from lab_files import (START, STEP, truth_pattern, write_chi_q, write_gsas, write_powbase, write_ras, write_uxd,
                       write_xrdml)

_truth = truth_pattern


def _check(pat, tth, y, sigma_source="none"):
    np.testing.assert_allclose(pat.two_theta_deg, tth, atol=1e-9)
    np.testing.assert_allclose(pat.intensity, y)
    assert pat.sigma_source == sigma_source


@pytest.mark.parametrize("per_line", [2, 8, 10])
def test_powbase_dat_start_step_stop_then_counts(tmp_path, per_line):
    """The issue's case: counts filling whole lines of 2 looked like 2 columns (x = counts)."""
    tth, y = _truth()
    p = write_powbase(tmp_path / "lab.dat", tth, y, per_line)
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.metadata["format"] == "powbase_dat"


def test_powbase_dat_with_missing_counts_is_refused_saying_both_numbers(tmp_path):
    tth, y = _truth()
    p = tmp_path / "short.dat"
    p.write_text(f"{START} {STEP} {tth[-1]:.2f}\n" + "\n".join(f"{a:.0f} {b:.0f}" for a, b in zip(y[:300:2], y[1:300:2])))
    with pytest.raises(InsituXRDError, match=r"short\.dat: first line .*400 points\) but 300 counts follow"):
        read_pattern_1d(p)


def test_three_column_xye_is_not_taken_for_powbase(tmp_path):
    tth, y = _truth()
    p = tmp_path / "a.dat"
    p.write_text("\n".join(f"{t:.2f} {v:.0f} {np.sqrt(v):.4f}" for t, v in zip(tth, y)))
    pat = read_pattern_1d(p)
    _check(pat, tth, y, "file")


@pytest.mark.parametrize("layout", ["counts", "2thetacounts"])
def test_bruker_uxd(tmp_path, layout):
    tth, y = _truth()
    p = write_uxd(tmp_path / "scan.uxd", tth, y, layout)
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.5406)


def test_xrdml(tmp_path):
    tth, y = _truth()
    p = write_xrdml(tmp_path / "scan.xrdml", tth, y)
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.540598)
    p.write_text(p.read_text()[:900])  # truncated
    with pytest.raises(InsituXRDError, match=r"scan\.xrdml: not well-formed XML"):
        read_pattern_1d(p)


def test_rigaku_ras_applies_the_attenuator_factor(tmp_path):
    tth, y = _truth()
    p = write_ras(tmp_path / "scan.ras", tth, y)
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.540593)


@pytest.mark.parametrize("fmt", ["STD", "ESD", "FXYE"])
def test_gsas(tmp_path, fmt):
    tth, y = _truth()
    e = np.sqrt(y)
    p = write_gsas(tmp_path / ("scan.fxye" if fmt == "FXYE" else "scan.gsa"), tth, y, fmt)
    pat = read_pattern_1d(p)
    _check(pat, tth, y, "none" if fmt == "STD" else "file")
    if fmt != "STD":
        np.testing.assert_allclose(pat.sigma, np.round(e, 2 if fmt == "ESD" else 3), atol=1e-9)


def test_a_bruker_raw_that_holds_no_coupled_scan_is_refused(tmp_path):
    """A RAW4.00 magic over zeros: no range of a coupled scan; .raw files are read in tests/test_lab_raw.py."""
    p = tmp_path / "scan.raw"
    p.write_bytes(b"RAW4.00\x00" + bytes(2000))
    with pytest.raises(InsituXRDError, match=r"scan\.raw: Bruker RAW4\.00 range 1 is a '' scan; only coupled"):
        read_pattern_1d(p)


def test_chi_in_q_and_2theta(tmp_path):
    tth, y = _truth()
    p = write_chi_q(tmp_path / "q.chi", tth, y, 0.5)
    _check(read_pattern_1d(p), tth, y)
    p2 = tmp_path / "t.chi"
    p2.write_text("# 2th_deg I\n" + "\n".join(f"{a:.4f} {b:.0f}" for a, b in zip(tth, y)))
    _check(read_pattern_1d(p2), tth, y)


@pytest.mark.parametrize("mutate,match", [
    (lambda t, y: (t[::-1], y[::-1]), None),  # a descending scan is read (reversed)
    (lambda t, y: (np.r_[t[:50], t[49:]], np.r_[y[:50], y[49:]]), "repeats at point 50"),
    (lambda t, y: (np.r_[t[100:], t[:100]], np.r_[y[100:], y[:100]]), "turns back"),
    (lambda t, y: (t * 20, y), r"outside 0 < 2theta < 180.*give the unit"),  # e.g. degrees*20 (not 2theta)
    (lambda t, y: (t - 12, y), "outside 0 < 2theta < 180"),
    (lambda t, y: (t, np.full_like(y, 7.0)), "all 400 intensities equal 7"),
    (lambda t, y: (t, y * 1e30), "beyond 1e\\+20"),
    (lambda t, y: (t[:5], y[:5]), "5 finite data points, a pattern needs at least 10"),
    (lambda t, y: (t, np.where(np.arange(t.size) < 300, np.nan, y)), "300 of 400 points are NaN"),
])
def test_axis_and_count_checks(tmp_path, mutate, match):
    tth, y = _truth()
    x, v = mutate(tth, y)
    p = tmp_path / "m.xy"
    p.write_text("\n".join(f"{a!s} {b!s}" for a, b in zip(x.tolist(), v.tolist())))
    if match is None:
        pat = read_pattern_1d(p)
        _check(pat, tth, y)
        assert pat.metadata["axis_descending_in_file"]
        return
    with pytest.raises(InsituXRDError, match=match) as info:
        read_pattern_1d(p)
    assert "m.xy" in str(info.value) and "\n" not in str(info.value)


def test_q_beyond_4pi_over_lambda_is_refused(tmp_path):
    p = tmp_path / "q.xy"
    p.write_text("# q_A^-1 I\n" + "\n".join(f"{q} {q * 3 % 7 + 1}" for q in np.linspace(1, 40, 50)))
    with pytest.raises(InsituXRDError, match=r"outside 0 < q < 4 pi / lambda = 25\.1"):
        read_pattern_1d(p, wavelength_A=0.5)


def test_rows_of_different_widths_are_refused(tmp_path):
    tth, y = _truth()
    lines = [f"{a:.2f} {b:.0f} {np.sqrt(b):.3f}" for a, b in zip(tth, y)]
    lines[-1] = lines[-1].rsplit(" ", 1)[0]  # the last line lost its esd (a truncated file)
    p = tmp_path / "t.xye"
    p.write_text("\n".join(lines))
    with pytest.raises(InsituXRDError, match=r"line 400 has 2 values, the lines before it 3"):
        read_pattern_1d(p)
