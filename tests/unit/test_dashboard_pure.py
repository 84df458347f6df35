"""The dashboard's pure parts: a run's timeline bars, time as run ids, the session table."""

from __future__ import annotations

from gateway.http.bulk import id_floor
from gateway.http.dashboard.sessions import MAX_SESSIONS, SESSION_SECONDS, Sessions
from gateway.http.dashboard.timeline import bars
from gateway.store.base import AttemptRecord, ChildRun, RunRecord, StepRecord
from protocol.ids import id_time, new_id


def run(steps: list[StepRecord], *, started: float | None = 101.0,
        ended: float | None = 110.0) -> RunRecord:
    return RunRecord(id="R", function_id="a/f", status="Completed", fence=1, attempt=0,
                     event_ids=["E"], output=None, error=None, queued_at=100.0,
                     started_at=started, ended_at=ended, available_at=None, steps=steps)


def step(sid: str, start: float | None, end: float | None, kind: str = "run") -> StepRecord:
    return StepRecord(sid, kind, "Completed" if end else "Running", 1, None, None, start, end)


def test_queue_delay_and_steps_share_one_axis_from_queueing_to_the_end() -> None:
    out = bars(run([step("a", 101.0, 102.0), step("nap", 102.0, 107.0, "sleep"),
                    step("b", 107.0, 110.0)]), now=500.0)
    assert [(b.label, b.kind) for b in out] == [("queued", "queue"), ("a", "run"),
                                                ("nap", "sleep"), ("b", "run")]
    assert [(b.left, b.width) for b in out] == [(0.0, 10.0), (10.0, 10.0), (20.0, 50.0),
                                                (70.0, 30.0)]
    assert [b.seconds for b in out] == [1.0, 1.0, 5.0, 3.0]
    assert not any(b.open for b in out)


def test_a_live_run_reaches_now_and_its_running_step_is_open() -> None:
    out = bars(run([step("a", 101.0, 102.0), step("b", 102.0, None)], ended=None), now=120.0)
    assert out[-1].label == "b" and out[-1].open
    assert out[-1].left + out[-1].width == 100.0 and out[-1].seconds == 18.0


def test_unstarted_runs_and_steps_have_no_bar_and_tiny_ones_stay_visible() -> None:
    assert bars(run([], started=None, ended=None), now=200.0) == []
    out = bars(run([step("planned", None, None), step("blink", 101.0, 101.0)]), now=200.0)
    assert [b.label for b in out] == ["queued", "blink"]
    assert out[1].width == 0.5  # a zero-length step is still drawn


def test_each_attempt_and_backoff_of_a_retried_step_then_its_child_run() -> None:
    steps = [StepRecord("call", "run", "Completed", 2, None, None, 101.0, 106.0),
             step("kid", 106.0, 109.0, "invoke")]
    attempts = [AttemptRecord("call", 1, "Retrying", 101.0, 102.0, 104.0, None),
                AttemptRecord("call", 2, "Completed", 105.0, 106.0, None, None)]
    children = [ChildRun("C", "a/child", "Completed", 106.0, 107.0, 109.0, "kid")]
    out = bars(run(steps), now=500.0, attempts=attempts, children=children)
    assert [(b.label, b.kind, b.status) for b in out] == [
        ("queued", "queue", "queued"), ("call #1", "run", "Retrying"),
        ("call backoff", "backoff", "backoff"), ("call #2", "run", "Completed"),
        ("kid", "invoke", "Completed"), ("↳ a/child", "child", "Completed")]
    backoff, child = out[2], out[5]
    # The backoff lasts until the next attempt began (105), not the due time (104).
    assert (backoff.left, backoff.width, backoff.seconds) == (20.0, 30.0, 3.0)
    assert child.href == "/runs/C" and (child.left, child.width) == (60.0, 30.0)
    assert {b.step for b in out[1:]} == {"call", "kid"}


def test_a_pending_retry_waits_until_its_due_time_and_stretches_the_axis() -> None:
    steps = [StepRecord("call", "run", "Retrying", 1, None, None, 101.0, 102.0)]
    attempts = [AttemptRecord("call", 1, "Retrying", 101.0, 102.0, 120.0, None)]
    out = bars(run(steps, ended=None), now=110.0, attempts=attempts)
    assert out[-1].label == "call backoff" and out[-1].left + out[-1].width == 100.0
    assert out[-1].seconds == 18.0


def test_a_time_is_the_smallest_id_queued_then() -> None:
    for ts in (0.0, 1_700_000_000.123, 1_800_000_000.0):
        floor = id_floor(ts)
        assert id_time(floor) == int(ts * 1000) / 1000
        assert id_floor(ts) <= new_id(ts) < id_floor(ts + 0.002)
    assert id_floor(-5) == "0" * 26 and id_floor(1e18) == "7ZZZZZZZZZ" + "0" * 16


def test_sessions_expire_are_ended_and_are_bounded() -> None:
    table = Sessions()
    a = table.create("API key", read_only=True, now=0.0)
    assert a.id != a.csrf and len(a.id) >= 43
    assert table.get(a.id, SESSION_SECONDS - 1) == a
    assert table.get(a.id, SESSION_SECONDS) is None
    assert table.get(a.id, 0.0) is None  # dropped once expired
    b = table.create("signing key", read_only=False, now=0.0)
    table.end(b.id)
    assert table.get(b.id, 0.0) is None
    assert table.get(None, 0.0) is None and table.get("", 0.0) is None
    first = table.create("x", read_only=False, now=0.0)
    for _ in range(MAX_SESSIONS):
        table.create("x", read_only=False, now=0.0)
    assert table.get(first.id, 0.0) is None
