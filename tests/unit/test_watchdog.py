"""worker.watchdog: a stalled loop is noticed off the loop, and blamed on the run and step.

The thread's check is called directly, from inside the blocking code, with an injected clock:
that is where the thread finds the loop when it looks (the task that does not yield).
"""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from tests.unit import test_runner
from worker.watchdog import LoopWatchdog

pool, run = test_runner.pool, test_runner.run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_blocking_step_is_named_with_its_run(run):
    clock = Clock()
    watchdog = LoopWatchdog(threshold=1.0, monotonic=clock)
    watchdog.loop = asyncio.get_running_loop()
    watchdog.tick()
    seen = []

    async def blocking():  # stands for time.sleep(20) in async code
        clock.now += 0.5
        seen.append(watchdog.check())  # not long enough yet
        clock.now += 1.0
        seen.append(watchdog.check())
        seen.append(watchdog.check())  # reported once per stall
        return 1

    async def handler(ctx):
        return await ctx.step.run("block", blocking)

    with capture_logs() as logs:
        rec, _ = await run(handler)
        watchdog.tick()
    assert rec.kinds == ["step_completed", "run_completed"]
    assert seen[0] is None and seen[2] is None
    stall = seen[1]
    assert stall is not None and stall.doing is not None
    assert (stall.doing.run_id, stall.doing.function_id, stall.doing.step_id) == (
        "run-1", "shop/f", "block")
    [blocked] = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert blocked["log_level"] == "warning" and blocked["run_id"] == "run-1"
    assert blocked["step_id"] == "block" and blocked["blocked_for"] == 1.5
    assert "def function given to step.run" in blocked["hint"]
    assert "step.sleep" in blocked["hint"]
    [unblocked] = [e for e in logs if e["event"] == "event_loop_unblocked"]
    assert unblocked["run_id"] == "run-1" and unblocked["blocked_for"] == 1.5
    assert watchdog.recent() is stall
    clock.now += 2.5
    assert watchdog.recent() is None  # too old to explain a socket lost now


async def test_blocking_in_the_function_body_names_the_run_without_a_step(run):
    clock = Clock()
    watchdog = LoopWatchdog(threshold=1.0, monotonic=clock)
    watchdog.loop = asyncio.get_running_loop()
    watchdog.tick()
    seen = []

    async def handler(ctx):
        await ctx.step.run("first", lambda: 1)
        clock.now += 5
        seen.append(watchdog.check())
        return "done"

    await run(handler)
    [stall] = seen
    assert stall is not None and stall.doing is not None
    assert stall.doing.run_id == "run-1" and stall.doing.step_id is None


async def test_a_branch_of_gather_is_blamed_on_its_run(run):
    clock = Clock()
    watchdog = LoopWatchdog(threshold=1.0, monotonic=clock)
    watchdog.loop = asyncio.get_running_loop()
    watchdog.tick()
    seen = []

    async def blocking():
        clock.now += 5
        seen.append(watchdog.check())

    async def handler(ctx):
        await asyncio.gather(ctx.step.run("a", lambda: 1), ctx.step.run("b", blocking))

    await run(handler)
    [stall] = seen
    assert stall is not None and stall.doing is not None
    assert (stall.doing.run_id, stall.doing.step_id) == ("run-1", "b")


def test_a_loop_that_ticks_is_never_reported():
    clock = Clock()
    watchdog = LoopWatchdog(threshold=1.0, monotonic=clock)
    watchdog.tick()
    for _ in range(10):
        clock.now += 0.9
        assert watchdog.check() is None
        watchdog.tick()
    assert watchdog.last is None and watchdog.recent() is None


def test_a_frozen_process_is_not_a_blocked_loop():
    clock = Clock()
    watchdog = LoopWatchdog(threshold=1.0, monotonic=clock)
    watchdog.tick()
    assert watchdog.check() is None
    clock.now += 10  # SIGSTOP: the watchdog thread did not run either
    assert watchdog.check() is None
    assert watchdog.last is None


async def test_a_lowered_threshold_restarts_the_ticker_at_once():
    """The gateway's heartbeat interval (from Ready) may be far below the default: a ticker
    asleep for a quarter of the old threshold must not look like a stalled loop."""
    clock = Clock()
    watchdog = LoopWatchdog(threshold=5.0, monotonic=clock)
    watchdog.start()
    try:
        await asyncio.sleep(0)  # the ticker ticks, then sleeps 1.25 s
        watchdog.threshold = 0.2
        clock.now += 0.3  # over the new threshold since the last tick...
        for _ in range(50):  # ...but the loop turns: the restarted ticker ticks (every 0.05 s)
            await asyncio.sleep(0.01)
            if watchdog._tick == clock.now:
                break
        assert watchdog.check() is None
    finally:
        watchdog.stop()
