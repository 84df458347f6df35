"""An in-process gateway plus in-process workers, driven over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from tests.helpers.waiting import bound, eventually
from worker import App, Worker


class Harness:
    """One gateway (from ``gateway_factory``), its HTTP client, and workers to start."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        # httpx's default 5 s is a latency bound no test means: on a loaded machine (the
        # suite runs under pytest-xdist) a heavy request may take longer.
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}",
                                      timeout=bound(30))
        self.workers: list[tuple[Worker, asyncio.Task[None]]] = []

    @property
    def connect_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.connect_port}/connect"

    async def start_worker(self, apps: Sequence[App], **options: Any) -> Worker:
        worker = Worker(apps, gateways=[self.connect_url], **options)
        task = asyncio.create_task(worker.run())
        self.workers.append((worker, task))
        await asyncio.wait_for(worker.link.connected.wait(), 10)
        return worker

    async def send(self, *events: dict[str, Any]) -> list[str]:
        response = await self.http.post("/e/dev", json=list(events))
        assert response.status_code == 200, response.text
        ids: list[str] = response.json()["ids"]
        return ids

    async def runs_of(self, event_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = (
            await self.http.get(f"/v1/events/{event_id}/runs")).json()["data"]
        return runs

    async def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = (await self.http.get(f"/v1/runs/{run_id}")).json()
        return run

    async def run_of(self, event_id: str, timeout: float = 10) -> dict[str, Any]:
        """The (single) run an event started, once it exists."""
        async def one() -> dict[str, Any] | None:
            runs = await self.runs_of(event_id)
            return runs[0] if runs else None
        run: dict[str, Any] = await eventually(one, timeout, what=f"a run for {event_id}")
        return run

    async def wait_status(self, run_id: str, *statuses: str, timeout: float = 10
                          ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in statuses else None
        try:
            run: dict[str, Any] = await eventually(check, timeout,
                                                   what=f"run {run_id} in {statuses}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; run is {await self.run(run_id)}") from None
        return run

    async def close(self) -> None:
        for worker, task in self.workers:
            await worker.drain()
            await asyncio.wait_for(task, 10)
        await self.http.aclose()
