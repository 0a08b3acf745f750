"""Runtime tier: real worker processes over tcp://127.0.0.1 on ephemeral ports.

The invariant: a pipeline of stage workers returns what the unsplit TVM build and onnxruntime
return (1e-4 relative), in order, and every failure comes back as an explicit PipelineError.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import zmq

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import compare, random_inputs, reference
from tvmsplit.errors import ShapeError
from tvmsplit.runtime import wire
from tvmsplit.runtime.pipeline import Pipeline, PipelineError, Trace
from tvmsplit.runtime.stage import StageRunner

from hand_workers import HandStartedWorkers, worker_command

pytestmark = pytest.mark.timeout(120)
RTOL = 1e-4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Graphs, bundles, one input and its expected outputs (unsplit TVM and onnxruntime)."""
    with pytest.MonkeyPatch.context() as mp:  # the build cache of this test session, as conftest
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        root = tmp_path_factory.mktemp("runtime")
        chain = ts.load(zoo.make("chain"), name="chain")
        resnet = ts.load(zoo.make("resnet"), name="resnet")
        b = {
            "chain1": ts.build_bundle(chain, ts.plan_split(chain), root / "chain1"),
            "chain2": ts.build_bundle(chain, ts.plan_split(chain, ["pool1"]), root / "chain2"),
            "chain3": ts.build_bundle(chain, ts.plan_split(chain, ["pool1", "pool2"]),
                                      root / "chain3"),
            "resnet1": ts.build_bundle(resnet, ts.plan_split(resnet), root / "resnet1"),
            "resnet2": ts.build_bundle(resnet, ts.plan_split(resnet, ["block1_conv1"]),
                                       root / "resnet2"),
            # conv1's output skips stage 1 entirely: stage 1 forwards it unchanged
            "resnet3": ts.build_bundle(resnet, ts.plan_split(resnet, ["conv1", "block1_conv1"]),
                                       root / "resnet3"),
        }
    expected = {}
    for name, g in (("chain", chain), ("resnet", resnet)):
        x = random_inputs(g.inputs, seed=1)
        whole = b[f"{name}1"].stages[0]
        with StageRunner(whole.library, whole.plan) as runner:
            expected[name] = (x, runner.run(x), reference(g, x))
    return {"graphs": {"chain": chain, "resnet": resnet}, "bundles": b, "expected": expected}


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        err = compare(got[key], value, key)
        assert err.rel <= RTOL, f"{what}: {key} rel err {err.rel:.2e}"


