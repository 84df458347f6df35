"""gateway.flow.concurrency: slots per scope, queues of slot pairs, fair round-robin across
queues that never overdraws a slot, shared slots included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.concurrency import (
    SLOT_LENGTH,
    Limit,
    Queue,
    backlog_full,
    plan,
    queue_of,
    slot,
    slots_of,
)


def q(key: str, ready: int, limit: int | None = None, *shared: tuple[str, int]) -> Queue:
    """Queue ``key`` with ``ready`` runs, its own slot (named like it) under ``limit``
    (None: no keyed limit), and ``shared`` slots."""
    own = ((key, limit),) if limit is not None else ()
    return Queue(key, ready, own + tuple(shared))


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Limit(0)


def test_slots_by_scope() -> None:
    fn_a = slot(Limit(1), "k", function_id="shop/a", app_id="shop")
    fn_b = slot(Limit(1), "k", function_id="shop/b", app_id="shop")
    app_a = slot(Limit(1, scope="app"), "k", function_id="shop/a", app_id="shop")
    app_b = slot(Limit(1, scope="app"), "k", function_id="shop/b", app_id="shop")
    assert app_a == app_b and fn_a != fn_b and fn_a != app_a
    assert len(fn_a) == SLOT_LENGTH and set(fn_a) <= set("0123456789abcdef")
    other = slot(Limit(1), "j", function_id="shop/a", app_id="shop")
    assert slots_of(queue_of([fn_a, other])) == (fn_a, other)
    assert slots_of(queue_of([fn_a])) == (fn_a,)


def test_round_robin_one_per_key_per_turn() -> None:
    got = plan([q("a", 10_000), q("b", 2), q("c", 1)], {}, None, 8)
    assert got.keys == ("a", "b", "c", "a", "b", "a", "a", "a") and got.cursor == "a"
    # The next claim resumes after the cursor.
    assert plan([q("a", 5), q("b", 5), q("c", 5)], {}, "a", 4).keys == ("b", "c", "a", "b")
    assert plan([q("a", 5), q("b", 5)], {}, "zzz", 1).keys == ("a",)  # wraps round


def test_full_queues_are_passed_over() -> None:
    got = plan([q("a", 10, 2), q("b", 10, 1)], {"a": 1, "b": 1}, None, 5)
    assert got.keys == ("a",) and got.cursor == "a"
    assert plan([q("a", 3)], {}, None, 5).keys == ("a", "a", "a")
    assert plan([], {}, "a", 5) == plan([q("a", 0)], {}, "a", 5) == plan([q("a", 1)], {}, "a", 0)


def test_a_shared_slot_is_never_overdrawn() -> None:
    # Concurrency(3) for the function and Concurrency(1, key=tenant): five tenants ready.
    fn = ("fn", 3)
    got = plan([q(t, 5, 1, fn) for t in "abcde"], {"fn": 1}, None, 10)
    assert got.keys == ("a", "b")  # the function's slot had room for 2 more
    # An app-scoped slot shared with another function's runs (counted in ``used``).
    assert plan([q("a", 5, None, ("app", 2))], {"app": 2}, None, 3).keys == ()


def dispatch_until(ready: dict[str, int], cursor: str | None, target: str, limit: int) -> int:
    """Dispatch one run at a time; return how many dispatches until ``target``'s first."""
    for count in range(1, limit + 1):
        chosen = plan([q(k, n) for k, n in ready.items()], {}, cursor, 1)
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
        chosen = plan([q(k, n) for k, n in ready.items()], {}, cursor, 1)
        cursor = chosen.cursor
        ready[chosen.keys[0]] -= 1
    ready["b"] = 1
    k = sum(1 for n in ready.values() if n > 0)
    assert dispatch_until(ready, cursor, "b", k) <= k


@given(backlog=st.integers(1, 10_000), n=st.integers(1, 64))
def test_a_batch_claim_serves_b_in_its_first_turn(backlog: int, n: int) -> None:
    got = plan([q("a", backlog), q("b", 1)], {}, "a", n)
    assert "b" in got.keys[:2]
    assert len(got.keys) == min(n, backlog + 1)


@given(ready=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(0, 20)),
       limits=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(1, 5)),
       running=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(0, 5)),
       shared=st.one_of(st.none(), st.integers(1, 30)),
       n=st.integers(0, 100))
def test_plan_never_overdraws_and_shares_evenly(
        ready: dict[str, int], limits: dict[str, int], running: dict[str, int],
        shared: int | None, n: int) -> None:
    extra = (("shared", shared),) if shared is not None else ()
    queues = [q(k, c, limits.get(k), *extra) for k, c in ready.items()]
    used = {**running, "shared": running.get("a", 0)}
    got = plan(queues, used, None, n)
    taken = {k: got.keys.count(k) for k in set(got.keys)}
    assert len(got.keys) <= n
    for queue in queues:
        assert taken.get(queue.key, 0) <= queue.ready
        for s, limit in queue.slots:  # a slot ends at most at its limit (or where it was)
            holders = sum(taken.get(o.key, 0) for o in queues if s in dict(o.slots))
            assert holders == 0 or used.get(s, 0) + holders <= limit
    # Max-min fair: a queue that got fewer than another was out of runs or of room.
    after = dict(used)
    for k, count in taken.items():
        for s in dict(next(o for o in queues if o.key == k).slots):
            after[s] = after.get(s, 0) + count
    for k, count in taken.items():
        for other in queues:
            had = taken.get(other.key, 0)
            if had < count - 1 and had < other.ready and other.has_room(after):
                raise AssertionError(f"{other.key} got {had}, {k} got {count}")


def test_backlog_bound() -> None:
    assert backlog_full(10**6, None) is None
    assert backlog_full(2, 3) is None
    assert backlog_full(3, 3) == ("backlog full: 3 runs of this concurrency key are already "
                                  "waiting (max_queued=3); this run was not queued")
