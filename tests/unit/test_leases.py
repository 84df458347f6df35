"""gateway.leases.Liveness and gateway.clock.FakeClock: time moves only when a test says so."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import FakeClock
from gateway.leases import Liveness, Unanswered
from gateway.registry import WorkerEntry
from protocol.messages import LeaseGranted


def entry(session_id: str, last_seen: float) -> WorkerEntry:
    return WorkerEntry(
        session_id=session_id, instance_id=f"i-{session_id}", capacity=10,
        functions=frozenset({"shop/f"}), apps={"shop": ""}, connected_at=0.0,
        send=lambda message: None, close=lambda code, reason: None, last_seen=last_seen,
    )


async def parked(clock: FakeClock, count: int = 1) -> None:
    """Yield to the loop until ``count`` tasks sleep on ``clock`` (bounded, no timing guess)."""
    async def until() -> None:
        while clock.sleepers < count:
            await asyncio.sleep(0)
    await asyncio.wait_for(until(), timeout=5)


def test_ttl_is_three_intervals_by_default():
    assert Liveness(5.0).ttl == 15.0
    assert Liveness(2.0, misses=5).ttl == 10.0


def test_silent_worker_expires_after_three_intervals(fake_clock):
    liveness = Liveness(5.0)
    worker = entry("w1", last_seen=fake_clock.monotonic())
    fake_clock.advance(14.9)
    assert liveness.expired([worker], fake_clock.monotonic()) == []
    fake_clock.advance(0.2)
    assert liveness.expired([worker], fake_clock.monotonic()) == [worker]


def test_hearing_from_a_worker_keeps_it_alive(fake_clock):
    liveness = Liveness(5.0)
    worker = entry("w1", last_seen=fake_clock.monotonic())
    for _ in range(10):
        fake_clock.advance(10.0)
        worker.last_seen = fake_clock.monotonic()  # a heartbeat (or any message) arrived
        assert liveness.expired([worker], fake_clock.monotonic()) == []
    fake_clock.advance(15.1)
    assert liveness.expired([worker], fake_clock.monotonic()) == [worker]


def test_only_the_silent_workers_expire(fake_clock):
    liveness = Liveness(1.0)
    quiet = entry("quiet", last_seen=fake_clock.monotonic())
    fake_clock.advance(2.0)
    chatty = entry("chatty", last_seen=fake_clock.monotonic())
    fake_clock.advance(1.5)
    assert liveness.expired([quiet, chatty], fake_clock.monotonic()) == [quiet]


def test_fake_monotonic_starts_at_zero_and_follows_wall_time():
    clock = FakeClock(start=1000.0)
    assert (clock.now(), clock.monotonic()) == (1000.0, 0.0)
    clock.advance(2.5)
    assert (clock.now(), clock.monotonic()) == (1002.5, 2.5)


async def test_sleep_until_wakes_only_when_advanced(fake_clock):
    woke = asyncio.Event()

    async def timer() -> None:
        await fake_clock.sleep_until(fake_clock.now() + 60)
        woke.set()

    task = asyncio.create_task(timer())
    await parked(fake_clock)
    fake_clock.advance(59)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not woke.is_set()
    assert fake_clock.sleepers == 1
    fake_clock.advance(1)
    await asyncio.wait_for(woke.wait(), timeout=5)  # a bound on failure, not a delay
    await task
    assert fake_clock.sleepers == 0


async def test_sleep_until_a_past_deadline_returns_at_once(fake_clock):
    await asyncio.wait_for(fake_clock.sleep_until(fake_clock.now() - 1), timeout=5)
    await asyncio.wait_for(fake_clock.sleep_until(fake_clock.now()), timeout=5)
    assert fake_clock.sleepers == 0


async def test_sleep_is_relative(fake_clock):
    task = asyncio.create_task(fake_clock.sleep(10))
    await parked(fake_clock)
    fake_clock.advance(9.5)
    await asyncio.sleep(0)
    assert not task.done()
    fake_clock.advance(0.5)
    await asyncio.wait_for(task, timeout=5)


async def test_sleepers_wake_earliest_first(fake_clock):
    order: list[int] = []

    async def timer(seconds: int) -> None:
        await fake_clock.sleep_until(fake_clock.now() + seconds)
        order.append(seconds)

    tasks = [asyncio.create_task(timer(s)) for s in (30, 10, 20, 40)]
    await parked(fake_clock, 4)
    fake_clock.advance(35)  # one jump past three deadlines
    await asyncio.wait_for(asyncio.gather(*tasks[:3]), timeout=5)
    assert order == [10, 20, 30]
    assert not tasks[3].done()
    fake_clock.advance(5)
    await asyncio.wait_for(tasks[3], timeout=5)
    assert order == [10, 20, 30, 40]


async def test_cancelled_sleeper_is_forgotten(fake_clock):
    task = asyncio.create_task(fake_clock.sleep(10))
    await parked(fake_clock)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert fake_clock.sleepers == 0
    fake_clock.advance(20)  # waking a cancelled sleeper must not fail


# --- grants sent again -------------------------------------------------------------------


def grant(run_id: str, fence: int = 1) -> LeaseGranted:
    return LeaseGranted(run_id=run_id, fence=fence, function_id="a/f", events=[])


def test_a_grant_is_due_again_after_the_interval_and_then_every_interval():
    grants = Unanswered(after=5.0)
    grants.sent(grant("r1"), now=100.0)
    held = {"r1": 1}
    assert grants.due(held, now=104.9) == []
    assert grants.due(held, now=105.0) == [grant("r1")]
    assert grants.due(held, now=109.0) == []  # counted from the last send
    assert grants.due(held, now=110.0) == [grant("r1")]


def test_an_answer_of_the_same_fence_ends_the_resending():
    grants = Unanswered(after=5.0)
    grants.sent(grant("r1", fence=3), now=0.0)
    grants.answered("r1", 2)  # about an older lease of the run: not this grant's answer
    assert len(grants) == 1
    grants.answered("r1", 3)
    assert len(grants) == 0
    assert grants.due({"r1": 3}, now=60.0) == []


def test_a_grant_whose_lease_ended_or_moved_on_is_forgotten():
    grants = Unanswered(after=5.0)
    grants.sent(grant("ended"), now=0.0)
    grants.sent(grant("newer", fence=1), now=0.0)
    grants.sent(grant("held"), now=0.0)
    assert grants.due({"newer": 2, "held": 1}, now=5.0) == [grant("held")]
    assert len(grants) == 1
