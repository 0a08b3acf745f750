"""LSTM, GRU, RNN and control flow: the expansion equals onnxruntime, recurrent layers split and
build, constant Ifs are inlined, and unsupported operators inside subgraphs are listed.

The expansion tests (``recurrent.expand`` run by onnxruntime against onnxruntime's own LSTM/GRU/RNN
kernels; layout 1, which onnxruntime refuses, against ``onnx.reference``) need no TVM. The zoo
tests build each stage with TVM for x86_64 (and one stage for rpi4b: cross-built, not run here)
and compare the chained stages with onnxruntime running the original recurrent nodes.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmsplit as ts
from tvmsplit import recurrent, zoo
from tvmsplit.check import check_bundle
from tvmsplit.errors import UnsupportedOpsError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DIRECTIONS = ["forward", "reverse", "bidirectional"]
VARIANTS = {
    "plain": {},
    "no-bias-no-state": dict(bias=False, initial=False),
    "clip": dict(clip=0.5),
    "sequence-lens": dict(sequence_lens=True),
    "states-only": dict(outputs=(False, True, True)),
    "y-only": dict(outputs=(True, False, False)),
    "one-step": dict(steps=1, batch=1),
}


def recurrent_model(op: str, direction: str = "forward", steps: int = 5, batch: int = 2,
                    inp: int = 3, hidden: int = 4, bias: bool = True, initial: bool = True,
                    clip: float | None = None, sequence_lens: bool = False, layout: int = 0,
                    outputs=(True, True, True), seed: int = 0, **attrs):
    """One recurrent node with random weights, and random feeds for it."""
    rng = np.random.default_rng(seed)
    g, dirs = GATES[op], 2 if direction == "bidirectional" else 1

    def rand(*shape, scale=0.5):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    inits = [numpy_helper.from_array(rand(dirs, g * hidden, inp), "W"),
             numpy_helper.from_array(rand(dirs, g * hidden, hidden), "R")]
    ins = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(numpy_helper.from_array(rand(dirs, 2 * g * hidden, scale=0.3), "B"))
    ins.append("lens" if sequence_lens else "")
    if sequence_lens:
        inits.append(numpy_helper.from_array(np.full(batch, steps, np.int32), "lens"))
    x_shape = [batch, steps, inp] if layout else [steps, batch, inp]
    s_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    feeds = {"x": rand(*x_shape, scale=1.0)}
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for s in states:
        ins.append(s if initial else "")
        if initial:
            feeds[s] = rand(*s_shape, scale=1.0)
            graph_inputs.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, s_shape))
    if "P" in attrs:
        ins += [""] * (7 - len(ins)) + ["P"]
        inits.append(numpy_helper.from_array(rand(dirs, 3 * hidden), "P"))
        del attrs["P"]
    while ins[-1] == "":
        ins.pop()
    names = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    outs = [n if want else "" for n, want in zip(names, outputs)]
    if layout:
        attrs["layout"] = 1
    if clip is not None:
        attrs["clip"] = clip
    node = helper.make_node(op, ins, outs, name="rec", hidden_size=hidden, direction=direction,
                            **attrs)
    y_shape = [batch, steps, dirs, hidden] if layout else [steps, dirs, batch, hidden]
    shapes = dict(zip(names, [y_shape, s_shape, s_shape]))
    graph = helper.make_graph([node], "rec", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o])
                               for o in outs if o], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    return model, feeds


def run_ort(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_err(got, ref) -> float:
    assert [a.shape for a in got] == [b.shape for b in ref]
    return max(float(np.abs(a - b).max()) for a, b in zip(got, ref))


# ---- the expansion, without TVM -------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", list(GATES))
def test_expansion_equals_onnxruntime(op, direction, variant):
    model, feeds = recurrent_model(op, direction, **VARIANTS[variant])
    expanded = recurrent.expand(model)
    assert op not in {n.op_type for n in expanded.graph.node}
    assert max_err(run_ort(expanded, feeds), run_ort(model, feeds)) < 1e-5


@pytest.mark.parametrize("op,attrs", [
    ("LSTM", dict(P=True)), ("LSTM", dict(P=True, clip=0.7)), ("LSTM", dict(input_forget=1)),
    ("LSTM", dict(activations=["Relu", "Tanh", "Softsign"])),
    ("GRU", dict(linear_before_reset=1)), ("GRU", dict(activations=["Softsign", "Relu"])),
    ("RNN", dict(activations=["Relu", "Softplus"], direction="bidirectional")),
])
def test_expansion_options_equal_onnxruntime(op, attrs):
    model, feeds = recurrent_model(op, **attrs)
    assert max_err(run_ort(recurrent.expand(model), feeds), run_ort(model, feeds)) < 1e-5


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", list(GATES))
def test_batch_first_layout_equals_the_onnx_reference(op, direction):
    """layout=1 ([batch, seq, ...]): onnxruntime refuses it, onnx's reference evaluator runs it."""
    from onnx.reference import ReferenceEvaluator

    model, feeds = recurrent_model(op, direction, layout=1)
    ref = ReferenceEvaluator(model).run(None, feeds)
    assert max_err(run_ort(recurrent.expand(model), feeds), ref) < 1e-5


