"""Plan from a block-chain profile, without ONNX: per-block compute times and output sizes.

A *block profile* is what other tools measure (Scission's per-block benchmarks, a spreadsheet
of timings): the model as a chain of blocks ``b0 -> b1 -> ...``, and for each block its compute
time on every device (ms) and the size of its output (bytes), plus the size of the input as the
end device sends it. :func:`read_block_profile` reads one from a file, :meth:`BlockProfile.graph`
and :meth:`BlockProfile.costs` turn it into the ``graph.LayerGraph`` (one layer per block, a
chain) and ``partition.CostTable`` that every planner takes, and :func:`plan_profile` plans it
like ``tvmsplit plan MODEL`` plans a model (``tvmsplit plan --profile FILE`` calls it).

The two file formats (README, "Planning from a profile"):

JSON::

    {"name": "vgg19",                  # optional; default: the file's stem
     "input_bytes": 150000,             # the input as the end device sends it
     "result_bytes": 0,                 # optional; default: the last block's output_bytes
     "devices": ["pi", "edge"],
     "blocks": [{"name": "b0", "output_bytes": 802816,
                 "compute_ms": {"pi": 120.5, "edge": 9.1}}, ...]}

CSV (header, then an ``input`` row, one row per block in order, optionally a ``result`` row)::

    block,output_bytes,pi_ms,edge_ms
    input,150000,,
    b0,802816,120.5,9.1
    ...
    result,0,,

``result_bytes`` is what returns to the end device after the last block: by default the last
block's output; a smaller figure when only, say, a label is sent back; 0 when the result is
consumed where the last block runs (nothing returned — Scission's convention).

Every problem in a file is reported at once, each naming its row/column (CSV) or key (JSON).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from .errors import TvmsplitError
from .graph import Layer, LayerGraph, TensorSpec

_JSON_KEYS = {"name", "input_bytes", "result_bytes", "devices", "blocks"}
_BLOCK_KEYS = {"name", "output_bytes", "compute_ms"}
_RESERVED = ("input", "result")
_SHOWN = 25  # problems listed in one message


class BlockProfileError(TvmsplitError):
    """A block profile is malformed; the message lists every problem, each with its place."""


@dataclass(frozen=True)
class BlockProfile:
    """A model as a chain of blocks: ``compute_ms[b][d]`` is block b's time on device d (ms),
    ``output_bytes[b]`` its output's size; ``input_bytes`` the input as the end device sends it;
    ``result_bytes`` what returns to the end device (None: the last block's output)."""

    name: str
    devices: tuple[str, ...]
    blocks: tuple[str, ...]
    compute_ms: tuple[tuple[float, ...], ...]
    output_bytes: tuple[int, ...]
    input_bytes: int
    result_bytes: int | None = None

    def __post_init__(self):
        problems = _check(self)
        if problems:
            raise BlockProfileError(_message(f"block profile {self.name!r}", problems))

    # ---- what the planners take ---------------------------------------------------------
    def graph(self) -> LayerGraph:
        """One layer per block, each reading its predecessor's output (the first: ``input``).
        Tensors are uint8 vectors of the given sizes; the last block's output (the model's
        output) has ``result_bytes`` when given. No weights, FLOPs or memory are known."""
        x = TensorSpec("input", "uint8", (self.input_bytes,))
        layers, prev = [], x
        last = len(self.blocks) - 1
        for b, (name, nbytes) in enumerate(zip(self.blocks, self.output_bytes)):
            if b == last and self.result_bytes is not None:
                nbytes = self.result_bytes
            out = TensorSpec(f"{name}:output", "uint8", (nbytes,))
            layers.append(Layer(name, "Block", (name,), ("Block",), (prev,), (out,), 0, 0, 0))
            prev = out
        return LayerGraph(self.name, tuple(layers), (x,), (prev,), self.sha256(), None)

    def costs(self, devices: Sequence[str] | None = None):
        """The ``partition.CostTable`` for ``devices`` (names, in path order; default: all)."""
        from .partition import CostTable

        names = tuple(self.devices if devices is None else devices)
        unknown = [d for d in names if d not in self.devices]
        if unknown:
            raise BlockProfileError(f"profile {self.name!r} has no times for device(s) "
                                    f"{', '.join(map(repr, unknown))}; it has "
                                    f"{', '.join(self.devices)}")
        cols = [self.devices.index(d) for d in names]
        return CostTable(names, self.blocks, tuple(tuple(row[c] for c in cols)
                                                   for row in self.compute_ms))

    # ---- files ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {"name": self.name, "input_bytes": self.input_bytes}
        if self.result_bytes is not None:
            out["result_bytes"] = self.result_bytes
        out["devices"] = list(self.devices)
        out["blocks"] = [{"name": b, "output_bytes": n, "compute_ms": dict(zip(self.devices, row))}
                         for b, n, row in zip(self.blocks, self.output_bytes, self.compute_ms)]
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        empty = [""] * len(self.devices)
        w.writerow(["block", "output_bytes", *(f"{d}_ms" for d in self.devices)])
        w.writerow(["input", self.input_bytes, *empty])
        for b, n, row in zip(self.blocks, self.output_bytes, self.compute_ms):
            w.writerow([b, n, *(repr(float(t)) for t in row)])
        if self.result_bytes is not None:
            w.writerow(["result", self.result_bytes, *empty])
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the profile as CSV (``.csv``) or JSON (any other suffix)."""
        path = Path(path)
        text = self.to_csv() if path.suffix.lower() == ".csv" else json.dumps(self.to_json(), indent=1)
        path.write_text(text)
        return path

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_time(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _check(p) -> list[str]:
    """Every problem of a profile's fields (a BlockProfile or the same fields in a namespace)."""
    problems = []
    if not (isinstance(p.name, str) and p.name):
        problems.append(f"name: must be a non-empty string, got {p.name!r}")
    if not p.devices:
        problems.append("no devices")
    for d in sorted({d for d in p.devices if list(p.devices).count(d) > 1}):
        problems.append(f"device {d!r} is listed twice")
    if not p.blocks:
        problems.append("no blocks")
    if len(p.output_bytes) != len(p.blocks) or len(p.compute_ms) != len(p.blocks):
        problems.append(f"{len(p.blocks)} blocks need as many output sizes and time rows (got "
                        f"{len(p.output_bytes)} and {len(p.compute_ms)})")
    seen = set()
    for b, name in enumerate(p.blocks):
        if not (isinstance(name, str) and name.strip()):
            problems.append(f"block {b + 1}: the name must be a non-empty string, got {name!r}")
        elif name in _RESERVED:
            problems.append(f"block {b + 1}: the name {name!r} is reserved (the input and "
                            f"result rows); rename the block")
        elif name in seen:
            problems.append(f"block {b + 1}: the name {name!r} repeats an earlier block")
        seen.add(name)
    for b, n in enumerate(p.output_bytes):
        if not _is_count(n):
            problems.append(f"block {b + 1}: output_bytes must be an integer >= 0, got {n!r}")
    for b, row in enumerate(p.compute_ms):
        if len(row) != len(p.devices) or not all(_is_time(t) for t in row):
            problems.append(f"block {b + 1}: needs one finite time >= 0 (ms) per device "
                            f"{list(p.devices)}, got {list(row)}")
    if not _is_count(p.input_bytes):
        problems.append(f"input_bytes must be an integer >= 0, got {p.input_bytes!r}")
    if p.result_bytes is not None and not _is_count(p.result_bytes):
        problems.append(f"result_bytes must be an integer >= 0 or absent, got {p.result_bytes!r}")
    return problems


def _message(what: str, problems: list[str]) -> str:
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return (f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:_SHOWN]) + more
            + "\n(the format: README, 'Planning from a profile')")


