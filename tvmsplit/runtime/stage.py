"""Run one built stage in this process with the TVM runtime.

Only ``tvm.runtime`` is used, so this works in a runtime-only process (``TVM_USE_RUNTIME_LIB=1``)
on a small device. The stage worker and ``build --check`` both run stages through here.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import ShapeError
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


def runner_for(bundle_stage):
    """The runner a worker uses for a bundle stage: sequential or loaded once."""
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
        if tuple(a.shape) != t.shape or a.dtype.name != t.dtype:
            problems.append(f"input {t.name!r} is {a.dtype.name}{list(a.shape)}, "
                            f"expected {t.dtype}{list(t.shape)}")
    extra = sorted(set(tensors) - names)
    if extra:
        problems.append(f"unexpected input(s) {', '.join(extra)}")
    if problems:
        raise ShapeError(f"{who}: {'; '.join(problems)}")
