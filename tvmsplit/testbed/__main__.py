"""``python -m tvmsplit.testbed up|down|status|sysroot`` (see ``--help``)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..devices import LINK_PROFILES
from ..errors import TvmsplitError
from . import core, sysroot


def build_parser(prog: str = "python -m tvmsplit.testbed") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Emulated testbed: an ARM end device (qemu aarch64) and an x86 edge in "
                    "network namespaces, joined by a shaped link. Needs root.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create the namespaces, the shaped link, the ARM device and "
                                   "its TVM RPC server; leaves them running")
    up.add_argument("--profile", default="4g", choices=[*LINK_PROFILES, "custom"],
                    help="link profile (tvmsplit.devices.LINK_PROFILES; default 4g)")
    up.add_argument("--up-mbps", type=float, default=None, help="uplink goodput (device -> edge)")
    up.add_argument("--down-mbps", type=float, default=None, help="downlink goodput")
    up.add_argument("--delay-ms", type=float, default=None,
                    help="one-way delay each way (profile default; 0 = rate shaping only)")
    up.add_argument("--loss", type=float, default=None, help="packet loss probability each way")
    up.add_argument("--index", type=int, default=0,
                    help="testbed number 0..63: names tvmsplit-tb{k}-dev/-edge, addresses "
                         "10.77.{2k}.0/24 and 10.77.{2k+1}.0/24 (default 0)")
    up.add_argument("--no-rpc", action="store_true", help="do not start the TVM RPC server")
    up.add_argument("--end", default=None, metavar="PROFILE",
                    help="also a capped end device (placement 'end'): a native worker in the "
                         "device's namespace inside a cgroup, e.g. pi-class, phone-class "
                         "(targets/capped/); the edge's workers are pinned to the other cores")
    up.add_argument("--end-rpc", action="store_true",
                    help="with --end: a TVM RPC server on the capped device (port 9091), for "
                         "`tvmsplit profile --target PROFILE --rpc HOST:9091`")
    up.add_argument("--no-device", action="store_true",
                    help="no qemu ARM device (no sysroot; implies --no-rpc): e.g. with --end")
    up.add_argument("--bundle", default=None, help="also start one worker per stage of this bundle")
    up.add_argument("--place", default=None,
                    help="with --bundle: where each stage runs: device (qemu ARM), end (the "
                         "capped device, needs --end) or edge, e.g. device,edge (default: stage 0 "
                         "on the end device with --end, else on the device; the rest on the edge)")
    up.add_argument("--json", action="store_true", help="print the state as JSON")
    down = sub.add_parser("down", help="stop the testbed's processes and remove its namespaces")
    down.add_argument("--index", type=int, default=0)
    down.add_argument("--all", action="store_true", help="every testbed found on this machine")
    st = sub.add_parser("status", help="what is up: namespaces, processes, link counters")
    st.add_argument("--index", type=int, default=None, help="default: every testbed found")
    st.add_argument("--json", action="store_true")
    sr = sub.add_parser("sysroot", help="build (or check) the cached ARM sysroot only")
    sr.add_argument("--rebuild", action="store_true", help="build it again from scratch")
    return p


def _print_state(state: dict) -> None:
    print(f"testbed {state['name']}: {state['profile']['name']} "
          f"(up {state['profile']['up_bps'] / 1e6:g} / down {state['profile']['down_bps'] / 1e6:g}"
          f" Mbit/s, delay {state['profile']['delay_ms']:g} ms each way, loss "
          f"{state['profile']['loss']:g}), link {state['link']}"
          + ("  [STALE: its owner process is gone; `down` removes it]" if state.get("stale")
             else ""))
    a = state["addresses"]
    print(f"  device  {state['namespaces']['device']}  {a['device']} (host link), "
          f"{a['device_link']} (access link)")
    print(f"  edge    {state['namespaces']['edge']}  {a['edge']}")
    if state.get("end"):
        e = state["end"]
        print(f"  end     {e['name']}: core {e['core']} at {e['cpu_fraction']:.0%} (quota "
              f"{e['quota_us']} us / period {e['period_us']} us), {e['threads']} thread(s), "
              f"memory {e['memory_bytes']}")
    for role, cg in (state.get("cgroups") or {}).items():
        print(f"  cgroup  {role}: {', '.join(cg['dirs'])}")
    if state.get("end_rpc"):
        print(f"  end rpc tvmsplit profile --target {state['end']['name']} --rpc "
              f"{state['end_rpc']['host']}:{state['end_rpc']['port']}")
    if state.get("rpc"):
        print(f"  rpc     tvm.rpc.connect({state['rpc']['host']!r}, {state['rpc']['port']})")
    for w in state.get("workers", []):
        print(f"  worker  stage {w['stage']} on the {w['where']}: data {w['data']} "
              f"control {w['control']} out {w['out']}")
    for r in state.get("processes", []):
        alive = state.get("alive", {}).get(f"{r['role']} (pid {r['pid']})")
        flag = "" if alive is None else ("  alive" if alive else "  DEAD")
        print(f"  process {r['role']} pid {r['pid']}{flag}  log {r['log']}")
    if state.get("timings"):
        print("  timings " + ", ".join(f"{k} {v:g}" for k, v in state["timings"].items()))


def main(argv: Sequence[str] | None = None, prog: str = "python -m tvmsplit.testbed") -> int:
    """Run one command; returns the exit code (0 ok, 1 a TvmsplitError, 2 bad usage)."""
    args = build_parser(prog).parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.cmd == "sysroot":
            sr = sysroot.ensure_sysroot(rebuild=args.rebuild, log=log)
            print(json.dumps({"path": str(sr.path), **sr.info}, indent=1))
            return 0
        if args.cmd == "up":
            tb = core.Testbed(args.profile, index=args.index, up_mbps=args.up_mbps,
                              down_mbps=args.down_mbps, delay_ms=args.delay_ms, loss=args.loss,
                              rpc=not (args.no_rpc or args.no_device),
                              device=not args.no_device, end=args.end, log=log)
            tb.up(detach=True)
            try:
                if args.end_rpc:
                    if not args.end:
                        raise core.TestbedError("--end-rpc needs --end PROFILE")
                    tb.start_end_rpc()
                if args.bundle:
                    from ..bundle import Bundle

                    n = len(Bundle.load(args.bundle, stages=[]).stages)
                    place = (args.place.split(",") if args.place
                             else ["end" if args.end else "device"] + ["edge"] * (n - 1))
                    if len(place) != n:
                        raise core.TestbedError(f"--place names {len(place)} stage(s), the bundle "
                                                f"has {n}")
                    tb.start_workers(args.bundle, place)
            except BaseException:
                tb.down()
                raise
            state = core.status(tb.index)
            print(json.dumps(state, indent=1)) if args.json else _print_state(state)
            return 0
        if args.cmd == "down":
            indices = core.indices_in_use() if args.all else [args.index]
            for k in indices:
                removed = core.teardown(k)
                print(f"testbed tb{k}: " + (f"removed {', '.join(removed)}" if removed
                                            else "nothing to remove"))
            return 0
        if args.cmd == "status":
            indices = core.indices_in_use() if args.index is None else [args.index]
            states = [core.status(k) for k in indices]
            if args.json:
                print(json.dumps(states, indent=1))
            elif not states:
                print("no testbed is up")
            for s in states if not args.json else []:
                if s.get("name"):
                    _print_state(s)
                else:
                    print(f"testbed tb{s['index']}: no state file; namespaces present: "
                          f"{', '.join(s['namespaces_present']) or 'none'}")
            return 0
    except TvmsplitError as exc:
        print(f"tvmsplit testbed: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
