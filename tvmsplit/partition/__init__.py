"""Partition planners: pure functions ``Problem -> Breakdown``, registered by name.

Here an *assignment* is a device index per layer (``Breakdown.assignment``, monotone along the
device path: data only flows from the end device upwards); ``planning.to_plan`` turns it into the
stages of a ``plan.Plan`` (``split.plan_split``'s ``stage_of``: a stage index per layer).

- ``chain-dp``: Neurosurgeon's DP over consecutive segments, k devices on a path; exact for chains.
- ``dag-mincut``: DADS, one min s-t cut; exact for DAGs on 2 devices, latency objective.
- ``dag-ilp``: a MILP; exact for DAGs on k devices, every objective, memory caps, pins, ceilings.
- ``oracle``: brute force over every monotone assignment (small graphs; the tests' reference).
- ``all-on-end`` / ``all-on-edge``: baselines.
``plan(problem)`` picks the fastest exact one for the problem (``method="auto"``).

Over a device graph (``topology.Topology``: any device may link to any other), ``routes``
chooses the devices and their order too: ``plan_topology(TopoProblem)`` with ``topo-dp`` (DP over
device subsets, exact for chains), ``topo-routes`` (every route, exact), ``topo-dp-ilp`` (a
heuristic for DAGs on many devices) and ``topo-oracle`` (brute force); see ``partition/routes.py``.

How to add a planner
--------------------
1. Write it as a pure function in its own module here, ``partition/<name>.py``::

       def plan_foo(problem: Problem) -> Breakdown:
           ...  # choose a device index per layer of problem.graph (topological order)
           return evaluate(problem, assignment)

   Read everything from ``problem`` (``graph``, ``costs``, ``links``, ``objective``, ``cap``,
   ``pinned()``, ``latency_ceiling_ms``, ``power``, ``overhead_ms``: a device that runs a layer
   pays its per-request overhead) and price the result with ``evaluate`` so every planner is
   compared by the same cost model. Never return an assignment that is not
   monotone (a layer on a lower device than one it reads); honour pins, memory caps and the
   latency ceiling, or raise ``PlanningError`` saying which one cannot be met and how to relax it
   (``plan`` also rejects an infeasible result with ``feasible``). Do no I/O.
2. Register it by name in the loop below (``register(name, fn)``; a duplicate name is refused,
   ``plan`` lists the known names on a miss). If it is exact and faster than the current choice
   for some problems, teach ``choose`` when to pick it; a heuristic belongs in ``BASELINES``
   only if the ``tvmsplit plan`` table should compare against it.
3. Add oracle tests in ``tests/test_partition.py``: a hypothesis test over ``problems(...)``
   (restricted to the problems it claims, e.g. ``max_devices=2, objective="latency"``) that calls
   ``_same_optimum(problem, "<name>")`` (exact planners equal ``plan_oracle``'s objective), or
   for a heuristic that it is never better than the oracle; plus a test on a zoo model that it
   agrees with ``dag-ilp``.
4. List it in the README's planner table and here.
"""
from __future__ import annotations

from collections.abc import Callable

from .chain import plan_chain
from .ilp import plan_ilp
from .mincut import plan_mincut
from .oracle import plan_oracle
from .problem import (Breakdown, CostTable, PlanningError, PowerModel, Problem, evaluate, feasible,
                      layer_activation_bytes)

Planner = Callable[[Problem], Breakdown]


def plan_all_on_end(problem: Problem) -> Breakdown:
    return evaluate(problem, [0] * len(problem.graph.layers))


def plan_all_on_edge(problem: Problem) -> Breakdown:
    return evaluate(problem, [problem.n_devices - 1] * len(problem.graph.layers))


PLANNERS: dict[str, Planner] = {}


def register(name: str, planner: Planner) -> None:
    if name in PLANNERS:
        raise ValueError(f"planner {name!r} is already registered")
    PLANNERS[name] = planner


for _name, _fn in (("chain-dp", plan_chain), ("dag-mincut", plan_mincut), ("dag-ilp", plan_ilp),
                   ("oracle", plan_oracle), ("all-on-end", plan_all_on_end),
                   ("all-on-edge", plan_all_on_edge)):
    register(_name, _fn)

BASELINES = ("all-on-end", "all-on-edge", "chain-dp", "dag-mincut")


def is_chain(problem: Problem) -> bool:
    """Every layer reads its predecessor in the order (skip edges allowed): then every monotone
    assignment is a run of consecutive segments, and the chain DP is exact."""
    preds = problem.graph.predecessors
    return all(i - 1 in preds[i] for i in range(1, len(preds)))


def choose(problem: Problem) -> str:
    """The fastest exact planner for this problem."""
    if problem.latency_ceiling_ms is None and is_chain(problem):
        return "chain-dp"
    if (problem.n_devices == 2 and problem.objective == "latency" and problem.latency_ceiling_ms is None
            and all(c == float("inf") for c in problem.cap) and not problem.deploy_in_objective):
        return "dag-mincut"
    return "dag-ilp"


def check_memory(problem: Problem) -> None:
    """Name the layer that fits no device, or the shortfall of the whole model, before planning."""
    caps = problem.cap
    if all(c == float("inf") for c in caps):
        return
    g = problem.graph
    biggest = max(caps)
    where = problem.costs.devices[caps.index(biggest)]
    for i, layer in enumerate(g.layers):
        need = layer.param_bytes + layer_activation_bytes(g, i)
        if need > biggest:
            raise PlanningError(f"layer {layer.name!r} needs {need} bytes (weights {layer.param_bytes} "
                                f"+ activations) but the largest memory cap is {int(biggest)} bytes "
                                f"({where}); split it horizontally (HyPS) or raise the cap")
    total = sum(layer.param_bytes for layer in g.layers)
    if total > sum(caps):
        raise PlanningError(f"the model's weights need {total} bytes but the devices' caps add up "
                            f"to {int(sum(caps))} bytes; add a device, raise the caps, or let a device "
                            "hold one segment of layers at a time (sequential, HyPS: plan "
                            "--sequential auto)")


def plan(problem: Problem, method: str = "auto") -> tuple[str, Breakdown]:
    """Run a planner by name (``auto``: the fastest exact one); returns (name, breakdown)."""
    check_memory(problem)
    name = choose(problem) if method == "auto" else method
    if name not in PLANNERS:
        raise PlanningError(f"unknown planner {name!r}; known: auto, {', '.join(PLANNERS)}")
    result = PLANNERS[name](problem)
    if not feasible(problem, result):
        raise PlanningError(f"planner {name} found no plan that satisfies the memory caps, pins "
                            "and latency ceiling")
    return name, result


from .routes import TopoProblem, TopoResult, plan_topology  # noqa: E402  (needs plan, is_chain)

__all__ = ["BASELINES", "PLANNERS", "Breakdown", "CostTable", "PlanningError", "PowerModel", "Problem", "choose",
           "evaluate", "feasible", "plan", "plan_topology", "register", "TopoProblem", "TopoResult"]
