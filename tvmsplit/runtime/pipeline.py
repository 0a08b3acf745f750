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

Workers come from a *launcher* (launch.py). The default, :class:`LocalLauncher`, starts one
process per stage on this machine: the client binds its result PULL socket on an ephemeral port
and the workers are started from the last stage backwards (stages are numbered so that routes go
to higher numbers), so each one is told where to send (``--next`` per route): a later stage's
data address, or the client's result address. Each worker reports its bound addresses in a ready
file. Every failure on a request travels forward as a wire error message with the request id and
comes out of :meth:`Pipeline.result` as a :class:`PipelineError`. The client checks the worker
processes it owns while it waits. When one dies, *failover* (the default when the launcher can
replace a worker: local and testbed workers) starts a new worker for that stage at the dead one's
addresses (its neighbours reconnect by themselves; if that fails, every stage is relaunched) and
sends every request in flight again under a new wire id: a late answer of the lost attempt is
dropped, so each request is answered once, and :meth:`stream` goes on. A request lost
``max_attempts`` times fails alone (``attempts_exhausted``). ``Pipeline.failovers`` lists what
happened. With ``failover=False`` every request in flight fails at once with the stage and exit
code (``worker_died``), and later calls fail fast until :meth:`Pipeline.restart`. Not thread-safe: use
one Pipeline from one thread. Health, deploy and shutdown go over each worker's control socket
(control.py, the protocol).

``Pipeline(bundle, endpoints=[...])`` connects to workers that are already running (e.g. on other
machines) instead: give each stage's ready-file dict (``data``, ``control``); a worker that sends
to the client must have been started without ``--next`` for that route so that it binds ``out``,
which the client connects to. ``Pipeline(bundle, launcher=testbed.launcher([...]))`` lets the
testbed start them in its namespaces the same way.

A bundle whose input is encoded (a JPEG; ``bundle.encode_inputs``, schema 5) takes that input
as the JPEG's bytes (``bytes`` or a uint8 1-D array, at most the encoding's ``max_bytes``): the
client sends them as they are and the stage that reads the input decodes them
(``stage.DecodingRunner``).

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
import math
import os
import secrets
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
from . import control, wire
from .control import ControlClient, Heartbeat
from .gather import MAX_WAITING, Gather, GatherError, Part, merge_traces
from .launch import (START_TIMEOUT_S, GivenEndpoints, Launcher, LaunchError, LocalLauncher,
                     Worker, connect_replicas)
from .procs import exit_text
from .security import CLIENT, SecureConfig, admit
from .stage import check_tensors
from .trace import Hop, Trace, make_trace

__all__ = ["Pipeline", "PipelineError", "Trace", "Hop"]

RESULT_DOMAIN = "result"  # the ZAP domain of the client's result socket: the replying stages
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
    wire_id: int     # the id on the wire: a new one for each attempt
    inputs: dict[str, np.ndarray] | None = None  # kept for a re-send (failover)
    attempts: int = 1


@dataclass(frozen=True)
class Failover:
    """A worker that died and was replaced while requests were in flight."""

    stage: int
    old_pid: int | None
    new_pid: int | None
    seconds: float      # from noticing the death to the replacement being ready
    resent: int         # requests sent again
    how: str            # "respawn" (the stage alone) or "relaunch" (every stage)