def _count(text: str) -> int:
    """A byte count from a CSV cell: an integer, also written as ``802816.0`` or ``8.0e5``."""
    v = float(text)
    if not (math.isfinite(v) and v >= 0 and v == int(v)):
        raise ValueError
    return int(v)


def parse_csv(text: str, name: str, source: str) -> BlockProfile:
    rows = [(k + 1, r) for k, r in enumerate(csv.reader(io.StringIO(text))) if any(c.strip() for c in r)]
    problems: list[str] = []
    if not rows:
        raise BlockProfileError(_message(source, ["the file is empty; expected the header "
                                                  "block,output_bytes,<device>_ms,..."]))
    line, header = rows[0]
    header = [h.strip() for h in header]
    if header[:2] != ["block", "output_bytes"] or len(header) < 3:
        problems.append(f"line {line}: the header must be block,output_bytes,<device>_ms,... "
                        f"(one time column per device, in ms), got {','.join(header)}")
    devices = []
    for col, h in enumerate(header[2:], start=3):
        if not h.endswith("_ms") or h == "_ms":
            problems.append(f"line {line}, column {col} ({h!r}): a device column is named "
                            f"<device>_ms (times in ms), e.g. {h or 'pi'}_ms")
        devices.append(h[:-3] if h.endswith("_ms") else h)
    input_bytes = result_bytes = None
    blocks, outputs, times = [], [], []
    for line, r in rows[1:]:
        cells = [c.strip() for c in r]
        where = f"line {line}"
        if len(cells) != len(header):
            problems.append(f"{where}: {len(cells)} cells, the header has {len(header)}")
            continue
        block = cells[0]
        where = f"line {line} ({block or 'no name'})"
        try:
            nbytes = _count(cells[1])
        except ValueError:
            problems.append(f"{where}, column 2 (output_bytes): {cells[1]!r} is not an integer "
                            f"number of bytes >= 0")
            nbytes = 0
        if block in _RESERVED:
            if any(cells[2:]):
                problems.append(f"{where}: the {block} row holds only a size (bytes); leave its "
                                f"time cells empty")
            if (input_bytes if block == "input" else result_bytes) is not None:
                problems.append(f"{where}: a second {block} row")
            if block == "input":
                input_bytes = nbytes
                if blocks:
                    problems.append(f"{where}: the input row comes before the blocks")
            else:
                result_bytes = nbytes
            continue
        if result_bytes is not None:
            problems.append(f"{where}: a block after the result row (the result row comes last)")
        row = []
        for col, (d, cell) in enumerate(zip(devices, cells[2:]), start=3):
            try:
                t = float(cell)
                if not (math.isfinite(t) and t >= 0):
                    raise ValueError
                row.append(t)
            except ValueError:
                problems.append(f"{where}, column {col} ({d}_ms): {cell!r} is not a time in "
                                f"ms >= 0")
                row.append(0.0)
        blocks.append(block)
        outputs.append(nbytes)
        times.append(tuple(row))
    if input_bytes is None:
        problems.append("no input row: add `input,<bytes>` after the header (the input as the "
                        "end device sends it)")
    if not blocks:
        problems.append("no block rows")
    return _finish(source, problems, name=name, devices=tuple(devices), blocks=tuple(blocks),
                  compute_ms=tuple(times), output_bytes=tuple(outputs),
                  input_bytes=input_bytes, result_bytes=result_bytes)


