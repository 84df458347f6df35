"""Every message of the worker socket, as frozen pydantic models joined in one union.

A WebSocket frame carries a list of messages (see :mod:`protocol.codec`), so a busy peer packs
many checkpoints or leases into one frame. Messages are named for what happened or what is
asked; their ``type`` tags are snake_case.

The conversation::

    gateway                                worker
       | ---- Challenge(nonce, version) ---> |
       | <--- Answer(instance, mac) --------- |   small: checked before anything large
       | ---- Authenticated ---------------> |
       | <--- Hello(manifest) --------------- |
       | ---- Ready(session, intervals) ---> |
       | ---- LeaseGranted(run, fence) ----> |
       | <--- LeaseAccepted / LeaseRejected - |
       | <--- StepCompleted / StepFailed ---- |   checkpoints carry a per-socket ``seq``
       | <--- SleepRequested / WaitRequested  |   (and InvokeRequested, EventsSent)
       | ---- CheckpointAck(upto=seq) -----> |   sent only once the store has committed
       | <--- RunCompleted / RunFailed ------ |
       | <--- Heartbeat ---------------------- |
       | ---- HeartbeatAck ------------------> |
       | ---- LeaseRevoked / GoAway --------> |
       | <--- Drain -------------------------- |

Opaque user values (step outputs, run outputs, events) travel as JSON bytes: the gateway
stores and forwards them without decoding, and the HTTP API returns them as JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from protocol.limits import (
    MAX_COUNT,
    MAX_RUN_WARNING,
    MAX_RUN_WARNINGS,
    MAX_STEP_RESULT,
    MAX_STEPS,
)
from protocol.manifest import AppManifest
from protocol.tracecontext import MAX_TRACEPARENT

#: Bumped on any incompatible change; both sides refuse a peer with another version.
#: 2: the worker proves its key (``Answer``) before it sends its manifest (``Hello``).
PROTOCOL_VERSION = 2

#: Largest frame a gateway reads from a socket that has not proven its key yet: an
#: ``Answer`` is under 300 bytes, and nobody unauthenticated gets to make the gateway
#: buffer or parse megabytes.
MAX_PREAUTH_FRAME = 64 * 1024


#: A W3C ``traceparent`` header (see :mod:`protocol.tracecontext`); checked where it is used,
#: and a malformed one is ignored there, as W3C says.
TraceParentHeader = Annotated[str, Field(max_length=MAX_TRACEPARENT)]

#: Sequence numbers, fences and attempts: small enough for any database integer column.
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]

#: A name or id on the wire: no NUL character (see :mod:`protocol.names`). A pattern, not a
#: Python validator: checked in pydantic's core, at no cost to the checkpoint path.
Name = Annotated[str, Field(pattern=r"^[^\x00]*$")]


class _Message(BaseModel):
    # NaN and infinity are no time or delay: refused at the socket, never stored.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ErrorInfo(_Message):
    """An error as it crosses the wire: the exception's class name, message and traceback."""

    name: str
    message: str
    stack: str | None = None


class StepMemo(_Message):
    """A step's recorded outcome, replayed instead of re-running the step.

    Exactly one of ``output`` (JSON bytes) and ``error`` is set. ``kind`` is the step method
    that recorded it (``run``, ``sleep``, ``wait``, ``invoke``, ``send_event``), so a replay
    that asks for another kind of step under the same id is caught as non-determinism.
    """

    kind: str = "run"
    output: bytes | None = None
    error: ErrorInfo | None = None


# --- gateway -> worker --------------------------------------------------------------------


class Challenge(_Message):
    """First frame on a new socket: prove you hold the signing key by MACing ``nonce``."""

    type: Literal["challenge"] = "challenge"
    nonce: bytes
    protocol_version: int
    gateway_id: str


class Authenticated(_Message):
    """The worker's ``Answer`` proved its key: it may now send its ``Hello``."""

    type: Literal["authenticated"] = "authenticated"


