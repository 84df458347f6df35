"""Deadlines and cron ticks are looked for only when one may be due, never late for it; and
what another gateway says is ready is not forgotten.

A batch does not query for due deadlines and ticks unless the engine's timer says one may be
due (or it has yet to learn the next due time: at start). These tests hold the engine to what
that must not cost: a deadline applied at its time whatever else commits meanwhile, after a
restart, when the deadline was written already past, when another gateway sharing the store
wrote it, and when another gateway's batch held its run locked at the time. A real Engine over
each backend, time injected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from gateway.app import open_store
from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.registry import Registry
from gateway.store.base import NewEvent, Store, WriteBatch, WriteResult
from gateway.store.transaction import LOCKED_DEADLINE_RETRY
from protocol import messages as m
from protocol.manifest import AppManifest, Timeouts
from tests.helpers.waiting import eventually
from tests.integration.test_cron import Gateway
from tests.integration.test_engine_steps import BOUND, World, fn, running_world

FUNCTIONS = [
    fn("late", "go.late", timeouts=Timeouts(start=10)),
    fn("now", "go.now", timeouts=Timeouts(start=0)),
    fn("instant", "go.instant", timeouts=Timeouts(finish=0)),
    fn("plain", "go.plain"),
]


async def status(world: World, run_id: str) -> str:
    return str((await world.run(run_id))["status"])


async def queued_run(world: World, name: str) -> str:
    [run] = await world.engine.store.runs_for_event(await world.send(name))
    return run.id


async def cancelled(world: World, run_id: str) -> bool:
    return await status(world, run_id) == "Cancelled"


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, FUNCTIONS) as world:
        yield world


async def test_a_deadline_is_applied_at_its_time_while_other_batches_commit(world):
    run = await queued_run(world, "go.late")
    for _ in range(5):  # batches that have nothing due: the run stays queued
        world.clock.advance(1.9)
        await world.send("go.plain")
        await world.settle()
        assert await status(world, run) == "Queued"
    world.clock.advance(0.5)  # 10 s after it was queued
    await world.send("go.plain")  # the batch that comes first applies it
    assert await cancelled(world, run)


async def test_a_deadline_is_applied_at_its_time_with_nothing_else_to_commit(world):
    run = await queued_run(world, "go.late")
    await world.settle()
    world.clock.advance(10)
    await eventually(lambda: cancelled(world, run), what="the run cancelled by its timer")


async def test_a_start_timeout_of_zero_cancels_the_run_in_the_batch_that_creates_it(world):
    worker = world.worker("t/now")
    run = await queued_run(world, "go.now")
    assert await cancelled(world, run)
    await world.settle()
    assert worker.leases() == []


async def test_a_finish_timeout_of_zero_cancels_the_run_once_leased_unprompted(world):
    worker = world.worker("t/instant")
    await world.send("go.instant")
    lease = await worker.lease()
    # Its deadline, written by the claim after the batch's deadline phase, is already past:
    # the engine comes back for it at once, with nothing else sent and no time moved.
    revoked = await worker.next(m.LeaseRevoked)
    assert revoked.run_id == lease.run_id
    assert "timeouts.finish" in (await world.run(lease.run_id))["error"].message


async def test_a_deadline_that_passed_while_the_gateway_was_down_is_applied_at_start(store):
    gateway = Gateway(store, FakeClock())
    world = await gateway.start()
    await world.engine.register_app(AppManifest(id="t", functions=FUNCTIONS))
    run = await queued_run(world, "go.late")
    await gateway.stop()
    gateway.clock.advance(60)
    world = await gateway.start()  # nothing is sent: its first batch looks for what is due
    await eventually(lambda: cancelled(world, run), what="the run cancelled at start")
    await gateway.stop()


# --- several gateways (PostgreSQL) -----------------------------------------------------------


@contextlib.asynccontextmanager
async def peer(url: str, gateway_id: str, clock: FakeClock) -> AsyncIterator[Engine]:
    """An engine over its own store on ``url``, hearing the other gateways' notes."""
    store: Store = open_store(url)
    await store.open()
    engine = Engine(store, Registry(), clock, retry_base=1.0)
    await store.subscribe(gateway_id, engine.peer_note)
    await engine.load()
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        await engine.close()
        await asyncio.wait_for(task, BOUND)
        await store.close()


def postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")


async def test_a_deadline_another_gateway_wrote_is_applied_here_once_it_stopped(db_url):
    postgres_only(db_url)
    clock = FakeClock()
    async with peer(db_url, "gw-b", clock) as other:
        async with peer(db_url, "gw-a", clock) as first:
            await first.register_app(AppManifest(id="t", functions=FUNCTIONS))
            world = World(first, clock, first.registry)
            run = await queued_run(world, "go.late")  # its deadline: heard by gw-b
        # gw-a is gone; gw-b started before the run existed and was only told.
        clock.advance(10)
        seen = World(other, clock, other.registry)
        await eventually(lambda: cancelled(seen, run), what="the run cancelled by gw-b")


async def test_a_due_deadline_locked_by_another_gateway_is_applied_once_released(store, db_url):
    postgres_only(db_url)
    async with running_world(store, FUNCTIONS) as world:
        run = await queued_run(world, "go.late")
        await world.settle()
        holder = await asyncpg.connect(db_url)
        try:
            locked = holder.transaction()
            await locked.start()
            await holder.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run)
            world.clock.advance(10)  # due, but the batch that looks skips the locked row
            await world.settle()
            assert await status(world, run) == "Queued"
            await locked.rollback()
        finally:
            await holder.close()
        world.clock.advance(LOCKED_DEADLINE_RETRY)  # nothing tells it: it looks again
        await eventually(lambda: cancelled(world, run), what="the run cancelled after the lock")


# --- the store's upkeep at rest ---------------------------------------------------------------


class UpkeepFails:
    """Wraps a store whose upkeep at rest (the engine idle) always raises."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.upkeeps = 0

    async def idle(self) -> None:
        self.upkeeps += 1
        raise OSError("disk I/O error during a checkpoint")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


async def test_a_failing_upkeep_at_rest_stops_no_commit(store):
    failing = UpkeepFails(store)
    async with running_world(failing, FUNCTIONS) as world:  # type: ignore[arg-type]
        worker = world.worker("t/plain")
        for _ in range(3):
            await world.send("go.plain")
            lease = await worker.lease()
            await world.checkpoint(worker, lease, m.RunCompleted, output=b"1")
            assert await status(world, lease.run_id) == "Completed"
            await world.settle()
        assert failing.upkeeps >= 3


# --- runs another gateway made ready while a claim was committing ------------------------------


class HeldAfterCommit:
    """Wraps a store: a claim-only batch commits, then its answer waits for ``release``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.committed = asyncio.Event()
        self.release = asyncio.Event()
        self.armed = False

    async def write(self, batch: WriteBatch) -> WriteResult:
        result: WriteResult = await self._store.write(batch)
        if self.armed and batch.claims and not batch.has_writes():
            self.armed = False
            self.committed.set()
            await self.release.wait()
        return result

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


async def test_runs_another_gateway_made_ready_during_a_fruitless_claim_are_leased(store):
    held = HeldAfterCommit(store)
    async with running_world(held, FUNCTIONS) as world:  # type: ignore[arg-type]
        await world.settle()
        held.armed = True
        worker = world.worker("t/plain")  # a claim that finds nothing, and is held
        await asyncio.wait_for(held.committed.wait(), BOUND)
        # Meanwhile another gateway queues a run and says so (its NOTIFY).
        body = {"name": "go.plain", "data": {}, "id": "elsewhere", "ts": 0, "user": None}
        await store.write(WriteBatch(now=world.clock.now(), events=[NewEvent(
            "elsewhere", "go.plain", orjson.dumps(body), body)], match=lambda n, e: ["t/plain"]))
        world.engine.peer_note({"functions": ["t/plain"]})
        held.release.set()  # the claim's empty answer arrives after the note
        lease = await worker.lease()
        assert lease.events == [orjson.dumps(body)]
