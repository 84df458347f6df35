"""Hostile input against a real gateway process: debounce and batch keys, and a batch's ``if_``.

A raw worker registers a function debounced per ``event.data.k`` and one batched per
``event.data.k`` with ``if_`` over ``event.data.n``; events then carry keys no sane sender
would: huge, nested, null, the wrong type. A key that gives no key fails its run with the
reason; an ``if_`` that cannot be evaluated sends the event to a run of its own; a window
never swallows an event and nothing crashes. Each attack is followed by ``still_serves``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from protocol.manifest import AppManifest, Batch, Debounce, FunctionConfig, TriggerEvent
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves
from tests.integration.raw_worker import RawWorker

pytestmark = pytest.mark.e2e

QUIET, GROUPED = "hostile.quiet", "hostile.grouped"
WINDOWS_APP = AppManifest(id="windy", version="1", functions=[
    FunctionConfig(id="quiet", triggers=[TriggerEvent(QUIET)],
                   debounce=Debounce(600.0, key="event.data.k")),
    FunctionConfig(id="grouped", triggers=[TriggerEvent(GROUPED)],
                   batch=Batch(50, 600.0, key="event.data.k", if_="event.data.n > 1")),
])
NO_KEYS = [None, {"a": 1}, [1, 2], "x" * 5000, {"d": [[[[[[1]]]]]]}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-windows")


@pytest.fixture
async def raw(gw) -> AsyncIterator[RawWorker]:
    worker = await RawWorker.ready_on(gw.cluster.connect_port, instance_id="windy",
                                      apps=[WINDOWS_APP])
    yield worker
    await worker.close()


def send(gw: E2E, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Send one event; its run as the API shows it."""
    with httpx.Client(timeout=bound(5)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev", json={"name": name, "data": data})
    assert r.status_code == 200, r.text
    (event_id,) = r.json()["ids"]
    return gw.run_of(event_id)


@pytest.mark.parametrize("name", [QUIET, GROUPED])
@pytest.mark.parametrize("k", NO_KEYS)
async def test_a_key_that_gives_no_key_fails_its_run_with_the_reason(gw, raw, name, k):
    data: dict[str, Any] = {"n": 5} if k is None else {"k": k, "n": 5}
    run = gw.wait_final(send(gw, name, data)["id"])
    assert run["status"] == "Failed", run
    assert run["error"]["name"] == "FlowControlError"
    option = "debounce" if name == QUIET else "batch"
    assert run["error"]["message"].startswith(f"{option} key"), run
    still_serves(gw)


@pytest.mark.parametrize("n", ["many", None, [2], {"n": 2}])
async def test_a_batch_if_that_cannot_be_evaluated_gives_the_event_a_run_of_its_own(gw, raw, n):
    run = send(gw, GROUPED, {"k": f"own-{n!r}", "n": n})
    assert run["status"] in ("Queued", "Running"), run  # at once: no window holds it
    assert gw.get_run(run["id"])["waiting"] is None
    still_serves(gw)


async def test_bad_events_beside_good_ones_leave_the_window_whole(gw, raw):
    good = [send(gw, GROUPED, {"k": "whole", "n": 5}) for _ in range(2)]
    send(gw, GROUPED, {"k": ["whole"], "n": 5})
    good.append(send(gw, GROUPED, {"k": "whole", "n": 5}))
    assert len({r["id"] for r in good}) == 1  # one open batch
    run = gw.get_run(good[0]["id"])
    assert len(run["event_ids"]) == 3 and run["waiting"]["option"] == "batch"
    still_serves(gw)
