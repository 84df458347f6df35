"""protocol.expressions: compiled once, evaluated many times; failures never match."""

from __future__ import annotations

import pytest

from protocol.errors import ExpressionError, InvalidInput
from protocol.expressions import check, compile_expression, evaluate, matches

EVENT = {"event": {"name": "shop/order.paid", "data": {"amount": 30, "tags": ["vip"]},
                   "user": {"id": "u1"}}}


def test_compiled_programs_are_cached_by_source():
    source = "event.data.amount > 12345"  # unique to this test
    first = compile_expression(source)
    hits = compile_expression.cache_info().hits
    assert compile_expression(source) is first
    assert compile_expression.cache_info().hits == hits + 1
    assert compile_expression("event.data.amount > 54321") is not first


def test_syntax_error_shows_the_source():
    with pytest.raises(ExpressionError, match=r"invalid CEL expression 'event\.data\.x =='"):
        compile_expression("event.data.x ==")


def test_failed_compilation_is_not_cached_as_success():
    for _ in range(2):
        with pytest.raises(ExpressionError):
            compile_expression("(((")


@pytest.mark.parametrize("source", ["", "   "])
def test_empty_expression(source):
    with pytest.raises(ExpressionError, match="empty expression"):
        compile_expression(source)


def test_expression_errors_are_invalid_input():
    with pytest.raises(InvalidInput):
        compile_expression("1 +")


def test_evaluate():
    assert evaluate("event.data.amount * 2", EVENT) == 60
    assert evaluate("'vip' in event.data.tags", EVENT) is True
    assert evaluate("event.user.id", EVENT) == "u1"


def test_evaluate_missing_field_raises_a_readable_error():
    with pytest.raises(ExpressionError,
                       match=r"'event\.data\.missing == 1' could not be evaluated"):
        evaluate("event.data.missing == 1", EVENT)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, True),
        ("event.data.amount > 10", True),
        ("event.data.amount > 100", False),
        ("event.name.startsWith('shop/')", True),
        ("event.data.missing == 1", False),  # a field the event lacks: no match, no error
        ("event.data.amount", False),  # truthy but not exactly true
        ("'true'", False),
        ("event.data.amount / 0 == 1", False),  # evaluation error
        ("event.data.amount == 'x'", False),  # type error
    ],
)
def test_matches(source, expected):
    assert matches(source, EVENT) is expected


def test_matches_with_two_variables():
    variables = {"event": {"data": {"id": 1}}, "async": {"data": {"id": 1}}}
    assert matches("event.data.id == async.data.id", variables) is True
    variables["async"] = {"data": {"id": 2}}
    assert matches("event.data.id == async.data.id", variables) is False


def test_a_filter_that_does_not_compile_does_not_match():
    # A filter that does not compile does not match either (it was checked at declaration).
    assert matches("event.data.x ==", EVENT) is False


def test_check_allows_declared_variables():
    check("event.data.x == async.data.x", {"event", "async"}, where="cancel_on[0].if_")
    check("1 == 1", frozenset(), where="constant")


def test_check_refuses_unknown_variables_listing_them():
    with pytest.raises(ExpressionError) as info:
        check("foo.x == bar.y && event.a", frozenset({"event"}), where="function 'a/f': key")
    message = str(info.value)
    assert message.startswith("function 'a/f': key: ")
    assert "unknown variable(s) bar, foo" in message
    assert "only event are defined here" in message


def test_check_prefixes_syntax_errors_with_where():
    with pytest.raises(ExpressionError, match=r"^here: invalid CEL expression"):
        check("event.data.x ==", {"event"}, where="here")
