"""Network namespaces, links and shaping for the testbed (``ip`` and ``tc`` from iproute2).

Topology of testbed ``k`` (``N`` = ``$TVMSPLIT_TESTBED_NET``, default ``10.77``)::

    root namespace (client, RPC client)
        tsb{k}h  N.{2k}.1/24
           │  host link: veth, not shaped (the app runs on the device)
        tsb{k}hd N.{2k}.2/24
    tvmsplit-tb{k}-dev  (ARM device: qemu worker, RPC server; forwards between its links)
        tsb{k}u  N.{2k+1}.1     egress: tbf at the uplink rate
           │  access link: a veth pair, or two TUN devices joined by linkemu (delay, loss)
        tsb{k}d  N.{2k+1}.2     egress: tbf at the downlink rate
    tvmsplit-tb{k}-edge (edge server: x86 worker)

Routes: root -> N.{2k+1}.0/24 via the device; edge -> N.{2k}.0/24 via the device. So the client
reaches the edge through the device and the shaped link, both ways, as an app on the device would.
In both test namespaces ``tcp_slow_start_after_idle`` is 0 and IPv6 is off (a warm connection stays warm). Only
these addresses are used, and only on interfaces created here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..devices import Link
from .profiles import ETHERNET_HEADER_BYTES, TestbedError, wire_rate_bps

MAX_INDEX = 63
MTU = 1500
BURST_S = 0.002      # tbf bucket: 2 ms at the rate, at least two full frames
QUEUE_S = 0.5        # tbf queue: 0.5 s at the rate (cellular links are deep-buffered)


@dataclass(frozen=True)
class Layout:
    """Names and addresses of testbed ``index``."""

    index: int
    net: str = "10.77"

    def __post_init__(self):
        if not (isinstance(self.index, int) and 0 <= self.index <= MAX_INDEX):
            raise TestbedError(f"testbed index must be 0..{MAX_INDEX}, got {self.index!r}")
        parts = self.net.split(".")
        if len(parts) != 2 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
            raise TestbedError(f"TVMSPLIT_TESTBED_NET must be two octets like 10.77, got "
                               f"{self.net!r}")
        if not _private(parts):
            raise TestbedError(f"TVMSPLIT_TESTBED_NET {self.net!r} is not a private range "
                               "(10.x, 172.16-31.x or 192.168)")

    @classmethod
    def for_index(cls, index: int) -> "Layout":
        return cls(index, os.environ.get("TVMSPLIT_TESTBED_NET", "10.77"))

    @property
    def name(self) -> str:
        return f"tb{self.index}"

    ns_dev = property(lambda self: f"tvmsplit-tb{self.index}-dev")
    ns_edge = property(lambda self: f"tvmsplit-tb{self.index}-edge")
    if_host = property(lambda self: f"tsb{self.index}h")      # root side of the host link
    if_host_dev = property(lambda self: f"tsb{self.index}hd")  # device side of the host link
    if_up = property(lambda self: f"tsb{self.index}u")        # device side of the access link
    if_down = property(lambda self: f"tsb{self.index}d")      # edge side of the access link
    host_net = property(lambda self: f"{self.net}.{2 * self.index}.0/24")
    link_net = property(lambda self: f"{self.net}.{2 * self.index + 1}.0/24")
    host_ip = property(lambda self: f"{self.net}.{2 * self.index}.1")
    device_ip = property(lambda self: f"{self.net}.{2 * self.index}.2")
    device_link_ip = property(lambda self: f"{self.net}.{2 * self.index + 1}.1")
    edge_ip = property(lambda self: f"{self.net}.{2 * self.index + 1}.2")


def _private(parts: list[str]) -> bool:
    a, b = int(parts[0]), int(parts[1])
    return a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)


def run(*cmd: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(cmd)}` did not finish within {timeout:g} s") from None
    except FileNotFoundError:
        raise TestbedError(f"`{cmd[0]}` is not installed: apt-get install -y iproute2") from None
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def namespaces() -> set[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str, ns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", ns] if ns else []) + ["link", "show", "dev", name]
    return run(*cmd, check=False).returncode == 0


def unavailable_reason() -> str | None:
    """Why network namespaces with shaped links cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return f"`{tool}` is missing: apt-get install -y iproute2"
    probe = f"tvmsplit-probe-{os.getpid()}"
    p = run("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    try:
        veth = f"tsbp{os.getpid() % 100000}"
        p = run("ip", "-n", probe, "link", "add", veth, "type", "veth", "peer", "name", veth + "x",
                check=False)
        if p.returncode != 0:
            return f"cannot create a veth pair: {p.stderr.strip()}"
        p = run("tc", "-n", probe, "qdisc", "add", "dev", veth, "root", "tbf", "rate", "1mbit",
                "burst", "4kb", "latency", "100ms", check=False)
        if p.returncode != 0:
            return f"tc tbf is unavailable: {p.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def tun_unavailable_reason() -> str | None:
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the delay emulator needs TUN devices)"
    return None


