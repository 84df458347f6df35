"""Idempotency: one run per key per 24 h; later events with the key start none.

Inngest compiles ``idempotency`` to ``rateLimit{limit: 1, period: 24h, key}``; with a limit
of one that is exact, so Tether keeps the simpler state that says the same thing: per
(function, key), when the key frees up. An event whose key is held starts no run: the store
records a Skipped one with reason ``idempotency`` (SPEC §4; Inngest records nothing, which
leaves users guessing why), and the hold is *not* extended by the refused event: 24 h after
the run that took the key, the next event starts a run.

The key is the CEL value hashed with the function's id (:mod:`gateway.flow.keys`), so two
functions with the same expression do not share keys. This is separate from the event-id
dedupe of SPEC §4, which drops the *event* before any function sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.flow.keys import Key, KeyFailure, key_for

#: How long a key holds, in seconds.
WINDOW = 24 * 3600.0


@dataclass(frozen=True)
class IdempotencyDecision:
    """``start``: create the run and store ``held_until``; otherwise start nothing."""

    start: bool
    held_until: float


def decide(held_until: float | None, now: float, window: float = WINDOW) -> IdempotencyDecision:
    """Whether an event whose key is held until ``held_until`` (None: never) starts a run."""
    if held_until is None or now >= held_until:
        return IdempotencyDecision(True, now + window)
    return IdempotencyDecision(False, held_until)


def idempotency_key(expression: str, event: dict[str, Any], function_id: str) -> Key | KeyFailure:
    """The stored key of ``event`` for ``function_id``'s ``idempotency`` expression."""
    return key_for(expression, event, scope=f"idempotency:{function_id}")
