"""Cycler-log readers, capacity -> x/SoC arithmetic, and alignment of frames to the log."""

from __future__ import annotations

import datetime as dt
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.core.electrochem import (
    FARADAY_C_MOL,
    align_times,
    formula_mass_g_mol,
    integrate_capacity_mAh,
    offset_from_clocks_s,
    soc_from_capacity,
    theoretical_capacity_mAh_g,
    x_li_from_capacity,
)
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.echem import read_cycler_log
from insitu_xrd.pipeline.echem_align import attach_echem

MASS_MG = 4.0
QTH = 275.0
I_MA = QTH * MASS_MG * 1e-3 / 10.0  # C/10 for a 4 mg electrode: 0.11 mA


def x_true(t_s: np.ndarray) -> np.ndarray:
    return 1.0 - I_MA * np.asarray(t_s) / 3600.0 / (MASS_MG * 1e-3) / QTH


def frames(times_s) -> xr.Dataset:
    t = np.asarray(times_s, dtype=float)
    return xr.Dataset(
        {"status": ("frame", np.array(["ok"] * t.size))},
        coords={"frame": np.arange(t.size), "time_s": ("frame", t), "frame_name": ("frame", [f"f{i}.tif" for i in range(t.size)])},
    )


def write_csv(path: Path, header: list[str], rows: np.ndarray, sep: str = ",") -> Path:
    lines = [sep.join(header)] + [sep.join(repr(float(v)) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# pure arithmetic


def test_theoretical_capacity_from_formula():
    m = 6.94 + 0.8 * 58.6934 + 0.1 * 54.938044 + 0.1 * 58.933194 + 2 * 15.999
    assert formula_mass_g_mol("LiNi0.8Mn0.1Co0.1O2") == pytest.approx(m, abs=0.01)
    assert formula_mass_g_mol("Li(Ni0.8Mn0.1Co0.1)O2") == pytest.approx(formula_mass_g_mol("LiNi0.8Mn0.1Co0.1O2"))
    q = theoretical_capacity_mAh_g("LiNi0.8Mn0.1Co0.1O2")
    assert q == pytest.approx(FARADAY_C_MOL / (3.6 * m), rel=1e-4)
    assert q == pytest.approx(275.5, abs=0.2)
    assert theoretical_capacity_mAh_g(100.0, electrons=2) == pytest.approx(2 * 96485.33212 / 360.0)
    with pytest.raises(ValueError, match="Xx"):
        formula_mass_g_mol("LiXxO2")
    with pytest.raises(ValueError, match="unbalanced"):
        formula_mass_g_mol("Li(NiO2")


def test_trapezoid_integration_exact_for_linear_current():
    t = np.linspace(0, 7200, 37)
    i = 0.05 + 1e-5 * t  # a ramp: the trapezoid rule is exact
    q = integrate_capacity_mAh(t, i)
    assert q == pytest.approx((0.05 * t + 0.5e-5 * t**2) / 3600, rel=1e-12, abs=1e-15)


def test_x_and_soc():
    q = np.array([0.0, 27.5, 137.5])
    assert x_li_from_capacity(q, 275.0, 1.0) == pytest.approx([1.0, 0.9, 0.5])
    assert soc_from_capacity(q, 275.0) == pytest.approx([0.0, 0.1, 0.5])
    assert soc_from_capacity(q, 220.0) == pytest.approx(q / 220.0)


def test_align_times_statuses_and_gap():
    log_t = np.array([0.0, 10, 20, 30, 100, 110])
    al = align_times(np.array([-1.0, 0, 15, 50, 110, 111, np.nan]), log_t, max_gap_s=20)
    assert list(al.status) == ["before_log", "ok", "ok", "gap", "ok", "after_log", "no_time"]
    v = al.interpolate(log_t * 2)
    assert v[1:3] == pytest.approx([0.0, 30.0]) and v[4] == pytest.approx(220.0)
    assert np.isnan(v[[0, 3, 5, 6]]).all()
    assert offset_from_clocks_s(1000.0, 940.0) == 60.0


# ---------------------------------------------------------------------------------------------
# generic CSV / TSV


def test_constant_current_csv_x_within_0p001(tmp_path):
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 36001.0, 30.0)  # 10 h of C/10
    v = 3.6 + 0.6 * t / t[-1] + rng.normal(0, 1e-3, t.size)
    path = write_csv(tmp_path / "cycler.csv", ["time_s", "voltage_V", "current_mA"], np.c_[t, v, np.full(t.size, I_MA)])
    log = read_cycler_log(path)
    assert "integrated" in log.capacity_source and "trapezoid" in log.capacity_source
    ft = np.sort(rng.uniform(0, 36000, 25))
    out = attach_echem(frames(ft), log, offset_s=0.0, active_mass_mg=MASS_MG, theoretical_capacity_mAh_g=QTH, x_start=1.0)
    assert np.all(out["echem_status"].values == "ok")
    assert np.max(np.abs(out["x_li"].values - x_true(ft))) < 1e-3
    assert out["soc"].values == pytest.approx(1 - x_true(ft), abs=1e-3)
    assert out["capacity_mAh_g"].values == pytest.approx(I_MA * ft / 3600 / (MASS_MG * 1e-3), rel=1e-9)
    assert "integrated" in out.attrs["echem_capacity_source"]
    assert out.attrs["echem_offset_s"] == 0.0 and out.attrs["echem_active_mass_mg"] == MASS_MG
    # the frame data and frame order are untouched
    assert list(out["frame_name"].values) == [f"f{i}.tif" for i in range(ft.size)]


def test_recipe_column_map_and_capacity_column(tmp_path):
    t = np.linspace(0, 3600, 61)
    q = I_MA * t / 3600
    path = write_csv(tmp_path / "log.csv", ["T", "U", "I", "Q"], np.c_[t, 3.7 + 0 * t, np.full(t.size, I_MA), q])
    log = read_cycler_log(path, columns={"time_s": "T", "voltage_V": "U", "current_mA": "I", "capacity_mAh": "Q"})
    assert log.capacity_mAh == pytest.approx(q)
    assert "column 'Q'" in log.capacity_source
    # a log that starts with charge already counted: x_start refers to the first sample
    path2 = write_csv(tmp_path / "log2.csv", ["T", "U", "I", "Q"], np.c_[t, 3.7 + 0 * t, np.full(t.size, I_MA), q + 0.5])
    log2 = read_cycler_log(path2, columns={"time_s": "T", "voltage_V": "U", "current_mA": "I", "capacity_mAh": "Q"})
    assert log2.capacity_mAh == pytest.approx(q) and "counted from the first sample" in log2.notes[0]


@pytest.mark.parametrize(
    "header,scale,sep",
    [
        (["Time (min)", "Ewe/V", "Current(A)"], (1 / 60, 1.0, 1e-3), ";"),
        (["time/h", "Voltage [mV]", "I/uA"], (1 / 3600, 1e3, 1e3), "\t"),
        (["time_h", "voltage_V", "current_mA"], (1 / 3600, 1.0, 1.0), ","),
    ],
)
def test_units_from_column_names(tmp_path, header, scale, sep):
    t = np.linspace(0, 7200, 121)
    v = 3.5 + 1e-4 * t
    rows = np.c_[t * scale[0], v * scale[1], np.full(t.size, I_MA) * scale[2]]
    log = read_cycler_log(write_csv(tmp_path / "u.txt", header, rows, sep=sep))
    assert log.time_s == pytest.approx(t)
    assert log.voltage_V == pytest.approx(v)
    assert log.current_mA == pytest.approx(np.full(t.size, I_MA))
    assert log.capacity_mAh[-1] == pytest.approx(I_MA * 2.0)


def test_capacity_units_and_explicit_unit_keys(tmp_path):
    t = np.linspace(0, 3600, 11)
    q_mAh = I_MA * t / 3600
    log = read_cycler_log(write_csv(tmp_path / "a.csv", ["time_s", "voltage_V", "Capacity(Ah)"], np.c_[t, 0 * t + 4, q_mAh / 1e3]))
    assert log.capacity_mAh == pytest.approx(q_mAh)
    log = read_cycler_log(write_csv(tmp_path / "b.csv", ["time_s", "voltage_V", "(Q-Qo)/C"], np.c_[t, 0 * t + 4, q_mAh * 3.6]))
    assert log.capacity_mAh == pytest.approx(q_mAh)
    log = read_cycler_log(write_csv(tmp_path / "c.csv", ["t", "E", "Q"], np.c_[t / 60, 0 * t + 4, q_mAh / 1e3]),
                          columns={"time_s": "t", "voltage_V": "E", "capacity_mAh": "Q", "time_unit": "min", "capacity_unit": "Ah"})
    assert log.time_s == pytest.approx(t) and log.capacity_mAh == pytest.approx(q_mAh)
    with pytest.raises(InsituXRDError, match="unknown time unit 'fortnight'"):
        read_cycler_log(tmp_path / "c.csv", columns={"time_s": "t", "voltage_V": "E", "capacity_mAh": "Q", "time_unit": "fortnight"})


def test_arbin_style_export_integrates_current(tmp_path):
    t = np.arange(0.0, 7201.0, 60.0)
    i_A = np.where(t <= 3600, I_MA, -I_MA) * 1e-3  # charge 1 h then discharge 1 h
    chg = np.cumsum(np.r_[0, np.diff(t)] * np.clip(i_A, 0, None)) / 3600
    path = write_csv(tmp_path / "arbin.csv", ["Data_Point", "Test_Time(s)", "Step_Time(s)", "Current(A)", "Voltage(V)",
                                               "Charge_Capacity(Ah)", "Discharge_Capacity(Ah)"],
                     np.c_[np.arange(t.size), t, t % 3600, i_A, 3.7 + 0 * t, chg, 0 * t])
    log = read_cycler_log(path)
    assert log.columns_used["time_s"].startswith("Test_Time(s)")
    assert "integrated" in log.capacity_source  # separate charge/discharge capacities are not net charge
    assert log.capacity_mAh[t == 3600][0] == pytest.approx(I_MA, rel=1e-3) and log.capacity_mAh[-1] == pytest.approx(np.trapezoid(i_A * 1e3, t) / 3600, rel=1e-9)


def test_per_step_capacity_column_is_noted(tmp_path):
    t = np.arange(0.0, 7201.0, 60.0)
    i = np.where(t <= 3600, I_MA, -I_MA)
    per_step = I_MA * np.where(t <= 3600, t, t - 3600) / 3600  # unsigned, restarts at the step change
    path = write_csv(tmp_path / "neware.csv", ["time_s", "voltage_V", "current_mA", "capacity_mAh"], np.c_[t, 3.7 + 0 * t, i, per_step])
    log = read_cycler_log(path)
    assert any("restart every step" in n for n in log.notes)
    log2 = read_cycler_log(path, columns={"capacity_mAh": "none"})
    assert "integrated" in log2.capacity_source and log2.capacity_mAh[-1] == pytest.approx(np.trapezoid(i, t) / 3600, rel=1e-9)


def test_time_as_hms_text_and_iso_datetimes(tmp_path):
    (tmp_path / "hms.csv").write_text("Total Time,Voltage(V),Current(mA)\n0:00:00,3.6,0.11\n0:30:00.5,3.7,0.11\n1:00:01,3.8,0.11\n1-02:00:00,3.9,0.11\n")
    log = read_cycler_log(tmp_path / "hms.csv")
    assert log.time_s == pytest.approx([0, 1800.5, 3601, 93600])
    assert any("h:mm:ss" in n for n in log.notes)
    (tmp_path / "iso.csv").write_text("time,voltage_V,current_mA\n2026-01-02T10:00:00+00:00,3.6,0.1\n"
                                      "2026-01-02T10:01:00+00:00,3.7,0.1\n2026-01-02T11:00:00+00:00,3.8,0.1\n")
    log = read_cycler_log(tmp_path / "iso.csv")
    assert log.time_s == pytest.approx([0, 60, 3600])
    assert log.start_utc.startswith("2026-01-02T10:00:00")


def test_unsorted_and_duplicate_rows_are_cleaned(tmp_path):
    rows = np.array([[0, 3.6, 0.1], [20, 3.8, 0.1], [10, 3.7, 0.1], [20, 3.8, 0.1], [30, np.nan, 0.1], [40, 3.9, 0.1]])
    log = read_cycler_log(write_csv(tmp_path / "m.csv", ["time_s", "voltage_V", "current_mA"], rows))
    assert log.time_s == pytest.approx([0, 10, 20, 40])
    notes = " ".join(log.notes)
    assert "sorted" in notes and "duplicate" in notes and "dropped" in notes


def test_bad_csv_input_names_file_and_columns(tmp_path):
    p = write_csv(tmp_path / "bad.csv", ["time_s", "voltage_V", "current_mA"], np.c_[np.arange(3.0), np.ones(3), np.ones(3)])
    with pytest.raises(InsituXRDError) as e:
        read_cycler_log(p, columns={"capacity_mAh": "Capacity"})
    msg = str(e.value)
    assert "bad.csv" in msg and "'Capacity'" in msg and "time_s, voltage_V, current_mA" in msg
    q = write_csv(tmp_path / "nocap.csv", ["time_s", "voltage_V"], np.c_[np.arange(3.0), np.ones(3)])
    with pytest.raises(InsituXRDError, match="neither a capacity nor a current"):
        read_cycler_log(q)
    r = write_csv(tmp_path / "notime.csv", ["when", "voltage_V", "current_mA"], np.c_[np.arange(3.0), np.ones(3), np.ones(3)])
    with pytest.raises(InsituXRDError, match="no time column found; columns in the file: when"):
        read_cycler_log(r)
    (tmp_path / "text.csv").write_text("time_s,voltage_V,current_mA\n0,3.6,0.1\n1,oops,0.1\n")
    with pytest.raises(InsituXRDError, match="column 'voltage_V'.*'oops'"):
        read_cycler_log(tmp_path / "text.csv")
    with pytest.raises(InsituXRDError, match="does not exist"):
        read_cycler_log(tmp_path / "missing.csv")
    with pytest.raises(InsituXRDError, match="unknown format"):
        read_cycler_log(p, format="xlsx")
    with pytest.raises(InsituXRDError, match="unknown column-map key"):
        read_cycler_log(p, columns={"volts": "voltage_V"})


# ---------------------------------------------------------------------------------------------
# alignment


def test_time_offset_alignment(tmp_path):
    # The cycler started 150 s before the detector: cycler clock = frame clock + 150 s.
    t = np.arange(0.0, 20001.0, 10.0)
    path = write_csv(tmp_path / "c.csv", ["time_s", "voltage_V", "current_mA"], np.c_[t, 3.7 + 0 * t, np.full(t.size, I_MA)])
    log = read_cycler_log(path)
    ft = np.linspace(0, 19000, 20)
    good = attach_echem(frames(ft), log, offset_s=150.0, active_mass_mg=MASS_MG, theoretical_capacity_mAh_g=QTH)
    assert np.max(np.abs(good["x_li"].values - x_true(ft + 150.0))) < 1e-6
    naive = attach_echem(frames(ft), log, offset_s=0.0, active_mass_mg=MASS_MG, theoretical_capacity_mAh_g=QTH)
    assert np.max(np.abs(naive["x_li"].values - x_true(ft + 150.0))) > 1e-3


def test_frames_outside_log_flagged_not_dropped(tmp_path):
    t = np.arange(100.0, 1001.0, 10.0)
    log = read_cycler_log(write_csv(tmp_path / "c.csv", ["time_s", "voltage_V", "current_mA"], np.c_[t, 3.7 + 0 * t, np.full(t.size, I_MA)]))
    ds = frames([0.0, 100.0, 500.0, 1000.0, 1500.0, np.nan])
    out = attach_echem(ds, log, 0.0, MASS_MG, QTH, 1.0)
    assert out.sizes["frame"] == 6
    assert list(out["echem_status"].values) == ["before_log", "ok", "ok", "ok", "after_log", "no_time"]
    for name in ("voltage_V", "capacity_mAh_g", "x_li", "soc"):
        vals = out[name].values
        assert np.isnan(vals[[0, 4, 5]]).all() and np.isfinite(vals[1:4]).all(), name
    assert out["x_li"].values[1] == pytest.approx(1.0)  # the log's capacity starts at its first sample
    assert out.attrs["echem_frames_outside_log"] == 3
    # attaching twice replaces, not duplicates
    again = attach_echem(out, log, 0.0, MASS_MG, QTH, 0.95)
    assert again["x_li"].values[1] == pytest.approx(0.95)


def test_attach_without_mass_keeps_voltage(tmp_path):
    t = np.arange(0.0, 101.0, 10.0)
    log = read_cycler_log(write_csv(tmp_path / "c.csv", ["time_s", "voltage_V", "current_mA"], np.c_[t, 3.6 + 0.01 * t, np.full(t.size, 0.1)]))
    out = attach_echem(frames([5.0, 50.0]), log, 0.0, None, 275.0, 1.0)
    assert out["voltage_V"].values == pytest.approx([3.65, 4.1])
    assert np.isnan(out["x_li"].values).all()
    assert "not given" in out.attrs["echem_active_mass_mg"]
    with pytest.raises(InsituXRDError, match="time_s"):
        attach_echem(xr.Dataset(coords={"frame": [0, 1]}), log)


def test_attach_results_roundtrip_netcdf(tmp_path):
    t = np.arange(0.0, 101.0, 10.0)
    log = read_cycler_log(write_csv(tmp_path / "c.csv", ["time_s", "voltage_V", "current_mA"], np.c_[t, 3.6 + 0 * t, np.full(t.size, 0.1)]))
    out = attach_echem(frames([5.0, 500.0]), log, 0.0, MASS_MG, QTH, 1.0)
    out.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "r.nc", engine="h5netcdf")
    assert list(back["echem_status"].values) == ["ok", "after_log"]
    assert back["x_li"].values[0] == pytest.approx(out["x_li"].values[0])


