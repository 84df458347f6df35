"""The management API: functions, workers, runs, events' runs. JSON shapes of SPEC §4.

Every endpoint refuses a query parameter or body field it does not know (400, naming it and
the ones allowed): a misspelt filter must never widen what a request reads or cancels.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.engine import Engine
from gateway.http.bulk import ENDED, LIVE, REPLAY_DEFAULT, Action, Selection, act_in_bulk
from gateway.http.events import read_body
from gateway.registry import Registry, WorkerEntry
from gateway.runs import RunStatus
from gateway.scheduler import holds
from gateway.store.base import CancelRequest, RunRecord, StepRecord
from protocol.errors import InvalidInput, NotFound
from protocol.expressions import check
from protocol.messages import ErrorInfo

#: Largest ``limit`` of a list (a larger one is refused with 400), and the default.
MAX_PAGE = 100
DEFAULT_PAGE = 20
#: Flow-control keys ``GET /v1/functions/{id}`` lists by default (the busiest first).
DEFAULT_KEYS = 10
#: Largest management request body (bulk-cancel filters and the like), in bytes.
MAX_BODY = 64 * 1024

#: Longest text search, in characters.
MAX_TEXT = 200
#: A run id (and so a cursor): a 26-character ULID.
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with microseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


def _value(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"name": error.name, "message": error.message, "stack": error.stack}


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "id": step.id,
        "kind": step.kind,
        "status": step.status,
        "attempts": step.attempts,
        "output": _value(step.output),
        "error": _error(step.error),
        "started_at": iso(step.started_at),
        "ended_at": iso(step.ended_at),
    }


def run_json(run: RunRecord, now: float | None = None) -> dict[str, Any]:
    """A run as SPEC §4 shapes it; ``waiting`` needs ``now`` (null without it)."""
    return {
        "id": run.id,
        "function_id": run.function_id,
        "status": run.status,
        "output": _value(run.output),
        "error": _error(run.error),
        "event_ids": run.event_ids,
        "attempt": run.attempt,
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "steps": [step_json(s) for s in run.steps],
        "warnings": run.warnings,
        "skipped": run.skipped,
        "waiting": None if now is None else waiting_json(run, now),
    }


def waiting_json(run: RunRecord, now: float) -> dict[str, Any] | None:
    """SPEC §4's ``waiting`` object for what holds a run until a time, or None."""
    held = holds.held(run.status, run.available_at, run.started_at, run.attempt,
                      run.error is not None, now, run.hold[0] if run.hold else None)
    if held is None:
        return _queued_json(run)
    option, reason = held
    key = run.hold[1] if run.hold and run.hold[0] == option else None
    return {"reason": reason, "option": option, "key": key, "ahead": None, "running": None,
            "until": iso(run.available_at)}


def _queued_json(run: RunRecord) -> dict[str, Any] | None:
    """``waiting`` for a ready run of a function with concurrency limits (else None)."""
    queue = run.queue
    if queue is None:
        return None
    if queue.full:
        which = "its concurrency key" if queue.key is None else f"concurrency key {queue.key!r}"
        option, reason = "concurrency", (
            f"{which} has {queue.running} runs executing, its limit: the run starts when one "
            f"of them ends ({queue.ahead} runs of the key are ahead of it)")
    else:
        option, reason = "capacity", (
            "ready: waiting for a worker that serves the function to have a free slot "
            f"({queue.ahead} runs of its concurrency key are ahead of it)")
    return {"reason": reason, "option": option, "key": queue.key, "ahead": queue.ahead,
            "running": queue.running, "until": None}


def triggers_json(function_id: str, config: dict[str, Any],
                  ticks: dict[tuple[str, str, str], float]) -> list[dict[str, Any]]:
    """A function's triggers; a cron trigger with its schedule's ``next_tick`` (ISO)."""
    out = []
    for trigger in config.get("triggers", []):
        if "cron" in trigger:
            at = ticks.get((function_id, trigger["cron"], trigger.get("tz", "UTC")))
            trigger = {**trigger, "next_tick": iso(at)}
        out.append(trigger)
    return out


