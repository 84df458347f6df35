"""How a leased run is driven through an Inngest SDK's request loop: requests built from the
lease, replies turned into checkpoints. Pure: no socket, no store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway.inngest.executor import Reply, ReplyError, RunDriver, step_hash
from gateway.inngest.registration import function_config
from protocol import messages as m

NOW = 1_800_000_000.0
FN = function_config("shop", {"id": "shop-sync", "triggers": [{"event": "shop/sync"}],
                              "steps": {"step": {"retries": {"attempts": 2}}}})


def driver(**lease: Any) -> RunDriver:
    values: dict[str, Any] = {"run_id": "R", "fence": 1, "function_id": "shop/sync",
                              "events": [b'{"name":"shop/sync","data":{"k":1}}']}
    values.update(lease)
    return RunDriver(lease=m.LeaseGranted(**values), function=FN,
                     slugs={"shop-child": "shop/child"})


def op(kind: str, step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_hash(step_id), "op": kind, "displayName": step_id,
            "userland": {"id": step_id.split(":")[0]}, **fields}


def reply(*ops: dict[str, Any]) -> Reply:
    return Reply(status=0, body=json.dumps(list(ops)).encode())


def body(d: RunDriver) -> dict[str, Any]:
    request = d.next_request()
    assert request is not None
    parsed: dict[str, Any] = json.loads(request.body)
    return parsed


def test_the_memo_carries_each_kind_of_recorded_step_as_the_sdks_read_it() -> None:
    d = driver(memos={
        "a": m.StepMemo(output=b'{"x":1}'),
        "bad": m.StepMemo(error=m.ErrorInfo(name="ValueError", message="no")),
        "nap": m.StepMemo(kind="sleep", output=b"null"),
        "wait": m.StepMemo(kind="wait", output=b'{"name":"go","data":{}}'),
        "call": m.StepMemo(kind="invoke", output=b"42"),
    }, attempt=1)
    sent = body(d)
    assert sent["steps"] == {
        step_hash("a"): {"data": {"x": 1}},
        step_hash("bad"): {"error": {"name": "ValueError", "message": "no"}},
        step_hash("nap"): None,
        step_hash("wait"): {"name": "go", "data": {}},
        step_hash("call"): {"data": 42},
    }
    assert sent["ctx"]["attempt"] == 1 and sent["ctx"]["max_attempts"] == 3
    assert sent["event"] == {"name": "shop/sync", "data": {"k": 1}}
    assert sent["use_api"] is False


def test_a_step_result_is_checkpointed_and_fed_back_in_the_next_request() -> None:
    d = driver(attempt=2)
    request = d.next_request()
    assert request is not None and request.step_id == "step"
    out = d.apply(request, reply(op("StepRun", "a", data={"ok": 1})), now=NOW)
    assert out == [(m.StepCompleted, {"step_id": "a", "attempt": 0,
                                      "output": orjson.dumps({"ok": 1}),
                                      "started_at": NOW, "ended_at": NOW})]
    sent = body(d)
    assert sent["steps"] == {step_hash("a"): {"data": {"ok": 1}}}
    assert sent["ctx"]["attempt"] == 0  # a completed step resets the body's attempts


def test_a_repeated_step_id_is_named_with_the_sdks_suffix() -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    repeated = {**op("StepRun", "a:1", data=2), "userland": {"id": "a", "index": 1}}
    ((_, fields),) = d.apply(request, reply(repeated), now=NOW)
    assert fields["step_id"] == "a:1"


def test_planned_steps_are_each_targeted_then_the_run_continues_in_parallel_mode() -> None:
    d = driver()
    first = d.next_request()
    assert first is not None
    assert d.apply(first, reply(op("StepPlanned", "p1"), op("StepPlanned", "p2")), now=NOW) == []
    targets = []
    for name in ("p1", "p2"):
        request = d.next_request()
        assert request is not None
        targets.append(request.step_id)
        assert json.loads(request.body)["ctx"]["disable_immediate_execution"] is True
        d.apply(request, reply(op("StepRun", name, data=name)), now=NOW)
    assert targets == [step_hash("p1"), step_hash("p2")]
    last = d.next_request()
    assert last is not None and last.target is None
    assert set(json.loads(last.body)["steps"]) == {step_hash("p1"), step_hash("p2")}


def test_a_retriable_step_error_parks_the_run_and_the_lease_ends_suspended() -> None:
    d = driver(attempts={"a": 1})
    request = d.next_request()
    assert request is not None
    assert json.loads(request.body)["ctx"]["attempt"] == 1  # the step's retry is due
    error = {"name": "Error", "message": "flaky", "stack": "at x"}
    out = d.apply(request, reply(op("StepError", "a", error=error)), now=NOW)
    assert out[0][0] is m.StepFailed
    assert out[0][1]["final"] is False and out[0][1]["attempt"] == 1
    assert d.next_request() is None
    assert d.finish() == [(m.RunSuspended, {})]


def test_a_final_step_failure_is_recorded_and_the_sdk_is_asked_again() -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    out = d.apply(request, reply(op("StepFailed", "a", error={"name": "E", "message": "x"})),
                  now=NOW)
    assert out[0][1]["final"] is True
    assert body(d)["steps"] == {step_hash("a"): {"error": {"name": "E", "message": "x"}}}


@pytest.mark.parametrize(("fields", "expected"), [
    ({"name": "2027-01-15T08:00:00Z"}, {"until": datetime(2027, 1, 15, 8, tzinfo=UTC)
                                        .timestamp()}),  # Python: an ISO time
    ({"name": "1s"}, {"duration": 1.0}),  # TypeScript: a duration
    ({"name": "nap", "opts": {"duration": "2m"}}, {"duration": 120.0}),  # the spec
])
def test_sleep_in_each_sdks_shape(fields: dict[str, Any], expected: dict[str, float]) -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    ((kind, out),) = d.apply(request, reply(op("Sleep", "nap", **fields)), now=NOW)
    assert kind is m.SleepRequested
    assert out == {"step_id": "nap", **expected}


def test_wait_and_invoke_become_tether_waits_and_child_runs() -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    out = d.apply(request, reply(
        op("WaitForEvent", "w", name="shop/go",
           opts={"if": "async.data.k == event.data.k", "timeout": "1h"}),
        op("InvokeFunction", "c", opts={"function_id": "shop-child",
                                        "payload": {"data": {"v": 1}}, "timeout": "5m"})),
        now=NOW)
    assert out == [
        (m.WaitRequested, {"step_id": "w", "event": "shop/go", "timeout": 3600.0,
                           "if_": "async.data.k == event.data.k"}),
        (m.InvokeRequested, {"step_id": "c", "function_id": "shop/child",
                             "data": b'{"v":1}', "timeout": 300.0, "user": None}),
    ]


def test_steps_the_gateway_still_owes_are_not_requested_again() -> None:
    d = driver(deferred=["nap"])
    request = d.next_request()
    assert request is not None
    assert d.apply(request, reply(op("Sleep", "nap", name="1s")), now=NOW) == []


@pytest.mark.parametrize(("answer", "final", "retry_after"), [
    (Reply(status=2, body=b'{"name":"Error","message":"boom"}'), False, None),
    (Reply(status=2, body=b'{"name":"Error","message":"boom"}', no_retry=True), True, None),
    (Reply(status=2, body=b'{"name":"E","message":"boom"}', retry_after="30"), False, 30.0),
    (Reply(status=1, body=b'{"name":"NonRetriableError","message":"boom"}', no_retry=True),
     True, None),  # TypeScript's 400, reported as DONE with no-retry
])
def test_a_function_error_fails_the_run_final_or_not(answer: Reply, final: bool,
                                                      retry_after: float | None) -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    ((kind, out),) = d.apply(request, answer, now=NOW)
    assert kind is m.RunFailed
    assert out["final"] is final and out["retry_after"] == retry_after
    assert out["error"].message == "boom"


def test_the_function_output_completes_the_run() -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    assert d.apply(request, Reply(status=1, body=b'{"done":true}'), now=NOW) == [
        (m.RunCompleted, {"output": b'{"done":true}'})]
    assert d.next_request() is None and d.finish() == []


def test_a_reply_the_bridge_cannot_apply_is_an_error_not_a_guess() -> None:
    d = driver()
    request = d.next_request()
    assert request is not None
    with pytest.raises(ReplyError, match="AIGateway"):
        d.apply(request, reply(op("AIGateway", "ai")), now=NOW)
    with pytest.raises(ReplyError, match="not JSON"):
        d.apply(request, Reply(status=0, body=b"<html>"), now=NOW)
