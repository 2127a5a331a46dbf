"""`insitu-xrd simulate`: a synthetic operando NMC811 dataset with known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from insitu_xrd.errors import InsituXRDError


def simulate(
    out_dir: Path = typer.Argument(..., help="Output folder (created): frames/, calib/, cycler.csv, truth.json, recipe.yaml."),
    frames: int = typer.Option(40, "--frames", min=1, help="Number of frames, evenly spaced in time over the charge."),
    seed: int = typer.Option(0, "--seed", help="Master random seed (Poisson noise of every image, voltage noise)."),
    coated: bool = typer.Option(False, "--coated", help="Coated-particle scenario: smaller lattice change, larger microstrain."),
    wavelength_a: float = typer.Option(0.1173, "--wavelength-a", help="Wavelength of the frames and the in-situ CeO2 (angstrom)."),
    binning: int = typer.Option(1, "--binning", help="Detector binning: 1 = Perkin 2048x2048 200 um, 2 = 1024x1024 400 um (fast tests)."),
    no_cell_lines: bool = typer.Option(False, "--no-cell-lines", help="Leave out the Li-metal and Al current-collector lines."),
    no_diffuse: bool = typer.Option(False, "--no-diffuse", help="Leave out the broad diffuse components under H2 104 and 108/110."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes for the frames (default: all cores)."),
    mustrain_axial_factor: float = typer.Option(
        1.0, "--mustrain-axial-factor", min=0.1, max=10.0,
        help="Microstrain along c (00l) / in the layers (hk0) of H2 and H3 (1 = isotropic); the recipe then uses the uniaxial model."),
    texture_ratio: float = typer.Option(
        1.0, "--texture-ratio", min=0.2, max=5.0,
        help="March-Dollase ratio of H2 and H3 about [001] (1 = random powder, < 1 = platelets lying flat); the recipe names it."),
    absorption_mut: float = typer.Option(
        0.0, "--absorption-mut", min=0.0, max=5.0,
        help="mu*t of the cell as a flat plate normal to the beam (0 = none); the recipe then uses geometry: transmission."),
    lab_cu: bool = typer.Option(
        False, "--lab-cu",
        help="Laboratory scenario instead: Cu Ka1/Ka2 Bragg-Brentano scans of a coin cell through a Be window "
             "(texture about 001, 0.8 unless --texture-ratio is given; Al and Be lines), 2-column .xy files, a GSAS-II "
             ".instprm and a patterns: recipe; --frames scans, --seed (docs/simulator.md)."),
) -> None:
    """Write a synthetic in-situ dataset (first charge of NMC811) whose every true value is in truth.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from insitu_xrd.simulate.dataset import simulate_dataset

    if lab_cu:
        _simulate_lab(out_dir, frames, seed, texture_ratio)
        return
    try:
        with Progress(TextColumn("[bold]simulating frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("frames", total=frames)
            truth = simulate_dataset(
                out_dir, frames=frames, seed=seed, coated=coated, wavelength_A=wavelength_a, binning=binning,
                cell_lines=not no_cell_lines, diffuse=not no_diffuse, workers=workers,
                mustrain_axial_factor=mustrain_axial_factor, texture_ratio=texture_ratio, absorption_mut=absorption_mut,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {frames} frames, calibrants, cycler.csv, recipe.yaml and {truth}")


def _simulate_lab(out_dir: Path, scans: int, seed: int, texture_ratio: float) -> None:
    """The laboratory Cu Ka scenario (`insitu_xrd.simulate.lab_dataset`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from insitu_xrd.simulate.lab_dataset import LabSpec, simulate_lab_dataset

    ratio = texture_ratio if texture_ratio != 1.0 else LabSpec().texture_ratio
    try:
        with Progress(TextColumn("[bold]simulating lab scans"), BarColumn(), MofNCompleteColumn()) as bar:
            task = bar.add_task("scans", total=scans)
            truth = simulate_lab_dataset(out_dir, patterns=scans, seed=seed, texture_ratio=ratio,
                                         progress=lambda done, total: bar.update(task, completed=done))
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {scans} Cu Ka scans (patterns/*.xy), cu_kalpha_bb.instprm, be.cif, cycler.csv, recipe.yaml and {truth}")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
