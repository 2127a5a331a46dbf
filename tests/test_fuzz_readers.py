"""Property-based fuzzing of every reader (Hypothesis): valid files truncated, bytes flipped,
headers with garbage bodies, empty, repeated bodies, numbers replaced by NaN/inf/huge/garbage,
lines duplicated or swapped (duplicated/unsorted axes), a column scaled (wrong units: minutes as
seconds, degrees x 20, radians). Each input either reads to a sane result or raises InsituXRDError
with one line naming the file; see tests/fuzz_readers.py for the checks.

Bounded and seeded here (``derandomize``: the same inputs on every run, a few seconds per
reader); ``make fuzz`` runs the same properties with many more random inputs
(``INSITU_XRD_FUZZ_EXAMPLES``) and prints the tally. Every failure found is kept below as an
``@example`` regression input.
"""

from __future__ import annotations

import datetime as dt
import math
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz_readers import (COLUMN_FACTORS, TEXT_TOKENS, Mutation, Scratch, cycler_problems, frames_problems,
                          pattern_problems, run_one, tally_line)
from lab_files import (truth_pattern, write_chi_q, write_gsas, write_powbase, write_ras, write_uxd, write_xrdml)

from insitu_xrd.errors import InsituXRDError

EXAMPLES = int(os.environ.get("INSITU_XRD_FUZZ_EXAMPLES", "0"))
LONG = EXAMPLES > 0
FUZZ = settings(max_examples=EXAMPLES or 20, derandomize=not LONG, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


def mutations(text: bool) -> st.SearchStrategy[Mutation]:
    frac = st.floats(0.0, 1.0, exclude_max=True)
    garbage = st.one_of(st.binary(max_size=400), st.text(max_size=200).map(lambda s: s.encode("utf-8")),
                        st.lists(st.sampled_from(["1", "2.5", " ", "\n", "-", "e", "nan", ",", "\t", "#"]),
                                 max_size=200).map(lambda w: "".join(w).encode()))
    kinds = [
        st.just(Mutation("none")),
        st.builds(Mutation, kind=st.just("truncate"), a=frac),
        st.builds(Mutation, kind=st.just("flip"), a=frac, data=st.binary(min_size=1, max_size=8)),
        st.builds(Mutation, kind=st.just("garbage"), a=st.floats(0.0, 0.6), data=garbage),
        st.just(Mutation("empty")),
        st.builds(Mutation, kind=st.just("repeat"), a=st.floats(0.2, 0.9)),
    ]
    if text:
        kinds += [
            st.builds(Mutation, kind=st.just("token"), a=frac, b=frac, token=st.sampled_from(TEXT_TOKENS)),
            st.builds(Mutation, kind=st.just("dup_line"), a=frac),
            st.builds(Mutation, kind=st.just("swap_lines"), a=frac, b=frac),
            st.builds(Mutation, kind=st.just("scale_column"), b=frac, factor=st.sampled_from(COLUMN_FACTORS)),
        ]
    return st.one_of(*kinds)


@pytest.fixture(scope="module", autouse=True)
def _quiet_and_tally():
    logging.disable(logging.CRITICAL)  # fabio/pyFAI log every unreadable file
    yield
    logging.disable(logging.NOTSET)
    if LONG:
        print(f"\nfuzz: {tally_line()}")


def _fuzz(raw: bytes, name: str, text: bool, m: Mutation, reader: Callable[[Path], Any],
          problems: Callable[[Any, Any, Mutation], list[str]], truth: Any, extra: dict[str, bytes] | None = None) -> None:
    scratch = Scratch()
    try:
        path = scratch.path(name)
        for other, blob in (extra or {}).items():  # files the input refers to (Eiger data file)
            (path.parent / other).write_bytes(blob)
        path.write_bytes(m.apply(raw, text))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_one(reader, problems, path, truth, m)
    finally:
        scratch.close()


# --------------------------------------------------------------------------------------------
# 1D patterns

def _patterns() -> dict[str, tuple[bytes, Any]]:
    from insitu_xrd.io.pattern_files import write_xye

    tth, y = truth_pattern()
    scratch = Scratch()
    out = {}
    try:
        def keep(name: str, writer: Callable[[Path], Path]) -> None:
            out[name] = (writer(scratch.path(name)).read_bytes(), (tth, y))

        keep("a.xye", lambda p: write_xye(p, tth, y, np.sqrt(y), header_lines=["fuzz"], wavelength_A=0.5))
        keep("b.xy", lambda p: (p.write_text("# 2theta I\n" + "\n".join(f"{a:.4f} {b:.0f}" for a, b in zip(tth, y))), p)[1])
        keep("q.chi", lambda p: write_chi_q(p, tth, y, 0.5))
        keep("powbase.dat", lambda p: write_powbase(p, tth, y, 2))
        keep("c.uxd", lambda p: write_uxd(p, tth, y, "counts"))
        keep("d.uxd", lambda p: write_uxd(p, tth, y, "2thetacounts"))
        keep("s.xrdml", lambda p: write_xrdml(p, tth, y))
        keep("s.ras", lambda p: write_ras(p, tth, y))
        keep("std.gsa", lambda p: write_gsas(p, tth, y, "STD"))
        keep("esd.gsa", lambda p: write_gsas(p, tth, y, "ESD"))
        keep("s.fxye", lambda p: write_gsas(p, tth, y, "FXYE"))
    finally:
        scratch.close()
    return out


PATTERNS = _patterns()


@pytest.mark.parametrize("name", sorted(PATTERNS))
@FUZZ
@given(m=mutations(text=True))
@example(m=Mutation("none"))
@example(m=Mutation("repeat", a=0.5))  # a duplicated body: repeated axis
@example(m=Mutation("scale_column", b=0.0, factor=60.0))  # 2theta x 60: beyond 180 deg
@example(m=Mutation("swap_lines", a=0.3, b=0.7))  # unsorted axis
@example(m=Mutation("token", a=0.0, b=0.0, token="-inf"))  # '# Wavelength: -inf m': ValueError
def test_pattern_readers(name, m):
    from insitu_xrd.io.pattern_files import read_pattern_1d

    raw, truth = PATTERNS[name]
    _fuzz(raw, name, True, m, read_pattern_1d, pattern_problems, truth)


# --------------------------------------------------------------------------------------------
# detector frames

def _frames() -> dict[str, tuple[bytes, dict[str, Any], dict[str, bytes]]]:
    import fabio
    import h5py

    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 1000, (24, 32)).astype(np.int32) for _ in range(2)]
    scratch = Scratch()
    out: dict[str, tuple[bytes, dict[str, Any], dict[str, bytes]]] = {}
    try:
        for name, cls in (("f.tif", fabio.tifimage.TifImage), ("f.edf", fabio.edfimage.EdfImage),
                          ("f.cbf", fabio.cbfimage.CbfImage)):
            p = scratch.path(name)
            cls(data=imgs[0], header={"time_s": "1.0"}).write(str(p))
            out[name] = (p.read_bytes(), {"frames": imgs[:1], "checksummed": name.endswith(".cbf")}, {})
        p = scratch.path("stack.h5")
        with h5py.File(p, "w") as fh:
            fh.create_dataset("entry/data/data", data=np.stack(imgs))
        out["stack.h5"] = (p.read_bytes(), {"frames": imgs, "checksummed": False}, {})
        data = scratch.path("eiger_data_000001.h5")
        with h5py.File(data, "w") as fh:
            fh.create_dataset("entry/data/data", data=np.stack(imgs))
        master = data.parent / "eiger_master.h5"
        with h5py.File(master, "w") as fh:
            fh["entry/data/data_000001"] = h5py.ExternalLink("eiger_data_000001.h5", "/entry/data/data")
        # the master fuzzed with its data file intact, and the data file behind an intact master
        written = {"frames": imgs, "checksummed": False}
        out["eiger_master.h5"] = (master.read_bytes(), written, {"eiger_data_000001.h5": data.read_bytes()})
        out["eiger_data_000001.h5"] = (data.read_bytes(), written, {"eiger_master.h5": master.read_bytes()})
    finally:
        scratch.close()
    return out


