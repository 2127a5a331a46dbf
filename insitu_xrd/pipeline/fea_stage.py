"""The FEA stage: measured strain curves -> chemo-mechanical particle model -> ``fea.nc`` + figures.

Used by ``insitu-xrd fea`` (:func:`run_fea_file`), by ``insitu-xrd run`` when the recipe has an
``fea:`` section (:func:`fea_stage`, cached like the other stages) and by the demo.

Inputs: a strain file read by :func:`insitu_xrd.io.fea_io.load_strain_table` (the strain stage's
``strain.nc`` / ``strain_curve.csv`` / ``strain.json`` or any CSV with ``x_li`` or ``soc`` and
``eps_a``, ``eps_c`` as fractions) and an :class:`insitu_xrd.core.fea.FEAParams` (defaults, the
recipe's ``fea:`` section and command-line overrides, :func:`fea_params`).

Results are never half-written: ``fea.nc`` is written once, atomically (``.partial`` +
``os.replace``), when the model has finished; an interrupted or failed run leaves an existing
``fea.nc`` untouched (the model keeps its state in memory only, so a run cut short is started
again; its inputs, the strain file and the parameters, are unchanged). Figures are drawn after
the result is on disk, so a figure error never loses the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.pipeline.recipe import FEASection, Recipe, section_hash
from insitu_xrd.pipeline.stages import StageCache, StageInfo, file_digest

__all__ = ["FEAFigureWriter", "FEARun", "CrackMeasures", "crack_measures", "fea_params", "run_fea_file", "fea_stage",
           "fea_summary_lines", "fea_headline_lines", "fea_compare_lines", "n_steps_of"]

#: the name under which the law's D is shown everywhere (it marks where softening began, not how far)
DAMAGE_ONSET = "damage onset (D of the bilinear law)"


@dataclass(frozen=True)
class CrackMeasures:
    """How far the grain boundaries of one run have cracked at its last step.

    dissipated_over_gamma: energy dissipated on the boundaries over Gamma times their length (1; 0
        intact, 1 every boundary a traction-free crack) - the headline measure.
    open_fraction, open_length_um: grain-boundary length opened beyond u_f (fraction, um).
    damage_onset: length-weighted mean D of the bilinear law (saturates near 1 on any boundary in
        tension at a stiff penalty: it says where softening began, not how far it went).
    x_li_min, x_li_max: the extreme nodal Li contents over the whole run.
    """

    dissipated_over_gamma: float
    open_fraction: float
    open_length_um: float
    damage_onset: float
    x_li_min: float
    x_li_max: float


def crack_measures(ds: xr.Dataset) -> CrackMeasures:
    """The :class:`CrackMeasures` of an FEA result (NaN for what an older result lacks)."""
    def last(name: str) -> float:
        return float(ds[name].values[-1]) if name in ds else float("nan")

    def extreme(name: str, fn: Any) -> float:
        return float(fn(ds[name].values)) if name in ds else float("nan")

    total = float(ds.attrs.get("gb_length_total_um", float(ds["gb_length_um"].sum()) if "gb_length_um" in ds else 0.0))
    return CrackMeasures(last("separation_mean"), last("open_crack_fraction"), last("open_crack_fraction") * total,
                         last("damage_mean"), extreme("x_li_min", min), extreme("x_li_max", max))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 and a == a else "n/a"


def fea_headline_lines(ds: xr.Dataset) -> list[str]:
    """What one run says first: dissipated energy over Gamma, fully open boundary length, then the
    law's D labelled as damage onset, the Li-content range and the surface condition."""
    m = crack_measures(ds)
    cond = str(ds.attrs.get("surface_condition", "constant_flux"))
    lim = ds.attrs.get("kinetic_x_limit_1C")
    surface = f"{cond} surface" + (f", limit x = {float(lim):g} per C" if cond == "kinetic" and lim is not None else "")
    lines = [
        f"dissipated energy / Gamma   {m.dissipated_over_gamma:.4f}  (boundary fracture energy spent, over its total "
        f"for the GB length; 0 intact, 1 all cracked)",
        f"fully open GB length        {m.open_fraction:.4f} of the GB length ({m.open_length_um:.2f} um opened beyond u_f)",
        f"{DAMAGE_ONSET}  {m.damage_onset:.4f} (length-weighted mean; saturates near 1 on any boundary in tension)",
        f"Li content x                {m.x_li_min:.4f} .. {m.x_li_max:.4f} over the run ({surface})",
    ]
    if m.x_li_min < 0:
        lines.append("warning              the constant-flux surface drove the Li content below 0 (an impossible state; "
                     "transport.surface_condition: kinetic keeps x in [0, 1])")
    return lines


