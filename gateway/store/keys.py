"""Event keys and API keys kept in the store, hashed: made, listed and revoked by the CLI.

The key itself is shown once, when it is made; the store keeps its SHA-256 (see
:func:`gateway.transport.auth.key_hash`), a short hint to recognise it, and when it was
revoked. Gateways re-read the active hashes every ``--key-refresh`` seconds
(:meth:`gateway.store.sql.SqlStore.active_keys`), so revoking needs no restart.

The command line reaches the database on its own connection (:func:`connect`), beside a
running gateway: SQLite's WAL lets it write while the gateway holds its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from gateway.config import db_backend
from gateway.store import migrations
from gateway.store.db import Db
from gateway.transport.auth import StoredKey, check_strength, key_hash, new_key
from protocol.errors import InvalidInput, NotFound
from protocol.ids import new_id

#: The kinds of key the store keeps (signing keys stay on the command line: workers and
#: gateways must share them before any store is reachable).
KINDS = ("event", "api")
#: Characters of a key kept to recognise it in ``keys list``: its prefix and 4 more.
_HINT = 4


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key as ``keys list`` shows it (never the key itself)."""

    id: str
    kind: str
    name: str
    hint: str
    read_only: bool
    created_at: float
    revoked_at: float | None


def _hint(key: str) -> str:
    prefix, dash, rest = key.partition("-")
    return f"{prefix}-{rest[:_HINT]}..." if dash else f"{key[:_HINT]}..."


async def create(db: Db, *, kind: str, name: str, read_only: bool, now: float,
                 key: str | None = None) -> tuple[KeyRecord, str]:
    """Store a new key of ``kind``; return its record and the key (shown once, never again).

    Raises:
        InvalidInput: an unknown kind, ``read_only`` on an event key, or a weak ``key``.
    """
    if kind not in KINDS:
        raise InvalidInput(f"--kind {kind!r}: the store keeps {' and '.join(KINDS)} keys "
                           "(signing keys are given to the gateway with --signing-key)")
    if read_only and kind != "api":
        raise InvalidInput("--read-only applies to API keys only")
    key = key if key is not None else new_key(kind)
    check_strength(key, what="the key", kind=kind)
    record = KeyRecord(new_id(now), kind, name, _hint(key), read_only, now, None)
    await db.execute("insert_access_key", record.id, kind, name, key_hash(key), record.hint,
                     int(read_only), now)
    return record, key


async def list_keys(db: Db) -> list[KeyRecord]:
    return [KeyRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6])
            for r in await db.fetch("list_access_keys")]


async def revoke(db: Db, key_id: str, *, now: float) -> KeyRecord:
    """Mark ``key_id`` revoked (gateways refuse it after their next refresh).

    Raises:
        NotFound: no key has that id.
    """
    await db.execute("revoke_access_key", key_id, now)
    for record in await list_keys(db):
        if record.id == key_id:
            return record
    raise NotFound(f"no key has id {key_id!r}; `python -m gateway keys list --db URL` shows "
                   "the ids")


async def active(db: Db) -> list[StoredKey]:
    return [StoredKey(h, kind, bool(ro)) for h, kind, ro in await db.fetch("active_access_keys")]


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Db]:
    """A connection for the ``keys`` command, beside any gateway using ``url``.

    Pending migrations are applied first, unless a gateway holds the SQLite database (it
    applied them when it started).
    """
    backend, location = db_backend(url)
    if backend == "postgres":
        import asyncpg

        from gateway.store.postgres import SERVER_SETTINGS, PgDb

        await asyncio.to_thread(migrations.apply, migrations.yoyo_url(location), "postgres")
        conn = await asyncpg.connect(location, server_settings=SERVER_SETTINGS)
        try:
            yield PgDb(conn)
        finally:
            await conn.close()
        return
    from gateway.store.sqlite import DatabaseInUse, DatabaseLock, SQLiteDb, prepare_files

    path = Path(location)
    lock = DatabaseLock(path)
    with contextlib.suppress(DatabaseInUse):  # a live gateway: its schema is current
        lock.acquire({"command": "keys"})
        try:
            prepare_files(path)
            migrations.apply(f"sqlite:///{path}", "sqlite")
        finally:
            lock.release()
    sconn = sqlite3.connect(path, isolation_level=None)
    try:
        sconn.execute("PRAGMA busy_timeout=5000")
        yield SQLiteDb(sconn)
    finally:
        sconn.close()

