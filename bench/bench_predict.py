#!/usr/bin/env python3
"""Latency-predictor benchmark on this machine (x86_64, LocalSession), under background load.

    python bench/bench_predict.py [--out bench/results/predict.md] [--quick] [--dataset D.json]

1. Profile: single-layer sweep models (``tvmsplit.layergen``) and four zoo models (chain, resnet,
   inception, mobilenetv2 at small sizes), every layer compiled alone for x86_64 and timed, under
   three background load levels (``sweep.LOAD_LEVELS``: none; 1 worker at 50 % duty; 2 workers at
   100 % duty + 2 GiB held). Models are measured in blocks, each block under every level in turn,
   so the machine's own drifting load (it is shared with other jobs) spreads over all levels. The
   device state (``predict.live_snapshot``: monitor.snapshot + run-queue length) is recorded with
   every sample.
   Four blocks, so each level lasts about a minute at a time (long enough for the 1-minute load
   average to move).
2. Retest: a random subset of sweep layers is measured once more under every level; how often two
   measurements of the same layer under the same nominal load agree within +-10 % is the ceiling
   any predictor can reach on this machine.
3. End-to-end: every zoo model is built whole (one stage) and as two stages (cut in the middle) and
   timed with ``profile.time_library`` under every load level (twice); the state is read just
   before, and the prediction is the sum of the predicted layers with that state, by a predictor
   that never saw the model (leave-one-model-out). Also reported: the sum of the *measured* layers.
4. Comparison (ITU-T F.748.20 section 7.2): all regressors x layer types on (a) held-out layer
   configurations (25 % of the configurations of every type, all their load levels) and (b)
   held-out models (leave-one-zoo-model-out, training rows of configurations that occur in the
   held-out model dropped too), by MAE, MAPE, R^2 and share within +-10 %.

Writes markdown to ``--out`` (and prints it). ``--dataset`` reuses a profile saved with
``--save-dataset`` (skips step 1; steps 2-3 still measure). About 15-20 minutes on a 2-core VM.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tvmsplit.compile import build_stage  # noqa: E402
from tvmsplit.predict import (ABLATIONS, DYNAMIC_FEATURES, REGRESSORS, Comparison,  # noqa: E402
                              Dataset, Predictor, compare_regressors, dynamic_features,
                              live_snapshot, metrics, predict_graph, split_by_config,
                              split_by_model)
from tvmsplit.layergen import sweep_models  # noqa: E402
from tvmsplit.profile import LocalSession, time_library  # noqa: E402
from tvmsplit.split import plan_split  # noqa: E402
from tvmsplit.sweep import (DEFAULT_ZOO, LOAD_LEVELS, background_load,  # noqa: E402
                            estimate_ms, measure_model, profile_sweep, zoo_graphs)

TARGET = "x86_64"
COUNTS = {"conv": 100, "depthwise_conv": 40, "pool": 35, "dense": 35, "activation": 35,
          "batchnorm": 25, "add": 25, "concat": 25}
QUICK = {k: max(4, v // 5) for k, v in COUNTS.items()}
SAMPLE_MS = 20.0      # each timing sample lasts >= ~20 ms: it averages over the 100 ms duty cycle
REPEAT = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def state_summary(states) -> str:
    states = [s for s in states if s is not None]
    if not states:
        return "–"
    cpu = [s.cpu_percent for s in states]
    la = [s.load_avg_1m for s in states]
    mem = [s.mem_available_bytes / 2 ** 30 for s in states]
    return (f"{statistics.fmean(cpu):.0f} ({min(cpu):.0f}–{max(cpu):.0f}) | "
            f"{statistics.fmean(la):.2f} ({min(la):.2f}–{max(la):.2f}) | "
            f"{statistics.fmean(mem):.1f} ({min(mem):.1f}–{max(mem):.1f})")


def foreign_load(seconds: float = 1.0) -> tuple[float, list[str]]:
    """CPU % (of one core) used by processes outside this benchmark, and the top few of them."""
    import os

    import psutil

    mine = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in mine]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(seconds)
    use = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= 5:
            argv = p.info["cmdline"] or ["?"]
            name = Path(argv[0]).name
            if len(argv) > 1:
                name += " " + ("<inline script>" if argv[1] == "-c" else " ".join(argv[1:3]))[:60]
            use.append((cpu, name))
    use.sort(reverse=True)
    return sum(c for c, _ in use), [f"{n} ({c:.0f} %)" for c, n in use[:4]]


def number_for(ms_estimate: float) -> int:
    return int(min(500, max(1, round(SAMPLE_MS / max(ms_estimate, 1e-3)))))


# ---- phases -------------------------------------------------------------------------------------
def profile(counts, seed: int) -> Dataset:
    t0 = time.perf_counter()
    with LocalSession() as session:
        ds = profile_sweep(TARGET, session, count=counts, seed=seed, zoo=DEFAULT_ZOO,
                           loads=list(LOAD_LEVELS), block=-(-(sum(counts.values()) + len(DEFAULT_ZOO)) // 4),
                           repeat=REPEAT, sample_ms=SAMPLE_MS,
                           progress=lambda m: log(m[:160]))
    log(f"profiled {len(ds)} rows in {time.perf_counter() - t0:.0f} s")
    return ds


def retest(counts, seed: int, n: int) -> list[tuple[str, str, float, float]]:
    """(model id, load, first ms, second ms) for ``n`` sweep layers re-measured under each level."""
    from tvmsplit.frontend import load

    rng = np.random.default_rng(seed + 1)
    models = [m for kind, c in counts.items() for m in sweep_models(kind, c, seed)]
    pick = [models[i] for i in rng.choice(len(models), size=min(n, len(models)), replace=False)]
    graphs = [(f"sweep:{m.graph.name}", load(m)) for m in pick]
    out = []
    with LocalSession() as session:
        for label, bg in [background_load(level) for level in LOAD_LEVELS]:
            with bg:
                for mid, g in graphs:
                    _, ms = measure_model(g, TARGET, session, repeat=REPEAT, sample_ms=SAMPLE_MS)
                    out.append((mid, label, ms[0].timing.median_ms))
    return out


def end_to_end(rounds: int) -> list[dict]:
    """Whole-model and per-stage timings of the zoo models under every load level."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp, LocalSession() as session:
        built = []
        for mid, g in zoo_graphs(DEFAULT_ZOO):
            whole = plan_split(g, targets=[TARGET]).stages[0]
            cut = g.cut_candidates[len(g.cut_candidates) // 2].after
            two = plan_split(g, split_at=[cut], targets=[TARGET]).stages
            libs = []
            for name, stage in [("whole", whole), ("stage1", two[0]), ("stage2", two[1])]:
                lib = Path(tmp) / f"{mid.replace(':', '_')}_{name}.so"
                build_stage(g, stage, get_spec(), lib)
                est = sum(estimate_ms(g.layer(n)) for n in stage.layers)
                libs.append((name, stage, lib, number_for(est)))
            built.append((mid, g, libs))
            log(f"built {mid}: whole + 2 stages (cut after {cut})")
        for r in range(rounds):
            for label, bg in [background_load(level) for level in LOAD_LEVELS]:
                with bg:
                    for mid, g, libs in built:
                        for name, stage, lib, number in libs:
                            state = live_snapshot()
                            t = time_library(session, lib, stage, number=number, repeat=REPEAT)
                            samples.append({"model": mid, "part": name, "layers": list(stage.layers),
                                            "load": label, "round": r, "state": state,
                                            "ms": t.median_ms})
                log(f"end-to-end round {r + 1}/{rounds} under {label} done")
    return samples


_SPEC = None


def get_spec():
    global _SPEC
    if _SPEC is None:
        from tvmsplit.targets import get_target
        _SPEC = get_target(TARGET)
    return _SPEC


# ---- report -------------------------------------------------------------------------------------
def comparison_tables(comp: Comparison) -> str:
    types = [*comp.test.types(), "all"]
    return comp.to_markdown(types)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "predict.md"))
    ap.add_argument("--quick", action="store_true", help="a fifth of the sweep, 1 end-to-end round")
    ap.add_argument("--dataset", help="reuse a profile saved with --save-dataset (skips profiling)")
    ap.add_argument("--save-dataset", help="write the profile dataset here (JSON)")
    ap.add_argument("--retest", type=int, default=40, help="sweep layers measured twice per level")
    ap.add_argument("--rounds", type=int, default=2, help="end-to-end rounds per load level")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = QUICK if args.quick else COUNTS
    rounds = 1 if args.quick else args.rounds
    t_start = time.perf_counter()
    foreign = [foreign_load()]

    # 1. profile
    if args.dataset:
        ds = Dataset.load(args.dataset, target=TARGET)
        t_profile = 0.0
    else:
        t0 = time.perf_counter()
        ds = profile(counts, args.seed)
        t_profile = time.perf_counter() - t0
        if args.save_dataset:
            ds.save(args.save_dataset)
    # 2. retest
    t0 = time.perf_counter()
    first = {(r.model_id, r.load): r.ms for r in ds}
    pairs = [(lab, first[(mid, lab)], ms) for mid, lab, ms in retest(counts, args.seed, args.retest)
             if (mid, lab) in first]
    t_retest = time.perf_counter() - t0
    # 3. end-to-end measurements
    t0 = time.perf_counter()
    e2e = end_to_end(rounds)
    t_e2e = time.perf_counter() - t0
    foreign.append(foreign_load())

    # 4. analysis
    t0 = time.perf_counter()
    regs = [*REGRESSORS, *ABLATIONS]
    train_c, test_c = split_by_config(ds, 0.25, seed=args.seed)
    comp_c = compare_regressors(train_c, test_c, regressors=regs, split="held-out configurations",
                                seed=args.seed, progress=log)
    zoo_ids = [m for m in ds.models() if m.startswith("zoo:")]
    folds, predictors = [], {}
    for mid in zoo_ids:
        tr, te = split_by_model(ds, [mid])
        folds.append(compare_regressors(tr, te, regressors=regs, split=f"without {mid}",
                                        seed=args.seed, progress=log))
        predictors[mid] = Predictor.train(tr, TARGET, seed=args.seed)
    comp_m = Comparison.concat(folds, "held-out models (leave-one-zoo-model-out)")
    t_fit = time.perf_counter() - t0

    report = render(ds, counts, comp_c, comp_m, train_c, pairs, e2e, predictors, folds,
                    timings={"profile": t_profile, "retest": t_retest, "end-to-end": t_e2e,
                             "fit + compare": t_fit, "total": time.perf_counter() - t_start},
                    quick=args.quick, foreign=foreign)
    print(report)
    Path(args.out).write_text(report)
    log(f"wrote {args.out}")