def fea_compare_lines(first: xr.Dataset, second: xr.Dataset, labels: tuple[str, str] = ("bare", "coated")) -> list[str]:
    """Two runs side by side with the ratio second / first (coated / bare with the default labels):
    a table (dissipated energy / Gamma, fully open GB length, damage onset), then as the last line
    the headline ``"coated / bare: dissipated energy R1, fully open GB length R2"`` (callers print
    it first)."""
    a, b = crack_measures(first), crack_measures(second)
    la, lb = labels
    head = f"{lb} / {la}"
    w = max(len(la), len(lb), 8)
    rows = [("dissipated energy / Gamma", a.dissipated_over_gamma, b.dissipated_over_gamma),
            ("fully open GB length (fraction)", a.open_fraction, b.open_fraction),
            (DAMAGE_ONSET, a.damage_onset, b.damage_onset)]
    out = [f"{'':<37} {la:>{w}} {lb:>{w}}   {head}"]
    out += [f"{name:<37} {va:>{w}.4f} {vb:>{w}.4f}   {_ratio(vb, va)}" for name, va, vb in rows]
    if min(a.damage_onset, b.damage_onset) > 0.9:
        out.append("(damage onset is near 1 in both: it marks where softening began, not how far)")
    out.append(f"{head}: dissipated energy {_ratio(b.dissipated_over_gamma, a.dissipated_over_gamma)}, "
               f"fully open GB length {_ratio(b.open_fraction, a.open_fraction)}")
    return out

#: draws the figures of one result: (dataset, folder, stem, display SoC, animation) -> paths
FEAFigureWriter = Callable[..., list[Path]]


@dataclass
class FEARun:
    """One finished FEA run: the result Dataset, where it was written and its figures."""

    result: xr.Dataset
    path: Path
    figures: list[Path] = field(default_factory=list)
    figure_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    strain_source: str = ""

    @property
    def measures(self) -> CrackMeasures:
        """The headline crack measures of the run (:func:`crack_measures`)."""
        return crack_measures(self.result)

    def headline(self) -> str:
        """One line: dissipated energy / Gamma, fully open GB length, damage onset."""
        m = self.measures
        return (f"dissipated energy / Gamma {m.dissipated_over_gamma:.4f}, fully open GB length {m.open_fraction:.4f}, "
                f"{DAMAGE_ONSET} {m.damage_onset:.4f}")

    @property
    def final_damage_mean(self) -> float:
        """GB-length-weighted mean of the law's D at the last step (1): damage onset, saturates near 1."""
        return float(self.result["damage_mean"].values[-1])

    @property
    def final_cracked_fraction(self) -> float:
        """Fraction of GB length with damage above the cracked threshold at the last step (1)."""
        return float(self.result["cracked_fraction"].values[-1])


def fea_params(section: FEASection | None = None, coated: bool = False, grains: int | None = None,
               seed: int | None = None, soc_end: float | None = None, n_steps: int | None = None,
               n_snapshots: int | None = None, mesh_size_um: float | None = None, surface_condition: str | None = None,
               where: str = "fea") -> Any:
    """FEAParams from a recipe ``fea:`` section (or the defaults) and command-line overrides.

    coated: add the default 160 nm coating (``FEAParams.coated()``) unless the section gives
        ``geometry.coating_um``. grains, seed, soc_end, n_steps, n_snapshots, mesh_size_um:
        override ``geometry.n_grains``, ``geometry.seed``, ``time.soc_end``, ``time.n_steps``,
        ``time.n_snapshots``, ``geometry.mesh_size_um``; surface_condition: ``transport.surface_condition``
        (kinetic or constant_flux).
    where: what to name in an error (e.g. the CLI options).

    Raises:
        InsituXRDError: a value the model refuses (names the key).
    """
    from insitu_xrd.core.fea import FEAParams

    base = section.model_dict() if section is not None else {}
    over = {("geometry", "n_grains"): grains, ("geometry", "seed"): seed, ("time", "soc_end"): soc_end,
            ("time", "n_steps"): n_steps, ("time", "n_snapshots"): n_snapshots,
            ("geometry", "mesh_size_um"): mesh_size_um, ("transport", "surface_condition"): surface_condition}
    for (group, key), value in over.items():
        if value is not None:
            base.setdefault(group, {})[key] = value
    try:
        params = FEAParams.from_dict(base)
    except InsituXRDError as exc:
        raise InsituXRDError(f"{where}: {exc}") from None
    given_coating = section is not None and section.geometry.coating_um is not None
    if (coated or (section is not None and section.coated)) and not given_coating:
        params = params.coated()
    return params


