"""Link monitor: estimate a link's bandwidth each way and its RTT over a real ZeroMQ connection.

A probe server (``LinkProbeServer``, or ``python -m tvmsplit.linkmon serve --bind ADDR``) answers
three requests on a REP socket (multipart, first frame the command):
- ``ping``            -> ``pong``                       (RTT)
- ``up``, payload     -> ``ok``                         (client -> server: upload bandwidth)
- ``down``, N (ascii) -> N bytes                        (server -> client: download bandwidth)

``measure_link`` sends pings, then payloads of a few sizes, and takes the rate from the slope of
time over bytes (so fixed costs cancel: small probes work on slow links);
estimates are smoothed with an exponentially weighted moving average across calls
(``LinkMonitor``) so the planner sees a stable value, except that a measurement more than
``jump`` (2x) away from it is taken as a change of link and believed at once.
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


def _rate_bps(times: dict[int, list[float]], rtt: float) -> float:
    """Bits per second from probe times by size: with two sizes or more the slope of the median
    time over the bytes (the RTT and per-message costs cancel, so small probes work too), else
    size / (time - rtt)."""
    sizes = sorted(times)
    med = [statistics.median(times[size]) for size in sizes]
    if len(sizes) >= 2:
        slope = (med[-1] - med[0]) / (sizes[-1] - sizes[0])  # s per byte
        if slope > 0:
            return 8 / slope
    return sizes[-1] * 8 / max(med[-1] - rtt, 1e-6)


class LinkProbe:
    """A client of a probe server over one ZeroMQ connection that stays open (a context
    manager): TCP keeps its congestion window between measurements, so small probes measure
    the link's rate and not a fresh connection's slow start. A probe that times out
    reconnects (a REQ socket that lost its reply cannot be used again)."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0):
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._ctx = zmq.Context()
        self._sock = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def ask(self, *frames: bytes) -> tuple[float, bytes]:
        sock = self._socket()
        start = time.perf_counter()
        try:
            sock.send_multipart(list(frames), copy=False)
            reply = sock.recv(copy=True)
        except zmq.Again:
            sock.close(0)
            self._sock = None
            raise LinkError(f"no answer from the link probe at {self.endpoint} within "
                            f"{self.timeout_s} s; is `python -m tvmsplit.linkmon serve` running "
                            "there?") from None
        return time.perf_counter() - start, reply

    def warm(self, size: int) -> None:
        """Grow a new connection's window before timing anything (a no-op once connected)."""
        if self._sock is None:
            self.ask(b"up", bytes(size))
            self.ask(b"down", str(size).encode())

    def rtt(self, pings: int = 5) -> float:
        """The median of ``pings`` round trips (the first left out: it may pay a reconnect)."""
        rtts = [self.ask(b"ping")[0] for _ in range(max(1, pings))]
        return statistics.median(rtts[1:] if len(rtts) > 1 else rtts)

    def rate(self, direction: str, sizes: tuple[int, ...], rtt: float, rounds: int = 2) -> float:
        """Goodput one way (``"up"``: client -> server, ``"down"``), bits per second: each size
        ``rounds`` times, the slope of the median time over the bytes (:func:`_rate_bps`)."""
        times: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size in sizes:
                if direction == "up":
                    took, reply = self.ask(b"up", bytes(size))
                    if reply != b"ok":
                        raise LinkError(f"the link probe at {self.endpoint} answered "
                                        f"{reply[:40]!r}")
                else:
                    took, reply = self.ask(b"down", str(size).encode())
                    if len(reply) != size:
                        raise LinkError(f"the link probe at {self.endpoint} sent {len(reply)} "
                                        f"bytes, not {size}")
                times[size].append(took)
        return _rate_bps(times, rtt)

    def measure(self, *, sizes: tuple[int, ...] = (256 << 10, 1 << 20), pings: int = 5,
                rounds: int = 2) -> LinkEstimate:
        """One measurement: ``pings`` for the RTT, then each size up, then down, ``rounds``
        times each."""
        self.warm(max(sizes))
        rtt = self.rtt(pings)
        up = self.rate("up", sizes, rtt, rounds)
        return LinkEstimate(up, self.rate("down", sizes, rtt, rounds), rtt, rounds * len(sizes))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._ctx.term()

    def __enter__(self) -> "LinkProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_link(endpoint: str, *, sizes: tuple[int, ...] = (256 << 10, 1 << 20), pings: int = 5,
                 rounds: int = 2, timeout_s: float = 30.0) -> LinkEstimate:
    """One measurement of the link to a probe server at ``endpoint`` (a new connection)."""
    with LinkProbe(endpoint, timeout_s) as probe:
        return probe.measure(sizes=sizes, pings=pings, rounds=rounds)


