"""What every SQL backend shares: the store methods, written once over named queries.

A backend supplies two things: :meth:`SqlStore._transaction` (run a coroutine against a
:class:`~gateway.store.db.Db` inside one transaction) and :meth:`SqlStore._read` (the same on a
read connection). Everything else, every decision included, lives here and in
:mod:`gateway.store.transaction`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import structlog
from pydantic import TypeAdapter

from gateway.flow.concurrency import slots_of
from gateway.runs import READY, RunStatus
from gateway.store import eventlog
from gateway.store import keys as keystore
from gateway.store import webhooks as webhookstore
from gateway.store.base import (
    AttemptRecord,
    ChildRun,
    FlowKeyCount,
    FunctionRecord,
    PeerNote,
    QueueWait,
    RunPage,
    RunRecord,
    RunScan,
    StepRecord,
    WriteBatch,
    WriteResult,
)
from gateway.store.db import Db, Row
from gateway.store.transaction import Transaction, Triggers, error_from_json
from gateway.transport.auth import StoredKey
from protocol import cron
from protocol.manifest import AppManifest, FunctionConfig, TriggerCron

T = TypeVar("T")

log = structlog.get_logger("tether.store")

_CONFIG: TypeAdapter[FunctionConfig] = TypeAdapter(FunctionConfig)


class SqlStore:
    """The :class:`~gateway.store.base.Store` methods over named queries."""

    shared = False

    def __init__(self) -> None:
        # Function configs, read by transactions. Owned by the store's writer: only code
        # running inside a transaction touches it (on SQLite that is the writer thread, so
        # the event loop never does).
        self._configs: dict[str, FunctionConfig | None] = {}
        # Trigger payloads of runs created and not yet leased: the writer's too.
        self._triggers = Triggers()
        self.gateway_id = ""

    async def _transaction(self, fn: Callable[[Db], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[Db], Awaitable[T]]) -> T:
        raise NotImplementedError

    # --- writes --------------------------------------------------------------------------

    #: Exceptions that mean the store itself failed (not one item of a batch): a batch that
    #: raises one fails whole, and is not applied again item by item.
    store_errors: tuple[type[BaseException], ...] = (OSError, MemoryError)

    async def write(self, batch: WriteBatch) -> WriteResult:
        """Apply the batch in one transaction; if an item raises, apply it again with each
        item in a savepoint, so only the item that fails is refused (``result.errors``)."""
        async def apply(db: Db) -> WriteResult:
            result = await Transaction(db, batch, self._config, self._triggers).run()
            await self._publish(db, result, registered=False)
            return result

        async def apply_isolated(db: Db) -> WriteResult:
            result = await Transaction(db, batch, self._config,
                                       self._triggers).run_isolated(self.store_errors)
            await self._publish(db, result, registered=False)
            return result

        try:
            return await self._transaction(apply)
        except self.store_errors:
            raise
        except Exception as exc:
            log.warning("batch_isolating", error=f"{type(exc).__name__}: {exc}",
                        events=len(batch.events), checkpoints=len(batch.checkpoints))
        return await self._transaction(apply_isolated)

    async def idle(self) -> None:
        """Nothing to do by default (see :meth:`gateway.store.base.Store.idle`)."""

    async def _publish(self, db: Db, result: WriteResult | None, *, registered: bool) -> None:
        """Tell other gateways what this transaction changed (nothing to do for one gateway)."""

    async def keepalive(self, gateway_id: str, *, now: float, ttl: float) -> set[str]:
        return set()

    async def publish_workers(self, gateway_id: str, workers: str) -> None:
        return None  # one gateway: its registry is the whole truth

    async def peer_workers(self, gateway_id: str, *, since: float) -> list[tuple[str, float, str]]:
        return []

    async def subscribe(self, gateway_id: str, callback: Callable[[PeerNote], None]) -> None:
        self.gateway_id = gateway_id

    async def leave(self, gateway_id: str) -> None:
        return None

    def forget_configs(self) -> None:
        """Functions were registered elsewhere: read their configs again when needed.

        Only for a shared store, whose transactions run on the event loop like its caller.
        """
        self._configs.clear()

    async def _config(self, db: Db, function_id: str) -> FunctionConfig | None:
        """A function's config (None when unknown or inactive), cached per process."""
        if function_id not in self._configs:
            raw = await db.fetchval("function_config", function_id)
            self._configs[function_id] = (
                None if raw is None else _CONFIG.validate_python(json.loads(raw))
            )
        return self._configs[function_id]

    async def register_app(self, app: AppManifest, *, now: float,
                           keep: Collection[str] = ()) -> list[FunctionRecord]:
        async def register(db: Db) -> list[FunctionRecord]:
            await db.execute("upsert_app", app.id, app.version, now)
            await db.execute("deactivate_functions", app.id)
            if keep:
                await db.executemany("activate_function", [(fid,) for fid in sorted(keep)])
            records = []
            for fn in app.functions:
                config = _CONFIG.dump_python(fn, mode="json")
                full_id = f"{app.id}/{fn.id}"
                if fn.priority is not None:
                    await _rank_queued(db, full_id)
                await db.execute("upsert_function", full_id, app.id, json.dumps(config), now)
                records.append(FunctionRecord(full_id, app.id, app.version, config, True, now))
            await _sync_schedules(db, app, keep, now)
            await self._publish(db, None, registered=True)
            # Inside the transaction: the cache's owner is whoever runs transactions.
            self._forget_app(app.id)
            return records

        records = await self._transaction(register)
        if self.shared:
            # Transactions run on the loop here, and may overlap: one that read the old
            # config before this commit must not leave it cached.
            self._forget_app(app.id)
        return records

    async def activate_functions(self, function_ids: Collection[str], *, now: float) -> None:
        async def activate(db: Db) -> None:
            await db.executemany("activate_function", [(fid,) for fid in sorted(function_ids)])
            for fid in sorted(function_ids):
                raw = await db.fetchval("function_config", fid)
                if raw is not None:
                    await _add_schedules(db, fid, _CONFIG.validate_python(json.loads(raw)), now)
            await self._publish(db, None, registered=True)
            self._forget(function_ids)  # inside the transaction: see register_app

        await self._transaction(activate)
        if self.shared:
            self._forget(function_ids)

    def _forget(self, function_ids: Collection[str]) -> None:
        for fid in function_ids:
            self._configs.pop(fid, None)

    def _forget_app(self, app_id: str) -> None:
        for fid in [fid for fid in self._configs if fid.startswith(f"{app_id}/")]:
            del self._configs[fid]

    # --- reads ---------------------------------------------------------------------------

    async def functions(self) -> list[FunctionRecord]:
        async def read(db: Db) -> list[FunctionRecord]:
            return [
                FunctionRecord(fid, app_id, version or "", json.loads(config), bool(active),
                               updated)
                for fid, app_id, version, config, active, updated in await db.fetch(
                    "all_functions")
            ]

        return await self._read(read)

    async def get_run(self, run_id: str, now: float | None = None) -> RunRecord | None:
        async def read(db: Db) -> RunRecord | None:
            row = await db.fetchone("get_run", run_id)
            if row is None:
                return None
            run = (await _with_steps(db, [_run(row)]))[0]
            if (now is not None and run.status in READY and run.available_at is not None
                    and run.available_at <= now):
                run.queue = await self._queue_wait(db, run, now)
            return run

        return await self._read(read)

    async def _queue_wait(self, db: Db, run: RunRecord, now: float) -> QueueWait | None:
        row = await db.fetchone("run_concurrency", run.id, now)
        config = await self._config(db, run.function_id)
        if row is None or config is None or not config.concurrency:
            return None
        queue, shown, ahead = row
        slots = slots_of(queue)
        counts: dict[str, int] = dict(await db.fetch("slots_running", list(set(slots))))
        limits: dict[str, int] = {}
        for s, option in zip(slots, config.concurrency, strict=False):
            limits[s] = min(option.limit, limits.get(s, option.limit))
        tightest = max(slots, key=lambda s: int(counts.get(s, 0)) - limits[s])
        running = int(counts.get(tightest, 0))
        return QueueWait(shown, int(ahead), running, running >= limits[tightest])

    async def concurrency_keys(self, function_id: str, limit: int
                               ) -> list[tuple[str | None, int, int]]:
        async def read(db: Db) -> list[tuple[str | None, int, int]]:
            return [(shown, int(waiting), int(running)) for _, shown, waiting, running
                    in await db.fetch("conc_key_counts", function_id, limit)]

        return await self._read(read)

    async def trace_parents(self, run_ids: Collection[str]) -> dict[str, str | None]:
        async def read(db: Db) -> dict[str, str | None]:
            rows = await db.fetch("trace_parents_of_runs", sorted(run_ids))
            return {row[0]: row[1] for row in rows}

        return await self._read(read)

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        async def read(db: Db) -> list[RunRecord]:
            return await _with_steps(db, [_run(r) for r in await db.fetch("runs_for_event",
                                                                          event_id)])

        return await self._read(read)

    async def has_event(self, event_id: str) -> bool:
        async def read(db: Db) -> bool:
            return await db.fetchval("event_exists", event_id) is not None

        return await self._read(read)

    async def list_runs(
        self, *, function_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        async def read(db: Db) -> RunPage:
            # Run ids are ULIDs (0-9, A-Z): "Z" * 27 sorts after every one of them.
            args: list[Any] = [cursor or "Z" * 27, limit + 1]
            name = "list_runs"
            if function_id is not None and status is not None:
                name, args = "list_runs_by_function_status", [*args, function_id, status]
            elif function_id is not None:
                name, args = "list_runs_by_function", [*args, function_id]
            elif status is not None:
                name, args = "list_runs_by_status", [*args, status]
            rows = await db.fetch(name, *args)
            runs = await _with_steps(db, [_run(row) for row in rows[:limit]])
            return RunPage(runs, runs[-1].id if len(rows) > limit else None)

        return await self._read(read)

    async def queue_depths(self, *, now: float) -> list[tuple[str, int, float | None]]:
        async def read(db: Db) -> list[tuple[str, int, float | None]]:
            return [(fid, int(count), oldest)
                    for fid, count, oldest in await db.fetch("queue_depths", now)]

        return await self._read(read)

    # --- the dashboard ------------------------------------------------------------------

    async def scan_runs(self, scan: RunScan) -> list[tuple[str, bytes | None]]:
        # Each status is read through the index that keeps it in id order (with or without
        # a function), and several are merged here: no sort of every run in the range.
        statuses = sorted(set(scan.statuses))
        every = len(statuses) == len(RunStatus)
        if scan.function_id is None:
            name = "scan_runs" if every else "scan_runs_by_status"
        else:
            name = "scan_runs_by_function" if every else "scan_runs_by_function_status"
        by_function = [] if scan.function_id is None else [scan.function_id]

        async def read(db: Db) -> list[tuple[str, bytes | None]]:
            rows: list[Row] = []
            for status in [] if every else statuses:
                rows.extend(await db.fetch(name, *by_function, status, scan.low, scan.high,
                                           scan.limit))
            if every:
                rows = await db.fetch(name, *by_function, scan.low, scan.high, scan.limit)
            if not every and len(statuses) > 1:
                rows = sorted(rows, key=lambda row: row[0], reverse=True)[:scan.limit]
            return [(rid, None if payload is None else bytes(payload)) for rid, payload in rows]

        return await self._read(read)

    async def runs_by_ids(self, run_ids: list[str]) -> list[RunRecord]:
        async def read(db: Db) -> list[RunRecord]:
            if not run_ids:
                return []
            return await _with_steps(db, [_run(r) for r in await db.fetch("runs_by_ids",
                                                                          list(run_ids))])

        return await self._read(read)

    async def status_counts(self, function_id: str | None = None) -> dict[str, dict[str, int]]:
        async def read(db: Db) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            if function_id is None:
                for fid, status, count in await db.fetch("status_counts"):
                    counts.setdefault(fid, {})[status] = int(count)
            else:
                counts[function_id] = {status: int(count) for status, count in await db.fetch(
                    "status_counts_of_function", function_id)}
            return counts

        return await self._read(read)

    async def recent_counts(self, since_id: str) -> dict[str, dict[str, int]]:
        async def read(db: Db) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            for fid, status, count in [*await db.fetch("live_counts"),
                                       *await db.fetch("ended_counts_since", since_id)]:
                counts.setdefault(fid, {})[status] = int(count)
            return counts

        return await self._read(read)

    async def flow_key_counts(self, function_id: str, limit: int) -> list[FlowKeyCount]:
        """The keys of holds (throttle, debounce, batch: ``runs.hold_key``) and the function's
        concurrency keys (``runs.cqueue``), busiest first."""
        async def read(db: Db) -> list[FlowKeyCount]:
            found = [FlowKeyCount(option, key, int(queued), int(running))
                     for option, key, queued, running in await db.fetch(
                         "flow_key_counts", function_id, limit)]
            found += [FlowKeyCount("concurrency", shown, int(waiting), int(running))
                      for _, shown, waiting, running in await db.fetch(
                          "conc_key_counts", function_id, limit)]
            found.sort(key=lambda k: (-(k.queued + k.running), k.option, k.key or ""))
            return found[:limit]

        return await self._read(read)

    async def step_attempts(self, run_id: str) -> list[AttemptRecord]:
        async def read(db: Db) -> list[AttemptRecord]:
            return [AttemptRecord(sid, int(n), status, started, ended, retry,
                                  error_from_json(error))
                    for sid, n, status, started, ended, retry, error in await db.fetch(
                        "step_attempts_of_run", run_id)]

        return await self._read(read)

    async def child_runs(self, run_id: str) -> list[ChildRun]:
        async def read(db: Db) -> list[ChildRun]:
            return [ChildRun(*row) for row in await db.fetch("child_runs", run_id)]

        return await self._read(read)

    # --- keys ----------------------------------------------------------------------------

    async def active_keys(self) -> list[StoredKey]:
        """The event and API keys made with ``python -m gateway keys`` and not revoked."""
        return await self._read(keystore.active)

    # --- webhooks and the event log ------------------------------------------------------

    async def add_webhook(self, record: webhookstore.WebhookRecord) -> None:
        await self._transaction(lambda db: webhookstore.insert(db, record))

    async def get_webhook(self, webhook_id: str) -> webhookstore.WebhookRecord | None:
        return await self._read(lambda db: webhookstore.get(db, webhook_id))

    async def list_webhooks(self) -> list[webhookstore.WebhookRecord]:
        return await self._read(webhookstore.list_all)

    async def delete_webhook(self, webhook_id: str) -> bool:
        return await self._transaction(lambda db: webhookstore.delete(db, webhook_id))

    async def event_log(self, *, name: str | None, limit: int, before: int | None
                        ) -> eventlog.EventPage:
        return await self._read(lambda db: eventlog.page(db, name=name, limit=limit,
                                                          before=before))

    async def get_event(self, event_id: str) -> eventlog.EventRecord | None:
        return await self._read(lambda db: eventlog.get(db, event_id))

    async def schedules(self) -> dict[tuple[str, str, str], float]:
        """Every cron schedule's next tick: (function id, cron, tz) -> epoch seconds."""
        async def read(db: Db) -> dict[tuple[str, str, str], float]:
            return {(fid, expr, tz): float(at)
                    for fid, expr, tz, at in await db.fetch("all_schedules")}

        return await self._read(read)


async def _rank_queued(db: Db, function_id: str) -> None:
    """A function registered with a priority it did not have: its runs queued meanwhile get
    an arrival (``fill_arrivals``), as its runs created from now on do, so its claim
    (``ready_runs_by_priority``) finds them. Read before the new config is written."""
    stored = await db.fetchval("stored_function_config", function_id)
    if stored is None or json.loads(stored).get("priority") is None:
        await db.execute("fill_arrivals", function_id)


async def _sync_schedules(db: Db, app: AppManifest, keep: Collection[str], now: float) -> None:
    """The app's schedules become its cron triggers: new ones tick from now on, removed ones
    (a trigger or function gone) stop, unchanged ones keep their next tick. Functions in
    ``keep`` (served by other workers) keep theirs."""
    wanted = {(f"{app.id}/{fn.id}", t.cron, t.tz) for fn in app.functions
              for t in fn.triggers if isinstance(t, TriggerCron)}
    for row in await db.fetch("app_schedules", app.id):
        key = (row[0], row[1], row[2])
        if key not in wanted and key[0] not in keep:
            await db.execute("delete_schedule", *key)
    for fn in app.functions:
        await _add_schedules(db, f"{app.id}/{fn.id}", fn, now)


async def _add_schedules(db: Db, function_id: str, config: FunctionConfig, now: float) -> None:
    for trigger in config.triggers:
        if isinstance(trigger, TriggerCron):
            first = cron.next_tick(cron.parse(trigger.cron, trigger.tz), now)
            await db.execute("insert_schedule", function_id, trigger.cron, trigger.tz, first)

def _run(row: Row) -> RunRecord:
    (rid, fn, status, fence, attempt, event_ids, output, error, queued, started, ended,
     available, parent) = row
    return RunRecord(
        rid, fn, status, fence, attempt, json.loads(event_ids),
        None if output is None else bytes(output), error_from_json(error), queued, started,
        ended, available, parent,
    )


async def _with_steps(db: Db, runs: list[RunRecord]) -> list[RunRecord]:
    """Fill in the runs' steps, warnings and flow-control notes: two queries for a whole
    page, not two per run."""
    if not runs:
        return runs
    ids = [run.id for run in runs]
    by_id = {run.id: run for run in runs}
    for rid, warnings, skipped, hold_option, hold_key in await db.fetch("runs_notes", ids):
        run = by_id[rid]
        run.warnings = json.loads(warnings) if warnings else []
        run.skipped = json.loads(skipped) if skipped else None  # only flow control skips
        if hold_option is not None:  # the option (and key) that set its available_at
            run.hold = (hold_option, hold_key)
    for rid, sid, kind, status, attempts, output, error, started, ended in await db.fetch(
            "runs_steps", ids):
        by_id[rid].steps.append(
            StepRecord(sid, kind, status, attempts, None if output is None else bytes(output),
                       error_from_json(error), started, ended))
    return runs
