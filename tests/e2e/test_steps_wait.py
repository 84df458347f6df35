"""``step.wait_for_event`` with real processes: resumed by a matching event, or by its timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

ORDERS = '''
from stepmarks import mark
from worker import App, TriggerEvent

app = App("orders")


@app.function(id="approve", trigger=TriggerEvent("order.created"))
async def approve(ctx):
    x = ctx.event.data["x"]
    got = await ctx.step.wait_for_event(
        "approval", event="order.approved", timeout=ctx.event.data["timeout"],
        if_="async.data.x == event.data.x")
    await ctx.step.run("after", mark, f"after-{x}")
    return {"got": None if got is None else got.data}
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_wait_resumed_by_matching_event_and_ended_by_timeout(steps: Steps) -> None:
    steps.start_worker(steps.write_app("orders", ORDERS))
    patient = steps.run_of(steps.send("order.created", {"x": 1, "timeout": "1m"}))["id"]
    hasty = steps.run_of(steps.send("order.created", {"x": 2, "timeout": "1s"}))["id"]
    steps.wait_status(patient, "Waiting")
    steps.wait_status(hasty, "Waiting")
    steps.check(steps.held_runs() == 0, "a waiting run holds no worker slot")

    # The event API answers after the commit that offered the event to every wait.
    steps.send("order.approved", {"x": 99, "by": "nobody"})
    run = steps.run(patient)
    steps.check(run["status"] == "Waiting", f"a non-matching event resumed the run: {run}")

    steps.send("order.approved", {"x": 1, "by": "ann"})
    done = steps.wait_status(patient, "Completed", "Failed")
    steps.check(done["output"] == {"got": {"x": 1, "by": "ann"}}, f"run: {done}")

    timed_out = steps.wait_status(hasty, "Completed", "Failed")
    steps.check(timed_out["output"] == {"got": None}, f"run: {timed_out}")
    steps.check(steps.count("after-1") == 1 and steps.count("after-2") == 1,
                f"steps after the wait: {steps.marks('after-1')} {steps.marks('after-2')}")
