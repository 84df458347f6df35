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


# --- size limits: the binding recurses natively, so a deep expression would kill the process


from protocol.expressions import MAX_LENGTH, MAX_NESTING, MAX_OPERATORS, check_size  # noqa: E402

HOSTILE = {
    "member chain": "event" + ".a" * 20_000,
    "plus chain": "+".join(["1"] * 20_000),
    "index chain": "event" + "[0]" * 10_000,
    "or chain": " || ".join(["event.a == 1"] * 5_000),
    "parentheses": "(" * 2_000 + "1" + ")" * 2_000,
    "lists": "[" * 2_000 + "]" * 2_000,
    "calls": "size(" * 2_000 + "'a'" + ")" * 2_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_shapes_are_refused_before_compiling(name):
    with pytest.raises(ExpressionError, match=r"CEL expression too (long|complex)|nested too"):
        compile_expression(HOSTILE[name])


def test_length_limit_names_the_size():
    source = "event.data.x == '" + "a" * MAX_LENGTH + "'"
    with pytest.raises(ExpressionError, match=rf"{len(source)} characters > {MAX_LENGTH} limit"):
        check_size(source)


def test_operator_limit_counts_two_character_operators_once():
    within = " || ".join(["event.a == 1"] * (MAX_OPERATORS // 4))  # '.', '==', '||' per term
    check_size(within)
    with pytest.raises(ExpressionError, match=f"> {MAX_OPERATORS} limit"):
        check_size("event" + ".a" * (MAX_OPERATORS + 1))


def test_nesting_limit():
    check_size("(" * MAX_NESTING + "1" + ")" * MAX_NESTING)
    with pytest.raises(ExpressionError, match=f"{MAX_NESTING + 1} levels of brackets"):
        check_size("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))


def test_string_literals_count_only_towards_length():
    operators = "." * 3000 + "(" * 100
    for literal in (f"'{operators}'", f'"{operators}"', f"'''{operators}'''",
                    f"r'\\' + {operators[:10]}'", f"'\\'{operators}'"):
        check_size(f"event.data.x == {literal}")
    assert evaluate(f"'{operators}'.size()", {}) == len(operators)


def test_raw_string_backslash_does_not_hide_what_follows():
    with pytest.raises(ExpressionError, match="too complex"):
        check_size("r'\\' + event" + ".a" * MAX_OPERATORS)


def test_longest_expressions_within_limits_compile_in_a_small_thread_stack():
    """The limits hold with margin: the deepest shapes allowed run on a 256 KiB stack."""
    import subprocess
    import sys

    script = f"""
import threading
from protocol.expressions import compile_expression
k, d = {MAX_OPERATORS}, {MAX_NESTING}
shapes = ["event" + ".a" * k, "+".join(["1"] * (k + 1)), "event" + "[0]" * (k // 2),
          "+".join(["'a'"] * (k + 1)), "size(" * d + "'a'" + ")" * d, "[" * d + "]" * d,
          "event" + ".a[0]" * (k // 3)]
def run():
    for source in shapes:
        program = compile_expression(source)
        try:
            program.execute({{"event": {{"a": 1}}}})
        except Exception:
            pass
    print("survived")
threading.stack_size(256 * 1024)
thread = threading.Thread(target=run)
thread.start()
thread.join()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "survived"
