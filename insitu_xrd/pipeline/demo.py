"""``insitu-xrd demo``: simulate the built-in NMC811 first-charge scenario and run the pipeline on it.

The dataset is written by :func:`insitu_xrd.simulate.dataset.simulate_dataset` into ``OUT/data``;
the packaged recipe ``insitu_xrd/recipes/demo.yaml`` (same as ``recipes/demo.yaml``) is copied
next to it and run with :func:`insitu_xrd.pipeline.run.run_pipeline`; the recovered values are
compared with ``truth.json`` (:func:`compare_with_truth`).

With ``fea=True`` (the CLI's default, ``--no-fea`` to skip) the demo also simulates the coated
scenario (``insitu-xrd simulate --coated``: c decrement 0.6 % instead of 2.0 %) into ``OUT/coated``
and runs the same recipe on it, so both strain curves are *measured* by the pipeline as a user's
would be; then it runs the particle-cracking FEA (:mod:`insitu_xrd.pipeline.fea_stage`) on the
bare curve with a bare particle and on the coated curve with the 160 nm coating
(:func:`demo_fea`), writes ``OUT/fea/bare.nc``, ``OUT/fea/coated.nc`` and their figures, and
prints how far the grain boundaries cracked, headline first: the coated / bare ratios of the
dissipated energy over Gamma and of the fully open boundary length (:meth:`DemoFEA.lines`); the
same, with both runs' summaries and the unchecked defaults, ends the bare run's report.md.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from insitu_xrd.errors import InsituXRDError

#: frames of the demo's coated dataset (its strain curve only drives the FEA: 20 points are
#: plenty for the smoothed curve, and they halve the time the coated pipeline adds to the demo)
DEMO_COATED_FRAMES = 20

__all__ = ["DEMO_COATED_FRAMES", "DemoSummary", "DemoFEA", "packaged_recipe", "compare_with_truth", "demo_fea", "run_demo"]


def packaged_recipe(name: str = "demo.yaml") -> Path:
    """Path of a recipe shipped inside the package (``insitu_xrd/recipes``)."""
    ref = resources.files("insitu_xrd") / "recipes" / name
    with resources.as_file(ref) as p:
        if not Path(p).is_file():
            raise InsituXRDError(f"packaged recipe {name} not found in insitu_xrd/recipes (broken installation?)")
        return Path(p)


def _truth_arrays(truth: dict[str, Any]) -> dict[str, np.ndarray]:
    frames = truth["frames"]
    out: dict[str, Any] = {"x_li": np.array([f["x_li"] for f in frames], dtype=float),
                           "time_s": np.array([f["time_s"] for f in frames], dtype=float)}
    for ph in ("H2", "H3"):
        for k in ("a_A", "c_A", "cathode_fraction"):
            out[f"{ph}_{k}"] = np.array([f["phases"][ph].get(k) if f["phases"][ph].get("present") else np.nan
                                         for f in frames], dtype=float)
        out[f"{ph}_present"] = np.array([bool(f["phases"][ph].get("present")) for f in frames])
    out["H3_cathode_fraction"] = np.nan_to_num(out["H3_cathode_fraction"])
    return out


def compare_with_truth(results: xr.Dataset, truth_json: str | Path) -> dict[str, Any]:
    """Recovered vs true values of a simulated run.

    Returns max |error| of H2 a and c over good frames, of H3 a and c where H3 is present and
    detected, of the H3 cathode fraction and of x_li over good frames, the true and detected H3
    onset frames (and x), and per-frame arrays for a table.
    """
    truth = json.loads(Path(truth_json).read_text())
    t = _truth_arrays(truth)
    nf = results.sizes["frame"]
    if len(t["x_li"]) != nf:
        raise InsituXRDError(f"truth {truth_json} has {len(t['x_li'])} frames, results {nf}")
    good = np.array([str(s) in ("ok", "refit") for s in results["status"].values])
    sel = lambda var, ph: np.asarray(results[var].sel(phase=ph).values, dtype=float)  # noqa: E731
    m: dict[str, Any] = {"n_frames": nf, "n_good": int(good.sum())}
    da = sel("a", "H2") - t["H2_a_A"]
    dc = sel("c", "H2") - t["H2_c_A"]
    g2 = good & t["H2_present"]
    m["max_abs_da_H2_A"] = float(np.nanmax(np.abs(da[g2]))) if g2.any() else np.nan
    m["max_abs_dc_H2_A"] = float(np.nanmax(np.abs(dc[g2]))) if g2.any() else np.nan
    h3_fit = np.asarray(results["active"].sel(phase="H3").values, dtype=bool) if "H3" in results["phase"].values else np.zeros(nf, bool)
    g3 = good & t["H3_present"] & h3_fit
    m["max_abs_da_H3_A"] = float(np.nanmax(np.abs((sel("a", "H3") - t["H3_a_A"])[g3]))) if g3.any() else np.nan
    m["max_abs_dc_H3_A"] = float(np.nanmax(np.abs((sel("c", "H3") - t["H3_c_A"])[g3]))) if g3.any() else np.nan
    frac = np.nan_to_num(sel("cathode_fraction", "H3")) if "cathode_fraction" in results else np.zeros(nf)
    frac = np.where(h3_fit, frac, 0.0)
    m["max_abs_dfrac_H3"] = float(np.max(np.abs(frac - t["H3_cathode_fraction"])[good])) if good.any() else np.nan
    if "x_li" in results.variables:
        dx = np.asarray(results["x_li"].values, dtype=float) - t["x_li"]
        m["max_abs_dx_li"] = float(np.nanmax(np.abs(dx))) if np.isfinite(dx).any() else np.nan
    true_on = int(np.argmax(t["H3_present"])) if t["H3_present"].any() else -1
    det_on = int(results.attrs.get("H3_onset_frame", -1))
    m["h3_onset_true_frame"] = true_on
    m["h3_onset_detected_frame"] = det_on
    m["h3_onset_true_x"] = float(t["x_li"][true_on]) if true_on >= 0 else np.nan
    m["h3_onset_detected_x"] = float(results.attrs.get("H3_onset_x_li", np.nan)) if det_on >= 0 else np.nan
    m["per_frame"] = {
        "x_true": t["x_li"], "x": np.asarray(results["x_li"].values, dtype=float) if "x_li" in results.variables else np.full(nf, np.nan),
        "a_true": t["H2_a_A"], "a": sel("a", "H2"), "c_true": t["H2_c_A"], "c": sel("c", "H2"),
        "a3_true": t["H3_a_A"], "a3": sel("a", "H3"), "c3_true": t["H3_c_A"], "c3": sel("c", "H3"),
        "f3_true": t["H3_cathode_fraction"], "f3": frac, "status": [str(s) for s in results["status"].values],
    }
    return m


@dataclass
class DemoSummary:
    """Outcome of the demo: metrics, a rich table and a text block."""

    metrics: dict[str, Any]
    table: Any
    text: str
    out_dir: Path
    elapsed_s: float
    stages: list[Any] = field(default_factory=list)
    fea: "DemoFEA | None" = None


@dataclass
class DemoFEA:
    """The demo's two FEA runs (:class:`insitu_xrd.pipeline.fea_stage.FEARun`) and their comparison."""

    bare: Any
    coated: Any
    figures: list[Path] = field(default_factory=list)
    figure_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Summary lines (what the demo prints): the coated / bare ratios of the dissipated energy
        over Gamma and of the fully open boundary length first, then both runs side by side."""
        from insitu_xrd.pipeline.fea_stage import fea_compare_lines, n_steps_of

        b, c = self.bare, self.coated
        p = b.result.attrs
        table = fea_compare_lines(b.result, c.result, ("bare", "coated"))
        xs = [r.measures for r in (b, c)]
        out = [
            f"FEA: {int(p.get('n_grains', 0))} grains, {n_steps_of(b.result)} steps to SoC "
            f"{float(b.result['soc'].values[-1]):.2f} ({p.get('surface_condition', 'constant_flux')} surface); "
            f"{self.seconds:.1f} s",
            f"FEA headline, {table[-1]}",
            *table[:-1],
            f"Li content x, bare {xs[0].x_li_min:.3f} .. {xs[0].x_li_max:.3f}, coated {xs[1].x_li_min:.3f} .. "
            f"{xs[1].x_li_max:.3f}",
            f"FEA results: {b.path.parent}",
        ]
        out += [f"warning: {e}" for e in self.figure_errors]
        return out

    def report_lines(self) -> list[str]:
        """The FEA section of the demo's report.md: :meth:`lines`, then each run's summary (the
        unchecked defaults once, they are the same for both runs unless their parameters differ)."""
        from insitu_xrd.pipeline.fea_stage import fea_summary_lines

        same = self.bare.result.attrs.get("unverified_defaults") == self.coated.result.attrs.get("unverified_defaults")
        return (self.lines() + ["", "bare particle:"] + fea_summary_lines(self.bare) + ["", "coated particle:"]
                + fea_summary_lines(self.coated, unchecked_defaults=not same))


def _table(m: dict[str, Any]) -> Any:
    """Truth vs recovered on a few frames (first, quarters, H3 onset, last); fits 80 columns:
    errors are given in 1e-4 A (the lattice targets are 2e-4 A for a, 1e-3 A for c)."""
    from rich import box
    from rich.table import Table

    pf = m["per_frame"]
    nf = len(pf["a"])
    rows = sorted(set([0, nf // 4, nf // 2, max(m["h3_onset_true_frame"], 0), max(m["h3_onset_detected_frame"], 0),
                       (3 * nf) // 4, nf - 1]))
    tab = Table(title="truth vs recovered: H2 lattice, H3 cathode fraction (x: Li per f.u.)", box=box.SIMPLE_HEAD,
                padding=(0, 1), pad_edge=False, title_justify="left",
                caption=None if all(pf["status"][i] == "ok" for i in rows) else "* frame not 'ok' (see report.md)",
                caption_justify="left")
    heads = [("frame", ""), ("x", "true"), ("x", "fit"), ("a (A)", "true"), ("a err", "1e-4 A"),
             ("c (A)", "true"), ("c err", "1e-4 A"), ("H3", "true"), ("H3", "fit")]
    for name, sub in heads:
        tab.add_column(f"{name}\n{sub}" if sub else name, justify="right", no_wrap=True)

    def f(v: float, n: int, scale: float = 1.0, sign: bool = False) -> str:
        if not np.isfinite(v):
            return "-"
        return f"{v * scale:+.{n}f}" if sign else f"{v * scale:.{n}f}"

    for i in rows:
        flag = "" if pf["status"][i] == "ok" else "*"
        tab.add_row(f"{i}{flag}", f(pf["x_true"][i], 3), f(pf["x"][i], 3), f(pf["a_true"][i], 4),
                    f(pf["a"][i] - pf["a_true"][i], 1, 1e4, True), f(pf["c_true"][i], 3),
                    f(pf["c"][i] - pf["c_true"][i], 1, 1e4, True), f(pf["f3_true"][i], 3), f(pf["f3"][i], 3))
    return tab


def demo_fea(bare_strain: str | Path, coated_strain: str | Path, out_dir: str | Path,
             overrides: dict[str, Any] | None = None, progress: bool = True, say: Callable[[str], None] | None = None,
             figure_writer: Any = None, compare_writer: Any = None, animation: bool = True) -> DemoFEA:
    """FEA of a bare particle on ``bare_strain`` and of a coated one (``FEAParams.coated()``, 160 nm)
    on ``coated_strain``, same microstructure; results ``OUT/bare.nc``, ``OUT/coated.nc``.

    overrides: :func:`insitu_xrd.pipeline.fea_stage.fea_params` keywords (grains, seed, soc_end,
        n_steps, n_snapshots, mesh_size_um) for both runs.
    figure_writer: :func:`insitu_xrd.plots.fea.write_fea_figures` (maps, curves, GIF into
        ``OUT/figures``); compare_writer: :func:`insitu_xrd.plots.fea.write_fea_compare`.
    """
    from insitu_xrd.pipeline.fea_stage import fea_params, run_fea_file

    say = say or (lambda m: None)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    kw = dict(overrides or {})
    figs_dir = out_dir / "figures" if figure_writer is not None else None
    runs = {}
    for name, strain, coated in (("bare", bare_strain, False), ("coated", coated_strain, True)):
        params = fea_params(None, coated=coated, where="demo FEA", **kw)
        say(f"FEA {name}: {params.geometry.n_grains} grains, {params.time.n_steps} steps on {strain}")
        runs[name] = run_fea_file(strain, params, out_dir / f"{name}.nc", figures_dir=figs_dir,
                                  figure_writer=figure_writer, progress=progress, label=name, animation=animation)
        say(f"FEA {name}: {runs[name].headline()} in {runs[name].seconds:.1f} s")
    res = DemoFEA(runs["bare"], runs["coated"])
    res.figure_errors = runs["bare"].figure_errors + runs["coated"].figure_errors
    res.figures = runs["bare"].figures + runs["coated"].figures
    if compare_writer is not None:
        try:
            res.figures += list(compare_writer([runs["bare"].result, runs["coated"].result], out_dir / "figures",
                                               labels=["bare", "coated"]))
        except Exception as exc:  # figures must never lose a result
            res.figure_errors.append(f"FEA compare figure: {type(exc).__name__}: {exc}")
    res.seconds = time.perf_counter() - t0
    return res


def run_demo(out: str | Path = "demo_out", seed: int = 7, n_frames: int = 40, binning: int = 2, progress: bool = True,
             say: Callable[[str], None] | None = None, recipe: str | Path | None = None,
             figure_writer: Any = None, fea: bool = False, coated_frames: int | None = None,
             fea_overrides: dict[str, Any] | None = None, fea_figure_writer: Any = None,
             fea_compare_writer: Any = None) -> DemoSummary:
    """Simulate ``n_frames`` frames (seed, detector binning) into OUT/data and run the demo recipe
    (``figure_writer``: see :func:`insitu_xrd.pipeline.run.run_pipeline`).

    fea: also simulate the coated scenario into OUT/coated (``coated_frames`` frames, default
    :data:`DEMO_COATED_FRAMES` or ``n_frames`` if fewer; seed + 1), run the recipe on it and the FEA on both measured strain curves
    (:func:`demo_fea`, into OUT/fea; ``fea_overrides``, ``fea_figure_writer``,
    ``fea_compare_writer`` passed on).
    """
    from insitu_xrd.pipeline.run import run_pipeline
    from insitu_xrd.simulate.dataset import simulate_dataset

    say = say or (lambda m: None)
    t0 = time.perf_counter()
    data = Path(out) / "data"
    say(f"simulating {n_frames} frames (seed {seed}, binning {binning}) into {data} ...")
    simulate_dataset(data, frames=n_frames, seed=seed, binning=binning)
    say(f"simulated in {time.perf_counter() - t0:.1f} s")
    src = Path(recipe) if recipe is not None else packaged_recipe("demo.yaml")
    dst = data / "demo.yaml"
    shutil.copyfile(src, dst)
    res = run_pipeline(dst, progress=progress, say=say, figure_writer=figure_writer)
    if res.results is None:
        raise InsituXRDError("demo: the pipeline produced no results")
    m = compare_with_truth(res.results, data / "truth.json")
    fea_res = None
    coated_lines: list[str] = []
    if fea:
        n_coated = coated_frames or min(n_frames, DEMO_COATED_FRAMES)
        cdata = Path(out) / "coated"
        say(f"simulating the coated scenario: {n_coated} frames (seed {seed + 1}) into {cdata} ...")
        t1 = time.perf_counter()
        simulate_dataset(cdata, frames=n_coated, seed=seed + 1, binning=binning, coated=True)
        shutil.copyfile(src, cdata / "demo.yaml")
        cres = run_pipeline(cdata / "demo.yaml", progress=progress, say=say, figure_writer=figure_writer)
        if cres.results is None or cres.strain is None:
            raise InsituXRDError("demo: the pipeline gave no strain curve for the coated dataset")
        cm = compare_with_truth(cres.results, cdata / "truth.json")
        coated_lines.append(f"coated charge: {cm['n_good']}/{cm['n_frames']} frames ok, max |c - c_true| (H2) "
                            f"{cm['max_abs_dc_H2_A']:.2e} A; {time.perf_counter() - t1:.1f} s")
        strains = {}
        for name, r in (("bare", res), ("coated", cres)):
            if r.strain is None:
                raise InsituXRDError(f"demo: the pipeline gave no strain curve for the {name} dataset")
            strains[name] = r.recipe.output_dir / "strain" / "strain.nc"
            c = np.asarray(r.strain["curve_eps_c"].values, dtype=float)
            xg = np.asarray(r.strain["x"].values, dtype=float)
            # end of charge: the lowest x_li (the curve grid may run either way)
            c_end = float(c[int(np.nanargmin(xg))]) if str(r.strain.attrs.get("versus", "x_li")) == "x_li" else float(c[-1])
            coated_lines.append(f"measured eps_c, {name:<6}     max {100 * np.nanmax(c):+.2f} %, end {100 * c_end:+.2f} % "
                                f"(c decrement {100 * (np.nanmax(c) - c_end) / (1 + np.nanmax(c)):.2f} %)")
        fea_res = demo_fea(strains["bare"], strains["coated"], Path(out) / "fea", overrides=fea_overrides,
                           progress=progress, say=say, figure_writer=fea_figure_writer,
                           compare_writer=fea_compare_writer)
        if res.report is not None and Path(res.report).is_file():
            from insitu_xrd.pipeline.report import write_fea_section

            write_fea_section(Path(res.report), fea_res.report_lines(), fea_res.figures)
    elapsed = time.perf_counter() - t0
    lines = [
        f"max |a - a_true| (H2)      {m['max_abs_da_H2_A']:.2e} A   (target 2e-4 A)",
        f"max |c - c_true| (H2)      {m['max_abs_dc_H2_A']:.2e} A   (target 1e-3 A)",
        f"max |a - a_true| (H3)      {m['max_abs_da_H3_A']:.2e} A",
        f"max |c - c_true| (H3)      {m['max_abs_dc_H3_A']:.2e} A",
        f"max |H3 frac - true|       {m['max_abs_dfrac_H3']:.3f}     (target 0.05)",
        f"max |x - x_true|           {m.get('max_abs_dx_li', np.nan):.4f}    (target 0.01)",
        f"H3 onset: true frame {m['h3_onset_true_frame']} (x = {m['h3_onset_true_x']:.4f}), detected frame "
        f"{m['h3_onset_detected_frame']} (x = {m['h3_onset_detected_x']:.4f})",
    ]
    lines += coated_lines
    if fea_res is not None:
        lines += fea_res.lines()
    lines.append(f"{m['n_good']}/{m['n_frames']} frames ok; total {elapsed:.1f} s; report: {res.report}")
    return DemoSummary(m, _table(m), "\n".join(lines), data, elapsed, res.stages, fea_res)
