"""gateway.flow.priority: CEL seconds clamped to -600..600; order by queued_at - priority, seq."""

from __future__ import annotations

from gateway.flow.priority import MAX_PRIORITY, clamp, order_key, priority_of

EVENT = {"name": "job", "data": {"tier": "gold", "boost": 120, "huge": 10_000, "low": -9999.5,
                                 "text": "fast", "none": None}}


def test_values_are_clamped_and_truncated() -> None:
    assert MAX_PRIORITY == 600
    assert [clamp(v) for v in (0, 599.9, 600, 601, -601, -0.5, 1e300)] == [
        0, 599, 600, 600, -600, 0, 600]
    assert priority_of("event.data.boost", EVENT).seconds == 120
    assert priority_of("event.data.huge", EVENT).seconds == 600
    assert priority_of("event.data.low", EVENT).seconds == -600
    assert priority_of("event.data.tier == 'gold' ? 300 : 0", EVENT).seconds == 300
    assert priority_of(None, EVENT).seconds == 0


def test_a_failing_expression_gives_zero_and_a_reason() -> None:
    missing = priority_of("event.data.nope", EVENT)
    assert missing.seconds == 0 and missing.error is not None and "nope" in missing.error
    text = priority_of("event.data.text", EVENT)
    assert text.seconds == 0 and text.error is not None and "gave str" in text.error
    null = priority_of("event.data.none", EVENT)
    assert null.error is not None and "gave null" in null.error
    boolean = priority_of("true", EVENT)
    assert boolean.seconds == 0 and boolean.error is not None and "gave bool" in boolean.error
    broken = priority_of("event.data.(", EVENT)
    assert broken.seconds == 0 and broken.error is not None


def test_priority_jumps_ahead_of_runs_queued_up_to_that_many_seconds_earlier() -> None:
    runs = {
        "old": order_key(queued_at=100.0, priority=0, seq=1),
        "boosted": order_key(queued_at=150.0, priority=60, seq=2),  # as if queued at 90
        "late": order_key(queued_at=120.0, priority=0, seq=3),
        "demoted": order_key(queued_at=80.0, priority=-60, seq=4),  # as if queued at 140
    }
    assert sorted(runs, key=runs.__getitem__) == ["boosted", "old", "late", "demoted"]


def test_priority_ties_keep_arrival_order() -> None:
    # Same effective time (100 - 0 == 160 - 60 == 700 - 600): arrival order decides.
    keys = [order_key(700.0, 600, 9), order_key(100.0, 0, 3), order_key(160.0, 60, 5)]
    assert sorted(keys) == [(100.0, 3), (100.0, 5), (100.0, 9)]
