"""Threads for the user's plain (``def``) code, and the way back to the event loop.

Rule 1: user code that is not ``async`` never runs on the event loop. The loop carries the
socket and its heartbeats; a ``def`` step that blocks for ten seconds must cost its own run
ten seconds and nothing else. (Running short callables inline was measured and rejected: no
budget can tell in advance that the next call will not block.)

Rule 2: few threads awake, more only for blocked ones. A burst of plain steps wakes one
thread, which serves the queued jobs one after the other: a wake-up and a GIL hand-off per
job would cost more than the steps' own work. A thread blocked in one job (it ran
``grow_after`` without waiting for the GIL) gets two more threads woken while jobs wait, up
to ``limit``. Threads idle for ``idle_exit`` go away, down to ``core``.

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
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("tether.worker")

T = TypeVar("T")

_Job = tuple["asyncio.Future[Any]", "Mailbox", Callable[..., Any], tuple[Any, ...]]


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


def cpu_seconds(ident: int | None) -> float:
    """CPU seconds used by the thread ``ident``, or by the process (None); 0.0 for a thread
    where the platform cannot tell."""
    if ident is None:
        return time.process_time()
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError):  # no per-thread clocks here, or the thread is gone
        return 0.0


class _Slot:
    """One thread: its current job (since when it runs; None: between jobs), whether it
    counts as blocked (a thread was woken in its place), and the lock it parks on."""

    __slots__ = ("ident", "jobs", "replaced", "seen", "since", "wake")

    def __init__(self) -> None:
        self.since: float | None = None
        self.replaced = False
        self.jobs = 0  # jobs started: the growth check tells a long job from a new one
        self.ident = threading.get_ident()
        #: (jobs, the thread's CPU seconds) at the last growth check that saw it in a job
        self.seen: tuple[int, float] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # released to wake the thread while it is parked


class StepThreads:
    """A thread pool for plain step callables and ``def`` functions (see the module's rules).

    One thread awake at a time serves the queued jobs one after the other: a burst of plain
    steps costs one wake-up, and their results reach the loop together. A thread counts as
    blocked when its job ran ``grow_after`` while the process left it the GIL (waiting for
    the GIL behind a busy loop is not blocking); two threads are then woken (parked ones
    first, up to ``limit``) for each blocked one while jobs wait.

    Args:
        core: threads kept once started (started on demand).
        limit: threads at most (every run may have a ``def`` body and a step on a thread).
        grow_after: a thread whose job has run this long (seconds) without waiting for the
            GIL counts as blocked; checked every half of it while jobs wait.
        idle_exit: seconds after which an idle thread beyond ``core`` exits.
        clock: monotonic seconds (injected by tests).
        cpu: CPU seconds of a thread (its ident) or of the process (None) (injected by tests).
    """

    def __init__(self, *, core: int, limit: int, grow_after: float = 0.002,
                 idle_exit: float = 30.0, name: str = "tether-step",
                 clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[int | None], float] = cpu_seconds) -> None:
        if core < 1 or limit < core:
            raise ValueError("StepThreads needs 1 <= core <= limit")
        self.core = core
        self.limit = limit
        self.grow_after = grow_after
        self.idle_exit = idle_exit
        self.name = name
        self.clock = clock
        self.cpu = cpu
        self._jobs: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self.threads = 0  # started and not exited
        self._slots: set[_Slot] = set()
        self._parked: list[_Slot] = []  # idle threads, the most recently parked last
        self._awake = 0  # threads that will take queued jobs: not parked, not blocked
        self._growing: asyncio.TimerHandle | None = None
        self._checked: tuple[float, float] | None = None  # (clock, process CPU) at last check
        #: A thread waits for the GIL about one switch interval at a time (the holder is then
        #: made to hand it over): a job older than this is blocked, however busy the loop.
        self._gil_wait = max(10 * grow_after, 4 * sys.getswitchinterval())
        self._mailbox: Mailbox | None = None
        self._closed = False
        self._started = 0
        self._spawns: queue.SimpleQueue[bool] | None = None

    def mailbox(self, loop: asyncio.AbstractEventLoop | None = None) -> Mailbox:
        """The running loop's mailbox (call on the loop; ``loop`` is it, when known)."""
        if loop is None:
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
        loop = mailbox.loop
        future: asyncio.Future[T] = loop.create_future()
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        woken: _Slot | None = None
        start = False
        with self._lock:
            self._jobs.append((future, mailbox, fn, args))
            if self._awake:  # an awake thread takes it in turn (unless blocked: see _grow)
                if self._growing is None:
                    self._growing = loop.call_later(self.grow_after / 2, self._grow)
            elif self._parked:
                woken = self._parked.pop()
                self._awake += 1
            elif self.threads < self.limit:
                self.threads += 1
                self._awake += 1
                start = True
            elif self._growing is None:  # every thread blocked: the first to finish takes it
                self._growing = loop.call_later(self.grow_after / 2, self._grow)
        if woken is not None:
            woken.wake.release()
        elif start:
            self._start()
        return future

    def _grow(self) -> None:
        """While jobs wait: find the threads blocked in one job, and wake (or start) two
        threads for each, up to ``limit`` (and one if no thread is awake).

        A job counts as blocked when it ran ``grow_after`` and, since the last check, its
        thread used CPU or the rest of the process left the GIL free (a thread waiting for
        the GIL behind the busy loop only looks blocked), or when it ran ``_gil_wait``.
        Busy threads that keep finishing jobs drain the queue themselves: more threads would
        only cost wake-ups.
        """
        now = self.clock()
        cpu = self.cpu(None)
        woken: list[_Slot] = []
        with self._lock:
            self._growing = None
            if self._closed or not self._jobs:
                self._checked = None
                return
            checked, self._checked = self._checked, (now, cpu)
            blocked = busy = 0
            for slot in self._slots:
                since = slot.since
                if since is None or slot.replaced:
                    slot.seen = None
                    continue
                busy += 1
                own = self.cpu(slot.ident)
                seen, slot.seen = slot.seen, (slot.jobs, own)
                if (now - since < self.grow_after or checked is None or seen is None
                        or seen[0] != slot.jobs):
                    continue  # not long yet, or not in this job at the last check
                span = now - checked[0]
                own -= seen[1]
                others = cpu - checked[1] - own
                # Idle while the process was busy: waiting for the GIL (no time passed since
                # the last check: nothing to tell, unless the age says enough).
                waiting = span <= 0 or (own < span / 4 and others > span / 2)
                if waiting and now - since < self._gil_wait:
                    continue
                slot.replaced = True
                self._awake -= 1
                blocked += 1
                busy -= 1
            # Two for each blocked thread: when the steps block (calls over the network),
            # the threads double at each check until every waiting job has one. Jobs that
            # awake threads between jobs (woken or started, not yet running) will take
            # need none.
            unserved = len(self._jobs) - (self._awake - busy)
            count = min(max(unserved, 0), 2 * blocked)
            if not self._awake:
                count = max(count, 1)
            while count and self._parked:
                woken.append(self._parked.pop())
                count -= 1
            added = min(count, self.limit - self.threads)
            self.threads += added
            self._awake += len(woken) + added
            if self._mailbox is not None:
                self._growing = self._mailbox.loop.call_later(self.grow_after / 2, self._grow)
        if blocked:
            log.debug("step_threads_grown", blocked=blocked, woken=len(woken), added=added,
                      threads=self.threads)
        for slot in woken:
            slot.wake.release()
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
            with lock:
                if slot.replaced:  # its long job is over: it takes queued jobs again
                    slot.replaced = False
                    self._awake += 1
                if self._closed:
                    self._awake -= 1
                    self.threads -= 1
                    self._slots.discard(slot)
                    return
                if jobs:
                    future, mailbox, fn, args = jobs.popleft()
                else:
                    self._awake -= 1
                    self._parked.append(slot)
                    future = None
            if future is None:
                if not self._park(slot):
                    return
                continue
            if not future.cancelled():  # else its run ended before it started: skip it
                slot.jobs += 1
                slot.since = clock()
                value: Any = None
                error: BaseException | None = None
                try:
                    value = fn(*args)
                except BaseException as exc:  # user code: the awaiting step records it
                    error = exc
                slot.since = None
                with contextlib.suppress(LoopGone):  # else nobody is waiting any more
                    mailbox.post(_settle, future, value, error)
                del value, error
            del future, mailbox, fn, args

    def _park(self, slot: _Slot) -> bool:
        """Wait until woken (True; counted awake by the waker), or exit (False): idle for
        ``idle_exit`` beyond ``core`` threads."""
        while not slot.wake.acquire(timeout=self.idle_exit):
            with self._lock:
                if slot in self._parked:  # still parked (rare: a list scan is fine)
                    if self.threads > self.core:
                        self._parked.remove(slot)
                        self.threads -= 1
                        self._slots.discard(slot)
                        return False
                    continue
            slot.wake.acquire()  # taken off the list just now: its wake-up is on the way
            break
        return True

    def shutdown(self) -> None:
        """Start nothing more; idle threads exit. Running jobs finish (or are abandoned)."""
        with self._lock:
            self._closed = True
            if self._growing is not None:
                self._growing.cancel()
                self._growing = None
            dropped = list(self._jobs)  # their runs are over
            self._jobs.clear()
            parked, self._parked = self._parked, []
            self._awake += len(parked)  # woken: each counts itself out as it exits
        for future, mailbox, _, _ in dropped:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                mailbox.loop.call_soon_threadsafe(future.cancel)
        for slot in parked:
            slot.wake.release()
        if self._spawns is not None:
            self._spawns.put(False)
