"""gateway.runs: the run lifecycle table, next_status and the status sets derived from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.runs import (
    ENDED,
    FINAL_STATUSES,
    HOLDS_LEASE,
    INITIAL,
    LIVE,
    READY,
    SUSPENDED,
    TRANSITIONS,
    IllegalTransition,
    RunEvent,
    RunStatus,
    StepStatus,
    next_status,
    sql_list,
    suspension,
)

S, E = RunStatus, RunEvent

# Every legal edge, written out by hand from the lifecycle in the module docstring.
LEGAL = {
    (S.QUEUED, E.LEASED): S.RUNNING,
    (S.QUEUED, E.WOKEN): S.QUEUED,
    (S.QUEUED, E.DELAYED): S.QUEUED,
    (S.QUEUED, E.SKIPPED): S.SKIPPED,
    (S.QUEUED, E.CANCELLED): S.CANCELLED,
    (S.QUEUED, E.ABORTED): S.FAILED,
    (S.RUNNING, E.SUSPENDED_SLEEP): S.SLEEPING,
    (S.RUNNING, E.SUSPENDED_WAIT): S.WAITING,
    (S.RUNNING, E.SUSPENDED_RETRY): S.QUEUED,
    (S.RUNNING, E.RELEASED): S.QUEUED,
    (S.RUNNING, E.COMPLETED): S.COMPLETED,
    (S.RUNNING, E.FAILED_FINAL): S.FAILED,
    (S.RUNNING, E.FAILED_RETRY): S.QUEUED,
    (S.RUNNING, E.LEASE_LOST): S.QUEUED,
    (S.RUNNING, E.LEASE_LOST_FINAL): S.FAILED,
    (S.RUNNING, E.CANCELLED): S.CANCELLED,
    (S.RUNNING, E.ABORTED): S.FAILED,
    **{(s, e): t for s in (S.SLEEPING, S.WAITING) for e, t in {
        E.LEASED: S.RUNNING, E.WOKEN: S.QUEUED, E.DELAYED: S.QUEUED,
        E.CANCELLED: S.CANCELLED, E.ABORTED: S.FAILED}.items()},
}


@pytest.mark.parametrize(("status", "event"), sorted(LEGAL))
def test_every_legal_transition(status: RunStatus, event: RunEvent) -> None:
    assert next_status(status, event) is LEGAL[(status, event)]
    # The stored words work too: the store reads statuses back as strings.
    assert next_status(status.value, event.value) is LEGAL[(status, event)]


ILLEGAL = [(s, e) for s in RunStatus for e in RunEvent if (s, e) not in LEGAL]


@pytest.mark.parametrize(("status", "event"), ILLEGAL)
def test_every_other_transition_is_refused(status: RunStatus, event: RunEvent) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_status(status, event)
    assert info.value.status is status and info.value.event is event
    assert repr(event.value) in info.value.message and repr(status.value) in info.value.message


def test_refusal_says_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition, match=r"'completed' in status 'Queued'.*leased"):
        next_status(S.QUEUED, E.COMPLETED)
    with pytest.raises(IllegalTransition, match="none: it has ended"):
        next_status(S.CANCELLED, E.CANCELLED)


def test_unknown_words_are_refused() -> None:
    with pytest.raises(ValueError, match="Done"):
        next_status("Done", E.LEASED)
    with pytest.raises(ValueError, match="exploded"):
        next_status(S.RUNNING, "exploded")


def test_derived_sets() -> None:
    assert ENDED == FINAL_STATUSES == {S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED}
    assert {S.QUEUED, S.RUNNING, S.SLEEPING, S.WAITING} == LIVE
    assert set(RunStatus) == LIVE | ENDED and not LIVE & ENDED
    assert {S.QUEUED, S.SLEEPING, S.WAITING} == READY
    assert {S.RUNNING} == HOLDS_LEASE
    assert {S.SLEEPING, S.WAITING} == SUSPENDED
    assert READY | HOLDS_LEASE == LIVE and not READY & HOLDS_LEASE
    assert INITIAL is S.QUEUED
    # Every live status can be cancelled; no ended one has an edge out.
    assert all(E.CANCELLED in TRANSITIONS[s] for s in LIVE)
    assert all(not TRANSITIONS[s] for s in ENDED)
    # Every status is reachable from the initial one.
    seen: set[RunStatus] = {INITIAL}
    todo: list[RunStatus] = [INITIAL]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(RunStatus)


def test_sql_lists_match_what_the_queries_type_by_hand() -> None:
    assert sql_list(ENDED) == "('Completed', 'Failed', 'Cancelled', 'Skipped')"
    assert sql_list(READY) == "('Queued', 'Sleeping', 'Waiting')"
    assert sql_list(HOLDS_LEASE) == "('Running')"
    with pytest.raises(ValueError, match="at least one"):
        sql_list(set())
    with pytest.raises(ValueError):
        sql_list({"Queued'); DROP TABLE runs; --"})  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(list(RunEvent)), max_size=60))
def test_any_event_sequence_keeps_the_lifecycle_consistent(events: list[RunEvent]) -> None:
    """From Queued, apply events (illegal ones are refused and change nothing): the run is
    always live or ended, never leaves an ended status, and holds a lease only when Running."""
    status = INITIAL
    for event in events:
        try:
            after = next_status(status, event)
        except IllegalTransition:
            assert event not in TRANSITIONS[status]
            continue
        assert status in LIVE, "an ended run moved"
        if event is E.LEASED:
            assert status in READY and after in HOLDS_LEASE
        status = after
        assert status in LIVE or status in ENDED
        assert (status in HOLDS_LEASE) == (status is S.RUNNING)
    if status in ENDED:
        assert all(e not in TRANSITIONS[status] for e in RunEvent)


def test_suspension_picks_the_status_from_what_is_parked() -> None:
    def status(*pending: StepStatus) -> RunStatus:
        return next_status(S.RUNNING, suspension(pending))

    assert status() is S.QUEUED
    assert status(StepStatus.RETRYING) is S.QUEUED
    assert status(StepStatus.SLEEPING, StepStatus.RETRYING) is S.SLEEPING
    assert status(StepStatus.SLEEPING, StepStatus.WAITING) is S.WAITING
    assert status(StepStatus.INVOKING) is S.WAITING
    assert suspension(["Sleeping"]) is E.SUSPENDED_SLEEP  # as read back from the store


_STORE = Path(__file__).parents[2] / "gateway" / "store"
_LIST = re.compile(r"([a-z_.]*)status\s+(NOT\s+)?IN\s*\(([^)]*)\)", re.IGNORECASE)
_STEP_ONLY = {s.value for s in StepStatus} - {s.value for s in RunStatus}


def test_status_lists_typed_in_sql_are_derived_sets() -> None:
    """Until the queries render them with sql_list, every run-status list typed in SQL must
    be one of the sets derived from the lifecycle (a new status or edge fails this test)."""
    derived = {"LIVE": LIVE, "ENDED": ENDED, "READY": READY, "HOLDS_LEASE": HOLDS_LEASE,
               "SUSPENDED": SUSPENDED}
    found = 0
    for path in sorted(_STORE.glob("queries/*.sql")) + sorted(_STORE.glob("migrations/*/*.sql")):
        for prefix, _, words in _LIST.findall(path.read_text()):
            statuses = {w.strip().strip("'") for w in words.split(",")}
            if prefix.startswith("steps.") or statuses & _STEP_ONLY:
                continue  # a list of step statuses
            found += 1
            assert statuses in derived.values(), (
                f"{path.name}: status list {sorted(statuses)} is none of the derived sets; "
                f"use one of gateway.runs {', '.join(derived)} (sql_list)")
    assert found >= 4
