"""The store's interface and the records that cross it.

Writes go through one method, :meth:`Store.write`, which applies a whole :class:`WriteBatch`
(events, checkpoints, lease changes and claims from many sockets and requests) in **one**
transaction and reports what happened in a :class:`WriteResult`. That is the group commit the
gateway's throughput rests on: nothing is acknowledged before its batch is on disk, and one
fsync covers everything that arrived while the previous batch was being written.

Invariants every backend keeps, inside the batch's transaction:

1. A checkpoint is applied only when its fence equals the run's current fence and the run has
   not ended. Otherwise it is refused and changes nothing.
2. A run is leased only when ready (``Queued``, ``Sleeping`` or ``Waiting``) and
   ``available_at <= now``. Leasing bumps its fence, and so does revoking a lease (its worker
   vanished, its gateway died, it was handed back): from then on the earlier lease's
   checkpoints are refused.
3. The first recorded outcome of a step wins: a completed step is never overwritten.
4. An event id seen within the dedup window stores nothing and starts nothing.

Callers pass ``now``; a store never reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from protocol.hot import AnyCheckpoint
from protocol.limits import MAX_RUN_STATE, MAX_STEP_RESULT, MAX_STEPS
from protocol.manifest import AppManifest
from protocol.messages import ErrorInfo, StepMemo

if TYPE_CHECKING:
    from gateway.store.eventlog import EventPage, EventRecord
    from gateway.store.webhooks import WebhookRecord
    from gateway.transport.auth import StoredKey

#: An event id is deduplicated for this long (SPEC §4).
DEDUP_WINDOW = 24 * 3600.0

#: A run whose lease is lost this many times in a row, without progress, fails.
MAX_LEASE_LOSSES = 10

@dataclass(frozen=True, slots=True)
class Limits:
    """SPEC §5's limits, as the gateway enforces them (``--max-*`` options).

    Workers learn ``max_steps`` and ``max_step_result`` from ``Ready`` and enforce them before
    anything is sent; the store enforces the result and state sizes again on what arrives.
    """

    max_steps: int = MAX_STEPS
    max_step_result: int = MAX_STEP_RESULT
    max_run_state: int = MAX_RUN_STATE

#: Which functions an event starts: ``(name, event as a dict) -> function ids``.
Matcher = Callable[[str, dict[str, Any]], list[str]]


@dataclass(slots=True)
class NewEvent:
    """A validated event; the store matches it to functions when it stores it."""

    id: str
    name: str
    payload: bytes  # the event as JSON: name, data, id, ts, user
    data: dict[str, Any] | None = None  # the parsed payload, when the caller has it
    #: the W3C trace context it arrived with, valid and canonical (protocol.tracecontext)
    traceparent: str | None = None


@dataclass(slots=True)
class CheckpointWrite:
    """A checkpoint from a socket, with what the engine decided about it.

    ``retry_at`` is when a failed step or function may run again; ``since`` is when the
    gateway last heard of the run before this checkpoint: a wait looks back to events
    received from then on, so an event that raced the wait is not lost.
    """

    session_id: str
    message: AnyCheckpoint
    retry_at: float | None = None
    since: float = 0.0
    #: Decided when the message arrived (:mod:`gateway.intake`), outside the transaction:
    #: why it cannot be applied (the run then fails for good), or its payload, decoded and
    #: re-encoded (``EventsSent`` events; ``InvokeRequested`` data or ``RunCompleted`` output).
    invalid: str | None = None
    events: list[NewEvent] | None = None
    data: bytes | None = None


@dataclass(slots=True)
class CancelRequest:
    """Cancel one run, or the runs ``run_ids`` (a bulk cancel, selected beforehand outside
    the transaction: see :mod:`gateway.http.bulk`). Runs already ended are skipped."""

    reason: str
    run_id: str | None = None
    run_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Revocation:
    """A lease taken from a worker (its run was cancelled): tell the worker to stop."""

    session_id: str
    run_id: str
    fence: int
    reason: str


@dataclass(slots=True)
class SessionRelease:
    """Every run leased on ``session_id`` goes back to the queue.

    ``lost`` counts it against the run's lease-loss limit (the worker vanished); a gateway
    restart does not.
    """

    session_id: str
    reason: str
    lost: bool = True


@dataclass(slots=True)
class Resume:
    """A lease a reconnecting worker (session ``session_id``) says it still works on."""

    session_id: str
    run_id: str
    fence: int


@dataclass(slots=True)
class LeaseReturn:
    """One lease handed back by its worker (rejected, or released while draining)."""

    run_id: str
    fence: int
    reason: str


@dataclass(slots=True)
class WorkerSlots:
    """A connected worker's free capacity, offered to the claim at the end of a batch."""

    session_id: str
    capacity: int
    in_flight: int
    functions: frozenset[str]
    rank: int = 0  # lower is preferred (newest app version first)

    @property
    def free(self) -> int:
        return self.capacity - self.in_flight


