"""The step API end to end in one process: real gateway, real worker, real sockets."""

from __future__ import annotations

import asyncio

from worker import App, Cancel, Event, StepError, Timeouts, TriggerEvent


async def test_sleep_suspends_then_resumes(harness):
    app = App("t")
    marks: list[str] = []

    @app.function(trigger=TriggerEvent("nap"))
    async def nap(ctx):
        await ctx.step.run("before", lambda: marks.append("before") or 1)
        await ctx.step.sleep("zz", "300ms")
        await ctx.step.run("after", lambda: marks.append("after") or 2)
        return "rested"

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "nap"})
    run = await harness.run_of(event_id)
    sleeping = await harness.wait_status(run["id"], "Sleeping")
    assert [s["id"] for s in sleeping["steps"]] == ["before", "zz"]
    done = await harness.wait_status(run["id"], "Completed")  # woken, not left asleep
    assert done["output"] == "rested"
    assert marks == ["before", "after"]
    assert {s["id"]: s["status"] for s in done["steps"]} == {
        "before": "Completed", "zz": "Completed", "after": "Completed"}


async def test_wait_for_event_resumed_by_matching_event(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("order.created"))
    async def approve(ctx):
        got = await ctx.step.wait_for_event(
            "approval", event="order.approved", timeout="1m",
            if_="async.data.order == event.data.order")
        return got.data if got else None

    await harness.start_worker([app])
    (e1,) = await harness.send({"name": "order.created", "data": {"order": 1}})
    (e2,) = await harness.send({"name": "order.created", "data": {"order": 2}})
    run1, run2 = await harness.run_of(e1), await harness.run_of(e2)
    await harness.wait_status(run1["id"], "Waiting")
    await harness.wait_status(run2["id"], "Waiting")
    await harness.send({"name": "order.approved", "data": {"order": 2, "by": "ann"}})
    done = await harness.wait_status(run2["id"], "Completed")
    assert done["output"] == {"order": 2, "by": "ann"}
    assert (await harness.run(run1["id"]))["status"] == "Waiting"


async def test_wait_for_event_times_out_with_none(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("ask"))
    async def ask(ctx):
        got = await ctx.step.wait_for_event("reply", event="answer", timeout=0.3)
        return "timed out" if got is None else "answered"

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "ask"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed")
    assert done["output"] == "timed out"


async def test_invoke_returns_child_output_and_raises_on_failure(harness):
    app = App("t")

    @app.function(id="double", retries=0)
    async def double(ctx):
        if ctx.event.data["n"] < 0:
            raise ValueError("negative")
        return ctx.event.data["n"] * 2

    @app.function(trigger=TriggerEvent("parent"))
    async def parent(ctx):
        four = await ctx.step.invoke("a", function=double, data={"n": 2})
        try:
            await ctx.step.invoke("b", function="t/double", data={"n": -1})
        except StepError as exc:
            return [four, exc.name]
        return [four, None]

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "parent"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed", "Failed")
    assert done["output"] == [4, "ValueError"], done


async def test_send_event_triggers_other_functions_once(harness):
    app = App("t")
    seen: list[int] = []

    @app.function(trigger=TriggerEvent("fanout"))
    async def fanout(ctx):
        return await ctx.step.send_event("emit", [Event("child", {"i": i}) for i in range(3)])

    @app.function(trigger=TriggerEvent("child"))
    async def child(ctx):
        seen.append(ctx.event.data["i"])
        return ctx.event.data["i"]

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "fanout"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed")
    ids = done["output"]
    assert len(ids) == 3
    for child_event in ids:
        child_run = await harness.run_of(child_event)
        await harness.wait_status(child_run["id"], "Completed")
    assert sorted(seen) == [0, 1, 2]


