"""Several end devices, one edge, on the testbed (issue 15 part 6: tvmsplit/testbed/shared.py,
tvmsplit/multi_eval.py).

Unit: the share -> cgroup limits rule (the kernel's 1 ms minimum quota), the per-client link, the
settings a shared evaluation runs (pure, on a block profile). Testbed (root, two cores): the
per-client edge cgroups enforce their CPU shares (CPU time of busy loops, a ratio, never a
latency), and two clients streaming at once to one edge lose no request, every output ==
onnxruntime.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings

import pytest

from tvmsplit.devices import Link
from tvmsplit.testbed.cgroup import MIN_QUOTA_US
from tvmsplit.testbed.profiles import TestbedError
from tvmsplit.testbed.shared import (ClientShares, share_limits, share_period_us, shared_link)

CSV = ("block,output_bytes,cam_ms,edge_ms\ninput,100000,,\nhead,20000,30,3\n"
       "body,1000,60,6\ntail,40,10,1\n")


# ------------------------------------------------------------------------------------ unit
def test_share_limits_keep_the_quota_at_or_above_the_kernels_minimum():
    assert share_period_us(0.5) == 10_000 and share_period_us(1.0) == 10_000
    assert share_period_us(0.1) == 10_000          # 1 ms per 10 ms: exactly the minimum
    assert share_period_us(0.05) == 20_000 and share_period_us(1 / 3) == 10_000
    assert share_period_us(0.07) == 15_000         # ceil(1 / 0.07) = 15 ms
    for share in (0.01, 0.05, 0.07, 0.1, 1 / 3, 0.45, 0.5, 0.95, 1.0):
        lim = share_limits(share, core=1)
        assert lim.cpus == "1" and lim.cpu_quota_us >= MIN_QUOTA_US
        assert lim.cpu_fraction == pytest.approx(share, rel=0.02)
    free = share_limits(None, core=1)
    assert free.cpu_quota_us is None and free.cpus == "1"
    assert share_limits(0, core=1) == free
    with pytest.raises(TestbedError, match="share must be in"):
        share_period_us(0)
    with pytest.raises(TestbedError, match="client shares must be in"):
        ClientShares(1.5, 0.5)


def test_a_clients_link_is_the_link_at_its_bandwidth_share():
    link = Link.profile("4g")
    half = shared_link(link, 0.5)
    assert (half.up_bps, half.down_bps, half.rtt_s) == (link.up_bps / 2, link.down_bps / 2,
                                                        link.rtt_s)
    assert shared_link(link, None) == link and shared_link(link, 0) == link


def test_the_settings_price_the_planned_shares_and_even_shares(tmp_path):
    from tvmsplit.blockprofile import read_block_profile
    from tvmsplit.multi_eval import plan_settings
    from tvmsplit.partition import Problem, plan
    from tvmsplit.partition.multi import EndDevice, plan_shared_edge, with_shares
    from tvmsplit.partition.problem import evaluate as price

    path = tmp_path / "p.csv"
    path.write_text(CSV)
    prof = read_block_profile(path)
    g = prof.graph()
    link = Link("lan", 8e6, 8e6, 0.0)
    problem = Problem(g, prof.costs(["cam", "edge"]), (link,), stage_overhead_ms=(1.0, 2.0))
    shared = plan_shared_edge([EndDevice(f"cam{i + 1}", problem) for i in range(3)], steps=6)
    alone = plan(problem)[1]
    got = plan_settings(problem, shared, alone)
    assert list(got) == ["planned", "unshared", "all-edge", "all-end"]
    for i, c in enumerate(got["planned"]):
        assert c.name == f"cam{i + 1}" and c.candidate.assignment == shared.plans[i].assignment
        assert (c.shares.compute, c.shares.bandwidth) == (shared.compute_share[i],
                                                          shared.bandwidth_share[i])
        assert c.predicted_ms == pytest.approx(shared.plans[i].latency_ms)
    even = with_shares(problem, 1 / 3, 1 / 3)
    for c in got["unshared"]:
        assert c.candidate.assignment == alone.assignment and c.shares.compute is None
        assert c.shares.bandwidth == pytest.approx(1 / 3)
        assert c.predicted_ms == pytest.approx(price(even, alone.assignment).latency_ms)
    assert {c.candidate.name for c in got["all-edge"]} == {"all-edge"}
    assert all(c.predicted_ms == pytest.approx(price(problem, (0, 0, 0)).latency_ms)
               for c in got["all-end"])


def test_a_share_slows_the_edges_stage_overhead_too():
    """The edge worker's fixed per-request work runs under the same CPU quota as its layers."""
    from tvmsplit.blockprofile import read_block_profile
    from tvmsplit.partition import Problem
    from tvmsplit.partition.multi import with_shares

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.csv"
        path.write_text(CSV)
        prof = read_block_profile(path)
    problem = Problem(prof.graph(), prof.costs(["cam", "edge"]), (Link("lan", 8e6, 8e6, 0.0),),
                      stage_overhead_ms=(1.0, 2.0))
    assert with_shares(problem, 0.25, 0.5).stage_overhead_ms == (1.0, 8.0)
    assert with_shares(problem, 0.0, 0.0).stage_overhead_ms == (1.0, 2.0)  # pinned to the end


