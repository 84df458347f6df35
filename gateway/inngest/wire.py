"""The protobuf messages of Inngest's connect protocol, as far as the bridge speaks it.

The schema is written here as a table (message -> fields), read from the ``connect.proto``
that the Inngest SDKs ship, and turned into message classes at import time in a private
descriptor pool, so no code generator runs and an SDK installed in the same process (the
tests run one) cannot clash with it. Fields the bridge never reads or writes (timestamps,
connection metadata) are left out: protobuf skips unknown fields. ``optional`` fields are plain
proto3 fields here; the bridge never needs to tell "absent" from "empty".

``tests/unit/test_inngest_wire.py`` compares this table with the descriptor in the pinned SDK,
so a renumbered field or kind is caught before it corrupts a frame.
"""

from __future__ import annotations

import enum
from typing import Any

from protocol.errors import InvalidInput

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
except ImportError:  # pragma: no cover - the extra is not installed
    raise InvalidInput(
        "--inngest needs the protobuf package: pip install 'tether[inngest]'") from None

#: Package name in our own pool: never the SDK's ``connect.v1``.
PACKAGE = "tether.inngest.connect.v1"


class Kind(enum.IntEnum):
    """``GatewayMessageType``: what a ``ConnectMessage`` carries."""

    GATEWAY_HELLO = 0
    WORKER_CONNECT = 1
    GATEWAY_CONNECTION_READY = 2
    GATEWAY_EXECUTOR_REQUEST = 3
    WORKER_READY = 4
    WORKER_REQUEST_ACK = 5
    WORKER_REPLY = 6
    WORKER_REPLY_ACK = 7
    WORKER_PAUSE = 8
    WORKER_HEARTBEAT = 9
    GATEWAY_HEARTBEAT = 10
    GATEWAY_CLOSING = 11
    WORKER_REQUEST_EXTEND_LEASE = 12
    WORKER_REQUEST_EXTEND_LEASE_ACK = 13
    SYNC_FAILED = 14


class ReplyStatus(enum.IntEnum):
    """``SDKResponseStatus``: the HTTP status of serve mode, as an enum."""

    NOT_COMPLETED = 0  # 206: opcodes
    DONE = 1  # 200: the function returned
    ERROR = 2  # 500: the function raised


_F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL, INT32, INT64, UINT32 = (
    _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32)
#: Enums travel as varints: the bridge reads them as int32 and converts with the enums above.
ENUM = INT32

