"""A step method called without ``await`` never runs: the run fails for good, naming it."""

from __future__ import annotations

import asyncio
import gc
import warnings

from protocol import messages as m
from tests.unit import test_runner

pool, run = test_runner.pool, test_runner.run


async def test_a_step_never_awaited_fails_the_run_naming_it(run):
    async def handler(ctx):
        ctx.step.sleep("pause", "1h")  # the bug: no await
        return "done"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no RuntimeWarning either
        rec, _ = await run(handler, retries=5)
        gc.collect()
    assert rec.kinds == ["run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert failed.final and failed.error.name == "NonRetriableError"
    assert "ctx.step.sleep('pause') was called without await" in failed.error.message
    assert "never ran" in failed.error.message


async def test_several_unawaited_calls_are_listed_even_when_the_body_raised(run):
    async def handler(ctx):
        ctx.step.run("a", lambda: 1)
        ctx.step.send_event("b", [])
        raise ValueError("later")

    rec, _ = await run(handler, retries=5)
    [failed] = rec.of(m.RunFailed)
    assert failed.final
    assert "ctx.step.run('a'), ctx.step.send_event('b') were called without await" in (
        failed.error.message)
    assert "ValueError: later" in failed.error.stack


async def test_awaited_gathered_and_late_awaited_steps_are_fine(run):
    async def handler(ctx):
        later = ctx.step.run("later", lambda: 3)
        a, b = await asyncio.gather(ctx.step.run("a", lambda: 1), ctx.step.run("b", lambda: 2))
        task = asyncio.ensure_future(ctx.step.run("t", lambda: 4))
        return [a, b, await later, await task]

    rec, _ = await run(handler)
    assert rec.kinds[-1] == "run_completed" and rec.output() == [1, 2, 3, 4]


async def test_many_steps_do_not_trip_the_check(run):
    async def handler(ctx):
        return sum([await ctx.step.run(f"s{i}", lambda i=i: i) for i in range(200)])

    rec, _ = await run(handler, limits=test_runner.Limits(max_steps=500))
    assert rec.output() == sum(range(200))
