"""1D operando pattern of an NMC811 cell at one state of charge, with its complete truth.

The model is `insitu_xrd.core.pattern.calc_pattern` (structure-factor intensities with xraydb
form factors, Lorentz factor, GSAS-II CW TCH pseudo-Voigt, Chebyshev background, humps, diffuse
components); this module only decides *what* is in the beam:

- the cathode phases H2 / H3 of a `ScenarioState` (R-3m NMC811, Li content, Ni/Li mixing, Biso),
- optional cell lines: Li metal (Im-3m, a = 3.51 A) and the Al current collector
  (Fm-3m, a = 4.0495 A),
- optional broad diffuse components under H2 104 and under 108/110 (disordered surface layer),
- a Chebyshev background with a broad electrolyte/polymer hump,
- optional lines of the pellet's binder and carbon (PTFE, carbon black, graphite: `cell_parts`),
  at fixed d, their strongest line's area a set fraction of the H2 003 area at x = 1,
- optional crystallite-size distribution of the cathode phases (`size_tails`: super-Lorentzian tails),

and returns the noise-free expectation, a Poisson-noisy copy and a JSON-ready truth dict.
Intensities are counts (per detector pixel when the pattern feeds a 2D frame).
Scales follow Hill & Howard weight fractions: scale_p = k W_p / (Z M V)_p (`scale_for_weight_fraction`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from insitu_xrd.core.crystal import Phase, Reflections, make_template, parse_hkl_label
from insitu_xrd.core.pattern import (
    BroadPeak,
    DiffusePeak,
    Instrument,
    PatternComponents,
    PhaseState,
    calc_pattern,
    d_from_two_theta_deg,
    peak_table,
    scale_for_weight_fraction,
    weight_fractions,
)
from insitu_xrd.simulate.cell_parts import CARBON_BLACK, GRAPHITE, PTFE, CellPart, part_lines, part_pattern
from insitu_xrd.simulate.scenario import ChargeScenario, ScenarioState
from insitu_xrd.simulate.size_tails import SizeDistribution, size_distributed_pattern

__all__ = [
    "TRUE_INSTRUMENT",
    "CellModel",
    "Simulated1D",
    "cathode_phase",
    "intensity_scale_for_peak_counts",
    "cell_parts_reference_area",
    "diffuse_reference_areas",
    "build_model",
    "simulate_pattern_1d",
]

#: True instrumental profile put into the simulated 1D patterns (GSAS-II CW units: U, V, W in
#: centideg^2, X, Y in centideg): Gaussian FWHM ~0.029 deg at low angle, like a Perkin flat panel
#: at 1 m with a ~106 keV beam. Frames add pixel broadening on top (see docs/simulator.md).
TRUE_INSTRUMENT = dict(U=2.0, V=-0.5, W=1.5, X=0.25, Y=0.4)


@dataclass(frozen=True)
class CellModel:
    """What besides the cathode is in the beam, and the intensity levels.

    weight fractions: of all crystalline phases (Hill & Howard), cathode total split H2/H3 by the
    scenario's cathode fractions. peak_counts: height (counts) of the H2 003 peak at x = 1.
    background_coeffs: Chebyshev coefficients (counts) over background_range_deg.
    hump: (centre deg, FWHM deg, height counts, eta) of the electrolyte/separator hump.
    binder_carbon: PTFE binder and carbon-black lines; graphite: graphite lines (`cell_parts`).
    *_area_fraction: area of the part's strongest line / area of the H2 003 line at x = 1: PTFE 100
    and the carbon-black 002 band of a pressed pellet (80:10:10 active:carbon:PTFE by weight) are
    minor next to 003 (PTFE 100 ~4 % of its height, the broad 002 band ~1 %).
    """

    cell_lines: bool = True
    diffuse: bool = True
    cathode_weight_fraction: float = 0.72
    al_weight_fraction: float = 0.20
    li_weight_fraction: float = 0.08
    al_mustrain: float = 400.0
    li_mustrain: float = 300.0
    peak_counts: float = 12000.0
    background_coeffs: tuple[float, ...] = (260.0, -70.0, 25.0, -8.0, 3.0)
    background_range_deg: tuple[float, float] = (0.0, 17.0)
    hump: tuple[float, float, float, float] = (1.9, 1.4, 160.0, 0.5)
    diffuse_eta: float = 0.5
    diffuse_offset_deg: tuple[float, float] = (-0.01, -0.015)
    binder_carbon: bool = False
    graphite: bool = False
    ptfe_area_fraction: float = 0.05
    carbon_black_area_fraction: float = 0.15
    graphite_area_fraction: float = 0.06

    def cell_parts(self) -> list[tuple[CellPart, float]]:
        """(part, area fraction of its strongest line) of the parts in the beam."""
        out: list[tuple[CellPart, float]] = []
        if self.binder_carbon:
            out += [(PTFE, self.ptfe_area_fraction), (CARBON_BLACK, self.carbon_black_area_fraction)]
        if self.graphite:
            out.append((GRAPHITE, self.graphite_area_fraction))
        return out

    def weight_fractions(self) -> dict[str, float]:
        if not self.cell_lines:
            return {"cathode": 1.0, "Al": 0.0, "Li": 0.0}
        return {"cathode": self.cathode_weight_fraction, "Al": self.al_weight_fraction, "Li": self.li_weight_fraction}


@dataclass
class Simulated1D:
    """A simulated pattern: grid (deg), Poisson counts, noise-free expectation, components, truth."""

    two_theta_deg: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    components: PatternComponents
    truth: dict[str, Any] = field(default_factory=dict)
    cell_parts: dict[str, np.ndarray] = field(default_factory=dict)  # noise-free lines of each cell part

    @property
    def sigma(self) -> np.ndarray:
        """Poisson sigma of the observation, sqrt(max(observed, 1))."""
        return np.sqrt(np.maximum(self.observed, 1.0))


def cathode_phase(name: str, a_A: float, c_A: float, li_occupancy: float, ni_li_mixing: float, o_z: float) -> Phase:
    """NMC811 phase (core template) with the given lattice and site parameters."""
    return make_template("nmc811", name=name, a=a_A, c=c_A, li_occupancy=li_occupancy, ni_li_mixing=ni_li_mixing, o_z=o_z)


@functools.lru_cache(maxsize=64)
def _reflection_list(template: str, dmin_A: float) -> Reflections:
    # hkl and multiplicities do not depend on the cell within a template; generating them is the
    # slow part of a pattern, so build the list once with a 5 % margin on d (cells change < 3 %)
    return make_template(template).reflections(0.95 * dmin_A)


def _dmin_A(wavelength_A: float, tth_max_deg: float) -> float:
    return round(float(d_from_two_theta_deg(min(tth_max_deg + 0.5, 179.0), wavelength_A)), 4)


def _phase_states(state: ScenarioState, cell: CellModel, k: float, dmin_A: float | None = None) -> list[PhaseState]:
    """Phase states of the pattern; with dmin_A the reflection lists are cached per template."""
    wf = cell.weight_fractions()
    out: list[PhaseState] = []
    for pt in state.phases:
        if not pt.present:
            continue
        ph = cathode_phase(pt.name, pt.a_A, pt.c_A, pt.li_occupancy, pt.ni_li_mixing, pt.o_z)  # type: ignore[arg-type]
        w = wf["cathode"] * pt.cathode_fraction
        refl = _reflection_list("nmc811", dmin_A) if dmin_A else None
        out.append(PhaseState(ph, scale=scale_for_weight_fraction(w, ph, k), mustrain=pt.mustrain, size_um=pt.size_um,  # type: ignore[arg-type]
                              reflections=refl, mustrain_axial=pt.mustrain_axial, mustrain_axis=(0, 0, 1),
                              md_ratio=pt.md_ratio, md_axis=(0, 0, 1)))
    if cell.cell_lines:
        for name, template, w, mu in (("Li", "li_metal", wf["Li"], cell.li_mustrain), ("Al", "al", wf["Al"], cell.al_mustrain)):
            ph = make_template(template, name=name)
            refl = _reflection_list(template, dmin_A) if dmin_A else None
            out.append(PhaseState(ph, scale=scale_for_weight_fraction(w, ph, k), mustrain=mu, reflections=refl))
    return out


def _h2_003(scenario: ChargeScenario, instrument: Instrument, cell: CellModel, k: float) -> tuple:
    """(peak table, index) of the H2 003 line of the pattern at x = 1 with intensity scale k."""
    states = _phase_states(scenario.state(1.0), cell, k)
    h2 = next(s for s in states if s.name == "H2")
    table = peak_table(h2, instrument, (0.5, 3.0))
    return table, int(np.argmin(np.abs(table.hkl - np.array([0, 0, 3])).sum(axis=1)))


def cell_parts_reference_area(scenario: ChargeScenario, instrument: Instrument, cell: CellModel, k: float) -> float:
    """Area (counts x deg) of the H2 003 line at x = 1: the unit of the cell parts' line areas."""
    table, i003 = _h2_003(scenario, instrument, cell, k)
    return float(table.area[i003])


