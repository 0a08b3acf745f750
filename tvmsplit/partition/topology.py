"""Devices and links as a graph: any device may link to any other.

A :class:`Topology` is a set of device names and :class:`Connection` s between pairs of them;
each connection is a :class:`devices.Link` whose ``up`` direction runs from ``a`` to ``b`` (its
``down`` rate is ``b -> a``), with the link's RTT and loss. A path of devices (``devices[0] ->
devices[1] -> ...``, ``links[h]`` joining ``h`` and ``h + 1``, the API the rest of tvmsplit
uses) is the special case :meth:`Topology.path`.

What it charges is :meth:`devices.Link.transfer_s`: ``bytes x 8 / rate + rtt / 2`` for each
link crossed (store and forward), nothing for 0 bytes. :meth:`Topology.cheapest_ms` is the
cheapest way to move a tensor of a given size between two devices, relaying through others where
that is cheaper than (or there is no) direct link (Dijkstra over the connections).

The planner over a topology (``partition.routes``) chooses a *route*: an ordered sequence of
distinct devices, the input's source first, consecutive ones directly linked; the model's layers
are then assigned monotonically along it, exactly as on a path (a device on the route with no
layers relays). Where the outputs go is the *sink* (:func:`sink_output_ms`): ``"end"`` (back to
the source, today's behaviour), ``"last"`` (consumed where each is made: for a one-output model,
where the last stage runs) or a device name.

Files (``--links-file``), JSON or TOML::

    {"devices": ["pi", "edge", "cloud"],              # optional: names beyond the links' ends
     "links": [{"between": ["pi", "edge"], "profile": "wifi"},
               {"between": ["pi", "cloud"], "up_mbps": 10, "down_mbps": 40, "rtt_ms": 30,
                "loss": 0.0},
               {"between": ["edge", "cloud"], "profile": "lan:1000/1000/1"}]}

``up`` runs from the first device of ``between`` to the second. ``rtt_ms`` is the round trip;
``delay_ms`` (one way) may be given instead (rtt = 2 x delay).
"""
from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..devices import Link
from .problem import PlanningError

SINKS = ("end", "last")  # or a device name


@dataclass(frozen=True)
class Connection:
    """A link between devices ``a`` and ``b``: ``link.up_bps`` from a to b, ``down_bps`` back."""

    a: str
    b: str
    link: Link


