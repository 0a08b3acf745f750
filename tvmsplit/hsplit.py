"""Horizontal splits (HyPS): a layer too big for any device becomes H parts plus a merge.

``split_horizontally(graph, layer, parts)`` rewrites the ONNX model: the layer's anchor node (a
Gemm or an ungrouped Conv) is replaced by ``parts`` nodes named ``<layer>_h0 .. _h{parts-1}``,
each computing a contiguous slice of the output channels with only its slice of the weights, and a
``Concat`` named ``<layer>_merge`` that restores the original output tensor; the layer's followers
(bias-free BatchNormalization, Relu, ...) then run after the merge. The result is an ordinary
model, so the vertical planners place the H-parts like any other layers (on different devices
when memory demands it) and the split/build/pipeline path runs them unchanged.

``plan_horizontal_parts`` finds the fewest parts per oversized layer for a memory cap.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import SplitError
from .frontend import load
from .graph import LayerGraph


def splittable(graph: LayerGraph, name: str) -> bool:
    layer = graph.layer(name)
    return layer.op == "Gemm" or (layer.op == "Conv" and int(layer.attr("group", 1)) == 1)


def part_bytes(graph: LayerGraph, name: str, parts: int) -> int:
    """Memory one H-part needs: its share of the weights + its input + its share of the output."""
    layer = graph.layer(name)
    return (math.ceil(layer.param_bytes / parts) + sum(t.nbytes for t in layer.inputs)
            + math.ceil(layer.output_bytes / parts))


def fewest_parts(graph: LayerGraph, name: str, cap_bytes: int) -> int:
    """The fewest H-parts of layer ``name`` that each fit ``cap_bytes``; SplitError if none do."""
    layer = graph.layer(name)
    channels = _out_channels(graph, name)
    floor = sum(t.nbytes for t in layer.inputs)
    if floor >= cap_bytes:
        raise SplitError(f"layer {name!r} cannot fit {cap_bytes} bytes even when split: its input "
                         f"alone needs {floor} bytes")
    parts = max(1, math.ceil((layer.param_bytes + layer.output_bytes) / (cap_bytes - floor)))
    while parts <= channels and part_bytes(graph, name, parts) > cap_bytes:
        parts += 1
    if parts > channels:
        raise SplitError(f"layer {name!r} has {channels} output channels; no split into at most "
                         f"that many parts fits {cap_bytes} bytes")
    return parts


def plan_horizontal_parts(graph: LayerGraph, cap_bytes: int) -> dict[str, int]:
    """Layers whose own memory exceeds ``cap_bytes`` -> the fewest parts that fit it."""
    from .partition.problem import PlanningError, layer_activation_bytes

    out, problems = {}, []
    for i, layer in enumerate(graph.layers):
        need = layer.param_bytes + layer_activation_bytes(graph, i)
        if need <= cap_bytes:
            continue
        if not splittable(graph, layer.name):
            problems.append(f"{layer.name} ({layer.op}) needs {need} bytes > cap {cap_bytes} and "
                            "cannot be split horizontally")
            continue
        out[layer.name] = fewest_parts(graph, layer.name, cap_bytes)
    if problems:
        raise PlanningError("; ".join(problems))
    return out


def split_horizontally(graph: LayerGraph, splits: dict[str, int]) -> LayerGraph:
    """A new LayerGraph with each layer in ``splits`` replaced by that many H-parts and a merge."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    inits = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    for node in model.graph.node:
        owner = graph.layers[graph.node_layer[node.name]]
        if owner.name not in splits or node.name != owner.nodes[0]:
            new_nodes.append(node)
            continue
        parts = splits[owner.name]
        if not splittable(graph, owner.name):
            raise SplitError(f"layer {owner.name!r} ({owner.op}) cannot be split horizontally; "
                             "only Gemm and ungrouped Conv can")
        new_nodes.extend(_rewrite(node, parts, inits, model))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    out = load(model, name=graph.name)
    return _with_hash(out, graph.model_sha256)


def _with_hash(graph: LayerGraph, sha: str) -> LayerGraph:
    from dataclasses import replace

    return replace(graph, model_sha256=sha)


def _out_channels(graph: LayerGraph, name: str) -> int:
    layer = graph.layer(name)
    w = layer.attr("weight_shape")
    if layer.op == "Gemm":
        return int(w[0] if layer.attr("transB", 0) else w[1])
    return int(w[0])


def _rewrite(node: onnx.NodeProto, parts: int, inits: dict, model: onnx.ModelProto) -> list:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = numpy_helper.to_array(inits[node.input[1]])
    bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Gemm":
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise SplitError(f"Gemm {node.name!r} with alpha/beta != 1 cannot be split horizontally")
        axis_w = 0 if attrs.get("transB", 0) else 1
    else:
        axis_w = 0
    chunks = np.array_split(np.arange(w.shape[axis_w]), parts)
    nodes, outs = [], []
    for h, idx in enumerate(chunks):
        wname, bname, oname = f"{node.name}_h{h}.weight", f"{node.name}_h{h}.bias", f"{node.output[0]}_h{h}"
        model.graph.initializer.append(numpy_helper.from_array(np.take(w, idx, axis=axis_w), wname))
        inputs = [node.input[0], wname]
        if bias is not None:
            part_bias = bias if bias.size == 1 else bias[idx]  # a broadcast scalar stays whole
            model.graph.initializer.append(numpy_helper.from_array(part_bias, bname))
            inputs.append(bname)
        nodes.append(helper.make_node(node.op_type, inputs, [oname], name=f"{node.name}_h{h}", **attrs))
        outs.append(oname)
    nodes.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{node.name}_merge", axis=1))
    return nodes
