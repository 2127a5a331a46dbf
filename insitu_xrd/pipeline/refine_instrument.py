"""The instrument profile of ``insitu-xrd refine`` fitted on the recipe's calibrant image.

Kept apart from :mod:`insitu_xrd.pipeline.refine_setup` (which the stages use to build a
Refinement) because it runs the ``calibrate`` and ``instrument`` stages: refine_setup importing
the stages would close an import circle.
"""

from __future__ import annotations

from typing import Any

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.pipeline.recipe import load_recipe
from insitu_xrd.pipeline.refine_setup import RecipeRefinement
from insitu_xrd.pipeline.stages import StageCache, calibrate_stage, instrument_file, instrument_stage

__all__ = ["calibrant_instrument"]


def calibrant_instrument(rr: RecipeRefinement, say: Any = lambda m: None) -> RecipeRefinement:
    """``rr`` with the instrument profile fitted on the recipe's calibrant image when the whole
    recipe asks for it (``calibration.instrument_profile``: ``auto`` when microstrain or size is
    refined and no ``profile.instrument`` file is named; ``fit``), as ``insitu-xrd run`` does:
    the ``calibrate`` stage (an existing PONI is reused) and the ``instrument`` stage (an existing
    file is reused), cached in the recipe's ``outputs.dir``. A recipe that is not a whole pipeline
    recipe (only a ``refinement:`` section) is returned unchanged."""
    if rr.source is None:
        return rr
    try:
        full = load_recipe(rr.source)
    except InsituXRDError:
        return rr
    note = getattr(full, "_instrument_note", "")
    if not note or full.refinement is None:
        return rr
    inst, image = instrument_file(full), full.path(full.calibration.image)
    if inst is not None and not inst.is_file() and (image is None or not image.is_file()):
        rr.instrument_note = (f"instrument profile not fitted on the calibrant: calibration.image {image} does not exist "
                              "(the recipe's profile values are used)")
        return rr
    cache = StageCache(full.output_dir)
    poni, info = calibrate_stage(full, cache, say=say)
    say(f"calibrate  {info.status}: {info.detail}")
    _path, info = instrument_stage(full, poni, cache, say=say)
    say(f"instrument {info.status}: {info.detail}")
    out = RecipeRefinement(full.refinement, rr.wavelength_A, rr.base_dir, rr.source)
    out.instrument_note = f"{note}; {info.status}: {info.detail}"
    return out
