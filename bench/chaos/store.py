"""What the gateway committed, read straight from its database (SQLite file or PostgreSQL).

Read-only and outside the gateway: the checker trusts no answer of the process under test.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunRow:
    id: str
    function_id: str
    status: str
    event_ids: tuple[str, ...]
    output: Any
    parent_run_id: str | None
    parent_step_id: str | None


@dataclass(frozen=True)
class StepRow:
    run_id: str
    step_id: str
    kind: str
    status: str
    output: Any


@dataclass(frozen=True)
class Snapshot:
    runs: list[RunRow]
    steps: list[StepRow]
    sent: list[tuple[str, Any]]  # (event id, data) of the events the runs sent


def _json(raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(raw, memoryview):
        raw = bytes(raw)
    try:
        return json.loads(raw)
    except ValueError:
        return raw


RUNS = ("SELECT id, function_id, status, event_ids, output, parent_run_id, parent_step_id "
        "FROM runs")
STEPS = "SELECT run_id, step_id, kind, status, output FROM steps"
SENT = "SELECT id, payload FROM events WHERE name = 'chaos/sent'"


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` on the database at ``url`` (``sqlite:///path`` or ``postgresql://...``)."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def snapshot(url: str) -> Snapshot:
    runs = [RunRow(r[0], r[1], r[2], tuple(json.loads(r[3])), _json(r[4]), r[5], r[6])
            for r in rows(url, RUNS)]
    steps = [StepRow(r[0], r[1], r[2], r[3], _json(r[4])) for r in rows(url, STEPS)]
    sent = [(r[0], (_json(r[1]) or {}).get("data")) for r in rows(url, SENT)]
    return Snapshot(runs, steps, sent)


def integrity_check(url: str) -> str:
    """``PRAGMA integrity_check`` of a SQLite store ("ok" when clean); "n/a" for PostgreSQL."""
    if not url.startswith("sqlite:"):
        return "n/a"
    return "; ".join(str(r[0]) for r in rows(url, "PRAGMA integrity_check"))
