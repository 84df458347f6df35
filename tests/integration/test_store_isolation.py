"""Item isolation in the store's batch, for every backend: what fails, fails alone.

A batch whose items all passed the gateway's checks can still hold one that raises inside the
transaction (a bug, a value the database refuses). The store then applies the batch again,
each item in its own savepoint: that item is answered with its own error and never fails its
neighbours, and a checkpoint that failed fails its run for good so a resend cannot fail again.
"""

from __future__ import annotations

import orjson

from gateway import loop_guard
from gateway.store.base import CancelRequest, CheckpointWrite, Limits, NewEvent, WriteBatch
from protocol.messages import EventsSent
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
    match,
    run_completed,
    slots,
    status,
    step_done,
    step_failed,
)


def poisoned_event() -> NewEvent:
    """An event that passed no check: its payload is not JSON, so storing it raises."""
    return NewEvent("poison-1", "go", b"{not json", None)


async def leased(store, count: int) -> list[tuple[str, int, str]]:
    """``count`` runs of FN, each leased to its own session: (run id, fence, session)."""
    await create_runs(store, count)
    result = await claim(store, T0, *[slots(f"s{i}", capacity=1) for i in range(count)])
    return [(lease.run_id, lease.fence, lease.session_id) for lease in result.leases]


async def error_of(store, run_id: str) -> str:
    run = await store.get_run(run_id)
    assert run is not None and run.error is not None
    return f"{run.error.name}: {run.error.message}"


async def test_an_event_request_that_raises_is_refused_alone(store):
    good1, good2 = event(None, FN), event(None, FN)
    result = await store.write(batch(now=T0, events=[good1, poisoned_event(), good2],
                                     event_groups=[1, 1, 1]))
    assert set(result.errors) == {("events", 1)}
    assert "JSONDecodeError" in result.errors[("events", 1)]
    assert len(await store.runs_for_event(good1.id)) == 1
    assert len(await store.runs_for_event(good2.id)) == 1
    assert await store.runs_for_event("poison-1") == []


async def test_a_checkpoint_that_raises_fails_its_run_alone_and_never_again(store):
    (bad_run, bad_fence, bad_session), (run, fence, session) = await leased(store, 2)
    poison = EventsSent(seq=1, run_id=bad_run, fence=bad_fence, step_id="send",
                        events=[b"not json"])
    neighbour_event = event(None, OTHER)
    result = await store.write(batch(
        now=T0 + 1, events=[neighbour_event], event_groups=[1],
        checkpoints=[CheckpointWrite(bad_session, poison), cp(step_done(run, fence),
                                                              session=session)]))
    assert set(result.errors) == {("checkpoint", 0)}  # logged by the engine
    assert "could not apply" in result.refused[0] and "the run failed" in result.refused[0]
    assert 1 not in result.refused
    assert await status(store, bad_run) == "Failed"
    assert (await error_of(store, bad_run)).startswith("InternalError")
    stored = await store.get_run(run)
    assert stored is not None and [s.id for s in stored.steps] == ["a"]
    assert len(await store.runs_for_event(neighbour_event.id)) == 1

    # The worker resends it (after a reconnect, a restart): refused at once, nothing raises.
    again = await checkpoint(store, T0 + 2, CheckpointWrite(bad_session, poison))
    assert again.refused == {0: "run already Failed"}


async def test_a_checkpoint_found_invalid_on_arrival_fails_its_run_not_the_batch(store):
    (bad_run, bad_fence, bad_session), (run, fence, session) = await leased(store, 2)
    invalid = CheckpointWrite(bad_session, run_completed(bad_run, bad_fence, b"{oops"),
                              invalid="the run's output is not valid JSON")
    result = await checkpoint(store, T0 + 1, invalid,
                              cp(run_completed(run, fence), session=session))
    assert "invalid checkpoint" in result.refused[0]
    assert 1 not in result.refused
    assert (await error_of(store, bad_run)).startswith("InvalidCheckpoint")
    assert await status(store, run) == "Completed"


