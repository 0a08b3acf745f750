"""Measure plan quality end to end on the testbed: regret, speedup and prediction error.

    ev = evaluate(graph, link=Link.profile("4g"), load="none", requests=30)
    ev.regret, ev.speedup, ev.to_json()          # or: tvmsplit evaluate MODEL --link 4g --json

On a testbed with a compute-capped end device (``Testbed(end="pi-class")``: its own network
namespace, a cgroup with one core at a fraction of its time) and an edge pinned to the other
cores, joined by a link shaped to ``link``:

1. **Costs, measured where the plans will run.** Every layer is compiled alone for each device's
   target and timed on that device (an RPC server inside its cgroup; ``min_repeat_ms`` so a
   capped sample spans several quota periods), under the requested end-device load.
   Each device's fixed per-request time (``stage_overheads``: a probe model, end to end minus
   compute minus the link model; on the capped device a probe of many quota periods, so the
   throttled receive and send are in it) goes into the cost model as its stage overhead. For
   throughput, the end's busy time for sending a tensor up the link (``send_costs``: streamed
   probes, per request and per byte) goes in too (``Problem.send_busy_ms``): the overhead
   probe's output never leaves the device, so it cannot see that cost.
2. **Candidates.** The planner's choice on those costs, all on the end device, all on the edge,
   and every single cut (the layers up to a cut candidate on the end, the rest on the edge); each
   priced by the same cost model (``partition.problem.evaluate``). A candidate predicted more
   than ``prune`` (5) times worse than the best is measured once (first round, one request):
   cuts that send megabytes over 3G would take minutes a round and decide nothing.
3. **Runs.** Each candidate is built (build cache) and run as a real pipeline on the testbed, in
   ``rounds``: every round starts each candidate's workers, warms up, and measures its share of
   the requests one at a time at the client (the end device's app), so slow drift in the
   machine's load falls on every candidate alike. Outputs are checked against onnxruntime.
4. **Single sites.** The whole model on one device is what a user would run instead: the
   tvmsplit all-end / all-edge runs, and onnxruntime timed inside each device's cgroup (for the
   edge plus the transport the all-edge run measured: its end-to-end time minus its compute).

Encoded input (``input_bytes=N``, ``--input-bytes N``): the client sends a JPEG instead of the
raw tensor (``encoding``: a synthetic photo-like scene at the model's size, encoded at the
quality whose size is nearest N; the size used is reported). Each device's decode time is
measured inside its cgroup (``decode_ms_on_testbed``) and priced where the input-reading layer
runs (``Problem.decode_ms``); every candidate's bundle takes the JPEG (``bundle.encode_inputs``)
and its worker decodes it; outputs are checked against onnxruntime on the same decoded tensor;
the single sites include the decode (onnxruntime on the end: decode + model there; on the edge:
the all-edge run's transport of the JPEG + decode + model).

Reported: per candidate the predicted and measured latency (median, p90, spread = IQR/median:
the noise floor beside every error figure), the prediction error; ``regret`` = measured
latency of the chosen plan / the best measured candidate (>= 1; 1 = the planner picked the
best); ``speedup`` = the best single site / the chosen plan's measured latency.
With ``objective="throughput"`` requests are streamed (``max_in_flight``; each round streams
its share of the requests but at least 2 x ``max_in_flight``) and the same figures are computed
on requests per second in steady state (``steady_rate``: from the first answer to the last, so
the pipeline's fill, one whole latency, does not count; regret = best / chosen).

The capped device's costs are not additive for short bursts: a burst shorter than its quota (1
ms per 10 ms period for pi-class) runs at full speed, while the profile times a layer in steady
state. Predictions of plans with short end-device stages are therefore pessimistic; the
prediction error column shows by how much.
"""
from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_json
from .devices import Device, Link
from .encoding import Encoding
from .errors import TvmsplitError
from .graph import LayerGraph
from .partition import CostTable, Problem
from .partition.problem import Breakdown, evaluate as price
from .profile import RPCSession, Timing, profile_layers

# Background load on the end device (loadgen.BackgroundLoad keywords), inside its cgroup, so it
# competes for the device's own quota.
END_LOADS: dict[str, dict] = {
    "none": {},
    "medium": {"cpu_workers": 1, "duty": 0.5},
    "high": {"cpu_workers": 1, "duty": 1.0},
}
PLACES = ("end", "edge")        # device 0, device 1: the testbed's placements
END_MIN_REPEAT_MS = 100         # ten 10 ms quota periods per sample on the capped device
EDGE_MIN_REPEAT_MS = 20
CHECK_RTOL = 1e-3               # outputs vs onnxruntime (a wrong plan has no latency worth keeping)
REQUEST_TIMEOUT_S = 120.0       # a request slower than this fails its candidate (evaluate(request_timeout_s=))


class EvaluationError(TvmsplitError):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Candidate:
    """One plan to measure: ``assignment[i]`` is layer i's device (0 end, 1 edge)."""

    name: str                      # "all-end", "all-edge", "cut@LAYER"
    assignment: tuple[int, ...]
    predicted: Breakdown

    @property
    def placement(self) -> tuple[str, ...]:
        return tuple(PLACES[d] for d in sorted(set(self.assignment)))


