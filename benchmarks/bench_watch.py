"""Benchmark: per-frame bookkeeping cost of ``insitu-xrd watch`` against the frames already stored.

Usage::

    .venv/bin/python benchmarks/bench_watch.py [--stored 0 500 2000 5000] [--repeat-new 5]
        [--repeat-old 3] [--chain-frames 8] [--shape 64] [--quick] [--only integrate sequential chain]

What a watch session does for each new frame besides fitting it, with N frames already stored,
the current way (new) and the way before (old), both measured in this run on this machine:

1. **integration of one new frame.** New: ``series.add([ref])`` on the one
   :class:`~insitu_xrd.reduction.series.SeriesIntegration` the session keeps open (one frame
   integrated, one append to the Zarr working store ``patterns.zarr``) + ``series.store.read_rows
   ([row])`` (the pattern handed to the refinement). Old: a fresh ``integrate_series([ref], poni,
   out, settings, export=True)`` per poll (set-up again: PONI, the first frames read for the
   auto-mask, the pyFAI engine, the store opened; then the NetCDF export of all N + 1 frames) +
   ``read_patterns(out)`` (the whole ``patterns.nc`` read back). Small synthetic frames (64x64
   int32 TIFF, hard links to 8 noisy images), 300 bins, ``IntegrationSettings(npt=300,
   auto_mask=True, workers=1)``, the default thread runner (executor=None), frame times from a
   period. The store is filled with one ``series.add(refs)`` (same layout as frames added one by
   one: 100-frame chunks). One store grows through the levels: each level's measurements add
   their frames to it (the "stored" column is the count before them). With 3000 bins (a real
   detector) the old way's export and read-back of every pattern are 10x larger; the new way
   handles one pattern.
2. **sequential results of one new frame.** New: ``SequentialStore.put(key, rec, one_frame)`` +
   ``flush()`` (one row appended to ``sequential.zarr``). Old: ``records_to_dataset(records of
   N + 1 frames, patterns, spec)`` + ``frame_key`` + ``write_dataset_atomic(..., "sequential.nc")``
   (the whole file rewritten after every frame). The record is a real fit of the demo recipe
   (:class:`~insitu_xrd.pipeline.sequential.chain.SequentialRefiner`, 4 phases, Le Bail, on a simulated
   pattern of 3000 points from ``simulate_pattern_1d``; the recipe's U..Y are used instead of an
   instrument file fitted on a calibrant). ``patterns`` holds the coordinates
   ``records_to_dataset`` reads (frame, two_theta, time_s, frame_name). Also timed once per level:
   ``SequentialStore.export`` (what the watch now does only at a refresh, spaced out to at least
   20x its own duration, and at exit). The sequential store is filled row by row with the values
   ``put`` writes (``FrameStore.append``, one flush: the same layout, 32-row chunks).
3. **chain state** (``sequential.nc.state``, written after every fitted frame): the size of
   ``SequentialRefiner.state_bytes()`` and the time of ``write_chain_state`` after each of the
   first ``--chain-frames`` fits. The state holds the last fits and a Rwp history capped at
   ``RWP_WINDOW`` frames, so its size does not depend on N.

Times are medians of ``--repeat-new`` / ``--repeat-old`` frames per level (a shared machine);
the first level's include one-time imports. Nothing here asserts on a time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WAVELENGTH_A = 0.1173


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _ratio(old: float, new: float) -> str:
    return f"{old / new:.1f}x" if new > 0 and np.isfinite(old) else "-"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


# ------------------------------------------------------------------------------- 1: integration
def _frames(root: Path, n: int, side: int) -> tuple[list[Any], Path]:
    """n frame files (hard links to 8 noisy images of one ring) and a PONI."""
    import fabio
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from insitu_xrd.io.frames import FrameRef
    from insitu_xrd.io.poni import write_poni

    shape = (side, side)
    det = Detector(pixel1=8e-4, pixel2=8e-4, max_shape=shape)
    ai = AzimuthalIntegrator(dist=0.5, poni1=0.2 * side * 8e-4, poni2=0.25 * side * 8e-4, rot1=0.01, detector=det,
                             wavelength=WAVELENGTH_A * 1e-10)
    tth = np.linspace(0.0, 16.0, 2000)
    curve = 300.0 + 3000.0 * np.exp(-0.5 * ((tth - 5.0) / 0.15) ** 2)
    expected = ai.calcfrom1d(tth, curve, shape=shape, dim1_unit="2th_deg", correctSolidAngle=True,
                             polarization_factor=0.99)
    poni = write_poni(ai, root / "geo.poni")
    rng = np.random.default_rng(3)
    base = []
    for i in range(8):
        p = root / f"base_{i}.tif"
        fabio.tifimage.TifImage(data=rng.poisson(expected).astype(np.int32)).write(str(p))
        base.append(p)
    fdir = root / "frames"
    fdir.mkdir()
    refs = []
    for i in range(n):
        p = fdir / f"frame_{i:06d}.tif"
        try:
            os.link(base[i % 8], p)
        except OSError:  # no hard links on this file system
            shutil.copyfile(base[i % 8], p)
        refs.append(FrameRef(p.resolve()))
    return refs, poni


def bench_integration(levels: list[int], k_new: int, k_old: int, side: int, npt: int = 300) -> None:
    from insitu_xrd.io.patterns import read_patterns
    from insitu_xrd.reduction.integrate import IntegrationSettings
    from insitu_xrd.reduction.series import SeriesIntegration, integrate_series

    settings = IntegrationSettings(npt=npt, auto_mask=True, workers=1)
    # as the watch opens it (stages.open_integration): resumed when the key is the same
    opts: dict[str, Any] = dict(time_source={"period_s": 1.0}, resume_key="bench", overwrite="if_different")
    table = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench_watch_int_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        refs, poni = _frames(root, max(levels) + len(levels) * (k_new + k_old) + 1, side)
        notes.append(f"{len(refs)} frame files written in {time.perf_counter() - t0:.1f} s")
        out = root / "out" / "patterns.nc"
        series = None
        stored = 0
        for n in levels:
            if n > stored:  # fill: one call, as the integration of a backlog
                if series is None:
                    series = SeriesIntegration(refs[stored:n], poni, out, settings, export=False, **opts)
                t0 = time.perf_counter()
                rep = series.add(refs[stored:n], positions=range(stored, n))
                notes.append(f"filled {stored} -> {n} frames in {time.perf_counter() - t0:.1f} s "
                             f"({rep.n_ok / max(rep.elapsed_s, 1e-9):.0f} frames/s)")
                stored = n
            if series is not None:
                series.close()
                series = None
            n_at = stored
            # old: a fresh one-shot integration per poll, then the whole patterns.nc read back
            old_int, old_read = [], []
            for _ in range(k_old):
                t0 = time.perf_counter()
                integrate_series([refs[stored]], poni, out, settings, export=True, **opts)
                t1 = time.perf_counter()
                ds = read_patterns(out)
                t2 = time.perf_counter()
                stored += 1
                if ds.sizes["frame"] != stored:
                    raise RuntimeError(f"patterns.nc has {ds.sizes['frame']} frames, expected {stored}")
                old_int.append(t1 - t0)
                old_read.append(t2 - t1)
            # new: the session's one open series (its set-up is paid once, when the watch starts)
            series = SeriesIntegration([refs[stored]], poni, out, settings, export=False, **opts)
            setup_s = series.setup_s
            new_add, new_read = [], []
            for _ in range(k_new):
                rows: list[int] = []
                t0 = time.perf_counter()
                series.add([refs[stored]], on_record=lambda i, _k, _r: rows.append(i), positions=[len(series.store)])
                t1 = time.perf_counter()
                win = series.store.read_rows(rows)
                t2 = time.perf_counter()
                stored += 1
                if win.sizes["frame"] != 1 or str(win["status"].values[0]) != "ok":
                    raise RuntimeError(f"read_rows({rows}) gave {win.sizes['frame']} frames")
                new_add.append(t1 - t0)
                new_read.append(t2 - t1)
            table.append((n_at, _median(new_add), _median(new_read), _median(old_int), _median(old_read), setup_s))
        if series is not None:
            series.close()
    print(f"\n1. integration of one new frame ({side}x{side}, {npt} bins, 1 thread) vs frames already stored; "
          f"median of {k_new} (new) / {k_old} (old) frames, s")
    print(f"{'stored':>7} {'add':>7} {'read_rows':>9} {'new s':>7} | {'integrate_series':>16} {'read_patterns':>13} "
          f"{'old s':>7} | {'old/new':>7}")
    for n, a, r, oi, orr, _setup in table:
        print(f"{n:>7} {a:>7.3f} {r:>9.3f} {a + r:>7.3f} | {oi:>16.3f} {orr:>13.3f} {oi + orr:>7.3f} | "
              f"{_ratio(oi + orr, a + r):>7}")
    print("set-up of the open series (paid once per session; the old way paid it every poll): "
          + ", ".join(f"{s:.2f} s at {n}" for n, *_x, s in table))
    for line in notes:
        print("  " + line)


# ------------------------------------------------------------------------------------ 3: chain
def _demo_recipe() -> Any:
    import yaml

    from insitu_xrd.pipeline.recipe import recipe_from_dict

    path = HERE.parent / "recipes" / "demo.yaml"
    data = yaml.safe_load(path.read_text())
    # the demo fits the instrument profile on its calibrant image; here: the recipe's U..Y
    data["calibration"]["instrument_profile"] = "off"
    return recipe_from_dict(data, path.parent, str(path))


def run_chain(n_frames: int, npt: int = 3000) -> dict[str, Any]:
    """Fit n_frames simulated patterns of the demo's first charge with one SequentialRefiner."""
    from insitu_xrd.pipeline.sequential.chain import SequentialRefiner
    from insitu_xrd.pipeline.sequential.run import write_chain_state
    from insitu_xrd.pipeline.stages import make_factory
    from insitu_xrd.simulate.pattern1d import simulate_pattern_1d

    rec = _demo_recipe()
    spec = rec.refinement
    tth = np.linspace(1.0, 12.0, npt)
    refiner = SequentialRefiner(spec, WAVELENGTH_A, make_factory(rec, WAVELENGTH_A), rec.sequential)
    rows = []
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_watch_chain_") as tmp:
        state_path = Path(tmp) / "sequential.nc.state"
        for i in range(n_frames):
            y = simulate_pattern_1d(1.0 - 0.01 * i, tth, seed=i).observed
            t0 = time.perf_counter()
            r = refiner.step(i, tth, y, np.sqrt(np.maximum(y, 1.0)), "ok", time_s=60.0 * i, key=f"/data/frame_{i:06d}.tif")
            t1 = time.perf_counter()
            size = len(refiner.state_bytes())
            t2 = time.perf_counter()
            write_chain_state(state_path, "bench", r.key, refiner)
            t3 = time.perf_counter()
            rows.append((i, t1 - t0, r.status, r.rwp, size, t3 - t2))
            records.append(r)
    fitted = [r for r in records if r.good and r.calc is not None]
    return {"spec": spec, "tth": tth, "rows": rows, "record": fitted[-1] if fitted else None}


