"""The HTTP API (Starlette): routes, authentication, and one mapping from errors to answers.

Every error answer is ``{"error": "what is wrong and what to do"}`` with the status the error
class names (:mod:`protocol.errors`); unknown routes and methods answer the same way.

In ``--dev`` nothing is authenticated, so any web page the developer opens could post events
or cancel runs through their browser: writes that a browser marks as cross-origin
(``Origin`` naming another host, or ``Sec-Fetch-Site`` other than ``same-origin``/``none``)
are refused with 403. Clients that are not browsers send neither header and are unaffected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.engine import Engine
from gateway.http.dashboard import dashboard_routes
from gateway.http.eventlog import EventLogRoutes
from gateway.http.events import EventLimits, EventRoutes
from gateway.http.management import ManagementRoutes
from gateway.http.webhooks import WebhookRoutes
from gateway.metrics import TimedRequests
from gateway.registry import Registry
from gateway.transport.auth import Authenticator
from protocol.errors import AuthError, TetherError

log = structlog.get_logger("tether.http")

#: What stands for the key of ``/e/{key}`` in logs: an event key is a secret.
REDACTED = "<redacted>"

Handler = Callable[[Request], Awaitable[Response]]

#: Methods that change something; in --dev a browser may send them only from the same origin.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Forbidden(AuthError):
    """A request the gateway refuses whoever sends it (a cross-origin write in --dev)."""

    code = "forbidden"
    http_status = 403


def cross_origin(method: str, headers: Mapping[str, str]) -> str | None:
    """Why a write is cross-origin as the browser declared it, or None.

    Same origin means the ``Origin`` header names the host the request was sent to.
    """
    if method not in WRITES:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        return f"Origin {origin[:100]!r} is not this gateway ({host[:100]!r})"
    return None


def build_api(
    *,
    engine: Engine,
    registry: Registry,
    auth: Authenticator,
    limits: EventLimits,
    metrics: Callable[[Sequence[str]], Awaitable[bytes]],
    health: Callable[[], dict[str, Any]],
    gateway_id: str = "",
    peer_ttl: float = 5.0,
) -> Starlette:
    events = EventRoutes(engine, auth, limits)
    manage = ManagementRoutes(engine, registry, gateway_id=gateway_id, peer_ttl=peer_ttl)
    webhooks = WebhookRoutes(engine, limits)
    event_log = EventLogRoutes(engine)

    def same_origin(handler: Handler) -> Handler:
        if not auth.dev:
            return handler

        async def wrapper(request: Request) -> Response:
            reason = cross_origin(request.method, request.headers)
            if reason is not None:
                raise Forbidden(
                    f"cross-origin {request.method} refused in --dev ({reason}): a web page "
                    "may not write to an unauthenticated gateway; send it from a script or "
                    "the gateway's own origin"
                )
            return await handler(request)

        return wrapper

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            auth.check_bearer(request.headers.get("authorization"), request.method)
            return await handler(request)

        return same_origin(wrapper)

    async def health_route(request: Request) -> Response:
        return JSONResponse(health())

    async def metrics_route(request: Request) -> Response:
        names = request.query_params.getlist("name[]")[:100]
        return Response(await metrics(names),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/e/{event_key}", same_origin(events.post), methods=["POST"]),
        Route("/health", health_route, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/functions", guarded(manage.functions), methods=["GET"]),
        Route("/v1/workers", guarded(manage.workers), methods=["GET"]),
        Route("/v1/runs", guarded(manage.runs), methods=["GET"]),
        Route("/v1/runs/{run_id}", guarded(manage.run), methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", guarded(manage.cancel_run), methods=["POST"]),
        Route("/v1/runs/{run_id}/replay", guarded(manage.replay_run), methods=["POST"]),
        Route("/v1/functions/{function_id:path}/cancel", guarded(manage.cancel_function),
              methods=["POST"]),
        Route("/v1/functions/{function_id:path}/replay", guarded(manage.replay_function),
              methods=["POST"]),
        Route("/v1/functions/{function_id:path}", guarded(manage.function), methods=["GET"]),
        Route("/v1/events/{event_id}/runs", guarded(manage.event_runs), methods=["GET"]),
        # webhooks and the event log
        Route("/webhooks/{webhook_id}", same_origin(webhooks.receive), methods=["POST"]),
        Route("/v1/webhooks", guarded(webhooks.create), methods=["POST"]),
        Route("/v1/webhooks", guarded(webhooks.listing), methods=["GET"]),
        Route("/v1/webhooks/{webhook_id}", guarded(webhooks.get), methods=["GET"]),
        Route("/v1/webhooks/{webhook_id}", guarded(webhooks.delete), methods=["DELETE"]),
        Route("/v1/events", guarded(event_log.listing), methods=["GET"]),
        Route("/v1/events/{event_id}", guarded(event_log.get), methods=["GET"]),
        *dashboard_routes(engine, registry, auth, limits, manage),
    ]

    async def tether_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TetherError)
        if exc.http_status >= 500:
            log.error("request_failed", path=loggable_path(request.url.path),
                      error=exc.message)
        elif exc.http_status == 403:  # no path: it may hold an event key
            log.warning("request_forbidden", method=request.method, error=exc.message)
        elif exc.http_status == 401:
            log.warning("request_unauthorized", path=loggable_path(request.url.path),
                        client=request.client.host if request.client else None)
        # A body that did not arrive in time leaves the connection mid-request: close it
        # rather than wait for (and parse) the rest of that body as the next request.
        headers = {"connection": "close"} if exc.http_status == 408 else None
        if exc.http_status == 503:  # the store failed (disk full, connection lost): soon
            headers = {"retry-after": "1"}
        return JSONResponse({"error": exc.message}, status_code=exc.http_status,
                            headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see the HTTP API in README"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code)

    async def crash(request: Request, exc: Exception) -> Response:
        log.error("request_crashed", path=loggable_path(request.url.path), exc_info=exc)
        return JSONResponse(
            {"error": f"internal error: {type(exc).__name__}; see the gateway log"},
            status_code=500,
        )

    return Starlette(
        routes=routes,
        middleware=[Middleware(TimedRequests, metrics=engine.metrics)],
        exception_handlers={TetherError: tether_error, HTTPException: http_error,
                            Exception: crash},
    )


def loggable_path(path: str) -> str:
    """``path`` with any event key replaced: ``/e/{key}`` is logged as ``/e/<redacted>``
    (and a webhook id, its capability, as ``/webhooks/<redacted>``)."""
    if path.startswith("/e/"):
        return "/e/" + REDACTED
    if path.startswith("/webhooks/"):
        return "/webhooks/" + REDACTED
    return path
