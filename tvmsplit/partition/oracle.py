"""Brute force: every monotone assignment. Exponential; the reference for tests on small graphs.

``plan_over_routes``: the same over a device graph — every route given (``routes`` passes every
simple route from the source) times every monotone assignment along it; the reference for
``partition.routes``' planners."""
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
    return _better_by(problem.objective, a, b)



def plan_over_routes(objective: str, candidates):
    """Brute force over routes: ``candidates`` yields ``(route, Problem | None)`` (None: the route
    cannot hold the pins); every assignment of every route's problem (``plan_oracle``). Returns
    the best ``(route, problem, breakdown)``; ``routes.plan_routes_oracle`` enumerates them."""
    best = None
    for route, problem in candidates:
        if problem is None:
            continue
        try:
            b = plan_oracle(problem)
        except PlanningError:
            continue
        if best is None or _better_by(objective, b, best[2]):
            best = (tuple(route), problem, b)
    if best is None:
        raise PlanningError("no route and assignment satisfy the memory caps, pins and latency "
                            "ceiling")
    return best


def _better_by(objective: str, a: Breakdown, b: Breakdown) -> bool:
    oa, ob = a.objective(objective), b.objective(objective)
    if abs(oa - ob) > 1e-9 * max(1.0, abs(ob)):
        return oa < ob
    return a.latency_ms < b.latency_ms - 1e-9 * max(1.0, b.latency_ms)
