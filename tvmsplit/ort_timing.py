"""Time a whole model under onnxruntime, in this process: what a user would run instead of a split.

    python -m tvmsplit.ort_timing MODEL.onnx INPUTS.npz --threads 1 --repeat 7 --min-ms 100 \\
        --out RESULT.json

``evaluate`` runs it inside a testbed device's cgroup (``Testbed.spawn(where, ...,
in_namespace=False)``), so the times are that device's. Each of ``repeat`` samples is the mean
of as many back-to-back runs as fill ``min_ms`` (on a CPU-capped device a sample then spans
several quota periods, as ``profile.time_library`` does for TVM). RESULT.json holds
``{"samples_ms": [...], "threads": N, "onnxruntime": version}``; written atomically.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence

import numpy as np

from .atomic import write_json


def time_onnxruntime(model_bytes: bytes, inputs: Mapping[str, np.ndarray], *, threads: int = 1,
                     repeat: int = 7, min_ms: float = 100.0, warmup: int = 3) -> list[float]:
    """``repeat`` samples in ms, each the mean of the runs that fill ``min_ms``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    feed = dict(inputs)
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(repeat):
        runs, start = 0, time.perf_counter()
        while True:
            session.run(None, feed)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed * 1e3 >= min_ms:
                break
        samples.append(elapsed * 1e3 / runs)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmsplit.ort_timing", description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("inputs", help=".npz with one array per model input")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--min-ms", type=float, default=100.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import onnxruntime as ort

    with np.load(args.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    with open(args.model, "rb") as f:
        model = f.read()
    samples = time_onnxruntime(model, inputs, threads=args.threads, repeat=args.repeat,
                               min_ms=args.min_ms)
    write_json(args.out, {"samples_ms": samples, "threads": args.threads,
                          "onnxruntime": ort.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
