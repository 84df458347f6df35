"""Attacks on the engine's group commit, against a real gateway process.

Each attack sends something that used to fail the shared transaction (and so every batch after
it): deep nesting re-serialised into system events, a function triggered by its own finish,
malformed checkpoint payloads from a raw socket client, more steps or a bigger output than the
gateway allows. After each one the gateway answers a normal event with 200 within a second and
a normal run completes on a real worker; for the classes that used to wedge it for good, it
still does after a restart.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cluster import Cluster
from gateway import loop_guard
from protocol import messages as m
from tests.helpers.waiting import bound, wait_until
from tests.integration.raw_worker import EVENT, FUNCTION, RawWorker

pytestmark = pytest.mark.e2e

MAX_STEPS = 5
MAX_RESULT = 64 * 1024
FINAL = {"Completed", "Failed", "Cancelled", "Skipped"}


@pytest.fixture
def poison(tmp_path: Path) -> Iterator[Cluster]:
    """A gateway with small limits, and a real worker serving the poison app."""
    c = Cluster(tmp_path / "cluster", gateway_args=[
        "--retry-base", "0.05", "--log-format", "json", "--max-steps", str(MAX_STEPS),
        "--max-step-result", str(MAX_RESULT),
        # The raw client sends no heartbeats: keep its socket for the whole test.
        "--heartbeat-interval", "60"])
    shutil.copy(Path(__file__).with_name("poison_app.py"), c.workdir / "poison_app.py")
    c.start_gateway()
    c.start_worker("poison_app:app")
    wait_until(lambda: c.get("/v1/workers")["data"], what="the worker to connect")
    try:
        yield c
    finally:
        c.stop()


def runs_of(c: Cluster, event_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = c.get(f"/v1/events/{event_id}/runs")["data"]
    return runs


def final_run(c: Cluster, event_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        runs = runs_of(c, event_id)
        return runs[0] if runs and runs[0]["status"] in FINAL else None
    run: dict[str, Any] = wait_until(done, timeout, what=f"the run of {event_id} to end")
    return run


def assert_serving(c: Cluster) -> None:
    """A normal event is accepted within a second, and its run completes."""
    started = time.monotonic()
    status, body = c.request("POST", "/e/dev", {"name": "poison/normal", "data": {}})
    assert status == 200, body
    assert time.monotonic() - started < bound(1.0)
    run = final_run(c, body["ids"][0])
    assert run["status"] == "Completed", run
    health = c.get("/health")
    assert health["status"] == "ok", health


def restart(c: Cluster) -> None:
    assert c.gateway is not None
    c.gateway.stop()
    c.start_gateway()
    wait_until(lambda: c.get("/v1/workers")["data"], what="the worker to reconnect")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def test_deep_event_data_and_a_finish_listener(poison: Cluster) -> None:
    # The event's own JSON is 252 levels deep: 2 short of the encoder's limit. Its run's
    # finish event embeds it (2 levels deeper) for the function listening to finishes.
    (event_id,) = poison.send({"name": "poison/deep", "data": nested(250)})
    assert final_run(poison, event_id)["status"] == "Completed"

    def listener_done() -> bool:
        runs = poison.get("/v1/runs?function_id=poison/on-finish&limit=50")["data"]
        return any(r["status"] == "Completed" and r["output"] == "poison/deep" for r in runs)
    wait_until(listener_done, 20, what="on-finish to run for the deep run's finish")
    assert_serving(poison)
    restart(poison)
    assert_serving(poison)


def test_a_function_is_not_triggered_by_its_own_finish(poison: Cluster) -> None:
    ids = [poison.send({"name": "poison/normal", "data": {}})[0] for _ in range(3)]
    for event_id in ids:
        assert final_run(poison, event_id)["status"] == "Completed"

    def listeners() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = poison.get(
            "/v1/runs?function_id=poison/on-finish&limit=100")["data"]
        return runs
    wait_until(lambda: len(listeners()) >= 3 and all(
        r["status"] == "Completed" for r in listeners()), 20, what="three on-finish runs")
    # One per finish of "normal"; none for on-finish's own finishes, however long we look.
    assert_serving(poison)
    assert len(listeners()) == 4
    assert {r["output"] for r in listeners()} == {"poison/normal"}
    assert loop_guard.targets(["poison/on-finish"], about="poison/on-finish", link=1) == []


async def lease(raw: RawWorker, c: Cluster) -> m.LeaseGranted:
    c.send({"name": EVENT, "data": {}})
    return await raw.expect(m.LeaseGranted, timeout=10)


async def refused(raw: RawWorker, seq: int) -> m.CheckpointRefused:
    msg = await raw.expect(m.CheckpointRefused, timeout=10)
    assert msg.seq == seq
    return msg


def run_error(c: Cluster, run_id: str) -> dict[str, Any]:
    run = wait_until(lambda: (r := c.get(f"/v1/runs/{run_id}"))["status"] in FINAL and r,
                     what=f"run {run_id} to end")
    assert run["status"] == "Failed", run
    error: dict[str, Any] = run["error"]
    return error


async def test_malformed_checkpoint_payloads_fail_their_run_only(poison: Cluster) -> None:
    raw = await RawWorker.ready_on(poison.connect_port)
    bad: list[tuple[m.Checkpoint, str]] = []

    granted = await lease(raw, poison)
    bad.append((m.RunCompleted(seq=raw.next_seq(), run_id=granted.run_id, fence=granted.fence,
                               output=b"{not json"), "not valid JSON"))
    await raw.send(bad[-1][0])
    assert "invalid checkpoint" in (await refused(raw, bad[-1][0].seq)).reason

    granted = await lease(raw, poison)
    bad.append((m.EventsSent(seq=raw.next_seq(), run_id=granted.run_id, fence=granted.fence,
                             step_id="send", events=[b'{"name": 1}', b"]["]), "event 0"))
    await raw.send(bad[-1][0])
    await refused(raw, bad[-1][0].seq)

    granted = await lease(raw, poison)
    bad.append((m.InvokeRequested(seq=raw.next_seq(), run_id=granted.run_id,
                                  fence=granted.fence, step_id="call", function_id=FUNCTION,
                                  data=b"[1, 2]"), "JSON object"))
    await raw.send(bad[-1][0])
    await refused(raw, bad[-1][0].seq)

    for checkpoint, words in bad:
        error = run_error(poison, checkpoint.run_id)
        assert error["name"] == "InvalidCheckpoint" and words in error["message"], error
    assert_serving(poison)

    # The worker reconnects to a restarted gateway and resends them: refused, nothing wedges.
    await raw.close()
    restart(poison)
    raw = await RawWorker.ready_on(poison.connect_port)
    for checkpoint, _ in bad:
        await raw.send(checkpoint)
        assert "already Failed" in (await refused(raw, checkpoint.seq)).reason
    assert_serving(poison)
    await raw.close()


async def test_the_gateway_enforces_max_steps_and_the_output_size(poison: Cluster) -> None:
    raw = await RawWorker.ready_on(poison.connect_port)
    granted = await lease(raw, poison)
    for index in range(MAX_STEPS + 1):
        await raw.send(raw.step_completed(granted.run_id, granted.fence, step_id=f"s{index}"))
    error = run_error(poison, granted.run_id)
    assert error["name"] == "LimitExceeded" and "--max-steps" in error["message"], error

    granted = await lease(raw, poison)
    await raw.send(m.RunCompleted(seq=raw.next_seq(), run_id=granted.run_id,
                                  fence=granted.fence, output=b'"' + b"x" * MAX_RESULT + b'"'))
    error = run_error(poison, granted.run_id)
    assert error["name"] == "LimitExceeded" and "--max-step-result" in error["message"], error
    # Failed for good: not retried.
    assert poison.get(f"/v1/runs/{granted.run_id}")["attempt"] == 0
    assert_serving(poison)
    await raw.close()


# --- property: hostile checkpoint payloads get typed answers, never a failed batch ----------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20)


def _deep(depth: int, open_: bytes = b"[") -> bytes:
    close = b"]" if open_ == b"[" else b"}"
    if open_ == b"[":
        return open_ * depth + close * depth
    return b'{"a":' * depth + b"1" + close * depth


hostile_payloads = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),  # also Infinity, 70-bit integers
    st.integers(min_value=250, max_value=1100).map(_deep),
    st.integers(min_value=250, max_value=1100).map(lambda d: _deep(d, b"{")),
    st.sampled_from([b"NaN", b"1e99999", b'"\\ud800"', b"\xff\xfe", b"", b"{}", b"[]",
                     b'{"name": "tether/function.finished", "id": "x"}',
                     b'{"name": "ok/evt", "id": "e\\u0000"}',
                     b'{"name": "ok/evt", "id": "fine", "data": []}',
                     b'{"name": "ok/evt", "id": "fine2", "data": {"x": 1}}']),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["run_completed", "step_completed", "events_sent", "invoke"]),
       payload=hostile_payloads)
def test_hostile_checkpoint_payloads_get_typed_answers(poison: Cluster, kind: str,
                                                       payload: bytes) -> None:
    loop = _LOOPS.setdefault(id(poison), asyncio.new_event_loop())
    loop.run_until_complete(_attack(poison, kind, payload))


_LOOPS: dict[int, asyncio.AbstractEventLoop] = {}
_RAW: dict[int, RawWorker] = {}


async def _attack(c: Cluster, kind: str, payload: bytes) -> None:
    raw = _RAW.get(id(c))
    if raw is None:
        raw = _RAW[id(c)] = await RawWorker.ready_on(c.connect_port, capacity=1)
    granted = await lease(raw, c)
    run_id, fence = granted.run_id, granted.fence
    hostile: m.Checkpoint
    if kind == "run_completed":
        hostile = m.RunCompleted(seq=raw.next_seq(), run_id=run_id, fence=fence, output=payload)
    elif kind == "step_completed":
        hostile = raw.step_completed(run_id, fence, output=payload)
    elif kind == "events_sent":
        hostile = m.EventsSent(seq=raw.next_seq(), run_id=run_id, fence=fence, step_id="e",
                               events=[payload])
    else:
        hostile = m.InvokeRequested(seq=raw.next_seq(), run_id=run_id, fence=fence,
                                    step_id="i", function_id="poison/normal", data=payload)
    end = m.RunCompleted(seq=raw.next_seq(), run_id=run_id, fence=fence, output=b"null")
    await raw.send(hostile, end)
    # A neighbour's request in the same moment is accepted.
    status, body = c.request("POST", "/e/dev", {"name": "poison/normal", "data": {}})
    assert status == 200, body
    # Only typed answers: each checkpoint is acknowledged or refused with a reason; the
    # socket stays open.
    answered: set[int] = set()
    while max(answered, default=0) < end.seq:
        msg = await raw.receive(timeout=10)
        if isinstance(msg, m.CheckpointAck):
            answered |= {s for s in (hostile.seq, end.seq) if s <= msg.upto}
        elif isinstance(msg, m.CheckpointRefused):
            assert msg.reason, msg
            answered.add(msg.seq)
        elif isinstance(msg, m.LeaseRevoked | m.LeaseGranted):
            if isinstance(msg, m.LeaseGranted):  # a child run (invoke): hand it back
                await raw.send(m.RunCompleted(seq=raw.next_seq(), run_id=msg.run_id,
                                              fence=msg.fence, output=b"null"))
        else:
            raise AssertionError(f"unexpected answer {msg!r}")
    metrics = c.get_text("/metrics")
    assert "tether_batches_failed_total 0.0\n" in metrics
    assert "tether_items_failed_total 0.0\n" in metrics  # everything was caught on arrival
    assert c.get("/health")["status"] == "ok"
