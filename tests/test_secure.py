"""CurveZMQ links: real worker processes over tcp://127.0.0.1 on ephemeral ports.

The invariant: with ``secure=KEYS_DIR`` a pipeline returns what the plain one and onnxruntime
return, and a peer without an authorized key gets nothing in: no message it sends reaches a worker
or the client (the handshake fails, see the socket monitor), and the workers keep serving.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import compare, random_inputs, reference
from tvmsplit.errors import TvmsplitError
from tvmsplit.runtime import wire
from tvmsplit.runtime.pipeline import Pipeline, PipelineError
from tvmsplit.runtime.security import SecureConfig, SecurityError, generate_keys

from hand_workers import HandStartedWorkers


pytestmark = pytest.mark.timeout(120)
RTOL = 1e-4
QUIET_S = 1.5  # how long "nothing arrives" is watched for
# A refused handshake: libzmq reports AUTH (the ZAP handler's 400) or PROTOCOL (no CURVE), or
# NO_DETAIL when the server has already dropped the connection before the client read the reason.
REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 2-stage chain bundle, one input and onnxruntime's output for it."""
    with pytest.MonkeyPatch.context() as mp:  # the build cache of this test session, as conftest
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        g = ts.load(zoo.make("chain"), name="chain")
        bundle = ts.build_bundle(g, ts.plan_split(g, ["pool1"]),
                                 tmp_path_factory.mktemp("secure") / "chain2")
    x = random_inputs(g.inputs, seed=1)
    return bundle, x, reference(g, x)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The pipeline's keys (client, worker) and, elsewhere, a valid keypair nobody authorized."""
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root / "pipeline")
    generate_keys(root / "outsider", ["mallory"])
    return {"dir": root / "pipeline", "client": SecureConfig(root / "pipeline", "client"),
            "worker": SecureConfig(root / "pipeline", "worker"),
            "mallory": SecureConfig(root / "outsider", "mallory")}


@pytest.fixture(scope="module")
def secure(built, keys):
    with Pipeline(built[0], secure=keys["dir"]) as p:
        yield p


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        err = compare(got[key], value, key)
        assert err.rel <= RTOL, f"{what}: {key} rel err {err.rel:.2e}"


def _peer(ctx, kind, addr, keys: SecureConfig | None = None, server_key: bytes | None = None):
    """A socket connected to ``addr`` (plain, or a CURVE client with ``keys``) and its monitor."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.client(s, server_key)
    monitor = s.get_monitor_socket()
    s.connect(addr)
    return s, monitor


def _wait_event(monitor, want: int, timeout_s: float = 10.0) -> dict:
    """The first monitor event of a kind in the flags ``want`` (failing after ``timeout_s``)."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)
            if event["event"] & want:
                return event
            seen.append(zmq.Event(event["event"]).name)
    raise AssertionError(f"no {zmq.Event(want)!r} within {timeout_s} s; saw {seen}")


def _close(*socks) -> None:
    for s in socks:
        s.close(linger=0)


def _counters(p: Pipeline) -> list[tuple[int, int]]:
    health = p.health()
    assert all(h["ok"] for h in health), health
    return [(h["served"], h["errors"]) for h in health]


def _result_addr(p: Pipeline) -> str:
    return p._recv.getsockopt_string(zmq.LAST_ENDPOINT)


# ------------------------------------------------------------------------------------ results
def test_secure_pipeline_equals_plain_and_onnxruntime(built, keys, secure):
    bundle, x, ort_out = built
    with Pipeline(bundle) as plain:
        want, _ = plain.run(x)
        assert plain.secure is None
        assert plain._entry[0][1].getsockopt(zmq.MECHANISM) == zmq.NULL
    got, trace = secure.run(x)
    _assert_close(got, want, "secure vs plain")
    _assert_close(got, ort_out, "secure vs onnxruntime")
    assert len(trace.compute_ms) == 2
    assert secure.secure.name == "client"
    for s in (secure._entry[0][1], secure._recv):
        assert s.getsockopt(zmq.MECHANISM) == zmq.CURVE
    assert secure._recv.getsockopt(zmq.CURVE_SERVER) == 1  # the client binds the result socket
    for y, _ in secure.stream([x] * 20):
        _assert_close(y, want, "secure stream")
    assert all(h["ok"] for h in secure.health())


