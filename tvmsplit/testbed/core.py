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
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import net
from .net import Layout
from .profiles import LinkProfile, TestbedError, get_profile
from .sysroot import Sysroot, ensure_sysroot

REPO = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 3.0
DEVICE_START_TIMEOUT_S = 180.0   # an emulated Python importing TVM takes 5-10 s; CI is slower
WHERE = ("device", "edge")


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


def stop_group(rec: dict, proc: subprocess.Popen | None = None,
               grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group ``rec['pid']`` (if it still is the process we started), wait up
    to ``grace_s``, then SIGKILL it; reap it when it is our child."""
    pid = rec["pid"]
    if proc is None and not _same_process(rec):
        return
    if proc is not None and proc.poll() is not None:
        _killpg(pid, signal.SIGKILL)  # the leader is gone; anything left in its group goes too
        return
    _killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else not _same_process(rec):
            break
        time.sleep(0.05)
    _killpg(pid, signal.SIGKILL)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, nbytes: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - nbytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _wait_ready(path: Path, proc: subprocess.Popen, what: str, log: Path,
                timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        rc = proc.poll()
        if rc is not None:
            raise TestbedError(f"{what} exited during start with code {rc}: "
                               f"{_tail(log) or '(no output)'}")
        if time.monotonic() > deadline:
            raise TestbedError(f"{what} was not ready within {timeout_s:g} s: "
                               f"{_tail(log) or '(no output)'}")
        time.sleep(0.02)
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------- testbed
class Testbed:
    """An emulated end device (qemu aarch64) and edge (x86) joined by a shaped link.

    ``profile``: ``3g``, ``4g``, ``wifi`` or ``custom`` (needs ``up_mbps``/``down_mbps``); the
    rate and delay overrides apply to any profile. ``index`` picks names and addresses (see
    :mod:`.net`); None takes the first free one. ``rpc``: start the TVM RPC server on the device.
    ``device``: False skips the ARM sysroot (network only). ``log(str)`` receives progress lines.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, profile: str | LinkProfile = "4g", *, index: int | None = None,
                 up_mbps: float | None = None, down_mbps: float | None = None,
                 delay_ms: float | None = None, loss: float | None = None, rpc: bool = True,
                 device: bool = True, log=None):
        self.profile = profile if isinstance(profile, LinkProfile) else get_profile(
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
        self.shaper: dict = {}
        self.workers: list[dict] = []
        self.timings: dict[str, float] = {}
        self.detached = False
        self._is_up = False

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
        return lay.ns_dev if where == "device" else lay.ns_edge

    def ip(self, where: str) -> str:
        _check_where(where)
        return self.device_ip if where == "device" else self.edge_ip

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
            stop_group(rec, self._popen.get(rec["pid"]))
            removed.append(f"{rec['role']} (pid {rec['pid']})")
        self.procs.clear()
        self._popen.clear()
        removed += net.teardown(self._layout())
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return removed

    def _make_network(self) -> None:
        lay = self._layout()
        net.create_namespaces(lay)
        net.create_host_link(lay)
        tun = self.profile.needs_emulator
        if tun:
            ready = self.dir / "linkemu.ready.json"
            cmd = [sys.executable, "-m", "tvmsplit.testbed.linkemu", "--tun-a", lay.if_up,
                   "--tun-b", lay.if_down, "--delay-ms", str(self.profile.delay_ms),
                   "--loss", str(self.profile.loss), "--ready-file", str(ready)]
            if not self.detached:
                cmd += ["--parent-pid", str(os.getpid())]
            proc, log = self._spawn("linkemu", cmd, _host_env())
            _wait_ready(ready, proc, "the link emulator", log, 30.0)
            net.configure_tun_access_link(lay)
        else:
            net.create_veth_access_link(lay)
        self.shaper = net.shape(lay, self.profile, tun)
        net.add_routes(lay)

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
        rec = {"role": role, "pid": proc.pid, "create_time": _create_time(proc.pid) or 0.0,
               "log": str(log)}
        self.procs.append(rec)
        self._popen[proc.pid] = proc
        return proc, log

    def spawn(self, where: str, cmd: Sequence[str], *, role: str = "process",
              emulated: bool = False, stdout=None) -> subprocess.Popen:
        """Start ``cmd`` in the device or edge namespace (``emulated``: a Python command line
        ``["-m", ...]`` run by the device's aarch64 Python under qemu; else as given, with this
        checkout on PYTHONPATH). Stopped by :meth:`down`, or earlier with :meth:`stop`."""
        if not self._is_up:
            raise TestbedError("the testbed is not up")
        if emulated:
            if self.sysroot is None:
                raise TestbedError("this testbed has no ARM device (device=False)")
            cmd, env = self.sysroot.command(*cmd), self.sysroot.env(REPO)
        else:
            env = _host_env()
        role = f"{role}-{len(self.procs)}"
        proc, _ = self._spawn(role, net.in_ns(self.ns(where), *cmd), env, stdout)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop one process started by :meth:`spawn` (its whole group)."""
        for rec in list(self.procs):
            if rec["pid"] == proc.pid:
                stop_group(rec, proc)
                self.procs.remove(rec)
                self._popen.pop(proc.pid, None)

    def start_worker(self, bundle: str | os.PathLike, stage: int, where: str,
                     next_addr: str | Sequence[str] | None = None,
                     worker_args: Sequence[str] = ()) -> dict[str, Any]:
        """A stage worker on the device (qemu, runtime-only TVM) or the edge; returns its ready
        dict (``data``, ``control``, ``out``, ``pid``, ``stage``) for ``Pipeline(endpoints=)``.
        ``next_addr``: one address per route of the stage to another stage (a stage DAG may
        have several); a route to the client gets none, the worker binds it (``out``).
        ``worker_args`` are passed on (e.g. ``["--secure", keys_dir]``)."""
        ip = self.ip(where)
        ready = self.dir / f"worker{len(self.procs)}-s{stage}.ready.json"
        args = ["-m", "tvmsplit.runtime.worker", "--bundle", str(Path(bundle).resolve()),
                "--stage", str(stage), "--bind", f"tcp://{ip}:0", "--control", f"tcp://{ip}:0",
                "--ready-file", str(ready)]
        for addr in [next_addr] if isinstance(next_addr, str) else (next_addr or []):
            args += ["--next", addr]
        args += ["--out", f"tcp://{ip}:0"]  # used only by a route to the client
        if not self.detached:
            args += ["--parent-pid", str(os.getpid())]
        args += list(worker_args)
        emulated = where == "device"
        cmd = args if emulated else [sys.executable, *args]
        proc = self.spawn(where, cmd, role=f"worker-s{stage}-{where}", emulated=emulated)
        log = Path(self.procs[-1]["log"])
        info = _wait_ready(ready, proc, f"stage {stage} worker on the {where}", log,
                           DEVICE_START_TIMEOUT_S if emulated else 60.0)
        info["where"] = where
        self.workers.append(info)
        if self.dir is not None:
            self._save_state()
        return info

    def start_workers(self, bundle: str | os.PathLike, placement: Sequence[str],
                      worker_args: Sequence[str] = ()) -> list[dict]:
        """One worker per stage, stage i on ``placement[i]`` (``device`` or ``edge``), started
        from the last stage backwards (each needs its destinations' addresses; routes go to
        later stages); the endpoints for ``Pipeline(bundle, endpoints=...)``."""
        from ..bundle import Bundle
        from ..plan import CLIENT_END

        for w in placement:
            _check_where(w)
        plan = Bundle.load(bundle, stages=[]).plan  # routes only: libraries live on the devices
        started: dict[int, dict] = {}
        for stage in reversed(range(len(placement))):
            nxt = [started[r.to]["data"] for r in plan.stages[stage].sends if r.to != CLIENT_END]
            started[stage] = self.start_worker(bundle, stage, placement[stage], nxt, worker_args)
        return [started[s] for s in range(len(placement))]

    # ----------------------------------------------------------------------------------- RPC
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
                "sysroot": str(self.sysroot.path) if self.sysroot else None,
                "processes": self.procs,
                # in stage order: what Pipeline(bundle, endpoints=state["workers"]) takes
                "workers": sorted(self.workers, key=lambda w: w["stage"]),
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}

    def _save_state(self) -> None:
        path = self.dir / "state.json"
        tmp = path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state(), indent=1))
        os.replace(tmp, path)


def _check_where(where: str) -> None:
    if where not in WHERE:
        raise TestbedError(f"where must be 'device' or 'edge', got {where!r}")


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
            stop_group(rec)
            removed.append(f"{rec.get('role')} (pid {rec['pid']})")
    removed += net.teardown(lay)
    shutil.rmtree(run_dir() / lay.name, ignore_errors=True)
    return removed


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