def print_chain(chain: dict[str, Any]) -> None:
    from insitu_xrd.pipeline.sequential.chain import RWP_WINDOW

    print(f"\n3. chain state after each fitted frame (demo recipe, {len(chain['tth'])} points)")
    print(f"{'frame':>5} {'fit s':>6} {'status':>8} {'Rwp %':>6} {'state bytes':>11} {'write s':>8}")
    for i, fit_s, status, rwp, size, write_s in chain["rows"]:
        print(f"{i:>5} {fit_s:>6.2f} {status[:8]:>8} {100 * rwp:>6.2f} {size:>11} {write_s:>8.4f}")
    sizes = [r[4] for r in chain["rows"]]
    print(f"state: {min(sizes)}..{max(sizes)} bytes (the last fits, the cached refinements, a Rwp history "
          f"capped at {RWP_WINDOW} frames): independent of the frames stored")


# ------------------------------------------------------------------------------- 2: sequential
def _synthetic_record(spec: Any, tth: np.ndarray) -> Any:
    """A record with every field filled, when the demo fit gave none (a fallback)."""
    from insitu_xrd.pipeline.sequential.records import PER_PHASE_VARS, FrameRecord

    rec = FrameRecord(index=0, status="ok", rwp=0.05, gof=1.2, zero_shift=0.001, zero_shift_esd=1e-4,
                      active=[p.name for p in spec.phases if not p.optional], key="/data/frame.tif")
    for p in spec.phases:
        d = {}
        for var in list(PER_PHASE_VARS) + ["phase_fraction"]:
            d[var], d[f"{var}_esd"] = 1.0, 0.01
        rec.phases[p.name] = d
        rec.values.update({f"{p.name}_{s}": 1.0 for s in PER_PHASE_VARS.values()})
    rec.correlations = {f"{p.name}_mustrain|W": 0.3 for p in spec.phases}
    rec.fit_two_theta = tth[10:-10]
    rec.calc = np.linspace(100.0, 200.0, rec.fit_two_theta.size)
    rec.background = np.full(rec.fit_two_theta.size, 100.0)
    return rec


