"""Transfer-time probe: raw ZeroMQ PUSH/PULL between the testbed's namespaces.

    python -m tvmsplit.testbed.probe recv --ip 10.77.1.2 --ready-file F
    python -m tvmsplit.testbed.probe send --data tcp://... --ack tcp://... --sizes 1000000 \\
        [--repeat 3] [--warmup 1000000]

The receiver binds a PULL socket (data) and a PUSH socket (acks) on ``--ip``. The sender connects
to both and sends one message ``[json header, payload]`` at a time, stamping ``send_ts`` just
before it; the receiver stamps ``recv_ts`` when the whole message has arrived and acks it. Both
run on one machine, so ``recv_ts - send_ts`` is the one-way transfer time (same clock). A warm-up
message first opens the TCP window (the namespaces keep it open: tcp_slow_start_after_idle=0).
The sender prints a JSON list ``[{"size", "repeat", "transfer_s", "rtt_s"}, ...]``.
:func:`measure` runs both ends in a :class:`~tvmsplit.testbed.Testbed`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq


def _recv(args) -> int:
    ctx = zmq.Context()
    data, ack = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (data, ack):
        s.setsockopt(zmq.LINGER, 0)
    data.bind(f"tcp://{args.ip}:0")
    ack.bind(f"tcp://{args.ip}:0")
    info = {"data": data.getsockopt_string(zmq.LAST_ENDPOINT),
            "ack": ack.getsockopt_string(zmq.LAST_ENDPOINT), "pid": os.getpid()}
    tmp = f"{args.ready_file}.{os.getpid()}.tmp"
    Path(tmp).write_text(json.dumps(info))
    os.replace(tmp, args.ready_file)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        if not data.poll(200):
            continue
        frames = data.recv_multipart(copy=False)
        recv_ts = time.time()
        head = json.loads(bytes(frames[0].buffer))
        if head.get("stop"):
            break
        ack.send(json.dumps({"id": head["id"], "recv_ts": recv_ts,
                             "nbytes": sum(len(f) for f in frames[1:])}).encode())
    for s in (data, ack):
        s.close(linger=0)
    ctx.term()
    return 0


def _send(args) -> int:
    ctx = zmq.Context()
    data, ack = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (data, ack):
        s.setsockopt(zmq.LINGER, 0)
    data.connect(args.data)
    ack.connect(args.ack)
    results, rid = [], 0

    def one(size: int, timeout_s: float) -> tuple[float, float]:
        nonlocal rid
        rid += 1
        payload = bytes(size)
        t0 = time.monotonic()
        send_ts = time.time()
        data.send_multipart([json.dumps({"id": rid, "size": size}).encode(), payload], copy=False)
        if not ack.poll(int(timeout_s * 1000)):
            raise SystemExit(f"probe: no ack for {size} bytes within {timeout_s:g} s")
        answer = json.loads(ack.recv())
        rtt = time.monotonic() - t0
        if answer["id"] != rid or answer["nbytes"] != size:
            raise SystemExit(f"probe: bad ack {answer} for message {rid} of {size} bytes")
        return answer["recv_ts"] - send_ts, rtt

    if args.warmup:
        one(args.warmup, args.timeout)
    for size in args.sizes:
        for r in range(args.repeat):
            transfer, rtt = one(size, args.timeout)
            results.append({"size": size, "repeat": r, "transfer_s": transfer, "rtt_s": rtt})
    data.send_multipart([json.dumps({"stop": True}).encode()])
    time.sleep(0.2)
    print(json.dumps(results), flush=True)
    for s in (data, ack):
        s.close(linger=0)
    ctx.term()
    return 0


def measure(tb, direction: str, sizes: Sequence[int], repeat: int = 3,
            warmup: int = 1_000_000, timeout_s: float = 300.0) -> list[dict]:
    """Transfer times over ``tb``'s access link, ``up`` (device -> edge) or ``down``; each result
    also carries the profile's ``expected_s``. Both ends run the host's Python in the namespaces
    (the link is measured, not the emulated CPU)."""
    from .profiles import TestbedError

    if direction not in ("up", "down"):
        raise TestbedError(f"direction must be 'up' or 'down', got {direction!r}")
    rx_where, tx_where = ("edge", "device") if direction == "up" else ("device", "edge")
    # the device's access-link address, so that the traffic takes the shaped link
    rx_ip = tb.edge_ip if rx_where == "edge" else tb.lay.device_link_ip
    ready = tb.dir / f"probe-{direction}-{time.monotonic_ns()}.ready.json"
    me = [sys.executable, "-m", "tvmsplit.testbed.probe"]
    rx = tb.spawn(rx_where, [*me, "recv", "--ip", rx_ip, "--ready-file", str(ready)],
                  role="probe-recv")
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if rx.poll() is not None or time.monotonic() > deadline:
                raise TestbedError("the probe receiver did not start")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        tx = tb.spawn(tx_where, [*me, "send", "--data", info["data"], "--ack", info["ack"],
                                 "--sizes", ",".join(map(str, sizes)), "--repeat", str(repeat),
                                 "--warmup", str(warmup), "--timeout", str(timeout_s)],
                      role="probe-send", stdout=subprocess.PIPE)
        try:
            out, _ = tx.communicate(timeout=timeout_s * (len(sizes) * repeat + 1))
        except subprocess.TimeoutExpired:
            raise TestbedError("the probe sender did not finish in time") from None
        finally:
            tb.stop(tx)
        if tx.returncode != 0:
            raise TestbedError(f"the probe sender failed with code {tx.returncode}")
        results = json.loads(out)
    finally:
        tb.stop(rx)
    for r in results:
        r["direction"] = direction
        r["expected_s"] = tb.profile.transfer_s(r["size"], direction)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmsplit.testbed.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--ip", required=True)
    r.add_argument("--ready-file", required=True)
    s = sub.add_parser("send")
    s.add_argument("--data", required=True)
    s.add_argument("--ack", required=True)
    s.add_argument("--sizes", required=True, type=lambda v: [int(x) for x in v.split(",")])
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1_000_000)
    s.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    return _recv(args) if args.cmd == "recv" else _send(args)


if __name__ == "__main__":
    sys.exit(main())
