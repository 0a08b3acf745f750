"""A cgroup as a resource: CPU quota/period, a cpuset, a memory limit; cgroup v1 and v2.

    limits = Limits(cpu_quota_us=1000, cpu_period_us=10_000, cpus="0", memory_max_bytes=1 << 30)
    with Cgroup("tvmsplit-tb0-end", limits) as cg:        # created, limits written
        subprocess.run([*cg.prefix(), "python", "-c", "..."])   # runs inside from its first instruction
        cg.pids()                                          # what is inside now
    # removed on exit: whatever is still inside is killed first (it was started by us)

Which hierarchy: :func:`detect` reads ``/proc/self/mountinfo``. Where the controllers a limit
needs are mounted as cgroup v1 (``/sys/fs/cgroup/{cpu,cpuset,memory}``) it uses those, one
directory per controller, each created under this process's own cgroup in that hierarchy (so a
limit set on us, e.g. memory, still applies); otherwise the unified cgroup v2 hierarchy, under
``<mount>/tvmsplit/`` with the controllers enabled in ``cgroup.subtree_control`` on the way.

Files written (v1 / v2):

- CPU: ``cpu.cfs_period_us`` + ``cpu.cfs_quota_us`` / ``cpu.max`` ("QUOTA PERIOD"). The process
  gets ``quota`` µs of CPU time per ``period``, i.e. a fraction ``quota / period`` of one core;
  a short period (10 ms) slows millisecond kernels smoothly, a long one (100 ms) in bursts
  (BENCHMARKS.md, "Capped end device"). Quotas under 1 ms are refused (so does the kernel).
- cpuset: ``cpuset.cpus`` (+ ``cpuset.mems``, copied from the parent: v1 needs both before a
  task can join) / ``cpuset.cpus``. Unlike ``taskset``, a process cannot widen it by itself
  (TVM's thread pool sets its threads' affinity).
- memory: ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` when present, so swap
  does not hide it) / ``memory.max`` (+ ``memory.swap.max`` 0).

A process joins by :meth:`Cgroup.prefix` (``cgexec.py``: writes its own pid, then execs the
command; nothing runs uncapped) or :meth:`Cgroup.add`.

Uncapped start (``Cgroup(name, limits, boot=True)``): a process may start outside the CPU quota
(``prefix(boot=True)``) and be capped once it is ready (:meth:`Cgroup.cap`). It stays on the same
cpuset and under the same memory limit throughout; only its CPU quota waits. v1: a sibling
directory ``NAME-boot`` in the cpu hierarchy without a quota (the cpuset and memory directories
are shared). v2, where a process is in one directory only: ``NAME`` holds the cpuset and the
memory limit and has two children, ``NAME/capped`` (``cpu.max``) and ``NAME/boot`` (none). A
worker that imports TVM at 10 % of a core takes 10-20 s to start; uncapped, 1-2 s, and the
requests it serves run capped all the same. :meth:`Cgroup.remove` kills what is
left inside and removes the directories; :func:`remove_dirs` does it from a record (the
testbed's ``state.json``) in another process. Needs root (or a delegated, writable hierarchy);
:func:`unavailable_reason` says why not, with the fix.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .profiles import TestbedError

CGEXEC = Path(__file__).resolve().with_name("cgexec.py")
MIN_QUOTA_US = 1000            # the kernel refuses less (EINVAL)
MIN_PERIOD_US, MAX_PERIOD_US = 1000, 1_000_000
V2_PARENT = "tvmsplit"


class CgroupError(TestbedError):
    """A cgroup cannot be made, written, joined or removed; the message names the path and fix."""


@dataclass(frozen=True)
class Limits:
    """What a cgroup enforces; None: not limited. ``cpus`` is a cpuset list (``"0"``, ``"1-3"``)."""

    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    cpus: str | None = None
    memory_max_bytes: int | None = None

    def __post_init__(self):
        problems = []
        q, p = self.cpu_quota_us, self.cpu_period_us
        if not (isinstance(p, int) and MIN_PERIOD_US <= p <= MAX_PERIOD_US):
            problems.append(f"cpu_period_us must be an int in {MIN_PERIOD_US}..{MAX_PERIOD_US} "
                            f"(1 ms .. 1 s), got {p!r}")
        if q is not None and not (isinstance(q, int) and q >= MIN_QUOTA_US):
            problems.append(f"cpu_quota_us must be an int >= {MIN_QUOTA_US} (the kernel refuses "
                            f"quotas under 1 ms), got {q!r}: use a longer period for a small "
                            "fraction")
        if self.cpus is not None and not _cpus_ok(self.cpus):
            problems.append(f"cpus must be a cpuset list like '0' or '1-3', got {self.cpus!r}")
        m = self.memory_max_bytes
        if m is not None and not (isinstance(m, int) and m >= 1 << 20):
            problems.append(f"memory_max_bytes must be an int >= 1 MiB, got {m!r}")
        if problems:
            raise CgroupError("cgroup limits: " + "; ".join(problems))

    @classmethod
    def fraction(cls, fraction: float, period_us: int = 10_000, **kw) -> "Limits":
        """``fraction`` of one core: quota = round(fraction x period)."""
        if not (0 < fraction <= 64):
            raise CgroupError(f"cpu fraction must be > 0 (of one core), got {fraction!r}")
        return cls(cpu_quota_us=int(round(fraction * period_us)), cpu_period_us=period_us, **kw)

    @property
    def cpu_fraction(self) -> float | None:
        return None if self.cpu_quota_us is None else self.cpu_quota_us / self.cpu_period_us

    def controllers(self) -> tuple[str, ...]:
        return tuple(c for c, need in (("cpu", self.cpu_quota_us is not None),
                                       ("cpuset", self.cpus is not None),
                                       ("memory", self.memory_max_bytes is not None)) if need)


def _cpus_ok(text: str) -> bool:
    try:
        return bool(parse_cpus(text))
    except ValueError:
        return False


def parse_cpus(text: str) -> list[int]:
    """``"0,2-3"`` -> ``[0, 2, 3]`` (ValueError when malformed)."""
    out: list[int] = []
    for part in str(text).strip().split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a < 0 or b < a:
            raise ValueError(text)
        out += range(a, b + 1)
    return sorted(set(out))


# ------------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class Hierarchy:
    """Where the controllers live: ``version`` 1 (``v1``: controller -> mount point) or 2
    (``v2``: the unified mount point)."""

    version: int
    v1: tuple[tuple[str, str], ...] = ()
    v2: str | None = None

    def mount(self, controller: str) -> Path | None:
        return next((Path(m) for c, m in self.v1 if c == controller), None)


def _mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every mount."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3:
            out.append((f[3], f[4], r[0], set(r[2].split(","))))
    return out


def detect(mountinfo: str = "/proc/self/mountinfo",
           needed: Sequence[str] = ("cpu", "cpuset", "memory")) -> Hierarchy:
    """The hierarchy that has every controller of ``needed``: v1 when they are all mounted as
    v1 (a hybrid system's unified mount then has none), else v2. CgroupError when neither."""
    v1: dict[str, str] = {}
    v2 = None
    for _root, point, fstype, opts in _mountinfo(mountinfo):
        if fstype == "cgroup":
            for c in ("cpu", "cpuset", "memory"):
                if c in opts and c not in v1:
                    v1[c] = point
        elif fstype == "cgroup2" and v2 is None:
            v2 = point
    if all(c in v1 for c in needed):
        return Hierarchy(1, v1=tuple(sorted(v1.items())))
    if v2 is not None:
        have = set(_read(Path(v2) / "cgroup.controllers").split())
        if all(c in have for c in needed):
            return Hierarchy(2, v2=v2)
    missing = [c for c in needed if c not in v1]
    raise CgroupError(f"no cgroup hierarchy has the controller(s) {', '.join(needed)}: cgroup v1 "
                      f"lacks {', '.join(missing)} and the unified (v2) hierarchy "
                      f"{'is not mounted' if v2 is None else f'at {v2} does not offer them'}; "
                      "mount them (e.g. `mount -t cgroup -o cpu,cpuacct cgroup "
                      "/sys/fs/cgroup/cpu`) or boot with the unified hierarchy")


def _own_path(controller: str | None, proc_cgroup: str = "/proc/self/cgroup") -> str:
    """This process's cgroup in the v1 hierarchy of ``controller`` (None: the v2 one)."""
    for line in _read(Path(proc_cgroup)).splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if (controller is None and hid == "0") or (controller in ctrls.split(",")):
            return path or "/"
    return "/"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, value: Any) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        hint = ("run as root" if exc.errno in (errno.EACCES, errno.EPERM) else
                "the kernel refused the value" if exc.errno == errno.EINVAL else str(exc))
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc} ({hint})") \
            from None


