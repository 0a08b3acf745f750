"""Bundle: a directory with ``manifest.json`` and one compiled library per stage.

``manifest.json`` (schema version 2: version 1 had no routes)::

    {
      "schema_version": 2,
      "tvmsplit_version": "0.1.0", "tvm_version": "0.27.0.post1",
      "model": "resnet", "model_sha256": "<sha256 of the original ONNX bytes>",
      "inputs":  [{"name", "dtype", "shape"}, ...],        # the model's inputs
      "outputs": [{"name", "dtype", "shape"}, ...],        # the model's outputs
      "plan": {...},                                       # Plan.to_json(), incl. "entry" routes
      "stages": [{
        "index": 0, "layers": [...],
        "inputs": [...], "outputs": [...],                 # what the stage receives / sends
        "sends": [{"to": 1, "tensors": [names]}, ...],     # where it sends them (-1: the client)
        "library_inputs": [...], "library_outputs": [...], # what its library takes / returns
        "target": {...},                                   # TargetSpec.to_json()
        "library": "stage0-<sha12>.so", "sha256": "<sha256 of the library>",
        "library_bytes": 123, "param_bytes": 456, "runs_on_host": true,
        "tuning": {"database", "measured_on", "tuned", "kernels", "records_sha256"} | null  # GPU: null
      }, ...]
    }

This module is the format only: reading and checking bundles, and the pieces of writing one
(``stage_entry``, ``manifest``, ``writing``). Building one (compiling every stage) is
``build.build_bundle``. Writing is atomic (``writing``): everything is put in a hidden temporary
directory beside the destination and renamed into place only when complete, so a failed build
leaves no half-written bundle. Loading validates the schema, every field and every library
checksum. Raise ``SCHEMA_VERSION`` on any change an older reader would misread.

Schema version 3 is version 2 plus sequential stages (HyPS): a stage whose plan has
``"segments"`` also has ``"segment_files"``: per segment ``{"library", "sha256", "weights",
"weights_sha256", "weights_bytes"}`` (the weights file is ``weights.py``'s format); its
``"library"``/``"sha256"`` are the first segment's. A bundle is written as version 3 only when it
has such a stage, so every reader of version 2 (the native worker) still reads every bundle it
can run and refuses, by its version check, the ones it cannot.

Schema version 4 is version 3 plus fallback stages (``fallback``: ops TVM cannot import): every
stage has ``"runtime"``, ``"tvm"`` or ``"onnxruntime"``; an onnxruntime stage's ``"library"`` is
its ONNX sub-model (``stage<i>-<sha12>.onnx``, checksummed like a library; ``"tuning"`` null)
that the Python worker runs under onnxruntime. A bundle is written as version 4 only when a
stage falls back (readers of versions 2 and 3, the native worker among them, refuse it by their
version check instead of loading an .onnx file as a TVM library); a stage of a version 2 or 3
bundle is ``"tvm"``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, interrupts
from .encoding import Encoding, check_encodings, wire_specs, wire_stage
from .errors import BundleError, TvmsplitError
from .graph import LayerGraph, TensorSpec
from .plan import Plan, StagePlan
from .targets import TargetSpec, host_arch

SCHEMA_VERSION = 2
SEQUENTIAL_SCHEMA_VERSION = 3  # version 2 + sequential stages (see the module doc)
FALLBACK_SCHEMA_VERSION = 4    # version 3 + each stage's "runtime" (onnxruntime fallback stages)
ENCODED_SCHEMA_VERSION = 5     # version 4 + "input_encodings" (JPEG inputs, see the module doc)
READABLE_SCHEMA_VERSIONS = (SCHEMA_VERSION, SEQUENTIAL_SCHEMA_VERSION, FALLBACK_SCHEMA_VERSION,
                            ENCODED_SCHEMA_VERSION)
RUNTIMES = ("tvm", "onnxruntime")  # a stage's "runtime" (fallback.RUNTIMES)
MANIFEST = "manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class SegmentFiles:
    """A segment of a sequential stage on disk: its library and its external weights."""

    library: Path
    sha256: str
    weights: Path
    weights_sha256: str
    weights_bytes: int      # tensor data only: what a worker holds while the segment runs

    def to_json(self) -> dict[str, Any]:
        return {"library": self.library.name, "sha256": self.sha256,
                "weights": self.weights.name, "weights_sha256": self.weights_sha256,
                "weights_bytes": self.weights_bytes}


@dataclass(frozen=True)
class BundleStage:
    """One built stage: its plan, its target and its library on disk. A sequential stage
    (``plan.segments``) has one library + weights file per segment (``segments``); its
    ``library`` is then the first segment's."""

    plan: StagePlan
    target: dict[str, Any]
    library: Path
    sha256: str
    library_bytes: int
    segments: tuple[SegmentFiles, ...] = ()
    runtime: str = "tvm"  # "onnxruntime": ``library`` is an ONNX sub-model (``fallback``)
    encodings: tuple[Encoding, ...] = ()  # the inputs it receives encoded (schema 5)

    def files(self) -> list[tuple[Path, str]]:
        """Every file the stage needs, with its sha256."""
        if not self.segments:
            return [(self.library, self.sha256)]
        return [f for s in self.segments for f in ((s.library, s.sha256),
                                                    (s.weights, s.weights_sha256))]

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def runs_on_host(self) -> bool:
        if self.runtime == "onnxruntime":  # an ONNX file: any machine of the target's CPU arch
            return self.target["arch"] == host_arch()
        return self.target["target"]["kind"] == "llvm" and self.target["arch"] == host_arch()


