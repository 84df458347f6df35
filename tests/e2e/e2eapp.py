"""The user app the end-to-end tests serve: copied into each cluster's workdir and run there.

Every step appends one line, ``KEY STEP PID [EXTRA...]``, to ``ledger.txt`` next to this file
the moment it starts, so a test can count how many times each step ran and on which worker.
A *gated* step writes its line and then waits for the file ``go-KEY`` (or ``go-KEY-PID``, for
one worker only) to appear: the test knows the step is running (its line is there) and decides
when, and on which worker, it may finish.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import worker
from worker import App, NonRetriableError, TriggerEvent

HERE = Path(__file__).resolve().parent
LEDGER = HERE / "ledger.txt"

app = App("e2e")


def note(*fields: object) -> None:
    """Append one line to the ledger (one short write: lines from processes do not mix)."""
    with LEDGER.open("a") as ledger:
        ledger.write(" ".join(str(f) for f in fields) + "\n")


async def work(key: str, name: str, gated: bool) -> int:
    note(key, name, os.getpid())
    if gated:  # open for every worker (go-KEY) or for this one only (go-KEY-PID)
        gates = (HERE / f"go-{key}", HERE / f"go-{key}-{os.getpid()}")
        while not any(gate.exists() for gate in gates):
            await asyncio.sleep(0.02)
    return os.getpid()


@app.function(id="three", trigger=TriggerEvent("e2e/three"), retries=2)
async def three(ctx: worker.Context) -> dict[str, Any]:
    """Steps a, b, c; ``data.gate`` names the step that waits for ``go-KEY``.

    The output maps each step to the pid of the worker whose result was recorded.
    """
    key, gate = ctx.event.data["key"], ctx.event.data.get("gate")
    out: dict[str, Any] = {}
    for name in ("a", "b", "c"):
        out[name] = await ctx.step.run(name, work, key, name, name == gate)
    return out


@app.function(id="flaky", trigger=TriggerEvent("e2e/flaky"))
async def flaky(ctx: worker.Context) -> str:
    """One step that fails on its attempts 0 and 1 and succeeds on attempt 2."""
    key = ctx.event.data["key"]

    async def call() -> str:
        note(key, "call", os.getpid(), ctx.attempt)
        if ctx.attempt < 2:
            raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
        return f"ok on attempt {ctx.attempt}"

    result: str = await ctx.step.run("call", call)
    return result


@app.function(id="fatal", trigger=TriggerEvent("e2e/fatal"))
async def fatal(ctx: worker.Context) -> str:
    """A step that raises NonRetriableError: the run fails at once."""
    key = ctx.event.data["key"]

    async def charge() -> None:
        note(key, "charge", os.getpid(), ctx.attempt)
        raise NonRetriableError("card declined")

    await ctx.step.run("charge", charge)
    return "unreachable"


@app.function(id="slow", trigger=TriggerEvent("e2e/slow"), retries=0)
async def slow(ctx: worker.Context) -> int:
    """One blocking step that takes a moment and records when it ran, on which worker."""
    key = ctx.event.data["key"]

    def busy() -> int:
        started = time.time()
        time.sleep(float(ctx.event.data.get("seconds", 0.2)))
        note(key, "busy", os.getpid(), f"{started:.6f}", f"{time.time():.6f}")
        return os.getpid()

    pid: int = await ctx.step.run("busy", busy)
    return pid


@app.function(id="logged", trigger=TriggerEvent("e2e/logged"))
async def logged(ctx: worker.Context) -> str:
    """Logs through ``ctx.logger`` in its body and inside a step."""
    ctx.logger.info("user_body_line", note="body")

    async def inside() -> str:
        ctx.logger.info("user_step_line", note="step")
        return "ok"

    result: str = await ctx.step.run("inside", inside)
    return result


@app.function(id="limited", trigger=TriggerEvent("e2e/limited"),
              rate_limit=worker.RateLimit(2, "1h", key="event.data.key"))
async def limited(ctx: worker.Context) -> int:
    """Two runs per key per hour; an event over that starts a Skipped run."""
    pid: int = await ctx.step.run("work", work, ctx.event.data["key"], "work", False)
    return pid


@app.function(id="single", trigger=TriggerEvent("e2e/single"),
              singleton=worker.Singleton(key="event.data.key"))
async def single(ctx: worker.Context) -> int:
    """One live run per key; its step waits for ``go-KEY``: events meanwhile are Skipped."""
    pid: int = await ctx.step.run("hold", work, ctx.event.data["key"], "hold", True)
    return pid
