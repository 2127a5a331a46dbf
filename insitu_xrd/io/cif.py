"""Load a :class:`insitu_xrd.core.crystal.Phase` from a CIF file (small-molecule / inorganic CIF).

Read with gemmi (``gemmi.read_small_structure``): space group (from the Hall symbol, the H-M
symbol or the symmetry operations, whichever the file gives), cell, and the ``_atom_site_`` loop
(fractional coordinates, occupancy, U_iso or B_iso, or anisotropic U converted to U_eq).

Conventions:

- Isotropic displacement: B = 8 pi^2 U (A^2). gemmi converts ``_atom_site_B_iso_or_equiv`` to U
  when the file gives B. Anisotropic-only sites use U_eq = (1/3) sum_ij U^ij a*_i a*_j (a_i . a_j).
  A site without any displacement parameter gets ``default_biso_A2``.
- Sites sharing one position (mixed occupancy, e.g. Li/Ni on 3b written as two rows) become one
  :class:`Site` with an occupancy per element; their B values are occupancy-averaged.
- Scattering factors are those of the neutral element (``Ni3+`` -> ``Ni``): at the s ranges of
  powder data the ionic difference matters only for the first few low-angle reflections and is
  within what the refined scale/B absorb; this matches the built-in templates.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gemmi
import numpy as np

from insitu_xrd.core.crystal import Phase, Site
from insitu_xrd.core.symmetry import find_space_group
from insitu_xrd.errors import InsituXRDError

__all__ = ["read_cif_phase", "phase_from_cif_text"]

_EIGHT_PI2 = 8.0 * math.pi**2


def _u_equivalent(aniso: gemmi.SMat33f, cell: gemmi.UnitCell) -> float:
    """U_eq (A^2) of an anisotropic U in the CIF convention (U^ij on the a*_i a*_j basis)."""
    u = np.array([[aniso.u11, aniso.u12, aniso.u13], [aniso.u12, aniso.u22, aniso.u23], [aniso.u13, aniso.u23, aniso.u33]])
    a, b, c = cell.a, cell.b, cell.c
    al, be, ga = np.radians([cell.alpha, cell.beta, cell.gamma])
    g = np.array(
        [
            [a * a, a * b * np.cos(ga), a * c * np.cos(be)],
            [a * b * np.cos(ga), b * b, b * c * np.cos(al)],
            [a * c * np.cos(be), b * c * np.cos(al), c * c],
        ]
    )
    recip = np.sqrt(np.diag(np.linalg.inv(g)))  # a*, b*, c*
    return float(np.einsum("ij,i,j,ij->", u, recip, recip, g) / 3.0)


def _space_group(st: gemmi.SmallStructure, where: str) -> gemmi.SpaceGroup:
    sg = None
    try:
        sg = st.find_spacegroup()  # gemmi >= 0.6.5: Hall, then H-M, then symops
    except AttributeError:  # older gemmi: the space group it found while reading
        sg = getattr(st, "spacegroup", None)
    except (RuntimeError, ValueError):  # a spelling gemmi refuses (TOPAS "Fd-3mZ"): tried below
        sg = None
    if sg is None and st.spacegroup_hm:
        # TOPAS / GSAS-II spellings: origin letters Z/S, ":H"/":R" or "H"/"R" glued on, no spaces
        sg = find_space_group(st.spacegroup_hm)
    if sg is None:
        given = f" {st.spacegroup_hm!r}" if st.spacegroup_hm else ""
        raise InsituXRDError(
            f"{where}: no space group found from{given or ' the file'} (_space_group_name_H-M_alt, "
            "_symmetry_space_group_name_H-M, _space_group_name_Hall or symmetry operations); accepted H-M forms: "
            "'R -3 m:H', 'R-3m', 'R-3mH', 'R-3m:R', 'P6_3/mmc', 'C2/m', 'Fd-3m:2', 'Fd-3mZ' (origin 2), 'Fd-3mS' (origin 1)")
    return sg


def _from_structure(st: gemmi.SmallStructure, name: str, where: str, default_biso_A2: float, z_formula: int | None) -> Phase:
    sg = _space_group(st, where)
    cell = st.cell
    if not (cell.a > 0 and cell.b > 0 and cell.c > 0):
        raise InsituXRDError(f"{where}: cell lengths missing or zero (_cell_length_a/b/c)")
    if not all(np.isfinite(v) and v < 1000 for v in (cell.a, cell.b, cell.c)) or not all(
            0 < v < 180 for v in (cell.alpha, cell.beta, cell.gamma)):
        raise InsituXRDError(f"{where}: cell ({cell.a:g}, {cell.b:g}, {cell.c:g} A, {cell.alpha:g}, {cell.beta:g}, "
                             f"{cell.gamma:g} deg) is not a crystal cell")
    if len(st.sites) == 0:
        raise InsituXRDError(f"{where}: no atom sites (_atom_site_ loop with fract_x/y/z)")
    # group rows by position (mixed-occupancy sites)
    groups: list[tuple[np.ndarray, list[gemmi.SmallStructure.Site]]] = []
    for site in st.sites:
        xyz = np.array([site.fract.x, site.fract.y, site.fract.z], dtype=float)
        if not np.all(np.isfinite(xyz)):
            raise InsituXRDError(f"{where}: site {site.label!r} has no fractional coordinates")
        for pos, members in groups:
            if np.all(np.abs(((xyz - pos) + 0.5) % 1.0 - 0.5) < 1e-4):
                members.append(site)
                break
        else:
            groups.append((xyz, [site]))
    sites: list[Site] = []
    for pos, members in groups:
        occupancy: dict[str, float] = {}
        b_weighted, occ_total = 0.0, 0.0
        for s in members:
            element = s.element.name
            if element in ("X", ""):
                raise InsituXRDError(f"{where}: site {s.label!r}: unknown element (type symbol {s.type_symbol!r})")
            occ = float(s.occ)
            if not (math.isfinite(occ) and occ >= 0.0):
                raise InsituXRDError(f"{where}: site {s.label!r}: occupancy {occ} is not a number >= 0")
            if occ > 1.0 + 1e-6:
                # TOPAS writes refined occupancies above 1 (a site scale absorbing B or scattering power)
                warnings.warn(f"{where}: site {s.label!r}: occupancy {occ:g} > 1 read as given", UserWarning, stacklevel=2)
            occupancy[element] = occupancy.get(element, 0.0) + occ
            if s.u_iso > 0:
                b = _EIGHT_PI2 * float(s.u_iso)
            elif s.aniso.nonzero():
                b = _EIGHT_PI2 * _u_equivalent(s.aniso, cell)
            else:
                b = default_biso_A2
            b_weighted += occ * b
            occ_total += occ
        label = members[0].label if len(members) == 1 else "/".join(m.label for m in members)
        if occ_total > 1.0 + 1e-3:  # rows sharing one position (a mixed site) must share it
            raise InsituXRDError(f"{where}: site {label!r}: occupancies at ({', '.join(f'{v:g}' for v in pos)}) sum "
                                 f"to {occ_total:g} > 1 (a repeated atom line?)")
        if occ_total <= 0.0:
            raise InsituXRDError(f"{where}: site {label!r}: occupancy 0 (an empty site)")
        biso = b_weighted / occ_total
        sites.append(Site(label, tuple(float(v) for v in pos), occupancy, float(biso)))  # type: ignore[arg-type]
    return Phase(
        name=name,
        space_group=sg.xhm(),
        cell=(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma),
        sites=sites,
        z_formula=int(z_formula) if z_formula else 1,
    )


def _formula_units(block: gemmi.cif.Block) -> int | None:
    value = block.find_value("_cell_formula_units_Z")
    if value is None:
        return None
    try:
        return int(round(float(gemmi.cif.as_number(value))))
    except (TypeError, ValueError):
        return None


def read_cif_phase(path: str | Path, name: str, block: str | None = None, default_biso_A2: float = 0.5) -> Phase:
    """Read a phase from a CIF file.

    path: the CIF. name: the phase name used in parameter names (e.g. "H2").
    block: data block name (``data_<block>``); default: the first block with atom sites.
    default_biso_A2: B (A^2) for sites without a displacement parameter.

    Raises InsituXRDError naming the file when it is missing, unparsable, or lacks a space group,
    cell or sites.
    """
    path = Path(path)
    where = f"CIF file {path}"
    if not path.is_file():
        raise InsituXRDError(f"{where}: does not exist")
    try:
        doc = gemmi.cif.read_file(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with the parse position
        raise InsituXRDError(f"{where}: cannot be parsed ({exc})") from None
    return _phase_from_document(doc, name, block, default_biso_A2, where)


def phase_from_cif_text(text: str, name: str, block: str | None = None, default_biso_A2: float = 0.5) -> Phase:
    """Like :func:`read_cif_phase` for CIF text in memory."""
    where = "CIF text"
    try:
        doc = gemmi.cif.read_string(text)
    except Exception as exc:
        raise InsituXRDError(f"{where}: cannot be parsed ({exc})") from None
    return _phase_from_document(doc, name, block, default_biso_A2, where)


def _phase_from_document(doc: gemmi.cif.Document, name: str, block: str | None, default_biso_A2: float, where: str) -> Phase:
    if block is not None:
        chosen = doc.find_block(block)
        if chosen is None:
            raise InsituXRDError(f"{where}: no data block {block!r} (blocks: {[b.name for b in doc]})")
    else:
        chosen = next((b for b in doc if b.find_value("_atom_site_fract_x") is not None or b.find_loop("_atom_site_fract_x")), None)
        if chosen is None:
            raise InsituXRDError(f"{where}: no data block with an _atom_site_fract_x loop")
    try:
        st = gemmi.make_small_structure_from_block(chosen)
    except Exception as exc:
        raise InsituXRDError(f"{where}: block {chosen.name!r} is not a crystal structure ({exc})") from None
    return _from_structure(st, name, f"{where} (block {chosen.name})", default_biso_A2, _formula_units(chosen))
