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
from dataclasses import dataclass
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


def key_for(expression: str | None, event: dict[str, Any], *, scope: str) -> Key | KeyFailure:
    """The key of ``event`` (the event's JSON object) under ``expression``; never raises."""
    if expression is None:
        return make_key(scope, NO_KEY)
    try:
        value = evaluate(expression, {"event": event})
    except ExpressionError as exc:
        return KeyFailure(f"key {exc.message}")
    except Exception as exc:  # a user's expression must not crash admission
        return KeyFailure(f"key {expression!r} could not be evaluated: {type(exc).__name__}")
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
