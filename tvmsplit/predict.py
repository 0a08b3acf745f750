"""Load-aware layer latency prediction (ITU-T F.748.20 section 7).

A layer's latency on a device is predicted from

- its *static* features (section 7.1): for a convolution the input size (C, H, W), kernel,
  output channels, stride, padding and groups; for a dense layer its input/output sizes; for
  pooling kernel, stride and input size; for elementwise layers the number of elements; for every
  layer its FLOPs, MACs, weight bytes, input/output bytes and the operators fused into it, and
- the device's *dynamic* state when it runs (``monitor.DeviceState``): CPU utilisation, system CPU
  time, free memory, memory usage and load average, plus the run-queue length per core
  (``LiveState``; on a saturated CPU it is the only reading that still tracks the slowdown).

Layers are grouped into coarse types (``LAYER_TYPES``: conv, depthwise_conv, dense, pool,
elementwise, concat, other) and one regressor is trained per type; XGBoost by default.

Regression target: ``ln(ms / work)`` with ``work = max(flops, 1)``, i.e. the log of the time per
FLOP. Latencies span four orders of magnitude (2 us .. 50 ms) and the goals are relative (MAPE,
share within +-10 %), so a squared error on the log is the right loss (it is the relative error
to first order) and predictions stay positive. Dividing by the FLOPs lets tree ensembles, which
cannot extrapolate, still scale to a layer larger than any they saw: the tree only has to learn
how efficient a shape runs under a load, the size comes from the FLOPs. ``bench_predict.py``
compares it with a plain ``ln(ms)`` target. A type never seen in training (or with fewer than
``MIN_ROWS`` rows) falls back to the FLOPs-proportional baseline ``ms = k_type * flops``.

Files (one JSON file per device, schema ``SCHEMA_VERSION``; see ``Predictor.save``) are tied to the
target they were trained for; ``Predictor.load(path, target=...)`` refuses a file trained for
another target, of another schema, missing or corrupt, with the command that fixes it.

Datasets (``Dataset``) hold one row per measured layer: the layer's description (so features can
be recomputed when their definition changes), the device state, the measured median ms, and the
model / configuration / load level it came from (for held-out splits).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TvmsplitError
from .graph import Layer, LayerGraph, TensorSpec
from .monitor import DeviceState

SCHEMA_VERSION = 1
DATASET_SCHEMA_VERSION = 1
FORMAT = "tvmsplit-predictor"
DATASET_FORMAT = "tvmsplit-dataset"
MIN_ROWS = 8   # fewer training rows of a type -> its FLOPs baseline instead of a regressor

LAYER_TYPES = ("conv", "depthwise_conv", "dense", "pool", "elementwise", "concat", "other")

_POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                       "ReduceMean", "ReduceMax", "ReduceSum"})
_ELTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Relu", "Clip", "LeakyRelu",
                          "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "PRelu",
                          "Softplus", "Gelu", "Erf", "BatchNormalization", "Identity", "Dropout",
                          "Cast", "Softmax", "InstanceNormalization", "LayerNormalization"})
_SHAPE_ONLY = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
_RELU_LIKE = frozenset({"Relu", "Clip", "LeakyRelu", "PRelu"})
_SMOOTH_ACT = frozenset({"HardSwish", "Sigmoid", "HardSigmoid", "Tanh", "Gelu", "Elu", "Selu",
                         "Softplus", "Erf"})
_ELTWISE_ANCHORS = ("Add", "Relu", "Clip", "HardSwish", "Sigmoid", "BatchNormalization", "Mul")

DYNAMIC_FEATURES = ("cpu_percent", "system_cpu_percent", "mem_available_gib", "mem_used_percent",
                    "load_avg_1m", "runnable_per_core")
_COMMON = ("log_flops", "log_macs", "log_param_bytes", "log_in_bytes", "log_out_bytes",
           "log_intensity", "n_inputs", "n_fused", "fused_bn", "fused_relu", "fused_smooth_act",
           "fused_other")
_CONV = ("in_c", "in_h", "in_w", "out_c", "out_h", "out_w", "kernel_h", "kernel_w", "stride_h",
         "stride_w", "pad_h", "pad_w", "groups", "cin_per_group", "cout_per_group", "log_out_hw")
STATIC_FEATURES: dict[str, tuple[str, ...]] = {
    "conv": _COMMON + _CONV,
    "depthwise_conv": _COMMON + _CONV,
    "dense": _COMMON + ("batch", "in_features", "out_features"),
    "pool": _COMMON + ("in_c", "in_h", "in_w", "out_h", "out_w", "kernel_h", "kernel_w",
                       "stride_h", "stride_w", "pad_h", "pad_w", "is_max", "is_global"),
    "elementwise": _COMMON + ("log_elements", *(f"is_{op.lower()}" for op in _ELTWISE_ANCHORS)),
    "concat": _COMMON + ("out_c", "out_h", "out_w", "log_elements", "axis"),
    "other": _COMMON + ("log_elements",),
}


# ---- errors -----------------------------------------------------------------------------------
class PredictorError(TvmsplitError):
    """A predictor or profile dataset cannot be used; the message says which command fixes it."""


class PredictorMissingError(PredictorError):
    """No predictor (or dataset) file where one was expected."""


class PredictorCorruptError(PredictorError):
    """The file exists but is not a readable predictor (or dataset)."""


class PredictorVersionError(PredictorError):
    """The file was written with another schema version."""


class PredictorTargetError(PredictorError):
    """The predictor (or dataset) was made for another target than the one asked for."""


# ---- live state -------------------------------------------------------------------------------
# DeviceState carries the run-queue length itself now; these names stay for callers.
LiveState = DeviceState


def live_snapshot(interval_s: float = 0.1) -> DeviceState:
    from .monitor import snapshot

    return snapshot(interval_s)


def state_from_json(d: Mapping[str, Any] | None) -> DeviceState | None:
    if not d:
        return None
    return DeviceState.from_json(dict(d))


# ---- paths ------------------------------------------------------------------------------------
def predictors_dir() -> Path:
    """Where per-device predictors and profiles live: $TVMSPLIT_PREDICTORS, else
    $XDG_DATA_HOME/tvmsplit/predictors, else ~/.local/share/tvmsplit/predictors."""
    if os.environ.get("TVMSPLIT_PREDICTORS"):
        return Path(os.environ["TVMSPLIT_PREDICTORS"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tvmsplit" / "predictors"


def _device_name(device: str | Any) -> str:
    from .targets import get_target

    return get_target(device).name


def predictor_path(device: str) -> Path:
    """Default predictor file of a device (target name or .toml path)."""
    return predictors_dir() / f"{_device_name(device)}.predictor.json"


def dataset_path(device: str) -> Path:
    """Default profile dataset of a device (what ``tvmsplit profile`` writes)."""
    return predictors_dir() / f"{_device_name(device)}.dataset.json"


def _fix(device: str) -> str:
    return f"run `tvmsplit profile --device {device}` then `tvmsplit train --device {device}`"


# ---- features ---------------------------------------------------------------------------------
def layer_type(layer: Layer) -> str:
    """The coarse type of a layer (one of ``LAYER_TYPES``) from its anchor op and attributes."""
    op = layer.op
    if op in ("Conv", "ConvTranspose"):
        group = int(layer.attr("group", 1) or 1)
        cin = layer.inputs[0].shape[1] if layer.inputs and len(layer.inputs[0].shape) > 1 else 0
        return "depthwise_conv" if group > 1 and group == cin else "conv"
    if op in ("Gemm", "MatMul"):
        return "dense"
    if op in _POOL_OPS:
        return "pool"
    if op == "Concat":
        return "concat"
    if op in _ELTWISE_OPS:
        return "elementwise"
    return "other"


def _ln(x: float) -> float:
    return math.log1p(max(float(x), 0.0))


def _hw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an NCHW (or lower-rank) shape."""
    s = list(shape[1:]) + [1, 1, 1]
    return int(s[0]), int(s[1]), int(s[2])


