"""Re-planning at run time: when the link or a device's load moves past a threshold, choose a new
plan and swap it into the running pipeline without losing a request (ITU-T F.748.20 8.1).

Two signals:
- **the link**: ``current_link()`` (a ``LinkMonitor``'s smoothed estimate, or any callable
  returning a ``Link``); a re-plan when its uplink differs from the one the running plan was made
  for by more than ``threshold`` (relative);
- **each device's load**, from the pipeline's own traces: :meth:`Replanner.observe` compares a
  device's time on a request with what the cost table predicts for its stages unloaded, and
  keeps a *slowdown* per device, the median of the last ``window`` requests' ratios (1 = as
  profiled, 2 = half its CPU is gone). A device's time is its stages' compute plus the wait
  before each of them could take the request when it came from the same device (the client
  counts as the end device, ``devices[0]``): a local hop moves no bytes over a link, so its time
  is the device not getting to the request, e.g. a burner holding the CPU (measured on the
  testbed's capped device: under a burner the stage's compute stays ~1 ms while the request
  waits for the CPU before it). Hops over a link are the link monitor's business, not load.
  A re-plan when a device's
  slowdown moved by more than ``load_threshold`` (relative) from the one the plan was made for;
  the planner then sees that device's costs times its slowdown. A device that runs no stage of
  the current plan keeps its last estimate (``set_slowdown`` lets a device's own health report
  set it).

Swaps: a new plan is built (stage builds are cached by content) and swapped in with
``Pipeline.swap(keep=True)``, so the plan it replaces stands by and swapping back is only a
change of routes. :meth:`Replanner.prepare` builds and starts the plans of states you expect
(e.g. the link profiles a phone goes through), so that even the first swap to them is instant.
Call :meth:`check` between requests, or from the loop that consumes ``stream``; each swap is
recorded in ``history``.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .build import build_bundle
from .devices import Device, Link
from .graph import LayerGraph
from .partition import CostTable
from .planning import PlannedSplit, plan_partition


@dataclass(frozen=True)
class Swap:
    """One re-plan that changed the stages."""

    at: float                          # time.monotonic() when check() decided
    reason: str                        # "link 8.8 -> 1.1 Mbit/s", "end load 1.0x -> 2.1x"
    before: tuple[int, ...]            # layer -> device assignments
    after: tuple[int, ...]
    seconds: float                     # from the decision to the new plan taking requests
    prepared: bool                     # its workers were already standing by


def scaled_costs(costs: CostTable, slowdown: Sequence[float]) -> CostTable:
    """``costs`` with device d's times multiplied by ``slowdown[d]``."""
    return CostTable(costs.devices, costs.layers,
                     tuple(tuple(t * f for t, f in zip(row, slowdown)) for row in costs.compute_ms))


