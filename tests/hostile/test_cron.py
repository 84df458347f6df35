"""Hostile input against a real gateway process: cron schedules and delayed events.

Schedules no SDK would send (sent raw, as another SDK could), event timestamps far in the
future or out of range. Each attack is followed by ``still_serves``: the process is alive, a
normal event gets 200 and a normal run completes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from protocol.manifest import AppManifest, FunctionConfig, TriggerCron
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves
from tests.integration.test_registration import refused

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-cron")


def raw_cron(cron: str, tz: str) -> AppManifest:
    """A manifest holding a cron trigger the SDK would refuse."""
    app = AppManifest(id="hostile", version="1", functions=[
        FunctionConfig(id="f", triggers=[TriggerCron("* * * * *")])])
    trigger = app.functions[0].triggers[0]
    object.__setattr__(trigger, "cron", cron)
    object.__setattr__(trigger, "tz", tz)
    return app


@pytest.mark.parametrize(("cron", "tz"), [
    ("* * * * * * *", "UTC"), ("0 0 31 2 *", "UTC"), ("H H * * *", "UTC"),
    ("* * * * *", "../../etc/passwd"), ("* * * * *", "Europe/Paris\x00"),
    ("TZ=/etc/localtime * * * * *", "UTC"), ("*/0 * * * *", "UTC"), ("@reboot", "UTC"),
    ("0-59/1," * 30 + "99 * * * *", "UTC"), ("9" * 200 + " * * * *", "UTC"),
])
async def test_a_schedule_no_sdk_would_send_is_refused(gw, cron, tz):
    error = await refused(gw.cluster, raw_cron(cron, tz))  # closed with 1008
    assert error.code == "invalid_input", error
    assert error.message.startswith("function 'hostile/f': TriggerCron: cron "), error.message
    still_serves(gw)


@pytest.mark.parametrize("ts", [2**63, 2**53 + 1, 10**30, -1, 1.5, "soon"])
def test_an_event_timestamp_out_of_range_is_refused(gw, ts):
    with httpx.Client(timeout=bound(5)) as client:
        r = client.post(f"{gw.cluster.api}/e/dev", json={"name": "e2e/three", "ts": ts})
    assert r.status_code == 400, r.text
    assert "'ts'" in r.json()["error"]
    still_serves(gw)
