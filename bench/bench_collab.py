"""Does the split pay, and does the planner pick the best one? (issue 15)

For each model x link x end-device load, ``tvmsplit.evaluate.evaluate`` on the testbed (root):
layer costs measured on the capped end device (pi-class: core 0 at 10 %) and on the edge (core
1), the planner's choice and every alternative (all on the end, all on the edge, every single
cut) built and run as real pipelines over the shaped link, interleaved in rounds, medians; the
single sites are the tvmsplit all-end / all-edge runs and onnxruntime timed inside each
device's cgroup. Builds use each target's tuning database when it has one (`tvmsplit tune
zoo:M --target host` and `--target pi-class` first; the table says which).

    python3 bench/bench_collab.py [--models chain,resnet,orientation] [--links 3g,4g,wifi] \\
        [--loads none,high] [--inputs raw,20000] [--requests 9] [--rounds 3] [--prune 5] \\
        [--out bench/results/collab.md]

``--models``: zoo models (at ``--input-size``) and the real models of bench_tune.REAL
(``orientation``, ``ocr_cls``, ``ocr_det``: ONNX files shipped in PyPI wheels, at their own
input shapes). ``--prune X``: a plan predicted over X times the best prediction runs one
request (``evaluate(prune=)``; 0: all plans, all rounds).

``--inputs``: what the client sends, per case: ``raw`` (the float32 tensor) or a JPEG size in
bytes (``evaluate(input_bytes=N)``: the quality nearest N; the table gives the size used and
each device's measured decode time).

Writes one JSON per case (``--json-dir``) and a Markdown table to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_tune import REAL, load_model  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.devices import Device, Link  # noqa: E402
from tvmsplit.evaluate import evaluate  # noqa: E402
from tvmsplit.frontend import load  # noqa: E402
from tvmsplit.targets import get_target  # noqa: E402
from tvmsplit.tunedb import find_database  # noqa: E402


def _num(value, spec: str) -> str:
    """A figure, or "failed" where evaluate's JSON has null (a plan that did not finish)."""
    return "failed" if value is None else format(value, spec)


def tuned(target: str) -> str:
    try:
        db = find_database(get_target(target), None)
    except Exception as exc:  # noqa: BLE001 - report, do not stop the bench
        return f"? ({exc})"
    return "tuned" if db is not None else "untuned"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="chain,resnet")
    p.add_argument("--links", default="3g,4g,wifi")
    p.add_argument("--loads", default="none")
    p.add_argument("--input-size", type=int, default=None,
                   help="the zoo models' input height/width (default: each model's own)")
    p.add_argument("--inputs", default="raw",
                   help="comma-separated: raw (the float32 tensor) and/or JPEG sizes in bytes")
    p.add_argument("--objective", default="latency", choices=["latency", "throughput"])
    p.add_argument("--requests", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prune", type=float, default=5.0)
    p.add_argument("--worker", default="python", choices=["python", "native"])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "collab.md"))
    p.add_argument("--json-dir", default=str(ROOT / "bench" / "results" / "collab"))
    args = p.parse_args()
    devices = (Device("end", "pi-class"), Device("edge", "host"))
    json_dir = Path(args.json_dir)
    json_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        if model in REAL:
            g = load_model(model)[0]
        else:
            kw = {"input_size": args.input_size} if args.input_size else {}
            g = load(zoo.make(model, **kw), name=f"{model}{args.input_size or ''}")
        for link_name, level, sent in product(args.links.split(","), args.loads.split(","),
                                              args.inputs.split(",")):
            t0 = time.monotonic()
            ev = evaluate(g, devices=devices, link=Link.profile(link_name), load=level,
                          objective=args.objective, requests=args.requests,
                          rounds=args.rounds, prune=args.prune or None, worker=args.worker,
                          input_bytes=None if sent == "raw" else int(sent),
                          log=lambda m: print(m, file=sys.stderr, flush=True))
            data = ev.to_json()
            data["wall_s"] = time.monotonic() - t0
            data["tuning"] = {d.target: tuned(d.target) for d in devices}
            tag = ("" if sent == "raw" else f"-jpeg{sent}") + (
                "" if args.worker == "python" else f"-{args.worker}")
            (json_dir / f"{g.name}-{link_name}-{level}{tag}-{args.objective}.json").write_text(
                json.dumps(data, indent=1))
            chosen = next(x for x in data["plans"] if x["name"] == data["chosen"])
            errors = sorted(abs(x["error"]) for x in data["plans"] if x["error"] is not None)
            inp = data["input"]
            what = (f"raw {inp['bytes']} B" if inp["encoding"] == "raw" else
                    f"JPEG {inp['bytes']} B q{inp['quality']} (decode "
                    + " / ".join(f"{ms:.2f}" for ms in inp["decode_ms"].values()) + " ms)")
            rows.append(
                f"| {g.name} | {what} | {link_name} | {level} | {data['chosen']} | "
                f"{chosen['predicted']:.1f} | {_num(chosen['measured'], '.1f')} | {data['best']} | "
                f"{_num(data['regret'], '.3f')} | {data['speedup']:.2f}x ({list(data['best_single_site'])[0]}) | "
                f"{errors[len(errors) // 2]:.1%} / {errors[-1]:.1%} | {data['noise']:.1%} | "
                f"{data['tuning']['pi-class']}/{data['tuning']['host']} |")
            print(rows[-1], flush=True)
    unit = "ms" if args.objective == "latency" else "req/s"
    head = (f"objective {args.objective}; {args.requests} requests per plan in {args.rounds} "
            f"interleaved rounds; end pi-class (core 0 at 10 %, 1 thread), edge host (core 1); "
            f"{args.worker} workers; plans predicted over {args.prune:g}x the best run once\n\n"
            f"| model | input (decode end / edge) | link | end load | chosen | predicted {unit} | measured {unit} | best "
            f"measured | regret | speedup over best single site | prediction error median / "
            f"worst (all plans) | noise (median IQR/median) | tuning end/edge |\n"
            f"|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    Path(args.out).write_text(head + "\n".join(rows) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
