"""Targets: the device kinds stages are compiled for, one TOML file each (like TVM's tag registry).

A target is a *kind* of device (``rpi4b``, ``x86_64``, ``cuda-edge``, ``host``); a
:class:`tvmsplit.devices.Device` on a plan's path names one (``--devices end=rpi4b``), and
``tvmsplit build --targets``, ``tune``/``profile``/``train``/``predict --target`` take its name.
``get_target(name)`` returns its :class:`TargetSpec`; ``tvmsplit targets`` lists them all.

How to add a target
-------------------
Add one file, ``targets/<name>.toml`` (or put it in your own directory, see "How it is found"),
with these fields::

    # Raspberry Pi 4 Model B                      (a comment: where the numbers come from)
    name = "rpi4b"                     # required; unique across all directories; what users type
    description = "Raspberry Pi 4B"    # one line for `tvmsplit targets`
    arch = "aarch64"                   # required; the CPU of the machine that loads the library:
                                       #   a CPU target runs here (``runs_on_host``) only when
                                       #   kind = "llvm" and arch is this machine's
    memory_bytes = 4294967296          # the machine's memory, recorded with the target; the
                                       #   planner's cap is a Device's mem_cap_bytes
                                       #   (`plan --mem-cap`), not this
    [target]                           # required: a TVM target as a dict, passed as it is to
    kind = "llvm"                      #   tvm.target.Target (a string like "llvm -mtriple=..."
    mtriple = "aarch64-linux-gnu"      #   is rejected by TVM 0.27); every attribute of the
    mcpu = "cortex-a72"                #   kind is allowed; "kind" is required, and a "cuda"
    mattr = ["+neon"]                  #   target needs "arch" (e.g. "sm_80": TVM would
    num-cores = 4                      #   silently use sm_50)
    [host]                             # optional: the host target of a GPU target, same form
    kind = "llvm"
    [build]
    cross_compiler = "aarch64-linux-gnu-g++"   # optional: links the library for another arch;
                                               #   check_toolchain says when it is missing
    conv_layout = "NCHW"               # optional: the convolutions' layout in the compiled code
                                       #   (graphopt.CONV_LAYOUTS: NCHW, NHWC, NCHW8c, NCHW16c);
                                       #   the stage's inputs/outputs stay NCHW either way

``num-cores`` in ``[target]`` is the device's physical core count; MetaSchedule needs it to tune
(``tvmsplit tune``; a target that runs on this machine defaults to this machine's count).

``"@host"``: the value ``"@host"`` means "detect it on this machine when the file is loaded";
it works for ``arch`` (``platform.machine()``, as ``x86_64`` / ``aarch64``), ``memory_bytes``
(total RAM), ``mtriple`` (``<arch>-linux-gnu``), ``mcpu`` (LLVM's name for this CPU, ``generic``
without LLVM) and ``num-cores`` (physical cores), at the top level and in ``[target]`` /
``[host]`` (not in ``[build]``); for any other key it is an error. ``targets/host.toml`` is
this machine's CPU.

How it is found: ``get_target`` takes a name or the path of a ``.toml`` file (read directly,
not registered). Names are looked up in every ``*.toml`` of the directories in
``$TVMSPLIT_TARGETS`` (``os.pathsep``-separated), then in the built-in ``targets/`` next to the
package and its ``targets/capped/`` (the testbed's cgroup-capped end devices, whose extra
``[capped]`` table :mod:`tvmsplit.testbed.capped` reads; this module ignores it, as it does a
``[worker]`` table, ``kind = "native"`` for the C++ worker, read by ``runtime.launch``); the file name does not matter, the ``name`` field does. A name defined twice (in any two
files) is an error naming both; a miss lists the known names. The registry is read once per
process (per value of ``$TVMSPLIT_TARGETS``).

What to run after adding one::

    tvmsplit targets                                     # it is listed; the file parses
    tvmsplit build zoo:chain --split-at pool1 --targets x86_64,<name> -o /tmp/t --check
    python3 -m pytest -q tests/test_cli.py -k targets_lists       # add a built-in to TARGETS
    python3 -m pytest -q tests/test_errors.py -k unknown_target   # and to KNOWN_TARGETS
    python3 -m pytest -q tests/test_split_build.py -k aarch64     # cross builds (aarch64, cuda)
    python3 -m pytest -q tests/test_tune.py -k host_target        # when it uses "@host"

A target that runs here is checked against onnxruntime by ``build --check``; one that does not
is compiled only (a cross compiler for another arch, CUDA C source for a GPU target) and is run
on the device over TVM RPC (``rpc/README.md``) or on the testbed's qemu device (aarch64).
"""
from __future__ import annotations

import os
import platform
import shutil
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import TargetError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"
# The testbed's capped end devices (pi-class, phone-class): targets with a [capped] table, read
# by tvmsplit.testbed.capped; kept apart so targets/ lists real device kinds first.
CAPPED_DIR = BUILTIN_DIR / "capped"


