"""The app the dashboard's browser tests serve: a three-step order, a long nap, a step that
fails once and invokes the order, and a throttled function."""

from __future__ import annotations

from typing import Any

import worker
from worker import App, RetryAfterError, Throttle, TriggerCron, TriggerEvent

app = App("dash")


async def fetch(order: str) -> dict[str, Any]:
    return {"order": order, "items": 2}


async def charge(total: int) -> str:
    return f"charged {total}"


async def notify(order: str) -> bool:
    return True


@app.function(id="order", trigger=TriggerEvent("dash/order"))
async def order(ctx: worker.Context) -> dict[str, Any]:
    """Three steps one after the other: fetch, charge, notify."""
    number = ctx.event.data["order"]
    got = await ctx.step.run("fetch", fetch, number)
    paid = await ctx.step.run("charge", charge, got["items"] * 10)
    await ctx.step.run("notify", notify, number)
    return {"order": number, "paid": paid}


@app.function(id="napper", trigger=TriggerEvent("dash/nap"))
async def napper(ctx: worker.Context) -> str:
    """Sleeps an hour: a run to cancel."""
    await ctx.step.run("before", notify, "x")
    await ctx.step.sleep("nap", 3600)
    return "woke"


@app.function(id="nightly", trigger=TriggerCron("0 3 * * *"))
async def nightly(ctx: worker.Context) -> None:
    """A schedule, for the Functions page's next tick."""


#: Attempts of the flaky step per run (the worker process lives through the retry).
_calls: dict[str, int] = {}


@app.function(id="flaky", trigger=TriggerEvent("dash/flaky"))
async def flaky(ctx: worker.Context) -> dict[str, Any]:
    """A step that fails once (retried after 1 s), then a child run: the timeline's bars."""

    async def call() -> str:
        _calls[ctx.run_id] = _calls.get(ctx.run_id, 0) + 1
        if _calls[ctx.run_id] == 1:
            raise RetryAfterError("not yet", 1)
        return "ok"

    got = await ctx.step.run("call", call)
    child = await ctx.step.invoke("child", function=order, data={"order": "K-1"})
    return {"got": got, "child": child}


@app.function(id="slow", trigger=TriggerEvent("dash/slow"),
              throttle=Throttle(limit=1, period="1h", key="event.data.user"))
async def slow(ctx: worker.Context) -> None:
    """One start per user an hour: the rest wait, per key, on the Functions page."""
