"""Figures and the Markdown report written by ``insitu-xrd run`` / ``watch`` into ``outputs.dir``.

Figures (drawn by :mod:`insitu_xrd.plots`, imported lazily so the pipeline stays usable without a
display or when figures are switched off): ``insitu_map``, ``lattice``, ``strain``, and
``rietveld_frame<NNNN>`` for the first frame, the frame where the optional phase (H3) appears, and
the last frame (or ``outputs.rietveld_frames``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from insitu_xrd.pipeline.recipe import Recipe

__all__ = ["write_figures", "write_report", "summary_rows", "rietveld_frames"]


def rietveld_frames(recipe: Recipe, results: xr.Dataset) -> list[int]:
    """Frames to draw a Rietveld plot of: recipe list, else first good, optional-phase onsets, last good."""
    nf = results.sizes["frame"]
    if recipe.outputs.rietveld_frames is not None:
        return [i for i in recipe.outputs.rietveld_frames if 0 <= i < nf]
    good = [i for i, s in enumerate(results["status"].values) if str(s) in ("ok", "refit")]
    if not good:
        return []
    out = [good[0]]
    for k, v in results.attrs.items():
        if k.endswith("_onset_frame") and isinstance(v, (int, np.integer)) and 0 <= int(v) < nf:
            out.append(int(v))
    out.append(good[-1])
    return sorted(set(out))


def write_figures(recipe: Recipe, patterns: xr.Dataset, results: xr.Dataset, strain: xr.Dataset | None,
                  rietveld: Sequence[int] | None = None) -> list[Path]:
    """Write the standard figures into ``<outputs>/figures``; a figure that fails is skipped
    (its error is returned in the report, the run goes on)."""
    from insitu_xrd.pipeline.stages import make_factory
    from insitu_xrd.pipeline.sequential import refit_frame
    from insitu_xrd.plots.insitu import plot_insitu_map, plot_lattice

    fig_dir = recipe.output_dir / "figures"
    ext = recipe.outputs.figure_format
    written: list[Path] = []
    errors: list[str] = []

    def attempt(fn: Any, *args: Any, **kw: Any) -> None:
        try:
            written.append(fn(*args, **kw))
        except Exception as exc:  # a figure must never break the run
            errors.append(f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc}")

    attempt(plot_insitu_map, patterns, fig_dir / f"insitu_map.{ext}", results=results, title=recipe.name)
    attempt(plot_lattice, results, fig_dir / f"lattice.{ext}", versus=recipe.strain.versus, title=recipe.name)
    if strain is not None:
        from insitu_xrd.plots.strain import plot_strain

        attempt(plot_strain, strain, fig_dir / f"strain.{ext}")
    if recipe.refinement is not None:
        from insitu_xrd.plots.rietveld import plot_rietveld

        factory = make_factory(recipe, float(patterns.attrs["wavelength_A"]))
        frames = rietveld_frames(recipe, results) if rietveld is None else list(rietveld)
        for i in frames:
            try:
                fit = refit_frame(results, patterns, i, recipe.refinement, factory)
                name = str(results["frame_name"].values[i]) if "frame_name" in results.coords else str(i)
                written.append(plot_rietveld(fit.to_dataset(), fig_dir / f"rietveld_frame{i:04d}.{ext}",
                                             title=f"{recipe.name}: frame {i} ({name}), Rwp {100 * fit.rwp:.2f} %"))
            except Exception as exc:
                errors.append(f"rietveld frame {i}: {type(exc).__name__}: {exc}")
    write_figures.errors = errors  # type: ignore[attr-defined]
    return written


def _fmt(v: float, nd: int = 5) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def summary_rows(results: xr.Dataset, max_rows: int = 60) -> list[list[str]]:
    """Per-frame table rows: frame, name, time, x, a/c and fraction per phase, Rwp, status."""
    phases = [str(p) for p in results["phase"].values]
    nf = results.sizes["frame"]
    step = max(1, math.ceil(nf / max_rows))
    rows = []
    for i in range(0, nf, step):
        r = [str(i), str(results["frame_name"].values[i]) if "frame_name" in results.coords else "",
             _fmt(float(results["time_s"].values[i]), 0) if "time_s" in results.coords else "",
             _fmt(float(results["x_li"].values[i]), 3) if "x_li" in results.variables else ""]
        for j, _ in enumerate(phases):
            r += [_fmt(float(results["a"].values[i, j]), 5), _fmt(float(results["c"].values[i, j]), 4),
                  _fmt(float(results["phase_fraction"].values[i, j]), 3)]
        r += [_fmt(100 * float(results["rwp"].values[i]), 2), str(results["status"].values[i])]
        rows.append(r)
    return rows


def write_report(recipe: Recipe, results: xr.Dataset | None, stages: Sequence[Any], figures: Sequence[Path],
                 strain_outputs: Sequence[str] = (), extra: str = "") -> Path:
    """``<outputs>/report.md``: stages (ran/reused), the H3 onset, a per-frame table, figures."""
    out = recipe.output_dir / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {recipe.name}", "", f"Recipe: `{recipe.source}`  ", f"Wavelength: {recipe.wavelength_A} A", ""]
    lines += ["## Stages", "", "| stage | status | time (s) | detail |", "|---|---|---|---|"]
    for st in stages:
        lines.append(f"| {st.name} | {st.status} | {st.seconds:.1f} | {st.detail.replace('|', '/')} |")
    lines.append("")
    if results is not None:
        st = [str(s) for s in results["status"].values]
        lines += ["## Sequential refinement", "",
                  f"{len(st)} frames ({results.attrs.get('direction', 'forward')}): {st.count('ok')} ok, "
                  f"{st.count('refit')} refit from the last good frame, {st.count('diverged')} diverged, "
                  f"{sum(s.startswith('skipped') or s == 'error' for s in st)} skipped or failed.", ""]
        for name in json.loads(results.attrs.get("optional_phases", "[]")):
            onset = int(results.attrs.get(f"{name}_onset_frame", -1))
            if onset < 0:
                lines.append(f"Optional phase **{name}**: not detected in any frame.")
            else:
                where = [f"frame {onset} ({results.attrs.get(f'{name}_onset_frame_name', '')})"]
                for k, lab in (("x_li", "x"), ("soc", "SoC"), ("voltage_V", "V"), ("time_s", "t (s)")):
                    v = results.attrs.get(f"{name}_onset_{k}")
                    if v is not None and np.isfinite(float(v)):
                        where.append(f"{lab} = {float(v):.4g}")
                lines.append(f"Optional phase **{name}** appears at " + ", ".join(where) +
                             " (F-test on chi2 and fraction > 3 esd; see `optional_phase_p`).")
        lines.append("")
        bad = [(i, s, str(results['message'].values[i])) for i, s in enumerate(st) if s not in ("ok",)]
        if bad:
            lines += ["Flagged frames:", ""]
            lines += [f"- frame {i}: {s} {('- ' + m) if m else ''}" for i, s, m in bad[:50]]
            lines.append("")
        phases = [str(p) for p in results["phase"].values]
        head = ["frame", "name", "time_s", "x"]
        for p in phases:
            head += [f"{p} a (A)", f"{p} c (A)", f"{p} frac"]
        head += ["Rwp (%)", "status"]
        lines += ["## Per-frame results", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in summary_rows(results)]
        lines.append("")
        lines.append("Full results with esds: `results.nc` (NetCDF; variables a, c, volume, microstrain, size, "
                     "phase_fraction, scale with _esd twins; rwp, gof, zero_shift, status).")
        lines.append("")
    if strain_outputs:
        lines += ["## Strain", ""] + [f"- `{Path(p).relative_to(recipe.output_dir) if Path(p).is_relative_to(recipe.output_dir) else p}`"
                                     for p in strain_outputs] + [""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = Path(f).relative_to(recipe.output_dir) if Path(f).is_relative_to(recipe.output_dir) else Path(f)
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    errs = getattr(write_figures, "errors", [])
    if errs:
        lines += ["Figures not drawn:", ""] + [f"- {e}" for e in errs] + [""]
    if extra:
        lines += [extra, ""]
    out.write_text("\n".join(lines))
    return out