def intensity_scale_for_peak_counts(scenario: ChargeScenario, instrument: Instrument, cell: CellModel) -> float:
    """k such that the H2 003 peak of the pattern at x = 1 is `cell.peak_counts` high."""
    table, i003 = _h2_003(scenario, instrument, cell, 1.0)
    x0 = table.two_theta_deg[i003]
    from insitu_xrd.core.profiles import pseudo_voigt

    height = table.area[i003] * float(pseudo_voigt(np.array([x0]), x0, table.fwhm_deg[i003], table.eta[i003])[0])
    return cell.peak_counts / height


def diffuse_reference_areas(scenario: ChargeScenario, instrument: Instrument, cell: CellModel, k: float) -> list[float]:
    """Areas of the two diffuse components: a fraction of the Bragg areas of H2 104 and of
    108+110 at x = 1 (the disordered surface layer does not change much on charge)."""
    states = _phase_states(scenario.state(1.0), cell, k)
    h2 = next(s for s in states if s.name == "H2")
    table = peak_table(h2, instrument, (0.5, 8.0))
    frac = scenario.p.diffuse_fraction

    def area_of(label: str) -> float:
        # by d-spacing: the literature's "108" is the obverse-allowed 018 (same d, same position)
        d = float(h2.phase.d_spacing(np.array([parse_hkl_label(label)]))[0])
        return float(table.area[np.argmin(np.abs(table.d_A - d))])

    return [frac * area_of("104"), frac * (area_of("108") + area_of("110"))]


