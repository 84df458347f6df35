"""Rate limit: at most ``limit`` runs per key per ``period``; an event over it starts a Skipped run.

The algorithm is Inngest's (``pkg/execution/ratelimit``): GCRA with ``emission = period /
limit`` and a tolerance of one whole ``period``, i.e. a bucket of ``limit`` starts that refills
one start every ``emission``. State is one number per key, the theoretical arrival time (TAT).

What that guarantees, exactly: an idle key admits ``limit`` events at once; after that, one
more each ``emission``; over a long run the rate is ``limit / period``; a key idle for a whole
``period`` is full again. It is a *sliding* limit, not fixed windows: no burst of ``2 * limit``
across a window edge, but a window of one ``period`` that starts on a full bucket can see up
to ``2 * limit - 1`` admissions (``limit`` at once, then one per ``emission``). With
``limit == 1`` (idempotency's case) it is exact: one per ``period``.

Inngest fails the *invoker* when an invoked function is rate limited; that belongs to the
caller, not to this decision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimitConfig:
    limit: int
    period: float

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.period > 0:
            raise ValueError(f"rate limit needs limit >= 1 and period > 0: {self}")

    @property
    def emission(self) -> float:
        return self.period / self.limit


@dataclass(frozen=True)
class RateDecision:
    """``allowed``: start the run (store ``tat``); otherwise record it Skipped (``tat`` unchanged).

    ``retry_at`` is when the key next admits an event, for the skip reason.
    """

    allowed: bool
    tat: float | None
    retry_at: float


def decide(tat: float | None, now: float, config: RateLimitConfig) -> RateDecision:
    """Admit or drop one event of a key whose stored TAT is ``tat`` (None: never seen)."""
    new_tat = max(tat if tat is not None else now, now) + config.emission
    allow_at = new_tat - config.period
    if allow_at <= now:
        return RateDecision(True, new_tat, now)
    return RateDecision(False, tat, allow_at)
