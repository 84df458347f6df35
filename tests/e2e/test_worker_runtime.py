"""The worker's runtime against real processes: a blocked loop, replays, a second Ctrl-C.

- A run whose ``async def`` code blocks the event loop (``time.sleep``) costs the worker its
  socket again and again; the worker names the run and step, and the lost leases are charged to
  that run alone: its neighbours on the same worker live through every stall.
- A step id built from ``uuid4()`` is new on every replay: the worker log reports it.
- A second SIGINT while draining stops the worker at once, logging the abandoned steps; their
  run completes on another worker.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e

HEARTBEAT = 0.4  # the gateway drops a worker silent for 3 of them (1.2 s)
#: Seconds one step blocks the loop: twice the gateway's patience. The blocker ends after
#: the gateway's limit of lost leases (10), so this sets the test's length.
HOG = 2.4

STALL_APP = f'''
import asyncio
import os
import time
from pathlib import Path

from stepmarks import mark
from worker import App, TriggerEvent

app = App("stall")
MARKS = Path(__file__).resolve().parent / "marks"


async def hog(i):
    mark("hog", str(i))
    time.sleep({HOG})  # the bug under test: a blocking call in async code
    return i


@app.function(id="blocker", trigger=TriggerEvent("stall.block"), retries=0)
async def blocker(ctx):
    for i in range(12):
        await ctx.step.run(f"hog-{{i}}", hog, i)
    return "done"


async def patient(name):
    mark(name, f"started {{os.getpid()}}")
    while not (MARKS / f"{{name}}.go").exists():
        await asyncio.sleep(0.05)
    return name


@app.function(id="neighbour", trigger=TriggerEvent("stall.neighbour"), retries=0)
async def neighbour(ctx):
    return await ctx.step.run("patient", patient, ctx.event.data["name"])
'''

UUID_APP = '''
from uuid import uuid4

from stepmarks import mark
from worker import App, TriggerEvent

app = App("uuids")


@app.function(id="charge", trigger=TriggerEvent("uuids.charge"))
async def charge(ctx):
    await ctx.step.run(f"charge-{uuid4()}", mark, "charge")
    await ctx.step.sleep("pause", "200ms")
    return "charged"
'''

SLOW_APP = '''
from stepmarks import block
from worker import App, TriggerEvent

app = App("slow")


@app.function(id="slow", trigger=TriggerEvent("slow.start"))
def slow(ctx):
    return ctx.step.run("long", block, "long")
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster, start=False)


def test_a_run_blocking_the_loop_is_named_and_does_not_fail_its_neighbours(steps: Steps
                                                                            ) -> None:
    steps.start_gateway("--heartbeat-interval", str(HEARTBEAT))
    gateway = steps.cluster.gateway
    assert gateway is not None
    worker = steps.start_worker(steps.write_app("stallapp", STALL_APP), name="worker")
    names = ["n0", "n1", "n2"]
    neighbours = [steps.run_of(steps.send("stall.neighbour", {"name": n}))["id"] for n in names]
    steps.wait(lambda: all(steps.count(n) for n in names), what="the neighbours to start")

    blocker = steps.run_of(steps.send("stall.block"))["id"]
    ended = steps.wait_status(blocker, "Failed", "Completed", timeout=150)
    stalls = steps.count("hog")
    steps.check(stalls >= 10, f"only {stalls} stalls: the neighbours were not put to the test")
    if ended["status"] == "Failed":  # it alone is charged the lost leases
        steps.check("lost its worker" in ended["error"]["message"], f"blocker: {ended}")

    for name in names:
        steps.go(name)
    for run_id in neighbours:
        run = steps.wait_status(run_id, "Completed", "Failed", timeout=30)
        steps.check(run["status"] == "Completed", f"a neighbour paid for the stalls: {run}")

    blocked = steps.log_events(worker, "event_loop_blocked")
    steps.check(blocked, "the worker never logged event_loop_blocked")
    steps.check(all(b["run_id"] == blocker and b["step_id"].startswith("hog-")
                    and b["function_id"] == "stall/blocker" for b in blocked),
                f"the stall was blamed on something else: {blocked}")
    assert "def function given to step.run" in blocked[0]["hint"]
    steps.check(not steps.log_events(worker, "gateway_unresponsive"),
                "the worker blamed the gateway for its own stall")
    reported = steps.log_events(gateway, "worker_loop_stalled")
    steps.check(any(r["run_id"] == blocker and r["forgiven"] >= 1 for r in reported),
                f"the gateway forgave no neighbour: {reported}")


def test_a_uuid_step_id_is_reported_on_replay(steps: Steps) -> None:
    steps.start_gateway()
    worker = steps.start_worker(steps.write_app("uuidapp", UUID_APP), name="worker")
    run_id = steps.run_of(steps.send("uuids.charge"))["id"]
    run = steps.wait_status(run_id, "Completed", "Failed")
    steps.check(run["status"] == "Completed", f"run: {run}")
    assert steps.count("charge") == 2  # the side effect ran again on replay: the bug reported
    [diverged] = steps.wait(lambda: steps.log_events(worker, "replay_diverged"),
                            what="the replay_diverged warning")
    charges = [s["id"] for s in run["steps"] if s["id"].startswith("charge-")]
    assert diverged["run_id"] == run_id and diverged["level"] == "warning"
    assert diverged["unreached"] == [charges[0]] and diverged["new"] == [charges[1]]
    [warning] = run["warnings"]  # GET /v1/runs/{id} shows it too
    assert charges[0] in warning and charges[1] in warning and "uuid4()" in warning


def test_a_second_sigint_stops_at_once_and_names_the_abandoned_steps(steps: Steps) -> None:
    steps.start_gateway()
    app = steps.write_app("slowapp", SLOW_APP)
    first = steps.cluster.start_worker(app, name="first", args=(
        "--drain-timeout", "60", "--log-format", "json"))
    steps.wait(lambda: steps.cluster.get("/v1/workers")["data"], what="the worker to connect")
    run_id = steps.run_of(steps.send("slow.start"))["id"]
    steps.wait(lambda: steps.count("long", "started"), what="the long step to start")

    first.signal(signal.SIGINT)
    steps.wait(lambda: steps.log_events(first, "worker_draining"), what="the drain to start")
    started = time.monotonic()
    first.signal(signal.SIGINT)
    code = first.popen.wait(timeout=bound(10))
    took = time.monotonic() - started
    steps.check(code == 130, f"exit status {code}")
    steps.check(took < bound(5), f"the second SIGINT took {took:.1f}s to stop the worker")
    [stopped] = steps.log_events(first, "worker_stopped_abruptly")
    assert stopped["abandoned"] == [{"run_id": run_id, "function_id": "slow/slow",
                                     "steps": ["long"]}]

    steps.start_worker(app, name="second")
    steps.wait(lambda: steps.count("long", "started") == 2, what="the step to run again")
    steps.go("long")
    run = steps.wait_status(run_id, "Completed", "Failed")
    steps.check(run["status"] == "Completed", f"run: {run}")