def _ort_session(graph):
    import onnxruntime as ort

    return ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(graph, n: int) -> list[dict]:
    return [random_inputs(graph.inputs, seed=100 + i) for i in range(n)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("name", ["chain2", "chain3"])
def test_pipeline_equals_unsplit_tvm_and_onnxruntime(built, name):
    bundle = built["bundles"][name]
    n = len(bundle.stages)
    x, whole, ort_out = built["expected"]["chain"]
    with Pipeline(bundle) as p:
        y, trace = p.run(x)
        _assert_close(y, whole, f"{name} vs unsplit TVM")
        _assert_close(y, ort_out, f"{name} vs onnxruntime")
        assert all(v.flags.writeable for v in y.values())
        assert isinstance(trace, Trace) and trace.request_id >= 1
        assert len(trace.compute_ms) == n and all(c > 0 for c in trace.compute_ms)
        assert len(trace.hop_bytes) == len(trace.hop_ms) == n + 1
        # each hop carries at least the tensors crossing it (plus one header frame)
        crossing = [bundle.inputs] + [s.plan.outputs for s in bundle.stages]
        for hop, specs in enumerate(crossing):
            assert trace.hop_bytes[hop] > sum(t.nbytes for t in specs)
        # one host, one clock: a hop takes >= 0 ms (1 ms of slack for clock reads), and no
        # hop takes longer than the whole request
        assert all(-1.0 < ms < trace.total_ms for ms in trace.hop_ms), trace.hop_ms
        assert trace.total_ms >= sum(trace.compute_ms)
        # bad input is refused before anything is sent, and the pipeline keeps working
        with pytest.raises(ShapeError, match="input"):
            p.run({"input": np.zeros((1, 3, 16, 16), np.float32)})
        with pytest.raises(ShapeError, match="float64"):
            p.run({"input": x["input"].astype(np.float64)})
        _assert_close(p.run(x)[0], whole, f"{name} after bad input")


@pytest.mark.parametrize("name", ["resnet2", "resnet3"])
def test_dag_cut_carrying_two_tensors(built, name):
    bundle = built["bundles"][name]
    assert len(bundle.plan.cuts[-1]) == 2  # main path and skip connection
    if name == "resnet3":
        forwarded = {t.name for t in bundle.stages[1].plan.outputs} - \
            {t.name for t in bundle.stages[1].plan.library_outputs}
        assert forwarded  # a tensor that skips stage 1 is forwarded by its worker
    x, whole, ort_out = built["expected"]["resnet"]
    with Pipeline(bundle) as p:
        y, trace = p.run(x)
    _assert_close(y, whole, f"{name} vs unsplit TVM")
    _assert_close(y, ort_out, f"{name} vs onnxruntime")
    for hop, cut in enumerate(bundle.plan.cuts, start=1):
        assert trace.hop_bytes[hop] > sum(t.nbytes for t in cut)


def test_stream_200_requests_in_order_none_lost(built):
    g = built["graphs"]["chain"]
    xs = _inputs(g, 200)
    session = _ort_session(g)
    want = [session.run(None, x)[0] for x in xs]
    with Pipeline(built["bundles"]["chain3"], max_in_flight=8) as p:
        got = list(p.stream(iter(xs)))
        assert len(got) == 200
        ids = [trace.request_id for _, trace in got]
        assert ids == sorted(ids) and len(set(ids)) == 200
        for i, ((y, _), w) in enumerate(zip(got, want)):
            assert compare(y["output"], w, "output").rel <= RTOL, f"request {i} got another output"
        # results taken out of order are buffered by request id
        rids = [p.submit(x) for x in xs[:8]]
        for rid, w in reversed(list(zip(rids, want))):
            y, trace = p.result(rid)
            assert trace.request_id == rid and compare(y["output"], w, "output").rel <= RTOL
        with pytest.raises(PipelineError, match="unknown request id"):
            p.result(rids[0])
        served = [h["served"] for h in p.health()]
        assert served == [208, 208, 208]


def test_killed_worker_fails_in_flight_requests_and_restart_recovers(built):
    g = built["graphs"]["chain"]
    x, whole, _ = built["expected"]["chain"]
    xs = _inputs(g, 200)
    session = _ort_session(g)
    with Pipeline(built["bundles"]["chain3"], timeout_s=60, max_in_flight=8,
                  failover=False) as p:
        victim = p.endpoints[1]["pid"]
        got, t0 = [], time.monotonic()
        with pytest.raises(PipelineError, match="stage 1 worker .* died") as stopped:
            for item in p.stream(xs, return_exceptions=True):
                got.append(item)
                if len(got) == 10:
                    os.killpg(victim, signal.SIGKILL)
        assert time.monotonic() - t0 < 30  # detected from the process, not by the 60 s timeout
        assert stopped.value.code == "worker_died"
        first_err = next(i for i, item in enumerate(got) if isinstance(item, PipelineError))
        assert first_err >= 10
        errors = got[first_err:]
        assert errors and all(isinstance(e, PipelineError) for e in errors)
        assert len(errors) <= 8  # only the requests that were in flight
        for e in errors:
            assert e.code == "worker_died" and e.stage == 1 and e.request_id is not None
            assert "SIGKILL" in str(e) and f"request {e.request_id}" in str(e)
        for i, (y, _) in enumerate(got[:first_err]):
            assert compare(y["output"], session.run(None, xs[i])[0], "output").rel <= RTOL
        assert not _alive(victim)
        with pytest.raises(PipelineError, match="restart"):
            p.run(x)

        old = [e["pid"] for e in p.endpoints]
        p.restart()
        assert not any(_alive(pid) for pid in old)
        assert all(_alive(e["pid"]) for e in p.endpoints)
        _assert_close(p.run(x)[0], whole, "after restart")

        # without return_exceptions the stream raises at the first lost request
        last = p.endpoints[2]["pid"]
        with pytest.raises(PipelineError) as lost:
            for i, _ in enumerate(p.stream(xs)):
                if i == 5:
                    os.killpg(last, signal.SIGKILL)
        assert lost.value.stage == 2 and lost.value.code == "worker_died"
        p.restart()
        _assert_close(p.run(x)[0], whole, "after second restart")


def test_failover_answers_every_request_exactly_once_when_each_stage_is_killed(built):
    """Failover (the default for local workers): SIGKILL each stage in turn mid-stream; every
    request is answered once, in order, equal to onnxruntime; the dead stage is replaced at its
    addresses and the requests in flight are sent again."""
    g = built["graphs"]["chain"]
    xs = _inputs(g, 150)
    session = _ort_session(g)
    with Pipeline(built["bundles"]["chain3"], timeout_s=60, max_in_flight=8) as p:
        assert p.failover is True
        got, killed = [], []
        for item in p.stream(xs):
            got.append(item)
            if len(got) in (20, 60, 100):  # stage 0, then 1, then 2
                stage = len(killed)
                killed.append(p.endpoints[stage]["pid"])
                os.killpg(killed[-1], signal.SIGKILL)
        assert len(got) == len(xs)
        for i, (y, trace) in enumerate(got):
            assert compare(y["output"], session.run(None, xs[i])[0], "output").rel <= RTOL
        assert [f.stage for f in p.failovers] == [0, 1, 2]
        assert [f.old_pid for f in p.failovers] == killed
        assert all(f.how == "respawn" and f.new_pid not in killed for f in p.failovers)
        assert not any(_alive(pid) for pid in killed)
        assert [h["ok"] for h in p.health()] == [True, True, True]
        assert sum(h["served"] for h in p.health()) > 0
        assert p.unmatched() == []  # the lost attempts' late answers were dropped, not kept


def test_a_request_lost_too_often_fails_alone_and_the_rest_continue(built):
    x, whole, _ = built["expected"]["chain"]
    with Pipeline(built["bundles"]["chain2"], timeout_s=60, max_attempts=1) as p:
        rid = p.submit(x)
        os.killpg(p.endpoints[1]["pid"], signal.SIGKILL)
        with pytest.raises(PipelineError) as err:
            p.result(rid)
        assert err.value.code == "attempts_exhausted" and err.value.request_id == rid
        _assert_close(p.run(x)[0], whole, "after the failover")
        assert len(p.failovers) == 1


def test_nan_or_inf_input_is_refused_by_default_with_the_input_named(built):
    x, whole, _ = built["expected"]["chain"]
    bad = {k: v.copy() for k, v in x.items()}
    name = next(iter(bad))
    bad[name].flat[0], bad[name].flat[1] = np.nan, np.inf
    with Pipeline(built["bundles"]["chain2"]) as p:
        with pytest.raises(PipelineError, match=f"'{name}' \\(1 NaN, 1 Inf\\)") as err:
            p.run(bad)
        assert err.value.code == "nonfinite_input" and "allow_nonfinite" in str(err.value)
        _assert_close(p.run(x)[0], whole, "after a refused input")
    with Pipeline(built["bundles"]["chain2"], allow_nonfinite=True) as p:
        y, _ = p.run(bad)  # sent anyway: documented to possibly differ from onnxruntime
        assert set(y) == set(whole)


def test_malformed_frames_come_back_as_errors_and_workers_keep_serving(built):
    bundle = built["bundles"]["chain2"]
    x, whole, _ = built["expected"]["chain"]
    good = wire.request(1001, 0, x)
    header = json.loads(bytes(good[0]))
    v2 = json.dumps({**header, "id": 1003, "v": 2}).encode()
    to_stage0 = {
        1001: ("bad_size", [good[0], bytes(good[1])[:-4]]),
        1003: ("bad_version", [v2, bytes(good[1])]),
        1004: ("missing_frames", [json.dumps({**header, "id": 1004}).encode()]),
        1005: ("wrong_stage", wire.request(1005, 1, x)),
        1006: ("unknown_tensor", wire.request(1006, 0, {"nope": x["input"]})),
        1007: ("shape_mismatch", wire.request(1007, 0, {"input": np.zeros((1, 3, 8, 8),
                                                                           np.float32)})),
        1008: ("unexpected_kind", wire.reply(1008, 0, x)),
        1009: ("extra_frames", wire.request(1009, 0, x) + [b"junk"]),
    }
    no_id = [[b'{"v": 1, "id": '], [b""], [b"\xff\xfe"]]  # bad JSON, empty, not UTF-8
    ctx = zmq.Context()
    try:
        with Pipeline(bundle) as p:
            s0, s1 = (ctx.socket(zmq.PUSH) for _ in range(2))
            for s, ep in ((s0, p.endpoints[0]), (s1, p.endpoints[1])):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(ep["data"])
            for _, frames in to_stage0.values():
                s0.send_multipart(frames)
            for frames in no_id:
                s0.send_multipart(frames)
            s1.send_multipart(wire.request(1010, 0, x))  # stage 0's request sent to stage 1
            want = len(to_stage0) + len(no_id) + 1
            got, deadline = [], time.monotonic() + 30
            while len(got) < want and time.monotonic() < deadline:
                got += p.unmatched(timeout_s=0.5)
            assert len(got) == want, got
            assert all(isinstance(m, wire.Message) and m.kind == "error" for m in got)
            by_id = {m.id: m for m in got if m.id}
            for rid, (code, _) in to_stage0.items():
                assert by_id[rid].error.code == code, by_id[rid].error
                assert by_id[rid].stage == 0  # made by stage 0, forwarded unchanged by stage 1
            assert by_id[1010].error.code == "wrong_stage" and by_id[1010].stage == 1
            assert sorted(m.error.code for m in got if m.id == 0) == ["bad_header"] * 3
            # both workers are still serving
            _assert_close(p.run(x)[0], whole, "after malformed frames")
            health = p.health()
            assert [h["errors"] for h in health] == [want - 1, 1]
            assert [h["served"] for h in health] == [1, 1]
            # a message id that is not in flight ends up in unmatched, not in a request
            assert p.unmatched() == []
            s0.close()
            s1.close()
    finally:
        ctx.term()


def test_worker_error_reply_raises_pipeline_error(built):
    """A wire error message for a request in flight is raised with the worker's code."""
    bundle = built["bundles"]["chain2"]
    x, whole, _ = built["expected"]["chain"]
    with Pipeline(bundle) as p:
        stage0 = p.endpoints[0]["pid"]
        ctx = zmq.Context()
        os.killpg(stage0, signal.SIGSTOP)  # hold the real request in stage 0
        try:
            rid = p.submit(x)
            # the error stage 0 would send, injected at stage 1 (which forwards it unchanged)
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(p.endpoints[1]["data"])
            s.send_multipart(wire.error_reply(rid, 0, "compute_failed", "boom"))
            with pytest.raises(PipelineError, match=r"failed at stage 0: \[compute_failed\] boom") \
                    as err:
                p.result(rid)
            assert (err.value.code, err.value.stage, err.value.request_id) == \
                ("compute_failed", 0, rid)
            s.close()
        finally:
            os.killpg(stage0, signal.SIGCONT)
            ctx.term()
        # the real answer arrives after the request failed: dropped, like any late answer
        assert p.unmatched(timeout_s=2.0) == []
        _assert_close(p.run(x)[0], whole, "after an error reply")


def test_request_timeout_names_request_and_stages(built):
    bundle = built["bundles"]["chain2"]
    x, _, _ = built["expected"]["chain"]
    p = Pipeline(bundle, timeout_s=1.0)
    try:
        pids = [e["pid"] for e in p.endpoints]
        os.killpg(pids[1], signal.SIGSTOP)  # stuck, not dead
        t0 = time.monotonic()
        with pytest.raises(PipelineError, match=r"request \d+ got no answer within 1 s") as err:
            p.run(x)
        assert time.monotonic() - t0 < 10
        assert err.value.code == "timeout"
        assert "stage 0" in str(err.value) and "stage 1" in str(err.value)
    finally:
        p.close()  # the stopped worker cannot answer shutdown: it is killed
    assert not any(_alive(pid) for pid in pids)


def test_health_and_close_leave_no_worker_alive(built):
    bundle = built["bundles"]["chain2"]
    x, _, _ = built["expected"]["chain"]
    p = Pipeline(bundle)
    pids = [e["pid"] for e in p.endpoints]
    tmp = p.launcher.run_dir
    assert all(_alive(pid) for pid in pids) and tmp.is_dir()
    for stage, h in enumerate(p.health()):
        assert h["ok"] is True and h["stage"] == stage and h["pid"] == pids[stage]
        assert isinstance(h["cpu_percent"], float) and 0 <= h["cpu_percent"] <= 100
        assert isinstance(h["mem_available_bytes"], int) and h["mem_available_bytes"] > 0
        assert h["served"] == 0
    p.run(x)
    assert [h["served"] for h in p.health()] == [1, 1]
    if os.path.exists(f"/proc/{pids[0]}/maps"):  # workers load the TVM runtime, not the compiler
        maps = open(f"/proc/{pids[0]}/maps").read()
        assert "libtvm_runtime" in maps and "libtvm_compiler" not in maps
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 5000)
        req.connect(p.endpoints[0]["control"])
        req.send_json({"cmd": "reboot"})
        answer = req.recv_json()
        assert answer["ok"] is False and "reboot" in answer["error"]
        req.send(b"not json")
        assert req.recv_json()["ok"] is False
        req.close()
    finally:
        ctx.term()
    p.close()
    p.close()  # idempotent
    assert not any(_alive(pid) for pid in pids)
    assert not any(psutil.pid_exists(pid) for pid in pids)  # reaped, not zombies
    assert not tmp.exists()
    with pytest.raises(PipelineError, match="closed"):
        p.run(x)


