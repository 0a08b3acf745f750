"""HyPS on real memory: sequential devices (segments loaded one at a time), weights outside the
library, peak memory measured under a real cgroup limit, and the H-part count as a planned
quantity.

The unit tests check the cost model (greedy segments are the fewest; the planners with
sequential devices equal the brute-force oracle; the mode search equals an oracle over modes).
The others build and run: a sequential stage equals onnxruntime in ``build --check``, alone and
batched in a pipeline; and the full-size VGG16-shaped zoo model (224x224, 553 MB of weights)
runs on one worker under a 1 GiB cgroup limit in sequential mode, and on two capped workers with
fc1's H-parts in parallel.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvmsplit.partition import CostTable, PlanningError, Problem, evaluate, feasible, plan
from tvmsplit.partition.oracle import plan_oracle
from tvmsplit.partition.problem import (UNFIT_MS, layer_footprint, segment_bytes, segments)
from tvmsplit.weights import WeightsError, read_weights, write_weights

from test_partition import random_graph

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- the cost model
def _min_segments_brute(g, layers, cap) -> int | None:
    """The fewest consecutive segments that each fit ``cap``, by trying every set of cuts."""
    n = len(layers)
    for k in range(1, n + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            segs = [layers[a:b] for a, b in zip(bounds, bounds[1:])]
            if all(segment_bytes(g, s) <= cap for s in segs):
                return k
    return None


@SETTINGS
@given(st.data())
def test_greedy_segments_are_the_fewest_that_fit(data):
    g = random_graph(data.draw, data.draw(st.integers(1, 8)), chain=False)
    cap = data.draw(st.integers(1, 60_000))
    layers = list(range(len(g.layers)))
    got = segments(g, layers, cap)
    assert [i for s in got for i in s] == layers
    want = _min_segments_brute(g, layers, cap)
    if want is None:  # some layer does not fit alone: greedy gives it its own, over-cap segment
        assert any(segment_bytes(g, s) > cap for s in got)
        assert any(layer_footprint(g, i) > cap for i in layers)
    else:
        assert len(got) == want and all(segment_bytes(g, s) <= cap for s in got)


@st.composite
def sequential_problems(draw):
    n = draw(st.integers(1, 6))
    g = random_graph(draw, n, chain=draw(st.booleans()))
    k = draw(st.integers(1, 3))
    ms = st.floats(0, 50, allow_nan=False, allow_infinity=False)
    table = {layer.name: {f"d{d}": draw(ms) for d in range(k)} for layer in g.layers}
    from tvmsplit.devices import Link

    links = tuple(Link(f"l{h}", draw(st.floats(1e6, 1e9)), draw(st.floats(1e6, 1e9)), 0.001)
                  for h in range(k - 1))
    caps = tuple(draw(st.sampled_from([None, 20_000, 40_000, 80_000])) for _ in range(k))
    flags = tuple(c is not None and draw(st.booleans()) for c in caps)
    return Problem(g, CostTable.from_mapping([f"d{d}" for d in range(k)], table), links,
                   objective=draw(st.sampled_from(["latency", "throughput"])),
                   mem_cap_bytes=caps, sequential=flags if any(flags) else (),
                   load_bytes_per_s=tuple(draw(st.sampled_from([1e6, 1e9])) for _ in range(k)),
                   batch=draw(st.integers(1, 4)))


@SETTINGS
@given(sequential_problems())
def test_planners_with_sequential_devices_equal_the_oracle(problem):
    """The planners see a sequential device as uncapped with unfit layers priced UNFIT_MS; the
    oracle checks the real segments against the real cap. Same optimum, or both infeasible.
    (Energy is left out: a device whose energy weight is 0 would not feel UNFIT_MS.)"""
    try:
        want = plan_oracle(problem)
    except PlanningError:
        with pytest.raises(PlanningError):
            plan(problem)
        return
    _, got = plan(problem)
    assert feasible(problem, got)
    o = problem.objective
    assert math.isclose(got.objective(o), want.objective(o), rel_tol=1e-6, abs_tol=1e-6)
    assert got.objective(o) < UNFIT_MS


def test_a_sequential_device_holds_its_largest_segment_and_pays_to_reload():
    """Worked by hand: three layers of 10/20/30 kB weights (tiny activations) on one device
    capped at 35 kB: resident they need 60 kB (infeasible); sequential, the segments are
    [L0 L1] [L2] (30 kB + act, 30 kB + act) and each request reloads 60 kB at 1 MB/s = 60 ms
    (30 ms per request with batch 2)."""
    from tvmsplit.graph import Layer, LayerGraph, TensorSpec

    x = TensorSpec("x", "float32", (4,))
    ts_ = [TensorSpec(f"t{i}", "float32", (4,)) for i in range(3)]
    layers = tuple(Layer(f"L{i}", "Op", (f"L{i}",), ("Op",), (([x] + ts_)[i],), (ts_[i],), 0, 0,
                         w) for i, w in enumerate((10_000, 20_000, 30_000)))
    g = LayerGraph("three", layers, (x,), (ts_[-1],), "", None)
    costs = CostTable.from_mapping(["end"], {f"L{i}": {"end": 1.0} for i in range(3)})
    resident = Problem(g, costs, (), mem_cap_bytes=(35_000,))
    assert not feasible(resident, evaluate(resident, (0, 0, 0)))
    seq = replace(resident, sequential=(True,), load_bytes_per_s=(1e6,), batch=2)
    b = evaluate(seq, (0, 0, 0))
    assert feasible(seq, b)
    assert segments(g, [0, 1, 2], 35_000) == [[0, 1], [2]]
    assert b.memory_bytes == (30_000 + 32,)  # L2's weights + its 16-byte input and output
    assert b.latency_ms == pytest.approx(3.0 + 60.0 / 2)


def _oracle_over_modes(problem: Problem):
    capped = [d for d, c in enumerate(problem.mem_cap) if c != math.inf]
    best = None
    for flags in itertools.product((False, True), repeat=len(capped)):
        seq = tuple(d in [c for c, f in zip(capped, flags) if f] for d in range(problem.n_devices))
        try:
            b = plan_oracle(replace(problem, sequential=seq if any(seq) else ()))
        except PlanningError:
            continue
        if best is None or b.objective(problem.objective) < best.objective(problem.objective):
            best = b
    return best


@SETTINGS
@given(sequential_problems())
def test_mode_search_equals_an_oracle_over_modes(problem):
    from tvmsplit.planning import _plan_modes

    base = replace(problem, sequential=())
    want = _oracle_over_modes(base)
    if want is None:
        with pytest.raises(PlanningError):
            _plan_modes(base, "auto", "best")
        return
    _, _, got = _plan_modes(base, "auto", "best")
    o = problem.objective
    assert math.isclose(got.objective(o), want.objective(o), rel_tol=1e-6, abs_tol=1e-6)


# ---------------------------------------------------------------------------- the weights file
def test_weights_file_round_trip_is_aligned(tmp_path):
    arrays = [np.arange(7, dtype=np.float32), np.ones((3, 5), np.int64), np.float32(2.5) * np.ones(()),
              np.zeros((0,), np.float16)]
    path = write_weights(tmp_path / "w.weights", arrays)
    back = read_weights(path)
    assert [a.dtype for a in back] == [a.dtype for a in arrays]
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
        assert b.size == 0 or b.ctypes.data % 64 == 0


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"NOTMAGIC" + b[8:], "bad magic"),
    (lambda b: b[:40], "corrupt|truncated"),
    (lambda b: b[:-100], "truncated"),
    (lambda b: b[:17] + b"{" + b[18:], "corrupt"),
    (lambda b: b.replace(b'"offset"', b'"offsex"'), "corrupt"),
])
def test_a_damaged_weights_file_is_refused_by_name(tmp_path, damage, message):
    path = write_weights(tmp_path / "w.weights", [np.arange(100, dtype=np.float32)])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=message):
        read_weights(path)


# ------------------------------------------------------------------- sequential stages, built
def _small_vgg():
    import tvmsplit as ts
    from tvmsplit import zoo

    return ts.load(zoo.make("vgg16", width=0.25, input_size=64), name="vgg16")


def test_a_sequential_stage_equals_onnxruntime_alone_and_batched(tmp_path):
    """Stage 1 of a 2-stage VGG16 (width 1/4, 64x64) as three segments, weights outside their
    libraries: `build --check` and a pipeline of several requests in flight equal onnxruntime;
    the trace says what loading cost; health reports the worker's memory."""
    import json

    import tvmsplit as ts
    from tvmsplit.check import check_bundle, compare, random_inputs, reference
    from tvmsplit.runtime.pipeline import Pipeline
    from tvmsplit.split import sequential_plan

    g = _small_vgg()
    plan = ts.plan_split(g, split_at=["pool3"])
    layers = plan.stages[1].layers
    plan = sequential_plan(g, plan, {1: [layers[:4], layers[4:9], layers[9:]]})
    assert [s.layers[0] for s in plan.stages[1].segments] == ["conv4_1", "conv5_1", "fc2"]
    bundle = ts.build_bundle(g, plan, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["schema_version"] == 3  # readers of version 2 cannot run a sequential stage
    files = bundle.stages[1].segments
    assert len(files) == 3 and all(f.weights.is_file() for f in files)
    # the weights are outside: each library is smaller than its weights' bytes
    assert files[2].weights_bytes > 4_000_000 > files[2].library.stat().st_size
    x = random_inputs(g.inputs)
    assert check_bundle(bundle, g, x).ok
    inputs = [random_inputs(g.inputs, seed=k) for k in range(6)]
    with Pipeline(bundle, timeout_s=120) as p:
        results = list(p.stream(inputs))
        health = p.health()
    for (y, trace), x in zip(results, inputs):
        want = reference(g, x)["output"]
        assert compare(y["output"], want, "output").rel <= 1e-4
        assert trace.load_ms[0] == 0.0 and trace.load_ms[1] > 0.0
        assert trace.load_ms[1] <= trace.compute_ms[1]
    assert all(0 < h["rss_bytes"] <= h["peak_rss_bytes"] for h in health)


def test_a_sequential_plan_survives_its_plan_file(tmp_path):
    import tvmsplit as ts
    from tvmsplit.plan import PlanFile, read_plan_file, save_plan_file
    from tvmsplit.split import sequential_plan

    g = _small_vgg()
    plan = ts.plan_split(g, split_at=["pool3"])
    layers = plan.stages[1].layers
    plan = sequential_plan(g, plan, {1: [layers[:2], layers[2:]]})
    save_plan_file(tmp_path / "p.json", PlanFile(plan).to_json())
    assert read_plan_file(tmp_path / "p.json").plan == plan


def test_bad_segments_are_refused_by_name():
    import tvmsplit as ts
    from tvmsplit.errors import SplitError
    from tvmsplit.split import sequential_plan

    g = _small_vgg()
    plan = ts.plan_split(g, split_at=["pool3"])
    layers = plan.stages[1].layers
    with pytest.raises(SplitError, match="consecutive runs of its layers"):
        sequential_plan(g, plan, {1: [layers[2:], layers[:2]]})
    with pytest.raises(SplitError, match=r"no stage\(s\) \[5\]"):
        sequential_plan(g, plan, {5: [layers]})


def test_the_native_worker_refuses_a_sequential_bundle(tmp_path):
    """The native worker reads schema version 2 only, so it refuses a bundle with a sequential
    stage at start-up (one line, exit 2) rather than misreading it."""
    import subprocess

    import tvmsplit as ts
    from tvmsplit.runtime.launch import find_native_worker
    from tvmsplit.split import sequential_plan

    worker = find_native_worker()
    if worker is None:
        pytest.skip("the native worker is not built (cmake -S . -B build/native)")
    g = _small_vgg()
    plan = ts.plan_split(g, split_at=["pool3"])
    plan = sequential_plan(g, plan, {1: [plan.stages[1].layers]})
    ts.build_bundle(g, plan, tmp_path / "b")
    run = subprocess.run([str(worker), "--bundle", str(tmp_path / "b"), "--stage", "0",
                          "--bind", "tcp://127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "schema version 3" in run.stderr


# --------------------------------------------------- the full-size model under real memory limits
GIB = 1 << 30


@pytest.fixture(scope="module")
def vgg16_full():
    import tvmsplit as ts
    from tvmsplit import zoo

    return ts.load(zoo.make("vgg16"), name="vgg16")  # 224x224, 138 M parameters


def _capped(name: str, limit: int):
    from tvmsplit.testbed.cgroup import Cgroup, Limits, unavailable_reason

    why = unavailable_reason(Limits(memory_max_bytes=limit))
    if why:
        pytest.skip(f"cannot cap memory here: {why}")
    return Cgroup(name, Limits(memory_max_bytes=limit))


@pytest.mark.timeout(1500)
def test_full_vgg16_runs_on_one_worker_under_1_gib_in_sequential_mode(tmp_path, vgg16_full):
    """553 MB of weights, a 480 MB budget for the model: resident it cannot be planned, so the
    planner runs the device sequentially (segments loaded one at a time). The worker runs in a
    cgroup limited to 1 GiB — the same model built resident (weights inside the library, which
    TVM copies out when it loads it) is killed at that limit, BENCHMARKS.md "HyPS on real
    memory" — and its output equals onnxruntime's; its measured peak is under the limit."""
    import os

    import tvmsplit as ts
    from tvmsplit.check import compare, random_inputs, reference
    from tvmsplit.devices import Device
    from tvmsplit.planning import plan_partition
    from tvmsplit.runtime.launch import LocalLauncher, python_worker
    from tvmsplit.runtime.pipeline import Pipeline

    g = vgg16_full
    weights = sum(layer.param_bytes for layer in g.layers)
    budget = 480_000_000
    assert weights > budget
    result = plan_partition(g, [Device("end", "x86_64", budget)], [],
                            CostTable.from_flops(g, {"end": 10.0}))
    (stage,) = result.plan.stages
    assert len(stage.segments) >= 2 and result.predicted.memory_bytes[0] <= budget
    bundle = ts.build_bundle(result.graph, result.plan, tmp_path / "b")
    x = random_inputs(g.inputs)
    want = reference(g, x)["output"]
    with _capped(f"tvmsplit-test-hyps-{os.getpid()}", GIB) as cg:
        launcher = LocalLauncher(programs={0: [*cg.prefix(), *python_worker()]})
        with Pipeline(bundle, launcher=launcher, timeout_s=600) as p:
            y, trace = p.run(x)
            (health,) = p.health()
            assert health["pid"] in cg.pids()  # the worker really runs inside the capped cgroup
        use = cg.memory_use()
        assert use["oom_kills"] in (0, None) and (use["peak"] is None or use["peak"] <= GIB)
    assert compare(y["output"], want, "output").rel <= 1e-4
    biggest = max(f.weights_bytes for f in bundle.stages[0].segments)
    assert biggest <= health["peak_rss_bytes"] <= GIB  # it held a segment, never the whole model
    assert trace.load_ms[0] > 0


@pytest.mark.timeout(1500)
def test_full_vgg16_on_two_capped_workers_with_fc1_h_parts_in_parallel(tmp_path, vgg16_full):
    """Two devices with a 300 MB model budget each (fc1 alone is 411 MB, the model 553 MB): fc1
    becomes two H-parts, one per device, run in parallel (a stage DAG); each device's workers
    share a cgroup limited to 1 GiB. Output equals onnxruntime's. (Sequential devices would not
    spread the parts: each part fits one device's budget on its own.)"""
    import os

    import tvmsplit as ts
    from tvmsplit.check import compare, random_inputs, reference
    from tvmsplit.devices import Device, Link
    from tvmsplit.planning import plan_partition
    from tvmsplit.runtime.launch import LocalLauncher, python_worker
    from tvmsplit.runtime.pipeline import Pipeline

    g = vgg16_full
    budget = 300_000_000
    devices = [Device("end", "x86_64", budget), Device("edge", "x86_64", budget)]
    result = plan_partition(g, devices, [Link("lan", 1e9, 1e9, 0.001)],
                            CostTable.from_flops(g, {"end": 1.0, "edge": 10.0}))
    assert result.horizontal == (("fc1", 2),)
    stage_of = {name: s.index for s in result.plan.stages for name in s.layers}
    h0, h1 = stage_of["fc1_h0"], stage_of["fc1_h1"]
    assert {result.stage_devices[h0], result.stage_devices[h1]} == {0, 1}
    assert not result.plan.is_chain
    assert all(m <= budget for m in result.predicted.memory_bytes)
    bundle = ts.build_bundle(result.graph, result.plan, tmp_path / "b")
    x = random_inputs(g.inputs)
    want = reference(g, x)["output"]
    with _capped(f"tvmsplit-test-hyps-end-{os.getpid()}", GIB) as end, \
            _capped(f"tvmsplit-test-hyps-edge-{os.getpid()}", GIB) as edge:
        groups = (end, edge)
        launcher = LocalLauncher(programs={
            s: [*groups[d].prefix(), *python_worker()] for s, d in enumerate(result.stage_devices)})
        with Pipeline(bundle, launcher=launcher, timeout_s=600) as p:
            y, trace = p.run(x)
            health = p.health()
            inside = end.pids() | edge.pids()
            assert all(h["pid"] in inside for h in health)
    assert compare(y["output"], want, "output").rel <= 1e-4
    assert all(h["peak_rss_bytes"] <= GIB for h in health)
    merge = stage_of["fc1_merge"]
    assert {(h0, merge), (h1, merge)} <= {(h.src, h.dst) for h in trace.hops}


# ------------------------------------------------------------------ the H-part count, planned
def test_hpart_counts_start_at_the_fewest_and_never_go_below_it():
    from tvmsplit.planning import hpart_counts

    assert hpart_counts({}, 2) == [{}]
    counts = hpart_counts({"fc1": 2, "fc2": 3}, 2)
    assert counts[0] == {"fc1": 2, "fc2": 3} and counts[-1] == {"fc1": 8, "fc2": 8}
    assert all(c["fc1"] >= 2 and c["fc2"] >= 3 for c in counts)
    assert len(hpart_counts({"fc1": 2}, 8)) == 13  # 2..14: at most 12 above the fewest


def test_the_h_part_count_is_priced_in_the_objective():
    """VGG16 (width 1/4): fc1 (25.7 MB) fits no 24 MB budget. Planning the count ("best") is
    never worse than the fewest parts, and picks more parts when they balance two devices of
    different speeds (3:1) better; a fixed cost per part (a stage hop) brings it back to the
    fewest."""
    import tvmsplit as ts
    from tvmsplit import zoo
    from tvmsplit.devices import Device, Link
    from tvmsplit.planning import plan_partition

    g = ts.load(zoo.make("vgg16", width=0.25), name="vgg16")
    devices = [Device("end", "x86_64", 24_000_000), Device("edge", "x86_64", 24_000_000)]
    costs = CostTable.from_flops(g, {"end": 3.0, "edge": 1.0})
    link = [Link("lan", 1e10, 1e10, 0.0)]
    kw = dict(objective="throughput")
    fewest = plan_partition(g, devices, link, costs, **kw)
    best = plan_partition(g, devices, link, costs, horizontal="best", **kw)
    assert fewest.horizontal == (("fc1", 2),)
    assert best.predicted.bottleneck_ms <= fewest.predicted.bottleneck_ms + 1e-9
    assert dict(best.horizontal)["fc1"] > 2
    costly = plan_partition(g, devices, link, costs, horizontal="best", hpart_overhead_ms=1e3, **kw)
    assert costly.horizontal == (("fc1", 2),)


def test_plan_cli_runs_a_device_larger_model_sequentially_and_saves_a_buildable_plan(tmp_path):
    """`tvmsplit plan --mem-cap` below the model's weights: the table says the device runs
    sequentially, segment by segment; `build --plan` then builds it and its check passes."""
    import json

    from tvmsplit import zoo

    from cli_helpers import invoke

    model = zoo.save("vgg16", tmp_path / "vgg.onnx", input_size=64, width=0.25)
    g = _small_vgg()
    (tmp_path / "costs.json").write_text(json.dumps(CostTable.from_flops(g, {"end": 5.0}).to_json()))
    weights = sum(layer.param_bytes for layer in g.layers)
    out = invoke("plan", model, "--devices", "end=x86_64", "--costs",
                 tmp_path / "costs.json", "--mem-cap", f"end={weights * 2 // 3}B",
                 "--save", tmp_path / "plan.json")
    assert out.exit_code == 0, out.output
    assert "sequential (HyPS): 2 segment(s)" in out.output
    refused = invoke("plan", model, "--devices", "end=x86_64", "--costs",
                     tmp_path / "costs.json", "--mem-cap", f"end={weights * 2 // 3}B",
                     "--sequential", "off")
    assert refused.exit_code == 1 and "--sequential auto" in refused.output
    built = invoke("build", model, "--plan", tmp_path / "plan.json", "-o", tmp_path / "b", "--check")
    assert built.exit_code == 0, built.output


def test_a_sequential_stage_always_gets_the_python_worker(monkeypatch):
    """Even when its target file asks for the native worker, which cannot load segments."""
    from types import SimpleNamespace

    from tvmsplit.runtime import launch

    monkeypatch.setattr(launch, "target_worker_kind", lambda target: "native")
    plain = SimpleNamespace(segments=(), runtime="tvm", plan=SimpleNamespace(target="t.toml"))
    assert launch.stage_worker_kind(plain) == "native"
    assert launch.stage_worker_kind(SimpleNamespace(**{**vars(plain), "segments": (1,)})) == "python"
    assert launch.stage_worker_kind(SimpleNamespace(**{**vars(plain), "runtime": "onnxruntime"})) == "python"


def test_the_critical_path_charges_each_stage_its_overhead_and_a_sequential_reload():
    """A hand-made DAG: x -> A (d0) -> {B (d0), C (d1)} -> D (d1). Stages: [A], [B], [C], [D]
    (B and C in parallel). With a 2 ms stage overhead on every device and d1 sequential
    (reloading C's and D's weights at 1 MB/s), the critical path is worked out by hand."""
    from tvmsplit.devices import Link
    from tvmsplit.graph import Layer, LayerGraph, TensorSpec
    from tvmsplit.planning import critical_path_ms
    from tvmsplit.split import plan_split

    x = TensorSpec("x", "float32", (1,))
    t = {n: TensorSpec(n, "float32", (1,)) for n in "abcd"}
    layer = lambda n, ins, w: Layer(n.upper(), "Op", (n.upper(),), ("Op",), ins, (t[n],), 0, 0, w)  # noqa: E731
    layers = (layer("a", (x,), 0), layer("b", (t["a"],), 0), layer("c", (t["a"],), 1000),
              layer("d", (t["b"], t["c"]), 2000))
    g = LayerGraph("dag", layers, (x,), (t["d"],), "", None)
    costs = CostTable.from_mapping(["d0", "d1"], {"A": {"d0": 1, "d1": 1}, "B": {"d0": 4, "d1": 4},
                                                  "C": {"d0": 3, "d1": 3}, "D": {"d0": 1, "d1": 1}})
    link = Link("free", 1e12, 1e12, 0.0)
    problem = Problem(g, costs, (link,), mem_cap_bytes=(None, 10_000), sequential=(False, True),
                      load_bytes_per_s=(1e6, 1e6), stage_overhead_ms=(2.0, 2.0))
    plan_ = plan_split(g, stage_of={"A": 0, "B": 1, "C": 2, "D": 3}, routing="direct")
    # A: 0 -> 3 (1 + 2); B on d0: 3 -> 9 (4 + 2); C on d1: 3 -> 3 + 3 + 1 (reload) + 2 = 9;
    # D on d1: max(9, 9) -> 9 + 1 + 2 (reload) + 2 = 14
    assert critical_path_ms(problem, plan_, (0, 0, 1, 1)) == pytest.approx(14.0, abs=1e-6)