def test_what_cannot_be_expanded_is_named():
    model, _ = recurrent_model("LSTM", activations=["Affine", "Tanh", "Tanh"])
    model.graph.node[0].name = "lstm_affine"
    (why,) = recurrent.problems(model)["LSTM"]
    assert why.startswith("lstm_affine (activation(s) Affine") and "Sigmoid" in why
    model, _ = recurrent_model("GRU")
    # weights computed in the graph: W = Identity(W0)
    model.graph.initializer[0].name = "W0"
    model.graph.node.insert(0, helper.make_node("Identity", ["W0"], ["W"], name="w_copy"))
    assert recurrent.problems(model) == {
        "GRU": ["rec (W computed in the graph, not constant weights)"]}


# ---- recurrent layers through load, split, build --------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_a_recurrent_node_is_one_layer_with_its_own_cost(name):
    g = ts.load(zoo.make(name))
    rec = [layer for layer in g.layers if layer.op == name.upper()]
    assert [layer.name for layer in rec] == [f"{name}1", f"{name}2"]
    assert all(layer.nodes == (layer.name,) for layer in rec)
    first = rec[0]  # bidirectional, 8 steps, batch 1, input 32, hidden 32
    gh = GATES[name.upper()] * 32
    assert first.macs == 8 * 1 * 2 * gh * (32 + 32)
    assert first.param_bytes == 4 * 2 * gh * (32 + 32 + 2)
    assert first.attr("direction") == "bidirectional" and first.attr("hidden_size") == 32
    from tvmsplit.predict.features import STATIC_FEATURES, layer_type, static_features

    assert layer_type(first) == "recurrent" and "steps" in STATIC_FEATURES["recurrent"]
    f = static_features(first)
    assert (f["steps"], f["batch"], f["in_features"], f["hidden"], f["directions"], f["gates"]) \
        == (8, 1, 32, 32, 2, GATES[name.upper()])


@pytest.mark.parametrize("name,cuts,targets", [
    ("lstm", ("lstm1",), ("x86_64",)),
    ("gru", ("to_seq",), ("x86_64",)),
    ("lstm", ("to_seq", "lstm1"), ("x86_64", "rpi4b", "x86_64")),
    ("gru", ("gru1", "gru2"), ("x86_64",)),
])
def test_zoo_recurrent_split_matches_onnxruntime(name, cuts, targets, tmp_path):
    g = ts.load(zoo.make(name))
    plan = ts.plan_split(g, split_at=list(cuts), targets=list(targets))
    bundle = ts.build_bundle(g, plan, tmp_path / "bundle")
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    report = check_bundle(bundle, g, {"input": x})
    per_stage = list(targets) * (len(cuts) + 1) if len(targets) == 1 else list(targets)
    assert [s.target for s in report.stages] == per_stage
    assert [s.ran for s in report.stages] == [t != "rpi4b" for t in per_stage]
    assert report.ok and report.rel < 1e-5, report.stages
    if len(targets) == 1:  # the whole chain ran here: its output is onnxruntime's
        ref = run_ort(g.model, {"input": x})[0]
        assert np.abs(report.outputs["output"] - ref).max() < 1e-5
    else:
        aarch64 = bundle.stages[1].library.read_bytes()
        assert aarch64[:4] == b"\x7fELF" and aarch64[18] == 183  # e_machine EM_AARCH64


# ---- control flow ---------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset=17):
    return helper.make_model(helper.make_graph(nodes, "cf", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _if_on_batch_size(then_scale: float, else_scale: float) -> onnx.ModelProto:
    """y = If(Shape(x)[0] == 1) then Relu(x * a) else x * b: the condition folds once x is pinned."""
    f = TensorProto.FLOAT

    def branch(name: str, scale: float) -> onnx.GraphProto:
        nodes = [helper.make_node("Mul", ["x", "s"], ["m"], name="mul"),
                 helper.make_node("Relu", ["m"], ["r"], name="relu")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info("r", f, None)],
                                 [numpy_helper.from_array(np.float32(scale), "s")])

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Equal", ["n", "one"], ["is_one"], name="is_one"),
        helper.make_node("If", ["is_one"], ["y0"], name="pick",
                         then_branch=branch("then", then_scale),
                         else_branch=branch("else", else_scale)),
        helper.make_node("Conv", ["y0", "w"], ["y"], name="conv"),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 3, 1, 1))
                                     .astype(np.float32), "w")]
    return _model(nodes, [helper.make_tensor_value_info("x", f, ["N", 3, 4, 4])],
                  [helper.make_tensor_value_info("y", f, ["N", 2, 4, 4])], inits)


