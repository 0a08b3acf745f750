"""ONNX -> LayerGraph: read, validate, pin shapes, fold constants, group nodes into layers.

``load(path, shapes=...)`` is the entry point. It checks everything first and reports problems all
at once: an unreadable file, every operator TVM's importer cannot convert (with node names), every
dynamic input dimension that needs pinning.

Normalisation (the returned graph's ``model``):
- graph inputs get the pinned static shapes;
- ``Constant`` nodes become initializers and every node gets a unique name (``<Op>_<i>`` if the
  exporter left it empty);
- shape arithmetic (Shape -> Slice -> Concat -> Reshape) is folded with onnxsim once the inputs
  are static, without onnxsim's optimisations, so layers keep their identity (BatchNormalization
  is not fused away). The folding is guarded (``_fold_shape_arithmetic``): the folded and the
  unfolded model run under onnxruntime on the pinned shapes and must agree; when they do not,
  full simplification is tried, then no folding. ``LayerGraph.folding`` says which was used
  (``Folding``), and ``log`` gets a line whenever it is not the light folding;
- an ``If`` whose condition folded to a constant is replaced by the branch it takes
  (``controlflow``); one left over is listed as unsupported, with the unsupported operators inside
  ``If``/``Loop``/``Scan`` bodies.

With ``fallback="onnxruntime"`` (``fallback.py``) nothing is refused for being unsupported: the
stages holding such operators run under onnxruntime; a subgraph's reads of outer tensors are its
node's inputs (``fallback.node_reads``), and shapes onnx leaves open come from onnxruntime.

LSTM, GRU and RNN nodes stay single nodes, hence single layers (``recurrent`` rewrites them into
operators TVM imports only when a stage is compiled).

Large models: the ONNX checker and shape inference see a copy without the large float weights
(``_without_weights``), so a 553 MB VGG16 is not serialised and parsed by them twice over.

Splitting then happens on this ONNX graph (see ``split.py``); each stage is imported into Relax on
its own, so it carries exactly its own weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import controlflow, quantized, recurrent, tflitefront
from .errors import ModelError, ShapeError, UnsupportedOpsError
from .fallback import (check_fallback, complete_shapes, node_reads,
                       supported_ops, unsupported_op)
from .graph import Layer, LayerGraph, TensorSpec, group_layers
from .recurrent import RECURRENT_OPS

# Elementwise or shape-only operators that post-process one layer's result. They join the layer
# that produces all of their dynamic inputs (a Conv + BatchNormalization + Relu is one layer).
FOLLOWER_OPS = frozenset({
    "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Elu", "Selu", "PRelu", "Softplus", "Gelu", "Erf", "Identity", "Dropout", "Flatten",
    "Reshape", "Squeeze", "Unsqueeze", "Cast", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
})
_SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape"})
_MAX_FOLDS = 4  # rounds of (fold shape arithmetic, inline constant Ifs)


def load(source: str | os.PathLike | onnx.ModelProto, shapes: dict[str, Any] | None = None,
         name: str | None = None, log: Callable[[str], None] | None = None, *,
         copy: bool = True, fallback: str | None = None) -> LayerGraph:
    """Read an ONNX (or TFLite: ``tflitefront``) model and return its LayerGraph.

    ``shapes`` pins input shapes, e.g. ``{"x": (1, 3, 224, 224)}``; required for every input with
    a dynamic dimension. ``log`` (e.g. ``print``) receives a line before each phase that takes a
    while on a large model (``BIG_MODEL_BYTES`` of weights or more) and says how shape arithmetic
    was folded. A ModelProto ``source`` is left as it was; with ``copy=False`` it becomes the
    graph's model instead of being copied (for a caller that will not use it again: VGG16's
    weights are 553 MB). ``fallback="onnxruntime"`` (``tvmsplit.fallback``) accepts operators
    TVM cannot import: the layers holding them are run under onnxruntime once built.
    """
    fallback = check_fallback(fallback)
    if not isinstance(source, onnx.ModelProto) and tflitefront.is_tflite(source):
        if fallback:
            raise ModelError("--fallback onnxruntime runs ONNX stages; it does not apply to a "
                             "TFLite model: drop the option")
        return tflitefront.load(source, shapes, name)  # by content ("TFL3"), not by extension
    say = log or (lambda _msg: None)
    model, label = _read(source)
    weights = _weight_bytes(model)
    big = weights >= BIG_MODEL_BYTES
    if big:
        say(f"{label}: {weights / 1e6:.0f} MB of weights: hashing and copying them")
    model_hash = hashlib.sha256(model.SerializeToString()).hexdigest()
    rewritten = quantized.rewrite(model)  # QLinearConv, ConvInteger, com.microsoft QLinear*
    if not fallback:
        check_supported(rewritten, final=False)  # If branches may still be inlined: checked below
    # read here, handed over, or already a copy (the rewrite): no need to copy it again
    owned = not copy or not isinstance(source, onnx.ModelProto) or rewritten is not model
    model = _pin_input_shapes(rewritten, shapes or {}, copy=not owned)
    model = _constants_to_initializers(_name_nodes(model))
    folding = Folding("")
    for _ in range(_MAX_FOLDS):  # folding can make If conditions constant, inlining more foldable
        if _needs_folding(model):
            if big:
                say(f"{label}: folding shape arithmetic (onnxsim; it copies the weights)")
            model, step = _fold_shape_arithmetic(model)
            if step.method != "light":
                say(f"{label}: {step.describe()}")
            folding = max(folding, step, key=Folding.severity)
            model = _constants_to_initializers(_name_nodes(model))
        model, inlined = controlflow.inline_constant_ifs(model)
        if not inlined:
            break
        model = _constants_to_initializers(_name_nodes(model))
    if not fallback:
        check_supported(model)
    try:
        model = _infer_shapes(model)
    except ShapeError as exc:
        if folding.method in ("", "light"):
            raise
        raise ShapeError(f"{exc} ({folding.describe()})") from None
    if fallback:  # what onnx cannot infer (Loop-carried values), from onnxruntime
        model = complete_shapes(model)
    graph = _build_layer_graph(model, name or label, model_hash)
    return dataclasses.replace(graph, folding=folding.method)


# ---- reading and validation -------------------------------------------------------------------
def _read(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        model, label = source, source.graph.name or "model"
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ModelError(f"model file {str(path)!r} {what}; MODEL is the path of an ONNX or "
                             "TFLite file or zoo:NAME for a built-in model (see `tvmsplit zoo`)")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises DecodeError / RuntimeWarning-derived errors
            raise ModelError(f"cannot read {str(path)!r} as ONNX ({type(exc).__name__}: {exc}); "
                             "the file is truncated or neither an ONNX nor a TFLite model "
                             "(TFLite: bytes 4..8 are TFL3) — re-export it") from None
        label = path.stem
    try:
        onnx.checker.check_model(_without_weights(model))
        _check_weight_sizes(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{label}: not a valid ONNX model ({first}); re-export it") from None
    if not model.graph.node:
        raise ModelError(f"{label}: the graph has no nodes")
    return model, label


def check_supported(model: onnx.ModelProto, final: bool = True) -> None:
    """Raise UnsupportedOpsError listing every unsupported operator and the nodes that use it,
    including nodes inside ``If`` branches and ``Loop``/``Scan`` bodies, and recurrent nodes that
    ``recurrent.expand`` cannot rewrite.

    ``final=False`` (before shapes are pinned and folded) does not count top-level ``If`` nodes
    and what their branches hold: an ``If`` whose condition folds to a constant is inlined later.
    When something else is unsupported, the branches' unsupported operators are listed too (all at
    once). With ``final`` a remaining ``If`` is listed: its condition does not fold.
    """
    ok = supported_ops()

    def unsupported(node: onnx.NodeProto) -> str | None:
        return unsupported_op(node, ok)

    bad: dict[str, list[str]] = defaultdict(list)
    in_ifs: dict[str, list[str]] = defaultdict(list)  # ops inside the branches of top-level Ifs
    for i, node in enumerate(model.graph.node):
        label = node.name or f"#{i}"
        pending_if = node.op_type == "If" and not final
        if node.op_type == "If" and final:
            bad["If"].append(f"{label}: condition not constant once shapes are pinned")
        elif not pending_if and unsupported(node):
            bad[unsupported(node)].append(label)
        for inner, where in controlflow.subgraph_nodes(node):  # nested bodies included
            op = unsupported(inner)
            if op:
                label_inner = f"{inner.name or '(unnamed)'} in {where}"
                (in_ifs if pending_if else bad)[op].append(label_inner)
    for op, nodes in recurrent.problems(model).items():
        bad[op].extend(nodes)
    if bad:
        for op, nodes in in_ifs.items():
            bad[op].extend(nodes)
        raise UnsupportedOpsError(bad)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, Any],
                      copy: bool = True) -> onnx.ModelProto:
    """``model`` (a copy unless ``copy`` is False: a model read here is ours to change) with
    the pinned ``shapes`` on its inputs; every dynamic input dimension must be pinned."""
    model = _copy(model) if copy else model
    inputs = graph_inputs(model)
    names = [vi.name for vi in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ShapeError(f"shape given for unknown input(s) {', '.join(unknown)}; "
                         f"the model's inputs are {', '.join(names)}")
    problems = []
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                    else (d.dim_param or "?") for d in dims]
        if vi.name in shapes:
            try:
                pinned = tuple(int(s) for s in shapes[vi.name])
            except (TypeError, ValueError):
                raise ShapeError(f"shape for input {vi.name!r} must be a list of integers, "
                                 f"got {shapes[vi.name]!r}") from None
            if len(pinned) != len(dims):
                raise ShapeError(f"input {vi.name!r} has rank {len(dims)} {_fmt_dims(declared)}; "
                                 f"the pinned shape {pinned} has rank {len(pinned)}")
            bad = [f"{s} at dimension {k}" for k, s in enumerate(pinned) if s <= 0]
            if bad:
                raise ShapeError(f"pinned shape {pinned} of input {vi.name!r} "
                                 f"{_fmt_dims(declared)} has {', '.join(bad)}; every dimension "
                                 "must be a size >= 1")
            clash = [k for k, d in enumerate(declared) if isinstance(d, int) and d != pinned[k]]
            if clash:
                raise ShapeError(f"input {vi.name!r} is declared {_fmt_dims(declared)}; pinned "
                                 f"shape {pinned} differs at dimension(s) {clash}")
            for d, s in zip(dims, pinned):
                d.Clear()
                d.dim_value = s
        else:
            dynamic = [f"{k} ({d})" for k, d in enumerate(declared) if not isinstance(d, int)]
            if dynamic or not dims and not vi.type.tensor_type.HasField("shape"):
                example = ",".join(str(d) if isinstance(d, int) else "N" for d in declared)
                example += " (N: the size you will feed)"
                problems.append(f"input {vi.name!r} {_fmt_dims(declared)} has dynamic "
                                f"dimension(s) {', '.join(dynamic) or 'unknown rank'}; pin it with "
                                f"--shape {vi.name}={example} (Python: shapes={{'{vi.name}': (...)}})")
    if problems:
        raise ShapeError("; ".join(problems))
    return model


def _fmt_dims(dims: list) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# ---- normalisation ----------------------------------------------------------------------------
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique, non-empty name (kept where the exporter set one)."""
    used: set[str] = set()
    counters: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        name = node.name
        if not name or name in used:
            base = name or node.op_type
            while True:
                candidate = f"{base}_{counters[base]}"
                counters[base] += 1
                if candidate not in used:
                    break
            node.name = candidate
        used.add(node.name)
    return model


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None and value.type == onnx.AttributeProto.TENSOR:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value.t)
                tensor.name = node.output[0]
                model.graph.initializer.append(tensor)
                continue
            from onnx.reference import ReferenceEvaluator

            arr = ReferenceEvaluator(
                helper.make_model(helper.make_graph([node], "c", [], [
                    helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)
                ]), opset_imports=model.opset_import)).run(None, {})[0]
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), node.output[0]))
            continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _needs_folding(model: onnx.ModelProto) -> bool:
    consts = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            return True
        real_inputs = [i for i in node.input if i]
        if real_inputs and all(i in consts for i in real_inputs):
            return True
    return False