# ---------------------------------------------------------------------------------------------
# BioLogic .mpr (galvani) and .mpt, Neware (NewareNDA)


def _module(shortname: bytes, data: bytes, version: int, date: bytes) -> bytes:
    from galvani.BioLogic import VMPmodule_hdr_v1

    hdr = np.zeros(1, dtype=VMPmodule_hdr_v1)
    hdr["shortname"] = shortname.ljust(10)
    hdr["longname"] = b"synthetic module".ljust(25)
    hdr["length"] = len(data)
    hdr["version"] = version
    hdr["date"] = date
    return b"MODULE" + hdr.tobytes() + data


def write_mpr(path: Path, time_s, ewe_V, i_mA, q_mAh, start: dt.datetime) -> Path:
    """A BioLogic .mpr in the layout galvani reverse-engineered (data module version 2)."""
    from galvani.BioLogic import MPR_MAGIC, VMPdata_dtype_from_colIDs

    col_ids = [1, 4, 6, 8, 13]  # mode (flags), time/s, Ewe/V, I/mA, (Q-Qo)/mA.h
    dtype, _flags = VMPdata_dtype_from_colIDs(col_ids)
    rec = np.zeros(len(time_s), dtype=dtype)
    rec["flags"] = 1  # mode 1 = galvanostatic
    rec["time/s"], rec["Ewe/V"], rec["I/mA"], rec["(Q-Qo)/mA.h"] = time_s, ewe_V, i_mA, q_mAh
    head = np.array([len(time_s)], "<u4").tobytes() + np.array([len(col_ids)], "u1").tobytes()
    head += np.array(col_ids, "<u2").tobytes()
    head = head.ljust(405, b"\x00")
    date = start.strftime("%m/%d/%y").encode()
    ole_days = (start - dt.datetime(1899, 12, 30)).total_seconds() / 86400.0
    log_data = bytes(465) + np.array([ole_days], "<f8").tobytes() + bytes(200)
    blob = MPR_MAGIC + _module(b"VMP Set", bytes(64), 0, date) + _module(b"VMP data", head + rec.tobytes(), 2, date)
    blob += _module(b"VMP LOG", log_data, 0, date)
    path.write_bytes(blob)
    return path


