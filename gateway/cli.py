"""``python -m gateway``: serve (the default), ``migrate``, ``keys create|list|revoke``, or
``send`` (one event to a running gateway)."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from cmdline.logs import configure
from cmdline.options import add_option, run_loop
from cmdline.tracing import add_trace_options
from gateway.config import DEFAULT_DB, Settings, db_backend
from gateway.store.sqlite import DatabaseInUse, DatabaseLock, prepare_files
from protocol.errors import InvalidInput, TetherError
from protocol.limits import (
    MAX_EVENT_SIZE,
    MAX_REQUEST_SIZE,
    MAX_RUN_STATE,
    MAX_STEP_RESULT,
    MAX_STEPS,
    MISSED_HEARTBEATS,
)

log = structlog.get_logger("tether.gateway")

DESCRIPTION = """\
Tether gateway: receives events over HTTP, stores runs and step results, and leases runs to
workers connected over a WebSocket.

  python -m gateway --dev                      local use: no auth, SQLite in ./.tether/
  python -m gateway --signing-key KEY --event-key EVENTKEY
  python -m gateway migrate --db sqlite:///path/to/tether.db
  python -m gateway keys create --kind signing  print a new signing key
  python -m gateway keys create --kind event --db URL   store a new event key (see keys --help)
  python -m gateway send shop/order.created --data '{"id": 1}'   send an event (send --help)
