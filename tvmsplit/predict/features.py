"""Layer types, static and dynamic features, and layers on disk (JSON; ``config_id``)."""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..graph import Layer, TensorSpec
from ..monitor import DeviceState

LAYER_TYPES = ("conv", "depthwise_conv", "dense", "pool", "elementwise", "concat", "recurrent",
               "other")
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}

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

# How much of the layer's build was tuned: the same shape runs several times faster tuned.
TUNING_FEATURES = ("tuned_fraction",)
# The database prior (``Predictor.train(prior=True)``): ln(ms / recorded_ms) from these, where
# recorded_ms is what the tuning database measured for the layer's kernels.
PRIOR_FEATURES = ("log_recorded_ms", "n_fused")
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
    # one unrolled step per time step and direction: [batch, hidden] x [hidden, gates * hidden]
    "recurrent": _COMMON + ("steps", "batch", "in_features", "hidden", "directions", "gates",
                            "log_step_macs"),
    "other": _COMMON + ("log_elements",),
}


# ---- live state -------------------------------------------------------------------------------


def live_snapshot(interval_s: float = 0.1) -> DeviceState:
    from ..monitor import snapshot

    return snapshot(interval_s)


def state_from_json(d: Mapping[str, Any] | None) -> DeviceState | None:
    if not d:
        return None
    return DeviceState.from_json(dict(d))


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
    if op in _RECURRENT_GATES:
        return "recurrent"
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
    elif t == "recurrent":
        layout = int(layer.attr("layout", 0) or 0)
        steps, batch = ((x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])) \
            if len(x_shape) == 3 else (0, 0)
        dirs = 2 if layer.attr("direction", "forward") == "bidirectional" else 1
        hidden = int(layer.attr("hidden_size", 0) or 0)
        f.update(steps=steps, batch=batch, in_features=x_shape[-1] if x_shape else 0,
                 hidden=hidden, directions=dirs, gates=_RECURRENT_GATES[layer.op],
                 log_step_macs=_ln(layer.macs / max(steps * dirs, 1)))
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


def feature_names(ltype: str, dynamic: bool = True, tuning: bool = False) -> tuple[str, ...]:
    return STATIC_FEATURES[ltype] + (DYNAMIC_FEATURES if dynamic else ()) + (TUNING_FEATURES if tuning else ())


def tuned_fraction(tuning: str) -> float:
    """Share of a build's kernels taken from a tuning database, from its description
    ("N/M kernels tuned (...)", ``tunedb.AppliedTuning.describe``); NaN when there is none."""
    m = re.search(r"(\d+)/(\d+) kernels tuned", tuning or "")
    if m is None or int(m.group(2)) == 0:
        return float("nan")
    return int(m.group(1)) / int(m.group(2))


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
