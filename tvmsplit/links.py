"""Links between devices: bandwidth each way and round-trip time, with built-in profiles.

Profiles follow the numbers commonly used in the partitioning literature (Neurosurgeon/DADS
measurements): 3G, 4G and Wi-Fi uplink/downlink rates. RTTs are typical values; override them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import TvmsplitError


@dataclass(frozen=True)
class Link:
    """A link from a device to the next one on the path (``up``: towards the edge/cloud)."""

    name: str
    up_bps: float
    down_bps: float
    rtt_s: float = 0.0

    def __post_init__(self):
        if not (self.up_bps > 0 and self.down_bps > 0 and self.rtt_s >= 0):
            raise TvmsplitError(f"link {self.name!r}: bandwidths must be > 0 and rtt >= 0 "
                                f"(got up {self.up_bps} bps, down {self.down_bps} bps, rtt {self.rtt_s} s)")

    def up_ms(self, nbytes: int) -> float:
        """Lower bound for sending ``nbytes`` up: bytes x 8 / bandwidth + rtt / 2."""
        return 1e3 * (nbytes * 8 / self.up_bps + self.rtt_s / 2) if nbytes else 0.0

    def down_ms(self, nbytes: int) -> float:
        return 1e3 * (nbytes * 8 / self.down_bps + self.rtt_s / 2) if nbytes else 0.0

    @classmethod
    def profile(cls, name: str, rtt_s: float | None = None) -> "Link":
        """A built-in profile: 3g, 4g, wifi (or NAME:UP_MBPS/DOWN_MBPS[/RTT_MS] for a custom one)."""
        key = name.lower()
        if key in PROFILES:
            up, down, rtt = PROFILES[key]
            return cls(key, up * 1e6, down * 1e6, rtt / 1e3 if rtt_s is None else rtt_s)
        if ":" in key:
            label, _, spec = key.partition(":")
            try:
                parts = [float(p) for p in spec.split("/")]
                up, down = parts[0], parts[1]
                rtt = parts[2] / 1e3 if len(parts) > 2 else 0.0
            except (ValueError, IndexError):
                raise TvmsplitError(f"custom link {name!r} is not NAME:UP_MBPS/DOWN_MBPS[/RTT_MS], "
                                    "e.g. lan:100/100/1") from None
            return cls(label, up * 1e6, down * 1e6, rtt if rtt_s is None else rtt_s)
        raise TvmsplitError(f"unknown link profile {name!r}; built in: {', '.join(PROFILES)} "
                            "(or NAME:UP_MBPS/DOWN_MBPS[/RTT_MS])")


# name: (up Mbit/s, down Mbit/s, rtt ms)
PROFILES = {
    "3g": (1.1, 4.6, 100.0),
    "4g": (8.8, 29.1, 50.0),
    "wifi": (18.88, 54.97, 10.0),
}
