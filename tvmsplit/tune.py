"""Tune a model's kernels with MetaSchedule, on this machine or on a device over TVM RPC.

    result = tune(graph, get_target("host"), trials=1000, time_budget_s=1200, progress=print)

What it does, in order:
1. Tasks: the whole model's Relax module (after ``graphopt``, lowered as every build lowers it)
   and, when ``plans`` are given, every stage of them; their PrimFuncs, one task per distinct
   kernel (MetaSchedule's structural workload key, so a layer repeated across models, stages or
   splits is tuned once). A database tuned on the whole model covers the stages of its splits.
2. Budget where it pays: tasks are ordered by their share of the model's FLOPs and MetaSchedule's
   gradient task scheduler then gives trials to the tasks whose measured latency x occurrences
   falls fastest. Elementwise tasks (no reduction: one distinct schedule) get one trial each that
   is not charged to ``trials``.
3. Resumable: ``trials`` is the total for the database: trials already recorded for these tasks
   are subtracted, so a second run continues an interrupted one. Records are appended to the
   database as they are measured; Ctrl-C keeps every one.
4. Measuring: ``LocalRunner`` here, or ``RPCRunner`` on a device (``rpc=(host, port)`` for a
   server, ``tracker=(host, port), key=...`` through a tracker). Cross targets (aarch64) are
   linked with the target's cross compiler before upload. The builder skips MetaSchedule's
   per-worker import of ``tvm.s_tir.tensor_intrin`` (~25 s each, times out on small machines).

``tvmsplit tune`` is the command line; ``tunedb`` holds the database format and applying it.
"""
from __future__ import annotations

import functools
import math
from collections import Counter
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .graph import LayerGraph
from .targets import TargetSpec
from .tunedb import (TuningDatabase, TuningError, create_database, default_db_dir, has_reduction,
                     local_cpu, tune_target_dict)


@dataclass(frozen=True)
class TuneTask:
    """One kernel to tune."""

    name: str
    weight: int            # occurrences in the tuned modules
    flops: float           # per occurrence
    elementwise: bool
    trials_before: int     # records already in the database


@dataclass(frozen=True)
class TuneProgress:
    trials_done: int
    trials_total: int
    elapsed_s: float
    best_total_ms: float | None   # sum of weight x best kernel time over the tasks measured so far
    tasks_measured: int
    tasks_total: int

    @property
    def eta_s(self) -> float | None:
        if self.trials_done == 0:
            return None
        return self.elapsed_s / self.trials_done * max(0, self.trials_total - self.trials_done)

    def line(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s / 60:.1f} min"
        best = "-" if self.best_total_ms is None else f"{self.best_total_ms:.2f} ms"
        width = 24
        filled = int(width * min(1.0, self.trials_done / max(1, self.trials_total)))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.trials_done}/{self.trials_total} "
                f"trials, kernels measured {self.tasks_measured}/{self.tasks_total}, "
                f"best sum {best}, {self.elapsed_s / 60:.1f} min, ETA {eta}")


@dataclass(frozen=True)
class TuneResult:
    database: TuningDatabase
    tasks: tuple[TuneTask, ...]
    trials_run: int
    elapsed_s: float
    stopped: str                 # "done", "time budget", "nothing to do"
    best_total_ms: float | None  # sum of weight x best kernel time (this run's measurements)
    failed: int = 0              # trials that did not build or run
    first_error: str = ""        # the first failure's message (its last line)

    def describe(self) -> str:
        heavy = sum(1 for t in self.tasks if not t.elementwise)
        best = "" if self.best_total_ms is None else f"; sum of best kernel times {self.best_total_ms:.2f} ms"
        failed = f"; {self.failed} failed, first: {self.first_error}" if self.failed else ""
        return (f"{len(self.tasks)} kernels ({heavy} with reductions), {self.trials_run} trials in "
                f"{self.elapsed_s / 60:.1f} min ({self.stopped}); database {self.database.path} "
                f"now holds {self.database.records} records{best}{failed}")


ProgressFn = Callable[[TuneProgress], None]


