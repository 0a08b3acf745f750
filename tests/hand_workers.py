"""Workers started by hand, the way a user starts them on other machines (tests' helper).

    with HandStartedWorkers(bundle, tmp_path) as workers:
        info1 = workers.start(1)                         # no --next: binds "out"
        info0 = workers.start(0, "--next", info1["data"])
        with Pipeline(bundle, endpoints=[info0, info1]) as p: ...

``start`` waits for the worker's ready file and returns it; on exit every worker still running
is killed with its process group (each starts in a session of its own).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import zmq

from tvmsplit.runtime.launch import python_worker


def data_sockets(ctx: zmq.Context, info: dict, timeout_ms: int = 30_000):
    """(PUSH to a worker's data input, PULL from its bound ``out``), linger 0, a receive
    timeout: how a test talks to one ready worker (``info``: its ready-file dict)."""
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for sock in (push, pull):
        sock.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, timeout_ms)
    push.connect(info["data"])
    pull.connect(info["out"])
    return push, pull


def worker_command(bundle, stage: int, *extra: str, program=None) -> list[str]:
    """``program``: the worker's command (default: the Python worker; launch.worker_program)."""
    return [*(program or python_worker()), "--bundle", str(bundle.path), "--stage", str(stage),
            *extra]


class HandStartedWorkers:
    def __init__(self, bundle, tmp_path, *common: str, timeout_s: float = 60.0, program=None):
        self.bundle, self.tmp_path, self.common, self.timeout_s = bundle, tmp_path, common, timeout_s
        self.program = program
        self.procs: list[subprocess.Popen] = []

    def start(self, stage: int, *extra: str) -> dict:
        ready = self.tmp_path / f"r{stage}-{len(self.procs)}"
        proc = subprocess.Popen(worker_command(self.bundle, stage, "--ready-file", str(ready),
                                               *self.common, *extra, program=self.program),
                                stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + self.timeout_s
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"stage {stage} worker not ready"
            time.sleep(0.02)
        return json.loads(ready.read_text())

    def __enter__(self) -> "HandStartedWorkers":
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stderr.close()
