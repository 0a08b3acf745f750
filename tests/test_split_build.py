"""TVM tier: split every zoo model at every cut, build per target, chain the stages, compare.

The invariant: chained stage outputs equal the unsplit TVM build's output and onnxruntime's
within 1e-4 relative (max |diff| / max |reference|).
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import check_bundle, compare, random_inputs
from tvmsplit.runtime.stage import StageRunner

RTOL = 1e-4
SMALL = {"chain": {}, "resnet": {}, "inception": {}, "mobilenetv2": {"input_size": 32},
         "vgg16": {"input_size": 32, "width": 0.125}}


@pytest.fixture(scope="module")
def graphs():
    return {name: ts.load(zoo.make(name, **kw), name=name) for name, kw in SMALL.items()}


@pytest.fixture(scope="module")
def unsplit(graphs, tmp_path_factory):
    """Per model: (inputs, unsplit TVM output) from a single-stage x86_64 build."""
    out = {}
    for name, g in graphs.items():
        bundle = ts.build_bundle(g, ts.plan_split(g), tmp_path_factory.mktemp(f"{name}-whole"))
        x = random_inputs(g.inputs, seed=1)
        with StageRunner(bundle.stages[0].library, bundle.stages[0].plan) as runner:
            out[name] = (x, runner.run(x))
    return out


def _assert_matches(report, expected: dict, name: str):
    assert all(s.ran and s.chained for s in report.stages)
    assert report.rel <= RTOL, f"{name}: rel err vs onnxruntime {report.rel:.2e}"
    for key, value in expected.items():
        err = compare(report.outputs[key], value, key)
        assert err.rel <= RTOL, f"{name}: rel err vs unsplit TVM {err.rel:.2e}"


@pytest.mark.parametrize("name", list(SMALL))
def test_cut_at_every_candidate(name, graphs, unsplit, tmp_path):
    g = graphs[name]
    x, whole = unsplit[name]
    for cut in g.cut_candidates:
        plan = ts.plan_split(g, [cut.after])
        assert plan.cuts == (cut.tensors,)
        bundle = ts.build_bundle(g, plan, tmp_path / f"cut{cut.index}")
        _assert_matches(check_bundle(bundle, g, x), whole, f"{name} cut after {cut.after}")


@pytest.mark.parametrize("name", list(SMALL))
def test_three_way_split(name, graphs, unsplit, tmp_path):
    g = graphs[name]
    x, whole = unsplit[name]
    n = len(g.cut_candidates)
    points = [g.cut_candidates[n // 3].after, g.cut_candidates[2 * n // 3].after]
    bundle = ts.build_bundle(g, ts.plan_split(g, points), tmp_path / "b")
    assert len(bundle.stages) == 3
    _assert_matches(check_bundle(bundle, g, x), whole, f"{name} 3-way")


def test_three_way_cuts_inside_skip_connections(graphs, unsplit, tmp_path):
    g = graphs["resnet"]
    x, whole = unsplit["resnet"]
    plan = ts.plan_split(g, ["block1_conv1", "block3_conv2"])
    assert [len(c) for c in plan.cuts] == [2, 2]
    _assert_matches(check_bundle(ts.build_bundle(g, plan, tmp_path / "b"), g, x), whole, "resnet")


def test_cut_inside_branches_by_assignment(graphs, unsplit, tmp_path):
    """Stage 0 runs the stem and only the 5x5 branch: not a prefix of the topological order."""
    g = graphs["inception"]
    x, whole = unsplit["inception"]
    first = {"conv1", "pool1", "inc1_branch5x5_reduce_conv", "inc1_branch5x5_conv"}
    plan = ts.plan_split(g, stage_of={layer.name: 0 if layer.name in first else 1
                                        for layer in g.layers})
    assert {t.name for t in plan.cuts[0]} == {g.layer("pool1").outputs[0].name,
                                               g.layer("inc1_branch5x5_conv").outputs[0].name}
    _assert_matches(check_bundle(ts.build_bundle(g, plan, tmp_path / "b"), g, x), whole, "inception")


def test_tensor_skipping_a_whole_stage_is_forwarded(graphs, unsplit, tmp_path):
    """The skip tensor of block 1 crosses stage 1 untouched and reaches stage 2."""
    g = graphs["resnet"]
    x, whole = unsplit["resnet"]
    plan = ts.plan_split(g, ["conv1", "block1_conv1"])
    skip = g.layer("conv1").outputs[0].name
    assert skip in {t.name for t in plan.stages[1].outputs}
    assert skip not in {t.name for t in plan.stages[1].library_outputs}
    _assert_matches(check_bundle(ts.build_bundle(g, plan, tmp_path / "b"), g, x), whole, "resnet")


def test_each_stage_carries_only_its_own_weights(tmp_path):
    g = ts.load(zoo.make("vgg16", input_size=32, width=0.25), name="vgg16")
    plan = ts.plan_split(g, ["pool5"])
    bundle = ts.build_bundle(g, plan, tmp_path / "b")
    convs, fcs = bundle.stages
    assert convs.plan.param_bytes + fcs.plan.param_bytes == g.param_bytes
    assert convs.plan.param_bytes == sum(g.layer(n).param_bytes for n in convs.plan.layers)
    # each library holds its own weights and not the other stage's
    for stage, other in ((convs, fcs), (fcs, convs)):
        assert stage.library_bytes >= stage.plan.param_bytes
        assert stage.library_bytes < stage.plan.param_bytes + other.plan.param_bytes
    assert "fc1" in fcs.plan.layers and "fc1" not in convs.plan.layers


def _file_kind(path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout


def test_aarch64_stages_are_aarch64_elf_and_cuda_builds_compile_only(graphs, unsplit, tmp_path):
    g = graphs["resnet"]
    x, whole = unsplit["resnet"]
    plan = ts.plan_split(g, ["block1_add", "block2_add", "block3_add", "block4_add"],
                         ["x86_64", "rpi4b", "rpi3b", "cuda-edge", "jetson-orin"])
    bundle = ts.build_bundle(g, plan, tmp_path / "b")
    kinds = [_file_kind(s.library) for s in bundle.stages]
    assert "x86-64" in kinds[0]
    assert "aarch64" in kinds[1] and "aarch64" in kinds[2] and "aarch64" in kinds[4]
    assert "x86-64" in kinds[3]  # the CUDA stage's host code; the kernels are embedded
    assert [s.runs_on_host for s in bundle.stages] == [True, False, False, False, False]
    report = check_bundle(bundle, g, x)
    assert report.stages[0].ran and not any(s.ran for s in report.stages[1:])
    assert report.ok


def test_rebuild_hits_the_cache_and_gives_identical_libraries(graphs, tmp_path):
    from tvmsplit.compile import build_stage

    g = graphs["chain"]
    plan = ts.plan_split(g, ["pool1"])
    spec = ts.get_target("x86_64")
    first = build_stage(g, plan.stages[0], spec, tmp_path / "a.so")
    second = build_stage(g, plan.stages[0], spec, tmp_path / "b.so")
    assert second.cached and first.sha256 == second.sha256


def test_bundle_round_trips_and_replaces_an_older_bundle(graphs, unsplit, tmp_path):
    g = graphs["chain"]
    x, whole = unsplit["chain"]
    out = tmp_path / "b"
    first = ts.build_bundle(g, ts.plan_split(g, ["pool1"]), out)
    second = ts.build_bundle(g, ts.plan_split(g, ["pool2"]), out)
    loaded = ts.Bundle.load(out)
    assert loaded.plan == second.plan != first.plan
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(s.library.name for s in second.stages)])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    np.testing.assert_allclose(check_bundle(loaded, g, x).outputs["output"], whole["output"],
                               rtol=1e-4, atol=1e-5)
