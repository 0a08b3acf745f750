"""Stage DAGs: direct routes, fan-out and fan-in, stages that run in parallel.

Plans tier (no TVM build): routes of ``plan_split(routing="direct")``, ``parallel_stages`` and
the gather logic. Runtime tier: real workers on 127.0.0.1; the invariant is the same as for
chains (the pipeline's output equals the unsplit model's and onnxruntime's), plus proof that
independent stages do not wait for each other.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import zmq
from onnx import TensorProto, helper, numpy_helper

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import check_bundle, compare, random_inputs, reference
from tvmsplit.devices import Device, Link
from tvmsplit.errors import BundleError, SplitError
from tvmsplit.partition import CostTable
from tvmsplit.planning import parallel_stages, plan_partition
from tvmsplit.runtime import wire
from tvmsplit.runtime.gather import Gather, GatherError, Part, merge_traces
from tvmsplit.runtime.pipeline import Pipeline, PipelineError
from tvmsplit.plan import CLIENT_END, Plan, Route

from cli_helpers import invoke, ok
from hand_workers import HandStartedWorkers, worker_command

RTOL = 1e-4


def _inception_assignment(g) -> dict[str, int]:
    """Stage 0: stem; stages 1 and 2: two pairs of inc1's branches (independent); 3: the rest."""
    out = {}
    for layer in g.layers:
        name = layer.name
        if name in ("conv1", "pool1"):
            out[name] = 0
        elif name.startswith(("inc1_branch1x1", "inc1_branch3x3")):
            out[name] = 1
        elif name.startswith("inc1_branch"):
            out[name] = 2
        else:
            out[name] = 3
    return out