@dataclass(frozen=True)
class Bundle:
    path: Path
    model: str
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    plan: Plan
    stages: tuple[BundleStage, ...]
    encodings: tuple[Encoding, ...] = ()  # encoded model inputs (schema 5); inputs: wire form

    @classmethod
    def load(cls, path: str | os.PathLike, stages: Iterable[int] | None = None) -> "Bundle":
        """Read and validate a bundle; raise BundleError saying what is wrong and how to fix it.

        ``stages`` limits the library checks (presence and sha256) to those stage indices: a
        device that holds only its own stage's library loads the bundle with ``stages=[n]``.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{str(path)!r} is not a bundle (no {MANIFEST}); "
                              "build one with `tvmsplit build`")
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path} is corrupt ({exc}); rebuild the bundle") from None
        if not isinstance(m, dict) or m.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            got = m.get("schema_version") if isinstance(m, dict) else None
            raise BundleError(f"{manifest_path}: schema version {got!r}, this tvmsplit reads "
                              f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}; "
                              "rebuild the bundle")
        try:
            plan = Plan.from_json(m["plan"])
            planned_target = {p.index: p.target for p in plan.stages}
            built = []
            for s in m["stages"]:  # "target" holds the resolved TargetSpec; the plan its name
                stage_plan = StagePlan.from_json({**s, "target": planned_target[int(s["index"])]})
                segs = tuple(SegmentFiles(path / f["library"], str(f["sha256"]),
                                          path / f["weights"], str(f["weights_sha256"]),
                                          int(f["weights_bytes"]))
                             for f in s.get("segment_files", ()))
                if len(segs) != len(stage_plan.segments):
                    raise ValueError("'segment_files' (one per segment)")
                runtime = str(s["runtime"]) if m["schema_version"] >= FALLBACK_SCHEMA_VERSION \
                    else "tvm"
                if runtime not in RUNTIMES or (runtime != "tvm" and segs):
                    raise ValueError(f"'runtime' ({runtime!r}; one of {', '.join(RUNTIMES)}, "
                                     "tvm for a sequential stage)")
                built.append(BundleStage(stage_plan, dict(s["target"]), path / s["library"],
                                          str(s["sha256"]), int(s["library_bytes"]), segs,
                                          runtime))
            bundle = cls(path, str(m["model"]), str(m["model_sha256"]),
                         tuple(TensorSpec.from_json(t) for t in m["inputs"]),
                         tuple(TensorSpec.from_json(t) for t in m["outputs"]), plan, tuple(built))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{manifest_path} is malformed (bad or missing field {exc}); "
                              "rebuild the bundle") from None
        problems = plan.route_problems([t.name for t in bundle.inputs],
                                       [t.name for t in bundle.outputs])
        if [(s.plan.inputs, s.plan.sends) for s in bundle.stages] != [
                (s.inputs, s.sends) for s in plan.stages]:
            problems.append("its stages' inputs or routes differ from its plan's")
        if problems:
            raise BundleError(f"{manifest_path}: {'; '.join(problems)}; rebuild the bundle")
        if m["schema_version"] >= ENCODED_SCHEMA_VERSION:
            bundle = _with_encodings(bundle, m.get("input_encodings"), manifest_path)
        for stage in bundle.stages:
            target = stage.target
            if not (isinstance(target.get("target"), dict) and "kind" in target["target"]
                    and isinstance(target.get("name"), str) and isinstance(target.get("arch"), str)):
                raise BundleError(f"{manifest_path}: stage {stage.index} has no valid target "
                                  "(needs name, arch and target.kind); rebuild the bundle")
        if [s.index for s in bundle.stages] != list(range(len(bundle.stages))) or not bundle.stages:
            raise BundleError(f"{manifest_path}: stages must be numbered 0..k-1; rebuild the bundle")
        wanted = set(range(len(bundle.stages)) if stages is None else stages)
        unknown = sorted(wanted - set(range(len(bundle.stages))))
        if unknown:
            raise BundleError(f"bundle {str(path)!r} has stages 0..{len(bundle.stages) - 1}; "
                              f"no stage {unknown[0]}")
        for stage in bundle.stages:
            if stage.index not in wanted:
                continue
            for file, sha in stage.files():
                if not file.is_file():
                    raise BundleError(f"bundle {str(path)!r}: library {file.name} of stage "
                                      f"{stage.index} is missing; rebuild the bundle")
                if file_sha256(file) != sha:
                    raise BundleError(f"bundle {str(path)!r}: library {file.name} of stage "
                                      f"{stage.index} fails its checksum (corrupt or modified); "
                                      "rebuild the bundle")
        return bundle


def _with_encodings(bundle: Bundle, entries: Any, manifest_path: Path) -> Bundle:
    """``bundle`` with its encoded inputs in wire form (see the module doc, schema 5)."""
    from dataclasses import replace

    try:
        encodings = tuple(Encoding.from_json(e) for e in entries)
        if not encodings:
            raise ValueError("no encodings")
        check_encodings(bundle.inputs, encodings)
    except (KeyError, TypeError, ValueError, TvmsplitError) as exc:
        raise BundleError(f"{manifest_path}: bad 'input_encodings' ({exc}); rebuild the bundle "
                          "and encode its inputs again (bundle.encode_inputs)") from None
    by_name = {e.name: e for e in encodings}

    def received(stage: StagePlan) -> tuple[Encoding, ...]:
        return tuple(by_name[t.name] for t in stage.inputs if t.name in by_name)

    plan = replace(bundle.plan, stages=tuple(wire_stage(s, by_name) for s in bundle.plan.stages))
    stages = tuple(replace(s, plan=wire_stage(s.plan, by_name), encodings=received(s.plan))
                   for s in bundle.stages)
    return replace(bundle, inputs=wire_specs(bundle.inputs, encodings), plan=plan, stages=stages,
                   encodings=encodings)


def encode_inputs(path: str | os.PathLike, encodings: Sequence[Encoding]) -> Bundle:
    """Make the bundle at ``path`` take ``encodings``' inputs encoded (schema 5, see the module
    doc): its manifest is rewritten atomically (libraries unchanged) and the bundle loaded
    again. ``encodings=()`` makes it take the raw tensors again."""
    from .atomic import write_json

    path = Path(path)
    bundle = Bundle.load(path, stages=[])
    base = tuple(e.input for e in bundle.encodings)
    raw = tuple(next((b for b in base if b.name == t.name), t) for t in bundle.inputs)
    check_encodings(raw, encodings)
    m = json.loads((path / MANIFEST).read_text())
    if encodings:
        m["schema_version"] = ENCODED_SCHEMA_VERSION
        m["input_encodings"] = [e.to_json() for e in encodings]
        for s in m["stages"]:
            s.setdefault("runtime", "tvm")
    else:
        m.pop("input_encodings", None)
        fallback = any(s.get("runtime", "tvm") != "tvm" for s in m["stages"])
        m["schema_version"] = (FALLBACK_SCHEMA_VERSION if fallback else SEQUENTIAL_SCHEMA_VERSION
                               if any(s.get("segment_files") for s in m["stages"])
                               else SCHEMA_VERSION)
        if not fallback:
            for s in m["stages"]:
                s.pop("runtime", None)
    write_json(path / MANIFEST, m)
    return Bundle.load(path)


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """Refuse a destination that a bundle must not replace (before any work is done)."""
    out_dir = Path(out_dir)
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise BundleError(f"cannot write a bundle over {str(out_dir)!r}, the current directory or "
                          "one above it; give a new subdirectory, e.g. -o build/model")
    if out_dir.exists() and (not out_dir.is_dir() or
                             (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise BundleError(f"{str(out_dir)!r} exists and is not a bundle; choose an empty or new "
                          "directory (tvmsplit only replaces its own bundles)")
    blocker = next((p for p in out_dir.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise BundleError(f"cannot write a bundle to {str(out_dir)!r}: {str(blocker)!r} is a file, "
                          "not a directory; choose -o in a directory")


def stage_entry(stage: StagePlan, target: TargetSpec, library: Path,
                tuning: dict[str, Any] | None,
                segment_files: Sequence[tuple[Path, Path]] = (),
                runtime: str = "tvm") -> dict[str, Any]:
    """A manifest's stage: the stage's plan with its resolved target and its library, a file in
    the bundle directory. A sequential stage also lists ``segment_files``: per segment its
    library and weights file (``SegmentFiles.to_json``); ``library`` is the first segment's.
    ``runtime`` is the stage's (``RUNTIMES``; ``"onnxruntime"``: ``library`` is an .onnx file)."""
    from .weights import weights_bytes

    if runtime not in RUNTIMES:
        raise BundleError(f"internal: stage runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    entry = {**stage.to_json(), "target": target.to_json(), "library": library.name,
             "sha256": file_sha256(library), "library_bytes": library.stat().st_size,
             "runs_on_host": target.runs_on_host if runtime == "tvm" else
             target.arch == host_arch(), "tuning": tuning, "runtime": runtime}
    if segment_files:
        entry["segment_files"] = [
            SegmentFiles(lib, file_sha256(lib), w, file_sha256(w), weights_bytes(w)).to_json()
            for lib, w in segment_files]
    return entry


