"""A grant the worker gets twice, through a real gateway and worker: one execution, two answers.

The gateway sends a grant again when it heard no answer (the grant or the answer was lost on
the way, see ``gateway.leases.Unanswered``); it may cross the lease's own checkpoints on the
wire, even its last one. The worker answers every copy and never runs a lease twice.
"""

from __future__ import annotations

import asyncio

from protocol import messages as m
from worker import App, TriggerEvent


async def test_a_grant_sent_again_is_answered_and_never_run_twice(harness):
    app = App("dup")
    bodies: list[str] = []
    release = asyncio.Event()

    @app.function(id="f", trigger=TriggerEvent("dup/go"), retries=0)
    async def f(ctx):
        await ctx.step.run("a", lambda: bodies.append("a") or 1)
        await release.wait()
        return "done"

    worker = await harness.start_worker([app])
    sent: list[m.Message] = []
    send = worker.link.send
    worker.link.send = lambda message: (sent.append(message), send(message))[1]  # type: ignore[method-assign]

    (event_id,) = await harness.send({"name": "dup/go"})
    run = await harness.run_of(event_id)
    await harness.wait_status(run["id"], "Running")
    ((run_id, fence),) = worker.executions
    again = m.LeaseGranted(run_id=run_id, fence=fence, function_id="dup/f", events=[])

    worker._on_message(again)  # while it runs
    assert len(worker.executions) == 1
    release.set()
    assert (await harness.wait_status(run["id"], "Completed"))["output"] == "done"
    worker._on_message(again)  # after it ended here
    assert worker.executions == {}

    answers = [msg for msg in sent if isinstance(msg, m.LeaseAccepted)]
    assert [(a.run_id, a.fence) for a in answers] == [(run_id, fence)] * 3  # grant + 2 copies
    assert bodies == ["a"]
