"""The testbed's link: a shared :class:`~tvmsplit.devices.Link` made shapeable, and tc's overheads.

The rates, RTTs and loss come from the one profile table, :data:`tvmsplit.devices.LINK_PROFILES`
(3G / 4G / Wi-Fi); nothing is retyped here. What is testbed-specific stays here: the limits
tc and the delay emulator accept (:class:`LinkProfile`), the one-way delay in ms that
``linkemu --delay-ms`` takes, whether the user-space emulator is needed (:attr:`needs_emulator`),
the overrides of ``tvmsplit testbed up`` (:func:`get_profile`), and the header overheads of the
shaper (:func:`wire_rate_bps`).

Rates are *goodput*: what a TCP transfer of application bytes achieves (what speed tests report).
The shaper is set a little above them to pay for the IP/TCP headers (see :func:`wire_rate_bps`),
so the shared transfer bound ``Link.transfer_s`` (``bytes * 8 / up_bps + rtt_s / 2``, i.e. plus
the one-way delay) is the expected time to move ``bytes`` from the end device to the edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..devices import LINK_PROFILES, Link
from ..errors import TvmsplitError

TCP_IP_HEADER_BYTES = 52  # IPv4 20 + TCP 20 + the timestamp option 12 (Linux default)
ETHERNET_HEADER_BYTES = 14
MAX_DELAY_MS = 10_000


class TestbedError(TvmsplitError):
    """The testbed cannot be set up, reached or torn down; the message says what to do."""

    __test__ = False  # not a pytest test class despite its name


@dataclass(frozen=True)
class LinkProfile(Link):
    """A :class:`Link` the testbed can shape: rates 8 kbit/s .. 10 Gbit/s, one-way delay
    0 .. 10 s, loss in [0, 1). ``up`` is device -> edge; the delay is the same each way."""

    def __post_init__(self):
        problems = []
        for field_name in ("up_bps", "down_bps"):
            v = getattr(self, field_name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 8e3 <= v <= 10e9):
                problems.append(f"{field_name} must be between 8 kbit/s and 10 Gbit/s, got {v!r}")
        delay = self.delay_ms if isinstance(self.rtt_s, (int, float)) else self.rtt_s
        if not (isinstance(delay, float) and 0 <= delay <= MAX_DELAY_MS):
            problems.append(f"delay_ms must be between 0 and {MAX_DELAY_MS}, got {delay!r}")
        if not (isinstance(self.loss, (int, float)) and 0 <= self.loss < 1):
            problems.append(f"loss must be in [0, 1), got {self.loss!r}")
        if problems:
            raise TestbedError(f"link profile {self.name!r}: " + "; ".join(problems))
        super().__post_init__()

    @classmethod
    def of(cls, link: Link) -> "LinkProfile":
        """The shapeable form of a shared link (raises TestbedError beyond the limits)."""
        return cls(link.name, link.up_bps, link.down_bps, link.rtt_s, link.loss)

    @property
    def delay_ms(self) -> float:
        """One-way delay in ms, each direction (what ``linkemu --delay-ms`` takes)."""
        return round(self.delay_s * 1e3, 9)  # round: ms -> rtt_s -> ms gives back the same ms

    @property
    def needs_emulator(self) -> bool:
        """Delay or loss: this kernel has no netem, so they need the user-space link emulator."""
        return self.rtt_s > 0 or self.loss > 0

    def with_(self, *, up_bps: float | None = None, down_bps: float | None = None,
              delay_ms: float | None = None, loss: float | None = None) -> "LinkProfile":
        """A copy with the given values changed (None keeps the current one)."""
        changes = {k: v for k, v in (("up_bps", up_bps), ("down_bps", down_bps), ("loss", loss))
                   if v is not None}
        if delay_ms is not None:
            if not isinstance(delay_ms, (int, float)):
                raise TestbedError(f"link profile {self.name!r}: delay_ms must be a number of "
                                   f"ms, got {delay_ms!r}")
            changes["rtt_s"] = 2 * delay_ms / 1e3
        return replace(self, **changes)

    def to_json(self) -> dict:
        return {"name": self.name, "up_bps": self.up_bps, "down_bps": self.down_bps,
                "delay_ms": self.delay_ms, "loss": self.loss}

    @classmethod
    def from_json(cls, d: dict) -> "LinkProfile":
        return cls(str(d["name"]), float(d["up_bps"]), float(d["down_bps"]),
                   2 * float(d.get("delay_ms", 0.0)) / 1e3, float(d.get("loss", 0.0)))


def get_profile(name: str = "4g", *, up_mbps: float | None = None,
                down_mbps: float | None = None, delay_ms: float | None = None,
                loss: float | None = None) -> LinkProfile:
    """A built-in profile (:data:`~tvmsplit.devices.LINK_PROFILES`) with optional overrides, or
    ``custom`` (needs both rates)."""
    key = name.lower()
    if key == "custom":
        if up_mbps is None or down_mbps is None:
            raise TestbedError("profile 'custom' needs up_mbps and down_mbps "
                               "(--up-mbps / --down-mbps)")
        base = LinkProfile("custom", up_mbps * 1e6, down_mbps * 1e6)
    elif key in LINK_PROFILES:
        base = LinkProfile.of(LINK_PROFILES[key])
    else:
        raise TestbedError(f"unknown link profile {name!r}; known: "
                           f"{', '.join([*LINK_PROFILES, 'custom'])}")
    return base.with_(up_bps=None if up_mbps is None else up_mbps * 1e6,
                      down_bps=None if down_mbps is None else down_mbps * 1e6,
                      delay_ms=delay_ms, loss=loss)


def wire_rate_bps(goodput_bps: float, mtu: int, l2_header: int) -> float:
    """The shaper rate that gives ``goodput_bps`` of TCP payload in full-size packets: a packet
    carries ``mtu - 52`` payload bytes and costs ``mtu + l2_header`` bytes at the shaper."""
    return goodput_bps * (mtu + l2_header) / (mtu - TCP_IP_HEADER_BYTES)
