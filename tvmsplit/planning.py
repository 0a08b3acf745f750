"""From a partitioning problem to a buildable Plan: devices, links, costs -> stages with targets.

``plan_partition`` runs a planner (``tvmsplit.partition``) and turns its assignment into a
``plan.Plan``: the devices that received layers become the stages, in path order, each compiled
for its device's target. The predicted breakdown and the baselines travel with it.

Over a device graph (``topology=``: links between any pairs), the planner first chooses the
route — which devices, in which order (``partition.routes``) — and the result is the plan on that
route's path: ``PlannedSplit.devices`` are the route's devices, ``links`` its links. ``sink``
says where the outputs go (``end``: back to the first device; ``last``: consumed where made; a
device name), and every plan reports its deployment time (shipping each stage's weights +
``deploy_code_bytes`` of code from the first device, IONN-style), which ``deploy_in_objective``
adds to the latency objective for a one-shot run.

Parallel stages. When layers on different devices could run at the same time (HyPS H-parts of
one layer placed on two devices, or two branches of a block), one stage per device would run
them one after another: a stage sends only when its last layer is done, and starts only when all
its inputs are there. ``parallel_stages`` cuts a device's layers into several stages where that
would serialise work, and the plan is then a stage DAG with direct routes (``split.py``), which
the runtime executes with the independent stages in parallel. The predicted breakdown stays the
cost model's (``partition/problem.py``: compute summed over layers, i.e. serial), so it is an
upper bound for such plans; ``PlannedSplit.critical_path_ms`` estimates the parallel latency.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .devices import Device, Link
from .topology import Topology, sink_output_ms
from .graph import LayerGraph
from .partition import (BASELINES, PLANNERS, Breakdown, CostTable, PlanningError, PowerModel,
                        Problem, TopoProblem, plan, plan_topology)
from .partition.problem import feasible
from .plan import CLIENT_END, Plan, PlanFile
from .split import plan_split
from .targets import get_target


# code shipped with each stage's library besides its weights (deployment cost): BENCHMARKS.md's
# build table has 0.1-0.9 MB of code per stage (library bytes - param bytes); an estimate
DEFAULT_CODE_BYTES = 300_000


@dataclass(frozen=True)
class PlannedSplit:
    """A chosen plan. ``graph`` is what to build: the input graph, or its rewrite when layers were
    split horizontally (``horizontal``: layer -> number of H-parts)."""

    plan: Plan
    method: str
    predicted: Breakdown
    devices: tuple[Device, ...]
    baselines: tuple[tuple[str, Breakdown | None], ...]  # None: the baseline is infeasible
    graph: LayerGraph = field(repr=False, compare=False, default=None)
    horizontal: tuple[tuple[str, int], ...] = ()
    plan_costs: CostTable | None = field(repr=False, compare=False, default=None)
    stage_devices: tuple[int, ...] = ()  # the device (index into devices) of each stage
    critical_path_ms: float | None = None  # a stage DAG's predicted latency, branches in parallel
    links: tuple[Link, ...] = ()  # the links of the devices' path (a topology: of the route)
    sink: str = "end"
    exact: bool = True  # False: a heuristic chose the route (partition.routes)

    def to_json(self) -> dict:
        """The plan file ``tvmsplit plan --save`` writes (``plan.PlanFile``, the format and its
        version are defined there) with the planner's report beside it."""
        return {**PlanFile(self.plan, self.horizontal).to_json(), "method": self.method,
                "stage_devices": list(self.stage_devices),
                "critical_path_ms": self.critical_path_ms,
                "links": [{"name": x.name, "up_bps": x.up_bps, "down_bps": x.down_bps,
                           "rtt_s": x.rtt_s, "loss": x.loss} for x in self.links],
                "sink": self.sink, "exact": self.exact,
                "devices": [{"name": d.name, "target": d.target, "mem_cap_bytes": d.mem_cap_bytes}
                            for d in self.devices],
                "predicted": _breakdown_json(self.predicted),
                "baselines": {name: _breakdown_json(b) for name, b in self.baselines}}

    @classmethod
    def from_json(cls, d: Mapping, source: str = "the plan") -> "PlannedSplit":
        """The inverse of ``to_json``, without what the file does not hold (``graph``: rewrite
        the model with ``split.saved_graph``; ``plan_costs``)."""
        saved = PlanFile.from_json(d, source)
        try:
            return cls(saved.plan, str(d["method"]), _breakdown(d["predicted"]),
                       tuple(Device(str(x["name"]), str(x["target"]), x.get("mem_cap_bytes"))
                             for x in d["devices"]),
                       tuple((str(name), _breakdown(b)) for name, b in d["baselines"].items()),
                       horizontal=saved.horizontal,
                       stage_devices=tuple(int(i) for i in d.get("stage_devices", ())),
                       critical_path_ms=d.get("critical_path_ms"),
                       links=tuple(Link(str(x["name"]), float(x["up_bps"]), float(x["down_bps"]),
                                        float(x["rtt_s"]), float(x.get("loss", 0.0)))
                                   for x in d.get("links", ())),
                       sink=str(d.get("sink", "end")), exact=bool(d.get("exact", True)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanningError(f"{source}: the planner's report is malformed (bad or missing "
                                f"field {exc}); save the plan again") from None


_BREAKDOWN_FIELDS = ("assignment", "compute_ms", "hop_bytes", "hop_ms", "return_ms",
                     "memory_bytes", "latency_ms", "bottleneck_ms", "energy_mj", "deploy_ms",
                     "deploy_counted", "lower_bound")


def _breakdown_json(b: Breakdown | None) -> dict | None:
    if b is None:
        return None
    return {name: list(v) if isinstance(v := getattr(b, name), tuple) else v
            for name in _BREAKDOWN_FIELDS}


def _breakdown(d: Mapping | None) -> Breakdown | None:
    if d is None:
        return None
    return Breakdown(tuple(int(i) for i in d["assignment"]), tuple(float(x) for x in d["compute_ms"]),
                     tuple(int(x) for x in d["hop_bytes"]), tuple(float(x) for x in d["hop_ms"]),
                     float(d["return_ms"]), tuple(int(x) for x in d["memory_bytes"]),
                     float(d["latency_ms"]), float(d["bottleneck_ms"]), float(d["energy_mj"]),
                     float(d.get("deploy_ms", 0.0)), bool(d.get("deploy_counted", False)),
                     None if d.get("lower_bound") is None else float(d["lower_bound"]))


def plan_partition(graph: LayerGraph, devices: Sequence[Device], links: Sequence[Link],
                   costs: CostTable, *, objective: str = "latency", method: str = "auto",
                   pins: Mapping[str, str] | None = None, input_bytes: int | None = None,
                   latency_ceiling_ms: float | None = None, horizontal: bool = True,
                   power: Mapping[str, PowerModel] | None = None,
                   parallel: bool = True,
                   stage_overhead_ms: Mapping[str, float] | None = None,
                   topology: Topology | None = None, sink: str = "end",
                   deploy_code_bytes: int = DEFAULT_CODE_BYTES,
                   deploy_in_objective: bool = False) -> PlannedSplit:
    """Choose where to cut ``graph`` across ``devices`` (a path: end -> edge -> ...), or, with
    ``topology``, across a route that the planner chooses through it (``devices`` are then all
    the topology's devices, the input's source first; ``links`` are unused).

    With memory caps, a layer that fits no device is first split horizontally (HyPS) into the
    fewest parts that fit the largest cap; each part is predicted to take its share of the
    layer's time. ``horizontal=False`` reports such a layer as infeasible instead.
    ``parallel=False`` keeps one stage per device (a chain) even where stages could run in
    parallel (see the module doc). ``stage_overhead_ms`` (device name -> ms, others 0) is each
    device's fixed time per request when it runs a stage (``Problem.stage_overhead_ms``).
    """
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise PlanningError(f"device names repeat: {', '.join(names)}")
    for d in devices:
        get_target(d.target)
    if tuple(costs.devices) != tuple(names):
        missing = [n for n in names if n not in costs.devices]
        if missing:
            raise PlanningError(f"the cost table has devices {', '.join(costs.devices)}; no times "
                                f"for {', '.join(missing)}")
        costs = CostTable(tuple(names), costs.layers, tuple(
            tuple(row[costs.devices.index(n)] for n in names) for row in costs.compute_ms))
    hparts: dict[str, int] = {}
    caps = [d.mem_cap_bytes for d in devices if d.mem_cap_bytes is not None]
    if horizontal and len(caps) == len(devices):
        from .hsplit import plan_horizontal_parts, split_horizontally

        hparts = plan_horizontal_parts(graph, max(caps))
        if hparts:
            split_graph = split_horizontally(graph, hparts)
            costs = _split_costs(costs, split_graph, hparts)
            graph = split_graph
    pin_list = []
    for layer, device in (pins or {}).items():
        if device not in names:
            raise PlanningError(f"layer {layer!r} pinned to unknown device {device!r}; "
                                f"devices: {', '.join(names)}")
        pin_list.append((layer, names.index(device)))
    unknown = [n for n in (stage_overhead_ms or {}) if n not in names]
    if unknown:
        raise PlanningError(f"stage overhead for unknown device(s) "
                            f"{', '.join(map(repr, unknown))}; devices: {', '.join(names)}")
    overhead = (tuple(float(stage_overhead_ms.get(n, 0.0)) for n in names)
                if stage_overhead_ms else ())
    exact = True
    if topology is not None:
        if set(topology.devices) != set(names):
            raise PlanningError(f"the topology's devices ({', '.join(topology.devices)}) are not "
                                f"the devices given ({', '.join(names)})")
        tp = TopoProblem(graph, costs, topology, names[0], sink=sink, objective=objective,
                         input_bytes=input_bytes,
                         mem_cap_bytes=tuple((d.name, d.mem_cap_bytes) for d in devices
                                             if d.mem_cap_bytes is not None),
                         pins=tuple((layer, names[d]) for layer, d in pin_list),
                         latency_ceiling_ms=latency_ceiling_ms,
                         power=tuple((power or {}).items()) if objective == "energy" else (),
                         stage_overhead_ms=tuple(zip(names, overhead)),
                         deploy_code_bytes=deploy_code_bytes,
                         deploy_in_objective=deploy_in_objective)
        routed = plan_topology(tp, "auto" if method == "auto" else method)
        problem, best, method, exact = routed.problem, routed.breakdown, routed.method, routed.exact
        devices = [devices[names.index(d)] for d in routed.route]
        links = problem.links
    else:
        path = Topology.path(names, links) if sink != "end" else None
        problem = Problem(graph, costs, tuple(links), objective=objective, input_bytes=input_bytes,
                          mem_cap_bytes=tuple(d.mem_cap_bytes for d in devices),
                          pins=tuple(pin_list), latency_ceiling_ms=latency_ceiling_ms,
                          power=tuple((power or {}).get(n, PowerModel()) for n in names)
                          if objective == "energy" else (),
                          stage_overhead_ms=overhead,
                          output_ms=sink_output_ms(path, names, [t.nbytes for t in graph.outputs],
                                                   sink, names[0]) if path else (),
                          deploy_code_bytes=deploy_code_bytes,
                          deploy_in_objective=deploy_in_objective)
        method, best = plan(problem, method)
    baselines = []
    for name in BASELINES:
        if name == "dag-mincut" and len(devices) != 2:
            continue
        try:
            base = PLANNERS[name](problem)
        except PlanningError:
            base = None
        # all-on-end/-edge evaluate a fixed assignment: it may break a cap or a pin
        baselines.append((name, base if base is not None and feasible(problem, base) else None))
    plan_, stage_devices = to_plan(graph, best, devices, parallel=parallel)
    return PlannedSplit(plan_, method, best, tuple(devices), tuple(baselines), graph,
                        tuple(sorted(hparts.items())), problem.costs, stage_devices,
                        critical_path_ms(problem, plan_, stage_devices) if not plan_.is_chain else None,
                        tuple(links), sink, exact)


def _split_costs(costs: CostTable, graph: LayerGraph, hparts: dict[str, int]) -> CostTable:
    """Rows for H-parts (an equal share of the layer's time) and merges (free)."""
    rows = dict(zip(costs.layers, costs.compute_ms))
    for name, parts in hparts.items():
        for h in range(parts):
            rows[f"{name}_h{h}"] = tuple(t / parts for t in rows[name])
        rows[f"{name}_merge"] = tuple(0.0 for _ in costs.devices)
    names = tuple(layer.name for layer in graph.layers)
    return CostTable(costs.devices, names, tuple(rows[n] for n in names))


def to_plan(graph: LayerGraph, breakdown: Breakdown, devices: Sequence[Device], *,
            parallel: bool = True) -> tuple[Plan, tuple[int, ...]]:
    """The stages of an assignment and the device of each: one stage per device that runs
    layers, in path order (a chain); with ``parallel``, more where a device's layers must be cut
    for stages on different devices to run at the same time (a stage DAG, direct routes)."""
    device_of = list(breakdown.assignment)
    stage_of = parallel_stages(graph, device_of) if parallel else None
    if stage_of is None or max(stage_of) + 1 == len(set(device_of)):
        used = sorted(set(device_of))
        stage_of_device = {d: s for s, d in enumerate(used)}
        by_name = {layer.name: stage_of_device[d] for layer, d in zip(graph.layers, device_of)}
        return (plan_split(graph, stage_of=by_name, targets=[devices[d].target for d in used]),
                tuple(used))
    stage_device = [0] * (max(stage_of) + 1)
    for k, s in enumerate(stage_of):
        stage_device[s] = device_of[k]
    plan_ = plan_split(graph, stage_of={layer.name: s for layer, s in zip(graph.layers, stage_of)},
                       targets=[devices[d].target for d in stage_device], routing="direct")
    return plan_, tuple(stage_device)


def parallel_stages(graph: LayerGraph, device_of: Sequence[int]) -> list[int]:
    """A stage for every layer of a monotone device assignment, such that no stage holds work
    that another device's stage could overlap with. Each device's layers (in topological order)
    are cut before layer ``x`` when

    - the stage so far produced a tensor that a layer ``z`` on another device reads, and ``z``
      does not depend on ``x`` (so ``z`` need not wait for ``x``: send before computing ``x``); or
    - ``x`` reads a tensor from another device's stage that the stage so far does not receive
      from (that stage finishes later: start the layers before ``x`` without it).

    Stages are numbered by (device, position on the device), which is topological because data
    only flows up the path. With one stage per device the result is the plain chain's.
    """
    n = len(graph.layers)
    succ: list[set[int]] = [set() for _ in range(n)]
    for i, j, _ in graph.edges:
        if i >= 0:
            succ[i].add(j)
    desc = [0] * n  # bitmask of the layers that depend on layer k (k included)
    for k in reversed(range(n)):
        desc[k] = 1 << k
        for j in succ[k]:
            desc[k] |= desc[j]
    readers: dict[int, set[int]] = {k: {j for j in succ[k] if device_of[j] != device_of[k]}
                                    for k in range(n)}
    preds = graph.predecessors
    segment = [0] * n  # position of each layer's stage on its device
    for d in sorted(set(device_of)):
        current: list[int] = []
        sources: set[tuple[int, int]] = set()  # (device, segment) stages the current stage reads
        seg = 0
        for x in (k for k in range(n) if device_of[k] == d):
            x_sources = {(device_of[i], segment[i]) for i in preds[x] if device_of[i] != d}
            overlaps = any(not desc[x] >> z & 1 for k in current for z in readers[k])
            if current and (overlaps or not x_sources <= sources):
                seg, current, sources = seg + 1, [], set()
            current.append(x)
            sources |= x_sources
            segment[x] = seg
    keys = sorted({(device_of[k], segment[k]) for k in range(n)})
    number = {key: s for s, key in enumerate(keys)}
    return [number[device_of[k], segment[k]] for k in range(n)]


def critical_path_ms(problem: Problem, plan_: Plan, stage_devices: Sequence[int]) -> float:
    """A stage DAG's latency with stages on different devices in parallel: stages in order, each
    starting when its inputs are there and its device is free (one device runs one stage at a
    time), taking the cost table's times; each route costs the cost model's transfer time per
    link crossed (``Link.up_ms`` / ``down_ms``; free within a device; the input as the end device
    sends it); the latency ends with the outputs' return to the end device."""
    costs = dict(zip(problem.costs.layers, problem.costs.compute_ms))

    def transfer_ms(names, src_dev: int, dst_dev: int) -> float:
        nbytes = sum(problem.tensor_bytes(n) for n in names)
        if src_dev <= dst_dev:
            return sum(problem.links[h].up_ms(nbytes) for h in range(src_dev, dst_dev))
        return sum(problem.links[h].down_ms(nbytes) for h in range(dst_dev, src_dev))

    ready = {s.index: 0.0 for s in plan_.stages}  # when each stage has all its inputs
    free = [0.0] * len(problem.costs.devices)  # when each device is done with its last stage
    for route in plan_.entry:
        ready[route.to] = max(ready[route.to], transfer_ms(route.tensors, 0, stage_devices[route.to]))
    done = 0.0
    for s in plan_.stages:  # numbered by (device, position on it): a device's stages in order
        dev = stage_devices[s.index]
        finish = free[dev] = max(ready[s.index], free[dev]) + sum(costs[name][dev] for name in s.layers)
        for route in s.sends:
            dst = 0 if route.to == CLIENT_END else stage_devices[route.to]
            arrive = finish + transfer_ms(route.tensors, dev, dst)
            if route.to == CLIENT_END:
                done = max(done, arrive)
            else:
                ready[route.to] = max(ready[route.to], arrive)
    return done
