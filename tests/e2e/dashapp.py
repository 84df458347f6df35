"""The app the dashboard's browser tests serve: a three-step order and a long nap."""

from __future__ import annotations

from typing import Any

import worker
from worker import App, TriggerCron, TriggerEvent

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
