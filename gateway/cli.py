"""``python -m gateway``: serve (the default), ``migrate``, or ``keys``."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence

import structlog

from gateway.config import DEFAULT_DB, Settings, db_backend
from protocol.cli import add_option, run_loop
from protocol.errors import InvalidInput
from protocol.logs import configure

log = structlog.get_logger("tether.gateway")

DESCRIPTION = """\
Tether gateway: receives events over HTTP, stores runs and step results, and leases runs to
workers connected over a WebSocket.

  python -m gateway --dev                      local use: no auth, SQLite in ./.tether/
  python -m gateway --signing-key KEY --event-key EVENTKEY
  python -m gateway migrate --db sqlite:///path/to/tether.db
  python -m gateway keys                       print a new signing key and event key
"""


def _serve_parser(environ: Mapping[str, str] | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sub-commands: 'migrate' applies schema migrations and exits; 'keys' prints "
        "fresh keys. Every option can be set from the environment variable shown.",
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
               help="secret shared with workers and used as the management API bearer token; "
               "repeat to accept an old key while rotating")
    add_option(sec, "--event-key", env="EVENT_KEY", environ=environ, action="append",
               dest="event_keys", default=[], metavar="KEY",
               help="key accepted on POST /e/KEY; repeatable")
    add_option(sec, "--api-key", env="API_KEY", environ=environ, action="append",
               dest="api_keys", default=[], metavar="KEY",
               help="extra bearer token for the management API (the signing key works too); "
               "repeatable")
    add_option(sec, "--dev", env="DEV", environ=environ, action="store_true", default=False,
               help="local development: no signing key, any event key, open management API")
    run = p.add_argument_group("runs")
    add_option(run, "--retry-base", env="RETRY_BASE", environ=environ, type=float,
               default=10.0, help="seconds of the first retry delay; doubles per attempt")
    add_option(run, "--heartbeat-interval", env="HEARTBEAT_INTERVAL", environ=environ,
               type=float, default=5.0,
               help="seconds between worker heartbeats; 3 missed ones lose the worker's leases")
    add_option(run, "--max-event-size", env="MAX_EVENT_SIZE", environ=environ, type=int,
               default=512 * 1024, help="largest event accepted, in bytes")
    add_option(run, "--max-request-size", env="MAX_REQUEST_SIZE", environ=environ, type=int,
               default=3 * 1024 * 1024, help="largest POST /e body accepted, in bytes")
    add_option(run, "--max-steps", env="MAX_STEPS", environ=environ, type=int, default=1000,
               help="steps a run may take (workers enforce it)")
    add_option(run, "--max-step-result", env="MAX_STEP_RESULT", environ=environ, type=int,
               default=4 * 1024 * 1024, help="largest step result or run output, in bytes")
    add_option(run, "--max-run-state", env="MAX_RUN_STATE", environ=environ, type=int,
               default=32 * 1024 * 1024, help="largest total of a run's step results, in bytes")
    logs = p.add_argument_group("logging")
    add_option(logs, "--log-format", env="LOG_FORMAT", environ=environ,
               choices=["console", "json"], default="console", help="log line format")
    add_option(logs, "--log-level", env="LOG_LEVEL", environ=environ,
               choices=["debug", "info", "warning", "error"], default="info",
               help="lowest level logged")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host, port=args.port, connect_port=args.connect_port, db=args.db,
        signing_keys=args.signing_keys, event_keys=args.event_keys, api_keys=args.api_keys,
        dev=args.dev,
        retry_base=args.retry_base, heartbeat_interval=args.heartbeat_interval,
        log_format=args.log_format, log_level=args.log_level,
        max_event_size=args.max_event_size, max_request_size=args.max_request_size,
        max_steps=args.max_steps, max_step_result=args.max_step_result,
        max_run_state=args.max_run_state,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keys":
        argparse.ArgumentParser(  # --help explains (and prints no key); other arguments fail
            prog="python -m gateway keys",
            description="Print a fresh signing key and event key (nothing is stored).",
        ).parse_args(argv[1:])
        print(f"signing key: signkey-{secrets.token_hex(32)}")
        print(f"event key:   evtkey-{secrets.token_hex(16)}")
        return 0
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
    except OSError as exc:
        log.error("gateway_failed", error=str(exc))
        print(f"error: {exc} (is another gateway using the port? see --port, "
              "--connect-port)", file=sys.stderr)
        return 1


def _migrate(db: str) -> int:
    from gateway.store import migrations

    try:
        backend, location = db_backend(db)
    except InvalidInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if backend == "sqlite":
        from pathlib import Path

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{location}"
    else:
        url = migrations.yoyo_url(location)
    applied = migrations.apply(url, backend)
    log.info("migrations_applied", db=db, applied=applied or "none (schema is current)")
    return 0


def _run(settings: Settings) -> int:
    run_loop(_serve(settings))
    return 0


async def _serve(settings: Settings) -> None:
    from gateway.app import Gateway

    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    await stop.wait()
    await gateway.stop()