def _two_output_model():
    """input -> conv a -> relu -> out_a; input -> conv b -> out_b: two independent branches."""
    rng = np.random.default_rng(0)
    w = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ya"], ["out_a"], name="relu_a"),
             helper.make_node("Conv", ["x", "wb"], ["out_b"], name="conv_b")]
    graph = helper.make_graph(
        nodes, "two_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out_a", TensorProto.FLOAT, [1, 8, 16, 16]),
         helper.make_tensor_value_info("out_b", TensorProto.FLOAT, [1, 4, 14, 14])],
        initializer=[w("wa", (8, 3, 3, 3)), w("wb", (4, 3, 3, 3))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ------------------------------------------------------------------------------------ plans
def test_direct_routes_go_from_producer_to_readers():
    g = ts.load(zoo.make("inception"), name="inception")
    plan = ts.plan_split(g, stage_of=_inception_assignment(g), routing="direct")
    assert not plan.is_chain
    assert plan.entry == (Route(0, ("input",)),)
    s0, s1, s2, s3 = plan.stages
    assert [r.to for r in s0.sends] == [1, 2] and all(r.tensors == ("pool1",) for r in s0.sends)
    assert [r.to for r in s1.sends] == [3] and [r.to for r in s2.sends] == [3]
    assert s3.sends == (Route(CLIENT_END, ("output",)),)
    assert [src for src, _ in plan.senders(3)] == [1, 2]
    assert {t.name for t in s3.inputs} == set(s1.sends[0].tensors) | set(s2.sends[0].tensors)
    assert plan.route_problems(["input"], ["output"]) == []
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(SplitError, match="no chain of cuts"):
        plan.cuts
    # the chain routing of the same assignment forwards pool1 through stage 1
    chain = ts.plan_split(g, stage_of=_inception_assignment(g))
    assert chain.is_chain and "pool1" in chain.stages[1].sends[0].tensors
    # a plan saved before routes existed reads as the chain it was
    old = chain.to_json()
    del old["entry"]
    for s in old["stages"]:
        del s["sends"]
    assert Plan.from_json(old) == chain
    with pytest.raises(SplitError, match="unknown routing 'star'"):
        ts.plan_split(g, stage_of=_inception_assignment(g), routing="star")


def test_route_problems_name_what_is_wrong():
    g = ts.load(zoo.make("inception"), name="inception")
    plan = ts.plan_split(g, stage_of=_inception_assignment(g), routing="direct")
    from dataclasses import replace

    broken = replace(plan, stages=(replace(plan.stages[0], sends=plan.stages[0].sends[:1]),
                                   *plan.stages[1:]))
    problems = broken.route_problems(["input"], ["output"])
    assert any("stage 2 receives []" in p for p in problems)
    backwards = replace(plan, stages=(*plan.stages[:3], replace(plan.stages[3], sends=(
        Route(1, ("output",)), Route(CLIENT_END, ("output",))))))
    assert any("stage 3 sends to stage 1" in p for p in backwards.route_problems(["input"], ["output"]))
    twice = replace(plan, stages=(replace(plan.stages[0], sends=(
        Route(1, ("pool1",)), Route(1, ()), Route(2, ("pool1",)))), *plan.stages[1:]))
    problems = twice.route_problems(["input"], ["output"])
    assert any("two routes to one destination" in p for p in problems)
    assert any("stage 0 has an empty route to stage 1" in p for p in problems)


def test_parallel_stages_cut_where_devices_can_overlap():
    # HyPS: fc1 of a VGG16-shaped model fits no 24 MB device -> 2 H-parts, one per device
    g = ts.load(zoo.make("vgg16", width=0.25), name="vgg16")
    costs = CostTable.from_flops(g, {"end": 1.0, "edge": 10.0})
    devices = [Device("end", "x86_64", 24_000_000), Device("edge", "x86_64", 24_000_000)]
    result = plan_partition(g, devices, [Link.profile("wifi")], costs)
    plan = result.plan
    stage_of = {name: s.index for s in plan.stages for name in s.layers}
    h0, h1 = stage_of["fc1_h0"], stage_of["fc1_h1"]
    assert {result.stage_devices[h0], result.stage_devices[h1]} == {0, 1}
    assert plan.stages[h0].layers == ("fc1_h0",) and plan.stages[h1].layers == ("fc1_h1",)
    # both H-parts get fc1's input straight from the stage that produced it, and send to the merge
    feeder = [src for src, _ in plan.senders(h0)]
    assert feeder == [src for src, _ in plan.senders(h1)] and len(feeder) == 1
    merge = stage_of["fc1_merge"]
    assert sorted(src for src, _ in plan.senders(merge)) == sorted([h0, h1])
    assert max(result.predicted.compute_ms) < result.critical_path_ms < result.predicted.latency_ms
    assert plan_partition(g, devices, [Link.profile("wifi")], costs, parallel=False).plan.is_chain
    # a cut inside a residual block has nothing to overlap: one stage per device, a chain
    r = ts.load(zoo.make("resnet"))
    k = r.index("block1_conv1")
    assert parallel_stages(r, [0 if i <= k else 1 for i in range(len(r.layers))]) == \
        [0 if i <= k else 1 for i in range(len(r.layers))]
    # one inception branch on the end device, the others on the edge: the branch gets its own
    # stage, and the edge's branches start without waiting for it
    i = ts.load(zoo.make("inception"))
    dev = [0 if layer.name in ("conv1", "pool1") or layer.name.startswith("inc1_branch1x1") else 1
           for layer in i.layers]
    stages = parallel_stages(i, dev)
    by_name = dict(zip((layer.name for layer in i.layers), stages))
    assert by_name["conv1"] == by_name["pool1"] != by_name["inc1_branch1x1_conv"]
    assert by_name["inc1_branch3x3_conv"] != by_name["inc1_concat"]
    ts.plan_split(i, stage_of=by_name, routing="direct")  # a valid stage DAG


def test_gather_collects_parts_and_drops_late_ones():
    routes = [(1, Route(3, ("a", "b"))), (2, Route(3, ("c",)))]
    g = Gather(routes, "stage 3", max_open=2)
    part = lambda src, names: Part(src, {n: np.zeros(1) for n in names}, ({"stage": src},), 0.0, 8)  # noqa: E731
    assert g.source_of(["b", "a"]) == 1
    with pytest.raises(GatherError, match=r"match no sender's route") as err:
        g.source_of(["a"])
    assert err.value.code == "bad_route"
    assert g.add(7, part(2, ["c"])) is None
    with pytest.raises(GatherError) as err:
        g.add(7, part(2, ["c"]))
    assert err.value.code == "duplicate_part"
    done = g.add(7, part(1, ["a", "b"]))
    assert [p.source for p in done] == [1, 2]
    assert g.add(7, part(1, ["a", "b"])) is None  # late: the request is over
    assert g.fail(8) and not g.fail(8)  # an error is passed on once
    assert g.add(8, part(1, ["a", "b"])) is None and g.is_closed(8)
    for rid in (10, 11, 12):
        g.add(rid, part(1, ["a", "b"]))
    assert g.overflow() == [10] and g.is_closed(10)
    after_swap = Gather(routes, "stage 3", closed=g)  # ids that are over stay over
    assert after_swap.is_closed(7) and after_swap.add(8, part(1, ["a", "b"])) is None
    merged = merge_traces([Part(1, {}, ({"stage": 0}, {"stage": 1}), 0, 0),
                           Part(2, {}, ({"stage": 0}, {"stage": 2}), 0, 0)])
    assert [e["stage"] for e in merged] == [0, 1, 2]


# ---------------------------------------------------------------------------------- runtime
@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        root = tmp_path_factory.mktemp("dag")
        g = ts.load(zoo.make("inception"), name="inception")
        plan = ts.plan_split(g, stage_of=_inception_assignment(g), routing="direct")
        bundle = ts.build_bundle(g, plan, root / "inception")
        two = ts.load(_two_output_model(), name="two_outputs")
        two_bundle = ts.build_bundle(two, ts.plan_split(two, stage_of={"conv_a": 0, "conv_b": 1},
                                                        routing="direct"), root / "two")
    x = random_inputs(g.inputs, seed=3)
    return {"graph": g, "bundle": bundle, "x": x, "ref": reference(g, x),
            "two": (two, two_bundle)}


def _assert_close(got, want, what):
    assert set(got) == set(want), what
    for key, value in want.items():
        assert compare(got[key], value, key).rel <= RTOL, f"{what}: {key}"


def test_dag_pipeline_equals_onnxruntime_with_parallel_hops(dag):
    bundle, x = dag["bundle"], dag["x"]
    report = check_bundle(bundle, dag["graph"], x)
    assert report.ok
    with Pipeline(bundle) as p:
        y, trace = p.run(x)
        _assert_close(y, dag["ref"], "stage DAG vs onnxruntime")
        _assert_close(y, report.outputs, "stage DAG vs the stages run one by one")
        assert sorted((h.src, h.dst) for h in trace.hops) == \
            [(-1, 0), (0, 1), (0, 2), (1, 3), (2, 3), (3, -1)]
        assert len(trace.compute_ms) == 4 and all(c > 0 for c in trace.compute_ms)
        # one host, one clock: a hop takes >= 0 ms (1 ms of slack for clock reads), and no hop
        # takes longer than the request it belongs to
        assert all(h.nbytes > 0 and -1.0 < h.ms < trace.total_ms for h in trace.hops), trace.hops
        inputs = [random_inputs(dag["graph"].inputs, seed=50 + i) for i in range(12)]
        got = list(p.stream(inputs))
        for inp, (out, _) in zip(inputs, got):
            _assert_close(out, reference(dag["graph"], inp), "streamed")


def test_swap_between_a_chain_and_a_dag_mid_stream(dag, tmp_path):
    """Re-planning may turn a chain into a stage DAG and back; no request is lost either way."""
    g, dag_bundle = dag["graph"], dag["bundle"]
    chain = ts.build_bundle(g, ts.plan_split(g, ["pool1"]), tmp_path / "chain")
    inputs = [random_inputs(g.inputs, seed=70 + i) for i in range(9)]
    outputs = []
    with Pipeline(chain, max_in_flight=4) as p:
        for k, x in enumerate(inputs):
            outputs.append(p.submit(x))
            if k == 2:
                p.swap(dag_bundle)
                assert len(p.endpoints) == 4
            if k == 5:
                p.swap(chain)
        for x, rid in zip(inputs, outputs):
            _assert_close(p.result(rid)[0], reference(g, x), f"request {rid}")


def test_in_flight_limit_of_a_dag(dag):
    from tvmsplit.runtime.gather import MAX_WAITING

    with pytest.raises(PipelineError, match=f"max_in_flight {MAX_WAITING + 1} is above {MAX_WAITING}"):
        Pipeline(dag["bundle"], max_in_flight=MAX_WAITING + 1)


def test_client_fans_out_and_gathers_outputs_of_two_stages(dag):
    graph, bundle = dag["two"]
    assert [r.to for r in bundle.plan.entry] == [0, 1]  # the input goes to both stages
    x = random_inputs(graph.inputs, seed=5)
    with Pipeline(bundle) as p:
        y, trace = p.run(x)
    _assert_close(y, reference(graph, x), "two outputs from two stages")
    assert sorted((h.src, h.dst) for h in trace.hops) == [(-1, 0), (-1, 1), (0, -1), (1, -1)]


# A refused CURVE handshake, as libzmq's socket monitor reports it on the peer's side: AUTH (the
# ZAP handler's 400), PROTOCOL (a plain peer: no CURVE), or NO_DETAIL when the server dropped the
# connection before the reason was read.
_REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def _peer(ctx, addr, cert=None, server_key=None):
    """A PUSH socket connected to ``addr`` (plain, or a CURVE client holding ``cert``, a
    (public, secret) pair) and its monitor socket."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    if cert is not None:
        s.curve_publickey, s.curve_secretkey = cert
        s.curve_serverkey = server_key
    monitor = s.get_monitor_socket()
    s.connect(addr)
    return s, monitor


def _handshake(monitor, want: int, timeout_s: float = 10.0) -> int:
    """The first monitor event among ``want`` (fails after ``timeout_s``, listing what came)."""
    from zmq.utils.monitor import recv_monitor_message

    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)["event"]
            if event & want:
                return event
            seen.append(zmq.Event(event).name)
    raise AssertionError(f"no {zmq.Event(want)!r} within {timeout_s} s; saw {seen}")


def test_secure_dag_pipeline(dag, tmp_path):
    """CurveZMQ on every route of a stage DAG. Stage 0 fans out to stages 1 and 2 (two CURVE
    client sockets), stage 3 gathers from both (one CURVE server socket, two clients), and the
    answers equal onnxruntime's. The workers' sockets really are CURVE servers that authenticate:
    a plain-TCP peer and a peer with a valid but unauthorized CURVE key, each sending a valid wire
    message straight into the fan-out targets' and the fan-in stage's data sockets, fail the
    handshake, nothing reaches a worker (served/errors counters unchanged, no error comes back)
    and the pipeline keeps working; so does the client's own key, which only entry stages admit.
    Control: the same message sent with a worker's key does arrive."""
    from zmq.auth import load_certificate

    keys, outsider = tmp_path / "keys", tmp_path / "outsider"
    for d, names in ((keys, "client,worker"), (outsider, "mallory")):
        ok(invoke("keys", d, "--names", names))
    client = load_certificate(keys / "client.key_secret")
    worker = load_certificate(keys / "worker.key_secret")
    mallory = load_certificate(outsider / "mallory.key_secret")
    worker_key, _ = load_certificate(keys / "worker.key")
    bundle, x, graph = dag["bundle"], dag["x"], dag["graph"]
    assert [r.to for r in bundle.plan.stages[0].sends] == [1, 2]   # fan-out
    assert [src for src, _ in bundle.plan.senders(3)] == [1, 2]     # fan-in
    ctx = zmq.Context()
    socks = []
    try:
        with Pipeline(bundle, secure=keys, timeout_s=60) as p:
            _assert_close(p.run(x)[0], dag["ref"], "secure DAG")
            health = p.health()
            assert all(h["ok"] for h in health), health
            before = [(h["served"], h["errors"]) for h in health]
            assert before == [(1, 0)] * 4
            for stage in (1, 2, 3):
                addr = p.endpoints[stage]["data"]
                # the client's own key too: only stages feed these stages (per-role ZAP)
                for who, cert in (("plain", None), ("unauthorized", mallory), ("client", client)):
                    s, monitor = _peer(ctx, addr, cert, worker_key)
                    socks += [s, monitor]
                    s.send_multipart(wire.error_reply(700 + stage, stage - 1, "injected", who))
                    _handshake(monitor, _REFUSED)
            assert p.unmatched(timeout_s=1.5) == []  # no error reply came back either
            assert [(h["served"], h["errors"]) for h in p.health()] == before
            _assert_close(p.run(x)[0], dag["ref"], "secure DAG after refused peers")
            # control: with a stage's key (the role that feeds stage 3) the same injection
            # reaches stage 3, which passes the error on to the client (so the checks above
            # could see one)
            s, monitor = _peer(ctx, p.endpoints[3]["data"], worker, worker_key)
            socks += [s, monitor]
            s.send_multipart(wire.error_reply(779, 1, "injected", "authorized peer"))
            assert _handshake(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED | _REFUSED) == \
                zmq.EVENT_HANDSHAKE_SUCCEEDED
            got = p.unmatched(timeout_s=10)
            assert [(m.id, m.error.code) for m in got] == [(779, "injected")]
        # the client gathers the outputs of two stages over CURVE too
        graph, two = dag["two"]
        x = random_inputs(graph.inputs, seed=9)
        with Pipeline(two, secure=keys) as p:
            y, trace = p.run(x)
        _assert_close(y, reference(graph, x), "secure DAG, two stages answer the client")
        assert sorted((h.src, h.dst) for h in trace.hops) == [(-1, 0), (-1, 1), (0, -1), (1, -1)]
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()


def test_independent_stage_runs_while_its_sibling_is_stopped(dag):
    """Stage 2 computes request r although stage 1 (its sibling) is frozen: they do not wait
    for each other; stage 3 waits for both, and the answer is right once stage 1 resumes."""
    bundle, x = dag["bundle"], dag["x"]
    with Pipeline(bundle) as p:
        pid1 = p.endpoints[1]["pid"]
        os.killpg(pid1, signal.SIGSTOP)
        try:
            rid = p.submit(x)
            deadline = time.monotonic() + 20
            while p.health()[2].get("served") != 1:
                assert time.monotonic() < deadline, p.health()
                time.sleep(0.05)
            assert p.health()[3].get("served") == 0  # the merge waits for stage 1's part
        finally:
            os.killpg(pid1, signal.SIGCONT)
        y, _ = p.result(rid)
        _assert_close(y, dag["ref"], "after the sibling resumed")


def test_error_on_one_branch_fails_the_request_once(dag):
    """An error from one branch reaches the client; the other branch's part, arriving later at
    the merge stage, is dropped there (nothing unmatched), and the pipeline keeps working."""
    bundle, x = dag["bundle"], dag["x"]
    ctx = zmq.Context()
    with Pipeline(bundle) as p:
        pid1 = p.endpoints[1]["pid"]
        os.killpg(pid1, signal.SIGSTOP)
        try:
            rid = p.submit(x)
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(p.endpoints[3]["data"])
            s.send_multipart(wire.error_reply(rid, 1, "compute_failed", "branch down"))
            with pytest.raises(PipelineError, match=r"failed at stage 1: \[compute_failed\]") as err:
                p.result(rid)
            assert err.value.code == "compute_failed"
            # a part whose tensors match no sender's route is refused by the merge stage
            s.send_multipart(wire.request(999, 3, [("pool1", np.zeros((1, 64, 16, 16), np.float32))]))
            bad = p.unmatched(timeout_s=10)
            assert [(m.kind, m.id, m.error.code) for m in bad] == [("error", 999, "bad_route")]
            s.close()
        finally:
            os.killpg(pid1, signal.SIGCONT)
            ctx.term()
        assert p.unmatched(timeout_s=1.0) == []  # stage 1's late part was dropped at stage 3
        _assert_close(p.run(x)[0], dag["ref"], "after a branch error")


def test_running_dag_workers_by_hand(dag, tmp_path):
    """The way a user starts a DAG across machines: one --next per route, in the manifest's
    order; the stage that answers the client binds 'out'. A wrong count is refused."""
    bundle, x = dag["bundle"], dag["x"]
    info = {}
    with HandStartedWorkers(bundle, tmp_path) as workers:
        info[3] = workers.start(3)
        info[2] = workers.start(2, "--next", info[3]["data"])
        info[1] = workers.start(1, "--next", info[3]["data"])
        wrong = subprocess.run(worker_command(bundle, 0, "--next", info[1]["data"]),
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 2
        assert "stage 0 sends to stage 1, stage 2: give one --next per destination" in wrong.stderr
        info[0] = workers.start(0, "--next", info[1]["data"], "--next", info[2]["data"])
        for client in range(2):  # a second client: its request ids are not the first one's
            with Pipeline(bundle, endpoints=[info[s] for s in range(4)], timeout_s=20) as p:
                _assert_close(p.run(x)[0], dag["ref"], f"hand-started DAG, client {client}")
        with pytest.raises(PipelineError, match="endpoint 3 has no 'out' address"):
            Pipeline(bundle, endpoints=[info[0], info[1], info[2], {**info[3], "out": None}])


def test_bundle_with_broken_routes_is_refused(dag, tmp_path):
    import shutil

    shutil.copytree(dag["bundle"].path, tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["stages"][0]["sends"] = m["stages"][0]["sends"][:1]
    m["plan"]["stages"][0]["sends"] = m["plan"]["stages"][0]["sends"][:1]
    manifest.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"stage 2 receives \[\] but takes \['pool1'\]"):
        ts.Bundle.load(tmp_path / "b")
