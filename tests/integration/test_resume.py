"""Leases given back to the workers that held them, through a real Engine on each backend.

A gateway restart keeps the fences of the leases it finds and holds them a grace period
(SQLite; on PostgreSQL the lease is still recorded under the dead session): the worker that
offers one back on its new socket gets it, at the same fence, and its unacknowledged
checkpoints are accepted, so nothing re-runs. An offer for a run leased again since, ended,
or unknown is refused (the worker is told to drop it), and fencing stays absolute.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.registry import Registry
from protocol import messages as m
from tests.integration.raw_worker import RawWorker, app_manifest
from tests.integration.test_cron import Gateway
from tests.integration.test_engine_steps import World, fn
from tests.integration.test_flow_throttle import app

START = 1_700_000_000.0
WORK = fn("work", "go.work")


class Restartable(Gateway):
    """:class:`Gateway` whose engines hold recovered leases for their workers 30 s."""

    async def start(self) -> World:
        engine = Engine(self.store, Registry(), self.clock, retry_base=1.0, resume_grace=30.0)
        await engine.load()
        self.task = asyncio.create_task(engine.run())
        self.world = World(engine, self.clock, engine.registry)
        return self.world


@pytest.fixture
async def gateway(store) -> AsyncIterator[Gateway]:
    gw = Restartable(store, FakeClock(START))
    world = await gw.start()
    await world.engine.register_app(app(WORK))
    yield gw
    await gw.stop()


async def test_a_restart_gives_a_surviving_worker_its_lease_back(gateway, db_url):
    world = gateway.world
    worker = world.worker("t/work")
    await world.send("go.work")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.StepCompleted, step_id="a", output=b"1",
                           attempt=0, started_at=START, ended_at=START)

    world = await gateway.restart()  # the old sessions are gone with the process
    world.worker("t/none")  # the test's session ids count from s0 again: not the old one's
    back = world.worker("t/work")
    if db_url.startswith("sqlite"):
        run = await gateway.store.get_run(lease.run_id)
        assert run is not None and run.status == "Queued"  # held for its worker a while
    world.engine.resume(back.entry, [m.Held(run_id=lease.run_id, fence=lease.fence)])
    await world.settle()
    assert back.entry.in_flight == {lease.run_id: lease.fence}
    assert not back.leases()  # nobody else was given it, nor this worker at a new fence
    # The step finished while the gateway was down: its checkpoint, at the old fence, counts.
    ack = await world.checkpoint(back, lease, m.StepCompleted, step_id="b", output=b"2",
                                 attempt=0, started_at=START, ended_at=START)
    assert isinstance(ack, m.CheckpointAck)
    await world.checkpoint(back, lease, m.RunCompleted, output=b"3")
    run = await world.run(lease.run_id)
    assert run["status"] == "Completed" and set(run["steps"]) == {"a", "b"}
    assert back.entry.in_flight == {}


async def test_a_lease_resumed_and_ended_in_one_batch_is_logged_as_resumed(gateway):
    """A worker that finished its run while it changed sockets offers the lease and hands in
    its end together: the run completes, and the gateway says it took the lease over."""
    world = gateway.world
    worker = world.worker("t/work")
    await world.send("go.work")
    lease = await worker.lease()
    world = await gateway.restart()
    world.worker("t/none")  # session ids count from s0 again: not the old one's
    back = world.worker("t/work")
    with capture_logs() as logs:
        world.engine.resume(back.entry, [m.Held(run_id=lease.run_id, fence=lease.fence)])
        ack = await world.checkpoint(back, lease, m.RunCompleted, output=b"3")
    assert isinstance(ack, m.CheckpointAck)
    assert (await world.run(lease.run_id))["status"] == "Completed"
    resumed = [e for e in logs if e["event"] == "lease_resumed"]
    assert [(e["run_id"], e["fence"], e.get("handed_in")) for e in resumed] == [
        (lease.run_id, lease.fence, True)]
    assert back.entry.in_flight == {}  # ended: nothing held


async def test_an_offer_for_a_run_leased_again_is_refused(gateway):
    world = gateway.world
    first = world.worker("t/work")
    await world.send("go.work")
    lease = await first.lease()
    world.disconnect(first)  # the gateway lives: the run is requeued at a new fence
    second = world.worker("t/work")
    taken = await second.lease()
    assert taken.fence > lease.fence
    back = world.worker("t/work")
    world.engine.resume(back.entry, [m.Held(run_id=lease.run_id, fence=lease.fence),
                                     m.Held(run_id="01HNOSUCHRUN000000000000000", fence=1)])
    revoked = [await back.next(m.LeaseRevoked), await back.next(m.LeaseRevoked)]
    assert {r.run_id for r in revoked} == {lease.run_id, "01HNOSUCHRUN000000000000000"}
    assert all("not resumable" in r.reason for r in revoked)
    refused = await world.checkpoint(back, lease, m.RunCompleted, output=b"1")
    assert isinstance(refused, m.CheckpointRefused) and "stale" in refused.reason
    assert back.entry.in_flight == {}


async def test_a_hello_offering_more_leases_than_its_capacity_is_refused(gateway_factory):
    gw = await gateway_factory()
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate()
    offers = [m.Held(run_id=f"01HRUN{i:020d}", fence=1) for i in range(3)]
    await worker.send(m.Hello(protocol_version=m.PROTOCOL_VERSION, instance_id="raw-1",
                              sdk_version="test", capacity=2, apps=[app_manifest()],
                              resume=offers))
    error = await worker.expect(m.Error)
    assert error.code == "invalid_input" and "more than its capacity (2)" in error.message
    code, _ = await worker.wait_closed()
    assert code == 1008
    # The gateway serves on: a well-behaved worker (offering its leases) is ready.
    ok = await RawWorker.ready_on(gw.connect_port)
    assert ok.of(m.Ready)


async def test_a_resent_release_of_a_run_already_requeued_changes_nothing(gateway):
    """A worker resends what a gateway committed but did not acknowledge before it died: a
    release (or a retry) of a run already back in the queue, at the same fence, is done, not
    an illegal move that would fail the run."""
    world = gateway.world
    await world.send("go.work")  # nobody serves t/work: the run stays Queued at fence 0
    page = await world.engine.store.list_runs(function_id="t/work", status=None, limit=5,
                                              cursor=None)
    (queued,) = page.runs
    held = m.LeaseGranted(run_id=queued.id, fence=queued.fence, function_id="t/work",
                          events=[], memos={}, attempts={}, deferred=[], attempt=0)
    resender = world.worker("t/none")
    ack = await world.checkpoint(resender, held, m.LeaseReleased, reason="draining")
    assert isinstance(ack, m.CheckpointAck)
    ack = await world.checkpoint(resender, held, m.RunFailed, attempt=0, final=False,
                                 error=m.ErrorInfo(name="E", message="x"))
    assert isinstance(ack, m.CheckpointAck)
    assert (await world.run(queued.id))["status"] == "Queued"  # never failed by a resend
