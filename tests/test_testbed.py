"""Testbed tier: an ARM end device emulated by qemu-user and an x86 edge in network namespaces,
joined by a shaped 4G link (tvmsplit.testbed).

The first tests need nothing special (profiles, names, the delay emulator on socket pairs). The
others need root, network namespaces, tc tbf, /dev/net/tun, qemu-user-static and (for the first
build of the cached ARM sysroot) mmdebstrap and the network; where any of that is missing they
are skipped and the reason is printed (a warning in the summary and the skip reason), never
passed silently.
"""
from __future__ import annotations

import json
import math
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import compare, random_inputs, reference
from tvmsplit.devices import LINK_PROFILES, Link
from tvmsplit.testbed import LinkProfile, TestbedError, get_profile, unavailable_reason
from tvmsplit.testbed.linkemu import Forwarder
from tvmsplit.testbed.net import Layout
from tvmsplit.testbed.profiles import wire_rate_bps

pytestmark = pytest.mark.timeout(600)
RTOL = 1e-4
TRANSFER_TOL = 0.15


class TestbedSkipped(UserWarning):
    """Shown in pytest's warnings summary, so a skipped testbed tier is always visible."""

    __test__ = False


def _require(device: bool = True, delay: bool = True, cross: bool = False) -> None:
    reason = unavailable_reason(device=device, delay=delay)
    if reason is None and cross and not shutil.which("aarch64-linux-gnu-g++"):
        reason = "the aarch64 cross-compiler is missing (apt-get install -y g++-aarch64-linux-gnu)"
    if reason:
        warnings.warn(f"testbed tier skipped: {reason}", TestbedSkipped, stacklevel=2)
        print(f"\ntestbed tier skipped: {reason}", file=sys.stderr)
        pytest.skip(f"testbed tier: {reason}")


# ------------------------------------------------------------------ no root needed
def test_profiles_and_expected_times():
    assert set(LINK_PROFILES) == {"3g", "4g", "wifi"}
    shaped = {name: get_profile(name) for name in LINK_PROFILES}
    assert (shaped["3g"].up_bps, shaped["4g"].up_bps, shaped["wifi"].up_bps) == \
        (1.1e6, 8.8e6, 18.88e6)
    assert (shaped["3g"].down_bps, shaped["4g"].down_bps, shaped["wifi"].down_bps) == \
        (4.6e6, 29.1e6, 54.97e6)
    # the testbed shapes the planner's links: one table, one-way delay = rtt / 2
    for name, link in LINK_PROFILES.items():
        p = shaped[name]
        assert isinstance(p, Link) and (p.up_bps, p.down_bps, p.rtt_s, p.loss) == \
            (link.up_bps, link.down_bps, link.rtt_s, link.loss)
        assert p.delay_ms == link.rtt_s / 2 * 1e3 and p.needs_emulator
        assert p.transfer_s(123_456) == link.transfer_s(123_456) == pytest.approx(
            link.up_ms(123_456) / 1e3)
    assert (shaped["3g"].delay_ms, shaped["4g"].delay_ms, shaped["wifi"].delay_ms) == (50, 25, 5)
    assert LinkProfile.from_json(shaped["4g"].to_json()) == shaped["4g"]
    p = get_profile("4g", delay_ms=0)
    assert not p.needs_emulator and p.transfer_s(1_100_000) == pytest.approx(1.0)
    assert get_profile("4g").transfer_s(1_100_000) == pytest.approx(1.025)
    assert get_profile("4g").transfer_s(291_000, "down") == pytest.approx(0.105)
    c = get_profile("custom", up_mbps=2, down_mbps=10, delay_ms=40, loss=0.01)
    assert (c.up_bps, c.down_bps, c.delay_ms, c.loss, c.needs_emulator) == \
        (2e6, 10e6, 40, 0.01, True)
    assert get_profile("WiFi", up_mbps=5).up_bps == 5e6
    with pytest.raises(TestbedError, match="custom.*needs up_mbps"):
        get_profile("custom", up_mbps=1)
    with pytest.raises(TestbedError, match="unknown link profile '5g'.*3g, 4g, wifi, custom"):
        get_profile("5g")
    with pytest.raises(TestbedError, match="loss must be in"):
        get_profile("4g", loss=1.5)
    with pytest.raises(TestbedError, match="delay_ms must be between 0 and 10000, got -1.0"):
        get_profile("4g", delay_ms=-1)
    with pytest.raises(TestbedError, match="up_bps must be between 8 kbit/s"):
        LinkProfile.of(Link("slow", 1e3, 1e6))
    # the shaper pays for the headers: 1448 payload bytes cost 1514 on a veth
    assert wire_rate_bps(1448e3, 1500, 14) == pytest.approx(1514e3)


def test_layout_names_and_private_addresses(monkeypatch):
    monkeypatch.delenv("TVMSPLIT_TESTBED_NET", raising=False)
    lay = Layout.for_index(3)
    assert (lay.ns_dev, lay.ns_edge) == ("tvmsplit-tb3-dev", "tvmsplit-tb3-edge")
    assert (lay.host_ip, lay.device_ip, lay.device_link_ip, lay.edge_ip) == \
        ("10.77.6.1", "10.77.6.2", "10.77.7.1", "10.77.7.2")
    assert all(len(n) <= 15 for n in (lay.if_host, lay.if_host_dev, lay.if_up, lay.if_down))
    assert len(Layout.for_index(63).if_host_dev) <= 15
    with pytest.raises(TestbedError, match="index must be 0..63"):
        Layout.for_index(64)
    monkeypatch.setenv("TVMSPLIT_TESTBED_NET", "8.8")
    with pytest.raises(TestbedError, match="not a private range"):
        Layout.for_index(0)


