"""On PostgreSQL, every statement the gateway runs is planned for its parameters.

asyncpg prepares each statement once per connection; after five executions PostgreSQL may
switch it to a generic plan, chosen once from the statistics of that moment. A gateway starts
on empty tables, so those plans were sequential scans that stayed as the tables grew (commits
went from 43 to 389 ms as a database filled). The store's connections are opened with
``plan_cache_mode = force_custom_plan`` (gateway/store/postgres.py): this runs a workload
through the gateway and reads, on each of its connections, how every prepared statement was
planned (``pg_prepared_statements``, PostgreSQL 14 and later).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.app import open_store
from gateway.store.db import queries
from gateway.store.postgres import BULK, SERVER_SETTINGS, _bulk_args
from worker import App, TriggerEvent

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

#: Runs sent one at a time: many small transactions, so each statement runs well past the
#: five executions after which PostgreSQL may switch it to a generic plan.
RUNS = 40


async def plans_of_every_connection(store: Any) -> list[tuple[str, int, int]]:
    """(statement, generic plans, custom plans) of each statement with parameters prepared on
    the store's pooled connections (one without has only the generic plan: nothing to choose);
    every connection is held at once, so each is read exactly once."""
    pool = store._pool  # the store's connections: a session's statements are its own
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        found: list[tuple[str, int, int]] = []
        for conn in held:
            found += [(row[0], row[1], row[2]) for row in await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE cardinality(parameter_types) > 0")]
        return found
    finally:
        for conn in held:
            await pool.release(conn)


async def test_no_statement_of_the_gateway_uses_a_generic_plan(harness):
    app = App("plans")

    async def step(name: str) -> str:
        return name

    @app.function(trigger=TriggerEvent("go"))
    async def three(ctx):
        a = await ctx.step.run("a", step, "a")
        await ctx.step.sleep("nap", 0.01)
        b = await ctx.step.run("b", step, "b")
        return [a, b]

    await harness.start_worker([app])
    for i in range(RUNS):
        (event_id,) = await harness.send({"name": "go", "data": {"i": i}})
        run = await harness.wait_status((await harness.run_of(event_id))["id"], "Completed")
        assert run["output"] == ["a", "b"]

    plans = await plans_of_every_connection(harness.gateway.store)
    assert max(custom for _, _, custom in plans) > 5, "the workload ran no statement often"
    generic = [(" ".join(sql.split())[:80], n) for sql, n, _ in plans if n]
    assert not generic, f"statements planned generically: {generic}"


#: The bulk updates of runs (PgDb.executemany), by the query they stand for.
BULK_UPDATES = ["lease_run", "run_progressed", "add_steps", "finish_run"]


@pytest.mark.parametrize("name", BULK_UPDATES)
async def test_the_bulk_updates_of_runs_search_its_primary_key(db_url, name):
    """A batch's update of runs finds its rows through runs_pkey, not by reading the table:
    joined only to the JSON rows (a count the planner guesses), PostgreSQL hashed them and
    scanned every run, on tables of up to some 100,000 runs (queries/postgres.sql, bulk
    writes)."""
    store = open_store(db_url)
    await store.open()  # migrated
    await store.close()
    bulk, sql = BULK[name], queries("postgres")[f"bulk_{name}"]
    (key,) = bulk.key or (0,)
    rows = [tuple(f"run_{i}" if c == key else b"x" if c in bulk.binary else "0"
                  for c in range(10)) for i in range(500)]
    conn = await asyncpg.connect(db_url, server_settings=SERVER_SETTINGS)
    try:
        await conn.execute(
            "INSERT INTO runs (id, function_id, status, event_ids, queued_at)"
            " SELECT 'run_' || n, 'app/fn', 'Completed', '[]', n FROM generate_series(1, 20000) n")
        explained = await conn.fetch(f"EXPLAIN {sql}", *_bulk_args(rows, bulk.binary))
    finally:
        await conn.close()
    plan = " | ".join(row[0] for row in explained)
    assert "runs_pkey" in plan and "Seq Scan on runs" not in plan, plan


#: The reads of a list of ids on the hot path (and the API's), with arguments for 500 ids.
ROWS = 20000
LIST_READS: dict[str, Any] = {
    "recent_event_ids": lambda ids, events: (events, 0.0),
    "checkpoint_runs": lambda ids, events: (ids,),
    "runs_notes": lambda ids, events: (ids,),
    "settle_due_waits": lambda ids, events: (ids, 1e12),
    "settle_due_steps": lambda ids, events: (ids, 1e12, b"null", "x"),
    "steps_of_runs": lambda ids, events: (ids,),
    "event_payloads_of_runs": lambda ids, events: (ids,),
    "runs_steps": lambda ids, events: (ids,),
    "trace_parents_of_runs": lambda ids, events: (ids,),
    "runs_by_ids": lambda ids, events: (ids,),
    "event_run_ids": lambda ids, events: (list(range(5000, 5500)),),
}


@pytest.mark.parametrize("name", sorted(LIST_READS))
async def test_a_list_of_ids_is_read_through_an_index_without_statistics(db_url, name):
    """Given a list of 500 ids and no statistics (autovacuum has not analyzed the tables yet,
    or is off), PostgreSQL estimated that ``= ANY($1)`` matched the whole table and read it
    all, in every batch (queries/postgres.sql, at the top)."""
    store = open_store(db_url)
    await store.open()  # migrated
    await store.close()
    conn = await asyncpg.connect(db_url, server_settings=SERVER_SETTINGS)
    try:
        for sql in (
            "INSERT INTO events (seq, id, name, payload, received_at)"
            " SELECT n, 'ev-' || n, 'go', '\\x7b7d'::bytea, n FROM generate_series(1, $1) n",
            "INSERT INTO runs (id, function_id, status, event_ids, queued_at)"
            " SELECT 'run_' || n, 'app/fn', 'Completed', '[]', n FROM generate_series(1, $1) n",
            "INSERT INTO run_events (run_id, position, event_seq)"
            " SELECT 'run_' || n, 0, n FROM generate_series(1, $1) n",
            "INSERT INTO steps (run_id, step_id, kind, status, attempts)"
            " SELECT 'run_' || n, s, 'run', 'Completed', 1 FROM generate_series(1, $1) n,"
            " unnest(ARRAY['a', 'b', 'c']) s"):
            await conn.execute(sql, ROWS)
        ids = [f"run_{n}" for n in range(5000, 5500)]
        events = [f"ev-{n}" for n in range(5000, 5500)]
        sql = queries("postgres")[name]
        explained = await conn.fetch(f"EXPLAIN {sql}", *LIST_READS[name](ids, events))
    finally:
        await conn.close()
    plan = " | ".join(row[0] for row in explained)
    scanned = [t for t in ("runs", "events", "run_events", "steps") if f"Seq Scan on {t} " in plan]
    assert not scanned, plan
