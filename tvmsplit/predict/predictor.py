"""The per-layer-type latency models (``Predictor``), whole-graph predictions and metrics."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..graph import Layer, LayerGraph
from ..monitor import DeviceState
from .dataset import Dataset, Row, dataset_path, predictor_path, write_atomic
from .errors import (PredictorCorruptError, PredictorError, PredictorMissingError, PredictorTargetError,
                     PredictorVersionError)
from .features import (DYNAMIC_FEATURES, LAYER_TYPES, PRIOR_FEATURES, dynamic_features,
                       feature_names, layer_type, live_snapshot, static_features, work)

SCHEMA_VERSION = 1
FORMAT = "tvmsplit-predictor"
MIN_ROWS = 8   # fewer training rows of a type -> its FLOPs baseline instead of a regressor


def _fix(device: str) -> str:
    """The commands that (re)create a device's predictor, for error messages."""
    return f"run `tvmsplit profile --target {device}` then `tvmsplit train --target {device}`"


# ---- metrics ----------------------------------------------------------------------------------
def metrics(true_ms: Sequence[float], pred_ms: Sequence[float]) -> dict[str, float]:
    """MAE (ms), MAPE (%), R^2 (on ms) and the share of predictions within +-10 % (%)."""
    y, p = np.asarray(true_ms, float), np.asarray(pred_ms, float)
    if len(y) == 0:
        return {"n": 0, "mae_ms": float("nan"), "mape_pct": float("nan"), "r2": float("nan"),
                "within10_pct": float("nan")}
    rel = np.abs(p - y) / np.maximum(y, 1e-12)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((p - y) ** 2)) / ss_tot if len(y) > 1 and ss_tot > 0 else float("nan")
    return {"n": int(len(y)), "mae_ms": float(np.mean(np.abs(p - y))),
            "mape_pct": float(100 * np.mean(rel)), "r2": r2,
            "within10_pct": float(100 * np.mean(rel <= 0.10))}


# ---- the predictor ----------------------------------------------------------------------------
# Shallow, regularised trees: layer timings on a shared machine are noisy, and deeper trees with
# min_child_weight 1 memorise that noise (training MAPE ~0.1 % vs ~55 % on held-out configurations;
# a grouped inner cross-validation chose these over depth 3-6 / min_child_weight 1-10 variants).
DEFAULT_XGB_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror", "eta": 0.05, "max_depth": 4, "min_child_weight": 5.0,
    "subsample": 0.8, "colsample_bytree": 0.8, "lambda": 5.0, "tree_method": "hist",
    "nthread": 1,
}
DEFAULT_ROUNDS = 400


def fit_xgb(X: np.ndarray, y: np.ndarray, names: Sequence[str], params: Mapping[str, Any] | None,
            rounds: int, seed: int):
    """An XGBoost booster on (X, y) with ``DEFAULT_XGB_PARAMS`` updated by ``params``."""
    import xgboost as xgb

    p = {**DEFAULT_XGB_PARAMS, **(params or {}), "seed": seed}
    return xgb.train(p, xgb.DMatrix(X, label=y, feature_names=list(names)), num_boost_round=rounds)


def baseline_k(ms: np.ndarray, wk: np.ndarray) -> float:
    """ms = k * work, fitted in log space (the median ratio: robust to timing outliers)."""
    return float(np.exp(np.median(np.log(ms) - np.log(wk)))) if len(ms) else float("nan")


@dataclass
class TypeModel:
    """The model of one layer type: an XGBoost booster on ln(ms / work), or the FLOPs baseline."""

    kind: str                       # "xgboost" or "flops"
    features: tuple[str, ...]
    k: float                        # baseline ms per FLOP of this type
    booster: Any = None
    stats: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray, wk: np.ndarray) -> np.ndarray:
        if self.kind == "xgboost":
            return np.exp(np.asarray(self.booster.inplace_predict(X), dtype=np.float64)) * wk
        return self.k * wk


@dataclass(frozen=True)
class LayerPrediction:
    name: str
    op: str
    layer_type: str
    ms: float
    source: str       # "xgboost", "flops" (baseline of the type) or "fallback" (unseen type)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "layer_type": self.layer_type,
                "ms": self.ms, "source": self.source}


