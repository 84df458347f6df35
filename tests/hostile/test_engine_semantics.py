"""Hostile registrations against a real gateway process: workers that reuse the app id of a
connected program with other functions (none at all, or decoys under the same id).

Before the app-id conflict was handled, such a hello silently turned the connected program's
functions off. Each attack is followed by :func:`still_serves`: the process is alive, a normal
event gets 200 and a normal run completes on the real worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.e2e.harness import E2E, log_events
from tests.helpers.waiting import bound
from tests.integration.raw_worker import RawWorker

pytestmark = pytest.mark.e2e

APP = "e2e"  # the app the real worker serves (version "")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("hostile-engine")) / "cluster",
                      gateway_args=["--retry-base", "0.05", "--log-format", "json"])
    e2e = E2E(cluster)
    try:
        e2e.start_gateway("--dev")
        e2e.start_worker()
        e2e.wait_workers(1)
        yield e2e
    finally:
        cluster.stop()


def still_serves(gw: E2E) -> None:
    """The gateway is alive, answers a normal event with 200, and completes a normal run."""
    assert gw.cluster.gateway is not None and gw.cluster.gateway.alive(), gw.logs()
    key = gw.new_key()
    with httpx.Client(timeout=bound(5)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev",
                        json={"name": "e2e/three", "data": {"key": key}})
    gw.check(r.status_code == 200, f"a normal event got {r.status_code} {r.text}")
    (event_id,) = r.json()["ids"]
    run = gw.wait_final(gw.run_of(event_id)["id"])
    gw.check(run["status"] == "Completed", f"a normal run ended {run}")


def impostor(functions: list[FunctionConfig]) -> AppManifest:
    return AppManifest(id=APP, version="", functions=functions)


@pytest.mark.parametrize("functions", [
    [],
    [FunctionConfig(id="decoy", triggers=[TriggerEvent("decoy/go")])],
    [FunctionConfig(id=f"decoy-{i}", triggers=[TriggerEvent(f"decoy/{i}")]) for i in range(50)],
], ids=["no functions", "one decoy", "fifty decoys"])
def test_a_worker_reusing_the_app_id_turns_nothing_off(gw: E2E, functions) -> None:
    gateway = gw.cluster.gateway
    assert gateway is not None
    before = len(log_events(gateway, "app_conflict"))

    async def attack() -> None:
        worker = await RawWorker.ready_on(gw.cluster.connect_port, instance_id="impostor",
                                          apps=[impostor(functions)])
        try:
            await asyncio.to_thread(still_serves, gw)
            listed = {f["id"]: f for f in gw.cluster.get("/v1/functions")["data"]}
            gw.check(listed["e2e/three"]["active"] and "impostor" not in
                     listed["e2e/three"]["workers"], f"{listed['e2e/three']}")
        finally:
            await worker.close()

    asyncio.run(attack())
    gw.check(len(log_events(gateway, "app_conflict")) == before + 1, "the conflict is logged")
    still_serves(gw)
