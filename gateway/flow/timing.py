"""Throttle and priority at run creation: the store's side of :mod:`throttle` and :mod:`priority`.

Called by the transaction that creates a run, inside it: the throttle key's TAT is read under
a row lock (PostgreSQL ``FOR UPDATE``; SQLite has one writer), moved past the run's reserved
start, and the run's ``available_at`` becomes that start, so the readiness machinery starts it
on time and nobody polls. Decisions stay in the pure modules; this only reads and writes state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from gateway.flow.keys import KeyFailure, key_for
from gateway.flow.priority import priority_of
from gateway.flow.throttle import ThrottleConfig, admit, earliest_start
from gateway.scheduler.holds import THROTTLE
from gateway.store.db import Db
from protocol.manifest import FunctionConfig

log = structlog.get_logger("tether.flow")



@dataclass(frozen=True)
class Timing:
    """When a new run may start, what holds it, its priority, or why it fails at once."""

    start: float
    hold: tuple[str, str] | None = None  # (option, key as shown)
    priority: int = 0
    failure: str | None = None  # its throttle key could not be evaluated: the run fails


async def timing(db: Db, function_id: str, config: FunctionConfig, event: dict[str, Any],
                 start: float, now: float,
                 tats: dict[tuple[str, str], float | None] | None = None) -> Timing:
    """The start of a run of ``function_id`` for ``event``, not before ``start``.

    ``tats`` caches the transaction's throttle keys: a key is read (and locked) once per
    batch, however many of its events the batch holds.
    """
    priority = 0
    if config.priority is not None:
        result = priority_of(config.priority.run, event)
        priority = result.seconds
        if result.error is not None:
            log.warning("priority expression failed; the run gets priority 0",
                        function_id=function_id, reason=result.error)
    throttle = config.throttle
    if throttle is None:
        return Timing(start, priority=priority)
    key = key_for(throttle.key, event, scope=f"fn:{function_id}")
    if isinstance(key, KeyFailure):
        return Timing(start, priority=priority, failure=f"throttle {key.reason}")
    gcra = ThrottleConfig(throttle.limit, float(throttle.period),  # type: ignore[arg-type]
                          throttle.burst)
    row = (function_id, key.hash)
    if tats is not None and row in tats:
        tat = tats[row]
    else:
        tat = await db.fetchval("lock_throttle_tat", function_id, key.hash)
    if start > now:
        # A delayed event (ts ahead): wait for the slots reserved before it, reserve none, or
        # one event a day ahead would hold every later event of its key back until then.
        at = earliest_start(tat, start, gcra)
    else:
        admitted = admit(tat, start, gcra)
        await db.execute("set_throttle_tat", admitted.tat, function_id, key.hash)
        tat = admitted.tat
        at = admitted.start_at
    if tats is not None:
        tats[row] = tat
    hold = (THROTTLE, key.display) if at > start else None
    return Timing(at, hold=hold, priority=priority)
