"""The event log: ``GET /v1/events`` (newest first) and ``GET /v1/events/{id}``.

The cursor is the seq of the last event of the page (the store's order of arrival): events
that arrive while a client pages land above it, so no page shifts or repeats. (On
PostgreSQL several gateways draw seqs from one sequence and may commit them out of order: an
event committed a moment after a page was read may sit just below that page's cursor, and the
next page shows it.)
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.engine import Engine
from gateway.http.management import DEFAULT_PAGE, MAX_PAGE, _query, iso
from gateway.store.eventlog import TOP, EventRecord
from protocol.errors import InvalidInput, NotFound

_CURSOR = re.compile(r"^[1-9][0-9]{0,18}$")


def event_json(record: EventRecord) -> dict[str, Any]:
    event = record.event
    return {
        "id": event.get("id"),
        "name": event.get("name"),
        "data": event.get("data"),
        "ts": event.get("ts"),
        "user": event.get("user"),
        "received_at": iso(record.received_at),
        "run_ids": record.run_ids,
    }


class EventLogRoutes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def listing(self, request: Request) -> Response:
        q = _query(request, {"name", "limit", "cursor"})
        try:
            limit = int(q.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise InvalidInput("limit must be a whole number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        cursor = q.get("cursor") or None
        if cursor is not None and not (_CURSOR.match(cursor) and int(cursor) <= TOP):
            raise InvalidInput(f"malformed cursor {cursor[:40]!r}: pass the 'cursor' of the "
                               "previous page as it was returned")
        page = await self.engine.store.event_log(
            name=q.get("name") or None, limit=limit,
            before=None if cursor is None else int(cursor))
        return JSONResponse({"data": [event_json(e) for e in page.events],
                             "cursor": None if page.cursor is None else str(page.cursor)})

    async def get(self, request: Request) -> Response:
        _query(request, set())
        event_id = request.path_params["event_id"]
        record = await self.engine.store.get_event(event_id)
        if record is None:
            raise NotFound(f"no event with id {event_id[:80]!r}; GET /v1/events lists them")
        return JSONResponse(event_json(record))