def test_connect_to_running_workers_and_sigterm_exits_cleanly(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    x, whole, _ = built["expected"]["chain"]
    with HandStartedWorkers(bundle, tmp_path) as workers:
        info1 = workers.start(1)  # no --next: binds "out"
        last = workers.procs[-1]
        assert info1["out"].startswith("tcp://127.0.0.1:") and info1["pid"] == last.pid
        info0 = workers.start(0, "--next", info1["data"])
        first = workers.procs[-1]
        assert info0["out"] is None
        with Pipeline(bundle, endpoints=[info0, info1]) as p:
            _assert_close(p.run(x)[0], whole, "connected pipeline")
        assert first.poll() is None and last.poll() is None  # not ours: still running
        with pytest.raises(PipelineError, match="runs stage 1"):
            Pipeline(bundle, endpoints=[info1, {**info1, "stage": 1}])
        for proc in workers.procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=10) for proc in workers.procs] == [0, 0]


def test_replicas_share_a_stage_and_losing_one_loses_nothing(built, tmp_path):
    """Hand-started workers: stage 1 has two replicas (stage 0 sends to `--next A,B`). Both
    serve; when one is SIGKILLed mid-stream its heartbeats stop, the client drops it and
    re-sends what was in flight: every request answered once, equal to onnxruntime."""
    bundle = built["bundles"]["chain3"]
    g = built["graphs"]["chain"]
    xs = _inputs(g, 120)
    session = _ort_session(g)
    with HandStartedWorkers(bundle, tmp_path) as workers:
        s2 = workers.start(2)
        s1 = [workers.start(1, "--next", s2["data"]) for _ in range(2)]
        s0 = workers.start(0, "--next", ",".join(r["data"] for r in s1))
        with Pipeline(bundle, endpoints=[s0, s1, s2], timeout_s=30) as p:
            assert p.failover is True
            for _ in range(20):  # round-robin over the replicas that are up
                p.run(xs[0])
            assert all(h["served"] > 0 for h in p.health() if h["stage"] == 1)
            got, t_kill = [], None
            for item in p.stream(xs):
                got.append(item)
                if len(got) == 40:
                    os.killpg(s1[0]["pid"], signal.SIGKILL)
                    t_kill = time.monotonic()
            assert len(got) == len(xs)
            for i, (y, _) in enumerate(got):
                assert compare(y["output"], session.run(None, xs[i])[0], "output").rel <= RTOL
            # the stream may end before the dead replica's heartbeat deadline (1 s): keep going
            deadline = time.monotonic() + 15
            while not p.failovers and time.monotonic() < deadline:
                p.run(xs[0])
            assert [(f.stage, f.old_pid, f.how) for f in p.failovers] == \
                [(1, s1[0]["pid"], "replica")]
            assert [e["pid"] for e in p.endpoints] == [s0["pid"], s1[1]["pid"], s2["pid"]]
            assert t_kill is not None


