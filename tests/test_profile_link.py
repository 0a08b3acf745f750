"""Profiling locally and over a real TVM RPC server; the link monitor on a shaped link."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.linkmon import LinkError, LinkMonitor, LinkProbeServer, measure_link
from tvmsplit.loadgen import BackgroundLoad
from tvmsplit.monitor import snapshot
from tvmsplit.profile import LocalSession, ProfileError, RPCSession, profile_bundle, profile_layers


def _listening_port(pid: int, timeout_s: float = 20.0) -> int:
    """The port the server really bound (it scans a range), read from its sockets."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    return conn.laddr.port
        time.sleep(0.2)
    raise TimeoutError("the RPC server did not start listening")


@pytest.fixture()
def rpc_server():
    """The stock TVM RPC server on loopback, in its own process group, stopped by group."""
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                             "--port", "19190", "--port-end", "19990"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield "127.0.0.1", _listening_port(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.timeout(300)
def test_profile_layers_locally_and_over_rpc(rpc_server):
    g = ts.load(zoo.make("chain"))
    layers = ["conv2", "pool1", "fc1"]
    with LocalSession() as local:
        here = profile_layers(g, "x86_64", local, layers=layers, number=5, repeat=3)
    with RPCSession(*rpc_server) as remote:
        there = profile_layers(g, "x86_64", remote, layers=layers, number=5, repeat=3)
    for a, b in zip(here, there):
        assert a.layer == b.layer and a.timing.median_ms > 0 and b.timing.median_ms > 0
        assert len(a.timing.samples) == 3 and a.timing.min_ms <= a.timing.median_ms
    assert here[0].state is not None and 0 <= here[0].state.cpu_percent <= 100
    # the 3x3 conv with 32->32 channels at 32x32 does far more work than a max-pool
    assert there[0].timing.median_ms > 5 * there[1].timing.median_ms


def test_one_rpc_session_profiles_two_models_whose_layer_files_share_names(rpc_server):
    """Regression: every model's layers are written as layer{i}.so; the session used to reuse
    the first model's upload for the second (a shape mismatch, or the wrong layer timed)."""
    small, wide = ts.load(zoo.make("chain", width=0.25)), ts.load(zoo.make("chain"))
    with RPCSession(*rpc_server) as remote:
        a = profile_layers(small, "x86_64", remote, layers=["conv2"], number=3, repeat=3)
        b = profile_layers(wide, "x86_64", remote, layers=["conv2"], number=3, repeat=3)
    assert small.index("conv2") == wide.index("conv2")  # the same file name, layer{i}.so
    # 16x the MACs (4x the channels in and out): the wide layer really ran
    assert b[0].timing.median_ms > 3 * a[0].timing.median_ms


@pytest.mark.timeout(300)
def test_profile_a_bundle_with_a_multi_output_stage_over_rpc(rpc_server, tmp_path):
    g = ts.load(zoo.make("resnet"))
    bundle = ts.build_bundle(g, ts.plan_split(g, ["block1_conv1"]), tmp_path / "b")
    assert len(bundle.stages[0].plan.library_outputs) == 2  # a tuple output over RPC
    with RPCSession(*rpc_server) as remote:
        timings = profile_bundle(bundle, remote, number=3, repeat=2)
    assert len(timings) == 2 and all(t.median_ms > 0 for t in timings)


@pytest.mark.parametrize("command", [["profile"], ["train"], ["predict", "zoo:chain"]])
def test_profile_train_predict_take_target_and_the_old_device_name(command):
    from cli_helpers import invoke

    assert "--target" in invoke(command[0], "--help").output
    for flag in ("--target", "--device"):
        result = invoke(*command, flag, "toaster")
        assert result.exit_code == 1 and "toaster" in result.output, (flag, result.output)
        assert "Traceback" not in result.output


def test_unreachable_rpc_device_is_a_clear_error():
    with pytest.raises(ProfileError, match="rpc_server"):
        RPCSession("127.0.0.1", 1)


def test_background_load_raises_cpu_utilisation_and_stops_cleanly():
    idle = snapshot(0.3).cpu_percent
    with BackgroundLoad(cpu_workers=2, duty=1.0, mem_bytes=64 << 20) as load:
        pids = [p.pid for p in load._procs]
        busy = snapshot(0.5).cpu_percent
    assert busy >= 90 or busy > idle + 30
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids)


