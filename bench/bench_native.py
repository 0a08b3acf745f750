"""The native C++ worker (native/, CMakeLists.txt) against the Python worker, same stage, same
machine, side by side (issue 13). Every measurement alternates the two kinds (python, native,
python, ...) so drift on this shared machine hits both alike; medians are reported.

(a) RSS of one worker serving stage 1 of the zoo resnet split at block2_add (1x3x32x32 float32
    input): idle (ready, nothing received) and while serving (sampled every 5 ms during 200
    streamed requests through a 2-stage pipeline of that kind; the largest sample).
(b) Start to ready: from fork/exec to the ready file on disk (polled every 1 ms), stage 1.
(c) Per-hop overhead for a 1 KB / 1 MB / 10 MB cut: bench_runtime's expand/reduce model in two
    stages; (end-to-end - sum of stage compute) / hops, median of --repeats single requests.
(d) Throughput of the 2-stage resnet pipeline, --requests streamed requests, 8 in flight.
(e) With the testbed's arm64 sysroot and the aarch64 cross-build (build/aarch64): start to ready
    and idle RSS of stage 0 (built for rpi4b) under qemu-aarch64, the aarch64 Python worker
    (runtime-only TVM) against the native one; qemu's own memory is in both.

Workers run with TVM_NUM_THREADS=1 (two stages on 2 cores). Needs the native worker built
(`cmake -S . -B build/native && cmake --build build/native -j2`, or $TVMSPLIT_NATIVE_WORKER).

Usage: python bench/bench_native.py [--out bench/results/native.md] [--repeats 30]
           [--requests 200] [--starts 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")  # inherited by the worker processes

import psutil  # noqa: E402

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import random_inputs  # noqa: E402
from tvmsplit.runtime.launch import (LocalLauncher, WorkerSpec, find_native_worker,  # noqa: E402
                                     worker_env, worker_program)

sys.path.insert(0, str(Path(__file__).parent))
from bench_runtime import expand_reduce  # noqa: E402

KINDS = ("python", "native")


def _start_ms(kind: str, bundle, tmp: str, i: int) -> tuple[float, int]:
    """Fork/exec to ready file, ms; and the worker's idle RSS (bytes) once ready."""
    ready = Path(tmp) / f"ready-{kind}-{i}.json"
    argv = [*worker_program(kind), *WorkerSpec(str(bundle.path), 1, ready_file=str(ready)).argv()]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=worker_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} worker exited with {proc.returncode}")
        time.sleep(0.001)
    ms = (time.perf_counter() - t0) * 1e3
    time.sleep(0.5)
    rss = psutil.Process(proc.pid).memory_info().rss
    proc.terminate()
    proc.wait(10)
    return ms, rss


def start_and_idle_rows(bundle, tmp: str, starts: int) -> tuple[list[str], dict]:
    got = {k: ([], []) for k in KINDS}
    for i in range(starts):
        for kind in KINDS:
            ms, rss = _start_ms(kind, bundle, tmp, i)
            got[kind][0].append(ms)
            got[kind][1].append(rss)
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in got.items()}
    return med, got


def qemu_rows(tmp: str, starts: int) -> list[str]:
    """(e): the emulated device, if its sysroot and the aarch64 worker are there."""
    from tvmsplit.testbed.sysroot import find_qemu, read_marker, sysroot_path

    path, qemu = sysroot_path(), find_qemu()
    if read_marker(path) is None or qemu is None or find_native_worker("aarch64") is None:
        return ["(e) skipped: no testbed sysroot, qemu or build/aarch64 worker"]
    from tvmsplit.runtime.launch import native_worker
    from tvmsplit.testbed.sysroot import Sysroot

    sr = Sysroot(path, qemu, {})
    g = ts.load(zoo.make("resnet"), name="resnet")
    bundle = ts.build_bundle(g, ts.plan_split(g, ["block2_add"], targets=["rpi4b", "x86_64"]),
                             f"{tmp}/resnet-arm")
    programs = {"python": (sr.command("-m", "tvmsplit.runtime.worker"),
                           sr.env(Path(__file__).resolve().parents[1])),
                "native": ([qemu, "-L", str(path), *native_worker("aarch64")], sr.env())}
    got = {k: ([], []) for k in KINDS}
    for i in range(starts):
        for kind in KINDS:
            program, env = programs[kind]
            ready = Path(tmp) / f"qemu-{kind}-{i}.json"
            t0 = time.perf_counter()
            proc = subprocess.Popen([*program, *WorkerSpec(str(bundle.path), 0, next=(
                "tcp://127.0.0.1:9",), ready_file=str(ready)).argv()], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} worker under qemu exited with {proc.returncode}")
                time.sleep(0.001)
            got[kind][0].append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.5)
            got[kind][1].append(psutil.Process(proc.pid).memory_info().rss)
            proc.terminate()
            proc.wait(30)
    py_ms, nat_ms = (statistics.median(got[k][0]) for k in KINDS)
    py_rss, nat_rss = (statistics.median(got[k][1]) / 2**20 for k in KINDS)
    return ["| under qemu-aarch64 (stage 0, rpi4b) | Python worker | native worker | native / "
            "Python |", "|---|---:|---:|---:|",
            f"| start to ready, ms | {py_ms:.0f} | {nat_ms:.0f} | {nat_ms / py_ms:.2f} |",
            f"| RSS idle (incl. qemu), MiB | {py_rss:.1f} | {nat_rss:.1f} | "
            f"{nat_rss / py_rss:.2f} |"]


