"""Weights kept outside a stage's library, so a worker can load them only while the stage runs.

A normal stage library holds its weights inside the ``.so`` (``from_onnx`` inlines them as
constants). Loading it maps the file and then copies every constant out of it: measured on the
VGG16 zoo model's fc1 stage (411 MB of weights), RSS grows by 823 MB on load and does not shrink
when the module is dropped. A *segment* of a sequential stage (HyPS, ``plan.StagePlan.segments``)
is built instead with its weights lifted out of the module into function parameters
(``lift_weights``, after the graph-level passes, so folded BatchNorms stay folded) and written
beside the library as a weights file. The worker reads that file into one buffer (one copy in
memory), hands TVM zero-copy views of it, and frees it when the segment is done.

The weights file (``.weights``), little-endian::

    b"TSWEIGHT"  8 bytes magic
    u64          header length H
    H bytes      JSON: {"version": 1, "tensors": [{"dtype", "shape", "offset", "nbytes"}, ...]}
    ...          each tensor's raw bytes at its ``offset`` from the start of the file, 64-byte
                 aligned (TVM requires 64-byte aligned data for zero-copy tensors)

The tensors are the library's ``main`` parameters after its inputs, in order.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import TvmsplitError

MAGIC = b"TSWEIGHT"
VERSION = 1
ALIGN = 64
# Constants smaller than this stay inside the library (scalars, shapes, small biases).
MIN_LIFTED_BYTES = 4096
# read_weights reads this much at a time and drops it from the page cache before the next: a
# worker under a memory limit is charged for the weights once (its buffer), not twice (buffer +
# page cache; measured: a cgroup's peak reached its 1 GiB limit reading VGG16's fc1 in one go).
READ_CHUNK_BYTES = 32 << 20


class WeightsError(TvmsplitError):
    """A weights file that cannot be read (truncated, corrupt, other version)."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_weights(path: str | os.PathLike, arrays: Sequence[np.ndarray]) -> Path:
    """Write ``arrays`` in the format above, atomically (a temporary file renamed into place)."""
    path = Path(path)
    entries, offset = [], 0
    arrays = [np.ascontiguousarray(a) for a in arrays]
    for a in arrays:
        entries.append({"dtype": a.dtype.name, "shape": list(a.shape), "offset": 0,
                        "nbytes": int(a.nbytes)})
    header = json.dumps({"version": VERSION, "tensors": entries}).encode()
    # offsets depend on the header's length, which depends on the offsets' digits: fix the data
    # start generously first, then fill the offsets in
    start = _aligned(16 + len(header) + 32 * len(entries) + 64)
    offset = start
    for e in entries:
        e["offset"] = offset
        offset = _aligned(offset + e["nbytes"])
    header = json.dumps({"version": VERSION, "tensors": entries}).encode()
    assert 16 + len(header) <= start
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for e, a in zip(entries, arrays):
                f.seek(e["offset"])
                f.write(a.tobytes() if a.ndim == 0 else memoryview(a).cast("B"))
            f.truncate(max(offset, start))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_header(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The tensor entries and the file size; WeightsError when the file is not one we wrote."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise WeightsError(f"{str(path)!r} is not a tvmsplit weights file (bad magic)")
            (n,) = struct.unpack("<Q", head[8:])
            if 16 + n > size or n > 1 << 24:
                raise WeightsError(f"{str(path)!r} is truncated or corrupt (header of {n} bytes, "
                                   f"file of {size}); build the bundle again")
            meta = json.loads(f.read(n))
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from None
    except ValueError as exc:
        raise WeightsError(f"{str(path)!r}: corrupt header ({exc})") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise WeightsError(f"{str(path)!r} is weights format version {meta.get('version')!r}, "
                           f"this tvmsplit reads {VERSION}; build the bundle again")
    try:
        entries = list(meta["tensors"])
        for e in entries:
            np.dtype(e["dtype"]), [int(d) for d in e["shape"]]
            if e["offset"] % ALIGN or e["offset"] + e["nbytes"] > size:
                raise WeightsError(f"{str(path)!r} is truncated or corrupt (a tensor at "
                                   f"{e['offset']} + {e['nbytes']} bytes, file {size} bytes); "
                                   "build the bundle again")
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{str(path)!r}: corrupt header (bad or missing {exc}); build the "
                           "bundle again") from None
    return entries, size


def read_weights(path: str | os.PathLike) -> list[np.ndarray]:
    """The arrays, as 64-byte aligned views of ONE buffer read from the file (freed when the last
    view goes). The file is read in ``READ_CHUNK_BYTES`` chunks, each dropped from the page cache
    once read, so a worker under a memory limit is not charged for the weights twice."""
    entries, size = read_header(path)
    raw = np.empty(size + ALIGN, dtype=np.uint8)
    shift = (-raw.ctypes.data) % ALIGN
    buf = raw[shift:shift + size]
    got, view = 0, memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while got < size:  # in chunks, each dropped from the page cache once read
            n = f.readinto(view[got:got + READ_CHUNK_BYTES])
            if not n:
                break
            _drop_cached(f.fileno(), got, n)
            got += n
    if got != size:
        raise WeightsError(f"{str(path)!r}: read {got} of {size} bytes")
    out = []
    for e in entries:
        dtype = np.dtype(e["dtype"])
        a = buf[e["offset"]:e["offset"] + e["nbytes"]].view(dtype).reshape(e["shape"])
        out.append(a)
    return out


def _drop_cached(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def weights_bytes(path: str | os.PathLike) -> int:
    """The bytes of tensor data in the file (what the worker holds while the segment runs)."""
    return sum(e["nbytes"] for e in read_header(path)[0])


def lift_weights(mod, min_bytes: int = MIN_LIFTED_BYTES):
    """``(mod, arrays)``: ``mod`` with every constant of ``main`` of at least ``min_bytes`` made a
    parameter after the inputs (``num_input`` stays the input count), and the constants' values
    as numpy arrays in parameter order. Run after the graph-level passes, before lowering."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Lift(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.params, self.values, self.seen = [], [], {}

        def visit_generic_const_(self, op):  # relax constants are ir.GenericConst in TVM 0.27
            value = op.value
            nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
            if nbytes < min_bytes:
                return op
            key = op  # TVM objects hash and compare by identity
            if key not in self.seen:  # one parameter per constant, however often it is used
                self.seen[key] = relax.Var(f"weight{len(self.params)}", op.ty)
                self.params.append(self.seen[key])
                self.values.append(value.numpy())
            return self.seen[key]

    main = mod["main"]
    lifter = _Lift(mod)
    body = lifter.visit_expr(main.body)
    n_inputs = len(main.params)
    func = relax.Function(list(main.params) + lifter.params, body, main.ret_ty, main.is_pure,
                          main.attrs).with_attr("num_input", n_inputs)
    mod["main"] = func
    return mod, lifter.values