async def test_parallel_branches_with_a_sleep(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("par"))
    async def par(ctx):
        async def slow():
            await ctx.step.sleep("nap", 0.2)
            return await ctx.step.run("after-nap", lambda: "b")

        async def fast():
            one = await ctx.step.run("one", lambda: 1)
            return await ctx.step.run("two", lambda: one + 1)

        return await asyncio.gather(slow(), fast())

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "par"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed")
    assert done["output"] == ["b", 2]


async def test_sync_function_parallel_and_sleep(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("sync"))
    def sync(ctx):
        a, b = ctx.step.parallel(lambda: ctx.step.run("a", lambda: 1),
                                 lambda: ctx.step.run("b", lambda: 2))
        ctx.step.sleep("nap", 0.1)
        return a + b

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "sync"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed")
    assert done["output"] == 3


async def test_cancel_by_api_and_by_event(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("long"),
                  cancel_on=[Cancel("stop", if_="async.data.id == event.data.id")])
    async def long(ctx):
        await ctx.step.sleep("forever", "1h")

    await harness.start_worker([app])
    e1, e2 = await harness.send({"name": "long", "data": {"id": 1}},
                                {"name": "long", "data": {"id": 2}})
    r1, r2 = await harness.run_of(e1), await harness.run_of(e2)
    await harness.wait_status(r1["id"], "Sleeping")
    await harness.wait_status(r2["id"], "Sleeping")
    await harness.send({"name": "stop", "data": {"id": 1}})
    cancelled = await harness.wait_status(r1["id"], "Cancelled")
    assert "cancel_on" in cancelled["error"]["message"]
    response = await harness.http.post(f"/v1/runs/{r2['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancelled"] is True
    assert (await harness.run(r2["id"]))["status"] == "Cancelled"


async def test_timeouts_finish_cancels(harness):
    app = App("t")

    @app.function(trigger=TriggerEvent("slow"), timeouts=Timeouts(finish=0.3))
    async def slow(ctx):
        await ctx.step.sleep("long", "1h")

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "slow"})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Cancelled")
    assert "timeouts.finish" in done["error"]["message"]


async def test_on_failure_runs_after_last_retry(harness):
    app = App("t")
    handled: list[dict] = []

    async def alert(ctx):
        handled.append(ctx.event.data)
        return "alerted"

    @app.function(trigger=TriggerEvent("doomed"), retries=1, on_failure=alert)
    async def doomed(ctx):
        raise RuntimeError("always")

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "doomed"})
    run = await harness.run_of(event_id)
    failed = await harness.wait_status(run["id"], "Failed")
    assert failed["attempt"] == 1

    async def alerted():
        return handled
    from tests.helpers.waiting import eventually
    await eventually(alerted, what="the on_failure handler")
    assert handled[0]["run_id"] == run["id"]
    assert handled[0]["function_id"] == "t/doomed"
    assert handled[0]["error"]["message"] == "always"


async def test_workers_enforce_the_gateway_s_limits(gateway_factory):
    from tests.helpers.inproc import Harness

    harness = Harness(await gateway_factory(max_steps=3, max_step_result=2000))
    app = App("t")

    @app.function(trigger=TriggerEvent("many"), retries=0)
    async def many(ctx):
        for i in range(5):
            await ctx.step.run("s", lambda n=i: n)

    @app.function(trigger=TriggerEvent("big"), retries=0)
    async def big(ctx):
        return await ctx.step.run("blob", lambda: "x" * 5000)

    try:
        await harness.start_worker([app])
        many_id, big_id = await harness.send({"name": "many"}, {"name": "big"})
        ran_many = await harness.wait_status((await harness.run_of(many_id))["id"], "Failed")
        assert "more than 3 steps" in ran_many["error"]["message"]
        ran_big = await harness.wait_status((await harness.run_of(big_id))["id"], "Failed")
        assert "limit" in ran_big["error"]["message"]
        assert ran_big["steps"][0]["error"]["name"] == "LimitExceeded"
    finally:
        await harness.close()
