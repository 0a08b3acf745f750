"""LSTM, GRU and RNN for TVM 0.27's Relax ONNX importer, which has no converter for them.

``expand(model)`` rewrites every recurrent node into operators the importer does convert (MatMul,
Add, Sub, Mul, Min, Max, Slice, Reshape, Concat, Transpose and the activations), unrolled
over the node's static sequence length. The input projection of all time steps is one MatMul per
direction; each step adds one ``[1, batch, hidden] x [hidden, gates * hidden]`` MatMul, the gate
slices and the elementwise cell update.

Only the ONNX handed to TVM's importer is expanded (``compile.stage_relax``): the LayerGraph keeps
the recurrent node as ONE node, so it is one layer for splitting and cost features, and the
onnxruntime reference runs the original operator, which makes every check a real comparison of the
expansion with onnxruntime's LSTM/GRU/RNN.

``problems(model)`` names the recurrent nodes that cannot be expanded (``frontend.check_supported``
lists them with the unsupported operators): weights that are computed rather than constant, a
computed or partial ``sequence_lens``, an activation not in ``ACTIVATIONS``.

Semantics are ONNX's (LSTM gates ``iofc``, GRU ``zrh``; ``direction`` forward / reverse /
bidirectional; optional ``B``, ``initial_h``, ``initial_c``, peepholes ``P``; ``clip``;
``input_forget``; GRU ``linear_before_reset``; ``layout`` 0 and 1). To support another activation,
add it to ``ACTIVATIONS`` (a function emitting its nodes).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                        "RNN": ("Tanh",)}
_ONE_OP = ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus")
ACTIVATIONS = frozenset(_ONE_OP)  # the parameter-free ONNX activations, emitted as their own op


class _Emitter:
    """Nodes and initializers replacing one recurrent node; every name starts ``<node>/``."""

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix, self.dtype = prefix, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._k = 0

    def _name(self, what: str) -> str:
        self._k += 1
        return f"{self.prefix}/{what}_{self._k}"

    def const(self, what: str, value, dtype=None) -> str:
        name = self._name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def ints(self, what: str, values) -> str:
        return self.const(what, values, np.int64)

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out or name], name=name, **attrs))
        return out or name

    def slice1(self, x: str, start: int, end: int, axis: int = -1) -> str:
        """x[..., start:end] (``axis`` -1), or along ``axis``: Slice, not Gather, whose TVM kernel
        warns about out-of-bounds indices on every use."""
        return self.op("Slice", [x, self.ints("start", [start]), self.ints("end", [end]),
                                 self.ints("axis", [axis])])

    def act(self, name: str, x: str) -> str:
        return self.op(name, [x])


def problems(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Recurrent nodes of ``model``'s graph that ``expand`` cannot rewrite: op -> 'node (why)'."""
    consts = _constant_names(model)
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        why = _why_not(node, consts)
        if why:
            bad.setdefault(node.op_type, []).append(f"{node.name or f'#{i}'} ({why})")
    return bad


def _constant_names(model: onnx.ModelProto) -> set[str]:
    return ({init.name for init in model.graph.initializer}
            | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output})


