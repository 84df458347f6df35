"""Unit-test durable functions in-process, without a gateway or a worker.

:func:`run` executes a function the way a worker does, step by step, and plays the gateway's
part itself: it records each step's result, completes sleeps at once, hands waits the events
you supply, returns your results for invoked functions, and retries failed steps and
functions immediately. Between suspensions it replays the function from its recorded steps,
exactly as a real worker would after a crash, so a function that is not deterministic fails
here as it would in production.

Example (pytest with pytest-asyncio)::

    from worker import Event
    from worker.testing import run

    async def test_approval_path():
        result = await run(
            approve_order,
            Event("shop/order.created", {"order": 7}),
            steps={"charge-card": {"charged": True}},       # mock a step.run result
            waits={"approval": Event("shop/order.approved", {"order": 7})},
        )
        assert result.status == "Completed"
        assert result.output == {"order": 7, "approved": True}
        assert result.sleeps == [("cool-off", 3600.0)]
        assert result.ran == ["reserve-stock"]              # steps whose code really ran

    def test_rejection_times_out():
        result = run_sync(approve_order, Event("shop/order.created", {"order": 7}))
        assert result.output == {"order": 7, "approved": False}   # the wait timed out

A mocked step's code is not called; an exception as its value makes it fail for good (the
function sees ``StepError``). A wait with no event supplied times out (returns None). An
invoke with no result supplied fails the test with a message naming the step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from protocol import messages as m
from worker.app import Event, Function
from worker.runner import Limits, RunExecution, error_info
from worker.threads import StepThreads


@dataclass
class TestResult:
    """What happened: the outcome, and every step the gateway would have recorded."""

    __test__ = False  # not a pytest test class

    status: str  # "Completed" or "Failed"
    output: Any = None
    error: m.ErrorInfo | None = None
    #: every recorded step: id -> its result (for failed steps, the ErrorInfo)
    steps: dict[str, Any] = field(default_factory=dict)
    #: ids of the ``step.run`` steps whose code actually ran (mocked ones excluded), in order
    ran: list[str] = field(default_factory=list)
    #: (step id, seconds or until-epoch) of each ``step.sleep`` / ``sleep_until``
    sleeps: list[tuple[str, float]] = field(default_factory=list)
    #: (step id, event name) of each ``step.wait_for_event``
    waits: list[tuple[str, str]] = field(default_factory=list)
    #: (step id, function id, data) of each ``step.invoke``
    invokes: list[tuple[str, str, Any]] = field(default_factory=list)
    #: every event sent with ``step.send_event``
    sent: list[Event] = field(default_factory=list)
    #: how many times the function was (re)started, replays included
    executions: int = 0
    #: the function body's attempts (1 + function-level retries)
    attempts: int = 1


async def run(
    function: Function,
    event: Event | None = None,
    *,
    events: list[Event] | None = None,
    steps: Mapping[str, Any] | None = None,
    waits: Mapping[str, Event | None] | None = None,
    invokes: Mapping[str, Any] | None = None,
    max_executions: int = 1000,
) -> TestResult:
    """Run ``function`` to its end for ``event`` (or ``events``, for batches).

    Args:
        steps: mocked ``step.run`` results by step id (an exception instance fails the step).
        waits: the event each ``wait_for_event`` step receives (missing or None: timeout).
        invokes: the child's output for each ``step.invoke`` step (an exception: it failed).
        max_executions: stop a function that never settles.
    """
    if not isinstance(function, Function):
        raise TypeError("run() takes a function declared with @app.function")
    trigger = events or [event or Event(name="test/event")]
    payloads = [orjson.dumps({**e.to_json(), "id": e.id or f"test-event-{i}",
                              "ts": e.ts or 0}) for i, e in enumerate(trigger)]
    memos: dict[str, m.StepMemo] = {
        sid: _memo("run", value) for sid, value in (steps or {}).items()
    }
    waits, invokes = dict(waits or {}), dict(invokes or {})
    attempts: dict[str, int] = {}
    result = TestResult(status="Running")
    attempt = 0
    threads = StepThreads(core=8, limit=64, name="tether-test")
    try:
        for fence in range(1, max_executions + 1):
            emitted: list[m._Checkpoint] = []
            lease = m.LeaseGranted(run_id="test-run", fence=fence, function_id=function.id,
                                   events=payloads, memos=memos, attempts=attempts,
                                   attempt=attempt)
            execution = RunExecution(lease, function, threads=threads, limits=Limits(),
                                     emit=_collector(emitted, fence))
            execution.start()
            await asyncio.wait_for(execution.wait(), 60)
            result.executions = fence
            for msg in emitted:
                outcome = _record(msg, memos, attempts, waits, invokes, result)
                if isinstance(msg, (m.StepCompleted, m.EventsSent)):
                    attempt = 0  # as the gateway: a completed step resets the body's budget
                if isinstance(msg, m.RunFailed) and not msg.final:
                    attempt = msg.attempt + 1
                    result.attempts += 1
                if outcome is not None:
                    return outcome
        raise AssertionError(f"{function.id} did not finish within {max_executions} executions")
    finally:
        threads.shutdown()


def run_sync(function: Function, event: Event | None = None, **options: Any) -> TestResult:
    """:func:`run` for tests without an event loop."""
    return asyncio.run(run(function, event, **options))


def _collector(emitted: list[m._Checkpoint], fence: int) -> Any:
    def emit(kind: type[m._Checkpoint], values: dict[str, Any]) -> None:
        emitted.append(kind(seq=len(emitted) + 1, run_id="test-run", fence=fence, **values))

    return emit


def _record(msg: m._Checkpoint, memos: dict[str, m.StepMemo], attempts: dict[str, int],
            waits: dict[str, Event | None], invokes: dict[str, Any],
            result: TestResult) -> TestResult | None:
    """Play the gateway for one checkpoint; return the result once the run has ended."""
    if isinstance(msg, m.StepCompleted):
        memos[msg.step_id] = m.StepMemo(kind="run", output=msg.output)
        result.steps[msg.step_id] = orjson.loads(msg.output)
        result.ran.append(msg.step_id)
    elif isinstance(msg, m.StepFailed):
        if msg.final:
            memos[msg.step_id] = m.StepMemo(kind="run", error=msg.error)
            result.steps[msg.step_id] = msg.error
            result.ran.append(msg.step_id)
        else:
            attempts[msg.step_id] = msg.attempt + 1
    elif isinstance(msg, m.SleepRequested):
        result.sleeps.append((msg.step_id, msg.duration if msg.duration is not None
                              else msg.until or 0.0))
        memos[msg.step_id] = m.StepMemo(kind="sleep", output=b"null")
    elif isinstance(msg, m.WaitRequested):
        result.waits.append((msg.step_id, msg.event))
        got = waits.get(msg.step_id)
        payload = b"null" if got is None else orjson.dumps(
            {**got.to_json(), "id": got.id or f"test-{msg.step_id}", "ts": got.ts or 0})
        memos[msg.step_id] = m.StepMemo(kind="wait", output=payload)
        result.steps[msg.step_id] = got
    elif isinstance(msg, m.InvokeRequested):
        result.invokes.append((msg.step_id, msg.function_id, orjson.loads(msg.data)))
        if msg.step_id not in invokes:
            raise AssertionError(
                f"step.invoke({msg.step_id!r}) called {msg.function_id}: pass its result "
                f"with invokes={{{msg.step_id!r}: ...}}"
            )
        memos[msg.step_id] = _memo("invoke", invokes[msg.step_id])
        result.steps[msg.step_id] = invokes[msg.step_id]
    elif isinstance(msg, m.EventsSent):
        sent = [Event.from_json(raw) for raw in msg.events]
        result.sent.extend(sent)
        ids = [e.id for e in sent]
        memos[msg.step_id] = m.StepMemo(kind="send_event", output=orjson.dumps(ids))
        result.steps[msg.step_id] = ids
    elif isinstance(msg, m.RunCompleted):
        result.status, result.output = "Completed", orjson.loads(msg.output)
        return result
    elif isinstance(msg, m.RunFailed) and msg.final:
        result.status, result.error = "Failed", msg.error
        return result
    return None


def _memo(kind: str, value: Any) -> m.StepMemo:
    if isinstance(value, BaseException):
        return m.StepMemo(kind=kind, error=error_info(value))
    return m.StepMemo(kind=kind, output=orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
