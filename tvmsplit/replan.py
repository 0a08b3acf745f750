"""Re-planning at run time: when the link (or load) moves past a threshold, choose a new plan and
swap it into the running pipeline without losing a request.

``Replanner.check()`` reads the current link (a ``LinkMonitor``'s smoothed estimate, or any
callable returning a ``Link``), and when its uplink bandwidth differs from the one the running
plan was made for by more than ``threshold`` (relative), re-plans; if the stages change it builds
the new bundle (stage builds are cached by content, so only new stages compile) and calls
``Pipeline.swap``. Call it between requests, or from the loop that consumes ``stream``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .build import build_bundle
from .devices import Device, Link
from .graph import LayerGraph
from .partition import CostTable
from .planning import PlannedSplit, plan_partition


class Replanner:
    def __init__(self, pipeline, graph: LayerGraph, devices: Sequence[Device], costs: CostTable,
                 current_link: Callable[[], Link], out_dir: str | os.PathLike, *,
                 threshold: float = 0.3, **plan_kwargs):
        self.pipeline, self.graph, self.devices, self.costs = pipeline, graph, list(devices), costs
        self.current_link, self.out_dir, self.threshold = current_link, Path(out_dir), threshold
        self.plan_kwargs = plan_kwargs
        self.link = current_link()
        self.planned: PlannedSplit = plan_partition(graph, self.devices, [self.link], costs,
                                                    **plan_kwargs)
        self.swaps = 0

    def check(self) -> bool:
        """Re-plan if the link moved past the threshold; True when a new plan was swapped in."""
        link = self.current_link()
        change = abs(link.up_bps - self.link.up_bps) / self.link.up_bps
        if change <= self.threshold:
            return False
        self.link = link
        planned = plan_partition(self.graph, self.devices, [link], self.costs, **self.plan_kwargs)
        if planned.predicted.assignment == self.planned.predicted.assignment:
            self.planned = planned
            return False
        self.swaps += 1
        bundle = build_bundle(planned.graph, planned.plan, self.out_dir / f"plan{self.swaps}")
        self.pipeline.swap(bundle)
        self.planned = planned
        return True
