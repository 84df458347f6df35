"""Durable sleeps and parallel branches with real processes: timers live in the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

NAPS = '''
import asyncio

from stepmarks import mark
from worker import App, TriggerEvent

app = App("naps")


@app.function(id="nap", trigger=TriggerEvent("nap.start"))
async def nap(ctx):
    await ctx.step.run("before", mark, "before")
    await ctx.step.sleep("zz", "1s")
    await ctx.step.run("after", mark, "after")
    return "rested"


@app.function(id="branches", trigger=TriggerEvent("branches.start"))
async def branches(ctx):
    async def sleeper():
        await ctx.step.sleep("nap", "500ms")
        return await ctx.step.run("woke", mark, "woke")

    async def busy():
        done = []
        for i in range(3):
            done.append(await ctx.step.run("work", mark, "work", f"w{i}"))
        return done

    return await asyncio.gather(sleeper(), busy())


@app.function(id="sync-branches", trigger=TriggerEvent("sync-branches.start"))
def sync_branches(ctx):
    def sleeper():
        ctx.step.sleep("nap", "500ms")
        return ctx.step.run("woke", mark, "sync-woke")

    def busy():
        return [ctx.step.run("work", mark, "sync-work", f"w{i}") for i in range(3)]

    return ctx.step.parallel(sleeper, busy)
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_sleep_survives_gateway_crash_and_resumes_once(steps: Steps) -> None:
    app = steps.write_app("naps", NAPS)
    worker = steps.start_worker(app)
    run_id = steps.run_of(steps.send("nap.start"))["id"]
    sleeping = steps.wait_status(run_id, "Sleeping")
    steps.check(steps.count("before") == 1 and steps.count("after") == 0,
                f"before the crash: {sleeping}")
    steps.check(steps.held_runs() == 0, "a sleeping run holds no worker slot")

    assert steps.cluster.gateway is not None
    steps.cluster.gateway.kill()
    steps.start_gateway()  # same SQLite file, same ports; the worker reconnects by itself

    done = steps.wait_status(run_id, "Completed", "Failed", timeout=20)
    steps.check(done["status"] == "Completed" and done["output"] == "rested", f"run: {done}")
    steps.check(worker.alive(), "the worker survived the gateway's crash")
    steps.check(steps.count("before") == 1, f"'before' re-ran: {steps.marks('before')}")
    steps.check(steps.count("after") == 1, f"'after' ran {steps.marks('after')}")
    assert {s["id"]: s["status"] for s in done["steps"]} == {
        "before": "Completed", "zz": "Completed", "after": "Completed"}


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_parallel_branch_sleeps_while_other_runs_steps(steps: Steps, flavour: str) -> None:
    app = steps.write_app("naps", NAPS)
    steps.start_worker(app)
    name, prefix = ("branches", "") if flavour == "async" else ("sync-branches", "sync-")
    run_id = steps.run_of(steps.send(f"{name}.start"))["id"]

    done = steps.wait_status(run_id, "Completed", "Failed")
    steps.check(done["status"] == "Completed", f"run: {done}")
    assert done["output"] == ["x", ["w0", "w1", "w2"]]
    steps.check(steps.marks(f"{prefix}woke") == ["x"], f"woke: {steps.marks(f'{prefix}woke')}")
    steps.check(steps.marks(f"{prefix}work") == ["w0", "w1", "w2"],
                f"work: {steps.marks(f'{prefix}work')}")
    assert {s["id"]: s["status"] for s in done["steps"]} == {
        "nap": "Completed", "woke": "Completed", "work": "Completed",
        "work:1": "Completed", "work:2": "Completed"}
