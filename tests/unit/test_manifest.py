"""protocol.manifest: option classes validate what users write; check_expressions finds typos."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.errors import ExpressionError, InvalidInput
from protocol.manifest import (
    AppManifest,
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionConfig,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
    check_expressions,
)

# --- triggers --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shop/order.paid", "shop/*", "*", "a"])
def test_trigger_event_names(name):
    # "*" alone still builds (stored functions load); registration refuses it: see
    # tests/unit/test_options.py.
    assert TriggerEvent(name).event == name


@pytest.mark.parametrize("name", ["shop/*.paid", "*/paid", "a**"])
def test_star_in_the_middle_is_refused(name):
    with pytest.raises(InvalidInput, match=r"'\*' may only end an event name"):
        TriggerEvent(name)


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_trigger_event_name_length(name):
    with pytest.raises(InvalidInput, match=r"^TriggerEvent\.event: "):
        TriggerEvent(name)


def test_trigger_cron_defaults_to_utc():
    assert TriggerCron("0 9 * * MON").tz == "UTC"


# --- flow-control options --------------------------------------------------------------


def test_durations_are_normalised_to_seconds():
    assert Throttle(3, "1m").period == 60.0
    assert RateLimit(1, timedelta(hours=1)).period == 3600.0
    assert Debounce("500ms", timeout=30).timeout == 30.0
    assert Batch(10, "2s").timeout == 2.0
    assert Cancel("a/b", timeout="7d").timeout == 604800.0
    assert Timeouts(start="1m", finish="1h") == Timeouts(start=60.0, finish=3600.0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Throttle(limit=0, period="1m"),
        lambda: Throttle(limit=1, period="1m", burst=0),
        lambda: RateLimit(limit=0, period="1m"),
        lambda: Concurrency(limit=0),
        lambda: Concurrency(limit=1, scope="global"),  # type: ignore[arg-type]
        lambda: Batch(max_size=0, timeout="1s"),
        lambda: Singleton(mode="queue"),  # type: ignore[arg-type]
    ],
    ids=["throttle-limit-0", "burst-0", "rate-limit-0", "concurrency-0", "bad-scope",
         "batch-0", "bad-singleton-mode"],
)
def test_out_of_range_options_are_refused(build):
    with pytest.raises(InvalidInput, match=r"^(Throttle|RateLimit|Concurrency|Batch|Singleton)\."):
        build()


def test_bad_duration_in_an_option_says_how_to_write_one():
    expected = "'soon' is not a duration; write e.g. '500ms'"
    with pytest.raises(InvalidInput, match=r"^Throttle\.period: " + re.escape(expected)):
        Throttle(limit=1, period="soon")


def test_negative_duration_in_an_option():
    with pytest.raises(InvalidInput, match=r"^Debounce\.period: -1 is negative$"):
        Debounce(period=-1)


def test_unknown_option_is_refused():
    with pytest.raises(InvalidInput, match=r"^Throttle\.bogus: Unexpected keyword argument"):
        Throttle(limit=1, period=1, bogus=1)  # type: ignore[call-arg]


def test_options_are_frozen():
    throttle = Throttle(1, 1)
    with pytest.raises(Exception, match=r"frozen|cannot assign"):
        throttle.limit = 2  # type: ignore[misc]


# --- FunctionConfig --------------------------------------------------------------------


@pytest.mark.parametrize("fn_id", ["a", "sync-systems", "A.b_c-1", "9lives", "x" * 128])
def test_function_id_pattern_accepts(fn_id):
    assert FunctionConfig(id=fn_id).id == fn_id


@pytest.mark.parametrize("fn_id", ["", "-x", ".x", "_x", "a b", "a/b", "é", "x" * 129])
def test_function_id_pattern_refuses(fn_id):
    with pytest.raises(ValidationError, match="id"):
        FunctionConfig(id=fn_id)


def test_app_id_uses_the_same_pattern():
    assert AppManifest(id="shop").id == "shop"
    with pytest.raises(ValidationError):
        AppManifest(id="shop/x")


def test_function_defaults():
    config = FunctionConfig(id="f")
    assert config.retries == 4
    assert config.triggers == [] and config.concurrency == [] and config.cancel_on == []
    assert config.kind == "async"


def test_at_most_ten_triggers():
    ten: list[TriggerEvent | TriggerCron] = [TriggerEvent(f"e{i}") for i in range(10)]
    assert len(FunctionConfig(id="f", triggers=ten).triggers) == 10
    with pytest.raises(ValidationError, match="at most 10"):
        FunctionConfig(id="f", triggers=[*ten, TriggerCron("* * * * *")])


@pytest.mark.parametrize("retries", [0, 4, 20])
def test_retries_in_range(retries):
    assert FunctionConfig(id="f", retries=retries).retries == retries


@pytest.mark.parametrize("retries", [-1, 21])
def test_retries_out_of_range(retries):
    with pytest.raises(ValidationError, match="retries"):
        FunctionConfig(id="f", retries=retries)


def test_at_most_five_cancel_on():
    five = [Cancel(f"e{i}") for i in range(5)]
    assert len(FunctionConfig(id="f", cancel_on=five).cancel_on) == 5
    with pytest.raises(ValidationError, match="cancel_on"):
        FunctionConfig(id="f", cancel_on=[*five, Cancel("e5")])


def test_at_most_two_concurrency_limits():
    with pytest.raises(ValidationError, match="concurrency"):
        FunctionConfig(id="f", concurrency=[Concurrency(1), Concurrency(2), Concurrency(3)])


def test_triggers_are_told_apart_by_their_fields():
    config = FunctionConfig(id="f", triggers=[{"event": "a/b"}, {"cron": "0 * * * *"}])  # type: ignore[list-item]
    assert isinstance(config.triggers[0], TriggerEvent)
    assert isinstance(config.triggers[1], TriggerCron)


# --- check_expressions -----------------------------------------------------------------


def _checked(**options: Any) -> None:
    check_expressions("shop/f", FunctionConfig(id="f", **options))


def test_valid_expressions_pass():
    _checked(
        triggers=[TriggerEvent("a", if_="event.data.x == 1")],
        concurrency=[Concurrency(1, key="event.data.customer")],
        throttle=Throttle(1, 1, key="event.data.customer"),
        rate_limit=RateLimit(1, 1, key="event.user.id"),
        debounce=Debounce(1, key="event.data.k"),
        batch=Batch(2, 1, key="event.data.k"),
        singleton=Singleton(key="event.data.k"),
        priority=Priority("event.data.vip ? 60 : 0"),
        idempotency="event.data.order_id",
        cancel_on=[Cancel("b", if_="event.data.id == async.data.id")],
    )


def test_syntax_error_names_the_function_and_the_option():
    with pytest.raises(ExpressionError) as info:
        _checked(triggers=[TriggerEvent("shop/order.paid", if_="event.data.x ==")])
    message = str(info.value)
    assert message.startswith("function 'shop/f': trigger 'shop/order.paid' if_:")
    assert "invalid CEL expression 'event.data.x =='" in message


def test_unknown_variable_names_the_function_and_the_option():
    with pytest.raises(ExpressionError) as info:
        _checked(throttle=Throttle(1, 1, key="evnt.data.customer"))
    message = str(info.value)
    assert message.startswith("function 'shop/f': throttle.key:")
    assert "unknown variable(s) evnt" in message
    assert "only event" in message


def test_async_is_only_defined_in_cancel_on():
    _checked(cancel_on=[Cancel("b", if_="async.data.id == event.data.id")])
    with pytest.raises(ExpressionError, match=r"trigger 'a' if_: .*unknown variable\(s\) async"):
        _checked(triggers=[TriggerEvent("a", if_="async.data.id == 1")])


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"concurrency": [Concurrency(1), Concurrency(1, key="nope")]}, "concurrency[1].key"),
        ({"cancel_on": [Cancel("b", if_="other.x")]}, "cancel_on[0].if_"),
        ({"idempotency": "event.data.id +"}, "idempotency"),
        ({"rate_limit": RateLimit(1, 1, key="x")}, "rate_limit.key"),
        ({"debounce": Debounce(1, key="x")}, "debounce.key"),
        ({"batch": Batch(1, 1, key="x")}, "batch.key"),
        ({"singleton": Singleton(key="x")}, "singleton.key"),
        ({"priority": Priority("x")}, "priority.run"),
    ],
)
def test_every_option_is_checked(options, where):
    with pytest.raises(ExpressionError, match=rf"^function 'shop/f': {re.escape(where)}:"):
        _checked(**options)
