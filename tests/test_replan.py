"""Runtime tier: a re-plan mid-stream (the link slows down) swaps the stages and loses no request."""
from __future__ import annotations

import numpy as np
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import reference
from tvmsplit.devices import Device, Link
from tvmsplit.partition import CostTable
from tvmsplit.replan import Replanner
from tvmsplit.runtime.pipeline import PipelineError


@pytest.mark.timeout(300)
def test_replan_mid_stream_loses_no_request(tmp_path):
    g = ts.load(zoo.make("chain"), name="chain")
    # both "devices" run here; the end device is 4x slower than the edge
    costs = CostTable.from_flops(g, {"end": 0.5, "edge": 2.0})
    devices = [Device("end", "x86_64"), Device("edge", "x86_64")]
    link = {"now": Link("fast", 1e9, 1e9, 0.0)}
    # the end device sends a 200 KB camera frame, so cutting after a pooling layer can pay off
    fast = Replanner(None, g, devices, costs, lambda: link["now"], tmp_path / "plans",
                     input_bytes=200_000)
    first = fast.planned
    assert set(first.predicted.assignment) == {1}  # a fast link: everything on the edge
    bundle = ts.build_bundle(first.graph, first.plan, tmp_path / "first")
    rng = np.random.default_rng(0)
    inputs = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(60)]
    with ts.Pipeline(bundle, max_in_flight=6) as p:
        fast.pipeline = p
        outputs = []
        for i, (y, _) in enumerate(p.stream(inputs)):
            outputs.append(y["output"])
            if i == 20:
                link["now"] = Link("wifi-ish", 1e7, 1e7, 0.0)  # bandwidth falls 100x
                assert fast.check()                            # re-planned and swapped mid-stream
                assert len(p.bundle.stages) == 2               # now split between the devices
            if i == 40:
                link["now"] = Link("3g-ish", 1e5, 1e5, 0.05)   # and 100x again
                assert fast.check()
                assert len(p.bundle.stages) == 1 and p.bundle.stages[0].target["name"] == "x86_64"
        assert fast.swaps == 2 and set(fast.planned.predicted.assignment) == {0}
        assert not fast.check()  # no change: no new plan
    assert len(outputs) == len(inputs)
    for x, y in zip(inputs, outputs):  # every request answered, in order, correctly
        np.testing.assert_allclose(y, reference(g, x)["output"], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(120)
def test_swap_refuses_a_bundle_of_another_model(tmp_path):
    chain = ts.load(zoo.make("chain"), name="chain")
    resnet = ts.load(zoo.make("resnet"), name="resnet")
    a = ts.build_bundle(chain, ts.plan_split(chain), tmp_path / "a")
    b = ts.build_bundle(resnet, ts.plan_split(resnet), tmp_path / "b")
    with ts.Pipeline(a) as p:
        with pytest.raises(PipelineError, match="not a plan of the running model"):
            p.swap(b)
        y, _ = p.run({"input": np.zeros((1, 3, 32, 32), np.float32)})
        assert y["output"].shape == (1, 10)


def _worker_pids(p) -> set[int]:
    return {w.pid for w in p._workers}


@pytest.mark.timeout(300)
def test_a_prepared_plan_swaps_in_without_starting_workers_and_back(tmp_path):
    """Pipeline.prepare starts a plan's workers beside the running ones; swap(keep=True) then
    only changes routes (no new process) and the old plan stands by, so swapping back reuses
    its workers too. Every request is answered, in order, == onnxruntime."""
    g = ts.load(zoo.make("chain"), name="chain")
    a = ts.build_bundle(g, ts.plan_split(g), tmp_path / "a")
    b = ts.build_bundle(g, ts.plan_split(g, ["pool1"]), tmp_path / "b")
    rng = np.random.default_rng(1)
    inputs = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(30)]
    with ts.Pipeline(a, max_in_flight=4) as p:
        first = _worker_pids(p)
        p.prepare(b)
        assert p.prepared == (str(b.path.resolve()),)
        outputs = []
        for i, (y, _) in enumerate(p.stream(inputs)):
            outputs.append(y["output"])
            if i == 10:
                p.swap(b, keep=True)
                assert len(p.bundle.stages) == 2 and p.prepared == (str(a.path.resolve()),)
                second = _worker_pids(p)
                assert not second & first
            if i == 20:
                p.swap(a, keep=True)                 # back: the first plan's very workers
                assert _worker_pids(p) == first and p.prepared == (str(b.path.resolve()),)
    assert len(outputs) == len(inputs)
    for x, y in zip(inputs, outputs):
        np.testing.assert_allclose(y, reference(g, x)["output"], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(300)
def test_replanner_reacts_to_the_end_devices_load_seen_in_traces(tmp_path):
    """The end device's stages take 6x their profiled time (a background burner): observe()
    sees it in the traces, check() moves layers to the edge and swaps; the load goes away and
    the first plan, standing by, comes back without a worker start."""

    from tvmsplit.runtime.trace import Trace

    g = ts.load(zoo.make("chain"), name="chain")
    costs = CostTable.from_flops(g, {"end": 0.5, "edge": 2.0})
    devices = [Device("end", "x86_64"), Device("edge", "x86_64")]
    link = Link("wifi-ish", 1e7, 1e7, 0.01)
    r = Replanner(None, g, devices, costs, lambda: link, tmp_path / "plans", input_bytes=200_000)
    start = r.planned
    assert set(start.predicted.assignment) == {0, 1}   # split: both devices work
    with ts.Pipeline(r.bundle()) as p:
        r.pipeline = p
        first = _worker_pids(p)

        def trace(factor: float) -> Trace:  # what the end stage would report under that load
            per_stage = [sum(dict(zip(costs.layers, costs.compute_ms))[n][d] for n in s.layers)
                         * (factor if d == 0 else 1.0)
                         for s, d in zip(r.planned.plan.stages, r.planned.stage_devices)]
            return Trace(0, tuple(per_stage), (), 0.0, ())

        for _ in range(3):
            r.observe(trace(1.05))
        assert not r.check() and r.slowdown[0] == pytest.approx(1.05, rel=0.05)
        for _ in range(6):
            r.observe(trace(6.0))
        assert r.slowdown[0] > 5 and r.check()
        loaded = r.planned.predicted.assignment
        assert loaded.count(0) < start.predicted.assignment.count(0)
        assert r.history[-1].reason.startswith("end load") and not r.history[-1].prepared
        y, _ = p.run({"input": np.zeros((1, 3, 32, 32), np.float32)})
        r.set_slowdown("end", 1.0)                      # the device reports it is free again
        assert r.check() and r.planned.predicted.assignment == start.predicted.assignment
        assert r.history[-1].prepared and _worker_pids(p) == first
        assert r.swaps == 2
        y2, _ = p.run({"input": np.zeros((1, 3, 32, 32), np.float32)})
        np.testing.assert_allclose(y2["output"], y["output"], rtol=1e-5, atol=1e-6)


def test_a_wait_on_a_local_hop_counts_as_the_devices_load(tmp_path):
    """A request that waits before the end device's stage takes it (the client is on the end
    device) makes the end device slower by that wait; a hop over the link does not."""
    from tvmsplit.runtime.trace import Hop, Trace

    g = ts.load(zoo.make("chain"), name="chain")
    costs = CostTable.from_flops(g, {"end": 0.5, "edge": 2.0})
    devices = [Device("end", "x86_64"), Device("edge", "x86_64")]
    link = Link("wifi-ish", 1e7, 1e7, 0.01)
    r = Replanner(None, g, devices, costs, lambda: link, tmp_path / "plans", input_bytes=200_000)
    stages = list(zip(r.planned.plan.stages, r.planned.stage_devices))
    assert [d for _, d in stages] == [0, 1]
    rows = dict(zip(costs.layers, costs.compute_ms))
    own = [sum(rows[n][d] for n in s.layers) for s, d in stages]
    hops = (Hop(-1, 0, 100, own[0]), Hop(0, 1, 100, 50.0), Hop(1, -1, 100, 40.0))
    for _ in range(3):
        r.observe(Trace(0, tuple(own), hops, 0.0, ()))
    assert r.slowdown[0] == pytest.approx(2.0) and r.slowdown[1] == pytest.approx(1.0)