@dataclass(frozen=True)
class Folding:
    """How the shape arithmetic was folded (``LayerGraph.folding`` holds ``method``).

    ``method``: ``""`` nothing to fold; ``"light"`` onnxsim without its optimisations (layers
    keep their identity), checked against onnxruntime; ``"full"`` onnxsim with them, used
    because the light folding changed the model's results or failed; ``"none"`` left unfolded,
    because both did; ``"unchecked"`` folded but not checked: onnxruntime cannot run the
    unfolded model. ``why`` says what went wrong with the methods passed over.
    """

    method: str
    why: str = ""

    _ORDER = ("", "light", "unchecked", "full", "none")

    def severity(self) -> int:
        return self._ORDER.index(self.method)

    def describe(self) -> str:
        what = {"": "no shape arithmetic to fold",
                "light": "shape arithmetic folded by onnxsim without optimisation, checked "
                         "against onnxruntime",
                "unchecked": "shape arithmetic folded by onnxsim, NOT checked against "
                             "onnxruntime",
                "full": "shape arithmetic folded by full onnxsim simplification, checked "
                        "against onnxruntime",
                "none": "shape arithmetic left unfolded"}[self.method]
        return what + (f" ({self.why})" if self.why else "")


FOLDING_METHODS = ("light", "full")  # tried in this order; then the model stays unfolded


