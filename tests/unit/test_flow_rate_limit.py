"""gateway.flow.rate_limit: GCRA, a bucket of ``limit`` refilled one per ``period / limit``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.rate_limit import RateLimitConfig, decide


def run(config: RateLimitConfig, arrivals: list[float]) -> list[bool]:
    tat: float | None = None
    out = []
    for now in arrivals:
        decision = decide(tat, now, config)
        tat = decision.tat
        out.append(decision.allowed)
    return out


def test_limit_at_once_then_dropped() -> None:
    config = RateLimitConfig(limit=3, period=60.0)
    assert run(config, [0.0] * 5) == [True, True, True, False, False]


def test_dropped_events_do_not_push_the_key_back() -> None:
    config = RateLimitConfig(limit=1, period=60.0)
    first = decide(None, 0.0, config)
    refused = decide(first.tat, 30.0, config)
    assert not refused.allowed and refused.tat == first.tat and refused.retry_at == 60.0
    assert decide(refused.tat, 60.0, config).allowed


def test_burst_at_a_period_boundary() -> None:
    # limit 2 per 60 s: two at 0, none just before 30 s, one at 30 s; at 90 s (a full period
    # after the last refill point) the bucket is full again: two, then a drop.
    config = RateLimitConfig(limit=2, period=60.0)
    assert run(config, [0.0, 0.0, 29.999, 30.0, 30.0, 90.0, 90.0, 90.0]) == [
        True, True, False, True, False, True, True, False]


def test_limit_one_is_exactly_one_per_period() -> None:
    config = RateLimitConfig(limit=1, period=10.0)
    assert run(config, [0.0, 9.99, 10.0, 19.99, 20.0]) == [True, False, True, False, True]


@given(limit=st.integers(1, 8),
       gaps=st.lists(st.sampled_from([0.0, 0.25, 1.0, 3.0, 13.0]), min_size=1, max_size=60))
def test_any_window_of_one_period_admits_at_most_two_limits_minus_one(
        limit: int, gaps: list[float]) -> None:
    config = RateLimitConfig(limit=limit, period=10.0)
    arrivals, now = [], 0.0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    admitted = [t for t, ok in zip(arrivals, run(config, arrivals), strict=True) if ok]
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t < start + config.period]
        assert len(in_window) <= 2 * limit - 1
        # ... and at most ``limit`` at one instant.
        assert admitted.count(start) <= limit
