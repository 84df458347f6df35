"""On SQLite, every named query that reads ``runs`` seeks an index, on a store with many runs.

A run row is written three times on the hot path (inserted Queued, leased Running, ended), and
each write opens every index of ``runs`` and changes each one keyed on what it changes, so
``runs`` keeps few indexes (migration 0019: no ``runs_by_function``, no ``runs_by_session``;
``runs_by_status`` holds the session). What each index is for is read here from the plans:
each query's ``EXPLAIN QUERY PLAN`` on a seeded store, without statistics (as the gateway
leaves a store) and after ``ANALYZE``. No query walks the table; each list, count and hot read
searches its index (so dropping one it relies on fails); each index of ``runs`` is in some
query's plan. The rewritten readers give the rows a plain query of the same table gives.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yoyo import get_backend, read_migrations

from gateway.runs import RunStatus
from gateway.store import migrations
from gateway.store.db import queries
from gateway.store.sqlite import create_staging

RUNS = 20_000
FUNCTIONS = 10

#: Runs per 100 in each status: mostly ended, a backlog, some leased.
SHARES = [("Completed", 80), ("Queued", 8), ("Running", 4), ("Failed", 2), ("Sleeping", 2),
          ("Waiting", 2), ("Cancelled", 1), ("Skipped", 1)]

_SEED = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {runs}),
s(n, status) AS (SELECT n, CASE {cases} END FROM g)
INSERT INTO runs (id, function_id, status, fence, session_id, available_at, event_ids,
                  queued_at, started_at, ended_at, parent_run_id, deadline_at, singleton_key,
                  priority, arrival, slot1, slot2, cqueue, conc_key, hold_option, hold_key)
SELECT printf('01J%023d', n), 'app/f' || (n % {functions}), status, 1,
       CASE WHEN status = 'Running' THEN 'session-' || (n % 3) END,
       CASE WHEN status IN ('Queued', 'Sleeping', 'Waiting') THEN 1000.0 + n END, '[]',
       1000.0 + n, CASE WHEN status <> 'Queued' THEN 1000.5 + n END,
       CASE WHEN status IN ('Completed', 'Failed', 'Cancelled', 'Skipped') THEN 1001.0 + n END,
       CASE WHEN n % 50 = 0 THEN printf('01J%023d', n - 1) END,
       CASE WHEN status = 'Running' AND n % 2 = 0 THEN 5000.0 + n END,
       CASE WHEN n % 40 = 0 THEN 'single-' || (n % 7) END,
       n % 3, 1000.0 + n,
       CASE WHEN n % 4 = 0 THEN 'slot-' || (n % 9) END,
       CASE WHEN n % 8 = 0 THEN 'slot-' || (n % 5) END,
       CASE WHEN n % 4 = 0 THEN 'queue-' || (n % 9) END,
       CASE WHEN n % 4 = 0 THEN 'key-' || (n % 9) END,
       CASE WHEN n % 6 = 0 THEN 'throttle' END, CASE WHEN n % 6 = 0 THEN 'k-' || (n % 11) END
FROM s;
"""


def seed(conn: sqlite3.Connection, runs: int = RUNS) -> None:
    """``runs`` runs of FUNCTIONS functions, in SHARES, some with every optional key."""
    cases, upto = [], 0
    for status, share in SHARES:
        upto += share
        cases.append(f"WHEN n % 100 < {upto} THEN '{status}'")
    assert upto == 100 and {s for s, _ in SHARES} == {s.value for s in RunStatus}
    conn.executescript(_SEED.format(runs=runs, functions=FUNCTIONS, cases=" ".join(cases)))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "runs.db"
    migrations.apply(f"sqlite:///{path}", "sqlite")
    conn = sqlite3.connect(path)
    seed(conn)
    conn.commit()
    conn.close()
    return path


