#!/usr/bin/env python3
"""Capped end device benchmark (issue 15): real compute times of a cgroup-capped end device.

    sudo python bench/bench_capped.py [--out bench/results/capped.md] [--requests 15] [--quick]

The testbed's capped end device (``Testbed(end=...)``, placement ``end``) runs a stage's worker
natively in the device namespace inside a cgroup (one core, a CPU quota per period, a memory
limit); the edge's workers run in a cgroup pinned to the other core. Two pipelines on one
bundle, stage 0 on ``end`` in one and on ``edge`` in the other, get the same requests
alternately (interleaved, so load from other users of the machine hits both alike); stage 0's
``compute_ms`` comes from the pipeline trace (the worker's wall time around the library call).

(a) Smoothness: a stage of ~4 ms (uncapped) under 20% of a core with a 100 ms period (quota
    20 ms) vs a 10 ms period (2 ms), and pi-class's 10% with a 10 ms period: median and p90.
    Also the same stage's library called back-to-back (``--loop``: a process inside the cgroup,
    no pipeline, no idle time between calls) and with 10 ms of idle between calls.
(b) Zoo models at a few input sizes, cut at the middle cut candidate: stage 0 capped as
    pi-class and phone-class vs on the edge core: medians, ratio, against 1/fraction.

(c) A model's own layers profiled on the capped device (issue 15 part 2): a TVM RPC server in
    its cgroup (``Testbed.start_end_rpc``), ``profile_layers`` over ``RPCSession`` (compiled
    here, timed there, ``time_evaluator``: back-to-back runs) vs the same layers timed here in a
    process pinned to the edge core.

Prints markdown tables and writes them to ``--out``. Needs root and writable cgroups.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import compare, random_inputs, reference  # noqa: E402
from tvmsplit.runtime.pipeline import Pipeline  # noqa: E402
from tvmsplit.testbed import Testbed  # noqa: E402
from tvmsplit.testbed.capped import get_capped  # noqa: E402
from tvmsplit.testbed.cgroup import detect, unavailable_reason  # noqa: E402

ZOO = [("chain", 32), ("chain", 64), ("chain", 96), ("resnet", 32), ("resnet", 64),
       ("mobilenetv2", 64), ("inception", 64)]
QUICK_ZOO = [("chain", 64), ("resnet", 32)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def build(model: str, size: int, cut: str | None, root: Path, target: str = "pi-class"):
    g = ts.load(zoo.make(model, input_size=size), name=f"{model}{size}")
    cands = [c.after for c in g.cut_candidates]
    cut = cut or cands[len(cands) // 2]
    b = ts.build_bundle(g, ts.plan_split(g, [cut], targets=[target, "x86_64"]),
                        root / f"{model}{size}-{cut}")
    return g, b, cut


def interleaved(tb: Testbed, g, bundle, requests: int) -> tuple[list[float], list[float], float]:
    """Stage 0's compute_ms on the end device and on the edge, request by request alternately;
    and the worst relative error of the capped pipeline's output vs onnxruntime."""
    x = random_inputs(g.inputs, seed=1)
    want = reference(g, x)
    with Pipeline(bundle, launcher=tb.launcher(["end", "edge"]), timeout_s=300) as capped, \
            Pipeline(bundle, launcher=tb.launcher(["edge", "edge"]), timeout_s=300) as free:
        for p in (capped, free):
            p.run(x)
        c_ms, u_ms = [], []
        for _ in range(requests):
            y, trace = capped.run(x)
            c_ms.append(trace.compute_ms[0])
            u_ms.append(free.run(x)[1].compute_ms[0])
    err = max(compare(y[n], v, n).rel for n, v in want.items())
    return c_ms, u_ms, err


def bench_smoothness(root: Path, requests: int) -> list[str]:
    g, b, cut = build("chain", 32, "pool1", root)
    base = get_capped("pi-class")
    cases = [("20%, period 100 ms, quota 20 ms", replace(base, cpu_fraction=0.2, period_us=100_000)),
             ("20%, period 10 ms, quota 2 ms", replace(base, cpu_fraction=0.2, period_us=10_000)),
             ("10% (pi-class), period 10 ms, quota 1 ms", base)]
    rows = ["| cgroup CPU limit | capped median ms | capped p90 ms | capped mean ms | edge median ms "
            "| edge p90 ms | median ratio | mean ratio | expected |", "|---|---|---|---|---|---|---|---|---|"]
    for label, prof in cases:
        with Testbed("wifi", delay_ms=0, end=prof, device=False, rpc=False, log=log) as tb:
            c, u, err = interleaved(tb, g, b, requests * 2)
        rows.append(f"| {label} | {statistics.median(c):.1f} | {p90(c):.1f} | "
                    f"{statistics.fmean(c):.1f} | {statistics.median(u):.2f} | {p90(u):.2f} | "
                    f"{statistics.median(c) / statistics.median(u):.2f}x | "
                    f"{statistics.fmean(c) / statistics.fmean(u):.2f}x | "
                    f"{prof.expected_slowdown:g}x |")
        log(rows[-1])
    return [f"chain 32x32, stage 0 = conv1..pool1 (cut {cut}), {requests * 2} interleaved "
            "requests per row", "", *rows]


