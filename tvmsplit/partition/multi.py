"""Several end devices sharing one edge (ITU-T F.748.20 section 8.2).

Each end device ``i`` has its own model, cost table (end and edge times at a whole edge) and link.
The edge's compute and the uplink bandwidth into the edge are shared: device ``i`` gets shares
``compute_share[i]`` and ``bandwidth_share[i]`` (each summing to <= 1 over the devices); its edge
layers (and the edge's per-request stage overhead) take ``edge_ms / compute_share`` and its
transfers ``bytes / (bandwidth_share x bps)``. ``tvmsplit.multi_eval`` enforces the shares on the
testbed (``testbed/shared.py``) and measures the plans.

``plan_shared_edge`` chooses every device's split jointly with its shares, minimising the worst
latency over the devices, then (``spread``, among the assignments with that worst latency) the
sum of the devices' latencies, so spare edge compute and bandwidth go to someone. A device whose model alone on the end device already meets its
``deadline_ms`` leaves the edge alone (shares 0). Shares are chosen on a grid of ``1/steps``:
for each candidate share pair the device's best split is computed exactly (chain DP / min cut /
MILP through ``plan``), then a DP over devices picks the pairs (sum of compute shares on the grid
as the state, minimum bandwidth used as the value) under a bisection on the worst latency.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .problem import Breakdown, CostTable, PlanningError, Problem


@dataclass(frozen=True)
class EndDevice:
    """One end device: its planning problem at full edge compute and bandwidth, and a deadline."""

    name: str
    problem: Problem
    deadline_ms: float | None = None


@dataclass(frozen=True)
class SharedPlan:
    names: tuple[str, ...]
    compute_share: tuple[float, ...]
    bandwidth_share: tuple[float, ...]
    plans: tuple[Breakdown, ...]

    @property
    def worst_latency_ms(self) -> float:
        return max(b.latency_ms for b in self.plans)


def with_shares(problem: Problem, compute_share: float, bandwidth_share: float) -> Problem:
    """The device's problem when it holds these shares of the edge (device 1) and its link."""
    if problem.n_devices != 2:
        raise PlanningError("a shared edge is planned for end -> edge paths of 2 devices")
    c = problem.costs
    rows = tuple((row[0], row[1] / compute_share if compute_share > 0 else math.inf)
                 for row in c.compute_ms)
    link = problem.links[0]
    scaled = replace(link, up_bps=link.up_bps * bandwidth_share,
                     down_bps=link.down_bps * bandwidth_share) if bandwidth_share > 0 else None
    if scaled is None or compute_share <= 0:
        return replace(problem, pins=tuple((layer.name, 0) for layer in problem.graph.layers))
    # the edge worker's fixed per-request work runs under the same share as its layers
    overhead = problem.stage_overhead_ms
    if overhead:
        overhead = (overhead[0], overhead[1] / compute_share)
    return replace(problem, costs=CostTable(c.devices, c.layers, rows), links=(scaled,),
                   stage_overhead_ms=overhead)


def _best(problem: Problem) -> Breakdown | None:
    from . import plan

    try:
        return plan(problem)[1]
    except PlanningError:
        return None


def spread(options: Sequence[dict[tuple[int, int], Breakdown]], limit_ms: float,
           steps: int) -> list[tuple[int, int]]:
    """Among the share pairs with every latency <= ``limit_ms`` and shares summing to <= 1
    (``steps`` each), those with the least sum of latencies (then the fewest steps used): the
    second objective under the worst latency, so the edge a device leaves (its deadline met
    alone) goes to the others instead of idling. A DP over devices, state (compute, bandwidth
    steps used)."""
    # best[(c, b)] = (sum of latencies, back-pointer (previous state, pair))
    layers: list[dict[tuple[int, int], tuple[float, tuple | None]]] = [{(0, 0): (0.0, None)}]
    for opts in options:
        fits = [(pair, b.latency_ms) for pair, b in opts.items() if b.latency_ms <= limit_ms + 1e-9]
        nxt: dict[tuple[int, int], tuple[float, tuple | None]] = {}
        for (uc, ub), (total, _) in layers[-1].items():
            for (cs, bs), ms in fits:
                key = (uc + cs, ub + bs)
                if key[0] > steps or key[1] > steps:
                    continue
                if key not in nxt or total + ms < nxt[key][0] - 1e-9:
                    nxt[key] = (total + ms, ((uc, ub), (cs, bs)))
        if not nxt:
            raise PlanningError(f"no share assignment keeps every latency <= {limit_ms:.3f} ms")
        layers.append(nxt)
    state = min(layers[-1], key=lambda k: (round(layers[-1][k][0], 9), k[0] + k[1]))
    chosen = []
    for layer in reversed(layers[1:]):
        state, pair = layer[state][1]
        chosen.append(pair)
    return chosen[::-1]


def plan_shared_edge(devices: Sequence[EndDevice], steps: int = 20) -> SharedPlan:
    if not devices:
        raise PlanningError("no end devices to plan")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise PlanningError(f"end device names repeat: {', '.join(names)}")
    grid = range(steps + 1)
    # options[i][(cs, bs)] = device i's best plan with shares cs/steps, bs/steps
    options: list[dict[tuple[int, int], Breakdown]] = []
    for dev in devices:
        alone = _best(with_shares(dev.problem, 0, 0))
        opts: dict[tuple[int, int], Breakdown] = {}
        if alone is not None:
            opts[(0, 0)] = alone
        if alone is None or dev.deadline_ms is None or alone.latency_ms > dev.deadline_ms:
            for cs in grid[1:]:
                for bs in grid[1:]:
                    b = _best(with_shares(dev.problem, cs / steps, bs / steps))
                    if b is not None:
                        opts[(cs, bs)] = b
        if not opts:
            raise PlanningError(f"end device {dev.name!r} has no feasible plan at any share")
        options.append(opts)

    def allocate(limit_ms: float) -> list[tuple[int, int]] | None:
        """Pairs with every latency <= limit and shares summing to <= 1, or None."""
        # best[c] = (min bandwidth steps used, choices) with c compute steps used so far
        best: dict[int, tuple[int, list[tuple[int, int]]]] = {0: (0, [])}
        for opts in options:
            nxt: dict[int, tuple[int, list[tuple[int, int]]]] = {}
            for used_c, (used_b, chosen) in best.items():
                for (cs, bs), b in opts.items():
                    if b.latency_ms > limit_ms + 1e-9 or used_c + cs > steps or used_b + bs > steps:
                        continue
                    key = used_c + cs
                    if key not in nxt or used_b + bs < nxt[key][0]:
                        nxt[key] = (used_b + bs, chosen + [(cs, bs)])
            best = nxt
            if not best:
                return None
        return min(best.values(), key=lambda v: v[0])[1]

    candidates = sorted({b.latency_ms for opts in options for b in opts.values()})
    lo, hi = 0, len(candidates) - 1
    if allocate(candidates[hi]) is None:
        raise PlanningError("the end devices cannot share the edge: no share assignment sums to <= 1")
    while lo < hi:  # the smallest achievable worst latency among the candidate values
        mid = (lo + hi) // 2
        if allocate(candidates[mid]) is not None:
            hi = mid
        else:
            lo = mid + 1
    chosen = spread(options, candidates[lo], steps)
    return SharedPlan(tuple(names), tuple(cs / steps for cs, _ in chosen),
                      tuple(bs / steps for _, bs in chosen),
                      tuple(options[i][pair] for i, pair in enumerate(chosen)))