@dataclass(frozen=True)
class Measured:
    """One candidate's runs: end-to-end latency at the client (ms), per-stage compute medians,
    and (throughput objective) requests per second, one figure per round."""

    candidate: Candidate
    latency: Timing
    stage_ms: tuple[float, ...]
    throughput_rps: tuple[float, ...] = ()
    max_rel_error: float = 0.0
    pruned: bool = False          # predicted hopeless: one request in the first round only
    failed: str = ""              # why its run stopped (a request timed out, a worker died)

    @property
    def finite_samples(self) -> list[float]:
        """The latency samples measured (a candidate that failed before its first has one inf
        placeholder, since a Timing needs a sample)."""
        return [x for x in self.latency.samples if math.isfinite(x)]

    @property
    def spread(self) -> float:
        """(p75 - p25) / median of the latency samples: this candidate's noise floor (nan for
        a failed candidate with no sample)."""
        finite = self.finite_samples
        if not finite:
            return math.nan
        q = np.percentile(finite, [25, 75])
        return float((q[1] - q[0]) / statistics.median(finite))

    @property
    def p90_ms(self) -> float:
        """The 90th percentile of the latency samples (nan: none)."""
        finite = self.finite_samples
        return float(np.percentile(finite, 90)) if finite else math.nan

    def value(self, objective: str) -> float:
        """The measured figure the objective ranks: ms (lower is better) or req/s (higher); a
        failed candidate is the worst there is (inf ms, 0 req/s), whatever it measured before."""
        if self.failed:
            return math.inf if objective == "latency" else 0.0
        return (self.latency.median_ms if objective == "latency"
                else statistics.median(self.throughput_rps))

    def predicted(self, objective: str) -> float:
        b = self.candidate.predicted
        return b.latency_ms if objective == "latency" else 1e3 / max(b.bottleneck_ms, 1e-9)


@dataclass(frozen=True)
class Evaluation:
    model: str
    devices: tuple[Device, ...]
    link: Link
    load: str
    objective: str
    chosen: str                                   # the name of the planner's candidate
    method: str
    runs: tuple[Measured, ...]
    single_site: tuple[tuple[str, float], ...]    # (label, ms or req/s), measured
    costs: CostTable = field(repr=False, compare=False, default=None)
    stage_overhead_ms: tuple[float, ...] = ()     # per device, measured (``stage_overheads``)
    input_bytes: int = 0                          # the input as sent (the JPEG or the tensor)
    encoding: Encoding | None = None              # the JPEG's, None: the raw tensor was sent
    decode_ms: tuple[float, ...] = ()             # per device, measured (encoded input only)
    worker: str = "python"                        # the stage workers' kind (Testbed(worker=))
    overhead_probes: dict = field(default_factory=dict, compare=False)  # stage_overheads(probes=)
    send_cost: tuple[float, float] = (0.0, 0.0)   # the end's (ms a request, ms a byte), throughput
    send_probes: dict = field(default_factory=dict, compare=False)      # send_costs(probes=)

    def run_of(self, name: str) -> Measured:
        return next(r for r in self.runs if r.candidate.name == name)

    @property
    def _better(self) -> Callable[[Sequence[float]], float]:
        return min if self.objective == "latency" else max

    @property
    def best(self) -> Measured:
        """The best candidate that ran to the end (``evaluate`` refuses a run with none)."""
        ran = [r for r in self.runs if not r.failed]
        pick = self._better([r.value(self.objective) for r in ran])
        return next(r for r in ran if r.value(self.objective) == pick)

    @property
    def failed(self) -> dict[str, str]:
        """Candidate name -> why its run stopped (empty when every candidate ran)."""
        return {r.candidate.name: r.failed for r in self.runs if r.failed}

    @property
    def regret(self) -> float:
        """Chosen / best measured latency (best / chosen throughput): >= 1, over the candidates
        that ran; inf when the chosen plan itself failed."""
        if self.run_of(self.chosen).failed:
            return math.inf
        chosen, best = self.run_of(self.chosen).value(self.objective), self.best.value(self.objective)
        return chosen / best if self.objective == "latency" else best / chosen

    @property
    def best_single_site(self) -> tuple[str, float]:
        value = self._better([v for _, v in self.single_site])
        return next((k, v) for k, v in self.single_site if v == value)

    @property
    def speedup(self) -> float:
        """The best single site / the chosen plan (> 1: the split pays)."""
        chosen, site = self.run_of(self.chosen).value(self.objective), self.best_single_site[1]
        return site / chosen if self.objective == "latency" else chosen / site

    @property
    def noise(self) -> float:
        """The median spread (IQR / median) of the candidates' latency samples (pruned ones,
        a single sample each, left out)."""
        ran = [r for r in self.runs if not r.failed]
        return statistics.median([r.spread for r in ran if not r.pruned]
                                 or [r.spread for r in ran] or [math.nan])

    def to_json(self) -> dict:
        """Plain JSON: a figure that does not exist (a failed plan's measurement, the regret of
        a chosen plan that failed) is null, and ``failed`` names each failed plan and why."""
        obj = self.objective
        return _finite_or_null({
            "model": self.model, "objective": obj, "load": self.load, "method": self.method,
            "devices": [{"name": d.name, "target": d.target} for d in self.devices],
            "link": {"name": self.link.name, "up_mbps": self.link.up_bps / 1e6,
                     "down_mbps": self.link.down_bps / 1e6, "rtt_ms": self.link.rtt_s * 1e3},
            "worker": self.worker, "chosen": self.chosen, "best": self.best.candidate.name,
            "regret": self.regret, "speedup": self.speedup, "failed": self.failed,
            "best_single_site": dict([self.best_single_site]),
            "single_site": dict(self.single_site), "noise": self.noise,
            "stage_overhead_ms": dict(zip((d.name for d in self.devices), self.stage_overhead_ms)),
            "overhead_probes_ms": self.overhead_probes,
            "send_cost": {"device": self.devices[0].name if self.devices else None,
                          "ms_per_request": self.send_cost[0],
                          "ms_per_byte": self.send_cost[1], "probes": self.send_probes},
            "input": self.input_json(),
            "unit": "ms" if obj == "latency" else "requests/s",
            "plans": [{"name": r.candidate.name, "placement": list(r.candidate.placement),
                       "assignment": list(r.candidate.assignment),
                       "predicted": r.predicted(obj), "measured": r.value(obj),
                       "error": math.nan if r.failed else r.predicted(obj) / r.value(obj) - 1,
                       "latency_ms": {"median": r.latency.median_ms,
                                      "p90": r.p90_ms,
                                      "n": len(r.finite_samples)},
                       "spread": r.spread, "stage_ms": list(r.stage_ms), "pruned": r.pruned,
                       "failed": r.failed,
                       "predicted_compute_ms": list(r.candidate.predicted.compute_ms),
                       "predicted_hop_ms": list(r.candidate.predicted.hop_ms),
                       "max_rel_error": r.max_rel_error}
                      for r in self.runs]})


    def input_json(self) -> dict:
        """What the client sent: ``{"encoding": "raw"|"jpeg", "bytes", ...}``."""
        if self.encoding is None:
            return {"encoding": "raw", "bytes": self.input_bytes}
        return {"encoding": self.encoding.format, "bytes": self.input_bytes,
                "quality": self.encoding.quality, "raw_bytes": self.encoding.input.nbytes,
                "decode_ms": dict(zip((d.name for d in self.devices), self.decode_ms))}


