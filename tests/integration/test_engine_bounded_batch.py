"""A commit takes at most ``max_batch`` events and checkpoints; the rest waits for the next
commit, in order, and nothing is lost. Engine over a real store, fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.engine import Engine
from gateway.registry import Registry
from gateway.store.base import WriteBatch, WriteResult
from protocol import messages as m
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.helpers.waiting import bound
from tests.integration.test_engine import (
    RETRY_BASE,
    CommitLog,
    Harness,
    step_completed,
    until,
)


class BatchLog(CommitLog):
    """Records what each committed batch held, in commit order."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        super().__init__(store)
        self.events: list[list[str]] = []
        self.checkpoints: list[list[int]] = []

    async def write(self, batch: WriteBatch) -> WriteResult:
        result = await super().write(batch)
        self.events.append([e.id for e in batch.events if e.name != "barrier"])
        self.checkpoints.append([w.message.seq for w in batch.checkpoints])
        return result


@pytest.fixture
async def bounded(store, fake_clock):
    log = BatchLog(store)
    engine = Engine(log, Registry(), fake_clock, retry_base=RETRY_BASE, rng=random.Random(7),
                    max_batch=4)
    await engine.load()
    await engine.register_app(AppManifest(
        id="app", version="1", functions=[FunctionConfig(id="fn", triggers=[TriggerEvent("go")])]
    ))
    task = asyncio.create_task(engine.run())
    harness = Harness(engine, engine.registry, fake_clock, log)
    yield harness, log
    await asyncio.wait_for(engine.close(), bound(5))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert harness.uncommitted == []


async def test_events_beyond_the_bound_wait_for_the_next_commit_in_order(bounded):
    harness, log = bounded
    requests = [[harness.event()] for _ in range(7)] + [[harness.event() for _ in range(3)]]
    # All queued before the engine's loop runs again: one batch would take them all.
    answers = await asyncio.wait_for(asyncio.gather(
        *(harness.engine.ingest(events) for events in requests)), bound(5))

    assert answers == [set()] * len(requests)
    committed = [ids for ids in log.events if ids]
    assert all(len(ids) <= 4 for ids in committed)
    assert len(committed) >= 3
    # Every event stored once, in the order sent; a request's events in one commit.
    sent = [e.id for events in requests for e in events]
    assert [i for ids in committed for i in ids] == sent
    assert [e.id for e in requests[-1]] in committed
    for event in (e for events in requests for e in events):
        assert await harness.run_id(event)


async def test_a_request_bigger_than_the_bound_commits_whole(bounded):
    harness, log = bounded
    events = await harness.post(6)
    assert [e.id for e in events] in log.events


async def test_checkpoints_beyond_the_bound_wait_for_the_next_commit_in_order(bounded):
    harness, log = bounded
    worker = harness.connect("w1", capacity=3)
    await harness.post(3)
    await harness.settle()
    leases = worker.leases
    assert len(leases) == 3
    harness.seq = 0
    for lease in leases:
        for step in ("a", "b", "c"):
            harness.checkpoint(worker, m.StepCompleted,
                               **step_completed(lease.run_id, lease.fence, step))
    for lease in leases:
        harness.checkpoint(worker, m.RunCompleted, run_id=lease.run_id, fence=lease.fence,
                           output=b"1")
    await until(lambda: m.CheckpointAck(upto=12) in worker.sent, "every checkpoint acked")

    committed = [seqs for seqs in log.checkpoints if seqs]
    assert all(len(seqs) <= 4 for seqs in committed)
    assert [s for seqs in committed for s in seqs] == list(range(1, 13))
    # Acknowledgements are cumulative and follow the commits, one per commit.
    assert [a.upto for a in worker.of(m.CheckpointAck)] == [seqs[-1] for seqs in committed]
    assert not worker.of(m.CheckpointRefused)
    for lease in leases:
        run = await harness.store.get_run(lease.run_id)
        assert run.status == "Completed"
        assert sorted(s.id for s in run.steps) == ["a", "b", "c"]
