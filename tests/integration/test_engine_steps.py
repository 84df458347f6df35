"""The engine's durable-step decisions with an injected clock: timers, waits, invoke, cancel.

A real Engine over a real SQLite store, with fake worker sessions that record what the
gateway sends them. Time only moves when a test calls ``clock.advance``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.registry import Registry, WorkerEntry
from gateway.store.base import CancelRequest, NewEvent
from protocol import messages as m
from protocol.manifest import AppManifest, FunctionConfig, Timeouts, TriggerEvent

BOUND = 5.0  # seconds a test may wait for the engine before failing


@dataclass
class FakeWorker:
    """A worker session that records the messages the gateway sends it."""

    entry: WorkerEntry
    inbox: list[m.Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0

    async def lease(self) -> m.LeaseGranted:
        """The next LeaseGranted this worker receives."""
        return await self.next(m.LeaseGranted)

    async def next(self, kind: type) -> m.Message:
        async def find() -> m.Message:
            while True:
                for index, msg in enumerate(self.inbox):
                    if isinstance(msg, kind):
                        return self.inbox.pop(index)
                self.arrived.clear()
                await self.arrived.wait()
        return await asyncio.wait_for(find(), BOUND)

    def leases(self) -> list[m.LeaseGranted]:
        return [msg for msg in self.inbox if isinstance(msg, m.LeaseGranted)]


class World:
    def __init__(self, engine: Engine, clock: FakeClock, registry: Registry) -> None:
        self.engine, self.clock, self.registry = engine, clock, registry
        self.workers: list[FakeWorker] = []
        self.sent = 0

    def worker(self, *functions: str, capacity: int = 10) -> FakeWorker:
        worker: FakeWorker
        entry = WorkerEntry(
            session_id=f"s{len(self.workers)}", instance_id=f"w{len(self.workers)}",
            capacity=capacity, functions=frozenset(functions), apps={"t": ""},
            connected_at=self.clock.now(), send=lambda msg: _deliver(worker, msg),
            close=lambda code, reason: None,
        )
        worker = FakeWorker(entry)
        self.registry.add(entry)
        self.engine.worker_ready(entry)
        self.workers.append(worker)
        return worker

    def disconnect(self, worker: FakeWorker) -> None:
        """The worker's socket closed (as the transport reports it)."""
        self.registry.remove(worker.entry.session_id)
        self.engine.worker_gone(worker.entry, "socket closed")

    async def send(self, name: str, data: dict | None = None, event_id: str | None = None
                   ) -> str:
        self.sent += 1
        body = {"name": name, "data": data or {}, "id": event_id or f"e{self.sent}-{name}",
                "ts": 0, "user": None}
        await self.engine.ingest([NewEvent(body["id"], name, orjson.dumps(body), body)])
        return body["id"]

    async def checkpoint(self, worker: FakeWorker, lease: m.LeaseGranted, kind: type,
                         **fields) -> m.Message:
        """Send a checkpoint under ``lease`` and wait until the gateway acknowledges it."""
        worker.seq += 1
        self.engine.checkpoint(worker.entry, kind(seq=worker.seq, run_id=lease.run_id,
                                                  fence=lease.fence, **fields))
        ack = await worker.next((m.CheckpointAck, m.CheckpointRefused))
        return ack

    async def invoking(self, function_id: str = "t/child", data: bytes = b"{}",
                       timeout: float | None = None, *, suspend: bool = True
                       ) -> tuple[FakeWorker, FakeWorker, m.LeaseGranted]:
        """A parent run (leased) that has invoked ``function_id``: (parents, children, lease)."""
        parents, children = self.worker("t/parent"), self.worker("t/child")
        await self.send("go.parent")
        lease = await parents.lease()
        await self.checkpoint(parents, lease, m.InvokeRequested, step_id="kid",
                              function_id=function_id, data=data, timeout=timeout)
        if suspend:
            await self.checkpoint(parents, lease, m.RunSuspended)
        return parents, children, lease

    async def run(self, run_id: str) -> dict:
        record = await self.engine.store.get_run(run_id)
        assert record is not None
        return {"status": record.status, "steps": {s.id: s for s in record.steps},
                "error": record.error, "output": record.output}

    async def settle(self) -> None:
        """Let the engine commit whatever it has (a bound, not a guess: it waits for idle)."""
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.wait_for(self.engine._idle.wait(), BOUND)


