"""The app the engine-poison attacks run beside: a normal function and a system-event listener."""

from __future__ import annotations

from typing import Any

import worker
from worker import App, TriggerEvent

app = App("poison")


@app.function(id="normal", trigger=TriggerEvent("poison/normal"))
async def normal(ctx: worker.Context) -> dict[str, Any]:
    return {"ok": await ctx.step.run("a", lambda: True)}


@app.function(id="deep", trigger=TriggerEvent("poison/deep"))
async def deep(ctx: worker.Context) -> str:
    return "done"


@app.function(id="on-finish", trigger=TriggerEvent("tether/function.finished"))
async def on_finish(ctx: worker.Context) -> str:
    """Listens to every finish, without a filter: the loop guard keeps its own out."""
    return str(ctx.event.data.get("function_id"))