def loop(bundle_dir: str, n: int, gap_s: float) -> None:
    """``--loop``: run stage 0 of a bundle ``n`` times here (inside whatever cgroup we are in),
    ``gap_s`` idle between calls; print the times in ms as JSON."""
    import json

    import numpy as np

    from tvmsplit.bundle import Bundle
    from tvmsplit.runtime.stage import StageRunner

    stage = Bundle.load(bundle_dir).stages[0]
    rng = np.random.default_rng(0)
    x = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in stage.plan.inputs}
    out = []
    with StageRunner(stage.library, stage.plan) as r:
        for _ in range(3):
            r.run(x)
        for _ in range(n):
            if gap_s:  # sleep(0) would be a scheduling point where a throttle lands untimed
                time.sleep(gap_s)
            t0 = time.perf_counter()
            r.run(x)
            out.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps(out))


def bench_loop(root: Path, requests: int) -> list[str]:
    """Stage 0 of chain 32 called in a loop inside a cgroup (core 0, the limit) vs a cgroup on
    core 1 without a limit, alternating blocks; back-to-back and with 10 ms idle between calls."""
    import json
    import subprocess

    from tvmsplit.testbed.cgroup import Cgroup, Limits

    g, b, _ = build("chain", 32, "pool1", root)
    others = sorted(os.sched_getaffinity(0) - {0}) or [0]
    env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1", TVM_USE_RUNTIME_LIB="1",
               PYTHONPATH=str(REPO))
    cases = [("20%, period 100 ms, quota 20 ms", Limits(20_000, 100_000, "0")),
             ("20%, period 10 ms, quota 2 ms", Limits(2_000, 10_000, "0")),
             ("10% (pi-class), period 10 ms, quota 1 ms", Limits(1_000, 10_000, "0"))]
    n = max(100, 4 * requests)
    rows = ["| cgroup CPU limit | idle between calls | capped median ms | capped p90 ms | "
            "capped mean ms | max | free median ms | median ratio | mean ratio | expected |",
            "|---|---|---|---|---|---|---|---|---|---|"]

    def run_in(limits: Limits, gap: float) -> list[float]:
        with Cgroup(f"tvmsplit-bench-{os.getpid()}", limits) as cg:
            out = subprocess.run([*cg.prefix(), sys.executable, __file__, "--loop", str(b.path),
                                  str(n), str(gap)], capture_output=True, text=True, env=env,
                                 timeout=600, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    for label, lim in cases:
        for gap in (0.0, 0.010):
            c, u = [], []
            for _ in range(2):  # alternate capped and free blocks
                c += run_in(lim, gap)
                u += run_in(Limits(cpus=",".join(map(str, others))), gap)
            rows.append(f"| {label} | {gap * 1e3:g} ms | {statistics.median(c):.1f} | "
                        f"{p90(c):.1f} | {statistics.fmean(c):.1f} | {max(c):.0f} | "
                        f"{statistics.median(u):.2f} | "
                        f"{statistics.median(c) / statistics.median(u):.2f}x | "
                        f"{statistics.fmean(c) / statistics.fmean(u):.2f}x | "
                        f"{1 / lim.cpu_fraction:g}x |")
            log(rows[-1])
    return [f"chain 32x32 stage 0 (conv1..pool1) library, {2 * n} calls per cell in 4 alternating "
            "blocks, one process per block", "", *rows]


def bench_zoo(root: Path, models, requests: int) -> list[str]:
    rows = ["| model | input | cut after | device | capped median ms | p90 | edge median ms | "
            "ratio | expected | rel err |", "|---|---|---|---|---|---|---|---|---|---|"]
    profiles = [get_capped("pi-class"), get_capped("phone-class")]
    for model, size in models:
        t0 = time.monotonic()
        g, b, cut = build(model, size, None, root)
        log(f"{model}{size}: built in {time.monotonic() - t0:.1f} s, cut after {cut}")
        for prof in profiles:
            with Testbed("wifi", delay_ms=0, end=prof, device=False, rpc=False, log=log) as tb:
                c, u, err = interleaved(tb, g, b, requests)
            ratio = statistics.median(c) / statistics.median(u)
            rows.append(f"| {model} | {size}x{size} | {cut} | {prof.name} | "
                        f"{statistics.median(c):.1f} | {p90(c):.1f} | {statistics.median(u):.2f} | "
                        f"{ratio:.2f}x | {prof.expected_slowdown:g}x | {err:.1e} |")
            log(rows[-1])
    return rows


def bench_profile(models) -> list[str]:
    from tvmsplit.profile import LocalSession, RPCSession, profile_layers

    rows = ["| model | input | layer | op | capped ms | edge core ms | ratio |",
            "|---|---|---|---|---|---|---|"]
    others = set(os.sched_getaffinity(0)) - {0}
    ratios = []
    for model, size in models:
        g = ts.load(zoo.make(model, input_size=size), name=f"{model}{size}")
        with Testbed("wifi", delay_ms=0, end="pi-class", device=False, rpc=False, log=log) as tb:
            with RPCSession(*tb.start_end_rpc()) as s:
                capped = profile_layers(g, "pi-class", s, number=3, repeat=3)
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, others or mask)  # this process on the edge's core(s)
        try:
            free = profile_layers(g, "pi-class", LocalSession(), number=3, repeat=3)
        finally:
            os.sched_setaffinity(0, mask)
        for c, f in zip(capped, free):
            r = c.timing.median_ms / f.timing.median_ms
            ratios.append(r)
            rows.append(f"| {model} | {size}x{size} | {c.layer} | {c.op} | {c.timing.median_ms:.2f} "
                        f"| {f.timing.median_ms:.3f} | {r:.2f}x |")
        log(f"{model}{size}: {len(capped)} layers")
    qs = statistics.quantiles(ratios, n=10)
    return ["pi-class (expected 10x); each time the median of 3 repeats of 3 back-to-back runs", "",
            *rows, "", f"ratio over {len(ratios)} layers: median {statistics.median(ratios):.2f}x, "
            f"p10 {qs[0]:.2f}x, p90 {qs[-1]:.2f}x"]


