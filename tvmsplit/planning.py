"""From a partitioning problem to a buildable Plan: devices, links, costs -> stages with targets.

``plan_partition`` runs a planner (``tvmsplit.partition``) and turns its assignment into a
``split.Plan``: the devices that received layers become the stages, in path order, each compiled
for its device's target. The predicted breakdown and the baselines travel with it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .graph import LayerGraph
from .links import Link
from .partition import (BASELINES, PLANNERS, Breakdown, CostTable, PlanningError, PowerModel,
                        Problem, plan)
from .split import Plan, plan_split
from .targets import get_target


@dataclass(frozen=True)
class Device:
    """A device on the path: its name (as in the cost table) and the target its stage is built for."""

    name: str
    target: str
    mem_cap_bytes: int | None = None


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

    def to_json(self) -> dict:
        def breakdown(b: Breakdown | None):
            if b is None:
                return None
            return {"assignment": list(b.assignment), "compute_ms": list(b.compute_ms),
                    "hop_bytes": list(b.hop_bytes), "hop_ms": list(b.hop_ms),
                    "return_ms": b.return_ms, "memory_bytes": list(b.memory_bytes),
                    "latency_ms": b.latency_ms, "bottleneck_ms": b.bottleneck_ms,
                    "energy_mj": b.energy_mj}

        return {"plan": self.plan.to_json(), "method": self.method,
                "horizontal": dict(self.horizontal),
                "devices": [{"name": d.name, "target": d.target, "mem_cap_bytes": d.mem_cap_bytes}
                            for d in self.devices],
                "predicted": breakdown(self.predicted),
                "baselines": {name: breakdown(b) for name, b in self.baselines}}


def plan_partition(graph: LayerGraph, devices: Sequence[Device], links: Sequence[Link],
                   costs: CostTable, *, objective: str = "latency", method: str = "auto",
                   pins: Mapping[str, str] | None = None, input_bytes: int | None = None,
                   latency_ceiling_ms: float | None = None, horizontal: bool = True,
                   power: Mapping[str, PowerModel] | None = None) -> PlannedSplit:
    """Choose where to cut ``graph`` across ``devices`` (a path: end -> edge -> ...).

    With memory caps, a layer that fits no device is first split horizontally (HyPS) into the
    fewest parts that fit the largest cap; each part is predicted to take its share of the
    layer's time. ``horizontal=False`` reports such a layer as infeasible instead.
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
    problem = Problem(graph, costs, tuple(links), objective=objective, input_bytes=input_bytes,
                      mem_cap_bytes=tuple(d.mem_cap_bytes for d in devices), pins=tuple(pin_list),
                      latency_ceiling_ms=latency_ceiling_ms,
                      power=tuple((power or {}).get(n, PowerModel()) for n in names)
                      if objective == "energy" else ())
    method, best = plan(problem, method)
    baselines = []
    for name in BASELINES:
        if name == "dag-mincut" and len(devices) != 2:
            continue
        try:
            baselines.append((name, PLANNERS[name](problem)))
        except PlanningError:
            baselines.append((name, None))
    return PlannedSplit(to_plan(graph, best, devices), method, best, tuple(devices), tuple(baselines),
                        graph, tuple(sorted(hparts.items())), problem.costs)


def _split_costs(costs: CostTable, graph: LayerGraph, hparts: dict[str, int]) -> CostTable:
    """Rows for H-parts (an equal share of the layer's time) and merges (free)."""
    rows = dict(zip(costs.layers, costs.compute_ms))
    for name, parts in hparts.items():
        for h in range(parts):
            rows[f"{name}_h{h}"] = tuple(t / parts for t in rows[name])
        rows[f"{name}_merge"] = tuple(0.0 for _ in costs.devices)
    names = tuple(layer.name for layer in graph.layers)
    return CostTable(costs.devices, names, tuple(rows[n] for n in names))


def to_plan(graph: LayerGraph, breakdown: Breakdown, devices: Sequence[Device]) -> Plan:
    """The stages of an assignment: devices that run layers, in path order."""
    used = sorted(set(breakdown.assignment))
    stage_of_device = {d: s for s, d in enumerate(used)}
    assignment = {layer.name: stage_of_device[d]
                  for layer, d in zip(graph.layers, breakdown.assignment)}
    return plan_split(graph, assignment=assignment, targets=[devices[d].target for d in used])
