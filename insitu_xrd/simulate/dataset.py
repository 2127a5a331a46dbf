"""A complete synthetic operando dataset with known truth (`insitu-xrd simulate`).

Layout of OUT_DIR (see docs/simulator.md):

    frames/frame_0000.tif ...   int32 TIFF, header keys time_s, acquisition_time, exposure_s
    frames/times.csv            file,time_s
    calib/ceo2.tif              in-situ CeO2, same geometry and wavelength as the frames
    calib/ceo2_true.poni        true geometry of the frames / CeO2 image
    calib/ni.tif                ex-situ Ni at 0.1665 A (other distance and centre)
    calib/ni_true.poni          its true geometry
    cycler.csv                  time_s, voltage_V, current_mA, capacity_mAh
    truth.json                  every true value per frame (schema in docs/simulator.md)
    truth_patterns.npz          the noise-free 1D input pattern of every frame (two_theta_deg, expected)
    recipe.yaml                 ready-to-run recipe (rough user start values, paths relative)
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from insitu_xrd.core.pattern import Instrument, peak_table
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.poni import write_poni
from insitu_xrd.provenance import software_versions
from insitu_xrd.simulate.beam_drift import BeamDrift
from insitu_xrd.simulate.cycler import CyclerSpec, simulate_cycler
from insitu_xrd.simulate.detector_defects import DetectorDefects, spotty_ring_map
from insitu_xrd.simulate.frames import FrameRenderer, GeometrySpec, make_integrator, write_frame_tiff
from insitu_xrd.simulate.pattern1d import (
    TRUE_INSTRUMENT,
    CellModel,
    build_model,
    cell_parts_reference_area,
    diffuse_reference_areas,
    intensity_scale_for_peak_counts,
    simulate_pattern_1d,
)
from insitu_xrd.simulate.scenario import ChargeScenario

__all__ = ["DatasetSpec", "FRAME_GEOMETRY", "NI_GEOMETRY", "NI_WAVELENGTH_A", "REAL_CELL", "simulate_dataset"]

#: True frame / in-situ CeO2 geometry (unbinned Perkin pixels): beam ~4 px off centre, 0.3 deg
#: tilt; 2theta reaches ~11.5 deg at the detector edges at 0.1173 A.
FRAME_GEOMETRY = GeometrySpec(998.6, 1027.4, 1019.2, 0.30, 35.0)
#: Ex-situ Ni calibration: other distance and centre, same detector.
NI_GEOMETRY = GeometrySpec(901.3, 1014.6, 1036.9, 0.22, 48.0)
NI_WAVELENGTH_A = 0.1665
START_UTC = _dt.datetime(2025, 3, 14, 9, 0, 0, tzinfo=_dt.timezone.utc)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that defines a dataset (defaults: the documented bare scenario)."""

    frames: int = 40
    seed: int = 0
    coated: bool = False
    wavelength_A: float = 0.1173
    binning: int = 1
    cell_lines: bool = True
    diffuse: bool = True
    exposure_s: float = 10.0
    first_frame_s: float = 60.0
    zero_deg: float = 0.0
    polarization_factor: float = 0.99
    oversampling: int = 2
    grid_step_deg: float = 0.002
    geometry: GeometrySpec = FRAME_GEOMETRY
    cycler: CyclerSpec = CyclerSpec()
    workers: int | None = None
    mustrain_axial_factor: float = 1.0  # 00l / hk0 microstrain of the layered phases (1: isotropic)
    texture_ratio: float = 1.0  # March-Dollase ratio of the layered phases about [001] (1: random powder)
    absorption_mut: float = 0.0  # mu t of the cell as a flat plate normal to the beam (0: no absorption)
    # --- a real operando cell (docs/simulator.md "A real operando cell"); all off by default
    binder_carbon: bool = False  # PTFE binder and carbon-black lines (simulate.cell_parts)
    graphite: bool = False  # graphite lines (sharp 002 at 3.354 A)
    size_sigma: float = 0.0  # log-normal crystallite-size distribution of H2/H3 (sigma of ln L; 0: one size)
    size_median_um: float | None = None  # its volume-weighted median (None: the scenario's 0.8 um)
    flux_drift_pct: float = 0.0  # flux loss per fill of the ring (%), restored at each refill
    zero_drift_mdeg: float = 0.0  # scale of the 2theta zero drift (mdeg)
    spotty_li: bool = False  # Li-metal rings as a few spots (large-grained foil)
    detector_defects: bool = False  # dead rows/columns (0) and hot pixels (saturated)
    plain_recipe: bool = False  # recipe.yaml as a user writes it: H2, optional H3, Li; nothing about the cell


