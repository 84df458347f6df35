"""Store conformance: the invariants of :mod:`gateway.store.base`, for every backend.

Only the ``Store`` interface and its records are used here, so the same tests run against each
backend the ``store`` fixture is parametrized over (SQLite now, PostgreSQL later).
"""

from __future__ import annotations

import itertools
import json

import pytest

from gateway.store.base import (
    DEDUP_WINDOW,
    MAX_LEASE_LOSSES,
    CheckpointWrite,
    Lease,
    LeaseReturn,
    Limits,
    NewEvent,
    RunEnded,
    SessionRelease,
    Store,
    WorkerSlots,
    WriteBatch,
    WriteResult,
)
from protocol.ids import new_id
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from protocol.messages import (
    Checkpoint,
    ErrorInfo,
    LeaseReleased,
    RunCompleted,
    RunFailed,
    RunSuspended,
    StepCompleted,
    StepFailed,
    StepMemo,
)

T0 = 1_700_000_000.0
FN = "app/fn"
OTHER = "app/other"

_seq = itertools.count(1)


# --- building blocks -------------------------------------------------------------------------


def event(event_id: str | None = None, *functions: str, name: str = "go") -> NewEvent:
    """An event that starts a run of each of ``functions`` (see :func:`match`)."""
    event_id = event_id or new_id(T0)
    body = {"name": name, "data": {"start": list(functions)}, "id": event_id, "ts": 0,
            "user": None}
    return NewEvent(event_id, name, json.dumps(body).encode(), body)


def match(name: str, body: dict) -> list[str]:
    """The trigger matcher the tests give the store: the event says what it starts."""
    return list(body.get("data", {}).get("start", []))


def batch(**fields) -> WriteBatch:
    return WriteBatch(match=match, **fields)


@pytest.fixture(autouse=True)
async def functions(store):
    """The functions these tests start runs of (the store only starts registered ones)."""
    await store.register_app(manifest("app", "fn", "other"), now=T0 - 1)


def slots(session: str = "s1", capacity: int = 10, in_flight: int = 0,
          functions: tuple[str, ...] = (FN,)) -> WorkerSlots:
    return WorkerSlots(session, capacity, in_flight, frozenset(functions))


def step_done(run_id: str, fence: int, step: str = "a", output: bytes = b'"ok"',
              attempt: int = 0) -> StepCompleted:
    return StepCompleted(seq=next(_seq), run_id=run_id, fence=fence, step_id=step,
                         attempt=attempt, output=output, started_at=T0, ended_at=T0 + 0.5)


def step_failed(run_id: str, fence: int, step: str = "a", *, final: bool = False,
                attempt: int = 0) -> StepFailed:
    return StepFailed(seq=next(_seq), run_id=run_id, fence=fence, step_id=step,
                      attempt=attempt, error=ErrorInfo(name="Boom", message=f"{step} broke"),
                      final=final, started_at=T0, ended_at=T0 + 0.5)


def suspended(run_id: str, fence: int) -> RunSuspended:
    return RunSuspended(seq=next(_seq), run_id=run_id, fence=fence)


def run_completed(run_id: str, fence: int, output: bytes = b'{"n": 1}') -> RunCompleted:
    return RunCompleted(seq=next(_seq), run_id=run_id, fence=fence, output=output)


def run_failed(run_id: str, fence: int, *, final: bool, attempt: int = 0) -> RunFailed:
    return RunFailed(seq=next(_seq), run_id=run_id, fence=fence, attempt=attempt,
                     error=ErrorInfo(name="ValueError", message="body broke"), final=final)


def cp(message: Checkpoint, retry_at: float | None = None, session: str = "s1") -> CheckpointWrite:
    return CheckpointWrite(session, message, retry_at)


async def create_runs(store: Store, count: int = 1, function_id: str = FN,
                      now: float = T0) -> list[str]:
    events = [event(None, function_id) for _ in range(count)]
    result = await store.write(batch(now=now, events=events))
    assert result.runs_created == count
    return [(await store.runs_for_event(e.id))[0].id for e in events]


async def claim(store: Store, now: float, *workers: WorkerSlots,
                functions: tuple[str, ...] = (FN, OTHER), find_wakeup: bool = False
                ) -> WriteResult:
    result: WriteResult = await store.write(
        batch(now=now, claims=list(workers) or [slots()], claim_functions=set(functions),
              find_wakeup=find_wakeup)
    )
    return result


async def lease_one(store: Store, run_id: str, now: float = T0, session: str = "s1") -> Lease:
    """Lease ``run_id`` (the only ready run of its function) and return the lease."""
    result = await claim(store, now, slots(session, capacity=1))
    (lease,) = result.leases
    assert lease.run_id == run_id
    return lease


async def checkpoint(store: Store, now: float, *writes: CheckpointWrite) -> WriteResult:
    result: WriteResult = await store.write(batch(now=now, checkpoints=list(writes)))
    return result


