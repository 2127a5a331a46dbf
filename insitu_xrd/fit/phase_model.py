"""One phase's refinable crystallography: lattice parameters and site parameters with constraints.

Every phase, template or CIF, goes through the same model:

- **Lattice**: the free cell parameters of the space group's crystal system
  (:func:`insitu_xrd.core.symmetry.lattice_constraints`): ``a`` (cubic); ``a c`` (tetragonal,
  hexagonal, trigonal in hexagonal axes); ``a alpha`` (rhombohedral axes); ``a b c``
  (orthorhombic); ``a b c`` + the angle between the two non-unique axes (monoclinic: ``beta`` for
  b unique); all six (triclinic). Tied ones follow (b = a), fixed angles stay fixed. Parameter
  names ``<P>_a ... <P>_gamma``.
- **Sites**: a refined parameter changes one or more structural *slots* of the start structure
  affinely (``slot = start + coef * (p - p_start)``): a coordinate moves along an allowed
  displacement of its site (derived from the site-symmetry group, so a site on a special position
  stays on it: a 3-fold axis allows only z, ``x, 2x, z`` moves y with twice x), an occupancy, a B.
  Constraints are parameters with several slots: a **B group** (``biso_groups``) is one parameter
  changing the B of every site in it; an **occupancy sum** (``occupancy_sums``) gives each term but
  the last its own parameter, and each of those also changes the last term's occupancy by -1, so
  the sum stays at ``total`` exactly. Parameter names ``<P>_<site>_<x|y|z|occ|occ_El|biso_A2>``.
- **nmc811 names** are aliases of site parameters of the template (``o_z`` = z of O,
  ``li_occupancy`` / ``ni_li_mixing`` = Li / Ni occupancy of the Li (3b) site, ``biso_tm_A2``,
  ``biso_li_A2``, ``biso_o_A2``); ``biso_A2`` in a phase's ``refine`` is one B for all its sites.
  ``ni_li_mixing`` refined without ``li_occupancy`` on a full 3b site exchanges Li for Ni
  (Li + Ni = 1: the occupancy-sum mechanism), which is how the template fills the site.
- Ties between phases (an optional phase's size tied to its parent's) are the recipe's
  ``constraints:`` (lmfit expressions), unchanged.

Derivatives of |F|^2 with respect to every site parameter are analytic
(:func:`insitu_xrd.core.structure_factor.structure_factor_sq_derivatives` with the slot changes).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from insitu_xrd.core.crystal import Phase, Site
from insitu_xrd.core.structure_factor import SlotChange
from insitu_xrd.core.symmetry import LatticeConstraints, site_freedom
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.spec import PhaseSpec

__all__ = ["SiteParameter", "PhaseModel", "NMC_ALIASES", "site_parameter_label", "cell_from_values"]

#: nmc811 template names -> (site label, quantity) of the template; bounds as before the generic model.
NMC_ALIASES: dict[str, tuple[str, str, tuple[float, float]]] = {
    "o_z": ("O", "z", (0.24, 0.28)),
    "li_occupancy": ("Li", "occ_Li", (0.0, 1.0)),
    "ni_li_mixing": ("Li", "occ_Ni", (0.0, 0.3)),
    "biso_tm_A2": ("TM", "biso_A2", (0.0, 5.0)),
    "biso_li_A2": ("Li", "biso_A2", (0.0, 10.0)),
    "biso_o_A2": ("O", "biso_A2", (0.0, 5.0)),
}
_COORD_INDEX = {"x": 0, "y": 1, "z": 2}
#: default bounds: a coordinate moves at most this far from its start (fractional)
_COORD_RANGE = 0.1
_BISO_BOUNDS = (0.0, 10.0)


def site_parameter_label(label: str) -> str:
    """A site label as it appears in parameter names: letters and digits only ('Li1/Ni2' -> 'Li1Ni2')."""
    return re.sub(r"[^A-Za-z0-9]", "", label)


def cell_from_values(phase: Phase, vals: dict[str, float]) -> tuple[float, ...]:
    """The full cell (A, deg) of ``phase`` with its free lattice parameters from ``vals``
    (``<phase>_a`` ...; missing ones at the phase's cell)."""
    lat = phase.lattice
    p = phase.name
    return lat.cell(phase.cell, {ln: vals[f"{p}_{ln}"] for ln in lat.free if f"{p}_{ln}" in vals})


@dataclass
class SiteParameter:
    """A refined site parameter: its start value, bounds and the slots it changes."""

    name: str
    start: float
    lower: float
    upper: float
    changes: list[SlotChange] = dataclasses.field(default_factory=list)


class PhaseModel:
    """The refinable parameters of one phase (see the module docstring).

    spec : the phase's recipe entry; phase : its start structure (template or CIF, start cell
    applied). ``phase`` of the model is that structure with the start values of the site
    parameters and the constraints applied (B groups equal, occupancy sums exact)."""

    def __init__(self, spec: PhaseSpec, phase: Phase):
        self.name = spec.name
        base = _copy_sites(phase)
        self.lattice: LatticeConstraints = base.lattice
        self.params: dict[str, SiteParameter] = {}
        self._labels = {s.label: i for i, s in enumerate(base.sites)}
        self._labels.update({site_parameter_label(s.label): i for i, s in enumerate(base.sites)})
        self._apply_site_starts(spec, base)
        is_nmc = spec.template is not None and spec.template.lower() == "nmc811"
        if is_nmc:
            for alias, (label, what, bounds) in NMC_ALIASES.items():
                if alias in spec.refine:
                    self._add(base, f"{self.name}_{alias}", self._site_index(label, alias), what, bounds)
            li = self._site_index("Li", "ni_li_mixing")
            if "ni_li_mixing" in spec.refine and "li_occupancy" not in spec.refine and \
                    abs(sum(base.sites[li].occupancy.values()) - 1.0) < 1e-9:
                # a full 3b site: Ni replaces Li (Li + Ni = 1, an occupancy sum), as the template builds it
                self.params[f"{self.name}_ni_li_mixing"].changes.append(SlotChange(li, "occ", -1.0, element="Li"))
        if "biso_A2" in spec.refine:
            b0 = spec.biso_A2 if spec.biso_A2 is not None else base.sites[0].biso_A2
            par = SiteParameter(f"{self.name}_biso_A2", float(b0), *_BISO_BOUNDS)
            for i, s in enumerate(base.sites):
                s.biso_A2 = float(b0)
                par.changes.append(SlotChange(i, "biso"))
            self.params[par.name] = par
        for label, site_spec in spec.sites.items():
            i = self._site_index(label, f"sites.{label}")
            for what in site_spec.refine:
                self._add(base, self._site_param_name(i, base, what), i, what, None)
        for group in spec.biso_groups:
            self._add_biso_group(base, group)
        for osum in spec.occupancy_sums:
            self._add_occupancy_sum(base, osum.terms, osum.total)
        self.phase = base

    # ----- construction -------------------------------------------------------------------------
    def _site_index(self, label: str, where: str) -> int:
        i = self._labels.get(label, self._labels.get(site_parameter_label(label)))
        if i is None:
            raise InsituXRDError(f"phase {self.name}: {where}: no site {label!r}; sites: "
                                 f"{sorted({k for k in self._labels if k == site_parameter_label(k)})}")
        return i

    def _site_param_name(self, i: int, base: Phase, what: str) -> str:
        return f"{self.name}_{site_parameter_label(base.sites[i].label)}_{what}"

    def _apply_site_starts(self, spec: PhaseSpec, base: Phase) -> None:
        for label, ss in spec.sites.items():
            i = self._site_index(label, f"sites.{label}")
            site = base.sites[i]
            # start coordinates move the site along its allowed displacements (a start x of an
            # (x, x, x) site moves y and z with it: the site stays on its special position)
            freedom = site_freedom(base.spacegroup, site.xyz)
            xyz = np.asarray(site.xyz, dtype=float)
            for cname, k in _COORD_INDEX.items():
                v = getattr(ss, cname)
                if v is None or abs(float(v) - xyz[k]) < 1e-12:
                    continue
                cols = [j for j in range(len(freedom.free)) if abs(freedom.basis[k, j]) > 1e-12]
                if not cols:
                    raise InsituXRDError(
                        f"phase {self.name}: sites.{label}.{cname} = {v}: the site at {tuple(round(c, 5) for c in site.xyz)} "
                        f"is on a special position where {cname} is fixed by symmetry (free: {', '.join(freedom.free) or 'none'})")
                j = cols[0]
                xyz = xyz + freedom.basis[:, j] * (float(v) - xyz[k]) / freedom.basis[k, j]
            site.xyz = tuple(float(c) for c in xyz)  # type: ignore[assignment]
            if ss.occ is not None:
                if len(site.occupancy) != 1:
                    raise InsituXRDError(f"phase {self.name}: sites.{label}.occ: the site holds {sorted(site.occupancy)}; "
                                         "give the species' occupancies in the CIF or refine occ_<El>")
                site.occupancy = {next(iter(site.occupancy)): float(ss.occ)}
            if ss.biso_A2 is not None:
                site.biso_A2 = float(ss.biso_A2)

    def _add(self, base: Phase, name: str, i: int, what: str, bounds: tuple[float, float] | None) -> None:
        """Parameter ``name`` for quantity ``what`` (x, y, z, occ, occ_El, biso_A2) of site i."""
        site = base.sites[i]
        if what in _COORD_INDEX:
            freedom = site_freedom(base.spacegroup, site.xyz)
            if what not in freedom.free:
                follows = freedom.follows()
                if what in follows:
                    # a coordinate tied to a free one: refine that one (it moves both)
                    src = re.findall(r"[xyz]", follows[what])[0]
                    self._add(base, name[: -len(what)] + src, i, src, bounds)
                    return
                raise InsituXRDError(
                    f"phase {self.name}: site {site.label} at {tuple(round(v, 5) for v in site.xyz)} is on a special "
                    f"position ({freedom.site_symmetry_order} symmetry operations map it onto itself): {what} is fixed "
                    f"by symmetry; free coordinates: {', '.join(freedom.free) or 'none'}")
            if name in self.params:
                return
            j = freedom.free.index(what)
            start = float(site.xyz[_COORD_INDEX[what]])
            lo, hi = bounds or (start - _COORD_RANGE, start + _COORD_RANGE)
            vec = tuple(float(v) for v in freedom.basis[:, j])
            self.params[name] = SiteParameter(name, start, lo, hi, [SlotChange(i, "xyz", 1.0, vec)])  # type: ignore[arg-type]
            return
        if name in self.params:
            return
        if what == "biso_A2":
            lo, hi = bounds or _BISO_BOUNDS
            self.params[name] = SiteParameter(name, float(site.biso_A2), lo, hi, [SlotChange(i, "biso")])
            return
        if what == "occ":
            total = sum(site.occupancy.values())
            changes = [SlotChange(i, "occ", (occ / total) if total > 0 else 1.0 / len(site.occupancy), element=el)
                       for el, occ in site.occupancy.items()]
            lo, hi = bounds or (0.0, max(1.0, 1.5 * total))
            self.params[name] = SiteParameter(name, float(total), lo, hi, changes)
            return
        element = what[len("occ_"):]
        if element not in site.occupancy:
            raise InsituXRDError(f"phase {self.name}: site {site.label} holds {sorted(site.occupancy)}, not {element!r} "
                                 f"({what}); add the species with occupancy 0 in the CIF to refine it")
        start = float(site.occupancy[element])
        lo, hi = bounds or (0.0, max(1.0, 1.5 * start))
        self.params[name] = SiteParameter(name, start, lo, hi, [SlotChange(i, "occ", element=element)])

    def _add_biso_group(self, base: Phase, group: list[str]) -> None:
        if len(group) < 2:
            raise InsituXRDError(f"phase {self.name}: biso_groups entry {group} needs at least two sites")
        idx = [self._site_index(lab, "biso_groups") for lab in group]
        name = self._site_param_name(idx[0], base, "biso_A2")
        b0 = float(base.sites[idx[0]].biso_A2)
        for k in idx:
            base.sites[k].biso_A2 = b0
            own = self._site_param_name(k, base, "biso_A2")
            if own in self.params and own != name:
                raise InsituXRDError(f"phase {self.name}: {own} is refined on its own and in biso_groups {group}")
        self.params[name] = SiteParameter(name, b0, *_BISO_BOUNDS, [SlotChange(k, "biso") for k in idx])

    def _add_occupancy_sum(self, base: Phase, terms: list[str], total: float) -> None:
        slots = []
        for term in terms:
            label, _, element = term.partition(":")
            i = self._site_index(label, f"occupancy_sums term {term!r}")
            occ = base.sites[i].occupancy
            if not element:
                if len(occ) != 1:
                    raise InsituXRDError(f"phase {self.name}: occupancy_sums term {term!r}: site {label} holds "
                                         f"{sorted(occ)}; write {label}:<Element>")
                element = next(iter(occ))
            if element not in occ:
                raise InsituXRDError(f"phase {self.name}: occupancy_sums term {term!r}: site {label} holds "
                                     f"{sorted(occ)}, not {element!r}")
            slots.append((i, element))
        *free, (last_i, last_el) = slots
        rest = 0.0
        for i, el in free:
            what = f"occ_{el}" if len(base.sites[i].occupancy) > 1 else "occ"
            name = self._site_param_name(i, base, what)
            self._add(base, name, i, what, None)
            par = self.params[name]
            if len(par.changes) != 1:
                raise InsituXRDError(f"phase {self.name}: {name} is already in another occupancy constraint")
            par.changes.append(SlotChange(last_i, "occ", -1.0, element=last_el))
            rest += base.sites[i].occupancy[el]
        base.sites[last_i].occupancy[last_el] = float(total - rest)

    # ----- evaluation ---------------------------------------------------------------------------
    @property
    def lattice_names(self) -> tuple[str, ...]:
        """Free lattice parameter names (a, b, c, alpha, beta, gamma subset)."""
        return self.lattice.free

    def cell(self, vals: dict[str, float]) -> tuple[float, ...]:
        return cell_from_values(self.phase, vals)

    def site_key(self, vals: dict[str, float]) -> tuple:
        """The values the structure depends on (cache key)."""
        return tuple(vals.get(n, np.nan) for n in self.params)

    def structure(self, vals: dict[str, float]) -> Phase:
        """The start structure with the site parameters in ``vals`` applied (cell unchanged)."""
        moved = [(par, vals[n] - par.start) for n, par in self.params.items() if n in vals and vals[n] != par.start]
        if not moved:
            return self.phase
        ph = _copy_sites(self.phase)
        for par, delta in moved:
            for ch in par.changes:
                site = ph.sites[ch.site]
                if ch.kind == "xyz":
                    site.xyz = tuple(float(v) for v in np.asarray(site.xyz) + delta * ch.coef * np.asarray(ch.vector))  # type: ignore[assignment]
                elif ch.kind == "occ":
                    site.occupancy[ch.element] = site.occupancy.get(ch.element, 0.0) + delta * ch.coef
                else:
                    site.biso_A2 = site.biso_A2 + delta * ch.coef
        return ph

    def labels(self) -> dict[str, str]:
        """{parameter: "<phase>/<site(s)>/<quantity>"}: what each site parameter is, for results
        (sites joined by '+' for a B group or an occupancy sum's followers)."""
        out = {}
        for n, par in self.params.items():
            first = par.changes[0]
            sites = "+".join(dict.fromkeys(self.phase.sites[ch.site].label for ch in par.changes
                                           if ch.kind == first.kind))
            if first.kind == "xyz":
                k = int(np.argmax(np.abs(first.vector)))
                quantity = "xyz"[k]
            elif first.kind == "occ":
                quantity = f"occ_{first.element}"
            else:
                quantity = "biso_A2"
            out[n] = f"{self.name}/{sites}/{quantity}"
        return out


def _copy_sites(phase: Phase) -> Phase:
    """A copy of ``phase`` whose sites (and their occupancy dicts) can be changed freely."""
    sites = [Site(s.label, tuple(s.xyz), dict(s.occupancy), s.biso_A2) for s in phase.sites]  # type: ignore[arg-type]
    return dataclasses.replace(phase, sites=sites)

