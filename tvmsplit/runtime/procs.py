"""The worker processes a Pipeline starts: what it knows of each, and how they are stopped.

Workers are started with ``start_new_session=True``, so each is the leader of its own process
group and ``kill_groups`` stops it with everything it spawned, without touching anything else.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WorkerInfo:
    """A stage's worker: its addresses and, when this client started it, its process and log."""

    stage: int
    data: str
    control: str | None
    out: str | None = None
    pid: int | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def describe(self) -> str:
        where = f"pid {self.pid}, " if self.pid else ""
        return f"stage {self.stage} ({where}{self.data})"


class Owned:
    """What a Pipeline started: worker processes and its temporary directory. Released by
    close(), or by a finalizer when a Pipeline is dropped (or the interpreter exits) unclosed."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.tmp: Path | None = None

    def release(self) -> None:
        kill_groups(self.procs)
        self.procs.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def kill_groups(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the process group of every worker we started that is still running, and reap it."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # pgid == pid: started with start_new_session
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"exit code {rc} (killed by {signal.Signals(-rc).name})"
        except ValueError:
            pass
    return f"exit code {rc}"


def log_tail(path: Path | None, nbytes: int = 2000) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - nbytes))
        return f.read().decode("utf-8", "replace").strip()
