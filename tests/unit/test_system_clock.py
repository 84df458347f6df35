"""gateway.clock.SystemClock: a step of the system clock moves no timer, a lasting one is
taken after the stepout; both clocks it reads are injected, so nothing here waits."""

from __future__ import annotations

from gateway.clock import SystemClock

START = 1_700_000_000.0


class Clocks:
    """A wall clock that can be set, and a boot clock that only runs forward."""

    def __init__(self) -> None:
        self.wall_at = START
        self.boot_at = 100.0

    def run(self, seconds: float) -> None:
        self.wall_at += seconds
        self.boot_at += seconds

    def wall(self) -> float:
        return self.wall_at

    def boot(self) -> float:
        return self.boot_at


def clock(clocks: Clocks, **options: float) -> SystemClock:
    return SystemClock(wall=clocks.wall, boot=clocks.boot, **options)


def test_wall_time_is_the_system_clock_while_it_is_not_set():
    clocks = Clocks()
    gw = clock(clocks)
    assert gw.now() == START
    clocks.run(12.5)
    assert gw.now() == START + 12.5


def test_a_clock_set_an_hour_ahead_moves_no_timer_until_the_stepout():
    clocks = Clocks()
    gw = clock(clocks, stepout=900.0)
    gw.now()
    clocks.wall_at += 3600  # date -s: an hour ahead
    clocks.run(1.0)
    assert gw.now() == START + 1.0  # a 1 s sleep due at START + 1 is due now, not an hour ago
    clocks.run(899.0)
    assert gw.now() == START + 900.0
    clocks.run(1.0)  # the step was first seen at START + 1
    assert gw.now() == START + 3600 + 901.0  # it held for the stepout: taken whole


def test_a_clock_set_back_never_runs_time_backwards_for_timers_or_cron():
    clocks = Clocks()
    gw = clock(clocks)
    gw.now()
    clocks.wall_at -= 5  # the cron seconds would come again
    seen = []
    for _ in range(20):
        clocks.run(0.25)
        seen.append(gw.now())
    assert seen == sorted(seen) and seen[-1] == START + 5.0


def test_a_jump_that_comes_back_before_the_stepout_is_never_taken():
    clocks = Clocks()
    gw = clock(clocks, stepout=900.0)
    gw.now()
    clocks.wall_at += 3600
    clocks.run(10)
    assert gw.now() == START + 10
    clocks.wall_at -= 3600  # set right again
    clocks.run(10)
    assert gw.now() == START + 20
    clocks.wall_at += 3600  # and ahead again: the stepout counts from here
    clocks.run(899)
    assert gw.now() == START + 919


def test_small_steps_are_followed():
    clocks = Clocks()
    gw = clock(clocks, tolerance=0.5)
    gw.now()
    clocks.wall_at += 0.3  # NTP stepping a small offset
    clocks.run(1.0)
    assert gw.now() == START + 1.3


def test_the_wall_clock_is_read_at_most_ten_times_a_second():
    clocks = Clocks()
    reads = []

    def wall() -> float:
        reads.append(1)
        return clocks.wall_at

    gw = SystemClock(wall=wall, boot=clocks.boot)
    for _ in range(100):
        clocks.run(0.01)  # one second in all
        gw.now()
    assert len(reads) <= 1 + 11  # the start, then one read per tenth of a second
