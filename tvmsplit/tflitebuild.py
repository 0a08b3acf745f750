"""Build small float32 TFLite models in code (tests), with the ``tflite`` package's flatbuffer API.

``TfliteBuilder`` mirrors ``onnxbuild.GraphBuilder``: weights from ``numpy.random.default_rng(seed)``
(He-scaled), every method adds one operator and returns its output tensor's name, which is the
name given (so layer names are predictable). Layout is TFLite's: activations NHWC, CONV_2D
weights ``[O, kh, kw, I]``, DEPTHWISE_CONV_2D ``[1, kh, kw, C]``, FULLY_CONNECTED ``[O, I]``.
``custom`` adds an operator with a custom code (no kernel anywhere: for the unsupported-op
report). ``finish`` returns the flatbuffer bytes with the ``TFL3`` identifier.
"""
from __future__ import annotations

import math

import numpy as np

_ACT = {None: 0, "relu": 1, "relu6": 3}


class TfliteBuilder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.tensors: list[tuple[str, tuple[int, ...], int, bytes | None]] = []  # name, shape, type, data
        self.index: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        self.ops: list[tuple[str, list[int], list[int], tuple | None]] = []  # code, ins, outs, options
        self.inputs: list[int] = []

    # ---- tensors ---------------------------------------------------------------------------
    def _tensor(self, name: str, shape, dtype: int = 0, data: bytes | None = None) -> str:
        if name in self.index:
            raise RuntimeError(f"duplicate tensor name {name!r}")
        self.index[name] = len(self.tensors)
        self.shape[name] = tuple(int(s) for s in shape)
        self.tensors.append((name, self.shape[name], dtype, data))
        return name

    def input(self, name: str, shape) -> str:
        self.inputs.append(len(self.tensors))
        return self._tensor(name, shape)

    def weight(self, name: str, shape, fan_in: int) -> str:
        w = self.rng.uniform(-1, 1, shape) * math.sqrt(6.0 / max(fan_in, 1))
        return self._tensor(name, shape, 0, w.astype(np.float32).tobytes())

    def _op(self, code: str, ins: list[str], out: str, out_shape, options=None) -> str:
        self._tensor(out, out_shape)
        self.ops.append((code, [self.index[i] for i in ins], [self.index[out]], options))
        return out

    # ---- operators -------------------------------------------------------------------------
    def conv(self, name: str, x: str, cout: int, k: int = 3, stride: int = 1,
             act: str | None = "relu") -> str:
        n, h, w, c = self.shape[x]
        wt = self.weight(f"{name}/weights", (cout, k, k, c), k * k * c)
        b = self.weight(f"{name}/bias", (cout,), 100 * k * k * c)
        oh, ow = -(-h // stride), -(-w // stride)  # SAME padding
        return self._op("CONV_2D", [x, wt, b], name, (n, oh, ow, cout), ("conv", stride, act))

    def depthwise(self, name: str, x: str, k: int = 3, stride: int = 1,
                  act: str | None = "relu6") -> str:
        n, h, w, c = self.shape[x]
        wt = self.weight(f"{name}/weights", (1, k, k, c), k * k)
        b = self.weight(f"{name}/bias", (c,), 100 * k * k)
        oh, ow = -(-h // stride), -(-w // stride)
        return self._op("DEPTHWISE_CONV_2D", [x, wt, b], name, (n, oh, ow, c),
                        ("depthwise", stride, act))

    def add(self, name: str, a: str, b: str, act: str | None = None) -> str:
        return self._op("ADD", [a, b], name, self.shape[a], ("add", act))

    def max_pool(self, name: str, x: str, k: int = 2) -> str:
        n, h, w, c = self.shape[x]
        return self._op("MAX_POOL_2D", [x], name, (n, h // k, w // k, c), ("pool", k))

    def reshape(self, name: str, x: str, shape) -> str:
        s = self._tensor(f"{name}/shape", (len(shape),), 2,
                         np.asarray(shape, np.int32).tobytes())
        return self._op("RESHAPE", [x, s], name, tuple(shape), ("reshape", tuple(shape)))

    def fully_connected(self, name: str, x: str, fout: int, act: str | None = None) -> str:
        n, fin = self.shape[x]
        wt = self.weight(f"{name}/weights", (fout, fin), fin)
        b = self.weight(f"{name}/bias", (fout,), 100 * fin)
        return self._op("FULLY_CONNECTED", [x, wt, b], name, (n, fout), ("fc", act))

    def softmax(self, name: str, x: str) -> str:
        return self._op("SOFTMAX", [x], name, self.shape[x], ("softmax",))

    def custom(self, name: str, x: str, code: str) -> str:
        return self._op(f"custom:{code}", [x], name, self.shape[x])

    # ---- the flatbuffer --------------------------------------------------------------------
    def finish(self, outputs: list[str], description: str = "tvmsplit.tflitebuild") -> bytes:
        import flatbuffers
        import tflite as t

        b = flatbuffers.Builder(1024)

        def vector(start, items, prepend):
            start(b, len(items))
            for item in reversed(items):
                prepend(item)
            return b.EndVector()

        def offsets(start, items):
            return vector(start, items, b.PrependUOffsetTRelative)

        buffers = [self._buffer(b, None)] + [self._buffer(b, d) for *_, d in self.tensors if d]
        tensors, k = [], 1
        for name, shape, dtype, data in self.tensors:
            s = b.CreateNumpyVector(np.asarray(shape, np.int32))
            nm = b.CreateString(name)
            t.TensorStart(b)
            t.TensorAddShape(b, s)
            t.TensorAddType(b, dtype)
            t.TensorAddBuffer(b, k if data else 0)
            t.TensorAddName(b, nm)
            tensors.append(t.TensorEnd(b))
            k += 1 if data else 0
        codes: list[str] = list(dict.fromkeys(code for code, *_ in self.ops))
        code_offsets = []
        for code in codes:
            custom = b.CreateString(code[7:]) if code.startswith("custom:") else None
            builtin = t.BuiltinOperator.CUSTOM if custom else getattr(t.BuiltinOperator, code)
            t.OperatorCodeStart(b)
            t.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
            t.OperatorCodeAddBuiltinCode(b, builtin)
            t.OperatorCodeAddVersion(b, 1)
            if custom:
                t.OperatorCodeAddCustomCode(b, custom)
            code_offsets.append(t.OperatorCodeEnd(b))
        ops = []
        for code, ins, outs, opts in self.ops:
            kind, table = self._options(b, opts)
            iv = b.CreateNumpyVector(np.asarray(ins, np.int32))
            ov = b.CreateNumpyVector(np.asarray(outs, np.int32))
            t.OperatorStart(b)
            t.OperatorAddOpcodeIndex(b, codes.index(code))
            t.OperatorAddInputs(b, iv)
            t.OperatorAddOutputs(b, ov)
            if table is not None:
                t.OperatorAddBuiltinOptionsType(b, kind)
                t.OperatorAddBuiltinOptions(b, table)
            ops.append(t.OperatorEnd(b))
        tv = offsets(t.SubGraphStartTensorsVector, tensors)
        opv = offsets(t.SubGraphStartOperatorsVector, ops)
        inv = b.CreateNumpyVector(np.asarray(self.inputs, np.int32))
        outv = b.CreateNumpyVector(np.asarray([self.index[o] for o in outputs], np.int32))
        sg_name = b.CreateString("main")
        t.SubGraphStart(b)
        t.SubGraphAddTensors(b, tv)
        t.SubGraphAddOperators(b, opv)
        t.SubGraphAddInputs(b, inv)
        t.SubGraphAddOutputs(b, outv)
        t.SubGraphAddName(b, sg_name)
        subgraph = t.SubGraphEnd(b)
        subgraphs = offsets(t.ModelStartSubgraphsVector, [subgraph])
        code_vec = offsets(t.ModelStartOperatorCodesVector, code_offsets)
        buffer_vec = offsets(t.ModelStartBuffersVector, buffers)
        desc = b.CreateString(description)
        t.ModelStart(b)
        t.ModelAddVersion(b, 3)
        t.ModelAddOperatorCodes(b, code_vec)
        t.ModelAddSubgraphs(b, subgraphs)
        t.ModelAddDescription(b, desc)
        t.ModelAddBuffers(b, buffer_vec)
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _buffer(b, data: bytes | None):
        import tflite as t

        vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        t.BufferStart(b)
        if vec is not None:
            t.BufferAddData(b, vec)
        return t.BufferEnd(b)

    @staticmethod
    def _options(b, opts):
        import tflite as t

        if opts is None:
            return 0, None
        kind = opts[0]
        if kind in ("conv", "depthwise"):
            _, stride, act = opts
            pre = "Conv2DOptions" if kind == "conv" else "DepthwiseConv2DOptions"
            getattr(t, f"{pre}Start")(b)
            getattr(t, f"{pre}AddPadding")(b, t.Padding.SAME)
            getattr(t, f"{pre}AddStrideW")(b, stride)
            getattr(t, f"{pre}AddStrideH")(b, stride)
            getattr(t, f"{pre}AddDilationWFactor")(b, 1)
            getattr(t, f"{pre}AddDilationHFactor")(b, 1)
            getattr(t, f"{pre}AddFusedActivationFunction")(b, _ACT[act])
            if kind == "depthwise":
                t.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
            return getattr(t.BuiltinOptions, pre), getattr(t, f"{pre}End")(b)
        if kind == "add":
            t.AddOptionsStart(b)
            t.AddOptionsAddFusedActivationFunction(b, _ACT[opts[1]])
            return t.BuiltinOptions.AddOptions, t.AddOptionsEnd(b)
        if kind == "pool":
            k = opts[1]
            t.Pool2DOptionsStart(b)
            t.Pool2DOptionsAddPadding(b, t.Padding.VALID)
            for f in (t.Pool2DOptionsAddStrideW, t.Pool2DOptionsAddStrideH,
                      t.Pool2DOptionsAddFilterWidth, t.Pool2DOptionsAddFilterHeight):
                f(b, k)
            return t.BuiltinOptions.Pool2DOptions, t.Pool2DOptionsEnd(b)
        if kind == "reshape":
            shape = b.CreateNumpyVector(np.asarray(opts[1], np.int32))
            t.ReshapeOptionsStart(b)
            t.ReshapeOptionsAddNewShape(b, shape)
            return t.BuiltinOptions.ReshapeOptions, t.ReshapeOptionsEnd(b)
        if kind == "fc":
            t.FullyConnectedOptionsStart(b)
            t.FullyConnectedOptionsAddFusedActivationFunction(b, _ACT[opts[1]])
            return t.BuiltinOptions.FullyConnectedOptions, t.FullyConnectedOptionsEnd(b)
        if kind == "softmax":
            t.SoftmaxOptionsStart(b)
            t.SoftmaxOptionsAddBeta(b, 1.0)
            return t.BuiltinOptions.SoftmaxOptions, t.SoftmaxOptionsEnd(b)
        raise ValueError(f"unknown options {kind!r}")


def small_cnn(seed: int = 0, size: int = 16, custom_op: str | None = None) -> bytes:
    """input [1, S, S, 3] -> conv1 -> dw1 -> conv2 (+ skip: add1) -> pool1 -> flatten -> fc1 (relu)
    -> fc2 -> softmax; with ``custom_op``, a custom operator of that code after pool1."""
    g = TfliteBuilder(seed)
    x = g.input("image", (1, size, size, 3))
    x = g.conv("conv1", x, 8, stride=2)
    y = g.depthwise("dw1", x)
    y = g.conv("conv2", y, 8, k=1, act=None)
    x = g.add("add1", x, y, act="relu")
    x = g.max_pool("pool1", x)
    if custom_op:
        x = g.custom("mystery", x, custom_op)
    s = size // 4
    x = g.reshape("flatten", x, (1, s * s * 8))
    x = g.fully_connected("fc1", x, 16, act="relu")
    x = g.fully_connected("fc2", x, 5)
    g.softmax("probs", x)
    return g.finish(["probs"])
