"""Compile one stage for its target and export it as a shared library.

- A stage becomes an ONNX sub-model (``stage_onnx``: the stage's nodes of the normalised ONNX
  graph with only the initializers they use) imported into Relax on its own (``stage_relax``:
  ``from_onnx(keep_params_in_input=False)`` inlines them), so each stage carries exactly its own
  weights.
- A fallback stage (``fallback``: ops TVM cannot import) is that ONNX sub-model, written as its
  library for onnxruntime (``export_onnx_stage``); nothing below applies to it.
- Every stage first gets the graph-level passes of ``graphopt`` (BatchNorm folded into convs;
  the convolutions in the target's ``[build] conv_layout``, NCHW unless the file says otherwise).
- CPU targets are lowered (legalize + fuse), scheduled from the target's tuning database where it
  holds records (``tunedb``: "N/M kernels tuned" per stage), the other kernels get a parallel
  fallback schedule (``tunedb.fallback_schedule``), then built with Relax's default pipeline for the target.
- CPU (``llvm``) targets are built with LLVM's ``fast-math-reassoc`` flag (``build_target``), and
  only that one: float32 sums may be reassociated, so LLVM vectorises reductions into several
  partial sums, as onnxruntime's kernels do. Strict IEEE order made every reduction one long
  sequential float32 sum; measured against a float64 reference (BENCHMARKS.md "Coverage"), a
  Softmax over 6625 classes drifted 3.9e-6 vs onnxruntime's 3.7e-7, PP-OCRv4's SVTR recogniser
  1.8e-5 vs 3.7e-6; with the flag 3.7e-7 and 3.0e-6. No NaN/Inf assumptions, no approximate
  functions (``fast-math`` as a whole is not set); a target file that sets any ``fast-math*``
  key keeps exactly its own flags.
- Cross targets (aarch64) are linked with the target file's cross compiler; the result is an
  aarch64 ELF that this machine cannot run (the testbed runs it under qemu).
- CUDA targets get DLight's default GPU schedules (every kernel must be thread-bound) and build
  compile-only here: the library embeds CUDA C source that the GPU host compiles when loading it.

Builds are cached on disk by content (stage ONNX bytes, target, TVM version, the tuning records
used), so re-planning and
re-building the same stage is instant. ``TVMSPLIT_CACHE`` sets the directory (default
``~/.cache/tvmsplit``); ``TVMSPLIT_CACHE=off`` disables the cache. An entry is
``<key>.so`` (and ``<key>.json``, its tuning summary, written first), each written to a temporary
file and renamed into place, so an entry is complete or absent even when a build is killed.

A build stops at the next TVM pass after SIGINT/SIGTERM (``interrupts``): every stage compiles
under ``interrupts.watching_passes``, an error that an interrupt caused is re-raised as the
interrupt (not a BuildError), and nothing built after a signal is ever cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import interrupts, recurrent, tflitefront
from .bundle import file_sha256
from .errors import BuildError
from .fallback import node_reads
from .graph import LayerGraph, TensorSpec
from .plan import StagePlan
from .targets import TargetSpec, check_toolchain
from .tunedb import AppliedTuning, TuningDatabase, cache_root, find_database

CACHE_FORMAT = 4  # 2: graph passes, tuning databases, fallback schedules; 3: fast-math-reassoc;
# 4: graphopt's convert_layout (the target's conv_layout) and its conv2d legalisation
REASSOC = {"fast-math-reassoc": True}  # the one LLVM fast-math flag CPU builds get


@dataclass(frozen=True)
class BuiltLibrary:
    """A compiled stage library on disk."""

    path: Path
    sha256: str
    cached: bool
    tuning: AppliedTuning | None = None  # CPU stages: what the tuning database contributed
    weights: Path | None = None           # external weights (``weights.py``), beside the library
    weights_sha256: str = ""


cache_dir = cache_root  # the build cache's root (TVMSPLIT_CACHE; "off" disables it)


def build_target(spec: TargetSpec):
    """``spec``'s TVM target as stages are built: CPU targets get ``REASSOC`` unless the target
    file sets a ``fast-math*`` flag itself."""
    if spec.kind != "llvm" or any(k.startswith("fast-math") for k in spec.target_dict):
        return spec.tvm_target()
    import tvm

    target = {**spec.target_dict, **REASSOC}
    return tvm.target.Target(target) if spec.host is None else tvm.target.Target(target, host=spec.host_dict)


def stage_onnx(graph: LayerGraph, stage: StagePlan):
    """The ONNX sub-model computing ``stage.library_outputs`` from ``stage.library_inputs``."""
    from onnx import helper

    model = graph.model
    wanted = {n for name in stage.layers for n in graph.layer(name).nodes}
    nodes = [n for n in model.graph.node if n.name in wanted]
    used = {i for n in nodes for i in node_reads(n) if i}  # subgraphs' outer reads too
    inits = [init for init in model.graph.initializer if init.name in used]

    def vi(t: TensorSpec):
        return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                              list(t.shape))

    sub = helper.make_graph(nodes, f"{graph.name}_stage{stage.index}",
                            [vi(t) for t in stage.library_inputs],
                            [vi(t) for t in stage.library_outputs], initializer=inits)
    out = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version,
                            producer_name="tvmsplit")
    return out


def export_onnx_stage(graph: LayerGraph, stage: StagePlan,
                      out_path: str | os.PathLike) -> BuiltLibrary:
    """A fallback stage (``fallback``): its ONNX sub-model (``stage_onnx``) written to
    ``out_path``, to run under onnxruntime; nothing is compiled or cached."""
    out_path = Path(out_path)
    out_path.write_bytes(stage_onnx(graph, stage).SerializeToString(deterministic=True))
    return _built(out_path, None, False, None)


def stage_relax(graph: LayerGraph, stage: StagePlan):
    """The stage as a Relax IRModule, weights inlined as constants and constant-folded."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    if isinstance(graph.model, tflitefront.TfliteModel):
        return tflitefront.stage_relax(graph, stage)
    sub = recurrent.expand(stage_onnx(graph, stage))  # LSTM/GRU/RNN: TVM has no converter
    mod = from_onnx(sub, shape_dict={t.name: list(t.shape) for t in stage.library_inputs},
                    dtype_dict={t.name: t.dtype for t in stage.library_inputs},
                    keep_params_in_input=False)
    return relax.transform.FoldConstant()(mod)


