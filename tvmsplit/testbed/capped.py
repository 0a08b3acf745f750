"""Capped end devices: target files with a ``[capped]`` table (``targets/capped/*.toml``).

A capped device is a target (its ``[target]`` is what its stages are built for: this machine's
own code, so its workers run natively) plus how the testbed slows it down: a cgroup with one
core at a fraction of its time and the target's ``memory_bytes`` as memory limit::

    [capped]
    cpu_fraction = 0.1      # of one core: cpu quota = fraction x period (>= 1 ms)
    period_us = 10000       # the CFS period; 10 ms slows millisecond layers smoothly
    core = 0                # the one core it runs on (cpuset); the edge gets the others
    threads = 1             # TVM_NUM_THREADS of its workers

Being targets, they are found like targets (``tvmsplit targets`` lists them; a directory in
``$TVMSPLIT_TARGETS`` may add more), plans can name them (``--devices end=pi-class``) and
``build --targets pi-class,x86_64`` builds for them. On an otherwise idle core a capped
device is ``1 / cpu_fraction`` times slower than the uncapped core (:attr:`expected_slowdown`).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass

from ..targets import TargetSpec, get_target, known_targets
from .cgroup import Limits
from .profiles import TestbedError

FIELDS = ("cpu_fraction", "period_us", "core", "threads")


@dataclass(frozen=True)
class CappedProfile:
    """A capped end device: its target and the cgroup limits it runs under."""

    name: str
    target: TargetSpec
    cpu_fraction: float
    period_us: int = 10_000
    core: int = 0
    threads: int = 1

    @property
    def memory_bytes(self) -> int | None:
        return self.target.memory_bytes or None

    @property
    def quota_us(self) -> int:
        return int(round(self.cpu_fraction * self.period_us))

    @property
    def expected_slowdown(self) -> float:
        """Compute time capped / uncapped on an idle core, for work much longer than a period."""
        return 1.0 / self.cpu_fraction

    def limits(self) -> Limits:
        return Limits(cpu_quota_us=self.quota_us, cpu_period_us=self.period_us,
                      cpus=str(self.core), memory_max_bytes=self.memory_bytes)

    def describe(self) -> str:
        mem = f", {self.memory_bytes / 2**30:g} GiB" if self.memory_bytes else ""
        return (f"{self.name}: core {self.core} at {self.cpu_fraction:.0%} (quota "
                f"{self.quota_us / 1e3:g} ms per {self.period_us / 1e3:g} ms, ~"
                f"{self.expected_slowdown:.3g}x slower){mem}, {self.threads} thread(s)")

    def to_json(self) -> dict:
        return {"name": self.name, "target": self.target.name, "cpu_fraction": self.cpu_fraction,
                "period_us": self.period_us, "quota_us": self.quota_us, "core": self.core,
                "threads": self.threads, "memory_bytes": self.memory_bytes,
                "expected_slowdown": self.expected_slowdown}


def _table(spec: TargetSpec) -> dict | None:
    try:
        with open(spec.source, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    table = data.get("capped")
    return table if isinstance(table, dict) else None


def from_target(spec: TargetSpec) -> CappedProfile:
    table = _table(spec)
    if table is None:
        raise TestbedError(f"target {spec.name!r} ({spec.source}) has no [capped] table, so it "
                           f"is no capped end device; capped: {', '.join(known_capped()) or 'none'}")
    problems = [f"unknown key {k!r}" for k in table if k not in FIELDS]
    frac = table.get("cpu_fraction")
    if not (isinstance(frac, (int, float)) and 0 < frac <= 1):
        problems.append(f"cpu_fraction must be in (0, 1], got {frac!r}")
    for key in ("period_us", "core", "threads"):
        v = table.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            problems.append(f"{key} must be a non-negative int, got {v!r}")
    if table.get("threads", 1) == 0:
        problems.append("threads must be >= 1")
    if spec.kind != "llvm" or not spec.runs_on_host:
        problems.append(f"its [target] must be this machine's CPU code (kind llvm, arch @host), "
                        f"got {spec.kind} for {spec.arch}")
    if problems:
        raise TestbedError(f"capped device {spec.name!r} ({spec.source}): " + "; ".join(problems))
    prof = CappedProfile(spec.name, spec, float(frac), int(table.get("period_us", 10_000)),
                         int(table.get("core", 0)), int(table.get("threads", 1)))
    prof.limits()  # the quota and period are ones the kernel takes (CgroupError otherwise)
    return prof


def get_capped(name: str | CappedProfile) -> CappedProfile:
    """A capped end device by target name (``pi-class``) or .toml path."""
    if isinstance(name, CappedProfile):
        return name
    return from_target(get_target(name))


def known_capped() -> list[str]:
    return sorted(n for n, s in known_targets().items() if _table(s) is not None)
