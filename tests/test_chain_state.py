"""The chain's exact-resume state is data (JSON), not a pickle: every field round-trips, new
FitResult fields of the usual kinds round-trip without edits, and a pickle, another version or an
edited file is refused with a one-line warning (the run then resumes from the stored results)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import lmfit
import numpy as np
import pytest

from insitu_xrd.core.crystal import make_template
from insitu_xrd.core.pattern import Instrument, PeakTable, PhaseState, calc_pattern
from insitu_xrd.errors import InsituXRDError
from insitu_xrd.fit.result import FitResult
from insitu_xrd.fit.spec import RefinementSpec
from insitu_xrd.io.chain_state import ChainStateWarning, read_chain_state_file, write_chain_state_file
from insitu_xrd.io.state_codec import decode_value, encode_value, state_from_bytes, state_to_bytes
from insitu_xrd.pipeline.sequential.chain import SequentialRefiner
from insitu_xrd.pipeline.recipe import SequentialSection
from insitu_xrd.pipeline.refine_setup import make_refinement
from insitu_xrd.pipeline.sequential.records import FrameRecord

LAM = 0.1173
SPEC = RefinementSpec.model_validate(dict(
    mode="lebail", background={"chebyshev": 3}, profile=dict(U=1.0, V=-0.3, W=0.8, X=0.1, Y=0.2),
    phases=[dict(name="H2", template="nmc811", a=2.872, c=14.2, mustrain=900, refine=["a", "c", "scale"])]))


def _same(a, b, where="value") -> None:
    """Deep, type-aware equality (NaN == NaN, arrays bit-exact with their dtypes)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, lmfit.Parameters):
        assert list(a) == list(b), where
        for name in a:
            for attr in ("value", "vary", "min", "max", "expr", "stderr", "correl", "init_value", "user_data",
                         "brute_step"):
                _same(getattr(a[name], attr), getattr(b[name], attr), f"{where}.{name}.{attr}")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def stepped():
    """A refiner after two real fits of a simulated pattern (its state holds a real FitResult)."""
    tth = np.linspace(1.0, 9.0, 900)
    h2 = make_template("nmc811", name="H2", a=2.87, c=14.21)
    y = calc_pattern(tth, [PhaseState(h2, scale=1.0, mustrain=900)], Instrument(LAM, U=1.0, V=-0.3, W=0.8, X=0.1, Y=0.2),
                     background_coeffs=[300, -60, 20]).total
    obs = np.random.default_rng(3).poisson(np.clip(y * 2000 / y.max(), 0, None)).astype(float)
    sig = np.sqrt(np.maximum(obs, 1))
    ref = SequentialRefiner(SPEC, LAM, lambda sp: make_refinement(sp, LAM, "."), SequentialSection())
    for i in range(2):
        ref.step(i, tth, obs, sig, "ok", time_s=60.0 * i, key=f"f{i}")
    return ref


def test_every_field_of_the_chain_state_round_trips(stepped):
    assert isinstance(stepped.prev_fit, FitResult)
    blob = stepped.state_bytes()
    assert blob.startswith(b"{") and b"pickle" not in blob
    fresh = SequentialRefiner(SPEC, LAM, lambda sp: make_refinement(sp, LAM, "."), SequentialSection())
    assert fresh.restore_state(blob)
    for k in SequentialRefiner._STATE_FIELDS:
        if k == "_cache":
            # refinements are never saved: rebuilt from their specs, with their reflection lists
            assert [sp for sp, _ in fresh._cache] == [sp for sp, _ in stepped._cache]
            for (_, new), (_, old) in zip(fresh._cache, stepped._cache):
                assert new is not old
                for name, lists in old.reflection_lists().items():
                    np.testing.assert_array_equal(new.reflection_lists()[name]["hkl"], lists["hkl"])
            continue
        _same(getattr(stepped, k), getattr(fresh, k), k)
    # every field of the FitResult, whatever fields FitResult has today
    for f in dataclasses.fields(FitResult):
        _same(getattr(stepped.prev_fit, f.name), getattr(fresh.prev_fit, f.name), f"prev_fit.{f.name}")
    assert fresh.cur_spec == stepped.cur_spec


