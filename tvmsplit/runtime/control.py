"""Control protocol v1: the requests a client sends a worker beside the data path. Normative spec.

Every worker (``runtime/worker.py``, a native worker) binds one ZeroMQ REP socket, its *control
address*; a client connects a REQ socket, sends one request, reads one reply. With ``--secure``
the socket is a CURVE server like the data sockets (see security.py). The golden files
``tests/golden/control_*_v1.bin`` pin the bytes (same container as the wire goldens); any
implementation must encode these messages to exactly those frames and parse them back.

Request
    Frame 0: a JSON object, UTF-8, at most ``MAX_HEADER_BYTES`` (64 KiB), written in the wire
    format's canonical form (keys sorted, separators ``,`` ``:``, non-ASCII raw):

    =====  ====  ==============================================================================
    field  type  rule
    =====  ====  ==============================================================================
    cmd    str   ``"health"`` | ``"shutdown"`` | ``"deploy"``
    v      int   protocol version, ``1``; a request without ``v`` is read as version 1
    =====  ====  ==============================================================================

    ``deploy`` is followed by exactly one frame: the stage's compiled library, byte for byte.
    ``health`` and ``shutdown`` have no other frame. Other fields are ignored (reserved).

Reply: one frame, a JSON object in canonical form, always with ``ok`` (bool).
    health    ``{"ok": true, "stage", "pid", "host", "cpu_percent", "mem_available_bytes",
              "rss_bytes", "peak_rss_bytes", "served", "errors", "deployed"}``
              (``served``/``errors``: requests answered / failed since start; ``deployed``: the
              stage library is loaded; ``rss_bytes``/``peak_rss_bytes``: the worker's resident
              memory now and its peak since start, VmRSS/VmHWM; 0 where unknown)
    shutdown  ``{"ok": true}``; the worker then exits with code 0
    deploy    ``{"ok": true, "stage", "sha256"}`` once the library, checked against the
              manifest's size and sha256, is written (atomically) and loaded
    failure   ``{"ok": false, "code", "error"}``: ``code`` machine-readable, ``error`` a sentence
              that names the problem and the fix

Checks on a request, in this order (the first failure decides the code)
    1. frame 0 at most MAX_HEADER_BYTES                            too_large
    2. UTF-8 JSON object (no NaN/Infinity, no duplicate keys)      bad_request
    3. ``v``, when present, is the int 1                           bad_version
    4. ``cmd`` is a str naming a command                           unknown_cmd
    5. the number of frames the command takes                      bad_frames
    Then, for deploy only: size and sha256 equal the manifest's    deploy_mismatch
                           the library is written and loaded       deploy_failed

A client that gets no reply within its timeout reports ``no_answer``; a reply that is not a
JSON object with a bool ``ok`` is ``bad_reply``. REQ sockets are single-use after a timeout
(the REQ/REP lock-step), so :class:`ControlClient` opens one per request.

Adding a command: add it to ``COMMANDS`` with its frame count, answer it in
``StageWorker._control`` (and the native worker), add a golden request/reply pair and a test in
``tests/test_control.py``; bump ``CONTROL_VERSION`` only when an existing message changes.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..errors import TvmsplitError

CONTROL_VERSION = 1
HEALTH, SHUTDOWN, DEPLOY = "health", "shutdown", "deploy"
COMMANDS = {HEALTH: 0, SHUTDOWN: 0, DEPLOY: 1}  # command -> frames after frame 0
MAX_HEADER_BYTES = 64 << 10


class ControlError(TvmsplitError):
    """A control request or reply that breaks the protocol; ``.code`` says which rule."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.detail = message


