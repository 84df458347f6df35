"""Plain ``def`` step code that blocks for seconds costs its own run only.

Plain step callables and ``def`` functions run on the worker's step threads, never on its
event loop: while steps block for 10 s (20 of the gateway's heartbeat intervals), the socket
and its heartbeats keep flowing, the worker keeps every lease (nothing is lost, nothing runs
twice) and other runs of plain steps complete meanwhile. More steps block than the worker
keeps threads for (16): threads are added in place of the blocked ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

HEARTBEAT = 0.5  # the gateway drops a worker silent for 3 of them (1.5 s)
BLOCK = 10.0  # seconds the blocking steps hold their threads, at least
BLOCKERS = 10  # of each kind: 10 async runs with a def step, 10 def functions (20 threads)
QUICK = 30  # runs of each quick kind sent while the blockers block

APP = '''
import time

from stepmarks import block, mark
from worker import App, TriggerEvent

app = App("blocking")


@app.function(id="async-blocker", trigger=TriggerEvent("blocking.async"), retries=0)
async def async_blocker(ctx):
    name = f"a{ctx.event.data['i']}"
    got = await ctx.step.run("block", block, name)  # a plain def: on a thread
    await ctx.step.run("after", mark, f"{name}-after")
    return got


@app.function(id="def-blocker", trigger=TriggerEvent("blocking.def"), retries=0)
def def_blocker(ctx):
    name = f"d{ctx.event.data['i']}"
    got = ctx.step.run("block", block, name)
    ctx.step.run("after", mark, f"{name}-after")
    return got


def double(x):
    return 2 * x


@app.function(id="quick-async", trigger=TriggerEvent("blocking.quick-async"), retries=0)
async def quick_async(ctx):
    one = await ctx.step.run("one", double, 1)
    two = await ctx.step.run("two", lambda: one + 1)
    return two


@app.function(id="quick-def", trigger=TriggerEvent("blocking.quick-def"), retries=0)
def quick_def(ctx):
    one = ctx.step.run("one", double, 1)
    return ctx.step.run("two", lambda: one + 1)
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster, start=False)


def test_blocking_def_steps_keep_the_leases_and_let_other_runs_through(steps: Steps) -> None:
    gateway = steps.start_gateway("--heartbeat-interval", str(HEARTBEAT))
    worker = steps.start_worker(steps.write_app("blockingapp", APP), concurrency=100)
    blockers = [steps.send("blocking.async", {"i": i}) for i in range(BLOCKERS)]
    blockers += [steps.send("blocking.def", {"i": i}) for i in range(BLOCKERS)]
    names = [f"a{i}" for i in range(BLOCKERS)] + [f"d{i}" for i in range(BLOCKERS)]
    steps.wait(lambda: all(steps.count(n, "started") for n in names),
               what="every blocking step to start", timeout=30)
    started = time.monotonic()

    quick = [steps.send("blocking.quick-async") for _ in range(QUICK)]
    quick += [steps.send("blocking.quick-def") for _ in range(QUICK)]
    for event_id in quick:
        run = steps.wait_status(steps.run_of(event_id)["id"], "Completed", "Failed",
                                timeout=60)
        steps.check(run["status"] == "Completed" and run["output"] == 3, f"run: {run}")
    steps.check(not any(steps.count(n, "released") for n in names),
                "a blocking step ended before the quick runs were done: nothing was tested")

    # Keep them blocked for BLOCK seconds in all (20 heartbeat intervals), then let go.
    time.sleep(max(0.0, BLOCK - (time.monotonic() - started)))
    steps.release_all()
    for event_id in blockers:
        run = steps.wait_status(steps.run_of(event_id)["id"], "Completed", "Failed",
                                timeout=30)
        steps.check(run["status"] == "Completed", f"blocker: {run}")
    for name in names:  # each blocking step ran once: no lease was lost, nothing re-ran
        steps.check(steps.count(name, "started") == 1 and steps.count(f"{name}-after") == 1,
                    f"{name} ran {steps.count(name, 'started')} times")

    for event in ("lease_lost", "event_loop_blocked", "gateway_unresponsive"):
        steps.check(not steps.log_events(worker, event), f"the worker logged {event}")
    gateway_log = gateway.log()
    for event in ("worker_heartbeat_missed", "worker_disconnected"):
        steps.check(event not in gateway_log, f"the gateway logged {event}")
    steps.check(len(steps.cluster.get("/v1/workers")["data"]) == 1, "the worker is gone")
