"""Battery names only where they mean something (issue 19).

* ``cathode_phases`` (the phases ``cathode_fraction`` is the fraction within, the strain's and the
  figures' default) are the phases marked ``role: electrode``, else the nmc811 template's (its
  optional H3 included) — not "the first phase plus every optional phase" (an impurity or a
  second sample phase is no cathode).
* The refinement figure zooms on the main phase's strongest reflections, whatever the phase; for
  NMC811 that is still the 003 and 104.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import xarray as xr

from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.sequential import cathode_phases
from insitu_xrd.plots.rietveld import default_zooms, zoom_windows


def _spec(*phases: dict) -> RefinementSpec:
    return RefinementSpec.model_validate({"mode": "lebail", "phases": list(phases)})


def test_the_electrode_is_the_nmc811_phases_not_the_optional_impurities():
    spec = _spec({"name": "H2", "template": "nmc811", "a": 2.87, "c": 14.2},
                 {"name": "H3", "template": "nmc811", "a": 2.82, "c": 14.0, "optional": True},
                 {"name": "CeO2", "template": "ceo2", "optional": True},
                 {"name": "Li", "template": "li_metal"}, {"name": "Al", "template": "al"})
    assert cathode_phases(spec) == ["H2", "H3"]
    # a sample without an electrode phase (a calibrant and an optional second phase): none
    assert cathode_phases(_spec({"name": "Si", "template": "si"}, {"name": "Ni", "template": "ni", "optional": True})) == []


def test_phases_marked_role_electrode_are_the_electrode():
    """``role: electrode`` wins over the template default (read from the phase spec's ``role``)."""
    phases = [SimpleNamespace(name="LFP", template=None, optional=False, role="electrode"),
              SimpleNamespace(name="FP", template=None, optional=True, role="electrode"),
              SimpleNamespace(name="NMC", template="nmc811", optional=False, role=None),
              SimpleNamespace(name="C", template=None, optional=True, role=None)]
    assert cathode_phases(SimpleNamespace(phases=phases)) == ["LFP", "FP"]


def _fit_dataset(wavelength_A: float, phases: dict[str, tuple[float, dict[str, float]]]) -> xr.Dataset:
    """A fit Dataset's reflection list (what the zooms read) for cubic phases: name -> (a, {hkl: area})."""
    tth, phase, hkl, d, area = [], [], [], [], []
    for name, (a, peaks) in phases.items():
        for label, ar in peaks.items():
            h, k, l = (int(c) for c in label)
            dd = a / math.sqrt(h * h + k * k + l * l)
            tth.append(2 * math.degrees(math.asin(wavelength_A / (2 * dd))))
            phase.append(name), hkl.append(label), d.append(dd), area.append(ar)
    x = np.linspace(5.0, 40.0, 3501)
    return xr.Dataset({"obs": ("two_theta", np.zeros_like(x)), "peak_two_theta": ("peak", tth),
                       "peak_phase": ("peak", phase), "peak_hkl": ("peak", hkl), "peak_d_A": ("peak", d),
                       "peak_area": ("peak", area)}, coords={"two_theta": x, "phase": list(phases)})


def test_zoom_panels_are_the_main_phases_strongest_reflections():
    # Si the main phase (first); Ni's reflections are stronger but Ni is not the sample's main phase;
    # Si 331 (weak) lies beside 400 and shares its panel
    si = (5.431, {"111": 100.0, "220": 60.0, "311": 35.0, "400": 40.0, "331": 12.0, "422": 5.0})
    ni = (3.524, {"111": 900.0, "200": 400.0})
    ds = _fit_dataset(0.6, {"Si": si, "Ni": ni})
    assert default_zooms(ds) == ["111", "220", "400"]
    windows = zoom_windows(ds)
    assert [w[0] for w in windows] == ["111", "220", "400"]
    peak = {h: t for h, p, t in zip(ds["peak_hkl"].values, ds["peak_phase"].values, ds["peak_two_theta"].values)
            if p == "Si"}
    for (label, lo, hi) in windows:
        assert lo < peak[label] < hi
    # a weaker reflection inside a stronger one's window joins its panel (cubic 511 and 333: same d)
    close = _fit_dataset(0.6, {"Si": (5.431, {"111": 100.0, "220": 60.0, "511": 50.0, "333": 45.0, "531": 20.0})})
    assert default_zooms(close) == ["111", "220", "511 333"]
    # no reflection list (a fit without peaks): no default zooms
    assert default_zooms(ds.drop_vars(["peak_two_theta", "peak_phase", "peak_hkl", "peak_d_A", "peak_area"])) == []


def test_role_is_a_recipe_key() -> None:
    """The recipe's ``role: electrode`` reaches cathode_phases through the validated spec."""
    from insitu_xrd.fit.spec import RefinementSpec
    from insitu_xrd.pipeline.sequential import cathode_phases

    spec = RefinementSpec(phases=[{"name": "NMC", "template": "nmc811"},
                                  {"name": "LMO", "cif": "lmo.cif", "role": "electrode"},
                                  {"name": "Al", "template": "al"}])
    assert cathode_phases(spec) == ["LMO"]
