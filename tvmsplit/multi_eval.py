"""Several end devices, one edge, measured (ITU-T F.748.20 section 8.2; issue 15 part 6).

    ev = evaluate_shared(graph, n=3, link="4g", deadline_ms=None, requests=20)
    ev.to_json()              # or: tvmsplit evaluate MODEL --end-devices 3 [--deadline-ms D] --json

1. **Costs**, as ``evaluate`` measures them (``evaluate.measured_costs``: every layer on the
   capped end device and on the whole edge core; ``evaluate.stage_overheads``: each device's
   fixed per-request time), on one testbed.
2. **Plan**: ``partition.multi.plan_shared_edge`` on those costs: N end devices like the first
   device, each its split and its shares of the edge's compute and of the link's bandwidth,
   minimising the worst latency; with ``deadline_ms``, a device whose model alone meets it
   leaves the edge alone.
3. **Settings**, each run with all N clients streaming AT THE SAME TIME (one thread per client,
   one request in flight each; every client keeps sending until all have sent their share of
   ``requests``, so every sample is taken under contention), on ``testbed.shared.shared_edge``
   (N testbeds, the end devices on core 0 at their cap, the edge workers all on core 1):

   - ``planned``: the joint plan, each client's edge cgroup at its compute share (CPU quota)
     and its link at its bandwidth share (tbf);
   - ``unshared``: what the devices would do without coordination: each runs the plan that is
     best for it alone with the whole edge, no quotas (the edge workers take turns on core 1 as
     the scheduler likes), the link split evenly (each client's link at 1/N of the rates);
   - ``all-edge`` and ``all-end``: every device runs the whole model there (unshared, as above).

   Settings are interleaved: ``rounds`` rounds, each running every setting in a rotated order.
4. **Reported** per setting and end device: shares, plan, predicted latency (planned: the
   planner's, at its shares; the unshared settings: the plan priced at even 1/N shares of the
   edge and link, what a fair scheduler would give while all are busy), measured median and
   p90, requests sent and answered (lost = sent - answered), the worst relative error against
   onnxruntime over every answered request. The figure the user cares about: the worst
   device's measured latency per setting, and ``planned`` against the best other setting.

The testbed cannot join separate testbeds' links into one bottleneck, so ``unshared``'s even
split of the link is a static one (no borrowing while another client is idle); its compute is
truly shared (one core, no quotas).
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .devices import Device, Link
from .evaluate import CHECK_RTOL, Candidate, EvaluationError, candidates, measurable_here
from .graph import LayerGraph
from .partition import CostTable, Problem
from .partition.multi import EndDevice, SharedPlan, plan_shared_edge, with_shares
from .partition.problem import Breakdown, evaluate as price
from .profile import Timing
from .testbed.shared import ClientShares

SETTINGS = ("planned", "unshared", "all-edge", "all-end")


@dataclass(frozen=True)
class ClientPlan:
    """What one end device runs in one setting, and what the cost model predicts for it."""

    name: str                     # end1, end2, ...
    candidate: Candidate          # its plan (name, assignment, breakdown as priced)
    shares: ClientShares          # what the testbed enforces (None: not enforced)
    planned_shares: tuple[float, float]  # the shares the prediction assumes (compute, bandwidth)

    @property
    def predicted_ms(self) -> float:
        return self.candidate.predicted.latency_ms


@dataclass(frozen=True)
class ClientRun:
    """One end device's requests in one setting (all rounds)."""

    plan: ClientPlan
    latency_ms: tuple[float, ...]
    sent: int
    answered: int
    max_rel_error: float
    errors: tuple[str, ...] = ()

    @property
    def latency(self) -> Timing | None:
        return Timing.of(self.latency_ms) if self.latency_ms else None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latency_ms) if self.latency_ms else float("inf")

    def to_json(self) -> dict:
        p, t = self.plan, self.latency
        return {"name": p.name, "plan": p.candidate.name,
                "assignment": list(p.candidate.assignment),
                "placement": list(p.candidate.placement),
                "compute_share": p.shares.compute, "bandwidth_share": p.shares.bandwidth,
                "predicted_at_shares": list(p.planned_shares),
                "predicted_ms": p.predicted_ms,
                "measured_ms": t.median_ms if t else None,
                "p90_ms": float(np.percentile(t.samples, 90)) if t else None,
                "error": (p.predicted_ms / t.median_ms - 1) if t else None,
                "sent": self.sent, "answered": self.answered, "lost": self.sent - self.answered,
                "max_rel_error": self.max_rel_error, "errors": list(self.errors)}


