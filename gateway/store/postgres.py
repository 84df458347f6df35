"""The PostgreSQL store (asyncpg): the store of several gateways sharing one database.

The same transaction logic as SQLite's runs here over ``queries/postgres.sql``. What makes
several gateways safe is PostgreSQL's, not ours: claims lock the rows they take and skip rows
another gateway holds (``FOR UPDATE SKIP LOCKED``), so no run is leased twice; checkpoints
lock the runs they change; a wait and the events that may match it take an advisory lock on
the event name, shared by event writers and exclusive for the wait, so neither misses the
other. Gateways keep each other alive through the ``gateways`` table (the leases of a gateway
that stops beating are requeued by exactly one other) and informed through ``LISTEN/NOTIFY``
(runs ready, wake-up times, leases to revoke, apps registered), so no gateway polls.

A transaction that PostgreSQL aborts for a deadlock or a serialization failure is retried from
the start; nothing of it was kept. So is a batch one of whose steps, written as new by a plain
insert, was in the table already (:class:`StepRecorded`): again with every step upserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import asyncpg
import orjson
import psycopg
import structlog

from gateway.store import migrations
from gateway.store.base import PeerNote, WriteBatch, WriteResult
from gateway.store.db import Db, Row, queries
from gateway.store.sql import SqlStore
from gateway.store.transaction import Transaction
from protocol.errors import TetherError

log = structlog.get_logger("tether.store")

T = TypeVar("T")

CHANNEL = "tether"
#: NOTIFY payloads must stay under 8000 bytes (PostgreSQL's limit), with room to spare.
NOTIFY_LIMIT = 7900
_RETRIES = 8
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError,
              asyncpg.exceptions.SerializationError)
#: Session settings of every connection the gateway opens. asyncpg prepares each statement
#: once per connection; after five executions PostgreSQL may switch a prepared statement to a
#: generic plan (one for any parameters), chosen from the statistics of that moment. A gateway
#: starts on empty tables, so those plans were sequential scans, kept while the tables grew
#: (and without autovacuum the statistics never catch up): commits grew from 43 to 389 ms as a
#: database filled (docs/performance.md, "Status lists and PostgreSQL plans"). A custom plan
#: per execution costs a little planning each time and always sees the parameters.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


class DatabaseUnreachable(TetherError):
    """The database cannot be opened at start: one line saying why and what to check."""

    code = "database_unreachable"
    http_status = 503


def unreachable(url: str, exc: BaseException) -> DatabaseUnreachable:
    where = url.split("@")[-1] if "@" in url else url  # never print a password
    why = str(exc).strip().splitlines()[0].removeprefix("connection failed: ") or repr(exc)
    name = where.rpartition("/")[2].partition("?")[0]
    hint = (f"create it first (createdb {name}, or CREATE DATABASE {name})"
            if "does not exist" in why and name else
            "check --db (TETHER_DB) and that PostgreSQL is running and reachable")
    return DatabaseUnreachable(f"cannot open the database at {where}: {why}; {hint}")


@dataclass(frozen=True, slots=True)
class Bulk:
    """How executemany() runs a write as one statement (``bulk_<name>`` in postgres.sql).

    ``key``: the positions of the columns that name the row a row changes. When a key repeats
    in the rows (a step retried, then completed, in one batch) they run one by one, in order,
    as each one's effect depends on the one before; None: any rows may go together.
    ``binary``: the positions of the bytea columns, sent as arrays beside the JSON rows.
    """

    key: tuple[int, ...] | None = None
    binary: tuple[int, ...] = ()


#: Writes executemany() runs as one statement over the batch's rows.
BULK: dict[str, Bulk] = {
    "insert_event": Bulk(binary=(3,)), "insert_run": Bulk(), "insert_leased_run": Bulk(),
    "insert_run_event": Bulk(), "insert_step": Bulk(key=(0, 1), binary=(5,)),
    "upsert_step": Bulk(key=(0, 1), binary=(5,)), "run_progressed": Bulk(key=(1,)),
    "add_steps": Bulk(key=(1,)), "finish_run": Bulk(key=(4,), binary=(1,)),
    "delete_waits": Bulk(), "lease_run": Bulk(key=(2,)),
}


#: Transactions that upsert every step after one found a step it wrote as new already there:
#: a reconnected worker resends its unacknowledged checkpoints in a burst.
UPSERTS_AFTER_CONFLICT = 64


class StepRecorded(Exception):
    """A step the transaction wrote as new (``insert_step``, a plain insert) was in the table
    already: the transaction is rolled back and applied again with every step upserted."""


@cache
def _upserting() -> dict[str, str]:
    """The queries, with ``insert_step`` answered by the upsert."""
    sql = queries("postgres")
    return {**sql, "insert_step": sql["upsert_step"],
            "bulk_insert_step": sql["bulk_upsert_step"]}


class PgDb:
    """:class:`~gateway.store.db.Db` over one asyncpg connection. ``upsert_steps``: write
    every step with the upsert, ``insert_step`` too (after a :class:`StepRecorded`)."""

    def __init__(self, conn: asyncpg.Connection, *, upsert_steps: bool = False) -> None:
        self.conn = conn
        self.sql = _upserting() if upsert_steps else queries("postgres")

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self.conn.fetch(self.sql[name], *_args(args))]

    async def fetchone(self, name: str, *args: Any) -> Row | None:
        row = await self.conn.fetchrow(self.sql[name], *_args(args))
        return None if row is None else tuple(row)

    async def fetchval(self, name: str, *args: Any) -> Any:
        return await self.conn.fetchval(self.sql[name], *_args(args))

    async def execute(self, name: str, *args: Any) -> int:
        status: str = await self.conn.execute(self.sql[name], *_args(args))
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement over arrays for the writes in :data:`BULK` (a round trip and one
        execution, whatever the rows), else asyncpg's pipelined executemany."""
        if not rows:
            return
        bulk = BULK.get(name)
        try:
            if bulk is not None and len(rows) > 1 and _distinct(rows, bulk.key):
                await self.conn.execute(self.sql[f"bulk_{name}"],
                                        *_bulk_args(rows, bulk.binary))
            elif len(rows) == 1:
                await self.conn.execute(self.sql[name], *rows[0])
            else:
                await self.conn.executemany(self.sql[name], rows)
        except asyncpg.UniqueViolationError as exc:
            if name == "insert_step":
                raise StepRecorded(str(exc)) from exc
            raise

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self.conn.transaction():  # nested in the batch's: a SAVEPOINT
            yield