def _simplify(model: onnx.ModelProto, method: str) -> onnx.ModelProto:
    """onnxsim's folding: ``light`` without its optimisations, ``full`` with them."""
    import onnxsim

    folded, _ = onnxsim.simplify(model, perform_optimization=(method == "full"))
    return folded


def _fold_shape_arithmetic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Folding]:
    """Fold with onnxsim, guarded: each candidate (``FOLDING_METHODS``) must give onnxruntime's
    outputs of the unfolded model on the pinned shapes (``check.realistic_inputs``; onnxsim's own
    check never runs here, its ``check_n`` is 0). The first that does is used; when none does the
    model stays unfolded. Returns the model and how it was folded."""
    from .check import realistic_inputs, run_onnxruntime

    specs = _tensor_specs(model)
    feed = realistic_inputs(tuple(specs[vi.name] for vi in graph_inputs(model)), model)
    try:
        want = run_onnxruntime(model, feed)
    except Exception as exc:
        want, cannot_run = None, _first_line(exc)
    passed_over = []
    for method in FOLDING_METHODS:
        try:
            folded = _simplify(model, method)
        except Exception as exc:
            passed_over.append(f"{method} folding failed: {_first_line(exc)}")
            continue
        if want is None:
            why = f"{method} folding; onnxruntime cannot run the unfolded model: {cannot_run}"
            return folded, Folding("unchecked", "; ".join([*passed_over, why]))
        why = _results_differ(folded, feed, want)
        if why is None:
            return folded, Folding(method, "; ".join(passed_over))
        passed_over.append(f"{method} folding rejected: {why}")
    return model, Folding("none", "; ".join(passed_over))


