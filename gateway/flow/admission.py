"""Admission of a new run: idempotency, rate limit and singleton, over the store's state.

The store-facing glue of :mod:`.idempotency`, :mod:`.rate_limit` and :mod:`.singleton`, called
by the transaction that creates the run (``Transaction.create_run``). Each option's key row in
``flow_keys`` is taken with ``lock_flow_key`` (an upsert: on PostgreSQL it holds the row until
commit), so two gateways admitting events of one key decide one after the other, and a
restart changes nothing: the state is all in the store.

The options are decided in a fixed order, idempotency, rate limit, singleton (keys locked in
that order too), and state is written only for a run that starts: an event the rate limit
refuses does not take the idempotency key, nor use a rate-limit slot when its key is held.
A key expression that fails for an event skips the run with the expression's error; nothing
is locked or written for it.

A replay (``POST /v1/runs/{id}/replay``) is the user asking for a run again: only singleton
applies to it (its key would be held by the run it replays for 24 h, which would make
replaying an idempotent function impossible).

Cheap on the hot path: a function with none of the options costs one attribute test; a key
is read (and locked) once per batch, its new value written with the batch's runs, and a
singleton's live run is looked up in the store only when no run of its key was created in the
batch since the last write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.flow import idempotency, rate_limit, singleton
from gateway.flow.keys import Key, KeyFailure, key_for
from gateway.store.db import Db
from protocol.durations import human
from protocol.manifest import FunctionConfig


@dataclass(frozen=True)
class Skip:
    """Why a run was skipped: SPEC §4's ``skipped`` object."""

    reason: str  # "idempotency", "rate_limit" or "singleton"
    key: str | None  # the key's value (its first characters), None without a key expression
    message: str

    def json(self) -> str:
        return json.dumps({"reason": self.reason, "key": self.key, "message": self.message})


@dataclass(frozen=True)
class Admission:
    """Start the run unless ``skip``; first cancel ``cancel`` (a singleton's live run).

    ``singleton_key`` is the key hash the new run holds while it is live.
    """

    skip: Skip | None = None
    cancel: str | None = None
    singleton_key: str | None = None


#: What a function without any of these options gets: no work at all.
ADMIT = Admission()
#: Expired ``flow_keys`` rows one sweep drops at most (a sweep runs once per function a batch).
SWEEP_LIMIT = 1000


def applies(config: FunctionConfig) -> bool:
    """Does admission have anything to decide for this function? (The hot path asks first.)"""
    return bool(config.idempotency or config.rate_limit or config.singleton)


def _display(expression: str | None, key: Key) -> str | None:
    return None if expression is None else key.display


_Row = tuple[str, str, str]  # (function id, kind, key hash) of a flow_keys row


