"""gateway.flow.throttle: GCRA on run starts; the excess is delayed in order, never dropped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.throttle import ThrottleConfig, admit, earliest_start


def starts(config: ThrottleConfig, arrivals: list[float]) -> list[float]:
    tat: float | None = None
    out = []
    for now in arrivals:
        decision = admit(tat, now, config)
        tat = decision.tat
        out.append(decision.start_at)
    return out


def test_limit_spreads_starts_evenly() -> None:
    # Throttle(limit=3, period="1m"): one start every 20 s, the excess waits its turn.
    config = ThrottleConfig(limit=3, period=60.0)
    assert starts(config, [0.0] * 5) == [0.0, 20.0, 40.0, 60.0, 80.0]


def test_burst_starts_at_once_then_the_rate() -> None:
    config = ThrottleConfig(limit=4, period=60.0, burst=2)
    assert starts(config, [0.0] * 5) == [0.0, 0.0, 15.0, 30.0, 45.0]


def test_burst_at_a_period_boundary() -> None:
    # A full burst at 0, idle until exactly one period later: the bucket is full again, so a
    # second full burst starts at once at t=60, and the next waits one emission.
    config = ThrottleConfig(limit=2, period=60.0, burst=2)
    tat = None
    for _ in range(2):
        decision = admit(tat, 0.0, config)
        assert decision.start_at == 0.0
        tat = decision.tat
    assert earliest_start(tat, 0.0, config) == 30.0  # a third start at 0 waits one emission
    got = []
    for _ in range(3):
        decision = admit(tat, 60.0, config)
        tat = decision.tat
        got.append(decision.start_at)
    assert got == [60.0, 60.0, 90.0]


def test_a_start_just_before_the_slot_waits_for_it() -> None:
    config = ThrottleConfig(limit=1, period=10.0)
    first = admit(None, 0.0, config)
    assert admit(first.tat, 9.999, config).start_at == 10.0
    assert admit(first.tat, 10.0, config).start_at == 10.0


def test_idle_time_is_not_banked_beyond_the_burst() -> None:
    config = ThrottleConfig(limit=1, period=10.0, burst=1)
    tat = admit(None, 0.0, config).tat
    # An hour idle earns one start, not 360.
    assert starts_from(tat, config, [3600.0, 3600.0]) == [3600.0, 3610.0]


def starts_from(tat: float | None, config: ThrottleConfig, arrivals: list[float]) -> list[float]:
    out = []
    for now in arrivals:
        decision = admit(tat, now, config)
        tat = decision.tat
        out.append(decision.start_at)
    return out


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        ThrottleConfig(limit=0, period=1.0)
    with pytest.raises(ValueError, match="period > 0"):
        ThrottleConfig(limit=1, period=0.0)


@given(
    limit=st.integers(1, 10), burst=st.integers(1, 5), period=st.sampled_from([1.0, 8.0, 60.0]),
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 7.0, 100.0]), min_size=1, max_size=40),
)
def test_starts_are_ordered_never_early_and_within_gcra(
        limit: int, burst: int, period: float, gaps: list[float]) -> None:
    config = ThrottleConfig(limit=limit, period=period, burst=burst)
    arrivals, now = [], 0.0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    got = starts(config, arrivals)
    assert all(s >= a for s, a in zip(got, arrivals, strict=True))  # never before arrival
    assert got == sorted(got)  # in arrival order
    # Any window [t, t + w] holds at most burst + w / emission starts.
    for i, first in enumerate(got):
        for j in range(i, len(got)):
            span = got[j] - first
            assert j - i + 1 <= burst + span / config.emission + 1e-9
