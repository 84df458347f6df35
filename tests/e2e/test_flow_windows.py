"""Debounce and batch with real gateway and worker processes on loopback.

Batch sizes and a debounce's last event as the functions themselves see them (``ctx.events``,
``ctx.event``), then a gateway killed with -9 while batches and debounce windows are open: on
restart, the windows are still there and every accepted event reaches a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import Cluster
from tests.e2e.harness import cluster_with_app
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

APP = '''
from worker import App, Batch, Debounce, TriggerEvent

app = App("win")


@app.function(id="grouped", trigger=TriggerEvent("win.grouped"),
              batch=Batch(3, "1s", key="event.data.k"))
async def grouped(ctx):
    return [e.data["n"] for e in ctx.events]


@app.function(id="quiet", trigger=TriggerEvent("win.quiet"), debounce=Debounce("1s"))
async def quiet(ctx):
    return [e.data["n"] for e in ctx.events]


@app.function(id="gather", trigger=TriggerEvent("win.gather"),
              batch=Batch(100, "3s", key="event.data.k"))
async def gather(ctx):
    return [e.data["n"] for e in ctx.events]


@app.function(id="collect", trigger=TriggerEvent("win.collect"),
              debounce=Debounce("3s", collect=True))
async def collect(ctx):
    return [e.data["n"] for e in ctx.events]
'''


@pytest.fixture
def app_cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster_with_app(tmp_path, "winapp", APP)


def outputs(cluster: Cluster, function_id: str, count: int) -> list[Any] | None:
    """The outputs of ``function_id``'s runs once ``count`` of them completed."""
    runs = cluster.get(f"/v1/runs?function_id={function_id}&limit=100")["data"]
    done = [r["output"] for r in runs if r["status"] == "Completed"]
    return sorted(done) if len(done) == count else None


def events(name: str, numbers: range, **data: Any) -> list[dict[str, Any]]:
    return [{"name": name, "data": {"n": n, **data}} for n in numbers]


def test_batch_sizes_and_the_debounced_last_event(app_cluster):
    cluster = app_cluster
    cluster.start_gateway()
    cluster.start_worker("winapp:app")
    wait_until(lambda: cluster.get("/v1/workers")["data"], what="the worker connects")
    cluster.send(events("win.grouped", range(7), k="a") + events("win.grouped", range(2), k="b"))
    cluster.send(events("win.quiet", range(3)))
    grouped = wait_until(lambda: outputs(cluster, "win/grouped", 4), timeout=30,
                         what="the batches run")
    assert grouped == [[0, 1], [0, 1, 2], [3, 4, 5], [6]]  # b's pair and a's tail: by timeout
    assert wait_until(lambda: outputs(cluster, "win/quiet", 1), timeout=30,
                      what="the debounced run") == [[2]]


def completed(cluster: Cluster, function_id: str) -> list[Any] | None:
    """Every event number ``function_id``'s runs got, once none of them is still pending."""
    runs = cluster.get(f"/v1/runs?function_id={function_id}&limit=100")["data"]
    if not runs or any(r["status"] != "Completed" for r in runs):
        return None
    return sorted(n for r in runs for n in r["output"])


def test_a_gateway_kill_9_with_open_windows_loses_no_event(app_cluster):
    cluster = app_cluster
    gateway = cluster.start_gateway()
    worker = cluster.start_worker("winapp:app")
    wait_until(lambda: cluster.get("/v1/workers")["data"], what="the app registers")
    worker.stop()  # registered; now nothing may start a run before the crash
    cluster.send(events("win.gather", range(3), k="a"))
    cluster.send(events("win.collect", range(3)))
    gateway.kill()  # the windows are open (3 s): only the store has them
    cluster.start_gateway()
    cluster.send(events("win.gather", range(3, 5), k="a"))
    cluster.send(events("win.collect", range(3, 5)))
    cluster.start_worker("winapp:app")
    # Each event reaches exactly one run (in one window unless the restart outlasted it).
    for function_id in ("win/gather", "win/collect"):
        assert wait_until(lambda f=function_id: completed(cluster, f), timeout=30,
                          what=f"{function_id}'s runs complete") == [0, 1, 2, 3, 4]