@dataclass
class Admissions:
    """One transaction's admissions: the key rows it locked, and what it has yet to write.

    :meth:`flush` writes the pending state; the transaction calls it with its runs (inside the
    savepoint of the item that created them), and :meth:`reset` forgets what a failed item
    did, as the savepoint's rollback did in the store.
    """

    values: dict[_Row, float | None] = field(default_factory=dict)
    pending: dict[_Row, float | None] = field(default_factory=dict)
    #: singleton key hash -> the run of the key created since the last flush
    unflushed: dict[str, str] = field(default_factory=dict)
    singleton_keys: list[tuple[str, str]] = field(default_factory=list)  # (key hash, run id)
    swept: set[str] = field(default_factory=set)

    async def _lock(self, db: Db, row: _Row) -> float | None:
        """The row's value, locked for this transaction (read once: then it is ours)."""
        if row not in self.values:
            self.values[row] = await db.fetchval("lock_flow_key", *row)
        return self.values[row]

    def _set(self, row: _Row, value: float | None) -> None:
        self.values[row] = self.pending[row] = value

    async def flush(self, db: Db) -> None:
        """Write the keys' new state and the singleton keys of the runs (after their insert)."""
        if self.pending:
            await db.executemany("set_flow_key", [
                (value, *row) for row, value in self.pending.items()])
            self.pending = {}
        if self.singleton_keys:
            await db.executemany("set_singleton_key", self.singleton_keys)
            self.singleton_keys = []
        self.unflushed = {}

    def reset(self) -> None:
        self.values, self.pending, self.unflushed, self.singleton_keys = {}, {}, {}, []

    def started(self, run_id: str, admission: Admission) -> None:
        """The admitted run was created (its row is written with the batch's runs)."""
        if admission.singleton_key is not None:
            self.unflushed[admission.singleton_key] = run_id
            self.singleton_keys.append((admission.singleton_key, run_id))

    async def admit(self, db: Db, function_id: str, config: FunctionConfig,
                    event: dict[str, Any], now: float, *, replay: bool = False) -> Admission:
        """Decide whether a run of ``function_id`` for ``event`` starts, in the transaction."""
        if function_id not in self.swept:
            self.swept.add(function_id)
            await db.execute("sweep_flow_keys", function_id, now, SWEEP_LIMIT)
        idem_expr = None if replay else config.idempotency
        rate = None if replay else config.rate_limit
        single = config.singleton
        # Keys first: an expression that fails skips the run before anything is locked.
        keys: dict[str, tuple[str | None, Key]] = {}
        options: list[tuple[str, str | None]] = []
        if idem_expr is not None:
            options.append(("idempotency", idem_expr))
        if rate is not None:
            options.append(("rate_limit", rate.key))
        if single is not None:
            options.append(("singleton", single.key))
        for option, expression in options:
            found = key_for(expression, event, scope=f"{option}:{function_id}")
            if isinstance(found, KeyFailure):
                return Admission(Skip(option, None, f"{option}: {found.reason}"))
            keys[option] = (expression, found)

        writes: list[tuple[_Row, float]] = []
        if "idempotency" in keys:
            expression, key = keys["idempotency"]
            row = (function_id, "idempotency", key.hash)
            decision = idempotency.decide(await self._lock(db, row), now)
            if not decision.start:
                return Admission(Skip("idempotency", _display(expression, key), (
                    f"idempotency: key {key.display!r} already started a run in the last "
                    f"{human(idempotency.WINDOW)}; the key frees up in "
                    f"{human(decision.held_until - now)}")))
            writes.append((row, decision.held_until))
        if "rate_limit" in keys:
            assert rate is not None
            expression, key = keys["rate_limit"]
            row = (function_id, "rate_limit", key.hash)
            limits = rate_limit.RateLimitConfig(rate.limit, float(rate.period))  # type: ignore[arg-type]
            verdict = rate_limit.decide(await self._lock(db, row), now, limits)
            if not verdict.allowed:
                which = "" if expression is None else f" of key {key.display!r}"
                return Admission(Skip("rate_limit", _display(expression, key), (
                    f"rate limit: {rate.limit} runs per {human(limits.period)}{which} reached; "
                    f"the next run may start in {human(verdict.retry_at - now)}")))
            assert verdict.tat is not None
            writes.append((row, verdict.tat))
        cancel = singleton_key = None
        if "singleton" in keys:
            assert single is not None
            expression, key = keys["singleton"]
            row = (function_id, "singleton", key.hash)
            await self._lock(db, row)
            # A run of the key created since the last flush is live (nothing ends a run not
            # yet written); otherwise the store knows.
            live = self.unflushed.get(key.hash)
            if live is None:
                live = await db.fetchval("singleton_live_run", key.hash)
            choice = singleton.decide(single.mode, live)
            if choice.action is singleton.Action.SKIP:
                which = f" of key {key.display!r}" if expression is not None else ""
                return Admission(Skip("singleton", _display(expression, key), (
                    f"singleton: run {live}{which} is still live (mode 'skip'); this run was "
                    "not started")))
            if choice.action is singleton.Action.CANCEL_AND_START:
                cancel = choice.live_run
            singleton_key = key.hash
            writes.append((row, now))  # the lock's last use: swept once unused
        for row, value in writes:
            self._set(row, value)
        return Admission(None, cancel, singleton_key)
