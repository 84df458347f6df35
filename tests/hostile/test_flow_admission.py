"""Hostile input against a real gateway process: flow-control keys no well-behaved event gives.

Key values that cannot be keys (lists, maps, null, over 4,096 characters), a missing key
field, and a flood of events of one key: each run is recorded (Skipped with the expression's
error, or started), nothing crashes, and ``still_serves`` then checks that the process is
alive, answers a normal event with 200 and completes a normal run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves

pytestmark = pytest.mark.e2e

MISSING = object()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-flow")


def send(gw: E2E, name: str, data: dict[str, Any]) -> str:
    with httpx.Client(timeout=bound(5)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev", json={"name": name, "data": data})
    gw.check(r.status_code == 200, f"event refused: {r.status_code} {r.text}")
    (event_id,) = r.json()["ids"]
    return str(event_id)


@pytest.mark.parametrize("name", ["e2e/limited", "e2e/single"])
@pytest.mark.parametrize(("value", "says"), [
    ([1, 2], "gave list"), ({"a": 1}, "gave dict"), (None, "gave null"),
    ("k" * 5000, "over the 4096 limit"), (MISSING, "key"),
    ({"deep": [[[[[[[[[[{}]]]]]]]]]]}, "gave dict"),
])
def test_a_key_that_cannot_be_a_key_skips_its_run_with_the_reason(gw, name, value, says):
    data = {} if value is MISSING else {"key": value}
    run = gw.wait_final(gw.run_of(send(gw, name, data))["id"])
    gw.check(run["status"] == "Skipped", f"{name} with key {value!r:.80}: {run}")
    skipped = run["skipped"]
    assert skipped["reason"] == ("rate_limit" if name == "e2e/limited" else "singleton")
    assert skipped["key"] is None and says in skipped["message"], skipped
    still_serves(gw)


@pytest.mark.parametrize("value", [True, 1.5, -0.0, 10**30, "\u202e\u0007 key", ""])
def test_odd_but_valid_keys_are_keys(gw, value):
    first = gw.wait_final(gw.run_of(send(gw, "e2e/limited", {"key": value}))["id"])
    gw.check(first["status"] == "Completed", f"key {value!r}: {first}")
    still_serves(gw)


def test_a_flood_of_one_key_admits_the_limit_and_skips_the_rest(gw):
    with httpx.Client(timeout=bound(10)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev", json=[
            {"name": "e2e/limited", "data": {"key": "flood"}} for _ in range(200)])
    gw.check(r.status_code == 200, f"{r.status_code} {r.text}")
    runs = [gw.wait_final(gw.run_of(event_id)["id"]) for event_id in r.json()["ids"]]
    statuses = [run["status"] for run in runs]
    assert statuses.count("Completed") == 2 and statuses.count("Skipped") == 198, statuses
    still_serves(gw)
