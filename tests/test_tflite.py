"""TFLite models in: detected by content, layers named from TFLite tensors, split, built with TVM's
Relax TFLite frontend, == the TFLite interpreter (ai-edge-litert, builtin kernels, no delegate).

A model built in code (``tflitebuild.small_cnn``: convs, a depthwise conv, a skip ADD, pool,
RESHAPE, FULLY_CONNECTED, SOFTMAX) covers the operators the real ones lack. The two real models: MediaPipe's ``hand_recrop.tflite`` (float32, CONV_2D / DEPTHWISE_CONV_2D /
PRELU / MAX_POOL_2D / PAD / ADD / STRIDED_SLICE) and ``face_detection_short_range.tflite``
(BlazeFace; float16 weights behind DEQUANTIZE, two outputs), copied unchanged from the
``mediapipe==0.10.14`` wheel into ``tests/data/tflite`` (Apache-2.0; see the README there). That
wheel itself is not a test extra: it pins ``protobuf<5`` and pulls jax and opencv-contrib.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import tvmsplit as ts
from tvmsplit.check import check_bundle, reference, reference_name
from tvmsplit.errors import ModelError, UnsupportedOpsError
from tvmsplit.tflitebuild import small_cnn
from tvmsplit.tflitefront import TfliteModel, is_tflite

from cli_helpers import invoke, ok

DATA = Path(__file__).parent / "data" / "tflite"
HAND = DATA / "hand_recrop.tflite"
FACE = DATA / "face_detection_short_range.tflite"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _interpreter():
    pytest.importorskip("ai_edge_litert", reason="pip install -e '.[test]' installs ai-edge-litert")


def inputs(g: ts.LayerGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """An image-like input in [-1, 1], as MediaPipe normalises its frames."""
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-1, 1, t.shape).astype(t.dtype) for t in g.inputs}


def test_detected_by_content_not_by_name(tmp_path):
    disguised = tmp_path / "looks_like.onnx"
    shutil.copyfile(HAND, disguised)
    assert is_tflite(disguised) and not is_tflite(Path(__file__))
    g = ts.load(disguised)
    assert isinstance(g.model, TfliteModel) and g.name == "looks_like"
    assert reference_name(g) == "tflite"
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(ModelError, match="cannot read .* as TFLite"):
        ts.load(broken)
    garbage = tmp_path / "garbage.tflite"  # no identifier: read as ONNX, and the error says both
    garbage.write_bytes(b"\x07not a model")
    with pytest.raises(ModelError, match="neither an ONNX nor a TFLite model"):
        ts.load(garbage)


def test_layers_are_tflite_operators_named_by_their_tensors():
    g = ts.load(HAND)
    first = g.layers[0]
    assert (first.name, first.op, first.ops) == ("conv2d", "CONV_2D", ("CONV_2D", "PRELU"))
    assert first.outputs[0].shape == (1, 128, 128, 8)
    assert first.macs == 128 * 128 * 8 * 3 * 3 * 3 and first.attr("weight_shape") == (8, 3, 3, 3)
    assert len({layer.name for layer in g.layers}) == len(g.layers) == 50
    assert [t.name for t in g.inputs] == ["input_1"] and [t.name for t in g.outputs] == ["output_crop"]
    assert 100_000 < g.param_bytes < 123_792  # every weight buffer counted once, inside the file

    face = ts.load(FACE)
    # float16 weights: each DEQUANTIZE is weight preparation inside the layer that reads it
    assert not any(layer.op == "DEQUANTIZE" for layer in face.layers)
    convs = [layer for layer in face.layers if layer.op == "CONV_2D"]
    assert all(layer.ops[0] == "DEQUANTIZE" for layer in convs)
    assert [t.name for t in face.outputs] == ["regressors", "classificators"]


@pytest.mark.parametrize("model,cuts", [
    (HAND, ("conv2d_4",)),                                  # 2 tensors cross (a skip path)
    (HAND, ("conv2d_4", "batch_normalization_9")),
    (FACE, ("conv2d_6",)),
    (FACE, ("conv2d_6", "depthwise_conv2d_11")),
])
def test_split_chain_matches_the_tflite_interpreter(model, cuts, tmp_path):
    g = ts.load(model)
    plan = ts.plan_split(g, split_at=list(cuts), targets=["x86_64"])
    bundle = ts.build_bundle(g, plan, tmp_path / "bundle")
    x = inputs(g)
    report = check_bundle(bundle, g, x)
    assert len(report.stages) == len(cuts) + 1
    assert all(s.ran and s.chained for s in report.stages)
    assert report.ok and report.rel < 1e-5, report.stages
    ref = reference(g, x, [t.name for t in g.outputs])
    for t in g.outputs:
        assert np.abs(report.outputs[t.name] - ref[t.name]).max() <= 1e-5 * np.abs(ref[t.name]).max()
    assert sum(s.plan.param_bytes for s in bundle.stages) == g.param_bytes


def test_a_stage_cross_builds_for_rpi4b(tmp_path):
    g = ts.load(HAND)
    plan = ts.plan_split(g, split_at=["conv2d_4"], targets=["x86_64", "rpi4b"])
    bundle = ts.build_bundle(g, plan, tmp_path / "bundle")
    report = check_bundle(bundle, g, inputs(g))
    assert [s.ran for s in report.stages] == [True, False] and report.ok
    lib = bundle.stages[1].library.read_bytes()
    assert lib[:4] == b"\x7fELF" and lib[18] == 183  # e_machine EM_AARCH64


def test_cli_build_check_names_the_tflite_reference(tmp_path):
    result = ok(invoke("build", HAND, "--split-at", "conv2d_4", "-o", tmp_path / "b", "--check"))
    assert "check vs tflite: " in result.stdout and "OK" in result.stdout


@pytest.mark.parametrize("cuts", [("conv2",), ("conv2", "fc1")])
def test_a_model_built_in_code_splits_and_matches_the_interpreter(cuts, tmp_path):
    path = tmp_path / "small.tflite"
    path.write_bytes(small_cnn(seed=3))
    g = ts.load(path)
    assert [layer.name for layer in g.layers] == ["conv1", "dw1", "conv2", "add1", "pool1", "fc1",
                                                  "fc2", "probs"]
    assert g.layer("fc1").macs == 16 * 128 and g.layer("pool1").ops == ("MAX_POOL_2D", "RESHAPE")
    assert len(g.cut_after("conv2").tensors) == 2  # conv1's output skips to add1
    bundle = ts.build_bundle(g, ts.plan_split(g, split_at=list(cuts)), tmp_path / "b")
    x = inputs(g, seed=1)
    report = check_bundle(bundle, g, x)
    assert all(s.ran and s.chained for s in report.stages) and report.rel < 1e-5, report.stages
    probs = report.outputs["probs"]
    assert probs.shape == (1, 5) and abs(float(probs.sum()) - 1) < 1e-5


def test_a_custom_operator_is_listed_by_layer_name(tmp_path):
    path = tmp_path / "custom.tflite"
    path.write_bytes(small_cnn(custom_op="MysteryOp"))
    with pytest.raises(UnsupportedOpsError) as info:
        ts.load(path)
    assert info.value.ops == {"MysteryOp": ["mystery"]}
    assert "TFLite importer" in str(info.value) and "split them off" not in str(info.value)
