"""Run and step statuses, the run lifecycle as data, and the decisions about a run's next attempt.

Rule 1: every move of a run's status is an edge of :data:`TRANSITIONS`; :func:`next_status`
refuses any other (:class:`IllegalTransition`), as :mod:`protocol.session` does for the socket.
A final status has no edge out: it is never left.

Rule 2: the sets the store filters on (:data:`LIVE`, :data:`ENDED`, :data:`READY`,
:data:`HOLDS_LEASE`, :data:`SUSPENDED`) are derived from the table. SQL status lists are these
sets, rendered by :func:`sql_list` (a unit test checks the ones still typed in the query files),
so a new status or edge changes them all at once.

The lifecycle::

    Queued --leased--> Running --completed--> Completed
      ^  |                |----failed / aborted / lease lost too often--> Failed
      |  |                |----suspended (sleep)--> Sleeping --woken / leased-->
      |  |                |----suspended (wait, invoke)--> Waiting --woken / leased-->
      |  |                |----failed (retry), released, lease lost,
      |  |                |    suspended (retry due)--> Queued
      |  |--skipped (flow control at admission)--> Skipped
      |  every live status --cancelled--> Cancelled, --aborted--> Failed
      +--- woken, delayed (flow control pushes ``available_at``)

Statuses are stored as their names, which are also the API's words.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable

from protocol.errors import TetherError
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


class RunEvent(enum.StrEnum):
    """What happens to a run; each moves it along one edge of :data:`TRANSITIONS`."""

    LEASED = "leased"  # a worker got the lease (a due sleeper or waiter is leased directly)
    SUSPENDED_SLEEP = "suspended_sleep"  # RunSuspended, a step.sleep pending
    SUSPENDED_WAIT = "suspended_wait"  # RunSuspended, a wait_for_event or invoke pending
    SUSPENDED_RETRY = "suspended_retry"  # RunSuspended, only a step retry (or nothing) pending
    RELEASED = "released"  # the worker handed the lease back unused (LeaseReleased)
    COMPLETED = "completed"  # RunCompleted
    FAILED_FINAL = "failed_final"  # RunFailed(final), or over a limit while leased
    FAILED_RETRY = "failed_retry"  # RunFailed, another attempt is due
    LEASE_LOST = "lease_lost"  # worker or gateway died, heartbeat missed: requeued
    LEASE_LOST_FINAL = "lease_lost_final"  # lost too many times in a row
    ABORTED = "aborted"  # the gateway gives up on the run whatever it was doing
    CANCELLED = "cancelled"  # API, cancel_on, timeouts, singleton(cancel), parent cancelled
    WOKEN = "woken"  # a sleep, wait or invoke resolved: back in the queue now
    DELAYED = "delayed"  # flow control (throttle, concurrency) pushes ``available_at`` back
    SKIPPED = "skipped"  # flow control refused the run at admission (rate limit, singleton)


class IllegalTransition(TetherError):
    """The gateway tried to move a run along an edge the lifecycle does not have: a bug."""

    code = "illegal_transition"

    def __init__(self, status: RunStatus, event: RunEvent) -> None:
        allowed = ", ".join(e.value for e in TRANSITIONS[status]) or "none: it has ended"
        super().__init__(
            f"run event {event.value!r} in status {status.value!r}; "
            f"events allowed there: {allowed}"
        )
        self.status = status
        self.event = event


_S, _E = RunStatus, RunEvent

# Edges out of every live status.
_ANY_LIVE: dict[RunEvent, RunStatus] = {_E.CANCELLED: _S.CANCELLED, _E.ABORTED: _S.FAILED}
# Edges out of the statuses a worker may be leased from.
_READY: dict[RunEvent, RunStatus] = {
    _E.LEASED: _S.RUNNING,
    _E.WOKEN: _S.QUEUED,
    _E.DELAYED: _S.QUEUED,
    **_ANY_LIVE,
}

#: The run lifecycle: for each status, the events that may happen to it and where they lead.
TRANSITIONS: dict[RunStatus, dict[RunEvent, RunStatus]] = {
    _S.QUEUED: {**_READY, _E.SKIPPED: _S.SKIPPED},
    _S.RUNNING: {
        _E.SUSPENDED_SLEEP: _S.SLEEPING,
        _E.SUSPENDED_WAIT: _S.WAITING,
        _E.SUSPENDED_RETRY: _S.QUEUED,
        _E.RELEASED: _S.QUEUED,
        _E.COMPLETED: _S.COMPLETED,
        _E.FAILED_FINAL: _S.FAILED,
        _E.FAILED_RETRY: _S.QUEUED,
        _E.LEASE_LOST: _S.QUEUED,
        _E.LEASE_LOST_FINAL: _S.FAILED,
        **_ANY_LIVE,
    },
    _S.SLEEPING: dict(_READY),
    _S.WAITING: dict(_READY),
    _S.COMPLETED: {},
    _S.FAILED: {},
    _S.CANCELLED: {},
    _S.SKIPPED: {},
}

#: The status every run is created in (a skipped run is created Queued and skipped at once).
INITIAL = RunStatus.QUEUED


def next_status(status: RunStatus | str, event: RunEvent | str) -> RunStatus:
    """The status ``event`` moves a run in ``status`` to.

    Raises:
        IllegalTransition: the lifecycle has no such edge (a final status has none at all).
    """
    status, event = RunStatus(status), RunEvent(event)
    try:
        return TRANSITIONS[status][event]
    except KeyError:
        raise IllegalTransition(status, event) from None


def edge(event: RunEvent) -> RunStatus:
    """The one status ``event`` leads to, from every status that has the edge.

    For the moves the store applies to many runs at once (a lease, a requeue), whatever
    ready or leased status each is in. Raises ValueError if the table ever makes the target
    depend on the source: then the caller must use :func:`next_status` run by run.
    """
    targets = {edges[event] for edges in TRANSITIONS.values() if event in edges}
    if len(targets) != 1:
        raise ValueError(f"run event {event.value!r} leads to {sorted(targets)}: not one status")
    return targets.pop()


def suspension(pending: Iterable[StepStatus | str]) -> RunEvent:
    """The event of a run suspending with steps in ``pending`` statuses parked.

    A pending wait or invoke makes it ``Waiting``, else a pending sleep ``Sleeping``, else (a
    retry not yet due, or nothing) it goes back to the queue.
    """
    parked = {StepStatus(s) for s in pending}
    if StepStatus.WAITING in parked or StepStatus.INVOKING in parked:
        return RunEvent.SUSPENDED_WAIT
    if StepStatus.SLEEPING in parked:
        return RunEvent.SUSPENDED_SLEEP
    return RunEvent.SUSPENDED_RETRY


def _from(event: RunEvent) -> frozenset[RunStatus]:
    return frozenset(s for s, edges in TRANSITIONS.items() if event in edges)


#: Ended for good: no edge leaves these.
ENDED = frozenset(s for s, edges in TRANSITIONS.items() if not edges)
FINAL_STATUSES = ENDED  # the older name, still imported by the store
#: Not ended: the run will still do something (and may be cancelled).
LIVE = frozenset(RunStatus) - ENDED
#: A worker may be leased a run in these (when ``available_at`` has come).
READY = _from(RunEvent.LEASED)
#: A worker holds the run's lease: these count against a concurrency limit.
HOLDS_LEASE = _from(RunEvent.LEASE_LOST)
#: Parked until a step resolves; a wake-up puts the run back in the queue.
SUSPENDED = frozenset(
    TRANSITIONS[RunStatus.RUNNING][e] for e in (RunEvent.SUSPENDED_SLEEP, RunEvent.SUSPENDED_WAIT)
)


def sql_list(statuses: frozenset[RunStatus] | set[RunStatus]) -> str:
    """``statuses`` as an SQL list literal, in declaration order: ``('Queued', 'Running')``.

    Safe to splice into a query: only :class:`RunStatus` values (plain words) are accepted.
    """
    if not statuses:
        raise ValueError("an SQL IN list needs at least one status")
    order = list(RunStatus)
    words = (f"'{RunStatus(s).value}'" for s in sorted(statuses, key=order.index))
    return "(" + ", ".join(words) + ")"


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
