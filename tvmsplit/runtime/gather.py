"""Gathering one request's parts from several senders (the fan-in of a stage DAG).

A stage whose inputs come from several senders (``Plan.senders``), and the client when several
stages send model outputs, receive one message per sender for each request. :class:`Gather`
holds the parts by request id until every sender's part is there. A part is recognised by its
tensor names: each sender has its own route, so the set of names says who sent it (and a set
that matches no route, or a sender heard twice, is an error the caller reports).

Bounded memory: at most ``max_open`` (``MAX_WAITING``) requests wait for parts; past that the
oldest is given up (the caller reports it as ``incomplete``), so a client must not keep more
requests in flight than that (``Pipeline`` checks its ``max_in_flight``). Ids that completed or failed are remembered (the last
``remember``) so that a part arriving after its request failed on another branch is dropped, and
an error that reaches a stage along two branches is passed on once.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..plan import Route, end_name

MAX_WAITING = 256  # requests a stage (or client) holds while they wait for other senders' parts


@dataclass(frozen=True)
class Part:
    """One sender's message for a request: its tensors, trace, arrival time and size."""

    source: int  # the sending stage, or CLIENT_END
    tensors: Mapping[str, np.ndarray]
    trace: tuple[dict[str, Any], ...]
    recv_ts: float
    nbytes: int


class GatherError(Exception):
    """A part that belongs to no route, or a second part from one sender. ``code`` as on the wire."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Gather:
    """Parts by request id until each of ``routes`` (``(source, route)`` pairs) has delivered."""

    def __init__(self, routes: Sequence[tuple[int, Route]], who: str, *,
                 max_open: int = MAX_WAITING, remember: int = 4096,
                 closed: "Gather | None" = None):
        self.who = who
        self.sources = {frozenset(r.tensors): src for src, r in routes}
        self.max_open, self.remember = max_open, remember
        self._open: OrderedDict[int, dict[int, Part]] = OrderedDict()
        # ids that are over, carried over from ``closed`` (the client's gather before a swap)
        self._closed: OrderedDict[int, None] = OrderedDict(closed._closed if closed else ())

    @property
    def expected(self) -> int:
        return len(self.sources)

    def source_of(self, names: Sequence[str]) -> int:
        """The sender whose route carries exactly ``names``; GatherError otherwise."""
        src = self.sources.get(frozenset(names))
        if src is None:
            routes = "; ".join(f"{end_name(s)}: {sorted(k)}" for k, s in self.sources.items())
            raise GatherError("bad_route", f"{self.who} got tensors {sorted(names)}, which match "
                                           f"no sender's route ({routes})")
        return src

    def is_closed(self, rid: int) -> bool:
        return rid in self._closed

    def add(self, rid: int, part: Part) -> list[Part] | None:
        """Store ``part``; all of the request's parts (in source order) once complete, else None.
        None too for a part of a request that already completed or failed (dropped)."""
        if rid in self._closed:
            return None
        parts = self._open.setdefault(rid, {})
        if part.source in parts:
            raise GatherError("duplicate_part", f"{self.who} got a second message for request "
                                                f"{rid} from {end_name(part.source)}")
        parts[part.source] = part
        if len(parts) < self.expected:
            return None
        del self._open[rid]
        self._close(rid)
        return [parts[s] for s in sorted(parts)]

    def fail(self, rid: int) -> bool:
        """Forget ``rid``'s parts; True the first time (pass its error on), False after that."""
        self._open.pop(rid, None)
        if rid in self._closed:
            return False
        self._close(rid)
        return True

    def overflow(self) -> list[int]:
        """Ids given up because more than ``max_open`` requests wait for parts (oldest first)."""
        out = []
        while len(self._open) > self.max_open:
            rid, _ = self._open.popitem(last=False)
            self._close(rid)
            out.append(rid)
        return out

    def _close(self, rid: int) -> None:
        self._closed[rid] = None
        while len(self._closed) > self.remember:
            self._closed.popitem(last=False)


def merge_traces(parts: Sequence[Part]) -> tuple[dict[str, Any], ...]:
    """One trace from the parts' traces: a stage on several branches' paths (a common ancestor)
    appears once; entries in stage order."""
    seen: dict[Any, dict[str, Any]] = {}
    for part in parts:
        for entry in part.trace:
            stage = entry.get("stage")
            key = stage if isinstance(stage, int) and not isinstance(stage, bool) else id(entry)
            seen.setdefault(key, entry)
    return tuple(sorted(seen.values(), key=lambda e: e.get("stage") if isinstance(
        e.get("stage"), int) else -1))

