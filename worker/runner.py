"""One leased run on this worker: replay its memos, run new steps, report, never raise.

Rule 1: a step whose result is memoized is never run again; its recorded result (or error)
is returned in its place.

Rule 2: every new step result is checkpointed the moment it exists; the next step does not
wait for the gateway's acknowledgement.

Rule 3: a branch that needs the gateway (a retry not due yet, and later sleeps and waits)
*parks*. When every live branch is parked and no step is running, the run is suspended: the
worker says ``RunSuspended`` (or ``LeaseReleased`` while draining) and forgets the run. Its
checkpoints are everything the next lease needs.

Rule 4: once the lease is lost (revoked, refused, socket gone), no new step starts: every
branch parks at its next step boundary and the run is dropped without a word.

Rule 5 (after temporal's ``activate``): nothing raised by user code escapes this module;
every outcome becomes a message.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from protocol import messages as m
from protocol.codec import DEFAULT_MAX_FRAME, encode
from protocol.errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    TetherError,
)
from protocol.limits import MAX_RETRY_AFTER, MAX_STEP_RESULT, MAX_STEPS
from protocol.tracecontext import step_traceparent
from worker import serde
from worker.app import Event, Function
from worker.connection import fields_size
from worker.context import Context
from worker.interrupts import Abandoned
from worker.plan import PARK, NewStep, Park, Replay
from worker.threads import StepThreads
from worker.watchdog import ACTIVITY, Doing
from worker.wire import AnyGrant

if TYPE_CHECKING:
    from worker.tracing import RunTracing  # imports OpenTelemetry: only when tracing

log = structlog.get_logger("tether.worker")

#: Loop iterations without step activity after which parked branches count as settled.
_SETTLE_ROUNDS = 4

_dumps = orjson.dumps
_loads = orjson.loads
#: Builds a NamedTuple (a ``Doing``, a ``NewStep``) without its generated ``__new__``: half
#: the cost, and a few are made for every step.
_doing = tuple.__new__

#: No step ids (shared: most leases have no memos and no deferred step).
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Limits:
    """The gateway's limits (sent in ``Ready``), enforced here before anything is sent."""

    max_steps: int = MAX_STEPS
    max_step_result: int = MAX_STEP_RESULT
    max_output: int = MAX_STEP_RESULT
    #: Largest frame the gateway reads: one checkpoint over it could never be delivered.
    max_frame: int = DEFAULT_MAX_FRAME


class FrameTooLarge(NonRetriableError):
    """One checkpoint alone is over the gateway's frame limit: it could never be sent."""

    code = "frame_too_large"


#: An error's message is cut to this many characters, so that a failure always fits a frame.
MAX_ERROR_MESSAGE = 64 * 1024

#: :func:`fields_size` of a ``RunCompleted``'s own fields, empty (see ``_outcome``).
_RUN_COMPLETED_FIELDS = fields_size({"output": b"", "warnings": []})
#: :func:`fields_size` of a ``StepCompleted``'s own fields, empty (see ``step_output``).
_STEP_COMPLETED_FIELDS = fields_size({"step_id": "", "attempt": 0, "output": b"",
                                      "started_at": 0.0, "ended_at": 0.0})


def error_info(exc: BaseException) -> m.ErrorInfo:
    name = exc.name if isinstance(exc, StepError) else type(exc).__name__
    # A StepError's message is the step's own; str() adds which step it came from.
    message = (str(exc) if isinstance(exc, StepError)
               else exc.message if isinstance(exc, TetherError) else str(exc))
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + f"... ({len(message):,} characters in all)"
    stack = "".join(traceback.format_exception(exc))[-8000:]
    return m.ErrorInfo(name=name[:1000], message=message or name, stack=stack)




def retry_delay(exc: BaseException) -> float | None:
    """The delay a RetryAfterError asks for, in seconds from now."""
    if not isinstance(exc, RetryAfterError):
        return None
    after = exc.retry_after
    if isinstance(after, datetime):
        when = after if after.tzinfo else after.replace(tzinfo=UTC)
        delay = (when - datetime.now(UTC)).total_seconds()
    elif isinstance(after, timedelta):
        delay = after.total_seconds()
    else:
        delay = float(after)
    return min(max(0.0, delay), MAX_RETRY_AFTER)  # also maps NaN to 0


