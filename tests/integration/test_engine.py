"""The engine over a real store: commits, leases, retries and lost workers, on a fake clock.

Workers are registry entries whose ``send`` records what the engine would put on their socket.
Time moves only when a test advances the clock; a test then awaits the observable outcome under
a bound.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.registry import Registry, WorkerEntry
from gateway.store.base import NewEvent, Store, WriteBatch, WriteResult
from protocol import messages as m
from protocol.ids import new_id
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.helpers.waiting import bound, eventually

T = TypeVar("T")

FN = "app/fn"
RETRY_BASE = 10.0  # backoff after a first failure: 5..10 s


class CommitLog:
    """Wraps the store to record which leases were committed, and nothing else."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.committed_leases: set[tuple[str, int]] = set()

    async def write(self, batch: WriteBatch) -> WriteResult:
        result: WriteResult = await self._store.write(batch)
        self.committed_leases.update((lease.run_id, lease.fence) for lease in result.leases)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class FakeWorker:
    entry: WorkerEntry
    sent: list[m.Message] = field(default_factory=list)

    def of(self, kind: type[T]) -> list[T]:
        return [msg for msg in self.sent if isinstance(msg, kind)]

    @property
    def leases(self) -> list[m.LeaseGranted]:
        return self.of(m.LeaseGranted)


@dataclass
class Harness:
    engine: Engine
    registry: Registry
    clock: FakeClock
    store: CommitLog
    seq: int = 0
    #: leases sent before the transaction that made them had committed (must stay empty)
    uncommitted: list[m.LeaseGranted] = field(default_factory=list)

    def connect(self, session_id: str, capacity: int = 10,
                functions: frozenset[str] = frozenset({FN})) -> FakeWorker:
        worker = FakeWorker(entry=None)  # type: ignore[arg-type]

        def send(msg: m.Message) -> None:
            # Recorded, not asserted here: an exception would land in the engine's loop.
            if isinstance(msg, m.LeaseGranted) and (
                    (msg.run_id, msg.fence) not in self.store.committed_leases):
                self.uncommitted.append(msg)
            worker.sent.append(msg)

        worker.entry = WorkerEntry(
            session_id=session_id, instance_id=f"instance-{session_id}", capacity=capacity,
            functions=functions, apps={"app": "1"}, connected_at=self.clock.now(),
            send=send, close=lambda code, reason: None, last_seen=self.clock.monotonic(),
        )
        self.registry.add(worker.entry)
        self.engine.worker_ready(worker.entry)
        return worker

    def disconnect(self, worker: FakeWorker, reason: str = "socket closed (1006)") -> None:
        self.registry.remove(worker.entry.session_id)
        self.engine.worker_gone(worker.entry, reason)

    async def run_id(self, event: NewEvent) -> str:
        """The id of the run ``event`` started."""
        (run,) = await self.store.runs_for_event(event.id)
        return run.id

    def event(self, event_id: str | None = None, name: str = "go") -> NewEvent:
        event_id = event_id or new_id(self.clock.now())
        data = {"name": name, "data": {}, "id": event_id, "ts": 0, "user": None}
        return NewEvent(event_id, name, json.dumps(data).encode(), data)

    async def post(self, count: int = 1) -> list[NewEvent]:
        events = [self.event() for _ in range(count)]
        assert await self.engine.ingest(events) == set()
        return events

    async def settle(self) -> None:
        """Commit one more batch (with a claim for every worker that has room).

        Batches are committed one at a time, so once it is answered every earlier decision
        has been delivered, and any run that is ready and has a worker has been leased.
        """
        for worker in self.registry:
            self.engine.worker_ready(worker)
        await asyncio.wait_for(self.engine.ingest([self.event(name="barrier")]), bound(5))

    def checkpoint(self, worker: FakeWorker, cls: type[Any], **fields: Any) -> int:
        self.seq += 1
        self.engine.checkpoint(worker.entry, cls(seq=self.seq, **fields))
        return self.seq