def test_an_if_whose_condition_folds_is_inlined_and_builds(tmp_path):
    model = _if_on_batch_size(2.0, -3.0)
    for batch, scale in ((1, 2.0), (2, -3.0)):
        g = ts.load(model, shapes={"x": (batch, 3, 4, 4)})
        assert "If" not in {n.op_type for n in g.model.graph.node}
        assert [layer.name for layer in g.layers] == ["pick/mul", "conv"]
        x = np.random.default_rng(batch).standard_normal((batch, 3, 4, 4)).astype(np.float32)
        bundle = ts.build_bundle(g, ts.plan_split(g, split_at=["pick/mul"]), tmp_path / str(batch))
        report = check_bundle(bundle, g, {"x": x})
        assert report.ok and report.rel < 1e-6
        expected = run_ort(model, {"x": x})[0]  # the original model, If and all
        assert np.abs(report.outputs["y"] - expected).max() < 1e-5
        w = numpy_helper.to_array(model.graph.initializer[2])
        assert np.allclose(expected, np.einsum("oi,nihw->nohw", w[:, :, 0, 0],
                                               np.maximum(x * scale, 0)), atol=1e-5)


def _branch(name: str, op: str, node: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_out"], name=node)], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def _data_dependent_if(then_op: str) -> list[onnx.NodeProto]:
    """chosen = If(sum(x) > 0) then <then_op>(x) else Relu(x): the condition is data, not shape."""
    return [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["positive"], name="positive"),
            helper.make_node("If", ["positive"], ["chosen"], name="data_if",
                             then_branch=_branch("then", then_op, f"{then_op.lower()}_in_then"),
                             else_branch=_branch("else", "Relu", "relu_in_else"))]


def test_unsupported_ops_inside_loop_and_if_bodies_are_listed_at_once():
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Celu", ["v_in"], ["c"], name="celu_in_loop"),
         helper.make_node("Det", ["c"], ["d"], name="det_in_loop"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", f, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c", f, None)])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["looped"], name="the_loop", body=body),
             *_data_dependent_if("Celu"),
             helper.make_node("Add", ["looped", "chosen"], ["y"], name="add"),
             helper.make_node("Det", ["y"], ["out"], name="top_level_det")]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "trips"),
             numpy_helper.from_array(np.float32(0), "zero")]
    model = _model(nodes, [helper.make_tensor_value_info("x", f, [3, 3])],
                   [helper.make_tensor_value_info("out", f, [])], inits)
    with pytest.raises(UnsupportedOpsError) as info:
        ts.load(model)
    ops, msg = info.value.ops, str(info.value)
    assert set(ops) == {"Loop", "Celu", "Det"}
    assert ops["Loop"] == ["the_loop"]
    assert sorted(ops["Celu"]) == ["celu_in_loop in Loop 'the_loop' body",
                                   "celu_in_then in If 'data_if' then_branch"]
    assert sorted(ops["Det"]) == ["det_in_loop in Loop 'the_loop' body", "top_level_det"]
    assert "relu_in_else" not in msg and "split them off" not in msg
    assert msg.startswith("model uses 3 operator(s)") and "refused before splitting" in msg


def test_an_if_whose_condition_does_not_fold_is_listed_with_its_bodies_ops():
    f = TensorProto.FLOAT
    model = _model(_data_dependent_if("Celu"), [helper.make_tensor_value_info("x", f, [3, 3])],
                   [helper.make_tensor_value_info("chosen", f, [3, 3])],
                   [numpy_helper.from_array(np.float32(0), "zero")])
    with pytest.raises(UnsupportedOpsError) as info:
        ts.load(model)
    assert info.value.ops == {"If": ["data_if: condition not constant once shapes are pinned"],
                              "Celu": ["celu_in_then in If 'data_if' then_branch"]}


def test_a_recurrent_node_it_cannot_expand_is_listed_with_the_other_ops():
    model, _ = recurrent_model("LSTM", activations=["HardSigmoid", "Tanh", "Tanh"])
    node = model.graph.node[0]
    model.graph.node.append(helper.make_node("Celu", ["Y_h"], ["celu_out"], name="celu"))
    model.graph.output.append(helper.make_tensor_value_info("celu_out", TensorProto.FLOAT,
                                                            [1, 2, 4]))
    with pytest.raises(UnsupportedOpsError) as info:
        ts.load(model)
    assert set(info.value.ops) == {"LSTM", "Celu"}
    assert info.value.ops["LSTM"][0].startswith(f"{node.name} (activation(s) HardSigmoid")
