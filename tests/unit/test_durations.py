"""protocol.durations: the ways users write a duration, and clear refusals of the rest."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from protocol.durations import to_seconds
from protocol.errors import InvalidInput


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
