"""The pure decisions that keep poison out of the batch: intake checks, the loop guard, and
NOTIFY notes split under PostgreSQL's payload limit."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from gateway import loop_guard
from gateway.http.events import EventLimits
from gateway.intake import check_checkpoint
from gateway.store.base import Limits
from gateway.store.postgres import note_payloads
from protocol import messages as m


def check(msg: m.Checkpoint, **limits: int):
    return check_checkpoint(msg, Limits(**limits), EventLimits(), now=1.0)


def test_run_output_is_checked_and_re_encoded() -> None:
    assert check(m.RunCompleted(seq=1, run_id="r", fence=1, output=b"{bad")).invalid
    ok = check(m.RunCompleted(seq=1, run_id="r", fence=1, output=b'{ "a" : [1, 2] }'))
    assert ok.invalid is None and ok.data == b'{"a":[1,2]}'
    too_deep = b"[" * 300 + b"]" * 300  # valid JSON, deeper than the encoder allows
    assert "cannot be stored" in (check(m.RunCompleted(seq=1, run_id="r", fence=1,
                                                       output=too_deep)).invalid or "")


def test_sent_events_follow_the_event_api_rules() -> None:
    def sent(*raw: bytes) -> str | None:
        return check(m.EventsSent(seq=1, run_id="r", fence=1, step_id="s",
                                  events=list(raw))).invalid

    assert "not valid JSON" in (sent(b"][") or "")
    assert "no 'id'" in (sent(b'{"name": "a/b"}') or "")
    assert "reserved" in (sent(b'{"name": "tether/function.finished", "id": "x"}') or "")
    assert "'data' must be" in (sent(b'{"name": "a/b", "id": "x", "data": [1]}') or "")
    good = check(m.EventsSent(seq=1, run_id="r", fence=1, step_id="s",
                              events=[b'{"name": "a/b", "id": "x", "data": {"k": 1}}']))
    assert good.invalid is None and good.events is not None
    assert orjson.loads(good.events[0].payload)["data"] == {"k": 1}


def test_invoke_data_must_be_a_json_object() -> None:
    def invoke(data: bytes) -> str | None:
        return check(m.InvokeRequested(seq=1, run_id="r", fence=1, step_id="s",
                                       function_id="a/b", data=data)).invalid

    assert invoke(b"[1]") and invoke(b"nope") and invoke(b"1e99999")
    assert invoke(b'{"x": 1}') is None


def test_nul_characters_in_ids_never_reach_intake() -> None:
    """The wire refuses them (protocol.messages.Name): a frame with one is a bad frame."""
    with pytest.raises(ValidationError):
        m.StepCompleted(seq=1, run_id="r", fence=1, step_id="a\x00", attempt=0,
                        output=b"1", started_at=0, ended_at=0)


def test_a_system_event_never_starts_the_function_it_reports() -> None:
    assert loop_guard.targets(["f", "g"], about="f", link=1) == ["g"]
    assert loop_guard.targets(["f", "g"], about="h", link=loop_guard.MAX_CHAIN) == ["f", "g"]
    assert loop_guard.targets(["g"], about="f", link=loop_guard.MAX_CHAIN + 1) == []


def test_chain_length_follows_embedded_run_endings() -> None:
    event: dict = {"name": "shop/order", "data": {}}
    assert loop_guard.chain_length(event) == 0
    for length in range(1, 4):
        event = {"name": "tether/function.finished", "data": {"event": event}}
        assert loop_guard.chain_length(event) == length
    invoked = {"name": "tether/function.invoked", "data": {"event": event}}
    assert loop_guard.chain_length(invoked) == 0


def test_notes_are_split_under_the_notify_limit_and_lose_nothing() -> None:
    revoke = [[f"gateway-{'x' * 30}.session-{i}", f"run-{i:026d}", i] for i in range(500)]
    note = {"from": "g1", "functions": ["a/b"], "revoke": revoke}
    payloads = note_payloads(note)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    parts = [orjson.loads(p) for p in payloads]
    assert [r for part in parts for r in part["revoke"]] == revoke
    assert all(part["from"] == "g1" for part in parts)
    assert note_payloads({"from": "g1", "functions": ["a/b"]}) == [
        '{"from":"g1","functions":["a/b"]}']