def _distinct(rows: list[tuple[Any, ...]], key: tuple[int, ...] | None) -> bool:
    """Does every row target its own row (no key repeats)?"""
    if key is None:
        return True
    if len(key) == 1:
        (k,) = key
        return len({row[k] for row in rows}) == len(rows)
    return len({tuple(row[k] for k in key) for row in rows}) == len(rows)


def _bulk_args(rows: list[tuple[Any, ...]], binary: tuple[int, ...]) -> list[Any]:
    """The parameters of a ``bulk_`` statement: the rows as JSON without their bytea columns,
    then each bytea column as an array."""
    if not binary:
        return [orjson.dumps(rows).decode()]
    keep = [i for i in range(len(rows[0])) if i not in binary]
    return [orjson.dumps([[row[i] for i in keep] for row in rows]).decode(),
            *([row[i] for row in rows] for i in binary)]


def _args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(list(a) if isinstance(a, (tuple, set)) else a for a in args)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is (asyncpg still rolls back a transaction
    left open): the store keeps no session state (its locks are the transaction's, it listens
    on a connection of its own), so the reset query asyncpg would send on every release (a
    round trip per batch) has nothing to undo."""


class PostgresStore(SqlStore):
    """See :class:`gateway.store.base.Store`; ``url`` is ``postgresql://user@host/db``."""

    shared = True
    # Connection lost, server shutting down, out of resources, or a conflict to retry whole.
    store_errors = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.exceptions.OperatorInterventionError,
                    asyncpg.exceptions.InsufficientResourcesError, *_RETRYABLE, OSError,
                    MemoryError)

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        super().__init__()
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._callback: Callable[[PeerNote], None] | None = None
        self._upserts_left = 0  # transactions that still upsert every step (StepRecorded)

    async def open(self) -> None:
        """Apply pending migrations and connect.

        Raises:
            DatabaseUnreachable: the server or the database is not there.
        """
        try:
            await asyncio.to_thread(migrations.apply, migrations.yoyo_url(self.url), "postgres")
            self._pool = await asyncpg.create_pool(self.url, min_size=2,
                                                   max_size=self.pool_size, reset=_no_reset,
                                                   server_settings=SERVER_SETTINGS)
        except (OSError, psycopg.OperationalError, asyncpg.PostgresError) as exc:
            raise unreachable(self.url, exc) from exc

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _transaction(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        pool = self._pool
        assert pool is not None, "store is not open"
        for attempt in range(_RETRIES):
            upsert = self._upserts_left > 0
            if upsert:
                self._upserts_left -= 1
            try:
                async with pool.acquire() as conn, conn.transaction():
                    return await fn(PgDb(conn, upsert_steps=upsert))
            except StepRecorded:
                if upsert or attempt == _RETRIES - 1:  # upserting, it cannot be raised
                    raise
                self._upserts_left = UPSERTS_AFTER_CONFLICT
                log.info("transaction_retried", reason="StepRecorded", attempt=attempt + 1)
                continue
            except _RETRYABLE as exc:
                if attempt == _RETRIES - 1:
                    raise
                log.info("transaction_retried", reason=type(exc).__name__, attempt=attempt + 1)
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        pool = self._pool
        assert pool is not None, "store is not open"
        async with pool.acquire() as conn:
            return await fn(PgDb(conn))

    async def recover(self, *, now: float, grace: float = 0.0) -> int:
        # Leases of gateways that died are requeued by keepalive(), once they are overdue.
        return 0

    # --- gateways keeping each other alive and informed ----------------------------------

    async def keepalive(self, gateway_id: str, *, now: float, ttl: float) -> set[str]:
        await self._keep_listening()

        async def beat(db: Db) -> set[str]:
            await db.execute("gateway_beat", gateway_id, now)
            touched: set[str] = set()
            for (dead,) in await db.fetch("dead_gateways", now - ttl, gateway_id):
                txn = Transaction(db, WriteBatch(now=now), self._config)
                rows = await db.fetch("gateway_runs", f"{dead}.", f"{dead}/")
                await txn.release_runs(rows, f"gateway {dead} stopped responding", lost=True)
                await db.execute("delete_gateway", dead)
                log.warning("gateway_presumed_dead", gateway_id=dead, leases_requeued=len(rows))
                touched |= txn.touched
            if touched:
                await self._notify(db, {"functions": sorted(touched)})
            return touched

        return await self._transaction(beat)

    async def publish_workers(self, gateway_id: str, workers: str) -> None:
        await self._transaction(lambda db: db.execute("gateway_workers", gateway_id, workers))

    async def peer_workers(self, gateway_id: str, *, since: float) -> list[tuple[str, float, str]]:
        async def read(db: Db) -> list[tuple[str, float, str]]:
            return [(r[0], r[1], r[2]) for r in await db.fetch("peer_workers", gateway_id, since)]

        return await self._read(read)

    async def leave(self, gateway_id: str) -> None:
        await self._transaction(lambda db: db.execute("delete_gateway", gateway_id))

    async def subscribe(self, gateway_id: str, callback: Callable[[PeerNote], None]) -> None:
        self.gateway_id = gateway_id
        self._callback = callback
        self._listener = await asyncpg.connect(self.url, server_settings=SERVER_SETTINGS)
        await self._listener.add_listener(CHANNEL, self._heard)

    async def _keep_listening(self) -> None:
        """Listen again if the listening connection died (the database restarted, say).

        Notes sent meanwhile were lost, so the gateway is told to look at everything afresh.
        """
        if self._callback is None or (self._listener is not None
                                      and not self._listener.is_closed()):
            return
        log.warning("peer_listener_reconnecting")
        await self.subscribe(self.gateway_id, self._callback)
        self.forget_configs()
        self._callback({"registered": True, "wakeup": 0.0})

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            note = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("peer_note_unreadable", payload=payload[:200])
            return
        if note.get("from") == self.gateway_id:
            return
        if note.get("registered"):
            self.forget_configs()
        if self._callback is not None:
            self._callback(note)

    async def _publish(self, db: Db, result: WriteResult | None, *, registered: bool) -> None:
        if registered:
            await self._notify(db, {"registered": True})
            return
        assert result is not None
        note: dict[str, Any] = {}
        if result.touched_functions:
            note["functions"] = sorted(result.touched_functions)
        if result.next_wakeup is not None:
            note["wakeup"] = result.next_wakeup
        mine = f"{self.gateway_id}."
        revoke = [[r.session_id, r.run_id, r.fence] for r in result.revoked
                  if not r.session_id.startswith(mine)]
        if revoke:
            note["revoke"] = revoke
        if note:
            await self._notify(db, note)

    async def _notify(self, db: Db, note: dict[str, Any]) -> None:
        for payload in note_payloads({"from": self.gateway_id, **note}):
            await db.fetchval("notify", payload)


def note_payloads(note: dict[str, Any], limit: int = NOTIFY_LIMIT) -> list[str]:
    """``note`` as NOTIFY payloads of at most ``limit`` bytes each.

    PostgreSQL refuses a payload of 8000 bytes or more, and that would roll back the whole
    batch: a note too big is split, halving its longest list (revocations, functions) until
    each part fits. Every part carries the note's other keys.
    """
    text = orjson.dumps(note).decode()
    if len(text.encode()) < limit:
        return [text]
    lists = [k for k, v in note.items() if isinstance(v, list) and len(v) > 1]
    if not lists:
        log.error("peer_note_dropped", size=len(text), keys=sorted(note))
        return []
    key = max(lists, key=lambda k: len(orjson.dumps(note[k])))
    items = note[key]
    half = len(items) // 2
    return (note_payloads({**note, key: items[:half]}, limit)
            + note_payloads({**note, key: items[half:]}, limit))
