"""What the step API sends for invokes and sleeps, and what it refuses; StepError's fields.

Driven through ``RunExecution`` with a recording ``emit`` (the fixtures of test_runner.py), so
each check is on the real checkpoint message a worker would send.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from protocol import messages as m
from protocol.durations import YEAR
from protocol.errors import NonRetriableError, StepError
from tests.unit.test_runner import pool, run  # noqa: F401  (fixtures)

# --- step.invoke ---------------------------------------------------------------------------


async def test_an_invoke_without_a_timeout_waits_a_year_at_most(run):  # noqa: F811
    async def handler(ctx):
        await ctx.step.invoke("child", function="shop/other", data={"x": 1})

    rec, _ = await run(handler)
    [invoke] = rec.of(m.InvokeRequested)
    assert invoke.timeout == YEAR == 366 * 86400.0
    assert invoke.user is None  # as Inngest: no user unless given


async def test_an_invoke_passes_the_user_given(run):  # noqa: F811
    async def handler(ctx):
        await ctx.step.invoke("child", function="shop/other", timeout="1h",
                              user={"id": 7, "plan": "pro"})

    rec, _ = await run(handler)
    [invoke] = rec.of(m.InvokeRequested)
    assert invoke.timeout == 3600.0
    assert json.loads(invoke.user) == {"id": 7, "plan": "pro"}


async def test_a_user_that_is_not_a_dict_is_refused(run):  # noqa: F811
    async def handler(ctx):
        await ctx.step.invoke("child", function="shop/other", user="ann")

    rec, _ = await run(handler, retries=0)
    [failed] = rec.of(m.RunFailed)
    assert failed.error.message == "step.invoke('child'): user must be a dict, got str"
    assert rec.of(m.InvokeRequested) == []


# --- sleeps --------------------------------------------------------------------------------


async def test_a_sleep_of_a_year_is_accepted(run):  # noqa: F811
    async def handler(ctx):
        await ctx.step.sleep("nap", timedelta(days=366))

    rec, _ = await run(handler)
    [sleep] = rec.of(m.SleepRequested)
    assert sleep.duration == YEAR


@pytest.mark.parametrize("duration", ["367d", timedelta(days=400), YEAR + 1])
async def test_a_sleep_over_a_year_is_refused_with_a_message(run, duration):  # noqa: F811
    async def handler(ctx):
        await ctx.step.sleep("nap", duration)

    rec, _ = await run(handler, retries=0)
    assert rec.of(m.SleepRequested) == []
    [failed] = rec.of(m.RunFailed)
    assert failed.error.name == "InvalidInput"
    assert failed.error.message.startswith("step.sleep('nap'): ")
    assert "is longer than the longest sleep, one year (366d)" in failed.error.message


async def test_sleep_until_more_than_a_year_ahead_is_refused(run):  # noqa: F811
    when = datetime.now(UTC) + timedelta(days=400)

    async def handler(ctx):
        await ctx.step.sleep_until("later", when)

    rec, _ = await run(handler, retries=0)
    [failed] = rec.of(m.RunFailed)
    # 400 days less the moment it took to get there (up to seconds on a loaded machine).
    prefix = f"step.sleep_until('later'): {when} is "
    assert failed.error.message.startswith((prefix + "400d", prefix + "399d23h"))
    assert "from now, which is longer than the longest sleep" in failed.error.message


async def test_a_naive_datetime_is_utc(run):  # noqa: F811
    soon = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(days=3)

    async def handler(ctx):
        await ctx.step.sleep_until("soon", soon)

    rec, _ = await run(handler)
    [sleep] = rec.of(m.SleepRequested)
    assert sleep.until == soon.replace(tzinfo=UTC).timestamp()


# --- StepError -----------------------------------------------------------------------------


def test_step_error_gives_the_original_name_and_message():
    error = StepError("charge", "ValueError", "card declined", "Traceback ...")
    assert (error.step_id, error.name, error.message, error.stack) == (
        "charge", "ValueError", "card declined", "Traceback ...")
    assert str(error) == "step 'charge' failed: ValueError: card declined"
    assert error.error_message == "card declined"  # the older name still reads


async def test_a_non_retriable_error_in_a_step_reaches_the_function_as_a_step_error(run):  # noqa: F811
    caught: list[StepError] = []

    def give_up():
        raise NonRetriableError("card declined")

    async def handler(ctx):
        try:
            await ctx.step.run("charge", give_up)
        except StepError as exc:
            caught.append(exc)
            return "handled"

    rec, _ = await run(handler, retries=5)
    [exc] = caught
    assert (exc.step_id, exc.name, exc.message) == ("charge", "NonRetriableError",
                                                     "card declined")
    [failed] = rec.of(m.StepFailed)
    assert failed.final and failed.attempt == 0
    assert rec.output() == "handled"


async def test_an_uncaught_step_error_fails_the_run_naming_the_step(run):  # noqa: F811
    def give_up():
        raise NonRetriableError("card declined")

    async def handler(ctx):
        await ctx.step.run("charge", give_up)

    rec, _ = await run(handler, retries=5)
    [failed] = rec.of(m.RunFailed)
    assert failed.final
    assert failed.error.name == "NonRetriableError"
    assert failed.error.message == "step 'charge' failed: NonRetriableError: card declined"


# --- what JSON cannot hold -------------------------------------------------------------------


async def test_the_hint_names_what_fails_not_datetimes_which_are_converted(run):  # noqa: F811
    async def handler(ctx):
        when = await ctx.step.run("when", lambda: datetime(2030, 1, 2, tzinfo=UTC))
        try:
            await ctx.step.run("tags", lambda: {"tags": {"a", "b"}})
        except StepError as exc:
            return [when, exc.name, exc.message]

    rec, _ = await run(handler)
    when, name, message = rec.output()
    assert when == "2030-01-02T00:00:00+00:00"
    assert name == "NotSerializable"
    assert message.startswith("step 'tags' result cannot be stored: Type is not JSON "
                              "serializable: set; return JSON values")
    assert "a set becomes a list" in message
    assert ".isoformat()" not in message
