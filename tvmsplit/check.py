"""Check a bundle against onnxruntime: every host-runnable stage, and the whole chain.

Each host-runnable stage is run twice in spirit: fed by the previous stage's real outputs when the
chain so far ran here (end to end), and compared on its outputs against onnxruntime's values of
the same tensors. A stage this machine cannot run (aarch64, CUDA) breaks the chain; the next
host-runnable stage is then fed onnxruntime's values of its inputs, so it is still checked.

How two tensors are compared (``compare``), like ``numpy.allclose`` element by element:

    |got - ref| <= atol + rtol * |ref|,   atol = max(range_frac * range(ref), atol_min)

where ``range(ref)`` is the reference's dynamic range (max - min of its finite values; its
largest magnitude when it is constant). The absolute term keeps values near zero from being
judged relatively (a sigmoid output near 0, a ReLU's zeros: float32 rounding there is ~1e-7
absolute, which no relative test passes); because it scales with the tensor's own range, a tensor
whose values are all small is still compared at its own scale. ``TOLERANCES`` holds the defaults
per dtype (float32: 1e-4 relative and 1e-4 of the range, at least 1e-6); integer and bool tensors
must be equal. ``--tolerance T`` scales every float tolerance by T / 1e-4.

Each tensor's report (``TensorError``) says where it is worst: the largest absolute error and its
index, the largest relative error ``|d| / max(|ref|, atol)`` and its index, and ``ratio``, the
largest ``|d| / (atol + rtol |ref|)`` (at most 1 passes). ``rel`` is the largest absolute error
relative to the tensor's largest magnitude, ``max|d| / max(max|ref|, 1e-3)``: one number per
tensor for summaries.

Inputs: ``default_inputs`` gives what the model says it expects where it says it: an image-like
tensor (float ``[N, C, H, W]`` or ``[N, H, W, C]`` with 1, 3 or 4 channels) uniform in [0, 1);
int token ids (an input used as the indices of a ``Gather`` from a weight table) uniform over the
table's rows; other integer inputs ones (a mask, a count), other floats N(0, 1).
``random_inputs`` is the plain seeded noise the tests use.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from . import tflitefront
from .bundle import Bundle
from .errors import ShapeError
from .graph import LayerGraph, TensorSpec
from .runtime.stage import check_tensors, runner_for

DEFAULT_RTOL = 1e-4
SCALE_FLOOR = 1e-3  # of ``rel``: a tensor whose values are all below it is measured absolutely


@dataclass(frozen=True)
class Tolerance:
    """``|got - ref| <= max(range_frac * range(ref), atol_min) + rtol * |ref|`` per element."""

    rtol: float
    range_frac: float
    atol_min: float

    def scaled(self, factor: float) -> "Tolerance":
        return Tolerance(self.rtol * factor, self.range_frac * factor, self.atol_min * factor)

    def describe(self) -> str:
        if self == EXACT:
            return "exact"
        return (f"|d| <= max({self.range_frac:g} x range, {self.atol_min:g}) + "
                f"{self.rtol:g} x |ref|")


EXACT = Tolerance(0.0, 0.0, 0.0)
# Per dtype, at the default --tolerance (1e-4). float16 keeps ~3 decimal digits, bfloat16 ~2.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(1e-9, 1e-9, 1e-12),
    "float32": Tolerance(DEFAULT_RTOL, DEFAULT_RTOL, 1e-6),
    "float16": Tolerance(1e-2, 1e-2, 1e-3),
    "bfloat16": Tolerance(2e-2, 2e-2, 1e-2),
}


def tolerance_for(dtype: str, tolerance: float = DEFAULT_RTOL) -> Tolerance:
    """The tolerance for tensors of ``dtype`` when float32's relative tolerance is ``tolerance``
    (every float tolerance scales with it; integers and bools are compared exactly)."""
    if dtype not in TOLERANCES:
        return EXACT
    return TOLERANCES[dtype].scaled(tolerance / DEFAULT_RTOL)


@dataclass(frozen=True)
class TensorError:
    """How far one tensor is from its reference (see the module docstring)."""

    name: str
    max_abs: float
    rel: float                     # max_abs / max(max|ref|, SCALE_FLOOR)
    max_abs_at: tuple[int, ...] = ()
    max_rel: float = 0.0           # max |d| / max(|ref|, atol)
    max_rel_at: tuple[int, ...] = ()
    ratio: float = 0.0             # max |d| / (atol + rtol |ref|); <= 1 passes
    tolerance: Tolerance = TOLERANCES["float32"]
    mismatched: int = 0            # elements beyond the tolerance

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        where = lambda at: f"[{','.join(map(str, at))}]"  # noqa: E731
        return (f"{self.name}: max abs err {self.max_abs:.3g} at {where(self.max_abs_at)} "
                f"({self.rel:.3g} of its largest |value|), elementwise max rel err "
                f"{self.max_rel:.3g} at {where(self.max_rel_at)}, {self.ratio:.2g} of tolerance"
                + (f" ({self.mismatched} element(s) beyond it)" if self.mismatched else ""))


@dataclass(frozen=True)
class StageCheck:
    index: int
    target: str
    ran: bool
    chained: bool          # fed by real upstream stage outputs (not onnxruntime's)
    errors: tuple[TensorError, ...]

    @property
    def rel(self) -> float:
        return max((e.rel for e in self.errors), default=0.0)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.errors)


@dataclass(frozen=True)
class CheckReport:
    stages: tuple[StageCheck, ...]
    outputs: dict[str, np.ndarray]  # final outputs when the whole chain ran here, else {}
    tolerance: float

    @property
    def max_abs(self) -> float:
        return max((e.max_abs for s in self.stages for e in s.errors), default=0.0)

    @property
    def rel(self) -> float:
        return max((s.rel for s in self.stages), default=0.0)

    @property
    def worst(self) -> TensorError | None:
        """The tensor closest to (or furthest beyond) its tolerance."""
        return max((e for s in self.stages for e in s.errors), key=lambda e: e.ratio, default=None)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages) and any(s.ran for s in self.stages)


def random_inputs(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in specs:
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            out[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        else:
            out[t.name] = rng.integers(0, 2, size=t.shape).astype(t.dtype)
    return out


def reference_name(graph: LayerGraph) -> str:
    """What ``reference`` runs for ``graph``: onnxruntime, or the TFLite interpreter."""
    return "tflite" if isinstance(graph.model, tflitefront.TfliteModel) else "onnxruntime"


def default_inputs(graph: LayerGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the kind ``graph``'s model says it expects (see the module docstring)."""
    model = graph.model if isinstance(graph.model, onnx.ModelProto) else None
    return realistic_inputs(graph.inputs, model, seed)


