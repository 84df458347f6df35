"""The composition root: builds every room from the settings, starts and stops them in order.

Start: store (migrations) -> engine (recover leases) -> worker socket -> HTTP API.
Stop: tell workers to go away -> stop HTTP -> commit what is pending -> close sockets -> store.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog
import uvicorn

from cmdline.tracing import tracer_provider
from gateway.clock import Clock, SystemClock
from gateway.config import Settings, db_backend
from gateway.engine import Engine
from gateway.http.api import build_api
from gateway.http.events import EventLimits
from gateway.http.management import worker_json
from gateway.http.server import server_config
from gateway.inngest.bridge import InngestBridge
from gateway.metrics import Metrics
from gateway.registry import Registry
from gateway.store.base import Limits, Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.transport.auth import Authenticator
from gateway.transport.connection import ConnectionSettings
from gateway.transport.server import Extra, WorkerServer
from protocol.ids import new_id
from protocol.limits import MISSED_HEARTBEATS, VERSION

if TYPE_CHECKING:
    from gateway.inngest.bridge import InngestBridge
    from gateway.tracing import GatewayTracing

log = structlog.get_logger("tether.gateway")



def open_store(url: str, *, owner: dict[str, Any] | None = None) -> Store:
    """The store at ``url``; ``owner`` describes this gateway in a SQLite lock file."""
    backend, location = db_backend(url)
    if backend == "sqlite":
        return SQLiteStore(location, owner=owner)
    return PostgresStore(location)


class Gateway:
    """A running gateway. ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        store: Store | None = None,
        tracer_provider: Any = None,
    ) -> None:
        """``tracer_provider``: an OpenTelemetry SDK ``TracerProvider`` to trace with
        (embedding, tests); by default one is built when ``settings.traces`` asks for it."""
        settings.check()
        self.settings = settings
        self.clock = clock or SystemClock()
        self.gateway_id = settings.gateway_id or new_id(self.clock.now())
        self.store = store or open_store(settings.db, owner={
            "host": settings.host, "http_port": settings.port,
            "connect_port": settings.connect_port, "gateway_id": self.gateway_id})
        self.registry = Registry()
        self.metrics = Metrics()
        self.engine = Engine(
            self.store, self.registry, self.clock, retry_base=settings.retry_base, rng=rng,
            metrics=self.metrics,
            limits=Limits(settings.max_steps, settings.max_step_result, settings.max_run_state),
            event_limits=EventLimits(settings.max_event_size, settings.max_request_size),
            resume_grace=settings.heartbeat_interval * MISSED_HEARTBEATS,
        )
        self.engine.crash_on = os.environ.get("TETHER_TEST_ENGINE_CRASH") or None
        self.engine.tracing = self._tracing(tracer_provider)
        self.auth = Authenticator(
            dev=settings.dev, signing_keys=settings.signing_keys, event_keys=settings.event_keys,
            api_keys=settings.api_keys, previous_signing_keys=settings.previous_signing_keys,
            previous_until=settings.previous_until(self.clock.now()), now=self.clock.now,
        )
        #: Apps on Inngest's official SDKs (``--inngest``): their sockets share the worker port.
        self.inngest: InngestBridge | None = None
        extra: list[Extra] = []
        if settings.inngest:
            from gateway.inngest.bridge import PATH, SUBPROTOCOL, InngestBridge

            self.inngest = InngestBridge(
                engine=self.engine, registry=self.registry, auth=self.auth, clock=self.clock,
                gateway_id=self.gateway_id, connect_port=self._connect_port,
                handshake_timeout=settings.handshake_timeout)
            extra.append((PATH, self.inngest.serve, SUBPROTOCOL))
        self.workers = WorkerServer(
            engine=self.engine, registry=self.registry, auth=self.auth, clock=self.clock,
            settings=ConnectionSettings(
                gateway_id=self.gateway_id,
                heartbeat_interval=settings.heartbeat_interval,
                lease_ttl=settings.heartbeat_interval * MISSED_HEARTBEATS,
                max_steps=settings.max_steps,
                max_step_result=settings.max_step_result,
                max_frame_in=settings.frame_limit,
                max_frame_out=max(settings.frame_limit, 64 * 1024 * 1024),
                handshake_timeout=settings.handshake_timeout,
                max_handshakes=settings.max_handshakes,
            ),
            extra=extra,
        )
        self.api = build_api(
            engine=self.engine, registry=self.registry, auth=self.auth,
            limits=EventLimits(settings.max_event_size, settings.max_request_size),
            metrics=self._render_metrics, health=self._health,
            gateway_id=self.gateway_id, peer_ttl=settings.peer_ttl,
        )
        if self.inngest is not None:
            self.api.router.routes[0:0] = self.inngest.routes()
        self.http_port = 0
        self.connect_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._http: uvicorn.Server | None = None
        self._http_loop: asyncio.Task[None] | None = None
        self._started = self.clock.now()
        #: Set when a task the gateway cannot live without died (see :meth:`_watch`): the
        #: command line then stops the process with a non-zero exit code.
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.store.open()
        await self.store.subscribe(self.gateway_id, self.engine.peer_note)
        if self.store.shared:
            await self._keep_alive_once()
            self._watched(asyncio.create_task(self._keep_alive(), name="tether-peers"))
        await self._refresh_keys_once()
        self._watched(asyncio.create_task(self._refresh_keys(), name="tether-keys"))
        await self.engine.load()
        self._watched(asyncio.create_task(self.engine.run(), name="tether-engine"))
        if self.engine.tracing is not None:
            self.engine.tracing.start()
        self.connect_port = await self.workers.start(self.settings.host,
                                                     self.settings.connect_port)
        self._watched(asyncio.create_task(self.workers.reap(), name="tether-reaper"))
        if self.inngest is not None:
            self._watched(asyncio.create_task(self.inngest.keep_alive(), name="tether-inngest"))
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it every response waits out the peer's delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET,
                             socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        self.http_port = sock.getsockname()[1]
        config = server_config(self.api)
        config.load()
        self._http = uvicorn.Server(config)
        self._http.lifespan = config.lifespan_class(config)
        await self._http.startup(sockets=[sock])
        if isinstance(self.store, SQLiteStore):
            self.store.announce(http_port=self.http_port, connect_port=self.connect_port)
        self._http_loop = asyncio.create_task(self._http.main_loop(), name="tether-http")
        log.info("gateway_started", http=f"http://{self.settings.host}:{self.http_port}",
                 connect=f"ws://{self.settings.host}:{self.connect_port}/connect",
                 db=self.settings.db, dev=self.settings.dev, gateway_id=self.gateway_id)

    def _tracing(self, provider: Any) -> GatewayTracing | None:
        """The gateway's spans, or None (tracing off: OpenTelemetry is not even imported)."""
        owned = provider is None
        if owned:
            if self.settings.traces == "none":
                return None
            provider = tracer_provider(self.settings.traces, service_name="tether-gateway")
        from gateway.tracing import GatewayTracing

        return GatewayTracing(provider, self.store, trace_url=self.settings.trace_url,
                              owned=owned)

    def _connect_port(self) -> int:
        return self.connect_port

    def _watched(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)
        task.add_done_callback(self._watch)

    def _watch(self, task: asyncio.Task[None]) -> None:
        """A task the gateway cannot live without ended before :meth:`stop`: without the
        engine nothing commits and every request would wait forever. Say so and fail, so
        the process manager starts a fresh gateway (which recovers every lease)."""
        if self._stopping:
            return
        if task.cancelled():
            reason = "cancelled"
        elif task.exception() is not None:
            exc = task.exception()
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "returned"
        log.critical("gateway_task_died", task=task.get_name(), reason=reason,
                     action="stopping the gateway with a non-zero exit code, to be restarted",
                     exc_info=task.exception() if not task.cancelled() else None)
        self.failure = f"{task.get_name()} died: {reason}"
        self.engine.abandon(self.failure)
        self.failed.set()

    async def stop(self) -> None:
        self._stopping = True
        log.info("gateway_stopping", workers=len(self.registry))
        # Workers leaving now lose no lease-loss credit: their runs go to other gateways' workers.
        self.workers.leaving = True
        if self.inngest is not None:
            self.inngest.go_away()
        await self.workers.go_away("gateway shutting down; reconnect to another gateway")
        # Their leases are released as they leave; give them a moment to, then drop the rest.
        await self.workers.gone(timeout=self.settings.go_away_grace)
        if self._http is not None and self._http_loop is not None:
            self._http.should_exit = True
            await self._http_loop
            await self._http.shutdown()
        if self.failure is None:
            await self.engine.close()  # with a dead engine, nothing more can commit
        await self.workers.close()
        if self.engine.tracing is not None:
            await self.engine.tracing.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.leave(self.gateway_id)
        await self.store.close()
        log.info("gateway_stopped")

    async def _keep_alive_once(self) -> None:
        functions = await self.store.keepalive(
            self.gateway_id, now=self.clock.now(), ttl=self.settings.peer_ttl)
        if functions:
            self.engine.peer_note({"functions": sorted(functions)})
        monotonic = self.clock.monotonic()
        await self.store.publish_workers(self.gateway_id, orjson.dumps([
            worker_json(w, monotonic=monotonic, gateway_id=self.gateway_id)
            for w in self.registry
        ]).decode())

    async def _keep_alive(self) -> None:
        """Beat in the shared store; requeue the leases of gateways that stopped beating."""
        while True:
            await self.clock.sleep(self.settings.peer_beat)
            try:
                await self._keep_alive_once()
            except Exception as exc:  # the database may be briefly away: keep beating
                log.error("keepalive_failed", error=str(exc))

    async def _refresh_keys_once(self) -> None:
        self.auth.load(await self.store.active_keys())

    async def _refresh_keys(self) -> None:
        """Re-read stored keys, so one made or revoked with ``keys`` counts without a restart."""
        while True:
            await self.clock.sleep(self.settings.key_refresh)
            try:
                await self._refresh_keys_once()
            except Exception as exc:  # keep the last keys read; the store may be briefly away
                log.error("keys_refresh_failed", error=str(exc))

    def _health(self) -> dict[str, Any]:
        engine = self.engine.health()
        return {
            "status": "failed" if self.failure else engine["status"],
            "last_error": self.failure or engine["last_error"],
            "version": VERSION,
            "gateway_id": self.gateway_id,
            "db": db_backend(self.settings.db)[0],
            "workers": len(self.registry),
            "uptime_seconds": round(self.clock.now() - self._started, 3),
        }

    async def _render_metrics(self, names: Sequence[str] = ()) -> bytes:
        return await self.metrics.render(
            registry=self.registry,
            functions=[f.id for f in self.engine.functions.values() if f.active],
            queue=lambda: self.store.queue_depths(now=self.clock.now()), now=self.clock.now(),
            names=names)