def replay_warning(unreached: list[str], new: list[str]) -> str:
    """One line for the run's ``warnings``: which recorded steps were skipped, what ran."""
    def names(ids: list[str]) -> str:
        shown = ", ".join(repr(i) for i in ids[:5])
        return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")

    text = f"replay did not reach recorded step(s) {names(unreached)}"
    if new:
        text += f" and ran new step(s) {names(new)} instead"
    text += ("; step ids must be the same on every replay (no uuid4(), time or random "
             "numbers in them), or each replay repeats the step's side effect")
    return text if len(text) <= 2000 else text[:1997] + "..."



def _not_started(coro: Coroutine[Any, Any, Any]) -> bool:
    """``inspect.getcoroutinestate(coro) == "CORO_CREATED"``; a finished coroutine (every
    awaited step call, by the run's end) has no frame, and is told at once."""
    frame = getattr(coro, "cr_frame", True)  # a coroutine object; any other kind: ask inspect
    return frame is not None and inspect.getcoroutinestate(coro) == "CORO_CREATED"


class RunExecution:
    """Executes one lease. Created by the runtime; reports through ``emit``."""

    # Slots: one is made per run, and its attributes are read at every step.
    __slots__ = (
        "_activity",
        "_calls",
        "_counts",
        "_emit",
        "_finished",
        "_idle_waiter",
        "_in_flight",
        "_lease_fine",
        "_lease_ok",
        "_log",
        "_naming",
        "_new",
        "_on_end",
        "_outputs",
        "_parks",
        "_reached",
        "_recorded",
        "_settling",
        "_steps_requested",
        "_task",
        "attempt",
        "attempts",
        "deferred",
        "draining",
        "ended",
        "events",
        "fence",
        "function",
        "lease",
        "limits",
        "loop",
        "lost",
        "mailbox",
        "memos",
        "replaying",
        "run_id",
        "running",
        "threads",
        "threads_active",
        "traceparent",
        "tracing",
        "warnings",
    )

    def __init__(
        self,
        lease: AnyGrant,
        function: Function,
        *,
        emit: Callable[[type[m._Checkpoint], dict[str, Any]], None],
        threads: StepThreads,
        limits: Limits,
        on_end: Callable[[RunExecution], None] = lambda execution: None,
        lease_ok: Callable[[], bool] = lambda: True,
        lease_fine: Callable[[], bool] = lambda: True,
        tracing: RunTracing | None = None,
    ) -> None:
        self.lease = lease
        self.run_id = lease.run_id
        self.fence = lease.fence
        self.function = function
        self.events = [Event.from_json(e) for e in lease.events]
        memos = lease.memos
        self.memos: dict[str, m.StepMemo] = dict(memos)
        self.attempts = lease.attempts
        deferred = lease.deferred
        self.deferred = frozenset(deferred) if deferred else _NONE
        self.attempt = lease.attempt
        self.replaying = bool(memos)
        self.lost = False
        self.draining = False
        self.ended = False
        self._emit = emit
        self._on_end = on_end
        self._lease_ok = lease_ok  # on the loop: may drop the socket
        self._lease_fine = lease_fine  # anywhere: only looks (False: ask lease_ok on the loop)
        # Steps are named on the loop alone in an async function; a def function's threads
        # (and parallel branches) name them too: only those need the lock.
        self._naming = None if function.is_async else threading.Lock()
        self.threads = threads
        self.limits = limits
        self._counts: dict[str, int] = {}
        # Steps done by earlier executions, and of those the ones this execution's code
        # asked for (a set only when there are some: most leases are of fresh runs).
        self._recorded = frozenset(memos) if memos else _NONE
        self._reached: set[str] | frozenset[str] = set() if memos else _NONE
        self._new: list[str] = []  # steps this execution started that no earlier one did
        #: Results of the steps this execution completed (their memos, made if ever asked).
        self._outputs: dict[str, bytes] = {}
        self._steps_requested = 0
        self._in_flight = 0
        self.running: set[str] = set()  # ids of the steps whose code runs now
        self.threads_active = 0  # threads running user code of a ``def`` function
        self._parks: set[asyncio.Future[None]] = set()
        self._activity = 0
        self._settling: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Both made only when someone waits (most runs never do): see _steps_settled, wait.
        self._idle_waiter: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self.loop = loop = asyncio.get_running_loop()
        self.mailbox = threads.mailbox(loop)  # how a ``def`` function's thread calls the loop
        self._log: Any = None
        self._calls: list[tuple[Coroutine[Any, Any, Any], str, str]] = []  # step calls made
        self.warnings: list[str] = []  # for the run's record (replay divergence)
        #: This lease's spans (None: the worker does not trace). ``traceparent`` is the run's
        #: span, handed on to child runs and sent events whether or not this worker traces.
        self.tracing = tracing
        self.traceparent = tracing.traceparent if tracing is not None else lease.traceparent

    @property
    def log(self) -> Any:
        """This run's logger, bound on first use (most runs never log)."""
        if self._log is None:
            self._log = log.bind(run_id=self.run_id, function_id=self.function.id)
        return self._log

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = self.loop.create_task(self._body(), name=f"tether-run-{self.run_id}")

    async def wait(self) -> None:
        """Until this execution is over (finished, suspended, handed back or dropped)."""
        if self.ended:
            return
        if self._finished is None:
            self._finished = self.loop.create_future()
        await asyncio.shield(self._finished)

    async def _steps_settled(self) -> None:
        """Until no step of this run is running (those of other branches finish first)."""
        if self._in_flight:
            waiter = self._idle_waiter
            if waiter is None or waiter.done():
                waiter = self._idle_waiter = self.loop.create_future()
            await waiter

    def lose(self, reason: str) -> None:
        """The lease is gone: start nothing new; drop the run once its steps have settled."""
        if not self.lost:
            self.lost = True
            self.log.info("lease_lost", reason=reason)
            self._poke()

    def drain(self) -> None:
        """Hand the run back at the next step boundary (the worker is shutting down)."""
        self.draining = True
        self._poke()

    def hand_back_now(self) -> None:
        """Drain timeout: hand the run back even with a step still running."""
        if not self.ended:
            self._end(m.LeaseReleased, {"reason": "worker drain timeout"})

    def track(self, coro: Coroutine[Any, Any, Any], method: str, step_id: str) -> None:
        """A step method was called; it must be awaited before the run ends."""
        calls = self._calls
        if len(calls) >= 64:  # keep only the calls not started yet (usually none)
            calls[:] = [c for c in calls if _not_started(c[0])]
        calls.append((coro, method, step_id))

    def _never_awaited(self) -> NonRetriableError | None:
        """The error for step calls never awaited (they never ran), or None."""
        missed = []
        for coro, method, step_id in self._calls:
            if _not_started(coro):
                missed.append((method, step_id))
                coro.close()  # no "never awaited" RuntimeWarning at garbage collection
        self._calls.clear()
        if not missed:
            return None
        calls = ", ".join(f"ctx.step.{method}({step_id!r})" for method, step_id in missed[:5])
        return NonRetriableError(
            f"{calls} {'was' if len(missed) == 1 else 'were'} called without await, so "
            f"{'it' if len(missed) == 1 else 'they'} never ran: write "
            f"`await ctx.step.{missed[0][0]}(...)` (or gather the calls)"
        )

    def _warnings(self) -> dict[str, Any]:
        return {"warnings": self.warnings[:10]}

    def _check_replay(self, *, completed: bool) -> None:
        """Report recorded steps this replay never reached, and the new ones in their place.

        A step id built from a uuid, the time or a random number is new on every replay, so
        its side effect runs again each time; this is how that shows.
        """
        unreached = sorted(self._recorded - self._reached)
        if not unreached or not (completed or self._new):
            return  # a failure may cut a run short: unreached steps prove nothing then
        self.warnings.append(replay_warning(unreached, self._new))
        self.log.warning(
            "replay_diverged", unreached=unreached[:10], new=self._new[:10],
            hint="step ids must be the same on every replay: build them from the event or "
                 "from step results, never from uuid4(), the time or random numbers",
        )

    # --- the function body ---------------------------------------------------------------

    async def _body(self) -> None:
        ctx = Context(self)
        # Forgotten by the body itself as it returns: no done callback to run for every run.
        task, _ = ACTIVITY.enter(_doing(Doing, (self.run_id, self.function.id, None)), self.loop,
                                 forget=False)
        try:
            await self._outcome(ctx)
        finally:
            ACTIVITY.forget(task)

    async def _outcome(self, ctx: Context) -> None:
        """Run the function body and report its outcome (the body of :meth:`_body`)."""
        # The run's span is current in the body (this task's own context): user spans made
        # between steps, and app.send, continue the run's trace.
        if self.tracing is not None:
            self.tracing.enter_body()
        try:
            if self.function.is_async:
                result = await self.function.handler(ctx)
            else:
                context = contextvars.copy_context()
                self.threads_active = 1
                try:
                    result = await self.threads.run(context.run, self.function.handler, ctx)
                finally:
                    self.threads_active = 0
        except (Abandoned, asyncio.CancelledError):
            return
        except BaseException as exc:  # user code: every failure becomes a message
            await self._steps_settled()
            if not self.ended:
                self._check_replay(completed=False)
                missed = self._never_awaited()
                if missed is not None:
                    missed.__cause__ = exc
                self._fail_run(missed or exc)
            return
        if self._in_flight:  # steps of other branches still running finish first
            await self._steps_settled()
        if self.ended:
            return
        missed = self._never_awaited()
        if missed is not None:
            self._fail_run(missed)
            return
        if self._recorded:
            self._check_replay(completed=True)
        limit = self.limits.max_output
        try:
            output: bytes | None = _dumps(result, option=serde.OPTIONS)
        except (TypeError, ValueError):
            output = None
        warnings = self.warnings
        if (output is not None and not warnings and len(output) + len(self.run_id)
                + _RUN_COMPLETED_FIELDS + 256 <= min(limit, self.limits.max_frame)):
            # _end's checks, without formatting what they would name (every run comes here)
            self._end(m.RunCompleted, {"output": output, "warnings": []}, checked=True)
            return
        what = f"function {self.function.id!r} output"
        try:
            output = serde.dumps(result, what=what, limit=limit)
            self._end(m.RunCompleted, {"output": output, "warnings": warnings[:10]},
                      what=what)
        except TetherError as exc:
            self._fail_run(exc)

    def _fail_run(self, exc: BaseException) -> None:
        final = (
            isinstance(exc, (NonRetriableError, StepError))
            or self.attempt >= self.function.retries
        )
        level = "error" if final else "warning"
        getattr(self.log, level)("function_failed", attempt=self.attempt, final=final,
                                 error=f"{type(exc).__name__}: {exc}")
        self._end(m.RunFailed, {"attempt": self.attempt, "error": error_info(exc),
                                "final": final, "retry_after": retry_delay(exc),
                                **self._warnings()})

    def _end(self, kind: type[m._Checkpoint], fields: dict[str, Any], what: str = "",
             *, checked: bool = False) -> None:
        """Send the last message of this lease (unless it is lost) and let go of the run.

        ``checked``: the caller knows the message fits a frame (see :meth:`_check_frame`).

        Raises:
            FrameTooLarge: the message could never be sent (the run is not over then).
        """
        if self.ended:
            return
        if checked and not self.lost:
            self._emit(kind, fields)
        elif not self.lost:
            self._send(kind, fields, what or kind.__name__)
        self.ended = True
        for future in self._parks:
            if not future.done():
                future.set_exception(Abandoned())
        self._parks.clear()
        task = self._task
        if task is not None and not task.done() and asyncio.current_task(self.loop) is not task:
            task.cancel()  # a branch blocked outside any step (which it should not be)
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_result(None)
        self._on_end(self)

    # --- steps ---------------------------------------------------------------------------

    def begin_step(self, step_id: str, kind: str) -> NewStep | Replay | Park:
        """Name the step (suffixing repeats) and decide: replay it, run it, or park.

        Raises:
            NonDeterminismError: the history recorded another kind of step under this id.
        """
        named = self._name(step_id, kind)
        if isinstance(named, Replay):
            return named
        return self._decide(named)

    def begin_run_step(self, step_id: str) -> NewStep | Replay | Park:
        """:meth:`begin_step` for ``step.run`` on the loop, then :meth:`enter` when the step
        runs now: one call per step (every step of an async function comes here).

        Raises:
            NonDeterminismError: the history recorded another kind of step under this id.
        """
        sid = self._name(step_id, "run")
        if type(sid) is not str:
            return sid  # type: ignore[return-value]  # a Replay
        # _decide, then _new_step and enter, inline.
        if not self.lost and not self._lease_ok():
            self.lose("the gateway has been silent too long: the lease is presumed revoked")
        if self.lost or self.draining or sid in self.deferred:
            return PARK
        self.replaying = False
        new = self._new
        if len(new) < 100:
            new.append(sid)
        attempts = self.attempts
        plan = _doing(NewStep, (sid, attempts.get(sid, 0) if attempts else 0))
        self._in_flight += 1
        self.running.add(sid)
        return plan

    def begin_run_step_off_loop(self, step_id: str) -> NewStep | Replay | Park:
        """:meth:`begin_step` for ``step.run`` on a ``def`` function's thread, without waiting
        for the loop when nothing is unusual: a replay, or a new step while the lease is
        sound (the loop is told, in order, that it runs). Otherwise the loop decides.

        Raises:
            LoopGone: the loop is closed.
        """
        named = self._name(step_id, "run")
        if isinstance(named, Replay):
            return named
        if self.lost or self.draining or named in self.deferred or not self._lease_fine():
            return self.mailbox.call(self._decide_and_enter, named)
        plan = self._new_step(named)
        self.mailbox.post(self.enter, plan)
        return plan

    def _name(self, step_id: str, kind: str) -> str | Replay:
        """The step's id within the run (repeats suffixed), or its replay if recorded.

        Called on the loop and on ``def`` functions' threads (parallel branches): the
        naming is done under a lock.
        """
        if self.ended:
            raise Abandoned()
        if not isinstance(step_id, str) or not step_id:
            raise TypeError("a step id must be a non-empty string")
        if "\x00" in step_id:  # protocol.names: no NUL in any id; retrying cannot help
            raise NonRetriableError(f"step id {step_id!r} contains a NUL character "
                                    "(\\u0000); step ids may not")
        naming = self._naming
        if naming is None:  # only the loop names steps (an async function)
            count = self._counts.get(step_id, 0)
            self._counts[step_id] = count + 1
            self._activity += 1
            self._steps_requested = requested = self._steps_requested + 1
        else:
            with naming:
                count = self._counts.get(step_id, 0)
                self._counts[step_id] = count + 1
                self._activity += 1
                self._steps_requested = requested = self._steps_requested + 1
        sid = step_id if count == 0 else f"{step_id}:{count}"
        if requested > self.limits.max_steps:
            raise NonRetriableError(
                f"run has more than {self.limits.max_steps} steps; split the work into "
                "several runs (step.invoke or send_event)"
            )
        memo = self.memos.get(sid)
        if memo is None:
            output = self._outputs.get(sid)
            if output is None:
                return sid
            # A step this execution completed, asked for again under the same id (given
            # by hand as one of the suffixed ids): its memo, as recorded.
            memo = self.memos[sid] = m.StepMemo(kind="run", output=output)
        if memo.kind != kind:
            raise NonDeterminismError(
                f"step {sid!r} was recorded as step.{memo.kind}() but this replay calls "
                f"step.{kind}() under that id: either the code changed while the run was "
                "in flight (give the new step another id), or the step ids or their order "
                "depend on something that differs between replays (time, randomness, "
                "uuid4, unordered sets); step ids must be the same on every replay"
            )
        if sid in self._recorded:
            self._reached.add(sid)  # type: ignore[union-attr]  # a set when any is recorded
        return Replay(sid, memo)

    def _decide(self, sid: str) -> NewStep | Park:
        """A step not recorded yet (on the loop): run it, or park if the lease is in doubt."""
        if self.ended:
            raise Abandoned()
        if not self.lost and not self._lease_ok():
            self.lose("the gateway has been silent too long: the lease is presumed revoked")
        if self.lost or self.draining or sid in self.deferred:
            return PARK
        return self._new_step(sid)

    def _decide_and_enter(self, sid: str) -> NewStep | Park:
        plan = self._decide(sid)
        if isinstance(plan, NewStep):
            self.enter(plan)
        return plan

    def _new_step(self, sid: str) -> NewStep:
        self.replaying = False
        if len(self._new) < 100:
            self._new.append(sid)
        return NewStep(sid, self.attempts.get(sid, 0))

    def enter(self, step: NewStep) -> None:
        """The step's code starts running now (the run cannot suspend until it ends)."""
        self._in_flight += 1
        self.running.add(step.id)

    def request(self, step: NewStep, kind: type[m._Checkpoint], fields: dict[str, Any]) -> None:
        """Ask the gateway for something durable (a sleep, a wait, a child run)."""
        self._activity += 1
        if self.traceparent is not None and kind is m.InvokeRequested:
            fields = {**fields, "traceparent": self._step_trace(step)}
        self._send(kind, {"step_id": step.id, **fields}, f"step {step.id!r}")

    def record(self, step: NewStep, kind: str, output: bytes, message: type[m._Checkpoint],
               fields: dict[str, Any]) -> None:
        """A step whose result exists at once (send_event): memoize and checkpoint it."""
        self._activity += 1
        if self.traceparent is not None and message is m.EventsSent:
            fields = {**fields, "traceparent": self._step_trace(step)}
        self._send(message, {"step_id": step.id, **fields}, f"step.{kind}({step.id!r})")
        self.memos[step.id] = m.StepMemo(kind=kind, output=output)
        self.attempt = 0  # a completed step gives the body a fresh retry budget

    def _step_trace(self, step: NewStep) -> str | None:
        """The span the gateway exports for a step it completes: child runs and the runs
        of sent events continue it."""
        return step_traceparent(self.traceparent, self.run_id, step.id)

    def replay(self, step: Replay) -> Any:
        if step.memo.error is not None:
            err = step.memo.error
            raise StepError(step.id, err.name, err.message, err.stack)
        assert step.memo.output is not None
        return serde.loads(step.memo.output)

    def finish_step(
        self, step: NewStep, started: float, result: Any, exc: BaseException | None
    ) -> Any:
        """Record a step's outcome and return what the function sees (or PARK).

        Raises:
            StepError: the step failed for good.
        """
        ended = time.time()
        final = False
        if exc is None:
            try:
                output = self.step_output(step, result)
            except TetherError as err:
                # The same result would be too large (or not JSON) on every attempt.
                exc, final = err, True
            else:
                self.step_completed(step, started, ended, output)
                return _loads(output)
        self._step_ended(step)
        try:
            final = (final or isinstance(exc, NonRetriableError)
                     or step.attempt >= self.function.retries)
            info = error_info(exc)
            self.log.warning("step_failed", step_id=step.id, attempt=step.attempt, final=final,
                             error=f"{info.name}: {info.message}")
            self._emit(m.StepFailed, {
                "step_id": step.id, "attempt": step.attempt, "error": info, "final": final,
                "retry_after": retry_delay(exc), "started_at": started, "ended_at": ended,
            })
            if final:
                self.memos[step.id] = m.StepMemo(kind="run", error=info)
                raise StepError(step.id, info.name, info.message, info.stack) from exc
            return PARK
        finally:
            self._step_settled()

    def step_output(self, step: NewStep, result: Any) -> bytes:
        """A step's result as it will be recorded. Pure: a ``def`` function's thread calls it.

        Raises:
            TetherError: not JSON, over the result limit, or (FrameTooLarge) over the frame
                limit once in its checkpoint.
        """
        sid = step.id
        limit = self.limits.max_step_result
        try:
            output: bytes | None = _dumps(result, option=serde.OPTIONS)
        except (TypeError, ValueError):
            output = None
        if output is None or len(output) > limit:  # refused: serde says why, in its words
            output = serde.dumps(result, what=f"step {sid!r} result", limit=limit)
        # _check_frame's bound, without building the fields (every step asks): a plain str
        # id is at most 4 bytes a character and a header.
        if (type(sid) is not str or _STEP_COMPLETED_FIELDS + len(output) + 4 * len(sid) + 16
                + len(self.run_id) + 256 > self.limits.max_frame):
            self._check_frame(m.StepCompleted, {"step_id": sid, "attempt": step.attempt,
                                                "output": output, "started_at": 0.0,
                                                "ended_at": 0.0}, f"step {sid!r} result")
        return output

    def step_completed(self, step: NewStep, started: float, ended: float, output: bytes
                       ) -> None:
        """Checkpoint and memoize a step's result (``output``, from :meth:`step_output`)."""
        sid = step.id
        self._in_flight -= 1  # _step_ended, inline (every step comes here)
        self.running.discard(sid)
        self._activity += 1
        try:
            self._emit(m.StepCompleted, {
                "step_id": sid, "attempt": step.attempt, "output": output,
                "started_at": started, "ended_at": ended,
            })
            self._outputs[sid] = output  # its memo, should the same id be asked for again
            self.attempt = 0  # a completed step gives the body a fresh retry budget
        finally:
            self._step_settled()

    def _step_ended(self, step: NewStep) -> None:
        self._in_flight -= 1
        self.running.discard(step.id)
        self._activity += 1

    def _step_settled(self) -> None:
        if self._in_flight == 0:
            waiter = self._idle_waiter
            if waiter is not None:
                self._idle_waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            self._poke()

    def _send(self, kind: type[m._Checkpoint], fields: dict[str, Any], what: str) -> None:
        """Emit one checkpoint, unless it alone is over the gateway's frame limit.

        Raises:
            FrameTooLarge: see :meth:`_check_frame`.
        """
        self._check_frame(kind, fields, what)
        self._emit(kind, fields)

    def _check_frame(self, kind: type[m._Checkpoint], fields: dict[str, Any], what: str
                     ) -> None:
        """A frame the gateway cannot read closes the socket, and the checkpoint would be
        sent again on every reconnect; the step fails for good here instead.

        Raises:
            FrameTooLarge: naming ``what``, its size and the limit.
        """
        limit = self.limits.max_frame
        if fields_size(fields) + len(self.run_id) + 256 > limit:  # an upper bound: cheap
            message: Any = kind(seq=1, run_id=self.run_id, fence=self.fence, **fields)
            size = len(encode([message]))
            if size > limit:
                raise FrameTooLarge(
                    f"{what} is {size:,} bytes on the wire, over the gateway's frame limit "
                    f"of {limit:,} bytes; send less data (store large data elsewhere and "
                    "pass a reference) or raise the gateway's --max-step-result"
                )

    async def park(self) -> Any:
        """Wait for the gateway (the run suspends once every branch is here); never returns."""
        future: asyncio.Future[None] = self.loop.create_future()
        self._parks.add(future)
        self._poke()
        await future
        raise Abandoned()  # pragma: no cover - the future only ever fails with Abandoned

    def _poke(self) -> None:
        """Something changed: check, once the loop has gone quiet, whether to suspend.

        Only a run with a parked branch can suspend; for the others this costs nothing.
        """
        self._activity += 1
        if self._parks and (self._settling is None or self._settling.done()):
            self._settling = self.loop.create_task(self._settle())

    async def _settle(self) -> None:
        # Branches that are still runnable reach a step within a few loop iterations:
        # wait until that many iterations pass with no step activity at all.
        seen = -1
        while seen != self._activity:
            seen = self._activity
            for _ in range(_SETTLE_ROUNDS):
                await asyncio.sleep(0)
        if self.ended or self._in_flight or self.threads_active or not self._parks:
            return
        if self.lost:
            self._end(m.RunSuspended, {})  # nothing is sent for a lost lease
        elif self.draining:
            self._end(m.LeaseReleased, {"reason": "worker draining"})
        else:
            self._end(m.RunSuspended, {})
