"""Recipe `refinement:` section: the documented shape validates; wrong keys/names are clear errors."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from insitu_xrd.fit.spec import RefinementSpec

EXAMPLE = """
refinement:
  mode: lebail                                    # or rietveld
  range_2theta_deg: [1.2, 11.8]
  background: {chebyshev: 8}
  profile: {U: 1.2, V: -0.4, W: 0.9, X: 0.15, Y: 0.3, refine: [W, X, Y]}
  phases:
    - {name: H2, template: nmc811, a: 2.872, c: 14.20, refine: [a, c, mustrain, scale]}
    - {name: H3, template: nmc811, a: 2.82, c: 14.00, refine: [a, c, mustrain, scale], optional: true}
    - {name: Li, template: li_metal, refine: [a, scale]}
  diffuse: [{phase: H2, reflections: ["104"]}, {phase: H2, reflections: ["108", "110"]}]
"""


def test_example_validates() -> None:
    spec = RefinementSpec.model_validate(yaml.safe_load(EXAMPLE)["refinement"])
    assert spec.mode == "lebail"
    assert spec.background.chebyshev == 8
    assert [p.name for p in spec.phases] == ["H2", "H3", "Li"]
    assert spec.phase("H3").optional and not spec.phase("H2").optional
    assert spec.diffuse[1].label == "H2_108_110"


def test_extended_keys_validate() -> None:
    data = yaml.safe_load(EXAMPLE)["refinement"]
    data["exclude_2theta_deg"] = [[3.0, 3.1]]
    data["background"]["humps"] = [{"center_deg": 2.5, "fwhm_deg": 1.5, "refine": ["area", "fwhm_deg"]}]
    data["profile"].update(zero_deg=0.001, displacement_um=5.0, refine=["W", "zero_deg"])
    data["phases"][0].update(li_occupancy=0.9, ni_li_mixing=0.02, o_z=0.258, size_um=0.5,
                             refine=["a", "c", "mustrain", "size_um", "o_z", "ni_li_mixing", "scale"])
    data["diffuse"][0].update(fwhm_deg=0.2, eta=0.3, refine=["area", "fwhm_deg"])
    spec = RefinementSpec.model_validate(data)
    assert spec.exclude_2theta_deg == [(3.0, 3.1)]
    assert spec.phases[0].size_um == 0.5


def test_unknown_key_is_named() -> None:
    data = yaml.safe_load(EXAMPLE)["refinement"]
    data["phases"][0]["lattice_a"] = 2.9
    with pytest.raises(pydantic.ValidationError, match="lattice_a"):
        RefinementSpec.model_validate(data)


def test_bad_refine_name_lists_allowed() -> None:
    data = yaml.safe_load(EXAMPLE)["refinement"]
    data["phases"][0]["refine"] = ["a", "strain"]
    with pytest.raises(pydantic.ValidationError, match="mustrain"):
        RefinementSpec.model_validate(data)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["diffuse"].append({"phase": "H9", "reflections": ["003"]}), "unknown phase"),
        (lambda d: d["phases"].append({"name": "H2", "template": "nmc811"}), "unique"),
        (lambda d: d["phases"][2].update(o_z=0.26), "nmc811"),
        (lambda d: d["phases"][0].update(cif="x.cif"), "exactly one"),
        (lambda d: d.update(range_2theta_deg=[5, 2]), "lo < hi"),
        (lambda d: d["phases"][0].update(template="nmc622"), "allowed"),
    ],
)
def test_cross_checks(mutate, match) -> None:
    data = yaml.safe_load(EXAMPLE)["refinement"]
    mutate(data)
    with pytest.raises(pydantic.ValidationError, match=match):
        RefinementSpec.model_validate(data)


def test_constraints_limits_asymmetry_and_diffuse_range_validate() -> None:
    data = yaml.safe_load(EXAMPLE)["refinement"]
    data.update(constraints={"H3_mustrain": "H2_mustrain * 1.3"}, limits={"H2_mustrain": [0, 5000], "zero_deg": [None, 0.01]})
    data["profile"].update(sh_l=0.002, refine=["W", "sh_l"])
    data["diffuse"][0].update(fwhm_deg=0.2, fwhm_range_deg=[0.1, 0.5])
    spec = RefinementSpec.model_validate(data)
    assert spec.limits["zero_deg"] == (None, 0.01) and spec.profile.sh_l == 0.002
    assert spec.diffuse[0].fwhm_bounds_deg == (0.1, 0.5) and spec.diffuse[1].fwhm_bounds_deg == (0.075, 1.2)
    for key, value, match in (("limits", {"H2_mustrain": [5000, 0]}, "min < max"),):
        bad = dict(data, **{key: value})
        with pytest.raises(pydantic.ValidationError, match=match):
            RefinementSpec.model_validate(bad)
    data["diffuse"][0]["fwhm_range_deg"] = [0.3, 0.5]
    with pytest.raises(pydantic.ValidationError, match="fwhm_range_deg"):
        RefinementSpec.model_validate(data)
    data["diffuse"][0].pop("fwhm_range_deg")
    data["profile"]["sh_l"] = -0.01
    with pytest.raises(pydantic.ValidationError, match="sh_l"):
        RefinementSpec.model_validate(data)
