"""Inputs and outputs of the FEA stage (:mod:`insitu_xrd.io.fea_io`).

Strain inputs: the strain stage's own files (made here by the strain stage itself,
:func:`insitu_xrd.io.strain_export.compute_strain` + ``write_strain_outputs`` on a results
Dataset shaped like the pipeline's) and hand-written CSVs; every bad input gives one
InsituXRDError line naming the file and the problem. Result file: a tiny real FEA run written and
read back (atomic write, provenance, not an FEA file refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from insitu_xrd.core.fea import FEAParams, StrainCurve, run_fea
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.fea_io import (
    fea_params_json,
    load_strain_table,
    read_fea_result,
    read_strain_curve,
    write_fea_result,
)
from insitu_xrd.io.strain_export import compute_strain, write_strain_outputs

A0, C0 = 2.872, 14.20
#: tiny model settings: a few grains, a coarse mesh, 8 steps (seconds, not minutes)
TINY = {"geometry": {"n_grains": 4, "mesh_size_um": 0.8, "seed": 3}, "time": {"n_steps": 8, "n_snapshots": 3}}


def results_dataset(nf: int = 24) -> xr.Dataset:
    """Sequential results as the pipeline writes them (H2 only): a shrinks 2 %, c rises then falls."""
    x = np.linspace(1.0, 0.3, nf)
    a = A0 * (1 - 0.02 * (1 - x) / 0.7)
    c = C0 * (1 + 0.015 * np.sin(np.pi * (1 - x) / 0.8))
    two = ("frame", "phase")
    col = lambda v: v[:, None]  # noqa: E731
    nan = np.full((nf, 1), np.nan)
    return xr.Dataset(
        {"a": (two, col(a)), "a_esd": (two, np.full((nf, 1), 2e-4)), "c": (two, col(c)),
         "c_esd": (two, np.full((nf, 1), 1e-3)), "volume": (two, col(np.sqrt(3) / 2 * a * a * c)),
         "volume_esd": (two, np.full((nf, 1), 0.01)), "microstrain": (two, nan), "microstrain_esd": (two, nan),
         "size": (two, nan), "size_esd": (two, nan), "phase_fraction": (two, np.ones((nf, 1))),
         "phase_fraction_esd": (two, np.full((nf, 1), 0.01)), "scale": (two, np.ones((nf, 1))), "scale_esd": (two, nan),
         "rwp": ("frame", np.full(nf, 5.0)), "gof": ("frame", np.full(nf, 1.1)), "zero_shift": ("frame", np.zeros(nf)),
         "status": ("frame", np.array(["ok"] * nf))},
        coords={"frame": np.arange(nf), "phase": ["H2"], "time_s": ("frame", np.arange(nf) * 600.0),
                "frame_name": ("frame", [f"frame_{i:04d}.tif" for i in range(nf)]),
                "voltage_V": ("frame", 3.6 + (1 - x)), "capacity_mAh_g": ("frame", (1 - x) * 275.0),
                "x_li": ("frame", x), "soc": ("frame", 1 - x)})


@pytest.fixture(scope="module")
def strain_dirs(tmp_path_factory) -> dict[str, Path]:
    """The strain stage's outputs against x_li and against soc (strain.nc, strain_curve.csv, strain.json)."""
    out = {}
    for versus in ("x_li", "soc"):
        d = tmp_path_factory.mktemp(f"strain_{versus}")
        st = compute_strain(results_dataset(), versus=versus, n_points=41, method="pchip")
        write_strain_outputs(st, d)
        out[versus] = d
    return out


