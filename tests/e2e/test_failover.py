"""Crashes mid-run: a killed worker, a killed gateway, a frozen worker whose lease is revoked.

Each run is the ``three`` function with step ``b`` gated: the test waits until ``b`` is running
(its ledger line) and ``a`` is committed (the API shows it), then breaks something.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from bench.cluster import Process
from tests.e2e.harness import E2E, log_events, step

pytestmark = pytest.mark.e2e


def test_worker_killed_mid_step_another_finishes_without_rerunning_acked_steps(e2e: E2E) -> None:
    e2e.start_gateway()
    w1, w2 = e2e.start_worker(name="worker1"), e2e.start_worker(name="worker2")
    e2e.wait_workers(2)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]

    (first,) = e2e.wait_started(key, "b")
    victim, survivor = (w1, w2) if first.pid == w1.pid else (w2, w1)
    e2e.wait_step_completed(run_id, "a")  # committed, so acknowledged: must never run again
    victim.kill()

    e2e.wait_started(key, "b", pids=[survivor.pid])
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": victim.pid, "b": survivor.pid, "c": survivor.pid}
    assert [(e.step, e.pid) for e in e2e.ledger(key)] == [
        ("a", victim.pid), ("b", victim.pid), ("b", survivor.pid), ("c", survivor.pid),
    ], e2e.logs()
    assert [s["attempts"] for s in run["steps"]] == [1, 1, 1]  # a lost lease burns no attempt


def test_gateway_killed_mid_run_restarts_and_its_surviving_worker_resumes_the_lease(
        e2e: E2E) -> None:
    """Issue 13's "fewer re-runs after a restart": the worker kept step b running while the
    gateway was down, offered its lease back on the new socket and got it (same fence): b
    ran once, and its checkpoint, sent after the restart, was accepted."""
    old = e2e.start_gateway()
    w = e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    e2e.wait_started(key, "b")
    e2e.wait_step_completed(run_id, "a")

    old.kill()
    e2e.wait(lambda: log_events(w, "gateway_disconnected"), "the worker to notice the crash")
    new = e2e.start_gateway()  # same ports, same SQLite file

    (connected,) = e2e.wait_workers(1)  # the same worker process came back by itself
    assert connected["instance_id"].endswith(f"-{w.pid}"), connected
    e2e.check(log_events(new, "leases_recovered"), "the new gateway recovered no lease")
    e2e.wait(lambda: log_events(new, "lease_resumed"), "the worker to resume its lease")
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": w.pid, "b": w.pid, "c": w.pid}
    assert e2e.step_counts(key) == {"a": 1, "b": 1, "c": 1}, e2e.logs()
    assert not log_events(w, "lease_lost"), e2e.logs()
    assert w.alive()
    assert len(log_events(w, "gateway_connected")) == 2


def test_a_lease_taken_over_while_its_worker_was_away_is_not_resumed(e2e: E2E) -> None:
    """Fencing stays absolute: the gateway lives, the worker's socket drops (the gateway
    presumes it dead and another worker takes the run, fence + 1); when the first worker
    comes back and offers its lease, it is revoked, and its late checkpoint refused."""
    e2e.start_gateway("--heartbeat-interval", "0.5")
    w1 = e2e.start_worker(name="worker1")
    e2e.wait_workers(1)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    e2e.wait_started(key, "b")
    w1.signal(signal.SIGSTOP)  # silent: the gateway drops its socket and requeues the run
    w2 = e2e.start_worker(name="worker2")
    e2e.wait_started(key, "b", pids=[w2.pid])
    w1.signal(signal.SIGCONT)
    e2e.wait(lambda: log_events(w1, "lease_lost"), "worker1 to lose its lease")
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)
    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"]["c"] == w2.pid, run
    assert [e.pid for e in e2e.ledger(key) if e.step == "c"] == [w2.pid], e2e.logs()


def _freeze_in_step_b(e2e: E2E, key: str) -> tuple[str, Process, Process]:
    """Two workers; the run's step b starts on one, which is then frozen (SIGSTOP) until
    the gateway has revoked its lease and the other worker runs b."""
    gw = e2e.start_gateway("--heartbeat-interval", "0.5")
    w1, w2 = e2e.start_worker(name="worker1"), e2e.start_worker(name="worker2")
    e2e.wait_workers(2)
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    (first,) = e2e.wait_started(key, "b")
    frozen, other = (w1, w2) if first.pid == w1.pid else (w2, w1)
    e2e.wait_step_completed(run_id, "a")

    frozen.signal(signal.SIGSTOP)
    try:
        # Silent for 3 heartbeat intervals: the gateway drops the worker, and the run goes
        # (fence bumped) to the other worker, which replays a and runs b.
        e2e.wait_started(key, "b", pids=[other.pid])
        e2e.check(log_events(gw, "worker_heartbeat_missed"), "no heartbeat miss logged")
    except BaseException:
        frozen.signal(signal.SIGCONT)
        raise
    return run_id, frozen, other


def refusals(e2e: E2E, run_id: str) -> list[dict[str, Any]]:
    gw = e2e.cluster.gateway
    assert gw is not None
    return [r for r in log_events(gw, "checkpoint_refused") if r.get("run_id") == run_id]


def test_frozen_worker_loses_its_lease_and_its_stale_checkpoint_is_refused(e2e: E2E) -> None:
    key = e2e.new_key()
    run_id, frozen, other = _freeze_in_step_b(e2e, key)

    frozen.signal(signal.SIGCONT)
    e2e.wait_workers(2)  # thawed, it finds its socket gone and reconnects
    e2e.open_gate(key, frozen.pid)  # its b finishes while the other worker holds the run
    # (Its a may be refused too: resent on the new socket if its ack was still on the way
    # at the freeze.)
    (refused,) = e2e.wait(lambda: [r for r in refusals(e2e, run_id) if r["step_id"] == "b"],
                          "the frozen worker's stale checkpoint of b to be refused")
    assert refused["kind"] == "step_completed", refused
    assert "lease superseded" in refused["reason"], refused
    assert e2e.get_run(run_id)["status"] == "Running"

    e2e.open_gate(key, other.pid)
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": frozen.pid, "b": other.pid, "c": other.pid}
    b = step(run, "b")
    assert b is not None and (b["output"], b["attempts"]) == (other.pid, 1), run
    assert [(e.step, e.pid) for e in e2e.ledger(key)] == [
        ("a", frozen.pid), ("b", frozen.pid), ("b", other.pid), ("c", other.pid),
    ], e2e.logs()


def test_worker_thawed_after_the_run_completed_elsewhere_starts_no_new_step(e2e: E2E) -> None:
    key = e2e.new_key()
    run_id, frozen, other = _freeze_in_step_b(e2e, key)
    try:
        e2e.open_gate(key)  # for both: the other worker completes the run meanwhile
        run = e2e.wait_final(run_id)
    finally:
        frozen.signal(signal.SIGCONT)
    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert run["output"] == {"a": frozen.pid, "b": other.pid, "c": other.pid}

    # Thawed, its b sees the open gate and finishes at once; its checkpoint is refused and
    # it must not go on to c, which the other worker's acknowledged checkpoint covers.
    refused = e2e.wait(lambda: refusals(e2e, run_id),
                       "the frozen worker's late checkpoint to be refused")
    assert refused[0]["kind"] == "step_completed", refused
    e2e.wait_workers(2)  # and it reconnects and serves again
    assert e2e.get_run(run_id) == run
    assert [(e.step, e.pid) for e in e2e.ledger(key)] == [
        ("a", frozen.pid), ("b", frozen.pid), ("b", other.pid), ("c", other.pid),
    ], e2e.logs()