def _deliver(worker: FakeWorker, msg: m.Message) -> None:
    worker.inbox.append(msg)
    worker.arrived.set()


def fn(fid: str, *triggers: str, **options) -> FunctionConfig:
    return FunctionConfig(id=fid, triggers=[TriggerEvent(t) for t in triggers], **options)


@contextlib.asynccontextmanager
async def running_world(store, functions: list[FunctionConfig], clock: FakeClock | None = None
                        ) -> AsyncIterator[World]:
    """An engine over ``store`` serving app ``t`` with ``functions``, running until the end."""
    clock = clock or FakeClock()
    registry = Registry()
    engine = Engine(store, registry, clock, retry_base=1.0)
    await engine.register_app(AppManifest(id="t", functions=functions))
    await engine.load()
    task = asyncio.create_task(engine.run())
    try:
        yield World(engine, clock, registry)
    finally:
        await engine.close()
        await asyncio.wait_for(task, BOUND)


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, [
        fn("sleepy", "go.sleep"),
        fn("waiter", "go.wait"),
        fn("parent", "go.parent"),
        fn("child"),
        fn("impatient", "go.impatient", timeouts=Timeouts(start=10)),
    ]) as world:
        yield world


async def test_a_sleep_is_leased_again_only_when_due(world):
    worker = world.worker("t/sleepy")
    await world.send("go.sleep")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="nap", duration=60.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    assert (await world.run(lease.run_id))["status"] == "Sleeping"

    world.clock.advance(59.9)
    await world.settle()
    assert worker.leases() == []  # not due yet: nothing was leased

    world.clock.advance(0.1)
    again = await worker.lease()
    assert again.run_id == lease.run_id and again.fence == lease.fence + 1
    assert again.memos["nap"].kind == "sleep" and again.memos["nap"].output == b"null"
    assert (await world.run(lease.run_id))["steps"]["nap"].status == "Completed"


async def test_a_sleep_replayed_before_it_is_due_stays_parked(world):
    worker = world.worker("t/sleepy")
    await world.send("go.sleep")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="nap", duration=60.0)
    # The worker lost its socket before suspending: the run is leased again at once...
    world.disconnect(worker)
    other = world.worker("t/sleepy")
    again = await other.lease()
    # ...and the sleeping step is deferred (park it), not completed early, not restarted.
    assert again.deferred == ["nap"] and "nap" not in again.memos
    await world.checkpoint(other, again, m.SleepRequested, step_id="nap", duration=60.0)
    await world.checkpoint(other, again, m.RunSuspended)
    world.clock.advance(59)
    await world.settle()
    assert other.leases() == []
    world.clock.advance(1)
    assert "nap" in (await other.lease()).memos


async def test_a_wait_resumes_with_the_matching_event_only(world):
    worker = world.worker("t/waiter")
    await world.send("go.wait", {"order": 1})
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="approval",
                           event="approved", timeout=3600.0,
                           if_="async.data.order == event.data.order")
    await world.checkpoint(worker, lease, m.RunSuspended)
    assert (await world.run(lease.run_id))["status"] == "Waiting"

    await world.send("approved", {"order": 2})
    await world.settle()
    assert worker.leases() == []

    await world.send("approved", {"order": 1, "by": "ann"})
    again = await worker.lease()
    got = orjson.loads(again.memos["approval"].output)
    assert got["data"] == {"order": 1, "by": "ann"}


async def test_a_wait_times_out_with_null(world):
    worker = world.worker("t/waiter")
    await world.send("go.wait")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="reply", event="answer",
                           timeout=30.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    world.clock.advance(30)
    again = await worker.lease()
    assert again.memos["reply"].output == b"null"
    # The wait is gone: a late event resumes nothing.
    await world.send("answer")
    await world.settle()
    assert worker.leases() == []


