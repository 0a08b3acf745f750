"""Pipeline runtime overhead and pipelined throughput on loopback (issue 3).

(a) Overhead: a 2-stage model whose cut tensor is 1 KB, 1 MB or 10 MB (stage 0 expands a small
    input to the cut size, stage 1 reduces it back), run through real workers over tcp://127.0.0.1.
    Reported: end-to-end ms, sum of stage compute ms, their ratio and the overhead per hop
    ((end-to-end - compute) / hops). Goal: end-to-end <= 1.05 x compute + 1 ms per hop.
(b) Throughput: the zoo ResNet split 2 and 3 ways, 200 streamed requests, against the bound
    1 / max(stage compute) taken from single-request traces. Workers run with TVM_NUM_THREADS=1
    so the stages do not fight over this machine's 2 cores (3 stages still share 2 cores).

Usage: python bench/bench_runtime.py [--out bench/results/runtime.md] [--requests 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import onnx
from onnx import TensorProto, helper

os.environ.setdefault("TVM_NUM_THREADS", "1")  # inherited by the worker processes

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import random_inputs  # noqa: E402


def expand_reduce(cut_bytes: int) -> onnx.ModelProto:
    """input [1,256] -> Expand to [rows,256] -> Relu (the cut) -> ReduceMean over rows -> [1,256]."""
    rows = max(1, cut_bytes // (256 * 4))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [rows, 256])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [helper.make_node("Expand", ["input", "shape"], ["wide"], name="expand"),
             helper.make_node("Relu", ["wide"], ["cut"], name="relu"),
             helper.make_node("ReduceMean", ["cut", "axes"], ["output"], name="reduce", keepdims=1)]
    graph = helper.make_graph(nodes, f"expand{cut_bytes}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256])],
                              [shape, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def overhead_rows(tmp: str, repeats: int) -> list[str]:
    rows = ["| cut tensor | end-to-end ms | sum compute ms | ratio | overhead per hop ms |",
            "|---|---:|---:|---:|---:|"]
    for label, size in (("1 KB", 1 << 10), ("1 MB", 1 << 20), ("10 MB", 10 << 20)):
        g = ts.load(expand_reduce(size), name=f"expand-{label}")
        bundle = ts.build_bundle(g, ts.plan_split(g, ["expand"]), f"{tmp}/ovh{size}")
        x = random_inputs(g.inputs)
        with ts.Pipeline(bundle) as p:
            for _ in range(3):
                p.run(x)
            traces = [p.run(x)[1] for _ in range(repeats)]
        total = statistics.median(t.total_ms for t in traces)
        compute = statistics.median(sum(t.compute_ms) for t in traces)
        hops = len(traces[0].hop_ms)
        rows.append(f"| {label} ({traces[0].hop_bytes[1]} B) | {total:.3f} | {compute:.3f} | "
                    f"{total / compute:.2f} | {(total - compute) / hops:.3f} |")
        print(rows[-1], flush=True)
    return rows


def throughput_rows(tmp: str, requests: int) -> list[str]:
    rows = ["| split | stage compute ms | bound req/s | measured req/s | measured / bound |",
            "|---|---|---:|---:|---:|"]
    g = ts.load(zoo.make("resnet"), name="resnet")
    for label, cuts in (("2 stages", ["block2_add"]), ("3 stages", ["block1_add", "block3_add"])):
        bundle = ts.build_bundle(g, ts.plan_split(g, cuts), f"{tmp}/tp{len(cuts)}")
        x = random_inputs(g.inputs)
        with ts.Pipeline(bundle, max_in_flight=8) as p:
            for _ in range(3):
                p.run(x)
            traces = [p.run(x)[1] for _ in range(20)]
            per_stage = [statistics.median(t.compute_ms[s] for t in traces) for s in range(len(cuts) + 1)]
            start = time.perf_counter()
            n = sum(1 for _ in p.stream(x for _ in range(requests)))
            rate = n / (time.perf_counter() - start)
        bound = 1000.0 / max(per_stage)
        rows.append(f"| {label} | {' / '.join(f'{c:.2f}' for c in per_stage)} | {bound:.1f} | "
                    f"{rate:.1f} | {rate / bound:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/runtime.md")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = overhead_rows(tmp, args.repeats)
        b = throughput_rows(tmp, args.requests)
    text = ("### (a) Overhead per hop, 2 stages, loopback, float32 tensors, median of "
            f"{args.repeats}\n\n" + "\n".join(a) + "\n\n### (b) Pipelined throughput, zoo resnet "
            f"(1x3x32x32 float32 input), {args.requests} streamed requests, 8 in flight\n\n"
            + "\n".join(b) + "\n")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
