"""Priority: a CEL expression gives seconds (-600..600) by which a run moves ahead in its queue.

Inngest's semantics: a run with priority ``p`` is ordered as if it had been queued ``p``
seconds earlier, so it jumps ahead of runs queued up to ``p`` s before it (negative: it falls
behind). It only reorders runs that wait; it never preempts a running one, and it never makes
a run start before its ``available_at`` (the queue filters on that first). Ties keep arrival
order (the run's sequence number).

Inngest clamps to +-12 h server-side and documents -600..600; Tether clamps to -600..600. An
expression that fails or gives a non-number does not fail the run (priority is advice): the
run gets 0 and the reason is returned for the caller to log and show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from protocol.errors import ExpressionError
from protocol.expressions import evaluate

#: The largest shift, in seconds, either way.
MAX_PRIORITY = 600


@dataclass(frozen=True)
class PriorityResult:
    seconds: int
    error: str | None = None


def clamp(value: float) -> int:
    """``value`` seconds as an int within -600..600 (fractions truncated toward zero)."""
    return max(-MAX_PRIORITY, min(MAX_PRIORITY, int(value)))


def priority_of(expression: str | None, event: dict[str, Any]) -> PriorityResult:
    """The priority of a run started by ``event``; never raises."""
    if expression is None:
        return PriorityResult(0)
    try:
        value = evaluate(expression, {"event": event})
    except ExpressionError as exc:
        return PriorityResult(0, f"priority {exc.message}")
    except Exception as exc:  # a user's expression must not crash admission
        return PriorityResult(0, f"priority {expression!r} failed: {type(exc).__name__}")
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        kind = "null" if value is None else type(value).__name__
        return PriorityResult(0, f"priority {expression!r} gave {kind}; it must give seconds")
    return PriorityResult(clamp(value))


def order_key(queued_at: float, priority: int, seq: int) -> tuple[float, int]:
    """Sort key of a waiting run within its queue: smaller starts first.

    The store indexes ``(queued_at - priority, seq)``; ``seq`` is the run's arrival number.
    """
    return (queued_at - priority, seq)
