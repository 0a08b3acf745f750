"""Single-layer ONNX models in many layer configurations: the predictor's training layers.

The latency predictor (``predict/``) needs training data that covers more than the zoo's layers:
``sweep_models(kind, count, seed)`` draws ``count`` distinct configurations of one layer kind and
builds each as a one-layer ONNX model (``onnxbuild.GraphBuilder``: seeded weights, static shapes,
opset 17). After ``tvmsplit.load`` every one of them is a 1-layer ``LayerGraph``: the anchor (Conv,
Gemm, MaxPool, Add, ...) plus the elementwise followers the frontend fuses into it (a Conv +
BatchNormalization + Relu is one layer, as in real models).

Kinds (``KINDS``) and what they vary:

``conv``            kernel 1/3/5/7, stride 1/2, padding 0 or "same", in/out channels, spatial size
                    (square and not), groups 1/2/4, bias, followers (BN, Relu, Clip=ReLU6, HardSwish)
``depthwise_conv``  channels, spatial size, kernel 3/5/7, stride 1/2 (group = channels), followers
``pool``            MaxPool / AveragePool (kernel 2/3/5, stride 1/2, padding), GlobalAverage/MaxPool
``dense``           Gemm with in/out sizes, optional Relu
``activation``      Relu, Clip (ReLU6), HardSwish, Sigmoid on [1, C, H, W]
``batchnorm``       BatchNormalization, optionally followed by Relu / Clip
``add``             residual Add of two inputs, optionally followed by Relu
``concat``          Concat of 2-4 inputs along channels

Sizes are bounded (MACs, elements, weight bytes) so one layer runs in roughly 0.002-50 ms on a
small x86 VM with TVM's untuned default schedules; the smallest elementwise layers are dominated by
the call overhead, which is exactly what a predictor must learn too.

To add a kind: a ``_draw_<kind>`` function returning one configuration (or None to redraw), its
entry in ``_DRAW``, ``_SIZE_RANGE`` and ``KINDS`` (at the end: a kind's seeded stream depends on
its index), its size in ``_size`` and its graph in ``make_model``. Profiling these models is
``sweep.profile_sweep``'s job; this module only builds them (no TVM).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx

from .errors import TvmsplitError
from .onnxbuild import GraphBuilder

KINDS = ("conv", "depthwise_conv", "pool", "dense", "activation", "batchnorm", "add", "concat")

# Bounds that keep one measurement in ~0.002-50 ms on a 2-core VM (untuned TVM, ~1 GMAC/s conv).
_MAX_CONV_MACS = 25_000_000
_MIN_CONV_MACS = 20_000
_MAX_ELEMS = 2_000_000
_MAX_DENSE_WEIGHTS = 6_000_000

# (smallest, largest) size per kind, see sweep_configs.
_SIZE_RANGE = {"conv": (_MIN_CONV_MACS, _MAX_CONV_MACS), "depthwise_conv": (5_000, 3_000_000),
               "pool": (2_000, _MAX_ELEMS), "dense": (5_000, _MAX_DENSE_WEIGHTS),
               "activation": (1_000, _MAX_ELEMS), "batchnorm": (1_000, _MAX_ELEMS),
               "add": (1_000, _MAX_ELEMS), "concat": (1_000, _MAX_ELEMS)}

_CONV_FOLLOWERS = ("", "Relu", "BN", "BN+Relu", "BN+Clip", "Clip", "HardSwish", "BN+HardSwish")
_ACTIVATIONS = ("Relu", "Clip", "HardSwish", "Sigmoid")


class SweepError(TvmsplitError):
    """A sweep or profiling request is invalid (unknown kind or load level, bad count, RPC options)."""


# ---- configurations ---------------------------------------------------------------------------
def sweep_configs(kind: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct, seeded configurations of layer ``kind`` (dicts, JSON-serialisable).

    Sizes (MACs, or elements for layers without MACs) are spread evenly on a log scale between
    the kind's bounds: each draw first picks a target decade-slice, then samples the grid until a
    configuration falls into it. Plain grid sampling would put most configurations near the upper
    bound (sizes multiply), while real models have many small layers.
    """
    if kind not in KINDS:
        raise SweepError(f"unknown sweep kind {kind!r}; known: {', '.join(KINDS)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise SweepError(f"count must be an integer >= 0, got {count!r}")
    # A stable per-kind stream, so adding kinds never changes another kind's configurations.
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    draw = _DRAW[kind]
    lo, hi = _SIZE_RANGE[kind]
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < count:
        target = rng.uniform(math.log10(lo), math.log10(hi))
        for _ in range(400):
            tries += 1
            cfg = draw(rng)
            if cfg is None or abs(math.log10(max(_size(kind, cfg), 1)) - target) > 0.25:
                continue
            key = json.dumps(cfg, sort_keys=True)
            if key not in seen:
                break
        else:
            cfg = None
        if tries > 2000 * (count + 10):
            raise SweepError(f"could only draw {len(out)} distinct {kind} configurations "
                             f"(asked for {count}); ask for fewer")
        if cfg is None:
            continue
        seen.add(json.dumps(cfg, sort_keys=True))
        out.append({"kind": kind, **cfg})
    return out


def _size(kind: str, cfg: dict[str, Any]) -> int:
    """The size a configuration is spread by: MACs (conv, dense) or elements."""
    if kind in ("conv", "depthwise_conv"):
        ho = _out_size(cfg["h"], cfg["k"], cfg["stride"], cfg["pad"])
        wo = _out_size(cfg["w"], cfg["k"], cfg["stride"], cfg["pad"])
        return cfg["cout"] * ho * wo * cfg["cin"] // cfg["groups"] * cfg["k"] ** 2
    if kind == "dense":
        return cfg["fin"] * cfg["fout"]
    if kind == "concat":
        return sum(cfg["channels"]) * cfg["h"] * cfg["w"]
    return cfg["c"] * cfg["h"] * cfg["w"]


def _pick(rng: np.random.Generator, values: Sequence[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def _out_size(size: int, k: int, s: int, pad: int) -> int:
    return (size + 2 * pad - k) // s + 1


def _draw_conv(rng: np.random.Generator) -> dict | None:
    cin = int(_pick(rng, (3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)))
    cout = int(_pick(rng, (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)))
    h = int(_pick(rng, (7, 8, 14, 16, 28, 32, 56, 64)))
    w = h if rng.random() < 0.8 else int(_pick(rng, (7, 14, 28, 32, 56)))
    k = int(_pick(rng, (1, 1, 3, 3, 3, 5, 7)))
    s = int(_pick(rng, (1, 1, 2)))
    pad = k // 2 if rng.random() < 0.8 else 0
    groups = int(_pick(rng, (1, 1, 1, 1, 2, 4)))
    if cin % groups or cout % groups or cin == 3 and groups > 1:
        groups = 1
    ho, wo = _out_size(h, k, s, pad), _out_size(w, k, s, pad)
    if ho < 1 or wo < 1:
        return None
    macs = cout * ho * wo * (cin // groups) * k * k
    if not _MIN_CONV_MACS <= macs <= _MAX_CONV_MACS:
        return None
    return {"cin": cin, "cout": cout, "h": h, "w": w, "k": k, "stride": s, "pad": pad,
            "groups": groups, "bias": bool(rng.random() < 0.5),
            "followers": _pick(rng, _CONV_FOLLOWERS)}


def _draw_depthwise(rng: np.random.Generator) -> dict | None:
    c = int(_pick(rng, (16, 24, 32, 48, 64, 96, 144, 192, 240, 288, 384, 576)))
    h = int(_pick(rng, (7, 8, 14, 16, 28, 32, 56, 64)))
    k = int(_pick(rng, (3, 3, 5, 7)))
    s = int(_pick(rng, (1, 1, 2)))
    pad = k // 2
    ho = _out_size(h, k, s, pad)
    if c * h * h > _MAX_ELEMS or c * ho * ho * k * k > _MAX_CONV_MACS:
        return None
    return {"cin": c, "cout": c, "h": h, "w": h, "k": k, "stride": s, "pad": pad, "groups": c,
            "bias": bool(rng.random() < 0.3),
            "followers": _pick(rng, ("", "BN", "BN+Relu", "BN+Clip", "Relu", "BN+HardSwish"))}


def _draw_pool(rng: np.random.Generator) -> dict | None:
    op = _pick(rng, ("MaxPool", "MaxPool", "AveragePool", "AveragePool", "GlobalAveragePool",
                     "GlobalMaxPool"))
    c = int(_pick(rng, (16, 32, 64, 96, 128, 256, 512)))
    h = int(_pick(rng, (7, 8, 14, 16, 28, 32, 56, 64)))
    if c * h * h > _MAX_ELEMS:
        return None
    cfg: dict[str, Any] = {"op": op, "c": c, "h": h, "w": h}
    if op in ("MaxPool", "AveragePool"):
        k = int(_pick(rng, (2, 3, 3, 5)))
        s = int(_pick(rng, (1, 2, 2)))
        pad = int(_pick(rng, (0, k // 2))) if k > 2 else 0
        if _out_size(h, k, s, pad) < 1:
            return None
        cfg.update(k=k, stride=s, pad=pad)
    return cfg


def _draw_dense(rng: np.random.Generator) -> dict | None:
    fin = int(_pick(rng, (64, 128, 256, 512, 784, 1024, 1280, 2048, 4096, 8192)))
    fout = int(_pick(rng, (10, 64, 100, 128, 256, 512, 1000, 1024, 2048, 4096)))
    if fin * fout > _MAX_DENSE_WEIGHTS:
        return None
    return {"fin": fin, "fout": fout, "relu": bool(rng.random() < 0.5)}


def _draw_eltwise_shape(rng: np.random.Generator) -> tuple[int, int] | None:
    c = int(_pick(rng, (8, 16, 32, 64, 96, 128, 256, 512)))
    h = int(_pick(rng, (4, 7, 8, 14, 16, 28, 32, 56, 64, 112)))
    if c * h * h > _MAX_ELEMS:
        return None
    return c, h


def _draw_activation(rng: np.random.Generator) -> dict | None:
    shape = _draw_eltwise_shape(rng)
    return None if shape is None else {"op": _pick(rng, _ACTIVATIONS), "c": shape[0],
                                       "h": shape[1], "w": shape[1]}


def _draw_batchnorm(rng: np.random.Generator) -> dict | None:
    shape = _draw_eltwise_shape(rng)
    return None if shape is None else {"c": shape[0], "h": shape[1], "w": shape[1],
                                       "followers": _pick(rng, ("", "Relu", "Clip"))}


def _draw_add(rng: np.random.Generator) -> dict | None:
    shape = _draw_eltwise_shape(rng)
    return None if shape is None else {"c": shape[0], "h": shape[1], "w": shape[1],
                                       "relu": bool(rng.random() < 0.5)}


def _draw_concat(rng: np.random.Generator) -> dict | None:
    n = int(_pick(rng, (2, 2, 3, 4)))
    h = int(_pick(rng, (7, 8, 14, 16, 28, 32, 56)))
    chans = [int(_pick(rng, (8, 16, 24, 32, 48, 64, 96, 128))) for _ in range(n)]
    if sum(chans) * h * h > _MAX_ELEMS:
        return None
    return {"channels": chans, "h": h, "w": h}


_DRAW: dict[str, Callable[[np.random.Generator], dict | None]] = {
    "conv": _draw_conv, "depthwise_conv": _draw_depthwise, "pool": _draw_pool,
    "dense": _draw_dense, "activation": _draw_activation, "batchnorm": _draw_batchnorm,
    "add": _draw_add, "concat": _draw_concat,
}


# ---- models -----------------------------------------------------------------------------------
def config_name(cfg: dict[str, Any]) -> str:
    """A short, unique, readable name of a configuration (the model's graph name)."""
    parts = [f"sweep_{cfg['kind']}"]
    for key in sorted(k for k in cfg if k != "kind"):
        v = cfg[key]
        if isinstance(v, bool):
            v = int(v)
        elif isinstance(v, (list, tuple)):
            v = "-".join(str(x) for x in v)
        parts.append(f"{key}{v}" if v != "" else f"{key}none")
    return "_".join(parts).replace("+", "-")


class _LayerBuilder(GraphBuilder):
    """The shared builder plus the followers a sweep layer can carry (BN, activations)."""

    def act(self, op: str, x: str, name: str | None = None) -> str:
        name = name or op.lower()
        if op == "Clip":
            return self.clip(name, x, bounds="clip")  # ReLU6
        return self.node(op, name, [x])

    def followers(self, x: str, c: int, spec: str) -> str:
        for part in [p for p in spec.split("+") if p]:
            x = self.bn("bn", x, c) if part == "BN" else self.act(part, x)
        return x


def make_model(cfg: dict[str, Any], seed: int = 0) -> onnx.ModelProto:
    """The single-layer ONNX model of one configuration (from ``sweep_configs``)."""
    kind = cfg.get("kind")
    g = _LayerBuilder(seed)
    if kind in ("conv", "depthwise_conv"):
        cin, cout, k, grp = cfg["cin"], cfg["cout"], cfg["k"], cfg["groups"]
        ins = [("x", (1, cin, cfg["h"], cfg["w"]))]
        args = ["x", g.he_weight("layer.weight", (cout, cin // grp, k, k), cin // grp * k * k)]
        if cfg["bias"]:
            args.append(g.const("layer.bias", 0.01 * g.rng.standard_normal(cout)))
        y = g.node("Conv", "layer", args, kernel_shape=[k, k], strides=[cfg["stride"]] * 2,
                   pads=[cfg["pad"]] * 4, group=grp)
        g.followers(y, cout, cfg["followers"])
    elif kind == "pool":
        ins = [("x", (1, cfg["c"], cfg["h"], cfg["w"]))]
        if cfg["op"].startswith("Global"):
            g.node(cfg["op"], "layer", ["x"])
        else:
            attrs = {"kernel_shape": [cfg["k"]] * 2, "strides": [cfg["stride"]] * 2,
                     "pads": [cfg["pad"]] * 4}
            if cfg["op"] == "AveragePool":
                attrs["count_include_pad"] = 0
            g.node(cfg["op"], "layer", ["x"], **attrs)
    elif kind == "dense":
        ins = [("x", (1, cfg["fin"]))]
        y = g.node("Gemm", "layer", ["x", g.he_weight("layer.weight", (cfg["fout"], cfg["fin"]), cfg["fin"]),
                                     g.const("layer.bias", 0.01 * g.rng.standard_normal(cfg["fout"]))],
                   transB=1)
        if cfg["relu"]:
            g.act("Relu", y)
    elif kind == "activation":
        ins = [("x", (1, cfg["c"], cfg["h"], cfg["w"]))]
        g.act(cfg["op"], "x", name="layer")
    elif kind == "batchnorm":
        ins = [("x", (1, cfg["c"], cfg["h"], cfg["w"]))]
        g.followers(g.bn("bn", "x", cfg["c"]), cfg["c"], cfg["followers"])
    elif kind == "add":
        shape = (1, cfg["c"], cfg["h"], cfg["w"])
        ins = [("x", shape), ("skip", shape)]
        y = g.node("Add", "layer", ["x", "skip"])
        if cfg["relu"]:
            g.act("Relu", y)
    elif kind == "concat":
        ins = [(f"x{i}", (1, c, cfg["h"], cfg["w"])) for i, c in enumerate(cfg["channels"])]
        g.node("Concat", "layer", [name for name, _ in ins], axis=1)
    else:
        raise SweepError(f"unknown sweep kind {kind!r}; known: {', '.join(KINDS)}")
    model = g.finish(config_name(cfg), ins, ("y", None), producer="tvmsplit.sweep")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = model.graph.output[0]
    for vi in model.graph.value_info:
        if vi.name == "y":
            out.CopyFrom(vi)
    del model.graph.value_info[:]
    model.doc_string = json.dumps(cfg, sort_keys=True)
    return model


def sweep_models(kind: str, count: int, seed: int = 0) -> list[onnx.ModelProto]:
    """``count`` single-layer models of layer ``kind`` (one of ``KINDS``), seeded and distinct."""
    return [make_model(cfg, seed=seed * 100_003 + i) for i, cfg in enumerate(sweep_configs(kind, count, seed))]


def sweep_all(count: int | dict[str, int], seed: int = 0,
              kinds: Iterable[str] = KINDS) -> list[onnx.ModelProto]:
    """Models of every kind: ``count`` per kind, or a {kind: count} mapping."""
    counts = count if isinstance(count, dict) else {k: count for k in kinds}
    return [m for kind, n in counts.items() for m in sweep_models(kind, n, seed)]
