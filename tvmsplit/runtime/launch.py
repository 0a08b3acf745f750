"""How stage workers are started: one launch interface for the CLI, the Pipeline and the testbed.

    spec = WorkerSpec(bundle="build/model", stage=1, next=("tcp://10.0.0.2:5555",))
    spec.argv()                 # ["--bundle", "build/model", "--stage", "1", "--next", ...]
    WorkerSpec.from_argv(argv)  # the one option parser: `tvmsplit worker` and `python -m` use it
    with spawn(spec, run_dir) as proc:          # a worker process in its own process group
        info = proc.wait_ready(60)              # its ready file: data, control, out, pid, stage

Three pieces, each defined once:

- :class:`WorkerSpec`: everything a worker is told at start, as data. ``argv()`` and
  :func:`from_argv` are inverse (tested), and :func:`worker_parser` is the only definition of the
  worker's options and their help texts. A native worker takes the same argv.
- :func:`spawn`: starts a spec as a process (``program`` + argv, behind an optional command
  ``prefix`` such as ``ip netns exec NS`` or a cgroup runner) with its log and ready file, and
  returns a :class:`WorkerProcess` (a context manager: ``wait_ready``, ``stop``, ``log_tail``).
- Launchers: what a :class:`~tvmsplit.runtime.pipeline.Pipeline` gets its workers from. A
  launcher's ``start(bundle, result_addr, secure)`` returns one ready :class:`Worker` per stage,
  in stage order, started in :func:`launch_order` (last stage first: each worker must be told
  its destinations' addresses, and routes go to higher stage numbers). Two kinds live here:
  :class:`LocalLauncher` (processes on this machine, the default) and :class:`GivenEndpoints`
  (workers someone already started); the testbed adds one (``Testbed.launcher``) that starts
  workers in its namespaces, the ARM stages under qemu.

Worker kinds: the Python worker (:func:`python_worker`) and the native C++ one
(:func:`native_worker`, built by ``CMakeLists.txt``) take the same argv; ``LocalLauncher(program=
worker_program("native"))`` runs every stage natively, ``programs={stage: [...]}`` mixes kinds;
by default a stage runs the kind its target file names (``[worker] kind``, :func:`target_worker_kind`).

Adding a launcher kind (a cgroup-capped device, ssh to a board): write a class
with the :class:`Launcher` attributes and methods. ``client_binds`` says who binds the result
socket: True, the client binds and ``start`` receives its address for the routes to the client
(``--next``); False, the workers that reply bind ``out`` and ``start`` receives None. Build each
worker's :class:`WorkerSpec` (``next_addresses`` gives its ``--next``), start it with
:func:`spawn` (with your ``prefix``/``program``/``env``), and return ``Worker(...,
process=proc)`` so that the Pipeline notices a death. ``stop`` is called after the workers were
asked to shut down over the control socket; ``release`` must be safe to call twice and from a
finalizer. Test it like ``tests/test_launch.py`` does the local one: the pipeline's output
equals onnxruntime's, and no process is left after close.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import zmq

from ..errors import TvmsplitError
from ..plan import CLIENT_END
from .procs import exit_text, kill_groups, log_tail, pid_alive, stop_group
from .security import CLIENT, SecureConfig, SecurityError, stage_identity

WORKER_MODULE = "tvmsplit.runtime.worker"
DEFAULT_BIND = "tcp://127.0.0.1:0"
START_TIMEOUT_S = 60.0


class LaunchError(TvmsplitError):
    """A worker could not be started; ``stage`` says which (None when not stage-specific)."""

    def __init__(self, message: str, stage: int | None = None):
        super().__init__(message)
        self.stage = stage


# ---------------------------------------------------------------------------------- the spec
def worker_parser(prog: str = f"python -m {WORKER_MODULE}") -> argparse.ArgumentParser:
    """The worker's options: the one definition `tvmsplit worker` and `python -m` both parse."""
    p = argparse.ArgumentParser(
        prog=prog, description="Run one stage of a tvmsplit bundle as a pipeline worker "
                               "(runtime-only TVM).")
    p.add_argument("--bundle", required=True,
                   help="bundle directory (manifest.json + this stage's library)")
    p.add_argument("--stage", required=True, type=int, help="index of the stage to run")
    p.add_argument("--bind", default=DEFAULT_BIND,
                   help="data input address to bind (PULL); port 0 picks a free port "
                        "(default: %(default)s)")
    p.add_argument("--next", action="append", default=[], metavar="ADDR",
                   help="address to send results to (PUSH connect): the next stage's --bind, or "
                        "the client's result address; repeat it once per route of the stage, in "
                        "the order of the manifest's 'sends'. ADDR,ADDR,... names the replicas "
                        "of that stage: each message goes to one replica that is up")
    p.add_argument("--out", default=None, metavar="ADDR",
                   help="when the last route (to the client) has no --next: address to bind it on "
                        "(default: port 0 on the --bind host); a client connects its PULL socket "
                        "there")
    p.add_argument("--control", default=DEFAULT_BIND, metavar="ADDR",
                   help="control address to bind (REP: health, shutdown, deploy; see "
                        "runtime/control.py); '' disables it (default: %(default)s)")
    p.add_argument("--ready-file", default=None, metavar="PATH",
                   help="write the bound endpoints here as JSON once ready (atomically)")
    p.add_argument("--await-library", action="store_true",
                   help="start without this stage's library (only manifest.json is needed) and "
                        "wait for the client to push it with the control command 'deploy'")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="exit when this process (the launcher) is no longer the parent")
    p.add_argument("--secure", default=None, metavar="KEYS_DIR",
                   help="encrypt and authenticate every socket with CurveZMQ: own keypair "
                        "KEYS_DIR/worker.key_secret, accepted peers = public keys KEYS_DIR/*.key")
    p.add_argument("--next-key", action="append", default=[], metavar="NAME|FILE",
                   help="with --secure and --next: the public key of the --next server, as a "
                        "name in KEYS_DIR ('worker', 'stage2', 'client': a Pipeline's result "
                        "socket) or a .key file; once for all --next or once per --next "
                        "(default: the destination's own key, stage<i> or worker; client for the "
                        "route to the client)")
    return p


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker is told at start (see :func:`worker_parser` for each field's meaning).
    ``control`` None disables the control socket; ``next_key`` () means ``worker`` for all."""

    bundle: str
    stage: int
    bind: str = DEFAULT_BIND
    next: tuple[str, ...] = ()
    out: str | None = None
    control: str | None = DEFAULT_BIND
    ready_file: str | None = None
    await_library: bool = False
    parent_pid: int | None = None
    secure: str | None = None
    next_key: tuple[str, ...] = field(default=())

    def argv(self) -> list[str]:
        """The worker's command-line arguments (``from_argv(spec.argv()) == spec``)."""
        argv = ["--bundle", self.bundle, "--stage", str(self.stage), "--bind", self.bind,
                "--control", self.control or ""]
        for addr in self.next:
            argv += ["--next", addr]
        for flag, value in (("--out", self.out), ("--ready-file", self.ready_file),
                            ("--parent-pid", self.parent_pid), ("--secure", self.secure)):
            if value is not None:
                argv += [flag, str(value)]
        for key in self.next_key:
            argv += ["--next-key", key]
        if self.await_library:
            argv.append("--await-library")
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None,
                  prog: str = f"python -m {WORKER_MODULE}") -> "WorkerSpec":
        """Parse worker arguments (argparse: exits with code 2 and usage on bad ones)."""
        ns = worker_parser(prog).parse_args(argv)
        return cls(bundle=ns.bundle, stage=ns.stage, bind=ns.bind, next=tuple(ns.next),
                   out=ns.out, control=ns.control or None, ready_file=ns.ready_file,
                   await_library=ns.await_library, parent_pid=ns.parent_pid, secure=ns.secure,
                   next_key=tuple(ns.next_key))

    def replace(self, **changes: Any) -> "WorkerSpec":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"WorkerSpec has no field(s) {unknown}; fields: {sorted(known)}")
        return WorkerSpec(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def python_worker(python: str = sys.executable) -> list[str]:
    """The command that runs the Python worker: ``[python, "-m", "tvmsplit.runtime.worker"]``."""
    return [python, "-m", WORKER_MODULE]


NATIVE_WORKER_ENV = "TVMSPLIT_NATIVE_WORKER"  # path of a built tvmsplit-worker
NATIVE_BUILD_DIR = Path(__file__).resolve().parents[2] / "build" / "native"  # CMakeLists.txt's
WORKER_KINDS = ("python", "native")


def _native_places(arch: str | None) -> tuple[str, Path]:
    """(env variable, build directory) of the native worker for ``arch`` (None: this machine;
    "aarch64": the cross-build of native/aarch64-linux-gnu.cmake, in build/aarch64)."""
    if arch is None:
        return NATIVE_WORKER_ENV, NATIVE_BUILD_DIR
    return f"{NATIVE_WORKER_ENV}_{arch.upper()}", NATIVE_BUILD_DIR.parent / arch


def find_native_worker(arch: str | None = None) -> Path | None:
    """The native worker binary (``CMakeLists.txt``): ``$TVMSPLIT_NATIVE_WORKER``, else
    ``build/native/tvmsplit-worker`` of this checkout, else ``tvmsplit-worker`` on PATH. For
    ``arch="aarch64"``: ``$TVMSPLIT_NATIVE_WORKER_AARCH64``, else ``build/aarch64``."""
    var, build_dir = _native_places(arch)
    env = os.environ.get(var)
    if env:
        return Path(env) if Path(env).is_file() else None
    built = build_dir / "tvmsplit-worker"
    if built.is_file():
        return built
    found = shutil.which("tvmsplit-worker") if arch is None else None
    return Path(found) if found else None


def native_worker(arch: str | None = None) -> list[str]:
    """The command that runs the native worker (same argv as :func:`python_worker`'s)."""
    path = find_native_worker(arch)
    if path is None:
        var, build_dir = _native_places(arch)
        where = os.environ.get(var) or str(build_dir / "tvmsplit-worker")
        how = ("`cmake -S . -B build/native && cmake --build build/native -j2`" if arch is None
               else "native/aarch64-linux-gnu.cmake (see its header)")
        raise LaunchError(f"the native worker is not built ({where} is missing); build it with "
                          f"{how}, or set {var}")
    return [str(path)]


def worker_program(kind: str) -> list[str]:
    """The command of a worker kind: ``"python"`` or ``"native"`` (``WORKER_KINDS``)."""
    if kind == "python":
        return python_worker()
    if kind == "native":
        return native_worker()
    raise LaunchError(f"unknown worker kind {kind!r}; one of {', '.join(WORKER_KINDS)}")


def target_worker_kind(target: str) -> str:
    """The worker kind a target file asks for (a plan's target name or .toml path): its
    ``[worker]`` table's ``kind`` (``"python"`` when there is none, or the target is not known
    on this machine)::

        [worker]
        kind = "native"       # stages for this device run tvmsplit-worker (CMakeLists.txt)
    """
    import tomllib

    from ..targets import get_target

    try:
        source = get_target(target).source
        table = tomllib.loads(Path(source).read_text()).get("worker", {}) if source else {}
    except (TvmsplitError, OSError, ValueError):
        return "python"
    kind = table.get("kind", "python") if isinstance(table, dict) else None
    if kind not in WORKER_KINDS:
        raise LaunchError(f"target {target!r}: [worker] kind must be one of "
                          f"{', '.join(WORKER_KINDS)}, got {kind!r}")
    return kind


def needs_python_worker(stage) -> bool:
    """True for a bundle stage only the Python worker can run: sequential HyPS segments, an
    onnxruntime fallback stage, a stage that receives an encoded input (a JPEG it decodes or
    forwards)."""
    return bool(stage.segments or getattr(stage, "runtime", "tvm") != "tvm"
                or getattr(stage, "encodings", ()))


def stage_worker_kind(stage, asked: str | None = None) -> str:
    """The worker kind for a bundle stage: ``"python"`` where :func:`needs_python_worker`,
    else ``asked`` when given, else what its target file asks for (``target_worker_kind``)."""
    if needs_python_worker(stage):
        return "python"
    return asked or target_worker_kind(stage.plan.target)


def worker_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker runs in: ``base`` (default: ours) with the runtime-only TVM
    library (``TVM_USE_RUNTIME_LIB=1``) unless the caller chose otherwise."""
    env = dict(os.environ if base is None else base)
    env.setdefault("TVM_USE_RUNTIME_LIB", "1")
    return env


# ---------------------------------------------------------------------------------- processes
class WorkerProcess:
    """A started worker: its process (leader of its own process group), log and ready file."""

    def __init__(self, spec: WorkerSpec, popen: subprocess.Popen, log: Path, what: str):
        self.spec, self.popen, self.log, self.what = spec, popen, log, what

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, nbytes: int = 2000) -> str:
        return log_tail(self.log, nbytes)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ready file; its JSON. Raises :class:`LaunchError` (with the log's tail)
        when the worker exits first or is not ready in time (it is then killed)."""
        return wait_for_ready_file(Path(self.spec.ready_file), self.popen, self.what, self.log,
                                   timeout_s, stage=self.spec.stage)

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM its process group, SIGKILL what is left after ``grace_s``, reap it."""
        stop_group(self.popen, grace_s)

    def kill(self) -> None:
        kill_groups([self.popen])

    def __enter__(self) -> "WorkerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(spec: WorkerSpec, run_dir: str | os.PathLike, *,
          program: Sequence[str] | None = None, prefix: Sequence[str] = (),
          env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
          what: str | None = None) -> WorkerProcess:
    """Start ``prefix + program + spec.argv()`` in a new session, stdout and stderr to a log in
    ``run_dir`` (and the ready file there, unless the spec names one). ``program`` defaults to
    :func:`python_worker`; ``env`` to :func:`worker_env`."""
    run_dir = Path(run_dir)
    tag = f"stage{spec.stage}-{uuid.uuid4().hex[:8]}"
    if spec.ready_file is None:
        spec = spec.replace(ready_file=str(run_dir / f"{tag}.ready.json"))
    log = run_dir / f"{tag}.log"
    cmd = [*prefix, *(program or python_worker()), *spec.argv()]
    with open(log, "ab") as logf:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 start_new_session=True, env=worker_env() if env is None else
                                 dict(env), cwd=cwd)
    return WorkerProcess(spec, popen, log, what or f"stage {spec.stage} worker")


def wait_for_ready_file(path: Path, proc: subprocess.Popen, what: str, log: Path | None,
                        timeout_s: float, stage: int | None = None) -> dict[str, Any]:
    """Wait until ``proc`` writes ``path`` (atomically, JSON); raise :class:`LaunchError` with
    the log's tail when it exits first, or kill it and raise when ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        rc = proc.poll()
        if rc is not None:
            raise LaunchError(f"{what} exited during start with {exit_text(rc)}: "
                              f"{log_tail(log) or '(no output)'}", stage)
        if time.monotonic() > deadline:
            kill_groups([proc])
            raise LaunchError(f"{what} was not ready within {timeout_s:g} s: "
                              f"{log_tail(log) or '(no output)'}", stage)
        time.sleep(0.01)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        kill_groups([proc])
        raise LaunchError(f"{what} wrote an unreadable ready file {path}: {exc}", stage) from None


# ----------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class Worker:
    """A ready stage worker as a Pipeline sees it: addresses, and its process when we own it."""

    stage: int
    data: str
    control: str | None
    out: str | None = None
    pid: int | None = None
    process: WorkerProcess | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_ready(cls, info: Mapping[str, Any], stage: int | None = None,
                   process: WorkerProcess | None = None) -> "Worker":
        return cls(info.get("stage", stage) if stage is None else stage, info["data"],
                   info.get("control"), info.get("out"), info.get("pid"), process)

    def endpoint(self) -> dict[str, Any]:
        """The ready-file dict (what ``Pipeline(endpoints=[...])`` takes)."""
        return {"stage": self.stage, "data": self.data, "control": self.control,
                "out": self.out, "pid": self.pid}

    def describe(self) -> str:
        where = f"pid {self.pid}, " if self.pid else ""
        return f"stage {self.stage} ({where}{self.data})"


HEARTBEAT_IVL_MS = 250      # ZMTP heartbeats on data connections: a silent peer is dropped
HEARTBEAT_TIMEOUT_MS = 1000  # after this long, so a replica that vanished gets no more sends


def connect_replicas(sock: zmq.Socket, addresses: str) -> list[str]:
    """Connect a PUSH socket to one destination stage given as ``ADDR[,ADDR...]``: its replicas.
    Messages go round-robin to the replicas that are connected (``ZMQ_IMMEDIATE``: none is
    queued for a replica that is gone), so losing one loses only what it held. A single
    address keeps ZeroMQ's queueing: messages wait for it to (re)connect (a respawned worker
    binds the same address)."""
    replicas = [a.strip() for a in addresses.split(",") if a.strip()]
    if not replicas:
        raise LaunchError(f"--next {addresses!r} names no address")
    if len(replicas) > 1:  # one destination: queue while it (re)connects, as before
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    for addr in replicas:
        sock.connect(addr)
    return replicas


def launch_order(plan) -> list[int]:
    """Stage indices in the order to start them: last first, so that every stage's
    destinations are running (and their addresses known) when it starts. Plans number stages
    so that routes go to higher numbers; a plan that does not is refused."""
    back = [(s.index, r.to) for s in plan.stages for r in s.sends
            if r.to != CLIENT_END and r.to <= s.index]
    if back:
        raise LaunchError(f"routes {back} go to a stage that is not later; stages must be "
                          "numbered in data-flow order")
    return list(reversed(range(len(plan.stages))))


def next_addresses(plan, index: int, data_of: Mapping[int, str],
                   client: str | None) -> list[str]:
    """A stage's ``--next``: per route, its destination's data address, or ``client`` for the
    route to the client (``client`` None: that route is left out, so the worker binds ``out``;
    it is always the last route)."""
    return [client if r.to == CLIENT_END else data_of[r.to] for r in plan.stages[index].sends
            if r.to != CLIENT_END or client is not None]


class Launcher(Protocol):
    """Where a Pipeline's workers come from (see the module docstring)."""

    client_binds: bool

    def start(self, bundle, result_addr: str | None,
              secure: SecureConfig | None) -> list[Worker]: ...

    def stop(self, workers: Sequence[Worker], grace_s: float) -> None: ...

    def release(self) -> None: ...


def stop_processes(workers: Sequence[Worker], grace_s: float) -> None:
    """Wait up to ``grace_s`` for our workers' processes to exit, then kill what is left."""
    deadline = time.monotonic() + grace_s
    procs = [w.process.popen for w in workers if w.process is not None]
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    kill_groups(procs)


class LocalLauncher:
    """One worker process per stage on this machine (runtime-only TVM), told to exit when this
    process is gone (``--parent-pid``). Logs and ready files go to a temporary directory,
    removed by :meth:`release`."""

    client_binds = True

    def __init__(self, start_timeout_s: float = START_TIMEOUT_S,
                 program: Sequence[str] | None = None,
                 programs: Mapping[int, Sequence[str]] | None = None):
        self.start_timeout_s = float(start_timeout_s)
        self.program = list(program) if program else None
        # per stage: another program for some stages (e.g. native workers beside Python ones);
        # without program/programs, a stage's target file may ask for one ([worker] kind)
        self.programs = {int(i): list(p) for i, p in (programs or {}).items()}
        self._from_targets: dict[int, list[str]] = {}
        self._run_dir: Path | None = None
        self._procs: list[WorkerProcess] = []

    @property
    def run_dir(self) -> Path:
        """``$TMPDIR/tvmsplit-workers-PID-*``: logs and ready files. A client killed before it
        could remove its directory leaves it behind; the next one removes it."""
        if self._run_dir is None:
            remove_orphan_run_dirs()
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        return self._run_dir

    def start(self, bundle, result_addr: str | None,
              secure: SecureConfig | None) -> list[Worker]:
        off_host = [f"stage {s.index} ({s.target.get('name')}, {s.target.get('arch')})"
                    for s in bundle.stages if not s.runs_on_host]
        if off_host:
            raise LaunchError(f"cannot run {', '.join(off_host)} on this machine; start those "
                              "workers on their devices and pass endpoints=[...]")
        if secure is not None:
            check_shared_keys(secure, len(bundle.stages))
        if self.program is None:
            self._from_targets = {s.index: worker_program(kind) for s in bundle.stages
                                  if (kind := stage_worker_kind(s)) != "python"}
        started: dict[int, Worker] = {}
        try:
            for index in launch_order(bundle.plan):
                nxt = next_addresses(bundle.plan, index, {i: w.data for i, w in started.items()},
                                     result_addr)
                spec = WorkerSpec(str(bundle.path), index, next=tuple(nxt),
                                  parent_pid=os.getpid())
                if secure is not None:  # each route's server key is derived by the worker
                    spec = spec.replace(secure=str(secure.keys_dir.resolve()))
                started[index] = self._start_one(spec)
        except BaseException:
            kill_groups([w.process.popen for w in started.values() if w.process is not None])
            raise
        return [started[i] for i in range(len(bundle.stages))]

    def respawn(self, bundle, worker: Worker) -> Worker:
        """A new process for ``worker``'s stage, bound to the dead one's addresses (so the stages
        sending to it, and the client, reconnect by themselves)."""
        if worker.process is None:
            raise LaunchError(f"{worker.describe()} was not started here", worker.stage)
        self._procs = [p for p in self._procs if p.pid != worker.process.pid]
        kill_groups([worker.process.popen])  # reap it, and anything it left in its group
        return self._start_one(same_addresses(worker))

    def _start_one(self, spec: WorkerSpec) -> Worker:
        program = (self.programs.get(spec.stage) or self.program
                   or self._from_targets.get(spec.stage))
        proc = spawn(spec, self.run_dir, program=program)
        self._procs.append(proc)
        return Worker.from_ready(proc.wait_ready(self.start_timeout_s), spec.stage, proc)

    def stop(self, workers: Sequence[Worker], grace_s: float) -> None:
        stop_processes(workers, grace_s)
        gone = {w.process.pid for w in workers if w.process is not None}
        self._procs = [p for p in self._procs if p.pid not in gone]

    def release(self) -> None:
        kill_groups([p.popen for p in self._procs])
        self._procs.clear()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def same_addresses(worker: Worker) -> WorkerSpec:
    """``worker``'s spec with the addresses it really bound (not port 0) and a new ready file:
    what a replacement must be started with."""
    spec = worker.process.spec
    return spec.replace(bind=worker.data, control=worker.control,
                        out=worker.out if worker.out else spec.out, ready_file=None)


RUN_DIR_PREFIX = "tvmsplit-workers-"


def remove_orphan_run_dirs() -> list[Path]:
    """Remove the run directories of clients that are gone (their pid is in the name)."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = d.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def check_shared_keys(keys: SecureConfig, n_stages: int) -> None:
    """Workers a client launches share its keys directory: it must hold each stage's secret
    (``stage<i>`` or ``worker``) and let them and the client in."""
    for name in sorted({stage_identity(keys.keys_dir, i) for i in range(n_stages)}):
        worker = SecureConfig(keys.keys_dir, name)  # <name>.key_secret present and sound
        if worker.public_key != keys.peer_key(name):
            raise SecurityError(f"{keys.keys_dir / (name + '.key')} does not match "
                                f"{keys.keys_dir / (name + '.key_secret')}; recreate the keys")
    keys.peer_key(CLIENT)  # client.key: the last worker's --next-key
    if keys.public_key not in worker.client_keys:
        raise SecurityError(f"the public key of {keys.keys_dir / 'client.key_secret'} is in "
                            f"no {keys.keys_dir}/client*.key file, so the workers would refuse "
                            "the client; put the matching client.key there or recreate the keys")


class GivenEndpoints:
    """Workers already running (on other machines, started by hand or by a testbed): their
    ready-file dicts in stage order, one per stage, or a list of them for a stage served by
    several *replicas* (each message goes to one replica that is up; the stages sending to it
    name them all in one ``--next A,B``). Nothing is started or stopped. The client watches
    these workers by heartbeats on their control sockets; with replicas, losing one loses
    nothing (failover re-sends what it held)."""

    client_binds = False

    def __init__(self, endpoints: Sequence[Mapping[str, Any] | Sequence[Mapping[str, Any]]]):
        self.endpoints = [[dict(r) for r in e] if isinstance(e, (list, tuple)) else [dict(e)]
                          for e in endpoints]
        self.replicated = any(len(e) > 1 for e in self.endpoints)

    def start(self, bundle, result_addr: str | None,
              secure: SecureConfig | None) -> list[Worker]:
        n = len(bundle.stages)
        problems = []
        if len(self.endpoints) != n:
            problems.append(f"{len(self.endpoints)} endpoint(s) given for {n} stage(s)")
        replying = {i for i, _ in bundle.plan.senders(CLIENT_END)}
        for i, replicas in enumerate(self.endpoints):
            if not replicas:
                problems.append(f"endpoint {i} is an empty list of replicas")
            for e in replicas:
                if not isinstance(e.get("data"), str):
                    problems.append(f"endpoint {i} has no 'data' address")
                if i in replying and not isinstance(e.get("out"), str):
                    problems.append(f"endpoint {i} has no 'out' address: stage {i} sends to the "
                                    "client, so start its worker without --next for that route "
                                    "(it binds one)")
            if len(replicas) > 1 and i < n and len(bundle.plan.senders(i)) > 1:
                problems.append(f"stage {i} gathers from several stages, so it cannot have "
                                f"replicas (the parts of a request could reach different ones)")
        if problems:
            raise LaunchError("; ".join(problems))
        return [Worker.from_ready(e, i) for i, replicas in enumerate(self.endpoints)
                for e in replicas]

    def stop(self, workers: Sequence[Worker], grace_s: float) -> None:
        pass  # not ours

    def release(self) -> None:
        pass
