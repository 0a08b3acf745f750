"""Planner run time vs graph size and device count (issue 5 goal: < 1 s for 1,000 layers x 8 devices).

Synthetic graphs (no TVM): a chain with random skip connections (every layer reads its
predecessor, so the chain DP is exact) and random per-layer costs, tensor sizes and links.
Each cell is the median of 3 runs in this process. Usage: python bench/bench_planner.py [--out FILE]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from tvmsplit.devices import Link
from tvmsplit.graph import Layer, LayerGraph, TensorSpec
from tvmsplit.partition import PLANNERS, CostTable, Problem


def synthetic(n: int, k: int, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    x = TensorSpec("x", "float32", (150528,))
    specs = [TensorSpec(f"t{i}", "float32", (int(rng.integers(100, 200_000)),)) for i in range(n)]
    layers = []
    for i in range(n):
        reads = [x if i == 0 else specs[i - 1]]
        if i > 2 and rng.random() < 0.1:
            reads.append(specs[int(rng.integers(0, i - 1))])
        layers.append(Layer(f"L{i}", "Op", (f"L{i}",), ("Op",), tuple(reads), (specs[i],), 0, 0,
                            int(rng.integers(0, 1 << 20))))
    g = LayerGraph("synthetic", tuple(layers), (x,), (specs[-1],), "", None)
    speed = np.geomspace(1, 50, k)
    table = CostTable(tuple(f"d{d}" for d in range(k)), tuple(f"L{i}" for i in range(n)),
                      tuple(tuple(float(c / s) for s in speed) for c in rng.uniform(0.1, 5, n)))
    links = tuple(Link(f"l{h}", 20e6 * (h + 1), 50e6 * (h + 1), 0.01) for h in range(k - 1))
    return Problem(g, table, links)


def timed(fn, problem, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(problem)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/planner.md")
    args = ap.parse_args()
    rows = ["| layers | devices | chain-dp s | dag-mincut s | dag-ilp s |", "|---:|---:|---:|---:|---:|"]
    for n in (100, 1000, 5000):
        for k in (2, 4, 8):
            problem = synthetic(n, k)
            chain = timed(PLANNERS["chain-dp"], problem)
            cut = f"{timed(PLANNERS['dag-mincut'], problem):.3f}" if k == 2 else "-"
            ilp = f"{timed(PLANNERS['dag-ilp'], problem, 1):.3f}" if n * k <= 8000 else "-"
            rows.append(f"| {n} | {k} | {chain:.3f} | {cut} | {ilp} |")
            print(rows[-1], flush=True)
    text = (f"Planner run time, {platform.machine()} {platform.processor() or ''} "
            f"(2 cores), median of 3 (ILP: 1 run)\n\n" + "\n".join(rows) + "\n")
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
