"""Webhooks kept in the store, so every gateway sharing a database serves them.

Functions over one :class:`~gateway.store.db.Db` (a transaction or a read connection), as
:mod:`gateway.store.keys` does; :class:`~gateway.store.sql.SqlStore` runs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.store.db import Db, Row


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A webhook as stored: ``verify`` is None or ``{"scheme", "secret", "header"?}``."""

    id: str
    name: str
    transform: str
    verify: dict[str, Any] | None
    created_at: float


def _record(row: Row) -> WebhookRecord:
    wid, name, transform, verify, created = row
    return WebhookRecord(wid, name, transform, None if verify is None else json.loads(verify),
                         created)


async def insert(db: Db, record: WebhookRecord) -> None:
    verify = None if record.verify is None else json.dumps(record.verify)
    await db.execute("insert_webhook", record.id, record.name, record.transform, verify,
                     record.created_at)


async def get(db: Db, webhook_id: str) -> WebhookRecord | None:
    row = await db.fetchone("get_webhook", webhook_id)
    return None if row is None else _record(row)


async def list_all(db: Db) -> list[WebhookRecord]:
    return [_record(row) for row in await db.fetch("list_webhooks")]


async def delete(db: Db, webhook_id: str) -> bool:
    return await db.execute("delete_webhook", webhook_id) > 0
