"""The command line as a user meets it: help, zoo, inspect, targets, build (+ --check), demo."""
from __future__ import annotations

import json
import os
import stat

import onnx
import pytest

import tvmsplit
from tvmsplit.cli import cli

from cli_helpers import invoke, ok

ZOO = ["chain", "resnet", "inception", "vgg16", "mobilenetv2", "lstm", "gru", "vit", "bert"]
TARGETS = ["x86_64", "rpi3b", "rpi4b", "cuda-edge", "jetson-orin"]
CHAIN_LAYERS = ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5", "pool3", "fc1", "fc2"]


@pytest.fixture(autouse=True)
def _build_cache(tmp_path_factory, monkeypatch):
    """A tmp-based build cache shared by this session's tests (never ~/.cache)."""
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "tvmsplit-cache"))


# ---- help ---------------------------------------------------------------------------------------
def test_group_help():
    for flag in ("--help", "-h"):
        out = ok(invoke(flag)).stdout
        assert out.startswith("Usage: tvmsplit")
        for name in cli.commands:
            assert name in out


def test_no_arguments_shows_usage():
    from importlib.metadata import version

    result = invoke()
    assert "Usage: tvmsplit" in result.output
    # a group called without a command: click exits 0 up to 8.1, 2 (a usage error) since 8.2
    major, minor = (int(p) for p in version("click").split(".")[:2])
    assert result.exit_code == (2 if (major, minor) >= (8, 2) else 0), result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command):
    out = ok(invoke(command, "--help")).stdout
    # (`testbed` hands its arguments to its argparse entry point, which writes "usage:")
    assert out.lower().startswith(f"usage: tvmsplit {command}")
    assert "--help" in out and "options:" in out.lower()


def test_commands_are_the_documented_ones():
    assert {"inspect", "build", "demo", "zoo", "targets"} <= set(cli.commands)


def test_version():
    assert tvmsplit.__version__ in ok(invoke("--version")).stdout


# ---- zoo ----------------------------------------------------------------------------------------
def test_zoo_lists_the_models():
    assert ok(invoke("zoo")).stdout.split() == ZOO


def test_zoo_writes_a_loadable_model(tmp_path):
    path = tmp_path / "x.onnx"
    out = ok(invoke("zoo", "chain", "-o", path)).stdout
    assert str(path) in out and "MB" in out
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    g = tvmsplit.load(path)
    assert [layer.name for layer in g.layers] == CHAIN_LAYERS
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]  # no temp file left


def test_zoo_options(tmp_path):
    path = tmp_path / "small.onnx"
    ok(invoke("zoo", "vgg16", "-o", path, "--input-size", "32", "--width", "0.125"))
    g = tvmsplit.load(path)
    assert g.inputs[0].shape == (1, 3, 32, 32)


def test_zoo_file_has_normal_permissions(tmp_path):
    """A written model is an ordinary file: its mode follows the umask (0644 under umask 022), like
    any file a user creates; it must not stay 0600 from the temporary file it was written to."""
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "shared.onnx"
    ok(invoke("zoo", "chain", "-o", path))
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask, f"mode {oct(mode)}, expected {oct(0o666 & ~umask)}"


# ---- inspect ------------------------------------------------------------------------------------
def test_inspect_table_lists_every_layer():
    out = ok(invoke("inspect", "zoo:chain")).stdout
    lines = out.splitlines()
    assert lines[0].startswith("chain: 10 layers")
    assert "layer" in lines[1] and "MFLOPs" in lines[1]
    rows = [ln.split() for ln in lines[3:3 + len(CHAIN_LAYERS)]]
    assert [r[1] for r in rows] == CHAIN_LAYERS
    assert [int(r[0]) for r in rows] == list(range(len(CHAIN_LAYERS)))
    assert any(ln.rstrip().endswith("*") for ln in lines[3:])  # some good cut is marked


def test_inspect_onnx_file_with_shape(tmp_path):
    path = tmp_path / "chain.onnx"
    ok(invoke("zoo", "chain", "-o", path))
    out = ok(invoke("inspect", path, "--shape", "input=1,3,32,32")).stdout
    for name in CHAIN_LAYERS:
        assert name in out


