"""One leased run, driven through an Inngest SDK's request loop. Decides; does no I/O.

Inngest's SDKs run at most one new step per request and are handed the whole memo each
time; Tether's workers stream checkpoints instead. :class:`RunDriver` joins the two: from a
``LeaseGranted`` it builds the serve-mode request body (events, the memo keyed by the SHA-1
of each step id, ``ctx``), and turns each reply into Tether checkpoints:

======================  ===========================================================
reply                   checkpoints (then)
======================  ===========================================================
200 (returned)          ``RunCompleted`` (done)
500 (raised)            ``RunFailed``, final if ``no_retry`` or out of attempts (done)
400 (TS non-retriable)  ``RunFailed``, final (done)
``StepRun``             ``StepCompleted`` (ask again, with the result in the memo)
``StepError``           ``StepFailed(final=False)`` (park: the gateway times the retry)
``StepFailed``          ``StepFailed(final=True)`` (ask again: the SDK raises in the body)
``Sleep``               ``SleepRequested`` (park)
``WaitForEvent``        ``WaitRequested`` (park)
``InvokeFunction``      ``InvokeRequested`` (park)
``StepPlanned``         nothing yet: ask once per planned step, targeting it
======================  ===========================================================

TypeScript v4 may also run consecutive steps within one request and stream their opcodes to
``POST /v1/checkpoint/{run}/async`` (:meth:`RunDriver.apply_streamed`), then reply with the
rest; opcodes already applied are skipped.

When every branch has parked the run ends its lease with ``RunSuspended``; Tether leases it
again when a sleep ends, a wait or child answers, or a retry is due, with the memo grown.

Tether's step id is the SDK's own id with the SDKs' suffix for repeats (``id``, ``id:1``),
which is exactly what the SDKs hash: so the memo key is ``sha1(step id)``, and the run's
steps read as the user named them in the API and dashboard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.inngest.registration import SYSTEM_EVENTS, InngestFunction
from protocol import messages as m
from protocol.durations import to_seconds
from protocol.errors import InvalidInput

#: Tether's system events under Inngest's names.
INNGEST_NAMES = {tether: inngest for inngest, tether in SYSTEM_EVENTS.items()}

#: A checkpoint to send, without the socket's seq, the run id and the fence.
Pending = tuple[type[m._Checkpoint], dict[str, Any]]


def step_hash(step_id: str) -> str:
    """The SDKs' memo key for a step id (SHA-1, hex)."""
    return hashlib.sha1(step_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Request:
    """One executor request: the body, and the step it targets (``"step"`` for none)."""

    body: bytes
    step_id: str
    target: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """The SDK's answer to one request (``SDKResponse``), decoded."""

    status: int  # wire.ReplyStatus
    body: bytes
    no_retry: bool = False
    retry_after: str = ""


class ReplyError(Exception):
    """The SDK answered something the bridge cannot apply (a bug or a newer SDK)."""


def _memo_value(memo: m.StepMemo) -> Any:
    """What the SDKs expect in ``steps`` for a recorded step."""
    if memo.error is not None:
        error = {"name": memo.error.name, "message": memo.error.message}
        if memo.error.stack:
            error["stack"] = memo.error.stack
        return {"error": error}
    value = orjson.loads(memo.output) if memo.output is not None else None
    if memo.kind in ("sleep", "wait"):
        return value  # a sleep's null, a wait's event (or null when it timed out)
    return {"data": value}


def _error_info(raw: Any, fallback: str) -> m.ErrorInfo:
    if isinstance(raw, dict):
        stack = raw.get("stack")
        return m.ErrorInfo(name=str(raw.get("name") or "Error"),
                           message=str(raw.get("message") or fallback)[:65536],
                           stack=str(stack)[:65536] if stack else None)
    return m.ErrorInfo(name="Error", message=(str(raw) if raw is not None else fallback)[:65536])


def _retry_after(text: str, now: float) -> float | None:
    """``retry-after``: seconds, or an ISO time (Python sends one)."""
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        return max(0.0, datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() - now)
    except ValueError:
        return None


@dataclass
class RunDriver:
    """The state of one leased run between its requests."""

    lease: m.LeaseGranted
    function: InngestFunction
    #: Slug -> Tether function id, for ``InvokeFunction`` (which names the child by slug).
    slugs: dict[str, str]
    events: list[Any] = field(default_factory=list)
    memo: dict[str, Any] = field(default_factory=dict)
    #: hash -> Tether step id, for every step the run has named.
    names: dict[str, str] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)  # hashes still to target
    parked: bool = False  # some branch waits on the gateway: suspend when the rest is done
    parallel: bool = False  # the SDK planned steps: keep planning (disable immediate execution)
    attempt: int = 0  # the function body's
    done: bool = False
    stack: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.events = [_as_inngest(orjson.loads(e)) for e in self.lease.events] or [
            {"name": "", "data": {}}]
        for step_id, memo in self.lease.memos.items():
            key = step_hash(step_id)
            self.memo[key] = _memo_value(memo)
            self.names[key] = step_id
            self.stack.append(key)
        for step_id in [*self.lease.attempts, *self.lease.deferred]:
            self.names.setdefault(step_hash(step_id), step_id)
        self.attempt = self.lease.attempt

    @property
    def max_attempts(self) -> int:
        return self.function.config.retries + 1

    def next_request(self) -> Request | None:
        """The next request to send, or None when the run has nothing left to ask now."""
        if self.done:
            return None
        target = self.planned[0] if self.planned else None
        if target is None and self.parked:
            return None
        attempt = self.attempt
        if target is not None:
            attempt = self.lease.attempts.get(self.names.get(target, ""), 0)
        else:
            due = [n for s, n in self.lease.attempts.items() if s not in self.lease.deferred]
            if due:
                attempt = max(due)
        body = {
            "event": self.events[0],
            "events": self.events,
            "steps": self.memo,
            "ctx": {
                "run_id": self.lease.run_id,
                "attempt": attempt,
                "max_attempts": self.max_attempts,
                "disable_immediate_execution": self.parallel,
                "use_api": False,
                "stack": {"stack": list(self.stack), "current": len(self.stack)},
                # With these, TypeScript v4 runs consecutive steps in one request and streams
                # them to POST /v1/checkpoint/{run}/async (see :meth:`apply_streamed`).
                "fn_id": self.lease.function_id,
                "qi_id": self.queue_item,
            },
            "version": 1,
            "use_api": False,
        }
        return Request(orjson.dumps(body), target or "step", target)

    def apply(self, request: Request, reply: Reply, *, now: float,
              sent: float | None = None) -> list[Pending]:
        """The checkpoints ``reply`` (to ``request``, sent at ``sent``) makes; advances the
        state. A step's timings are the request's: the SDK ran it in between.

        Raises:
            ReplyError: the reply cannot be understood.
        """
        if request.target is not None and self.planned and self.planned[0] == request.target:
            self.planned.pop(0)
        if self.done:
            return []  # the run ended on a streamed checkpoint already
        if reply.status == 1 and reply.no_retry:
            # TypeScript answers a non-retriable error with HTTP 400, which its connect layer
            # reports as DONE; only the no-retry flag (never set on success) tells them apart.
            reply = Reply(status=2, body=reply.body, no_retry=True)
        if reply.status == 1:  # DONE: the body is the function's output
            self.done = True
            output = reply.body or b"null"
            try:
                orjson.loads(output)
            except orjson.JSONDecodeError:
                output = orjson.dumps(output.decode(errors="replace"))
            return [(m.RunCompleted, {"output": output})]
        if reply.status == 2:  # ERROR: the body is the error
            self.done = True
            try:
                raw = orjson.loads(reply.body) if reply.body else None
            except orjson.JSONDecodeError:
                raw = reply.body.decode(errors="replace")
            final = reply.no_retry or self.attempt + 1 >= self.max_attempts
            return [(m.RunFailed, {
                "attempt": self.attempt, "error": _error_info(raw, "the function failed"),
                "final": final, "retry_after": _retry_after(reply.retry_after, now)})]
        try:
            ops = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise ReplyError(f"a 206 reply is not JSON: {exc}") from None
        if not isinstance(ops, list):
            raise ReplyError("a 206 reply must be a list of opcodes")
        out: list[Pending] = []
        for op in ops:
            out.extend(self._opcode(op, now=now, sent=now if sent is None else sent))
        return out

    @property
    def queue_item(self) -> str:
        """Names this lease to the SDK: a streamed checkpoint must carry it."""
        return f"{self.lease.run_id}.{self.lease.fence}"

    def apply_streamed(self, ops: Any, *, now: float) -> list[Pending]:
        """The checkpoints of ops the SDK streamed while its request runs (TypeScript's
        ``/v1/checkpoint/{run}/async``): the same opcodes as a reply's.

        Raises:
            ReplyError: the ops cannot be understood.
        """
        if not isinstance(ops, list):
            raise ReplyError("streamed steps must be a list of opcodes")
        out: list[Pending] = []
        for op in ops:
            out.extend(self._opcode(op, now=now, sent=now))
        return out

    def _step_id(self, op: dict[str, Any]) -> tuple[str, str]:
        """(hash, Tether step id) of an opcode: the user's id (with the repeat suffix) when
        it hashes to the opcode's id, else the hash itself."""
        key = str(op.get("id") or "")
        if not key:
            raise ReplyError(f"an opcode without an id: {str(op)[:200]}")
        known = self.names.get(key)
        if known is not None:
            return key, known
        userland = op.get("userland") or {}
        user_id = userland.get("id") if isinstance(userland, dict) else None
        candidates = []
        if isinstance(user_id, str):
            index = userland.get("index")
            if isinstance(index, int) and index > 0:
                candidates.append(f"{user_id}:{index}")
            candidates.append(user_id)
        for name in (*candidates, op.get("displayName"), op.get("name")):
            if isinstance(name, str) and name and step_hash(name) == key:
                self.names[key] = name
                return key, name
        self.names[key] = key
        return key, key

    def _remember(self, key: str, value: Any) -> None:
        self.memo[key] = value
        if key not in self.stack:
            self.stack.append(key)

    def _opcode(self, op: Any, *, now: float, sent: float) -> list[Pending]:
        if not isinstance(op, dict):
            raise ReplyError(f"an opcode must be an object, got {str(op)[:200]}")
        if self.done:
            return []
        kind = op.get("op")
        key, step_id = self._step_id(op)
        if step_id in self.lease.deferred or key in self.memo:
            return []  # recorded already, or the gateway still owes its result: nothing new
        raw_opts = op.get("opts")
        opts: dict[str, Any] = raw_opts if isinstance(raw_opts, dict) else {}
        if kind == "StepPlanned":
            self.parallel = True
            if key not in self.planned:
                self.planned.append(key)
            return []
        if kind == "RunComplete":  # TypeScript v4 may end a 206 with the run's output
            self.done = True
            return [(m.RunCompleted, {"output": orjson.dumps(op.get("data"))})]
        if kind == "StepRun":
            data = op.get("data")
            self._remember(key, {"data": data})
            self.attempt = 0  # a completed step resets the body's attempts (as Inngest)
            return [(m.StepCompleted, {
                "step_id": step_id, "attempt": self.lease.attempts.get(step_id, 0),
                "output": orjson.dumps(data), "started_at": sent, "ended_at": now})]
        if kind in ("StepError", "StepFailed"):
            error = _error_info(op.get("error"), f"step {step_id!r} failed")
            final = kind == "StepFailed"
            if final:
                self._remember(key, {"error": error.model_dump(exclude_none=True)})
            else:
                self.parked = True
            return [(m.StepFailed, {
                "step_id": step_id, "attempt": self.lease.attempts.get(step_id, 0),
                "error": error, "final": final, "started_at": sent, "ended_at": now})]
        self.parked = True
        if kind == "Sleep":
            return [(m.SleepRequested, _sleep(step_id, op, opts, now))]
        if kind == "WaitForEvent":
            event = opts.get("event") or op.get("name")
            if not isinstance(event, str) or not event:
                raise ReplyError(f"WaitForEvent {step_id!r} names no event")
            return [(m.WaitRequested, {
                "step_id": step_id, "event": event,
                "timeout": _seconds(opts.get("timeout"), f"step {step_id!r} timeout"),
                "if_": opts.get("if") or None})]
        if kind == "InvokeFunction":
            slug = str(opts.get("function_id") or opts.get("functionId") or "")
            raw_payload = opts.get("payload")
            payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
            timeout = opts.get("timeout")
            return [(m.InvokeRequested, {
                "step_id": step_id, "function_id": self.slugs.get(slug, slug),
                "data": orjson.dumps(payload.get("data") or {}),
                "timeout": _seconds(timeout, f"step {step_id!r} timeout") if timeout else None,
                "user": orjson.dumps(payload["user"]) if payload.get("user") else None})]
        raise ReplyError(f"opcode {kind!r} (step {step_id!r}) is not supported by Tether")

    def finish(self) -> list[Pending]:
        """What ends the lease when nothing is left to ask: a suspension."""
        if self.done:
            return []
        self.done = True
        return [(m.RunSuspended, {})]


