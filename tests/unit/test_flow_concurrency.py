"""gateway.flow.concurrency: limits per slot (fn or app scope), and fair round-robin across keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.concurrency import Limit, backlog_full, has_room, plan, room, slot


def test_two_limits_both_must_have_room() -> None:
    # Per-tenant limit 2 (fn scope) and a shared limit 5 for the app's key.
    limits = [Limit(2), Limit(5, scope="app")]
    assert has_room(limits, [0, 0]) and has_room(limits, [1, 4])
    assert not has_room(limits, [2, 0])  # the tenant is full
    assert not has_room(limits, [0, 5])  # the app-wide key is full
    assert room(limits, [1, 3]) == 1 and room(limits, [0, 3]) == 2 and room(limits, [3, 0]) == 0
    assert room([], []) is None and has_room([], [])


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at most 2"):
        has_room([Limit(1)] * 3, [0, 0, 0])
    with pytest.raises(ValueError, match="one running count per limit"):
        has_room([Limit(1)], [])
    with pytest.raises(ValueError, match=">= 1"):
        Limit(0)


def test_slots_by_scope() -> None:
    fn = slot(Limit(1), "k", function_id="shop/a", app_id="shop")
    app_a = slot(Limit(1, scope="app"), "k", function_id="shop/a", app_id="shop")
    app_b = slot(Limit(1, scope="app"), "k", function_id="shop/b", app_id="shop")
    assert fn == "fn:shop/a/k" and app_a == app_b == "app:shop/k"


def test_round_robin_one_per_key_per_turn() -> None:
    got = plan({"a": 10_000, "b": 2, "c": 1}, {}, None, 8)
    assert got.keys == ("a", "b", "c", "a", "b", "a", "a", "a") and got.cursor == "a"
    # The next claim resumes after the cursor.
    assert plan({"a": 5, "b": 5, "c": 5}, {}, "a", 4).keys == ("b", "c", "a", "b")
    assert plan({"a": 5, "b": 5}, {}, "zzz", 1).keys == ("a",)  # wraps round


def test_full_keys_are_passed_over() -> None:
    got = plan({"a": 10, "b": 10}, {"a": 1, "b": 0}, None, 5)
    assert got.keys == ("a",) and got.cursor == "a"
    assert plan({"a": 3}, {"a": None}, None, 5).keys == ("a", "a", "a")
    assert plan({}, {}, "a", 5) == plan({"a": 0}, {}, "a", 5)
    assert plan({"a": 1}, {}, "q", 0).keys == ()


def dispatch_until(ready: dict[str, int], cursor: str | None, target: str, limit: int) -> int:
    """Dispatch one run at a time; return how many dispatches until ``target``'s first."""
    for count in range(1, limit + 1):
        chosen = plan(ready, {}, cursor, 1)
        (key,) = chosen.keys
        cursor = chosen.cursor
        ready[key] -= 1
        if key == target:
            return count
    raise AssertionError(f"{target} not dispatched within {limit}")


@given(
    backlog=st.integers(1, 10_000),
    before=st.integers(0, 50),
    others=st.dictionaries(st.sampled_from(["a0", "c", "m", "z9"]), st.integers(1, 100),
                           max_size=4),
    cursor=st.one_of(st.none(), st.sampled_from(["", "a", "b", "c", "zz"])),
)
def test_a_newly_ready_key_starts_within_the_number_of_ready_keys(
        backlog: int, before: int, others: dict[str, int], cursor: str | None) -> None:
    """The stated bound: with any backlog of A (up to 10,000), B's first run is dispatched
    within k dispatches, k = the number of keys able to dispatch, B included."""
    ready = {"a": backlog + before, **others}
    for _ in range(before):  # A's backlog was being served before B arrived
        chosen = plan(ready, {}, cursor, 1)
        cursor = chosen.cursor
        ready[chosen.keys[0]] -= 1
    ready["b"] = 1
    k = sum(1 for n in ready.values() if n > 0)
    assert dispatch_until(ready, cursor, "b", k) <= k


@given(backlog=st.integers(1, 10_000), n=st.integers(1, 64))
def test_a_batch_claim_serves_b_in_its_first_turn(backlog: int, n: int) -> None:
    got = plan({"a": backlog, "b": 1}, {}, "a", n)
    assert "b" in got.keys[:2]
    assert len(got.keys) == min(n, backlog + 1)


@given(ready=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(0, 20)),
       room_of=st.dictionaries(st.text("abc", min_size=1, max_size=3),
                               st.one_of(st.none(), st.integers(0, 5))),
       n=st.integers(0, 100))
def test_plan_never_overdraws_and_shares_evenly(
        ready: dict[str, int], room_of: dict[str, int | None], n: int) -> None:
    got = plan(ready, room_of, None, n)
    taken = {k: got.keys.count(k) for k in set(got.keys)}
    cap = {k: c if room_of.get(k) is None else min(c, room_of[k] or 0) for k, c in ready.items()}
    assert all(taken[k] <= cap[k] for k in taken)
    assert len(got.keys) == min(n, sum(max(c, 0) for c in cap.values()))
    # Max-min fair: a key that got fewer than another was exhausted.
    for k, count in taken.items():
        for other in cap:
            had = taken.get(other, 0)
            if had < cap[other] and had < count - 1:
                raise AssertionError(f"{other} got {had}, {k} got {count}")


def test_backlog_bound() -> None:
    assert backlog_full(10**6, None) is None
    assert backlog_full(2, 3) is None
    assert backlog_full(3, 3) == "backlog full: 3 runs of this key are queued (max_queued=3)"
