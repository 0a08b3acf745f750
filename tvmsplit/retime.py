"""Re-time a tuning database's best records as medians of repeated runs, on a quiet machine.

    result = retime(graph, get_target("host"), repeat=7, log=print)

Why: MetaSchedule measures each candidate once (``number=3`` runs averaged, ``repeat=1``), so a
record is as noisy as the machine was while tuning: with another job on the cores, a candidate's
one measurement may come out several times too fast or too slow. The build then applies the
record that was *measured* fastest, not the one that *is*, and ``tunedb.recorded_ms`` (the
predictor's prior) reads that noisy time.

What it does, for every kernel of ``graph`` (and of the stages of ``plans``) that the database
holds records for: build the best record's schedule, run it ``repeat`` times
(``min_repeat_ms`` each) and store those times as the record's ``run_secs``; while some record
not yet re-timed still *claims* to be faster than every re-timed one, re-time that one too (up to
``per_kernel`` records a kernel). Afterwards the best record of every kernel is one measured
``repeat`` times here, and ``recorded_ms`` reads its median. The database files are rewritten
through MetaSchedule's own JSONDatabase (every record kept, run times of the re-timed replaced),
atomically; the previous records file is kept beside it as ``*.before-retime``.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .graph import LayerGraph
from .targets import TargetSpec
from .tunedb import (RECORDS, WORKLOADS, TuningDatabase, TuningError, default_db_dir,
                     read_database, tune_target_dict)

BACKUP_SUFFIX = ".before-retime"


@dataclass(frozen=True)
class RetimedKernel:
    """One kernel: the best record before (its recorded mean) and after (median of repeats)."""

    name: str
    records_retimed: int
    before_ms: float          # what the best record claimed
    after_ms: float           # the median of the best record after re-timing
    changed_record: bool      # another schedule is best now

    @property
    def ratio(self) -> float:
        return self.after_ms / self.before_ms if self.before_ms > 0 else math.nan


@dataclass(frozen=True)
class RetimeResult:
    database: TuningDatabase
    kernels: tuple[RetimedKernel, ...]
    skipped: tuple[str, ...]       # kernels of the model without a record (untuned)
    failed: tuple[str, ...]        # "kernel: error" of records that did not build or run
    elapsed_s: float
    repeat: int

    def describe(self) -> str:
        ratios = sorted(k.ratio for k in self.kernels if math.isfinite(k.ratio))
        spread = (f"; re-timed best / recorded best: median {statistics.median(ratios):.2f}x, "
                  f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x" if ratios else "")
        changed = sum(k.changed_record for k in self.kernels)
        failed = f"; {len(self.failed)} failed, first: {self.failed[0]}" if self.failed else ""
        return (f"{len(self.kernels)} kernels re-timed ({sum(k.records_retimed for k in self.kernels)}"
                f" records, {self.repeat} runs each) in {self.elapsed_s / 60:.1f} min; "
                f"{changed} now use another schedule{spread}; {len(self.skipped)} without "
                f"records{failed}; database {self.database.path}")


def _mean(secs) -> float:
    vals = [float(s) for s in secs or ()]
    return sum(vals) / len(vals) if vals else math.inf


def retime(graph: LayerGraph, spec: TargetSpec, *, db: str | Path | None = None,
           plans: Sequence = (), repeat: int = 7, per_kernel: int = 4,
           min_repeat_ms: float = 40.0, num_cores: int | None = None,
           log: Callable[[str], None] | None = None) -> RetimeResult:
    """Re-time the best records of ``graph``'s kernels in ``spec``'s database (module doc)."""
    from .tune import _ms_build, extract

    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 3:
        raise TuningError(f"repeat must be an integer >= 3 (a median needs several runs), got "
                          f"{repeat!r}")
    if isinstance(per_kernel, bool) or not isinstance(per_kernel, int) or per_kernel < 1:
        raise TuningError(f"per_kernel must be an integer >= 1, got {per_kernel!r}")
    if not spec.runs_on_host:
        raise TuningError(f"target {spec.name!r} ({spec.arch}) does not run on this machine; "
                          "re-timing measures here (tune on the device over RPC instead)")
    say = log or (lambda _m: None)
    path = Path(db) if db is not None else default_db_dir(spec)
    if path is None or not (path / RECORDS).is_file():
        raise TuningError(f"no tuning database for {spec.name!r} at {path} to re-time; tune first "
                          f"(`tvmsplit tune MODEL --target {spec.name}`)")
    info = read_database(path, spec)
    tune_target = tune_target_dict(spec, num_cores)
    if tune_target != info.tune_target:
        raise TuningError(f"tuning database {str(path)!r} was tuned with {info.tune_target}, "
                          f"not {tune_target}")

    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    started = time.monotonic()
    target = tvm.target.Target(tune_target)
    normalize = tvm_ffi.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    database = info.open()
    builder = ms.builder.LocalBuilder(f_build=_ms_build, max_workers=1, timeout_sec=120)
    runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(
        number=3, repeat=repeat, min_repeat_ms=int(min_repeat_ms), enable_cpu_cache_flush=False))

    def measure(record) -> list[float] | str:
        sch = tvm.s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
        if built.error_msg:
            return str(built.error_msg).strip().splitlines()[-1][:300]
        try:
            ran = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu",
                                                    record.args_info)])[0].result()
        finally:
            shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
        if ran.error_msg:
            return str(ran.error_msg).strip().splitlines()[-1][:300]
        return [float(s) for s in ran.run_secs]

    say("extracting tasks")
    new_secs: dict[tuple[int, str], list[float]] = {}   # (workload hash, trace) -> run_secs
    kernels, skipped, failed = [], [], []
    with target:
        tasks = extract(graph, spec, tune_target, plans)
        for n, task in enumerate(tasks, 1):
            mod = normalize(next(f for f in task.dispatched[0].functions.values()
                                 if isinstance(f, tvm.tirx.PrimFunc)))
            if not database.has_workload(mod):
                skipped.append(task.task_name)
                continue
            top = list(database.get_top_k(database.commit_workload(mod), per_kernel))
            if not top:
                skipped.append(task.task_name)
                continue
            before = _mean(top[0].run_secs)
            timed: list[tuple[float, int]] = []          # (median s, index in top)
            tried = 0
            for i, record in enumerate(top):
                if timed and min(timed)[0] <= _mean(record.run_secs):
                    break  # no untimed record claims to beat the re-timed best
                tried += 1
                got = measure(record)
                if isinstance(got, str):
                    failed.append(f"{task.task_name}: {got}")
                    got = [1e10]  # MetaSchedule's mark of a failed run
                else:
                    timed.append((statistics.median(got), i))
                new_secs[_key(record)] = got
            if not timed:
                continue
            best_s, best_i = min(timed)
            kernels.append(RetimedKernel(task.task_name, tried, 1e3 * before, 1e3 * best_s,
                                         best_i != 0))
            say(f"  [{n}/{len(tasks)}] {task.task_name}: recorded {1e3 * before:.4f} ms, "
                f"re-timed {1e3 * best_s:.4f} ms ({len(timed)} record(s))")
    if new_secs:
        _rewrite(info, database, new_secs)
    return RetimeResult(info, tuple(kernels), tuple(skipped), tuple(failed),
                        time.monotonic() - started, repeat)


def _key(record) -> tuple[int, str]:
    import tvm_ffi

    return tvm_ffi.structural_hash(record.workload.mod), str(record.trace)


def _rewrite(info: TuningDatabase, database, new_secs: dict) -> None:
    """Write every record of ``database`` into new files with the re-timed run_secs, then
    replace the database's files (the old records file kept as ``*.before-retime``)."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord

    records = list(database.get_all_tuning_records())
    with tempfile.TemporaryDirectory(dir=info.path, prefix=".retime-") as tmp:
        wl_tmp, rec_tmp = Path(tmp) / WORKLOADS, Path(tmp) / RECORDS
        # the same workloads file, so the records' workload indices stay what they were and
        # only the records file is replaced (one atomic rename)
        shutil.copyfile(info.path / WORKLOADS, wl_tmp)
        out = JSONDatabase(path_workload=str(wl_tmp), path_tuning_record=str(rec_tmp),
                           allow_missing=True)
        for r in records:
            secs = new_secs.get(_key(r))
            run_secs = [float(s) for s in r.run_secs] if secs is None else secs
            out.commit_tuning_record(TuningRecord(r.trace, out.commit_workload(r.workload.mod),
                                                  run_secs, r.target, r.args_info))
        del out
        if sum(1 for line in open(rec_tmp) if line.strip()) != len(records):
            raise TuningError(f"re-timing {info.path}: the rewritten records file lost records; "
                              "the database was left as it was")
        if wl_tmp.read_bytes() != (info.path / WORKLOADS).read_bytes():
            raise TuningError(f"re-timing {info.path}: the workloads would change; the database "
                              "was left as it was")
        shutil.copyfile(info.path / RECORDS, info.path / (RECORDS + BACKUP_SUFFIX))
        os.replace(rec_tmp, info.path / RECORDS)
