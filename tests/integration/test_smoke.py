"""The smallest end-to-end check in one process: three steps, each run once."""

from __future__ import annotations

import asyncio

import httpx

from worker import App, TriggerEvent, Worker


async def test_three_steps_complete_in_process(gateway_factory):
    gw = await gateway_factory()
    app = App("t")
    calls: list[str] = []

    async def step(name: str) -> str:
        calls.append(name)
        return name

    @app.function(trigger=TriggerEvent("go"))
    async def three(ctx):
        a = await ctx.step.run("a", step, "a")
        b = await ctx.step.run("b", step, "b")
        c = await ctx.step.run("c", step, "c")
        return [a, b, c]

    w = Worker([app], gateways=[f"ws://127.0.0.1:{gw.connect_port}/connect"])
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(w.link.connected.wait(), 5)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        r = await http.post("/e/dev", json={"name": "go"})
        (event_id,) = r.json()["ids"]
        for _ in range(500):
            runs = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
            if runs and runs[0]["status"] == "Completed":
                break
            await asyncio.sleep(0.01)
    assert runs[0]["output"] == ["a", "b", "c"]
    assert calls == ["a", "b", "c"]
    await w.drain()
    await task
