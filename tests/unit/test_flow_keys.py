"""gateway.flow.keys: a CEL key for an event, as a hash or a typed failure; never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.keys import MAX_DISPLAY, MAX_KEY_LENGTH, Key, KeyFailure, canonical, key_for
from protocol.errors import ExpressionError
from protocol.expressions import evaluate

EVENT = {"name": "order", "data": {"tenant": "acme", "n": 3, "f": 3.0, "x": 2.5, "ok": True,
                                   "list": [1], "map": {"a": 1}, "none": None,
                                   "long": "x" * (MAX_KEY_LENGTH + 1), "wide": "y" * 500}}


def fail(expression: str) -> str:
    got = key_for(expression, EVENT, scope="fn:shop/f")
    assert isinstance(got, KeyFailure), got
    return got.reason


def test_no_expression_is_one_key_per_scope() -> None:
    a = key_for(None, EVENT, scope="fn:shop/f")
    b = key_for(None, {"name": "other", "data": {}}, scope="fn:shop/f")
    c = key_for(None, EVENT, scope="fn:shop/g")
    assert isinstance(a, Key) and a == b and isinstance(c, Key) and c.hash != a.hash


def test_string_number_and_bool_keys() -> None:
    acme = key_for("event.data.tenant", EVENT, scope="s")
    assert isinstance(acme, Key) and acme.display == "acme" and len(acme.hash) == 64
    three = key_for("event.data.n", EVENT, scope="s")
    assert three == key_for("event.data.f", EVENT, scope="s") == key_for("'3'", EVENT, scope="s")
    assert canonical(True) == "true" and canonical(2.5) == "2.5" and canonical(float("nan")) is None
    # Keys are scoped: the same value in two scopes is two keys.
    assert key_for("event.data.tenant", EVENT, scope="t") != acme


def test_missing_field_and_type_errors_are_reasons() -> None:
    assert "tenantt" in fail("event.data.tenantt")
    assert "TypeError" in fail("event.data.tenant + 1")
    assert "invalid CEL" in fail("event.data.(")
    assert "gave null" in fail("event.data.none")
    assert "gave list" in fail("event.data.list")
    assert "gave dict" in fail("event.data.map")


def test_keys_are_length_capped_and_hashed() -> None:
    reason = fail("event.data.long")
    assert f"{MAX_KEY_LENGTH + 1} characters" in reason and "limit" in reason
    wide = key_for("event.data.wide", EVENT, scope="s")
    assert isinstance(wide, Key) and len(wide.display) == MAX_DISPLAY and len(wide.hash) == 64


@pytest.mark.parametrize("expression", ["event.data.n / 0", "event['data']['map']['b']",
                                        "int(event.data.tenant)", "x" * 5000])
def test_hostile_expressions_never_raise(expression: str) -> None:
    assert isinstance(key_for(expression, EVENT, scope="s"), KeyFailure)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "tenant"]), inner, max_size=3),
    max_leaves=8)


@given(data=st.dictionaries(st.sampled_from(["a", "b", "tenant"]), _values, max_size=3),
       path=st.lists(st.sampled_from(["a", "b", "tenant"]), min_size=1, max_size=3))
def test_a_plain_path_reads_what_cel_reads(data, path) -> None:
    """The fast path for ``event.x.y`` gives the key (or the failure kind) CEL gives."""
    from gateway.flow.keys import _key_of

    expression = "event.data." + ".".join(path)
    event = {"name": "e", "data": data}
    fast = key_for(expression, event, scope="s")
    try:
        slow = _key_of(expression, evaluate(expression, {"event": event}), "s")
    except ExpressionError:
        assert isinstance(fast, KeyFailure)
        return
    if isinstance(slow, Key):
        assert fast == slow
    else:
        assert isinstance(fast, KeyFailure)