async def status(store: Store, run_id: str) -> str:
    run = await store.get_run(run_id)
    assert run is not None
    return str(run.status)


# --- events and runs -------------------------------------------------------------------------


async def test_events_and_their_runs_are_created_in_one_write(store):
    first = event("ev-1", FN, OTHER)
    second = event("ev-2", FN)
    result = await store.write(batch(now=T0, events=[first, second]))

    assert result.duplicate_events == set()
    assert result.runs_created == 3
    runs = await store.runs_for_event("ev-1")
    assert sorted(r.function_id for r in runs) == [FN, OTHER]
    for run in runs:
        assert run.status == "Queued"
        assert run.event_ids == ["ev-1"]
        assert run.fence == 0
        assert run.attempt == 0
        assert run.queued_at == T0
        assert run.available_at == T0
        assert run.started_at is None and run.ended_at is None
        assert run.output is None and run.error is None
    (only,) = await store.runs_for_event("ev-2")
    assert only.function_id == FN and only.event_ids == ["ev-2"]


async def test_runs_created_and_claimed_in_the_same_write_are_leased(store):
    ev = event("ev-1", FN)
    result = await store.write(batch(now=T0, events=[ev], claims=[slots()]))

    (lease,) = result.leases
    assert [lease.run_id] == [r.id for r in await store.runs_for_event("ev-1")]
    assert lease.fence == 1
    assert lease.session_id == "s1"
    assert lease.function_id == FN
    assert lease.events == [ev.payload]
    assert lease.memos == {} and lease.attempts == {} and lease.deferred == []
    assert lease.attempt == 0


async def test_duplicate_event_within_the_window_stores_nothing_and_starts_nothing(store):
    original = event("ev-1", FN)
    await store.write(batch(now=T0, events=[original]))
    before = [r.id for r in await store.runs_for_event("ev-1")]

    again = event("ev-1", FN, OTHER)
    result = await store.write(batch(now=T0 + DEDUP_WINDOW - 1, events=[again]))

    assert result.duplicate_events == {"ev-1"}
    assert result.runs_created == 0
    assert [r.id for r in await store.runs_for_event("ev-1")] == before
    page = await store.list_runs(function_id=None, status=None, limit=100, cursor=None)
    assert len(page.runs) == 1


async def test_duplicates_inside_one_batch_store_the_first_only(store):
    first, second, other = event("ev-1", FN), event("ev-1", FN), event("ev-2", FN)
    result = await store.write(batch(now=T0, events=[first, second, other]))

    assert result.duplicate_events == {"ev-1"}
    assert result.runs_created == 2
    assert len(await store.runs_for_event("ev-1")) == 1
    assert len(await store.runs_for_event("ev-2")) == 1


async def test_an_event_id_is_new_again_after_the_window(store):
    await store.write(batch(now=T0, events=[event("ev-1", FN)]))
    later = event("ev-1", FN)
    result = await store.write(batch(now=T0 + DEDUP_WINDOW + 1, events=[later]))

    assert result.duplicate_events == set()
    assert result.runs_created == 1
    _old, new = await store.runs_for_event("ev-1")  # ordered by run id: oldest first
    assert new.status == "Queued" and new.queued_at == T0 + DEDUP_WINDOW + 1


# --- claims ----------------------------------------------------------------------------------


async def test_claim_leases_queued_runs_and_bumps_the_fence(store):
    (run_id,) = await create_runs(store)
    result = await claim(store, T0 + 1)

    (lease,) = result.leases
    assert (lease.run_id, lease.fence, lease.session_id) == (run_id, 1, "s1")
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.fence, run.started_at) == ("Running", 1, T0 + 1)

    # A Running run is not leased again, to this worker or another.
    assert (await claim(store, T0 + 2, slots("s2"))).leases == []


async def test_claim_respects_free_slots(store):
    await create_runs(store, 5)

    assert (await claim(store, T0, slots(capacity=3, in_flight=3))).leases == []
    result = await claim(store, T0, slots(capacity=3, in_flight=1))
    assert len(result.leases) == 2
    result = await claim(store, T0, slots("s1", capacity=2, in_flight=1),
                         slots("s2", capacity=10, in_flight=9))
    assert sorted(lease.session_id for lease in result.leases) == ["s1", "s2"]
    page = await store.list_runs(function_id=FN, status="Queued", limit=100, cursor=None)
    assert len(page.runs) == 1


async def test_claim_only_gives_a_worker_the_functions_it_serves(store):
    (mine,) = await create_runs(store, 1, FN)
    (theirs,) = await create_runs(store, 1, OTHER)

    result = await claim(store, T0, slots("s1", functions=(OTHER,)))
    assert [(lease.run_id, lease.function_id) for lease in result.leases] == [(theirs, OTHER)]
    assert await status(store, mine) == "Queued"


