"""On PostgreSQL, runs has no runs_by_function: what it served still works.

A lease and an end change a run's status, so neither update is HOT: each writes an entry in
every index of runs. Migration 0019 dropped runs_by_function; its readers (queries/postgres.sql)
seek runs_by_function_status once per status of the function. These tests compare each
reader's answer with a plain query of the same rows, on a table where runs of several
functions are in every status, and check that none reads the whole table.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.app import open_store
from gateway.runs import RunStatus
from gateway.store.db import queries
from gateway.store.postgres import SERVER_SETTINGS

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

FUNCTIONS = ["app/a", "app/b", "app/c", "other/d"]
STATUSES = [s.value for s in RunStatus]
RUNS = 20000
TOP = "Z" * 27


@pytest.fixture
async def conn(db_url: str) -> Any:
    store = open_store(db_url)
    await store.open()  # migrated
    await store.close()
    conn = await asyncpg.connect(db_url, server_settings=SERVER_SETTINGS)
    # Ids in queue order; each function has runs in some statuses only (app/c in one).
    await conn.execute(
        "INSERT INTO runs (id, function_id, status, event_ids, queued_at)"
        " SELECT lpad(n::text, 26, '0'), ($1::text[])[1 + n % 4],"
        " CASE WHEN n % 4 = 2 THEN 'Running' ELSE ($2::text[])[1 + (n / 4) % $3] END,"
        " '[]', n FROM generate_series(1, $4) n",
        FUNCTIONS, STATUSES, len(STATUSES), RUNS)
    await conn.execute("ANALYZE runs")
    yield conn
    await conn.close()


async def answer(conn: Any, name: str, *args: Any) -> tuple[list[tuple[Any, ...]], str]:
    sql = queries("postgres")[name]
    plan = " | ".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
    return [tuple(r) for r in await conn.fetch(sql, *args)], plan


async def test_runs_full_indexes(conn):
    """The indexes every status change writes to: the key and the two by status."""
    full = {r[0] for r in await conn.fetch(
        "SELECT indexrelid::regclass::text FROM pg_index"
        " WHERE indrelid = 'runs'::regclass AND indpred IS NULL")}
    assert full == {"runs_pkey", "runs_by_function_status", "runs_by_status"}


@pytest.mark.parametrize("function_id", [*FUNCTIONS, "app/none"])
@pytest.mark.parametrize("cursor", [TOP, "00000000000000000000010001"])
async def test_list_runs_by_function(conn, function_id, cursor):
    rows, plan = await answer(conn, "list_runs_by_function", cursor, 51, function_id)
    expected = await conn.fetch("SELECT id, status FROM runs WHERE function_id = $1 AND id < $2"
                                " ORDER BY id DESC LIMIT 51", function_id, cursor)
    assert [(r[0], r[2]) for r in rows] == [tuple(r) for r in expected]
    assert all(r[1] == function_id for r in rows)
    assert "Seq Scan on runs" not in plan, plan


@pytest.mark.parametrize("function_id", [*FUNCTIONS, "app/none"])
async def test_scan_runs_by_function(conn, function_id):
    low, high = "00000000000000000000003000", "00000000000000000000012000"
    rows, plan = await answer(conn, "scan_runs_by_function", function_id, low, high, 100)
    expected = await conn.fetch("SELECT id FROM runs WHERE function_id = $1 AND id >= $2"
                                " AND id < $3 ORDER BY id DESC LIMIT 100", function_id, low, high)
    assert [r[0] for r in rows] == [r[0] for r in expected]
    assert "Seq Scan on runs" not in plan, plan