@dataclass(frozen=True)
class TargetSpec:
    """One device kind: its TVM target, how to link for it, and what the machine is."""

    name: str
    description: str
    arch: str
    memory_bytes: int
    target: tuple[tuple[str, Any], ...]
    host: tuple[tuple[str, Any], ...] | None = None
    cross_compiler: str | None = None
    source: str = ""
    conv_layout: str = "NCHW"  # [build] conv_layout: graphopt.CONV_LAYOUTS (the convs' layout)

    @property
    def kind(self) -> str:
        return str(dict(self.target)["kind"])

    @property
    def target_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.target}

    @property
    def host_dict(self) -> dict[str, Any] | None:
        if self.host is None:
            return None
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.host}

    @property
    def runs_on_host(self) -> bool:
        """True when this machine can execute the library (a CPU target of this machine's arch)."""
        return self.kind == "llvm" and self.arch == host_arch()

    def tvm_target(self):
        import tvm

        if self.host is None:
            return tvm.target.Target(self.target_dict)
        return tvm.target.Target(self.target_dict, host=self.host_dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "arch": self.arch,
                "memory_bytes": self.memory_bytes, "target": self.target_dict,
                "host": self.host_dict, "cross_compiler": self.cross_compiler,
                **({"conv_layout": self.conv_layout} if self.conv_layout != "NCHW" else {})}


def host_cores() -> int:
    """Physical cores of this machine (what MetaSchedule's ``num-cores`` means)."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return int(os.cpu_count() or 1)


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


HOST = "@host"


def _host_value(key: str) -> Any:
    """What ``"@host"`` stands for under ``key`` on this machine."""
    if key == "arch":
        return host_arch()
    if key == "mtriple":
        return f"{host_arch()}-linux-gnu"
    if key == "num-cores":
        return host_cores()
    if key == "memory_bytes":
        try:
            import psutil

            return int(psutil.virtual_memory().total)
        except ImportError:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if key == "mcpu":
        try:
            from tvm.target import codegen

            return str(codegen.llvm_get_system_cpu())
        except (ImportError, AttributeError):  # a runtime-only TVM has no LLVM
            return "generic"
    raise TargetError(f"'@host' is not detectable for {key!r}; it works for arch, memory_bytes, "
                      "mtriple, mcpu, num-cores")


def _resolve_host(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_host_value(k) if v == HOST else v) for k, v in d.items()}


def parse_target_file(path: str | os.PathLike) -> TargetSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"cannot read target file {str(path)!r}: {exc}") from None
    data = _resolve_host(data)
    for section in ("target", "host"):
        if isinstance(data.get(section), dict):
            data[section] = _resolve_host(data[section])
    problems = [f"missing '{key}'" for key in ("name", "arch", "target") if key not in data]
    target = data.get("target", {})
    if isinstance(target, dict) and "kind" not in target:
        problems.append("[target] has no 'kind'")
    if isinstance(target, dict) and target.get("kind") == "cuda" and "arch" not in target:
        problems.append("a cuda [target] needs 'arch' (e.g. \"sm_80\"), else TVM silently uses sm_50")
    if problems:
        raise TargetError(f"target file {str(path)!r}: {'; '.join(problems)}")
    build = data.get("build", {})
    from .graphopt import CONV_LAYOUTS

    layout = str(build.get("conv_layout", "NCHW"))
    if layout not in CONV_LAYOUTS:
        raise TargetError(f"target file {str(path)!r}: [build] conv_layout = {layout!r} is not one "
                          f"of {', '.join(CONV_LAYOUTS)}")
    return TargetSpec(
        name=str(data["name"]), description=str(data.get("description", "")),
        arch=str(data["arch"]), memory_bytes=int(data.get("memory_bytes", 0)),
        target=_freeze(target), host=_freeze(data["host"]) if "host" in data else None,
        cross_compiler=build.get("cross_compiler"), source=str(path), conv_layout=layout)


def target_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("TVMSPLIT_TARGETS", "").split(os.pathsep) if p]
    return [*dirs, BUILTIN_DIR, CAPPED_DIR]


@cache
def _registry(dirs: tuple[Path, ...]) -> dict[str, TargetSpec]:
    registry: dict[str, TargetSpec] = {}
    for d in dirs:
        for path in sorted(d.glob("*.toml")) if d.is_dir() else []:
            spec = parse_target_file(path)
            if spec.name in registry:
                raise TargetError(f"target {spec.name!r} is defined twice: "
                                  f"{registry[spec.name].source} and {spec.source}")
            registry[spec.name] = spec
    return registry


def known_targets() -> dict[str, TargetSpec]:
    return dict(_registry(tuple(target_dirs())))


def get_target(name_or_path: str | TargetSpec) -> TargetSpec:
    """A target by name (from targets/) or by the path of a .toml file."""
    if isinstance(name_or_path, TargetSpec):
        return name_or_path
    if name_or_path.endswith(".toml"):
        return parse_target_file(name_or_path)
    registry = known_targets()
    if name_or_path not in registry:
        raise TargetError(f"unknown target {name_or_path!r}; known: {', '.join(sorted(registry))} "
                          f"(or give a .toml file; add one to {BUILTIN_DIR})")
    return registry[name_or_path]


def check_toolchain(spec: TargetSpec) -> None:
    """Raise TargetError when the cross compiler a target needs is not installed."""
    if spec.cross_compiler and shutil.which(spec.cross_compiler) is None:
        raise TargetError(f"target {spec.name!r} needs the cross compiler {spec.cross_compiler!r}, "
                          "which is not installed (Debian: apt-get install g++-aarch64-linux-gnu)")
