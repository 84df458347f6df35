"""Concurrency: at most ``limit`` leased runs per key, up to two limits per function, served fairly.

Inngest's semantics: a concurrency limit counts runs *executing steps* (holding a lease);
sleeping and waiting runs hold no slot. A function has at most two limits; each has a key
(CEL, default: one key for the whole function) and a scope: ``fn`` (the key's runs of this
function) or ``app`` (the key's runs of every function of the app that uses it; Inngest's
``env``/``account`` scopes have no counterpart). A run may be leased only when every one of its
slots has room under its own function's limit.

Counts are never stored as counters that could leak: the store derives them from the leased
runs themselves (``runs`` whose status is in :data:`gateway.runs.HOLDS_LEASE`, by slot), so
every way a lease ends (completion, failure, suspension, cancel, timeout, worker or gateway
death) frees its slot by changing the run's status.

Fairness. A run's *queue* is the pair of its slots: with ``Concurrency(10)`` and
``Concurrency(2, key="event.data.tenant")`` each tenant is a queue. :func:`plan` serves the
queues that can dispatch (a ready run and room in every slot) round-robin, in key order from a
cursor, one run per queue per turn. Bound: a queue that becomes ready has its first run
dispatched within ``k`` dispatches, where ``k`` is the number of queues able to dispatch
(itself included), whatever their backlogs: with 10,000 runs of tenant A queued, tenant B's
first run is dispatched within 2 dispatches. Inngest shuffles partitions with weights instead
(its "fair multi-tenant queue"), which bounds the wait only in expectation. The cursor is per
function and kept in the store, so several gateways claiming in turn keep the bound.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

#: Most limits a function may set (Inngest's too).
MAX_LIMITS = 2
#: Characters of a slot: hex, so keys sort alike in Python and in every store collation.
SLOT_LENGTH = 40


@dataclass(frozen=True)
class Limit:
    limit: int
    scope: Literal["fn", "app"] = "fn"

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {self.limit}")


def slot(limit: Limit, key_hash: str, *, function_id: str, app_id: str) -> str:
    """The slot a run takes under ``limit``: what the store counts leased runs by.

    A digest (the store indexes it on every leased run): scope, owner and key hash.
    """
    owner = f"fn:{function_id}" if limit.scope == "fn" else f"app:{app_id}"
    return hashlib.sha256(f"{owner}\0{key_hash}".encode()).hexdigest()[:SLOT_LENGTH]


def queue_of(slots: Sequence[str]) -> str:
    """A run's queue: its slots together (one queue per key pair, served fairly)."""
    return "".join(slots)


def slots_of(queue: str) -> tuple[str, ...]:
    """The slots a queue stands for (:func:`queue_of` reversed)."""
    return tuple(queue[i:i + SLOT_LENGTH] for i in range(0, len(queue), SLOT_LENGTH))


def backlog_full(queued: int, max_queued: int | None) -> str | None:
    """The skip message for a new run of a key with ``queued`` runs waiting, or None to queue it.

    ``max_queued`` (no peer has it) bounds what one tenant flooding a key can make the store
    hold; the refused run is recorded as Skipped.
    """
    if max_queued is None or queued < max_queued:
        return None
    return (f"backlog full: {queued} runs of this concurrency key are already waiting "
            f"(max_queued={max_queued}); this run was not queued")


@dataclass(frozen=True)
class Queue:
    """One key's queue as a claim sees it: runs ready now, and its (slot, limit) pairs."""

    key: str
    ready: int
    slots: tuple[tuple[str, int], ...]

    def has_room(self, used: Mapping[str, int]) -> bool:
        return all(used.get(s, 0) < limit for s, limit in self.slots)


@dataclass(frozen=True)
class Plan:
    """Queues to dispatch one run each from, in order (a queue may repeat), and the cursor."""

    keys: tuple[str, ...]
    cursor: str | None


def plan(queues: Sequence[Queue], used: Mapping[str, int], cursor: str | None, n: int) -> Plan:
    """Choose up to ``n`` dispatches round-robin over ``queues``, starting after ``cursor``.

    ``used[slot]`` is how many runs hold the slot now (leased, or chosen earlier in the same
    claim). Queues are visited in key order from the first key after ``cursor`` (wrapping
    round), one dispatch per queue per turn, each taking a place in every one of its slots,
    until ``n`` are chosen or no queue can take more. The returned cursor is the last key
    served (unchanged when none was).
    """
    taken = dict(used)
    by_key = {q.key: q for q in queues if q.ready > 0}
    left = {k: q.ready for k, q in by_key.items()}
    order = sorted(by_key)
    if not order or n <= 0:
        return Plan((), cursor)
    start = bisect.bisect_right(order, cursor) if cursor is not None else 0
    ring = order[start:] + order[:start]
    chosen: list[str] = []
    while ring and len(chosen) < n:  # one turn: each queue with room and runs left gives one
        later: list[str] = []
        for key in ring:
            if len(chosen) == n:
                break
            queue = by_key[key]
            if not queue.has_room(taken):
                continue  # full for this claim: places only fill up within it
            chosen.append(key)
            for s, _ in queue.slots:
                taken[s] = taken.get(s, 0) + 1
            left[key] -= 1
            if left[key] > 0:
                later.append(key)
        ring = later
    return Plan(tuple(chosen), chosen[-1] if chosen else cursor)
