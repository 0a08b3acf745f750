"""TFLite -> LayerGraph, stage import with TVM's Relax TFLite frontend, the TFLite reference.

A file is TFLite when its bytes 4..8 are the flatbuffer identifier ``TFL3`` (``is_tflite``), what
ever its name. ``load`` reads it with the ``tflite`` flatbuffer package into the same LayerGraph as
an ONNX model; ``graph.model`` is then a ``TfliteModel`` (the bytes and the operator table) rather
than an ONNX ModelProto.

- Layers: every operator of subgraph 0 is an anchor, named by its first output tensor (the part
  before the first ``;`` of TensorFlow's joined names, made unique with ``#k``). Activations that
  TFLite did not fuse (RELU, LOGISTIC, ...) and reshapes join the layer producing their input, as
  ONNX followers do. Operators computing from constants only (DEQUANTIZE of float16 weights,
  DENSIFY of sparse ones) are weight preparation: they belong to the layer of their first consumer
  and are imported again into any other stage that reads their result.
- Features: MACs of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV; param bytes of
  the constant buffers a layer reads.
- ``stage_relax``: TVM's ``OperatorConverter`` converts only the stage's operators (a view of the
  subgraph with just them), the stage's input tensors as the function's parameters, its outputs as
  the result: the same cut-and-import scheme as an ONNX stage, through TVM's own TFLite converters.
- ``reference``: the TFLite interpreter (``ai-edge-litert``, or ``tflite-runtime``) with every
  tensor preserved and no delegate, so intermediate tensors (what crosses a cut) can be compared.

Not for TFLite models: horizontal splits (HyPS rewrites ONNX Gemms) and custom operators (TVM's
frontend converts none; they are listed with the unsupported builtins, by layer name).
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError, ShapeError, UnsupportedOpsError
from .graph import Layer, LayerGraph, TensorSpec, group_layers

MAGIC = b"TFL3"
# TFLite TensorType -> numpy dtype name (schema.fbs order)
_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
           9: "int8", 10: "float64", 12: "uint64", 15: "uint32", 16: "uint16"}
FOLLOWERS = frozenset({"RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "PRELU",
                       "LEAKY_RELU", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE", "QUANTIZE"})
WEIGHT_PREP = frozenset({"DEQUANTIZE", "DENSIFY"})


@dataclass(frozen=True)
class TfliteOp:
    index: int                  # position in subgraph 0
    code: str                   # builtin name (CONV_2D) or the custom code
    name: str                   # unique, from the first output tensor
    inputs: tuple[str, ...]     # tensor names ("" for an omitted optional input)
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TfliteModel:
    """What tvmsplit keeps of a .tflite file: its bytes and operator table."""

    data: bytes = field(repr=False)
    ops: tuple[TfliteOp, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    constants: frozenset[str] = frozenset()  # weights, and tensors computed from weights only

    def ops_named(self, names) -> list[TfliteOp]:
        wanted = set(names)
        return [op for op in self.ops if op.name in wanted]


def is_tflite(path: str | os.PathLike) -> bool:
    """True when the file carries the TFLite flatbuffer identifier (bytes 4..8 are ``TFL3``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == MAGIC


def _flatbuffer(data: bytes):
    try:
        import tflite
    except ImportError:
        raise ModelError("reading a .tflite model needs the tflite package: "
                         "pip install tflite") from None
    return tflite.Model.GetRootAsModel(data, 0)


def _op_code(model, op) -> str:
    from tflite.BuiltinOperator import BuiltinOperator

    oc = model.OperatorCodes(op.OpcodeIndex())
    code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
    if code == BuiltinOperator.CUSTOM:
        return (oc.CustomCode() or b"CUSTOM").decode()
    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    return names.get(code, str(code))


def load(path: str | os.PathLike, shapes: dict[str, Any] | None = None,
         name: str | None = None) -> LayerGraph:
    """Read a .tflite model and return its LayerGraph (TFLite shapes are static: ``shapes`` may
    only repeat them)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        fb = _flatbuffer(data)
        sub = fb.Subgraphs(0)
        sub.OperatorsLength()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read {str(path)!r} as TFLite ({type(exc).__name__}: {exc}); "
                         "the file is truncated or not a TFLite model — re-export it") from None
    tensors = [sub.Tensors(i) for i in range(sub.TensorsLength())]
    tname = [t.Name().decode() for t in tensors]
    const = {tname[i] for i, t in enumerate(tensors)
             if t.Buffer() > 0 and fb.Buffers(t.Buffer()).DataLength() > 0}
    specs = {}
    for i, t in enumerate(tensors):
        dtype = _DTYPES.get(t.Type())
        if dtype is not None:
            specs[tname[i]] = TensorSpec(tname[i], dtype, tuple(int(d) for d in t.ShapeAsNumpy())
                                         if t.ShapeLength() else ())
    ops = _read_ops(fb, sub, tname)
    constant = set(const)  # tensors computed from constants only are weights too
    for op in ops:
        if op.code in WEIGHT_PREP and all(i in constant for i in op.inputs if i):
            constant.update(op.outputs)
    model = TfliteModel(data, tuple(ops), tuple(tname[i] for i in sub.InputsAsNumpy()),
                        tuple(tname[i] for i in sub.OutputsAsNumpy()), frozenset(constant))
    _check_shapes(model, specs, shapes or {})
    _check_supported(fb, sub, ops)
    sizes = {tname[i]: fb.Buffers(t.Buffer()).DataLength() for i, t in enumerate(tensors)
             if tname[i] in const}
    return _layer_graph(model, specs, const, sizes, name or path.stem,
                        hashlib.sha256(data).hexdigest())


def _read_ops(fb, sub, tname: list[str]) -> list[TfliteOp]:
    ops, used = [], set()
    for k in range(sub.OperatorsLength()):
        op = sub.Operators(k)
        outs = tuple(tname[i] for i in op.OutputsAsNumpy())
        base = (outs[0].split(";")[0] if outs else "") or f"op{k}"
        name, j = base, 1
        while name in used:
            name, j = f"{base}#{j}", j + 1
        used.add(name)
        ins = tuple(tname[i] if i >= 0 else "" for i in op.InputsAsNumpy()) \
            if op.InputsLength() else ()
        ops.append(TfliteOp(k, _op_code(fb, op), name, ins, outs))
    return ops


def _check_shapes(model: TfliteModel, specs: dict[str, TensorSpec], shapes: dict[str, Any]) -> None:
    unknown = sorted(set(shapes) - set(model.inputs))
    if unknown:
        raise ShapeError(f"shape given for unknown input(s) {', '.join(unknown)}; "
                         f"the model's inputs are {', '.join(model.inputs)}")
    for n, s in shapes.items():
        if tuple(int(d) for d in s) != specs[n].shape:
            raise ShapeError(f"input {n!r} of a TFLite model has the fixed shape "
                             f"{list(specs[n].shape)}; drop --shape {n}=... or give exactly that")


def _check_supported(fb, sub, ops: list[TfliteOp]) -> None:
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable, OperatorConverter

    known = set(OperatorConverter(fb, sub, ExprTable(), None).convert_map)
    bad: dict[str, list[str]] = defaultdict(list)
    for op in ops:
        if op.code not in known:
            bad[op.code].append(op.name)
    if bad:
        raise UnsupportedOpsError(bad, importer="TFLite")


def _layer_graph(model: TfliteModel, specs: dict[str, TensorSpec], const: set[str],
                 sizes: dict[str, int], name: str, sha: str) -> LayerGraph:
    ops, constant = model.ops, model.constants
    prep = {op.index for op in ops if op.outputs and op.outputs[0] in constant}
    pending_prep: dict[str, TfliteOp] = {o: op for op in ops if op.index in prep for o in op.outputs}

    def prepared_weights(op: TfliteOp) -> list[TfliteOp]:  # weight preparation joins its first consumer
        return [pending_prep.pop(i) for i in op.inputs if i in pending_prep]

    grouping = group_layers([op for op in ops if op.index not in prep], lambda op: op.inputs,
                            lambda op: op.outputs, lambda op: op.code in FOLLOWERS,
                            lambda i: i in constant, joining=prepared_weights)
    groups, producer = grouping.groups, grouping.producer
    consumers = defaultdict(set, grouping.consumers)
    layers = []
    for k, group in enumerate(groups):
        anchor = next(op for op in group if op.index not in prep)
        produced = [o for op in group for o in op.outputs if o not in constant]
        ins = list(dict.fromkeys(i for op in group for i in op.inputs
                                 if i and i not in constant and producer.get(i) != k))
        outs = [o for o in produced if consumers[o] - {k} or o in model.outputs]
        weights = dict.fromkeys(i for op in group for i in op.inputs if i in const)
        macs = sum(_macs(op, specs) for op in group)
        out_elems = sum(int(np.prod(specs[o].shape, dtype=np.int64)) for o in produced if o in specs)
        w = next((specs[i].shape for i in anchor.inputs[1:2] if i in specs and i in constant), None)
        layers.append(Layer(
            name=anchor.name, op=anchor.code, nodes=tuple(op.name for op in group),
            ops=tuple(op.code for op in group),
            inputs=tuple(specs[i] for i in ins), outputs=tuple(specs[o] for o in outs),
            macs=macs, flops=2 * macs + out_elems, param_bytes=sum(sizes[i] for i in weights),
            attrs=(("weight_shape", w),) if w else ()))
    return LayerGraph(name=name, layers=tuple(layers),
                      inputs=tuple(specs[i] for i in model.inputs),
                      outputs=tuple(specs[o] for o in model.outputs), model_sha256=sha,
                      model=model)


def _macs(op: TfliteOp, specs: dict[str, TensorSpec]) -> int:
    if op.code not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
        return 0
    out = int(np.prod(specs[op.outputs[0]].shape, dtype=np.int64))
    if op.code == "TRANSPOSE_CONV":  # inputs: output_shape, weights [O, kh, kw, I], x
        w, x = specs[op.inputs[1]].shape, specs[op.inputs[2]].shape
        return int(np.prod(x, dtype=np.int64)) * w[0] * w[1] * w[2]
    w = specs[op.inputs[1]].shape
    if op.code == "CONV_2D":            # weights [O, kh, kw, I]
        return out * w[1] * w[2] * w[3]
    if op.code == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C * multiplier]
        return out * w[1] * w[2]
    return out * w[-1]                  # FULLY_CONNECTED: weights [O, I]


# ---- stages ----------------------------------------------------------------------------------
def stage_ops(graph: LayerGraph, layer_names) -> list[TfliteOp]:
    """The operators a stage imports: its layers' operators plus the weight preparation (constant
    only) operators that produce what they read, in the model's order."""
    model: TfliteModel = graph.model
    own = {n for name in layer_names for n in graph.layer(name).nodes}
    by_output = {o: op for op in model.ops for o in op.outputs}
    chosen = {op.index for op in model.ops_named(own)}
    todo = [i for op in model.ops_named(own) for i in op.inputs if i]
    while todo:
        t = todo.pop()
        op = by_output.get(t)
        if op is not None and op.index not in chosen and op.outputs[0] in model.constants:
            chosen.add(op.index)
            todo.extend(i for i in op.inputs if i)
    return [op for op in model.ops if op.index in chosen]


