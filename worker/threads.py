"""Threads for the user's plain (``def``) code, and the way back to the event loop.

Rule 1: user code that is not ``async`` never runs on the event loop. The loop carries the
socket and its heartbeats; a ``def`` step that blocks for ten seconds must cost its own run
ten seconds and nothing else. (Running short callables inline was measured and rejected: no
budget can tell in advance that the next call will not block.)

Rule 2: few threads, grown on demand. A handful of threads serve short steps one after the
other; when every thread is busy (steps that block), a job that waited ``grow_after`` gets a
thread of its own, up to ``limit``. Threads idle for ``idle_exit`` go away, down to ``core``.
A thread per job, as ``ThreadPoolExecutor`` grows under a burst of short steps, costs each
step several times its own work in thread wake-ups and GIL hand-offs.

Rule 3: results come back to the loop in batches: the first result of a batch wakes the loop
(``call_soon_threadsafe``), the results that arrive before the loop gets to them ride along.
Calls from ``def`` functions to the loop (their step bookkeeping) take the same way, as plain
calls, without creating a task each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("tether.worker")

T = TypeVar("T")

_Job = tuple["asyncio.Future[Any]", "Mailbox", Callable[..., Any], tuple[Any, ...]] | None


class LoopGone(RuntimeError):
    """The event loop is closed: nothing posted to it would ever run."""


class Mailbox:
    """Calls posted from threads, run on the loop in batches (one wake-up per batch)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon (any thread). Its exceptions are logged.

        Raises:
            LoopGone: the loop is closed.
        """
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed
            with self._lock:
                self._scheduled = False
            raise LoopGone("the worker's event loop is closed") from None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the loop, from a thread that waits for its result."""
        answer = _Answer()
        self.post(answer.fill, fn, args)
        answer.done.acquire()
        if answer.error is not None:
            raise answer.error
        return answer.value  # type: ignore[no-any-return]

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, collections.deque()
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:  # one bad callback must not drop the rest of the batch
                log.exception("mailbox_callback_failed")


