"""The testbed as a resource: namespaces, shaped link, ARM device, its RPC server and workers.

    with Testbed("4g") as tb:                              # or Testbed(...).up() ... .down()
        eps = tb.start_workers("build/model", ["device", "edge"])
        with Pipeline("build/model", endpoints=eps) as p:
            y, trace = p.run(x)
        sess = tb.rpc_connect()                            # TVM RPC to the emulated Pi

Every process is started in its own session (process group == its pid) and stopped by group:
SIGTERM, then SIGKILL after a grace period. Namespaces are removed by :meth:`Testbed.down`, which
runs on ``__exit__``, on a failed :meth:`up`, and at interpreter exit (atexit) for a testbed that
was not detached. ``up(detach=True)`` (the command line) leaves it running and records it in
``$TVMSPLIT_TESTBED_RUN/tb{k}/state.json`` (default ``/run/tvmsplit-testbed``); ``down`` reads
that file, and also removes by name whatever a crashed run left behind.

A capped end device (``Testbed(end="pi-class")``, :mod:`.capped`): placement ``"end"`` runs a
stage's worker natively in the device's namespace inside a cgroup (:mod:`.cgroup`: one core at
a fraction of its time, a memory limit), so its compute times are real; the edge's workers then
run in a cgroup pinned to the other cores. ``"device"`` stays the qemu ARM device. The cgroups
are made at :meth:`Testbed.up`, recorded in ``state.json`` and removed by ``down``::

    with Testbed("wifi", end="pi-class", device=False, rpc=False) as tb:
        with Pipeline(bundle, launcher=tb.launcher(["end", "edge"])) as p:
            y, trace = p.run(x)                  # trace.compute_ms[0]: the capped device's
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..devices import Link
from ..runtime.launch import (WORKER_KINDS, LaunchError, WorkerSpec, Worker, native_worker,
                              spawn, stage_worker_kind, worker_program,
                              wait_for_ready_file, launch_order, next_addresses,
                              stop_processes, same_addresses)
from ..runtime.procs import killpg, stop_group
from . import net
from .cgroup import Cgroup, CgroupError, Limits, find_named, parse_cpus, remove_dirs
from .net import Layout
from .profiles import LinkProfile, TestbedError, get_profile
from .sysroot import Sysroot, ensure_sysroot

REPO = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 3.0
DEVICE_START_TIMEOUT_S = 180.0   # an emulated Python importing TVM takes 5-10 s; CI is slower
WHERE = ("device", "edge", "end")   # end: the capped end device (native, in a cgroup)


def run_dir() -> Path:
    return Path(os.environ.get("TVMSPLIT_TESTBED_RUN", "/run/tvmsplit-testbed"))


# -------------------------------------------------------------------------------- processes
def _create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone or unreadable
        return None


def _same_process(rec: dict) -> bool:
    ct = _create_time(rec["pid"])
    want = rec.get("create_time")
    return ct is not None and (not want or abs(ct - want) < 0.5)


def stop_recorded(rec: dict, proc: subprocess.Popen | None = None,
                  grace_s: float = STOP_GRACE_S) -> None:
    """Stop the process group ``rec['pid']``: our child ``proc``, or (from another process, e.g.
    `down`) the recorded one if it still is the process we started (same create time)."""
    if proc is not None:
        stop_group(proc, grace_s)
        return
    if not _same_process(rec):
        return
    killpg(rec["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _same_process(rec):
        time.sleep(0.05)
    killpg(rec["pid"], signal.SIGKILL)


def _wait_ready(path: Path, proc: subprocess.Popen, what: str, log: Path,
                timeout_s: float) -> dict:
    try:
        return wait_for_ready_file(path, proc, what, log, timeout_s)
    except LaunchError as exc:
        raise TestbedError(str(exc)) from None


def _target_kind(spec: WorkerSpec, asked: str | None = None) -> str:
    """The worker kind of ``spec``'s stage: python where only the Python worker can run it,
    else ``asked``, else what its target file asks for (``[worker] kind``)."""
    from ..bundle import Bundle

    return stage_worker_kind(Bundle.load(spec.bundle, stages=[]).stages[spec.stage], asked)


# ---------------------------------------------------------------------------------- testbed
class Testbed:
    """An emulated end device (qemu aarch64) and edge (x86) joined by a shaped link.

    ``profile``: ``3g``, ``4g``, ``wifi`` (``devices.LINK_PROFILES``) or ``custom`` (needs
    ``up_mbps``/``down_mbps``), the rate, delay and loss overrides applying to any of them; or a
    ``Link`` (e.g. ``Link.profile("4g")``), shaped as it is. ``index`` picks names and addresses
    (see :mod:`.net`); None takes the first free one. ``rpc``: start the TVM RPC server on the
    device. ``device``: False skips the ARM sysroot (network only). ``log(str)`` receives progress lines.
    ``end``: a capped end device (:func:`.capped.get_capped`: ``pi-class``, ``phone-class`` or a
    .toml path), which makes placement ``"end"`` available and pins the edge's workers to the
    other cores; None (the default): no cgroups. ``edge_limits``: the edge cgroup's limits
    instead (with ``end``): e.g. one core at a share of its time, when several testbeds' edges
    stand for one edge shared by several end devices (:mod:`.shared`). ``uncapped_start``:
    stage workers on the capped end device start (import, load their stage) without its CPU
    quota, on its core and under its memory limit, and are capped once ready (``Cgroup(boot=
    True)``): seconds instead of the 10-20 s a Python worker takes at 10 % of a core, with the
    requests they serve capped all the same. For measuring what a plan's requests cost
    (``evaluate``); off by default, so that a start (a failover's restart) costs what it
    would on the device.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, profile: str | Link = "4g", *, index: int | None = None,
                 up_mbps: float | None = None, down_mbps: float | None = None,
                 delay_ms: float | None = None, loss: float | None = None, rpc: bool = True,
                 device: bool = True, end=None, edge_limits: Limits | None = None,
                 worker: str = "python", uncapped_start: bool = False, log=None):
        self.profile = LinkProfile.of(profile) if isinstance(profile, Link) else get_profile(
            profile, up_mbps=up_mbps, down_mbps=down_mbps, delay_ms=delay_ms, loss=loss)
        self._index = index
        self.lay: Layout | None = None
        self.want_rpc = rpc
        self.want_device = device or rpc
        self.log = log or (lambda _msg: None)
        self.sysroot: Sysroot | None = None
        self.dir: Path | None = None
        self.procs: list[dict] = []            # records: role, pid, create_time, log
        self._popen: dict[int, subprocess.Popen] = {}
        self.rpc_port: int | None = None
        self.end_rpc_port: int | None = None
        self.edge_rpc_port: int | None = None
        self.shaper: dict = {}
        self.workers: list[dict] = []
        self.timings: dict[str, float] = {}
        self.detached = False
        self._is_up = False
        # the device's worker kind: "python" (the aarch64 Python under qemu) or "native" (the
        # cross-built tvmsplit-worker, native/aarch64-linux-gnu.cmake, under qemu)
        # (None: what the stage's target file asks for, its [worker] kind; see launch.py)
        self.device_worker: str | None = None
        # the worker kind of stages on the capped end device and the edge (this machine's
        # code): "python", or "native" (build/native/tvmsplit-worker) for every stage the
        # native worker can run (a stage that decodes a JPEG stays Python: needs_python_worker)
        if worker not in WORKER_KINDS:
            raise TestbedError(f"worker {worker!r} is not one of {', '.join(WORKER_KINDS)}")
        self.worker = worker
        self.end = None
        if end is not None:
            from .capped import get_capped

            self.end = get_capped(end)
        self.cgroups: dict[str, Cgroup] = {}   # "end", "edge": made at up() when end is set
        if edge_limits is not None and end is None:
            raise TestbedError("edge_limits needs a capped end device (end='pi-class'): the "
                               "edge gets a cgroup only beside one")
        self.edge_limits = edge_limits
        self.uncapped_start = bool(uncapped_start)

    # ----------------------------------------------------------------------------- properties
    def _layout(self) -> Layout:
        if self.lay is None:
            raise TestbedError("the testbed is not up; call up() or use it as a context manager")
        return self.lay

    @property
    def index(self) -> int:
        return self._layout().index

    @property
    def device_ip(self) -> str:
        """The device's address on the host link (reached from the root namespace unshaped)."""
        return self._layout().device_ip

    @property
    def edge_ip(self) -> str:
        """The edge's address (reached from the device and the root namespace over the link)."""
        return self._layout().edge_ip

    @property
    def rpc_addr(self) -> tuple[str, int]:
        if self.rpc_port is None:
            raise TestbedError("no RPC server on this testbed (started with rpc=False?)")
        return self.device_ip, self.rpc_port

    def ns(self, where: str) -> str:
        _check_where(where)
        lay = self._layout()
        return lay.ns_edge if where == "edge" else lay.ns_dev

    def ip(self, where: str) -> str:
        _check_where(where)
        return self.edge_ip if where == "edge" else self.device_ip

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, *, detach: bool = False) -> "Testbed":
        """Create everything; on any failure remove what was made and raise TestbedError."""
        if self._is_up:
            return self
        t0 = time.monotonic()
        reason = net.unavailable_reason()
        if reason:
            raise TestbedError(f"cannot set up the testbed: {reason}")
        if self.profile.needs_emulator and net.tun_unavailable_reason():
            raise TestbedError(f"{net.tun_unavailable_reason()}; use delay_ms=0 and loss=0")
        if self.want_device:
            self.sysroot = ensure_sysroot(log=self.log)
            self.timings["sysroot_s"] = time.monotonic() - t0
        self.lay, self.dir = _claim(self._index)
        self.detached = detach
        os.chmod(self.dir, 0o700)
        self._is_up = True
        if not detach:
            atexit.register(self.down)
        try:
            self._save_state()  # first, so that `down` finds a half-made testbed too
            t1 = time.monotonic()
            self._make_network()
            self.timings["network_s"] = time.monotonic() - t1
            if self.end is not None:
                self._make_cgroups()
            if self.want_rpc:
                t2 = time.monotonic()
                self._start_rpc()
                self.timings["rpc_s"] = time.monotonic() - t2
            self._save_state()
        except BaseException:
            self.down()
            raise
        self.timings["up_s"] = time.monotonic() - t0
        self.log(f"testbed {self.lay.name} up in {self.timings['up_s']:.1f} s: "
                 f"{self.profile.describe()}")
        return self

    def down(self) -> list[str]:
        """Stop every process (by group) and remove the namespaces and links; idempotent."""
        if not self._is_up:
            return []
        self._is_up = False
        try:
            atexit.unregister(self.down)
        except Exception:  # noqa: BLE001
            pass
        removed = []
        for rec in reversed(self.procs):
            stop_recorded(rec, self._popen.get(rec["pid"]))
            removed.append(f"{rec['role']} (pid {rec['pid']})")
        self.procs.clear()
        self._popen.clear()
        removed += self._remove_cgroups()
        removed += net.teardown(self._layout())
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return removed

    def save_logs(self, dest: str | os.PathLike) -> list[Path]:
        """Copy every log of this testbed's processes (workers, link emulator, RPC servers) so
        far into ``dest`` (created), e.g. before :meth:`down` removes them; the copies."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if self.dir is None or not self.dir.is_dir():
            return []
        kept = []
        for log in sorted(self.dir.glob("*.log")):
            with contextlib.suppress(OSError):  # a log removed meanwhile
                kept.append(Path(shutil.copy2(log, dest / log.name)))
        return kept

    def _make_network(self) -> None:
        lay = self._layout()
        net.create_namespaces(lay)
        net.create_host_link(lay)
        tun = self.profile.needs_emulator
        if tun:
            ready = self.dir / "linkemu.ready.json"
            cmd = [sys.executable, "-m", "tvmsplit.testbed.linkemu", "--tun-a", lay.if_up,
                   "--tun-b", lay.if_down, "--delay-ms", str(self.profile.delay_ms),
                   "--loss", str(self.profile.loss), "--ready-file", str(ready),
                   "--settings-file", str(self.dir / "linkemu.settings.json")]
            if not self.detached:
                cmd += ["--parent-pid", str(os.getpid())]
            proc, log = self._spawn("linkemu", cmd, _host_env())
            _wait_ready(ready, proc, "the link emulator", log, 30.0)
            net.configure_tun_access_link(lay)
        else:
            net.create_veth_access_link(lay)
        self.shaper = net.shape(lay, self.profile, tun)
        net.add_routes(lay)

    def set_link(self, link: str | Link) -> LinkProfile:
        """Change the running link's rates, delay and loss (e.g. 3G -> Wi-Fi mid-stream): the
        shapers are replaced in place and the link emulator re-reads its settings, so open
        connections stay open. A testbed brought up without delay or loss (a plain veth link)
        cannot get them later."""
        new = LinkProfile.of(link if isinstance(link, Link) else Link.profile(link))
        lay = self._layout()
        tun = self.profile.needs_emulator
        if new.needs_emulator and not tun:
            raise TestbedError(f"link {new.name!r} has a delay or loss, but this testbed's link "
                               f"{self.profile.name!r} has none (no link emulator is running); "
                               "bring it up with a delayed profile (3g, 4g, wifi)")
        if tun:
            emu = next(r for r in self.procs if r["role"] == "linkemu")
            settings = self.dir / "linkemu.settings.json"
            write_json(settings, {"delay_ms": new.delay_ms, "loss": new.loss})
            os.kill(emu["pid"], signal.SIGHUP)
        self.shaper = net.shape(lay, new, tun)
        self.profile = new
        self.log(f"link now {new.name}: up {new.up_bps / 1e6:g} Mbit/s, down "
                 f"{new.down_bps / 1e6:g} Mbit/s, delay {new.delay_ms:g} ms each way")
        if self.dir is not None:
            self._save_state()
        return new

    def _make_cgroups(self) -> None:
        """The end device's cgroup (its profile's core, quota, memory) and the edge's (cpuset:
        the other cores we may use); each recorded in state.json as soon as it exists."""
        end, lay = self.end, self._layout()
        allowed = sorted(os.sched_getaffinity(0))
        if end.core not in allowed:
            raise TestbedError(f"capped device {end.name!r} wants core {end.core}, but this "
                               f"process may use cores {allowed} only; set core in "
                               f"[capped] of {end.target.source}")
        others = [c for c in allowed if c != end.core]
        if self.edge_limits is not None:
            wanted = parse_cpus(self.edge_limits.cpus) if self.edge_limits.cpus else others
            if not set(wanted) <= set(others):
                raise TestbedError(f"edge_limits cpus {self.edge_limits.cpus!r} must be cores "
                                   f"this process may use other than the end device's core "
                                   f"{end.core} ({others or 'none'})")
            others = wanted
        edge = self.edge_limits or (Limits(cpus=",".join(map(str, others))) if others else None)
        for role, limits in (("end", end.limits()), ("edge", edge)):
            if limits is None:
                self.log(f"only core {end.core} is usable: the edge shares it with the end device")
                continue
            cg = Cgroup(f"tvmsplit-{lay.name}-{role}", limits,
                        boot=role == "end" and self.uncapped_start)
            self.cgroups[role] = cg.create()
            self._save_state()
        self.log(f"capped end device {end.describe()}; edge on cores {others or [end.core]}")

    def _remove_cgroups(self) -> list[str]:
        removed = []
        for role in list(self.cgroups):
            try:
                removed += self.cgroups.pop(role).remove()
            except CgroupError as exc:
                self.log(f"warning: {exc}")
        return removed

    def threads(self, where: str) -> int | None:
        """TVM_NUM_THREADS of a worker on ``where``: the capped device's profile; the edge's
        cores when it is pinned; None (TVM's default) otherwise."""
        if where == "end" and self.end is not None:
            return self.end.threads
        cg = self.cgroups.get("edge") if where == "edge" else None
        return len(parse_cpus(cg.limits.cpus)) if cg is not None and cg.limits.cpus else None

    def _native(self, where: str, env: dict, in_namespace: bool = True, boot: bool = False
                ) -> tuple[list[str], dict]:
        """(prefix, env) of a native process on ``where``: cgexec into its cgroup (before
        `ip netns exec`, which hides /sys/fs/cgroup; ``boot``: its uncapped start, when it has
        one), the namespace (unless not ``in_namespace``: compute only, e.g. timing layers),
        the thread count."""
        if where == "end" and "end" not in self.cgroups:
            raise TestbedError("placement 'end' needs a capped end device: Testbed(end="
                               "'pi-class') or `testbed up --end pi-class` (capped devices: "
                               "tvmsplit.testbed.capped.known_capped())")
        cg = self.cgroups.get(where)
        threads = self.threads(where)
        if threads is not None:
            env = {**env, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        boot = boot and cg is not None and cg.boot
        return [*(cg.prefix(boot=boot) if cg is not None else []),
                *(net.in_ns(self.ns(where)) if in_namespace else [])], env

    def _start_rpc(self) -> None:
        ready = self.dir / "rpc.ready.json"
        cmd = net.in_ns(self.ns("device"), *self.sysroot.command(
            "-m", "tvmsplit.testbed.rpc_server", "--host", self.device_ip, "--port", "9090",
            "--ready-file", str(ready),
            *([] if self.detached else ["--parent-pid", str(os.getpid())])))
        proc, log = self._spawn("rpc-server", cmd, self.sysroot.env(REPO))
        info = _wait_ready(ready, proc, "the device's RPC server", log, DEVICE_START_TIMEOUT_S)
        self.rpc_port = int(info["port"])

    # ------------------------------------------------------------------------------ processes
    def _spawn(self, role: str, cmd: list[str], env: dict,
               stdout=None) -> tuple[subprocess.Popen, Path]:
        log = self.dir / f"{role}.log"
        with open(log, "ab") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout or logf,
                                    stderr=logf, env=env, start_new_session=True, cwd="/")
        self._record(role, proc, log)
        return proc, log

    def _record(self, role: str, proc: subprocess.Popen, log: Path) -> None:
        """Remember a process we started (state.json, so that `down` stops it too)."""
        self.procs.append({"role": role, "pid": proc.pid,
                           "create_time": _create_time(proc.pid) or 0.0, "log": str(log)})
        self._popen[proc.pid] = proc

    def spawn(self, where: str, cmd: Sequence[str], *, role: str = "process",
              emulated: bool = False, stdout=None, in_namespace: bool = True
              ) -> subprocess.Popen:
        """Start ``cmd`` in the device or edge namespace (``emulated``: a Python command line
        ``["-m", ...]`` run by the device's aarch64 Python under qemu; else as given, with this
        checkout on PYTHONPATH; ``where="end"``: natively in the device's namespace inside the
        capped device's cgroup; ``in_namespace=False``: in its cgroup but in the root namespace,
        for work that needs its compute and not its link). Stopped by :meth:`down`, or earlier
        with :meth:`stop`."""
        if not self._is_up:
            raise TestbedError("the testbed is not up")
        if emulated:
            if self.sysroot is None:
                raise TestbedError("this testbed has no ARM device (device=False)")
            cmd, env = self.sysroot.command(*cmd), self.sysroot.env(REPO)
            prefix = net.in_ns(self.ns(where))
        else:
            prefix, env = self._native(where, _host_env(), in_namespace)
        role = f"{role}-{len(self.procs)}"
        proc, _ = self._spawn(role, [*prefix, *cmd], env, stdout)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop one process started by :meth:`spawn` (its whole group)."""
        for rec in list(self.procs):
            if rec["pid"] == proc.pid:
                stop_recorded(rec, proc)
                self.procs.remove(rec)
                self._popen.pop(proc.pid, None)

    def worker_spec(self, bundle: str | os.PathLike, stage: int, where: str,
                    next_addr: str | Sequence[str] | None = None) -> WorkerSpec:
        """The spec of a stage worker in ``where``'s namespace: data, control and (for a route
        to the client) ``out`` bound on that side's address, ``--parent-pid`` unless detached."""
        ip = self.ip(where)
        nxt = [next_addr] if isinstance(next_addr, str) else list(next_addr or [])
        return WorkerSpec(str(Path(bundle).resolve()), stage, bind=f"tcp://{ip}:0",
                          next=tuple(nxt), out=f"tcp://{ip}:0", control=f"tcp://{ip}:0",
                          parent_pid=None if self.detached else os.getpid())

    def spawn_worker(self, spec: WorkerSpec, where: str):
        """Start ``spec`` in ``where``'s namespace (the device: the aarch64 Python under qemu,
        runtime-only TVM); a :class:`~tvmsplit.runtime.launch.WorkerProcess`, stopped by
        :meth:`down` at the latest."""
        if not self._is_up:
            raise TestbedError("the testbed is not up")
        emulated = where == "device"
        if emulated and self.sysroot is None:
            raise TestbedError("this testbed has no ARM device (device=False)")
        if emulated and (self.device_worker or _target_kind(spec)) == "native":
            program = [self.sysroot.qemu, "-L", str(self.sysroot.path),
                       *native_worker(arch="aarch64")]
            prefix, env = net.in_ns(self.ns(where)), self.sysroot.env(REPO)
        elif emulated:
            program = self.sysroot.command("-m", "tvmsplit.runtime.worker")
            prefix, env = net.in_ns(self.ns(where)), self.sysroot.env(REPO)
        else:
            kind = "python" if self.worker == "python" else _target_kind(spec, self.worker)
            program = worker_program(kind)
            prefix, env = self._native(where, _host_env(), boot=True)
        proc = spawn(spec, self.dir, program=program, prefix=prefix, env=env,
                     cwd="/", what=f"stage {spec.stage} worker on the {where}")
        self._record(f"worker-s{spec.stage}-{where}-{len(self.procs)}", proc.popen, proc.log)
        return proc

    def start_worker(self, bundle: str | os.PathLike, stage: int, where: str,
                     next_addr: str | Sequence[str] | None = None,
                     worker_args: Sequence[str] = ()) -> dict[str, Any]:
        """A stage worker on the device (qemu, runtime-only TVM) or the edge; returns its ready
        dict (``data``, ``control``, ``out``, ``pid``, ``stage``) for ``Pipeline(endpoints=)``.
        ``next_addr``: one address per route of the stage to another stage (a stage DAG may
        have several); a route to the client gets none, the worker binds it (``out``).
        ``worker_args`` are more worker options (e.g. ``["--secure", keys_dir]``)."""
        spec = self.worker_spec(bundle, stage, where, next_addr)
        if worker_args:
            spec = WorkerSpec.from_argv([*spec.argv(), *worker_args])
        return self._start(spec, where)[0]

    def _start(self, spec: WorkerSpec, where: str) -> tuple[dict[str, Any], Any]:
        proc = self.spawn_worker(spec, where)
        try:
            info = proc.wait_ready(60.0 if where == "edge" else DEVICE_START_TIMEOUT_S)
            cg = self.cgroups.get(where)
            if cg is not None and cg.boot:  # started uncapped: its requests run capped
                cg.cap(int(info["pid"]))
        except (LaunchError, CgroupError) as exc:
            self.stop(proc.popen)
            raise TestbedError(str(exc)) from None
        info["where"] = where
        self.workers.append(info)
        if self.dir is not None:
            self._save_state()
        return info, proc

    def start_workers(self, bundle: str | os.PathLike, placement: Sequence[str],
                      worker_args: Sequence[str] = ()) -> list[dict]:
        """One worker per stage, stage i on ``placement[i]`` (``device`` or ``edge``), started
        in launch order (last stage first); the endpoints for ``Pipeline(bundle, endpoints=)``."""
        from ..bundle import Bundle

        self._check_placement(placement)
        plan = Bundle.load(bundle, stages=[]).plan  # routes only: libraries live on the devices
        started: dict[int, dict] = {}
        for stage in launch_order(plan):
            nxt = next_addresses(plan, stage, {i: w["data"] for i, w in started.items()}, None)
            started[stage] = self.start_worker(bundle, stage, placement[stage], nxt, worker_args)
        return [started[s] for s in range(len(placement))]

    def launcher(self, placement: Sequence[str] | Mapping[str, str],
                 worker_args: Sequence[str] = ()) -> "TestbedLauncher":
        """A launcher for ``Pipeline(bundle, launcher=...)``: stage i's worker on
        ``placement[i]``, or, with a mapping target name -> side (``{"pi-class": "end", "host":
        "edge"}``), each stage on the side of its target, so plans with other stage counts can
        be swapped in; the Pipeline then owns them (restart, swap, death noticed)."""
        self._check_placement(list(placement.values()) if isinstance(placement, Mapping)
                              else placement)
        return TestbedLauncher(self, dict(placement) if isinstance(placement, Mapping)
                               else list(placement), list(worker_args))

    def _check_placement(self, placement: Sequence[str]) -> None:
        for w in placement:
            _check_where(w)
        if "end" in placement and self.end is None:
            raise TestbedError("placement 'end' needs a capped end device: Testbed(end="
                               "'pi-class') or `testbed up --end pi-class`")

    # ----------------------------------------------------------------------------------- RPC
    END_RPC_PORT = 9091

    def start_end_rpc(self) -> tuple[str, int]:
        """A TVM RPC server on the capped end device (native, inside its cgroup, in the device's
        namespace, on the device's host-link address): so ``tvmsplit profile --target pi-class
        --rpc HOST:PORT`` and :class:`tvmsplit.profile.RPCSession` compile here, uncapped, and
        time every layer there, capped. Returns its (host, port); stopped by :meth:`down`."""
        if self.end_rpc_port is None:
            self.end_rpc_port = self._start_native_rpc("end", self.device_ip, self.END_RPC_PORT)
        return self.device_ip, self.end_rpc_port

    def start_edge_rpc(self) -> tuple[str, int]:
        """A TVM RPC server with the edge's compute: inside the edge's cgroup (its cores, its
        thread count) but in the root namespace on 127.0.0.1, so uploads do not cross the shaped
        link (timing a layer does not need the link). Returns its (host, port)."""
        if self.edge_rpc_port is None:
            self.edge_rpc_port = self._start_native_rpc("edge", "127.0.0.1", 0)
        return "127.0.0.1", self.edge_rpc_port

    def _start_native_rpc(self, where: str, host: str, port: int) -> int:
        ready = self.dir / f"{where}-rpc-{len(self.procs)}.ready.json"
        cmd = [sys.executable, "-m", "tvmsplit.testbed.rpc_server", "--host", host,
               "--port", str(port), "--ready-file", str(ready),
               *([] if self.detached else ["--parent-pid", str(os.getpid())])]
        proc = self.spawn(where, cmd, role=f"{where}-rpc", in_namespace=where != "edge")
        info = _wait_ready(ready, proc, f"the {where}'s RPC server",
                           Path(self.procs[-1]["log"]), DEVICE_START_TIMEOUT_S)
        self._save_state()
        return int(info["port"])

    def rpc_connect(self, timeout_s: float = 60.0):
        """A ``tvm.rpc`` session to the device's RPC server (retried until it accepts)."""
        from tvm import rpc

        host, port = self.rpc_addr
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return rpc.connect(host, port)
            except Exception as exc:  # noqa: BLE001 - the previous session may still be ending
                if time.monotonic() > deadline:
                    raise TestbedError(f"cannot connect to the device's RPC server at "
                                       f"{host}:{port}: {exc}") from None
                time.sleep(0.5)

    # -------------------------------------------------------------------------------- status
    def state(self) -> dict:
        lay = self._layout()
        return {"index": lay.index, "name": lay.name, "owner_pid": os.getpid(),
                "owner_create_time": _create_time(os.getpid()),
                "detached": self.detached, "profile": self.profile.to_json(),
                "namespaces": {"device": lay.ns_dev, "edge": lay.ns_edge},
                "addresses": {"host": lay.host_ip, "device": lay.device_ip,
                              "device_link": lay.device_link_ip, "edge": lay.edge_ip},
                "link": "tun+linkemu" if self.profile.needs_emulator else "veth",
                "shaper": self.shaper,
                "rpc": {"host": lay.device_ip, "port": self.rpc_port} if self.rpc_port else None,
                "end_rpc": ({"host": lay.device_ip, "port": self.end_rpc_port}
                            if self.end_rpc_port else None),
                "edge_rpc": ({"host": "127.0.0.1", "port": self.edge_rpc_port}
                             if self.edge_rpc_port else None),
                "sysroot": str(self.sysroot.path) if self.sysroot else None,
                "processes": self.procs,
                "end": self.end.to_json() if self.end is not None else None,
                "cgroups": {role: cg.to_json() for role, cg in self.cgroups.items()},
                # in stage order: what Pipeline(bundle, endpoints=state["workers"]) takes
                "workers": sorted(self.workers, key=lambda w: w["stage"]),
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}

    def _save_state(self) -> None:
        path = self.dir / "state.json"
        tmp = path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state(), indent=1))
        os.replace(tmp, path)