def _results_differ(folded: onnx.ModelProto, feed: dict, want: dict) -> str | None:
    """Why ``folded``'s onnxruntime outputs are not ``want`` (None when they match)."""
    from .check import compare, run_onnxruntime

    try:
        got = run_onnxruntime(folded, feed, list(want))
    except Exception as exc:
        return f"onnxruntime cannot run the folded model ({_first_line(exc)})"
    for name, ref in want.items():
        value = np.asarray(got[name])
        if value.shape != np.asarray(ref).shape:
            return (f"output {name!r} has shape {list(value.shape)} instead of "
                    f"{list(np.shape(ref))}")
        err = compare(value.astype(np.asarray(ref).dtype), ref, name)
        if not err.ok:
            return f"output {err.describe()}"  # where and how far off
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every tensor's shape inferred again from the pinned inputs (in place).

    Exporters leave stale or dynamic (-1) shapes on intermediate and output tensors; they are
    dropped first. Inference runs on a copy without the large weights (``_without_weights``):
    onnx would otherwise serialise and parse the whole model twice (VGG16: 5.9 s of 7).
    """
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), check_type=True,
                                                     strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ShapeError(f"shape inference failed: {str(exc).strip().splitlines()[0]}") from None
    model.graph.value_info.extend(inferred.graph.value_info)
    for out, done in zip(model.graph.output, inferred.graph.output):
        out.CopyFrom(done)
    return model


# ---- large weights ----------------------------------------------------------------------------
# Float initializers at least this large are left out of the copy that the ONNX checker and shape
# inference see. No operator reads a float tensor this large to infer a shape (shape-like inputs
# are integer; Resize scales or Range bounds are a few values), so the results are the same.
STRIP_MIN_BYTES = 1 << 16
BIG_MODEL_BYTES = 64 << 20  # weights from which ``load`` logs its long phases
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def _nbytes_declared(t: onnx.TensorProto) -> int:
    return int(np.prod(list(t.dims), dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(
        t.data_type).itemsize


def _strippable(t: onnx.TensorProto) -> bool:
    return (t.data_type in _FLOAT_TYPES and t.HasField("raw_data")
            and t.data_location != onnx.TensorProto.EXTERNAL
            and _nbytes_declared(t) >= STRIP_MIN_BYTES)


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Declared bytes of the graph's initializers (no data is read)."""
    return sum(_nbytes_declared(t) for t in model.graph.initializer
               if t.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED))