def test_biologic_mpr_via_galvani(tmp_path):
    t = np.arange(0.0, 7201.0, 60.0)
    q = I_MA * t / 3600
    start = dt.datetime(2026, 3, 14, 9, 30, 0)
    path = write_mpr(tmp_path / "cell.mpr", t, 3.6 + 1e-4 * t, np.full(t.size, I_MA), q, start)
    log = read_cycler_log(path)
    assert log.format == "mpr"
    assert log.time_s == pytest.approx(t)
    assert log.voltage_V == pytest.approx(3.6 + 1e-4 * t, abs=1e-6)  # float32 in the file
    assert log.capacity_mAh == pytest.approx(q, rel=1e-12)
    assert "(Q-Qo)/mA.h" in log.capacity_source
    assert log.start_utc.startswith("2026-03-14T09:30")
    out = attach_echem(frames([0.0, 1800.0, 9000.0]), log, 0.0, MASS_MG, QTH, 1.0)
    assert out["x_li"].values[1] == pytest.approx(x_true(1800.0), abs=1e-9)
    assert out["echem_status"].values[2] == "after_log"
    # a file that only claims to be .mpr
    (tmp_path / "fake.mpr").write_bytes(b"not a biologic file at all")
    with pytest.raises(InsituXRDError, match="fake.mpr: galvani cannot read"):
        read_cycler_log(tmp_path / "fake.mpr")