@dataclass(frozen=True)
class SettingRun:
    name: str
    clients: tuple[ClientRun, ...]

    @property
    def worst_ms(self) -> float:
        return max(c.median_ms for c in self.clients)

    @property
    def worst_predicted_ms(self) -> float:
        return max(c.plan.predicted_ms for c in self.clients)

    @property
    def lost(self) -> int:
        return sum(c.sent - c.answered for c in self.clients)


@dataclass(frozen=True)
class SharedEvaluation:
    model: str
    devices: tuple[Device, ...]
    link: Link
    n: int
    deadline_ms: tuple[float | None, ...]      # per end device
    steps: int
    shared: SharedPlan = field(repr=False)
    alone: Breakdown = field(repr=False)
    settings: tuple[SettingRun, ...]
    costs: CostTable = field(repr=False, compare=False, default=None)
    stage_overhead_ms: tuple[float, ...] = ()
    requests: int = 0
    rounds: int = 0

    def setting(self, name: str) -> SettingRun:
        return next(s for s in self.settings if s.name == name)

    @property
    def worst_gain(self) -> float:
        """The best other setting's worst-device latency / planned's (> 1: the shares help)."""
        others = [s.worst_ms for s in self.settings if s.name != "planned"]
        return min(others) / self.setting("planned").worst_ms

    @property
    def unshared_gain(self) -> float | None:
        """Unshared's worst-device latency / planned's (> 1: enforcing the plan's shares helps
        the worst device); None when the unshared setting was not run."""
        names = {s.name for s in self.settings}
        if "unshared" not in names:
            return None
        return self.setting("unshared").worst_ms / self.setting("planned").worst_ms

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.settings)

    def to_json(self) -> dict:
        return {"model": self.model, "end_devices": self.n, "deadline_ms": list(self.deadline_ms),
                "share_steps": self.steps,
                "devices": [{"name": d.name, "target": d.target} for d in self.devices],
                "link": {"name": self.link.name, "up_mbps": self.link.up_bps / 1e6,
                         "down_mbps": self.link.down_bps / 1e6, "rtt_ms": self.link.rtt_s * 1e3},
                "requests": self.requests, "rounds": self.rounds,
                "stage_overhead_ms": dict(zip((d.name for d in self.devices),
                                              self.stage_overhead_ms)),
                "alone_latency_ms": self.alone.latency_ms,
                "planned_worst_latency_ms": self.shared.worst_latency_ms,
                "worst_ms": {s.name: s.worst_ms for s in self.settings},
                "worst_gain": self.worst_gain, "unshared_gain": self.unshared_gain,
                "lost": self.lost,
                "settings": [{"name": s.name, "worst_ms": s.worst_ms,
                              "worst_predicted_ms": s.worst_predicted_ms, "lost": s.lost,
                              "clients": [c.to_json() for c in s.clients]}
                             for s in self.settings]}


# ---------------------------------------------------------------------------------- pieces
def plan_settings(problem: Problem, shared: SharedPlan, alone: Breakdown
                  ) -> dict[str, list[ClientPlan]]:
    """Each setting's plan per end device (see the module doc), priced by the cost model: the
    planned shares for ``planned``, even 1/N shares for the unshared settings (all-end: the end
    device alone). Pure."""
    n, layers = len(shared.names), len(problem.graph.layers)
    even = 1.0 / n

    def client(i: int, assignment: Sequence[int], shares: ClientShares,
               at: tuple[float, float]) -> ClientPlan:
        a = tuple(int(d) for d in assignment)
        priced = (with_shares(problem, *at) if at[0] > 0 else problem)
        name = candidates(problem, a)[1]
        return ClientPlan(shared.names[i], Candidate(name, a, price(priced, a)), shares, at)

    out = {"planned": [client(i, b.assignment, ClientShares(cs, bs), (cs, bs))
                       for i, (cs, bs, b) in enumerate(zip(shared.compute_share,
                                                            shared.bandwidth_share,
                                                            shared.plans))]}
    free = ClientShares(None, even)
    for name, assignment in (("unshared", alone.assignment), ("all-edge", (1,) * layers)):
        out[name] = [client(i, assignment, free, (even, even)) for i in range(n)]
    out["all-end"] = [client(i, (0,) * layers, ClientShares(None, None), (0.0, 0.0))
                      for i in range(n)]
    return out


