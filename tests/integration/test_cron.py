"""Cron ticks and delayed events through a real Engine over each backend, time injected.

Each tick starts exactly one run (``tether/scheduled.timer``, ``data.cron``, ``ts`` = the tick),
with or without a worker, across engine restarts, re-registrations and (PostgreSQL) two
gateways; missed ticks after downtime are one catch-up run. An event whose ``ts`` lies in the
future starts its runs then, survives a restart and can be cancelled before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.registry import Registry
from gateway.runs import RunStatus
from gateway.store.base import CancelRequest, NewEvent, RunRecord, RunScan, Store
from protocol import messages as m
from protocol.manifest import AppManifest, FunctionConfig, TriggerCron, TriggerEvent
from tests.helpers.waiting import eventually
from tests.integration.test_engine_steps import BOUND, FakeWorker, World

#: FakeClock's start, 2023-11-14T22:13:20Z: "* * * * *" ticks at ...40, ...100, ...
START = 1_700_000_000.0
FIRST_MINUTE = 1_700_000_040.0

EVERY_MINUTE = FunctionConfig(id="tick", triggers=[TriggerCron("* * * * *")])
BOTH = FunctionConfig(id="both", triggers=[TriggerCron("*/5 * * * *"), TriggerEvent("go.both")])
LATER = FunctionConfig(id="later", triggers=[TriggerEvent("go.later")])


def app(*functions: FunctionConfig, version: str = "1") -> AppManifest:
    return AppManifest(id="t", version=version, functions=list(functions))


class Gateway:
    """An engine over ``store`` that a test can stop and start again (a gateway restart)."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.store, self.clock = store, clock
        self.world: World
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> World:
        engine = Engine(self.store, Registry(), self.clock, retry_base=1.0)
        await engine.load()
        self.task = asyncio.create_task(engine.run())
        self.world = World(engine, self.clock, engine.registry)
        return self.world

    async def stop(self) -> None:
        await self.world.engine.close()
        assert self.task is not None
        await asyncio.wait_for(self.task, BOUND)

    async def restart(self) -> World:
        await self.stop()
        return await self.start()


@pytest.fixture
async def gateway(store) -> AsyncIterator[Gateway]:
    gw = Gateway(store, FakeClock(START))
    world = await gw.start()
    await world.engine.register_app(app(EVERY_MINUTE, BOTH, LATER))
    yield gw
    await gw.stop()


async def runs(store: Store, function_id: str) -> list[RunRecord]:
    page = await store.list_runs(function_id=function_id, status=None, limit=100, cursor=None)
    return sorted(page.runs, key=lambda r: r.id)


