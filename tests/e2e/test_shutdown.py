"""Graceful shutdowns: worker SIGTERM drains, gateway SIGTERM exits cleanly and keeps its data."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.harness import E2E, log_events, step
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e


def test_worker_sigterm_finishes_the_running_step_and_hands_the_rest_back(e2e: E2E) -> None:
    e2e.start_gateway()
    w1 = e2e.start_worker("--drain-timeout", "30", name="worker1")
    w2 = e2e.start_worker("--drain-timeout", "30", name="worker2")
    e2e.wait_workers(2)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    (first,) = e2e.wait_started(key, "b")
    leaving, staying = (w1, w2) if first.pid == w1.pid else (w2, w1)

    leaving.signal(signal.SIGTERM)
    e2e.wait(lambda: log_events(leaving, "worker_draining"), "the worker to start draining")
    e2e.check(leaving.alive(), "the draining worker quit before its step finished")
    e2e.open_gate(key)  # the running step may finish now, within the drain timeout

    code = leaving.popen.wait(timeout=bound(20))
    e2e.check(code == 0, f"draining worker exited {code}")
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": leaving.pid, "b": leaving.pid, "c": staying.pid}
    assert [(s["id"], s["attempts"]) for s in run["steps"]] == [("a", 1), ("b", 1), ("c", 1)]
    assert [(e.step, e.pid) for e in e2e.ledger(key)] == [
        ("a", leaving.pid), ("b", leaving.pid), ("c", staying.pid),
    ], e2e.logs()
    assert log_events(leaving, "worker_stopped")


def test_worker_drain_timeout_hands_a_stuck_step_back_at_once(e2e: E2E) -> None:
    e2e.start_gateway()
    w1 = e2e.start_worker("--drain-timeout", "0.5", name="worker1")
    w2 = e2e.start_worker("--drain-timeout", "0.5", name="worker2")
    e2e.wait_workers(2)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    (first,) = e2e.wait_started(key, "b")
    leaving, staying = (w1, w2) if first.pid == w1.pid else (w2, w1)
    e2e.wait_step_completed(run_id, "a")

    leaving.signal(signal.SIGTERM)  # b never finishes in time: the run goes back
    code = leaving.popen.wait(timeout=bound(20))
    e2e.check(code == 0, f"draining worker exited {code}")
    e2e.wait_started(key, "b", pids=[staying.pid])
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": leaving.pid, "b": staying.pid, "c": staying.pid}
    assert [(e.step, e.pid) for e in e2e.ledger(key)] == [
        ("a", leaving.pid), ("b", leaving.pid), ("b", staying.pid), ("c", staying.pid),
    ], e2e.logs()


def test_gateway_sigterm_exits_cleanly_and_a_restart_keeps_completed_runs(e2e: E2E) -> None:
    gw = e2e.start_gateway()
    w = e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()
    before = e2e.wait_final(e2e.run_of(e2e.send("e2e/three", key=key))["id"])
    e2e.check(before["status"] == "Completed", f"run not completed: {before}")

    code = gw.stop()
    e2e.check(code == 0, f"gateway exited {code} on SIGTERM")
    e2e.check(log_events(gw, "gateway_stopped"), "no gateway_stopped line")
    e2e.wait(lambda: log_events(w, "gateway_going_away"), "the worker to be told to go away")

    e2e.start_gateway()  # same SQLite file
    after = e2e.get_run(before["id"])
    assert after == before
    assert [s["id"] for s in after["steps"]] == ["a", "b", "c"]
    assert step(after, "c") is not None

    # The worker outlived its gateway and serves the new one.
    e2e.wait_workers(1)
    key2 = e2e.new_key()
    again = e2e.wait_final(e2e.run_of(e2e.send("e2e/three", key=key2))["id"])
    e2e.check(again["status"] == "Completed", f"run not completed: {again}")
    assert again["output"] == {"a": w.pid, "b": w.pid, "c": w.pid}
    assert e2e.step_counts(key) == {"a": 1, "b": 1, "c": 1}
