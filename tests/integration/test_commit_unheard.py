"""The commit reached the disk, then the caller heard an error: nothing runs or counts twice.

A store write that commits and then raises (a connection dropped after COMMIT, an I/O error
reported late) looks to the engine like a failed batch: HTTP senders get 503, and the
workers whose checkpoints were in it lose their socket. Everything they then send again (the
same event ids, the same checkpoints) must find what was committed, on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers.waiting import eventually
from worker import App, TriggerEvent


class CommitsThenRaises:
    """Wraps a store: the first batch that ``when`` picks commits, then the write raises."""

    def __init__(self, store: Any, when: Any) -> None:
        self._store = store
        self._when = when
        self.fired = 0

    async def write(self, batch: Any) -> Any:
        result = await self._store.write(batch)
        if not self.fired and self._when(batch):
            self.fired += 1
            raise OSError("disk I/O error reported after COMMIT")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def app(bodies: list[str], release: asyncio.Event) -> App:
    a = App("unheard")

    @a.function(id="f", trigger=TriggerEvent("unheard/go"), retries=0)
    async def f(ctx):
        one = await ctx.step.run("a", lambda: bodies.append("a") or 1)
        await release.wait()
        two = await ctx.step.run("b", lambda: bodies.append("b") or 2)
        return one + two

    return a


async def test_an_event_committed_but_answered_503_is_stored_once_when_sent_again(harness):
    gw = harness.gateway
    gw.engine.store = fault = CommitsThenRaises(gw.engine.store, lambda b: bool(b.events))
    bodies: list[str] = []
    release = asyncio.Event()
    release.set()
    await harness.start_worker([app(bodies, release)])

    event = {"id": "01KA0000000000000000000001", "name": "unheard/go", "data": {}}
    first = await harness.http.post("/e/dev", json=event)
    assert first.status_code == 503, first.text
    assert "same ids" in first.json()["error"]  # what the sender must do, not "nothing stored"
    assert fault.fired == 1
    again = await harness.http.post("/e/dev", json=event)
    assert again.status_code == 200, again.text

    run = await harness.run_of(event["id"])
    done = await harness.wait_status(run["id"], "Completed")
    assert done["output"] == 3
    assert len(await harness.runs_of(event["id"])) == 1
    assert bodies == ["a", "b"]


async def test_a_checkpoint_committed_but_unheard_is_not_run_or_recorded_twice(harness):
    gw = harness.gateway

    def first_step(batch: Any) -> bool:
        return any(getattr(w.message, "step_id", None) == "a" for w in batch.checkpoints)

    gw.engine.store = fault = CommitsThenRaises(gw.engine.store, first_step)
    bodies: list[str] = []
    release = asyncio.Event()
    worker = await harness.start_worker([app(bodies, release)])
    (event_id,) = await harness.send({"name": "unheard/go"})
    run = await harness.run_of(event_id)

    async def fired() -> bool | None:
        return fault.fired > 0 or None

    async def back() -> bool | None:  # on a new socket (the gateway dropped the old one)
        return (worker.link.connected.is_set() and len(gw.registry) == 1) or None

    await eventually(fired, 10, what="the faulty commit")
    await eventually(back, 10, what="the worker back on a new socket")
    release.set()
    done = await harness.wait_status(run["id"], "Completed")
    assert done["output"] == 3
    assert [s["id"] for s in done["steps"]] == ["a", "b"]
    assert bodies == ["a", "b"], "a step whose result was committed ran again"
