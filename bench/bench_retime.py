#!/usr/bin/env python3
"""Does re-timing a tuning database make its records true? (issue 15 part 3: the prior)

    python bench/bench_retime.py [--model mobilenetv2] [--input-size 224] [--target host] \\
        [--repeat 7] [--out bench/results/retime.md]

On a COPY of the target's tuning database (the default one is left as it is):

1. Before: per layer, what the database recorded for the layer's kernels (``database_times``:
   the record each kernel's build applies, x its calls) and what the layer, built alone from the
   database, measures here (``profile_layers`` in this process, ``--repeat`` medians).
2. ``retime.retime`` over the model and every layer alone (``--repeat`` runs per record).
3. After: the same two per layer.

Reports per layer and in sum: recorded / measured (the prior's error: 1.00 is a true record),
and the measured time of every layer summed (a re-timed database may apply other, really faster
schedules). Both measurements run on the same threads (TVM's default), like MetaSchedule's
runner. Run it on a quiet machine: a re-timed record is as good as the machine it was timed on.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tune import REAL, load_model  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.frontend import load  # noqa: E402
from tvmsplit.predict import database_times  # noqa: E402
from tvmsplit.profile import LocalSession, profile_layers  # noqa: E402
from tvmsplit.retime import retime  # noqa: E402
from tvmsplit.split import plan_split  # noqa: E402
from tvmsplit.targets import get_target  # noqa: E402
from tvmsplit.tunedb import default_db_dir  # noqa: E402


def measure(g, spec, db, repeat):
    got = profile_layers(g, spec, LocalSession(), number=3, repeat=repeat, db=db,
                         min_repeat_ms=20)
    return [m.timing.median_ms for m in got]


def summary(recorded, measured) -> dict:
    ratios = [r / m for r, m in zip(recorded, measured) if r == r and r > 0 and m > 0]
    errors = sorted(abs(x - 1) for x in ratios)
    return {"layers_with_records": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "median_error": statistics.median(errors) if errors else None,
            "p90_error": errors[int(0.9 * (len(errors) - 1))] if errors else None,
            "sum_recorded_ms": sum(r for r in recorded if r == r),
            "sum_measured_ms": sum(measured)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--target", default="host")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "retime.md"))
    args = p.parse_args()
    spec = get_target(args.target)
    if args.model in REAL:
        g = load_model(args.model)[0]
    else:
        g = load(zoo.make(args.model, input_size=args.input_size),
                 name=f"{args.model}{args.input_size}")
    src = default_db_dir(spec)
    if src is None or not src.is_dir():
        raise SystemExit(f"no tuning database for {spec.name} at {src}: tune first")
    with tempfile.TemporaryDirectory(prefix="bench-retime-") as tmp:
        db = Path(tmp) / "db"
        shutil.copytree(src, db, ignore=shutil.ignore_patterns("logs"))
        t0 = time.monotonic()
        rec_before, meas_before = database_times(g, spec, db), measure(g, spec, db, args.repeat)
        every_layer = plan_split(g, split_at=[layer.name for layer in g.layers[:-1]],
                                 targets=[spec.name])
        res = retime(g, spec, db=db, plans=[every_layer], repeat=args.repeat,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
        rec_after, meas_after = database_times(g, spec, db), measure(g, spec, db, args.repeat)
        wall = time.monotonic() - t0
    before, after = summary(rec_before, meas_before), summary(rec_after, meas_after)
    data = {"model": g.name, "target": spec.name, "repeat": args.repeat, "wall_s": wall,
            "retime": res.describe(), "before": before, "after": after,
            "layers": [{"layer": layer.name, "recorded_before": rb, "measured_before": mb,
                        "recorded_after": ra, "measured_after": ma}
                       for layer, rb, mb, ra, ma in zip(g.layers, rec_before, meas_before,
                                                        rec_after, meas_after)]}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))

    def row(name, s):
        return (f"| {name} | {s['layers_with_records']} | {s['median_ratio']:.2f} | "
                f"{s['median_error']:.1%} | {s['p90_error']:.1%} | {s['sum_recorded_ms']:.2f} | "
                f"{s['sum_measured_ms']:.2f} |")

    text = (f"{g.name} on {spec.name}, {args.repeat} runs per record and per layer, wall "
            f"{wall / 60:.1f} min; {res.describe()}\n\n"
            "| database | layers with records | recorded / measured, median | error median | "
            "error p90 | sum recorded ms | sum measured ms |\n|---|---|---|---|---|---|---|\n"
            f"{row('as tuned', before)}\n{row('re-timed', after)}\n")
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
