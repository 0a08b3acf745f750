"""The RPC device launcher: live state over the stock TVM RPC server, with and without a tracker."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tvmsplit.monitor import DeviceState
from tvmsplit.profile import RPCSession
from tvmsplit.rpc_device import LocalRPCDevice, RPCDeviceError, main

pytestmark = pytest.mark.timeout(120)


def _assert_real_state(state: DeviceState | None) -> None:
    assert isinstance(state, DeviceState)
    assert state.cores > 0 and state.mem_available_bytes > 0
    assert 0 <= state.cpu_percent <= 100 and 0 <= state.mem_used_percent <= 100


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_device_without_tracker_serves_its_live_state():
    with LocalRPCDevice(key="x86") as dev:
        assert dev.tracker is None and dev.tracker_pid is None and dev.port > 0
        with RPCSession(dev.host, dev.port) as remote:
            _assert_real_state(remote.state())
            _assert_real_state(remote.state())  # a second call in the same session


def test_device_behind_a_tracker_and_clean_stop():
    with LocalRPCDevice(key="x86-test", tracker=True) as dev:
        assert dev.tracker is not None and dev.key == "x86-test"
        with RPCSession(tracker=dev.tracker, key=dev.key) as remote:
            _assert_real_state(remote.state())
        pids = [pid for leader in (dev.pid, dev.tracker_pid) for pid in
                (leader, *(p.pid for p in psutil.Process(leader).children(recursive=True)))]
        assert len(pids) >= 4  # both launchers and their stock workers
    assert not any(_alive(pid) for pid in pids)
    assert _refused(dev.host, dev.port) and _refused(*dev.tracker)


def test_a_bad_tracker_address_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    t0 = time.monotonic()
    with pytest.raises(RPCDeviceError, match=f"no RPC tracker at 127.0.0.1:{port}"):
        with LocalRPCDevice(key="x86", tracker=("127.0.0.1", port)):
            pass
    assert main(["--tracker", f"127.0.0.1:{port}", "--key", "x86"]) == 2  # the launcher too
    assert time.monotonic() - t0 < 30


def test_the_testbed_in_process_server_serves_the_state_too(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "tvmsplit.testbed.rpc_server", "--port", "0",
                             "--ready-file", str(ready)],
                            env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        with RPCSession(info["host"], info["port"]) as remote:
            _assert_real_state(remote.state())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_launcher_that_fails_to_start_is_reported_with_its_log():
    with pytest.raises(RPCDeviceError,
                       match="(?s)rpc device server exited during start with exit code 2.*needs --key"):
        with LocalRPCDevice(key="", tracker=True):
            pass
    with pytest.raises(RPCDeviceError, match="cannot bind 192.0.2.1"):
        with LocalRPCDevice(host="192.0.2.1"):
            pass
