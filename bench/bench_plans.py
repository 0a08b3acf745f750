"""Chosen plans for the zoo models across 3G, 4G and Wi-Fi, against the baselines (issue 5).

Costs are measured: every layer of every model is compiled alone for x86_64 and timed on this
machine (``profile_layers``, median of 3 x 5 runs, untuned TVM). That is the edge server. No Pi is
here, so the END device's per-layer times are the same measurements x END_SLOWDOWN (a stand-in,
stated in the results: qemu time is not Pi time either, it runs 11-16x slower than native here).
Input encoding: the raw float32 tensor. Links: up/down 1.1/4.6 (3G), 8.8/29.1 (4G),
18.88/54.97 (Wi-Fi) Mbit/s with RTT 100/50/10 ms.

Usage: python bench/bench_plans.py [--out bench/results/plans.md] [--slowdown 8]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "1")

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.devices import Link  # noqa: E402
from tvmsplit.partition import PLANNERS, CostTable, Problem, plan  # noqa: E402
from tvmsplit.profile import LocalSession, profile_layers  # noqa: E402

MODELS = {"chain": {}, "resnet": {}, "inception": {}, "mobilenetv2": {},
          "vgg16": {"input_size": 64, "width": 0.5}}


def describe(g, assignment) -> str:
    if len(set(assignment)) == 1:
        return "all on end" if assignment[0] == 0 else "all on edge"
    last_end = max(i for i, d in enumerate(assignment) if d == 0)
    moved = [i for i in range(last_end) if assignment[i] == 1]
    return f"cut after {g.layers[last_end].name}" + (f" (+{len(moved)} branch layers on edge)" if moved else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/plans.md")
    ap.add_argument("--slowdown", type=float, default=8.0)
    args = ap.parse_args()
    rows = ["| model | link | objective | chosen plan (planner) | predicted | all-on-end | all-on-edge | "
            "neurosurgeon (chain-dp) | best baseline / plan |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for name, kw in MODELS.items():
        g = ts.load(zoo.make(name, **kw), name=name)
        with LocalSession() as session:
            measured = profile_layers(g, "x86_64", session, number=5, repeat=3)
        edge = {m.layer: m.timing.median_ms for m in measured}
        costs = CostTable.from_mapping(["end", "edge"], {
            layer: {"end": ms * args.slowdown, "edge": ms} for layer, ms in edge.items()})
        print(f"{name}: {len(g.layers)} layers, edge total {sum(edge.values()):.1f} ms", flush=True)
        for link_name in ("3g", "4g", "wifi"):
            for objective in ("latency", "throughput"):
                problem = Problem(g, costs, (Link.profile(link_name),), objective=objective)
                method, best = plan(problem)
                base = {b: PLANNERS[b](problem) for b in ("all-on-end", "all-on-edge", "chain-dp")}
                unit = "ms" if objective == "latency" else "ms/bottleneck"
                value = lambda b: b.objective(objective)  # noqa: E731
                best_base = min(value(b) for b in base.values())
                rows.append(f"| {name} | {link_name} | {objective} | {describe(g, best.assignment)} "
                            f"({method}) | {value(best):.1f} {unit} | {value(base['all-on-end']):.1f} | "
                            f"{value(base['all-on-edge']):.1f} | {value(base['chain-dp']):.1f} | "
                            f"{best_base / value(best):.2f}x |")
                print(rows[-1], flush=True)
    text = (f"End device = measured x86_64 layer times x {args.slowdown:g} (stand-in); edge = "
            "measured x86_64 (untuned TVM, 1 thread); raw float32 input.\n\n" + "\n".join(rows) + "\n")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