def write_mpt(path: Path, header: list[str], rows: np.ndarray, decimal_comma: bool = False) -> Path:
    n_header = 5
    lines = ["EC-Lab ASCII FILE", f"Nb header lines : {n_header}", "", "Galvanostatic Cycling with Potential Limitation",
             "\t".join(header)]
    for r in rows:
        cells = [f"{v:.6f}" for v in r]
        lines.append("\t".join(c.replace(".", ",") if decimal_comma else c for c in cells))
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return path


@pytest.mark.parametrize("decimal_comma", [False, True])
def test_biologic_mpt_text_export(tmp_path, decimal_comma):
    t = np.arange(0.0, 3601.0, 30.0)
    q = I_MA * t / 3600
    rows = np.c_[np.ones(t.size), t, 3.6 + 1e-4 * t, np.full(t.size, I_MA), q]
    path = write_mpt(tmp_path / "cell.mpt", ["mode", "time/s", "Ewe/V", "<I>/mA", "(Q-Qo)/mA.h"], rows, decimal_comma)
    log = read_cycler_log(path)
    assert log.format == "mpt" and log.notes[0] == "read with galvani.BioLogic.MPTfile"
    assert log.time_s == pytest.approx(t) and log.capacity_mAh == pytest.approx(q, abs=1e-6)
    assert log.voltage_V == pytest.approx(3.6 + 1e-4 * t, abs=1e-6)