def stage_key(graph: LayerGraph, stage) -> bytes:
    """What identifies a TFLite stage's build: the model bytes, its operators, inputs, outputs."""
    h = hashlib.sha256(graph.model.data)
    h.update(repr(([op.index for op in stage_ops(graph, stage.layers)],
                   [t.to_json() for t in stage.library_inputs],
                   [t.to_json() for t in stage.library_outputs])).encode())
    return h.digest()


class _SubgraphView:
    """Subgraph 0 with only some of its operators (what TVM's converter iterates over)."""

    def __init__(self, subgraph, indices: list[int]):
        self._sub, self._idx = subgraph, indices

    def OperatorsLength(self) -> int:  # noqa: N802 (the flatbuffer API's names)
        return len(self._idx)

    def Operators(self, k: int):  # noqa: N802
        return self._sub.Operators(self._idx[k])

    def __getattr__(self, name: str):
        return getattr(self._sub, name)


def stage_relax(graph: LayerGraph, stage):
    """The stage as a Relax IRModule: TVM's TFLite converters on the stage's operators only."""
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable, OperatorConverter

    fb = _flatbuffer(graph.model.data)
    view = _SubgraphView(fb.Subgraphs(0), [op.index for op in stage_ops(graph, stage.layers)])
    bb = relax.BlockBuilder()
    with bb.function("main"):
        params = []
        with bb.dataflow():
            table = ExprTable()
            for t in stage.library_inputs:
                var = relax.Var(t.name, relax.TensorType(shape=t.shape, dtype=t.dtype))
                table.set_expr(t.name, var)
                params.append(var)
            converter = OperatorConverter(fb, view, table, bb)
            converter.check_unsupported_ops()
            converter.convert_op_to_relax()
            outs = [table.get_expr(t.name) for t in stage.library_outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result, params)
    mod = bb.get()
    mod["main"] = mod["main"].with_attrs({"num_input": len(params)})
    return relax.transform.FoldConstant()(mod)


# ---- reference --------------------------------------------------------------------------------
def reference(graph: LayerGraph, inputs, names: list[str]) -> dict[str, np.ndarray]:
    """The TFLite interpreter's values of ``names`` (builtin kernels, no delegate, every tensor
    kept)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise ModelError("checking a TFLite model needs its interpreter: "
                             "pip install ai-edge-litert") from None
    it = Interpreter(model_content=graph.model.data, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}
    for name, value in inputs.items():
        it.set_tensor(index[name], np.asarray(value))
    it.invoke()
    return {n: np.array(it.get_tensor(index[n])) for n in names}
