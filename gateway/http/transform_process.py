"""A child process that runs webhook transforms over large bodies, one at a time.

The CEL library holds the GIL while it converts a body into its own values (measured: ~0.26 s
for 512 KiB of small JSON arrays), so a large body transformed on the event loop would stall
everything the gateway does, heartbeats and commits included. Bodies over
:data:`INLINE_LIMIT` are therefore parsed and transformed here, in a child process, one
request at a time; one that takes over :data:`BUDGET` seconds is refused (400) and the child
is killed and started afresh on the next request. The child leaves by itself when idle for
:data:`IDLE_EXIT` seconds or when the gateway goes away (its pipe closes).

Kept free of gateway imports beyond :mod:`gateway.http.transform`, so the child starts light.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from gateway.http.transform import apply, request_body
from protocol.errors import InvalidInput

#: Bodies up to this many bytes are transformed on the event loop (a few ms at worst).
INLINE_LIMIT = 16 * 1024
#: Seconds a transform of a large body may take in the child.
BUDGET = 2.0
#: Seconds the child waits for work before leaving.
IDLE_EXIT = 60.0
#: Seconds a new child may take to start (its imports) before its first job. Not part of
#: :data:`BUDGET`, which is the transform's own time: on a busy machine starting the child
#: alone can take longer, and a good request must not be refused for that.
STARTUP = 30.0
READY = "ready"

Job = tuple[str, bytes, str | None, dict[str, str], dict[str, str]]


class TransformProcess:
    """Runs :func:`gateway.http.transform.apply` in a child; :meth:`close` when done."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._process: Any = None
        self._conn: Connection | None = None

    async def apply(self, source: str, raw: bytes, content_type: str | None,
                    headers: dict[str, str], query: dict[str, str]) -> bytes:
        """The event JSON the transform builds from this request.

        Raises:
            InvalidInput: as :func:`~gateway.http.transform.request_body` and
                :func:`~gateway.http.transform.apply` do, or the transform ran over budget.
        """
        async with self._lock:
            answer = await asyncio.to_thread(self._exchange,
                                             (source, raw, content_type, headers, query))
        if answer is None:
            raise InvalidInput(f"the webhook's transform took over {BUDGET:g} s on this "
                               "request's body; make the transform simpler or the body smaller")
        ok, value = answer
        if not ok:
            raise InvalidInput(value)
        result: bytes = value
        return result

    def _start(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self.close()
        # Not fork: the gateway has threads (SQLite's). A fork server starts children clean.
        method = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                  else "spawn")
        context: Any = multiprocessing.get_context(method)
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True,
                                        name="tether-webhook-transform")
        self._process.start()
        child.close()
        assert self._conn is not None
        if not self._conn.poll(STARTUP) or self._conn.recv() != READY:
            self.close()
            raise OSError("the webhook transform process did not start")
        return self._conn

    def _exchange(self, job: Job) -> tuple[bool, Any] | None:
        for _ in range(2):  # the child may have left while idle: start it again once
            conn = self._start()
            try:
                conn.send(job)
                if not conn.poll(BUDGET):
                    self.close()
                    return None
                answer: tuple[bool, Any] = conn.recv()
                return answer
            except (EOFError, OSError):  # the child left (idle) or died (the library crashed)
                self.close()
        return None

    def close(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _serve(conn: Connection) -> None:
    """The child: answer each job with (True, event JSON) or (False, why), until idle."""
    conn.send(READY)  # imports done: the budget of the first job starts now
    while conn.poll(IDLE_EXIT):
        try:
            source, raw, content_type, headers, query = conn.recv()
        except EOFError:
            return
        try:
            body = request_body(raw, content_type)
            conn.send((True, apply(source, body, headers, query)))
        except InvalidInput as exc:
            conn.send((False, exc.message))
