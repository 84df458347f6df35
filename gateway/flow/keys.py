"""The key of an event under a flow-control option: a CEL expression's value, hashed.

Inngest evaluates the ``key`` expression against the event and hashes the result (xxhash), so
any value works as a key and a missing field silently becomes an empty key. Tether differs: a
key must be a string, a number or a bool, and an expression that fails (a missing field, a
type error) or gives ``null``, a list or a map yields a :class:`KeyFailure` the caller records
as the run's skip or failure reason. Evaluating never raises: a user's expression must never
crash admission.

Keys are stored as SHA-256 hex digests (stable across processes and versions, unlike
``hash()``), so a 4 KiB key costs the store 64 characters; the first :data:`MAX_DISPLAY`
characters of the value are kept beside it for the API's "why is it waiting" answer.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from protocol.errors import ExpressionError
from protocol.expressions import evaluate

#: The longest key value hashed, in characters; a longer one is a failure, not a truncation
#: (two keys sharing a 4 KiB prefix must not silently share a queue).
MAX_KEY_LENGTH = 4096
#: How much of a key's value the store keeps for display.
MAX_DISPLAY = 128
#: The key of every event when an option has no ``key`` expression.
NO_KEY = ""


@dataclass(frozen=True)
class Key:
    """A key: ``hash`` is what the store indexes on, ``display`` what the API shows."""

    hash: str
    display: str


@dataclass(frozen=True)
class KeyFailure:
    """The expression gave no usable key; ``reason`` says why, for the run's record."""

    reason: str


def canonical(value: Any) -> str | None:
    """The text a key value stands for, or None for a value that cannot be a key.

    ``1``, ``1.0`` and ``"1"`` are the same key (Inngest stringifies keys too); ``true`` is
    ``"true"``, as CEL writes it.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return None


def make_key(scope: str, text: str) -> Key:
    """Hash ``text`` within ``scope`` (say ``"fn:shop/sync"`` or ``"app:shop"``)."""
    digest = hashlib.sha256(f"{scope}\0{text}".encode()).hexdigest()
    return Key(hash=digest, display=text[:MAX_DISPLAY])


#: ``event.a.b``: a path of plain field names, the shape almost every key expression has.
_PATH = re.compile(r"event(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_ABSENT = object()


@lru_cache(maxsize=1024)
def _path(expression: str) -> tuple[str, ...] | None:
    """The field names of a plain path expression, or None for any other expression."""
    text = expression.strip()
    return tuple(text.split(".")[1:]) if _PATH.fullmatch(text) else None


def _walk(event: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the event, as CEL would give it; _ABSENT where CEL would fail
    (a missing field, a field of something not an object): CEL then says why."""
    value: Any = event
    for name in path:
        if not isinstance(value, dict) or name not in value:
            return _ABSENT
        value = value[name]
    return value


def key_for(expression: str | None, event: dict[str, Any], *, scope: str) -> Key | KeyFailure:
    """The key of ``event`` (the event's JSON object) under ``expression``; never raises.

    A plain path (``event.data.tenant``) is read straight from the event, as CEL would read
    it (a tenth of the cost, on the admission of every event); anything else, and any path
    that CEL would refuse, goes through CEL.
    """
    if expression is None:
        return make_key(scope, NO_KEY)
    path = _path(expression)
    value = _walk(event, path) if path is not None else _ABSENT
    if value is not _ABSENT:
        return _key_of(expression, value, scope)
    try:
        value = evaluate(expression, {"event": event})
    except ExpressionError as exc:
        return KeyFailure(f"key {exc.message}")
    except Exception as exc:  # a user's expression must not crash admission
        return KeyFailure(f"key {expression!r} could not be evaluated: {type(exc).__name__}")
    return _key_of(expression, value, scope)


def _key_of(expression: str, value: Any, scope: str) -> Key | KeyFailure:
    text = canonical(value)
    if text is None:
        kind = "null" if value is None else type(value).__name__
        return KeyFailure(
            f"key {expression!r} gave {kind}; a key must be a string, a number or a bool"
        )
    if len(text) > MAX_KEY_LENGTH:
        return KeyFailure(
            f"key {expression!r} gave {len(text)} characters, over the {MAX_KEY_LENGTH} limit; "
            "key on an id rather than on content"
        )
    return make_key(scope, text)
