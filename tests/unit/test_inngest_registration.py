"""The SDKs' function configs as Tether options, and what is refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.inngest.registration import app_manifest, function_config
from protocol.errors import InvalidInput
from protocol.manifest import (
    Batch,
    Cancel,
    Concurrency,
    Priority,
    RateLimit,
    Throttle,
    TriggerCron,
    TriggerEvent,
)


def config(**options: Any) -> dict[str, Any]:
    return {"id": "shop-sync", "name": "sync", "triggers": [{"event": "shop/sync"}],
            "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 2},
                               "runtime": {"type": "ws", "url": "ws://x"}}}, **options}


def test_the_python_sdk_config_maps_to_tether_options() -> None:
    fn = function_config("shop", config(
        triggers=[{"event": "shop/sync", "expression": "event.data.x > 1"},
                  {"cron": "TZ=Europe/Paris 0 9 * * 1"}],
        throttle={"limit": 3, "period": "1m", "burst": 1},
        rate_limit={"limit": 5, "period": "1h", "key": "event.data.user"},
        priority={"run": "event.data.vip ? 60 : 0"}, idempotency="event.data.id",
        cancel=[{"event": "shop/cancel", "if": "async.data.id == event.data.id",
                 "timeout": "1d"}]))
    assert fn.slug == "shop-sync" and fn.short_id == "sync"
    c = fn.config
    assert c.retries == 2
    assert c.triggers == [TriggerEvent("shop/sync", if_="event.data.x > 1"),
                          TriggerCron("TZ=Europe/Paris 0 9 * * 1")]
    assert c.throttle == Throttle(3, 60.0)
    assert c.rate_limit == RateLimit(5, 3600.0, key="event.data.user")
    assert c.priority == Priority("event.data.vip ? 60 : 0")
    assert c.idempotency == "event.data.id"
    assert c.cancel_on == [Cancel("shop/cancel", if_="async.data.id == event.data.id",
                                  timeout=86400.0)]


def test_the_typescript_spelling_is_read_too() -> None:
    fn = function_config("shop", config(rateLimit={"limit": 1, "period": "10s"}))
    assert fn.config.rate_limit == RateLimit(1, 10.0)


def test_flow_control_maps_to_tether_s_own() -> None:
    fn = function_config("shop", config(
        concurrency=[{"limit": 2, "key": "event.data.user"}, {"limit": 5, "scope": "app"}],
        batchEvents={"maxSize": 5, "timeout": "1s", "key": "event.data.user",
                     "if": "event.data.ok"}))
    assert fn.config.concurrency == [Concurrency(2, key="event.data.user"),
                                     Concurrency(5, scope="app")]
    assert fn.config.batch == Batch(5, "1s", key="event.data.user", if_="event.data.ok")


def test_without_retries_the_default_is_inngest_s() -> None:
    raw = config()
    raw["steps"]["step"].pop("retries")
    assert function_config("shop", raw).config.retries == 3


@pytest.mark.parametrize(("options", "named"), [
    ({"concurrency": [{"limit": 1, "scope": "account"}]}, "concurrency scope 'account'"),
    ({"triggers": [{"cron": "* * * * *", "jitter": "10s"}]}, "cron jitter"),
    ({"optimizeParallelism": True}, "'optimizeParallelism'"),
])
def test_an_option_without_a_tether_equivalent_is_refused_by_name(
        options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInput, match="no equivalent in Tether") as refused:
        function_config("shop", config(**options))
    assert named in str(refused.value)


def test_malformed_configs_say_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match="not JSON"):
        app_manifest("shop", "", b"{nope")
    with pytest.raises(InvalidInput, match="list of objects"):
        app_manifest("shop", "", b'{"id": 1}')
    with pytest.raises(InvalidInput, match="no 'id'"):
        app_manifest("shop", "", json.dumps([{"name": "x"}]).encode())
    with pytest.raises(InvalidInput, match="shop-sync"):
        function_config("shop", config(throttle={"limit": 0, "period": "1m"}))


def test_an_app_lists_every_function_by_slug() -> None:
    manifest, by_slug = app_manifest("shop", "v2", json.dumps([
        config(), {**config(), "id": "shop-other"}]).encode())
    assert manifest.version == "v2"
    assert [f.id for f in manifest.functions] == ["sync", "other"]
    assert sorted(by_slug) == ["shop-other", "shop-sync"]


def test_an_on_failure_handler_listens_to_tether_s_failure_event() -> None:
    fn = function_config("shop", config(id="shop-sync-failure", triggers=[{
        "event": "inngest/function.failed",
        "expression": "event.data.function_id == 'shop-sync'"}]))
    assert fn.short_id == "sync-failure"
    assert fn.config.triggers == [TriggerEvent(
        "tether/function.failed", if_="event.data.function_id == 'shop/sync'")]
    assert fn.config.on_failure_of == "shop/sync"
