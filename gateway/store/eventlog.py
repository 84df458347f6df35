"""The event log: stored events, newest first, with the runs each one is part of.

Pages are cut by the events' ``seq`` (the order they were stored in), never by an offset: an
event stored while a client pages lands above its cursor, so no page shifts or repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.store.db import Db, Row

#: Above every seq (a BIGINT): the cursor of the first page.
TOP = 2**63 - 1


@dataclass(slots=True)
class EventRecord:
    seq: int
    event: dict[str, Any]  # {"name", "data", "id", "ts", "user"}, as stored
    received_at: float
    run_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class EventPage:
    events: list[EventRecord]
    cursor: int | None  # the seq to pass as ``before`` for the next page


def _record(row: Row) -> EventRecord:
    seq, payload, received = row
    return EventRecord(int(seq), orjson.loads(bytes(payload)), received)


async def _with_runs(db: Db, records: list[EventRecord]) -> list[EventRecord]:
    if records:
        by_seq = {r.seq: r for r in records}
        for seq, run_id in await db.fetch("event_run_ids", [r.seq for r in records]):
            by_seq[int(seq)].run_ids.append(run_id)
    return records


async def page(db: Db, *, name: str | None, limit: int, before: int | None) -> EventPage:
    """Up to ``limit`` events stored before seq ``before`` (None: the newest), newest first."""
    args: list[Any] = [TOP if before is None else before, limit + 1]
    query = "event_log"
    if name is not None:
        query, args = "event_log_by_name", [*args, name]
    rows = [_record(row) for row in await db.fetch(query, *args)]
    events = await _with_runs(db, rows[:limit])
    return EventPage(events, events[-1].seq if len(rows) > limit else None)


async def get(db: Db, event_id: str) -> EventRecord | None:
    """The latest event stored with ``event_id``, with its runs."""
    row = await db.fetchone("event_by_id", event_id)
    if row is None:
        return None
    (record,) = await _with_runs(db, [_record(row)])
    return record