async def test_an_event_racing_the_wait_is_not_lost(world):
    worker = world.worker("t/waiter")
    await world.send("go.wait")
    lease = await worker.lease()
    # The run reached the wait on the worker; the event arrives before the wait is stored.
    world.clock.advance(1)
    await world.send("answer", {"n": 1})
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="reply", event="answer",
                           timeout=30.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    again = await worker.lease()
    assert orjson.loads(again.memos["reply"].output)["data"] == {"n": 1}


async def test_an_event_from_before_the_lease_does_not_match(world):
    await world.send("answer", {"n": 0})
    world.clock.advance(1)
    worker = world.worker("t/waiter")
    await world.send("go.wait")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.WaitRequested, step_id="reply", event="answer",
                           timeout=30.0)
    await world.checkpoint(worker, lease, m.RunSuspended)
    await world.settle()
    assert worker.leases() == []
    assert (await world.run(lease.run_id))["status"] == "Waiting"


async def test_invoke_starts_a_child_and_resumes_the_parent_with_its_output(world):
    parents, children, _ = await world.invoking(data=b'{"n": 3}')
    child = await children.lease()
    assert orjson.loads(child.events[0])["data"] == {"n": 3}
    await world.checkpoint(children, child, m.RunCompleted, output=b"6")
    again = await parents.lease()
    assert again.memos["kid"].output == b"6"


async def test_a_failed_child_fails_the_invoke_step(world):
    parents, children, _ = await world.invoking()
    child = await children.lease()
    await world.checkpoint(children, child, m.RunFailed, attempt=0, final=True,
                           error=m.ErrorInfo(name="ValueError", message="bad"))
    again = await parents.lease()
    error = again.memos["kid"].error
    assert error is not None and error.name == "ValueError" and "bad" in error.message


async def test_an_invoke_times_out(world):
    parents, _, _ = await world.invoking(timeout=10.0)
    world.clock.advance(10)
    again = await parents.lease()
    assert again.memos["kid"].error.name == "InvokeTimeout"


async def test_invoking_an_unknown_function_fails_the_step_at_once(world):
    parents, _, _ = await world.invoking("t/nope")
    again = await parents.lease()
    assert again.memos["kid"].error.name == "FunctionNotFound"


async def test_timeouts_start_cancels_a_run_nobody_took(world):
    event_id = await world.send("go.impatient")
    [run] = await world.engine.store.runs_for_event(event_id)
    world.clock.advance(9.9)
    await world.settle()
    assert (await world.run(run.id))["status"] == "Queued"
    world.clock.advance(0.1)
    await world.settle()
    state = await world.run(run.id)
    assert state["status"] == "Cancelled" and "timeouts.start" in state["error"].message


async def test_cancelling_a_running_run_revokes_its_lease_and_its_child(world):
    parents, children, lease = await world.invoking(suspend=False)
    child = await children.lease()
    count = await world.engine.cancel(CancelRequest("test", run_id=lease.run_id))
    assert count == 1
    revoked = await parents.next(m.LeaseRevoked)
    assert revoked.run_id == lease.run_id
    assert (await children.next(m.LeaseRevoked)).run_id == child.run_id
    assert (await world.run(child.run_id))["status"] == "Cancelled"
    # The cancelled run's late checkpoints are refused.
    refused = await world.checkpoint(parents, lease, m.StepCompleted, step_id="late",
                                     attempt=0, output=b"1", started_at=0.0, ended_at=0.0)
    assert isinstance(refused, m.CheckpointRefused)


async def test_a_run_due_while_every_worker_is_full_is_leased_once_one_has_room(world):
    worker = world.worker("t/sleepy", capacity=1)
    await world.send("go.sleep")
    first = await worker.lease()
    await world.checkpoint(worker, first, m.SleepRequested, step_id="nap", duration=10.0)
    await world.checkpoint(worker, first, m.RunSuspended)
    await world.send("go.sleep")
    second = await worker.lease()  # the only slot is taken now
    world.clock.advance(10)  # the first run is due, but there is no room for it
    await world.settle()
    assert worker.leases() == []
    await world.checkpoint(worker, second, m.RunCompleted, output=b"null")
    again = await worker.lease()
    assert again.run_id == first.run_id and "nap" in again.memos