def tick_ms(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


async def advance(world: World, seconds: float) -> None:
    """Move time, then wait until the engine has handled everything due by then (a schedule
    is always ahead, so the engine knows of a future wake-up once it has)."""
    world.clock.advance(seconds)
    engine, now = world.engine, world.clock.now()

    async def settled() -> bool:
        await world.settle()
        return (not engine._find_wakeup and not engine._ticks_due
                and not engine._wake.is_set()
                and engine._next_wakeup is not None and engine._next_wakeup > now)

    await eventually(settled, what="the engine handles what is due")


async def test_each_tick_starts_exactly_one_run(gateway):
    world = gateway.world
    worker = world.worker("t/tick")
    await advance(world, FIRST_MINUTE - START - 0.001)
    assert await runs(gateway.store, "t/tick") == []  # not yet due

    await advance(world, 0.001)
    lease = await worker.lease()
    event = orjson.loads(lease.events[0])
    assert event["name"] == "tether/scheduled.timer"
    assert event["data"] == {"cron": "* * * * *"}
    assert event["ts"] == int(FIRST_MINUTE * 1000)
    assert event["id"] == f"cron-t/tick-{int(FIRST_MINUTE * 1000)}"

    for _ in range(3):
        await advance(world, 60)
    fired = [tick_ms(r.event_ids[0]) for r in await runs(gateway.store, "t/tick")]
    assert fired == [int((FIRST_MINUTE + 60 * i) * 1000) for i in range(4)]


async def test_ticks_without_a_worker_queue_runs_that_a_later_worker_takes(gateway):
    world = gateway.world
    await advance(world, FIRST_MINUTE - START)
    await advance(world, 60)
    queued = await runs(gateway.store, "t/tick")
    assert [r.status for r in queued] == ["Queued", "Queued"]
    worker = world.worker("t/tick")
    leased = {(await worker.lease()).run_id, (await worker.lease()).run_id}
    assert leased == {r.id for r in queued}


async def test_a_restart_neither_repeats_nor_loses_a_tick(gateway):
    world = gateway.world
    await advance(world, FIRST_MINUTE - START)
    assert len(await runs(gateway.store, "t/tick")) == 1
    world = await gateway.restart()  # same instant: the tick is in the store as done
    await world.engine.register_app(app(EVERY_MINUTE, BOTH, LATER))  # the worker reconnects
    await world.settle()
    assert len(await runs(gateway.store, "t/tick")) == 1
    await advance(world, 60)
    fired = [tick_ms(r.event_ids[0]) for r in await runs(gateway.store, "t/tick")]
    assert fired == [int(FIRST_MINUTE * 1000), int((FIRST_MINUTE + 60) * 1000)]


async def test_missed_ticks_after_downtime_start_one_catch_up_run(gateway):
    await advance(gateway.world, FIRST_MINUTE - START)
    await gateway.stop()
    gateway.clock.advance(3600 + 30)  # down for an hour: 60 ticks missed
    world = await gateway.start()
    await world.settle()
    fired = [tick_ms(r.event_ids[0]) for r in await runs(gateway.store, "t/tick")]
    assert fired == [int(FIRST_MINUTE * 1000), int((FIRST_MINUTE + 3600) * 1000)]
    missed = world.engine.metrics.registry.get_sample_value(
        "tether_cron_ticks_missed_total", {"function": "t/tick"})
    assert missed == 59  # the ticks between the last one run and the catch-up
    await advance(world, 30)  # and the schedule goes on from there
    assert len(await runs(gateway.store, "t/tick")) == 3


async def test_a_function_with_cron_and_event_triggers_runs_for_both(gateway):
    world = gateway.world
    await world.send("go.both")
    await advance(world, 100)  # 22:15:00 is a */5 tick
    names = sorted([orjson.loads(await _trigger(gateway.store, r.id))["name"]
                    for r in await runs(gateway.store, "t/both")])
    assert names == ["go.both", "tether/scheduled.timer"]


async def _trigger(store: Store, run_id: str) -> bytes:
    run = await store.get_run(run_id)
    assert run is not None
    scan = RunScan(run.function_id, tuple(RunStatus), "", "Z" * 27, 100)
    for rid, payload in await store.scan_runs(scan):
        if rid == run_id and payload is not None:
            return payload
    raise AssertionError(f"no trigger for {run_id}")


async def test_re_registering_keeps_the_schedule_and_a_new_version_without_it_stops_it(
        gateway):
    world = gateway.world
    before = await gateway.store.schedules()
    await world.engine.register_app(app(EVERY_MINUTE, BOTH, LATER, version="2"))
    assert await gateway.store.schedules() == before  # unchanged: same next ticks
    await advance(world, FIRST_MINUTE - START)
    assert len(await runs(gateway.store, "t/tick")) == 1

    await world.engine.register_app(app(FunctionConfig(id="tick"), BOTH, LATER, version="3"))
    assert ("t/tick", "* * * * *", "UTC") not in await gateway.store.schedules()
    await advance(world, 600)
    assert len(await runs(gateway.store, "t/tick")) == 1  # no more ticks


async def test_a_new_version_without_the_cron_trigger_stops_it(gateway):
    world = gateway.world
    await world.engine.register_app(app(BOTH, LATER, version="2"))  # "tick" is gone
    await advance(world, 600)
    assert await runs(gateway.store, "t/tick") == []
    assert set(await gateway.store.schedules()) == {("t/both", "*/5 * * * *", "UTC")}


async def test_two_gateways_on_postgres_start_one_run_per_tick(gateway_factory, db_url):
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    clock = FakeClock(START)
    first, second = await gateway_factory(clock=clock), await gateway_factory(clock=clock)
    await first.engine.register_app(app(EVERY_MINUTE))
    await eventually(lambda: _known(second, "t/tick"), what="the second gateway loads t/tick")
    for minute in range(5):
        clock.advance(FIRST_MINUTE - START if minute == 0 else 60)
        await eventually(lambda n=minute + 1: _count(first.store, n),
                         what=f"{minute + 1} ticks fired")
    for gw in (first, second):
        await asyncio.wait_for(gw.engine._idle.wait(), BOUND)
    fired = [tick_ms(r.event_ids[0]) for r in await runs(first.store, "t/tick")]
    assert fired == [int((FIRST_MINUTE + 60 * i) * 1000) for i in range(5)]


async def _known(gw, function_id: str) -> bool:
    return function_id in gw.engine.functions


async def _count(store: Store, n: int) -> bool:
    return len(await runs(store, "t/tick")) >= n


# --- delayed events ------------------------------------------------------------------------

async def send_at(world: World, name: str, ts: float, event_id: str = "late-1") -> None:
    body = {"name": name, "data": {}, "id": event_id, "ts": int(ts * 1000), "user": None}
    await world.engine.ingest([NewEvent(event_id, name, orjson.dumps(body), body)])


async def test_a_delayed_event_starts_its_run_at_ts_and_not_before(gateway):
    world = gateway.world
    worker: FakeWorker = world.worker("t/later")
    await send_at(world, "go.later", START + 60)
    (run,) = await runs(gateway.store, "t/later")
    assert run.status == "Queued" and run.available_at == START + 60
    await advance(world, 59.9)
    assert worker.leases() == []
    await advance(world, 0.1)
    lease = await worker.lease()
    assert lease.run_id == run.id


async def test_a_delayed_run_survives_a_restart(gateway):
    await send_at(gateway.world, "go.later", START + 60)
    await advance(gateway.world, 30)
    world = await gateway.restart()
    worker = world.worker("t/later")
    await advance(world, 29)
    assert worker.leases() == []
    await advance(world, 1)
    await worker.lease()


async def test_a_delayed_run_can_be_cancelled_before_ts(gateway):
    world = gateway.world
    worker = world.worker("t/later")
    await send_at(world, "go.later", START + 60)
    (run,) = await runs(gateway.store, "t/later")
    assert await world.engine.cancel(CancelRequest("changed my mind", run_id=run.id)) == 1
    await advance(world, 120)
    assert worker.leases() == []
    assert (await gateway.store.get_run(run.id)).status == "Cancelled"  # type: ignore[union-attr]


async def test_waiting_says_until_when_and_next_tick_is_listed(gateway_factory):
    clock = FakeClock(START)
    gw = await gateway_factory(clock=clock)
    await gw.engine.register_app(app(EVERY_MINUTE, LATER))
    base = f"http://127.0.0.1:{gw.http_port}"
    async with httpx.AsyncClient(base_url=base) as client:
        functions = (await client.get("/v1/functions")).json()["data"]
        (tick,) = [f for f in functions if f["id"] == "t/tick"]
        assert tick["triggers"] == [{"cron": "* * * * *", "tz": "UTC",
                                     "next_tick": "2023-11-14T22:14:00.000000Z"}]
        answer = await client.post("/e/dev", json={"name": "go.later",
                                                   "ts": int((START + 90) * 1000)})
        assert answer.status_code == 200, answer.text
        (run,) = await runs(gw.store, "t/later")
        shown = (await client.get(f"/v1/runs/{run.id}")).json()
        assert shown["status"] == "Queued"
        assert shown["waiting"]["option"] == "delay"
        assert shown["waiting"]["until"] == "2023-11-14T22:14:50.000000Z"
        assert {k: shown["waiting"][k] for k in ("key", "ahead", "running")} == {
            "key": None, "ahead": None, "running": None}
        assert shown["waiting"]["reason"]
        cancelled = (await client.post(f"/v1/runs/{run.id}/cancel")).json()
        assert cancelled["cancelled"] is True and cancelled["run"]["waiting"] is None

        far = await client.post("/e/dev", json={"name": "go.later",
                                                "ts": int((START + 400 * 86400) * 1000)})
        assert far.status_code == 400
        assert "in the future" in far.json()["error"]


async def test_more_ticks_at_once_than_free_slots_all_run(store):
    """Five functions tick together, the one worker has two slots: every run is leased as
    slots free up (a function with a run left over is not taken for drained)."""
    gw = Gateway(store, FakeClock(START))
    world = await gw.start()
    configs = [FunctionConfig(id=f"c{i}", triggers=[TriggerCron("* * * * *")]) for i in range(5)]
    await world.engine.register_app(app(*configs))
    worker = world.worker(*(f"t/c{i}" for i in range(5)), capacity=2)
    try:
        world.clock.advance(FIRST_MINUTE - START)
        leased = set()
        for _ in range(5):
            lease = await worker.lease()
            leased.add(lease.function_id)
            await world.checkpoint(worker, lease, m.RunCompleted, output=b"null")
        assert leased == {f"t/c{i}" for i in range(5)}
    finally:
        await gw.stop()
