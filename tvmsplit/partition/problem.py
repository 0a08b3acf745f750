"""The partitioning problem and its cost model — the one place that prices an assignment.

Devices form a path ``d0 -> d1 -> ... -> d(k-1)`` (end -> edge -> cloud); link ``h`` joins d(h) and
d(h+1). (Over a device graph, ``partition.routes`` chooses a route and prices it as this path.) The model input is on d0 and the model outputs return to d0. An *assignment* gives every
layer a device index and is monotone: a layer's device is >= the devices of its producers (data
only flows up the path; a pipeline never sends tensors back down except the final outputs).

Cost of an assignment (``evaluate``):
- compute: sum over layers of ``compute_ms[layer][device]``, plus, for every device that runs at
  least one layer, its fixed per-request ``stage_overhead_ms`` (a worker's receive/decode/send;
  ``Problem.overhead_ms`` is the one place that rule lives); a device with no layers pays nothing;
- hop ``h`` (up): the tensors produced on devices <= h (the input counts as produced on d0) and
  read on a device > h, ``bytes x 8 / up_bps + rtt / 2`` (the rtt term once per hop used);
  the input's size is ``input_bytes`` when the end device sends it encoded (e.g. JPEG);
- decode (``decode_ms``, per device, default 0): an encoded input is decoded on each device that
  runs a layer reading it, so that layer's compute there includes the device's decode time (a
  model whose input several layers read pays it once per such layer: an upper bound, a stage
  decodes once; the usual CNN reads its input in one layer). Folded into ``Problem.compute``,
  so every planner prices it exactly as ``evaluate`` does;
- return: the model outputs, from the device that produced each, down to d0 — or, with
  ``output_ms`` (``Problem.return_ms``), each output's delivery time from each device to where it
  is consumed (another sink, or 0: consumed where it is made; ``topology.sink_output_ms``);
- send (``send_ms``, ``send_ms_per_byte``, per device, default 0): a device that runs layers and
  sends anything up its link is busy ``send_ms + send_ms_per_byte x bytes`` longer per request
  (its stage worker's serialisation and TCP send, on its own CPU; ``Problem.send_busy_ms`` is
  the rule; ``evaluate.send_costs`` measures it on the testbed). It counts in the
  bottleneck only: within one request the send overlaps the transfer the hop already charges;
- latency = compute + hops + return; the pipelined *bottleneck* = max(per-device compute + send,
  per-hop occupancy) — throughput is 1 / bottleneck; a hop's occupancy is its bytes x 8 / up
  bandwidth without the rtt/2 (``Link.up_busy_ms``: in a stream the delay overlaps);
- deployment (IONN-style, ``Problem.deploy_ms``): shipping each used device's library (its
  layers' weights + ``deploy_code_bytes`` of code) from d0 up the path (or along
  ``deploy_ms_per_byte`` / ``deploy_fixed_ms``), one device after another; always reported
  (``Breakdown.deploy_ms``), added to the latency objective only with ``deploy_in_objective``
  (a one-shot run: the model is deployed for this one request);
- energy (mJ) from a per-device power model (``PowerModel``: watts busy, idle, transmitting):
  every device is busy for its compute, transmits while sending up its link, and idles for the
  rest of the request's latency;
- memory per device: its layers' weights + the largest activation working set of one layer
  (inputs + outputs), checked against ``mem_cap_bytes``;
- a *sequential* device (HyPS, ``Problem.sequential``) holds one segment of its layers at a time:
  its layers, in order, are packed greedily into the fewest consecutive segments whose weights +
  largest working set fit its cap (``segments``), its memory is the largest segment's, and every
  layer it runs costs the time to read its weights again, ``param_bytes / load_bytes_per_s``,
  shared by the ``batch`` requests a load serves. Planners see a sequential device as uncapped;
  a layer that does not fit it even alone is priced ``UNFIT_MS`` there, and ``feasible`` checks
  the segments against the real cap.

Planners (``tvmsplit.partition``) minimise ``latency`` or ``bottleneck`` subject to the memory caps
and pins; tests check every exact planner against the brute-force oracle using this function.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..devices import Link
from ..errors import TvmsplitError
from ..graph import LayerGraph

OBJECTIVES = ("latency", "throughput", "energy")
# A layer's price on a sequential device it does not fit even alone: no plan uses it if any other
# does (and ``feasible`` refuses one that does).
UNFIT_MS = 1e9
# How fast a worker reads a segment's weights file (bytes/s) when nothing was measured: measured
# here on VGG16's fc1 weights (411 MB) from the page cache, ~2 GB/s; a Pi's SD card is ~40 MB/s.
DEFAULT_LOAD_BYTES_PER_S = 2.0e9


@dataclass(frozen=True)
class PowerModel:
    """Watts a device draws computing, idling and transmitting (set all to 0 to ignore a device,
    e.g. a mains-powered edge server when only the end device's battery matters)."""

    busy_w: float = 0.0
    idle_w: float = 0.0
    tx_w: float = 0.0

    def __post_init__(self):
        if min(self.busy_w, self.idle_w, self.tx_w) < 0:
            raise PlanningError(f"power model watts must be >= 0, got {self}")


class PlanningError(TvmsplitError):
    """The problem is inconsistent or infeasible; the message names the culprit."""


@dataclass(frozen=True)
class CostTable:
    """Per-layer compute time on each device, in ms: ``compute_ms[i][d]`` for layer i, device d."""

    devices: tuple[str, ...]
    layers: tuple[str, ...]
    compute_ms: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        bad = [(layer, row) for layer, row in zip(self.layers, self.compute_ms)
               if len(row) != len(self.devices) or any(not math.isfinite(v) or v < 0 for v in row)]
        if len(self.layers) != len(self.compute_ms) or bad:
            raise PlanningError(f"cost table: every layer needs one finite, non-negative time per "
                                f"device {list(self.devices)}; bad rows: {bad[:3]}")

    @classmethod
    def from_mapping(cls, devices: Sequence[str], table: Mapping[str, Mapping[str, float]]) -> "CostTable":
        layers = tuple(table)
        missing = [(layer, d) for layer in layers for d in devices if d not in table[layer]]
        if missing:
            raise PlanningError(f"cost table has no time for {missing[:5]}")
        return cls(tuple(devices), layers,
                   tuple(tuple(float(table[layer][d]) for d in devices) for layer in layers))

    @classmethod
    def from_file(cls, path: str | Path) -> "CostTable":
        """JSON ``{"devices": [...], "compute_ms": {layer: {device: ms}}}`` or CSV with a header
        ``layer,<device>,<device>...`` and one row per layer (times in ms)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PlanningError(f"cannot read cost table {str(path)!r}: {exc}") from None
        if path.suffix.lower() == ".csv":
            rows = list(csv.reader(line for line in text.splitlines() if line.strip()))
            if not rows or rows[0][0].strip() != "layer" or len(rows[0]) < 2:
                raise PlanningError(f"{path}: CSV header must be layer,<device>,<device>,...")
            devices = [d.strip() for d in rows[0][1:]]
            try:
                table = {r[0].strip(): {d: float(v) for d, v in zip(devices, r[1:], strict=True)}
                         for r in rows[1:]}
            except ValueError as exc:
                raise PlanningError(f"{path}: {exc}") from None
            return cls.from_mapping(devices, table)
        try:
            data = json.loads(text)
            return cls.from_mapping(data["devices"], data["compute_ms"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PlanningError(f"{path}: not a cost table ({exc}); expected "
                                '{"devices": [...], "compute_ms": {layer: {device: ms}}}') from None

    @classmethod
    def from_flops(cls, graph: LayerGraph, gflops_per_device: Mapping[str, float]) -> "CostTable":
        """A rough table from FLOPs and a device's effective GFLOP/s (for demos, not for decisions)."""
        devices = tuple(gflops_per_device)
        return cls(devices, tuple(layer.name for layer in graph.layers),
                   tuple(tuple(layer.flops / (gflops_per_device[d] * 1e6) for d in devices)
                         for layer in graph.layers))

    def to_json(self) -> dict:
        return {"devices": list(self.devices),
                "compute_ms": {layer: dict(zip(self.devices, row))
                               for layer, row in zip(self.layers, self.compute_ms)}}


@dataclass(frozen=True)
class Problem:
    """Everything a planner needs. ``links[h]`` joins device h and h+1."""

    graph: LayerGraph
    costs: CostTable
    links: tuple[Link, ...]
    objective: str = "latency"
    input_bytes: int | None = None                 # the input as the end device sends it
    mem_cap_bytes: tuple[int | None, ...] = ()     # per device; None = unlimited
    pins: tuple[tuple[str, int], ...] = ()         # (layer, device) fixed placements
    latency_ceiling_ms: float | None = None
    power: tuple[PowerModel, ...] = ()            # per device, for the energy objective
    stage_overhead_ms: tuple[float, ...] = ()      # per device, per request; () = all 0
    # output_ms[o][d]: ms to deliver graph output o from device d to its sink; () = down to d0
    output_ms: tuple[tuple[float, ...], ...] = ()
    deploy_code_bytes: int = 0                     # code shipped with each used device's library
    deploy_ms_per_byte: tuple[float, ...] = ()     # per device; () = up the path from d0
    deploy_fixed_ms: tuple[float, ...] = ()        # per device, paid once when anything is shipped
    deploy_in_objective: bool = False              # one-shot: latency objective + deployment
    mip_rel_gap: float = 0.0                       # the MILP's stopping gap (0: solve to optimality)
    time_limit_s: float = 60.0                     # the MILP's time limit
    sequential: tuple[bool, ...] = ()              # per device: HyPS sequential mode; () = none
    load_bytes_per_s: tuple[float, ...] = ()       # per device: weights read speed; () = default
    batch: int = 1                                 # requests per segment load (sequential)
    decode_ms: tuple[float, ...] = ()              # per device: decoding the encoded input; () = 0
    send_ms: tuple[float, ...] = ()                # per device: busy ms per request it sends up
    send_ms_per_byte: tuple[float, ...] = ()       # per device: busy ms per byte it sends up
    compute: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        g, c = self.graph, self.costs
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if len(self.links) != len(c.devices) - 1:
            problems.append(f"{len(c.devices)} devices on a path need {len(c.devices) - 1} link(s), "
                            f"got {len(self.links)}")
        missing = [layer.name for layer in g.layers if layer.name not in c.layers]
        if missing:
            problems.append(f"the cost table has no times for layer(s) {', '.join(missing[:6])}")
        if self.objective == "energy" and len(self.power) != len(c.devices):
            problems.append(f"the energy objective needs a power model for each of the "
                            f"{len(c.devices)} devices, got {len(self.power)}")
        if self.mem_cap_bytes and len(self.mem_cap_bytes) != len(c.devices):
            problems.append(f"mem_cap_bytes needs one entry per device ({len(c.devices)})")
        o = self.stage_overhead_ms
        if o and (len(o) != len(c.devices) or any(not math.isfinite(v) or v < 0 for v in o)):
            problems.append(f"stage_overhead_ms needs one finite, non-negative time (ms) per "
                            f"device {list(c.devices)}, got {list(o)}")
        dec = self.decode_ms
        if dec and (len(dec) != len(c.devices) or any(not math.isfinite(v) or v < 0 for v in dec)):
            problems.append(f"decode_ms needs one finite, non-negative time (ms) per device "
                            f"{list(c.devices)}, got {list(dec)}")
        elif any(dec) and self.input_bytes is None:
            problems.append("decode_ms prices decoding an encoded input: give input_bytes, the "
                            "size it is sent at, too")
        for name in ("send_ms", "send_ms_per_byte"):
            v = getattr(self, name)
            if v and (len(v) != len(c.devices) or any(not math.isfinite(x) or x < 0 for x in v)):
                problems.append(f"{name} needs one finite, non-negative value per device "
                                f"{list(c.devices)}, got {list(v)}")
        n_out, k = len(g.outputs), len(c.devices)
        if self.output_ms and (len(self.output_ms) != n_out or any(
                len(row) != k or any(not math.isfinite(v) or v < 0 for v in row)
                for row in self.output_ms)):
            problems.append(f"output_ms needs one row per graph output ({n_out}) of one finite, "
                            f"non-negative time (ms) per device ({k})")
        for name in ("deploy_ms_per_byte", "deploy_fixed_ms"):
            v = getattr(self, name)
            if v and (len(v) != k or any(not math.isfinite(x) or x < 0 for x in v)):
                problems.append(f"{name} needs one finite, non-negative value per device ({k})")
        if self.deploy_code_bytes < 0:
            problems.append(f"deploy_code_bytes must be >= 0, got {self.deploy_code_bytes}")
        if self.deploy_in_objective and self.objective != "latency":
            problems.append(f"deployment cost is added to the latency objective only (a one-shot "
                            f"run), not to {self.objective!r}; drop deploy_in_objective")
        if not (self.mip_rel_gap >= 0 and self.time_limit_s > 0):
            problems.append(f"mip_rel_gap must be >= 0 and time_limit_s > 0, got "
                            f"{self.mip_rel_gap}, {self.time_limit_s}")
        if self.sequential and len(self.sequential) != len(c.devices):
            problems.append(f"sequential needs one flag per device ({len(c.devices)})")
        caps = self.mem_cap_bytes or (None,) * len(self.sequential)
        if self.sequential and any(q and (d >= len(caps) or caps[d] is None)
                                   for d, q in enumerate(self.sequential)):
            problems.append("a sequential device needs a memory cap (its segments fill it)")
        lb = self.load_bytes_per_s
        if lb and (len(lb) != len(c.devices) or any(not v > 0 for v in lb)):
            problems.append(f"load_bytes_per_s needs one positive speed per device, got {list(lb)}")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            problems.append(f"batch must be a whole number >= 1, got {self.batch!r}")
        for layer, d in self.pins:
            if layer not in g._index and layer not in g.node_layer:
                problems.append(f"pinned layer {layer!r} does not exist")
            if not 0 <= d < len(c.devices):
                problems.append(f"layer {layer!r} pinned to device {d}, which does not exist")
        if problems:
            raise PlanningError("; ".join(problems))
        row = {name: k for k, name in enumerate(c.layers)}
        compute = [list(c.compute_ms[row[layer.name]]) for layer in g.layers]
        for i in self.input_readers():  # the decode, where a layer reads the encoded input
            for d, ms in enumerate(self.decode_ms):
                compute[i][d] += ms
        for d in range(len(c.devices)):
            if not self.is_sequential(d):
                continue
            speed = self.load_bytes_per_s[d] if self.load_bytes_per_s else DEFAULT_LOAD_BYTES_PER_S
            for i, layer in enumerate(g.layers):
                compute[i][d] += layer.param_bytes / speed * 1e3 / self.batch
                if layer_footprint(g, i) > self.mem_cap_bytes[d]:
                    compute[i][d] += UNFIT_MS
        object.__setattr__(self, "compute", tuple(tuple(r) for r in compute))

    def input_readers(self) -> tuple[int, ...]:
        """The layers that read a model input (where an encoded input is decoded)."""
        inputs = {t.name for t in self.graph.inputs}
        return tuple(sorted({j for i, j, t in self.graph.edges if i < 0 and t.name in inputs}))

    @property
    def n_devices(self) -> int:
        return len(self.costs.devices)

    def is_sequential(self, d: int) -> bool:
        return bool(self.sequential) and bool(self.sequential[d])

    @property
    def cap(self) -> tuple[float, ...]:
        """The caps as planners see them: a sequential device's is unlimited (its per-layer fit
        is priced instead, see the module doc); ``mem_cap`` has the real ones."""
        return tuple(math.inf if self.is_sequential(d) else c for d, c in enumerate(self.mem_cap))

    @property
    def mem_cap(self) -> tuple[float, ...]:
        caps = self.mem_cap_bytes or (None,) * self.n_devices
        return tuple(math.inf if c is None else float(c) for c in caps)

    @property
    def overhead(self) -> tuple[float, ...]:
        """Each device's fixed per-request overhead in ms (all 0 when none is given)."""
        return tuple(float(v) for v in self.stage_overhead_ms) or (0.0,) * self.n_devices

    def overhead_ms(self, d: int, runs_layers):
        """The overhead rule: what device ``d`` adds to its compute for one request — its
        overhead if it runs at least one layer, else 0. ``runs_layers`` may be a bool or a numpy
        bool array (elementwise)."""
        return self.overhead[d] * runs_layers

    @property
    def sends(self) -> bool:
        """Some device has a send cost (``send_busy_ms`` is not all zero)."""
        return any(self.send_ms) or any(self.send_ms_per_byte)

    def send_rate(self, d: int) -> tuple[float, float]:
        """(ms per request that sends anything, ms per byte) device ``d`` is busy sending up its
        link; (0, 0) on the last device (no link above it) or when no send cost is given."""
        if d >= self.n_devices - 1:
            return 0.0, 0.0
        return (float(self.send_ms[d]) if self.send_ms else 0.0,
                float(self.send_ms_per_byte[d]) if self.send_ms_per_byte else 0.0)

    def send_busy_ms(self, d: int, nbytes, runs_layers):
        """The send rule: how much longer device ``d`` is busy per request for sending
        ``nbytes`` up its link (``send_rate``: the fixed part when it sends anything, plus the
        per-byte part), if it runs layers (a stage worker sends; a device with no stage has no
        worker to pay it), else 0. ``nbytes`` and ``runs_layers`` may be numpy arrays."""
        fixed, per_byte = self.send_rate(d)
        return (fixed * (nbytes > 0) + per_byte * nbytes) * runs_layers

    def return_ms(self, output: int, d: int) -> float:
        """ms to deliver graph output number ``output`` from device ``d`` to where it is
        consumed: ``output_ms`` when given, else down the path to d0."""
        if self.output_ms:
            return self.output_ms[output][d]
        nbytes = self.graph.outputs[output].nbytes
        return sum(self.links[h].down_ms(nbytes) for h in range(d))

    def deploy_rate(self, d: int) -> tuple[float, float]:
        """(ms per byte, fixed ms) to ship a library to device ``d``: up the path from d0 (each
        hop's bandwidth and rtt/2, store and forward) unless given; (0, 0) for d0."""
        if self.deploy_ms_per_byte:
            return self.deploy_ms_per_byte[d], self.deploy_fixed_ms[d]
        return (sum(8e3 / self.links[h].up_bps for h in range(d)),
                sum(1e3 * self.links[h].rtt_s / 2 for h in range(d)))

    def deploy_ms(self, d: int, param_bytes: int, runs_layers: bool) -> float:
        """The deployment rule: shipping device ``d``'s library (``param_bytes`` of weights +
        the code, when it runs layers) to it; 0 when there is nothing to ship."""
        nbytes = param_bytes + (self.deploy_code_bytes if runs_layers else 0)
        if not nbytes:
            return 0.0
        per_byte, fixed = self.deploy_rate(d)
        return per_byte * nbytes + fixed

    def energy_weights(self) -> tuple[tuple[float, ...], tuple[float, ...], float]:
        """Energy (mJ) is linear: sum_d wc[d] * compute_d + sum_h wh[h] * hop_h + idle * return,
        with idle = total idle watts (everyone idles while the others work)."""
        if not self.power:
            return (1.0,) * self.n_devices, (1.0,) * (self.n_devices - 1), 1.0
        idle = sum(p.idle_w for p in self.power)
        wc = tuple(p.busy_w - p.idle_w + idle for p in self.power)
        wh = tuple(self.power[h].tx_w - self.power[h].idle_w + idle for h in range(self.n_devices - 1))
        return wc, wh, idle

    def pinned(self) -> dict[int, int]:
        return {self.graph.index(layer): d for layer, d in self.pins}

    def tensor_bytes(self, name: str) -> int:
        if self.input_bytes is not None and name in {t.name for t in self.graph.inputs}:
            return self.input_bytes
        return self.graph.tensors[name].nbytes


@dataclass(frozen=True)
class Breakdown:
    """The predicted cost of one assignment."""

    assignment: tuple[int, ...]
    compute_ms: tuple[float, ...]     # per device
    hop_bytes: tuple[int, ...]        # per link, upwards
    hop_ms: tuple[float, ...]
    return_ms: float
    memory_bytes: tuple[int, ...]     # per device
    latency_ms: float
    bottleneck_ms: float
    energy_mj: float = 0.0
    deploy_ms: float = 0.0            # shipping every stage's library (Problem.deploy_ms)
    deploy_counted: bool = False      # deploy_ms is part of the latency objective (one-shot)
    lower_bound: float | None = None  # a solver's proven bound on the optimal objective
    send_ms: tuple[float, ...] = ()   # per device: busy time sending up (Problem.send_busy_ms)

    def objective(self, name: str) -> float:
        return {"latency": self.latency_ms + (self.deploy_ms if self.deploy_counted else 0.0),
                "throughput": self.bottleneck_ms, "energy": self.energy_mj}[name]


def layer_activation_bytes(graph: LayerGraph, i: int) -> int:
    layer = graph.layers[i]
    return sum(t.nbytes for t in layer.inputs) + sum(t.nbytes for t in layer.outputs)


def layer_footprint(graph: LayerGraph, i: int) -> int:
    """What layer ``i`` needs in memory while it runs: its weights + its working set."""
    return graph.layers[i].param_bytes + layer_activation_bytes(graph, i)


def segments(graph: LayerGraph, layers: Sequence[int], cap: float) -> list[list[int]]:
    """``layers`` (indices, in order) packed greedily into the fewest consecutive segments whose
    weights + largest working set fit ``cap`` (greedy is optimal: a sub-run of a segment that fits
    fits too); a layer that does not fit alone gets a segment of its own (over the cap)."""
    out: list[list[int]] = []
    weights = peak = 0
    for i in layers:
        w, a = graph.layers[i].param_bytes, layer_activation_bytes(graph, i)
        if out and weights + w + max(peak, a) <= cap:
            out[-1].append(i)
            weights, peak = weights + w, max(peak, a)
        else:
            out.append([i])
            weights, peak = w, a
    return out


def segment_bytes(graph: LayerGraph, segment: Sequence[int]) -> int:
    return (sum(graph.layers[i].param_bytes for i in segment)
            + max((layer_activation_bytes(graph, i) for i in segment), default=0))


def device_segments(problem: "Problem", assignment: Sequence[int]) -> dict[int, list[list[int]]]:
    """Each sequential device that runs layers -> its segments (``segments``)."""
    return {d: segments(problem.graph, [i for i, x in enumerate(assignment) if x == d],
                        problem.mem_cap[d])
            for d in range(problem.n_devices) if problem.is_sequential(d) and d in assignment}


def evaluate(problem: Problem, assignment: Sequence[int]) -> Breakdown:
    """Price ``assignment`` (device index per layer); raises PlanningError when it is not monotone."""
    g, k = problem.graph, problem.n_devices
    dev = tuple(int(d) for d in assignment)
    if len(dev) != len(g.layers) or any(not 0 <= d < k for d in dev):
        raise PlanningError(f"an assignment needs one device in 0..{k - 1} per layer")
    for i, j, _ in g.edges:
        if i >= 0 and dev[i] > dev[j]:
            raise PlanningError(f"layer {g.layers[j].name!r} on device {dev[j]} reads from "
                                f"{g.layers[i].name!r} on device {dev[i]}: data only flows up the path")
    compute = [0.0] * k
    for i, d in enumerate(dev):
        compute[d] += problem.compute[i][d]
    for d in range(k):
        compute[d] += problem.overhead_ms(d, d in dev)
    # where each tensor is produced, and the furthest device that reads it
    made = {t.name: 0 for t in g.inputs}
    for i, layer in enumerate(g.layers):
        for t in layer.outputs:
            made[t.name] = dev[i]
    last_read: dict[str, int] = {}
    for i, j, t in g.edges:
        last_read[t.name] = max(last_read.get(t.name, 0), dev[j])
    hop_bytes = [0] * (k - 1)
    for name, reader in last_read.items():
        for h in range(made[name], reader):
            hop_bytes[h] += problem.tensor_bytes(name)
    hop_ms = tuple(problem.links[h].up_ms(b) for h, b in enumerate(hop_bytes))
    return_ms = sum(problem.return_ms(o, made[t.name]) for o, t in enumerate(g.outputs))
    memory = [0] * k
    peak = [0] * k
    for i, d in enumerate(dev):
        memory[d] += g.layers[i].param_bytes
        peak[d] = max(peak[d], layer_activation_bytes(g, i))
    memory = [m + p for m, p in zip(memory, peak)]
    for d, segs in device_segments(problem, dev).items():  # one segment resident at a time
        memory[d] = max(segment_bytes(g, seg) for seg in segs)
    send = tuple(float(problem.send_busy_ms(d, hop_bytes[d] if d < k - 1 else 0, d in dev))
                 for d in range(k))
    latency = sum(compute) + sum(hop_ms) + return_ms
    bottleneck = max([*(c + s for c, s in zip(compute, send)),
                      *(problem.links[h].up_busy_ms(b) for h, b in enumerate(hop_bytes))])
    wc, wh, idle = problem.energy_weights()
    energy = (sum(w * c for w, c in zip(wc, compute)) + sum(w * h for w, h in zip(wh, hop_ms))
              + idle * return_ms) if problem.power else 0.0
    shipped = [0] * k
    for i, d in enumerate(dev):
        shipped[d] += g.layers[i].param_bytes
    deploy = sum(problem.deploy_ms(d, shipped[d], d in dev) for d in range(k))
    return Breakdown(dev, tuple(compute), tuple(hop_bytes), hop_ms, return_ms, tuple(memory),
                     latency, bottleneck, energy, deploy, problem.deploy_in_objective,
                     send_ms=send if problem.sends else ())


def feasible(problem: Problem, b: Breakdown) -> bool:
    """Memory caps, pins and the latency ceiling hold."""
    if any(m > cap for m, cap in zip(b.memory_bytes, problem.mem_cap)):
        return False
    if any(b.assignment[i] != d for i, d in problem.pinned().items()):
        return False
    return problem.latency_ceiling_ms is None or b.latency_ms <= problem.latency_ceiling_ms + 1e-9