@dataclass(frozen=True)
class GraphPrediction:
    """Predicted per-layer and total latency of a graph on a device in a given state."""

    model: str
    target: str
    layers: tuple[LayerPrediction, ...]
    state: DeviceState | None

    @property
    def total_ms(self) -> float:
        return float(sum(p.ms for p in self.layers))

    def costs(self) -> dict[str, float]:
        """{layer name: ms}: one device's column of a planner CostTable."""
        return {p.name: p.ms for p in self.layers}

    def to_json(self) -> dict[str, Any]:
        state = None
        if self.state is not None:
            state = {k: None if isinstance(v, float) and math.isnan(v) else v
                     for k, v in self.state.to_json().items()}
        return {"model": self.model, "target": self.target, "total_ms": self.total_ms,
                "state": state,
                "layers": [p.to_json() for p in self.layers]}

    def format(self) -> str:
        """A human-readable table (what `tvmsplit predict` prints)."""
        lines = [f"{self.model} on {self.target}: predicted {self.total_ms:.3f} ms"]
        if self.state is not None:
            s = self.state
            run = getattr(s, "runnable_per_core", float("nan"))
            lines.append(f"device state: cpu {s.cpu_percent:.0f}% (system {s.system_cpu_percent:.0f}%), "
                         f"load/core {s.load_avg_1m:.2f}"
                         + ("" if math.isnan(run) else f", runnable/core {run:.2f}")
                         + f", mem used {s.mem_used_percent:.0f}%, "
                         f"{s.mem_available_bytes / 2 ** 30:.1f} GiB free")
        lines.append(f"{'layer':<32} {'op':<20} {'type':<15} {'ms':>9}  model")
        for p in self.layers:
            lines.append(f"{p.name[:32]:<32} {p.op[:20]:<20} {p.layer_type:<15} {p.ms:>9.4f}  {p.source}")
        lines.append(f"{'total':<69} {self.total_ms:>9.4f}")
        return "\n".join(lines)


