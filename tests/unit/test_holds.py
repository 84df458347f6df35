"""What the ``waiting`` object says holds a run until a time (SPEC §4): delay, retry, sleep."""

from __future__ import annotations

import pytest

from gateway.scheduler.holds import held

NOW = 1_700_000_000.0


def test_a_run_of_a_delayed_event_is_held_by_delay():
    option, reason = held("Queued", NOW + 60, None, 0, False, NOW)  # type: ignore[misc]
    assert option == "delay" and "ts" in reason


def test_a_run_queued_again_after_a_failure_is_held_by_retry():
    assert held("Queued", NOW + 60, NOW - 5, 1, True, NOW)[0] == "retry"  # type: ignore[index]
    assert held("Queued", NOW + 60, None, 1, True, NOW)[0] == "retry"  # type: ignore[index]


def test_a_sleeping_run_is_held_by_sleep():
    assert held("Sleeping", NOW + 60, NOW - 5, 0, False, NOW)[0] == "sleep"  # type: ignore[index]


@pytest.mark.parametrize(("status", "available_at"), [
    ("Queued", NOW), ("Queued", NOW - 1), ("Queued", None), ("Running", NOW + 60),
    ("Completed", None), ("Waiting", NOW + 60)])
def test_nothing_holds_a_run_that_may_start_or_is_not_held_by_time(status, available_at):
    assert held(status, available_at, None, 0, False, NOW) is None


@pytest.mark.parametrize("option", ["debounce", "batch"])
def test_an_open_window_holds_its_run_until_its_deadline(option):
    found = held("Queued", NOW + 5, None, 0, False, NOW, option)
    assert found is not None and found[0] == option and option in found[1]
    assert held("Queued", NOW, None, 0, False, NOW, option) is None  # due: nothing holds it