def _ms_build(mod, target, _params):
    """MetaSchedule build function that does not import tvm.s_tir.tensor_intrin per worker."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _ms_export_cross(compiler: str, mod) -> str:
    """Link a candidate with the target's cross compiler (the device may have no compiler)."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="tvmsplit-tune-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def _ms_direct_session(host: str, port: int, timeout_s: int, _rpc_config):
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=timeout_s)


def _ms_alloc_argument(session, device, args_info, alloc_repeat):
    """Random arguments on the device: with the device's own random fill when its TVM has one,
    else filled from this machine (a runtime-only TVM, e.g. the testbed's qemu device, has no
    ``tvm.contrib.random``)."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except Exception:  # noqa: BLE001 - missing on the device
        rng = np.random.default_rng(0)

        def fill(arg):
            arg.copyfrom(rng.uniform(-1, 1, size=tuple(arg.shape)).astype(str(arg.dtype)))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _flops(func) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(func))
    except Exception:  # noqa: BLE001 - an estimate only orders the tasks
        return 0.0


def tuning_modules(graph: LayerGraph, spec: TargetSpec, plans: Sequence = ()) -> list:
    """The lowered Relax modules whose kernels are tuned: the whole model, then each plan's
    stages that run on ``spec``."""
    from .compile import stage_module
    from .graphopt import lower
    from .split import plan_split

    target = spec.tvm_target()
    whole = plan_split(graph, targets=[spec.name]).stages[0]
    stages = [whole, *[s for p in plans for s in p.stages if s.target == spec.name]]
    return [lower(stage_module(graph, s, spec), target) for s in stages]


def extract(graph: LayerGraph, spec: TargetSpec, tune_target, plans: Sequence = ()):
    """MetaSchedule's extracted tasks of ``tuning_modules``, deduplicated across modules."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    tasks: list = []
    for mod in tuning_modules(graph, spec, plans):
        for task in ms.relax_integration.extract_tasks(mod, tune_target):
            same = next((t for t in tasks if tvm_ffi.structural_equal(t.dispatched[0],
                                                                     task.dispatched[0])), None)
            if same is None:
                tasks.append(task)
    return tasks


def check_device(rpc: tuple[str, int] | None, tracker: tuple[str, int] | None,
                 key: str | None, timeout_s: float = 10.0) -> str:
    """Reach the device before tuning starts; returns its description or raises TuningError."""
    from tvm import rpc as tvm_rpc

    if tracker is not None:
        if not key:
            raise TuningError("--tracker needs --key (the key the device registered with)")
        from .rpc_device import RPCDeviceError, check_tracker

        try:
            check_tracker(tracker)  # fails in seconds; TVM's own client retries for a minute
        except RPCDeviceError as exc:
            raise TuningError(f"{exc} (see rpc/README.md)") from None
        try:
            summary = tvm_rpc.connect_tracker(*tracker).summary()
        except Exception as exc:  # noqa: BLE001 - any failure here means unreachable
            raise TuningError(f"cannot reach the RPC tracker {tracker[0]}:{tracker[1]} ({exc}); "
                              "start one with `python -m tvm.exec.rpc_tracker --host H --port P` "
                              "(see rpc/README.md)") from None
        keys = sorted(summary.get("queue_info", {}))
        if key not in keys:
            raise TuningError(f"the tracker {tracker[0]}:{tracker[1]} has no device with key "
                              f"{key!r} (it has: {', '.join(keys) or 'none'}); start the device "
                              f"with `python -m tvmsplit.rpc_device --tracker ... --key {key}`")
        try:
            # a session opens (and is dropped at once): the device is reachable
            tvm_rpc.connect_tracker(*tracker).request(key, session_timeout=int(timeout_s),
                                                      max_retry=2)
        except Exception as exc:  # noqa: BLE001
            raise TuningError(f"the device {key!r} at the tracker {tracker[0]}:{tracker[1]} "
                              f"cannot be reached ({exc})") from None
        return f"rpc-tracker://{tracker[0]}:{tracker[1]}/{key}"
    if rpc is not None:
        try:
            tvm_rpc.connect(rpc[0], rpc[1], session_timeout=int(timeout_s))  # as above
        except Exception as exc:  # noqa: BLE001
            raise TuningError(f"cannot reach the RPC device {rpc[0]}:{rpc[1]} ({exc}); start it "
                              "with `python -m tvmsplit.rpc_device --host H --port P`") from None
        return f"rpc://{rpc[0]}:{rpc[1]}"
    return local_cpu()


