"""`tvmsplit plan --end-devices N`: several end devices share one edge (partition/multi.py).

One block: 100 ms on the end device, 10 ms on the whole edge; 1000 input bytes over an
8 Mbit/s link with no delay (1 ms at the whole link); nothing returns. With shares in halves,
a device with half the edge and half the link takes 20 + 2 = 22 ms.
"""
from __future__ import annotations

import json

import pytest

from cli_helpers import invoke

CSV = "block,output_bytes,cam_ms,edge_ms\ninput,1000,,\nnet,0,100,10\n"


@pytest.fixture()
def profile(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text(CSV)
    return path


def shared(profile, *extra):
    out = invoke("plan", "--profile", profile, "--devices", "cam=rpi4b,edge=x86_64", "--link",
                 "lan:8/8/delay=0ms", "--share-steps", 2, "--json", *extra)
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_two_end_devices_split_the_edge_in_halves(profile):
    got = shared(profile, "--end-devices", 2)
    assert got["alone_latency_ms"] == pytest.approx(10 + 1)
    assert [d["name"] for d in got["end_devices"]] == ["cam1", "cam2"]
    for d in got["end_devices"]:
        assert (d["compute_share"], d["bandwidth_share"], d["layers_on_end"]) == (0.5, 0.5, 0)
        assert d["latency_ms"] == pytest.approx(22.0)
    assert got["worst_latency_ms"] == pytest.approx(22.0)


def test_three_devices_cannot_all_have_a_half_and_one_stays_local(profile):
    got = shared(profile, "--end-devices", 3)
    assert got["worst_latency_ms"] == pytest.approx(100.0)
    assert any(d["layers_on_end"] == 1 and d["compute_share"] == 0 for d in got["end_devices"])
    assert sum(d["compute_share"] for d in got["end_devices"]) <= 1.0


def test_a_device_meeting_its_deadline_alone_leaves_the_edge(profile):
    got = shared(profile, "--end-devices", 2, "--deadline-ms", 150)
    assert all(d["compute_share"] == 0 and d["layers_on_end"] == 1 for d in got["end_devices"])
    assert got["worst_latency_ms"] == pytest.approx(100.0)
    text = invoke("plan", "--profile", profile, "--devices", "cam=rpi4b,edge=x86_64", "--link",
                  "lan:8/8/delay=0ms", "--share-steps", 2, "--end-devices", 2)
    assert text.exit_code == 0 and "cam2" in text.output and "worst latency 22.000 ms" in text.output


def test_options_that_do_not_combine_are_refused_together(profile):
    out = invoke("plan", "--profile", profile, "--devices", "cam=rpi4b,edge=x86_64,cloud=x86_64",
                 "--end-devices", 2, "--objective", "throughput", "--pin", "net=cam", "--method", "oracle")
    assert out.exit_code == 1
    for part in ("give two --devices", "drop --objective", "--pin, --method do not combine"):
        assert part in out.output, out.output
    out = invoke("plan", "--profile", profile, "--devices", "cam=rpi4b,edge=x86_64", "--deadline-ms", 5)
    assert out.exit_code == 1 and "--deadline-ms is for --end-devices N with N >= 2" in out.output


def test_a_model_with_a_cost_table_shares_the_edge_as_the_python_api_plans_it(tmp_path):
    import tvmsplit as ts
    from tvmsplit import zoo
    from tvmsplit.partition import CostTable, Problem
    from tvmsplit.partition.multi import EndDevice, plan_shared_edge

    g = ts.load(zoo.make("chain"))
    costs = CostTable.from_flops(g, {"end": 2.0, "edge": 40.0})
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(costs.to_json()))
    out = invoke("plan", "zoo:chain", "--devices", "end=rpi4b,edge=x86_64", "--link", "wifi",
                 "--costs", path, "--end-devices", 3, "--share-steps", 4, "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    problem = Problem(g, costs, (ts.Link.profile("wifi"),))
    want = plan_shared_edge([EndDevice(f"end{i}", problem) for i in (1, 2, 3)], steps=4)
    assert got["worst_latency_ms"] == pytest.approx(want.worst_latency_ms)
    assert [d["assignment"] for d in got["end_devices"]] == [list(b.assignment) for b in want.plans]
    assert got["worst_latency_ms"] >= got["alone_latency_ms"] - 1e-9
