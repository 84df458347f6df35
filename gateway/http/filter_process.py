"""A child process that evaluates one CEL filter over pages of runs, killed past a budget.

The CEL library holds the GIL while it evaluates, and its comprehensions (``exists``,
``filter``, ``map``, ...) are quadratic in the length of the list they walk (measured: a
``filter`` over 20,000 numbers takes ~15 s). Evaluated on a thread, one bulk-cancel filter
could freeze the whole gateway, intake included; in its own process it costs the gateway
nothing, and a filter over budget (or one that crashes the library) is stopped by killing it.
Kept free of gateway imports so the child starts light.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

import orjson

from protocol.expressions import matches

Rows = list[tuple[str, bytes | None]]

# Children fork from the fork server with this module (and so the CEL library) already
# imported: a filter then starts in tens of milliseconds, not the second an import takes.
if "forkserver" in multiprocessing.get_all_start_methods():
    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", __name__])


class FilterOverBudget(Exception):
    """The filter did not finish a page within its time, or crashed its process."""


class FilterProcess:
    """Evaluates ``expression`` over pages sent with :meth:`select`; :meth:`close` when done."""

    def __init__(self, expression: str) -> None:
        # Not fork: the gateway has threads (SQLite's). A fork server starts children clean.
        if "forkserver" in multiprocessing.get_all_start_methods():
            context: Any = multiprocessing.get_context("forkserver")
        else:
            context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, expression), daemon=True,
                                        name="tether-bulk-filter")
        self._process.start()
        child.close()

    async def select(self, rows: Rows, *, timeout: float) -> list[str]:
        """The ids of ``rows`` whose event satisfies the filter.

        Raises:
            FilterOverBudget: not done within ``timeout`` seconds, or the process died; the
                process is gone afterwards.
        """
        chosen = await asyncio.to_thread(self._exchange, rows, timeout)
        if chosen is None:
            self.close()
            raise FilterOverBudget
        return chosen

    def _exchange(self, rows: Rows, timeout: float) -> list[str] | None:
        try:
            self._conn.send(rows)
            if not self._conn.poll(timeout):
                return None
            chosen: list[str] = self._conn.recv()
            return chosen
        except (EOFError, OSError):  # the child died (the library crashed, or it was killed)
            return None

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=5)
        self._conn.close()


def _serve(conn: Connection, expression: str) -> None:
    """The child: answer each page of rows with the ids that match, until the pipe closes."""
    while True:
        try:
            rows: Rows = conn.recv()
        except EOFError:
            return
        conn.send([run_id for run_id, trigger in rows
                   if matches(expression, {"event": orjson.loads(trigger) if trigger else {}})])
