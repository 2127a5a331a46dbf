"""`insitu-xrd integrate`: detector frames -> Patterns Dataset (NetCDF), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from insitu_xrd.errors import InsituXRDError


def integrate_command(
    frames: List[str] = typer.Argument(..., help="Frame files, glob patterns (quote them) or folders; HDF5/NeXus stacks allowed."),
    poni: Path = typer.Option(..., "--poni", help="pyFAI PONI geometry file."),
    output: Path = typer.Option(..., "-o", "--output", help="Output NetCDF (Patterns Dataset). An existing one is resumed."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Mask image (EDF/TIFF/.npy; non-zero = excluded)."),
    dark: Optional[Path] = typer.Option(None, "--dark", help="Dark image (HDF5 stack: its mean) subtracted from every frame."),
    dark_scale: float = typer.Option(1.0, "--dark-scale", help="Factor applied to the dark (e.g. exposure ratio)."),
    flat: Optional[Path] = typer.Option(None, "--flat", help="Flat-field image (normalised to its median; <= 0 masked)."),
    npt: int = typer.Option(3000, "--npt", help="Number of radial bins."),
    unit: str = typer.Option("2th_deg", "--unit", help="Radial unit: 2th_deg or q_A^-1."),
    radial_range: Optional[Tuple[float, float]] = typer.Option(None, "--range", help="Radial range LO HI in --unit (default: full detector)."),
    polarization: float = typer.Option(0.99, "--polarization", help="pyFAI polarization factor (0.99 synchrotron; 0 = unpolarised)."),
    no_polarization: bool = typer.Option(False, "--no-polarization", help="Apply no polarization correction."),
    no_solid_angle: bool = typer.Option(False, "--no-solid-angle", help="Do not correct for the pixel solid angle."),
    wavelength_a: Optional[float] = typer.Option(None, "--wavelength-a", help="Wavelength in Angstrom (overrides the PONI)."),
    orientation: Optional[int] = typer.Option(None, "--orientation", help="Detector orientation 1-4 (overrides the PONI; 3 = pyFAI default)."),
    sigma_clip: bool = typer.Option(False, "--sigma-clip", help="Reject azimuthal outliers (single-crystal spots); no pixel splitting."),
    sigma_clip_thres: float = typer.Option(5.0, "--sigma-clip-thres", help="Sigma-clip threshold in Poisson sigma."),
    cake: bool = typer.Option(False, "--cake", help="Also store a 2D cake (chi x radial) per frame."),
    cake_npt_azim: int = typer.Option(72, "--cake-npt-azim", help="Azimuthal bins of the cake."),
    no_auto_mask: bool = typer.Option(False, "--no-auto-mask", help="Do not mask dead/hot/gap pixels found on the first frames."),
    saturation_counts: Optional[float] = typer.Option(None, "--saturation-counts", help="Raw counts treated as saturated (default: dtype maximum)."),
    time_source: str = typer.Option("header", "--time-source", help="Frame times: header | sidecar:FILE.csv | period_s:SECONDS."),
    hdf5_dataset: Optional[str] = typer.Option(None, "--hdf5-dataset", help="Image-stack dataset in HDF5 files (default: auto)."),
    xye_dir: Optional[Path] = typer.Option(None, "--xye-dir", help="Also write one .xye file per frame into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start a new output instead of resuming an existing one."),
    workers: int = typer.Option(2, "--workers", help="Threads reading+integrating frames."),
    method: str = typer.Option("full,csc,cython", "--method", help="pyFAI method split,algo,impl (default full pixel splitting)."),
) -> None:
    """Integrate detector frames azimuthally (pyFAI) into patterns vs time (NetCDF)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from insitu_xrd.reduction.integrate import IntegrationSettings, integrate_series

    err = Console(stderr=True)
    try:
        meth = tuple(m.strip() for m in method.split(","))
        if len(meth) != 3:
            raise InsituXRDError(f"--method {method!r}: give split,algorithm,implementation e.g. full,csc,cython")
        settings = IntegrationSettings(
            npt=npt, unit=unit,
            radial_range=tuple(radial_range) if radial_range and None not in radial_range else None,  # type: ignore[arg-type]
            polarization_factor=None if no_polarization else polarization,
            correct_solid_angle=not no_solid_angle,
            method=meth,  # type: ignore[arg-type]
            sigma_clip=sigma_clip, sigma_clip_threshold=sigma_clip_thres,
            cake=cake, cake_npt_azim=cake_npt_azim, dark_scale=dark_scale,
            auto_mask=not no_auto_mask, saturation_counts=saturation_counts, workers=workers,
        )
        with Progress(TextColumn("[bold]integrate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"),
                      TimeRemainingColumn(), console=err, transient=True) as bar:
            task = bar.add_task("integrate", total=None, name="setting up (engine, masks)")

            def on_start(total: int, done: int) -> None:
                bar.update(task, total=total, completed=done, name=f"{done} already done" if done else "")

            def on_progress(done: int, total: int, name: str, status: str) -> None:
                bar.update(task, completed=done, name=name if status == "ok" else f"{name}: {status[:60]}")

            report = integrate_series(
                frames, poni, output, settings, mask=mask, dark=dark, flat=flat, wavelength_A=wavelength_a,
                orientation=orientation, time_source=time_source, hdf5_dataset=hdf5_dataset, xye_dir=xye_dir,
                overwrite=overwrite, progress=on_progress, on_start=on_start,
            )
    except InsituXRDError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    except KeyboardInterrupt:
        if output.is_file():
            err.print(f"interrupted: frames integrated so far are saved in {output}; run the same command again to resume",
                      markup=False)
        else:
            err.print(f"interrupted before the first frame was integrated: nothing written to {output}", markup=False)
        raise typer.Exit(code=130)
    for name, reason in report.errors:
        err.print(f"skipped {name}: {reason}", markup=False, highlight=False, soft_wrap=True)
    typer.echo(
        f"{report.output}: {report.n_ok} frames integrated, {report.n_error} failed, "
        f"{report.n_skipped_done} already done; {report.frames_per_s:.1f} frames/s; "
        f"wavelength {report.wavelength_A:.6g} A; static mask {report.masked_pixels.get('total_static', 0)} px"
    )


def register(app: typer.Typer) -> None:
    app.command("integrate")(integrate_command)
