"""GSAS-II .instprm reading/writing <-> core.pattern.Instrument."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu_xrd.core.pattern import Instrument
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.instprm import (
    format_instprm,
    parse_instprm,
    read_instprm,
    read_instrument,
    write_instprm,
    write_instrument,
)

DATA = Path(__file__).parent / "data"


def test_read_gsas2_format_example():
    prm = read_instprm(DATA / "gsas2_11bm.instprm")
    assert prm.type == "PXC"
    assert prm.wavelength_A == pytest.approx(0.413263)
    inst = read_instrument(DATA / "gsas2_11bm.instprm")
    assert (inst.U, inst.V, inst.W, inst.X, inst.Y) == (1.163, -0.126, 0.063, 0.0, 0.0)
    assert inst.zero_deg == pytest.approx(-0.00418)
    assert inst.wavelength_A == pytest.approx(0.413263)
    assert inst.sh_l == pytest.approx(0.002)  # GSAS-II SH/L: the FCJ asymmetry of the profile


def test_semicolon_joined_items_and_spaces():
    # GSAS-II's own default-parameter style: several items per line, ';'-separated
    text = (
        "#GSAS-II instrument parameter file 0.7A synchrotron data\n"
        "Type:PXC\n"
        "Lam:0.69968;Zero:0.0;Polariz.:0.99;Azimuth:0.0\n"
        "U:5.98; V : -1.2877 ;W:0.1185\n"
        "X:-0.0977;Y:4.4014;SH/L:0.0264\n"
    )
    prm = parse_instprm(text)
    assert prm.items["V"] == pytest.approx(-1.2877)
    assert prm.items["SH/L"] == pytest.approx(0.0264)
    inst = read_instrument_text(text)
    assert inst.Y == pytest.approx(4.4014) and inst.X == pytest.approx(-0.0977)
    assert inst.sh_l == pytest.approx(0.0264)


def read_instrument_text(text: str) -> Instrument:
    from insitu_xrd.io.instprm import instrument_from_instprm

    return instrument_from_instprm(parse_instprm(text))


def test_round_trip_instrument(tmp_path):
    inst = Instrument(wavelength_A=0.1173, U=1.234567891, V=-0.4321, W=0.98765, X=0.1234, Y=0.5678,
                      zero_deg=-0.00321, displacement_um=12.5, distance_mm=1001.25, sh_l=0.0031)
    path = write_instrument(tmp_path / "inst.instprm", inst, comments=["fit of CeO2, Rwp 3.1 %"])
    text = path.read_text()
    assert text.splitlines()[0].startswith("#GSAS-II instrument parameter file")
    assert "Lam:0.1173" in text and "Diff-type:Debye-Scherrer" in text and "SH/L:0.0031" in text
    back = read_instrument(path, wavelength_A=0.1173)
    assert back == inst  # exact: floats are written with repr
    prm = read_instprm(path)
    assert prm.comments == ["# fit of CeO2, Rwp 3.1 %"]
    # write the parsed file back: identical items
    again = read_instprm(write_instprm(tmp_path / "again.instprm", prm))
    assert again.items == prm.items and again.displacement_um == prm.displacement_um


def test_gsas2_reader_semantics_stop_at_comment_after_items():
    # GSAS-II stops reading at a '#' line once items were found; so must we (same parameters)
    text = "#GSAS-II instrument parameter file\nType:PXC\nLam:0.5\nZero:0\nU:1\nV:0\nW:1\nX:0\nY:0\n# later\nU:99\n"
    assert parse_instprm(text).items["U"] == 1.0


def test_multibank_file():
    text = (
        "#Bank 1: GSAS-II instrument parameter file; do not add/delete items!\n"
        "  Type:PXC\n  Lam:0.5\n  Zero:0.0\n  U:1.0\n  V:0.0\n  W:2.0\n  X:0.0\n  Y:0.0\n"
        "#Bank 2: GSAS-II instrument parameter file; do not add/delete items!\n"
        "  Type:PXC\n  Lam:0.5\n  Zero:0.01\n  U:3.0\n  V:0.0\n  W:4.0\n  X:0.0\n  Y:0.0\n"
    )
    assert parse_instprm(text).items["W"] == 2.0
    p2 = parse_instprm(text, bank=2)
    assert p2.items["W"] == 4.0 and p2.items["Zero"] == 0.01 and p2.bank == 2
    with pytest.raises(InsituXRDError, match="bank 3 not found"):
        parse_instprm(text, bank=3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("Type:PXC\nLam:0.5\n", "first line must contain 'GSAS-II'"),
        ("#GSAS-II x\nType:PXC\nLam 0.5\n", "not of the form name:value"),
        ("#GSAS-II x\nType:PXC\nLam:0.5\nZero:0\nU:1\nV:0\nW:x\nX:0\nY:0\n", "non-numeric items \\['W'\\]"),
        ("#GSAS-II x\nType:PNT\nLam:0.5\nZero:0\nU:1\nV:0\nW:1\nX:0\nY:0\n", "not constant-wavelength X-ray"),
        ("#GSAS-II x\nType:PXC\nLam1:1.5405;Lam2:1.5443;I(L2)/I(L1):1.5\nZero:0\nU:1\nV:0\nW:1\nX:0\nY:0\n", "outside \\(0, 1\\]"),
        ("#GSAS-II x\nType:PXC\nLam:0.5\nZero:0\nU:1\nV:0\nW:1\nX:0\nY:0\nZ:0.3\n", "Z = 0.3"),
        ("#GSAS-II x\nType:PXC\nLam:0.5\nZero:0\nU:1\nV:0\nW:1\nX:0\nY:0\nSH/L:-0.01\n", "SH/L = -0.01"),
    ],
)
def test_invalid_files_give_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.instprm"
    path.write_text(text)
    with pytest.raises(InsituXRDError, match=message) as info:
        read_instrument(path)
    assert "bad.instprm" in str(info.value)


def test_wavelength_mismatch_and_missing_file(tmp_path):
    with pytest.raises(InsituXRDError, match="Lam = 0.413263 A but the data wavelength is 0.1173"):
        read_instrument(DATA / "gsas2_11bm.instprm", wavelength_A=0.1173)
    with pytest.raises(InsituXRDError, match="does not exist"):
        read_instrument(tmp_path / "nope.instprm")


def test_comment_with_bank_word_is_refused():
    with pytest.raises(InsituXRDError, match="Bank"):
        format_instprm(Instrument(0.5), comments=["bank 1"])


def _gsas2_read_items(text: str) -> dict:
    """Items as GSAS-II 2.0's ReadInstprm takes them from a single-bank file: the first line is
    skipped, every following line up to the first '#' line after it is read as name:value (a '#'
    line right after the first is read as an item too)."""
    lines = text.splitlines()
    items = {}
    for line in lines[1:]:
        if line.startswith("#") and items:
            break
        for chunk in line.replace(" ", "").split(";"):
            name, value = chunk.split(":", 1)
            items[name] = value
    return items


def test_written_file_is_read_whole_by_gsas2(tmp_path):
    # comments (provenance, fit quality, displacement) go after the items: written before them,
    # GSAS-II read the first comment as an item and stopped at the second (no parameters at all)
    inst = Instrument(1.540593, U=3.0, V=-1.5, W=2.5, X=1.2, Y=2.0, sh_l=0.02, displacement_um=7.0,
                      kalpha2_wavelength_A=1.544427, kalpha2_ratio=0.5)
    path = write_instrument(tmp_path / "cu.instprm", inst, polarization=0.5557,
                            comments=["fit of LaB6", "Rwp 3.1 %"], extra={"Diff-type": "Bragg-Brentano"})
    g2 = _gsas2_read_items(path.read_text())
    assert not any(k.startswith("#") for k in g2)
    assert {"Type", "Lam1", "Lam2", "I(L2)/I(L1)", "Polariz.", "U", "V", "W", "X", "Y", "SH/L", "Diff-type"} <= set(g2)
    assert float(g2["Lam2"]) == 1.544427 and float(g2["Polariz."]) == 0.5557
    prm = read_instprm(path)  # ours reads the trailing comments back
    assert prm.displacement_um == 7.0 and prm.comments == ["# fit of LaB6", "# Rwp 3.1 %"]
    assert read_instrument(path, wavelength_A=1.540593) == inst
    again = write_instprm(tmp_path / "again.instprm", prm)
    assert _gsas2_read_items(again.read_text()) == g2 and read_instprm(again).items == prm.items
    # an item after a trailing comment is read by neither
    text = path.read_text() + "U:99\n"
    assert parse_instprm(text).items["U"] == 3.0 and float(_gsas2_read_items(text)["U"]) == 3.0
    # the real GSAS-II, where it is installed (not part of the project's dependencies)
    try:
        from GSASII import GSASIIfiles
    except Exception:
        return
    _, (iparm, _) = GSASIIfiles.ReadInstprm(path.read_text().splitlines(keepends=True), None, {})
    assert iparm["Lam2"][1] == 1.544427 and iparm["U"][1] == 3.0
