"""The order in which ready runs are leased when workers have fewer free slots than runs ready.

Rule 1: a run already started goes before every run not yet started. *Started* means leased
before (``started_at`` set): woken from a sleep, a wait or an invoke, requeued for a retry, or
after its lease was lost. Why: a run in progress holds its state, its deadlines and whoever
waits for it; finishing it first bounds the runs in flight, and a due sleep wakes on time
instead of behind every run queued before it came due (10,000 one-second sleeps woke seconds
late behind the backlog of their own new runs, issue 12).

Rule 2: started runs go in the order they came due (``available_at``); ``priority`` does not
reorder them. Priority orders *starts* ("as if queued ``p`` s earlier") and never preempts a
run in progress: a run resumed is one in progress.

Rule 3: runs not yet started go by ``available_at`` less their priority (plain
``available_at`` for functions without one), ties in arrival order (:mod:`gateway.flow.priority`).

With concurrency limits, the queues' round-robin (:func:`gateway.flow.concurrency.plan`)
chooses which queues dispatch and how many runs each; within a queue, these rules choose its
runs. Fairness across keys is unchanged.

Rows here are the claim queries' rows: ``(available_at, id, function_id, fence, attempt,
started_at, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Row = Sequence[Any]

AVAILABLE_AT, STARTED_AT = 0, 5


def lease_key(row: Row, rank: float | None = None) -> tuple[bool, float]:
    """Sort key of a ready run (smaller is leased first); ``rank`` is its ``available_at``
    less its priority, for functions that have one."""
    started = row[STARTED_AT] is not None
    return (not started, row[AVAILABLE_AT] if started or rank is None else rank)


def left_per_queue(wanted: Mapping[str, int], started: Iterable[Row],
                   queue: Callable[[Row], str]) -> dict[str, int]:
    """How many runs not yet started each queue may still give, once its ``started`` runs
    (at most ``wanted[q]`` of each queue ``q``) have taken their places."""
    left = dict(wanted)
    for row in started:
        key = queue(row)
        left[key] = left.get(key, 0) - 1
    return {key: n for key, n in left.items() if n > 0}
