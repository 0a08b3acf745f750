"""Compile one stage for its target and export it as a shared library.

- CPU targets use Relax's default pipeline for the target (operator fusion included).
- Cross targets (aarch64) are linked with the target file's cross compiler; the result is an
  aarch64 ELF that this machine cannot run (the testbed runs it under qemu).
- CUDA targets get DLight's default GPU schedules (every kernel must be thread-bound) and build
  compile-only here: the library embeds CUDA C source that the GPU host compiles when loading it.

Builds are cached on disk by content (stage ONNX bytes, target, TVM version), so re-planning and
re-building the same stage is instant. ``TVMSPLIT_CACHE`` sets the directory (default
``~/.cache/tvmsplit``); ``TVMSPLIT_CACHE=off`` disables the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .bundle import file_sha256
from .errors import BuildError
from .graph import LayerGraph
from .split import StagePlan, stage_onnx, stage_relax
from .targets import TargetSpec, check_toolchain

CACHE_FORMAT = 1


@dataclass(frozen=True)
class BuiltLibrary:
    """A compiled stage library on disk."""

    path: Path
    sha256: str
    cached: bool


def cache_dir() -> Path | None:
    value = os.environ.get("TVMSPLIT_CACHE", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "tvmsplit"


def build_key(graph: LayerGraph, stage: StagePlan, spec: TargetSpec) -> str:
    import tvm

    h = hashlib.sha256()
    h.update(stage_onnx(graph, stage).SerializeToString(deterministic=True))
    h.update(json.dumps({"target": spec.to_json(), "tvm": tvm.__version__,
                         "format": CACHE_FORMAT}, sort_keys=True).encode())
    return h.hexdigest()


def build_stage(graph: LayerGraph, stage: StagePlan, spec: TargetSpec,
                out_path: str | os.PathLike) -> BuiltLibrary:
    """Compile ``stage`` for ``spec`` and write the library to ``out_path``."""
    check_toolchain(spec)
    out_path = Path(out_path)
    cache = cache_dir()
    key = build_key(graph, stage, spec)
    cached = cache / "builds" / f"{key}.so" if cache else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, out_path)
        return BuiltLibrary(out_path, file_sha256(out_path), cached=True)

    _compile_to(graph, stage, spec, out_path)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(out_path, tmp)
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only or full cache never fails a build
    return BuiltLibrary(out_path, file_sha256(out_path), cached=False)


def _compile_to(graph: LayerGraph, stage: StagePlan, spec: TargetSpec, out_path: Path) -> None:
    from tvm import relax

    try:
        mod = stage_relax(graph, stage)
        target = spec.tvm_target()
        with target:
            if spec.kind == "cuda":
                from tvm.s_tir import dlight as dl

                mod = relax.get_pipeline("zero")(mod)
                mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
                pipeline = None
            else:
                pipeline = relax.get_default_pipeline(target)
        ex = relax.build(mod, target, relax_pipeline=pipeline) if pipeline is not None \
            else relax.build(mod, target)
    except Exception as exc:
        raise BuildError(f"compiling stage {stage.index} ({', '.join(stage.layers[:3])}"
                         f"{', ...' if len(stage.layers) > 3 else ''}) for {spec.name} failed: "
                         f"{_first_line(exc)}") from exc
    kwargs = {}
    if spec.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(spec.cross_compiler)
    with tempfile.TemporaryDirectory(prefix="tvmsplit-build-") as tmp:
        tmp_lib = Path(tmp) / out_path.name
        try:
            ex.export_library(str(tmp_lib), **kwargs)
        except Exception as exc:
            raise BuildError(f"linking stage {stage.index} for {spec.name} failed: "
                             f"{_first_line(exc)}") from exc
        shutil.move(str(tmp_lib), out_path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:400]