class Ready(_Message):
    """The worker is registered; it may now receive leases. Intervals are in seconds.

    The limits are the gateway's (SPEC §5, configurable there): the worker enforces them
    before it sends anything, with a clear error in the run.
    """

    type: Literal["ready"] = "ready"
    session_id: str
    heartbeat_interval: float
    lease_ttl: float
    max_frame_size: int
    max_steps: int = Field(default=MAX_STEPS, ge=1)
    max_step_result: int = Field(default=MAX_STEP_RESULT, ge=1)
    #: What the gateway noticed about this worker's registration (an app id that another
    #: program serves with other functions...), for the worker to log.
    warnings: list[Annotated[str, Field(max_length=2000)]] = Field(default_factory=list,
                                                                  max_length=10)


class HeartbeatAck(_Message):
    """Answer to every ``Heartbeat``, so the worker knows the gateway still reads its socket."""

    type: Literal["heartbeat_ack"] = "heartbeat_ack"


class LeaseGranted(_Message):
    """``run_id`` is yours until the lease is revoked; echo ``fence`` on every checkpoint.

    ``memos`` are the steps already recorded; ``attempts`` counts the failed attempts of
    steps that are still to be retried, and ``deferred`` names those whose retry is not due
    yet (park them); ``attempt`` is the function body's attempt. ``traceparent`` is the
    run's span when the gateway traces: the worker's step spans are its children.
    """

    type: Literal["lease_granted"] = "lease_granted"
    run_id: str
    fence: Count
    function_id: str
    events: list[bytes]
    memos: dict[str, StepMemo] = Field(default_factory=dict)
    attempts: dict[str, int] = Field(default_factory=dict)
    deferred: list[str] = Field(default_factory=list)
    attempt: Count = 0
    traceparent: TraceParentHeader | None = None


class CheckpointAck(_Message):
    """Every checkpoint with ``seq <= upto`` on this socket is committed (or was refused)."""

    type: Literal["checkpoint_ack"] = "checkpoint_ack"
    upto: Count


class CheckpointRefused(_Message):
    """The checkpoint ``seq`` was not applied: its lease is no longer current. Stop the run."""

    type: Literal["checkpoint_refused"] = "checkpoint_refused"
    seq: Count
    run_id: str
    reason: str


class LeaseRevoked(_Message):
    """The run was taken from you (cancelled, or presumed lost); start no new step of it."""

    type: Literal["lease_revoked"] = "lease_revoked"
    run_id: str
    fence: Count
    reason: str


class GoAway(_Message):
    """The gateway is shutting down: finish what you can and reconnect to another gateway."""

    type: Literal["go_away"] = "go_away"
    reason: str


class Error(_Message):
    """A fatal error for this socket; the sender closes it right after."""

    type: Literal["error"] = "error"
    code: str
    message: str


# --- worker -> gateway --------------------------------------------------------------------


class Held(_Message):
    """A lease a reconnecting worker still holds and is still working on."""

    run_id: Name = Field(max_length=64)
    fence: Count


class Hello(_Message):
    """Who the worker is and what it serves; ``capacity`` caps the runs leased to it.

    ``resume`` lists the leases the worker kept working on while it had no socket (its
    gateway restarted, say): the gateway gives back each one nobody else was leased since
    (same fence), so no step re-runs, and revokes the others (``LeaseRevoked``).
    """

    type: Literal["hello"] = "hello"
    protocol_version: int
    instance_id: Name = Field(min_length=1, max_length=200)
    sdk_version: str
    capacity: int = Field(ge=1, le=100_000)
    apps: list[AppManifest] = Field(min_length=1, max_length=100)
    resume: list[Held] = Field(default_factory=list, max_length=100_000)


class Answer(_Message):
    """HMAC-SHA256 of the challenge and ``instance_id``, keyed with the signing key (which
    never crosses the wire). Sent alone, first, so the key is checked on a small frame; the
    ``Hello`` that follows must carry the same ``instance_id``."""

    type: Literal["answer"] = "answer"
    instance_id: Name = Field(min_length=1, max_length=200)
    mac: bytes = Field(max_length=64)


class Heartbeat(_Message):
    """The worker is alive; ``in_flight`` is how many runs it holds."""

    type: Literal["heartbeat"] = "heartbeat"
    in_flight: Count = 0


class LeaseAccepted(_Message):
    """The worker started the run."""

    type: Literal["lease_accepted"] = "lease_accepted"
    run_id: str
    fence: Count


