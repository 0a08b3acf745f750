"""Testbed tier (root): `tvmsplit evaluate --input-bytes N` on a tiny image model: the client
sends a JPEG, each device's decode is measured and priced, every candidate runs with the JPEG
(outputs == onnxruntime on the same decoded tensor) and the regret is >= 1."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_testbed import _require_cgroups


def _tiny_cnn(path):
    """input [1, 3, 16, 16] -> conv 3x3 (8) + relu -> global average pool -> flatten -> fc 10."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    fw = numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(np.zeros(10, np.float32), "fb")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tinycnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], [w, b, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_evaluate_with_a_jpeg_input_prices_and_runs_the_decode(tmp_path, monkeypatch):
    _require_cgroups()
    from cli_helpers import invoke, ok

    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "cache"))
    model = _tiny_cnn(tmp_path / "tinycnn.onnx")
    result = ok(invoke("evaluate", model, "--link", "3g", "--input-bytes", 600, "--requests", 3,
                       "--rounds", 1, "--json"))
    data = json.loads(result.stdout)
    sent = data["input"]
    assert sent["encoding"] == "jpeg" and sent["raw_bytes"] == 3 * 16 * 16 * 4
    assert 0 < sent["bytes"] < sent["raw_bytes"] and 1 <= sent["quality"] <= 100
    assert set(sent["decode_ms"]) == {"end", "edge"} and min(sent["decode_ms"].values()) > 0
    names = [p["name"] for p in data["plans"]]
    assert names[:2] == ["all-end", "all-edge"] and len(names) >= 3
    assert data["chosen"] in names and data["regret"] >= 1.0 and data["speedup"] > 0
    for p in data["plans"]:  # every plan took the JPEG and matched onnxruntime on its decode
        assert p["latency_ms"]["n"] == (1 if p["pruned"] else 3) and p["max_rel_error"] < 1e-3
    # the decode is in the prediction of the device that runs the first layer
    by = {p["name"]: p for p in data["plans"]}
    assert by["all-end"]["predicted_compute_ms"][0] >= sent["decode_ms"]["end"]
    assert by["all-edge"]["predicted_compute_ms"][1] >= sent["decode_ms"]["edge"]
    text = invoke("evaluate", "--help").output
    assert "--input-bytes" in text and "JPEG" in text


def test_evaluate_refuses_a_bad_input_size(tmp_path):
    from tvmsplit.evaluate import EvaluationError, evaluate
    from tvmsplit.frontend import load

    g = load(_tiny_cnn(tmp_path / "tinycnn.onnx"), name="tinycnn")
    with pytest.raises(EvaluationError, match="input_bytes .* positive int, got 0"):
        evaluate(g, input_bytes=0)
