"""protocol.codec: every message survives a round trip; every kind of garbage is refused alike."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.codec import decode, encode
from protocol.errors import RemoteProtocolError
from protocol.manifest import (
    AppManifest,
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionConfig,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)

FULL_FUNCTION = FunctionConfig(
    id="sync-systems",
    name="Sync systems",
    triggers=[
        TriggerEvent("shop/order.paid", if_="event.data.amount > 10"),
        TriggerEvent("shop/*"),
        TriggerCron("0 9 * * MON", tz="Europe/Paris"),
    ],
    retries=7,
    concurrency=[Concurrency(2, key="event.data.customer"), Concurrency(50, scope="app")],
    throttle=Throttle(3, "1m", burst=2, key="event.data.customer"),
    rate_limit=RateLimit(10, "1h", key="event.data.customer"),
    debounce=Debounce("5s", key="event.data.customer", timeout="1m"),
    batch=Batch(100, "2s", key="event.data.customer"),
    priority=Priority("event.data.vip ? 120 : 0"),
    idempotency="event.data.order_id",
    singleton=Singleton(key="event.data.customer", mode="cancel"),
    cancel_on=[Cancel("shop/order.cancelled", if_="event.data.id == async.data.id", timeout="7d")],
    timeouts=Timeouts(start="10m", finish="2h"),
    on_failure_of="shop/other",
    kind="sync",
)

ERROR = m.ErrorInfo(name="ValueError", message="boom", stack="Traceback ...\nValueError: boom")

# One instance of every message type, with every optional field set where there is one.
SAMPLES: list[m.Message] = [
    m.Challenge(nonce=b"\x00\x01nonce", protocol_version=1, gateway_id="gw-1"),
    m.Ready(session_id="s1", heartbeat_interval=5.0, lease_ttl=15.0, max_frame_size=1 << 20),
    m.HeartbeatAck(),
    m.LeaseGranted(
        run_id="r1", fence=3, function_id="shop/sync-systems",
        events=[b'{"name":"shop/order.paid","data":{}}', b'{"name":"b","data":{"x":1}}'],
        memos={
            "get-data": m.StepMemo(output=b'[1,2,3]'),
            "charge": m.StepMemo(error=ERROR),
            "bare": m.StepMemo(error=m.ErrorInfo(name="E", message="m")),
        },
        attempts={"save": 2}, deferred=["save"], attempt=1,
    ),
    m.CheckpointAck(upto=41),
    m.CheckpointRefused(seq=7, run_id="r1", reason="lease lost"),
    m.LeaseRevoked(run_id="r1", fence=3, reason="cancelled"),
    m.GoAway(reason="gateway shutting down"),
    m.Error(code="bad_frame", message="garbage"),
    m.Hello(
        protocol_version=1, instance_id="worker-a", sdk_version="0.1.0", capacity=100,
        apps=[
            AppManifest(id="shop", version="v2", functions=[FULL_FUNCTION]),
            AppManifest(id="empty"),
        ],
    ),
    m.Answer(instance_id="w", mac=b"\xff" * 32),
    m.Authenticated(),
    m.Heartbeat(in_flight=4),
    m.LeaseAccepted(run_id="r1", fence=3),
    m.LeaseRejected(run_id="r1", fence=3, reason="draining"),
    m.Drain(),
    m.LoopStalled(session_id="s1", seconds=20.5, run_id="r2", step_id="block"),
    m.StepCompleted(seq=1, run_id="r1", fence=3, step_id="get-data", attempt=0,
                    output=b'{"a":1}', started_at=1.5, ended_at=2.25),
    m.StepFailed(seq=2, run_id="r1", fence=3, step_id="save", attempt=2, error=ERROR,
                 final=False, retry_after=30.0, started_at=1.0, ended_at=2.0),
    m.SleepRequested(seq=3, run_id="r1", fence=3, step_id="nap", duration=1.5),
    m.SleepRequested(seq=3, run_id="r1", fence=3, step_id="until", until=1_700_000_000.0),
    m.WaitRequested(seq=3, run_id="r1", fence=3, step_id="w", event="shop/approved",
                    timeout=60.0, if_="async.data.id == event.data.id"),
    m.InvokeRequested(seq=3, run_id="r1", fence=3, step_id="child", function_id="shop/f",
                      data=b'{"x":1}', timeout=30.0),
    m.EventsSent(seq=3, run_id="r1", fence=3, step_id="send",
                 events=[b'{"name":"a","data":{},"id":"r1-send-0","ts":1,"user":null}']),
    m.RunSuspended(seq=3, run_id="r1", fence=3),
    m.RunCompleted(seq=4, run_id="r1", fence=3, output=b"null"),
    m.RunFailed(seq=5, run_id="r1", fence=3, attempt=4, error=ERROR, final=True,
                retry_after=None),
    m.LeaseReleased(seq=6, run_id="r1", fence=3, reason="worker draining"),
]


def frame(*items: Any) -> bytes:
    """A msgpack frame holding ``items`` as they are, valid or not."""
    packed: bytes = msgpack.packb(list(items), use_bin_type=True)
    return packed


def refused(data: bytes | str, **kwargs: Any) -> str:
    """Decode garbage; return the error message, failing unless exactly RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, **kwargs)
    assert type(info.value) is RemoteProtocolError
    return str(info.value)