def test_mpt_with_columns_galvani_does_not_know(tmp_path):
    t = np.arange(0.0, 601.0, 60.0)
    rows = np.c_[t, 3.6 + 0 * t, np.full(t.size, 0.2), np.zeros(t.size)]
    path = write_mpt(tmp_path / "odd.txt", ["time/s", "Ecell/V", "I/mA", "custom thing"], rows, decimal_comma=True)
    log = read_cycler_log(path)  # .txt with the EC-Lab magic line -> mpt
    assert log.format == "mpt"
    assert "insitu_xrd's EC-Lab ASCII reader" in " ".join(log.notes)
    assert log.capacity_mAh[-1] == pytest.approx(0.2 * 600 / 3600)
    (tmp_path / "broken.mpt").write_text("EC-Lab ASCII FILE\nsomething else\n")
    with pytest.raises(InsituXRDError, match="Nb header lines"):
        read_cycler_log(tmp_path / "broken.mpt")


def test_neware_nda_through_newarenda(tmp_path, monkeypatch):
    """The .nda path maps NewareNDA's documented DataFrame columns (a stand-in module here:
    NewareNDA is an optional dependency and no .nda file can be written without Neware software)."""
    import pandas as pd

    t = np.arange(0.0, 3601.0, 10.0)
    stamps = pd.Timestamp("2026-05-01 08:00:00") + pd.to_timedelta(t, unit="s")
    df = pd.DataFrame({
        "Index": np.arange(t.size), "Cycle": 1, "Step": 1 + (t > 1800), "Status": "CC_Chg",
        "Time": np.where(t > 1800, t - 1800, t),  # step time, restarts at the step change
        "Voltage": 3.6 + 1e-4 * t, "Current(mA)": np.full(t.size, I_MA),
        "Charge_Capacity(mAh)": I_MA * np.where(t > 1800, t - 1800, t) / 3600, "Discharge_Capacity(mAh)": 0.0,
        "Timestamp": stamps,
    })
    fake = types.ModuleType("NewareNDA")
    fake.read = lambda path: df
    monkeypatch.setitem(sys.modules, "NewareNDA", fake)
    (tmp_path / "cell.nda").write_bytes(b"NEWARE stand-in")
    log = read_cycler_log(tmp_path / "cell.nda")
    assert log.time_s == pytest.approx(t)  # from Timestamp, not the per-step Time
    assert log.capacity_mAh[-1] == pytest.approx(I_MA * 1.0)  # integrated, not the per-step capacity
    assert log.start_utc.startswith("2026-05-01T08:00:00")
    monkeypatch.setitem(sys.modules, "NewareNDA", None)
    with pytest.raises(InsituXRDError, match="pip install NewareNDA"):
        read_cycler_log(tmp_path / "cell.nda")
