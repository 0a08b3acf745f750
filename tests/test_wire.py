"""Tests of the wire format (tvmsplit/runtime/wire.py), including golden bytes.

Golden files (tests/golden/*.bin) hold the frames of one multipart message in a simple container:
for each frame, its length as a 4-byte little-endian unsigned int, then its bytes; repeated until
end of file. A native worker must encode the same messages to the same frames and decode them to
the same values. The tests only compare; to regenerate after an intentional format change (which
needs a new wire version), run from the repository root:

    python -m tests.test_wire --regen
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from tvmsplit.errors import TvmsplitError, WireError
from tvmsplit.runtime import wire
from tvmsplit.runtime.wire import DEFAULT_MAX_BYTES, ErrorInfo, Message, decode, encode

GOLDEN = Path(__file__).parent / "golden"


def golden_request() -> Message:
    return Message(
        "request", 42, 1,
        (("input", np.array([[1.0, -2.0], [0.5, 3.25]], dtype=np.float32)),
         ("ids", np.array([1, -2, 300], dtype=np.int64))),
        ({"compute_ms": 1.5, "host": "edge-é", "recv_ts": 1700000000.25, "send_ts": 1700000000.5,
          "stage": 0},))


def golden_error() -> list[bytes]:
    return wire.error_reply(42, 1, "bad_size", "tensor 'input': expected 16 bytes, got 12")


GOLDEN_REQUEST_HEADER = (
    '{"id":42,"kind":"request","stage":1,"tensors":[{"dtype":"float32","name":"input",'
    '"shape":[2,2]},{"dtype":"int64","name":"ids","shape":[3]}],"trace":[{"compute_ms":1.5,'
    '"host":"edge-é","recv_ts":1700000000.25,"send_ts":1700000000.5,"stage":0}],"v":1}'
).encode("utf-8")


def write_frames(path: Path, frames) -> None:
    path.write_bytes(b"".join(struct.pack("<I", len(bytes(f))) + bytes(f) for f in frames))


def read_frames(path: Path) -> list[bytes]:
    data, frames, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        frames.append(data[pos + 4:pos + 4 + n])
        assert len(frames[-1]) == n, f"{path} is truncated"
        pos += 4 + n
    return frames


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def bits(a: np.ndarray) -> tuple:
    """Everything that must survive the wire: dtype name, shape, little-endian bytes."""
    a = np.asarray(a)
    return a.dtype.name, a.shape, a.astype(a.dtype.newbyteorder("<")).tobytes()


def assert_code(code: str, frames, **kw) -> WireError:
    with pytest.raises(WireError) as ei:
        decode(frames, **kw)
    assert ei.value.code == code, str(ei.value)
    assert isinstance(ei.value, TvmsplitError)
    return ei.value


# ---------------------------------------------------------------------------------- round trip
def test_round_trip_bit_exact():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {
        "scalar": np.float64(-0.0) * np.ones(()),
        "empty": np.zeros((0, 3), np.int32),
        "mask": np.array([[True, False], [False, True]]),
        "half": np.array([1.0, -65504.0, np.inf, np.nan, 6e-8], np.float16),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "big_endian": np.array([1, -2, 2**40], dtype=">i8"),
        "u8": np.arange(256, dtype=np.uint8),
        "i8": np.array([-128, 127], np.int8),
        "i16": np.array([[-32768, 7]], np.int16),
        "f64": np.array([np.pi, -1e-300]),
    }
    msg = decode(encode(Message("reply", 2**63 - 1, 3, tensors, ({"stage": 3, "x": [1]},))))
    assert (msg.kind, msg.id, msg.stage, msg.trace, msg.error) == \
        ("reply", 2**63 - 1, 3, ({"stage": 3, "x": [1]},), None)
    assert [n for n, _ in msg.tensors] == list(tensors)
    for name, arr in msg.tensors:
        assert bits(arr) == bits(tensors[name]), name
        assert not arr.flags.writeable
    assert msg.metas[4] == wire.TensorMeta("transposed", "float32", (6, 4))
    assert msg.arrays()["big_endian"].tolist() == [1, -2, 2**40]


def test_request_reply_helpers_and_expected_names():
    frames = wire.request(5, 0, {"a": np.ones(2, np.float32)})
    assert decode(frames, expected_names=["a"]).kind == "request"
    out = decode(wire.reply(5, 0, [("b", np.zeros(1, np.uint8))], [{"stage": 0}]))
    assert (out.kind, out.trace, out.arrays()["b"].tolist()) == ("reply", ({"stage": 0},), [0])


def test_encode_is_zero_copy_for_contiguous_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = encode(Message("request", 1, 0, {"x": arr, "s": np.array(7, np.int64)}))
    assert isinstance(frames[1], memoryview) and frames[1].nbytes == arr.nbytes
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), arr)
    # a non-contiguous input is copied (once), never shared
    frames = encode(Message("request", 1, 0, {"x": arr.T}))
    assert not np.shares_memory(np.frombuffer(frames[1], np.uint8), arr)


def test_decode_is_zero_copy():
    frames = as_bytes(encode(Message("request", 1, 0, {"x": np.arange(4, dtype=np.int32)})))
    data = bytearray(frames[1])
    arr = decode([frames[0], data]).arrays()["x"]
    assert np.shares_memory(arr, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("value", [np.array([1 + 2j]), np.array(["a"]), np.array([None]),
                                   np.array([1], np.uint16)])
def test_encode_rejects_unsupported_dtypes(value):
    with pytest.raises(WireError) as ei:
        encode(Message("request", 1, 0, {"x": value}))
    assert ei.value.code == "bad_dtype"


@pytest.mark.parametrize("msg, code", [
    (Message("hello", 1, 0), "bad_field"),
    (Message("request", -1, 0), "bad_field"),
    (Message("request", 1, 0, (("a", np.ones(1)), ("a", np.ones(1)))), "duplicate_tensor"),
    (Message("request", 1, 0, trace=({"t": object()},)), "bad_field"),
    (Message("request", 1, 0, error=ErrorInfo("x", "y")), "bad_field"),
    (Message("error", 1, 0), "missing_field"),
    (Message("error", 1, 0, error=ErrorInfo("Not A Code", "y")), "bad_field"),
])
def test_encode_refuses_what_decode_would_reject(msg, code):
    with pytest.raises(WireError) as ei:
        encode(msg)
    assert ei.value.code == code


# ---------------------------------------------------------------------------------- golden
def test_golden_request_bytes():
    frames = as_bytes(encode(golden_request()))
    assert frames[0] == GOLDEN_REQUEST_HEADER
    assert frames == read_frames(GOLDEN / "request_v1.bin")


def test_golden_error_bytes():
    frames = golden_error()
    assert all(type(f) is bytes for f in frames) and len(frames) == 1
    assert frames == read_frames(GOLDEN / "error_v1.bin")


def test_golden_decode():
    msg = decode(read_frames(GOLDEN / "request_v1.bin"), expected_names={"input", "ids"})
    assert (msg.kind, msg.id, msg.stage) == ("request", 42, 1)
    assert [(m.name, m.dtype, m.shape) for m in msg.metas] == \
        [("input", "float32", (2, 2)), ("ids", "int64", (3,))]
    assert msg.arrays()["input"].tolist() == [[1.0, -2.0], [0.5, 3.25]]
    assert msg.arrays()["ids"].tolist() == [1, -2, 300]
    assert msg.trace == golden_request().trace
    err = decode(read_frames(GOLDEN / "error_v1.bin"))
    assert (err.kind, err.id, err.stage, err.tensors, err.trace) == ("error", 42, 1, (), ())
    assert err.error == ErrorInfo("bad_size", "tensor 'input': expected 16 bytes, got 12")


# ---------------------------------------------------------------------------------- malformed
def valid() -> tuple[dict, list[bytes]]:
    frames = as_bytes(encode(Message("request", 9, 2, {"x": np.arange(6, dtype=np.float32)
                                                       .reshape(2, 3), "m": np.array([True])})))
    return json.loads(frames[0]), frames[1:]


def with_header(mutate=None, data=None) -> list[bytes]:
    header, frames = valid()
    if mutate:
        mutate(header)
    return [json.dumps(header).encode()] + (frames if data is None else data)


def setter(path, value):
    def mutate(h):
        *parents, last = path
        for p in parents:
            h = h[p]
        h[last] = value
    return mutate


def deleter(key):
    return lambda h: h.pop(key)


@pytest.mark.parametrize("header, code", [
    (b'{"v":1,', "bad_header"),
    (b"[1, 2]", "bad_header"),
    (b'"text"', "bad_header"),
    (b'{"v":1,"kind":"\xff\xfe"}', "bad_header"),
    (b'{"v":1,"v":1}', "bad_header"),
    (b'{"v":1,"trace":[{"x":NaN}]}', "bad_header"),
    (b'{"v":1,"trace":[{"x":1e400}]}', "bad_header"),
    (b"{}", "missing_field"),
    (b" " * (wire.MAX_HEADER_BYTES + 1), "too_large"),
])
def test_bad_header_frame(header, code):
    assert_code(code, [header])


def test_unknown_version_names_both_versions():
    err = assert_code("bad_version", with_header(setter(["v"], 2)))
    assert "version 2" in str(err) and "version 1" in str(err)
    assert_code("bad_version", with_header(setter(["v"], "1")))
    assert_code("bad_version", with_header(setter(["v"], True)))


@pytest.mark.parametrize("key", ["kind", "id", "stage", "tensors", "trace"])
def test_missing_field(key):
    assert "'" + key + "'" in str(assert_code("missing_field", with_header(deleter(key))))


@pytest.mark.parametrize("path, value", [
    (["kind"], "req"), (["kind"], 1), (["id"], -1), (["id"], "9"), (["id"], True), (["id"], 9.0),
    (["id"], 2**63), (["stage"], 2**31), (["stage"], None), (["tensors"], {}), (["trace"], {}),
    (["trace"], [1]), (["trace"], [[]]), (["error"], {"code": "x", "message": "y"}),
    (["tensors", 0, "extra"], 1), (["tensors", 0, "name"], ""), (["tensors", 0, "name"], 3),
    (["tensors", 0, "name"], "n" * 257),
])
def test_wrong_type_or_value(path, value):
    assert_code("bad_field", with_header(setter(path, value)))


def test_error_kind_rules():
    assert_code("missing_field", with_header(setter(["kind"], "error")))
    frames = with_header(lambda h: h.update(kind="error", error={"code": "x", "message": "m"}))
    assert_code("bad_field", frames)  # an error carries no tensors
    for bad in [{"code": "x"}, {"code": "Bad", "message": ""}, {"code": "x", "message": 1},
                "oops", {"code": "x", "message": "m", "more": 1}]:
        assert_code("bad_field", [json.dumps({"v": 1, "kind": "error", "id": 1, "stage": 0,
                                              "tensors": [], "trace": [], "error": bad}).encode()])


def test_unknown_field():
    assert_code("unknown_field", with_header(setter(["priority"], 1)))


@pytest.mark.parametrize("dtype", ["complex64", "float8", "uint16", "object", "<f4", None,
                                   ["float32"]])
def test_unknown_dtype(dtype):
    assert_code("bad_dtype", with_header(setter(["tensors", 0, "dtype"], dtype)))


@pytest.mark.parametrize("shape", [[2, -3], [1] * 9, "2,3", [2.0, 3], [True, 6], None, [2**63]])
def test_bad_shape(shape):
    assert_code("bad_shape", with_header(setter(["tensors", 0, "shape"], shape)))


def test_duplicate_names():
    assert_code("duplicate_tensor", with_header(setter(["tensors", 1, "name"], "x")))


def test_wrong_frame_size_names_tensor_and_sizes():
    _, (x, m) = valid()
    err = assert_code("bad_size", with_header(data=[x[:-4], m]))
    assert "'x'" in str(err) and "expected 24 bytes, got 20" in str(err)
    assert_code("bad_size", with_header(data=[m, x]))


def test_frame_count():
    _, (x, m) = valid()
    assert_code("missing_frames", [])
    assert_code("missing_frames", with_header(data=[x]))
    assert_code("extra_frames", with_header(data=[x, m, b""]))


def test_too_large():
    assert_code("too_large", with_header(), max_bytes=24)  # 24 + 1 bytes of data
    decode(with_header(), max_bytes=25)
    # checked from the header alone, before any frame is touched or memory allocated
    assert_code("too_large", with_header(setter(["tensors", 0, "shape"], [2**40, 4]), data=[]))
    # an element count no array can have is a bad shape (check 9, before the size)
    assert_code("bad_shape", with_header(setter(["tensors", 0, "shape"], [2**62, 4]), data=[]))
    assert_code("bad_shape", with_header(setter(["tensors", 0, "shape"], [0, 2**62, 2**62]),
                                         data=[b""]))
    assert DEFAULT_MAX_BYTES == 256 << 20


def test_bool_bytes_must_be_0_or_1():
    _, (x, _m) = valid()
    assert_code("bad_data", with_header(data=[x, b"\x02"]))


def test_expected_names():
    assert_code("unknown_tensor", with_header(), expected_names=["x"])
    assert_code("missing_tensor", with_header(), expected_names=["x", "m", "y"])
    assert [n for n, _ in decode(with_header(), expected_names=("m", "x")).tensors] == ["x", "m"]


# ---------------------------------------------------------------------------------- zmq
def test_zmq_round_trip_and_error_reply():
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        for s in (a, b):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 5000)
            s.setsockopt(zmq.SNDTIMEO, 5000)
        port = b.bind_to_random_port("tcp://127.0.0.1")
        a.connect(f"tcp://127.0.0.1:{port}")
        big = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
        tensors = {"big": big, "s": np.array(3, np.int8), "e": np.zeros((2, 0), np.float16)}
        a.send_multipart(wire.request(1, 0, tensors), copy=False)
        got = b.recv_multipart(copy=False)  # zmq.Frame objects
        assert isinstance(got[0], zmq.Frame)
        msg = decode(got, expected_names=tensors)
        assert all(bits(arr) == bits(tensors[n]) for n, arr in msg.tensors)
        # the worker answers a malformed request with an error reply instead of crashing
        a.send_multipart([b'{"v":7}'])
        try:
            decode(b.recv_multipart(copy=False))
        except WireError as e:
            b.send_multipart(wire.error_reply(1, 0, e.code, str(e)))
        err = decode(a.recv_multipart())  # plain bytes
        assert (err.kind, err.error.code) == ("error", "bad_version")
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python -m tests.test_wire --regen   (rewrites tests/golden/*_v1.bin)")
    GOLDEN.mkdir(exist_ok=True)
    write_frames(GOLDEN / "request_v1.bin", encode(golden_request()))
    write_frames(GOLDEN / "error_v1.bin", golden_error())
    print(f"wrote {GOLDEN / 'request_v1.bin'} and {GOLDEN / 'error_v1.bin'}")
