"""Tether's Python SDK: declare durable functions and serve them from a worker process.

::

    import worker
    from worker import App, TriggerEvent

    app = App("shop")

    @app.function(id="sync-systems", trigger=TriggerEvent("auto/sync.request"), retries=4)
    async def sync_systems(ctx: worker.Context):
        data = await ctx.step.run("get-data", get_data)
        await ctx.step.run("save-data", save, data)
        return {"saved": len(data)}

Serve it with ``python -m worker myapp:app``.
"""

from __future__ import annotations

from protocol.durations import to_seconds
from protocol.manifest import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)
from worker.app import App, Event, Function
from worker.context import Context
from worker.errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    TetherError,
)
from worker.runtime import Worker

__all__ = [
    "App",
    "Batch",
    "Cancel",
    "Concurrency",
    "Context",
    "Debounce",
    "Event",
    "Function",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Singleton",
    "StepError",
    "TetherError",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "Worker",
    "to_seconds",
]