def test_link_emulator_delays_each_direction_and_drops():
    """The forwarder on socket pairs standing in for the two TUN devices."""
    a_dev, a_emu = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b_dev, b_emu = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a_emu, b_emu):
        s.setblocking(False)
    fwd = Forwarder(a_emu.fileno(), b_emu.fileno(), delay_ab_s=0.08, delay_ba_s=0.02)
    deadline = [time.monotonic() + 3.0]
    import threading

    th = threading.Thread(target=fwd.serve, args=(lambda: time.monotonic() > deadline[0],))
    th.start()
    try:
        t0 = time.monotonic()
        a_dev.send(b"a->b")
        b_dev.send(b"b->a")
        got = {}
        while len(got) < 2 and time.monotonic() - t0 < 2.5:
            ready, _, _ = select.select([a_dev, b_dev], [], [], 0.5)
            for s in ready:
                got[s.recv(100)] = time.monotonic() - t0
    finally:
        deadline[0] = 0
        th.join()
    assert set(got) == {b"a->b", b"b->a"}
    # never early; late only by scheduling (generous bounds: the machine may be busy)
    assert 0.08 <= got[b"a->b"] <= 0.5 and 0.02 <= got[b"b->a"] <= 0.4, got
    assert fwd.stats == {"ab": [1, 0, 0], "ba": [1, 0, 0]}
    lossy = Forwarder(a_emu.fileno(), b_emu.fileno(), 0.0, 0.0, loss=0.5, seed=1)
    for _ in range(200):
        a_dev.send(b"x")
    lossy._read(a_emu.fileno(), time.monotonic())
    forwarded = len(lossy.queues[b_emu.fileno()])
    assert lossy.stats["ab"][1] + forwarded == 200 and 60 < forwarded < 140
    for s in (a_dev, a_emu, b_dev, b_emu):
        s.close()


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "tvmsplit.testbed", "up", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--profile" in out.stdout and "custom" in out.stdout


# ---------------------------------------------------------------- namespaces and qemu
CUT_AFTER = "conv1"   # chain at 48x48: conv1's output is 1x32x48x48 float32 = 288 KB