@dataclass(frozen=True)
class ControlRequest:
    """A parsed request: the command and the frames after frame 0 (deploy: the library)."""

    cmd: str
    payload: tuple[bytes, ...] = ()


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key(s) {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _bytes(frame: Any) -> bytes:
    return bytes(getattr(frame, "buffer", frame))


# ---------------------------------------------------------------------------------- requests
def encode_request(cmd: str, *payload: bytes) -> list[bytes]:
    """The frames of a request: ``encode_request("deploy", library_bytes)``."""
    if cmd not in COMMANDS:
        raise ControlError("unknown_cmd", f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    if len(payload) != COMMANDS[cmd]:
        raise ControlError("bad_frames", f"{cmd!r} takes {COMMANDS[cmd]} frame(s) after the "
                                         f"request, got {len(payload)}")
    return [_canonical({"cmd": cmd, "v": CONTROL_VERSION}), *(bytes(p) for p in payload)]


def parse_request(frames: Sequence[Any]) -> ControlRequest:
    """Check a received request (the order of the spec); raises :class:`ControlError`."""
    head = _bytes(frames[0]) if frames else b""
    if len(head) > MAX_HEADER_BYTES:
        raise ControlError("too_large", f"the request is {len(head)} bytes; at most "
                                        f"{MAX_HEADER_BYTES}")
    req = _json_object(head)
    if req is None:
        raise ControlError("bad_request", 'control requests are JSON objects like '
                                          '{"cmd": "health"}')
    version = req.get("v", CONTROL_VERSION)
    if version != CONTROL_VERSION or isinstance(version, bool):
        raise ControlError("bad_version", f"control protocol version {version!r}; this worker "
                                          f"speaks {CONTROL_VERSION}")
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ControlError("unknown_cmd", f"unknown cmd {cmd!r}; known: {', '.join(COMMANDS)}")
    payload = tuple(_bytes(f) for f in frames[1:])
    if len(payload) != COMMANDS[cmd]:
        what = "the library" if cmd == DEPLOY else "nothing"
        raise ControlError("bad_frames", f"{cmd!r} takes {COMMANDS[cmd]} frame(s) after the JSON "
                                         f"({what}), got {len(payload)}")
    return ControlRequest(cmd, payload)


# ------------------------------------------------------------------------------------ replies
def ok_reply(**fields: Any) -> bytes:
    return _canonical({"ok": True, **fields})


def error_reply(code: str, message: str) -> bytes:
    return _canonical({"ok": False, "code": code, "error": message})


def parse_reply(frames: Sequence[Any]) -> dict[str, Any]:
    """A reply as a dict; raises ``ControlError("bad_reply")`` when it breaks the spec."""
    answer = _json_object(_bytes(frames[0])) if len(frames) == 1 else None
    if answer is None or not isinstance(answer.get("ok"), bool):
        raise ControlError("bad_reply", "a control reply is one frame, a JSON object with a bool "
                                        "'ok'")
    return answer


def failure(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """A failed answer as the client reports it (same shape as a worker's error reply)."""
    return {"ok": False, "code": code, "error": message, **fields}


class ControlClient:
    """Sends control requests. ``make_socket(address)`` returns a fresh REQ socket for that
    worker (linger 0; with CurveZMQ already a client of its key): one per request, closed after
    it."""

    def __init__(self, make_socket: Callable[[str], zmq.Socket]):
        self._make_socket = make_socket

    def ask(self, address: str | None, cmd: str, *payload: bytes,
            timeout_s: float = 2.0) -> dict[str, Any]:
        """One request to ``address``; its reply, or a failure dict (never raises for a peer's
        fault: no address, no answer, a malformed reply)."""
        return self.ask_all([address], cmd, *payload, timeout_s=timeout_s)[0]

    def ask_all(self, addresses: Sequence[str | None], cmd: str, *payload: bytes,
                timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """The same request to every address at once; the replies in order (failure dicts for
        those without an address or an answer within ``timeout_s``)."""
        frames = encode_request(cmd, *payload)
        socks: list[zmq.Socket | None] = []
        try:
            for addr in addresses:
                s = None
                if addr:
                    s = self._make_socket(addr)
                    s.connect(addr)
                    s.send_multipart(frames, copy=False)
                socks.append(s)
            deadline = time.monotonic() + timeout_s
            answers = []
            for addr, s in zip(addresses, socks):
                if s is None:
                    answers.append(failure("no_address", "no control address"))
                elif s.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                    try:
                        answers.append(parse_reply(s.recv_multipart()))
                    except ControlError as exc:
                        answers.append(failure(exc.code, f"{addr}: {exc.detail}"))
                else:
                    answers.append(failure("no_answer", f"no answer on {addr} within "
                                                        f"{timeout_s:g} s"))
            return answers
        finally:
            for s in socks:
                if s is not None:
                    s.close(linger=0)


class Heartbeat:
    """Health requests to one worker, without blocking: ``beat(now)`` sends one every
    ``interval_s`` and reads the answer when it is there; ``dead(now)`` is True once a request
    has gone unanswered for ``dead_after_s`` (a worker that is busy computing answers late, so
    ``dead_after_s`` must exceed the longest stage compute). The socket comes from
    ``make_socket`` like :class:`ControlClient`'s."""

    def __init__(self, make_socket: Callable[[str], zmq.Socket], address: str, *,
                 interval_s: float = 0.25, dead_after_s: float = 1.0):
        self.address, self.interval_s, self.dead_after_s = address, interval_s, dead_after_s
        self._make_socket = make_socket
        self._sock: zmq.Socket | None = None
        self._sent_at: float | None = None   # the unanswered request's send time
        self._last_sent = -float("inf")
        self.last_answer: dict[str, Any] | None = None

    def beat(self, now: float) -> None:
        if self._sock is None:
            self._sock = self._make_socket(self.address)
            self._sock.connect(self.address)
        if self._sent_at is not None:
            if self._sock.poll(0, zmq.POLLIN):
                try:
                    self.last_answer = parse_reply(self._sock.recv_multipart())
                except ControlError:
                    self.last_answer = failure("bad_reply", f"{self.address}: bad reply")
                self._sent_at = None
            return
        if now - self._last_sent >= self.interval_s:
            self._sock.send_multipart(encode_request(HEALTH), copy=False)
            self._sent_at = self._last_sent = now

    def dead(self, now: float) -> bool:
        return self._sent_at is not None and now - self._sent_at > self.dead_after_s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._sent_at = None
