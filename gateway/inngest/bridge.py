"""Apps written with Inngest's official SDKs, in connect mode, served by a Tether gateway.

Started by ``python -m gateway --inngest`` (SPEC §3). The SDK's base URL points at the HTTP
API; it bootstraps with ``POST /v0/connect/start`` (answered here with a session token and
the WebSocket URL, ``ws://HOST:CONNECT_PORT/v0/connect`` on the worker socket's port), dials
in, and from then on each socket is one Tether worker session
(:class:`~gateway.inngest.connection.InngestConnection`). Replies the socket lost arrive on
``POST /v0/connect/flush``; a reply is applied once whichever way it came.

Auth (without ``--dev``): ``Authorization: Bearer <hash>`` on both HTTP calls, the hash being
SHA-256 of the hex-decoded signing key (its ``signkey-<env>-`` prefix removed): Python sends
the bare digest, TypeScript puts the prefix back in front. Only signing keys in Inngest's hex
form can be used by the SDKs; others simply match nothing. The socket carries the session
token handed out by ``/start`` (single use, short-lived).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection

from gateway.clock import Clock
from gateway.engine import Engine
from gateway.inngest import wire
from gateway.inngest.connection import InngestConnection
from gateway.inngest.executor import Reply, ReplyError
from gateway.registry import Registry
from gateway.transport.auth import Authenticator
from protocol.errors import AuthError, InvalidInput
from protocol.ids import new_id

log = structlog.get_logger("tether.inngest")

#: The WebSocket path on the worker socket's port, and the subprotocol the SDKs ask for.
PATH = "/v0/connect"
SUBPROTOCOL = "v0.connect.inngest.com"
#: Seconds a session token from ``/start`` stays valid for its WebSocket.
TOKEN_TTL = 60.0
#: Largest body ``/flush`` reads, and largest frame once a socket is in (one reply: a step
#: result plus some); before that, WORKER_CONNECT's size.
MAX_FLUSH = 8 * 1024 * 1024
MAX_CONNECT_FRAME = 1024 * 1024

_PREFIX = re.compile(r"^signkey-\w+-")
PROTOBUF = "application/protobuf"


def key_hashes(keys: list[str]) -> set[str]:
    """What the SDKs send for each signing key that is in Inngest's form (hex after the
    optional ``signkey-<env>-`` prefix)."""
    found = set()
    for key in keys:
        try:
            raw = bytes.fromhex(_PREFIX.sub("", key))
        except ValueError:
            continue
        if raw:
            found.add(hashlib.sha256(raw).hexdigest())
    return found


class InngestBridge:
    """Tokens, pending requests and the HTTP routes shared by every SDK socket."""

    def __init__(self, *, engine: Engine, registry: Registry, auth: Authenticator, clock: Clock,
                 gateway_id: str, connect_port: Callable[[], int],
                 handshake_timeout: float = 10.0) -> None:
        self.engine = engine
        self.registry = registry
        self.auth = auth
        self.clock = clock
        self.gateway_id = gateway_id
        self.connect_port = connect_port
        self.handshake_timeout = handshake_timeout
        self.connections: set[InngestConnection] = set()
        #: Inngest slug -> Tether function id, for InvokeFunction.
        self.slugs: dict[str, str] = {}
        #: Set while the gateway stops: sockets that close now lose no lease-loss credit.
        self.leaving = False
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (connection id, expiry)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        #: run id -> the socket whose SDK runs it now (for streamed checkpoints)
        self.runs: dict[str, InngestConnection] = {}

    # --- HTTP ----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("/v0/connect/start", self.start, methods=["POST"]),
                Route("/v0/connect/flush", self.flush, methods=["POST"]),
                Route("/v1/checkpoint/{run_id}/async", self.checkpoint, methods=["POST"])]

    def _check(self, request: Request) -> None:
        if self.auth.dev:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = _PREFIX.sub("", token)
        if token and any(hmac.compare_digest(token, h)
                         for h in key_hashes(self.auth.worker_keys())):
            return
        raise AuthError("missing or wrong signing key hash: give the Inngest SDK the gateway's "
                        "--signing-key (in Inngest's form, signkey-<env>-<hex>) as its "
                        "signing key")

    async def start(self, request: Request) -> Response:
        """``POST /v0/connect/start``: a session token and where to dial."""
        self._check(request)
        if self.leaving:
            return JSONResponse({"error": "this gateway is shutting down; connect to another "
                                          "gateway or retry shortly"}, status_code=503)
        body = await request.body()
        wire.parse("StartRequest", body) if body else None
        now = self.clock.now()
        self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        connection_id = new_id(now)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (connection_id, now + TOKEN_TTL)
        host = request.url.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        endpoint = f"ws://{host}:{self.connect_port()}{PATH}"
        answer = wire.new("StartResponse", connection_id=connection_id, gateway_endpoint=endpoint,
                          gateway_group=self.gateway_id, session_token=token, sync_token=token)
        return Response(answer.SerializeToString(), media_type=PROTOBUF)

    async def flush(self, request: Request) -> Response:
        """``POST /v0/connect/flush``: a reply whose ack the SDK did not see."""
        self._check(request)
        body = await request.body()
        if len(body) > MAX_FLUSH:
            raise InvalidInput(f"flushed reply too large ({len(body)} bytes > {MAX_FLUSH})")
        try:
            reply = wire.parse("SDKResponse", body)
        except wire.WireError as exc:
            raise InvalidInput(str(exc)) from None
        applied = self.deliver(reply)
        log.info("inngest_reply_flushed", request_id=reply.request_id, applied=applied)
        return Response(wire.new("FlushResponse", request_id=reply.request_id)
                        .SerializeToString(), media_type=PROTOBUF)

    async def checkpoint(self, request: Request) -> Response:
        """``POST /v1/checkpoint/{run}/async``: steps TypeScript ran within one request,
        answered once committed; 409 when the lease they name is no longer current."""
        self._check(request)
        body = await request.body()
        if len(body) > MAX_FLUSH:
            raise InvalidInput(f"checkpoint too large ({len(body)} bytes > {MAX_FLUSH})")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"a checkpoint must be JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput("a checkpoint must be a JSON object")
        run_id = request.path_params["run_id"]
        conn = self.runs.get(run_id)
        try:
            ok = conn is not None and await conn.streamed(
                run_id, str(data.get("qi_id") or ""), data.get("steps"))
        except ReplyError as exc:
            raise InvalidInput(str(exc)) from None
        log.debug("inngest_steps_streamed", run_id=run_id, applied=ok,
                  steps=len(data.get("steps") or ()))
        if not ok:
            return JSONResponse({"error": f"run {run_id} is not leased under this queue item "
                                          "any more (stale dispatch)"}, status_code=409)
        return JSONResponse({})

    # --- sockets -------------------------------------------------------------------------

    def take_token(self, token: str, connection_id: str) -> bool:
        """Whether ``token`` was handed out by ``/start`` lately; it is spent either way."""
        held = self._tokens.pop(token, None)
        return held is not None and held[1] > self.clock.now()

    async def serve(self, ws: ServerConnection) -> None:
        # Until its session token is checked a socket may send WORKER_CONNECT (the app's
        # function configs) and no more; then frames up to a step result plus some.
        ws.protocol.max_message_size = MAX_CONNECT_FRAME
        if self.leaving:
            await ws.close(1001, "gateway shutting down")
            return
        await InngestConnection(ws, self).serve()

    def expect(self, request_id: str) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def deliver(self, raw: Any) -> bool:
        """Apply an ``SDKResponse`` to its request; False if it was answered already."""
        future = self._pending.pop(raw.request_id, None)
        if future is None or future.done():
            return False
        future.set_result(Reply(status=int(raw.status), body=bytes(raw.body),
                                no_retry=bool(raw.no_retry), retry_after=raw.retry_after))
        return True

    async def keep_alive(self) -> None:
        """Keep each SDK session alive in Tether's registry while its SDK beats (every 10 s,
        whatever the gateway's own interval); drop the ones that went silent."""
        while True:
            await self.clock.sleep(1.0)
            now = self.clock.monotonic()
            for conn in list(self.connections):
                if conn.worker is None:
                    continue
                if conn.heard_lately(now):
                    conn.worker.last_seen = now
                else:
                    log.warning("inngest_heartbeat_missed", session_id=conn.worker.session_id)
                    conn.worker.close(4000, "no heartbeat for 3 intervals")

    def go_away(self) -> None:
        """The gateway stops: every SDK reconnects (``GATEWAY_CLOSING``)."""
        self.leaving = True
        for conn in list(self.connections):
            conn.closing()

