"""Several end devices, one edge, on the testbed (issue 15 part 6; ITU-T F.748.20 section 8.2).

For each end-device count x link x deadline, ``tvmsplit.multi_eval.evaluate_shared`` (root): layer
costs measured on the capped end device (pi-class: core 0 at 10 %) and on the edge core (core 1),
``plan_shared_edge`` on them, then all N clients streaming at once (one request in flight each)
under four settings, interleaved in rounds: the planned shares enforced (per-client CPU quota
on core 1, per-client tbf), unshared (each device's best plan alone, no quotas, the link split
evenly), all-edge and all-end. ``--deadlines auto`` adds a case where the FIRST end device has
a deadline it meets alone (its all-end prediction + 20 %), so the planner leaves the edge to the
others.

    python3 bench/bench_multi.py [--model chain] [--input-size 96] [--ns 2,3] [--links 4g] \\
        [--deadlines none,auto] [--requests 12] [--rounds 2] [--out bench/results/multi.md]

Writes one JSON per case (``--json-dir``) and Markdown tables to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tvmsplit import zoo  # noqa: E402
from tvmsplit.devices import Device, Link  # noqa: E402
from tvmsplit.evaluate import measured_costs  # noqa: E402
from tvmsplit.frontend import load  # noqa: E402
from tvmsplit.multi_eval import evaluate_shared  # noqa: E402
from tvmsplit.partition import Problem  # noqa: E402
from tvmsplit.partition.problem import evaluate as price  # noqa: E402


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def table(data: dict) -> list[str]:
    out = ["| setting | device | compute share | uplink share | plan | predicted ms | "
           "measured ms (median) | p90 ms | answered / sent | error |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in data["settings"]:
        for c in s["clients"]:
            share = lambda v: "free" if v is None else f"{v:.2f}"  # noqa: E731
            out.append(f"| {s['name']} | {c['name']} | {share(c['compute_share'])} | "
                       f"{share(c['bandwidth_share'])} | {c['plan']} | {c['predicted_ms']:.1f} | "
                       f"{_fmt(c['measured_ms'])} | {_fmt(c['p90_ms'])} | "
                       f"{c['answered']} / {c['sent']} | {_fmt(c['error'], '+.0%')} |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="chain")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--ns", default="2,3")
    p.add_argument("--links", default="4g")
    p.add_argument("--deadlines", default="none,auto")
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "multi.md"))
    p.add_argument("--json-dir", default=str(ROOT / "bench" / "results" / "multi"))
    args = p.parse_args()
    devices = (Device("end", "pi-class"), Device("edge", "host"))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    g = load(zoo.make(args.model, input_size=args.input_size, width=args.width),
             name=f"{args.model}{args.input_size}" + (f"w{args.width:g}" if args.width != 1 else ""))
    costs = measured_costs(g, devices, log=log)
    json_dir = Path(args.json_dir)
    json_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Several end devices, one edge: {g.name} (bench/bench_multi.py)", ""]
    summary = ["| end devices | link | deadline (end1) | planned: plans (shares) | worst ms "
               "planned (predicted) | unshared | all-edge | all-end | unshared / planned | "
               "best other / planned | lost |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for link_name in args.links.split(","):
        link = Link.profile(link_name)
        all_end = price(Problem(g, costs, (link,)), (0,) * len(g.layers)).latency_ms
        for n in (int(x) for x in args.ns.split(",")):
            for dl in args.deadlines.split(","):
                deadline = None if dl == "none" else [round(all_end * 1.2, 1)] + [None] * (n - 1)
                t0 = time.monotonic()
                ev = evaluate_shared(g, n=n, devices=devices, link=link, deadline_ms=deadline,
                                     steps=args.steps, requests=args.requests, rounds=args.rounds,
                                     costs=costs, log=log)
                data = ev.to_json()
                data["wall_s"] = time.monotonic() - t0
                name = f"{g.name}-{link_name}-n{n}-{dl}"
                (json_dir / f"{name}.json").write_text(json.dumps(data, indent=1))
                planned = data["settings"][0]
                plans = ", ".join(f"{c['name']} {c['plan']} ({c['compute_share']:.2f}/"
                                  f"{c['bandwidth_share']:.2f})" for c in planned["clients"])
                w = data["worst_ms"]
                summary.append(
                    f"| {n} | {link_name} | {_fmt(deadline[0] if deadline else None)} | {plans} | "
                    f"{w['planned']:.1f} ({planned['worst_predicted_ms']:.1f}) | "
                    f"{w.get('unshared', float('nan')):.1f} | {w.get('all-edge', float('nan')):.1f} | "
                    f"{w.get('all-end', float('nan')):.1f} | {data['unshared_gain'] or float('nan'):.2f}x | "
                    f"{data['worst_gain']:.2f}x | {data['lost']} |")
                lines += [f"## {n} end devices, {link_name}, deadline "
                          f"{_fmt(deadline[0] if deadline else None)} ms for end1 "
                          f"({data['wall_s']:.0f} s)", "", *table(data), ""]
                print("\n".join(summary), file=sys.stderr, flush=True)
    Path(args.out).write_text("\n".join(lines[:2] + summary + [""] + lines[2:]) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
