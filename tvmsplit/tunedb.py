"""Tuning databases: where MetaSchedule's records live, which target they belong to, and applying
them to a stage at build time.

A database is a directory holding MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``: workload-keyed, so a layer repeated across models, stages and
splits is tuned once) and ``tvmsplit-tuning.json``, which says what it was tuned for::

    {"format": 1, "target": {...TargetSpec.to_json()...}, "tune_target": {...the TVM target...},
     "measured_on": "local CPU: Intel(R) Xeon(R) Processor (avx512f, ...)" | "rpc://HOST:PORT" | ...}

A database tuned for one target is refused for another (schedules carry the target's
vector width and core count). Its timings belong to the machine that measured them
(``measured_on``): schedules stay correct on another CPU of the same target but may not be the
fastest there.

The default database of a target is ``<cache>/tuning/<target name>`` (``TVMSPLIT_CACHE``, see
``cache_root``); ``tvmsplit tune --db DIR`` and ``tvmsplit build --db DIR`` name another.
Builds never import the tuning machinery beyond ``ms.database`` (cheap).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TvmsplitError
from .targets import TargetSpec, host_cores

META = "tvmsplit-tuning.json"
META_FORMAT = 1
RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"


class TuningError(TvmsplitError):
    """A tuning database is unusable, or tuning cannot start (bad target, unreachable device)."""


def cache_root() -> Path | None:
    value = os.environ.get("TVMSPLIT_CACHE", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "tvmsplit"


def default_db_dir(spec: TargetSpec) -> Path | None:
    root = cache_root()
    return None if root is None else root / "tuning" / spec.name


def local_cpu() -> str:
    """This machine's CPU model and its SIMD features, as a database's ``measured_on``."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "neon", "asimd", "sve", "fma")))
    return f"local CPU: {model} ({', '.join(simd) or 'no SIMD flags read'})"


def tune_target_dict(spec: TargetSpec, num_cores: int | None = None) -> dict[str, Any]:
    """The TVM target MetaSchedule tunes and applies under: the spec's, with ``num-cores``."""
    if spec.kind != "llvm":
        raise TuningError(f"target {spec.name!r} is a {spec.kind} target; tvmsplit tunes CPU "
                          "(llvm) targets (GPU stages use DLight's default schedules)")
    d = spec.target_dict
    if "num-cores" not in d:
        if num_cores is None and not spec.runs_on_host:
            raise TuningError(f"target {spec.name!r} does not say its core count; add "
                              f"'num-cores = N' to [target] in {spec.source or 'its .toml'} or "
                              "pass --num-cores")
        d["num-cores"] = int(num_cores or host_cores())
    return d


@dataclass(frozen=True)
class TuningDatabase:
    """A database directory and what it was tuned for."""

    path: Path
    target: dict[str, Any]        # TargetSpec.to_json() of the target it was tuned for
    tune_target: dict[str, Any]   # the TVM target dict (with num-cores)
    measured_on: str

    @property
    def records(self) -> int:
        f = self.path / RECORDS
        if not f.is_file():
            return 0
        with open(f, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.tune_target)

    def open(self):
        """MetaSchedule's JSONDatabase over this directory."""
        from tvm.s_tir.meta_schedule.database import JSONDatabase

        return JSONDatabase(path_workload=str(self.path / WORKLOADS),
                            path_tuning_record=str(self.path / RECORDS), allow_missing=True)


