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
