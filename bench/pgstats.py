"""What PostgreSQL did during a benchmark phase: commits, WAL, NOTIFY, waits, backend CPU.

:class:`PgWatch` runs beside a benchmark on its own connection (and thread): it listens on the
gateways' NOTIFY channel and counts the notes and their bytes, samples ``pg_stat_activity``
every ``interval`` for the gateways' backends of the benchmark database (what each is doing or
waiting on), and reads ``pg_stat_database``, ``pg_stat_wal`` and each backend's CPU time
(``/proc``: the server runs on this machine) at the start and the end (the counters
``settle`` seconds after the end: backends report them late). ``pg_stat_wal`` is the
whole server's: other databases on it count there too.

The samples say where a backend's time goes: ``active`` (executing), ``idle in transaction``
waiting on ``Client:ClientRead`` (the gateway has not sent the next statement yet: a round trip
or the gateway's own CPU), ``IO:WALSync`` (the commit's fsync), ``Lock:*`` (another transaction
holds a row or advisory lock this one needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import cpu_seconds

#: One statement per sample (one transaction): the runs completed so far, and what each busy
#: backend of the gateways is doing.
_SAMPLE = """
SELECT (SELECT count(*) FROM runs WHERE status = 'Completed'),
       (SELECT array_agg(concat_ws(' ', state, wait_event_type || ':' || wait_event))
        FROM pg_stat_activity WHERE datname = current_database()
        AND application_name <> 'tether-bench' AND state IS NOT NULL AND state <> 'idle')
"""
_DATABASE = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_returned,
       tup_fetched FROM pg_stat_database WHERE datname = current_database()
"""
#: Row updates of the hot tables, and how many were HOT (no index touched: cheaper, less WAL).
_UPDATES = """
SELECT COALESCE(sum(n_tup_upd), 0), COALESCE(sum(n_tup_hot_upd), 0) FROM pg_stat_user_tables
WHERE relname IN ('runs', 'steps')
"""
_WAL = "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
_CHANNEL = "tether"
#: The benchmark's own connections say so: their backends are not the gateways'.
BENCH_APP = {"application_name": "tether-bench"}


@dataclass
class PgFigures:
    """Deltas over the watched phase."""

    seconds: float
    commits: int
    rollbacks: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    wal_records: int  # server-wide
    wal_bytes: int  # server-wide
    wal_syncs: int  # server-wide
    notes: int  # NOTIFY payloads heard on the gateways' channel
    note_bytes: int
    backend_cpu_s: float  # CPU of the database's backends (all gateways' connections)
    updates: int  # rows of runs and steps updated
    hot_updates: int  # of which HOT (heap-only: no index entry written)
    #: Samples of the database's backends by what they were doing: "active", "active
    #: Lock:transactionid", "idle in transaction Client:ClientRead", ... (idle ones left out).
    samples: Counter[str] = field(default_factory=Counter)
    sample_count: int = 0

    def per_s(self, value: float) -> float:
        return value / self.seconds if self.seconds else 0.0

    def waits(self) -> str:
        """The sampled states, as a share of all samples of busy backends, largest first."""
        total = sum(self.samples.values())
        if not total:
            return "no busy backend sampled"
        return ", ".join(f"{k} {v * 100 / total:.0f}%" for k, v in self.samples.most_common(6))

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "commits": self.commits, "rollbacks": self.rollbacks,
                "rows_inserted": self.rows_inserted, "rows_updated": self.rows_updated,
                "rows_deleted": self.rows_deleted, "wal_records": self.wal_records,
                "wal_bytes": self.wal_bytes, "wal_syncs": self.wal_syncs, "notes": self.notes,
                "note_bytes": self.note_bytes, "backend_cpu_s": self.backend_cpu_s,
                "updates": self.updates, "hot_updates": self.hot_updates,
                "samples": dict(self.samples), "sample_count": self.sample_count}


class PgWatch:
    """Start with :meth:`start` when the phase begins, :meth:`stop` returns its figures."""

    def __init__(self, url: str, interval: float = 0.05, settle: float = 11.0) -> None:
        self.url = url
        self.interval = interval
        self.settle = settle
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._figures: PgFigures | None = None
        self._error: BaseException | None = None
        #: Runs completed in the database, as of the last sample.
        self.completed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def wait_completed(self, target: int, timeout: float) -> None:
        """Until ``target`` runs have completed (as the samples see them)."""
        deadline = time.monotonic() + timeout
        while self.completed < target:
            if self._error is not None:
                raise self._error
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.completed} of {target} runs completed")
            time.sleep(self.interval)

    def stop(self) -> PgFigures:
        self._stopping.set()
        assert self._thread is not None
        self._thread.join(60)
        if self._error is not None:
            raise self._error
        assert self._figures is not None
        return self._figures

    def _main(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
            self._ready.set()

    async def _watch(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, server_settings=BENCH_APP)
        notes = [0, 0]

        def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            notes[0] += 1
            notes[1] += len(payload.encode())

        try:
            await conn.add_listener(_CHANNEL, heard)
            samples: Counter[str] = Counter()
            count = 0
            db0, wal0 = await conn.fetchrow(_DATABASE), await conn.fetchrow(_WAL)
            up0 = await conn.fetchrow(_UPDATES)
            cpu0 = await self._backend_cpu(conn)
            t0 = time.monotonic()
            self._ready.set()
            while not self._stopping.is_set():
                completed, busy = await conn.fetchrow(_SAMPLE)
                self.completed = int(completed)
                samples.update(busy or ())
                count += 1
                await asyncio.sleep(self.interval)
            seconds = time.monotonic() - t0
            cpu1 = await self._backend_cpu(conn)
            # A backend reports its counts to pg_stat_* at most once a second while busy, and
            # 10 s after it went idle: wait for the last ones (the gateways' heartbeats
            # meanwhile add a few commits).
            await asyncio.sleep(self.settle)
            db1, wal1 = await conn.fetchrow(_DATABASE), await conn.fetchrow(_WAL)
            up1 = await conn.fetchrow(_UPDATES)
            cpu = sum(c - cpu0.get(pid, 0.0) for pid, c in cpu1.items())
            # The watcher's own statements are transactions too: one per sample and read.
            self._figures = PgFigures(
                seconds, db1[0] - db0[0] - count - 4, db1[1] - db0[1], db1[2] - db0[2],
                db1[3] - db0[3], db1[4] - db0[4], wal1[0] - wal0[0], int(wal1[1] - wal0[1]),
                wal1[3] - wal0[3], notes[0], notes[1], cpu, int(up1[0] - up0[0]),
                int(up1[1] - up0[1]), samples, count)
        finally:
            await conn.close()

    @staticmethod
    async def _backend_cpu(conn: Any) -> dict[int, float]:
        cpu: dict[int, float] = {}
        for (pid,) in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name <> 'tether-bench'"):
            with contextlib.suppress(OSError):  # gone meanwhile
                cpu[pid] = cpu_seconds(pid)
        return cpu
