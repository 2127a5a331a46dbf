"""Writers of small 1D lab-format files from a known pattern, shared by the reader tests and the
fuzz suite (each writes what the instrument software writes, per the formats' documentation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

START, STEP, N = 10.0, 0.02, 400  # 10.00 .. 17.98 deg


def truth_pattern(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """2theta (deg) and integer counts: two Gaussian peaks on a flat background."""
    tth = START + STEP * np.arange(n)
    y = 100 + 5000 * np.exp(-0.5 * ((tth - 12.3) / 0.05) ** 2) + 2000 * np.exp(-0.5 * ((tth - 15.1) / 0.06) ** 2)
    return tth, np.round(y)


def write_powbase(path: Path, tth, y, per_line: int = 8) -> Path:
    lines = [f"{tth[0]:.2f} {tth[1] - tth[0]:.2f} {tth[-1]:.2f}"]
    lines += [" ".join(f"{v:.0f}" for v in y[i:i + per_line]) for i in range(0, len(y), per_line)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_uxd(path: Path, tth, y, layout: str = "counts") -> Path:
    head = ["; Bruker UXD test file", "_FILEVERSION=1", "_WL1=1.540600", "_WL2=1.544390", "_DRIVE='COUPLED'",
            f"_STEPSIZE={tth[1] - tth[0]:.4f}", "_STEPTIME=1.0", f"_START={tth[0]:.4f}"]
    if layout == "counts":
        body = ["_COUNTS"] + [" ".join(f"{v:.0f}" for v in y[i:i + 8]) for i in range(0, len(y), 8)]
    else:
        body = ["_2THETACOUNTS"] + [f"{t:.4f} {v:.0f}" for t, v in zip(tth, y)]
    path.write_text("\n".join(head + body) + "\n")
    return path


def write_xrdml(path: Path, tth, y) -> Path:
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/1.5" status="Completed">
 <xrdMeasurement measurementType="Scan" status="Completed">
  <usedWavelength intended="K-Alpha 1"><kAlpha1 unit="Angstrom">1.5405980</kAlpha1>
   <kAlpha2 unit="Angstrom">1.5444260</kAlpha2><ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1></usedWavelength>
  <scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">
   <dataPoints>
    <positions axis="2Theta" unit="deg"><startPosition>{tth[0]:.4f}</startPosition><endPosition>{tth[-1]:.4f}</endPosition></positions>
    <positions axis="Omega" unit="deg"><startPosition>5</startPosition><endPosition>8.99</endPosition></positions>
    <commonCountingTime unit="seconds">1.0</commonCountingTime>
    <intensities unit="counts">{" ".join(f"{v:.0f}" for v in y)}</intensities>
   </dataPoints>
  </scan>
 </xrdMeasurement>
</xrdMeasurements>
""")
    return path


def write_ras(path: Path, tth, y) -> Path:
    """Rigaku .ras; an attenuator (factor 10) is in for counts above 3000."""
    factor = np.where(np.asarray(y) > 3000, 10.0, 1.0)
    rows = [f"{t:.4f} {v / f:.1f} {f:.1f}" for t, v, f in zip(tth, y, factor)]
    path.write_text("*RAS_DATA_START\n*RAS_HEADER_START\n*HW_XG_WAVE_LENGTH_ALPHA1 \"1.540593\"\n"
                    "*MEAS_SCAN_AXIS_X \"TwoThetaTheta\"\n*MEAS_SCAN_UNIT_X \"deg\"\n*RAS_HEADER_END\n*RAS_INT_START\n"
                    + "\n".join(rows) + "\n*RAS_INT_END\n*RAS_DATA_END\n")
    return path


def write_gsas(path: Path, tth, y, fmt: str = "STD") -> Path:
    """GSAS constant-wavelength bank: STD (I2,F6.0 x 10), ESD ((F8.0,F8.2) x 5) or FXYE."""
    n, e = len(y), np.sqrt(y)
    start, step = 100 * tth[0], 100 * (tth[1] - tth[0])
    head = ["test pattern", "Instrument parameter      test.instprm"]
    if fmt == "FXYE":
        body = [f"BANK 1 {n} {n} CONS {start:.1f} {step:.2f} 0 0 FXYE"]
        body += [f"{100 * t:.3f} {v:.1f} {s:.3f}" for t, v, s in zip(tth, y, e)]
    elif fmt == "ESD":
        body = [f"BANK 1 {n} {n // 5} CONST {start:.1f} {step:.2f} 0 0 ESD"]
        body += ["".join(f"{v:8.0f}{s:8.2f}" for v, s in zip(y[i:i + 5], e[i:i + 5])) for i in range(0, n, 5)]
    else:
        body = [f"BANK 1 {n} {n // 10} CONST {start:.1f} {step:.2f} 0 0 STD"]
        body += ["".join(f"{1:2d}{v:6.0f}" for v in y[i:i + 10]) for i in range(0, n, 10)]
    path.write_text("\n".join(head + body) + "\n")
    return path


def write_chi_q(path: Path, tth, y, wavelength_A: float = 0.5) -> Path:
    """pyFAI-style .chi on a q axis (1/A) with the wavelength in the header (metres)."""
    q = 4 * np.pi * np.sin(np.radians(tth) / 2) / wavelength_A
    path.write_text(f"# Wavelength: {wavelength_A * 1e-10:.6e} m\n# q_A^-1 I\n"
                    + "\n".join(f"{a:.12g} {b:.0f}" for a, b in zip(q, y)) + "\n")
    return path
