"""Throttle and priority through a real Engine over each backend, time injected.

Throttle: each run's start is reserved at admission per GCRA (``available_at``), so starts of
a key are spread exactly, keys are independent, the excess waits in order and is never
dropped, the state survives a restart, and ``GET /v1/runs/{id}`` says why and until when.
Priority: with one worker slot, a later run of higher priority is leased first, ties keep
arrival order, a running run is never preempted, the shift is clamped to +-600 s, and an
expression that fails gives 0 without failing anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway.clock import FakeClock
from gateway.store.base import NewEvent, RunRecord, Store
from protocol import messages as m
from protocol.manifest import AppManifest, FunctionConfig, Priority, Throttle, TriggerEvent
from tests.helpers.waiting import eventually
from tests.integration.test_cron import Gateway, send_at
from tests.integration.test_engine_steps import FakeWorker, World

START = 1_700_000_000.0

#: limit 2 per 10 s, burst 1: one start every 5 s.
SPREAD = FunctionConfig(id="spread", triggers=[TriggerEvent("go.spread")],
                        throttle=Throttle(2, 10.0))
PER_TENANT = FunctionConfig(id="tenant", triggers=[TriggerEvent("go.tenant")],
                            throttle=Throttle(1, 60.0, key="event.data.tenant"))
BURSTY = FunctionConfig(id="bursty", triggers=[TriggerEvent("go.bursty")],
                        throttle=Throttle(2, 10.0, burst=2))
RANKED = FunctionConfig(id="ranked", triggers=[TriggerEvent("go.ranked")],
                        priority=Priority("event.data.p"))


def app(*functions: FunctionConfig) -> AppManifest:
    return AppManifest(id="t", version="1", functions=list(functions))


@pytest.fixture
async def gateway(store) -> AsyncIterator[Gateway]:
    gw = Gateway(store, FakeClock(START))
    world = await gw.start()
    await world.engine.register_app(app(SPREAD, PER_TENANT, BURSTY, RANKED))
    yield gw
    await gw.stop()


async def runs(store: Store, function_id: str) -> list[RunRecord]:
    """The runs of ``function_id`` in creation order."""
    page = await store.list_runs(function_id=function_id, status=None, limit=100, cursor=None)
    return sorted(page.runs, key=lambda r: (r.queued_at, r.available_at or 0))


async def advance(world: World, seconds: float) -> None:
    """Move time, then wait until the engine has handled everything due by then."""
    world.clock.advance(seconds)
    engine, now = world.engine, world.clock.now()

    async def settled() -> bool:
        await world.settle()
        return (not engine._find_wakeup and not engine._wake.is_set()
                and (engine._next_wakeup is None or engine._next_wakeup > now))

    await eventually(settled, what="the engine handles what is due")


async def starts(world: World, worker: FakeWorker, until: float, step: float = 0.5
                 ) -> list[float]:
    """The clock times at which ``worker`` was leased runs, moving time by ``step`` to ``until``."""
    seen: list[float] = []
    while world.clock.now() < until:
        await advance(world, step)
        for lease in worker.leases():
            worker.inbox.remove(lease)
            seen.append(world.clock.now() - START)
    return seen


# --- throttle ------------------------------------------------------------------------------


async def completed_in_turn(world: World, worker: FakeWorker, running: m.LeaseGranted,
                            count: int) -> list[str]:
    """Complete ``running`` and then each next lease, ``count`` times: the runs leased, in order."""
    order = []
    lease = running
    for _ in range(count):
        await world.checkpoint(worker, lease, m.RunCompleted, output=b"null")
        lease = await worker.lease()
        order.append(lease.run_id)
    return order

async def test_throttle_spreads_starts_per_gcra(gateway):
    world = gateway.world
    for _ in range(4):
        await world.send("go.spread")
    queued = await runs(gateway.store, "t/spread")
    assert [r.available_at - START for r in queued] == [0.0, 5.0, 10.0, 15.0]  # type: ignore[operator]
    worker = world.worker("t/spread")
    first = await worker.lease()
    assert first.run_id == queued[0].id
    # One lease per emission (5 s), exactly at its reserved slot, in arrival order.
    assert await starts(world, worker, START + 20) == [5.0, 10.0, 15.0]
    got = [(await gateway.store.get_run(r.id)).started_at for r in queued]  # type: ignore[union-attr]
    assert [s - START for s in got] == [0.0, 5.0, 10.0, 15.0]  # type: ignore[operator]


async def test_throttle_burst_starts_at_once_then_at_the_rate(gateway):
    world = gateway.world
    for _ in range(4):
        await world.send("go.bursty")
    queued = await runs(gateway.store, "t/bursty")
    assert [r.available_at - START for r in queued] == [0.0, 0.0, 5.0, 10.0]  # type: ignore[operator]


async def test_throttle_keys_are_independent_and_excess_waits_in_order(gateway):
    world = gateway.world
    for tenant in ("a", "a", "b", "a", "b"):
        await world.send("go.tenant", {"tenant": tenant})
    queued = await runs(gateway.store, "t/tenant")
    assert len(queued) == 5  # nothing dropped
    by_event = {r.event_ids[0]: r.available_at - START for r in queued}  # type: ignore[operator]
    assert by_event == {"e1-go.tenant": 0.0, "e2-go.tenant": 60.0, "e3-go.tenant": 0.0,
                        "e4-go.tenant": 120.0, "e5-go.tenant": 60.0}
    worker = world.worker("t/tenant")
    await advance(world, 0)
    order = []
    for _ in range(2):
        order.append((await worker.lease()).run_id)
    await advance(world, 60)
    for _ in range(2):
        order.append((await worker.lease()).run_id)
    await advance(world, 59)
    assert worker.leases() == []
    await advance(world, 1)
    order.append((await worker.lease()).run_id)
    ids = {r.event_ids[0]: r.id for r in queued}
    assert set(order[:2]) == {ids["e1-go.tenant"], ids["e3-go.tenant"]}
    assert set(order[2:4]) == {ids["e2-go.tenant"], ids["e5-go.tenant"]}
    assert order[4] == ids["e4-go.tenant"]


async def test_a_delayed_event_waits_for_earlier_slots_and_holds_no_later_event(gateway):
    world = gateway.world
    await world.send("go.spread")                       # slot 0
    await send_at(world, "go.spread", START + 2, "soon")  # ts 2: behind slot 5 s, reserves none
    await send_at(world, "go.spread", START + 3600, "later")  # ts in an hour: at its ts
    await world.send("go.spread")                       # slot 5 s: not held back an hour
    by_event = {r.event_ids[0]: r.available_at - START  # type: ignore[operator]
                for r in await runs(gateway.store, "t/spread")}
    assert by_event == {"e1-go.spread": 0.0, "soon": 5.0, "later": 3600.0,
                        "e2-go.spread": 5.0}


async def test_throttle_state_survives_a_restart(gateway):
    world = gateway.world
    await world.send("go.spread")
    await world.send("go.spread")
    await advance(world, 1)
    world = await gateway.restart()
    await world.send("go.spread", event_id="after-restart")  # the stored TAT: slot 10 s
    queued = await runs(gateway.store, "t/spread")
    assert [r.available_at - START for r in queued] == [0.0, 5.0, 10.0]  # type: ignore[operator]
    worker = world.worker("t/spread")
    await worker.lease()  # the first, due since START
    assert await starts(world, worker, START + 11) == [5.0, 10.0]


async def test_a_throttle_key_that_fails_fails_the_run_with_the_reason(gateway):
    world = gateway.world
    worker = world.worker("t/tenant")
    await world.send("go.tenant", {"nobody": 1})
    await world.settle()
    (run,) = await runs(gateway.store, "t/tenant")
    assert run.status == "Failed"
    assert run.error is not None and run.error.name == "FlowControlError"
    assert "throttle key" in run.error.message and "tenant" in run.error.message
    assert worker.leases() == []
    await world.send("go.tenant", {"tenant": "x"})  # the key still works
    await worker.lease()


async def test_waiting_names_the_throttle_its_key_and_until(gateway_factory):
    gw = await gateway_factory(clock=FakeClock(START))
    await gw.engine.register_app(app(PER_TENANT))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        for _ in range(2):
            answer = await client.post("/e/dev", json={"name": "go.tenant",
                                                       "data": {"tenant": "acme"}})
            assert answer.status_code == 200, answer.text
        first, second = await runs(gw.store, "t/tenant")
        assert (await client.get(f"/v1/runs/{first.id}")).json()["waiting"] is None
        waiting = (await client.get(f"/v1/runs/{second.id}")).json()["waiting"]
        assert waiting["option"] == "throttle"
        assert waiting["key"] == "acme"
        assert waiting["until"] == "2023-11-14T22:14:20.000000Z"  # START + 60 s
        assert "throttle" in waiting["reason"]
        listed = (await client.get("/v1/runs?function_id=t/tenant")).json()["data"]
        assert {r["id"]: r["waiting"] and r["waiting"]["option"] for r in listed} == {
            first.id: None, second.id: "throttle"}
        metrics = (await client.get("/metrics")).text
        assert 'tether_flow_delayed_total{reason="throttle"} 1.0' in metrics


# --- priority ------------------------------------------------------------------------------

async def test_priority_reorders_waiting_runs_and_never_preempts(gateway):
    world = gateway.world
    worker = world.worker("t/ranked", capacity=1)
    await world.send("go.ranked", {"p": 0})
    running = await worker.lease()
    await advance(world, 10)
    await world.send("go.ranked", {"p": 0})    # waiting since START + 10
    await advance(world, 10)
    await world.send("go.ranked", {"p": 60})   # as if queued at START - 40
    await world.send("go.ranked", {"p": 60})   # the same: after the one before (arrival)
    await advance(world, 1)
    assert worker.leases() == []               # the running run keeps its slot
    ids = {r.event_ids[0]: r.id for r in await runs(gateway.store, "t/ranked")}
    order = await completed_in_turn(world, worker, running, 3)
    assert order == [ids["e3-go.ranked"], ids["e4-go.ranked"], ids["e2-go.ranked"]]


async def test_priority_is_clamped_and_a_failing_expression_gives_zero(gateway):
    world = gateway.world
    worker = world.worker("t/ranked", capacity=1)
    await world.send("go.ranked", {"p": 0})
    running = await worker.lease()
    await world.send("go.ranked", {"p": 0})           # waiting since START
    await advance(world, 700)
    await world.send("go.ranked", {"p": 10 ** 9})     # clamped to 600: as if at START + 100
    await world.send("go.ranked", {})                 # no p: priority 0, as if at START + 700
    await world.send("go.ranked", {"p": -(10 ** 9)})  # -600: as if at START + 1300
    await world.send("go.ranked", {"p": 0})           # as if at START + 700, after the 4th
    ids = {r.event_ids[0]: r.id for r in await runs(gateway.store, "t/ranked")}
    order = await completed_in_turn(world, worker, running, 5)
    assert order == [ids[f"e{i}-go.ranked"] for i in (2, 3, 4, 6, 5)]
    assert (await world.run(ids["e5-go.ranked"]))["status"] == "Running"


async def test_runs_queued_before_a_priority_was_set_keep_their_place(gateway):
    # Queued while the function had no priority, they have no arrival: the registration that
    # gives it one ranks them (SQLite's runs_by_priority holds only runs with an arrival).
    world = gateway.world
    plain = FunctionConfig(id="later", triggers=[TriggerEvent("go.later")])
    await world.engine.register_app(app(SPREAD, PER_TENANT, BURSTY, RANKED, plain))
    worker = world.worker("t/later", capacity=1)
    await world.send("go.later", {})
    running = await worker.lease()
    await advance(world, 10)
    await world.send("go.later", {})           # waiting since START + 10, no priority yet
    await world.send("go.later", {})           # the same, after it
    ranked = FunctionConfig(id="later", triggers=[TriggerEvent("go.later")],
                            priority=Priority("event.data.p"))
    await world.engine.register_app(AppManifest(
        id="t", version="2", functions=[SPREAD, PER_TENANT, BURSTY, RANKED, ranked]))
    await advance(world, 10)
    await world.send("go.later", {"p": 0})     # as if queued at START + 20
    await world.send("go.later", {"p": 60})    # as if queued at START - 40
    await world.send("go.later", {"p": 15})    # as if queued at START + 5
    ids = {r.event_ids[0]: r.id for r in await runs(gateway.store, "t/later")}
    assert len(ids) == 6
    order = await completed_in_turn(world, worker, running, 5)
    events = sorted(ids, key=lambda e: int(e.split("-")[0][1:]))
    assert order == [ids[events[i]] for i in (4, 5, 1, 2, 3)]


async def test_two_gateways_on_postgres_share_a_throttle_key(gateway_factory, db_url):
    """Events of one key sent to two gateways at once get distinct slots, 5 s apart."""
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    clock = FakeClock(START)
    first, second = await gateway_factory(clock=clock), await gateway_factory(clock=clock)
    await first.engine.register_app(app(SPREAD))

    async def known() -> bool:
        return "t/spread" in second.engine.functions

    await eventually(known, what="the second gateway loads t/spread")
    def event(i: int) -> list[NewEvent]:
        body = {"name": "go.spread", "data": {}, "id": f"two-{i}", "ts": 0, "user": None}
        return [NewEvent(body["id"], "go.spread", orjson.dumps(body), body)]

    await first.engine.ingest(event(0))  # the key's row exists: now only its lock serialises
    # At once: the two gateways' transactions queue on the key's row lock.
    await asyncio.gather(*((first, second)[i % 2].engine.ingest(event(i)) for i in range(1, 8)))
    slots = sorted(r.available_at - START for r in await runs(first.store, "t/spread"))  # type: ignore[operator]
    assert slots == [5.0 * i for i in range(8)]