async def test_claim_prefers_the_least_loaded_worker(store):
    (run_id,) = await create_runs(store)
    result = await claim(store, T0, slots("busy", capacity=4, in_flight=2),
                         slots("idle", capacity=4, in_flight=0))
    assert [(lease.run_id, lease.session_id) for lease in result.leases] == [(run_id, "idle")]


async def test_claim_takes_the_oldest_ready_run_first(store):
    (older,) = await create_runs(store, now=T0)
    await create_runs(store, now=T0 + 1)
    result = await claim(store, T0 + 2, slots(capacity=1))
    assert [lease.run_id for lease in result.leases] == [older]


async def test_claim_skips_runs_not_yet_available_and_ended_runs(store):
    waiting, done, failed = await create_runs(store, 3)
    leases = (await claim(store, T0)).leases
    fences = {lease.run_id: lease.fence for lease in leases}
    await checkpoint(
        store, T0,
        cp(run_failed(waiting, fences[waiting], final=False), retry_at=T0 + 60),
        cp(run_completed(done, fences[done])),
        cp(run_failed(failed, fences[failed], final=True)),
    )

    assert (await claim(store, T0 + 59)).leases == []
    result = await claim(store, T0 + 60)
    assert [(lease.run_id, lease.fence) for lease in result.leases] == [(waiting, 2)]


# --- checkpoints -----------------------------------------------------------------------------


async def test_checkpoint_with_a_stale_fence_is_refused_and_changes_nothing(store):
    (run_id,) = await create_runs(store)
    first = await lease_one(store, run_id)
    await store.write(batch(now=T0 + 1, releases=[SessionRelease("s1", "gone")]))
    second = await lease_one(store, run_id, T0 + 2, session="s2")
    assert second.fence == first.fence + 2  # revoked, then leased again

    result = await checkpoint(
        store, T0 + 3,
        cp(step_done(run_id, first.fence, "a", b'"stale"')),
        cp(run_completed(run_id, first.fence)),
        cp(step_done(run_id, second.fence, "b", b'"fresh"'), session="s2"),
    )

    assert set(result.refused) == {0, 1}
    assert all(result.refused[i] for i in (0, 1)), "a refusal says why"
    assert result.ended == []
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status == "Running"
    assert run.output is None
    assert [(s.id, s.output) for s in run.steps] == [("b", b'"fresh"')]


async def test_checkpoint_for_an_unknown_run_is_refused(store):
    result = await checkpoint(store, T0, cp(step_done("no-such-run", 1)))
    assert set(result.refused) == {0}


async def test_checkpoint_for_an_ended_run_is_refused_and_changes_nothing(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    await checkpoint(store, T0 + 1, cp(run_completed(run_id, lease.fence, b'"done"')))

    result = await checkpoint(
        store, T0 + 2,
        cp(step_done(run_id, lease.fence, "late")),
        cp(run_failed(run_id, lease.fence, final=True)),
        cp(run_completed(run_id, lease.fence, b'"other"')),
        cp(LeaseReleased(seq=next(_seq), run_id=run_id, fence=lease.fence, reason="drain")),
    )

    assert set(result.refused) == {0, 1, 2, 3}
    assert result.ended == []
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.output, run.error, run.ended_at) == ("Completed", b'"done"', None,
                                                                 T0 + 1)
    assert run.steps == []
    assert (await claim(store, T0 + 3)).leases == []


