"""Traces across real processes: a run resumed after its worker is killed keeps its trace.

Gateway and workers run with ``--traces console`` (one JSON line per span in their logs), so
the test reads the spans each process exported, as a collector would receive them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.cluster import Process
from protocol.tracecontext import run_span_id
from tests.e2e.harness import E2E

pytestmark = pytest.mark.e2e

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER = f"00-{TRACE}-00f067aa0ba902b7-01"


def spans(proc: Process, name: str | None = None) -> list[dict[str, Any]]:
    """The spans ``proc`` exported (its log's JSON lines that are spans)."""
    out = []
    for line in proc.log().splitlines():
        if not line.startswith("{") or '"context"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record.get("context"), dict) and (name is None or record["name"] == name):
            out.append(record)
    return out


def test_a_run_resumed_after_its_worker_is_killed_stays_in_the_senders_trace(e2e: E2E) -> None:
    e2e.cluster.env["OTEL_BSP_SCHEDULE_DELAY"] = "50"  # export within moments, not 5 s
    gateway = e2e.start_gateway("--traces", "console")
    victim = e2e.start_worker("--traces", "console", name="worker1")
    e2e.wait_workers(1)
    key = e2e.new_key()
    status, body = e2e.cluster.request(
        "POST", "/e/dev", {"name": "e2e/three", "data": {"key": key, "gate": "b"}},
        headers={"traceparent": SENDER})
    assert status == 200, body
    run_id = e2e.run_of(body["ids"][0])["id"]
    e2e.wait_started(key, "b", pids=[victim.pid])
    e2e.wait_step_completed(run_id, "a")
    e2e.wait(lambda: spans(victim, "step.run a"), "the first worker's span of step a")
    victim.kill()  # SIGKILL, in the middle of step b

    survivor = e2e.start_worker("--traces", "console", name="worker2")
    e2e.wait_started(key, "b", pids=[survivor.pid])
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)
    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    (run_span,) = e2e.wait(lambda: spans(gateway, "run e2e/three"), "the run's span")
    e2e.wait(lambda: spans(survivor, "step.run c"), "the second worker's span of step c")

    run_span_hex = f"0x{run_span_id(run_id):016x}"
    assert run_span["context"]["trace_id"] == f"0x{TRACE}"
    assert run_span["context"]["span_id"] == run_span_hex
    steps = spans(victim, "step.run a") + spans(survivor)
    names = sorted(s["name"] for s in spans(survivor))
    # Step a was replayed on the second worker: it ran no code there, and made no span.
    assert names == ["step.run b", "step.run c"], names
    for span in steps:
        assert span["context"]["trace_id"] == f"0x{TRACE}", span
        assert span["parent_id"] == run_span_hex, span
    assert {q["parent_id"] for q in spans(gateway, "queue")} == {run_span_hex}
    assert len(spans(gateway, "queue")) == 2  # one per lease: before and after the kill
    assert e2e.get_run(run_id)["trace_id"] == TRACE
