"""Sweep generator, datasets, the load-aware latency predictor and the regressor comparison.

Most tests use a *synthetic* dataset (``_synthetic``): the layers are real (sweep models loaded
with ``tvmsplit.load``, so every static feature is what a real profile would give), but the
latencies come from a documented formula, so the ML plumbing is tested fast and without the noise
of a shared 2-core machine. The formula: time per FLOP depends on the layer's shape (a conv with
few channels per group or a 1x1 kernel runs less efficiently; elementwise layers carry a ~2 us call
overhead) and is multiplied by a *nonlinear* function of the CPU load,
``1 + 1.5 / (1 + exp(-(cpu - 55) / 8))`` (a step around 55 % busy, as when background work starts
competing for both cores), plus 3 % lognormal noise. A FLOPs-only model cannot express either.

``test_profile_and_predict_real_layers`` measures a few real layers on this machine (LocalSession)
to check the profile -> dataset -> train -> predict path end to end.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.errors import TargetError, TvmsplitError
from tvmsplit.monitor import DeviceState
from tvmsplit.predict import (
    ABLATIONS, LAYER_TYPES, REGRESSORS, Dataset, Predictor, PredictorCorruptError, PredictorError,
    PredictorMissingError, PredictorTargetError, PredictorVersionError, Row, compare_regressors,
    config_id, dynamic_features, layer_type, live_snapshot, metrics, predict_graph, predict_model, split_by_config, split_by_model,
    state_from_json, static_features, train_device,
)
from tvmsplit.layergen import KINDS, SweepError, make_model, sweep_configs, sweep_models

EXPECTED_TYPE = {"conv": "conv", "depthwise_conv": "depthwise_conv", "pool": "pool",
                 "dense": "dense", "activation": "elementwise", "batchnorm": "elementwise",
                 "add": "elementwise", "concat": "concat"}


# ---- sweep ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_sweep_models_are_valid_single_layers(kind):
    models = sweep_models(kind, 6, seed=1)
    assert len(models) == 6
    assert len({m.graph.name for m in models}) == 6            # distinct configurations
    for m in models:
        onnx.checker.check_model(m, full_check=True)
        g = ts.load(m)
        assert len(g.layers) == 1, [(layer.name, layer.ops) for layer in g.layers]
        assert layer_type(g.layers[0]) == EXPECTED_TYPE[kind]
        assert all(d > 0 for t in (*g.inputs, *g.outputs) for d in t.shape)


def test_sweep_fuses_followers_into_one_layer():
    cfg = {"kind": "conv", "cin": 16, "cout": 32, "h": 14, "w": 14, "k": 3, "stride": 1, "pad": 1,
           "groups": 1, "bias": True, "followers": "BN+Relu"}
    layer = ts.load(make_model(cfg)).layers[0]
    assert layer.ops == ("Conv", "BatchNormalization", "Relu")
    f = static_features(layer)
    assert (f["in_c"], f["out_c"], f["kernel_h"], f["pad_h"], f["fused_bn"], f["fused_relu"]) == \
        (16, 32, 3, 2, 1, 1)
    add = ts.load(make_model({"kind": "add", "c": 8, "h": 4, "w": 4, "relu": True})).layers[0]
    assert add.ops == ("Add", "Relu") and len(add.inputs) == 2


def test_sweep_is_seeded_and_checks_its_arguments():
    a = [m.SerializeToString() for m in sweep_models("conv", 3, seed=5)]
    b = [m.SerializeToString() for m in sweep_models("conv", 3, seed=5)]
    c = [m.SerializeToString() for m in sweep_models("conv", 3, seed=6)]
    assert a == b and a != c
    with pytest.raises(SweepError, match="unknown sweep kind 'lstm'; known: conv"):
        sweep_configs("lstm", 3)
    with pytest.raises(SweepError, match="count must be"):
        sweep_configs("conv", -1)


def test_layer_types_of_zoo_models():
    g = ts.load(zoo.make("mobilenetv2", input_size=32, width=0.25))
    types = {layer.name: layer_type(layer) for layer in g.layers}
    assert types["block1_dw_conv"] == "depthwise_conv"
    assert types["block1_project_conv"] == "conv"
    assert types["block3_add"] == "elementwise"
    assert types["gap"] == "pool" and types["fc"] == "dense"
    inc = ts.load(zoo.make("inception", input_size=16, width=0.25))
    assert layer_type(inc.layer("inc1_concat")) == "concat"


# ---- synthetic data ---------------------------------------------------------------------------
def _state(cpu: float, rng: np.random.Generator) -> DeviceState:
    return DeviceState(cpu_percent=float(cpu), system_cpu_percent=float(cpu) * 0.05,
                     mem_available_bytes=int(rng.uniform(14, 20) * 2 ** 30),
                     mem_used_percent=float(rng.uniform(15, 35)), load_avg_1m=float(cpu) / 100,
                     cores=2, runnable_per_core=float(rng.uniform(0, 2)))


def _synthetic_ms(layer, cpu: float, rng: np.random.Generator) -> float:
    f = static_features(layer)
    t = layer_type(layer)
    per_gflop = {"conv": 1.0, "depthwise_conv": 4.0, "dense": 2.0, "pool": 3.0,
                 "elementwise": 1.5, "concat": 2.5}.get(t, 2.0)
    if t in ("conv", "depthwise_conv"):
        per_gflop *= (1 + 4.0 / f["cin_per_group"]) * (1.6 if f["kernel_h"] == 1 else 1.0)
    ms = 0.002 * (t in ("elementwise", "concat", "pool")) + layer.flops / 1e9 * per_gflop * 1e3
    load = 1 + 1.5 / (1 + math.exp(-(cpu - 55) / 8))
    return ms * load * float(rng.lognormal(0, 0.03))


def _synthetic(kinds=("conv", "depthwise_conv", "dense", "add"), count=24, cpus=(5, 30, 60, 95),
               seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    ds = Dataset(target="x86_64")
    for kind in kinds:
        for m in sweep_models(kind, count, seed=seed):
            layer = ts.load(m).layers[0]
            for cpu in cpus:
                c = float(np.clip(cpu + rng.normal(0, 5), 0, 100))
                ds.rows.append(Row(layer, _state(c, rng), _synthetic_ms(layer, c, rng), 0.0,
                                   f"sweep:{m.graph.name}", config_id(layer), f"cpu{cpu}"))
    return ds


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return _synthetic()


@pytest.fixture(scope="module")
def trained(synthetic) -> Predictor:
    return Predictor.train(synthetic, "x86_64", rounds=300)


# ---- datasets ---------------------------------------------------------------------------------
def test_dataset_round_trip_and_errors(tmp_path, synthetic):
    path = synthetic.save(tmp_path / "x86_64.dataset.json")
    back = Dataset.load(path, target="x86_64")
    assert len(back) == len(synthetic) and back.sha256() == synthetic.sha256()
    assert back.rows[3].features() == synthetic.rows[3].features()
    with pytest.raises(PredictorTargetError, match=r"measured for x86_64, you asked for rpi4b; "
                                                   r"run `tvmsplit profile --target rpi4b`"):
        Dataset.load(path, target="rpi4b")
    with pytest.raises(PredictorMissingError, match="run `tvmsplit profile --target x86_64`"):
        Dataset.load(tmp_path / "nope.json", target="x86_64")
    bad = tmp_path / "bad.json"
    bad.write_text(path.read_text()[:1000])
    with pytest.raises(PredictorCorruptError, match="not a readable profile dataset"):
        Dataset.load(bad, target="x86_64")


def test_splits_never_share_configurations_or_models(synthetic):
    train, test = split_by_config(synthetic, 0.25, seed=3)
    assert len(train) and len(test)
    assert not {r.config_id for r in train} & {r.config_id for r in test}
    assert set(test.types()) == set(synthetic.types())     # every type is tested
    models = synthetic.models()[:5]
    train, test = split_by_model(synthetic, models)
    assert {r.model_id for r in test} == set(models)
    assert not {r.model_id for r in train} & set(models)
    assert not {r.config_id for r in train} & {r.config_id for r in test}
    with pytest.raises(PredictorError, match="no rows of model"):
        split_by_model(synthetic, ["zoo:nothing"])


# ---- the predictor ----------------------------------------------------------------------------
def test_predictor_beats_flops_baseline_on_held_out_configurations(synthetic):
    """Synthetic data (see the module docstring): nonlinear in the CPU load and the shape."""
    train, test = split_by_config(synthetic, 0.3, seed=0)
    comp = compare_regressors(train, test, regressors=["FLOPs-only", "XGBoost"])
    xgb, base = comp.get("XGBoost"), comp.get("FLOPs-only")
    assert xgb["mape_pct"] < 0.5 * base["mape_pct"], (xgb, base)
    assert xgb["within10_pct"] > base["within10_pct"] + 20, (xgb, base)
    assert xgb["r2"] > 0.9
    for t in test.types():
        assert comp.get("XGBoost", t)["mape_pct"] < comp.get("FLOPs-only", t)["mape_pct"], t
    # The saved-predictor path gives the same quality as the comparison's XGBoost.
    p = Predictor.train(train, "x86_64")
    m = metrics([r.ms for r in test], p.predict_rows(test))
    assert m["mape_pct"] < 0.5 * base["mape_pct"]


def test_predictor_round_trips_to_disk(tmp_path, trained, synthetic):
    path = trained.save(tmp_path / "p.json")
    back = Predictor.load(path, target="x86_64")
    assert np.array_equal(trained.predict_rows(synthetic), back.predict_rows(synthetic))
    g = ts.load(zoo.make("resnet", input_size=16, width=0.25))
    state = _state(70, np.random.default_rng(0))
    a, b = predict_graph(trained, g, state), predict_graph(back, g, state)
    assert a.to_json() == b.to_json()
    assert a.total_ms == pytest.approx(sum(p.ms for p in a.layers)) and a.total_ms > 0
    # resnet has pool and dense-less types the synthetic set lacks -> fallback, never a crash
    sources = {p.layer_type: p.source for p in a.layers}
    assert sources["conv"] == "xgboost" and sources["pool"] == "fallback"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["target"]["name"] == "x86_64"
    assert data["target"]["spec"]["target"] == {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    assert set(data["types"]) == {"conv", "depthwise_conv", "dense", "elementwise"}
    assert data["types"]["conv"]["features"][-6:] == ["cpu_percent", "system_cpu_percent",
                                                      "mem_available_gib", "mem_used_percent",
                                                      "load_avg_1m", "runnable_per_core"]
    json.loads(data["types"]["conv"]["booster_json"])          # xgboost's own JSON model
    # more load -> predicted slower (the load dependence was learned)
    quiet = predict_graph(back, g, _state(10, np.random.default_rng(0))).total_ms
    busy = predict_graph(back, g, _state(95, np.random.default_rng(0))).total_ms
    assert busy > 1.5 * quiet
    # an unknown state (a remote device without the helper) still predicts
    assert predict_graph(back, g, None).total_ms > 0


def test_predictor_load_errors_say_what_to_run(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_PREDICTORS", str(tmp_path))
    path = trained.save(tmp_path / "x86_64.predictor.json")
    with pytest.raises(PredictorTargetError) as e:
        Predictor.load(path, target="rpi4b")
    assert str(e.value).endswith("was trained for x86_64, you asked for rpi4b; run `tvmsplit profile "
                                 "--target rpi4b` then `tvmsplit train --target rpi4b`")
    with pytest.raises(PredictorMissingError, match=r"no predictor for rpi4b at .*rpi4b.predictor.json"
                                                    r"'; run `tvmsplit profile --target rpi4b` then "
                                                    r"`tvmsplit train --target rpi4b`"):
        predict_model(ts.load(zoo.make("chain", width=0.25)), "rpi4b")
    (tmp_path / "rpi4b.dataset.json").write_text("{}")          # profiled but not trained
    with pytest.raises(PredictorMissingError, match=r"run `tvmsplit train --target rpi4b`"):
        Predictor.load(tmp_path / "rpi4b.predictor.json", target="rpi4b")
    text = path.read_text()
    for name, content, err, msg in [
        ("truncated", text[: len(text) // 2], PredictorCorruptError, "not a readable predictor"),
        ("binary", "\x00\xff garbage", PredictorCorruptError, "not a readable predictor"),
        ("other", json.dumps({"format": "something"}), PredictorCorruptError, "not a readable"),
        ("tampered", text.replace('"base_score', '"base_scorX', 1), PredictorCorruptError,
         "damaged predictor"),
        ("version", text.replace('"schema_version": 1', '"schema_version": 99', 1),
         PredictorVersionError, "schema version 99; this tvmsplit reads version 1"),
    ]:
        p = tmp_path / f"{name}.json"
        p.write_text(content)
        with pytest.raises(err, match=msg) as e:
            Predictor.load(p, target="x86_64")
        assert "`tvmsplit train --target x86_64`" in str(e.value), name
        assert isinstance(e.value, TvmsplitError)
    # the same device name, but its target definition changed since training
    changed = json.loads(text)
    changed["target"]["spec"]["target"]["mcpu"] = "skylake"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(PredictorTargetError, match="but x86_64 is now"):
        Predictor.load(tmp_path / "changed.json", target="x86_64")
    with pytest.raises(TargetError, match="unknown target 'toaster'"):
        Predictor.load(path, target="toaster")


def test_train_device_writes_the_default_file(tmp_path, monkeypatch, synthetic):
    monkeypatch.setenv("TVMSPLIT_PREDICTORS", str(tmp_path))
    with pytest.raises(PredictorMissingError, match="run `tvmsplit profile --target x86_64`"):
        train_device("x86_64")
    synthetic.save(tmp_path / "x86_64.dataset.json")
    predictor, path = train_device("x86_64", rounds=50)
    assert path == tmp_path / "x86_64.predictor.json"
    g = ts.load(zoo.make("chain", width=0.25))
    pred = predict_model(g, "x86_64", state=_state(20, np.random.default_rng(0)))
    assert [p.name for p in pred.layers] == [layer.name for layer in g.layers]
    assert "total" in pred.format() and pred.to_json()["target"] == "x86_64"


def test_compare_regressors_reports_every_regressor_and_type():
    ds = _synthetic(kinds=("conv", "add"), count=12, cpus=(10, 80), seed=2)
    train, test = split_by_config(ds, 0.3, seed=1)
    comp = compare_regressors(train, test, regressors=[*REGRESSORS, *ABLATIONS], split="configs")
    regs = {r["regressor"] for r in comp.rows}
    assert regs == {*REGRESSORS, *ABLATIONS}
    assert {r["layer_type"] for r in comp.rows} == {"conv", "elementwise", "all"}
    for r in comp.rows:
        assert r["n"] > 0 and math.isfinite(r["mae_ms"]) and math.isfinite(r["mape_pct"])
        assert 0 <= r["within10_pct"] <= 100
    md = comp.to_markdown()
    assert "| XGBoost |" in md and "within ±10 %" in md and "RANSAC" in md
    assert set(LAYER_TYPES) >= set(test.types())


def test_live_state_round_trips_and_degrades_to_unknown():
    s = live_snapshot(interval_s=0.05)
    assert isinstance(s, DeviceState) and s.runnable_per_core >= 0 and s.cores >= 1
    assert state_from_json(json.loads(json.dumps(s.to_json()))) == s
    plain = DeviceState(50.0, 2.0, 8 << 30, 40.0, 0.5, 2)       # e.g. from a remote device
    assert state_from_json(plain.to_json()).to_json() == plain.to_json()  # (NaN != NaN)
    f = dynamic_features(plain)
    assert math.isnan(f["runnable_per_core"]) and f["mem_available_gib"] == 8.0
    assert all(math.isnan(v) for v in dynamic_features(None).values())


def test_metrics():
    m = metrics([1.0, 2.0, 4.0], [1.05, 2.5, 4.0])
    assert m["mae_ms"] == pytest.approx(0.55 / 3)
    assert m["mape_pct"] == pytest.approx(100 * (0.05 + 0.25) / 3)
    assert m["within10_pct"] == pytest.approx(200 / 3)


# ---- real measurements ------------------------------------------------------------------------
def test_profile_train_predict_and_plan_through_the_cli(tmp_path, monkeypatch):
    """End to end on real measurements, through the README's commands: `tvmsplit profile
    --device x86_64 --count 1` times ~90 real layers on this machine (one sweep configuration per
    layer kind and the zoo's small models, ~35 s), `train` fits XGBoost for the layer types with
    enough rows (conv has dozens), and `predict` on a model the profile never saw (the chain at
    full width; the profile has it at half width) takes its conv layers through XGBoost, not the
    FLOPs fallback. Its figures are compared with the measured time of the same conv layers,
    each compiled alone as a pipeline stage and run in a worker: within a loose factor 3 (a
    shared 2-core machine). `plan` without --costs then plans with these predictors."""
    from tvmsplit.check import random_inputs

    from cli_helpers import invoke, ok

    store = tmp_path / "predictors"
    monkeypatch.setenv("TVMSPLIT_PREDICTORS", str(store))
    profiled = ok(invoke("profile", "--device", "x86_64", "--count", "1"))
    rows = json.loads((store / "x86_64.dataset.json").read_text())["rows"]
    assert f"profiled {len(rows)} layer measurements" in profiled.stdout
    conv_rows = [r for r in rows if r["layer_type"] == "conv"]
    assert len(conv_rows) >= 8 and all(r["ms"] > 0 for r in rows)
    trained = ok(invoke("train", "--device", "x86_64"))
    assert any(line.split()[:2] == ["conv", "xgboost"] for line in trained.stdout.splitlines()), \
        trained.stdout
    saved = json.loads((store / "x86_64.predictor.json").read_text())
    assert saved["target"]["name"] == "x86_64" and saved["types"]["conv"]["model"] == "xgboost"

    model = tmp_path / "chain.onnx"
    ok(invoke("zoo", "chain", "-o", model))
    predicted = json.loads(ok(invoke("predict", model, "--device", "x86_64", "--json")).stdout)
    by_name = {layer["name"]: layer for layer in predicted["layers"]}
    convs = ["conv2", "conv3", "conv4"]           # 9-19 MFLOPs each: ms, not call overhead
    assert {by_name[c]["source"] for c in convs} == {"xgboost"}
    assert predicted["total_ms"] == pytest.approx(sum(p["ms"] for p in predicted["layers"]))

    g = ts.load(model)
    bundle = ts.build_bundle(g, ts.plan_split(g, split_at=["conv1", *convs]), tmp_path / "b")
    assert [s.plan.layers for s in bundle.stages[1:4]] == [("conv2",), ("pool1", "conv3"), ("conv4",)]
    x = random_inputs(g.inputs, seed=0)
    with ts.Pipeline(bundle) as p:
        p.run(x)                                     # warm-up
        runs = [p.run(x)[1].compute_ms for _ in range(7)]
    measured = {c: float(np.median([r[k] for r in runs])) for k, c in ((1, "conv2"), (3, "conv4"))}
    measured["conv3"] = float(np.median([r[2] for r in runs])) - by_name["pool1"]["ms"]
    for c in convs:
        ratio = by_name[c]["ms"] / measured[c]
        assert 1 / 3 < ratio < 3, (c, by_name[c]["ms"], measured[c])

    devices = ok(invoke("plan", model, "--devices", "a=x86_64,b=x86_64", "--link", "wifi", "--json"))
    plan = json.loads(devices.stdout)
    assert [d["name"] for d in plan["devices"]] == ["a", "b"]
    alone = plan["baselines"]["all-on-end"]
    assert alone["assignment"] == [0] * len(g.layers)
    # the costs are the predictor's (re-read under this moment's load: a loose match)
    assert 0.5 < alone["compute_ms"][0] / predicted["total_ms"] < 2
    table = ok(invoke("plan", model, "--devices", "a=x86_64,b=x86_64", "--link", "wifi")).stdout
    assert "over a -> b" in table and "predicted: latency" in table


def test_profile_device_checks_its_arguments_before_measuring(tmp_path):
    from tvmsplit.sweep import profile_device

    with pytest.raises(SweepError, match=r"rpi4b \(aarch64, llvm\) cannot run on this x86_64 machine; "
                                         r"start `python -m tvm.exec.rpc_server"):
        profile_device("rpi4b", out=str(tmp_path / "d.json"))
    with pytest.raises(SweepError, match="background load runs on this machine"):
        profile_device("rpi4b", rpc="127.0.0.1:1", loads=("none", "cpu1x50"))
    with pytest.raises(SweepError, match="unknown load level 'heavy'; known: none, cpu1x50"):
        profile_device("x86_64", loads=("heavy",))
    with pytest.raises(SweepError, match="--rpc must be HOST:PORT"):
        profile_device("rpi4b", rpc="localhost")
    with pytest.raises(TargetError, match="unknown target 'toaster'"):
        profile_device("toaster")


