"""The client side of the pipeline: launch (or connect to) one worker per stage and run requests.

    with Pipeline("build/model") as p:              # one local worker process per stage
        outputs, trace = p.run({"input": x})
        for outputs, trace in p.stream(inputs):     # up to max_in_flight requests in flight
            ...

Topology of a chain (every socket ``linger=0``)::

    client PUSH ──▶ PULL stage 0 PUSH ──▶ PULL stage 1 PUSH ──▶ ... ──▶ PULL client (results)
                       REP control          REP control

A plan with direct routes is a DAG of stages (``split.plan_split(routing="direct")``): the client
sends each entry stage its model inputs (one PUSH per entry route), a stage sends each of its
routes' destinations their tensors (one PUSH each), a stage with several senders gathers their
parts by request id, and so does the client when several stages send model outputs. Stages with
no path between them run at the same time.

The client binds its result PULL socket on an ephemeral port and starts the workers from the last
stage backwards (stages are numbered so that routes go to higher numbers), so each one is told
where to send (``--next`` per route): a later stage's data address, or the client's result
address. Each worker reports its bound addresses in a ready file. Every failure on a request travels forward as a wire error message with the request id and
comes out of :meth:`Pipeline.result` as a :class:`PipelineError`. The client checks its worker
processes while it waits: when one dies, every request in flight fails at once with the stage and
exit code, later calls fail fast until :meth:`Pipeline.restart`. Not thread-safe: use one
Pipeline from one thread.

``Pipeline(bundle, endpoints=[...])`` connects to workers that are already running (e.g. on other
machines) instead: give each stage's ready-file dict (``data``, ``control``); a worker that sends
to the client must have been started without ``--next`` for that route so that it binds ``out``,
which the client connects to.

``Pipeline(bundle, secure=KEYS_DIR)`` encrypts and authenticates every link with CurveZMQ (see
security.py; default None: plain TCP, fine on loopback). The client's keypair is
``KEYS_DIR/client.key_secret``; it connects to the workers' data and control sockets as a CURVE
client of ``KEYS_DIR/worker.key``. Launched workers get ``--secure KEYS_DIR`` (the same directory,
so it must also hold ``worker.key_secret``), and ``--next-key client`` for a route to the client: the client's
result socket is a CURVE server that admits only the public keys in ``KEYS_DIR/*.key``. With
``endpoints`` the workers must run with ``--secure`` and a keys directory holding ``client.key``.
"""
from __future__ import annotations

import itertools
import secrets
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..bundle import Bundle
from ..errors import ShapeError, TvmsplitError, WireError
from ..plan import CLIENT_END, Route
from . import wire
from .gather import MAX_WAITING, Gather, GatherError, Part, merge_traces
from .procs import Owned, WorkerInfo, exit_text, kill_groups, log_tail
from .security import CLIENT, WORKER, SecureConfig, SecurityError
from .stage import check_tensors
from .trace import Hop, Trace, make_trace

__all__ = ["Pipeline", "PipelineError", "Trace", "Hop"]

START_TIMEOUT_S = 60.0
SHUTDOWN_WAIT_S = 2.0
_POLL_S = 0.05
_MAX_UNMATCHED = 1000


