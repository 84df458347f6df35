"""``python -m worker MODULE:APP [MODULE:APP ...]``: serve apps until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from cmdline.logs import configure
from cmdline.options import add_option, run_loop
from cmdline.tracing import add_trace_options, tracer_provider
from protocol.errors import InvalidInput
from worker.app import App
from worker.connection import FatalGatewayError
from worker.runtime import Worker, exit_abandoned

log = structlog.get_logger("tether.worker")

DESCRIPTION = """\
Tether worker: connects out to a gateway over a WebSocket and runs the functions of the given
apps. Start as many workers as you like; each takes up to --concurrency runs at once.

  python -m worker myapp:app
  python -m worker myapp:app billing.jobs:app --concurrency 50 \\
      --gateway ws://gw1:8289/connect --gateway ws://gw2:8289/connect --signing-key KEY

SIGTERM or SIGINT drains: no new runs, running steps get --drain-timeout seconds to finish,
the rest go back to the gateway for other workers.
"""


def _parser(environ: Mapping[str, str] | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("apps", nargs="+", metavar="MODULE:APP",
                   help="where an App lives: myapp:app (an importable module) or "
                   "./myapp.py:app (a file)")
    add_option(p, "--gateway", env="GATEWAY_URL", environ=environ, action="append",
               dest="gateways", default=[], metavar="URL",
               help="gateway worker socket (default ws://127.0.0.1:8289/connect); repeat "
               "for several gateways: the worker moves to the next when one goes away")
    add_option(p, "--concurrency", env="CONCURRENCY", environ=environ, type=int, default=100,
               help="runs in flight at most")
    add_option(p, "--instance-id", env="INSTANCE_ID", environ=environ, default=None,
               help="stable name of this worker in logs and the API (default: hostname-pid)")
    add_option(p, "--signing-key", env="SIGNING_KEY", environ=environ, default=None,
               metavar="KEY", help="the gateway's signing key (not needed for a --dev gateway)")
    add_option(p, "--drain-timeout", env="DRAIN_TIMEOUT", environ=environ, type=float,
               default=30.0, help="seconds running steps get to finish on shutdown")
    add_option(p, "--log-format", env="LOG_FORMAT", environ=environ,
               choices=["console", "json"], default="console", help="log line format")
    add_option(p, "--log-level", env="LOG_LEVEL", environ=environ,
               choices=["debug", "info", "warning", "error"], default="info",
               help="lowest level logged")
    add_trace_options(p, environ)
    return p


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and check it is an App.

    Raises:
        SystemExit: with a message saying what to fix.
    """
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise SystemExit(f"error: {spec!r} is not MODULE:APP (for example myapp:app)")
    if "" not in sys.path:
        sys.path.insert(0, "")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = _load_file(module_name, spec)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
    found = (f"it has {', '.join(f'{module_name}:{name}' for name in apps)}" if apps
             else "it has no worker.App at module level")
    if not hasattr(module, attr):
        raise SystemExit(f"error: module {module_name!r} has no attribute {attr!r}; {found}")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise SystemExit(
            f"error: {spec!r} is a {type(app).__name__}, not a worker.App; {found}")
    return app


def _load_file(path: str, spec: str) -> ModuleType:
    """Load a Python file as a module named after it, with its folder importable (so the
    file's own imports of its neighbours work as they do with ``python file.py``)."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(
            f"error: {spec!r}: no file {path!r} (from {os.getcwd()}); give MODULE:APP or "
            "a path to a .py file such as ./myapp.py:app"
        )
    if file.suffix != ".py":
        raise SystemExit(f"error: {spec!r}: {path!r} is not a .py file")
    name = file.stem
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == \
            file.resolve():
        return loaded
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"error: {spec!r}: cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickling, dataclasses and re-imports find it
    module_spec.loader.exec_module(module)
    return module

#: The worker's GIL switch interval (CPython's default is 5 ms). Step threads, the watchdog and
#: the tracer's exporter can keep the GIL that long from the loop that answers the gateway; at
#: 1 ms, light-load event -> completed fell from p50 2.9-4.2 to 2.4-2.7 ms and p99 at 80% of the
#: maximum from 18-74 to 15-27 ms, with no loss of throughput (docs/performance.md).
SWITCH_INTERVAL = 0.001


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser(environ).parse_args(argv)
    configure(args.log_format, args.log_level)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        provider = _tracer_provider(args.traces)
    except InvalidInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    apps = [load_app(spec) for spec in args.apps]
    worker = Worker(
        apps, gateways=args.gateways or ["ws://127.0.0.1:8289/connect"],
        concurrency=args.concurrency, instance_id=args.instance_id,
        signing_key=args.signing_key, drain_timeout=args.drain_timeout,
        tracer_provider=provider,
    )
    try:
        run_loop(_serve(worker), switch_interval=SWITCH_INTERVAL)
    except FatalGatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if provider is not None:
            provider.shutdown()  # export the spans still buffered
    if worker.abandoned is not None:
        exit_abandoned()
    return 0


def _tracer_provider(exporter: str) -> Any:
    """With ``--traces``: the SDK provider, made global so that the user's own spans (and
    instrumented libraries) go where the worker's go, nested under their steps."""
    if exporter == "none":
        return None
    provider = tracer_provider(exporter, service_name="tether-worker")
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    return provider


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(worker.run())
    for sig in (signal.SIGTERM, signal.SIGINT):  # the first drains, a second stops at once
        loop.add_signal_handler(sig, worker.interrupt)
    await serving
