"""The worker socket server on ``ws://HOST:8289/connect``, and the heartbeat reaper.

Sockets that have not proven their key yet are few and cheap: at most ``max_handshakes`` at
once (more are closed at once with 1013, "try again later"), each reading small frames only
(:data:`~protocol.messages.MAX_PREAUTH_FRAME`, a few buffered) under the handshake deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.clock import Clock
from gateway.engine import Engine
from gateway.leases import Liveness
from gateway.registry import Registry
from gateway.transport.auth import Authenticator
from gateway.transport.connection import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_TRY_AGAIN_LATER,
    PREAUTH_QUEUE,
    ConnectionSettings,
    WorkerConnection,
)
from protocol.messages import MAX_PREAUTH_FRAME, GoAway

log = structlog.get_logger("tether.transport")

PATH = "/connect"

#: Another protocol served on this port (``--inngest``): its path, handler and subprotocol.
Extra = tuple[str, Callable[[ServerConnection], Awaitable[None]], str]


class WorkerServer:
    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        auth: Authenticator,
        clock: Clock,
        settings: ConnectionSettings,
        extra: Sequence[Extra] = (),
    ) -> None:
        self.extra = {path: (handler, sub) for path, handler, sub in extra}
        self.engine = engine
        self.registry = registry
        self.auth = auth
        self.clock = clock
        self.settings = settings
        self.liveness = Liveness(settings.heartbeat_interval)
        self._server: Server | None = None
        self._connections: set[WorkerConnection] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        #: Set while the gateway stops: workers that disconnect now are not presumed lost.
        self.leaving = False
        #: Sockets that have not proven their key yet.
        self.handshaking = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; return the port (useful when ``port`` is 0)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_path,
            compression=None,
            # Workers send no Origin; a browser page always does. Refusing every Origin keeps
            # web pages (which may open cross-origin WebSockets) off an open --dev gateway.
            origins=[None],
            # Until a socket proves its key; raised for it once it has.
            max_size=MAX_PREAUTH_FRAME,
            max_queue=PREAUTH_QUEUE,
            ping_interval=None,  # liveness is our own heartbeat, answered on this socket
            open_timeout=self.settings.handshake_timeout,
            write_limit=2**20,
            close_timeout=2,
            select_subprotocol=self._subprotocol,
        )
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    def _subprotocol(self, ws: ServerConnection, offered: Sequence[Subprotocol]
                     ) -> Subprotocol | None:
        extra = self.extra.get(ws.request.path.split("?")[0]) if ws.request else None
        return Subprotocol(extra[1]) if extra is not None and extra[1] in offered else None

    def _check_path(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path in self.extra:
            return None
        if path != PATH:
            return ws.respond(HTTPStatus.NOT_FOUND, f"workers connect to {PATH}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        extra = self.extra.get(ws.request.path.split("?")[0]) if ws.request else None
        if extra is not None:
            await extra[0](ws)
            return
        if self.handshaking >= self.settings.max_handshakes:
            log.warning("worker_refused", code="too_many_handshakes",
                        handshaking=self.handshaking)
            await ws.close(CLOSE_TRY_AGAIN_LATER,
                           "too many workers are connecting at once; retry shortly")
            return
        self.handshaking += 1
        pending = True

        def authenticated() -> None:
            nonlocal pending
            if pending:
                pending = False
                self.handshaking -= 1

        conn = WorkerConnection(
            ws, engine=self.engine, registry=self.registry, auth=self.auth, clock=self.clock,
            settings=self.settings, leaving=lambda: self.leaving,
            on_authenticated=authenticated,
        )
        self._connections.add(conn)
        self._empty.clear()
        try:
            await conn.serve()
        finally:
            authenticated()
            self._connections.discard(conn)
            if not self._connections:
                self._empty.set()

    async def reap(self) -> None:
        """Drop workers that missed their heartbeats (their leases go to others at once), and
        those that proved a previous signing key once its grace is over; send again the lease
        grants a worker has not answered."""
        while True:
            await self.clock.sleep(self.settings.heartbeat_interval / 2)
            now = self.clock.monotonic()
            for conn in list(self._connections):
                conn.resend_grants(now)
            for worker in self.liveness.expired(self.registry, now):
                log.warning("worker_heartbeat_missed", session_id=worker.session_id,
                            instance_id=worker.instance_id, in_flight=len(worker.in_flight))
                worker.close(CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat for 3 intervals")
            if self.auth.previous_expired():
                for conn in [c for c in self._connections if c.previous_key]:
                    conn.previous_key = False
                    log.warning("worker_key_expired", instance_id=getattr(
                        conn.worker, "instance_id", None))
                    conn.close(1008, "the previous signing key expired; reconnect with the "
                                     "current --signing-key")

    async def go_away(self, reason: str) -> None:
        """Ask every worker to reconnect elsewhere (the gateway is stopping)."""
        for conn in list(self._connections):
            if conn.worker is not None:
                # A socket mid-close cannot take it; it is leaving anyway.
                with contextlib.suppress(Exception):
                    conn.outbox.send(GoAway(reason=reason))
        for conn in list(self._connections):
            await conn.outbox.flush()

    async def gone(self, timeout: float) -> None:
        """Until every worker has disconnected, or ``timeout`` seconds; then close the rest."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout)
        for conn in list(self._connections):
            conn.close(1001, "gateway shutting down")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)

