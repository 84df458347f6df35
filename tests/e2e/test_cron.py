"""Cron ticks and delayed events with real gateway and worker processes on loopback.

A schedule every two seconds (a leading seconds field) fires once per tick, none skipped,
with two worker processes, across a gateway restart, and with two gateways sharing
PostgreSQL. A delayed event starts its run at its ``ts``, across a gateway restart.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import Cluster
from tests.e2e.gateways_support import Fleet, fleet_fixture
from tests.e2e.harness import cluster_with_app, log_events
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

APP = '''
from worker import App, TriggerCron, TriggerEvent

app = App("cron")


@app.function(id="tick", trigger=TriggerCron("*/2 * * * * *"))
async def tick(ctx):
    return {"ts": ctx.event.ts, "cron": ctx.event.data["cron"]}


@app.function(id="later", trigger=TriggerEvent("cron.later"))
async def later(ctx):
    return {"ts": ctx.event.ts}
'''
TICK = 2000  # ms between ticks


@pytest.fixture
def app_cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster_with_app(tmp_path, "cronapp", APP)


def tick_runs(cluster: Cluster) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = cluster.get("/v1/runs?function_id=cron/tick&limit=100"
                           + (f"&cursor={cursor}" if cursor else ""))
        runs += page["data"]
        cursor = page["cursor"]
        if cursor is None:
            return runs


def ticks(runs: list[dict[str, Any]]) -> list[int]:
    return sorted(int(r["event_ids"][0].rsplit("-", 1)[1]) for r in runs)


def check_once_each(fired: list[int], logs: str) -> None:
    """Every tick once: no tick twice, none skipped between the first and the last."""
    assert len(fired) == len(set(fired)), f"a tick started two runs: {fired}\n{logs}"
    gaps = [(a, b) for a, b in itertools.pairwise(fired) if b - a != TICK]
    assert not gaps, f"ticks skipped: {gaps}\n{logs}"


def logs_of(*clusters: Cluster) -> str:
    return "\n".join(f"----- {p.name} -----\n{p.read_text(errors='replace')[-6000:]}"
                     for c in clusters for p in sorted(c.workdir.glob("*.log")))


def completed(cluster: Cluster, count: int) -> list[dict[str, Any]] | None:
    runs = [r for r in tick_runs(cluster) if r["status"] == "Completed"]
    return runs if len(runs) >= count else None


def test_a_fast_schedule_fires_once_per_tick_with_two_workers_and_a_restart(app_cluster):
    cluster = app_cluster
    cluster.start_gateway()
    cluster.start_worker("cronapp:app", name="w1")
    cluster.start_worker("cronapp:app", name="w2")
    # A few ticks each side of the restart prove "once each, none skipped"; more only
    # lengthen the test (a long count is `python -m bench`'s business).
    wait_until(lambda: completed(cluster, 4), timeout=60, what="4 ticks")
    cluster.gateway.stop()  # type: ignore[union-attr]
    cluster.start_gateway()
    before = len(tick_runs(cluster))
    wait_until(lambda: completed(cluster, before + 3), timeout=60,
               what="3 ticks after the restart")
    runs = tick_runs(cluster)
    check_once_each(ticks(runs), logs_of(cluster))
    done = [r for r in runs if r["status"] == "Completed"]
    assert all(r["output"]["cron"] == "*/2 * * * * *" for r in done)
    assert all(r["output"]["ts"] == int(r["event_ids"][0].rsplit("-", 1)[1]) for r in done)
    tick = next(f for f in cluster.get("/v1/functions")["data"] if f["id"] == "cron/tick")
    assert tick["triggers"][0]["next_tick"] is not None


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_delayed_event_starts_at_ts_across_a_restart(app_cluster):
    cluster = app_cluster
    cluster.start_gateway()
    cluster.start_worker("cronapp:app")
    wait_until(lambda: cluster.get("/v1/workers")["data"], what="the worker connects")
    ts = int((time.time() + 4) * 1000)
    (event_id,) = cluster.send({"name": "cron.later", "ts": ts})
    (run,) = cluster.get(f"/v1/events/{event_id}/runs")["data"]
    assert run["status"] == "Queued" and run["waiting"]["option"] == "delay"
    cluster.gateway.stop()  # type: ignore[union-attr]
    cluster.start_gateway()
    final = wait_until(
        lambda: (lambda r: r if r["status"] == "Completed" else None)(
            cluster.get(f"/v1/runs/{run['id']}")),
        timeout=30, what="the delayed run completes")
    started = iso_seconds(final["started_at"])
    assert started >= ts / 1000, f"started before its ts\n{logs_of(cluster)}"
    # Due at its ts, or, when the restart and the worker's reconnect outlast the delay (a
    # loaded machine), as soon as the worker is back: either way it must not linger.
    back = log_events(cluster.gateway, "worker_connected")  # type: ignore[arg-type]
    assert back, logs_of(cluster)
    due = max(ts / 1000, iso_seconds(back[0]["timestamp"]))
    print(f"delayed event: started {(started - ts / 1000) * 1000:+.1f} ms after its ts, "
          f"{(started - due) * 1000:+.1f} ms after it was due with a worker connected")
    assert started - due < 2.0, logs_of(cluster)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path, 2)


def test_two_gateways_on_postgres_fire_each_tick_once(fleet):
    spec = fleet.write_app("cronapp", APP)
    fleet.start_gateways()
    fleet.start_worker(spec, [0, 1], name="w0")
    fleet.start_worker(spec, [1, 0], name="w1")
    first = fleet.clusters[0]
    wait_until(lambda: completed(first, 5), timeout=60, what="5 ticks")
    check_once_each(ticks(tick_runs(first)), logs_of(*fleet.clusters))