def static_features(layer: Layer) -> dict[str, float]:
    """The static features of ``layer`` for its type (names in ``STATIC_FEATURES[type]``)."""
    t = layer_type(layer)
    in_bytes = sum(x.nbytes for x in layer.inputs)
    out_bytes = layer.output_bytes
    followers = layer.ops[1:]
    f: dict[str, float] = {
        "log_flops": _ln(layer.flops), "log_macs": _ln(layer.macs),
        "log_param_bytes": _ln(layer.param_bytes), "log_in_bytes": _ln(in_bytes),
        "log_out_bytes": _ln(out_bytes),
        "log_intensity": _ln(layer.flops) - _ln(in_bytes + out_bytes + layer.param_bytes),
        "n_inputs": len(layer.inputs), "n_fused": len(followers),
        "fused_bn": sum(op == "BatchNormalization" for op in followers),
        "fused_relu": sum(op in _RELU_LIKE for op in followers),
        "fused_smooth_act": sum(op in _SMOOTH_ACT for op in followers),
        "fused_other": sum(op not in _RELU_LIKE and op not in _SMOOTH_ACT and op != "BatchNormalization"
                           and op not in _SHAPE_ONLY for op in followers),
    }
    x_shape = layer.inputs[0].shape if layer.inputs else ()
    y_shape = layer.outputs[0].shape if layer.outputs else ()
    out_elems = int(np.prod(y_shape, dtype=np.int64)) if y_shape else 0
    if t in ("conv", "depthwise_conv"):
        c, h, w = _hw(x_shape)
        oc, oh, ow = _hw(y_shape) if len(y_shape) == 4 else (0, 0, 0)
        wshape = tuple(layer.attr("weight_shape", ()) or ())
        if len(wshape) >= 4:
            oc = int(wshape[0])
        k = tuple(layer.attr("kernel_shape", ()) or wshape[2:4] or (1, 1))
        s = tuple(layer.attr("strides", (1, 1)) or (1, 1))
        p = tuple(layer.attr("pads", (0, 0, 0, 0)) or (0, 0, 0, 0))
        g = int(layer.attr("group", 1) or 1)
        f.update(in_c=c, in_h=h, in_w=w, out_c=oc, out_h=oh, out_w=ow, kernel_h=k[0],
                 kernel_w=k[-1], stride_h=s[0], stride_w=s[-1],
                 pad_h=p[0] + p[len(p) // 2] if len(p) >= 2 else 0,
                 pad_w=p[1] + p[-1] if len(p) >= 4 else 0, groups=g,
                 cin_per_group=c / g, cout_per_group=oc / g, log_out_hw=_ln(oh * ow))
    elif t == "dense":
        fin = int(x_shape[-1]) if x_shape else 0
        fout = int(y_shape[-1]) if y_shape else 0
        if layer.op == "Gemm" and layer.attr("transA", 0) and len(x_shape) == 2:
            fin = int(x_shape[0])
        f.update(batch=out_elems / fout if fout else 0, in_features=fin, out_features=fout)
    elif t == "pool":
        c, h, w = _hw(x_shape)
        _, oh, ow = _hw(y_shape)
        is_global = layer.op.startswith("Global") or layer.op.startswith("Reduce")
        k = tuple(layer.attr("kernel_shape", ()) or ((h, w) if is_global else (1, 1)))
        s = tuple(layer.attr("strides", ()) or (k if is_global else (1, 1)))
        p = tuple(layer.attr("pads", ()) or (0, 0, 0, 0))
        f.update(in_c=c, in_h=h, in_w=w, out_h=oh, out_w=ow, kernel_h=k[0], kernel_w=k[-1],
                 stride_h=s[0], stride_w=s[-1], pad_h=p[0] + p[len(p) // 2] if len(p) >= 2 else 0,
                 pad_w=p[1] + p[-1] if len(p) >= 4 else 0,
                 is_max=float("Max" in layer.op), is_global=float(is_global))
    elif t == "elementwise":
        f["log_elements"] = _ln(out_elems)
        for op in _ELTWISE_ANCHORS:
            f[f"is_{op.lower()}"] = float(layer.op == op)
    elif t == "concat":
        oc, oh, ow = _hw(y_shape)
        f.update(out_c=oc, out_h=oh, out_w=ow, log_elements=_ln(out_elems),
                 axis=float(layer.attr("axis", 1)))
    else:
        f["log_elements"] = _ln(out_elems)
    return {name: float(f.get(name, 0.0)) for name in STATIC_FEATURES[t]}


def dynamic_features(state: DeviceState | Mapping[str, Any] | None) -> dict[str, float]:
    """The dynamic features of a device state (NaN where the state is unknown)."""
    if state is None:
        return {name: float("nan") for name in DYNAMIC_FEATURES}
    d = state.to_json() if isinstance(state, DeviceState) else dict(state)
    run = d.get("runnable_per_core")
    return {"cpu_percent": float(d["cpu_percent"]),
            "system_cpu_percent": float(d["system_cpu_percent"]),
            "mem_available_gib": float(d["mem_available_bytes"]) / 2 ** 30,
            "mem_used_percent": float(d["mem_used_percent"]),
            "load_avg_1m": float(d["load_avg_1m"]),
            "runnable_per_core": float("nan") if run is None else float(run)}


def feature_names(ltype: str, dynamic: bool = True) -> tuple[str, ...]:
    return STATIC_FEATURES[ltype] + (DYNAMIC_FEATURES if dynamic else ())


def work(layer: Layer) -> float:
    """The FLOPs a layer's time is scaled by (at least 1)."""
    return float(max(layer.flops, 1))


# ---- layers on disk ---------------------------------------------------------------------------
def layer_to_json(layer: Layer) -> dict[str, Any]:
    return {"name": layer.name, "op": layer.op, "ops": list(layer.ops),
            "inputs": [t.to_json() for t in layer.inputs],
            "outputs": [t.to_json() for t in layer.outputs],
            "macs": int(layer.macs), "flops": int(layer.flops), "param_bytes": int(layer.param_bytes),
            "attrs": [[k, list(v) if isinstance(v, tuple) else v] for k, v in layer.attrs]}


def layer_from_json(d: Mapping[str, Any]) -> Layer:
    return Layer(name=str(d["name"]), op=str(d["op"]), nodes=(), ops=tuple(d["ops"]),
                 inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
                 outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
                 macs=int(d["macs"]), flops=int(d["flops"]), param_bytes=int(d["param_bytes"]),
                 attrs=tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in d["attrs"]))


def config_id(layer: Layer) -> str:
    """Identity of a layer configuration (shapes, ops, attributes; not its name or weights)."""
    d = layer_to_json(layer)
    d.pop("name")
    d["inputs"] = [[t["dtype"], t["shape"]] for t in d["inputs"]]
    d["outputs"] = [[t["dtype"], t["shape"]] for t in d["outputs"]]
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---- dataset ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One measured layer: what it is, the device state, and the measured median time."""

    layer: Layer
    state: DeviceState | None
    ms: float
    std_ms: float = 0.0
    model_id: str = ""
    config_id: str = ""
    load: str = ""
    _features: dict[str, float] | None = field(default=None, repr=False, compare=False)

    @property
    def layer_type(self) -> str:
        return layer_type(self.layer)

    def features(self) -> dict[str, float]:
        if self._features is None:
            self._features = {**static_features(self.layer), **dynamic_features(self.state)}
        return self._features

    def to_json(self) -> dict[str, Any]:
        state = None
        if self.state is not None:   # NaN (an unknown reading) is not JSON: write null
            state = {k: None if isinstance(v, float) and math.isnan(v) else v
                     for k, v in self.state.to_json().items()}
        return {"layer_type": self.layer_type, "layer": layer_to_json(self.layer), "state": state,
                "ms": self.ms, "std_ms": self.std_ms, "model_id": self.model_id,
                "config_id": self.config_id, "load": self.load}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Row":
        return cls(layer_from_json(d["layer"]), state_from_json(d.get("state")),
                   float(d["ms"]), float(d.get("std_ms", 0.0)), str(d.get("model_id", "")),
                   str(d.get("config_id", "")), str(d.get("load", "")))


class Dataset:
    """Rows of measured layers for one target (a device kind); saved as one JSON file."""

    def __init__(self, rows: Iterable[Row] = (), target: str | None = None):
        self.rows: list[Row] = list(rows)
        self.target = target

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Dataset({len(self.rows)} rows, target={self.target!r}, types={self.counts()})"

    def add(self, graph: LayerGraph, measurements: Sequence[Any], *, model_id: str | None = None,
            load: str = "") -> None:
        """Add profile_layers() results of ``graph`` (matched to its layers by name)."""
        mid = model_id or graph.name
        for m in measurements:
            layer = graph.layer(m.layer)
            self.rows.append(Row(layer, m.state, float(m.timing.median_ms), float(m.timing.std_ms),
                                 mid, config_id(layer), load))

    def extend(self, other: "Dataset") -> None:
        self.rows.extend(other.rows)

    def subset(self, keep: Callable[[Row], bool]) -> "Dataset":
        return Dataset([r for r in self.rows if keep(r)], self.target)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.rows:
            out[r.layer_type] += 1
        return dict(sorted(out.items()))

    def types(self) -> list[str]:
        return [t for t in LAYER_TYPES if any(r.layer_type == t for r in self.rows)]

    def of_type(self, ltype: str) -> list[Row]:
        return [r for r in self.rows if r.layer_type == ltype]

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model_id for r in self.rows))

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([r.to_json() for r in self.rows], sort_keys=True)
                              .encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": DATASET_FORMAT, "schema_version": DATASET_SCHEMA_VERSION,
                "target": self.target, "rows": [r.to_json() for r in self.rows]}

    def save(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), json.dumps(self.to_json()) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, target: str | None = None) -> "Dataset":
        """Read a dataset; with ``target`` also check it was measured for that target."""
        path = Path(path)
        device = _device_name(target) if target else "DEVICE"
        if not path.is_file():
            raise PredictorMissingError(f"no profile dataset at {str(path)!r}; run "
                                        f"`tvmsplit profile --device {device}`")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != DATASET_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {DATASET_FORMAT!r}")
            version = data.get("schema_version")
            if version != DATASET_SCHEMA_VERSION:
                raise PredictorVersionError(
                    f"{path} is a profile dataset of schema version {version}; this tvmsplit reads "
                    f"version {DATASET_SCHEMA_VERSION}; run `tvmsplit profile --device {device}` again")
            ds = cls([Row.from_json(r) for r in data["rows"]], data.get("target"))
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorCorruptError(f"{path} is not a readable profile dataset "
                                        f"({type(exc).__name__}: {exc}); run `tvmsplit profile "
                                        f"--device {device}` again") from None
        if target is not None and ds.target is not None and ds.target != device:
            raise PredictorTargetError(f"{path} was measured for {ds.target}, you asked for "
                                       f"{device}; run `tvmsplit profile --device {device}`")
        return ds

    # ---- matrices ------------------------------------------------------------------------
    def matrix(self, ltype: str, names: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, ms, work) of the rows of one type, features in ``names`` order."""
        rows = self.of_type(ltype)
        names = names or feature_names(ltype)
        X = np.array([[r.features()[n] for n in names] for r in rows], dtype=np.float64)
        X = X.reshape(len(rows), len(names))
        ms = np.maximum(np.array([r.ms for r in rows], dtype=np.float64), 1e-6)  # ln() needs > 0
        wk = np.array([work(r.layer) for r in rows], dtype=np.float64)
        return X, ms, wk


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- splits -----------------------------------------------------------------------------------
def split_by_config(ds: Dataset, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out whole layer configurations (all their load levels and models), per layer type."""
    rng = np.random.default_rng(seed)
    test_ids: set[str] = set()
    for t in ds.types():
        ids = sorted({r.config_id for r in ds.of_type(t)})
        n = int(round(len(ids) * test_fraction))
        if len(ids) >= 4:
            n = max(1, n)
        test_ids.update(rng.permutation(np.array(ids, dtype=object))[:n].tolist())
    return ds.subset(lambda r: r.config_id not in test_ids), ds.subset(lambda r: r.config_id in test_ids)


def split_by_model(ds: Dataset, test_models: Iterable[str]) -> tuple[Dataset, Dataset]:
    """Hold out whole models; training rows of any configuration that occurs in them are dropped
    too, so the held-out models' layers were never seen in training."""
    test_models = set(test_models)
    unknown = test_models - set(ds.models())
    if unknown:
        raise PredictorError(f"no rows of model(s) {', '.join(sorted(unknown))} in the dataset")
    test = ds.subset(lambda r: r.model_id in test_models)
    seen = {r.config_id for r in test}
    return ds.subset(lambda r: r.model_id not in test_models and r.config_id not in seen), test


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


def _fit_xgb(X: np.ndarray, y: np.ndarray, names: Sequence[str], params: Mapping[str, Any] | None,
             rounds: int, seed: int):
    import xgboost as xgb

    p = {**DEFAULT_XGB_PARAMS, **(params or {}), "seed": seed}
    return xgb.train(p, xgb.DMatrix(X, label=y, feature_names=list(names)), num_boost_round=rounds)


def _baseline_k(ms: np.ndarray, wk: np.ndarray) -> float:
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
                 floor_ms: float, training: Mapping[str, Any] | None = None):
        from .targets import get_target

        spec = get_target(target) if isinstance(target, str) else target
        self.target_name: str = spec.name if spec is not None else str(target)
        self.target_json: dict[str, Any] = spec.to_json() if spec is not None else {}
        self.types = dict(types)
        self.fallback_k = float(fallback_k)
        self.floor_ms = float(floor_ms)
        self.training = dict(training or {})

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
              rounds: int = DEFAULT_ROUNDS, dynamic: bool = True, seed: int = 0) -> "Predictor":
        """One XGBoost model per layer type on ``ln(ms / work)``; types with fewer than
        ``MIN_ROWS`` rows get their FLOPs baseline. ``target`` defaults to the dataset's."""
        target = target if target is not None else dataset.target
        if target is None:
            raise PredictorError("the dataset names no target; pass target=")
        if not len(dataset):
            raise PredictorError("the dataset is empty; profile the device first "
                                 f"(`tvmsplit profile --device {target}`)")
        types: dict[str, TypeModel] = {}
        all_ms, all_wk = [], []
        for t in dataset.types():
            names = feature_names(t, dynamic)
            X, ms, wk = dataset.matrix(t, names)
            all_ms.append(ms)
            all_wk.append(wk)
            k = _baseline_k(ms, wk)
            rows = dataset.of_type(t)
            stats = {"rows": len(rows), "configs": len({r.config_id for r in rows}),
                     "models": len({r.model_id for r in rows}),
                     "ms_min": float(ms.min()), "ms_max": float(ms.max()),
                     "loads": sorted({r.load for r in rows})}
            if len(rows) < MIN_ROWS:
                types[t] = TypeModel("flops", names, k, stats=stats)
                continue
            booster = _fit_xgb(X, np.log(ms) - np.log(wk), names, params, rounds, seed)
            model = TypeModel("xgboost", names, k, booster, stats)
            fit = metrics(ms, model.predict(X, wk))
            stats["train_mape_pct"] = round(fit["mape_pct"], 3)
            gain = booster.get_score(importance_type="gain")
            stats["top_features"] = [n for n, _ in sorted(gain.items(), key=lambda kv: -kv[1])[:6]]
            types[t] = model
        ms_all, wk_all = np.concatenate(all_ms), np.concatenate(all_wk)
        training = {"rows": len(dataset), "models": len(dataset.models()),
                    "loads": sorted({r.load for r in dataset}), "dataset_sha256": dataset.sha256(),
                    "dynamic_features": dynamic, "rounds": rounds,
                    "params": {**DEFAULT_XGB_PARAMS, **(params or {})}, "seed": seed,
                    "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return cls(target, types, _baseline_k(ms_all, wk_all), float(np.percentile(ms_all, 1)),
                   training)

    # ---- prediction ----------------------------------------------------------------------
    def _predict(self, layers: Sequence[Layer],
                 states: Sequence[DeviceState | None]) -> tuple[np.ndarray, list[str]]:
        out = np.zeros(len(layers))
        source = [""] * len(layers)
        by_type: dict[str, list[int]] = defaultdict(list)
        for i, layer in enumerate(layers):
            by_type[layer_type(layer)].append(i)
        for t, idx in by_type.items():
            model = self.types.get(t)
            wk = np.array([work(layers[i]) for i in idx])
            if model is None:
                out[idx] = np.maximum(self.fallback_k * wk, self.floor_ms)
                for i in idx:
                    source[i] = "fallback"
                continue
            feats = [{**static_features(layers[i]), **dynamic_features(states[i])} for i in idx]
            X = np.array([[f[n] for n in model.features] for f in feats], dtype=np.float64)
            out[idx] = model.predict(X.reshape(len(idx), len(model.features)), wk)
            for i in idx:
                source[i] = model.kind
        return out, source

    def predict_layers(self, layers: Sequence[Layer], state: DeviceState | None) -> np.ndarray:
        """Predicted ms of each layer with the device in ``state``."""
        return self._predict(list(layers), [state] * len(layers))[0]

    def predict_rows(self, rows: Iterable[Row]) -> np.ndarray:
        """Predicted ms of dataset rows, each with the state recorded when it was measured."""
        rows = list(rows)
        return self._predict([r.layer for r in rows], [r.state for r in rows])[0]

    # ---- files ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        import xgboost as xgb

        types = {}
        for t, m in self.types.items():
            entry: dict[str, Any] = {"model": m.kind, "features": list(m.features), "baseline_k": m.k,
                                     "stats": m.stats}
            if m.kind == "xgboost":
                raw = bytes(m.booster.save_raw(raw_format="json")).decode()
                entry["booster_json"] = raw
                entry["booster_sha256"] = hashlib.sha256(raw.encode()).hexdigest()
            types[t] = entry
        from . import __version__

        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "tvmsplit_version": __version__,
                "xgboost_version": xgb.__version__,
                "target": {"name": self.target_name, "spec": self.target_json},
                "target_transform": "ln(ms / max(flops, 1))",
                "dynamic_features": list(DYNAMIC_FEATURES),
                "fallback": {"k": self.fallback_k, "floor_ms": self.floor_ms},
                "training": self.training, "types": types}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the predictor as one JSON file (atomically)."""
        return _write_atomic(Path(path), json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, target: Any = None) -> "Predictor":
        """Read a predictor file. With ``target`` (a name, .toml path or TargetSpec) it must have
        been trained for that target; every problem raises a PredictorError naming the fix."""
        from .targets import get_target

        path = Path(path)
        spec = get_target(target) if target is not None else None
        device = spec.name if spec is not None else "DEVICE"
        if not path.is_file():
            if path.exists():
                raise PredictorMissingError(f"{str(path)!r} is a directory, not a predictor file")
            fix = _fix(device)
            if spec is not None and dataset_path(spec.name).is_file():
                fix = (f"run `tvmsplit train --device {device}` "
                       f"(a profile exists at {dataset_path(spec.name)})")
            raise PredictorMissingError(f"no predictor for {device} at {str(path)!r}; {fix}")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format') if isinstance(data, dict) else None!r}, "
                                 f"not {FORMAT!r}")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise PredictorCorruptError(f"{path} is not a readable predictor ({exc}); retrain it: "
                                        f"`tvmsplit train --device {device}`") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PredictorVersionError(
                f"{path} is a predictor of schema version {version}; this tvmsplit reads version "
                f"{SCHEMA_VERSION}; retrain it: `tvmsplit train --device {device}` (or {_fix(device)})")
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

            types = {}
            for t, e in data["types"].items():
                if t not in LAYER_TYPES:
                    raise ValueError(f"unknown layer type {t!r}")
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
                types[t] = TypeModel(e["model"], tuple(e["features"]), float(e["baseline_k"]), booster,
                                     dict(e.get("stats", {})))
            fb = data["fallback"]
            pred = cls.__new__(cls)
            pred.target_name, pred.target_json = trained_for, trained_spec
            pred.types, pred.training = types, dict(data.get("training", {}))
            pred.fallback_k, pred.floor_ms = float(fb["k"]), float(fb["floor_ms"])
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorCorruptError(f"{path} is a damaged predictor ({type(exc).__name__}: {exc}); "
                                        f"retrain it: `tvmsplit train --device {device}`") from None
        return pred


# ---- whole graphs -----------------------------------------------------------------------------
def predict_graph(predictor: Predictor, graph: LayerGraph,
                  state: DeviceState | None = None) -> GraphPrediction:
    """Per-layer and total predicted latency of ``graph`` with the device in ``state``
    (None: the state is unknown; XGBoost then treats the dynamic features as missing)."""
    ms, source = predictor._predict(list(graph.layers), [state] * len(graph.layers))
    return GraphPrediction(graph.name, predictor.target_name, tuple(
        LayerPrediction(layer.name, layer.op, layer_type(layer), float(m), s)
        for layer, m, s in zip(graph.layers, ms, source)), state)


def predict_model(graph: LayerGraph, device: str, *, path: str | os.PathLike | None = None,
                  state: DeviceState | None = None, session: Any = None) -> GraphPrediction:
    """`tvmsplit predict MODEL --device D`: load D's predictor (checked against D's target) and
    predict with the device's live state read now (from ``session``, else this machine)."""
    predictor = Predictor.load(path or predictor_path(device), target=device)
    if state is None:
        state = session.state() if session is not None else live_snapshot()
    return predict_graph(predictor, graph, state)


