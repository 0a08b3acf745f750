"""The opt-in onnxruntime fallback: stages holding operators TVM cannot import run under
onnxruntime in their worker.

TVM 0.27's Relax ONNX importer has no converter for some operators (``Loop``, ``Scan``, an ``If``
whose condition does not fold, ``LpNormalization``, ``ConvInteger``, ``com.microsoft`` ops, ...).
By default such a model is refused at load (``frontend.check_supported``, every operator listed).
With ``fallback="onnxruntime"`` (CLI ``--fallback onnxruntime``):

- ``frontend.load`` accepts the model: the LayerGraph needs only ONNX (shape inference, layer
  grouping, features); the Relax import happens per stage, at build time, and only for the stages
  TVM runs. ``node_reads`` gives a node's inputs including the outer-scope tensors its subgraphs
  (``If`` branches, ``Loop``/``Scan`` bodies) read, so such a node's layer takes them as inputs;
- ``fallback_layers(graph)`` names the layers holding an operator TVM cannot import;
  ``stage_runtimes`` gives each stage of a plan its runtime (``RUNTIMES``): ``"onnxruntime"`` when
  it holds such a layer, else ``"tvm"``; without the fallback a stage that needs it is refused
  with the operators listed (``UnsupportedOpsError``);
- ``build.build_bundle`` writes such a stage's ONNX sub-model (``compile.export_onnx_stage``) as its
  "library" (``stage<i>-<sha12>.onnx``, checksummed like any library); the manifest says each
  stage's ``"runtime"`` (bundle schema version 4, written only when a stage falls back);
- the stage worker runs it with ``runtime.stage.OnnxStageRunner`` (``runner_for`` picks it):
  the same wire format, routes and trace entries as a TVM stage. The device needs onnxruntime
  installed; the native worker refuses such bundles (use the Python worker).

The fallback stage runs the whole stage under onnxruntime, not only its unsupported layers: to
keep the rest on TVM, cut before and after them (``inspect --fallback onnxruntime`` marks them).
"""
from __future__ import annotations

from collections.abc import Iterable

from .errors import SplitError, TvmsplitError, UnsupportedOpsError

FALLBACKS = ("onnxruntime",)
RUNTIMES = ("tvm", "onnxruntime")  # what a bundle stage's "runtime" may say


def check_fallback(fallback: str | None) -> str | None:
    """``fallback`` as given (None or "" for none, else one of ``FALLBACKS``); TvmsplitError on
    another value."""
    if not fallback:
        return None
    if fallback not in FALLBACKS:
        raise TvmsplitError(f"unknown fallback {fallback!r}; the one fallback is "
                            f"{', '.join(FALLBACKS)} (--fallback onnxruntime), or none")
    return fallback


