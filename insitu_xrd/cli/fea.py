"""``insitu-xrd fea`` and ``insitu-xrd fea-compare``: particle-cracking FEA from measured strain curves."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from insitu_xrd.errors import InsituXRDError


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def fea(
    strain: Path = typer.Argument(..., help="Strain file: strain.nc (or its folder), strain_curve.csv, strain.json of `insitu-xrd strain`, or any CSV with x_li (or soc) and eps_a, eps_c as fractions."),
    output: Path = typer.Option(..., "-o", "--output", help="FEA result NetCDF (mesh, fields at the saved steps, damage vs time); written atomically at the end."),
    coated: bool = typer.Option(False, "--coated", help="Coated particle: 160 nm isotropic coating shell (unless the recipe gives fea.geometry.coating_um)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML whose fea: section gives the model parameters (a whole recipe, or a file of fea keys); options below override it."),
    grains: Optional[int] = typer.Option(None, "--grains", min=1, help="Primary grains in the quarter disc (geometry.n_grains)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the microstructure (geometry.seed)."),
    soc_end: Optional[float] = typer.Option(None, "--soc-end", help="State of charge at the end of the run (time.soc_end, 0..1.5)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Time steps (time.n_steps)."),
    snapshots: Optional[int] = typer.Option(None, "--snapshots", min=1, help="Saved steps with full fields (time.n_snapshots)."),
    mesh_size_um: Optional[float] = typer.Option(None, "--mesh-size-um", help="Target element size in um (geometry.mesh_size_um)."),
    surface_condition: Optional[str] = typer.Option(None, "--surface-condition", help="Outer surface (transport.surface_condition): kinetic (default: each grain delivers its rate while its surface can, then a flux vanishing as the surface Li -> 0; x stays in [0, 1]) or constant_flux (the seed paper's set-up, can drive x below 0)."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures: mirrored full-disc maps at --display-soc, damage curves, GIF animation."),
    display_soc: Optional[float] = typer.Option(None, "--display-soc", help="SoC of the maps (nearest saved step; default 0.55 or the last step)."),
    animation: bool = typer.Option(True, "--animation/--no-animation", help="With --figures: write the GIF animation."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Another FEA result (e.g. the bare run): also draw the two side by side into --figures."),
    x_start: float = typer.Option(1.0, "--x-start", help="For a strain file against soc only: x_li = x_start - soc * soc_to_x."),
    soc_to_x: float = typer.Option(1.0, "--soc-to-x", help="For a strain file against soc only (see --x-start)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show the progress bar."),
) -> None:
    """FEA of grain-boundary cracking of a particle driven by a measured strain curve.

    Li diffusion, eigenstrain from eps_a/eps_c, cohesive grain-boundary damage (docs/fea.md);
    writes fea.nc and, with --figures, mirrored full-disc maps, damage curves and a GIF."""
    from insitu_xrd.pipeline.fea_stage import fea_params, fea_summary_lines, run_fea_file
    from insitu_xrd.pipeline.recipe import fea_section_from_file
    from insitu_xrd.plots.fea import write_fea_compare, write_fea_figures

    try:
        section = fea_section_from_file(recipe) if recipe is not None else None
        params = fea_params(section, coated=coated, grains=grains, seed=seed, soc_end=soc_end, n_steps=steps,
                            n_snapshots=snapshots, mesh_size_um=mesh_size_um, surface_condition=surface_condition,
                            where="fea options")
        other = None
        if compare is not None:
            from insitu_xrd.io.fea_io import read_fea_result

            if figures is None:
                raise InsituXRDError("--compare needs --figures DIR (where the comparison is drawn)")
            other = read_fea_result(compare)
        soc_shown = display_soc if display_soc is not None else (section.display_soc if section else None)
        run = run_fea_file(strain, params, output, figures_dir=figures, figure_writer=write_fea_figures,
                           progress=not no_progress, display_soc=soc_shown, animation=animation,
                           x_start=x_start, soc_to_x=soc_to_x,
                           extra_attrs={"recipe": str(recipe) if recipe else ""})
        if other is not None and figures is not None:
            run.figures += write_fea_compare([other, run.result], figures, soc=soc_shown)
    except InsituXRDError as exc:
        _fail(exc)
        return
    for line in fea_summary_lines(run):
        typer.echo(line)


def fea_compare(
    first: Path = typer.Argument(..., help="First FEA result (e.g. bare.nc from `insitu-xrd fea`)."),
    second: Path = typer.Argument(..., help="Second FEA result (e.g. coated.nc)."),
    output_dir: Path = typer.Option(..., "-o", "--output-dir", help="Folder for fea_compare.png (maps side by side + damage curves) and fea_compare_damage.png."),
    soc: Optional[float] = typer.Option(None, "--soc", help="SoC of the maps (nearest saved step of each run; default 0.55 or the last)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated names of the two runs (default: from the files, e.g. bare, coated)."),
) -> None:
    """Two FEA results side by side and their damage curves together.

    Prints the dissipated energy over Gamma and the fully open boundary length of both runs and
    their ratio second / first (then the law's D as damage onset); draws Li content, damage and
    separation mirrored to the full disc at the same SoC, and the curves of both runs."""
    from insitu_xrd.io.fea_io import read_fea_result
    from insitu_xrd.pipeline.fea_stage import fea_compare_lines
    from insitu_xrd.plots.fea import write_fea_compare

    try:
        runs = [read_fea_result(first), read_fea_result(second)]
        labs = None
        if labels is not None:
            labs = [s.strip() for s in labels.split(",")]
            if len(labs) != 2 or not all(labs):
                raise InsituXRDError(f"--labels {labels!r}: give two comma-separated names, e.g. bare,coated")
        paths = write_fea_compare(runs, output_dir, soc=soc, labels=labs)
    except InsituXRDError as exc:
        _fail(exc)
        return
    names = labs or [str(r.attrs.get("label", p.stem)) for r, p in zip(runs, (first, second))]
    table = fea_compare_lines(runs[0], runs[1], (names[0], names[1]))
    for line in [table[-1], *table[:-1]]:
        typer.echo(line)
    for p in paths:
        typer.echo(f"figure       {p}")


def register(app: typer.Typer) -> None:
    app.command("fea")(fea)
    app.command("fea-compare")(fea_compare)