def train_device(device: str, *, dataset: str | os.PathLike | Dataset | None = None,
                 out: str | os.PathLike | None = None, params: Mapping[str, Any] | None = None,
                 rounds: int = DEFAULT_ROUNDS) -> tuple[Predictor, Path]:
    """`tvmsplit train --device D`: train on D's profile dataset and save the predictor."""
    from .targets import get_target

    spec = get_target(device)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset or dataset_path(spec.name),
                                                                   target=spec.name)
    predictor = Predictor.train(ds, spec, params=params, rounds=rounds)
    return predictor, predictor.save(out or predictor_path(spec.name))


def cost_table(graph: LayerGraph, predictions: Mapping[str, GraphPrediction]):
    """A planner CostTable from one GraphPrediction per device name."""
    from .partition.problem import CostTable

    return CostTable.from_mapping(list(predictions), {
        layer.name: {d: p.costs()[layer.name] for d, p in predictions.items()} for layer in graph.layers})


# ---- regressor comparison (ITU-T F.748.20 section 7.2) ------------------------------------------
REGRESSORS = ("FLOPs-only", "LR", "RANSAC", "KRR", "KNN", "DT", "SVM", "RF", "AdaBoost", "GBRT",
              "ANN", "XGBoost")
ABLATIONS = ("XGBoost (static only)", "XGBoost (ln ms target)")


