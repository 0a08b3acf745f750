"""The one ONNX graph builder behind every model tvmsplit makes in code.

``zoo`` (test and benchmark CNNs), ``layergen`` (single-layer models for profiling) and :func:`mlp`
(the HyPS tests' and benchmarks' perceptrons) build
their graphs with a ``GraphBuilder``: it collects nodes and float32 initializers, draws weights from
``numpy.random.default_rng(seed)`` (so the same calls always give byte-identical models) and turns
them into a ``ModelProto`` (opset ``OPSET``, IR version ``IR_VERSION``).

Conventions: every method that adds a node returns the node's output tensor, which carries the
node's name; node names must be unique. Initializers are ``<node>.<what>`` (``conv1.weight``,
``bn1.scale``, ...). To add a layer shape that both users need, add a method here; layer shapes
only one of them builds stay in that module (a subclass or a helper there).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8


class GraphBuilder:
    """Nodes and float32 initializers of one graph; weights drawn from a seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[tuple[str, np.ndarray]] = []
        self._names: set[str] = set()
        self._bounds: set[str] = set()

    # ---- initializers ------------------------------------------------------------------------
    def const(self, name: str, value: np.ndarray) -> str:
        """A float32 initializer ``name`` holding ``value``; returns ``name``."""
        self.inits.append((name, np.asarray(value, dtype=np.float32)))
        return name

    def uniform(self, name: str, shape: tuple[int, ...], std: float) -> str:
        """A zero-mean uniform float32 initializer with standard deviation ``std``.

        Uniform in [-a, a] with a = std * sqrt(3); drawing uniform float32 in place is ~4x faster
        than a normal draw, which matters for VGG16's ~550 MB of weights. The values are drawn
        straight into the serialised TensorProto that ``finish`` parses (``_WireTensor``), so
        they are never copied into a ``bytes`` object first.
        """
        wire = _WireTensor.float32(name, shape)
        self.rng.random(out=wire.values, dtype=np.float32)
        wire.values -= np.float32(0.5)
        wire.values *= np.float32(2.0 * math.sqrt(3.0) * std)
        self.inits.append((name, wire))
        return name

    def he_weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        """He-uniform weights (std = sqrt(2 / fan_in)): activations stay O(1) in deep nets."""
        return self.uniform(name, shape, math.sqrt(2.0 / max(fan_in, 1)))

    # ---- nodes -------------------------------------------------------------------------------
    def node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        """Add node ``op`` called ``name`` whose one output tensor is also ``name``."""
        if name in self._names:  # a bug in the caller's builder code, not user input
            raise RuntimeError(f"duplicate node name {name!r}")
        self._names.add(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def bn(self, name: str, x: str, c: int) -> str:
        """BatchNormalization over ``c`` channels, close to identity (``<name>.scale/bias/mean/var``)."""
        r = self.rng
        scale = 1.0 + 0.1 * r.standard_normal(c)
        bias = 0.05 * r.standard_normal(c)
        mean = 0.05 * r.standard_normal(c)
        var = r.uniform(0.8, 1.2, c)
        inputs = [x] + [self.const(f"{name}.{k}", v) for k, v in
                        (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", name, inputs, epsilon=1e-5)

    def clip(self, name: str, x: str, bounds: str, lo: float = 0.0, hi: float = 6.0) -> str:
        """Clip(x, lo, hi) (ReLU6 by default); the scalar bounds ``<bounds>.min/.max`` are created
        on first use and shared by every later Clip naming the same ``bounds``."""
        if bounds not in self._bounds:
            self._bounds.add(bounds)
            self.const(f"{bounds}.min", np.array(lo))
            self.const(f"{bounds}.max", np.array(hi))
        return self.node("Clip", name, [x, f"{bounds}.min", f"{bounds}.max"])

    def relu(self, name: str, x: str) -> str:
        return self.node("Relu", name, [x])

    def gemm(self, name: str, x: str, fin: int, fout: int) -> str:
        """A fully connected layer ``fin -> fout`` (Gemm, ``<name>.weight`` [fout, fin], He)."""
        w = self.he_weight(f"{name}.weight", (fout, fin), fin)
        b = self.uniform(f"{name}.bias", (fout,), 0.01)
        return self.node("Gemm", name, [x, w, b], transB=1)

    def recurrent(self, op: str, name: str, x: str, fin: int, hidden: int,
                  direction: str = "forward", **attrs) -> str:
        """An ONNX ``LSTM``/``GRU``/``RNN`` over ``x`` [T, B, fin]; returns its ``Y`` output
        [T, directions, B, hidden]. Weights ``<name>.W``/``.R``/``.B`` are uniform in
        [-1/sqrt(hidden), 1/sqrt(hidden)], PyTorch's initialisation."""
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        dirs = 2 if direction == "bidirectional" else 1
        std = 1.0 / math.sqrt(3.0 * hidden)
        w = self.uniform(f"{name}.W", (dirs, gates * hidden, fin), std)
        r = self.uniform(f"{name}.R", (dirs, gates * hidden, hidden), std)
        b = self.uniform(f"{name}.B", (dirs, 2 * gates * hidden), std)
        return self.node(op, name, [x, w, r, b], hidden_size=hidden, direction=direction, **attrs)

    # ---- the model ---------------------------------------------------------------------------
    def finish(self, graph_name: str, inputs: Sequence[tuple[str, Sequence[int]]],
               output: tuple[str, Sequence[int] | None], producer: str) -> onnx.ModelProto:
        """The model: float32 ``inputs`` (name, shape); the last node's output is renamed to the
        one graph output ``output`` (name, shape or None when shape inference fills it in)."""
        out_name, out_shape = output
        self.nodes[-1].output[0] = out_name
        f32 = TensorProto.FLOAT
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info(n, f32, list(s)) for n, s in inputs],
            [helper.make_tensor_value_info(out_name, f32,
                                           None if out_shape is None else list(out_shape))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name=producer, ir_version=IR_VERSION)
        # Initializers go straight into the final proto: building TensorProtos first and then
        # extending/copying them would copy VGG16's ~550 MB of weights twice more.
        for name, value in self.inits:
            t = model.graph.initializer.add()
            if isinstance(value, _WireTensor):
                t.ParseFromString(value.message)
                continue
            t.name, t.data_type = name, f32
            t.dims.extend(value.shape)
            t.raw_data = value.tobytes()
        self.inits.clear()
        return model


class _WireTensor:
    """A float32 TensorProto as its wire bytes (name, dims, data_type, then raw_data), with
    ``values``, a writable array over the raw data: weights written there are parsed into the
    model with one copy (``tobytes`` and the ``raw_data`` setter would make two). The serialised
    model is byte-identical either way (protobuf writes fields in field-number order)."""

    def __init__(self, buffer: bytearray, start: int, values: np.ndarray):
        self.buffer, self.start, self.values = buffer, start, values

    @property
    def message(self) -> memoryview:
        return memoryview(self.buffer)[self.start:]

    @classmethod
    def float32(cls, name: str, shape: tuple[int, ...]) -> "_WireTensor":
        count = int(np.prod(shape, dtype=np.int64))
        meta = TensorProto(name=name, dims=list(shape), data_type=TensorProto.FLOAT)
        header = meta.SerializeToString() + b"\x4a" + _varint(4 * count)  # field 9, bytes
        start = -len(header) % 4  # leading slack so the float32 data is 4-byte aligned
        buffer = bytearray(start + len(header) + 4 * count)
        buffer[start:start + len(header)] = header
        values = np.frombuffer(buffer, np.float32, count, start + len(header)).reshape(shape)
        return cls(buffer, start, values)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def mlp(name: str, sizes: Sequence[int], seed: int = 0) -> onnx.ModelProto:
    """``input [1, sizes[0]]`` -> fc1 -> relu1 -> fc2 -> ... -> ``output [1, sizes[-1]]``: a plain
    multi-layer perceptron (HyPS tests and benchmarks split its big Gemms horizontally)."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
    g = GraphBuilder(seed)
    x = "input"
    for i, (fin, fout) in enumerate(zip(sizes, sizes[1:]), start=1):
        x = g.gemm(f"fc{i}", x, fin, fout)
        if i < len(sizes) - 1:
            x = g.relu(f"relu{i}", x)
    return g.finish(name, [("input", (1, sizes[0]))], ("output", (1, sizes[-1])), "tvmsplit")
