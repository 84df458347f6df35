"""The session's merged tables decide every (role, state, message) as the three tables did.

``Session`` reads one table per state (transitions, ``error`` and late messages merged once,
at import). This walks every role, state and message type, plus a type no table knows, and
compares the outcome (next state, or the error and its words) with the rules written out the
long way: late messages first, then ``error`` in any state, then the transition table.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from protocol import session as s
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import MESSAGE_TYPES


def _expected(table: dict[s.State, dict[str, s.State | None]],
              late: dict[s.State, dict[str, s.State | None]], state: s.State, kind: str,
              error: type[Exception], verb: str) -> s.State | Exception:
    if kind in late.get(state, {}):
        return late[state][kind] or state
    if kind == "error":
        return s.State.CLOSED
    allowed = table.get(state, {})
    if kind not in allowed:
        return error(f"{kind!r} {verb} in state {state.value!r}")
    return allowed[kind] or state


def _outcome(act: object, message: object, session: s.Session) -> s.State | Exception:
    try:
        act(message)  # type: ignore[operator]
    except (RemoteProtocolError, LocalProtocolError) as exc:
        return exc
    return session.state


@pytest.mark.parametrize("role", list(s.Role))
@pytest.mark.parametrize("state", list(s.State))
@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES | {"no_such_message"}))
def test_each_message_in_each_state_as_the_rules_say(role: s.Role, state: s.State,
                                                     kind: str) -> None:
    gateway = role is s.Role.GATEWAY
    incoming = s._FROM_WORKER if gateway else s._FROM_GATEWAY
    outgoing = s._FROM_GATEWAY if gateway else s._FROM_WORKER
    late = {} if gateway else s._IN_FLIGHT
    message = SimpleNamespace(type=kind)
    for table, late_here, error, verb, act in (
        (incoming, late, RemoteProtocolError, "received", "receive"),
        (outgoing, {}, LocalProtocolError, "sent", "send"),
    ):
        session = s.Session(role)
        session.state = state
        got = _outcome(getattr(session, act), message, session)
        want = _expected(table, late_here, state, kind, error, verb)
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
        else:
            assert got is want
