"""``insitu-xrd run RECIPE``: the whole pipeline from raw frames to lattice, phase and strain curves.

Stages (see :mod:`insitu_xrd.pipeline.stages`): calibrate (or reuse the PONI) -> instrument (fit
``refinement.profile.instrument`` on the calibrant when that file is missing) -> integrate ->
sequential refinement -> echem alignment -> strain -> report -> fea (only with an ``fea:``
section: the particle-cracking model driven by the strain curves). A recipe with ``patterns:``
(1D patterns integrated elsewhere) replaces calibrate, instrument and integrate by the
``patterns`` stage (:mod:`insitu_xrd.pipeline.pattern_series`). Every stage is cached in
``<outputs.dir>/stages.json``; what was reused is listed in the returned stages and the report.

Outputs in ``outputs.dir``: ``patterns.nc`` (integrated frames or collected patterns), ``sequential.nc`` (refinement
checkpoint), ``results.nc`` (refinement + echem coords: the main result), ``strain/``,
``figures/``, ``report.md``, ``stages.json`` and, with ``fea:``, ``fea/fea.nc`` and its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.store import write_dataset_atomic
from insitu_xrd.pipeline.pattern_series import patterns_stage
from insitu_xrd.pipeline.recipe import Recipe, load_recipe, section_hash
from insitu_xrd.pipeline.report import FigureWriter
from insitu_xrd.pipeline.stages import (
    StageCache,
    StageInfo,
    calibrate_stage,
    echem_stage,
    instrument_stage,
    integrate_stage,
    refine_stage,
    strain_stage,
)

__all__ = ["PipelineResult", "run_pipeline", "finish_results", "finish_key"]


@dataclass
class PipelineResult:
    """What ``run_pipeline`` produced (paths and in-memory Datasets)."""

    recipe: Recipe
    stages: list[StageInfo] = field(default_factory=list)
    poni: Path | None = None
    patterns_path: Path | None = None
    results_path: Path | None = None
    results: xr.Dataset | None = None
    strain: xr.Dataset | None = None
    report: Path | None = None
    figures: list[Path] = field(default_factory=list)
    fea: Any = None  #: the FEARun of the fea stage (insitu_xrd.pipeline.fea_stage), None without fea:
    elapsed_s: float = 0.0

    def stage(self, name: str) -> StageInfo | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None


def finish_results(recipe: Recipe, patterns: xr.Dataset, seq: xr.Dataset, stages: list[StageInfo],
                   figure_writer: FigureWriter | None = None
                   ) -> tuple[xr.Dataset, xr.Dataset | None, list[Path], Path | None]:
    """Echem, strain, results.nc, figures (with ``figure_writer``, when ``outputs.figures``) and
    report from a sequential-results Dataset (shared by the batch run and the watch mode)."""
    from insitu_xrd.pipeline.report import write_report

    res, info = echem_stage(recipe, seq)
    stages.append(info)
    results_path = recipe.output_dir / "results.nc"
    write_dataset_atomic(res, results_path)
    strain = None
    strain_files: list[str] = []
    try:
        strain, info = strain_stage(recipe, res)
        strain_files = info.outputs
    except InsituXRDError as exc:  # e.g. no good frame yet (watch mode): report, go on
        info = StageInfo("strain", "skipped", 0.0, str(exc))
    stages.append(info)
    figs: list[Path] = []
    errors: list[str] = []
    report = None
    t0 = time.perf_counter()
    if figure_writer is not None and recipe.outputs.figures:
        try:
            figs, errors = figure_writer(recipe, patterns, res, strain)
        except Exception as exc:  # figures must never break a run
            errors = [f"figures: {type(exc).__name__}: {exc}"]
    if recipe.outputs.report:
        stages.append(StageInfo("report", "ran", time.perf_counter() - t0, f"{len(figs)} figures"))
        report = write_report(recipe, res, stages, figs, strain_files, figure_errors=errors)
    return res, strain, figs, report


def finish_key(recipe: Recipe, seq: xr.Dataset, figures: bool) -> str:
    """Cache key of the stages after the refinement (echem, strain, figures, report): the
    refinement's key plus every recipe part and file they read (``figures``: drawn or not)."""
    from insitu_xrd.pipeline.stages import file_digest

    ec = recipe.echem
    return section_hash(str(seq.attrs.get("cache_key", "")), ec, file_digest(recipe.path(ec.file)) if ec else None,
                        recipe.strain, recipe.outputs, recipe.name, bool(figures))