"""


def _serve_parser(environ: Mapping[str, str] | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sub-commands: 'migrate' applies schema migrations and exits; 'keys' makes, "
        "lists and revokes keys (keys --help); 'send' sends an event (send --help). Every "
        "option can be set from the environment variable shown.",
    )
    opt = p.add_argument_group("server")
    add_option(opt, "--host", env="HOST", environ=environ, default="127.0.0.1",
               help="address to listen on (0.0.0.0 for every interface)")
    add_option(opt, "--port", env="PORT", environ=environ, type=int, default=8288,
               help="HTTP API port (events, management)")
    add_option(opt, "--connect-port", env="CONNECT_PORT", environ=environ, type=int,
               default=8289, help="worker WebSocket port (ws://HOST:PORT/connect)")
    add_option(opt, "--db", env="DB", environ=environ, default=DEFAULT_DB,
               help="database: sqlite:///path/to/file.db or postgresql://user@host/db")
    sec = p.add_argument_group("security")
    add_option(sec, "--signing-key", env="SIGNING_KEY", environ=environ, action="append",
               dest="signing_keys", default=[], metavar="KEY",
               help="secret shared with workers and used as the management API bearer token "
               "(32 random bytes or more: `python -m gateway keys create --kind signing`); "
               "repeat to accept several")
    add_option(sec, "--previous-signing-key", env="PREVIOUS_SIGNING_KEY", environ=environ,
               action="append", dest="previous_signing_keys", default=[], metavar="KEY",
               help="a signing key being rotated out: accepted until --previous-key-expires")
    add_option(sec, "--previous-key-expires", env="PREVIOUS_KEY_EXPIRES", environ=environ,
               default=Settings.previous_key_expires, metavar="WHEN",
               help="when --previous-signing-key stops working: an ISO 8601 time, or a "
               "duration from the gateway's start")
    add_option(sec, "--event-key", env="EVENT_KEY", environ=environ, action="append",
               dest="event_keys", default=[], metavar="KEY",
               help="key accepted on POST /e/KEY (16 random bytes or more); repeatable; "
               "keys made with `keys create --kind event` are accepted too")
    add_option(sec, "--api-key", env="API_KEY", environ=environ, action="append",
               dest="api_keys", default=[], metavar="KEY",
               help="extra bearer token for the management API (the signing key works too; "
               "32 random bytes or more); repeatable")
    add_option(sec, "--key-refresh", env="KEY_REFRESH", environ=environ, type=float,
               default=Settings.key_refresh, metavar="S",
               help="seconds between re-reads of the keys stored with `keys`: a revoked key "
               "is refused within this time")
    add_option(sec, "--max-handshakes", env="MAX_HANDSHAKES", environ=environ, type=int,
               default=Settings.max_handshakes, metavar="N",
               help="worker sockets that have not proven their key yet, at most; more are "
               "closed at once (1013, try again later)")
    add_option(sec, "--handshake-timeout", env="HANDSHAKE_TIMEOUT", environ=environ,
               type=float, default=Settings.handshake_timeout, metavar="S",
               help="seconds a new worker socket gets to prove its key and say hello")
    add_option(sec, "--dev", env="DEV", environ=environ, action="store_true", default=False,
               help="local development: no signing key, any event key, open management API")
    add_option(opt, "--inngest", env="INNGEST", environ=environ, action="store_true",
               default=False,
               help="also serve apps written with Inngest's official SDKs in connect mode: "
               "point their base URL at http://HOST:PORT (see README)")
    run = p.add_argument_group("runs")
    add_option(run, "--retry-base", env="RETRY_BASE", environ=environ, type=float,
               default=10.0, help="seconds of the first retry delay; doubles per attempt")
    add_option(run, "--heartbeat-interval", env="HEARTBEAT_INTERVAL", environ=environ,
               type=float, default=5.0,
               help=f"seconds between worker heartbeats; {MISSED_HEARTBEATS} missed ones lose the "
               "worker's leases")
    add_option(run, "--max-event-size", env="MAX_EVENT_SIZE", environ=environ, type=int,
               default=MAX_EVENT_SIZE, help="largest event accepted, in bytes")
    add_option(run, "--max-request-size", env="MAX_REQUEST_SIZE", environ=environ, type=int,
               default=MAX_REQUEST_SIZE, help="largest POST /e body accepted, in bytes")
    add_option(run, "--max-steps", env="MAX_STEPS", environ=environ, type=int,
               default=MAX_STEPS, help="steps a run may take (workers enforce it)")
    add_option(run, "--max-step-result", env="MAX_STEP_RESULT", environ=environ, type=int,
               default=MAX_STEP_RESULT, help="largest step result or run output, in bytes")
    add_option(run, "--max-run-state", env="MAX_RUN_STATE", environ=environ, type=int,
               default=MAX_RUN_STATE, help="largest total of a run's step results, in bytes")
    logs = p.add_argument_group("logging")
    add_option(logs, "--log-format", env="LOG_FORMAT", environ=environ,
               choices=["console", "json"], default="console", help="log line format")
    add_option(logs, "--log-level", env="LOG_LEVEL", environ=environ,
               choices=["debug", "info", "warning", "error"], default="info",
               help="lowest level logged")
    traces = p.add_argument_group("tracing (OpenTelemetry)")
    add_trace_options(traces, environ)
    add_option(traces, "--trace-url", env="TRACE_URL", environ=environ, default=None,
               metavar="TEMPLATE", help="link from a run to its trace, {trace_id} replaced "
               "(e.g. http://localhost:16686/trace/{trace_id}): GET /v1/runs/ID's trace_url")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host, port=args.port, connect_port=args.connect_port, db=args.db,
        signing_keys=args.signing_keys, event_keys=args.event_keys, api_keys=args.api_keys,
        previous_signing_keys=args.previous_signing_keys,
        previous_key_expires=args.previous_key_expires, key_refresh=args.key_refresh,
        max_handshakes=args.max_handshakes, handshake_timeout=args.handshake_timeout,
        dev=args.dev, inngest=args.inngest,
        retry_base=args.retry_base, heartbeat_interval=args.heartbeat_interval,
        log_format=args.log_format, log_level=args.log_level,
        max_event_size=args.max_event_size, max_request_size=args.max_request_size,
        max_steps=args.max_steps, max_step_result=args.max_step_result,
        max_run_state=args.max_run_state, traces=args.traces, trace_url=args.trace_url,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keys":
        return _keys(argv[1:], environ)
    if argv and argv[0] == "send":
        return _send(argv[1:], environ)
    migrate = bool(argv) and argv[0] == "migrate"
    if migrate:
        argv = argv[1:]
    args = _serve_parser(environ).parse_args(argv)
    configure(args.log_format, args.log_level)
    settings = _settings(args)
    if migrate:
        return _migrate(settings.db)
    try:
        settings.check()
    except InvalidInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        return _run(settings)
    except DatabaseInUse as exc:
        log.error("gateway_refused_database", error=exc.message)
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.error("gateway_failed", error=str(exc))
        print(f"error: {exc} (is another gateway using the port? see --port, "
              "--connect-port)", file=sys.stderr)
        return 1
    except TetherError as exc:  # e.g. the database is not there: a line, not a traceback
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


KEYS_DESCRIPTION = """\
Make, list and revoke keys.