class LeaseRejected(_Message):
    """The worker cannot take the run (unknown function, full, draining); lease it elsewhere."""

    type: Literal["lease_rejected"] = "lease_rejected"
    run_id: str
    fence: Count
    reason: str


class Drain(_Message):
    """Send no more leases: the worker is shutting down."""

    type: Literal["drain"] = "drain"


class LoopStalled(_Message):
    """The worker's event loop was blocked ``seconds`` by run ``run_id`` (step ``step_id``).

    Sent on the next socket when the stall cost the socket ``session_id``: the gateway had
    presumed the worker lost and counted a lease loss against every run leased on it. Only
    ``run_id`` was at fault, so the gateway takes the loss back from the others.
    """

    type: Literal["loop_stalled"] = "loop_stalled"
    session_id: str
    seconds: float
    run_id: str
    step_id: str | None = None


class _Checkpoint(_Message):
    """A change to a run's durable state, under the lease ``fence``.

    ``seq`` numbers checkpoints on one socket; the gateway acknowledges them in order.
    """

    seq: Count
    run_id: Name
    fence: Count


class StepCompleted(_Checkpoint):
    """Step ``step_id`` returned ``output`` (JSON bytes) on attempt ``attempt``."""

    type: Literal["step_completed"] = "step_completed"
    step_id: Name
    attempt: Count
    output: bytes
    started_at: float
    ended_at: float


class StepFailed(_Checkpoint):
    """Step ``step_id`` raised. ``final`` means no further attempt: the function sees StepError.

    Otherwise the run parks until the gateway's backoff, or ``retry_after`` seconds, has passed.
    """

    type: Literal["step_failed"] = "step_failed"
    step_id: Name
    attempt: Count
    error: ErrorInfo
    final: bool
    retry_after: float | None = None
    started_at: float
    ended_at: float


class SleepRequested(_Checkpoint):
    """Step ``step_id`` sleeps: for ``duration`` seconds from now, or ``until`` (epoch s).

    Durations are relative so the gateway need not trust the worker's clock; ``until`` comes
    from ``sleep_until`` and is absolute by nature. The gateway records the step as done when
    the time comes.
    """

    type: Literal["sleep_requested"] = "sleep_requested"
    step_id: Name
    duration: float | None = None
    until: float | None = None


class WaitRequested(_Checkpoint):
    """Step ``step_id`` waits up to ``timeout`` seconds for an event named ``event``.

    ``if_`` is CEL over ``event`` (the run's trigger) and ``async`` (the candidate event).
    The step's result is the matching event, or null once the timeout passes.
    """

    type: Literal["wait_requested"] = "wait_requested"
    step_id: Name
    event: Name
    timeout: float
    if_: str | None = None


class InvokeRequested(_Checkpoint):
    """Step ``step_id`` starts a child run of ``function_id`` with ``data`` (JSON bytes).

    The step's result is the child's output; the child's failure, or ``timeout`` seconds
    passing first, makes it a failed step. ``user`` (JSON bytes) is the child event's ``user``.
    ``traceparent``: the invoke step's span, which the child run's span continues.
    """

    type: Literal["invoke_requested"] = "invoke_requested"
    step_id: Name
    function_id: Name
    data: bytes
    timeout: float | None = None
    user: bytes | None = None
    traceparent: TraceParentHeader | None = None


class EventsSent(_Checkpoint):
    """Step ``step_id`` sends ``events`` (each the JSON of an event with its id set).

    The events are stored in the same transaction that records the step, so they are sent
    exactly once however often the run is replayed; the step's result is their ids.
    ``traceparent``: the step's span, which the runs the events start continue.
    """

    type: Literal["events_sent"] = "events_sent"
    step_id: Name
    events: list[bytes]
    traceparent: TraceParentHeader | None = None


class RunSuspended(_Checkpoint):
    """Every live branch of the run is parked on something durable; the lease ends here."""

    type: Literal["run_suspended"] = "run_suspended"


#: One line the worker noticed about the run (a replay that skipped recorded steps).
RunWarning = Annotated[str, Field(max_length=MAX_RUN_WARNING)]