def test_samples_cover_every_message_type():
    assert {s.type for s in SAMPLES} == m.MESSAGE_TYPES


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: s.type)
def test_every_message_round_trips(message):
    (back,) = decode(encode([message]))
    assert back == message
    assert type(back) is type(message)


def test_nested_manifest_survives_with_every_option():
    hello = next(s for s in SAMPLES if isinstance(s, m.Hello))
    (back,) = decode(encode([hello]))
    assert isinstance(back, m.Hello)
    fn = back.apps[0].functions[0]
    assert fn == FULL_FUNCTION
    assert fn.throttle is not None and fn.throttle.period == 60.0  # durations travel as seconds
    assert fn.cancel_on[0].timeout == 7 * 86400.0
    assert isinstance(fn.triggers[2], TriggerCron)
    assert fn.triggers[2].tz == "Europe/Paris"


def test_memos_keep_output_and_error_apart():
    lease = next(s for s in SAMPLES if isinstance(s, m.LeaseGranted))
    (back,) = decode(encode([lease]))
    assert isinstance(back, m.LeaseGranted)
    assert back.memos["get-data"].output == b"[1,2,3]"
    assert back.memos["get-data"].error is None
    assert back.memos["charge"].error == ERROR
    assert back.memos["charge"].output is None
    assert back.memos["bare"].error is not None and back.memos["bare"].error.stack is None


def test_several_messages_in_one_frame_keep_their_order():
    data = encode(SAMPLES)
    assert decode(data) == SAMPLES