class Pipeline:
    """One worker per stage of ``bundle`` (a :class:`Bundle` or its directory), as a resource.

    ``timeout_s``: a request with no answer after this long fails with a PipelineError.
    ``max_in_flight``: requests :meth:`stream` (and :meth:`submit`) keep in flight at most.
    ``launcher``: where the workers come from (launch.py): default a :class:`LocalLauncher`
    (``start_timeout_s`` per worker); ``endpoints=[...]`` is short for
    ``launcher=GivenEndpoints([...])``, workers already running (see module doc).
    ``secure``: a keys directory (or :class:`SecureConfig`) to run every link over CurveZMQ.
    ``failover``: replace a dead worker and re-send (default: when the launcher can);
    ``max_attempts``: how often one request may be sent before it fails.
    ``allow_nonfinite``: accept inputs holding NaN or Inf (refused by default: compiled
    max/ReLU kernels drop NaN, so results may differ from onnxruntime's).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, *, timeout_s: float = 30.0,
                 max_in_flight: int = 8, start_timeout_s: float = START_TIMEOUT_S,
                 endpoints: Sequence[Mapping[str, Any]] | None = None,
                 secure: SecureConfig | str | os.PathLike | None = None,
                 launcher: Launcher | None = None, failover: bool | None = None,
                 max_attempts: int = 3, allow_nonfinite: bool = False,
                 dead_after_s: float = 1.0):
        problems = []
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            problems.append(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                or max_in_flight < 1):
            problems.append(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if endpoints is not None and launcher is not None:
            problems.append("give endpoints or a launcher, not both")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            problems.append(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if problems:
            raise PipelineError("; ".join(problems), code="bad_argument")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self._secure = SecureConfig.of(secure, CLIENT)
        self._stage_of_addr: dict[str, int] = {}  # a worker's addresses -> its stage (its key)
        self.timeout_s = float(timeout_s)
        self.max_in_flight = max_in_flight
        self._check_in_flight(self.bundle)
        self.start_timeout_s = float(start_timeout_s)
        self.launcher: Launcher = (GivenEndpoints(endpoints) if endpoints is not None
                                   else launcher or LocalLauncher(start_timeout_s))
        can_respawn = callable(getattr(self.launcher, "respawn", None))
        replicated = getattr(self.launcher, "replicated", False)
        if failover and not (can_respawn or replicated):
            raise PipelineError(f"failover needs a launcher that can replace a worker, or "
                                f"replicas; {type(self.launcher).__name__} has neither",
                                code="bad_argument")
        self.failover = (can_respawn or replicated) if failover is None else bool(failover)
        self.max_attempts = max_attempts
        self.allow_nonfinite = bool(allow_nonfinite)
        self.dead_after_s = float(dead_after_s)
        self._heartbeats: dict[int, Heartbeat] = {}  # workers we do not own, by id(Worker)
        self.failovers: list[Failover] = []  # what failover did, in order
        # ids start at random: long-lived workers (endpoints) that gather parts by id must not
        # take a new client's request 1 for an old one's
        self._ids = itertools.count(secrets.randbelow(1 << 62) + 1)
        self._inflight: dict[int, _InFlight] = {}  # by the caller's request id
        self._by_wire: dict[int, int] = {}  # wire id -> the caller's request id
        self._done: dict[int, tuple[dict[str, np.ndarray], Trace] | PipelineError] = {}
        self._replies = self._reply_gather(self.bundle)  # reply parts by request id
        self._unmatched: deque[wire.Message | WireError] = deque(maxlen=_MAX_UNMATCHED)
        self._dead: str | None = None  # why the pipeline is broken (a worker died)
        self._workers: list[Worker] = []
        self._standby: dict[str, list[Worker]] = {}  # prepared plans: bundle path -> workers
        self._closed = False
        self._ctx = zmq.Context()
        self._control = ControlClient(self._req_socket)
        self._entry: list[tuple[Route, zmq.Socket]] = []  # one PUSH per entry route
        self._recv: zmq.Socket | None = None
        self._recv_from: set[str] = set()  # worker ``out`` addresses the result socket connects
        self._result_addr: str | None = None
        self._auth = None  # the ZAP handler of a secure result socket
        self._finalizer = weakref.finalize(self, self.launcher.release)
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
        return [w.endpoint() for w in self._workers]

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

    def _socket(self, kind: int, server: bool = False, stage: int | None = None) -> zmq.Socket:
        """A socket; when secure a CURVE server (``server``, to bind: the result socket, which
        admits the replying stages' keys only) or a CURVE client of stage ``stage``'s key."""
        s = self._ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if self._secure is not None:
            if server:
                self._secure.server(s, RESULT_DOMAIN)
            else:
                self._secure.client(s, self._secure.stage_key(0 if stage is None else stage))
        return s

    def _req_socket(self, address: str) -> zmq.Socket:
        """A REQ socket for a worker's control address (a CURVE client of that worker's key)."""
        return self._socket(zmq.REQ, stage=self._stage_of_addr.get(address))

    def _result_keys(self, bundle: Bundle) -> dict[str, frozenset[bytes]]:
        """The result socket's ZAP domain: exactly the stages that reply."""
        return {RESULT_DOMAIN: self._secure.senders_keys(
            [i for i, _ in bundle.plan.senders(CLIENT_END)], client=False)}

    @property
    def secure(self) -> SecureConfig | None:
        """The client's keys when links use CurveZMQ, else None."""
        return self._secure

    def _start(self) -> None:
        binds = self.launcher.client_binds
        if binds and self._secure is not None:
            # before the result socket binds
            self._auth = self._secure.authenticator(self._ctx, self._result_keys(self.bundle))
        self._recv = self._socket(zmq.PULL, server=binds)
        self._recv.setsockopt(zmq.MAXMSGSIZE, wire.max_frame_bytes(self.bundle.outputs))
        if binds:
            self._recv.bind("tcp://127.0.0.1:0")
            self._result_addr = self._recv.getsockopt_string(zmq.LAST_ENDPOINT)
        self._workers = self._launch(self.bundle)

    def _launch(self, bundle: Bundle) -> list[Worker]:
        """Workers for ``bundle`` from the launcher, checked, with the data path connected."""
        workers = self._start_workers(bundle)
        self._connect(bundle, workers)
        return workers

    def _start_workers(self, bundle: Bundle) -> list[Worker]:
        """Ready workers for ``bundle`` from the launcher; those someone else started are asked
        for their health first (every problem reported at once)."""
        try:
            workers = self.launcher.start(bundle, self._result_addr, self._secure)
        except LaunchError as exc:
            raise PipelineError(str(exc), stage=exc.stage, code="start_failed") from None
        self._know(workers)
        if not self.launcher.client_binds:
            problems = []
            for w, h in zip(workers, self._ask(workers, control.HEALTH, 2.0)):
                if not h.get("ok"):
                    problems.append(f"{w.describe()}: {h.get('error')}")
                elif h.get("stage") != w.stage:
                    problems.append(f"{w.describe()} runs stage {h.get('stage')}")
            if problems:
                self.launcher.stop(workers, 0.0)
                raise PipelineError("; ".join(problems), code="bad_endpoints")
        return workers

    def _know(self, workers: Sequence[Worker]) -> None:
        for w in workers:
            for addr in (w.data, w.control, w.out):
                if addr:
                    self._stage_of_addr[addr] = w.stage

    def _connect(self, bundle: Bundle, workers: Sequence[Worker]) -> None:
        """Requests go to the entry stages; replies come from the client's bound result socket,
        or (workers that bind ``out``) from every replying worker's ``out``."""
        self._close_entry()
        self._connect_entry(bundle, workers)
        if not self.launcher.client_binds:
            replying = {i for i, _ in bundle.plan.senders(CLIENT_END)}
            for w in workers:
                if w.stage in replying:
                    if self._secure is not None:  # this connection's server: that worker
                        self._recv.curve_serverkey = self._secure.stage_key(w.stage)
                    if w.out not in self._recv_from:  # a stand-by plan's worker may be back
                        self._recv.connect(w.out)
                        self._recv_from.add(w.out)
        for hb in self._heartbeats.values():  # a relaunch replaces them all
            hb.close()
        self._heartbeats = {id(w): Heartbeat(self._req_socket, w.control,
                                             dead_after_s=self.dead_after_s)
                            for w in workers if w.process is None and w.control}

    def _connect_entry(self, bundle: Bundle, workers: Sequence[Worker]) -> None:
        """One PUSH per entry route (a PUSH with several peers would share requests out)."""
        for route in bundle.plan.entry:
            sock = self._socket(zmq.PUSH, stage=route.to)
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
            # one PUSH per entry stage, connected to each of its replicas (round-robin)
            connect_replicas(sock, ",".join(w.data for w in workers if w.stage == route.to))
            self._entry.append((route, sock))

    def _close_entry(self) -> None:
        for _, sock in self._entry:
            sock.close(linger=0)
        self._entry = []

    def _ask(self, workers: Sequence[Worker], cmd: str, timeout_s: float,
             *payload: bytes) -> list[dict[str, Any]]:
        """The same control request to each worker at once; each answer carries its stage."""
        answers = self._control.ask_all([w.control for w in workers], cmd, *payload,
                                        timeout_s=timeout_s)
        return [a if a.get("ok") else {"stage": w.stage, **a} for w, a in zip(workers, answers)]

    def _stop_workers(self, workers: Sequence[Worker] | None = None) -> None:
        """Ask our workers to shut down, wait briefly, let the launcher kill what is left."""
        workers = self._workers if workers is None else workers
        ours = [w for w in workers if w.process is not None and w.process.poll() is None]
        if ours:
            self._ask(ours, control.SHUTDOWN, SHUTDOWN_WAIT_S)
        self.launcher.stop(workers, SHUTDOWN_WAIT_S)

    def _close_sockets(self) -> None:
        self._close_entry()
        for hb in self._heartbeats.values():
            hb.close()
        self._heartbeats = {}
        if self._recv is not None:
            self._recv.close(linger=0)
        self._recv = None
        self._recv_from = set()
        self._result_addr = None
        if self._auth is not None:
            self._auth.stop()  # before ctx.term(); restart() starts a new one
            self._auth = None

    def restart(self) -> None:
        """Stop all workers and launch them again (or reconnect, with ``endpoints``). Requests
        in flight fail with code ``restarted``."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        self._stop_standby()  # they would reply to the result socket being replaced
        self._stop_workers()
        self._fail_all(lambda rid: PipelineError(f"request {rid} was in flight when the pipeline "
                                                 "restarted", request_id=rid, code="restarted"))
        self._close_sockets()
        self._workers = []
        self._dead = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _swappable(self, bundle: Bundle | str | os.PathLike) -> Bundle:
        """``bundle`` loaded and checked: a plan of the running model this launcher can start."""
        self._check_usable()
        new = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self._check_in_flight(new)
        if (new.model_sha256, new.inputs, new.outputs) != (self.bundle.model_sha256,
                                                          self.bundle.inputs, self.bundle.outputs):
            raise PipelineError(f"bundle {new.path} is not a plan of the running model "
                                f"{self.bundle.model} (different model or inputs/outputs)",
                                code="bad_swap")
        if isinstance(self.launcher, GivenEndpoints):
            raise PipelineError("swap launches new workers; for workers given as endpoints start "
                                "the new ones and create a new Pipeline", code="bad_swap")
        off_host = [s.index for s in new.stages if not s.runs_on_host]
        if off_host and isinstance(self.launcher, LocalLauncher):
            raise PipelineError(f"cannot run stage(s) {off_host} of {new.path} on this machine",
                                code="bad_swap")
        return new

    @staticmethod
    def _key(bundle: Bundle) -> str:
        return str(Path(bundle.path).resolve())

    def prepare(self, bundle: Bundle | str | os.PathLike) -> Bundle:
        """Start ``bundle``'s workers now, beside the running ones, and keep them idle: a later
        :meth:`swap` to it is then only a change of routes (starting workers takes seconds, ~5 s
        on a capped device). Prepared workers are not watched; a swap asks them for their health
        first and starts fresh ones if they do not answer. :meth:`close` stops them."""
        new = self._swappable(bundle)
        if self._key(new) not in self._standby:
            if self._auth is not None:
                admit(self._auth, RESULT_DOMAIN, self._result_keys(new)[RESULT_DOMAIN]
                      | self._result_keys(self.bundle)[RESULT_DOMAIN])
            self._standby[self._key(new)] = self._start_workers(new)
        return new

    @property
    def prepared(self) -> tuple[str, ...]:
        """The bundle paths whose workers stand by (:meth:`prepare`, ``swap(keep=True)``)."""
        return tuple(self._standby)

    def swap(self, bundle: Bundle | str | os.PathLike, *, keep: bool = False) -> None:
        """Replace the running stages with ``bundle``'s — a new plan of the same model — without
        losing a request: the new workers start beside the old ones (or were started by
        :meth:`prepare`), the requests in flight finish on the old ones (their results stay
        available), new requests go to the new workers, then the old workers stop (``keep``:
        they stand by instead, so swapping back is instant too). With ``endpoints`` (remote
        workers) start the new workers yourself and create a new Pipeline instead."""
        new = self._swappable(bundle)
        if self._auth is not None:  # the new plan's replying stages may be others
            admit(self._auth, RESULT_DOMAIN, self._result_keys(new)[RESULT_DOMAIN]
                  | self._result_keys(self.bundle)[RESULT_DOMAIN])
        started = self._standby.pop(self._key(new), None)
        if started is not None and not all(h.get("ok") for h in
                                           self._ask(started, control.HEALTH, 1.0)):
            self._stop_workers(started)
            started = None
        if started is None:
            started = self._start_workers(new)
        try:
            while self._inflight:  # requests in flight finish on the old plan
                self._pump(_POLL_S)
                self._check_usable()
        except BaseException:
            self._standby[self._key(new)] = started
            raise
        self._connect(new, started)
        if keep and self._key(self.bundle) != self._key(new):
            self._standby[self._key(self.bundle)] = self._workers
        else:
            self._stop_workers()
        self.bundle, self._workers = new, started
        self._replies = self._reply_gather(new, self._replies)

    def _stop_standby(self) -> None:
        for workers in self._standby.values():
            self._stop_workers(workers)
        self._standby.clear()

    def close(self) -> None:
        """Shut the workers down (SIGKILL those that do not exit), close sockets, remove files."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_standby()
            self._stop_workers()
        finally:
            self._close_sockets()
            self._ctx.term()
            self._finalizer()  # the launcher kills what is left, removes its files; runs once

    # ---------------------------------------------------------------------------------- control
    def health(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """Each worker's answer to the control command ``health`` (asked in parallel), in stage
        order; ``{"ok": False, "stage", "code", "error"}`` for a worker that does not answer in
        time."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        return self._ask(self._workers, control.HEALTH, timeout_s)

    def deploy(self, stages: Sequence[int] | None = None, timeout_s: float = 60.0) -> None:
        """Push stage libraries from this bundle to the workers' control sockets (workers started
        with ``--await-library`` hold only ``manifest.json``: each device receives just the
        layers it runs). Raises PipelineError naming every stage that refused or did not answer."""
        if self._closed:
            raise PipelineError("the pipeline is closed; create a new one", code="closed")
        wanted = range(self.num_stages) if stages is None else stages
        problems = []
        for index in wanted:
            for w in [w for w in self._workers if w.stage == index]:  # every replica
                answer = self._control.ask(w.control, control.DEPLOY,
                                           self.bundle.stages[index].library.read_bytes(),
                                           timeout_s=timeout_s)
                if not answer.get("ok"):
                    problems.append(f"{w.describe()}: {answer.get('error')}")
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
        # an encoded input (a JPEG, bundle schema 5) may be given as its bytes
        inputs = {name: np.frombuffer(a, np.uint8) if isinstance(a, (bytes, bytearray)) else a
                  for name, a in inputs.items()}
        check_tensors(self.bundle.inputs, inputs, f"pipeline input of {self.bundle.model}")
        if not self.allow_nonfinite:
            self._check_finite(inputs)
        while len(self._inflight) >= self.max_in_flight:
            self._pump(_POLL_S)
            self._check_usable()
        rid = next(self._ids)
        kept = ({name: np.array(inputs[name]) for name in inputs} if self.failover else None)
        # our own copy (kept for a re-send) goes out zero-copy; the caller's arrays are copied
        send_ts = self._send_request(rid, rid, kept if kept is not None else inputs,
                                     owned=kept is not None)
        self._inflight[rid] = _InFlight(send_ts, time.monotonic() + self.timeout_s, rid, kept)
        self._by_wire[rid] = rid
        return rid

    def _check_finite(self, inputs: Mapping[str, np.ndarray]) -> None:
        bad = []
        for t in self.bundle.inputs:
            a = np.asarray(inputs[t.name])
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad.append(f"{t.name!r} ({int(np.isnan(a).sum())} NaN, "
                           f"{int(np.isinf(a).sum())} Inf)")
        if bad:
            raise PipelineError(f"input {', '.join(bad)} is not finite; compiled kernels do not "
                                "propagate NaN as onnxruntime does, so the result would be wrong "
                                "without a sign. Clean the input, or pass "
                                "Pipeline(allow_nonfinite=True) to send it anyway (results may "
                                "differ from onnxruntime)", code="nonfinite_input")

    def _send_request(self, rid: int, wire_id: int, inputs: Mapping[str, np.ndarray],
                      owned: bool = False) -> float:
        """Send request ``rid``'s parts to the entry stages under ``wire_id``; the send time."""
        messages = [(route.to, sock, wire.request(wire_id, route.to, [
            (name, np.asarray(inputs[name])) for name in route.tensors]))
            for route, sock in self._entry]
        send_ts = time.time()
        for stage, sock, frames in messages:
            try:
                # copy unless the arrays are ours: the caller may reuse its arrays as soon as
                # submit returns
                sock.send_multipart(frames, copy=not owned)
            except zmq.Again:
                self._replies.fail(wire_id)  # a part already sent to another entry stage is dropped
                raise PipelineError(f"request {rid}: stage {stage} did not accept it within "
                                    f"{self.timeout_s:g} s ("
                                    f"{', '.join(w.describe() for w in self._workers if w.stage == stage)})",
                                    request_id=rid, stage=stage, code="timeout") from None
        return send_ts

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
        pending = self._inflight.pop(rid, None)
        if pending is not None:
            self._by_wire.pop(pending.wire_id, None)
            self._replies.fail(pending.wire_id)  # its answer, when it comes, is dropped
        self._done.pop(rid, None)

    def _finish(self, rid: int, result) -> None:
        """Request ``rid`` is over: its outputs and trace, or a PipelineError."""
        pending = self._inflight.pop(rid, None)
        if pending is not None:
            self._by_wire.pop(pending.wire_id, None)
            self._replies.fail(pending.wire_id)
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
        now = time.monotonic()
        for hb in self._heartbeats.values():
            hb.beat(now)
        silent = [w for w in self._workers
                  if id(w) in self._heartbeats and self._heartbeats[id(w)].dead(now)]
        dead = [(w, w.process.poll()) for w in self._workers
                if w.process is not None and w.process.poll() is not None]
        if not dead and not silent:
            return
        self._drain()  # results that made it out before the death still count
        if silent and self._drop_replicas(silent):
            return
        if dead and self.failover and self._fail_over([w for w, _ in dead]):
            return
        self._dead = "; ".join(
            [f"stage {w.stage} worker (pid {w.pid}) died with {exit_text(rc)}"
             + (f": {w.process.log_tail(500)}" if w.process.log_tail(500) else "")
             for w, rc in dead]
            + [f"{w.describe()} did not answer a heartbeat within {self.dead_after_s:g} s"
               for w in silent])
        dead = dead or [(w, None) for w in silent]
        first = dead[0][0].stage
        self._fail_all(lambda rid: PipelineError(
            f"request {rid} was lost: {self._dead} while it was in flight; call restart()",
            request_id=rid, stage=first, code="worker_died"))

    def _drop_replicas(self, silent: Sequence[Worker]) -> bool:
        """Workers we do not own stopped answering: drop them; when every stage still has a
        replica (and failover is on), send the requests in flight again and go on."""
        gone = {id(w) for w in silent}
        left = [w for w in self._workers if id(w) not in gone]
        if not self.failover or {w.stage for w in left} != set(range(self.num_stages)):
            return False
        t0 = time.monotonic()
        for w in silent:
            self._heartbeats.pop(id(w)).close()
        self._workers = left
        resent = self._resend_all()
        for w in silent:
            self.failovers.append(Failover(w.stage, w.pid, None, time.monotonic() - t0, resent,
                                           "replica"))
        return True

    def _fail_over(self, dead: Sequence[Worker]) -> bool:
        """Replace the dead workers (the stage alone, at its old addresses, so its neighbours
        reconnect by themselves; or, when that fails, every stage) and send every request in
        flight again under a new wire id, so that a late answer of the lost attempt is dropped
        and each request is answered once. True when the pipeline works again."""
        t0 = time.monotonic()
        how, problems = "respawn", []
        try:
            fresh = {w.stage: self.launcher.respawn(self.bundle, w) for w in dead}
            self._workers = [fresh.get(w.stage, w) for w in self._workers]
        except (LaunchError, TvmsplitError) as exc:
            problems.append(str(exc))
            how = "relaunch"
            try:
                self._stop_workers()
                self._workers = self._launch(self.bundle)
            except (LaunchError, TvmsplitError) as exc2:
                problems.append(str(exc2))
                return False
        seconds = time.monotonic() - t0
        resent = self._resend_all()
        by_stage = {w.stage: w for w in self._workers}
        for w in dead:
            self.failovers.append(Failover(w.stage, w.pid, by_stage[w.stage].pid, seconds,
                                           resent, how))
        return True

    def _resend_all(self) -> int:
        """Every request in flight once more under a new wire id (or failed, after
        ``max_attempts``); how many were sent."""
        sent = 0
        for rid, pending in list(self._inflight.items()):
            if pending.inputs is None or pending.attempts >= self.max_attempts:
                self._finish(rid, PipelineError(
                    f"request {rid} was lost with a failed worker {pending.attempts} time(s); "
                    "giving up on it", request_id=rid, code="attempts_exhausted"))
                continue
            self._by_wire.pop(pending.wire_id, None)
            self._replies.fail(pending.wire_id)  # the lost attempt's parts and answer are dropped
            pending.wire_id = next(self._ids)
            pending.attempts += 1
            pending.deadline = time.monotonic() + self.timeout_s
            self._by_wire[pending.wire_id] = rid
            try:  # the trace describes the attempt that is answered
                pending.send_ts = self._send_request(rid, pending.wire_id, pending.inputs,
                                                     owned=True)
            except PipelineError as exc:
                self._finish(rid, exc)
                continue
            sent += 1
        return sent

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
        """Take one message from the result socket; no message makes it raise (a fault here is
        kept as an ``internal_error`` among :meth:`unmatched`)."""
        try:
            self._take(frames, recv_ts)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the receive path
            self._unmatched.append(wire.wire_error("internal_error", f"the client could not take "
                                                   f"a message: {type(exc).__name__}: {exc}"))

    def _take(self, frames: list[Any], recv_ts: float) -> None:
        try:
            msg = wire.decode(frames)
        except WireError as exc:
            self._unmatched.append(exc)
            return
        wire_id = msg.id
        rid = self._by_wire.get(wire_id)
        pending = self._inflight.get(rid) if rid is not None else None
        if pending is None:
            if not self._replies.is_closed(wire_id):
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
            parts = self._replies.add(wire_id, Part(msg.stage, {n: np.array(a) for n, a in msg.tensors},
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
