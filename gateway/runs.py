"""Run and step statuses, and the decisions the engine makes about a run's next attempt.

Rule: a run moves only along these edges, and a final status is never left::

    Queued --lease--> Running --RunCompleted--> Completed
                         |----RunFailed(final)--> Failed
                         |----RunFailed / RunSuspended / released / lost--> Queued
                         |----lost 10 times in a row--> Failed

``Sleeping``, ``Waiting``, ``Cancelled`` and ``Skipped`` join as the step API and flow control
arrive. Statuses are stored as their names, which are also the API's words.
"""

from __future__ import annotations

import enum
import math
import random

from protocol.limits import MAX_RETRY_AFTER
from protocol.messages import RunFailed, StepFailed


class RunStatus(enum.StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    SLEEPING = "Sleeping"
    WAITING = "Waiting"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    SKIPPED = "Skipped"


FINAL_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}
)


class StepStatus(enum.StrEnum):
    COMPLETED = "Completed"
    FAILED = "Failed"  # for good: the function saw StepError
    RETRYING = "Retrying"  # failed, another attempt is due at ``wake_at``
    SLEEPING = "Sleeping"  # step.sleep: done at ``wake_at``
    WAITING = "Waiting"  # step.wait_for_event: an event, or null at ``wake_at``
    INVOKING = "Invoking"  # step.invoke: the child's outcome, or a timeout at ``wake_at``
    CANCELLED = "Cancelled"  # still pending when its run ended: it never will be


#: The longest a backoff may grow, whatever the attempt.
MAX_BACKOFF = 3600.0



def backoff(attempt: int, base: float, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failed (0-based).

    Exponential (``base * 2**attempt``, capped at an hour) with jitter in [50 %, 100 %], so
    runs that failed together do not retry together.
    """
    delay: float = min(MAX_BACKOFF, base * 2.0 ** min(attempt, 30))
    return delay * (0.5 + 0.5 * rng.random())


def retry_at(
    failure: StepFailed | RunFailed, *, now: float, base: float, rng: random.Random
) -> float | None:
    """When the next attempt after ``failure`` may start; None when the failure is final."""
    if failure.final:
        return None
    # retry_after comes from the worker; a NaN would be stored as the retry time.
    if failure.retry_after is not None and not math.isnan(failure.retry_after):
        return now + min(max(failure.retry_after, 0.0), MAX_RETRY_AFTER)
    return now + backoff(failure.attempt, base, rng)