def test_a_silent_remote_worker_is_noticed_by_heartbeats_not_the_timeout(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    x, whole, _ = built["expected"]["chain"]
    with HandStartedWorkers(bundle, tmp_path) as workers:
        s1 = workers.start(1)
        s0 = workers.start(0, "--next", s1["data"])
        with Pipeline(bundle, endpoints=[s0, s1], timeout_s=60) as p:
            assert p.failover is False  # nothing to fail over to
            _assert_close(p.run(x)[0], whole, "before")
            os.killpg(s1["pid"], signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(PipelineError) as err:
                    p.run(x)
                waited = time.monotonic() - t0
            finally:
                os.killpg(s1["pid"], signal.SIGCONT)
            assert err.value.code == "worker_died" and err.value.stage == 1
            assert "heartbeat" in str(err.value) and waited < 10  # not the 60 s timeout


def test_worker_start_failure_is_reported(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    proc = subprocess.Popen(worker_command(bundle, 5, "--ready-file", str(tmp_path / "ready")),
                            stderr=subprocess.PIPE, start_new_session=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"no stage 5" in err
    assert not (tmp_path / "ready").exists()


def test_pipeline_reports_a_worker_that_dies_on_start(built, tmp_path):
    import shutil

    shutil.copytree(built["bundles"]["chain3"].path, tmp_path / "b")
    bundle = ts.Bundle.load(tmp_path / "b")
    with open(bundle.stages[2].library, "ab") as f:  # corrupted after the client loaded it
        f.write(b"\0")
    with pytest.raises(PipelineError, match=r"stage 2 worker exited during start with exit code "
                                            r"2: .*stage 2 fails its checksum") as err:
        Pipeline(bundle)
    assert err.value.stage == 2 and err.value.code == "start_failed"
    assert not [c for c in psutil.Process().children(recursive=True)
                if "tvmsplit.runtime.worker" in " ".join(c.cmdline()) and _alive(c.pid)]


def test_failed_start_stops_the_workers_already_started(built, monkeypatch):
    from tvmsplit.runtime.launch import LaunchError, LocalLauncher

    started = []
    original = LocalLauncher._start_one

    def start_one(self, spec):
        if spec.stage == 1:
            raise LaunchError("stage 1 cannot start (simulated)", stage=1)
        worker = original(self, spec)
        started.append(worker.pid)
        return worker

    monkeypatch.setattr(LocalLauncher, "_start_one", start_one)
    with pytest.raises(PipelineError, match="simulated") as err:
        Pipeline(built["bundles"]["chain3"])
    assert err.value.stage == 1 and err.value.code == "start_failed"
    assert len(started) == 1 and not _alive(started[0])