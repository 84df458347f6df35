"""The worker socket's state machine, for either end, as data.

Rule 1: every transition lives in the tables below. A message that is not in the table for
the current state is refused: received, it is the peer's fault (``RemoteProtocolError``, close
its socket); sent, it is ours (``LocalProtocolError``, a bug).

Rule 2: the session does no I/O and holds no business state. The gateway's and the worker's
transports call :meth:`Session.receive` on every decoded message and :meth:`Session.send` on
every message before encoding it, and act on the message themselves.

States, seen from either end::

    NEW --Challenge--> CHALLENGED --Answer--> ANSWERED --Authenticated--> AUTHENTICATED
        --Hello--> HELLO_SENT --Ready--> READY --Drain--> DRAINING --Error--> CLOSED

The worker proves its key (``Answer``) before it may send its manifest (``Hello``): the
gateway reads nothing large from a peer it has not authenticated.
"""

from __future__ import annotations

import enum

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.hot import HotMessage
from protocol.messages import CHECKPOINT_TYPES, Message


class Role(enum.Enum):
    GATEWAY = "gateway"
    WORKER = "worker"


class State(enum.Enum):
    # Every message looks its state up (twice); Enum's own hash hashes the member's name
    # in Python. Members are compared by identity, so their identity hashes them as well.
    __hash__ = object.__hash__

    NEW = "new"
    CHALLENGED = "challenged"
    ANSWERED = "answered"
    AUTHENTICATED = "authenticated"
    HELLO_SENT = "hello_sent"
    READY = "ready"
    DRAINING = "draining"
    CLOSED = "closed"


_CHECKPOINTS = tuple(cls.model_fields["type"].default for cls in CHECKPOINT_TYPES)
_LIVE = (State.READY, State.DRAINING)

# What the worker may say, and the state it leads to. ``None`` keeps the state.
_FROM_WORKER: dict[State, dict[str, State | None]] = {
    State.CHALLENGED: {"answer": State.ANSWERED},
    State.AUTHENTICATED: {"hello": State.HELLO_SENT},
    **{
        s: {
            "heartbeat": None,
            "lease_accepted": None,
            "lease_rejected": None,
            "loop_stalled": None,
            "drain": State.DRAINING,
            **{c: None for c in _CHECKPOINTS},
        }
        for s in _LIVE
    },
}

# What the gateway may say.
_FROM_GATEWAY: dict[State, dict[str, State | None]] = {
    State.NEW: {"challenge": State.CHALLENGED},
    State.ANSWERED: {"authenticated": State.AUTHENTICATED},
    State.HELLO_SENT: {"ready": State.READY},
    State.READY: {
        "heartbeat_ack": None,
        "lease_granted": None,
        "checkpoint_ack": None,
        "checkpoint_refused": None,
        "lease_revoked": None,
        "go_away": None,
    },
    # A draining worker gets no new leases but still hears about its checkpoints.
    State.DRAINING: {
        "heartbeat_ack": None,
        "checkpoint_ack": None,
        "checkpoint_refused": None,
        "lease_revoked": None,
        "go_away": None,
    },
}


# Messages a receiver still takes in a state where the sender may no longer send them, because
# they were already on the wire when the state changed (a lease granted just before a Drain
# arrived). The receiver answers them (here, with LeaseRejected) instead of failing the socket.
_IN_FLIGHT: dict[State, dict[str, State | None]] = {State.DRAINING: {"lease_granted": None}}

#: No transition (one shared empty table: every message passes through here).
_NONE: dict[str, State | None] = {}


def _moves(table: dict[State, dict[str, State | None]],
           late: dict[State, dict[str, State | None]]) -> dict[State, dict[str, State | None]]:
    """Per state, every message one end may take in it: the transitions of ``table``,
    ``error`` (which closes the session in any state) and the ``late`` messages (taken, the
    state kept). One dict lookup per message, instead of three tables read in turn."""
    return {state: {**table.get(state, _NONE), "error": State.CLOSED, **late.get(state, _NONE)}
            for state in State}


#: Per role, what its end may receive and send in each state. Only the worker hears gateway
#: messages that crossed its Drain on the wire.
_RECEIVING = {Role.GATEWAY: _moves(_FROM_WORKER, {}),
              Role.WORKER: _moves(_FROM_GATEWAY, _IN_FLIGHT)}
_SENDING = {Role.GATEWAY: _moves(_FROM_GATEWAY, {}), Role.WORKER: _moves(_FROM_WORKER, {})}


class Session:
    """One end of one socket. ``role`` is the end this object sits at."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.NEW
        self._incoming = _RECEIVING[role]
        self._outgoing = _SENDING[role]

    def receive(self, message: Message | HotMessage) -> None:
        """Check that the peer may send ``message`` now, and advance the state.

        Raises:
            RemoteProtocolError: the message is out of place; close the socket.
        """
        try:
            following = self._incoming[self.state][message.type]
        except KeyError:
            raise RemoteProtocolError(
                f"{message.type!r} received in state {self.state.value!r}") from None
        if following is not None:
            self.state = following

    def send(self, message: Message) -> Message:
        """Check that we may send ``message`` now, advance the state, and return it.

        Raises:
            LocalProtocolError: we tried to send something out of place (a bug).
        """
        try:
            following = self._outgoing[self.state][message.type]
        except KeyError:
            raise LocalProtocolError(
                f"{message.type!r} sent in state {self.state.value!r}") from None
        if following is not None:
            self.state = following
        return message

    @property
    def accepts_leases(self) -> bool:
        """True while the gateway may lease runs on this socket."""
        return self.state is State.READY

