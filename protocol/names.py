"""Rules every event name and id follows on both sides: no NUL, and the reserved prefix.

A NUL character is refused wherever a name or id enters (events, step ids, instance ids,
waits, triggers): stored, it would be cut short by some drivers and tools and compared whole
by others. Names under ``tether/`` belong to the gateway's system events, in any letter case
(``Tether/x`` and ``TETHER/x`` are refused too: a case-insensitive filter downstream must not
mistake a user's event for the gateway's).
"""

from __future__ import annotations

from protocol.errors import InvalidInput

#: Event names under this prefix (in any case) are the gateway's own system events.
RESERVED_PREFIX = "tether/"

#: The system events a run's end emits (stored only when something listens), and the event
#: that starts a run made by ``step.invoke``.
FUNCTION_FINISHED = "tether/function.finished"
FUNCTION_FAILED = "tether/function.failed"
FUNCTION_CANCELLED = "tether/function.cancelled"
FUNCTION_INVOKED = "tether/function.invoked"
RUN_ENDINGS = frozenset({FUNCTION_FINISHED, FUNCTION_FAILED, FUNCTION_CANCELLED})


def is_reserved(name: str) -> bool:
    """Whether ``name`` lies under :data:`RESERVED_PREFIX`, whatever its letter case."""
    return name[:len(RESERVED_PREFIX)].casefold() == RESERVED_PREFIX


def check_no_nul(value: str, what: str) -> str:
    """Return ``value``.

    Raises:
        InvalidInput: ``value`` holds a NUL character; ``what`` names the field.
    """
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character (\\u0000); names and ids may not")
    return value