def test_link_monitor_on_loopback():
    """Loopback measures faster than every built-in link, at a small RTT. (Not a speed test:
    on a loaded 2-vCPU machine it measured 89 Mbit/s up, against Wi-Fi's 55 down.)
    The monitor is closed and the server thread joined before the server's socket closes, so a
    failed assertion leaves no socket behind (one left open hung a later test's GC for 600 s)."""
    import threading

    from tvmsplit.devices import LINK_PROFILES

    fastest = max(max(link.up_bps, link.down_bps) for link in LINK_PROFILES.values())
    with LinkProbeServer() as server:
        t = threading.Thread(target=server.serve_forever, kwargs={"stop_after_s": 5}, daemon=True)
        t.start()
        try:
            with LinkMonitor(server.endpoint, sizes=(64 << 10,), pings=3, rounds=1) as mon:
                first = mon.update()
                second = mon.update()
        finally:
            t.join()
    assert first.up_bps > fastest and first.down_bps > fastest, first
    assert first.rtt_s < 0.05 and second.samples == 2, (first, second)


def test_link_monitor_names_an_unreachable_peer():
    with pytest.raises(LinkError, match="linkmon serve"):
        measure_link("tcp://127.0.0.1:1", timeout_s=0.5, pings=1)


def _namespaces_available() -> str | None:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    name = f"tvs-probe-{uuid.uuid4().hex[:6]}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        return f"cannot create network namespaces here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.mark.timeout(120)
def test_link_monitor_measures_a_tbf_shaped_link_between_namespaces():
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    a, b, va, vb = f"tvs-lm-a{tag}", f"tvs-lm-b{tag}", f"tva{tag}", f"tvb{tag}"
    sh = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    server = None
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.199.7.1/24", "dev", va)
        sh("ip", "-n", b, "addr", "add", "10.199.7.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # a -> b at 20 Mbit/s (the probe's "down"), b -> a at 8 Mbit/s ("up")
        sh("ip", "netns", "exec", a, "tc", "qdisc", "add", "dev", va, "root", "tbf", "rate", "20mbit",
           "burst", "32kbit", "latency", "400ms")
        sh("ip", "netns", "exec", b, "tc", "qdisc", "add", "dev", vb, "root", "tbf", "rate", "8mbit",
           "burst", "32kbit", "latency", "400ms")
        server = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-m", "tvmsplit.linkmon",
                                   "serve", "--bind", "tcp://10.199.7.1:5599", "--stop-after", "60"],
                                  start_new_session=True, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "tcp://10.199.7.1:5599"
        out = subprocess.run(["ip", "netns", "exec", b, sys.executable, "-c",
                              "from tvmsplit.linkmon import measure_link as m; "
                              "e = m('tcp://10.199.7.1:5599'); print(e.up_bps, e.down_bps)"],
                             check=True, capture_output=True, text=True, timeout=90).stdout
        up, down = (float(v) for v in out.split())
        # goodput (payload bytes) within 10% of the shaped rate; headers cost ~4%
        assert up == pytest.approx(8e6, rel=0.10)
        assert down == pytest.approx(20e6, rel=0.10)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_link_monitor_believes_a_jump_at_once_and_smooths_noise():
    """Within ``jump`` (2x) of the estimate a measurement is averaged in (EWMA); beyond it, the
    link changed (Wi-Fi -> 3G is 17x) and the new value replaces the estimate."""
    with LinkProbeServer() as server:
        mon = LinkMonitor(server.endpoint, alpha=0.5, jump=2.0)
        assert mon._smooth(10e6, 12e6) == pytest.approx(11e6)        # noise: averaged
        assert mon._smooth(18.9e6, 1.1e6) == 1.1e6                   # a new link: believed
        assert mon._smooth(1.1e6, 18.9e6) == 18.9e6
        mon.close()
    with pytest.raises(LinkError, match="jump must be > 1"):
        LinkMonitor("tcp://127.0.0.1:1", jump=1.0)
