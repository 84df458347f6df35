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
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from protocol import messages as m
from protocol.errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    TetherError,
)
from worker import serde
from worker.app import Event, Function
from worker.interrupts import Abandoned

log = structlog.get_logger("tether.worker")

#: Attempt of the step whose code is running in this context (None in the function body).
current_attempt: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tether_step_attempt", default=None
)

#: Loop iterations without step activity after which parked branches count as settled.
_SETTLE_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Limits:
    max_steps: int = 1000
    max_step_result: int = 4 * 1024 * 1024
    max_output: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step to execute now, at ``attempt``."""

    id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Replay:
    """A step already recorded: return its result (or raise its error)."""

    id: str
    memo: m.StepMemo


class Park:
    """The step cannot run now; the branch must park."""


PARK = Park()


def error_info(exc: BaseException) -> m.ErrorInfo:
    name = exc.name if isinstance(exc, StepError) else type(exc).__name__
    message = exc.message if isinstance(exc, TetherError) else str(exc)
    stack = "".join(traceback.format_exception(exc))[-8000:]
    return m.ErrorInfo(name=name, message=message or name, stack=stack)


#: The gateway waits at most this long after a RetryAfterError (and the wire takes no infinity).
MAX_RETRY_AFTER = 24 * 3600.0


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


class RunExecution:
    """Executes one lease. Created by the runtime; reports through ``emit``."""

    def __init__(
        self,
        lease: m.LeaseGranted,
        function: Function,
        *,
        emit: Callable[[type[m._Checkpoint], dict[str, Any]], None],
        executor: Executor,
        limits: Limits,
        on_end: Callable[[RunExecution], None] = lambda execution: None,
        lease_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self.lease = lease
        self.run_id = lease.run_id
        self.fence = lease.fence
        self.function = function
        self.events = [Event.from_json(e) for e in lease.events]
        self.memos: dict[str, m.StepMemo] = dict(lease.memos)
        self.attempts = lease.attempts
        self.deferred = frozenset(lease.deferred)
        self.attempt = lease.attempt
        self.replaying = bool(self.memos)
        self.lost = False
        self.draining = False
        self.ended = False
        self._emit = emit
        self._on_end = on_end
        self._lease_ok = lease_ok
        self.executor = executor
        self.limits = limits
        self._counts: dict[str, int] = {}
        self._steps_requested = 0
        self._in_flight = 0
        self.threads_active = 0  # threads running user code of a ``def`` function
        self._parks: set[asyncio.Future[None]] = set()
        self._activity = 0
        self._settling: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.loop = asyncio.get_running_loop()
        self._log: Any = None

    @property
    def log(self) -> Any:
        """This run's logger, bound on first use (most runs never log)."""
        if self._log is None:
            self._log = log.bind(run_id=self.run_id, function_id=self.function.id)
        return self._log

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._body(), name=f"tether-run-{self.run_id}")

    async def wait(self) -> None:
        """Until this execution is over (finished, suspended, handed back or dropped)."""
        await asyncio.shield(self._finished)

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

    # --- the function body ---------------------------------------------------------------

    async def _body(self) -> None:
        from worker.context import Context

        ctx = Context(self)
        try:
            if self.function.is_async:
                result = await self.function.handler(ctx)
            else:
                context = contextvars.copy_context()
                self.threads_active = 1
                try:
                    result = await self.loop.run_in_executor(
                        self.executor, context.run, self.function.handler, ctx
                    )
                finally:
                    self.threads_active = 0
        except (Abandoned, asyncio.CancelledError):
            return
        except BaseException as exc:  # user code: every failure becomes a message
            await self._idle.wait()
            if not self.ended:
                self._fail_run(exc)
            return
        await self._idle.wait()  # steps of other branches still running finish first
        if self.ended:
            return
        try:
            output = serde.dumps(result, what=f"function {self.function.id!r} output",
                                 limit=self.limits.max_output)
        except TetherError as exc:
            self._fail_run(exc)
            return
        self._end(m.RunCompleted, {"output": output})

    def _fail_run(self, exc: BaseException) -> None:
        final = (
            isinstance(exc, (NonRetriableError, StepError))
            or self.attempt >= self.function.retries
        )
        level = "error" if final else "warning"
        getattr(self.log, level)("function_failed", attempt=self.attempt, final=final,
                                 error=f"{type(exc).__name__}: {exc}")
        self._end(m.RunFailed, {"attempt": self.attempt, "error": error_info(exc),
                                "final": final, "retry_after": retry_delay(exc)})

    def _end(self, kind: type[m._Checkpoint], fields: dict[str, Any]) -> None:
        """Send the last message of this lease (unless it is lost) and let go of the run."""
        if self.ended:
            return
        self.ended = True
        if not self.lost:
            self._emit(kind, fields)
        for future in self._parks:
            if not future.done():
                future.set_exception(Abandoned())
        self._parks.clear()
        task = self._task
        if task is not None and not task.done() and asyncio.current_task() is not task:
            task.cancel()  # a branch blocked outside any step (which it should not be)
        if not self._finished.done():
            self._finished.set_result(None)
        self._on_end(self)

    # --- steps ---------------------------------------------------------------------------

    def begin_step(self, step_id: str, kind: str) -> NewStep | Replay | Park:
        """Name the step (suffixing repeats) and decide: replay it, run it, or park.

        Raises:
            NonDeterminismError: the history recorded another kind of step under this id.
        """
        if self.ended:
            raise Abandoned()
        if not isinstance(step_id, str) or not step_id:
            raise TypeError("a step id must be a non-empty string")
        if "\x00" in step_id:  # protocol.names: no NUL in any id; retrying cannot help
            raise NonRetriableError(f"step id {step_id!r} contains a NUL character "
                                    "(\\u0000); step ids may not")
        count = self._counts.get(step_id, 0)
        self._counts[step_id] = count + 1
        sid = step_id if count == 0 else f"{step_id}:{count}"
        self._activity += 1
        self._steps_requested += 1
        if self._steps_requested > self.limits.max_steps:
            raise NonRetriableError(
                f"run has more than {self.limits.max_steps} steps; split the work into "
                "several runs (step.invoke or send_event)"
            )
        memo = self.memos.get(sid)
        if memo is not None:
            if memo.kind != kind:
                raise NonDeterminismError(
                    f"step {sid!r} was recorded as step.{memo.kind}() but the function now "
                    f"calls step.{kind}() under that id; the code changed under a running "
                    "run: give the new step another id"
                )
            return Replay(sid, memo)
        if not self.lost and not self._lease_ok():
            self.lose("the gateway has been silent too long: the lease is presumed revoked")
        if self.lost or self.draining or sid in self.deferred:
            return PARK
        self.replaying = False
        return NewStep(sid, self.attempts.get(sid, 0))

    def enter(self, step: NewStep) -> None:
        """The step's code starts running now (the run cannot suspend until it ends)."""
        self._in_flight += 1
        self._idle.clear()

    def request(self, step: NewStep, kind: type[m._Checkpoint], fields: dict[str, Any]) -> None:
        """Ask the gateway for something durable (a sleep, a wait, a child run)."""
        self._activity += 1
        self._emit(kind, {"step_id": step.id, **fields})

    def record(self, step: NewStep, kind: str, output: bytes, message: type[m._Checkpoint],
               fields: dict[str, Any]) -> None:
        """A step whose result exists at once (send_event): memoize and checkpoint it."""
        self._activity += 1
        self.memos[step.id] = m.StepMemo(kind=kind, output=output)
        self._emit(message, {"step_id": step.id, **fields})

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
        self._in_flight -= 1
        self._activity += 1
        try:
            if exc is None:
                try:
                    output = serde.dumps(result, what=f"step {step.id!r} result",
                                         limit=self.limits.max_step_result)
                except TetherError as err:
                    exc = err
                else:
                    self.memos[step.id] = m.StepMemo(kind="run", output=output)
                    self._emit(m.StepCompleted, {
                        "step_id": step.id, "attempt": step.attempt, "output": output,
                        "started_at": started, "ended_at": ended,
                    })
                    return serde.loads(output)
            final = isinstance(exc, NonRetriableError) or step.attempt >= self.function.retries
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
            if self._in_flight == 0:
                self._idle.set()
                self._poke()

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
