"""`insitu-xrd integrate`: detector frames -> Patterns Dataset (NetCDF), resumable."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

from insitu_xrd.errors import InsituXRDError


class ExecutorKind(str, Enum):
    serial = "serial"
    local = "local"
    dask = "dask"


class Engine(str, Enum):
    cython = "cython"
    opencl = "opencl"


DEFAULT_THREADS = 2


def executor_config(executor: Optional[ExecutorKind], workers: Optional[int], executor_workers: Optional[int],
                    dask_address: Optional[str], dask_workers: Optional[int], batch_frames: Optional[int]) -> Any:
    """The recipe's ``ExecutorSection`` for these options (None = the default in-process threads).

    Raises:
        InsituXRDError: an option given with an executor it does not apply to (naming the option).
    """
    kind = executor.value if executor is not None else None
    if kind is None:
        for opt, value, hint in (("--executor-workers", executor_workers, "local"),
                                 ("--dask-address", dask_address, "dask"), ("--dask-workers", dask_workers, "dask"),
                                 ("--batch-frames", batch_frames, "serial, local or dask")):
            if value is not None:
                raise InsituXRDError(f"{opt} needs --executor {hint}: without --executor frames are integrated by "
                                     f"--workers threads in this process, one frame per task")
        return None
    if workers is not None:
        raise InsituXRDError(f"--workers sets the threads of the default in-process pool and does not apply to "
                             f"--executor {kind}" + {"local": "; use --executor-workers N (processes)",
                                                     "dask": "; use --dask-workers N (a LocalCluster) or --dask-address",
                                                     "serial": " (one task at a time)"}[kind])
    if executor_workers is not None and kind != "local":
        raise InsituXRDError(f"--executor-workers is for --executor local, not --executor {kind}"
                             + ("; use --dask-workers N" if kind == "dask" else ""))
    if kind != "dask":
        for opt, value in (("--dask-address", dask_address), ("--dask-workers", dask_workers)):
            if value is not None:
                raise InsituXRDError(f"{opt} is for --executor dask, not --executor {kind}")
    if dask_address is not None and dask_workers is not None:
        raise InsituXRDError("give either --dask-address (an existing Dask cluster) or --dask-workers (start a "
                             "LocalCluster here), not both")
    if dask_address is not None and not dask_address.strip():
        raise InsituXRDError("--dask-address is empty: give the scheduler address, e.g. tcp://10.0.0.5:8786")
    from insitu_xrd.pipeline.recipe import DaskLocalSection, ExecutorSection

    return ExecutorSection(type=kind, workers=executor_workers, address=dask_address,
                           local=DaskLocalSection(n_workers=dask_workers) if dask_workers is not None else None)


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
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, max=1024,
        help=f"Threads reading+integrating frames in this process, sharing one pyFAI engine (default "
             f"{DEFAULT_THREADS}); only without --executor. Not reused for --executor local "
             "(--executor-workers): each process builds its own engine, a different memory cost."),
    method: str = typer.Option("full,csc,cython", "--method", help="pyFAI method split,algo,impl (default full pixel splitting)."),
    executor: Optional[ExecutorKind] = typer.Option(
        None, "--executor", case_sensitive=False,
        help="Where frames are integrated, in batches (as the recipe's executor: section): serial (this process, "
             "one task at a time), local (worker processes), dask (a Dask cluster). Default: none, --workers threads "
             "in this process, one frame per task, as before."),
    executor_workers: Optional[int] = typer.Option(
        None, "--executor-workers", min=1, max=1024,
        help="--executor local: worker processes (default: all cores)."),
    dask_address: Optional[str] = typer.Option(
        None, "--dask-address", help="--executor dask: scheduler address of an existing cluster (tcp://host:8786)."),
    dask_workers: Optional[int] = typer.Option(
        None, "--dask-workers", min=1, max=1024,
        help="--executor dask: start a Dask LocalCluster here with N worker processes, one thread each "
             "(default without --dask-address: all cores)."),
    batch_frames: Optional[int] = typer.Option(
        None, "--batch-frames", min=1, max=100000,
        help="With --executor: frames per task and per Zarr chunk, stored as each batch completes (default: the "
             "recipe's integration.batch_frames, 32)."),
    engine: Engine = typer.Option(
        Engine.cython, "--engine", case_sensitive=False,
        help="pyFAI engine: cython (CPU) or opencl (GPU through pyopencl, pyFAI's CSR engine with the --method "
             "splitting; falls back to the CPU with a message when pyopencl or an OpenCL device is missing)."),
) -> None:
    """Integrate detector frames azimuthally (pyFAI) into patterns vs time (NetCDF)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from insitu_xrd.reduction.integrate import IntegrationSettings
    from insitu_xrd.reduction.series import integrate_series

    err = Console(stderr=True)
    runner: Any = None
    batch = None
    n_workers = workers or DEFAULT_THREADS
    try:
        config = executor_config(executor, workers, executor_workers, dask_address, dask_workers, batch_frames)
        if config is not None:
            from insitu_xrd.pipeline.recipe import IntegrationSection

            batch = batch_frames or int(IntegrationSection.model_fields["batch_frames"].default)
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
            auto_mask=not no_auto_mask, saturation_counts=saturation_counts, workers=n_workers,
            engine=engine.value,
        )
        settings.validate()  # bad settings fail before an executor is started

        def show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                         line: Any = None) -> None:  # one line at once (e.g. the OpenCL fallback), no source line
            err.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)

        with warnings.catch_warnings(), Progress(
                TextColumn("[bold]integrate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"),
                TimeRemainingColumn(), console=err, transient=True) as bar:
            warnings.showwarning = show_warning  # restored by catch_warnings
            task = bar.add_task("integrate", total=None, name="setting up (engine, masks)")
            if config is not None:
                from insitu_xrd.pipeline.executors import make_executor

                bar.update(task, name=f"starting the {config.type} executor")
                runner = make_executor(config)
                bar.update(task, name="setting up (engine, masks)")

            def on_start(total: int, done: int) -> None:
                bar.update(task, total=total, completed=done, name=f"{done} already done" if done else "")

            def on_progress(done: int, total: int, name: str, status: str) -> None:
                bar.update(task, completed=done, name=name if status == "ok" else f"{name}: {status[:60]}")

            report = integrate_series(
                frames, poni, output, settings, mask=mask, dark=dark, flat=flat, wavelength_A=wavelength_a,
                orientation=orientation, time_source=time_source, hdf5_dataset=hdf5_dataset, xye_dir=xye_dir,
                overwrite=overwrite, progress=on_progress, on_start=on_start, executor=runner, batch_frames=batch,
            )
            if runner is not None:
                n_workers = int(getattr(runner, "n_workers", 1) or 1)
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
    finally:
        if runner is not None:
            runner.close()
    for name, reason in report.errors:
        err.print(f"skipped {name}: {reason}", markup=False, highlight=False, soft_wrap=True)
    typer.echo(
        f"{report.output}: {report.n_ok} frames integrated, {report.n_error} failed, "
        f"{report.n_skipped_done} already done; {report.frames_per_s:.1f} frames/s; "
        f"wavelength {report.wavelength_A:.6g} A; static mask {report.masked_pixels.get('total_static', 0)} px; "
        + (f"executor {report.executor} ({n_workers} threads)" if runner is None else
           f"executor {report.executor} ({n_workers} workers), {report.n_batches} batches of <= {batch} frames")
    )
    for note in report.notes:
        typer.echo(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("integrate")(integrate_command)
