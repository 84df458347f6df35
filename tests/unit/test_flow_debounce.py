"""gateway.flow.debounce: start ``period`` after the last event, capped by ``timeout``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.debounce import DebounceConfig, Window, due, on_event


def feed(config: DebounceConfig, events: list[tuple[float, str]],
         window: Window | None = None) -> tuple[list[Window], Window | None]:
    started: list[Window] = []
    for now, event_id in events:
        step = on_event(window, event_id, now, config)
        started.extend(step.start)
        window = step.pending
    return started, window


def test_each_event_pushes_the_start_back_and_the_run_gets_the_last() -> None:
    config = DebounceConfig(period=10.0)
    started, window = feed(config, [(0.0, "e1"), (5.0, "e2"), (12.0, "e3")])
    assert started == [] and window == Window(first_at=0.0, deadline=22.0, events=("e3",))
    assert not due(window, 21.999) and due(window, 22.0)


def test_reset_at_the_timeout() -> None:
    # Events every 8 s keep pushing the deadline, but the timeout caps it at 25 s after the
    # first event; the event arriving exactly at 25 s opens the next window.
    config = DebounceConfig(period=10.0, timeout=25.0)
    started, window = feed(config, [(0.0, "e1"), (8.0, "e2"), (16.0, "e3"), (24.0, "e4")])
    assert started == [] and window == Window(0.0, 25.0, ("e4",))
    started, window = feed(config, [(25.0, "e5")], window)
    assert started == [Window(0.0, 25.0, ("e4",))]
    assert window == Window(25.0, 35.0, ("e5",))


def test_an_event_just_before_the_timeout_still_joins() -> None:
    config = DebounceConfig(period=10.0, timeout=25.0)
    started, window = feed(config, [(0.0, "e1"), (9.0, "e2"), (18.0, "e3"), (24.999, "e4")])
    assert started == [] and window == Window(0.0, 25.0, ("e4",))


def test_an_event_after_the_quiet_period_opens_a_new_window() -> None:
    config = DebounceConfig(period=10.0)
    started, window = feed(config, [(0.0, "e1"), (10.0, "e2")])
    assert started == [Window(0.0, 10.0, ("e1",))] and window == Window(10.0, 20.0, ("e2",))


def test_collect_keeps_every_event_of_the_window_in_order() -> None:
    config = DebounceConfig(period=10.0, collect=True)
    started, window = feed(config, [(0.0, "a"), (1.0, "b"), (2.0, "c")])
    assert started == [] and window == Window(0.0, 12.0, ("a", "b", "c"))


def test_collect_starts_at_once_when_the_bound_is_reached() -> None:
    config = DebounceConfig(period=10.0, collect=True, max_events=3)
    started, window = feed(config, [(0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "d")])
    assert started == [Window(0.0, 2.0, ("a", "b", "c"))]
    assert window == Window(3.0, 13.0, ("d",))


def test_a_due_window_starts_before_a_full_one() -> None:
    config = DebounceConfig(period=10.0, collect=True, max_events=1)
    step = on_event(Window(0.0, 5.0, ("old",)), "new", 6.0, config)
    assert step.start == (Window(0.0, 5.0, ("old",)), Window(6.0, 6.0, ("new",)))
    assert step.pending is None


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="period > 0"):
        DebounceConfig(period=0.0)
    with pytest.raises(ValueError, match="timeout > 0"):
        DebounceConfig(period=1.0, timeout=-1.0)
    with pytest.raises(ValueError, match="max_events"):
        DebounceConfig(period=1.0, max_events=0)


@given(gaps=st.lists(st.sampled_from([0.0, 1.0, 4.0, 9.0, 10.0, 30.0]), min_size=1, max_size=40),
       timeout=st.one_of(st.none(), st.sampled_from([5.0, 25.0])),
       max_events=st.integers(1, 6))
def test_collect_loses_no_event_and_respects_the_timeout(
        gaps: list[float], timeout: float | None, max_events: int) -> None:
    config = DebounceConfig(period=10.0, timeout=timeout, collect=True, max_events=max_events)
    events, now = [], 0.0
    for i, gap in enumerate(gaps):
        now += gap
        events.append((now, f"e{i}"))
    started, window = feed(config, events)
    windows = [*started, *([window] if window is not None else [])]
    assert [e for w in windows for e in w.events] == [e for _, e in events]
    for w in windows:
        assert len(w.events) <= max_events
        assert timeout is None or w.deadline <= w.first_at + timeout
