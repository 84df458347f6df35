"""The named queries: written once where the backends agree, status lists from the lifecycle.

common.sql holds what both stores run as written; sqlite.sql and postgres.sql only what
truly differs, so a query is never maintained twice. Every run-status list a query filters
on is one of the sets gateway.runs derives from the lifecycle table, and no query moves a
run to a status typed by hand: the status is a parameter the store takes from gateway.runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.runs import ENDED, HOLDS_LEASE, LIVE, READY, SUSPENDED, RunStatus, StepStatus, sql_list
from gateway.store.db import _named, queries
from gateway.store.postgres import BULK

FOLDER = Path(__file__).resolve().parents[2] / "gateway" / "store" / "queries"
#: Queries only SQLite has: one gateway owns the file, so a start requeues every lease; the
#: writer logs a step's attempts where PostgreSQL has a trigger (migration 0021); a batch's
#: leases of one session are one statement (SQLiteDb's BY_GROUP; PostgreSQL's bulk_lease_run),
#: and the writes it stages are read from its temporary tables (STAGED; PostgreSQL's bulk_*).
SQLITE_ONLY = {"recover_leases", "log_step_attempt", "lease_runs", "insert_event_staged",
               "insert_run_staged", "insert_leased_run_staged", "finish_run_staged"}
#: Queries only PostgreSQL has: gateways sharing a database keep each other alive.
POSTGRES_ONLY = {"dead_gateways", "delete_gateway", "gateway_beat", "gateway_runs",
                 "gateway_workers", "notify", "peer_workers"}


def _normalised(sql: str) -> str:
    return re.sub(r"\?(\d+)", r"$\1", re.sub(r"\s+", " ", sql)).strip()


def test_both_backends_answer_the_same_names() -> None:
    lite, pg = set(queries("sqlite")), set(queries("postgres"))
    assert lite - pg == SQLITE_ONLY
    assert pg - lite == POSTGRES_ONLY | {f"bulk_{name}" for name in BULK}


def test_every_bulk_write_is_the_twin_of_a_query() -> None:
    """PgDb.executemany runs ``bulk_<name>`` for ``name``: both exist, and nothing else is
    named bulk_."""
    pg = queries("postgres")
    assert {n for n in pg if n.startswith("bulk_")} == {f"bulk_{name}" for name in BULK}
    assert all(name in pg for name in BULK)


def test_no_query_is_written_twice() -> None:
    lite = _named((FOLDER / "sqlite.sql").read_text())
    pg = _named((FOLDER / "postgres.sql").read_text())
    twins = sorted(n for n in lite.keys() & pg.keys()
                   if _normalised(lite[n]) == _normalised(pg[n]))
    assert not twins, f"the same on both backends: move {twins} to common.sql"


def test_a_name_is_common_or_per_backend_never_both(tmp_path: Path) -> None:
    common = _named((FOLDER / "common.sql").read_text())
    for backend in ("sqlite", "postgres"):
        own = _named((FOLDER / f"{backend}.sql").read_text())
        assert not common.keys() & own.keys()
    with pytest.raises(ValueError, match="defined twice"):
        _named("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_sqlite_reads_common_parameters_its_way() -> None:
    sql = queries("sqlite")["lease_run"]
    assert "?1" in sql and "$1" not in sql
    assert "$1" in queries("postgres")["lease_run"]


_LIST = re.compile(r"status\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", re.IGNORECASE)
_WORD = re.compile(r"'([A-Za-z]+)'")


def test_status_lists_are_the_lifecycle_sets() -> None:
    derived = {sql_list(s) for s in (LIVE, ENDED, READY, HOLDS_LEASE, SUSPENDED)}
    steps = {s.value for s in StepStatus}
    runs = {s.value for s in RunStatus}
    for backend in ("sqlite", "postgres"):
        for name, sql in queries(backend).items():
            for match in _LIST.finditer(sql):
                words = _WORD.findall(match.group(1))
                if set(words) <= steps and not set(words) <= runs - steps:
                    continue  # a list of step statuses
                listed = "(" + ", ".join(f"'{w}'" for w in words) + ")"
                assert listed in derived, f"{backend}.{name}: {listed} is not a derived set"


def test_no_query_moves_a_run_to_a_status_typed_by_hand() -> None:
    for backend in ("sqlite", "postgres"):
        for name, sql in queries(backend).items():
            assert not re.search(r"UPDATE runs SET status = '", sql), (
                f"{backend}.{name}: take the status from gateway.runs as a parameter")