def build_model(
    state: ScenarioState,
    scenario: ChargeScenario,
    instrument: Instrument,
    cell: CellModel,
    k: float,
    diffuse_areas: list[float] | None = None,
    tth_max_deg: float | None = None,
) -> tuple[list[PhaseState], list[DiffusePeak], list[BroadPeak]]:
    """Phase states, diffuse components and humps of the pattern at one state (reflection lists
    cached per template up to tth_max_deg when given)."""
    dmin = _dmin_A(instrument.wavelength_A, tth_max_deg) if tth_max_deg is not None else None
    phases = _phase_states(state, cell, k, dmin)
    diffuse: list[DiffusePeak] = []
    if cell.diffuse and state.h2.present:
        areas = diffuse_areas if diffuse_areas is not None else diffuse_reference_areas(scenario, instrument, cell, k)
        fw = scenario.p.diffuse_fwhm_deg
        diffuse = [
            DiffusePeak("H2", ("104",), areas[0], fw[0], cell.diffuse_eta, cell.diffuse_offset_deg[0]),
            DiffusePeak("H2", ("108", "110"), areas[1], fw[1], cell.diffuse_eta, cell.diffuse_offset_deg[1]),
        ]
    hc, hw, hh, he = cell.hump
    # area of a pseudo-Voigt of height hh: hh * fwhm / (eta*2/pi + (1-eta)*sqrt(4 ln2/pi))
    peak_density = he * 2.0 / np.pi + (1.0 - he) * np.sqrt(4.0 * np.log(2.0) / np.pi)
    humps = [BroadPeak(hc, hw, hh * hw / peak_density, he)]
    return phases, diffuse, humps


