"""Shape folding that cannot silently change a model (issue 12 part 5).

``frontend.load`` folds shape arithmetic with onnxsim without its optimisations, then runs the
folded and the unfolded model under onnxruntime on the pinned shapes and compares their outputs.
When they differ (or the folded model does not run) it tries full simplification, then no folding,
and says which was used (``LayerGraph.folding``, a log line). Here the light folding is forced
wrong (a folded constant corrupted, a Reshape target changed) on models built in code, and the
real case, rapidocr's PP-OCRv4 recogniser whose light folding breaks three Reshape targets, loads
at widths 160, 320 and 640 and matches onnxruntime on the original file.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmsplit as ts
from tvmsplit import check, frontend
from tvmsplit.check import compare, reference, run_onnxruntime

pytestmark = pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")


def shape_model() -> onnx.ModelProto:
    """x [N, 16] -> MatMul(w) -> + Mul(a, b) (constant: folds) -> Reshape to
    Concat(Shape(x)[0], 4, 8) (shape arithmetic: folds once N is pinned) -> Relu."""
    rng = np.random.default_rng(0)
    f32 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    i64 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.int64), n)  # noqa: E731
    inits = [f32(rng.standard_normal((16, 32)), "w"), f32(rng.standard_normal(32), "a"),
             f32(rng.standard_normal(32), "b"), i64([4, 8], "tail"), i64([0], "zero"),
             i64([1], "one")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
             helper.make_node("Mul", ["a", "b"], ["ab"], name="const_mul"),
             helper.make_node("Add", ["y", "ab"], ["z"], name="bias"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="batch"),
             helper.make_node("Concat", ["n", "tail"], ["target"], axis=0, name="target"),
             helper.make_node("Reshape", ["z", "target"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, ["N", 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SHAPES = {"x": (3, 16)}
real_simplify = frontend._simplify


def corrupt_constant(model: onnx.ModelProto) -> onnx.ModelProto:
    """The folded bias constant (Mul(a, b)) off by 1: same shapes, other values."""
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and list(t.dims) == [32]:
            value = numpy_helper.to_array(t) + 1.0
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), t.name))
            return model
    raise AssertionError("no folded bias constant to corrupt")


def corrupt_target(model: onnx.ModelProto) -> onnx.ModelProto:
    """The folded Reshape target [3, 4, 8] -> [3, 8, 4]: runs, wrong shape."""
    for t in model.graph.initializer:
        if t.data_type == TensorProto.INT64 and numpy_helper.to_array(t).tolist() == [3, 4, 8]:
            t.CopyFrom(numpy_helper.from_array(np.array([3, 8, 4], np.int64), t.name))
            return model
    raise AssertionError("no folded Reshape target to corrupt")


def wrong(methods: set[str], how=corrupt_constant):
    def simplify(model, method):
        folded = real_simplify(model, method)
        return how(folded) if method in methods else folded
    return simplify


def equals_the_unfolded_model(g: ts.LayerGraph, model: onnx.ModelProto) -> None:
    x = {"x": np.random.default_rng(1).standard_normal(SHAPES["x"]).astype(np.float32)}
    want = run_onnxruntime(model, x)["out"]
    assert compare(reference(g, x)["out"], want, "out").ok


def test_light_folding_is_checked_and_used():
    lines: list[str] = []
    g = ts.load(shape_model(), shapes=SHAPES, log=lines.append)
    assert g.folding == "light" and lines == []  # the usual case is quiet
    assert not any(n.op_type in ("Shape", "Concat") for n in g.model.graph.node)
    equals_the_unfolded_model(g, shape_model())


@pytest.mark.parametrize("how", [corrupt_constant, corrupt_target])
def test_wrong_light_folding_falls_back_to_full_simplification(monkeypatch, how):
    monkeypatch.setattr(frontend, "_simplify", wrong({"light"}, how))
    lines: list[str] = []
    g = ts.load(shape_model(), shapes=SHAPES, log=lines.append)
    assert g.folding == "full"
    assert len(lines) == 1 and "folded by full onnxsim simplification" in lines[0]
    assert "light folding rejected" in lines[0]
    if how is corrupt_constant:
        assert "output out: max abs err" in lines[0]  # says how far off, and where
    else:
        assert "instead of [3, 4, 8]" in lines[0]
    equals_the_unfolded_model(g, shape_model())


def test_when_every_folding_is_wrong_the_model_stays_unfolded(monkeypatch):
    monkeypatch.setattr(frontend, "_simplify", wrong({"light", "full"}))
    lines: list[str] = []
    g = ts.load(shape_model(), shapes=SHAPES, log=lines.append)
    assert g.folding == "none"
    assert lines[0].startswith("shapes: shape arithmetic left unfolded (light folding rejected")
    assert "full folding rejected" in lines[0]
    assert any(n.op_type == "Shape" for n in g.model.graph.node)  # unfolded, as given
    assert g.outputs[0].shape == (3, 4, 8)                        # shape inference still works
    equals_the_unfolded_model(g, shape_model())


def test_a_folding_that_raises_is_passed_over(monkeypatch):
    def simplify(model, method):
        if method == "light":
            raise RuntimeError("onnxsim crashed")
        return real_simplify(model, method)
    monkeypatch.setattr(frontend, "_simplify", simplify)
    lines: list[str] = []
    assert ts.load(shape_model(), shapes=SHAPES, log=lines.append).folding == "full"
    assert "light folding failed: onnxsim crashed" in lines[0]


def test_unchecked_folding_is_said(monkeypatch):
    def cannot_run(*_args, **_kwargs):
        raise RuntimeError("no kernel")
    monkeypatch.setattr(check, "run_onnxruntime", cannot_run)
    lines: list[str] = []
    g = ts.load(shape_model(), shapes=SHAPES, log=lines.append)
    assert g.folding == "unchecked"
    assert "NOT checked" in lines[0] and "onnxruntime cannot run the unfolded model" in lines[0]


def test_a_model_with_nothing_to_fold_says_so():
    from tvmsplit import zoo

    assert ts.load(zoo.make("chain", width=0.25), name="chain").folding == ""


# ---- the real case: rapidocr's PP-OCRv4 text recogniser (SVTR neck, CTC head) ------------------
def rec_model_path():
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("rapidocr-onnxruntime is not installed (pip install -e '.[test]')")
    from importlib import resources

    return resources.files("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_rec_infer.onnx"


@pytest.mark.parametrize("width", [160, 320, 640])
def test_ppocrv4_rec_loads_at_every_width_and_equals_onnxruntime(width):
    path = rec_model_path()
    lines: list[str] = []
    g = ts.load(path, shapes={"x": (1, 3, 48, width)}, log=lines.append)
    assert g.folding == "full", lines  # the light folding breaks 3 Reshape targets (39, not 40)
    assert "light folding rejected: onnxruntime cannot run the folded model" in lines[0]
    assert g.outputs[0].shape == (1, width // 8, 6625)  # one CTC step per 8 pixels
    x = {"x": np.random.default_rng(width).random((1, 3, 48, width), np.float32)}
    original = onnx.load(str(path))
    want = run_onnxruntime(original, x)
    got = reference(g, x, [g.outputs[0].name])
    assert compare(got[g.outputs[0].name], want[original.graph.output[0].name], "probs").ok


@pytest.mark.parametrize("width", [160, 320, 640])
def test_ppocrv4_rec_builds_and_checks_at_every_width(width, tmp_path):
    from tvmsplit.check import check_bundle, default_inputs

    g = ts.load(rec_model_path(), shapes={"x": (1, 3, 48, width)})
    bundle = ts.build_bundle(g, ts.plan_split(g, targets=["x86_64"]), tmp_path / "rec")
    report = check_bundle(bundle, g, default_inputs(g))  # an image-like input in [0, 1)
    assert report.ok, [e.describe() for s in report.stages for e in s.errors]
