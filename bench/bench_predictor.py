#!/usr/bin/env python3
"""Held-out-model check of the latency predictor on this machine (issue 15 part 3).

    python bench/bench_predictor.py [--target host] [--repeat 7] [--data D.json] [--out F.md]

1. Profile: the zoo models chain, resnet, inception, mobilenetv2 and vgg16 at small inputs, each
   layer compiled alone the way a stage is (``profile.profile_layers``: kernels from the target's
   tuning database where it has them, the untuned fallback otherwise; every row records
   "N/M kernels tuned"), timed ``--repeat`` times under three controlled background loads
   (``sweep.LOAD_LEVELS``: none / medium = 1 burner at 50 % / high = 2 burners at 100 % + 2 GiB).
   Each model is also cut into three stages, built whole, and timed the same way under each load
   (the live state read just before). Models are the outer loop and load levels the inner one, so
   the machine's own drift spreads over every level.
2. Leave-one-model-out: for each model, predictors trained on the other four (rows of any layer
   configuration that occurs in the held-out model dropped too) predict its layers and its
   stages (sum of the predicted layers). Error is against the MEDIAN of the repeats; the noise
   floor beside it is the median over the same rows of median(|repeat - median|) / median.
   Variants: static features only; static + live load; static + live load + tuning
   (``features.TUNING_FEATURES``: share of the layer's kernels that were tuned).

``--data`` reuses (or, when missing, writes) the profile file, so step 2 can be rerun alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tvmsplit.compile import build_stage  # noqa: E402
from tvmsplit.predict import Dataset, Predictor, Row, split_by_model  # noqa: E402
from tvmsplit.predict.features import live_snapshot, state_from_json  # noqa: E402
from tvmsplit.profile import LocalSession, profile_layers, time_library  # noqa: E402
from tvmsplit.split import plan_split  # noqa: E402
from tvmsplit.sweep import LOAD_LEVELS, background_load, repeats_for, zoo_graphs  # noqa: E402
from tvmsplit.targets import get_target  # noqa: E402

# chain@32 width 1 is the model the host's tuning database was tuned for (its layers built alone
# use tuned kernels); the others run the untuned fallback there.
MODELS = (("chain", 32, 0.5), ("resnet", 32, 0.5), ("inception", 32, 0.5),
          ("mobilenetv2", 32, 0.5), ("vgg16", 32, 0.25), ("chain", 32, 1.0))
LEVEL_NAMES = {"none": "none", "cpu1x50": "medium", "cpu2x100+mem2g": "high"}
SAMPLE_MS = 10.0
VARIANTS = {"static": dict(dynamic=False, tuning=False),
            "static+load": dict(dynamic=True, tuning=False),
            "static+load+tuning": dict(dynamic=True, tuning=True),
            "static+load+prior": dict(dynamic=True, tuning=False, prior=True)}
RECORDED = "the database's own times"   # sum of recorded_ms, unscaled (no training)
TUNED_MODEL = "zoo:chain@32x1"
UNTUNED = "all, without the tuned model"
SUM_OF_MEASURED = "sum of the measured layers"
SUM_OF_MEASURED_AFTER = "static+load+tuning"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- 1. profile ---------------------------------------------------------------------------------
def profile(target: str, repeat: int, done: dict | None = None, db: str | None = None) -> dict:
    """Profile every model of ``MODELS`` not yet in ``done`` (an earlier profile, extended)."""
    spec = get_target(target)
    layers, stages = Dataset(target=spec.name), []
    if done:
        layers.rows = [Row.from_json(r) for r in done["dataset"]["rows"]]
        stages = list(done["stages"])
    have = set(layers.models())
    with tempfile.TemporaryDirectory(prefix="bench-predictor-") as tmp, LocalSession() as session:
        for mid, graph in zoo_graphs(MODELS):
            if mid in have:
                continue
            cuts = [graph.cut_candidates[len(graph.cut_candidates) * k // 3].after for k in (1, 2)]
            plan = plan_split(graph, split_at=cuts, targets=[spec.name])
            libs = []
            for s, stage in enumerate(plan.stages):
                lib = Path(tmp) / f"{mid.replace(':', '_').replace('@', '_')}_s{s}.so"
                built = build_stage(graph, stage, spec, lib, db=db)
                est = sum(repeats_for(graph.layer(n), SAMPLE_MS) ** -1 for n in stage.layers)
                libs.append((s, stage, lib, max(1, round(1 / est)), built.tuning.describe()
                             if built.tuning else ""))
            for level in LOAD_LEVELS:
                label, bg = background_load(level)
                t0 = time.perf_counter()
                with bg:
                    time.sleep(1.0)   # let the burners start and the load readings move
                    ms = []
                    for layer in graph.layers:
                        ms.extend(profile_layers(graph, spec, session, layers=[layer.name],
                                                 number=repeats_for(layer, SAMPLE_MS), repeat=repeat,
                                                 db=db))
                    layers.add(graph, ms, model_id=mid, load=LEVEL_NAMES[label])
                    for s, stage, lib, number, tuning in libs:
                        state = live_snapshot()
                        t = time_library(session, lib, stage, number=number, repeat=repeat)
                        stages.append({"model": mid, "stage": s, "layers": list(stage.layers),
                                       "load": LEVEL_NAMES[label], "ms": t.median_ms,
                                       "noise": t.noise, "tuning": tuning,
                                       "state": state.to_json()})
                log(f"{mid} under {label}: {len(ms)} layers, {len(libs)} stages "
                    f"({time.perf_counter() - t0:.0f} s)")
    return {"dataset": layers.to_json(), "stages": stages, "repeat": repeat, "db": db,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}


# ---- 2. leave-one-model-out -----------------------------------------------------------------------
def lomo(data: dict) -> dict:
    ds = Dataset([Row.from_json(r) for r in data["dataset"]["rows"]], data["dataset"]["target"])
    layers_of = {}
    for r in ds:
        layers_of.setdefault(r.model_id, {})[r.layer.name] = r.layer
    out = {"layers": [], "stages": []}
    for model in ds.models():
        train, test = split_by_model(ds, [model])
        for variant, kw in VARIANTS.items():
            pred = Predictor.train(train, ds.target, **kw)
            p = pred.predict_rows(test)
            for r, pm in zip(test, p):
                out["layers"].append({"model": model, "variant": variant, "load": r.load,
                                      "type": r.layer_type, "ms": r.ms, "pred": float(pm),
                                      "noise": r.noise, "tuned": r.tuned_fraction})
                if variant == "static" and r.recorded_ms > 0:
                    out["layers"].append({"model": model, "variant": RECORDED, "load": r.load,
                                          "type": r.layer_type, "ms": r.ms, "pred": r.recorded_ms,
                                          "noise": r.noise, "tuned": r.tuned_fraction})
            for st in (s for s in data["stages"] if s["model"] == model):
                state = state_from_json(st["state"])
                tuned = {r.layer.name: r.tuned_fraction for r in test if r.load == st["load"]}
                recorded = {r.layer.name: r.recorded_ms for r in test if r.load == st["load"]}
                layers = [layers_of[model][n] for n in st["layers"]]
                pm = pred.predict_layers(layers, state, tuned_fraction=[
                    tuned.get(n, float("nan")) for n in st["layers"]], recorded_ms=[
                    recorded.get(n, float("nan")) for n in st["layers"]])
                out["stages"].append({"model": model, "variant": variant, "load": st["load"],
                                      "stage": st["stage"], "ms": st["ms"], "pred": float(pm.sum()),
                                      "noise": st["noise"]})
                if variant == "static" and all(recorded.get(n, 0) > 0 for n in st["layers"]):
                    out["stages"].append({"model": model, "variant": RECORDED, "load": st["load"],
                                          "stage": st["stage"], "ms": st["ms"],
                                          "pred": sum(recorded[n] for n in st["layers"]),
                                          "noise": st["noise"]})
                if variant == SUM_OF_MEASURED_AFTER:   # the ceiling: the layers' own medians
                    ms = {r.layer.name: r.ms for r in test if r.load == st["load"]}
                    out["stages"].append({"model": model, "variant": SUM_OF_MEASURED,
                                          "load": st["load"], "stage": st["stage"], "ms": st["ms"],
                                          "pred": sum(ms[n] for n in st["layers"]),
                                          "noise": st["noise"]})
    return out


def _err(rows) -> tuple[float, float, float, float, int]:
    """(median APE %, p90 APE %, share within 10 % (%), median noise %, n)."""
    ape = np.array([abs(r["pred"] - r["ms"]) / r["ms"] for r in rows]) * 100
    nz = np.array([r["noise"] for r in rows]) * 100
    return (float(np.median(ape)), float(np.percentile(ape, 90)), float(100 * np.mean(ape <= 10)),
            float(np.median(nz)), len(rows))


def render(data: dict, res: dict) -> str:
    ds_rows = data["dataset"]["rows"]
    tuned = [Row.from_json(r).tuned_fraction for r in ds_rows]
    out = [f"# Predictor on held-out models ({data['dataset']['target']})", "",
           f"Machine: {data['machine']}, 2-vCPU VM shared with other jobs (noisy). Models: "
           + ", ".join(f"{n}@{s} width {w:g}" for n, s, w in MODELS)
           + f". {data['repeat']} repeats per measurement (each >= ~{SAMPLE_MS:g} ms); loads "
           "none / medium (1 burner, 50 % duty) / high (2 burners, 100 %, + 2 GiB held). "
           f"{len(ds_rows)} layer rows; layers whose kernels were all tuned: "
           f"{100 * np.mean(np.array(tuned) >= 1):.0f} %, none tuned: "
           f"{100 * np.mean(np.array(tuned) <= 0):.0f} %.", "",
           "Leave-one-model-out; error against the median of the repeats; noise = median over the "
           "same rows of median(|repeat - median|)/median.", ""]
    for what in ("layers", "stages"):
        out += [f"## {what}", "", "| variant | load | median error % | p90 error % | within ±10 % (%) "
                "| noise floor % | n |", "|---|---|---:|---:|---:|---:|---:|"]
        for variant in [*VARIANTS, RECORDED, SUM_OF_MEASURED]:
            for load in ("none", "medium", "high", "all", UNTUNED):
                rows = [r for r in res[what] if r["variant"] == variant
                        and (load in ("all", r["load"]) or load == UNTUNED and r["model"] != TUNED_MODEL)]
                if rows:
                    e = _err(rows)
                    out.append(f"| {variant} | {load} | {e[0]:.1f} | {e[1]:.1f} | {e[2]:.0f} | "
                               f"{e[3]:.1f} | {e[4]} |")
        out.append("")
    out += ["## per held-out model (all loads)", "",
            "| model | variant | layers: median error % | noise % | stages: median error % | noise % |",
            "|---|---|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r["model"] for r in res["layers"]):
        for variant in ("static+load+tuning", "static+load+prior"):
            a = _err([r for r in res["layers"] if r["model"] == model and r["variant"] == variant])
            b = _err([r for r in res["stages"] if r["model"] == model and r["variant"] == variant])
            out.append(f"| {model} | {variant} | {a[0]:.1f} | {a[3]:.1f} | {b[0]:.1f} | {b[3]:.1f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--data", default=str(REPO / "bench" / "results" / "predictor-data.json"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "predictor.md"))
    ap.add_argument("--db", default=None,
                    help="the tuning database every layer and stage is built from (default: the "
                         "target's own)")
    ap.add_argument("--no-profile", action="store_true",
                    help="only analyse the models already in --data (profile nothing more)")
    args = ap.parse_args()
    path = Path(args.data)
    data = json.loads(path.read_text()) if path.is_file() else None
    models = {m for m, *_ in zoo_graphs(MODELS)}
    if data is None or not (args.no_profile or models <= {r["model_id"] for r in data["dataset"]["rows"]}):
        data = profile(args.target, args.repeat, data, args.db)
        path.write_text(json.dumps(data))
        log(f"profile written to {path}")
    text = render(data, lomo(data))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
