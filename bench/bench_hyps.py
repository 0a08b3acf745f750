#!/usr/bin/env python3
"""HyPS on real memory limits (issue 14): VGG16 on 1 / 2 / 3 memory-capped devices, and the
H-part sweep.

    sudo python bench/bench_hyps.py [--out bench/results/hyps.md] [--requests 3] [--quick]

Every "device" is a cgroup with a memory limit (``--limit``, default 1 GiB: a Raspberry Pi 3B+'s
RAM) holding that device's stage workers (Python workers, one TVM thread each). The planner is
given a smaller *model budget* per device (what the model may hold; the rest of the limit is the
worker, TVM's workspace and the activations it pools), and plans sequential devices (segments of
layers loaded one at a time, weights outside the libraries) and H-parts of fc1 where the budgets
require them.

(a) The full-size VGG16-shaped zoo model (224x224, 138 M parameters, 553 MB float32):
    resident on one device (weights inside the library, as every normal build), then sequential
    on 1 device, then 2 and 3 devices with fc1's H-parts spread over them (sequential only
    where a device's budget requires it).
    Per configuration: the plan, median latency over ``--requests``, communication share (hop
    time / latency, loopback links), and per device the predicted model memory vs the measured
    peak RSS of its workers (VmHWM) vs the limit.
(b) The H-part sweep: VGG16's classifier (25088 -> 4096 -> 4096 -> 1000, 494 MB, the part HyPS
    splits) with fc1 in 1..50 parts alternating over two devices (two stages running in
    parallel, a merge stage after): median latency and the parts' stage times, per count.

Times are this 2-vCPU VM's with untuned TVM code, not a Pi's; all devices share its two cores.
Prints markdown and writes it to ``--out``. Needs root and writable cgroups.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TVM_NUM_THREADS", "1")  # every worker: one thread (devices share 2 cores)

import numpy as np  # noqa: E402

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import compare, random_inputs, reference  # noqa: E402
from tvmsplit.devices import Device, Link  # noqa: E402
from tvmsplit.partition import CostTable  # noqa: E402
from tvmsplit.planning import plan_partition  # noqa: E402
from tvmsplit.runtime.launch import LocalLauncher, python_worker  # noqa: E402
from tvmsplit.runtime.pipeline import Pipeline, PipelineError  # noqa: E402
from tvmsplit.testbed.cgroup import Cgroup, Limits, unavailable_reason  # noqa: E402

GIB = 1 << 30
LAN = Link("loopback", 1e9, 1e9, 0.0005)
HYPS_TABLE = {1: 46.7, 2: 42.9, 3: 38.8}  # s, VGG16 on 1/2/3 Pi 3B+ (Keras), HyPS thesis


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_capped(bundle, stage_devices, n_devices: int, limit: int, requests: int, x, want):
    """Run ``requests`` requests with each device's workers in a cgroup of ``limit`` bytes:
    (latencies s, traces, per-device memory: (the cgroup's peak charge, the sum of its workers'
    peak RSS), error or None)."""
    groups = [Cgroup(f"tvmsplit-bench-hyps-{os.getpid()}-d{d}", Limits(memory_max_bytes=limit))
              for d in range(n_devices)]
    for g in groups:
        g.create()
    try:
        launcher = LocalLauncher(start_timeout_s=600, programs={
            s: [*groups[d].prefix(), *python_worker()] for s, d in enumerate(stage_devices)})
        lat, traces = [], []
        with Pipeline(bundle, launcher=launcher, timeout_s=900) as p:
            for _ in range(requests):
                t0 = time.perf_counter()
                y, trace = p.run(x)
                lat.append(time.perf_counter() - t0)
                traces.append(trace)
                err = compare(y["output"], want, "output").rel
                if err > 1e-4:
                    raise AssertionError(f"output differs from onnxruntime: rel {err:.2e}")
            health = p.health()
        rss = [0] * n_devices
        for h, d in zip(health, stage_devices):
            rss[d] += h["peak_rss_bytes"]  # workers of one device: their peaks, summed
        return lat, traces, [(g.memory_use()["peak"] or 0, r) for g, r in zip(groups, rss)], None
    except (PipelineError, OSError) as exc:
        kills = sum(g.memory_use()["oom_kills"] or 0 for g in groups)
        why = f"{kills} worker(s) killed by the memory limit (oom_kill); " if kills else ""
        return [], [], [(0, 0)] * n_devices, f"{why}{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        for g in groups:
            g.remove()


def vgg_rows(requests: int, limit: int, work: Path) -> list[str]:
    g = ts.load(zoo.make("vgg16"), name="vgg16")
    weights = sum(layer.param_bytes for layer in g.layers)
    x = random_inputs(g.inputs)
    want = reference(g, x)["output"]
    configs = [  # (label, devices, model budget per device, sequential mode)
        ("1 device, resident", 1, None, "off"),
        ("1 device, sequential", 1, 480_000_000, "auto"),
        ("2 devices, H-parts spread", 2, 300_000_000, "auto"),
        ("3 devices, H-parts spread", 3, 200_000_000, "auto"),
    ]
    rows = [f"VGG16 zoo model, 224x224, {weights / 1e6:.0f} MB of float32 weights; cgroup memory "
            f"limit {limit / GIB:g} GiB per device; {requests} requests per configuration.", "",
            "| configuration | plan | H-parts | latency s (median) | comm. share | per device: "
            "predicted model MB / measured cgroup peak MB (workers' summed peak RSS) | "
            "HyPS on Pi 3B+ s |",
            "|---|---|---|---|---|---|---|"]
    for label, k, budget, mode in configs:
        devices = [Device(f"d{i}", "x86_64", budget) for i in range(k)]
        costs = CostTable.from_flops(g, {d.name: 10.0 for d in devices})
        t0 = time.perf_counter()
        result = plan_partition(g, devices, [LAN] * (k - 1), costs, sequential=mode)
        plan_s = time.perf_counter() - t0
        desc = "; ".join(
            f"d{d}: {s.layers[0]}..{s.layers[-1]}"
            + (f" in {len(s.segments)} segments" if s.segments else "")
            for s, d in zip(result.plan.stages, result.stage_devices))
        log(f"[{label}] planned in {plan_s:.1f} s: {desc}; building")
        t0 = time.perf_counter()
        bundle = ts.build_bundle(result.graph, result.plan, work / label.replace(" ", "_").replace(",", ""))
        log(f"[{label}] built in {time.perf_counter() - t0:.0f} s; running under the cap")
        lat, traces, peak, error = run_capped(bundle, result.stage_devices, k, limit, requests, x, want)
        hparts = ", ".join(f"{n} x{p}" for n, p in result.horizontal) or "-"
        mem = " · ".join(f"{m / 1e6:.0f} / {pk / 1e6:.0f} ({r / 1e6:.0f})"
                         for m, (pk, r) in zip(result.predicted.memory_bytes, peak))
        if error:
            rows.append(f"| {label} | {desc} | {hparts} | killed: {error} | | "
                        f"{' · '.join(f'{m / 1e6:.0f} / -' for m in result.predicted.memory_bytes)}"
                        f" | {HYPS_TABLE.get(k, '')} |")
            log(f"[{label}] FAILED: {error}")
            continue
        med = statistics.median(lat)
        comm = statistics.median(t.transfer_ms / t.total_ms for t in traces)
        rows.append(f"| {label} | {desc} | {hparts} | {med:.1f} | {comm:.1%} | {mem} | "
                    f"{HYPS_TABLE.get(k, '')} |")
        log(f"[{label}] median {med:.1f} s, peak {[(round(p / 1e6), round(r / 1e6)) for p, r in peak]} MB")
    return rows


def classifier():
    """VGG16's classifier as an ONNX model (flattened pool5 in)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [25088, 4096, 4096, 1000]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
        w = (rng.standard_normal((b, a), dtype=np.float32) * np.float32(1 / np.sqrt(a)))
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"fc{i}.bias")]
        out = f"fc{i}_out" if i < 3 else "output"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"],
                                      [out if i == 3 else f"fc{i}_gemm"], name=f"fc{i}", transB=1))
        if i < 3:
            nodes.append(helper.make_node("Relu", [f"fc{i}_gemm"], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(nodes, "vgg16_classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 25088])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1000])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sweep_rows(counts: list[int], requests: int, limit: int, work: Path) -> list[str]:
    from tvmsplit.hsplit import split_horizontally

    base = ts.load(classifier(), name="vgg16_classifier")
    x = random_inputs(base.inputs)
    want = reference(base, x)["output"]
    rows = ["VGG16's classifier (25088 -> 4096 -> 4096 -> 1000, 494 MB): fc1 in N H-parts, "
            "even parts on device 0 and odd on device 1 (two stages in parallel), then a stage "
            "with the merge, fc2 and fc3 on device 1; resident workers, one TVM thread each; "
            f"cgroup limit {limit / GIB:g} GiB per device; {requests} requests per count, "
            "medians.", "",
            "| H-parts | latency ms | parts' stages ms (d0 / d1) | merge+fc2+fc3 stage ms | vs 4 parts |",
            "|---|---|---|---|---|"]
    measured = []  # (n, latency ms, parts' cell, merge ms) or (n, error)
    for n in counts:
        g = split_horizontally(base, {"fc1": n}) if n > 1 else base
        if n > 1:  # even parts on device 0, odd on device 1, the rest after them
            stage_of = {layer.name: int(layer.name[5:]) % 2 if layer.name.startswith("fc1_h")
                        else 2 for layer in g.layers}
            devices = [0, 1, 1]
        else:
            stage_of = {layer.name: 0 if layer.name == "fc1" else 1 for layer in g.layers}
            devices = [0, 1]
        plan = ts.plan_split(g, stage_of=stage_of, routing="direct")
        log(f"[sweep {n}] building {len(plan.stages)} stages")
        bundle = ts.build_bundle(g, plan, work / f"sweep{n}")
        _, traces, _, error = run_capped(bundle, devices, 2, limit, requests, x, want)
        if error:
            measured.append((n, error))
            continue
        med = statistics.median(t.total_ms for t in traces)
        cell = lambda s: f"{statistics.median(t.compute_ms[s] for t in traces):.1f}"  # noqa: E731
        parts = f"{cell(0)} / {cell(1)}" if n > 1 else f"{cell(0)} (unsplit, d0)"
        measured.append((n, med, parts, float(cell(len(devices) - 1))))
        log(f"[sweep {n}] median {med:.1f} ms")
    four = next((m[1] for m in measured if m[0] == 4 and len(m) == 4), None)
    for m in measured:
        if len(m) == 2:
            rows.append(f"| {m[0]} | failed: {m[1]} | | | |")
        else:
            n, med, parts, merge = m
            ratio = f"{med / four:.2f}x" if four else ""
            rows.append(f"| {n} | {med:.1f} | {parts} | {merge:.1f} | {ratio} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "hyps.md"))
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--limit", type=int, default=GIB, help="cgroup memory limit per device (bytes)")
    ap.add_argument("--sweep-limit", type=int, default=4 * GIB,
                    help="cgroup memory limit per device in the sweep (fc1 whole is 411 MB of "
                         "weights, which TVM holds twice when it loads them)")
    ap.add_argument("--quick", action="store_true", help="only the sweep, at 1/2/4/8 parts")
    ap.add_argument("--no-sweep", action="store_true", help="only the VGG16 configurations")
    ap.add_argument("--counts", default="1,2,4,8,16,32,50")
    args = ap.parse_args()
    why = unavailable_reason(Limits(memory_max_bytes=args.limit))
    if why:
        print(f"bench_hyps: {why}", file=sys.stderr)
        return 2
    counts = [1, 2, 4, 8] if args.quick else [int(c) for c in args.counts.split(",")]
    lines = [f"# HyPS on real memory limits ({platform.node()}, {os.cpu_count()} vCPUs, "
             f"{time.strftime('%Y-%m-%d')})", ""]
    with tempfile.TemporaryDirectory(prefix="bench-hyps-") as tmp:
        if not args.quick:
            lines += ["## VGG16 on 1 / 2 / 3 capped devices", ""]
            lines += vgg_rows(args.requests, args.limit, Path(tmp))
            lines.append("")
        if not args.no_sweep:
            lines += ["## H-part sweep", ""]
            lines += sweep_rows(counts, args.requests, args.sweep_limit, Path(tmp))
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
