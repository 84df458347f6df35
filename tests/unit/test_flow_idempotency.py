"""gateway.flow.idempotency: one run per key per 24 h, keys hashed per function."""

from __future__ import annotations

from gateway.flow.idempotency import WINDOW, decide, idempotency_key
from gateway.flow.keys import Key, KeyFailure


def test_one_run_per_key_per_24_hours() -> None:
    first = decide(None, 1000.0)
    assert first.start and first.held_until == 1000.0 + 24 * 3600
    assert WINDOW == 24 * 3600.0
    just_before = decide(first.held_until, 1000.0 + WINDOW - 0.001)
    assert not just_before.start and just_before.held_until == first.held_until
    after = decide(first.held_until, 1000.0 + WINDOW)
    assert after.start and after.held_until == 1000.0 + 2 * WINDOW


def test_refused_events_do_not_extend_the_hold() -> None:
    held = decide(None, 0.0).held_until
    for now in (1.0, 3600.0, WINDOW - 1):
        held = decide(held, now).held_until
    assert decide(held, WINDOW).start


def test_keys_are_stable_per_function_and_value() -> None:
    event = {"name": "order", "data": {"id": "o-1", "n": 7}}
    a = idempotency_key("event.data.id", event, "shop/charge")
    b = idempotency_key("event.data.id", dict(event), "shop/charge")
    other_fn = idempotency_key("event.data.id", event, "shop/refund")
    assert isinstance(a, Key) and isinstance(other_fn, Key)
    assert a == b and a.hash != other_fn.hash
    # A known digest: the hash is SHA-256, not Python's per-process hash().
    assert a.hash == "003de9fd51dcc0904b92acf33a81c18013bdc593b65f74a4c0b9629fa18a3ec7"
    assert a.display == "o-1"


def test_a_failing_key_is_a_reason_not_an_exception() -> None:
    got = idempotency_key("event.data.missing", {"name": "x", "data": {}}, "shop/charge")
    assert isinstance(got, KeyFailure) and "missing" in got.reason
