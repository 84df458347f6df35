"""gateway.http.events.parse_events: what the event API accepts, and what it says when it won't."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.http.events import MAX_NAME, EventLimits, parse_events
from gateway.intake import kept_json
from gateway.store.base import NewEvent
from protocol.errors import InvalidInput, PayloadTooLarge

NOW = 1_700_000_000.5
LIMITS = EventLimits()


def parse(body: Any, *, limits: EventLimits = LIMITS, raw: bool = False,
          **kwargs: Any) -> list[tuple[NewEvent, dict[str, Any]]]:
    data = body if raw else json.dumps(body).encode()
    return parse_events(data, limits=limits, now=NOW, **kwargs)


def refused(body: Any, *, raw: bool = False, limits: EventLimits = LIMITS) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(body, raw=raw, limits=limits)
    return info.value


def test_single_object():
    [(event, normalised)] = parse({"name": "shop/order.paid", "data": {"amount": 3},
                                   "id": "evt-1", "ts": 123, "user": {"id": "u1"}})
    assert normalised == {"name": "shop/order.paid", "data": {"amount": 3}, "id": "evt-1",
                          "ts": 123, "user": {"id": "u1"}}
    assert (event.id, event.name) == ("evt-1", "shop/order.paid")
    assert json.loads(event.payload) == normalised
    assert event.data == normalised


def test_array_keeps_order():
    parsed = parse([{"name": "a", "id": "1"}, {"name": "b", "id": "2"}, {"name": "c", "id": "3"}])
    assert [(e.id, e.name) for e, _ in parsed] == [("1", "a"), ("2", "b"), ("3", "c")]


def test_empty_array_is_no_events():
    assert parse([]) == []


def test_defaults():
    [(event, normalised)] = parse({"name": "shop/x"})
    assert normalised["data"] == {}
    assert normalised["ts"] == int(NOW * 1000)
    assert normalised["user"] is None
    assert isinstance(event.id, str) and len(event.id) == 26  # a ULID
    assert normalised["id"] == event.id


@pytest.mark.parametrize("body", [{"name": "a", "data": None}, {"name": "a", "id": None},
                                  {"name": "a", "id": ""}, {"name": "a", "ts": None}])
def test_null_and_empty_mean_default(body):
    [(event, normalised)] = parse(body)
    assert normalised["data"] == {}
    assert event.id
    assert normalised["ts"] == int(NOW * 1000)


def test_generated_ids_are_unique():
    parsed = parse([{"name": "a"}] * 50)
    assert len({e.id for e, _ in parsed}) == 50


def test_unknown_fields_are_dropped():
    [(event, normalised)] = parse({"name": "a", "extra": 1})
    assert "extra" not in normalised
    assert "extra" not in json.loads(event.payload)


def test_reserved_prefix_allowed_for_the_gateway_itself():
    [(event, _)] = parse({"name": "tether/function.failed"}, allow_reserved=True)
    assert event.name == "tether/function.failed"


def test_unicode_survives():
    [(event, normalised)] = parse({"name": "café/ordered", "data": {"emoji": "☕"}})
    assert json.loads(event.payload)["data"] == {"emoji": "☕"}
    assert normalised["name"] == "café/ordered"


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"{'name': 'a'}", b"\xff\xfe", b"[1,"])
def test_not_json(body):
    error = refused(body, raw=True)
    assert "not valid JSON" in str(error)
    assert error.http_status == 400


@pytest.mark.parametrize("body", [b'{"name": "a", "data": {"x": NaN}}',
                                  b'{"name": "a", "data": {"x": Infinity}}',
                                  b'{"name": "a", "ts": -Infinity}'])
def test_nan_and_infinity_are_not_json(body):
    assert "not valid JSON" in str(refused(body, raw=True))


@pytest.mark.parametrize(("body", "kind"), [("shop/x", "a string"), (3, "a number"),
                                            (None, "null"), (True, "a boolean")])
def test_not_an_object(body, kind):
    assert str(refused(body)) == f"event: expected a JSON object, got {kind}"


def test_array_item_not_an_object_names_its_index():
    assert str(refused([{"name": "a"}, [1]])) == "event 1: expected a JSON object, got an array"


@pytest.mark.parametrize("event", [{}, {"name": ""}, {"name": "   "}, {"name": 3},
                                   {"name": None}, {"data": {}}])
def test_missing_or_empty_name(event):
    assert "'name' is required and must be a non-empty string" in str(refused(event))


def test_name_too_long():
    assert parse({"name": "x" * MAX_NAME})
    message = str(refused({"name": "x" * (MAX_NAME + 1)}))
    assert f"longer than {MAX_NAME} characters" in message


def test_reserved_prefix():
    message = str(refused({"name": "tether/function.failed"}))
    assert "'tether/'" in message and "reserved" in message


@pytest.mark.parametrize(("data", "kind"), [([1], "an array"), ("x", "a string"), (1, "a number"),
                                            (False, "a boolean")])
def test_data_not_an_object(data, kind):
    assert str(refused({"name": "a", "data": data})) == (
        f"event: 'data' must be a JSON object, got {kind}")


@pytest.mark.parametrize("event_id", [3, ["x"], {"a": 1}, True, "x" * 257])
def test_bad_id(event_id):
    assert "'id' must be a string" in str(refused({"name": "a", "id": event_id}))


@pytest.mark.parametrize("ts", [-1, True, False, 1.5, "123", [1]])
def test_bad_ts(ts):
    assert "'ts' must be a non-negative integer (milliseconds)" in str(
        refused({"name": "a", "ts": ts}))


def test_ts_zero_is_fine():
    [(_, normalised)] = parse({"name": "a", "ts": 0})
    assert normalised["ts"] == 0


@pytest.mark.parametrize(("user", "kind"), [("u1", "a string"), ([1], "an array"), (7, "a number")])
def test_user_not_an_object(user, kind):
    assert str(refused({"name": "a", "user": user})) == (
        f"event: 'user' must be a JSON object, got {kind}")


def test_error_in_an_array_names_the_event():
    message = str(refused([{"name": "a"}, {"name": "b"}, {"name": "c", "data": []}]))
    assert message.startswith("event 2: 'data'")


def test_oversize_event():
    limits = EventLimits(max_event=2048)
    assert parse({"name": "a", "data": {"x": "y" * 1000}}, limits=limits)
    with pytest.raises(PayloadTooLarge) as info:
        parse([{"name": "a"}, {"name": "b", "data": {"x": "y" * 4000}}], limits=limits)
    message = str(info.value)
    assert info.value.http_status == 413
    assert message.startswith("event 1: event too large: 4 KiB > 2 KiB limit")
    assert "split the event" in message


def test_too_many_events():
    limits = EventLimits(max_events=3)
    assert len(parse([{"name": "a"}] * 3, limits=limits)) == 3
    with pytest.raises(PayloadTooLarge) as info:
        parse([{"name": "a"}] * 4, limits=limits)
    assert info.value.http_status == 413
    assert "4 events in one request, over the 3 limit" in str(info.value)


def test_too_many_events_is_checked_before_each_event():
    # The count is refused even when the events themselves are garbage.
    with pytest.raises(PayloadTooLarge):
        parse([1, 2, 3, 4], limits=EventLimits(max_events=3))


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"name": "a", "data": ' + b'{"x": ' * 100_000 + b"1"
                                  + b"}" * 100_001])
def test_deeply_nested_body_is_refused_not_crashed(body):
    # 200 KB, well under the request limit: a 400, not an internal error.
    error = refused(body, raw=True)
    assert type(error) is InvalidInput
    assert "depth limit exceeded" in str(error)


@pytest.mark.parametrize(("body", "said"), [
    ({"name": "a\u0000b"}, "event: 'name' contains a NUL character (\\u0000); names and ids "
                           "may not"),
    ([{"name": "a"}, {"name": "a", "id": "x\u0000"}], "event 1: 'id' contains a NUL character "
                                                       "(\\u0000); names and ids may not"),
])
def test_a_nul_is_refused_in_the_words_of_the_name_rules(body, said):
    assert str(refused(body)) == said


def test_a_lone_surrogate_is_refused():
    # json.dumps escapes it; orjson reads no lone surrogate, so nothing is stored.
    message = str(refused([{"name": "a"}, {"name": "a", "data": {"x": "\ud800"}}]))
    assert message.startswith("body is not valid JSON: no low surrogate in string")


@pytest.mark.parametrize("value", [
    {}, {"name": "a", "data": {"i": 1}, "id": "x", "ts": 0, "user": None},
    {"x": "ünï 🎉 \u2028 \t \x01", "n": [1.5, -0.0, 2**63 - 1, None, True], "deep": [[[{}]]]},
    {"big": "y" * 5000},
])
def test_kept_json_is_orjson_s_bytes(value):
    kept = kept_json(value)
    assert kept == orjson.dumps(value) and type(kept) is bytes


@pytest.mark.parametrize("value", [{"x": "\ud800"}, {"x": 2**64}, {"x": object()}])
def test_kept_json_refuses_what_orjson_refuses(value):
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value)
    with pytest.raises(orjson.JSONEncodeError):
        kept_json(value)
