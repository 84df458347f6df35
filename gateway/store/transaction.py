"""One write batch, applied inside one database transaction. Written once for every backend.

The phases, in order (each may add work for the later ones):

1. **events**: store new events (an id seen in the dedup window is skipped) and create a run
   for every function they trigger (with its ``cancel_on`` waits and start deadline);
2. **checkpoints**: fence check, then record steps, sleeps, waits (looking back for events
   that raced them), child runs, sent events, suspensions and run endings;
3. **commands**: API cancellations and replays, leases handed back, workers gone;
4. **deadlines**: cancel runs past ``timeouts.start`` / ``timeouts.finish``;
5. **waits**: offer every event stored in this batch (including system events born of run
   endings in this batch) to the waits on its name; a match resumes or cancels a run;
6. **claims**: lease ready runs to workers with free slots, first settling their due sleeps,
   wait timeouts and invoke timeouts.

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

from gateway import dispatch
from gateway.runs import FINAL_STATUSES, RunStatus, StepStatus
from gateway.scheduler.waits import MISSING, NO_INDEX, index_for, key_at
from gateway.store.base import (
    DEDUP_WINDOW,
    MAX_LEASE_LOSSES,
    CancelRequest,
    Lease,
    NewEvent,
    Revocation,
    RunEnded,
    WriteBatch,
    WriteResult,
)
from gateway.store.db import Db, Row
from protocol import messages as m
from protocol.expressions import matches
from protocol.ids import new_id
from protocol.manifest import FunctionConfig

#: A run-ending produces system events under these names.
FINISHED = "tether/function.finished"
FAILED = "tether/function.failed"
CANCELLED = "tether/function.cancelled"
INVOKED = "tether/function.invoked"

#: Statuses from which a run can be leased once ``available_at`` has come.
READY = (RunStatus.QUEUED, RunStatus.SLEEPING, RunStatus.WAITING)
#: Step statuses the gateway still has to resolve.
PENDING_STEPS = (StepStatus.RETRYING, StepStatus.SLEEPING, StepStatus.WAITING,
                 StepStatus.INVOKING)

#: Guard against a loop of events triggering events within one batch.
MAX_EVENTS_PER_BATCH = 100_000

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


@dataclass(slots=True)
class _Run:
    """What the checkpoint phase needs to know of a run, kept current during the batch."""

    fence: int
    status: str
    function_id: str
    state_bytes: int
    parent: tuple[str, str] | None  # (run id, step id) of the run that invoked this one


@dataclass(slots=True)
class _Stored:
    """An event stored in this batch, to offer to the waits on its name."""

    seq: int
    name: str
    payload: bytes
    data: dict[str, Any]


class Transaction:
    """Applies one :class:`WriteBatch`; see the module docstring for the phases."""

    def __init__(self, db: Db, batch: WriteBatch, config: ConfigLookup) -> None:
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
        # Trigger payloads of runs created in this batch: a lease of one needs no query.
        self._triggers: dict[str, bytes] = {}
        self._wakeups: list[float] = []
        self._endings: list[tuple[Any, ...]] = []

    async def run(self) -> WriteResult:
        batch = self.batch
        if batch.events:
            await self.ingest(batch.events)
        if batch.checkpoints:
            await self._checkpoints()
        for request in batch.cancels:
            self.result.cancelled.append(await self._cancel_request(request))
        for run_id in batch.replays:
            self.result.replayed.append(await self._replay(run_id))
        for ret in batch.returns:
            row = await self.db.fetchone("return_lease", self.now, ret.run_id, ret.fence)
            if row:
                self.touched.add(row[0])
        for release in batch.releases:
            await self._release(release.session_id, release.reason, release.lost)
        await self._deadlines()
        await self._match_waits()
        self.result.touched_functions = self.touched
        if batch.claims:
            await self._claim(self.touched | batch.claim_functions)
        if batch.find_wakeup:
            await self._find_wakeup()
        self.result.next_wakeup = min(self._wakeups, default=None)
        return self.result

    def _later(self, when: float | None) -> None:
        """Something becomes due at ``when``: the engine must wake up for it."""
        if when is not None and when > self.now:
            self._wakeups.append(when)

    async def _find_wakeup(self) -> None:
        """Search the store for the next due time (after a timer fired; one seek each)."""
        for (function_id,) in await self.db.fetch("all_function_ids"):
            self._later(await self.db.fetchval("next_ready", function_id, self.now))
        self._later(await self.db.fetchval("next_deadline", self.now))

    # --- events and runs -----------------------------------------------------------------

    async def ingest(self, events: list[NewEvent], *, match: bool = True) -> list[int | None]:
        """Store events (skipping duplicates) and start the runs they trigger.

        Returns each event's seq, or None for a duplicate.
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
        await db.executemany("insert_event", [
            (seq, e.id, e.name, e.payload, now) for seq, e in zip(reserved, fresh, strict=True)
        ])
        by_event = {id(e): seq for seq, e in zip(reserved, fresh, strict=True)}
        for event in fresh:
            seq = by_event[id(event)]
            data = event.data if event.data is not None else orjson.loads(event.payload)
            if len(self.stored) < MAX_EVENTS_PER_BATCH:
                self.stored.append(_Stored(seq, event.name, event.payload, data))
            if match:
                for function_id in self.batch.match(event.name, data):
                    await self.create_run(function_id, [(seq, event.id)], event.payload, data)
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
    ) -> str | None:
        """Queue a run of ``function_id`` for ``events`` ((seq, id) pairs); None if unknown."""
        config = await self._config(self.db, function_id)
        if config is None:
            return None
        run_id = new_id(self.now)
        deadline = None
        if config.timeouts is not None and config.timeouts.start is not None:
            deadline = self.now + float(config.timeouts.start)  # type: ignore[arg-type]
            self._later(deadline)
        self._new_runs.append((
            run_id, function_id, self.now, orjson.dumps([e[1] for e in events]).decode(), self.now,
            parent[0] if parent else None, parent[1] if parent else None, deadline,
        ))
        self._new_links.extend((run_id, i, seq) for i, (seq, _) in enumerate(events))
        self._triggers[run_id] = trigger
        for index, cancel in enumerate(config.cancel_on):
            expires = None if cancel.timeout is None else self.now + float(cancel.timeout)  # type: ignore[arg-type]
            await self._insert_wait(run_id, f"cancel:{index}", "cancel", cancel.event,
                                    cancel.if_, trigger, trigger_data, expires)
        self.touched.add(function_id)
        self.result.runs_created += 1
        return run_id

    async def _flush_runs(self) -> None:
        """Write the runs created so far (batched: a request of 500 events is 2 statements)."""
        if self._new_runs:
            await self.db.executemany("insert_run", self._new_runs)
            await self.db.executemany("insert_run_event", self._new_links)
            self._new_runs, self._new_links = [], []

    async def _replay(self, run_id: str) -> str | None:
        row = await self.db.fetchone("run_for_replay", run_id)
        if row is None:
            return None
        function_id, = row
        events = await self.db.fetch("run_event_rows", run_id)
        if not events:
            return None
        trigger = events[0][2]
        new_run = await self.create_run(function_id, [(r[0], r[1]) for r in events], trigger,
                                        json.loads(trigger))
        await self._flush_runs()
        return new_run

    # --- checkpoints ---------------------------------------------------------------------

    async def _checkpoints(self) -> None:
        db, now, result = self.db, self.now, self.result
        limits = self.batch.limits
        runs: dict[str, _Run] = {
            row[0]: _Run(row[1], row[2], row[3], row[4], (row[5], row[6]) if row[5] else None)
            for row in await db.fetch(
                "checkpoint_runs", list({c.message.run_id for c in self.batch.checkpoints}))
        }
        steps: list[tuple[Any, ...]] = []
        growth: dict[str, int] = {}
        suspended: list[str] = []
        for index, write in enumerate(self.batch.checkpoints):
            msg = write.message
            run = runs.get(msg.run_id)
            refusal = _refusal(run, msg)
            if refusal is not None:
                result.refused[index] = refusal
                continue
            assert run is not None
            if isinstance(msg, m.StepCompleted) and len(msg.output) > limits.max_step_result:
                # The SDK never sends this; a worker that does fails the run, not the gateway.
                await self._flush_steps(steps, growth)
                await self.end_run(msg.run_id, RunStatus.FAILED, error=error_json(
                    "LimitExceeded",
                    f"step {msg.step_id!r} returned {len(msg.output) / 2**20:.1f} MiB, over the "
                    f"{limits.max_step_result / 2**20:.0f} MiB limit"))
                run.status = RunStatus.FAILED
            elif isinstance(msg, m.StepCompleted):
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
            elif isinstance(msg, m.StepFailed):
                status = StepStatus.FAILED if msg.final else StepStatus.RETRYING
                steps.append((msg.run_id, msg.step_id, "run", status, msg.attempt + 1, None,
                              error_of(msg.error), None if msg.final else write.retry_at,
                              msg.started_at, msg.ended_at))
                growth.setdefault(msg.run_id, 0)
            elif isinstance(msg, m.SleepRequested):
                wake = msg.until if msg.until is not None else now + (msg.duration or 0.0)
                await db.execute("insert_pending_step", msg.run_id, msg.step_id, "sleep",
                                 StepStatus.SLEEPING, wake, now, None)
            elif isinstance(msg, m.WaitRequested):
                await self._wait_requested(msg, write.since)
            elif isinstance(msg, m.InvokeRequested):
                await self._invoke_requested(msg)
            elif isinstance(msg, m.EventsSent):
                await self._events_sent(msg)
            elif isinstance(msg, m.RunCompleted):
                await self._finish(msg.run_id, run, RunStatus.COMPLETED, msg.output, None)
            elif isinstance(msg, m.RunFailed):
                if msg.final:
                    await self._finish(msg.run_id, run, RunStatus.FAILED, None,
                                       error_of(msg.error))
                else:
                    retry_at = write.retry_at if write.retry_at is not None else now
                    await db.execute("requeue_run", retry_at, msg.attempt + 1,
                                     error_of(msg.error), msg.run_id)
                    self._later(retry_at)
                    run.status = RunStatus.QUEUED
                    self.touched.add(run.function_id)
            elif isinstance(msg, m.RunSuspended):
                suspended.append(msg.run_id)
                run.status = RunStatus.QUEUED
            elif isinstance(msg, m.LeaseReleased):
                await db.execute("requeue_run", now, None, None, msg.run_id)
                run.status = RunStatus.QUEUED
                self.touched.add(run.function_id)
        await self._flush_steps(steps, growth)
        if self._endings:
            await db.executemany("end_run", self._endings)
            await db.executemany("delete_waits", [(e[4],) for e in self._endings])
            self._endings = []
        for run_id in suspended:
            await self._suspend(run_id)

    async def _finish(self, run_id: str, run: _Run, status: str, output: bytes | None,
                      error: str | None) -> None:
        """:meth:`end_run` for a run that returned or failed, its row written in bulk later."""
        run.status = status
        self._endings.append((status, output, error, self.now, run_id))
        self.result.ended.append(RunEnded(run_id, run.function_id, status))
        if run.parent is not None:
            await self._answer_parent(*run.parent, status, output, error)
        await self._system_events(run_id, run.function_id, status, output, error)

    async def _flush_steps(self, steps: list[tuple[Any, ...]], growth: dict[str, int]) -> None:
        if steps:
            await self.db.executemany("upsert_step", steps)
            steps.clear()
        if growth:
            await self.db.executemany("run_progressed",
                                      [(size, run_id) for run_id, size in growth.items()])
            growth.clear()

    async def _suspend(self, run_id: str) -> None:
        """Every branch of the run waits: sleep until the earliest pending step is due."""
        pending = {row[0]: row for row in await self.db.fetch("pending_steps", run_id)}
        available: float | None = self.now
        status = RunStatus.QUEUED
        if pending:
            dues = [row[1] for row in pending.values() if row[1] is not None]
            available = min(dues) if dues else None
            if StepStatus.WAITING in pending or StepStatus.INVOKING in pending:
                status = RunStatus.WAITING
            elif StepStatus.SLEEPING in pending:
                status = RunStatus.SLEEPING
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
        trigger = await db.fetchval("run_trigger", msg.run_id)
        trigger_data = json.loads(trigger) if trigger else {}
        await self._insert_wait(msg.run_id, msg.step_id, "wait", msg.event, msg.if_,
                                trigger or b"{}", trigger_data, now + msg.timeout)
        # Look back: an event may have arrived after the run reached the wait on the worker
        # but before this checkpoint was stored.
        for payload, in await db.fetch("events_since", msg.event, since):
            candidate = json.loads(payload)
            if matches(msg.if_, {"event": trigger_data, "async": candidate}):
                await self._resolve_wait(msg.run_id, msg.step_id, payload)
                return

    async def _insert_wait(self, run_id: str, step_id: str, kind: str, event: str,
                           if_: str | None, trigger: bytes, trigger_data: dict[str, Any],
                           expires: float | None) -> None:
        index = index_for(if_, trigger_data) if if_ else NO_INDEX
        await self.db.execute("insert_wait", run_id, step_id, kind, event, if_, index.path,
                              index.key, trigger, expires, self.now)
        self._listens[event] = True

    async def _invoke_requested(self, msg: m.InvokeRequested) -> None:
        db, now = self.db, self.now
        wake = None if msg.timeout is None else now + msg.timeout
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
        data = json.loads(msg.data)
        body = {"name": INVOKED, "data": data, "id": event_id, "ts": int(now * 1000),
                "user": None}
        payload = orjson.dumps(body)
        (seq,) = await self.ingest([NewEvent(event_id, INVOKED, payload, body)], match=False)
        if seq is None:
            return
        child = await self.create_run(msg.function_id, [(seq, event_id)], payload, body,
                                      parent=(msg.run_id, msg.step_id))
        await self._flush_runs()
        await db.execute("set_step_child", child, msg.run_id, msg.step_id)

    async def _events_sent(self, msg: m.EventsSent) -> None:
        events = []
        for raw in msg.events:
            body = json.loads(raw)
            events.append(NewEvent(str(body["id"]), str(body["name"]), raw, body))
        ids = orjson.dumps([e.id for e in events])
        if not await self.db.execute("insert_done_step", msg.run_id, msg.step_id, "send_event",
                                     ids, self.now):
            return  # recorded before: the events were stored then
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
        function_id, session_id, fence, parent_run, parent_step, _ = row
        await db.execute("end_run", status, output, error, now, run_id)
        self.result.ended.append(RunEnded(run_id, function_id, status))
        await db.execute("delete_waits", run_id)
        await db.execute("end_pending_steps", now, run_id)
        if status == RunStatus.CANCELLED:
            if session_id is not None:
                self.result.revoked.append(Revocation(session_id, run_id, fence, "cancelled"))
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
        names = [FINISHED]
        if status == RunStatus.FAILED:
            names.append(FAILED)
        elif status == RunStatus.CANCELLED:
            names.append(CANCELLED)
        names = [n for n in names if await self._listened(n)]
        if not names:
            return
        trigger = await self.db.fetchval("run_trigger", run_id)
        data = {
            "function_id": function_id, "run_id": run_id, "status": status,
            "output": json.loads(output) if output is not None else None,
            "error": json.loads(error) if error is not None else None,
            "event": json.loads(trigger) if trigger else None,
        }
        events = []
        for name in names:
            event_id = f"{run_id}-{name.rsplit('.', 1)[1]}"
            body = {"name": name, "data": data, "id": event_id, "ts": int(self.now * 1000),
                    "user": None}
            events.append(NewEvent(event_id, name, orjson.dumps(body), body))
        await self.ingest(events)

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
        for run_id, started_at in await self.db.fetch("due_deadlines", self.now):
            reason = ("not started within timeouts.start" if started_at is None
                      else "not finished within timeouts.finish")
            await self.end_run(run_id, RunStatus.CANCELLED,
                               error=error_json("Timeout", f"cancelled: {reason}"))

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
                await self.db.execute("release_run", self.now, losses, run_id)
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
                        "waits_for", event.name, path, key):
                    if expires is not None and expires <= self.now:
                        continue
                    if if_ and not matches(if_, {"event": json.loads(trigger),
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
            await self._wake(run_id)

    async def _wake(self, run_id: str) -> None:
        """A pending step of a suspended run resolved: the run is ready now."""
        row = await self.db.fetchone("wake_run", self.now, run_id)
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
        for fn in wanted:
            limit = served.get(fn, 0)
            if limit <= 0:
                continue
            # Rows come back locked where the backend can lock (PostgreSQL's SKIP LOCKED),
            # so the fences read here are the ones the update below bumps.
            rows = await db.fetch("ready_runs", fn, now, limit)
            if len(rows) < limit:
                result.drained_functions.add(fn)
            candidates.extend(rows)
        if not candidates:
            return
        candidates.sort()
        by_id = {c[1]: c for c in candidates}
        assigned = dispatch.assign(workers, [(c[1], c[2]) for c in candidates])
        if len(assigned) < len(candidates):
            # Ready runs read (and locked) but not leased: another gateway that skipped them
            # may believe their function has nothing ready. Say it has.
            taken = {run_id for run_id, _ in assigned}
            self.touched.update(c[2] for c in candidates if c[1] not in taken)
        await db.executemany("lease_run", [(session_id, now, run_id)
                                           for run_id, session_id in assigned])
        await self._leases([(run_id, session_id, *by_id[run_id][2:])
                            for run_id, session_id in assigned])

    async def _leases(self, assigned: list[tuple[Any, ...]]) -> None:
        """Build the leases of runs just taken, with a handful of set-based queries.

        ``assigned`` holds (run id, session, function id, fence before, attempt, started_at).
        Runs leased before (resumed) first have their due timers settled, then get their
        recorded steps back as memos.
        """
        db, now = self.db, self.now
        resumed = [a[0] for a in assigned if a[5] is not None]
        steps: dict[str, list[Row]] = {}
        if resumed:
            await db.execute("settle_due_waits", resumed, now)
            await db.execute("settle_due_steps", resumed, now, b"null", error_json(
                "InvokeTimeout", "the invoked run did not finish within the timeout"))
            for row in await db.fetch("steps_of_runs", resumed):
                steps.setdefault(row[0], []).append(row)
        missing = [a[0] for a in assigned if a[0] not in self._triggers]
        payloads: dict[str, list[bytes]] = {}
        if missing:
            for run_id, payload in await db.fetch("event_payloads_of_runs", missing):
                payloads.setdefault(run_id, []).append(payload)
        for run_id, session_id, function_id, fence, attempt, started_at in assigned:
            if started_at is None:
                await self._first_lease(run_id, function_id)
            fresh = self._triggers.get(run_id)
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
                                            memos, attempts, attempt, deferred))

    async def _first_lease(self, run_id: str, function_id: str) -> None:
        """A run starts: its ``timeouts.finish`` clock starts with it."""
        config = await self._config(self.db, function_id)
        if config is not None and config.timeouts and config.timeouts.finish is not None:
            deadline = self.now + float(config.timeouts.finish)  # type: ignore[arg-type]
            await self.db.execute("set_deadline", deadline, run_id)
            self._later(deadline)


def _refusal(run: _Run | None, msg: m._Checkpoint) -> str | None:
    """Why a checkpoint may not be applied (invariant 1), or None."""
    if run is None:
        return f"unknown run {msg.run_id}"
    if run.status in FINAL_STATUSES:
        return f"run already {run.status}"
    if msg.fence != run.fence:
        return f"lease superseded: fence {msg.fence} is stale, the run is at fence {run.fence}"
    return None