class _Answer:
    """One blocking call's result; ``done`` is released once it is there."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def fill(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:  # handed to the waiting thread, raised there
            self.error = exc
        finally:
            self.done.release()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile (the run ended)
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


class _Slot:
    """One thread's current job: since when it runs (None: idle), and whether a thread was
    already added in its place."""

    __slots__ = ("replaced", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.replaced = False


class StepThreads:
    """A thread pool for plain step callables and ``def`` functions (see the module's rules).

    Args:
        core: threads kept once started (started on demand).
        limit: threads at most (every run may have a ``def`` body and a step on a thread).
        grow_after: a thread whose job has run this long (seconds) counts as blocked: while
            jobs wait, a thread is added in its place.
        idle_exit: seconds after which an idle thread beyond ``core`` exits.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, *, core: int, limit: int, grow_after: float = 0.002,
                 idle_exit: float = 30.0, name: str = "tether-step",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if core < 1 or limit < core:
            raise ValueError("StepThreads needs 1 <= core <= limit")
        self.core = core
        self.limit = limit
        self.grow_after = grow_after
        self.idle_exit = idle_exit
        self.name = name
        self.clock = clock
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.threads = 0  # started and not exited
        self._slots: set[_Slot] = set()
        self._idle = 0  # threads waiting for a job that no queued job has claimed yet
        self._backlog = 0  # queued jobs that found no idle thread
        self._growing: asyncio.TimerHandle | None = None
        self._mailbox: Mailbox | None = None
        self._closed = False
        self._started = 0
        self._spawns: queue.SimpleQueue[bool] | None = None

    def mailbox(self) -> Mailbox:
        """The running loop's mailbox (call on the loop)."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailbox
        if mailbox is None or mailbox.loop is not loop:
            mailbox = self._mailbox = Mailbox(loop)
        return mailbox

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """``fn(*args, **kwargs)`` on a thread; the future completes on the loop (call on it).

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        if self._closed:
            raise RuntimeError("the worker's step threads are shut down")
        mailbox = self.mailbox()
        future: asyncio.Future[T] = mailbox.loop.create_future()
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        self._jobs.put((future, mailbox, fn, args))
        start = False
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes it
            elif self.threads < self.core:
                self.threads += 1
                start = True
            else:  # the busy threads take it in turn, unless they are blocked (see _grow)
                self._backlog += 1
                if self._growing is None:
                    self._growing = mailbox.loop.call_later(self.grow_after, self._grow)
        if start:
            self._start()
        return future

    def _grow(self) -> None:
        """While jobs wait: a new thread for each thread blocked in one job (up to limit).

        Busy threads that keep finishing jobs drain the backlog themselves: more threads
        would only cost more wake-ups.
        """
        with self._lock:
            self._growing = None
            if self._closed or not self._backlog:
                return
            now = self.clock()
            count = min(self._backlog, self.limit - self.threads)
            added = 0
            for slot in self._slots:
                if added >= count:
                    break
                since = slot.since
                if since is not None and not slot.replaced and now - since >= self.grow_after:
                    slot.replaced = True
                    added += 1
            self._backlog -= added
            self.threads += added
            if self._backlog and self._mailbox is not None:
                self._growing = self._mailbox.loop.call_later(self.grow_after, self._grow)
        if added:
            log.debug("step_threads_grown", added=added, threads=self.threads)
        for _ in range(added):
            self._start()

    def _start(self) -> None:
        """A new thread, started by the spawner thread: ``Thread.start`` waits until the new
        thread runs, which takes long on a busy machine, and the loop must not wait."""
        spawns = self._spawns
        if spawns is None:
            spawns = self._spawns = queue.SimpleQueue()
            threading.Thread(target=self._spawn, args=(spawns,), name=f"{self.name}-spawner",
                             daemon=True).start()
        spawns.put(True)

    def _spawn(self, spawns: queue.SimpleQueue[bool]) -> None:
        while spawns.get():
            self._started += 1
            # Daemon threads: a hung step must not hold the process at exit.
            threading.Thread(target=self._serve, name=f"{self.name}-{self._started}",
                             daemon=True).start()

    def _serve(self) -> None:
        jobs, lock, clock = self._jobs, self._lock, self.clock
        slot = _Slot()
        with lock:
            self._slots.add(slot)
        while True:
            try:
                job = jobs.get(timeout=self.idle_exit)
            except queue.Empty:
                with lock:
                    # Idle and unclaimed: leave if there are more threads than ``core``.
                    if self._idle and self.threads > self.core:
                        self._idle -= 1
                        self.threads -= 1
                        self._slots.discard(slot)
                        return
                continue
            if job is None:  # shutdown
                return
            future, mailbox, fn, args = job
            if not future.cancelled():  # else its run ended before it started: skip it
                slot.since = clock()
                value: Any = None
                error: BaseException | None = None
                try:
                    value = fn(*args)
                except BaseException as exc:  # user code: the awaiting step records it
                    error = exc
                slot.since = None
                slot.replaced = False
                with contextlib.suppress(LoopGone):  # else nobody is waiting any more
                    mailbox.post(_settle, future, value, error)
                del value, error
            del job, future, fn, args
            with lock:
                if self._backlog:
                    self._backlog -= 1  # a queued job that found no idle thread: take it
                else:
                    self._idle += 1

    def shutdown(self) -> None:
        """Start nothing more; idle threads exit. Running jobs finish (or are abandoned)."""
        with self._lock:
            self._closed = True
            if self._growing is not None:
                self._growing.cancel()
                self._growing = None
            count = self.threads
        while True:  # queued jobs are dropped: their runs are over
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    job[1].loop.call_soon_threadsafe(job[0].cancel)
        for _ in range(count):
            self._jobs.put(None)
        if self._spawns is not None:
            self._spawns.put(False)
