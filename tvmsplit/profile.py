"""Measure layers and stages on a device: locally or over TVM RPC.

Each layer is compiled alone for the device's target (``split.layer_stage``, the same build path
as a real stage, cached) and timed with the VM's ``time_evaluator`` on ``invoke_stateful`` (which
works for tuple outputs over RPC too). Every measurement records the device's live state
(``monitor.snapshot``) next to its timing, so predictors learn how load changes latency.

Sessions are resources (context managers):
- ``LocalSession()``: this machine;
- ``RPCSession(host, port)`` or ``RPCSession(tracker=(host, port), key=...)``: a device running
  ``python -m tvm.exec.rpc_server``. Its live state is read by a small remote helper when the
  device's tvmsplit is importable, else reported as unknown (``None``).
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compile import build_stage
from .errors import TvmsplitError
from .graph import LayerGraph
from .monitor import DeviceState, snapshot
from .plan import StagePlan
from .split import layer_stage
from .targets import TargetSpec, get_target


class ProfileError(TvmsplitError):
    """A device cannot be reached or a measurement failed."""


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one thing, in ms."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    samples: tuple[float, ...]

    @property
    def noise(self) -> float:
        """median(|sample - median|) / median: the spread of the repeats (0 for one sample)."""
        if self.median_ms <= 0:
            return 0.0
        return statistics.median(abs(s - self.median_ms) for s in self.samples) / self.median_ms

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Timing":
        s = tuple(float(x) for x in samples_ms)
        return cls(statistics.median(s), statistics.fmean(s),
                   statistics.pstdev(s) if len(s) > 1 else 0.0, min(s), s)


@dataclass(frozen=True)
class LayerMeasurement:
    layer: str
    op: str
    timing: Timing
    state: DeviceState | None
    tuning: str = ""   # which tuning database the layer's build used, "N/M kernels tuned (...)"
    recorded_ms: float = math.nan  # what that database measured for the layer's kernels


class LocalSession:
    """Run libraries on this machine's CPU."""

    name = "local"

    def __enter__(self) -> "LocalSession":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def state(self) -> DeviceState | None:
        return snapshot()

    def load(self, library: Path):
        import tvm

        return tvm.runtime.load_module(str(library)), tvm.cpu()


class RPCSession:
    """Run libraries on a remote device through TVM RPC (upload, load, time)."""

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 tracker: tuple[str, int] | None = None, key: str | None = None,
                 timeout_s: float = 30.0):
        from tvm import rpc

        self.name = f"rpc://{host}:{port}" if tracker is None else f"rpc-tracker://{tracker[0]}:{tracker[1]}/{key}"
        try:
            if tracker is not None:
                self.remote = rpc.connect_tracker(*tracker).request(key, session_timeout=0)
            else:
                self.remote = rpc.connect(host, port, session_timeout=0)
        except Exception as exc:
            raise ProfileError(f"cannot reach the RPC device {self.name} ({exc}); start one with "
                               "`python -m tvm.exec.rpc_server --host HOST --port PORT` and check the "
                               "address") from None
        self._uploaded: set[str] = set()

    def __enter__(self) -> "RPCSession":
        return self

    def __exit__(self, *exc) -> None:
        self.remote = None

    def state(self) -> DeviceState | None:
        try:
            f = self.remote.get_function("tvmsplit.device_state")
        except Exception:
            return None
        return DeviceState.from_json(json.loads(f()))

    def load(self, library: Path):
        """Upload ``library`` (once per content: the remote name carries its sha256, so two
        libraries with the same file name, e.g. ``layer3.so`` of two models, never mix) and
        load it."""
        import hashlib

        data = Path(library).read_bytes()
        name = f"{hashlib.sha256(data).hexdigest()[:16]}-{Path(library).name}"
        if name not in self._uploaded:
            self.remote.upload(bytearray(data), target=name)
            self._uploaded.add(name)
        return self.remote.load_module(name), self.remote.cpu()


Session = LocalSession | RPCSession


def time_library(session: Session, library: Path, stage: StagePlan, *, number: int = 10,
                 repeat: int = 5, seed: int = 0, min_repeat_ms: int = 0) -> Timing:
    """Time one stage library with random inputs: ``repeat`` samples, each the mean of ``number``
    runs (more, when ``min_repeat_ms`` asks each sample to last that long: on a CPU-capped
    device, 100 ms spans ten 10 ms quota periods, so a sample is the steady capped rate and not
    one lucky burst)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    rng = np.random.default_rng(seed)
    module, dev = session.load(library)
    vm = VirtualMachine(module, dev)
    args = []
    for t in stage.library_inputs:
        data = rng.standard_normal(t.shape).astype(t.dtype) if np.issubdtype(np.dtype(t.dtype), np.floating) \
            else np.zeros(t.shape, t.dtype)
        args.append(tvm.runtime.tensor(data, dev))
    vm.set_input("main", *args)
    result = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat,
                               min_repeat_ms=min_repeat_ms)("main")
    return Timing.of([r * 1e3 for r in result.results])


def profile_layers(graph: LayerGraph, target: str | TargetSpec, session: Session, *,
                   number: int = 10, repeat: int = 5, layers: Sequence[str] | None = None,
                   progress: Callable[[str], None] | None = None,
                   db: str | Path | None = None,
                   min_repeat_ms: int = 0) -> tuple[LayerMeasurement, ...]:
    """Compile every layer (or ``layers``) alone for ``target`` and time it in ``session``.

    Layers are built as stages are (``compile.build_stage``): scheduled from the tuning database
    ``db``, or the target's default one when it exists, so the times are those of the code that
    runs; each measurement says which database it used."""
    spec = get_target(target)
    indices = [graph.index(name) for name in layers] if layers else range(len(graph.layers))
    out = []
    with tempfile.TemporaryDirectory(prefix="tvmsplit-profile-") as tmp:
        for n, i in enumerate(indices):
            layer = graph.layers[i]
            stage = layer_stage(graph, i, spec.name)
            lib = Path(tmp) / f"layer{i}.so"
            built = build_stage(graph, stage, spec, lib, db=db)
            state = session.state()
            timing = time_library(session, lib, stage, number=number, repeat=repeat,
                                  min_repeat_ms=min_repeat_ms)
            out.append(LayerMeasurement(layer.name, layer.op, timing, state,
                                        built.tuning.describe() if built.tuning else "",
                                        built.tuning.recorded_ms if built.tuning else math.nan))
            if progress:
                progress(f"[{n + 1}/{len(indices)}] {layer.name} ({layer.op}): "
                         f"{timing.median_ms:.3f} ms ± {timing.std_ms:.3f}")
    return tuple(out)


def profile_bundle(bundle, session: Session, *, number: int = 10, repeat: int = 5) -> tuple[Timing, ...]:
    """Time every stage of a bundle that ``session`` can run (others: ``None``)."""
    timings = []
    for stage in bundle.stages:
        timings.append(time_library(session, stage.library, stage.plan, number=number, repeat=repeat))
    return tuple(timings)