def parse_json(data, name: str, source: str) -> BlockProfile:
    if not isinstance(data, Mapping):
        raise BlockProfileError(_message(source, [f"expected a JSON object, got {type(data).__name__}"]))
    problems = [f"unknown key {k!r} (keys: {', '.join(sorted(_JSON_KEYS))})"
                for k in data if k not in _JSON_KEYS]
    name = data.get("name", name)
    if "input_bytes" not in data:
        problems.append("input_bytes: missing (the input as the end device sends it, bytes)")
    devices = data.get("devices")
    if not (isinstance(devices, list) and devices and all(isinstance(d, str) and d for d in devices)):
        problems.append(f"devices: must be a non-empty list of device names, got {devices!r}")
        devices = []
    blocks = data.get("blocks")
    if not (isinstance(blocks, list) and blocks):
        problems.append("blocks: must be a non-empty list of {name, output_bytes, compute_ms}")
        blocks = []
    names, outputs, times = [], [], []
    for b, block in enumerate(blocks):
        where = f"blocks[{b}]"
        if not isinstance(block, Mapping):
            problems.append(f"{where}: must be an object {{name, output_bytes, compute_ms}}")
            continue
        bname = block.get("name")
        if isinstance(bname, str) and bname:
            where += f" ({bname})"
        else:
            problems.append(f"{where}.name: must be a non-empty string, got {bname!r}")
            bname = ""
        problems += [f"{where}: unknown key {k!r} (keys: name, output_bytes, compute_ms)"
                     for k in block if k not in _BLOCK_KEYS]
        nbytes = block.get("output_bytes")
        if not _is_count(nbytes):
            problems.append(f"{where}.output_bytes: must be an integer >= 0 (bytes), got {nbytes!r}")
            nbytes = 0
        ms = block.get("compute_ms")
        row = []
        if not isinstance(ms, Mapping):
            problems.append(f"{where}.compute_ms: must be an object {{device: ms}}, got {ms!r}")
            ms = {}
        extra = [k for k in ms if k not in devices]
        if extra and devices:
            problems.append(f"{where}.compute_ms: device(s) {', '.join(map(repr, extra))} are not "
                            f"in devices {devices}")
        for d in devices:
            t = ms.get(d)
            if not _is_time(t):
                problems.append(f"{where}.compute_ms.{d}: " + ("missing" if t is None else
                                f"must be a time in ms >= 0, got {t!r}"))
                t = 0.0
            row.append(float(t))
        names.append(bname)
        outputs.append(nbytes)
        times.append(tuple(row))
    return _finish(source, problems, name=name, devices=tuple(devices), blocks=tuple(names),
                  compute_ms=tuple(times), output_bytes=tuple(outputs),
                  input_bytes=data.get("input_bytes", 0), result_bytes=data.get("result_bytes"))


