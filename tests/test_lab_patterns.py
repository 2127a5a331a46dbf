"""Lab 1D formats (PowBase .dat, Bruker .uxd, PANalytical .xrdml, Rigaku .ras, GSAS .gsa/.fxye)
and the axis checks every reader shares. Every file is written by the test from a known pattern
(a few Gaussian peaks on a background), so the values read back are compared with the truth."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import read_pattern_1d

START, STEP, N = 10.0, 0.02, 400  # 10.00 .. 17.98 deg


def _truth():
    tth = START + STEP * np.arange(N)
    y = 100 + 5000 * np.exp(-0.5 * ((tth - 12.3) / 0.05) ** 2) + 2000 * np.exp(-0.5 * ((tth - 15.1) / 0.06) ** 2)
    return tth, np.round(y)


def _check(pat, tth, y, sigma_source="none"):
    np.testing.assert_allclose(pat.two_theta_deg, tth, atol=1e-9)
    np.testing.assert_allclose(pat.intensity, y)
    assert pat.sigma_source == sigma_source


@pytest.mark.parametrize("per_line", [2, 8, 10])
def test_powbase_dat_start_step_stop_then_counts(tmp_path, per_line):
    """The issue's case: counts filling whole lines of 2 looked like 2 columns (x = counts)."""
    tth, y = _truth()
    lines = [f"{START:.2f} {STEP:.2f} {tth[-1]:.2f}"]
    lines += [" ".join(f"{v:.0f}" for v in y[i:i + per_line]) for i in range(0, N, per_line)]
    p = tmp_path / "lab.dat"
    p.write_text("\n".join(lines) + "\n")
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
    head = ["; Bruker UXD test file", "_FILEVERSION=1", "_WL1=1.540600", "_WL2=1.544390", "_DRIVE='COUPLED'",
            f"_STEPSIZE={STEP}", "_STEPTIME=1.0", f"_START={START}"]
    if layout == "counts":
        body = ["_COUNTS"] + [" ".join(f"{v:.0f}" for v in y[i:i + 8]) for i in range(0, N, 8)]
    else:
        body = ["_2THETACOUNTS"] + [f"{t:.4f} {v:.0f}" for t, v in zip(tth, y)]
    p = tmp_path / "scan.uxd"
    p.write_text("\n".join(head + body) + "\n")
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.5406)


def test_xrdml(tmp_path):
    tth, y = _truth()
    p = tmp_path / "scan.xrdml"
    p.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/1.5" status="Completed">
 <xrdMeasurement measurementType="Scan" status="Completed">
  <usedWavelength intended="K-Alpha 1"><kAlpha1 unit="Angstrom">1.5405980</kAlpha1>
   <kAlpha2 unit="Angstrom">1.5444260</kAlpha2><ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1></usedWavelength>
  <scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">
   <dataPoints>
    <positions axis="2Theta" unit="deg"><startPosition>{START}</startPosition><endPosition>{tth[-1]:.2f}</endPosition></positions>
    <positions axis="Omega" unit="deg"><startPosition>5</startPosition><endPosition>8.99</endPosition></positions>
    <commonCountingTime unit="seconds">1.0</commonCountingTime>
    <intensities unit="counts">{" ".join(f"{v:.0f}" for v in y)}</intensities>
   </dataPoints>
  </scan>
 </xrdMeasurement>
</xrdMeasurements>
""")
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.540598)
    p.write_text(p.read_text()[:900])  # truncated
    with pytest.raises(InsituXRDError, match=r"scan\.xrdml: not well-formed XML"):
        read_pattern_1d(p)


def test_rigaku_ras_applies_the_attenuator_factor(tmp_path):
    tth, y = _truth()
    factor = np.where(y > 3000, 10.0, 1.0)  # an attenuator in for the strong peak
    rows = [f"{t:.4f} {v / f:.1f} {f:.1f}" for t, v, f in zip(tth, y, factor)]
    p = tmp_path / "scan.ras"
    p.write_text("*RAS_DATA_START\n*RAS_HEADER_START\n*HW_XG_WAVE_LENGTH_ALPHA1 \"1.540593\"\n"
                 "*MEAS_SCAN_AXIS_X \"TwoThetaTheta\"\n*MEAS_SCAN_UNIT_X \"deg\"\n*RAS_HEADER_END\n*RAS_INT_START\n"
                 + "\n".join(rows) + "\n*RAS_INT_END\n*RAS_DATA_END\n")
    pat = read_pattern_1d(p)
    _check(pat, tth, y)
    assert pat.wavelength_A == pytest.approx(1.540593)


@pytest.mark.parametrize("fmt", ["STD", "ESD", "FXYE"])
def test_gsas(tmp_path, fmt):
    tth, y = _truth()
    e = np.sqrt(y)
    head = ["test pattern", "Instrument parameter      test.instprm"]
    if fmt == "FXYE":
        body = [f"BANK 1 {N} {N} CONS {START * 100:.1f} {STEP * 100:.2f} 0 0 FXYE"]
        body += [f"{100 * t:.3f} {v:.1f} {s:.3f}" for t, v, s in zip(tth, y, e)]
    elif fmt == "ESD":
        body = [f"BANK 1 {N} {N // 5} CONST {START * 100:.1f} {STEP * 100:.2f} 0 0 ESD"]
        body += ["".join(f"{v:8.0f}{s:8.2f}" for v, s in zip(y[i:i + 5], e[i:i + 5])) for i in range(0, N, 5)]
    else:
        body = [f"BANK 1 {N} {N // 10} CONST {START * 100:.1f} {STEP * 100:.2f} 0 0 STD"]
        body += ["".join(f"{1:2d}{v:6.0f}" for v in y[i:i + 10]) for i in range(0, N, 10)]
    p = tmp_path / ("scan.fxye" if fmt == "FXYE" else "scan.gsa")
    p.write_text("\n".join(head + body) + "\n")
    pat = read_pattern_1d(p)
    _check(pat, tth, y, "none" if fmt == "STD" else "file")
    if fmt != "STD":
        np.testing.assert_allclose(pat.sigma, np.round(e, 2 if fmt == "ESD" else 3), atol=1e-9)


def test_bruker_raw_is_refused_with_advice(tmp_path):
    p = tmp_path / "scan.raw"
    p.write_bytes(b"RAW4.00\x00" + bytes(2000))
    with pytest.raises(InsituXRDError, match=r"scan\.raw: Bruker binary 'RAW4\.00' \.raw is not read.*export"):
        read_pattern_1d(p)


def test_chi_in_q_and_2theta(tmp_path):
    tth, y = _truth()
    wl = 0.5
    q = 4 * np.pi * np.sin(np.radians(tth) / 2) / wl
    p = tmp_path / "q.chi"
    p.write_text("# Wavelength: 5.0e-11 m\n# q_A^-1 I\n" + "\n".join(f"{a:.12g} {b:.0f}" for a, b in zip(q, y)))
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