@dataclass(slots=True)
class WriteBatch:
    """Everything to apply in one transaction, in this order."""

    now: float
    events: list[NewEvent] = field(default_factory=list)
    #: How many of ``events`` each request brought, in order: a request that cannot be
    #: stored is refused alone (empty: each event is its own request).
    event_groups: list[int] = field(default_factory=list)
    #: Leases reconnecting workers still hold: applied before the checkpoints.
    resumes: list[Resume] = field(default_factory=list)
    checkpoints: list[CheckpointWrite] = field(default_factory=list)
    returns: list[LeaseReturn] = field(default_factory=list)
    releases: list[SessionRelease] = field(default_factory=list)
    cancels: list[CancelRequest] = field(default_factory=list)
    replays: list[str] = field(default_factory=list)  # run ids to start again
    #: Runs whose last lease loss was not their fault (a neighbour blocked the worker's loop).
    forgiven: list[str] = field(default_factory=list)
    #: Workers with free slots, and the functions that may have runs ready to lease.
    claims: list[WorkerSlots] = field(default_factory=list)
    claim_functions: set[str] = field(default_factory=set)
    #: Which functions an event starts (the engine's trigger index), and whether any
    #: function listens for a name at all.
    match: Matcher = field(default=lambda name, event: [])
    listens: Callable[[str], bool] = field(default=lambda name: False)
    limits: Limits = field(default_factory=Limits)
    #: Search the store for the next due time (the engine's timer fired, so the one it knew
    #: of is spent). Otherwise the result only reports times this batch set.
    find_wakeup: bool = False
    #: The gateway traces: each lease carries its run's trace parent (one query per claim).
    trace: bool = False
    #: Deadlines or cron ticks may be due: the engine's timer fired (or it has yet to learn
    #: the next due time, at start), or more ticks were due than the last batch fired. When
    #: False, the batch skips looking for them (a query each, every commit): the engine knows
    #: when the next one comes, from the times batches wrote and other gateways' notes.
    due: bool = True

    def has_writes(self) -> bool:
        """Anything to apply besides looking for runs to lease?"""
        return bool(
            self.events or self.checkpoints or self.returns or self.releases or self.cancels
            or self.replays or self.forgiven or self.resumes
        )


@dataclass(slots=True)
class Lease:
    """A run leased to a worker session, with what the worker needs to replay it."""

    run_id: str
    fence: int
    session_id: str
    function_id: str
    events: list[bytes]
    memos: dict[str, StepMemo]
    attempts: dict[str, int]
    attempt: int
    deferred: list[str]
    #: the run's first lease (it never ran before), and when it became ready to lease
    first: bool = False
    available_at: float | None = None
    #: the traceparent of the run's first event (its span's parent), with ``batch.trace``
    trace_parent: str | None = None


@dataclass(slots=True)
class RunEnded:
    """A run that reached a final status in this batch."""

    run_id: str
    function_id: str
    status: str


@dataclass(slots=True)
class WriteResult:
    """What a batch did, so the engine can answer everyone who contributed to it."""

    duplicate_events: set[str] = field(default_factory=set)
    runs_created: int = 0
    #: the function of each run created (for the metrics)
    created_functions: list[str] = field(default_factory=list)
    #: index into ``batch.checkpoints`` -> why it was refused
    refused: dict[int, str] = field(default_factory=dict)
    leases: list[Lease] = field(default_factory=list)
    ended: list[RunEnded] = field(default_factory=list)
    #: functions that gained runs ready to lease in this batch
    touched_functions: set[str] = field(default_factory=set)
    #: functions whose queue the claim drained (nothing more is ready for them now)
    drained_functions: set[str] = field(default_factory=set)
    #: leases taken away by cancellations, to revoke on their sockets
    revoked: list[Revocation] = field(default_factory=list)
    #: per ``batch.resumes`` entry: the function of the run given back, or None (revoke it)
    resumed: list[str | None] = field(default_factory=list)
    #: per ``batch.cancels`` entry: how many runs it cancelled
    cancelled: list[int] = field(default_factory=list)
    #: per ``batch.replays`` entry: the new run's id (None for an unknown run)
    replayed: list[str | None] = field(default_factory=list)
    #: Items that failed alone (the batch was applied again, each item in a savepoint):
    #: (kind, index) -> the error. ``events`` (a request), ``cancel`` and ``replay`` are
    #: answered with it; ``checkpoint`` (also in ``refused``), ``return``, ``release``,
    #: ``deadline`` and ``waits`` (an event offered to its waits) are logged.
    errors: dict[tuple[str, int], str] = field(default_factory=dict)
    #: the earliest future time this batch made something due (a run to lease, a deadline),
    #: or, with ``find_wakeup``, the earliest the store holds
    next_wakeup: float | None = None
    #: more cron schedules are due than one batch fires: the next batch goes on at once
    more_due: bool = False
    #: cron ticks skipped by a catch-up (downtime), per function, for the metrics
    ticks_missed: dict[str, int] = field(default_factory=dict)
    #: runs flow control skipped at admission, per reason, for the metrics
    flow_skipped: dict[str, int] = field(default_factory=dict)
    #: flow-control options that delayed a run created in this batch, one entry per run
    flow_delayed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FunctionRecord:
    id: str  # "{app_id}/{fn_id}"
    app_id: str
    app_version: str
    config: dict[str, Any]
    active: bool
    updated_at: float


