"""``on_failure`` with real processes: the handler runs once, after the last attempt."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

DOOMED = '''
import json

from stepmarks import MARKS, mark
from worker import App, TriggerEvent

app = App("doomed")


async def alert(ctx):
    attempts_before = (MARKS / "attempts").read_text().splitlines()
    report = {"data": ctx.event.data, "attempts_before": attempts_before,
              "function_id": ctx.function_id}
    await ctx.step.run("alert", mark, "alert", json.dumps(report))
    return "alerted"


@app.function(id="doomed", trigger=TriggerEvent("doomed.start"), retries=2, on_failure=alert)
async def doomed(ctx):
    mark("attempts", str(ctx.attempt))
    raise RuntimeError(f"always fails (attempt {ctx.attempt})")
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_on_failure_runs_once_after_the_last_retry(steps: Steps) -> None:
    steps.start_worker(steps.write_app("doomed", DOOMED))
    run_id = steps.run_of(steps.send("doomed.start"))["id"]
    failed = steps.wait_status(run_id, "Failed", "Completed")
    steps.check(failed["status"] == "Failed" and failed["attempt"] == 2, f"run: {failed}")
    steps.check(steps.marks("attempts") == ["0", "1", "2"],
                f"attempts: {steps.marks('attempts')}")

    def handled() -> list[dict[str, object]]:
        runs = steps.runs_of_function("doomed/doomed-failure")
        return runs if runs and all(r["status"] == "Completed" for r in runs) else []

    handlers = steps.wait(handled, what="the on_failure handler's run to complete")
    steps.check(len(handlers) == 1, f"handler runs: {handlers}")
    steps.check(len(steps.marks("alert")) == 1, f"alert lines: {steps.marks('alert')}")
    report = json.loads(steps.marks("alert")[0])
    assert report["function_id"] == "doomed/doomed-failure"
    assert report["attempts_before"] == ["0", "1", "2"]
    assert report["data"]["run_id"] == run_id
    assert report["data"]["function_id"] == "doomed/doomed"
    assert report["data"]["error"]["name"] == "RuntimeError"
    assert report["data"]["error"]["message"] == "always fails (attempt 2)"
    steps.check(steps.marks("attempts") == ["0", "1", "2"], "no attempt after the handler")