def test_inspect_json():
    result = ok(invoke("inspect", "zoo:chain", "--json"))
    assert result.stderr == ""  # pipeable: stdout is only the JSON
    data = json.loads(result.stdout)
    assert data["model"] == "chain"
    assert [t["name"] for t in data["inputs"]] == ["input"]
    assert data["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert [t["name"] for t in data["outputs"]] == ["output"]
    layers = data["layers"]
    assert [layer["name"] for layer in layers] == CHAIN_LAYERS
    for k, layer in enumerate(layers):
        for field in ("name", "op", "macs", "flops", "param_bytes", "output_bytes", "cut_after"):
            assert field in layer, f"{field} missing from layer {layer.get('name')}"
        assert layer["index"] == k
        assert isinstance(layer["macs"], int) and isinstance(layer["flops"], int)
        assert layer["flops"] >= 2 * layer["macs"] >= 0
        assert layer["param_bytes"] >= 0 and layer["output_bytes"] > 0
        if k < len(layers) - 1:
            cut = layer["cut_after"]
            assert cut["bytes"] == sum(4 * _prod(t["shape"]) for t in cut["tensors"])
            assert isinstance(cut["good"], bool)
        else:
            assert layer["cut_after"] is None
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["conv1"]["op"] == "Conv" and by_name["conv1"]["macs"] == 32 * 32 * 32 * 27
    assert by_name["pool1"]["op"] == "MaxPool" and by_name["pool1"]["macs"] == 0
    assert by_name["pool1"]["cut_after"]["bytes"] == 32 * 16 * 16 * 4


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ---- targets ------------------------------------------------------------------------------------
def test_targets_lists_the_builtin_ones():
    out = ok(invoke("targets")).stdout
    names = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    for name in TARGETS:
        assert name in names


# ---- build ----------------------------------------------------------------------------------------
def test_build_with_check(tmp_path):
    out = tmp_path / "bundle"
    result = ok(invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "--targets", "x86_64",
                       "-o", out, "--check"))
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("check vs onnxruntime") and last.endswith("OK"), result.stdout
    assert "FAILED" not in result.stdout
    files = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in files
    libs = [f for f in files if f.endswith(".so")]
    assert len(libs) == 3 and len(files) == 4
    bundle = tvmsplit.Bundle.load(out)
    assert [s.plan.layers[-1] for s in bundle.stages] == ["pool1", "pool2", "fc2"]
    assert all(s.target["name"] == "x86_64" for s in bundle.stages)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == []


def test_build_check_with_absurd_tolerance_fails(tmp_path):
    out = tmp_path / "bundle"
    result = invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "--targets", "x86_64",
                    "-o", out, "--check", "--tolerance", "1e-30")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("FAILED"), result.stdout
    # The verdict is honest: TVM's floats differ a little from onnxruntime's (not exactly 0).
    rel = float(last.split("max rel err ")[1].split()[0])
    assert 0 < rel < 1e-3


def test_build_mixed_targets_cross_compiles(tmp_path):
    out = tmp_path / "bundle"
    result = ok(invoke("build", "zoo:chain", "--split-at", "pool3", "--targets", "x86_64,rpi4b",
                       "-o", out, "--check"))
    assert "not runnable on this machine, skipped" in result.stdout
    assert result.stdout.strip().endswith("OK")
    bundle = tvmsplit.Bundle.load(out)
    assert [s.target["name"] for s in bundle.stages] == ["x86_64", "rpi4b"]
    assert bundle.stages[1].library.read_bytes()[:4] == b"\x7fELF"


def test_rebuild_replaces_existing_bundle(tmp_path):
    out = tmp_path / "bundle"
    ok(invoke("build", "zoo:chain", "--split-at", "pool1", "-o", out))
    assert len(tvmsplit.Bundle.load(out).stages) == 2
    ok(invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "-o", out))
    assert len(tvmsplit.Bundle.load(out).stages) == 3
    assert len(list(out.glob("*.so"))) == 3  # the old libraries are gone
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no .bundle.old-* / .tmp-*


# ---- demo ---------------------------------------------------------------------------------------
def test_demo(tmp_path):
    out = tmp_path / "demo"
    result = ok(invoke("demo", "-o", out))
    assert result.stdout.startswith("model: zoo resnet")
    assert result.stdout.strip().splitlines()[-1].endswith("OK")
    bundle = tvmsplit.Bundle.load(out)
    assert [s.target["name"] for s in bundle.stages] == ["x86_64", "x86_64", "x86_64"]
    assert any(len(s.plan.outputs) > 1 for s in bundle.stages[:-1])  # a cut inside a skip connection
    # the stages really ran as workers: a per-stage/per-hop trace and a streaming throughput line
    assert "hop stage 0 -> stage 1" in result.stdout and "req/s" in result.stdout


def test_run_with_check_and_input_file(tmp_path):
    import numpy as np

    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = ok(invoke("run", "zoo:chain", "--split-at", "pool1", "--input", tmp_path / "x.npy",
                       "--requests", "5", "--check"))
    assert "stage 1 [x86_64]" in result.stdout and result.stdout.strip().endswith("OK")


def test_run_refuses_a_stage_this_machine_cannot_run(tmp_path):
    result = invoke("run", "zoo:chain", "--split-at", "pool1", "--targets", "x86_64,rpi4b")
    assert result.exit_code == 1
    assert "rpi4b" in result.stderr and "Traceback" not in result.output
