"""Frames are sized by their encoded length against the gateway's ``max_frame_size``.

A checkpoint that could never cross the socket fails its step (or run) for good with a message
naming its size and the limit, instead of closing the socket and being resent forever.
"""

from __future__ import annotations

import json

from protocol import messages as m
from protocol.codec import decode, encode, frames
from tests.unit import test_runner
from tests.unit.test_codec import SAMPLES
from worker.app import Event
from worker.connection import FRAME_MESSAGES, wire_size
from worker.runner import Limits

LIMIT = 64 * 1024

# The runner tests' fixtures: ``run(handler, limits=...)`` and its thread pool.
pool, run = test_runner.pool, test_runner.run


def _limits() -> Limits:
    return Limits(max_frame=LIMIT)


async def test_a_step_result_over_the_frame_limit_fails_for_good_at_once(run):
    async def handler(ctx):
        return await ctx.step.run("big", lambda: "x" * (LIMIT + 10))

    rec, _ = await run(handler, limits=_limits(), retries=5)
    assert rec.kinds == ["step_failed", "run_failed"]
    [failed] = rec.of(m.StepFailed)
    assert failed.final and failed.attempt == 0
    assert failed.error.name == "FrameTooLarge"
    assert f"{LIMIT:,} bytes" in failed.error.message
    assert "step 'big' result" in failed.error.message
    assert rec.of(m.RunFailed)[0].final


async def test_a_step_result_over_max_step_result_is_not_retried(run):
    async def handler(ctx):
        return await ctx.step.run("big", lambda: "y" * 2000)

    rec, _ = await run(handler, limits=Limits(max_step_result=1000), retries=5)
    [failed] = rec.of(m.StepFailed)
    assert failed.final and failed.attempt == 0 and failed.error.name == "LimitExceeded"


async def test_a_large_send_event_fails_the_function_for_good_and_sends_nothing(run):
    async def handler(ctx):
        await ctx.step.send_event("notify", [Event(name="a/b", data={"blob": "z" * 40_000}),
                                             Event(name="a/c", data={"blob": "z" * 40_000})])
        return "unreachable"

    rec, _ = await run(handler, limits=_limits(), retries=5)
    assert rec.kinds == ["run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert failed.final and failed.error.name == "FrameTooLarge"
    assert "step.send_event('notify')" in failed.error.message
    assert f"over the gateway's frame limit of {LIMIT:,} bytes" in failed.error.message


async def test_the_error_can_be_caught_and_the_run_goes_on(run):
    async def handler(ctx):
        try:
            await ctx.step.invoke("child", function="shop/other", data={"blob": "q" * LIMIT})
        except Exception as exc:  # FrameTooLarge is a NonRetriableError
            await ctx.step.send_event("small", Event(name="a/b", data={"why": type(exc).__name__}))
        return "done"

    rec, _ = await run(handler, limits=_limits())
    assert rec.kinds == ["events_sent", "run_completed"]
    assert b"FrameTooLarge" in rec.of(m.EventsSent)[0].events[0]


async def test_an_output_over_the_frame_limit_fails_the_run_for_good(run):
    async def handler(ctx):
        return "o" * LIMIT

    rec, _ = await run(handler, limits=_limits(), retries=5)
    assert rec.kinds == ["run_failed"]
    [failed] = rec.of(m.RunFailed)
    assert failed.final and "function 'shop/f' output" in failed.error.message


async def test_a_huge_error_message_is_cut_so_the_failure_fits(run):
    async def handler(ctx):
        raise ValueError("e" * (4 * LIMIT))

    rec, _ = await run(handler, limits=Limits(max_frame=4 * LIMIT), retries=0)
    [failed] = rec.of(m.RunFailed)
    assert failed.final and failed.error.message.endswith("characters in all)")
    assert len(encode([failed])) < 4 * LIMIT


def _events(count: int, size: int) -> list[m.Message]:
    return [m.EventsSent(seq=i + 1, run_id="r", fence=1, step_id=f"s{i}",
                         events=[json.dumps({"blob": "b" * size}).encode()])
            for i in range(count)]


def test_frames_are_split_by_encoded_size_under_the_limit():
    batch = _events(40, 10_000)  # ~400 KB in all
    out = frames(batch, LIMIT, FRAME_MESSAGES)
    assert [msg for frame in out for msg in decode(frame)] == batch  # in order, nothing lost
    assert len(out) > 1
    assert all(len(frame) <= LIMIT for frame in out)


def test_frames_hold_a_bounded_number_of_small_messages():
    batch: list[m.Message] = [m.Heartbeat(in_flight=i) for i in range(FRAME_MESSAGES + 3)]
    assert [len(decode(f)) for f in frames(batch, LIMIT, FRAME_MESSAGES)] == [FRAME_MESSAGES, 3]


def test_a_message_over_the_limit_travels_alone():
    big, small = _events(1, 2 * LIMIT), m.Heartbeat(in_flight=1)
    out = frames([small, *big, small], LIMIT)
    assert [decode(f) for f in out] == [[small], big, [small]]


def test_wire_size_is_an_upper_bound():
    for msg in [*_events(1, 5000), m.Heartbeat(), *SAMPLES, m.StepFailed(
            seq=1, run_id="r", fence=1, step_id="s\u00e9\U0001f600", attempt=0,
            error=m.ErrorInfo(name="E", message="\u00e9" * 100, stack="x"), final=True,
            started_at=1.0, ended_at=2.0)]:
        assert wire_size(msg) >= len(encode([msg])) - 5


def test_field_names_fit_the_bound_wire_size_assumes():
    import dataclasses
    import inspect

    from pydantic import BaseModel

    from protocol import manifest, messages
    from worker import connection

    names = [name for module in (messages, manifest) for _, cls in inspect.getmembers(module)
             if inspect.isclass(cls)
             for name in (cls.model_fields if issubclass(cls, BaseModel) else
                          [f.name for f in dataclasses.fields(cls)]
                          if dataclasses.is_dataclass(cls) else [])]
    longest = max(len(name) for name in names)
    assert longest + 5 <= connection._FIELD_NAME