def supported_ops() -> frozenset[str]:
    """ONNX operator types TVM 0.27's Relax importer converts (``frontend.supported_ops``)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())


def unsupported_op(node, ok: frozenset[str]) -> str | None:
    """The operator of ``node`` as listed when TVM cannot import it (``domain::Op`` outside the
    default domain), else None; ``ok`` is ``supported_ops()``. Subgraphs are not looked into;
    LSTM/GRU/RNN count as supported (``recurrent`` rewrites them)."""
    from .recurrent import RECURRENT_OPS

    domain = node.domain or "ai.onnx"
    if domain != "ai.onnx":
        return f"{domain}::{node.op_type}"
    if node.op_type in ok or node.op_type in RECURRENT_OPS:
        return None
    return node.op_type


def node_reads(node) -> list[str]:
    """``node``'s inputs followed by every tensor of the enclosing graph that its subgraphs read
    (outer-scope names of ``If`` branches and ``Loop``/``Scan`` bodies, nested ones included)."""
    reads = list(node.input)
    if node.attribute:
        reads += [name for name in _outer_reads(node) if name not in reads]
    return reads


def _outer_reads(node) -> list[str]:
    import onnx

    out: dict[str, None] = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = list(attr.graphs)
        else:
            continue
        for g in graphs:
            local = ({i.name for i in g.input} | {t.name for t in g.initializer}
                     | {t.values.name for t in g.sparse_initializer}
                     | {o for n in g.node for o in n.output})
            for inner in g.node:
                out.update((i, None) for i in node_reads(inner) if i and i not in local)
            out.update((o.name, None) for o in g.output if o.name not in local)
    return list(out)


def fallback_layers(graph) -> dict[str, tuple[str, ...]]:
    """Layer name -> the operators in it that TVM's importer cannot convert (inside subgraphs
    too; a top-level ``If`` left after loading is one: its condition does not fold), for every
    layer that has some. Empty for a TFLite graph. Imports TVM (the importer's convert map)."""
    from . import controlflow, recurrent, tflitefront

    if isinstance(graph.model, tflitefront.TfliteModel):
        return {}
    ok = supported_ops()
    model = graph.model
    by_node: dict[str, list[str]] = {}
    for node in model.graph.node:
        ops = ["If"] if node.op_type == "If" else [op for op in [unsupported_op(node, ok)] if op]
        ops += [op for inner, _ in controlflow.subgraph_nodes(node)
                if (op := unsupported_op(inner, ok))]
        if ops:
            by_node[node.name] = ops
    recurrent_names = [n.name for n in model.graph.node if n.op_type in recurrent.RECURRENT_OPS]
    for op, labels in recurrent.problems(model).items():  # labels: "<node> (why)"
        for label in labels:
            name = next((n for n in recurrent_names if label.startswith(f"{n} (")), None)
            if name is not None:
                by_node.setdefault(name, []).append(op)
    out = {}
    for layer in graph.layers:
        ops = tuple(dict.fromkeys(op for n in layer.nodes for op in by_node.get(n, ())))
        if ops:
            out[layer.name] = ops
    return out


def stage_runtimes(graph, plan, fallback: str | None,
                   layers: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """Each stage's runtime (one of ``RUNTIMES``): ``"onnxruntime"`` for a stage holding a layer
    of ``fallback_layers`` (given as ``layers``, or computed), else ``"tvm"``.

    Without ``fallback`` such a stage raises UnsupportedOpsError listing its operators and
    nodes (the message names ``--fallback onnxruntime``); a sequential stage (HyPS segments) that
    would fall back raises SplitError."""
    fallback = check_fallback(fallback)
    layers = fallback_layers(graph) if layers is None else layers
    runtimes, refused = [], {}
    for stage in plan.stages:
        held = [name for name in stage.layers if name in layers]
        if not held:
            runtimes.append("tvm")
            continue
        if stage.segments:
            raise SplitError(f"stage {stage.index} is sequential (HyPS segments) and holds layers "
                             f"TVM cannot import ({', '.join(held[:3])}); a fallback stage runs "
                             "whole under onnxruntime: plan it without --sequential")
        for name in held:
            for op in layers[name]:
                refused.setdefault(op, []).extend(graph.layer(name).nodes[:1])
        runtimes.append(fallback or "tvm")
    if refused and not fallback:
        raise UnsupportedOpsError(refused)
    return tuple(runtimes)


def describe(runtimes: Iterable[str]) -> str:
    """``"stage 1 runs under onnxruntime"``-style summary, "" when every stage is TVM's."""
    fall = [str(i) for i, r in enumerate(runtimes) if r != "tvm"]
    if not fall:
        return ""
    return (f"stage{'s' if len(fall) > 1 else ''} {', '.join(fall)} run{'' if len(fall) > 1 else 's'}"
            " under onnxruntime (--fallback onnxruntime: ops TVM cannot import)")


def complete_shapes(model):
    """``model`` (shapes inferred by onnx, inputs pinned) with the static shapes onnx could not
    infer filled in from onnxruntime: ``Loop``-carried values and the tensors after them.

    The model is run twice on different random inputs of the pinned shapes with every tensor
    lacking a static shape as an extra output; the shapes seen are added as ``value_info``. A
    tensor whose shape differs between the runs depends on the input's values (``NonZero``, a
    ``Loop`` with a computed trip count), which no split can carry: ShapeError names it."""
    import numpy as np
    import onnx
    from onnx import helper

    from .check import random_inputs
    from .errors import ShapeError

    g = model.graph
    inits = {t.name for t in g.initializer}
    known = {vi.name for vi in [*g.input, *g.value_info, *g.output] if _static(vi)}
    missing = [o for n in g.node for o in n.output if o and o not in known and o not in inits]
    if not missing:
        return model
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in missing
                              if name not in have)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        feeds = [random_inputs(_input_specs(model), seed) for seed in (0, 1)]
        seen = [session.run(missing, feed) for feed in feeds]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are of its own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeError(f"cannot infer static shapes of {', '.join(missing[:5])}: onnx's shape "
                         f"inference leaves them open and onnxruntime failed on the model "
                         f"({first[:300]})") from None
    varying = [name for name, a, b in zip(missing, *seen) if np.shape(a) != np.shape(b)]
    if varying:
        raise ShapeError(f"the shape of {', '.join(varying[:5])} depends on the input's values "
                         "(two random inputs gave different shapes); tvmsplit needs static "
                         "shapes to split a model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, value in zip(missing, seen[0]):
        arr = np.asarray(value)
        out.graph.value_info.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
    return out


def _static(vi) -> bool:
    tt = vi.type.tensor_type
    return (tt.HasField("shape") and tt.elem_type != 0
            and all(d.HasField("dim_value") for d in tt.shape.dim))


def _input_specs(model):
    """The model's (pinned, static) graph inputs as TensorSpecs."""
    import numpy as np
    from onnx import helper

    from .graph import TensorSpec

    inits = {t.name for t in model.graph.initializer}
    return tuple(TensorSpec(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(
        vi.type.tensor_type.elem_type)).name, tuple(d.dim_value for d in vi.type.tensor_type.shape.dim))
        for vi in model.graph.input if vi.name not in inits)