def _csv(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------------
# the strain stage's own files


def test_strain_nc_csv_and_json_give_the_same_curve(strain_dirs):
    d = strain_dirs["x_li"]
    st = xr.load_dataset(d / "strain.nc", engine="h5netcdf")
    tabs = [load_strain_table(d / name) for name in ("strain.nc", "strain_curve.csv", "strain.json")]
    for tab in tabs:
        np.testing.assert_allclose(tab.x_li, st["x"].values, atol=1e-12)
        np.testing.assert_allclose(tab.eps_a, st["curve_eps_a"].values, atol=1e-12)
        np.testing.assert_allclose(tab.eps_c, st["curve_eps_c"].values, atol=1e-12)
        assert tab.abscissa == "x_li" and tab.note == ""
    # a folder is read as <folder>/strain.nc
    np.testing.assert_array_equal(load_strain_table(d).eps_c, tabs[0].eps_c)
    # the truth: a shrinks by 2 % at x = 0.3 (relative to the first frame)
    assert tabs[0].eps_a[np.argmin(tabs[0].x_li)] == pytest.approx(-0.02, abs=1e-6)


def test_soc_abscissa_is_mapped_to_x_li_through_the_frames(strain_dirs):
    d = strain_dirs["soc"]
    for name in ("strain.nc", "strain.json"):
        tab = load_strain_table(d / name)
        assert tab.abscissa == "soc" and "per-frame" in tab.note
        np.testing.assert_allclose(tab.x_li, 1 - np.linspace(0, 0.7, 41), atol=1e-9)
    # a CSV has no per-frame pairs: the SoC rule x = x_start - soc * soc_to_x, stated in the note
    tab = load_strain_table(d / "strain_curve.csv", x_start=0.98, soc_to_x=0.9)
    np.testing.assert_allclose(tab.x_li, 0.98 - 0.9 * np.linspace(0, 0.7, 41), atol=1e-9)
    assert "0.98 - soc * 0.9" in tab.note


def test_read_strain_curve_returns_the_models_strain_curve(strain_dirs):
    curve = read_strain_curve(strain_dirs["x_li"] / "strain.nc")
    assert isinstance(curve, StrainCurve)
    tab = load_strain_table(strain_dirs["x_li"] / "strain.nc")
    np.testing.assert_allclose(np.asarray(curve.x_li), tab.x_li)
    np.testing.assert_allclose(np.asarray(curve.eps_c), tab.eps_c)


def test_results_file_instead_of_strain_file_is_named(tmp_path):
    p = tmp_path / "results.nc"
    results_dataset().to_netcdf(p, engine="h5netcdf")
    with pytest.raises(InsituXRDError, match=r"results\.nc: not a strain file .*run `insitu-xrd strain` on it first"):
        load_strain_table(p)


# ---------------------------------------------------------------------------------------------
# any CSV


def test_csv_dialects_soc_column_and_extra_columns(tmp_path):
    comma = _csv(tmp_path, "# made by hand\nX_Li,eps_a,eps_c,voltage_V\n1.0,0,0,3.6\n0.7,-0.008,0.012,3.9\n"
                           "0.4,-0.019,0.004,4.2\n")
    tab = load_strain_table(comma)
    np.testing.assert_allclose(tab.x_li, [1.0, 0.7, 0.4])
    np.testing.assert_allclose(tab.eps_c, [0, 0.012, 0.004])
    semi = _csv(tmp_path, "x_li;eps_a;eps_c\n0.4;-0.019;0.004\n0.7;-0.008;0.012\n1.0;0;0\n", "semi.csv")
    np.testing.assert_allclose(load_strain_table(semi).eps_a, [-0.019, -0.008, 0])  # increasing x is fine
    blank = _csv(tmp_path, "soc  eps_a  eps_c\n0.0  0  0\n0.3  -0.008  0.012\n0.6  -0.019  0.004\n", "blank.txt")
    tab = load_strain_table(blank)
    assert tab.abscissa == "soc"
    np.testing.assert_allclose(tab.x_li, [1.0, 0.7, 0.4])
    # rows with a NaN are dropped
    gaps = _csv(tmp_path, "x_li,eps_a,eps_c\n1.0,0,0\n0.8,nan,0.01\n0.6,-0.01,0.015\n", "gaps.csv")
    assert len(load_strain_table(gaps)) == 2


@pytest.mark.parametrize("text, pattern", [
    ("x_li,eps_a\n1.0,0\n0.5,-0.01\n", r"missing column eps_c; columns found: x_li, eps_a"),
    ("voltage_V,eps_a,eps_c\n3.6,0,0\n4.0,-0.01,0.01\n", r"missing column x_li \(or soc\)"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n0.8,-0.01,0.01\n0.9,-0.012,0.012\n0.5,-0.02,0\n",
     r"x_li is not strictly monotone: it turns back at line 4 \(0\.8 -> 0\.9\)"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n0.8,-0.01,0.01\n0.8,-0.012,0.012\n", r"repeats at line 4"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n0.7,-0.8,1.2\n0.4,-1.9,0.4\n", r"column eps_a reaches -1\.9.*strain in percent.*divide"),
    ("x_li,eps_a,eps_c (%)\n1.0,0,0\n0.7,-0.008,0.012\n", r"column 'eps_c \(%\)' is strain in percent"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n0.7,-0.8%,1.2%\n", r"line 3, column eps_a: '-0\.8%' is in percent"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n0.7,abc,0.01\n", r"line 3, column eps_a: 'abc' is not a number"),
    ("x_li,eps_a,eps_c\n", r"header only, no data rows"),
    ("x_li,eps_a,eps_c\n1.0,0,0\n", r"fewer than two rows"),
    ("x_li,eps_a,eps_c\n3.0,0,0\n2.5,-0.01,0.01\n", r"x_li spans 2\.5 \.\. 3, outside \[0, 2\]"),
])
def test_bad_csv_gives_one_line_naming_the_file(tmp_path, text, pattern):
    p = _csv(tmp_path, text, "bad.csv")
    with pytest.raises(InsituXRDError, match=pattern) as exc:
        load_strain_table(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(InsituXRDError, match="does not exist"):
        load_strain_table(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InsituXRDError, match=r"empty file \(0 bytes\)"):
        load_strain_table(tmp_path / "empty.csv")
    (tmp_path / "bin.csv").write_bytes(b"x_li\x00\x01\x02")
    with pytest.raises(InsituXRDError, match="not a text"):
        load_strain_table(tmp_path / "bin.csv")
    with pytest.raises(InsituXRDError, match="folder without strain.nc"):
        load_strain_table(tmp_path)


# ---------------------------------------------------------------------------------------------
# the result file


@pytest.fixture(scope="module")
def tiny_result(strain_dirs) -> xr.Dataset:
    curve = read_strain_curve(strain_dirs["x_li"] / "strain.nc")
    return run_fea(curve, FEAParams.from_dict(TINY), None)


def test_result_round_trip_with_provenance(tiny_result, tmp_path):
    out = write_fea_result(tiny_result, tmp_path / "sub" / "fea.nc", source="strain.nc",
                           extra_attrs={"label": "bare", "recipe": {"fea": {"coated": False}}})
    assert out == tmp_path / "sub" / "fea.nc" and not (tmp_path / "sub" / "fea.nc.partial").exists()
    back = read_fea_result(out)
    assert back.attrs["strain_source"] == "strain.nc" and back.attrs["label"] == "bare"
    assert json.loads(back.attrs["recipe"]) == {"fea": {"coated": False}}
    assert {"numpy", "insitu-xrd"} <= set(json.loads(back.attrs["software_versions"]))
    assert "created_utc" in back.attrs
    for name in ("damage_mean", "damage", "x_li", "node_x_um", "cell_nodes", "stress_von_mises_MPa"):
        np.testing.assert_array_equal(back[name].values, tiny_result[name].values)
        assert back[name].dims == tiny_result[name].dims
    np.testing.assert_array_equal(back["soc"].values, tiny_result["soc"].values)
    # the parameters recorded by the model come back as a dict
    params = fea_params_json(back)
    assert params["geometry"]["n_grains"] == 4 and params["time"]["n_steps"] == 8
    assert FEAParams.from_dict(params) == FEAParams.from_dict(TINY)


def test_a_failed_write_keeps_the_previous_result(tiny_result, tmp_path):
    out = write_fea_result(tiny_result, tmp_path / "fea.nc")
    before = out.read_bytes()
    (tmp_path / "fea.nc.partial").mkdir()  # the temporary file cannot be created: the write fails
    with pytest.raises(InsituXRDError, match=r"fea\.nc: cannot be written"):
        write_fea_result(tiny_result, out)
    assert out.read_bytes() == before


def test_read_fea_result_refuses_other_files(tmp_path, strain_dirs):
    with pytest.raises(InsituXRDError, match="does not exist"):
        read_fea_result(tmp_path / "none.nc")
    with pytest.raises(InsituXRDError, match=r"strain\.nc: not a result of `insitu-xrd fea`"):
        read_fea_result(strain_dirs["x_li"] / "strain.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(InsituXRDError, match="cannot be read as NetCDF"):
        read_fea_result(tmp_path / "junk.nc")
