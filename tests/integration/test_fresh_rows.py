"""Fresh rows written once, on every backend: a run leased by the batch that creates it, and a
step at its first attempt.

A run its own batch leases is inserted already leased, not inserted and then updated; a step
the batch takes for new is inserted without an upsert on PostgreSQL. Neither may show: the
rows, the leases and everything that follows (a retry, a takeover, a cancellation) are those
of a run leased by a later batch, and a step that was there after all (a checkpoint sent again
after a reconnect) is neither lost nor written twice, nor does it fail its neighbours.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from structlog.testing import capture_logs

from gateway.store.base import CancelRequest, Lease, Resume, SessionRelease, Store
from protocol.manifest import AppManifest, Cancel, FunctionConfig, TriggerEvent
from tests.integration.test_store import (  # noqa: F401 (functions: the autouse fixture)
    FN,
    OTHER,
    T0,
    batch,
    checkpoint,
    claim,
    cp,
    create_runs,
    event,
    functions,
    run_failed,
    slots,
    status,
    step_done,
    step_failed,
)
from tests.integration.test_store_isolation import poisoned_event
from tests.integration.test_store_rows import rows, snapshot


def same(lease: Lease) -> Lease:
    """The lease without what names its run (its id and its event)."""
    assert len(lease.events) == 1
    return dataclasses.replace(lease, run_id="", events=[])


async def attempts_of(db_url: str, run_id: str) -> list[dict[str, Any]]:
    return await rows(db_url, "step_attempts", "run_id", run_id)


# --- a run created and leased in one batch ---------------------------------------------------


async def test_a_run_leased_by_the_batch_that_creates_it_is_one_leased_later(store, db_url):
    first, later = event(None, FN), event(None, FN)
    created = await store.write(batch(now=T0, events=[first], claims=[slots(capacity=2)]))
    (at_once,) = created.leases
    await store.write(batch(now=T0, events=[later]))
    (leased_later,) = (await claim(store, T0, slots(capacity=2, in_flight=1))).leases
    assert at_once.events == [first.payload] and leased_later.events == [later.payload]
    assert same(at_once) == same(leased_later)
    assert (at_once.fence, at_once.first, at_once.available_at) == (1, True, T0)
    one, two = at_once.run_id, leased_later.run_id
    assert await snapshot(db_url, one) == await snapshot(db_url, two)
    (row,), _ = await snapshot(db_url, one)
    assert (row["status"], row["fence"], row["session_id"], row["started_at"],
            row["available_at"], row["queued_at"]) == ("Running", 1, "s1", T0, None, T0)
    assert [r["position"] for r in await rows(db_url, "run_events", "run_id", one)] == [0]

    # What follows is the same too: a step and a retry, ...
    for run_id in (one, two):
        await checkpoint(store, T0 + 1, cp(step_done(run_id, 1)),
                         cp(run_failed(run_id, 1, final=False), retry_at=T0 + 2))
    assert await snapshot(db_url, one) == await snapshot(db_url, two)
    again = (await claim(store, T0 + 2, slots("s2", capacity=2))).leases
    assert len(again) == 2 and same(again[0]) == same(again[1])
    assert again[0].fence == 2 and set(again[0].memos) == {"a"}
    # ... the lease lost with its worker (a takeover requeues it, fence bumped), ...
    await store.write(batch(now=T0 + 3, releases=[SessionRelease("s2", "gone", lost=True)]))
    assert await snapshot(db_url, one) == await snapshot(db_url, two)
    third = (await claim(store, T0 + 4, slots("s3", capacity=2))).leases
    assert {lease.fence for lease in third} == {4}
    # ... and a cancellation, which revokes the current lease.
    cancelled = await store.write(batch(now=T0 + 5, cancels=[
        CancelRequest("enough", run_ids=[one, two])]))
    assert cancelled.cancelled == [2]
    assert {(r.run_id, r.fence) for r in cancelled.revoked} == {(one, 4), (two, 4)}
    assert await snapshot(db_url, one) == await snapshot(db_url, two)
    assert await status(store, one) == "Cancelled"


async def test_runs_of_a_batch_beyond_its_free_slots_are_queued_as_ever(store, db_url):
    events = [event(None, FN) for _ in range(3)]
    result = await store.write(batch(now=T0, events=events, claims=[slots(capacity=1)]))
    assert len(result.leases) == 1
    assert FN not in result.drained_functions  # two are still ready
    (plain,) = await create_runs(store, 1)
    queued = [r.id for e in events for r in await store.runs_for_event(e.id)
              if r.id != result.leases[0].run_id]
    assert len(queued) == 2
    for run_id in queued:
        assert await snapshot(db_url, run_id) == await snapshot(db_url, plain)
    later = await claim(store, T0, slots(capacity=4, in_flight=1))
    assert {lease.run_id for lease in later.leases} == {*queued, plain}
    assert {lease.fence for lease in later.leases} == {1}


async def test_a_backlog_is_leased_before_the_runs_of_the_batch(store):
    (old,) = await create_runs(store, 1)
    new = event(None, FN)
    result = await store.write(batch(now=T0 + 1, events=[new], claims=[slots(capacity=1)]))
    assert [lease.run_id for lease in result.leases] == [old]
    (queued,) = await store.runs_for_event(new.id)
    assert (queued.status, queued.fence) == ("Queued", 0)
    assert FN not in result.drained_functions
    (lease,) = (await claim(store, T0 + 1, slots(capacity=2, in_flight=1))).leases
    assert (lease.run_id, lease.first) == (queued.id, True)


async def test_a_run_its_batch_cancels_by_cancel_on_is_never_leased(store):
    await store.register_app(AppManifest(id="app", version="2", functions=[
        FunctionConfig(id="fn", triggers=[TriggerEvent("go")], cancel_on=[Cancel(event="stop")]),
        FunctionConfig(id="other", triggers=[TriggerEvent("go")])]), now=T0)
    go, stop = event(None, FN), event(None, name="stop")
    result = await store.write(batch(now=T0, events=[go, stop], claims=[slots(capacity=2)]))
    assert result.leases == []
    (run,) = await store.runs_for_event(go.id)
    assert (run.status, run.fence) == ("Cancelled", 0)


async def test_a_run_leased_at_once_by_one_of_several_workers_is_theirs(store, db_url):
    both = (FN, OTHER)
    events = [event(None, FN, OTHER) for _ in range(2)]
    result = await store.write(batch(now=T0, events=events, claims=[
        slots("s1", capacity=1, functions=both), slots("s2", capacity=2, functions=both)]))
    leases = {lease.run_id: lease for lease in result.leases}
    assert len(leases) == 3 and len({lease.session_id for lease in leases.values()}) == 2
    for run_id, lease in leases.items():
        (row,), _ = await snapshot(db_url, run_id)
        assert (row["status"], row["fence"], row["session_id"], row["function_id"]) == (
            "Running", 1, lease.session_id, lease.function_id)
    # The worker's checkpoints are taken at that fence.
    run_id, lease = next(iter(leases.items()))
    done = await checkpoint(store, T0 + 1, cp(step_done(run_id, 1), session=lease.session_id))
    assert done.refused == {}


# --- steps written as new ---------------------------------------------------------------------


async def leased(store: Store, count: int) -> list[str]:
    run_ids = await create_runs(store, count)
    await claim(store, T0, slots(capacity=count))
    return run_ids


async def test_a_step_sent_again_is_kept_once_and_its_batch_applies(store, db_url):
    run, neighbour = await leased(store, 2)
    first = await checkpoint(store, T0 + 1, cp(step_done(run, 1, "a", b'"first"')),
                             cp(step_failed(run, 1, "b"), retry_at=T0 + 9))
    assert first.refused == {}
    before = await snapshot(db_url, run)

    # Sent again (after a reconnect its acknowledgement was lost), beside new work.
    new = event(None, OTHER)
    with capture_logs() as logs:
        result = await store.write(batch(
            now=T0 + 2, events=[new], claims=[slots(capacity=5, functions=(OTHER,))],
            checkpoints=[cp(step_done(run, 1, "a", b'"again"')),
                         cp(step_done(neighbour, 1, "x", b"1"))]))
    assert (result.refused, result.errors) == ({}, {})
    # PostgreSQL's plain insert of "a" failed: the batch was applied again, whole (not item
    # by item), every step upserted. SQLite upserts them anyway.
    retried = [e for e in logs if e["event"] == "transaction_retried"]
    assert [e["reason"] for e in retried] == ([] if db_url.startswith("sqlite")
                                              else ["StepRecorded"])
    assert not [e for e in logs if e["event"] == "batch_isolating"]
    assert result.runs_created == 1 and len(result.leases) == 1
    assert len(await store.runs_for_event(new.id)) == 1
    _, steps = await snapshot(db_url, run)
    assert steps == before[1]  # "first" kept
    assert [(a["step_id"], a["attempt"]) for a in await attempts_of(db_url, run)] == [("b", 1)]
    stored = await store.get_run(neighbour)
    assert stored is not None and [(s.id, s.output) for s in stored.steps] == [("x", b"1")]

    # Later batches write new steps as before.
    later = await checkpoint(store, T0 + 3, cp(step_done(run, 1, "b", b"2", attempt=1)),
                             cp(step_done(run, 1, "c", b"3")))
    assert later.refused == {}
    stored = await store.get_run(run)
    assert stored is not None
    assert [(s.id, s.status, s.output, s.attempts) for s in stored.steps] == [
        ("a", "Completed", b'"first"', 1), ("b", "Completed", b"2", 2),
        ("c", "Completed", b"3", 1)]


async def test_a_failed_attempt_sent_again_is_kept_once(store, db_url):
    # SQLite's step_attempts triggers once refused it (UNIQUE constraint failed, the run
    # failed): the upsert's conflict policy overrode their OR REPLACE (migration 0020).
    (run,) = await leased(store, 1)
    await checkpoint(store, T0 + 1, cp(step_failed(run, 1, "b"), retry_at=T0 + 9))
    before = await snapshot(db_url, run)
    result = await checkpoint(store, T0 + 2, cp(step_failed(run, 1, "b"), retry_at=T0 + 9))
    assert (result.refused, result.errors) == ({}, {})
    _, steps = await snapshot(db_url, run)
    assert steps == before[1]
    assert [(a["step_id"], a["attempt"]) for a in await attempts_of(db_url, run)] == [("b", 1)]
    assert await status(store, run) == "Running"


async def test_a_step_sent_again_in_a_batch_applied_item_by_item_fails_nothing(store):
    (run,) = await leased(store, 1)
    await checkpoint(store, T0 + 1, cp(step_done(run, 1, "a", b'"first"')))
    result = await store.write(batch(now=T0 + 2, events=[poisoned_event()], event_groups=[1],
                                     checkpoints=[cp(step_done(run, 1, "a", b'"again"'))]))
    assert set(result.errors) == {("events", 0)}
    assert result.refused == {}
    assert await status(store, run) == "Running"
    stored = await store.get_run(run)
    assert stored is not None and [(s.id, s.output) for s in stored.steps] == [("a", b'"first"')]


async def test_a_resumed_lease_s_steps_sent_again_in_its_batch_are_kept_once(store):
    (run,) = await leased(store, 1)
    await checkpoint(store, T0 + 1, cp(step_done(run, 1, "a", b'"first"')))
    result = await store.write(batch(now=T0 + 2, resumes=[Resume("s9", run, 1)], checkpoints=[
        cp(step_done(run, 1, "a", b'"again"'), session="s9"),
        cp(step_done(run, 1, "b", b'"new"'), session="s9")]))
    assert result.resumed == [FN] and result.refused == {}
    stored = await store.get_run(run)
    assert stored is not None
    assert [(s.id, s.output) for s in stored.steps] == [("a", b'"first"'), ("b", b'"new"')]


async def test_a_step_failed_then_done_in_one_batch_is_one_row_of_two_attempts(store, db_url):
    (run,) = await leased(store, 1)
    result = await checkpoint(store, T0 + 1, cp(step_failed(run, 1, "a"), retry_at=T0),
                              cp(step_done(run, 1, "a", b"1", attempt=1)))
    assert result.refused == {}
    stored = await store.get_run(run)
    assert stored is not None
    assert [(s.id, s.status, s.attempts) for s in stored.steps] == [("a", "Completed", 2)]
    assert [(a["attempt"], a["status"]) for a in await attempts_of(db_url, run)] == [
        (1, "Retrying"), (2, "Completed")]
