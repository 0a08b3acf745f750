"""No message from the network crashes a process: 10,000 seeded malformed messages each to a
worker's data socket, its control socket and the client's result socket; every one is answered
(or, at the client, kept as unmatched) with its code, and valid requests are still served after.
A frame larger than the receiver's bound disconnects its sender without growing the worker."""
from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
import zmq

from tvmsplit import Pipeline
from tvmsplit.errors import WireError
from tvmsplit.runtime import control, wire
from tvmsplit.runtime.launch import WorkerSpec, spawn

from chain_bundles import chain_bundles
from fuzz_corpus import control_corpus, wire_corpus
from hand_workers import data_sockets

pytestmark = pytest.mark.timeout(600)
N = 10_000
WORKER_CODES = wire.WORKER_ERROR_CODES  # one definition, runtime/wire.py


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return chain_bundles(tmp_path_factory)


def _oracle(frames) -> str | None:
    """The wire code the reference decoder gives, or None when the message is well formed."""
    try:
        wire.decode(frames)
    except WireError as exc:
        return exc.code
    return None


def test_the_decoders_raise_only_their_own_errors():
    """In process: the wire decoder raises WireError and the control parser ControlError, never
    anything else, on every corpus message (the corpus reaches each of the spec's codes)."""
    inputs = [wire.TensorMeta("x", "float32", (1, 4, 8, 8)), wire.TensorMeta("m", "bool", (3,))]
    codes = {_oracle(frames) for frames in wire_corpus(0, N, inputs, 1)}
    assert {"bad_header", "bad_field", "bad_shape", "bad_dtype", "too_large", "missing_field",
            "unknown_field", "missing_frames", "extra_frames", "bad_size", "duplicate_tensor",
            "bad_version", "bad_data", None} <= codes
    for frames in control_corpus(0, N):
        try:
            control.parse_request(frames)
        except control.ControlError:
            pass


def test_a_worker_answers_every_malformed_message_once_and_keeps_serving(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    stage = bundle.stages[1]
    corpus = wire_corpus(1, N, stage.plan.inputs, 1)
    ctx = zmq.Context()
    with spawn(WorkerSpec(str(bundle.path), 1), tmp_path) as proc:
        info = proc.wait_ready(60)
        try:
            push, pull, req = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL), ctx.socket(zmq.REQ)
            for s in (push, pull, req):
                s.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVTIMEO, 30_000)
            push.connect(info["data"])
            pull.connect(info["out"])
            req.connect(info["control"])
            got = []
            for i, frames in enumerate(corpus):
                push.send_multipart(frames)
                if i % 200 == 199 or i == len(corpus) - 1:  # keep the queues short
                    while len(got) < i + 1:
                        got.append(wire.decode(pull.recv_multipart()))
            assert len(got) == N and proc.poll() is None
            valid = forwarded = 0
            for frames, msg in zip(corpus, got):
                want = _oracle(frames)
                if want is not None:  # malformed: the decoder's code, once
                    assert msg.kind == "error" and msg.error.code == want, (msg.error, want)
                elif json_kind(frames) == "error":  # an upstream error is passed on as it is
                    assert msg.kind == "error" and msg.error == wire.decode(frames).error
                    forwarded += 1
                elif msg.kind == "reply":
                    valid += 1
                else:
                    assert msg.kind == "error" and msg.error.code in WORKER_CODES, msg.error
            assert valid > N // 50  # the valid ones in the corpus were served, not dropped
            x = {t.name: np.ones(t.shape, t.dtype) for t in stage.plan.inputs}
            push.send_multipart(wire.request(7, 1, list(x.items())))
            assert wire.decode(pull.recv_multipart()).kind == "reply"
            # the control socket: every malformed request answered, health still fine after
            for frames in control_corpus(2, N):
                req.send_multipart(frames)
                answer = control.parse_reply(req.recv_multipart())
                try:
                    control.parse_request(frames)
                    assert answer["ok"] is True
                except control.ControlError as exc:
                    assert answer == {"ok": False, "code": exc.code, "error": exc.detail}
            req.send_multipart(control.encode_request(control.HEALTH))
            health = control.parse_reply(req.recv_multipart())
            assert health["ok"] and health["served"] == valid + 1
            assert health["errors"] == N - valid - forwarded  # each malformed one counted once
        finally:
            ctx.destroy(linger=0)


def json_kind(frames) -> str | None:
    import json

    try:
        return json.loads(bytes(frames[0])).get("kind")
    except Exception:  # noqa: BLE001
        return None


def test_a_2gib_frame_is_refused_without_the_worker_growing(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    stage = bundle.stages[1]
    ctx = zmq.Context()
    with spawn(WorkerSpec(str(bundle.path), 1), tmp_path) as proc:
        info = proc.wait_ready(60)
        try:
            rss_before = psutil.Process(proc.pid).memory_info().rss
            big = ctx.socket(zmq.PUSH)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(info["data"])
            header = {"v": 1, "kind": "request", "id": 1, "stage": 1, "trace": [],
                      "tensors": [{"name": stage.plan.inputs[0].name, "dtype": "uint8",
                                   "shape": [2**31]}]}
            import json

            big.send_multipart([json.dumps(header).encode(), b"\0" * 2**31])
            time.sleep(3)  # the worker reads the frame's size and drops the connection
            big.close()
            rss_after = psutil.Process(proc.pid).memory_info().rss
            assert rss_after - rss_before < 64 << 20, (rss_before, rss_after)
            # still serving
            push, pull = data_sockets(ctx, info)
            x = [(t.name, np.ones(t.shape, t.dtype)) for t in stage.plan.inputs]
            push.send_multipart(wire.request(2, 1, x))
            assert wire.decode(pull.recv_multipart()).kind == "reply"
            assert proc.poll() is None
        finally:
            ctx.destroy(linger=0)


def test_the_client_keeps_every_malformed_message_as_unmatched_and_keeps_running(built):
    bundle = built["bundles"]["chain2"]
    x, _, ort = built["expected"]["chain"]
    corpus = wire_corpus(3, N, bundle.outputs, 1)
    with Pipeline(bundle) as p:
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(p._result_addr)
            seen = 0
            for i, frames in enumerate(corpus):
                push.send_multipart(frames)
                if i % 200 == 199 or i == len(corpus) - 1:
                    deadline = time.monotonic() + 30
                    while seen < i + 1 and time.monotonic() < deadline:
                        seen += len(p.unmatched(timeout_s=0.5))
            assert seen == N
            y, _ = p.run(x)
            np.testing.assert_allclose(y["output"], ort["output"], rtol=1e-4, atol=1e-5)
        finally:
            ctx.destroy(linger=0)