async def test_the_first_completed_step_result_wins(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    result = await checkpoint(
        store, T0 + 1,
        cp(step_done(run_id, lease.fence, "a", b'"first"')),
        cp(step_done(run_id, lease.fence, "a", b'"second"')),
    )
    assert result.refused == {}
    # A resend after a reconnect, and a late failure, change nothing either.
    await checkpoint(
        store, T0 + 2,
        cp(step_done(run_id, lease.fence, "a", b'"third"')),
        cp(step_failed(run_id, lease.fence, "a", final=True)),
    )

    run = await store.get_run(run_id)
    assert run is not None
    (step,) = run.steps
    assert (step.id, step.status, step.output, step.error, step.attempts) == (
        "a", "Completed", b'"first"', None, 1)

    # And it is what the next worker replays.
    await store.write(batch(now=T0 + 3, releases=[SessionRelease("s1", "gone")]))
    again = await lease_one(store, run_id, T0 + 4, session="s2")
    assert again.memos == {"a": StepMemo(output=b'"first"')}
    await checkpoint(store, T0 + 5,
                     cp(step_done(run_id, again.fence, "a", b'"replayed"'), session="s2"))
    run = await store.get_run(run_id)
    assert run is not None
    assert run.steps[0].output == b'"first"'


async def test_step_retry_parks_the_run_until_the_earliest_retry(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    result = await checkpoint(
        store, T0 + 1,
        cp(step_done(run_id, lease.fence, "ok")),
        cp(step_failed(run_id, lease.fence, "late"), retry_at=T0 + 30),
        cp(step_failed(run_id, lease.fence, "soon"), retry_at=T0 + 10),
        cp(suspended(run_id, lease.fence)),
    )

    assert result.refused == {}
    assert result.next_wakeup == T0 + 10
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 10)
    steps = {s.id: s for s in run.steps}
    for step_id in ("late", "soon"):
        assert steps[step_id].status == "Retrying"
        assert steps[step_id].attempts == 1
        assert steps[step_id].error == ErrorInfo(name="Boom", message=f"{step_id} broke")
    assert steps["ok"].status == "Completed"

    assert (await claim(store, T0 + 9.9)).leases == []
    again = await lease_one(store, run_id, T0 + 10)
    assert again.fence == lease.fence + 1
    assert again.memos == {"ok": StepMemo(output=b'"ok"')}
    assert again.attempts == {"late": 1, "soon": 1}
    assert again.deferred == ["late"]
    assert again.attempt == 0

    await checkpoint(store, T0 + 11,
                     cp(step_done(run_id, again.fence, "soon", b'"2nd"', attempt=1)))
    run = await store.get_run(run_id)
    assert run is not None
    soon = {s.id: s for s in run.steps}["soon"]
    assert (soon.status, soon.attempts, soon.output) == ("Completed", 2, b'"2nd"')


async def test_a_run_suspended_with_nothing_to_retry_is_ready_at_once(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    result = await checkpoint(store, T0 + 5, cp(suspended(run_id, lease.fence)))
    assert FN in result.touched_functions
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 5)


async def test_a_step_that_failed_for_good_is_replayed_as_an_error(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    await checkpoint(store, T0 + 1,
                     cp(step_failed(run_id, lease.fence, "a", final=True, attempt=4)),
                     cp(suspended(run_id, lease.fence)))

    run = await store.get_run(run_id)
    assert run is not None
    (step,) = run.steps
    assert (step.status, step.attempts) == ("Failed", 5)
    again = await lease_one(store, run_id, T0 + 1)
    assert again.memos == {"a": StepMemo(error=ErrorInfo(name="Boom", message="a broke"))}
    assert again.attempts == {} and again.deferred == []


async def test_run_failure_requeues_the_next_attempt_then_fails_for_good(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    result = await checkpoint(store, T0 + 1,
                              cp(run_failed(run_id, lease.fence, final=False), retry_at=T0 + 20))
    assert result.ended == []
    assert result.next_wakeup == T0 + 20
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt, run.available_at) == ("Queued", 1, T0 + 20)

    assert (await claim(store, T0 + 19)).leases == []
    again = await lease_one(store, run_id, T0 + 20)
    assert (again.attempt, again.fence) == (1, lease.fence + 1)

    result = await checkpoint(store, T0 + 21,
                              cp(run_failed(run_id, again.fence, final=True, attempt=1)))
    assert result.ended == [RunEnded(run_id, FN, "Failed")]
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status == "Failed"
    assert run.error is not None
    assert (run.error.name, run.error.message) == ("ValueError", "body broke")
    assert run.ended_at == T0 + 21
    assert (await claim(store, T0 + 100)).leases == []


async def test_run_completed_stores_the_output(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    result = await checkpoint(store, T0 + 3,
                              cp(step_done(run_id, lease.fence, "a")),
                              cp(run_completed(run_id, lease.fence, b'{"saved": 3}')))

    assert result.refused == {}
    assert result.ended == [RunEnded(run_id, FN, "Completed")]
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.output, run.error) == ("Completed", b'{"saved": 3}', None)
    assert (run.started_at, run.ended_at) == (T0, T0 + 3)


# --- releases and returns --------------------------------------------------------------------


async def test_release_requeues_only_that_sessions_runs(store):
    mine, theirs = await create_runs(store, 2)
    result = await claim(store, T0, slots("s1", capacity=1), slots("s2", capacity=1))
    by_session = {lease.session_id: lease for lease in result.leases}
    assert {by_session["s1"].run_id, by_session["s2"].run_id} == {mine, theirs}

    result = await store.write(batch(now=T0 + 7, releases=[SessionRelease("s1", "gone")]))

    released = by_session["s1"].run_id
    kept = by_session["s2"].run_id
    assert FN in result.touched_functions
    run = await store.get_run(released)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 7)
    assert await status(store, kept) == "Running"
    again = await lease_one(store, released, T0 + 8, session="s3")
    assert again.fence == by_session["s1"].fence + 2  # revoked, then leased again


async def lose(store: Store, run_id: str, times: int, now: float, *,
               lost: bool = True) -> WriteResult:
    """Lease the run and lose its worker, ``times`` times; returns the last release result."""
    result = WriteResult()
    for i in range(times):
        session = f"lost-{now}-{i}"
        await lease_one(store, run_id, now, session=session)
        result = await store.write(
            batch(now=now, releases=[SessionRelease(session, f"socket of {session} closed",
                                                         lost=lost)])
        )
    return result


async def test_the_tenth_consecutive_lease_loss_fails_the_run(store):
    (run_id,) = await create_runs(store)
    await lose(store, run_id, MAX_LEASE_LOSSES - 1, T0)
    assert await status(store, run_id) == "Queued"

    session = "the-last-one"
    await lease_one(store, run_id, T0 + 1, session=session)
    result = await store.write(
        batch(now=T0 + 2, releases=[SessionRelease(session, "socket of w-42 closed")])
    )

    assert result.ended == [RunEnded(run_id, FN, "Failed")]
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status == "Failed"
    assert run.ended_at == T0 + 2
    assert run.error is not None
    assert run.error.name == "LeaseLost"
    assert "worker" in run.error.message
    assert "socket of w-42 closed" in run.error.message
    assert str(MAX_LEASE_LOSSES) in run.error.message
    assert (await claim(store, T0 + 3)).leases == []


async def test_releases_that_are_not_losses_do_not_count(store):
    (run_id,) = await create_runs(store)
    await lose(store, run_id, MAX_LEASE_LOSSES - 1, T0)
    result = await lose(store, run_id, 3, T0 + 1, lost=False)
    assert result.ended == []
    assert await status(store, run_id) == "Queued"
    result = await lose(store, run_id, 1, T0 + 2)
    assert result.ended == [RunEnded(run_id, FN, "Failed")]


async def test_progress_resets_the_lease_loss_count(store):
    (run_id,) = await create_runs(store)
    await lose(store, run_id, MAX_LEASE_LOSSES - 1, T0)

    lease = await lease_one(store, run_id, T0 + 1, session="progressing")
    await checkpoint(store, T0 + 1, cp(step_done(run_id, lease.fence, "a"), session="progressing"))
    await store.write(batch(now=T0 + 1, releases=[SessionRelease("progressing", "gone")]))
    # That release was loss 1 of a new count: nine more are needed to fail the run.
    result = await lose(store, run_id, MAX_LEASE_LOSSES - 2, T0 + 2)
    assert result.ended == []
    assert await status(store, run_id) == "Queued"
    result = await lose(store, run_id, 1, T0 + 3)
    assert result.ended == [RunEnded(run_id, FN, "Failed")]


async def test_lease_return_requeues_only_with_the_current_fence(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)

    result = await store.write(
        batch(now=T0 + 1, returns=[LeaseReturn(run_id, lease.fence - 1, "stale")])
    )
    assert await status(store, run_id) == "Running"
    assert FN not in result.touched_functions

    result = await store.write(
        batch(now=T0 + 2, returns=[LeaseReturn(run_id, lease.fence, "worker full")])
    )
    assert FN in result.touched_functions
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 2)

    again = await lease_one(store, run_id, T0 + 3, session="s2")
    # The old lease's return, arriving late, leaves the new lease alone.
    await store.write(batch(now=T0 + 4, returns=[LeaseReturn(run_id, lease.fence, "late")]))
    assert await status(store, run_id) == "Running"
    # A return is not a lost worker: ten of them do not fail the run.
    for i in range(MAX_LEASE_LOSSES):
        current = await lease_one(store, run_id, T0 + 5, session=f"r{i}") if i else again
        await store.write(
            batch(now=T0 + 5, returns=[LeaseReturn(run_id, current.fence, "full")])
        )
    assert await status(store, run_id) == "Queued"


