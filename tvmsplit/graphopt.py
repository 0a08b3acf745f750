"""Graph-level optimisation of a stage's Relax module before it is lowered: one place, so tuning
(which extracts its tasks from the lowered module) and every build see the same kernels.

Passes, in order (``GRAPH_PASSES``; each measured in BENCHMARKS.md):
- ``fold_batchnorm``: ``FoldBatchnormToConv2D`` + ``FoldConstant``. TVM's ONNX importer emits
  ``nn.batch_norm`` with a tuple result (out, mean, var), which operator fusion cannot fuse into
  the convolution before it: each BN became its own kernel and each Conv an unfused one. Folded,
  the scale goes into the weights and the shift becomes a bias add that fuses with the conv and
  its activation (zoo ResNet: 18 -> 13 kernels, every conv ``fused_conv2d_add_relu``).
- Fusion of conv/dense + bias + activation is then done by Relax's own ``FuseOps``/``FuseTIR`` in
  the "zero" pipeline (``lower``).

To add a pass: append it to ``GRAPH_PASSES`` with a name, bump ``compile.CACHE_FORMAT`` (the
cache key must change with the code that builds) and measure it in bench/bench_tune.py.
"""
from __future__ import annotations

GRAPH_PASSES = ("fold_batchnorm",)


def optimize(mod, passes=GRAPH_PASSES):
    """``mod`` with the named graph-level passes applied (before lowering)."""
    from tvm import relax

    unknown = [p for p in passes if p not in GRAPH_PASSES]
    if unknown:
        raise ValueError(f"unknown graph pass(es) {unknown}; known: {', '.join(GRAPH_PASSES)}")
    if "fold_batchnorm" in passes:
        mod = relax.transform.FoldBatchnormToConv2D()(mod)
        mod = relax.transform.FoldConstant()(mod)
    return mod


def lower(mod, target):
    """Legalize and fuse (Relax's "zero" pipeline): the module whose PrimFuncs are the tuning
    tasks and what a tuning database is applied to."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(mod)