def step_completed(run_id: str, fence: int, step: str, output: bytes = b'"ok"') -> dict[str, Any]:
    return dict(run_id=run_id, fence=fence, step_id=step, attempt=0, output=output,
                started_at=1.0, ended_at=2.0)


async def until(predicate: Callable[[], T], what: str) -> T:
    async def check() -> T:
        return predicate()

    return await eventually(check, timeout=5, what=what)


@pytest.fixture
async def harness(store, fake_clock):
    registry = Registry()
    log = CommitLog(store)
    engine = Engine(log, registry, fake_clock, retry_base=RETRY_BASE, rng=random.Random(7))
    await engine.load()
    await engine.register_app(AppManifest(
        id="app", version="1", functions=[FunctionConfig(id="fn", triggers=[TriggerEvent("go")])]
    ))
    task = asyncio.create_task(engine.run())
    harness = Harness(engine, registry, fake_clock, log)
    yield harness
    if task.done():  # only a test that closed the engine may have ended its loop
        assert task.exception() is None, f"the engine's loop crashed: {task.exception()!r}"
    await asyncio.wait_for(engine.close(), bound(5))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert harness.uncommitted == [], "a lease was sent before its transaction committed"


async def test_an_event_is_leased_to_the_least_loaded_worker_once_committed(harness):
    w1 = harness.connect("w1", capacity=2)
    w2 = harness.connect("w2", capacity=2)

    (first,) = await harness.post()
    # The run is created and leased in the transaction that stores the event: by the time the
    # event is acknowledged, its lease is on its way.
    assert len(w1.leases) + len(w2.leases) == 1
    (lease,) = w1.leases or w2.leases
    assert (lease.run_id, lease.fence, lease.function_id) == (await harness.run_id(first), 1, FN)
    assert lease.events == [first.payload]
    assert lease.memos == {} and lease.attempt == 0
    run = await harness.store.get_run(await harness.run_id(first))
    assert (run.status, run.fence) == ("Running", 1)

    loaded, idle = (w1, w2) if w1.leases else (w2, w1)
    (second,) = await harness.post()
    assert [lease.run_id for lease in idle.leases] == [await harness.run_id(second)]
    assert len(loaded.leases) == 1

    await harness.post(2)
    assert (len(w1.leases), len(w2.leases)) == (2, 2)


async def test_a_worker_is_never_leased_more_than_its_capacity(harness):
    w1 = harness.connect("w1", capacity=1)
    w2 = harness.connect("w2", capacity=2)
    events = await harness.post(6)
    await harness.settle()

    assert (len(w1.leases), len(w2.leases)) == (1, 2)
    queued = await harness.store.list_runs(function_id=FN, status="Queued", limit=100,
                                           cursor=None)
    assert len(queued.runs) == 3
    assert {lease.run_id for lease in w1.leases + w2.leases}.isdisjoint(
        r.id for r in queued.runs)

    # w2 finishes a run: it gets exactly one more, w1 (still full) gets none.
    done = w2.leases[0]
    seq = harness.checkpoint(w2, m.RunCompleted, run_id=done.run_id, fence=done.fence,
                             output=b"1")
    await until(lambda: len(w2.leases) == 3, "a new lease for the worker that has room")
    assert m.CheckpointAck(upto=seq) in w2.sent
    await harness.settle()
    assert (len(w1.leases), len(w2.leases)) == (1, 3)
    leased = {lease.run_id for lease in w1.leases + w2.leases}
    assert leased <= {await harness.run_id(e) for e in events}
    assert len(leased) == 4


