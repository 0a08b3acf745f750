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

Sequential devices (HyPS). A capped device may run its layers *sequentially*: its stage is cut
into segments that each fit the cap, loaded one at a time (``StagePlan.segments``; the cost model
in ``partition/problem.py``), so a model larger than the device still runs on it. ``sequential``
says when: ``"auto"`` (default) plans every device resident first and, only when that is
infeasible, searches the resident/sequential modes of the capped devices for the best plan
(the cap requires it); ``"best"`` searches the modes even when resident plans exist (a
sequential plan may be faster when the alternative is a slow link); ``"always"`` makes every
capped device sequential; ``"off"`` never. The mode search runs the planner once per
combination (2^c for c capped devices; beyond 6, only all-sequential is tried).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .devices import Device, Link
from .partition.topology import Topology, sink_output_ms
from .graph import LayerGraph
from .partition import (BASELINES, PLANNERS, Breakdown, CostTable, PlanningError, PowerModel,
                        Problem, TopoProblem, plan, plan_topology)
from .partition.problem import DEFAULT_LOAD_BYTES_PER_S, feasible
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
                     "deploy_counted", "lower_bound", "send_ms")


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
                     None if d.get("lower_bound") is None else float(d["lower_bound"]),
                     tuple(float(x) for x in d.get("send_ms", ())))


def _per_device(what: str, values: Mapping[str, float] | None,
                names: Sequence[str]) -> tuple[float, ...]:
    """A device name -> value mapping as one value per device of ``names`` (others 0; () when
    none is given); an unknown name is an error that lists the devices."""
    unknown = [n for n in (values or {}) if n not in names]
    if unknown:
        raise PlanningError(f"{what} for unknown device(s) {', '.join(map(repr, unknown))}; "
                            f"devices: {', '.join(names)}")
    return tuple(float(values.get(n, 0.0)) for n in names) if values else ()


