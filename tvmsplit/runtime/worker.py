"""A stage worker: one process that runs one stage of a bundle and passes the results on.

    python -m tvmsplit.runtime.worker --bundle DIR --stage N --bind tcp://127.0.0.1:0 \\
        [--next tcp://HOST:PORT ...] [--control tcp://127.0.0.1:0] [--ready-file PATH] \\
        [--secure KEYS_DIR [--next-key worker|client|FILE ...]]    (same as `tvmsplit worker`)

The options are defined once, in launch.py (``WorkerSpec`` and its parser).

Routes. The bundle's plan says where this stage sends its outputs (``StagePlan.sends``: one route
per destination, another stage or the client) and who sends to it (``Plan.senders``). In a chain
each stage has one sender and one destination; in a stage DAG (``routing="direct"``) a stage may
send to several stages (fan-out) and receive from several (fan-in).

Sockets (all ``linger=0``)
    data in   PULL, bound on ``--bind``: every sender's messages for this stage (wire format v1,
              see wire.py).
    data out  one PUSH per route, connected to the ``--next`` address given for it (``--next`` is
              repeated, one per route, in the order of ``sends``). A route to the client may be
              left without an address when it is the last one: its socket is then *bound* on
              ``--out`` (default: an ephemeral port on the ``--bind`` host) and a client connects
              to it.
    control   REP, bound on ``--control`` (default ``tcp://127.0.0.1:0``): the control protocol
              (control.py: health, shutdown, deploy). ``--await-library`` starts a worker whose
              device holds only ``manifest.json`` (ITU-T F.748.20 9.1: deploy only the layers
              this device runs); until a ``deploy`` installs the library, requests get
              ``not_deployed``.

With ``--secure KEYS_DIR`` every socket uses CurveZMQ (see security.py): the worker's keypair is
``KEYS_DIR/worker.key_secret``; its bound sockets (data in, control, a bound data out) are CURVE
servers that admit only the public keys in ``KEYS_DIR/*.key`` (a ZAP handler thread); each
connected data out is a CURVE client of the server whose public key is its ``--next-key``
(``worker``: a stage, the default; ``client``: a Pipeline's result socket; or a path to a ``.key``
file), given once for all ``--next`` addresses or once per address. A peer that is not authorized
is dropped during the handshake: its messages never reach the worker. Without ``--secure`` the
sockets are plain TCP (a warning is printed when an address is not loopback).

One ``zmq.Poller`` watches the control socket and the data path. Outgoing messages are held
until sent: while any is held (a next hop is full or absent) the worker reads no new input, so
back-pressure travels upstream instead of memory growing.

Per message: decode (wire.decode) -> kind "error": passed on to every route, once per request
(a fan-in stage hears it from several branches) -> the header's stage must be this stage
(``wrong_stage``) -> kind must be "request" (``unexpected_kind``) -> with one sender: tensor names
(``unknown_tensor`` / ``missing_tensor``); with several: the names must be one sender's route
(``bad_route``), heard once per request (``duplicate_part``), and the request waits until every
sender's part is there (gather.py; at most 256 requests wait, the oldest beyond that fails with
``incomplete``) -> dtypes and shapes (``shape_mismatch``) -> decode an encoded input, a JPEG
(``bad_input``: bytes that are no JPEG of the input's size, the client's fault; only this worker
decodes, the native one refuses an encoded bundle at start) -> compute (``compute_failed``). Every
failure is sent *forward* as a wire error message carrying the request id (0 when the id cannot
be read from the header), so it reaches the client. A successful stage appends ``{"stage",
"host", "compute_ms", "recv_ts", "send_ts", "bytes_in", "parts": [{"from", "recv_ts",
"bytes"}]}`` to the (merged) trace and sends each route its tensors: a request for the next
stage, or a reply to the client.

A sequential stage (HyPS, ``StagePlan.segments``) takes every request already queued, up to
``SEQUENTIAL_MAX_BATCH``, as one batch (it never waits for more): each segment's library and
weights are loaded once, run on every request of the batch and freed before the next
(``stage.SegmentedRunner``). Its trace entries add ``"load_ms"`` (the request's share of the
loading) and ``"batch"``; ``compute_ms`` is the batch's time divided by its size.

On start the bound endpoints are written to ``--ready-file`` atomically as JSON
``{"data", "control", "out", "pid", "stage"}`` (``out`` is null unless a client route is bound).
SIGTERM / SIGINT / ``shutdown`` exit cleanly with code 0; so does the worker when ``--parent-pid``
is given and that process is gone (no orphans when a client dies without closing). Start-up
failures (bad bundle, stage out of range, a stage for another machine, missing or corrupt keys,
a wrong number of ``--next``) print one line to stderr and exit with code 2.
"""
from __future__ import annotations

