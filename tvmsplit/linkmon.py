"""Link monitor: estimate a link's bandwidth each way and its RTT over a real ZeroMQ connection.

A probe server (``LinkProbeServer``, or ``python -m tvmsplit.linkmon serve --bind ADDR``) answers
three requests on a REP socket (multipart, first frame the command):
- ``ping``            -> ``pong``                       (RTT)
- ``up``, payload     -> ``ok``                         (client -> server: upload bandwidth)
- ``down``, N (ascii) -> N bytes                        (server -> client: download bandwidth)

``measure_link`` sends pings, then payloads of a few sizes, and fits time = rtt + bytes x 8 / bps;
estimates are smoothed with an exponentially weighted moving average across calls
(``LinkMonitor``) so the planner sees a stable value that still follows real changes.
``LinkEstimate.to_link`` turns an estimate into the planner's ``devices.Link``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import zmq

from .devices import Link
from .errors import TvmsplitError


class LinkError(TvmsplitError):
    """The probe peer cannot be reached or answered nonsense."""


@dataclass(frozen=True)
class LinkEstimate:
    """One (or a smoothed) measurement of a link: goodput each way, RTT, probes behind it."""

    up_bps: float
    down_bps: float
    rtt_s: float
    samples: int

    def to_link(self, name: str = "measured") -> Link:
        """The measured link as the planner's :class:`~tvmsplit.devices.Link`."""
        return Link(name, self.up_bps, self.down_bps, self.rtt_s)


class LinkProbeServer:
    """Answers probes on ``bind`` until ``close()``; ``serve_forever`` for a process of its own."""

    def __init__(self, bind: str = "tcp://127.0.0.1:0"):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(bind)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve_forever(self, stop_after_s: float | None = None) -> None:
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        while deadline is None or time.monotonic() < deadline:
            if not self._sock.poll(200):
                continue
            frames = self._sock.recv_multipart(copy=True)
            cmd = frames[0]
            if cmd == b"ping":
                self._sock.send(b"pong")
            elif cmd == b"up":
                self._sock.send(b"ok")
            elif cmd == b"down" and len(frames) == 2 and frames[1].isdigit() and int(frames[1]) <= 1 << 28:
                self._sock.send(bytes(int(frames[1])), copy=False)
            else:
                self._sock.send(b"error: unknown probe")

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> "LinkProbeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_link(endpoint: str, *, sizes: tuple[int, ...] = (256 << 10, 1 << 20), pings: int = 5,
                 rounds: int = 2, timeout_s: float = 30.0) -> LinkEstimate:
    """One measurement of the link to a probe server at ``endpoint``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.connect(endpoint)

    def ask(*frames: bytes) -> tuple[float, bytes]:
        start = time.perf_counter()
        try:
            sock.send_multipart(list(frames), copy=False)
            reply = sock.recv(copy=True)
        except zmq.Again:
            raise LinkError(f"no answer from the link probe at {endpoint} within {timeout_s} s; "
                            "is `python -m tvmsplit.linkmon serve` running there?") from None
        return time.perf_counter() - start, reply

    try:
        rtts = [ask(b"ping")[0] for _ in range(pings)]
        rtt = statistics.median(rtts[1:] if len(rtts) > 1 else rtts)
        up, down = [], []
        for _ in range(rounds):
            for size in sizes:
                payload = bytes(size)
                t_up, reply = ask(b"up", payload)
                if reply != b"ok":
                    raise LinkError(f"the link probe at {endpoint} answered {reply[:40]!r}")
                up.append(size * 8 / max(t_up - rtt, 1e-6))
                t_down, reply = ask(b"down", str(size).encode())
                if len(reply) != size:
                    raise LinkError(f"the link probe at {endpoint} sent {len(reply)} bytes, not {size}")
                down.append(size * 8 / max(t_down - rtt, 1e-6))
        return LinkEstimate(statistics.median(up), statistics.median(down), rtt,
                            rounds * len(sizes))
    finally:
        sock.close(0)
        ctx.term()


class LinkMonitor:
    """EWMA-smoothed estimates of one link (``alpha``: weight of the newest measurement)."""

    def __init__(self, endpoint: str, alpha: float = 0.3, **measure_kwargs):
        self.endpoint, self.alpha, self._kwargs = endpoint, alpha, measure_kwargs
        self.estimate: LinkEstimate | None = None

    def update(self) -> LinkEstimate:
        new = measure_link(self.endpoint, **self._kwargs)
        old = self.estimate
        if old is None:
            self.estimate = new
        else:
            a = self.alpha
            self.estimate = LinkEstimate(a * new.up_bps + (1 - a) * old.up_bps,
                                         a * new.down_bps + (1 - a) * old.down_bps,
                                         a * new.rtt_s + (1 - a) * old.rtt_s,
                                         old.samples + new.samples)
        return self.estimate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tvmsplit.linkmon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="answer link probes")
    serve.add_argument("--bind", default="tcp://127.0.0.1:0")
    serve.add_argument("--stop-after", type=float, default=None, help="seconds, then exit")
    probe = sub.add_parser("measure", help="measure the link to a probe server")
    probe.add_argument("endpoint")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        with LinkProbeServer(args.bind) as server:
            print(server.endpoint, flush=True)
            server.serve_forever(args.stop_after)
        return 0
    est = measure_link(args.endpoint)
    print(f"up {est.up_bps / 1e6:.2f} Mbit/s, down {est.down_bps / 1e6:.2f} Mbit/s, "
          f"rtt {est.rtt_s * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