@dataclass(frozen=True)
class Topology:
    """Devices (names) and the connections between pairs of them (at most one per pair)."""

    devices: tuple[str, ...]
    connections: tuple[Connection, ...]

    def __post_init__(self):
        problems = []
        if len(set(self.devices)) != len(self.devices):
            problems.append(f"device names repeat: {', '.join(self.devices)}")
        pairs = set()
        for c in self.connections:
            if c.a not in self.devices or c.b not in self.devices:
                problems.append(f"link {c.link.name!r} joins {c.a!r} and {c.b!r}, not both in "
                                f"the devices {', '.join(self.devices)}")
            if c.a == c.b:
                problems.append(f"link {c.link.name!r} joins {c.a!r} to itself")
            if frozenset((c.a, c.b)) in pairs:
                problems.append(f"two links join {c.a!r} and {c.b!r}; give one per pair")
            pairs.add(frozenset((c.a, c.b)))
        if problems:
            raise PlanningError("topology: " + "; ".join(problems))

    @classmethod
    def path(cls, devices: Sequence[str], links: Sequence[Link]) -> "Topology":
        """The path ``devices[0] -> devices[1] -> ...``; ``links[h]`` joins h and h + 1."""
        if len(links) != len(devices) - 1:
            raise PlanningError(f"{len(devices)} devices on a path need {len(devices) - 1} "
                                f"link(s), got {len(links)}")
        return cls(tuple(devices), tuple(Connection(devices[h], devices[h + 1], link)
                                         for h, link in enumerate(links)))

    @classmethod
    def full(cls, devices: Sequence[str], link: Link) -> "Topology":
        """Every pair of devices joined by the same link."""
        return cls(tuple(devices), tuple(Connection(a, b, link) for i, a in enumerate(devices)
                                         for b in devices[i + 1:]))

    @classmethod
    def from_types(cls, counts: Mapping[str, int], link_between: Mapping[tuple[str, str], Link],
                   ) -> tuple["Topology", dict[str, str]]:
        """PipeEdge-style device types with counts, e.g. ``{"gpu": 4, "cpu": 4}``: devices
        ``gpu0..gpu3, cpu0..cpu3``, each pair joined by ``link_between[(type_a, type_b)]`` (either
        order; a missing pair is not linked). Returns the topology and device -> type (the cost
        table's column for it: devices of a type are identical, which the planner exploits)."""
        names, kind = [], {}
        for t, count in counts.items():
            if count < 1:
                raise PlanningError(f"device type {t!r} needs a count >= 1, got {count}")
            for i in range(count):
                names.append(f"{t}{i}")
                kind[f"{t}{i}"] = t
        conns = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                link = link_between.get((kind[a], kind[b])) or link_between.get((kind[b], kind[a]))
                if link is not None:
                    conns.append(Connection(a, b, link))
        return cls(tuple(names), tuple(conns)), kind

    @classmethod
    def from_file(cls, path: str | Path) -> "Topology":
        """Read a links file (JSON, or TOML by its suffix; format in the module doc)."""
        path = Path(path)
        try:
            text = path.read_text()
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (OSError, ValueError) as exc:
            raise PlanningError(f"cannot read links file {str(path)!r}: {exc}") from None
        return cls.from_json(data, f"links file {str(path)!r}")

    @classmethod
    def from_json(cls, data: Mapping, source: str = "the topology") -> "Topology":
        if not isinstance(data, Mapping) or not isinstance(data.get("links"), list):
            raise PlanningError(f"{source}: expected {{\"links\": [{{\"between\": [A, B], ...}}]}}")
        names = [str(d) for d in data.get("devices", [])]
        conns = []
        for i, entry in enumerate(data["links"]):
            try:
                a, b = (str(x) for x in entry["between"])
                conns.append(Connection(a, b, _link(entry, f"{a}-{b}")))
            except (KeyError, TypeError, ValueError) as exc:
                raise PlanningError(f"{source}: link {i} is malformed ({exc}); give "
                                    "between = [A, B] and profile, or up_mbps, down_mbps and "
                                    "rtt_ms (or delay_ms)") from None
            names += [n for n in (a, b) if n not in names]
        return cls(tuple(names), tuple(conns))

    def link(self, a: str, b: str) -> Link | None:
        """The link from ``a`` to ``b`` with ``up`` in that direction, or None."""
        for c in self.connections:
            if (c.a, c.b) == (a, b):
                return c.link
            if (c.b, c.a) == (a, b):
                return Link(c.link.name, c.link.down_bps, c.link.up_bps, c.link.rtt_s, c.link.loss)
        return None

    def neighbours(self, a: str) -> tuple[str, ...]:
        return tuple(d for d in self.devices if d != a and self.link(a, d) is not None)

    def cheapest_ms(self, a: str, b: str, nbytes: int) -> float:
        """The least time to move ``nbytes`` from ``a`` to ``b``, relaying where cheaper (each
        link's ``transfer_s``); 0 for a == b or 0 bytes; inf when b cannot be reached."""
        return self._dijkstra(a, b, lambda link: link.up_ms(nbytes))

    def deploy_rate(self, a: str, b: str) -> tuple[float, float]:
        """(ms per byte, fixed ms) to ship a library from ``a`` to ``b`` along the route with the
        most bandwidth (the least ms per byte; its rtt/2 per hop is the fixed part)."""
        best = {a: (0.0, 0.0)}
        heap = [(0.0, 0.0, a)]
        while heap:
            per_byte, fixed, d = heapq.heappop(heap)
            if best.get(d, (math.inf, math.inf)) < (per_byte, fixed):
                continue
            for e in self.neighbours(d):
                link = self.link(d, e)
                cand = (per_byte + 8e3 / link.up_bps, fixed + 1e3 * link.rtt_s / 2)
                if cand < best.get(e, (math.inf, math.inf)):
                    best[e] = cand
                    heapq.heappush(heap, (*cand, e))
        if b not in best:
            raise PlanningError(f"device {b!r} cannot be reached from {a!r} over the links")
        return best[b]

    def _dijkstra(self, a: str, b: str, cost) -> float:
        dist = {a: 0.0}
        heap = [(0.0, a)]
        while heap:
            t, d = heapq.heappop(heap)
            if d == b:
                return t
            if t > dist.get(d, math.inf):
                continue
            for e in self.neighbours(d):
                cand = t + cost(self.link(d, e))
                if cand < dist.get(e, math.inf):
                    dist[e] = cand
                    heapq.heappush(heap, (cand, e))
        return math.inf

    def interchangeable(self, a: str, b: str) -> bool:
        """Swapping a and b leaves every link as it is (a's link to each other device equals
        b's, and the a-b link, if any, is the same both ways)."""
        for d in self.devices:
            if d in (a, b):
                continue
            if self.link(a, d) != self.link(b, d):
                return False
        ab, ba = self.link(a, b), self.link(b, a)
        return ab is None or (ab.up_bps, ab.rtt_s) == (ba.up_bps, ba.rtt_s)


def _link(entry: Mapping, name: str) -> Link:
    if "profile" in entry:
        base = Link.profile(str(entry["profile"]))
        return Link(name, base.up_bps, base.down_bps, base.rtt_s, float(entry.get("loss", base.loss)))
    if "rtt_ms" in entry and "delay_ms" in entry:
        raise ValueError("give rtt_ms or delay_ms (one way), not both")
    rtt_ms = float(entry["rtt_ms"]) if "rtt_ms" in entry else 2 * float(entry.get("delay_ms", 0.0))
    return Link(name, float(entry["up_mbps"]) * 1e6, float(entry["down_mbps"]) * 1e6,
                rtt_ms / 1e3, float(entry.get("loss", 0.0)))


def sink_output_ms(topology: Topology, route: Sequence[str], output_bytes: Sequence[int],
                   sink: str, source: str) -> tuple[tuple[float, ...], ...]:
    """``Problem.output_ms`` for a route: each output's delivery time from each route device to
    the sink (``"end"``: the source; ``"last"``: nowhere, consumed where made; or a device name),
    the cheapest way over the topology."""
    if sink == "last":
        return tuple((0.0,) * len(route) for _ in output_bytes)
    target = source if sink == "end" else sink
    if target not in topology.devices:
        raise PlanningError(f"sink {sink!r} is not 'end', 'last' or a device "
                            f"({', '.join(topology.devices)})")
    rows = tuple(tuple(topology.cheapest_ms(d, target, nbytes) for d in route)
                 for nbytes in output_bytes)
    if any(math.isinf(v) for row in rows for v in row):
        raise PlanningError(f"the sink {target!r} cannot be reached from every device of the "
                            f"route {' -> '.join(route)}; link it")
    return rows
