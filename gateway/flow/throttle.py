"""Throttle: run starts per key follow GCRA; the excess is delayed in arrival order, never dropped.

GCRA (generic cell rate algorithm) keeps one number per key, the theoretical arrival time
(TAT). With ``emission = period / limit``, a start at ``t`` conforms when
``max(TAT, t) + emission - burst * emission <= t``; a conforming start moves
``TAT = max(TAT, t) + emission``. So an idle key starts ``burst`` runs at once, then one every
``emission``; over the long run, ``limit`` per ``period``.

This is Inngest's throttle (``gcra.lua``, with its "throttle fix": the tolerance is
``burst * emission``, not ``burst * period``). Inngest requeues a throttled item and retries
it a second later; Tether instead *reserves*: :func:`admit` gives each run its start time at
admission and moves the TAT past it, so runs start in arrival order at exactly their slots
and the store need not poll.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottleConfig:
    limit: int
    period: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.limit < 1 or self.burst < 1 or not self.period > 0:
            raise ValueError(f"throttle needs limit >= 1, burst >= 1, period > 0: {self}")

    @property
    def emission(self) -> float:
        """Seconds between starts at the steady rate."""
        return self.period / self.limit


@dataclass(frozen=True)
class Admitted:
    """The run may start at ``start_at``; the key's TAT becomes ``tat``."""

    start_at: float
    tat: float


def earliest_start(tat: float | None, now: float, config: ThrottleConfig) -> float:
    """When the next start of a key whose TAT is ``tat`` (None: never started) may happen."""
    if tat is None:
        return now
    return max(now, tat + config.emission - config.burst * config.emission)


def admit(tat: float | None, now: float, config: ThrottleConfig) -> Admitted:
    """Reserve the next start of the key: when it may happen, and the TAT to store."""
    start = earliest_start(tat, now, config)
    base = start if tat is None else max(tat, start)
    return Admitted(start_at=start, tat=base + config.emission)
