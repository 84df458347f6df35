"""Every option the SDK accepts is either enforced (a named test proves it) or refused.

Nothing is silently ignored: an option the gateway does not enforce yet is in
``protocol.manifest.UNENFORCED`` and refused when a function is declared (here) and when its app
registers (tests/integration/test_registration.py). When flow control (issue 9) or cron
(issue 10) lands, move the option from UNENFORCED to ENFORCED below with the test that proves it.
"""

from __future__ import annotations

import importlib
import inspect
from datetime import timedelta
from typing import Any

import pytest

from protocol.errors import InvalidInput
from protocol.manifest import (
    UNENFORCED,
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
    check_event_pattern,
    check_function,
)
from worker import App

_FLOW = "tests/integration/test_flow_throttle.py::"
_CONC = "tests/integration/test_flow_concurrency.py::"
_WINDOWS = "tests/integration/test_flow_windows.py::"

#: Option (or option field, or trigger type) -> the test that shows the gateway honours it.
ENFORCED: dict[str, str] = {
    "id": "tests/unit/test_worker_app.py::test_decorator_with_options",
    "name": "tests/unit/test_worker_app.py::test_on_failure_registers_a_failure_function",
    "trigger": "tests/integration/test_step_api.py::test_sleep_suspends_then_resumes",
    "triggers": "tests/unit/test_triggers.py::test_matched_once_with_two_matching_triggers",
    "TriggerEvent.event": "tests/unit/test_triggers.py::test_prefix_star",
    "TriggerEvent.if_": "tests/unit/test_triggers.py::test_if_filter",
    "retries": "tests/unit/test_runner.py::test_failing_step_at_its_last_attempt_raises_step_error",
    "cancel_on": "tests/integration/test_step_api.py::test_cancel_by_api_and_by_event",
    "Cancel.event": "tests/integration/test_step_api.py::test_cancel_by_api_and_by_event",
    "Cancel.if_": "tests/integration/test_step_api.py::test_cancel_by_api_and_by_event",
    "Cancel.timeout":
        "tests/integration/test_registration.py::test_cancel_on_timeout_ends_the_cancel_window",
    "timeouts": "tests/integration/test_step_api.py::test_timeouts_finish_cancels",
    "Timeouts.start":
        "tests/integration/test_engine_steps.py::test_timeouts_start_cancels_a_run_nobody_took",
    "Timeouts.finish": "tests/integration/test_step_api.py::test_timeouts_finish_cancels",
    "on_failure": "tests/integration/test_step_api.py::test_on_failure_runs_after_last_retry",
    "TriggerCron": "tests/integration/test_cron.py::test_each_tick_starts_exactly_one_run",
    "TriggerCron.cron": "tests/unit/test_cron.py::test_next_ticks_in_utc",
    "TriggerCron.tz": "tests/unit/test_cron.py::test_a_time_zone_moves_the_ticks",
    "idempotency":
        "tests/integration/test_flow_admission.py::test_idempotency_one_run_per_key_per_24_hours",
    "rate_limit": "tests/integration/test_flow_admission.py::"
                  "test_rate_limit_skips_the_excess_and_the_next_period_admits",
    "RateLimit.limit": "tests/integration/test_flow_admission.py::"
                       "test_rate_limit_skips_the_excess_and_the_next_period_admits",
    "RateLimit.period": "tests/integration/test_flow_admission.py::"
                        "test_rate_limit_skips_the_excess_and_the_next_period_admits",
    "RateLimit.key": "tests/integration/test_flow_admission.py::"
                     "test_rate_limit_skips_the_excess_and_the_next_period_admits",
    "singleton": "tests/integration/test_flow_admission.py::"
                 "test_singleton_skip_while_the_key_has_a_live_run",
    "Singleton.key": "tests/integration/test_flow_admission.py::"
                     "test_singleton_skip_while_the_key_has_a_live_run",
    "Singleton.mode": "tests/integration/test_flow_admission.py::"
                      "test_singleton_cancel_cancels_the_live_run_and_revokes_its_lease",
    "throttle": _FLOW + "test_throttle_spreads_starts_per_gcra",
    "Throttle.limit": _FLOW + "test_throttle_spreads_starts_per_gcra",
    "Throttle.period": _FLOW + "test_throttle_spreads_starts_per_gcra",
    "Throttle.burst": _FLOW + "test_throttle_burst_starts_at_once_then_at_the_rate",
    "Throttle.key": _FLOW + "test_throttle_keys_are_independent_and_excess_waits_in_order",
    "priority": _FLOW + "test_priority_reorders_waiting_runs_and_never_preempts",
    "Priority.run": _FLOW + "test_priority_is_clamped_and_a_failing_expression_gives_zero",
    "concurrency": _CONC + "test_a_limit_of_one_serialises_runs",
    "Concurrency.limit": _CONC + "test_two_limits_both_hold",
    "Concurrency.key": _CONC + "test_each_key_has_its_own_limit",
    "Concurrency.scope": _CONC + "test_app_scope_shares_one_limit_between_functions",
    "Concurrency.max_queued": _CONC + "test_max_queued_skips_what_a_full_backlog_would_queue",
    "debounce": _WINDOWS + "test_debounce_starts_after_the_quiet_period_with_the_last_event",
    "Debounce.period": _WINDOWS + "test_debounce_starts_after_the_quiet_period_with_the_last_event",
    "Debounce.key": _WINDOWS + "test_debounce_starts_after_the_quiet_period_with_the_last_event",
    "Debounce.timeout": _WINDOWS + "test_debounce_reset_at_the_timeout_then_a_new_window",
    "Debounce.collect":
        _WINDOWS + "test_debounce_collect_gives_every_event_and_a_full_window_starts_at_once",
    "batch": _WINDOWS + "test_batch_starts_full_batches_at_once_in_arrival_order",
    "Batch.max_size": _WINDOWS + "test_batch_starts_full_batches_at_once_in_arrival_order",
    "Batch.timeout": _WINDOWS + "test_batch_cut_by_timeout_and_keys_are_independent",
    "Batch.key": _WINDOWS + "test_batch_cut_by_timeout_and_keys_are_independent",
    "Batch.if_": _WINDOWS + "test_batch_if_false_gets_a_run_of_its_own_at_once",
}

