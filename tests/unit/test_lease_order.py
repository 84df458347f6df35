"""The leasing order's decisions (gateway.scheduler.order), pure."""

from __future__ import annotations

from gateway.scheduler.order import lease_key, left_per_queue


def row(available_at: float, started_at: float | None, queue: str = "q") -> tuple:
    return (available_at, f"r{available_at}-{queue}", "t/f", 0, 0, started_at, queue)


def test_started_runs_go_before_runs_not_started_whatever_their_times():
    new_early, woken_late = row(1.0, None), row(9.0, 0.5)
    assert sorted([new_early, woken_late], key=lease_key) == [woken_late, new_early]


def test_started_runs_go_in_the_order_they_came_due_whatever_their_rank():
    first, second = row(2.0, 0.1), row(3.0, 0.1)
    ranked = sorted([second, first], key=lambda r: lease_key(r, -600.0 if r is second else 2.0))
    assert ranked == [first, second]


def test_runs_not_started_go_by_rank_when_there_is_one():
    plain, favoured = row(1.0, None), row(5.0, None)
    ranks = {id(plain): 1.0, id(favoured): -595.0}
    assert sorted([plain, favoured], key=lambda r: lease_key(r, ranks[id(r)])) == [
        favoured, plain]


def test_each_queue_gives_fewer_new_runs_by_its_started_ones():
    started = [row(1.0, 0.0, "a"), row(2.0, 0.0, "a"), row(1.0, 0.0, "b")]
    left = left_per_queue({"a": 2, "b": 3, "c": 1}, started, queue=lambda r: r[6])
    assert left == {"b": 2, "c": 1}