async def test_a_step_retry_is_not_leased_before_its_backoff(harness):
    worker = harness.connect("w1", capacity=5)
    await harness.post()
    (lease,) = worker.leases
    run_id = lease.run_id
    harness.checkpoint(worker, m.StepFailed, run_id=run_id, fence=lease.fence, step_id="a",
                       attempt=0, error=m.ErrorInfo(name="Boom", message="no"), final=False,
                       started_at=1.0, ended_at=2.0)
    seq = harness.checkpoint(worker, m.RunSuspended, run_id=run_id, fence=lease.fence)
    await until(lambda: m.CheckpointAck(upto=seq) in worker.sent, "the checkpoints' ack")

    run = await harness.store.get_run(run_id)
    start = harness.clock.now()
    assert run.status == "Queued"
    assert start + RETRY_BASE / 2 <= run.available_at <= start + RETRY_BASE
    await harness.settle()
    assert len(worker.leases) == 1, "a parked retry must not be leased at once"

    harness.clock.advance(RETRY_BASE / 2 - 0.1)
    await harness.settle()
    assert len(worker.leases) == 1, "leased before its backoff ran out"

    harness.clock.advance(RETRY_BASE)
    await until(lambda: len(worker.leases) == 2, "the retry's lease once the backoff is over")
    retry = worker.leases[1]
    assert (retry.run_id, retry.fence) == (run_id, lease.fence + 1)
    assert retry.attempts == {"a": 1}
    assert retry.deferred == []
    assert retry.memos == {}


async def test_retry_after_is_honoured(harness):
    worker = harness.connect("w1", capacity=5)
    await harness.post()
    (lease,) = worker.leases
    harness.checkpoint(worker, m.RunFailed, run_id=lease.run_id, fence=lease.fence, attempt=0,
                       error=m.ErrorInfo(name="Later", message="busy"), final=False,
                       retry_after=100.0)
    harness.clock.advance(99)
    await harness.settle()
    assert len(worker.leases) == 1
    harness.clock.advance(1)
    await until(lambda: len(worker.leases) == 2, "the run's second attempt")
    assert (worker.leases[1].run_id, worker.leases[1].attempt) == (lease.run_id, 1)


async def test_a_lost_worker_s_runs_go_to_another_and_its_old_fence_is_refused(harness):
    w1 = harness.connect("w1", capacity=1)
    await harness.post()
    (lease,) = w1.leases
    run_id = lease.run_id
    seq = harness.checkpoint(w1, m.StepCompleted, **step_completed(run_id, lease.fence, "a",
                                                                   b'"from w1"'))
    await until(lambda: m.CheckpointAck(upto=seq) in w1.sent, "w1's ack")
    w2 = harness.connect("w2", capacity=1)
    await harness.settle()
    assert w2.leases == []

    harness.disconnect(w1)
    await until(lambda: w2.leases, "the run leased to w2")
    (moved,) = w2.leases
    assert (moved.run_id, moved.fence) == (run_id, lease.fence + 2)  # revoked, leased again
    assert moved.memos == {"a": m.StepMemo(output=b'"from w1"')}

    # w1 comes back on a new socket and resends what it had not seen acknowledged.
    w1b = harness.connect("w1b", capacity=1)
    harness.seq = 0
    stale = harness.checkpoint(w1b, m.StepCompleted, **step_completed(run_id, lease.fence, "b",
                                                                      b'"stale"'))
    await until(lambda: w1b.of(m.CheckpointRefused), "the refusal")
    (refused,) = w1b.of(m.CheckpointRefused)
    assert (refused.seq, refused.run_id) == (stale, run_id)
    assert refused.reason
    assert m.CheckpointAck(upto=stale) in w1b.sent

    fresh = harness.checkpoint(w2, m.StepCompleted, **step_completed(run_id, moved.fence, "b",
                                                                     b'"from w2"'))
    await until(lambda: m.CheckpointAck(upto=fresh) in w2.sent, "w2's ack")
    assert w2.of(m.CheckpointRefused) == []
    run = await harness.store.get_run(run_id)
    assert {s.id: s.output for s in run.steps} == {"a": b'"from w1"', "b": b'"from w2"'}
    assert w1b.leases == []


