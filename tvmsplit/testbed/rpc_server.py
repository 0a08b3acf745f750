"""A TVM RPC server whose sessions run in this process (for a device emulated by qemu-user).

    python -m tvmsplit.testbed.rpc_server --host 10.77.0.2 --port 9090 [--key ""] \\
        [--ready-file PATH] [--parent-pid PID]

``python -m tvm.exec.rpc_server`` starts its listener in a ``PopenWorker``, which re-executes
``sys.executable``: an aarch64 binary that the host kernel cannot run without binfmt_misc. This
server does what TVM's ``tvm.rpc.server._listen_loop`` does without a tracker (same handshake:
``RPC_MAGIC``, ``client:<key>`` -> ``RPC_CODE_SUCCESS`` + ``server:<key>``) and then serves the
session in this very process with TVM's own ``_server_env`` (upload / load_module work paths) and
``rpc.ServerLoop``, one session at a time, each in a fresh temporary directory. Clients connect
with the stock ``tvm.rpc.connect(host, port, key)``.

TVM RPC is remote code execution by design: bind it only to an address of a private link (the
testbed binds the device's address inside its own network namespace). With ``--parent-pid`` the
kernel kills the server when its parent (the launcher) dies (``PR_SET_PDEATHSIG``: the session
loop runs in C, where no Python-level watchdog would get to run).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence


def _recvall(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed during the handshake")
        buf += chunk
    return buf


def handshake(conn: socket.socket, key: str) -> bool:
    """TVM's server-side handshake; False (connection refused) for a bad magic or key."""
    from tvm.rpc import base

    magic = struct.unpack("<i", _recvall(conn, 4))[0]
    if magic != base.RPC_MAGIC:
        return False
    keylen = struct.unpack("<i", _recvall(conn, 4))[0]
    if not 0 <= keylen <= 4096:
        return False
    client_key = _recvall(conn, keylen).decode("utf-8", "replace").split()
    if not client_key or client_key[0] != "client:" + key:
        conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
        return False
    server_key = ("server:" + key).encode("utf-8")
    conn.sendall(struct.pack("<ii", base.RPC_CODE_SUCCESS, len(server_key)) + server_key)
    return True


def serve_session(conn: socket.socket) -> None:
    """One RPC session, in this process, in a fresh work directory removed afterwards. The
    socket is handed over: TVM's server loop closes it when the session ends."""
    from tvm.rpc import _ffi_api
    from tvm.rpc.server import _server_env
    from tvm.support import utils

    work = utils.tempdir()
    old_cwd = os.getcwd()
    os.chdir(work.path)
    try:
        _server_env(None, work)
        _ffi_api.ServerLoop(conn.detach())
    finally:
        os.chdir(old_cwd)
        work.remove()


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (qemu-user passes prctl through)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the prctl
        os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmsplit.testbed.rpc_server",
                                description="TVM RPC server with in-process sessions (qemu-user).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (a private one)")
    p.add_argument("--port", type=int, default=9090, help="port; 0 picks a free one")
    p.add_argument("--key", default="", help="the key clients must present")
    p.add_argument("--ready-file", default=None, help="write {host, port, pid} here when listening")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process (the launcher) is no longer the parent")
    args = p.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import tvm  # noqa: F401  - runtime-only import (TVM_USE_RUNTIME_LIB=1) before listening
    try:  # sessions run in this process, so they see it: live state for profile.RPCSession.state()
        from tvmsplit.rpc_device import register_device_state
        register_device_state()
    except ImportError as exc:
        print(f"rpc_server: no tvmsplit.device_state ({exc})", file=sys.stderr, flush=True)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"rpc_server: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr,
              flush=True)
        return 2
    sock.listen(4)
    port = sock.getsockname()[1]
    if args.ready_file:
        tmp = f"{args.ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"host": args.host, "port": port, "pid": os.getpid()}, f)
        os.replace(tmp, args.ready_file)
    print(f"rpc_server: listening on {args.host}:{port}", file=sys.stderr, flush=True)
    while True:
        conn, addr = sock.accept()
        try:
            conn.settimeout(10)
            ok = handshake(conn, args.key)
            conn.settimeout(None)
            if ok:
                print(f"rpc_server: session from {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
                serve_session(conn)  # closes conn (a detached socket's close() is a no-op)
                print("rpc_server: session ended", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - one bad session must not end the server
            print(f"rpc_server: session failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