def run_pipeline(recipe: Recipe | str | Path, progress: bool = True, say: Callable[[str], None] | None = None,
                 figure_writer: FigureWriter | None = None,
                 fea_figure_writer: Callable[..., list[Path]] | None = None) -> PipelineResult:
    """Run every stage of a recipe (reusing cached stages); returns a :class:`PipelineResult`.

    recipe: a Recipe or the path of a recipe YAML file.
    progress: rich progress bars for integration and refinement.
    say: callback for one-line stage messages (e.g. ``console.print``).
    figure_writer: draws the figures (``insitu_xrd.plots.insitu.write_figures``, as the CLI
        does; also subject to ``outputs.figures``); None: no figures.
    fea_figure_writer: draws the FEA figures (``insitu_xrd.plots.fea.write_fea_figures``) when
        the recipe has an ``fea:`` section; None: the FEA result without figures.
    """
    from insitu_xrd.io.patterns import read_patterns

    t0 = time.perf_counter()
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    say = say or (lambda msg: None)
    out_dir = rec.output_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InsituXRDError(f"recipe {rec.source}: key 'outputs.dir': cannot create {out_dir}: {exc}") from None
    cache = StageCache(out_dir)
    result = PipelineResult(rec)

    def done(info: StageInfo) -> None:
        result.stages.append(info)
        say(f"{info.name:<10} {info.status:<8} {info.seconds:7.1f} s  {info.detail}")

    def fea(report_rewritten: bool) -> None:
        """The fea stage after the strain stage (only with an ``fea:`` section); its summary goes
        into report.md when the FEA ran or the report was written anew (else it is there)."""
        if rec.fea is None:
            return
        from insitu_xrd.pipeline.fea_stage import fea_stage, fea_summary_lines
        from insitu_xrd.pipeline.report import write_fea_section

        result.fea, info = fea_stage(rec, cache, progress=progress, figure_writer=fea_figure_writer,
                                     strain_available=result.strain is not None)
        done(info)
        if result.fea is not None and result.report is not None and (report_rewritten or info.status == "ran"):
            write_fea_section(result.report, fea_summary_lines(result.fea), result.fea.figures)

    if rec.patterns is not None:  # 1D patterns integrated elsewhere: no calibration, no integration
        patterns_path, info = patterns_stage(rec, cache, progress=progress)
    else:
        poni, info = calibrate_stage(rec, cache, say=lambda m: None)
        result.poni = poni
        done(info)
        if rec.frames is None:
            result.elapsed_s = time.perf_counter() - t0
            return result
        if rec.refinement is not None and rec.refinement.profile.instrument:
            _, info = instrument_stage(rec, poni, cache)
            done(info)
        patterns_path, info = integrate_stage(rec, poni, cache, progress=progress)
    result.patterns_path = patterns_path
    done(info)
    if rec.refinement is None:
        result.elapsed_s = time.perf_counter() - t0
        return result
    seq, info = refine_stage(rec, patterns_path, cache, progress=progress)
    done(info)
    results_path = out_dir / "results.nc"
    result.results_path = results_path
    # echem, strain, figures and report again only when an input of theirs changed
    fkey = finish_key(rec, seq, figure_writer is not None and rec.outputs.figures)
    finish_outputs = [results_path] + ([out_dir / "report.md"] if rec.outputs.report else [])
    if info.status == "reused" and cache.hit("finish", fkey, finish_outputs):
        try:
            result.results = xr.load_dataset(results_path, engine="h5netcdf")
        except Exception:
            result.results = None
        if result.results is not None:
            old = cache.data["finish"]
            result.figures = [Path(p) for p in old.get("figures", []) if Path(p).is_file()]
            result.report = out_dir / "report.md" if rec.outputs.report else None
            strain_nc = out_dir / "strain" / "strain.nc"
            if strain_nc.is_file():
                result.strain = xr.load_dataset(strain_nc, engine="h5netcdf")
            done(StageInfo("finish", "reused", 0.0, f"echem, strain, figures and report unchanged ({results_path})",
                           [str(p) for p in finish_outputs]))
            fea(report_rewritten=False)
            result.elapsed_s = time.perf_counter() - t0
            return result
    patterns = read_patterns(patterns_path)
    n_before = len(result.stages)
    res, strain, figs, report = finish_results(rec, patterns, seq, result.stages, figure_writer=figure_writer)
    for info in result.stages[n_before:]:
        say(f"{info.name:<10} {info.status:<8} {info.seconds:7.1f} s  {info.detail}")
    result.results, result.strain, result.figures, result.report = res, strain, figs, report
    cache.store("finish", fkey, finish_outputs, figures=[str(p) for p in figs])
    fea(report_rewritten=True)
    result.elapsed_s = time.perf_counter() - t0
    return result
