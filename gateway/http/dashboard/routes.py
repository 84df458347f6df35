"""The dashboard's pages and form actions: Runs, a run, Functions, Workers, Events, login.

Pages read through the same store and engine methods as the management API (and render its
JSON shapes). Outside ``--dev`` every page needs a session made by logging in with an API key
or the signing key (:mod:`.sessions`); a read-only API key sees everything and changes nothing.
Form posts are refused unless they come from this origin (as the browser declares it), carry
the session's CSRF token, and the session may write.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.engine import Engine
from gateway.http.bulk import (
    ENDED,
    LIVE,
    Action,
    BulkOutcome,
    Selection,
    act_in_bulk,
    find_runs,
    id_floor,
)
from gateway.http.dashboard.sessions import SESSION_SECONDS, Session, Sessions
from gateway.http.dashboard.timeline import bars
from gateway.http.eventlog import event_json
from gateway.http.events import EventLimits, parse_events, read_body
from gateway.http.management import (
    _ULID,
    DEFAULT_PAGE,
    ManagementRoutes,
    run_json,
    selection_of,
)
from gateway.registry import Registry
from gateway.runs import RunStatus
from gateway.store.base import CancelRequest, RunRecord
from gateway.transport.auth import Authenticator, key_hash
from protocol.errors import AuthError, InvalidInput, NotFound, PayloadTooLarge

HERE = Path(__file__).resolve().parent
COOKIE = "tether_session"
#: Largest dashboard form body, in bytes (a test event's data is the biggest field).
MAX_FORM = 256 * 1024
#: Static files served, by name (nothing else under static/ is reachable).
STATIC = {"app.css": "text/css", "live.js": "text/javascript"}
#: The runs page's filter fields (query parameters, and the bulk forms' hidden fields).
FILTERS = ("function_id", "status", "from", "to", "text", "if", "cursor")
#: Flow-control keys the Functions page shows per function (the busiest).
TOP_KEYS = 5
#: The Functions page counts ended runs queued within this many seconds (live ones all):
#: the cost follows the recent volume, not the whole history.
COUNTS_WINDOW = 24 * 3600.0


class Refused(AuthError):
    """A dashboard action this session may not take."""

    code = "forbidden"
    http_status = 403


class Dashboard:
    def __init__(self, engine: Engine, registry: Registry, auth: Authenticator,
                 limits: EventLimits, manage: ManagementRoutes) -> None:
        self.engine = engine
        self.registry = registry
        self.auth = auth
        self.limits = limits
        self.manage = manage
        self.sessions = Sessions()
        #: In --dev there are no sessions; forms carry this process's token instead.
        self.dev_session = Session("", "--dev (no authentication)", False,
                                   secrets.token_urlsafe(32), float("inf"))
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.filters["json"] = lambda v: orjson.dumps(
            v, option=orjson.OPT_INDENT_2).decode()
        self.env.filters["seconds"] = _seconds
        self.env.filters["options"] = _options

    # --- sessions ------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        if self.auth.dev:
            return self.dev_session
        session = self.sessions.get(request.cookies.get(COOKIE), self.engine.clock.now())
        if session is not None and session.stored_hash is not None and (
                self.auth.stored_api_key(session.stored_hash) != session.read_only):
            self.sessions.end(session.id)  # its key was revoked (within --key-refresh)
            return None
        return session

    def render(self, request: Request, template: str, session: Session | None,
               code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            session=session, dev=self.auth.dev, path=request.url.path, **context)
        return HTMLResponse(html, status_code=code,
                            headers={"cache-control": "no-store",
                                     "x-frame-options": "DENY",
                                     "content-security-policy":
                                         "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                         "frame-ancestors 'none'"})

    def to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    async def form(self, request: Request) -> dict[str, str]:
        """The urlencoded form body (last value of each field), refusing cross-origin posts."""
        from gateway.http.api import cross_origin  # api imports this module

        reason = cross_origin(request.method, request.headers)
        if reason is not None:
            raise Refused(f"cross-origin form post refused ({reason})")
        raw = await read_body(request, MAX_FORM, advice="dashboard forms are small")
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}

    async def action(self, request: Request) -> tuple[Session, dict[str, str]]:
        """The session and form of a write: it must be logged in, writable and carry its token.

        Raises:
            Refused: not logged in, read-only, or the CSRF token is missing or wrong.
        """
        session = self.session(request)
        form = await self.form(request)
        if session is None:
            raise Refused("log in to the dashboard first (GET /login)")
        if not secrets.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            raise Refused("the form's CSRF token is missing or stale; reload the page")
        if session.read_only:
            raise Refused("this session's API key is read-only: it cannot cancel, replay "
                          "or send events")
        return session, form

    # --- login ---------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if self.auth.dev:
            return RedirectResponse("/", status_code=303)
        return self.render(request, "login.html", None, next=_safe_next(request))

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        key = form.get("key", "").strip()
        target = _safe_next(request, form.get("next"))
        identity = self.identify(key)
        if identity is None:
            return self.render(request, "login.html", None, code=401, next=target,
                               error="that key is not a signing key or API key of this gateway")
        name, read_only, stored_hash = identity
        session = self.sessions.create(name, read_only=read_only, now=self.engine.clock.now(),
                                       stored_hash=stored_hash)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session.id, max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    def identify(self, key: str) -> tuple[str, bool, str | None] | None:
        """(who, read-only, its hash if it is a stored key) for a key the guarded API would
        accept, or None."""
        if not key:
            return None
        bearer = f"Bearer {key}"
        stored = key_hash(key) if self.auth.stored_api_key(key_hash(key)) is not None else None
        try:
            self.auth.check_bearer(bearer, "POST")
            return ("signing key" if key in self.auth.worker_keys() else "API key"), False, \
                stored
        except AuthError:
            pass
        try:
            self.auth.check_bearer(bearer, "GET")
            return "API key", True, stored
        except AuthError:
            return None

    async def logout(self, request: Request) -> Response:
        await self.action_or_readonly(request)
        self.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def action_or_readonly(self, request: Request) -> None:
        """Logging out needs the token but not write access."""
        session = self.session(request)
        form = await self.form(request)
        if session is not None and not secrets.compare_digest(
                form.get("csrf", "").encode(), session.csrf.encode()):
            raise Refused("the form's CSRF token is missing or stale; reload the page")

    # --- pages ---------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        q = request.query_params
        form = {name: q.get(name) or "" for name in FILTERS}
        problem = None
        try:
            selection = self.selection(form, statuses=tuple(RunStatus), what="listed")
        except InvalidInput as exc:
            problem, selection = exc.message, None
        runs: list[RunRecord] = []
        cursor, scanned = None, 0
        if selection is not None:
            try:
                ids, cursor, scanned = await find_runs(self.engine, selection, DEFAULT_PAGE)
            except InvalidInput as exc:
                problem, ids = exc.message, []
            runs = await self.engine.store.runs_by_ids(ids)
        now = self.engine.clock.now()
        filters = {k: v for k, v in form.items() if v and k != "cursor"}
        more = "/?" + urlencode({**filters, "cursor": cursor}) if cursor else None
        template = "runs_rows.html" if q.get("fragment") else "runs.html"
        return self.render(request, template, session, runs=[run_json(r, now) for r in runs],
                           more=more, functions=sorted(self.engine.functions),
                           statuses=[s.value for s in RunStatus], form=form,
                           filters=filters, problem=problem, scanned=scanned,
                           searching=bool(form["text"] or form["if"]),
                           # A CEL filter costs a child process a look: no polling then.
                           live=not form["cursor"] and not form["if"] and problem is None)

    def selection(self, form: dict[str, str], *, statuses: tuple[str, ...],
                  what: str) -> Selection:
        """The runs page's filter as a :class:`Selection` of ``statuses`` (those the action
        may touch; the filter's status narrows them).

        Raises:
            InvalidInput: a filter that is not well-formed (the message says which).
        """
        function_id = form["function_id"] or None
        if function_id is not None and "\x00" in function_id:
            raise InvalidInput("a function id holds no NUL character")
        status = form["status"] or None
        if status is not None and status not in {s.value for s in RunStatus}:
            raise InvalidInput(f"unknown status {status[:40]!r}")
        body: dict[str, Any] = {"if": form["if"], "text": form["text"],
                                "cursor": form["cursor"] or None}
        for field, name in (("from", "queued_after"), ("to", "queued_before")):
            if form[field]:
                body[name] = _form_time(form[field], field)
        chosen = statuses if status is None else tuple(s for s in statuses if s == status)
        if not chosen:  # e.g. cancelling with the filter "Completed": nothing can be
            return Selection(function_id, (), cursor=None)
        return selection_of(function_id, body, allowed=chosen, default=chosen, what=what)

    async def run(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        run_id = request.path_params["run_id"]
        record = (await self.engine.store.get_run(run_id, self.engine.clock.now())
                  if _ULID.match(run_id) else None)
        if record is None:
            return self.render(request, "missing.html", session, code=404,
                               what=f"no run with id {run_id[:40]!r}")
        now = self.engine.clock.now()
        events = []
        for event_id in record.event_ids:
            stored = await self.engine.store.get_event(event_id)
            events.append(event_json(stored) if stored else {"id": event_id, "name": None})
        tracing = self.engine.tracing  # the run's trace id, and a link with --trace-url
        trace = await tracing.run_links(record.id) if tracing is not None else None
        attempts = await self.engine.store.step_attempts(run_id)
        children = await self.engine.store.child_runs(run_id)
        return self.render(request, "run.html", session, run=run_json(record, now),
                           parent=record.parent_run_id, events=events, trace=trace,
                           bars=bars(record, now, attempts, children),
                           live=record.ended_at is None,
                           message=request.query_params.get("message"))

    async def functions(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        data = orjson.loads(await self._management(self.manage.functions, request))["data"]
        counts = await self.engine.store.recent_counts(
            id_floor(self.engine.clock.now() - COUNTS_WINDOW))
        for function in data:
            function["counts"] = counts.get(function["id"], {})
            function["flow_keys"] = await self.engine.store.flow_key_counts(
                function["id"], TOP_KEYS)
        template = "functions_rows.html" if request.query_params.get("fragment") \
            else "functions.html"
        return self.render(request, template, session, functions=data,
                           statuses=[s.value for s in RunStatus])

    async def workers(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        data = orjson.loads(await self._management(self.manage.workers, request))["data"]
        return self.render(request, "workers.html", session, workers=data)

    async def events(self, request: Request, *, error: str | None = None,
                     sent: list[str] | None = None, status: int = 200) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        name = request.query_params.get("name") or None
        if name is not None and "\x00" in name:
            name = None  # no event name holds one (and PostgreSQL refuses it in a query)
        before = request.query_params.get("cursor") or None
        page = await self.engine.store.event_log(
            name=name, limit=DEFAULT_PAGE,
            before=int(before) if before and before.isdigit() and len(before) < 19 else None)
        more = None
        if page.cursor is not None:
            more = "/events?" + urlencode({k: v for k, v in (("name", name),
                                                             ("cursor", str(page.cursor)))
                                           if v})
        return self.render(request, "events.html", session, code=status,
                           events=[event_json(e) for e in page.events], more=more,
                           name=name or "", error=error, sent=sent)

    async def _management(self, handler: Any, request: Request) -> bytes:
        """The body a management endpoint answers (it refuses query parameters: none sent)."""
        scope = {**request.scope, "query_string": b""}
        response: Response = await handler(Request(scope, request.receive))
        return bytes(response.body)

    # --- actions -------------------------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        await self.action(request)
        run_id = request.path_params["run_id"]
        if not _ULID.match(run_id) or await self.engine.store.get_run(run_id) is None:
            raise NotFound(f"no run with id {run_id[:40]!r}")
        cancelled = await self.engine.cancel(CancelRequest("cancelled from the dashboard",
                                                           run_id=run_id))
        message = "cancelled" if cancelled else "the run had already ended"
        return RedirectResponse(f"/runs/{run_id}?" + urlencode({"message": message}),
                                status_code=303)

    async def replay(self, request: Request) -> Response:
        await self.action(request)
        run_id = request.path_params["run_id"]
        if not _ULID.match(run_id) or await self.engine.store.get_run(run_id) is None:
            raise NotFound(f"no run with id {run_id[:40]!r}")
        new_id = await self.engine.replay(run_id)
        if new_id is None:
            raise InvalidInput(f"run {run_id!r} cannot be replayed: its function is no longer "
                               "registered")
        return RedirectResponse(f"/runs/{new_id}?" + urlencode(
            {"message": f"replay of {run_id}"}), status_code=303)

    async def bulk(self, request: Request) -> Response:
        """Cancel or replay what the runs page's filter selects: first a count and a question,
        then (``confirm``) the action, over runs queued before the count was shown."""
        session, form = await self.action(request)
        action: Action
        if form.get("action") == "cancel":
            action = "cancel"
        elif form.get("action") == "replay":
            action = "replay"
        else:
            raise InvalidInput("'action' must be cancel or replay")
        fields = {name: form.get(name, "") for name in FILTERS}
        if not fields["to"]:  # pin the selection: runs created after the count stay out
            fields["to"] = _form_iso(self.engine.clock.now())
        allowed = LIVE if action == "cancel" else ENDED
        try:
            selection = self.selection(fields, statuses=allowed,
                                       what="cancelled" if action == "cancel" else "replayed")
            if not selection.statuses:
                outcome = BulkOutcome("count", 0, 0, 0, None)
            else:
                outcome = await act_in_bulk(
                    self.engine, selection, action if form.get("confirm") else "count",
                    reason="cancelled in bulk from the dashboard")
        except InvalidInput as exc:
            return self.render(request, "bulk.html", session, code=400, action=action,
                               fields=fields, problem=exc.message, outcome=None,
                               back=_runs_link(fields))
        return self.render(request, "bulk.html", session, action=action, fields=fields,
                           outcome=outcome, problem=None, back=_runs_link(fields))

    async def send_event(self, request: Request) -> Response:
        _, form = await self.action(request)
        try:
            data = orjson.loads(form.get("data") or "{}")
            body = orjson.dumps({"name": form.get("name", ""), "data": data})
            parsed = parse_events(body, limits=self.limits, now=self.engine.clock.now())
        except orjson.JSONDecodeError as exc:
            return await self.events(request, error=f"data is not valid JSON: {exc}",
                                     status=400)
        except (InvalidInput, PayloadTooLarge) as exc:
            return await self.events(request, error=exc.message, status=exc.http_status)
        events = [event for event, _ in parsed]
        await self.engine.ingest(events)
        return await self.events(request, sent=[e.id for e in events])

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise NotFound(f"no dashboard file {name[:40]!r}")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"cache-control": "max-age=300"})


def _form_time(value: str, field: str) -> float:
    """A ``datetime-local`` field's value, read as UTC (the times the pages show)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"'{field}' must be a date and time such as 2026-11-30T09:00 "
                           "(UTC)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _form_iso(ts: float) -> str:
    """``ts`` as a ``datetime-local`` value in UTC, rounded up to the second (so a run
    queued just before ``ts`` is inside a range that ends there)."""
    return datetime.fromtimestamp(math.ceil(ts), UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _runs_link(fields: dict[str, str]) -> str:
    return "/?" + urlencode({k: v for k, v in fields.items() if v and k != "cursor"})


#: Config fields that are not options (shown elsewhere, or internal).
_NOT_OPTIONS = {"id", "name", "triggers", "kind"}


def _options(config: dict[str, Any]) -> list[tuple[str, str]]:
    """A function's options as set (name, compact JSON), unset and null fields left out."""
    def compact(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: compact(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [compact(v) for v in value]
        return value

    return [(name, orjson.dumps(compact(value)).decode()) for name, value in config.items()
            if name not in _NOT_OPTIONS and value not in (None, [], {})]


def _seconds(value: float) -> str:
    """A duration for people: milliseconds under a second."""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _safe_next(request: Request, value: str | None = None) -> str:
    """Where to go after login: a path on this gateway only (never another site)."""
    target = value if value is not None else request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def dashboard_routes(engine: Engine, registry: Registry, auth: Authenticator,
                     limits: EventLimits, manage: ManagementRoutes) -> list[Route]:
    """The dashboard's routes, to sit beside the API's."""
    d = Dashboard(engine, registry, auth, limits, manage)
    return [
        Route("/", d.runs, methods=["GET"]),
        Route("/runs/bulk", d.bulk, methods=["POST"]),
        Route("/runs/{run_id}", d.run, methods=["GET"]),
        Route("/runs/{run_id}/cancel", d.cancel, methods=["POST"]),
        Route("/runs/{run_id}/replay", d.replay, methods=["POST"]),
        Route("/functions", d.functions, methods=["GET"]),
        Route("/workers", d.workers, methods=["GET"]),
        Route("/events", d.events, methods=["GET"]),
        Route("/events", d.send_event, methods=["POST"]),
        Route("/login", d.login_page, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/static/{name}", d.static, methods=["GET"]),
    ]

