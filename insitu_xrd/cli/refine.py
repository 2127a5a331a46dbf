"""`insitu-xrd refine` (Le Bail / Rietveld fit of one pattern) and `insitu-xrd instrument`
(instrumental profile from a calibrant pattern, written as a GSAS-II .instprm file)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from insitu_xrd.errors import InsituXRDError


class Mode(str, Enum):
    lebail = "lebail"
    rietveld = "rietveld"


@dataclass
class LoadedPattern:
    """A pattern ready to fit: 2theta (deg), intensity, sigma, wavelength (A) and where it came from."""

    two_theta_deg: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    wavelength_A: float | None
    description: str
    wavelength_source: str
    frame_name: str = ""
    time_s: float = math.nan


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))


def load_pattern(
    path: Path, frame: int | None, wavelength_a: float | None, fallback_wavelength_A: float | None = None
) -> LoadedPattern:
    """Read a 1D pattern (.xye/.xy/.dat/.chi) or one frame of a Patterns Dataset (.nc).

    Wavelength precedence: ``wavelength_a`` (the command-line option) > the file (.nc attrs or
    pattern header) > ``fallback_wavelength_A`` (the recipe). A q axis is converted with the
    wavelength chosen.
    """
    from insitu_xrd.io.pattern_files import q_invA_to_two_theta_deg, read_pattern_1d, two_theta_deg_to_q_invA
    from insitu_xrd.pipeline.sequential import without_esds

    if not path.is_file():
        raise InsituXRDError(f"pattern file {path}: does not exist")
    if path.suffix.lower() in (".nc", ".h5", ".nc4"):
        import xarray as xr

        try:
            ds = xr.load_dataset(path, engine="h5netcdf")
        except Exception as exc:
            raise InsituXRDError(f"patterns file {path}: cannot be opened as NetCDF ({exc})") from None
        if "intensity" not in ds:
            raise InsituXRDError(f"patterns file {path}: has no 'intensity' variable (not a Patterns Dataset)")
        xdim = "two_theta" if "two_theta" in ds["intensity"].dims else ("q" if "q" in ds["intensity"].dims else None)
        if xdim is None:
            raise InsituXRDError(f"patterns file {path}: 'intensity' has neither a two_theta nor a q dimension")
        file_wl = ds.attrs.get("wavelength_A")
        file_wl = float(file_wl) if file_wl is not None and np.isfinite(float(file_wl)) else None
        da = ds["intensity"]
        sig = ds["sigma"] if "sigma" in ds else None
        desc = str(path)
        name, t_s = path.name, math.nan
        if "frame" in da.dims:
            n = da.sizes["frame"]
            if frame is None:
                if n != 1:
                    raise InsituXRDError(f"patterns file {path}: has {n} frames; choose one with --frame N (0..{n - 1})")
                frame = int(ds["frame"].values[0]) if "frame" in ds.coords else 0
            frames = ds["frame"].values if "frame" in ds.coords else np.arange(n)
            idx = np.flatnonzero(frames == frame)
            if idx.size == 0:
                raise InsituXRDError(f"patterns file {path}: no frame {frame} (frames {int(frames.min())}..{int(frames.max())})")
            i = int(idx[0])
            if "status" in ds and str(ds["status"].values[i]) != "ok":
                raise InsituXRDError(f"patterns file {path}: frame {frame} has status {str(ds['status'].values[i])!r}")
            da = da.isel(frame=i)
            sig = sig.isel(frame=i) if sig is not None else None
            name = str(ds["frame_name"].values[i]) if "frame_name" in ds else ""
            desc = f"{path} frame {frame}" + (f" ({name})" if name else "")
            name = name or f"{path.name} frame {frame}"
            if "time_s" in ds.variables and ds["time_s"].dims == ("frame",):
                t_s = float(ds["time_s"].values[i])
        x = np.asarray(ds[xdim].values, dtype=float)
        y = np.asarray(da.values, dtype=float)
        s = np.asarray(sig.values, dtype=float) if sig is not None else None
        if s is not None and without_esds(y, s):
            s = None  # a patterns: file without an esd column: refinement.sigma weighs it
        wl, src = _choose_wavelength(wavelength_a, file_wl, fallback_wavelength_A, path)
        if xdim == "q":
            if wl is None:
                raise InsituXRDError(f"patterns file {path}: q axis and no wavelength known; give --wavelength-a")
            x = q_invA_to_two_theta_deg(x, wl)
        good = np.isfinite(x) & np.isfinite(y) & (np.isfinite(s) if s is not None else True)
        return LoadedPattern(x[good], y[good], s[good] if s is not None else None, wl, desc, src, name, t_s)

    pat = read_pattern_1d(path, wavelength_A=wavelength_a if wavelength_a is not None else fallback_wavelength_A)
    header_wl = pat.wavelength_A if pat.metadata.get("wavelength_source") == "header" else None
    wl, src = _choose_wavelength(wavelength_a, header_wl, fallback_wavelength_A, path)
    x = pat.two_theta_deg
    unit = pat.metadata.get("x_unit_in_file", "2th_deg")
    if unit in ("q_A^-1", "q_nm^-1") and header_wl is not None and wl is not None and not _close(wl, header_wl):
        # the reader converted q with the header wavelength; redo it with the one chosen
        x = q_invA_to_two_theta_deg(two_theta_deg_to_q_invA(x, header_wl), wl)
    # a file without an esd column: no sigma (the engine's refinement.sigma decides and says so)
    source = getattr(pat, "sigma_source", None) or pat.metadata.get("sigma_source", "file")
    sigma = pat.sigma if str(source).startswith("file") else None
    return LoadedPattern(x, pat.intensity, sigma, wl, str(path), src, path.name)


def _choose_wavelength(option: float | None, from_file: float | None, recipe: float | None, path: Path) -> tuple[float | None, str]:
    if option is not None:
        if not option > 0:
            raise InsituXRDError(f"--wavelength-a must be positive (A), got {option}")
        return float(option), "--wavelength-a"
    if from_file is not None:
        return float(from_file), f"{path.name} header/attrs"
    if recipe is not None:
        return float(recipe), "recipe wavelength_A"
    return None, "none"


def _print_result(console, result, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    table.add_column("esd", justify="right")
    for name, value in result.values.items():
        esd = result.esds.get(name, math.nan)
        if name.startswith("bkg_") and name[4:].isdigit():
            continue  # background coefficients: in the .nc, not worth a screen line each
        table.add_row(name, f"{value:.6g}", "at bound" if name in result.at_bounds else
                      ("" if not np.isfinite(esd) else f"{esd:.2g}"))
    for name, (frac, esd) in result.phase_fraction.items():
        table.add_row(f"{name} weight fraction", f"{frac:.4f}", "" if not np.isfinite(esd) else f"{esd:.2g}")
    console.print(table)
    console.print(
        f"Rwp {result.rwp:.2%}   Rp {result.rp:.2%}   Rexp {result.rexp:.2%}   GoF(chi2_red) {result.gof:.3f}   "
        f"Durbin-Watson {result.durbin_watson:.2f}   points {result.nobs}   refined {result.nvarys}"
    )
    if getattr(result, "sigma_source", ""):
        console.print(f"weights (sigma): {result.sigma_source} (refinement.sigma)")
    if result.at_bounds:
        console.print(f"[yellow]at bounds:[/] {', '.join(result.at_bounds)}")
    for w in result.warnings:
        console.print(f"[yellow]note:[/] {w}")
    if not result.success:
        console.print(f"[yellow]optimizer did not report convergence:[/] {result.message}")


def _write_nc(ds, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        ds.to_netcdf(tmp, engine="h5netcdf")
        tmp.replace(path)
    except OSError as exc:
        raise InsituXRDError(f"output {path}: cannot be written ({exc})") from None


def refine(
    pattern: Path = typer.Argument(..., help="Pattern: .xye/.xy/.dat/.chi (2theta or q with wavelength in the header), "
                                   "or a Patterns Dataset .nc from `insitu-xrd integrate` (pick the frame with --frame)."),
    recipe: Path = typer.Option(..., "--recipe", help="Recipe YAML; its `refinement:` section and top-level `wavelength_A` are used "
                                "(a whole pipeline recipe: also its calibrant, for the instrument profile, see calibration.instrument_profile)."),
    output: Path = typer.Option(..., "-o", "--output", help="Result NetCDF to write: the sequential results' schema for one frame "
                                "(a, c, ... over frame x phase, +/- esd) plus the curves, ticks and correlation matrix."),
    frame: Optional[int] = typer.Option(None, "--frame", help="Frame index in a Patterns Dataset .nc (required when it has several)."),
    wavelength_a: Optional[float] = typer.Option(None, "--wavelength-a", help="X-ray wavelength in angstrom (overrides the file and the recipe)."),
    mode: Optional[Mode] = typer.Option(None, "--mode", help="Override the recipe's refinement mode (lebail or rietveld)."),
    phases: Optional[str] = typer.Option(None, "--phases", help="Comma-separated phases to include (default: every non-optional phase), e.g. H2,H3."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the Rietveld plot (PNG/PDF/SVG by suffix)."),
    zoom: Optional[list[str]] = typer.Option(None, "--zoom", help="Zoom panel of the plot: reflection labels ('003', '108 110') or a range 'LO:HI' in deg 2theta; repeatable. Default: the main phase's three strongest reflections."),
    lattice_search: bool = typer.Option(True, "--lattice-search/--no-lattice-search", help="Start the main phase's lattice from a grid search on the pattern (+/- 0.95 x lattice_bound_pct of the recipe's start)."),
    restarts: int = typer.Option(4, "--restarts", min=0, help="Restarts after the first fit (its lattice; narrow diffuse components; its values while that helps); the lowest chi2 is kept and a lower restart is reported as a note. 0 = one fit."),
) -> None:
    """Le Bail or Rietveld refinement of one pattern with the recipe's `refinement:` section, from a
    cold start that does not stop in a false minimum (lattice search + restarts)."""
    from rich.console import Console

    console = Console()
    err = Console(stderr=True)
    try:
        from insitu_xrd.pipeline.cold_start import cold_start
        from insitu_xrd.pipeline.refine_instrument import calibrant_instrument
        from insitu_xrd.pipeline.refine_setup import load_recipe_refinement, make_refinement, wavelength_warning
        from insitu_xrd.pipeline.single_fit import fit_to_dataset, microstrain_warning
        from insitu_xrd.provenance import software_versions_json

        rr = load_recipe_refinement(recipe)
        pat = load_pattern(pattern, frame, wavelength_a, rr.wavelength_A)
        if pat.wavelength_A is None:
            raise InsituXRDError(
                f"no wavelength for {pattern}: give --wavelength-a, a top-level wavelength_A in {recipe}, or a file with one"
            )
        if rr.wavelength_A is not None and not _close(rr.wavelength_A, pat.wavelength_A):
            err.print(f"note: using wavelength {pat.wavelength_A} A ({pat.wavelength_source}); recipe says {rr.wavelength_A} A")
        rr = calibrant_instrument(rr, say=lambda m: err.print(m))
        spec = rr.spec
        wl = float(pat.wavelength_A)
        active = [p.strip() for p in phases.split(",") if p.strip()] if phases else None
        if active:
            unknown = [p for p in active if p not in [q.name for q in spec.phases]]
            if unknown:
                raise InsituXRDError(f"--phases: unknown phase(s) {unknown}; the recipe has {[q.name for q in spec.phases]}")
        fitted = [p.name for p in spec.phases if (p.name in active if active else not p.optional)]
        zooms = _parse_zooms(zoom) if zoom else None
        refinements: list = []  # (spec, Refinement): the search and the first fit share one

        def factory(sp):
            for s_, ref in refinements:
                if s_ is sp:
                    return ref
            refinements.append((sp, make_refinement(sp, wl, rr.base_dir)))
            return refinements[-1][1]

        def fit_spec(sp):
            return factory(sp).fit(pat.two_theta_deg, pat.intensity, pat.sigma, phases=active,
                                   mode=mode.value if mode else None)

        import time as _time

        t0 = _time.perf_counter()
        with err.status(f"refining {pat.description} ..."):
            cs = cold_start(spec, fit_spec, wavelength_A=wl, two_theta_deg=pat.two_theta_deg, intensity=pat.intensity,
                            phases=fitted, refinement=lambda: factory(spec), search=lattice_search,
                            max_restarts=restarts, deterministic=True)
        elapsed = _time.perf_counter() - t0
        result = cs.fit
        warning = microstrain_warning(spec, rr.calibrant_profile)
        lab_warning = wavelength_warning(spec, wl, rr.base_dir)
        attrs = {
            "source_pattern": pat.description,
            "recipe": str(recipe),
            "wavelength_source": pat.wavelength_source,
            "software_versions": software_versions_json(),
            "instrument_profile": (f"calibrant: {spec.profile.instrument}" if rr.calibrant_profile
                                   else "recipe values (no instrument profile from a calibrant)"),
            "cold_start_elapsed_s": float(elapsed),
            **cs.attrs(),
        }
        if rr.instrument_note:
            attrs["instrument_note"] = rr.instrument_note
        if warning:
            attrs["microstrain_warning"] = warning
        if lab_warning:
            attrs["wavelength_warning"] = lab_warning
        ds = fit_to_dataset(result, spec, frame=int(frame) if frame is not None else 0, time_s=pat.time_s,
                            frame_name=pat.frame_name, attrs=attrs)
        if frame is not None:
            ds.attrs["frame"] = int(frame)
        _write_nc(ds, output)
        if plot is not None:
            from insitu_xrd.plots.rietveld import plot_rietveld

            plot_rietveld(ds, plot, zooms=zooms, title=pat.description)
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _print_result(console, result, f"{result.mode} fit of {pat.description}")
    _print_broadening(console, ds)
    tried = ", ".join(f"{k} {v:.1f}" for k, v in cs.tried)
    typer.echo(f"cold start           {len(cs.tried)} fits in {elapsed:.1f} s (chi2: {tried}; kept: {cs.chosen})")
    if warning:
        console.print(f"[yellow]microstrain warning:[/] {warning}")
    if lab_warning:
        console.print(f"[yellow]wavelength warning:[/] {lab_warning}")
    typer.echo(f"fit_file             {output}")
    if plot is not None:
        typer.echo(f"plot                 {plot}")


def _print_broadening(console, ds) -> None:
    """Microstrain and size of each fitted phase with their correlations (each other, U..Y)."""
    if "microstrain_correlation" not in ds:
        return
    terms = [str(t) for t in ds["corr_with"].values]
    for j, name in enumerate(str(p) for p in ds["phase"].values):
        for var, corr, own in (("microstrain", "microstrain_correlation", "microstrain"),
                               ("size", "size_correlation", "size")):
            v = float(ds[var].values[0, j])
            e = float(ds[f"{var}_esd"].values[0, j])
            if not np.isfinite(e):
                continue
            rs = [f"{t} {float(ds[corr].values[0, j, k]):+.2f}" for k, t in enumerate(terms)
                  if t != own and np.isfinite(float(ds[corr].values[0, j, k]))]
            unit = "x 1e-6" if var == "microstrain" else "um"
            console.print(f"{name} {var} {v:.6g} +/- {e:.2g} {unit}; correlation with " + (", ".join(rs) or "nothing refined"))


def _parse_kalpha2(text: str) -> tuple[float, float]:
    """``LAM2:RATIO`` of --kalpha2 as (Ka2 wavelength (A), ratio)."""
    try:
        lam2, ratio = (float(v) for v in text.split(":", 1))
    except ValueError:
        raise InsituXRDError(f"--kalpha2 {text!r}: give LAM2:RATIO, e.g. 1.5444:0.5") from None
    if not (lam2 > 0 and 0 < ratio <= 1):
        raise InsituXRDError(f"--kalpha2 {text!r}: the wavelength must be > 0 A and the ratio in (0, 1]")
    return lam2, ratio


def _parse_zooms(items: list[str]) -> list:
    out: list = []
    for item in items:
        if ":" in item:
            try:
                lo, hi = (float(v) for v in item.split(":", 1))
            except ValueError:
                raise InsituXRDError(f"--zoom {item!r}: a range must be LO:HI in degrees") from None
            out.append((lo, hi))
        else:
            out.append(item)
    return out


def instrument(
    pattern: Path = typer.Argument(..., help="Calibrant pattern (.xye/.xy/.chi, or a Patterns Dataset .nc with --frame), "
                                   "integrated with the same geometry and settings as the sample data."),
    calibrant: str = typer.Option(..., "--calibrant", help="Calibrant: CeO2, Ni, LaB6, Si or Al; its lattice parameter is held at the certified value."),
    output: Path = typer.Option(..., "-o", "--output", help="GSAS-II instrument parameter file (.instprm) to write."),
    wavelength_a: Optional[float] = typer.Option(None, "--wavelength-a", help="X-ray wavelength in angstrom (default: from the file header/attrs)."),
    frame: Optional[int] = typer.Option(None, "--frame", help="Frame index when PATTERN is a Patterns Dataset .nc."),
    mode: Mode = typer.Option(Mode.rietveld, "--mode", help="rietveld (scale + B_iso) or lebail (free intensities)."),
    range_2theta_deg: Optional[tuple[float, float]] = typer.Option(None, "--range-2theta-deg", help="Fitted 2theta range LO HI in degrees (default: whole pattern)."),
    chebyshev: int = typer.Option(8, "--chebyshev", help="Number of Chebyshev background coefficients."),
    refine_zero: bool = typer.Option(True, "--refine-zero/--fix-zero", help="Refine the 2theta zero shift (deg)."),
    asymmetry: bool = typer.Option(True, "--asymmetry/--no-asymmetry", help="Try the GSAS-II SH/L (Finger-Cox-Jephcoat) low-angle asymmetry; it is kept only when it improves the fit significantly (3 esd)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the Rietveld plot of the calibrant fit."),
    fit_nc: Optional[Path] = typer.Option(None, "--fit-nc", help="Also write the full fit as NetCDF."),
    kalpha2: Optional[str] = typer.Option(None, "--kalpha2", help="Laboratory Ka doublet LAM2:RATIO (e.g. 1.5444:0.5 for Cu; "
                                          "the wavelength is then Ka1); written as Lam1/Lam2/I(L2)/I(L1)."),
) -> None:
    """Fit U, V, W, X, Y (zero, SH/L asymmetry) to a calibrant pattern with its lattice fixed; write a
    GSAS-II .instprm file for `profile: {instrument: FILE}` in sample recipes."""
    from rich.console import Console

    console = Console()
    err = Console(stderr=True)
    try:
        from insitu_xrd.fit.instrument import INSTRUMENT_PARAMS, fit_instrument
        from insitu_xrd.io.instprm import write_instrument

        pat = load_pattern(pattern, frame, wavelength_a)
        if pat.wavelength_A is None:
            raise InsituXRDError(f"no wavelength for {pattern}: give --wavelength-a")
        refine_names = [p for p in INSTRUMENT_PARAMS if refine_zero or p != "zero_deg"] + (["sh_l"] if asymmetry else [])
        doublet = _parse_kalpha2(kalpha2) if kalpha2 else None
        if doublet is None:
            from insitu_xrd.core.pattern import lab_anode_warning

            lab = lab_anode_warning(pat.wavelength_A, None)
            if lab:
                err.print(f"[yellow]wavelength warning:[/] {lab} (here: --kalpha2 LAM2:RATIO)")
        with err.status(f"fitting the instrument profile to {pat.description} ..."):
            fit = fit_instrument(pat.two_theta_deg, pat.intensity, pat.sigma, calibrant, pat.wavelength_A,
                                 mode=mode.value, range_2theta_deg=range_2theta_deg, chebyshev=chebyshev,
                                 refine=refine_names, kalpha2=doublet)
        comments = [f"source pattern: {pat.description}"] + fit.summary_lines()
        write_instrument(output, fit.instrument, comments=comments)
        ds = fit.result.to_dataset()
        ds.attrs.update({"source_pattern": pat.description, "calibrant": calibrant, "instrument_file": str(output)})
        if fit_nc is not None:
            _write_nc(ds, fit_nc)
        if plot is not None:
            from insitu_xrd.plots.rietveld import plot_rietveld

            plot_rietveld(ds, plot, zooms=[], title=f"{calibrant} instrument fit: {pat.description}")
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _print_result(console, fit.result, f"instrument profile from {calibrant} ({fit.lattice_A} A fixed)")
    typer.echo(f"instrument_file      {output}")
    if plot is not None:
        typer.echo(f"plot                 {plot}")


def register(app: typer.Typer) -> None:
    app.command("refine")(refine)
    app.command("instrument")(instrument)
