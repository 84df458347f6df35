"""Time, injected: every part of the gateway that waits or compares times takes a Clock.

Wall time (``now``) is for what is stored and must survive a restart: when a queued run becomes
available, event and run timestamps. Monotonic time (``monotonic``) is for what lives in memory
only: heartbeats and lease expiry, which must not jump when the wall clock is set.

The gateway's wall time does not follow a step of the system clock at once (see
:class:`SystemClock`): a clock set an hour ahead would end every pending sleep at once, and one
set back would hold them an hour and run cron ticks twice.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("tether.clock")


def _boot_clock() -> Callable[[], float]:
    """CLOCK_BOOTTIME where there is one (Linux): monotonic, and counts suspended time."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    return functools.partial(time.clock_gettime, boottime)


BOOT_CLOCK = _boot_clock()


class Clock(Protocol):
    def now(self) -> float:
        """Wall time, epoch seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once wall time reaches ``deadline``."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks, wall time kept steady across steps of the system clock.

    Wall time runs on the boot clock (monotonic, counting suspended time too: a host that
    slept did let time pass) from the wall time read at start. NTP's slewing changes both
    clocks alike; a *step* of the system clock (``date -s``, a wrong clock corrected, a
    hypervisor's jump) shows as a difference between them. A difference up to ``tolerance``
    is followed (NTP steps small offsets; the wall clock is read ten times a second at most,
    the boot clock on every call); a larger one is ignored, and logged, until
    it has lasted ``stepout`` seconds (ntpd's rule: 15 minutes), then taken whole. So a
    wrong clock is corrected within a quarter of an hour, while a clock that jumps and comes
    back (or a clock jump tried on a running gateway) moves no timer.

    ``wall`` and ``boot`` are the clocks read, injectable for tests.
    """

    def __init__(self, *, tolerance: float = 0.5, stepout: float = 900.0,
                 wall: Callable[[], float] = time.time,
                 boot: Callable[[], float] = BOOT_CLOCK) -> None:
        self.tolerance = tolerance
        self.stepout = stepout
        self._wall = wall
        self._boot = boot
        self._offset = wall() - boot()  # wall time = boot clock + offset
        self._stepped_at: float | None = None  # boot time a step was first seen
        self._next_check = 0.0

    def now(self) -> float:
        boot = self._boot()
        if boot >= self._next_check:  # the wall clock is read ten times a second at most
            self._next_check = boot + 0.1
            self._check(boot)
        return boot + self._offset

    def _check(self, boot: float) -> None:
        step = self._wall() - (boot + self._offset)
        if -self.tolerance <= step <= self.tolerance:
            self._offset += step
            self._stepped_at = None
        elif self._stepped_at is None:
            self._stepped_at = boot
            log.warning("wall_clock_step_ignored", seconds=round(step, 3),
                        taken_after=self.stepout,
                        hint="the system clock was set; timers keep their pace, and the "
                             "gateway takes the new time if it still holds then")
        elif boot - self._stepped_at >= self.stepout:
            log.warning("wall_clock_step_taken", seconds=round(step, 3))
            self._offset += step
            self._stepped_at = None

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time stands still until a test calls :meth:`advance`; both clocks move together."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._origin = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._origin

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, future))
        try:
            await future
        finally:
            self._sleepers = [s for s in self._sleepers if s[1] is not future]

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper now due, earliest first."""
        self._now += seconds
        due = sorted((s for s in self._sleepers if s[0] <= self._now), key=lambda s: s[0])
        for _, future in due:
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock (lets a test know a loop has parked)."""
        return sum(1 for _, f in self._sleepers if not f.done())
