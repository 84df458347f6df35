"""Versioned schema migrations, one folder of numbered .sql files per backend.

Applied with yoyo-migrations (which records what ran in ``_yoyo_migration``), at gateway start
and by ``python -m gateway migrate``.
"""

from __future__ import annotations

from pathlib import Path

from yoyo import get_backend, read_migrations

_HERE = Path(__file__).parent


def yoyo_url(url: str) -> str:
    """A PostgreSQL URL as yoyo wants it (it connects through psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def apply(url: str, backend: str) -> list[str]:
    """Apply every pending migration for ``backend`` ("sqlite" or "postgres") at ``url``.

    Returns the ids of the migrations applied now (empty when the schema is current).
    Blocking: call it from a thread.
    """
    db = get_backend(url)
    migrations = read_migrations(str(_HERE / backend))
    with db.lock():
        pending = db.to_apply(migrations)
        db.apply_migrations(pending)
    return [m.id for m in pending]
