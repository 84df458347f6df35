"""Hostile input against a real gateway process: throttle keys and priorities.

A raw worker registers a function throttled per ``event.data.k`` with a priority from
``event.data.p``; events then carry keys and priorities no sane sender would: huge, nested,
null, the wrong type. A key that gives no key fails its run with the reason; a priority that
gives no number is 0; nothing crashes. Each attack is followed by ``still_serves``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from protocol.manifest import AppManifest, FunctionConfig, Priority, Throttle, TriggerEvent
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves
from tests.integration.raw_worker import RawWorker

pytestmark = pytest.mark.e2e

EVENT = "hostile.flow"
FLOW_APP = AppManifest(id="flowy", version="1", functions=[FunctionConfig(
    id="f", triggers=[TriggerEvent(EVENT)],
    throttle=Throttle(1000, 1.0, key="event.data.k"), priority=Priority("event.data.p"))])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-flow")


@pytest.fixture
async def raw(gw) -> AsyncIterator[RawWorker]:
    worker = await RawWorker.ready_on(gw.cluster.connect_port, instance_id="flowy",
                                      apps=[FLOW_APP])
    yield worker
    await worker.close()


def send(gw: E2E, data: dict[str, Any]) -> dict[str, Any]:
    """Send one event of ``EVENT``; its run as the API shows it."""
    with httpx.Client(timeout=bound(5)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev", json={"name": EVENT, "data": data})
    assert r.status_code == 200, r.text
    (event_id,) = r.json()["ids"]
    return gw.run_of(event_id)


@pytest.mark.parametrize("k", [None, {"a": 1}, [1, 2], "x" * 5000, {"d": [[[[[[1]]]]]]}])
async def test_a_key_that_gives_no_key_fails_its_run_with_the_reason(gw, raw, k):
    data = {} if k is None else {"k": k}
    run = gw.wait_final(send(gw, data)["id"])
    assert run["status"] == "Failed", run
    assert run["error"]["name"] == "FlowControlError"
    assert "throttle key" in run["error"]["message"]
    still_serves(gw)


@pytest.mark.parametrize("p", [10 ** 300, -(10 ** 300), 1e308, "600", None, [600], True])
async def test_a_priority_no_sane_sender_gives_is_clamped_or_zero(gw, raw, p):
    run = send(gw, {"k": "tenant", "p": p})
    assert run["status"] in ("Queued", "Running"), run  # queued for the raw worker
    still_serves(gw)
