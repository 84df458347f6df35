"""The worker socket protocol: typed messages, one codec, one state machine. No I/O.

Both the gateway and the worker build on this package; it imports neither asyncio nor sockets,
so every rule of the conversation can be tested by passing messages between two sessions.
"""

from __future__ import annotations

from protocol import messages
from protocol.codec import DEFAULT_MAX_FRAME, decode, encode
from protocol.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    TetherError,
)
from protocol.messages import PROTOCOL_VERSION, Message
from protocol.session import Role, Session, State

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "LocalProtocolError",
    "Message",
    "RemoteProtocolError",
    "Role",
    "Session",
    "State",
    "TetherError",
    "decode",
    "encode",
    "messages",
]