FRAMES = _frames()


def _read_frames(path: Path) -> list[np.ndarray]:
    from insitu_xrd.io.frames import discover_frames, read_frame

    if path.name.startswith("eiger_data"):
        path = path.parent / "eiger_master.h5"
        refs = discover_frames(path)
        out = [read_frame(r).data for r in refs]
        return out
    return [read_frame(r).data for r in discover_frames(path)]


@pytest.mark.parametrize("name", sorted(FRAMES))
@FUZZ
@given(m=mutations(text=False))
@example(m=Mutation("none"))
@example(m=Mutation("truncate", a=0.5))  # fabio padded a half EDF with zeros
@example(m=Mutation("truncate", a=0.19))  # fabio looped forever on a CBF cut in its header
@example(m=Mutation("flip", a=0.0857, data=b"\x10"))  # ... and on a damaged CIF-BINARY line
@example(m=Mutation("flip", a=0.7, data=b"\x01"))  # a CBF pixel byte changed: refused by Content-MD5
@example(m=Mutation("flip", a=0.90625, data=b"\x00\x00"))  # h5py RuntimeError on a damaged master
@example(m=Mutation("flip", a=0.18359375, data=b"\x00\x00"))  # CBF: Content-MD5 key and a pixel damaged
@example(m=Mutation("flip", a=0.6328125, data=bytes(4)))  # EDF 'Dim_2 =!24': fabio read 32 x 32
@example(m=Mutation("flip", a=0.62890625, data=bytes(4)))  # EDF: fabio read a 24 x 0 image
@example(m=Mutation("flip", a=0.87109375, data=b"\x00\x02"))  # TIFF ImageLength 196612: PIL padded zeros
def test_frame_readers(name, m):
    raw, written, extra = FRAMES[name]
    # a CBF's pixels are checksummed only while its Content-MD5 line survives the mutation
    md5_line = raw[raw.find(b"Content-MD5:"):].split(b"\r\n", 1)[0] if name.endswith(".cbf") else None
    truth = {**written, "checksummed": bool(md5_line) and md5_line in m.apply(raw, False)}
    problems = frames_problems

    def reader(path: Path) -> list[np.ndarray]:
        try:
            return _read_frames(path)
        except InsituXRDError as exc:  # name the fuzzed file (the master names its data file)
            if path.name not in str(exc) and path.name.startswith("eiger_data"):
                raise InsituXRDError(f"{path.name}: {exc}") from None
            raise

    _fuzz(raw, name, False, m, reader, problems, truth, extra)


