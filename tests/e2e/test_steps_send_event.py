"""``step.send_event`` takes effect once, even when the worker dies right after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

FANOUT = '''
from stepmarks import block
from worker import App, Event, TriggerEvent

app = App("fanout")


@app.function(id="fanout", trigger=TriggerEvent("fanout.start"))
async def fanout(ctx):
    ids = await ctx.step.send_event("emit", [Event("fan.child", {"i": i}) for i in range(3)])
    pid = await ctx.step.run("block", block, "block")
    return {"ids": ids, "pid": pid}
'''

# Served by a worker that is never killed, so one line per child run is exact.
FAN_KIDS = '''
from stepmarks import mark
from worker import App, TriggerEvent

app = App("fankids")


@app.function(id="child", trigger=TriggerEvent("fan.child"))
async def child(ctx):
    await ctx.step.run("count", mark, "child", str(ctx.event.data["i"]))
    return ctx.event.data["i"]
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_send_event_not_repeated_after_worker_killed(steps: Steps) -> None:
    steps.start_worker(steps.write_app("fankids", FAN_KIDS), name="kids")
    fanout = steps.write_app("fanout", FANOUT)
    first = steps.start_worker(fanout, name="first")
    run_id = steps.run_of(steps.send("fanout.start"))["id"]

    steps.wait(lambda: f"started {first.pid}" in steps.marks("block"),
               what="the step after send_event to start on the first worker")
    first.kill()
    second = steps.start_worker(fanout, name="second")
    steps.wait(lambda: f"started {second.pid}" in steps.marks("block"),
               what="the second worker to reach the blocking step")
    steps.go("block")

    done = steps.wait_status(run_id, "Completed", "Failed")
    steps.check(done["status"] == "Completed" and done["output"]["pid"] == second.pid,
                f"run: {done}")
    ids = done["output"]["ids"]
    steps.check(len(set(ids)) == 3, f"sent ids: {ids}")
    for event_id in ids:
        child = steps.run_of(event_id)
        steps.wait_status(child["id"], "Completed")
    children = steps.runs_of_function("fankids/child")
    steps.check(len(children) == 3, f"child runs: {children}")
    steps.check(sorted(steps.marks("child")) == ["0", "1", "2"],
                f"child step lines: {steps.marks('child')}")
    emit = [s for s in done["steps"] if s["id"] == "emit"]
    steps.check(len(emit) == 1 and emit[0]["output"] == ids, f"emit step: {emit}")
