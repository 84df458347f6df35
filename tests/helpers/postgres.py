"""Throwaway PostgreSQL databases for the tests.

The server comes from ``TETHER_TEST_PG_URL`` (default: the local server on 127.0.0.1:5432 as
user postgres); ``python3 dev.py test`` makes sure one runs. Each test session gets its own
databases, dropped at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from typing import Any

import asyncpg

SERVER = os.environ.get("TETHER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Every table of the schema, emptied between tests that share a database.
TABLES = ("apps", "functions", "events", "runs", "run_events", "steps", "waits", "gateways",
          "access_keys", "webhooks", "schedules", "cron_ticks", "flow_keys", "throttle_tat",
          "conc_cursors", "flow_windows", "step_attempts")


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def create_database(prefix: str = "tether_test") -> str:
    """Create an empty database and return its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(SERVER, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"cannot reach PostgreSQL at {SERVER} ({exc}); start one (python3 dev.py test does) "
            "or point TETHER_TEST_PG_URL at one"
        ) from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(SERVER, name)


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(SERVER, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def truncate(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        present = {r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        tables = [t for t in TABLES if t in present]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    finally:
        await conn.close()


def _run(coro: Any) -> Any:
    """Run ``coro`` to completion on a thread of its own (callers may be inside a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database_sync(prefix: str = "tether_test") -> str:
    url: str = _run(create_database(prefix))
    return url


def drop_database_sync(url: str) -> None:
    _run(drop_database(url))
