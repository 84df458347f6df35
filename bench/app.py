"""The benchmark's app: a function of three trivial durable steps (and the same function
under flow control, keyed by tenant, for ``python -m bench flow``)."""

from __future__ import annotations

import worker
from worker import App, Concurrency, Throttle, TriggerEvent

app = App("bench")


async def work(value: int) -> int:
    return value


async def _three(ctx: worker.Context) -> int:
    one = await ctx.step.run("one", work, 1)
    two = await ctx.step.run("two", work, 2)
    three = await ctx.step.run("three", work, 3)
    return int(one + two + three)


@app.function(id="three-steps", trigger=TriggerEvent("bench/go"), retries=0)
async def three_steps(ctx: worker.Context) -> int:
    return await _three(ctx)


@app.function(id="keyed", trigger=TriggerEvent("bench/keyed"), retries=0,
              concurrency=Concurrency(5, key="event.data.tenant"))
async def keyed(ctx: worker.Context) -> int:
    return await _three(ctx)


@app.function(id="throttled", trigger=TriggerEvent("bench/throttled"), retries=0,
              throttle=Throttle(1000, "1s", burst=1000, key="event.data.tenant"))
async def throttled(ctx: worker.Context) -> int:
    return await _three(ctx)