def _truth(
    state: ScenarioState, phases: list[PhaseState], diffuse: list[DiffusePeak], humps: list[BroadPeak],
    comps: PatternComponents, instrument: Instrument, cell: CellModel, k: float,
) -> dict[str, Any]:
    wf = weight_fractions({p.name: p.scale for p in phases}, {p.name: p.phase for p in phases})
    ph_truth: dict[str, Any] = {}
    for pt in state.phases:
        d = pt.to_dict()
        d.pop("name")
        d.update(weight_fraction=0.0, scale=0.0)
        ph_truth[pt.name] = d
    for p in phases:
        entry = ph_truth.setdefault(p.name, {"present": True})
        entry.update(
            a_A=float(p.phase.a), volume_A3=float(p.phase.volume_A3), mustrain=float(p.mustrain),
            size_um=(None if not np.isfinite(p.size_um) else float(p.size_um)), scale=float(p.scale),
            weight_fraction=float(wf[p.name]), space_group=p.phase.space_group,
        )
        if p.phase.lattice_system != "cubic":
            entry["c_A"] = float(p.phase.c)
        if "Li" in {s.label for s in p.phase.sites} and p.phase.space_group.startswith("R"):
            # occupancy actually used by the template (capped at 1 - Ni/Li mixing)
            entry["li_occupancy"] = float(p.phase.site("Li").occupancy["Li"])
    by_name = {p.name: p for p in phases}
    from insitu_xrd.core.pattern import diffuse_center_deg

    return {
        "x_li": state.x_li,
        "ocv_V": state.ocv_V,
        "c_mean_A": state.c_mean_A,
        "a_mean_A": state.a_mean_A,
        "phases": ph_truth,
        "diffuse": [
            {"label": d.label, "phase": d.phase_name, "reflections": list(d.reflections), "area": d.area,
             "fwhm_deg": d.fwhm_deg, "eta": d.eta, "offset_deg": d.offset_deg,
             "center_deg": diffuse_center_deg(d, by_name[d.phase_name], instrument)}
            for d in diffuse
        ],
        "background": {"chebyshev_coeffs": list(cell.background_coeffs), "chebyshev_range_deg": list(cell.background_range_deg),
                       "humps": [{"center_deg": h.center_deg, "fwhm_deg": h.fwhm_deg, "area": h.area, "eta": h.eta} for h in humps]},
        "intensity_k": k,
    }


