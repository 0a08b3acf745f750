"""Brute force: every monotone assignment. Exponential; the reference for tests on small graphs.

``plan_routes_oracle``: the same over a device graph — every simple route from the source (every
prefix, no device treated as interchangeable with another) times every monotone assignment along
it; the reference for ``partition.routes``' planners."""
from __future__ import annotations

from .problem import Breakdown, PlanningError, Problem, evaluate, feasible

MAX_ASSIGNMENTS = 2_000_000


def plan_oracle(problem: Problem) -> Breakdown:
    g, k = problem.graph, problem.n_devices
    n = len(g.layers)
    preds = g.predecessors
    pinned = problem.pinned()
    best: Breakdown | None = None
    count = 0
    dev = [0] * n

    def visit(i: int) -> None:
        nonlocal best, count
        if i == n:
            count += 1
            if count > MAX_ASSIGNMENTS:
                raise PlanningError(f"more than {MAX_ASSIGNMENTS} assignments; the oracle is for "
                                    "small graphs only")
            b = evaluate(problem, dev)
            if feasible(problem, b) and (best is None or _better(problem, b, best)):
                best = b
            return
        low = max((dev[p] for p in preds[i]), default=0)
        choices = [pinned[i]] if i in pinned else range(low, k)
        for d in choices:
            if d >= low:
                dev[i] = d
                visit(i + 1)

    visit(0)
    if best is None:
        raise PlanningError("no assignment satisfies the memory caps, pins and latency ceiling")
    return best


def _better(problem: Problem, a: Breakdown, b: Breakdown) -> bool:
    """Lower objective wins; on a tie, lower latency."""
    oa, ob = a.objective(problem.objective), b.objective(problem.objective)
    if abs(oa - ob) > 1e-9 * max(1.0, abs(ob)):
        return oa < ob
    return a.latency_ms < b.latency_ms - 1e-9 * max(1.0, b.latency_ms)


def plan_routes_oracle(tp):
    """Brute force over devices, orders and assignments of a ``routes.TopoProblem``."""
    from .routes import TopoResult, _better, route_problem, routes

    best = None
    candidates = routes(tp, maximal=False, symmetric=False)
    for route in candidates:
        problem = route_problem(tp, route)
        if problem is None:
            continue
        try:
            b = plan_oracle(problem)
        except PlanningError:
            continue
        if best is None or _better(tp.objective, b, best.breakdown):
            best = TopoResult(route, problem, b, "topo-oracle", True, len(candidates))
    if best is None:
        raise PlanningError("no route and assignment satisfy the memory caps, pins and latency "
                            "ceiling")
    return best
