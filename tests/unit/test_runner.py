"""worker.runner.RunExecution: one leased run, driven directly with a recording ``emit``.

No gateway and no socket: a hand-built ``LeaseGranted``, a thread pool for sync code, and a list
of what the execution reported. Every wait is bounded by ``asyncio.wait_for(..., 5)``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from protocol import messages as m
from protocol.errors import NonRetriableError, RetryAfterError, StepError
from worker.app import App, Event
from worker.runner import Limits, RunExecution
from worker.threads import StepThreads

EVENT = {"name": "shop/order.paid", "data": {"amount": 30}, "id": "evt-1", "ts": 1234,
         "user": None}
BOUND = 5.0


class Recorder:
    """The ``emit`` callback: builds each real checkpoint message, so its fields are checked."""

    def __init__(self) -> None:
        self.sent: list[m._Checkpoint] = []

    def __call__(self, kind: type[m._Checkpoint], fields: dict[str, Any]) -> None:
        self.sent.append(kind(seq=len(self.sent) + 1, run_id="run-1", fence=7, **fields))

    @property
    def kinds(self) -> list[str]:
        return [msg.type for msg in self.sent]  # type: ignore[attr-defined]

    def of(self, kind: type[m._Checkpoint]) -> list[Any]:
        return [msg for msg in self.sent if isinstance(msg, kind)]

    def output(self) -> Any:
        [done] = self.of(m.RunCompleted)
        return json.loads(done.output)


class Counter:
    """A step callable that counts its calls and returns ``value``."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.value


@pytest.fixture
def pool() -> Iterator[StepThreads]:
    threads = StepThreads(core=4, limit=16, name="user")
    yield threads
    threads.shutdown()


@pytest.fixture
def run(pool):
    """``await run(handler, retries=..., limits=..., **lease_fields) -> (Recorder, execution)``."""

    async def execute(handler: Callable[..., Any], *, retries: int = 3,
                      limits: Limits | None = None, start: bool = True,
                      **lease_fields: Any) -> tuple[Recorder, RunExecution]:
        app = App("shop")
        function = app.function(id="f", retries=retries)(handler)
        lease = m.LeaseGranted(run_id="run-1", fence=7, function_id="shop/f",
                               events=[json.dumps(EVENT).encode()], **lease_fields)
        recorder = Recorder()
        execution = RunExecution(lease, function, emit=recorder, threads=pool,
                                 limits=limits or Limits())
        if start:
            execution.start()
            await asyncio.wait_for(execution.wait(), BOUND)
        return recorder, execution

    return execute


def memo(value: Any) -> m.StepMemo:
    return m.StepMemo(output=json.dumps(value).encode())


# --- new steps and replay --------------------------------------------------------------


async def test_three_new_steps_then_completed(run):
    async def add(x: int, y: int) -> int:
        return x + y

    async def handler(ctx):
        a = await ctx.step.run("a", add, 1, 2)
        b = await ctx.step.run("b", lambda: {"k": [a]})
        c = await ctx.step.run("c", add, a, y=b["k"][0])
        return {"sum": c}

    rec, _ = await run(handler)
    assert rec.kinds == ["step_completed"] * 3 + ["run_completed"]
    steps = rec.of(m.StepCompleted)
    assert [s.step_id for s in steps] == ["a", "b", "c"]
    assert [json.loads(s.output) for s in steps] == [3, {"k": [3]}, 6]
    assert all(s.attempt == 0 and s.started_at <= s.ended_at for s in steps)
    assert rec.output() == {"sum": 6}


async def test_memoized_steps_are_not_rerun(run):
    a, b, c = Counter(1), Counter("x"), Counter(3)

    async def handler(ctx):
        return [await ctx.step.run("a", a), await ctx.step.run("b", b),
                await ctx.step.run("c", c)]

    rec, _ = await run(handler, memos={"a": memo(1), "b": memo("x")})
    assert (a.calls, b.calls, c.calls) == (0, 0, 1)
    assert [s.step_id for s in rec.of(m.StepCompleted)] == ["c"]
    assert rec.output() == [1, "x", 3]


