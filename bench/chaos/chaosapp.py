"""The app the chaos loops serve, copied into the cluster's work directory.

Every step execution writes a ``start`` line to the ledger (its own file per process, fsync'd)
before its body runs and an ``end`` line after it, so what ran is known even when the process
is killed a moment later. A step's result is ``{"v": f(run, step), "x": nonce}``: the value is
deterministic (a replay that returns the wrong memo is caught), the nonce names the execution
whose result the gateway committed.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import worker
from worker import App, Event, TriggerCron, TriggerEvent

app = App("chaos")
#: Served only by the clock loops: a cron tick every second.
clock = App("chaos-clock")

_ledger_fd: int | None = None


def _ledger() -> int:
    global _ledger_fd
    if _ledger_fd is None:
        folder = Path(os.environ.get("TETHER_CHAOS_DIR", Path(__file__).parent)) / "ledger"
        folder.mkdir(parents=True, exist_ok=True)
        _ledger_fd = os.open(folder / f"{os.getpid()}.jsonl",
                             os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _ledger_fd


def witness(record: dict[str, Any]) -> None:
    """One line, one write (O_APPEND), fsync'd before the step goes on."""
    fd = _ledger()
    os.write(fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
    os.fsync(fd)


def lease_fence(ctx: worker.Context) -> int | None:
    """The fence of the lease this execution runs under. The SDK keeps it private; the witness
    needs it to tell a stale execution (an older lease, whose result fencing refuses) from a
    step run again after its result was committed."""
    fence = getattr(getattr(ctx, "_exec", None), "fence", None)
    return fence if isinstance(fence, int) else None


def expected(run_id: str, step_id: str) -> int:
    """The value a step of a run must return, whichever execution computes it."""
    return zlib.crc32(f"{run_id}/{step_id}".encode())


def body(run_id: str, step_id: str, attempt: int, hold: float, fence: int | None = None
         ) -> dict[str, Any]:
    """A plain function (so the worker runs it on a thread, and the fsyncs block no loop)."""
    nonce = uuid.uuid4().hex[:12]
    witness({"e": "start", "run": run_id, "step": step_id, "x": nonce, "pid": os.getpid(),
             "attempt": attempt, "fence": fence, "t": time.monotonic(), "w": time.time()})
    if hold:
        # Not time.sleep: under libfaketime (the clock loops) Python's clock_nanosleep fails.
        threading.Event().wait(hold)
    witness({"e": "end", "x": nonce, "t": time.monotonic()})
    return {"v": expected(run_id, step_id), "x": nonce}


@app.function(id="flow", trigger=TriggerEvent("chaos/go"), retries=10)
async def flow(ctx: worker.Context) -> dict[str, Any]:
    """``data.steps`` witnessed steps of ``data.hold`` seconds; with ``data.effects``, then
    one send_event and one invoke, whose effects the checker counts."""
    data = ctx.event.data
    out: dict[str, Any] = {}
    for i in range(int(data.get("steps", 3))):
        name = f"s{i}"
        out[name] = await ctx.step.run(name, body, ctx.run_id, name, ctx.attempt,
                                       float(data.get("hold", 0.0)), lease_fence(ctx))
        if i == 0 and data.get("nap"):  # a durable sleep between s0 and s1
            await ctx.step.sleep("nap", float(data["nap"]))
    if data.get("effects"):
        await ctx.step.send_event("send", Event("chaos/sent", {"parent": ctx.run_id}))
        out["invoke"] = await ctx.step.invoke("invoke", function=invoked,
                                              data={"parent": ctx.run_id})
    return out


@app.function(id="sent", trigger=TriggerEvent("chaos/sent"), retries=10)
async def sent(ctx: worker.Context) -> str:
    """The effect of a send_event: one run per event the parent sent."""
    return str(ctx.event.data["parent"])


@app.function(id="invoked", trigger=TriggerEvent("chaos/invoked"), retries=10)
async def invoked(ctx: worker.Context) -> str:
    """The effect of an invoke: one child run per parent."""
    return str(ctx.event.data["parent"])


@clock.function(id="tick", trigger=TriggerCron("* * * * * *"), retries=10)
async def tick(ctx: worker.Context) -> int:
    """One run per second; its output is the tick (ms), so a tick run twice shows."""
    return int(ctx.event.ts)