def _why_not(node: onnx.NodeProto, consts: set[str]) -> str:
    attrs = _attrs(node)
    names = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
    given = dict(zip(names, list(node.input) + [""] * 8))
    computed = [k for k in ("W", "R", "B", "P") if given[k] and given[k] not in consts]
    if computed:
        return f"{', '.join(computed)} computed in the graph, not constant weights"
    if given["sequence_lens"] and given["sequence_lens"] not in consts:
        return "sequence_lens computed in the graph; only a static sequence length is supported"
    if attrs.get("direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return f"direction {attrs['direction']!r}"
    if attrs.get("layout", 0) not in (0, 1):
        return f"layout {attrs['layout']}"
    unknown = [a for a in attrs.get("activations", ()) if _canonical(a) is None]
    if unknown:
        return (f"activation(s) {', '.join(unknown)}; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ""


def _canonical(name: str) -> str | None:
    return next((a for a in ACTIVATIONS if a.lower() == name.lower()), None)


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


# ---- expansion --------------------------------------------------------------------------------
def expand(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every LSTM/GRU/RNN node replaced by its unrolled equivalent (a copy; the
    model itself when it has none). Input shapes must be static."""
    if not any(n.op_type in RECURRENT_OPS for n in model.graph.node):
        return model
    bad = problems(model)
    if bad:
        from .errors import UnsupportedOpsError

        raise UnsupportedOpsError(bad)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.input, *inferred.graph.value_info]}
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for n in model.graph.node:  # Constant nodes (graphs loaded through frontend have none left)
        if n.op_type == "Constant":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits = [], []
    replaced: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            nodes.append(node)
            continue
        e = _expand_node(node, shapes, values)
        nodes.extend(e.nodes)
        inits.extend(e.inits)
        replaced.update(i for i in node.input[1:] if i)
    still_used = {i for n in nodes for i in n.input}
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [t for t in out.graph.initializer if t.name not in replaced or t.name in still_used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + inits)
    return out


def _expand_node(node: onnx.NodeProto, shapes: dict[str, list[int]],
                 values: dict[str, np.ndarray]) -> _Emitter:
    op, attrs = node.op_type, _attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    w, r = values[ins[1]], values[ins[2]]
    dirs, gh, _ = w.shape
    g = _GATES[op]
    h = gh // g
    layout = attrs.get("layout", 0)
    x_shape = shapes.get(ins[0])
    if not x_shape or len(x_shape) != 3 or min(x_shape) <= 0:
        raise ValueError(f"{op} node {node.name!r}: input {ins[0]!r} needs a static 3-D shape, "
                         f"got {x_shape}")
    t_len, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    if ins[4]:
        lens = values[ins[4]].reshape(-1)
        if not np.all(lens == t_len):
            raise ValueError(f"{op} node {node.name!r}: sequence_lens {lens.tolist()} differ from "
                             f"the sequence length {t_len}; only full-length sequences are "
                             "supported")
    e = _Emitter(node.name or op, w.dtype)
    bias = values[ins[3]] if ins[3] else np.zeros((dirs, 2 * gh), w.dtype)
    peep = values[ins[7]] if op == "LSTM" and ins[7] else None
    acts = ([_canonical(a) for a in attrs.get("activations", ())]
            or list(_DEFAULT_ACTIVATIONS[op]) * dirs)
    per_dir = len(acts) // dirs
    clip = attrs.get("clip")

    x = e.op("Transpose", [ins[0]], perm=[1, 0, 2]) if layout else ins[0]
    init_idx = {"h": 5, "c": 6}
    initial = {}
    for k, i in init_idx.items():
        if ins[i] and (k == "h" or op == "LSTM"):
            initial[k] = e.op("Transpose", [ins[i]], perm=[1, 0, 2]) if layout else ins[i]

    reverse = attrs.get("direction", "forward") == "reverse"
    ys, hs, cs = [], [], []
    for d in range(dirs):
        backwards = reverse or d == 1
        a = acts[d * per_dir:(d + 1) * per_dir]
        wb, rb = bias[d, :gh], bias[d, gh:]
        in_bias = wb + rb
        if op == "GRU":  # the h gate's recurrent bias goes inside the reset (linear_before_reset)
            inside = attrs.get("linear_before_reset", 0)
            in_bias = np.concatenate([wb[:2 * h] + rb[:2 * h],
                                      wb[2 * h:] + (0 if inside else rb[2 * h:])])
        xw = e.op("Add", [e.op("MatMul", [x, e.const("WT", w[d].T)]), e.const("bias", in_bias)])

        def state(k: str) -> str:
            if k in initial:
                return e.slice1(initial[k], d, d + 1, axis=0)
            return e.const(f"{k}0", np.zeros((1, batch, h), w.dtype))

        hid = state("h")
        cell = state("c") if op == "LSTM" else None
        steps = range(t_len - 1, -1, -1) if backwards else range(t_len)
        per_t: dict[int, str] = {}
        for t in steps:
            xw_t = e.slice1(xw, t, t + 1, axis=0)  # states and steps are [1, batch, ...]
            if op == "LSTM":
                hid, cell = _lstm_step(e, xw_t, hid, cell, r[d],
                                       peep[d] if peep is not None else None,
                                       h, a, clip, attrs.get("input_forget", 0))
            elif op == "GRU":
                hid = _gru_step(e, xw_t, hid, r[d], rb[2 * h:], h, a, clip,
                                attrs.get("linear_before_reset", 0))
            else:
                rec = e.op("MatMul", [hid, e.const("RT", r[d].T)])
                hid = e.act(a[0], _clip(e, e.op("Add", [xw_t, rec]), clip))
            per_t[t] = hid
        if outs[0]:
            shape4 = e.ints("shape", [1, 1, batch, h])
            ys.append(e.op("Concat", [e.op("Reshape", [per_t[t], shape4]) for t in range(t_len)],
                           axis=0))
        hs.append(hid)
        if cell is not None:
            cs.append(cell)

    def finish(parts: list[str], axis: int, perm: list[int], name: str) -> None:
        if layout:
            e.op("Transpose", [e.op("Concat", parts, axis=axis)], out=name, perm=perm)
        else:
            e.op("Concat", parts, out=name, axis=axis)

    if outs[0]:
        finish(ys, 1, [2, 0, 1, 3], outs[0])
    if outs[1]:
        finish(hs, 0, [1, 0, 2], outs[1])
    if op == "LSTM" and outs[2]:
        finish(cs, 0, [1, 0, 2], outs[2])
    return e


def _clip(e: _Emitter, x: str, clip: float | None) -> str:
    if clip is None:
        return x
    return e.op("Max", [e.op("Min", [x, e.const("clip", clip)]), e.const("clip", -clip)])


def _lstm_step(e: _Emitter, xw_t: str, hid: str, cell: str, r: np.ndarray, p: np.ndarray | None,
               h: int, a: list[str], clip: float | None, input_forget: int) -> tuple[str, str]:
    f_act, g_act, h_act = a
    gates = e.op("Add", [xw_t, e.op("MatMul", [hid, e.const("RT", r.T)])])
    i_pre, o_pre, f_pre, c_pre = (e.slice1(gates, k * h, (k + 1) * h) for k in range(4))
    if p is not None:
        i_pre = e.op("Add", [i_pre, e.op("Mul", [cell, e.const("Pi", p[:h])])])
        f_pre = e.op("Add", [f_pre, e.op("Mul", [cell, e.const("Pf", p[2 * h:])])])
    i = e.act(f_act, _clip(e, i_pre, clip))
    if input_forget:
        f = e.op("Sub", [e.const("one", 1.0), i])
    else:
        f = e.act(f_act, _clip(e, f_pre, clip))
    c_in = e.act(g_act, _clip(e, c_pre, clip))
    c_new = e.op("Add", [e.op("Mul", [f, cell]), e.op("Mul", [i, c_in])])
    if p is not None:
        o_pre = e.op("Add", [o_pre, e.op("Mul", [c_new, e.const("Po", p[h:2 * h])])])
    o = e.act(f_act, _clip(e, o_pre, clip))
    return e.op("Mul", [o, e.act(h_act, c_new)]), c_new


def _gru_step(e: _Emitter, xw_t: str, hid: str, r: np.ndarray, rb_h: np.ndarray, h: int,
              a: list[str], clip: float | None, linear_before_reset: int) -> str:
    f_act, g_act = a
    rec_zr = e.op("MatMul", [hid, e.const("RT_zr", r[:2 * h].T)])
    zr = e.op("Add", [e.slice1(xw_t, 0, 2 * h), rec_zr])
    z = e.act(f_act, _clip(e, e.slice1(zr, 0, h), clip))
    rg = e.act(f_act, _clip(e, e.slice1(zr, h, 2 * h), clip))
    rh = e.const("RT_h", r[2 * h:].T)
    if linear_before_reset:
        rec = e.op("Mul", [rg, e.op("Add", [e.op("MatMul", [hid, rh]), e.const("Rb_h", rb_h)])])
    else:
        rec = e.op("MatMul", [e.op("Mul", [rg, hid]), rh])
    hh = e.act(g_act, _clip(e, e.op("Add", [e.slice1(xw_t, 2 * h, 3 * h), rec]), clip))
    # H = (1 - z) * hh + z * H_prev = hh + z * (H_prev - hh)
    return e.op("Add", [hh, e.op("Mul", [z, e.op("Sub", [hid, hh])])])