def build_key(graph: LayerGraph, stage: StagePlan, spec: TargetSpec,
              tuning_digest: str = "", external_weights: bool = False) -> str:
    import tvm

    from .graphopt import GRAPH_PASSES

    h = hashlib.sha256()
    if isinstance(graph.model, tflitefront.TfliteModel):
        h.update(tflitefront.stage_key(graph, stage))
    else:
        h.update(stage_onnx(graph, stage).SerializeToString(deterministic=True))
    h.update(json.dumps({"target": spec.to_json(), "tvm": tvm.__version__,
                         "format": CACHE_FORMAT, "passes": list(GRAPH_PASSES),
                         "tuning": tuning_digest,
                         **({"weights": "external"} if external_weights else {})},
                        sort_keys=True).encode())
    return h.hexdigest()


def build_stage(graph: LayerGraph, stage: StagePlan, spec: TargetSpec,
                out_path: str | os.PathLike, db: str | os.PathLike | None = None,
                external_weights: bool = False) -> BuiltLibrary:
    """Compile ``stage`` for ``spec`` and write the library to ``out_path``.

    CPU stages use the tuning database at ``db`` (refused if tuned for another target), else the
    target's default database when one exists (``tunedb.find_database``). With
    ``external_weights`` the weights are lifted out of the library into ``<out_path>.weights``
    (``weights.py``; a segment of a sequential stage).
    """
    with interrupts.watching_passes():
        return _build_stage(graph, stage, spec, Path(out_path), db, external_weights)


def weights_path(library: str | os.PathLike) -> Path:
    """Where a library's external weights live: beside it, ``<library>.weights``."""
    library = Path(library)
    return library.with_name(library.name + ".weights")


def _build_stage(graph: LayerGraph, stage: StagePlan, spec: TargetSpec, out_path: Path,
                 db: str | os.PathLike | None, external: bool = False) -> BuiltLibrary:
    check_toolchain(spec)
    database = find_database(spec, db)
    cache = cache_dir()
    prepared = None
    if database is not None:  # the records used are part of the key: lower first to know them
        prepared = _prepare(graph, stage, spec, database, external)
        key = build_key(graph, stage, spec, prepared[1].records_sha256, external)
    else:
        key = build_key(graph, stage, spec, external_weights=external)
    cached = cache / "builds" / f"{key}.so" if cache else None
    weights_out = weights_path(out_path) if external else None
    if cached is not None and cached.is_file():
        if external:
            shutil.copyfile(weights_path(cached), weights_out)
        shutil.copyfile(cached, out_path)
        return _built(out_path, weights_out, True,
                      prepared[1] if prepared else _read_tuning(cached))

    if prepared is None:
        prepared = _prepare(graph, stage, spec, None, external)
    mod, tuning, arrays = prepared
    if external:
        from .weights import write_weights

        write_weights(weights_out, arrays)
    _compile_to(stage, spec, mod, out_path)
    interrupts.check()  # TVM may have swallowed the interrupt (and built less well): never cache
    if cached is not None:
        _store(cached, out_path, tuning, weights_out)
    return _built(out_path, weights_out, False, tuning)


