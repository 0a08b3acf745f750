"""A zoo of small-to-realistic CNNs built in code, for tests and benchmarks.

Every model is generated with :mod:`onnx.helper` from seeded random weights, so nothing is
downloaded and the same ``(name, input_size, width, num_classes, seed)`` always gives a
byte-identical model. The models are:

``chain``        a plain chain CNN: 5 conv+relu, 3 maxpools, Flatten, Gemm+Relu, Gemm.
``resnet``       ResNet-style: stem conv/bn/relu, 4 basic blocks (two with a strided 1x1
                 projection on the skip path), GlobalAveragePool, Flatten, Gemm.
``inception``    stem conv+pool, 2 Inception modules (1x1 | 1x1->3x3 | 1x1->5x5 |
                 maxpool->1x1, joined by Concat), GlobalAveragePool, Flatten, Gemm.
``vgg16``        VGG16: 13 conv3x3+relu in 5 groups, 5 maxpools, 3 fully connected layers.
                 The default (224x224, 1000 classes) has ~138 M parameters (~550 MB).
``mobilenetv2``  MobileNetV2-shaped: stem conv s2, 8 inverted residual blocks (expand 1x1,
                 depthwise 3x3, project 1x1; residual Add where shapes allow), final 1x1 conv,
                 GlobalAveragePool, Flatten, Gemm. ReLU6 is ``Clip(x, 0, 6)``.
``lstm``         CRNN-shaped: 2 strided conv+relu, ReduceMean over height, the width as the
                 time axis (S/4 steps) into a bidirectional LSTM, ReduceMean merging the two
                 directions, a forward LSTM, ReduceMean over time, Gemm.
``gru``          the same with GRUs (the second with ``linear_before_reset=1``, as PyTorch
                 exports it).
``vit``          ViT-style encoder: patch embedding (Conv k=stride=4), class token (Concat),
                 position embedding, 2 pre-LayerNorm blocks (multi-head attention:
                 MatMul + bias, Reshape, Transpose, scaled ``Q K^T``, Softmax, ``P V``; MLP with
                 Erf-form GELU; residual Adds), final LayerNormalization, class token (Gather),
                 Gemm head. ``S/4`` squared patches + 1 tokens, dim 64 x ``width``, 4 heads.
``bert``         BERT-style encoder over ``S`` tokens: int64 ``input_ids`` [1, S] (Gather from a
                 1000-word embedding) and int64 ``attention_mask`` [1, S] (Cast, ``(1 - m) *
                 -10000`` added to every head's scores), position embedding, LayerNormalization,
                 2 post-LayerNorm blocks (attention as ``vit``; GELU MLP), pooler (first token,
                 Gemm + Tanh), Gemm classifier.

Conventions, shared by all models:

* one input ``"input"``: float32 ``[1, 3, S, S]`` (``bert``: int64 ``input_ids`` and
  ``attention_mask``, ``[1, S]``; see ``default_shapes``); one output ``"output"``: float32
  ``[1, num_classes]``; all dims static; opset 17, IR version 8.
* every node has a unique, meaningful name (``conv1``, ``bn1``, ``relu1``, ``pool1``,
  ``block2_conv1``, ``block2_add``, ``inc1_branch3x3_conv``, ``flatten``, ``fc1`` ...), and the
  tensor a node produces carries the node's name (the last one is renamed ``"output"``), so a
  split point can be given as a node name. Weights are initializers ``<node>.weight``,
  ``<node>.bias`` (BatchNormalization: ``.scale``, ``.bias``, ``.mean``, ``.var``).
* weights are He-scaled (uniform with std = sqrt(2 / fan_in)), biases small, BatchNormalization close to
  identity, so activations stay O(1) even in deep nets and numerical comparisons are meaningful.
* ``width`` multiplies every channel count (rounded, at least 1); small variants such as
  ``make("vgg16", input_size=32, width=0.125)`` build and run in milliseconds.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from tvmsplit.errors import TvmsplitError
from tvmsplit.onnxbuild import IR_VERSION, OPSET, GraphBuilder

__all__ = ["IR_VERSION", "MODELS", "OPSET", "default_shapes", "make", "names", "save"]


class _Builder(GraphBuilder):
    """The zoo's layer shapes on top of the shared builder: each adds one node, returns its output."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.int_inits: list[tuple[str, np.ndarray]] = []  # shapes, indices: added by ``make``

    def ints(self, name: str, values) -> str:
        """An int64 initializer ``name`` (a Reshape target, a Gather index); returns ``name``."""
        self.int_inits.append((name, np.asarray(values, dtype=np.int64)))
        return name

    def linear(self, name: str, x: str, fin: int, fout: int) -> str:
        """``x @ W + b`` on [..., fin] (MatMul ``<name>`` + Add ``<name>_bias``), W [fin, fout]."""
        y = self.node("MatMul", name, [x, self.he_weight(f"{name}.weight", (fin, fout), fin)])
        return self.node("Add", f"{name}_bias", [y, self.uniform(f"{name}.bias", (fout,), 0.01)])

    def layernorm(self, name: str, x: str, c: int) -> str:
        """LayerNormalization over the last axis, scale close to 1 (``<name>.scale/.bias``)."""
        scale = self.const(f"{name}.scale", 1.0 + 0.1 * self.rng.standard_normal(c))
        bias = self.const(f"{name}.bias", 0.05 * self.rng.standard_normal(c))
        return self.node("LayerNormalization", name, [x, scale, bias], axis=-1, epsilon=1e-5)

    def gelu(self, name: str, x: str) -> str:
        """GELU in the Erf form torch.onnx exports: ``x * 0.5 * (1 + erf(x / sqrt(2)))``."""
        if "gelu.sqrt2" not in self._bounds:  # the three scalars, shared by every GELU
            self._bounds.add("gelu.sqrt2")
            for k, v in (("sqrt2", math.sqrt(2.0)), ("one", 1.0), ("half", 0.5)):
                self.const(f"gelu.{k}", np.array(v))
        t = self.node("Div", f"{name}_div", [x, "gelu.sqrt2"])
        t = self.node("Erf", f"{name}_erf", [t])
        t = self.node("Add", f"{name}_add", [t, "gelu.one"])
        t = self.node("Mul", f"{name}_mul", [x, t])
        return self.node("Mul", name, [t, "gelu.half"])

    def conv(self, name: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
             group: int = 1, bias: bool = True, pad: int | None = None) -> str:
        inputs = [x, self.he_weight(f"{name}.weight", (cout, cin // group, k, k), cin // group * k * k)]
        if bias:
            inputs.append(self.uniform(f"{name}.bias", (cout,), 0.01))
        return self.node("Conv", name, inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2 if pad is None else pad] * 4, group=group)

    def relu6(self, name: str, x: str) -> str:
        return self.clip(name, x, bounds="relu6")  # one pair of scalar bounds for the whole net

    def maxpool(self, name: str, x: str, k: int = 2, stride: int = 2, pad: int = 0) -> str:
        return self.node("MaxPool", name, [x], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def add(self, name: str, a: str, b: str) -> str:
        return self.node("Add", name, [a, b])

    def concat(self, name: str, xs: list[str]) -> str:
        return self.node("Concat", name, xs, axis=1)

    def gap(self, name: str, x: str) -> str:
        return self.node("GlobalAveragePool", name, [x])

    def flatten(self, name: str, x: str) -> str:
        return self.node("Flatten", name, [x], axis=1)



def _ch(c: int, width: float) -> int:
    """Channel count ``c`` scaled by ``width``, rounded, at least 1."""
    return max(1, int(round(c * width)))


# ---------------------------------------------------------------------------------------------
# Models. Each builder gets (builder, input_size, width, num_classes) and adds all nodes.

@dataclass(frozen=True)
class _Spec:
    input_size: int       # default input size S
    num_classes: int      # default number of classes
    min_input: int        # smallest S (total downsampling of the net)
    multiple_of: int = 1  # S must be a multiple of this
    tokens: bool = False  # inputs are int64 input_ids + attention_mask [1, S], not an image


MODELS: dict[str, Callable[[_Builder, int, float, int], None]] = {}
_SPECS: dict[str, _Spec] = {}


def _model(name: str, **spec):
    def register(fn):
        MODELS[name] = fn
        _SPECS[name] = _Spec(**spec)
        return fn
    return register


@_model("chain", input_size=32, num_classes=10, min_input=8)
def _chain(g: _Builder, s: int, width: float, num_classes: int) -> None:
    c1, c2, c3, hidden = _ch(32, width), _ch(64, width), _ch(128, width), _ch(256, width)
    x = g.relu("relu1", g.conv("conv1", "input", 3, c1))
    x = g.relu("relu2", g.conv("conv2", x, c1, c1))
    x = g.maxpool("pool1", x)
    x = g.relu("relu3", g.conv("conv3", x, c1, c2))
    x = g.relu("relu4", g.conv("conv4", x, c2, c2))
    x = g.maxpool("pool2", x)
    x = g.relu("relu5", g.conv("conv5", x, c2, c3))
    x = g.maxpool("pool3", x)
    x = g.flatten("flatten", x)
    x = g.relu("relu_fc1", g.gemm("fc1", x, c3 * (s // 8) ** 2, hidden))
    g.gemm("fc2", x, hidden, num_classes)


@_model("resnet", input_size=32, num_classes=10, min_input=4)
def _resnet(g: _Builder, s: int, width: float, num_classes: int) -> None:
    c0 = _ch(32, width)
    x = g.relu("relu1", g.bn("bn1", g.conv("conv1", "input", 3, c0, bias=False), c0))
    cin = c0
    for i, (cout, stride) in enumerate([(c0, 1), (_ch(64, width), 2), (_ch(128, width), 2),
                                        (_ch(128, width), 1)], start=1):
        p = f"block{i}"
        y = g.conv(f"{p}_conv1", x, cin, cout, stride=stride, bias=False)
        y = g.relu(f"{p}_relu1", g.bn(f"{p}_bn1", y, cout))
        y = g.bn(f"{p}_bn2", g.conv(f"{p}_conv2", y, cout, cout, bias=False), cout)
        skip = x
        if stride != 1 or cin != cout:
            skip = g.conv(f"{p}_proj_conv", x, cin, cout, k=1, stride=stride, bias=False)
            skip = g.bn(f"{p}_proj_bn", skip, cout)
        x = g.relu(f"{p}_relu", g.add(f"{p}_add", y, skip))
        cin = cout
    x = g.flatten("flatten", g.gap("gap", x))
    g.gemm("fc", x, cin, num_classes)


def _inception_module(g: _Builder, p: str, x: str, cin: int,
                      c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> tuple[str, int]:
    """Four parallel branches concatenated on channels; returns (output, channels)."""
    def conv_relu(name: str, t: str, ci: int, co: int, k: int) -> str:
        return g.relu(f"{name}_relu", g.conv(f"{name}_conv", t, ci, co, k=k))

    b1 = conv_relu(f"{p}_branch1x1", x, cin, c1, 1)
    b3 = conv_relu(f"{p}_branch3x3", conv_relu(f"{p}_branch3x3_reduce", x, cin, c3r, 1),
                   c3r, c3, 3)
    b5 = conv_relu(f"{p}_branch5x5", conv_relu(f"{p}_branch5x5_reduce", x, cin, c5r, 1),
                   c5r, c5, 5)
    bp = g.maxpool(f"{p}_branchpool_pool", x, k=3, stride=1, pad=1)
    bp = conv_relu(f"{p}_branchpool", bp, cin, cp, 1)
    return g.concat(f"{p}_concat", [b1, b3, b5, bp]), c1 + c3 + c5 + cp


@_model("inception", input_size=32, num_classes=10, min_input=2)
def _inception(g: _Builder, s: int, width: float, num_classes: int) -> None:
    w = lambda c: _ch(c, width)  # noqa: E731
    c0 = w(64)
    x = g.relu("relu1", g.conv("conv1", "input", 3, c0))
    x = g.maxpool("pool1", x, k=3, stride=2, pad=1)
    x, c = _inception_module(g, "inc1", x, c0, w(32), w(48), w(64), w(8), w(16), w(16))
    x, c = _inception_module(g, "inc2", x, c, w(64), w(64), w(96), w(16), w(32), w(32))
    x = g.flatten("flatten", g.gap("gap", x))
    g.gemm("fc", x, c, num_classes)


@_model("vgg16", input_size=224, num_classes=1000, min_input=32, multiple_of=32)
def _vgg16(g: _Builder, s: int, width: float, num_classes: int) -> None:
    x, cin = "input", 3
    for i, (c, n) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        cout = _ch(c, width)
        for j in range(1, n + 1):
            x = g.relu(f"relu{i}_{j}", g.conv(f"conv{i}_{j}", x, cin, cout))
            cin = cout
        x = g.maxpool(f"pool{i}", x)
    hidden = _ch(4096, width)
    x = g.flatten("flatten", x)
    x = g.relu("relu_fc1", g.gemm("fc1", x, cin * (s // 32) ** 2, hidden))
    x = g.relu("relu_fc2", g.gemm("fc2", x, hidden, hidden))
    g.gemm("fc3", x, hidden, num_classes)


# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper
# but shortened to 8 blocks.
_MBV2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2)]


@_model("mobilenetv2", input_size=96, num_classes=10, min_input=16)
def _mobilenetv2(g: _Builder, s: int, width: float, num_classes: int) -> None:
    cin = _ch(32, width)
    x = g.conv("conv1", "input", 3, cin, stride=2, bias=False)
    x = g.relu6("relu6_1", g.bn("bn1", x, cin))
    i = 0
    for t, c, n, first_stride in _MBV2_BLOCKS:
        cout = _ch(c, width)
        for r in range(n):
            i += 1
            p, stride, hid = f"block{i}", (first_stride if r == 0 else 1), cin * t
            y = x
            if t != 1:
                y = g.conv(f"{p}_expand_conv", y, cin, hid, k=1, bias=False)
                y = g.relu6(f"{p}_expand_relu6", g.bn(f"{p}_expand_bn", y, hid))
            y = g.conv(f"{p}_dw_conv", y, hid, hid, stride=stride, group=hid, bias=False)
            y = g.relu6(f"{p}_dw_relu6", g.bn(f"{p}_dw_bn", y, hid))
            y = g.conv(f"{p}_project_conv", y, hid, cout, k=1, bias=False)
            y = g.bn(f"{p}_project_bn", y, cout)
            x = g.add(f"{p}_add", y, x) if stride == 1 and cin == cout else y
            cin = cout
    clast = _ch(1280, width)
    x = g.conv("conv_last", x, cin, clast, k=1, bias=False)
    x = g.relu6("relu6_last", g.bn("bn_last", x, clast))
    x = g.flatten("flatten", g.gap("gap", x))
    g.gemm("fc", x, clast, num_classes)


def _recurrent(op: str, g: _Builder, s: int, width: float, num_classes: int, **second) -> None:
    c1, c2, hidden = _ch(16, width), _ch(32, width), _ch(32, width)
    name = op.lower()
    x = g.relu("relu1", g.conv("conv1", "input", 3, c1, stride=2))
    x = g.relu("relu2", g.conv("conv2", x, c1, c2, stride=2))                 # [1, c2, S/4, S/4]
    x = g.node("ReduceMean", "pool_h", [x], axes=[2], keepdims=0)             # [1, c2, S/4]
    x = g.node("Transpose", "to_seq", [x], perm=[2, 0, 1])                   # [T, 1, c2]
    x = g.recurrent(op, f"{name}1", x, c2, hidden, direction="bidirectional")  # [T, 2, 1, H]
    x = g.node("ReduceMean", "merge", [x], axes=[1], keepdims=0)              # [T, 1, H]
    x = g.recurrent(op, f"{name}2", x, hidden, hidden, **second)             # [T, 1, 1, H]
    x = g.node("ReduceMean", "pool_t", [x], axes=[0, 1], keepdims=0)          # [1, H]
    g.gemm("fc", x, hidden, num_classes)


@_model("lstm", input_size=32, num_classes=10, min_input=4, multiple_of=4)
def _lstm(g: _Builder, s: int, width: float, num_classes: int) -> None:
    _recurrent("LSTM", g, s, width, num_classes)


@_model("gru", input_size=32, num_classes=10, min_input=4, multiple_of=4)
def _gru(g: _Builder, s: int, width: float, num_classes: int) -> None:
    _recurrent("GRU", g, s, width, num_classes, linear_before_reset=1)


# ---------------------------------------------------------------------------------------------
# Transformers. Tensors are [1, tokens, dim]; weights ``<node>.weight`` [in, out] for MatMul.

_VOCAB = 1000      # bert's word embedding rows
_HEADS = 4


def _attention(g: _Builder, p: str, x: str, tokens: int, dim: int, mask: str | None = None) -> str:
    """Multi-head self-attention as exporters write it: per Q/K/V a MatMul + bias Add, Reshape to
    heads and Transpose; ``Q K^T`` scaled by 1/sqrt(head dim), (+ mask), Softmax, ``P V``,
    Transpose + Reshape back, output projection."""
    heads = _HEADS if dim % _HEADS == 0 else 1
    hd = dim // heads
    split = g.ints(f"{p}.heads_shape", [1, tokens, heads, hd])

    def project(what: str, perm: list[int]) -> str:
        t = g.linear(f"{p}_{what}", x, dim, dim)
        t = g.node("Reshape", f"{p}_{what}_reshape", [t, split])
        return g.node("Transpose", f"{p}_{what}_transpose", [t], perm=perm)

    q = project("q", [0, 2, 1, 3])                                    # [1, h, T, d]
    k = project("k", [0, 2, 3, 1])                                    # [1, h, d, T]
    v = project("v", [0, 2, 1, 3])                                    # [1, h, T, d]
    scores = g.node("MatMul", f"{p}_scores", [q, k])                  # [1, h, T, T]
    scores = g.node("Mul", f"{p}_scale", [scores, g.const(f"{p}_scale.value",
                                                           np.array(1.0 / math.sqrt(hd)))])
    if mask is not None:
        scores = g.node("Add", f"{p}_mask", [scores, mask])
    probs = g.node("Softmax", f"{p}_softmax", [scores], axis=-1)
    ctx = g.node("MatMul", f"{p}_context", [probs, v])                # [1, h, T, d]
    ctx = g.node("Transpose", f"{p}_context_transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", f"{p}_context_reshape", [ctx, g.ints(f"{p}.merge_shape",
                                                                 [1, tokens, dim])])
    return g.linear(f"{p}_proj", ctx, dim, dim)


def _mlp(g: _Builder, p: str, x: str, dim: int, hidden: int) -> str:
    """Linear -> GELU (Erf form, as torch.onnx exports ``nn.GELU``) -> Linear."""
    h = g.linear(f"{p}_fc1", x, dim, hidden)
    return g.linear(f"{p}_fc2", g.gelu(f"{p}_gelu", h), hidden, dim)


@_model("vit", input_size=32, num_classes=10, min_input=4, multiple_of=4)
def _vit(g: _Builder, s: int, width: float, num_classes: int) -> None:
    dim, patch, depth = _ch(64, width), 4, 2
    dim = max(_HEADS, dim - dim % _HEADS)
    tokens = (s // patch) ** 2 + 1
    x = g.conv("patch_embed", "input", 3, dim, k=patch, stride=patch, pad=0)     # [1, C, s/4, s/4]
    x = g.node("Reshape", "patch_flatten", [x, g.ints("patch_flatten.shape", [1, dim, -1])])
    x = g.node("Transpose", "patch_transpose", [x], perm=[0, 2, 1])              # [1, N, C]
    cls = g.uniform("cls_token.value", (1, 1, dim), 0.02)
    x = g.node("Concat", "cls_token", [cls, x], axis=1)                          # [1, N + 1, C]
    x = g.node("Add", "pos_embed", [x, g.uniform("pos_embed.value", (1, tokens, dim), 0.02)])
    for i in range(1, depth + 1):
        p = f"block{i}"
        a = _attention(g, f"{p}_attn", g.layernorm(f"{p}_ln1", x, dim), tokens, dim)
        x = g.add(f"{p}_add1", x, a)
        m = _mlp(g, f"{p}_mlp", g.layernorm(f"{p}_ln2", x, dim), dim, 2 * dim)
        x = g.add(f"{p}_add2", x, m)
    x = g.layernorm("ln_final", x, dim)
    x = g.node("Gather", "cls_select", [x, g.ints("cls_select.index", 0)], axis=1)  # [1, C]
    g.gemm("head", x, dim, num_classes)


@_model("bert", input_size=16, num_classes=2, min_input=1, tokens=True)
def _bert(g: _Builder, s: int, width: float, num_classes: int) -> None:
    dim, depth = _ch(64, width), 2
    dim = max(_HEADS, dim - dim % _HEADS)
    x = g.node("Gather", "word_embed", [g.uniform("word_embed.weight", (_VOCAB, dim), 1.0),
                                        "input_ids"], axis=0)                     # [1, S, C]
    x = g.node("Add", "pos_embed", [x, g.uniform("pos_embed.value", (1, s, dim), 0.1)])
    x = g.layernorm("embed_ln", x, dim)
    m = g.node("Cast", "mask_cast", ["attention_mask"], to=onnx.TensorProto.FLOAT)
    m = g.node("Sub", "mask_invert", [g.const("mask_invert.one", np.array(1.0)), m])
    m = g.node("Mul", "mask_scale", [m, g.const("mask_scale.value", np.array(-10000.0))])
    mask = g.node("Reshape", "mask_reshape", [m, g.ints("mask_reshape.shape", [1, 1, 1, s])])
    for i in range(1, depth + 1):
        p = f"layer{i}"
        x = g.layernorm(f"{p}_ln1", g.add(f"{p}_add1", x, _attention(g, f"{p}_attn", x, s, dim,
                                                                      mask)), dim)
        x = g.layernorm(f"{p}_ln2", g.add(f"{p}_add2", x, _mlp(g, f"{p}_mlp", x, dim, 4 * dim)),
                        dim)
    x = g.node("Gather", "pooler_select", [x, g.ints("pooler_select.index", 0)], axis=1)  # [1, C]
    x = g.node("Tanh", "pooler_tanh", [g.gemm("pooler", x, dim, dim)])
    g.gemm("classifier", x, dim, num_classes)


# ---------------------------------------------------------------------------------------------
# Public API.

def names() -> list[str]:
    """Names of all models in the zoo, in registration order."""
    return list(MODELS)


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise TvmsplitError(f"unknown zoo model {name!r}; available models: {', '.join(names())}")
    return _SPECS[name]


def _input_size(name: str, input_size: int | None) -> int:
    spec = _spec(name)
    if input_size is None:
        return spec.input_size
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)):
        raise TvmsplitError(f"input_size for {name!r} must be an integer, got {input_size!r}")
    if input_size < spec.min_input:
        raise TvmsplitError(f"input_size {input_size} is too small for {name!r}: its minimum is "
                            f"{spec.min_input} (the network downsamples by {spec.min_input})")
    if input_size % spec.multiple_of:
        raise TvmsplitError(f"input_size {input_size} for {name!r} must be a multiple of "
                            f"{spec.multiple_of} (minimum {spec.min_input}), e.g. "
                            f"{max(spec.min_input, input_size // spec.multiple_of * spec.multiple_of)}")
    return int(input_size)


def default_shapes(name: str, input_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Input shapes of model ``name``: ``{"input": (1, 3, S, S)}``; for a token model (``bert``)
    ``{"input_ids": (1, S), "attention_mask": (1, S)}`` (both int64)."""
    s = _input_size(name, input_size)
    if _spec(name).tokens:
        return {"input_ids": (1, s), "attention_mask": (1, s)}
    return {"input": (1, 3, s, s)}


def make(name: str, *, input_size: int | None = None, width: float = 1.0,
         num_classes: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """Build zoo model ``name`` with random weights drawn from ``numpy.random.default_rng(seed)``.

    ``input_size`` (S of the ``[1, 3, S, S]`` input) and ``num_classes`` default to the model's
    realistic size; ``width`` multiplies all channel counts (e.g. 0.125 for a tiny variant).
    """
    spec = _spec(name)
    s = _input_size(name, input_size)
    if (isinstance(width, bool) or not isinstance(width, (int, float, np.floating, np.integer))
            or not math.isfinite(width) or width <= 0):
        raise TvmsplitError(f"width must be a finite number > 0 (minimum: any positive value, "
                            f"e.g. 0.125), got {width!r}")
    if num_classes is None:
        num_classes = spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise TvmsplitError(f"num_classes must be an integer >= 1 (minimum 1), got {num_classes!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TvmsplitError(f"seed must be a non-negative integer, got {seed!r}")
    g = _Builder(int(seed))
    MODELS[name](g, s, float(width), int(num_classes))
    model = g.finish(name, list(default_shapes(name, s).items()),
                     ("output", (1, int(num_classes))), producer="tvmsplit.zoo")
    for vi in model.graph.input if spec.tokens else ():
        vi.type.tensor_type.elem_type = onnx.TensorProto.INT64
    for init_name, value in g.int_inits:
        model.graph.initializer.append(numpy_helper.from_array(value, init_name))
    model.doc_string = f"tvmsplit zoo model {name!r} (random weights)"
    return model


def save(name: str, path: str | os.PathLike, **kwargs) -> Path:
    """Build model ``name`` (``kwargs`` as for :func:`make`) and write it atomically to ``path``.

    The model is written to a temporary file in the same directory and renamed into place, so
    ``path`` never holds a half-written model. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    model = make(name, **kwargs)
    path = Path(path)
    if not path.parent.is_dir():
        raise TvmsplitError(f"cannot save zoo model to {str(path)!r}: directory "
                            f"{str(path.parent)!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a model file is not
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
