"""Build a bundle: compile every stage of a plan (``compile``) and write them with their manifest
(``bundle``, the format). The one place that joins the two, so neither imports the other's
orchestration: ``compile`` knows one stage, ``bundle`` knows the directory and its manifest.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .bundle import MANIFEST, Bundle, check_output_dir, manifest, stage_entry, writing
from .graph import LayerGraph
from .plan import Plan
from .targets import get_target

ProgressFn = Callable[[str], None]


def build_bundle(graph: LayerGraph, plan: Plan, out_dir: str | os.PathLike,
                 progress: ProgressFn | None = None,
                 db: str | os.PathLike | None = None) -> Bundle:
    """Compile every stage of ``plan`` (as it is: nothing is planned here) and write the bundle
    to ``out_dir`` atomically.

    An existing bundle at ``out_dir`` is replaced; any other non-empty directory is refused.
    SIGINT (Ctrl-C; in the CLI SIGTERM too) stops the build at the next TVM pass, leaving
    ``out_dir`` as it was and no temporary directory or partial cache entry (``interrupts``).
    CPU stages are scheduled from the tuning database ``db`` where it was tuned for their target
    (else from each target's default one, when it exists; see ``tunedb``); the manifest records
    per stage how many kernels were tuned.
    """
    import signal

    from . import interrupts

    with interrupts.catching((signal.SIGINT,), only_default=True):
        try:
            return _build_bundle(graph, plan, Path(out_dir), progress, db)
        except Exception:
            interrupts.check()  # an error that an interrupt caused is the interrupt
            raise


def _build_bundle(graph: LayerGraph, plan: Plan, out_dir: Path, progress: ProgressFn | None,
                  db: str | os.PathLike | None) -> Bundle:
    import json

    from . import interrupts
    from .compile import build_stage
    from .tunedb import database_paths

    check_output_dir(out_dir)
    specs = [get_target(s.target) for s in plan.stages]  # fail on unknown targets before building
    dbs = database_paths(specs, db)  # and on a database that fits none of them
    with writing(out_dir) as tmp:
        stages_json = []
        for stage, spec, stage_db in zip(plan.stages, specs, dbs):
            interrupts.check()
            if progress:
                progress(f"stage {stage.index + 1}/{len(plan.stages)}: {len(stage.layers)} layer(s) "
                         f"{stage.layers[0]}..{stage.layers[-1]} for {spec.name}")
            if stage.segments:  # sequential (HyPS): one library + weights file per segment
                files = []
                for seg in stage.segments:
                    interrupts.check()
                    built = build_stage(graph, seg, spec, tmp / f"stage{stage.index}.seg.so",
                                        db=stage_db, external_weights=True)
                    if progress:
                        progress(f"  stage {stage.index} segment {seg.index + 1}/"
                                 f"{len(stage.segments)}: {len(seg.layers)} layer(s) "
                                 f"{seg.layers[0]}..{seg.layers[-1]}, weights "
                                 f"{built.weights.stat().st_size / 1e6:.1f} MB outside the library")
                    files.append(_place(built, tmp / f"stage{stage.index}-seg{seg.index}"))
                stages_json.append(stage_entry(stage, spec, files[0][0], None,
                                               segment_files=files))
                continue
            staging = tmp / f"stage{stage.index}.so"
            built = build_stage(graph, stage, spec, staging, db=stage_db)
            if progress and built.tuning is not None:
                progress(f"  stage {stage.index}: {built.tuning.describe()}")
            library = tmp / f"stage{stage.index}-{built.sha256[:12]}.so"
            staging.rename(library)
            stages_json.append(stage_entry(stage, spec, library,
                                           built.tuning.to_json() if built.tuning else None))
        import tvm

        text = json.dumps(manifest(graph, plan, stages_json, tvm.__version__), indent=2)
        (tmp / MANIFEST).write_text(text + "\n")
    return Bundle.load(out_dir)


def _place(built, stem: Path) -> tuple[Path, Path]:
    """Rename a built segment's library and weights to ``<stem>-<sha>.so`` / ``.so.weights``."""
    from .compile import weights_path

    library = stem.with_name(f"{stem.name}-{built.sha256[:12]}.so")
    built.path.rename(library)
    built.weights.rename(weights_path(library))
    return library, weights_path(library)
