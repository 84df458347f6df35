"""Concurrency limits across two gateways on one PostgreSQL database, real processes.

Runs of two keys arrive through both gateways, served by a worker on each: the steps' own
timings (the ledger) show at most ``limit`` runs of a key executing at once, and that the
limit is reached. Then slot accounting: with a key's slots held by blocked steps, a worker
and a gateway are killed (-9); once the steps may go on, every queued run completes and no
run is left holding a slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateways_support import Fleet, fleet_fixture

pytestmark = pytest.mark.e2e

APP = '''
import asyncio

from gwledger import gated, note
from worker import App, Concurrency, TriggerEvent

app = App("conc")


async def work(run_id):
    note(run_id, "start")
    await asyncio.sleep(0.15)
    note(run_id, "end")
    return run_id


@app.function(id="limited", trigger=TriggerEvent("conc.limited"),
              concurrency=Concurrency(2, key="event.data.tenant"))
async def limited(ctx):
    return await ctx.step.run("work", work, ctx.run_id)


@app.function(id="held", trigger=TriggerEvent("conc.held"),
              concurrency=Concurrency(2, key="event.data.tenant"))
async def held(ctx):
    return await ctx.step.run("hold", gated, ctx.run_id, "hold", "go")
'''


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path / "fleet", gateways=2)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def test_a_key_never_runs_more_than_its_limit_across_gateways(fleet: Fleet) -> None:
    fleet.start_gateways()
    spec = fleet.write_app("concapp", APP)
    workers = [fleet.start_worker(spec, [0, 1], name="w0"),
               fleet.start_worker(spec, [1, 0], name="w1")]
    fleet.wait_connected(0, workers[0])
    fleet.wait_connected(1, workers[1])

    # Eight events of each key in one request to each gateway: they are all queued at once,
    # so each key's limit is reached however slow the machine is.
    tenants = {}
    for cluster in fleet.clusters:
        batch = [{"name": "conc.limited", "data": {"tenant": "ab"[i % 2]}} for i in range(8)]
        for event_id, event in zip(cluster.send(batch), batch, strict=True):
            tenants[event_id] = event["data"]["tenant"]

    def finished() -> list[dict]:
        runs = [fleet.clusters[0].get(f"/v1/events/{e}/runs")["data"] for e in tenants]
        done = [r[0] for r in runs if r and r[0]["status"] == "Completed"]
        return done if len(done) == len(tenants) else []

    runs = fleet.wait(finished, "every limited run to complete", timeout=60)
    by_run = {r["id"]: tenants[r["event_ids"][0]] for r in runs}
    spans: dict[str, dict[str, float]] = {}
    for e in fleet.ledger():
        spans.setdefault(e.run_id, {})[e.step] = e.at
    for tenant in "ab":
        intervals = [(s["start"], s["end"]) for run_id, s in spans.items()
                     if by_run.get(run_id) == tenant]
        fleet.check(len(intervals) == 8, f"tenant {tenant}: {len(intervals)} executions")
        fleet.check(most_at_once(intervals) == 2,
                    f"tenant {tenant}: at most 2 at once, reached: {sorted(intervals)}")

    # Slot accounting: two runs hold the key's slots, four wait; kill a worker and a gateway.
    held = [fleet.clusters[i % 2].send({"name": "conc.held", "data": {"tenant": "c"}})[0]
            for i in range(6)]
    fleet.wait(lambda: len(fleet.sql(
        "SELECT id FROM runs WHERE function_id = 'conc/held' AND status = 'Running'")) == 2,
        "two held runs to be leased")
    workers[0].kill()
    fleet.gateway(0).kill()
    fleet.open_gate("go")

    def all_done() -> bool:
        rows = fleet.sql("SELECT status, COUNT(*) FROM runs WHERE function_id = 'conc/held' "
                         "GROUP BY status")
        return dict(rows) == {"Completed": len(held)}

    fleet.wait(all_done, "every held run to complete on the survivors", timeout=60)
    fleet.check(fleet.sql("SELECT COUNT(*) FROM runs WHERE status = 'Running'")[0][0] == 0,
                "a run still holds a slot")
