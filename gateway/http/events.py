"""``POST /e/{event_key}``: validate events, match them to functions, store them durably.

All events of a request are checked before anything is stored, and stored in one transaction:
a request is accepted whole (200 once committed) or refused whole (4xx, nothing stored).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.engine import Engine
from gateway.http.server import BODY_TIMEOUT
from gateway.intake import kept_json
from gateway.store.base import NewEvent
from gateway.transport.auth import Authenticator
from protocol.durations import MAX_SLEEP, human
from protocol.errors import InvalidInput, PayloadTooLarge, TetherError
from protocol.ids import new_id
from protocol.limits import MAX_EVENT_SIZE, MAX_REQUEST_SIZE
from protocol.names import RESERVED_PREFIX, check_no_nul, is_reserved
from protocol.tracecontext import clean

MAX_NAME = 256
MAX_ID = 256
#: How far in the future an event's ``ts`` may lie (a delayed event): the longest sleep.
MAX_DELAY = MAX_SLEEP


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_event: int = MAX_EVENT_SIZE
    max_request: int = MAX_REQUEST_SIZE
    max_events: int = 5000


class RequestTimeout(TetherError):
    """The client did not send its request body in time."""

    code = "request_timeout"
    http_status = 408


async def read_body(request: Request, limit: int, *, advice: str = "send fewer events",
                    timeout: float = BODY_TIMEOUT) -> bytes:
    """The request body, refusing it as soon as it is over ``limit`` bytes or ``timeout`` s.

    Raises:
        PayloadTooLarge: by Content-Length, or while streaming a body that lies about it.
        RequestTimeout: the body did not arrive within ``timeout`` seconds.
        InvalidInput: the client went away before sending all of it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large("request", int(declared), limit, advice))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(_too_large("request", size, limit, advice))
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {timeout:g} s ({size} bytes arrived); "
            "send the whole body at once"
        ) from None
    except ClientDisconnect:
        raise InvalidInput("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def parse_events(
    body: bytes, *, limits: EventLimits, now: float, allow_reserved: bool = False
) -> list[tuple[NewEvent, dict[str, Any]]]:
    """Validate a body of one event or an array of events.

    Returns each event ready to store, with its normalised dict (for trigger matching).

    Raises:
        InvalidInput: the body is not JSON, or an event breaks a rule; says which and why.
        PayloadTooLarge: an event or the batch is over its limit.
    """
    try:
        raw = orjson.loads(body)  # strict JSON: no NaN/Infinity, nesting capped at 1024
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    items = raw if isinstance(raw, list) else [raw]
    if len(items) > limits.max_events:
        raise PayloadTooLarge(
            f"{len(items)} events in one request, over the {limits.max_events} limit; "
            "split them into several requests"
        )
    out = []
    for index, item in enumerate(items):
        try:
            out.append(_event(item, limits, now, allow_reserved))
        except InvalidInput as exc:  # named here, where the event's place is known
            where = "event" if not isinstance(raw, list) else f"event {index}"
            raise type(exc)(f"{where}: {exc.message}") from exc
    return out


def _event(
    item: Any, limits: EventLimits, now: float, allow_reserved: bool
) -> tuple[NewEvent, dict[str, Any]]:
    """One event checked and encoded; its errors do not say which event (the caller does)."""
    if not isinstance(item, dict):
        raise InvalidInput(f"expected a JSON object, got {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("'name' is required and must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"'name' is longer than {MAX_NAME} characters")
    check_no_nul(name, "'name'")
    if is_reserved(name) and not allow_reserved:
        raise InvalidInput(f"names starting with {RESERVED_PREFIX!r} (in any letter case) are "
                           "reserved for the gateway's system events")
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise InvalidInput(f"'data' must be a JSON object, got {_kind(data)}")
    event_id = item.get("id")
    if event_id is None or event_id == "":
        event_id = new_id(now)
    elif not isinstance(event_id, str) or len(event_id) > MAX_ID:
        raise InvalidInput(f"'id' must be a string of at most {MAX_ID} characters")
    else:
        check_no_nul(event_id, "'id'")
    ts = item.get("ts")
    if ts is None:
        ts = int(now * 1000)
    elif isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise InvalidInput("'ts' must be a non-negative integer (milliseconds)")
    elif ts > (now + MAX_DELAY) * 1000:
        raise InvalidInput(
            f"'ts' {ts} lies {human(ts / 1000 - now)} in the future, beyond the "
            f"{human(MAX_DELAY)} a delayed event may wait; check that 'ts' is in milliseconds "
            "since the epoch")
    user = item.get("user")
    if user is not None and not isinstance(user, dict):
        raise InvalidInput(f"'user' must be a JSON object, got {_kind(user)}")
    event = {"name": name, "data": data, "id": event_id, "ts": ts, "user": user}
    try:
        payload = kept_json(event)
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. a string with lone surrogates
        raise InvalidInput(f"cannot be stored as JSON text: {exc}") from exc
    if len(payload) > limits.max_event:
        raise PayloadTooLarge(_too_large("event", len(payload), limits.max_event,
                                         "split the event or store large data elsewhere"))
    return NewEvent(event_id, name, payload, event), event


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _too_large(what: str, size: int, limit: int, advice: str) -> str:
    return f"{what} too large: {size / 1024:.0f} KiB > {limit / 1024:.0f} KiB limit ({advice})"


class EventRoutes:
    def __init__(self, engine: Engine, auth: Authenticator, limits: EventLimits) -> None:
        self.engine = engine
        self.auth = auth
        self.limits = limits

    async def post(self, request: Request) -> Response:
        self.auth.check_event_key(request.path_params["event_key"])
        body = await read_body(request, self.limits.max_request)
        parsed = parse_events(body, limits=self.limits, now=self.engine.clock.now())
        events = [event for event, _ in parsed]
        if events:
            await ingest_traced(self.engine, events, request.headers.get("traceparent"),
                                route="/e/{event_key}")
        # orjson writes the bytes JSONResponse's json.dumps would (compact, UTF-8), in a
        # fraction of the time: a body of 500 ids was a tenth of the request's own work.
        return Response(orjson.dumps({"ids": [e.id for e in events], "status": 200}),
                        media_type="application/json")


async def ingest_traced(engine: Engine, events: list[NewEvent], traceparent: str | None, *,
                        route: str) -> None:
    """Store ``events`` with the sender's trace context (W3C ``traceparent``; a malformed
    one is ignored). When the gateway traces, the request gets its own span, and the runs
    the events start are its children; otherwise the sender's context is kept as sent."""
    tracing = engine.tracing
    if tracing is None:
        if traceparent is not None:
            stored = clean(traceparent)
            for event in events:
                event.traceparent = stored
        await engine.ingest(events)
        return
    with tracing.intake(traceparent, route=route, events=len(events)) as stored:
        for event in events:
            event.traceparent = stored
        await engine.ingest(events)
