"""Loading a large model without pushing its weights through onnx's checker and shape inference.

``frontend.load`` checks the model and infers its shapes on a copy in which each large float
initializer is a graph input of the same type and shape (``_without_weights``). These tests show
that this changes nothing a user sees: the same normalised model (byte for byte), the same layers
and cut candidates as with every weight present, on every zoo model and on models whose shape
arithmetic reads initializers; a weight whose data is shorter than its shape is still refused
with the checker's message; a large model's long phases are logged. Timings are in
BENCHMARKS.md ("Loading large models"), never asserted here.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmsplit import frontend, zoo
from tvmsplit.errors import ModelError

SMALL = {name: dict(input_size=32, width=0.25) for name in zoo.names()}
SMALL["vgg16"] = dict(input_size=64, width=0.25)


def digest(g) -> tuple:
    """Everything a LayerGraph says, the normalised model's bytes included."""
    return (g.name, g.model_sha256, hashlib.sha256(g.model.SerializeToString()).hexdigest(),
            g.layers, g.inputs, g.outputs, tuple(g.cut_candidates))


def load_both(monkeypatch, source, **kwargs) -> tuple[tuple, tuple]:
    """(digest with every float weight left out of checking/inference, digest with none)."""
    monkeypatch.setattr(frontend, "STRIP_MIN_BYTES", 1)
    stripped = digest(frontend.load(source, **kwargs))
    monkeypatch.setattr(frontend, "STRIP_MIN_BYTES", 1 << 62)
    full = digest(frontend.load(source, **kwargs))
    return stripped, full


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_load_the_same_with_and_without_weights(monkeypatch, name):
    stripped, full = load_both(monkeypatch, zoo.make(name, **SMALL[name]), name=name)
    assert stripped == full


def _reshape_model(ir_version: int = 8) -> onnx.ModelProto:
    """x [1, 64] -> MatMul(w [64, 512]) -> Reshape to Concat(Shape(x)[0], 8, 64) -> Relu; the
    Reshape target comes from shape arithmetic over the input and an int64 initializer."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([8, 64], np.int64), "tail"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="batch"),
             helper.make_node("Concat", ["n", "tail"], ["target"], axis=0, name="target"),
             helper.make_node("Reshape", ["y", "target"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["out"], name="relu")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])]
    if ir_version < 4:  # old exporters list every initializer among the graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "reshape", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 64])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             ir_version=ir_version)


@pytest.mark.parametrize("ir_version", [3, 8])
def test_shape_arithmetic_and_old_ir_load_the_same(monkeypatch, ir_version):
    stripped, full = load_both(monkeypatch, _reshape_model(ir_version), shapes={"x": (2, 64)})
    assert stripped == full
    assert stripped[5][0].shape == (2, 8, 64)  # the output's inferred shape


def test_the_large_weight_is_left_out_but_nothing_else(monkeypatch):
    model = _reshape_model()
    light = frontend._without_weights(model)
    assert [t.name for t in light.graph.initializer] == ["tail", "zero", "one"]
    assert [vi.name for vi in light.graph.input] == ["x", "w"]
    assert [d.dim_value for d in light.graph.input[1].type.tensor_type.shape.dim] == [64, 512]
    assert list(light.graph.node) == list(model.graph.node)
    assert light.opset_import == model.opset_import and light.ir_version == model.ir_version
    monkeypatch.setattr(frontend, "STRIP_MIN_BYTES", 1 << 62)
    assert frontend._without_weights(model) is model  # nothing large: no copy at all


def test_a_weight_shorter_than_its_shape_is_refused_like_the_checker_does(tmp_path):
    model = _reshape_model()
    w = model.graph.initializer[0]
    w.raw_data = w.raw_data[:-4]
    with pytest.raises(ModelError, match=r"not a valid ONNX model .*tensor name: w.* raw_data "
                                         r"size \(131068 bytes\) is too small"):
        frontend.load(model, shapes={"x": (2, 64)})
    path = tmp_path / "short.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"short: not a valid ONNX model .*tensor name: w"):
        frontend.load(path, shapes={"x": (2, 64)})


def test_a_model_read_from_a_file_loads_like_its_proto(tmp_path):
    model = zoo.make("resnet", **SMALL["resnet"])
    path = tmp_path / "resnet.onnx"
    onnx.save(model, str(path))
    assert digest(frontend.load(path)) == digest(frontend.load(model, name="resnet"))


def test_the_callers_model_is_left_as_it_was():
    model = _reshape_model()
    before = model.SerializeToString()
    frontend.load(model, shapes={"x": (2, 64)})
    assert model.SerializeToString() == before


def test_a_large_model_logs_its_long_phases(monkeypatch):
    lines: list[str] = []
    model = zoo.make("chain", **SMALL["chain"])
    frontend.load(model, name="chain", log=lines.append)
    assert lines == []  # small: silent
    monkeypatch.setattr(frontend, "BIG_MODEL_BYTES", 1)
    frontend.load(model, name="chain", log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("chain: ") and "hashing" in lines[0]


def test_a_model_handed_over_becomes_the_graphs_model():
    model = zoo.make("chain", **SMALL["chain"])
    kept = digest(frontend.load(model, name="chain"))
    g = frontend.load(model, name="chain", copy=False)
    assert g.model is model and digest(g) == kept
