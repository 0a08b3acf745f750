"""An emulated testbed: an ARM end device (aarch64 under qemu-user) and an x86 edge in network
namespaces, joined by a link shaped to a 3G / 4G / WiFi / custom profile.

    python -m tvmsplit.testbed up --profile 4g      # status, down; --help for the rest

    from tvmsplit.testbed import Testbed
    with Testbed("4g") as tb:
        endpoints = tb.start_workers(bundle_dir, ["device", "edge"])
        ...                                          # Pipeline(bundle_dir, endpoints=endpoints)

Modules: ``profiles`` (link profiles), ``sysroot`` (the cached Debian arm64 sysroot),
``net`` (namespaces, links, tbf), ``linkemu`` (user-space delay/loss over TUN), ``rpc_server``
(TVM RPC with in-process sessions, for qemu), ``probe`` (link transfer measurements),
``core`` (the Testbed resource). Needs root, iproute2, qemu-user-static and mmdebstrap (for the
first build of the sysroot); :func:`unavailable_reason` says what is missing.
"""
from __future__ import annotations

from .core import Testbed, status, teardown
from .profiles import LinkProfile, TestbedError, get_profile

__all__ = ["LinkProfile", "Testbed", "TestbedError", "get_profile", "status", "teardown",
           "unavailable_reason"]


def unavailable_reason(device: bool = True, delay: bool = True) -> str | None:
    """Why a testbed cannot run here (one line with the fix), or None when it can.
    ``device``: the ARM device is needed; ``delay``: the TUN delay emulator is needed."""
    from . import net, sysroot

    reason = net.unavailable_reason()
    if reason is None and delay:
        reason = net.tun_unavailable_reason()
    if reason is None and device:
        building = sysroot.read_marker(sysroot.sysroot_path()) is None
        missing = sysroot.missing_tools(building)
        if missing:
            reason = (f"the ARM device needs {' and '.join(missing)} "
                      f"(apt-get install -y {' '.join(missing)})")
    return reason
