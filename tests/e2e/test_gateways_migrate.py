"""``python -m gateway migrate --db postgresql://...``: the schema on an empty database, twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateways_support import Fleet, fleet_fixture
from tests.e2e.harness import run_cli

pytestmark = pytest.mark.e2e

TABLES = {"apps", "functions", "events", "runs", "run_events", "steps", "waits", "gateways"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path / "fleet", gateways=1)


def test_migrate_creates_the_schema_on_an_empty_database_and_is_idempotent(
        fleet: Fleet) -> None:
    def tables() -> set[str]:
        return {r[0] for r in fleet.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    assert not tables() & TABLES, tables()
    runs = []
    for _ in range(2):
        done = run_cli("-m", "gateway", "migrate", "--db", fleet.db, "--log-format", "json",
                       cwd=fleet.root)
        runs.append(done)
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert tables() >= TABLES, (tables(), done.stdout, done.stderr)
    first, second = (r.stdout + r.stderr for r in runs)
    assert "migrations_applied" in first and "schema is current" not in first, first
    assert "schema is current" in second, second
    applied = fleet.sql("SELECT count(*) FROM _yoyo_migration")
    assert applied[0][0] >= 1, applied

    # A gateway starts on the migrated database (and finds nothing left to apply).
    fleet.start_gateways()
    health = fleet.clusters[0].get("/health")
    assert (health["status"], health["db"]) == ("ok", "postgres"), health
    assert fleet.sql("SELECT count(*) FROM _yoyo_migration") == applied
