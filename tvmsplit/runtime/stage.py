"""Run one built stage in this process with the TVM runtime (or onnxruntime for a fallback stage).

Only ``tvm.runtime`` is used, so this works in a runtime-only process (``TVM_USE_RUNTIME_LIB=1``)
on a small device. The stage worker and ``build --check`` both run stages through here, choosing
the runner with ``runner_for``: ``StageRunner`` (a TVM library), ``SegmentedRunner`` (a
sequential stage) or ``OnnxStageRunner`` (a fallback stage's ONNX sub-model under onnxruntime;
``tvmsplit.fallback``), wrapped in a ``DecodingRunner`` when the stage computes on an input that
arrives encoded (a JPEG; ``tvmsplit.encoding``, ``BundleStage.encodings``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..encoding import EncodedSpec, decoded_stage
from ..errors import ShapeError, TvmsplitError
from ..graph import TensorSpec
from ..plan import StagePlan


class StageRunner:
    """A loaded stage library. ``run(tensors)`` takes the stage's inputs and returns its outputs
    (computed ones plus those forwarded unchanged). Use as a context manager.

    ``weights``: the library's external weights file (``tvmsplit.weights``; a segment of a
    sequential stage), read into memory here and freed by ``close``."""

    def __init__(self, library: str | Path, stage: StagePlan, weights: str | Path | None = None):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.stage = stage
        self.device = tvm.cpu()
        self._weights = []
        if weights is not None:
            from ..weights import read_weights

            # zero-copy: TVM's tensors are views of the one buffer read_weights filled
            self._weights = [tvm.runtime.from_dlpack(a) for a in read_weights(weights)]
        self._module = tvm.runtime.load_module(str(library))
        self._vm = VirtualMachine(self._module, self.device)

    def __enter__(self) -> "StageRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._vm = None
        self._module = None
        self._weights = []

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        check_tensors(self.stage.inputs, tensors, f"stage {self.stage.index}")
        # np.require, not np.ascontiguousarray: that turns a 0-d tensor (a scalar input) into 1-d
        args = [tvm.runtime.tensor(np.require(tensors[t.name], requirements="C"), self.device)
                for t in self.stage.library_inputs]
        result = self._vm["main"](*args, *self._weights)
        results = [result] if hasattr(result, "numpy") else list(result)
        computed = {t.name: r.numpy() for t, r in zip(self.stage.library_outputs, results)}
        return {t.name: computed[t.name] if t.name in computed else tensors[t.name]
                for t in self.stage.outputs}


class SegmentedRunner:
    """A sequential stage (HyPS Alg. 3; ``StagePlan.segments``): nothing is loaded up front;
    ``run_batch`` loads each segment's library and weights in turn, runs it on every request of
    the batch, and frees it before the next, so the process holds one segment's weights at a
    time. ``run`` is a batch of one. ``last_load_ms``: the time the last batch spent loading."""

    def __init__(self, bundle_stage):
        self.stage = bundle_stage.plan
        self.segments = list(zip(self.stage.segments, bundle_stage.segments))
        self.last_load_ms = 0.0

    def __enter__(self) -> "SegmentedRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass  # nothing stays loaded between batches

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_batch([tensors])[0]

    def run_batch(self, batch: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        import time

        for tensors in batch:
            check_tensors(self.stage.inputs, tensors, f"stage {self.stage.index}")
        pools = [dict(tensors) for tensors in batch]
        load_s = 0.0
        for seg, files in self.segments:
            t0 = time.perf_counter()
            runner = StageRunner(files.library, seg, files.weights)
            load_s += time.perf_counter() - t0
            try:
                for pool in pools:
                    pool.update(runner.run({t.name: pool[t.name] for t in seg.inputs}))
            finally:
                runner.close()
                del runner  # the weights' buffer goes with its last view
        self.last_load_ms = load_s * 1e3
        return [{t.name: pool[t.name] for t in self.stage.outputs} for pool in pools]


class OnnxStageRunner:
    """A fallback stage (``tvmsplit.fallback``): its ONNX sub-model in an onnxruntime session
    (CPU; ``TVM_NUM_THREADS``, when set, is its thread count too). ``run(tensors)`` takes the
    stage's inputs and returns its outputs (computed ones plus those forwarded unchanged), as
    ``StageRunner`` does. Use as a context manager."""

    def __init__(self, model: str | Path, stage: StagePlan):
        try:
            import onnxruntime as ort
        except ImportError:
            raise TvmsplitError(f"stage {stage.index} runs under onnxruntime (a fallback stage), "
                                "which is not installed here: pip install onnxruntime") from None
        self.stage = stage
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = os.environ.get("TVM_NUM_THREADS", "")  # the worker's thread budget (testbed)
        if threads.isdigit() and int(threads) > 0:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._outputs = [t.name for t in stage.library_outputs]

    def __enter__(self) -> "OnnxStageRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._session = None

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_tensors(self.stage.inputs, tensors, f"stage {self.stage.index}")
        feed = {t.name: np.require(tensors[t.name], requirements="C")
                for t in self.stage.library_inputs}
        computed = dict(zip(self._outputs, self._session.run(self._outputs, feed)))
        return {t.name: computed[t.name] if t.name in computed else tensors[t.name]
                for t in self.stage.outputs}

    def run_batch(self, batch: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [self.run(tensors) for tensors in batch]


class DecodingRunner:
    """A stage whose library reads an input that arrives encoded (``encoding.Encoding``): each
    request's encoded inputs are checked in their wire form, decoded (``Encoding.decode``; a
    bad one raises ``EncodingError``, which the worker answers with ``bad_input``) and the
    decoded tensors given to ``inner``, the stage's own runner; ``run_batch`` decodes every
    request before it computes any (so the worker can rerun a batch one by one). An encoded
    input the stage also forwards goes on as the bytes it came as. ``stage``: the stage's
    wire-form plan."""

    def __init__(self, inner, stage: StagePlan, encodings):
        self.inner, self.stage = inner, stage
        self.encodings = {e.name: e for e in encodings}

    def __enter__(self) -> "DecodingRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.inner.close()

    @property
    def last_load_ms(self) -> float:  # a sequential inner runner's (the worker reads it)
        return getattr(self.inner, "last_load_ms", 0.0)

    def _decode(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_tensors(self.stage.inputs, tensors, f"stage {self.stage.index}")
        return {name: self.encodings[name].decode(a) if name in self.encodings else a
                for name, a in tensors.items()}

    def _forward(self, tensors, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**outputs, **{n: tensors[n] for n in self.encodings if n in outputs}}

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._forward(tensors, self.inner.run(self._decode(tensors)))

    def run_batch(self, batch: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        decoded = [self._decode(tensors) for tensors in batch]
        outs = (self.inner.run_batch(decoded) if hasattr(self.inner, "run_batch")
                else [self.inner.run(t) for t in decoded])
        return [self._forward(t, o) for t, o in zip(batch, outs)]


def runner_for(bundle_stage):
    """The runner a worker uses for a bundle stage: onnxruntime for a fallback stage, else
    sequential or loaded once; wrapped in a ``DecodingRunner`` when its library reads an input
    that arrives encoded."""
    from dataclasses import replace

    reads = {t.name for t in bundle_stage.plan.library_inputs}
    decodes = [e for e in getattr(bundle_stage, "encodings", ()) if e.name in reads]
    if decodes:
        inner = replace(bundle_stage, plan=decoded_stage(bundle_stage.plan), encodings=())
        return DecodingRunner(runner_for(inner), bundle_stage.plan, decodes)
    if getattr(bundle_stage, "runtime", "tvm") == "onnxruntime":
        return OnnxStageRunner(bundle_stage.library, bundle_stage.plan)
    if bundle_stage.segments:
        return SegmentedRunner(bundle_stage)
    return StageRunner(bundle_stage.library, bundle_stage.plan)


def check_tensors(specs: tuple[TensorSpec, ...], tensors: Mapping[str, np.ndarray], who: str) -> None:
    """Raise ShapeError naming every missing, extra or mis-shaped tensor."""
    problems = []
    names = {t.name for t in specs}
    for t in specs:
        if t.name not in tensors:
            problems.append(f"missing input {t.name!r}")
            continue
        a = np.asarray(tensors[t.name])
        if isinstance(t, EncodedSpec):
            if not t.accepts(a):
                problems.append(f"input {t.name!r} is sent encoded ({t.encoding.format}): "
                                f"expected uint8 bytes, 1-D, 1..{t.shape[0]} long; got "
                                f"{a.dtype.name}{list(a.shape)}")
            continue
        if tuple(a.shape) != t.shape or a.dtype.name != t.dtype:
            problems.append(f"input {t.name!r} is {a.dtype.name}{list(a.shape)}, "
                            f"expected {t.dtype}{list(t.shape)}")
    extra = sorted(set(tensors) - names)
    if extra:
        problems.append(f"unexpected input(s) {', '.join(extra)}")
    if problems:
        raise ShapeError(f"{who}: {'; '.join(problems)}")
