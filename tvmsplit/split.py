"""Plan -> one ONNX sub-model and one Relax module per stage.

A plan assigns every layer to a stage, numbered so that data only flows to higher numbers. A
stage *receives* ``inputs``, *sends* ``outputs``, and its compiled library computes
``library_outputs`` from ``library_inputs``; every output it does not compute is forwarded
unchanged from its inputs. Where tensors go is explicit: ``StagePlan.sends`` lists one
:class:`Route` per destination (another stage, or ``CLIENT`` for the model outputs) and
``Plan.entry`` the routes of the model inputs from the client. Two routings:

- ``"chain"`` (default): stage s sends to s+1 only. Between them travel the tensors produced in
  stages <= s (or model inputs) that are read in a later stage, plus model outputs already
  produced, so a skip connection jumping over a whole stage is forwarded through it. This is what
  a path of devices (end -> edge -> cloud) does, and what the partition cost model prices.
- ``"direct"``: every tensor goes straight from the stage that produces it to each stage that
  reads it, and model outputs straight to the client. The stages form a DAG: stages with no path
  between them run at the same time (HyPS H-parts on two devices), and a stage with several
  senders gathers their messages by request id before it runs.

The split is done on the normalised ONNX graph: each stage's nodes with only the initializers they
use, imported into Relax on its own (``from_onnx(keep_params_in_input=False)`` inlines them), so
each stage carries exactly its own weights.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SplitError
from .graph import LayerGraph, TensorSpec

CLIENT = -1  # the end of a route that is not a stage: model inputs come from it, outputs go to it
ROUTINGS = ("chain", "direct")


@dataclass(frozen=True)
class Route:
    """Tensors (by name, in message order) sent to stage ``to`` (``CLIENT``: back to the client)."""

    to: int
    tensors: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "tensors": list(self.tensors)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Route":
        return cls(int(d["to"]), tuple(str(n) for n in d["tensors"]))


@dataclass(frozen=True)
class StagePlan:
    """One stage: where it runs, which layers it holds, what it receives, computes and sends."""

    index: int
    target: str
    layers: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    library_inputs: tuple[TensorSpec, ...]
    library_outputs: tuple[TensorSpec, ...]
    param_bytes: int
    flops: int
    sends: tuple[Route, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "target": self.target, "layers": list(self.layers),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "library_inputs": [t.to_json() for t in self.library_inputs],
            "library_outputs": [t.to_json() for t in self.library_outputs],
            "param_bytes": self.param_bytes, "flops": self.flops,
            "sends": [r.to_json() for r in self.sends],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StagePlan":
        specs = lambda key: tuple(TensorSpec.from_json(t) for t in d[key])  # noqa: E731
        return cls(int(d["index"]), str(d["target"]), tuple(d["layers"]), specs("inputs"),
                   specs("outputs"), specs("library_inputs"), specs("library_outputs"),
                   int(d["param_bytes"]), int(d["flops"]),
                   tuple(Route.from_json(r) for r in d.get("sends", ())))


@dataclass(frozen=True)
class Plan:
    """Stages in topological order; ``entry``: what the client sends to which stage. For a chain,
    ``cuts[s]`` are the tensors sent from stage s to stage s+1."""

    model: str
    model_sha256: str
    stages: tuple[StagePlan, ...]
    entry: tuple[Route, ...] = ()

    def __post_init__(self):
        if not self.entry and self.stages and not any(s.sends for s in self.stages):
            # a plan saved before routes existed: the chain it always was
            object.__setattr__(self, "stages", _chain_routes(self.stages))
            object.__setattr__(self, "entry", (Route(0, tuple(t.name for t in self.stages[0].inputs)),))

    @property
    def is_chain(self) -> bool:
        """True when every stage sends only to the next one (and the last only to the client)."""
        last = len(self.stages) - 1
        return (tuple(r.to for r in self.entry) == (0,)
                and all(tuple(r.to for r in s.sends) == ((s.index + 1,) if s.index < last else (CLIENT,))
                        for s in self.stages))

    @property
    def cuts(self) -> tuple[tuple[TensorSpec, ...], ...]:
        if not self.is_chain:
            raise SplitError("a plan with direct routes has no chain of cuts; see each stage's sends")
        return tuple(s.outputs for s in self.stages[:-1])

    def senders(self, index: int) -> tuple[tuple[int, Route], ...]:
        """``(source, route)`` for every route into stage ``index`` (source ``CLIENT``: the
        client's entry), in source order."""
        into = [(CLIENT, r) for r in self.entry if r.to == index]
        into += [(s.index, r) for s in self.stages for r in s.sends if r.to == index]
        return tuple(into)

    def route_problems(self, inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
        """Why the routes cannot carry a request from the model ``inputs`` to its ``outputs``
        (empty when they can): every stage must receive each of its inputs exactly once, from an
        earlier stage or the client, and send exactly its outputs; the client sends only model
        inputs and receives each model output exactly once."""
        problems, n = [], len(self.stages)
        for src, routes in [(CLIENT, self.entry)] + [(s.index, s.sends) for s in self.stages]:
            dests = [r.to for r in routes]
            if len(set(dests)) != len(dests):
                problems.append(f"{end_name(src)} has two routes to one destination: {dests}")
            for r in routes:
                if not (r.to == CLIENT or src < r.to < n) or (src == CLIENT and r.to == CLIENT):
                    problems.append(f"{end_name(src)} sends to {end_name(r.to)}: routes go to a "
                                    "later stage or to the client")
                if not r.tensors:
                    problems.append(f"{end_name(src)} has an empty route to {end_name(r.to)}")
        sent = [n for r in self.entry for n in r.tensors]
        if not set(sent) <= set(inputs):
            problems.append(f"the client sends {sorted(set(sent) - set(inputs))}, which are not "
                            "model inputs")
        for s in self.stages:
            got = [name for _, r in self.senders(s.index) for name in r.tensors]
            want = [t.name for t in s.inputs]
            if sorted(got) != sorted(want):
                problems.append(f"stage {s.index} receives {sorted(got)} but takes {sorted(want)}")
            if {n for r in s.sends for n in r.tensors} != {t.name for t in s.outputs}:
                problems.append(f"stage {s.index} sends other tensors than its outputs")
        back = [name for _, r in self.senders(CLIENT) for name in r.tensors]
        if sorted(back) != sorted(outputs):
            problems.append(f"the client receives {sorted(back)}, the model outputs are "
                            f"{sorted(outputs)}")
        return problems

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_sha256": self.model_sha256,
                "stages": [s.to_json() for s in self.stages],
                "entry": [r.to_json() for r in self.entry]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Plan":
        return cls(str(d["model"]), str(d["model_sha256"]),
                   tuple(StagePlan.from_json(s) for s in d["stages"]),
                   tuple(Route.from_json(r) for r in d.get("entry", ())))


def end_name(index: int) -> str:
    """``"stage N"``, or ``"the client"`` for ``CLIENT``: the ends of a route in messages."""
    return "the client" if index == CLIENT else f"stage {index}"


def _chain_routes(stages: Sequence[StagePlan]) -> tuple[StagePlan, ...]:
    """Each stage sends all its outputs to the next one, the last to the client."""
    from dataclasses import replace

    last = len(stages) - 1
    return tuple(replace(s, sends=(Route(s.index + 1 if s.index < last else CLIENT,
                                         tuple(t.name for t in s.outputs)),))
                 for s in stages)


def plan_split(graph: LayerGraph, split_at: Sequence[str] = (), targets: Sequence[str] = ("x86_64",),
               assignment: Mapping[str, int] | None = None, routing: str = "chain") -> Plan:
    """A plan from user-chosen cuts (after each named layer, in topological order) or from an
    explicit layer -> stage assignment (any downward-closed split, e.g. inside a branch).

    ``targets`` names one target for every stage, or one for all of them. ``routing`` is
    ``"chain"`` or ``"direct"`` (see the module doc).
    """
    if assignment is not None and split_at:
        raise SplitError("give either split points or a layer assignment, not both")
    if routing not in ROUTINGS:
        raise SplitError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
    if assignment is None:
        stage_of = _assignment_from_split_points(graph, split_at)
    else:
        stage_of = _check_assignment(graph, assignment)
    n_stages = max(stage_of) + 1
    targets = list(targets)
    if len(targets) == 1:
        targets *= n_stages
    if len(targets) != n_stages:
        raise SplitError(f"{n_stages} stage(s) need {n_stages} target(s) (or one for all); "
                         f"got {len(targets)}: {', '.join(targets)}")
    if routing == "direct":
        return _direct_plan(graph, stage_of, targets)
    stages = []
    for s in range(n_stages):
        members = [k for k, st in enumerate(stage_of) if st == s]
        before = [k for k, st in enumerate(stage_of) if st < s]
        upto = [k for k, st in enumerate(stage_of) if st <= s]
        inputs = graph.crossing(before) if before else graph.inputs
        outputs = graph.crossing(upto) if s < n_stages - 1 else graph.outputs
        produced = {t.name for k in members for t in graph.layers[k].outputs}
        read = {t.name for k in members for t in graph.layers[k].inputs}
        stages.append(StagePlan(
            index=s, target=targets[s], layers=tuple(graph.layers[k].name for k in members),
            inputs=tuple(inputs), outputs=tuple(outputs),
            library_inputs=tuple(t for t in inputs if t.name in read),
            library_outputs=tuple(t for t in outputs if t.name in produced),
            param_bytes=sum(graph.layers[k].param_bytes for k in members),
            flops=sum(graph.layers[k].flops for k in members)))
    return Plan(graph.name, graph.model_sha256, _chain_routes(stages),
                (Route(0, tuple(t.name for t in stages[0].inputs)),))


def _direct_plan(graph: LayerGraph, stage_of: Sequence[int], targets: Sequence[str]) -> Plan:
    """Every tensor from its producer's stage (``CLIENT`` for model inputs) straight to each stage
    that reads it; model outputs straight to the client."""
    stage_of_producer = lambda i: CLIENT if i < 0 else stage_of[i]  # noqa: E731
    routes: dict[tuple[int, int], dict[str, TensorSpec]] = {}  # (source, destination) -> tensors
    for i, j, t in sorted(graph.edges, key=lambda e: (e[0], e[1])):
        src, dst = stage_of_producer(i), stage_of[j]
        if src != dst:
            routes.setdefault((src, dst), {}).setdefault(t.name, t)
    for t in graph.outputs:
        routes.setdefault((stage_of_producer(graph.producer[t.name]), CLIENT), {}).setdefault(t.name, t)

    def sends(src: int) -> tuple[Route, ...]:
        dests = sorted((d for s, d in routes if s == src), key=lambda d: (d == CLIENT, d))
        return tuple(Route(d, tuple(routes[src, d])) for d in dests)

    stages = []
    for s in range(max(stage_of) + 1):
        members = [k for k, st in enumerate(stage_of) if st == s]
        inputs = {n: t for (src, dst), ts in sorted(routes.items()) if dst == s for n, t in ts.items()}
        outputs = {n: t for (src, dst), ts in routes.items() if src == s for n, t in ts.items()}
        order = {layer_out.name: k for k in members for layer_out in graph.layers[k].outputs}
        outputs = tuple(sorted(outputs.values(), key=lambda t: order[t.name]))
        stages.append(StagePlan(
            index=s, target=targets[s], layers=tuple(graph.layers[k].name for k in members),
            inputs=tuple(inputs.values()), outputs=outputs, library_inputs=tuple(inputs.values()),
            library_outputs=outputs,
            param_bytes=sum(graph.layers[k].param_bytes for k in members),
            flops=sum(graph.layers[k].flops for k in members), sends=sends(s)))
    return Plan(graph.name, graph.model_sha256, tuple(stages), sends(CLIENT))


def _assignment_from_split_points(graph: LayerGraph, split_at: Sequence[str]) -> list[int]:
    names = [s.strip() for s in split_at if s.strip()]
    if len(set(names)) != len(names):
        raise SplitError(f"split points repeat: {', '.join(names)}")
    points = sorted(graph.index(name) for name in names)
    if len(set(points)) != len(points):
        raise SplitError(f"split points {', '.join(names)} name the same layer twice")
    last = len(graph.layers) - 1
    for k in points:
        if k == last:
            raise SplitError(f"cannot split after the last layer {graph.layers[k].name!r}; "
                             f"split after an earlier layer, e.g. {', '.join(graph.splittable_near(k))}")
    stage_of, s = [], 0
    for k in range(len(graph.layers)):
        stage_of.append(s)
        if k in points:
            s += 1
    return stage_of


def _check_assignment(graph: LayerGraph, assignment: Mapping[str, int]) -> list[int]:
    missing = [layer.name for layer in graph.layers if layer.name not in assignment]
    unknown = [name for name in assignment if name not in graph._index]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"layers without a stage: {', '.join(missing[:8])}")
        if unknown:
            parts.append(f"unknown layers: {', '.join(unknown[:8])}")
        raise SplitError("; ".join(parts))
    stage_of = [int(assignment[layer.name]) for layer in graph.layers]
    used = sorted(set(stage_of))
    if used != list(range(len(used))):
        raise SplitError(f"stages must be numbered 0..k-1 with none empty; got {used}")
    for i, j, _ in graph.edges:
        if i >= 0 and stage_of[i] > stage_of[j]:
            raise SplitError(f"layer {graph.layers[j].name!r} (stage {stage_of[j]}) reads the output "
                             f"of {graph.layers[i].name!r} (stage {stage_of[i]}); "
                             "a stage may only read from itself or earlier stages")
    return stage_of


def stage_onnx(graph: LayerGraph, stage: StagePlan):
    """The ONNX sub-model computing ``stage.library_outputs`` from ``stage.library_inputs``."""
    from onnx import helper

    model = graph.model
    wanted = {n for name in stage.layers for n in graph.layer(name).nodes}
    nodes = [n for n in model.graph.node if n.name in wanted]
    used = {i for n in nodes for i in n.input if i}
    inits = [init for init in model.graph.initializer if init.name in used]

    def vi(t: TensorSpec):
        return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                              list(t.shape))

    sub = helper.make_graph(nodes, f"{graph.name}_stage{stage.index}",
                            [vi(t) for t in stage.library_inputs],
                            [vi(t) for t in stage.library_outputs], initializer=inits)
    out = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version,
                            producer_name="tvmsplit")
    return out


def stage_relax(graph: LayerGraph, stage: StagePlan):
    """The stage as a Relax IRModule, weights inlined as constants and constant-folded."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    sub = stage_onnx(graph, stage)
    mod = from_onnx(sub, shape_dict={t.name: list(t.shape) for t in stage.library_inputs},
                    dtype_dict={t.name: t.dtype for t in stage.library_inputs},
                    keep_params_in_input=False)
    return relax.transform.FoldConstant()(mod)


def layer_stage(graph: LayerGraph, index: int, target: str) -> StagePlan:
    """A stage holding only layer ``index``: what the profiler compiles and times."""
    layer = graph.layers[index]
    return StagePlan(index=0, target=target, layers=(layer.name,), inputs=layer.inputs,
                     outputs=layer.outputs, library_inputs=layer.inputs,
                     library_outputs=layer.outputs, param_bytes=layer.param_bytes,
                     flops=layer.flops)