class TestbedLauncher:
    """Workers in the testbed's namespaces, one per stage on its ``placement``; the replying
    ones bind ``out`` (``client_binds`` False), so a client anywhere the link reaches can
    connect. With ``Pipeline(secure=KEYS_DIR)`` the workers get ``--secure KEYS_DIR``."""

    __test__ = False
    client_binds = False

    def __init__(self, testbed: Testbed, placement: list[str] | dict[str, str],
                 worker_args: list[str]):
        self.testbed, self.placement, self.worker_args = testbed, placement, worker_args

    def sides(self, bundle) -> list[str]:
        """Where each of ``bundle``'s stages runs."""
        if isinstance(self.placement, dict):
            targets = [s.target["name"] for s in bundle.stages]
            missing = sorted({t for t in targets if t not in self.placement})
            if missing:
                raise LaunchError(f"placement has no side for target(s) {', '.join(missing)} of "
                                  f"{bundle.path}; map every target, e.g. {{'pi-class': 'end', "
                                  f"'host': 'edge'}}")
            return [self.placement[t] for t in targets]
        if len(self.placement) != len(bundle.stages):
            raise LaunchError(f"placement names {len(self.placement)} stage(s), the bundle has "
                              f"{len(bundle.stages)}")
        return list(self.placement)

    def start(self, bundle, result_addr: str | None, secure) -> list[Worker]:
        sides = self.sides(bundle)
        extra = [*self.worker_args, *(["--secure", str(secure.keys_dir.resolve())]
                                      if secure is not None else [])]
        started: dict[int, Worker] = {}
        try:
            for stage in launch_order(bundle.plan):
                nxt = next_addresses(bundle.plan, stage,
                                     {i: w.data for i, w in started.items()}, None)
                where = sides[stage]
                spec = self.testbed.worker_spec(bundle.path, stage, where, nxt)
                if extra:
                    spec = WorkerSpec.from_argv([*spec.argv(), *extra])
                try:
                    info, proc = self.testbed._start(spec, where)
                except TestbedError as exc:
                    raise LaunchError(str(exc), stage) from None
                started[stage] = Worker.from_ready(info, stage, proc)
        except BaseException:
            self.stop(list(started.values()), 0.0)
            raise
        return [started[i] for i in range(len(bundle.stages))]

    def respawn(self, bundle, worker: Worker) -> Worker:
        """A new worker for the dead one's stage, on the same side, at the same addresses."""
        if worker.process is None:
            raise LaunchError(f"{worker.describe()} was not started by this launcher",
                              worker.stage)
        self.stop([worker], 0.0)
        try:
            info, proc = self.testbed._start(same_addresses(worker), self.sides(bundle)[worker.stage])
        except TestbedError as exc:
            raise LaunchError(str(exc), worker.stage) from None
        return Worker.from_ready(info, worker.stage, proc)

    def stop(self, workers, grace_s: float) -> None:
        stop_processes(workers, grace_s)
        for w in workers:
            if w.process is not None:
                self.testbed.stop(w.process.popen)
        gone = {w.pid for w in workers}
        self.testbed.workers = [i for i in self.testbed.workers if i.get("pid") not in gone]

    def release(self) -> None:
        pass  # the testbed stops whatever is left on down()