def _sklearn_model(name: str, seed: int):
    """(estimator, needs standardised features) for a regressor name."""
    from sklearn.ensemble import (AdaBoostRegressor, GradientBoostingRegressor,
                                  RandomForestRegressor)
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression, RANSACRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    return {
        "LR": (lambda: LinearRegression(), True),
        "RANSAC": (lambda: RANSACRegressor(LinearRegression(), min_samples=0.5,
                                                 random_state=seed, max_trials=200), True),
        "KRR": (lambda: KernelRidge(alpha=0.05, kernel="rbf"), True),
        "KNN": (lambda: KNeighborsRegressor(n_neighbors=5, weights="distance"), True),
        "DT": (lambda: DecisionTreeRegressor(min_samples_leaf=2, random_state=seed), False),
        "SVM": (lambda: SVR(C=10.0, epsilon=0.05, gamma="scale"), True),
        "RF": (lambda: RandomForestRegressor(n_estimators=300, min_samples_leaf=1, random_state=seed,
                                             n_jobs=1), False),
        "AdaBoost": (lambda: AdaBoostRegressor(DecisionTreeRegressor(max_depth=6), n_estimators=200,
                                               learning_rate=0.5, random_state=seed), False),
        "GBRT": (lambda: GradientBoostingRegressor(n_estimators=400, max_depth=4, learning_rate=0.05,
                                                   subsample=0.8, random_state=seed), False),
        "ANN": (lambda: MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-3, max_iter=3000,
                                     learning_rate_init=1e-3, random_state=seed), True),
    }[name]


