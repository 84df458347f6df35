"""A thread that notices when the worker's event loop stops turning, and names the culprit.

Rule 1: the code of ``async def`` functions runs on the worker's one event loop. A blocking
call there (``time.sleep``, a synchronous HTTP client) stops every run on the worker and its
heartbeats with them; the loop cannot see its own stall, so a thread watches it.

Rule 2: what each asyncio task is executing (run, and step when inside one) is written in
:data:`ACTIVITY` by the runner and the step API, on the loop; the thread reads the entry of the
loop's current task, so a stall is blamed on the run and step that caused it, by name.

Rule 3: a stall longer than the gateway's patience (3 heartbeat intervals) costs the socket,
and the gateway counts a lease loss against every run the worker held. The worker then says
on its next socket which run blocked (``LoopStalled``): the gateway takes the loss back from
the others, so only the run whose code blocked can reach the lease-loss limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

log = structlog.get_logger("tether.worker")

HINT = ("a blocking call in async code stops every run on this worker: put it in a def "
        "function given to step.run (it runs on a thread), or use step.sleep / "
        "await asyncio.sleep instead of time.sleep")


class Doing(NamedTuple):
    """What one asyncio task is executing: a run's function body, or one of its steps.

    A tuple: one is made for every step, and a frozen dataclass costs three times as much.
    """

    run_id: str
    function_id: str
    step_id: str | None = None


class Activity:
    """What each task on the worker's loop is executing. Written on the loop, read anywhere."""

    def __init__(self) -> None:
        self._by_task: dict[asyncio.Task[Any], Doing] = {}

    def enter(self, doing: Doing, loop: asyncio.AbstractEventLoop | None = None, *,
              forget: bool = True) -> tuple[asyncio.Task[Any] | None, Doing | None]:
        """The current task now executes ``doing``; returns it and what it did before.

        ``loop``: the running loop, when the caller knows it (every step does): asking
        asyncio for it costs a system call (``getpid``) on Python 3.11. ``forget``: drop the
        task's entry when it is done; False: the caller calls :meth:`forget` itself.
        """
        task = _current_task() if loop is None else asyncio.current_task(loop)
        if task is None:
            return None, None
        previous = self._by_task.get(task)
        if previous is None and forget:
            task.add_done_callback(self._forget)
        self._by_task[task] = doing
        return task, previous

    def leave(self, task: asyncio.Task[Any] | None, previous: Doing) -> None:
        """Back to ``previous`` (what :meth:`enter` returned, or the run's body)."""
        if task is not None:
            self._by_task[task] = previous

    def of(self, task: asyncio.Task[Any] | None) -> Doing | None:
        return None if task is None else self._by_task.get(task)

    def forget(self, task: asyncio.Task[Any] | None) -> None:
        """``task`` is done (or about to be): drop its entry."""
        self._by_task.pop(task, None)  # type: ignore[arg-type]

    _forget = forget


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a test calling the runner directly)
        return None


#: The process's one record (a worker process runs one loop).
ACTIVITY = Activity()


@dataclass(slots=True)
class Stall:
    """The loop did not turn from ``since`` on (monotonic seconds); ``ended`` once it did."""

    since: float
    doing: Doing | None
    task: str | None
    ended: float | None = None

    def fields(self) -> dict[str, Any]:
        doing = self.doing
        if doing is None:
            return {"run_id": None, "step_id": None, "task": self.task}
        return {"run_id": doing.run_id, "function_id": doing.function_id,
                "step_id": doing.step_id}


class LoopWatchdog:
    """Logs ``event_loop_blocked`` when the loop has not ticked for ``threshold`` seconds.

    ``threshold`` is the heartbeat interval: a stall that long already delays a heartbeat,
    and three of them lose the worker's leases.
    """

    def __init__(self, *, threshold: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self.monotonic = monotonic
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last: Stall | None = None  # the latest stall, open or ended
        self._tick = monotonic()
        self._checked: float | None = None  # when the thread last looked
        self._stop = threading.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, seconds: float) -> None:
        """A new threshold (the gateway's heartbeat interval, on the loop): the ticker,
        asleep for a quarter of the old one, starts again at once, or a threshold lowered
        below that quarter would see a stall that is not one."""
        self._threshold = seconds
        ticker = self._ticker
        if ticker is not None and not ticker.done() and self.loop is not None:
            ticker.cancel()
            self.tick()
            self._ticker = self.loop.create_task(self._ticking(), name="tether-loop-ticker")

    def start(self) -> None:
        """Watch the running loop (call on it)."""
        self.loop = asyncio.get_running_loop()
        self.tick()
        self._ticker = self.loop.create_task(self._ticking(), name="tether-loop-ticker")
        self._thread = threading.Thread(target=self._watch, name="tether-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()

    def tick(self) -> None:
        """The loop turned (on the loop): close the open stall, if any, saying how long."""
        now = self.monotonic()
        self._tick = now
        stall = self.last
        if stall is not None and stall.ended is None:
            stall.ended = now
            log.warning("event_loop_unblocked", blocked_for=round(now - stall.since, 1),
                        **stall.fields())

    def check(self) -> Stall | None:
        """Off the loop: has it stalled? Logs a new stall once, naming what is executing."""
        now = self.monotonic()
        checked, self._checked = self._checked, now
        if checked is not None and now - checked > self.threshold:
            return None  # this thread did not run either: the process was frozen (SIGSTOP)
        if now - self._tick <= self.threshold or (self.last and self.last.ended is None):
            return None
        task = asyncio.current_task(self.loop) if self.loop is not None else None
        stall = Stall(since=self._tick, doing=ACTIVITY.of(task),
                      task=task.get_name() if task is not None else None)
        self.last = stall
        log.warning("event_loop_blocked", blocked_for=round(now - stall.since, 1),
                    **stall.fields(), hint=HINT)
        return stall

    def recent(self) -> Stall | None:
        """The stall that explains a socket lost just now (open, or ended moments ago)."""
        stall = self.last
        if stall is None:
            return None
        if stall.ended is None or self.monotonic() - stall.ended <= 2 * self.threshold:
            return stall
        return None

    async def _ticking(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.threshold / 4)

    def _watch(self) -> None:
        while not self._stop.wait(max(0.05, self.threshold / 4)):
            try:
                self.check()
            except Exception:  # the watchdog must never take the worker down
                log.exception("watchdog_failed")
