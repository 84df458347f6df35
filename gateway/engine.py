"""The gateway's heart: collect writes, commit them together, answer everyone, lease more.

Rule 1: nothing is acknowledged before it is committed. An HTTP 200 for an event, a
``CheckpointAck`` to a worker, a ``LeaseGranted``: each is sent after the transaction that
holds it has committed, never before.

Rule 2: one transaction is in flight at a time. Everything that arrives while it commits
(events from many requests, checkpoints from many sockets, disconnects) waits in the next
batch, so a busy gateway writes big batches and an idle one writes at once.

Rule 3: leasing happens inside the same transaction, at its end, for workers with free slots.
So a run created by an event, or requeued by a failure or a lost worker, is leased as soon
as that write commits, without a second round trip to the database.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import structlog

from protocol import messages as m
from protocol.errors import TetherError
from protocol.ids import new_id
from protocol.manifest import AppManifest, FunctionConfig, check_expressions

from gateway.clock import Clock
from gateway.metrics import Metrics
from gateway.registry import Registry, WorkerEntry
from gateway.runs import retry_at
from gateway.scheduler.triggers import TriggerIndex
from gateway.store.base import (
    CheckpointWrite,
    FunctionRecord,
    LeaseReturn,
    NewEvent,
    NewRun,
    SessionRelease,
    Store,
    WriteBatch,
    WriteResult,
)

log = structlog.get_logger("tether.engine")

#: Checkpoints after which the worker no longer holds the run.
_LEASE_ENDS = (m.RunCompleted, m.RunFailed, m.RunSuspended, m.LeaseReleased)


class StoreUnavailable(TetherError):
    """The store failed to commit; nothing of the batch was kept."""

    code = "store_unavailable"
    http_status = 503


class Engine:
    """Owns the write pipeline, the trigger index and the run-leasing loop."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: Clock,
        *,
        retry_base: float,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.retry_base = retry_base
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.triggers = TriggerIndex()
        self.functions: dict[str, FunctionRecord] = {}
        self._batch = WriteBatch(now=0.0)
        self._event_waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]] = []
        self._wake = asyncio.Event()
        self._maybe_ready: set[str] = set()
        self._next_wakeup: float | None = None
        self._idle = asyncio.Event()
        self._closed = False

    # --- startup -------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the registered functions and requeue leases left by a previous process."""
        for record in await self.store.functions():
            self._index(record)
        requeued = await self.store.recover(now=self.clock.now())
        if requeued:
            log.info("leases_recovered", runs=requeued)
        self._maybe_ready.update(self.functions)
        self._wake.set()

    def _index(self, record: FunctionRecord) -> None:
        self.functions[record.id] = record
        config = FunctionConfig(**record.config) if record.active else None
        self.triggers.set_function(record.id, config)

    async def register_app(self, app: AppManifest) -> list[FunctionRecord]:
        """Validate and store an app's functions, then route its events to them.

        Raises:
            ExpressionError: an expression of some function does not compile.
        """
        for fn in app.functions:
            check_expressions(f"{app.id}/{fn.id}", fn)
        records = await self.store.register_app(app, now=self.clock.now())
        active = {r.id for r in records}
        for stale in [f for f in self.functions.values() if f.app_id == app.id]:
            if stale.id not in active:
                stale.active = False
                self.triggers.set_function(stale.id, None)
        for record in records:
            self._index(record)
        return records

    # --- inputs --------------------------------------------------------------------------

    def match(self, name: str, event: dict[str, Any]) -> list[NewRun]:
        """The runs an event starts: one per matching function."""
        return [NewRun(new_id(), fn) for fn in self.triggers.match(name, event)]

    async def ingest(self, events: list[NewEvent]) -> set[str]:
        """Store events and their runs durably; return the ids that were duplicates.

        Raises:
            StoreUnavailable: the commit failed; nothing was stored.
        """
        future: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._batch.events.extend(events)
        self._event_waiters.append((events, future))
        self._wake.set()
        return await future

    def checkpoint(self, worker: WorkerEntry, message: m.Checkpoint) -> None:
        """Queue a checkpoint for the next commit; it is acknowledged once committed."""
        at: float | None = None
        if isinstance(message, (m.StepFailed, m.RunFailed)):
            at = retry_at(message, now=self.clock.now(), base=self.retry_base, rng=self.rng)
        if isinstance(message, _LEASE_ENDS):
            worker.drop(message.run_id, message.fence)
        self._batch.checkpoints.append(CheckpointWrite(worker.session_id, message, at))
        self._wake.set()

    def lease_rejected(self, worker: WorkerEntry, run_id: str, fence: int, reason: str) -> None:
        """The worker would not take a lease: give the run to someone else at once."""
        worker.drop(run_id, fence)
        self._batch.returns.append(LeaseReturn(run_id, fence, reason))
        self._wake.set()

    def worker_ready(self, worker: WorkerEntry) -> None:
        """A worker joined (or has room again): look for runs it can take."""
        self._maybe_ready.update(worker.functions)
        self._wake.set()

    def worker_gone(self, worker: WorkerEntry, reason: str, *, lost: bool = True) -> None:
        """The worker's socket closed: every lease it held goes back to the queue."""
        worker.in_flight.clear()
        self._batch.releases.append(SessionRelease(worker.session_id, reason, lost))
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit batches until :meth:`close`; never raises for a failed batch."""
        while True:
            if not self._has_work():
                if self._closed:
                    self._idle.set()
                    return
                self._idle.set()
                await self._sleep()
                self._idle.clear()
                continue
            batch, waiters = self._take()
            try:
                result = await self.store.write(batch)
            except Exception as exc:  # the store failed: answer no one with success
                self.metrics.batches_failed += 1
                log.error("batch_failed", error=str(exc), exc_info=True)
                self._fail(batch, waiters, exc)
                await self.clock.sleep(0.2)
                continue
            self._deliver(batch, waiters, result)

    async def close(self) -> None:
        """Commit what is pending, then stop the loop."""
        self._closed = True
        self._wake.set()
        await self._idle.wait()

    def _has_work(self) -> bool:
        if self._batch:
            return True
        return bool(self._maybe_ready) and bool(self.registry.free_slots())

    async def _sleep(self) -> None:
        """Wait for new work, or for the next queued run to become available."""
        self._wake.clear()
        if self._has_work() or self._closed:
            return
        if self._next_wakeup is None:
            await self._wake.wait()
            return
        timer = asyncio.ensure_future(self.clock.sleep_until(self._next_wakeup))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (timer, woken):
                task.cancel()
        if timer.done() and not timer.cancelled():
            self._next_wakeup = None
            self._maybe_ready.update(self.functions)

    def _take(self) -> tuple[WriteBatch, list[tuple[list[NewEvent], asyncio.Future[set[str]]]]]:
        batch, self._batch = self._batch, WriteBatch(now=0.0)
        waiters, self._event_waiters = self._event_waiters, []
        batch.now = self.clock.now()
        slots = self.registry.free_slots()
        if slots:
            batch.claims = slots
            batch.claim_functions = set(self._maybe_ready)
        return batch, waiters

    def _deliver(
        self,
        batch: WriteBatch,
        waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
        result: WriteResult,
    ) -> None:
        metrics = self.metrics
        metrics.batches_committed += 1
        metrics.events_accepted += len(batch.events) - len(result.duplicate_events)
        metrics.events_duplicate += len(result.duplicate_events)
        metrics.runs_created += result.runs_created
        metrics.checkpoints_committed += len(batch.checkpoints) - len(result.refused)
        metrics.checkpoints_refused += len(result.refused)
        metrics.leases_granted += len(result.leases)
        for events, future in waiters:
            if not future.done():
                future.set_result({e.id for e in events} & result.duplicate_events)

        acks: dict[str, int] = {}
        for index, write in enumerate(batch.checkpoints):
            msg = write.message
            acks[write.session_id] = max(acks.get(write.session_id, 0), msg.seq)
            reason = result.refused.get(index)
            if reason is not None:
                log.warning("checkpoint_refused", run_id=msg.run_id, fence=msg.fence,
                            session_id=write.session_id, kind=msg.type, reason=reason)
                worker = self.registry.get(write.session_id)
                if worker is not None:
                    worker.drop(msg.run_id, msg.fence)
                    worker.send(m.CheckpointRefused(seq=msg.seq, run_id=msg.run_id,
                                                    reason=reason))
        for session_id, upto in acks.items():
            worker = self.registry.get(session_id)
            if worker is not None:
                worker.send(m.CheckpointAck(upto=upto))

        orphaned: list[str] = []
        for lease in result.leases:
            worker = self.registry.get(lease.session_id)
            if worker is None or worker.draining:
                # The socket went away while we committed: give the run back at once.
                orphaned.append(lease.run_id)
                self._batch.returns.append(
                    LeaseReturn(lease.run_id, lease.fence, "worker left before the lease")
                )
                continue
            worker.in_flight[lease.run_id] = lease.fence
            worker.send(
                m.LeaseGranted(
                    run_id=lease.run_id, fence=lease.fence, function_id=lease.function_id,
                    events=lease.events, memos=lease.memos, attempts=lease.attempts,
                    deferred=lease.deferred, attempt=lease.attempt,
                )
            )
        if orphaned:
            self._wake.set()

        for ended in result.ended:
            if ended.status == "Completed":
                metrics.runs_completed += 1
                log.debug("run_ended", run_id=ended.run_id, function_id=ended.function_id,
                          status=ended.status)
            else:
                metrics.runs_failed += 1
                log.info("run_ended", run_id=ended.run_id, function_id=ended.function_id,
                         status=ended.status)

        self._maybe_ready |= result.touched_functions
        self._maybe_ready -= result.drained_functions
        claim_only = not (batch.events or batch.checkpoints or batch.returns or batch.releases)
        if claim_only and not result.leases:
            # A claim-only round that leased nothing: stop asking until something changes.
            # (``bool(batch)`` counts the claims, so it cannot tell such a round apart.)
            self._maybe_ready.clear()
        self._next_wakeup = result.next_wakeup

    def _fail(
        self,
        batch: WriteBatch,
        waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
        exc: Exception,
    ) -> None:
        error = StoreUnavailable(
            f"the store could not commit ({exc}); nothing was stored, retry the request"
        )
        for _, future in waiters:
            if not future.done():
                future.set_exception(error)
        # Unacknowledged checkpoints are resent by workers after they reconnect.
        for session_id in {w.session_id for w in batch.checkpoints}:
            worker = self.registry.get(session_id)
            if worker is not None:
                worker.close(1011, "store unavailable; reconnect and resend checkpoints")
        # Releases and returns must not be forgotten: their runs would stay leased.
        self._batch.releases.extend(batch.releases)
        self._batch.returns.extend(batch.returns)