async def test_recover_requeues_running_runs(store):
    if store.shared:
        pytest.skip("a shared store requeues a dead gateway's leases in keepalive instead")
    running, done, queued = await create_runs(store, 3)
    leases = {lease.run_id: lease for lease in (await claim(store, T0, slots(capacity=2))).leases}
    if queued in leases:  # which two were leased is the store's choice
        running, queued = queued, running
    assert set(leases) == {running, done}
    await checkpoint(store, T0, cp(run_completed(done, leases[done].fence)))

    assert await store.recover(now=T0 + 50) == 1

    run = await store.get_run(running)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 50)
    assert await status(store, done) == "Completed"
    assert await status(store, queued) == "Queued"
    # The fence stays (its worker may resume the lease), but once the run is leased again
    # the old lease is dead: its checkpoints are refused.
    result = await claim(store, T0 + 50, slots(capacity=5))
    fences = {lease.run_id: lease.fence for lease in result.leases}
    assert fences[running] == leases[running].fence + 1
    refused = await checkpoint(store, T0 + 51, cp(step_done(running, leases[running].fence)))
    assert set(refused.refused) == {0}


# --- what a batch reports --------------------------------------------------------------------


async def test_next_wakeup_is_the_earliest_future_queued_run(store):
    """A batch reports the due times it set; asked to (its timer fired), the store's earliest."""
    assert (await claim(store, T0, find_wakeup=True)).next_wakeup is None
    a, b = await create_runs(store, 2)
    result = await claim(store, T0)
    assert result.next_wakeup is None
    fences = {lease.run_id: lease.fence for lease in result.leases}
    result = await checkpoint(
        store, T0 + 1,
        cp(run_failed(a, fences[a], final=False), retry_at=T0 + 30),
        cp(run_failed(b, fences[b], final=False), retry_at=T0 + 10),
    )
    assert result.next_wakeup == T0 + 10

    result = await claim(store, T0 + 10, find_wakeup=True)
    assert [lease.run_id for lease in result.leases] == [b]
    assert result.next_wakeup == T0 + 30
    result = await claim(store, T0 + 30, find_wakeup=True)
    assert [lease.run_id for lease in result.leases] == [a]
    assert result.next_wakeup is None


