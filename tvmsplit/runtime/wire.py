"""Wire format v1 of the tvmsplit pipeline. This docstring is the normative spec.

Every implementation (this module, a native C++ worker) must accept and reject the same bytes
with the same error code and must pass the golden tests in ``tests/golden/``.

Message
    One ZeroMQ multipart message: frame 0 is the header, frames 1..N hold one tensor each, where
    N = len(header["tensors"]). Nothing else: no pickle, no compression, no extra framing.

Frame 0: header
    A JSON object encoded as UTF-8, at most ``MAX_HEADER_BYTES`` (1 MiB), nested at most
    ``MAX_DEPTH`` (32) arrays/objects deep (the header itself is depth 1). Canonical form, written
    by :func:`encode` and pinned by the golden files: keys sorted by code point at every level,
    separators ``,`` and ``:`` with no whitespace, non-ASCII characters written raw (not
    ``\\u``-escaped), integers without fraction or exponent. Receivers accept any valid JSON
    (whitespace, key order) but reject invalid UTF-8, invalid JSON, the literals
    NaN/Infinity/-Infinity, duplicate keys, and a top level that is not an object.

    ========  ======  ===========================================================================
    field     type    rule
    ========  ======  ===========================================================================
    v         int     format version, ``1``. Checked before every other field.
    kind      str     ``"request"`` | ``"reply"`` | ``"error"``
    id        int     request id, 0 <= id < 2**63; replies and errors carry the request's id
    stage     int     0 <= stage < 2**31; request: the stage that must run it; reply/error: the
                      stage that sends it
    tensors   list    one tensor entry per data frame, in frame order; ``[]`` for kind "error"
    trace     list    per-hop records appended by each stage, each a JSON object, otherwise
                      opaque; by convention {"stage", "host", "compute_ms", "recv_ts", "send_ts"}
                      (times: ms and Unix seconds as JSON numbers)
    error     object  required for kind "error", absent otherwise: exactly {"code", "message"},
                      both str; code matches ``[a-z][a-z0-9_]{0,63}``
    ========  ======  ===========================================================================

    No other field is allowed (a new field means a new version). In JSON, true/false are not ints.

    Tensor entry: exactly {"name", "dtype", "shape"}.
      name   str of 1..256 Unicode code points, unique in the message
      dtype  one of ``DTYPES``: bool float16 float32 float64 int8 int16 int32 int64 uint8
      shape  list of ints, each 0 <= dim < 2**63, rank 0..``MAX_RANK`` (8); ``[]`` is a scalar;
             the product of the non-zero dims times the item size is < 2**63 (so a shape with a
             zero dim cannot hide an element count no array can have)

Frames 1..N: tensor data
    Raw bytes in C (row-major) order, little-endian; IEEE 754 floats (float16 is binary16),
    two's-complement ints, bool one byte 0x00 or 0x01. Length exactly prod(shape) * itemsize
    (prod([]) = 1), no padding, no alignment guarantee. The sum over tensors must not exceed the
    receiver's ``max_bytes`` (default ``DEFAULT_MAX_BYTES``, 256 MiB).

Checks, in this order (the first failure decides the code)
    1. at least one frame                                  missing_frames
    2. header length in bytes <= MAX_HEADER_BYTES          too_large
    3. UTF-8, JSON, no NaN/Infinity (literal or overflowing number), no duplicate keys,
       nesting depth <= MAX_DEPTH, an object                bad_header
    4. "v" present / equals 1                              missing_field / bad_version
    5. no unknown field                                    unknown_field
    6. kind, id, stage, tensors, trace, one after another: present, then typed and in range
                                                           missing_field / bad_field
    7. every trace entry is an object                      bad_field
    8. kind "error" without "error"                        missing_field
       "error" with another kind, malformed "error", kind "error" with tensors   bad_field
    9. each tensor entry in order: an object with exactly the three keys  bad_field
       then its name                                       bad_field
       then its dtype                                      bad_dtype
       then its shape                                      bad_shape
       then its name is not a repeat                       duplicate_tensor
   10. total data bytes <= max_bytes                       too_large
   11. number of frames == 1 + len(tensors)                missing_frames / extra_frames
   12. each tensor in order: frame length, then (bool) every byte is 0 or 1   bad_size / bad_data
   13. only if the receiver passes expected names, and not for kind "error":
       a name it does not expect (first in frame order)    unknown_tensor
       then an expected name that is absent                missing_tensor

    A :class:`~tvmsplit.errors.WireError` carries the code in ``.code``; a worker answers a bad
    request with :func:`error_reply` using that code. Workers may use other codes for the failures
    that follow (worker.py lists them in order; e.g. "bad_input": an encoded input, a JPEG, that
    does not decode, sent only by the Python worker since the native one refuses encoded bundles;
    "compute_failed"; "internal_error" for a fault of the worker itself). The
    message of an error is at most ``MAX_ERROR_MESSAGE_CHARS`` (4000) code points (longer ones
    are cut and end in "..."), and an error whose header would pass MAX_HEADER_BYTES with its
    trace is sent with an empty trace, so an error always fits. A receiver checks frame 0's
    length before copying it, and bounds every frame with ``ZMQ_MAXMSGSIZE`` (a worker: the
    largest of MAX_HEADER_BYTES and its inputs' sizes; a client: of its outputs' sizes): a peer
    that sends a larger frame is disconnected before the frame is held in memory.

Python API: :func:`encode` returns the header as bytes and each tensor as a zero-copy memoryview
of the (C-contiguous, little-endian) array; don't mutate arrays until the send is done.
:func:`decode` returns read-only ``np.frombuffer`` views of the received frames (possibly
unaligned; copy if a kernel needs alignment). Frames may be bytes, memoryview or ``zmq.Frame``.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvmsplit.errors import WireError

WIRE_VERSION = 1
KINDS = ("request", "reply", "error")
DTYPES = frozenset({"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
                    "uint8"})
MAX_RANK = 8
MAX_NAME_CHARS = 256
MAX_HEADER_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ERROR_MESSAGE_CHARS = 4000
# The codes a stage worker (Python or native) answers a well-formed request it cannot serve
# with, beyond the wire codes above: its checks in worker.py's order, then compute, then its own
# faults; "too_large": a reply that would not fit; "bad_input": an encoded input that does not
# decode (Python worker only: the native one refuses encoded bundles at start).
WORKER_ERROR_CODES = frozenset({"wrong_stage", "unexpected_kind", "unknown_tensor",
                                "missing_tensor", "shape_mismatch", "compute_failed",
                                "not_deployed", "internal_error", "too_large", "bad_input"})
DEFAULT_MAX_BYTES = 256 << 20
_FIELDS = ("v", "kind", "id", "stage", "tensors", "trace", "error")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def wire_error(code: str, message: str) -> WireError:
    """A :class:`WireError` whose ``.code`` is the machine-readable reason."""
    err = WireError(f"[{code}] {message}")
    err.code = code
    return err


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True, eq=False)
class Message:
    """One decoded or to-be-encoded message. ``tensors`` may be given as a mapping; it is stored
    as a tuple of (name, array) pairs in frame order. ``trace`` is a tuple of dicts."""
    kind: str
    id: int
    stage: int
    tensors: tuple[tuple[str, np.ndarray], ...] = ()
    trace: tuple[dict, ...] = ()
    error: ErrorInfo | None = None

    def __post_init__(self):
        pairs = self.tensors.items() if isinstance(self.tensors, Mapping) else self.tensors
        object.__setattr__(self, "tensors", tuple((n, np.asarray(a)) for n, a in pairs))
        object.__setattr__(self, "trace", tuple(self.trace))

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.tensors)

    @property
    def metas(self) -> tuple[TensorMeta, ...]:
        return tuple(TensorMeta(n, a.dtype.name, tuple(a.shape)) for n, a in self.tensors)


# ---------------------------------------------------------------------------------- encoding
def _wire_array(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.name not in DTYPES or arr.dtype.kind not in "biuf":
        raise wire_error("bad_dtype", f"tensor {name!r} has dtype {arr.dtype}; the wire carries "
                         f"only {', '.join(sorted(DTYPES))}. Cast it first.")
    # No copy when already C-contiguous and little-endian (native on x86/ARM).
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")


def encode(msg: Message) -> list[bytes | memoryview]:
    """Frames of ``msg``: canonical header bytes, then one zero-copy memoryview per tensor."""
    arrays = [(n, _wire_array(n, a)) for n, a in msg.tensors]
    header: dict[str, Any] = {
        "v": WIRE_VERSION, "kind": msg.kind, "id": msg.id, "stage": msg.stage,
        "tensors": [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays],
        "trace": list(msg.trace)}
    if msg.error is not None:
        header["error"] = {"code": msg.error.code, "message": msg.error.message}
    try:
        head = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise wire_error("bad_field", f"header is not JSON-serialisable: {e}") from None
    _parse_header(head, max_bytes=None)  # never send what a receiver would reject
    return [head] + [memoryview(a.reshape(-1).view(np.uint8)) for _, a in arrays]


def request(id: int, stage: int, tensors, trace: Iterable[dict] = ()) -> list[bytes | memoryview]:
    return encode(Message("request", id, stage, tensors, tuple(trace)))


def reply(id: int, stage: int, tensors, trace: Iterable[dict] = ()) -> list[bytes | memoryview]:
    return encode(Message("reply", id, stage, tensors, tuple(trace)))


def error_reply(request_id: int, stage: int, code: str, message: str,
                trace: Iterable[dict] = ()) -> list[bytes]:
    """Frames of an error message (header only) answering request ``request_id``; always fits:
    the message is cut to MAX_ERROR_MESSAGE_CHARS, the trace dropped if the header would be too
    large with it."""
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS - 3] + "..."
    error = ErrorInfo(code, message)
    try:
        frames = encode(Message("error", request_id, stage, (), tuple(trace), error))
    except WireError as exc:
        if exc.code not in ("too_large", "bad_header", "bad_field"):
            raise
        frames = encode(Message("error", request_id, stage, (), (), error))
    return [bytes(f) for f in frames]


def max_frame_bytes(tensors: Iterable[Any]) -> int:
    """``ZMQ_MAXMSGSIZE`` for a socket that receives these tensors (anything with ``.nbytes``,
    one frame each) and headers: the largest of MAX_HEADER_BYTES and the tensors' sizes."""
    return max([MAX_HEADER_BYTES, *(t.nbytes for t in tensors)])