def render(ds, counts, comp_c, comp_m, train_c, pairs, e2e, predictors, folds, timings, quick,
           foreign=()) -> str:
    import os

    import sklearn
    import tvm
    import xgboost

    L: list[str] = []
    cpu = platform.processor() or platform.machine()
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        model_name = cpu
    L.append("# Latency predictor: regressors x layer types, end-to-end error under load\n")
    L.append(f"`python bench/bench_predict.py{' --quick' if quick else ''}` on {model_name}, "
             f"{os.cpu_count()} cores (a shared VM: other jobs ran too), target x86_64 "
             f"(generic x86-64, untuned TVM {tvm.__version__} default pipeline), LocalSession; "
             f"xgboost {xgboost.__version__}, scikit-learn {sklearn.__version__}. "
             f"Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".\n")
    for when, (cpu_used, top) in zip(("at the start", "after measuring"), foreign):
        L.append(f"Other jobs on the machine {when}: {cpu_used:.0f} % of a core "
                 f"({'; '.join(top) or 'none'}).\n")
    # setup
    L.append("## Setup\n")
    L.append(f"- Sweep: {sum(counts.values())} single-layer configurations "
             f"({', '.join(f'{k} {v}' for k, v in counts.items())}); zoo: "
             f"{', '.join(f'{n}@{s}x{w:g}' for n, s, w in DEFAULT_ZOO)} "
             f"({sum(1 for r in ds if r.model_id.startswith('zoo:')) // max(1, len(LOAD_LEVELS))} layers).")
    L.append(f"- Every layer compiled alone for x86_64 and timed with `time_evaluator`: {REPEAT} samples, "
             f"each the mean of enough runs to last ≥ {SAMPLE_MS:g} ms; the row's latency is the "
             "median sample. Dynamic features are read (`predict.live_snapshot`: `monitor.snapshot` over 0.1 s + 5 reads of the run queue) right before.")
    L.append(f"- {len(ds)} rows: {', '.join(f'{t} {n}' for t, n in ds.counts().items())}.")
    L.append("- Target of every learned regressor: ln(ms / FLOPs), standardised; the prediction is "
             "exp(·) × FLOPs. Features: static (ITU-T F.748.20 §7.1, per type) + dynamic (cpu %, "
             "system cpu %, free GiB, mem used %, load avg/core, runnable tasks/core). LR, RANSAC, KRR, KNN, SVM, ANN run in "
             "a pipeline with median imputation and standardisation fitted on the training rows.\n")
    L.append("Load actually measured with the samples (mean (min–max)):\n")
    L.append("| load level | BackgroundLoad | rows | cpu busy % | load avg / core | free GiB | median layer ms |")
    L.append("|---|---|---:|---|---|---|---:|")
    for level, kw in LOAD_LEVELS.items():
        rows = [r for r in ds if r.load == level]
        cpu_s, la_s, mem_s = state_summary([r.state for r in rows]).split(" | ") if rows else ("–",) * 3
        kwtxt = ", ".join(f"{k}={v}" for k, v in kw.items()) or "nothing"
        med = statistics.median(r.ms for r in rows) if rows else float("nan")
        L.append(f"| {level} | {kwtxt} | {len(rows)} | {cpu_s} | {la_s} | {mem_s} | {med:.3f} |")
    L.append("")
    # slowdown by load
    base = {r.config_id: r.ms for r in ds if r.load == "none"}
    L.append("Slowdown of the same layer vs the `none` level (median over layers, and 10th–90th percentile):\n")
    L.append("| load level | median | p10 | p90 |")
    L.append("|---|---:|---:|---:|")
    for level in LOAD_LEVELS:
        ratios = [r.ms / base[r.config_id] for r in ds if r.load == level and r.config_id in base]
        if ratios:
            L.append(f"| {level} | {np.median(ratios):.2f} | {np.percentile(ratios, 10):.2f} | "
                     f"{np.percentile(ratios, 90):.2f} |")
    L.append("")
    # which dynamic feature tracks the slowdown
    from scipy.stats import spearmanr

    by_cfg: dict[str, list] = {}
    for r in ds:
        by_cfg.setdefault(r.config_id, []).append(r)
    xs: dict[str, list[float]] = {n: [] for n in DYNAMIC_FEATURES}
    ys: list[float] = []
    for rows in by_cfg.values():
        if len(rows) < 2:
            continue
        med = statistics.median(r.ms for r in rows)
        for r in rows:
            f = dynamic_features(r.state)
            ys.append(r.ms / med)
            for n in DYNAMIC_FEATURES:
                xs[n].append(f[n])
    L.append("Which dynamic feature tracks the slowdown? Spearman correlation between each feature and "
             "a row's time relative to the median time of the same configuration (all rows):\n")
    L.append("| " + " | ".join(DYNAMIC_FEATURES) + " |")
    L.append("|" + "---:|" * len(DYNAMIC_FEATURES))
    cells = []
    for n in DYNAMIC_FEATURES:
        x = np.array(xs[n])
        ok = ~np.isnan(x)
        cells.append(f"{spearmanr(x[ok], np.array(ys)[ok]).correlation:.2f}" if ok.sum() > 2 and np.ptp(x[ok]) > 0 else "–")
    L.append("| " + " | ".join(cells) + " |\n")
    # noise ceiling
    if pairs:
        L.append("## Measurement repeatability (the ceiling)\n")
        L.append("Sweep layers measured a second time, minutes after the profile, under the same "
                 "nominal load level. A predictor cannot be more often within ±10 % of a measurement "
                 "than the measurement is of itself.\n")
        L.append("| load level | pairs | 2nd within ±10 % of 1st | median difference | p90 difference |")
        L.append("|---|---:|---:|---:|---:|")
        for level in [*LOAD_LEVELS, "all"]:
            sel = [(a, b) for lab, a, b in pairs if level in ("all", lab)]
            if not sel:
                continue
            a = np.array([x for x, _ in sel])
            b = np.array([y for _, y in sel])
            rel = np.abs(b - a) / a
            L.append(f"| {level} | {len(sel)} | {100 * np.mean(rel <= 0.1):.0f} % | "
                     f"{100 * np.median(rel):.1f} % | {100 * np.percentile(rel, 90):.0f} % |")
        L.append("")
    # comparisons
    L.append("## Comparison on held-out layer configurations\n")
    L.append(f"Training: {len(train_c)} rows; test: {len(comp_c.test)} rows of configurations never "
             "seen in training (under all load levels).\n")
    L.append(comparison_tables(comp_c))
    L.append(within_by_load(comp_c))
    L.append("## Comparison on held-out models\n")
    L.append("Leave-one-zoo-model-out: for each zoo model, train on the sweep and the other zoo models "
             "(minus any configuration that occurs in the held-out model) and test on all its layers; "
             "the four test sets are pooled.\n")
    L.append(comparison_tables(comp_m))
    L.append(within_by_load(comp_m))
    notes = sorted(set(comp_c.notes + comp_m.notes))
    if notes:
        L.append("Notes: " + "; ".join(notes) + "\n")
    # end-to-end
    L.append("## End-to-end: predicted vs measured whole-model and per-stage latency\n")
    L.append("Measured: the model (or stage) built as **one real library** and timed with "
             "`profile.time_library` under each load level; the state is read just before. Predicted: "
             "sum of the layers predicted by XGBoost with that state, trained without that model "
             "(leave-one-model-out). `sum of measured layers`: the profile's own per-layer times at "
             "the same load level (average over the profile's measurements).\n")
    L.append("| model | part | load | cpu % | measured ms | predicted ms | error | sum measured layers ms | error of sum |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
    errs: dict[str, list[float]] = {}
    errs_sum: dict[str, list[float]] = {}
    graphs = dict(zoo_graphs(DEFAULT_ZOO))
    layer_ms: dict[tuple[str, str, str], float] = {}
    for r in ds:
        layer_ms[(r.model_id, r.layer.name, r.load)] = r.ms
    for s in e2e:
        g = graphs[s["model"]]
        pred = predict_graph(predictors[s["model"]], g, s["state"]).costs()
        p = sum(pred[n] for n in s["layers"])
        meas_sum = sum(layer_ms.get((s["model"], n, s["load"]), float("nan")) for n in s["layers"])
        e = (p - s["ms"]) / s["ms"]
        es = (meas_sum - s["ms"]) / s["ms"]
        errs.setdefault(s["part"] if s["part"] == "whole" else "stage", []).append(e)
        errs.setdefault(f"load:{s['load']}", []).append(e)
        errs_sum.setdefault(s["part"] if s["part"] == "whole" else "stage", []).append(es)
        L.append(f"| {s['model']} | {s['part']} | {s['load']} | {s['state'].cpu_percent:.0f} | "
                 f"{s['ms']:.3f} | {p:.3f} | {100 * e:+.1f} % | {meas_sum:.3f} | {100 * es:+.1f} % |")
    L.append("")
    L.append("| samples | n | mean abs error (predicted) | within ±10 % | max abs error | mean abs error (sum of measured layers) |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for key in ["whole", "stage", *[k for k in errs if k.startswith("load:")]]:
        v = np.abs(np.array(errs.get(key, [])))
        vs = np.abs(np.array(errs_sum.get(key, []))) if key in errs_sum else None
        if len(v):
            L.append(f"| {key} | {len(v)} | {100 * v.mean():.1f} % | {100 * np.mean(v <= 0.1):.0f} % | "
                     f"{100 * v.max():.1f} % | {'' if vs is None else f'{100 * vs.mean():.1f} %'} |")
    L.append("")
    # goals
    xa_c, xa_m = comp_c.get("XGBoost"), comp_m.get("XGBoost")
    whole = np.abs(np.array(errs.get("whole", [np.nan])))
    L.append("## Goals\n")
    L.append(f"- ≥ 95 % of layer predictions within ±10 %: XGBoost reaches {xa_c['within10_pct']:.1f} % "
             f"on held-out configurations and {xa_m['within10_pct']:.1f} % on held-out models "
             f"(short by {95 - xa_c['within10_pct']:.1f} and {95 - xa_m['within10_pct']:.1f} points).")
    L.append(f"- ≤ 10 % end-to-end error: mean absolute whole-model error {100 * np.nanmean(whole):.1f} %, "
             f"{100 * np.nanmean(whole <= 0.1):.0f} % of the whole-model samples within ±10 %.\n")
    L.append(why_short(ds, pairs, comp_c, comp_m, errs, errs_sum))
    # training stats
    L.append("## Predictor trained on everything (what `tvmsplit train` would save)\n")
    full = Predictor.train(ds, TARGET)
    L.append("| type | model | rows | configs | ms range | train MAPE % | top features (gain) |")
    L.append("|---|---|---:|---:|---|---:|---|")
    for t, m in full.types.items():
        st = m.stats
        L.append(f"| {t} | {m.kind} | {st['rows']} | {st['configs']} | {st['ms_min']:.4f}–{st['ms_max']:.2f} | "
                 f"{st.get('train_mape_pct', float('nan')):.1f} | {', '.join(st.get('top_features', []))} |")
    L.append("")
    with tempfile.TemporaryDirectory() as tmp:
        size = full.save(Path(tmp) / "p.json").stat().st_size
    L.append(f"Predictor file: {size / 1e6:.1f} MB (one JSON, xgboost boosters as their JSON).\n")
    return "\n".join(L)


def why_short(ds, pairs, comp_c, comp_m, errs, errs_sum) -> str:
    """The reasons, with this run's numbers."""
    out = ["## Why it falls short (this run's numbers)\n"]
    if pairs:
        a = np.array([p[1] for p in pairs])
        b = np.array([p[2] for p in pairs])
        ceiling = 100 * np.mean(np.abs(b - a) / a <= 0.1)
        out.append(f"1. **The measurements do not repeat to ±10 %.** The same layer under the same "
                   f"nominal load, measured twice minutes apart, agrees within ±10 % only {ceiling:.0f} % "
                   f"of the time. That is the ceiling for any predictor's ±10 % share here; XGBoost's "
                   f"{comp_c.get('XGBoost')['within10_pct']:.0f} % (configurations) and "
                   f"{comp_m.get('XGBoost')['within10_pct']:.0f} % (models) are measured against the same "
                   "noisy truth. The goal of 95 % needs a quiet, dedicated device (repeatability ≥ 95 %).")
    none = [r for r in ds if r.load == "none" and r.state is not None]
    if none:
        busy = statistics.fmean(r.state.cpu_percent for r in none)
        la = statistics.fmean(r.state.load_avg_1m for r in none)
        if busy >= 20:
            out.append(f"2. **'none' is not idle.** Without any background load of ours the CPU was "
                       f"{busy:.0f} % busy on average (load average {la:.2f} per core): other jobs on "
                       "this shared VM come and go, unrecorded by the load level and only partly by "
                       "the state.")
        else:
            out.append(f"2. **'none' was idle** ({busy:.0f} % CPU when each sample's state was read; "
                       f"load average {la:.2f} per core, which counts the profiling itself), yet its "
                       "repeatability is the ceiling above: timing noise of a shared VM, not load.")
        sat = 100 * np.mean([r.state.cpu_percent >= 98 for r in ds if r.state is not None])
        out.append(f"3. **CPU utilisation saturates.** {sat:.0f} % of all rows were taken at ≥ 98 % CPU, "
                   "where `cpu_percent` no longer says how many tasks compete for the two cores; the "
                   "1-minute load average lags behind a load that changes every minute. The run-queue "
                   "length (`runnable_per_core`) is the reading that still tracks the slowdown (see the "
                   "correlations above), but it is an instantaneous sample of a fluctuating queue.")
    whole = np.abs(np.array(errs.get("whole", [])))
    sums = np.abs(np.array(errs_sum.get("whole", [])))
    if len(whole):
        out.append(f"4. **End-to-end.** A whole-model library differs from the sum of its separately "
                   f"measured layers by {100 * sums.mean():.0f} % on average here (timing drift plus "
                   f"per-call overhead and caching that one library shares across layers); the "
                   f"prediction's mean error is {100 * whole.mean():.0f} %. Both would shrink with repeated "
                   "measurements on a dedicated device; the per-layer call overhead could be learned as a "
                   "per-model correction (predicted sum vs measured whole).")
    out.append("")
    return "\n".join(out)


def within_by_load(comp: Comparison) -> str:
    rows = list(comp.test)
    out = ["XGBoost and FLOPs-only by load level (all types):\n",
           "| load level | n | XGBoost MAPE % | XGBoost within ±10 % | FLOPs-only MAPE % | FLOPs-only within ±10 % |",
           "|---|---:|---:|---:|---:|---:|"]
    for level in LOAD_LEVELS:
        sel = np.array([r.load == level for r in rows])
        if not sel.any():
            continue
        true = np.array([r.ms for r in rows])[sel]
        mx = metrics(true, comp.predictions["XGBoost"][sel])
        mb = metrics(true, comp.predictions["FLOPs-only"][sel])
        out.append(f"| {level} | {int(sel.sum())} | {mx['mape_pct']:.1f} | {mx['within10_pct']:.1f} | "
                   f"{mb['mape_pct']:.1f} | {mb['within10_pct']:.1f} |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