# ---------------------------------------------------------------------------------- cgroup
class Cgroup:
    """One cgroup named ``name`` with ``limits``; a context manager (create / remove).
    ``hierarchy`` defaults to :func:`detect` for the controllers the limits need;
    ``mountinfo``/``proc_cgroup`` exist for tests on a fake tree."""

    def __init__(self, name: str, limits: Limits = Limits(), *,
                 hierarchy: Hierarchy | None = None, proc_cgroup: str = "/proc/self/cgroup",
                 boot: bool = False):
        if not name or "/" in name or name.startswith("."):
            raise CgroupError(f"cgroup name must be a plain directory name, got {name!r}")
        if boot and limits.cpu_quota_us is None:
            raise CgroupError(f"cgroup {name}: an uncapped start (boot=True) needs a CPU quota "
                              "to wait for")
        self.name, self.limits, self.boot = name, limits, boot
        self.hierarchy = hierarchy or detect(needed=limits.controllers() or ("cpu",))
        self._proc_cgroup = proc_cgroup
        self.dirs: list[Path] = self._dirs()            # where its processes run, capped
        self.boot_dirs: list[Path] = self._dirs(boot=True) if boot else []  # where they start
        self.created: list[Path] = []

    def _controller_dirs(self) -> dict[str, Path]:
        """controller -> the directory its limit is written to (v2: one for all)."""
        h = self.hierarchy
        if h.version == 2:
            top = Path(h.v2) / V2_PARENT / self.name
            return {c: top / "capped" if self.boot and c == "cpu" else top
                    for c in self.limits.controllers() or ("cpu",)}
        return {c: h.mount(c) / _own_path(c, self._proc_cgroup).lstrip("/") / self.name
                for c in self.limits.controllers() or ("cpu",)}

    def _dirs(self, boot: bool = False) -> list[Path]:
        """The directories a process is in (one per v1 hierarchy; one in v2)."""
        if self.hierarchy.version == 2:
            top = Path(self.hierarchy.v2) / V2_PARENT / self.name
            return [top / ("boot" if boot else "capped")] if self.boot else [top]
        return [d.with_name(f"{self.name}-boot") if boot and c == "cpu" else d
                for c, d in self._controller_dirs().items()]

    def _to_make(self) -> list[Path]:
        """Every directory, parents before children."""
        out: list[Path] = []
        for d in [*self._controller_dirs().values(), *self.dirs, *self.boot_dirs]:
            if d not in out:
                out.append(d)
        return sorted(out, key=lambda d: len(d.parts))

    def dir_of(self, controller: str) -> Path:
        """The directory that holds ``controller``'s limit."""
        try:
            return self._controller_dirs()[controller]
        except KeyError:
            raise CgroupError(f"cgroup {self.name} has no {controller} limit") from None

    # ------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Cgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()

    def create(self) -> "Cgroup":
        """Make the directories and write the limits; on any failure remove what was made."""
        try:
            if self.hierarchy.version == 2:
                self._prepare_v2()
            for d in self._to_make():
                try:
                    d.mkdir()
                except FileExistsError:
                    raise CgroupError(f"cgroup {d} exists already (a testbed still up, or left "
                                      "by a crash: `python -m tvmsplit.testbed down`)") from None
                except OSError as exc:
                    raise CgroupError(f"cannot create cgroup {d}: {exc.strerror or exc} "
                                      f"({unavailable_hint(exc)})") from None
                self.created.append(d)
                if self.boot and self.hierarchy.version == 2 and d.name == self.name:
                    _enable(d, ["cpu"])  # the parent of capped/ and boot/
            self._write_limits()
        except BaseException:
            self.remove()
            raise
        return self

    def _prepare_v2(self) -> None:
        root = Path(self.hierarchy.v2)
        parent = root / V2_PARENT
        want = [c for c in ("cpu", "cpuset", "memory") if c in self.limits.controllers()]
        _enable(root, want)
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {parent}: {exc.strerror or exc} "
                                  f"({unavailable_hint(exc)})") from None
        _enable(parent, want)

    def _write_limits(self) -> None:
        lim, v2 = self.limits, self.hierarchy.version == 2
        if lim.cpu_quota_us is not None:
            d = self.dir_of("cpu")
            if v2:
                _write(d / "cpu.max", f"{lim.cpu_quota_us} {lim.cpu_period_us}")
            else:
                _write(d / "cpu.cfs_period_us", lim.cpu_period_us)
                _write(d / "cpu.cfs_quota_us", lim.cpu_quota_us)
        if lim.cpus is not None:
            d = self.dir_of("cpuset")
            _write(d / "cpuset.cpus", lim.cpus)
            if not v2:
                _write(d / "cpuset.mems", _read(d.parent / "cpuset.mems") or "0")
        if lim.memory_max_bytes is not None:
            d = self.dir_of("memory")
            if v2:
                _write(d / "memory.max", lim.memory_max_bytes)
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", 0)
            else:
                _write(d / "memory.limit_in_bytes", lim.memory_max_bytes)
                if (d / "memory.memsw.limit_in_bytes").exists():
                    _write(d / "memory.memsw.limit_in_bytes", lim.memory_max_bytes)

    def read_limits(self) -> dict[str, Any]:
        """What the kernel holds now (for tests and status): the files, as read back."""
        out: dict[str, Any] = {"version": self.hierarchy.version}
        for c in self.limits.controllers():
            d = self.dir_of(c)
            names = {("cpu", 1): ("cpu.cfs_quota_us", "cpu.cfs_period_us"), ("cpu", 2): ("cpu.max",),
                     ("cpuset", 1): ("cpuset.cpus", "cpuset.mems"), ("cpuset", 2): ("cpuset.cpus",),
                     ("memory", 1): ("memory.limit_in_bytes",), ("memory", 2): ("memory.max",)}
            for n in names[(c, self.hierarchy.version)]:
                out[n] = _read(d / n)
        return out

    def memory_use(self) -> dict[str, int | None]:
        """The memory the kernel charges to this cgroup (bytes; None where the kernel has no
        such file): ``current`` now and ``peak`` since it was made (v1
        ``memory.usage_in_bytes``/``memory.max_usage_in_bytes``; v2 ``memory.current``/
        ``memory.peak``, Linux >= 5.19), and ``oom_kills`` (v2 ``memory.events`` /
        v1 ``memory.oom_control``): the processes the limit killed. Unlike summing each
        process's peak RSS, this is the device's real peak: its processes at the same moment,
        with the page cache it could not drop."""
        d = self.dir_of("memory")
        v2 = self.hierarchy.version == 2

        def number(name: str) -> int | None:
            try:
                return int(_read(d / name))
            except (ValueError, TypeError, CgroupError, OSError):
                return None

        current = number("memory.current" if v2 else "memory.usage_in_bytes")
        peak = number("memory.peak" if v2 else "memory.max_usage_in_bytes")
        kills = None
        try:
            for line in _read(d / ("memory.events" if v2 else "memory.oom_control")).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    kills = int(value)
        except (ValueError, CgroupError, OSError):
            pass
        return {"current": current, "peak": peak, "oom_kills": kills}

    # ------------------------------------------------------------------------- processes
    def prefix(self, python: str = sys.executable, *, boot: bool = False) -> list[str]:
        """A command prefix that runs the rest of the command line inside this cgroup (put it
        before ``ip netns exec``, which hides ``/sys/fs/cgroup``). ``boot``: without the CPU
        quota until :meth:`cap` (needs ``Cgroup(boot=True)``)."""
        if not self.created:
            raise CgroupError(f"cgroup {self.name} is not created")
        if boot and not self.boot:
            raise CgroupError(f"cgroup {self.name} has no uncapped start: Cgroup(boot=True)")
        args = [python, str(CGEXEC)]
        for d in self.boot_dirs if boot else self.dirs:
            args += ["--cgroup", str(d)]
        return [*args, "--"]

    def add(self, pid: int) -> None:
        for d in self.dirs:
            _write(d / "cgroup.procs", pid)

    def cap(self, pid: int) -> None:
        """Put ``pid`` (started with ``prefix(boot=True)``), all its threads, under the CPU
        quota; its cpuset and memory cgroup do not change."""
        for d in self.dirs:
            if d not in self.boot_dirs:
                _write(d / "cgroup.procs", pid)

    def pids(self) -> set[int]:
        return pids_in([*self.dirs, *self.boot_dirs])

    def to_json(self) -> dict[str, Any]:
        lim = self.limits
        return {"name": self.name, "version": self.hierarchy.version, "boot": self.boot,
                "dirs": [str(d) for d in self.created],
                "limits": {"cpu_quota_us": lim.cpu_quota_us, "cpu_period_us": lim.cpu_period_us,
                           "cpus": lim.cpus, "memory_max_bytes": lim.memory_max_bytes}}

    def remove(self, timeout_s: float = 5.0) -> list[str]:
        """Kill what is still inside (our processes), remove the directories; idempotent."""
        removed = remove_dirs(self.created, timeout_s)
        self.created = []
        if self.hierarchy.version == 2:  # the shared parent, once empty
            _rmdir_quiet(Path(self.hierarchy.v2) / V2_PARENT)
        return removed


