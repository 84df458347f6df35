"""The leasing order through a real Engine over each backend, time injected.

When workers have fewer free slots than runs are ready, a run already started (woken from a
sleep or a wait) is leased before runs queued earlier that have not started, whatever their
priority; within a concurrency key the same holds, and keys stay served round-robin. The order
is the store's: another gateway sharing PostgreSQL leases the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.clock import FakeClock
from gateway.runs import StepStatus
from protocol import messages as m
from protocol.manifest import AppManifest, Concurrency, Priority
from tests.helpers.waiting import eventually
from tests.integration.test_engine_steps import FakeWorker, World, fn, running_world
from tests.integration.test_flow_throttle import START, advance

NAP = fn("nap", "go.nap")
RANKED = fn("ranked", "go.ranked", priority=Priority("event.data.p"))
KEYED = fn("keyed", "go.keyed", concurrency=[Concurrency(1, key="event.data.k")])


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, [NAP, RANKED, KEYED], FakeClock(START)) as world:
        yield world


async def sleep_then_suspend(world: World, worker: FakeWorker, lease: m.LeaseGranted,
                             seconds: float) -> None:
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="zz", duration=seconds)
    await world.checkpoint(worker, lease, m.RunSuspended)


async def complete(world: World, worker: FakeWorker, lease: m.LeaseGranted) -> None:
    await world.checkpoint(worker, lease, m.RunCompleted, output=b"null")


async def order_of_leases(world: World, worker: FakeWorker, first: m.LeaseGranted,
                          count: int) -> list[m.LeaseGranted]:
    """Complete ``first``, then each run leased next, ``count`` times: the leases in order."""
    leases, lease = [], first
    for _ in range(count):
        await complete(world, worker, lease)
        lease = await worker.lease()
        leases.append(lease)
    return leases


async def test_a_woken_sleeper_is_leased_before_older_runs_not_started(world):
    worker = world.worker("t/nap", capacity=1)
    await world.send("go.nap")
    sleeper = await worker.lease()
    await sleep_then_suspend(world, worker, sleeper, 5.0)   # due at START + 5
    await world.send("go.nap")
    busy = await worker.lease()                              # takes the one slot
    queued = [await world.send("go.nap"), await world.send("go.nap")]  # at START, not started
    await advance(world, 6.0)                                # the sleep is over
    assert worker.leases() == []                             # nothing preempted
    after = await order_of_leases(world, worker, busy, 3)
    assert after[0].run_id == sleeper.run_id
    assert after[0].memos["zz"].kind == "sleep" and "zz" not in after[0].deferred
    assert [event_of(lease)["id"] for lease in after[1:]] == queued  # then in arrival order
    record = await world.run(sleeper.run_id)
    assert record["steps"]["zz"].status == StepStatus.COMPLETED


async def test_a_run_woken_by_its_event_goes_before_older_runs_not_started(world):
    worker = world.worker("t/nap", capacity=1)
    await world.send("go.nap")
    waiter = await worker.lease()
    await world.checkpoint(worker, waiter, m.WaitRequested, step_id="w", event="go.ping",
                           timeout=600.0)
    await world.checkpoint(worker, waiter, m.RunSuspended)
    await world.send("go.nap")
    busy = await worker.lease()
    await world.send("go.nap")
    await advance(world, 1.0)
    await world.send("go.ping")                              # wakes the waiter: ready now
    after = await order_of_leases(world, worker, busy, 2)
    assert after[0].run_id == waiter.run_id
    assert after[0].memos["w"].kind == "wait"


async def test_a_resumed_run_goes_before_new_runs_of_any_priority(world):
    worker = world.worker("t/ranked", capacity=1)
    await world.send("go.ranked", {"p": -600})
    sleeper = await worker.lease()
    await sleep_then_suspend(world, worker, sleeper, 5.0)
    await world.send("go.ranked", {"p": 0})
    busy = await worker.lease()
    await world.send("go.ranked", {"p": 0})                  # as if at START
    await world.send("go.ranked", {"p": 600})                # as if at START - 600
    await advance(world, 6.0)
    after = await order_of_leases(world, worker, busy, 3)
    assert after[0].run_id == sleeper.run_id
    assert [event_of(lease)["data"]["p"] for lease in after[1:]] == [600, 0]  # starts: by priority


def event_of(lease: m.LeaseGranted) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(lease.events[0])
    return event


async def test_within_a_concurrency_key_a_resumed_run_goes_first(world):
    worker = world.worker("t/keyed", capacity=10)
    await world.send("go.keyed", {"k": "a"})
    sleeper = await worker.lease()
    await sleep_then_suspend(world, worker, sleeper, 5.0)   # frees key a's slot
    await world.send("go.keyed", {"k": "a"})
    busy = await worker.lease()                              # key a full again
    waiting_id = await world.send("go.keyed", {"k": "a"})    # waits for key a, not started
    await advance(world, 6.0)
    now = world.clock.now()
    store = world.engine.store
    page = await store.list_runs(function_id="t/keyed", status=None, limit=10, cursor=None)
    (waiting,) = [r for r in page.runs if r.event_ids == [waiting_id]]
    views = {r: await store.get_run(r, now) for r in (waiting.id, sleeper.run_id)}
    assert {r: v.queue.ahead for r, v in views.items()} == {  # type: ignore[union-attr]
        sleeper.run_id: 0, waiting.id: 1}                    # the woken sleeper goes first
    await world.send("go.keyed", {"k": "b"})                 # key b: its own slot, at once
    other = await worker.lease()
    assert other.run_id not in (sleeper.run_id, busy.run_id)
    after = await order_of_leases(world, worker, busy, 2)
    assert after[0].run_id == sleeper.run_id


async def test_another_gateway_on_postgres_leases_the_woken_run_first(gateway_factory, db_url):
    """The order is the store's, not one engine's memory: a second gateway sharing PostgreSQL,
    whose worker connects after the sleep came due, is leased the woken run first."""
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    clock = FakeClock(START)
    gateways = [await gateway_factory(clock=clock), await gateway_factory(clock=clock)]
    await gateways[0].engine.register_app(AppManifest(id="t", functions=[NAP]))

    async def known() -> bool:
        return "t/nap" in gateways[1].engine.functions

    await eventually(known, what="the second gateway loads t/nap")
    first, second = (World(gw.engine, clock, gw.engine.registry) for gw in gateways)
    worker = first.worker("t/nap", capacity=1)
    await first.send("go.nap", event_id="sleeper")
    sleeper = await worker.lease()
    await sleep_then_suspend(first, worker, sleeper, 5.0)
    await first.send("go.nap", event_id="busy")
    await worker.lease()                                     # the first gateway's one slot
    for n in range(3):
        await first.send("go.nap", event_id=f"new-{n}")      # queued before the sleep is due
    clock.advance(6.0)
    other = second.worker("t/nap", capacity=1)
    assert event_of(await other.lease())["id"] == "sleeper"
