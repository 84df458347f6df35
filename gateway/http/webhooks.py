"""Webhooks: ``/v1/webhooks`` to manage them, ``POST /webhooks/{id}`` to receive them.

A webhook id is the capability to post (third parties send no bearer): 128 random bits, so
it cannot be guessed; an id of any other shape is answered 404 without a store read.

A request goes through, in order: the body (at most ``--max-event-size``: it becomes one
event), the signature (:mod:`gateway.http.signatures`, 401), the transform
(:mod:`gateway.http.transform`, 400; for a large body in a child process,
:mod:`gateway.http.transform_process`), the event checks of ``POST /e`` (400/413), and the
engine's write path: 200 ``{"ids": [id]}`` once the event is committed. A refused request
stores nothing.

Webhooks live in the store, so every gateway sharing a database serves them; each gateway
keeps those it used lately for :data:`CACHE_TTL` seconds, so one deleted through another
gateway stops working here within that time (at once through this one).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.engine import Engine
from gateway.http.events import EventLimits, ingest_traced, parse_events, read_body
from gateway.http.management import _json_object, _query, iso
from gateway.http.signatures import check_verify, masked, verify
from gateway.http.transform import apply, check_transform, first_values, request_body
from gateway.http.transform_process import INLINE_LIMIT, TransformProcess
from gateway.store.webhooks import WebhookRecord
from protocol.errors import InvalidInput, NotFound
from protocol.names import check_no_nul

log = structlog.get_logger("tether.webhooks")

#: Seconds a gateway trusts what it read of a webhook (or of its absence).
CACHE_TTL = 1.0
#: Webhooks (or absences) remembered at most; past that the cache starts afresh.
CACHE_SIZE = 10_000
MAX_NAME = 256
PREFIX = "wh_"
_ID = re.compile(r"^wh_[A-Za-z0-9_-]{22}$")


def new_webhook_id() -> str:
    """128 random bits, URL-safe: the id is the capability to post to the webhook."""
    return PREFIX + secrets.token_urlsafe(16)


def webhook_json(record: WebhookRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "transform": record.transform,
        "verify": masked(record.verify),
        "created_at": iso(record.created_at),
        "url": f"/webhooks/{record.id}",
    }


class WebhookCache:
    """Webhooks by id, each trusted for :data:`CACHE_TTL` seconds of the monotonic clock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._entries: dict[str, tuple[float, WebhookRecord | None]] = {}

    async def get(self, webhook_id: str) -> WebhookRecord | None:
        now = self.engine.clock.monotonic()
        entry = self._entries.get(webhook_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        record = await self.engine.store.get_webhook(webhook_id)
        self.put(webhook_id, record)
        return record

    def put(self, webhook_id: str, record: WebhookRecord | None) -> None:
        if len(self._entries) >= CACHE_SIZE:
            self._entries.clear()
        self._entries[webhook_id] = (self.engine.clock.monotonic() + CACHE_TTL, record)

    def forget(self, webhook_id: str) -> None:
        self._entries.pop(webhook_id, None)


class WebhookRoutes:
    def __init__(self, engine: Engine, limits: EventLimits) -> None:
        self.engine = engine
        self.limits = limits
        self.cache = WebhookCache(engine)
        self.transformer = TransformProcess()

    # --- management (behind the bearer) --------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = await _json_object(request, {"name", "transform", "verify"})
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise InvalidInput(f"'name' is required: a non-empty string of at most {MAX_NAME} "
                               "characters saying what the webhook is for")
        check_no_nul(name, "'name'")
        if "transform" not in body:
            raise InvalidInput("'transform' is required: a CEL expression building "
                               "{\"name\": ..., \"data\": ...} from body, headers and query")
        record = WebhookRecord(
            new_webhook_id(), name, check_transform(body["transform"]),
            check_verify(body.get("verify")), self.engine.clock.now(),
        )
        await self.engine.store.add_webhook(record)
        self.cache.put(record.id, record)
        log.info("webhook_created", webhook=record.id[:7], name=name,
                 scheme=record.verify and record.verify["scheme"])
        return JSONResponse(webhook_json(record), status_code=201)

    async def listing(self, request: Request) -> Response:
        _query(request, set())
        records = await self.engine.store.list_webhooks()
        return JSONResponse({"data": [webhook_json(r) for r in records], "cursor": None})

    async def get(self, request: Request) -> Response:
        _query(request, set())
        return JSONResponse(webhook_json(await self._known(request.path_params["webhook_id"])))

    async def delete(self, request: Request) -> Response:
        await _json_object(request, set())
        webhook_id = request.path_params["webhook_id"]
        await self._known(webhook_id)
        deleted = await self.engine.store.delete_webhook(webhook_id)
        self.cache.forget(webhook_id)
        log.info("webhook_deleted", webhook=webhook_id[:7])
        return JSONResponse({"id": webhook_id, "deleted": deleted})

    async def _known(self, webhook_id: str) -> WebhookRecord:
        record = (await self.engine.store.get_webhook(webhook_id)
                  if _ID.match(webhook_id) else None)
        if record is None:
            raise NotFound(f"no webhook with id {webhook_id[:40]!r}; GET /v1/webhooks lists "
                           "them")
        return record

    # --- receiving (no bearer: the id is the capability) ----------------------------------

    async def receive(self, request: Request) -> Response:
        webhook_id = request.path_params["webhook_id"]
        record = await self.cache.get(webhook_id) if _ID.match(webhook_id) else None
        if record is None:
            raise NotFound("no such webhook (deleted, or a wrong URL); webhooks are made "
                           "with POST /v1/webhooks")
        raw = await read_body(request, self.limits.max_event,
                              advice="a webhook's body becomes one event; raise "
                                     "--max-event-size")
        headers = _headers(request)
        now = self.engine.clock.now()
        if record.verify is not None:
            verify(record.verify, headers, raw, now=now)
        query = first_values((k, v) for k, v in request.query_params.multi_items())
        content_type = headers.get("content-type")
        if len(raw) <= INLINE_LIMIT:
            event = apply(record.transform, request_body(raw, content_type), headers, query)
        else:  # converting a large body for CEL holds the GIL: off the event loop
            event = await self.transformer.apply(record.transform, raw, content_type,
                                                 headers, query)
        try:
            ((stored, _),) = parse_events(event, limits=self.limits, now=now)
        except InvalidInput as exc:  # PayloadTooLarge keeps its 413
            raise type(exc)(f"the webhook's transform gave a bad event: {exc.message}"
                            ) from None
        await ingest_traced(self.engine, [stored], request.headers.get("traceparent"),
                            route="/webhooks/{webhook_id}")
        return JSONResponse({"ids": [stored.id], "status": 200})


def _headers(request: Request) -> dict[str, str]:
    """Lower-cased header names -> values; a repeated header's values joined with ", "."""
    out: dict[str, str] = {}
    for key, value in request.headers.raw:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out
