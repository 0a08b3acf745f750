"""The plan: which stage holds which layers, what each stage receives, computes and sends.

This module is data and its JSON only: no splitting algorithm (``split.py`` makes plans from a
graph), no planner (``partition/``, ``planning.py``), no ONNX, no TVM. The runtime reads plans
through it and never imports the splitter.

Stages and routes. A plan's stages are numbered so that data only flows to higher numbers. A
stage *receives* ``inputs``, *sends* ``outputs``, and its compiled library computes
``library_outputs`` from ``library_inputs``; every output it does not compute is forwarded
unchanged from its inputs. ``StagePlan.sends`` lists one :class:`Route` per destination (a later
stage, or :data:`CLIENT_END` for the model outputs) and ``Plan.entry`` the routes of the model
inputs from the client. ``ROUTINGS`` names the two shapes ``split.plan_split`` makes: ``"chain"``
(stage s sends only to s+1) and ``"direct"`` (a stage DAG: every tensor straight from its producer
to its readers).

JSON. ``Plan.to_json()`` (also the ``"plan"`` of a bundle manifest)::

    {"model": "vgg16", "model_sha256": "<sha256 of the ONNX model as read, before any rewriting>",
     "entry": [{"to": 0, "tensors": ["input"]}],          # what the client sends where
     "stages": [{"index": 0, "target": "x86_64",          # a target name or a .toml path
                 "layers": ["conv1", ...],
                 "inputs": [{"name", "dtype", "shape"}, ...], "outputs": [...],
                 "library_inputs": [...], "library_outputs": [...],
                 "param_bytes": 123, "flops": 456,
                 "sends": [{"to": 1, "tensors": ["t"]}, {"to": -1, "tensors": ["output"]}]},
                ...]}                                      # to -1: CLIENT_END, the client

A saved plan file (``tvmsplit plan --save``; :class:`PlanFile`, read by ``build --plan`` and
``run --plan``) wraps it with what is needed to build it again exactly::

    {"version": 1,                                         # PLAN_FILE_VERSION
     "model": "vgg16", "model_sha256": "<as in the plan>", # the model it was made for
     "horizontal": {"fc1": 2},                             # HyPS: layer -> H-parts; the graph is
                                                           # rewritten so before building
                                                           # (hsplit.split_horizontally)
     "plan": {...},                                        # Plan.to_json()
     "method": "dag-ilp", "devices": [...], "stage_devices": [...], "predicted": {...},
     "baselines": {...}, "critical_path_ms": null,         # the planner's report
     "links": [...], "sink": "end", "exact": true}         # (devices/links: the route chosen)
                                                           # (planning.PlannedSplit), not needed
                                                           # to build

Versioning. A change that an older reader would misread (a field renamed, removed or given
another meaning, a new field that must not be ignored) raises ``PLAN_FILE_VERSION``; the reader
refuses any other version with a message naming both and the fix (save the plan again). Purely
additive, ignorable fields keep the version. Bundle manifests have their own
``bundle.SCHEMA_VERSION``: raise it too when ``Plan.to_json`` changes incompatibly. Keep every
``from_json`` the inverse of its ``to_json`` (``tests/test_plan_cli.py`` checks the round trip).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import SplitError
from .graph import TensorSpec

CLIENT_END = -1  # the end of a route that is not a stage: model inputs come from it, outputs go to it
ROUTINGS = ("chain", "direct")
PLAN_FILE_VERSION = 1


def end_name(index: int) -> str:
    """``"stage N"``, or ``"the client"`` for ``CLIENT_END``: the ends of a route in messages."""
    return "the client" if index == CLIENT_END else f"stage {index}"


@dataclass(frozen=True)
class Route:
    """Tensors (by name, in message order) sent to stage ``to`` (``CLIENT_END``: the client)."""

    to: int
    tensors: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "tensors": list(self.tensors)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Route":
        return cls(int(d["to"]), tuple(str(n) for n in d["tensors"]))


@dataclass(frozen=True)
class StagePlan:
    """One stage: where it runs, which layers it holds, what it receives, computes and sends.
    ``target`` is what the plan names: a target name (``targets.get_target``) or a .toml path.

    ``segments`` (HyPS sequential mode): when non-empty, the stage's layers are split into
    consecutive segments, each its own library with its weights outside it, which the worker
    loads one at a time, runs on the gathered requests and frees before the next — so the
    device holds one segment's weights at a time, never the whole stage's. Each segment is a
    StagePlan (``index`` = its position, no sends) whose inputs come from the stage's inputs or
    earlier segments; the stage's ``library_inputs``/``library_outputs`` are then what the
    segments together read and compute."""

    index: int
    target: str
    layers: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    library_inputs: tuple[TensorSpec, ...]
    library_outputs: tuple[TensorSpec, ...]
    param_bytes: int
    flops: int
    sends: tuple[Route, ...] = ()
    segments: tuple["StagePlan", ...] = ()

    @property
    def sequential(self) -> bool:
        return bool(self.segments)

    def to_json(self) -> dict[str, Any]:
        out = {
            "index": self.index, "target": self.target, "layers": list(self.layers),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "library_inputs": [t.to_json() for t in self.library_inputs],
            "library_outputs": [t.to_json() for t in self.library_outputs],
            "param_bytes": self.param_bytes, "flops": self.flops,
            "sends": [r.to_json() for r in self.sends],
        }
        if self.segments:
            out["segments"] = [s.to_json() for s in self.segments]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StagePlan":
        """The inverse of ``to_json``; ``target`` must be the plan's target name (a bundle
        manifest's stage carries the resolved ``TargetSpec`` JSON there: ``Bundle.load`` takes
        the name from the manifest's plan)."""
        if not isinstance(d["target"], str):
            raise ValueError(f"'target' of stage {d.get('index')} is {type(d['target']).__name__}, "
                             "not a target name")
        specs = lambda key: tuple(TensorSpec.from_json(t) for t in d[key])  # noqa: E731
        return cls(int(d["index"]), d["target"], tuple(str(n) for n in d["layers"]),
                   specs("inputs"), specs("outputs"), specs("library_inputs"),
                   specs("library_outputs"), int(d["param_bytes"]), int(d["flops"]),
                   tuple(Route.from_json(r) for r in d.get("sends", ())),
                   tuple(cls.from_json({**seg, "target": d["target"]})
                         for seg in d.get("segments", ())))


