"""Debounce and batch through a real Engine over each backend, time injected.

A window is a ``Queued`` run whose start (``available_at``) is its deadline and whose events
grow as the key's events arrive: these tests check who starts, when and with which events
(``LeaseGranted.events``, what becomes ``ctx.events``), that the window survives a restart,
that keys are independent, that a failing key fails a run with the reason, that the API says
what holds the run, and that two gateways on PostgreSQL place one key's events without
losing or repeating one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from gateway.clock import FakeClock
from gateway.store.base import NewEvent
from protocol import messages as m
from protocol.manifest import (
    MAX_RUN_EVENTS,
    AppManifest,
    Batch,
    Cancel,
    Debounce,
    FunctionConfig,
    Timeouts,
    TriggerEvent,
)
from tests.helpers.waiting import eventually
from tests.integration.test_cron import Gateway
from tests.integration.test_engine_steps import FakeWorker
from tests.integration.test_flow_throttle import advance, runs

START = 1_700_000_000.0

QUIET = FunctionConfig(id="quiet", triggers=[TriggerEvent("go.quiet")],
                       debounce=Debounce(10.0, key="event.data.user", timeout=25.0))
COLLECT = FunctionConfig(id="collect", triggers=[TriggerEvent("go.collect")],
                         debounce=Debounce(10.0, collect=True))
CANCELLABLE = FunctionConfig(id="cancellable", triggers=[TriggerEvent("go.cancellable")],
                             debounce=Debounce(10.0),
                             cancel_on=[Cancel("stop.cancellable")])
TIMED = FunctionConfig(id="timed", triggers=[TriggerEvent("go.timed")],
                       debounce=Debounce(10.0), timeouts=Timeouts(start=5.0))
GROUPED = FunctionConfig(id="grouped", triggers=[TriggerEvent("go.grouped")],
                         batch=Batch(3, 5.0, key="event.data.tenant",
                                     if_="event.data.small == true"))


def app(*functions: FunctionConfig) -> AppManifest:
    return AppManifest(id="t", version="1", functions=list(functions))


@pytest.fixture
async def gateway(store) -> AsyncIterator[Gateway]:
    gw = Gateway(store, FakeClock(START))
    world = await gw.start()
    await world.engine.register_app(app(QUIET, COLLECT, CANCELLABLE, TIMED, GROUPED))
    yield gw
    await gw.stop()


def events_of(lease: m.LeaseGranted) -> list[str]:
    return [orjson.loads(e)["id"] for e in lease.events]


def event(name: str, event_id: str, data: dict | None = None) -> NewEvent:
    body = {"name": name, "data": data or {}, "id": event_id, "ts": 0, "user": None}
    return NewEvent(event_id, name, orjson.dumps(body), body)


async def lease_at(world, worker: FakeWorker, seconds: float) -> m.LeaseGranted:
    """Move time to START + ``seconds`` (no lease before), then take the lease due then."""
    await advance(world, seconds - 0.5 - (world.clock.now() - START))
    assert worker.leases() == [], "a run started early"
    await advance(world, 0.5)
    return await worker.lease()


# --- debounce ------------------------------------------------------------------------------

async def test_debounce_starts_after_the_quiet_period_with_the_last_event(gateway):
    world = gateway.world
    worker = world.worker("t/quiet")
    for at, user in ((0, "ann"), (3, "ann"), (4, "bob"), (6, "ann")):
        await advance(world, at - (world.clock.now() - START))
        await world.send("go.quiet", {"user": user}, event_id=f"{user}@{at}")
    ann, bob = await runs(gateway.store, "t/quiet")
    assert (ann.event_ids, ann.available_at) == (["ann@6"], START + 16)
    assert (bob.event_ids, bob.available_at) == (["bob@4"], START + 14)
    assert events_of(await lease_at(world, worker, 14)) == ["bob@4"]
    lease = await lease_at(world, worker, 16)
    assert lease.run_id == ann.id and events_of(lease) == ["ann@6"]
    # The superseded events started nothing: one run per key.
    assert len(await runs(gateway.store, "t/quiet")) == 2


async def test_debounce_reset_at_the_timeout_then_a_new_window(gateway):
    world = gateway.world
    for at in (0, 8, 16, 24):  # each pushes the start back, but the timeout caps it at 25 s
        await advance(world, at - (world.clock.now() - START))
        await world.send("go.quiet", {"user": "ann"}, event_id=f"e@{at}")
    (run,) = await runs(gateway.store, "t/quiet")
    assert run.available_at == START + 25 and run.event_ids == ["e@24"]
    await advance(world, 1)  # due (no worker yet): the next event opens the next window
    await world.send("go.quiet", {"user": "ann"}, event_id="e@25")
    first, second = await runs(gateway.store, "t/quiet")
    assert (first.id, first.event_ids) == (run.id, ["e@24"])
    assert (second.event_ids, second.available_at) == (["e@25"], START + 35)
    worker = world.worker("t/quiet")
    assert events_of(await worker.lease()) == ["e@24"]


async def test_debounce_collect_gives_every_event_and_a_full_window_starts_at_once(gateway):
    world = gateway.world
    worker = world.worker("t/collect")
    await world.send("go.collect", event_id="a")
    await advance(world, 2)
    await world.send("go.collect", event_id="b")
    lease = await lease_at(world, worker, 12)
    assert events_of(lease) == ["a", "b"]
    # One request that overfills a window: the first MAX_RUN_EVENTS start at once, in order.
    burst = [event("go.collect", f"x{i}") for i in range(MAX_RUN_EVENTS + 1)]
    await world.engine.ingest(burst)
    full = await worker.lease()
    assert events_of(full) == [f"x{i}" for i in range(MAX_RUN_EVENTS)]
    assert events_of(await lease_at(world, worker, 22)) == [f"x{MAX_RUN_EVENTS}"]


async def test_cancel_on_cancels_a_pending_debounce_and_the_next_event_opens_a_window(gateway):
    world = gateway.world
    await world.send("go.cancellable", event_id="one")
    await world.send("go.cancellable", event_id="two")  # the run's event is now this one
    await world.send("stop.cancellable")
    await world.settle()
    (cancelled,) = await runs(gateway.store, "t/cancellable")
    assert cancelled.status == "Cancelled" and cancelled.event_ids == ["two"]
    await world.send("go.cancellable", event_id="three")
    worker = world.worker("t/cancellable")
    lease = await lease_at(world, worker, 10)
    assert lease.run_id != cancelled.id and events_of(lease) == ["three"]


async def test_timeouts_start_counts_from_the_window_deadline(gateway):
    world = gateway.world
    await world.send("go.timed")
    await advance(world, 8)
    await world.send("go.timed")  # the window now ends at 18 s: the run may wait until 23 s
    (run,) = await runs(gateway.store, "t/timed")
    await advance(world, 14.9)  # 22.9 s
    assert (await world.run(run.id))["status"] == "Queued"
    await advance(world, 0.2)
    cancelled = await world.run(run.id)
    assert cancelled["status"] == "Cancelled" and "timeouts.start" in cancelled["error"].message


# --- batch ---------------------------------------------------------------------------------

async def test_batch_starts_full_batches_at_once_in_arrival_order(gateway):
    world = gateway.world
    worker = world.worker("t/grouped")
    await world.engine.ingest([event("go.grouped", f"a{i}", {"tenant": "a", "small": True})
                               for i in range(7)])
    first, second = await worker.lease(), await worker.lease()
    assert sorted([events_of(first), events_of(second)]) == [
        ["a0", "a1", "a2"], ["a3", "a4", "a5"]]
    assert events_of(await lease_at(world, worker, 5)) == ["a6"]


async def test_batch_cut_by_timeout_and_keys_are_independent(gateway):
    world = gateway.world
    worker = world.worker("t/grouped")
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="a1")
    await advance(world, 2)
    await world.send("go.grouped", {"tenant": "b", "small": True}, event_id="b1")
    await advance(world, 2.9)
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="a2")
    assert events_of(await lease_at(world, worker, 5)) == ["a1", "a2"]  # 5 s after a1
    assert events_of(await lease_at(world, worker, 7)) == ["b1"]


async def test_batch_if_false_gets_a_run_of_its_own_at_once(gateway):
    world = gateway.world
    worker = world.worker("t/grouped")
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="in")
    await world.send("go.grouped", {"tenant": "a", "small": False}, event_id="alone")
    with capture_logs() as logs:
        await world.send("go.grouped", {"tenant": "a"}, event_id="alone-too")  # if_ fails
    (failed,) = [e for e in logs if e["event"] == "batch_if_failed"]
    assert failed["event_id"] == "alone-too" and "small" in failed["reason"]
    firsts = sorted([events_of(await worker.lease()) for _ in range(2)])
    assert firsts == [["alone"], ["alone-too"]]
    assert events_of(await lease_at(world, worker, 5)) == ["in"]


async def test_a_replayed_batch_run_gets_all_its_events_at_once(gateway):
    world = gateway.world
    worker = world.worker("t/grouped")
    await world.engine.ingest([event("go.grouped", f"r{i}", {"tenant": "r", "small": True})
                               for i in range(3)])
    original = await worker.lease()
    await world.checkpoint(worker, original, m.RunCompleted, output=b"null")
    replay = await world.engine.replay(original.run_id)
    lease = await worker.lease()  # not a window: it starts now, with the original's events
    assert lease.run_id == replay and events_of(lease) == ["r0", "r1", "r2"]


async def test_a_delayed_event_gets_a_run_of_its_own_at_its_ts(gateway):
    world = gateway.world
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="now")
    body = {"name": "go.grouped", "data": {"tenant": "a", "small": True}, "id": "later",
            "ts": int((START + 60) * 1000), "user": None}
    await world.engine.ingest([NewEvent("later", "go.grouped", orjson.dumps(body), body)])
    by_event = {r.event_ids[0]: r.available_at - START  # type: ignore[operator]
                for r in await runs(gateway.store, "t/grouped")}
    assert by_event == {"now": 5.0, "later": 60.0}


# --- both ----------------------------------------------------------------------------------

async def test_a_window_key_that_fails_fails_the_run_with_the_reason(gateway):
    world = gateway.world
    worker = world.worker("t/quiet", "t/grouped")
    await world.send("go.quiet", {"nobody": 1})
    await world.send("go.grouped", {"tenant": ["a", "list"], "small": True})
    await world.settle()
    for function_id, option in (("t/quiet", "debounce"), ("t/grouped", "batch")):
        (run,) = await runs(gateway.store, function_id)
        assert run.status == "Failed", function_id
        assert run.error is not None and run.error.name == "FlowControlError"
        assert run.error.message.startswith(f"{option} key")
    assert worker.leases() == []
    await world.send("go.quiet", {"user": "x"}, event_id="fine")  # the option still works
    assert events_of(await lease_at(world, worker, 10)) == ["fine"]


async def test_open_windows_survive_a_restart(gateway):
    world = gateway.world
    await world.send("go.quiet", {"user": "ann"}, event_id="q1")
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="g1")
    await advance(world, 1)
    world = await gateway.restart()
    await world.send("go.quiet", {"user": "ann"}, event_id="q2")  # joins, pushes to 11 s
    await world.send("go.grouped", {"tenant": "a", "small": True}, event_id="g2")
    assert len(await runs(gateway.store, "t/quiet")) == 1
    worker = world.worker("t/quiet", "t/grouped")
    assert events_of(await lease_at(world, worker, 5)) == ["g1", "g2"]
    assert events_of(await lease_at(world, worker, 11)) == ["q2"]


async def test_waiting_names_the_window_its_key_and_until(gateway_factory):
    gw = await gateway_factory(clock=FakeClock(START))
    await gw.engine.register_app(app(QUIET, GROUPED))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        for body in ({"name": "go.quiet", "data": {"user": "ann"}},
                     {"name": "go.grouped", "data": {"tenant": "acme", "small": True}}):
            answer = await client.post("/e/dev", json=body)
            assert answer.status_code == 200, answer.text
        (quiet,) = await runs(gw.store, "t/quiet")
        (grouped,) = await runs(gw.store, "t/grouped")
        waiting = (await client.get(f"/v1/runs/{quiet.id}")).json()["waiting"]
        assert (waiting["option"], waiting["key"]) == ("debounce", "ann")
        assert waiting["until"] == "2023-11-14T22:13:30.000000Z"  # START + 10 s
        assert "debounce" in waiting["reason"]
        waiting = (await client.get(f"/v1/runs/{grouped.id}")).json()["waiting"]
        assert (waiting["option"], waiting["key"]) == ("batch", "acme")
        assert waiting["until"] == "2023-11-14T22:13:25.000000Z"  # START + 5 s
        assert "batch" in waiting["reason"]
        metrics = (await client.get("/metrics")).text
        for option in ("debounce", "batch"):  # one window opened each
            assert f'tether_flow_delayed_total{{reason="{option}"}} 1.0' in metrics


async def test_two_gateways_on_postgres_share_a_batch_key(gateway_factory, db_url):
    """Events of one key sent to two gateways at once: full batches, none lost or repeated."""
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    clock = FakeClock(START)
    first, second = await gateway_factory(clock=clock), await gateway_factory(clock=clock)
    await first.engine.register_app(app(GROUPED))

    async def known() -> bool:
        return "t/grouped" in second.engine.functions

    await eventually(known, what="the second gateway loads t/grouped")
    sent = [f"two-{i}" for i in range(12)]
    await asyncio.gather(*((first, second)[i % 2].engine.ingest(
        [event("go.grouped", event_id, {"tenant": "a", "small": True})])
        for i, event_id in enumerate(sent)))
    batches = [r.event_ids for r in await runs(first.store, "t/grouped")]
    assert sorted(e for b in batches for e in b) == sorted(sent)
    assert sorted(len(b) for b in batches) == [3, 3, 3, 3]


async def test_two_gateways_on_postgres_share_a_debounce_key(gateway_factory, db_url):
    """Events of one key sent to two gateways at once: one pending run, one event in it."""
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    clock = FakeClock(START)
    first, second = await gateway_factory(clock=clock), await gateway_factory(clock=clock)
    await first.engine.register_app(app(QUIET, COLLECT))

    async def known() -> bool:
        return {"t/quiet", "t/collect"} <= set(second.engine.functions)

    await eventually(known, what="the second gateway loads the functions")
    await asyncio.gather(*((first, second)[i % 2].engine.ingest(
        [event("go.quiet", f"q{i}", {"user": "ann"}), event("go.collect", f"c{i}")])
        for i in range(10)))
    (quiet,) = await runs(first.store, "t/quiet")
    assert quiet.status == "Queued" and len(quiet.event_ids) == 1
    assert quiet.available_at == START + 10
    (collected,) = await runs(first.store, "t/collect")
    assert sorted(collected.event_ids) == sorted(f"c{i}" for i in range(10))
