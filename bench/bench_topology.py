"""Planner over device graphs: planner time and the heuristic's gap to the oracle.

    PYTHONPATH=. python3 bench/bench_topology.py [--rounds 3] [--out bench/results/topology.json]

Synthetic problems (no TVM): a chain of n layers (each reads the previous one) or a DAG (with
probability 0.4 a layer reads a random earlier layer instead of the previous one: parallel
branches; with probability 0.3 it also reads another earlier one; tensors nobody reads feed the
last layer); per-layer base times
0.1-5 ms scaled by a per-device speed; output sizes 1-400 KB; k devices in a full graph, each pair
joined by a link of 10-1000 Mbit/s each way and 0.2-20 ms rtt; the input at device 0, results
back to it. "4+4 types": PipeEdge-style, 4 devices of one type and 4 of another, one link kind.

Timings are interleaved: every round runs every configuration once; the median per configuration
is reported. Gaps: the heuristic (topo-dp-ilp) and the DP alone (topo-dp, consecutive segments)
against the brute-force oracle on random small DAGs (2-4 devices, 1-6 layers, random graphs), and
against the exact route enumeration on medium DAGs (4 devices, 30 layers).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from tvmsplit.devices import Link
from tvmsplit.graph import Layer, LayerGraph, TensorSpec
from tvmsplit.partition import CostTable, PlanningError
from tvmsplit.partition.routes import (TopoProblem, plan_routes_dp, plan_routes_exact,
                                       plan_routes_heuristic, plan_routes_oracle)
from tvmsplit.partition.topology import Topology


def synthetic(n: int, dag: bool, rng: random.Random) -> LayerGraph:
    x = TensorSpec("x", "float32", (rng.randint(1000, 100_000),))
    specs = [TensorSpec(f"t{i}", "float32", (rng.randint(250, 100_000),)) for i in range(n)]
    layers = []
    for i in range(n):
        reads = [x if i == 0 else specs[i - 1]]
        if dag and i > 1 and rng.random() < 0.4:  # a branch: read an earlier layer instead
            reads = [specs[rng.randrange(i - 1)]]
        if dag and i > 1 and rng.random() < 0.3:  # and a skip
            reads.insert(0, specs[rng.randrange(i - 1)])
        reads = list(dict.fromkeys(reads))
        layers.append(Layer(f"L{i}", "Op", (f"L{i}",), ("Op",), tuple(reads), (specs[i],), 0, 0,
                            rng.randint(0, 2_000_000)))
    consumed = {t.name for layer in layers for t in layer.inputs}
    last = layers[-1]
    extra = tuple(s for s in specs[:-1] if s.name not in consumed)
    layers[-1] = Layer(last.name, "Op", last.nodes, last.ops, last.inputs + extra, last.outputs,
                       0, 0, last.param_bytes)
    return LayerGraph("synthetic", tuple(layers), (x,), (specs[-1],), "", None)


def problem(n: int, k: int, dag: bool, seed: int, types: bool = False,
            objective: str = "latency") -> TopoProblem:
    rng = random.Random(seed)
    g = synthetic(n, dag, rng)
    if types:
        lan = Link("lan", 1000e6, 1000e6, 0.0002)
        topo, kind = Topology.from_types({"a": k // 2, "b": k - k // 2},
                                         {("a", "a"): lan, ("a", "b"): lan, ("b", "b"): lan})
        speed = {"a": 1.0, "b": 0.3}
        speeds = {d: speed[kind[d]] for d in topo.devices}
    else:
        names = [f"d{d}" for d in range(k)]
        conns = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                conns.append((a, b, Link(f"{a}-{b}", rng.uniform(10e6, 1000e6),
                                         rng.uniform(10e6, 1000e6), rng.uniform(0.0002, 0.02))))
        from tvmsplit.partition.topology import Connection

        topo = Topology(tuple(names), tuple(Connection(a, b, link) for a, b, link in conns))
        speeds = {d: (1.0 if d == "d0" else rng.uniform(0.05, 0.8)) for d in names}
    base = [rng.uniform(0.1, 5.0) for _ in range(n)]
    table = {f"L{i}": {d: base[i] * s for d, s in speeds.items()} for i in range(n)}
    return TopoProblem(g, CostTable.from_mapping(topo.devices, table), topo, topo.devices[0],
                       objective=objective)


def random_reads(n: int, k: int, rng: random.Random) -> TopoProblem:
    """The tests' distribution: each layer reads a random non-empty set of up to 3 earlier
    tensors (so branches are everywhere), times 0-50 ms drawn per layer and device, a random
    connected device graph (links 1-1000 Mbit/s, rtt 0 / 1 / 20 ms)."""
    from tvmsplit.partition.topology import Connection

    x = TensorSpec("x", "float32", (rng.randint(1, 4000),))
    specs = [TensorSpec(f"t{i}", "float32", (rng.randint(1, 4000),)) for i in range(n)]
    reads = [[([x] + specs[:i])[p] for p in sorted(rng.sample(range(i + 1), rng.randint(1, min(3, i + 1))))]
             for i in range(n)]
    consumed = {t.name for r in reads for t in r}
    for i in range(n - 1):
        if specs[i].name not in consumed:
            reads[-1].append(specs[i])
    layers = tuple(Layer(f"L{i}", "Op", (f"L{i}",), ("Op",), tuple(reads[i]), (specs[i],), 0, 0,
                         rng.randint(0, 5000)) for i in range(n))
    g = LayerGraph("random", layers, (x,), (specs[-1],), "", None)
    names = [f"d{d}" for d in range(k)]

    def link():
        return Link("l", rng.uniform(1e6, 1e9), rng.uniform(1e6, 1e9), rng.choice([0.0, 0.001, 0.02]))

    conns = [Connection(names[rng.randrange(d)], names[d], link()) for d in range(1, k)]
    linked = {frozenset((c.a, c.b)) for c in conns}
    conns += [Connection(a, b, link()) for i, a in enumerate(names) for b in names[i + 1:]
              if frozenset((a, b)) not in linked and rng.random() < 0.5]
    table = {layer.name: {d: rng.uniform(0, 50) for d in names} for layer in g.layers}
    return TopoProblem(g, CostTable.from_mapping(names, table), Topology(tuple(names), tuple(conns)),
                       "d0", objective=rng.choice(["latency", "throughput"]))


def timed(fn, tp):
    t0 = time.perf_counter()
    result = fn(tp)
    return time.perf_counter() - t0, result


PLANNERS = {"topo-dp": plan_routes_dp, "topo-routes": plan_routes_exact,
            "topo-dp-ilp": plan_routes_heuristic}


def timings(rounds: int) -> list[dict]:
    configs = []
    for n in (100, 1000):
        for k, types in ((4, False), (8, False), (8, True)):
            for dag in (False, True):
                for method in ("topo-dp", "topo-routes", "topo-dp-ilp"):
                    if not dag and method == "topo-dp-ilp":
                        continue  # chains: the DP is exact
                    if method == "topo-routes" and k == 8 and not types:
                        continue  # 5040 routes: not run
                    if method == "topo-routes" and dag and n == 1000 and k == 8:
                        continue  # 35 MILPs of 1000 layers: not run
                    configs.append({"n": n, "k": k, "types": types, "dag": dag, "method": method,
                                    "objective": "latency"})
            # throughput (PipeEdge's objective): the DP's O(n^2) step
            configs.append({"n": n, "k": k, "types": types, "dag": False, "method": "topo-dp",
                            "objective": "throughput"})
    for c in configs:
        c["tp"] = problem(c["n"], c["k"], c["dag"], seed=c["n"] + c["k"], types=c["types"],
                          objective=c["objective"])
        c["times"] = []
    for r in range(rounds):
        for c in configs:
            dt, result = timed(PLANNERS[c["method"]], c["tp"])
            c["times"].append(dt)
            c["latency_ms"] = result.breakdown.latency_ms
            c["bottleneck_ms"] = result.breakdown.bottleneck_ms
            c["route"] = list(result.route)
            c["routes_tried"] = result.routes_tried
            print(f"round {r} n={c['n']} k={c['k']}{' types' if c['types'] else ''} "
                  f"{'dag' if c['dag'] else 'chain'} {c['method']}: {dt:.3f} s, "
                  f"{result.breakdown.latency_ms:.3f} ms", flush=True)
    out = []
    for c in configs:
        out.append({k: v for k, v in c.items() if k != "tp"} | {"median_s": statistics.median(c["times"])})
    return out


def gaps(cases: int, seed: int = 1) -> dict:
    """Heuristic and DP vs the oracle on small DAGs (the benchmark's DAGs and the tests'
    random-reads DAGs), and vs the exact route enumeration on 30-layer ones."""
    rng = random.Random(seed)
    out = {}
    families = {
        "small_bench_dags_vs_oracle": (lambda i: problem(rng.randint(1, 6), rng.randint(2, 4),
                                                         True, seed=seed * 100_000 + i),
                                       plan_routes_oracle, cases),
        "small_random_reads_vs_oracle": (lambda i: random_reads(rng.randint(1, 6),
                                                                rng.randint(2, 4), rng),
                                         plan_routes_oracle, cases),
        "medium_random_reads_vs_exact": (lambda i: random_reads(30, 4, rng), plan_routes_exact,
                                         max(1, cases // 10)),
    }
    for family, (make, reference, count) in families.items():
        stats = {"cases": 0, "heuristic_worse": 0, "dp_worse": 0, "heuristic_max_rel_gap": 0.0,
                 "dp_max_rel_gap": 0.0, "heuristic_mean_rel_gap": 0.0, "dp_mean_rel_gap": 0.0}
        for i in range(count):
            tp = make(i)
            try:
                best = reference(tp).breakdown.objective(tp.objective)
            except PlanningError:
                continue
            if best <= 0:
                continue
            stats["cases"] += 1
            for name, fn in (("heuristic", plan_routes_heuristic), ("dp", plan_routes_dp)):
                gap = fn(tp).breakdown.objective(tp.objective) / best - 1
                stats[f"{name}_worse"] += gap > 1e-9
                stats[f"{name}_max_rel_gap"] = max(stats[f"{name}_max_rel_gap"], gap)
                stats[f"{name}_mean_rel_gap"] += gap
        for name in ("heuristic", "dp"):
            stats[f"{name}_mean_rel_gap"] /= max(1, stats["cases"])
        out[family] = stats
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gap-cases", type=int, default=300)
    ap.add_argument("--out", default="bench/results/topology.json")
    args = ap.parse_args()
    result = {"timings": timings(args.rounds), "gaps": gaps(args.gap_cases)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["gaps"], indent=2))
    print(f"{'n':>5} {'devices':>10} {'model':>6} {'objective':>10} {'planner':>12} "
          f"{'median s':>9} {'objective ms':>12}")
    for c in result["timings"]:
        devices = f"{c['k']}" + (" (4+4)" if c["types"] else "")
        value = c["latency_ms"] if c["objective"] == "latency" else c["bottleneck_ms"]
        print(f"{c['n']:>5} {devices:>10} {'dag' if c['dag'] else 'chain':>6} "
              f"{c['objective']:>10} {c['method']:>12} {c['median_s']:>9.3f} {value:>12.3f}")


if __name__ == "__main__":
    main()