def _built(library: Path, weights: Path | None, cached: bool,
           tuning: AppliedTuning | None) -> BuiltLibrary:
    return BuiltLibrary(library, file_sha256(library), cached=cached, tuning=tuning,
                        weights=weights, weights_sha256=file_sha256(weights) if weights else "")


def _store(cached: Path, library: Path, tuning: AppliedTuning | None,
           weights: Path | None = None) -> None:
    """Put ``library`` in the cache as ``cached``: the tuning summary and the external weights
    first, the library last, each through a temporary file renamed into place, so that an entry
    (its ``.so``) is complete or absent; on any error or interrupt the temporary files are
    removed."""
    temps = []
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        if tuning is not None:
            temps.append(cached.with_suffix(f".json.tmp{os.getpid()}"))
            temps[-1].write_text(json.dumps(tuning.to_json()))
            os.replace(temps[-1], cached.with_suffix(".json"))
        if weights is not None:
            temps.append(cached.with_suffix(f".weights.tmp{os.getpid()}"))
            shutil.copyfile(weights, temps[-1])
            os.replace(temps[-1], weights_path(cached))
        temps.append(cached.with_suffix(f".so.tmp{os.getpid()}"))
        shutil.copyfile(library, temps[-1])
        os.replace(temps[-1], cached)  # the entry appears whole, or not at all
    except OSError:
        pass  # a read-only or full cache never fails a build
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _read_tuning(cached: Path) -> AppliedTuning | None:
    try:
        return AppliedTuning.from_json(json.loads(cached.with_suffix(".json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_module(graph: LayerGraph, stage: StagePlan, spec: TargetSpec):
    """The stage's Relax module after the graph-level passes (convs in ``spec.conv_layout``):
    what is tuned and built."""
    from .graphopt import optimize

    return optimize(stage_relax(graph, stage), conv_layout=spec.conv_layout)


def _prepare(graph: LayerGraph, stage: StagePlan, spec: TargetSpec,
             database: TuningDatabase | None, external: bool = False):
    """(module ready for relax.build, AppliedTuning or None for GPU targets, the lifted
    weights: arrays in parameter order when ``external``, else [])."""
    from .graphopt import lower
    from .tunedb import apply_database

    try:
        mod = stage_module(graph, stage, spec)
        arrays = []
        if external:
            from .weights import lift_weights

            mod, arrays = lift_weights(mod)
        target = build_target(spec)
        if spec.kind == "cuda":
            from tvm.s_tir import dlight as dl

            mod = lower(mod, target)
            with target:
                mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
            return mod, None, arrays
        return (*apply_database(lower(mod, target), database, target), arrays)
    except Exception as exc:
        raise _build_error(stage, spec, exc) from exc


def _build_error(stage: StagePlan, spec: TargetSpec, exc: BaseException) -> BuildError:
    interrupts.check()  # an interrupt that came back through TVM's C++ as a RuntimeError
    return BuildError(f"compiling stage {stage.index} ({', '.join(stage.layers[:3])}"
                      f"{', ...' if len(stage.layers) > 3 else ''}) for {spec.name} failed: "
                      f"{_first_line(exc)}")


def _compile_to(stage: StagePlan, spec: TargetSpec, mod, out_path: Path) -> None:
    from tvm import relax

    try:
        target = build_target(spec)
        if spec.kind == "cuda":
            ex = relax.build(mod, target)
        else:
            ex = relax.build(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    except Exception as exc:
        raise _build_error(stage, spec, exc) from exc
    kwargs = {}
    if spec.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(spec.cross_compiler)
    with tempfile.TemporaryDirectory(prefix="tvmsplit-build-") as tmp:
        tmp_lib = Path(tmp) / out_path.name
        work = Path(tmp) / "work"  # TVM's object files: here, not in a directory of its own
        work.mkdir()
        before = _children()
        try:
            ex.export_library(str(tmp_lib), workspace_dir=str(work), **kwargs)
        except BaseException as exc:
            if interrupts.received() is not None or not isinstance(exc, Exception):
                _kill(_children() - before)  # the compiler TVM started, before its directory goes
                interrupts.check()
                raise
            raise BuildError(f"linking stage {stage.index} for {spec.name} failed: "
                             f"{_first_line(exc)}") from exc
        shutil.move(str(tmp_lib), out_path)


def _children() -> set[int]:
    """The pids of this process's children (Linux; elsewhere none are known)."""
    pids: set[int] = set()
    try:
        for task in Path("/proc/self/task").iterdir():
            pids.update(int(p) for p in (task / "children").read_text().split())
    except (OSError, ValueError):
        pass
    return pids


def _kill(pids: set[int]) -> None:
    """SIGKILL and reap ``pids``, children of this process (a compiler left running when an
    interrupt broke into the ``communicate`` that waited for it)."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:400]
