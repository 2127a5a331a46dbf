"""Sequential refinement of an in-situ pattern series (GSAS-II-style "seqrefine").

Every frame of a patterns Dataset is fitted in order (forward or reverse), each fit seeded from
the previous good result. Around that loop:

* **Phase appearance is detected, not given.** Fits start with the non-optional phases (H2). While
  an ``optional: true`` phase (H3) is absent, every frame is also fitted with it (its start lattice
  found by a grid search on the residual of the fit without it). It is added when the data justify
  it: an F-test on the chi2 improvement for the extra parameters, p < ``f_test_alpha``; its
  weight fraction above ``min_fraction_sigma`` esds and above ``min_fraction``; and its lattice
  distinct from the phase it splits from (so a single-phase collapse stays single-phase). It is
  dropped again when its fraction stays below ``drop_fraction_sigma`` esds or ``drop_fraction`` for
  ``drop_after_frames`` frames. The frame and x where it first appears are reported.
* **Divergence by evidence.** A fit that fails, has a lattice parameter at its bound, or where
  no phase is significant is refit from the last good frame and from a fresh lattice search; the
  sound refit with the lowest chi2 is kept and flagged (``status = "refit"``), or ``"diverged"``
  if none is sound (its held values are then NaN, never another frame's). A fit whose Rwp only
  jumps above ``rwp_jump_factor`` x the running median is refit the same way and replaced only
  by a clearly lower chi2; otherwise it stays ``"ok"`` (a real change). A phase that fades out,
  the main one included, is held and its last frame reported (``<P>_last_frame`` attrs). A frame whose pattern has status != "ok" is skipped (``"skipped: ..."``).
  The run never stops on one frame.
* **Chunks.** With ``chunks > 1`` the frame order is split into contiguous chunks fitted in
  parallel processes; a chunk after the first is cold-started (grid search of the lattice on its
  first frame) one frame early, and that overlap frame must agree with the previous chunk's fit;
  otherwise the chunk is refit serially, seeded from the previous chunk's last frame.
* **Checkpoints.** Results are written to the output NetCDF as frames finish (at most every
  ``checkpoint_interval_s``), with the chain's state (the last FitResult with its Le Bail
  intensities, the optional-phase counters) saved as JSON data beside it; an interrupted run restarted with
  the same inputs keeps the finished frames and continues from the last one exactly as if it had
  not stopped (without a usable state file: seeded from the stored values of the last frame).
* **Label continuity.** A fit in which the optional phase took over the lattice that continues the
  main phase's (H2/H3 names exchanged) counts as diverged and is refit.
* **Optional-phase prescreen.** The full fit with the absent optional phase runs only when a cheap
  matched filter finds its pattern in the residual (``prescreen_sigma``) with an implied fraction
  worth testing (``prescreen_fraction_factor`` x ``min_fraction``).
* **Onset details.** A fit without the optional phase that diverged while the fit with it is sound
  and F-test significant adds the phase (:meth:`SequentialRefiner._rescue`); an onset frame where
  the new phase's lattice stayed held is fitted again from the next frame
  (:meth:`SequentialRefiner._look_back`); non-lattice parameters that ended at a bound restart
  from the recipe value on the next frame (:meth:`SequentialRefiner._unstuck`).

Output Dataset (see :func:`records_to_dataset`): dims ``frame``, ``phase`` (and ``two_theta`` for
the fitted curves); ``a, c, volume, microstrain, size, phase_fraction, scale`` (+ ``_esd``);
``rwp, gof, zero_shift(_esd), status, active, held, held_reason, at_bounds, optional_phase_p``;
``calc, background``; attrs on what the automation did (``held_phases``, ``refined_never_moved``,
``parameters_at_bound``, ``unphysical``, ``<P>_onset_frame``, ``<P>_last_frame``);
``microstrain_correlation, size_correlation`` (frame x phase x ``corr_with``: correlation with
microstrain, size and the instrument terms U..Y). ``insitu-xrd refine`` writes the same schema for
one fit (:mod:`insitu_xrd.pipeline.single_fit`).

The package's modules each read on their own and import only public names from each other, with
no circle (chain imports records and search; segments imports chain; store imports records; run
imports chain, records, segments and store); this module re-exports the public API:

* :mod:`insitu_xrd.pipeline.sequential.chain`: the chain's decisions (:class:`SequentialRefiner`: phase
  detection, divergence, label continuity, look-back, exact-resume state; the seam test).
* :mod:`insitu_xrd.pipeline.sequential.search`: cold starts (lattice grid search, seeded specs).
* :mod:`insitu_xrd.pipeline.sequential.records`: :class:`FrameRecord` and records <-> Dataset.
* :mod:`insitu_xrd.pipeline.sequential.run`: :func:`refine_sequence` (runs, checkpoints, chain-state files).
* :mod:`insitu_xrd.pipeline.sequential.segments`: segments fitted in parallel, stitched at the seams
  (a built-in process pool, or the executor layer :mod:`insitu_xrd.pipeline.executors`).
* :mod:`insitu_xrd.pipeline.sequential.store`: :class:`SequentialStore`, the working store of a
  growing refinement (watch mode), one row per frame.
"""

from __future__ import annotations

from insitu_xrd.pipeline.sequential.chain import RefinementFactory, SequentialRefiner, refit_frame, run_chain
from insitu_xrd.pipeline.sequential.records import (
    CORR_WITH,
    PER_PHASE_VARS,
    UNITS,
    FrameRecord,
    broadening_correlations,
    cathode_phases,
    dataset_to_records,
    frame_arrays,
    without_esds,
    phase_onset_attrs,
    automation_attrs,
    record_from_fit,
    records_to_dataset,
    site_parameter_dataset,
)
from insitu_xrd.pipeline.sequential.run import chain_state_path, read_chain_state, refine_sequence, write_chain_state
from insitu_xrd.pipeline.sequential.search import coarse_lattice_search, seeded_spec
from insitu_xrd.pipeline.sequential.store import SequentialStore

__all__ = [
    "FrameRecord",
    "SequentialRefiner",
    "RefinementFactory",
    "coarse_lattice_search",
    "seeded_spec",
    "refine_sequence",
    "run_chain",
    "records_to_dataset",
    "site_parameter_dataset",
    "record_from_fit",
    "refit_frame",
    "phase_onset_attrs",
    "automation_attrs",
    "dataset_to_records",
    "frame_arrays",
    "without_esds",
    "broadening_correlations",
    "cathode_phases",
    "chain_state_path",
    "read_chain_state",
    "write_chain_state",
    "SequentialStore",
    "PER_PHASE_VARS",
    "CORR_WITH",
    "UNITS",
]