class Predictor:
    """Per-layer-type latency models for one target (device kind)."""

    def __init__(self, target: Any, types: Mapping[str, TypeModel], fallback_k: float,
                 floor_ms: float, training: Mapping[str, Any] | None = None,
                 prior: TypeModel | None = None):
        from ..targets import get_target

        spec = get_target(target) if isinstance(target, str) else target
        self.target_name: str = spec.name if spec is not None else str(target)
        self.target_json: dict[str, Any] = spec.to_json() if spec is not None else {}
        self.types = dict(types)
        self.fallback_k = float(fallback_k)
        self.floor_ms = float(floor_ms)
        self.training = dict(training or {})
        # ms = exp(model(features)) * recorded_ms for layers whose kernels the tuning database
        # measured (None: not trained with prior=True, or too few such rows)
        self.prior = prior

    def __repr__(self) -> str:
        kinds = {t: m.kind for t, m in self.types.items()}
        return f"Predictor(target={self.target_name!r}, types={kinds})"

    def summary(self) -> str:
        """Per layer type: model, training rows/configurations, ms range, top features."""
        tr = self.training
        lines = [f"predictor for {self.target_name}: {tr.get('rows', '?')} rows from "
                 f"{tr.get('models', '?')} models, loads {', '.join(tr.get('loads', []))}"]
        for t, m in self.types.items():
            st = m.stats
            top = ", ".join(st.get("top_features", [])[:4])
            lines.append(f"  {t:<15} {m.kind:<8} {st.get('rows', 0):>5} rows {st.get('configs', 0):>4} "
                         f"configs {st.get('ms_min', 0):.4f}-{st.get('ms_max', 0):.2f} ms"
                         + (f"  top: {top}" if m.kind == "xgboost" else ""))
        missing = [t for t in LAYER_TYPES if t not in self.types]
        if missing:
            lines.append(f"  not trained (FLOPs fallback): {', '.join(missing)}")
        return "\n".join(lines)

    # ---- training ------------------------------------------------------------------------
    @classmethod
    def train(cls, dataset: Dataset, target: Any = None, *, params: Mapping[str, Any] | None = None,
              rounds: int = DEFAULT_ROUNDS, dynamic: bool = True, tuning: bool = False,
              prior: bool = False, seed: int = 0) -> "Predictor":
        """One XGBoost model per layer type on ``ln(ms / work)``; types with fewer than
        ``MIN_ROWS`` rows get their FLOPs baseline. ``target`` defaults to the dataset's.
        ``dynamic``: use the live-load features; ``tuning``: also the share of the layer's kernels
        that were tuned (``TUNING_FEATURES``, from each row's build; give it at prediction time
        with ``tuned_fraction=``, else it is missing). ``prior``: also one model, over all layer
        types, of ln(ms / recorded_ms) on the rows whose kernels the tuning database measured
        (``Row.recorded_ms``); layers given a ``recorded_ms`` at prediction time use it."""
        target = target if target is not None else dataset.target
        if target is None:
            raise PredictorError("the dataset names no target; pass target=")
        if not len(dataset):
            raise PredictorError("the dataset is empty; profile the device first "
                                 f"(`tvmsplit profile --target {target}`)")
        types: dict[str, TypeModel] = {}
        all_ms, all_wk = [], []
        for t in dataset.types():
            names = feature_names(t, dynamic, tuning)
            X, ms, wk = dataset.matrix(t, names)
            all_ms.append(ms)
            all_wk.append(wk)
            k = baseline_k(ms, wk)
            rows = dataset.of_type(t)
            stats = {"rows": len(rows), "configs": len({r.config_id for r in rows}),
                     "models": len({r.model_id for r in rows}),
                     "ms_min": float(ms.min()), "ms_max": float(ms.max()),
                     "loads": sorted({r.load for r in rows})}
            if len(rows) < MIN_ROWS:
                types[t] = TypeModel("flops", names, k, stats=stats)
                continue
            booster = fit_xgb(X, np.log(ms) - np.log(wk), names, params, rounds, seed)
            model = TypeModel("xgboost", names, k, booster, stats)
            fit = metrics(ms, model.predict(X, wk))
            stats["train_mape_pct"] = round(fit["mape_pct"], 3)
            gain = booster.get_score(importance_type="gain")
            stats["top_features"] = [n for n, _ in sorted(gain.items(), key=lambda kv: -kv[1])[:6]]
            types[t] = model
        ms_all, wk_all = np.concatenate(all_ms), np.concatenate(all_wk)
        training = {"rows": len(dataset), "models": len(dataset.models()),
                    "loads": sorted({r.load for r in dataset}), "dataset_sha256": dataset.sha256(),
                    "dynamic_features": dynamic, "tuning_features": tuning,
                    "database_prior": prior, "rounds": rounds,
                    "params": {**DEFAULT_XGB_PARAMS, **(params or {})}, "seed": seed,
                    "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return cls(target, types, baseline_k(ms_all, wk_all), float(np.percentile(ms_all, 1)),
                   training, _train_prior(dataset, dynamic, params, rounds, seed) if prior else None)

    # ---- prediction ----------------------------------------------------------------------
    def _predict(self, layers: Sequence[Layer], states: Sequence[DeviceState | None],
                 tuned: Sequence[float] | None = None,
                 recorded: Sequence[float] | None = None) -> tuple[np.ndarray, list[str]]:
        out = np.zeros(len(layers))
        source = [""] * len(layers)
        by_type: dict[str, list[int]] = defaultdict(list)
        with_prior = []
        for i, layer in enumerate(layers):
            if self.prior is not None and recorded is not None and recorded[i] > 0:
                with_prior.append(i)   # NaN > 0 is False: no record, no prior
            else:
                by_type[layer_type(layer)].append(i)
        if with_prior:
            X = np.array([_prior_row(layers[i], states[i], recorded[i], self.prior.features)
                          for i in with_prior], dtype=np.float64)
            out[with_prior] = self.prior.predict(X.reshape(len(with_prior), -1),
                                                 np.array([recorded[i] for i in with_prior]))
            for i in with_prior:
                source[i] = "database"
        for t, idx in by_type.items():
            model = self.types.get(t)
            wk = np.array([work(layers[i]) for i in idx])
            if model is None:
                out[idx] = np.maximum(self.fallback_k * wk, self.floor_ms)
                for i in idx:
                    source[i] = "fallback"
                continue
            feats = [{**static_features(layers[i]), **dynamic_features(states[i]),
                      "tuned_fraction": math.nan if tuned is None else float(tuned[i])} for i in idx]
            X = np.array([[f[n] for n in model.features] for f in feats], dtype=np.float64)
            out[idx] = model.predict(X.reshape(len(idx), len(model.features)), wk)
            for i in idx:
                source[i] = model.kind
        return out, source

    def predict_layers(self, layers: Sequence[Layer], state: DeviceState | None, *,
                       tuned_fraction: Sequence[float] | float | None = None,
                       recorded_ms: Sequence[float] | None = None) -> np.ndarray:
        """Predicted ms of each layer with the device in ``state``; ``tuned_fraction`` (one per
        layer, or one for all) is the share of each layer's kernels that its build tunes (used
        by predictors trained with ``tuning=True``; unknown when None); ``recorded_ms`` (one per
        layer, NaN where unknown) what the tuning database measured for each layer's kernels
        (used by predictors trained with ``prior=True``)."""
        layers = list(layers)
        if tuned_fraction is not None and not isinstance(tuned_fraction, Sequence):
            tuned_fraction = [float(tuned_fraction)] * len(layers)
        if tuned_fraction is not None and len(tuned_fraction) != len(layers):
            raise PredictorError(f"tuned_fraction has {len(tuned_fraction)} values for "
                                 f"{len(layers)} layers; give one per layer or one for all")
        if recorded_ms is not None and len(recorded_ms) != len(layers):
            raise PredictorError(f"recorded_ms has {len(recorded_ms)} values for {len(layers)} "
                                 "layers; give one per layer (NaN where unknown)")
        return self._predict(layers, [state] * len(layers), tuned_fraction, recorded_ms)[0]

    def predict_rows(self, rows: Iterable[Row]) -> np.ndarray:
        """Predicted ms of dataset rows, each with the state recorded when it was measured."""
        rows = list(rows)
        return self._predict([r.layer for r in rows], [r.state for r in rows],
                             [r.tuned_fraction for r in rows], [r.recorded_ms for r in rows])[0]

    # ---- files ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        import xgboost as xgb

        def entry(m: TypeModel) -> dict[str, Any]:
            e: dict[str, Any] = {"model": m.kind, "features": list(m.features), "baseline_k": m.k,
                                 "stats": m.stats}
            if m.kind == "xgboost":
                raw = bytes(m.booster.save_raw(raw_format="json")).decode()
                e["booster_json"] = raw
                e["booster_sha256"] = hashlib.sha256(raw.encode()).hexdigest()
            return e

        types = {t: entry(m) for t, m in self.types.items()}
        from .. import __version__

        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "tvmsplit_version": __version__,
                "xgboost_version": xgb.__version__,
                "target": {"name": self.target_name, "spec": self.target_json},
                "target_transform": "ln(ms / max(flops, 1))",
                "dynamic_features": list(DYNAMIC_FEATURES),
                "fallback": {"k": self.fallback_k, "floor_ms": self.floor_ms},
                "training": self.training, "types": types,
                "database_prior": None if self.prior is None else entry(self.prior)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the predictor as one JSON file (atomically)."""
        return write_atomic(Path(path), json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, target: Any = None) -> "Predictor":
        """Read a predictor file. With ``target`` (a name, .toml path or TargetSpec) it must have
        been trained for that target; every problem raises a PredictorError naming the fix."""
        from ..targets import get_target

        path = Path(path)
        spec = get_target(target) if target is not None else None
        device = spec.name if spec is not None else "DEVICE"
        if not path.is_file():
            if path.exists():
                raise PredictorMissingError(f"{str(path)!r} is a directory, not a predictor file")
            fix = _fix(device)
            if spec is not None and dataset_path(spec.name).is_file():
                fix = (f"run `tvmsplit train --target {device}` "
                       f"(a profile exists at {dataset_path(spec.name)})")
            raise PredictorMissingError(f"no predictor for {device} at {str(path)!r}; {fix}")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format') if isinstance(data, dict) else None!r}, "
                                 f"not {FORMAT!r}")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise PredictorCorruptError(f"{path} is not a readable predictor ({exc}); retrain it: "
                                        f"`tvmsplit train --target {device}`") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PredictorVersionError(
                f"{path} is a predictor of schema version {version}; this tvmsplit reads version "
                f"{SCHEMA_VERSION}; retrain it: `tvmsplit train --target {device}` (or {_fix(device)})")
        try:
            trained_for = str(data["target"]["name"])
            trained_spec = dict(data["target"]["spec"])
        except (KeyError, TypeError) as exc:
            raise PredictorCorruptError(f"{path} has no target ({exc}); {_fix(device)}") from None
        if spec is not None:
            if trained_for != spec.name:
                raise PredictorTargetError(f"{path} was trained for {trained_for}, you asked for "
                                           f"{spec.name}; {_fix(spec.name)}")
            now = spec.to_json()
            changed = [k for k in ("target", "host", "arch") if trained_spec.get(k) != now.get(k)]
            if changed:
                raise PredictorTargetError(
                    f"{path} was trained for {trained_for} with "
                    f"{', '.join(f'{k}={trained_spec.get(k)}' for k in changed)}"
                    f", but {spec.name} is now {', '.join(f'{k}={now.get(k)}' for k in changed)}; "
                    f"{_fix(spec.name)}")
        try:
            import xgboost as xgb

            def model(t: str, e: Mapping[str, Any]) -> TypeModel:
                booster = None
                if e["model"] == "xgboost":
                    raw = e["booster_json"]
                    if hashlib.sha256(raw.encode()).hexdigest() != e["booster_sha256"]:
                        raise ValueError(f"the {t} model's checksum does not match")
                    booster = xgb.Booster()
                    booster.load_model(bytearray(raw.encode()))
                    booster.set_param({"nthread": 1})
                elif e["model"] != "flops":
                    raise ValueError(f"unknown model kind {e['model']!r}")
                return TypeModel(e["model"], tuple(e["features"]), float(e["baseline_k"]), booster,
                                 dict(e.get("stats", {})))

            types = {}
            for t, e in data["types"].items():
                if t not in LAYER_TYPES:
                    raise ValueError(f"unknown layer type {t!r}")
                types[t] = model(t, e)
            prior = data.get("database_prior")
            fb = data["fallback"]
            pred = cls.__new__(cls)
            pred.target_name, pred.target_json = trained_for, trained_spec
            pred.types, pred.training = types, dict(data.get("training", {}))
            pred.fallback_k, pred.floor_ms = float(fb["k"]), float(fb["floor_ms"])
            pred.prior = None if prior is None else model("database prior", prior)
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorCorruptError(f"{path} is a damaged predictor ({type(exc).__name__}: {exc}); "
                                        f"retrain it: `tvmsplit train --target {device}`") from None
        return pred


# ---- the database prior ----------------------------------------------------------------------
def _prior_row(layer: Layer, state: DeviceState | None, recorded_ms: float,
               names: Sequence[str]) -> list[float]:
    f = {**static_features(layer), **dynamic_features(state),
         "log_recorded_ms": math.log(recorded_ms)}
    return [f[n] for n in names]


def _train_prior(dataset: Dataset, dynamic: bool, params: Mapping[str, Any] | None, rounds: int,
                 seed: int) -> TypeModel | None:
    """ln(ms / recorded_ms) over every row the tuning database measured (all layer types: the
    ratio is the call overhead and the load, not the operator); its median ratio below
    ``MIN_ROWS`` rows, None without any."""
    rows = [r for r in dataset if r.recorded_ms > 0]
    if not rows:
        return None
    names = PRIOR_FEATURES + (DYNAMIC_FEATURES if dynamic else ())
    ms = np.maximum(np.array([r.ms for r in rows], dtype=np.float64), 1e-6)
    rec = np.array([r.recorded_ms for r in rows], dtype=np.float64)
    stats = {"rows": len(rows), "models": len({r.model_id for r in rows}),
             "ms_min": float(ms.min()), "ms_max": float(ms.max())}
    if len(rows) < MIN_ROWS:
        return TypeModel("flops", names, baseline_k(ms, rec), stats=stats)
    X = np.array([_prior_row(r.layer, r.state, r.recorded_ms, names) for r in rows], dtype=np.float64)
    booster = fit_xgb(X, np.log(ms) - np.log(rec), names, params, rounds, seed)
    return TypeModel("xgboost", names, baseline_k(ms, rec), booster, stats)


# ---- whole graphs -----------------------------------------------------------------------------
def predict_graph(predictor: Predictor, graph: LayerGraph, state: DeviceState | None = None,
                  recorded_ms: Sequence[float] | None = None) -> GraphPrediction:
    """Per-layer and total predicted latency of ``graph`` with the device in ``state``
    (None: the state is unknown; XGBoost then treats the dynamic features as missing);
    ``recorded_ms``: per layer, what the tuning database measured for its kernels (NaN where
    it has no record), for a predictor with a database prior."""
    ms, source = predictor._predict(list(graph.layers), [state] * len(graph.layers), None,
                                    recorded_ms)
    return GraphPrediction(graph.name, predictor.target_name, tuple(
        LayerPrediction(layer.name, layer.op, layer_type(layer), float(m), s)
        for layer, m, s in zip(graph.layers, ms, source)), state)


def database_times(graph: LayerGraph, target: Any, db: str | os.PathLike | None = None) -> list[float]:
    """Per layer of ``graph``, what the tuning database of ``target`` (``db``, else the target's
    own) measured for the kernels of the layer built alone, as the profiler builds it (NaN where
    a kernel has no record; all NaN without a database). Lowers every layer: ~0.1-0.5 s each."""
    from ..compile import build_target, stage_module
    from ..graphopt import lower
    from ..split import layer_stage
    from ..targets import get_target
    from ..tunedb import find_database, recorded_ms

    spec = get_target(target) if not hasattr(target, "kind") else target
    database = find_database(spec, db)
    if database is None:
        return [math.nan] * len(graph.layers)
    tvm_target = build_target(spec)
    return [recorded_ms(lower(stage_module(graph, layer_stage(graph, i, spec.name), spec),
                              tvm_target), database) for i in range(len(graph.layers))]


def predict_model(graph: LayerGraph, device: str, *, path: str | os.PathLike | None = None,
                  state: DeviceState | None = None, session: Any = None) -> GraphPrediction:
    """`tvmsplit predict MODEL --target D`: load D's predictor (checked against D's target) and
    predict with the device's live state read now (from ``session``, else this machine). A
    predictor with a database prior scales what D's tuning database measured for each layer."""
    predictor = Predictor.load(path or predictor_path(device), target=device)
    if state is None:
        state = session.state() if session is not None else live_snapshot()
    recorded = database_times(graph, device) if predictor.prior is not None else None
    return predict_graph(predictor, graph, state, recorded)


def train_device(device: str, *, dataset: str | os.PathLike | Dataset | None = None,
                 out: str | os.PathLike | None = None, params: Mapping[str, Any] | None = None,
                 rounds: int = DEFAULT_ROUNDS) -> tuple[Predictor, Path]:
    """`tvmsplit train --target D`: train on D's profile dataset and save the predictor."""
    from ..targets import get_target

    spec = get_target(device)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset or dataset_path(spec.name),
                                                                   target=spec.name)
    # a profile measured from a tuning database trains the database prior as well
    prior = any(r.recorded_ms > 0 for r in ds)
    predictor = Predictor.train(ds, spec, params=params, rounds=rounds, prior=prior)
    return predictor, predictor.save(out or predictor_path(spec.name))


def cost_table(graph: LayerGraph, predictions: Mapping[str, GraphPrediction]):
    """A planner CostTable from one GraphPrediction per device name."""
    from ..partition.problem import CostTable

    return CostTable.from_mapping(list(predictions), {
        layer.name: {d: p.costs()[layer.name] for d, p in predictions.items()} for layer in graph.layers})
