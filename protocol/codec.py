"""Messages <-> WebSocket frames. The only module that imports msgpack.

A frame is one msgpack array of message maps, so a peer packs everything it has to say in one
write. Decoding validates every message against :data:`protocol.messages.Message`; any garbage
(bad msgpack, a non-array, an unknown ``type``, a missing field, an oversize frame) raises
:class:`~protocol.errors.RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
from pydantic import TypeAdapter, ValidationError

from protocol.errors import RemoteProtocolError
from protocol.messages import MESSAGE_TYPES, Message

_FRAME: TypeAdapter[list[Message]] = TypeAdapter(list[Message])

#: Default cap on one frame; the gateway and worker raise it to fit their payload limits.
DEFAULT_MAX_FRAME = 8 * 1024 * 1024


def encode(messages: Sequence[Message]) -> bytes:
    """Pack ``messages`` into one binary frame."""
    return msgpack.packb(_FRAME.dump_python(list(messages)), use_bin_type=True)  # type: ignore[no-any-return]


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