@pytest.fixture(params=["no statistics", "analyzed"])
def conn(request: pytest.FixtureRequest, seeded: Path,
         tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A copy of the seeded store, as the gateway leaves it or after ``ANALYZE``."""
    source = sqlite3.connect(seeded)
    # No statement cache: a cached EXPLAIN is not prepared again after a DROP INDEX.
    copy = sqlite3.connect(tmp_path / "copy.db", cached_statements=0)
    source.backup(copy)
    source.close()
    if request.param == "analyzed":
        copy.execute("ANALYZE")
    create_staging(copy)  # the writer's staged writes read its temporary tables
    yield copy
    copy.close()


def _analyzed(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone())


#: Without statistics SQLite reads slots_running's leased runs through runs_by_status (one seek
#: of 'Running'; as on main before 0019): the slot indexes serve it only after ANALYZE.
UNUSED_WITHOUT_STATISTICS = {"runs_slot1", "runs_slot2"}


def _runs_indexes(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
        " AND sql IS NOT NULL")}


#: The status argument of the queries that take one: each status is tried.
STATUS_ARGUMENT = {"list_runs_by_status": 3, "list_runs_by_function_status": 4,
                   "scan_runs_by_status": 1, "scan_runs_by_function_status": 2}

#: Queries that read every entry of an index of runs, and which: status_counts counts every
#: run (from the compact covering index, not the rows).
WHOLE_INDEX = {
    "status_counts": "runs_by_function_status",
    # /metrics' ready runs per function (common.sql). With statistics SQLite walks
    # runs_by_function_status, in function order, rather than sort the ready runs by function:
    # as on main before migration 0019 (docs/performance.md, "What remains").
    "queue_depths": "runs_by_function_status",
}

#: Aliases the queries give runs.
_RUNS = r"(?:runs|r|o|h)"
_SCAN = re.compile(rf"SCAN {_RUNS}(?: USING (?:COVERING )?INDEX (\w+))?$")


def _arguments(name: str, sql: str, status: str | None) -> list[Any]:
    count = max([int(n) for n in re.findall(r"\?(\d+)", sql)] or [0])
    args: list[Any] = ["app/f1"] * count
    if status is not None:
        args[STATUS_ARGUMENT[name] - 1] = status
    return args


def _cases() -> list[tuple[str, str | None]]:
    cases: list[tuple[str, str | None]] = []
    for name, sql in sorted(queries("sqlite").items()):
        if not re.search(r"\bruns\b", sql):
            continue
        if name in STATUS_ARGUMENT:
            cases += [(name, s.value) for s in RunStatus]
        else:
            cases.append((name, None))
    return cases


def plan_of(conn: sqlite3.Connection, name: str, status: str | None) -> list[str]:
    sql = queries("sqlite")[name]
    return [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                 _arguments(name, sql, status))]


def _plan_or_error(conn: sqlite3.Connection, case: tuple[str, str | None]) -> list[str]:
    try:
        return plan_of(conn, *case)
    except sqlite3.OperationalError as error:  # INDEXED BY an index that is gone
        return [str(error)]


def walks(name: str, plan: list[str]) -> list[str]:
    """The lines of ``plan`` that read all of runs (or all of an index not meant for it)."""
    bad = []
    for line in plan:
        found = _SCAN.search(line)
        if found and found.group(1) != WHOLE_INDEX.get(name):
            bad.append(line)
    return bad


@pytest.mark.parametrize(("name", "status"), _cases())
def test_each_query_of_runs_seeks_an_index(conn, name, status):
    sql = queries("sqlite")[name]
    if not sql.strip():
        return  # nothing is run (one writer owns a SQLite file)
    plan = plan_of(conn, name, status)
    assert not walks(name, plan), plan


#: The readers of the lists and counts (the dashboard's and the HTTP API's) and the hot path,
#: and the index each searches.
READERS = [
    ("list_runs_by_status", "Completed", "runs_by_status"),
    ("list_runs_by_status", "Queued", "runs_by_status"),
    ("list_runs_by_status", "Running", "runs_by_status"),
    ("scan_runs_by_status", "Failed", "runs_by_status"),
    ("scan_runs_by_status", "Running", "runs_by_status"),
    ("list_runs_by_function", None, "runs_by_function_status"),
    ("scan_runs_by_function", None, "runs_by_function_status"),
    ("list_runs_by_function_status", "Running", "runs_by_function_status"),
    ("scan_runs_by_function_status", "Completed", "runs_by_function_status"),
    ("status_counts_of_function", None, "runs_by_function_status"),
    ("live_counts", None, "runs_by_status"),
    ("ended_counts_since", None, "runs_by_status"),
    ("session_runs", None, "runs_by_status"),
    ("recover_leases", None, "runs_by_status"),
    ("ready_runs", None, "runs_ready"),
    ("ready_runs_by_priority", None, "runs_by_priority"),
    ("conc_heads", None, "runs_cqueue"),
    ("conc_resumed_heads", None, "runs_cqueue_resumed"),
    ("slots_running", None, "runs_slot1"),
    ("slots_running", None, "runs_slot2"),
    ("due_deadlines", None, "runs_deadline"),
    ("live_children", None, "runs_by_parent"),
    ("singleton_live_run", None, "runs_singleton"),
    ("flow_key_counts", None, "runs_by_flow_key"),
]


@pytest.mark.parametrize(("name", "status", "index"), READERS)
def test_the_lists_counts_and_hot_reads_use_their_index(conn, name, status, index):
    if index in UNUSED_WITHOUT_STATISTICS and not _analyzed(conn):
        index = "runs_by_status"
    plan = " ".join(plan_of(conn, name, status))
    assert re.search(rf"INDEX {index}\b", plan), plan


def test_each_index_of_runs_is_read_by_some_query(conn):
    """Each index of runs is in some query's plan (dropped, that plan changes): none is upkeep
    for nothing. The plan tests above fail when one a list or a hot read relies on goes."""
    cases = [(name, status) for name, status in _cases() if queries("sqlite")[name].strip()]
    before = {case: plan_of(conn, *case) for case in cases}
    needed = _runs_indexes(conn) - (set() if _analyzed(conn) else UNUSED_WITHOUT_STATISTICS)
    for index in sorted(needed):
        conn.execute("SAVEPOINT drop_one")
        conn.execute(f"DROP INDEX {index}")
        changed = [case for case in cases if _plan_or_error(conn, case) != before[case]]
        conn.execute("ROLLBACK TO drop_one")
        conn.execute("RELEASE drop_one")
        assert changed, f"no query reads {index}"


def test_runs_keeps_its_indexes_few(conn):
    """Each index of runs is upkeep on the hot path: this list changes only with a measured
    reason (docs/performance.md)."""
    assert _runs_indexes(conn) == {
        "runs_ready", "runs_deadline", "runs_by_parent", "runs_singleton", "runs_by_priority",
        "runs_cqueue", "runs_cqueue_resumed", "runs_slot1", "runs_slot2",
        "runs_by_function_status", "runs_by_status", "runs_by_flow_key"}


def _plain(conn: sqlite3.Connection, where: str, args: list[Any], limit: int) -> list[str]:
    return [row[0] for row in conn.execute(
        f"SELECT id FROM runs NOT INDEXED WHERE {where} ORDER BY id DESC LIMIT {limit}", args)]


@pytest.mark.parametrize("cursor", ["Z" * 27, "01J00000000000000000015000", "01J0000"])
@pytest.mark.parametrize("function_id", ["app/f3", "app/none"])
def test_the_lists_through_other_indexes_give_the_plain_rows(conn, cursor, function_id):
    q = queries("sqlite")
    for limit in (1, 25, 300):
        got = [row[0] for row in conn.execute(q["list_runs_by_function"],
                                              [cursor, limit, function_id])]
        assert got == _plain(conn, "function_id = ? AND id < ?", [function_id, cursor], limit)
        got = [row[0] for row in conn.execute(q["scan_runs_by_function"],
                                              [function_id, "01J0000", cursor, limit])]
        assert got == _plain(conn, "function_id = ? AND id >= ? AND id < ?",
                             [function_id, "01J0000", cursor], limit)
        for status in RunStatus:
            got = [row[0] for row in conn.execute(q["list_runs_by_status"],
                                                  [cursor, limit, status.value])]
            assert got == _plain(conn, "status = ? AND id < ?", [status.value, cursor], limit)
            got = [row[0] for row in conn.execute(q["scan_runs_by_status"],
                                                  [status.value, "01J0000", cursor, limit])]
            assert got == _plain(conn, "status = ? AND id >= ? AND id < ?",
                                 [status.value, "01J0000", cursor], limit)


def test_the_counts_and_a_session_s_runs_give_the_plain_rows(conn):
    q = queries("sqlite")
    live = sorted(conn.execute(q["live_counts"]))
    assert live == sorted(conn.execute(
        "SELECT function_id, status, COUNT(*) FROM runs NOT INDEXED WHERE status IN"
        " ('Queued', 'Running', 'Sleeping', 'Waiting') GROUP BY function_id, status"))
    assert {status for _, status, _ in live} == {"Queued", "Running", "Sleeping", "Waiting"}
    since = "01J00000000000000000012000"
    ended = sorted(conn.execute(q["ended_counts_since"], [since]))
    assert ended and ended == sorted(conn.execute(
        "SELECT function_id, status, COUNT(*) FROM runs NOT INDEXED WHERE status IN"
        " ('Completed', 'Failed', 'Cancelled', 'Skipped') AND id >= ?"
        " GROUP BY function_id, status", [since]))
    for session in ("session-1", "session-9"):
        assert sorted(conn.execute(q["session_runs"], [session])) == sorted(conn.execute(
            "SELECT id, function_id, lease_losses FROM runs NOT INDEXED"
            " WHERE session_id = ? AND status = 'Running'", [session]))


def test_the_migration_applies_to_a_store_with_runs(tmp_path):
    """A store made before 0019, with runs in every status, migrates; its indexes then hold
    what the queries find (the lists agree with plain queries of the table)."""
    path = tmp_path / "old.db"
    backend = get_backend(f"sqlite:///{path}")
    every = read_migrations(str(Path(migrations.__file__).parent / "sqlite"))
    before = [m for m in every if m.id < "0019"]
    with backend.lock():
        backend.apply_migrations(backend.to_apply(type(every)(before)))
    conn = sqlite3.connect(path)
    seed(conn, 3000)
    conn.commit()
    assert {"runs_by_function", "runs_by_session"} <= _runs_indexes(conn)
    conn.close()

    assert "0019.runs-fewer-indexes" in migrations.apply(f"sqlite:///{path}", "sqlite")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert not {"runs_by_function", "runs_by_session"} & _runs_indexes(conn)
        q = queries("sqlite")
        for status in RunStatus:
            got = [row[0] for row in conn.execute(q["list_runs_by_status"],
                                                  ["Z" * 27, 100, status.value])]
            assert got == _plain(conn, "status = ?", [status.value], 100)
        got = [row[0] for row in conn.execute(q["list_runs_by_function"],
                                              ["Z" * 27, 100, "app/f2"])]
        assert got == _plain(conn, "function_id = ?", ["app/f2"], 100)
    finally:
        conn.close()


def test_the_migrations_of_issue_12_s_writer_apply_to_a_store_with_runs(tmp_path):
    """A store at 0020 (runs in every status; a function with a priority whose queued runs
    have no arrival, as when queued before it had one) migrates: the step_attempts triggers
    go, and runs_by_priority holds that function's ready runs not yet started, ranked."""
    path = tmp_path / "old.db"
    backend = get_backend(f"sqlite:///{path}")
    every = read_migrations(str(Path(migrations.__file__).parent / "sqlite"))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(type(every)(
            [m for m in every if m.id < "0021"])))
    conn = sqlite3.connect(path)
    seed(conn, 3000)
    conn.execute("INSERT INTO functions (id, app_id, config, active, updated_at)"
                 " VALUES ('app/f1', 'app', '{\"priority\": {\"run\": \"1\"}}', 1, 0)")
    conn.execute("INSERT INTO run_events SELECT id, 0, rowid FROM runs")
    conn.execute("UPDATE runs SET arrival = NULL WHERE function_id IN ('app/f1', 'app/f2')")
    conn.commit()
    conn.close()

    applied = migrations.apply(f"sqlite:///{path}", "sqlite")
    assert {"0021.step-attempts-by-the-writer", "0022.priority-index-of-ranked-runs"} <= set(
        applied)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'"
                            " AND tbl_name = 'steps'").fetchone() == (0,)
        q = queries("sqlite")
        got = [row[1] for row in conn.execute(q["ready_runs_by_priority"],
                                              ["app/f1", 10_000.0, 1000])]
        assert got == [row[0] for row in conn.execute(
            "SELECT id FROM runs NOT INDEXED WHERE function_id = 'app/f1'"
            " AND status IN ('Queued', 'Sleeping', 'Waiting') AND started_at IS NULL"
            " AND available_at <= 10000.0 ORDER BY available_at - priority, rowid")]
        assert got  # the seeded backlog of app/f1, ranked
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE function_id = 'app/f2'"
                            " AND arrival IS NOT NULL").fetchone() == (0,)  # no priority
    finally:
        conn.close()
