"""Live device state: the dynamic features of the latency predictor (ITU-T F.748.20 section 7).

``snapshot()`` reads CPU utilisation (total and system time), free and used memory and the load
average with psutil. CPU percentages are measured over ``interval_s`` (psutil needs an interval
to compute utilisation; 0.1 s is enough for a stable reading).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import psutil


@dataclass(frozen=True)
class DeviceState:
    cpu_percent: float          # all cores, 0..100
    system_cpu_percent: float   # time in the kernel, 0..100
    mem_available_bytes: int
    mem_used_percent: float
    load_avg_1m: float          # divided by the number of cores
    cores: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "DeviceState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


FEATURES = ("cpu_percent", "system_cpu_percent", "mem_available_bytes", "mem_used_percent",
            "load_avg_1m")


def snapshot(interval_s: float = 0.1) -> DeviceState:
    times = psutil.cpu_times_percent(interval=interval_s)
    busy = 100.0 - times.idle - getattr(times, "iowait", 0.0)
    mem = psutil.virtual_memory()
    cores = os.cpu_count() or 1
    return DeviceState(cpu_percent=round(busy, 2), system_cpu_percent=round(times.system, 2),
                       mem_available_bytes=int(mem.available), mem_used_percent=float(mem.percent),
                       load_avg_1m=round(os.getloadavg()[0] / cores, 3), cores=cores)
