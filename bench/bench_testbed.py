#!/usr/bin/env python3
"""Testbed benchmark: shaped-link transfer times per profile, set-up time, qemu vs native compute.

    sudo python bench/bench_testbed.py [--out bench/results/testbed.md] [--quick]
        [--profiles 3g,4g,wifi] [--sizes 1000000,10000000] [--no-scratch] [--no-compute]

(a) Transfer: for each profile, a raw ZeroMQ PUSH/PULL transfer of 1 MB and 10 MB between the
    device and the edge namespaces, up (device -> edge) and down, after a 1 MB warm-up; measured
    one-way (receiver's clock minus sender's, one machine) vs expected ``bytes*8/goodput + delay``.
    Both ends run the host's Python: this measures the link, not the emulated CPU. One extra row
    set for 4G with delay 0 (veth + tbf only, no user-space emulator).
(b) Set-up: ``Testbed("4g").up()`` until the device's TVM RPC server answers, from scratch (a
    fresh sysroot cache, pip without its cache: mmdebstrap downloads, pip downloads, byte-compile,
    qemu import check) and cached (the same again), with the sysroot's own breakdown.
(c) Compute: one conv stage (zoo chain at 48x48, first layer) built for rpi4b, timed on the qemu
    device over TVM RPC, vs the same stage built for x86_64 run natively: the emulation factor.

Prints markdown tables and writes them to ``--out``. Needs root, iproute2, qemu-user-static,
mmdebstrap, g++-aarch64-linux-gnu and the network (for the from-scratch build).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tvmsplit.devices import LINK_PROFILES  # noqa: E402
from tvmsplit.testbed import Testbed, get_profile, unavailable_reason  # noqa: E402
from tvmsplit.testbed.probe import measure  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_transfer(profiles: list[str], sizes: list[int], repeat: int) -> list[str]:
    rows = []
    cases = [(p, None) for p in profiles]
    if "4g" in profiles:
        cases.append(("4g", 0.0))
    for name, delay in cases:
        prof = get_profile(name, delay_ms=delay)
        with Testbed(prof, rpc=False, device=False, log=log) as tb:
            link = "tun+linkemu" if prof.needs_emulator else "veth"
            for direction in ("up", "down"):
                bps = prof.up_bps if direction == "up" else prof.down_bps
                for size in sizes:
                    # 10 MB over 3G up takes 73 s: fewer repeats for long transfers
                    n = repeat if prof.transfer_s(size, direction) < 10 else 1
                    res = measure(tb, direction, [size], repeat=n)
                    got = statistics.median(r["transfer_s"] for r in res)
                    exp = res[0]["expected_s"]
                    rows.append(f"| {name} | {link} | {direction} | {bps / 1e6:g} | "
                                f"{prof.delay_ms:g} | {size / 1e6:g} MB | {exp:.3f} | {got:.3f} | "
                                f"{(got / exp - 1) * 100:+.1f}% | {n} |")
                    log(rows[-1])
    head = ["| profile | link | dir | goodput Mbit/s | delay ms | size | expected s | "
            "measured s (median) | error | runs |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    return head + rows


def bench_setup() -> list[str]:
    cache = Path(tempfile.mkdtemp(prefix="tvmsplit-testbed-cache-"))
    old = {k: os.environ.get(k) for k in ("TVMSPLIT_TESTBED_CACHE", "TVMSPLIT_TESTBED_SYSROOT",
                                          "PIP_NO_CACHE_DIR")}
    os.environ["TVMSPLIT_TESTBED_CACHE"] = str(cache)
    os.environ.pop("TVMSPLIT_TESTBED_SYSROOT", None)
    rows = []
    try:
        for label in ("from scratch", "cached"):
            if label == "from scratch":
                os.environ["PIP_NO_CACHE_DIR"] = "1"  # download the wheels as a fresh CI would
            else:
                os.environ.pop("PIP_NO_CACHE_DIR", None)
            t0 = time.monotonic()
            with Testbed("4g", rpc=True, log=log) as tb:
                sess = tb.rpc_connect()
                sess.cpu()  # the RPC server answers
                up_s = time.monotonic() - t0
                tm = dict(tb.timings)
                secs = tb.sysroot.info.get("seconds", {})
            del sess
            detail = (f"debs {secs.get('debs', 0):.1f} s, pip {secs.get('pip', 0):.1f} s"
                      if label == "from scratch" else "marker found")
            rows.append(f"| {label} | {up_s:.1f} | {tm.get('sysroot_s', 0):.1f} ({detail}) | "
                        f"{tm.get('network_s', 0):.2f} | {tm.get('rpc_s', 0):.1f} |")
            log(rows[-1])
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file() and not f.is_symlink())
        rows.append(f"\nSysroot on disk: {size / 1e6:.0f} MB.")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    head = ["| set-up (4G, until the device's RPC server answers) | total s | ARM sysroot s | "
            "network s | RPC server start s |", "|---|---:|---:|---:|---:|"]
    return head + rows


def bench_compute(runs: int = 10) -> list[str]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    import tvmsplit as ts
    from tvmsplit import zoo
    from tvmsplit.check import random_inputs
    from tvmsplit.runtime.stage import StageRunner

    os.environ["TVMSPLIT_CACHE"] = "off"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        g = ts.load(zoo.make("chain", input_size=48), name="chain48")
        cases = [("conv1 (3->32, 48x48)", 0), ("conv2..fc2 (rest)", 1)]
        built = {}
        for arch in ("rpi4b", "x86_64"):
            plan = ts.plan_split(g, ["conv1"], targets=[arch, arch])
            built[arch] = ts.build_bundle(g, plan, Path(tmp) / arch)
        x = random_inputs(g.inputs, seed=0)
        with Testbed("4g", rpc=True, log=log) as tb:
            sess = tb.rpc_connect()
            dev = sess.cpu()
            for label, idx in cases:
                arm, x86 = built["rpi4b"].stages[idx], built["x86_64"].stages[idx]
                inputs = {t.name: x[t.name] for t in x86.plan.library_inputs if t.name in x}
                with StageRunner(x86.library, x86.plan) as runner:
                    if not inputs:  # stage 1 takes stage 0's output
                        inputs = StageRunner(built["x86_64"].stages[0].library,
                                             built["x86_64"].stages[0].plan).run(x)
                    runner.run(inputs)
                    native = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        runner.run(inputs)
                        native.append((time.perf_counter() - t0) * 1e3)
                sess.upload(str(arm.library))
                vm = VirtualMachine(sess.load_module(arm.library.name), dev)
                args = [tvm.runtime.tensor(inputs[t.name], dev) for t in arm.plan.library_inputs]
                ev = vm.time_evaluator("main", dev, number=3, repeat=max(3, runs // 3))(*args)
                q = ev.median * 1e3
                n = statistics.median(native)
                rows.append(f"| {label} | {n:.2f} | {q:.2f} | {q / n:.1f}x |")
                log(rows[-1])
    head = ["| stage (zoo chain 48x48, untuned) | x86_64 native ms | rpi4b build on qemu "
            "(RPC time_evaluator) ms | qemu / native |", "|---|---:|---:|---:|"]
    return head + rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "testbed.md"))
    ap.add_argument("--profiles", default=",".join(LINK_PROFILES))
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--repeat", type=int, default=3, help="runs per transfer (1 when > 10 s)")
    ap.add_argument("--quick", action="store_true", help="1 MB only, 2 runs, no from-scratch")
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch set-up")
    ap.add_argument("--no-compute", action="store_true", help="skip the qemu vs native table")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"bench_testbed: cannot run: {reason}", file=sys.stderr)
        return 2
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    repeat = args.repeat
    if args.quick:
        sizes, repeat, args.no_scratch = sizes[:1], 2, True
    import platform

    out = [f"## Testbed ({platform.node()}, {os.cpu_count()} cores, kernel "
           f"{platform.release()})", ""]
    out += ["### (a) Transfer time over the shaped link (raw ZeroMQ PUSH/PULL, warm connection)",
            "", "Expected = bytes*8/goodput + one-way delay. Goodput is the profile's rate; tbf "
            "runs a little faster to pay for IP/TCP headers. Delay is emulated by linkemu "
            "(TUN, user space); delay 0 uses a plain veth pair.", ""]
    t0 = time.monotonic()
    out += bench_transfer([p.strip() for p in args.profiles.split(",")], sizes, repeat)
    out += ["", f"({time.monotonic() - t0:.0f} s)", ""]
    if not args.no_scratch:
        out += ["### (b) Testbed set-up time (goals: < 120 s from scratch, < 15 s cached)", ""]
        out += bench_setup()
        out += [""]
    else:
        out += ["### (b) Testbed set-up time (cached sysroot)", ""]
        t1 = time.monotonic()
        with Testbed("4g", rpc=True, log=log) as tb:
            tb.rpc_connect().cpu()
            tm = tb.timings
        out += ["| set-up | total s | ARM sysroot s | network s | RPC server start s |",
                "|---|---:|---:|---:|---:|",
                f"| cached | {time.monotonic() - t1:.1f} | {tm.get('sysroot_s', 0):.1f} | "
                f"{tm.get('network_s', 0):.2f} | {tm.get('rpc_s', 0):.1f} |", ""]
    if not args.no_compute:
        out += ["### (c) Emulated ARM compute vs native x86 (qemu time is not Pi time)", ""]
        out += bench_compute()
        out += ["", f"Both run TVM's default thread pool ({os.cpu_count()} cores); qemu-user "
                "translates the aarch64 code, so its times measure the emulator, not a Raspberry "
                "Pi: the testbed proves that ARM code runs and is correct, and moves real bytes "
                "over a real-rate link, but Pi compute times must come from a per-device cost "
                "model (a measured Pi profile, or x86 times times a per-device factor), not "
                "from qemu.", ""]
    text = "\n".join(out) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