def _runner(rpc, tracker, key, session_timeout_s: int):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40,
                                          enable_cpu_cache_flush=False)
    if tracker is not None:
        config = ms.runner.RPCConfig(tracker_host=tracker[0], tracker_port=tracker[1],
                                     tracker_key=key, session_timeout_sec=session_timeout_s)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                                   f_alloc_argument=_ms_alloc_argument)
    if rpc is not None:
        # RPCRunner insists on tracker fields; with our session function they are never used.
        config = ms.runner.RPCConfig(tracker_host="unused", tracker_port=1, tracker_key="unused",
                                     session_timeout_sec=session_timeout_s)
        return ms.runner.RPCRunner(
            rpc_config=config, evaluator_config=evaluator, max_workers=1,
            f_alloc_argument=_ms_alloc_argument, f_create_session=functools.partial(_ms_direct_session, rpc[0], rpc[1],
                                               session_timeout_s))
    return ms.runner.LocalRunner(timeout_sec=session_timeout_s, evaluator_config=evaluator)




def tune(graph: LayerGraph, spec: TargetSpec, *, db: str | Path | None = None, trials: int = 200,
         time_budget_s: float | None = None, plans: Sequence = (),
         rpc: tuple[str, int] | None = None, tracker: tuple[str, int] | None = None,
         key: str | None = None, num_cores: int | None = None, seed: int = 0,
         progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> TuneResult:
    """Tune ``graph``'s kernels for ``spec`` into the database ``db`` (default: the target's)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuningError(f"trials must be an integer >= 1, got {trials!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise TuningError(f"the time budget must be > 0 s, got {time_budget_s!r}")
    tune_target = tune_target_dict(spec, num_cores)  # refuses GPU targets
    if not spec.runs_on_host and rpc is None and tracker is None:
        raise TuningError(f"target {spec.name!r} ({spec.arch}) does not run on this machine; "
                          "tune it on the device over RPC (--rpc HOST:PORT or --tracker HOST:PORT "
                          "--key KEY, see rpc/README.md)")
    say = log or (lambda _m: None)
    measured_on = check_device(rpc, tracker, key)
    path = Path(db) if db is not None else default_db_dir(spec)
    if path is None:
        raise TuningError("TVMSPLIT_CACHE is off, so there is no default database; pass --db DIR")
    database_info = create_database(path, spec, tune_target, measured_on)

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    target = tvm.target.Target(tune_target)
    say("extracting tasks")
    extracted = extract(graph, spec, target, plans)
    database = database_info.open()
    import tvm_ffi

    # records per workload, failed trials included (MetaSchedule's top-k skips those)
    recorded = Counter(tvm_ffi.structural_hash(r.workload.mod)
                       for r in database.get_all_tuning_records())
    tasks = []
    for t in extracted:
        func = next(f for f in t.dispatched[0].functions.values() if isinstance(f, tvm.tirx.PrimFunc))
        tasks.append(TuneTask(t.task_name, int(t.weight), _flops(func), not has_reduction(func),
                              recorded[tvm_ffi.structural_hash(t.dispatched[0])]))
    # Elementwise tasks first (the scheduler's first round visits tasks in order; each needs one
    # trial and is then done), then by FLOPs share, so a small budget goes to the big kernels.
    order = sorted(range(len(tasks)), key=lambda i: (not tasks[i].elementwise,
                                                       -tasks[i].weight * tasks[i].flops))
    heavy_before = sum(tasks[i].trials_before for i in order if not tasks[i].elementwise)
    remaining = trials - heavy_before
    todo = [i for i in order if not (tasks[i].elementwise and tasks[i].trials_before > 0)]
    todo = [i for i in todo if tasks[i].elementwise or remaining > 0]
    if not todo:
        say(f"the database already holds {heavy_before} trials for these kernels (>= {trials}); "
            "nothing to do (raise --trials to tune further)")
        return TuneResult(database_info, tuple(tasks), 0, 0.0, "nothing to do", None)
    n_heavy = sum(1 for i in todo if not tasks[i].elementwise)
    n_light = len(todo) - n_heavy
    budget = max(0, remaining) + n_light
    per_task = min(max(0, remaining), max(32, math.ceil(2 * max(0, remaining) / max(1, n_heavy))))
    per_iter = max(4, min(16, max(0, remaining) // max(1, 2 * n_heavy)))
    if heavy_before:
        say(f"resuming: {heavy_before} trials already recorded, {max(0, remaining)} to go")
    say(f"{len(tasks)} kernels ({n_heavy} to tune, {n_light} elementwise at 1 trial each); "
        f"{budget} trials, up to {per_task} per kernel, {per_iter} per round; measuring on "
        f"{measured_on}")

    builder_kwargs = {}
    if spec.cross_compiler:
        builder_kwargs["f_export"] = functools.partial(_ms_export_cross, spec.cross_compiler)
    builder = ms.builder.LocalBuilder(f_build=_ms_build, max_workers=2, timeout_sec=120,
                                      **builder_kwargs)
    runner = _runner(rpc, tracker, key, 120 if (rpc or tracker) else 30)
    started = time.monotonic()
    best: dict[int, float] = {}
    weights = [tasks[i].weight for i in todo]
    done = [0]
    stopped = ["done"]
    errors: list[str] = []

    @derived_object
    class _Watch(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, _candidates, builds, results) -> None:
            done[0] += len(results)
            for b, r in zip(builds, results):
                msg = b.error_msg or r.error_msg
                if msg:
                    errors.append(_last_line(str(msg)))
                elif r.run_secs:
                    ms_ = 1e3 * sum(float(s) for s in r.run_secs) / len(r.run_secs)
                    best[task_id] = min(best.get(task_id, math.inf), ms_)
            elapsed = time.monotonic() - started
            if progress:
                progress(TuneProgress(done[0], budget, elapsed, _best_total(best, weights),
                                      len(best), len(todo)))
            if time_budget_s is not None and elapsed > time_budget_s and stopped[0] == "done":
                # Terminating tasks lets the running one finish its per-task quota; leave now
                # instead (this batch is already in the database: the default callbacks ran).
                stopped[0] = "time budget"
                raise _TimeUp()

    import logging

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if ms_logger.level == logging.NOTSET:  # MetaSchedule's per-round tables go to its log files
        ms_logger.setLevel(logging.WARNING)
    say("preparing MetaSchedule (it imports its tensor intrinsics once, ~30 s)")
    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [extracted[i] for i in todo], work_dir=str(path / "logs"),
        strategy=ms.search_strategy.EvolutionarySearch(population_size=128,
                                                       init_min_unmeasured=32,
                                                       genetic_num_iters=2),
        num_threads=max(1, int(tune_target["num-cores"])), seed=seed)
    # Ctrl-C inside MetaSchedule's C++ loop comes back as a RuntimeError: remember that it was
    # one, so callers see KeyboardInterrupt (every record measured so far is already on disk).
    interrupted = [False]

    def on_sigint(_signum, _frame):
        interrupted[0] = True
        raise KeyboardInterrupt

    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        _tune_tasks(ms, contexts, weights, path, budget, per_task, per_iter, builder, runner,
                    database, _Watch())
    except BaseException:
        if interrupted[0]:
            raise KeyboardInterrupt from None
        if stopped[0] != "time budget":
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return TuneResult(database_info, tuple(tasks), done[0], time.monotonic() - started, stopped[0],
                      _best_total(best, weights), len(errors), errors[0] if errors else "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:300]


class _TimeUp(Exception):
    """Raised from the measure callback when the time budget is spent."""


def _tune_tasks(ms, contexts, weights, path, budget, per_task, per_iter, builder, runner,
                database, watch) -> None:
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=[float(w) for w in weights], work_dir=str(path / "logs"),
        max_trials_global=budget, max_trials_per_task=max(1, per_task),
        num_trials_per_iter=per_iter, builder=builder, runner=runner, database=database,
        cost_model=ms.cost_model.XGBModel(num_warmup_samples=min(32, max(1, per_task))),
        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), watch],
        task_scheduler="gradient")


def _best_total(best: dict[int, float], weights: Sequence[int]) -> float | None:
    if not best:
        return None
    return sum(weights[i] * ms_ for i, ms_ in best.items())
