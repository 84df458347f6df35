"""The smallest end-to-end check in one process: three steps, each run once."""

from __future__ import annotations

from worker import App, TriggerEvent


async def test_three_steps_complete_in_process(harness):
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

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "go"})
    run = await harness.wait_status((await harness.run_of(event_id))["id"], "Completed")
    assert run["output"] == ["a", "b", "c"]
    assert calls == ["a", "b", "c"]
    assert [s["id"] for s in run["steps"]] == ["a", "b", "c"]
