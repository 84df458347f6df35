"""Cancelling runs with real processes: by event, by the API, and by ``timeouts.start``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

JOBS = '''
from stepmarks import block, mark
from worker import App, Cancel, TriggerEvent

app = App("jobs")


@app.function(id="job", trigger=TriggerEvent("job.start"),
              cancel_on=[Cancel("job.stop", if_="async.data.id == event.data.id")])
async def job(ctx):
    name = f"job-{ctx.event.data['id']}"
    await ctx.step.run("block", block, name)
    await ctx.step.run("after", mark, f"{name}-after")
    return "finished"
'''

LAZY = '''
from stepmarks import mark
from worker import App, Timeouts, TriggerEvent

app = App("lazy")


@app.function(id="lazy", trigger=TriggerEvent("lazy.start"), timeouts=Timeouts(start="1s"))
async def lazy(ctx):
    await ctx.step.run("ran", mark, "lazy", str(ctx.event.data["n"]))
    return "ran"
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_cancel_by_event_and_by_api_while_a_step_runs(steps: Steps) -> None:
    worker = steps.start_worker(steps.write_app("jobs", JOBS))
    by_event = steps.run_of(steps.send("job.start", {"id": 1}))["id"]
    by_api = steps.run_of(steps.send("job.start", {"id": 2}))["id"]
    steps.wait(lambda: steps.marks("job-1") and steps.marks("job-2"),
               what="both runs to be inside their blocking step")

    steps.send("job.stop", {"id": 1})
    cancelled = steps.wait_status(by_event, "Cancelled")
    steps.check("cancel_on" in cancelled["error"]["message"], f"run: {cancelled}")
    steps.check(steps.run(by_api)["status"] == "Running", "job.stop for id 1 left id 2 alone")

    status, body = steps.cluster.request("POST", f"/v1/runs/{by_api}/cancel")
    steps.check(status == 200 and body["cancelled"] is True, f"cancel answer: {status} {body}")
    steps.check(steps.run(by_api)["status"] == "Cancelled", f"run: {steps.run(by_api)}")

    # Release the steps once the worker knows (else one more step may legitimately start).
    steps.wait(lambda: {r["run_id"] for r in steps.log_events(worker, "lease_lost")}
               >= {by_event, by_api}, what="the worker to hear of both cancellations")
    steps.go("job-1")
    steps.go("job-2")
    # The finished step's checkpoint is refused; by then the run has passed its next step
    # boundary (without starting 'after').
    gateway = steps.cluster.gateway
    assert gateway is not None
    steps.wait(lambda: {r["run_id"] for r in steps.log_events(gateway, "checkpoint_refused")}
               >= {by_event, by_api}, what="the blocked steps' late checkpoints to be refused")
    # A third run through the same worker shows 'after' does run when not cancelled.
    control = steps.run_of(steps.send("job.start", {"id": 3}))["id"]
    steps.go("job-3")
    steps.check(steps.wait_status(control, "Completed", "Failed")["status"] == "Completed",
                "the control run completed")
    steps.check(steps.count("job-3-after") == 1, "the control run ran 'after'")
    steps.check(steps.count("job-1-after") == 0 and steps.count("job-2-after") == 0,
                "a step after the cancelled step ran")
    for run_id in (by_event, by_api):
        run = steps.run(run_id)
        steps.check(run["status"] == "Cancelled", f"run: {run}")
        steps.check("after" not in {s["id"] for s in run["steps"]}, f"run: {run}")


def test_timeouts_start_cancels_a_run_no_worker_picked_up(steps: Steps) -> None:
    lazy = steps.write_app("lazy", LAZY)
    first = steps.start_worker(lazy)  # registers the function, then leaves
    steps.check(first.stop(timeout=10) == 0, "the worker drained and exited cleanly")
    steps.wait(lambda: not steps.cluster.get("/v1/workers")["data"],
               what="no worker to be connected")

    run_id = steps.run_of(steps.send("lazy.start", {"n": 1}))["id"]
    steps.check(steps.run(run_id)["status"] == "Queued", f"run: {steps.run(run_id)}")
    cancelled = steps.wait_status(run_id, "Cancelled", "Completed", "Failed")
    steps.check(cancelled["status"] == "Cancelled", f"run: {cancelled}")
    error = cancelled["error"] or {}
    steps.check("timeouts.start" in error.get("message", ""), f"error: {error}")

    # A worker arriving later does not run the cancelled run, but runs new ones.
    steps.start_worker(lazy, name="late")
    later = steps.run_of(steps.send("lazy.start", {"n": 2}))["id"]
    steps.check(steps.wait_status(later, "Completed", "Failed")["status"] == "Completed",
                "a run started once a worker is back completes")
    steps.check(steps.marks("lazy") == ["2"], f"lazy runs: {steps.marks('lazy')}")
    steps.check(steps.run(run_id)["status"] == "Cancelled", f"run: {steps.run(run_id)}")
