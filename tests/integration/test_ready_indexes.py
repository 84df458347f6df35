"""SQLite's partial indexes of ready runs list exactly the lifecycle's ready statuses.

The indexes (migration 0018) and the queries that read them write the ready set as an OR chain,
not as ``gateway.runs.READY`` rendered by ``sql_list``: SQLite codes an IN list as a temporary
b-tree at every write of a run row, and uses a partial index only for a query holding the
identical expression. So the chain is typed by hand in two places; these tests derive it from
the lifecycle table, so a new ready status cannot be forgotten in one index or one query.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from gateway.runs import READY, RunStatus
from gateway.store import migrations
from gateway.store.db import queries

#: The partial indexes of ready runs, and the guard each tests before the status chain.
READY_INDEXES = {
    "runs_ready": "available_at IS NOT NULL",
    "runs_by_priority": "arrival IS NOT NULL AND available_at IS NOT NULL",
    "runs_cqueue": "cqueue IS NOT NULL",
    "runs_cqueue_resumed": "cqueue IS NOT NULL AND available_at IS NOT NULL",
}

_CHAIN = re.compile(r"\(((?:[a-z]+\.)?status = '[A-Za-z]+'(?: OR (?:[a-z]+\.)?status = "
                    r"'[A-Za-z]+')+)\)")
_WORD = re.compile(r"'([A-Za-z]+)'")


def ready_chain(prefix: str = "") -> str:
    """READY as the OR chain the indexes and their queries hold, in declaration order."""
    ordered = [s for s in RunStatus if s in READY]
    return "(" + " OR ".join(f"{prefix}status = '{s.value}'" for s in ordered) + ")"


@pytest.fixture(scope="module")
def index_sql(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path: Path = tmp_path_factory.mktemp("indexes") / "ready.db"
    migrations.apply(f"sqlite:///{path}", "sqlite")
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
    finally:
        conn.close()
    return {name: " ".join(sql.split()) for name, sql in rows if sql}


@pytest.mark.parametrize("name", sorted(READY_INDEXES))
def test_each_ready_index_lists_the_lifecycle_ready_statuses(index_sql, name):
    where = index_sql[name].partition(" WHERE ")[2]
    assert where.startswith(READY_INDEXES[name] + " AND "), (
        f"{name}: test the cheap guard first, or every lease and ending pays the chain: {where}")
    chains = _CHAIN.findall(where)
    assert len(chains) == 1, where
    assert {RunStatus(w) for w in _WORD.findall(chains[0])} == READY
    assert f"({chains[0]})" == ready_chain(), f"{name}: write the chain as the queries do"
    assert " IN (" not in where, f"{name}: an IN list costs every write of a run row"


def test_every_ready_chain_of_the_sqlite_queries_is_the_indexes_chain():
    """A query finds its partial index only by the identical chain: the queries' chains are
    the lifecycle's ready set, written as in the indexes (an alias aside)."""
    found = 0
    for name, sql in queries("sqlite").items():
        text = " ".join(sql.split())
        for chain in _CHAIN.findall(text):
            alias = chain.partition("status")[0]  # "o." in run_concurrency
            assert f"({chain})" == ready_chain(alias), f"sqlite.{name}: ({chain})"
            found += 1
    assert found >= 10
