"""Command-line helpers shared by ``python -m gateway`` and ``python -m worker``.

Every option can also come from a ``TETHER_*`` environment variable, and ``--help`` says which.
The parsers read the environment once, here, and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Coroutine, Mapping
from typing import Any

ENV_PREFIX = "TETHER_"


def add_option(
    parser: argparse.ArgumentParser | Any,
    *flags: str,
    env: str,
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> None:
    """``parser.add_argument`` whose default comes from ``TETHER_<env>`` when set.

    For ``action="append"`` options the variable holds a comma-separated list; for
    ``store_true`` options any of 1/true/yes/on turns it on.
    """
    environ = os.environ if environ is None else environ
    name = ENV_PREFIX + env
    raw = environ.get(name)
    if raw is not None and raw != "":
        action = kwargs.get("action")
        if action == "append":
            kwargs["default"] = [v.strip() for v in raw.split(",") if v.strip()]
        elif action == "store_true":
            kwargs["default"] = raw.strip().lower() in {"1", "true", "yes", "on"}
        else:
            kwargs["default"] = kwargs.get("type", str)(raw)
    help_text = kwargs.get("help", "")
    default = kwargs.get("default")
    shown = "" if default in (None, [], False) or kwargs.get("action") == "append" else (
        f" (default: {default})" if "%(default)" not in help_text else ""
    )
    kwargs["help"] = f"{help_text}{shown} [env: {name}]"
    parser.add_argument(*flags, **kwargs)


#: Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the hot paths of a long-running process.

    A serving process holds a large heap that never changes (imported modules, pydantic
    schemas, the app) and allocates many short-lived objects per run. With the default
    thresholds the collector ran so often, and walked that whole heap so many times, that
    it took about a fifth of a worker's CPU time under load. Moving what exists at
    start-up out of its reach (``gc.freeze``) and collecting the young generation less
    often leaves garbage collection to refcounting, as before, with cycles still collected.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_loop(main: Coroutine[Any, Any, None], *, switch_interval: float | None = None) -> None:
    """Run ``main`` on uvloop where it is installed (it is a dependency on POSIX).

    ``switch_interval`` (seconds) replaces CPython's 5 ms: how long another thread may keep
    the GIL before the event loop's thread, waiting for it, forces a hand-over.
    """
    settle_heap()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
    else:
        uvloop.run(main)