def setup_lines(requests: int) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    h = detect()
    pi, phone = get_capped("pi-class"), get_capped("phone-class")
    load = os.getloadavg()
    return [f"- CPU: {cpu}, {os.cpu_count()} vCPUs, kernel {platform.release()}, cgroup v{h.version}"
            f"; load average at start {load[0]:.2f} (machine shared with other jobs)",
            f"- end device: {pi.describe()}; {phone.describe()}; worker env TVM_NUM_THREADS=1, "
            "OMP_NUM_THREADS=1",
            "- edge: the other core (cpuset cgroup, no quota), TVM_NUM_THREADS=1",
            "- stages built for pi-class (stage 0, generic x86-64 code, same as the x86_64 target) "
            "and x86_64; untuned; link wifi without delay (veth + tbf)",
            f"- {requests} requests per row after one warm-up, capped and edge pipelines "
            "alternating; compute_ms from the pipeline trace"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "capped.md"))
    ap.add_argument("--requests", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="two zoo models, fewer requests")
    ap.add_argument("--loop", nargs=3, metavar=("BUNDLE", "N", "GAP_S"), help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["loop", "pipeline", "zoo", "profile"], default=None)
    args = ap.parse_args()
    if args.loop:
        loop(args.loop[0], int(args.loop[1]), float(args.loop[2]))
        return 0
    reason = unavailable_reason()
    if reason:
        log(f"cannot run: {reason}")
        return 1
    requests = 8 if args.quick else args.requests
    with tempfile.TemporaryDirectory(prefix="bench-capped-") as tmp:
        os.environ.setdefault("TVMSPLIT_CACHE", str(Path(tmp) / "cache"))
        root = Path(tmp)
        t0 = time.monotonic()
        want = lambda part: args.only in (None, part)  # noqa: E731
        lines = ["## Capped end device (issue 15)", "", "### Setup", "", *setup_lines(requests), ""]
        if want("loop"):
            lines += ["### (a1) Smoothness: one stage called in a loop inside the cgroup", "",
                      *bench_loop(root, requests), ""]
        if want("pipeline"):
            lines += ["### (a2) Smoothness in the pipeline: stage 0 on the capped device", "",
                      *bench_smoothness(root, requests), ""]
        if want("zoo"):
            lines += ["### (b) Zoo models: stage 0 on the capped device vs the edge core", "",
                      *bench_zoo(root, QUICK_ZOO if args.quick else ZOO, requests), ""]
        if want("profile"):
            lines += ["### (c) A model's layers profiled on the capped device over TVM RPC", "",
                      *bench_profile([("chain", 64), ("resnet", 32)]), ""]
        lines.append(f"(bench run time {time.monotonic() - t0:.0f} s)")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
