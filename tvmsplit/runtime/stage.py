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
    (computed ones plus those forwarded unchanged). Use as a context manager."""

    def __init__(self, library: str | Path, stage: StagePlan):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.stage = stage
        self.device = tvm.cpu()
        self._module = tvm.runtime.load_module(str(library))
        self._vm = VirtualMachine(self._module, self.device)

    def __enter__(self) -> "StageRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._vm = None
        self._module = None

    def run(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        check_tensors(self.stage.inputs, tensors, f"stage {self.stage.index}")
        # np.require, not np.ascontiguousarray: that turns a 0-d tensor (a scalar input) into 1-d
        args = [tvm.runtime.tensor(np.require(tensors[t.name], requirements="C"), self.device)
                for t in self.stage.library_inputs]
        result = self._vm["main"](*args)
        results = [result] if hasattr(result, "numpy") else list(result)
        computed = {t.name: r.numpy() for t, r in zip(self.stage.library_outputs, results)}
        return {t.name: computed[t.name] if t.name in computed else tensors[t.name]
                for t in self.stage.outputs}


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
