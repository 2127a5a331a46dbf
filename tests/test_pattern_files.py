"""Tests of 1D pattern text files: .xye round trip, pyFAI/.chi headers, q -> 2theta, errors."""

from __future__ import annotations

import numpy as np
import pytest

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import (
    q_invA_to_two_theta_deg,
    read_pattern_1d,
    two_theta_deg_to_q_invA,
    write_xye,
)


def test_xye_round_trip_keeps_values_and_wavelength(tmp_path):
    rng = np.random.default_rng(1)
    tth = np.linspace(1.0, 12.0, 500)
    inten = rng.uniform(10, 1e5, tth.size)
    sig = np.sqrt(inten)
    inten[7] = np.nan  # a masked bin is dropped, not written as nan
    path = write_xye(tmp_path / "sub" / "a.xye", tth, inten, sig, header_lines=["frame_0001", "time_s=12.5"],
                     wavelength_A=0.1173)
    text = path.read_text()
    assert all(line.startswith("#") for line in text.splitlines()[:4])
    assert "nan" not in text.lower()
    pat = read_pattern_1d(path)
    assert pat.wavelength_A == pytest.approx(0.1173, rel=1e-9)
    assert pat.metadata["sigma_source"] == "file" and pat.sigma_source == "file"
    assert len(pat) == tth.size - 1
    keep = np.isfinite(inten)
    np.testing.assert_allclose(pat.two_theta_deg, tth[keep], atol=1e-6)
    np.testing.assert_allclose(pat.intensity, inten[keep], rtol=1e-7)
    np.testing.assert_allclose(pat.sigma, sig[keep], rtol=1e-7)


def test_two_column_file_gets_poisson_sigma_and_noted(tmp_path):
    p = tmp_path / "b.xy"
    p.write_text("# 2theta I\n1.0 0.25\n2.0, 100\n3.0 400\n" + "".join(f"{x} 9\n" for x in range(4, 11)))
    pat = read_pattern_1d(p)
    np.testing.assert_allclose(pat.sigma, [1.0, 10.0, 20.0] + [3.0] * 7)
    assert "poisson" in pat.metadata["sigma_source"]
    assert pat.sigma_source == "none"
    assert pat.wavelength_A is None


def test_q_nm_header_converted_with_header_wavelength(tmp_path):
    wl = 0.5
    tth = np.linspace(5.0, 50.0, 12)
    q_nm = two_theta_deg_to_q_invA(tth, wl) * 10.0
    p = tmp_path / "c.dat"
    p.write_text("# Wavelength: 5e-11 m\n# q_nm^-1 I sigma\n" + "\n".join(f"{q:.17g} {10 + i} 1" for i, q in enumerate(q_nm)))
    pat = read_pattern_1d(p, wavelength_A=0.9)  # header wins over the argument
    np.testing.assert_allclose(pat.two_theta_deg, tth, atol=1e-9)
    assert pat.metadata["wavelength_argument_ignored_A"] == 0.9


def test_q_file_without_wavelength_is_a_clear_error(tmp_path):
    p = tmp_path / "d.chi"
    p.write_text("# q_A^-1 I\n" + "".join(f"{q} {5 + q}\n" for q in range(1, 13)))
    with pytest.raises(InsituXRDError, match=r"d\.chi.*wavelength"):
        read_pattern_1d(p)


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    ("# only a header\n", "no numeric"),
    ("1.0\n2.0\n", "at least 2 columns"),
    ("1 2\nhello world\n", "not numeric"),
])
def test_unreadable_files_raise_naming_the_file(tmp_path, content, match):
    p = tmp_path / "bad.xye"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InsituXRDError, match=match) as info:
        read_pattern_1d(p)
    assert "bad.xye" in str(info.value)


def test_binary_file_is_rejected(tmp_path):
    p = tmp_path / "img.xy"
    p.write_bytes(b"II*\x00" + bytes(range(256)))
    with pytest.raises(InsituXRDError, match="binary"):
        read_pattern_1d(p)


def test_q_conversion_round_trip():
    tth = np.linspace(0.5, 60, 50)
    np.testing.assert_allclose(q_invA_to_two_theta_deg(two_theta_deg_to_q_invA(tth, 0.1665), 0.1665), tth)


def test_real_pyfai_ni_chi_uses_header_wavelength(real_data_dir):
    pat = read_pattern_1d(real_data_dir / "Ni_chi_file.chi")
    assert pat.wavelength_A == pytest.approx(0.1671)
    assert pat.metadata["x_unit_in_file"] == "q_A^-1"
    assert pat.metadata["polarization_factor"] == pytest.approx(0.99)
    # Ni (111) at d = a/sqrt(3), a = 3.5238 A: strongest peak of the pattern
    d111 = 3.5238 / np.sqrt(3)
    tth111 = np.degrees(2 * np.arcsin(0.1671 / (2 * d111)))
    assert abs(pat.two_theta_deg[np.argmax(pat.intensity)] - tth111) < 0.05


def test_real_xpdfsuite_ni_chi_needs_and_uses_given_wavelength(real_data_dir):
    with pytest.raises(InsituXRDError, match="wavelength"):
        read_pattern_1d(real_data_dir / "Ni.chi")
    pat = read_pattern_1d(real_data_dir / "Ni.chi", wavelength_A=0.1903)
    assert pat.metadata["wavelength_source"] == "argument"
    assert len(pat) == 2108
    d111 = 3.5238 / np.sqrt(3)
    tth111 = np.degrees(2 * np.arcsin(0.1903 / (2 * d111)))
    assert abs(pat.two_theta_deg[np.argmax(pat.intensity)] - tth111) < 0.05


def test_real_dioptas_xy_reads_2theta(real_data_dir):
    pat = read_pattern_1d(real_data_dir / "CeO2_Pilatus1M.xy")
    assert pat.metadata["x_unit_in_file"] == "2th_deg"
    assert pat.wavelength_A == pytest.approx(0.4066)