def _check_where(where: str) -> None:
    if where not in WHERE:
        raise TestbedError(f"where must be 'device' (qemu ARM), 'edge' or 'end' (the capped "
                           f"end device), got {where!r}")


def _host_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in
                                                       env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    env.setdefault("TVM_USE_RUNTIME_LIB", "1")
    return env


# ------------------------------------------------------------------------ state on disk
def read_state(index: int) -> dict | None:
    try:
        return json.loads((run_dir() / f"tb{index}" / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _owner_alive(state: dict) -> bool:
    """A detached testbed (the command line's) counts as owned until `down`."""
    pid = state.get("owner_pid")
    if state.get("detached") or not isinstance(pid, int):
        return bool(state.get("detached"))
    return _same_process({"pid": pid, "create_time": state.get("owner_create_time")})


def _claim(index: int | None) -> tuple[Layout, Path]:
    """Claim testbed ``index`` (None: the first free one) by creating its run directory, which
    is atomic, so concurrent test sessions never pick the same one. A testbed whose owner died
    without cleaning up is removed first."""
    candidates = [index] if index is not None else list(range(net.MAX_INDEX + 1))
    present = net.namespaces()
    for k in candidates:
        lay = Layout.for_index(k)
        d = run_dir() / lay.name
        state = read_state(k)
        if state is not None and not _owner_alive(state):
            teardown(k)  # stale: its owner process is gone
        elif index is None and ({lay.ns_dev, lay.ns_edge} & present or d.exists()):
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            d.mkdir()
        except FileExistsError:
            if index is None:
                continue
            raise TestbedError(f"testbed {k} is up or being set up ({d} exists); run "
                               f"`python -m tvmsplit.testbed down --index {k}`") from None
        try:
            net.check_free(lay)
        except TestbedError:
            shutil.rmtree(d, ignore_errors=True)
            if index is None:
                continue
            raise
        return lay, d
    raise TestbedError(f"every testbed index 0..{net.MAX_INDEX} is in use; "
                       "`python -m tvmsplit.testbed down --all`")


def teardown(index: int) -> list[str]:
    """Remove testbed ``index``: stop its recorded processes, remove namespaces, links, state."""
    lay = Layout.for_index(index)
    removed = []
    state = read_state(index)
    for rec in reversed((state or {}).get("processes", [])):
        if _same_process(rec):
            stop_recorded(rec)
            removed.append(f"{rec.get('role')} (pid {rec['pid']})")
    removed += remove_cgroups(state, lay)
    removed += net.teardown(lay)
    shutil.rmtree(run_dir() / lay.name, ignore_errors=True)
    return removed


def remove_cgroups(state: dict | None, lay: Layout) -> list[str]:
    """The cgroups of a testbed: those its state file records, and any named after it (a run
    that crashed before recording them)."""
    dirs = [d for cg in ((state or {}).get("cgroups") or {}).values() for d in cg.get("dirs", [])]
    dirs += [str(d) for d in find_named(f"tvmsplit-{lay.name}-") if str(d) not in dirs]
    try:
        return remove_dirs(dirs)
    except CgroupError as exc:
        return [f"NOT removed: {exc}"]


def status(index: int) -> dict:
    """What is known about testbed ``index``: its state file, what is alive, link counters."""
    lay = Layout.for_index(index)
    state = read_state(index)
    present = sorted({lay.ns_dev, lay.ns_edge} & net.namespaces())
    out: dict[str, Any] = {"index": index, "up": bool(state) and len(present) == 2,
                           "namespaces_present": present}
    if state:
        out.update(state)
        out["stale"] = not _owner_alive(state)  # its owner died: the next up() removes it
        out["alive"] = {f"{r['role']} (pid {r['pid']})": _same_process(r)
                        for r in state.get("processes", [])}
    if present:
        out["qdisc"] = net.qdisc_stats(lay)
    return out


def indices_in_use() -> list[int]:
    found = set()
    for ns in net.namespaces():
        if ns.startswith("tvmsplit-tb") and ns.rsplit("-", 1)[-1] in ("dev", "edge"):
            k = ns[len("tvmsplit-tb"):].rsplit("-", 1)[0]
            if k.isdigit():
                found.add(int(k))
    if run_dir().is_dir():
        for d in run_dir().iterdir():
            if d.name.startswith("tb") and d.name[2:].isdigit():
                found.add(int(d.name[2:]))
    return sorted(found)
