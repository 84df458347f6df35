"""The benchmark's app: a function of three trivial durable steps."""

from __future__ import annotations

import worker
from worker import App, TriggerEvent

app = App("bench")


async def work(value: int) -> int:
    return value


@app.function(id="three-steps", trigger=TriggerEvent("bench/go"), retries=0)
async def three_steps(ctx: worker.Context) -> int:
    one = await ctx.step.run("one", work, 1)
    two = await ctx.step.run("two", work, 2)
    three = await ctx.step.run("three", work, 3)
    return int(one + two + three)
