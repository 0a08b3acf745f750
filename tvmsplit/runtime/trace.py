"""Where one request's time went: per stage compute, per hop bytes and time.

Built by the client from the trace entries the stages append to the wire header (see worker.py)
and from its own send and receive times. A hop is one message from a sender to a receiver: in a
chain client -> stage 0 -> ... -> last stage -> client; in a stage DAG every route a request took,
so parallel branches show up as separate hops.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..plan import CLIENT_END
from .gather import Part


@dataclass(frozen=True)
class Hop:
    """One message: ``src`` -> ``dst`` (stage indices; ``CLIENT_END`` = -1 for the client),
    ``nbytes`` on the wire, ``ms`` from the sender's send time to the receiver's receive time
    (wall clocks, so it includes queueing behind earlier requests and any clock offset between
    hosts)."""

    src: int
    dst: int
    nbytes: int
    ms: float


@dataclass(frozen=True)
class Trace:
    """``compute_ms[s]`` is stage s; ``hops`` in receiver order (stages, then the client). For a
    chain, hop 0 is client -> stage 0, hop s is stage s-1 -> stage s, the last hop is the last
    stage -> client."""

    request_id: int
    compute_ms: tuple[float, ...]
    hops: tuple[Hop, ...]
    total_ms: float
    hosts: tuple[str, ...]
    # sequential stages (HyPS): per stage, the ms this request's share of loading segments took
    # (part of compute_ms; 0 for other stages) and how many requests shared that load
    load_ms: tuple[float, ...] = ()
    batch: tuple[int, ...] = ()

    @property
    def hop_bytes(self) -> tuple[int, ...]:
        return tuple(h.nbytes for h in self.hops)

    @property
    def hop_ms(self) -> tuple[float, ...]:
        return tuple(h.ms for h in self.hops)

    @property
    def transfer_ms(self) -> float:
        """The sum over hops (on a DAG, parallel branches' transfers overlap in time)."""
        return sum(self.hop_ms)


def _num(e: Mapping[str, Any], key: str) -> float:
    v = e.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def make_trace(rid: int, send_ts: float, replies: Sequence[Part],
               entries: Sequence[Mapping[str, Any]]) -> Trace:
    """The trace of request ``rid``: sent at ``send_ts``, its reply parts as received, and the
    merged stage entries (KeyError/TypeError when an entry lacks what our workers write)."""
    sent_at = {CLIENT_END: send_ts}
    hops = []
    for e in entries:  # from our workers (worker.py): "parts" lists what the stage received
        stage = e["stage"]
        for p in e["parts"]:
            hops.append(Hop(p["from"], stage, p["bytes"],
                            (_num(p, "recv_ts") - sent_at.get(p["from"], math.nan)) * 1e3))
        sent_at[stage] = _num(e, "send_ts")
    for part in replies:
        hops.append(Hop(part.source, CLIENT_END, part.nbytes,
                        (part.recv_ts - sent_at.get(part.source, math.nan)) * 1e3))
    done = max(p.recv_ts for p in replies)
    return Trace(rid, tuple(_num(e, "compute_ms") for e in entries), tuple(hops),
                 (done - send_ts) * 1e3, tuple(str(e.get("host", "")) for e in entries),
                 tuple(_num(e, "load_ms") if "load_ms" in e else 0.0 for e in entries),
                 tuple(int(e["batch"]) if isinstance(e.get("batch"), int) else 1 for e in entries))