# --------------------------------------------------------------------------------------------
# cycler logs

def _cycler() -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    from test_echem import write_csv, write_mpr, write_mpt

    t = np.arange(0.0, 3601.0, 60.0)
    v = 3.6 + 1e-4 * t
    i = np.full(t.size, 0.5)
    q = 0.5 * t / 3600
    truth = {"time_s": t, "voltage_V": v}
    scratch = Scratch()
    out = {}
    try:
        rows = np.c_[t, v, i, q]
        out["log.csv"] = (write_csv(scratch.path("log.csv"), ["time_s", "voltage_V", "current_mA", "capacity_mAh"], rows).read_bytes(), truth)
        out["log.tsv"] = (write_csv(scratch.path("log.tsv"), ["time/s", "Ewe/V", "I/mA", "(Q-Qo)/mA.h"], rows, sep="\t").read_bytes(), truth)
        out["log.mpt"] = (write_mpt(scratch.path("log.mpt"), ["time/s", "Ewe/V", "I/mA", "(Q-Qo)/mA.h"], rows).read_bytes(), truth)
        out["log.mpr"] = (write_mpr(scratch.path("log.mpr"), t, v, i, q, dt.datetime(2026, 3, 14, 9, 30)).read_bytes(),
                          {"time_s": t, "voltage_V": v.astype(np.float32).astype(float)})
        out["log.nda"] = (b"NEWARE" + bytes(200), truth)  # refused: NewareNDA is optional (or cannot read it)
    finally:
        scratch.close()
    return out


CYCLER = _cycler()


@pytest.mark.parametrize("name", sorted(CYCLER))
@FUZZ
@given(m=mutations(text=True))
@example(m=Mutation("none"))
@example(m=Mutation("scale_column", b=0.4, factor=1000.0))  # voltage in mV labelled V: was read
@example(m=Mutation("truncate", a=0.5))  # galvani's error message had several lines
@example(m=Mutation("scale_column", b=0.0, factor=0.0))  # a constant time column: one row left
def test_cycler_log_readers(name, m):
    from insitu_xrd.io.echem import read_cycler_log

    raw, truth = CYCLER[name]
    _fuzz(raw, name, not name.endswith((".mpr", ".nda")), m, read_cycler_log, cycler_problems, truth)


# --------------------------------------------------------------------------------------------
# PONI, .instprm, CIF, recipe YAML

