"""Link profiles of the emulated testbed: rate each way, one-way delay, loss.

Rates are *goodput*: what a TCP transfer of application bytes achieves (what speed tests report).
The shaper is set a little above them to pay for the IP/TCP headers (see :func:`wire_rate_bps`),
so ``bytes * 8 / up_bps + delay_s`` is the expected time to move ``bytes`` from the end device
to the edge (:meth:`LinkProfile.expected_s`).

The 3G/4G/WiFi rates are the ones of the issue (up 1.1 / 8.8 / 18.88 Mbit/s, down 4.6 / 29.1 /
54.97). Their one-way delays (50 / 25 / 5 ms, i.e. RTT 100 / 50 / 10 ms) are typical figures,
our assumption; override them with ``delay_ms=``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import TvmsplitError

TCP_IP_HEADER_BYTES = 52  # IPv4 20 + TCP 20 + the timestamp option 12 (Linux default)
ETHERNET_HEADER_BYTES = 14


class TestbedError(TvmsplitError):
    """The testbed cannot be set up, reached or torn down; the message says what to do."""

    __test__ = False  # not a pytest test class despite its name


@dataclass(frozen=True)
class LinkProfile:
    """One access link between the end device and the edge. ``up`` is device -> edge."""

    name: str
    up_bps: float
    down_bps: float
    delay_ms: float = 0.0      # one-way, each direction
    loss: float = 0.0          # probability that a packet is dropped, each direction

    def __post_init__(self):
        problems = []
        for field_name in ("up_bps", "down_bps"):
            v = getattr(self, field_name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 8e3 <= v <= 10e9):
                problems.append(f"{field_name} must be between 8 kbit/s and 10 Gbit/s, got {v!r}")
        if not (isinstance(self.delay_ms, (int, float)) and 0 <= self.delay_ms <= 10_000):
            problems.append(f"delay_ms must be between 0 and 10000, got {self.delay_ms!r}")
        if not (isinstance(self.loss, (int, float)) and 0 <= self.loss < 1):
            problems.append(f"loss must be in [0, 1), got {self.loss!r}")
        if problems:
            raise TestbedError(f"link profile {self.name!r}: " + "; ".join(problems))

    @property
    def needs_emulator(self) -> bool:
        """Delay or loss: this kernel has no netem, so they need the user-space link emulator."""
        return self.delay_ms > 0 or self.loss > 0

    def with_(self, **changes) -> "LinkProfile":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def expected_s(self, nbytes: int, direction: str = "up") -> float:
        """Lower bound for moving ``nbytes`` of payload one way over a warm connection."""
        bps = self.up_bps if direction == "up" else self.down_bps
        return nbytes * 8 / bps + self.delay_ms / 1e3

    def describe(self) -> str:
        extra = f", delay {self.delay_ms:g} ms each way" if self.delay_ms else ", no delay"
        if self.loss:
            extra += f", loss {self.loss:.2%}"
        return (f"{self.name}: up {self.up_bps / 1e6:g} Mbit/s, down {self.down_bps / 1e6:g} "
                f"Mbit/s{extra}")

    def to_json(self) -> dict:
        return {"name": self.name, "up_bps": self.up_bps, "down_bps": self.down_bps,
                "delay_ms": self.delay_ms, "loss": self.loss}

    @classmethod
    def from_json(cls, d: dict) -> "LinkProfile":
        return cls(str(d["name"]), float(d["up_bps"]), float(d["down_bps"]),
                   float(d.get("delay_ms", 0.0)), float(d.get("loss", 0.0)))


PROFILES: dict[str, LinkProfile] = {
    "3g": LinkProfile("3g", 1.1e6, 4.6e6, delay_ms=50.0),
    "4g": LinkProfile("4g", 8.8e6, 29.1e6, delay_ms=25.0),
    "wifi": LinkProfile("wifi", 18.88e6, 54.97e6, delay_ms=5.0),
}


def get_profile(name: str = "4g", *, up_mbps: float | None = None,
                down_mbps: float | None = None, delay_ms: float | None = None,
                loss: float | None = None) -> LinkProfile:
    """A built-in profile with optional overrides, or ``custom`` (needs both rates)."""
    key = name.lower()
    if key == "custom":
        if up_mbps is None or down_mbps is None:
            raise TestbedError("profile 'custom' needs up_mbps and down_mbps "
                               "(--up-mbps / --down-mbps)")
        return LinkProfile("custom", up_mbps * 1e6, down_mbps * 1e6, delay_ms or 0.0, loss or 0.0)
    if key not in PROFILES:
        raise TestbedError(f"unknown link profile {name!r}; known: "
                           f"{', '.join([*PROFILES, 'custom'])}")
    return PROFILES[key].with_(up_bps=None if up_mbps is None else up_mbps * 1e6,
                               down_bps=None if down_mbps is None else down_mbps * 1e6,
                               delay_ms=delay_ms, loss=loss)


def wire_rate_bps(goodput_bps: float, mtu: int, l2_header: int) -> float:
    """The shaper rate that gives ``goodput_bps`` of TCP payload in full-size packets: a packet
    carries ``mtu - 52`` payload bytes and costs ``mtu + l2_header`` bytes at the shaper."""
    return goodput_bps * (mtu + l2_header) / (mtu - TCP_IP_HEADER_BYTES)
