"""The benchmark's app: a function of three trivial durable steps (and the same function
under flow control, keyed by tenant, for ``python -m bench flow``; and written with plain
``def`` step callables, with lambdas and as a ``def`` function, for ``python -m bench styles``).
"""

from __future__ import annotations

import worker
from worker import App, Concurrency, Throttle, TriggerEvent

app = App("bench")


async def work(value: int) -> int:
    return value


def plain_work(value: int) -> int:
    return value


async def _three(ctx: worker.Context) -> int:
    one = await ctx.step.run("one", work, 1)
    two = await ctx.step.run("two", work, 2)
    three = await ctx.step.run("three", work, 3)
    return int(one + two + three)


@app.function(id="three-steps", trigger=TriggerEvent("bench/go"), retries=0)
async def three_steps(ctx: worker.Context) -> int:
    return await _three(ctx)


@app.function(id="three-def-steps", trigger=TriggerEvent("bench/def-steps"), retries=0)
async def three_def_steps(ctx: worker.Context) -> int:
    """The same steps, each a plain ``def`` callable."""
    one = await ctx.step.run("one", plain_work, 1)
    two = await ctx.step.run("two", plain_work, 2)
    three = await ctx.step.run("three", plain_work, 3)
    return int(one + two + three)


@app.function(id="three-lambdas", trigger=TriggerEvent("bench/lambdas"), retries=0)
async def three_lambdas(ctx: worker.Context) -> int:
    """The same steps, each a new ``lambda`` (a new callable on every call, as users write)."""
    one = await ctx.step.run("one", lambda: 1)
    two = await ctx.step.run("two", lambda: 2)
    three = await ctx.step.run("three", lambda: 3)
    return int(one + two + three)


@app.function(id="three-steps-def", trigger=TriggerEvent("bench/def-function"), retries=0)
def three_steps_def(ctx: worker.Context) -> int:
    """The same function written as a plain ``def`` function (blocking step API)."""
    one = ctx.step.run("one", plain_work, 1)
    two = ctx.step.run("two", plain_work, 2)
    three = ctx.step.run("three", plain_work, 3)
    return int(one + two + three)


@app.function(id="keyed", trigger=TriggerEvent("bench/keyed"), retries=0,
              concurrency=Concurrency(5, key="event.data.tenant"))
async def keyed(ctx: worker.Context) -> int:
    return await _three(ctx)


@app.function(id="throttled", trigger=TriggerEvent("bench/throttled"), retries=0,
              throttle=Throttle(1000, "1s", burst=1000, key="event.data.tenant"))
async def throttled(ctx: worker.Context) -> int:
    return await _three(ctx)