def test_secure_pipeline_to_running_workers(built, keys, tmp_path):
    """Workers started by hand with --secure (the last binds ``out``), joined with endpoints."""
    bundle, x, ort_out = built

    with HandStartedWorkers(bundle, tmp_path, "--secure", str(keys["dir"])) as workers:
        procs = workers.procs
        info1 = workers.start(1)
        info0 = workers.start(0, "--next", info1["data"])  # --next-key defaults to worker
        with Pipeline(bundle, endpoints=[info0, info1], secure=keys["dir"]) as p:
            _assert_close(p.run(x)[0], ort_out, "secure endpoints vs onnxruntime")
        with pytest.raises(PipelineError, match="no answer"):  # without keys: refused
            Pipeline(bundle, endpoints=[info0, info1], timeout_s=1)
        for proc in procs:
            proc.terminate()
        assert [proc.wait(timeout=10) for proc in procs] == [0, 0]
        assert b"warning" not in b"".join(proc.stderr.read() for proc in procs)


# ------------------------------------------------------------------------- refused peers
def test_peer_without_keys_is_refused_and_workers_keep_serving(built, secure, keys, ctx):
    _, x, ort_out = built
    before = _counters(secure)
    socks = []
    for ep in secure.endpoints:  # a valid wire message straight into each stage's data socket
        s, monitor = _peer(ctx, zmq.PUSH, ep["data"])
        socks += [s, monitor]
        s.send_multipart(wire.error_reply(777, 0, "injected", "plain peer"))
        event = _wait_event(monitor, REFUSED)
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            assert event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    # the client's own result socket refuses plain peers too
    s, monitor = _peer(ctx, zmq.PUSH, _result_addr(secure))
    socks += [s, monitor]
    s.send_multipart(wire.error_reply(778, 1, "injected", "plain peer"))
    _wait_event(monitor, REFUSED)
    assert secure.unmatched(timeout_s=QUIET_S) == []
    assert _counters(secure) == before  # nothing reached a worker
    _assert_close(secure.run(x)[0], ort_out, "after a plain peer")
    # control: the same injection with the client's keys does arrive (the test can see it)
    s, monitor = _peer(ctx, zmq.PUSH, secure.endpoints[0]["data"], keys["client"],
                       keys["worker"].public_key)
    socks += [s, monitor]
    s.send_multipart(wire.error_reply(779, 0, "injected", "authorized peer"))
    _wait_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    got = secure.unmatched(timeout_s=10)
    assert [(m.id, m.error.code) for m in got] == [(779, "injected")]
    _close(*socks)


def test_peer_with_unauthorized_key_is_refused(built, secure, keys, ctx):
    _, x, ort_out = built
    before = _counters(secure)
    mallory, worker_key = keys["mallory"], keys["worker"].public_key
    assert not keys["worker"].is_authorized(mallory.public_key)
    socks = []
    for ep in secure.endpoints:  # a real CURVE keypair, the right server key, not authorized
        s, monitor = _peer(ctx, zmq.PUSH, ep["data"], mallory, worker_key)
        socks += [s, monitor]
        s.send_multipart(wire.error_reply(888, 0, "injected", "unauthorized peer"))
        event = _wait_event(monitor, REFUSED)
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            assert event["value"] == 400  # the ZAP handler's "denied"
    s, monitor = _peer(ctx, zmq.PUSH, _result_addr(secure), mallory, keys["client"].public_key)
    socks += [s, monitor]
    s.send_multipart(wire.error_reply(889, 1, "injected", "unauthorized peer"))
    _wait_event(monitor, REFUSED)
    # an authorized key with the wrong server key (a client fooled by an impostor) fails as well
    s, monitor = _peer(ctx, zmq.PUSH, secure.endpoints[0]["data"], keys["client"],
                       mallory.public_key)
    socks += [s, monitor]
    s.send_multipart(wire.error_reply(890, 0, "injected", "wrong server key"))
    _wait_event(monitor, REFUSED)
    assert secure.unmatched(timeout_s=QUIET_S) == []
    assert _counters(secure) == before
    _assert_close(secure.run(x)[0], ort_out, "after an unauthorized peer")
    _close(*socks)