def _same_target(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("target", "host", "arch")
    return all(a.get(k) == b.get(k) for k in keys)


def read_database(path: str | os.PathLike, spec: TargetSpec) -> TuningDatabase:
    """Open the database at ``path`` for ``spec``; refuse one tuned for another target."""
    path = Path(path)
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
        db = TuningDatabase(path, dict(meta["target"]), dict(meta["tune_target"]),
                            str(meta.get("measured_on", "unknown")))
    except FileNotFoundError:
        raise TuningError(f"{str(path)!r} is not a tvmsplit tuning database (no {META}); create "
                          f"one with `tvmsplit tune MODEL --target {spec.name} --db {path}`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TuningError(f"{meta_path} is corrupt ({exc}); delete {str(path)!r} and tune again") \
            from None
    if not _same_target(db.target, spec.to_json()):
        raise TuningError(f"tuning database {str(path)!r} was tuned for target "
                          f"{db.target.get('name')!r} ({db.target.get('target')}), not for "
                          f"{spec.name!r} ({spec.target_dict}); tune for {spec.name} into another "
                          "directory (--db) or build for the target it was tuned for")
    return db


def create_database(path: str | os.PathLike, spec: TargetSpec, tune_target: dict[str, Any],
                    measured_on: str) -> TuningDatabase:
    """Open ``path`` for tuning ``spec``, creating it if needed (refuses another target's)."""
    path = Path(path)
    if (path / META).is_file():
        db = read_database(path, spec)
        if db.tune_target != tune_target:
            raise TuningError(f"tuning database {str(path)!r} was tuned with {db.tune_target}, "
                              f"not {tune_target} (another core count?); use another --db")
        return db
    if path.exists() and any(path.iterdir()):
        raise TuningError(f"{str(path)!r} exists and is not a tvmsplit tuning database; choose a "
                          "new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": META_FORMAT, "target": spec.to_json(), "tune_target": tune_target,
            "measured_on": measured_on}
    tmp = path / f".{META}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path / META)
    return TuningDatabase(path, spec.to_json(), tune_target, measured_on)


def find_database(spec: TargetSpec, path: str | os.PathLike | None = None) -> TuningDatabase | None:
    """The database a build of ``spec`` uses: ``path`` if given (must exist and match), else the
    target's default one if it exists and matches (a mismatching default is ignored: it was
    written for an older definition of the target)."""
    if spec.kind != "llvm":
        return None
    if path is not None:
        return read_database(path, spec)
    default = default_db_dir(spec)
    if default is None or not (default / META).is_file():
        return None
    try:
        return read_database(default, spec)
    except TuningError:
        return None


def database_paths(specs, db: str | os.PathLike | None) -> list[Path | None]:
    """Per target of a plan, the database ``db`` when it was tuned for that target, else None
    (the target's default is used). Refuses ``db`` when it fits none of them, before any build."""
    if db is None:
        return [None] * len(specs)
    fits = []
    for spec in specs:
        try:
            read_database(db, spec)
            fits.append(Path(db))
        except TuningError:
            fits.append(None)
    if not any(fits):
        cpu = [s for s in specs if s.kind == "llvm"]
        read_database(db, cpu[0] if cpu else specs[0])  # raises: says which target it is for
        raise TuningError(f"tuning database {str(db)!r} fits no CPU stage of this plan")
    return fits


@dataclass(frozen=True)
class AppliedTuning:
    """What a build took from a database: how many kernels were tuned, and a digest of the
    records used (part of the build cache key)."""

    database: str | None
    measured_on: str | None
    tuned: int
    kernels: int
    records_sha256: str
    # What the database measured for the build's kernels (each record's mean run time, times
    # the calls of that kernel): the prior the latency predictor scales. NaN unless every
    # kernel with a reduction (conv, matmul, pooling) is tuned.
    recorded_ms: float = math.nan

    def describe(self) -> str:
        if self.database is None:
            return f"0/{self.kernels} kernels tuned (no tuning database)"
        return f"{self.tuned}/{self.kernels} kernels tuned (database {self.database})"

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "measured_on": self.measured_on, "tuned": self.tuned,
                "kernels": self.kernels, "records_sha256": self.records_sha256,
                "recorded_ms": None if math.isnan(self.recorded_ms) else self.recorded_ms}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AppliedTuning":
        recorded = d.get("recorded_ms")
        return cls(d["database"], d["measured_on"], int(d["tuned"]), int(d["kernels"]),
                   str(d["records_sha256"]), math.nan if recorded is None else float(recorded))


def apply_database(lowered, db: TuningDatabase | None, build_target):
    """Schedule every PrimFunc of ``lowered`` (a module after Relax's "zero" pipeline) that
    ``db`` holds a record for; the rest get ``fallback_schedule``.

    Returns ``(module, AppliedTuning)``.
    """
    from tvm import tirx

    names = [gv for gv, f in lowered.functions.items() if isinstance(f, tirx.PrimFunc)]
    digest = hashlib.sha256()
    tuned = 0
    recorded = math.nan
    if db is not None:
        from tvm.relax.transform import MetaScheduleApplyDatabase

        database = db.open()   # read once: the records the build applies and reports
        recorded = recorded_ms(lowered, db, database)
        with db.tvm_target(), database:
            lowered = MetaScheduleApplyDatabase(enable_warning=False)(lowered)
        for gv in sorted(names, key=lambda g: g.name_hint):
            func = lowered[gv]
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
                tuned += 1  # the scheduled TIR itself is what the cache key must follow
                digest.update(gv.name_hint.encode() + b"\0" + func.script().encode())
    lowered = fallback_schedule(lowered, build_target)
    applied = AppliedTuning(None if db is None else str(db.path),
                            None if db is None else db.measured_on, tuned, len(names),
                            digest.hexdigest(), recorded)
    return lowered, applied


def kernel_calls(lowered) -> Counter:
    """How many times the Relax functions of ``lowered`` call each PrimFunc (by name)."""
    from tvm import relax

    calls: Counter = Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.args and isinstance(expr.args[0], relax.GlobalVar):
            calls[expr.args[0].name_hint] += 1

    for func in lowered.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def recorded_ms(lowered, db: TuningDatabase, database=None) -> float:
    """The time ``db`` measured for the kernels of ``lowered`` (a module after the "zero"
    pipeline): per PrimFunc, the median run time of its best record (``retime`` stores several
    runs; MetaSchedule's own records hold one), times its calls. The kernels
    are matched the way ``MetaScheduleApplyDatabase`` matches them (MetaSchedule's
    ``normalize_mod``, then the structural workload hash). NaN when a kernel with a reduction has
    no record; an elementwise kernel without one counts 0 (it is memory-bound and small).
    ``database``: ``db.open()`` when the caller has it open already."""
    import tvm_ffi
    from tvm import tirx

    normalize = tvm_ffi.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    calls = kernel_calls(lowered)
    total_s = 0.0
    target = db.tvm_target()
    with target:
        database = database if database is not None else db.open()
        for gv, func in lowered.functions.items():
            if not isinstance(func, tirx.PrimFunc) or not calls[gv.name_hint]:
                continue
            record = database.query_tuning_record(normalize(func), target, gv.name_hint)
            secs = [float(s) for s in (record.run_secs or ())] if record is not None else []
            if not secs:
                if has_reduction(func):
                    return math.nan
                continue
            total_s += calls[gv.name_hint] * statistics.median(secs)
    return 1e3 * total_s




def has_reduction(func) -> bool:
    """Whether a PrimFunc has a reduction block (conv, matmul, pooling) or is elementwise."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    pending = list(sch.get_child_blocks(sch.get_sblock("root")))
    while pending:
        block = pending.pop()
        if any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars):  # CommReduce
            return True
        pending.extend(sch.get_child_blocks(block))
    return False


def fallback_schedule(lowered, target):
    """Parallel outer loops for every PrimFunc no database scheduled, on targets with several
    cores: MetaSchedule's own ``RewriteParallelVectorizeUnroll`` on a ``meta_schedule.parallel``
    annotation of the root block. A function it cannot rewrite is left as it was.

    Measured (bench/bench_tune.py, untuned, x86_64 on 2 vCPUs): at 2 threads 1.6-2x faster than
    no schedule (zoo ResNet 28.8 -> 14.7 ms, MobileNetV2 5.5 -> 3.5, PP-LCNet 51 -> 28); at 1 thread
    on the same build 0-12 % slower (5.5 -> 6.2 ms, 51 -> 54). Adding vectorisation
    (``meta_schedule.vectorize``) lost up to 4.7x (MobileNetV2 at 2 threads), so it is not used.
    Tuned kernels never get it.
    """
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir.meta_schedule.postproc import RewriteParallelVectorizeUnroll

    try:
        cores = int(target.attrs["num-cores"])
    except (KeyError, AttributeError, TypeError, ValueError):
        cores = host_cores()
    if cores < 2:
        return lowered
    out = lowered
    for gv, func in list(lowered.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        try:
            sch = s_tir.Schedule(func)
            root = sch.get_sblock("root")
            sch.annotate(root, "meta_schedule.parallel", 16 * cores)
            if RewriteParallelVectorizeUnroll().apply(sch):
                out[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        except tvm.TVMError:
            continue
    return out
