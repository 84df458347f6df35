"""One write batch, applied inside one database transaction. Written once for every backend.

The phases, in order (each may add work for the later ones):

1. **events**: store new events (an id seen in the dedup window is skipped) and create a run
   for every function they trigger (with its ``cancel_on`` waits and start deadline);
2. **checkpoints**: fence check, then record steps, sleeps, waits (looking back for events
   that raced them), child runs, sent events, suspensions and run endings;
3. **commands**: API cancellations and replays, leases handed back, workers gone;
4. **deadlines**: cancel runs past ``timeouts.start`` / ``timeouts.finish`` (only in a batch
   the engine marks ``due``, or one that wrote a deadline already past: see
   :meth:`Transaction._deadlines`);
5. **waits**: offer every event stored in this batch (including system events born of run
   endings in this batch) to the waits on its name; a match resumes or cancels a run. A wait
   matches only events stored after its run's own events (``after_seq``), never its trigger;
6. **ticks**: cron schedules that came due start their run (one per (function, tick), see
   :meth:`Transaction._fire_schedules`; only in a ``due`` batch);
7. **claims**: lease ready runs to workers with free slots, first settling their due sleeps,
   wait timeouts and invoke timeouts.

Rows are written once where the batch can: a run created ready, that nothing but the claim
can touch before the commit (no flow control, no ``cancel_on``, no start deadline, not invoked
nor replayed), is written by the claim phase, already leased if it is leased
(:meth:`Transaction._unclaimed`); a step at its first attempt is inserted, not upserted
(:meth:`Transaction._write_steps`).

An event whose ``ts`` lies in the future (a delayed event) creates its runs at once, queued
with ``available_at`` = ``ts``: they start then, and can be cancelled until then.

A run's ending is handled in one place (:meth:`Transaction.end_run`): it clears the run's
waits, answers its parent if it was invoked, cancels its children if it was cancelled, revokes
its lease, and emits the ``tether/function.*`` system events.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import dispatch, loop_guard
from gateway.flow import admission, queues, windows
from gateway.flow.concurrency import backlog_full
from gateway.flow.timing import timing
from gateway.runs import (
    FINAL_STATUSES,
    RunEvent,
    RunStatus,
    StepStatus,
    edge,
    next_status,
    suspension,
)
from gateway.scheduler import order
from gateway.scheduler.waits import MISSING, NO_INDEX, index_for, key_at
from gateway.store.base import (
    DEDUP_WINDOW,
    MAX_LEASE_LOSSES,
    CancelRequest,
    CheckpointWrite,
    Lease,
    NewEvent,
    Resume,
    Revocation,
    RunEnded,
    WriteBatch,
    WriteResult,
)
from gateway.store.db import Db, Row
from protocol import cron, hot
from protocol import messages as m
from protocol.durations import MAX_SLEEP, YEAR, human
from protocol.errors import InvalidInput
from protocol.expressions import matches
from protocol.ids import new_id
from protocol.manifest import FunctionConfig, TriggerCron
from protocol.names import FUNCTION_CANCELLED as CANCELLED
from protocol.names import FUNCTION_FAILED as FAILED
from protocol.names import FUNCTION_FINISHED as FINISHED
from protocol.names import FUNCTION_INVOKED as INVOKED
from protocol.tracecontext import clean

#: A run-ending produces system events under these names.

#: Statuses from which a run can be leased once ``available_at`` has come.
READY = (RunStatus.QUEUED, RunStatus.SLEEPING, RunStatus.WAITING)
#: Step statuses the gateway still has to resolve.
PENDING_STEPS = (StepStatus.RETRYING, StepStatus.SLEEPING, StepStatus.WAITING,
                 StepStatus.INVOKING)

#: Guard against a loop of events triggering events within one batch.
MAX_EVENTS_PER_BATCH = 100_000

#: Due cron schedules one batch fires at most (more: the next batch follows at once).
SCHEDULES_PER_BATCH = 1000

#: A due deadline another gateway holds locked (PostgreSQL's SKIP LOCKED passed it over) is
#: looked at again this long after.
LOCKED_DEADLINE_RETRY = 0.1

#: Where the moves the store applies to runs in bulk lead (gateway.runs.TRANSITIONS): every
#: status a run changes to in this module comes from the lifecycle table, here or through
#: next_status() where the run's status is at hand.
LEASED = edge(RunEvent.LEASED)
RELEASED = edge(RunEvent.RELEASED)
LEASE_LOST = edge(RunEvent.LEASE_LOST)
WOKEN = edge(RunEvent.WOKEN)
#: The event that gives a run each final status it may be given by end_run().
_ENDING = {RunStatus.COMPLETED: RunEvent.COMPLETED, RunStatus.FAILED: RunEvent.ABORTED,
           RunStatus.CANCELLED: RunEvent.CANCELLED}

#: insert_run's concurrency columns for a run without limits.
_NO_SLOTS = (None, None, None, None)

ConfigLookup = Callable[[Db, str], Awaitable[FunctionConfig | None]]


def error_json(name: str, message: str, stack: str | None = None) -> str:
    return json.dumps({"name": name, "message": message, "stack": stack})


def error_of(info: m.ErrorInfo) -> str:
    return error_json(info.name, info.message, info.stack)


def error_from_json(text: str | None) -> m.ErrorInfo | None:
    if text is None:
        return None
    raw = json.loads(text)
    return m.ErrorInfo(name=raw["name"], message=raw["message"], stack=raw.get("stack"))


def event_json(name: str, event_id: str, ts: int, data: bytes, user: bytes = b"null") -> bytes:
    """An event's JSON around ``data`` (and ``user``), already JSON: spliced, never encoded
    again."""
    return b"".join((b'{"name":', orjson.dumps(name), b',"data":', data, b',"id":',
                     orjson.dumps(event_id), b',"ts":', str(ts).encode(), b',"user":', user,
                     b"}"))


class Triggers:
    """Trigger payloads of runs created and not leased yet, by run id (single-event runs
    outside debounce and batch windows: their events never change).

    Under load a run is leased by a later batch than the one that created it; kept by the
    store's writer across batches, its lease then reads no event back. Only the writer's
    transactions use it. A run created by a batch that rolled back is never leased (its entry
    ages out); one leased elsewhere (another gateway) too. Bounded by payload bytes: the
    oldest go first, and a run whose payload went is read back as before.
    """

    __slots__ = ("_bytes", "_payloads", "max_bytes")

    def __init__(self, max_bytes: int = 8 * 2**20) -> None:
        self._payloads: dict[str, bytes] = {}
        self._bytes = 0
        self.max_bytes = max_bytes

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._payloads

    def add(self, run_id: str, payload: bytes) -> None:
        payloads = self._payloads
        self._bytes += len(payload) - len(payloads.pop(run_id, b""))
        payloads[run_id] = payload
        while self._bytes > self.max_bytes:
            self._bytes -= len(payloads.pop(next(iter(payloads))))

    def pop(self, run_id: str) -> bytes | None:
        payload = self._payloads.pop(run_id, None)
        if payload is not None:
            self._bytes -= len(payload)
        return payload


@dataclass(slots=True)
class _Run:
    """What the checkpoint phase needs to know of a run, kept current during the batch."""

    fence: int
    status: str
    function_id: str
    state_bytes: int
    parent: tuple[str, str] | None  # (run id, step id) of the run that invoked this one
    steps: int  # steps recorded so far (for --max-steps)


@dataclass(slots=True)
class _Stored:
    """An event stored in this batch, to offer to the waits on its name."""

    seq: int
    name: str
    payload: bytes
    data: dict[str, Any]


class Transaction:
    """Applies one :class:`WriteBatch`; see the module docstring for the phases."""

    def __init__(self, db: Db, batch: WriteBatch, config: ConfigLookup,
                 triggers: Triggers | None = None) -> None:
        self.db = db
        self.batch = batch
        self.now = batch.now
        self._config = config
        self.result = WriteResult()
        self.touched: set[str] = set()
        self.stored: list[_Stored] = []
        self._listens: dict[str, bool] = {}
        self._new_runs: list[tuple[Any, ...]] = []
        self._new_links: list[tuple[str, int, int]] = []
        # New runs that nothing but this batch's claim can touch before it commits, by
        # function (see _unclaimed): written by the claim, already leased if it leases them
        # (one write of the row, not an insert then an update), else queued.
        self._defer = False  # run() only: its claim phase writes them
        self._unwritten: dict[str, list[tuple[Any, ...]]] = {}
        self._claimed: dict[str, tuple[Any, ...]] = {}  # taken from _unwritten by the claim
        # Step rows this batch wrote or will write, and runs given back to a reconnected
        # worker: a step outside both, at its first attempt, is written by a plain insert
        # (see _write_steps).
        self._fresh_steps = False  # run() only (see run_isolated)
        self._step_keys: set[tuple[str, str]] = set()
        self._resumed: set[str] = set()
        # (hold option, hold key, priority, arrival, run id) of new runs with flow control,
        # and the runs that fail at once (a throttle key that gave no key).
        self._flow: list[tuple[Any, ...]] = []
        self._flow_failures: list[tuple[str, str]] = []
        # Trigger payloads of runs created lately (this batch, or earlier ones of the store's
        # writer): a lease of one needs no query.
        self._triggers = Triggers() if triggers is None else triggers
        self._wakeups: list[float] = []
        # A deadline written in this batch is already past: the deadline phase must run (or,
        # once it has, the engine must come back at once).
        self._deadline_past = False
        self._deadlines_done = False
        self._endings: list[tuple[Any, ...]] = []
        self._last_seq = 0  # the highest event seq stored in this batch so far
        # Steps recorded per run in this batch, not yet added to its step_count.
        self._counted: dict[str, int] = {}
        # (function, tick) rows of cron_ticks to prune below: older than a day.
        self._prune: list[tuple[str, int]] = []
        # Flow-control keys this batch locked and has yet to write (gateway.flow.admission).
        self._admissions = admission.Admissions()
        # How many runs each concurrency queue gained in the batch, not yet written
        # (max_queued).
        self._queued: dict[str, int] = {}
        # Throttle keys read (and locked) in this batch, with their TAT (gateway.flow.timing).
        self._tats: dict[tuple[str, str], float | None] = {}
        self._claimer = queues.Claimer()
        # Debounce and batch windows (gateway.flow.windows): all their state is in the store.
        self._windows = windows.Windows()

    async def run(self) -> WriteResult:
        batch = self.batch
        self._defer = self._fresh_steps = True
        if batch.events:
            await self.ingest(batch.events)
        for resume in batch.resumes:
            self.result.resumed.append(await self._resume(resume))
        if batch.checkpoints:
            await self._checkpoints(list(enumerate(batch.checkpoints)))
        for request in batch.cancels:
            self.result.cancelled.append(await self._cancel_request(request))
        for run_id in batch.replays:
            self.result.replayed.append(await self._replay(run_id))
        for ret in batch.returns:
            await self._return(ret.run_id, ret.fence)
        for release in batch.releases:
            await self._release(release.session_id, release.reason, release.lost)
        for run_id in batch.forgiven:  # after the releases that counted the loss
            await self.db.execute("forgive_lease_loss", run_id)
        await self._deadlines()
        await self._match_waits()
        await self._fire_schedules()
        return await self._lease_and_finish()

    async def run_isolated(self, store_errors: tuple[type[BaseException], ...]) -> WriteResult:
        """:meth:`run`, each item in its own savepoint: what fails is undone and answered alone.

        The batch comes here after :meth:`run` raised (rare: everything was checked before it
        entered the batch). An event request that fails is refused (``result.errors``); a
        checkpoint that fails fails its run for good, with the error, so a resent one is
        refused instead of failing again. ``store_errors`` mean the store itself failed: they
        end the batch as before.
        """
        batch, result = self.batch, self.result
        # Every row is written in the item that makes it: nothing waits for the claim (outside
        # every item's savepoint), and no step is written by a plain insert (a conflict here
        # would fail its item instead of being retried).
        start = 0
        for group, size in enumerate(batch.event_groups or [1] * len(batch.events)):
            events = batch.events[start:start + size]
            start += size
            error = await self._isolated(store_errors, self.ingest(events))
            if error is not None:
                result.errors[("events", group)] = error
        for resume in batch.resumes:
            resumed: list[str | None] = []
            await self._isolated(store_errors, self._resume_into(resume, resumed))
            result.resumed.append(resumed[0] if resumed else None)
        for index, write in enumerate(batch.checkpoints):
            error = await self._isolated(store_errors, self._checkpoints([(index, write)]))
            if error is not None:
                await self._checkpoint_failed(store_errors, index, write, error)
        for index, request in enumerate(batch.cancels):
            counted: list[int] = []
            error = await self._isolated(store_errors, self._count(request, counted))
            result.cancelled.append(counted[0] if counted else 0)
            if error is not None:
                result.errors[("cancel", index)] = error
        for index, run_id in enumerate(batch.replays):
            replayed: list[str | None] = []
            error = await self._isolated(store_errors, self._replay_into(run_id, replayed))
            result.replayed.append(replayed[0] if replayed else None)
            if error is not None:
                result.errors[("replay", index)] = error
        for index, ret in enumerate(batch.returns):
            error = await self._isolated(store_errors, self._return(ret.run_id, ret.fence))
            if error is not None:
                result.errors[("return", index)] = error
        for index, release in enumerate(batch.releases):
            # Left leased if it fails: the next start of the gateway requeues them.
            error = await self._isolated(store_errors, self._release(
                release.session_id, release.reason, release.lost))
            if error is not None:
                result.errors[("release", index)] = error
        for run_id in batch.forgiven:  # after the releases that counted the loss
            await self._isolated(store_errors, self.db.execute("forgive_lease_loss", run_id))
        for index, (run_id, started_at, function_id) in enumerate(
                await self._due_deadlines()):
            error = await self._isolated(store_errors,
                                         self._deadline(run_id, started_at, function_id))
            if error is not None:
                result.errors[("deadline", index)] = error
                await self._isolated(store_errors, self._end_plain(run_id, error_json(
                    "InternalError", f"the run's deadline could not be applied ({error}); "
                    "the run was failed")))
        await self._deadlines_left()
        # Each event stored is offered to its waits alone; one that fails resolves nothing.
        stored, self.stored = self.stored, []
        for index, event in enumerate(stored):
            self.stored.append(event)
            error = await self._isolated(store_errors, self._match_waits())
            if error is not None:
                result.errors[("waits", index)] = error
            self.stored.clear()
        error = await self._isolated(store_errors, self._fire_schedules())
        if error is not None:
            result.errors[("ticks", 0)] = error
        return await self._lease_and_finish()

    async def _lease_and_finish(self) -> WriteResult:
        """The batch's end, whichever way its items were applied: lease, then find when the
        engine must wake up next."""
        batch = self.batch
        await self._slots_freed()
        self.result.touched_functions = self.touched
        if batch.claims:
            await self._claim(self.touched | batch.claim_functions)
        await self._write_unclaimed()
        if batch.find_wakeup:
            await self._find_wakeup()
        self.result.next_wakeup = min(self._wakeups, default=None)
        return self.result

    async def _slots_freed(self) -> None:
        """Runs that ended may have freed concurrency slots: their functions may start more
        (with an app-scoped limit, every function of the app that uses one)."""
        apps: set[str] = set()
        for fn in {e.function_id for e in self.result.ended} | self.touched:
            config = await self._config(self.db, fn)
            if config is None or not config.concurrency:
                continue
            self.touched.add(fn)
            if any(c.scope == "app" for c in config.concurrency):
                apps.add(queues.app_of(fn))
        for app in sorted(apps):
            for (fn,) in await self.db.fetch("app_function_ids", app):
                config = await self._config(self.db, fn)
                if config is not None and any(c.scope == "app" for c in config.concurrency):
                    self.touched.add(fn)

    async def _isolated(self, store_errors: tuple[type[BaseException], ...],
                        work: Awaitable[Any]) -> str | None:
        """Run ``work`` in a savepoint; on failure undo it (store and memory) and say why."""
        marks = self._marks()
        try:
            async with self.db.savepoint():
                await work
                await self._flush_runs()
                await self._write_endings([])
        except store_errors:
            raise
        except Exception as exc:
            self._undo(marks)
            return f"{type(exc).__name__}: {exc}"
        return None

    def _marks(self) -> tuple[Any, ...]:
        result = self.result
        return (len(self.stored), len(self._wakeups), len(result.ended), len(result.revoked),
                set(self.touched), dict(result.refused), dict(result.flow_skipped),
                len(result.flow_delayed))

    def _undo(self, marks: tuple[Any, ...]) -> None:
        stored, wakeups, ended, revoked, touched, refused, skipped, delayed = marks
        result = self.result
        del self.stored[stored:], self._wakeups[wakeups:], result.flow_delayed[delayed:]
        del result.ended[ended:], result.revoked[revoked:]
        self.touched, result.refused, result.flow_skipped = touched, refused, skipped
        self._new_runs, self._new_links, self._endings = [], [], []
        self._unwritten, self._claimed = {}, {}
        self._flow, self._flow_failures = [], []
        self._queued = {}
        self._tats = {}
        self._counted = {}
        self._admissions.reset()

    async def _checkpoint_failed(self, store_errors: tuple[type[BaseException], ...],
                                 index: int, write: CheckpointWrite, error: str) -> None:
        """A checkpoint that cannot be applied fails its run for good (if its lease is current)."""
        msg = write.message
        failed = error_json("InternalError", f"the gateway could not apply a {msg.type} "
                            f"checkpoint ({error}); the run was failed so that it does not fail "
                            "again on every resend")
        ended: list[bool] = []
        self.result.errors[("checkpoint", index)] = error
        await self._isolated(store_errors, self._end_plain(msg.run_id, failed, msg.fence, ended))
        self.result.refused[index] = (f"the gateway could not apply this checkpoint ({error})"
                                      + ("; the run failed" if ended else ""))

    async def _end_plain(self, run_id: str, error: str, fence: int | None = None,
                         ended: list[bool] | None = None) -> None:
        """End a run as failed with nothing that follows (no system events, no parent answer):
        the last resort when :meth:`end_run` itself fails."""
        row = await self.db.fetchone("run_for_end", run_id)
        if row is None or row[5] in FINAL_STATUSES or (fence is not None and row[2] != fence):
            return
        await self.db.execute("end_run", RunStatus.FAILED, None, error, self.now, run_id)
        await self.db.execute("delete_waits", run_id)
        self.result.ended.append(RunEnded(run_id, row[0], RunStatus.FAILED))
        if row[1] is not None:
            self.result.revoked.append(Revocation(row[1], run_id, row[2], "failed"))
        if ended is not None:
            ended.append(True)

    async def _count(self, request: CancelRequest, into: list[int]) -> None:
        into.append(await self._cancel_request(request))

    async def _replay_into(self, run_id: str, into: list[str | None]) -> None:
        into.append(await self._replay(run_id))

    async def _resume(self, resume: Resume) -> str | None:
        """Give a reconnecting worker back its lease (same fence) if nobody took the run since;
        the run's function, or None (the worker is told to drop it)."""
        row = await self.db.fetchone("resume_lease", resume.session_id, resume.run_id,
                                     resume.fence, LEASED)
        if row is None:
            return None
        self._resumed.add(resume.run_id)  # its resent checkpoints may follow in this batch
        return str(row[0])

    async def _resume_into(self, resume: Resume, into: list[str | None]) -> None:
        into.append(await self._resume(resume))

    async def _return(self, run_id: str, fence: int) -> None:
        row = await self.db.fetchone("return_lease", self.now, run_id, fence, RELEASED)
        if row:
            self.touched.add(row[0])

    async def _deadline(self, run_id: str, started_at: float | None, function_id: str) -> None:
        """Cancel a run past a deadline: ``timeouts.start`` until the run starts (its first
        lease), ``timeouts.finish`` from then on (see :meth:`_first_lease`)."""
        config = await self._config(self.db, function_id)
        timeouts = config.timeouts if config is not None else None
        if started_at is None:
            limit = timeouts.start if timeouts is not None else None
            reason, since = "not started within timeouts.start", "it was queued"
        else:
            limit = timeouts.finish if timeouts is not None else None
            reason, since = "not finished within timeouts.finish", "it started"
        if limit is not None:
            reason += f" ({float(limit):g} s after {since})"  # type: ignore[arg-type]
        await self.end_run(run_id, RunStatus.CANCELLED,
                           error=error_json("Timeout", f"cancelled: {reason}"))

    def _later(self, when: float | None) -> None:
        """Something becomes due at ``when``: the engine must wake up for it."""
        if when is not None and when > self.now:
            self._wakeups.append(when)

    def _deadline_at(self, when: float) -> None:
        """A run's deadline was written: the engine wakes up for it. One already past is
        applied by this batch's deadline phase, or by the next batch, at once, if the phase
        has run (the engine checks deadlines only when something is due)."""
        if when > self.now:
            self._wakeups.append(when)
        elif self._deadlines_done:
            self._wakeups.append(self.now)
        else:
            self._deadline_past = True

    async def _find_wakeup(self) -> None:
        """Search the store for the next due time (after a timer fired; one seek each)."""
        for (function_id,) in await self.db.fetch("all_function_ids"):
            self._later(await self.db.fetchval("next_ready", function_id, self.now))
        self._later(await self.db.fetchval("next_deadline", self.now))
        self._later(await self.db.fetchval("next_schedule", self.now))

    # --- events and runs -----------------------------------------------------------------

    async def ingest(self, events: list[NewEvent], *, match: bool = True,
                     about: tuple[str, int] | None = None) -> list[int | None]:
        """Store events (skipping duplicates) and start the runs they trigger.

        ``about`` marks system events: (function id of the run they report, chain link), for
        the loop guard. Returns each event's seq, or None for a duplicate.
        """
        db, now = self.db, self.now
        seen = {row[0] for row in await db.fetch(
            "recent_event_ids", [e.id for e in events], now - DEDUP_WINDOW)}
        fresh: list[NewEvent] = []
        for event in events:
            if event.id in seen:
                self.result.duplicate_events.add(event.id)
            else:
                seen.add(event.id)
                fresh.append(event)
        if not fresh:
            return [None] * len(events)
        # Share each name's lock: a wait stored for the name meanwhile waits for this to
        # commit, then looks back and sees these events (see _wait_requested).
        await db.fetch("lock_event_names", sorted({e.name for e in fresh}))
        reserved = [row[0] for row in await db.fetch("reserve_event_seqs", len(fresh))]
        self._last_seq = max(self._last_seq, *reserved)
        await db.executemany("insert_event", [
            (seq, e.id, e.name, e.payload, now, e.traceparent)
            for seq, e in zip(reserved, fresh, strict=True)
        ])
        by_event = {id(e): seq for seq, e in zip(reserved, fresh, strict=True)}
        for event in fresh:
            seq = by_event[id(event)]
            data = event.data if event.data is not None else orjson.loads(event.payload)
            if len(self.stored) < MAX_EVENTS_PER_BATCH:
                self.stored.append(_Stored(seq, event.name, event.payload, data))
            if match:
                targets = self.batch.match(event.name, data)
                if about is not None and targets:
                    targets = loop_guard.targets(targets, about=about[0], link=about[1])
                if not targets:
                    continue
                ts = data.get("ts")
                # A delayed event (ts in the future): its runs wait until then.
                start = ts / 1000 if isinstance(ts, int) and ts > self.now * 1000 else None
                for function_id in targets:
                    await self.create_run(function_id, [(seq, event.id)], event.payload, data,
                                          available_at=start)
        await self._flush_runs()
        return [by_event.get(id(e)) for e in events]

    async def create_run(
        self,
        function_id: str,
        events: list[tuple[int, str]],
        trigger: bytes,
        trigger_data: dict[str, Any],
        *,
        parent: tuple[str, str] | None = None,
        after_seq: int | None = None,
        available_at: float | None = None,
        replay: bool = False,
    ) -> str | None:
        """Queue a run of ``function_id`` for ``events`` ((seq, id) pairs); None if unknown.

        Its ``cancel_on`` waits match events with a seq above ``after_seq`` (by default the
        highest of ``events``): never its own trigger, nor an event stored before it. A run
        of a delayed event is ``available_at`` its ``ts`` (``timeouts.start`` counts from then).
        Flow control decides first (:mod:`gateway.flow.admission`): a refused run is recorded
        ``Skipped`` (its id is still returned); ``replay`` marks a replay, which only
        ``singleton`` holds back.
        """
        config = await self._config(self.db, function_id)
        if config is None:
            return None
        run_id = new_id(self.now)
        slots = None
        if config.concurrency:
            slots = queues.place(function_id, config, trigger_data)
            full = await self._backlog(function_id, config, slots)
            if full is not None:
                await self._skip_run(run_id, function_id, events, full, parent)
                return run_id
        held = admission.ADMIT
        if admission.applies(config):
            held = await self._admissions.admit(self.db, function_id, config, trigger_data,
                                                self.now, replay=replay)
            if held.skip is not None:
                await self._skip_run(run_id, function_id, events, held.skip, parent)
                return run_id
            if held.cancel is not None:
                await self._flush_runs()  # the live run may be one created in this batch
                await self.end_run(held.cancel, RunStatus.CANCELLED, error=error_json(
                    "Cancelled", f"singleton: run {run_id} of the same key started (mode "
                    "'cancel')"))
        start = self.now if available_at is None else max(self.now, available_at)
        if after_seq is None:
            after_seq = max(seq for seq, _ in events)
        window = None
        if (windows.applies(config) and not replay and parent is None and len(events) == 1
                and start <= self.now):
            # Invocations, replays and delayed events start with their own events: they join
            # nobody's window.
            placed = await self._windows.place(self.db, function_id, config, events[0][1],
                                               trigger_data, self.now)
            if placed.run_id is not None:
                await self._grow_window(function_id, config, placed, events[0][0], trigger,
                                        trigger_data)
                return placed.run_id
            if placed.failure is not None:
                self._flow_failures.append((run_id, placed.failure))
            elif not placed.own:
                window = placed
                assert placed.key is not None
                start = placed.start
                self._flow.append((placed.option, placed.key.display, 0, after_seq, run_id))
                if start > self.now:
                    self.result.flow_delayed.append(placed.option)
        if config.throttle is not None or config.priority is not None:
            flow = await timing(self.db, function_id, config, trigger_data, start, self.now,
                                self._tats)
            start = flow.start
            self._flow.append((flow.hold[0] if flow.hold else None,
                               flow.hold[1] if flow.hold else None, flow.priority, after_seq,
                               run_id))
            if flow.failure is not None:
                self._flow_failures.append((run_id, flow.failure))
            if flow.hold is not None:
                self.result.flow_delayed.append(flow.hold[0])
        self._later(start)
        deadline = None
        if config.timeouts is not None and config.timeouts.start is not None:
            deadline = start + float(config.timeouts.start)  # type: ignore[arg-type]
            self._deadline_at(deadline)
        row = (
            run_id, function_id, start, orjson.dumps([e[1] for e in events]).decode(), self.now,
            parent[0] if parent else None, parent[1] if parent else None, deadline,
            *(_NO_SLOTS if slots is None or slots.failure is not None
              else self._conc_row(run_id, slots)[:4]),
        )
        if (self._defer and parent is None and not replay and start <= self.now
                and _claim_only(config)):
            self._unwritten.setdefault(function_id, []).append(row)
        else:
            self._new_runs.append(row)
        self._new_links.extend((run_id, i, seq) for i, (seq, _) in enumerate(events))
        if window is None and len(events) == 1:
            # The lease needs no query; a window's events change until it starts, and a run
            # of several events (a replayed batch) gets them all: the lease reads those.
            self._triggers.add(run_id, trigger)
        for index, cancel in enumerate(config.cancel_on):
            expires = None if cancel.timeout is None else self.now + float(cancel.timeout)  # type: ignore[arg-type]
            await self._insert_wait(run_id, f"cancel:{index}", "cancel", cancel.event,
                                    cancel.if_, trigger, trigger_data, expires, after_seq)
        if slots is not None:
            self._place(run_id, slots)
        if start <= self.now:
            self.touched.add(function_id)
        self.result.runs_created += 1
        self.result.created_functions.append(function_id)
        self._admissions.started(run_id, held)
        if window is not None:
            assert window.key is not None
            await self._flush_runs()  # the next event of the key may grow this run
            if window.open:
                await self.db.execute("set_window", run_id, window.first_at, window.start,
                                      function_id, window.key.hash)
            else:
                await self.db.execute("close_window", function_id, window.key.hash)
        return run_id

    def _place(self, run_id: str, placed: queues.Placement) -> None:
        """A new run takes its concurrency slots (written with its row, by insert_run)."""
        if placed.failure is not None:
            self._flow_failures.append((run_id, placed.failure))
            return
        self._queued[placed.queue] = self._queued.get(placed.queue, 0) + 1

    @staticmethod
    def _conc_row(run_id: str, placed: queues.Placement) -> tuple[Any, ...]:
        slots = placed.slots
        return (slots[0], slots[1] if len(slots) > 1 else None, placed.queue, placed.shown,
                run_id)

    async def _backlog(self, function_id: str, config: FunctionConfig,
                       placed: queues.Placement) -> admission.Skip | None:
        """The skip of a run whose concurrency queue is full (``max_queued``), or None."""
        bounds = [c.max_queued for c in config.concurrency if c.max_queued is not None]
        if not bounds or placed.failure is not None:
            return None
        bound = min(bounds)
        waiting = self._queued.get(placed.queue, 0) + await self.db.fetchval(
            "conc_waiting", function_id, placed.queue, bound)
        message = backlog_full(waiting, bound)
        return None if message is None else admission.Skip("backlog_full", placed.shown,
                                                           message)
    async def _grow_window(self, function_id: str, config: FunctionConfig,
                           placed: windows.Placement, seq: int, trigger: bytes,
                           trigger_data: dict[str, Any]) -> None:
        """An event joined the open window of run ``placed.run_id`` (locked by ``place``):
        the run gets it, and its start moves (later for a debounce, now when it is full)."""
        db, run_id = self.db, placed.run_id
        assert run_id is not None and placed.key is not None
        start = placed.start
        deadline = None
        if config.timeouts is not None and config.timeouts.start is not None:
            deadline = start + float(config.timeouts.start)  # type: ignore[arg-type]
            self._deadline_at(deadline)
        await db.execute("grow_window_run", json.dumps(list(placed.events)), start, deadline,
                         seq, run_id)
        if placed.replace:  # a plain debounce keeps the last event only
            await db.execute("delete_run_events", run_id)
        await db.execute("insert_run_event", run_id, len(placed.events) - 1, seq)
        if placed.open:
            await db.execute("set_window", run_id, placed.first_at, placed.start,
                             function_id, placed.key.hash)
        else:
            await db.execute("close_window", function_id, placed.key.hash)
        self._triggers.pop(run_id)
        if placed.replace and config.concurrency:
            # Its key follows the run's event, now this one ("debounce, then concurrency").
            slots = queues.place(function_id, config, trigger_data)
            if slots.failure is None:
                await self._flush_runs()
                await db.execute("set_run_concurrency", *self._conc_row(run_id, slots))
        if placed.replace and config.cancel_on:
            # cancel_on's ``event`` is the run's event, now this one: its waits follow it.
            await db.execute("delete_waits", run_id)
            for index, cancel in enumerate(config.cancel_on):
                expires = None if cancel.timeout is None else self.now + float(cancel.timeout)  # type: ignore[arg-type]
                await self._insert_wait(run_id, f"cancel:{index}", "cancel", cancel.event,
                                        cancel.if_, trigger, trigger_data, expires, seq)
        if start <= self.now:
            self.touched.add(function_id)
        self._later(start)

    async def _skip_run(self, run_id: str, function_id: str, events: list[tuple[int, str]],
                        skip: admission.Skip, parent: tuple[str, str] | None) -> None:
        """Record a run flow control refused: ``Skipped`` at once, with why (SPEC §4)."""
        await self.db.execute(
            "insert_skipped_run", run_id, function_id,
            orjson.dumps([e[1] for e in events]).decode(), self.now,
            parent[0] if parent else None, parent[1] if parent else None, skip.json())
        await self.db.executemany("insert_run_event", [
            (run_id, i, seq) for i, (seq, _) in enumerate(events)])
        self.result.runs_created += 1
        self.result.created_functions.append(function_id)
        self.result.ended.append(RunEnded(run_id, function_id, RunStatus.SKIPPED))
        skipped = self.result.flow_skipped
        skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
        if parent is not None:  # the invoker's step fails: the run it asked for never starts
            await self._answer_parent(parent[0], parent[1], RunStatus.SKIPPED, None,
                                      error_json("Skipped", skip.message))

    # --- cron ticks ----------------------------------------------------------------------

    async def _fire_schedules(self) -> None:
        """Start a run for each cron tick that came due (see :mod:`protocol.cron`).

        A schedule's row is claimed by the batch that reads it (on PostgreSQL other gateways
        skip it until this commits); the (function, tick) key in ``cron_ticks`` makes a tick
        start one run whatever races, so exactly one run per tick.
        """
        if not self.batch.due:
            return  # no tick is due: the engine knows the next one (schedules are its wake-ups)
        db, now = self.db, self.now
        rows = await db.fetch("due_schedules", now, SCHEDULES_PER_BATCH)
        fired: list[tuple[str, NewEvent]] = []
        upcoming_ticks: list[tuple[float, str, str, str]] = []
        for function_id, expression, tz, next_at in rows:
            if not await self._schedules_of(function_id, expression, tz):
                await db.execute("delete_schedule", function_id, expression, tz)
                continue  # the function or its trigger is gone (a registration missed it)
            try:
                schedule = cron.parse(expression, tz)
            except InvalidInput:  # stored before a rule changed: it can never tick
                await db.execute("delete_schedule", function_id, expression, tz)
                continue
            fire, upcoming = cron.due(schedule, next_at, now)
            if fire is not None and fire > next_at:
                skipped = cron.missed(schedule, next_at, fire)
                self.result.ticks_missed[function_id] = (
                    self.result.ticks_missed.get(function_id, 0) + skipped)
            while fire is not None:
                event = await self._tick(function_id, expression, fire)
                if event is not None:
                    fired.append((function_id, event))
                fire, upcoming = cron.due(schedule, upcoming, now)
            upcoming_ticks.append((upcoming, function_id, expression, tz))
            self._later(upcoming)
        await db.executemany("set_next_tick", upcoming_ticks)
        await db.executemany("prune_cron_ticks", self._prune)  # ticks older than a day
        self._prune = []
        if fired:
            seqs = await self.ingest([event for _, event in fired], match=False)
            for (function_id, event), seq in zip(fired, seqs, strict=True):
                if seq is not None:
                    assert event.data is not None
                    await self.create_run(function_id, [(seq, event.id)], event.payload,
                                          event.data)
            await self._flush_runs()
        if len(rows) == SCHEDULES_PER_BATCH:
            self.result.more_due = True

    async def _schedules_of(self, function_id: str, expression: str, tz: str) -> bool:
        """Does the active function still declare this cron trigger? Asked of the stored
        config when the cached one says no (another gateway may have just registered it)."""
        def declares(config: FunctionConfig | None) -> bool:
            return config is not None and any(
                isinstance(t, TriggerCron) and (t.cron, t.tz) == (expression, tz)
                for t in config.triggers)

        if declares(await self._config(self.db, function_id)):
            return True
        raw = await self.db.fetchval("function_config", function_id)
        return raw is not None and declares(FunctionConfig(**json.loads(raw)))

    async def _tick(self, function_id: str, expression: str, tick: float) -> NewEvent | None:
        """The event of one tick's run, unless this (function, tick) started one already."""
        tick_ms = round(tick * 1000)
        if not await self.db.execute("insert_cron_tick", function_id, tick_ms):
            return None
        self._prune.append((function_id, tick_ms - round(DEDUP_WINDOW * 1000)))
        event_id = f"cron-{function_id}-{tick_ms}"
        body = {"name": cron.SCHEDULED_EVENT, "data": {"cron": expression}, "id": event_id,
                "ts": tick_ms, "user": None}
        return NewEvent(event_id, cron.SCHEDULED_EVENT, orjson.dumps(body), body)

    async def _flush_runs(self) -> None:
        """Write the runs created so far (batched: a request of 500 events is 2 statements)."""
        if self._new_runs:
            await self.db.executemany("insert_run", self._new_runs)
            self._new_runs = []
            self._queued = {}  # the store counts them now (max_queued)
        if self._new_links:  # those of runs the claim writes too (see _unclaimed)
            await self.db.executemany("insert_run_event", self._new_links)
            self._new_links = []
        await self._admissions.flush(self.db)
        if self._flow:
            await self.db.executemany("set_run_flow", self._flow)
            self._flow = []
        failures, self._flow_failures = self._flow_failures, []
        for run_id, reason in failures:  # a flow-control key that gave no key: see timing
            await self.end_run(run_id, RunStatus.FAILED, error=error_json("FlowControlError",
                                                                          reason))

    async def _replay(self, run_id: str) -> str | None:
        row = await self.db.fetchone("run_for_replay", run_id)
        if row is None:
            return None
        function_id, = row
        events = await self.db.fetch("run_event_rows", run_id)
        if not events:
            return None
        trigger = events[0][2]
        # Created now: events stored before now (in this batch too) do not cancel it.
        new_run = await self.create_run(function_id, [(r[0], r[1]) for r in events], trigger,
                                        orjson.loads(trigger),
                                        after_seq=max(self._last_seq, *(r[0] for r in events)),
                                        replay=True)
        await self._flush_runs()
        return new_run

    # --- checkpoints ---------------------------------------------------------------------

    async def _checkpoints(self, writes: list[tuple[int, CheckpointWrite]]) -> None:
        """Apply ``writes`` ((index in the batch, checkpoint)) in order."""
        db, now, result = self.db, self.now, self.result
        limits = self.batch.limits
        runs: dict[str, _Run] = {
            row[0]: _Run(row[1], row[2], row[3], row[4], (row[5], row[6]) if row[5] else None,
                         row[7])
            for row in await db.fetch(
                "checkpoint_runs", list({w.message.run_id for _, w in writes}))
        }
        steps: list[tuple[Any, ...]] = []
        growth: dict[str, int] = {}
        suspended: list[str] = []
        max_steps, counted = limits.max_steps, self._counted
        for index, write in writes:
            msg = write.message
            run = runs.get(msg.run_id)
            refusal = _refusal(run, msg)
            if refusal is not None:
                result.refused[index] = refusal
                continue
            assert run is not None
            # A run's end, as the socket decodes it, skips the tests against every step kind.
            end = type(msg) is hot.RunCompleted
            failure = write.invalid
            if failure is not None:
                # Malformed (see gateway.intake): the run fails for good, the worker is told.
                result.refused[index] = f"invalid checkpoint: {failure}; the run failed"
                failure = error_json("InvalidCheckpoint", f"the worker sent {failure}")
            elif not end and isinstance(msg, _STEP_CHECKPOINTS):
                if run.steps < max_steps:  # counted (a resend twice: see _count_step)
                    run.steps += 1
                    counted[msg.run_id] = counted.get(msg.run_id, 0) + 1
                else:
                    failure = await self._count_step(run, msg.run_id, msg.step_id, steps,
                                                     growth)
            if failure is None and isinstance(msg, _SIZED) and len(
                    msg.output) > limits.max_step_result:
                what = (f"step {msg.step_id!r} returned" if isinstance(msg, hot.STEP_COMPLETED)
                        else "the function returned")
                failure = error_json(
                    "LimitExceeded",
                    f"{what} {len(msg.output) / 2**20:.1f} MiB, over the "
                    f"{limits.max_step_result / 2**20:.1f} MiB limit (--max-step-result); "
                    "keep large data outside step results")
            if failure is not None:
                # The SDK never sends these; a worker that does fails its run, not the gateway.
                await self._flush_steps(steps, growth)
                await self.end_run(msg.run_id, RunStatus.FAILED, error=failure)
                run.status = RunStatus.FAILED
            elif isinstance(msg, hot.STEP_COMPLETED):
                steps.append((msg.run_id, msg.step_id, "run", StepStatus.COMPLETED,
                              msg.attempt + 1, msg.output, None, None, msg.started_at,
                              msg.ended_at))
                growth[msg.run_id] = growth.get(msg.run_id, 0) + len(msg.output)
                run.state_bytes += len(msg.output)
                if run.state_bytes > limits.max_run_state:
                    await self._flush_steps(steps, growth)
                    await self.end_run(msg.run_id, RunStatus.FAILED, error=error_json(
                        "LimitExceeded",
                        f"the run's recorded state is {run.state_bytes / 2**20:.1f} MiB, over "
                        f"the {limits.max_run_state / 2**20:.0f} MiB limit; keep large data "
                        "outside step results"))
                    run.status = RunStatus.FAILED
            elif isinstance(msg, hot.RUN_COMPLETED):  # the kinds exclude each other: any order
                await self._warnings(msg.run_id, msg.warnings)
                await self._finish(msg.run_id, run, RunStatus.COMPLETED,
                                   write.data or msg.output, None)
            elif isinstance(msg, m.StepFailed):
                status = StepStatus.FAILED if msg.final else StepStatus.RETRYING
                steps.append((msg.run_id, msg.step_id, "run", status, msg.attempt + 1, None,
                              error_of(msg.error), None if msg.final else write.retry_at,
                              msg.started_at, msg.ended_at))
                growth.setdefault(msg.run_id, 0)
            elif isinstance(msg, m.SleepRequested):
                wake = msg.until if msg.until is not None else now + (msg.duration or 0.0)
                too_long = wake - now > MAX_SLEEP  # a worker of another SDK may ask for more
                if await db.execute("insert_pending_step", msg.run_id, msg.step_id, "sleep",
                                    StepStatus.SLEEPING, now if too_long else wake, now,
                                    None) and too_long:
                    await db.execute("resolve_step", StepStatus.FAILED, None, error_json(
                        "SleepTooLong", f"step.sleep {msg.step_id!r}: longer than the "
                        f"longest sleep, one year ({human(MAX_SLEEP)})"),
                        now, msg.run_id, msg.step_id)
            elif isinstance(msg, m.WaitRequested):
                await self._wait_requested(msg, write.since)
            elif isinstance(msg, m.InvokeRequested):
                await self._invoke_requested(msg, write.data or msg.data)
            elif isinstance(msg, m.EventsSent):
                await self._events_sent(msg, write.events)
            elif isinstance(msg, m.RunFailed):
                await self._warnings(msg.run_id, msg.warnings)
                if msg.final:
                    await self._finish(msg.run_id, run, RunStatus.FAILED, None,
                                       error_of(msg.error))
                else:
                    # Steps completed earlier in this batch reset the attempt: write them
                    # first, so this failure's count is the one kept.
                    await self._flush_steps(steps, growth)
                    retry_at = write.retry_at if write.retry_at is not None else now
                    if run.status != RunStatus.RUNNING:
                        continue  # requeued already (a resend after a restart): done
                    run.status = next_status(run.status, RunEvent.FAILED_RETRY)
                    await db.execute("requeue_run", retry_at, msg.attempt + 1,
                                     error_of(msg.error), msg.run_id, run.status)
                    self._later(retry_at)
                    run.status = RunStatus.QUEUED
                    self.touched.add(run.function_id)
            elif isinstance(msg, m.RunSuspended):
                suspended.append(msg.run_id)
                run.status = RunStatus.QUEUED
            elif isinstance(msg, m.LeaseReleased):
                if run.status != RunStatus.RUNNING:
                    continue  # already back in the queue (a resend after a restart): done
                run.status = next_status(run.status, RunEvent.RELEASED)
                await db.execute("requeue_run", now, None, None, msg.run_id, run.status)
                self.touched.add(run.function_id)
        endings = self._fold_progress(growth)
        await self._flush_steps(steps, growth)
        await self._write_endings(endings)
        for run_id in suspended:
            await self._suspend(run_id)

    async def _finish(self, run_id: str, run: _Run, status: str, output: bytes | None,
                      error: str | None) -> None:
        """:meth:`end_run` for a run that returned or failed, its row written in bulk later."""
        final = RunEvent.COMPLETED if status == RunStatus.COMPLETED else RunEvent.FAILED_FINAL
        run.status = next_status(run.status, final)
        self._endings.append((status, output, error, self.now, run_id))
        self.result.ended.append(RunEnded(run_id, run.function_id, status))
        if run.parent is not None:
            await self._answer_parent(*run.parent, status, output, error)
        await self._system_events(run_id, run.function_id, status, output, error)

    def _fold_progress(self, growth: dict[str, int]) -> list[tuple[Any, ...]]:
        """The progress of runs that end in this batch, taken out of ``growth`` and the step
        counts: their end writes it (``finish_run``), so the row is written once, not twice.

        Each row: (bytes of results recorded, steps counted, 1 if a step was recorded): what
        ``run_progressed`` or ``add_steps`` would have added, in the order of the endings.
        """
        counted, folded = self._counted, []
        for ending in self._endings:
            run_id = ending[4]
            size = growth.pop(run_id, None)
            folded.append((size or 0, counted.pop(run_id, 0), 0 if size is None else 1))
        return folded

    async def _write_endings(self, progress: list[tuple[Any, ...]]) -> None:
        """Write the ends :meth:`_finish` recorded, with the progress :meth:`_fold_progress`
        took for them (none: ``progress`` is empty)."""
        if not self._endings:
            return
        progress = progress or [(0, 0, 0)] * len(self._endings)
        await self.db.executemany("finish_run", [
            (*ending, *more) for ending, more in zip(self._endings, progress, strict=True)])
        await self.db.executemany("delete_waits", [(e[4],) for e in self._endings])
        self._endings = []

    async def _warnings(self, run_id: str, warnings: list[str]) -> None:
        """What the worker noticed about the run (rarely anything), kept on its record."""
        if warnings:
            await self.db.execute("set_run_warnings", orjson.dumps(warnings).decode(), run_id)

    async def _count_step(self, run: _Run, run_id: str, step_id: str,
                          steps: list[tuple[Any, ...]], growth: dict[str, int]) -> str | None:
        """A step of a run at ``--max-steps`` by its count: the error if it is one too many.

        The count is cheap and may count a step twice (a resend, a retry and its success in
        one batch); here, at the limit, it is made exact, so no run fails for a resend.
        """
        limit = self.batch.limits.max_steps
        await self._flush_steps(steps, growth)
        if await self.db.fetchval("step_exists", run_id, step_id):
            return None  # recorded before: not a new step
        run.steps = await self.db.fetchval("recount_steps", run_id)
        if run.steps >= limit:
            return error_json(
                "LimitExceeded",
                f"step {step_id!r} would be step {run.steps + 1} of the run, over the "
                f"{limit} steps limit (--max-steps); split the work into several runs "
                "(step.invoke or send_event)")
        run.steps += 1
        self._counted[run_id] = self._counted.get(run_id, 0) + 1
        return None

    async def _flush_steps(self, steps: list[tuple[Any, ...]], growth: dict[str, int]) -> None:
        if steps:
            if self._fresh_steps:
                await self._write_steps(steps)
            else:
                await self.db.executemany("upsert_step", steps)
            steps.clear()
        counted = self._counted
        if growth:
            await self.db.executemany("run_progressed", [
                (size, run_id, counted.pop(run_id, 0)) for run_id, size in growth.items()])
            growth.clear()
        if counted:
            await self.db.executemany("add_steps", [(n, r) for r, n in counted.items()])
            counted.clear()

    async def _write_steps(self, steps: list[tuple[Any, ...]]) -> None:
        """Write step rows (upsert_step's), each new one by a plain insert.

        A step is taken for new at its first attempt (a retry's row exists), the first time
        this batch writes it, unless its run was given back to a reconnected worker in this
        batch (which resends what it sent before). The worker runs only the steps its lease
        did not memoize, so what else is in the table already is a checkpoint sent again
        (after a reconnect, its acknowledgement lost) or a worker that broke the protocol: the
        insert then fails, and the store applies the batch again with every step upserted
        (PostgreSQL: :class:`gateway.store.postgres.PgDb`; SQLite's insert_step is the upsert,
        which costs it no more). A row is never lost nor written twice either way.
        """
        keys, resumed = self._step_keys, self._resumed
        fresh: list[tuple[Any, ...]] = []
        known: list[tuple[Any, ...]] = []
        for row in steps:
            key = (row[0], row[1])
            if row[4] == 1 and key not in keys and row[0] not in resumed:
                fresh.append(row)
            else:
                known.append(row)  # after its first write, which is in ``fresh`` or flushed
            keys.add(key)
        await self.db.executemany("insert_step", fresh)
        await self.db.executemany("upsert_step", known)

    async def _suspend(self, run_id: str) -> None:
        """Every branch of the run waits: sleep until the earliest pending step is due."""
        pending = {row[0]: row for row in await self.db.fetch("pending_steps", run_id)}
        available: float | None = self.now
        status = next_status(RunStatus.RUNNING, suspension(pending))
        if pending:
            dues = [row[1] for row in pending.values() if row[1] is not None]
            available = min(dues) if dues else None
        self._later(available)
        row = await self.db.fetchone("suspend_run", status, available, run_id)
        if row is not None:
            self.touched.add(row[0])

    async def _wait_requested(self, msg: m.WaitRequested, since: float) -> None:
        db, now = self.db, self.now
        if not await db.execute("insert_pending_step", msg.run_id, msg.step_id, "wait",
                                StepStatus.WAITING, now + msg.timeout, now, None):
            return  # already waiting (a replay asked again): keep the first wait
        # Exclusively: writers storing events of this name (elsewhere) finish first, so the
        # look-back below sees them; later ones see this wait when they match.
        await db.execute("lock_event_name_for_wait", msg.event)
        row = await db.fetchone("run_trigger_and_seq", msg.run_id)
        trigger, after_seq = (row[0], row[1] or 0) if row else (None, 0)
        trigger_data = orjson.loads(trigger) if trigger else {}
        await self._insert_wait(msg.run_id, msg.step_id, "wait", msg.event, msg.if_,
                                trigger or b"{}", trigger_data, now + msg.timeout, after_seq)
        # Look back: an event may have arrived after the run reached the wait on the worker
        # but before this checkpoint was stored. Never the run's own events, nor older ones.
        for payload, in await db.fetch("events_since", msg.event, since, after_seq):
            candidate = orjson.loads(payload)
            if matches(msg.if_, {"event": trigger_data, "async": candidate}):
                await self._resolve_wait(msg.run_id, msg.step_id, payload)
                return

    async def _insert_wait(self, run_id: str, step_id: str, kind: str, event: str,
                           if_: str | None, trigger: bytes, trigger_data: dict[str, Any],
                           expires: float | None, after_seq: int) -> None:
        """File a wait; it matches only events whose seq is above ``after_seq``."""
        index = index_for(if_, trigger_data) if if_ else NO_INDEX
        await self.db.execute("insert_wait", run_id, step_id, kind, event, if_, index.path,
                              index.key, trigger, expires, self.now, after_seq)
        self._listens[event] = True

    async def _invoke_requested(self, msg: m.InvokeRequested, data: bytes) -> None:
        """``data`` is the invoke's JSON object, checked and re-encoded (gateway.intake)."""
        db, now = self.db, self.now
        wake = now + (YEAR if msg.timeout is None else msg.timeout)  # Inngest's default too
        if not await db.execute("insert_pending_step", msg.run_id, msg.step_id, "invoke",
                                StepStatus.INVOKING, wake, now, None):
            return  # the child already exists
        config = await self._config(db, msg.function_id)
        if config is None:
            await db.execute("resolve_step", StepStatus.FAILED, None, error_json(
                "FunctionNotFound",
                f"step.invoke: no active function {msg.function_id!r}; check the id "
                "('app/fn-id') and that a worker serving it has connected"),
                now, msg.run_id, msg.step_id)
            return
        event_id = f"{msg.run_id}-{msg.step_id}-invoke"
        user = _invoke_user(msg.user)
        body = {"name": INVOKED, "data": orjson.loads(data), "id": event_id,
                "ts": int(now * 1000), "user": user}
        payload = event_json(INVOKED, event_id, int(now * 1000), data, orjson.dumps(user))
        (seq,) = await self.ingest([NewEvent(event_id, INVOKED, payload, body,
                                             clean(msg.traceparent))], match=False)
        if seq is None:
            return
        child = await self.create_run(msg.function_id, [(seq, event_id)], payload, body,
                                      parent=(msg.run_id, msg.step_id))
        await self._flush_runs()
        await db.execute("set_step_child", child, msg.run_id, msg.step_id)

    async def _events_sent(self, msg: m.EventsSent, events: list[NewEvent] | None) -> None:
        """``events`` are the step's events, checked and encoded (gateway.intake)."""
        if events is None:  # a caller that skipped intake: decode as sent
            events = []
            for raw in msg.events:
                body = orjson.loads(raw)
                events.append(NewEvent(str(body["id"]), str(body["name"]), raw, body,
                                       clean(msg.traceparent)))
        ids = orjson.dumps([e.id for e in events])
        if not await self.db.execute("insert_done_step", msg.run_id, msg.step_id, "send_event",
                                     ids, self.now):
            return  # recorded before: the events were stored then
        await self.db.execute("reset_attempt", msg.run_id)  # a completed step
        await self.ingest(events)

    # --- endings, cancellation -----------------------------------------------------------

    async def end_run(self, run_id: str, status: str, *, output: bytes | None = None,
                      error: str | None = None) -> bool:
        """Give a run its final status and everything that follows from it.

        Returns False when the run had already ended.
        """
        db, now = self.db, self.now
        row = await db.fetchone("run_for_end", run_id)
        if row is None or row[5] in FINAL_STATUSES:
            return False
        function_id, session_id, fence, parent_run, parent_step, current = row
        status = next_status(current, _ENDING[RunStatus(status)])  # refuses a move it lacks
        await db.execute("end_run", status, output, error, now, run_id)
        self.result.ended.append(RunEnded(run_id, function_id, status))
        await db.execute("delete_waits", run_id)
        if session_id is not None:
            # Ended by the gateway (cancelled, over a limit, ...) while a worker holds it.
            self.result.revoked.append(Revocation(session_id, run_id, fence, status.lower()))
        await db.execute("end_pending_steps", now, run_id)
        if status == RunStatus.CANCELLED:
            for (child,) in await db.fetch("live_children", run_id):
                await self.end_run(child, RunStatus.CANCELLED,
                                   error=error_json("Cancelled", "its parent run was cancelled"))
        if parent_run is not None:
            await self._answer_parent(parent_run, parent_step, status, output, error)
        await self._system_events(run_id, function_id, status, output, error)
        return True

    async def _answer_parent(self, run_id: str, step_id: str, status: str,
                             output: bytes | None, error: str | None) -> None:
        if status == RunStatus.COMPLETED:
            done = await self.db.execute("resolve_step", StepStatus.COMPLETED,
                                         output or b"null", None, self.now, run_id, step_id)
            if done:
                await self.db.execute("reset_attempt", run_id)  # a completed step
        else:
            info = error_from_json(error)
            message = info.message if info else status
            done = await self.db.execute(
                "resolve_step", StepStatus.FAILED, None,
                error_json(info.name if info else status,
                           f"the invoked run {status.lower()}: {message}"),
                self.now, run_id, step_id)
        if done:
            await self._wake(run_id)

    async def _system_events(self, run_id: str, function_id: str, status: str,
                             output: bytes | None, error: str | None) -> None:
        """Emit ``tether/function.*`` for a run's end, to those who listen.

        The output, error and triggering event are spliced in as the bytes already stored:
        nothing is encoded again, so a payload near the encoder's depth limit cannot fail
        here. The loop guard (:mod:`gateway.loop_guard`) decides which functions they start.
        """
        names = [FINISHED]
        if status == RunStatus.FAILED:
            names.append(FAILED)
        elif status == RunStatus.CANCELLED:
            names.append(CANCELLED)
        names = [n for n in names if await self._listened(n)]
        if not names:
            return
        stored = await self.db.fetchval("run_trigger", run_id)
        trigger = bytes(stored) if stored else b"null"
        trigger_data = orjson.loads(trigger)
        error_bytes = error.encode() if error is not None else b"null"
        data_json = b"".join((
            b'{"function_id":', orjson.dumps(function_id), b',"run_id":', orjson.dumps(run_id),
            b',"status":', orjson.dumps(status), b',"output":', output or b"null",
            b',"error":', error_bytes, b',"event":', trigger, b"}"))
        data = {
            "function_id": function_id, "run_id": run_id, "status": status,
            "output": orjson.loads(output) if output is not None else None,
            "error": json.loads(error) if error is not None else None, "event": trigger_data,
        }
        link = loop_guard.chain_length(trigger_data) + 1
        ts = int(self.now * 1000)
        events = []
        for name in names:
            event_id = f"{run_id}-{name.rsplit('.', 1)[1]}"
            body = {"name": name, "data": data, "id": event_id, "ts": ts, "user": None}
            events.append(NewEvent(event_id, name, event_json(name, event_id, ts, data_json),
                                   body))
        await self.ingest(events, about=(function_id, link))

    async def _listened(self, name: str) -> bool:
        """Does any function or wait listen for ``name``? (Unheard system events aren't kept.)"""
        known = self._listens.get(name)
        if known is None:
            known = self.batch.listens(name) or bool(await self.db.fetchval("has_waits", name))
            self._listens[name] = known
        return known

    async def _cancel_request(self, request: CancelRequest) -> int:
        # Bulk cancels arrive as run ids: their filter was evaluated outside the transaction.
        ids = [request.run_id] if request.run_id is not None else request.run_ids
        count = 0
        for run_id in ids:
            if await self.end_run(run_id, RunStatus.CANCELLED,
                                  error=error_json("Cancelled", request.reason)):
                count += 1
        return count

    async def _deadlines(self) -> None:
        for run_id, started_at, function_id in await self._due_deadlines():
            await self._deadline(run_id, started_at, function_id)
        await self._deadlines_left()

    async def _due_deadlines(self) -> list[Row]:
        """The runs past a deadline, when any can be: the engine marks a batch ``due`` when
        its timer fired (it knows the next deadline, set by itself or heard from the gateways
        it shares the store with) or at start; a deadline this batch wrote already past
        counts too. Otherwise none is due, and the query is not run."""
        if not (self.batch.due or self._deadline_past):
            return []
        return await self.db.fetch("due_deadlines", self.now)

    async def _deadlines_left(self) -> None:
        """After the deadline phase: a due deadline still there was skipped, locked by another
        gateway (PostgreSQL); look again shortly, as this one may not be told."""
        if self.batch.due and await self.db.fetchval("due_deadline_left", self.now):
            self._wakeups.append(self.now + LOCKED_DEADLINE_RETRY)
        self._deadlines_done = True

    async def _release(self, session_id: str, reason: str, lost: bool) -> None:
        await self.release_runs(await self.db.fetch("session_runs", session_id), reason, lost)

    async def release_runs(self, rows: list[Any], reason: str, lost: bool) -> None:
        """Requeue leased runs ``(id, function id, lease losses)`` whose holder is gone."""
        for run_id, function_id, losses in rows:
            losses += 1 if lost else 0
            if losses >= MAX_LEASE_LOSSES:
                await self.db.execute("set_lease_losses", losses, run_id)
                await self.end_run(run_id, RunStatus.FAILED, error=error_json(
                    "LeaseLost",
                    f"the run lost its worker {losses} times in a row without progress (last: "
                    f"{reason}); a step may be crashing its worker"))
            else:
                await self.db.execute("release_run", self.now, losses, run_id, LEASE_LOST)
                self.touched.add(function_id)

    # --- waits ---------------------------------------------------------------------------

    async def _match_waits(self) -> None:
        """Offer each event stored in this batch to the waits on its name."""
        index = 0
        paths: dict[str, list[str]] = {}
        while index < len(self.stored):
            event = self.stored[index]
            index += 1
            if event.name not in paths:
                paths[event.name] = [r[0] for r in await self.db.fetch("wait_paths", event.name)]
            for path in paths[event.name]:
                key = key_at(event.data, path) if path else ""
                if key == MISSING:
                    continue
                for run_id, step_id, kind, if_, trigger, expires in await self.db.fetch(
                        "waits_for", event.name, path, key, event.seq):
                    if expires is not None and expires <= self.now:
                        continue
                    if if_ and not matches(if_, {"event": orjson.loads(trigger),
                                                 "async": event.data}):
                        continue
                    if kind == "wait":
                        await self._resolve_wait(run_id, step_id, event.payload)
                    elif await self.db.execute("delete_wait", run_id, step_id):
                        await self.end_run(run_id, RunStatus.CANCELLED, error=error_json(
                            "Cancelled", f"cancelled by event {event.name!r} (cancel_on)"))

    async def _resolve_wait(self, run_id: str, step_id: str, payload: bytes) -> None:
        if not await self.db.execute("delete_wait", run_id, step_id):
            return  # someone else resolved it
        if await self.db.execute("resolve_step", StepStatus.COMPLETED, payload, None, self.now,
                                 run_id, step_id):
            await self.db.execute("reset_attempt", run_id)  # a completed step
            await self._wake(run_id)

    async def _wake(self, run_id: str) -> None:
        """A pending step of a suspended run resolved: the run is ready now."""
        row = await self.db.fetchone("wake_run", self.now, run_id, WOKEN)
        if row is not None:
            self.touched.add(row[0])

    # --- claims --------------------------------------------------------------------------

    async def _claim(self, wanted: set[str]) -> None:
        db, now, result = self.db, self.now, self.result
        workers = [w for w in self.batch.claims if w.free > 0]
        served: dict[str, int] = {}
        for w in workers:
            for fn in w.functions:
                served[fn] = served.get(fn, 0) + w.free
        candidates: list[tuple[Any, ...]] = []
        rank: dict[str, float] = {}  # a run's place: available_at, less its priority
        configs = {fn: await self._config(db, fn) for fn in wanted if served.get(fn, 0) > 0}
        limited = {fn for fn, config in configs.items() if config is not None
                   and config.concurrency}
        if limited:  # one lock call, in one order: claims elsewhere wait for this commit
            await db.fetch("lock_concurrency", sorted({
                o for fn in limited for o in queues.owners(fn, configs[fn])}))  # type: ignore[arg-type]
        for fn, config in configs.items():
            limit = served[fn]
            # Rows come back locked where the backend can lock (PostgreSQL's SKIP LOCKED),
            # so the fences read here are the ones the update below bumps.
            if fn in limited:
                assert config is not None
                rows, drained = await self._claimer.claim(db, fn, config, now, limit)
                if drained:
                    result.drained_functions.add(fn)
                if config.priority is not None:
                    rank.update((r[1], r[7]) for r in rows)
                candidates.extend(tuple(r[:6]) for r in rows)
                continue
            # Runs already started first, then runs not yet started (gateway.scheduler.order).
            rows = list(await db.fetch("ready_resumed_runs", fn, now, limit))
            fresh = limit - len(rows)
            if fresh > 0 and config is not None and config.priority is not None:
                ranked = await db.fetch("ready_runs_by_priority", fn, now, fresh)
                rank.update((r[1], r[6]) for r in ranked)
                rows += [tuple(r[:6]) for r in ranked]
            elif fresh > 0:
                rows += await db.fetch("ready_runs", fn, now, fresh)
                rows += self._unclaimed(fn, limit - len(rows))
            if len(rows) < limit:
                result.drained_functions.add(fn)
            candidates.extend(rows)
        if not candidates:
            return
        # Stable: a function's runs keep the order its queries gave (priority, then arrival).
        candidates.sort(key=lambda c: order.lease_key(c, rank.get(c[1])))
        by_id = {c[1]: c for c in candidates}
        assigned = dispatch.assign(workers, [(c[1], c[2]) for c in candidates])
        if len(assigned) < len(candidates):
            # Ready runs read (and locked) but not leased: another gateway that skipped them
            # may believe their function has nothing ready. Say it has.
            taken = {run_id for run_id, _ in assigned}
            left = {c[2] for c in candidates if c[1] not in taken}
            self.touched.update(left)
            # Nor is a function drained that still has runs ready (many functions with a
            # run each, more than the free slots: ten thousand cron ticks at once).
            result.drained_functions -= left
        unwritten = self._claimed
        if unwritten:
            await self._insert_leased(assigned)
        await db.executemany("lease_run", [(session_id, now, run_id, LEASED)
                                           for run_id, session_id in assigned
                                           if run_id not in unwritten])
        await self._leases([(run_id, session_id, *by_id[run_id][2:], by_id[run_id][0])
                            for run_id, session_id in assigned])

    def _unclaimed(self, function_id: str, wanted: int) -> list[tuple[Any, ...]]:
        """Up to ``wanted`` runs of ``function_id`` created by this batch and not written yet,
        as claim rows (fence 0, not started), in the order they were created.

        They go after the runs the claim queries found: those were ready at ``now`` or
        before, and these are ready from ``now``. What the claim does not lease is written
        queued (:meth:`_write_unclaimed`).
        """
        rows = self._unwritten.get(function_id)
        if not rows or wanted <= 0:
            return []
        taken, rows[:wanted] = rows[:wanted], []
        for row in taken:
            self._claimed[row[0]] = row
        return [(row[2], row[0], function_id, 0, 0, None) for row in taken]

    async def _insert_leased(self, assigned: list[tuple[str, str]]) -> None:
        """Write the runs taken from :meth:`_unclaimed`: leased as ``lease_run`` would leave
        them (fence 1, started now, no ``available_at``, the session's), or queued, as
        ``insert_run`` writes them, when no worker got them."""
        claimed, self._claimed = self._claimed, {}
        leased = [(row[0], row[1], LEASED, row[3], row[4], row[7], session_id, self.now)
                  for row, session_id in ((claimed.get(run_id), session_id)
                                          for run_id, session_id in assigned)
                  if row is not None]
        taken = {row[0] for row in leased}
        await self.db.executemany("insert_leased_run", leased)
        await self.db.executemany("insert_run", [row for run_id, row in claimed.items()
                                                 if run_id not in taken])

    async def _write_unclaimed(self) -> None:
        """Write the runs the claim did not take (or all of them: no claim) queued."""
        rows = [row for runs in self._unwritten.values() for row in runs]
        rows += self._claimed.values()  # taken by a claim that leased nothing
        self._unwritten, self._claimed = {}, {}
        await self.db.executemany("insert_run", rows)

    async def _leases(self, assigned: list[tuple[Any, ...]]) -> None:
        """Build the leases of runs just taken, with a handful of set-based queries.

        ``assigned`` holds (run id, session, function id, fence before, attempt, started_at,
        available_at).
        Runs leased before (resumed) first have their due timers settled, then get their
        recorded steps back as memos.
        """
        db, now = self.db, self.now
        resumed = [a[0] for a in assigned if a[5] is not None]
        steps: dict[str, list[Row]] = {}
        reset: set[str] = set()  # runs a step of which completed now: a fresh body budget
        if resumed:
            await db.execute("settle_due_waits", resumed, now)
            reset = {run_id for run_id, status in await db.fetch(
                "settle_due_steps", resumed, now, b"null", error_json(
                    "InvokeTimeout", "the invoked run did not finish within the timeout"))
                if status == StepStatus.COMPLETED}
            if reset:
                await db.executemany("reset_attempt", [(run_id,) for run_id in sorted(reset)])
            for row in await db.fetch("steps_of_runs", resumed):
                steps.setdefault(row[0], []).append(row)
        parents: dict[str, str | None] = {}
        if self.batch.trace:  # the gateway traces: each run's span continues its event's
            parents = {row[0]: row[1] for row in await db.fetch(
                "trace_parents_of_runs", [a[0] for a in assigned])}
        triggers = self._triggers
        missing = [a[0] for a in assigned if a[0] not in triggers]
        payloads: dict[str, list[bytes]] = {}
        if missing:
            for run_id, payload in await db.fetch("event_payloads_of_runs", missing):
                payloads.setdefault(run_id, []).append(payload)
        for run_id, session_id, function_id, fence, attempt, started_at, ready in assigned:
            if run_id in reset:
                attempt = 0
            if started_at is None:
                await self._first_lease(run_id, function_id)
            fresh = triggers.pop(run_id)
            events = [fresh] if fresh is not None else payloads.get(run_id, [])
            memos: dict[str, m.StepMemo] = {}
            attempts: dict[str, int] = {}
            deferred: list[str] = []
            for _, step_id, kind, status, output, error, tries, wake in steps.get(run_id, ()):
                if status == StepStatus.COMPLETED:
                    memos[step_id] = m.StepMemo(kind=kind, output=output)
                elif status == StepStatus.FAILED:
                    memos[step_id] = m.StepMemo(kind=kind, error=error_from_json(error))
                elif status == StepStatus.RETRYING:
                    attempts[step_id] = tries
                    if wake is not None and wake > now:
                        deferred.append(step_id)
                else:  # sleeping, waiting, invoking: the gateway still owes the result
                    deferred.append(step_id)
            self.result.leases.append(Lease(run_id, fence + 1, session_id, function_id, events,
                                            memos, attempts, attempt, deferred,
                                            started_at is None, ready,
                                            parents.get(run_id)))

    async def _first_lease(self, run_id: str, function_id: str) -> None:
        """A run starts: ``timeouts.start`` is met, and the ``timeouts.finish`` clock starts."""
        config = await self._config(self.db, function_id)
        timeouts = config.timeouts if config is not None else None
        if timeouts is None or (timeouts.start is None and timeouts.finish is None):
            return
        deadline = None
        if timeouts.finish is not None:
            deadline = self.now + float(timeouts.finish)  # type: ignore[arg-type]
            self._deadline_at(deadline)
        await self.db.execute("set_deadline", deadline, run_id)


