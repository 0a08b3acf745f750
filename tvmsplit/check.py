"""Check a bundle against onnxruntime: every host-runnable stage, and the whole chain.

Each host-runnable stage is run twice in spirit: fed by the previous stage's real outputs when the
chain so far ran here (end to end), and compared on its outputs against onnxruntime's values of
the same tensors. A stage this machine cannot run (aarch64, CUDA) breaks the chain; the next
host-runnable stage is then fed onnxruntime's values of its inputs, so it is still checked.

The error measure is relative to the reference's scale: ``max|y - ref| / max(max|ref|, 1e-3)``,
reported with the max absolute error. The floor keeps float32 rounding of tensors whose values are
all tiny (a sigmoid output near 0 is only accurate to ~1e-7 absolute) from reading as a large
relative error: such tensors are compared absolutely, to 1e-7 at the default tolerance.
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
SCALE_FLOOR = 1e-3


@dataclass(frozen=True)
class TensorError:
    name: str
    max_abs: float
    rel: float


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
    def ok(self) -> bool:
        return self.rel <= self.tolerance and any(s.ran for s in self.stages)


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


def reference(graph: LayerGraph, inputs: Mapping[str, np.ndarray],
              names: list[str] | None = None) -> dict[str, np.ndarray]:
    """onnxruntime's values of ``names`` (default: the model outputs) for ``inputs``; the TFLite
    interpreter's for a TFLite model."""
    check_tensors(graph.inputs, inputs, f"model {graph.name}")
    if isinstance(graph.model, tflitefront.TfliteModel):  # the TFLite interpreter
        return tflitefront.reference(graph, inputs, names or [t.name for t in graph.outputs])
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    wanted = list(dict.fromkeys(names or [t.name for t in graph.outputs]))
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in present:
            t = graph.tensors[name]
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    values = session.run(wanted, dict(inputs))
    return dict(zip(wanted, values))


def compare(got: np.ndarray, ref: np.ndarray, name: str) -> TensorError:
    if got.shape != ref.shape:
        raise ShapeError(f"tensor {name!r}: got shape {got.shape}, reference {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return TensorError(name, max_abs, max_abs / max(scale, SCALE_FLOOR))


def check_bundle(bundle: Bundle, graph: LayerGraph, inputs: Mapping[str, np.ndarray] | None = None,
                 tolerance: float = DEFAULT_RTOL) -> CheckReport:
    """Run the bundle's host-runnable stages and compare them with onnxruntime."""
    if graph.model_sha256 != bundle.model_sha256:
        raise ShapeError(f"bundle {bundle.path} was built from another model "
                         f"(sha256 {bundle.model_sha256[:12]}, this one {graph.model_sha256[:12]})")
    inputs = dict(inputs) if inputs is not None else random_inputs(graph.inputs)
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
        errors = tuple(compare(out[t.name], ref[t.name], t.name) for t in stage.plan.outputs)
        checks.append(StageCheck(stage.index, stage.target["name"], True, live is not None, errors))
        if live is not None:
            live.update(out)  # a later stage may read any earlier stage's outputs (a stage DAG)
    final = {t.name: live[t.name] for t in graph.outputs} if live is not None else {}
    return CheckReport(tuple(checks), final, tolerance)
