"""``ctx.step``: the step API given to user code.

``async def`` functions get :class:`Step` (awaitable methods); plain ``def`` functions, which
run on a thread, get :class:`SyncStep`, whose methods block and do their bookkeeping on the
event loop. Both share the run's rules in :mod:`worker.runner`.

A step id must be unique within a function; a repeated id (a step in a loop) is suffixed by
call order: ``"fetch"``, ``"fetch:1"``, ``"fetch:2"``...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from worker.interrupts import Abandoned
from worker.runner import PARK, NewStep, Replay, RunExecution, current_attempt

T = TypeVar("T")


class Step:
    """Durable steps for ``async def`` functions."""

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once, durably, and return its (JSON) result.

        ``fn`` may be ``async`` or plain; a plain one runs on a thread so that it cannot
        block the worker. Retried with backoff when it raises; its result is memoized, so a
        replay returns it without calling ``fn`` again.

        Raises:
            StepError: the step failed for good (retries exhausted, or NonRetriableError).
        """
        run = self._exec
        plan = run.begin_step(step_id)
        if isinstance(plan, Replay):
            return run.replay(plan)
        if plan is PARK:
            return await run.park()
        assert isinstance(plan, NewStep)
        started = time.time()
        token = current_attempt.set(plan.attempt)
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                context = contextvars.copy_context()
                result = await run.loop.run_in_executor(
                    run.executor, functools.partial(context.run, fn, *args, **kwargs)
                )
                if inspect.isawaitable(result):
                    result = await result
        except (Abandoned, asyncio.CancelledError):
            raise
        except BaseException as exc:  # user code: recorded, then StepError or a retry
            outcome = run.finish_step(plan, started, None, exc)
        else:
            outcome = run.finish_step(plan, started, result, None)
        finally:
            current_attempt.reset(token)
        if outcome is PARK:
            return await run.park()
        return outcome


class SyncStep:
    """Durable steps for plain ``def`` functions: the same methods, blocking."""

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution

    def run(self, step_id: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Blocking :meth:`Step.run`. ``fn`` runs on this thread."""
        run = self._exec
        plan = self._on_loop(_call(run.begin_step, step_id))
        if isinstance(plan, Replay):
            return self._on_loop(_call(run.replay, plan))  # type: ignore[no-any-return]
        if plan is PARK:
            return self._on_loop(run.park())  # type: ignore[no-any-return]
        assert isinstance(plan, NewStep)
        started = time.time()
        token = current_attempt.set(plan.attempt)
        try:
            result: Any = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = self._on_loop(_awaited(result))
        except Abandoned:
            raise
        except BaseException as exc:  # user code: recorded, then StepError or a retry
            outcome = self._on_loop(_call(run.finish_step, plan, started, None, exc))
        else:
            outcome = self._on_loop(_call(run.finish_step, plan, started, result, None))
        finally:
            current_attempt.reset(token)
        if outcome is PARK:
            return self._on_loop(run.park())  # type: ignore[no-any-return]
        return outcome  # type: ignore[no-any-return]

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


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _idle_while(run: RunExecution, coro: Coroutine[Any, Any, T]) -> T:
    """The calling thread is blocked in a step call, not running user code, meanwhile."""
    run.threads_active -= 1
    try:
        return await coro
    finally:
        run.threads_active += 1
