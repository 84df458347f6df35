"""The embedded default store: SQLite in WAL mode with ``synchronous=FULL``.

One connection writes, on its own thread (the shared async store logic is driven there
synchronously: nothing it awaits suspends), one batch per transaction. Another thread reads
for the HTTP API (WAL lets readers run beside the writer). The gateway's event loop never
blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import migrations
from gateway.store.db import Row, queries
from gateway.store.sql import SqlStore

T = TypeVar("T")


class SQLiteDb:
    """:class:`~gateway.store.db.Db` over one sqlite3 connection (calls block its thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.sql = queries("sqlite")

    @staticmethod
    def _args(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(json.dumps(a) if isinstance(a, (list, tuple, set)) else a for a in args)

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        return self.conn.execute(self.sql[name], self._args(args)).fetchall()

    async def fetchone(self, name: str, *args: Any) -> Row | None:
        row: Row | None = self.conn.execute(self.sql[name], self._args(args)).fetchone()
        return row

    async def fetchval(self, name: str, *args: Any) -> Any:
        row = self.conn.execute(self.sql[name], self._args(args)).fetchone()
        return None if row is None else row[0]

    async def execute(self, name: str, *args: Any) -> int:
        return self.conn.execute(self.sql[name], self._args(args)).rowcount

    async def executemany(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(self.sql[name], rows)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self.conn.execute("SAVEPOINT item")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO item")
            self.conn.execute("RELEASE item")
            raise
        self.conn.execute("RELEASE item")


class _DbThread:
    """One thread and one sqlite3 connection; store coroutines run to completion on it.

    The shared store logic is async, but nothing it awaits on SQLite ever suspends (every
    ``SQLiteDb`` call returns at once), so a coroutine is driven by a single ``send``: no event
    loop in the thread, one hand-off each way.
    """

    def __init__(self, name: str) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.db: SQLiteDb | None = None

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, _drive, coro)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a SQLite store coroutine awaited something that suspends")


class SQLiteStore(SqlStore):
    """See :class:`gateway.store.base.Store`."""

    # Locked, disk full, I/O error: the database failed, not an item of the batch.
    store_errors = (sqlite3.OperationalError, sqlite3.InterfaceError, OSError, MemoryError)

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._writer: _DbThread | None = None
        self._reader: _DbThread | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _DbThread("tether-db-writer")
        self._reader = _DbThread("tether-db-reader")
        await self._writer.run(self._connect(self._writer, write=True))
        await self._reader.run(self._connect(self._reader, write=False))

    async def _connect(self, thread: _DbThread, *, write: bool) -> None:
        if write:
            migrations.apply(f"sqlite:///{self.path}", "sqlite")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        if write:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA cache_size=-65536")
        else:
            conn.execute("PRAGMA query_only=ON")
        thread.db = SQLiteDb(conn)

    async def close(self) -> None:
        for thread in (self._writer, self._reader):
            if thread is not None:
                if thread.db is not None:
                    await thread.run(_close(thread.db.conn))
                thread.stop()
        self._writer = self._reader = None

    async def recover(self, *, now: float) -> int:
        # One gateway owns a SQLite file: every lease in it died with the previous process.
        return await self._transaction(lambda db: db.execute("recover_leases", now))

    async def _transaction(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        thread = self._writer
        assert thread is not None and thread.db is not None, "store is not open"
        return await thread.run(_in_transaction(thread.db, fn))

    async def _read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        thread = self._reader
        assert thread is not None and thread.db is not None, "store is not open"
        return await thread.run(_awaitable(fn(thread.db)))


async def _in_transaction(db: SQLiteDb, fn: Callable[[Any], Awaitable[T]]) -> T:
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        result = await fn(db)
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
    return result


async def _awaitable(aw: Awaitable[T]) -> T:
    return await aw


async def _close(conn: sqlite3.Connection) -> None:
    conn.close()
