"""What holds a run back until a time: the ``waiting`` object's option and sentence (SPEC §4).

A pure function of the run's stored state and ``now``; flow-control holds (concurrency,
throttle...) are decided elsewhere and take precedence where they apply.
"""

from __future__ import annotations

from gateway.runs import RunStatus

#: The option of a run whose throttle reserved it a later start (stored as its ``hold_option``).
THROTTLE = "throttle"
#: Runs gathering the events of a debounce or batch window until it closes.
DEBOUNCE = "debounce"
BATCH = "batch"

_REASONS = {
    THROTTLE: "its throttle key has started its limit of runs for now: the run starts at its "
              "reserved slot then (GCRA)",
    DEBOUNCE: "its debounce window is open: the run starts then with its event(s), "
              "unless another event of the key pushes it back (never past the timeout)",
    BATCH: "its batch is open: the run starts then with the events gathered, or at once when "
           "the batch fills up",
}


def held(status: str, available_at: float | None, started_at: float | None, attempt: int,
         failed_before: bool, now: float, hold_option: str | None = None,
         ) -> tuple[str, str] | None:
    """``(option, reason)`` when the run may not start before ``available_at``, else None.

    ``delay``: queued for a delayed event (``ts`` in the future) and never started; ``retry``:
    queued again after a failure, with a backoff; ``sleep``: a ``step.sleep`` not over yet;
    ``throttle``: its start was reserved at a later slot of its key (``hold_option``, stored
    at admission); ``debounce`` / ``batch``: its window is open until then.
    """
    if available_at is None or available_at <= now:
        return None
    if status == RunStatus.QUEUED:
        if started_at is None and attempt == 0 and not failed_before:
            if hold_option in _REASONS:
                return hold_option, _REASONS[hold_option]
            return "delay", ("its event's ts lies in the future: the run starts then "
                             "(a delayed event)")
        return "retry", "an attempt failed: the next one is due then (backoff)"
    if status == RunStatus.SLEEPING:
        return "sleep", "a step.sleep is not over: the run resumes then"
    return None
