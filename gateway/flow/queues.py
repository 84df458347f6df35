"""Concurrency at creation and at claim: the store's side of :mod:`.concurrency`.

At creation (:func:`place`) a run of a function with limits gets its slots, its queue and its
key as shown, from its event; a key expression that fails for the event fails the run with
the expression's error. At claim (:func:`claim`, inside the transaction that leases) the
function's queues are walked from the stored cursor, a window at a time (a skip-scan: one
index seek per queue, whatever the backlogs), the leased runs of their slots are counted,
:func:`.concurrency.plan` chooses, and the chosen queues' first runs are read (locked, on
PostgreSQL). Claims of one function (or one app, for app-scoped limits) are serialised across
gateways by ``lock_concurrency``, so a count and the leases that fill it are one decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.flow.concurrency import Limit, Queue, plan, queue_of, slot, slots_of
from gateway.flow.keys import KeyFailure, key_for, make_key
from gateway.scheduler import order
from gateway.store.db import Db, Row
from protocol.manifest import FunctionConfig

#: Queues read per window of a claim, at least (more when many workers have room).
MIN_WINDOW = 32


@dataclass(frozen=True)
class Placement:
    """A new run's slots (one per limit), queue and key as shown; or why it has none."""

    slots: tuple[str, ...] = ()
    queue: str = ""
    shown: str | None = None
    failure: str | None = None


def _limits(config: FunctionConfig) -> list[Limit]:
    return [Limit(c.limit, c.scope) for c in config.concurrency]


def app_of(function_id: str) -> str:
    return function_id.split("/", 1)[0]


def place(function_id: str, config: FunctionConfig, event: dict[str, Any]) -> Placement:
    """Where a run of ``function_id`` for ``event`` queues under the function's limits."""
    slots: list[str] = []
    shown: list[str] = []
    for limit, option in zip(_limits(config), config.concurrency, strict=True):
        key = key_for(option.key, event, scope="concurrency")
        if isinstance(key, KeyFailure):
            return Placement(failure=f"concurrency {key.reason}")
        slots.append(slot(limit, key.hash, function_id=function_id, app_id=app_of(function_id)))
        if option.key is not None:
            shown.append(key.display)
    return Placement(tuple(slots), queue_of(slots), ", ".join(shown) if shown else None)


def owners(function_id: str, config: FunctionConfig) -> list[str]:
    """What a claim of the function locks: the function, and its app for app-scoped limits."""
    found = [f"fn:{function_id}"]
    if any(c.scope == "app" for c in config.concurrency):
        found.append(f"app:{app_of(function_id)}")
    return found


def _queue(key: str, ready: int, limits: list[Limit]) -> Queue:
    """A queue with its slots' limits (a slot taken twice counts once, at the smaller limit)."""
    merged: dict[str, int] = {}
    for s, limit in zip(slots_of(key), limits, strict=True):
        merged[s] = min(limit.limit, merged.get(s, limit.limit))
    return Queue(key, ready, tuple(merged.items()))


@dataclass
class Claimer:
    """One transaction's concurrency claims: slots it has filled so far, across functions."""

    taken: dict[str, int] = field(default_factory=dict)

    async def _used(self, db: Db, slots: Iterable[str], used: dict[str, int]) -> None:
        """Add the leased runs of ``slots`` not counted yet to ``used``."""
        wanted = sorted({s for s in slots if s not in used})
        if not wanted:
            return
        counts: dict[str, int] = dict(await db.fetch("slots_running", wanted))
        for s in wanted:
            used[s] = int(counts.get(s, 0)) + self.taken.get(s, 0)

    async def claim(self, db: Db, function_id: str, config: FunctionConfig, now: float,
                    n: int) -> tuple[list[Row], bool]:
        """Up to ``n`` ready runs of ``function_id`` that its limits let start now, fairly.

        Returns the rows (as ``ready_runs`` gives them, plus the rank) and whether the
        function is drained: nothing more could start now, whatever the queues hold, until
        a slot frees or a run becomes ready.
        """
        limits = _limits(config)
        used: dict[str, int] = {}
        # Limits without a key hold every run of the function: full, nothing can start.
        fixed = [(slot(lim, make_key("concurrency", "").hash, function_id=function_id,
                       app_id=app_of(function_id)), lim.limit)
                 for lim, option in zip(limits, config.concurrency, strict=True)
                 if option.key is None]
        await self._used(db, [s for s, _ in fixed], used)
        if any(used[s] >= limit for s, limit in fixed):
            return [], True
        cursor: str | None = await db.fetchval("conc_cursor", function_id)
        cap = min(n, max(lim.limit for lim in limits))
        window = max(MIN_WINDOW, n + n // 4)  # most queues have room: few more than n
        queues: list[Queue] = []
        after, wrapped, exhausted, roomy = cursor or "", cursor is None, False, 0
        while roomy < n:
            rows = await db.fetch("conc_queues", function_id, after, now, window, cap)
            more = len(rows) == window
            if wrapped and cursor is not None:  # the second lap ends where the first began
                kept = [r for r in rows if r[0] <= cursor]
                more = more and len(kept) == len(rows)
                rows = kept
            found = [_queue(key, int(ready), limits) for key, ready in rows]
            await self._used(db, [s for q in found for s, _ in q.slots], used)
            queues += found
            roomy += sum(1 for q in found if q.has_room(used))
            if more:
                after = rows[-1][0]
            elif wrapped:
                exhausted = True
                break
            else:
                after, wrapped = "", True
        chosen = plan(queues, used, cursor, n)
        if not chosen.keys:
            return [], exhausted
        if chosen.cursor != cursor:
            await db.execute("set_conc_cursor", function_id, chosen.cursor)
        wanted: dict[str, int] = {}
        for key in chosen.keys:
            wanted[key] = wanted.get(key, 0) + 1
        # Within each queue, its runs already started first (gateway.scheduler.order).
        rows = await _heads(db, "conc_resumed_heads", function_id, now, wanted)
        fresh = order.left_per_queue(wanted, rows, queue=lambda r: r[6])
        query = "conc_heads_by_priority" if config.priority is not None else "conc_heads"
        rows += await _heads(db, query, function_id, now, fresh)
        for key in chosen.keys:
            for s in set(slots_of(key)):
                self.taken[s] = self.taken.get(s, 0) + 1
        return rows, exhausted and len(rows) < n


async def _heads(db: Db, query: str, function_id: str, now: float,
                 wanted: dict[str, int]) -> list[Row]:
    """The first ``wanted[q]`` ready runs of each queue ``q`` that ``query`` reads: one query
    per distinct count."""
    by_count: dict[int, list[str]] = {}
    for key, count in wanted.items():
        by_count.setdefault(count, []).append(key)
    rows: list[Row] = []
    for count, keys in sorted(by_count.items()):
        rows += await db.fetch(query, function_id, now, keys, count)
    return rows
