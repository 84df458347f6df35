"""A run's timeline: queue delay, each step attempt, retries' backoff, sleeps, waits and child
runs as bars on one time axis (a pure function of what the store recorded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.store.base import AttemptRecord, ChildRun, RunRecord


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: ``left`` and ``width`` are percents of the run's span; ``open`` if not ended;
    ``href`` links a child run's bar to its page; ``step`` is the step it belongs to."""

    label: str
    kind: str
    status: str
    left: float
    width: float
    seconds: float
    open: bool
    href: str | None = None
    step: str | None = None


def bars(run: RunRecord, now: float, attempts: Sequence[AttemptRecord] = (),
         children: Sequence[ChildRun] = ()) -> list[Bar]:
    """The bars, from the run's queueing to its end (``now`` while it is live).

    A step that failed at least once (it has ``attempts``) shows each attempt and the backoff
    before the next; a step.invoke is followed by its child run's bar, linked.
    """
    tries: dict[str, list[AttemptRecord]] = {}
    for attempt in attempts:
        tries.setdefault(attempt.step_id, []).append(attempt)
    spawned: dict[str | None, list[ChildRun]] = {}
    for child in children:
        spawned.setdefault(child.step_id, []).append(child)
    start = run.queued_at
    ends = [run.ended_at or now, *(s.ended_at or now for s in run.steps if s.started_at),
            *(a.retry_at or a.ended_at or now for a in attempts),
            *(c.ended_at or now for c in children)]
    span = max(max(ends) - start, 1e-6)
    out: list[Bar] = []

    def bar(label: str, kind: str, status: str, begin: float, end: float | None,
            href: str | None = None, step: str | None = None) -> None:
        stop = now if end is None else end
        left = max(0.0, (begin - start) / span * 100)
        width = max(0.5, min(100 - left, (stop - begin) / span * 100))
        out.append(Bar(label, kind, status, round(left, 2), round(width, 2),
                       max(0.0, stop - begin), end is None, href, step))

    def child_bars(step_id: str | None) -> None:
        for child in spawned.pop(step_id, []):
            bar(f"↳ {child.function_id}", "child", child.status, child.queued_at,
                child.ended_at, href=f"/runs/{child.id}", step=step_id)

    if run.started_at is not None:
        bar("queued", "queue", "queued", start, run.started_at)
    for step in run.steps:
        if step.started_at is None:
            continue
        history = tries.get(step.id, [])
        if not history:
            bar(step.id, step.kind, step.status, step.started_at, step.ended_at, step=step.id)
        for i, attempt in enumerate(history):
            begin = attempt.started_at if attempt.started_at is not None else step.started_at
            bar(f"{step.id} #{attempt.attempt}", step.kind, attempt.status, begin,
                attempt.ended_at, step=step.id)
            if attempt.status == "Retrying" and attempt.ended_at is not None:
                following = history[i + 1] if i + 1 < len(history) else None
                resumed = following.started_at if following is not None else None
                bar(f"{step.id} backoff", "backoff", "backoff", attempt.ended_at,
                    resumed if resumed is not None else attempt.retry_at, step=step.id)
        child_bars(step.id)
    for step_id in list(spawned):  # children whose step is not recorded (yet)
        child_bars(step_id)
    return out
