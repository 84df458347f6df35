"""Supervision: a gateway whose engine dies stops (non-zero exit) instead of hanging.

The engine is made to die for real, in a real gateway process, through its test-only fault
(``TETHER_TEST_ENGINE_CRASH``: a batch holding an event of that name raises in the engine's
loop, as a bug would). Nothing is mocked: the request that carried it gets an error, the log
says what died, and the process exits so that a process manager restarts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cluster import Cluster
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e


def test_an_engine_that_dies_stops_the_gateway_with_a_clear_line(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", gateway_args=["--log-format", "json"],
                env={"TETHER_TEST_ENGINE_CRASH": "boom/now"})
    try:
        gateway = c.start_gateway()
        assert c.send({"name": "fine/event", "data": {}})  # the engine works until then
        status, body = c.request("POST", "/e/dev", {"name": "boom/now", "data": {}})
        assert status == 503, body
        assert "engine stopped" in body["error"]
        code = gateway.popen.wait(timeout=bound(20))
        assert code == 70
        lines = [json.loads(line) for line in gateway.log().splitlines()
                 if line.startswith("{")]
        (died,) = [line for line in lines if line["event"] == "gateway_task_died"]
        assert died["task"] == "tether-engine" and "test fault" in died["reason"]
        assert died["level"] == "critical"
        assert any(line["event"] == "gateway_stopped" for line in lines)
    finally:
        c.stop()
