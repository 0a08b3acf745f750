"""Quantized ONNX for TVM 0.27's Relax importer: rewrite the quantized operators it lacks.

``rewrite(model)`` (called by ``frontend.load`` before the supported-operator check) replaces

- ``QLinearConv``, ``QLinearMatMul`` and ``ConvInteger`` (ai.onnx), and ``com.microsoft``
  ``QGemm``, by their integer accumulator computed in float32 followed by the requantization
  onnxruntime does: ``DequantizeLinear(x, 1, x_zp)`` gives ``x - x_zp`` exactly; constant
  weights become float32 ``w - w_zp``; Conv / MatMul / Gemm on those is the int32 accumulator,
  exact while every partial sum stays below 2**24 (``accumulator_bound`` gives the bound for
  constant weights; larger sums round, they are not refused); the int32 bias is added; then
  ``QuantizeLinear(DequantizeLinear(int32(acc), M), 1, y_zp)``, i.e. ``acc * M`` rounded half to
  even, with ``M = x_scale * w_scale / y_scale`` in float32 (per output channel where
  ``w_scale`` is), which is what onnxruntime's kernels compute (``ConvInteger``: a Cast to int32
  instead). Not a ``Mul`` by ``M``: onnxruntime's ConvMulFusion would fold it into the weights
  and its reference would be off by one step in places.
- ``com.microsoft`` ``DynamicQuantizeLSTM`` by an ``LSTM`` with the dequantized weights (then
  ``recurrent`` expands it like any LSTM); approximate: see ``_dynamic_quantize_lstm``.
- ``com.microsoft`` ``QLinearAdd``, ``QLinearMul``, ``QLinearSigmoid``, ``QLinearLeakyRelu``,
  ``QLinearSoftmax``, ``QLinearConcat``, ``QLinearGlobalAveragePool`` and ``QLinearAveragePool``
  (what ``onnxruntime.quantization`` writes in QOperator format) by ``DequantizeLinear`` -> the
  float operator -> ``QuantizeLinear``. onnxruntime computes these with its own fixed-point or
  lookup-table kernels, so a few outputs may differ by one quantization step.

``QuantizeLinear``, ``DequantizeLinear`` (QDQ models), ``MatMulInteger`` and
``DynamicQuantizeLinear`` are imported by TVM as they are. A ``DequantizeLinear`` of constants
(a QDQ model's weights) is moved to just before its first consumer: it is a layer of its own
(only constant inputs), and where the quantizer put it (at the top of the graph) its output, the
float weights, crossed every cut between it and its consumer. It is not folded into a float
constant: onnxruntime would then run the float kernel instead of its integer QDQ one, and its
reference would no longer be the model's. What is left (``QAttention`` and the other
com.microsoft transformer operators, ``QLinear*`` with computed scales, a
``DynamicQuantizeLSTM`` with computed weights, channels-last pools) stays in the graph and is
listed by ``frontend.check_supported``.

The rewritten nodes keep the original node's name on the main float operator (the Conv of a
QLinearConv), the others are ``<node>/<what>``; tensors are ``<node>/<what>`` too. To support
another operator: add a function ``(node, consts, emit) -> bool`` to ``_REWRITES`` under its
``(domain, op_type)``; it returns False to leave the node as it is.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXACT_LIMIT = 2 ** 24  # float32 holds every integer up to here exactly
_MS = "com.microsoft"


class _Emit:
    """New nodes and initializers for one rewritten node; names start with ``<node>/``."""

    def __init__(self, node: onnx.NodeProto):
        self.name = node.name or node.output[0]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, what: str, value, dtype=np.float32) -> str:
        name = f"{self.name}/{what}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], what: str, out: str | None = None,
           name: str | None = None, **attrs) -> str:
        out = out or f"{self.name}/{what}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name or f"{self.name}/{what}",
                                           **attrs))
        return out


def _arr(consts: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(consts[name]) if name in consts else None


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _centered(e: _Emit, consts, x: str, zp: str, what: str, axis: int = 0) -> str:
    """``x - zp`` as float32: a float32 constant when ``x`` is one (weights, bias), else
    ``DequantizeLinear(x, 1, zp)`` (per channel along ``axis`` when ``zp`` is a vector)."""
    xv, zv = _arr(consts, x), (_arr(consts, zp) if zp else None)
    if xv is not None and (not zp or zv is not None):
        z = np.zeros(1) if zv is None else zv.astype(np.float64)
        if z.size > 1:
            z = z.reshape([-1 if k == axis else 1 for k in range(xv.ndim)])
        return e.const(what, xv.astype(np.float64) - z)
    if zv is not None and zv.size > 1:
        ones = np.ones(zv.shape, np.float32)
        return e.op("DequantizeLinear", [x, e.const(f"{what}_one", ones), zp], what, axis=axis)
    inputs = [x, e.const(f"{what}_one", np.float32(1))] + ([zp] if zp else [])
    return e.op("DequantizeLinear", inputs, what)


def accumulator_bound(w: np.ndarray, w_zp, x_dtype: np.dtype, x_zp, bias=None) -> int:
    """The largest |partial sum| an integer Conv/MatMul/Gemm with constant weights ``w`` [out,
    ...] can reach: sum over the reduction of |w - w_zp| times the largest |x - x_zp|."""
    info = np.iinfo(x_dtype)
    z = int(np.asarray(x_zp).reshape(-1)[0]) if x_zp is not None else 0
    xmax = max(abs(info.min - z), abs(info.max - z))
    wz = np.asarray(0 if w_zp is None else w_zp, np.int64)
    if wz.ndim == 1 and wz.size > 1:
        wz = wz.reshape([-1] + [1] * (w.ndim - 1))
    per_out = np.abs(w.astype(np.int64) - wz).reshape(w.shape[0], -1).sum(axis=1) * xmax
    if bias is not None:
        per_out = per_out + np.abs(np.asarray(bias, np.int64)).reshape(-1)
    return int(per_out.max()) if per_out.size else 0


def _multiplier(consts, *scales_over: str) -> np.ndarray | None:
    """``a * b / c`` in float32, left to right, as onnxruntime computes its requantization scale."""
    vals = [_arr(consts, s) for s in scales_over]
    if any(v is None for v in vals):
        return None
    a, b, c = (np.asarray(v, np.float32) for v in vals)
    return (a * b) / c


def _requantize(e: _Emit, acc: str, m: np.ndarray, y_zp: str, out: str, axis: int = -1) -> None:
    """``QuantizeLinear(DequantizeLinear(int32(acc), m), 1, y_zp)``: ``acc * m`` (per channel
    along ``axis`` when ``m`` is a vector), rounded half to even, plus ``y_zp``, saturated.
    Through an int32 DequantizeLinear rather than a Mul: onnxruntime would fold a Mul by a
    constant into the Conv weights (ConvMulFusion) and its reference would no longer be exact."""
    acc_int = e.op("Cast", [acc], "accumulator", to=TensorProto.INT32)
    m = np.asarray(m, np.float32)
    scaled = e.op("DequantizeLinear", [acc_int, e.const("multiplier", m.reshape(-1) if m.size > 1
                                                        else m.reshape(()))], "scaled",
                  **({"axis": axis} if m.size > 1 else {}))
    inputs = [scaled, e.const("unit_scale", np.float32(1))] + ([y_zp] if y_zp else [])
    e.op("QuantizeLinear", inputs, "quantize", out=out)


def _qlinear_conv(node, consts, e: _Emit) -> bool:
    x, xs, xzp, w, ws, wzp, ys, yzp = (_input(node, i) for i in range(8))
    b = _input(node, 8)
    m = _multiplier(consts, xs, ws, ys)
    if w not in consts or m is None:
        return False
    xc = _centered(e, consts, x, xzp, "x")
    wc = _centered(e, consts, w, wzp, "w", axis=0)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = [xc, wc] + ([_centered(e, consts, b, "", "bias")] if b else [])
    acc = e.op("Conv", inputs, "accumulate", name=e.name, **attrs)
    _requantize(e, acc, m, yzp, node.output[0], axis=1)
    return True


def _conv_integer(node, consts, e: _Emit) -> bool:
    x, w, xzp, wzp = (_input(node, i) for i in range(4))
    if w not in consts:
        return False
    xc, wc = _centered(e, consts, x, xzp, "x"), _centered(e, consts, w, wzp, "w", axis=0)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    acc = e.op("Conv", [xc, wc], "accumulate", name=e.name, **attrs)
    e.op("Cast", [acc], "cast", out=node.output[0], to=TensorProto.INT32)
    return True


def _qlinear_matmul(node, consts, e: _Emit) -> bool:
    a, a_s, azp, b, b_s, bzp, ys, yzp = (_input(node, i) for i in range(8))
    m = _multiplier(consts, a_s, b_s, ys)
    if m is None:
        return False
    ac, bc = _centered(e, consts, a, azp, "a"), _centered(e, consts, b, bzp, "b", axis=1)
    acc = e.op("MatMul", [ac, bc], "accumulate", name=e.name)
    _requantize(e, acc, m, yzp, node.output[0])
    return True


def _qgemm(node, consts, e: _Emit) -> bool:
    a, a_s, azp, b, b_s, bzp, c, ys, yzp = (_input(node, i) for i in range(9))
    attrs = {a_.name: helper.get_attribute_value(a_) for a_ in node.attribute}
    alpha = np.float32(attrs.pop("alpha", 1.0))
    ac = _centered(e, consts, a, azp, "a")
    bc = _centered(e, consts, b, bzp, "b", axis=0 if attrs.get("transB", 0) else 1)
    if c and c not in consts:
        return False
    inputs = [ac, bc] + ([_centered(e, consts, c, "", "bias")] if c else [])
    acc = e.op("Gemm", inputs, "accumulate", name=e.name, **attrs)
    if ys:
        m = _multiplier(consts, a_s, b_s, ys)
        if m is None:
            return False
        _requantize(e, acc, alpha * m, yzp, node.output[0])
    else:
        sa, sb = _arr(consts, a_s), _arr(consts, b_s)
        if sa is None or sb is None:
            return False
        e.op("Mul", [acc, e.const("scale", alpha * np.float32(sa) * np.asarray(sb, np.float32))],
             "scale", out=node.output[0])
    return True


def _dq(e: _Emit, x: str, s: str, zp: str, what: str) -> str:
    return e.op("DequantizeLinear", [x, s] + ([zp] if zp else []), what)


def _q(e: _Emit, y: str, s: str, zp: str, out: str) -> None:
    e.op("QuantizeLinear", [y, s] + ([zp] if zp else []), "quantize", out=out)


def _float_op(op_type: str, n_in: int, **fixed) -> Callable:
    """QLinear<op>(x1, s1, zp1, ..., y_s, y_zp) -> DQ each input, ``op_type``, Q."""

    def rewrite(node, consts, e: _Emit) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.pop("channels_last", 0) or attrs.pop("opset", 13) < 13:
            return False  # NHWC, or Softmax's pre-13 semantics (flatten to 2-D): not rewritten
        attrs.update(fixed)
        xs = [_dq(e, _input(node, 3 * k), _input(node, 3 * k + 1), _input(node, 3 * k + 2),
                  f"dequantize_{k}") for k in range(n_in)]
        y = e.op(op_type, xs, op_type.lower(), name=e.name, **attrs)
        _q(e, y, _input(node, 3 * n_in), _input(node, 3 * n_in + 1), node.output[0])
        return True

    return rewrite


def _qlinear_concat(node, consts, e: _Emit) -> bool:
    ys, yzp = _input(node, 0), _input(node, 1)
    rest = list(node.input[2:])
    if len(rest) % 3:
        return False
    xs = [_dq(e, rest[k], rest[k + 1], rest[k + 2], f"dequantize_{k // 3}")
          for k in range(0, len(rest), 3)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    y = e.op("Concat", xs, "concat", name=e.name, **attrs)
    _q(e, y, ys, yzp, node.output[0])
    return True


def _dynamic_quantize_lstm(node, consts, e: _Emit) -> bool:
    """com.microsoft DynamicQuantizeLSTM -> LSTM with its dequantized weights. W [D, I, 4H] and
    R [D, H, 4H] (int8, scale and zero point per direction [D] or per gate column [D, 4H]) become
    float32 [D, 4H, I] and [D, 4H, H]. onnxruntime also quantizes X and H at every step, which
    the float LSTM does not: the outputs agree to the activations' quantization noise, not
    exactly."""
    ins = [_input(node, i) for i in range(12)]
    w, r, ws, wzp, rs, rzp = ins[1], ins[2], ins[8], ins[9], ins[10], ins[11]
    if not all(n in consts for n in (w, r, ws, wzp, rs, rzp)):
        return False

    def dequantize(q: str, s: str, zp: str) -> np.ndarray:
        qv, sv, zv = (_arr(consts, n) for n in (q, s, zp))
        sv, zv = sv.reshape(sv.shape[0], 1, -1), zv.reshape(zv.shape[0], 1, -1)  # [D, 1, 1|4H]
        f = (qv.astype(np.int64) - zv.astype(np.int64)).astype(np.float32) * sv.astype(np.float32)
        return np.ascontiguousarray(f.transpose(0, 2, 1))

    inputs = [ins[0], e.const("W", dequantize(w, ws, wzp)), e.const("R", dequantize(r, rs, rzp)),
              *ins[3:8]]
    while inputs and not inputs[-1]:
        inputs.pop()
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    e.nodes.append(helper.make_node("LSTM", inputs, list(node.output), name=e.name, **attrs))
    return True


_REWRITES: dict[tuple[str, str], Callable] = {
    (_MS, "DynamicQuantizeLSTM"): _dynamic_quantize_lstm,
    ("", "QLinearConv"): _qlinear_conv,
    ("", "ConvInteger"): _conv_integer,
    ("", "QLinearMatMul"): _qlinear_matmul,
    (_MS, "QGemm"): _qgemm,
    (_MS, "QLinearAdd"): _float_op("Add", 2),
    (_MS, "QLinearMul"): _float_op("Mul", 2),
    (_MS, "QLinearSigmoid"): _float_op("Sigmoid", 1),
    (_MS, "QLinearLeakyRelu"): _float_op("LeakyRelu", 1),
    (_MS, "QLinearSoftmax"): _float_op("Softmax", 1),
    (_MS, "QLinearGlobalAveragePool"): _float_op("GlobalAveragePool", 1),
    (_MS, "QLinearAveragePool"): _float_op("AveragePool", 1),
    (_MS, "QLinearConcat"): _qlinear_concat,
}
REWRITTEN_OPS = frozenset(op for _, op in _REWRITES)


def _is_target(node: onnx.NodeProto, consts) -> bool:
    key = (node.domain if node.domain != "ai.onnx" else "", node.op_type)
    return key in _REWRITES or (key == ("", "DequantizeLinear")
                                and all(i in consts for i in node.input if i))


def _constants_next_to_use(nodes: list[onnx.NodeProto], consts) -> list[onnx.NodeProto]:
    """``nodes`` with each node whose inputs are all constants moved to just before its first
    consumer (still a topological order: it needs nothing computed)."""
    movable = [n for n in nodes if n.input and all(i in consts for i in n.input if i)]
    moved = {id(n) for n in movable}
    before: dict[int, list[onnx.NodeProto]] = {}
    rest = [n for n in nodes if id(n) not in moved]
    for n in movable:
        first = next((k for k, c in enumerate(rest) if set(n.output) & set(c.input)), None)
        before.setdefault(len(rest) if first is None else first, []).append(n)
    out = []
    for k, n in enumerate(rest):
        out.extend(before.get(k, ()))
        out.append(n)
    out.extend(before.get(len(rest), ()))
    return out


def rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every quantized operator of ``_REWRITES`` replaced and constant
    ``DequantizeLinear`` folded (see the module doc); the same object when there is none."""
    consts = {t.name: t for t in model.graph.initializer}
    if not any(_is_target(n, consts) for n in model.graph.node):
        return model
    nodes, inits = [], []
    for node in model.graph.node:
        fn = _REWRITES.get(((node.domain if node.domain != "ai.onnx" else ""), node.op_type))
        e = _Emit(node)
        if fn is not None and fn(node, consts, e):
            nodes.extend(e.nodes)
            inits.extend(e.inits)
        else:
            nodes.append(node)
    nodes = _constants_next_to_use(nodes, set(consts) | {t.name for t in inits})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    used = {i for n in nodes for i in n.input} | {o.name for o in [*out.graph.output, *out.graph.input]}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    if not any(n.domain == _MS for n in nodes):
        kept = [o for o in out.opset_import if o.domain != _MS]
        del out.opset_import[:]
        out.opset_import.extend(kept)
    return out
