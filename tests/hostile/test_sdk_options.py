"""Hostile input in the rooms of sdk-options: what a worker declares and what it sends with
``step.invoke``. After each attack the gateway still answers a normal event with 200 and a
normal run completes.
"""

from __future__ import annotations

import json

import httpx
import pytest

from protocol import messages as m
from protocol.manifest import (
    AppManifest,
    Batch,
    Concurrency,
    FunctionConfig,
    Throttle,
    TriggerCron,
    TriggerEvent,
)
from tests.helpers.waiting import eventually
from tests.integration.raw_worker import RawWorker
from tests.integration.test_registration import register

APP = AppManifest(id="h", version="1", functions=[
    FunctionConfig(id="parent", triggers=[TriggerEvent("h/go")]),
    FunctionConfig(id="kid"),
])


@pytest.fixture
async def gw(gateway_factory):
    return await gateway_factory()


@pytest.fixture
async def http(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        yield client


async def a_normal_run_completes(gw, http) -> None:
    worker = await RawWorker.ready_on(gw.connect_port, instance_id="normal",
                                      apps=[AppManifest(id="n", version="1", functions=[
                                          FunctionConfig(id="fn", triggers=[TriggerEvent("n/go")])
                                      ])])
    r = await http.post("/e/dev", json={"name": "n/go"})
    assert r.status_code == 200
    (event_id,) = r.json()["ids"]
    lease = await worker.expect(m.LeaseGranted)
    await worker.send(m.RunCompleted(seq=worker.next_seq(), run_id=lease.run_id,
                                     fence=lease.fence, output=b'"done"'))
    await worker.expect(m.CheckpointAck)

    async def completed() -> dict | None:
        [run] = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
        return run if run["status"] == "Completed" else None

    run = await eventually(completed, 5, what="the normal run to complete")
    assert run["output"] == "done"
    await worker.close()


@pytest.mark.parametrize("user", [b"{not json", b"[1, 2]", b'"ann"', b"\xff\xfe", b"null",
                                  b"1e999999", b"[" * 5000 + b"]" * 5000])
async def test_a_malformed_invoke_user_starts_the_child_without_one(gw, http, user):
    worker = await RawWorker.ready_on(gw.connect_port, apps=[APP], capacity=2)
    await http.post("/e/dev", json={"name": "h/go"})
    lease = await worker.expect(m.LeaseGranted)
    await worker.send(m.InvokeRequested(seq=worker.next_seq(), run_id=lease.run_id,
                                        fence=lease.fence, step_id="k", function_id="h/kid",
                                        data=b"{}", timeout=60.0, user=user))

    async def child_leased() -> m.LeaseGranted | None:
        kids = [g for g in worker.of(m.LeaseGranted) if g.function_id == "h/kid"]
        if not kids:
            await worker.receive()
        return kids[0] if kids else None

    child = await eventually(child_leased, 5, what="the child run to be leased")
    assert json.loads(child.events[0])["user"] is None
    await worker.close()
    await a_normal_run_completes(gw, http)


@pytest.mark.parametrize("functions", [
    # Every unenforced option at once, on many functions.
    [FunctionConfig(id=f"f{i}", triggers=[TriggerEvent("x/*"), TriggerCron("* * * * *")],
                    concurrency=[Concurrency(1), Concurrency(2)], throttle=Throttle(1, 1.0),
                    batch=Batch(1, 1.0), idempotency="event.data.id") for i in range(50)],
    # Wildcards in every wrong place, at the longest name allowed.
    [FunctionConfig(id="w", triggers=[TriggerEvent("a" * 254 + "*")])],
    [FunctionConfig(id="w", triggers=[TriggerEvent("*")] * 10)],
])
async def test_refused_registrations_leave_the_gateway_serving(gw, http, functions):
    worker = await RawWorker.open(gw.connect_port)
    await register(worker, AppManifest(id="bad", version="1", functions=functions))
    error = await worker.expect(m.Error)
    assert error.code == "invalid_input" and error.message
    await worker.wait_closed()
    assert (await http.get("/v1/functions")).json()["data"] == []
    await a_normal_run_completes(gw, http)