def _serving_rss_and_rate(kind: str, bundle, x, requests: int) -> tuple[int, float]:
    with ts.Pipeline(bundle, launcher=LocalLauncher(program=worker_program(kind)),
                     max_in_flight=8) as p:
        for _ in range(3):
            p.run(x)
        proc = psutil.Process(p.endpoints[1]["pid"])
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        start = time.perf_counter()
        n = sum(1 for _ in p.stream(x for _ in range(requests)))
        rate = n / (time.perf_counter() - start)
        done.set()
        t.join()
    return peak[0], rate


def overhead(kind: str, bundle, x, repeats: int) -> float:
    with ts.Pipeline(bundle, launcher=LocalLauncher(program=worker_program(kind))) as p:
        for _ in range(3):
            p.run(x)
        traces = [p.run(x)[1] for _ in range(repeats)]
    hops = len(traces[0].hop_ms)
    return statistics.median((t.total_ms - sum(t.compute_ms)) / hops for t in traces)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/native.md")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="serving/throughput rounds per kind")
    args = ap.parse_args()
    if find_native_worker() is None:
        sys.exit("the native worker is not built: cmake -S . -B build/native && "
                 "cmake --build build/native -j2")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        g = ts.load(zoo.make("resnet"), name="resnet")
        resnet = ts.build_bundle(g, ts.plan_split(g, ["block2_add"]), f"{tmp}/resnet2")
        x = random_inputs(g.inputs)
        med, _ = start_and_idle_rows(resnet, tmp, args.starts)
        serving = {k: [] for k in KINDS}
        rates = {k: [] for k in KINDS}
        for _ in range(args.rounds):
            for kind in KINDS:
                rss, rate = _serving_rss_and_rate(kind, resnet, x, args.requests)
                serving[kind].append(rss)
                rates[kind].append(rate)
        mib = lambda b: b / 2**20  # noqa: E731
        lines += ["| | Python worker | native worker | native / Python |", "|---|---:|---:|---:|"]
        rows = [("RSS idle, MiB", mib(med["python"][1]), mib(med["native"][1]), "{:.1f}"),
                ("RSS serving (peak), MiB", mib(statistics.median(serving["python"])),
                 mib(statistics.median(serving["native"])), "{:.1f}"),
                ("start to ready, ms", med["python"][0], med["native"][0], "{:.1f}"),
                ("2-stage resnet throughput, req/s", statistics.median(rates["python"]),
                 statistics.median(rates["native"]), "{:.1f}")]
        for label, py, nat, fmt in rows:
            lines.append(f"| {label} | {fmt.format(py)} | {fmt.format(nat)} | {nat / py:.2f} |")
            print(lines[-1], flush=True)
        lines += ["", "| cut tensor | Python: overhead per hop ms | native: overhead per hop ms "
                  "| native / Python |", "|---|---:|---:|---:|"]
        for label, size in (("1 KB", 1 << 10), ("1 MB", 1 << 20), ("10 MB", 10 << 20)):
            m = ts.load(expand_reduce(size), name=f"expand-{label}")
            bundle = ts.build_bundle(m, ts.plan_split(m, ["expand"]), f"{tmp}/ovh{size}")
            xi = random_inputs(m.inputs)
            got = {k: [] for k in KINDS}
            for _ in range(3):  # interleaved rounds of --repeats requests each
                for kind in KINDS:
                    got[kind].append(overhead(kind, bundle, xi, args.repeats))
            py, nat = (statistics.median(got[k]) for k in KINDS)
            lines.append(f"| {label} | {py:.3f} | {nat:.3f} | {nat / py:.2f} |")
            print(lines[-1], flush=True)
        lines += [""] + qemu_rows(tmp, max(3, args.starts // 2))
        print("\n".join(lines[-4:]), flush=True)
    text = (f"Stage 1 of zoo resnet split at block2_add; {args.starts} starts, {args.rounds} "
            f"rounds of {args.requests} streamed requests, overhead: 3 rounds x {args.repeats} "
            "requests per size; kinds interleaved, medians; TVM_NUM_THREADS=1.\n\n"
            + "\n".join(lines) + "\n")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
