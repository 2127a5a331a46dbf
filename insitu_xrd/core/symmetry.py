"""Symmetry constraints on refinable crystal parameters, derived from the space group (gemmi).

Nothing here is tabulated per space group: the free lattice parameters follow from the crystal
system and, for monoclinic groups, from the unique axis read off the rotation matrices; the free
coordinates of a site follow from its site-symmetry group (the operations that map the site onto
itself modulo lattice translations): a displacement ``dx`` is allowed when ``R dx = dx`` for every
such operation, so the allowed displacements are the null space of the stacked ``R - I``. That
null space is written in reduced row-echelon form, which names the free coordinates (x, y or z)
and how the others follow (``x, 2x, z`` -> free x and z, y = 2x).

Units: lengths in A, angles in degrees; fractional coordinates.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import gemmi
import numpy as np


__all__ = [
    "LATTICE_NAMES",
    "LatticeConstraints",
    "lattice_constraints",
    "SiteFreedom",
    "site_freedom",
    "site_orbit",
    "reciprocal_metric_and_derivatives",
    "find_space_group",
    "row_echelon",
]

#: Cell parameter names, in the order of ``Phase.cell``.
LATTICE_NAMES: tuple[str, ...] = ("a", "b", "c", "alpha", "beta", "gamma")
_COORDS = ("x", "y", "z")
_TOL = 1e-4


# ---------------------------------------------------------------------------------------------
# space-group names


def find_space_group(name: str) -> gemmi.SpaceGroup | None:
    """gemmi space group from a Hermann-Mauguin symbol as programs write it.

    Accepted besides gemmi's own spellings ("R -3 m:H", "F d -3 m:2"): no spaces ("Fd-3m"), an
    origin-choice or setting suffix after a colon (":1", ":2", ":H", ":R") or glued to the symbol
    ("R-3mH", "R-3mR"), TOPAS/GSAS-II origin letters "Z" (origin choice 2) and "S" (origin choice 1,
    e.g. "Fd-3mZ", "Fd-3mS"), and an underscore before screw-axis digits ("P6_3/mmc"). Returns
    None when no spelling matches."""
    text = " ".join(str(name).strip().strip("'\"").split())
    if not text:
        return None
    candidates = [text]
    base = text.replace("_", "")
    candidates.append(base)
    compact = base.replace(" ", "")
    m = re.fullmatch(r"(.+?)\s*:\s*([12HRhr])", compact)
    suffix = None
    if m:
        compact, suffix = m.group(1), m.group(2).upper()
    elif len(compact) > 2 and compact[-1] in "ZS" and compact[0] in "PABCFIR":
        suffix = "2" if compact[-1] == "Z" else "1"
        compact = compact[:-1]
    elif len(compact) > 2 and compact[0] == "R" and compact[-1] in "HR" and compact[-2] != " ":
        suffix = compact[-1]
        compact = compact[:-1]
    for cand in candidates:
        sg = _lookup(cand)
        if sg is not None:
            return sg
    if suffix is not None:
        sg = _lookup(f"{compact}:{suffix}")
        if sg is not None:
            return sg
    return _lookup(compact)


def _lookup(name: str) -> gemmi.SpaceGroup | None:
    try:
        return gemmi.find_spacegroup_by_name(name)
    except (ValueError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------------
# lattice


@dataclass(frozen=True)
class LatticeConstraints:
    """How the six cell parameters follow from the free ones.

    free : names of the free lattice parameters (subset of a, b, c, alpha, beta, gamma).
    follows : {tied parameter: the free one it equals} (b = a in tetragonal/hexagonal, ...).
    fixed : {parameter: value fixed by the crystal system (deg)}; a parameter not fixed keeps the
        start cell's value when it is neither free nor tied.
    system : crystal system ('cubic', 'hexagonal', 'trigonal', 'rhombohedral' (trigonal in
        rhombohedral axes), 'tetragonal', 'orthorhombic', 'monoclinic', 'triclinic').
    """

    free: tuple[str, ...]
    follows: dict
    fixed: dict
    system: str

    def cell(self, start: tuple[float, ...], values: dict[str, float]) -> tuple[float, ...]:
        """The full cell from the free values (missing ones at the start cell's)."""
        out = list(start)
        for i, n in enumerate(LATTICE_NAMES):
            if n in values and n in self.free:
                out[i] = float(values[n])
        for n, src in self.follows.items():
            out[LATTICE_NAMES.index(n)] = out[LATTICE_NAMES.index(src)]
        for n, v in self.fixed.items():
            out[LATTICE_NAMES.index(n)] = float(v)
        return tuple(out)

    def matrix(self) -> np.ndarray:
        """d(cell)/d(free), shape (6, len(free)): the cell is linear in the free parameters."""
        m = np.zeros((6, len(self.free)))
        for j, n in enumerate(self.free):
            m[LATTICE_NAMES.index(n), j] = 1.0
            for tied, src in self.follows.items():
                if src == n:
                    m[LATTICE_NAMES.index(tied), j] = 1.0
        return m


def _rotations(sg: gemmi.SpaceGroup) -> list[np.ndarray]:
    return [np.array(op.rot, dtype=float) / gemmi.Op.DEN for op in sg.operations().sym_ops]


def _monoclinic_unique_axis(sg: gemmi.SpaceGroup) -> int:
    for r in _rotations(sg):
        if np.allclose(r, np.eye(3)) or np.allclose(r, -np.eye(3)):
            continue
        diag = np.round(np.diag(r)).astype(int)
        for i in range(3):
            if all(diag[i] != diag[j] for j in range(3) if j != i):
                return i
    return 1


def lattice_constraints(sg: gemmi.SpaceGroup) -> LatticeConstraints:
    """Free and tied lattice parameters of a space group (its crystal system and setting)."""
    return _lattice_for(sg.xhm())


@functools.lru_cache(maxsize=512)
def _lattice_for(xhm: str) -> LatticeConstraints:
    sg = gemmi.find_spacegroup_by_name(xhm)
    system = sg.crystal_system_str()
    if system == "cubic":
        return LatticeConstraints(("a",), {"b": "a", "c": "a"}, {"alpha": 90.0, "beta": 90.0, "gamma": 90.0}, system)
    if system == "tetragonal":
        return LatticeConstraints(("a", "c"), {"b": "a"}, {"alpha": 90.0, "beta": 90.0, "gamma": 90.0}, system)
    if system in ("hexagonal", "trigonal"):
        if sg.ext == "R" or sg.xhm().endswith(":R"):
            return LatticeConstraints(("a", "alpha"), {"b": "a", "c": "a", "beta": "alpha", "gamma": "alpha"}, {},
                                      "rhombohedral")
        return LatticeConstraints(("a", "c"), {"b": "a"}, {"alpha": 90.0, "beta": 90.0, "gamma": 120.0}, system)
    if system == "orthorhombic":
        return LatticeConstraints(("a", "b", "c"), {}, {"alpha": 90.0, "beta": 90.0, "gamma": 90.0}, system)
    if system == "monoclinic":
        unique = _monoclinic_unique_axis(sg)
        angle = ("alpha", "beta", "gamma")[unique]
        fixed = {n: 90.0 for n in ("alpha", "beta", "gamma") if n != angle}
        return LatticeConstraints(("a", "b", "c", angle), {}, fixed, system)
    return LatticeConstraints(LATTICE_NAMES, {}, {}, "triclinic")


def _direct_metric(cell: tuple[float, ...]) -> np.ndarray:
    a, b, c, al, be, ga = cell
    ca, cb, cg = np.cos(np.radians([al, be, ga]))
    return np.array([[a * a, a * b * cg, a * c * cb], [a * b * cg, b * b, b * c * ca], [a * c * cb, b * c * ca, c * c]])


def reciprocal_metric_and_derivatives(cell: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal metric G* (1/A^2) and d(G*)/d(cell_i), shape (6, 3, 3), cell_i in A and degrees.

    1/d^2 = h G* h^T; dG* = -G* dG G*, with the direct metric's derivatives in closed form."""
    a, b, c, al, be, ga = cell
    ra, rb, rg = np.radians([al, be, ga])
    ca, cb, cg = np.cos([ra, rb, rg])
    sa, sb, sg_ = np.sin([ra, rb, rg])
    g = _direct_metric(cell)
    gs = np.linalg.inv(g)
    dg = np.zeros((6, 3, 3))
    dg[0] = [[2 * a, b * cg, c * cb], [b * cg, 0, 0], [c * cb, 0, 0]]
    dg[1] = [[0, a * cg, 0], [a * cg, 2 * b, c * ca], [0, c * ca, 0]]
    dg[2] = [[0, 0, a * cb], [0, 0, b * ca], [a * cb, b * ca, 2 * c]]
    deg = np.pi / 180.0
    dg[3] = np.array([[0, 0, 0], [0, 0, -b * c * sa], [0, -b * c * sa, 0]]) * deg
    dg[4] = np.array([[0, 0, -a * c * sb], [0, 0, 0], [-a * c * sb, 0, 0]]) * deg
    dg[5] = np.array([[0, -a * b * sg_, 0], [-a * b * sg_, 0, 0], [0, 0, 0]]) * deg
    dgs = -np.einsum("ij,njk,kl->nil", gs, dg, gs)
    return gs, dgs


# ---------------------------------------------------------------------------------------------
# sites


@dataclass(frozen=True)
class SiteFreedom:
    """Allowed displacements of a site: ``dxyz = basis @ d(free)``.

    free : free coordinate names ('x', 'y', 'z'), possibly empty (a fixed special position).
    basis : (3, len(free)) matrix; column j is the displacement per unit change of free[j]
        (identity on the free coordinates' rows, e.g. (1, 2, 0) for x of ``x, 2x, z``).
    site_symmetry_order : number of operations (centring included) mapping the site onto itself.
    """

    free: tuple[str, ...]
    basis: np.ndarray
    site_symmetry_order: int

    def follows(self) -> dict[str, str]:
        """{dependent coordinate: expression in the free ones}, e.g. {'y': '2*x'}."""
        out: dict[str, str] = {}
        for i, cname in enumerate(_COORDS):
            if cname in self.free:
                continue
            terms = []
            for j, f in enumerate(self.free):
                k = self.basis[i, j]
                if abs(k) > 1e-9:
                    terms.append(f"{k:g}*{f}" if abs(k - 1) > 1e-9 else f)
            if terms:
                out[cname] = " + ".join(terms)
        return out


def _site_ops(sg: gemmi.SpaceGroup, xyz: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    ops = []
    for op in sg.operations():
        r = np.array(op.rot, dtype=float) / gemmi.Op.DEN
        t = np.array(op.tran, dtype=float) / gemmi.Op.DEN
        ops.append((r, t))
    return ops


def site_freedom(sg: gemmi.SpaceGroup, xyz: tuple[float, float, float]) -> SiteFreedom:
    """The free coordinates of a site from its site-symmetry group (see the module docstring)."""
    x = np.asarray(xyz, dtype=float)
    rows = []
    order = 0
    for r, t in _site_ops(sg, x):
        diff = r @ x + t - x
        if np.all(np.abs(diff - np.round(diff)) < _TOL):
            order += 1
            rows.append(r - np.eye(3))
    a = np.vstack(rows) if rows else np.zeros((1, 3))
    _, sv, vt = np.linalg.svd(a)
    rank = int(np.sum(sv > 1e-8))
    null = vt[rank:]  # (k, 3): rows span the allowed displacements
    if null.shape[0] == 0:
        return SiteFreedom((), np.zeros((3, 0)), order)
    rref, pivots = row_echelon(null)
    free = tuple(_COORDS[p] for p in pivots)
    basis = rref[: len(pivots)].T
    basis[np.abs(basis) < 1e-12] = 0.0
    return SiteFreedom(free, basis, order)


def row_echelon(m: np.ndarray, rel_tol: float = 1e-9) -> tuple[np.ndarray, list[int]]:
    """Reduced row-echelon form of ``m`` (pivots below ``rel_tol`` x max|m| count as zero) and
    its pivot columns; the first ``len(pivots)`` rows span the row space, one pivot each."""
    a = np.array(m, dtype=float)
    tol = rel_tol * max(float(np.abs(a).max()) if a.size else 0.0, 1e-300)
    pivots: list[int] = []
    row = 0
    for col in range(a.shape[1]):
        if row >= a.shape[0]:
            break
        p = row + int(np.argmax(np.abs(a[row:, col])))
        if abs(a[p, col]) < tol:
            continue
        a[[row, p]] = a[[p, row]]
        a[row] /= a[row, col]
        for i in range(a.shape[0]):
            if i != row:
                a[i] -= a[i, col] * a[row]
        pivots.append(col)
        row += 1
    a[np.abs(a) < 1e-12] = 0.0
    return a, pivots


def site_orbit(sg: gemmi.SpaceGroup, xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positions generated from a site (wrapped into [0, 1)) and, for each, the rotation
    part of one operation generating it (the derivative of that position with respect to an
    allowed displacement of the site: every operation giving the same position gives the same
    derivative along allowed displacements). Shapes (m, 3) and (m, 3, 3)."""
    x = np.asarray(xyz, dtype=float)
    pos: list[np.ndarray] = []
    rot: list[np.ndarray] = []
    for r, t in _site_ops(sg, x):
        p = np.mod(r @ x + t, 1.0)
        if not any(np.all(np.abs(((p - q) + 0.5) % 1.0 - 0.5) < _TOL) for q in pos):
            pos.append(p)
            rot.append(r)
    return np.array(pos), np.array(rot)