async def test_the_gateway_fails_a_run_over_max_steps_and_counts_each_step_once(store):
    ((run, fence, session),) = await leased(store, 1)
    limits = Limits(max_steps=2)

    async def send(step: str) -> dict[int, str]:
        result = await store.write(WriteBatch(now=T0 + 1, match=match, limits=limits,
                                              checkpoints=[cp(step_done(run, fence, step),
                                                              session=session)]))
        return result.refused

    assert await send("a") == {}
    # A retry and the success of one step, in one batch, are one step.
    result = await store.write(WriteBatch(now=T0 + 1, match=match, limits=limits, checkpoints=[
        cp(step_failed(run, fence, "b"), retry_at=T0, session=session),
        cp(step_done(run, fence, "b", attempt=1), session=session)]))
    assert result.refused == {}
    assert await send("b") == {}  # a resend of a recorded step is not a new step
    assert await status(store, run) == "Running"
    assert await send("c") == {}
    assert await status(store, run) == "Failed"
    assert "over the 2 steps limit" in await error_of(store, run)


async def test_the_gateway_fails_a_run_whose_output_is_over_the_limit(store):
    ((run, fence, session),) = await leased(store, 1)
    result = await store.write(WriteBatch(
        now=T0 + 1, match=match, limits=Limits(max_step_result=1024),
        checkpoints=[cp(run_completed(run, fence, b'"' + b"x" * 2000 + b'"'), session=session)]))
    assert result.refused == {}
    assert await status(store, run) == "Failed"
    assert "LimitExceeded: the function returned" in await error_of(store, run)


async def test_system_events_never_start_the_function_they_report_and_chains_end(store):
    finished = "tether/function.finished"

    def listeners(name: str, body: dict) -> list[str]:
        if name == finished:  # both functions listen for every finish, unfiltered
            return [FN, OTHER]
        return match(name, body)

    runs = await create_runs(store, 1)
    chain = [FN]
    for _ in range(3 * loop_guard.MAX_CHAIN):
        result = await store.write(WriteBatch(
            now=T0, match=listeners, listens=lambda name: True,
            claims=[slots("s1", functions=(FN, OTHER))], claim_functions={FN, OTHER}))
        if not result.leases:
            break
        (lease,) = result.leases
        await store.write(WriteBatch(now=T0, match=listeners, listens=lambda name: True,
                                     checkpoints=[cp(run_completed(lease.run_id, lease.fence))]))
        if lease.run_id not in runs:
            runs.append(lease.run_id)
            chain.append(lease.function_id)
    # FN's finish starts OTHER only, OTHER's starts FN only, ... up to the cap.
    assert chain == [FN, OTHER] * (loop_guard.MAX_CHAIN // 2) + [FN]


async def test_a_deeply_nested_trigger_is_embedded_in_system_events_as_stored(store):
    deep: dict = {}
    for _ in range(250):  # the encoder's limit is 254 levels: the event itself is near it
        deep = {"d": deep}
    body = {"name": "go", "data": {"start": [FN], "deep": deep}, "id": "deep-1", "ts": 0,
            "user": None}
    payload = orjson.dumps(body)
    await store.write(batch(now=T0, events=[NewEvent("deep-1", "go", payload, body)]))
    lease = (await claim(store, T0)).leases[0]

    def listeners(name: str, data: dict) -> list[str]:
        return [OTHER] if name == "tether/function.finished" else []

    result = await store.write(WriteBatch(
        now=T0, match=listeners, listens=lambda name: True,
        checkpoints=[cp(run_completed(lease.run_id, lease.fence))],
        claims=[slots("s2", functions=(OTHER,))], claim_functions={OTHER}))
    assert result.refused == {} and result.errors == {}
    (child,) = result.leases
    (finished,) = child.events
    assert payload in finished  # the trigger's own bytes, not encoded again


async def test_many_revocations_at_once_commit(store):
    """On PostgreSQL each revocation is published to peers: the notes must be split."""
    run_ids = await create_runs(store, 150)
    session = "g" * 40 + "." + "s" * 30
    await claim(store, T0, slots(session, capacity=150))
    result = await store.write(batch(now=T0 + 1, cancels=[CancelRequest("bulk", run_ids=run_ids)]))
    assert result.cancelled == [150]
    assert len(result.revoked) == 150
    assert {await status(store, r) for r in run_ids[:3]} == {"Cancelled"}