def _enable(d: Path, controllers: Sequence[str]) -> None:
    have = set(_read(d / "cgroup.subtree_control").split())
    missing = [c for c in controllers if c not in have]
    if missing:
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def pids_in(dirs: Iterable[Path | str]) -> set[int]:
    out: set[int] = set()
    for d in dirs:
        out |= {int(p) for p in _read(Path(d) / "cgroup.procs").split() if p.isdigit()}
    return out


def _rmdir_quiet(d: Path) -> bool:
    try:
        d.rmdir()
        return True
    except OSError:
        return False


def remove_dirs(dirs: Iterable[Path | str], timeout_s: float = 5.0) -> list[str]:
    """Remove cgroup directories (a record's ``dirs``): SIGKILL the processes still inside (only
    ours are: a cgroup we made holds what we started in it), wait for them to leave, rmdir.
    CgroupError naming the directories that remain."""
    dirs = _deepest_first([Path(d) for d in dirs])
    for pid in pids_in(dirs):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    removed, left = [], list(dirs)
    deadline = time.monotonic() + timeout_s
    while left:
        left = [d for d in left if not _rmdir_quiet(d)]
        removed += [str(d) for d in dirs if d not in left and str(d) not in removed]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        raise CgroupError(f"cannot remove cgroup(s) {', '.join(map(str, left))}: still holding "
                          f"pid(s) {sorted(pids_in(left)) or '?'}; rmdir them when those exit")
    return [f"cgroup {d}" for d in removed]


