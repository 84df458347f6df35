"""The embedded default store: SQLite in WAL mode with ``synchronous=FULL``.

One connection writes, on its own thread (the shared async store logic is driven there
synchronously: nothing it awaits suspends), one batch per transaction. Another thread reads
for the HTTP API (WAL lets readers run beside the writer). The gateway's event loop never
blocks on disk.

A SQLite file is one gateway's store: :meth:`SQLiteStore.open` takes an exclusive lock on a
sidecar file (``tether.db.lock``, holding the owner's pid and ports) before it touches the
database, and refuses to open a database another gateway holds. The directory it creates is
private (0700) and the database files are 0600: they hold every event and step output.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from gateway.runs import RunEvent, StepStatus, edge
from gateway.store import migrations
from gateway.store.db import Row, queries
from gateway.store.sql import SqlStore
from protocol.errors import TetherError

T = TypeVar("T")

#: The database and its -wal/-shm hold every event and step output: the owner's only.
FILE_MODE = 0o600
#: A directory the store creates for its database.
DIR_MODE = 0o700
_SIDECARS = ("", "-wal", "-shm", "-journal", ".lock")
#: Commits after which the writer checkpoints the WAL when the engine is idle. SQLite's own
#: checkpoint (at 1,000 WAL pages, about 70 light commits) runs inside a COMMIT, which then
#: waits for the database file's fsync too; at rest the writer does it first, between
#: commits. Under load the engine is never idle and SQLite's stays.
IDLE_CHECKPOINT_COMMITS = 32


class DatabaseInUse(TetherError):
    """Another gateway holds this SQLite database (one gateway per SQLite file)."""

    code = "database_in_use"
    http_status = 409


class DatabaseLock:
    """An exclusive ``flock`` on ``<db>.lock``, held for as long as the store is open.

    The lock is the kernel's: it goes with the process, however it ends, so a stale lock
    file never blocks a restart. The file's content (JSON: pid, host, ports) only serves
    the message shown to a second gateway.
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = Path(f"{db}.lock")
        self._fd: int | None = None

    def acquire(self, owner: Mapping[str, Any]) -> None:
        """Raises DatabaseInUse, naming the holder, when another process holds the lock."""
        if self._fd is not None:
            return
        make_private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_owner(fd)
            os.close(fd)
            raise DatabaseInUse(in_use_message(self.db, holder)) from None
        self._fd = fd
        self.describe(owner)

    def describe(self, owner: Mapping[str, Any]) -> None:
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), **owner}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        raw = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def in_use_message(db: Path, holder: Mapping[str, Any]) -> str:
    """Who holds ``db``, and what to do about it."""
    parts = [f"pid {holder['pid']}"] if "pid" in holder else []
    host = holder.get("host", "")
    if holder.get("http_port"):
        parts.append(f"HTTP {host}:{holder['http_port']}")
    if holder.get("connect_port"):
        parts.append(f"worker socket {host}:{holder['connect_port']}")
    who = f" ({', '.join(parts)})" if parts else ""
    return (
        f"database {db} is in use by another gateway{who}; a SQLite database serves one "
        "gateway: stop that one first, or give this one another --db (several gateways "
        "share one PostgreSQL database)"
    )


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parent as 0700; leave existing ones alone."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # mkdir's mode passes through the umask


def prepare_files(db: Path) -> None:
    """Create the database file 0600 before SQLite does (its -wal and -shm take its mode)."""
    make_private_dirs(db.parent)
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, FILE_MODE))
    tighten(db)


def tighten(db: Path) -> None:
    """Make the database files that exist the owner's only (older gateways made them 0644)."""
    for suffix in _SIDECARS:
        with contextlib.suppress(OSError):  # absent, or not ours to change
            os.chmod(f"{db}{suffix}", FILE_MODE)


