"""The dashboard's pages and form actions: Runs, a run, Functions, Workers, Events, login.

Pages read through the same store and engine methods as the management API (and render its
JSON shapes). Outside ``--dev`` every page needs a session made by logging in with an API key
or the signing key (:mod:`.sessions`); a read-only API key sees everything and changes nothing.
Form posts are refused unless they come from this origin (as the browser declares it), carry
the session's CSRF token, and the session may write.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.engine import Engine
from gateway.http.dashboard.sessions import SESSION_SECONDS, Session, Sessions
from gateway.http.dashboard.timeline import bars
from gateway.http.eventlog import event_json
from gateway.http.events import EventLimits, parse_events, read_body
from gateway.http.management import _ULID, DEFAULT_PAGE, ManagementRoutes, run_json
from gateway.registry import Registry
from gateway.runs import RunStatus
from gateway.store.base import CancelRequest
from gateway.transport.auth import Authenticator, key_hash
from protocol.errors import AuthError, InvalidInput, NotFound, PayloadTooLarge

HERE = Path(__file__).resolve().parent
COOKIE = "tether_session"
#: Largest dashboard form body, in bytes (a test event's data is the biggest field).
MAX_FORM = 256 * 1024
#: Static files served, by name (nothing else under static/ is reachable).
STATIC = {"app.css": "text/css", "live.js": "text/javascript"}


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
        function_id = q.get("function_id") or None
        status = q.get("status") or None
        cursor = q.get("cursor") or None
        problem = None
        if function_id is not None and "\x00" in function_id:
            problem, function_id = "a function id holds no NUL character", None
        if status is not None and status not in {s.value for s in RunStatus}:
            problem, status = f"unknown status {status!r}", None
        if cursor is not None and not _ULID.match(cursor):
            problem, cursor = "malformed cursor: paging starts again from the newest", None
        page = await self.engine.store.list_runs(function_id=function_id, status=status,
                                                 limit=DEFAULT_PAGE, cursor=cursor)
        now = self.engine.clock.now()
        rows = [run_json(r, now) for r in page.runs]
        more = None
        if page.cursor:
            more = "/?" + urlencode({k: v for k, v in (("function_id", function_id),
                                                       ("status", status),
                                                       ("cursor", page.cursor)) if v})
        template = "runs_rows.html" if q.get("fragment") else "runs.html"
        return self.render(request, template, session, runs=rows, more=more,
                           functions=sorted(self.engine.functions),
                           statuses=[s.value for s in RunStatus],
                           function_id=function_id or "", status=status or "",
                           cursor=cursor or "", problem=problem)

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
        return self.render(request, "run.html", session, run=run_json(record, now),
                           parent=record.parent_run_id, events=events, trace=trace,
                           bars=bars(record, now), live=record.ended_at is None,
                           message=request.query_params.get("message"))

    async def functions(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        data = orjson.loads(await self._management(self.manage.functions, request))["data"]
        return self.render(request, "functions.html", session, functions=data)

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

