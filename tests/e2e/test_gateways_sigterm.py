"""A gateway stopped with SIGTERM while its workers hold runs, two peers on the same database.

The gateway tells its workers to go away, commits what is pending and exits 0; each worker
moves to its next ``--gateway``; the runs it held are leased again through the survivors and
complete, replaying the steps that were acknowledged before the stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateways_support import Fleet, fleet_fixture
from tests.e2e.harness import log_events
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e

GATED = '''
from gwledger import gated, note
from worker import App, TriggerEvent

app = App("ops")


async def step(run_id, step_id):
    return note(run_id, step_id)


@app.function(id="gated", trigger=TriggerEvent("ops.gated"), retries=2)
async def gated_run(ctx):
    """Steps a, b, c; b waits for the gate named in the event."""
    return [await ctx.step.run("a", step, ctx.run_id, "a"),
            await ctx.step.run("b", gated, ctx.run_id, "b", ctx.event.data["gate"]),
            await ctx.step.run("c", step, ctx.run_id, "c")]
'''

RUNS = 6
#: Seconds without a beat after which peers presume a gateway dead and requeue its leases.
PEER_TTL = 5.0
STEPS = ("a", "b", "c")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path / "fleet", gateways=3)


def test_gateway_sigterm_drains_its_workers_to_peers_and_their_runs_complete(
        fleet: Fleet) -> None:
    fleet.start_gateways()
    spec = fleet.write_app("opsapp", GATED)
    # Both workers start on gateway 0; each has a different next gateway.
    w1 = fleet.start_worker(spec, [0, 1, 2], name="worker1")
    w2 = fleet.start_worker(spec, [0, 2, 1], name="worker2")
    fleet.wait_connected(0, w1, w2)
    leaving = fleet.gateway(0)

    fleet.clusters[0].send([{"name": "ops.gated", "data": {"n": n, "gate": "go"}}
                            for n in range(RUNS)])
    fleet.wait(lambda: len([e for e in fleet.ledger() if e.step == "b"]) == RUNS,
               f"{RUNS} runs to be in step b")
    ran_b = {e.run_id: e for e in fleet.ledger() if e.step == "b"}
    fleet.check({e.pid for e in ran_b.values()} <= {w1.pid, w2.pid}, f"b ran on {ran_b}")
    # Step a of every run is committed, so acknowledged: it must never run again.
    fleet.wait(lambda: fleet.sql("SELECT count(*) FROM steps WHERE step_id = 'a'"
                                 " AND status = 'Completed'") == [(RUNS,)],
               "step a of every run to be committed")

    stopped_at = time.monotonic()
    code = leaving.stop(timeout=bound(15))
    fleet.check(code == 0, f"the gateway exited {code} on SIGTERM")
    fleet.check(log_events(leaving, "gateway_stopped"), "no gateway_stopped line")
    for worker in (w1, w2):
        fleet.check(log_events(worker, "gateway_going_away"), f"{worker.name} was not told")
    fleet.wait_connected(1, w1)  # the next gateway in each worker's list
    fleet.wait_connected(2, w2)
    moved = time.monotonic() - stopped_at

    # The runs go back to the queue and are leased through the survivors: b starts again
    # (its first execution was never acknowledged), on the same two worker processes.
    fleet.wait(lambda: len([e for e in fleet.ledger() if e.step == "b"]) == 2 * RUNS,
               "every run to be leased again and be in step b", timeout=20)
    released = time.monotonic() - stopped_at
    # Handed back by the stopping gateway itself, not left for its peers to find after
    # PEER_TTL of silence.
    fleet.check(released < PEER_TTL, f"runs leased again only {released:.1f}s after SIGTERM")
    fleet.open_gate("go")

    def completed() -> bool:
        return fleet.sql("SELECT count(*) FROM runs WHERE status = 'Completed'") == [(RUNS,)]

    fleet.wait(completed, f"all {RUNS} runs to complete")
    executions = fleet.executions()
    for run_id, output in fleet.sql("SELECT id, output FROM runs"):
        results = json.loads(output)
        counts = {s: len(executions.get((run_id, s), [])) for s in STEPS}
        fleet.check(counts == {"a": 1, "b": 2, "c": 1},
                    f"run {run_id}: step executions {counts}")
        # The acknowledged b is the second execution: the first, cut off by the stop, was
        # never acknowledged (its late checkpoint was refused, or sent to no one).
        fleet.check(results[1] == executions[(run_id, "b")][-1].result,
                    f"run {run_id}: acknowledged b {results[1]}, "
                    f"executions {executions[(run_id, 'b')]}")
    survivors = [fleet.clusters[1], fleet.clusters[2]]
    for cluster in survivors:
        fleet.check(cluster.get("/health")["status"] == "ok", f"{cluster.api} is ill")
    print(f"\nworkers reconnected {moved:.2f}s and runs were leased again {released:.2f}s "
          "after SIGTERM")
