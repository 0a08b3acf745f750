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

Writing is atomic: everything is built in a hidden temporary directory beside the destination and
renamed into place only when complete, so a failed build leaves no half-written bundle.
Loading validates the schema, every field and every library checksum.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BundleError
from .graph import LayerGraph, TensorSpec
from .split import Plan, StagePlan
from .targets import get_target, host_arch

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class BundleStage:
    """One built stage: its plan, its target and its library on disk."""

    plan: StagePlan
    target: dict[str, Any]
    library: Path
    sha256: str
    library_bytes: int

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def runs_on_host(self) -> bool:
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
        if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
            got = m.get("schema_version") if isinstance(m, dict) else None
            raise BundleError(f"{manifest_path}: schema version {got!r}, this tvmsplit reads "
                              f"{SCHEMA_VERSION}; rebuild the bundle")
        try:
            plan = Plan.from_json(m["plan"])
            built = []
            for s in m["stages"]:
                stage_plan = StagePlan.from_json(s)
                built.append(BundleStage(stage_plan, dict(s["target"]), path / s["library"],
                                          str(s["sha256"]), int(s["library_bytes"])))
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
            if not stage.library.is_file():
                raise BundleError(f"bundle {str(path)!r}: library {stage.library.name} of stage "
                                  f"{stage.index} is missing; rebuild the bundle")
            if file_sha256(stage.library) != stage.sha256:
                raise BundleError(f"bundle {str(path)!r}: library {stage.library.name} of stage "
                                  f"{stage.index} fails its checksum (corrupt or modified); "
                                  "rebuild the bundle")
        return bundle


ProgressFn = Callable[[str], None]


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


def build_bundle(graph: LayerGraph, plan: Plan, out_dir: str | os.PathLike,
                 progress: ProgressFn | None = None,
                 db: str | os.PathLike | None = None) -> Bundle:
    """Compile every stage of ``plan`` and write the bundle to ``out_dir`` atomically.

    An existing bundle at ``out_dir`` is replaced; any other non-empty directory is refused.
    CPU stages are scheduled from the tuning database ``db`` where it was tuned for their target
    (else from each target's default one, when it exists; see ``tunedb``); the manifest records
    per stage how many kernels were tuned.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    from .compile import build_stage

    specs = [get_target(s.target) for s in plan.stages]  # fail on unknown targets before building
    from .tunedb import database_paths

    dbs = database_paths(specs, db)  # and on a database that fits none of them
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        stages_json = []
        for stage, spec, stage_db in zip(plan.stages, specs, dbs):
            if progress:
                progress(f"stage {stage.index + 1}/{len(plan.stages)}: {len(stage.layers)} layer(s) "
                         f"{stage.layers[0]}..{stage.layers[-1]} for {spec.name}")
            staging = tmp / f"stage{stage.index}.so"
            built = build_stage(graph, stage, spec, staging, db=stage_db)
            if progress and built.tuning is not None:
                progress(f"  stage {stage.index}: {built.tuning.describe()}")
            lib_name = f"stage{stage.index}-{built.sha256[:12]}.so"
            staging.rename(tmp / lib_name)
            stages_json.append({**stage.to_json(), "target": spec.to_json(), "library": lib_name,
                                "sha256": built.sha256, "library_bytes": (tmp / lib_name).stat().st_size,
                                "runs_on_host": spec.runs_on_host,
                                "tuning": built.tuning.to_json() if built.tuning else None})
        import tvm

        manifest = {
            "schema_version": SCHEMA_VERSION, "tvmsplit_version": __version__,
            "tvm_version": tvm.__version__, "model": graph.name, "model_sha256": graph.model_sha256,
            "inputs": [t.to_json() for t in graph.inputs],
            "outputs": [t.to_json() for t in graph.outputs],
            "plan": plan.to_json(), "stages": stages_json,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.load(out_dir)


def _replace_dir(new: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / "bundle")
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)