def _copy_fields(src, dst, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those in ``skip``
    (fields are read by reference: a skipped field's data is never copied)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which each large float initializer (``STRIP_MIN_BYTES``) is a graph
    input of the same type and shape instead: what the checker and shape inference need of it,
    without its data. ``model`` itself when it has none."""
    graph = model.graph
    if not any(_strippable(t) for t in graph.initializer):
        return model
    out = onnx.ModelProto()
    _copy_fields(model, out, frozenset({"graph"}))
    _copy_fields(graph, out.graph, frozenset({"initializer"}))
    declared = {vi.name for vi in graph.input}
    for t in graph.initializer:
        if not _strippable(t):
            out.graph.initializer.add().CopyFrom(t)
        elif t.name not in declared:  # IR < 4 lists initializers among the inputs already
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def _check_weight_sizes(model: onnx.ModelProto) -> None:
    """What the checker verifies of the initializers ``_without_weights`` leaves out: raw data
    at least as large as the declared shape and type need."""
    for t in model.graph.initializer:
        if _strippable(t):
            need, got = _nbytes_declared(t), len(t.raw_data)
            if got < need:
                raise ModelError(f"TensorProto (tensor name: {t.name}) raw_data size ({got} "
                                 f"bytes) is too small for the declared shape and type ({need} "
                                 "bytes required)")


# ---- layers -----------------------------------------------------------------------------------
def _tensor_specs(model: onnx.ModelProto) -> dict[str, TensorSpec]:
    specs = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims) and tt.elem_type:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
            specs[vi.name] = TensorSpec(vi.name, dtype, tuple(dims))
    return specs


def _build_layer_graph(model: onnx.ModelProto, name: str, model_hash: str) -> LayerGraph:
    g = model.graph
    inits = {init.name: init for init in g.initializer}
    specs = _tensor_specs(model)
    nodes = list(g.node)
    missing = sorted({o for n in nodes for o in n.output if o and o not in specs})
    if missing:
        raise ShapeError(f"cannot infer static shapes of {len(missing)} tensor(s) "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                         "pin every input dimension with --shape")

    # Group nodes into layers: a follower joins the layer that produces all its dynamic inputs.
    grouping = group_layers(nodes, node_reads, lambda n: n.output,
                            lambda n: n.op_type in FOLLOWER_OPS, lambda i: i in inits)
    groups, producer_layer = grouping.groups, grouping.producer
    consumers = defaultdict(set, grouping.consumers)
    graph_outputs = [o.name for o in g.output]

    layers = []
    for k, group in enumerate(groups):
        produced = [o for n in group for o in n.output if o]
        ins = list(dict.fromkeys(i for n in group for i in node_reads(n)
                                 if i and i not in inits and producer_layer.get(i, -1) != k))
        outs = [o for o in produced if consumers[o] - {k} or o in graph_outputs]
        used_inits = dict.fromkeys(i for n in group for i in node_reads(n) if i in inits)
        macs, flops = 0, 0
        for n in group:
            m, f = node_cost(n, specs, inits)
            macs, flops = macs + m, flops + f
        anchor = group[0]
        layers.append(Layer(
            name=anchor.name, op=anchor.op_type, nodes=tuple(n.name for n in group),
            ops=tuple(n.op_type for n in group),
            inputs=tuple(specs[i] for i in ins), outputs=tuple(specs[o] for o in outs),
            macs=macs, flops=flops,
            param_bytes=sum(_init_nbytes(inits[i]) for i in used_inits),
            attrs=_anchor_attrs(anchor, specs, inits)))
    inputs = tuple(specs[vi.name] for vi in graph_inputs(model))
    outputs = tuple(specs[o] for o in graph_outputs)
    return LayerGraph(name=name, layers=tuple(layers), inputs=inputs, outputs=outputs,
                      model_sha256=model_hash, model=model)


def _init_nbytes(init: onnx.TensorProto) -> int:
    n = int(np.prod(list(init.dims), dtype=np.int64))
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def _anchor_attrs(node: onnx.NodeProto, specs: dict[str, TensorSpec],
                  inits: dict[str, onnx.TensorProto]) -> tuple[tuple[str, Any], ...]:
    attrs: list[tuple[str, Any]] = []
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, (int, float)):
            attrs.append((a.name, v))
        elif isinstance(v, bytes):
            attrs.append((a.name, v.decode(errors="replace")))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            attrs.append((a.name, tuple(v)))
    if len(node.input) > 1 and node.input[1] in inits:
        attrs.append(("weight_shape", tuple(inits[node.input[1]].dims)))
    return tuple(sorted(attrs))


def node_cost(node: onnx.NodeProto, specs: dict[str, TensorSpec],
              inits: dict[str, onnx.TensorProto]) -> tuple[int, int]:
    """(MACs, FLOPs) of one node. Conv/Gemm/MatMul: FLOPs = 2 x MACs; else one op per element."""

    def shape(name: str) -> tuple[int, ...]:
        if name in specs:
            return specs[name].shape
        return tuple(inits[name].dims)

    out = shape(node.output[0])
    out_elems = int(np.prod(out, dtype=np.int64))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Conv":
        w = shape(node.input[1])  # [Cout, Cin/group, k...]
        macs = out_elems * int(np.prod(w[1:], dtype=np.int64))
        return macs, 2 * macs
    if op == "ConvTranspose":
        w = shape(node.input[1])  # [Cin, Cout/group, k...]
        x = shape(node.input[0])
        macs = int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        return macs, 2 * macs
    if op == "Gemm":
        a = shape(node.input[0])
        k = a[0] if attrs.get("transA", 0) else a[1]
        macs = out_elems * k
        return macs, 2 * macs
    if op == "MatMul":
        a = shape(node.input[0])
        macs = out_elems * a[-1]
        return macs, 2 * macs
    if op in RECURRENT_OPS:  # per step and direction: [B, I] x [I, G*H] + [B, H] x [H, G*H]
        x, w = shape(node.input[0]), shape(node.input[1])  # X [T, B, I] (layout 0), W [D, G*H, I]
        layout = attrs.get("layout", 0)
        steps, batch = (x[1], x[0]) if layout else (x[0], x[1])
        dirs, gh, inp = w
        hidden = int(attrs.get("hidden_size", gh // {"LSTM": 4, "GRU": 3, "RNN": 1}[op]))
        macs = steps * batch * dirs * gh * (inp + hidden)
        return macs, 2 * macs + steps * batch * dirs * gh * 3  # + bias, activation, cell update
    if op in ("MaxPool", "AveragePool"):
        window = int(np.prod(attrs.get("kernel_shape", [1]), dtype=np.int64))
        return 0, out_elems * window
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        return 0, int(np.prod(shape(node.input[0]), dtype=np.int64))
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast"):
        return 0, 0
    return 0, out_elems
