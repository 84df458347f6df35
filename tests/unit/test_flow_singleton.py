"""gateway.flow.singleton: skip the new run or cancel the live one."""

from __future__ import annotations

import pytest

from gateway.flow.singleton import Action, decide


def test_no_live_run_starts() -> None:
    for mode in ("skip", "cancel"):
        decision = decide(mode, None)
        assert decision.action is Action.START and decision.reason is None


def test_skip_keeps_the_live_run_and_says_why() -> None:
    decision = decide("skip", "run-1")
    assert decision.action is Action.SKIP and decision.live_run == "run-1"
    assert decision.reason == "singleton: run run-1 of the same key is still live"


def test_cancel_replaces_the_live_run() -> None:
    decision = decide("cancel", "run-1")
    assert decision.action is Action.CANCEL_AND_START and decision.live_run == "run-1"
    assert decision.reason is None


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'queue'.*'skip' or 'cancel'"):
        decide("queue", "run-1")  # type: ignore[arg-type]