#: `insitu-xrd simulate --real-cell`: every real-cell effect at a realistic magnitude (docs/simulator.md)
REAL_CELL: dict[str, Any] = dict(
    binder_carbon=True, size_sigma=0.6, size_median_um=0.15, flux_drift_pct=3.0, zero_drift_mdeg=2.0,
    spotty_li=True, detector_defects=True, texture_ratio=0.85, mustrain_axial_factor=1.5, plain_recipe=True,
)


# Worker state (set in the parent before the pool forks, inherited copy-on-write).
_STATE: dict[str, Any] = {}


def _render_one(i: int) -> tuple[int, dict[str, Any], np.ndarray]:
    st = _STATE
    spec: DatasetSpec = st["spec"]
    t = float(st["times"][i])
    x_li = float(spec.cycler.x_li(t))
    drift: BeamDrift = st["drift"]
    instrument = st["instrument"]
    if drift.zero_drift_mdeg:
        instrument = replace(instrument, zero_deg=instrument.zero_deg + drift.zero_deg(t, st["end_time_s"]))
    sim = simulate_pattern_1d(
        x_li, st["grid"], scenario=st["scenario"], instrument=instrument, cell=st["cell"], k=st["k"],
        diffuse_areas=st["diffuse_areas"], seed=None, parts_reference_area=st["parts_area"],
    )
    rng = np.random.default_rng(st["seeds"][i])
    flux = drift.flux_factor(t)
    if flux != 1.0:
        sim.expected = sim.expected * flux
    if st["li_spots"] is None:
        img = st["renderer"].render(sim.two_theta_deg, sim.expected, rng)
    else:  # the Li rings as spots: the Li part of the frame times the spot map, the rest as a powder
        li = np.clip(sim.components.phases["Li"], 0.0, None) * flux
        lam = st["renderer"].expected(sim.two_theta_deg, sim.expected - li) + st["renderer"].expected(sim.two_theta_deg, li) * st["li_spots"]
        img = rng.poisson(np.clip(lam, 0.0, None)).astype(np.int32)
    if st["defects"] is not None:
        img = st["defects"].apply(img)
    name = f"frame_{i:04d}.tif"
    acq = (START_UTC + _dt.timedelta(seconds=t)).isoformat().replace("+00:00", "Z")
    write_frame_tiff(Path(st["frames_dir"]) / name, img, {"time_s": f"{t:.3f}", "acquisition_time": acq, "exposure_s": f"{spec.exposure_s:g}"})
    truth = sim.truth
    frame = {
        "index": i, "file": f"frames/{name}", "time_s": t, "acquisition_time": acq, "exposure_s": spec.exposure_s,
        "x_li": x_li, "voltage_V": float(spec.cycler.voltage_V(t)), "capacity_mAh": float(spec.cycler.capacity_mAh(t)),
        "current_mA": spec.cycler.current_mA, "ocv_V": truth.pop("ocv_V"),
        "c_mean_A": truth.pop("c_mean_A"), "a_mean_A": truth.pop("a_mean_A"),
        "phases": truth["phases"], "diffuse": truth["diffuse"], "background": truth["background"],
        "max_counts": int(img.max()),
    }
    if drift.active:
        frame.update(flux_factor=flux, zero_deg=instrument.zero_deg)
    if "cell_parts" in truth:
        frame["cell_parts"] = truth["cell_parts"]
    return i, frame, sim.expected.astype(np.float32)


def _frame_times(spec: DatasetSpec) -> np.ndarray:
    t_end = spec.cycler.end_time_s()
    t_last = t_end - spec.exposure_s - 30.0
    if spec.frames < 1:
        raise InsituXRDError(f"--frames must be >= 1, got {spec.frames}")
    if spec.frames == 1:
        return np.array([spec.first_frame_s])
    return np.linspace(spec.first_frame_s, t_last, spec.frames)