class PipelineError(TvmsplitError):
    """A request failed in the pipeline, timed out, or a worker died. ``request_id``, ``stage``
    and ``code`` (the worker's error code, or ``timeout`` / ``worker_died`` / ``start_failed``
    / ...) say which and where; each may be None when it does not apply."""

    def __init__(self, message: str, *, request_id: int | None = None, stage: int | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.request_id, self.stage, self.code = request_id, stage, code


@dataclass
class _InFlight:
    send_ts: float
    deadline: float  # time.monotonic()


class Pipeline:
    """One worker per stage of ``bundle`` (a :class:`Bundle` or its directory), as a resource.

    ``timeout_s``: a request with no answer after this long fails with a PipelineError.
    ``max_in_flight``: requests :meth:`stream` (and :meth:`submit`) keep in flight at most.
    ``endpoints``: connect to running workers instead of launching local ones (see module doc).
    ``secure``: a keys directory (or :class:`SecureConfig`) to run every link over CurveZMQ.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, *, timeout_s: float = 30.0,
                 max_in_flight: int = 8, start_timeout_s: float = START_TIMEOUT_S,
                 endpoints: Sequence[Mapping[str, Any]] | None = None,
                 secure: SecureConfig | str | os.PathLike | None = None):
        problems = []
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            problems.append(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                or max_in_flight < 1):
            problems.append(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if problems:
            raise PipelineError("; ".join(problems), code="bad_argument")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self._secure = SecureConfig.of(secure, CLIENT)
        self._worker_key = self._secure.peer_key(WORKER) if self._secure else None
        self.timeout_s = float(timeout_s)
        self.max_in_flight = max_in_flight
        self._check_in_flight(self.bundle)
        self.start_timeout_s = float(start_timeout_s)
        self._given_endpoints = [dict(e) for e in endpoints] if endpoints is not None else None
        # ids start at random: long-lived workers (endpoints) that gather parts by id must not
        # take a new client's request 1 for an old one's
        self._ids = itertools.count(secrets.randbelow(1 << 62) + 1)
        self._inflight: dict[int, _InFlight] = {}
        self._done: dict[int, tuple[dict[str, np.ndarray], Trace] | PipelineError] = {}
        self._replies = self._reply_gather(self.bundle)  # reply parts by request id
        self._unmatched: deque[wire.Message | WireError] = deque(maxlen=_MAX_UNMATCHED)
        self._dead: str | None = None  # why the pipeline is broken (a worker died)
        self._workers: list[WorkerInfo] = []
        self._owned = Owned()
        self._closed = False
        self._ctx = zmq.Context()
        self._entry: list[tuple[Route, zmq.Socket]] = []  # one PUSH per entry route
        self._recv: zmq.Socket | None = None
        self._auth = None  # the ZAP handler of a secure result socket
        self._finalizer = weakref.finalize(self, self._owned.release)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def num_stages(self) -> int:
        return len(self.bundle.stages)

    @property
    def endpoints(self) -> list[dict[str, Any]]:
        """Per stage: ``stage``, ``data``, ``control``, ``out`` addresses and the worker ``pid``."""
        return [{"stage": w.stage, "data": w.data, "control": w.control, "out": w.out, "pid": w.pid}
                for w in self._workers]

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, inputs: Mapping[str, np.ndarray]):
        return self.run(inputs)

    @staticmethod
    def _reply_gather(bundle: Bundle, before: Gather | None = None) -> Gather:
        """Where replies come from: every stage with a route to the client. Completed and failed
        ids are remembered (across swaps: ``before``), so that a late part is dropped."""
        return Gather(bundle.plan.senders(CLIENT_END), "the client", max_open=1 << 30,
                      closed=before)

    def _check_in_flight(self, bundle: Bundle) -> None:
        """A stage DAG's gathering stages hold at most MAX_WAITING requests."""
        if not bundle.plan.is_chain and self.max_in_flight > MAX_WAITING:
            raise PipelineError(f"max_in_flight {self.max_in_flight} is above {MAX_WAITING}, the "
                                "requests a gathering stage of a stage DAG holds; lower it",
                                code="bad_argument")

    def _socket(self, kind: int, server: bool = False) -> zmq.Socket:
        """A socket; when secure a CURVE server (``server``, to bind) or else a CURVE client of
        the workers' key (to connect to a worker)."""
        s = self._ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if self._secure is not None:
            if server:
                self._secure.server(s)
            else:
                self._secure.client(s, self._worker_key)
        return s

    @property
    def secure(self) -> SecureConfig | None:
        """The client's keys when links use CurveZMQ, else None."""
        return self._secure

    def _start(self) -> None:
        launch = self._given_endpoints is None
        if launch and self._secure is not None:
            self._check_launch_keys()
            self._auth = self._secure.authenticator(self._ctx)  # before the result socket binds
        self._recv = self._socket(zmq.PULL, server=launch)
        if self._given_endpoints is not None:
            self._connect_endpoints(self._given_endpoints)
            return
        off_host = [f"stage {s.index} ({s.target.get('name')}, {s.target.get('arch')})"
                    for s in self.bundle.stages if not s.runs_on_host]
        if off_host:
            raise PipelineError(f"cannot run {', '.join(off_host)} on this machine; start those "
                                "workers on their devices and pass endpoints=[...]",
                                code="start_failed")
        self._recv.bind("tcp://127.0.0.1:0")
        self._result_addr = self._recv.getsockopt_string(zmq.LAST_ENDPOINT)
        self._owned.tmp = Path(tempfile.mkdtemp(prefix="tvmsplit-pipeline-"))
        self._workers = []  # filled as they start, so that a failure stops those already started
        self._launch_all(self.bundle, self._workers)
        self._connect_entry(self.bundle, self._workers)

    def _launch_all(self, bundle: Bundle, workers: list[WorkerInfo]) -> None:
        """Start ``bundle``'s workers, last stage first: each needs its destinations' addresses."""
        by_stage: dict[int, WorkerInfo] = {}
        for index in reversed(range(len(bundle.stages))):
            nxt = [self._result_addr if r.to == CLIENT_END else by_stage[r.to].data
                   for r in bundle.stages[index].plan.sends]
            by_stage[index] = self._launch(bundle, index, nxt)
            workers.insert(0, by_stage[index])

    def _connect_entry(self, bundle: Bundle, workers: Sequence[WorkerInfo]) -> None:
        """One PUSH per entry route (a PUSH with several peers would share requests out)."""
        for route in bundle.plan.entry:
            sock = self._socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
            sock.connect(workers[route.to].data)
            self._entry.append((route, sock))

    def _close_entry(self) -> None:
        for _, sock in self._entry:
            sock.close(linger=0)
        self._entry = []

    def _check_launch_keys(self) -> None:
        """The workers we launch share our keys directory: it must let them and us in."""
        keys = self._secure
        worker = SecureConfig(keys.keys_dir, WORKER)  # worker.key_secret present and sound
        if worker.public_key != self._worker_key:
            raise SecurityError(f"{keys.keys_dir / 'worker.key'} does not match "
                                f"{keys.keys_dir / 'worker.key_secret'}; recreate the keys")
        keys.peer_key(CLIENT)  # client.key: the last worker's --next-key
        if keys.public_key not in worker.authorized:
            raise SecurityError(f"the public key of {keys.keys_dir / 'client.key_secret'} is in "
                                f"no {keys.keys_dir}/*.key file, so the workers would refuse the "
                                "client; put the matching client.key there or recreate the keys")

    def _launch(self, bundle: Bundle, index: int, nxt: Sequence[str]) -> WorkerInfo:
        self._launches = getattr(self, "_launches", 0) + 1  # unique files across swaps
        ready = self._owned.tmp / f"stage{index}-{self._launches}.ready.json"
        log = self._owned.tmp / f"stage{index}-{self._launches}.log"
        cmd = [sys.executable, "-m", "tvmsplit.runtime.worker", "--bundle", str(bundle.path),
               "--stage", str(index), "--bind", "tcp://127.0.0.1:0",
               "--control", "tcp://127.0.0.1:0", "--ready-file", str(ready),
               "--parent-pid", str(os.getpid())]
        for addr in nxt:
            cmd += ["--next", addr]
        if self._secure is not None:
            cmd += ["--secure", str(self._secure.keys_dir.resolve())]
            for route in bundle.stages[index].plan.sends:  # the client's result socket or a stage
                cmd += ["--next-key", CLIENT if route.to == CLIENT_END else WORKER]
        env = dict(os.environ)
        env.setdefault("TVM_USE_RUNTIME_LIB", "1")
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True, env=env)
        self._owned.procs.append(proc)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            rc = proc.poll()
            if rc is not None:
                raise PipelineError(f"stage {index} worker exited during start with "
                                    f"{exit_text(rc)}: {log_tail(log) or '(no output)'}",
                                    stage=index, code="start_failed")
            if time.monotonic() > deadline:
                kill_groups([proc])
                raise PipelineError(f"stage {index} worker was not ready within "
                                    f"{self.start_timeout_s:g} s: {log_tail(log) or '(no output)'}",
                                    stage=index, code="start_failed")
            time.sleep(0.01)
        info = json.loads(ready.read_text())
        return WorkerInfo(index, info["data"], info.get("control"), info.get("out"), proc.pid, proc,
                       log)

    def _connect_endpoints(self, endpoints: list[dict[str, Any]]) -> None:
        n = self.num_stages
        problems = []
        if len(endpoints) != n:
            problems.append(f"{len(endpoints)} endpoint(s) given for {n} stage(s)")
        for i, e in enumerate(endpoints):
            if not isinstance(e.get("data"), str):
                problems.append(f"endpoint {i} has no 'data' address")
        replying = [src for src, _ in self.bundle.plan.senders(CLIENT_END)]
        for i in replying:
            if i < len(endpoints) and not isinstance(endpoints[i].get("out"), str):
                problems.append(f"endpoint {i} has no 'out' address: stage {i} sends to the client, "
                                "so start its worker without --next for that route (it binds one)")
        if problems:
            raise PipelineError("; ".join(problems), code="bad_endpoints")
        self._workers = [WorkerInfo(i, e["data"], e.get("control"), e.get("out"), e.get("pid"))
                         for i, e in enumerate(endpoints)]
        for w, h in zip(self._workers, self.health()):  # check them all, report all at once
            if not h.get("ok"):
                problems.append(f"{w.describe()}: {h.get('error')}")
            elif h.get("stage") != w.stage:
                problems.append(f"{w.describe()} runs stage {h.get('stage')}")
        if problems:
            raise PipelineError("; ".join(problems), code="bad_endpoints")
        self._connect_entry(self.bundle, self._workers)
        for i in replying:
            self._recv.connect(self._workers[i].out)

    def _stop_workers(self) -> None:
        """Ask our workers to shut down, wait briefly, SIGKILL the groups still alive."""
        ours = [w for w in self._workers if w.proc is not None and w.proc.poll() is None]
        socks = []
        for w in ours:
            if w.control:
                s = self._socket(zmq.REQ)
                s.connect(w.control)
                s.send(b'{"cmd": "shutdown"}')
                socks.append(s)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for s in socks:
            s.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN)
            s.close(linger=0)
        for w in ours:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        kill_groups([w.proc for w in self._workers if w.proc is not None])

    def _close_sockets(self) -> None:
        self._close_entry()
        if self._recv is not None:
            self._recv.close(linger=0)
        self._recv = None
        if self._auth is not None:
            self._auth.stop()  # before ctx.term(); restart() starts a new one
            self._auth = None

    def restart(self) -> None:
        """Stop all workers and launch them again (or reconnect, with ``endpoints``). Requests
        in flight fail with code ``restarted``."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        self._stop_workers()
        self._fail_all(lambda rid: PipelineError(f"request {rid} was in flight when the pipeline "
                                                 "restarted", request_id=rid, code="restarted"))
        self._close_sockets()
        self._owned.release()
        self._workers = []
        self._dead = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def swap(self, bundle: Bundle | str | os.PathLike) -> None:
        """Replace the running stages with ``bundle``'s — a new plan of the same model — without
        losing a request: the new workers start beside the old ones, the requests in flight finish
        on the old ones (their results stay available), new requests go to the new workers, then
        the old workers stop. With ``endpoints`` (remote workers) start the new workers yourself
        and create a new Pipeline instead."""
        self._check_usable()
        new = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self._check_in_flight(new)
        if (new.model_sha256, new.inputs, new.outputs) != (self.bundle.model_sha256,
                                                          self.bundle.inputs, self.bundle.outputs):
            raise PipelineError(f"bundle {new.path} is not a plan of the running model "
                                f"{self.bundle.model} (different model or inputs/outputs)",
                                code="bad_swap")
        if self._given_endpoints is not None:
            raise PipelineError("swap launches local workers; for remote workers start the new "
                                "ones and create a new Pipeline", code="bad_swap")
        off_host = [s.index for s in new.stages if not s.runs_on_host]
        if off_host:
            raise PipelineError(f"cannot run stage(s) {off_host} of {new.path} on this machine",
                                code="bad_swap")
        started: list[WorkerInfo] = []
        try:
            self._launch_all(new, started)
        except BaseException:
            kill_groups([w.proc for w in started])
            raise
        while self._inflight:  # requests in flight finish on the old plan
            self._pump(_POLL_S)
            self._check_usable()
        self._close_entry()
        self._connect_entry(new, started)
        self._stop_workers()
        self.bundle, self._workers = new, started
        self._replies = self._reply_gather(new, self._replies)

    def close(self) -> None:
        """Shut the workers down (SIGKILL those that do not exit), close sockets, remove files."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_workers()
        finally:
            self._close_sockets()
            self._ctx.term()
            self._finalizer()  # kills what is left, removes the temporary directory; runs once

    # ---------------------------------------------------------------------------------- control
    def health(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """Each worker's answer to ``{"cmd": "health"}`` (asked in parallel), in stage order;
        ``{"ok": False, "stage", "error"}`` for a worker that does not answer in time."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        socks = []
        for w in self._workers:
            s = None
            if w.control:
                s = self._socket(zmq.REQ)
                s.connect(w.control)
                s.send(b'{"cmd": "health"}')
            socks.append(s)
        deadline = time.monotonic() + timeout_s
        answers = []
        for w, s in zip(self._workers, socks):
            if s is None:
                answers.append({"ok": False, "stage": w.stage, "error": "no control address"})
                continue
            if s.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                try:
                    answers.append(json.loads(s.recv()))
                except ValueError as exc:
                    answers.append({"ok": False, "stage": w.stage, "error": f"bad answer: {exc}"})
            else:
                answers.append({"ok": False, "stage": w.stage,
                                "error": f"no answer on {w.control} within {timeout_s:g} s"})
            s.close(linger=0)
        return answers

    def deploy(self, stages: Sequence[int] | None = None, timeout_s: float = 60.0) -> None:
        """Push stage libraries from this bundle to the workers' control sockets (workers started
        with ``--await-library`` hold only ``manifest.json``: each device receives just the
        layers it runs). Raises PipelineError naming every stage that refused or did not answer."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        wanted = range(self.num_stages) if stages is None else stages
        problems = []
        for index in wanted:
            w = self._workers[index]
            if not w.control:
                problems.append(f"stage {index}: no control address")
                continue
            stage = self.bundle.stages[index]
            sock = self._socket(zmq.REQ)
            try:
                sock.connect(w.control)
                sock.send_multipart([json.dumps({"cmd": "deploy"}).encode(),
                                     stage.library.read_bytes()])
                if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
                    problems.append(f"stage {index}: no answer on {w.control} within {timeout_s:g} s")
                    continue
                answer = json.loads(sock.recv())
                if not answer.get("ok"):
                    problems.append(f"stage {index}: {answer.get('error')}")
            finally:
                sock.close(linger=0)
        if problems:
            raise PipelineError("deploying stage libraries failed: " + "; ".join(problems),
                                code="deploy_failed")

    # --------------------------------------------------------------------------------- requests
    def _check_usable(self) -> None:
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        if self._dead is not None:
            raise PipelineError(f"{self._dead}; call restart()", code="worker_died")

    def submit(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Send one request without waiting for it; returns its id for :meth:`result`. Waits
        while ``max_in_flight`` requests are already in flight."""
        self._check_usable()
        check_tensors(self.bundle.inputs, inputs, f"pipeline input of {self.bundle.model}")
        while len(self._inflight) >= self.max_in_flight:
            self._pump(_POLL_S)
            self._check_usable()
        rid = next(self._ids)
        messages = [(route.to, sock, wire.request(rid, route.to, [
            (name, np.asarray(inputs[name])) for name in route.tensors])) for route, sock in self._entry]
        send_ts = time.time()
        for stage, sock, frames in messages:
            try:
                # copy=True: the caller may reuse its arrays as soon as submit returns
                sock.send_multipart(frames, copy=True)
            except zmq.Again:
                self._replies.fail(rid)  # a part already sent to another entry stage is dropped
                raise PipelineError(f"request {rid}: stage {stage} did not accept it within "
                                    f"{self.timeout_s:g} s ({self._workers[stage].describe()})",
                                    request_id=rid, stage=stage, code="timeout") from None
        self._inflight[rid] = _InFlight(send_ts, time.monotonic() + self.timeout_s)
        return rid

    def result(self, request_id: int) -> tuple[dict[str, np.ndarray], Trace]:
        """Wait for request ``request_id``; its outputs and trace, or a PipelineError."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        if request_id not in self._done and request_id not in self._inflight:
            raise PipelineError(f"unknown request id {request_id} (never submitted, abandoned, or "
                                "its result was already taken)", request_id=request_id)
        while request_id not in self._done:
            self._pump(_POLL_S)
        got = self._done.pop(request_id)
        if isinstance(got, PipelineError):
            raise got
        return got

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Trace]:
        """Run one request through all stages: ``(outputs, trace)``."""
        return self.result(self.submit(inputs))

    def stream(self, inputs: Iterable[Mapping[str, np.ndarray]], *,
               return_exceptions: bool = False) -> Iterator[Any]:
        """``(outputs, trace)`` for each input, in input order, with up to ``max_in_flight``
        requests in flight. A failed request raises its PipelineError (the requests behind it
        are abandoned), or with ``return_exceptions=True`` is yielded as the PipelineError
        instance in its place. When a worker dies, every request in flight fails; the stream
        then stops submitting and (after yielding those errors) raises."""
        source: Iterator | None = iter(inputs)
        window: deque[int] = deque()
        try:
            while True:
                while (source is not None and self._dead is None
                       and len(window) < self.max_in_flight):
                    try:
                        item = next(source)
                    except StopIteration:
                        source = None
                        break
                    window.append(self.submit(item))
                if not window:
                    if source is not None:  # stopped because a worker died
                        self._check_usable()
                    return
                rid = window.popleft()
                try:
                    got = self.result(rid)
                except PipelineError as exc:
                    if not return_exceptions:
                        raise
                    got = exc
                yield got
        finally:
            for rid in window:
                self._abandon(rid)

    def unmatched(self, timeout_s: float = 0.0) -> list[wire.Message | WireError]:
        """Messages that reached the client but belong to no request in flight (e.g. errors for
        frames someone else sent to a worker; id 0 when the worker could not read the id), or
        WireErrors for undecodable ones. Receives for up to ``timeout_s`` (returning early when
        something arrived), then returns and forgets them."""
        deadline = time.monotonic() + timeout_s
        while not self._unmatched and time.monotonic() < deadline:
            self._pump(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        if not self._unmatched:
            self._pump(0.0)
        out = list(self._unmatched)
        self._unmatched.clear()
        return out

    # ---------------------------------------------------------------------------------- receive
    def _abandon(self, rid: int) -> None:
        if self._inflight.pop(rid, None) is not None:
            self._replies.fail(rid)  # its answer, when it comes, is dropped
        self._done.pop(rid, None)

    def _finish(self, rid: int, result) -> None:
        """Request ``rid`` is over: its outputs and trace, or a PipelineError."""
        self._inflight.pop(rid, None)
        self._replies.fail(rid)
        self._done[rid] = result

    def _fail_all(self, make_error) -> None:
        for rid in list(self._inflight):
            self._finish(rid, make_error(rid))

    def _pump(self, timeout_s: float) -> None:
        """Receive what arrives within ``timeout_s``, then check workers and deadlines."""
        if self._recv is not None and self._recv.poll(int(timeout_s * 1000), zmq.POLLIN):
            self._drain()
        self._check_workers()
        self._expire()

    def _drain(self) -> None:
        while True:
            try:
                frames = self._recv.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._accept(frames, time.time())

    def _check_workers(self) -> None:
        if self._dead is not None:
            return
        dead = [(w, w.proc.returncode) for w in self._workers
                if w.proc is not None and w.proc.poll() is not None]
        if not dead:
            return
        self._drain()  # results that made it out before the death still count
        self._dead = "; ".join(f"stage {w.stage} worker (pid {w.pid}) died with {exit_text(rc)}"
                               + (f": {log_tail(w.log, 500)}" if log_tail(w.log, 500) else "")
                               for w, rc in dead)
        first = dead[0][0].stage
        self._fail_all(lambda rid: PipelineError(
            f"request {rid} was lost: {self._dead} while it was in flight; call restart()",
            request_id=rid, stage=first, code="worker_died"))

    def _expire(self) -> None:
        now = time.monotonic()
        for rid, f in list(self._inflight.items()):
            if now > f.deadline:
                stages = ", ".join(w.describe() for w in self._workers)
                self._finish(rid, PipelineError(
                    f"request {rid} got no answer within {self.timeout_s:g} s from the "
                    f"{self.num_stages}-stage pipeline [{stages}]; a stage is stuck, overloaded or "
                    "unreachable: check health(), or raise timeout_s", request_id=rid,
                    code="timeout"))

    def _accept(self, frames: list[Any], recv_ts: float) -> None:
        try:
            msg = wire.decode(frames)
        except WireError as exc:
            self._unmatched.append(exc)
            return
        rid = msg.id
        pending = self._inflight.get(rid)
        if pending is None:
            if not self._replies.is_closed(rid):
                self._unmatched.append(msg)
            return  # else a late answer nobody waits for (timed out, abandoned, failed elsewhere)
        if msg.kind == "error":
            self._finish(rid, PipelineError(
                f"request {rid} failed at stage {msg.stage}: [{msg.error.code}] "
                f"{msg.error.message}", request_id=rid, stage=msg.stage, code=msg.error.code))
            return
        try:
            names = [name for name, _ in msg.tensors]
            if msg.kind != "reply" or self._replies.source_of(names) != msg.stage:
                raise ShapeError(f"expected a reply with {self._expected_reply()}, got a "
                                 f"{msg.kind!r} from stage {msg.stage} with {sorted(names)}")
            parts = self._replies.add(rid, Part(msg.stage, {n: np.array(a) for n, a in msg.tensors},
                                                msg.trace, recv_ts, sum(len(f) for f in frames)))
            if parts is None:
                return  # other stages' parts still to come
            outputs = {name: a for part in parts for name, a in part.tensors.items()}
            check_tensors(self.bundle.outputs, outputs, "the replies")
        except (ShapeError, GatherError) as exc:
            self._finish(rid, PipelineError(f"request {rid}: bad reply: {exc}", request_id=rid,
                                            stage=msg.stage, code="bad_reply"))
            return
        outputs = {t.name: outputs[t.name] for t in self.bundle.outputs}
        try:
            trace = make_trace(rid, pending.send_ts, parts, merge_traces(parts))
        except (KeyError, TypeError, ValueError) as exc:
            self._finish(rid, PipelineError(f"request {rid}: bad reply: a malformed trace entry "
                                            f"({type(exc).__name__}: {exc})", request_id=rid,
                                            stage=msg.stage, code="bad_reply"))
            return
        self._finish(rid, (outputs, trace))

    def _expected_reply(self) -> str:
        return "; ".join(f"{sorted(names)} from stage {src}"
                         for names, src in self._replies.sources.items())