def _finish(source: str, problems: list[str], **fields) -> BlockProfile:
    """The profile, or every problem at once: the parser's and the profile's own checks."""
    problems = problems + _check(SimpleNamespace(**fields))
    if problems:
        raise BlockProfileError(_message(source, problems))
    return BlockProfile(**fields)


def read_block_profile(path: str | Path) -> BlockProfile:
    """A block profile from a ``.csv`` or ``.json`` file (formats: the module doc, README)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BlockProfileError(f"cannot read the profile {str(path)!r}: {exc}") from None
    if path.suffix.lower() == ".csv":
        return parse_csv(text, path.stem, str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BlockProfileError(f"{path}: not JSON ({exc}); a profile is a .json or .csv file "
                                "(README, 'Planning from a profile')") from None
    return parse_json(data, path.stem, str(path))


def plan_profile(profile: BlockProfile | str | Path, devices, links, **options):
    """Plan a block profile like ``planning.plan_partition`` plans a model: ``devices`` are
    ``Device``s (their names as in the profile, in path order, end first), ``links`` one
    ``Link`` per hop; ``options`` go to ``plan_partition`` (objective, method, pins,
    input_bytes, ...). Returns its ``PlannedSplit`` (layers = blocks)."""
    from .planning import plan_partition

    if not isinstance(profile, BlockProfile):
        profile = read_block_profile(profile)
    costs = profile.costs([d.name for d in devices])
    return plan_partition(profile.graph(), devices, links, costs, **options)
