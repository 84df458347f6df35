"""The command lines' loop runner: the worker's shorter GIL switch interval takes effect."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from cmdline.options import run_loop
from worker.cli import SWITCH_INTERVAL


@pytest.fixture(autouse=True)
def _heap_restored() -> Iterator[None]:
    """run_loop settles the heap for a long-lived process; give the test process its own back."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_run_loop_sets_the_switch_interval_the_worker_asks_for():
    before = sys.getswitchinterval()
    seen: list[float] = []

    async def main() -> None:
        seen.append(sys.getswitchinterval())

    try:
        run_loop(main(), switch_interval=SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)
    assert seen == [SWITCH_INTERVAL]
    assert before > SWITCH_INTERVAL


def test_run_loop_leaves_the_switch_interval_alone_by_default():
    before = sys.getswitchinterval()
    seen: list[float] = []

    async def main() -> None:
        seen.append(sys.getswitchinterval())

    run_loop(main())
    assert seen == [before]