def chain_routes(stages: Sequence[StagePlan]) -> tuple[StagePlan, ...]:
    """Each stage sends all its outputs to the next one, the last to the client."""
    last = len(stages) - 1
    return tuple(replace(s, sends=(Route(s.index + 1 if s.index < last else CLIENT_END,
                                         tuple(t.name for t in s.outputs)),))
                 for s in stages)


@dataclass(frozen=True)
class Plan:
    """Stages in topological order; ``entry``: what the client sends to which stage. For a chain,
    ``cuts[s]`` are the tensors sent from stage s to stage s+1."""

    model: str
    model_sha256: str
    stages: tuple[StagePlan, ...]
    entry: tuple[Route, ...] = ()

    def __post_init__(self):
        if not self.entry and self.stages and not any(s.sends for s in self.stages):
            # a plan saved before routes existed: the chain it always was
            object.__setattr__(self, "stages", chain_routes(self.stages))
            object.__setattr__(self, "entry", (Route(0, tuple(t.name for t in self.stages[0].inputs)),))

    @property
    def is_chain(self) -> bool:
        """True when every stage sends only to the next one (and the last only to the client)."""
        last = len(self.stages) - 1
        return (tuple(r.to for r in self.entry) == (0,)
                and all(tuple(r.to for r in s.sends) == ((s.index + 1,) if s.index < last else (CLIENT_END,))
                        for s in self.stages))

    @property
    def routing(self) -> str:
        """``"chain"`` or ``"direct"`` (one of ``ROUTINGS``)."""
        return "chain" if self.is_chain else "direct"

    @property
    def cuts(self) -> tuple[tuple[TensorSpec, ...], ...]:
        if not self.is_chain:
            raise SplitError("a plan with direct routes has no chain of cuts; see each stage's sends")
        return tuple(s.outputs for s in self.stages[:-1])

    def senders(self, index: int) -> tuple[tuple[int, Route], ...]:
        """``(source, route)`` for every route into stage ``index`` (source ``CLIENT_END``: the
        client's entry), in source order."""
        into = [(CLIENT_END, r) for r in self.entry if r.to == index]
        into += [(s.index, r) for s in self.stages for r in s.sends if r.to == index]
        return tuple(into)

    def route_problems(self, inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
        """Why the routes cannot carry a request from the model ``inputs`` to its ``outputs``
        (empty when they can): every stage must receive each of its inputs exactly once, from an
        earlier stage or the client, and send exactly its outputs; the client sends only model
        inputs and receives each model output exactly once."""
        problems, n = [], len(self.stages)
        for src, routes in [(CLIENT_END, self.entry)] + [(s.index, s.sends) for s in self.stages]:
            dests = [r.to for r in routes]
            if len(set(dests)) != len(dests):
                problems.append(f"{end_name(src)} has two routes to one destination: {dests}")
            for r in routes:
                if not (r.to == CLIENT_END or src < r.to < n) or (src == CLIENT_END and r.to == CLIENT_END):
                    problems.append(f"{end_name(src)} sends to {end_name(r.to)}: routes go to a "
                                    "later stage or to the client")
                if not r.tensors:
                    problems.append(f"{end_name(src)} has an empty route to {end_name(r.to)}")
        sent = [n for r in self.entry for n in r.tensors]
        if not set(sent) <= set(inputs):
            problems.append(f"the client sends {sorted(set(sent) - set(inputs))}, which are not "
                            "model inputs")
        for s in self.stages:
            got = [name for _, r in self.senders(s.index) for name in r.tensors]
            want = [t.name for t in s.inputs]
            if sorted(got) != sorted(want):
                problems.append(f"stage {s.index} receives {sorted(got)} but takes {sorted(want)}")
            if {n for r in s.sends for n in r.tensors} != {t.name for t in s.outputs}:
                problems.append(f"stage {s.index} sends other tensors than its outputs")
        back = [name for _, r in self.senders(CLIENT_END) for name in r.tensors]
        if sorted(back) != sorted(outputs):
            problems.append(f"the client receives {sorted(back)}, the model outputs are "
                            f"{sorted(outputs)}")
        return problems

    def graph_problems(self, graph) -> list[str]:
        """Why this plan does not split ``graph`` (a ``LayerGraph``; empty when it does): every
        layer in exactly one stage, every tensor a stage names with the graph's dtype and shape,
        and routes from the graph's inputs to its outputs."""
        problems = []
        held = Counter(name for s in self.stages for name in s.layers)
        names = [layer.name for layer in graph.layers]
        known = set(names)
        unknown = [n for n in held if n not in known]
        missing = [n for n in names if n not in held]
        twice = [n for n, count in held.items() if count > 1]
        for what, which in (("layers the graph does not have", unknown),
                            ("layers in no stage", missing), ("layers in two stages", twice)):
            if which:
                problems.append(f"{what}: {', '.join(which[:8])}{', ...' if len(which) > 8 else ''}")
        specs = {t.name: t for t in graph.inputs}
        specs.update((t.name, t) for layer in graph.layers for t in layer.outputs)
        for s in self.stages:
            for t in dict.fromkeys((*s.inputs, *s.outputs, *s.library_inputs, *s.library_outputs)):
                have = specs.get(t.name)
                if have is None:
                    problems.append(f"stage {s.index} names tensor {t.name!r}, which the graph "
                                    "does not have")
                elif (have.dtype, tuple(have.shape)) != (t.dtype, tuple(t.shape)):
                    problems.append(f"stage {s.index}: tensor {t.name!r} is {t.dtype}"
                                    f"{list(t.shape)} in the plan, {have.dtype}{list(have.shape)} "
                                    "in the graph")
        return problems + self.route_problems([t.name for t in graph.inputs],
                                              [t.name for t in graph.outputs])

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_sha256": self.model_sha256,
                "stages": [s.to_json() for s in self.stages],
                "entry": [r.to_json() for r in self.entry]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Plan":
        return cls(str(d["model"]), str(d["model_sha256"]),
                   tuple(StagePlan.from_json(s) for s in d["stages"]),
                   tuple(Route.from_json(r) for r in d.get("entry", ())))


@dataclass(frozen=True)
class PlanFile:
    """A saved plan: the ``Plan`` to build as it is, and the horizontal splits (HyPS, layer ->
    H-parts) that turn the model into the graph the plan splits. The model it was made for is
    ``plan.model`` / ``plan.model_sha256``. The planner's report that ``planning.PlannedSplit``
    writes beside them is not read here (see the module doc for the format)."""

    plan: Plan
    horizontal: tuple[tuple[str, int], ...] = ()

    @property
    def model_sha256(self) -> str:
        return self.plan.model_sha256

    def to_json(self) -> dict[str, Any]:
        return {"version": PLAN_FILE_VERSION, "model": self.plan.model,
                "model_sha256": self.plan.model_sha256, "horizontal": dict(self.horizontal),
                "plan": self.plan.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "the plan") -> "PlanFile":
        """Read ``to_json``'s dict (extra keys are ignored); SplitError naming ``source`` and the
        fix on another version or a malformed file."""
        if not isinstance(d, Mapping):
            raise SplitError(f"{source} is not a plan saved by `tvmsplit plan --save` (a JSON "
                             f"object); save one with `tvmsplit plan ... --save FILE`")
        version = d.get("version")
        if version != PLAN_FILE_VERSION:
            got = "has no version (saved by an older tvmsplit)" if version is None else \
                f"is version {version!r}"
            raise SplitError(f"{source} {got}; this tvmsplit reads plan files of version "
                             f"{PLAN_FILE_VERSION}: save the plan again with `tvmsplit plan ... --save`")
        try:
            plan = Plan.from_json(d["plan"])
            horizontal = tuple(sorted((str(k), int(v)) for k, v in d.get("horizontal", {}).items()))
            if str(d["model_sha256"]) != plan.model_sha256:
                raise ValueError("'model_sha256' differs from the plan's")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SplitError(f"{source} is malformed (bad or missing field {exc}); save the plan "
                             "again with `tvmsplit plan ... --save`") from None
        if any(parts < 2 for _, parts in horizontal):
            raise SplitError(f"{source}: horizontal splits need at least 2 parts, got "
                             f"{dict(horizontal)}; save the plan again")
        return cls(plan, horizontal)

    def check_model(self, model_sha256: str, model: str = "the model",
                    source: str = "the plan") -> None:
        """SplitError naming both hashes when the plan was made for another model."""
        if model_sha256 != self.plan.model_sha256:
            raise SplitError(f"{source} was made for model {self.plan.model!r} (sha256 "
                             f"{self.plan.model_sha256[:16]}...), but {model} has sha256 "
                             f"{model_sha256[:16]}...; build it with the model it was planned "
                             "for, or plan this model again with `tvmsplit plan ... --save`")


def save_plan_file(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write a plan file's JSON (``PlanFile.to_json()`` or ``PlannedSplit.to_json()``)."""
    path = Path(path)
    PlanFile.from_json(data, str(path))  # never write what cannot be read back
    return write_json(path, data)


def read_plan_file(path: str | os.PathLike) -> PlanFile:
    """Read a plan saved by ``tvmsplit plan --save``; SplitError naming the file and the fix."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SplitError(f"cannot read plan file {str(path)!r} ({type(exc).__name__}: {exc}); "
                         "save one with `tvmsplit plan ... --save FILE`") from None
    return PlanFile.from_json(data, f"plan file {str(path)!r}")