# ---- held-out models, tuning (issue 15 part 3) -------------------------------------------------
def _zoo_rows(specs, rng) -> Dataset:
    """Synthetic rows of zoo models' real layers: ``_synthetic_ms``, and a layer whose kernels
    are tuned (every second configuration) runs 2.5x faster, as tuned convolutions do here."""
    ds = Dataset(target="x86_64")
    for name, size in specs:
        g = ts.load(zoo.make(name, input_size=size, width=0.5), name=f"zoo:{name}@{size}")
        for cpu in (5, 40, 70, 95):
            for i, layer in enumerate(g.layers):
                tuned = i % 2 == 0
                ms = _synthetic_ms(layer, cpu, rng) * (0.4 if tuned else 1.0)
                samples = ms * rng.lognormal(0, 0.03, 7)
                ds.rows.append(Row(layer, _state(cpu, rng), float(np.median(samples)), 0.0, g.name,
                                   config_id(layer), f"cpu{cpu}",
                                   f"{int(tuned)}/1 kernels tuned (database d)",
                                   float(np.median(np.abs(samples - np.median(samples)))
                                         / np.median(samples))))
    return ds


def test_a_predictor_trained_on_other_models_predicts_a_held_out_models_stages(tmp_path):
    rng = np.random.default_rng(4)
    ds = _zoo_rows([("chain", 16), ("chain", 24), ("resnet", 16), ("resnet", 24),
                    ("inception", 16), ("inception", 24), ("chain", 40), ("resnet", 40)], rng)
    held = "zoo:resnet@40"
    train, test = split_by_model(ds, [held])
    assert {r.model_id for r in test} == {held} and held not in train.models()
    # rows keep their tuning and noise through the file format
    back = Row.from_json(json.loads(json.dumps(test.rows[0].to_json())))
    assert back.tuned_fraction == test.rows[0].tuned_fraction == 1.0 and back.noise == test.rows[0].noise
    assert Row(test.rows[0].layer, None, 1.0).tuned_fraction != Row(test.rows[0].layer, None, 1.0).tuned_fraction
    aware = Predictor.train(train, rounds=300, tuning=True)
    blind = Predictor.train(train, rounds=300)
    assert aware.training["tuning_features"] and not blind.training["tuning_features"]
    assert "tuned_fraction" in aware.types["conv"].features
    assert "tuned_fraction" not in blind.types["conv"].features
    rows = [r for r in test if r.load == "cpu70"]
    layers, tuned = [r.layer for r in rows], [r.tuned_fraction for r in rows]
    true = np.array([r.ms for r in rows])
    thirds = np.array_split(np.arange(len(rows)), 3)       # three stages of consecutive layers
    errors = {}
    for name, p in (("aware", aware), ("blind", blind)):
        pred = p.predict_layers(layers, rows[0].state, tuned_fraction=tuned)
        errors[name] = [abs(pred[s].sum() - true[s].sum()) / true[s].sum() for s in thirds]
    assert max(errors["aware"]) < 0.35, errors               # a sane bound on an unseen model
    assert np.median(errors["aware"]) < np.median(errors["blind"]), errors
    # the saved predictor keeps the tuning feature; one value for all layers, or a clear error
    p = Predictor.load(aware.save(tmp_path / "p.json"), target="x86_64")
    assert np.array_equal(p.predict_layers(layers, rows[0].state, tuned_fraction=tuned),
                          aware.predict_layers(layers, rows[0].state, tuned_fraction=tuned))
    assert p.predict_layers(layers, None, tuned_fraction=1.0).shape == (len(layers),)
    with pytest.raises(PredictorError, match="tuned_fraction has 2 values for"):
        p.predict_layers(layers, None, tuned_fraction=[1.0, 0.0])