def _pipeline(name: str, seed: int):
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    factory, scale = _sklearn_model(name, seed)
    steps = [SimpleImputer(strategy="median", keep_empty_features=True)]
    if scale:
        steps.append(StandardScaler())
    return make_pipeline(*steps, factory())


@dataclass
class Comparison:
    """Metrics of every regressor per layer type (plus "all") on one test set."""

    split: str
    rows: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]   # regressor -> predicted ms of each test row
    test: Dataset
    notes: list[str] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: Sequence["Comparison"], split: str) -> "Comparison":
        """Pool several comparisons (e.g. the folds of leave-one-model-out) into one: metrics are
        recomputed over all their test rows together."""
        regs = list(parts[0].predictions)
        rows = [r for c in parts for r in c.test]
        preds = {name: np.concatenate([c.predictions[name] for c in parts]) for name in regs}
        true = np.array([r.ms for r in rows])
        test = Dataset(rows, parts[0].test.target)
        out = []
        for name in regs:
            for t in [*test.types(), "all"]:
                sel = np.array([t == "all" or r.layer_type == t for r in rows], dtype=bool)
                out.append({"regressor": name, "layer_type": t, **metrics(true[sel], preds[name][sel])})
        return cls(split, out, preds, test, [n for c in parts for n in c.notes])

    def get(self, regressor: str, ltype: str = "all") -> dict[str, Any]:
        return next(r for r in self.rows if r["regressor"] == regressor and r["layer_type"] == ltype)

    def to_markdown(self, types: Sequence[str] | None = None) -> str:
        if not types:
            types = [*dict.fromkeys(r["layer_type"] for r in self.rows if r["layer_type"] != "all"), "all"]
        regs = list(dict.fromkeys(r["regressor"] for r in self.rows))
        ns = {t: next((r["n"] for r in self.rows if r["layer_type"] == t), 0) for t in types}
        out = []
        for metric, label, fmt in (("mae_ms", "MAE (ms)", "{:.3f}"), ("mape_pct", "MAPE (%)", "{:.1f}"),
                                   ("r2", "R²", "{:.3f}"), ("within10_pct", "within ±10 % (%)", "{:.1f}")):
            out.append(f"**{label}** — {self.split}\n")
            out.append("| regressor | " + " | ".join(f"{t} (n={ns[t]})" for t in types) + " |")
            out.append("|---|" + "---:|" * len(types))
            for reg in regs:
                cells = []
                for t in types:
                    row = next((r for r in self.rows if r["regressor"] == reg and r["layer_type"] == t), None)
                    v = row[metric] if row else float("nan")
                    missing = v is None or (isinstance(v, float) and math.isnan(v))
                    cells.append("–" if missing else fmt.format(v))
                out.append(f"| {reg} | " + " | ".join(cells) + " |")
            out.append("")
        return "\n".join(out)


