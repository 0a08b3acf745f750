"""Per-request overhead of the Python and the native worker on the testbed's capped end device
and its edge (``evaluate.stage_overheads``: a probe of many quota periods and a one-layer probe
on the end, a one-layer probe on the edge), alternating worker kinds, ``--rounds`` each. Root.

    TVMSPLIT_NATIVE_WORKER=build/native/tvmsplit-worker python3 bench/bench_overhead.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tvmsplit.devices import Device, Link  # noqa: E402
from tvmsplit.evaluate import stage_overheads  # noqa: E402
from tvmsplit.testbed import Testbed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--link", default="4g")
    args = ap.parse_args()
    devices = (Device("end", "pi-class"), Device("edge", "host"))
    link = Link.profile(args.link)
    out: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for kind in ("python", "native"):
                with Testbed(link, end="pi-class", device=False, rpc=False, worker=kind) as tb:
                    probes: dict = {}
                    stage_overheads(devices, tb, link, Path(tmp) / f"{kind}{rnd}", probes=probes,
                                    log=lambda m, k=kind: print(k, m, file=sys.stderr, flush=True))
                    out.setdefault(kind, []).append(probes)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
