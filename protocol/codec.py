"""Messages <-> WebSocket frames. The only module that reads or writes msgpack.

A frame is one msgpack array of message maps, so a peer packs everything it has to say in one
write. Messages are packed one by one (:func:`pack`) and joined under the array's header
(:func:`frame`): a sender learns each message's exact size as it encodes it, and splits frames
(:func:`frames`) without estimating sizes or encoding anything twice.

Decoding validates every message against :data:`protocol.messages.Message`; any garbage
(bad msgpack, a non-array, an unknown ``type``, a missing field, an oversize frame) raises
:class:`~protocol.errors.RemoteProtocolError` and nothing else.

msgspec reads and writes the msgpack (several times faster than the msgpack package, per
message); the msgpack package stays for what msgspec does not take (``str`` subclasses in a
message) and to word refusals. A frame that msgspec or the validation refuses is decoded
again by the msgpack package, so a peer that sends garbage is told exactly what it always
was, and a frame the two parsers would read differently is read as the msgpack package reads
it (tests/unit/test_wire_shortcuts.py compares the two with hypothesis).

The gateway reads its workers' frames with :func:`decode_from_worker`: a frame of nothing but
the per-run messages (checkpoints of steps and runs, lease answers, heartbeats) is decoded
straight into the Structs of :mod:`protocol.hot`, types and limits checked by msgspec, with
no pydantic; any other frame goes through :func:`decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgpack
import msgspec
from pydantic import BaseModel, TypeAdapter, ValidationError

from protocol import hot
from protocol.errors import RemoteProtocolError
from protocol.messages import MESSAGE_TYPES, GatewayMessage, Message, WorkerMessage

_FRAME: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
_parse = msgspec.msgpack.Decoder().decode
_encode = msgspec.msgpack.Encoder().encode
_parse_hot = msgspec.msgpack.Decoder(list[hot.HotMessage]).decode

#: Default cap on one frame; the gateway and worker raise it to fit their payload limits.
DEFAULT_MAX_FRAME = 8 * 1024 * 1024


#: Bytes of a frame's array header, at most.
FRAME_HEADER = 5


_PLAIN = (int, float, str, bytes, bool, NoneType)


def _holds_models(annotation: Any) -> bool:
    """Whether a field so annotated may hold something that is not plain msgpack data."""
    if annotation in _PLAIN:
        return False
    origin = get_origin(annotation)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _holds_models(get_args(annotation)[0])
    if origin in (list, dict, Union, UnionType):
        return any(_holds_models(arg) for arg in get_args(annotation))
    return True


#: Message class -> its fields that may hold models (nested messages, manifests). A message
#: whose such fields are all empty is its ``__dict__`` on the wire: model_dump would copy it.
_NESTING: dict[type[BaseModel], tuple[str, ...]] = {
    cls: tuple(name for name, info in cls.model_fields.items()
               if _holds_models(info.annotation))
    for cls in get_args(GatewayMessage | WorkerMessage)
}


def pack(message: Message) -> bytes:
    """One message's msgpack map: the bytes it takes in a frame."""
    values = message.__dict__
    nesting = _NESTING.get(type(message))
    if nesting is not None:
        for name in nesting:  # a loop, not any() over a generator: a third of the cost
            if values[name]:
                break
        else:
            try:
                return _encode(values)
            except TypeError:  # a str or int subclass (a user's step id, say): msgspec refuses
                pass
    # The model's own serializer: the same map the frame's union adapter writes, without
    # looking the message's type up among every message type.
    return msgpack.packb(message.model_dump(), use_bin_type=True)  # type: ignore[no-any-return]


def frame(packed: Sequence[bytes]) -> bytes:
    """Join messages from :func:`pack` into one frame (a msgpack array of them)."""
    count = len(packed)
    if count < 16:
        header = bytes((0x90 | count,))
    elif count < 0x10000:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(packed)


def encode(messages: Sequence[Message]) -> bytes:
    """Pack ``messages`` into one binary frame."""
    return frame([pack(message) for message in messages])


def frames(messages: Sequence[Message], max_size: int, max_messages: int = 0) -> list[bytes]:
    """``messages`` in order, in as few frames of at most ``max_size`` bytes as they fit.

    With ``max_messages``, a frame also holds at most that many. A message too large for any
    frame travels alone (its receiver refuses it; senders check their own limits first).
    """
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = FRAME_HEADER
    for message in messages:
        packed = pack(message)
        if chunk and (size + len(packed) > max_size or len(chunk) == max_messages):
            out.append(frame(chunk))
            chunk, size = [], FRAME_HEADER
        chunk.append(packed)
        size += len(packed)
    if chunk:
        out.append(frame(chunk))
    return out


def decode(frame: bytes | str, *, max_size: int = DEFAULT_MAX_FRAME) -> list[Message]:
    """Parse one frame into its messages.

    Raises:
        RemoteProtocolError: the frame is text, too large, not msgpack, or holds a message
            that is unknown or malformed. The message names what was wrong.
    """
    if isinstance(frame, str):
        raise RemoteProtocolError("text frames are not part of the protocol; send binary frames")
    if len(frame) > max_size:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes is over the {max_size} byte limit")
    try:
        raw = _parse(frame)
    except Exception:  # garbage, or too deep for msgspec: see what msgpack says
        pass
    else:
        if type(raw) is list:
            try:
                return _FRAME.validate_python(raw)
            except ValidationError:
                pass  # said below in the words of the msgpack package's reading
    return _decode_msgpack(frame)


def decode_from_worker(frame: bytes | str, *,
                       max_size: int = DEFAULT_MAX_FRAME) -> Sequence[Message | hot.HotMessage]:
    """:func:`decode` for the gateway: the per-run messages come back as :mod:`protocol.hot`
    Structs (the same acceptance and values, a sixth of the cost), the others as models.

    Raises:
        RemoteProtocolError: as :func:`decode`, in the same words.
    """
    if type(frame) is bytes and len(frame) <= max_size:
        try:
            return _parse_hot(frame)
        except Exception:  # not only hot messages, or refused: decode says which and why
            pass
    return decode(frame, max_size=max_size)


def _decode_msgpack(frame: bytes) -> list[Message]:
    """:func:`decode` with the msgpack package: how every refusal is worded."""
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError(f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(raw, list):
        raise RemoteProtocolError(f"a frame must be an array of messages, not {type(raw).__name__}")
    try:
        return _FRAME.validate_python(raw)
    except ValidationError as exc:
        raise RemoteProtocolError(_describe(raw, exc)) from exc


def _describe(raw: list[Any], exc: ValidationError) -> str:
    """Say which message was wrong and how, in one line."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    index = loc[0] if loc and isinstance(loc[0], int) else None
    item = raw[index] if index is not None and index < len(raw) else None
    kind = item.get("type") if isinstance(item, dict) else None
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        if kind is None:
            return f"message {index} has no 'type' field"
        return f"unknown message type {kind!r} (known: {', '.join(sorted(MESSAGE_TYPES))})"
    what = f"{kind} message" if isinstance(kind, str) else f"message {index}"
    where = ".".join(str(p) for p in loc[2:])
    return f"malformed {what}: {where + ': ' if where else ''}{first['msg']}"
