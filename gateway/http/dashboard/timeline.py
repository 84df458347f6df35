"""A run's timeline: queue delay and each step as bars on one time axis (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.base import RunRecord


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: ``left`` and ``width`` are percents of the run's span; ``open`` if not ended."""

    label: str
    kind: str
    status: str
    left: float
    width: float
    seconds: float
    open: bool


def bars(run: RunRecord, now: float) -> list[Bar]:
    """The queue delay (queued to started) and each step with a start, from the run's queueing
    to its end (``now`` while it is live)."""
    start = run.queued_at
    ends = [run.ended_at or now, *(s.ended_at or now for s in run.steps if s.started_at)]
    span = max(max(ends) - start, 1e-6)
    out: list[Bar] = []

    def bar(label: str, kind: str, status: str, begin: float, end: float | None) -> None:
        stop = now if end is None else end
        left = max(0.0, (begin - start) / span * 100)
        width = max(0.5, min(100 - left, (stop - begin) / span * 100))
        out.append(Bar(label, kind, status, round(left, 2), round(width, 2),
                       max(0.0, stop - begin), end is None))

    if run.started_at is not None:
        bar("queued", "queue", "queued", start, run.started_at)
    for step in run.steps:
        if step.started_at is not None:
            bar(step.id, step.kind, step.status, step.started_at, step.ended_at)
    return out