def _poni_problems(ai: Any, truth: Any, m: Mutation) -> list[str]:
    out = []
    if not (1e-3 < ai.dist < 100):
        out.append(f"distance {ai.dist}")
    if ai.wavelength is not None and not (1e-12 < ai.wavelength < 1e-8):
        out.append(f"wavelength {ai.wavelength}")
    if not (ai.detector.pixel1 is not None and ai.detector.pixel2 is not None
            and ai.detector.pixel1 > 0 and ai.detector.pixel2 > 0):
        out.append("pixel size <= 0")
    if not all(np.isfinite(v) for v in (ai.poni1, ai.poni2, ai.rot1, ai.rot2, ai.rot3)):
        out.append("non-finite geometry")
    return out


def _instrument_problems(inst: Any, truth: Any, m: Mutation) -> list[str]:
    vals = [inst.wavelength_A, inst.U, inst.V, inst.W, inst.X, inst.Y, inst.zero_deg, inst.sh_l]
    out = [] if all(np.isfinite(v) for v in vals) else ["non-finite instrument parameter"]
    if not (0.01 < inst.wavelength_A < 10):
        out.append(f"wavelength {inst.wavelength_A} A")
    return out


def _phase_problems(ph: Any, truth: Any, m: Mutation) -> list[str]:
    a, b, c, al, be, ga = ph.cell
    out = []
    if not all(np.isfinite(v) and v > 0 for v in (a, b, c)):
        out.append(f"cell lengths {a, b, c}")
    if not all(0 < v < 180 for v in (al, be, ga)):
        out.append(f"cell angles {al, be, ga}")
    if not ph.sites:
        out.append("no atoms")
    for s in ph.sites:
        occ = list(s.occupancy.values())
        if not (occ and all(0 < o <= 1 for o in occ) and sum(occ) <= 1 + 1e-6 and np.isfinite(s.biso_A2)
                and np.all(np.isfinite(s.xyz))):
            out.append(f"site {s.label}: occupancy {s.occupancy}, B {s.biso_A2}")
    return out


def _text_inputs() -> dict[str, tuple[bytes, Callable[[Path], Any], Callable[..., list[str]]]]:
    from insitu_xrd.io.cif import read_cif_phase
    from insitu_xrd.io.instprm import read_instrument
    from insitu_xrd.io.poni import load_poni
    from insitu_xrd.pipeline.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    poni = (b"# Nota: C-order like in pyFAI\nponi_version: 2.1\nDetector: Detector\n"
            b'Detector_config: {"pixel1": 0.0008, "pixel2": 0.0008, "max_shape": [100, 120], "orientation": 3}\n'
            b"Distance: 0.5\nPoni1: 0.016\nPoni2: 0.024\nRot1: 0.01\nRot2: 0\nRot3: 0\nWavelength: 1.173e-11\n")
    cif = b"""data_nmc
_cell_length_a 2.872
_cell_length_b 2.872
_cell_length_c 14.20
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_symmetry_space_group_name_H-M 'R -3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
_atom_site_B_iso_or_equiv
Li1 Li 0 0 0.5 1.0 1.0
Ni1 Ni 0 0 0 1.0 0.3
O1 O 0 0 0.2411 1.0 0.5
"""
    return {
        "geo.poni": (poni, load_poni, _poni_problems),
        "inst.instprm": ((root / "tests" / "data" / "gsas2_11bm.instprm").read_bytes(),
                         lambda p: read_instrument(p, wavelength_A=None), _instrument_problems),
        "phase.cif": (cif, lambda p: read_cif_phase(p, "H2"), _phase_problems),
        "recipe.yaml": ((root / "recipes" / "exsitu_ni.yaml").read_bytes(), load_recipe, lambda r, t, m: []),
    }


TEXTS = _text_inputs()


@pytest.mark.parametrize("name", sorted(TEXTS))
@FUZZ
@given(m=mutations(text=True))
@example(m=Mutation("none"))
@example(m=Mutation("dup_line", a=0.875))  # a repeated CIF atom line made a Ni occupancy of 2
@example(m=Mutation("flip", a=0.0, data=b"\x80"))  # a recipe not UTF-8: UnicodeDecodeError
@example(m=Mutation("flip", a=0.0, data=b"\x00\x00\x00"))  # PONI: Detector_config key damaged, no pixel size
def test_text_input_readers(name, m):
    raw, reader, problems = TEXTS[name]
    _fuzz(raw, name, True, m, reader, problems, None)