def manifest(graph: LayerGraph, plan: Plan, stages: list[dict[str, Any]],
             tvm_version: str) -> dict[str, Any]:
    """The manifest of a bundle of ``plan`` with ``stages`` (``stage_entry`` each): version 4
    when a stage falls back to onnxruntime, else 3 when one is sequential, else 2 (see the module
    doc); ``"runtime"`` is kept only in version 4."""
    fallback = any(s.get("runtime", "tvm") != "tvm" for s in stages)
    if not fallback:
        stages = [{k: v for k, v in s.items() if k != "runtime"} for s in stages]
    sequential = any(s.segments for s in plan.stages)
    return {
        "schema_version": FALLBACK_SCHEMA_VERSION if fallback else
        SEQUENTIAL_SCHEMA_VERSION if sequential else SCHEMA_VERSION,
        "tvmsplit_version": __version__,
        "tvm_version": tvm_version, "model": graph.name, "model_sha256": graph.model_sha256,
        "inputs": [t.to_json() for t in graph.inputs],
        "outputs": [t.to_json() for t in graph.outputs],
        "plan": plan.to_json(), "stages": stages,
    }


@contextmanager
def writing(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a bundle atomically: yields a hidden temporary directory beside ``out_dir`` to fill
    (libraries and ``MANIFEST``); on success it replaces ``out_dir`` (checked first with
    ``check_output_dir``), on any error it is removed and ``out_dir`` is left as it was.

    The swap is a critical section (``interrupts.deferred``): SIGINT/SIGTERM before it leave
    ``out_dir`` untouched; one during it is raised after it, with ``written`` set to ``out_dir``
    (the new bundle is complete there); never does a half-swapped ``out_dir`` remain."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with interrupts.deferred():  # no signal between creating tmp and owning its removal
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        interrupts.check()
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise BundleError(f"internal: no {MANIFEST} was written for {str(out_dir)!r}")
        with interrupts.deferred():  # a signal during the swap waits for it to finish
            interrupts.check()  # the last point where an interrupt leaves out_dir as it was
            _replace_dir(tmp, out_dir)
    except BaseException:
        with interrupts.deferred():  # a (first) signal now must not cut the clean-up short
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        interrupts.check()
    except interrupts.Interrupted as exc:
        exc.written = out_dir  # it came during the swap: the new bundle is in place
        raise


def _replace_dir(new: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / "bundle")
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)
