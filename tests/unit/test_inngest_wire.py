"""The bridge's protobuf schema against the descriptor shipped in the pinned Python SDK: a
renumbered field, a changed type or a renumbered message kind fails here first."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from gateway.inngest import wire

pb = pytest.importorskip("inngest.connect._internal.connect_pb2")

_F = descriptor_pb2.FieldDescriptorProto
#: Types that share a wire encoding with what the bridge declares (enums are varints).
SAME_WIRE = {_F.TYPE_ENUM: _F.TYPE_INT32}


def test_every_field_the_bridge_uses_matches_the_sdk() -> None:
    for name, fields in wire.SCHEMA.items():
        sdk = pb.DESCRIPTOR.message_types_by_name.get(name)
        assert sdk is not None, f"the SDK has no message {name}"
        for field, number, kind, extra in fields:
            theirs = sdk.fields_by_name.get(field)
            assert theirs is not None, f"{name}.{field} is gone from the SDK's schema"
            assert theirs.number == number, f"{name}.{field}: {theirs.number} != {number}"
            assert SAME_WIRE.get(theirs.type, theirs.type) == kind, f"{name}.{field}: type"
            repeated = theirs.is_repeated
            assert repeated == extra.startswith("*"), f"{name}.{field}: repeated"
            if kind == _F.TYPE_MESSAGE:
                assert theirs.message_type.name == extra.lstrip("*")


def test_message_kinds_and_reply_statuses_match_the_sdk() -> None:
    kinds = pb.DESCRIPTOR.enum_types_by_name["GatewayMessageType"]
    assert {v.name: v.number for v in kinds.values} == {k.name: k.value for k in wire.Kind}
    statuses = pb.DESCRIPTOR.enum_types_by_name["SDKResponseStatus"]
    assert {v.name: v.number for v in statuses.values} == {
        s.name: s.value for s in wire.ReplyStatus}


def test_frames_round_trip_with_the_sdk() -> None:
    ours = wire.frame(wire.Kind.GATEWAY_EXECUTOR_REQUEST, wire.new(
        "GatewayExecutorRequestData", request_id="r1", function_slug="app-fn",
        request_payload=b'{"x":1}', lease_id="l1"))
    msg = pb.ConnectMessage()
    msg.ParseFromString(ours)
    data = pb.GatewayExecutorRequestData()
    data.ParseFromString(msg.payload)
    assert (msg.kind, data.request_id, data.request_payload) == (
        pb.GatewayMessageType.GATEWAY_EXECUTOR_REQUEST, "r1", b'{"x":1}')
    reply = pb.SDKResponse(request_id="r1", status=pb.SDKResponseStatus.ERROR, no_retry=True,
                           retry_after="2026-01-01T00:00:00Z", body=b"{}")
    kind, payload = wire.unframe(pb.ConnectMessage(
        kind=pb.GatewayMessageType.WORKER_REPLY, payload=reply.SerializeToString())
        .SerializeToString())
    parsed = wire.parse("SDKResponse", payload)
    assert kind == wire.Kind.WORKER_REPLY
    assert (parsed.status, parsed.no_retry, parsed.retry_after) == (2, True,
                                                                    "2026-01-01T00:00:00Z")


def test_garbage_is_a_wire_error_and_an_unknown_kind_an_int() -> None:
    with pytest.raises(wire.WireError, match="ConnectMessage"):
        wire.unframe(b"\xff\xff\xff")
    kind, _ = wire.unframe(pb.ConnectMessage(kind=15).SerializeToString())
    assert kind == 15 and not isinstance(kind, wire.Kind)
