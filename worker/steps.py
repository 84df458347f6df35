"""``ctx.step``: the step API given to user code.

``async def`` functions get :class:`Step` (awaitable methods); plain ``def`` functions, which
run on a thread, get :class:`SyncStep`, whose methods block and do their bookkeeping on the
event loop. Both share the run's rules in :mod:`worker.runner`.

A step id must be unique within a function; a repeated id (a step in a loop) is suffixed by
call order: ``"fetch"``, ``"fetch:1"``, ``"fetch:2"``...

Steps that need the gateway (sleeps, waits, child runs) *park* the branch that called them:
the worker tells the gateway what it waits for, and once every branch of the run is parked
the run is suspended, holding no worker slot, until the gateway leases it again with the
step's result recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import orjson

from protocol import messages as m
from protocol.durations import YEAR, Duration, check_sleep, to_seconds
from protocol.errors import InvalidInput, TetherError
from protocol.expressions import check
from protocol.names import RESERVED_PREFIX, check_no_nul, is_reserved
from worker import serde
from worker.app import Event, Function
from worker.interrupts import Abandoned
from worker.plan import PARK, NewStep, Replay, current_step
from worker.threads import LoopGone
from worker.watchdog import ACTIVITY, Doing

if TYPE_CHECKING:
    from worker.runner import RunExecution

T = TypeVar("T")
P = ParamSpec("P")

#: Variables a ``wait_for_event`` filter may read.
WAIT_VARIABLES = frozenset({"event", "async"})


class _Plans:
    """What both flavours of the API compute before any waiting: pure bookkeeping."""

    __slots__ = ("_exec",)

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution

    def sleep_fields(self, step_id: str, duration: Duration) -> dict[str, Any]:
        what = f"step.sleep({step_id!r})"
        return {"duration": check_sleep(to_seconds(duration, what=what), what=what)}

    def sleep_until_fields(self, step_id: str, when: datetime | float) -> dict[str, Any]:
        what = f"step.sleep_until({step_id!r})"
        if isinstance(when, datetime):
            moment = when if when.tzinfo else when.replace(tzinfo=UTC)  # naive means UTC
            until = moment.timestamp()
        elif isinstance(when, (int, float)) and not isinstance(when, bool):
            until = float(when)
        else:
            raise InvalidInput(f"{what}: expected a datetime or epoch seconds")
        check_sleep(until - time.time(), what=what, target=str(when))
        return {"until": until}

    def wait_fields(self, step_id: str, event: str, timeout: Duration, if_: str | None
                    ) -> dict[str, Any]:
        if not isinstance(event, str) or not event:
            raise InvalidInput(f"step.wait_for_event({step_id!r}): event must be a name")
        check_no_nul(event, f"step.wait_for_event({step_id!r}): event")
        if if_ is not None:
            check(if_, WAIT_VARIABLES, where=f"step.wait_for_event({step_id!r}) if_")
        seconds = to_seconds(timeout, what=f"step.wait_for_event({step_id!r}) timeout")
        return {"event": event, "timeout": seconds, "if_": if_}

    def invoke_fields(self, step_id: str, function: Function | str, data: dict[str, Any] | None,
                      timeout: Duration | None, user: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        function_id = function.id if isinstance(function, Function) else function
        if not isinstance(function_id, str) or "/" not in function_id:
            raise InvalidInput(
                f"step.invoke({step_id!r}): function must be a Tether function or "
                f"'app/fn-id', got {function!r}"
            )
        payload = serde.dumps(data or {}, what=f"step.invoke({step_id!r}) data",
                              limit=self._exec.limits.max_step_result)
        seconds = YEAR if timeout is None else to_seconds(
            timeout, what=f"step.invoke({step_id!r}) timeout")
        if user is not None and not isinstance(user, dict):
            raise InvalidInput(f"step.invoke({step_id!r}): user must be a dict, got "
                               f"{type(user).__name__}")
        user_json = None if user is None else serde.dumps(
            user, what=f"step.invoke({step_id!r}) user", limit=self._exec.limits.max_step_result)
        return {"function_id": function_id, "data": payload, "timeout": seconds,
                "user": user_json}

    def sent_events(self, step: NewStep, events: Event | Sequence[Event]
                    ) -> tuple[list[str], list[bytes]]:
        items = [events] if isinstance(events, Event) else list(events)
        ids, payloads = [], []
        now_ms = int(time.time() * 1000)
        for index, event in enumerate(items):
            if not isinstance(event, Event):
                raise InvalidInput(f"step.send_event({step.id!r}): expected Event objects")
            if not event.name or is_reserved(event.name):
                raise InvalidInput(
                    f"step.send_event({step.id!r}): event name {event.name!r} is empty or "
                    f"reserved ({RESERVED_PREFIX}*)"
                )
            check_no_nul(event.name, f"step.send_event({step.id!r}): event name")
            # Deterministic ids make a resent checkpoint a duplicate, not a second event.
            event_id = event.id or f"{self._exec.run_id}-{step.id}-{index}"
            check_no_nul(event_id, f"step.send_event({step.id!r}): event id")
            ids.append(event_id)
            body = {"name": event.name, "data": event.data, "id": event_id,
                    "ts": event.ts if event.ts is not None else now_ms, "user": event.user}
            payloads.append(serde.dumps(body, what=f"step.send_event({step.id!r}) event",
                                        limit=self._exec.limits.max_step_result))
        return ids, payloads


#: Builds a NamedTuple (``Doing``) without its generated ``__new__``: half the cost.
_tuple = tuple.__new__

#: Result types that are never awaitable: ``inspect.isawaitable`` (an ABC check) is skipped.
_PLAIN = frozenset({int, str, float, bool, bytes, dict, list, tuple, type(None)})


def _is_async(fn: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction``, remembered: the same callables run step after step.

    A plain function (a lambda is a new one on every call) is read from its code's flags,
    not remembered: the cache would keep thousands of closures, and their runs, alive.
    """
    if type(fn) is types.FunctionType:
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    try:
        return _is_async_cached(fn)
    except TypeError:  # an unhashable callable
        return inspect.iscoroutinefunction(fn)