class RunCompleted(_Checkpoint):
    """The function returned ``output`` (JSON bytes); ``warnings`` go on the run's record."""

    type: Literal["run_completed"] = "run_completed"
    output: bytes
    warnings: list[RunWarning] = Field(default_factory=list, max_length=MAX_RUN_WARNINGS)


class RunFailed(_Checkpoint):
    """The function body raised on ``attempt``; ``final`` means the run fails now."""

    type: Literal["run_failed"] = "run_failed"
    attempt: Count
    error: ErrorInfo
    final: bool
    retry_after: float | None = None
    warnings: list[RunWarning] = Field(default_factory=list, max_length=MAX_RUN_WARNINGS)


class LeaseReleased(_Checkpoint):
    """The worker hands the run back unfinished (draining); lease it again at once."""

    type: Literal["lease_released"] = "lease_released"
    reason: str


Checkpoint = (
    StepCompleted
    | StepFailed
    | SleepRequested
    | WaitRequested
    | InvokeRequested
    | EventsSent
    | RunSuspended
    | RunCompleted
    | RunFailed
    | LeaseReleased
)

#: The checkpoint classes, for ``isinstance`` checks at runtime.
CHECKPOINT_TYPES: tuple[type[Checkpoint], ...] = get_args(Checkpoint)

GatewayMessage = (
    Challenge
    | Authenticated
    | Ready
    | HeartbeatAck
    | LeaseGranted
    | CheckpointAck
    | CheckpointRefused
    | LeaseRevoked
    | GoAway
    | Error
)

WorkerMessage = (
    Hello | Answer | Heartbeat | LeaseAccepted | LeaseRejected | Drain | LoopStalled
    | Checkpoint | Error
)

#: Any message, either way; decoding picks the class by its ``type`` tag.
Message = Annotated[GatewayMessage | WorkerMessage, Field(discriminator="type")]

#: Every ``type`` tag, for error messages that list what is known.
MESSAGE_TYPES: frozenset[str] = frozenset(
    cls.model_fields["type"].default for cls in get_args(GatewayMessage | WorkerMessage)
)



_M = TypeVar("_M", bound=BaseModel)
_set = object.__setattr__
#: Message class -> its field names in order, the defaults of the optional ones, and the set
#: of every name (the fields set of a message built with all of them).
_LAYOUTS: dict[type[BaseModel], tuple[tuple[str, ...], dict[str, FieldInfo], set[str]]] = {}


def unvalidated(cls: type[_M], values: dict[str, Any]) -> _M:
    """The ``cls`` message whose wire map is ``values``, built without validating them.

    For the few messages a sender builds on every run (a step's checkpoint and memo, the run's
    end, the lease's answer) from values it made itself or received validated: pydantic's
    ``cls(**values)`` costs three times as much. The instance is the one decoding ``values``
    builds: its ``__dict__`` is the wire map, every field in the model's order (what
    :func:`protocol.codec.pack` sends as it is). ``values`` with every field in that order is
    used as it is; otherwise the missing ones get their defaults.

    Raises:
        TypeError: ``values`` names a field ``cls`` lacks, or lacks a required one.
    """
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = (tuple(cls.model_fields), {
            name: info for name, info in cls.model_fields.items() if not info.is_required()},
            set(cls.model_fields))
    names, optional, every = layout
    if tuple(values) == names:
        # Every field given: one set per kind, shared (the messages are frozen, and pydantic
        # copies the set before it changes one, in ``model_copy``).
        given = every
    else:
        given = set(values)
        if not given <= set(names):
            raise TypeError(f"{cls.__name__} has no field {sorted(given - set(names))}")
        ordered = {}
        for name in names:
            if name in values:
                ordered[name] = values[name]
            elif name in optional:
                ordered[name] = optional[name].get_default(call_default_factory=True)
            else:
                raise TypeError(f"{cls.__name__} needs its field {name!r}")
        values = ordered
    message = cls.__new__(cls)
    _set(message, "__dict__", values)
    _set(message, "__pydantic_fields_set__", given)
    _set(message, "__pydantic_extra__", None)
    _set(message, "__pydantic_private__", None)
    return message