def _claim_only(config: FunctionConfig) -> bool:
    """Can nothing but the claim touch a run of this function, created ready now, before its
    batch commits? Then its row waits for the claim (:meth:`Transaction._unclaimed`).

    Not with flow control (concurrency and priority have claims of their own; throttle,
    rate limit, idempotency, singleton, debounce and batch read or change runs as they
    admit them), ``cancel_on`` (an event of the same batch may cancel the run) or
    ``timeouts.start`` (the deadline phase reads due runs from the table). Invocations
    (``live_children`` reads a parent's children) and replays are written as before by their
    callers.
    """
    return not (config.concurrency or config.throttle is not None
                or config.priority is not None or config.cancel_on
                or admission.applies(config) or windows.applies(config)
                or (config.timeouts is not None and config.timeouts.start is not None))


#: Checkpoints that record a step (and count against ``--max-steps``).
_STEP_CHECKPOINTS = (*hot.STEP_COMPLETED, m.StepFailed, m.SleepRequested, m.WaitRequested,
                     m.InvokeRequested, m.EventsSent)
#: Checkpoints whose ``output`` counts against ``--max-step-result`` (the Structs first: a
#: miss against a pydantic class is the dearer test).
_SIZED = (hot.StepCompleted, hot.RunCompleted, m.StepCompleted, m.RunCompleted)


def _refusal(run: _Run | None, msg: hot.AnyCheckpoint) -> str | None:
    """Why a checkpoint may not be applied (invariant 1), or None."""
    if run is None:
        return f"unknown run {msg.run_id}"
    if run.status in FINAL_STATUSES:
        return f"run already {run.status}"
    if msg.fence != run.fence:
        return f"lease superseded: fence {msg.fence} is stale, the run is at fence {run.fence}"
    return None


def _invoke_user(raw: bytes | None) -> dict[str, Any] | None:
    """The ``user`` a worker gave ``step.invoke``: a JSON object, or nothing (never a failure
    inside the batch: a malformed one from a buggy worker is dropped)."""
    try:
        user = json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # RecursionError: nested too deep to decode
        return None
    return user if isinstance(user, dict) else None