import os


import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import zmq  # noqa: E402

from ..encoding import EncodingError  # noqa: E402
from ..errors import TvmsplitError, WireError  # noqa: E402
from ..plan import CLIENT_END, end_name  # noqa: E402
from . import control, wire  # noqa: E402
from .control import MAX_HEADER_BYTES as CONTROL_MAX_HEADER_BYTES  # noqa: E402
from .gather import Gather, GatherError, Part, merge_traces  # noqa: E402
from .launch import WorkerSpec, connect_replicas  # noqa: E402
from .security import CLIENT, CLIENTS, SecureConfig, stage_identity  # noqa: E402

DATA_DOMAIN = "data"  # the ZAP domain of a worker's data socket: its senders' keys
from .stage import check_tensors  # noqa: E402

POLL_MS = 200           # how often the loop wakes up to check the stop flag and the parent
# A sequential stage takes up to this many queued requests per batch (each segment is loaded
# once per batch); it never waits for more than are already queued.
SEQUENTIAL_MAX_BATCH = 8


class WorkerStartError(TvmsplitError):
    """The worker cannot start: bad bundle, stage index, or a stage built for another machine."""


def _peek_id(frames: Sequence[Any]) -> int:
    """The request id from a header that failed validation, or 0 when it cannot be read."""
    try:
        view = memoryview(getattr(frames[0], "buffer", frames[0]))
        if view.nbytes > wire.MAX_HEADER_BYTES:
            return 0
        head = json.loads(bytes(view))
        rid = head.get("id") if isinstance(head, dict) else None
        return rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63 else 0
    except Exception:  # noqa: BLE001 - anything unreadable means "unknown id"
        return 0


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(len(f) for f in frames)


