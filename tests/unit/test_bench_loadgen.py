"""The open-loop sender's schedule: fixed up front, every event once, at the asked rate."""

from __future__ import annotations

import pytest

from bench.loadgen import Plan, intended, schedule


def plan(rate: float, count: int, tick: float) -> Plan:
    return Plan(port=1, rate=rate, count=count, tick=tick, start=1000.0, prefix="p")


@pytest.mark.parametrize(("rate", "count", "tick"),
                         [(1800.0, 18000, 0.005), (100.0, 300, 0.01), (33.3, 100, 0.005),
                          (5000.0, 7, 0.005)])
def test_every_event_is_in_exactly_one_batch_in_order(rate: float, count: int,
                                                      tick: float) -> None:
    batches = schedule(plan(rate, count, tick))
    firsts = [first for _, first, _ in batches]
    assert firsts == sorted(firsts)
    assert sum(n for _, _, n in batches) == count
    assert [i for _, first, n in batches for i in range(first, first + n)] == list(range(count))


def test_batches_are_due_on_the_tick_grid_and_keep_the_rate() -> None:
    batches = schedule(plan(1800.0, 18000, 0.005))
    for due, _, _ in batches:
        assert round((due - 1000.0) / 0.005, 6).is_integer()
    # 9 events per 5 ms tick: the last batch is due just before 10 s of sending.
    assert {n for _, _, n in batches} == {9}
    assert batches[-1][0] == pytest.approx(1000.0 + 9.995)


def test_a_slow_rate_leaves_ticks_empty_rather_than_sending_early() -> None:
    batches = schedule(plan(50.0, 5, 0.005))  # an event every 20 ms, ticks of 5 ms
    assert [n for _, _, n in batches] == [1] * 5
    assert [round(due - 1000.0, 6) for due, _, _ in batches] == [0.0, 0.02, 0.04, 0.06, 0.08]


def test_tick_zero_sends_each_event_alone_at_its_own_time() -> None:
    batches = schedule(plan(200.0, 4, 0.0))
    assert [(round(due - 1000.0, 6), first, n) for due, first, n in batches] == [
        (0.0, 0, 1), (0.005, 1, 1), (0.01, 2, 1), (0.015, 3, 1)]


def test_latency_is_counted_from_each_events_batch_due_time() -> None:
    p = plan(400.0, 4, 0.005)  # two events per tick
    assert intended(p) == {"p-0": 1000.0, "p-1": 1000.0, "p-2": 1000.005, "p-3": 1000.005}
