"""Debounce and batch at run creation: the store's side of :mod:`.debounce` and :mod:`.batch`.

Both gather a key's events into one pending run, a *window*, that starts at a deadline (or at
once when it fills up). The window is stored, never kept in memory: its run is an ordinary
``Queued`` run whose ``available_at`` is the deadline (so the readiness machinery starts it
on time and nobody polls) and whose ``run_events`` are the window's events; a
``flow_windows`` row per (function, key) names it. An event of the key locks that row
(an upsert, held until commit on PostgreSQL), then the run's row, so gateways sharing the
database place a key's events one after the other, and a claim that leased the run first
closes the window: a kill -9 or a restart loses no event and changes no decision.

A window is open while its run is ``Queued``, never leased, and not yet due; an event that
finds it due (or started, or cancelled) opens the next one. Decisions stay in the pure
modules; this reads and writes their state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.flow import batch as batching
from gateway.flow import debounce as debouncing
from gateway.flow.keys import Key, KeyFailure, key_for
from gateway.runs import RunStatus
from gateway.store.db import Db
from protocol.errors import ExpressionError
from protocol.expressions import evaluate
from protocol.manifest import MAX_RUN_EVENTS, FunctionConfig

log = structlog.get_logger("tether.flow")

#: Closed ``flow_windows`` rows one sweep drops at most (once per function a transaction).
SWEEP_LIMIT = 1000
DEBOUNCE = "debounce"
BATCH = "batch"


@dataclass(frozen=True)
class Placement:
    """Where an event of a windowed function goes.

    ``own``: not windowed (a batch's ``if_`` said no): a run of its own, now.
    ``failure``: the key expression failed: a run of its own, failed with the reason.
    Otherwise the event is in window ``run_id`` (None: open one, the caller creates its run),
    whose events are ``events`` (ids, arrival order) and which starts at ``start``;
    ``open`` says whether the window stays open after this event (else it starts now).
    """

    option: str
    own: bool = False
    failure: str | None = None
    key: Key | None = None
    run_id: str | None = None
    events: tuple[str, ...] = ()
    replace: bool = False  # the window's events are replaced by this one (debounce)
    first_at: float = 0.0
    start: float = 0.0
    open: bool = False


def applies(config: FunctionConfig) -> bool:
    return config.debounce is not None or config.batch is not None


def _state(option: str, first_at: float, deadline: float, events: tuple[str, ...]
           ) -> debouncing.Window | batching.OpenBatch:
    if option == DEBOUNCE:
        return debouncing.Window(first_at, deadline, events)
    return batching.OpenBatch(first_at, events)


@dataclass
class Windows:
    """One transaction's window work: which functions' closed windows it swept already."""

    swept: set[str] = field(default_factory=set)

    async def place(self, db: Db, function_id: str, config: FunctionConfig, event_id: str,
                    event: dict[str, Any], now: float) -> Placement:
        """Decide where ``event`` goes, locking its key's window (see the module docstring)."""
        option = DEBOUNCE if config.debounce is not None else BATCH
        expression = config.debounce.key if config.debounce is not None else (
            config.batch.key if config.batch is not None else None)
        if config.batch is not None and config.batch.if_ is not None:
            try:
                batched = evaluate(config.batch.if_, {"event": event}) is True
            except Exception as exc:  # a user's expression must never crash the batch
                reason = exc.message if isinstance(exc, ExpressionError) else repr(exc)
                log.warning("batch_if_failed", function_id=function_id, event_id=event_id,
                            reason=reason, outcome="the event gets a run of its own")
                batched = False
            if not batched:
                return Placement(option, own=True)
        found = key_for(expression, event, scope=f"{option}:{function_id}")
        if isinstance(found, KeyFailure):
            return Placement(option, failure=f"{option} {found.reason}")
        if function_id not in self.swept:
            self.swept.add(function_id)
            await db.execute("sweep_windows", function_id, now, SWEEP_LIMIT)
        locked = await db.fetchone("lock_window", function_id, found.hash)
        assert locked is not None  # an upsert's RETURNING
        run_id, first_at, deadline = locked
        window = None
        if run_id is not None:
            row = await db.fetchone("window_run", run_id)
            if row is not None and row[0] == RunStatus.QUEUED and row[1] == 0:
                window = _state(option, first_at, deadline, tuple(json.loads(row[2])))
            else:
                run_id = None  # started, cancelled or gone: the window is closed
        if config.debounce is not None:
            d = config.debounce
            rules = debouncing.DebounceConfig(
                float(d.period), None if d.timeout is None else float(d.timeout),  # type: ignore[arg-type]
                d.collect, MAX_RUN_EVENTS)
            assert window is None or isinstance(window, debouncing.Window)
            joined = window is not None and not debouncing.due(window, now)
            step = debouncing.on_event(window, event_id, now, rules)
            last = step.pending if step.pending is not None else step.start[-1]
            events, opened = last.events, step.pending is not None
            start = last.deadline if opened else now
            replace = not d.collect
        else:
            assert config.batch is not None and (
                window is None or isinstance(window, batching.OpenBatch))
            limits = batching.BatchConfig(config.batch.max_size,
                                          float(config.batch.timeout))  # type: ignore[arg-type]
            joined = window is not None and not batching.due(window, now, limits)
            bstep = batching.on_event(window, event_id, now, limits)
            opened = bstep.open is not None
            events = bstep.open.events if bstep.open is not None else bstep.start[-1]
            start = bstep.open.deadline(limits) if bstep.open is not None else now
            replace = False
        first = window.first_at if joined and window is not None else now
        return Placement(option, key=found, run_id=run_id if joined else None, events=events,
                         replace=replace, first_at=first, start=start, open=opened)
