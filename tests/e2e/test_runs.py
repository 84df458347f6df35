"""Runs on real processes: steps run once, retries, non-retriable failures, worker concurrency."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tests.e2e.harness import E2E, step

pytestmark = pytest.mark.e2e


def test_three_steps_run_once_each_and_the_run_shows_output_and_steps(e2e: E2E) -> None:
    e2e.start_gateway()
    w = e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()

    run = e2e.run_of(e2e.send("e2e/three", key=key))
    assert run["function_id"] == "e2e/three"
    run = e2e.wait_final(run["id"])

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": w.pid, "b": w.pid, "c": w.pid}
    assert run["error"] is None
    assert [s["id"] for s in run["steps"]] == ["a", "b", "c"]
    for s in run["steps"]:
        assert (s["kind"], s["status"], s["attempts"], s["output"]) == (
            "run", "Completed", 1, w.pid), s
        assert s["started_at"] and s["ended_at"] and s["started_at"] <= s["ended_at"]
    assert run["started_at"] and run["ended_at"] and run["queued_at"] <= run["started_at"]
    assert e2e.step_counts(key) == {"a": 1, "b": 1, "c": 1}, e2e.logs()
    assert {e.pid for e in e2e.ledger(key)} == {w.pid}


def test_a_flaky_step_is_retried_until_it_succeeds(e2e: E2E) -> None:
    e2e.start_gateway()
    w = e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()

    run = e2e.wait_final(e2e.run_of(e2e.send("e2e/flaky", key=key))["id"])

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == "ok on attempt 2"
    call = step(run, "call")
    assert call is not None
    assert (call["status"], call["attempts"], call["output"], call["error"]) == (
        "Completed", 3, "ok on attempt 2", None), call
    assert [(e.pid, e.extra) for e in e2e.ledger(key)] == [
        (w.pid, ("0",)), (w.pid, ("1",)), (w.pid, ("2",))], e2e.logs()


def test_non_retriable_error_fails_the_run_at_once(e2e: E2E) -> None:
    e2e.start_gateway()
    e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()

    run = e2e.wait_final(e2e.run_of(e2e.send("e2e/fatal", key=key))["id"])

    e2e.check(run["status"] == "Failed", f"run did not fail: {run}")
    assert run["output"] is None
    assert run["error"]["name"] == "NonRetriableError", run["error"]
    assert "card declined" in run["error"]["message"], run["error"]
    charge = step(run, "charge")
    assert charge is not None
    assert (charge["status"], charge["attempts"]) == ("Failed", 1), charge
    assert charge["error"]["name"] == "NonRetriableError"
    assert charge["error"]["message"] == "card declined"
    assert e2e.step_counts(key) == {"charge": 1}, e2e.logs()


def test_workers_share_runs_and_never_exceed_concurrency_one(e2e: E2E) -> None:
    e2e.start_gateway()
    workers = [e2e.start_worker("--concurrency", "1", name=f"worker{i}") for i in (1, 2)]
    e2e.wait_workers(2)
    keys = [e2e.new_key() for _ in range(6)]

    run_ids = [e2e.run_of(e2e.send("e2e/slow", key=k, seconds=0.25))["id"] for k in keys]
    runs = [e2e.wait_final(r) for r in run_ids]

    e2e.check(all(r["status"] == "Completed" for r in runs), f"not all completed: {runs}")
    entries = [e for k in keys for e in e2e.ledger(k)]
    assert sorted(e.key for e in entries) == sorted(keys), e2e.logs()  # each ran once
    pids = {w.pid for w in workers}
    by_pid: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
    for e in entries:
        by_pid[e.pid].append((float(e.extra[0]), float(e.extra[1])))
    e2e.check(all(by_pid[pid] for pid in pids), f"a worker ran nothing: {by_pid}")
    for pid, spans in by_pid.items():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            e2e.check(start >= end, f"worker {pid} ran two steps at once: {spans}")
    assert {r["output"] for r in runs} == pids