def _as_inngest(event: Any) -> Any:
    """A system event (a child run's, or a run's end for an ``on_failure`` handler) under the
    name the SDKs expect: TypeScript checks it against the function's triggers."""
    if isinstance(event, dict):
        name = INNGEST_NAMES.get(event.get("name"))  # type: ignore[arg-type]
        if name is not None:
            return {**event, "name": name}
    return event


def _seconds(value: Any, what: str) -> float:
    try:
        return to_seconds(value, what=what)
    except InvalidInput as exc:
        raise ReplyError(str(exc)) from None


def _sleep(step_id: str, op: dict[str, Any], opts: dict[str, Any], now: float
           ) -> dict[str, Any]:
    """Python puts an ISO time in ``name``; TypeScript a duration; the spec ``opts.duration``."""
    duration = opts.get("duration")
    if duration is not None:
        return {"step_id": step_id, "duration": _seconds(duration, f"sleep {step_id!r}")}
    name = op.get("name")
    if isinstance(name, str):
        try:
            until = datetime.fromisoformat(name.replace("Z", "+00:00")).timestamp()
            return {"step_id": step_id, "until": until}
        except ValueError:
            return {"step_id": step_id, "duration": _seconds(name, f"sleep {step_id!r}")}
    raise ReplyError(f"Sleep {step_id!r} says neither until when nor how long")
