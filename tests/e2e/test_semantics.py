"""Run semantics with real processes: cancel_on and waits never match the run's own trigger,
``timeouts.start`` is met once the run starts, and two programs reusing one app id both stay
served."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

UPDATES = '''
from stepmarks import block
from worker import App, Cancel, TriggerEvent

app = App("docs")


@app.function(id="sync", trigger=TriggerEvent("doc/updated"),
              cancel_on=[Cancel("doc/updated", if_="async.data.id == event.data.id")])
async def sync(ctx):
    """Cancel the older run when a newer update of the same document arrives."""
    await ctx.step.run("push", block, f"doc-{ctx.event.data['v']}")
    return ctx.event.data["v"]
'''

PAIRS = '''
from worker import App, TriggerEvent

app = App("pairs")


@app.function(id="pair", trigger=TriggerEvent("pair/ping"))
async def pair(ctx):
    """Wait for the next event of the trigger's own name."""
    if ctx.event.data.get("reply"):
        return "a reply"
    got = await ctx.step.wait_for_event("next", event="pair/ping", timeout="60s")
    return None if got is None else got.data
'''

PROMPT = '''
from stepmarks import mark
from worker import App, Timeouts, TriggerEvent

app = App("prompt")


@app.function(id="prompt", trigger=TriggerEvent("prompt.go"), timeouts=Timeouts(start="1s"))
async def prompt(ctx):
    """Starts at once, then runs well past timeouts.start: only the start is bounded."""
    await ctx.step.run("first", mark, "prompt", "first")
    await ctx.step.sleep("pause", "2s")
    await ctx.step.run("second", mark, "prompt", "second")
    return "done"
'''

SHOP_A = '''
from stepmarks import mark
from worker import App, TriggerEvent

app = App("shop")


@app.function(id="orders", trigger=TriggerEvent("shop/order"))
async def orders(ctx):
    return await ctx.step.run("note", mark, "orders")
'''

SHOP_B = '''
from stepmarks import mark
from worker import App, TriggerEvent

app = App("shop")


@app.function(id="refunds", trigger=TriggerEvent("shop/refund"))
async def refunds(ctx):
    return await ctx.step.run("note", mark, "refunds")
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_cancel_on_the_trigger_name_cancels_only_the_older_run(steps: Steps) -> None:
    steps.start_worker(steps.write_app("docs", UPDATES))
    first = steps.run_of(steps.send("doc/updated", {"id": 1, "v": 1}))["id"]
    steps.wait(lambda: steps.marks("doc-1"), what="the first run inside its step")
    steps.check(steps.run(first)["status"] == "Running", f"run: {steps.run(first)}")

    second = steps.run_of(steps.send("doc/updated", {"id": 1, "v": 2}))["id"]
    cancelled = steps.wait_status(first, "Cancelled", "Completed", "Failed")
    steps.check(cancelled["status"] == "Cancelled"
                and "cancel_on" in cancelled["error"]["message"], f"run: {cancelled}")
    steps.wait(lambda: steps.marks("doc-2"), what="the second run inside its step")
    steps.release_all()
    done = steps.wait_status(second, "Completed", "Failed", "Cancelled")
    steps.check(done["status"] == "Completed" and done["output"] == 2, f"run: {done}")


def test_a_wait_on_the_trigger_name_resolves_with_the_next_event(steps: Steps) -> None:
    steps.start_worker(steps.write_app("pairs", PAIRS))
    waiting = steps.run_of(steps.send("pair/ping", {"n": 1}))["id"]
    steps.wait_status(waiting, "Waiting", "Completed", "Failed")
    steps.check(steps.run(waiting)["status"] == "Waiting", f"run: {steps.run(waiting)}")

    steps.send("pair/ping", {"reply": True})
    done = steps.wait_status(waiting, "Completed", "Failed", "Cancelled")
    steps.check(done["status"] == "Completed" and done["output"] == {"reply": True},
                f"run: {done}")


def test_timeouts_start_alone_spares_a_run_that_started_in_time(steps: Steps) -> None:
    steps.start_worker(steps.write_app("prompt", PROMPT))
    run_id = steps.run_of(steps.send("prompt.go"))["id"]
    done = steps.wait_status(run_id, "Completed", "Failed", "Cancelled")
    steps.check(done["status"] == "Completed" and done["output"] == "done", f"run: {done}")
    steps.check(steps.marks("prompt") == ["first", "second"], f"{steps.marks('prompt')}")


def test_two_programs_with_one_app_id_both_start_runs(steps: Steps) -> None:
    gateway = steps.cluster.gateway
    assert gateway is not None
    orders = steps.start_worker(steps.write_app("shop_a", SHOP_A), name="orders")
    refunds = steps.start_worker(steps.write_app("shop_b", SHOP_B), name="refunds")

    for name in ("shop/order", "shop/refund"):
        run_id = steps.run_of(steps.send(name))["id"]
        done = steps.wait_status(run_id, "Completed", "Failed", "Cancelled")
        steps.check(done["status"] == "Completed", f"run: {done}")
    steps.check(steps.marks("orders") == ["x"] and steps.marks("refunds") == ["x"],
                "each program ran its own function once")

    conflicts = steps.log_events(gateway, "app_conflict")
    steps.check(len(conflicts) == 1, f"conflicts logged: {conflicts}")
    steps.check(conflicts[0]["only_here"] == ["shop/refunds"]
                and conflicts[0]["only_there"] == ["shop/orders"], f"{conflicts[0]}")
    # The newcomer hears of it too, in its own log.
    told = steps.log_events(refunds, "gateway_warning")
    steps.check(len(told) == 1 and told[0]["warning"].startswith("app_conflict: ")
                and "shop/orders" in told[0]["warning"], f"newcomer told: {told}")
    steps.check(steps.log_events(orders, "gateway_warning") == [], "the first one was not")

    workers = {w["session_id"]: w for w in steps.cluster.get("/v1/workers")["data"]}
    by_function = {f: w["instance_id"] for w in workers.values() for f in w["functions"]}
    functions = {f["id"]: f for f in steps.cluster.get("/v1/functions")["data"]}
    for fid in ("shop/orders", "shop/refunds"):
        steps.check(functions[fid]["active"] and functions[fid]["workers"]
                    == [by_function[fid]], f"{fid}: {functions[fid]}")
