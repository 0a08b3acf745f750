"""Tuning as a user meets it: MetaSchedule over a real local RPC server (through a tracker and
directly), a database that the next build applies, resuming, graph passes, and the clear errors.

Trials are a handful per run (the point is that tuning, recording and applying work; speed is in
bench/bench_tune.py). The first tuning run in a process pays MetaSchedule's one-time import of
its tensor intrinsics (~30 s).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import Result

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.build import build_bundle
from tvmsplit.check import check_bundle
from tvmsplit.rpc_device import LocalRPCDevice
from tvmsplit.split import plan_split
from tvmsplit.targets import get_target
from tvmsplit.tune import tune
from tvmsplit.tunedb import META, create_database, read_database

from cli_helpers import invoke, ok

pytestmark = pytest.mark.slow


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def small(name: str):
    return ts.load(zoo.make(name, input_size=32, width=0.25), name=name)


def test_tune_over_an_rpc_tracker_then_build_applies_the_records(tmp_path):
    db = tmp_path / "db"
    with LocalRPCDevice(key="x86", tracker=True) as dev:
        tracker = f"{dev.tracker[0]}:{dev.tracker[1]}"
        res = ok(invoke("tune", "zoo:chain", "--target", "x86_64", "--tracker", tracker,
                        "--key", "x86", "--trials", 8, "--db", db))
        assert "tuned chain for x86_64" in res.output
        meta = json.loads((db / META).read_text())
        assert meta["measured_on"].startswith("rpc-tracker://") and meta["target"]["name"] == "x86_64"
        records = read_database(db, get_target("x86_64")).records
        assert records >= 8
        # The same budget again: the records count, nothing is measured twice.
        again = ok(invoke("tune", "zoo:chain", "--target", "x86_64", "--tracker", tracker,
                          "--key", "x86", "--trials", 8, "--db", db))
        assert "nothing to do" in again.output
        assert read_database(db, get_target("x86_64")).records == records

    out = tmp_path / "bundle"
    res = ok(invoke("build", "zoo:chain", "--split-at", "pool1", "-o", out, "--db", db, "--check"))
    assert "OK" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    tuned = [s["tuning"] for s in manifest["stages"]]
    assert all(t["database"] == str(db) for t in tuned)
    assert sum(t["tuned"] for t in tuned) > 0, tuned   # records really applied to the stages
    assert "kernels tuned (database" in res.output


def test_tune_directly_on_an_rpc_server_resumes_and_builds_match_onnxruntime(tmp_path):
    g = small("resnet")
    spec = get_target("x86_64")
    db = tmp_path / "db"
    logs: list[str] = []
    with LocalRPCDevice(key="direct") as dev:
        first = tune(g, spec, db=db, trials=6, rpc=(dev.host, dev.port), log=logs.append)
        assert first.trials_run >= 6 and first.database.measured_on == f"rpc://{dev.host}:{dev.port}"
        after_first = first.database.records
        second = tune(g, spec, db=db, trials=12, rpc=(dev.host, dev.port), log=logs.append)
    assert any(m.startswith("resuming: ") for m in logs), logs
    assert sum(t.trials_before for t in second.tasks) >= 6
    assert second.trials_run > 0 and second.database.records > after_first
    bundle = build_bundle(g, plan_split(g, ["block2_add"], ["x86_64"]), tmp_path / "b", db=db)
    report = check_bundle(bundle, g)
    assert report.ok, report.rel


@pytest.mark.parametrize("name", ["chain", "resnet", "inception", "vgg16", "mobilenetv2"])
def test_tuned_build_after_graph_passes_equals_onnxruntime(tmp_path, name):
    g = small(name)
    spec = get_target("x86_64")
    result = tune(g, spec, db=tmp_path / "db", trials=8)
    assert result.trials_run > 0
    bundle = build_bundle(g, plan_split(g, targets=["x86_64"]), tmp_path / "b", db=tmp_path / "db")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"][0]["tuning"]["tuned"] > 0
    report = check_bundle(bundle, g)
    assert report.ok, (name, report.rel)


def test_the_build_cache_follows_the_records_used(tmp_path):
    from tvmsplit.compile import build_stage

    g = small("chain")
    spec = get_target("x86_64")
    stage = plan_split(g, targets=["x86_64"]).stages[0]
    untuned = build_stage(g, stage, spec, tmp_path / "a.so")
    assert untuned.tuning.database is None and untuned.tuning.tuned == 0
    tune(g, spec, db=tmp_path / "db", trials=4)
    tuned = build_stage(g, stage, spec, tmp_path / "b.so", db=tmp_path / "db")
    assert not tuned.cached and tuned.tuning.tuned > 0      # not the untuned library from cache
    again = build_stage(g, stage, spec, tmp_path / "c.so", db=tmp_path / "db")
    assert again.cached and again.sha256 == tuned.sha256 and again.tuning == tuned.tuning
    cached_untuned = build_stage(g, stage, spec, tmp_path / "d.so")
    assert cached_untuned.cached and cached_untuned.sha256 == untuned.sha256
    assert cached_untuned.tuning.kernels == untuned.tuning.kernels
    assert math.isnan(untuned.tuning.recorded_ms)


def test_what_the_database_measured_is_read_back_per_layer(tmp_path):
    """The predictor's database prior: the recorded time of a layer's kernels, read as the
    build matches them, equals the record's own run time (and a layer with a kernel the
    database never measured has none)."""
    from tvmsplit.compile import build_stage
    from tvmsplit.predict import database_times
    from tvmsplit.split import layer_stage

    g = small("chain")
    spec = get_target("x86_64")
    res = tune(g, spec, db=tmp_path / "db", trials=4)
    per_layer = database_times(g, spec, tmp_path / "db")
    assert len(per_layer) == len(g.layers)
    measured = [i for i, ms in enumerate(per_layer) if ms > 0]
    assert measured and len(measured) < len(g.layers), per_layer  # 4 trials: not every kernel
    assert res.trials_run > 0
    for i in (measured[0], next(i for i in range(len(g.layers)) if i not in measured)):
        built = build_stage(g, layer_stage(g, i, spec.name), spec, tmp_path / f"l{i}.so",
                            db=tmp_path / "db")
        if i in measured:
            assert built.tuning.recorded_ms == pytest.approx(per_layer[i], rel=1e-12)
            assert built.tuning.tuned == built.tuning.kernels
        else:
            assert math.isnan(built.tuning.recorded_ms) and math.isnan(per_layer[i])


def test_a_database_of_another_target_is_refused_with_one_line(tmp_path):
    db = tmp_path / "db"
    create_database(db, get_target("x86_64"), {"kind": "llvm", "num-cores": 2}, "local CPU: test")
    line = one_error_line(invoke("build", "zoo:chain", "--targets", "rpi4b", "-o", tmp_path / "b",
                                 "--db", db))
    assert "tuned for target 'x86_64'" in line and "rpi4b" in line
    assert not (tmp_path / "b").exists()
    line = one_error_line(invoke("tune", "zoo:chain", "--target", "host", "--db", db))
    assert "tuned for target 'x86_64'" in line
    line = one_error_line(invoke("build", "zoo:chain", "-o", tmp_path / "c", "--db", tmp_path / "none"))
    assert "not a tvmsplit tuning database" in line


def test_unreachable_tracker_wrong_key_and_bad_options_are_one_line_each(tmp_path):
    db = tmp_path / "db"
    line = one_error_line(invoke("tune", "zoo:chain", "--target", "x86_64", "--tracker",
                                 "127.0.0.1:1", "--key", "x86", "--db", db))
    assert "no RPC tracker at 127.0.0.1:1" in line
    line = one_error_line(invoke("tune", "zoo:chain", "--target", "x86_64", "--rpc", "127.0.0.1:1",
                                 "--db", db))
    assert "cannot reach the RPC device 127.0.0.1:1" in line
    with LocalRPCDevice(key="x86", tracker=True) as dev:
        line = one_error_line(invoke("tune", "zoo:chain", "--target", "x86_64", "--tracker",
                                     f"{dev.tracker[0]}:{dev.tracker[1]}", "--key", "arm",
                                     "--db", db))
    assert "no device with key 'arm'" in line and "x86" in line
    assert "--rpc" in one_error_line(invoke("tune", "zoo:chain", "--target", "x86_64",
                                            "--rpc", "nohostport"))
    assert "positive duration" in one_error_line(invoke("tune", "zoo:chain", "--target",
                                                        "x86_64", "--time-budget", "soon"))
    assert "does not run on this machine" in one_error_line(
        invoke("tune", "zoo:chain", "--target", "rpi4b", "--db", db))
    assert "cuda" in one_error_line(invoke("tune", "zoo:chain", "--target", "cuda-edge",
                                           "--db", db))
    assert not db.exists()  # no error left a half-made database


def test_host_target_is_this_machines_cpu():
    spec = get_target("host")
    assert spec.runs_on_host and spec.kind == "llvm"
    t = spec.target_dict
    assert isinstance(t["num-cores"], int) and t["num-cores"] >= 1
    assert t["mcpu"] and t["mcpu"] != "@host"
    assert spec.memory_bytes > 0


def test_time_budget_stops_tuning_and_keeps_the_records(tmp_path):
    g = small("chain")  # the budget counts from the start: MetaSchedule's set-up is ~1 min here
    result = tune(g, get_target("x86_64"), db=tmp_path / "db", trials=400, time_budget_s=1.0)
    assert result.stopped == "time budget"
    assert 0 < result.trials_run < 400
    assert result.database.records > 0
    assert np.isfinite(result.best_total_ms)


def test_retime_replaces_noisy_records_with_medians_and_keeps_every_record(tmp_path):
    """`tune --retime`: records that claim an impossible 1 ns (a noisy measurement) are re-timed
    as medians of --repeat runs here; every record is kept, the old file is kept beside it, the
    prior reads the new times, and a build from the re-timed database == onnxruntime."""
    from tvmsplit.compile import build_stage
    from tvmsplit.predict import database_times
    from tvmsplit.retime import BACKUP_SUFFIX, _key, _rewrite, retime
    from tvmsplit.tunedb import RECORDS

    g = small("chain")
    spec = get_target("x86_64")
    db_dir = tmp_path / "db"
    tune(g, spec, db=db_dir, trials=4)
    info = read_database(db_dir, spec)
    records = list(info.open().get_all_tuning_records())
    _rewrite(info, info.open(), {_key(r): [1e-9] for r in records})   # every record: 1 ns
    noisy = [ms for ms in database_times(g, spec, db_dir) if ms > 0]
    assert noisy and max(noisy) < 1e-5
    res = retime(g, spec, db=db_dir, repeat=3, min_repeat_ms=5)
    assert res.kernels and not res.failed and res.repeat == 3
    # Re-timed values are real runs: a 1-FLOP reshape kernel really takes ~85 ns (CI measured
    # 8.5e-5 ms), so "real" means >= 10 ns, i.e. 10x the planted 1 ns.
    assert all(k.after_ms > 1e-5 and k.ratio > 10 for k in res.kernels), res.describe()
    assert len(list(read_database(db_dir, spec).open().get_all_tuning_records())) == len(records)
    assert (db_dir / (RECORDS + BACKUP_SUFFIX)).is_file()
    retimed = [ms for ms in database_times(g, spec, db_dir) if ms > 0]
    assert len(retimed) == len(noisy) and min(retimed) > 1e-5
    built = build_stage(g, plan_split(g, targets=["x86_64"]).stages[0], spec, tmp_path / "s.so",
                        db=db_dir)
    assert built.tuning.tuned > 0
    out = ok(invoke("tune", "zoo:chain", "--target", "x86_64", "--db", db_dir, "--retime",
                    "--repeat", "3", "--shape", "input=1,3,32,32"))
    assert "re-timed chain for x86_64" in out.output, out.output
    bad = invoke("tune", "zoo:chain", "--target", "x86_64", "--retime", "--rpc", "h:1")
    assert "--retime measures on this machine" in one_error_line(bad)
