"""The cell-line search of a watch session (live mode) and its one-line summary."""

from __future__ import annotations

import json
from typing import Any

import xarray as xr

from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.sequential.cell_late import late_lines
from insitu_xrd.pipeline.sequential.cell_lines import FIRST_FRAMES, CellLines, detect_cell_lines, first_usable_frames

__all__ = ["LiveCellLines", "cell_lines_summary"]


class LiveCellLines:
    """The cell-line search of a watch session: once the first ``FIRST_FRAMES`` usable frames are
    in (or when the session ends with fewer), :meth:`ready` searches them and gives the spec to
    refine every frame with; the same frames give the same spec in every session (a restart
    resumes into the same results layout).

    spec : the recipe's refinement. factory : spec -> Refinement. options : sequential section.
    """

    def __init__(self, spec: RefinementSpec, factory: Any, options: SequentialSection | None) -> None:
        self.recipe_spec = spec
        self.factory = factory
        self.options = options
        self.cells: CellLines | None = None if spec.cell_lines == "auto" else CellLines()
        self.spec = spec

    @property
    def pending(self) -> bool:
        return self.cells is None

    def resume(self, cells: CellLines | None) -> None:
        """Take the search result an earlier session stored with its refined frames (None: none),
        so a restart refines with the model the stored frames have, without searching again."""
        if cells is not None and self.cells is None:
            self.cells = cells
            self.spec = cells.apply(self.recipe_spec)

    def ready(self, rows: xr.Dataset, wavelength_A: float, final: bool = False) -> bool:
        """Search ``rows`` (the series' first patterns, in order) when enough usable frames are
        there or ``final``; True once the spec is settled (then :attr:`spec`, :attr:`cells`)."""
        if self.cells is not None:
            return True
        if len(first_usable_frames(rows, FIRST_FRAMES)) < FIRST_FRAMES and not final:
            return False
        self.cells = detect_cell_lines(rows, self.recipe_spec, self.factory, self.options, wavelength_A=wavelength_A)
        self.spec = self.cells.apply(self.recipe_spec)
        return True

    def attrs(self) -> dict[str, str]:
        """Results attrs of the search (none while it has not run or with ``cell_lines: off``)."""
        if self.cells is None or self.recipe_spec.cell_lines != "auto":
            return {}
        return self.cells.attrs()

    def late_line_attrs(self, results: xr.Dataset, patterns: xr.Dataset) -> dict[str, str]:
        """``cell_late_lines`` of the frames refined so far (see :func:`late_lines`)."""
        if self.cells is None or self.recipe_spec.cell_lines != "auto" or "calc" not in results:
            return {}
        return {"cell_late_lines": json.dumps(late_lines(results, patterns, self.spec, self.cells.frames))}


def cell_lines_summary(cells: CellLines | None) -> str:
    """One line on what the search found (for the watch's log)."""
    if cells is None:
        return "cell lines: not searched"
    if not cells.found:
        return "cell lines: none found in the first frames" + (f" ({'; '.join(cells.notes)})" if cells.notes else "")
    parts = [c["name"] for c in cells.components] + [f["name"] for f in cells.free]
    return f"cell lines found in frames {cells.frames}: {', '.join(parts)} (added to the model)"
