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
    mustrain_axial_factor: Optional[float] = typer.Option(
        None, "--mustrain-axial-factor", min=0.1, max=10.0,
        help="Microstrain along c (00l) / in the layers (hk0) of H2 and H3 (default 1 = isotropic; 1.5 with --real-cell); "
             "the recipe then uses the uniaxial model (not with --real-cell)."),
    texture_ratio: Optional[float] = typer.Option(
        None, "--texture-ratio", min=0.2, max=5.0,
        help="March-Dollase ratio of H2 and H3 about [001] (default 1 = random powder; 0.85 with --real-cell; < 1 = platelets "
             "lying flat); the recipe names it (not with --real-cell)."),
    absorption_mut: float = typer.Option(
        0.0, "--absorption-mut", min=0.0, max=5.0,
        help="mu*t of the cell as a flat plate normal to the beam (0 = none); the recipe then uses geometry: transmission."),
    real_cell: bool = typer.Option(
        False, "--real-cell",
        help="A real operando cell: PTFE/carbon lines, size tails, 3 % flux and 2 mdeg zero drift, spotty Li rings, dead "
             "lines and hot pixels, texture 0.85, 00l microstrain x1.5; the recipe is the plain one (H2, optional H3, Li). "
             "The options below override single effects."),
    binder_carbon: Optional[bool] = typer.Option(
        None, "--binder-carbon/--no-binder-carbon", help="PTFE binder and carbon-black lines (fixed d, present from the first frame)."),
    graphite: Optional[bool] = typer.Option(None, "--graphite/--no-graphite", help="Graphite lines (sharp 002 at 3.354 A)."),
    size_tails: Optional[bool] = typer.Option(
        None, "--size-tails/--no-size-tails",
        help="Log-normal crystallite sizes of H2/H3 (volume-weighted median 0.15 um, sigma 0.6): super-Lorentzian tails."),
    flux_drift_pct: Optional[float] = typer.Option(
        None, "--flux-drift-pct", min=0.0, max=50.0, help="Beam flux loss per 2.5 h fill (%), restored at each refill (real cell: 3)."),
    zero_drift_mdeg: Optional[float] = typer.Option(
        None, "--zero-drift-mdeg", min=0.0, max=100.0, help="Scale of the 2theta zero drift over the series (mdeg; real cell: 2)."),
    spotty_li: Optional[bool] = typer.Option(None, "--spotty-li/--no-spotty-li", help="Li-metal rings as a few spots (large grains)."),
    detector_defects: Optional[bool] = typer.Option(
        None, "--detector-defects/--no-detector-defects", help="Dead rows/columns (0) and hot (saturated) pixels in the frames."),
    lab_cu: bool = typer.Option(
        False, "--lab-cu",
        help="Laboratory scenario instead: Cu Ka1/Ka2 Bragg-Brentano scans of a coin cell through a Be window "
             "(texture about 001, 0.8 unless --texture-ratio is given, 1 = random powder; Al and Be lines), 2-column .xy files, a GSAS-II "
             ".instprm and a patterns: recipe; --frames scans, --seed (docs/simulator.md)."),
) -> None:
    """Write a synthetic in-situ dataset (first charge of NMC811) whose every true value is in truth.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from insitu_xrd.simulate.dataset import REAL_CELL, simulate_dataset

    if lab_cu:
        _simulate_lab(out_dir, frames, seed, texture_ratio)
        return
    effects = dict(REAL_CELL) if real_cell else {}
    given = dict(binder_carbon=binder_carbon, graphite=graphite, flux_drift_pct=flux_drift_pct, zero_drift_mdeg=zero_drift_mdeg,
                 spotty_li=spotty_li, detector_defects=detector_defects, texture_ratio=texture_ratio,
                 mustrain_axial_factor=mustrain_axial_factor)
    effects.update({key: value for key, value in given.items() if value is not None})
    if size_tails is not None:
        effects.update(size_sigma=REAL_CELL["size_sigma"] if size_tails else 0.0, size_median_um=REAL_CELL["size_median_um"])
    try:
        with Progress(TextColumn("[bold]simulating frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("frames", total=frames)
            truth = simulate_dataset(
                out_dir, frames=frames, seed=seed, coated=coated, wavelength_A=wavelength_a, binning=binning,
                cell_lines=not no_cell_lines, diffuse=not no_diffuse, workers=workers,
                absorption_mut=absorption_mut, **effects,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {frames} frames, calibrants, cycler.csv, recipe.yaml and {truth}")


def _simulate_lab(out_dir: Path, scans: int, seed: int, texture_ratio: float | None) -> None:
    """The laboratory Cu Ka scenario (`insitu_xrd.simulate.lab_dataset`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from insitu_xrd.simulate.lab_dataset import LabSpec, simulate_lab_dataset

    ratio = texture_ratio if texture_ratio is not None else LabSpec().texture_ratio
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