def plan_partition(graph: LayerGraph, devices: Sequence[Device], links: Sequence[Link],
                   costs: CostTable, *, objective: str = "latency", method: str = "auto",
                   pins: Mapping[str, str] | None = None, input_bytes: int | None = None,
                   latency_ceiling_ms: float | None = None,
                   horizontal: bool | str | Mapping[str, int] = True,
                   power: Mapping[str, PowerModel] | None = None,
                   parallel: bool = True,
                   stage_overhead_ms: Mapping[str, float] | None = None,
                   sequential: str = "auto", batch: int = 1,
                   load_bytes_per_s: Mapping[str, float] | None = None,
                   hpart_overhead_ms: float = 0.0,
                   topology: Topology | None = None, sink: str = "end",
                   deploy_code_bytes: int = DEFAULT_CODE_BYTES,
                   deploy_in_objective: bool = False,
                   decode_ms: Mapping[str, float] | None = None,
                   send_ms: Mapping[str, float] | None = None,
                   send_ms_per_byte: Mapping[str, float] | None = None) -> PlannedSplit:
    """Choose where to cut ``graph`` across ``devices`` (a path: end -> edge -> ...), or, with
    ``topology``, across a route that the planner chooses through it (``devices`` are then all
    the topology's devices, the input's source first; ``links`` are unused; its devices are
    planned resident: ``sequential`` applies to paths only).

    With memory caps, a layer that fits no device is first split horizontally (HyPS) into the
    fewest parts that fit the largest cap; each part is predicted to take its share of the
    layer's time. ``horizontal=False`` reports such a layer as infeasible instead;
    ``horizontal="best"`` plans every H-part count from the fewest up (``hpart_counts``) and keeps
    the best objective: more parts balance devices better but cost transfers, merges and
    ``hpart_overhead_ms`` per part (each part's fixed time on its device, e.g. a kernel launch
    or a stage hop); a mapping (layer -> parts) fixes the counts.
    ``parallel=False`` keeps one stage per device (a chain) even where stages could run in
    parallel (see the module doc). ``stage_overhead_ms`` (device name -> ms, others 0) is each
    device's fixed time per request when it runs a stage (``Problem.stage_overhead_ms``).
    ``sequential``/``batch``/``load_bytes_per_s`` (device name -> bytes/s read speed of weights):
    HyPS sequential devices, see the module doc. ``decode_ms`` (device name -> ms, others 0;
    with ``input_bytes``): decoding the encoded input on the device that runs the layer reading
    it (``Problem.decode_ms``; paths only). ``send_ms`` / ``send_ms_per_byte`` (device name ->
    ms per request / per byte, others 0): how long a device's stage is busy sending up its
    link, in the bottleneck (``Problem.send_busy_ms``; paths only).
    """
    if sequential not in SEQUENTIAL_MODES:
        raise PlanningError(f"sequential={sequential!r}; choose one of {', '.join(SEQUENTIAL_MODES)}")
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
    hcandidates: list[dict[str, int]] = [{}]
    caps = [d.mem_cap_bytes for d in devices if d.mem_cap_bytes is not None]
    if isinstance(horizontal, Mapping):
        hcandidates = [{name: int(n) for name, n in horizontal.items() if int(n) > 1}]
    elif horizontal and horizontal != "off" and len(caps) == len(devices):
        from .hsplit import plan_horizontal_parts

        if horizontal not in (True, "fewest", "best"):
            raise PlanningError(f"horizontal={horizontal!r}; choose True/'fewest', 'best', False "
                                "or a mapping layer -> parts")
        fewest = plan_horizontal_parts(graph, max(caps))
        hcandidates = hpart_counts(fewest, len(devices)) if horizontal == "best" else [fewest]
    pin_list = []
    for layer, device in (pins or {}).items():
        if device not in names:
            raise PlanningError(f"layer {layer!r} pinned to unknown device {device!r}; "
                                f"devices: {', '.join(names)}")
        pin_list.append((layer, names.index(device)))
    overhead = _per_device("stage overhead", stage_overhead_ms, names)
    decode = _per_device("decode time", decode_ms, names)
    send = _per_device("send time", send_ms, names)
    send_per_byte = _per_device("send time per byte", send_ms_per_byte, names)
    if (any(send) or any(send_per_byte)) and topology is not None:
        raise PlanningError("send costs are priced on a path of devices, not over a "
                            "--links-file topology; drop one of them")
    if any(decode) and topology is not None:
        raise PlanningError("decode times are priced on a path of devices, not over a "
                            "--links-file topology; drop one of them")
    unknown = [n for n in (load_bytes_per_s or {}) if n not in names]
    if unknown:
        raise PlanningError(f"load speed for unknown device(s) {', '.join(map(repr, unknown))}; "
                            f"devices: {', '.join(names)}")
    if topology is not None and set(topology.devices) != set(names):
        raise PlanningError(f"the topology's devices ({', '.join(topology.devices)}) are not "
                            f"the devices given ({', '.join(names)})")
    chosen, first_error = None, None
    for hparts in hcandidates:
        g, c = graph, costs
        if hparts:
            from .hsplit import split_horizontally

            g = split_horizontally(graph, hparts)
            c = _split_costs(costs, g, hparts, hpart_overhead_ms)
        try:
            if topology is not None:
                tp = TopoProblem(g, c, topology, names[0], sink=sink, objective=objective,
                                 input_bytes=input_bytes,
                                 mem_cap_bytes=tuple((d.name, d.mem_cap_bytes) for d in devices
                                                     if d.mem_cap_bytes is not None),
                                 pins=tuple((layer, names[d]) for layer, d in pin_list),
                                 latency_ceiling_ms=latency_ceiling_ms,
                                 power=tuple((power or {}).items()) if objective == "energy" else (),
                                 stage_overhead_ms=tuple(zip(names, overhead)),
                                 deploy_code_bytes=deploy_code_bytes,
                                 deploy_in_objective=deploy_in_objective)
                routed = plan_topology(tp, method)
                found = (routed.problem, routed.method, routed.breakdown, hparts, routed)
            else:
                path = Topology.path(names, links) if sink != "end" else None
                problem = Problem(g, c, tuple(links), objective=objective, input_bytes=input_bytes,
                                  mem_cap_bytes=tuple(d.mem_cap_bytes for d in devices),
                                  pins=tuple(pin_list), latency_ceiling_ms=latency_ceiling_ms,
                                  power=tuple((power or {}).get(n, PowerModel()) for n in names)
                                  if objective == "energy" else (),
                                  stage_overhead_ms=overhead, batch=batch,
                                  load_bytes_per_s=tuple(float((load_bytes_per_s or {}).get(
                                      n, DEFAULT_LOAD_BYTES_PER_S)) for n in names),
                                  output_ms=sink_output_ms(path, names,
                                                           [t.nbytes for t in g.outputs], sink,
                                                           names[0]) if path else (),
                                  deploy_code_bytes=deploy_code_bytes,
                                  deploy_in_objective=deploy_in_objective, decode_ms=decode,
                                  send_ms=send, send_ms_per_byte=send_per_byte)
                found = (*_plan_modes(problem, method, sequential), hparts, None)
        except PlanningError as exc:
            first_error = first_error or exc
            continue
        if chosen is None or (found[2].objective(objective)
                              < chosen[2].objective(objective) - 1e-9):
            chosen = found
    if chosen is None:
        raise first_error
    problem, method, best, hparts, routed = chosen
    graph = problem.graph
    exact = True
    if routed is not None:
        devices = [devices[names.index(d)] for d in routed.route]
        links, exact = problem.links, routed.exact
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
    plan_ = _segment_sequential(problem, plan_, stage_devices)
    return PlannedSplit(plan_, method, best, tuple(devices), tuple(baselines), graph,
                        tuple(sorted(hparts.items())), problem.costs, stage_devices,
                        critical_path_ms(problem, plan_, stage_devices) if not plan_.is_chain else None,
                        tuple(links), sink, exact)


