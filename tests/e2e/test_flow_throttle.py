"""Throttle with real gateway and worker processes on loopback: starts are spread per GCRA.

Six events sent at once to a function throttled to 2 starts per 2 s (one per second, burst 1)
start one a second, in arrival order, measured from the runs' own ``started_at``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import Cluster
from tests.e2e.harness import cluster_with_app
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

APP = '''
from worker import App, Throttle, TriggerEvent

app = App("flow")


@app.function(id="spread", trigger=TriggerEvent("flow.spread"), throttle=Throttle(2, "2s"))
async def spread(ctx):
    return ctx.event.data["n"]
'''
EVENTS = 6
EMISSION = 1.0  # seconds between starts: period / limit


@pytest.fixture
def app_cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster_with_app(tmp_path, "flowapp", APP)


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def logs_of(cluster: Cluster) -> str:
    return "\n".join(f"----- {p.name} -----\n{p.read_text(errors='replace')[-6000:]}"
                     for p in sorted(cluster.workdir.glob("*.log")))


def test_throttle_spreads_starts_one_per_emission(app_cluster):
    cluster = app_cluster
    cluster.start_gateway()
    cluster.start_worker("flowapp:app")
    wait_until(lambda: cluster.get("/v1/workers")["data"], what="the worker connects")
    ids = cluster.send([{"name": "flow.spread", "data": {"n": n}} for n in range(EVENTS)])

    def all_done() -> list[dict[str, Any]] | None:
        runs = [cluster.get(f"/v1/events/{i}/runs")["data"] for i in ids]
        flat = [r for rs in runs for r in rs]
        return flat if len(flat) == EVENTS and all(
            r["status"] == "Completed" for r in flat) else None

    runs = wait_until(all_done, timeout=60, what="every throttled run completes")
    started = [seconds(r["started_at"]) for r in runs]  # in the events' order
    gaps = [b - a for a, b in itertools.pairwise(started)]
    print(f"throttle 2/2s: starts {[round(s - started[0], 3) for s in started]} s, "
          f"gaps {[round(g, 3) for g in gaps]} s")
    assert [r["output"] for r in runs] == list(range(EVENTS))
    assert all(0.9 * EMISSION <= g < 3 * EMISSION for g in gaps), logs_of(cluster)
    assert started[-1] - started[0] >= 0.9 * EMISSION * (EVENTS - 1), logs_of(cluster)
