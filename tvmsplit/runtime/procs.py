"""Processes we start (workers, the testbed's helpers): stopping them by process group, and
reading what they said.

Every such process is started with ``start_new_session=True``, so it leads its own process group
(pgid == pid) and is stopped with everything it spawned, without touching anything else.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def killpg(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; nothing when it is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_groups(procs: Iterable[subprocess.Popen]) -> None:
    """SIGKILL the process group of every process still running, and reap it."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM ``proc``'s group, wait up to ``grace_s`` for the leader, then SIGKILL the group
    (whatever the leader left behind too), reap the leader and return once the group is empty
    (so that the ports its members held are free), or after another ``grace_s``."""
    if proc.poll() is None:
        killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    killpg(proc.pid, signal.SIGKILL)
    kill_groups([proc])
    deadline = time.monotonic() + grace_s
    while group_exists(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_exists(pgid: int) -> bool:
    """Is any process left in group ``pgid``?"""
    return _probe(os.killpg, pgid)


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (one of another user's counts as running)?"""
    return _probe(os.kill, pid)


def _probe(kill, target: int) -> bool:
    try:
        kill(target, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"exit code {rc} (killed by {signal.Signals(-rc).name})"
        except ValueError:
            pass
    return f"exit code {rc}"


def log_tail(path: Path | None, nbytes: int = 2000) -> str:
    """The last ``nbytes`` of a log, decoded; "" when there is none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - nbytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
