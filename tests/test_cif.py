"""CIF -> Phase with gemmi: |F|^2 must match the built-in templates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from insitu_xrd.core.crystal import make_template
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.cif import phase_from_cif_text, read_cif_phase

# NMC811 as a CIF would give it: Li/Ni mixing as two rows on 3b, U_iso (not B), the H-M symbol
# with hexagonal axes, ionic type symbols. Values equal the template defaults (B -> U = B / 8pi^2).
U = lambda b: b / (8 * math.pi**2)  # noqa: E731
NMC_CIF = f"""
data_NMC811
_cell_length_a 2.872
_cell_length_b 2.872
_cell_length_c 14.20
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_space_group_name_H-M_alt 'R -3 m'
_space_group_IT_number 166
_cell_formula_units_Z 3
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
_atom_site_U_iso_or_equiv
Ni1 Ni3+ 0 0 0 0.8 {U(0.3):.8f}
Mn1 Mn4+ 0 0 0 0.1 {U(0.3):.8f}
Co1 Co3+ 0 0 0 0.1 {U(0.3):.8f}
Li1 Li+ 0 0 0.5 0.97 {U(1.0):.8f}
Ni2 Ni2+ 0 0 0.5 0.03 {U(1.0):.8f}
O1 O2- 0 0 0.259 1 {U(0.5):.8f}
"""

# CeO2 with B_iso instead of U_iso (gemmi converts B -> U; we convert back).
CEO2_CIF = """
data_CeO2
_cell_length_a 5.411651
_cell_length_b 5.411651
_cell_length_c 5.411651
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_H-M_alt 'F m -3 m'
_cell_formula_units_Z 4
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
_atom_site_B_iso_or_equiv
Ce Ce4+ 0 0 0 1 0.4
O O2- 0.25 0.25 0.25 1 0.4
"""


def _compare_fsq(phase, template, dmin=0.6):
    refl = template.reflections(dmin)
    f_t = template.structure_factor_sq(refl.hkl)
    f_c = phase.structure_factor_sq(refl.hkl)
    np.testing.assert_allclose(f_c, f_t, rtol=1e-6, atol=1e-6 * f_t.max())
    np.testing.assert_array_equal(phase.reflections(dmin).multiplicity, refl.multiplicity)


def test_nmc811_cif_matches_template(tmp_path):
    path = tmp_path / "nmc811.cif"
    path.write_text(NMC_CIF)
    phase = read_cif_phase(path, name="H2")
    template = make_template("nmc811", name="H2")
    assert phase.name == "H2" and phase.space_group == "R -3 m:H"
    assert phase.cell == pytest.approx(template.cell)
    assert phase.z_formula == 3
    assert len(phase.sites) == 3  # Li/Ni rows merged into one mixed site
    li_site = [s for s in phase.sites if "Li" in s.occupancy][0]
    assert li_site.occupancy == pytest.approx({"Li": 0.97, "Ni": 0.03})
    assert li_site.biso_A2 == pytest.approx(1.0, rel=1e-6)
    _compare_fsq(phase, template)
    assert phase.cell_mass_amu == pytest.approx(template.cell_mass_amu, rel=1e-9)


def test_ceo2_cif_with_biso_matches_template():
    phase = phase_from_cif_text(CEO2_CIF, name="CeO2")
    template = make_template("ceo2", biso_A2=0.4)
    assert phase.space_group == "F m -3 m"
    assert [s.biso_A2 for s in phase.sites] == pytest.approx([0.4, 0.4])
    _compare_fsq(phase, template, dmin=0.5)


def test_hall_symbol_and_aniso_u():
    # Ni with only a Hall symbol for the space group and an anisotropic U (-> U_eq)
    text = """
data_Ni
_cell_length_a 3.5238
_cell_length_b 3.5238
_cell_length_c 3.5238
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_Hall '-F 4 2 3'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Ni Ni 0 0 0
loop_
_atom_site_aniso_label
_atom_site_aniso_U_11
_atom_site_aniso_U_22
_atom_site_aniso_U_33
_atom_site_aniso_U_12
_atom_site_aniso_U_13
_atom_site_aniso_U_23
Ni 0.005 0.005 0.005 0 0 0
"""
    phase = phase_from_cif_text(text, name="Ni")
    assert phase.space_group == "F m -3 m"
    assert phase.sites[0].biso_A2 == pytest.approx(8 * math.pi**2 * 0.005, rel=1e-5)
    _compare_fsq(phase, make_template("ni", biso_A2=8 * math.pi**2 * 0.005), dmin=0.5)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InsituXRDError, match="does not exist"):
        read_cif_phase(tmp_path / "missing.cif", name="X")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 'unterminated\n")
    with pytest.raises(InsituXRDError, match="bad.cif"):
        read_cif_phase(bad, name="X")
    nosites = tmp_path / "nosites.cif"
    nosites.write_text("data_x\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n")
    with pytest.raises(InsituXRDError, match="nosites.cif.*_atom_site_fract_x"):
        read_cif_phase(nosites, name="X")
