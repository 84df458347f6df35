"""worker.testing: users' in-process harness for durable functions."""

from __future__ import annotations

import pytest

from worker import App, Event, NonRetriableError, StepError, TriggerEvent
from worker.testing import run, run_sync

app = App("shop")
charged: list[int] = []


async def charge(order: int) -> dict:
    charged.append(order)
    return {"charged": order}


@app.function(trigger=TriggerEvent("shop/order.created"))
async def approve_order(ctx):
    order = ctx.event.data["order"]
    receipt = await ctx.step.run("charge-card", charge, order)
    await ctx.step.sleep("cool-off", "1h")
    approval = await ctx.step.wait_for_event(
        "approval", event="shop/order.approved", timeout="1d",
        if_="async.data.order == event.data.order")
    await ctx.step.send_event("notify", [Event("shop/notified", {"order": order})])
    return {"order": order, "approved": approval is not None, "receipt": receipt}


@app.function(retries=2)
async def flaky(ctx):
    async def attempt():
        if ctx.attempt < 2:
            raise RuntimeError(f"try {ctx.attempt}")
        return ctx.attempt
    return await ctx.step.run("attempt", attempt)


@app.function()
def sync_total(ctx):
    parts = ctx.step.parallel(lambda: ctx.step.run("a", lambda: 1),
                              lambda: ctx.step.run("b", lambda: 2))
    child = ctx.step.invoke("child", function="shop/other", data={"x": 1})
    return sum(parts) + child


async def test_mocks_steps_skips_sleeps_and_feeds_waits():
    charged.clear()
    result = await run(
        approve_order, Event("shop/order.created", {"order": 7}),
        steps={"charge-card": {"charged": "mock"}},
        waits={"approval": Event("shop/order.approved", {"order": 7})},
    )
    assert result.status == "Completed"
    assert result.output == {"order": 7, "approved": True, "receipt": {"charged": "mock"}}
    assert charged == []  # the mocked step's code never ran
    assert result.sleeps == [("cool-off", 3600.0)]
    assert result.waits == [("approval", "shop/order.approved")]
    assert [e.name for e in result.sent] == ["shop/notified"]
    assert result.executions >= 3  # suspended at the sleep and at the wait, replayed after


def test_wait_without_event_times_out_and_real_steps_run():
    charged.clear()
    result = run_sync(approve_order, Event("shop/order.created", {"order": 8}))
    assert result.output["approved"] is False
    assert result.ran == ["charge-card"]
    assert charged == [8]  # ran once, although the function was replayed several times


async def test_retries_happen_at_once():
    result = await run(flaky)
    assert result.output == 2
    assert result.steps["attempt"] == 2


async def test_mocked_failure_raises_step_error_in_the_function():
    result = await run(approve_order, Event("shop/order.created", {"order": 1}),
                       steps={"charge-card": NonRetriableError("card declined")})
    assert result.status == "Failed"
    # The run's error names the root cause, and the step it came from.
    assert result.error.name == "NonRetriableError"
    assert "charge-card" in result.error.message and "card declined" in result.error.message


async def test_sync_functions_and_invokes():
    result = await run(sync_total, invokes={"child": 10})
    assert result.output == 13
    assert result.invokes == [("child", "shop/other", {"x": 1})]


async def test_an_invoke_without_a_result_names_the_step():
    with pytest.raises(AssertionError, match=r"invokes=.*'child'"):
        await run(sync_total)


def test_step_error_type_is_public():
    assert issubclass(StepError, Exception)