def simulate_pattern_1d(
    x_li: float,
    two_theta_deg: np.ndarray | None = None,
    *,
    scenario: ChargeScenario | None = None,
    wavelength_A: float = 0.1173,
    instrument: Instrument | None = None,
    cell: CellModel | None = None,
    k: float | None = None,
    diffuse_areas: list[float] | None = None,
    seed: int | np.random.Generator | None = 0,
    parts_reference_area: float | None = None,
) -> Simulated1D:
    """Simulate the 1D pattern (counts vs 2theta in deg) of the cell at Li content x_li.

    Parameters
    ----------
    x_li: Li content (1 = pristine).
    two_theta_deg: sorted grid (deg); default 0.5-12 deg in 0.004 deg steps.
    scenario: lattice curves (default bare `ChargeScenario()`).
    wavelength_A: used when `instrument` is None (then `TRUE_INSTRUMENT` widths, zero 0).
    instrument: the instrument (a laboratory Ka doublet: its ``kalpha2_wavelength_A``/``kalpha2_ratio``).
    cell: cell lines / diffuse / intensity levels (default `CellModel()`).
    k: intensity scale (counts); default from `cell.peak_counts` (`intensity_scale_for_peak_counts`).
    diffuse_areas: areas of the two diffuse components; default from `diffuse_reference_areas`.
    seed: Poisson seed or Generator; None gives observed = expected (no noise).
    parts_reference_area: H2 003 area at x = 1, unit of the cell parts' line areas (when
        `cell.binder_carbon` or `cell.graphite`); default from `cell_parts_reference_area`.

    Returns
    -------
    Simulated1D with observed (Poisson counts), expected, components and `truth` (JSON-ready:
    x_li, per-phase a_A, c_A, volume_A3, mustrain, size_um, scale, weight_fraction, diffuse
    areas/fwhm/centres, background, instrument).
    """
    scenario = scenario or ChargeScenario()
    cell = cell or CellModel()
    if instrument is None:
        instrument = Instrument(wavelength_A=wavelength_A, **TRUE_INSTRUMENT)
    x = np.arange(0.5, 12.0, 0.004) if two_theta_deg is None else np.asarray(two_theta_deg, dtype=float)
    if k is None:
        k = intensity_scale_for_peak_counts(scenario, instrument, cell)
    state = scenario.state(x_li)
    phases, diffuse, humps = build_model(state, scenario, instrument, cell, k, diffuse_areas, float(x.max()))
    comps = calc_pattern(x, phases, instrument, cell.background_coeffs, cell.background_range_deg, humps, diffuse)
    distribution = _size_distribution(scenario)
    if distribution is not None:  # cathode lines as the sum over the crystallite-size distribution
        for st in phases:
            if st.name in ("H2", "H3"):
                y = size_distributed_pattern(x, st, instrument, distribution)
                comps.total += y - comps.phases[st.name]
                comps.phases[st.name] = y
    parts: dict[str, np.ndarray] = {}
    parts_truth: dict[str, Any] = {}
    if cell.cell_parts():
        ref = parts_reference_area if parts_reference_area is not None else cell_parts_reference_area(scenario, instrument, cell, k)
        for part, fraction in cell.cell_parts():
            parts[part.name] = part_pattern(x, part, instrument, fraction * ref)
            comps.total += parts[part.name]
            lines = part_lines(part, instrument, fraction * ref)
            parts_truth[part.name] = {"strongest_area_fraction_of_H2_003_at_x1": fraction, "lines": [
                {key: (str(v[i]) if key == "label" else float(v[i])) for key, v in lines.items()} for i in range(len(lines["d_A"]))]}
    expected = np.clip(comps.total, 0.0, None)
    if seed is None:
        observed = expected.copy()
    else:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        observed = rng.poisson(expected).astype(float)
    truth = _truth(state, phases, diffuse, humps, comps, instrument, cell, k)
    if distribution is not None:
        for name in ("H2", "H3"):
            if truth["phases"].get(name, {}).get("present"):
                truth["phases"][name]["size_distribution"] = distribution.to_dict()
    if parts_truth:
        truth["cell_parts"] = parts_truth
    truth["instrument"] = {"wavelength_A": instrument.wavelength_A, "U": instrument.U, "V": instrument.V, "W": instrument.W,
                           "X": instrument.X, "Y": instrument.Y, "zero_deg": instrument.zero_deg}
    if instrument.kalpha2 is not None:  # a laboratory Ka doublet (calc_pattern puts both lines in)
        truth["instrument"].update(kalpha2_wavelength_A=instrument.kalpha2[0], kalpha2_ratio=instrument.kalpha2[1])
    return Simulated1D(x, observed, expected, comps, truth, parts)


def _size_distribution(scenario: ChargeScenario) -> SizeDistribution | None:
    p = scenario.p
    return SizeDistribution(p.size_um, p.size_sigma) if p.size_sigma > 0 else None
