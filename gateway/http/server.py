"""The HTTP server's own limits: what a connection may cost before any route runs.

uvicorn bounds idle keep-alive connections but not a connection that is opened and never
finishes its request line and headers, nor one that trickles a body to a route that does not
read it, nor the size and number of headers. :class:`LimitedHttpProtocol` adds those:

- at most :data:`MAX_CONNECTIONS` open connections; one more is answered 503 and closed;
- a request's line and headers must arrive within :data:`HEADER_TIMEOUT` of its first byte
  (or of the connection opening), its body within :data:`BODY_TIMEOUT` of the headers
  (routes that read a body answer 408 first: :func:`gateway.http.events.read_body`);
- at most :data:`MAX_HEADERS` headers and :data:`MAX_HEADER_BYTES` of request line and
  headers, else 431.

A connection past a deadline is closed. These are transport limits, fixed here; the limits
on what a request may contain (event and request sizes) are settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("tether.http")

#: Open HTTP connections at once; more are refused with 503.
MAX_CONNECTIONS = 1000
#: Seconds from a connection's (or a request's) first byte to the end of its headers.
HEADER_TIMEOUT = 10.0
#: Seconds from the end of the headers to the end of the body.
BODY_TIMEOUT = 20.0
#: Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE_TIMEOUT = 5.0
#: Headers per request, and bytes of request line plus headers.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
#: The protocol cuts a slow body this long after a route that reads it would have answered 408.
_BODY_GRACE = 5.0


class _Refused(Exception):
    """A request broke a header limit; ``status`` and ``message`` say how to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines, a connection cap and header limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refusal: _Refused | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            log.warning("http_connection_refused", reason="too many connections",
                        limit=MAX_CONNECTIONS)
            self._answer(503, f"too many open connections (limit {MAX_CONNECTIONS}); "
                              "retry shortly")
            return
        self._arm(HEADER_TIMEOUT, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            # Bytes between requests (a bare CRLF starts no message) end uvicorn's keep-alive
            # timer: the next request's headers are now due.
            self._arm(HEADER_TIMEOUT, "headers")
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(HEADER_TIMEOUT, "headers")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if len(self.headers) >= MAX_HEADERS:
            self._refusal = _Refused(431, f"more than {MAX_HEADERS} headers")
            raise self._refusal
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(BODY_TIMEOUT + _BODY_GRACE, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error 400; a header limit we raised answers 431.
        if self._refusal is not None:
            self._answer(self._refusal.status, self._refusal.message)
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refusal = _Refused(
                431, f"request line and headers over {MAX_HEADER_BYTES // 1024} KiB")
            raise self._refusal

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, part: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.info("http_connection_timed_out", part=part, seconds=seconds,
                 client=self.client[0] if self.client else None)
        if part == "headers":  # no route has this request: say why the connection ends
            self._answer(408, f"request headers not received within {seconds:g} s")
        else:  # its route answered already (or sees a disconnect)
            self.transport.close()

    def _answer(self, status: int, message: str) -> None:
        """Write a final JSON error answer and close (no route is running on this request)."""
        body = b'{"error": "' + message.replace('"', "'").encode() + b'"}'
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()


def server_config(app: Any) -> uvicorn.Config:
    """The uvicorn configuration of the gateway's HTTP API, limits included."""
    return uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", http=LimitedHttpProtocol,
        timeout_graceful_shutdown=5, limit_concurrency=MAX_CONNECTIONS + 1,
        timeout_keep_alive=int(KEEP_ALIVE_TIMEOUT),
    )
