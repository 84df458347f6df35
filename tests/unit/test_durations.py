"""protocol.durations: the ways users write a duration, clear refusals of the rest, the
warning for numbers that look like milliseconds, and the longest sleep."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from protocol.durations import (
    MAX_SLEEP,
    YEAR,
    check_sleep,
    human,
    milliseconds_suspected,
    to_seconds,
)
from protocol.errors import InvalidInput, RetryAfterError
from protocol.manifest import Throttle


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1m500ms", 60.5),
        ("1.5s", 1.5),
        (" 1h 30m ", 5400.0),
        ("0s", 0.0),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
        (timedelta(minutes=2, milliseconds=250), 120.25),
        (timedelta(0), 0.0),
    ],
)
def test_accepted(value, seconds):
    result = to_seconds(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["", "   ", "30", "5x", "s", "1.5.5s", "ms30", "1h 30", "abc",
                                   "-5s", "1e3s"])
def test_garbage_strings_say_how_to_write_a_duration(value):
    with pytest.raises(InvalidInput) as info:
        to_seconds(value)
    message = str(info.value)
    assert repr(value) in message
    assert "'30s'" in message and "1h30m" in message  # shows examples
    assert "seconds as a number" in message


@pytest.mark.parametrize("value", [-1, -0.001, timedelta(seconds=-1)])
def test_negatives_are_refused(value):
    with pytest.raises(InvalidInput, match="negative"):
        to_seconds(value)


@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_durations(value):
    with pytest.raises(InvalidInput, match="got a bool"):
        to_seconds(value)


@pytest.mark.parametrize("value", [None, [1], {"s": 1}, b"30s"])
def test_other_types_are_named(value):
    with pytest.raises(InvalidInput, match=type(value).__name__):
        to_seconds(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(InvalidInput):
        to_seconds(value)


def test_what_names_the_option():
    with pytest.raises(InvalidInput, match=r"^throttle\.period: 'soon' is not a duration"):
        to_seconds("soon", what="throttle.period")


# --- numbers are seconds: the millisecond mistake is loud -------------------------------


def _warnings(build):
    with capture_logs() as logs:
        build()
    return [log for log in logs if log["event"] == "duration_maybe_milliseconds"]


def test_a_round_thousand_logs_both_readings():
    [warning] = _warnings(lambda: to_seconds(5000, what="step.sleep('nap')"))
    assert warning["log_level"] == "warning"
    assert warning["message"].startswith(
        "step.sleep('nap'): 5000 seconds (1h23m20s); if you meant 5000 ms, pass \"5s\" or 5")
    assert (warning["what"], warning["value"]) == ("step.sleep('nap')", 5000)


@pytest.mark.parametrize(("value", "seconds", "ms"), [
    (1000, "16m40s", '"1s" or 1'),
    (60000, "16h40m", '"1m" or 60'),
    (3600000, "41d16h", '"1h" or 3600'),
    (86400000, "1000d", '"1d" or 86400'),
])
def test_the_warning_names_both_readings(value, seconds, ms):
    warning = milliseconds_suspected(value)
    assert warning is not None
    assert f"{value} seconds ({seconds})" in warning and ms in warning


@pytest.mark.parametrize("value", [
    999, 1500, 3600, 86400, 604800, 60, 300,       # what people write in seconds
    5000.0, "5000s", "5000ms", timedelta(seconds=5000),  # said explicitly, or normalised
    True,
])
def test_what_stays_quiet(value):
    assert milliseconds_suspected(value) is None
    if not isinstance(value, bool):
        assert _warnings(lambda: to_seconds(value)) == []


def test_the_value_is_still_read_as_seconds():
    assert to_seconds(5000) == 5000.0


def test_option_durations_warn_naming_the_option():
    [warning] = _warnings(lambda: Throttle(1, 60000))
    assert warning["message"].startswith("Throttle.period: 60000 seconds (16h40m)")


def test_retry_after_warns_and_takes_strings():
    [warning] = _warnings(lambda: RetryAfterError("busy", 5000))
    assert warning["message"].startswith("RetryAfterError retry_after: 5000 seconds")
    assert _warnings(lambda: RetryAfterError("busy", 30)) == []
    assert RetryAfterError("busy", "5s").retry_after == 5.0
    with pytest.raises(InvalidInput, match="RetryAfterError retry_after: 'soon'"):
        RetryAfterError("busy", "soon")


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250ms"), (1, "1s"), (90.5, "1m30.5s"), (3600, "1h"), (5000, "1h23m20s"),
    (604800, "7d"), (YEAR, "366d"),
])
def test_human_writes_what_to_seconds_reads(seconds, text):
    assert human(seconds) == text
    assert to_seconds(text) == pytest.approx(seconds)


# --- the longest sleep -----------------------------------------------------------------


def test_a_year_is_the_longest_sleep():
    assert MAX_SLEEP == YEAR == 366 * 86400
    assert check_sleep(YEAR, what="step.sleep('s')") == YEAR


def test_a_longer_sleep_is_refused_saying_how_long():
    with pytest.raises(InvalidInput) as info:
        check_sleep(YEAR + 1, what="step.sleep('s')")
    assert str(info.value).startswith(
        "step.sleep('s'): 366d1s is longer than the longest sleep, one year (366d)")
