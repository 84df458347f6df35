"""worker.threads: plain step code runs on few threads, one more in place of each blocked one.

Whether a thread counts as blocked is decided by an injected clock: a frozen clock means no
job ever ran long, an advanced one that the running jobs all did.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest

from tests.helpers.waiting import bound, eventually
from worker.threads import Mailbox, StepThreads

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Events that blocking jobs wait on; all set on the way out."""
    made: list[threading.Event] = []
    yield made
    for gate in made:
        gate.set()


def blocker(gates: list[threading.Event]) -> tuple[threading.Event, threading.Event]:
    """(started, gate): a job ``gate.wait`` after setting ``started``."""
    started, gate = threading.Event(), threading.Event()
    gates.append(gate)
    return started, gate


def wait_blocked(started: threading.Event, gate: threading.Event) -> str:
    started.set()
    gate.wait(bound(30))
    return "released"


async def test_results_exceptions_and_context_come_back_to_the_loop() -> None:
    threads = StepThreads(core=2, limit=4)
    try:
        assert await threads.run(lambda x, *, y: x + y, 1, y=2) == 3

        def fails() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await threads.run(fails)
        VAR.set("from the step")
        context = contextvars.copy_context()
        assert await threads.run(context.run, VAR.get) == "from the step"
        loop_thread = threading.get_ident()
        assert await threads.run(threading.get_ident) != loop_thread
    finally:
        threads.shutdown()


async def test_a_burst_of_short_jobs_is_served_by_one_thread(clock: Clock) -> None:
    threads = StepThreads(core=2, limit=50, grow_after=0.001, clock=clock)
    try:
        results = await asyncio.gather(*(threads.run(lambda i=i: i * 2) for i in range(500)))
        assert results == [i * 2 for i in range(500)]
        # One thread woken for the burst; the clock never moved: no job counted as blocked.
        assert threads.threads == 1
    finally:
        threads.shutdown()


async def test_a_blocked_thread_is_replaced_once_it_ran_long(clock: Clock, gates) -> None:
    threads = StepThreads(core=1, limit=4, grow_after=0.001, clock=clock)
    try:
        started, gate = blocker(gates)
        first = threads.run(wait_blocked, started, gate)
        await eventually(lambda: _true(started.is_set()), what="the first job to start")
        second = threads.run(lambda: "second")
        for _ in range(20):  # the growth check runs every millisecond meanwhile
            await asyncio.sleep(0.002)
        assert not second.done() and threads.threads == 1  # not blocked for long yet

        clock.now += 1.0  # the first job has now run for a second: it counts as blocked
        assert await asyncio.wait_for(second, bound(10)) == "second"
        assert threads.threads == 2 and not first.done()
        gate.set()
        assert await asyncio.wait_for(first, bound(10)) == "released"
    finally:
        threads.shutdown()


async def test_a_burst_of_blocking_jobs_gets_a_thread_for_each(clock: Clock, gates) -> None:
    threads = StepThreads(core=1, limit=20, grow_after=0.001, clock=clock)
    try:
        blocked = [blocker(gates) for _ in range(8)]
        jobs = [threads.run(wait_blocked, s, g) for s, g in blocked]
        await eventually(lambda: _true(blocked[0][0].is_set()), what="the first job to start")
        for _ in range(20):  # the clock is frozen: one thread, the others wait their turn
            await asyncio.sleep(0.002)
        assert threads.threads == 1 and not any(s.is_set() for s, _ in blocked[1:])

        async def all_started() -> bool:
            clock.now += 1.0  # every running job has now run long: blocked
            return all(s.is_set() for s, _ in blocked)

        await eventually(all_started, what="every blocked job to get a thread")
        assert threads.threads == 8
        for _, gate in blocked:
            gate.set()
        assert await asyncio.wait_for(asyncio.gather(*jobs), bound(10)) == ["released"] * 8
    finally:
        threads.shutdown()


