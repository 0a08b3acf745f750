"""A seeded corpus of malformed (and a few valid) messages for the wire and control protocols
(tests' helper). ``wire_corpus(seed, n, inputs, stage)`` mutates valid requests for a stage
with ``inputs`` (TensorSpec-like: name, dtype, shape) in the ways a network peer can: random
bytes, truncated or deeply nested JSON, wrong types and ranges, unknown and duplicate fields,
shapes whose element count overflows, wrong frame counts and sizes, headers a few bytes under
the 1 MiB limit (so that a reply with one more trace entry would not fit), bad UTF-8, bad bools.
Every frame stays under the receiver's ``ZMQ_MAXMSGSIZE`` so that each message is answered."""
from __future__ import annotations

import json
import random

import numpy as np

from tvmsplit.runtime import control, wire


def _valid(inputs, stage: int, rid: int) -> list[bytes]:
    tensors = [(t.name, np.zeros(t.shape, dtype=t.dtype)) for t in inputs]
    return [bytes(f) for f in wire.request(rid, stage, tensors)]


def _random_json(rng: random.Random):
    return rng.choice([None, True, False, -1, 2**63, 2**64, 1.5, -0.0, "", "x" * 300, [], {},
                       [1, 2], {"a": 1}, 2**31, -2**63, "é\u0000"])


def _nested(rng: random.Random) -> str:
    depth = rng.choice([wire.MAX_DEPTH, wire.MAX_DEPTH + 1, 100, 999, 1000, 1001, 5000, 50000])
    return "[" * depth + "]" * depth if rng.random() < 0.5 else "[" * depth


def wire_corpus(seed: int, n: int, inputs, stage: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rid = rng.randrange(1, 2**63)
        frames = _valid(inputs, stage, rid)
        header = json.loads(frames[0])
        kind = rng.randrange(16)
        if kind == 0:  # random bytes
            frames[0] = rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:  # truncated JSON
            frames[0] = frames[0][:rng.randrange(0, len(frames[0]))]
        elif kind == 2:  # deep nesting, whole header or inside the trace
            text = _nested(rng)
            frames[0] = text.encode() if rng.random() < 0.3 else (
                frames[0][:-1] + b',"trace":[{"x":' + text.encode() + b"}]}")
        elif kind == 3:  # a field with a wrong value
            header[rng.choice(["v", "kind", "id", "stage", "tensors", "trace"])] = _random_json(rng)
            frames[0] = json.dumps(header).encode()
        elif kind == 4:  # a missing or an unknown field
            if rng.random() < 0.5:
                header.pop(rng.choice(list(header)))
            else:
                header[rng.choice(["x", "error", "V", ""])] = _random_json(rng)
            frames[0] = json.dumps(header).encode()
        elif kind == 5:  # a duplicate key, NaN, Infinity, an overflowing number
            frames[0] = frames[0][:-1] + rng.choice(
                [b',"id":1}', b',"x":NaN}', b',"x":Infinity}', b',"x":1e999}', b',"x":-1e400}'])
        elif kind == 6 and header["tensors"]:  # shapes no array can have, or wrong ones
            t = rng.choice(header["tensors"])
            t["shape"] = rng.choice([[0, 2**62, 2**62], [2**62, 4], [-1], [1.5], [True],
                                     [1] * 9, "3", [2**63], [0] * 8, [], [7, 0, 2**61],
                                     [2**40], [2**28, 2]])
            frames[0] = json.dumps(header).encode()
        elif kind == 7 and header["tensors"]:  # a dtype or name that is not allowed
            t = rng.choice(header["tensors"])
            t[rng.choice(["dtype", "name"])] = rng.choice(
                ["complex64", "object", "", "x" * 257, 3, None, "float32", "bool", "int64"])
            frames[0] = json.dumps(header).encode()
        elif kind == 8:  # frames missing or extra
            frames = frames[:rng.randrange(1, len(frames))] if len(frames) > 1 and \
                rng.random() < 0.5 else frames + [rng.randbytes(rng.randrange(0, 64))]
        elif kind == 9 and len(frames) > 1:  # a data frame of the wrong size
            j = rng.randrange(1, len(frames))
            if header["tensors"][j - 1]["dtype"] == "bool" and frames[j]:
                frames[j] = b"\x02" + frames[j][1:]  # a bool that is neither 0 nor 1
            else:
                frames[j] = frames[j][:-1] if frames[j] and rng.random() < 0.5 else \
                    frames[j] + b"\0"
        elif kind == 10 and rng.random() < 0.2:  # just under the header limit
            pad = wire.MAX_HEADER_BYTES - len(frames[0]) - rng.randrange(0, 400) - 20
            header["trace"] = [{"pad": "p" * pad}]
            frames[0] = json.dumps(header, separators=(",", ":")).encode()
        elif kind == 11:  # bad UTF-8 inside a string
            frames[0] = frames[0].replace(b'"request"', b'"req\xff\xfeuest"')
        elif kind == 12:  # another stage, another kind
            header["stage"] = rng.choice([stage + 1, 0, 2**31 - 1])
            header["kind"] = rng.choice(["request", "reply", "error"])
            if header["kind"] == "error":
                header["error"] = {"code": rng.choice(["x", "Bad", "compute_failed"]),
                                   "message": "m"}
                header["tensors"] = []
                frames = frames[:1]
            frames[0] = json.dumps(header).encode()
        elif kind == 13 and header["tensors"]:  # a duplicate tensor or a renamed one
            header["tensors"].append(dict(header["tensors"][0]))
            frames.append(frames[1])
            frames[0] = json.dumps(header).encode()
        elif kind == 14:  # a top level that is not an object
            frames[0] = rng.choice([b"[]", b"1", b'"s"', b"null", b"", b" ", b"{"])
        # kind 15 (and the skipped branches): the valid message, which must still be served
        out.append(frames)
    return out


def control_corpus(seed: int, n: int) -> list[list[bytes]]:
    """Malformed control requests (never a valid shutdown or deploy)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.randrange(8)
        if kind == 0:
            frames = [rng.randbytes(rng.randrange(0, 100))]
        elif kind == 1:
            frames = [_nested(rng).encode()]
        elif kind == 2:
            frames = [json.dumps({"cmd": _random_json(rng), "v": _random_json(rng)}).encode()]
        elif kind == 3:
            frames = [b'{"cmd":"health","cmd":"deploy"}']
        elif kind == 4:
            frames = [b'{"cmd":"deploy"}'] + [rng.randbytes(8)] * rng.choice([0, 2, 3])
        elif kind == 5:
            frames = [b'{"cmd":"health"}', rng.randbytes(4)]
        elif kind == 6:
            frames = [b'{"cmd":"' + rng.randbytes(6) + b'"}']
        else:
            frames = [b'{"cmd":"health","v":' + rng.choice([b"2", b"0", b"true", b'"1"']) + b"}"]
        try:
            req = control.parse_request(frames)
        except control.ControlError:
            out.append(frames)
            continue
        if req.cmd == control.HEALTH:  # a valid health request: fine to include
            out.append(frames)
    return out
