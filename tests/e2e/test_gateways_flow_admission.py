"""Admission flow control across two gateways on one PostgreSQL database, real processes.

Events of one key arrive through both gateways at once (one request per event, from a thread
per gateway): the rate limit admits exactly its limit and singleton exactly one live run,
whichever gateway each event came through; the rest are Skipped.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateways_support import Fleet, fleet_fixture

pytestmark = pytest.mark.e2e

APP = '''
from gwledger import gated, note
from worker import App, RateLimit, Singleton, TriggerEvent

app = App("flow")


@app.function(id="limited", trigger=TriggerEvent("flow.limited"),
              rate_limit=RateLimit(5, "1h", key="event.data.key"))
async def limited(ctx):
    return await ctx.step.run("a", note, ctx.run_id, "a")


@app.function(id="single", trigger=TriggerEvent("flow.single"),
              singleton=Singleton(key="event.data.key"))
async def single(ctx):
    return await ctx.step.run("hold", gated, ctx.run_id, "hold", ctx.event.data["gate"])
'''

PER_GATEWAY = 15


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path / "fleet", gateways=2)


def _send_from_both(fleet: Fleet, event: dict[str, object]) -> list[str]:
    """``PER_GATEWAY`` requests of ``event`` through each gateway at once: the event ids."""
    ids: list[str] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        for _ in range(PER_GATEWAY):
            (event_id,) = fleet.clusters[index].send(event)
            with lock:
                ids.append(event_id)

    threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids


def _statuses(fleet: Fleet, event_ids: list[str]) -> Counter[str]:
    statuses: Counter[str] = Counter()
    for event_id in event_ids:
        runs = fleet.wait(lambda e=event_id: fleet.clusters[0].get(f"/v1/events/{e}/runs")["data"],
                          f"a run for event {event_id}")
        fleet.check(len(runs) == 1, f"event {event_id} started {runs}")
        statuses[runs[0]["status"]] += 1
    return statuses


def test_two_gateways_never_admit_over_the_limit(fleet: Fleet) -> None:
    fleet.start_gateways()
    worker = fleet.start_worker(fleet.write_app("flowapp", APP), [1])
    fleet.wait_connected(1, worker)

    ids = _send_from_both(fleet, {"name": "flow.limited", "data": {"key": "k"}})
    statuses = _statuses(fleet, ids)
    fleet.check(statuses["Skipped"] == 2 * PER_GATEWAY - 5 and sum(statuses.values()) == 30,
                f"rate limit 5 over two gateways: {statuses}")

    ids = _send_from_both(fleet, {"name": "flow.single", "data": {"key": "k", "gate": "go"}})
    statuses = _statuses(fleet, ids)
    fleet.check(statuses["Skipped"] == 2 * PER_GATEWAY - 1,
                f"singleton over two gateways: {statuses}")
    fleet.open_gate("go")
    live = [e for e in ids
            if fleet.clusters[0].get(f"/v1/events/{e}/runs")["data"][0]["status"] != "Skipped"]
    (event_id,) = live
    run_id = fleet.clusters[0].get(f"/v1/events/{event_id}/runs")["data"][0]["id"]
    fleet.wait(lambda: fleet.clusters[1].get(f"/v1/runs/{run_id}")["status"] == "Completed",
               "the singleton's run to complete")
