"""Tests for the in-code model zoo (tvmsplit.zoo)."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tvmsplit import zoo
from tvmsplit.errors import TvmsplitError

NAMES = ["chain", "resnet", "inception", "vgg16", "mobilenetv2", "lstm", "gru"]
TRANSFORMERS = ["vit", "bert"]  # their own tests below (bert's inputs are token ids)
# Small variants: fast to build and run.
SMALL = {name: dict(input_size=32, width=0.25) for name in NAMES}
SMALL["vgg16"] = dict(input_size=32, width=0.125)

_cache: dict[tuple, onnx.ModelProto] = {}


def small(name: str, **kwargs) -> onnx.ModelProto:
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _cache:
        _cache[key] = zoo.make(name, **{**SMALL[name], **kwargs})
    return _cache[key]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x})
    return y


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_names_and_registry():
    assert zoo.names() == NAMES + TRANSFORMERS
    assert list(zoo.MODELS) == NAMES + TRANSFORMERS
    assert all(callable(f) for f in zoo.MODELS.values())


@pytest.mark.parametrize("name", NAMES)
def test_check_model_small(name):
    onnx.checker.check_model(small(name), full_check=True)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "vgg16"])
def test_check_model_default(name):
    model = zoo.make(name)
    onnx.checker.check_model(model, full_check=True)
    s = zoo.default_shapes(name)["input"][2]
    assert dims(model.graph.input[0]) == [1, 3, s, s]


@pytest.mark.parametrize("name", NAMES)
def test_interface(name):
    model = small(name, num_classes=7)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "output"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(inp) == [1, 3, 32, 32]
    assert dims(out) == [1, 7]
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_output_is_sane(name):
    model = small(name)
    x = np.random.default_rng(123).standard_normal((1, 3, 32, 32), dtype=np.float32)
    y = run(model, x)
    assert y.shape == (1, 1000 if name == "vgg16" else 10)
    assert np.all(np.isfinite(y))
    assert 1e-3 < float(y.std()) < 1e3, f"{name}: output std {y.std()} (bad weight scaling?)"


@pytest.mark.parametrize("name", NAMES)
def test_node_names_unique_and_tensor_names_follow(name):
    model = small(name)
    node_names = [n.name for n in model.graph.node]
    assert all(node_names)
    assert len(set(node_names)) == len(node_names)
    # Convention: each node's output tensor carries its name; the last one is "output".
    for node in model.graph.node[:-1]:
        assert list(node.output) == [node.name]
    assert list(model.graph.node[-1].output) == ["output"]


@pytest.mark.parametrize("name", ["chain", "resnet", "mobilenetv2"])
def test_deterministic_by_seed(name):
    a = zoo.make(name, **SMALL[name], seed=5).SerializeToString()
    b = zoo.make(name, **SMALL[name], seed=5).SerializeToString()
    assert a == b
    c = zoo.make(name, **SMALL[name], seed=6)
    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(a).graph.initializer}
    wc = {t.name: numpy_helper.to_array(t) for t in c.graph.initializer}
    assert wa.keys() == wc.keys()
    assert not np.array_equal(wa["conv1.weight"], wc["conv1.weight"])


def _activation_adds(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = initializer_names(model)
    return [n for n in model.graph.node
            if n.op_type == "Add" and not any(i in inits for i in n.input)]


def test_resnet_structure():
    model = small("resnet")
    assert len(_activation_adds(model)) >= 3
    projections = [n for n in model.graph.node if n.op_type == "Conv" and "proj" in n.name]
    assert projections
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in projections[0].attribute}
    assert attrs["kernel_shape"] == [1, 1] and attrs["strides"] == [2, 2]
    ops = [n.op_type for n in model.graph.node]
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_inception_structure():
    model = small("inception")
    concats = [n for n in model.graph.node if n.op_type == "Concat" and len(n.input) >= 3]
    assert len(concats) >= 2
    for c in concats:
        assert onnx.helper.get_attribute_value(c.attribute[0]) == 1  # axis
    assert any(n.name == "inc1_branch3x3_conv" for n in model.graph.node)


def test_mobilenetv2_structure():
    model = small("mobilenetv2")
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    depthwise, strided = 0, 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        w = weights[n.input[1]]
        if attrs["group"] > 1:
            assert attrs["group"] == w[0] and w[1] == 1  # group == channels
            depthwise += 1
            strided += attrs["strides"] == [2, 2]
    assert depthwise >= 6 and strided >= 1
    assert len(_activation_adds(model)) >= 2
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 for n in clips)
    mins = numpy_helper.to_array(next(t for t in model.graph.initializer
                                      if t.name == clips[0].input[1]))
    assert float(mins) == 0.0


def test_vgg16_full_size_graph_only():
    model = zoo.make("vgg16")  # ~550 MB of weights; checked structurally, never run
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 13 and ops["Gemm"] == 3 and ops["MaxPool"] == 5 and ops["Relu"] == 15
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert weights["fc1.weight"] == (4096, 25088)
    assert weights["fc2.weight"] == (4096, 4096)
    assert weights["fc3.weight"] == (1000, 4096)
    assert weights["conv5_3.weight"] == (512, 512, 3, 3)
    assert sum(int(np.prod(d)) for d in weights.values()) == 138_357_544
    names = [n.name for n in model.graph.node]
    assert names[:3] == ["conv1_1", "relu1_1", "conv1_2"]
    assert names[-7:] == ["pool5", "flatten", "fc1", "relu_fc1", "fc2", "relu_fc2", "fc3"]
    assert dims(model.graph.input[0]) == [1, 3, 224, 224]
    assert dims(model.graph.output[0]) == [1, 1000]
    onnx.checker.check_model(model)  # no full_check: shape inference is covered by small variant


def test_default_shapes():
    assert zoo.default_shapes("vgg16") == {"input": (1, 3, 224, 224)}
    assert zoo.default_shapes("mobilenetv2") == {"input": (1, 3, 96, 96)}
    assert zoo.default_shapes("chain", input_size=64) == {"input": (1, 3, 64, 64)}
    with pytest.raises(TvmsplitError, match="multiple of 32"):
        zoo.default_shapes("vgg16", input_size=100)


def test_unknown_name():
    with pytest.raises(TvmsplitError) as e:
        zoo.make("alexnet")
    assert "alexnet" in str(e.value)
    for name in NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), "wide"])
def test_bad_width(width):
    with pytest.raises(TvmsplitError, match="width") as e:
        zoo.make("chain", width=width)
    assert repr(width) in str(e.value) and "> 0" in str(e.value)


@pytest.mark.parametrize("name,size,minimum", [("chain", 4, 8), ("vgg16", 16, 32),
                                               ("mobilenetv2", 8, 16), ("resnet", 0, 4)])
def test_bad_input_size(name, size, minimum):
    with pytest.raises(TvmsplitError, match=f"input_size {size} .*minimum is {minimum}"):
        zoo.make(name, input_size=size)


def test_bad_num_classes():
    with pytest.raises(TvmsplitError, match="num_classes"):
        zoo.make("chain", num_classes=0)


def test_save(tmp_path):
    path = tmp_path / "resnet.onnx"
    out = zoo.save("resnet", path, **SMALL["resnet"], seed=3)
    assert out == path
    assert os.listdir(tmp_path) == ["resnet.onnx"]
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == zoo.make("resnet", **SMALL["resnet"], seed=3) \
        .SerializeToString()
    # Overwriting works and still leaves no temporary file behind.
    zoo.save("chain", path, input_size=32)
    assert os.listdir(tmp_path) == ["resnet.onnx"]
    assert onnx.load(path).graph.node[0].name == "conv1"


def test_save_errors_leave_nothing(tmp_path):
    with pytest.raises(TvmsplitError):
        zoo.save("nope", tmp_path / "x.onnx")
    with pytest.raises(TvmsplitError, match="does not exist"):
        zoo.save("chain", tmp_path / "missing" / "x.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformers_check_run_and_are_deterministic(name):
    model = zoo.make(name, num_classes=3)
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == zoo.make(name, num_classes=3).SerializeToString()
    rng = np.random.default_rng(1)
    shapes = zoo.default_shapes(name)
    if name == "bert":
        feeds = {"input_ids": rng.integers(0, 1000, shapes["input_ids"]),
                 "attention_mask": np.ones(shapes["attention_mask"], np.int64)}
    else:
        feeds = {"input": rng.uniform(0, 1, shapes["input"]).astype(np.float32)}
    assert [i.name for i in model.graph.input] == list(shapes)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, feeds)
    assert y.shape == (1, 3) and np.all(np.isfinite(y)) and 1e-3 < float(y.std()) < 1e3
    ops = Counter(n.op_type for n in model.graph.node)
    assert (ops["Softmax"], ops["LayerNormalization"], ops["Erf"]) == (2, 5, 2)
    node_names = [n.name for n in model.graph.node]
    assert len(set(node_names)) == len(node_names) and model.graph.node[-1].output[0] == "output"


def test_transformer_sizes():
    assert zoo.default_shapes("bert", input_size=8) == {"input_ids": (1, 8),
                                                        "attention_mask": (1, 8)}
    model = zoo.make("vit", input_size=16, width=0.5)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert weights["pos_embed.value"] == (1, 17, 32) and weights["patch_embed.weight"] == (32, 3, 4, 4)
    with pytest.raises(TvmsplitError, match="multiple of 4"):
        zoo.make("vit", input_size=18)