def _finite_or_null(value):
    """``value`` with every non-finite float (inf, nan) replaced by None, recursively: JSON has
    no Infinity, and a failed plan's figures do not exist."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- pieces
def candidates(problem: Problem, chosen: Sequence[int]) -> tuple[list[Candidate], str]:
    """The single-site plans, every single cut, and the planner's ``chosen`` assignment (named
    after the candidate it equals, else ``"chosen"``); returns (candidates, chosen's name)."""
    g, n = problem.graph, len(problem.graph.layers)
    seen: dict[tuple[int, ...], str] = {}
    out = []

    def add(name: str, assignment: Sequence[int]) -> str:
        a = tuple(int(d) for d in assignment)
        if a not in seen:
            seen[a] = name
            out.append(Candidate(name, a, price(problem, a)))
        return seen[a]

    add("all-end", [0] * n)
    add("all-edge", [1] * n)
    order = {layer.name: i for i, layer in enumerate(g.layers)}
    for cut in g.cut_candidates:
        k = order[cut.after]
        add(f"cut@{cut.after}", [0] * (k + 1) + [1] * (n - k - 1))
    return out, add("chosen", chosen)


def time_layers_on_testbed(graph: LayerGraph, devices: Sequence[Device], testbed, *,
                  repeat: int = 5, log: Callable[[str], None] = print) -> CostTable:
    """Every layer timed on the testbed's end device (in its cgroup) and on its edge (in the
    edge's cgroup), compiled for each device's target."""
    per_device = []
    for device, where in zip(devices, PLACES):
        host, port = testbed.start_end_rpc() if where == "end" else testbed.start_edge_rpc()
        log(f"profiling {len(graph.layers)} layers on the {where} ({device.name}={device.target})")
        with RPCSession(host, port) as session:
            per_device.append(profile_layers(
                graph, device.target, session, number=1, repeat=repeat,
                min_repeat_ms=END_MIN_REPEAT_MS if where == "end" else EDGE_MIN_REPEAT_MS,
                progress=lambda m: log(f"  {m}")))
        untuned = [m.layer for m in per_device[-1] if _partly_tuned(m.tuning)]
        if untuned:  # a layer alone may fuse into kernels the whole model's tuning never saw
            log(f"warning: {len(untuned)} layer(s) built alone for {device.target} use untuned "
                f"kernels ({', '.join(untuned[:5])}); their times are those of untuned code. "
                f"Tune them too: `tvmsplit tune MODEL --target {device.target} --split-at "
                f"{','.join(layer.name for layer in graph.layers[:-1])}`")
    return CostTable(tuple(d.name for d in devices), tuple(layer.name for layer in graph.layers),
                     tuple(tuple(m[i].timing.median_ms for m in per_device)
                           for i in range(len(graph.layers))))


def _partly_tuned(tuning: str) -> bool:
    """True when a build's tuning line ("N/M kernels tuned (...)") says N < M."""
    import re

    m = re.search(r"(\d+)/(\d+) kernels tuned", tuning or "")
    return m is not None and int(m.group(1)) < int(m.group(2))


def measurable_here(devices: Sequence[Device]) -> str | None:
    """Why ``devices`` cannot be measured on this machine's testbed (None: they can): an end
    device that is a capped profile, an edge whose target runs here, and root."""
    import os

    from .targets import get_target
    from .testbed.capped import get_capped, known_capped

    if len(devices) != 2:
        return (f"the testbed has an end device and an edge, not {len(devices)} devices; e.g. "
                "--devices end=pi-class,edge=host")
    try:
        get_capped(devices[0].target)
    except TvmsplitError:
        return (f"the end device's target {devices[0].target!r} is not a capped testbed device "
                f"({', '.join(known_capped())}); e.g. --devices end=pi-class,edge=host")
    if not get_target(devices[1].target).runs_on_host:
        return (f"the edge's target {devices[1].target!r} does not run on this machine; use "
                "edge=host or edge=x86_64")
    if os.geteuid() != 0:
        return "measuring on the testbed needs root (network namespaces and cgroups)"
    return None


def _costs_key(graph: LayerGraph, devices: Sequence[Device], load: str) -> str:
    """What measured costs depend on: the model, the devices' targets (capped limits
    included), their tuning databases, this CPU, TVM, the end device's load."""
    import hashlib

    import tvm

    from .targets import get_target
    from .tunedb import default_db_dir, local_cpu

    parts = {"model": graph.model_sha256, "load": load, "cpu": local_cpu(),
             "tvm": tvm.__version__, "format": 1, "devices": []}
    for d in devices:
        spec = get_target(d.target)
        db = default_db_dir(spec)
        stamp = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                       for f in db.glob("*.json")) if db is not None and db.is_dir() else []
        parts["devices"].append([d.name, repr(spec), stamp])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def measured_costs(graph: LayerGraph, devices: Sequence[Device], *, load: str = "none",
                   log: Callable[[str], None] = print, fresh: bool = False,
                   testbed=None) -> CostTable:
    """``time_layers_on_testbed`` on ``testbed`` (already under ``load``) or on one brought up for it (no
    link shaping needed), kept in the cache (``<cache>/costs/``) under what the times depend on
    (``fresh``: measure again)."""
    from .testbed import Testbed
    from .tunedb import cache_root

    root = cache_root()
    path = None if root is None else root / "costs" / f"{_costs_key(graph, devices, load)}.json"
    if path is not None and path.exists() and not fresh:
        log(f"measured layer costs from the cache ({path})")
        return CostTable.from_file(path)
    if testbed is not None:
        costs = time_layers_on_testbed(graph, devices, testbed, log=log)
    else:
        with Testbed("wifi", end=devices[0].target, device=False, rpc=False, log=log) as tb, \
                end_load(tb, load):
            costs = time_layers_on_testbed(graph, devices, tb, log=log)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, costs.to_json(), indent=1)
    return costs


