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
import logging
import random
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import TypeAdapter

from gateway.clock import Clock
from gateway.intake import check_checkpoint
from gateway.metrics import Metrics
from gateway.registry import Registry, WorkerEntry
from gateway.runs import retry_at
from gateway.scheduler.triggers import TriggerIndex
from gateway.store.base import (
    CancelRequest,
    CheckpointWrite,
    FunctionRecord,
    LeaseReturn,
    Limits,
    NewEvent,
    PeerNote,
    Resume,
    SessionRelease,
    Store,
    WriteBatch,
    WriteResult,
)
from protocol import hot
from protocol import messages as m
from protocol.errors import TetherError
from protocol.manifest import AppManifest, FunctionConfig, check_function
from protocol.messages import unvalidated

if TYPE_CHECKING:  # gateway.http.events imports this module
    from gateway.http.events import EventLimits
    from gateway.tracing import GatewayTracing  # imports OpenTelemetry: only when tracing

log = structlog.get_logger("tether.engine")

_CONFIG: TypeAdapter[FunctionConfig] = TypeAdapter(FunctionConfig)

#: Checkpoints after which the worker no longer holds the run.
_LEASE_ENDS = (*hot.RUN_COMPLETED, m.RunFailed, m.RunSuspended, m.LeaseReleased)


class StoreUnavailable(TetherError):
    """The store did not confirm a commit (it failed, or its answer was lost): send again."""

    code = "store_unavailable"
    http_status = 503


