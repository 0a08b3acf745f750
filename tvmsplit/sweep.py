"""Profiling runs: measure the sweep's single-layer models and zoo models into a Dataset.

``profile_sweep(target, session, ...)`` measures ``layergen`` sweep models and zoo models under
controlled background load levels (``LOAD_LEVELS``) and returns a ``predict.Dataset``;
``profile_device`` is ``tvmsplit profile``: it picks the session (this machine or TVM RPC), checks
every argument before measuring and saves the dataset. The models themselves are built in
``layergen``; one layer is timed by ``profile.profile_layers``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import onnx

from .layergen import KINDS, SweepError, sweep_all
from .profile import LocalSession

# Background load levels (keyword arguments of loadgen.BackgroundLoad), mildest first.
LOAD_LEVELS: dict[str, dict[str, Any]] = {
    "none": {},
    "cpu1x50": {"cpu_workers": 1, "duty": 0.5},
    "cpu2x100+mem2g": {"cpu_workers": 2, "duty": 1.0, "mem_bytes": 2 << 30},
}

# Zoo models profiled next to the sweep: (zoo name, input size, width).
DEFAULT_ZOO: tuple[tuple[str, int, float], ...] = (
    ("chain", 32, 0.5), ("resnet", 32, 0.5), ("inception", 32, 0.5), ("mobilenetv2", 64, 0.5),
)


# ---- measuring --------------------------------------------------------------------------------
def estimate_ms(layer) -> float:
    """A crude a-priori time of one layer on a small x86 core (only to size measurement loops)."""
    work = layer.flops / 1.5e6
    moved = (sum(t.nbytes for t in layer.inputs) + layer.output_bytes + layer.param_bytes) / 3e6
    return 0.003 + work + moved


def repeats_for(layer, sample_ms: float = 3.0) -> int:
    """Runs per timing sample so that one sample lasts about ``sample_ms`` (between 2 and 200)."""
    return int(min(200, max(2, round(sample_ms / estimate_ms(layer)))))


def measure_model(model: onnx.ModelProto | Any, target, session, *, repeat: int = 5,
                  sample_ms: float = 3.0, progress: Callable[[str], None] | None = None,
                  db=None):
    """Load ``model`` (ModelProto or LayerGraph) and time each of its layers alone.

    Each layer gets its own ``number`` of runs per sample (``repeats_for``) so tiny layers are
    not timed at the clock's resolution and large ones do not take seconds. Returns
    ``(graph, measurements)``.
    """
    from .frontend import load
    from .graph import LayerGraph
    from .profile import profile_layers

    graph = model if isinstance(model, LayerGraph) else load(model)
    out = []
    for layer in graph.layers:
        out.extend(profile_layers(graph, target, session, number=repeats_for(layer, sample_ms),
                                  repeat=repeat, layers=[layer.name], progress=progress, db=db))
    return graph, tuple(out)


def zoo_graphs(specs: Iterable[tuple[str, int, float]] = DEFAULT_ZOO) -> list[tuple[str, Any]]:
    """(model id, LayerGraph) of zoo models given as (name, input size, width)."""
    from . import zoo
    from .frontend import load

    out = []
    for name, size, width in specs:
        mid = f"zoo:{name}@{size}x{width:g}"
        out.append((mid, load(zoo.make(name, input_size=size, width=width), name=mid)))
    return out


def background_load(level: str | dict[str, Any]):
    """``(label, loadgen.BackgroundLoad)`` of a level: a name in ``LOAD_LEVELS`` or the keyword
    arguments of ``BackgroundLoad`` (labelled ``k=v,...``). Enter the load to start it."""
    from .loadgen import BackgroundLoad

    if isinstance(level, str):
        if level not in LOAD_LEVELS:
            raise SweepError(f"unknown load level {level!r}; known: {', '.join(LOAD_LEVELS)}")
        return level, BackgroundLoad(**LOAD_LEVELS[level])
    label = ",".join(f"{k}={v}" for k, v in sorted(level.items())) or "none"
    return label, BackgroundLoad(**level)


def profile_sweep(target, session, *, kinds: Iterable[str] = KINDS, count: int | dict[str, int] = 12,
                  seed: int = 0, zoo: Iterable[tuple[str, int, float]] = DEFAULT_ZOO,
                  loads: Sequence[str | dict[str, Any]] = ("none",), block: int = 20,
                  repeat: int = 5, sample_ms: float = 3.0, dataset=None,
                  progress: Callable[[str], None] | None = None, db=None):
    """Measure sweep + zoo layers on ``session`` under each background load level; a Dataset.

    Models are processed in blocks of ``block``; each block is measured under every load level
    in turn, so slow drifts of the machine's own load (other jobs) spread over all levels instead
    of confounding one. Background load runs on *this* machine: with an RPCSession only use
    ``("none",)`` (the remote device's own state is still recorded when it can be read).
    The first level of the first block also compiles every layer (builds are cached).
    """
    from .frontend import load
    from .predict import Dataset
    from .targets import get_target

    spec = get_target(target)
    ds = dataset if dataset is not None else Dataset(target=spec.name)

    items: list[tuple[str, Any]] = []
    for m in sweep_all(count, seed, kinds):
        items.append((f"sweep:{m.graph.name}", load(m)))
    items.extend(zoo_graphs(zoo))
    levels = [background_load(level) for level in loads]
    t0 = time.perf_counter()
    n_layers = sum(len(g.layers) for _, g in items)
    done = 0
    for start in range(0, len(items), block):
        chunk = items[start:start + block]
        for label, bg in levels:
            with bg:
                for mid, graph in chunk:
                    graph, ms = measure_model(graph, spec, session, repeat=repeat,
                                              sample_ms=sample_ms, db=db)
                    ds.add(graph, ms, model_id=mid, load=label)
                    done += len(graph.layers)
                    if progress:
                        el = time.perf_counter() - t0
                        total = n_layers * len(levels)
                        progress(f"[{done}/{total}] {mid} under {label}: "
                                 f"{', '.join(f'{m.timing.median_ms:.3f}' for m in ms[:4])}"
                                 f"{' ...' if len(ms) > 4 else ''} ms  ({el:.0f} s)")
    return ds


def profile_device(device: str, *, rpc: str | None = None, tracker: str | None = None,
                   key: str | None = None, count: int | dict[str, int] = 12,
                   loads: Sequence[str] = ("none",), zoo: Iterable[tuple[str, int, float]] = DEFAULT_ZOO,
                   out: str | None = None, append: bool = False, seed: int = 0,
                   progress: Callable[[str], None] | None = None, db: str | None = None):
    """`tvmsplit profile --target D`: measure the sweep + zoo layers on D and save the dataset.

    D is a target name (or .toml). It runs here when D's target is this machine's CPU; otherwise
    give ``rpc="HOST:PORT"`` (or ``tracker="HOST:PORT", key=...``) of the device running
    ``python -m tvm.exec.rpc_server``. Background ``loads`` run on this machine, so with RPC only
    ``("none",)`` is allowed. Layers are built from the tuning database ``db`` (default: the
    target's own, when tuned); each row records which. Writes to ``out`` (default
    ``predict.dataset_path(D)``), adding to the rows already there with ``append``. Returns
    ``(dataset, path)``.
    """
    from pathlib import Path

    from .predict import Dataset, dataset_path
    from .profile import RPCSession
    from .targets import get_target, host_arch

    spec = get_target(device)
    loads = list(loads)
    for level in loads:
        if level not in LOAD_LEVELS:
            raise SweepError(f"unknown load level {level!r}; known: {', '.join(LOAD_LEVELS)}")
    if rpc or tracker:
        if loads != ["none"]:
            raise SweepError("background load runs on this machine, not on the RPC device; "
                             "profile a remote device with the load level 'none' only")

        from .rpc_device import parse_address

        def hostport(text: str, what: str) -> tuple[str, int]:
            return parse_address(text, what, SweepError)

        if tracker:
            if not key:
                raise SweepError("an RPC tracker needs the device's key (--key)")
            session = RPCSession(tracker=hostport(tracker, "--tracker"), key=key)
        else:
            session = RPCSession(*hostport(rpc, "--rpc"))
    elif not spec.runs_on_host:
        raise SweepError(f"{spec.name} ({spec.arch}, {spec.kind}) cannot run on this {host_arch()} "
                         "machine; start `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` "
                         f"on the device and give --rpc HOST:9090")
    else:
        session = LocalSession()
    path = Path(out) if out else dataset_path(spec.name)
    ds = Dataset.load(path, target=spec.name) if append and path.is_file() else Dataset(target=spec.name)
    with session:
        ds = profile_sweep(spec, session, count=count, seed=seed, zoo=zoo, loads=loads, dataset=ds,
                           progress=progress, db=db)
    return ds, ds.save(path)
