"""DADS: the latency-optimal split of a DAG between two devices by one minimum s-t cut.

Source side = the end device (d0), sink side = the edge (d1). For layer v: edge s->v costs v's
time on the edge (paid when v is on the sink side), v->t its time on the end device. Each tensor
gets an auxiliary node a: producer->a with capacity = its transfer time, a->consumer infinite, so
a tensor read by several edge layers is paid once. Infinite consumer->producer edges forbid
sending data back down. The link's rtt/2 is paid once if anything crosses: the optimum is the
better of "all on the end device" and "min cut + rtt/2".

Per-request overheads (``Problem.overhead_ms``) are constants per set of devices used: every split
pays o0 + o1, all-on-end o0, all-on-edge o1. So the min cut, when it is a split, is still the best
split, and the optimum is the best of it and the two single sites, each priced by ``evaluate``.
(When the cut is all-on-end, it beats every split and all-on-edge, unless o0 > 0 makes all-on-edge
cheaper; when it is all-on-edge, it beats every split.)

Capacities are integers (picoseconds, ``RESOLUTION_PER_MS``) and the infinite edges carry no
capacity (networkx's "unbounded"): networkx finds the cut's side by comparing each edge's flow
with its capacity for equality, which float capacities break (it returned a partition worth
2.4% more than the cut value it reported; found by the property test against the oracle). The
rounding moves a plan's cost by at most one picosecond per edge; the plan is then priced with
the exact costs by ``evaluate``.
"""
from __future__ import annotations

import networkx as nx

from .problem import Breakdown, PlanningError, Problem, evaluate

RESOLUTION_PER_MS = 10**9  # capacity units per millisecond (picoseconds)


def _cap(ms: float) -> int:
    return round(ms * RESOLUTION_PER_MS)


def plan_mincut(problem: Problem) -> Breakdown:
    if problem.n_devices != 2 or problem.objective != "latency":
        raise PlanningError("the min-cut planner handles 2 devices and the latency objective")
    if problem.deploy_in_objective:
        raise PlanningError("the min-cut planner does not price deployment; use dag-ilp")
    if any(c != float("inf") for c in problem.cap) or problem.latency_ceiling_ms is not None:
        raise PlanningError("the min-cut planner has no memory caps or latency ceiling; use dag-ilp")
    g = problem.graph
    link = problem.links[0]
    bps_up = link.up_bps
    G = nx.DiGraph()
    s, t = "s", "t"
    outputs = {o.name: k for k, o in enumerate(g.outputs)}
    for i, layer in enumerate(g.layers):
        end_ms, edge_ms = problem.compute[i]
        # delivering the outputs it makes from where it runs (Problem.return_ms)
        end_ms += sum(problem.return_ms(outputs[o.name], 0) for o in layer.outputs if o.name in outputs)
        edge_ms += sum(problem.return_ms(outputs[o.name], 1) for o in layer.outputs if o.name in outputs)
        G.add_edge(s, i, capacity=_cap(edge_ms))
        G.add_edge(i, t, capacity=_cap(end_ms))
    readers: dict[str, set[int]] = {}
    for _, j, tensor in g.edges:
        readers.setdefault(tensor.name, set()).add(j)
    producer = g.producer
    for name, consumers in readers.items():
        a = ("tensor", name)
        src = s if producer[name] < 0 else producer[name]
        G.add_edge(src, a, capacity=_cap(1e3 * problem.tensor_bytes(name) * 8 / bps_up))
        for j in consumers:
            G.add_edge(a, j)  # no capacity: unbounded
            if producer[name] >= 0:
                G.add_edge(j, producer[name])
    for i, d in problem.pinned().items():
        if d == 0:
            G.remove_edge(s, i)  # an unbounded s->i keeps i on the source side
            G.add_edge(s, i)
        else:
            G.remove_edge(i, t)
            G.add_edge(i, t)
    try:
        _, (source_side, _) = nx.minimum_cut(G, s, t)
    except nx.NetworkXUnbounded:
        raise PlanningError("the pins contradict each other (a layer pinned to the end device reads "
                            "from one pinned to the edge)") from None
    n = len(g.layers)
    candidates = [evaluate(problem, [0 if i in source_side else 1 for i in range(n)])]
    pins = problem.pinned().values()
    if all(d == 0 for d in pins):
        candidates.append(evaluate(problem, [0] * n))
    if all(d == 1 for d in pins) and problem.overhead[0] > 0:
        candidates.append(evaluate(problem, [1] * n))  # beats the cut only by saving d0's overhead
    return min(candidates, key=lambda b: b.latency_ms)
