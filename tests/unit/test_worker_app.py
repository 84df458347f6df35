"""worker.app: declaring functions, validated at import time; the manifest; Event."""

from __future__ import annotations

import json

import pytest

import worker
from protocol.errors import ExpressionError, InvalidInput
from protocol.manifest import AppManifest, Cancel, Concurrency, Throttle, TriggerCron, TriggerEvent
from worker.app import FUNCTION_FAILED, App, Event, Function


@pytest.fixture
def app() -> App:
    return App("shop", version="v3")


@pytest.fixture
def all_enforced(monkeypatch):
    """As if flow control and cron had landed: these tests cover how options are declared."""
    monkeypatch.setattr("protocol.manifest.UNENFORCED", {})


def test_public_names_are_exported():
    assert worker.App is App and worker.Event is Event
    assert worker.TriggerEvent is TriggerEvent and worker.Throttle is Throttle


def test_bare_decorator(app):
    @app.function
    async def sync_systems(ctx):
        return 1

    assert isinstance(sync_systems, Function)
    assert sync_systems.config.id == "sync-systems"
    assert sync_systems.id == "shop/sync-systems"
    assert app.functions == {"sync-systems": sync_systems}
    assert sync_systems.is_async and sync_systems.config.kind == "async"


def test_decorator_with_options(app):
    @app.function(id="charge", trigger=TriggerEvent("shop/order.paid"), retries=2)
    def charge_card(ctx):
        return "charged"

    assert charge_card.id == "shop/charge"
    assert charge_card.retries == 2
    assert not charge_card.is_async and charge_card.config.kind == "sync"
    assert charge_card.config.triggers == [TriggerEvent("shop/order.paid")]


def test_empty_parentheses(app):
    @app.function()
    async def a_b_c(ctx):
        return None

    assert a_b_c.config.id == "a-b-c"


def test_decorated_function_is_still_callable(app):
    @app.function
    def double(x):
        return x * 2

    assert double(21) == 42


def test_trigger_comes_before_triggers(app, all_enforced):
    @app.function(trigger=TriggerEvent("first"), triggers=[TriggerEvent("second"),
                                                           TriggerCron("0 * * * *")])
    async def f(ctx):
        pass

    assert [getattr(t, "event", None) or t.cron for t in f.config.triggers] == [
        "first", "second", "0 * * * *"]


def test_concurrency_shorthands(app, all_enforced):
    @app.function(concurrency=3)
    async def one(ctx):
        pass

    @app.function(concurrency=Concurrency(2, key="event.data.k"))
    async def two(ctx):
        pass

    @app.function(concurrency=[Concurrency(1), Concurrency(9, scope="app")])
    async def three(ctx):
        pass

    assert one.config.concurrency == [Concurrency(3)]
    assert two.config.concurrency == [Concurrency(2, key="event.data.k")]
    assert len(three.config.concurrency) == 2


def test_duplicate_id_is_refused(app):
    @app.function(id="f")
    async def first(ctx):
        pass

    with pytest.raises(InvalidInput, match="function id 'f' is declared twice in app 'shop'"):
        @app.function(id="f")
        async def second(ctx):
            pass

    assert app.functions["f"] is first


def test_duplicate_by_name(app):
    @app.function
    async def same_name(ctx):
        pass

    with pytest.raises(InvalidInput, match="'same-name'"):
        app.function(id="same-name")(lambda ctx: None)


def test_decorating_twice_is_refused(app):
    @app.function
    async def f(ctx):
        pass

    with pytest.raises(InvalidInput, match="already a Tether function"):
        app.function(id="g")(f)


async def _my_fn(ctx):
    return None


_my_fn.__name__ = "my_fn"  # declared as "my-fn"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retries": 21}, "retries"),
        ({"retries": -1}, "retries"),
        ({"id": "bad id"}, "id"),
        ({"trigger": "shop/order.paid"}, "triggers"),  # a string, not a TriggerEvent
        ({"triggers": [TriggerEvent(f"e{i}") for i in range(11)]}, "at most 10"),
        ({"idempotency": 3}, "idempotency"),
    ],
)
def test_bad_option_names_the_function(app, options, fragment):
    fn_id = options.get("id", "my-fn")
    with pytest.raises(InvalidInput) as info:
        app.function(**options)(_my_fn)
    message = str(info.value)
    assert message.startswith(f"function {fn_id!r}: ")
    assert fragment in message
    assert app.functions == {}


def test_bad_cel_fails_at_declaration(app):
    with pytest.raises(ExpressionError) as info:
        @app.function(trigger=TriggerEvent("shop/order.paid", if_="event.data.amount >"))
        async def big_orders(ctx):
            pass
    assert str(info.value).startswith("function 'shop/big-orders': trigger 'shop/order.paid' if_:")
    assert app.functions == {}