async def test_checkpoint_ack_covers_the_highest_seq_of_a_commit(harness):
    worker = harness.connect("w1", capacity=1)
    await harness.post()
    (lease,) = worker.leases
    harness.seq = 0
    harness.checkpoint(worker, m.StepCompleted, **step_completed(lease.run_id, lease.fence, "a"))
    harness.checkpoint(worker, m.StepCompleted,
                       **step_completed(lease.run_id, lease.fence - 1, "b"))
    harness.checkpoint(worker, m.StepCompleted, **step_completed(lease.run_id, lease.fence, "c"))
    await until(lambda: worker.of(m.CheckpointAck), "the ack")

    assert worker.of(m.CheckpointAck) == [m.CheckpointAck(upto=3)]
    assert [r.seq for r in worker.of(m.CheckpointRefused)] == [2]
    run = await harness.store.get_run(lease.run_id)
    assert sorted(s.id for s in run.steps) == ["a", "c"]


async def test_ingest_returns_the_duplicates(harness):
    worker = harness.connect("w1", capacity=10)
    first = harness.event("ev-1")
    assert await harness.engine.ingest([first]) == set()
    again, other = harness.event("ev-1"), harness.event("ev-2")
    assert await harness.engine.ingest([again, other]) == {"ev-1"}
    assert await harness.engine.ingest([harness.event("ev-3"), harness.event("ev-3")]) == {"ev-3"}

    assert [r.id for r in await harness.store.runs_for_event("ev-1")] == [
        await harness.run_id(first)]
    await harness.settle()
    stored = [r.id for e in ("ev-1", "ev-2", "ev-3") for r in await harness.store.runs_for_event(e)]
    assert len(stored) == 3
    assert sorted(lease.run_id for lease in worker.leases) == sorted(stored)


@pytest.mark.parametrize("stale", ["run_completed", "step_refused", "lease_rejected"])
async def test_a_stale_message_does_not_free_the_slot_of_the_current_lease(harness, stale):
    w1 = harness.connect("w1", capacity=1)
    await harness.post()
    (old,) = w1.leases
    harness.disconnect(w1)
    back = harness.connect("w1-again", capacity=1)  # the same worker, on a new socket
    await until(lambda: back.leases, "the run leased again")
    (current,) = back.leases
    assert (current.run_id, current.fence) == (old.run_id, old.fence + 2)  # revoked, leased

    # The old execution's last words arrive on the new socket: all about the old fence.
    harness.seq = 0
    if stale == "run_completed":
        harness.checkpoint(back, m.RunCompleted, run_id=old.run_id, fence=old.fence,
                           output=b"1")
    elif stale == "step_refused":
        harness.checkpoint(back, m.StepCompleted, **step_completed(old.run_id, old.fence, "a"))
    else:
        harness.engine.lease_rejected(back.entry, old.run_id, old.fence, "late")
    await harness.settle()
    assert len(back.of(m.CheckpointRefused)) == (0 if stale == "lease_rejected" else 1)

    # The worker still holds the current lease: it has no room for another run.
    await harness.post()
    await harness.settle()
    assert len(back.leases) == 1
    run = await harness.store.get_run(current.run_id)
    assert (run.status, run.fence) == ("Running", current.fence)


async def test_a_run_no_free_worker_serves_leaves_the_engine_idle(harness):
    busy = harness.connect("busy", capacity=1)
    await harness.post()
    assert len(busy.leases) == 1
    harness.connect("other", capacity=5, functions=frozenset({"app/other"}))
    await harness.post()  # only "busy" serves it, and it is full: the run waits
    await harness.settle()

    # Nothing can be leased until something changes: the engine has nothing to do, so it
    # stops at once when asked (a loop that keeps asking the store would never stop).
    await asyncio.wait_for(harness.engine.close(), bound(5))
    queued = await harness.store.list_runs(function_id=FN, status="Queued", limit=10,
                                           cursor=None)
    assert len(queued.runs) == 1
