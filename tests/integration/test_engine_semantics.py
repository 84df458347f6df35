"""Run semantics Inngest users rely on, with an injected clock: what a wait or a cancel may
match, what ``timeouts.start`` and ``timeouts.finish`` bound, and the function body's retry
budget. A real Engine over each backend, fake worker sessions, time moved by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from structlog.testing import capture_logs

from gateway.registry import WorkerEntry
from gateway.store.base import NewEvent
from protocol import messages as m
from protocol.manifest import AppManifest, Cancel, Timeouts
from tests.helpers.waiting import eventually
from tests.integration.test_engine_steps import World, fn, running_world


def event(name: str, data: dict | None = None, event_id: str | None = None) -> NewEvent:
    body = {"name": name, "data": data or {}, "id": event_id or f"{name}-{data}", "ts": 0,
            "user": None}
    return NewEvent(body["id"], name, orjson.dumps(body), body)


async def send_together(world: World, *events: NewEvent) -> None:
    """Events received in one request: they are stored in one batch, in this order."""
    await world.engine.ingest(list(events))


async def run_of(world: World, event_id: str) -> str:
    [run] = await world.engine.store.runs_for_event(event_id)
    return run.id


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, [
        # "Cancel the older run when a new update arrives."
        fn("updater", "x/updated",
           cancel_on=[Cancel("x/updated", if_="async.data.id == event.data.id")]),
        fn("stoppable", "x/start", cancel_on=[Cancel("x/stop")]),
        fn("waiter", "go.wait"),
        fn("late", "go.late", timeouts=Timeouts(start=10)),
        fn("bounded", "go.bounded", timeouts=Timeouts(finish=5)),
        fn("both", "go.both", timeouts=Timeouts(start=10, finish=50)),
        fn("flaky", "go.flaky", retries=1),
    ]) as world:
        yield world


# --- cancel_on -----------------------------------------------------------------------------


async def test_cancel_on_the_trigger_name_spares_the_run_it_started(world):
    first = await run_of(world, await world.send("x/updated", {"id": 1}))
    await world.settle()
    assert (await world.run(first))["status"] == "Queued"

    second = await run_of(world, await world.send("x/updated", {"id": 1}))
    await world.settle()
    state = await world.run(first)
    assert state["status"] == "Cancelled" and "cancel_on" in state["error"].message
    assert (await world.run(second))["status"] == "Queued"


async def test_a_cancel_received_before_the_trigger_in_one_batch_spares_the_run(world):
    await send_together(world, event("x/stop", event_id="stop-1"),
                        event("x/start", event_id="start-1"))
    await world.settle()
    assert (await world.run(await run_of(world, "start-1")))["status"] == "Queued"


async def test_a_cancel_received_after_the_trigger_in_one_batch_cancels_it(world):
    await send_together(world, event("x/start", event_id="start-1"),
                        event("x/stop", event_id="stop-1"))
    await world.settle()
    assert (await world.run(await run_of(world, "start-1")))["status"] == "Cancelled"


async def test_two_updates_in_one_batch_cancel_only_the_older_run(world):
    await send_together(world, event("x/updated", {"id": 7}, "u1"),
                        event("x/updated", {"id": 7}, "u2"))
    await world.settle()
    assert (await world.run(await run_of(world, "u1")))["status"] == "Cancelled"
    assert (await world.run(await run_of(world, "u2")))["status"] == "Queued"


async def test_a_replay_is_not_cancelled_by_an_event_stored_with_it(world):
    original = await run_of(world, await world.send("x/start"))
    # One batch: a cancel event arrives as the replay is asked for; the replay is created
    # after the events of its batch are stored, so the cancel is older than it.
    _, replay = await asyncio.gather(world.send("x/stop"), world.engine.replay(original))
    await world.settle()
    assert replay is not None
    assert (await world.run(original))["status"] == "Cancelled"
    assert (await world.run(replay))["status"] == "Queued"
    await world.send("x/stop")
    await world.settle()
    assert (await world.run(replay))["status"] == "Cancelled"


# --- wait_for_event --------------------------------------------------------------------------


async def test_a_wait_on_the_trigger_name_does_not_match_the_trigger(world):
    worker = world.worker("t/waiter")
    trigger = await world.send("go.wait", {"n": 1})
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="next", event="go.wait",
                           timeout=60.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    await world.settle()
    assert worker.leases() == []
    assert (await world.run(lease.run_id))["status"] == "Waiting"

    later = await world.send("go.wait", {"n": 2})  # also starts a run of its own
    leases = [await worker.lease(), await worker.lease()]
    [again] = [x for x in leases if x.run_id == lease.run_id]
    got = orjson.loads(again.memos["next"].output)
    assert got["id"] == later and got["id"] != trigger


async def test_a_wait_ignores_events_stored_before_its_trigger_in_one_batch(world):
    worker = world.worker("t/waiter")
    await send_together(world, event("answer", {"n": 0}, "a0"), event("go.wait", {}, "w1"))
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="reply", event="answer",
                           timeout=60.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    await world.settle()
    assert worker.leases() == []
    assert (await world.run(lease.run_id))["status"] == "Waiting"


async def test_a_wait_matches_an_event_stored_after_its_trigger_in_one_batch(world):
    worker = world.worker("t/waiter")
    await send_together(world, event("go.wait", {}, "w1"), event("answer", {"n": 1}, "a1"))
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="reply", event="answer",
                           timeout=60.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    again = await worker.lease()
    assert orjson.loads(again.memos["reply"].output)["id"] == "a1"


# --- timeouts --------------------------------------------------------------------------------


async def test_timeouts_start_alone_spares_a_run_that_started_in_time(world):
    worker = world.worker("t/late")
    await world.send("go.late")
    lease = await worker.lease()
    world.clock.advance(10)
    await world.settle()
    world.clock.advance(1000)
    await world.settle()
    assert (await world.run(lease.run_id))["status"] == "Running"
    assert not [msg for msg in worker.inbox if isinstance(msg, m.LeaseRevoked)]
    await world.checkpoint(worker, lease, m.RunCompleted, output=b"1")
    assert (await world.run(lease.run_id))["status"] == "Completed"


async def test_timeouts_start_cancels_a_run_not_started_in_time(world):
    run = await run_of(world, await world.send("go.late"))
    world.clock.advance(9.9)
    await world.settle()
    assert (await world.run(run))["status"] == "Queued"
    world.clock.advance(0.1)
    await world.settle()
    state = await world.run(run)
    assert state["status"] == "Cancelled" and state["error"].name == "Timeout"
    assert state["error"].message == ("cancelled: not started within timeouts.start "
                                      "(10 s after it was queued)")
    # A worker arriving later is not given the cancelled run.
    worker = world.worker("t/late")
    await world.settle()
    assert worker.leases() == []


async def test_timeouts_finish_cancels_a_run_running_too_long(world):
    worker = world.worker("t/bounded")
    await world.send("go.bounded")
    lease = await worker.lease()
    world.clock.advance(4.9)
    await world.settle()
    assert (await world.run(lease.run_id))["status"] == "Running"
    world.clock.advance(0.1)
    revoked = await worker.next(m.LeaseRevoked)
    assert revoked.run_id == lease.run_id
    state = await world.run(lease.run_id)
    assert state["status"] == "Cancelled" and state["error"].name == "Timeout"
    assert state["error"].message == ("cancelled: not finished within timeouts.finish "
                                      "(5 s after it started)")


async def test_timeouts_start_and_finish_each_bound_their_own_span(world):
    worker = world.worker("t/both")
    await world.send("go.both")
    lease = await worker.lease()
    world.clock.advance(49.9)  # past start (it started in time), not yet past finish
    await world.settle()
    assert (await world.run(lease.run_id))["status"] == "Running"
    world.clock.advance(0.1)
    await worker.next(m.LeaseRevoked)
    assert "timeouts.finish" in (await world.run(lease.run_id))["error"].message


# --- the function body's retry budget --------------------------------------------------------


async def _fail_body(world: World, worker, lease: m.LeaseGranted) -> m.LeaseGranted:
    """The function body raised (not final): the run is leased again after the backoff."""
    await world.checkpoint(worker, lease, m.RunFailed, attempt=lease.attempt, final=False,
                           error=m.ErrorInfo(name="ValueError", message="flaky"),
                           retry_after=1.0)
    world.clock.advance(1)
    return await worker.lease()


async def test_a_completed_step_resets_the_function_bodys_attempt(world):
    worker = world.worker("t/flaky")
    await world.send("go.flaky")
    lease = await worker.lease()
    assert lease.attempt == 0
    lease = await _fail_body(world, worker, lease)
    assert lease.attempt == 1

    # The retry gets further: a step completes, then the worker's socket closes.
    await world.checkpoint(worker, lease, m.StepCompleted, step_id="s1", attempt=0,
                           output=b"1", started_at=0.0, ended_at=0.0)
    world.disconnect(worker)
    other = world.worker("t/flaky")
    again = await other.lease()
    assert again.memos["s1"].output == b"1"
    assert again.attempt == 0  # a fresh budget after the step
    assert (await world.run(again.run_id))["status"] == "Running"


async def test_a_body_failure_after_a_completed_step_counts_from_zero(world):
    worker = world.worker("t/flaky")
    await world.send("go.flaky")
    lease = await _fail_body(world, worker, await worker.lease())
    assert lease.attempt == 1
    # In one batch: a step completes, then the body raises again (the worker, having seen
    # the step complete, reports attempt 0).
    worker.seq += 1
    world.engine.checkpoint(worker.entry, m.StepCompleted(
        seq=worker.seq, run_id=lease.run_id, fence=lease.fence, step_id="s1", attempt=0,
        output=b"1", started_at=0.0, ended_at=0.0))
    worker.seq += 1
    world.engine.checkpoint(worker.entry, m.RunFailed(
        seq=worker.seq, run_id=lease.run_id, fence=lease.fence, attempt=0, final=False,
        error=m.ErrorInfo(name="ValueError", message="flaky"), retry_after=1.0))
    await worker.next(m.CheckpointAck)
    world.clock.advance(1)
    again = await worker.lease()
    assert again.attempt == 1 and "s1" in again.memos


# --- one app id, two programs ----------------------------------------------------------------


def connect(world: World, instance_id: str, app: AppManifest) -> WorkerEntry:
    """A worker of ``app`` as the transport registers it: functions first, then the entry."""
    entry = WorkerEntry(
        session_id=f"session-{instance_id}", instance_id=instance_id, capacity=10,
        functions=frozenset(f"{app.id}/{f.id}" for f in app.functions),
        apps={app.id: app.version}, connected_at=world.clock.now(),
        send=lambda msg: None, close=lambda code, reason: None,
    )
    world.registry.add(entry)
    return entry


async def active(world: World) -> set[str]:
    stored = {f.id for f in await world.engine.store.functions() if f.active}
    known = {f.id for f in world.engine.functions.values() if f.active}
    assert stored == known
    return {f for f in known if f.startswith("shop/")}


async def test_two_programs_with_one_app_id_both_stay_served(world):
    first = AppManifest(id="shop", functions=[fn("a", "ev.a")])
    second = AppManifest(id="shop", functions=[fn("b", "ev.b")])
    await world.engine.register_app(first, instance_id="p1")
    connect(world, "p1", first)
    with capture_logs() as logs:
        await world.engine.register_app(second, instance_id="p2")
    connect(world, "p2", second)
    [conflict] = [e for e in logs if e["event"] == "app_conflict"]
    assert conflict["app_id"] == "shop" and conflict["instance_id"] == "p2"
    assert conflict["other_instances"] == ["p1"]
    assert conflict["only_here"] == ["shop/b"] and conflict["only_there"] == ["shop/a"]
    assert await active(world) == {"shop/a", "shop/b"}
    for name in ("ev.a", "ev.b"):
        assert len(await world.engine.store.runs_for_event(await world.send(name))) == 1

    # The first program is gone for good; the second one reconnects: 'a' is served by no
    # connected worker any more, so it goes (as a function dropped by a deployment does).
    world.registry.remove("session-p1")
    await world.engine.register_app(second, instance_id="p2")
    assert await active(world) == {"shop/b"}


async def test_a_new_version_replaces_the_function_set_without_a_conflict(world):
    old = AppManifest(id="shop", version="1", functions=[fn("a", "ev.a"), fn("b", "ev.b")])
    new = AppManifest(id="shop", version="2", functions=[fn("b", "ev.b")])
    await world.engine.register_app(old, instance_id="old")
    connect(world, "old", old)
    with capture_logs() as logs:
        await world.engine.register_app(new, instance_id="new")
    assert not [e for e in logs if e["event"] == "app_conflict"]
    assert await active(world) == {"shop/b"}


async def test_a_sleep_or_a_wait_that_completes_also_resets_the_attempt(world):
    worker = world.worker("t/flaky")
    await world.send("go.flaky")
    lease = await _fail_body(world, worker, await worker.lease())
    assert lease.attempt == 1
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="nap", duration=10.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    world.clock.advance(10)
    lease = await worker.lease()
    assert "nap" in lease.memos and lease.attempt == 0

    lease = await _fail_body(world, worker, lease)
    assert lease.attempt == 1
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="ok", event="go.ok",
                           timeout=60.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    await world.send("go.ok")
    lease = await worker.lease()
    assert "ok" in lease.memos and lease.attempt == 0


async def test_one_app_id_on_two_gateways_keeps_both_served(gateway_factory, db_url):
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share PostgreSQL only")
    first_gw, second_gw = await gateway_factory(), await gateway_factory()
    first = AppManifest(id="shop", functions=[fn("a", "ev.a")])
    second = AppManifest(id="shop", functions=[fn("b", "ev.b")])
    await first_gw.engine.register_app(first, instance_id="p1")
    connect(World(first_gw.engine, first_gw.clock, first_gw.registry), "p1", first)
    with capture_logs() as logs:
        await second_gw.engine.register_app(second, instance_id="p2")

        async def both_active() -> bool:
            stored = {f.id for f in await second_gw.store.functions() if f.active}
            return all(
                {"shop/a", "shop/b"} <= stored
                and gw.engine.functions["shop/a"].active
                and gw.engine.functions.get("shop/b") is not None
                and gw.engine.functions["shop/b"].active
                for gw in (first_gw, second_gw))

        await eventually(both_active, what="both functions active on both gateways")
    assert [e for e in logs if e["event"] == "app_conflict"
            and e.get("functions") == ["shop/a"] and e.get("instances") == ["p1"]]
