"""Log lines of real gateway and worker processes name their run, function and worker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import E2E, log_events

pytestmark = pytest.mark.e2e


def one(lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    found = [line for line in lines if all(line.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, lines)
    return found[0]


def test_gateway_and_worker_lines_carry_run_function_and_worker(e2e: E2E) -> None:
    gateway = e2e.start_gateway("--log-format", "json", "--log-level", "debug")
    worker = e2e.start_worker()
    e2e.wait_workers(1)
    ok = e2e.wait_final(e2e.run_of(e2e.send("e2e/logged"))["id"])
    failed = e2e.wait_final(e2e.run_of(e2e.send("e2e/fatal", key=e2e.new_key()))["id"])
    e2e.check(ok["status"] == "Completed" and failed["status"] == "Failed", f"{ok} {failed}")

    def worker_lines() -> list[dict[str, Any]] | None:
        lines = log_events(worker)
        return lines if any(line.get("event") == "step_failed" for line in lines) else None

    def gateway_lines() -> list[dict[str, Any]] | None:
        # The API may show a run ended a moment before the gateway logs it.
        lines = log_events(gateway)
        ended = {line.get("run_id") for line in lines if line.get("event") == "run_ended"}
        return lines if {ok["id"], failed["id"]} <= ended else None

    w_lines = e2e.wait(worker_lines, "the worker's step_failed line")
    g_lines = e2e.wait(gateway_lines, "the gateway's run_ended lines")
    connected = one(w_lines, event="gateway_connected")
    who = {"session_id": connected["session_id"], "instance_id": connected["instance_id"]}

    # The gateway: the lease, the completion and the failure, each naming run and function.
    for run in (ok, failed):
        one(g_lines, event="lease_granted", run_id=run["id"],
            function_id=run["function_id"], **who)
    one(g_lines, event="run_ended", run_id=ok["id"], function_id="e2e/logged",
        status="Completed")
    one(g_lines, event="run_ended", run_id=failed["id"], function_id="e2e/fatal",
        status="Failed")

    # The worker: the user's lines (body and step) and the step failure name everything.
    body = one(w_lines, event="user_body_line", run_id=ok["id"], function_id="e2e/logged",
               **who)
    assert body["attempt"] == 0 and "step_id" not in body, body
    one(w_lines, event="user_step_line", run_id=ok["id"], function_id="e2e/logged",
        step_id="inside", attempt=0, **who)
    one(w_lines, event="step_failed", run_id=failed["id"], function_id="e2e/fatal",
        step_id="charge", **who)