async def test_a_job_waiting_for_the_gil_behind_a_busy_process_is_not_blocked(
        clock: Clock, gates) -> None:
    """Its thread used no CPU while the process did: it waits for the GIL, up to 20 ms."""
    busy = {"process": 0.0}

    def cpu(ident: int | None) -> float:
        return busy["process"] if ident is None else 0.0

    threads = StepThreads(core=1, limit=4, grow_after=0.001, clock=clock, cpu=cpu)
    try:
        started, gate = blocker(gates)
        first = threads.run(wait_blocked, started, gate)
        await eventually(lambda: _true(started.is_set()), what="the first job to start")
        second = threads.run(lambda: "second")
        for _ in range(8):  # 16 ms, the process busy all along: waiting, not blocked
            clock.now += 0.002
            busy["process"] += 0.002
            await asyncio.sleep(0.002)
        assert threads.threads == 1 and not second.done()

        clock.now += 1.0  # past a few switch intervals: blocked, however busy the process
        busy["process"] += 1.0
        assert await asyncio.wait_for(second, bound(10)) == "second"
        assert threads.threads == 2
        gate.set()
        assert await asyncio.wait_for(first, bound(10)) == "released"
    finally:
        threads.shutdown()


async def test_threads_beyond_core_exit_when_idle(clock: Clock, gates) -> None:
    threads = StepThreads(core=1, limit=4, grow_after=0.001, idle_exit=0.05, clock=clock)
    try:
        started, gate = blocker(gates)
        first = threads.run(wait_blocked, started, gate)
        await eventually(lambda: _true(started.is_set()), what="the first job to start")
        clock.now += 1.0
        assert await asyncio.wait_for(threads.run(lambda: 2), bound(10)) == 2
        assert threads.threads == 2
        gate.set()
        await asyncio.wait_for(first, bound(10))
        await eventually(lambda: _true(threads.threads == 1), what="the extra thread to exit")
        assert await asyncio.wait_for(threads.run(lambda: 3), bound(10)) == 3
    finally:
        threads.shutdown()


async def test_never_more_threads_than_the_limit(clock: Clock, gates) -> None:
    threads = StepThreads(core=1, limit=2, grow_after=0.001, clock=clock)
    try:
        blocked = [blocker(gates) for _ in range(2)]
        jobs = [threads.run(wait_blocked, s, g) for s, g in blocked]
        await eventually(lambda: _true(blocked[0][0].is_set()), what="a job to start")
        clock.now += 1.0
        await eventually(lambda: _true(all(s.is_set() for s, _ in blocked)),
                         what="both jobs to start")
        third = threads.run(lambda: "third")
        clock.now += 1.0
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert threads.threads == 2 and not third.done()
        blocked[0][1].set()  # a thread comes free: it takes the waiting job
        assert await asyncio.wait_for(third, bound(10)) == "third"
        blocked[1][1].set()
        await asyncio.wait_for(asyncio.gather(*jobs), bound(10))
    finally:
        threads.shutdown()


async def test_shutdown_cancels_queued_jobs_and_refuses_new_ones(clock: Clock, gates) -> None:
    threads = StepThreads(core=1, limit=1, clock=clock)
    started, gate = blocker(gates)
    running = threads.run(wait_blocked, started, gate)
    await eventually(lambda: _true(started.is_set()), what="the job to start")
    queued = threads.run(lambda: "never")
    threads.shutdown()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, bound(10))
    with pytest.raises(RuntimeError, match="shut down"):
        threads.run(lambda: 1)
    gate.set()  # a running job finishes and is delivered
    assert await asyncio.wait_for(running, bound(10)) == "released"


async def test_a_thread_calls_the_loop_and_posts_in_order() -> None:
    mailbox = Mailbox(asyncio.get_running_loop())
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []

    def on_loop(tag: str) -> int:
        seen.append((tag, threading.get_ident()))
        return len(seen)

    def fails() -> None:
        raise ValueError("on the loop")

    def from_thread() -> tuple[int, str]:
        for i in range(5):
            mailbox.post(on_loop, f"post-{i}")
        count = mailbox.call(on_loop, "call")
        try:
            mailbox.call(fails)
        except ValueError as exc:
            return count, str(exc)
        return count, "no error"

    count, error = await asyncio.wait_for(asyncio.to_thread(from_thread), bound(10))
    assert count == 6 and error == "on the loop"
    assert [tag for tag, _ in seen] == [f"post-{i}" for i in range(5)] + ["call"]
    assert {ident for _, ident in seen} == {loop_thread}


async def _true(value: bool) -> bool:
    return value
