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

from .problem import (Breakdown, CostTable, PlanningError, PowerModel, Problem, evaluate, feasible,
                      layer_activation_bytes)
from .registry import (BASELINES, PLANNERS, Planner, check_memory, choose, is_chain,
                       plan, plan_all_on_edge, plan_all_on_end, register)
from .routes import TopoProblem, TopoResult, plan_topology

__all__ = ["BASELINES", "PLANNERS", "Breakdown", "CostTable", "Planner", "PlanningError", "PowerModel",
           "Problem", "TopoProblem", "TopoResult", "check_memory", "choose", "evaluate", "feasible",
           "is_chain", "layer_activation_bytes", "plan", "plan_all_on_edge", "plan_all_on_end",
           "plan_topology", "register"]
