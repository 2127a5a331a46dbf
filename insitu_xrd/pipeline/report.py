"""The Markdown report written by ``insitu-xrd run`` / ``watch`` into ``outputs.dir``.

Figures are drawn by a *figure writer* handed down by the caller (layers: the pipeline does not
import :mod:`insitu_xrd.plots`): ``insitu_xrd.plots.insitu.write_figures`` draws ``insitu_map``,
``lattice``, ``strain`` and ``rietveld_frame<NNNN>`` for the frames :func:`rietveld_frames` picks
(first, the frame where the optional phase (H3) appears, last; or ``outputs.rietveld_frames``).
A writer is ``writer(recipe, patterns, results, strain) -> (figure paths, error lines)``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from insitu_xrd.pipeline.recipe import Recipe

__all__ = ["FigureWriter", "write_report", "write_fea_section", "summary_rows", "rietveld_frames", "broadening_lines",
           "automation_lines", "cell_line_lines"]

#: ``writer(recipe, patterns, results, strain) -> (figure paths, error lines)``
FigureWriter = Callable[[Recipe, xr.Dataset, xr.Dataset, "xr.Dataset | None"], "tuple[list[Path], list[str]]"]


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


def _corr_text(results: xr.Dataset, var: str, i: int, j: int, own: str) -> str:
    if var not in results or "corr_with" not in results.coords:
        return ""
    vals = results[var].values[i, j]
    terms = [str(t) for t in results["corr_with"].values]
    return ", ".join(f"{t} {float(v):+.2f}" for t, v in zip(terms, vals) if t != own and np.isfinite(v))


def broadening_lines(recipe: Recipe, results: xr.Dataset) -> list[str]:
    """The report's "Microstrain and size" section: where the instrument profile came from, the
    ``microstrain_warning`` (from the results' attrs, else from the recipe), and microstrain and
    size with their correlations (each other, instrument terms U..Y) on the Rietveld-plot frames."""
    if "microstrain" not in results:
        return []
    attrs = dict(results.attrs)
    if "instrument_profile" not in attrs:  # e.g. a watch session's results: from the recipe
        from insitu_xrd.pipeline.stages import instrument_attrs

        attrs.update(instrument_attrs(recipe))
    lines = ["## Microstrain and size", ""]
    if attrs.get("instrument_profile"):
        lines += [f"Instrument profile: {attrs['instrument_profile']}.", ""]
    if attrs.get("instrument_note"):
        lines += [f"{attrs['instrument_note']}.", ""]
    if attrs.get("microstrain_warning"):
        lines += [f"**Warning (microstrain):** {attrs['microstrain_warning']}.", ""]
    phases = [str(p) for p in results["phase"].values]
    rows = []
    for i in rietveld_frames(recipe, results):
        for j, name in enumerate(phases):
            mu, mu_e = float(results["microstrain"].values[i, j]), float(results["microstrain_esd"].values[i, j])
            sz, sz_e = (float(results["size"].values[i, j]), float(results["size_esd"].values[i, j])) if "size" in results \
                else (np.nan, np.nan)
            if not (np.isfinite(mu_e) or np.isfinite(sz_e)):
                continue  # neither refined on this frame
            rows.append(f"| {i} | {name} | {_fmt(mu, 1)} +/- {_fmt(mu_e, 1)} | "
                        + (f"{_fmt(sz, 4)} +/- {_fmt(sz_e, 4)}" if np.isfinite(sz_e) else _fmt(sz, 4))
                        + f" | {_corr_text(results, 'microstrain_correlation', i, j, 'microstrain')} | "
                        f"{_corr_text(results, 'size_correlation', i, j, 'size')} |")
    if rows:
        lines += ["| frame | phase | microstrain (1e-6) | size (um) | microstrain correlated with | size correlated with |",
                  "|---|---|---|---|---|---|"] + rows + [""]
        lines += ["Correlations from the fit's covariance (refined pairs only); |r| > 0.8 with an instrument term means "
                  "the two are not separated by the data.", ""]
    return lines


def _frames_text(frames: Sequence[int], most: int = 12) -> str:
    frames = [int(f) for f in frames]
    txt = ", ".join(str(f) for f in frames[:most])
    return txt + (f" ... ({len(frames)} frames)" if len(frames) > most else "")


def automation_lines(results: xr.Dataset) -> list[str]:
    """The report's "What the automation decided" section, from the results' variables and attrs
    (``held``/``held_reason``, ``<P>_last_frame``, ``held_phases``, ``refined_never_moved``,
    ``parameters_at_bound``, ``unphysical``, the frames' messages): each automatic decision and
    how to override it. [] when there is nothing to say."""
    attrs = results.attrs
    lines: list[str] = []

    def load(key: str) -> dict:
        try:
            return json.loads(attrs.get(key, "{}") or "{}")
        except (TypeError, ValueError):
            return {}

    phases = [str(p) for p in results["phase"].values]
    for name, frames in load("held_phases").items():
        reason = ""
        if "held_reason" in results and name in phases:
            reasons = [str(x) for x in results["held_reason"].sel(phase=name).values if str(x)]
            reason = f" ({reasons[0]})" if reasons else ""
        lines.append(f"- **{name} held** at its start lattice/profile on frames {_frames_text(frames)}{reason}: its scale "
                     f"is below 3 statistical esds there (`held`, `held_reason` in the results; `hold: never` in the "
                     f"recipe's phase refines it anyway).")
    for name in phases:
        last = attrs.get(f"{name}_last_frame")
        if last is not None:
            where = [f"frame {int(last)} ({attrs.get(f'{name}_last_frame_name', '')})"]
            for k, lab in (("x_li", "x"), ("soc", "SoC"), ("voltage_V", "V"), ("time_s", "t (s)")):
                v = attrs.get(f"{name}_last_{k}")
                if v is not None and np.isfinite(float(v)):
                    where.append(f"{lab} = {float(v):.4g}")
            lines.append(f"- **{name}** is last present at " + ", ".join(where) + "; gone after it (a result: the end "
                         "of its reaction, not a failure).")
    msgs = [str(m) for m in results["message"].values] if "message" in results else []
    real = [i for i, m in enumerate(msgs) if "not a divergence" in m]
    if real:
        lines.append(f"- Rwp rose beyond `sequential.divergence.rwp_jump_factor` on frames {_frames_text(real)}; refits "
                     "from the last good frame and a lattice search reached no clearly lower chi2, so the chained fits "
                     "were kept (a real change of the sample, not a divergence).")
    names = [i for i, m in enumerate(msgs) if "exchanged" in m]
    if names:
        lines.append(f"- Phase names were exchanged back to follow the recipe on frames {_frames_text(names)} "
                     "(each lattice keeps the name of the recipe phase it continues or whose start cell is closest).")
    if attrs.get("cold_start_warning"):
        lines.append(f"- Cold start: {attrs['cold_start_warning']}")
    never = load("refined_never_moved")
    if never:
        lines.append("- **Refined but never moved** (the same value on every frame: refined in name only; check its "
                     "start, bounds and whether the data carry it): "
                     + ", ".join(f"{k} = {float(v):.6g}" for k, v in never.items()) + ".")
    bound = load("parameters_at_bound")
    if bound:
        lines.append("- **At a bound** (no estimate; its esd is reported as 'at bound', NaN in the results): "
                     + "; ".join(f"{k} on frames {_frames_text(v)}" for k, v in bound.items()) + ".")
    bad = load("unphysical")
    if bad:
        lines.append("- **Unphysical values** (a profile term below zero, a negative area or scale): "
                     + "; ".join(f"{k} on frames {_frames_text(v)}" for k, v in bad.items()) + ".")
    return ["## What the automation decided", ""] + lines + [""] if lines else []


def cell_line_lines(results: xr.Dataset) -> list[str]:
    """The report's "Cell components" section from the results' attrs ``cell_components``,
    ``cell_free_peaks``, ``cell_late_lines`` (``refinement.cell_lines: auto``,
    :mod:`insitu_xrd.pipeline.sequential.cell_lines`): what was identified (component, its lines'
    d-spacings, how strong), the free peaks, the lines that appeared later. [] when the search did
    not run."""
    attrs = results.attrs
    if "cell_components" not in attrs:
        return []

    def load(key: str) -> list:
        try:
            return list(json.loads(attrs.get(key, "[]") or "[]"))
        except (TypeError, ValueError):
            return []

    comps, free, late = load("cell_components"), load("cell_free_peaks"), load("cell_late_lines")
    frames = load("cell_lines_frames")
    names = [str(n) for n in results["frame_name"].values] if "frame_name" in results.coords else []
    lines = ["## Cell components", ""]
    searched = f"frames {_frames_text(frames)}" if frames else "the first frames"
    if not comps and not free:
        lines.append(f"No line of the cell found in the residual of {searched} (`refinement.cell_lines: auto`).")
    else:
        lines.append(f"Lines in the residual of {searched} that no recipe phase indexes, there from the start and not "
                     "moving, were added to the model (`refinement.cell_lines: auto`; `off` turns this off, a component "
                     "listed among the recipe's phases is not added again):")
        lines.append("")
    for c in comps:
        seen = [ln for ln in c.get("lines", []) if ln.get("observed", True)]
        txt = ", ".join(f"{ln['label']} {ln['d_A']:.4f} A" + (f" ({ln['sigma']:.0f} sigma)" if ln.get("sigma") is not None else "")
                        for ln in seen)
        if c.get("kind") == "phase":
            name = c.get("phase", c["name"])
            extra = ""
            if "phase" in results.coords and name in [str(p) for p in results["phase"].values]:
                a = results["a"].sel(phase=name).values
                wf = results["phase_fraction"].sel(phase=name).values
                if np.isfinite(a).any():
                    extra = f"; a = {np.nanmedian(a):.5f} A (median)"
                if np.isfinite(wf).any():
                    extra += f", {100 * np.nanmedian(wf):.1f} wt% of the refined phases"
            why = f"; found by a trial fit of the first frame ({c['evidence']})" if c.get("evidence") else ""
            lines.append(f"- **{c['name']}** ({c['part']}; {c['source']}): lines {txt}; fitted as phase `{name}` "
                         f"(scale, lattice, microstrain){extra}{why}.")
        else:
            rest = [ln for ln in c.get("lines", []) if not ln.get("observed", True)]
            more = ("; also modelled at the library's place: " + ", ".join(f"{ln['label']} {ln['d_A']:.3f} A" for ln in rest)
                    if rest else "")
            lines.append(f"- **{c['name']}** ({c['part']}; {c['source']}): lines {txt}{more}; fitted as peaks at fixed "
                         "positions and widths with a free area (background humps "
                         + ", ".join(str(i) for i in c.get("humps", [])) + ").")
    standard = attrs.get("cell_standard")
    try:
        standard = json.loads(standard) if standard else {}
    except (TypeError, ValueError):
        standard = {}
    if standard:
        held = ", ".join(f"{k} = {standard[k]:.5f} A" for k in ("a", "c") if k in standard)
        zero = ""
        if "zero_shift" in results:
            z = results["zero_shift"].values * 1e3
            if np.isfinite(z).any():
                zero = f" (from {np.nanmin(z):+.2f} to {np.nanmax(z):+.2f} mdeg)"
        lines.append(f"- **{standard['phase']} is the internal standard**: a cell part does not change with the charge, so "
                     f"its lattice is held at {held} (refined on frame {standard.get('frame', 0)} with the calibration's "
                     f"zero) and the 2theta zero is refined on every frame{zero}, following drifts of the beam or "
                     "the sample. List the component among the recipe's phases (or refine zero_deg yourself) to decide "
                     "otherwise.")
    if free:
        lines.append("- **Free peaks** (stationary, no library component explains them; fixed position and width, free "
                     "area): " + "; ".join(f"d = {f['d_A']:.4f} A (2theta {f['two_theta_deg']:.4f} deg, FWHM "
                                           f"{f['fwhm_deg']:.4f} deg, {f['sigma']:.0f} sigma)" for f in free) + ".")
    if late:
        lines.append("- **Lines that appear later** (not in the first frames: never absorbed into the model; a new phase?): "
                     + "; ".join(f"d = {g['d_A']:.4f} A from frame {g['first_frame']}"
                                 + (f" ({names[g['first_frame']]})" if 0 <= g['first_frame'] < len(names) else "")
                                 + f", on frames {_frames_text(g['frames'])}, up to {g['max_sigma']:.0f} sigma"
                                 for g in late) + ".")
    return lines + [""]


def write_report(recipe: Recipe, results: xr.Dataset | None, stages: Sequence[Any], figures: Sequence[Path],
                 strain_outputs: Sequence[str] = (), extra: str = "", figure_errors: Sequence[str] = ()) -> Path:
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
                     "phase_fraction, cathode_fraction, scale with _esd twins; microstrain_correlation, "
                     "size_correlation; rwp, gof, zero_shift, status).")
        lines.append("")
        lines += automation_lines(results)
        lines += cell_line_lines(results)
        lines += broadening_lines(recipe, results)
    if strain_outputs:
        lines += ["## Strain", ""] + [f"- `{Path(p).relative_to(recipe.output_dir) if Path(p).is_relative_to(recipe.output_dir) else p}`"
                                     for p in strain_outputs] + [""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = Path(f).relative_to(recipe.output_dir) if Path(f).is_relative_to(recipe.output_dir) else Path(f)
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    errs = list(figure_errors)
    if errs:
        lines += ["Figures not drawn:", ""] + [f"- {e}" for e in errs] + [""]
    if extra:
        lines += [extra, ""]
    out.write_text("\n".join(lines))
    return out


FEA_HEADING = "## FEA: particle cracking"


def write_fea_section(report: Path, summary_lines: Sequence[str], figures: Sequence[Path] = ()) -> Path:
    """Put the fea stage's summary (and figures) into ``report.md`` as its last section.

    The report is written by the finish stage, before the fea stage runs; this replaces an FEA
    section already there (a re-run) instead of adding a second one."""
    text = report.read_text() if report.is_file() else ""
    head, _, _ = text.partition(FEA_HEADING)
    lines = [FEA_HEADING, "", "```"] + [str(x) for x in summary_lines] + ["```", ""]
    for f in figures:
        rel = Path(f).relative_to(report.parent) if Path(f).is_relative_to(report.parent) else Path(f)
        if rel.suffix.lower() in (".png", ".svg", ".jpg", ".gif"):
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    tmp = report.with_name(report.name + ".partial")
    tmp.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines))
    os.replace(tmp, report)
    return report