#: Named queries that write step rows (``upsert_step``'s columns: run id, step id, kind,
#: status, attempts, ...). The other writes of ``steps`` (``insert_pending_step``,
#: ``insert_done_step``) are of sleeps, waits, invokes and sent events: never an attempt to log.
STEP_WRITES = frozenset({"insert_step", "upsert_step"})
#: Writes of many runs alike but for the run id (a batch's leases: one session, one time, one
#: status): name -> (the query taking a JSON list of run ids in the id's place, the id's
#: position). Each execution of a statement opens every index of ``runs`` and sets up its
#: program: once per group, not once per run (lease_run: about 0.8 µs of the writer's CPU
#: per run less).
BY_GROUP = {"lease_run": ("lease_runs", 2)}
#: Writes the writer stages (:meth:`SQLiteDb._write_staged`): name -> (its parameters, the
#: position of the run id no two rows may share, or None). Each execution of a statement sets
#: up its program and opens every index of its table (fourteen for runs): a batch's rows go
#: into a temporary table, then in with one statement, ``<name>_staged`` in
#: queries/sqlite.sql (about 1 µs of the writer's CPU per row less, each).
STAGED = {"insert_event": (6, None), "insert_run": (12, None), "insert_leased_run": (8, None),
          "finish_run": (8, 4)}
#: Fewer rows than this are written as they are (staging costs two statements more).
STAGE_FROM = 3
_STAGE = {name: (f"DELETE FROM temp.staged_{name}",
                 f"INSERT INTO temp.staged_{name} VALUES ({', '.join('?' * width)})")
          for name, (width, _) in STAGED.items()}


def create_staging(conn: sqlite3.Connection) -> None:
    """The writer connection's temporary tables for :data:`STAGED` (outside a transaction:
    one created in a transaction that rolls back would be gone)."""
    for name, (width, _) in STAGED.items():
        columns = ", ".join(f"c{i}" for i in range(1, width + 1))
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS staged_{name} ({columns})")