@functools.lru_cache(maxsize=4096)
def _is_async_cached(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def _as_event(value: Any) -> Event | None:
    return None if value is None else Event.from_json(value)


def _ignore(value: Any) -> None:
    return None


def _identity(value: Any) -> Any:
    return value


def _tracked(
    method: Callable[Concatenate[Step, str, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Step, str, P], Coroutine[Any, Any, T]]:
    """Remember each step call, so that one never awaited is reported when the run ends.

    ``ctx.step.sleep("x", "1h")`` without ``await`` only makes a coroutine: nothing runs.
    """
    name = method.__name__

    @functools.wraps(method)
    def call(self: Step, step_id: str, /, *args: P.args, **kwargs: P.kwargs
             ) -> Coroutine[Any, Any, T]:
        coro = method(self, step_id, *args, **kwargs)
        self._exec.track(coro, name, step_id)
        return coro

    return call


class Step:
    """Durable steps for ``async def`` functions."""

    __slots__ = ("_exec",)

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution

    @property
    def _plans(self) -> _Plans:
        """Made when asked (by the steps that need the gateway): most runs never do."""
        return _Plans(self._exec)

    @_tracked
    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once, durably, and return its (JSON) result.

        ``fn`` may be ``async`` or plain; a plain one runs on a thread so that it cannot
        block the worker. Retried with backoff when it raises; its result is memoized, so a
        replay returns it without calling ``fn`` again.

        Raises:
            StepError: the step failed for good (retries exhausted, or NonRetriableError).
        """
        run = self._exec
        plan = run.begin_run_step(step_id)  # entered, if it runs now
        if type(plan) is not NewStep:
            if isinstance(plan, Replay):
                return run.replay(plan)
            return await run.park()
        started = time.time()
        token = current_step.set(plan)
        task, doing = ACTIVITY.enter(
            _tuple(Doing, (run.run_id, run.function.id, plan.id)), run.loop)
        # The attempt's span is current while fn runs (a thread's context is copied below).
        span = run.tracing.step(plan.id, plan.attempt) if run.tracing is not None else None
        failure: BaseException | None = None
        try:
            if _is_async(fn):
                result = await fn(*args, **kwargs)
            else:
                context = contextvars.copy_context()
                result = await run.threads.run(context.run, fn, *args, **kwargs)
                if type(result) not in _PLAIN and inspect.isawaitable(result):
                    result = await result
        except (Abandoned, asyncio.CancelledError) as exc:
            failure = exc
            raise
        except BaseException as exc:  # user code: recorded, then StepError or a retry
            failure = exc
            outcome = run.finish_step(plan, started, None, exc)
        else:
            outcome = run.finish_step(plan, started, result, None)
        finally:
            current_step.reset(token)
            ACTIVITY.leave(task, doing or Doing(run.run_id, run.function.id))
            if span is not None:
                span.end(failure, abandoned=isinstance(
                    failure, (Abandoned, asyncio.CancelledError)))
        if outcome is PARK:
            return await run.park()
        return outcome

    @_tracked
    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Sleep durably: the run is suspended (no worker held) and resumes after ``duration``."""
        fields = self._plans.sleep_fields(step_id, duration)
        await self._durable(step_id, "sleep", m.SleepRequested, fields, _ignore)

    @_tracked
    async def sleep_until(self, step_id: str, when: datetime | float) -> None:
        """Sleep durably until ``when`` (a datetime; naive means UTC; or epoch seconds)."""
        fields = self._plans.sleep_until_fields(step_id, when)
        await self._durable(step_id, "sleep", m.SleepRequested, fields, _ignore)

    @_tracked
    async def wait_for_event(
        self, step_id: str, *, event: str, timeout: Duration, if_: str | None = None
    ) -> Event | None:
        """Wait for an event named ``event`` (matching ``if_``); None after ``timeout``.

        In ``if_``, ``event`` is this run's triggering event and ``async`` the candidate,
        e.g. ``"async.data.order_id == event.data.order_id"``. Only events received after
        the run was created count, never its own trigger (even under the same name).
        """
        fields = self._plans.wait_fields(step_id, event, timeout, if_)
        result: Event | None = await self._durable(
            step_id, "wait", m.WaitRequested, fields, _as_event)
        return result

    @_tracked
    async def invoke(
        self, step_id: str, *, function: Function | str, data: dict[str, Any] | None = None,
        timeout: Duration | None = None, user: dict[str, Any] | None = None,
    ) -> Any:
        """Run ``function`` as a child run with ``data`` and return its output.

        The child's event carries ``user`` (as Inngest's, none unless given: pass
        ``user=ctx.event.user`` to hand the parent's on). ``timeout`` defaults to one year.

        Raises:
            StepError: the child failed, was cancelled, or did not finish within ``timeout``.
        """
        fields = self._plans.invoke_fields(step_id, function, data, timeout, user)
        return await self._durable(step_id, "invoke", m.InvokeRequested, fields, _identity)

    @_tracked
    async def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Send events exactly once for this run (not again on replay); returns their ids."""
        run = self._exec
        plan = run.begin_step(step_id, "send_event")
        if isinstance(plan, Replay):
            ids: list[str] = run.replay(plan)
            return ids
        if plan is PARK:
            return await run.park()  # type: ignore[no-any-return]
        assert isinstance(plan, NewStep)
        ids, payloads = self._plans.sent_events(plan, events)
        run.record(plan, "send_event", orjson.dumps(ids), m.EventsSent,
                   {"events": payloads})
        return ids

    async def _durable(self, step_id: str, kind: str, message: type[m._Checkpoint],
                       fields: dict[str, Any], decode: Callable[[Any], T]) -> T:
        run = self._exec
        plan = run.begin_step(step_id, kind)
        if isinstance(plan, Replay):
            return decode(run.replay(plan))
        if isinstance(plan, NewStep):
            run.request(plan, message, fields)
        return await run.park()  # type: ignore[no-any-return]


class SyncStep:
    """Durable steps for plain ``def`` functions: the same methods, blocking."""

    __slots__ = ("_async", "_exec")

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution
        self._async = Step(execution)

    def run(self, step_id: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Blocking :meth:`Step.run`. ``fn`` runs on this thread."""
        run = self._exec
        if run.ended:
            raise Abandoned()
        try:
            plan = run.begin_run_step_off_loop(step_id)
        except LoopGone:
            raise Abandoned() from None
        if isinstance(plan, Replay):
            return run.replay(plan)  # type: ignore[no-any-return]
        if plan is PARK:
            return self._on_loop(run.park())  # type: ignore[no-any-return]
        assert isinstance(plan, NewStep)
        started = time.time()
        token = current_step.set(plan)
        span = run.tracing.step(plan.id, plan.attempt) if run.tracing is not None else None
        failure: BaseException | None = None
        try:
            result: Any = fn(*args, **kwargs)
            if type(result) not in _PLAIN and inspect.isawaitable(result):
                result = self._on_loop(_awaited(result))
        except Abandoned as exc:
            failure = exc
            raise
        except BaseException as exc:  # user code: recorded, then StepError or a retry
            failure = exc
            outcome = self._call(run.finish_step, plan, started, None, exc)
        else:
            try:
                output = run.step_output(plan, result)
            except TetherError:  # fails the same way there, and is recorded as the step's
                outcome = self._call(run.finish_step, plan, started, result, None)
            else:
                # Recorded on the loop while this thread goes on: the loop runs what threads
                # post in order, so the next step's call sees this one recorded.
                self._post(run.step_completed, plan, started, time.time(), output)
                outcome = serde.loads(output)
        finally:
            current_step.reset(token)
            if span is not None:
                span.end(failure, abandoned=isinstance(failure, Abandoned))
        if outcome is PARK:
            return self._on_loop(run.park())  # type: ignore[no-any-return]
        return outcome  # type: ignore[no-any-return]

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Blocking :meth:`Step.sleep`."""
        self._on_loop(self._async.sleep(step_id, duration))

    def sleep_until(self, step_id: str, when: datetime | float) -> None:
        """Blocking :meth:`Step.sleep_until`."""
        self._on_loop(self._async.sleep_until(step_id, when))

    def wait_for_event(
        self, step_id: str, *, event: str, timeout: Duration, if_: str | None = None
    ) -> Event | None:
        """Blocking :meth:`Step.wait_for_event`."""
        return self._on_loop(self._async.wait_for_event(step_id, event=event, timeout=timeout,
                                                        if_=if_))

    def invoke(
        self, step_id: str, *, function: Function | str, data: dict[str, Any] | None = None,
        timeout: Duration | None = None, user: dict[str, Any] | None = None,
    ) -> Any:
        """Blocking :meth:`Step.invoke`."""
        return self._on_loop(self._async.invoke(step_id, function=function, data=data,
                                                timeout=timeout, user=user))

    def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Blocking :meth:`Step.send_event`."""
        return self._on_loop(self._async.send_event(step_id, events))

    def parallel(self, *branches: Callable[[], Any]) -> list[Any]:
        """Run ``branches`` (callables taking no argument) at once, each on its own thread.

        The ``def`` equivalent of ``asyncio.gather``: each branch may call any step method,
        each checkpoints on its own, and the run suspends only when every live branch waits
        on something durable. Returns the results in order; the first exception is raised.
        """
        return self._on_loop(_parallel(self._exec, branches))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker's loop (a plain call: no task), this thread waiting."""
        run = self._exec
        if run.ended:
            raise Abandoned()
        try:
            return run.mailbox.call(fn, *args)
        except LoopGone:
            raise Abandoned() from None

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the worker's loop, soon, in order; this thread goes on."""
        run = self._exec
        if run.ended:
            raise Abandoned()
        try:
            run.mailbox.post(fn, *args)
        except LoopGone:
            raise Abandoned() from None

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the worker's loop while this thread waits (and counts as idle)."""
        run = self._exec
        if run.ended:
            coro.close()
            raise Abandoned()
        future = asyncio.run_coroutine_threadsafe(_idle_while(run, coro), run.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Abandoned() from None


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _idle_while(run: RunExecution, coro: Coroutine[Any, Any, T]) -> T:
    """The calling thread is blocked in a step call, not running user code, meanwhile."""
    run.threads_active -= 1
    try:
        return await coro
    finally:
        run.threads_active += 1


async def _parallel(run: RunExecution, branches: Sequence[Callable[[], Any]]) -> list[Any]:
    async def branch(fn: Callable[[], Any]) -> Any:
        run.threads_active += 1
        try:
            context = contextvars.copy_context()
            return await run.threads.run(context.run, fn)
        finally:
            run.threads_active -= 1
            # A settle check that ran while this thread was still counted gave up; the
            # other branches may all be parked, so the run may be able to suspend now.
            run._poke()

    return list(await asyncio.gather(*(branch(b) for b in branches)))
