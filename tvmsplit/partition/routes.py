"""Planning over a device graph (``topology.Topology``): which devices, in what order, what layers.

A plan over a topology is a *route* — distinct devices, the input's source first, each directly
linked to the next — and a monotone assignment of the layers along it, priced exactly as a path
(``route_problem``: the route's devices and links as a ``Problem``, the outputs delivered to the
sink the cheapest way over the topology, libraries shipped from the source along the route with
the most bandwidth). A route device with no layers relays (its hops are still paid), so
"Pi -> cloud directly" and "Pi -> edge (relay) -> cloud" are two different routes, and the
planner compares them. A route's empty tail costs nothing, so a route also covers its prefixes
(except for energy: every route device idles during a request). What a route does not model: a
tensor between two non-consecutive stages of the route relays through the stages between them
(the path's cost model, and what a chain plan's runtime does) even where the two devices are
linked directly; only the outputs' delivery to the sink takes the cheapest way over the whole
topology.

Planners (``TopoProblem -> TopoResult``):

- ``plan_routes_dp`` (``topo-dp``): a DP over device subsets. State: (the devices used so far,
  the last one, where its segment ends); a step appends a device and its consecutive segment of
  the topological order. Exact for chains (every monotone assignment is a run of consecutive
  segments), objectives latency (with or without deployment) and throughput, memory caps, pins.
  Devices that are interchangeable (same cost column, cap, overhead and links, e.g. PipeEdge's
  "4 of these, 4 of those", ``Topology.from_types``) are counted, not enumerated: the state is a
  count per device class, so 4+4 devices give 25 subsets, not 256. O(states x classes x n^2).
  For a DAG it is the best split into consecutive segments of one topological order
  (Neurosurgeon's restriction): an upper bound, not the optimum.
- ``plan_routes_exact`` (``topo-routes``): every maximal route (up to interchangeable devices),
  each solved by the exact path planner (``partition.plan``: chain DP, min cut or the MILP).
  Exact for every objective, chains and DAGs; its time is the number of routes times one exact
  path plan ((k-1)! routes on a full graph of k distinct devices).
- ``plan_routes_heuristic`` (``topo-dp-ilp``): a HEURISTIC for DAGs on many devices: the routes of
  the DP's best ``top`` final states, each solved exactly by the path planner. Never worse than
  the DP; it misses the optimum only when the best route for the DAG is not among the DP's best
  routes for consecutive segments (its gap to the oracle is measured in
  ``bench/bench_topology.py`` and BENCHMARKS.md).
- ``plan_topology`` (``auto``): the DP for chains, the exact enumeration for DAGs up to
  ``MAX_EXACT_ROUTES`` routes, else the heuristic (``TopoResult.exact`` says which).
- ``plan_routes_oracle`` (``topo-oracle``): brute force over every route (no symmetry, every
  prefix) and every assignment (``oracle.plan_over_routes``): the tests' reference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..graph import LayerGraph
from .chain import graph_cut_bytes
from .oracle import _better_by, plan_over_routes
from .problem import (Breakdown, CostTable, PlanningError, PowerModel, Problem, evaluate,
                      layer_activation_bytes)
from .topology import Topology, sink_output_ms

MAX_EXACT_ROUTES = 64  # auto: enumerate routes exactly for a DAG up to this many
MAX_ROUTES = 5000  # topo-routes refuses more


@dataclass(frozen=True)
class TopoProblem:
    """A partitioning problem over a device graph; devices by name (the cost table's columns).
    ``source``: where the input is (the route's first device). ``sink``: where the outputs go
    (``topology.SINKS`` or a device name). Per-device settings are (device, value) pairs."""

    graph: LayerGraph
    costs: CostTable
    topology: Topology
    source: str
    sink: str = "end"
    objective: str = "latency"
    input_bytes: int | None = None
    mem_cap_bytes: tuple[tuple[str, int], ...] = ()
    pins: tuple[tuple[str, str], ...] = ()            # (layer, device)
    latency_ceiling_ms: float | None = None
    power: tuple[tuple[str, PowerModel], ...] = ()
    stage_overhead_ms: tuple[tuple[str, float], ...] = ()
    deploy_code_bytes: int = 0
    deploy_in_objective: bool = False
    mip_rel_gap: float = 0.0
    time_limit_s: float = 60.0

    def __post_init__(self):
        names = set(self.topology.devices)
        problems = []
        if self.source not in names:
            problems.append(f"source {self.source!r} is not a device of the topology "
                            f"({', '.join(self.topology.devices)})")
        if self.sink not in ("end", "last") and self.sink not in names:
            problems.append(f"sink {self.sink!r} is not 'end', 'last' or a device")
        missing = [d for d in self.topology.devices if d not in self.costs.devices]
        if missing:
            problems.append(f"the cost table has no times for device(s) {', '.join(missing)}")
        for what, pairs in (("memory cap", self.mem_cap_bytes), ("power model", self.power),
                            ("stage overhead", self.stage_overhead_ms)):
            bad = [d for d, _ in pairs if d not in names]
            if bad:
                problems.append(f"{what} for unknown device(s) {', '.join(bad)}")
        bad = [f"{layer}={d}" for layer, d in self.pins if d not in names]
        if bad:
            problems.append(f"pins to unknown device(s): {', '.join(bad)}")
        if problems:
            raise PlanningError("; ".join(problems))


@dataclass(frozen=True)
class TopoResult:
    """The chosen route (device names, source first), its path problem and plan."""

    route: tuple[str, ...]
    problem: Problem = field(repr=False)
    breakdown: Breakdown
    method: str
    exact: bool
    routes_tried: int = 1


def route_problem(tp: TopoProblem, route: Sequence[str]) -> Problem | None:
    """The path ``Problem`` of ``route``; None when the route misses a device a layer is pinned
    to. Raises PlanningError when two consecutive devices are not linked."""
    route = tuple(route)
    if route[0] != tp.source:
        raise PlanningError(f"a route starts at the source {tp.source!r}, got {route}")
    links = []
    for a, b in zip(route, route[1:]):
        link = tp.topology.link(a, b)
        if link is None:
            raise PlanningError(f"no link from {a!r} to {b!r}")
        links.append(link)
    pos = {d: i for i, d in enumerate(route)}
    if any(d not in pos for _, d in tp.pins):
        return None
    col = [tp.costs.devices.index(d) for d in route]
    costs = CostTable(route, tp.costs.layers, tuple(tuple(row[j] for j in col)
                                                    for row in tp.costs.compute_ms))
    caps, power, over = dict(tp.mem_cap_bytes), dict(tp.power), dict(tp.stage_overhead_ms)
    g = tp.graph
    output_bytes = [tp.input_bytes if tp.input_bytes is not None and t.name in
                    {i.name for i in g.inputs} else t.nbytes for t in g.outputs]
    rates = [tp.topology.deploy_rate(tp.source, d) for d in route]
    return Problem(g, costs, tuple(links), objective=tp.objective, input_bytes=tp.input_bytes,
                   mem_cap_bytes=tuple(caps.get(d) for d in route) if caps else (),
                   pins=tuple((layer, pos[d]) for layer, d in tp.pins),
                   latency_ceiling_ms=tp.latency_ceiling_ms,
                   power=tuple(power.get(d, PowerModel()) for d in route)
                   if tp.objective == "energy" else (),
                   stage_overhead_ms=tuple(float(over.get(d, 0.0)) for d in route) if over else (),
                   output_ms=sink_output_ms(tp.topology, route, output_bytes, tp.sink, tp.source),
                   deploy_code_bytes=tp.deploy_code_bytes,
                   deploy_ms_per_byte=tuple(r[0] for r in rates),
                   deploy_fixed_ms=tuple(r[1] for r in rates),
                   deploy_in_objective=tp.deploy_in_objective, mip_rel_gap=tp.mip_rel_gap,
                   time_limit_s=tp.time_limit_s)


def device_classes(tp: TopoProblem) -> list[tuple[str, ...]]:
    """Devices grouped into classes of interchangeable ones (same cost column, cap, power,
    overhead, and swapping two leaves every link as it is); the source, the sink and devices
    that layers are pinned to are alone in theirs. The source's class is first."""
    t = tp.topology
    alone = {tp.source, tp.sink} | {d for _, d in tp.pins}
    caps, power, over = dict(tp.mem_cap_bytes), dict(tp.power), dict(tp.stage_overhead_ms)

    def signature(d: str):
        j = tp.costs.devices.index(d)
        return (tuple(row[j] for row in tp.costs.compute_ms), caps.get(d), power.get(d),
                over.get(d, 0.0))

    classes: list[list[str]] = [[tp.source]]
    for d in t.devices:
        if d == tp.source:
            continue
        for c in classes[1:]:
            if (d not in alone and c[0] not in alone and signature(d) == signature(c[0])
                    and all(t.interchangeable(d, e) for e in c)):
                c.append(d)
                break
        else:
            classes.append([d])
    return [tuple(c) for c in classes]


def routes(tp: TopoProblem, maximal: bool = True, symmetric: bool = True,
           limit: int | None = None) -> list[tuple[str, ...]]:
    """Simple paths over the links from the source: the maximal ones (no unvisited neighbour
    left), or all of them; with ``symmetric``, one per sequence of device classes. With
    ``limit``, the search stops once it has found more than ``limit``."""
    t = tp.topology
    cls = {d: i for i, c in enumerate(device_classes(tp) if symmetric else [(d,) for d in t.devices])
           for d in c}
    found: dict[tuple[int, ...], tuple[str, ...]] = {}

    def visit(path: list[str]) -> None:
        if limit is not None and len(found) > limit:
            return
        nxt = [d for d in t.neighbours(path[-1]) if d not in path]
        if not maximal or not nxt:
            found.setdefault(tuple(cls[d] for d in path), tuple(path))
        for d in nxt:
            visit(path + [d])

    visit([tp.source])
    return list(found.values())


def _best_over(tp: TopoProblem, candidates, method: str, exact: bool) -> TopoResult:
    from .registry import plan

    best = None
    tried = 0
    for route in candidates:
        problem = route_problem(tp, route)
        if problem is None:
            continue
        tried += 1
        try:
            _, b = plan(problem)
        except PlanningError:
            continue
        if best is None or _better_by(tp.objective, b, best.breakdown):
            best = TopoResult(tuple(route), problem, b, method, exact)
    if best is None:
        raise PlanningError("no route and assignment satisfy the memory caps, pins and latency "
                            "ceiling")
    return TopoResult(best.route, best.problem, best.breakdown, method, exact, tried)


def plan_routes_exact(tp: TopoProblem) -> TopoResult:
    """Every maximal route (every route for energy), each planned exactly on its path."""
    candidates = routes(tp, maximal=tp.objective != "energy", limit=MAX_ROUTES)
    if len(candidates) > MAX_ROUTES:
        raise PlanningError(f"more than {MAX_ROUTES} routes through the {len(tp.topology.devices)} "
                            "devices to plan one by one; use topo-dp-ilp (latency/throughput), "
                            "fewer devices, or devices of a few identical types")
    return _best_over(tp, candidates, "topo-routes", True)


def plan_routes_heuristic(tp: TopoProblem, top: int = 3) -> TopoResult:
    """HEURISTIC for DAGs: the DP's ``top`` best routes, each planned exactly on its path."""
    dp = _subset_dp(tp)
    result = _best_over(tp, [r for _, r, _ in dp[:top]], "topo-dp-ilp", False)
    return result


def plan_routes_dp(tp: TopoProblem) -> TopoResult:
    """The DP over device subsets (exact for chains; consecutive segments for a DAG)."""
    from .registry import is_chain

    value, route, positions = _subset_dp(tp)[0]
    problem = route_problem(tp, route)
    b = evaluate(problem, positions)
    return TopoResult(route, problem, b, "topo-dp", is_chain(problem), 1)


def plan_topology(tp: TopoProblem, method: str = "auto") -> TopoResult:
    """Plan over the topology by name: auto, topo-dp, topo-routes, topo-dp-ilp, topo-oracle."""
    methods = {"topo-dp": plan_routes_dp, "topo-routes": plan_routes_exact,
               "topo-dp-ilp": plan_routes_heuristic, "topo-oracle": plan_routes_oracle}
    if method == "auto":
        dp_ok = tp.objective in ("latency", "throughput") and tp.latency_ceiling_ms is None
        if _is_chain_graph(tp.graph) and dp_ok:
            method = "topo-dp"
        elif not dp_ok or len(routes(tp, maximal=tp.objective != "energy",
                                     limit=MAX_EXACT_ROUTES)) <= MAX_EXACT_ROUTES:
            method = "topo-routes"
        else:
            method = "topo-dp-ilp"
    if method not in methods:
        raise PlanningError(f"unknown topology planner {method!r}; known: auto, {', '.join(methods)}")
    return methods[method](tp)


def _is_chain_graph(g: LayerGraph) -> bool:
    preds = g.predecessors
    return all(i - 1 in preds[i] for i in range(1, len(preds)))


def _subset_dp(tp: TopoProblem) -> list[tuple[float, tuple[str, ...], list[int]]]:
    """(value, route, position per layer) for every final DP state, best first."""
    if tp.objective not in ("latency", "throughput"):
        raise PlanningError(f"the subset DP handles latency and throughput, not {tp.objective!r}; "
                            "use topo-routes")
    if tp.latency_ceiling_ms is not None:
        raise PlanningError("the subset DP has no latency ceiling; use topo-routes")
    g, t = tp.graph, tp.topology
    n = len(g.layers)
    throughput = tp.objective == "throughput"
    classes = device_classes(tp)
    reps = [c[0] for c in classes]
    C = len(classes)
    size = [len(c) for c in classes]
    inputs = {i.name for i in g.inputs}

    def nbytes(name: str) -> int:
        return tp.input_bytes if tp.input_bytes is not None and name in inputs else \
            g.tensors[name].nbytes

    cut = graph_cut_bytes(g, nbytes)
    row = {name: r for r, name in enumerate(tp.costs.layers)}
    params = np.array([layer.param_bytes for layer in g.layers], dtype=float)
    param_pre = np.concatenate([[0.0], np.cumsum(params)])
    act = np.array([layer_activation_bytes(g, i) for i in range(n)], dtype=float)
    # peak[p, q] = max(act[p:q]) for p < q (the largest working set of segment [p, q))
    caps, over = dict(tp.mem_cap_bytes), dict(tp.stage_overhead_ms)
    peak = np.zeros((n + 1, n + 1) if caps else (0, 0))
    for p in range(n if caps else 0):
        peak[p, p + 1:] = np.maximum.accumulate(act[p:])
    pinned = {g.index(layer): d for layer, d in tp.pins}
    out_index = {o.name: k for k, o in enumerate(g.outputs)}
    out_rows = sink_output_ms(t, reps, [nbytes(o.name) for o in g.outputs], tp.sink, tp.source)
    P = np.arange(n + 1)
    below = P[:, None] <= P[None, :]  # p <= q
    nonempty = P[:, None] < P[None, :]

    def separable(d: str, c: int) -> tuple[np.ndarray, float] | None:
        """(F, o) with S[p, q] = F[q] - F[p] + o for p < q (S[q, q] = 0), when device d's
        segment cost has that form (latency, no cap on d, no pins; deployment's fixed part
        paid with the code): the DP step is then a prefix minimum, O(n)."""
        if throughput or d in caps or pinned:
            return None
        per_byte, fixed = t.deploy_rate(tp.source, d) if tp.deploy_in_objective else (0.0, 0.0)
        if fixed and not tp.deploy_code_bytes:
            return None
        j = tp.costs.devices.index(d)
        comp = np.array([tp.costs.compute_ms[row[layer.name]][j] for layer in g.layers])
        ret = np.zeros(n)
        for i, layer in enumerate(g.layers):
            ret[i] = sum(out_rows[out_index[o.name]][c] for o in layer.outputs
                         if o.name in out_index)
        F = np.concatenate([[0.0], np.cumsum(comp + ret)]) + per_byte * param_pre
        o = float(over.get(d, 0.0))
        if tp.deploy_in_objective and (per_byte * tp.deploy_code_bytes + fixed) > 0:
            o += per_byte * tp.deploy_code_bytes + fixed
        return F, o

    def segment(d: str, c: int) -> np.ndarray:
        """S[p, q]: device d's cost of holding layers [p, q) (inf where not allowed)."""
        j = tp.costs.devices.index(d)
        comp = np.array([tp.costs.compute_ms[row[layer.name]][j] for layer in g.layers])
        pre = np.concatenate([[0.0], np.cumsum(comp)])
        S = pre[None, :] - pre[:, None] + float(over.get(d, 0.0)) * nonempty
        if not throughput:
            ret = np.zeros(n)
            for i, layer in enumerate(g.layers):
                ret[i] = sum(out_rows[out_index[o.name]][c] for o in layer.outputs
                             if o.name in out_index)
            rp = np.concatenate([[0.0], np.cumsum(ret)])
            S = S + rp[None, :] - rp[:, None]
            if tp.deploy_in_objective:
                per_byte, fixed = t.deploy_rate(tp.source, d)
                shipped = param_pre[None, :] - param_pre[:, None] + tp.deploy_code_bytes * nonempty
                S = S + np.where(shipped > 0, per_byte * shipped + fixed, 0.0)
        ok = below.copy()
        if d in caps:
            ok &= ~nonempty | (param_pre[None, :] - param_pre[:, None] + peak <= caps[d])
        away = np.concatenate([[0], np.cumsum([1 if pinned.get(i, d) != d else 0
                                               for i in range(n)])])
        ok &= away[None, :] - away[:, None] == 0
        return np.where(ok, S, np.inf)

    sep = [separable(d, c) for c, d in enumerate(reps)]
    seg = [segment(d, c) if sep[c] is None else None for c, d in enumerate(reps)]

    def step(cost: np.ndarray, H: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        """new[q] = min over p <= q of cost[p] (+|max) H[p] (+|max) S_b[p, q], and its p."""
        if sep[b] is not None:
            F, o = sep[b]
            A = cost + H
            G = A - F
            run = np.minimum.accumulate(G)
            at = np.maximum.accumulate(np.where(G == run, P, 0))  # where the running min is
            via = F + o + np.concatenate([[np.inf], run[:-1]])    # the best p < q
            empty = A <= via                                      # p = q: nothing on b
            return np.where(empty, A, via), np.where(empty, P, np.concatenate([[0], at[:-1]]))
        if throughput:
            M = np.maximum(np.maximum(cost, H)[:, None], seg[b])
        else:
            M = (cost + H)[:, None] + seg[b]
        arg = np.argmin(M, axis=0)
        return M[arg, P], arg

    def hop(a: int, b: int) -> np.ndarray | None:
        if a == b:
            if size[a] < 2:
                return None
            link = t.link(classes[a][0], classes[a][1])
        else:
            link = t.link(reps[a], reps[b])
        if link is None:
            return None
        delay = 0.0 if throughput else link.rtt_s / 2   # a stream's bottleneck: occupancy
        return np.where(cut > 0, 1e3 * (cut * 8 / link.up_bps + delay), 0.0)

    hops = [[hop(a, b) for b in range(C)] for a in range(C)]
    start = tuple(1 if c == 0 else 0 for c in range(C))
    first = seg[0][0].copy() if sep[0] is None else \
        np.where(P > 0, sep[0][0] - sep[0][0][0] + sep[0][1], 0.0)
    # state (counts, last class) -> (cost[q], arg p[q], predecessor state id[q] (-1: none))
    ids: list = [(start, 0)]
    states: dict[tuple[tuple[int, ...], int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {
        (start, 0): (first, np.zeros(n + 1, dtype=int), np.full(n + 1, -1))}
    key_id = {(start, 0): 0}
    frontier = [(start, 0)]
    while frontier:
        nxt: dict = {}
        for key in frontier:
            counts, a = key
            cost = states[key][0]
            for b in range(C):
                if counts[b] >= size[b] or hops[a][b] is None:
                    continue
                val, arg = step(cost, hops[a][b], b)
                new = (tuple(c + (i == b) for i, c in enumerate(counts)), b)
                me = np.full(n + 1, key_id[key])
                if new not in nxt:
                    nxt[new] = (val, arg, me)
                else:
                    old_val, old_arg, old_pred = nxt[new]
                    better = val < old_val
                    nxt[new] = (np.where(better, val, old_val), np.where(better, arg, old_arg),
                                np.where(better, me, old_pred))
        for new in nxt:
            key_id[new] = len(ids)
            ids.append(new)
        states.update(nxt)
        frontier = list(nxt)
    finals = []
    for key, (cost, _, _) in states.items():
        if math.isfinite(cost[n]):
            finals.append((float(cost[n]), key))
    if not finals:
        raise PlanningError("no route and split into consecutive segments satisfies the memory "
                            "caps and pins (try topo-routes, or larger caps)")
    finals.sort(key=lambda f: f[0])
    out = []
    for value, key in finals:
        seq, cuts = [], []
        q = n
        while key is not None:
            _, arg, pred = states[key]
            p = int(arg[q]) if pred[q] >= 0 else 0
            seq.append(key[1])
            cuts.append((p, q))
            key, q = (ids[pred[q]] if pred[q] >= 0 else None), p
        seq.reverse()
        cuts.reverse()
        used = {c: 0 for c in range(C)}
        route, positions = [], [0] * n
        for pos, (c, (p, q)) in enumerate(zip(seq, cuts)):
            route.append(classes[c][used[c]])
            used[c] += 1
            for i in range(p, q):
                positions[i] = pos
        out.append((value, tuple(route), positions))
    return out


def plan_routes_oracle(tp: TopoProblem) -> TopoResult:
    """Brute force over devices, orders and assignments (``oracle.plan_over_routes`` on every
    simple route from the source, no device taken as interchangeable with another)."""
    candidates = routes(tp, maximal=False, symmetric=False)
    route, problem, b = plan_over_routes(tp.objective, ((r, route_problem(tp, r)) for r in candidates))
    return TopoResult(route, problem, b, "topo-oracle", True, len(candidates))