def test_frames_are_the_bytes_the_union_adapter_writes():
    """Packing message by message changes no byte on the wire (frames of 1, 15, 16+ items)."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[m.Message])
    for batch in ([SAMPLES[0]], SAMPLES[:15], SAMPLES, SAMPLES * 700):
        assert encode(batch) == msgpack.packb(adapter.dump_python(batch), use_bin_type=True)


def test_empty_frame_is_empty():
    assert decode(encode([])) == []


def test_defaults_are_filled_when_optional_fields_are_absent():
    (lease,) = decode(frame({"type": "lease_granted", "run_id": "r", "fence": 1,
                             "function_id": "a/f", "events": []}))
    assert lease == m.LeaseGranted(run_id="r", fence=1, function_id="a/f", events=[])
    assert (lease.memos, lease.attempts, lease.deferred, lease.attempt) == ({}, {}, [], 0)


# --- garbage ---------------------------------------------------------------------------


def test_invalid_msgpack():
    assert "not valid msgpack" in refused(b"\xc1")


def test_truncated_msgpack():
    assert "not valid msgpack" in refused(encode(SAMPLES)[:-3])


def test_trailing_bytes_after_the_frame():
    assert "not valid msgpack" in refused(encode([m.Drain()]) + b"\x00")


def test_text_frame():
    assert "text frames" in refused(encode([m.Drain()]).decode("latin-1"))


@pytest.mark.parametrize("top", [{"type": "drain"}, "drain", 3, None, b"raw"])
def test_top_level_must_be_an_array(top):
    message = refused(msgpack.packb(top, use_bin_type=True))
    assert "array of messages" in message
    assert type(top).__name__ in message


def test_array_of_non_maps():
    assert "message 0" in refused(frame(1))


def test_unknown_type_is_named():
    message = refused(frame({"type": "drain"}, {"type": "launch_missiles"}))
    assert "unknown message type 'launch_missiles'" in message
    assert "lease_granted" in message  # lists what is known


def test_missing_type():
    message = refused(frame({"type": "drain"}, {"run_id": "r1"}))
    assert "message 1 has no 'type' field" in message


def test_missing_field():
    message = refused(frame({"type": "checkpoint_ack"}))
    assert "checkpoint_ack" in message
    assert "upto" in message
    assert "required" in message.lower()


def test_wrong_field_type_is_not_coerced():
    message = refused(frame({"type": "checkpoint_ack", "upto": "41"}))
    assert "checkpoint_ack" in message and "upto" in message


def test_str_where_bytes_expected_is_refused():
    message = refused(frame({"type": "answer", "instance_id": "w", "mac": "not-bytes"}))
    assert "answer" in message and "mac" in message


def test_extra_field_is_forbidden():
    message = refused(frame({"type": "heartbeat_ack", "sneaky": 1}))
    assert "heartbeat_ack" in message and "sneaky" in message


def test_bad_nested_manifest_names_the_path():
    hello = {"type": "hello", "protocol_version": 1, "instance_id": "w", "sdk_version": "0",
             "capacity": 1,
             "apps": [{"id": "shop", "functions": [{"id": "f", "retries": 99}]}]}
    message = refused(frame(hello))
    assert "hello" in message
    assert "apps.0.functions.0.retries" in message


def test_bad_nested_expression_free_option_is_refused():
    hello = {"type": "hello", "protocol_version": 1, "instance_id": "w", "sdk_version": "0",
             "capacity": 1, "apps": [{"id": "shop", "functions": [
                 {"id": "f", "triggers": [{"event": "a*b"}]}]}]}
    assert "'*' may only end an event name" in refused(frame(hello))


def test_oversize_frame():
    data = encode([m.GoAway(reason="x" * 200)])
    message = refused(data, max_size=100)
    assert f"{len(data)} bytes" in message and "100 byte limit" in message
    assert decode(data, max_size=len(data)) == [m.GoAway(reason="x" * 200)]


# --- fuzz ------------------------------------------------------------------------------

_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(), st.text(max_size=6), st.binary(max_size=6),
    st.sampled_from(sorted(m.MESSAGE_TYPES)),
)
_KEYS = st.one_of(st.text(max_size=6), st.sampled_from(
    ["type", "run_id", "fence", "apps", "memos", "events", "upto", "functions", "error"]))
_VALUES = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=20,
)


def decoded_or_refused(data: bytes) -> None:
    """Either a list of valid messages that re-encodes stably, or RemoteProtocolError."""
    try:
        messages = decode(data)
    except RemoteProtocolError as exc:
        assert str(exc)  # says what is wrong
        return
    assert all(message.type in m.MESSAGE_TYPES for message in messages)
    again = encode(messages)
    assert encode(decode(again)) == again


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data):
    decoded_or_refused(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_VALUES, max_size=3))
def test_arbitrary_msgpack_structures_raise_only_remote_protocol_error(items):
    decoded_or_refused(msgpack.packb(items, use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(encode(SAMPLES)) - 1), st.integers(0, 255))
def test_flipping_one_byte_of_a_real_frame_raises_only_remote_protocol_error(index, value):
    data = bytearray(encode(SAMPLES))
    data[index] = value
    decoded_or_refused(bytes(data))