#: Every option is enforced today; the refusal machinery stays for the next one that lands
#: before its enforcement. These tests stand one in: "batch", as if it were not enforced.
STAND_IN = "batch"
STAND_IN_SETTING: dict[str, Any] = {"batch": Batch(100, "2s")}


@pytest.fixture
def unenforced(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(UNENFORCED, STAND_IN, "flow control, issue 9")
    return STAND_IN

#: Fields of the option classes of enforced options (those of unenforced ones go with them).
OPTION_CLASSES = (TriggerEvent, TriggerCron, Cancel, Timeouts, RateLimit, Singleton, Throttle,
                  Priority, Concurrency, Debounce, Batch)


def _accepted() -> set[str]:
    params = set(inspect.signature(App.function).parameters) - {"self", "handler"}
    fields = {f"{cls.__name__}.{name}" for cls in OPTION_CLASSES
              for name in cls.__dataclass_fields__}  # type: ignore[attr-defined]
    return params | fields | {"TriggerCron"}


def test_every_accepted_option_is_enforced_or_refused():
    accepted = _accepted()
    assert accepted - set(ENFORCED) - set(UNENFORCED) == set(), \
        "an option is neither enforced (ENFORCED, with its test) nor refused (UNENFORCED)"
    assert set(ENFORCED) & set(UNENFORCED) == set()


@pytest.mark.parametrize("option", sorted(ENFORCED))
def test_each_enforced_option_names_a_test_that_exists(option):
    path, _, name = ENFORCED[option].partition("::")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert callable(getattr(module, name, None)), f"{option}: no test {ENFORCED[option]}"


def test_an_unenforced_option_is_refused_at_declaration_with_a_message(unenforced):
    option = unenforced
    app = App("shop")
    with pytest.raises(InvalidInput) as info:
        @app.function(id="f", trigger=TriggerEvent("shop/x"), **STAND_IN_SETTING)
        async def f(ctx):
            pass

    message = str(info.value)
    assert message.startswith("function 'shop/f': not enforced by this version of Tether yet")
    assert option in message and UNENFORCED[option] in message
    assert "refused rather than ignored" in message
    assert app.functions == {}


def test_all_unenforced_options_are_named_in_one_message(unenforced, monkeypatch):
    monkeypatch.setitem(UNENFORCED, "concurrency", "flow control, issue 9")
    config = FunctionConfig(id="f", concurrency=[Concurrency(2)], batch=Batch(10, 1.0),
                            triggers=[TriggerCron("* * * * *")])
    with pytest.raises(InvalidInput) as info:
        check_function("shop/f", config)
    message = str(info.value)
    for name in sorted(UNENFORCED):
        assert f"{name} ({UNENFORCED[name]})" in message


def test_enforced_options_are_accepted():
    app = App("shop")

    @app.function(id="f", name="F", trigger=TriggerEvent("shop/x", if_="event.data.ok"),
                  triggers=[TriggerEvent("shop/y.*")], retries=2,
                  cancel_on=[Cancel("shop/stop", if_="async.data.id == event.data.id",
                                    timeout="1d")],
                  timeouts=Timeouts(start="1m", finish="1h"), on_failure=lambda ctx: None,
                  throttle=Throttle(3, "1m", burst=2, key="event.data.tenant"),
                  priority=Priority("event.data.vip ? 60 : 0"))
    async def f(ctx):
        pass

    assert set(app.functions) == {"f", "f-failure"}


def test_a_failure_handler_is_declared_by_tether_itself():
    # Its trigger is a reserved system event, named exactly: registration accepts it.
    app = App("shop")
    app.function(id="f", trigger=TriggerEvent("shop/x"), on_failure=lambda ctx: None)(
        lambda ctx: None)
    check_function("shop/f-failure", app.functions["f-failure"].config)


# --- event-name wildcards (Inngest's rule) ----------------------------------------------


@pytest.mark.parametrize("pattern", ["shop/*", "shop/order.*", "a/b/c.*", "tether/*",
                                     "tether/function.*", "shop/order.paid", "plain"])
def test_a_wildcard_after_a_slash_or_a_dot_is_accepted(pattern):
    check_event_pattern(pattern)
    App("shop").function(id="f", trigger=TriggerEvent(pattern))(lambda ctx: None)


@pytest.mark.parametrize("pattern", ["shop*", "shop/order*", "s*", "shop/-*", "a/b_*"])
def test_a_wildcard_after_anything_else_is_refused(pattern):
    with pytest.raises(InvalidInput) as info:
        App("shop").function(id="f", trigger=TriggerEvent(pattern))(lambda ctx: None)
    assert str(info.value) == (
        f"function 'shop/f': trigger {pattern!r}: '*' may only be the last character, right "
        "after '/' or '.', as in 'shop/*' or 'shop/order.*'")


def test_a_lone_wildcard_is_refused():
    with pytest.raises(InvalidInput, match=r"'\*' alone would match every event"):
        App("shop").function(id="f", trigger=TriggerEvent("*"))(lambda ctx: None)


def test_the_rule_applies_to_every_trigger_of_a_function():
    with pytest.raises(InvalidInput, match=r"trigger 'b\*'"):
        App("shop").function(id="f", triggers=[TriggerEvent("a/*"), TriggerEvent("b*")])(
            lambda ctx: None)


# --- messages that name the option and the function ---------------------------------------


def test_a_bad_duration_in_an_option_names_the_option_and_how_to_write_one():
    with pytest.raises(InvalidInput) as info:
        Timeouts(start="soon")
    assert str(info.value) == (
        "Timeouts.start: 'soon' is not a duration; write e.g. '500ms', '30s', '5m', '2h', "
        "'7d' or '1h30m', or pass seconds as a number")


def test_positional_arguments_are_named_too():
    with pytest.raises(InvalidInput, match=r"^Cancel\.timeout: -5 is negative$"):
        Cancel("a/b", None, -5)


def test_a_bad_function_option_names_the_function_and_the_option():
    with pytest.raises(InvalidInput) as info:
        App("shop").function(id="f", retries=99)(lambda ctx: None)
    assert str(info.value) == (
        "function 'f': retries: Input should be less than or equal to 20")


def test_a_bad_option_type_names_the_function():
    with pytest.raises(InvalidInput, match=r"^function 'f': timeouts"):
        App("shop").function(id="f", timeouts="1h")(lambda ctx: None)  # type: ignore[arg-type]


def test_durations_still_normalise():
    assert Timeouts(start=timedelta(minutes=1), finish="1h") == Timeouts(60.0, 3600.0)
    assert Concurrency(2).limit == 2


# --- debounce and batch: bounds and combinations (README, "Debounce", "Batch") -------------


def test_window_options_are_accepted_with_what_combines_with_them():
    app = App("shop")
    app.function(id="d", trigger=TriggerEvent("shop/x"),
                 debounce=Debounce("5s", key="event.data.user", timeout="1m", collect=True),
                 cancel_on=[Cancel("shop/stop")], timeouts=Timeouts(start="1h"), retries=1)(
        lambda ctx: None)
    app.function(id="b", trigger=TriggerEvent("shop/x"),
                 batch=Batch(10, "5s", key="event.data.tenant", if_="event.data.small"),
                 timeouts=Timeouts(finish="1h"))(lambda ctx: None)
    assert set(app.functions) == {"d", "b"}


@pytest.mark.parametrize(("options", "pair"), [
    ({"debounce": Debounce("5s"), "batch": Batch(2, "5s")}, "debounce with batch"),
    ({"batch": Batch(2, "5s"), "cancel_on": [Cancel("shop/stop")]}, "batch with cancel_on"),
    ({"batch": Batch(2, "5s"), "priority": Priority("1")}, "batch with priority"),
    ({"batch": Batch(2, "5s"), "rate_limit": RateLimit(1, "1m")}, "batch with rate_limit"),
    ({"batch": Batch(2, "5s"), "singleton": Singleton()}, "batch with singleton"),
    ({"debounce": Debounce("5s"), "throttle": Throttle(1, "1m")}, "debounce with throttle"),
    ({"debounce": Debounce("5s"), "idempotency": "event.data.id"},
     "debounce with idempotency"),
])
def test_combinations_without_one_meaning_are_refused_with_why(options, pair):
    with pytest.raises(InvalidInput) as info:
        App("shop").function(id="f", trigger=TriggerEvent("shop/x"), **options)(
            lambda ctx: None)
    message = str(info.value)
    assert message.startswith("function 'shop/f': options that cannot be combined: ")
    assert pair + ": " in message and message.endswith("Remove one option of each pair")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Debounce(0), "Debounce.period: 0 s is out of range"),
    (lambda: Debounce("1s", timeout="8d"), "Debounce.timeout: 691200 s is out of range"),
    (lambda: Batch(2, "0s"), "Batch.timeout: 0 s is out of range"),
    (lambda: Batch(101, "1s"), "Batch.max_size: Input should be less than or equal to 100"),
])
def test_window_bounds_are_checked_where_the_option_is_written(make, message):
    with pytest.raises(InvalidInput, match="^" + message):
        make()


def test_a_batch_if_that_does_not_compile_names_the_function_and_the_option():
    from protocol.errors import ExpressionError
    with pytest.raises(ExpressionError, match=r"function 'shop/f': batch.if_"):
        App("shop").function(id="f", trigger=TriggerEvent("shop/x"),
                             batch=Batch(2, "1s", if_="event.data.(("))(lambda ctx: None)
