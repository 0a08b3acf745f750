"""The control protocol (tvmsplit/runtime/control.py): golden bytes, the ordered checks, and a
live worker answering each golden request.

Golden files (tests/golden/control_*_v1.bin) use the wire goldens' container (frame length as
4-byte little-endian, then the bytes). A native worker must accept the requests and answer with
replies of the same shape. To regenerate after an intentional change (a new CONTROL_VERSION):

    python -m tests.test_control --regen
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import zmq

from tvmsplit import Pipeline, PipelineError
from tvmsplit.runtime import control
from tvmsplit.runtime.control import ControlClient, ControlError, parse_reply, parse_request

sys.path.insert(0, str(Path(__file__).parent))
from test_wire import read_frames, write_frames  # noqa: E402
from chain_bundles import chain_bundles  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return chain_bundles(tmp_path_factory)


LIBRARY = b"\x7fELF\x00\x01 stage library bytes \xff"


def goldens() -> dict[str, list[bytes]]:
    """Every golden message, made by the encoder."""
    return {
        "control_health_request_v1.bin": control.encode_request(control.HEALTH),
        "control_shutdown_request_v1.bin": control.encode_request(control.SHUTDOWN),
        "control_deploy_request_v1.bin": control.encode_request(control.DEPLOY, LIBRARY),
        "control_health_reply_v1.bin": [control.ok_reply(
            stage=1, pid=4242, host="edge-é", cpu_percent=12.5, mem_available_bytes=1 << 30,
            rss_bytes=90 << 20, peak_rss_bytes=600 << 20, served=7, errors=0, deployed=True)],
        "control_deploy_reply_v1.bin": [control.ok_reply(stage=1, sha256="ab" * 32)],
        "control_error_reply_v1.bin": [control.error_reply(
            "unknown_cmd", "unknown cmd 'reboot'; known: health, shutdown, deploy")],
    }


@pytest.mark.parametrize("name", sorted(goldens()))
def test_golden_bytes(name):
    assert goldens()[name] == read_frames(GOLDEN / name)


def test_golden_bytes_are_canonical_json():
    assert read_frames(GOLDEN / "control_health_request_v1.bin") == [b'{"cmd":"health","v":1}']
    reply = read_frames(GOLDEN / "control_health_reply_v1.bin")[0]
    assert "é".encode() in reply and b" " not in reply  # raw UTF-8, no whitespace
    assert list(json.loads(reply)) == sorted(json.loads(reply))


def test_golden_parse():
    req = parse_request(read_frames(GOLDEN / "control_deploy_request_v1.bin"))
    assert req == control.ControlRequest("deploy", (LIBRARY,))
    assert parse_request(read_frames(GOLDEN / "control_health_request_v1.bin")).cmd == "health"
    health = parse_reply(read_frames(GOLDEN / "control_health_reply_v1.bin"))
    assert health["ok"] is True and health["host"] == "edge-é" and health["served"] == 7
    err = parse_reply(read_frames(GOLDEN / "control_error_reply_v1.bin"))
    assert err == {"ok": False, "code": "unknown_cmd",
                   "error": "unknown cmd 'reboot'; known: health, shutdown, deploy"}


@pytest.mark.parametrize("frames, code", [
    ([b"x" * (control.MAX_HEADER_BYTES + 1)], "too_large"),
    ([b"not json"], "bad_request"),
    ([b"\xff\xfe"], "bad_request"),
    ([b'["health"]'], "bad_request"),
    ([b'{"cmd":"health","cmd":"shutdown"}'], "bad_request"),
    ([b'{"cmd":"health","x":NaN}'], "bad_request"),
    ([b'{"cmd":"health","v":2}'], "bad_version"),
    ([b'{"cmd":"health","v":true}'], "bad_version"),
    ([b'{"cmd":"reboot"}'], "unknown_cmd"),
    ([b'{"cmd":7}'], "unknown_cmd"),
    ([b'{"v":1}'], "unknown_cmd"),
    ([b'{"cmd":"deploy"}'], "bad_frames"),
    ([b'{"cmd":"deploy"}', b"a", b"b"], "bad_frames"),
    ([b'{"cmd":"health"}', b"extra"], "bad_frames"),
    ([], "bad_request"),
])
def test_malformed_requests_get_the_first_failing_rule(frames, code):
    with pytest.raises(ControlError) as err:
        parse_request(frames)
    assert err.value.code == code


def test_a_request_without_a_version_is_version_1():
    assert parse_request([b'{"cmd": "shutdown"}']).cmd == "shutdown"


@pytest.mark.parametrize("frames", [[b"[1]"], [b'{"ok": 1}'], [b"{}"], [b'{"ok":true}', b"x"]])
def test_malformed_replies_are_refused(frames):
    with pytest.raises(ControlError) as err:
        parse_reply(frames)
    assert err.value.code == "bad_reply"


def test_encoder_refuses_what_the_parser_would():
    with pytest.raises(ControlError, match="unknown_cmd"):
        control.encode_request("reboot")
    with pytest.raises(ControlError, match="bad_frames"):
        control.encode_request("deploy")


def test_client_reports_no_address_and_no_answer_without_raising():
    ctx = zmq.Context()
    try:
        def socket(address):
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            return s

        silent = ctx.socket(zmq.ROUTER)  # takes the request, never answers
        silent.setsockopt(zmq.LINGER, 0)
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        answers = ControlClient(socket).ask_all([None, f"tcp://127.0.0.1:{port}"], "health",
                                                timeout_s=0.3)
        assert [a["code"] for a in answers] == ["no_address", "no_answer"]
        assert all(a["ok"] is False for a in answers)
        silent.close()
    finally:
        ctx.term()


def test_a_live_worker_answers_every_golden_request(built):
    """The Python worker speaks the spec: each golden request gets a reply of the golden shape
    (the native worker's test does the same)."""
    bundle = built["bundles"]["chain2"]
    with Pipeline(bundle, failover=False) as p:  # a stopped worker stays stopped
        ctx = zmq.Context()
        try:
            def ask(frames):
                s = ctx.socket(zmq.REQ)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RCVTIMEO, 10000)
                s.connect(p.endpoints[1]["control"])
                s.send_multipart(frames)
                got = s.recv_multipart()
                s.close()
                return got

            health = parse_reply(ask(read_frames(GOLDEN / "control_health_request_v1.bin")))
            golden = parse_reply(read_frames(GOLDEN / "control_health_reply_v1.bin"))
            assert set(health) == set(golden)
            assert {k: type(v) for k, v in health.items() if k != "cpu_percent"} == \
                {k: type(v) for k, v in golden.items() if k != "cpu_percent"}
            assert health["stage"] == 1 and health["pid"] == p.endpoints[1]["pid"]
            # the golden library does not match the manifest: refused, the stage keeps running
            refused = parse_reply(ask(read_frames(GOLDEN / "control_deploy_request_v1.bin")))
            assert refused["ok"] is False and refused["code"] == "deploy_mismatch"
            assert "stage 1" in refused["error"] and "manifest" in refused["error"]
            real = bundle.stages[1].library.read_bytes()
            ok = parse_reply(ask(control.encode_request(control.DEPLOY, real)))
            assert ok == {"ok": True, "stage": 1, "sha256": bundle.stages[1].sha256}
            err = parse_reply(ask([b'{"cmd":"reboot"}']))
            assert set(err) == {"ok", "code", "error"} and err["code"] == "unknown_cmd"
            assert parse_reply(ask([b'{"cmd":"health","v":9}']))["code"] == "bad_version"
            assert parse_reply(ask(read_frames(GOLDEN / "control_shutdown_request_v1.bin"))) == \
                {"ok": True}
        finally:
            ctx.term()
        deadline = time.monotonic() + 30
        with pytest.raises(PipelineError) as err:  # the stopped worker is noticed
            while time.monotonic() < deadline:
                p.run(built["expected"]["chain"][0])
        assert err.value.code == "worker_died" and err.value.stage == 1


def test_an_oversized_control_frame_drops_the_peer_not_the_worker(built):
    """A frame larger than the stage library cannot be a deploy: the worker disconnects that
    peer without reading it and keeps answering others."""
    bundle = built["bundles"]["chain2"]
    with Pipeline(bundle) as p:
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(p.endpoints[0]["control"])
            big = b"\0" * (max(bundle.stages[0].library_bytes, control.MAX_HEADER_BYTES) + 1024)
            s.send_multipart([b'{"cmd":"deploy"}', big])
            assert s.poll(1000, zmq.POLLIN) == 0  # dropped unread: no answer
            s.close()
        finally:
            ctx.term()
        assert [h["ok"] for h in p.health()] == [True, True]
        y, _ = p.run(built["expected"]["chain"][0])
        assert set(y) == {t.name for t in bundle.outputs}


if __name__ == "__main__" and "--regen" in sys.argv:
    for name, frames in goldens().items():
        write_frames(GOLDEN / name, frames)
        print(f"wrote {GOLDEN / name}")
