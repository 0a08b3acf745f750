"""Live device state: the dynamic features of the latency predictor (ITU-T F.748.20 section 7).

``DeviceState`` is the live load of a device (of a ``devices.Device``, read where it runs);
the device itself, and the links between devices, are defined in :mod:`tvmsplit.devices`. A
link's live estimate comes from :mod:`tvmsplit.linkmon`.

``snapshot()`` reads CPU utilisation (total and system time), free and used memory, the load
average and the run-queue length. CPU percentages are measured over ``interval_s`` (psutil needs
an interval to compute utilisation; 0.1 s is enough for a stable reading).

The run-queue length (``runnable_per_core``) is the one reading that still tells how contended
the CPU is once it is saturated: ``cpu_percent`` then sits at 100 % however many tasks compete.
It is the mean of ``procs_running`` in /proc/stat (the reader itself excluded) over a few reads
10 ms apart, per core; NaN where /proc/stat is unavailable.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import psutil


@dataclass(frozen=True)
class DeviceState:
    """The live load of a device at one moment (what ``snapshot`` reads on the machine it runs
    on, or an RPC session's ``tvmsplit.device_state`` on a remote one)."""

    cpu_percent: float          # all cores, 0..100
    system_cpu_percent: float   # time in the kernel, 0..100
    mem_available_bytes: int
    mem_used_percent: float
    load_avg_1m: float          # divided by the number of cores
    cores: int
    runnable_per_core: float = math.nan

    def to_json(self) -> dict:
        d = asdict(self)
        if math.isnan(self.runnable_per_core):
            d["runnable_per_core"] = None  # JSON has no NaN
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DeviceState":
        run = d.get("runnable_per_core")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k != "runnable_per_core"},
                   runnable_per_core=math.nan if run is None else float(run))


FEATURES = ("cpu_percent", "system_cpu_percent", "mem_available_bytes", "mem_used_percent",
            "load_avg_1m", "runnable_per_core")


def _procs_running() -> int | None:
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def runnable_per_core(cores: int, reads: int = 5) -> float:
    values = []
    for i in range(reads):
        v = _procs_running()
        if v is not None:
            values.append(max(v - 1, 0))
        if i < reads - 1:
            time.sleep(0.01)
    return round(sum(values) / len(values) / cores, 3) if values else math.nan


def snapshot(interval_s: float = 0.1) -> DeviceState:
    # Busy and system time are taken against wall-clock time x cores, not against the sum of the
    # kernel's counters: with tickless idle the kernel books idle time late, so over a short
    # interval psutil.cpu_percent reads an idle machine as 40-80 % busy (seen on this VM).
    before, start = psutil.cpu_times(), time.monotonic()
    time.sleep(interval_s)
    after, elapsed = psutil.cpu_times(), time.monotonic() - start
    cores = os.cpu_count() or 1

    def spent(*fields: str) -> float:
        return sum(getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in fields)

    capacity = max(elapsed * cores, 1e-9)
    busy = spent("user", "nice", "system", "irq", "softirq", "steal") / capacity
    system = spent("system") / capacity
    mem = psutil.virtual_memory()
    return DeviceState(cpu_percent=round(min(100.0, 100 * busy), 2),
                       system_cpu_percent=round(min(100.0, 100 * system), 2),
                       mem_available_bytes=int(mem.available), mem_used_percent=float(mem.percent),
                       load_avg_1m=round(os.getloadavg()[0] / cores, 3), cores=cores,
                       runnable_per_core=runnable_per_core(cores))
