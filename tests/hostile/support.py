"""What the hostile suites share: a real gateway and worker, and the check after each attack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound


def serving_gateway(tmp_path_factory: pytest.TempPathFactory, name: str, *extra: str
                    ) -> Iterator[E2E]:
    """A ``--dev`` gateway process (with ``extra`` options) and one real worker serving the
    e2e app."""
    cluster = Cluster(Path(tmp_path_factory.mktemp(name)) / "cluster",
                      gateway_args=["--retry-base", "0.05", "--log-format", "json", *extra])
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
