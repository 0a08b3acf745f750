"""The model as layers a user recognises: LayerGraph, Layer, TensorSpec, Cut.

A *layer* is one anchor operator (Conv, Gemm, MaxPool, Add, Concat, ...) together with the
elementwise operators that only post-process its result (BatchNormalization, Relu, Clip, a bias
Add, ...). Layers are named by their anchor's ONNX node name and kept in a topological order.
Edges are tensors. A *cut* splits the layers into those before and those after it; the tensors
crossing it are the ones a pipeline must move between devices.

This module is pure data plus graph algorithms; it does not import TVM or ONNX. The ONNX-specific
work (reading, pinning shapes, grouping nodes into layers, features) lives in ``frontend.py``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .errors import SplitError


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor with a static shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(int(s) for s in d["shape"]))


@dataclass(frozen=True)
class Layer:
    """One layer: an anchor ONNX node plus the elementwise nodes fused into it.

    ``inputs`` are the dynamic tensors it reads (weights excluded), ``outputs`` the tensors it
    produces that something else reads (another layer or the model's output). ``macs`` counts
    multiply-accumulates of Conv/Gemm/MatMul; ``flops`` = 2 x macs + one op per element for
    everything else (pooling counts one op per window element).
    """

    name: str
    op: str
    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    macs: int
    flops: int
    param_bytes: int
    attrs: tuple[tuple[str, Any], ...] = ()

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    @property
    def dtype(self) -> str:
        return self.outputs[0].dtype if self.outputs else "float32"

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


@dataclass(frozen=True)
class Cut:
    """A cut after layer ``index`` (layers ``0..index`` before it) and the tensors crossing it."""

    index: int
    after: str
    tensors: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class LayerGraph:
    """A model as a DAG of layers in topological order.

    ``model`` is the normalised ONNX model (pinned shapes, named nodes) the layers refer to;
    ``node_layer`` maps every ONNX node name to the index of the layer that owns it.
    """

    name: str
    layers: tuple[Layer, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_sha256: str
    model: Any = field(repr=False, compare=False)
    folding: str = ""  # how load folded shape arithmetic: frontend.Folding's method ("" none)

    # ---- lookup -------------------------------------------------------------------------
    @cached_property
    def _index(self) -> dict[str, int]:
        return {layer.name: i for i, layer in enumerate(self.layers)}

    @cached_property
    def node_layer(self) -> dict[str, int]:
        """ONNX node name -> index of the layer that owns it."""
        return {node: i for i, layer in enumerate(self.layers) for node in layer.nodes}

    def index(self, name: str) -> int:
        """Position of the layer called ``name`` (or owning the ONNX node ``name``: a cut can only
        fall between layers); a SplitError lists similar names on a miss."""
        try:
            return self._index[name]
        except KeyError:
            if name in self.node_layer:
                return self.node_layer[name]
            raise SplitError(f"no layer named {name!r} in {self.name}; "
                             f"similar layers: {', '.join(self.similar_names(name))} "
                             f"(run `tvmsplit inspect` to list all {len(self.layers)})") from None

    def similar_names(self, name: str, n: int = 6) -> list[str]:
        import difflib
        names = [layer.name for layer in self.layers]
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.3)
        return close or names[:n]

    def splittable_near(self, k: int, n: int = 4) -> list[str]:
        """Names of up to ``n`` layers near position ``k`` that a cut may follow."""
        last = len(self.layers) - 1
        order = sorted(range(last), key=lambda i: abs(i - k))
        return [self.layers[i].name for i in order[:n]]

    def layer(self, name: str) -> Layer:
        return self.layers[self.index(name)]

    @cached_property
    def producer(self) -> dict[str, int]:
        """Tensor name -> index of the layer producing it (graph inputs map to -1)."""
        prod = {t.name: -1 for t in self.inputs}
        for i, layer in enumerate(self.layers):
            for t in layer.outputs:
                prod[t.name] = i
        return prod

    @cached_property
    def tensors(self) -> dict[str, TensorSpec]:
        specs = {t.name: t for t in self.inputs}
        for layer in self.layers:
            specs.update((t.name, t) for t in layer.outputs)
        return specs

    @cached_property
    def edges(self) -> tuple[tuple[int, int, TensorSpec], ...]:
        """(producer index, consumer index, tensor); graph inputs have producer -1."""
        out = []
        for j, layer in enumerate(self.layers):
            for t in layer.inputs:
                out.append((self.producer[t.name], j, t))
        return tuple(out)

    @cached_property
    def predecessors(self) -> tuple[frozenset[int], ...]:
        preds: list[set[int]] = [set() for _ in self.layers]
        for i, j, _ in self.edges:
            if i >= 0:
                preds[j].add(i)
        return tuple(frozenset(p) for p in preds)

    @property
    def input_bytes(self) -> int:
        return sum(t.nbytes for t in self.inputs)

    @property
    def param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self.layers)

    # ---- cuts ---------------------------------------------------------------------------
    def crossing(self, before: Iterable[int]) -> tuple[TensorSpec, ...]:
        """Tensors that must move from the layers in ``before`` (plus the graph inputs) to the rest.

        ``before`` must be downward closed (every predecessor of a member is a member). A tensor
        crosses when it is produced before the cut and read after it, or when it is a model output
        produced before the cut (it travels to the end of the pipeline). Graph inputs read after
        the cut cross too. Order: graph inputs first, then by producing layer, then output order.
        """
        first = set(before)
        self._check_closed(first)
        seen: dict[str, TensorSpec] = {}
        for i, j, t in sorted(self.edges, key=lambda e: e[0]):
            if (i < 0 or i in first) and j not in first:
                seen.setdefault(t.name, t)
        for t in self.outputs:
            p = self.producer[t.name]
            if (p < 0 or p in first) and len(first) < len(self.layers):
                seen.setdefault(t.name, t)
        order = {name: k for k, name in enumerate(self.producer)}
        return tuple(sorted(seen.values(), key=lambda t: (self.producer[t.name], order[t.name])))

    def _check_closed(self, members: set[int]) -> None:
        for j in members:
            if not 0 <= j < len(self.layers):
                raise SplitError(f"layer index {j} out of range 0..{len(self.layers) - 1}")
            missing = self.predecessors[j] - members
            if missing:
                raise SplitError(f"layer {self.layers[j].name!r} would run before its input(s) from "
                                 f"{', '.join(self.layers[m].name for m in sorted(missing))}; "
                                 "a stage may only read tensors from itself or earlier stages")

    def cut_after(self, name_or_index: str | int) -> Cut:
        """The cut after a layer in topological order (all layers up to and including it)."""
        k = self.index(name_or_index) if isinstance(name_or_index, str) else int(name_or_index)
        if not 0 <= k < len(self.layers) - 1:
            raise SplitError(f"cannot cut after the last layer {self.layers[-1].name!r}; "
                             f"choose a layer before it, e.g. {', '.join(self.splittable_near(k))}")
        return Cut(k, self.layers[k].name, self.crossing(range(k + 1)))

    @cached_property
    def cut_candidates(self) -> tuple[Cut, ...]:
        """Every cut between consecutive layers of the topological order."""
        return tuple(self.cut_after(k) for k in range(len(self.layers) - 1))

    def good_cut(self, cut: Cut) -> bool:
        """A cut worth considering: it moves fewer bytes than the one before it and than the input."""
        prev = self.cut_candidates[cut.index - 1].nbytes if cut.index > 0 else self.input_bytes
        return cut.nbytes < prev and cut.nbytes <= self.input_bytes

    def topological_cuts(self, limit: int = 100_000) -> Iterator[frozenset[int]]:
        """Every downward-closed proper, non-empty set of layers (every topological cut of the DAG).

        Their number grows exponentially with the DAG's width; this is for oracles on small
        graphs. Raises SplitError when more than ``limit`` would be produced.
        """
        n = len(self.layers)
        succs: list[set[int]] = [set() for _ in range(n)]
        for j, preds in enumerate(self.predecessors):
            for i in preds:
                succs[i].add(j)
        seen: set[frozenset[int]] = set()
        stack: list[frozenset[int]] = [frozenset()]
        count = 0
        while stack:
            ideal = stack.pop()
            for j in range(n):
                if j not in ideal and self.predecessors[j] <= ideal:
                    nxt = ideal | {j}
                    if nxt not in seen and len(nxt) < n:
                        seen.add(nxt)
                        stack.append(nxt)
                        count += 1
                        if count > limit:
                            raise SplitError(f"{self.name} has more than {limit} topological cuts; "
                                             "enumerate them only on small graphs")
                        yield nxt


@dataclass(frozen=True)
class Grouping:
    """Ops grouped into layers (``group_layers``): ``groups[k]`` the ops of layer k, in order;
    ``producer[t]`` the layer that writes tensor t; ``consumers[t]`` the layers that read it."""

    groups: list
    producer: dict
    consumers: dict


def group_layers(ops, inputs_of, outputs_of, is_follower, is_constant, joining=None) -> Grouping:
    """The one layering rule of every frontend (ONNX, TFLite): an op that ``is_follower`` and
    whose dynamic (non-constant) inputs all come from one layer joins that layer; any other op
    starts a new one. ``joining(op)`` returns ops to put in the op's layer just before it (e.g.
    TFLite weight preparation, which joins its first consumer)."""
    producer: dict[str, int] = {}
    groups: list[list] = []
    for op in ops:
        owners = {producer.get(i, -1) for i in inputs_of(op) if i and not is_constant(i)}
        if is_follower(op) and len(owners) == 1 and -1 not in owners:
            k = owners.pop()
        else:
            k = len(groups)
            groups.append([])
        if joining is not None:
            groups[k].extend(joining(op))
        groups[k].append(op)
        for o in outputs_of(op):
            if o:
                producer[o] = k
    consumers: dict[str, set[int]] = {}
    for k, group in enumerate(groups):
        for op in group:
            for i in inputs_of(op):
                if i and not is_constant(i):
                    consumers.setdefault(i, set()).add(k)
    return Grouping(groups, producer, consumers)