async def test_replayed_value_is_the_recorded_one(run):
    async def handler(ctx):
        return await ctx.step.run("a", Counter("fresh"))

    rec, _ = await run(handler, memos={"a": memo({"recorded": True})})
    assert rec.kinds == ["run_completed"]
    assert rec.output() == {"recorded": True}


async def test_new_step_result_is_what_json_gives_back(run):
    async def handler(ctx):
        value = await ctx.step.run("a", lambda: (1, 2))  # a tuple is stored as a list
        return isinstance(value, list)

    rec, _ = await run(handler)
    assert rec.output() is True


async def test_repeated_step_ids_are_suffixed(run):
    seen: list[int] = []

    async def handler(ctx):
        for i in range(3):
            seen.append(await ctx.step.run("fetch", lambda i=i: i * 10))
        return seen

    rec, _ = await run(handler)
    assert [s.step_id for s in rec.of(m.StepCompleted)] == ["fetch", "fetch:1", "fetch:2"]
    assert rec.output() == [0, 10, 20]


async def test_suffixed_ids_replay_by_call_order(run):
    fetch = Counter(99)

    async def handler(ctx):
        return [await ctx.step.run("fetch", fetch) for _ in range(3)]

    rec, _ = await run(handler, memos={"fetch": memo(0), "fetch:1": memo(10)})
    assert fetch.calls == 1
    assert [s.step_id for s in rec.of(m.StepCompleted)] == ["fetch:2"]
    assert rec.output() == [0, 10, 99]


# --- step failures ---------------------------------------------------------------------


async def test_failing_step_with_retries_left_parks_the_run(run):
    after = Counter()

    async def handler(ctx):
        await ctx.step.run("s", _boom)
        after()
        return "unreachable"

    rec, _ = await run(handler, retries=3)
    assert rec.kinds == ["step_failed", "run_suspended"]
    [failed] = rec.of(m.StepFailed)
    assert (failed.step_id, failed.attempt, failed.final) == ("s", 0, False)
    assert (failed.error.name, failed.error.message) == ("ValueError", "boom")
    assert "ValueError: boom" in (failed.error.stack or "")
    assert failed.retry_after is None
    assert after.calls == 0


async def test_retry_after_error_sets_the_delay(run):
    async def handler(ctx):
        await ctx.step.run("s", _retry_later)

    rec, _ = await run(handler)
    [failed] = rec.of(m.StepFailed)
    assert failed.final is False
    assert failed.retry_after == 30.0
    assert rec.kinds[-1] == "run_suspended"


async def test_failing_step_at_its_last_attempt_raises_step_error(run):
    caught: list[StepError] = []

    async def handler(ctx):
        try:
            await ctx.step.run("s", _boom)
        except StepError as exc:
            caught.append(exc)
            return "recovered"

    rec, _ = await run(handler, retries=3, attempts={"s": 3})
    assert rec.kinds == ["step_failed", "run_completed"]
    [failed] = rec.of(m.StepFailed)
    assert (failed.attempt, failed.final) == (3, True)
    assert rec.output() == "recovered"
    [exc] = caught
    assert (exc.step_id, exc.name, exc.error_message) == ("s", "ValueError", "boom")


