"""Admission flow control on real processes: rate limit and singleton skip, seen in the API."""

from __future__ import annotations

import pytest

from tests.e2e.harness import E2E

pytestmark = pytest.mark.e2e


def test_rate_limit_and_singleton_skip_runs_visibly(e2e: E2E) -> None:
    e2e.start_gateway()
    e2e.start_worker()
    e2e.wait_workers(1)

    # Rate limit: 2 runs per key per hour; the third event of the key starts a Skipped run.
    key, other = e2e.new_key(), e2e.new_key()
    runs = [e2e.run_of(e2e.send("e2e/limited", key=k)) for k in (key, key, key, other)]
    final = [e2e.wait_final(r["id"]) for r in runs]
    e2e.check([r["status"] for r in final] == ["Completed", "Completed", "Skipped", "Completed"],
              f"rate limit: {final}")
    skipped = final[2]["skipped"]
    assert skipped["reason"] == "rate_limit" and skipped["key"] == key, skipped
    assert skipped["message"].startswith("rate limit: 2 runs per 1h"), skipped
    assert final[2]["started_at"] is None and final[2]["steps"] == []
    assert e2e.step_counts(key) == {"work": 2}, e2e.logs()

    # Singleton skip: while the key's run holds (its step is gated), a new event is skipped.
    key = e2e.new_key()
    first = e2e.run_of(e2e.send("e2e/single", key=key))
    e2e.wait_started(key, "hold")
    second = e2e.wait_final(e2e.run_of(e2e.send("e2e/single", key=key))["id"])
    e2e.check(second["status"] == "Skipped", f"singleton: {second}")
    assert second["skipped"]["reason"] == "singleton" and second["skipped"]["key"] == key
    assert first["id"] in second["skipped"]["message"]
    e2e.open_gate(key)
    assert e2e.wait_final(first["id"])["status"] == "Completed"
    third = e2e.wait_final(e2e.run_of(e2e.send("e2e/single", key=key))["id"])
    e2e.check(third["status"] == "Completed", f"the key is free again: {third}")
    assert e2e.step_counts(key) == {"hold": 2}, e2e.logs()
