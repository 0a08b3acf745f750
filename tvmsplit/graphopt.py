"""Graph-level optimisation of a stage's Relax module before it is lowered: one place, so tuning
(which extracts its tasks from the lowered module) and every build see the same kernels.

Passes, in order (``GRAPH_PASSES``; each measured in BENCHMARKS.md):
- ``fold_batchnorm``: ``FoldBatchnormToConv2D`` + ``FoldConstant``. TVM's ONNX importer emits
  ``nn.batch_norm`` with a tuple result (out, mean, var), which operator fusion cannot fuse into
  the convolution before it: each BN became its own kernel and each Conv an unfused one. Folded,
  the scale goes into the weights and the shift becomes a bias add that fuses with the conv and
  its activation (zoo ResNet: 18 -> 13 kernels, every conv ``fused_conv2d_add_relu``).
- ``convert_layout``: the convolutions' data layout (``CONV_LAYOUTS``; the target file's
  ``[build] conv_layout``, default ``NCHW``: nothing changes). ``ConvertLayout`` rewrites each
  conv2d and the layout-aware ops around it; the weights are transformed once (``FoldConstant``)
  and the function's parameters and results keep the model's NCHW (a stage's edges, what the wire
  carries), so one transform lands at each end of a stage and fuses with its neighbour where it
  can. Before it, the importer's Clip (``call_tir`` of TOPI ``maximum``/``minimum`` with a scalar:
  opaque to ``ConvertLayout``, which wrapped every ReLU6/hardswish in two transposes) becomes
  ``R.maximum``/``R.minimum``. Blocked layouts (``NCHW8c``/``NCHW16c``) are legalised by ``lower``
  with TOPI's ``conv2d_NCHWc`` (Relax 0.27 refuses to legalise a conv2d whose layout has a channel
  block: ``legalize_ops/nn.py``); ``ConvertLayout`` leaves depthwise convs (one input channel per
  group cannot be blocked) in NCHW, between two transforms. Measured tuned (BENCHMARKS.md
  "Tuning", 200 trials): NHWC 1.8x slower than NCHW on zoo resnet, NCHW16c 8 % faster there and
  10 % slower on PP-LCNet (depthwise separable), so NCHW stays the default.
- Fusion of conv/dense + bias + activation is then done by Relax's own ``FuseOps``/``FuseTIR`` in
  ``lower`` (the "zero" pipeline).

To add a pass: append it to ``GRAPH_PASSES`` with a name, bump ``compile.CACHE_FORMAT`` (the
cache key must change with the code that builds) and measure it in bench/bench_tune.py.
"""
from __future__ import annotations

GRAPH_PASSES = ("fold_batchnorm", "convert_layout")

# conv2d data layout -> (data, kernel) layouts for ConvertLayout; "NCHW" converts nothing.
CONV_LAYOUTS = {
    "NCHW": None,
    "NHWC": ("NHWC", "OHWI"),
    "NCHW8c": ("NCHW8c", "OIHW8i8o"),
    "NCHW16c": ("NCHW16c", "OIHW16i16o"),
}
DEFAULT_CONV_LAYOUT = "NCHW"


def check_conv_layout(layout: str) -> str:
    """``layout`` when it is one of ``CONV_LAYOUTS``, else ValueError naming the choices."""
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"unknown conv layout {layout!r}; known: {', '.join(CONV_LAYOUTS)}")
    return layout


def optimize(mod, passes=GRAPH_PASSES, conv_layout: str = DEFAULT_CONV_LAYOUT):
    """``mod`` with the named graph-level passes applied (before lowering)."""
    from tvm import relax

    unknown = [p for p in passes if p not in GRAPH_PASSES]
    if unknown:
        raise ValueError(f"unknown graph pass(es) {unknown}; known: {', '.join(GRAPH_PASSES)}")
    if "fold_batchnorm" in passes:
        mod = relax.transform.FoldBatchnormToConv2D()(mod)
        mod = relax.transform.FoldConstant()(mod)
    if "convert_layout" in passes and CONV_LAYOUTS[check_conv_layout(conv_layout)] is not None:
        mod = convert_layout(mod, conv_layout)
    return mod


def convert_layout(mod, conv_layout: str):
    """``mod``'s convolutions in ``conv_layout`` (a key of ``CONV_LAYOUTS``), weights folded."""
    from tvm import relax

    data, kernel = CONV_LAYOUTS[check_conv_layout(conv_layout)]
    mod = _clip_as_ops(mod)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [data, kernel]})(mod)
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.DeadCodeElimination()(mod)


def _clip_as_ops(mod):
    """The importer's ``call_tir(maximum|minimum, (x, scalar))`` (ONNX Clip) and ``R.clip(x, lo,
    hi)`` (HardSigmoid, HardSwish) as ``R.maximum``/``R.minimum`` with scalar constants, which
    ``ConvertLayout`` carries through in any layout (it has no rule for ``clip``)."""
    import tvm
    from tvm import relax, s_tir, tirx

    call_tir, clip = tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.clip")
    ops = {"T_maximum": relax.op.maximum, "T_minimum": relax.op.minimum}

    def scalar_op(func):
        if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
            return None
        sch = s_tir.Schedule(func)
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        return ops[names[0]] if len(names) == 1 and names[0] in ops else None

    @relax.expr_functor.mutator
    class ClipAsOps(relax.PyExprMutator):
        def visit_call_(self, op):
            op = self.visit_expr_post_order(op)
            bounds = [getattr(a, "value", None) for a in op.args[1:]]
            if op.op == clip and all(isinstance(b, int | float) for b in bounds):
                dtype = str(op.ty.dtype)
                lo, hi = (relax.const(b, dtype) for b in bounds)
                return relax.op.minimum(relax.op.maximum(op.args[0], lo), hi)
            if op.op != call_tir or not isinstance(op.args[0], relax.GlobalVar):
                return op
            make = scalar_op(mod[op.args[0]])
            args = op.args[1].fields if isinstance(op.args[1], relax.Tuple) else None
            if make is None or args is None or len(args) != 2 or args[1].ty.ndim != 0 or \
                    args[0].ty.ndim < 1 or str(args[0].ty.dtype) != str(op.ty.dtype):
                return op
            return make(args[0], args[1])

    funcs = {gv: ClipAsOps(mod).visit_expr(f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)  # the PrimFuncs left unused: convert_layout's DCE


def _legalize_conv2d(bb, call):
    """conv2d legalisation that also takes blocked layouts (``NCHW{n}c`` / ``OIHW{n}i{n}o``) via
    TOPI's ``conv2d_NCHWc``; other layouts go to Relax's own rule."""
    import tvm
    from tvm import topi

    a = call.attrs
    if len(a.data_layout) == 4 and len(a.kernel_layout) == 4:
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], a.strides, a.padding,
                      a.dilation, a.data_layout, a.out_layout, str(call.ty.dtype),
                      primfunc_name_hint="conv2d_NCHWc")


def lower(mod, target):
    """Legalize and fuse (Relax's "zero" pipeline, with blocked-layout convs legalised): the
    module whose PrimFuncs are the tuning tasks and what a tuning database is applied to."""
    import tvm
    from tvm import relax

    t = relax.transform
    with target:
        return tvm.transform.Sequential([
            t.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d}),
            t.AnnotateTIROpPattern(), t.FoldConstant(), t.FuseOps(), t.FuseTIR()])(mod)
