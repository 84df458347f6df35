"""Which worker gets which ready run. Pure: no I/O, no clock.

Rules, in order of precedence:

1. A worker is never given more runs than its free slots (capacity minus runs in flight).
2. A run goes only to a worker that serves its function.
3. Among those, a worker running the newest version of the app (lower ``rank``) wins.
4. Then the least-loaded worker (in flight / capacity) wins; ties go to the earlier worker.

Runs are taken in the order given (the queue's order); a run no eligible worker can take is
left out and stays queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.store.base import WorkerSlots


def assign(
    workers: Sequence[WorkerSlots], runs: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Return ``(run_id, session_id)`` pairs for the ``(run_id, function_id)`` runs given."""
    in_flight = {w.session_id: w.in_flight for w in workers}
    out: list[tuple[str, str]] = []
    for run_id, function_id in runs:
        best: WorkerSlots | None = None
        best_key = (0, 0.0)
        for w in workers:
            used = in_flight[w.session_id]
            if used >= w.capacity or function_id not in w.functions:
                continue
            key = (w.rank, used / w.capacity)
            if best is None or key < best_key:
                best, best_key = w, key
        if best is not None:
            in_flight[best.session_id] += 1
            out.append((run_id, best.session_id))
    return out
