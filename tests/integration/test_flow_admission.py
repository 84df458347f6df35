"""Admission flow control through the store, on each backend: idempotency, rate limit, singleton.

Runs are created from events in write batches whose ``now`` is the injected time, so the
24 h window and the rate-limit period are crossed without waiting. A skipped run is recorded
``Skipped`` with SPEC §4's ``skipped`` object; state lives in the store (a second store over
the same database decides the same), and two gateways on PostgreSQL never both admit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.app import open_store
from gateway.clock import FakeClock
from gateway.store.base import CancelRequest, NewEvent, RunRecord, Store, WorkerSlots, WriteBatch
from protocol import messages as m
from protocol.ids import new_id
from protocol.manifest import AppManifest, FunctionConfig, RateLimit, Singleton, TriggerEvent
from tests.integration.test_engine_steps import World, running_world

T0 = 1_700_000_000.0
DAY = 24 * 3600.0

IDEM = FunctionConfig(id="idem", triggers=[TriggerEvent("go")], idempotency="event.data.order")
RATE = FunctionConfig(id="rate", triggers=[TriggerEvent("go")],
                      rate_limit=RateLimit(2, "1m", key="event.data.user"))
SKIP = FunctionConfig(id="skip", triggers=[TriggerEvent("go")],
                      singleton=Singleton(key="event.data.user"))
CANCEL = FunctionConfig(id="cancel", triggers=[TriggerEvent("go")],
                        singleton=Singleton(key="event.data.user", mode="cancel"))
ALL = FunctionConfig(id="all", triggers=[TriggerEvent("go")], idempotency="event.data.order",
                     rate_limit=RateLimit(1, "1h"), singleton=Singleton())


@pytest.fixture(autouse=True)
async def functions(store):
    await store.register_app(AppManifest(id="t", version="1", functions=[
        IDEM, RATE, SKIP, CANCEL, ALL]), now=T0 - 1)


def event(fn: str, **data: object) -> NewEvent:
    event_id = new_id(T0)
    body = {"name": "go", "data": {"fn": fn, **data}, "id": event_id, "ts": 0, "user": None}
    return NewEvent(event_id, "go", json.dumps(body).encode(), body)


def match(name: str, body: dict) -> list[str]:
    return [f"t/{body['data']['fn']}"]


async def send(store: Store, now: float, *events: NewEvent, **fields: object) -> list[RunRecord]:
    """Write ``events`` at ``now``; the runs they created, in order."""
    result = await store.write(WriteBatch(now=now, events=list(events), match=match,
                                          **fields))  # type: ignore[arg-type]
    assert not result.errors
    runs: list[RunRecord] = []
    for e in events:
        for run in await store.runs_for_event(e.id):
            full = await store.get_run(run.id)
            assert full is not None
            runs.append(full)
    return runs


def statuses(runs: list[RunRecord]) -> list[str]:
    return [r.status for r in runs]


async def test_idempotency_one_run_per_key_per_24_hours(store):
    first, = await send(store, T0, event("idem", order="A"))
    assert first.status == "Queued" and first.skipped is None

    again, other = await send(store, T0 + 3600, event("idem", order="A"), event("idem", order="B"))
    assert other.status == "Queued"
    assert again.status == "Skipped"
    assert again.skipped is not None
    assert again.skipped["reason"] == "idempotency" and again.skipped["key"] == "A"
    assert "frees up in 23h" in again.skipped["message"]
    assert again.ended_at == T0 + 3600 and again.error is None

    # The refused event did not extend the hold: 24 h after the first run, a new one.
    late, = await send(store, T0 + DAY - 1, event("idem", order="A"))
    assert late.status == "Skipped"
    after, = await send(store, T0 + DAY, event("idem", order="A"))
    assert after.status == "Queued"


async def test_idempotency_state_is_in_the_store(store, db_url):
    await send(store, T0, event("idem", order="A"))
    await store.close()
    restarted = open_store(db_url)  # a restarted gateway decides the same
    await restarted.open()
    try:
        again, = await send(restarted, T0 + 60, event("idem", order="A"))
    finally:
        await restarted.close()
        await store.open()
    assert again.status == "Skipped"


async def test_rate_limit_skips_the_excess_and_the_next_period_admits(store):
    runs = await send(store, T0, *(event("rate", user="u1") for _ in range(3)),
                      event("rate", user="u2"))
    assert statuses(runs) == ["Queued", "Queued", "Skipped", "Queued"]
    skipped = runs[2].skipped
    assert skipped is not None and skipped["reason"] == "rate_limit"
    assert skipped["key"] == "u1"
    assert skipped["message"] == ("rate limit: 2 runs per 1m of key 'u1' reached; the next run "
                                  "may start in 30s")

    # GCRA: one more start each period / limit, a full bucket again after a whole period.
    assert statuses(await send(store, T0 + 30, event("rate", user="u1"),
                               event("rate", user="u1"))) == ["Queued", "Skipped"]
    assert statuses(await send(store, T0 + 90, *(event("rate", user="u1") for _ in range(3)))
                    ) == ["Queued", "Queued", "Skipped"]


async def test_singleton_skip_while_the_key_has_a_live_run(store):
    first, second, other = await send(store, T0, event("skip", user="u1"),
                                      event("skip", user="u1"), event("skip", user="u2"))
    assert statuses([first, second, other]) == ["Queued", "Skipped", "Queued"]
    assert second.skipped is not None
    assert second.skipped["reason"] == "singleton" and second.skipped["key"] == "u1"
    assert first.id in second.skipped["message"]

    await store.write(WriteBatch(now=T0 + 1, cancels=[CancelRequest("done", run_id=first.id)]))
    third, = await send(store, T0 + 2, event("skip", user="u1"))
    assert third.status == "Queued"  # the key's run ended: the key is free


async def test_singleton_cancel_cancels_the_live_run_and_revokes_its_lease(store):
    first, = await send(store, T0, event("cancel", user="u1"),
                        claims=[WorkerSlots("s1", 10, 0, frozenset({"t/cancel"}))])
    leased = await store.get_run(first.id)
    assert leased is not None and leased.status == "Running"

    result = await store.write(WriteBatch(now=T0 + 5, events=[event("cancel", user="u1")],
                                          match=match))
    assert [(r.session_id, r.run_id) for r in result.revoked] == [("s1", first.id)]
    cancelled = await store.get_run(first.id)
    assert cancelled is not None and cancelled.status == "Cancelled"
    assert cancelled.error is not None and "singleton" in cancelled.error.message
    live = await store.list_runs(function_id="t/cancel", status="Queued", limit=10, cursor=None)
    assert len(live.runs) == 1 and live.runs[0].id != first.id


async def test_a_failing_key_expression_skips_the_run_with_the_error(store):
    bad, good, idem = await send(store, T0, event("rate"), event("rate", user="u1"),
                                 event("idem"))
    assert statuses([bad, good, idem]) == ["Skipped", "Queued", "Skipped"]
    assert bad.skipped is not None and bad.skipped["reason"] == "rate_limit"
    assert bad.skipped["key"] is None
    assert "user" in bad.skipped["message"]  # the CEL error names the missing field
    assert idem.skipped is not None and "order" in idem.skipped["message"]


async def test_options_combine_and_a_refused_run_takes_no_state(store):
    # Rate limit 1/h, no key: the second order is refused by the rate limit, so it does not
    # take its idempotency key; an hour later it starts.
    first, second = await send(store, T0, event("all", order="A"), event("all", order="B"))
    assert statuses([first, second]) == ["Queued", "Skipped"]
    assert second.skipped is not None and second.skipped["reason"] == "rate_limit"
    assert second.skipped["key"] is None
    await store.write(WriteBatch(now=T0 + 1, cancels=[CancelRequest("done", run_id=first.id)]))
    third, = await send(store, T0 + 3600, event("all", order="B"))
    assert third.status == "Queued"


async def test_a_replay_is_held_back_by_singleton_only(store):
    first, = await send(store, T0, event("idem", order="A"))
    result = await store.write(WriteBatch(now=T0 + 1, replays=[first.id]))
    replayed = await store.get_run(result.replayed[0] or "")
    assert replayed is not None and replayed.status == "Queued"

    live, = await send(store, T0, event("skip", user="u1"))
    result = await store.write(WriteBatch(now=T0 + 1, replays=[live.id]))
    again = await store.get_run(result.replayed[0] or "")
    assert again is not None and again.status == "Skipped"


async def test_two_gateways_on_postgres_never_both_admit(db_url):
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share a database on PostgreSQL only")
    stores = [open_store(db_url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        for round_ in range(5):
            now = T0 + round_ * 3600  # a fresh hour: the rate limit admits one again
            user = f"u{round_}"
            batches = [[event("skip", user=user), event("rate", user=user),
                        event("rate", user=user), event("idem", order=user),
                        event("all", order=user)]
                       for _ in range(2)]
            await asyncio.gather(*(send(s, now, *b) for s, b in zip(stores, batches,
                                                                   strict=True)))
            for fn in ("skip", "idem", "all"):
                page = await stores[0].list_runs(function_id=f"t/{fn}", status="Queued",
                                                 limit=100, cursor=None)
                assert len([r for r in page.runs if r.queued_at == now]) == 1, fn
            page = await stores[0].list_runs(function_id="t/rate", status="Queued", limit=100,
                                             cursor=None)
            assert len([r for r in page.runs if r.queued_at == now]) == 2  # 4 sent, limit 2
            for fn in ("skip", "all"):  # free the singletons for the next round
                page = await stores[0].list_runs(function_id=f"t/{fn}", status="Queued",
                                                 limit=100, cursor=None)
                await stores[0].write(WriteBatch(now=now + 1, cancels=[
                    CancelRequest("done", run_ids=[r.id for r in page.runs])]))
    finally:
        for s in stores:
            await s.close()


# --- through the engine, with fake workers and the injected clock ------------------------------


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, [
        FunctionConfig(id="solo", triggers=[TriggerEvent("go.solo")],
                       singleton=Singleton(key="event.data.user", mode="cancel")),
        FunctionConfig(id="parent", triggers=[TriggerEvent("go.parent")]),
        FunctionConfig(id="child", rate_limit=RateLimit(1, "1h", key="event.data.user")),
        FunctionConfig(id="hourly", triggers=[TriggerEvent("go.hourly")],
                       rate_limit=RateLimit(1, "1h")),
    ], clock=FakeClock(T0)) as world:
        yield world


async def test_engine_singleton_cancel_revokes_the_lease_and_leases_the_new_run(world):
    worker = world.worker("t/solo")
    await world.send("go.solo", {"user": "u1"})
    first = await worker.lease()
    await world.send("go.solo", {"user": "u1"})
    revoked = await worker.next(m.LeaseRevoked)
    assert (revoked.run_id, revoked.fence) == (first.run_id, first.fence)
    second = await worker.lease()
    assert second.run_id != first.run_id
    assert (await world.run(first.run_id))["status"] == "Cancelled"
    # The old lease's checkpoints are refused: the cancelled run stays cancelled.
    ack = await world.checkpoint(worker, first, m.RunCompleted, output=b"1")
    assert isinstance(ack, m.CheckpointRefused)


async def test_engine_rate_limit_follows_the_clock_and_counts_skips(world):
    await world.send("go.hourly")
    await world.send("go.hourly")
    world.clock.advance(3600)
    await world.send("go.hourly")
    await world.settle()
    page = await world.engine.store.list_runs(function_id="t/hourly", status=None, limit=10,
                                              cursor=None)
    assert sorted(r.status for r in page.runs) == ["Queued", "Queued", "Skipped"]
    get = world.engine.metrics.registry.get_sample_value
    assert get("tether_flow_skipped_total", {"reason": "rate_limit"}) == 1
    assert get("tether_runs_finished_total", {"function": "t/hourly", "status": "Skipped"}) == 1


async def test_an_invoked_run_that_is_skipped_fails_the_invoking_step(world):
    # The child's rate-limit key is missing from the invoke's data: its run is Skipped.
    parents, _, lease = await world.invoking("t/child", data=b'{"other": 1}')
    again = await parents.lease()  # the step resolved: the parent runs again
    assert again.run_id == lease.run_id
    kid = (await world.run(lease.run_id))["steps"]["kid"]
    assert kid.status == "Failed"
    assert kid.error.message.startswith("the invoked run skipped: rate_limit: key ")


async def count_keys(db_url: str) -> int:
    """Rows of ``flow_keys`` (state the API does not show: read from the database)."""
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute("SELECT count(*) FROM flow_keys").fetchone()[0])
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM flow_keys"))
    finally:
        await conn.close()


async def test_expired_keys_are_swept_and_decide_like_new_ones(store, db_url):
    await send(store, T0, *(event("idem", order=f"o{i}") for i in range(20)))
    await send(store, T0, event("skip", user="u1"))
    assert await count_keys(db_url) == 21
    # Past a day the holds have passed: the function's next admission sweeps them (each
    # function its own: the singleton's lock row waits for its function's next event).
    again, = await send(store, T0 + DAY + 1, event("idem", order="o1"))
    assert again.status == "Queued"
    assert await count_keys(db_url) == 2  # o1's new hold and the singleton's lock
    await send(store, T0 + DAY + 1, event("skip", user="u2"))
    assert await count_keys(db_url) == 2  # u1's lock swept, u2's taken


async def test_a_request_that_fails_alone_takes_no_admission_state(store):
    # The first request's run is admitted, then its poisoned event fails the request: it is
    # undone whole, so the next request's event of the key is the key's first.
    hourly = event("all", order="A")
    poisoned = NewEvent("poison-1", "go", b"{not json", None)
    again = event("all", order="A")
    result = await store.write(WriteBatch(now=T0, events=[hourly, poisoned, again],
                                          event_groups=[2, 1], match=match))
    assert set(result.errors) == {("events", 0)}
    assert await store.runs_for_event(hourly.id) == []
    run, = await store.runs_for_event(again.id)
    assert run.status == "Queued"
