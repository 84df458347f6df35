"""gateway.scheduler.triggers: which functions an event starts."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.scheduler.triggers import TriggerIndex
from protocol.manifest import FunctionConfig, TriggerCron, TriggerEvent


def config(*triggers: TriggerEvent | TriggerCron) -> FunctionConfig:
    return FunctionConfig(id="f", triggers=list(triggers))


def event(name: str, **data: Any) -> dict[str, Any]:
    return {"name": name, "data": data, "id": "e1", "ts": 0, "user": None}


@pytest.fixture
def index() -> TriggerIndex:
    return TriggerIndex()


def test_empty_index_matches_nothing(index):
    assert index.match("shop/order.paid", event("shop/order.paid")) == []


def test_exact_name(index):
    index.set_function("shop/paid", config(TriggerEvent("shop/order.paid")))
    index.set_function("shop/other", config(TriggerEvent("shop/order.refunded")))
    assert index.match("shop/order.paid", event("shop/order.paid")) == ["shop/paid"]
    assert index.match("shop/order.pai", event("shop/order.pai")) == []
    assert index.match("shop/order.paid.x", event("shop/order.paid.x")) == []


def test_names_are_case_sensitive(index):
    index.set_function("shop/paid", config(TriggerEvent("shop/order.paid")))
    assert index.match("Shop/Order.Paid", event("Shop/Order.Paid")) == []


def test_prefix_star(index):
    index.set_function("shop/all", config(TriggerEvent("shop/*")))
    assert index.match("shop/order.paid", event("shop/order.paid")) == ["shop/all"]
    assert index.match("shop/", event("shop/")) == ["shop/all"]
    assert index.match("shopping/x", event("shopping/x")) == []
    assert index.match("other/shop/x", event("other/shop/x")) == []


def test_lone_star_stored_before_the_wildcard_rule_matches_every_user_event(index):
    # Registration refuses "*" now; a function stored earlier still loads and keeps working.
    index.set_function("audit/all", config(TriggerEvent("*")))
    assert index.match("anything", event("anything")) == ["audit/all"]


@pytest.mark.parametrize("pattern", ["*", "t*", "tether*", "Tether*"])
@pytest.mark.parametrize("name", ["tether/function.finished", "tether/function.failed",
                                  "tether/function.invoked", "Tether/function.finished"])
def test_a_wildcard_never_matches_system_events_unless_it_names_the_prefix(index, pattern, name):
    index.set_function("audit/all", config(TriggerEvent(pattern)))
    assert index.match(name, event(name)) == []
    assert not index.listens(name)


@pytest.mark.parametrize("pattern", ["tether/*", "tether/function.*"])
def test_a_wildcard_that_names_the_reserved_prefix_matches_system_events(index, pattern):
    index.set_function("ops/watch", config(TriggerEvent(pattern)))
    name = "tether/function.failed"
    assert index.match(name, event(name)) == ["ops/watch"]
    assert index.listens(name)


def test_system_events_still_match_exact_triggers(index):
    index.set_function("ops/failed", config(TriggerEvent("tether/function.failed")))
    index.set_function("audit/all", config(TriggerEvent("*")))
    name = "tether/function.failed"
    assert index.match(name, event(name)) == ["ops/failed"]


def test_several_functions_on_one_event_in_a_stable_order(index):
    index.set_function("a/one", config(TriggerEvent("x")))
    index.set_function("a/two", config(TriggerEvent("x")))
    index.set_function("a/star", config(TriggerEvent("*")))
    first = index.match("x", event("x"))
    assert sorted(first) == ["a/one", "a/star", "a/two"]
    assert index.match("x", event("x")) == first


def test_if_filter(index):
    index.set_function("shop/big", config(TriggerEvent("shop/order.paid",
                                                       if_="event.data.amount > 100")))
    assert index.match("shop/order.paid", event("shop/order.paid", amount=500)) == ["shop/big"]
    assert index.match("shop/order.paid", event("shop/order.paid", amount=5)) == []
    # A field the event lacks: the filter does not hold, and nothing raises.
    assert index.match("shop/order.paid", event("shop/order.paid")) == []


def test_if_filter_on_a_prefix_trigger(index):
    index.set_function("shop/vip", config(TriggerEvent("shop/*", if_="event.data.vip == true")))
    assert index.match("shop/a", event("shop/a", vip=True)) == ["shop/vip"]
    assert index.match("shop/a", event("shop/a", vip=False)) == []


def test_matched_once_with_two_matching_triggers(index):
    index.set_function("shop/f", config(TriggerEvent("shop/order.paid"), TriggerEvent("shop/*"),
                                        TriggerEvent("shop/order.paid", if_="true")))
    assert index.match("shop/order.paid", event("shop/order.paid")) == ["shop/f"]


def test_second_trigger_matches_when_the_first_filter_does_not(index):
    index.set_function("shop/f", config(
        TriggerEvent("shop/order.paid", if_="event.data.amount > 100"),
        TriggerEvent("shop/*", if_="event.data.amount < 10"),
    ))
    assert index.match("shop/order.paid", event("shop/order.paid", amount=5)) == ["shop/f"]
    assert index.match("shop/order.paid", event("shop/order.paid", amount=50)) == []


def test_cron_triggers_are_not_event_triggers(index):
    index.set_function("shop/cron", config(TriggerCron("* * * * *")))
    assert index.match("* * * * *", event("* * * * *")) == []


def test_removing_a_function(index):
    index.set_function("shop/a", config(TriggerEvent("x"), TriggerEvent("y*")))
    index.set_function("shop/b", config(TriggerEvent("x")))
    index.set_function("shop/a", None)
    assert index.match("x", event("x")) == ["shop/b"]
    assert index.match("yes", event("yes")) == []
    index.set_function("shop/never-added", None)  # removing an unknown function is harmless
    assert index.match("x", event("x")) == ["shop/b"]


def test_replacing_a_functions_triggers(index):
    index.set_function("shop/a", config(TriggerEvent("old")))
    index.set_function("shop/a", config(TriggerEvent("new")))
    assert index.match("old", event("old")) == []
    assert index.match("new", event("new")) == ["shop/a"]