async def test_touched_functions_name_functions_that_gained_ready_runs(store):
    result = await store.write(batch(now=T0, events=[event(None, FN)]))
    assert result.touched_functions == {FN}

    (failing,) = await create_runs(store, 1, OTHER)
    lease = await lease_one_of(store, failing, OTHER)
    result = await checkpoint(store, T0 + 1,
                              cp(run_failed(failing, lease.fence, final=False), retry_at=T0 + 1))
    assert OTHER in result.touched_functions

    lease = await lease_one_of(store, failing, OTHER, T0 + 1)
    result = await checkpoint(
        store, T0 + 2,
        cp(LeaseReleased(seq=next(_seq), run_id=failing, fence=lease.fence, reason="drain")),
    )
    assert OTHER in result.touched_functions
    run = await store.get_run(failing)
    assert run is not None
    assert (run.status, run.available_at) == ("Queued", T0 + 2)


async def lease_one_of(store: Store, run_id: str, function_id: str, now: float = T0) -> Lease:
    result = await claim(store, now, slots(capacity=1, functions=(function_id,)))
    (lease,) = result.leases
    assert lease.run_id == run_id
    return lease


async def test_drained_functions_name_queues_the_claim_emptied(store):
    await create_runs(store, 3, FN)
    await create_runs(store, 1, OTHER)

    result = await claim(store, T0, slots(capacity=2, functions=(FN,)))
    assert len(result.leases) == 2
    assert FN not in result.drained_functions

    result = await claim(store, T0, slots(capacity=10, functions=(FN, OTHER)))
    assert len(result.leases) == 2
    assert {FN, OTHER} <= result.drained_functions


# --- reads -----------------------------------------------------------------------------------


