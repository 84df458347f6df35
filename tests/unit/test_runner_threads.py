"""A ``def`` function's steps are decided on its own thread when nothing is unusual.

A new step while the lease is sound, or a replay, needs no round trip to the event loop; a
lease in doubt is decided on the loop (which may lose the lease: the step never starts).
Parallel branches name their steps concurrently, each id once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from protocol import messages as m
from tests.unit import test_runner
from tests.unit.test_runner import BOUND, EVENT, Counter, Recorder
from worker.app import App
from worker.runner import Limits, RunExecution

pool = test_runner.pool


async def execute(pool, handler: Callable[..., Any], **options: Any
                  ) -> tuple[Recorder, RunExecution]:
    function = App("shop").function(id="f", retries=0)(handler)
    lease = m.LeaseGranted(run_id="run-1", fence=7, function_id="shop/f",
                           events=[json.dumps(EVENT).encode()])
    recorder = Recorder()
    execution = RunExecution(lease, function, emit=recorder, threads=pool, limits=Limits(),
                             **options)
    execution.start()
    await asyncio.wait_for(execution.wait(), BOUND)
    return recorder, execution


async def test_a_lease_in_doubt_is_decided_on_the_loop(pool) -> None:
    step = Counter(1)
    asked: list[str] = []

    def lease_ok() -> bool:
        asked.append("loop")
        return False

    def handler(ctx):
        return ctx.step.run("charge", step)

    rec, execution = await execute(pool, handler, lease_fine=lambda: False, lease_ok=lease_ok)
    assert asked == ["loop"] and execution.lost
    assert step.calls == 0 and rec.kinds == []  # never started; a lost lease says nothing


async def test_a_doubt_the_loop_clears_runs_the_step(pool) -> None:
    step = Counter(2)

    def handler(ctx):
        return ctx.step.run("charge", step) + ctx.step.run("ship", step)

    rec, execution = await execute(pool, handler, lease_fine=lambda: False,
                                   lease_ok=lambda: True)
    assert step.calls == 2 and not execution.lost
    assert rec.kinds == ["step_completed", "step_completed", "run_completed"]
    assert rec.output() == 4


async def test_parallel_branches_name_repeated_steps_once_each(pool) -> None:
    def handler(ctx):
        branches = [lambda i=i: ctx.step.run("same", lambda: i) for i in range(12)]
        return sorted(ctx.step.parallel(*branches))

    rec, _ = await execute(pool, handler)
    ids = [c.step_id for c in rec.of(m.StepCompleted)]
    assert sorted(ids) == sorted(["same"] + [f"same:{i}" for i in range(1, 12)])
    assert rec.output() == list(range(12))
