"""Hostile registrations against a real gateway process: workers that reuse the app id of a
connected program with other functions (none at all, or decoys under the same id).

Before the app-id conflict was handled, such a hello silently turned the connected program's
functions off. Each attack is followed by :func:`still_serves`: the process is alive, a normal
event gets 200 and a normal run completes on the real worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.e2e.harness import E2E, log_events
from tests.hostile.support import serving_gateway, still_serves
from tests.integration.raw_worker import RawWorker

pytestmark = pytest.mark.e2e

APP = "e2e"  # the app the real worker serves (version "")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-engine")


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
