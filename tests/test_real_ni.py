"""Real Ni standard patterns (NSLS-II XPD, PDFstream test data; q axes): Le Bail recovers the Ni
lattice parameter (room temperature 3.5238 A, pyFAI's Ni calibrant) within 0.002 A, starting 0.7 %
off. Skips when ../shared/data/real is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
from typer.testing import CliRunner

from insitu_xrd.cli.main import app
from insitu_xrd.fit.engine import Refinement
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.io.instprm import read_instrument
from insitu_xrd.io.pattern_files import read_pattern_1d

A_NI = 3.5238


def _poni_wavelength_A(path: Path) -> float:
    for line in path.read_text().splitlines():
        if line.startswith("Wavelength:"):
            return float(line.split(":", 1)[1]) * 1e10
    raise AssertionError(f"no Wavelength in {path}")


def _lebail_spec(range_deg: tuple[float, float], a_start: float = 3.50) -> RefinementSpec:
    return RefinementSpec.model_validate(
        {
            "mode": "lebail",
            "range_2theta_deg": list(range_deg),
            "background": {"chebyshev": 10},
            "profile": {"W": 10.0, "refine": ["U", "V", "W", "X", "Y"]},
            "phases": [{"name": "Ni", "template": "ni", "a": a_start, "mustrain": 0.0, "refine": ["a", "scale"]}],
        }
    )


@pytest.mark.parametrize(
    "chi, poni, range_deg, rwp_max",
    [
        # header has the wavelength (0.1671 A); signal reaches ~30 deg (detector corners beyond)
        ("Ni_chi_file.chi", None, (3.0, 30.0), 0.35),
        # no wavelength in this .chi: it is in the calibration PONI (0.1903 A)
        ("Ni.chi", "Ni_calib.poni", (3.0, 40.0), 0.06),
    ],
)
def test_lebail_real_ni_lattice(real_data_dir: Path, chi: str, poni: str | None, range_deg, rwp_max: float):
    wl = _poni_wavelength_A(real_data_dir / poni) if poni else None
    pat = read_pattern_1d(real_data_dir / chi, wavelength_A=wl)
    assert pat.metadata["x_unit_in_file"] == "q_A^-1"
    if poni is None:
        assert pat.wavelength_A == pytest.approx(0.1671)
    result = Refinement(_lebail_spec(range_deg), pat.wavelength_A).fit(pat.two_theta_deg, pat.intensity, pat.sigma)
    a, esd = result.values["Ni_a"], result.esds["Ni_a"]
    print(f"{chi}: a(Ni) = {a:.5f} +/- {esd:.5f} A, Rwp {result.rwp:.3f}, GoF {result.gof:.2f}")
    assert abs(a - A_NI) < 0.002
    assert 0 < esd < 0.002
    assert result.rwp < rwp_max


def test_instrument_cli_on_real_ni_then_refine(real_data_dir: Path, tmp_path: Path):
    """The calibrant workflow on real data: instrument file from the Ni pattern (a fixed), reused by a
    Le Bail fit with only the lattice, scale and background free."""
    chi = real_data_dir / "Ni.chi"
    wl = _poni_wavelength_A(real_data_dir / "Ni_calib.poni")
    inst_path = tmp_path / "ni.instprm"
    res = CliRunner().invoke(app, ["instrument", str(chi), "--calibrant", "Ni", "--wavelength-a", f"{wl}",
                                   "--range-2theta-deg", "3", "40", "--chebyshev", "10", "-o", str(inst_path)])
    assert res.exit_code == 0, res.output
    inst = read_instrument(inst_path, wavelength_A=wl)
    assert inst.W > 0 and abs(inst.zero_deg) < 0.02
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"wavelength_A: {wl}\n"
        "refinement:\n"
        "  mode: lebail\n"
        "  range_2theta_deg: [3.0, 40.0]\n"
        "  background: {chebyshev: 10}\n"
        "  profile: {instrument: ni.instprm}\n"
        "  phases:\n"
        "    - {name: Ni, template: ni, a: 3.51, mustrain: 0, refine: [a, scale]}\n"
    )
    out = tmp_path / "fit.nc"
    res = CliRunner().invoke(app, ["refine", str(chi), "--recipe", str(recipe), "-o", str(out)])
    assert res.exit_code == 0, res.output
    ds = xr.load_dataset(out, engine="h5netcdf")
    # the zero from the instrument file is applied: a comes back to the calibrant value
    assert abs(float(ds["a"].sel(phase="Ni").item()) - A_NI) < 0.001  # (one-frame series schema)
    assert float(ds["rwp"].item()) < 0.06
