"""Named queries, and the small async interface the shared store logic runs them through.

Queries live in ``queries/common.sql`` (what both backends run as written) and
``queries/<backend>.sql`` (what truly differs), as blocks headed ``-- name: <name>`` (the
procrastinate way): the logic in :mod:`gateway.store.transaction` and
:mod:`gateway.store.reads` is written once against names, and every backend answers the same
names. A list argument is an ``IN (...)`` set: each backend passes it its own way. A query
whose body is empty (only comments) is one the backend has nothing to do for (SQLite's locks:
one writer owns the file): no statement is run, and it returns no rows.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from functools import cache
from pathlib import Path
from typing import Any, Protocol

_QUERIES = Path(__file__).parent / "queries"
_HEADER = re.compile(r"^--\s*name:\s*([a-z_0-9]+)\s*$", re.MULTILINE)

Row = tuple[Any, ...]


def _named(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines()
                        if not line.strip().startswith("--")).strip().rstrip(";")
        if name in named:
            raise ValueError(f"query {name!r} is defined twice")
        named[name] = sql
    return named


#: A positional parameter of common.sql (``$1``), which SQLite reads as ``?1``.
_PARAMETER = re.compile(r"\$(\d+)")


@cache
def queries(backend: str) -> dict[str, str]:
    """Every named query of ``backend``, by name: common.sql's, and the backend's own.

    A query is written once in common.sql unless the backends truly differ (list parameters,
    locks, sequences, conflicts): then ``<backend>.sql`` has it, under the same name.
    """
    common = _named((_QUERIES / "common.sql").read_text())
    if backend == "sqlite":
        common = {name: _PARAMETER.sub(r"?\1", sql) for name, sql in common.items()}
    own = _named((_QUERIES / f"{backend}.sql").read_text())
    both = sorted(common.keys() & own.keys())
    if both:
        raise ValueError(f"queries {both} are in common.sql and in {backend}.sql: keep one")
    return {**common, **own}


class Db(Protocol):
    """One open transaction (or read connection). Rows are tuples, read by position."""

    async def fetch(self, name: str, *args: Any) -> list[Row]: ...

    async def fetchone(self, name: str, *args: Any) -> Row | None: ...

    async def fetchval(self, name: str, *args: Any) -> Any: ...

    async def execute(self, name: str, *args: Any) -> int:
        """Run a statement; return how many rows it changed."""
        ...

    async def executemany(self, name: str, rows: list[tuple[Any, ...]]) -> None: ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested transaction: what runs inside is undone alone if it raises."""
        ...
