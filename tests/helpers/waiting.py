"""Waiting for an observable outcome under a bound, never sleeping and hoping.

Bounds are multiplied by ``TETHER_TEST_TIMEOUT_FACTOR`` (default 1) on slow machines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

FACTOR = float(os.environ.get("TETHER_TEST_TIMEOUT_FACTOR", "1"))


def bound(seconds: float) -> float:
    """A timeout scaled for this machine."""
    return seconds * FACTOR


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``predicate`` (a check of a real process's observable state) until truthy."""
    deadline = time.monotonic() + bound(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound(timeout):.1f}s waiting for {what}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Awaitable[T]], timeout: float = 10.0,
                     interval: float = 0.01, what: str = "condition") -> T:
    """Async :func:`wait_until`."""
    deadline = time.monotonic() + bound(timeout)
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound(timeout):.1f}s waiting for {what}")
        await asyncio.sleep(interval)