def realistic_inputs(specs: tuple[TensorSpec, ...], model: onnx.ModelProto | None = None,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Image-like inputs in [0, 1), token ids in range (``model`` tells which inputs index a
    ``Gather`` table), ones for other integers, N(0, 1) for other floats."""
    rng = np.random.default_rng(seed)
    rows = _gather_rows(model) if model is not None else {}
    out = {}
    for t in specs:
        dtype = np.dtype(t.dtype)
        if dtype == np.bool_:
            out[t.name] = np.ones(t.shape, dtype)
        elif np.issubdtype(dtype, np.integer):
            if t.name in rows:
                out[t.name] = rng.integers(0, rows[t.name], size=t.shape).astype(dtype)
            else:
                out[t.name] = np.ones(t.shape, dtype)
        elif _image_like(t.shape):
            out[t.name] = rng.random(t.shape).astype(dtype)
        else:
            out[t.name] = rng.standard_normal(t.shape).astype(dtype)
    return out


def _image_like(shape: tuple[int, ...]) -> bool:
    if len(shape) != 4:
        return False
    _, a, b, c = shape
    return (a in (1, 3, 4) and min(b, c) >= 8) or (c in (1, 3, 4) and min(a, b) >= 8)


def _gather_rows(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used (directly or through a Cast) as the indices of a Gather whose data is
    an initializer -> that table's size along the gathered axis (the number of valid ids)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    inputs = {vi.name for vi in g.input} - set(inits)
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Cast" and n.input[0] in inputs}
    rows: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in inits:
            continue
        source = alias.get(n.input[1], n.input[1])
        if source in inputs:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            dims = list(inits[n.input[0]].dims)
            size = dims[axis] if -len(dims) <= axis < len(dims) else 0
            if size > 0:
                rows[source] = min(rows.get(source, size), size)
    return rows


def reference(graph: LayerGraph, inputs: Mapping[str, np.ndarray],
              names: list[str] | None = None) -> dict[str, np.ndarray]:
    """onnxruntime's values of ``names`` (default: the model outputs) for ``inputs``; the TFLite
    interpreter's for a TFLite model."""
    check_tensors(graph.inputs, inputs, f"model {graph.name}")
    if isinstance(graph.model, tflitefront.TfliteModel):  # the TFLite interpreter
        return tflitefront.reference(graph, inputs, names or [t.name for t in graph.outputs])
    wanted = list(dict.fromkeys(names or [t.name for t in graph.outputs]))
    extra = {name: graph.tensors[name] for name in wanted}
    return run_onnxruntime(graph.model, inputs, wanted, extra)


def run_onnxruntime(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                    names: list[str] | None = None,
                    specs: Mapping[str, TensorSpec] | None = None) -> dict[str, np.ndarray]:
    """onnxruntime's (CPU, quiet) values of ``names`` (default: the model's outputs) for
    ``inputs``; a name that is not a model output is made one (typed from ``specs`` when given,
    else left for onnxruntime to infer)."""
    import onnxruntime as ort

    wanted = list(dict.fromkeys(names or [o.name for o in model.graph.output]))
    present = {o.name for o in model.graph.output}
    missing = [n for n in wanted if n not in present]
    if missing:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for name in missing:
            t = (specs or {}).get(name)
            copy.graph.output.append(
                onnx.ValueInfoProto(name=name) if t is None else onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
        model = copy
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if is_qdq(model):  # the ONNX meaning of Q -> DQ -> float op, not onnxruntime's fused kernels
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(wanted, dict(inputs))))