def _deepest_first(dirs: Iterable[Path]) -> list[Path]:
    """``dirs`` and the cgroups below them (v2 ``NAME/capped``, ``NAME/boot``), children first:
    a cgroup with children cannot be removed."""
    found = {x for d in dirs if d.is_dir() for x in (d, *d.rglob("*")) if x.is_dir()}
    return sorted(found, key=lambda d: (-len(d.parts), str(d)))


def find_named(prefix: str, hierarchy: Hierarchy | None = None) -> list[Path]:
    """Cgroups named ``prefix*`` under this process's own cgroup (v1: in the cpu, cpuset and
    memory hierarchies) or under ``<v2>/tvmsplit/``: what a crashed run may have left."""
    try:
        h = hierarchy or detect(needed=())
    except CgroupError:
        return []
    parents = ([Path(h.v2) / V2_PARENT] if h.version == 2 else
               [Path(m) / _own_path(c).lstrip("/") for c, m in h.v1])
    found = []
    for p in parents:
        try:
            found += [d for d in p.iterdir() if d.is_dir() and d.name.startswith(prefix)]
        except OSError:
            pass
    return sorted(found)


def unavailable_hint(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "cgroups need root, and a writable /sys/fs/cgroup (a container: --privileged " \
               "or a delegated cgroup)"
    return "check that the cgroup filesystem is mounted read-write"


def unavailable_reason(limits: Limits = Limits(cpu_quota_us=MIN_QUOTA_US, cpus="0",
                                               memory_max_bytes=1 << 30)) -> str | None:
    """Why cgroups with ``limits`` cannot be made here (one line, with the fix), or None.
    Creates and removes a probe cgroup."""
    if os.geteuid() != 0:
        return "cgroups need root"
    try:
        with Cgroup(f"tvmsplit-probe-{os.getpid()}", limits):
            pass
    except CgroupError as exc:
        return str(exc)
    return None