# ---------------------------------------------------------------------------------- decoding
def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x: Any, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x < hi


def _need(cond: bool, code: str, message: str) -> None:
    if not cond:
        raise wire_error(code, message)


def _parse_header(raw: bytes, max_bytes: int | None) -> tuple[dict, tuple[TensorMeta, ...]]:
    """Checks 2-10 of the spec; returns the header object and the tensor metadata."""
    _need(len(raw) <= MAX_HEADER_BYTES, "too_large",
          f"header is {len(raw)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        h = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                       parse_constant=_reject_constant, parse_float=_parse_float)
    except UnicodeDecodeError as e:
        raise wire_error("bad_header", f"header frame is not valid UTF-8: {e}") from None
    except ValueError as e:
        raise wire_error("bad_header", f"header frame is not valid JSON: {e}") from None
    except RecursionError:
        raise wire_error("bad_header", f"header is nested deeper than {MAX_DEPTH}") from None
    _need(_depth(h) <= MAX_DEPTH, "bad_header", f"header is nested deeper than {MAX_DEPTH}")
    _need(isinstance(h, dict), "bad_header",
          f"header must be a JSON object, got {type(h).__name__}")
    _need("v" in h, "missing_field", "header has no 'v' (format version)")
    _need(_is_int(h["v"], WIRE_VERSION, WIRE_VERSION + 1), "bad_version",
          f"received wire format version {h['v']!r}; this build supports version {WIRE_VERSION}")
    unknown = sorted(set(h) - set(_FIELDS))
    _need(not unknown, "unknown_field", f"header has unknown field(s) {unknown}; v1 allows "
          f"{list(_FIELDS)}")
    for key in _FIELDS[1:6]:
        _need(key in h, "missing_field", f"header has no {key!r}")
        if key == "kind":
            _need(h["kind"] in KINDS, "bad_field", f"'kind' must be one of {list(KINDS)}, "
                  f"got {h['kind']!r}")
        elif key in ("id", "stage"):
            hi = 2**63 if key == "id" else 2**31
            _need(_is_int(h[key], 0, hi), "bad_field", f"{key!r} must be an int in [0, {hi}), "
                  f"got {h[key]!r}")
        else:
            _need(isinstance(h[key], list), "bad_field", f"{key!r} must be a list")
    _need(all(isinstance(t, dict) for t in h["trace"]), "bad_field",
          "'trace' entries must be JSON objects")
    is_err = h["kind"] == "error"
    _need(("error" in h) == is_err, "missing_field" if is_err else "bad_field",
          "kind 'error' needs an 'error' field" if is_err else
          f"'error' field is only allowed with kind 'error', not {h['kind']!r}")
    if is_err:
        e = h["error"]
        _need(isinstance(e, dict) and sorted(e) == ["code", "message"]
              and isinstance(e["code"], str) and _ERROR_CODE.fullmatch(e["code"]) is not None
              and isinstance(e["message"], str), "bad_field",
              f"'error' must be {{'code': [a-z][a-z0-9_]{{0,63}}, 'message': str}}, got {e!r}")
        _need(not h["tensors"], "bad_field", "an error message carries no tensors")
    metas, seen, total = [], set(), 0
    for i, t in enumerate(h["tensors"]):
        _need(isinstance(t, dict) and sorted(t) == ["dtype", "name", "shape"], "bad_field",
              f"tensor entry {i} must be an object with exactly 'name', 'dtype', 'shape'")
        name, dtype, shape = t["name"], t["dtype"], t["shape"]
        _need(isinstance(name, str) and 1 <= len(name) <= MAX_NAME_CHARS, "bad_field",
              f"tensor entry {i}: name must be a str of 1..{MAX_NAME_CHARS} chars, got {name!r}")
        _need(isinstance(dtype, str) and dtype in DTYPES, "bad_dtype",
              f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        _need(isinstance(shape, list) and len(shape) <= MAX_RANK
              and all(_is_int(d, 0, 2**63) for d in shape), "bad_shape",
              f"tensor {name!r}: shape must be a list of at most {MAX_RANK} ints in [0, 2**63), "
              f"got {shape!r}")
        _need(math.prod(d for d in shape if d) * np.dtype(dtype).itemsize < 2**63, "bad_shape",
              f"tensor {name!r}: shape {shape} has more elements than any array can hold")
        _need(name not in seen, "duplicate_tensor", f"tensor name {name!r} appears twice")
        seen.add(name)
        metas.append(TensorMeta(name, dtype, tuple(shape)))
        total += metas[-1].nbytes
    if max_bytes is not None:
        _need(total <= max_bytes, "too_large",
              f"tensors total {total} bytes; the receiver's limit is {max_bytes}")
    return h, tuple(metas)


def _depth(obj: Any) -> int:
    """How deeply arrays/objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict)
                                                  else value))
    return deepest


def _buffer(frame: Any) -> memoryview:
    mv = memoryview(getattr(frame, "buffer", frame))  # zmq.Frame has .buffer
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def decode(frames: Sequence[Any], *, max_bytes: int = DEFAULT_MAX_BYTES,
           expected_names: Iterable[str] | None = None) -> Message:
    """Validate ``frames`` against the spec and return a :class:`Message` of zero-copy views."""
    _need(len(frames) >= 1, "missing_frames", "message has no frames (a header is required)")
    bufs = [_buffer(f) for f in frames]
    _need(bufs[0].nbytes <= MAX_HEADER_BYTES, "too_large",  # before copying it
          f"header is {bufs[0].nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    h, metas = _parse_header(bytes(bufs[0]), max_bytes)
    got, want = len(bufs) - 1, len(metas)
    _need(got >= want, "missing_frames", f"header lists {want} tensor(s) but {got} data frame(s) "
          f"arrived")
    _need(got <= want, "extra_frames", f"header lists {want} tensor(s) but {got} data frame(s) "
          f"arrived")
    tensors = []
    for meta, buf in zip(metas, bufs[1:]):
        _need(buf.nbytes == meta.nbytes, "bad_size", f"tensor {meta.name!r} ({meta.dtype}"
              f"{list(meta.shape)}): expected {meta.nbytes} bytes, got {buf.nbytes}")
        arr = np.frombuffer(buf, dtype=np.dtype(meta.dtype).newbyteorder("<")).reshape(meta.shape)
        if meta.dtype == "bool":
            _need(arr.view(np.uint8).max(initial=0) <= 1, "bad_data",
                  f"tensor {meta.name!r}: bool bytes must be 0x00 or 0x01")
        arr.flags.writeable = False
        tensors.append((meta.name, arr))
    if expected_names is not None and h["kind"] != "error":
        expected, names = set(expected_names), [m.name for m in metas]
        extra = [n for n in names if n not in expected]
        _need(not extra, "unknown_tensor", f"unexpected tensor(s) {extra}; stage {h['stage']} "
              f"expects {sorted(expected)}")
        absent = sorted(expected - set(names))
        _need(not absent, "missing_tensor", f"missing tensor(s) {absent}; stage {h['stage']} "
              f"expects {sorted(expected)}")
    err = ErrorInfo(h["error"]["code"], h["error"]["message"]) if "error" in h else None
    return Message(h["kind"], h["id"], h["stage"], tuple(tensors), tuple(h["trace"]), err)