def is_qdq(model: onnx.ModelProto) -> bool:
    """A QDQ-quantized model: some DequantizeLinear reads a QuantizeLinear's output. onnxruntime
    optimises such pairs into fused integer kernels whose results differ from the graph's ONNX
    meaning (measured on the zoo ViT in QDQ format: by 0.11 from its own unoptimised run), which is
    what TVM computes; the reference for such a model is onnxruntime without graph optimisations."""
    quantized = {o for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    return any(n.op_type == "DequantizeLinear" and n.input and n.input[0] in quantized
               for n in model.graph.node)


def compare(got: np.ndarray, ref: np.ndarray, name: str,
            tolerance: Tolerance | float | None = None) -> TensorError:
    """How far ``got`` is from ``ref`` (see the module docstring). ``tolerance``: a Tolerance,
    or float32's relative tolerance (``tolerance_for``); default: the dtype's."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        raise ShapeError(f"tensor {name!r}: got shape {got.shape}, reference {ref.shape}")
    if not isinstance(tolerance, Tolerance):
        tolerance = tolerance_for(ref.dtype.name, DEFAULT_RTOL if tolerance is None else tolerance)
    if not ref.size:
        return TensorError(name, 0.0, 0.0, tolerance=tolerance)
    g, r = got.astype(np.float64).reshape(-1), ref.astype(np.float64).reshape(-1)  # 0-d too
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.abs(g - r)
    same = (g == r) | (np.isnan(g) & np.isnan(r))  # equal infinities and NaNs are no error
    diff[same] = 0.0
    diff[np.isnan(diff)] = np.inf  # a NaN (or inf) where the reference has a number
    finite = r[np.isfinite(r)]
    magnitude = float(np.abs(finite).max()) if finite.size else 0.0
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    atol = max(tolerance.range_frac * (spread or magnitude), tolerance.atol_min)
    allowed = atol + tolerance.rtol * np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(diff == 0, 0.0, diff / allowed)
        rels = np.where(diff == 0, 0.0, diff / np.maximum(np.abs(r), atol))
    at = lambda flat: tuple(int(i) for i in np.unravel_index(int(flat), ref.shape))  # noqa: E731
    i_abs, i_rel, i_ratio = int(np.argmax(diff)), int(np.argmax(rels)), int(np.argmax(ratios))
    max_abs = float(diff.flat[i_abs])
    return TensorError(name, max_abs, max_abs / max(magnitude, SCALE_FLOOR), at(i_abs),
                       float(rels.flat[i_rel]), at(i_rel), float(ratios.flat[i_ratio]),
                       tolerance, int(np.count_nonzero(ratios > 1.0)))


def check_bundle(bundle: Bundle, graph: LayerGraph, inputs: Mapping[str, np.ndarray] | None = None,
                 tolerance: float = DEFAULT_RTOL) -> CheckReport:
    """Run the bundle's host-runnable stages and compare them with onnxruntime (``inputs``
    default: ``default_inputs``; ``tolerance``: float32's relative tolerance, see
    ``tolerance_for``)."""
    if graph.model_sha256 != bundle.model_sha256:
        raise ShapeError(f"bundle {bundle.path} was built from another model "
                         f"(sha256 {bundle.model_sha256[:12]}, this one {graph.model_sha256[:12]})")
    inputs = dict(inputs) if inputs is not None else default_inputs(graph)
    names = [t.name for s in bundle.stages for t in s.plan.outputs]
    ref = reference(graph, inputs, names)
    ref.update(inputs)
    live: dict[str, np.ndarray] | None = dict(inputs)  # real values flowing down the chain
    checks = []
    for stage in bundle.stages:
        if not stage.runs_on_host:
            checks.append(StageCheck(stage.index, stage.target["name"], False, False, ()))
            live = None
            continue
        feed_from = live if live is not None else ref
        feed = {t.name: feed_from[t.name] for t in stage.plan.inputs}
        with runner_for(stage) as runner:
            out = runner.run(feed)
        errors = tuple(compare(out[t.name], ref[t.name], t.name, tolerance)
                       for t in stage.plan.outputs)
        checks.append(StageCheck(stage.index, stage.target["name"], True, live is not None, errors))
        if live is not None:
            live.update(out)  # a later stage may read any earlier stage's outputs (a stage DAG)
    final = {t.name: live[t.name] for t in graph.outputs} if live is not None else {}
    return CheckReport(tuple(checks), final, tolerance)