def _recipe(spec: DatasetSpec) -> dict[str, Any]:
    phases: list[dict[str, Any]] = [
        {"name": "H2", "template": "nmc811", "a": 2.87, "c": 14.21, "refine": ["a", "c", "mustrain", "scale"]},
        {"name": "H3", "template": "nmc811", "a": 2.82, "c": 14.00, "refine": ["a", "c", "mustrain", "scale"], "optional": True},
    ]
    if spec.plain_recipe:
        # the five-minute recipe: nothing about texture, anisotropic broadening, binder, carbon, Al
        li = [{"name": "Li", "template": "li_metal", "refine": ["a", "scale"]}] if spec.cell_lines else []
        return _recipe_document(spec, phases + li)
    if spec.mustrain_axial_factor != 1.0:
        # 00l broadened differently from hk0: the uniaxial microstrain model about c
        for ph in phases:
            ph.update(mustrain_model="uniaxial", mustrain_axis=[0, 0, 1], refine=ph["refine"] + ["mustrain_axial"])
    if spec.texture_ratio != 1.0:
        # the true ratio, held (Le Bail intensities absorb texture; it enters the phase fractions):
        # a Rietveld recipe refines it with refine: [..., md_ratio]
        for ph in phases:
            ph["texture"] = {"march_dollase": {"axis": [0, 0, 1], "ratio": spec.texture_ratio}}
    if spec.cell_lines:
        phases += [{"name": "Li", "template": "li_metal", "refine": ["a", "scale"]},
                   {"name": "Al", "template": "al", "refine": ["a", "scale"]}]
    return _recipe_document(spec, phases)


def _recipe_document(spec: DatasetSpec, phases: list[dict[str, Any]]) -> dict[str, Any]:
    refinement: dict[str, Any] = {
        "mode": "lebail",
        "range_2theta_deg": [1.2, 11.8],
        "background": {"chebyshev": 8},
        "profile": {"U": 1.2, "V": -0.4, "W": 0.9, "X": 0.15, "Y": 0.3, "refine": ["W", "X", "Y"]},
        "phases": phases,
    }
    if spec.absorption_mut:
        refinement["profile"].update(geometry="transmission", absorption_mut=spec.absorption_mut)
    if spec.diffuse:
        refinement["diffuse"] = [{"phase": "H2", "reflections": ["104"]}, {"phase": "H2", "reflections": ["108", "110"]}]
    cyc = spec.cycler
    return {
        "name": "nmc811-charge-coated" if spec.coated else "nmc811-charge",
        "wavelength_A": spec.wavelength_A,
        "calibration": {"image": "calib/ceo2.tif", "calibrant": "CeO2", "detector": "Perkin", "distance_mm": 1000,
                        "poni": "calib/geometry.poni"},
        "frames": {"files": "frames/*.tif", "time_source": "header"},
        "integration": {"npt": 2750, "unit": "2th_deg", "range": [1.0, 12.0], "polarization": spec.polarization_factor},
        "refinement": refinement,
        "sequential": {"direction": "forward"},
        "echem": {"file": "cycler.csv",
                  "columns": {"time_s": "time_s", "voltage_V": "voltage_V", "current_mA": "current_mA", "capacity_mAh": "capacity_mAh"},
                  "active_mass_mg": cyc.active_mass_mg, "theoretical_capacity_mAh_g": cyc.theoretical_capacity_mAh_g,
                  "x_start": cyc.x_start},
        "strain": {"reference": "first"},
        "outputs": {"dir": "results"},
    }


def _geometry_dict(ai: Any, geom: GeometrySpec, wavelength_A: float, binning: int) -> dict[str, Any]:
    return {
        "poni": {"dist_m": ai.dist, "poni1_m": ai.poni1, "poni2_m": ai.poni2, "rot1_rad": ai.rot1, "rot2_rad": ai.rot2, "rot3_rad": ai.rot3},
        "fit2d_unbinned": geom.to_dict(),
        "detector": "Perkin", "binning": binning, "shape": list(ai.detector.shape),
        "pixel_size_um": ai.detector.pixel1 * 1e6, "wavelength_A": wavelength_A,
    }


