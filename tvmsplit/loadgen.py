"""Controlled background load, so profiles cover the dynamic states a device really goes through.

``BackgroundLoad(cpu_workers=2, duty=0.5, mem_bytes=2 << 30)`` starts processes that burn CPU for
``duty`` of every 100 ms period and one that holds (and touches) ``mem_bytes`` of memory. All of
them run in one new process group, which ``stop()`` / leaving the ``with`` block kills.
``prefix`` is put before each command line: e.g. a cgroup's ``Cgroup.prefix()``, so the load
lands on a capped testbed device instead of the whole machine.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .errors import TvmsplitError

_BURN = """
import sys, time
duty, period = float(sys.argv[1]), 0.1
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < duty * period:
        pass
    time.sleep(max(0.0, (1 - duty) * period))
"""
_HOLD = """
import sys, time
block = bytearray(int(sys.argv[1]))
for i in range(0, len(block), 4096):
    block[i] = 1
while True:
    time.sleep(1)
"""


class BackgroundLoad:
    """CPU and memory pressure in a process group of its own (a context manager)."""

    def __init__(self, cpu_workers: int = 0, duty: float = 1.0, mem_bytes: int = 0,
                 prefix: tuple[str, ...] | list[str] = ()):
        if cpu_workers < 0 or not 0.0 <= duty <= 1.0 or mem_bytes < 0:
            raise TvmsplitError(f"background load: cpu_workers >= 0, 0 <= duty <= 1, mem_bytes >= 0 "
                                f"(got {cpu_workers}, {duty}, {mem_bytes})")
        self.cpu_workers, self.duty, self.mem_bytes = cpu_workers, duty, mem_bytes
        self.prefix = list(prefix)
        self._procs: list[subprocess.Popen] = []
        self._pgid: int | None = None

    def __enter__(self) -> "BackgroundLoad":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, code: str, arg: str) -> None:
        kwargs = {"process_group": 0 if self._pgid is None else self._pgid}  # one new group
        proc = subprocess.Popen([*self.prefix, sys.executable, "-c", code, arg], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        if self._pgid is None:
            self._pgid = proc.pid
        self._procs.append(proc)

    def start(self) -> None:
        try:
            if self.duty > 0:
                for _ in range(self.cpu_workers):
                    self._spawn(_BURN, str(self.duty))
            if self.mem_bytes:
                self._spawn(_HOLD, str(self.mem_bytes))
        except BaseException:
            self.stop()  # never leave a burner behind
            raise
        time.sleep(0.3 if self._procs else 0)  # let the load settle before measuring

    def stop(self) -> None:
        if self._pgid is not None:
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self._procs:
            proc.wait(timeout=10)
        self._procs.clear()
        self._pgid = None
