"""Stage DAG vs chain: the same layers on the same devices, run in parallel or one after another
(issue 5: "H-parts run in parallel where placed on several devices").

(a) HyPS: an MLP whose fc1 (4096 -> 8192, 134 MB of float32 weights) fits no device with a
    100 MB cap, so the planner splits it into H-parts, one per device (``plan_partition`` with
    FLOPs-derived costs, end device 8x slower than the edge: a stated stand-in). The plan is built
    twice: ``parallel=True`` (a stage DAG: the H-parts in their own stages, fed by the same stage,
    merged by another) and ``parallel=False`` (one stage per device, a chain: the end device's
    H-part runs before the edge's).
(b) Branches: the zoo Inception block at 128x128; stages 1 and 2 hold two pairs of branches.
    The same assignment with direct routes (stages 1 and 2 in parallel) and with chain routes.

(c) Prediction: for (a), each layer of the H-split MLP is profiled on this machine
    (``profile_layers``, TVM_NUM_THREADS=1; both "devices" are this machine, so end = edge =
    measured), and the plans are priced with a loopback link of 1 GB/s and 0.6 ms RTT (0.3 ms per
    hop, the measured per-hop overhead): the cost model's serial latency and the stage DAG's
    ``critical_path_ms``, against the measured medians.

Every worker is a local process with TVM_NUM_THREADS=1: one core each, so a "device" is one of
this machine's 2 cores and two stages in parallel really run at once; loopback, no shaping. Both
plans' pipelines are open at once and requests alternate between them (A, B, A, B, ...), so
machine noise falls on both alike. Reported: median end-to-end ms of single requests, ratio,
and throughput of streamed requests (8 in flight).

Usage: python bench/bench_dag.py [--out bench/results/dag.md] [--repeats 30] [--requests 60]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


os.environ.setdefault("TVM_NUM_THREADS", "1")  # inherited by the worker processes

import tvmsplit as ts
from tvmsplit.onnxbuild import mlp  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import compare, random_inputs, reference  # noqa: E402
from tvmsplit.devices import Device, Link  # noqa: E402
from tvmsplit.partition import CostTable  # noqa: E402
from tvmsplit.partition.problem import Problem, evaluate  # noqa: E402
from tvmsplit.planning import critical_path_ms, plan_partition  # noqa: E402
from tvmsplit.profile import LocalSession, profile_layers  # noqa: E402

CAP = 100_000_000


def big_mlp():
    """input [1,4096] -> fc1 Gemm 4096x8192 + Relu -> fc2 Gemm 8192x1000 -> output."""
    return mlp("big_mlp", [4096, 8192, 1000])


def side_by_side(label: str, graph, bundles: dict, repeats: int,
                 requests: int) -> tuple[list[str], dict[str, float]]:
    """Table rows for the plans in ``bundles`` and their median end-to-end ms."""
    x = random_inputs(graph.inputs, seed=1)
    want = reference(graph, x)
    pipes = {name: ts.Pipeline(b, max_in_flight=8, timeout_s=120) for name, b in bundles.items()}
    try:
        for name, p in pipes.items():
            for _ in range(3):
                y, _ = p.run(x)
            err = max(compare(y[k], want[k], k).rel for k in want)
            assert err <= 1e-4, f"{label} {name}: rel err {err}"
        totals = {name: [] for name in pipes}
        for _ in range(repeats):
            for name, p in pipes.items():
                totals[name].append(p.run(x)[1].total_ms)
        rates = {}
        for name, p in pipes.items():
            start = time.perf_counter()
            n = sum(1 for _ in p.stream(x for _ in range(requests)))
            rates[name] = n / (time.perf_counter() - start)
    finally:
        for p in pipes.values():
            p.close()
    med = {name: statistics.median(v) for name, v in totals.items()}
    b = list(bundles)[-1]
    rows = []
    for name in bundles:
        stages = len(bundles[name].stages)
        rows.append(f"| {label} | {name} ({stages} stages) | {med[name]:.2f} | "
                    f"{med[name] / med[b]:.2f} | {rates[name]:.1f} |")
        print(rows[-1], flush=True)
    return rows, med


def predicted_rows(planned: dict, measured: dict) -> list[str]:
    """Price each plan with measured layer costs: the serial cost model and the critical path."""
    graph = planned["stage DAG"].graph
    with LocalSession() as session:
        ms = {m.layer: m.timing.median_ms for m in profile_layers(graph, "x86_64", session)}
    costs = CostTable.from_mapping(("end", "edge"), {n: {"end": t, "edge": t} for n, t in ms.items()})
    problem = Problem(graph, costs, (Link("loopback", 8e9, 8e9, 0.0006),))
    rows = []
    for name, r in planned.items():
        serial = evaluate(problem, r.predicted.assignment).latency_ms
        path = critical_path_ms(problem, r.plan, r.stage_devices)
        rows.append(f"| {name} | {serial:.1f} | {path:.1f} | {measured[name]:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/dag.md")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--requests", type=int, default=60)
    args = ap.parse_args()
    rows = ["| model | plan | end-to-end ms (median) | vs chain | streamed req/s |",
            "|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        g = ts.load(big_mlp(), name="big_mlp")
        costs = CostTable.from_flops(g, {"end": 1.0, "edge": 8.0})
        devices = [Device("end", "x86_64", CAP), Device("edge", "x86_64", CAP)]
        bundles, planned = {}, {}
        for name, parallel in (("stage DAG", True), ("chain", False)):
            r = planned[name] = plan_partition(g, devices, [Link.profile("wifi")], costs,
                                               parallel=parallel)
            print(f"{name}: H-split {r.horizontal}, stages on devices {r.stage_devices}, "
                  f"layers {[s.layers for s in r.plan.stages]}", flush=True)
            bundles[name] = ts.build_bundle(r.graph, r.plan, f"{tmp}/mlp-{parallel}")
        mlp_rows, measured = side_by_side("MLP fc1 4096x8192, HyPS 2 parts", r.graph, bundles,
                                          args.repeats, args.requests)
        rows += mlp_rows
        prediction = predicted_rows(planned, measured)

        i = ts.load(zoo.make("inception", input_size=128), name="inception")
        assignment = {}
        for layer in i.layers:
            n = layer.name
            assignment[n] = (0 if n in ("conv1", "pool1") else
                             1 if n.startswith(("inc1_branch1x1", "inc1_branch3x3")) else
                             2 if n.startswith("inc1_branch") else 3)
        bundles = {name: ts.build_bundle(i, ts.plan_split(i, stage_of=assignment, routing=routing),
                                         f"{tmp}/inc-{routing}")
                   for name, routing in (("stage DAG", "direct"), ("chain", "chain"))}
        rows += side_by_side("Inception 128x128, branches in stages 1 and 2", i, bundles,
                             args.repeats, args.requests)[0]
    rows += ["", "Prediction for the MLP (measured layer costs, loopback link 1 GB/s, RTT 0.6 ms):",
             "", "| plan | cost model (serial) ms | critical path ms | measured ms |",
             "|---|---:|---:|---:|"] + prediction
    text = (f"Stage DAG vs chain, same layers and devices; local workers with TVM_NUM_THREADS=1 "
            f"(2 cores), loopback, float32 raw inputs; median of {args.repeats} single requests "
            f"alternating between the two plans, then {args.requests} streamed requests "
            "(8 in flight) each.\n\n" + "\n".join(rows) + "\n")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
