"""Through a whole in-process gateway: a poisoned item fails alone, its batch neighbours commit.

To put the items in one batch for certain, the database is held by another connection while a
first request commits: everything sent meanwhile waits in the next batch, which is applied
together once the database is let go. Both backends.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest

from gateway.app import Gateway
from protocol import messages as m
from tests.helpers.waiting import eventually
from tests.integration.raw_worker import EVENT, RawWorker


def sample(gw: Gateway, name: str) -> float | None:
    return gw.metrics.registry.get_sample_value(name)


@asynccontextmanager
async def database_held(db_url: str) -> AsyncIterator[None]:
    """Hold the database so the gateway's next commit waits until the block ends."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url[len("sqlite:///"):], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    pg = await asyncpg.connect(db_url)
    try:
        async with pg.transaction():
            await pg.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            yield
    finally:
        await pg.close()


async def test_a_malformed_checkpoint_fails_alone_in_its_batch(gateway_factory, db_url):
    gw: Gateway = await gateway_factory(heartbeat_interval=60)
    a = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    b = await RawWorker.ready_on(gw.connect_port, instance_id="b")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        assert (await http.post("/e/dev", json=[{"name": EVENT}, {"name": EVENT}])
                ).status_code == 200
        lease_a, lease_b = await a.expect(m.LeaseGranted), await b.expect(m.LeaseGranted)
        engine = gw.engine

        async with database_held(db_url):
            first = asyncio.create_task(http.post("/e/dev", json={"name": "other/first"}))
            await eventually(lambda: _true(engine._in_flight[0]), what="a commit waiting")
            poison = m.RunCompleted(seq=a.next_seq(), run_id=lease_a.run_id,
                                    fence=lease_a.fence, output=b"{this is not json")
            await a.send(poison)
            good = b.step_completed(lease_b.run_id, lease_b.fence)
            await b.send(good)
            neighbour = asyncio.create_task(http.post("/e/dev", json={"name": "other/next"}))
            await eventually(lambda: _true(len(engine._batch.checkpoints) == 2
                                           and engine._batch.events),
                             what="the poison and its neighbours in the next batch")
        assert (await first).status_code == 200
        assert (await neighbour).status_code == 200, (await neighbour).text

        refused = await a.expect(m.CheckpointRefused)
        assert refused.seq == poison.seq and "not valid JSON" in refused.reason
        assert (await b.expect(m.CheckpointAck)).upto == good.seq
        assert not b.of(m.CheckpointRefused)
        run_a = (await http.get(f"/v1/runs/{lease_a.run_id}")).json()
        assert run_a["status"] == "Failed" and run_a["error"]["name"] == "InvalidCheckpoint"
        run_b = (await http.get(f"/v1/runs/{lease_b.run_id}")).json()
        assert [s["id"] for s in run_b["steps"]] == ["a"] and run_b["status"] == "Running"
        assert sample(gw, "tether_batches_failed_total") == 0
        assert (await http.get("/health")).json()["status"] == "ok"
    await a.close()
    await b.close()


async def _true(value: object) -> bool:
    return bool(value)


async def test_health_is_degraded_while_batches_fail_and_says_why(gateway_factory, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("a held PostgreSQL lock makes the commit wait, not fail")
    gw: Gateway = await gateway_factory()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        async with database_held(db_url):
            # SQLite gives up after its busy timeout: the batch fails whole.
            failed = await http.post("/e/dev", json={"name": "x/y"}, timeout=30)
            assert failed.status_code == 503, failed.text
            health = await http.get("/health")
            assert health.status_code == 200  # liveness: the process is up
            body = health.json()
            assert body["status"] == "degraded"
            assert body["last_error"]["kind"] == "batch"
            assert "locked" in body["last_error"]["error"]
        assert (await http.post("/e/dev", json={"name": "x/y"})).status_code == 200
        body = (await http.get("/health")).json()
        assert body["status"] == "ok" and "locked" in body["last_error"]["error"]


async def test_events_that_raise_inside_the_batch_are_refused_alone(gateway_factory, db_url):
    """Events that skipped the HTTP checks (as a bug would let through) fail their request only."""
    from gateway.engine import ItemFailed
    from gateway.store.base import NewEvent

    gw: Gateway = await gateway_factory()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        async with database_held(db_url):
            first = asyncio.create_task(http.post("/e/dev", json={"name": "other/first"}))
            await eventually(lambda: _true(gw.engine._in_flight[0]), what="a commit waiting")
            bad = asyncio.create_task(gw.engine.ingest([NewEvent("bad-1", "x/y", b"{no", None)]))
            good = asyncio.create_task(http.post("/e/dev", json={"name": "x/y", "id": "good-1"}))
            await eventually(lambda: _true(len(gw.engine._batch.events) == 2),
                             what="both requests in the next batch")
        assert (await first).status_code == 200
        assert (await good).status_code == 200
        with pytest.raises(ItemFailed, match="could not be stored"):
            await bad
        assert sample(gw, "tether_batches_failed_total") == 0
        assert sample(gw, "tether_items_failed_total") == 1
        health = (await http.get("/health")).json()
        assert health["status"] == "ok" and health["last_error"]["kind"] == "events"
