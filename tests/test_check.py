"""Checks that mean something (tvmsplit.check): allclose-style comparison with an absolute floor
scaled to the reference's dynamic range, per-tensor reports that say where, per-dtype tolerances,
realistic default inputs, and ``build --check --input`` / ``run --check`` on the command line.

The comparison is tested against a brute-force oracle written from its definition, element by
element in plain Python floats.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmsplit.check import (TOLERANCES, Tolerance, compare, realistic_inputs, tolerance_for)
from tvmsplit.graph import TensorSpec


def oracle(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> tuple[float, bool]:
    """(max |d| / (atol + rtol |ref|), passes) from the module docstring's formula, per element."""
    values = [float(v) for v in ref.ravel() if math.isfinite(float(v))]
    spread = max(values) - min(values)
    atol = max(tol.range_frac * (spread or max(abs(v) for v in values)), tol.atol_min)
    worst = 0.0
    for g, r in zip(got.ravel().tolist(), ref.ravel().tolist()):
        d = abs(g - r)
        if d:
            worst = max(worst, d / (atol + tol.rtol * abs(r)))
    return worst, worst <= 1.0


@pytest.mark.parametrize("seed", range(20))
def test_compare_equals_the_elementwise_oracle(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 6, size=rng.integers(1, 4)))
    scale = 10.0 ** rng.uniform(-6, 3)
    ref = (rng.standard_normal(shape) * scale + rng.uniform(-1, 1) * scale).astype(np.float32)
    if seed % 3 == 0:
        ref = np.maximum(ref, 0)  # ReLU zeros
    noise = 10.0 ** rng.uniform(-8, -3)
    got = (ref * (1 + noise * rng.standard_normal(shape))
           + noise * scale * rng.standard_normal(shape)).astype(np.float32)
    tol = TOLERANCES["float32"]
    err = compare(got, ref, "t")
    want_ratio, want_ok = oracle(got.astype(np.float64), ref.astype(np.float64), tol)
    assert err.ok == want_ok
    assert err.ratio == pytest.approx(want_ratio, rel=1e-9, abs=1e-300)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert err.max_abs == diff.max() and diff[err.max_abs_at] == err.max_abs


def test_the_report_says_where_and_counts_what_is_off():
    ref = np.zeros((2, 3, 4), np.float32)
    ref[..., 0] = 1.0
    got = ref.copy()
    got[1, 2, 3] = 0.5     # the largest absolute error, where the reference is 0
    got[0, 1, 0] = 1.2     # 0.2 off where the reference is 1
    err = compare(got, ref, "x")
    assert err.max_abs == 0.5 and err.max_abs_at == (1, 2, 3)
    assert err.mismatched == 2 and not err.ok
    assert "x: max abs err 0.5 at [1,2,3] (0.5 of its largest |value|)" in err.describe()
    assert "2 element(s) beyond it" in err.describe()


def test_a_small_probability_map_is_compared_at_its_own_scale():
    """The issue's detector: a sigmoid map peaking at 1.5e-5 with 1.4e-7 absolute error passes
    (float32 rounding near 0), and an error of 10 % of the peak does not."""
    rng = np.random.default_rng(0)
    ref = (rng.random((1, 1, 32, 32)) * 1.5e-5).astype(np.float32)
    assert compare(ref + np.float32(1.4e-7), ref, "map").ok
    assert not compare(ref + np.float32(1.5e-6), ref, "map").ok


def test_an_offset_tensor_is_judged_by_its_values_not_only_its_range():
    ref = np.full((8,), 100.0, np.float32) + np.arange(8, dtype=np.float32) * 1e-3
    assert compare(ref * np.float32(1 + 5e-5), ref, "t").ok        # 5e-5 relative: fine
    assert not compare(ref * np.float32(1 + 3e-4), ref, "t").ok    # 3e-4 relative: not


def test_tolerances_per_dtype_and_the_scale_of_tolerance():
    assert tolerance_for("int64") == tolerance_for("bool") == Tolerance(0.0, 0.0, 0.0)
    assert tolerance_for("float16").rtol > tolerance_for("float32").rtol > tolerance_for("float64").rtol
    assert tolerance_for("float32", 1e-2) == TOLERANCES["float32"].scaled(100)
    ids = np.array([3, 4, 5], np.int64)
    assert compare(ids, ids, "ids").ok and not compare(ids + [0, 0, 1], ids, "ids").ok
    half = np.linspace(-1, 1, 16).astype(np.float16)
    assert compare(half + np.float16(2e-3), half, "h").ok            # fine for float16
    single = half.astype(np.float32)
    assert not compare(single + np.float32(2e-3), single, "s").ok    # not for float32


def test_nans_and_infinities():
    ref = np.array([1.0, np.inf, np.nan, -2.0], np.float32)
    assert compare(ref.copy(), ref, "t").ok  # the same specials in the same places
    bad = ref.copy()
    bad[0] = np.nan
    err = compare(bad, ref, "t")
    assert not err.ok and err.max_abs == math.inf and err.max_abs_at == (0,)


def test_a_scalar_is_compared_too():
    assert compare(np.array(16000, np.int64), np.array(16000, np.int64), "sr").ok
    err = compare(np.array(1.5, np.float32), np.array(1.0, np.float32), "s")
    assert not err.ok and err.max_abs == 0.5 and err.max_abs_at == ()


def test_rel_keeps_its_meaning():
    ref = np.array([0.0, 2.0, -4.0], np.float32)
    err = compare(ref + np.float32(1e-3), ref, "t")
    assert err.rel == pytest.approx(1e-3 / 4.0, rel=1e-3)


def _token_model() -> onnx.ModelProto:
    """ids [1, 8] int64 -> Gather(embedding [50, 4]) ; mask [1, 8] int64 -> Cast -> Mul."""
    emb = numpy_helper.from_array(np.ones((50, 4), np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0, name="embed"),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m3"], name="unsq"),
             helper.make_node("Mul", ["e", "m3"], ["out"], name="mul")]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4])], [emb, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_default_inputs_are_what_the_model_expects():
    specs = (TensorSpec("image", "float32", (1, 3, 64, 64)),
             TensorSpec("nhwc", "float32", (1, 32, 32, 3)),
             TensorSpec("audio", "float32", (1, 512)),
             TensorSpec("ids", "int64", (1, 8)), TensorSpec("mask", "int64", (1, 8)),
             TensorSpec("flag", "bool", (1,)))
    x = realistic_inputs(specs, _token_model(), seed=1)
    for name in ("image", "nhwc"):
        assert x[name].min() >= 0 and x[name].max() < 1 and x[name].std() > 0.2
    assert x["audio"].min() < 0 < x["audio"].max()           # nothing known: N(0, 1)
    assert x["ids"].dtype == np.int64 and 0 <= x["ids"].min() and x["ids"].max() < 50
    assert len(np.unique(x["ids"])) > 2                        # spread over the table
    assert (x["mask"] == 1).all() and x["flag"].all()
    assert all(x[t.name].shape == t.shape and x[t.name].dtype.name == t.dtype for t in specs)
    again = realistic_inputs(specs, _token_model(), seed=1)
    assert all((again[k] == v).all() for k, v in x.items())  # seeded
