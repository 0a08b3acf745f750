"""Unit tier: every exact planner equals the brute-force oracle on random small chains and DAGs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.devices import Device, Link
from tvmsplit.graph import Layer, LayerGraph, TensorSpec
from tvmsplit.partition import PLANNERS, CostTable, PlanningError, Problem, evaluate, plan
from tvmsplit.partition.chain import cut_bytes
from tvmsplit.partition.problem import PowerModel
from tvmsplit.partition.registry import is_chain
from tvmsplit.partition.oracle import plan_oracle


def random_graph(draw, n: int, chain: bool) -> LayerGraph:
    """n layers; layer i reads layer i-1 (chain) or a random non-empty set of earlier tensors."""
    x = TensorSpec("x", "float32", (draw(st.integers(1, 4000)),))
    specs = [TensorSpec(f"t{i}", "float32", (draw(st.integers(1, 4000)),)) for i in range(n)]
    reads: list[list[TensorSpec]] = []
    for i in range(n):
        earlier = [x, *specs[:i]]
        if chain:
            picks = {i} | set(draw(st.sets(st.integers(0, i), max_size=2)))  # skips allowed
        else:
            picks = draw(st.sets(st.integers(0, i), min_size=1, max_size=3))
        reads.append([earlier[p] for p in sorted(picks)])
    consumed = {t.name for r in reads for t in r}
    for i in range(n - 1):  # every tensor is read by someone: dangling ones feed the last layer
        if specs[i].name not in consumed:
            reads[-1].append(specs[i])
    layers = tuple(Layer(f"L{i}", "Op", (f"L{i}",), ("Op",), tuple(reads[i]), (specs[i],), 0,
                         0, draw(st.integers(0, 5000))) for i in range(n))
    return LayerGraph("random", layers, (x,), (specs[-1],), "", None)


@st.composite
def problems(draw, chain: bool = False, max_devices: int = 3, objective: str | None = None,
             caps: bool = True, pins: bool = True, overheads: bool = True, sends: bool = True):
    n = draw(st.integers(1, 7))
    g = random_graph(draw, n, chain)
    k = draw(st.integers(2, max_devices))
    ms = st.floats(0, 50, allow_nan=False, allow_infinity=False)
    table = {layer.name: {f"d{d}": draw(ms) for d in range(k)} for layer in g.layers}
    links = tuple(Link(f"l{h}", draw(st.floats(1e6, 1e9)), draw(st.floats(1e6, 1e9)),
                       draw(st.sampled_from([0.0, 0.001, 0.02]))) for h in range(k - 1))
    mem = ()
    if caps and draw(st.booleans()):
        mem = tuple(draw(st.sampled_from([None, 10_000, 30_000])) for _ in range(k))
    pinned = ()
    if pins and draw(st.booleans()):
        pinned = ((g.layers[0].name, draw(st.sampled_from([0, k - 1]))),)
    objective = objective or draw(st.sampled_from(["latency", "throughput", "energy"]))
    watts = st.floats(0, 5, allow_nan=False)
    power = tuple(PowerModel(draw(watts), draw(watts), draw(watts)) for _ in range(k)) \
        if objective == "energy" else ()
    overhead = ()
    if overheads and draw(st.booleans()):  # per-request overheads, some devices without one
        overhead = tuple(draw(st.one_of(st.just(0.0), st.floats(0, 30))) for _ in range(k))
    send, per_byte = (), ()
    if sends and draw(st.booleans()):  # the senders' busy time (counts in the bottleneck only)
        send = tuple(draw(st.one_of(st.just(0.0), st.floats(0, 30))) for _ in range(k))
        per_byte = tuple(draw(st.one_of(st.just(0.0), st.floats(0, 0.01))) for _ in range(k))
    return Problem(g, CostTable.from_mapping([f"d{d}" for d in range(k)], table), links,
                   objective=objective, power=power,
                   input_bytes=draw(st.sampled_from([None, 100])), mem_cap_bytes=mem, pins=pinned,
                   stage_overhead_ms=overhead, send_ms=send, send_ms_per_byte=per_byte)


def _same_optimum(problem: Problem, method: str) -> None:
    try:
        expected = plan_oracle(problem)
    except PlanningError:
        with pytest.raises(PlanningError):
            plan(problem, method)
        return
    _, got = plan(problem, method)
    want, have = expected.objective(problem.objective), got.objective(problem.objective)
    assert math.isclose(have, want, rel_tol=1e-6, abs_tol=1e-6), (method, got, expected)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(chain=True))
def test_chain_dp_is_optimal_on_chains(problem):
    _same_optimum(problem, "chain-dp")


@SETTINGS
@given(problems(max_devices=2, objective="latency", caps=False))
def test_mincut_is_optimal_on_dags_with_two_devices(problem):
    _same_optimum(problem, "dag-mincut")


@SETTINGS
@given(problems())
def test_ilp_is_optimal_on_dags(problem):
    _same_optimum(problem, "dag-ilp")


@SETTINGS
@given(problems(objective="throughput"))
def test_throughput_planners_are_optimal_with_send_costs(problem):
    for method in ("chain-dp", "dag-ilp") if is_chain(problem) else ("dag-ilp",):
        _same_optimum(problem, method)


@SETTINGS
@given(problems())
def test_auto_is_optimal_and_chain_dp_is_never_better_than_optimal(problem):
    _same_optimum(problem, "auto")
    try:
        best = plan_oracle(problem).objective(problem.objective)
        heuristic = PLANNERS["chain-dp"](problem).objective(problem.objective)
    except PlanningError:
        return
    assert heuristic >= best - 1e-6


def test_cut_bytes_match_the_graph_cuts():
    g = ts.load(zoo.make("inception"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    problem = Problem(g, costs, (Link.profile("4g"),))
    cuts = cut_bytes(problem)
    assert cuts[0] == g.input_bytes
    for cut in g.cut_candidates:
        assert cuts[cut.index + 1] == cut.nbytes


def test_evaluate_prices_a_split_by_hand():
    g = ts.load(zoo.make("chain"))
    table = {layer.name: {"end": 1.0, "edge": 0.5} for layer in g.layers}
    link = Link("l", up_bps=8e6, down_bps=16e6, rtt_s=0.01)
    problem = Problem(g, CostTable.from_mapping(["end", "edge"], table), (link,))
    k = g.index("pool1")
    b = evaluate(problem, [0] * (k + 1) + [1] * (len(g.layers) - k - 1))
    cut = g.cut_after("pool1").nbytes
    out = g.outputs[0].nbytes
    assert b.compute_ms == pytest.approx(((k + 1) * 1.0, (len(g.layers) - k - 1) * 0.5))
    assert b.hop_bytes == (cut,)
    assert b.hop_ms[0] == pytest.approx(1e3 * (cut * 8 / 8e6 + 0.005))
    assert b.return_ms == pytest.approx(1e3 * (out * 8 / 16e6 + 0.005))
    assert b.latency_ms == pytest.approx(sum(b.compute_ms) + b.hop_ms[0] + b.return_ms)
    # a stream's bottleneck counts the link's occupancy: the rtt/2 overlaps other requests
    assert b.bottleneck_ms == pytest.approx(max(*b.compute_ms, 1e3 * cut * 8 / 8e6))
    assert b.bottleneck_ms < b.hop_ms[0]


def test_a_senders_busy_time_counts_in_the_bottleneck_only_and_moves_the_throughput_plan():
    """The send rule by hand: the end's stage sends the cut up its link and is busy
    send_ms + per-byte x cut longer (the bottleneck), the latency does not change, a device
    without layers pays nothing; and the planners see it: with a large send cost the best
    throughput plan stops sending from the end."""
    g = ts.load(zoo.make("chain"))
    table = {layer.name: {"end": 1.0, "edge": 0.5} for layer in g.layers}
    link = Link("l", up_bps=8e9, down_bps=16e9, rtt_s=0.0)
    costs = CostTable.from_mapping(["end", "edge"], table)
    k = g.index("pool1")
    split = [0] * (k + 1) + [1] * (len(g.layers) - k - 1)
    cut = g.cut_after("pool1").nbytes
    plain = evaluate(Problem(g, costs, (link,), objective="throughput"), split)
    sends = Problem(g, costs, (link,), objective="throughput", send_ms=(7.0, 100.0),
                    send_ms_per_byte=(1e-5, 1.0))
    b = evaluate(sends, split)
    assert b.send_ms == pytest.approx((7.0 + 1e-5 * cut, 0.0))   # the edge sends up no link
    assert b.bottleneck_ms == pytest.approx(max(b.compute_ms[0] + b.send_ms[0], b.compute_ms[1],
                                                b.hop_ms[0]))
    assert b.latency_ms == pytest.approx(plain.latency_ms)
    assert b.compute_ms == plain.compute_ms
    all_edge = evaluate(sends, [1] * len(g.layers))   # the input is sent by the client
    assert all_edge.send_ms == (0.0, 0.0)
    assert sends.send_busy_ms(0, 0, True) == 0.0     # nothing to send: no fixed cost
    heavy = Problem(g, costs, (link,), objective="throughput", send_ms=(1e3, 0.0))
    for method in ("chain-dp", "dag-ilp", "oracle"):
        _, best = plan(heavy, method)
        assert set(best.assignment) in ({0}, {1}), (method, best.assignment)
    with pytest.raises(PlanningError, match="send_ms_per_byte needs one finite"):
        Problem(g, costs, (link,), send_ms_per_byte=(-1.0, 0.0))


def test_slow_link_keeps_everything_on_the_end_device_and_fast_link_offloads():
    g = ts.load(zoo.make("resnet"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 100.0})
    slow = plan(Problem(g, costs, (Link("slow", 1e4, 1e4, 0.1),)))[1]
    fast = plan(Problem(g, costs, (Link("fast", 1e10, 1e10, 0.0),)))[1]
    assert set(slow.assignment) == {0}
    assert set(fast.assignment) == {1}


def test_bad_problems_name_the_culprit():
    g = ts.load(zoo.make("chain"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    with pytest.raises(PlanningError, match="need 1 link"):
        Problem(g, costs, ())
    with pytest.raises(PlanningError, match="objective"):
        Problem(g, costs, (Link.profile("4g"),), objective="fastest")
    with pytest.raises(PlanningError, match="pinned layer 'nope'"):
        Problem(g, costs, (Link.profile("4g"),), pins=(("nope", 0),))
    partial = CostTable.from_mapping(["end", "edge"], {"conv1": {"end": 1, "edge": 1}})
    with pytest.raises(PlanningError, match="no times for layer"):
        Problem(g, partial, (Link.profile("4g"),))
    tiny = Problem(g, costs, (Link.profile("4g"),), mem_cap_bytes=(1000, 1000))
    with pytest.raises(PlanningError, match=r"layer 'conv1' needs \d+ bytes .* largest memory cap is 1000"):
        plan(tiny)
    with pytest.raises(ts.TvmsplitError, match="unknown link profile"):
        Link.profile("5g")


def test_cost_table_files(tmp_path):
    (tmp_path / "c.csv").write_text("layer,end,edge\nconv1,1.5,0.2\nfc,3,0.1\n")
    t = CostTable.from_file(tmp_path / "c.csv")
    assert t.devices == ("end", "edge") and t.compute_ms == ((1.5, 0.2), (3.0, 0.1))
    (tmp_path / "c.json").write_text('{"devices": ["end", "edge"], "compute_ms": '
                                     '{"conv1": {"end": 1.5, "edge": 0.2}, "fc": {"end": 3, "edge": 0.1}}}')
    assert CostTable.from_file(tmp_path / "c.json") == t
    (tmp_path / "bad.csv").write_text("layer,end\nconv1,abc\n")
    with pytest.raises(PlanningError, match="bad.csv"):
        CostTable.from_file(tmp_path / "bad.csv")


def test_three_devices_on_a_path_and_memory_caps_force_splits():
    g = ts.load(zoo.make("vgg16", input_size=32, width=0.25))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0, "cloud": 100.0})
    links = (Link.profile("wifi"), Link("wan", 1e8, 1e8, 0.02))
    fc1 = g.layer("fc1").param_bytes
    cap = int(g.param_bytes - fc1 / 2)  # nothing holds the whole model
    problem = Problem(g, costs, links, mem_cap_bytes=(cap, cap, cap))
    name, b = plan(problem)
    assert name == "chain-dp" and len(set(b.assignment)) >= 2
    assert all(m <= cap for m in b.memory_bytes)
    _, ilp = plan(problem, "dag-ilp")
    assert ilp.latency_ms == pytest.approx(b.latency_ms, rel=1e-6)
    assert np.all(np.diff(b.assignment) >= 0)


@pytest.mark.timeout(600)
def test_hyps_splits_an_oversized_fc_and_the_pipeline_equals_the_unsplit_model(tmp_path):
    """VGG16-shaped (width 1/4, 224x224): fc1 holds 25.7 MB; with 24 MB per device it fits nowhere,
    so it becomes the fewest H-parts that fit (2), placed on both devices; output unchanged."""
    from tvmsplit.check import check_bundle, compare, random_inputs, reference
    from tvmsplit.hsplit import fewest_parts
    from tvmsplit.planning import plan_partition

    g = ts.load(zoo.make("vgg16", width=0.25), name="vgg16")
    cap = 24_000_000
    assert g.layer("fc1").param_bytes > cap
    assert fewest_parts(g, "fc1", cap) == 2
    assert fewest_parts(g, "fc1", cap // 2) == 3
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    devices = [Device("end", "x86_64", cap), Device("edge", "x86_64", cap)]
    with pytest.raises(PlanningError, match=r"layer 'fc1' needs \d+ bytes .* largest memory cap is 24000000"):
        plan_partition(g, devices, [Link.profile("wifi")], costs, horizontal=False)
    result = plan_partition(g, devices, [Link.profile("wifi")], costs)
    assert result.horizontal == (("fc1", 2),)
    parts = {name: d for name, d in zip((l.name for l in result.graph.layers), result.predicted.assignment)}
    assert {parts["fc1_h0"], parts["fc1_h1"]} == {0, 1}  # the H-parts run on both devices
    assert all(m <= cap for m in result.predicted.memory_bytes)
    # the H-parts get stages of their own, fed by the same stage, merged by another: they run
    # in parallel on the two devices (a stage DAG)
    stage_of = {name: s.index for s in result.plan.stages for name in s.layers}
    h0, h1 = stage_of["fc1_h0"], stage_of["fc1_h1"]
    assert {result.stage_devices[h0], result.stage_devices[h1]} == {0, 1}
    assert not result.plan.is_chain
    assert [src for src, _ in result.plan.senders(h0)] == [src for src, _ in result.plan.senders(h1)]
    bundle = ts.build_bundle(result.graph, result.plan, tmp_path / "b")
    x = random_inputs(g.inputs)
    report = check_bundle(bundle, result.graph, x)
    assert report.ok
    want = reference(g, x)["output"]
    assert compare(report.outputs["output"], want, "output").rel <= 1e-4
    from tvmsplit.runtime.pipeline import Pipeline

    with Pipeline(bundle, timeout_s=120) as p:
        y, trace = p.run(x)
    assert compare(y["output"], want, "output").rel <= 1e-4
    assert {(h.src, h.dst) for h in trace.hops} >= {(h0 - 1, h0), (h0 - 1, h1), (h0, stage_of["fc1_merge"]),
                                                   (h1, stage_of["fc1_merge"])}


def test_energy_prefers_offloading_when_the_end_device_burns_power():
    """A battery-powered end device (5 W busy, 0.5 W idle, 2 W radio) and a mains-powered edge
    that is slower than it: latency keeps every layer on the end device, energy offloads them all.
    The energy figures are worked out here from the documented power model (busy for its compute,
    transmitting while it sends, idle for the rest of the latency), not taken from ``evaluate``."""
    g = ts.load(zoo.make("chain"))
    costs = CostTable.from_flops(g, {"end": 6.0, "edge": 5.0})  # the edge is the slower one
    link = Link("fast", 1e9, 1e9, 0.0)
    power = (PowerModel(busy_w=5.0, idle_w=0.5, tx_w=2.0), PowerModel())
    by_latency = plan(Problem(g, costs, (link,), objective="latency", power=power))[1]
    by_energy = plan(Problem(g, costs, (link,), objective="energy", power=power))[1]
    assert set(by_latency.assignment) == {0} and set(by_energy.assignment) == {1}
    end_ms = sum(layer.flops for layer in g.layers) / 6.0e9 * 1e3
    edge_ms = end_ms * 6.0 / 5.0
    up_ms = g.inputs[0].nbytes * 8 / 1e9 * 1e3
    back_ms = g.outputs[0].nbytes * 8 / 1e9 * 1e3
    assert by_latency.latency_ms == pytest.approx(end_ms, rel=1e-9)
    assert by_latency.energy_mj == pytest.approx(5.0 * end_ms, rel=1e-9)  # busy all along
    lat = up_ms + edge_ms + back_ms
    assert by_energy.latency_ms == pytest.approx(lat, rel=1e-9) and lat > end_ms
    assert by_energy.energy_mj == pytest.approx(2.0 * up_ms + 0.5 * (lat - up_ms), rel=1e-9)
    assert by_energy.energy_mj < by_latency.energy_mj / 5
    with pytest.raises(PlanningError, match="power model"):
        Problem(g, costs, (link,), objective="energy")


def test_several_end_devices_share_one_edge():
    """Three phones share one edge: shares sum to <= 1, the plan's worst latency equals a brute
    force over the share grid, and a phone fast enough alone leaves the edge alone."""
    import itertools

    from tvmsplit.partition.multi import EndDevice, plan_shared_edge, with_shares

    g = ts.load(zoo.make("chain"))
    link = Link("wifi", 20e6, 50e6, 0.005)
    devices = []
    for name, end_gflops, deadline in (("slow", 0.5, None), ("mid", 2.0, None), ("fast", 50.0, 100.0)):
        costs = CostTable.from_flops(g, {"end": end_gflops, "edge": 40.0})
        devices.append(EndDevice(name, Problem(g, costs, (link,)), deadline))
    steps = 6
    shared = plan_shared_edge(devices, steps=steps)
    assert sum(shared.compute_share) <= 1 + 1e-9 and sum(shared.bandwidth_share) <= 1 + 1e-9
    assert shared.compute_share[2] == 0 and shared.bandwidth_share[2] == 0  # "fast" stays alone
    assert set(shared.plans[2].assignment) == {0}
    assert any(set(p.assignment) != {0} for p in shared.plans[:2])  # someone offloads

    def best(problem):
        try:
            return plan(problem)[1].latency_ms
        except PlanningError:
            return math.inf

    grid = [(c, b) for c in range(steps + 1) for b in range(steps + 1)
            if (c == 0) == (b == 0)]
    brute = math.inf
    table = {(i, pair): best(with_shares(d.problem, pair[0] / steps, pair[1] / steps))
             for i, d in enumerate(devices) for pair in grid}
    for pairs in itertools.product(grid, repeat=3):
        if sum(p[0] for p in pairs) <= steps and sum(p[1] for p in pairs) <= steps:
            if devices[2].deadline_ms and pairs[2] != (0, 0):
                continue  # the rule: a device fast enough alone does not take edge shares
            brute = min(brute, max(table[(i, p)] for i, p in enumerate(pairs)))
    assert shared.worst_latency_ms == pytest.approx(brute, rel=1e-9)


def test_mincut_returns_the_cut_it_prices_with_float_costs():
    """Regression (found by the property test): with float capacities networkx reported the
    right cut value (10.903 ms) but a source side worth 11.167 ms ("all on the edge"), because it
    finds saturated edges by float equality. Integer capacities give the oracle's plan."""
    from tvmsplit.devices import Link
    from tvmsplit.graph import Layer, LayerGraph, TensorSpec
    from tvmsplit.partition.oracle import plan_oracle

    t = lambda n: TensorSpec(n, "float32", (1,))  # noqa: E731
    def layer(name, ins):
        return Layer(name=name, op="Op", nodes=(name,), ops=("Op",),
                     inputs=tuple(t(i) for i in ins), outputs=(t("t" + name[1:]),), macs=0,
                     flops=0, param_bytes=0, attrs=())
    layers = (layer("L0", ["x"]), layer("L1", ["x"]), layer("L2", ["x", "t0", "t1"]),
              layer("L3", ["x"]), layer("L4", ["x"]), layer("L5", ["x"]),
              layer("L6", ["x", "t2", "t3", "t4", "t5"]))
    g = LayerGraph("random", layers, (t("x"),), (t("t6"),), "", None)
    costs = CostTable(("d0", "d1"), tuple(x.name for x in layers),
                      ((0.0, 0.0), (9.8070806464816, 1.1028889988956854), (1.0, 10.0), (0, 0),
                       (0, 0), (0, 0), (1.0, 0.0)))
    problem = Problem(g, costs, (Link("l0", 1e6, 1e6, 0.0),), objective="latency")
    want = plan_oracle(problem)
    _, got = plan(problem, "dag-mincut")
    assert got.assignment == want.assignment == (0, 0, 0, 1, 1, 1, 1)
    assert math.isclose(got.latency_ms, 10.9030806464816, rel_tol=1e-12)