#: message -> [(field, number, type, repeated or message type name)]
SCHEMA: dict[str, list[tuple[str, int, int, str]]] = {
    "ConnectMessage": [("kind", 1, ENUM, ""), ("payload", 2, BYTES, "")],
    "AppConfiguration": [("app_name", 1, STRING, ""), ("app_version", 2, STRING, ""),
                         ("functions", 4, BYTES, "")],
    "AuthData": [("session_token", 1, STRING, ""), ("sync_token", 2, STRING, "")],
    "WorkerConnectRequestData": [
        ("connection_id", 1, STRING, ""), ("instance_id", 2, STRING, ""),
        ("auth_data", 3, _F.TYPE_MESSAGE, "AuthData"), ("capabilities", 4, BYTES, ""),
        ("apps", 5, _F.TYPE_MESSAGE, "*AppConfiguration"),
        ("worker_manual_readiness_ack", 6, BOOL, ""), ("environment", 8, STRING, ""),
        ("framework", 9, STRING, ""), ("platform", 10, STRING, ""),
        ("sdk_version", 11, STRING, ""), ("sdk_language", 12, STRING, ""),
        ("max_worker_concurrency", 14, INT64, ""),
    ],
    "GatewayConnectionReadyData": [("heartbeat_interval", 1, STRING, ""),
                                   ("extend_lease_interval", 2, STRING, "")],
    "GatewayExecutorRequestData": [
        ("request_id", 1, STRING, ""), ("account_id", 2, STRING, ""), ("env_id", 3, STRING, ""),
        ("app_id", 4, STRING, ""), ("app_name", 5, STRING, ""), ("function_id", 6, STRING, ""),
        ("function_slug", 7, STRING, ""), ("step_id", 8, STRING, ""),
        ("request_payload", 9, BYTES, ""), ("run_id", 12, STRING, ""),
        ("lease_id", 13, STRING, ""), ("job_id", 14, STRING, ""),
    ],
    "WorkerRequestAckData": [("request_id", 1, STRING, ""), ("app_id", 4, STRING, ""),
                             ("function_slug", 5, STRING, ""), ("step_id", 6, STRING, ""),
                             ("run_id", 9, STRING, "")],
    "WorkerRequestExtendLeaseData": [
        ("request_id", 1, STRING, ""), ("function_slug", 5, STRING, ""),
        ("step_id", 6, STRING, ""), ("run_id", 9, STRING, ""), ("lease_id", 10, STRING, ""),
    ],
    "WorkerRequestExtendLeaseAckData": [
        ("request_id", 1, STRING, ""), ("account_id", 2, STRING, ""), ("env_id", 3, STRING, ""),
        ("app_id", 4, STRING, ""), ("function_slug", 5, STRING, ""),
        ("new_lease_id", 6, STRING, ""),
    ],
    "SDKResponse": [
        ("request_id", 1, STRING, ""), ("status", 5, ENUM, ""), ("body", 6, BYTES, ""),
        ("no_retry", 7, BOOL, ""), ("retry_after", 8, STRING, ""),
        ("sdk_version", 9, STRING, ""), ("request_version", 10, UINT32, ""),
        ("run_id", 13, STRING, ""),
    ],
    "WorkerReplyAckData": [("request_id", 1, STRING, "")],
    "StartRequest": [("exclude_gateways", 1, STRING, "*")],
    "StartResponse": [
        ("connection_id", 1, STRING, ""), ("gateway_endpoint", 2, STRING, ""),
        ("gateway_group", 3, STRING, ""), ("session_token", 4, STRING, ""),
        ("sync_token", 5, STRING, ""),
    ],
    "FlushResponse": [("request_id", 1, STRING, "")],
    "SystemError": [("code", 1, STRING, ""), ("data", 2, BYTES, ""), ("message", 3, STRING, "")],
}


def _build() -> dict[str, type[message.Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="tether_inngest_connect.proto", package=PACKAGE, syntax="proto3")
    for name, fields in SCHEMA.items():
        msg = file.message_type.add(name=name)
        for field, number, kind, extra in fields:
            repeated = extra.startswith("*")
            type_name = extra.lstrip("*")
            f = msg.field.add(name=field, number=number, type=kind,  # type: ignore[arg-type,unused-ignore]
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind == _F.TYPE_MESSAGE:
                f.type_name = f".{PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in SCHEMA}


_CLASSES = _build()


class WireError(Exception):
    """A frame or body that is not the protobuf message it should be."""


def new(name: str, **fields: Any) -> Any:
    """A message of type ``name`` (a key of :data:`SCHEMA`) with ``fields`` set."""
    return _CLASSES[name](**fields)


def parse(name: str, data: bytes) -> Any:
    """Decode ``data`` as message ``name``.

    Raises:
        WireError: the bytes are not such a message.
    """
    msg = _CLASSES[name]()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError, or anything the runtime raises on garbage
        raise WireError(f"not a {name} protobuf message: {exc}") from None
    return msg


def frame(kind: Kind, payload: Any = None) -> bytes:
    """A ``ConnectMessage`` of ``kind`` carrying ``payload`` (a message or bytes)."""
    data = b"" if payload is None else (
        payload if isinstance(payload, bytes) else payload.SerializeToString())
    return bytes(_CLASSES["ConnectMessage"](kind=int(kind), payload=data).SerializeToString())


def unframe(data: bytes) -> tuple[Kind | int, bytes]:
    """The kind (an int if unknown to this schema) and payload of a ``ConnectMessage``.

    Raises:
        WireError: the frame is not a ``ConnectMessage``.
    """
    msg = parse("ConnectMessage", data)
    try:
        kind: Kind | int = Kind(msg.kind)
    except ValueError:
        kind = int(msg.kind)
    return kind, bytes(msg.payload)
