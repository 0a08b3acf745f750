"""A device joins tvmsplit over the stock TVM RPC server, with its live state readable remotely.

    python -m tvmsplit.rpc_device --host 10.0.0.2 --port 9090 [--port-end 9199] \\
        [--tracker HOST:PORT --key rpi4b] [--custom-addr ADDR] [--ready-file PATH]
    python -m tvmsplit.rpc_device tracker --host 10.0.0.1 --port 9190 [--ready-file PATH]

The first form is ``python -m tvm.exec.rpc_server`` plus one remote function,
``tvmsplit.device_state``, that returns ``json.dumps(monitor.snapshot().to_json())``; this is what
``profile.RPCSession.state()`` calls (without it the state is "unknown"). The second form runs
TVM's stock tracker (``tvm.rpc.tracker.Tracker``, as ``python -m tvm.exec.rpc_tracker`` does) and
also writes a ready file. Both write ``{host, port, pid}`` to ``--ready-file`` once they listen,
with the port the server really bound (it scans ``[port, port_end)``).

How the stock server runs sessions (TVM 0.27, ``tvm/rpc/server.py``): ``rpc.Server`` starts a
``PopenWorker``, i.e. a fresh ``python -m tvm.exec.popen_worker``, which binds the port and runs
the listen loop in a thread; every session is a ``multiprocessing.Process`` forked from that
worker. A function registered in the launcher is therefore NOT visible to sessions. The stock hook
is ``Server(server_init_callback=...)``: the callable is cloudpickled (by reference, so
``tvmsplit`` must be importable there), run in the worker before it binds, and inherited by the
forked sessions. The launcher's callback also ends the worker when the stock listen thread dies
(after the tracker refused connections for 60 s), so the launcher exits 1 instead of idling. It does not reach sessions with ``--no-fork`` (spawned children re-import only
TVM), so this launcher always forks.

TVM RPC is remote code execution by design: anyone who reaches the port can run anything as the
server's user. Bind to loopback or a private link only (the default host is 127.0.0.1).

``LocalRPCDevice`` starts a tracker and/or a device server on loopback for tests and users, each in
its own process group, and stops the groups on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import TvmsplitError
from .runtime.launch import LaunchError, wait_for_ready_file
from .runtime.procs import stop_group

DEVICE_STATE_FUNC = "tvmsplit.device_state"
RCE_WARNING = ("WARNING: TVM RPC is remote code execution by design; bind only to loopback or a "
               "private link, never to a public address.")


class RPCDeviceError(TvmsplitError):
    """An RPC device server or tracker could not be started or reached."""


def register_device_state() -> None:
    """Register the global function ``tvmsplit.device_state`` in this process (idempotent).

    It returns ``json.dumps(snapshot().to_json())`` (see ``tvmsplit.monitor``). Pass this function
    as ``tvm.rpc.Server(server_init_callback=...)`` so that RPC sessions see it.
    """
    import tvm_ffi

    from .monitor import snapshot  # imported here, before sessions fork: psutil missing fails now

    def device_state() -> str:
        return json.dumps(snapshot().to_json())

    tvm_ffi.register_global_func(DEVICE_STATE_FUNC, device_state, override=True)


def _init_server_worker() -> None:
    """``server_init_callback`` of the stock server: runs in its worker, before it binds."""
    register_device_state()
    threading.Thread(target=_exit_when_listener_dies, daemon=True).start()


def _exit_when_listener_dies() -> None:
    """The stock listen thread gives up (and the worker idles on) once the tracker has refused
    connections for 60 s; end the worker then, so the launcher exits 1 and a supervisor restarts."""
    from tvm.rpc.server import PopenRPCServerState

    while PopenRPCServerState.current is None:
        time.sleep(0.5)
    PopenRPCServerState.current.thread.join()
    os._exit(1)


def check_tracker(addr: tuple[str, int], timeout_s: float = 5.0) -> None:
    """Raise ``RPCDeviceError`` unless a TVM RPC tracker answers at ``addr`` (magic handshake)."""
    from tvm.rpc import base

    try:
        with socket.create_connection(addr, timeout=timeout_s) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            reply = base.recvall(sock, 4)
    except (OSError, RuntimeError) as exc:
        raise RPCDeviceError(f"no RPC tracker at {addr[0]}:{addr[1]} ({exc}); start one with "
                             "`python -m tvm.exec.rpc_tracker --host HOST --port 9190`") from None
    if struct.unpack("<i", reply)[0] != base.RPC_TRACKER_MAGIC:
        raise RPCDeviceError(f"{addr[0]}:{addr[1]} answers but is not a TVM RPC tracker")


def _write_ready(path: str | None, host: str, port: int) -> None:
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"host": host, "port": port, "pid": os.getpid()}, f)
        os.replace(tmp, path)


def _serve_until_signalled(stock, ready_file: str | None, host: str) -> int:
    """Write the ready file, wait for the stock server/tracker to end, terminate it on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _write_ready(ready_file, host, stock.port)
        stock.proc.join()
        print("rpc_device: the stock worker exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stock.proc.kill()  # the stock terminate(): kill the worker and its sessions; frees the port
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)


