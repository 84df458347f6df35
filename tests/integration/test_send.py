"""``app.send`` / ``send_sync`` against an in-process gateway: event data is encoded as step
results are, and what JSON cannot hold is refused before anything is sent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from protocol.errors import InvalidInput
from worker import App, Event, TriggerEvent


@dataclass
class Point:
    x: int
    y: int


async def test_datetimes_uuids_and_dataclasses_are_sent_as_json(harness):
    app = App("t", api_url=str(harness.http.base_url))

    @app.function(trigger=TriggerEvent("t/sent"))
    async def echo(ctx):
        return ctx.event.data

    await harness.start_worker([app])
    token = uuid.UUID(int=7)
    (event_id,) = await app.send(Event("t/sent", {
        "at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "token": token, "where": Point(1, 2),
    }))

    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed", "Failed")
    assert done["output"] == {"at": "2030-01-02T03:04:05+00:00", "token": str(token),
                              "where": {"x": 1, "y": 2}}


def test_a_value_json_cannot_hold_is_refused_with_what_to_do():
    app = App("t", api_url="http://127.0.0.1:9")  # nothing listens: nothing must be sent
    with pytest.raises(InvalidInput) as info:
        app.send_sync(Event("t/sent", {"tags": {"a"}}))
    message = str(info.value)
    assert message.startswith("app.send: the events cannot be sent: Type is not JSON "
                              "serializable: set; ")
    assert "a set becomes a list" in message