def test_new_fitresult_fields_of_the_usual_kinds_round_trip_without_edits(stepped):
    """A FitResult with extra fields (floats, strings, lists, dicts of floats and arrays, arrays,
    tuples, NaN/inf, numpy scalars, a PeakTable) round-trips through the generic encoder."""
    extra = [(name, kind, dataclasses.field(default=None))
             for name, kind in [("new_float", float), ("new_str", str), ("new_list", list), ("new_dict", dict),
                                ("new_array", np.ndarray), ("new_tuple", tuple), ("new_table", PeakTable)]]
    Wider = dataclasses.make_dataclass("WiderFitResult", extra, bases=(FitResult,))
    base = {f.name: getattr(stepped.prev_fit, f.name) for f in dataclasses.fields(FitResult)}
    table = next(iter(stepped.prev_fit.peaks.values()))
    obj = Wider(**base, new_float=-math.inf, new_str="ünïcode", new_list=[1, 2.5, "x", None, math.nan],
                new_dict={"a": np.float32(1.5), "b": np.arange(6, dtype=np.int16).reshape(2, 3), 3: (1.0, 2.0)},
                new_array=np.array([[1.0, math.nan], [math.inf, -0.0]]), new_tuple=(np.int64(7), "s"),
                new_table=table)
    classes = [Wider, PeakTable]
    back = decode_value(json.loads(json.dumps(encode_value(obj, classes))), classes)
    _same(obj, back, "wider")


def test_lmfit_expressions_round_trip_and_unsafe_ones_are_refused():
    p = lmfit.Parameters()
    p.add("a", value=2.0, min=0, max=5)
    p.add("b", expr="2*a + sqrt(a) - 1e-3")
    doc = encode_value(p)
    back = decode_value(json.loads(json.dumps(doc)))
    assert back["b"].expr == "2*a + sqrt(a) - 1e-3" and back["b"].value == pytest.approx(p["b"].value)
    bad = json.loads(json.dumps(doc).replace("2*a + sqrt(a) - 1e-3", "a.__class__"))
    with pytest.raises(InsituXRDError, match="not plain arithmetic"):
        decode_value(bad)


def test_unknown_classes_object_arrays_and_tags_are_refused():
    with pytest.raises(InsituXRDError, match="cannot be saved"):
        encode_value({"x": object()})
    with pytest.raises(InsituXRDError, match="cannot be saved"):
        encode_value(np.array([1, "a"], dtype=object))
    with pytest.raises(InsituXRDError, match="not allowed"):
        decode_value({"$dc": "FrameRecord", "f": {"index": 1, "status": "ok"}})  # not in the allowed list
    with pytest.raises(InsituXRDError, match="not data"):
        decode_value({"$nd": "|O", "shape": [1], "b64": ""})
    with pytest.raises(InsituXRDError, match="unknown tag"):
        decode_value({"$exec": "print(1)"})


def test_versions_and_checksums_are_checked():
    blob = state_to_bytes({"x": 1.0}, "test", 1)
    assert state_from_bytes(blob, "test", 1)[0] == {"x": 1.0}
    with pytest.raises(InsituXRDError, match="version 1; this version of insitu-xrd reads version 2"):
        state_from_bytes(blob, "test", 2)
    with pytest.raises(InsituXRDError, match="checksum"):
        state_from_bytes(blob.replace(b"1.0", b"2.0"), "test", 1, source="f.state")
    with pytest.raises(InsituXRDError, match="truncated"):
        state_from_bytes(blob[:-5], "test", 1)
    with pytest.raises(InsituXRDError, match="old pickled state"):
        state_from_bytes(pickle.dumps({"x": 1.0}), "test", 1)


@pytest.mark.parametrize("damage", ["pickle", "version", "edited", "truncated"])
def test_a_refused_state_file_warns_and_the_refiner_falls_back(stepped, tmp_path, damage):
    path = tmp_path / "seq.nc.state"
    write_chain_state_file(path, "k", "f1", stepped.state_bytes())
    good = read_chain_state_file(path, "k", "f1")
    assert good is not None and read_chain_state_file(path, "other key", "f1") is None
    raw = path.read_bytes()
    if damage == "pickle":  # what an older release wrote (and what must never be loaded)
        path.write_bytes(pickle.dumps({"cache_key": "k", "after": "f1", "state": b""}))
    elif damage == "version":
        path.write_bytes(raw.replace(b'"version":1', b'"version":99', 1))
    elif damage == "edited":
        path.write_bytes(raw.replace(b'"H2_a"', b'"H2_b"', 1))
    else:
        path.write_bytes(raw[: len(raw) // 2])
    with pytest.warns(ChainStateWarning, match=r"seq\.nc\.state: .*resuming from the stored results"):
        assert read_chain_state_file(path, "k", "f1") is None
    fresh = SequentialRefiner(SPEC, LAM, lambda sp: make_refinement(sp, LAM, "."), SequentialSection())
    with pytest.warns(ChainStateWarning):
        assert not fresh.restore_state(raw[:100])
    assert fresh.prev_fit is None  # unchanged


def test_frame_records_round_trip():
    rec = FrameRecord(index=3, status="ok", rwp=0.1, phases={"H2": {"a": 2.8, "a_esd": math.nan}}, active=["H2"],
                      fit_two_theta=np.linspace(1, 2, 5), correlations=None)
    _same(rec, decode_value(encode_value(rec, [FrameRecord]), [FrameRecord]), "record")