class ItemFailed(TetherError):
    """This request's part of a batch could not be applied; the rest of the batch was."""

    code = "item_failed"
    http_status = 500


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
        limits: Limits | None = None,
        event_limits: EventLimits | None = None,
        resume_grace: float = 0.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.retry_base = retry_base
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.limits = limits or Limits()
        if event_limits is None:
            from gateway.http.events import EventLimits
            event_limits = EventLimits()
        self.event_limits = event_limits
        #: After a restart, how long the leases of the previous process wait for their
        #: workers to reconnect and resume them before anyone else may be leased them.
        self.resume_grace = resume_grace
        #: The last failure (a whole batch, or one item of one), for ``/health``.
        self.last_error: dict[str, Any] | None = None
        self.failing = False  # the last batch failed whole (the store is unavailable)
        #: Test only (``TETHER_TEST_ENGINE_CRASH``): a batch holding an event of this name
        #: makes :meth:`run` raise, as a bug would, so supervision can be tested for real.
        self.crash_on: str | None = None
        self.triggers = TriggerIndex()
        self.functions: dict[str, FunctionRecord] = {}
        self._batch = self._new_batch()
        self._event_waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]] = []
        self._command_waiters: list[tuple[str, asyncio.Future[Any]]] = []
        # The waiters of the batch being committed (answered by abandon() if the loop dies).
        self._in_flight: tuple[list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
                               list[tuple[str, asyncio.Future[Any]]]] = ([], [])
        # When the gateway last heard of each leased run: a wait looks back to then.
        self._seen: dict[str, float] = {}
        #: Sessions lost lately (instance id, runs leased on them), for LoopStalled reports.
        self._lost_sessions: dict[str, tuple[str, frozenset[str]]] = {}
        self._wake = asyncio.Event()
        self._maybe_ready: set[str] = set()
        # Functions said to have runs ready (a worker joined, another gateway's note) since the
        # batch in flight was taken: its result, read before, must not take them out again.
        self._ready_since_take: set[str] = set()
        self._next_wakeup: float | None = None
        # The earliest wake-up other gateways announced while a batch was committing: a batch
        # that looks up the next due time must not forget it (its lookup may predate theirs).
        self._heard_wakeup: float | None = None
        self._find_wakeup = True  # ask the store once at start
        self._ticks_due = False  # cron ticks are due beyond what the last batch fired
        self._reloading: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._closed = False
        # Registration notes per worker instance, handed to it in its Ready.
        self.warnings: dict[str, list[str]] = {}
        #: Spans (``--traces``); None when tracing is off, which costs an ``is None`` test.
        self.tracing: GatewayTracing | None = None

    # --- startup -------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the registered functions and requeue leases left by a previous process."""
        for record in await self.store.functions():
            self._index(record)
        requeued = await self.store.recover(now=self.clock.now(), grace=self.resume_grace)
        if requeued:
            log.info("leases_recovered", runs=requeued)
        self._may_be_ready(self.functions)
        self._wake.set()

    def _may_be_ready(self, functions: Iterable[str]) -> None:
        """These functions may have runs ready: the next batch with free slots looks."""
        self._maybe_ready.update(functions)
        self._ready_since_take.update(functions)

    def _index(self, record: FunctionRecord) -> None:
        self.functions[record.id] = record
        config = FunctionConfig(**record.config) if record.active else None
        self.triggers.set_function(record.id, config)

    async def register_app(self, app: AppManifest, *, instance_id: str = ""
                           ) -> list[FunctionRecord]:
        """Validate and store an app's functions, then route its events to them.

        Functions of the app that connected workers on the same version still serve stay
        active: two programs reusing one app id each keep their functions (and the conflict
        is logged), rather than the newcomer silently turning the others' off.

        The gateway is the authority on what it enforces (other SDKs exist): an option it
        would ignore is refused here, whatever the worker's SDK checked.

        Raises:
            ExpressionError: an expression of some function does not compile.
            InvalidInput: a trigger's wildcard is misplaced, or an option is not enforced yet.
        """
        for fn in app.functions:
            check_function(f"{app.id}/{fn.id}", fn)
        keep = self._served_elsewhere(app, instance_id)
        known = self._registered(app, keep)
        if known is not None:
            return known  # every worker of a deployment says the same: write it once
        records = await self.store.register_app(app, now=self.clock.now(), keep=keep)
        active = {r.id for r in records} | keep
        for stale in [f for f in self.functions.values() if f.app_id == app.id]:
            if stale.id not in active:
                stale.active = False
                self.triggers.set_function(stale.id, None)
            elif stale.id in keep and not stale.active:
                stale.active = True
                self._index(stale)
        for record in records:
            self._index(record)
        self._schedules_changed(records)
        return records

    def _schedules_changed(self, records: list[FunctionRecord]) -> None:
        """Cron schedules may have been added: look for the next due time again."""
        if any("cron" in t for r in records for t in r.config.get("triggers", ())):
            self._find_wakeup = True
            self._wake.set()

    def _served_elsewhere(self, app: AppManifest, instance_id: str) -> set[str]:
        """Functions of ``app`` that connected workers on its version serve and it lacks.

        Same app id and version with another function set is a conflict (two programs
        reusing one ``App`` id): logged, and every function stays served. Another version
        is a deployment: the newcomer's set replaces the old one, as before.
        """
        mine = {f"{app.id}/{fn.id}" for fn in app.functions}
        prefix = f"{app.id}/"
        theirs: set[str] = set()
        others: list[str] = []
        for worker in self.registry:
            if worker.apps.get(app.id) != app.version:
                continue
            served = {f for f in worker.functions if f.startswith(prefix)}
            if served != mine:
                theirs |= served
                others.append(worker.instance_id)
        if others:
            log.warning(
                "app_conflict", app_id=app.id, app_version=app.version,
                instance_id=instance_id, other_instances=sorted(set(others)),
                only_here=sorted(mine - theirs), only_there=sorted(theirs - mine),
                hint=_conflict_hint(app),
            )
            self.warnings.setdefault(instance_id, []).append(
                f"app_conflict: {_conflict_hint(app)} (also connected: "
                f"{', '.join(sorted(set(others))[:5])}; functions only they serve: "
                f"{', '.join(sorted(theirs - mine)[:5]) or 'none'})")
        return theirs - mine

    def take_warnings(self, instance_id: str) -> list[str]:
        """What registering ``instance_id``'s apps noticed, for its ``Ready``."""
        return self.warnings.pop(instance_id, [])[:10]

    def _registered(self, app: AppManifest, keep: set[str]) -> list[FunctionRecord] | None:
        """The app's records if it is registered exactly so already (besides the functions
        in ``keep``, which other workers serve), else None."""
        mine = {f.id: f for f in self.functions.values() if f.app_id == app.id and f.active}
        records = []
        for fn in app.functions:
            record = mine.pop(f"{app.id}/{fn.id}", None)
            if (record is None or record.app_version != app.version
                    or record.config != _CONFIG.dump_python(fn, mode="json")):
                return None
            records.append(record)
        return None if set(mine) != keep else records

    # --- inputs --------------------------------------------------------------------------

    async def ingest(self, events: list[NewEvent]) -> set[str]:
        """Store events and their runs durably; return the ids that were duplicates.

        Raises:
            StoreUnavailable: the commit failed; nothing was stored.
        """
        future: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._batch.events.extend(events)
        self._batch.event_groups.append(len(events))
        self._event_waiters.append((events, future))
        self._wake.set()
        return await future

    def checkpoint(self, worker: WorkerEntry, message: hot.AnyCheckpoint) -> None:
        """Queue a checkpoint for the next commit; it is acknowledged once committed.

        Its payload is checked and encoded now, outside the transaction: a malformed one
        enters the batch marked invalid (its run fails, the worker is told), harming no one.
        """
        self.checkpoints(worker, (message,))

    def checkpoints(self, worker: WorkerEntry, messages: Sequence[hot.AnyCheckpoint]) -> None:
        """:meth:`checkpoint` for each of ``messages`` in turn (what one frame brought): the
        worker, the clock and the loop's wake-up are looked at once for all of them."""
        if self.registry.get(worker.session_id) is not worker:
            return  # its socket was dropped (a failed commit): the worker resends it later
        now = self.clock.now()
        limits, event_limits, seen = self.limits, self.event_limits, self._seen
        session_id, writes = worker.session_id, self._batch.checkpoints
        for message in messages:
            checked = check_checkpoint(message, limits, event_limits, now)
            if checked.invalid is not None:
                log.warning("checkpoint_invalid", run_id=message.run_id, kind=message.type,
                            session_id=session_id, reason=checked.invalid)
            run_id = message.run_id
            since = seen.get(run_id, now)
            if type(message) is hot.StepCompleted:
                # Most checkpoints are a step's result, as the socket decodes it: it neither
                # retries nor ends the lease, which saves it the tests against other kinds.
                seen[run_id] = now
                writes.append(CheckpointWrite(session_id, message, None, since,
                                              checked.invalid, None, None))
                continue
            at: float | None = None
            if isinstance(message, (m.StepFailed, m.RunFailed)):
                at = retry_at(message, now=now, base=self.retry_base, rng=self.rng)
            if isinstance(message, _LEASE_ENDS):
                worker.drop(run_id, message.fence)
                seen.pop(run_id, None)
            else:
                seen[run_id] = now
            writes.append(CheckpointWrite(session_id, message, at, since, checked.invalid,
                                          checked.events, checked.data))
        self._wake.set()

    async def cancel(self, request: CancelRequest) -> int:
        """Cancel a run (or a function's runs); returns how many were cancelled."""
        self._batch.cancels.append(request)
        count: int = await self._command("cancel")
        return count

    async def replay(self, run_id: str) -> str | None:
        """Start a new run of a run's function with the same events; its id, or None."""
        self._batch.replays.append(run_id)
        new_run: str | None = await self._command("replay")
        return new_run

    async def _command(self, kind: str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._command_waiters.append((kind, future))
        self._wake.set()
        return await future

    def resume(self, worker: WorkerEntry, held: list[m.Held]) -> None:
        """A reconnecting worker still works on ``held``: give back what nobody took since.

        Queued before the worker's first checkpoint on this socket can be (the hello is
        handled before Ready is sent), and applied before checkpoints in the transaction.
        """
        for lease in held:
            self._batch.resumes.append(Resume(worker.session_id, lease.run_id, lease.fence))
        if held:
            self._wake.set()

    def lease_rejected(self, worker: WorkerEntry, run_id: str, fence: int, reason: str) -> None:
        """The worker would not take a lease: give the run to someone else at once."""
        worker.drop(run_id, fence)
        self._batch.returns.append(LeaseReturn(run_id, fence, reason))
        self._wake.set()

    def loop_stalled(self, worker: WorkerEntry, stalled: m.LoopStalled) -> int:
        """One run blocked ``worker``'s loop and cost it a socket: forgive the other runs.

        Only a session this gateway saw lost, of the same worker instance, is forgiven.
        Returns how many runs were.
        """
        lost = self._lost_sessions.pop(stalled.session_id, None)
        if lost is None or lost[0] != worker.instance_id:
            return 0
        forgiven = sorted(lost[1] - {stalled.run_id})
        self._batch.forgiven.extend(forgiven)
        self._wake.set()
        return len(forgiven)

    def worker_ready(self, worker: WorkerEntry) -> None:
        """A worker joined (or has room again): look for runs it can take."""
        self._may_be_ready(worker.functions)
        self._wake.set()

    def peer_note(self, note: PeerNote) -> None:
        """Another gateway sharing the store committed something that concerns this one."""
        functions = note.get("functions")
        if functions:
            self._may_be_ready(functions)
        wakeup = note.get("wakeup")
        if isinstance(wakeup, (int, float)):
            self._next_wakeup = _earliest(self._next_wakeup, wakeup)
            self._heard_wakeup = _earliest(self._heard_wakeup, wakeup)
        for session_id, run_id, fence in note.get("revoke") or ():
            worker = self.registry.get(session_id)
            if worker is not None:
                self._seen.pop(run_id, None)
                worker.drop(run_id, fence)
                worker.send(m.LeaseRevoked(run_id=run_id, fence=fence, reason="cancelled"))
        if note.get("registered"):
            self._reloading = asyncio.ensure_future(self._reload_functions())
        self._wake.set()

    async def _reload_functions(self) -> None:
        """Apps were registered through another gateway: route events to their functions."""
        records = await self.store.functions()
        for record in records:
            self._index(record)
        await self._keep_served(records)
        self._schedules_changed(records)
        self._may_be_ready(r.id for r in records if r.active)
        self._wake.set()

    async def _keep_served(self, records: list[FunctionRecord]) -> None:
        """A registration through another gateway turned off functions that workers connected
        here serve on the same app version (one app id, two programs): turn them back on."""
        lost: dict[str, set[str]] = {}
        by_id = {r.id: r for r in records}
        for worker in self.registry:
            for fid in worker.functions:
                record = by_id.get(fid)
                if (record is not None and not record.active
                        and worker.apps.get(record.app_id) == record.app_version):
                    lost.setdefault(fid, set()).add(worker.instance_id)
        if not lost:
            return
        log.warning(
            "app_conflict", app_ids=sorted({by_id[f].app_id for f in lost}),
            functions=sorted(lost), instances=sorted(set().union(*lost.values())),
            hint="another gateway registered the app with other functions; these stay "
                 "active while workers connected here serve them. Give each program its own "
                 "App id, or serve the same functions from every worker of the app",
        )
        try:
            await self.store.activate_functions(sorted(lost), now=self.clock.now())
        except Exception as exc:  # the next registration or reload tries again
            log.error("functions_not_reactivated", functions=sorted(lost), error=str(exc))
            return
        for fid in lost:
            record = by_id[fid]
            record.active = True
            self._index(record)

    def worker_gone(self, worker: WorkerEntry, reason: str, *, lost: bool = True) -> None:
        """The worker's socket closed: every lease it held goes back to the queue."""
        for run_id in worker.in_flight:
            self._seen.pop(run_id, None)
        if lost and worker.in_flight:
            # Counted, logged, and remembered a while for a LoopStalled that may follow.
            self.metrics.leases_dropped(len(worker.in_flight))
            log.warning("leases_lost", session_id=worker.session_id,
                        instance_id=worker.instance_id, reason=reason,
                        count=len(worker.in_flight), run_ids=sorted(worker.in_flight)[:20])
            self._lost_sessions[worker.session_id] = (worker.instance_id,
                                                      frozenset(worker.in_flight))
            while len(self._lost_sessions) > 256:
                del self._lost_sessions[next(iter(self._lost_sessions))]
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
                await self._upkeep()  # before _idle: close() must not return meanwhile
                self._idle.set()
                await self._sleep()
                self._idle.clear()
                continue
            batch, waiters, commands = self._take()
            self._in_flight = waiters, commands
            if self.crash_on is not None and any(e.name == self.crash_on for e in batch.events):
                raise RuntimeError(f"test fault: an event named {self.crash_on!r} arrived")
            started = time.perf_counter()
            try:
                result = await self.store.write(batch)
            except Exception as exc:  # the store failed: answer no one with success
                self.metrics.batch_failed()
                self.failing = True
                self._note_error("batch", exc)
                log.error("batch_failed", error=str(exc), exc_info=True)
                self._fail(batch, waiters, commands, exc)
                await self.clock.sleep(0.2)
                continue
            self.failing = False
            self.metrics.committed(batch, result, time.perf_counter() - started,
                                   _refused_events(waiters, result))
            if result.errors:
                self._item_errors(result)
            self._deliver(batch, waiters, result)
            self._answer(commands, result)
            self._in_flight = [], []

    async def _upkeep(self) -> None:
        """Nothing to commit: the store's upkeep runs now rather than inside a commit (what
        arrives meanwhile waits for it, as it would for a commit)."""
        try:
            await self.store.idle()
        except Exception as exc:  # upkeep only: the next commits do it as they did before
            log.warning("store_upkeep_failed", error=str(exc))

    def abandon(self, reason: str) -> None:
        """The loop died: answer everyone still waiting for a commit, so nobody hangs."""
        error = StoreUnavailable(f"the gateway's engine stopped ({reason}); retry shortly")
        events, commands = self._in_flight
        waiting = [f for _, f in self._event_waiters + events]
        waiting += [f for _, f in self._command_waiters + commands]
        self._event_waiters, self._command_waiters = [], []
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Commit what is pending, then stop the loop."""
        self._closed = True
        self._wake.set()
        await self._idle.wait()

    def _has_work(self) -> bool:
        if self._batch.has_writes() or self._find_wakeup or self._ticks_due:
            return True
        # Runs may be ready for a function that a worker with room serves.
        return bool(self._maybe_ready) and any(
            not self._maybe_ready.isdisjoint(w.functions) for w in self.registry.free_slots())

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
            self._timer_fired()

    def _timer_fired(self) -> None:
        """Something came due: look for ready runs of every function, and for the next time."""
        self._next_wakeup = None
        self._find_wakeup = True
        self._maybe_ready.update(self.functions)

    def _new_batch(self) -> WriteBatch:
        return WriteBatch(now=0.0, match=self.triggers.match, listens=self.triggers.listens,
                          limits=self.limits)

    def _take(self) -> tuple[WriteBatch, list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
                             list[tuple[str, asyncio.Future[Any]]]]:
        batch, self._batch = self._batch, self._new_batch()
        waiters, self._event_waiters = self._event_waiters, []
        commands, self._command_waiters = self._command_waiters, []
        batch.now = self.clock.now()
        if self._next_wakeup is not None and self._next_wakeup <= batch.now:
            # Due while the loop was busy (it only sleeps when idle): the timer fires here.
            self._timer_fired()
        batch.find_wakeup, self._find_wakeup = self._find_wakeup, False
        self._ready_since_take = set()
        # Deadlines and ticks are looked for only when one may be due: the next due time is
        # the timer's (a batch that looks it up finds every one in the store).
        batch.due = batch.find_wakeup or self._ticks_due
        self._heard_wakeup = None
        batch.trace = self.tracing is not None
        slots = self.registry.free_slots()
        if slots:
            batch.claims = slots
            batch.claim_functions = set(self._maybe_ready)
        return batch, waiters, commands

    def _note_error(self, kind: str, error: object) -> None:
        self.last_error = {"kind": kind, "error": str(error), "at": self.clock.now()}

    def _item_errors(self, result: WriteResult) -> None:
        for (kind, index), error in result.errors.items():
            log.error("batch_item_failed", item=kind, index=index, error=error)
            self._note_error(kind, error)

    @staticmethod
    def _answer(commands: list[tuple[str, asyncio.Future[Any]]], result: WriteResult) -> None:
        answers = {"cancel": iter(result.cancelled), "replay": iter(result.replayed)}
        seen = {"cancel": 0, "replay": 0}
        for kind, future in commands:
            answer = next(answers[kind])
            error = result.errors.get((kind, seen[kind]))
            seen[kind] += 1
            if future.done():
                continue
            if error is not None:
                future.set_exception(ItemFailed(
                    f"the gateway could not apply this {kind} ({error}); nothing of it was "
                    "stored, and the rest of the gateway is unaffected"))
            else:
                future.set_result(answer)

    def health(self) -> dict[str, Any]:
        """``/health``'s view of the write path: degraded while batches fail whole."""
        return {"status": "degraded" if self.failing else "ok", "last_error": self.last_error}

    def _deliver(
        self,
        batch: WriteBatch,
        waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
        result: WriteResult,
    ) -> None:
        refused = result.refused
        # A socket's checkpoints are in the batch in the order of their numbers (its pump
        # takes them so), so its last one is its highest: the cumulative ack.
        acks = {write.session_id: write.message.seq for write in batch.checkpoints}
        for index, reason in sorted(refused.items()) if refused else ():
            write = batch.checkpoints[index]
            msg = write.message
            log.warning("checkpoint_refused", run_id=msg.run_id, fence=msg.fence,
                        session_id=write.session_id, kind=msg.type,
                        step_id=getattr(msg, "step_id", None), reason=reason)
            worker = self.registry.get(write.session_id)
            if worker is not None:
                worker.drop(msg.run_id, msg.fence)
                worker.send(m.CheckpointRefused(seq=msg.seq, run_id=msg.run_id, reason=reason))
        for session_id, upto in acks.items():
            worker = self.registry.get(session_id)
            if worker is not None:
                worker.send(m.CheckpointAck(upto=upto))

        handed_in = {(w.message.run_id, w.message.fence) for w in batch.checkpoints
                     if isinstance(w.message, _LEASE_ENDS)} if batch.resumes else set()
        for resume, function_id in zip(batch.resumes, result.resumed, strict=True):
            worker = self.registry.get(resume.session_id)
            if (resume.run_id, resume.fence) in handed_in:
                # Resumed and handed in (ended or given back) in one batch: nothing to hold,
                # but it was taken over here all the same.
                if function_id is not None:
                    log.info("lease_resumed", run_id=resume.run_id, fence=resume.fence,
                             function_id=function_id, session_id=resume.session_id,
                             handed_in=True)
                continue
            if function_id is not None and worker is not None and not worker.draining:
                worker.in_flight[resume.run_id] = resume.fence
                self._seen[resume.run_id] = batch.now
                log.info("lease_resumed", run_id=resume.run_id, fence=resume.fence,
                         function_id=function_id, session_id=resume.session_id)
            elif function_id is not None:  # gone again, or draining: back to the queue
                self._batch.returns.append(LeaseReturn(resume.run_id, resume.fence,
                                                       "worker left before its lease resumed"))
                self._wake.set()
            elif worker is not None:
                worker.send(m.LeaseRevoked(
                    run_id=resume.run_id, fence=resume.fence,
                    reason="not resumable: the run was leased again, ended or is unknown"))
        orphaned: list[str] = []
        # Asked once per batch: a debug call per lease costs more than the rest of its loop.
        debug = bool(result.leases) and log.is_enabled_for(logging.DEBUG)
        worker_of, seen, now, tracing = self.registry.get, self._seen, batch.now, self.tracing
        for lease in result.leases:
            worker = worker_of(lease.session_id)
            if worker is None or worker.draining:
                # The socket went away while we committed: give the run back at once.
                orphaned.append(lease.run_id)
                self._batch.returns.append(
                    LeaseReturn(lease.run_id, lease.fence, "worker left before the lease")
                )
                continue
            worker.in_flight[lease.run_id] = lease.fence
            if debug:
                log.debug("lease_granted", run_id=lease.run_id, function_id=lease.function_id,
                          fence=lease.fence, attempt=lease.attempt,
                          session_id=worker.session_id, instance_id=worker.instance_id)
            seen[lease.run_id] = now
            traceparent = None
            if tracing is not None:
                traceparent = tracing.leased(lease, now=now, instance_id=worker.instance_id)
            # The store's own values (and a span made here): built without validation, as
            # decoding this grant's wire map would build it.
            worker.send(unvalidated(m.LeaseGranted, {
                "type": "lease_granted", "run_id": lease.run_id, "fence": lease.fence,
                "function_id": lease.function_id, "events": lease.events,
                "memos": lease.memos, "attempts": lease.attempts,
                "deferred": lease.deferred, "attempt": lease.attempt,
                "traceparent": traceparent}))
        if orphaned:
            self._wake.set()

        # Answer HTTP senders after the workers: what the loop runs first is the frames.
        duplicates = result.duplicate_events
        for group, (events, future) in enumerate(waiters):
            if future.done():
                continue
            error = result.errors.get(("events", group))
            if error is not None:
                future.set_exception(ItemFailed(
                    f"these events could not be stored ({error}); nothing of this request "
                    "was stored, and the gateway log has the details"))
            else:
                future.set_result({e.id for e in events} & duplicates if duplicates else set())

        for revoked in result.revoked:
            self._seen.pop(revoked.run_id, None)
            worker = self.registry.get(revoked.session_id)
            log.info("lease_revoked", run_id=revoked.run_id, fence=revoked.fence,
                     reason=revoked.reason, session_id=revoked.session_id,
                     instance_id=worker.instance_id if worker is not None else None)
            if worker is not None:
                worker.drop(revoked.run_id, revoked.fence)
                worker.send(m.LeaseRevoked(run_id=revoked.run_id, fence=revoked.fence,
                                           reason=revoked.reason))

        if self.tracing is not None and result.ended:
            self.tracing.ended(result.ended)
        debug = bool(result.ended) and log.is_enabled_for(logging.DEBUG)
        for ended in result.ended:
            if ended.status == "Completed":
                if debug:
                    log.debug("run_ended", run_id=ended.run_id, function_id=ended.function_id,
                              status=ended.status)
            else:
                log.info("run_ended", run_id=ended.run_id, function_id=ended.function_id,
                         status=ended.status)

        self._ticks_due = result.more_due
        self._maybe_ready |= result.touched_functions
        self._maybe_ready -= result.drained_functions
        if batch.claims and not batch.has_writes() and not result.leases:
            # Workers had room, yet a claim-only round leased nothing: stop asking until
            # something changes (a safety net; drained functions leave the set anyway).
            self._maybe_ready.clear()
        # What was said while the batch committed is newer than what its claim saw (another
        # gateway's runs committed after this claim looked): keep it.
        self._maybe_ready |= self._ready_since_take
        if batch.find_wakeup:
            self._next_wakeup = _earliest(result.next_wakeup, self._heard_wakeup)
        elif result.next_wakeup is not None:
            self._next_wakeup = _earliest(self._next_wakeup, result.next_wakeup)

    def _fail(
        self,
        batch: WriteBatch,
        waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
        commands: list[tuple[str, asyncio.Future[Any]]],
        exc: Exception,
    ) -> None:
        # It may have committed before the error came (a connection lost after COMMIT): the
        # sender cannot know, so it sends again, and ids make that safe.
        error = StoreUnavailable(
            f"the store did not confirm the commit ({exc}); retry the request: events sent "
            "again with the same ids are stored once"
        )
        for future in [f for _, f in waiters] + [f for _, f in commands]:
            if not future.done():
                future.set_exception(error)
        # Unacknowledged checkpoints are resent by workers after they reconnect. Leases the
        # batch may have committed were never sent: the sessions that could have taken one
        # are dropped too, which gives back whatever they hold.
        closed = {w.session_id for w in batch.checkpoints}
        closed.update(slots.session_id for slots in batch.claims)
        for session_id in closed:
            worker = self.registry.get(session_id)
            if worker is not None:
                worker.close(1011, "store unavailable; reconnect and resend checkpoints")
        # What those sockets sent while the write failed follows the lost checkpoints: it
        # must not commit without them (a run would end without a step's result, and the
        # cumulative ack would cover the lost one). It is resent after them.
        self._batch.checkpoints = [w for w in self._batch.checkpoints
                                   if w.session_id not in closed]
        self._find_wakeup = self._find_wakeup or batch.find_wakeup
        # Releases and returns must not be forgotten: their runs would stay leased.
        self._batch.releases.extend(batch.releases)
        self._batch.returns.extend(batch.returns)
        self._batch.forgiven.extend(batch.forgiven)


def _earliest(known: float | None, other: float | None) -> float | None:
    """The earlier of two wake-up times, either of which may be unknown (None)."""
    if known is None:
        return other
    return known if other is None else min(known, other)


def _refused_events(waiters: list[tuple[list[NewEvent], asyncio.Future[set[str]]]],
                    result: WriteResult) -> int:
    """Events of the batch whose request failed alone (not stored)."""
    if not result.errors:
        return 0
    return sum(len(events) for group, (events, _) in enumerate(waiters)
               if ("events", group) in result.errors)


def _conflict_hint(app: AppManifest) -> str:
    return (f"workers register app {app.id!r} (version {app.version!r}) with different "
            "functions; each function stays active while a worker serving it is connected. "
            "Give each program its own App id, or serve the same functions from every worker "
            "of the app")
