"""The embedded default store: SQLite in WAL mode with ``synchronous=FULL``.

One connection writes, on its own thread, one batch per transaction; another thread reads for
the HTTP API (WAL lets readers run beside the writer). The event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway import dispatch
from gateway.runs import FINAL_STATUSES, RunStatus, StepStatus
from gateway.store import migrations
from gateway.store.base import (
    DEDUP_WINDOW,
    MAX_LEASE_LOSSES,
    FunctionRecord,
    Lease,
    RunEnded,
    RunPage,
    RunRecord,
    StepRecord,
    WriteBatch,
    WriteResult,
)
from protocol.manifest import AppManifest
from protocol.messages import (
    ErrorInfo,
    LeaseReleased,
    RunCompleted,
    RunFailed,
    RunSuspended,
    StepCompleted,
    StepFailed,
    StepMemo,
)

T = TypeVar("T")

_CHUNK = 500  # ids per IN (...) list

_RUN_COLUMNS = (
    "id, function_id, status, fence, attempt, event_ids, output, error, queued_at, "
    "started_at, ended_at, available_at"
)


def error_json(error: ErrorInfo) -> str:
    return json.dumps({"name": error.name, "message": error.message, "stack": error.stack})


def error_from_json(text: str | None) -> ErrorInfo | None:
    if text is None:
        return None
    raw = json.loads(text)
    return ErrorInfo(name=raw["name"], message=raw["message"], stack=raw.get("stack"))


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SQLiteStore:
    """See :class:`gateway.store.base.Store`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tether-db-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tether-db-reader")
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._on(self._writer, self._open_writer)
        await self._on(self._reader, self._open_reader)

    def _open_writer(self) -> None:
        migrations.apply(f"sqlite:///{self.path}", "sqlite")
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA cache_size=-65536")
        self._w = db

    def _open_reader(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA query_only=ON")
        self._r = db

    async def close(self) -> None:
        if self._w is not None:
            await self._on(self._writer, self._w.close)
        if self._r is not None:
            await self._on(self._reader, self._r.close)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def _on(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # --- writes --------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> WriteResult:
        result: WriteResult = await self._on(self._writer, self._write, batch)
        return result

    def _write(self, batch: WriteBatch) -> WriteResult:
        db = self._w
        assert db is not None, "store is not open"
        result = WriteResult()
        touched: set[str] = set()  # functions that may have gained ready runs
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.events:
                self._insert_events(db, batch, result, touched)
            if batch.checkpoints:
                self._apply_checkpoints(db, batch, result, touched)
            if batch.returns:
                self._apply_returns(db, batch, touched)
            if batch.releases:
                self._apply_releases(db, batch, result, touched)
            result.touched_functions = touched
            if batch.claims:
                self._claim(db, batch, result, touched | batch.claim_functions)
            row = db.execute(
                "SELECT MIN(available_at) FROM runs WHERE status = 'Queued' AND available_at > ?",
                (batch.now,),
            ).fetchone()
            result.next_wakeup = row[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _insert_events(
        self, db: sqlite3.Connection, batch: WriteBatch, result: WriteResult, touched: set[str]
    ) -> None:
        now = batch.now
        seen: set[str] = set()
        ids = [e.id for e in batch.events]
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in db.execute(
                    f"SELECT id FROM events WHERE id IN ({marks}) AND received_at > ?",
                    (*chunk, now - DEDUP_WINDOW),
                )
            )
        runs: list[tuple[Any, ...]] = []
        links: list[tuple[str, int, int]] = []
        for event in batch.events:
            if event.id in seen:
                result.duplicate_events.add(event.id)
                continue
            seen.add(event.id)
            cur = db.execute(
                "INSERT INTO events (id, name, payload, received_at) VALUES (?, ?, ?, ?)",
                (event.id, event.name, event.payload, now),
            )
            seq = cur.lastrowid
            assert seq is not None
            event_ids = json.dumps([event.id])
            for run in event.runs:
                runs.append((run.id, run.function_id, now, event_ids, now))
                links.append((run.id, 0, seq))
                touched.add(run.function_id)
        result.runs_created = len(runs)
        if runs:
            db.executemany(
                "INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at) "
                "VALUES (?, ?, 'Queued', ?, ?, ?)",
                runs,
            )
            db.executemany(
                "INSERT INTO run_events (run_id, position, event_seq) VALUES (?, ?, ?)", links
            )

    def _apply_checkpoints(
        self, db: sqlite3.Connection, batch: WriteBatch, result: WriteResult, touched: set[str]
    ) -> None:
        now = batch.now
        state: dict[str, list[Any]] = {}  # run id -> [fence, status, function_id]
        run_ids = list({c.message.run_id for c in batch.checkpoints})
        for chunk in _chunks(run_ids):
            marks = ",".join("?" * len(chunk))
            for rid, fence, status, fn in db.execute(
                f"SELECT id, fence, status, function_id FROM runs WHERE id IN ({marks})", chunk
            ):
                state[rid] = [fence, status, fn]

        steps: list[tuple[Any, ...]] = []
        progressed: list[tuple[str]] = []
        finished: list[tuple[Any, ...]] = []
        requeued: list[tuple[Any, ...]] = []
        suspended: list[tuple[str, float, str]] = []
        for index, write in enumerate(batch.checkpoints):
            msg = write.message
            current = state.get(msg.run_id)
            if current is None:
                result.refused[index] = f"unknown run {msg.run_id}"
                continue
            fence, status, function_id = current
            if status in FINAL_STATUSES:
                result.refused[index] = f"run already {status}"
                continue
            if msg.fence != fence:
                result.refused[index] = (
                    f"lease superseded: fence {msg.fence} is stale, the run is at fence {fence}"
                )
                continue
            if isinstance(msg, StepCompleted):
                steps.append(
                    (msg.run_id, msg.step_id, "run", StepStatus.COMPLETED, msg.attempt + 1,
                     msg.output, None, None, msg.started_at, msg.ended_at)
                )
                progressed.append((msg.run_id,))
            elif isinstance(msg, StepFailed):
                status_ = StepStatus.FAILED if msg.final else StepStatus.RETRYING
                steps.append(
                    (msg.run_id, msg.step_id, "run", status_, msg.attempt + 1, None,
                     error_json(msg.error), None if msg.final else write.retry_at,
                     msg.started_at, msg.ended_at)
                )
                progressed.append((msg.run_id,))
            elif isinstance(msg, RunCompleted):
                finished.append((RunStatus.COMPLETED, msg.output, None, now, msg.run_id))
                current[1] = RunStatus.COMPLETED
                result.ended.append(RunEnded(msg.run_id, function_id, RunStatus.COMPLETED))
            elif isinstance(msg, RunFailed):
                if msg.final:
                    finished.append((RunStatus.FAILED, None, error_json(msg.error), now,
                                     msg.run_id))
                    current[1] = RunStatus.FAILED
                    result.ended.append(RunEnded(msg.run_id, function_id, RunStatus.FAILED))
                else:
                    retry_at = write.retry_at if write.retry_at is not None else now
                    requeued.append((retry_at, msg.attempt + 1, error_json(msg.error),
                                     msg.run_id))
                    current[1] = RunStatus.QUEUED
                    touched.add(function_id)
            elif isinstance(msg, RunSuspended):
                suspended.append((msg.run_id, now, function_id))
                current[1] = RunStatus.QUEUED
            elif isinstance(msg, LeaseReleased):
                requeued.append((now, None, None, msg.run_id))
                current[1] = RunStatus.QUEUED
                touched.add(function_id)

        if steps:
            db.executemany(
                "INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, "
                "retry_at, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, "
                "attempts = excluded.attempts, output = excluded.output, "
                "error = excluded.error, retry_at = excluded.retry_at, "
                "ended_at = excluded.ended_at "
                "WHERE steps.status NOT IN ('Completed', 'Failed')",
                steps,
            )
        if progressed:
            db.executemany(
                "UPDATE runs SET lease_losses = 0 WHERE id = ? AND lease_losses > 0", progressed
            )
        if finished:
            db.executemany(
                "UPDATE runs SET status = ?, output = ?, error = ?, ended_at = ?, "
                "session_id = NULL WHERE id = ?",
                finished,
            )
        if requeued:
            db.executemany(
                "UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ?, "
                "attempt = COALESCE(?, attempt), error = COALESCE(?, error) WHERE id = ?",
                requeued,
            )
        for run_id, now_, function_id in suspended:
            # Wake when the earliest step retry is due; with nothing pending, at once.
            db.execute(
                "UPDATE runs SET status = 'Queued', session_id = NULL, available_at = "
                "COALESCE((SELECT MIN(retry_at) FROM steps WHERE run_id = ?1 "
                "AND status = 'Retrying'), ?2) WHERE id = ?1",
                (run_id, now_),
            )
            touched.add(function_id)

    def _apply_returns(self, db: sqlite3.Connection, batch: WriteBatch, touched: set[str]) -> None:
        for ret in batch.returns:
            row = db.execute(
                "UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ? "
                "WHERE id = ? AND fence = ? AND status = 'Running' RETURNING function_id",
                (batch.now, ret.run_id, ret.fence),
            ).fetchone()
            if row:
                touched.add(row[0])

    def _apply_releases(
        self, db: sqlite3.Connection, batch: WriteBatch, result: WriteResult, touched: set[str]
    ) -> None:
        now = batch.now
        for release in batch.releases:
            rows = db.execute(
                "SELECT id, function_id, lease_losses FROM runs "
                "WHERE session_id = ? AND status = 'Running'",
                (release.session_id,),
            ).fetchall()
            for run_id, function_id, losses in rows:
                losses += 1 if release.lost else 0
                if losses >= MAX_LEASE_LOSSES:
                    error = ErrorInfo(
                        name="LeaseLost",
                        message=(
                            f"the run lost its worker {losses} times in a row without progress "
                            f"(last: {release.reason}); a step may be crashing its worker"
                        ),
                    )
                    db.execute(
                        "UPDATE runs SET status = 'Failed', error = ?, ended_at = ?, "
                        "session_id = NULL, lease_losses = ? WHERE id = ?",
                        (error_json(error), now, losses, run_id),
                    )
                    result.ended.append(RunEnded(run_id, function_id, RunStatus.FAILED))
                else:
                    db.execute(
                        "UPDATE runs SET status = 'Queued', session_id = NULL, "
                        "available_at = ?, lease_losses = ? WHERE id = ?",
                        (now, losses, run_id),
                    )
                    touched.add(function_id)

    def _claim(
        self, db: sqlite3.Connection, batch: WriteBatch, result: WriteResult, wanted: set[str]
    ) -> None:
        now = batch.now
        workers = [w for w in batch.claims if w.free > 0]
        served: dict[str, int] = {}
        for w in workers:
            for fn in w.functions:
                served[fn] = served.get(fn, 0) + w.free
        candidates: list[tuple[float, str, str]] = []
        for fn in wanted:
            limit = served.get(fn, 0)
            if limit <= 0:
                continue
            rows = db.execute(
                "SELECT available_at, id, function_id FROM runs WHERE status = 'Queued' "
                "AND function_id = ? AND available_at <= ? ORDER BY available_at LIMIT ?",
                (fn, now, limit),
            ).fetchall()
            if len(rows) < limit:
                result.drained_functions.add(fn)
            candidates.extend(rows)
        if not candidates:
            return
        candidates.sort()
        for run_id, session_id in dispatch.assign(workers, [(c[1], c[2]) for c in candidates]):
            row = db.execute(
                "UPDATE runs SET status = 'Running', fence = fence + 1, session_id = ?, "
                "started_at = COALESCE(started_at, ?) WHERE id = ? "
                "RETURNING fence, function_id, attempt, started_at",
                (session_id, now, run_id),
            ).fetchone()
            fence, function_id, attempt, started_at = row
            events = [
                r[0]
                for r in db.execute(
                    "SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq "
                    "WHERE re.run_id = ? ORDER BY re.position",
                    (run_id,),
                )
            ]
            memos: dict[str, StepMemo] = {}
            attempts: dict[str, int] = {}
            deferred: list[str] = []
            # A run leased for the first time has no steps; skip the lookup.
            if started_at != now or fence > 1:
                for step_id, status, output, error, tries, retry_at in db.execute(
                    "SELECT step_id, status, output, error, attempts, retry_at FROM steps "
                    "WHERE run_id = ?",
                    (run_id,),
                ):
                    if status == StepStatus.COMPLETED:
                        memos[step_id] = StepMemo(output=output)
                    elif status == StepStatus.FAILED:
                        memos[step_id] = StepMemo(error=error_from_json(error))
                    else:
                        attempts[step_id] = tries
                        if retry_at is not None and retry_at > now:
                            deferred.append(step_id)
            result.leases.append(
                Lease(run_id, fence, session_id, function_id, events, memos, attempts, attempt,
                      deferred)
            )

    async def register_app(self, app: AppManifest, *, now: float) -> list[FunctionRecord]:
        records: list[FunctionRecord] = await self._on(self._writer, self._register, app, now)
        return records

    def _register(self, app: AppManifest, now: float) -> list[FunctionRecord]:
        from pydantic import TypeAdapter

        from protocol.manifest import FunctionConfig

        adapter = TypeAdapter(FunctionConfig)
        db = self._w
        assert db is not None
        records = []
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO apps (id, version, registered_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                "registered_at = excluded.registered_at",
                (app.id, app.version, now),
            )
            db.execute("UPDATE functions SET active = 0 WHERE app_id = ?", (app.id,))
            for fn in app.functions:
                config = adapter.dump_python(fn, mode="json")
                full_id = f"{app.id}/{fn.id}"
                db.execute(
                    "INSERT INTO functions (id, app_id, config, active, updated_at) "
                    "VALUES (?, ?, ?, 1, ?) ON CONFLICT (id) DO UPDATE SET "
                    "config = excluded.config, active = 1, updated_at = excluded.updated_at",
                    (full_id, app.id, json.dumps(config), now),
                )
                records.append(FunctionRecord(full_id, app.id, app.version, config, True, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return records

    async def recover(self, *, now: float) -> int:
        count: int = await self._on(self._writer, self._recover, now)
        return count

    def _recover(self, now: float) -> int:
        db = self._w
        assert db is not None
        # One gateway owns a SQLite file, so every lease in it died with the previous process.
        cur = db.execute(
            "UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ? "
            "WHERE status = 'Running'",
            (now,),
        )
        return cur.rowcount

    # --- reads ---------------------------------------------------------------------------

    async def functions(self) -> list[FunctionRecord]:
        records: list[FunctionRecord] = await self._on(self._reader, self._functions)
        return records

    def _functions(self) -> list[FunctionRecord]:
        db = self._r
        assert db is not None
        return [
            FunctionRecord(fid, app_id, version or "", json.loads(config), bool(active), updated)
            for fid, app_id, version, config, active, updated in db.execute(
                "SELECT f.id, f.app_id, a.version, f.config, f.active, f.updated_at "
                "FROM functions f LEFT JOIN apps a ON a.id = f.app_id ORDER BY f.id"
            )
        ]

    async def get_run(self, run_id: str) -> RunRecord | None:
        record: RunRecord | None = await self._on(self._reader, self._get_run, run_id)
        return record

    def _get_run(self, run_id: str) -> RunRecord | None:
        db = self._r
        assert db is not None
        row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else self._with_steps(db, self._run(row))

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        records: list[RunRecord] = await self._on(self._reader, self._runs_for_event, event_id)
        return records

    def _runs_for_event(self, event_id: str) -> list[RunRecord]:
        db = self._r
        assert db is not None
        rows = db.execute(
            f"SELECT {', '.join('r.' + c.strip() for c in _RUN_COLUMNS.split(','))} "
            "FROM events e JOIN run_events re ON re.event_seq = e.seq "
            "JOIN runs r ON r.id = re.run_id WHERE e.id = ? ORDER BY r.id",
            (event_id,),
        ).fetchall()
        return [self._with_steps(db, self._run(row)) for row in rows]

    async def list_runs(
        self, *, function_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        page: RunPage = await self._on(
            self._reader, self._list_runs, function_id, status, limit, cursor
        )
        return page

    def _list_runs(
        self, function_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        db = self._r
        assert db is not None
        where, args = [], []
        if function_id is not None:
            where.append("function_id = ?")
            args.append(function_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if cursor is not None:
            where.append("id < ?")
            args.append(cursor)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = db.execute(sql, (*args, limit + 1)).fetchall()
        runs = [self._with_steps(db, self._run(row)) for row in rows[:limit]]
        return RunPage(runs, runs[-1].id if len(rows) > limit else None)

    @staticmethod
    def _run(row: tuple[Any, ...]) -> RunRecord:
        (rid, fn, status, fence, attempt, event_ids, output, error, queued, started, ended,
         available) = row
        return RunRecord(
            rid, fn, status, fence, attempt, json.loads(event_ids), output,
            error_from_json(error), queued, started, ended, available,
        )

    @staticmethod
    def _with_steps(db: sqlite3.Connection, run: RunRecord) -> RunRecord:
        run.steps = [
            StepRecord(sid, kind, status, attempts, output, error_from_json(error), started,
                       ended)
            for sid, kind, status, attempts, output, error, started, ended in db.execute(
                "SELECT step_id, kind, status, attempts, output, error, started_at, ended_at "
                "FROM steps WHERE run_id = ? ORDER BY started_at, step_id",
                (run.id,),
            )
        ]
        return run
