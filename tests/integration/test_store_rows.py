"""A run's row is the same however its checkpoints were batched.

A run that ends in the batch of its last steps has its progress (results' size, steps counted,
lease losses and attempt reset) written with its end, in one write of the row; one whose end
comes in a later batch has it written before. Both must leave the same rows, column for column
(the columns the API does not show included: read from the database), on every backend.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import pytest

from gateway.store import migrations
from gateway.store.base import CheckpointWrite, SessionRelease, Store
from gateway.store.db import queries
from protocol.messages import SleepRequested
from tests.integration.test_store import (  # noqa: F401 (functions: the autouse fixture)
    T0,
    _seq,
    batch,
    checkpoint,
    claim,
    cp,
    create_runs,
    functions,
    run_completed,
    run_failed,
    slots,
    step_done,
    step_failed,
)

#: Columns that differ between any two runs by construction.
_OWN = {"id", "event_ids"}


async def rows(db_url: str, table: str, key: str, run_id: str) -> list[dict[str, Any]]:
    """Every row of ``table`` of the run, without what names the run itself."""
    sql = f"SELECT * FROM {table} WHERE {key} = $1"
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        conn.row_factory = sqlite3.Row
        try:
            found = [dict(r) for r in conn.execute(sql.replace("$1", "?"), (run_id,))]
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(db_url)
        try:
            found = [dict(r) for r in await pg.fetch(sql, run_id)]
        finally:
            await pg.close()
    drop = _OWN | {key}
    return sorted(({k: v for k, v in row.items() if k not in drop} for row in found),
                  key=lambda row: str(row.get("step_id")))


async def snapshot(db_url: str, run_id: str) -> tuple[Any, ...]:
    return (await rows(db_url, "runs", "id", run_id),
            await rows(db_url, "steps", "run_id", run_id))


async def leased_after_a_retry_and_a_loss(store: Store, count: int) -> tuple[list[str], int]:
    """``count`` runs at attempt 1 with one lease lost, leased again: what progress resets."""
    run_ids = await create_runs(store, count)
    first = (await claim(store, T0, slots(capacity=count))).leases
    await checkpoint(store, T0, *(cp(run_failed(lease.run_id, lease.fence, final=False),
                                     retry_at=T0 + 1) for lease in first))
    await claim(store, T0 + 1, slots("lost", capacity=count))
    await store.write(batch(now=T0 + 1, releases=[SessionRelease("lost", "gone", lost=True)]))
    leases = (await claim(store, T0 + 2, slots(capacity=count))).leases
    assert {lease.run_id for lease in leases} == set(run_ids)
    fences = {lease.fence for lease in leases}
    assert len(fences) == 1
    return run_ids, fences.pop()


def sleep(run_id: str, fence: int, step: str) -> SleepRequested:
    return SleepRequested(seq=next(_seq), run_id=run_id, fence=fence, step_id=step,
                          duration=60.0)


async def test_last_steps_and_end_in_one_batch_or_apart_leave_the_same_rows(store, db_url):
    (together, apart, spread), fence = await leased_after_a_retry_and_a_loss(store, 3)

    def steps(run_id: str) -> list[CheckpointWrite]:
        return [cp(step_done(run_id, fence, "a", b'"first"')),
                cp(step_failed(run_id, fence, "b"), retry_at=T0 + 9),
                cp(sleep(run_id, fence, "nap")),
                cp(step_done(run_id, fence, "b", b"[1,2,3]", attempt=1))]

    end = run_completed
    assert (await checkpoint(store, T0 + 3, *steps(together),
                             cp(end(together, fence)))).refused == {}
    assert (await checkpoint(store, T0 + 3, *steps(apart))).refused == {}
    assert (await checkpoint(store, T0 + 3, cp(end(apart, fence)))).refused == {}
    for write in steps(spread):
        assert (await checkpoint(store, T0 + 3, write)).refused == {}
    assert (await checkpoint(store, T0 + 3, cp(end(spread, fence)))).refused == {}

    expected = await snapshot(db_url, apart)
    (run,), _ = expected
    # Four steps counted: b's failure and its success each count (the cheap count, made exact
    # only at --max-steps).
    assert (run["status"], run["attempt"], run["lease_losses"], run["step_count"],
            run["state_bytes"], run["ended_at"]) == ("Completed", 0, 0, 4, 14, T0 + 3)
    assert await snapshot(db_url, together) == expected
    assert await snapshot(db_url, spread) == expected


async def test_a_failed_step_and_the_run_s_failure_in_one_batch_or_apart_agree(store, db_url):
    """A failed step resets the lease losses but not the attempt (no result was recorded)."""
    (together, apart), fence = await leased_after_a_retry_and_a_loss(store, 2)

    def failed(run_id: str) -> CheckpointWrite:
        return cp(step_failed(run_id, fence, "a", final=True))

    end = run_failed
    assert (await checkpoint(store, T0 + 3, failed(together),
                             cp(end(together, fence, final=True, attempt=1)))).refused == {}
    assert (await checkpoint(store, T0 + 3, failed(apart))).refused == {}
    assert (await checkpoint(store, T0 + 3,
                             cp(end(apart, fence, final=True, attempt=1)))).refused == {}

    expected = await snapshot(db_url, apart)
    (run,), _ = expected
    assert (run["status"], run["attempt"], run["lease_losses"], run["step_count"]) == (
        "Failed", 1, 0, 1)
    assert await snapshot(db_url, together) == expected


async def test_a_stale_end_in_the_batch_of_a_current_step_leaves_the_run_running(store):
    """Fencing is unchanged by the fold: an end under a superseded fence is refused, and the
    steps of the current lease in the same batch are still recorded."""
    (run_id,), fence = await leased_after_a_retry_and_a_loss(store, 1)
    result = await checkpoint(store, T0 + 3, cp(step_done(run_id, fence, "a")),
                              cp(run_completed(run_id, fence - 1)))
    assert list(result.refused) == [1] and "stale" in result.refused[1]
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status == "Running" and [s.id for s in run.steps] == ["a"]


#: Each SQLite query that reads a partial index of ready runs, its parameters, the index, and
#: how many of its seeks go through it (conc_queues: the first queue, the next, the count).
READY_INDEX_READERS = [
    ("ready_resumed_runs", 3, "runs_ready", 1),
    ("ready_runs", 3, "runs_ready", 1),
    ("next_ready", 2, "runs_ready", 2),
    ("ready_runs_by_priority", 3, "runs_by_priority", 1),
    ("conc_waiting", 3, "runs_cqueue", 1),
    ("conc_queues", 5, "runs_cqueue", 3),
    ("conc_heads", 4, "runs_cqueue", 1),
    ("conc_heads_by_priority", 4, "runs_cqueue", 1),
    ("run_concurrency", 2, "runs_cqueue", 1),
    ("conc_resumed_heads", 4, "runs_cqueue_resumed", 1),
]


@pytest.mark.parametrize(("name", "arguments", "index", "seeks"), READY_INDEX_READERS)
def test_the_ready_run_queries_search_the_guarded_ready_indexes(tmp_path, name, arguments,
                                                                index, seeks):
    """SQLite's partial indexes of ready runs test ``available_at IS NOT NULL`` first (cheap
    writes of leased and ended runs, migrations 0016 and 0017) and list the ready statuses as
    an OR chain (0018): the queries that read them bound ``available_at`` and hold the same
    chain, so the planner still picks them (it matches a partial index by identical terms)."""
    path = tmp_path / "plans.db"
    migrations.apply(f"sqlite:///{path}", "sqlite")
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {queries('sqlite')[name]}", [None] * arguments)
        plan = " ".join(str(row[-1]) for row in rows)
    finally:
        conn.close()
    assert plan.count(f"USING INDEX {index} ") == seeks, plan
    assert "SCAN runs" not in plan and "SCAN r " not in plan and "SCAN o " not in plan, plan