@dataclass(slots=True)
class StepRecord:
    id: str
    kind: str
    status: str
    attempts: int
    output: bytes | None
    error: ErrorInfo | None
    started_at: float | None
    ended_at: float | None


@dataclass(slots=True)
class RunRecord:
    id: str
    function_id: str
    status: str
    fence: int
    attempt: int
    event_ids: list[str]
    output: bytes | None
    error: ErrorInfo | None
    queued_at: float
    started_at: float | None
    ended_at: float | None
    available_at: float | None
    parent_run_id: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: why flow control skipped the run (SPEC §4's ``skipped`` object), or None
    skipped: dict[str, Any] | None = None
    #: the flow-control option (and key, as shown) that set its available_at: ``waiting``
    hold: tuple[str, str | None] | None = None
    #: a ready run's place in its concurrency queue (read with ``now``), or None
    queue: QueueWait | None = None


@dataclass(frozen=True, slots=True)
class QueueWait:
    """Where a ready run of a function with concurrency limits stands: its key as shown,
    the runs of its queue ready before it, and the leased runs of its fullest slot (``full``:
    at that slot's limit, so the limit holds the run back)."""

    key: str | None
    ahead: int
    running: int
    full: bool


@dataclass(slots=True)
class RunPage:
    runs: list[RunRecord]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class RunScan:
    """A page of runs newest first, for selections (bulk actions, filtered lists): runs of
    ``function_id`` (None: every function) in ``statuses`` whose id lies in [low, high).

    Ids are ULIDs of the queue time, so a time range is an id range (see the dashboard's
    :mod:`gateway.http.bulk`).
    """

    function_id: str | None
    statuses: tuple[str, ...]
    low: str
    high: str
    limit: int


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a step that failed at least once (``attempt`` is 1-based)."""

    step_id: str
    attempt: int
    status: str
    started_at: float | None
    ended_at: float | None
    retry_at: float | None
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A run started by a step.invoke of its parent, as the parent's timeline shows it."""

    id: str
    function_id: str
    status: str
    queued_at: float
    started_at: float | None
    ended_at: float | None
    step_id: str | None


@dataclass(frozen=True, slots=True)
class FlowKeyCount:
    """A flow-control key holding a function's runs: how many wait and how many run."""

    option: str
    key: str | None  # None: the option has no key expression (one key for the function)
    queued: int
    running: int


#: What one gateway tells the others sharing its store, after a commit (see ``subscribe``):
#: ``functions`` with runs ready now, ``wakeup`` (a time something became due), ``revoke``
#: ([session, run, fence] of leases held through other gateways), ``registered`` (apps changed).
PeerNote = dict[str, Any]


class Store(Protocol):
    """Durable state of the gateway. Every method is one transaction."""

    #: True when several gateways may share this store: they keep each other alive and
    #: informed through :meth:`keepalive` and :meth:`subscribe`.
    shared: bool

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def close(self) -> None: ...

    async def write(self, batch: WriteBatch) -> WriteResult:
        """Apply ``batch`` atomically and durably (see the module invariants)."""
        ...

    async def idle(self) -> None:
        """The engine has nothing to commit: upkeep that would otherwise fall inside a
        commit may run now (SQLite: the WAL checkpoint)."""
        ...

    async def register_app(self, app: AppManifest, *, now: float,
                           keep: Collection[str] = ()) -> list[FunctionRecord]:
        """Store an app's functions; functions the app no longer declares become inactive,
        except those in ``keep`` (full ids other connected workers still serve)."""
        ...

    async def activate_functions(self, function_ids: Collection[str], *, now: float) -> None:
        """Turn registered functions back on (connected workers still serve them)."""
        ...

    async def recover(self, *, now: float, grace: float = 0.0) -> int:
        """At start: requeue runs leased by sessions of a gateway that is gone.

        Their fences stay: for ``grace`` seconds only the workers that held them may take
        them back (``Resume``), so a restart re-runs nothing a surviving worker holds.
        """
        ...

    async def keepalive(self, gateway_id: str, *, now: float, ttl: float) -> set[str]:
        """Record that this gateway is alive; requeue the leases of gateways silent for longer
        than ``ttl`` (exactly one live gateway does each). Returns functions with runs requeued.
        """
        ...

    async def publish_workers(self, gateway_id: str, workers: str) -> None:
        """Record this gateway's connected workers (a JSON array) for the others to list."""
        ...

    async def peer_workers(self, gateway_id: str, *, since: float) -> list[tuple[str, float, str]]:
        """Other live gateways' published workers: (gateway id, beat time, JSON array)."""
        ...

    async def subscribe(self, gateway_id: str, callback: Callable[[PeerNote], None]) -> None:
        """From now on, call ``callback`` with what other gateways publish after their commits."""
        ...

    async def leave(self, gateway_id: str) -> None:
        """This gateway stops (cleanly): the others need not presume it dead."""
        ...

    async def functions(self) -> list[FunctionRecord]: ...

    async def active_keys(self) -> list[StoredKey]:
        """The event and API keys kept in the store that are not revoked."""
        ...

    async def schedules(self) -> dict[tuple[str, str, str], float]:
        """Every cron schedule's next tick: (function id, cron, tz) -> epoch seconds."""
        ...

    async def get_run(self, run_id: str, now: float | None = None) -> RunRecord | None:
        """The run; with ``now``, a ready run's place in its concurrency queue too."""
        ...

    async def concurrency_keys(self, function_id: str, limit: int
                               ) -> list[tuple[str | None, int, int]]:
        """The function's concurrency keys with the most runs waiting: (key as shown,
        waiting, running), at most ``limit``."""
        ...

    async def trace_parents(self, run_ids: Collection[str]) -> dict[str, str | None]:
        """Each run's trace parent: the ``traceparent`` its first event was stored with."""
        ...

    async def runs_for_event(self, event_id: str) -> list[RunRecord]: ...

    async def has_event(self, event_id: str) -> bool:
        """Was an event with this id ever stored (and is it still)?"""
        ...

    async def list_runs(
        self, *, function_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> RunPage: ...

    async def queue_depths(self, *, now: float) -> list[tuple[str, int, float | None]]:
        """Per function with runs ready to lease at ``now``: (function id, how many, the
        oldest one's ready time). A read beside the writer, for ``/metrics``."""
        ...

    async def scan_runs(self, scan: RunScan) -> list[tuple[str, bytes | None]]:
        """A page of runs newest first: (run id, first event's payload)."""
        ...

    async def runs_by_ids(self, run_ids: list[str]) -> list[RunRecord]:
        """These runs (those that exist), newest first, with their steps."""
        ...

    async def status_counts(self, function_id: str | None = None) -> dict[str, dict[str, int]]:
        """Runs per status of each function (only ``function_id``'s when given)."""
        ...

    async def recent_counts(self, since_id: str) -> dict[str, dict[str, int]]:
        """Per function, its live runs per status, and its ended runs per status among those
        with an id from ``since_id`` on (queued since then): cheap whatever the history."""
        ...

    async def flow_key_counts(self, function_id: str, limit: int) -> list[FlowKeyCount]:
        """The flow-control keys holding most of a function's runs, queued and running."""
        ...

    async def step_attempts(self, run_id: str) -> list[AttemptRecord]:
        """Each attempt of the run's steps that failed at least once, in order."""
        ...

    async def child_runs(self, run_id: str) -> list[ChildRun]:
        """The runs the run's step.invoke calls started."""
        ...

    # --- webhooks and the event log ------------------------------------------------------

    async def add_webhook(self, record: WebhookRecord) -> None: ...

    async def get_webhook(self, webhook_id: str) -> WebhookRecord | None: ...

    async def list_webhooks(self) -> list[WebhookRecord]: ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Remove a webhook; False when there was none with that id."""
        ...

    async def event_log(self, *, name: str | None, limit: int, before: int | None
                        ) -> EventPage:
        """Stored events newest first, below seq ``before`` (None: from the newest)."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None:
        """The latest event stored with ``event_id``, with the runs it is part of."""
        ...
