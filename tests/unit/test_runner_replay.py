"""Replays that do not follow the recorded steps are reported, naming both step ids."""

from __future__ import annotations

import uuid

from structlog.testing import capture_logs

from protocol import messages as m
from tests.unit import test_runner

pool, run = test_runner.pool, test_runner.run
memo = test_runner.memo


async def test_a_uuid_step_id_is_reported_on_replay(run):
    charges = test_runner.Counter("ok")

    async def handler(ctx):
        await ctx.step.run(f"charge-{uuid.uuid4()}", charges)
        await ctx.step.sleep("pause", "1s")
        return "done"

    with capture_logs() as logs:
        rec, execution = await run(handler, memos={
            "charge-1f0e": memo("ok"), "pause": m.StepMemo(kind="sleep", output=b"null")})
    assert charges.calls == 1  # the side effect ran again: the id was new
    assert rec.kinds == ["step_completed", "run_completed"]
    [warning] = [e for e in logs if e["event"] == "replay_diverged"]
    assert warning["log_level"] == "warning" and warning["run_id"] == "run-1"
    assert warning["unreached"] == ["charge-1f0e"]
    assert warning["new"] == [rec.of(m.StepCompleted)[0].step_id]
    assert "uuid4()" in warning["hint"]
    [line] = execution.warnings
    assert "'charge-1f0e'" in line and rec.of(m.StepCompleted)[0].step_id in line
    assert rec.of(m.RunCompleted)[0].warnings == [line]  # kept on the run's record


async def test_a_faithful_replay_reports_nothing(run):
    async def handler(ctx):
        a = await ctx.step.run("a", lambda: 1)
        await ctx.step.sleep("pause", "1s")
        return a + await ctx.step.run("b", lambda: 2)

    with capture_logs() as logs:
        rec, execution = await run(handler, memos={
            "a": memo(1), "pause": m.StepMemo(kind="sleep", output=b"null")})
    assert rec.output() == 3
    assert [e for e in logs if e["event"] == "replay_diverged"] == []
    assert execution.warnings == []


async def test_a_failure_that_cuts_the_run_short_proves_nothing(run):
    async def handler(ctx):
        raise ValueError("before any step")

    with capture_logs() as logs:
        await run(handler, memos={"a": memo(1)}, retries=0)
    assert [e for e in logs if e["event"] == "replay_diverged"] == []


async def test_a_kind_mismatch_does_not_claim_the_code_changed(run):
    async def handler(ctx):
        await ctx.step.run("pause", lambda: 1)

    rec, _ = await run(handler, memos={"pause": m.StepMemo(kind="sleep", output=b"null")},
                       retries=0)
    [failed] = rec.of(m.RunFailed)
    assert failed.error.name == "NonDeterminismError"
    assert "either the code changed" in failed.error.message
    assert "uuid4" in failed.error.message