Event keys (POST /e/KEY) and API keys (management API bearer) are stored in the database,
hashed: the key is printed once, when made, and gateways using the database accept it within
--key-refresh seconds, and refuse it as quickly once revoked. Signing keys are not stored
(workers and gateways share them on their command lines): `create --kind signing` only
prints one.

  python -m gateway keys create --kind event --name shop-backend --db URL
  python -m gateway keys create --kind api --read-only --db URL
  python -m gateway keys create --kind signing
  python -m gateway keys list --db URL
  python -m gateway keys revoke KEY_ID --db URL
"""


def _keys_parser(environ: Mapping[str, str] | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway keys", description=KEYS_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="create|list|revoke")
    create = actions.add_parser("create", help="make a key; print it (once) on stdout")
    create.add_argument("--kind", choices=["event", "api", "signing"], required=True,
                        help="event: POST /e/KEY; api: management API bearer; signing: "
                        "printed only, give it to the gateway and workers")
    create.add_argument("--name", default="", help="what the key is for, shown by list")
    create.add_argument("--read-only", action="store_true",
                        help="an API key that opens GET requests only")
    listing = actions.add_parser("list", help="show stored keys (never the keys themselves)")
    revoke = actions.add_parser("revoke", help="revoke a stored key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the id `keys list` shows")
    for sub in (create, listing, revoke):
        add_option(sub, "--db", env="DB", environ=environ, default=DEFAULT_DB,
                   help="database: sqlite:///path/to/file.db or postgresql://user@host/db")
    return p


def _keys(argv: list[str], environ: Mapping[str, str] | None) -> int:
    """``keys create|list|revoke``: the key is printed on stdout, everything else on stderr."""
    import time

    from gateway.store import keys as keystore
    from gateway.transport.auth import new_key

    args = _keys_parser(environ).parse_args(argv)
    if args.action == "create" and args.kind == "signing":
        if args.read_only:
            print("error: --read-only applies to API keys only", file=sys.stderr)
            return 2
        print(new_key("signing"))
        print("signing key made (not stored): give it to the gateway and every worker with "
              "--signing-key or TETHER_SIGNING_KEY", file=sys.stderr)
        return 0

    async def act() -> int:
        now = time.time()
        async with keystore.connect(args.db) as db:
            if args.action == "create":
                record, key = await keystore.create(db, kind=args.kind, name=args.name,
                                                    read_only=args.read_only, now=now)
                print(key)
                print(f"{record.kind} key {record.id} stored"
                      f"{' (read-only)' if record.read_only else ''}; it is shown only now",
                      file=sys.stderr)
            elif args.action == "list":
                print(_key_table(await keystore.list_keys(db)))
            else:
                record = await keystore.revoke(db, args.key_id, now=now)
                print(f"revoked {record.kind} key {record.id} ({record.name or 'no name'}); "
                      "gateways refuse it within their --key-refresh", file=sys.stderr)
        return 0

    try:
        return asyncio.run(act())
    except TetherError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInput) else 1


def _key_table(records: Sequence[Any]) -> str:
    from datetime import UTC, datetime

    def when(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")

    rows = [("ID", "KIND", "NAME", "KEY", "ACCESS", "CREATED", "REVOKED")]
    rows += [(r.id, r.kind, r.name or "-", r.hint,
              "read-only" if r.read_only else "full" if r.kind == "api" else "events",
              when(r.created_at), when(r.revoked_at)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


SEND_DESCRIPTION = """\
Send one event to a running gateway, as app.send does, and print its id once it is stored.

  python -m gateway send shop/order.created --data '{"order_id": 42}'
  python -m gateway send shop/order.created --data '{"order_id": 42}' --id order-42
  python -m gateway send reminders/due --ts 1767225600000       start its runs at that time
  TETHER_API_URL=https://tether.example.com TETHER_EVENT_KEY=... python -m gateway send ...

