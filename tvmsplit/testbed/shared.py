"""Several capped end devices and ONE edge whose compute and uplink they share (ITU-T F.748.20
section 8.2; partition/multi.py plans the shares).

    shares = [ClientShares(0.5, 0.5), ClientShares(0.5, 0.5)]
    with shared_edge("4g", "pi-class", shares) as tbs:     # one Testbed per end device
        launchers = [tb.launcher(["end", "edge"]) for tb in tbs]

Built from :class:`~.core.Testbed` (no second testbed class): end device ``i`` is a testbed of
its own (its own network namespaces and shaped link, its own index), its capped end device in
its own cgroup on the profile's core (all of them on core 0 at their cap, as pi-class says). The
edge is one core (``edge_core``, default 1) for all of them: every testbed's edge cgroup is
pinned to that core, and is that client's cgroup on the edge, with

- **compute share** ``c``: a CPU limit of ``c`` of the core (:func:`share_limits`; cfs quota and
  period on cgroup v1, ``cpu.max`` on v2, as :mod:`.cgroup` writes them), or None: no limit (the
  clients' edge workers take turns on the core as the scheduler likes: the unshared baseline);
- **bandwidth share** ``b``: its link shaped (tbf, both ways) to ``b`` x the link's rates, the
  delay unchanged; None: the link as given. A client with no edge share (it runs alone) keeps
  the link as given: nothing of it crosses the link.

The period: quota = share x period, and the kernel refuses quotas under 1 ms, so the period is
the pi-class one, 10 ms (a short period slows millisecond stages smoothly: BENCHMARKS.md,
"Capped end device"), and longer only for shares under 10 %: ``ceil(1 ms / share)``, rounded up
to whole ms (a 1/20 share gets 1 ms per 20 ms).

Everything is removed on exit, Ctrl-C included (an ExitStack of testbeds, each removing its
namespaces, cgroups and processes; each also on interpreter exit).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from ..devices import Link
from .cgroup import MIN_QUOTA_US, Limits
from .profiles import TestbedError

SHARE_PERIOD_US = 10_000    # the pi-class period: smooth for millisecond stages


@dataclass(frozen=True)
class ClientShares:
    """One end device's shares of the edge: ``compute`` of the edge core and ``bandwidth`` of
    the link, each in (0, 1]; None: not enforced (free CPU on the core, the link as given);
    ``0``: the device does not use the edge (it runs alone)."""

    compute: float | None
    bandwidth: float | None

    def __post_init__(self):
        bad = [f"{k}={v!r}" for k, v in (("compute", self.compute), ("bandwidth", self.bandwidth))
               if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1)]
        if bad:
            raise TestbedError(f"client shares must be in [0, 1] or None, got {', '.join(bad)}")


def share_period_us(share: float) -> int:
    """The CFS period for a CPU ``share`` of one core: 10 ms, or the shortest whole-ms period
    whose quota (share x period) is >= the kernel's 1 ms minimum."""
    if not 0 < share <= 1:
        raise TestbedError(f"a CPU share must be in (0, 1], got {share!r}")
    need_ms = math.ceil(MIN_QUOTA_US / share / 1000 - 1e-9)
    return max(SHARE_PERIOD_US, need_ms * 1000)


def share_limits(share: float | None, core: int) -> Limits:
    """The edge cgroup of a client holding ``share`` of core ``core`` (None or 0: the core
    alone, no quota)."""
    if not share:
        return Limits(cpus=str(core))
    period = share_period_us(share)
    return Limits(cpu_quota_us=max(MIN_QUOTA_US, int(round(share * period))),
                  cpu_period_us=period, cpus=str(core))


def shared_link(link: Link, bandwidth: float | None) -> Link:
    """The client's link at ``bandwidth`` x its rates (None or 0: as given)."""
    if not bandwidth:
        return link
    return replace(link, name=f"{link.name}x{bandwidth:.3g}", up_bps=link.up_bps * bandwidth,
                   down_bps=link.down_bps * bandwidth)


def check_cores(end_core: int, edge_core: int) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    problems = [f"core {c} ({what})" for c, what in ((end_core, "the end devices'"),
                                                     (edge_core, "the edge's"))
                if c not in allowed]
    if end_core == edge_core:
        problems.append(f"the end devices and the edge on the same core {edge_core}")
    if problems:
        raise TestbedError(f"a shared edge needs the end devices and the edge on two different "
                           f"cores this process may use ({allowed}): {'; '.join(problems)}; "
                           "pass edge_core=")


@contextlib.contextmanager
def shared_edge(link: str | Link, end, shares: Sequence[ClientShares], *, edge_core: int = 1,
                uncapped_start: bool = False,
                log: Callable[[str], None] | None = None) -> Iterator[list]:
    """One testbed per entry of ``shares`` (end device ``end``, e.g. ``"pi-class"``), their
    edge cgroups on ``edge_core`` with the compute shares, their links at the bandwidth
    shares; yields the testbeds (started with device=False, rpc=False; ``uncapped_start``:
    see :class:`~.core.Testbed`)."""
    from .capped import get_capped
    from .core import Testbed

    if not shares:
        raise TestbedError("a shared edge needs at least one end device")
    profile = get_capped(end)
    check_cores(profile.core, edge_core)
    base = link if isinstance(link, Link) else Link.profile(link)
    log = log or (lambda _msg: None)
    computes = [s.compute for s in shares if s.compute]
    if sum(computes) > 1 + 1e-9:
        raise TestbedError(f"compute shares sum to {sum(computes):.3f} > 1 of the edge core")
    with contextlib.ExitStack() as stack:
        beds = []
        for i, s in enumerate(shares):
            tb = Testbed(shared_link(base, s.bandwidth), end=profile, device=False, rpc=False,
                         edge_limits=share_limits(s.compute, edge_core),
                         uncapped_start=uncapped_start, log=lambda m, i=i: log(f"[end device {i + 1}] {m}"))
            beds.append(stack.enter_context(tb))
        yield beds
