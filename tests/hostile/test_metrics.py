"""Hostile input against ``/metrics``: what a client chooses never grows the label set.

Hundreds of distinct paths, methods, event names, ids and keys, and a scrape storm; after
them the exposition has as many series as before the first one of each kind, holds none of
the strings sent, and the gateway still serves (:func:`still_serves`).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves

pytestmark = pytest.mark.e2e

MARK = "zq-hostile-"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "metrics")


def series(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {(s.name, frozenset(s.labels.items()))
            for family in text_string_to_metric_families(text) for s in family.samples}


def attack(client: httpx.Client, n: int, start: int) -> None:
    for i in range(start, start + n):
        client.get(f"/{MARK}path-{i}/x")
        client.request("PROPFIND", f"/e/{MARK}key-{i}")
        client.post(f"/e/{MARK}key-{i}", json={"name": f"{MARK}name-{i}", "id": f"{MARK}id-{i}"})
        client.get(f"/v1/runs/{MARK}run-{i}")
        client.get(f"/v1/events/{MARK}event-{i}/runs")


def test_client_strings_never_become_series(gw: E2E) -> None:
    with httpx.Client(base_url=gw.cluster.api, timeout=bound(10)) as client:
        attack(client, 3, 0)  # one of each kind, so their series exist
        client.get("/metrics")  # and the scrape's own (a request is counted once answered)
        before = series(client.get("/metrics").text)
        attack(client, 200, 3)
        for _ in range(200):  # a scrape storm: served from the 1 s cache
            assert client.get("/metrics").status_code == 200
        text = client.get("/metrics").text
    assert MARK not in text
    assert series(text) == before
    still_serves(gw)