def check_free(lay: Layout) -> None:
    """Refuse to set up over addresses or names that something else uses."""
    taken = sorted({lay.ns_dev, lay.ns_edge} & namespaces())
    if taken:
        raise TestbedError(f"network namespace(s) {', '.join(taken)} exist: testbed "
                           f"{lay.index} is up or was not cleaned up; run "
                           f"`python -m tvmsplit.testbed down --index {lay.index}`")
    if link_exists(lay.if_host):
        raise TestbedError(f"interface {lay.if_host} exists; run `python -m tvmsplit.testbed down "
                           f"--index {lay.index}`")
    routes = run("ip", "-4", "route", "show", check=False).stdout
    addrs = run("ip", "-4", "-o", "addr", "show", check=False).stdout
    for prefix in (lay.host_net.rsplit(".", 1)[0] + ".", lay.link_net.rsplit(".", 1)[0] + "."):
        if any(line.startswith(prefix) for line in routes.splitlines()) or \
                f" {prefix}" in addrs:
            raise TestbedError(f"{prefix}0/24 is already in use on this machine; pick another "
                               "--index or set TVMSPLIT_TESTBED_NET")


def set_sysctls(ns: str, values: dict[str, str], optional: tuple[str, ...] = ()) -> None:
    """Write /proc/sys entries inside ``ns`` (net.* is per namespace); no procps needed."""
    code = ("import sys\n"
            "for kv in sys.argv[1:]:\n"
            "    key, _, value = kv.partition('=')\n"
            "    try:\n"
            "        open('/proc/sys/' + key.lstrip('?').replace('.', '/'), 'w').write(value)\n"
            "    except OSError:\n"
            "        if not key.startswith('?'): raise\n")
    args = [f"{'?' if k in optional else ''}{k}={v}" for k, v in values.items()]
    run(*in_ns(ns, sys.executable, "-c", code, *args))


