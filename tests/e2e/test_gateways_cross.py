"""Commands and events through one gateway for runs leased through another, same database.

Gateway 0 has no worker; the one worker is connected to gateway 1 only. A cancel or an event
that gateway 0 commits reaches the run on gateway 1's worker through PostgreSQL (and the
NOTIFY that follows the commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import Process
from tests.e2e.gateways_support import Fleet, fleet_fixture
from tests.e2e.harness import log_events

pytestmark = pytest.mark.e2e

OPS = '''
from gwledger import gated, note
from worker import App, TriggerEvent

app = App("ops")


async def step(run_id, step_id):
    return note(run_id, step_id)


@app.function(id="gated", trigger=TriggerEvent("ops.gated"), retries=2)
async def gated_run(ctx):
    """Steps a, b, c; b waits for the gate named in the event."""
    return [await ctx.step.run("a", step, ctx.run_id, "a"),
            await ctx.step.run("b", gated, ctx.run_id, "b", ctx.event.data["gate"]),
            await ctx.step.run("c", step, ctx.run_id, "c")]


@app.function(id="approve", trigger=TriggerEvent("ops.order"))
async def approve(ctx):
    got = await ctx.step.wait_for_event(
        "approval", event="ops.approved", timeout="1m",
        if_="async.data.order == event.data.order")
    await ctx.step.run("after", step, ctx.run_id, "after")
    return None if got is None else got.data
'''

FRONT, BACK = 0, 1  # the gateway without workers, and the one the worker is connected to


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path / "fleet", gateways=2)


def _start(fleet: Fleet) -> Process:
    fleet.start_gateways()
    worker = fleet.start_worker(fleet.write_app("opsapp", OPS), [BACK])
    (listed,) = fleet.wait_connected(BACK, worker)
    fleet.check(fleet.workers_of(FRONT) == [], "the front gateway has a worker")
    # Every gateway lists every gateway's workers (published with the beats, read from the store).
    back_id = fleet.clusters[BACK].get("/health")["gateway_id"]
    seen = fleet.wait(lambda: [w for w in fleet.workers_of(FRONT, everywhere=True)
                               if w["session_id"] == listed["session_id"]],
                      "the front gateway to list the back gateway's worker")
    fleet.check(seen[0]["gateway_id"] == back_id and seen[0]["functions"] == listed["functions"],
                f"the front gateway lists {seen} for {listed}")
    return worker


def _run_of(fleet: Fleet, index: int, event_id: str) -> str:
    """The id of the one run ``event_id`` started, asked of gateway ``index``."""
    runs = fleet.wait(
        lambda: fleet.clusters[index].get(f"/v1/events/{event_id}/runs")["data"],
        f"a run for event {event_id}")
    fleet.check(len(runs) == 1, f"event {event_id} started {runs}")
    run_id: str = runs[0]["id"]
    return run_id


def _status(fleet: Fleet, index: int, run_id: str) -> str:
    status: str = fleet.clusters[index].get(f"/v1/runs/{run_id}")["status"]
    return status


def test_cancel_through_one_gateway_revokes_the_lease_held_through_another(
        fleet: Fleet) -> None:
    worker = _start(fleet)
    front, back = fleet.clusters[FRONT], fleet.clusters[BACK]
    (event_id,) = front.send({"name": "ops.gated", "data": {"gate": "go"}})
    run_id = _run_of(fleet, FRONT, event_id)
    fleet.wait(lambda: fleet.executions().get((run_id, "b")), "step b to be running")
    # a's checkpoint is streamed as b starts, not before it: cancel once it is stored, so the
    # run ends with a recorded and b in flight (a checkpoint after the cancel is refused).
    fleet.wait(lambda: [s["id"] for s in back.get(f"/v1/runs/{run_id}")["steps"]] == ["a"],
               "step a's checkpoint to be stored")

    status, body = front.request("POST", f"/v1/runs/{run_id}/cancel")
    fleet.check(status == 200 and body["cancelled"] is True, f"cancel: {status} {body}")
    fleet.check(_status(fleet, BACK, run_id) == "Cancelled", "the back gateway disagrees")

    # The back gateway hears of it and revokes the lease; the worker lets go of the run.
    lost = fleet.wait(lambda: [r for r in log_events(worker, "lease_lost")
                               if r["run_id"] == run_id], "the worker to be told")
    fleet.check("revoked" in lost[0]["reason"], f"lease lost: {lost}")
    fleet.open_gate("go")
    # The blocked step's late checkpoint is refused; by then the run is past the step boundary
    # where c would have started.
    refused = fleet.wait(lambda: fleet.refusals(run_id), "b's late checkpoint to be refused")
    fleet.check(refused[0]["kind"] == "step_completed", f"refused: {refused}")
    # A run after it through the same worker does reach c, so c had its chance to run.
    (control_event,) = front.send({"name": "ops.gated", "data": {"gate": "go"}})
    control = _run_of(fleet, FRONT, control_event)
    fleet.wait(lambda: _status(fleet, FRONT, control) == "Completed", "the control run")

    executions = fleet.executions()
    fleet.check((run_id, "c") not in executions and len(executions[(run_id, "b")]) == 1,
                f"the cancelled run's steps: {[e for e in fleet.ledger() if e.run_id == run_id]}")
    run = back.get(f"/v1/runs/{run_id}")
    fleet.check(run["status"] == "Cancelled" and [s["id"] for s in run["steps"]] == ["a"],
                f"run: {run}")


def test_event_through_one_gateway_resumes_a_wait_of_a_run_leased_through_another(
        fleet: Fleet) -> None:
    worker = _start(fleet)
    front, back = fleet.clusters[FRONT], fleet.clusters[BACK]
    (event_id,) = back.send({"name": "ops.order", "data": {"order": 7}})
    run_id = _run_of(fleet, BACK, event_id)
    fleet.wait(lambda: _status(fleet, FRONT, run_id) == "Waiting", "the run to wait")

    # The event API answers after the commit that offered the event to every wait.
    front.send({"name": "ops.approved", "data": {"order": 8, "by": "nobody"}})
    fleet.check(_status(fleet, FRONT, run_id) == "Waiting", "a non-matching event resumed it")
    front.send({"name": "ops.approved", "data": {"order": 7, "by": "ann"}})

    fleet.wait(lambda: _status(fleet, BACK, run_id) in {"Completed", "Failed"},
               "the run to end")
    run = front.get(f"/v1/runs/{run_id}")
    fleet.check(run["status"] == "Completed" and run["output"] == {"order": 7, "by": "ann"},
                f"run: {run}")
    ran = fleet.executions()[(run_id, "after")]
    fleet.check([e.pid for e in ran] == [worker.pid], f"after ran {ran}")