def stage_overheads(devices: Sequence[Device], testbed, link: Link, workdir: Path, *,
                    requests: int = 30, log: Callable[[str], None] = print,
                    probes: dict | None = None) -> tuple[float, ...]:
    """Each device's fixed time per request beyond its layers' compute (the worker's receive,
    decode, send; on a capped device stretched by the cap like everything else): a probe model
    run back to back on each device alone, end-to-end latency minus the stage's compute and
    minus what the link model already charges (the edge's hop and return).

    The edge's probe is one small layer. The capped end device's is a stage of many quota
    periods (an untuned chain at 40x40, ~300 ms at pi-class's 10 %), because that is what a
    real end stage is: one that spends its quota is throttled, and the worker's receive and
    send then wait for the next period (measured on mobilenetv2 at 224: 20-30 ms a request
    beyond the stage's compute, against 0.7 ms for a one-layer probe that never spends it).
    ``probes``: a dict that receives every probe's figure, ``{"end": {"overhead-probe-long":
    ms, "overhead-probe": ms}, "edge": {...}}`` (the end device is probed both ways, for the
    record: the short probe is what this function returned before)."""
    from . import zoo
    from .build import build_bundle
    from .check import random_inputs
    from .frontend import load
    from .onnxbuild import mlp
    from .runtime.pipeline import Pipeline
    from .split import plan_split

    short = load(mlp("overhead-probe", [16, 16]), name="overhead-probe")
    long = load(zoo.make("chain", input_size=40), name="overhead-probe-long")

    def probe(g: LayerGraph, device: Device, where: str, n: int) -> float:
        """ms a request of ``g`` alone on ``where`` takes beyond its compute and the link model."""
        x = random_inputs(g.inputs)
        modelled = 0.0 if where == "end" else (link.up_ms(g.inputs[0].nbytes)
                                              + link.down_ms(g.outputs[0].nbytes))
        bundle = build_bundle(g, plan_split(g, targets=[device.target]),
                              workdir / f"{g.name}-{where}")
        residual, compute = [], []
        with Pipeline(bundle, launcher=testbed.launcher([where]), timeout_s=120.0) as p:
            for _ in range(3):
                p.run(x)
            for _ in range(n):
                start = time.perf_counter()
                _, trace = p.run(x)
                residual.append((time.perf_counter() - start) * 1e3 - trace.compute_ms[0])
                compute.append(trace.compute_ms[0])
        ms = max(0.0, statistics.median(residual) - modelled)
        log(f"per-request overhead on the {where}: {ms:.2f} ms (probe {g.name}: "
            f"{statistics.median(compute):.1f} ms of compute)")
        return ms

    out = []
    for device, where in zip(devices, PLACES):
        got = {short.name: probe(short, device, where, requests)}
        if where == "end":
            got[long.name] = probe(long, device, where, max(5, requests // 2))
        out.append(got[long.name] if where == "end" else got[short.name])
        if probes is not None:
            probes[where] = got
    return tuple(out)


SEND_PROBE_CUTS = ("fc1", "conv5")   # the probe chain's cuts: 1 KB and (24x24) 18 KB to the edge


def fit_send_cost(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(ms a request, ms a byte) through measured (bytes sent, ms busy sending) points: the line
    through the two smallest sizes, both parts >= 0. A point below 0 is noise and counts as 0
    (two such points are no cost, not a slope: measured, -6.9 and -0.5 ms would have made
    0.37 ms/KB); a slope below 0 is noise too, and so is a size that does not matter: then
    the mean of the two is the fixed part (one point: its value; none: (0, 0))."""
    pts = sorted((b, max(0.0, ms)) for b, ms in points)
    if not pts:
        return 0.0, 0.0
    (b1, s1), (b2, s2) = pts[:2] if len(pts) > 1 else (pts[0], pts[0])
    if b2 == b1 or s2 < s1:
        return max(0.0, (s1 + s2) / 2), 0.0
    per_byte = (s2 - s1) / (b2 - b1)
    return max(0.0, s1 - per_byte * b1), per_byte


def send_costs(devices: Sequence[Device], testbed, link: Link, workdir: Path, *,
               requests: int = 16, rounds: int = 3, input_size: int = 24,
               log: Callable[[str], None] = print,
               probes: dict | None = None) -> tuple[float, float]:
    """The end device's busy time for sending a tensor to the edge, per request and per byte:
    ``(send_ms, send_ms_per_byte)`` for ``Problem.send_busy_ms``.

    The overhead probe's stage keeps its output on the device; a stage that sends up the shaped
    link also runs its TCP send on the capped core (ZeroMQ's I/O thread is in the device's
    cgroup), which a weak device may pay for; on this testbed it measured ~0 (BENCHMARKS.md,
    "Throughput, measured in steady state"). Streamed,
    the end is the bottleneck, so its period (the mean gap between answers, ``max_in_flight``
    4) is its busy time a request. A probe chain (zoo ``chain`` at ``input_size``: an end stage
    of ~12 quota periods, like a real one) runs all on the end, cut after ``fc1`` (1 KB to the
    edge) and cut after ``conv5`` (18 KB at 24x24), in ``rounds`` interleaved rounds of
    ``requests``; a cut's send time in a round is its period minus its end stage's compute,
    minus the same for all-end in that round, and its point is the median over the rounds. The
    two points give the fixed and per-byte parts (``fit_send_cost``); a cut whose bytes would
    take the link over a third of the all-end period (the link, not the end, would set the pace)
    is left out. ``probes`` receives every run's figures. Expect noise: the periods of one
    plan vary by ~10 % between rounds on a shared machine (BENCHMARKS.md)."""
    from . import zoo
    from .build import build_bundle
    from .check import random_inputs
    from .frontend import load
    from .runtime.pipeline import Pipeline
    from .split import plan_split

    g = load(zoo.make("chain", input_size=input_size), name="send-probe")
    x = random_inputs(g.inputs)
    end, edge = devices[0].target, devices[1].target

    def start(stack: contextlib.ExitStack, cut: str | None) -> Pipeline:
        plan_ = (plan_split(g, split_at=[cut], targets=[end, edge]) if cut
                 else plan_split(g, targets=[end]))
        bundle = build_bundle(g, plan_, workdir / f"send-probe-{cut or 'all-end'}")
        p = stack.enter_context(Pipeline(bundle, launcher=testbed.launcher(
            ["end", "edge"] if cut else ["end"]), timeout_s=120.0, max_in_flight=4))
        for _ in p.stream([x] * 3):   # warm up
            pass
        return p

    def period(p: Pipeline) -> tuple[float, float]:
        """(ms between answers in steady state, streamed; the end stage's median compute ms)."""
        start, stamps, compute = time.perf_counter(), [], []
        for _, trace in p.stream([x] * requests):
            stamps.append(time.perf_counter())
            compute.append(trace.compute_ms[0])
        return 1e3 / steady_rate(start, stamps), statistics.median(compute)

    runs: dict[str, list[tuple[float, float]]] = {"all-end": []}
    got: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        pipes = {"all-end": start(stack, None)}
        runs["all-end"].append(period(pipes["all-end"]))
        for cut in SEND_PROBE_CUTS:
            nbytes = g.cut_after(cut).nbytes
            wire_ms = nbytes * 8e3 / link.up_bps   # streamed, the delay overlaps: the rate counts
            if wire_ms > runs["all-end"][0][0] / 3:
                got[f"cut@{cut}"] = {"bytes": nbytes, "skipped": f"the link takes {wire_ms:.0f} "
                                     "ms a request for it"}
                continue
            pipes[f"cut@{cut}"] = start(stack, cut)
            runs[f"cut@{cut}"] = []
        for r in range(rounds):
            for name, p in pipes.items():
                if r or name != "all-end":   # all-end's first round ran above
                    runs[name].append(period(p))
    # per round: the time a request beyond the end stage's compute
    beyond = {name: [gap - compute for gap, compute in rs] for name, rs in runs.items()}
    points = []
    for name, rs in runs.items():
        entry = got.setdefault(name, {})
        entry.update({"period_ms": statistics.median(gap for gap, _ in rs),
                      "compute_ms": statistics.median(c for _, c in rs)})
        if name != "all-end":
            rounds_ms = [b - a for b, a in zip(beyond[name], beyond["all-end"])]
            entry.update({"bytes": g.cut_after(name.removeprefix("cut@")).nbytes,
                          "send_ms": statistics.median(rounds_ms), "send_ms_rounds": rounds_ms})
            points.append((entry["bytes"], entry["send_ms"]))
    fixed, per_byte = fit_send_cost(points)
    log(f"send cost on the end: {fixed:.2f} ms a request + {per_byte * 1e3:.4f} ms/KB (streamed "
        "period, median of rounds: " + ", ".join(f"{k} {v['period_ms']:.1f} ms"
                                               for k, v in got.items() if "period_ms" in v) + ")")
    if probes is not None:
        probes.update(got)
    return fixed, per_byte


@contextlib.contextmanager
def end_load(testbed, load: str):
    """The end device's background load ``END_LOADS[load]``, inside its cgroup, while in the block."""
    from .loadgen import BackgroundLoad

    if not END_LOADS[load]:
        yield None
        return
    with BackgroundLoad(**END_LOADS[load], prefix=testbed.cgroups["end"].prefix()) as bg:
        yield bg


def onnxruntime_ms(graph: LayerGraph, inputs: dict, testbed, where: str, workdir: Path,
                   repeat: int = 7) -> Timing:
    """The whole model under onnxruntime inside ``where``'s cgroup (its cores and threads)."""
    model, data = workdir / "model.onnx", workdir / "inputs.npz"
    if not model.exists():
        model.write_bytes(graph.model.SerializeToString())
        np.savez(data, **inputs)
    out = workdir / f"ort-{where}.json"
    threads = testbed.threads(where) or 1
    proc = testbed.spawn(where, [sys.executable, "-m", "tvmsplit.ort_timing", str(model), str(data),
                                 "--threads", str(threads), "--repeat", str(repeat),
                                 "--min-ms", str(END_MIN_REPEAT_MS), "--out", str(out)],
                         role=f"ort-{where}", in_namespace=False)
    if proc.wait(timeout=900) != 0 or not out.exists():
        raise EvaluationError(f"onnxruntime timing on the {where} failed (exit {proc.returncode}); "
                              f"see the testbed's ort-{where} log in {testbed.dir}")
    return Timing.of(json.loads(out.read_text())["samples_ms"])


def decode_ms_on_testbed(encoding: Encoding, data: bytes, testbed, where: str, workdir: Path,
                         repeat: int = 5) -> Timing:
    """Decoding ``data`` (``Encoding.decode``) inside ``where``'s cgroup: samples of at least
    ``END_MIN_REPEAT_MS`` each, as the layers are timed."""
    spec, jpeg, out = workdir / "encoding.json", workdir / "input.jpg", workdir / f"decode-{where}.json"
    write_json(spec, encoding.to_json())
    jpeg.write_bytes(data)
    proc = testbed.spawn(where, [sys.executable, "-m", "tvmsplit.encoding", str(spec), str(jpeg),
                                 str(out), "--repeat", str(repeat),
                                 "--min-ms", str(END_MIN_REPEAT_MS if where == "end"
                                                 else EDGE_MIN_REPEAT_MS)],
                         role=f"decode-{where}", in_namespace=False)
    if proc.wait(timeout=300) != 0 or not out.exists():
        raise EvaluationError(f"timing the JPEG decode on the {where} failed (exit "
                              f"{proc.returncode}); see the testbed's decode-{where} log in "
                              f"{testbed.dir}")
    return Timing.of(json.loads(out.read_text())["samples_ms"])


def steady_rate(start: float, stamps: Sequence[float]) -> float:
    """Requests per second of a stream in steady state: the answers after the first over the
    time since the first (s, ``time.perf_counter``). The first answer comes one whole latency
    after ``start`` (the pipeline fills); counting from ``start`` would rank a plan by its
    latency too (3 requests of a 215 ms plan streamed at one per 100 ms: 7.2 req/s, not 10).
    One answer only: 1 / its latency, a lower bound."""
    if not stamps:
        return 0.0
    if len(stamps) == 1 or stamps[-1] <= stamps[0]:
        return 1.0 / max(stamps[-1] - start, 1e-9)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _run_candidate(bundle, placement, testbed, inputs, ref, *, requests: int, warmup: int,
                   objective: str, max_in_flight: int, timeout_s: float = REQUEST_TIMEOUT_S):
    """(latency samples ms, per-stage compute ms lists, throughput req/s or None, max rel err);
    raises TvmsplitError (PipelineError: a request over ``timeout_s``, a worker that died)."""
    from .runtime.pipeline import Pipeline

    lat, stage = [], [[] for _ in placement]
    with Pipeline(bundle, launcher=testbed.launcher(list(placement)), timeout_s=timeout_s,
                  max_in_flight=max_in_flight) as p:
        y = None
        for _ in range(warmup):
            y, _ = p.run(inputs)
        err = max(float(np.max(np.abs(y[k] - ref[k])) / max(float(np.max(np.abs(ref[k]))), 1e-3))
                  for k in ref)
        if objective == "throughput":
            # a steady state needs the pipeline full for a while: at least 2 x its depth
            streamed = requests if requests == 1 else max(requests, 2 * max_in_flight)
            start, stamps = time.perf_counter(), []
            for _, trace in p.stream([inputs] * streamed):
                stamps.append(time.perf_counter())
                for s, ms in enumerate(trace.compute_ms):
                    stage[s].append(ms)
            rps = steady_rate(start, stamps)
        else:
            rps = None
        for _ in range(requests if objective == "latency" else max(3, requests // 4)):
            start = time.perf_counter()
            _, trace = p.run(inputs)
            lat.append((time.perf_counter() - start) * 1e3)
            for s, ms in enumerate(trace.compute_ms):
                stage[s].append(ms)
    return lat, stage, rps, err


def _hopeless(cands: Sequence[Candidate], chosen: str, objective: str,
              prune: float | None) -> set[str]:
    """The candidates predicted more than ``prune`` times worse than the best prediction (never
    the chosen plan or a single site: the figures need those in full)."""
    if prune is None:
        return set()
    if objective == "latency":
        cost = {c.name: c.predicted.latency_ms for c in cands}
    else:
        cost = {c.name: c.predicted.bottleneck_ms for c in cands}
    best = min(cost.values())
    keep = {chosen, "all-end", "all-edge"}
    return {name for name, v in cost.items() if name not in keep and v > prune * best}


def _record_failure(testbed, name: str, round_: int, exc: Exception,
                    workdir: str | Path | None, log: Callable[[str], None]) -> str:
    """Keep the testbed's logs of a failed candidate run and say why it failed (the reason
    names where the logs are)."""
    import tempfile

    base = Path(workdir) if workdir is not None else Path(
        tempfile.mkdtemp(prefix="tvmsplit-evaluate-failed-"))
    dest = base / "failed" / f"{name}-round{round_ + 1}"
    kept = testbed.save_logs(dest)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    why = f"round {round_ + 1}: {first} (logs: {dest}, {len(kept)} file(s))"
    log(f"  round {round_ + 1} {name:<24} FAILED: {why}; not run again")
    return why


# -------------------------------------------------------------------------------- evaluate
def evaluate(graph: LayerGraph, *, devices: Sequence[Device] = (Device("end", "pi-class"),
                                                                   Device("edge", "host")),
             link: Link | str = "4g", load: str = "none", objective: str = "latency",
             requests: int = 30, rounds: int = 3, warmup: int = 2, max_in_flight: int = 4,
             method: str = "auto", input_bytes: int | None = None,
             workdir: str | Path | None = None, costs: CostTable | None = None,
             prune: float | None = 5.0, worker: str = "python",
             request_timeout_s: float = REQUEST_TIMEOUT_S,
             log: Callable[[str], None] = print) -> Evaluation:
    """Plan ``graph`` on measured costs, run the plan and every alternative on the testbed,
    and report how good the plan was (see the module doc). Needs root (namespaces, cgroups).

    ``prune``: a candidate predicted more than ``prune`` times worse than the best prediction
    (e.g. a cut that sends megabytes over 3G: 30 s a request) is run for one request, in the
    first round only; it is still measured and can still come out best. None: every candidate
    gets every round. ``worker``: the stage workers' kind on both devices, ``"python"`` or
    ``"native"`` (``Testbed(worker=)``: a stage that decodes a JPEG stays Python).

    A candidate whose run fails (a request over ``request_timeout_s``, a worker that died) is
    recorded as failed (``Measured.failed``, the worst value there is) and not run again; the
    others go on. The testbed's logs at that moment are copied to ``WORKDIR/failed/NAME-roundR``
    (a kept ``tvmsplit-evaluate-failed-*`` directory under the system's temporary directory
    without ``workdir``) and the reason names that directory. The regret is over the candidates
    that ran (inf if the chosen one failed); if none ran, EvaluationError."""
    import tempfile

    from .build import build_bundle
    from .bundle import encode_inputs
    from .check import random_inputs, reference
    from .planning import plan_partition, to_plan
    from .testbed import Testbed

    link = Link.profile(link) if isinstance(link, str) else link
    problems = []
    if load not in END_LOADS:
        problems.append(f"load {load!r} is not one of {', '.join(END_LOADS)}")
    if objective not in ("latency", "throughput"):
        problems.append(f"objective {objective!r} is not latency or throughput")
    if requests < 3 or rounds < 1:
        problems.append(f"need requests >= 3 and rounds >= 1, got {requests} and {rounds}")
    if prune is not None and not prune > 1:
        problems.append(f"prune must be > 1 (times the best prediction) or None, got {prune!r}")
    if not (isinstance(request_timeout_s, (int, float)) and request_timeout_s > 0):
        problems.append(f"request_timeout_s must be > 0 (seconds), got {request_timeout_s!r}")
    if input_bytes is not None and not (isinstance(input_bytes, int) and input_bytes > 0):
        problems.append(f"input_bytes (the JPEG's size) must be a positive int, got "
                        f"{input_bytes!r}")
    why_not = measurable_here(devices)   # two devices, a capped end, an edge that runs here, root
    if why_not is not None:
        problems.append(why_not)
    if problems:
        raise EvaluationError("; ".join(problems))
    per_round = max(1, -(-requests // rounds))
    encoding, sent_bytes = None, sum(t.nbytes for t in graph.inputs)
    if input_bytes is None:
        inputs = random_inputs(graph.inputs)
        ref = reference(graph, inputs)
    else:  # a JPEG of a synthetic scene, its size nearest input_bytes
        from .encoding import jpeg_input

        encoding, data = jpeg_input(graph.inputs, input_bytes)
        sent_bytes = len(data)
        inputs = {encoding.name: encoding.tensor(data)}
        ref = reference(graph, {encoding.name: encoding.decode(data)})  # the same decoded tensor
        log(f"input: a {sent_bytes}-byte JPEG (quality {encoding.quality}, nearest the "
            f"{input_bytes} asked for) instead of the {encoding.input.nbytes}-byte tensor")
    decode: tuple[float, ...] = ()
    with tempfile.TemporaryDirectory(prefix="tvmsplit-evaluate-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # workers start outside the end's quota and serve under it: what is measured is the
        # requests, and a Python worker's start at 10 % of a core would cost 10-20 s a plan
        with Testbed(link, end=devices[0].target, device=False, rpc=False, worker=worker,
                     uncapped_start=True, log=log) as tb:
            with end_load(tb, load):
                if costs is None:
                    costs = measured_costs(graph, devices, load=load, log=log, testbed=tb)
                probes: dict = {}
                overhead = stage_overheads(devices, tb, link, work, log=log, probes=probes)
                send, send_probes = (0.0, 0.0), {}
                if objective == "throughput":   # a send is in the bottleneck, not the latency
                    send = send_costs(devices, tb, link, work, log=log, probes=send_probes)
                if encoding is not None:
                    decode = tuple(decode_ms_on_testbed(encoding, data, tb, where, work).median_ms
                                   for where in PLACES)
                    log("JPEG decode: " + ", ".join(f"{ms:.2f} ms on the {where}"
                                                    for ms, where in zip(decode, PLACES)))
                priced = {"input_bytes": sent_bytes if encoding else None, "decode_ms": decode,
                          "send_ms": (send[0], 0.0), "send_ms_per_byte": (send[1], 0.0)}
                names = [d.name for d in devices]   # the priced tuples, by device name
                chosen = plan_partition(graph, devices, [link], costs, objective=objective,
                                        method=method, parallel=False,
                                        stage_overhead_ms=dict(zip(names, overhead)),
                                        input_bytes=priced["input_bytes"],
                                        decode_ms=dict(zip(names, decode)),
                                        send_ms=dict(zip(names, priced["send_ms"])),
                                        send_ms_per_byte=dict(zip(names,
                                                                  priced["send_ms_per_byte"])))
                problem = Problem(graph, chosen.plan_costs, (link,), objective=objective,
                                  stage_overhead_ms=overhead, **priced)
                cands, chosen_name = candidates(problem, chosen.predicted.assignment)
                hopeless = _hopeless(cands, chosen_name, objective, prune)
                log(f"planner {chosen.method} chose {chosen_name}; measuring {len(cands)} "
                    f"candidates x {rounds} round(s) x {per_round} request(s)"
                    + (f" ({len(hopeless)} predicted over {prune:g}x the best: one request "
                       "each)" if hopeless else ""))
                bundles = []
                for k, c in enumerate(cands):
                    plan_, _ = to_plan(graph, c.predicted, devices, parallel=False)
                    bundles.append(build_bundle(graph, plan_, work / f"plan{k}"))
                    if encoding is not None:  # the client sends the JPEG; stage 0 decodes it
                        bundles[-1] = encode_inputs(bundles[-1].path, [encoding])
                decoded = ({encoding.name: encoding.decode(data)} if encoding is not None
                           else inputs)
                ort = {where: onnxruntime_ms(graph, decoded, tb, where, work) for where in PLACES}
                samples = {c.name: ([], [[] for _ in c.placement], [], []) for c in cands}
                failed: dict[str, str] = {}
                for r in range(rounds):
                    for k in range(len(cands)):   # a rotated order each round
                        c = cands[(k + r) % len(cands)]
                        b = bundles[(k + r) % len(cands)]
                        if (c.name in hopeless and r > 0) or c.name in failed:
                            continue
                        few = c.name in hopeless
                        try:
                            lat, stage, rps, err = _run_candidate(
                                b, c.placement, tb, inputs, ref, requests=1 if few else per_round,
                                warmup=1 if few else warmup, objective=objective,
                                max_in_flight=max_in_flight, timeout_s=request_timeout_s)
                        except TvmsplitError as exc:
                            failed[c.name] = _record_failure(tb, c.name, r, exc, workdir, log)
                            continue
                        s = samples[c.name]
                        s[0].extend(lat)
                        for acc, got in zip(s[1], stage):
                            acc.extend(got)
                        if rps is not None:
                            s[2].append(rps)
                        s[3].append(err)
                        log(f"  round {r + 1}/{rounds} {c.name:<24} median "
                            f"{statistics.median(lat):9.2f} ms (predicted "
                            f"{c.predicted.latency_ms:9.2f})")
    runs = tuple(Measured(c, Timing.of(samples[c.name][0] or [math.inf]),
                          tuple(statistics.median(x) if x else math.nan
                                for x in samples[c.name][1]),
                          tuple(samples[c.name][2]), max(samples[c.name][3], default=0.0),
                          pruned=c.name in hopeless, failed=failed.get(c.name, ""))
                 for c in cands)
    bad = [(r.candidate.name, r.max_rel_error) for r in runs if r.max_rel_error > CHECK_RTOL]
    if bad:
        raise EvaluationError(f"plan output differs from onnxruntime: {bad}")
    if len(failed) == len(runs):
        raise EvaluationError("no candidate ran to the end: " + "; ".join(
            f"{name}: {why}" for name, why in failed.items()))
    by = {r.candidate.name: r for r in runs}
    # the all-edge stage's compute includes its decode (the worker times the DecodingRunner);
    # a failed all-edge run has no transport figure, and its onnxruntime site none either
    edge_transport = (math.inf if by["all-edge"].failed
                      else by["all-edge"].latency.median_ms - by["all-edge"].stage_ms[0])
    dec = dict(zip(PLACES, decode or (0.0, 0.0)))  # onnxruntime is given the decoded tensor
    if objective == "latency":
        site = (("end: tvmsplit", by["all-end"].value(objective)),
                ("end: onnxruntime", ort["end"].median_ms + dec["end"]),
                ("edge: tvmsplit", by["all-edge"].value(objective)),
                ("edge: onnxruntime", ort["edge"].median_ms + dec["edge"] + edge_transport))
    else:  # onnxruntime on the edge: the all-edge rate sped up by onnxruntime's compute ratio,
        # at most its compute rate (an upper bound: a transport-bound stream would not speed up)
        all_edge, edge_ms = by["all-edge"], ort["edge"].median_ms + dec["edge"]
        site = (("end: tvmsplit", by["all-end"].value(objective)),
                ("end: onnxruntime", 1e3 / (ort["end"].median_ms + dec["end"])),
                ("edge: tvmsplit", all_edge.value(objective)),
                ("edge: onnxruntime", 0.0 if all_edge.failed else min(
                    1e3 / edge_ms,
                    all_edge.value(objective) * max(1.0, all_edge.stage_ms[0] / edge_ms))))
    return Evaluation(graph.name, tuple(devices), link, load, objective, chosen_name,
                      chosen.method, runs, site, costs, overhead, sent_bytes, encoding, decode,
                      worker, probes, send, send_probes)
