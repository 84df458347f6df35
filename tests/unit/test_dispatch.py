"""gateway.dispatch.assign: which worker gets which ready run."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dispatch import assign
from gateway.store.base import WorkerSlots

F, G = "shop/f", "shop/g"


def worker(session_id: str, capacity: int, in_flight: int = 0,
           functions: tuple[str, ...] = (F,), rank: int = 0) -> WorkerSlots:
    return WorkerSlots(session_id, capacity, in_flight, frozenset(functions), rank)


def runs(n: int, function_id: str = F, prefix: str = "r") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", function_id) for i in range(n)]


def test_no_workers_no_assignments():
    assert assign([], runs(3)) == []


def test_no_runs_no_assignments():
    assert assign([worker("w1", 5)], []) == []


def test_never_more_than_free_slots():
    out = assign([worker("w1", 3, in_flight=1)], runs(5))
    assert out == [("r0", "w1"), ("r1", "w1")]


def test_full_worker_gets_nothing():
    assert assign([worker("w1", 2, in_flight=2)], runs(1)) == []


def test_only_eligible_workers_get_a_functions_runs():
    workers = [worker("wf", 10, functions=(F,)), worker("wg", 10, functions=(G,))]
    out = dict(assign(workers, [("a", F), ("b", G), ("c", F), ("d", G)]))
    assert out == {"a": "wf", "b": "wg", "c": "wf", "d": "wg"}


def test_runs_no_one_can_take_are_left_out():
    workers = [worker("w1", 1)]
    out = assign(workers, [("a", "shop/unknown"), ("b", F), ("c", F)])
    assert out == [("b", "w1")]


def test_least_loaded_first():
    # w2 is emptier by ratio (1/10 < 1/2), even though both hold one run.
    workers = [worker("w1", 2, in_flight=1), worker("w2", 10, in_flight=1)]
    assert assign(workers, runs(1)) == [("r0", "w2")]


def test_load_spreads_evenly():
    workers = [worker("w1", 10), worker("w2", 10), worker("w3", 10)]
    out = assign(workers, runs(9))
    assert Counter(w for _, w in out) == {"w1": 3, "w2": 3, "w3": 3}
    # Ties go to the earlier worker, so the first three go round-robin.
    assert [w for _, w in out[:3]] == ["w1", "w2", "w3"]


def test_load_counts_runs_assigned_in_this_call():
    workers = [worker("w1", 4, in_flight=2), worker("w2", 4)]
    out = assign(workers, runs(4))
    # w2 fills to 2/4, then they alternate from equal load.
    assert [w for _, w in out] == ["w2", "w2", "w1", "w2"]


def test_lower_rank_preferred_until_full():
    workers = [worker("old", 10, rank=1), worker("new", 2, rank=0)]
    out = assign(workers, runs(4))
    assert [w for _, w in out] == ["new", "new", "old", "old"]


def test_lower_rank_wins_over_lower_load():
    workers = [worker("old", 100, rank=1), worker("new", 2, in_flight=1, rank=0)]
    assert assign(workers, runs(1)) == [("r0", "new")]


def test_queue_order_is_respected():
    workers = [worker("w1", 2)]
    queue = [("z", F), ("a", F), ("m", F)]
    assert assign(workers, queue) == [("z", "w1"), ("a", "w1")]


def test_a_run_left_out_does_not_block_the_ones_behind_it():
    workers = [worker("wg", 1, functions=(G,))]
    assert assign(workers, [("a", F), ("b", G)]) == [("b", "wg")]


def test_input_slots_are_not_mutated():
    workers = [worker("w1", 3, in_flight=1)]
    assign(workers, runs(2))
    assert workers[0].in_flight == 1


_WORKERS = st.lists(
    st.builds(
        lambda i, cap, used, fns, rank: (cap, min(used, cap), fns, rank),
        st.integers(), st.integers(1, 6), st.integers(0, 6),
        st.frozensets(st.sampled_from([F, G, "shop/h"]), max_size=3), st.integers(0, 2),
    ),
    max_size=5,
)
_RUNS = st.lists(st.sampled_from([F, G, "shop/h", "shop/none"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_WORKERS, _RUNS)
def test_assignment_properties(worker_specs, run_functions):
    workers = [WorkerSlots(f"w{i}", cap, used, fns, rank)
               for i, (cap, used, fns, rank) in enumerate(worker_specs)]
    by_id = {w.session_id: w for w in workers}
    queue = [(f"r{i}", fn) for i, fn in enumerate(run_functions)]
    function_of = dict(queue)
    out = assign(workers, queue)

    # Never over any worker's free slots.
    given_to = Counter(session for _, session in out)
    for session, count in given_to.items():
        assert count <= by_id[session].free
    # Each run at most once, only to a worker serving its function, in queue order.
    run_ids = [run_id for run_id, _ in out]
    assert len(set(run_ids)) == len(run_ids)
    assert run_ids == [r for r, _ in queue if r in set(run_ids)]
    for run_id, session in out:
        assert function_of[run_id] in by_id[session].functions
    # A run left out had no eligible worker with a free slot left.
    for run_id, fn in queue:
        if run_id not in set(run_ids):
            assert all(given_to[w.session_id] >= w.free for w in workers if fn in w.functions)