def _patterns(rows: Any, tth: np.ndarray) -> Any:
    """A patterns Dataset's coordinates for the given rows (what records_to_dataset reads)."""
    import xarray as xr

    rows = np.asarray(list(rows), dtype=np.int64)
    return xr.Dataset(coords={"frame": ("frame", rows), "two_theta": ("two_theta", tth),
                              "time_s": ("frame", 60.0 * rows.astype(float)),
                              "frame_name": ("frame", np.array([f"frame_{i:06d}.tif" for i in rows], dtype=object))},
                      attrs={"wavelength_A": WAVELENGTH_A, "unit": "2th_deg"})


def _key(i: int) -> str:
    return f"/data/frame_{i:06d}.tif"


def bench_sequential(levels: list[int], k_new: int, k_old: int, chain: dict[str, Any]) -> None:
    from insitu_xrd.io.store import write_dataset_atomic
    from insitu_xrd.pipeline.sequential.records import records_to_dataset
    from insitu_xrd.pipeline.sequential.store import SequentialStore

    spec, tth = chain["spec"], chain["tth"]
    record = chain["record"]
    source = "a real fit of the demo recipe"
    if record is None:
        record, source = _synthetic_record(spec, tth), "a synthetic record (the demo fit failed)"
    attrs = {"cache_key": "bench", "direction": "forward", "mode": "watch", "recipe": "demo.yaml"}
    table = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench_watch_seq_") as tmp:
        root = Path(tmp)
        seq = SequentialStore(root / "new" / "sequential.nc", spec, tth, WAVELENGTH_A, cache_key="bench",
                              attrs={k: v for k, v in attrs.items() if k != "cache_key"})
        one = records_to_dataset([record], _patterns([0], tth), spec)
        row_values = {name: one[name].values[0] for name in seq.store.variables}
        stored = 0
        for n in levels:
            if n > stored:  # fill: the values put() writes, row by row, one flush
                t0 = time.perf_counter()
                for i in range(stored, n):
                    seq.store.append(_key(i), {**row_values, "time_s": 60.0 * i, "frame_name": f"frame_{i:06d}.tif"},
                                     checkpoint=False)
                seq.flush()
                notes.append(f"filled {stored} -> {n} rows in {time.perf_counter() - t0:.1f} s")
                stored = n
            n_at = stored
            new_s = []
            for _ in range(k_new):
                t0 = time.perf_counter()
                seq.put(_key(stored), record, _patterns([stored], tth))
                seq.flush()
                new_s.append(time.perf_counter() - t0)
                stored += 1
            t0 = time.perf_counter()
            exported = seq.export(seq.keys(), lambda rows: _patterns(rows, tth))
            export_s = time.perf_counter() - t0
            if exported.sizes["frame"] != stored:
                raise RuntimeError(f"export has {exported.sizes['frame']} rows, expected {stored}")
            # old: every record of the series assembled and sequential.nc rewritten, per frame
            old_s = []
            pat = _patterns(range(n_at + 1), tth)
            keys = np.array([_key(i) for i in range(n_at + 1)], dtype=object)
            recs = [record] * (n_at + 1)
            for _ in range(k_old):
                t0 = time.perf_counter()
                ds = records_to_dataset(recs, pat, spec, attrs)
                ds = ds.assign_coords(frame_key=("frame", keys))
                write_dataset_atomic(ds, root / "old" / "sequential.nc")
                old_s.append(time.perf_counter() - t0)
            del ds
            size_mb = (root / "old" / "sequential.nc").stat().st_size / 1e6
            table.append((n_at, _median(new_s), _median(old_s), export_s, size_mb))
        seq.close()
    print(f"\n2. sequential results of one new frame vs frames already refined ({len(spec.phases)} phases, "
          f"{len(tth)} points, record from {source}); median of {k_new} (new) / {k_old} (old) frames, s")
    print(f"{'stored':>7} {'put+flush':>9} | {'rewrite .nc':>11} {'.nc MB':>7} | {'old/new':>7} | {'export s':>8}")
    for n, new, old, export_s, size_mb in table:
        print(f"{n:>7} {new:>9.4f} | {old:>11.3f} {size_mb:>7.1f} | {_ratio(old, new):>7} | {export_s:>8.3f}")
    print("export: SequentialStore.export, now only at a refresh (>= 20x its duration apart) and at exit")
    for line in notes:
        print("  " + line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stored", type=int, nargs="+", default=[0, 500, 2000, 5000],
                    help="frames already stored at which to measure")
    ap.add_argument("--repeat-new", type=int, default=5, help="frames timed per level, new way")
    ap.add_argument("--repeat-old", type=int, default=3, help="frames timed per level, old way")
    ap.add_argument("--chain-frames", type=int, default=8, help="frames fitted for the record and the state size")
    ap.add_argument("--shape", type=int, default=64, help="frame side (pixels) for part 1")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--only", choices=["integrate", "sequential", "chain"], nargs="+")
    a = ap.parse_args()
    if a.quick:
        a.stored, a.repeat_new, a.repeat_old, a.chain_frames = [0, 200, 500], 3, 2, 3
    levels = sorted(set(a.stored))
    parts = a.only or ["integrate", "sequential", "chain"]
    t_start = time.perf_counter()
    print(f"bench_watch: python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "integrate" in parts:
        bench_integration(levels, a.repeat_new, a.repeat_old, a.shape)
    chain = run_chain(a.chain_frames) if ("sequential" in parts or "chain" in parts) else None
    if "sequential" in parts:
        assert chain is not None
        bench_sequential(levels, a.repeat_new, a.repeat_old, chain)
    if "chain" in parts:
        assert chain is not None
        print_chain(chain)
    print(f"\npeak RSS {_peak_rss_mb():.0f} MB; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