def per_device(deadline_ms: float | Sequence[float | None] | None, n: int
               ) -> tuple[float | None, ...]:
    """``n`` deadlines from one for all (or None) or one per device."""
    if deadline_ms is None or isinstance(deadline_ms, (int, float)):
        return (None if deadline_ms is None else float(deadline_ms),) * n
    return tuple(None if d is None else float(d) for d in deadline_ms)


def rel_error(got: dict, ref: dict) -> float:
    """max |got - ref| / max |ref| over the outputs (as ``evaluate`` checks a plan)."""
    return max(float(np.max(np.abs(got[k] - ref[k])) / max(float(np.max(np.abs(ref[k]))), 1e-3))
               for k in ref)


@dataclass
class _Tally:
    latency_ms: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    max_rel_error: float = 0.0
    errors: list[str] = field(default_factory=list)


def stream_at_once(testbeds, bundles, placements, inputs, ref, *, requests: int,
                   warmup: int = 2, timeout_s: float = 120.0) -> list[_Tally]:
    """Client i streams ``bundles[i]`` on ``testbeds[i]`` (stage sides ``placements[i]``), one
    request in flight, all clients at once: each starts its pipeline and warms up, then all
    start together and each keeps sending until every client has had ``requests`` answered (or
    failed). Every output is compared with ``ref``."""
    from .runtime.pipeline import Pipeline, PipelineError

    n = len(testbeds)
    tallies = [_Tally() for _ in range(n)]
    start = threading.Barrier(n)
    done = threading.Event()
    finished = [False] * n
    lock = threading.Lock()

    def mark(i: int) -> None:
        with lock:
            finished[i] = True
            if all(finished):
                done.set()

    def client(i: int) -> None:
        t = tallies[i]
        try:
            with Pipeline(bundles[i], launcher=testbeds[i].launcher(list(placements[i])),
                          timeout_s=timeout_s) as p:
                for _ in range(warmup):
                    p.run(inputs)
                start.wait(timeout=600)
                while not done.is_set():
                    t.sent += 1
                    t0 = time.perf_counter()
                    y, _ = p.run(inputs)
                    t.latency_ms.append((time.perf_counter() - t0) * 1e3)
                    t.answered += 1
                    t.max_rel_error = max(t.max_rel_error, rel_error(y, ref))
                    if t.answered >= requests:
                        mark(i)
        except threading.BrokenBarrierError:
            t.errors.append("another client failed before the start")
        except (PipelineError, Exception) as exc:  # noqa: BLE001 - reported, never swallowed
            t.errors.append(f"{type(exc).__name__}: {exc}")
            start.abort()
        finally:
            mark(i)

    threads = [threading.Thread(target=client, args=(i,), name=f"client{i + 1}", daemon=True)
               for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return tallies


# -------------------------------------------------------------------------------- evaluate
def evaluate_shared(graph: LayerGraph, *, n: int = 2,
                    devices: Sequence[Device] = (Device("end", "pi-class"), Device("edge", "host")),
                    link: Link | str = "4g",
                    deadline_ms: float | Sequence[float | None] | None = None, steps: int = 20,
                    requests: int = 20, rounds: int = 2, warmup: int = 2, edge_core: int = 1,
                    settings: Sequence[str] = SETTINGS, costs: CostTable | None = None,
                    workdir: str | Path | None = None,
                    log: Callable[[str], None] = print) -> SharedEvaluation:
    """Plan ``n`` end devices sharing the edge on measured costs, then run the planned shares
    and the baselines on the testbed with all clients at once (see the module doc). Root.
    ``deadline_ms``: one for every device, or one per device (None: no deadline)."""
    import tempfile

    from .build import build_bundle
    from .check import random_inputs, reference
    from .evaluate import measured_costs, stage_overheads
    from .partition import plan
    from .planning import to_plan
    from .testbed import Testbed
    from .testbed.shared import shared_edge

    link = Link.profile(link) if isinstance(link, str) else link
    problems = []
    deadlines = per_device(deadline_ms, n)
    if len(deadlines) != n:
        problems.append(f"deadline_ms gives {len(deadlines)} deadlines for {n} end devices")
    if not 2 <= n <= 8:
        problems.append(f"end devices must be 2..8, got {n}")
    if requests < 3 or rounds < 1:
        problems.append(f"need requests >= 3 and rounds >= 1, got {requests} and {rounds}")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or "planned" not in settings:
        problems.append(f"settings must include 'planned' and be among {', '.join(SETTINGS)}, "
                        f"got {', '.join(settings)}")
    why_not = measurable_here(devices)
    if why_not is not None:
        problems.append(why_not)
    if problems:
        raise EvaluationError("; ".join(problems))
    per_round = max(1, -(-requests // rounds))
    inputs = random_inputs(graph.inputs)
    ref = reference(graph, inputs)
    with tempfile.TemporaryDirectory(prefix="tvmsplit-multi-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with Testbed(link, end=devices[0].target, device=False, rpc=False, uncapped_start=True,
                     log=log) as tb:
            if costs is None:
                costs = measured_costs(graph, devices, log=log, testbed=tb)
            overhead = stage_overheads(devices, tb, link, work, log=log)
        problem = Problem(graph, costs, (link,), stage_overhead_ms=overhead)
        shared = plan_shared_edge([EndDevice(f"{devices[0].name}{i + 1}", problem, d)
                                   for i, d in enumerate(deadlines)], steps=steps)
        alone = plan(problem)[1]
        by_setting = {k: v for k, v in plan_settings(problem, shared, alone).items()
                      if k in settings}
        for c in by_setting["planned"]:
            log(f"planned: {c.name} {c.candidate.name} at compute {c.shares.compute:.2f}, "
                f"bandwidth {c.shares.bandwidth:.2f}: predicted {c.predicted_ms:.1f} ms")
        bundles: dict[tuple[int, ...], Path] = {}
        for plans in by_setting.values():
            for c in plans:
                a = c.candidate.assignment
                if a not in bundles:
                    p_, _ = to_plan(graph, c.candidate.predicted, devices, parallel=False)
                    bundles[a] = build_bundle(graph, p_, work / f"plan{len(bundles)}").path
        tallies = {k: [_Tally() for _ in range(n)] for k in by_setting}
        names = list(by_setting)
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(k + r) % len(names)]
                plans = by_setting[name]
                with shared_edge(link, devices[0].target, [c.shares for c in plans],
                                 edge_core=edge_core, uncapped_start=True,
                                 log=log if r == 0 and k == 0 else None) as tbs:
                    got = stream_at_once(tbs, [bundles[c.candidate.assignment] for c in plans],
                                         [c.candidate.placement for c in plans], inputs, ref,
                                         requests=per_round, warmup=warmup)
                for acc, g in zip(tallies[name], got):
                    acc.latency_ms += g.latency_ms
                    acc.sent += g.sent
                    acc.answered += g.answered
                    acc.max_rel_error = max(acc.max_rel_error, g.max_rel_error)
                    acc.errors += g.errors
                log(f"  round {r + 1}/{rounds} {name:<9} " + ", ".join(
                    f"{c.name} {c.candidate.name} {statistics.median(g.latency_ms) if g.latency_ms else float('nan'):.1f} ms"
                    f" (pred {c.predicted_ms:.1f}, {g.answered}/{g.sent})"
                    for c, g in zip(plans, got)))
    runs = tuple(SettingRun(name, tuple(ClientRun(c, tuple(t.latency_ms), t.sent, t.answered,
                                                  t.max_rel_error, tuple(t.errors))
                                        for c, t in zip(by_setting[name], tallies[name])))
                 for name in by_setting)
    bad = [(s.name, c.plan.name, c.max_rel_error) for s in runs for c in s.clients
           if c.max_rel_error > CHECK_RTOL]
    if bad:
        raise EvaluationError(f"outputs differ from onnxruntime: {bad}")
    return SharedEvaluation(graph.name, tuple(devices), link, n, deadlines, steps, shared,
                            alone, runs, costs, tuple(overhead), requests, rounds)