def create_namespaces(lay: Layout) -> None:
    for ns in (lay.ns_dev, lay.ns_edge):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        # a warm connection stays warm; no IPv6 chatter (router solicitations, DAD) on the
        # test links (optional: the kernel may have no IPv6); the device routes between links
        values = {"net.ipv4.tcp_slow_start_after_idle": "0",
                  "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        if ns == lay.ns_dev:
            values["net.ipv4.ip_forward"] = "1"
        set_sysctls(ns, values, optional=("net.ipv6.conf.all.disable_ipv6",
                                          "net.ipv6.conf.default.disable_ipv6"))


def create_host_link(lay: Layout) -> None:
    run("ip", "link", "add", lay.if_host, "type", "veth", "peer", "name", lay.if_host_dev,
        "netns", lay.ns_dev)
    run("ip", "addr", "add", f"{lay.host_ip}/24", "dev", lay.if_host)
    run("ip", "link", "set", lay.if_host, "up")
    run("ip", "-n", lay.ns_dev, "addr", "add", f"{lay.device_ip}/24", "dev", lay.if_host_dev)
    run("ip", "-n", lay.ns_dev, "link", "set", lay.if_host_dev, "up")


def create_veth_access_link(lay: Layout) -> None:
    run("ip", "-n", lay.ns_dev, "link", "add", lay.if_up, "mtu", str(MTU), "type", "veth",
        "peer", "name", lay.if_down, "netns", lay.ns_edge)
    run("ip", "-n", lay.ns_dev, "addr", "add", f"{lay.device_link_ip}/24", "dev", lay.if_up)
    run("ip", "-n", lay.ns_edge, "addr", "add", f"{lay.edge_ip}/24", "dev", lay.if_down)
    for ns, dev in ((lay.ns_dev, lay.if_up), (lay.ns_edge, lay.if_down)):
        run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", lay.ns_edge, "route", "add", lay.host_net, "via", lay.device_link_ip)


def configure_tun_access_link(lay: Layout) -> None:
    """The TUN devices exist in the root namespace (made by linkemu): move and configure them."""
    run("ip", "link", "set", lay.if_up, "netns", lay.ns_dev)
    run("ip", "link", "set", lay.if_down, "netns", lay.ns_edge)
    for ns, dev, me, peer in ((lay.ns_dev, lay.if_up, lay.device_link_ip, lay.edge_ip),
                              (lay.ns_edge, lay.if_down, lay.edge_ip, lay.device_link_ip)):
        run("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "txqueuelen", "1000")
        run("ip", "-n", ns, "addr", "add", me, "peer", f"{peer}/32", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", lay.ns_edge, "route", "add", lay.host_net, "dev", lay.if_down)


def add_routes(lay: Layout) -> None:
    run("ip", "route", "add", lay.link_net, "via", lay.device_ip, "dev", lay.if_host)


def shape(lay: Layout, profile: Link, tun: bool) -> dict:
    """tbf on both ends of the access link at the link's goodput plus the header overheads
    (``wire_rate_bps``); returns the shaper settings. Delay and loss are linkemu's."""
    l2 = 0 if tun else ETHERNET_HEADER_BYTES
    out = {}
    for direction, ns, dev, goodput in (("up", lay.ns_dev, lay.if_up, profile.up_bps),
                                        ("down", lay.ns_edge, lay.if_down, profile.down_bps)):
        rate = wire_rate_bps(goodput, MTU, l2)
        burst = max(2 * (MTU + l2), int(rate / 8 * BURST_S))
        limit = max(4 * (MTU + l2), int(rate / 8 * QUEUE_S)) + burst
        run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
            f"{int(rate)}bit", "burst", str(burst), "limit", str(limit))
        out[direction] = {"rate_bps": int(rate), "goodput_bps": goodput, "burst_bytes": burst,
                          "limit_bytes": limit}
    return out


def qdisc_stats(lay: Layout) -> dict:
    out = {}
    for direction, ns, dev in (("up", lay.ns_dev, lay.if_up), ("down", lay.ns_edge, lay.if_down)):
        p = run("tc", "-n", ns, "-s", "qdisc", "show", "dev", dev, check=False)
        out[direction] = " ".join(p.stdout.split()) if p.returncode == 0 else None
    return out


def teardown(lay: Layout) -> list[str]:
    """Remove everything of testbed ``lay`` that exists; returns what was removed. Idempotent."""
    removed = []
    existing = namespaces()
    for ns in (lay.ns_dev, lay.ns_edge):
        if ns in existing:
            run("ip", "netns", "del", ns, check=False)  # takes its interfaces with it
            removed.append(f"netns {ns}")
    for dev in (lay.if_host, lay.if_up, lay.if_down):  # root-namespace leftovers
        if link_exists(dev):
            run("ip", "link", "del", dev, check=False)
            removed.append(f"link {dev}")
    return removed
