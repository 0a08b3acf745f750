"""The planner registry and ``plan`` (the dispatch by name, ``auto``: the fastest exact planner);
re-exported by ``tvmsplit.partition`` (its docstring says how to add a planner). A module of its
own so that ``routes`` can call ``plan`` without importing the package."""
from __future__ import annotations

from collections.abc import Callable

from .chain import plan_chain
from .ilp import plan_ilp
from .mincut import plan_mincut
from .oracle import plan_oracle
from .problem import (Breakdown, PlanningError, Problem, evaluate, feasible,
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
