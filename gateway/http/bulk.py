"""Selections of runs, outside the write path: bulk cancel, bulk replay and filtered lists.

One :class:`Selection` (a function or all, statuses, a queue-time range, a CEL filter or a
text search over each run's event) is read by one :class:`Selector`, newest first, a page at a
time from the read side: bulk cancel (``POST /v1/functions/{id}/cancel``), bulk replay
(``.../replay``), their dry runs (the dashboard's count before it asks to confirm) and the
dashboard's filtered run list all walk it the same way. None of this happens in the store's
write transaction, which every event and checkpoint of the gateway waits for; only the ids
chosen go to the engine, one page per command, so intake is interleaved with the work.

A CEL filter is evaluated in a child process (:mod:`gateway.http.filter_process`: the CEL
library holds the GIL, so a thread would not spare the event loop). A request scans at most
:data:`MAX_SCANNED` runs within :data:`BUDGET_SECONDS`; past either it answers with a
``cursor`` to continue from. A filter that cannot finish one page within the budget is
refused (400): it is too expensive for these events.

A run id is a ULID of its queue time, so a time range is an id range, and paging newest first
means runs created meanwhile (a bulk replay's own runs among them) are never reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway import runs
from gateway.engine import Engine
from gateway.http.filter_process import FilterOverBudget, FilterProcess, Rows
from gateway.store.base import CancelRequest, RunScan
from protocol.errors import InvalidInput

#: Runs read, filtered and acted on together (one write command each).
PAGE = 200
#: Most runs one request examines; the answer's cursor continues from there.
MAX_SCANNED = 50_000
#: Most seconds one request spends selecting (monotonic clock); same cursor past it.
BUDGET_SECONDS = 10.0

#: The same for a filtered list of runs (a page someone waits for).
LIST_SCANNED = 10_000
LIST_SECONDS = 3.0

#: Statuses a bulk cancel may touch (live runs), and those a bulk replay may (ended ones).
LIVE = tuple(sorted(runs.LIVE))
ENDED = tuple(sorted(runs.ENDED))
#: What a bulk replay selects when no status is given.
REPLAY_DEFAULT = (runs.RunStatus.CANCELLED.value, runs.RunStatus.FAILED.value)

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: After every run id (ids are ULIDs, 0-9 and A-Z).
_LAST = "Z" * 27
_MAX_MS = (1 << 48) - 1

Action = Literal["cancel", "replay", "count"]


def id_floor(ts: float) -> str:
    """The smallest run id queued at or after ``ts`` (epoch seconds, to the millisecond)."""
    ms = min(max(int(ts * 1000), 0), _MAX_MS)
    chars = []
    for _ in range(10):
        chars.append(_ALPHABET[ms & 31])
        ms >>= 5
    return "".join(reversed(chars)) + "0" * 16


@dataclass(frozen=True, slots=True)
class Selection:
    """Runs of ``function_id`` (None: all) in ``statuses``, queued in [after, before),
    whose event satisfies ``if_`` (CEL over ``event``) and contains ``text`` in its data;
    ``cursor`` continues a previous request (below that run id)."""

    function_id: str | None
    statuses: tuple[str, ...]
    queued_after: float | None = None
    queued_before: float | None = None
    if_: str | None = None
    text: str | None = None
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    action: Action
    matched: int  # runs the selection chose (for count, all there is to know)
    done: int  # runs cancelled or replayed (a run may have ended meanwhile)
    scanned: int
    cursor: str | None  # set when the budget ran out before the last run: send it back
    run_ids: tuple[str, ...] = ()  # a replay's new runs

    def json(self) -> dict[str, Any]:
        tail = {"scanned": self.scanned, "complete": self.cursor is None,
                "cursor": self.cursor}
        if self.action == "cancel":
            return {"cancelled": self.done, **tail}
        if self.action == "replay":
            return {"replayed": self.done, "run_ids": list(self.run_ids), **tail}
        return {"matched": self.matched, **tail}


class Selector:
    """Walks a :class:`Selection` newest first; use as an async context manager (it owns the
    CEL filter's child process). After :meth:`pages`, ``scanned`` and ``cursor`` say how far
    it went (``cursor`` is None when every run was seen)."""

    def __init__(self, engine: Engine, selection: Selection, *, page: int | None = None,
                 budget: float | None = None, max_scanned: int | None = None) -> None:
        self.engine = engine
        self.selection = selection
        self.page = PAGE if page is None else page
        self.budget = BUDGET_SECONDS if budget is None else budget
        self.max_scanned = MAX_SCANNED if max_scanned is None else max_scanned
        self.scanned = 0
        self.cursor: str | None = None
        self._filter: FilterProcess | None = None

    async def __aenter__(self) -> Selector:
        if self.selection.if_ is not None:
            self._filter = FilterProcess(self.selection.if_)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._filter is not None:
            self._filter.close()

    async def pages(self) -> AsyncGenerator[list[str], None]:
        """The ids chosen in each page read, newest first.

        A consumer that stops early sets ``cursor`` itself (it knows where it stopped).

        Raises:
            InvalidInput: the filter could not evaluate the first page within the budget.
        """
        s, clock = self.selection, self.engine.clock
        deadline = clock.monotonic() + self.budget
        low = id_floor(s.queued_after) if s.queued_after is not None else ""
        high = min(s.cursor or _LAST,
                   id_floor(s.queued_before) if s.queued_before is not None else _LAST)
        while True:
            rows = await self.engine.store.scan_runs(RunScan(
                s.function_id, s.statuses, low, high, self.page))
            if not rows:
                self.cursor = None
                return
            try:
                chosen = await self._choose(rows, max(0.0, deadline - clock.monotonic()))
            except FilterOverBudget:
                if self.scanned:  # what was done stands; the next request meets this page
                    self.cursor = high
                    return
                raise InvalidInput(
                    f"the 'if' filter did not finish within {self.budget:g} s on {len(rows)} "
                    "runs: it is too expensive for these events (comprehensions such as "
                    "exists() or filter() over long lists are slow); simplify it"
                ) from None
            self.scanned += len(rows)
            high = rows[-1][0]
            self.cursor = high if len(rows) == self.page else None
            yield chosen
            if self.cursor is None:
                return
            if self.scanned >= self.max_scanned or clock.monotonic() >= deadline:
                return

    async def _choose(self, rows: Rows, timeout: float) -> list[str]:
        text = self.selection.text
        if text:
            rows = await asyncio.to_thread(_containing, rows, text)
        if self._filter is not None and rows:
            return await self._filter.select(rows, timeout=timeout)
        return [run_id for run_id, _ in rows]


def _containing(rows: Rows, text: str) -> Rows:
    """The rows whose event's ``data`` holds ``text`` (case-insensitive) in its JSON."""
    needle = text.casefold()
    kept = []
    for run_id, payload in rows:
        data = orjson.loads(payload).get("data") if payload else None
        if data is not None and needle in orjson.dumps(data).decode().casefold():
            kept.append((run_id, payload))
    return kept


async def act_in_bulk(engine: Engine, selection: Selection, action: Action, *,
                      reason: str = "cancelled in bulk") -> BulkOutcome:
    """Cancel, replay or count what ``selection`` chooses, a page at a time, within budget.

    Raises:
        InvalidInput: the filter could not evaluate one page within the budget.
    """
    matched = done = 0
    new_runs: list[str] = []
    async with Selector(engine, selection) as selector:
        async for chosen in selector.pages():
            matched += len(chosen)
            if not chosen:
                continue
            if action == "cancel":
                done += await engine.cancel(CancelRequest(reason, run_ids=chosen))
            elif action == "replay":
                # One command each, all in the engine's next batch: one transaction a page.
                started = await asyncio.gather(*(engine.replay(r) for r in chosen))
                new_runs.extend(r for r in started if r is not None)
                done = len(new_runs)
    return BulkOutcome(action, matched, done, selector.scanned, selector.cursor,
                       tuple(new_runs))


async def find_runs(engine: Engine, selection: Selection,
                    want: int) -> tuple[list[str], str | None, int]:
    """Up to ``want`` run ids the selection chooses, newest first, the cursor of the next page
    (None at the end) and how many runs were examined. A list answers while someone waits:
    it examines at most :data:`LIST_SCANNED` runs within :data:`LIST_SECONDS`, then offers
    the cursor (fewer than ``want`` found means the search goes on from there)."""
    found: list[str] = []
    filtered = selection.if_ is not None or selection.text is not None
    async with Selector(engine, selection, page=PAGE if filtered else want + 1,
                        budget=LIST_SECONDS, max_scanned=LIST_SCANNED) as selector:
        async with aclosing(selector.pages()) as pages:
            async for chosen in pages:
                found.extend(chosen)
                if len(found) >= want:
                    more = len(found) > want or selector.cursor is not None
                    return found[:want], found[want - 1] if more else None, selector.scanned
        return found, selector.cursor, selector.scanned