def worker_json(w: WorkerEntry, *, monotonic: float, gateway_id: str) -> dict[str, Any]:
    """A connected worker as the API shows it (and as gateways publish theirs to each other)."""
    return {
        "session_id": w.session_id,
        "gateway_id": gateway_id,
        "instance_id": w.instance_id,
        "apps": w.apps,
        "functions": sorted(w.functions),
        "capacity": w.capacity,
        "in_flight": len(w.in_flight),
        "draining": w.draining,
        "connected_at": iso(w.connected_at),
        "last_seen_seconds_ago": round(max(0.0, monotonic - w.last_seen), 3),
    }


class ManagementRoutes:
    def __init__(self, engine: Engine, registry: Registry, *, gateway_id: str = "",
                 peer_ttl: float = 5.0) -> None:
        self.engine = engine
        self.registry = registry
        self.gateway_id = gateway_id
        self.peer_ttl = peer_ttl

    async def functions(self, request: Request) -> Response:
        _query(request, set())
        # Which connected workers (instance ids) serve each function, as this gateway knows.
        serving: dict[str, set[str]] = {}
        for w in self.registry:
            for fid in w.functions:
                serving.setdefault(fid, set()).add(w.instance_id)
        ticks = await self.engine.store.schedules()
        data = [
            {
                "id": f.id,
                "app_id": f.app_id,
                "app_version": f.app_version,
                "name": f.config.get("name") or f.config["id"],
                "active": f.active,
                "workers": sorted(serving.get(f.id, ())),
                "triggers": triggers_json(f.id, f.config, ticks),
                "config": f.config,
                "updated_at": iso(f.updated_at),
            }
            for f in sorted(self.engine.functions.values(), key=lambda f: f.id)
        ]
        return JSONResponse({"data": data, "cursor": None})

    async def workers(self, request: Request) -> Response:
        """This gateway's workers, and those other gateways sharing the store published."""
        _query(request, set())
        monotonic = self.engine.clock.monotonic()
        data = [worker_json(w, monotonic=monotonic, gateway_id=self.gateway_id)
                for w in self.registry]
        now = self.engine.clock.now()
        for _, beat, published in await self.engine.store.peer_workers(
                self.gateway_id, since=now - self.peer_ttl):
            for worker in orjson.loads(published):
                worker["last_seen_seconds_ago"] = round(
                    worker["last_seen_seconds_ago"] + max(0.0, now - beat), 3)
                data.append(worker)
        data.sort(key=lambda w: (w["connected_at"] or "", w["session_id"]))
        return JSONResponse({"data": data, "cursor": None})

    async def run(self, request: Request) -> Response:
        _query(request, set())
        record = await self._known_run(request.path_params["run_id"])
        body = run_json(record, self.engine.clock.now())
        if self.engine.tracing is not None:  # the run's trace: a link to follow
            body.update(await self.engine.tracing.run_links(record.id))
        return JSONResponse(body)

    async def _known_run(self, run_id: str) -> RunRecord:
        record = await self.engine.store.get_run(run_id, self.engine.clock.now())
        if record is None:
            raise NotFound(f"no run with id {run_id!r}; list runs with GET /v1/runs")
        return record

    async def cancel_run(self, request: Request) -> Response:
        """Cancel one run: its lease is revoked, its waits, timers and child runs go."""
        run_id = request.path_params["run_id"]
        await _json_object(request, set())
        await self._known_run(run_id)
        cancelled = await self.engine.cancel(CancelRequest("cancelled through the API",
                                                           run_id=run_id))
        record = await self._known_run(run_id)
        return JSONResponse({"cancelled": bool(cancelled),
                             "run": run_json(record, self.engine.clock.now())})

    async def replay_run(self, request: Request) -> Response:
        """Start a new run of the same function with the same events."""
        run_id = request.path_params["run_id"]
        await _json_object(request, set())
        await self._known_run(run_id)
        new_id = await self.engine.replay(run_id)
        if new_id is None:
            raise InvalidInput(
                f"run {run_id!r} cannot be replayed: its function is no longer registered"
            )
        return JSONResponse({"run_id": new_id, "replay_of": run_id})

    def function_id(self, value: str) -> str:
        """A full function id from ``value``: the full id, or a short one naming one function.

        Raises:
            InvalidInput: the short id names several functions (they are listed).
            NotFound: it names none.
        """
        if value in self.engine.functions:
            return value
        same = sorted(f for f in self.engine.functions if f.split("/", 1)[-1] == value)
        if len(same) == 1:
            return same[0]
        if same:
            raise InvalidInput(f"function id {value!r} is ambiguous: use one of "
                               f"{', '.join(same)}")
        raise NotFound(f"no function {value!r}; ids are 'app-id/function-id', see "
                       "GET /v1/functions")

    async def cancel_function(self, request: Request) -> Response:
        """Bulk cancel: the function's live runs queued in a time range, matching a filter.

        Body (all optional): ``{"queued_after": ISO 8601, "queued_before": ISO 8601,
        "if": CEL over event, "text": text in the event's data, "status": a live status or a
        list of them, "dry_run": true (count, cancel nothing), "cursor": from a previous
        answer}``. Runs are selected outside the write path within a budget
        (:mod:`gateway.http.bulk`); an answer with ``"complete": false`` carries the
        ``cursor`` to send again to go on.
        """
        return await self._bulk(request, "cancel")

    async def replay_function(self, request: Request) -> Response:
        """Bulk replay: a new run for each of the function's ended runs the body selects
        (as bulk cancel; ``status`` defaults to Failed and Cancelled)."""
        return await self._bulk(request, "replay")

    async def _bulk(self, request: Request, action: Action) -> Response:
        function_id = self.function_id(request.path_params["function_id"])
        body = await _json_object(request, {"queued_after", "queued_before", "if", "text",
                                            "status", "dry_run", "cursor"})
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidInput("'dry_run' must be true or false")
        selection = selection_of(
            function_id, body,
            allowed=LIVE if action == "cancel" else ENDED,
            default=LIVE if action == "cancel" else REPLAY_DEFAULT,
            what="cancelled (live runs)" if action == "cancel" else "replayed (ended runs)")
        outcome = await act_in_bulk(self.engine, selection, "count" if dry_run else action,
                                    reason="cancelled in bulk through the API")
        return JSONResponse(outcome.json())

    async def function(self, request: Request) -> Response:
        """One function (SPEC §4): its triggers with each cron's next tick, options, counts
        per status, and the flow-control keys holding most of its runs."""
        q = _query(request, {"keys"})
        try:
            keys = int(q.get("keys", DEFAULT_KEYS))
        except ValueError:
            raise InvalidInput("keys must be a whole number") from None
        if not 0 <= keys <= MAX_PAGE:
            raise InvalidInput(f"keys must be between 0 and {MAX_PAGE}")
        function_id = self.function_id(request.path_params["function_id"])
        record = self.engine.functions[function_id]
        serving = sorted({w.instance_id for w in self.registry if function_id in w.functions})
        ticks = await self.engine.store.schedules()
        counts = (await self.engine.store.status_counts(function_id)).get(function_id, {})
        flow_keys = await self.engine.store.flow_key_counts(function_id, keys) if keys else []
        return JSONResponse({
            "id": record.id,
            "app_id": record.app_id,
            "app_version": record.app_version,
            "name": record.config.get("name") or record.config["id"],
            "active": record.active,
            "workers": serving,
            "triggers": triggers_json(function_id, record.config, ticks),
            "config": record.config,
            "updated_at": iso(record.updated_at),
            "counts": {s.value: counts.get(s.value, 0) for s in RunStatus},
            "flow_keys": [{"option": k.option, "key": k.key, "queued": k.queued,
                           "running": k.running} for k in flow_keys],
        })

    async def event_runs(self, request: Request) -> Response:
        _query(request, set())
        event_id = request.path_params["event_id"]
        runs = await self.engine.store.runs_for_event(event_id)
        if not runs and not await self.engine.store.has_event(event_id):
            raise NotFound(f"no event with id {event_id!r}; event ids are in the answer of "
                           "POST /e/{key}")
        return JSONResponse({"data": [run_json(r, self.engine.clock.now()) for r in runs],
                             "cursor": None})

    async def runs(self, request: Request) -> Response:
        q = _query(request, {"function_id", "status", "limit", "cursor"})
        status = q.get("status")
        if status is not None and status not in {s.value for s in RunStatus}:
            raise InvalidInput(
                f"unknown status {status!r}; use one of {', '.join(s.value for s in RunStatus)}"
            )
        try:
            limit = int(q.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise InvalidInput("limit must be a whole number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        cursor = q.get("cursor") or None
        if cursor is not None and not _ULID.match(cursor):
            raise InvalidInput(f"malformed cursor {cursor[:40]!r}: pass the 'cursor' of the "
                               "previous page as it was returned")
        function_id = q.get("function_id")
        if function_id is not None and "/" not in function_id:
            try:  # a short id: the one function it names (a full id filters as it is)
                function_id = self.function_id(function_id)
            except NotFound as exc:
                raise InvalidInput(exc.message) from None
        page = await self.engine.store.list_runs(
            function_id=function_id, status=status, limit=limit, cursor=cursor)
        return JSONResponse({"data": [run_json(r, self.engine.clock.now()) for r in page.runs],
                             "cursor": page.cursor})


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, refusing any not in ``allowed`` (and repeated ones).

    Raises:
        InvalidInput: naming the parameter and the allowed ones.
    """
    for key in request.query_params:
        if key not in allowed:
            raise InvalidInput(f"unknown query parameter {key!r} on {request.url.path}; "
                               f"{_allowed(allowed)}")
        if len(request.query_params.getlist(key)) > 1:
            raise InvalidInput(f"query parameter {key!r} is given more than once")
    return dict(request.query_params)


def _allowed(allowed: set[str]) -> str:
    return f"allowed: {', '.join(sorted(allowed))}" if allowed else "it takes none"


async def _json_object(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), with no field outside ``allowed``.

    Raises:
        PayloadTooLarge: over :data:`MAX_BODY`.
        InvalidInput: not a JSON object, or an unknown field (named, with the allowed ones).
    """
    _query(request, set())
    raw = await read_body(request, MAX_BODY, advice="management requests are small")
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} in the body of {request.method} "
                           f"{request.url.path}; {_allowed(allowed)}")
    return body