class _FEABar:
    """rich progress bar fed by run_fea's ``progress(done, total)`` callback (time steps)."""

    def __init__(self, label: str, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.prog = Progress(TextColumn(f"[bold]fea[/bold] {label}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)
        self.task: Any = None

    def __enter__(self) -> "_FEABar":
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.prog.add_task("", total=total)
        self.prog.update(self.task, completed=done, total=total)


def run_fea_file(strain: str | Path, params: Any, output: str | Path, figures_dir: str | Path | None = None,
                 figure_writer: FEAFigureWriter | None = None, progress: bool = True, label: str | None = None,
                 display_soc: float | None = None, animation: bool = True, stem: str | None = None,
                 extra_attrs: dict[str, Any] | None = None, x_start: float = 1.0, soc_to_x: float = 1.0,
                 curve: Any = None) -> FEARun:
    """Run the FEA on a strain file and write the result (and figures).

    strain: strain file (see :func:`insitu_xrd.io.fea_io.load_strain_table`); ``curve``: an
        already-read StrainCurve (then ``strain`` only names the source).
    params: FEAParams. output: the result NetCDF (written atomically, parents created).
    figures_dir, figure_writer: draw the figures into this folder (``stem``: file-name stem,
        default the output's stem) with ``figure_writer(ds, folder, stem=, soc=, animation=, label=)``
        (:func:`insitu_xrd.plots.fea.write_fea_figures`); a failing figure is reported in
        ``figure_errors``, never raised. display_soc: SoC of the maps. label: run name in titles.
    x_start, soc_to_x: SoC rule for a strain file without x_li.

    Raises:
        InsituXRDError: bad strain file or parameters, unwritable output (one line).
    """
    from insitu_xrd.core.fea import run_fea
    from insitu_xrd.io.fea_io import curve_from_table, load_strain_table, write_fea_result

    t0 = time.perf_counter()
    output = Path(output)
    read_attrs: dict[str, Any] = {}
    if curve is None:
        tab = load_strain_table(strain, x_start=x_start, soc_to_x=soc_to_x)
        curve = curve_from_table(tab)
        read_attrs = {"strain_abscissa": tab.abscissa, "strain_note": tab.note}
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InsituXRDError(f"FEA output {output}: cannot create its folder ({exc})") from None
    name = label or ("coated" if float(getattr(params.geometry, "coating_um", 0) or 0) > 0 else "bare")
    with _FEABar(f"{name} ({params.geometry.n_grains} grains)", progress) as bar:
        ds = run_fea(curve, params, progress=bar)
    attrs = {"label": name, "display_soc": "" if display_soc is None else float(display_soc), **read_attrs}
    attrs.update(extra_attrs or {})
    write_fea_result(ds, output, source=str(strain), extra_attrs=attrs)
    ds.attrs["label"] = name
    run = FEARun(ds, output, seconds=time.perf_counter() - t0, strain_source=str(strain))
    if figures_dir is not None and figure_writer is not None:
        try:
            run.figures = list(figure_writer(ds, Path(figures_dir), stem=stem or output.stem, soc=display_soc,
                                             animation=animation, label=name))
        except Exception as exc:  # figures must never lose a result
            run.figure_errors.append(f"FEA figures ({output.name}): {type(exc).__name__}: {exc}")
    run.seconds = time.perf_counter() - t0
    return run


def n_steps_of(ds: xr.Dataset) -> int:
    """Time steps of a result: its ``step`` entries less the initial state (time 0) when it is saved."""
    n = int(ds.sizes["step"])
    return n - 1 if n > 1 and float(ds["time_s"].values[0]) == 0.0 else n


def fea_summary_lines(run: FEARun, unchecked_defaults: bool = True) -> list[str]:
    """Readable lines about a finished run: the headline crack measures first, then the mesh, steps,
    time split, the parameters still at unchecked defaults (unless ``unchecked_defaults`` is
    False), and the files (``fea`` and report.md)."""
    ds = run.result
    a = ds.attrs
    lines = fea_headline_lines(ds)
    lines += [
        f"mesh                 {int(a.get('n_grains', 0))} grains, {int(a.get('n_cells', 0))} cells, "
        f"{int(a.get('n_nodes', 0))} nodes, {int(a.get('n_segments', 0))} GB segments ({a.get('mesher', '?')})",
        f"steps                {n_steps_of(ds)} (SoC {float(ds['soc'].values[0]):.3f} .. "
        f"{float(ds['soc'].values[-1]):.3f} in {float(ds['time_s'].values[-1]) / 60:.1f} min), "
        f"{ds.sizes['snapshot']} snapshots saved",
        f"time                 {float(a.get('timing_total_s', run.seconds)):.1f} s (mesh {float(a.get('timing_mesh_s', 0)):.1f}, "
        f"diffusion {float(a.get('timing_diffusion_s', 0)):.1f}, mechanics {float(a.get('timing_mechanics_s', 0)):.1f}, "
        f"cohesive {float(a.get('timing_cohesive_s', 0)):.1f} s; {int(a.get('n_cohesive_iterations_total', 0))} cohesive iterations)",
    ]
    if "grain_delivered_rate_C" in ds:
        rate = ds["grain_delivered_rate_C"].values
        pres = ds["grain_rate_C"].values
        has = np.isfinite(pres)
        short = int(np.sum(has & np.any(rate[1:] < pres * (1 - 1e-9), axis=0))) if rate.shape[0] > 1 else 0
        lines.append(f"surface rates        {short} of {int(has.sum())} surface grains fell below their prescribed rate "
                     f"(grain_delivered_rate_C); particle rate at the end {float(ds['particle_rate_C'].values[-1]):.3f} C")
    unchecked = [u for u in str(a.get("unverified_defaults", "")).split("; ") if u] if unchecked_defaults else []
    if unchecked:
        lines.append("unchecked defaults   engineering values not checked against the cited papers (calibrate these):")
        lines += [f"  - {u}" for u in unchecked]
    lines.append(f"result               {run.path}")
    lines += [f"figure               {p}" for p in run.figures]
    lines += [f"warning              {e}" for e in run.figure_errors]
    return lines


def fea_stage(recipe: Recipe, cache: StageCache, progress: bool = True,
              figure_writer: FEAFigureWriter | None = None,
              strain_available: bool = True) -> tuple[FEARun | None, StageInfo]:
    """The ``fea:`` section of a recipe after the strain stage (cached in stages.json).

    The strain file is ``fea.strain`` or ``<outputs.dir>/strain/strain.nc``; the key is the
    section, the strain file's content and the package version: an unchanged stage is reused
    (the result is read back, nothing is rewritten). Figures (with ``figure_writer`` and
    ``outputs.figures``) go next to the result. ``strain_available=False`` (this run's strain
    stage gave no curve): skipped unless ``fea.strain`` names a file, so a strain.nc left by an
    earlier run is never used by mistake.
    """
    from insitu_xrd import __version__
    from insitu_xrd.io.fea_io import read_fea_result

    t0 = time.perf_counter()
    sec = recipe.fea
    if sec is None:
        return None, StageInfo("fea", "skipped", 0.0, "no fea section in the recipe")
    if sec.strain is None and not strain_available:
        return None, StageInfo("fea", "skipped", 0.0, "the strain stage gave no strain curve in this run")
    strain = recipe.path(sec.strain) if sec.strain else recipe.output_dir / "strain" / "strain.nc"
    assert strain is not None
    if not strain.exists():
        return None, StageInfo("fea", "skipped", 0.0, f"no strain file {strain} (strain stage skipped?)")
    output = recipe.output_dir / sec.output
    draw = figure_writer is not None and recipe.outputs.figures
    key = section_hash(sec, file_digest(strain) if strain.is_file() else file_digest(strain / "strain.nc"),
                       __version__, bool(draw), recipe.outputs.figure_format)
    if cache.hit("fea", key, [output]):
        try:
            ds = read_fea_result(output)
        except InsituXRDError:
            ds = None
        if ds is not None:
            figs = [Path(p) for p in cache.data["fea"].get("figures", []) if Path(p).is_file()]
            run = FEARun(ds, output, figs, seconds=time.perf_counter() - t0, strain_source=str(strain))
            return run, StageInfo("fea", "reused", run.seconds, f"{run.headline()} ({output})", [str(output)])
    params = sec.to_params()
    writer = None
    if draw:
        fmt = recipe.outputs.figure_format

        def writer(ds: xr.Dataset, folder: Path, **kw: Any) -> list[Path]:
            return figure_writer(ds, folder, figure_format=fmt, **kw)  # type: ignore[misc]

    run = run_fea_file(strain, params, output, figures_dir=output.parent, figure_writer=writer, progress=progress,
                       display_soc=sec.display_soc, animation=sec.animation,
                       extra_attrs={"recipe": str(recipe.source), "recipe_name": recipe.name})
    cache.store("fea", key, [output], figures=[str(p) for p in run.figures])
    detail = f"{params.geometry.n_grains} grains, {n_steps_of(run.result)} steps: {run.headline()} -> {output}"
    if run.figure_errors:
        detail += "; " + "; ".join(run.figure_errors)
    return run, StageInfo("fea", "ran", time.perf_counter() - t0, detail, [str(output)] + [str(p) for p in run.figures])
