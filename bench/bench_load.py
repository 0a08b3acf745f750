#!/usr/bin/env python3
"""Load time of a large model: ``tvmsplit inspect`` / ``plan`` on the VGG16 zoo model, two trees.

    python bench/bench_load.py BEFORE_TREE AFTER_TREE [--runs 5] [--model zoo:vgg16]

Runs ``python -m tvmsplit inspect MODEL`` and ``python -m tvmsplit plan MODEL --costs FILE``
(a flat cost table, so planning itself is negligible) from each source tree (PYTHONPATH=tree),
interleaved (before, after, before, after, ...) so drift on a shared machine hits both alike, and
prints the wall-clock median of each with the ratio. Also checks that both trees print the same
``inspect`` table. Then times the phases of ``frontend.load`` in-process for the AFTER tree.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(tree: str, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": tree}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tvmsplit", *args], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default="zoo:vgg16")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        costs = Path(tmp) / "costs.csv"
        layers = [line.split()[1] for line in timed(a.after, ["inspect", a.model])[1].splitlines()
                  if line[:3].strip().isdigit()]
        costs.write_text("layer,end,edge\n" + "".join(f"{n},10,1\n" for n in layers))
        commands = {"inspect": ["inspect", a.model],
                    "plan": ["plan", a.model, "--devices", "end=rpi4b,edge=x86_64",
                             "--costs", str(costs)]}
        for what, args in commands.items():
            times: dict[str, list[float]] = {"before": [], "after": []}
            outputs = {}
            for _ in range(a.runs):
                for side in ("before", "after"):
                    t, out = timed(getattr(a, side), args)
                    times[side].append(t)
                    outputs[side] = out
            same = "same output" if outputs["before"] == outputs["after"] else "OUTPUT DIFFERS"
            b, f = statistics.median(times["before"]), statistics.median(times["after"])
            print(f"{what} {a.model}: before {b:.2f} s, after {f:.2f} s (median of {a.runs}, "
                  f"interleaved), {b / f:.1f}x faster; {same}; before runs "
                  f"{', '.join(f'{t:.1f}' for t in times['before'])}; after runs "
                  f"{', '.join(f'{t:.1f}' for t in times['after'])}", flush=True)
    phases(a.after)


def phases(tree: str) -> None:
    """Time the steps of ``load`` on the zoo VGG16 in-process (the AFTER tree)."""
    sys.path.insert(0, tree)
    import hashlib

    import onnx

    from tvmsplit import frontend, zoo

    t = time.perf_counter()
    model = zoo.make("vgg16")
    steps = [("zoo.make (random weights)", time.perf_counter() - t)]
    for name, fn in [
        ("serialise for the hash", lambda: model.SerializeToString()),
        ("sha256", lambda: hashlib.sha256(data).hexdigest()),
        ("checker on the weightless copy",
         lambda: onnx.checker.check_model(frontend._without_weights(model))),
        ("weight size check", lambda: frontend._check_weight_sizes(model)),
        ("copy (pinning shapes)", lambda: frontend._copy(model)),
        ("import TVM (supported ops)", frontend.supported_ops),
        ("shape inference on the weightless copy", lambda: frontend._infer_shapes(model)),
        ("whole load", lambda: frontend.load(model, name="vgg16")),
    ]:
        t = time.perf_counter()
        value = fn()
        steps.append((name, time.perf_counter() - t))
        if name == "serialise for the hash":
            data = value
    for name, s in steps:
        print(f"  {name}: {s:.2f} s")


if __name__ == "__main__":
    main()
