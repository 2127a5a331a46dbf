"""Crystal structures of the refined phases, and what is cached about them between fits.

`StructureCache` holds the phases of one `Refinement` (their `PhaseModel`s: lattice and site
parameters) and what is expensive to recompute: |F|^2 dominates the cost of a Rietveld
evaluation, and the reflection list of a phase changes only when its cell moves by more than
1 %, so both are cached between fits (`StructureCache.fsq`, `StructureCache.reflections`). The
symmetry-generated site positions, which depend on neither the cell nor the occupancies, are
memoised per space group and site (`site_positions`). `StructureCache.structure` is a phase with
the refined site parameters applied (through its phase model).
"""

from __future__ import annotations

import numpy as np

from insitu_xrd.core.crystal import Phase, Reflections
from insitu_xrd.fit.phase_model import PhaseModel

__all__ = ["StructureCache", "site_positions", "structure_factor_sq"]

#: Symmetry-generated site positions by (space group, site xyz): they do not depend on the cell
#: or the site occupancies, and generating them (gemmi operations, tolerance deduplication) costs
#: more than the structure factors themselves.
_POSITIONS: dict[tuple, np.ndarray] = {}


def site_positions(phase: Phase, site) -> np.ndarray:
    """`Phase.site_positions` of ``site``, memoised per (space group, xyz) (read-only array)."""
    key = (phase.space_group, tuple(float(v) for v in site.xyz))
    hit = _POSITIONS.get(key)
    if hit is None:
        if len(_POSITIONS) > 256:
            _POSITIONS.clear()
        hit = phase.site_positions(site)
        hit.flags.writeable = False
        _POSITIONS[key] = hit
    return hit


def structure_factor_sq(phase: Phase, hkl: np.ndarray, cell: tuple[float, ...]) -> np.ndarray:
    """`Phase.structure_factor_sq` with the site positions memoised (same numbers)."""
    return phase.structure_factor_sq(hkl, cell, positions_of=lambda site: site_positions(phase, site))


class StructureCache:
    """The phases of a refinement, their models, and their reflections and |F|^2 cached between fits.

    phases: {name: start structure}; models: {name: PhaseModel} (lattice and site parameters)."""

    def __init__(self, phases: dict[str, Phase], models: dict[str, PhaseModel]):
        self.phases = phases
        self.models = models
        self._refl_cache: dict[str, tuple[float, tuple[float, ...], Reflections]] = {}
        self._fsq_cache: dict[tuple, np.ndarray] = {}
        self._mass_cache: dict[tuple, float] = {}

    def structure(self, name: str, vals: dict[str, float]) -> Phase:
        """The phase with its site parameters set from `vals` (cell as in the base phase): its
        phase model's structure (`insitu_xrd.fit.phase_model.PhaseModel.structure`)."""
        model = self.models.get(name)
        return model.structure(vals) if model is not None else self.phases[name]

    def site_key(self, name: str, vals: dict[str, float]) -> tuple:
        """The site-parameter values the structure of phase `name` depends on (cache key)."""
        model = self.models.get(name)
        return model.site_key(vals) if model is not None else ()

    def reflections(self, name: str, phase: Phase, cell: tuple[float, ...], dmin: float) -> Reflections:
        """Reflection list to ``dmin`` (A) (cached between fits while the cell stays within 1 % of
        the cached one)."""
        hit = self._refl_cache.get(name)
        if hit is not None:
            dmin0, cell0, refl = hit
            ratio = max(abs(c / c0 - 1.0) for c, c0 in zip(cell, cell0))
            if ratio < 0.01 and dmin0 <= dmin * (1.0 - 0.01):
                return refl
        dmin_used = dmin * 0.98
        refl = phase.with_cell(*cell).reflections(dmin_used)
        self._refl_cache[name] = (dmin_used, tuple(cell), refl)
        return refl

    def reflection_lists(self) -> dict[str, dict]:
        """The cached reflection lists as plain data ({phase: {dmin_A, cell, hkl, multiplicity,
        d_A}}): which list a fit uses depends on the cell that filled the cache, so a resumed
        sequential run restores them (`seed_reflection_lists`) to continue bit for bit."""
        return {name: {"dmin_A": float(dmin), "cell": [float(v) for v in cell], "hkl": refl.hkl,
                       "multiplicity": refl.multiplicity, "d_A": refl.d_A}
                for name, (dmin, cell, refl) in self._refl_cache.items()}

    def seed_reflection_lists(self, lists: dict[str, dict]) -> None:
        """Restore reflection lists saved by `reflection_lists`."""
        for name, e in lists.items():
            refl = Reflections(np.asarray(e["hkl"], dtype=int).reshape(-1, 3), np.asarray(e["multiplicity"], dtype=int),
                               np.asarray(e["d_A"], dtype=float))
            self._refl_cache[name] = (float(e["dmin_A"]), tuple(float(v) for v in e["cell"]), refl)

    def fsq(self, name: str, phase: Phase, hkl: np.ndarray, cell: tuple[float, ...], site_key: tuple) -> np.ndarray:
        """|F|^2 of `hkl` at the cell rounded to 1e-4 A (the form factors and Debye-Waller terms
        change |F|^2 by < 1e-4 relative within that: 4.5e-5 for NMC811 reflections to d = 0.7 A
        at +5e-5 A), cached between fits for the same sites. Computed at the rounded cell, so that
        the value does not depend on which cell filled the cache (sequential runs reproduce)."""
        if not len(hkl):
            return np.zeros(0)
        cell_r = tuple(float(v) for v in np.round(cell, 4))
        key = (name, site_key, hkl.tobytes(), cell_r)
        hit = self._fsq_cache.get(key)
        if hit is None:
            hit = structure_factor_sq(phase, hkl, cell_r)
            if len(self._fsq_cache) > 64:
                self._fsq_cache.pop(next(iter(self._fsq_cache)))
            self._fsq_cache[key] = hit
        return hit

    def cell_mass(self, name: str, phase: Phase, site_key: tuple) -> float:
        """Unit-cell mass (amu) of a phase with its site parameters (cached)."""
        key = (name, site_key)
        if key not in self._mass_cache:
            self._mass_cache[key] = phase.cell_mass_amu
        return self._mass_cache[key]
