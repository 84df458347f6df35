"""Concurrency: at most ``limit`` leased runs per key, up to two limits per function, served fairly.

Inngest's semantics: a concurrency limit counts runs *executing steps* (holding a lease);
sleeping and waiting runs hold no slot. A function has at most two limits; each has a key
(CEL, default: one key for the whole function) and a scope: ``fn`` (the key's runs of this
function) or ``app`` (the key's runs of every function of the app that uses it; Inngest's
``env``/``account`` scopes have no counterpart). A run may be leased only when every one of its
slots has room.

Counts are never stored as counters that could leak: the store derives them from the leased
runs themselves (``runs`` whose status is in :data:`gateway.runs.HOLDS_LEASE`, grouped by slot),
so every way a lease ends (completion, failure, suspension, cancel, timeout, worker or gateway
death) frees its slot by changing the run's status.

Fairness. Each key is its own queue. :func:`plan` serves the keys that can dispatch (a ready
run and room in every slot) round-robin, in key order from a cursor, one run per key per turn.
Bound: a key that becomes ready has its first run dispatched within ``k`` dispatches, where
``k`` is the number of keys able to dispatch (itself included), whatever their backlogs: with
10,000 runs of key A queued, key B's first run is dispatched within 2 dispatches. Inngest
shuffles partitions with weights instead (its "fair multi-tenant queue"), which bounds the wait
only in expectation. The cursor is per function; with several gateways sharing it through the
store the bound holds as stated (each claim moves the shared cursor).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

#: Most limits a function may set (Inngest's too).
MAX_LIMITS = 2


@dataclass(frozen=True)
class Limit:
    limit: int
    scope: Literal["fn", "app"] = "fn"

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {self.limit}")


def slot(limit: Limit, key_hash: str, *, function_id: str, app_id: str) -> str:
    """The slot a run takes under ``limit``: what the store groups leased runs by."""
    owner = f"fn:{function_id}" if limit.scope == "fn" else f"app:{app_id}"
    return f"{owner}/{key_hash}"


def has_room(limits: Sequence[Limit], running: Sequence[int]) -> bool:
    """True when a run whose slots hold ``running[i]`` leases under ``limits[i]`` may be leased."""
    if len(limits) > MAX_LIMITS:
        raise ValueError(f"at most {MAX_LIMITS} concurrency limits per function, got {len(limits)}")
    if len(limits) != len(running):
        raise ValueError("one running count per limit")
    return all(n < limit.limit for limit, n in zip(limits, running, strict=True))


def room(limits: Sequence[Limit], running: Sequence[int]) -> int | None:
    """How many more runs of these slots may be leased now (None: no limit)."""
    if not limits:
        return None
    return max(0, min(limit.limit - n for limit, n in zip(limits, running, strict=True)))


def backlog_full(queued: int, max_queued: int | None) -> str | None:
    """The skip reason for a new run of a key with ``queued`` runs waiting, or None to queue it.

    ``max_queued`` (no peer has it) bounds what one tenant flooding a key can make the store
    hold; the refused run is recorded as Skipped.
    """
    if max_queued is None or queued < max_queued:
        return None
    return f"backlog full: {queued} runs of this key are queued (max_queued={max_queued})"


@dataclass(frozen=True)
class Plan:
    """Keys to dispatch one run each from, in order (a key may repeat), and the new cursor."""

    keys: tuple[str, ...]
    cursor: str | None


def plan(ready: Mapping[str, int], room_of: Mapping[str, int | None], cursor: str | None,
         n: int) -> Plan:
    """Choose up to ``n`` dispatches round-robin over keys, starting after ``cursor``.

    ``ready[k]`` is how many runs of key ``k`` are ready; ``room_of[k]`` how many more may be
    leased (None or missing: unlimited). Keys are visited in sorted order from the first key
    after ``cursor`` (wrapping round), one dispatch per key per turn, until ``n`` are chosen or
    no key can take more. The returned cursor is the last key served.
    """
    left = {k: c if room_of.get(k) is None else min(c, room_of[k] or 0)
            for k, c in ready.items()}
    order = sorted(k for k, c in left.items() if c > 0)
    if not order or n <= 0:
        return Plan((), cursor)
    start = bisect.bisect_right(order, cursor) if cursor is not None else 0
    ring = order[start:] + order[:start]
    chosen: list[str] = []
    while ring and len(chosen) < n:  # one turn: each key with runs left gives one
        turn, ring = ring[: n - len(chosen)], [k for k in ring if left[k] > 1]
        for key in turn:
            chosen.append(key)
            left[key] -= 1
    return Plan(tuple(chosen), chosen[-1])