def test_secure_control_socket_answers_only_authorized_keys(secure, keys, ctx):
    control = secure.endpoints[0]["control"]
    mallory, worker_key = keys["mallory"], keys["worker"].public_key
    socks = []
    for who, args in (("plain", ()), ("unauthorized", (mallory, worker_key))):
        s, monitor = _peer(ctx, zmq.REQ, control, *args)
        socks += [s, monitor]
        s.send_json({"cmd": "shutdown"})
        assert not s.poll(int(QUIET_S * 1000)), f"a {who} peer got an answer"
    s, monitor = _peer(ctx, zmq.REQ, control, keys["client"], worker_key)
    socks += [s, monitor]
    s.send_json({"cmd": "health"})
    assert s.poll(10_000)
    answer = s.recv_json()
    assert answer["ok"] is True and answer["stage"] == 0
    assert [h["ok"] for h in secure.health()] == [True, True]  # no shutdown got through
    _close(*socks)


def test_each_socket_admits_only_its_role(secure, keys, ctx):
    """A worker's keypair (held by every worker machine) cannot stop a worker or ask its health;
    a client key cannot feed a stage in the middle; the client's own key still can do both
    where its role allows."""
    worker, client = keys["worker"], keys["client"]
    control = secure.endpoints[1]["control"]
    socks = []
    s, monitor = _peer(ctx, zmq.REQ, control, worker, worker.public_key)
    socks += [s, monitor]
    assert _wait_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)["event"] \
        == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    try:  # the refused connection is gone: the request has nowhere to go, or goes nowhere
        s.send_json({"cmd": "shutdown"}, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    assert not s.poll(int(QUIET_S * 1000)), "a worker key reached a control socket"
    before = [h["errors"] for h in secure.health()]
    # stage 1 is fed by stage 0 only: the client's key is refused on its data socket
    s, monitor = _peer(ctx, zmq.PUSH, secure.endpoints[1]["data"], client, worker.public_key)
    socks += [s, monitor]
    assert _wait_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)["event"] \
        == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # ... while a worker key (stage 0's role) gets in: its malformed message is counted
    s, monitor = _peer(ctx, zmq.PUSH, secure.endpoints[1]["data"], worker, worker.public_key)
    socks += [s, monitor]
    assert _wait_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)["event"] \
        == zmq.EVENT_HANDSHAKE_SUCCEEDED
    s.send_multipart([b"not a header"])
    deadline = time.monotonic() + 10
    while [h["errors"] for h in secure.health()] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [h["errors"] for h in secure.health()] == [before[0], before[1] + 1]
    assert [h["ok"] for h in secure.health()] == [True, True]
    _close(*socks)
    for domain, role in (("clients", client), ("workers", worker)):
        assert client.is_authorized(role.public_key, domain)
    assert not client.is_authorized(worker.public_key, "clients")
    assert not client.is_authorized(client.public_key, "workers")


def test_per_stage_keys_admit_exactly_the_senders_in_the_plan(built, tmp_path, ctx):
    """With stage0/stage1 keys (no shared worker key) each stage holds only its own secret;
    the client's result socket admits only the replying stage 1, stage 1's data socket only
    stage 0."""
    bundle, x, ort_out = built
    from cli_helpers import invoke, ok

    keys_dir = tmp_path / "keys"
    ok(invoke("keys", keys_dir, "--stages", 2))
    assert sorted(f.name for f in keys_dir.glob("*.key")) == ["client.key", "stage0.key",
                                                              "stage1.key"]
    k = {n: SecureConfig(keys_dir, n) for n in ("client", "stage0", "stage1")}
    with Pipeline(bundle, secure=keys_dir) as p:
        _assert_close(p.run(x)[0], ort_out, "per-stage keys")
        event = lambda m: _wait_event(  # noqa: E731
            m, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)["event"]
        cases = [  # (who, where, the server's key, admitted?)
            ("stage0", p._result_addr, k["client"].public_key, False),
            ("stage1", p._result_addr, k["client"].public_key, True),
            ("client", p.endpoints[1]["data"], k["stage1"].public_key, False),
            ("stage1", p.endpoints[1]["data"], k["stage1"].public_key, False),
            ("stage0", p.endpoints[1]["data"], k["stage1"].public_key, True),
            ("client", p.endpoints[0]["data"], k["stage0"].public_key, True),
            ("stage1", p.endpoints[0]["control"], k["stage0"].public_key, False),
        ]
        socks = []
        for who, addr, server_key, admitted in cases:
            kind = zmq.REQ if addr == p.endpoints[0]["control"] else zmq.PUSH
            s, monitor = _peer(ctx, kind, addr, k[who], server_key)
            socks += [s, monitor]
            want = zmq.EVENT_HANDSHAKE_SUCCEEDED if admitted else zmq.EVENT_HANDSHAKE_FAILED_AUTH
            assert event(monitor) == want, (who, addr)
        _close(*socks)
        _assert_close(p.run(x)[0], ort_out, "after the probes")