SEQUENTIAL_MODES = ("auto", "best", "always", "off")
MAX_MODE_SEARCH_DEVICES = 6


def _plan_modes(problem: Problem, method: str, sequential: str) -> tuple[Problem, str, Breakdown]:
    """(the problem with the chosen devices sequential, planner name, breakdown): resident first
    for ``"auto"``/``"off"``; then the best feasible combination of sequential devices (only
    all capped ones for ``"always"``)."""
    from dataclasses import replace
    from itertools import product

    capped = [d for d, c in enumerate(problem.mem_cap) if c != float("inf")]
    first_error = None
    if sequential in ("auto", "off"):
        try:
            return (problem, *plan(problem, method))
        except PlanningError as exc:
            if sequential == "off" or not capped:
                raise
            first_error = exc
    if sequential == "always" or len(capped) > MAX_MODE_SEARCH_DEVICES:
        combos = [tuple(capped)]  # all sequential: 2^c planner runs would be too many
    else:
        combos = [tuple(d for d, on in zip(capped, flags) if on)
                  for flags in product((False, True), repeat=len(capped))]
    best = None
    for combo in combos:
        if not combo and (first_error is not None or sequential == "always"):
            continue  # the resident problem: already refused, or not wanted
        flags = tuple(d in combo for d in range(problem.n_devices))
        candidate = replace(problem, sequential=flags if any(flags) else ())
        try:
            name, b = plan(candidate, method)
        except PlanningError as exc:
            first_error = first_error or exc
            continue
        if best is None or b.objective(problem.objective) < best[2].objective(problem.objective) - 1e-9:
            best = (candidate, name, b)
    if best is None:
        raise PlanningError(f"{first_error} (also tried running the capped devices sequentially, "
                            "one segment of layers at a time: no combination fits)")
    return best


def _segment_sequential(problem: Problem, plan_: Plan, stage_devices: Sequence[int]) -> Plan:
    """The stages on sequential devices cut into segments that fit the device's cap."""
    from .partition.problem import segments
    from .split import sequential_plan

    groups = {}
    for stage, d in zip(plan_.stages, stage_devices):
        if problem.is_sequential(d):
            idx = [problem.graph.index(name) for name in stage.layers]
            groups[stage.index] = [[problem.graph.layers[i].name for i in seg]
                                   for seg in segments(problem.graph, idx, problem.mem_cap[d])]
    return sequential_plan(problem.graph, plan_, groups) if groups else plan_


MAX_HPART_SEARCH = 12  # "best" tries at most this many counts above the fewest


def hpart_counts(fewest: Mapping[str, int], n_devices: int) -> list[dict[str, int]]:
    """The H-part counts ``horizontal="best"`` plans: the fewest that fit, then every layer at
    k parts (never below its fewest) for k up to 4 parts per device."""
    if not fewest:
        return [{}]
    low = min(fewest.values())
    top = min(max(low, 4 * n_devices), low + MAX_HPART_SEARCH)
    out = [dict(fewest)]
    for k in range(low + 1, top + 1):
        counts = {name: max(n, k) for name, n in fewest.items()}
        if counts not in out:
            out.append(counts)
    return out


def _split_costs(costs: CostTable, graph: LayerGraph, hparts: dict[str, int],
                 part_overhead_ms: float = 0.0) -> CostTable:
    """Rows for H-parts (an equal share of the layer's time, plus ``part_overhead_ms`` each) and
    merges (free)."""
    rows = dict(zip(costs.layers, costs.compute_ms))
    for name, parts in hparts.items():
        for h in range(parts):
            rows[f"{name}_h{h}"] = tuple(t / parts + part_overhead_ms for t in rows[name])
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
    sends it); the latency ends with the outputs' return to the end device. A stage's time is
    its layers' ``Problem.compute`` (the cost table's, plus the weights' reload on a sequential
    device) plus its device's ``stage_overhead_ms``: every stage of a DAG is a worker of its own,
    so each pays it (the serial cost model charges it once per device)."""
    row = {layer.name: i for i, layer in enumerate(problem.graph.layers)}

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
        work = sum(problem.compute[row[name]][dev] for name in s.layers) + problem.overhead[dev]
        finish = free[dev] = max(ready[s.index], free[dev]) + work
        for route in s.sends:
            dst = 0 if route.to == CLIENT_END else stage_devices[route.to]
            arrive = finish + transfer_ms(route.tensors, dev, dst)
            if route.to == CLIENT_END:
                done = max(done, arrive)
            else:
                ready[route.to] = max(ready[route.to], arrive)
    return done