def _last_line(exc: BaseException) -> str:
    """The stock worker re-raises with the whole remote traceback as the message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def parse_address(text: str, option: str = "address",
                  error: type[Exception] = RPCDeviceError) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; raises ``error`` naming ``option`` otherwise.
    The one parser of RPC server and tracker addresses (CLI, profiling, this launcher)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise error(f"{option} must be HOST:PORT, e.g. 127.0.0.1:9190; got {text!r}")
    return host, int(port)


def _address(text: str) -> tuple[str, int]:
    return parse_address(text, "the address", argparse.ArgumentTypeError)


def _parser(prog: str, description: str, port: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=RCE_WARNING)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a private one, never public)")
    p.add_argument("--port", type=int, default=port, help=f"first port to try (default {port})")
    p.add_argument("--port-end", type=int, default=9199,
                   help="end of the port range scanned, exclusive (default 9199)")
    p.add_argument("--ready-file", default=None,
                   help="write {host, port, pid} here (JSON) once listening; removed on exit")
    return p


def serve(argv: Sequence[str] | None = None) -> int:
    """The device server (``python -m tvmsplit.rpc_device ...``); returns an exit code."""
    p = _parser("python -m tvmsplit.rpc_device",
                "Stock TVM RPC server that also serves tvmsplit.device_state (live CPU/memory "
                "state for profiling). Subcommand `tracker` runs an RPC tracker instead.", 9090)
    p.add_argument("--tracker", type=_address, default=None, metavar="HOST:PORT",
                   help="register with this RPC tracker (needs --key)")
    p.add_argument("--key", default="",
                   help="device key in the tracker, e.g. rpi4b (without --tracker, leave it empty: "
                        "clients would have to present it, RPCSession(host, port) presents none)")
    p.add_argument("--custom-addr", default=None,
                   help="address the tracker hands to clients (default: the one it sees)")
    args = p.parse_args(argv)
    if args.tracker and not args.key:
        p.error("--tracker needs --key (the device kind clients request, e.g. rpi4b)")
    from tvm import rpc

    try:
        if args.tracker:
            check_tracker(args.tracker)
        server = rpc.Server(args.host, args.port, args.port_end, key=args.key,
                            tracker_addr=args.tracker, custom_addr=args.custom_addr,
                            server_init_callback=_init_server_worker)
    except Exception as exc:  # noqa: BLE001 - the worker reports bind errors as any exception
        print(f"rpc_device: cannot start the RPC server on {args.host}:[{args.port}, "
              f"{args.port_end}): {_last_line(exc)}", file=sys.stderr)
        return 2
    print(f"rpc_device: listening on {args.host}:{server.port}"
          + (f", key {args.key!r} at tracker {args.tracker[0]}:{args.tracker[1]}"
             if args.tracker else ""), file=sys.stderr, flush=True)
    return _serve_until_signalled(server, args.ready_file, args.host)


def track(argv: Sequence[str] | None = None) -> int:
    """The stock tracker (``python -m tvmsplit.rpc_device tracker ...``); returns an exit code."""
    p = _parser("python -m tvmsplit.rpc_device tracker",
                "Stock TVM RPC tracker (as python -m tvm.exec.rpc_tracker) with a ready file.",
                9190)
    args = p.parse_args(argv)
    from tvm.rpc.tracker import Tracker

    try:
        tracker = Tracker(args.host, args.port, args.port_end)
    except Exception as exc:  # noqa: BLE001
        print(f"rpc_device: cannot start the RPC tracker on {args.host}:[{args.port}, "
              f"{args.port_end}): {_last_line(exc)}", file=sys.stderr)
        return 2
    print(f"rpc_device: tracker listening on {args.host}:{tracker.port}", file=sys.stderr,
          flush=True)
    return _serve_until_signalled(tracker, args.ready_file, args.host)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tracker"]:
        return track(argv[1:])
    return serve(argv)


# --- local devices for tests and users -------------------------------------------------------


@dataclass(frozen=True)
class RPCEndpoint:
    """A running device server: ``RPCSession(host, port)`` without a tracker, else
    ``RPCSession(tracker=tracker, key=key)`` (a server registered with a tracker only accepts
    the random match key the tracker hands out, not direct connections)."""

    host: str
    port: int
    key: str
    tracker: tuple[str, int] | None
    pid: int                   # the launcher (leader of the server's process group)
    tracker_pid: int | None    # the tracker this context started, if any


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Group:
    """A child process in its own process group, logging to a file."""

    def __init__(self, what: str, args: list[str], workdir: Path):
        self.what, self.log = what, workdir / f"{what.replace(' ', '-')}.log"
        self.ready = workdir / f"{what.replace(' ', '-')}.ready.json"
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # tvmsplit importable even uninstalled
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tvmsplit.rpc_device", *args,
                                          "--ready-file", str(self.ready)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def fail(self, why: str) -> RPCDeviceError:
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        return RPCDeviceError(f"the {self.what} {why}; log tail:\n  " + "\n  ".join(tail))

    def wait_ready(self, deadline: float) -> dict:
        try:
            return wait_for_ready_file(self.ready, self.proc, f"the {self.what}", self.log,
                                       max(0.0, deadline - time.monotonic()))
        except LaunchError as exc:
            raise RPCDeviceError(str(exc)) from None

    def stop(self, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace_s``; return once it is empty."""
        stop_group(self.proc, grace_s)


