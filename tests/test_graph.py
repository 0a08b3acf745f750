"""Unit tier: ONNX -> LayerGraph, features and cuts. No TVM compilation."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.errors import SplitError


def _conv_dense_model() -> onnx.ModelProto:
    """input [1,3,8,8] -> Conv 3->4, 3x3, pad 1 (+bias) -> Relu -> Flatten -> Gemm 256->5."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((5, 256)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "cd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_flops_of_conv_and_dense_by_hand():
    g = ts.load(_conv_dense_model())
    assert [layer.name for layer in g.layers] == ["conv", "fc"]
    conv, fc = g.layers
    # Conv: every one of the 4x8x8 outputs sums 3 channels x 3x3 kernel = 27 MACs.
    assert conv.macs == 4 * 8 * 8 * 27 == 6912
    # FLOPs: 2 per MAC, + 1 per element for Relu; Flatten is free.
    assert conv.flops == 2 * 6912 + 256
    assert conv.ops == ("Conv", "Relu", "Flatten")
    assert conv.param_bytes == (4 * 3 * 3 * 3 + 4) * 4
    assert conv.outputs[0].shape == (1, 256) and conv.output_bytes == 1024
    # Dense 256 -> 5: 1280 MACs.
    assert fc.macs == 256 * 5 and fc.flops == 2 * 1280
    assert fc.param_bytes == (5 * 256 + 5) * 4
    assert dict(conv.attrs)["kernel_shape"] == (3, 3)
    assert dict(conv.attrs)["weight_shape"] == (4, 3, 3, 3)


def test_conv_bn_relu_is_one_layer_and_names_come_from_onnx():
    g = ts.load(zoo.make("resnet"))
    stem = g.layer("conv1")
    assert stem.ops == ("Conv", "BatchNormalization", "Relu")
    add = g.layer("block1_add")
    assert add.ops == ("Add", "Relu") and len(add.inputs) == 2
    node_names = {n.name for n in g.model.graph.node}
    assert {layer.name for layer in g.layers} <= node_names
    # every ONNX node belongs to exactly one layer
    owned = [n for layer in g.layers for n in layer.nodes]
    assert sorted(owned) == sorted(node_names)


@pytest.mark.parametrize("name", zoo.names())
def test_layers_are_topologically_ordered(name):
    kw = {"input_size": 32, "width": 0.125} if name == "vgg16" else {}
    g = ts.load(zoo.make(name, **kw))
    for i, j, _ in g.edges:
        assert i < j
    assert len(g.cut_candidates) == len(g.layers) - 1


def test_cut_inside_skip_connection_carries_two_tensors():
    g = ts.load(zoo.make("resnet"))
    cut = g.cut_after("block1_conv1")
    names = {t.name for t in cut.tensors}
    assert len(cut.tensors) == 2
    assert g.layer("conv1").outputs[0].name in names          # the skip path
    assert g.layer("block1_conv1").outputs[0].name in names   # the main path
    assert cut.nbytes == sum(t.nbytes for t in cut.tensors)


def test_cut_inside_inception_branches():
    g = ts.load(zoo.make("inception"))
    cut = g.cut_after("inc1_branch3x3_conv")
    # pool1's output still feeds the 5x5 and pool branches; two branch results wait for the concat
    assert len(cut.tensors) == 3
    after_concat = g.cut_after("inc1_concat")
    assert len(after_concat.tensors) == 1


def test_every_topological_cut_on_a_small_dag():
    g = ts.load(zoo.make("inception"))
    # restrict to the first inception module's branches by counting ideals of the whole graph
    cuts = list(g.topological_cuts())
    assert len(cuts) == len(set(cuts))
    for ideal in cuts[:200]:
        tensors = g.crossing(ideal)
        assert tensors  # a proper cut always moves something
    # every prefix of the topological order is one of them
    prefixes = {frozenset(range(k + 1)) for k in range(len(g.layers) - 1)}
    assert prefixes <= set(cuts)
    # a chain has exactly n-1 topological cuts
    chain = ts.load(zoo.make("chain"))
    assert len(list(chain.topological_cuts())) == len(chain.layers) - 1


def test_crossing_refuses_a_set_that_is_not_downward_closed():
    g = ts.load(zoo.make("chain"))
    with pytest.raises(SplitError, match="would run before its input"):
        g.crossing({1})


def test_good_cuts_are_where_outputs_shrink():
    g = ts.load(zoo.make("vgg16", input_size=32, width=0.125))
    good = [c.after for c in g.cut_candidates if g.good_cut(c)]
    assert "pool1" in good and "conv1_1" not in good


def test_full_vgg16_features():
    g = ts.load(zoo.make("vgg16"))
    fc1 = g.layer("fc1")
    assert fc1.macs == 25088 * 4096
    assert fc1.param_bytes == (25088 * 4096 + 4096) * 4
    assert g.layer("conv1_1").macs == 224 * 224 * 64 * 3 * 9
    assert sum(1 for layer in g.layers if layer.op == "Conv") == 13