class SQLiteDb:
    """:class:`~gateway.store.db.Db` over one sqlite3 connection (calls block its thread)."""

    def __init__(self, conn: sqlite3.Connection, *, staging: bool = False) -> None:
        """``staging``: the writer's connection, whose batches stage :data:`STAGED` writes."""
        self.conn = conn
        self.sql = queries("sqlite")
        self._staging = staging
        if staging:
            create_staging(conn)

    @staticmethod
    def _args(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(json.dumps(a) if isinstance(a, (list, tuple, set)) else a for a in args)

    # A query with no body (the locks one writer does not need) runs no statement.

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        sql = self.sql[name]
        return self.conn.execute(sql, self._args(args)).fetchall() if sql else []

    async def fetchone(self, name: str, *args: Any) -> Row | None:
        sql = self.sql[name]
        row: Row | None = self.conn.execute(sql, self._args(args)).fetchone() if sql else None
        return row

    async def fetchval(self, name: str, *args: Any) -> Any:
        row = await self.fetchone(name, *args)
        return None if row is None else row[0]

    async def execute(self, name: str, *args: Any) -> int:
        sql = self.sql[name]
        if name in STEP_WRITES:
            return self._write_steps(sql, [args])
        return self.conn.execute(sql, self._args(args)).rowcount if sql else 0

    async def executemany(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        sql = self.sql[name]
        if not rows or not sql:  # nothing to write: no statement (phases often have none)
            return
        if name in STEP_WRITES:
            self._write_steps(sql, rows)
        elif name in BY_GROUP and len(rows) > 1:
            self._by_group(name, sql, rows)
        elif self._staging and name in STAGED and len(rows) >= STAGE_FROM:
            self._write_staged(name, sql, rows)
        else:
            self.conn.executemany(sql, rows)

    def _write_staged(self, name: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Write ``rows`` through ``temp.staged_<name>`` and ``<name>_staged`` (see
        :data:`STAGED`); as they are if two name the same run (an update from a table writes a
        row once). The table is emptied first: a statement that failed may have left rows (a
        rollback takes them out too)."""
        key = STAGED[name][1]
        if key is not None and len({row[key] for row in rows}) < len(rows):
            self.conn.executemany(sql, rows)
            return
        empty, stage = _STAGE[name]
        self.conn.execute(empty)
        self.conn.executemany(stage, rows)
        self.conn.execute(self.sql[f"{name}_staged"])

    def _by_group(self, name: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``name`` once per group of rows alike but for their run id (see
        :data:`BY_GROUP`), all of a group's ids in one JSON list; each row alone if a run
        comes twice (a set-based statement would write it once)."""
        group_sql, at = BY_GROUP[name]
        groups: dict[tuple[Any, ...], list[str]] = {}
        for row in rows:
            groups.setdefault(row[:at] + row[at + 1:], []).append(row[at])
        if sum(len(set(ids)) for ids in groups.values()) < len(rows):
            self.conn.executemany(sql, rows)
            return
        group_sql = self.sql[group_sql]
        for rest, ids in groups.items():
            self.conn.execute(group_sql, (*rest[:at], json.dumps(ids), *rest[at:]))

    def _write_steps(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """Write step rows (``upsert_step``'s columns) and log their attempts, as PostgreSQL's
        trigger on ``steps`` does (migration 0021: a trigger here ran for every row).

        A first attempt that completed logs nothing, whether the write inserts or updates its
        row: those (nearly every step) go in one ``executemany``. Any other row is written
        alone, in its place in the order, and if it changed the row (an insert, or an update
        the upsert's WHERE let through) the attempt is logged from the row as written, at
        once: the next row may be the same step's next attempt. Returns the rows changed.
        """
        conn, changed, start = self.conn, 0, 0
        for i, row in enumerate(rows):
            if row[3] == StepStatus.COMPLETED and row[4] == 1:  # status, attempts
                continue
            if start < i:
                changed += max(conn.executemany(sql, rows[start:i]).rowcount, 0)
            start = i + 1
            if conn.execute(sql, row).rowcount > 0:
                changed += 1
                conn.execute(self.sql["log_step_attempt"], row[:2])
        if start < len(rows):
            changed += max(conn.executemany(sql, rows[start:]).rowcount, 0)
        return changed

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
    loop in the thread, one hand-off each way. The hand-off is a queue and the loop's own
    future, set through ``call_soon_threadsafe``: a ``ThreadPoolExecutor`` adds a
    ``concurrent.futures.Future`` chained to an asyncio one, and its bookkeeping, to every
    commit (about a quarter of a round trip's CPU, measured).
    """

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self.db: SQLiteDb | None = None

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((coro, future, loop))
        return await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            coro, future, loop = job
            value: Any = None
            error: BaseException | None = None
            try:
                value = _drive(coro)
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            # A closed loop (RuntimeError): nobody awaits the answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, value, error)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


#: A coroutine to drive on the thread, the future that awaits it, and that future's loop.
_Job = tuple[Coroutine[Any, Any, Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    """On the loop: answer the caller (unless it stopped waiting: cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


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

    def __init__(self, path: str | Path, *, owner: Mapping[str, Any] | None = None) -> None:
        """``owner`` (host, ports) is written in the lock file, for the message another
        gateway started on the same database shows."""
        super().__init__()
        self.path = Path(path)
        self.lock = DatabaseLock(self.path)
        self._owner = dict(owner or {})
        self._writer: _DbThread | None = None
        self._reader: _DbThread | None = None
        self._commits = 0  # since the last checkpoint at rest

    async def open(self) -> None:
        """Lock the database (raises :class:`DatabaseInUse`), then migrate and connect."""
        self.lock.acquire(self._owner)
        try:
            prepare_files(self.path)
        except BaseException:
            self.lock.release()
            raise
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
            conn.execute("PRAGMA temp_store=MEMORY")  # the staged writes' tables
            tighten(self.path)  # -wal and -shm exist now
        else:
            conn.execute("PRAGMA query_only=ON")
        thread.db = SQLiteDb(conn, staging=write)

    async def close(self) -> None:
        for thread in (self._writer, self._reader):
            if thread is not None:
                if thread.db is not None:
                    await thread.run(_close(thread.db.conn))
                thread.stop()
        self._writer = self._reader = None
        self.lock.release()

    def announce(self, **owner: Any) -> None:
        """Update what the lock file says about this gateway (its ports, once bound)."""
        self._owner.update(owner)
        self.lock.describe(self._owner)

    async def recover(self, *, now: float, grace: float = 0.0) -> int:
        # One gateway owns a SQLite file: every lease in it died with the previous process.
        return await self._transaction(lambda db: db.execute(
            "recover_leases", now + grace, edge(RunEvent.LEASE_LOST)))

    async def _transaction(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        thread = self._writer
        assert thread is not None and thread.db is not None, "store is not open"
        self._commits += 1
        return await thread.run(_in_transaction(thread.db, fn))

    async def idle(self) -> None:
        """Checkpoint the WAL now, between commits, rather than inside a later COMMIT."""
        thread = self._writer
        if self._commits < IDLE_CHECKPOINT_COMMITS or thread is None or thread.db is None:
            return
        self._commits = 0
        await thread.run(_checkpoint(thread.db.conn))

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


async def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE: copies what no reader still needs (the reader thread is never held up).
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


async def _awaitable(aw: Awaitable[T]) -> T:
    return await aw


async def _close(conn: sqlite3.Connection) -> None:
    conn.close()