async def test_get_run_returns_the_run_with_its_steps(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    first = step_done(run_id, lease.fence, "first", b"[1]")
    second = StepCompleted(seq=next(_seq), run_id=run_id, fence=lease.fence, step_id="second",
                           attempt=2, output=b"[2]", started_at=T0 + 1, ended_at=T0 + 2)
    await checkpoint(store, T0 + 2, cp(second), cp(first))

    run = await store.get_run(run_id)
    assert run is not None
    assert [s.id for s in run.steps] == ["first", "second"]  # in the order they started
    step = run.steps[1]
    assert (step.kind, step.status, step.attempts, step.output, step.error) == (
        "run", "Completed", 3, b"[2]", None)
    assert (step.started_at, step.ended_at) == (T0 + 1, T0 + 2)
    assert await store.get_run("no-such-run") is None


async def test_list_runs_pages_with_a_cursor_and_filters(store):
    mine = await create_runs(store, 5, FN)
    theirs = await create_runs(store, 2, OTHER)
    result = await claim(store, T0, slots(capacity=1, functions=(OTHER,)))
    (leased,) = result.leases

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_runs(function_id=None, status=None, limit=3, cursor=cursor)
        pages += 1
        assert len(page.runs) <= 3
        seen += [r.id for r in page.runs]
        cursor = page.cursor
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(mine + theirs)
    assert len(seen) == len(set(seen))

    page = await store.list_runs(function_id=FN, status=None, limit=100, cursor=None)
    assert sorted(r.id for r in page.runs) == sorted(mine)
    assert page.cursor is None
    page = await store.list_runs(function_id=None, status="Running", limit=100, cursor=None)
    assert [r.id for r in page.runs] == [leased.run_id]
    page = await store.list_runs(function_id=OTHER, status="Queued", limit=100, cursor=None)
    assert [r.id for r in page.runs] == [r for r in theirs if r != leased.run_id]
    page = await store.list_runs(function_id=FN, status="Running", limit=100, cursor=None)
    assert page.runs == [] and page.cursor is None


async def test_a_page_that_ends_exactly_at_the_limit_has_no_cursor(store):
    await create_runs(store, 4)
    first = await store.list_runs(function_id=None, status=None, limit=2, cursor=None)
    assert len(first.runs) == 2 and first.cursor is not None
    second = await store.list_runs(function_id=None, status=None, limit=2, cursor=first.cursor)
    assert len(second.runs) == 2
    assert second.cursor is None
    assert {r.id for r in first.runs}.isdisjoint(r.id for r in second.runs)


async def test_runs_for_event(store):
    ev = event("ev-1", FN, OTHER)
    await store.write(batch(now=T0, events=[ev, event("ev-2", FN)]))
    runs = await store.runs_for_event("ev-1")
    assert sorted(r.function_id for r in runs) == sorted([FN, OTHER])
    assert all(r.event_ids == ["ev-1"] for r in runs)
    assert await store.runs_for_event("no-such-event") == []


# --- apps ------------------------------------------------------------------------------------


def manifest(app_id: str, *fn_ids: str, version: str = "1") -> AppManifest:
    return AppManifest(
        id=app_id, version=version,
        functions=[FunctionConfig(id=f, triggers=[TriggerEvent(f"{app_id}/{f}.go")])
                   for f in fn_ids],
    )


async def test_register_app_stores_functions_and_deactivates_undeclared_ones(store):
    records = await store.register_app(manifest("shop", "a", "b"), now=T0)
    assert sorted(r.id for r in records) == ["shop/a", "shop/b"]
    await store.register_app(manifest("other", "x"), now=T0)

    functions = {f.id: f for f in await store.functions() if not f.id.startswith("app/")}
    assert set(functions) == {"shop/a", "shop/b", "other/x"}
    assert all(f.active for f in functions.values())
    a = functions["shop/a"]
    assert (a.app_id, a.app_version) == ("shop", "1")
    assert a.config["id"] == "a"
    assert a.config["triggers"][0]["event"] == "shop/a.go"

    await store.register_app(manifest("shop", "a", "c", version="2"), now=T0 + 1)

    functions = {f.id: f for f in await store.functions() if not f.id.startswith("app/")}
    assert {fid for fid, f in functions.items() if f.active} == {"shop/a", "shop/c", "other/x"}
    assert functions["shop/b"].active is False
    assert functions["shop/a"].app_version == "2"
    assert functions["shop/a"].updated_at == T0 + 1

    await store.register_app(manifest("shop", "a", "b"), now=T0 + 2)
    functions = {f.id: f for f in await store.functions() if not f.id.startswith("app/")}
    assert functions["shop/b"].active is True
    assert functions["shop/c"].active is False


@pytest.mark.parametrize("count", [0, 2])
async def test_a_claim_with_nothing_ready_leases_nothing(store, count):
    await create_runs(store, count, OTHER)
    result = await claim(store, T0, slots(functions=(FN,)))
    assert result.leases == []


# --- gateways sharing a store ----------------------------------------------------------------


async def test_a_silent_gateway_s_leases_are_requeued_by_one_live_gateway(store):
    if not store.shared:
        pytest.skip("one gateway owns this store: recover() requeues at start")
    (run_id,) = await create_runs(store, 1)
    await store.keepalive("gw-a", now=T0, ttl=5)
    await store.keepalive("gw-b", now=T0, ttl=5)
    result = await claim(store, T0, slots(session="gw-a.s1"))
    (lease,) = result.leases

    # gw-a keeps beating: nothing happens to its lease.
    await store.keepalive("gw-a", now=T0 + 4, ttl=5)
    assert await store.keepalive("gw-b", now=T0 + 4, ttl=5) == set()
    assert (await store.get_run(run_id)).status == "Running"

    # gw-a falls silent for longer than the ttl: gw-b requeues its lease, once.
    assert await store.keepalive("gw-b", now=T0 + 10, ttl=5) == {FN}
    assert await store.keepalive("gw-b", now=T0 + 11, ttl=5) == set()
    run = await store.get_run(run_id)
    assert (run.status, run.available_at) == ("Queued", T0 + 10)
    # The dead gateway's late checkpoint is refused: its lease was revoked.
    late = cp(step_done(run_id, lease.fence), session="gw-a.s1")
    refused = await checkpoint(store, T0 + 12, late)
    assert refused.refused
    again = await claim(store, T0 + 12, slots(session="gw-b.s2"))
    assert [lease.run_id for lease in again.leases] == [run_id]


# --- limits (SPEC §5) ------------------------------------------------------------------------


async def test_a_step_result_over_the_limit_fails_the_run(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    big = b'"' + b"x" * 2000 + b'"'
    result = await store.write(batch(now=T0 + 1, limits=Limits(max_step_result=1000),
                                     checkpoints=[cp(step_done(run_id, lease.fence, "big", big))]))
    assert [e.status for e in result.ended] == ["Failed"]
    run = await store.get_run(run_id)
    assert run.error.name == "LimitExceeded" and "'big'" in run.error.message
    assert run.steps == []  # nothing of the oversize result was kept


async def test_a_run_whose_recorded_state_grows_over_the_limit_fails(store):
    (run_id,) = await create_runs(store)
    lease = await lease_one(store, run_id)
    chunk = b'"' + b"x" * 400 + b'"'
    limits = Limits(max_run_state=1000)
    first = await store.write(batch(now=T0 + 1, limits=limits, checkpoints=[
        cp(step_done(run_id, lease.fence, "a", chunk)),
        cp(step_done(run_id, lease.fence, "b", chunk))]))
    assert first.ended == []
    second = await store.write(batch(now=T0 + 2, limits=limits, checkpoints=[
        cp(step_done(run_id, lease.fence, "c", chunk)),
        cp(step_done(run_id, lease.fence, "d", chunk))]))
    assert [e.status for e in second.ended] == ["Failed"]
    assert second.refused == {1: "run already Failed"}  # nothing more is recorded
    run = await store.get_run(run_id)
    assert run.error.name == "LimitExceeded" and "MiB limit" in run.error.message


async def test_a_gateway_that_lost_its_listener_listens_again(store, db_url):
    if not store.shared:
        pytest.skip("one gateway: nothing to listen to")
    import asyncio

    import asyncpg

    from gateway.app import open_store
    from tests.helpers.waiting import eventually

    heard: list[dict] = []
    other = open_store(db_url)
    await other.open()
    try:
        await other.subscribe("gw-b", heard.append)
        await store.subscribe("gw-a", lambda note: None)
        pid = other._listener.get_server_pid()
        admin = await asyncpg.connect(db_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await eventually(lambda: _closed(other), what="the listener to notice it is gone")
        await other.keepalive("gw-b", now=T0, ttl=5)
        assert {"registered": True, "wakeup": 0.0} in heard  # told to look afresh
        heard.clear()
        await create_runs(store, 1)  # gw-a commits new runs: gw-b hears of them again
        async def heard_functions() -> set[str]:
            return {fn for note in heard for fn in note.get("functions", ())}

        assert FN in await eventually(heard_functions, what="a note from the other gateway")
    finally:
        await other.close()
        await asyncio.sleep(0)


async def _closed(store) -> bool:
    return store._listener.is_closed()


async def test_a_batch_of_many_runs_records_each_value_exactly(store):
    """Many runs' checkpoints in one batch are written together (on PostgreSQL, one statement
    per kind of write): outputs, errors and times come back as sent, byte for byte and to the
    last bit, and a step that failed then succeeded in the batch keeps its success."""
    run_ids = await create_runs(store, 3)
    leases = {lease.run_id: lease
              for lease in (await claim(store, T0, slots(capacity=3))).leases}
    retried, timed, ended = run_ids
    odd = '{"s": "é\\u00e9 \\"q\\" \\\\ \\n", "big": 12345678901234567890, "f": 0.1}'.encode()
    started, finished = T0 + 0.123456789012345, T0 + 1.000000000000001
    precise = StepCompleted(seq=next(_seq), run_id=timed, fence=leases[timed].fence,
                            step_id="t", attempt=0, output=b"null", started_at=started,
                            ended_at=finished)
    result = await checkpoint(
        store, T0 + 2,
        cp(step_done(retried, leases[retried].fence, "b", b'"\\u0000-free \xf0\x9f\x8e\x89"')),
        cp(precise),
        cp(step_done(ended, leases[ended].fence, "x", b"[1,2,3]")),
        cp(run_completed(ended, leases[ended].fence, odd)),
    )
    assert result.refused == {}
    # The same step twice in one batch: the rows go one by one, in order.
    result = await checkpoint(
        store, T0 + 3,
        cp(step_failed(retried, leases[retried].fence, "a"), retry_at=T0 + 30),
        cp(step_done(retried, leases[retried].fence, "a", odd, attempt=1)),
        cp(step_done(timed, leases[timed].fence, "u", odd)),
    )

    assert result.refused == {}
    run = await store.get_run(retried)
    assert run is not None
    steps = {s.id: s for s in run.steps}
    assert (steps["a"].status, steps["a"].attempts, steps["a"].output) == ("Completed", 2, odd)
    assert steps["b"].output == b'"\\u0000-free \xf0\x9f\x8e\x89"'
    run = await store.get_run(timed)
    assert run is not None
    steps = {s.id: s for s in run.steps}
    assert (steps["t"].started_at, steps["t"].ended_at, steps["t"].output) == (
        started, finished, b"null")
    assert steps["u"].output == odd
    run = await store.get_run(ended)
    assert run is not None
    assert (run.status, run.output, run.ended_at) == ("Completed", odd, T0 + 2)
    assert [s.output for s in run.steps] == [b"[1,2,3]"]
