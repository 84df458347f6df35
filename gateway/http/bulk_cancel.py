"""Bulk cancel (``POST /v1/functions/{id}/cancel``): select runs outside the write path.

A bulk cancel may cover every run of a function and filter them with a CEL expression over
each run's event. None of that happens in the store's write transaction, which every event
and checkpoint of the gateway waits for: runs are read a page at a time from the read side,
the filter is evaluated in a child process (:mod:`gateway.http.filter_process`: the CEL
library holds the GIL, so a thread would not spare the event loop), and only the ids selected
go to the engine, one page per command, so intake is interleaved with the cancel. A request
scans at most :data:`MAX_SCANNED` runs within :data:`BUDGET_SECONDS`; past either it answers
with a ``cursor`` to continue from. A filter that cannot finish one page within the budget is
refused (400): it is too expensive for these events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.engine import Engine
from gateway.http.filter_process import FilterOverBudget, FilterProcess
from gateway.store.base import CancelRequest
from protocol.errors import InvalidInput

#: Runs read, filtered and cancelled together (one write command each).
PAGE = 200
#: Most runs one request examines; the answer's cursor continues from there.
MAX_SCANNED = 50_000
#: Most seconds one request spends selecting (monotonic clock); same cursor past it.
BUDGET_SECONDS = 10.0

#: Before every run id (ids are ULIDs, 0-9 and A-Z).
_FIRST = ""
#: After every queue time.
_NEVER = 1e18


@dataclass(frozen=True, slots=True)
class BulkCancel:
    """What to cancel: a function's unfinished runs queued in [after, before) matching ``if_``."""

    function_id: str
    queued_after: float | None = None
    queued_before: float | None = None
    if_: str | None = None
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    cancelled: int
    scanned: int
    cursor: str | None  # set when the budget ran out before the last run: send it back

    def json(self) -> dict[str, Any]:
        return {"cancelled": self.cancelled, "scanned": self.scanned,
                "complete": self.cursor is None, "cursor": self.cursor}


async def cancel_in_bulk(engine: Engine, request: BulkCancel, *, reason: str) -> BulkOutcome:
    """Cancel the runs ``request`` selects, a page at a time, within the budget.

    Raises:
        InvalidInput: the filter could not evaluate one page within the budget.
    """
    evaluator = None if request.if_ is None else FilterProcess(request.if_)
    try:
        return await _cancel_pages(engine, request, evaluator, reason)
    finally:
        if evaluator is not None:
            evaluator.close()


async def _cancel_pages(engine: Engine, request: BulkCancel, evaluator: FilterProcess | None,
                        reason: str) -> BulkOutcome:
    clock = engine.clock
    deadline = clock.monotonic() + BUDGET_SECONDS
    after = request.cursor or _FIRST
    cancelled = scanned = 0
    while True:
        rows = await engine.store.live_runs(
            request.function_id, queued_after=request.queued_after or 0.0,
            queued_before=request.queued_before if request.queued_before is not None else _NEVER,
            after_id=after, limit=PAGE)
        if not rows:
            return BulkOutcome(cancelled, scanned, None)
        if evaluator is None:
            chosen = [run_id for run_id, _ in rows]
        else:
            try:
                chosen = await evaluator.select(
                    rows, timeout=max(0.0, deadline - clock.monotonic()))
            except FilterOverBudget:
                if scanned:  # what was done stands; the next request meets this page first
                    return BulkOutcome(cancelled, scanned, after)
                raise InvalidInput(
                    f"the 'if' filter did not finish within {BUDGET_SECONDS:g} s on {len(rows)} "
                    "runs: it is too expensive for these events (comprehensions such as "
                    "exists() or filter() over long lists are slow); simplify it"
                ) from None
        if chosen:
            cancelled += await engine.cancel(CancelRequest(reason, run_ids=chosen))
        scanned += len(rows)
        after = rows[-1][0]
        if len(rows) < PAGE:
            return BulkOutcome(cancelled, scanned, None)
        if scanned >= MAX_SCANNED or clock.monotonic() >= deadline:
            return BulkOutcome(cancelled, scanned, after)