class Replanner:
    def __init__(self, pipeline, graph: LayerGraph, devices: Sequence[Device], costs: CostTable,
                 current_link: Callable[[], Link], out_dir: str | os.PathLike, *,
                 threshold: float = 0.3, load_threshold: float = 0.3, window: int = 5,
                 **plan_kwargs):
        self.pipeline, self.graph, self.devices, self.costs = pipeline, graph, list(devices), costs
        self.current_link, self.out_dir, self.threshold = current_link, Path(out_dir), threshold
        self.load_threshold = load_threshold
        # the last ``window`` measured/profiled ratios per device; the slowdown is their median,
        # so one request that met a throttled quota period does not read as a loaded device
        self._ratios = [deque(maxlen=window) for _ in devices]
        self.plan_kwargs = plan_kwargs
        self.link = current_link()
        self.slowdown = [1.0] * len(self.devices)   # the current estimate, per device
        self.planned_slowdown = list(self.slowdown)  # the one the running plan was made for
        self.planned: PlannedSplit = self._plan(self.link, self.slowdown)
        self.history: list[Swap] = []
        self._bundles: dict[tuple[int, ...], Path] = {}  # built plans, by assignment

    @property
    def swaps(self) -> int:
        return len(self.history)

    def _plan(self, link: Link, slowdown: Sequence[float]) -> PlannedSplit:
        costs = self.costs if all(f == 1.0 for f in slowdown) else scaled_costs(self.costs, slowdown)
        return plan_partition(self.graph, self.devices, [link], costs, **self.plan_kwargs)

    def bundle(self, planned: PlannedSplit | None = None) -> Path:
        """The bundle of ``planned`` (default: the current plan), built once; start the
        pipeline on ``replanner.bundle()`` so a swap back to the first plan reuses it."""
        planned = planned or self.planned
        key = planned.predicted.assignment
        if key not in self._bundles:
            out = self.out_dir / f"plan{len(self._bundles) + 1}"
            build_bundle(planned.graph, planned.plan, out)
            self._bundles[key] = out
        return self._bundles[key]

    def bundle_for(self, assignment: Sequence[int]) -> Path:
        """The bundle of any layer -> device ``assignment`` (built once; e.g. to time a plan
        the planner did not choose)."""
        from .partition import Problem
        from .partition.problem import evaluate
        from .planning import to_plan

        key = tuple(int(d) for d in assignment)
        if key not in self._bundles:
            b = evaluate(Problem(self.graph, self.costs, (self.link,)), key)
            plan_, _ = to_plan(self.graph, b, self.devices)
            out = self.out_dir / f"plan{len(self._bundles) + 1}"
            build_bundle(self.graph, plan_, out)
            self._bundles[key] = out
        return self._bundles[key]

    # ----------------------------------------------------------------------------- signals
    def observe(self, trace) -> None:
        """Update each device's slowdown from one request's trace of the running plan: its
        stages' measured compute, plus the waits on hops into them from the same device, over
        the cost table's (unloaded) prediction for them."""
        from .plan import CLIENT_END

        rows = dict(zip(self.costs.layers, self.costs.compute_ms))
        measured = [0.0] * len(self.devices)
        predicted = [0.0] * len(self.devices)
        device_of = {CLIENT_END: 0}
        for stage, d in zip(self.planned.plan.stages, self.planned.stage_devices):
            device_of[stage.index] = d
            if stage.index < len(trace.compute_ms):
                measured[d] += trace.compute_ms[stage.index]
                predicted[d] += sum(rows[name][d] for name in stage.layers if name in rows)
        for hop in trace.hops:
            d = device_of.get(hop.dst)
            if hop.dst != CLIENT_END and d is not None and device_of.get(hop.src) == d:
                measured[d] += max(0.0, hop.ms)
        for d in range(len(self.devices)):
            if predicted[d] > 0:
                self._ratios[d].append(measured[d] / predicted[d])
                self.slowdown[d] = statistics.median(self._ratios[d])

    def set_slowdown(self, device: int | str, factor: float) -> None:
        """Set a device's slowdown from outside (its health report), e.g. while it runs no stage."""
        d = device if isinstance(device, int) else [x.name for x in self.devices].index(device)
        self.slowdown[d] = float(factor)
        self._ratios[d].clear()

    def _why(self, link: Link) -> str | None:
        why = []
        change = abs(link.up_bps - self.link.up_bps) / self.link.up_bps
        if change > self.threshold:
            why.append(f"link {self.link.up_bps / 1e6:.3g} -> {link.up_bps / 1e6:.3g} Mbit/s up")
        for d, (now, then) in enumerate(zip(self.slowdown, self.planned_slowdown)):
            if abs(now - then) / then > self.load_threshold:
                why.append(f"{self.devices[d].name} load {then:.2f}x -> {now:.2f}x")
        return ", ".join(why) or None

    # ------------------------------------------------------------------------------ actions
    def check(self) -> bool:
        """Re-plan if the link or a device's load moved past its threshold; True when a new plan
        was swapped in."""
        link = self.current_link()
        reason = self._why(link)
        if reason is None:
            return False
        decided = time.monotonic()
        self.link, self.planned_slowdown = link, list(self.slowdown)
        planned = self._plan(link, self.slowdown)
        before = self.planned.predicted.assignment
        self.planned = planned
        if planned.predicted.assignment == before:
            return False
        bundle = self.bundle(planned)
        prepared = str(bundle.resolve()) in self.pipeline.prepared
        self.pipeline.swap(bundle, keep=True)
        self.history.append(Swap(decided, reason, before, planned.predicted.assignment,
                                 time.monotonic() - decided, prepared))
        return True

    def prepare(self, links: Iterable[Link] = (), slowdowns: Iterable[Mapping[int, float]] = ({},)
                ) -> list[tuple[str, tuple[int, ...]]]:
        """Build and start (``Pipeline.prepare``) the plan of every state ``links`` x
        ``slowdowns`` (device index -> factor; others 1), so swapping to them is instant.
        Returns (state, assignment) pairs; the running plan is not started twice."""
        out = []
        for link in list(links) or [self.link]:
            for factors in slowdowns:
                slowdown = [factors.get(d, 1.0) for d in range(len(self.devices))]
                planned = self._plan(link, slowdown)
                key = planned.predicted.assignment
                state = f"{link.name}, load {slowdown}"
                out.append((state, key))
                if key != self.planned.predicted.assignment:
                    self.pipeline.prepare(self.bundle(planned))
        return out
