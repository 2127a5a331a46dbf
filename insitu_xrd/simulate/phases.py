"""Example phases of every crystal system, for simulated patterns with known truth.

Structures are of the kinds met in battery and cell-component diffraction, with plausible (not
published-refinement) coordinates: what matters for a test is that the forward model and the fit
use the same structure. Cells in A and deg; B in A^2.
"""

from __future__ import annotations

from insitu_xrd.core.crystal import Phase, Site

__all__ = ["li2mno3", "cmcm_layered", "triclinic_oxide", "la2nio4", "limn2o4", "nio", "EXAMPLE_PHASES"]


def li2mno3(name: str = "M", cell=(4.929, 8.531, 5.025, 90.0, 109.35, 90.0), o1=(0.219, 0.0, 0.227)) -> Phase:
    """Li2MnO3, C2/m (monoclinic, b unique): Li on 2b, 2c, 4h; Mn on 4g (0, y, 0); O1 on 4i
    (x, 0, z), O2 on 8j."""
    sites = [Site("Li1", (0.0, 0.5, 0.0), {"Li": 1.0}, 1.0), Site("Li2", (0.0, 0.0, 0.5), {"Li": 1.0}, 1.0),
             Site("Li3", (0.0, 0.662, 0.5), {"Li": 1.0}, 1.0), Site("Mn1", (0.0, 0.167, 0.0), {"Mn": 1.0}, 0.4),
             Site("O1", tuple(o1), {"O": 1.0}, 0.6), Site("O2", (0.254, 0.321, 0.223), {"O": 1.0}, 0.6)]
    return Phase(name, "C 1 2/m 1", tuple(cell), sites, 4)


def cmcm_layered(name: str = "O", cell=(3.05, 9.84, 4.11, 90.0, 90.0, 90.0), na_y: float = 0.37) -> Phase:
    """An orthorhombic Cmcm layered sodium oxide: Na on 4c (0, y, 1/4), Mn on 4a, O on 8f (0, y, z)."""
    sites = [Site("Na", (0.0, na_y, 0.25), {"Na": 1.0}, 1.2), Site("Mn", (0.0, 0.0, 0.0), {"Mn": 1.0}, 0.4),
             Site("O", (0.0, 0.09, 0.58), {"O": 1.0}, 0.6)]
    return Phase(name, "C m c m", tuple(cell), sites, 4)


def triclinic_oxide(name: str = "T", cell=(5.12, 5.93, 7.21, 95.3, 102.1, 88.4)) -> Phase:
    """A P-1 lithium manganese oxide with atoms on general positions (2i)."""
    sites = [Site("Mn", (0.11, 0.23, 0.31), {"Mn": 1.0}, 0.4), Site("O", (0.37, 0.18, 0.07), {"O": 1.0}, 0.6),
             Site("Li", (0.62, 0.71, 0.44), {"Li": 1.0}, 1.0)]
    return Phase(name, "P -1", tuple(cell), sites, 2)


def la2nio4(name: str = "Q", cell=(3.86, 3.86, 12.71, 90.0, 90.0, 90.0), la_z: float = 0.361) -> Phase:
    """La2NiO4, I4/mmm (tetragonal): La on 4e (0, 0, z), Ni 2a, O1 4c, O2 4e."""
    sites = [Site("La", (0.0, 0.0, la_z), {"La": 1.0}, 0.5), Site("Ni", (0.0, 0.0, 0.0), {"Ni": 1.0}, 0.4),
             Site("O1", (0.0, 0.5, 0.0), {"O": 1.0}, 0.7), Site("O2", (0.0, 0.0, 0.176), {"O": 1.0}, 0.9)]
    return Phase(name, "I 4/m m m", tuple(cell), sites, 2)


def limn2o4(name: str = "S", a: float = 8.245, o_x: float = 0.263) -> Phase:
    """LiMn2O4 spinel, Fd-3m origin 2: Li 8a, Mn 16d, O on 32e (x, x, x)."""
    sites = [Site("Li", (0.125, 0.125, 0.125), {"Li": 1.0}, 1.0), Site("Mn", (0.5, 0.5, 0.5), {"Mn": 1.0}, 0.4),
             Site("O", (o_x, o_x, o_x), {"O": 1.0}, 0.7)]
    return Phase(name, "F d -3 m:2", (a, a, a, 90.0, 90.0, 90.0), sites, 8)


def nio(name: str = "NiO", a: float = 4.177) -> Phase:
    """NiO, rock salt (Fm-3m): a rock-salt surface/impurity phase of Ni-rich oxides."""
    sites = [Site("Ni", (0.0, 0.0, 0.0), {"Ni": 1.0}, 0.4), Site("O", (0.5, 0.5, 0.5), {"O": 1.0}, 0.6)]
    return Phase(name, "F m -3 m", (a, a, a, 90.0, 90.0, 90.0), sites, 4)


#: name -> builder, by crystal system
EXAMPLE_PHASES = {"monoclinic": li2mno3, "orthorhombic": cmcm_layered, "triclinic": triclinic_oxide,
                  "tetragonal": la2nio4, "cubic": limn2o4}