def test_the_database_prior_predicts_what_static_features_cannot_see(tmp_path):
    """A layer's time = what its tuning record measured (a per-layer schedule quality the static
    features cannot see) x the load + a call overhead: the prior learns the ratio and wins."""
    rng = np.random.default_rng(7)
    ds = _zoo_rows([("chain", 16), ("chain", 24), ("resnet", 16), ("resnet", 24),
                    ("inception", 16), ("inception", 24)], rng)
    quality = {}
    for r in ds:
        q = quality.setdefault((r.model_id, r.layer.name), float(rng.uniform(0.3, 3.0)))
        cpu = float(r.load[3:])
        r.recorded_ms = _synthetic_ms(r.layer, 5.0, rng) * q
        r.ms = r.recorded_ms * (1 + 1.5 / (1 + math.exp(-(cpu - 55) / 8))) + 0.01
    train, test = split_by_model(ds, ["zoo:resnet@24"])
    blind = Predictor.train(train, rounds=300)
    prior = Predictor.train(train, rounds=300, prior=True)
    assert prior.prior is not None and blind.prior is None and prior.training["database_prior"]
    true = np.array([r.ms for r in test])
    err = {name: np.median(np.abs(p.predict_rows(test.rows) - true) / true)
           for name, p in (("blind", blind), ("prior", prior))}
    assert err["prior"] < 0.10 < err["blind"], err
    # through the file; layers without a record (NaN) fall back to their type's model
    p = Predictor.load(prior.save(tmp_path / "p.json"), target="x86_64")
    layers, recorded = [r.layer for r in test], [r.recorded_ms for r in test]
    assert np.allclose(p.predict_layers(layers, test.rows[0].state, recorded_ms=recorded),
                       prior.predict_layers(layers, test.rows[0].state, recorded_ms=recorded))
    unknown = p.predict_layers(layers, test.rows[0].state, recorded_ms=[math.nan] * len(layers))
    assert np.array_equal(unknown, blind.predict_layers(layers, test.rows[0].state))
    with pytest.raises(PredictorError, match="recorded_ms has 1 values for"):
        p.predict_layers(layers, None, recorded_ms=[1.0])
    back = Row.from_json(json.loads(json.dumps(test.rows[0].to_json())))
    assert back.recorded_ms == test.rows[0].recorded_ms