# --------------------------------------------------------------------------------- testbed
class SharedEdgeSkipped(UserWarning):
    __test__ = False


def _require_shared_edge() -> None:
    from tvmsplit.testbed import unavailable_reason
    from tvmsplit.testbed.cgroup import unavailable_reason as cgroup_reason

    reason = unavailable_reason(device=False, delay=False) or cgroup_reason()
    if reason is None and not {0, 1} <= set(os.sched_getaffinity(0)):
        reason = "the end devices (core 0) and the shared edge (core 1) need cores 0 and 1"
    if reason:
        warnings.warn(f"shared-edge testbed skipped: {reason}", SharedEdgeSkipped, stacklevel=2)
        pytest.skip(f"shared-edge testbed: {reason}")


def test_per_client_edge_cgroups_enforce_their_cpu_shares():
    """Two clients' edge cgroups on core 1 at 25 % and 50 %: a busy loop in each gets CPU time
    in the ratio 1 : 2 (+-20 %), and neither more than its share (+15 %). When another job
    takes core 1 the loops get less than their quotas; the caps are still checked."""
    _require_shared_edge()
    import psutil

    from tvmsplit.testbed import net
    from tvmsplit.testbed.shared import shared_edge

    shares = [ClientShares(0.25, 0.5), ClientShares(0.5, 0.5)]
    with shared_edge(Link("lan", 100e6, 100e6, 0.0), "pi-class", shares) as tbs:
        dirs = [d for tb in tbs for cg in tb.state()["cgroups"].values() for d in cg["dirs"]]
        edges = [tb.cgroups["edge"] for tb in tbs]
        assert [cg.limits.cpu_fraction for cg in edges] == [0.25, 0.5]
        assert all(cg.read_limits()["cpuset.cpus"] == "1" for cg in edges)
        procs = [tb.spawn("edge", [sys.executable, "-c", "while True: pass"], role="burn",
                          in_namespace=False) for tb in tbs]
        ps = [psutil.Process(p.pid) for p in procs]
        time.sleep(1.0)  # inside the cgroup (cgexec), running
        assert all(p.pid in cg.pids() for p, cg in zip(procs, edges))
        assert all(q.cpu_affinity() == [1] for q in ps)
        c0, t0 = [sum(q.cpu_times()[:2]) for q in ps], time.monotonic()
        time.sleep(4.0)
        wall = time.monotonic() - t0
        frac = [(sum(q.cpu_times()[:2]) - c) / wall for q, c in zip(ps, c0)]
        lays = [tb.lay for tb in tbs]
    line = f"CPU fractions of core 1: {frac[0]:.3f} (share 0.25), {frac[1]:.3f} (share 0.5)"
    print(f"\n{line}", file=sys.stderr)
    assert frac[0] <= 0.25 * 1.15 and frac[1] <= 0.5 * 1.15, line
    if sum(frac) >= 0.75 * 0.85:
        assert abs(frac[1] / frac[0] / 2 - 1) <= 0.2, line
    else:
        warnings.warn(f"core 1 is busy with another job: only the caps were checked; {line}",
                      SharedEdgeSkipped)
        assert frac[0] > 0.02 and frac[1] > 0.02, line
    assert not [d for d in dirs if os.path.exists(d)], "cgroups left behind"
    assert not {n for lay in lays for n in (lay.ns_dev, lay.ns_edge)} & net.namespaces()