# --------------------------------------------------------------------------------------------
# the project's own outputs, read back when a run resumes

STORE_SPEC = dict(variables={"y": ("x",), "status": (), "t": ()}, axes={"x": np.arange(5.0)}, coords=("t",),
                  attrs={"who": "fuzz"}, signature={"npt": 5})
STORE_ROWS = {f"f{i}": np.arange(5.0) * (i + 1) for i in range(4)}


def _open_store(path: Path) -> dict[str, np.ndarray]:
    from insitu_xrd.io.store import FrameStore

    kw = {"working": "netcdf"} if path.suffix == ".nc" else {}
    st = FrameStore(path, **STORE_SPEC, **kw)
    return {k: np.asarray(st.get(k)["y"], dtype=float) for k in st.done_keys()}


def _store_problems(rows: dict[str, np.ndarray], truth: Any, m: Mutation) -> list[str]:
    out = [f"unknown frame {k!r}" for k in rows if k not in STORE_ROWS]
    out += [f"frame {k}: y has shape {v.shape}" for k, v in rows.items() if v.shape != (5,)]
    if m.kind == "none" and (set(rows) != set(STORE_ROWS)
                             or any(not np.array_equal(rows[k], STORE_ROWS[k]) for k in rows)):
        out.append("the unchanged store read differently")
    return out


def _outputs() -> dict[str, tuple[dict[str, bytes], Any]]:
    """name -> ({relative file: bytes} of the output (one file, or a Zarr folder), truth)."""
    from insitu_xrd.io.chain_state import encode_chain_state, write_chain_state_file
    from insitu_xrd.io.store import FrameStore

    scratch = Scratch()
    out: dict[str, tuple[dict[str, bytes], Any]] = {}
    try:
        for name, kw in (("s.nc", {"working": "netcdf"}), ("s.zarr", {})):
            path = scratch.path(name)
            with FrameStore(path, **STORE_SPEC, **kw) as st:
                for i, (k, y) in enumerate(STORE_ROWS.items()):
                    st.append(k, {"y": y, "status": "ok", "t": float(i)})
            files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
            out[name] = ({str(q.relative_to(path.parent)): q.read_bytes() for q in files}, None)
        state = {"values": {"H2_a": 2.87, "H2_c": float("nan")}, "rwp_history": [0.1, 0.2],
                 "arr": np.linspace(0, 1, 7)}
        path = scratch.path("seq.nc.state")
        write_chain_state_file(path, "k", "f1", encode_chain_state(state))
        out["seq.nc.state"] = ({"seq.nc.state": path.read_bytes()}, state)
    finally:
        scratch.close()
    return out


OUTPUTS = _outputs()


def _read_state(path: Path) -> Any:
    from insitu_xrd.io.chain_state import decode_chain_state, read_chain_state_file

    blob = read_chain_state_file(path, "k", "f1")  # None (with a warning) when refused
    return None if blob is None else decode_chain_state(blob, ["values", "rwp_history", "arr"], source=str(path))


def _state_problems(state: Any, truth: Any, m: Mutation) -> list[str]:
    if state is None:  # refused with a ChainStateWarning: the run resumes from the stored results
        return []
    same = (state["values"]["H2_a"] == truth["values"]["H2_a"] and math.isnan(state["values"]["H2_c"])
            and state["rwp_history"] == truth["rwp_history"] and np.array_equal(state["arr"], truth["arr"]))
    return [] if same else ["a changed state was accepted"]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
@FUZZ
@given(m=mutations(text=False), pick=st.floats(0.0, 1.0, exclude_max=True))
@example(m=Mutation("none"), pick=0.0)
def test_output_readers_on_resume(name, m, pick):
    """One file of the output (the NetCDF, one file of the Zarr store, the chain state) mutated."""
    files, truth = OUTPUTS[name]
    target = sorted(files)[int(pick * len(files))]
    scratch = Scratch()
    try:
        root = scratch.path(name).parent
        for rel, blob in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(m.apply(blob, False) if rel == target else blob)
        reader = _read_state if name.endswith(".state") else _open_store
        problems = _state_problems if name.endswith(".state") else _store_problems
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_one(reader, problems, root / name, truth, m)
    finally:
        scratch.close()