class StageWorker:
    """Sockets and a loaded stage; :meth:`serve` runs the loop. A context manager."""

    def __init__(self, bundle_dir: str | os.PathLike, stage: int, bind: str,
                 next_addr: str | Sequence[str] | None = None,
                 control: str | None = "tcp://127.0.0.1:0", out: str | None = None,
                 parent_pid: int | None = None,
                 secure: SecureConfig | str | os.PathLike | None = None,
                 next_key: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 await_library: bool = False):
        from ..bundle import Bundle
        from .stage import runner_for

        next_addrs = [next_addr] if isinstance(next_addr, str) else list(next_addr or [])
        next_keys = ([] if next_key is None else [next_key]
                     if isinstance(next_key, (str, os.PathLike)) else list(next_key))
        # keys first: a missing key fails fast, before the stage library is loaded. The worker's
        # identity: stage<i> when that key exists, else the shared "worker" (security.py)
        if secure is not None and not isinstance(secure, SecureConfig):
            secure = SecureConfig(secure, stage_identity(secure, stage))
        self.secure = secure
        if next_keys and len(next_keys) not in (1, len(next_addrs)) and self.secure is not None:
            raise WorkerStartError(f"{len(next_keys)} --next-key for {len(next_addrs)} --next; "
                                   "give one for all or one per --next")
        next_keys = next_keys * len(next_addrs) if len(next_keys) == 1 else next_keys
        explicit = ([self.secure.peer_key(k) for k in next_keys] if self.secure and next_keys
                    else None)
        # validates the manifest and this stage's library only: a device holds just its own stage
        # (with await_library the library comes later, pushed over the control socket)
        bundle = Bundle.load(bundle_dir, stages=[] if await_library or stage < 0 else [stage])
        if not 0 <= stage < len(bundle.stages):
            raise WorkerStartError(f"stage {stage} is out of range: bundle {str(bundle_dir)!r} has "
                                   f"stages 0..{len(bundle.stages) - 1}")
        self.bundle_stage = bundle.stages[stage]
        routes = self.bundle_stage.plan.sends
        bind_last = (len(next_addrs) == len(routes) - 1 and routes[-1].to == CLIENT_END)
        if len(next_addrs) != len(routes) and not bind_last:
            raise WorkerStartError(
                f"stage {stage} sends to {', '.join(end_name(r.to) for r in routes)}: give one "
                f"--next per destination in that order (a last route to the client may be left "
                f"out to bind it on --out); got {len(next_addrs)} --next")
        if not self.bundle_stage.runs_on_host:
            t = self.bundle_stage.target
            raise WorkerStartError(f"stage {stage} is built for {t.get('name')} ({t.get('arch')}, "
                                   f"{t['target']['kind']}); run its worker on such a device")
        self.plan = self.bundle_stage.plan
        self.index = stage
        senders = bundle.plan.senders(stage)
        self.gather = Gather(senders, f"stage {stage}") if len(senders) > 1 else None
        # the server key of each --next: given, or the destination's own (the client's for the
        # route to the client)
        server_keys = explicit or [
            None if self.secure is None else self.secure.peer_key(CLIENT) if r.to == CLIENT_END
            else self.secure.stage_key(r.to) for r in routes][:len(next_addrs)]
        self.parent_pid = parent_pid
        self.host = socket.gethostname()
        self.served = 0
        self.errors = 0
        self._input_names = [t.name for t in self.plan.inputs]
        self._senders_one = senders[0][0] if senders else CLIENT_END
        self.sequential = bool(self.bundle_stage.segments)
        if self.sequential and await_library:
            raise WorkerStartError(f"stage {stage} is sequential (HyPS segments, each with its "
                                   "weights file): --await-library cannot push it; copy the "
                                   "bundle's segment files to the device instead")
        self._deferred: list | None = None  # handle_batch collects ready requests here
        self.runner = None if await_library else runner_for(self.bundle_stage)
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.auth = None
        try:
            if self.secure is not None:  # the ZAP handler must run before anything is bound
                # the data socket admits exactly this stage's senders: the clients for an entry
                # stage, and each sending stage's key
                self.auth = self.secure.authenticator(self.ctx, {DATA_DOMAIN: self.secure.senders_keys(
                    [src for src, _ in senders if src != CLIENT_END],
                    client=any(src == CLIENT_END for src, _ in senders))})
            self.data_in = self._socket(zmq.PULL, server=DATA_DOMAIN)
            # no frame larger than the header limit or this stage's largest input: a bigger one
            # disconnects its sender before it is held in memory
            self.data_in.setsockopt(zmq.MAXMSGSIZE, wire.max_frame_bytes(self.plan.inputs))
            self.data_in.bind(bind)
            self.outs: list[zmq.Socket] = []  # one per route, in the order of plan.sends
            for addr, key in zip(next_addrs, server_keys):
                self.outs.append(self._socket(zmq.PUSH, server_key=key))
                connect_replicas(self.outs[-1], addr)
            self.out_bound = bind_last
            if bind_last:
                self.outs.append(self._socket(zmq.PUSH, server=CLIENTS))
                self.outs[-1].bind(out or _ephemeral_like(bind))
            self.control = None
            if control:
                self.control = self._socket(zmq.REP, server=CLIENTS)
                # no frame larger than the deploy library: a bigger one drops the peer unread
                self.control.setsockopt(zmq.MAXMSGSIZE, max(self.bundle_stage.library_bytes,
                                                            CONTROL_MAX_HEADER_BYTES))
                self.control.bind(control)
        except zmq.ZMQError as exc:
            self.close()
            raise WorkerStartError(f"stage {stage}: cannot open sockets ({exc}); check --bind, "
                                   "--next, --control and --out") from None
        except BaseException:
            self.close()
            raise
        _prime_cpu_percent()

    def _socket(self, kind: int, server: str | None = None, server_key: bytes | None = None
                ) -> zmq.Socket:
        """A socket; with --secure a CURVE server admitting the role ``server`` (a ZAP domain,
        security.py) or a CURVE client of ``server_key``."""
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        self.sockets.append(s)
        if self.secure is not None:
            if server:
                self.secure.server(s, server)
            else:
                self.secure.client(s, server_key)
        return s

    @property
    def endpoints(self) -> dict[str, Any]:
        last = lambda s: s.getsockopt_string(zmq.LAST_ENDPOINT)  # noqa: E731
        return {"data": last(self.data_in), "control": last(self.control) if self.control else None,
                "out": last(self.outs[-1]) if self.out_bound else None,
                "pid": os.getpid(), "stage": self.index}

    def __enter__(self) -> "StageWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in getattr(self, "sockets", []):
            s.close(linger=0)
        self.sockets = []
        if getattr(self, "auth", None) is not None:
            self.auth.stop()  # before ctx.term(), which would wait for its sockets
            self.auth = None
        if getattr(self, "ctx", None) is not None:
            self.ctx.term()
            self.ctx = None
        if getattr(self, "runner", None) is not None:
            self.runner.close()
            self.runner = None

    # ------------------------------------------------------------------------------ one message
    def handle(self, frames: Sequence[Any]) -> list[tuple[zmq.Socket, list[Any]]]:
        """What to send for one received message: ``(socket, frames)`` pairs, none while a
        request still waits for other senders' parts. No message makes it raise: a fault of the
        worker itself is answered with ``internal_error``."""
        try:
            return self._handle(frames)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the receive path
            return self._error(_peek_id(frames), "internal_error",
                               f"stage {self.index}: {type(exc).__name__}: {exc}")

    def _handle(self, frames: Sequence[Any]) -> list[tuple[zmq.Socket, list[Any]]]:
        recv_ts = time.time()
        try:
            msg = wire.decode(frames)
        except WireError as exc:
            text = str(exc).removeprefix(f"[{exc.code}] ")
            return self._error(_peek_id(frames), exc.code, text)
        if msg.kind == "error":  # someone upstream failed: pass it on, once per request
            if self.gather is not None and not self.gather.fail(msg.id):
                return []
            header = bytes(memoryview(getattr(frames[0], "buffer", frames[0])))
            return [(sock, [header]) for sock in self.outs]
        if msg.stage != self.index:
            return self._error(msg.id, "wrong_stage", f"message for stage {msg.stage} arrived at "
                               f"stage {self.index}", msg.trace)
        if msg.kind != "request":
            return self._error(msg.id, "unexpected_kind", f"stage {self.index} takes requests, "
                               f"got a {msg.kind!r}", msg.trace)
        if self.runner is None:
            return self._error(msg.id, "not_deployed", f"stage {self.index} has no library yet; "
                               "push it with the control command 'deploy'", msg.trace)
        names = [n for n, _ in msg.tensors]
        if self.gather is None:
            extra = [n for n in names if n not in self._input_names]
            if extra:
                return self._error(msg.id, "unknown_tensor", f"unexpected tensor(s) {extra}; stage "
                                   f"{self.index} expects {sorted(self._input_names)}", msg.trace)
            absent = sorted(set(self._input_names) - set(names))
            if absent:
                return self._error(msg.id, "missing_tensor", f"missing tensor(s) {absent}; stage "
                                   f"{self.index} expects {sorted(self._input_names)}", msg.trace)
            source = self._senders_one
            parts = [Part(source, msg.arrays(), msg.trace, recv_ts, _nbytes(frames))]
        else:
            try:
                part = Part(self.gather.source_of(names), msg.arrays(), msg.trace, recv_ts,
                            _nbytes(frames))
                parts = self.gather.add(msg.id, part)
            except GatherError as exc:
                return self._error(msg.id, exc.code, str(exc), msg.trace)
            out = [m for rid in self.gather.overflow() for m in self._error(
                rid, "incomplete", f"stage {self.index} gave up request {rid}: more than "
                f"{self.gather.max_open} requests were waiting for parts")]
            if parts is None:
                return out
            return out + self._run(msg.id, parts)
        return self._run(msg.id, parts)

    def _run(self, rid: int, parts: list[Part]) -> list[tuple[zmq.Socket, list[Any]]]:
        """Compute the stage on the gathered parts and address the results to every route (in
        ``handle_batch``: set the request aside for the batch)."""
        if self._deferred is not None:
            self._deferred.append((rid, parts))
            return []
        return self._run_batch([(rid, parts)])

    def handle_batch(self, batch: Sequence[Sequence[Any]]) -> list[tuple[zmq.Socket, list[Any]]]:
        """``handle`` for several messages at once: every request that is ready to compute runs in
        one ``runner.run_batch`` (a sequential stage loads each segment once per batch)."""
        self._deferred = []
        try:
            out = [m for frames in batch for m in self.handle(frames)]
        finally:
            ready, self._deferred = self._deferred, None
        try:
            return out + (self._run_batch(ready) if ready else [])
        except Exception as exc:  # noqa: BLE001 - as in handle: no message makes it raise
            return out + [m for rid, _ in ready for m in self._error(
                rid, "internal_error", f"stage {self.index}: {type(exc).__name__}: {exc}")]

    def _run_batch(self, ready: list[tuple[int, list[Part]]]) -> list[tuple[zmq.Socket, list[Any]]]:
        out, valid = [], []
        for rid, parts in ready:
            trace = merge_traces(parts) if len(parts) > 1 else parts[0].trace
            tensors = {name: a for part in parts for name, a in part.tensors.items()}
            try:
                check_tensors(self.plan.inputs, tensors, f"stage {self.index}")
            except TvmsplitError as exc:
                out += self._error(rid, "shape_mismatch", str(exc), trace)
                continue
            valid.append((rid, parts, trace, tensors))
        if not valid:
            return out
        t0 = time.perf_counter()
        try:
            if len(valid) == 1:
                results = [self.runner.run(valid[0][3])]
            else:
                results = self.runner.run_batch([v[3] for v in valid])
        except EncodingError as exc:  # the client's encoded input does not decode: its fault
            if len(valid) > 1:  # the batch decodes every request before computing any: run each
                return out + [m for rid, parts, _, _ in valid  # alone, so only the bad ones fail
                              for m in self._run_batch([(rid, parts)])]
            rid, _, trace, _ = valid[0]
            return out + self._error(rid, "bad_input", f"stage {self.index}: {exc}", trace)
        except Exception as exc:  # noqa: BLE001 - a TVM failure must not kill the worker
            return out + [m for rid, _, trace, _ in valid for m in self._error(
                rid, "compute_failed", f"stage {self.index}: {type(exc).__name__}: {exc}", trace)]
        compute_ms = (time.perf_counter() - t0) * 1e3 / len(valid)
        extra = {}
        if self.sequential:  # what the batch spent loading segments, per request
            extra = {"load_ms": self.runner.last_load_ms / len(valid), "batch": len(valid)}
        for (rid, parts, trace, _), outputs in zip(valid, results):
            out += self._address(rid, parts, trace, outputs, compute_ms, extra)
        return out

    def _address(self, rid: int, parts: list[Part], trace, outputs, compute_ms: float,
                 extra: dict[str, Any]) -> list[tuple[zmq.Socket, list[Any]]]:
        """The messages carrying one request's results, with this stage's trace entry."""
        entry = {"stage": self.index, "host": self.host, "compute_ms": compute_ms, **extra,
                 "recv_ts": max(p.recv_ts for p in parts),
                 "bytes_in": sum(p.nbytes for p in parts),
                 "parts": [{"from": p.source, "recv_ts": p.recv_ts, "bytes": p.nbytes}
                           for p in parts],
                 "send_ts": time.time()}
        trace = (*trace, entry)
        sends = []
        try:
            for route, sock in zip(self.plan.sends, self.outs):
                tensors = [(name, outputs[name]) for name in route.tensors]
                if route.to == CLIENT_END:
                    sends.append((sock, wire.reply(rid, self.index, tensors, trace)))
                else:
                    sends.append((sock, wire.request(rid, route.to, tensors, trace)))
        except WireError as exc:
            return self._error(rid, exc.code, f"stage {self.index} cannot encode its outputs: "
                               f"{exc}", trace)
        self.served += 1
        return sends

    def _error(self, rid: int, code: str, message: str, trace=()) -> list[tuple[zmq.Socket, list[Any]]]:
        """The error message for request ``rid``, addressed to every route."""
        self.errors += 1
        if self.gather is not None:
            self.gather.fail(rid)
        frames = wire.error_reply(rid, self.index, code, message, trace)  # always fits
        return [(sock, frames) for sock in self.outs]

    # ---------------------------------------------------------------------------------- control
    def _control(self) -> bool:
        """Answer one control request (control.py, the protocol); True when the worker must stop."""
        frames = self.control.recv_multipart()
        stop = False
        try:
            req = control.parse_request(frames)
        except control.ControlError as exc:
            answer = control.error_reply(exc.code, exc.detail)
        else:
            if req.cmd == control.HEALTH:
                answer = control.ok_reply(**self._health())
            elif req.cmd == control.DEPLOY:
                answer = self._deploy(req.payload[0])
            else:  # control.SHUTDOWN
                answer, stop = control.ok_reply(), True
        self.control.send(answer)
        return stop

    def _health(self) -> dict[str, Any]:
        import psutil

        return {"stage": self.index, "pid": os.getpid(), "host": self.host,
                "cpu_percent": psutil.cpu_percent(None),
                "mem_available_bytes": psutil.virtual_memory().available,
                **process_memory(),
                "served": self.served, "errors": self.errors, "deployed": self.runner is not None}

    def _deploy(self, data: bytes) -> bytes:
        """Install this stage's library, pushed by the client ("deploy only the layers this
        device runs"): it must match the manifest's size and sha256; written atomically."""
        import hashlib

        from .stage import runner_for

        stage = self.bundle_stage
        if self.sequential:
            return control.error_reply(
                "deploy_failed", f"stage {self.index} is sequential (HyPS segments with weights "
                "files); deploy pushes one library: copy the bundle's segment files instead")
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != stage.library_bytes or digest != stage.sha256:
            return control.error_reply(
                "deploy_mismatch", f"library for stage {self.index} does not match the manifest "
                f"(got {len(data)} bytes, sha256 {digest[:12]}; expected {stage.library_bytes}, "
                f"{stage.sha256[:12]}); push the library of this bundle's stage {self.index}")
        tmp = stage.library.with_name(f".{stage.library.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, stage.library)
            runner = runner_for(stage)  # a TVM library, or a fallback stage's ONNX file
        except Exception as exc:  # noqa: BLE001 - a bad write or load is an answer, not a crash
            tmp.unlink(missing_ok=True)
            return control.error_reply("deploy_failed", f"cannot install the library: "
                                                        f"{type(exc).__name__}: {exc}")
        if self.runner is not None:
            self.runner.close()
        self.runner = runner
        return control.ok_reply(stage=self.index, sha256=digest)

    # ------------------------------------------------------------------------------------- loop
    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set, a shutdown request arrives or the parent process is gone."""
        stop = stop or threading.Event()
        poller = zmq.Poller()
        if self.control is not None:
            poller.register(self.control, zmq.POLLIN)
        pending: list[tuple[zmq.Socket, list[Any]]] = []
        while not stop.is_set():
            poller.register(self.data_in, 0 if pending else zmq.POLLIN)
            waiting = {sock for sock, _ in pending}
            for sock in self.outs:
                poller.register(sock, zmq.POLLOUT if sock in waiting else 0)
            events = dict(poller.poll(POLL_MS))
            if self.control is not None and events.get(self.control, 0) & zmq.POLLIN:
                if self._control():
                    return
            if pending:
                if any(events.get(sock, 0) & zmq.POLLOUT for sock in waiting):
                    pending = self._send(pending)
            elif events.get(self.data_in, 0) & zmq.POLLIN:
                frames = self.data_in.recv_multipart(copy=False)
                if self.sequential:  # take what is queued: one load of each segment per batch
                    batch = [frames]
                    while len(batch) < SEQUENTIAL_MAX_BATCH:
                        try:
                            batch.append(self.data_in.recv_multipart(zmq.NOBLOCK, copy=False))
                        except zmq.Again:
                            break
                    pending = self._send(self.handle_batch(batch))
                else:
                    pending = self._send(self.handle(frames))
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                return  # the client that started us is gone

    @staticmethod
    def _send(messages: list[tuple[zmq.Socket, list[Any]]]) -> list[tuple[zmq.Socket, list[Any]]]:
        """Send without blocking; the messages a next hop cannot take yet (in order per socket)."""
        held, blocked = [], set()
        for sock, frames in messages:
            if sock not in blocked:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    continue
                except zmq.Again:
                    blocked.add(sock)
            held.append((sock, frames))
        return held


def process_memory() -> dict[str, int]:
    """This process's resident memory now and its peak since it started (bytes), for
    ``health``: VmRSS and VmHWM of /proc/self/status (not getrusage's ru_maxrss, which a process
    inherits across fork + exec from its parent), 0 where /proc is not there."""
    use = {"rss_bytes": 0, "peak_rss_bytes": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):  # "  123456 kB"
                    use["rss_bytes" if key == "VmRSS" else "peak_rss_bytes"] = \
                        int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return use


def _prime_cpu_percent() -> None:
    """The first ``cpu_percent(None)`` call only starts the measurement; make it now."""
    try:
        import psutil

        psutil.cpu_percent(None)
    except Exception:  # noqa: BLE001 - health still works without the priming call
        pass


def _ephemeral_like(bind: str) -> str:
    """``tcp://HOST:0`` on the host of ``bind`` (for the bound output socket)."""
    if bind.startswith("tcp://") and ":" in bind[6:]:
        return bind[: bind.rindex(":")] + ":0"
    return "tcp://127.0.0.1:0"


def write_ready_file(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def _loopback(addr: str | None) -> bool:
    """True for addresses only this machine can reach (loopback TCP, ipc, inproc)."""
    if not addr or not addr.startswith("tcp://"):
        return True
    host = addr[6:].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run a worker until shutdown; returns the process exit code (0 clean, 2 start failure).
    The options are launch.py's (``WorkerSpec``): `tvmsplit worker` and ``python -m`` share them."""
    spec = WorkerSpec.from_argv(argv, **({"prog": prog} if prog else {}))
    # Runtime-only TVM (libtvm_runtime.so, no compiler): smaller and about twice as fast to
    # import; StageRunner needs only tvm.runtime.load_module and the VM, which it has. Set here,
    # not at import, so that importing this module (the CLI's `worker --help`) changes nothing
    # for a process that later loads the compiler.
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    stop = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            worker = StageWorker(spec.bundle, spec.stage, spec.bind, spec.next, spec.control,
                                 spec.out, spec.parent_pid, secure=spec.secure,
                                 next_key=spec.next_key or None,
                                 await_library=spec.await_library)
        except TvmsplitError as exc:
            print(f"tvmsplit worker: {exc}", file=sys.stderr, flush=True)
            return 2
        except Exception as exc:  # noqa: BLE001 - e.g. TVM cannot load the library
            print(f"tvmsplit worker: stage {spec.stage} failed to start: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr, flush=True)
            return 2
        with worker:
            exposed = [a for a in [*worker.endpoints.values(), *spec.next]
                       if isinstance(a, str) and not _loopback(a)]
            if worker.secure is None and exposed:
                print(f"tvmsplit worker: warning: --secure is off on non-loopback address(es) "
                      f"{', '.join(exposed)}: anyone who can reach them can send requests or shut "
                      "this worker down, and data travels unencrypted; use --secure KEYS_DIR",
                      file=sys.stderr, flush=True)
            if spec.ready_file:
                try:
                    write_ready_file(spec.ready_file, worker.endpoints)
                except OSError as exc:
                    print(f"tvmsplit worker: cannot write --ready-file: {exc}", file=sys.stderr,
                          flush=True)
                    return 2
            worker.serve(stop)
        return 0
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