class LocalRPCDevice:
    """Start this machine as an RPC device (and optionally a tracker), for tests and users.

        with LocalRPCDevice(key="x86", tracker=True) as dev:
            RPCSession(tracker=dev.tracker, key=dev.key).state()

    ``tracker``: ``False`` (no tracker), ``True`` (start one here) or ``(host, port)`` of a running
    one to register with. Each process runs in its own process group; on exit each group gets
    SIGTERM, then SIGKILL after ``grace_s``, so the ports are free again. Free ports are picked
    and the servers' own reports (ready files) give the ports they bound.
    """

    def __init__(self, key: str = "local", *, tracker: bool | tuple[str, int] = False,
                 host: str = "127.0.0.1", ready_timeout_s: float = 60.0, grace_s: float = 5.0):
        self.key, self.host, self._tracker = key, host, tracker
        self.ready_timeout_s, self.grace_s = ready_timeout_s, grace_s
        self._groups: list[_Group] = []
        self._workdir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> RPCEndpoint:
        self._workdir = tempfile.TemporaryDirectory(prefix="tvmsplit-rpc-")
        try:
            return self._start(Path(self._workdir.name))
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _range(self) -> list[str]:
        try:
            port = _free_port(self.host)
        except OSError as exc:
            raise RPCDeviceError(f"cannot bind {self.host} ({exc}); use an address of this "
                                 "machine, e.g. 127.0.0.1") from None
        return ["--host", self.host, "--port", str(port), "--port-end", str(port + 64)]

    def _start(self, workdir: Path) -> RPCEndpoint:
        deadline = time.monotonic() + self.ready_timeout_s
        tracker, tracker_pid = None, None
        if self._tracker is True:
            group = _Group("rpc tracker", ["tracker", *self._range()], workdir)
            self._groups.append(group)
            tracker, tracker_pid = (self.host, group.wait_ready(deadline)["port"]), group.proc.pid
        elif self._tracker:
            tracker = (str(self._tracker[0]), int(self._tracker[1]))
            check_tracker(tracker)
        args = self._range()
        if tracker:
            args += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", self.key]
        server = _Group("rpc device server", args, workdir)
        self._groups.append(server)
        port = server.wait_ready(deadline)["port"]
        if tracker:
            self._wait_registered(server, tracker, deadline)
        return RPCEndpoint(self.host, port, self.key, tracker, server.proc.pid, tracker_pid)

    def _wait_registered(self, server: _Group, tracker: tuple[str, int], deadline: float) -> None:
        from tvm import rpc

        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise server.fail(f"exited with code {server.proc.returncode}")
            session = rpc.connect_tracker(*tracker)
            try:
                if session.summary()["queue_info"].get(self.key, {}).get("free", 0) > 0:
                    return
            finally:
                session.close()
            time.sleep(0.2)
        raise server.fail(f"did not register key {self.key!r} with the tracker "
                          f"{tracker[0]}:{tracker[1]} in time")

    def __exit__(self, *exc) -> None:
        for group in reversed(self._groups):  # the server first, then its tracker
            group.stop(self.grace_s)
        self._groups.clear()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


if __name__ == "__main__":
    sys.exit(main())