class LinkMonitor:
    """Smoothed estimates of one link over one connection kept open between updates
    (``close()`` it, or use ``with``).

    Each quantity (uplink, downlink, RTT) is an EWMA (``alpha``: the newest measurement's
    weight), except that a measurement more than ``jump`` times above or below the estimate
    replaces it: a link that changed (Wi-Fi -> 3G is 17x) is believed at once instead of
    after several probe rounds, while ordinary noise (well under 2x) is still averaged out.
    ``update`` publishes the uplink as soon as it is measured, before the downlink, so a
    reader on another thread (``LinkWatcher``) sees a changed uplink half a round earlier."""

    def __init__(self, endpoint: str, alpha: float = 0.3, *, jump: float = 2.0,
                 timeout_s: float = 30.0, sizes: tuple[int, ...] = (256 << 10, 1 << 20),
                 pings: int = 5, rounds: int = 2):
        if not jump > 1.0:
            raise LinkError(f"jump must be > 1 (a factor), got {jump!r}")
        self.endpoint, self.alpha, self.jump = endpoint, alpha, jump
        self.sizes, self.pings, self.rounds = tuple(sizes), pings, rounds
        self.estimate: LinkEstimate | None = None
        self._probe = LinkProbe(endpoint, timeout_s)

    def _smooth(self, old: float, new: float) -> float:
        if old <= 0 or new <= 0 or max(new / old, old / new) > self.jump:
            return new
        return self.alpha * new + (1 - self.alpha) * old

    def update(self) -> LinkEstimate:
        probe, old = self._probe, self.estimate
        prev = old or LinkEstimate(0.0, 0.0, 0.0, 0)   # _smooth takes any value over a 0
        probe.warm(max(self.sizes))
        rtt = probe.rtt(self.pings)
        up = self._smooth(prev.up_bps, probe.rate("up", self.sizes, rtt, self.rounds))
        smooth_rtt = self._smooth(prev.rtt_s, rtt)
        if old is not None:   # publish the uplink now, before the downlink is probed
            self.estimate = LinkEstimate(up, old.down_bps, smooth_rtt, old.samples)
        down = self._smooth(prev.down_bps, probe.rate("down", self.sizes, rtt, self.rounds))
        self.estimate = LinkEstimate(up, down, smooth_rtt,
                                     prev.samples + self.rounds * len(self.sizes))
        return self.estimate

    def close(self) -> None:
        self._probe.close()

    def __enter__(self) -> "LinkMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LinkWatcher:
    """A ``LinkMonitor`` updated by a background thread every ``interval_s`` (a context
    manager), so a re-planner reads the newest estimate without waiting for a probe:
    ``Replanner(..., current_link=watcher.link)``. A failed probe keeps the last estimate and is
    counted in ``errors``."""

    def __init__(self, endpoint: str, *, interval_s: float = 0.5, name: str = "measured",
                 alpha: float = 0.5, **measure_kwargs):
        import threading

        self.monitor = LinkMonitor(endpoint, alpha=alpha, **measure_kwargs)
        self.interval_s, self.name, self.errors = interval_s, name, 0
        self.updated_at: float | None = None
        self._stop = threading.Event()
        self.monitor.update()  # the first estimate, before anyone asks
        self.updated_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="link-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.monitor.update()
                self.updated_at = time.monotonic()
            except LinkError:
                self.errors += 1

    def link(self) -> Link:
        return self.monitor.estimate.to_link(self.name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.monitor.close()

    def __enter__(self) -> "LinkWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
