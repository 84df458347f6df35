"""A worker never sends a frame the gateway cannot read.

Before: one ``send_event`` of 9 MiB in all went out in one frame over the gateway's 8 MiB limit;
the gateway closed the socket, the worker resent the checkpoint on every reconnect, forever.
Now the worker sizes the checkpoint first and fails the step for good with a message, and keeps
serving other runs on the same socket.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Cluster
from tests.e2e.steps_support import Steps, steps_fixture

pytestmark = pytest.mark.e2e

FRAMES_APP = '''
from stepmarks import mark
from worker import App, Event, TriggerEvent

app = App("frames")


@app.function(id="flood", trigger=TriggerEvent("frames.flood"), retries=3)
async def flood(ctx):
    blob = "x" * (3 * 1024 * 1024)  # each event is under the step limit, the three are not
    await ctx.step.send_event("flood", [Event("frames.sink", {"blob": blob, "i": i})
                                        for i in range(3)])
    return "unreachable"


@app.function(id="normal", trigger=TriggerEvent("frames.normal"))
async def normal(ctx):
    return await ctx.step.run("one", mark, "normal")
'''


@pytest.fixture
def steps(cluster: Cluster) -> Iterator[Steps]:
    yield from steps_fixture(cluster)


def test_a_send_event_over_the_frame_limit_fails_its_step_and_the_worker_serves_on(
        steps: Steps) -> None:
    worker = steps.start_worker(steps.write_app("framesapp", FRAMES_APP), name="worker")
    flood = steps.run_of(steps.send("frames.flood"))["id"]
    run = steps.wait_status(flood, "Failed", "Completed")
    steps.check(run["status"] == "Failed", f"run: {run}")
    error = run["error"]
    assert error["name"] == "FrameTooLarge"
    assert "step.send_event('flood')" in error["message"]
    assert "over the gateway's frame limit of 8,388,608 bytes" in error["message"]

    # The gateway answers a normal event with 200 and completes a normal run, on the same socket.
    normal = steps.run_of(steps.send("frames.normal"))["id"]
    done = steps.wait_status(normal, "Completed", "Failed")
    steps.check(done["status"] == "Completed", f"run: {done}")
    assert len(steps.log_events(worker, "gateway_connected")) == 1  # never dropped
    assert steps.log_events(worker, "gateway_disconnected") == []
    assert steps.cluster.get("/v1/workers")["data"][0]["in_flight"] == 0
