"""``insitu-xrd run``, ``insitu-xrd watch`` and ``insitu-xrd demo``: the whole pipeline from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from insitu_xrd.errors import InsituXRDError


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def run_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file (see docs/recipes.md); relative paths in it are relative to its folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show progress bars."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the figures (the report still lists the results)."),
) -> None:
    """Run a recipe: calibrate (or reuse the PONI), integrate, sequential refinement, echem, strain,
    report, and the FEA of particle cracking when the recipe has an fea: section. A recipe with
    patterns: (1D patterns integrated elsewhere) skips calibration and integration. Stages whose
    inputs did not change are reused (see OUTPUTS/stages.json)."""
    from rich.console import Console

    from insitu_xrd.pipeline.run import run_pipeline
    from insitu_xrd.plots.fea import write_fea_figures
    from insitu_xrd.plots.insitu import write_figures

    console = Console(stderr=False)
    try:
        res = run_pipeline(recipe, progress=not no_progress, say=lambda m: console.print(m, markup=False, highlight=False),
                           figure_writer=None if no_figures else write_figures,
                           fea_figure_writer=None if no_figures else write_fea_figures)
    except InsituXRDError as exc:
        _fail(exc)
        return
    console.print(f"done in {res.elapsed_s:.1f} s; outputs in {res.recipe.output_dir}", highlight=False)
    if res.results is not None:
        for k, v in res.results.attrs.items():
            if k.endswith("_onset_frame"):
                name = k.split("_onset")[0]
                if int(v) < 0:
                    console.print(f"{name}: not detected", highlight=False)
                else:
                    x = res.results.attrs.get(f"{name}_onset_x_li")
                    console.print(f"{name} appears at frame {int(v)}" + (f", x = {float(x):.4f}" if x is not None else ""),
                                  highlight=False)
    if res.report is not None:
        console.print(f"report: {res.report}", highlight=False)
    if res.fea is not None:
        console.print(f"FEA: {res.fea.headline()}; result: {res.fea.path}", highlight=False)


def watch_command(
    folder: Path = typer.Argument(..., help="Folder the detector writes frames into (or a pipeline writes 1D patterns into, with a patterns: recipe)."),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML (calibration, integration, refinement, echem, outputs)."),
    poll_s: float = typer.Option(2.0, "--poll-s", min=0.01, help="Seconds between polls of the folder."),
    settle_s: float = typer.Option(2.0, "--settle-s", min=0.0, help="A frame file is read once its size and modification time have not changed for this many seconds (a file still being written is waited for)."),
    bad_after_s: float = typer.Option(30.0, "--bad-after-s", min=0.0, help="A settled file that still cannot be opened after this many seconds is recorded as a bad frame (flagged, not fitted; tried again if it changes)."),
    idle_exit_s: Optional[float] = typer.Option(None, "--idle-exit-s", min=0.0, help="Stop after this many seconds without a new frame (default: run until Ctrl-C)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after refining this many new frames in this session."),
    refresh_s: float = typer.Option(30.0, "--refresh-s", min=0.0, help="Minimum seconds between refreshes of sequential.nc, results.nc, strain, report and figures (at least 20x the last refresh's duration; always at exit)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Do not draw figures."),
) -> None:
    """Beamtime mode: integrate and refine each new frame as it lands, append to the results,
    refresh the figures. Survives bad frames; restart it to resume."""
    from rich.console import Console

    from insitu_xrd.pipeline.watch import watch_folder
    from insitu_xrd.plots.insitu import write_figures

    console = Console()
    try:
        summ = watch_folder(folder, recipe, poll_s=poll_s, settle_s=settle_s, bad_after_s=bad_after_s,
                            idle_exit_s=idle_exit_s, max_frames=max_frames,
                            refresh_s=refresh_s, figure_writer=None if no_figures else write_figures,
                            say=lambda m: console.print(m, markup=False, highlight=False))
    except InsituXRDError as exc:
        _fail(exc)
        return
    console.print(f"stopped ({summ.stopped_because or 'done'}): {summ.n_refined} frames refined this session "
                  f"({summ.n_flagged} flagged), {summ.n_frames_total} in total; results: {summ.results_path}",
                  highlight=False)


def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder (simulated data in OUT/data, results in OUT/data/results)."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the simulated experiment."),
    n_frames: int = typer.Option(40, "--frames", min=4, help="Number of simulated frames."),
    binning: int = typer.Option(2, "--binning", min=1, help="Detector binning of the simulated frames (1 = full 2048x2048)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show progress bars."),
    fea: bool = typer.Option(True, "--fea/--no-fea", help="Also simulate and run the coated scenario and the particle-cracking FEA on both measured strain curves (OUT/coated, OUT/fea)."),
    coated_frames: Optional[int] = typer.Option(None, "--coated-frames", min=4, help="Frames of the coated dataset (default: 20, or --frames if fewer)."),
    fea_grains: Optional[int] = typer.Option(None, "--fea-grains", min=1, help="FEA: primary grains in the quarter disc (default: the model's)."),
    fea_steps: Optional[int] = typer.Option(None, "--fea-steps", min=1, help="FEA: time steps (default: the model's)."),
    fea_soc_end: Optional[float] = typer.Option(None, "--fea-soc-end", help="FEA: SoC at the end of the run (default: the model's)."),
    fea_mesh_size_um: Optional[float] = typer.Option(None, "--fea-mesh-size-um", help="FEA: element size in um (default: the model's)."),
) -> None:
    """Simulate the built-in NMC811 charge scenario and run the pipeline on it; prints truth vs
    recovered values and writes the figures. With --fea (default) also the coated scenario and
    the FEA of both particles, printing their final grain-boundary damage."""
    from rich.console import Console

    from insitu_xrd.pipeline.demo import run_demo
    from insitu_xrd.plots.fea import write_fea_compare, write_fea_figures
    from insitu_xrd.plots.insitu import write_figures

    console = Console()
    overrides = {k: v for k, v in (("grains", fea_grains), ("n_steps", fea_steps), ("soc_end", fea_soc_end),
                                   ("mesh_size_um", fea_mesh_size_um)) if v is not None}
    try:
        summary = run_demo(out, seed=seed, n_frames=n_frames, binning=binning, progress=not no_progress,
                           figure_writer=write_figures,
                           say=lambda m: console.print(m, markup=False, highlight=False),
                           fea=fea, coated_frames=coated_frames, fea_overrides=overrides,
                           fea_figure_writer=write_fea_figures, fea_compare_writer=write_fea_compare)
    except InsituXRDError as exc:
        _fail(exc)
        return
    console.print(summary.table)
    console.print(summary.text, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("watch")(watch_command)
    app.command("demo")(demo_command)