@pytest.fixture(scope="module")
def split_bundles(tmp_path_factory):
    """chain (48x48) cut after conv1: stage 0 for rpi4b (aarch64), stage 1 for x86_64."""
    _require(cross=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        root = tmp_path_factory.mktemp("testbed")
        g = ts.load(zoo.make("chain", input_size=48), name="chain48")
        arm = ts.build_bundle(g, ts.plan_split(g, [CUT_AFTER], targets=["rpi4b", "x86_64"]),
                              root / "arm-x86")
    assert [s.target["arch"] for s in arm.stages] == ["aarch64", "x86_64"]
    assert sum(t.nbytes for t in arm.plan.cuts[0]) >= 200_000
    return g, arm


@pytest.fixture(scope="module")
def testbed():
    _require()
    from tvmsplit.testbed import Testbed

    tb = Testbed("4g", rpc=True, log=lambda m: print(m, file=sys.stderr))
    tb.up()
    try:
        yield tb
    finally:
        lay, pids = tb.lay, [r["pid"] for r in tb.procs]
        tb.down()
        from tvmsplit.testbed import net

        assert not ({lay.ns_dev, lay.ns_edge} & net.namespaces()), "namespaces left behind"
        assert not net.link_exists(lay.if_host)
        assert not [p for p in pids if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_arm_stage_on_qemu_device_then_x86_edge_over_4g(testbed, split_bundles):
    from tvmsplit.runtime.pipeline import Pipeline

    g, bundle = split_bundles
    eps = testbed.start_workers(bundle.path, ["device", "edge"])
    # stage 0 really runs on the emulated aarch64 device: its process is qemu
    exe = os.path.basename(psutil.Process(eps[0]["pid"]).exe())
    assert exe.startswith("qemu-aarch64"), exe
    assert os.path.basename(psutil.Process(eps[1]["pid"]).exe()).startswith("python")
    x = random_inputs(g.inputs, seed=1)
    want = reference(g, x)
    cut_bytes = sum(t.nbytes for t in bundle.plan.cuts[0])
    with Pipeline(bundle, endpoints=eps, timeout_s=180) as p:
        assert [h["ok"] for h in p.health()] == [True, True]
        p.run(x)  # warm-up: the first transfer also grows the TCP window
        hops = []
        for _ in range(3):
            y, trace = p.run(x)
            for name, value in want.items():
                err = compare(y[name], value, name)
                assert err.rel <= RTOL, f"{name}: rel err {err.rel:.2e} vs onnxruntime"
            assert trace.hop_bytes[1] > cut_bytes
            hops.append((trace.hop_bytes[1], trace.hop_ms[1]))
    nbytes = hops[0][0]
    measured_ms = statistics.median(ms for _, ms in hops)
    expected_ms = testbed.profile.transfer_s(nbytes, "up") * 1e3
    print(f"\n4G uplink, cut {nbytes} B: measured {measured_ms:.1f} ms, expected "
          f"{expected_ms:.1f} ms (bytes*8/{testbed.profile.up_bps / 1e6:g} Mbit/s + "
          f"{testbed.profile.delay_ms:g} ms); all {[round(ms, 1) for _, ms in hops]}",
          file=sys.stderr)
    assert abs(measured_ms / expected_ms - 1) <= TRANSFER_TOL, (measured_ms, expected_ms)


def test_the_testbed_launcher_gives_the_pipeline_workers_it_owns(testbed, split_bundles):
    """Pipeline(launcher=testbed.launcher(...)): the same WorkerSpec/spawn path as local
    workers, in the namespaces; a killed worker is replaced at its addresses (failover) and the
    request in flight answered; close stops them all."""
    import signal

    from tvmsplit.runtime.pipeline import Pipeline

    g, bundle = split_bundles
    x = random_inputs(g.inputs, seed=3)
    want = reference(g, x)
    with Pipeline(bundle, launcher=testbed.launcher(["device", "edge"]), timeout_s=180) as p:
        pids = [e["pid"] for e in p.endpoints]
        assert os.path.basename(psutil.Process(pids[0]).exe()).startswith("qemu-aarch64")
        assert [w["pid"] for w in testbed.state()["workers"] if w["pid"] in pids] == pids
        y, _ = p.run(x)
        for name, value in want.items():
            assert compare(y[name], value, name).rel <= RTOL
        rid = p.submit(x)
        os.kill(pids[1], signal.SIGKILL)  # failover: the edge stage is replaced, rid re-sent
        y, _ = p.result(rid)
        for name, value in want.items():
            assert compare(y[name], value, name).rel <= RTOL
        assert [(f.stage, f.old_pid, f.how) for f in p.failovers] == [(1, pids[1], "respawn")]
        pids.append(p.endpoints[1]["pid"])
        assert p.endpoints[1]["data"] == testbed.state()["workers"][-1]["data"]
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not [w for w in testbed.state()["workers"] if w["pid"] in pids]


def test_tvm_rpc_to_the_qemu_device(testbed, split_bundles):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    g, bundle = split_bundles
    stage = bundle.stages[0]
    assert stage.target["arch"] == "aarch64"
    sess = testbed.rpc_connect()
    sess.upload(str(stage.library))
    lib = sess.load_module(stage.library.name)
    dev = sess.cpu()
    vm = VirtualMachine(lib, dev)
    x = random_inputs(g.inputs, seed=2)
    (inp,) = stage.plan.library_inputs
    (out,) = stage.plan.library_outputs
    arg = tvm.runtime.tensor(x[inp.name], dev)
    y = vm["main"](arg).numpy()
    want = reference(g, x, [out.name])[out.name]
    assert compare(y, want, out.name).rel <= RTOL
    timer = vm.time_evaluator("main", dev, number=3, repeat=3)(arg)
    assert len(timer.results) == 3 and all(t > 0 for t in timer.results)
    print(f"\nRPC on the qemu device: stage 0 ({stage.target['name']}) {timer.mean * 1e3:.1f} ms "
          f"mean of {timer.results}", file=sys.stderr)


def test_metaschedule_tuning_over_rpc_on_the_qemu_device(testbed, tmp_path):
    """Cross-build candidates for aarch64, upload, measure under qemu, record, apply. qemu times
    are emulator times: what this proves is that the loop works, not Pi speed."""
    from tvmsplit.targets import get_target
    from tvmsplit.tune import tune

    g = ts.load(zoo.make("chain", input_size=16, width=0.25), name="chain16")
    spec = get_target("rpi4b")
    result = tune(g, spec, db=tmp_path / "db", trials=3, rpc=testbed.rpc_addr,
                  log=lambda m: print(m, file=sys.stderr))
    assert result.database.measured_on == f"rpc://{testbed.rpc_addr[0]}:{testbed.rpc_addr[1]}"
    assert result.trials_run > 0 and result.best_total_ms is not None, result.describe()
    bundle = ts.build_bundle(g, ts.plan_split(g, targets=["rpi4b"]), tmp_path / "b",
                             db=tmp_path / "db")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"][0]["tuning"]["tuned"] > 0
    # the tuned aarch64 library runs on the device and matches onnxruntime
    import tvm
    from tvm.runtime.vm import VirtualMachine

    stage = bundle.stages[0]
    sess = testbed.rpc_connect()
    sess.upload(str(stage.library))
    vm = VirtualMachine(sess.load_module(stage.library.name), sess.cpu())
    x = random_inputs(g.inputs, seed=3)
    (inp,) = stage.plan.library_inputs
    (out,) = stage.plan.library_outputs
    y = vm["main"](tvm.runtime.tensor(x[inp.name], sess.cpu())).numpy()
    assert compare(y, reference(g, x)[out.name], out.name).rel <= RTOL
    # the device reports its live state (the server takes one session at a time: this one)
    state = json.loads(sess.get_function("tvmsplit.device_state")())
    assert state["cores"] >= 1, state


def test_cli_up_status_down():
    _require(delay=False)
    from tvmsplit.testbed.core import indices_in_use

    k = min(set(range(40, 64)) - set(indices_in_use()))
    me = [sys.executable, "-m", "tvmsplit.testbed"]
    run = lambda *a: subprocess.run([*me, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    try:
        up = run("up", "--index", str(k), "--profile", "wifi", "--delay-ms", "0", "--no-rpc",
                 "--json")
        assert up.returncode == 0, up.stderr
        state = json.loads(up.stdout)
        assert state["up"] and state["link"] == "veth"
        assert "tbf" in state["qdisc"]["up"] and "tbf" in state["qdisc"]["down"]
        again = run("up", "--index", str(k), "--no-rpc")
        assert again.returncode == 1 and "exist" in again.stderr
        st = run("status", "--index", str(k), "--json")
        assert st.returncode == 0 and json.loads(st.stdout)[0]["up"]
    finally:
        down = run("down", "--index", str(k))
    assert down.returncode == 0 and "removed" in down.stdout
    st = run("status", "--index", str(k), "--json")
    assert not json.loads(st.stdout)[0]["up"] and not json.loads(st.stdout)[0]["namespaces_present"]


# ------------------------------------------------- the capped end device (issue 15)
def _require_cgroups() -> None:
    _require(device=False, delay=False)
    from tvmsplit.testbed.cgroup import unavailable_reason as cgroup_reason

    reason = cgroup_reason()
    if reason is None and len(os.sched_getaffinity(0)) < 2:
        reason = "the capped end device and the edge need two cores, this process may use one"
    if reason:
        warnings.warn(f"capped testbed skipped: {reason}", TestbedSkipped, stacklevel=2)
        pytest.skip(f"capped testbed: {reason}")


def test_capped_profiles_are_targets_and_limits_are_checked():
    from tvmsplit.targets import get_target, known_targets
    from tvmsplit.testbed.capped import get_capped, known_capped
    from tvmsplit.testbed.cgroup import CgroupError, Limits

    assert {"pi-class", "phone-class"} <= set(known_capped())
    assert {"pi-class", "phone-class"} <= set(known_targets())
    pi = get_capped("pi-class")
    assert get_target("pi-class").runs_on_host and pi.target.target_dict["num-cores"] == 1
    assert (pi.cpu_fraction, pi.period_us, pi.quota_us, pi.core, pi.threads) == \
        (0.1, 10_000, 1000, 0, 1)
    assert 5 <= pi.expected_slowdown <= 15 and pi.memory_bytes == 1 << 30
    assert pi.limits() == Limits(1000, 10_000, "0", 1 << 30)
    assert get_capped("phone-class").expected_slowdown == pytest.approx(2.5)
    with pytest.raises(TestbedError, match="no \\[capped\\] table.*pi-class"):
        get_capped("x86_64")
    with pytest.raises(CgroupError, match="quotas under 1 ms"):
        Limits.fraction(0.05, 10_000)
    with pytest.raises(CgroupError, match="cpu_period_us"):
        Limits(cpu_quota_us=2000, cpu_period_us=2_000_000)
    with pytest.raises(CgroupError, match="cpuset list"):
        Limits(cpus="zero")


def test_cgroup_v2_files_on_a_fake_tree(tmp_path):
    """The v2 code path (these machines have v1): detection and the files written."""
    from tvmsplit.testbed.cgroup import Cgroup, Limits, detect

    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
                  "31 23 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    h = detect(str(mi))
    assert (h.version, h.v2) == (2, str(root))  # v1 has cpu only: the unified one is used
    cg = Cgroup("tvmsplit-tbX-end", Limits(2000, 10_000, "0", 1 << 30), hierarchy=h)
    cg.create()
    d = root / "tvmsplit" / "tvmsplit-tbX-end"
    assert cg.dirs == [d] and cg.created == [d]
    assert (d / "cpu.max").read_text() == "2000 10000"
    assert (d / "cpuset.cpus").read_text() == "0" and (d / "memory.max").read_text() == str(1 << 30)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +cpuset"
    assert cg.prefix()[-3:] == ["--cgroup", str(d), "--"]
    assert Cgroup("x", Limits(), hierarchy=h).dirs == [root / "tvmsplit" / "x"]
    mi.write_text("31 23 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
                  "32 23 0:28 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
                  "33 23 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                  f"34 23 0:30 / {tmp_path}/none rw - cgroup2 cgroup2 rw\n")
    h1 = detect(str(mi))
    assert h1.version == 1 and h1.mount("cpuset") == Path("/sys/fs/cgroup/cpuset")


def test_cgroup_uncapped_start_layout_v2_fake_tree_and_v1(tmp_path):
    """``boot=True``: v2 puts the cpuset and memory limit on NAME and the quota on NAME/capped,
    processes start in NAME/boot; v1 adds NAME-boot in the cpu hierarchy only (cpuset and
    memory shared). Removal takes the children first."""
    from tvmsplit.testbed.cgroup import Cgroup, CgroupError, Hierarchy, Limits, remove_dirs

    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu memory\n")
    lim = Limits(2000, 10_000, "0", 1 << 30)
    cg = Cgroup("tvmsplit-tbX-end", lim, hierarchy=Hierarchy(2, v2=str(root)), boot=True)
    cg.create()
    top = root / "tvmsplit" / "tvmsplit-tbX-end"
    assert cg.created == [top, top / "capped", top / "boot"]
    assert (top / "capped" / "cpu.max").read_text() == "2000 10000"
    assert not (top / "cpu.max").exists() and not (top / "boot" / "cpu.max").exists()
    assert (top / "memory.max").read_text() == str(1 << 30) and (top / "cpuset.cpus").exists()
    assert (top / "cgroup.subtree_control").read_text() == "+cpu"
    assert cg.prefix()[-3:] == ["--cgroup", str(top / "capped"), "--"]
    assert cg.prefix(boot=True)[-3:] == ["--cgroup", str(top / "boot"), "--"]
    cg.cap(4242)
    assert (top / "capped" / "cgroup.procs").read_text() == "4242"
    with pytest.raises(CgroupError, match="no uncapped start"):
        Cgroup("y", lim, hierarchy=Hierarchy(2, v2=str(root))).create().prefix(boot=True)
    with pytest.raises(CgroupError, match="needs a CPU quota"):
        Cgroup("z", Limits(cpus="0"), hierarchy=Hierarchy(2, v2=str(root)), boot=True)
    for f in top.rglob("*"):  # a fake tree's files stop rmdir; a real cgroup's do not
        if f.is_file():
            f.unlink()
    removed = remove_dirs([top])
    assert sorted(removed) == sorted(f"cgroup {d}" for d in (top / "boot", top / "capped", top))
    assert not top.exists()
    mounts = {c: tmp_path / c for c in ("cpu", "cpuset", "memory")}
    proc_cgroup = tmp_path / "proc-cgroup"
    proc_cgroup.write_text("3:cpu,cpuacct:/\n2:cpuset:/\n1:memory:/\n")
    v1 = Cgroup("tvmsplit-tbX-end", lim, boot=True, proc_cgroup=str(proc_cgroup),
                hierarchy=Hierarchy(1, v1=tuple((c, str(m)) for c, m in mounts.items())))
    assert v1.dirs == [mounts[c] / "tvmsplit-tbX-end" for c in ("cpu", "cpuset", "memory")]
    assert v1.boot_dirs == [mounts["cpu"] / "tvmsplit-tbX-end-boot", *v1.dirs[1:]]


def test_cgroup_limits_a_process_and_is_removed_with_it():
    """Root: create, the limits as the kernel holds them, a process inside from its first
    instruction (cgexec), its CPU share, removal with the process still inside."""
    _require_cgroups()
    from tvmsplit.testbed.cgroup import CGEXEC, Cgroup, CgroupError, Limits, pids_in

    name = f"tvmsplit-test-{os.getpid()}"
    busy = ("import time,sys; open(sys.argv[1],'w').write(open('/proc/self/status').read()"
            ".split('Cpus_allowed_list:')[1].split()[0]); w=time.monotonic(); c=time.process_time()\n"
            "while time.process_time()-c<0.4: pass\n"
            "print(time.process_time()-c, time.monotonic()-w); sys.stdout.flush(); time.sleep(60)")
    cg = Cgroup(name, Limits.fraction(0.25, 10_000, cpus="0", memory_max_bytes=256 << 20))
    with cg:
        with pytest.raises(CgroupError, match="exists already"):
            Cgroup(name, cg.limits).create()
        got = cg.read_limits()
        assert got["version"] in (1, 2)
        if got["version"] == 1:
            assert (got["cpu.cfs_quota_us"], got["cpu.cfs_period_us"]) == ("2500", "10000")
            assert got["memory.limit_in_bytes"] == str(256 << 20)
        else:
            assert got["cpu.max"] == "2500 10000" and got["memory.max"] == str(256 << 20)
        assert got["cpuset.cpus"] == "0"
        import tempfile

        with tempfile.NamedTemporaryFile("r") as cpus:
            p = subprocess.Popen([*cg.prefix(), sys.executable, "-c", busy, cpus.name],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
            cpu_s, wall_s = map(float, p.stdout.readline().split())
            assert cpus.read() == "0" and cg.pids() == {p.pid}
        # 0.4 s of CPU at 25% of a core takes >= 1.6 s (more when others use core 0)
        print(f"\ncgroup 25%: {cpu_s:.2f} s CPU in {wall_s:.2f} s wall = {cpu_s / wall_s:.0%}",
              file=sys.stderr)
        assert 0.15 <= cpu_s / wall_s <= 0.3, (cpu_s, wall_s)
        dirs = list(cg.created)
    assert p.wait(timeout=10) == -9, "remove() kills what is left inside"
    p.stdout.close()
    assert not [d for d in dirs if d.exists()] and not pids_in(dirs)
    missing = subprocess.run([sys.executable, str(CGEXEC), "--cgroup", str(dirs[0]), "--", "true"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 126 and "cannot join cgroup" in missing.stderr


@pytest.fixture(scope="module")
def capped_bundle(tmp_path_factory):
    """chain (64x64) cut after pool1: stage 0 for pi-class (host code, run capped), 1 x86_64."""
    _require_cgroups()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        g = ts.load(zoo.make("chain", input_size=64), name="chain64")
        b = ts.build_bundle(g, ts.plan_split(g, ["pool1"], targets=["pi-class", "x86_64"]),
                            tmp_path_factory.mktemp("capped") / "b")
    return g, b


def test_capped_end_device_runs_stage0_slowed_by_its_profile(capped_bundle):
    """Stage 0 natively in the device namespace inside pi-class's cgroup (core 0, 10%), stage 1
    on the edge (core 1): output == onnxruntime, and stage 0's compute_ms from the trace is
    ~1/fraction times the same stage's on the edge core (interleaved requests, medians), +-20%,
    per CPU-millisecond of work: the capped core may spend more CPU on the same request (a
    throttled process runs cache-cold after each period; on a shared VM its core is the busier
    one; CI measured 1.23x CPU and a raw 12.7x for a 10x cap, 10.3x per CPU-ms), so the raw
    ratio is the cap's slowdown times that CPU factor, which is checked on its own (<= 1.25).
    The machine is shared: when another job takes turns with the edge worker on its core (its
    wall time per request exceeds its CPU time by > 15%), the edge is slowed and the capped
    device (which needs only 10% of its core) is not, so the ratio falls; then the test warns
    and checks only that the cap clearly acts (>= 0.6 x 1/fraction against the edge's CPU
    time per request)."""
    from tvmsplit.runtime.pipeline import Pipeline
    from tvmsplit.testbed import Testbed, net

    g, bundle = capped_bundle
    x = random_inputs(g.inputs, seed=4)
    want = reference(g, x)
    tb = Testbed("wifi", delay_ms=0, end="pi-class", device=False, rpc=False,
                 log=lambda m: print(m, file=sys.stderr))
    with tb:
        dirs = [d for cg in tb.state()["cgroups"].values() for d in cg["dirs"]]
        assert dirs and all(os.path.isdir(d) for d in dirs)
        with pytest.raises(TestbedError, match="placement 'end' needs a capped end device"):
            Testbed("wifi").launcher(["end", "edge"])
        with Pipeline(bundle, launcher=tb.launcher(["end", "edge"]), timeout_s=120) as capped, \
                Pipeline(bundle, launcher=tb.launcher(["edge", "edge"]), timeout_s=120) as free:
            end_pid, edge_pid = capped.endpoints[0]["pid"], capped.endpoints[1]["pid"]
            assert os.path.basename(psutil.Process(end_pid).exe()).startswith("python")
            assert end_pid in tb.cgroups["end"].pids() and edge_pid in tb.cgroups["edge"].pids()
            assert psutil.Process(end_pid).cpu_affinity() == [0]
            assert 0 not in psutil.Process(edge_pid).cpu_affinity()
            assert psutil.Process(end_pid).environ()["TVM_NUM_THREADS"] == "1"
            for p in (capped, free):
                p.run(x)
            c_ms, u_ms, n = [], [], 15
            procs = [psutil.Process(p.endpoints[0]["pid"]) for p in (capped, free)]
            cpu0 = [sum(q.cpu_times()[:2]) for q in procs]
            for _ in range(n):
                y, trace = capped.run(x)
                c_ms.append(trace.compute_ms[0])
                u_ms.append(free.run(x)[1].compute_ms[0])
            c_cpu, u_cpu = [(sum(q.cpu_times()[:2]) - c) * 1e3 / n for q, c in zip(procs, cpu0)]
            for name, value in want.items():
                assert compare(y[name], value, name).rel <= RTOL
        c_med, u_med = statistics.median(c_ms), statistics.median(u_ms)
        ratio, expected = c_med / u_med, tb.end.expected_slowdown
        cpu_factor = c_cpu / u_cpu
        line = (f"pi-class stage 0: capped median {c_med:.1f} ms (p90 {sorted(c_ms)[13]:.1f}, "
                f"CPU {c_cpu:.1f} ms/request), edge median {u_med:.1f} ms (CPU {u_cpu:.1f} "
                f"ms/request): {ratio:.2f}x, {ratio / cpu_factor:.2f}x per CPU-ms "
                f"({c_med / u_cpu:.2f}x vs the edge's CPU time), expected {expected:g}x")
        print(f"\n{line}", file=sys.stderr)
        assert abs(cpu_factor - 1) <= 0.25, ("the same work on both", c_cpu, u_cpu)
        if u_med <= 1.15 * u_cpu:
            assert abs(ratio / cpu_factor / expected - 1) <= 0.2, (line, c_ms, u_ms)
        else:
            warnings.warn(f"the edge core is shared with another job, so the ratio is not "
                          f"checked to +-20%: {line}", TestbedSkipped)
            assert c_med / u_cpu >= 0.6 * expected, (line, c_ms, u_ms)
        lay = tb.lay
    assert not [d for d in dirs if os.path.exists(d)], "cgroups left behind"
    assert not ({lay.ns_dev, lay.ns_edge} & net.namespaces())


def test_native_workers_on_the_capped_device_and_the_edge(capped_bundle):
    """``Testbed(worker="native")``: both stages run build/native/tvmsplit-worker, the end's in
    its cgroup on core 0; output == onnxruntime. A bad kind is refused by name."""
    from tvmsplit.runtime.launch import find_native_worker
    from tvmsplit.runtime.pipeline import Pipeline
    from tvmsplit.testbed import Testbed

    if find_native_worker() is None:
        pytest.skip("the native worker is not built (cmake -S . -B build/native)")
    with pytest.raises(TestbedError, match="worker 'rust' is not one of python, native"):
        Testbed("wifi", end="pi-class", worker="rust")
    g, bundle = capped_bundle
    x = random_inputs(g.inputs, seed=5)
    want = reference(g, x)
    with Testbed("wifi", delay_ms=0, end="pi-class", device=False, rpc=False,
                 worker="native") as tb:
        with Pipeline(bundle, launcher=tb.launcher(["end", "edge"]), timeout_s=120) as p:
            end_pid, edge_pid = (p.endpoints[k]["pid"] for k in (0, 1))
            assert {os.path.basename(psutil.Process(pid).exe()) for pid in (end_pid, edge_pid)} \
                == {"tvmsplit-worker"}
            assert end_pid in tb.cgroups["end"].pids()
            assert psutil.Process(end_pid).cpu_affinity() == [0]
            for _ in range(2):
                y, _ = p.run(x)
            for name, value in want.items():
                assert compare(y[name], value, name).rel <= RTOL


def test_uncapped_start_then_capped_requests(capped_bundle):
    """``Testbed(uncapped_start=True)``: the end's worker starts outside the quota (same core
    and memory cgroup) and serves capped: once ready its pid is in the capped cpu cgroup and
    nothing is left in the boot one, its requests are throttled (the cgroup's nr_throttled
    grows), output == onnxruntime, and it started faster than a worker capped from the start."""
    from tvmsplit.runtime.pipeline import Pipeline
    from tvmsplit.testbed import Testbed

    g, bundle = capped_bundle
    x = random_inputs(g.inputs, seed=6)
    want = reference(g, x)
    starts = {}
    for uncapped in (True, False):
        with Testbed("wifi", delay_ms=0, end="pi-class", device=False, rpc=False,
                     uncapped_start=uncapped) as tb:
            cg = tb.cgroups["end"]
            assert cg.boot is uncapped
            t0 = time.monotonic()
            with Pipeline(bundle, launcher=tb.launcher(["end", "edge"]), timeout_s=120) as p:
                starts[uncapped] = time.monotonic() - t0
                if not uncapped:
                    continue
                pid = p.endpoints[0]["pid"]
                capped_cpu = cg.dir_of("cpu")
                assert str(pid) in (capped_cpu / "cgroup.procs").read_text().split()
                assert not [d for d in cg.boot_dirs if d not in cg.dirs
                            and (d / "cgroup.procs").read_text().split()]
                assert psutil.Process(pid).cpu_affinity() == [0]

                def throttled() -> int:
                    stat = dict(line.split() for line in
                                (capped_cpu / "cpu.stat").read_text().splitlines())
                    return int(stat["nr_throttled"])

                before = throttled()
                for _ in range(3):
                    y, _ = p.run(x)
                assert throttled() > before, "the requests ran under the quota"
                for name, value in want.items():
                    assert compare(y[name], value, name).rel <= RTOL
    print(f"\npipeline start: uncapped start {starts[True]:.1f} s, capped start "
          f"{starts[False]:.1f} s", file=sys.stderr)
    assert starts[True] < starts[False], starts


def test_cli_up_end_and_down_removes_its_cgroups():
    _require_cgroups()
    from tvmsplit.testbed.core import indices_in_use

    k = min(set(range(40, 64)) - set(indices_in_use()))
    me = [sys.executable, "-m", "tvmsplit.testbed"]
    run = lambda *a: subprocess.run([*me, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    try:
        up = run("up", "--index", str(k), "--profile", "wifi", "--delay-ms", "0",
                 "--no-device", "--end", "phone-class", "--json")
        assert up.returncode == 0, up.stderr
        state = json.loads(up.stdout)
        assert state["end"]["name"] == "phone-class" and state["end"]["quota_us"] == 2000
        dirs = [d for cg in state["cgroups"].values() for d in cg["dirs"]]
        assert dirs and all(os.path.isdir(d) for d in dirs)
        text = run("status", "--index", str(k))
        assert "phone-class: core 0 at 40%" in text.stdout and "cgroup  end" in text.stdout
    finally:
        down = run("down", "--index", str(k))
    assert down.returncode == 0 and "cgroup" in down.stdout, down.stdout
    assert not [d for d in dirs if os.path.exists(d)]
    bad = run("up", "--index", str(k), "--no-device", "--end", "x86_64")
    assert bad.returncode == 1 and "no [capped] table" in bad.stderr


def test_profile_layers_on_the_capped_device_over_rpc():
    """Issue 15 part 2: a TVM RPC server inside the capped device's cgroup; the profiler
    compiles here (uncapped) and times each layer there: ~1/fraction of the same build timed on
    the edge's core with the same one thread (the edge's RPC server: not this process, whose
    thread pool uses every core and would make the ratio look larger than the cap)."""
    _require_cgroups()
    from tvmsplit.profile import RPCSession, profile_layers
    from tvmsplit.testbed import Testbed

    from tvmsplit.testbed.cgroup import Limits

    g = ts.load(zoo.make("chain", input_size=32), name="chain32")
    layers = ["conv2", "conv4"]
    edge_core = next(c for c in sorted(os.sched_getaffinity(0)) if c != 0)  # pi-class is on 0
    with Testbed("wifi", delay_ms=0, end="pi-class", device=False, rpc=False,
                 edge_limits=Limits(cpus=str(edge_core))) as tb:
        host, port = tb.start_end_rpc()
        assert tb.state()["end_rpc"] == {"host": tb.device_ip, "port": port}
        rpc_pid = [r["pid"] for r in tb.procs if r["role"].startswith("end-rpc")][0]
        assert rpc_pid in tb.cgroups["end"].pids()
        with RPCSession(host, port) as s:
            capped = profile_layers(g, "pi-class", s, number=3, repeat=7, layers=layers)
        assert tb.threads("edge") == 1  # one core: the end's thread count
        with RPCSession(*tb.start_edge_rpc()) as s:
            local = profile_layers(g, "pi-class", s, number=3, repeat=7, layers=layers)
    ratios = [c.timing.median_ms / f.timing.median_ms for c, f in zip(capped, local)]
    print("\nlayers on pi-class over RPC vs the edge core: "
          + ", ".join(f"{c.layer} {c.timing.median_ms:.1f}/{f.timing.median_ms:.2f} ms = {r:.1f}x"
                      for c, f, r in zip(capped, local, ratios)), file=sys.stderr)
    # The cap's order, not its precise value (BENCHMARKS.md measures that): a 6 ms kernel spans
    # six 10 ms periods, and on a shared CI host one conv measured 13.2x (80.1 / 6.05 ms) while
    # the other measured 9.2x, so the bound is 6-16x: it still fails a cap that is off (1x) or
    # doubled (20x).
    assert all(6 <= r <= 16 for r in ratios), ratios


def test_cgroups_are_removed_after_a_failed_up_and_a_crashed_owner(tmp_path):
    _require_cgroups()
    from dataclasses import replace

    from tvmsplit.testbed import Testbed, net
    from tvmsplit.testbed.capped import get_capped
    from tvmsplit.testbed.cgroup import find_named
    from tvmsplit.testbed.core import indices_in_use, teardown

    with pytest.raises(TestbedError, match="wants core 99"):
        Testbed("wifi", delay_ms=0, end=replace(get_capped("pi-class"), core=99),
                device=False, rpc=False).up()
    k = min(set(range(40, 64)) - set(indices_in_use()))
    assert not find_named(f"tvmsplit-tb{k}-")
    # an owner killed without down(): its cgroups stay until `down` (or the next up) removes them
    code = ("import os, sys, time; from tvmsplit.testbed import Testbed\n"
            f"tb = Testbed('wifi', delay_ms=0, end='pi-class', device=False, rpc=False, index={k})\n"
            "tb.up(); print('up', flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert owner.stdout.readline().strip() == "up"
        left = find_named(f"tvmsplit-tb{k}-")
        assert len(left) >= 3, left  # end: cpu, cpuset, memory; edge: cpuset
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    assert find_named(f"tvmsplit-tb{k}-"), "SIGKILL leaves them (no atexit)"
    removed = teardown(k)
    assert any(r.startswith("cgroup ") for r in removed), removed
    assert not find_named(f"tvmsplit-tb{k}-")
    assert not ({f"tvmsplit-tb{k}-dev", f"tvmsplit-tb{k}-edge"} & net.namespaces())


# ------------------------------------------------------- issue 15: plan quality, end to end
def _tiny_mlp(tmp_path) -> Path:
    from tvmsplit.onnxbuild import mlp

    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp("mlp", [512, 1024, 256, 10]).SerializeToString())
    return path


def test_evaluate_runs_every_plan_on_the_testbed_and_regret_is_at_least_one(tmp_path, monkeypatch):
    """`tvmsplit evaluate` on a tiny model: costs measured on the capped end device and the
    edge, the chosen plan and every alternative run as real pipelines over a shaped link, each
    output == onnxruntime; regret >= 1, and the JSON has what the issue asks for."""
    _require_cgroups()
    from cli_helpers import invoke, ok

    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "cache"))
    model = _tiny_mlp(tmp_path)
    result = ok(invoke("evaluate", model, "--link", "4g", "--requests", 3, "--rounds", 1, "--json",
                       "--save", tmp_path / "ev.json"))
    data = json.loads(result.stdout)
    assert json.loads((tmp_path / "ev.json").read_text()) == data
    names = [p["name"] for p in data["plans"]]
    assert names[:2] == ["all-end", "all-edge"] and names[2:] == ["cut@fc1", "cut@fc2"]
    assert data["chosen"] in names and data["regret"] >= 1.0 and data["speedup"] > 0
    assert set(data["single_site"]) == {"end: tvmsplit", "end: onnxruntime", "edge: tvmsplit",
                                        "edge: onnxruntime"}
    best = min(p["measured"] for p in data["plans"])
    chosen = next(p for p in data["plans"] if p["name"] == data["chosen"])
    assert data["regret"] == pytest.approx(chosen["measured"] / best)
    for p in data["plans"]:
        assert p["latency_ms"]["n"] == (1 if p["pruned"] else 3)
        assert p["measured"] > 0 and p["max_rel_error"] < 1e-3
        assert len(p["stage_ms"]) == len(p["placement"]) and np.isfinite(p["error"])
    assert 0 <= data["noise"] < 1
    # the capped device's overhead comes from a probe of many quota periods, the short one is
    # kept for the record; the edge has the one-layer probe
    probes = data["overhead_probes_ms"]
    assert set(probes["end"]) == {"overhead-probe-long", "overhead-probe"}
    assert data["stage_overhead_ms"]["end"] == probes["end"]["overhead-probe-long"]
    assert data["stage_overhead_ms"]["edge"] == probes["edge"]["overhead-probe"]
    # the measured costs were cached for the next plan of this model on these devices
    assert list((tmp_path / "cache" / "costs").glob("*.json"))


def test_evaluate_throughput_prices_the_end_devices_measured_send_cost(tmp_path, monkeypatch):
    """`evaluate --objective throughput`: the end's busy time for sending up the link is
    measured by streamed probes (all-end, and cuts sending 1 KB and 18 KB to the edge), goes into
    every plan's predicted bottleneck, and the figures are requests per second."""
    _require_cgroups()
    from cli_helpers import invoke, ok

    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "cache"))
    result = ok(invoke("evaluate", _tiny_mlp(tmp_path), "--link", "4g", "--requests", 4,
                       "--rounds", 1, "--objective", "throughput", "--json"))
    data = json.loads(result.stdout)
    assert data["unit"] == "requests/s" and data["regret"] >= 1.0
    send = data["send_cost"]
    assert send["device"] == "end" and send["ms_per_request"] >= 0 and send["ms_per_byte"] >= 0
    probes = send["probes"]
    assert probes["all-end"]["period_ms"] > probes["all-end"]["compute_ms"] > 0
    for cut, nbytes in (("cut@fc1", 1024), ("cut@conv5", 18_432)):   # the chain at 24x24
        assert probes[cut]["bytes"] == nbytes and probes[cut]["period_ms"] > 0
        assert len(probes[cut]["send_ms_rounds"]) == 3   # per round, against all-end's
        assert math.isfinite(probes[cut]["send_ms"])     # a median: noise may make it < 0
    best = max(p["measured"] for p in data["plans"])
    chosen = next(p for p in data["plans"] if p["name"] == data["chosen"])
    assert data["regret"] == pytest.approx(best / chosen["measured"])
    for p in data["plans"]:
        assert p["predicted"] > 0 and p["measured"] > 0 and p["max_rel_error"] < 1e-3
    # the measured send cost is in the prediction: cut@fc1's end stage sends fc1's 4 KB up
    cut = next(p for p in data["plans"] if p["name"] == "cut@fc1")
    end_ms, edge_ms = cut["predicted_compute_ms"]
    busy = end_ms + send["ms_per_request"] + send["ms_per_byte"] * 4096
    occupancy = 4096 * 8 / (data["link"]["up_mbps"] * 1e3)   # ms, no rtt in a stream
    assert cut["predicted"] == pytest.approx(1e3 / max(busy, edge_ms, occupancy))


def test_evaluate_records_a_plan_whose_request_times_out_and_measures_the_others(tmp_path,
                                                                              monkeypatch):
    """One candidate's run fails as a request timeout does (the failure is injected; the rest is
    real): evaluate records it as failed, keeps the testbed's logs of that moment, runs every
    other candidate in every round, and ranks over those; the JSON is plain (no Infinity)."""
    _require_cgroups()
    import tvmsplit.evaluate as ev_mod
    from tvmsplit.devices import Link
    from tvmsplit.partition import CostTable
    from tvmsplit.runtime.pipeline import PipelineError

    g = ts.load(_tiny_mlp(tmp_path))
    real = ev_mod._run_candidate

    def one_times_out(bundle, *args, **kw):   # cut@fc1: the end's stage holds fc1 alone
        if len(bundle.stages) == 2 and bundle.stages[0].plan.layers == ("fc1",):
            # what Pipeline raises for a request with no answer in time (a real 1 ms timeout
            # is not deterministic: an answer in the same poll wins)
            raise PipelineError("request 3 got no answer within 120 s from the 2-stage "
                                "pipeline", request_id=3, code="timeout")
        return real(bundle, *args, **kw)

    monkeypatch.setattr(ev_mod, "_run_candidate", one_times_out)
    costs = CostTable.from_mapping(["end", "edge"], {name: {"end": 5.0, "edge": 0.5}
                                                    for name in ("fc1", "fc2", "fc3")})
    ev = ev_mod.evaluate(g, link=Link.profile("wifi"), requests=3, rounds=2, costs=costs,
                         prune=None, workdir=tmp_path / "work", log=lambda _m: None)
    assert set(ev.failed) == {"cut@fc1"} and "no answer within" in ev.failed["cut@fc1"]
    logs = tmp_path / "work" / "failed" / "cut@fc1-round1"
    assert str(logs) in ev.failed["cut@fc1"] and list(logs.glob("*.log"))
    ran = [r for r in ev.runs if not r.failed]
    assert {r.candidate.name for r in ran} == {"all-end", "all-edge", "cut@fc2"}
    assert all(len(r.latency.samples) == 4 for r in ran)     # 2 rounds x 2 requests each
    assert ev.best in ran and (ev.regret >= 1.0 or ev.chosen == "cut@fc1")
    data = json.loads(json.dumps(ev.to_json(), allow_nan=False))
    assert data["failed"] == ev.failed


def test_plan_works_on_a_fresh_machine_with_the_testbeds_devices(tmp_path, monkeypatch):
    """No trained predictor, no cost file: `plan --devices end=pi-class,edge=host` measures the
    model's layers on the testbed's devices (then reuses them), and the plan is buildable."""
    _require_cgroups()
    from cli_helpers import invoke, ok

    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TVMSPLIT_PREDICTORS", str(tmp_path / "no-predictors"))
    model = _tiny_mlp(tmp_path)
    args = ["plan", str(model), "--devices", "end=pi-class,edge=host", "--link", "3g", "--json"]
    first = ok(invoke(*args))
    assert "profiling 3 layers on the end" in first.stderr
    plan = json.loads(first.stdout)
    assert [d["target"] for d in plan["devices"]] == ["pi-class", "host"]
    again = ok(invoke(*args, "--save", tmp_path / "plan.json"))
    assert "from the cache" in again.stderr
    assert json.loads(again.stdout)["predicted"]["assignment"] == plan["predicted"]["assignment"]
    asked = invoke(*args[:4], "--costs", "predict")
    assert asked.exit_code == 1 and "tvmsplit profile --target" in asked.output \
        and "end=pi-class,edge=host" in asked.output


def test_set_link_changes_the_shaped_rate_and_delay_under_open_connections():
    """Testbed.set_link('3g') on a 4G testbed: the link monitor (a probe server on the edge,
    the same connection before and after) measures the new rate and RTT."""
    _require(device=False)
    from tvmsplit.linkmon import LinkMonitor
    from tvmsplit.testbed import Testbed

    with Testbed("4g", device=False, rpc=False) as tb:
        addr = f"tcp://{tb.edge_ip}:5599"
        server = tb.spawn("edge", [sys.executable, "-m", "tvmsplit.linkmon", "serve", "--bind",
                                   addr, "--stop-after", "300"], role="probe")
        time.sleep(1.0)
        mon = LinkMonitor(addr, alpha=1.0, sizes=(32 << 10, 128 << 10), rounds=2)  # small probes
        before = mon.update()
        tb.set_link("3g")
        after = mon.update()
        assert tb.state()["profile"]["name"] == "3g"
        tb.stop(server)
    g4, g3 = LINK_PROFILES["4g"], LINK_PROFILES["3g"]
    print(f"\n4g: up {before.up_bps / 1e6:.2f} Mbit/s rtt {before.rtt_s * 1e3:.0f} ms; "
          f"3g: up {after.up_bps / 1e6:.2f} Mbit/s rtt {after.rtt_s * 1e3:.0f} ms", file=sys.stderr)
    assert before.up_bps == pytest.approx(g4.up_bps, rel=0.2)
    assert after.up_bps == pytest.approx(g3.up_bps, rel=0.2)
    assert after.rtt_s == pytest.approx(g3.rtt_s, rel=0.2, abs=0.005)
    assert before.rtt_s == pytest.approx(g4.rtt_s, rel=0.2, abs=0.005)
