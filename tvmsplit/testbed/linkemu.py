"""A user-space link emulator: one-way delay and loss between two TUN devices (no netem here).

    python -m tvmsplit.testbed.linkemu --tun-a tsb0a --tun-b tsb0b --delay-ms 25 \\
        [--delay-ba-ms 25] [--loss 0.0] [--ready-file PATH] [--parent-pid PID] \\
        [--settings-file PATH]

It creates the two TUN devices (IFF_TUN | IFF_NO_PI, not persistent: they vanish with this
process), writes ``{"pid", "tun_a", "tun_b"}`` to ``--ready-file``, then forwards every IP packet
read from one device into the other after its direction's delay, dropping a fraction ``--loss``
at random and any packet beyond ``--queue-packets`` waiting in one direction. The caller moves the
devices into their namespaces and gives them addresses; the *rate* is shaped by the kernel
(``tc tbf`` on each device's egress, in the sender's namespace), so this process only delays.

Delay is constant per direction, so packets stay in order and each direction is a FIFO queue.
SIGHUP re-reads ``--settings-file`` (JSON ``{"delay_ms", "delay_ba_ms", "loss"}``, each
optional): the link changes under a running stream (``Testbed.set_link``); packets already
queued keep their due times, and a shorter delay never lets a packet overtake one queued before
it. SIGTERM / SIGINT exit cleanly; so does a vanished ``--parent-pid``.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536
POLL_S = 0.2


def open_tun(name: str) -> int:
    """A non-blocking fd of a new TUN device ``name`` (layer 3, no packet-info header)."""
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _fatal(exc: OSError) -> None:
    """Exit when a device is gone for good (its namespace was deleted); other errors (EAGAIN,
    EIO while a device is down) only drop the packet."""
    if exc.errno in (errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO):
        raise SystemExit(0) from None


class Forwarder:
    """Two TUN fds and a delayed FIFO each way. ``stats`` counts packets per direction."""

    def __init__(self, fd_a: int, fd_b: int, delay_ab_s: float, delay_ba_s: float,
                 loss: float = 0.0, queue_packets: int = 20000, seed: int | None = None):
        self.fds = (fd_a, fd_b)
        self.delay = {fd_a: delay_ab_s, fd_b: delay_ba_s}      # by the fd a packet came from
        self.peer = {fd_a: fd_b, fd_b: fd_a}
        self.queues: dict[int, deque] = {fd_a: deque(), fd_b: deque()}  # by destination fd
        self.loss = loss
        self.queue_packets = queue_packets
        self.rng = random.Random(seed)
        self.stats = {"ab": [0, 0, 0], "ba": [0, 0, 0]}  # forwarded, lost, queue-dropped

    def update(self, delay_ab_s: float | None = None, delay_ba_s: float | None = None,
               loss: float | None = None) -> None:
        """New settings for packets read from now on."""
        fd_a, fd_b = self.fds
        if delay_ab_s is not None:
            self.delay[fd_a] = delay_ab_s
        if delay_ba_s is not None:
            self.delay[fd_b] = delay_ba_s
        if loss is not None:
            self.loss = loss

    def _dir(self, src: int) -> str:
        return "ab" if src == self.fds[0] else "ba"

    def _read(self, src: int, now: float) -> None:
        dst, due = self.peer[src], now + self.delay[src]
        q, st = self.queues[dst], self.stats[self._dir(src)]
        for _ in range(256):  # bounded, so the other direction is not starved
            try:
                pkt = os.read(src, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError as exc:
                _fatal(exc)
                return
            if self.loss and self.rng.random() < self.loss:
                st[1] += 1
            elif len(q) >= self.queue_packets:
                st[2] += 1
            else:
                q.append((due, pkt))

    def _flush(self, now: float) -> None:
        for dst, q in self.queues.items():
            st = self.stats[self._dir(self.peer[dst])]
            while q and q[0][0] <= now:
                _, pkt = q.popleft()
                try:
                    os.write(dst, pkt)
                    st[0] += 1
                except OSError as exc:  # EIO: the device is down (still being configured)
                    _fatal(exc)
                    st[2] += 1

    def serve(self, stop, parent_pid: int | None = None, reload=None) -> None:
        """Forward until ``stop()``; ``reload()`` is called each turn (it applies new settings
        when there are any)."""
        poller = select.epoll()
        for fd in self.fds:
            poller.register(fd, select.EPOLLIN)
        last_parent_check = 0.0
        try:
            while not stop():
                if reload is not None:
                    reload()
                now = time.monotonic()
                heads = [q[0][0] for q in self.queues.values() if q]
                timeout = min([POLL_S, *(h - now for h in heads)])
                events = poller.poll(max(0.0, timeout)) if timeout > 0 else poller.poll(0)
                now = time.monotonic()
                for fd, _ in events:
                    self._read(fd, now)
                self._flush(time.monotonic())
                if parent_pid is not None and now - last_parent_check > POLL_S:
                    last_parent_check = now
                    if os.getppid() != parent_pid:
                        return
        finally:
            poller.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmsplit.testbed.linkemu",
                                description="Delay (and drop) IP packets between two TUN devices.")
    p.add_argument("--tun-a", required=True, help="name of the first TUN device to create")
    p.add_argument("--tun-b", required=True, help="name of the second TUN device to create")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay a -> b")
    p.add_argument("--delay-ba-ms", type=float, default=None, help="b -> a (default: --delay-ms)")
    p.add_argument("--loss", type=float, default=0.0, help="drop probability, each direction")
    p.add_argument("--queue-packets", type=int, default=20000,
                   help="packets waiting per direction before tail drop")
    p.add_argument("--seed", type=int, default=None, help="seed of the loss draws")
    p.add_argument("--ready-file", default=None, help="write {pid, tun_a, tun_b} here when ready")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process is no longer the parent")
    p.add_argument("--settings-file", default=None,
                   help="JSON {delay_ms, delay_ba_ms, loss} re-read on SIGHUP")
    args = p.parse_args(argv)
    stopping, hangups = [], []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(1))
    signal.signal(signal.SIGHUP, lambda *_: hangups.append(1))
    try:
        fd_a = open_tun(args.tun_a)
        fd_b = open_tun(args.tun_b)
    except (OSError, ValueError) as exc:
        print(f"linkemu: cannot create TUN devices: {exc}", file=sys.stderr, flush=True)
        return 2
    delay_ba = args.delay_ms if args.delay_ba_ms is None else args.delay_ba_ms
    fwd = Forwarder(fd_a, fd_b, args.delay_ms / 1e3, delay_ba / 1e3, args.loss,
                    args.queue_packets, args.seed)
    if args.ready_file:
        tmp = f"{args.ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "tun_a": args.tun_a, "tun_b": args.tun_b}, f)
        os.replace(tmp, args.ready_file)

    def reload() -> None:
        if not hangups:
            return
        hangups.clear()
        try:
            with open(args.settings_file) as f:
                new = json.load(f)
            ms = {k: None if new.get(k) is None else float(new[k]) / 1e3
                  for k in ("delay_ms", "delay_ba_ms")}
            fwd.update(ms["delay_ms"], ms["delay_ba_ms"] if ms["delay_ba_ms"] is not None
                       else ms["delay_ms"], None if new.get("loss") is None else float(new["loss"]))
            print(f"linkemu: settings {new}", file=sys.stderr, flush=True)
        except (OSError, TypeError, ValueError, AttributeError) as exc:  # keep the old ones
            print(f"linkemu: cannot apply {args.settings_file}: {exc}", file=sys.stderr, flush=True)

    fwd.serve(lambda: bool(stopping), args.parent_pid, reload if args.settings_file else None)
    print(f"linkemu: stats {json.dumps(fwd.stats)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