# ------------------------------------------------------------------------------------ keys
def test_generate_keys_permissions_and_no_overwrite(tmp_path):
    d = tmp_path / "k"
    made = generate_keys(d)
    assert sorted(made) == ["client", "worker"]
    assert sorted(p.name for p in d.iterdir()) == ["client.key", "client.key_secret",
                                                   "worker.key", "worker.key_secret"]
    if os.name == "posix":
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        for name, (pub, sec) in made.items():
            assert stat.S_IMODE(sec.stat().st_mode) == 0o600, name
            assert stat.S_IMODE(pub.stat().st_mode) == 0o644, name
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(SecurityError, match="refusing to overwrite"):
        generate_keys(d)
    with pytest.raises(SecurityError, match="worker.key"):
        generate_keys(d, ["worker", "extra"])
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing touched
    generate_keys(d, ["worker"], overwrite=True)
    assert (d / "worker.key_secret").read_bytes() != before["worker.key_secret"]
    assert (d / "client.key_secret").read_bytes() == before["client.key_secret"]
    with pytest.raises(SecurityError, match="not valid"):
        generate_keys(tmp_path / "x", ["../evil"])
    cfg = SecureConfig(d, "client")
    assert cfg.authorized == {SecureConfig(d, "worker").public_key, cfg.public_key}
    assert "secret_key" not in repr(cfg)


def test_missing_or_bad_keys_are_clear_errors(built, tmp_path):
    bundle, _, _ = built
    missing = tmp_path / "nope"
    with pytest.raises(TvmsplitError, match=rf"keys directory {missing} does not exist.*"
                                            rf"tvmsplit keys {missing}"):
        SecureConfig(missing, "worker")
    with pytest.raises(TvmsplitError, match="does not exist"):
        Pipeline(bundle, secure=missing)

    d = tmp_path / "k"
    generate_keys(d, ["client"])  # no worker keys
    with pytest.raises(TvmsplitError, match=r"worker\.key is missing"):
        Pipeline(bundle, secure=d)  # needs worker.key to connect to the workers
    generate_keys(d, ["worker"])
    secret = d / "worker.key_secret"
    secret.chmod(0o644)
    with pytest.raises(SecurityError, match=rf"{secret} is readable by others.*chmod 600"):
        SecureConfig(d, "worker")
    secret.chmod(0o600)
    text = secret.read_text()
    secret.write_text(text.replace("secret-key = \"", "secret-key = \"!!"))
    with pytest.raises(SecurityError, match=rf"{secret} is corrupt"):
        SecureConfig(d, "worker")
    secret.write_text(text)
    (d / "junk.key").write_text("not a certificate\n")
    with pytest.raises(SecurityError, match=r"junk\.key is not a ZeroMQ certificate"):
        SecureConfig(d, "worker")
    (d / "junk.key").unlink()
    SecureConfig(d, "worker")

    # the worker exits with code 2 and one line naming the file
    os.remove(d / "worker.key_secret")
    proc = subprocess.run([sys.executable, "-m", "tvmsplit.runtime.worker", "--bundle",
                           str(bundle.path), "--stage", "0", "--secure", str(d)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert f"{d}/worker.key_secret is missing".encode() in proc.stderr
    assert b"tvmsplit keys" in proc.stderr
