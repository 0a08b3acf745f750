"""Float32 drift of TVM's CPU builds vs onnxruntime, both against a float64 reference
(issue 12 part 6: the attention tail), and what ``fast-math-reassoc`` costs in speed.

    python bench/bench_numerics.py [--repeat 15]

Per operator (single-op ONNX models at attention/recogniser shapes) and per model (zoo vit, bert,
resnet; rapidocr's PP-OCRv4 recogniser pinned to 1x3x48x320 and fully simplified with onnxsim,
when installed): max |y - ref64| / max(max |ref64|, 1e-3) for onnxruntime float32, and TVM
built by tvmsplit (``compile.build_stage``) strict (``fast-math-reassoc`` off, the old default)
and with the flag (the default now). The float64 reference is the same model with float64 weights
and inputs, run by onnxruntime (``onnx.reference`` where onnxruntime has no double kernel).
Timing: the two TVM builds of each model alternate, one ``time_evaluator`` run each per round
(2 threads), median over rounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.compile import build_stage
from tvmsplit.targets import get_target

STRICT = {"fast-math-reassoc": False}


def _model(nodes, inputs, inits=()) -> onnx.ModelProto:
    f = TensorProto.FLOAT
    g = helper.make_graph(nodes, "op", [helper.make_tensor_value_info(n, f, list(a.shape))
                                        for n, a in inputs.items()],
                          [helper.make_tensor_value_info("y", f, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def op_cases(rng) -> list[tuple[str, onnx.ModelProto, dict]]:
    f32 = np.float32
    s = (3 * rng.standard_normal((1, 40, 6625))).astype(f32)
    a = (4 * rng.standard_normal((1, 4, 65, 65))).astype(f32)
    q, k = rng.standard_normal((1, 4, 65, 48)).astype(f32), rng.standard_normal((1, 4, 48, 65)).astype(f32)
    x = rng.standard_normal((1, 40, 480)).astype(f32)
    w = (rng.standard_normal((480, 480)) / math.sqrt(480)).astype(f32)
    ln = [("g", np.ones(480, f32)), ("b", np.zeros(480, f32))]
    node = helper.make_node
    return [
        ("Softmax [1,40,6625] (logits std 3)", _model([node("Softmax", ["x"], ["y"], axis=-1)], {"x": s}), {"x": s}),
        ("Softmax [1,4,65,65] (logits std 4)", _model([node("Softmax", ["x"], ["y"], axis=-1)], {"x": a}), {"x": a}),
        ("Exp [1,4,65,65]", _model([node("Exp", ["x"], ["y"])], {"x": a}), {"x": a}),
        ("MatMul Q K^T (K=48)", _model([node("MatMul", ["q", "k"], ["y"])], {"q": q, "k": k}), {"q": q, "k": k}),
        ("MatMul x W (K=480)", _model([node("MatMul", ["x", "w"], ["y"])], {"x": x}, [("w", w)]), {"x": x}),
        ("ReduceMean 480 (mean 3)", _model([node("ReduceMean", ["x"], ["y"], axes=[-1])], {"x": x + 3}), {"x": x + 3}),
        ("LayerNorm 480 (mean 30)", _model([node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                                           {"x": x + 30}, ln), {"x": x + 30}),
        ("Erf [1,40,480]", _model([node("Erf", ["x"], ["y"])], {"x": 3 * x}), {"x": 3 * x}),
    ]


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float initializers, inputs/outputs, Constants, Casts."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    del g.value_info[:]
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR \
                    and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64)))
    return m


def reference64(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    m64 = to_float64(model)
    f64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    try:
        sess = ort.InferenceSession(m64.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, f64)[0]
    except Exception:  # noqa: BLE001 (no double kernel for some op: numpy's reference)
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(m64).run(None, f64)[0]


def rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-3))


def tvm_builds(g: ts.LayerGraph, work: Path) -> dict[str, tuple[object, object]]:
    """{"strict": (runner, vm), "reassoc": ...}: the one-stage model built both ways."""
    from tvmsplit.runtime.stage import StageRunner

    plan = ts.plan_split(g, targets=["x86_64"])
    stage = plan.stages[0]
    spec = get_target("x86_64")
    out = {}
    for label, extra in (("strict", STRICT), ("reassoc", {})):
        s = dataclasses.replace(spec, target=tuple({**spec.target_dict, **extra}.items()))
        lib = build_stage(g, stage, s, work / f"{g.name}_{label}.so").path
        out[label] = StageRunner(lib, stage)
    return out


def run(runner, feeds) -> np.ndarray:
    return next(iter(runner.run(feeds).values()))


def time_ms(runners, feeds, rounds: int) -> dict[str, float]:
    import tvm

    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():  # interleaved
            args = [tvm.runtime.tensor(np.require(feeds[t.name], requirements="C"))
                    for t in r.stage.library_inputs]
            ev = r._vm.time_evaluator("main", tvm.cpu(), number=5, repeat=1)
            times[k].append(ev(*args).mean * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def model_cases(rng):
    yield "zoo:vit", zoo.make("vit"), {"input": rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)}
    mask = np.ones((1, 16), np.int64)
    yield "zoo:bert", zoo.make("bert"), {"input_ids": rng.integers(0, 1000, (1, 16)),
                                         "attention_mask": mask}
    yield "zoo:resnet", zoo.make("resnet"), {"input": rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)}
    if importlib.util.find_spec("rapidocr_onnxruntime") is not None:
        import onnxsim

        path = resources.files("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_rec_infer.onnx"
        m = onnx.load(str(path))
        name = m.graph.input[0].name
        m, _ = onnxsim.simplify(m, overwrite_input_shapes={name: [1, 3, 48, 320]})
        for kind, x in (("uniform [0,1)", rng.uniform(0, 1, (1, 3, 48, 320))),
                        ("N(0,1)", rng.standard_normal((1, 3, 48, 320)))):
            yield f"PP-OCRv4 rec 320, {kind}", m, {name: x.astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timing rounds per model")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("| operator | onnxruntime | TVM strict | TVM reassoc |\n|---|---|---|---|")
        for i, (label, m, feeds) in enumerate(op_cases(rng)):
            ref = reference64(m, feeds)
            o = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, o.shape))
            b = tvm_builds(ts.load(m, name=f"op{i}"), work)
            print(f"| {label} | {rel(o, ref):.1e} | {rel(run(b['strict'], feeds), ref):.1e} | "
                  f"{rel(run(b['reassoc'], feeds), ref):.1e} |", flush=True)
        print("\n| model | onnxruntime | TVM strict | TVM reassoc | TVM strict ms | TVM reassoc ms | "
              "ratio |\n|---|---|---|---|---|---|---|")
        built = {}
        for label, m, feeds in model_cases(rng):
            ref = reference64(m, feeds)
            o = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            key = label.split(",")[0]
            if key not in built:
                built[key] = tvm_builds(ts.load(m, name=key.replace(":", "_").replace(" ", "_")), work)
            b = built[key]
            t = time_ms(b, feeds, args.repeat)
            print(f"| {label} | {rel(o, ref):.1e} | {rel(run(b['strict'], feeds), ref):.1e} | "
                  f"{rel(run(b['reassoc'], feeds), ref):.1e} | {t['strict']:.2f} | "
                  f"{t['reassoc']:.2f} | {t['reassoc'] / t['strict']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