def compare_regressors(train: Dataset, test: Dataset, *, regressors: Sequence[str] | None = None,
                       split: str = "", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> Comparison:
    """Fit every regressor per layer type on ``train`` and score it on ``test``.

    All learned regressors get the same features (static + dynamic; ``XGBoost (static only)``
    drops the dynamic ones) and the same target ``ln(ms / flops)``, standardised; ``XGBoost (ln ms
    target)`` regresses ``ln(ms)`` directly. Features are imputed and, for LR, RANSAC, KRR, KNN,
    SVM and ANN, standardised in a scikit-learn pipeline fitted on the training rows only. Learned
    predictions are clipped to the training targets' range widened by e^2 on each side (a linear
    model extrapolating to an unseen shape can otherwise be off by orders of magnitude). A type
    absent from ``train`` (or with fewer than ``MIN_ROWS`` rows) is predicted by the
    FLOPs-proportional fallback for every regressor, and noted.
    """
    import warnings

    regressors = list(regressors or REGRESSORS)
    rows_test = list(test)
    preds = {name: np.full(len(rows_test), np.nan) for name in regressors}
    notes: list[str] = []
    all_ms = np.array([r.ms for r in train])
    all_wk = np.array([work(r.layer) for r in train])
    global_k = _baseline_k(all_ms, all_wk) if len(all_ms) else 1e-6
    for t in test.types():
        idx = [i for i, r in enumerate(rows_test) if r.layer_type == t]
        test_t = Dataset([rows_test[i] for i in idx])
        n_train = len(train.of_type(t))
        for name in regressors:
            dynamic = name != "XGBoost (static only)"
            names = feature_names(t, dynamic)
            Xte, _, wk_te = test_t.matrix(t, names)
            if n_train < MIN_ROWS:
                k = _baseline_k(*train.matrix(t, names)[1:]) if n_train else global_k
                preds[name][idx] = k * wk_te
                if name == regressors[0]:
                    notes.append(f"{t}: {n_train} training rows; every regressor uses the FLOPs fallback")
                continue
            Xtr, ms_tr, wk_tr = train.matrix(t, names)
            if name == "FLOPs-only":
                preds[name][idx] = _baseline_k(ms_tr, wk_tr) * wk_te
                continue
            log_target = name == "XGBoost (ln ms target)"
            y = np.log(ms_tr) - (0 if log_target else np.log(wk_tr))
            if name.startswith("XGBoost"):
                booster = _fit_xgb(Xtr, y, names, None, DEFAULT_ROUNDS, seed)
                p = np.asarray(booster.inplace_predict(Xte), dtype=np.float64)
            else:
                mu, sd = float(y.mean()), float(y.std()) or 1.0
                model = _pipeline(name, seed)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(Xtr, (y - mu) / sd)
                        p = model.predict(Xte) * sd + mu
                except Exception as exc:  # e.g. RANSAC finding no consensus set
                    notes.append(f"{name} on {t}: fit failed ({type(exc).__name__}: {exc}); "
                                 "FLOPs-only used instead")
                    p = np.log(np.full(len(idx), _baseline_k(ms_tr, wk_tr)))
            # A linear model (LR, RANSAC, ANN) can extrapolate wildly on an unseen shape; keep
            # every prediction within e^2 (7.4x) of the training targets' range.
            p = np.clip(p, y.min() - 2.0, y.max() + 2.0)
            preds[name][idx] = np.exp(p) * (1 if log_target else wk_te)
            if progress:
                progress(f"{split or 'comparison'}: {name} on {t} ({n_train} train, {len(idx)} test rows)")
    out_rows = []
    true = np.array([r.ms for r in rows_test])
    types = test.types()
    for name in regressors:
        for t in [*types, "all"]:
            sel = np.array([t == "all" or r.layer_type == t for r in rows_test], dtype=bool)
            out_rows.append({"regressor": name, "layer_type": t, **metrics(true[sel], preds[name][sel])})
    return Comparison(split, out_rows, preds, test, notes)