async def test_uncaught_step_error_fails_the_run_for_good(run):
    async def handler(ctx):
        await ctx.step.run("s", _boom)

    rec, _ = await run(handler, retries=1, attempts={"s": 1})
    assert rec.kinds == ["step_failed", "run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert failed.final is True
    assert failed.error.name == "ValueError"  # the step's original error, not "StepError"


async def test_non_retriable_error_is_final_at_once(run):
    async def handler(ctx):
        try:
            await ctx.step.run("s", _give_up)
        except StepError as exc:
            return exc.name

    rec, _ = await run(handler, retries=10)
    [failed] = rec.of(m.StepFailed)
    assert (failed.attempt, failed.final) == (0, True)
    assert failed.error.message == "no point retrying"
    assert rec.output() == "NonRetriableError"


async def test_memoized_error_raises_step_error_on_replay(run):
    step = Counter()
    caught: list[StepError] = []

    async def handler(ctx):
        try:
            await ctx.step.run("s", step)
        except StepError as exc:
            caught.append(exc)
        return "ok"

    error = m.ErrorInfo(name="KeyError", message="gone", stack="earlier traceback")
    rec, _ = await run(handler, memos={"s": m.StepMemo(error=error)})
    assert step.calls == 0
    assert rec.kinds == ["run_completed"]
    [exc] = caught
    assert (exc.step_id, exc.name, exc.error_message, exc.stack) == (
        "s", "KeyError", "gone", "earlier traceback")


async def test_non_json_step_result_is_a_final_failure(run):
    caught: list[StepError] = []

    async def handler(ctx):
        try:
            await ctx.step.run("s", lambda: {"when": object()})
        except StepError as exc:
            caught.append(exc)
        return "handled"

    rec, _ = await run(handler, retries=5)
    assert rec.kinds == ["step_failed", "run_completed"]
    [failed] = rec.of(m.StepFailed)
    assert (failed.attempt, failed.final) == (0, True)
    assert "step 's' result cannot be stored" in failed.error.message
    assert "JSON" in failed.error.message
    assert caught and "JSON" in caught[0].error_message


async def test_step_result_over_the_limit_fails(run):
    async def handler(ctx):
        await ctx.step.run("big", lambda: "x" * 2000)

    rec, _ = await run(handler, limits=Limits(max_step_result=1000), attempts={"big": 3})
    [failed] = rec.of(m.StepFailed)
    assert failed.error.name == "LimitExceeded"
    assert "over the" in failed.error.message and "limit" in failed.error.message


# --- function-level failures -----------------------------------------------------------


async def test_function_exception_fails_the_attempt(run):
    async def handler(ctx):
        raise RuntimeError("body broke")

    rec, _ = await run(handler, retries=3, attempt=1)
    assert rec.kinds == ["run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert (failed.attempt, failed.final) == (1, False)
    assert (failed.error.name, failed.error.message) == ("RuntimeError", "body broke")


async def test_function_exception_at_last_attempt_is_final(run):
    async def handler(ctx):
        raise RuntimeError("body broke")

    rec, _ = await run(handler, retries=3, attempt=3)
    [failed] = rec.of(m.RunFailed)
    assert (failed.attempt, failed.final) == (3, True)


async def test_a_completed_step_gives_the_body_a_fresh_retry_budget(run):
    seen = []

    async def handler(ctx):
        seen.append(ctx.attempt)
        await ctx.step.run("s", lambda: 1)
        seen.append(ctx.attempt)
        raise RuntimeError("body broke")

    rec, _ = await run(handler, retries=3, attempt=3)
    [failed] = rec.of(m.RunFailed)
    assert (failed.attempt, failed.final) == (0, False)
    assert seen == [3, 0]


async def test_a_replayed_step_does_not_reset_the_budget(run):
    async def handler(ctx):
        await ctx.step.run("s", lambda: 1)
        raise RuntimeError("body broke")

    rec, _ = await run(handler, retries=3, attempt=3, memos={"s": memo(1)})
    [failed] = rec.of(m.RunFailed)
    assert (failed.attempt, failed.final) == (3, True)


async def test_function_non_retriable_and_retry_after(run):
    async def give_up(ctx):
        raise NonRetriableError("stop")

    async def later(ctx):
        raise RetryAfterError("busy", 12)

    rec, _ = await run(give_up, retries=3)
    assert rec.of(m.RunFailed)[0].final is True
    rec, _ = await run(later, retries=3)
    [failed] = rec.of(m.RunFailed)
    assert (failed.final, failed.retry_after) == (False, 12.0)


async def test_function_output_that_is_not_json_fails_for_good(run):
    async def handler(ctx):
        return {1, 2}

    rec, _ = await run(handler)
    [failed] = rec.of(m.RunFailed)
    assert failed.final is True
    assert "output" in failed.error.message and "JSON" in failed.error.message


async def test_too_many_steps(run):
    async def handler(ctx):
        for i in range(3):
            await ctx.step.run(f"s{i}", Counter(i))

    rec, _ = await run(handler, limits=Limits(max_steps=2))
    assert rec.kinds == ["step_completed", "step_completed", "run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert failed.final is True
    assert "more than 2 steps" in failed.error.message


# --- parking, parallel steps, sync functions ---------------------------------------------


async def test_deferred_step_parks_without_running(run):
    step = Counter()

    async def handler(ctx):
        await ctx.step.run("a", Counter(1))
        await ctx.step.run("s", step)

    rec, _ = await run(handler, memos={"a": memo(1)}, attempts={"s": 1}, deferred=["s"])
    assert step.calls == 0
    assert rec.kinds == ["run_suspended"]


async def test_gather_of_two_new_steps_emits_both(run):
    async def slow(value):
        await asyncio.sleep(0)
        return value

    async def handler(ctx):
        a, b = await asyncio.gather(ctx.step.run("a", slow, "A"), ctx.step.run("b", slow, "B"))
        return a + b

    rec, _ = await run(handler)
    assert sorted(s.step_id for s in rec.of(m.StepCompleted)) == ["a", "b"]
    assert rec.kinds[-1] == "run_completed"
    assert rec.output() == "AB"


async def test_a_parked_branch_does_not_hold_back_the_other(run):
    async def handler(ctx):
        await asyncio.gather(ctx.step.run("bad", _boom), ctx.step.run("good", Counter(1)))

    rec, _ = await run(handler)
    assert sorted(rec.kinds[:2]) == ["step_completed", "step_failed"]
    assert rec.kinds[2:] == ["run_suspended"]


async def test_sync_step_callable_runs_off_the_loop_thread(run):
    loop_thread = threading.get_ident()

    async def handler(ctx):
        return await ctx.step.run("where", lambda: threading.get_ident() != loop_thread)

    rec, _ = await run(handler)
    assert rec.output() is True


async def test_plain_def_function_with_blocking_steps(run):
    loop_thread = threading.get_ident()
    b = Counter("bee")

    def handler(ctx):
        assert threading.get_ident() != loop_thread
        first = ctx.step.run("a", lambda: 1)
        second = ctx.step.run("b", b)
        third = ctx.step.run("c", _async_double, first)
        return [first, second, third]

    rec, _ = await run(handler, memos={"b": memo("bee")})
    assert b.calls == 0
    assert [s.step_id for s in rec.of(m.StepCompleted)] == ["a", "c"]
    assert rec.output() == [1, "bee", 2]


async def test_plain_def_function_step_failure_parks(run):
    def handler(ctx):
        ctx.step.run("s", _boom)
        return "unreachable"

    rec, _ = await run(handler)
    assert rec.kinds == ["step_failed", "run_suspended"]


async def test_plain_def_function_catches_step_error(run):
    def handler(ctx):
        try:
            ctx.step.run("s", _boom)
        except StepError as exc:
            return f"caught {exc.name}"

    rec, _ = await run(handler, retries=0)
    assert rec.kinds == ["step_failed", "run_completed"]
    assert rec.output() == "caught ValueError"


async def test_plain_def_function_exception(run):
    def handler(ctx):
        raise KeyError("nope")

    rec, _ = await run(handler, retries=2, attempt=0)
    [failed] = rec.of(m.RunFailed)
    assert (failed.error.name, failed.final) == ("KeyError", False)


# --- the context -----------------------------------------------------------------------


async def test_ctx_attempt_is_the_steps_attempt_inside_a_step(run):
    seen: dict[str, int] = {}

    async def handler(ctx):
        seen["body"] = ctx.attempt
        await ctx.step.run("s", lambda: seen.setdefault("s", ctx.attempt))
        await ctx.step.run("t", _async_attempt, ctx, seen)
        seen["after"] = ctx.attempt

    await run(handler, attempt=1, attempts={"s": 2, "t": 4}, retries=5)
    # After a completed step the body's attempt starts again (a fresh retry budget).
    assert seen == {"body": 1, "s": 2, "t": 4, "after": 0}


async def test_ctx_fields(run):
    seen: dict[str, Any] = {}

    async def handler(ctx):
        seen.update(event=ctx.event, events=ctx.events, run_id=ctx.run_id,
                    function_id=ctx.function_id)

    await run(handler)
    assert seen["event"] == Event("shop/order.paid", {"amount": 30}, id="evt-1", ts=1234)
    assert seen["events"] == [seen["event"]]
    assert (seen["run_id"], seen["function_id"]) == ("run-1", "shop/f")


async def test_logger_is_silent_while_replaying(run):
    async def handler(ctx):
        ctx.logger.info("before_a")
        await ctx.step.run("a", Counter(1))
        ctx.logger.info("before_b")
        await ctx.step.run("b", Counter(2))
        ctx.logger.info("after_b")

    with capture_logs() as logs:
        await run(handler, memos={"a": memo(1)})
    user = [entry["event"] for entry in logs if entry.get("run_id") == "run-1"
            and entry["event"].startswith(("before", "after"))]
    assert user == ["after_b"]


# --- losing the lease, draining ----------------------------------------------------------


async def test_lost_before_a_step_emits_nothing_more(run):
    step = Counter()
    go = asyncio.Event()

    async def handler(ctx):
        await go.wait()
        await ctx.step.run("s", step)
        return "unreachable"

    rec, execution = await run(handler, start=False)
    execution.start()
    execution.lose("revoked")
    go.set()
    await asyncio.wait_for(execution.wait(), BOUND)
    assert step.calls == 0
    assert rec.sent == []
    assert execution.ended


async def _interrupted_in_first_step(run, interrupt):
    """Run a two-step function, call ``interrupt(execution)`` inside the first step, finish it.

    Returns the recorder, the execution, and how many times the second step ran.
    """
    in_step, release = asyncio.Event(), asyncio.Event()
    second = Counter()

    async def first():
        in_step.set()
        await release.wait()
        return 1

    async def handler(ctx):
        await ctx.step.run("first", first)
        await ctx.step.run("second", second)
        return "unreachable"

    rec, execution = await run(handler, start=False)
    execution.start()
    await asyncio.wait_for(in_step.wait(), BOUND)
    interrupt(execution)
    release.set()
    await asyncio.wait_for(execution.wait(), BOUND)
    return rec, execution, second.calls


async def test_lost_during_a_step_starts_no_further_step(run):
    rec, _, second_calls = await _interrupted_in_first_step(
        run, lambda execution: execution.lose("socket closed"))
    assert second_calls == 0
    assert not {"run_completed", "run_suspended", "run_failed", "lease_released"} & set(rec.kinds)


async def test_drain_hands_the_run_back_at_the_next_step(run):
    rec, _, second_calls = await _interrupted_in_first_step(
        run, lambda execution: execution.drain())
    assert second_calls == 0
    assert rec.kinds == ["step_completed", "lease_released"]
    assert rec.of(m.LeaseReleased)[0].reason == "worker draining"


async def test_hand_back_now_releases_with_a_step_still_running(run):
    in_step = asyncio.Event()

    async def stuck():
        in_step.set()
        await asyncio.Event().wait()

    async def handler(ctx):
        await ctx.step.run("stuck", stuck)

    rec, execution = await run(handler, start=False)
    execution.start()
    await asyncio.wait_for(in_step.wait(), BOUND)
    execution.hand_back_now()
    await asyncio.wait_for(execution.wait(), BOUND)
    assert rec.kinds == ["lease_released"]
    assert rec.of(m.LeaseReleased)[0].reason == "worker drain timeout"


# --- step callables used above -----------------------------------------------------------


def _boom() -> None:
    raise ValueError("boom")


def _give_up() -> None:
    raise NonRetriableError("no point retrying")


def _retry_later() -> None:
    raise RetryAfterError("rate limited", 30)


async def _async_double(x: int) -> int:
    return x * 2


async def _async_attempt(ctx: Any, seen: dict[str, int]) -> None:
    seen["t"] = ctx.attempt
