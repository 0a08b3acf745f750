"""Splitting algorithms: a LayerGraph -> a Plan (the data of ``plan.py``).

A plan puts every layer in a stage, numbered so that data only flows to higher numbers
(``plan.py`` describes stages, routes and their JSON). ``plan_split`` makes one from cuts after
named layers or from an explicit layer -> stage map (``stage_of``), with one of two routings:

- ``"chain"`` (default): stage s sends to s+1 only. Between them travel the tensors produced in
  stages <= s (or model inputs) that are read in a later stage, plus model outputs already
  produced, so a skip connection jumping over a whole stage is forwarded through it. This is what
  a path of devices (end -> edge -> cloud) does, and what the partition cost model prices.
- ``"direct"``: every tensor goes straight from the stage that produces it to each stage that
  reads it, and model outputs straight to the client. The stages form a DAG: stages with no path
  between them run at the same time (HyPS H-parts on two devices), and a stage with several
  senders gathers their messages by request id before it runs.

Which devices run the stages is the planners' business (``partition/``, ``planning.py``: there an
"assignment" is a device index per layer). A saved plan is not split again: ``saved_graph``
rewrites the model the way the plan file says (HyPS) and checks that the plan fits it. Turning a
stage into an ONNX sub-model and a Relax module is the compile side's (``compile.stage_onnx``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from .errors import SplitError
from .graph import LayerGraph, TensorSpec
from .plan import CLIENT_END, ROUTINGS, Plan, PlanFile, Route, StagePlan, chain_routes


def plan_split(graph: LayerGraph, split_at: Sequence[str] = (), targets: Sequence[str] = ("x86_64",),
               stage_of: Mapping[str, int] | None = None, routing: str = "chain") -> Plan:
    """A plan from user-chosen cuts (after each named layer, in topological order) or from an
    explicit layer name -> stage index map ``stage_of`` (any downward-closed split, e.g. inside a
    branch).

    ``targets`` names one target for every stage, or one for all of them. ``routing`` is
    ``"chain"`` or ``"direct"`` (see the module doc).
    """
    if stage_of is not None and split_at:
        raise SplitError("give either split points or a layer -> stage map (stage_of), not both")
    if routing not in ROUTINGS:
        raise SplitError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
    if stage_of is None:
        of = _stages_from_split_points(graph, split_at)
    else:
        of = _check_stage_of(graph, stage_of)
    n_stages = max(of) + 1
    targets = list(targets)
    if len(targets) == 1:
        targets *= n_stages
    if len(targets) != n_stages:
        raise SplitError(f"{n_stages} stage(s) need {n_stages} target(s) (or one for all); "
                         f"got {len(targets)}: {', '.join(targets)}")
    if routing == "direct":
        return _direct_plan(graph, of, targets)
    stages = []
    for s in range(n_stages):
        members = [k for k, st in enumerate(of) if st == s]
        before = [k for k, st in enumerate(of) if st < s]
        upto = [k for k, st in enumerate(of) if st <= s]
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
    return Plan(graph.name, graph.model_sha256, chain_routes(stages),
                (Route(0, tuple(t.name for t in stages[0].inputs)),))


def saved_graph(graph: LayerGraph, saved: PlanFile, source: str = "the plan") -> LayerGraph:
    """The graph that the saved plan splits: ``graph`` (the model as loaded) after the plan's
    horizontal splits (``hsplit.split_horizontally``). Graph rewriting only: the plan is built as
    it was saved, never planned again. SplitError when the model is not the one the plan was made
    for (by sha256), or the plan does not fit the graph (e.g. other ``--shape`` pins)."""
    saved.check_model(graph.model_sha256, f"model {graph.name!r}", source)
    if saved.horizontal:
        from .hsplit import split_horizontally

        unknown = [name for name, _ in saved.horizontal if name not in graph._index]
        if unknown:
            raise SplitError(f"{source} splits layers {', '.join(unknown)} horizontally, which "
                             f"model {graph.name!r} does not have; save the plan again")
        graph = split_horizontally(graph, dict(saved.horizontal))
    problems = saved.plan.graph_problems(graph)
    if problems:
        raise SplitError(f"{source} does not fit model {graph.name!r} as loaded: "
                         f"{'; '.join(problems[:5])}; load the model with the shapes it was "
                         "planned with (--shape), or save the plan again")
    return graph


def _direct_plan(graph: LayerGraph, stage_of: Sequence[int], targets: Sequence[str]) -> Plan:
    """Every tensor from its producer's stage (``CLIENT_END`` for model inputs) straight to each stage
    that reads it; model outputs straight to the client."""
    stage_of_producer = lambda i: CLIENT_END if i < 0 else stage_of[i]  # noqa: E731
    routes: dict[tuple[int, int], dict[str, TensorSpec]] = {}  # (source, destination) -> tensors
    for i, j, t in sorted(graph.edges, key=lambda e: (e[0], e[1])):
        src, dst = stage_of_producer(i), stage_of[j]
        if src != dst:
            routes.setdefault((src, dst), {}).setdefault(t.name, t)
    for t in graph.outputs:
        routes.setdefault((stage_of_producer(graph.producer[t.name]), CLIENT_END), {}).setdefault(t.name, t)

    def sends(src: int) -> tuple[Route, ...]:
        dests = sorted((d for s, d in routes if s == src), key=lambda d: (d == CLIENT_END, d))
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
    return Plan(graph.name, graph.model_sha256, tuple(stages), sends(CLIENT_END))


def _stages_from_split_points(graph: LayerGraph, split_at: Sequence[str]) -> list[int]:
    names = [s.strip() for s in split_at if s.strip()]
    if len(set(names)) != len(names):
        raise SplitError(f"split points repeat: {', '.join(names)}")
    unknown = [n for n in names if n not in graph._index and n not in graph.node_layer]
    if len(unknown) == 1:
        graph.index(unknown[0])  # the one-name message, with similar names
    if unknown:  # every bad point at once, each with its near misses
        near = "; ".join(f"{n!r}: {', '.join(graph.similar_names(n, 3))}" for n in unknown)
        raise SplitError(f"no layers named {', '.join(repr(n) for n in unknown)} in {graph.name}; "
                         f"similar layers: {near} (run `tvmsplit inspect` to list all "
                         f"{len(graph.layers)})")
    given = [graph.index(name) for name in names]
    points = sorted(given)
    if len(set(points)) != len(points):
        raise SplitError(f"split points {', '.join(names)} name the same layer twice")
    if given != points:
        ordered = [names[given.index(k)] for k in points]
        where = ", ".join(f"{n} (layer {k})" for n, k in zip(names, given))
        raise SplitError(f"split points {where} are out of order; give them in the model's "
                         f"order: --split-at {','.join(ordered)}")
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


def _check_stage_of(graph: LayerGraph, stage_by_name: Mapping[str, int]) -> list[int]:
    missing = [layer.name for layer in graph.layers if layer.name not in stage_by_name]
    unknown = [name for name in stage_by_name if name not in graph._index]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"layers without a stage: {', '.join(missing[:8])}")
        if unknown:
            parts.append(f"unknown layers: {', '.join(unknown[:8])}")
        raise SplitError("; ".join(parts))
    stage_of = [int(stage_by_name[layer.name]) for layer in graph.layers]
    used = sorted(set(stage_of))
    if used != list(range(len(used))):
        raise SplitError(f"stages must be numbered 0..k-1 with none empty; got {used}")
    for i, j, _ in graph.edges:
        if i >= 0 and stage_of[i] > stage_of[j]:
            raise SplitError(f"layer {graph.layers[j].name!r} (stage {stage_of[j]}) reads the output "
                             f"of {graph.layers[i].name!r} (stage {stage_of[i]}); "
                             "a stage may only read from itself or earlier stages")
    return stage_of


def layer_stage(graph: LayerGraph, index: int, target: str) -> StagePlan:
    """A stage holding only layer ``index``: what the profiler compiles and times."""
    layer = graph.layers[index]
    return StagePlan(index=0, target=target, layers=(layer.name,), inputs=layer.inputs,
                     outputs=layer.outputs, library_inputs=layer.inputs,
                     library_outputs=layer.outputs, param_bytes=layer.param_bytes,
                     flops=layer.flops)


def segment_stage(graph: LayerGraph, stage: StagePlan, groups: Sequence[Sequence[str]]) -> StagePlan:
    """``stage`` run sequentially (HyPS): its layers in the consecutive ``groups`` given (layer
    names, each group in the stage's order, together exactly the stage's layers), each group a
    segment (``StagePlan.segments``) that reads from the stage's inputs or earlier segments and
    computes what later segments or the stage's outputs need. One group gives one segment: the
    stage still runs with its weights outside its library (loaded per batch, then freed)."""
    flat = [name for group in groups for name in group]
    if flat != list(stage.layers) or any(not group for group in groups):
        raise SplitError(f"segments of stage {stage.index} must be non-empty consecutive runs of "
                         f"its layers in order ({', '.join(stage.layers[:4])}, ...); got "
                         f"{[list(g) for g in groups]}")
    layers = [graph.layer(name) for name in stage.layers]
    needed_later: list[set[str]] = []  # per group: tensors read by later groups or sent on
    after = {t.name for t in stage.outputs}
    for group in reversed(groups):
        needed_later.append(set(after))
        after |= {t.name for name in group for t in graph.layer(name).inputs}
    needed_later.reverse()
    segments, start = [], 0
    for k, group in enumerate(groups):
        members = layers[start:start + len(group)]
        start += len(group)
        produced = {t.name: t for layer in members for t in layer.outputs}
        reads = {t.name: t for layer in members for t in layer.inputs if t.name not in produced}
        outs = tuple(t for name, t in produced.items() if name in needed_later[k])
        ins = tuple(reads.values())
        segments.append(StagePlan(
            index=k, target=stage.target, layers=tuple(group), inputs=ins, outputs=outs,
            library_inputs=ins, library_outputs=outs,
            param_bytes=sum(layer.param_bytes for layer in members),
            flops=sum(layer.flops for layer in members)))
    computed = {t.name for seg in segments for t in seg.outputs}
    read = {t.name for seg in segments for t in seg.inputs}
    return replace(stage, segments=tuple(segments),
                   library_inputs=tuple(t for t in stage.inputs if t.name in read),
                   library_outputs=tuple(t for t in stage.outputs if t.name in computed))


def sequential_plan(graph: LayerGraph, plan: Plan,
                    segments: Mapping[int, Sequence[Sequence[str]]]) -> Plan:
    """``plan`` with the stages named in ``segments`` (stage index -> groups of layer names) run
    sequentially (``segment_stage``); the routes do not change."""
    unknown = [s for s in segments if not 0 <= s < len(plan.stages)]
    if unknown:
        raise SplitError(f"no stage(s) {unknown} to segment: the plan has stages "
                         f"0..{len(plan.stages) - 1}")
    return replace(plan, stages=tuple(segment_stage(graph, st, segments[st.index])
                                      if st.index in segments else st for st in plan.stages))
