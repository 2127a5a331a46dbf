"""`insitu-xrd strain`: lattice-strain curves for FEA from a sequential-results file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from insitu_xrd.errors import InsituXRDError


class Versus(str, Enum):
    x_li = "x_li"
    soc = "soc"
    capacity_mAh_g = "capacity_mAh_g"
    voltage_V = "voltage_V"
    time_s = "time_s"
    frame = "frame"


class Method(str, Enum):
    spline = "spline"
    pchip = "pchip"


def _parse_reference(text: str) -> tuple[str, int | None]:
    t = text.strip().lower()
    if t in ("first", "values"):
        return t, None
    if t.startswith("frame:") or t.startswith("frame="):
        try:
            return "frame", int(t.split(":" if ":" in t else "=", 1)[1])
        except ValueError:
            pass
    raise InsituXRDError(f"--reference {text!r}: use 'first', 'frame:N' (N = frame index) or 'values' (with --a0-a, --c0-a)")


def strain(
    results: Path = typer.Argument(..., help="Sequential-results NetCDF (dims frame, phase; a, c, volume, phase_fraction with _esd)."),
    output_dir: Path = typer.Option(..., "-o", "--output-dir", help="Folder for strain.nc, strain_frames.csv, strain_curve.csv, strain.json, strain_comsol.txt, strain.png."),
    reference: str = typer.Option("first", "--reference", help="Reference lattice: 'first' (first frame with status ok), 'frame:N', or 'values' (give --a0-a and --c0-a)."),
    a0_a: Optional[float] = typer.Option(None, "--a0-a", "--a0", help="Reference a in angstrom (with --reference values)."),
    c0_a: Optional[float] = typer.Option(None, "--c0-a", "--c0", help="Reference c in angstrom (with --reference values)."),
    a0_esd_a: float = typer.Option(0.0, "--a0-esd-a", help="esd of --a0-a in angstrom (0 = exact)."),
    c0_esd_a: float = typer.Option(0.0, "--c0-esd-a", help="esd of --c0-a in angstrom (0 = exact)."),
    versus: Versus = typer.Option(Versus.x_li, "--versus", help="Abscissa of the curves (x_li and soc need the cycler log attached)."),
    phase: Optional[str] = typer.Option(None, "--phase", help="Phase whose lattice is the reference for every phase (default: the phase refined in the most frames, e.g. H2 rather than H3)."),
    phases: Optional[str] = typer.Option(None, "--phases", help="Comma-separated phases to strain and average (default: the cathode phases recorded in the results, e.g. H2,H3; cell lines such as Li and Al are left out)."),
    per_phase_reference: bool = typer.Option(False, "--per-phase-reference", help="Strain each phase against its own lattice at the reference frame instead of the reference phase's."),
    no_reference_esd: bool = typer.Option(False, "--no-reference-esd", help="Treat the reference lattice as exact (do not propagate its esd)."),
    method: Method = typer.Option(Method.spline, "--method", help="Curve: 'spline' (smoothing spline, penalty from the esds, every point within 2 esd of it, then PCHIP) or 'pchip' (through the data)."),
    n_points: int = typer.Option(201, "--n-points", min=2, max=100000, help="Points of the output curve / COMSOL table (uniform in the abscissa)."),
    x_tol: float = typer.Option(0.0, "--x-tol", min=0.0, help="Abscissa values closer than this are merged (inverse-variance mean) before smoothing."),
    figure: bool = typer.Option(True, "--figure/--no-figure", help="Draw strain.png (eps_a, eps_c vs the abscissa with esd bands)."),
) -> None:
    """Strain eps_a, eps_c, eps_V vs x_li/SoC, smoothed curves, COMSOL table and eigenstrain for FEA."""
    try:
        import xarray as xr

        from insitu_xrd.io.strain_export import compute_strain, write_strain_outputs

        ref, ref_frame = _parse_reference(reference)
        if ref == "values" and (a0_a is None or c0_a is None):
            raise InsituXRDError("--reference values needs --a0-a and --c0-a (angstrom)")
        if ref != "values" and (a0_a is not None or c0_a is not None):
            raise InsituXRDError("--a0-a/--c0-a are only used with --reference values")
        if not results.is_file():
            raise InsituXRDError(f"results file {results} does not exist")
        try:
            ds = xr.load_dataset(results, engine="h5netcdf")
        except Exception as exc:
            raise InsituXRDError(f"cannot read results file {results} as NetCDF: {exc}") from None
        st = compute_strain(
            ds, reference=ref, reference_frame=ref_frame, a0_A=a0_a, c0_A=c0_a, a0_esd_A=a0_esd_a,
            c0_esd_A=c0_esd_a, reference_phase=phase, per_phase_reference=per_phase_reference,
            include_reference_esd=not no_reference_esd, versus=versus.value, method=method.value,
            n_points=n_points, x_tol=x_tol, source=str(results),
            phases=[p.strip() for p in phases.split(",") if p.strip()] if phases else None,
        )
        paths = write_strain_outputs(st, output_dir)
        if figure:
            from insitu_xrd.plots.strain import plot_strain

            paths["figure"] = plot_strain(st, Path(output_dir) / "strain.png")
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    last = st["x"].values
    typer.echo(f"reference            {st.attrs['reference_description']}")
    typer.echo(f"reference_esd        {'included' if st.attrs['reference_esd_included'] else 'not included'}")
    typer.echo(f"frames_in_curve      {int(st['used_in_curve'].sum())} of {st.sizes['frame']}")
    typer.echo(f"curve_range          {versus.value} {last.min():.6g} .. {last.max():.6g} ({last.size} points)")
    for k in ("a", "c"):
        y = st[f"curve_eps_{k}"].values
        typer.echo(f"eps_{k}_range          {100 * float(y.min()):+.4f} % .. {100 * float(y.max()):+.4f} %")
    for kind, p in paths.items():
        typer.echo(f"{kind:<20} {p}")


def register(app: typer.Typer) -> None:
    app.command("strain")(strain)