def test_oversize_cel_fails_at_declaration_before_compiling(app):
    """A chain long enough to overflow the binding's stack is refused by size, not compiled."""
    with pytest.raises(ExpressionError, match="too complex"):
        @app.function(trigger=TriggerEvent("shop/order.paid", if_="event" + ".a" * 1_000))
        async def deep(ctx):
            pass
    with pytest.raises(ExpressionError, match="too long"):
        @app.function(trigger=TriggerEvent("shop/order.paid"),
                      cancel_on=[Cancel("shop/x", if_="event.data.id == '" + "x" * 5000 + "'")])
        async def long(ctx):
            pass
    assert app.functions == {}


def test_unknown_variable_fails_at_declaration(app):
    with pytest.raises(ExpressionError, match=r"'shop/f': throttle\.key: .*unknown variable"):
        @app.function(id="f", throttle=Throttle(1, "1s", key="evt.data.customer"))
        async def f(ctx):
            pass


def test_a_refused_declaration_leaves_the_id_free(app, all_enforced):
    with pytest.raises(ExpressionError):
        app.function(id="f", idempotency="event.")(_my_fn)

    @app.function(id="f", idempotency="event.data.id")
    async def f(ctx):
        pass

    assert app.functions["f"] is f


def test_on_failure_registers_a_failure_function(app):
    async def cleanup(ctx):
        return "cleaned"

    @app.function(id="charge", name="Charge", on_failure=cleanup)
    async def charge(ctx):
        pass

    assert set(app.functions) == {"charge", "charge-failure"}
    failure = app.functions["charge-failure"]
    assert failure.handler is cleanup
    assert failure.id == "shop/charge-failure"
    assert failure.config.on_failure_of == "shop/charge"
    assert failure.config.retries == 0
    assert failure.config.name == "Charge (on failure)"
    assert failure.config.kind == "async"
    [trigger] = failure.config.triggers
    assert isinstance(trigger, TriggerEvent)
    assert trigger.event == FUNCTION_FAILED == "tether/function.failed"
    assert trigger.if_ == "event.data.function_id == 'shop/charge'"


def test_on_failure_trigger_only_matches_its_function(app):
    from protocol.expressions import matches

    @app.function(id="charge", on_failure=lambda ctx: None)
    async def charge(ctx):
        pass

    [trigger] = app.functions["charge-failure"].config.triggers
    assert matches(trigger.if_, {"event": {"data": {"function_id": "shop/charge"}}})
    assert not matches(trigger.if_, {"event": {"data": {"function_id": "shop/other"}}})
    assert app.functions["charge-failure"].config.kind == "sync"


def test_manifest(app, all_enforced):
    @app.function(id="a", trigger=TriggerEvent("x"), on_failure=lambda ctx: None)
    async def a(ctx):
        pass

    @app.function(id="b", triggers=[TriggerCron("0 9 * * MON", tz="Europe/Paris")], retries=0)
    def b(ctx):
        pass

    manifest = app.manifest()
    assert isinstance(manifest, AppManifest)
    assert (manifest.id, manifest.version) == ("shop", "v3")
    assert [f.id for f in manifest.functions] == ["a", "a-failure", "b"]
    assert manifest.functions[0] == a.config
    assert manifest.functions[2].retries == 0
    assert manifest.functions[2].kind == "sync"


def test_empty_app_manifest():
    assert App("empty").manifest() == AppManifest(id="empty", version="", functions=[])


@pytest.mark.parametrize("app_id", ["", "bad id", "a/b", "-x"])
def test_bad_app_id(app_id):
    with pytest.raises(ValueError):
        App(app_id)


# --- Event -----------------------------------------------------------------------------


def test_event_defaults():
    event = Event("shop/x")
    assert (event.data, event.id, event.ts, event.user) == ({}, None, None, None)
    assert Event("a").data is not Event("b").data


def test_event_to_json_omits_unset_fields():
    assert Event("shop/x").to_json() == {"name": "shop/x", "data": {}}
    full = Event("shop/x", {"a": 1}, id="e1", ts=5, user={"id": "u"})
    assert full.to_json() == {"name": "shop/x", "data": {"a": 1}, "id": "e1", "ts": 5,
                              "user": {"id": "u"}}


def test_event_from_json_bytes_and_dict():
    raw = {"name": "shop/x", "data": {"a": [1, 2]}, "id": "e1", "ts": 7, "user": {"id": "u"}}
    from_bytes = Event.from_json(json.dumps(raw).encode())
    assert from_bytes == Event.from_json(raw)
    assert from_bytes == Event("shop/x", {"a": [1, 2]}, id="e1", ts=7, user={"id": "u"})


def test_event_from_json_fills_defaults():
    assert Event.from_json({"name": "n", "data": None}) == Event("n")
    assert Event.from_json(b'{"name": "n"}') == Event("n")


def test_event_json_round_trip():
    event = Event("shop/x", {"nested": {"k": [1, "two", None]}}, id="e", ts=1, user={"u": 1})
    assert Event.from_json(json.dumps(event.to_json()).encode()) == event
