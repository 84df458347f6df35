"""``step.invoke`` across worker processes: the child runs where its function is served."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

PARENTS = '''
from stepmarks import mark
from worker import App, StepError, TriggerEvent

app = App("parents")


@app.function(id="parent", trigger=TriggerEvent("family.start"))
async def parent(ctx):
    doubled = await ctx.step.invoke("ok", function="kids/double", data={"n": 21})
    await ctx.step.run("between", mark, "between")
    try:
        await ctx.step.invoke("bad", function="kids/double", data={"n": -1})
    except StepError as exc:
        return {"doubled": doubled, "error": [exc.name, exc.error_message]}
    return {"doubled": doubled, "error": None}
'''

KIDS = '''
import os

from stepmarks import mark
from worker import App

app = App("kids")


@app.function(id="double", retries=0)
async def double(ctx):
    n = ctx.event.data["n"]
    await ctx.step.run("where", mark, "kid", f"{os.getpid()} {n}")
    if n < 0:
        raise ValueError(f"cannot double {n}")
    return n * 2
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_invoke_runs_child_on_the_worker_that_serves_it(steps: Steps) -> None:
    kids = steps.start_worker(steps.write_app("kids", KIDS), name="kids")
    steps.start_worker(steps.write_app("parents", PARENTS), name="parents")
    workers = steps.cluster.get("/v1/workers")["data"]
    serving = {w["instance_id"]: w["functions"] for w in workers}
    steps.check(sorted(map(sorted, serving.values())) == [["kids/double"], ["parents/parent"]],
                f"each worker serves one app: {serving}")

    run_id = steps.run_of(steps.send("family.start"))["id"]
    done = steps.wait_status(run_id, "Completed", "Failed", timeout=20)
    steps.check(done["status"] == "Completed", f"run: {done}")
    steps.check(done["output"]["doubled"] == 42, f"run: {done}")
    name, message = done["output"]["error"]
    assert name == "ValueError" and "cannot double -1" in message, done["output"]
    steps.check(steps.marks("kid") == [f"{kids.pid} 21", f"{kids.pid} -1"],
                f"child steps (kids worker is {kids.pid}): {steps.marks('kid')}")
    steps.check(steps.count("between") == 1, f"between: {steps.marks('between')}")

    children = steps.runs_of_function("kids/double")
    assert sorted(r["status"] for r in children) == ["Completed", "Failed"], children
    steps_by_id = {s["id"]: s for s in done["steps"]}
    assert steps_by_id["ok"]["status"] == "Completed" and steps_by_id["ok"]["output"] == 42
    assert steps_by_id["bad"]["status"] == "Failed", steps_by_id["bad"]
