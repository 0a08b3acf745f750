"""Control flow in ONNX graphs: inline constant ``If``s, find operators inside subgraphs.

- ``inline_constant_ifs(model)``: an ``If`` whose condition is an initializer (it folded to a
  constant once the input shapes were pinned, e.g. ``If(Equal(Size(x), 0))``) is replaced by the
  nodes of the branch it takes. Branch-local tensor and node names get the prefix ``<if node>/``
  so they cannot clash with the outer graph; the branch's outputs become the ``If``'s outputs
  through ``Identity`` nodes (so they join the layer that produced them).
- ``subgraph_nodes(node)``: every node inside a node's graph attributes (``If`` branches, ``Loop``
  and ``Scan`` bodies), recursively, each with the chain of control-flow nodes it sits in, so the
  unsupported-operator report can name operators inside bodies too.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def subgraph_nodes(node: onnx.NodeProto, where: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    """(inner node, "If 'name' / Loop 'body'") for every node nested in ``node``'s subgraphs."""
    here = f"{where} / " if where else ""
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            label = f"{here}{node.op_type} {node.name!r} {attr.name}"
            for inner in g.node:
                yield inner, label
                yield from subgraph_nodes(inner, label)


def inline_constant_ifs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every top-level ``If`` on a constant condition replaced by its taken branch;
    returns (model, number inlined)."""
    consts = {init.name: init for init in model.graph.initializer}
    nodes, inits, count = [], [], 0
    for node in model.graph.node:
        if node.op_type != "If" or node.input[0] not in consts:
            nodes.append(node)
            continue
        cond = bool(np.asarray(numpy_helper.to_array(consts[node.input[0]])).reshape(-1)[0])
        branch = next(a.g for a in node.attribute
                      if a.name == ("then_branch" if cond else "else_branch"))
        new_nodes, new_inits = _inline(node, branch)
        nodes.extend(new_nodes)
        inits.extend(new_inits)
        count += 1
    if not count:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out, count


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto):
    prefix = f"{node.name or 'If'}/"
    local = {t.name for t in branch.initializer} | {o for n in branch.node for o in n.output if o}

    def rename(name: str) -> str:
        return prefix + name if name in local else name

    inits = []
    for t in branch.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = rename(t.name)
        inits.append(c)
    nodes = []
    for i, n in enumerate(branch.node):
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = prefix + (n.name or f"{n.op_type}_{i}")
        c.input[:] = [rename(x) if x else x for x in n.input]
        c.output[:] = [rename(x) if x else x for x in n.output]
        for attr in c.attribute:  # nested subgraphs may read this branch's tensors
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                _rename_reads(g, rename)
        nodes.append(c)
    for k, (out, bout) in enumerate(zip(node.output, branch.output)):
        if out:
            nodes.append(helper.make_node("Identity", [rename(bout.name)], [out],
                                          name=f"{prefix}output_{k}"))
    return nodes, inits


def _rename_reads(g: onnx.GraphProto, rename) -> None:
    inner = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} \
        | {i.name for i in g.input}
    for n in g.node:
        n.input[:] = [x if (not x or x in inner) else rename(x) for x in n.input]
        for attr in n.attribute:
            for sg in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                _rename_reads(sg, lambda x: x if x in inner else rename(x))
    for o in g.output:
        if o.name not in inner:
            o.name = rename(o.name)