def simulate_dataset(
    out_dir: str | Path,
    frames: int = 40,
    seed: int = 0,
    coated: bool = False,
    wavelength_A: float = 0.1173,
    binning: int = 1,
    cell_lines: bool = True,
    diffuse: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **spec_overrides: Any,
) -> Path:
    """Write a synthetic operando dataset to `out_dir` and return the path of its truth.json.

    frames: number of frames over the charge (evenly spaced in time from 60 s to the cut-off);
    seed: master seed (Poisson noise of every image, voltage noise); coated: the coated scenario;
    wavelength_A: frames and in-situ CeO2 (Ni is always at 0.1665 A); binning: detector binning
    (2 -> 1024 x 1024, 400 um); cell_lines: Li and Al lines; diffuse: broad components under H2
    104 and 108/110; workers: processes (default: CPU count); progress(done, total) callback.
    Other `DatasetSpec` fields may be given as keyword overrides (`REAL_CELL` holds those of a
    real operando cell: binder/carbon lines, size tails, flux and zero drift, spotty Li rings,
    detector defects, texture, 00l microstrain, the plain recipe).
    """
    spec = DatasetSpec(frames=frames, seed=seed, coated=coated, wavelength_A=wavelength_A, binning=binning,
                       cell_lines=cell_lines, diffuse=diffuse, workers=workers, **spec_overrides)
    if not 0.05 <= wavelength_A <= 2.5:
        raise InsituXRDError(f"--wavelength-a {wavelength_A} A is outside 0.05-2.5 A")
    if binning not in (1, 2, 4, 8):
        raise InsituXRDError(f"--binning must be 1, 2, 4 or 8, got {binning}")
    out = Path(out_dir)
    frames_dir = out / "frames"
    calib_dir = out / "calib"
    try:
        frames_dir.mkdir(parents=True, exist_ok=True)
        calib_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InsituXRDError(f"cannot create output folder {out}: {exc}") from None
    for old in frames_dir.glob("frame_*.tif"):
        old.unlink()  # a rerun with fewer frames must not leave stale frames behind

    ss = np.random.SeedSequence(spec.seed)
    seq_frames, seq_cycler, seq_ceo2, seq_ni = ss.spawn(4)
    scenario = ChargeScenario(coated=spec.coated)
    if spec.mustrain_axial_factor != 1.0:
        scenario = ChargeScenario(coated=spec.coated, params=replace(
            scenario.p, mustrain_axial_factor=float(spec.mustrain_axial_factor)))
    if spec.texture_ratio != 1.0:
        scenario = ChargeScenario(coated=spec.coated, params=replace(scenario.p, texture_ratio=float(spec.texture_ratio)))
    if spec.size_sigma > 0:
        size = scenario.p.size_um if spec.size_median_um is None else float(spec.size_median_um)
        scenario = ChargeScenario(coated=spec.coated, params=replace(scenario.p, size_sigma=float(spec.size_sigma), size_um=size))
    instrument = Instrument(wavelength_A=spec.wavelength_A, zero_deg=spec.zero_deg, distance_mm=spec.geometry.distance_mm, **TRUE_INSTRUMENT)
    if spec.absorption_mut:
        instrument = replace(instrument, geometry="transmission", absorption_mut=float(spec.absorption_mut))
    cell = CellModel(cell_lines=spec.cell_lines, diffuse=spec.diffuse, binder_carbon=spec.binder_carbon, graphite=spec.graphite)
    k = intensity_scale_for_peak_counts(scenario, instrument, cell)
    diffuse_areas = diffuse_reference_areas(scenario, instrument, cell, k)
    parts_area = cell_parts_reference_area(scenario, instrument, cell, k) if cell.cell_parts() else None
    drift = BeamDrift(flux_drift_pct=float(spec.flux_drift_pct), zero_drift_mdeg=float(spec.zero_drift_mdeg))

    # cycler log
    log = simulate_cycler(spec.cycler, np.random.default_rng(seq_cycler))
    log.write_csv(out / "cycler.csv")
    times = _frame_times(spec)

    # geometry and renderer
    ai = make_integrator(spec.geometry, spec.wavelength_A, spec.binning)
    renderer = FrameRenderer(ai, spec.polarization_factor, spec.oversampling)
    grid = np.arange(0.0, renderer.tth_max_deg + 0.3, spec.grid_step_deg)
    write_poni(ai, calib_dir / "ceo2_true.poni")
    # the fixed imperfections of the cell and the detector: their own seeds (the frames' are untouched)
    seq_spots, seq_defects = np.random.SeedSequence([spec.seed, 0x5E11]).spawn(2)
    li_spots, spots = _li_spot_map(spec, ai, renderer, scenario, instrument, cell, np.random.default_rng(seq_spots))
    defects = (DetectorDefects.draw(renderer.shape, np.random.default_rng(seq_defects))  # type: ignore[arg-type]
               if spec.detector_defects else None)

    _STATE.clear()
    _STATE.update(spec=spec, times=times, scenario=scenario, instrument=instrument, cell=cell, k=k,
                  diffuse_areas=diffuse_areas, grid=grid, renderer=renderer, frames_dir=str(frames_dir),
                  seeds=[s.generate_state(4) for s in seq_frames.spawn(spec.frames)],
                  parts_area=parts_area, drift=drift, end_time_s=float(spec.cycler.end_time_s()),
                  li_spots=li_spots, defects=defects)
    n_workers = spec.workers or os.cpu_count() or 1
    n_workers = max(1, min(n_workers, spec.frames))
    results: dict[int, tuple[dict[str, Any], np.ndarray]] = {}
    try:
        if n_workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
            for i in range(spec.frames):
                _, fr, y = _render_one(i)
                results[i] = (fr, y)
                if progress:
                    progress(len(results), spec.frames)
        else:
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_render_one, i) for i in range(spec.frames)]
                for fut in as_completed(futures):
                    i, fr, y = fut.result()
                    results[i] = (fr, y)
                    if progress:
                        progress(len(results), spec.frames)
    finally:
        _STATE.clear()

    with open(frames_dir / "times.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "time_s"])
        for i in range(spec.frames):
            w.writerow([f"frame_{i:04d}.tif", f"{times[i]:.3f}"])

    # calibrants (lazy import: the calibration helper's module)
    from insitu_xrd.simulate.calibrant import Caglioti, render_calibrant_image

    prof = Caglioti(**TRUE_INSTRUMENT)
    ceo2 = render_calibrant_image("CeO2", ai, spec.wavelength_A, detector="Perkin", binning=spec.binning, profile=prof,
                                  polarization_factor=spec.polarization_factor, seed=int(seq_ceo2.generate_state(1)[0]))
    write_frame_tiff(calib_dir / "ceo2.tif", ceo2, {"calibrant": "CeO2", "wavelength_A": spec.wavelength_A, "exposure_s": 5})
    ai_ni = make_integrator(NI_GEOMETRY, NI_WAVELENGTH_A, spec.binning)
    ni = render_calibrant_image("Ni", ai_ni, NI_WAVELENGTH_A, detector="Perkin", binning=spec.binning, profile=prof,
                                polarization_factor=spec.polarization_factor, seed=int(seq_ni.generate_state(1)[0]))
    write_frame_tiff(calib_dir / "ni.tif", ni, {"calibrant": "Ni", "wavelength_A": NI_WAVELENGTH_A, "exposure_s": 5})
    write_poni(ai_ni, calib_dir / "ni_true.poni")

    frames_truth = [results[i][0] for i in range(spec.frames)]
    np.savez_compressed(out / "truth_patterns.npz", two_theta_deg=grid, expected=np.stack([results[i][1] for i in range(spec.frames)]),
                        time_s=times)
    truth = {
        "schema_version": 1,
        "scenario": scenario.name,
        "scenario_params": scenario.to_dict(),
        "seed": spec.seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "software_versions": software_versions(),
        "experiment_start_utc": START_UTC.isoformat().replace("+00:00", "Z"),
        "wavelength_A": spec.wavelength_A,
        "polarization_factor": spec.polarization_factor,
        "geometry": _geometry_dict(ai, spec.geometry, spec.wavelength_A, spec.binning) | {"poni_file": "calib/ceo2_true.poni"},
        "calibrants": {
            "ceo2": {"image": "calib/ceo2.tif", "poni_file": "calib/ceo2_true.poni", "wavelength_A": spec.wavelength_A, "a_A": 5.411651},
            "ni": {"image": "calib/ni.tif", "poni_file": "calib/ni_true.poni", "wavelength_A": NI_WAVELENGTH_A, "a_A": 3.5238,
                   "geometry": _geometry_dict(ai_ni, NI_GEOMETRY, NI_WAVELENGTH_A, spec.binning)},
        },
        "absorption_mut": spec.absorption_mut, "texture_ratio": spec.texture_ratio,
        "instrument": {"U": TRUE_INSTRUMENT["U"], "V": TRUE_INSTRUMENT["V"], "W": TRUE_INSTRUMENT["W"], "X": TRUE_INSTRUMENT["X"],
                       "Y": TRUE_INSTRUMENT["Y"], "zero_deg": spec.zero_deg, "units": "GSAS-II CW: U,V,W centideg^2; X,Y centideg",
                       "note": "profile of the 1D input; frames add pixel-area broadening (oversampling "
                               f"{spec.oversampling}x{spec.oversampling}) and integration adds bin/pixel splitting, so the "
                               "effective profile of integrated patterns is slightly wider"},
        "rendering": {"oversampling": spec.oversampling, "grid_step_deg": spec.grid_step_deg, "counts": "Poisson",
                      "intensity_k": k, "peak_counts_H2_003_at_x1": cell.peak_counts},
        "cell": {"cell_lines": spec.cell_lines, "diffuse": spec.diffuse, "weight_fractions": cell.weight_fractions()},
        "real_cell": {
            "binder_carbon": spec.binder_carbon, "graphite": spec.graphite,
            "cell_parts": {part.name: {"strongest_area_fraction_of_H2_003_at_x1": frac,
                                       "lines": [{"label": ln.label, "d_A": ln.d_A, "rel_intensity_cuka": ln.rel_intensity_cuka,
                                                  "size_nm": ln.size_nm} for ln in part.lines]}
                           for part, frac in cell.cell_parts()},
            "size_distribution": ({"sigma_ln": spec.size_sigma, "volume_weighted_median_um": scenario.p.size_um}
                                  if spec.size_sigma > 0 else None),
            "beam_drift": drift.to_dict(),
            "mustrain_axial_factor": spec.mustrain_axial_factor, "texture_ratio": spec.texture_ratio,
            "spotty_li": ({"spots": spots} if spec.spotty_li else None),
            "detector_defects": defects.to_dict() if defects is not None else None,
            "defects_in_calibrant_images": False,
            "plain_recipe": spec.plain_recipe,
        },
        "echem": spec.cycler.to_dict() | {"file": "cycler.csv"},
        "frames": frames_truth,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1, default=_json_default), encoding="utf-8")
    (out / "recipe.yaml").write_text(
        "# Ready-to-run recipe for this simulated dataset (start values are rough, as a user's).\n"
        + yaml.safe_dump(_recipe(spec), sort_keys=False, default_flow_style=None, width=120),
        encoding="utf-8",
    )
    return out / "truth.json"


def _li_spot_map(spec: DatasetSpec, ai: Any, renderer: FrameRenderer, scenario: ChargeScenario, instrument: Instrument,
                 cell: CellModel, rng: np.random.Generator) -> tuple[np.ndarray | None, list[dict]]:
    """Per-pixel factor of the Li-metal rings (None without spotty Li) and its spots."""
    if not (spec.spotty_li and spec.cell_lines):
        return None, []
    phases, _, _ = build_model(scenario.state(1.0), scenario, instrument, cell, 1.0)
    li = next(p for p in phases if p.name == "Li")
    rings = np.unique(np.round(peak_table(li, instrument, (0.0, renderer.tth_max_deg)).two_theta_deg, 6))
    shape = renderer.shape
    tth = np.degrees(ai.center_array(shape, unit="2th_rad", scale=False))
    chi = np.degrees(ai.center_array(shape, unit="chi_rad", scale=False))
    return spotty_ring_map(tth, chi, rings, rng)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")