def _time(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise InvalidInput(f"{key!r} must be an ISO 8601 time or epoch seconds")


def selection_of(function_id: str | None, body: dict[str, Any], *, allowed: tuple[str, ...],
                 default: tuple[str, ...], what: str) -> Selection:
    """A bulk request's :class:`Selection` from its body (or the dashboard's filter form).

    Raises:
        InvalidInput: a field of the wrong type, a bad CEL filter (the reason), a status
            that cannot be ``what``, or a malformed cursor.
    """
    expression = body.get("if") or None
    if expression is not None:
        if not isinstance(expression, str):
            raise InvalidInput("'if' must be a CEL expression (a string)")
        check(expression, {"event"}, where="'if'")
    text = body.get("text") or None
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        raise InvalidInput(f"'text' must be a string of at most {MAX_TEXT} characters")
    status = body.get("status")
    if status is None:
        statuses = default
    else:
        asked = [status] if isinstance(status, str) else status
        if not isinstance(asked, list) or not asked or not all(
                isinstance(s, str) for s in asked):
            raise InvalidInput("'status' must be a status or a list of statuses")
        wrong = [s for s in asked if s not in allowed]
        if wrong:
            raise InvalidInput(f"status {wrong[0][:40]!r} cannot be {what}; use "
                               f"{', '.join(allowed)}")
        statuses = tuple(sorted(set(asked)))
    cursor = body.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or not _ULID.match(cursor)):
        raise InvalidInput("'cursor' must be the cursor of a previous answer (a run id)")
    return Selection(function_id, statuses, queued_after=_time(body, "queued_after"),
                     queued_before=_time(body, "queued_before"), if_=expression, text=text,
                     cursor=cursor)
