"""Quantized ONNX made in code by onnxruntime.quantization from zoo models: QOperator format
(QLinearConv, QLinearMatMul, com.microsoft QGemm/QLinearAdd/...), QDQ format and dynamic
quantization (ConvInteger, MatMulInteger, DynamicQuantizeLinear).

``quantized.rewrite`` alone (onnxruntime runs the original and the rewritten graph) needs no TVM;
the build tests split, build for x86_64 and compare the chained stages with onnxruntime on the
ORIGINAL model: integer tensors exactly, float outputs to 1e-5 (exactly, measured).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmsplit import quantized, zoo

FORMATS = ["QOperator", "QDQ", "dynamic"]
SIZES = {"chain": dict(width=0.25), "resnet": dict(width=0.25), "vit": dict(width=0.5)}
_made: dict[tuple[str, str], onnx.ModelProto] = {}


def feeds(seed: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)}


def quantize(name: str, fmt: str, tmp_path_factory) -> onnx.ModelProto:
    """zoo ``name`` quantized by onnxruntime: static (uint8 activations, int8 weights,
    calibrated on 4 images) in QOperator or QDQ format, or dynamic."""
    if (name, fmt) in _made:
        return _made[(name, fmt)]
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([feeds(seed) for seed in range(10, 14)])

        def get_next(self):
            return next(self.batches, None)

    d = tmp_path_factory.mktemp(f"{name}_{fmt}")
    src, dst = d / "float.onnx", d / "quantized.onnx"
    onnx.save(zoo.make(name, **SIZES[name]), src)
    if fmt == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        quantize_static(str(src), str(dst), Images(), quant_format=getattr(QuantFormat, fmt),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    _made[(name, fmt)] = onnx.load(str(dst))
    return _made[(name, fmt)]


def run_ort(model: onnx.ModelProto, x, names=None, optimize: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:  # the ONNX semantics of QDQ, not onnxruntime's fused integer kernels
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names or ():
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(list(names) if names else None, x)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                   for n in model.graph.node)


# ---- the rewrite, without TVM ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["QOperator", "dynamic"])
@pytest.mark.parametrize("name", list(SIZES))
def test_rewrite_leaves_only_ops_tvm_imports_and_equals_onnxruntime(name, fmt, tmp_path_factory):
    model = quantize(name, fmt, tmp_path_factory)
    before = ops(model)
    assert before["QLinearConv"] + before["ConvInteger"] >= 1
    out = quantized.rewrite(model)
    after = ops(out)
    assert not {op for op in after if op.split("::")[-1] in quantized.REWRITTEN_OPS}, after
    assert not any("com.microsoft" in op for op in after)
    onnx.checker.check_model(out, full_check=True)
    # every tensor of the original graph, integer ones exactly, on both optimisation levels
    names = [o for n in model.graph.node for o in n.output if o]
    x = feeds()
    for optimize in (True, False):
        want = run_ort(model, x, names, optimize)
        got = run_ort(out, x, names, optimize)
        for n, a, b in zip(names, want, got):
            if np.issubdtype(a.dtype, np.integer):
                if name == "vit" and fmt == "QOperator" and not optimize and "gelu_add" in n:
                    # onnxruntime's unoptimised QLinearAdd kernel rounds differently from its
                    # own optimised graph; the rewrite equals the optimised one (checked above)
                    assert np.abs(a.astype(np.int64) - b).max() <= 1, n
                    continue
                assert np.array_equal(a, b), (n, optimize, int((a != b).sum()))
            else:
                assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max()), (n, optimize)


def test_integer_accumulation_is_exact_below_2_to_24():
    w = np.random.default_rng(0).integers(-128, 128, (8, 3, 3, 3)).astype(np.int8)
    bound = quantized.accumulator_bound(w, None, np.dtype(np.uint8), np.uint8(128))
    assert bound == int(np.abs(w.astype(np.int64)).reshape(8, -1).sum(1).max()) * 128
    assert bound < quantized.EXACT_LIMIT


def test_qlinear_matmul_with_per_column_scales_equals_onnxruntime():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 5, 16)).astype(np.uint8)
    b = rng.integers(-128, 128, (16, 6)).astype(np.int8)
    inits = [numpy_helper.from_array(v, k) for k, v in (
        ("a_s", np.float32(0.02)), ("a_zp", np.uint8(120)), ("b", b),
        ("b_s", rng.uniform(0.001, 0.01, 6).astype(np.float32)), ("b_zp", np.zeros(6, np.int8)),
        ("y_s", np.float32(0.05)), ("y_zp", np.uint8(7)))]
    node = helper.make_node("QLinearMatMul", ["a", "a_s", "a_zp", "b", "b_s", "b_zp", "y_s", "y_zp"],
                            ["y"], name="qmm")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [2, 5, 6])], inits),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    out = quantized.rewrite(model)
    assert "QLinearMatMul" not in ops(out) and "qmm" in {n.name for n in out.graph.node}
    (want,), (got,) = run_ort(model, {"a": a}), run_ort(out, {"a": a})
    assert np.array_equal(want, got)


def test_what_is_not_rewritten_is_listed():
    from tvmsplit.errors import UnsupportedOpsError

    import tvmsplit as ts

    f = TensorProto.FLOAT
    nodes = [helper.make_node("QAttention", ["x"], ["y"], name="qattn", domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", f, [1, 4])],
        [helper.make_tensor_value_info("y", f, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8)
    with pytest.raises(UnsupportedOpsError) as info:
        ts.load(model)
    assert info.value.ops == {"com.microsoft::QAttention": ["qattn"]}


# ---- load, split, build, run ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["chain", "resnet"])
def test_quantized_cnn_splits_builds_and_equals_onnxruntime(name, fmt, tmp_path, tmp_path_factory):
    import tvmsplit as ts
    from tvmsplit.check import check_bundle

    model = quantize(name, fmt, tmp_path_factory)
    g = ts.load(model)
    # a cut carrying only quantized (uint8) activations (and a dynamic scale, a scalar) exists:
    # 1/4 of the float bytes
    uint8_cuts = [c for c in g.cut_candidates if c.tensors and any(t.dtype == "uint8" for t in c.tensors)
                  and all(t.dtype == "uint8" or np.prod(t.shape) == 1 for t in c.tensors)]
    assert uint8_cuts, [(c.after, [t.dtype for t in c.tensors]) for c in g.cut_candidates]
    cuts = [uint8_cuts[len(uint8_cuts) // 2].after, g.cut_candidates[-3].after]
    cuts = sorted(set(cuts), key=[layer.name for layer in g.layers].index)
    bundle = ts.build_bundle(g, ts.plan_split(g, split_at=cuts), tmp_path / "bundle")
    x = feeds()
    report = check_bundle(bundle, g, x)
    exact = fmt != "dynamic" or name == "chain"  # resnet dynamic: float BatchNorm after ConvInteger
    assert report.ok and report.rel <= (0.0 if exact else 1e-6), report.stages
    (want,) = run_ort(model, x)
    assert np.abs(report.outputs["output"] - want).max() <= (0.0 if exact else 1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_vit_builds_and_equals_onnx_semantics(fmt, tmp_path, tmp_path_factory):
    """QOperator and dynamic: == onnxruntime. QDQ: == onnxruntime with graph optimisations off
    (the ONNX semantics of Q/DQ around float ops); its optimised graph runs fused integer
    kernels (QLinearSoftmax, QLinearMatMul of two activations ...) that differ by a few steps."""
    import tvmsplit as ts
    from tvmsplit.runtime.stage import StageRunner

    model = quantize("vit", fmt, tmp_path_factory)
    g = ts.load(model)
    bundle = ts.build_bundle(g, ts.plan_split(g, split_at=["block1_add2"] if fmt == "dynamic"
                                              else []), tmp_path / "bundle")
    x = feeds()
    live = dict(x)
    for stage in bundle.stages:
        with StageRunner(stage.library, stage.plan) as runner:
            live.update(runner.run({t.name: live[t.name] for t in stage.plan.inputs}))
    (want,) = run_ort(model, x, optimize=fmt != "QDQ")
    assert np.abs(live["output"] - want).max() <= (1e-5 if fmt == "dynamic" else 0.0)
    # check's reference knows it: a QDQ model is compared with its ONNX semantics
    from tvmsplit.check import check_bundle, is_qdq

    assert is_qdq(model) == (fmt == "QDQ")
    assert check_bundle(bundle, g, x).ok


def test_dynamic_quantize_lstm_becomes_an_lstm_and_builds(tmp_path, tmp_path_factory):
    """com.microsoft DynamicQuantizeLSTM (quantize_dynamic of the zoo LSTM): an LSTM with the
    dequantized weights, one layer, built; == onnxruntime on the rewritten graph, and within
    the activations' quantization noise of onnxruntime's DynamicQuantizeLSTM."""
    import tvmsplit as ts
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tvmsplit.check import check_bundle

    d = tmp_path_factory.mktemp("lstm_dynamic")
    onnx.save(zoo.make("lstm"), d / "float.onnx")
    quantize_dynamic(str(d / "float.onnx"), str(d / "q.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM"])
    model = onnx.load(str(d / "q.onnx"))
    assert ops(model)["com.microsoft::DynamicQuantizeLSTM"] == 2
    g = ts.load(model)
    lstms = [layer for layer in g.layers if layer.op == "LSTM"]
    assert len(lstms) == 2 and all(len(layer.nodes) == 1 for layer in lstms)
    bundle = ts.build_bundle(g, ts.plan_split(g, split_at=[lstms[0].name]), tmp_path / "b")
    x = feeds()
    report = check_bundle(bundle, g, x)
    assert report.ok and report.rel < 1e-5, report.stages
    (want,) = run_ort(model, x)
    assert np.abs(report.outputs["output"] - want).max() < 1e-2 * np.abs(want).max()
