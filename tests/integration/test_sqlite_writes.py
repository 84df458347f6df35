"""SQLite's writer writes a batch's rows its own ways, with the rows a plain statement each
would leave: staged through a temporary table (``STAGED``), by group of runs alike
(``BY_GROUP``), and step rows with their attempts logged (no trigger, migration 0021).

Each case writes the same rows into two fresh stores, one row a statement and the writer's
way, and compares every column of every table they touch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import migrations
from gateway.store.db import queries
from gateway.store.sqlite import BY_GROUP, STAGE_FROM, STAGED, SQLiteDb

TABLES = ("events", "runs", "run_events", "steps", "step_attempts")


def _store(path: Path) -> sqlite3.Connection:
    migrations.apply(f"sqlite:///{path}", "sqlite")
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SQLiteDb, SQLiteDb]]:
    """(each row alone, the writer's way)."""
    plain, writer = _store(tmp_path / "plain.db"), _store(tmp_path / "writer.db")
    yield SQLiteDb(plain), SQLiteDb(writer, staging=True)
    plain.close()
    writer.close()


def _apply(db: SQLiteDb, name: str, rows: list[tuple[Any, ...]], *, alone: bool) -> None:
    if not db.conn.in_transaction:
        db.conn.execute("BEGIN IMMEDIATE")
    for chunk in ([[row] for row in rows] if alone else [rows]):
        coro = db.executemany(name, chunk)
        with pytest.raises(StopIteration):
            coro.send(None)


def _tables(db: SQLiteDb) -> dict[str, list[tuple[Any, ...]]]:
    return {t: db.conn.execute(f"SELECT rowid, * FROM {t} ORDER BY 1, 2, 3").fetchall()
            if t in ("events", "runs") else
            db.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in TABLES}


def _both(pair: tuple[SQLiteDb, SQLiteDb], writes: list[tuple[str, list[tuple[Any, ...]]]]
          ) -> dict[str, list[tuple[Any, ...]]]:
    plain, writer = pair
    for name, rows in writes:
        _apply(plain, name, rows, alone=True)
        _apply(writer, name, rows, alone=False)
    got = _tables(writer)
    assert got == _tables(plain)
    return got


RUNS = [f"01J{i:023d}" for i in range(1, 8)]
T = 1_700_000_000.0


def _created() -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Seven runs and their events: a child, one with slots, some leased at once, deadlines."""
    return [
        ("insert_event", [(i, f"ev-{i}", "app/go", b'{"name":"app/go","data":{}}', T + i,
                           "00-tp" if i % 2 else None) for i in range(1, 8)]),
        ("insert_run", [(RUNS[0], "app/f", T, '["ev-1"]', T, None, None, None, None, None,
                         None, None),
                        (RUNS[1], "app/f", T + 5, '["ev-2"]', T, RUNS[0], "kid", T + 60, None,
                         None, None, None),
                        (RUNS[2], "app/g", T, '["ev-3"]', T, None, None, None, "s1", "s2",
                         "q", "key"),
                        (RUNS[3], "app/f", T, '["ev-4","ev-5"]', T, None, None, None, None,
                         None, None, None)]),
        ("insert_leased_run", [(RUNS[4], "app/f", "Running", '["ev-5"]', T, None, "sess", T),
                               (RUNS[5], "app/f", "Running", '["ev-6"]', T, T + 9, "sess", T),
                               (RUNS[6], "app/g", "Running", '["ev-7"]', T, None, "s2", T)]),
        ("insert_run_event", [(r, 0, i) for i, r in enumerate(RUNS, 1)]),
    ]


def test_each_staged_write_has_a_query_and_a_twin():
    sql = queries("sqlite")
    for name in STAGED:
        assert name in sql and f"{name}_staged" in sql
    for name, (group, _) in BY_GROUP.items():
        assert name in sql and group in sql


def test_runs_and_events_staged_are_the_rows_written_one_by_one(pair):
    assert min(len(rows) for _, rows in _created()) >= STAGE_FROM
    got = _both(pair, _created())
    assert [row[1] for row in got["runs"]] == RUNS  # rowids in the order written


def test_leases_and_ends_by_the_writer_are_the_rows_written_one_by_one(pair):
    writes = _created()
    writes += [
        ("lease_run", [("s-a", T + 1, RUNS[0], "Running"), ("s-b", T + 1, RUNS[1], "Running"),
                       ("s-a", T + 1, RUNS[2], "Running"), ("s-a", T + 1, RUNS[3], "Running")]),
        ("finish_run", [("Completed", b'"out"', None, T + 2, RUNS[0], 6, 3, 1),
                        ("Failed", None, '{"name":"E"}', T + 2, RUNS[1], 0, 0, 0),
                        ("Completed", b"null", None, T + 2, RUNS[2], 0, 2, 1),
                        ("Completed", b"1", None, T + 2, RUNS[4], 4, 1, 1)]),
    ]
    got = _both(pair, writes)
    assert {row[3] for row in got["runs"]} == {"Completed", "Failed", "Running"}


def test_a_run_ended_twice_in_a_batch_is_written_twice_as_one_by_one(pair):
    # Never sent by the transaction (a run ends once), but the writer must not fold the two.
    writes = [*_created(), ("finish_run", [
        ("Completed", b"1", None, T + 2, RUNS[4], 4, 1, 1),
        ("Completed", b"2", None, T + 3, RUNS[4], 5, 1, 1),
        ("Completed", b"3", None, T + 3, RUNS[5], 1, 1, 1)])]
    _both(pair, writes)


def test_steps_and_their_attempts_are_those_written_one_by_one(pair):
    a, b = RUNS[4], RUNS[5]
    writes = [*_created(), ("upsert_step", [
        (a, "one", "run", "Completed", 1, b"1", None, None, T, T + 1),
        (a, "two", "run", "Retrying", 1, None, '{"name":"E"}', T + 9, T, T + 1),
        (b, "one", "run", "Completed", 1, b"1", None, None, T, T + 1),
        (a, "two", "run", "Retrying", 2, None, '{"name":"E"}', T + 19, T + 9, T + 10),
        (a, "two", "run", "Completed", 3, b"2", None, None, T + 19, T + 20),
        (a, "two", "run", "Retrying", 2, None, '{"name":"E"}', T + 19, T + 9, T + 10),
        (b, "two", "run", "Failed", 1, None, '{"name":"E"}', None, T, T + 1),
        (b, "two", "run", "Failed", 1, None, '{"name":"E"}', None, T, T + 1),
        (a, "three", "run", "Completed", 1, b"3", None, None, T, T + 1)])]
    got = _both(pair, writes)
    assert [(r[1], r[2], r[3]) for r in got["step_attempts"]] == [
        ("two", 1, "Retrying"), ("two", 2, "Retrying"), ("two", 3, "Completed"),
        ("two", 1, "Failed")]