def test_two_clients_stream_at_once_to_one_edge_without_losing_a_request(tmp_path, monkeypatch):
    """`tvmsplit evaluate --end-devices 2` on a tiny model: costs measured on the testbed, the
    shared plan and the baselines run with both clients at once; no request lost, every output
    == onnxruntime, the JSON says per device its shares, plan, predicted and measured."""
    _require_shared_edge()
    from tvmsplit.onnxbuild import mlp

    from cli_helpers import invoke, ok

    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp("mlp", [512, 1024, 256, 10]).SerializeToString())
    result = ok(invoke("evaluate", model, "--end-devices", 2, "--link", "wifi", "--requests", 6,
                       "--rounds", 1, "--share-steps", 4, "--json"))
    data = json.loads(result.stdout)
    assert data["end_devices"] == 2 and data["lost"] == 0
    names = [s["name"] for s in data["settings"]]
    assert names == ["planned", "unshared", "all-edge", "all-end"]
    for s in data["settings"]:
        assert [c["name"] for c in s["clients"]] == ["end1", "end2"]
        for c in s["clients"]:
            assert c["sent"] == c["answered"] >= 6 and c["lost"] == 0 and not c["errors"]
            assert c["max_rel_error"] < 1e-3 and c["measured_ms"] > 0 and c["predicted_ms"] > 0
    planned = data["settings"][0]["clients"]
    assert sum(c["compute_share"] for c in planned) <= 1 + 1e-9
    assert sum(c["bandwidth_share"] for c in planned) <= 1 + 1e-9
    assert data["worst_gain"] > 0 and data["unshared_gain"] > 0
    assert set(data["worst_ms"]) == set(names)


def test_deadlines_are_one_for_all_or_one_per_device():
    from tvmsplit.cli import _parse_deadlines
    from tvmsplit.errors import TvmsplitError
    from tvmsplit.multi_eval import per_device

    assert _parse_deadlines(None, 3) is None and per_device(None, 3) == (None,) * 3
    assert _parse_deadlines("900", 3) == (900.0,) * 3 == per_device(900, 3)
    assert _parse_deadlines("900,,", 3) == (900.0, None, None) == per_device([900, None, None], 3)
    for bad in ("900,1", "fast"):
        with pytest.raises(TvmsplitError, match="--deadline-ms"):
            _parse_deadlines(bad, 3)


def test_the_edge_a_device_leaves_goes_to_the_others(tmp_path):
    """A device whose deadline is met alone keeps off the edge, and the worst latency is then
    its own; the others still get the edge (least sum of latencies under that worst, checked
    against a brute force over the share grid), rather than any plan under the worst."""
    import itertools
    import math

    from tvmsplit.blockprofile import read_block_profile
    from tvmsplit.partition import PlanningError, Problem, plan
    from tvmsplit.partition.multi import EndDevice, plan_shared_edge, with_shares

    path = tmp_path / "p.csv"
    path.write_text(CSV)
    prof = read_block_profile(path)
    problem = Problem(prof.graph(), prof.costs(["cam", "edge"]), (Link("lan", 80e6, 80e6, 0.0),),
                      stage_overhead_ms=(1.0, 1.0))
    steps = 4
    devices = [EndDevice("slowok", problem, 150.0), EndDevice("a", problem), EndDevice("b", problem)]
    shared = plan_shared_edge(devices, steps=steps)
    alone = plan(with_shares(problem, 0, 0))[1].latency_ms
    assert shared.compute_share[0] == 0 and shared.worst_latency_ms == pytest.approx(alone)
    assert all(b.latency_ms < alone / 2 for b in shared.plans[1:])  # the others offload

    def best(pair):
        try:
            return plan(with_shares(problem, pair[0] / steps, pair[1] / steps))[1].latency_ms
        except PlanningError:
            return math.inf

    grid = [(c, b) for c in range(steps + 1) for b in range(steps + 1) if (c == 0) == (b == 0)]
    table = {pair: best(pair) for pair in grid}
    feasible = [pairs for pairs in itertools.product(grid, repeat=3)
                if sum(p[0] for p in pairs) <= steps and sum(p[1] for p in pairs) <= steps
                and pairs[0] == (0, 0)]
    worst = min(max(table[p] for p in pairs) for pairs in feasible)
    total = min(sum(table[p] for p in pairs) for pairs in feasible
                if max(table[p] for p in pairs) <= worst + 1e-9)
    assert shared.worst_latency_ms == pytest.approx(worst)
    assert sum(b.latency_ms for b in shared.plans) == pytest.approx(total)