An --id seen in the last 24 h is accepted again but starts nothing (deduplicated).
Exit codes: 0 sent, 1 refused or unreachable, 2 bad arguments.
"""


def _send_parser(environ: Mapping[str, str] | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway send", description=SEND_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="the event name, e.g. shop/order.created")
    p.add_argument("--data", default="{}", metavar="JSON",
                   help="the event's data, a JSON object (default: {})")
    p.add_argument("--id", default=None, metavar="ID",
                   help="the event id, for deduplication (default: the gateway makes one)")
    p.add_argument("--ts", default=None, type=int, metavar="MS",
                   help="the event time in milliseconds since the epoch; in the future, its "
                   "runs start then (default: now)")
    add_option(p, "--api-url", env="API_URL", environ=environ,
               default="http://127.0.0.1:8288", metavar="URL",
               help="the gateway's HTTP API")
    add_option(p, "--event-key", env="EVENT_KEY", environ=environ, default="dev",
               metavar="KEY", help="an event key the gateway accepts (any works with --dev)")
    return p


def _send(argv: list[str], environ: Mapping[str, str] | None) -> int:
    """``send NAME``: the id on stdout, errors on stderr."""
    import json

    from worker.app import App, Event

    args = _send_parser(environ).parse_args(argv)
    # TETHER_EVENT_KEY may list several keys for the gateway (comma-separated): use the first.
    key = args.event_key.split(",")[0].strip()
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        print(f"error: --data is not valid JSON ({exc}); quote it for the shell, e.g. "
              """--data '{"order_id": 42}'""", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("error: --data must be a JSON object, e.g. --data '{\"order_id\": 42}'",
              file=sys.stderr)
        return 2
    try:
        ids = App("cli").send_sync(Event(args.name, data, id=args.id, ts=args.ts),
                                   api_url=args.api_url, event_key=key)
    except TetherError as exc:
        hint = ("; pass --event-key or set TETHER_EVENT_KEY" if "(401)" in exc.message
                else "; is the gateway running? see --api-url or TETHER_API_URL"
                if "could not reach" in exc.message else "")
        print(f"error: {exc.message}{hint}", file=sys.stderr)
        return 1
    for event_id in ids:
        print(event_id)
    return 0


def _migrate(db: str) -> int:
    from gateway.store import migrations

    try:
        backend, location = db_backend(db)
    except InvalidInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if backend == "sqlite":
        # Under the gateway's own lock: never beneath a running gateway's feet.
        lock = DatabaseLock(Path(location))
        try:
            lock.acquire({"command": "migrate"})
        except DatabaseInUse as exc:
            print(f"error: {exc.message}; migrations run when the gateway starts",
                  file=sys.stderr)
            return 1
        try:
            prepare_files(Path(location))
            applied = migrations.apply(f"sqlite:///{location}", backend)
        finally:
            lock.release()
    else:
        import psycopg

        from gateway.store.postgres import unreachable

        try:
            applied = migrations.apply(migrations.yoyo_url(location), backend)
        except psycopg.OperationalError as exc:
            print(f"error: {unreachable(db, exc).message}", file=sys.stderr)
            return 1
    log.info("migrations_applied", db=db, applied=applied or "none (schema is current)")
    return 0


#: Exit code of a gateway that stopped because a vital task died (EX_SOFTWARE).
EXIT_TASK_DIED = 70


def _run(settings: Settings) -> int:
    code = [0]
    _raise_open_files_limit()
    run_loop(_serve(settings, code))
    return code[0]


def _raise_open_files_limit() -> None:
    """Let the HTTP server's connection cap, not the common soft limit of 1,024 open files,
    be what refuses connections: raise the soft limit to the hard one (no privilege needed)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (hard if hard != resource.RLIM_INFINITY else max(soft, 65536),
                                hard))
    except (ValueError, OSError) as exc:  # a container may forbid it: keep what we have
        log.warning("open_files_limit_unchanged", error=str(exc))


async def _serve(settings: Settings, code: list[int]) -> None:
    from gateway.app import Gateway

    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    stopped, failed = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(
        gateway.failed.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    await gateway.stop()
    if gateway.failure is not None:
        code[0] = EXIT_TASK_DIED
