"""One conformance suite for both worker kinds: the Python worker (tvmsplit/runtime/worker.py)
and the native C++ one (native/, built by CMakeLists.txt into build/native). Each test runs
against both, so both speak wire format v1 and control protocol v1 byte for byte where the spec
pins bytes, with the same error codes everywhere else, and compute the same results.

The native worker is found as launch.find_native_worker() does ($TVMSPLIT_NATIVE_WORKER, else
build/native/tvmsplit-worker); without it its half is skipped with the reason. When
$TVMSPLIT_NATIVE_WORKER is set (CI builds the worker and sets it), a missing binary fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from tvmsplit import Pipeline
from tvmsplit.check import compare
from tvmsplit.errors import WireError
from tvmsplit.runtime import control, wire
from tvmsplit.runtime.launch import (NATIVE_WORKER_ENV, LocalLauncher, WorkerSpec,
                                     find_native_worker, spawn, worker_parser, worker_program)
from tvmsplit.runtime.worker import _peek_id

sys.path.insert(0, str(Path(__file__).parent))
from chain_bundles import chain_bundles  # noqa: E402
from fuzz_corpus import control_corpus, wire_corpus  # noqa: E402
from hand_workers import data_sockets  # noqa: E402
import test_stage_dag  # noqa: E402
import test_testbed  # noqa: E402
from test_wire import read_frames  # noqa: E402

# their fixtures, used here by name (assigned: a test's parameter then redefines no import):
# the inception stage-DAG bundle; the rpi4b+x86 bundle and the 4G testbed
dag = test_stage_dag.dag
split_bundles, testbed = test_testbed.split_bundles, test_testbed.testbed

pytestmark = pytest.mark.timeout(300)
GOLDEN = Path(__file__).parent / "golden"
KINDS = ["python", "native"]
RTOL = 1e-4
N_CORPUS = 2000
WORKER_CODES = wire.WORKER_ERROR_CODES  # one definition, runtime/wire.py


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    if request.param == "native" and find_native_worker() is None:
        if os.environ.get(NATIVE_WORKER_ENV):
            pytest.fail(f"{NATIVE_WORKER_ENV}={os.environ[NATIVE_WORKER_ENV]} does not exist")
        pytest.skip("native worker not built: cmake -S . -B build/native && cmake --build "
                    "build/native -j2 (or set TVMSPLIT_NATIVE_WORKER)")
    return request.param


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return chain_bundles(tmp_path_factory)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _start(kind, bundle_dir, stage, tmp_path, *, wait=True, **spec):
    proc = spawn(WorkerSpec(str(bundle_dir), stage, **spec), tmp_path,
                 program=worker_program(kind))
    return proc, (proc.wait_ready(60) if wait else None)


def _ask(ctx, address, frames, timeout_ms=10_000):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.connect(address)
    s.send_multipart(frames)
    try:
        return s.recv_multipart()
    finally:
        s.close()


def _assert_close(got, want, what):
    assert set(got) == set(want), what
    for key, value in want.items():
        assert compare(got[key], value, key).rel <= RTOL, f"{what}: {key}"


def _launcher(kind):
    return LocalLauncher(program=worker_program(kind))


# -------------------------------------------------------------------------- the command line
def test_the_native_worker_takes_the_options_of_worker_parser(kind):
    """Every option of launch.py's worker_parser (the one definition) is in the worker's help,
    and a bad option is a usage error with exit code 2."""
    out = subprocess.run([*worker_program(kind), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    flags = {o for a in worker_parser()._actions for o in a.option_strings}
    assert flags and all(f in out.stdout for f in flags), sorted(f for f in flags
                                                                if f not in out.stdout)
    bad = subprocess.run([*worker_program(kind), "--stage", "x"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--bundle" in bad.stderr


@pytest.mark.parametrize("case", ["no_bundle", "stage_out_of_range", "wrong_next_count",
                                  "missing_keys"])
def test_start_up_failures_are_one_line_and_exit_2(kind, built, tmp_path, case):
    bundle = built["bundles"]["chain2"]
    spec = {"no_bundle": (str(tmp_path / "nothing"), 0, {}),
            "stage_out_of_range": (str(bundle.path), 5, {}),
            "wrong_next_count": (str(bundle.path), 0, {"next": ("tcp://127.0.0.1:1",) * 2}),
            "missing_keys": (str(bundle.path), 1, {"secure": str(tmp_path / "nokeys")})}[case]
    proc, _ = _start(kind, spec[0], spec[1], tmp_path, wait=False, **spec[2])
    assert proc.popen.wait(60) == 2
    lines = [l for l in proc.log.read_text().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tvmsplit worker: "), lines


# ------------------------------------------------------------------------------- golden bytes
def test_golden_messages_get_byte_equal_replies(kind, built, tmp_path, ctx):
    """The golden request (for tensors stage 1 does not take) is answered with exactly the
    error the spec's encoder makes; the golden error is passed on byte for byte; the golden
    control requests get the golden shapes and, where the bytes are pinned, the golden bytes."""
    bundle = built["bundles"]["chain2"]
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        push, pull = data_sockets(ctx, info)
        request = read_frames(GOLDEN / "request_v1.bin")
        push.send_multipart(request)
        got = pull.recv_multipart()
        msg = wire.decode(request)
        expects = sorted(t.name for t in bundle.stages[1].plan.inputs)
        want = wire.error_reply(42, 1, "unknown_tensor", f"unexpected tensor(s) ['input', 'ids']"
                                f"; stage 1 expects {expects}", msg.trace)
        assert got == want
        error = read_frames(GOLDEN / "error_v1.bin")
        push.send_multipart(error)
        assert pull.recv_multipart() == error
        ask = lambda frames: _ask(ctx, info["control"], frames)  # noqa: E731
        health = control.parse_reply(ask(read_frames(GOLDEN / "control_health_request_v1.bin")))
        golden = control.parse_reply(read_frames(GOLDEN / "control_health_reply_v1.bin"))
        assert {k: type(v) for k, v in health.items()} == {k: type(v) for k, v in golden.items()}
        assert health["pid"] == info["pid"] and health["stage"] == 1 and health["deployed"]
        assert health["served"] == 0 and health["errors"] == 1  # the golden request's error
        assert 0.0 <= health["cpu_percent"] <= 100.0 and health["mem_available_bytes"] > 0
        assert ask([b'{"cmd":"reboot"}']) == read_frames(GOLDEN / "control_error_reply_v1.bin")
        refused = ask(read_frames(GOLDEN / "control_deploy_request_v1.bin"))
        import hashlib
        lib = b"\x7fELF\x00\x01 stage library bytes \xff"
        st = bundle.stages[1]
        assert refused == [control.error_reply(
            "deploy_mismatch", f"library for stage 1 does not match the manifest (got {len(lib)} "
            f"bytes, sha256 {hashlib.sha256(lib).hexdigest()[:12]}; expected "
            f"{st.library_bytes}, {st.sha256[:12]}); push the library of this bundle's stage 1")]
        assert ask(read_frames(GOLDEN / "control_shutdown_request_v1.bin")) == [b'{"ok":true}']
        assert proc.popen.wait(10) == 0


def test_earlier_trace_entries_are_passed_on_in_canonical_bytes(kind, built, tmp_path, ctx):
    """A reply re-encodes the trace it received: floats as Python's repr (shortest round trip,
    exponent from 1e16), strings with json.dumps' escapes and raw non-ASCII, big and negative
    ints, nested objects with sorted keys; byte for byte what wire.encode writes."""
    import random

    rng = random.Random(5)
    entry = {"stage": 0, "s": "".join(map(chr, range(32))) + '"\\/é€😀\u007f',
             "f": [1e15, 1e16, 1e-4, 1e-5, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 2.0**53]
             + [rng.uniform(0, 2e9) for _ in range(300)] + [10 ** rng.uniform(-12, 22)
                                                            for _ in range(300)],
             "i": [0, -1, 2**63 - 1, -2**63, 2**64 - 1], "z": {"b": True, "a": None, "é": []}}
    bundle = built["bundles"]["chain2"]
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        push, pull = data_sockets(ctx, info)
        x = [(t.name, np.ones(t.shape, t.dtype)) for t in bundle.stages[1].plan.inputs]
        push.send_multipart(wire.request(8, 1, x, [entry]))
        head = pull.recv_multipart()[0]
        want = wire.encode(wire.Message("reply", 8, 1, (), (entry,)))[0]
        prefix = want[want.index(b'"trace":['):-len(b"],\"v\":1}")]
        assert prefix in head, (prefix[:200], head[:400])


# ------------------------------------------------------------------------ malformed messages
def test_malformed_messages_get_the_decoders_codes(kind, built, tmp_path, ctx):
    """The seeded corpus of tests/fuzz_corpus.py: every malformed message is answered once with
    the reference decoder's code and the id Python reads from it; valid ones are served; the
    control corpus gets the reference parser's answers; the counters add up."""
    bundle = built["bundles"]["chain2"]
    stage = bundle.stages[1]
    corpus = wire_corpus(11, N_CORPUS, stage.plan.inputs, 1)
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        push, pull = data_sockets(ctx, info)
        got = []
        for i, frames in enumerate(corpus):
            push.send_multipart(frames)
            if i % 200 == 199 or i == len(corpus) - 1:
                while len(got) < i + 1:
                    got.append(pull.recv_multipart())
        valid = forwarded = 0
        for frames, reply in zip(corpus, got):
            msg = wire.decode(reply)
            try:
                sent = wire.decode(frames)
                want = None
            except WireError as exc:
                want = exc.code
            if want is not None:
                assert msg.kind == "error" and (msg.error.code, msg.id) == (want, _peek_id(frames))
            elif sent.kind == "error":
                assert reply == frames[:1]  # passed on as it is
                forwarded += 1
            elif msg.kind == "reply":
                valid += 1
                assert msg.id == sent.id and msg.trace[-1]["stage"] == 1
            else:
                assert msg.error.code in WORKER_CODES and msg.id == sent.id, msg.error
        assert valid > N_CORPUS // 50
        for frames in control_corpus(12, N_CORPUS // 4):
            answer = control.parse_reply(_ask(ctx, info["control"], frames))
            try:
                control.parse_request(frames)
                assert answer["ok"] is True
            except control.ControlError as exc:
                assert (answer["ok"], answer["code"]) == (False, exc.code), (frames, answer)
        health = control.parse_reply(_ask(ctx, info["control"],
                                          control.encode_request(control.HEALTH)))
        assert health["served"] == valid and health["errors"] == N_CORPUS - valid - forwarded
        assert proc.poll() is None


# -------------------------------------------------------------------------------- pipelines
def test_two_stage_pipeline_equals_onnxruntime(kind, built):
    bundle = built["bundles"]["chain2"]
    x, _, ort_out = built["expected"]["chain"]
    with Pipeline(bundle, launcher=_launcher(kind)) as p:
        y, trace = p.run(x)
        _assert_close(y, ort_out, f"{kind} workers vs onnxruntime")
        assert len(trace.compute_ms) == 2 and all(c > 0 for c in trace.compute_ms)
        assert [h.nbytes > 0 for h in trace.hops] == [True] * 3
        for out, _ in p.stream([x] * 16):
            _assert_close(out, ort_out, "streamed")


def test_a_stage_dag_gathers_its_parts(kind, dag):
    """The inception stage DAG: stage 3 gathers from stages 1 and 2 (fan-in), stage 0 fans out."""
    with Pipeline(dag["bundle"], launcher=_launcher(kind)) as p:
        y, trace = p.run(dag["x"])
        _assert_close(y, dag["ref"], f"{kind} stage DAG vs onnxruntime")
        assert sorted((h.src, h.dst) for h in trace.hops) == \
            [(-1, 0), (0, 1), (0, 2), (1, 3), (2, 3), (3, -1)]
        for out, _ in p.stream([dag["x"]] * 8):
            _assert_close(out, dag["ref"], "streamed DAG")


def test_secure_pipeline_equals_onnxruntime(kind, built, tmp_path):
    from tvmsplit.runtime.security import generate_keys as make_keys

    make_keys(tmp_path / "keys")
    bundle = built["bundles"]["chain2"]
    x, _, ort_out = built["expected"]["chain"]
    with Pipeline(bundle, secure=tmp_path / "keys", launcher=_launcher(kind)) as p:
        y, _ = p.run(x)
        _assert_close(y, ort_out, f"secure {kind} workers vs onnxruntime")
        assert all(h["ok"] for h in p.health())
        # a plain (non-CURVE) peer is dropped in the handshake: nothing it sends is served
        c = zmq.Context()
        try:
            s = c.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(p.endpoints[0]["control"])
            s.send_multipart(control.encode_request(control.HEALTH))
            assert s.poll(1000, zmq.POLLIN) == 0
        finally:
            c.destroy(linger=0)
        assert [h["served"] for h in p.health()] == [1, 1]


def test_per_stage_keys_admit_exactly_the_senders_in_the_plan(kind, built, tmp_path, ctx):
    """`tvmsplit keys DIR --stages 2`: each stage serves and connects with its own key; stage
    1's data socket admits stage 0 only, stage 0's control socket no stage."""
    from test_secure import _peer, _wait_event

    from tvmsplit.runtime.security import SecureConfig
    from tvmsplit.runtime.security import generate_keys as make_keys

    keys_dir = tmp_path / "keys"
    make_keys(keys_dir, ["client", "stage0", "stage1"])
    k = {n: SecureConfig(keys_dir, n) for n in ("client", "stage0", "stage1")}
    bundle = built["bundles"]["chain2"]
    x, _, ort_out = built["expected"]["chain"]
    with Pipeline(bundle, secure=keys_dir, launcher=_launcher(kind)) as p:
        _assert_close(p.run(x)[0], ort_out, f"per-stage keys, {kind} workers")
        both = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
        socks = []
        for who, addr, server, admitted in (
                ("client", p.endpoints[1]["data"], "stage1", False),
                ("stage1", p.endpoints[1]["data"], "stage1", False),
                ("stage0", p.endpoints[1]["data"], "stage1", True),
                ("client", p.endpoints[0]["data"], "stage0", True),
                ("stage1", p.endpoints[0]["control"], "stage0", False)):
            kind_of = zmq.REQ if addr == p.endpoints[0]["control"] else zmq.PUSH
            s, monitor = _peer(ctx, kind_of, addr, k[who], k[server].public_key)
            socks += [s, monitor]
            want = zmq.EVENT_HANDSHAKE_SUCCEEDED if admitted else zmq.EVENT_HANDSHAKE_FAILED_AUTH
            assert _wait_event(monitor, both)["event"] == want, (who, addr)
        for sock in socks:
            sock.close(linger=0)
        _assert_close(p.run(x)[0], ort_out, "after the probes")


def test_mixed_native_and_python_three_stage_pipeline(kind, built):
    """Stages 0 and 2 of the other kind, stage 1 of this one: the wire is the contract."""
    other = "python" if kind == "native" else "native"
    if find_native_worker() is None:
        pytest.skip("native worker not built")
    bundle = built["bundles"]["chain3"]
    x, _, ort_out = built["expected"]["chain"]
    launcher = LocalLauncher(programs={0: worker_program(other), 1: worker_program(kind),
                                       2: worker_program(other)})
    with Pipeline(bundle, launcher=launcher) as p:
        y, trace = p.run(x)
        _assert_close(y, ort_out, "mixed pipeline vs onnxruntime")
        assert len(trace.compute_ms) == 3


def test_replicas_of_a_stage_and_losing_one_loses_nothing(kind, built, tmp_path):
    """Hand-started workers of this kind: stage 1 on two replicas (stage 0: --next A,B); one is
    SIGKILLed mid-stream; every request is answered once, equal to onnxruntime."""
    from hand_workers import HandStartedWorkers
    from test_runtime import _inputs, _ort_session

    bundle, g = built["bundles"]["chain3"], built["graphs"]["chain"]
    xs, session = _inputs(g, 60), _ort_session(g)
    with HandStartedWorkers(bundle, tmp_path, program=worker_program(kind)) as workers:
        s2 = workers.start(2)
        s1 = [workers.start(1, "--next", s2["data"]) for _ in range(2)]
        s0 = workers.start(0, "--next", ",".join(r["data"] for r in s1))
        with Pipeline(bundle, endpoints=[s0, s1, s2], timeout_s=30) as p:
            for _ in range(10):
                p.run(xs[0])
            assert all(h["served"] > 0 for h in p.health() if h["stage"] == 1)
            got = []
            for item in p.stream(xs):
                got.append(item)
                if len(got) == 20:
                    os.killpg(s1[0]["pid"], signal.SIGKILL)
            assert len(got) == len(xs)
            for x, (y, _) in zip(xs, got):
                assert compare(y["output"], session.run(None, x)[0], "output").rel <= RTOL


# ------------------------------------------------------------------- deploy, health, shutdown
def test_deploy_a_pushed_library(kind, built, tmp_path, ctx):
    """--await-library with only manifest.json: requests get not_deployed; a library that does
    not match the manifest is refused; the right one is written and served."""
    bundle = built["bundles"]["chain2"]
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(bundle.path / "manifest.json", device)
    proc, info = _start(kind, device, 1, tmp_path, await_library=True)
    with proc:
        push, pull = data_sockets(ctx, info)
        x = [(t.name, np.ones(t.shape, t.dtype)) for t in bundle.stages[1].plan.inputs]
        push.send_multipart(wire.request(3, 1, x))
        assert wire.decode(pull.recv_multipart()).error.code == "not_deployed"
        ask = lambda *frames: control.parse_reply(_ask(ctx, info["control"], list(frames)))  # noqa: E731
        assert ask(*control.encode_request(control.HEALTH))["deployed"] is False
        real = bundle.stages[1].library.read_bytes()
        bad = ask(*control.encode_request(control.DEPLOY, real[:-1] + bytes([real[-1] ^ 1])))
        assert (bad["ok"], bad["code"]) == (False, "deploy_mismatch")
        ok = ask(*control.encode_request(control.DEPLOY, real))
        assert ok == {"ok": True, "stage": 1, "sha256": bundle.stages[1].sha256}
        assert (device / bundle.stages[1].library.name).read_bytes() == real
        assert [p.name for p in device.iterdir() if p.name.endswith(".tmp")] == []
        push.send_multipart(wire.request(4, 1, x))
        reply = wire.decode(pull.recv_multipart())
        assert reply.kind == "reply" and reply.id == 4
        assert ask(*control.encode_request(control.HEALTH))["deployed"] is True


@pytest.mark.parametrize("how", ["shutdown", "sigterm", "sigint", "parent_gone"])
def test_clean_exits(kind, built, tmp_path, ctx, how):
    bundle = built["bundles"]["chain2"]
    if how == "parent_gone":  # a parent that exits at once: the worker notices it is orphaned
        ready = tmp_path / "ready.json"
        code = (f"import subprocess, sys; p = subprocess.Popen({worker_program(kind)!r} + "
                f"['--bundle', {str(bundle.path)!r}, '--stage', '1', '--ready-file', "
                f"{str(ready)!r}, '--parent-pid', str(__import__('os').getpid())]); "
                "print(p.pid, flush=True)\nimport time\nwhile not __import__('os').path.exists("
                f"{str(ready)!r}): time.sleep(0.01)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
        pid = int(out.stdout.split()[0])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
        return
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        ready = json.loads(Path(proc.spec.ready_file).read_text())
        assert set(ready) == {"data", "control", "out", "pid", "stage"} and ready["stage"] == 1
        if how == "shutdown":
            assert _ask(ctx, info["control"], control.encode_request(control.SHUTDOWN)) == \
                [b'{"ok":true}']
        else:
            os.kill(proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        assert proc.popen.wait(10) == 0


def test_back_pressure_holds_outputs_and_keeps_answering_control(kind, built, tmp_path, ctx):
    """Nobody reads the results: the worker stops reading input once its outputs are held, but
    still answers health; once a reader connects, every request is answered."""
    bundle = built["bundles"]["chain2"]
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 4)
        push.connect(info["data"])
        x = [(t.name, np.ones(t.shape, t.dtype)) for t in bundle.stages[1].plan.inputs]
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the pipe is full end to end
            try:
                push.send_multipart(wire.request(sent + 1, 1, x), flags=zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.2)
                try:
                    push.send_multipart(wire.request(sent + 1, 1, x), flags=zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    break
        assert 0 < sent < 100_000
        health = control.parse_reply(_ask(ctx, info["control"],
                                          control.encode_request(control.HEALTH)))
        assert health["ok"] and health["served"] < sent  # it stopped computing: held
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVTIMEO, 30_000)
        pull.connect(info["out"])
        ids = sorted(wire.decode(pull.recv_multipart()).id for _ in range(sent))
        assert ids == list(range(1, sent + 1))


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----------------------------------------------------------------------------------- the CLI
def test_tvmsplit_run_with_each_worker_kind_checks_against_onnxruntime(kind, monkeypatch):
    """`tvmsplit run ... --worker KIND --check`: the pipeline of that kind == onnxruntime."""
    from cli_helpers import invoke, ok

    result = ok(invoke("run", "zoo:chain", "--split-at", "pool1", "--worker", kind, "--requests", 3,
                       "--check"))
    assert "stage 1 [x86_64]" in result.output and result.output.strip().endswith("OK")


def test_a_frame_over_the_bound_drops_the_sender_not_the_worker(kind, built, tmp_path, ctx):
    """ZMQ_MAXMSGSIZE (the largest of 1 MiB and the stage's inputs): a bigger frame disconnects
    its sender unread; the worker keeps serving others."""
    bundle = built["bundles"]["chain2"]
    proc, info = _start(kind, bundle.path, 1, tmp_path)
    with proc:
        big = ctx.socket(zmq.PUSH)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(info["data"])
        header = {"v": 1, "kind": "request", "id": 1, "stage": 1, "trace": [],
                  "tensors": [{"name": "pool1", "dtype": "uint8", "shape": [8 << 20]}]}
        big.send_multipart([json.dumps(header).encode(), b"\0" * (8 << 20)])
        push, pull = data_sockets(ctx, info)
        pull.setsockopt(zmq.RCVTIMEO, 2000)
        x = [(t.name, np.ones(t.shape, t.dtype)) for t in bundle.stages[1].plan.inputs]
        push.send_multipart(wire.request(2, 1, x))
        assert wire.decode(pull.recv_multipart()).id == 2  # only the valid request's reply
        with pytest.raises(zmq.Again):
            pull.recv_multipart()
        assert proc.poll() is None


def test_secure_sockets_admit_only_their_roles(kind, built, tmp_path, ctx):
    """ZAP per socket, as security.py's table: the control socket admits client keys only, stage
    1's data socket only its sender's (worker) key; an unauthorized keypair is refused."""
    from test_secure import _peer, _wait_event

    from tvmsplit.runtime.security import SecureConfig
    from tvmsplit.runtime.security import generate_keys as make_keys

    make_keys(tmp_path / "keys")
    make_keys(tmp_path / "outsider", ["mallory"])
    client, worker = (SecureConfig(tmp_path / "keys", n) for n in ("client", "worker"))
    mallory = SecureConfig(tmp_path / "outsider", "mallory")
    bundle = built["bundles"]["chain2"]
    proc, info = _start(kind, bundle.path, 1, tmp_path, secure=str(tmp_path / "keys"))
    both = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
    with proc:
        socks = []
        for addr, keys, want in ((info["control"], mallory, zmq.EVENT_HANDSHAKE_FAILED_AUTH),
                                 (info["control"], worker, zmq.EVENT_HANDSHAKE_FAILED_AUTH),
                                 (info["data"], client, zmq.EVENT_HANDSHAKE_FAILED_AUTH),
                                 (info["data"], worker, zmq.EVENT_HANDSHAKE_SUCCEEDED),
                                 (info["control"], client, zmq.EVENT_HANDSHAKE_SUCCEEDED)):
            s, monitor = _peer(ctx, zmq.REQ if addr == info["control"] else zmq.PUSH, addr, keys,
                               worker.public_key)
            socks += [s, monitor]
            assert _wait_event(monitor, both)["event"] == want, (addr, keys.name)
        s = socks[-2]  # the client on the control socket
        s.send_multipart(control.encode_request(control.HEALTH))
        assert s.poll(10_000) and control.parse_reply(s.recv_multipart())["ok"] is True
        for sock in socks:
            sock.close(linger=0)


# ------------------------------------------------------------------ aarch64, on the testbed
def test_native_aarch64_worker_on_the_qemu_device_then_x86_edge_over_4g(testbed, split_bundles):
    """The cross-built worker (native/aarch64-linux-gnu.cmake, build/aarch64) runs stage 0
    (rpi4b) under qemu in the device's namespace; a Python x86 worker runs stage 1 on the edge;
    the link is 4G-shaped. Output == onnxruntime."""
    import psutil

    from tvmsplit.check import random_inputs, reference

    var = f"{NATIVE_WORKER_ENV}_AARCH64"
    if find_native_worker("aarch64") is None:
        if os.environ.get(var):
            pytest.fail(f"{var}={os.environ[var]} does not exist")
        pytest.skip("the aarch64 native worker is not built: cmake -S . -B build/aarch64 "
                    "-DCMAKE_TOOLCHAIN_FILE=native/aarch64-linux-gnu.cmake -DTVMSPLIT_SYSROOT=..."
                    " (see the toolchain file)")
    g, bundle = split_bundles
    testbed.device_worker = "native"
    try:
        eps = testbed.start_workers(bundle.path, ["device", "edge"])
    finally:
        testbed.device_worker = None
    device = psutil.Process(eps[0]["pid"])
    assert os.path.basename(device.exe()).startswith("qemu-aarch64")
    assert any(a.endswith("tvmsplit-worker") for a in device.cmdline())
    x = random_inputs(g.inputs, seed=1)
    with Pipeline(bundle, endpoints=eps, timeout_s=180) as p:
        assert [h["ok"] for h in p.health()] == [True, True]
        for _ in range(2):
            y, trace = p.run(x)
            _assert_close(y, reference(g, x), "aarch64 native + x86 Python over 4G")
        assert trace.hop_bytes[1] > sum(t.nbytes for t in bundle.plan.cuts[0])
        # the native device worker's RSS, under qemu (which adds its own)
        print(f"\nnative aarch64 worker under qemu: RSS {device.memory_info().rss / 2**20:.1f} MiB",
              file=sys.stderr)


def test_the_testbed_launcher_runs_the_native_device_worker_and_replaces_it(testbed,
                                                                           split_bundles):
    """Pipeline(launcher=testbed.launcher(...)) with the device's worker kind set to native:
    the device stage is the aarch64 binary under qemu; killed, it is respawned (native again)
    at its addresses and the request in flight answered."""
    import psutil

    from tvmsplit.check import random_inputs, reference

    if find_native_worker("aarch64") is None:
        pytest.skip("the aarch64 native worker is not built (native/aarch64-linux-gnu.cmake)")
    g, bundle = split_bundles
    x = random_inputs(g.inputs, seed=4)
    want = reference(g, x)
    testbed.device_worker = "native"
    try:
        with Pipeline(bundle, launcher=testbed.launcher(["device", "edge"]), timeout_s=180) as p:
            pid = p.endpoints[0]["pid"]
            assert any(a.endswith("tvmsplit-worker") for a in psutil.Process(pid).cmdline())
            _assert_close(p.run(x)[0], want, "testbed launcher, native device")
            rid = p.submit(x)
            os.kill(pid, signal.SIGKILL)
            _assert_close(p.result(rid)[0], want, "after the device worker was replaced")
            assert [(f.stage, f.old_pid, f.how) for f in p.failovers] == [(0, pid, "respawn")]
            new = psutil.Process(p.endpoints[0]["pid"])
            assert any(a.endswith("tvmsplit-worker") for a in new.cmdline())
    finally:
        testbed.device_worker = None


def test_a_target_file_can_ask_for_the_native_worker(tmp_path, monkeypatch):
    """`[worker] kind = "native"` in a target file: Pipeline(bundle) with its default launcher
    runs that target's stages natively, the others in Python; a bad kind is a clear error."""
    import psutil

    import tvmsplit as ts
    from tvmsplit import zoo
    from tvmsplit.check import random_inputs, reference
    from tvmsplit.runtime.launch import LaunchError, target_worker_kind

    if find_native_worker() is None:
        pytest.skip("native worker not built")
    targets = tmp_path / "targets"
    targets.mkdir()
    base = (Path(ts.__file__).parent.parent / "targets" / "x86_64.toml").read_text()
    (targets / "edge-native.toml").write_text(
        base.replace('name = "x86_64"', 'name = "edge-native"') + '\n[worker]\nkind = "native"\n')
    (targets / "edge-bad.toml").write_text(
        base.replace('name = "x86_64"', 'name = "edge-bad"') + '\n[worker]\nkind = "java"\n')
    monkeypatch.setenv("TVMSPLIT_TARGETS", str(targets))
    assert [target_worker_kind(t) for t in ("x86_64", "edge-native", "nowhere")] == \
        ["python", "native", "python"]
    with pytest.raises(LaunchError, match="java"):
        target_worker_kind("edge-bad")
    g = ts.load(zoo.make("chain"), name="chain")
    bundle = ts.build_bundle(g, ts.plan_split(g, ["pool1"], targets=["edge-native", "x86_64"]),
                             tmp_path / "bundle")
    x = random_inputs(g.inputs, seed=2)
    with Pipeline(bundle) as p:
        _assert_close(p.run(x)[0], reference(g, x), "target-chosen kinds vs onnxruntime")
        cmds = [psutil.Process(e["pid"]).cmdline() for e in p.endpoints]
        assert cmds[0][0].endswith("tvmsplit-worker") and "tvmsplit.runtime.worker" in cmds[1]
