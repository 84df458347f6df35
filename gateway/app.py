"""The composition root: builds every room from the settings, starts and stops them in order.

Start: store (migrations) -> engine (recover leases) -> worker socket -> HTTP API.
Stop: tell workers to go away -> stop HTTP -> commit what is pending -> close sockets -> store.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import orjson
import structlog
import uvicorn

from gateway.clock import Clock, SystemClock
from gateway.config import Settings, db_backend
from gateway.engine import Engine
from gateway.http.api import build_api
from gateway.http.events import EventLimits
from gateway.http.management import worker_json
from gateway.http.server import server_config
from gateway.metrics import Metrics
from gateway.registry import Registry
from gateway.store.base import Limits, Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.transport.auth import Authenticator
from gateway.transport.connection import ConnectionSettings
from gateway.transport.server import WorkerServer
from protocol.ids import new_id

log = structlog.get_logger("tether.gateway")

VERSION = "0.1.0"


def open_store(url: str) -> Store:
    backend, location = db_backend(url)
    if backend == "sqlite":
        return SQLiteStore(location)
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
    ) -> None:
        settings.check()
        self.settings = settings
        self.clock = clock or SystemClock()
        self.gateway_id = settings.gateway_id or new_id()
        self.store = store or open_store(settings.db)
        self.registry = Registry()
        self.metrics = Metrics()
        self.engine = Engine(
            self.store, self.registry, self.clock, retry_base=settings.retry_base, rng=rng,
            metrics=self.metrics,
            limits=Limits(settings.max_steps, settings.max_step_result, settings.max_run_state),
        )
        self.auth = Authenticator(
            dev=settings.dev, signing_keys=settings.signing_keys, event_keys=settings.event_keys,
            api_keys=settings.api_keys,
        )
        self.workers = WorkerServer(
            engine=self.engine, registry=self.registry, auth=self.auth, clock=self.clock,
            settings=ConnectionSettings(
                gateway_id=self.gateway_id,
                heartbeat_interval=settings.heartbeat_interval,
                lease_ttl=settings.heartbeat_interval * 3,
                max_steps=settings.max_steps,
                max_step_result=settings.max_step_result,
                max_frame_in=settings.frame_limit,
                max_frame_out=max(settings.frame_limit, 64 * 1024 * 1024),
            ),
        )
        self.api = build_api(
            engine=self.engine, registry=self.registry, auth=self.auth,
            limits=EventLimits(settings.max_event_size, settings.max_request_size),
            metrics=self._render_metrics, health=self._health,
            gateway_id=self.gateway_id, peer_ttl=settings.peer_ttl,
        )
        self.http_port = 0
        self.connect_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._http: uvicorn.Server | None = None
        self._http_loop: asyncio.Task[None] | None = None
        self._started = self.clock.now()

    async def start(self) -> None:
        await self.store.open()
        await self.store.subscribe(self.gateway_id, self.engine.peer_note)
        if self.store.shared:
            await self._keep_alive_once()
            self._tasks.append(asyncio.create_task(self._keep_alive(), name="tether-peers"))
        await self.engine.load()
        self._tasks.append(asyncio.create_task(self.engine.run(), name="tether-engine"))
        self.connect_port = await self.workers.start(self.settings.host,
                                                     self.settings.connect_port)
        self._tasks.append(asyncio.create_task(self.workers.reap(), name="tether-reaper"))
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
        self._http_loop = asyncio.create_task(self._http.main_loop(), name="tether-http")
        log.info("gateway_started", http=f"http://{self.settings.host}:{self.http_port}",
                 connect=f"ws://{self.settings.host}:{self.connect_port}/connect",
                 db=self.settings.db, dev=self.settings.dev, gateway_id=self.gateway_id)

    async def stop(self) -> None:
        log.info("gateway_stopping", workers=len(self.registry))
        # Workers leaving now lose no lease-loss credit: their runs go to other gateways' workers.
        self.workers.leaving = True
        await self.workers.go_away("gateway shutting down; reconnect to another gateway")
        # Their leases are released as they leave; give them a moment to, then drop the rest.
        await self.workers.gone(timeout=self.settings.go_away_grace)
        if self._http is not None and self._http_loop is not None:
            self._http.should_exit = True
            await self._http_loop
            await self._http.shutdown()
        await self.engine.close()
        await self.workers.close()
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

    def _health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": VERSION,
            "gateway_id": self.gateway_id,
            "db": db_backend(self.settings.db)[0],
            "workers": len(self.registry),
            "uptime_seconds": round(self.clock.now() - self._started, 3),
        }

    def _render_metrics(self) -> str:
        return self.metrics.render({
            "workers_connected": len(self.registry),
            "runs_in_flight": sum(len(w.in_flight) for w in self.registry),
        })