def test_evaluation_candidates_are_both_single_sites_and_every_single_cut():
    """evaluate.candidates: all-end, all-edge, one plan per cut candidate (a DAG's cuts too),
    each priced by the cost model; the planner's choice is named after the one it equals."""
    from tvmsplit.evaluate import candidates

    g = ts.load(zoo.make("inception"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    problem = Problem(g, costs, (Link("l", up_bps=8e6, down_bps=16e6, rtt_s=0.01),))
    best = plan(problem)[1]
    cands, chosen = candidates(problem, best.assignment)
    names = [c.name for c in cands]
    assert names[:2] == ["all-end", "all-edge"]
    assert names[2:len(g.cut_candidates) + 2] == [f"cut@{c.after}" for c in g.cut_candidates]
    assert len({c.assignment for c in cands}) == len(cands)       # no plan measured twice
    assert chosen in names and next(c for c in cands if c.name == chosen).assignment == \
        best.assignment
    for c in cands:
        assert c.predicted == evaluate(problem, c.assignment)
        assert c.placement == tuple(("end", "edge")[d] for d in sorted(set(c.assignment)))
    # a cut's prefix runs on the end device: never an edge layer before an end layer
    assert all(list(c.assignment) == sorted(c.assignment) for c in cands if c.name != chosen)


def test_evaluation_prunes_only_hopeless_alternatives():
    """evaluate._hopeless: candidates predicted over ``prune`` x the best prediction run once;
    the chosen plan and both single sites never are; prune=None keeps every candidate."""
    from tvmsplit.evaluate import _hopeless, candidates

    g = ts.load(zoo.make("chain"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    problem = Problem(g, costs, (Link("3g", up_bps=1.1e6, down_bps=4.6e6, rtt_s=0.1),))
    cands, chosen = candidates(problem, plan(problem)[1].assignment)
    best = min(c.predicted.latency_ms for c in cands)
    pruned = _hopeless(cands, chosen, "latency", 5.0)
    assert pruned == {c.name for c in cands if c.predicted.latency_ms > 5 * best} - \
        {chosen, "all-end", "all-edge"}
    assert pruned and chosen not in pruned and "all-edge" not in pruned
    assert _hopeless(cands, chosen, "latency", None) == set()
    assert _hopeless(cands, chosen, "throughput", 1e9) == set()


def test_send_cost_fit_through_the_probe_points():
    from tvmsplit.evaluate import fit_send_cost

    assert fit_send_cost([]) == (0.0, 0.0)
    assert fit_send_cost([(1000, 4.0)]) == (4.0, 0.0)
    fixed, per_byte = fit_send_cost([(51_200, 12.0), (1024, 2.0)])   # any order
    assert per_byte == pytest.approx(10.0 / 50_176)
    assert fixed == pytest.approx(2.0 - per_byte * 1024)
    assert fit_send_cost([(1024, 9.0), (51_200, 5.0)]) == (7.0, 0.0)  # bigger but cheaper: noise
    assert fit_send_cost([(1024, -3.0)]) == (0.0, 0.0)
    assert fit_send_cost([(1024, -6.9), (18_432, -0.5)]) == (0.0, 0.0)  # noise makes no slope
    assert fit_send_cost([(1024, 0.0), (51_200, 50.0)])[0] == 0.0     # never a negative fixed part


def test_streamed_throughput_does_not_count_the_pipelines_fill():
    """A stream's rate is from the first answer to the last: a plan of 215 ms latency that
    answers every 100 ms streams 10 req/s, however few requests (counted from the start, 3 of
    them would give 7.2 and rank it by its latency)."""
    from tvmsplit.evaluate import steady_rate

    assert steady_rate(0.0, [0.215, 0.315, 0.415]) == pytest.approx(10.0)
    assert steady_rate(0.0, [0.5]) == pytest.approx(2.0)     # one answer: 1 / its latency
    assert steady_rate(0.0, []) == 0.0


def test_evaluation_with_a_failed_candidate_ranks_it_last_and_writes_plain_json():
    """A candidate whose run failed (a request timed out) is the worst there is: best and regret
    are over the plans that ran, a failed chosen plan has regret inf (JSON null), the JSON names
    each failure and has no Infinity or NaN."""
    from tvmsplit.evaluate import Evaluation, Measured, candidates
    from tvmsplit.profile import Timing

    g = ts.load(zoo.make("chain"))
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    link = Link("l", up_bps=8e6, down_bps=16e6, rtt_s=0.01)
    problem = Problem(g, costs, (link,))
    cands, _ = candidates(problem, [0] * len(g.layers))
    by = {c.name: c for c in cands}
    cut = next(name for name in by if name.startswith("cut@"))
    why = "round 1: request 0 timed out after 120 s (logs: /tmp/x, 3 file(s))"

    def run(name, ms, failed=""):
        return Measured(by[name], Timing.of(ms), (1.0,) * len(by[name].placement), failed=failed)

    runs = (run("all-end", [10.0, 11.0, 12.0]), run("all-edge", [20.0, 21.0, 22.0]),
            run(cut, [math.inf], failed=why))   # failed before any sample
    site = (("end: tvmsplit", 11.0), ("edge: tvmsplit", 21.0))

    def ev(chosen):
        return Evaluation("chain", (), link, "none", "latency", chosen, "dp", runs, site)

    ok_ = ev("all-edge")
    assert ok_.best.candidate.name == "all-end" and ok_.regret == pytest.approx(21 / 11)
    assert ok_.failed == {cut: why} and math.isfinite(ok_.noise)
    bad = ev(cut)
    assert bad.regret == math.inf and bad.speedup == 0.0
    text = json.dumps(bad.to_json(), allow_nan=False)   # plain JSON: no Infinity, no NaN
    data = json.loads(text)
    assert data["regret"] is None and data["failed"] == {cut: why} and data["best"] == "all-end"
    failed_plan = next(p for p in data["plans"] if p["name"] == cut)
    assert failed_plan["failed"] == why and failed_plan["measured"] is None \
        and failed_plan["error"] is None
    assert all(p["failed"] == "" for p in data["plans"] if p["name"] != cut)


def _two_layer_problem(table, link, **kw) -> Problem:
    """A -> B on devices (end, edge); every tensor 1000 bytes."""
    x, ta, tb = (TensorSpec(n, "float32", (250,)) for n in ("x", "tA", "tB"))
    layers = (Layer("A", "Op", ("A",), ("Op",), (x,), (ta,), 0, 0, 0),
              Layer("B", "Op", ("B",), ("Op",), (ta,), (tb,), 0, 0, 0))
    g = LayerGraph("two", layers, (x,), (tb,), "", None)
    return Problem(g, CostTable.from_mapping(["end", "edge"], table), (link,), **kw)


def test_overheads_are_priced_by_hand():
    """A device that runs a layer adds its overhead to its compute (latency, bottleneck and busy
    energy see it); a device without layers adds nothing. Figures worked out by hand."""
    link = Link("l", up_bps=8e6, down_bps=16e6, rtt_s=0.01)  # 1000 B: 6 ms up, 5.5 ms down
    power = (PowerModel(busy_w=5.0, idle_w=0.5, tx_w=2.0), PowerModel(busy_w=1.0, idle_w=0.2))
    table = {"A": {"end": 2.0, "edge": 1.0}, "B": {"end": 4.0, "edge": 0.5}}
    problem = _two_layer_problem(table, link, objective="energy", power=power,
                                 stage_overhead_ms=(10.0, 3.0))
    split = evaluate(problem, [0, 1])
    assert split.compute_ms == pytest.approx((12.0, 3.5))
    assert split.hop_ms == pytest.approx((6.0,)) and split.return_ms == pytest.approx(5.5)
    assert split.latency_ms == pytest.approx(27.0) and split.bottleneck_ms == pytest.approx(12.0)
    # end: busy 12 ms x 5 W, sends 6 ms x 2 W, idles 9 ms x 0.5 W;
    # edge: busy 3.5 ms x 1 W, idles 23.5 ms x 0.2 W
    assert split.energy_mj == pytest.approx(60 + 12 + 4.5 + 3.5 + 4.7)
    end = evaluate(problem, [0, 0])
    assert end.compute_ms == pytest.approx((16.0, 0.0)) and end.latency_ms == pytest.approx(16.0)
    assert end.bottleneck_ms == pytest.approx(16.0) and end.energy_mj == pytest.approx(80 + 3.2)
    edge = evaluate(problem, [1, 1])
    assert edge.compute_ms == pytest.approx((0.0, 4.5)) and edge.latency_ms == pytest.approx(16.0)
    assert edge.bottleneck_ms == pytest.approx(4.5)   # the link is busy 1 ms (its delay overlaps)
    assert edge.energy_mj == pytest.approx(12 + 5 + 4.5 + 2.3)
    plain = evaluate(_two_layer_problem(table, link), [0, 1])
    assert plain.compute_ms == pytest.approx((2.0, 0.5)) and plain.latency_ms == pytest.approx(14.0)


def test_a_split_that_wins_without_overhead_loses_to_a_single_site_with_it():
    """The split (4 ms) beats all-on-edge (8 ms) and all-on-end (11 ms), but by less than the end
    device's overhead: with overheads (5, 0.5) all-on-edge (8.5 ms) beats the split (9.5 ms)."""
    link = Link("l", up_bps=8e6, down_bps=8e6, rtt_s=0.0)  # 1000 B: 1 ms each way
    table = {"A": {"end": 1.0, "edge": 5.0}, "B": {"end": 10.0, "edge": 1.0}}
    for method in ("chain-dp", "dag-mincut", "dag-ilp", "oracle", "auto"):
        _, plain = plan(_two_layer_problem(table, link), method)
        assert plain.assignment == (0, 1) and plain.latency_ms == pytest.approx(4.0), method
        _, paid = plan(_two_layer_problem(table, link, stage_overhead_ms=(5.0, 0.5)), method)
        assert paid.assignment == (1, 1) and paid.latency_ms == pytest.approx(8.5), method
    # the min cut itself is a single site (all on the end device, 2 ms against 4 ms on the edge):
    # the end device's overhead makes all-on-edge win
    table = {"A": {"end": 1.0, "edge": 1.0}, "B": {"end": 1.0, "edge": 1.0}}
    for method in ("chain-dp", "dag-mincut", "dag-ilp", "oracle"):
        assert plan(_two_layer_problem(table, link), method)[1].assignment == (0, 0), method
        _, paid = plan(_two_layer_problem(table, link, stage_overhead_ms=(5.0, 0.0)), method)
        assert paid.assignment == (1, 1) and paid.latency_ms == pytest.approx(4.0), method


def test_bad_overheads_are_refused_and_copies_keep_them():
    from tvmsplit.partition.multi import with_shares

    link = Link("l", 8e6, 8e6)
    table = {"A": {"end": 1.0, "edge": 1.0}, "B": {"end": 1.0, "edge": 1.0}}
    for bad in ((1.0,), (-1.0, 0.0), (math.nan, 0.0), (0.0, math.inf)):
        with pytest.raises(PlanningError, match="stage_overhead_ms needs one finite, non-negative"):
            _two_layer_problem(table, link, stage_overhead_ms=bad)
    problem = _two_layer_problem(table, link, stage_overhead_ms=(2.0, 1.0))
    assert problem.overhead == (2.0, 1.0) and _two_layer_problem(table, link).overhead == (0.0, 0.0)
    # the edge's (device 1) per-request work runs under its compute share, as its layers do
    assert with_shares(problem, 0.5, 0.5).stage_overhead_ms == (2.0, 2.0)


def test_plan_partition_takes_overheads_by_device_name():
    from tvmsplit.planning import plan_partition

    link = Link("l", up_bps=8e6, down_bps=8e6, rtt_s=0.0)
    table = {"A": {"end": 1.0, "edge": 5.0}, "B": {"end": 10.0, "edge": 1.0}}
    base = _two_layer_problem(table, link)
    devices = [Device("end", "x86_64"), Device("edge", "x86_64")]
    plain = plan_partition(base.graph, devices, [link], base.costs)
    assert plain.predicted == plan_partition(base.graph, devices, [link], base.costs,
                                             stage_overhead_ms={}).predicted
    assert plain.predicted.assignment == (0, 1)
    paid = plan_partition(base.graph, devices, [link], base.costs, stage_overhead_ms={"end": 5.0})
    assert paid.predicted.assignment == (1, 1) and paid.predicted.latency_ms == pytest.approx(8.0)
    assert dict(paid.baselines)["all-on-end"].latency_ms == pytest.approx(16.0)
    with pytest.raises(PlanningError, match="stage overhead for unknown device.*'phone'"):
        plan_partition(base.graph, devices, [link], base.costs, stage_overhead_ms={"phone": 1.0})
