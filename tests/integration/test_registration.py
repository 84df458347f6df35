"""What the gateway refuses when an app registers, whatever SDK the worker runs, and what the
options it accepts do: a raw worker speaks the socket protocol by hand, so the SDK's own checks
are not in the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from protocol import messages as m
from protocol.durations import YEAR
from protocol.manifest import (
    UNENFORCED,
    AppManifest,
    Batch,
    Cancel,
    Debounce,
    FunctionConfig,
    TriggerCron,
    TriggerEvent,
)
from tests.integration.raw_worker import EVENT, FN_ID, RawWorker, app_manifest, hello
from tests.integration.test_engine_steps import World, running_world
from worker import App

#: Every option is enforced today; these tests stand one in for the next that lands before
#: its enforcement ("batch", as if it were not enforced).
STAND_IN_SETTING: dict[str, Any] = {"batch": Batch(100, 2.0)}


@pytest.fixture
def unenforced(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(UNENFORCED, "batch", "flow control, issue 9")
    return "batch"


def manifest(app_id: str = "raw", **options: Any) -> AppManifest:
    options.setdefault("triggers", [TriggerEvent(EVENT)])
    return AppManifest(id=app_id, version="1", functions=[FunctionConfig(id=FN_ID, **options)])


@pytest.fixture
async def gw(gateway_factory):
    return await gateway_factory()


@pytest.fixture
async def http(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        yield client


async def register(worker: RawWorker, *apps: AppManifest) -> None:
    """Send ``apps`` in a dev-mode handshake (the challenge is answered before the Hello)."""
    await worker.authenticate()
    await worker.send(hello(apps=list(apps)))


async def refused(gw, *apps: AppManifest) -> m.Error:
    worker = await RawWorker.open(gw.connect_port)
    await register(worker, *apps)
    error = await worker.expect(m.Error)
    code, _ = await worker.wait_closed()
    assert code == 1008
    assert worker.of(m.Ready) == []
    return error


async def nothing_registered(http) -> None:
    assert (await http.get("/v1/functions")).json()["data"] == []
    assert (await http.get("/v1/workers")).json()["data"] == []


async def still_serves(gw, http) -> None:
    """A worker with a plain app registers, and an event starts its run."""
    worker = await RawWorker.ready_on(gw.connect_port, instance_id="well-behaved",
                                      apps=[app_manifest("good")])
    r = await http.post("/e/dev", json={"name": EVENT})
    assert r.status_code == 200
    lease = await worker.expect(m.LeaseGranted)
    assert lease.function_id == f"good/{FN_ID}"
    await worker.close()


async def test_an_unenforced_option_is_refused_at_registration(gw, http, unenforced):
    option = unenforced
    error = await refused(gw, manifest(**STAND_IN_SETTING))

    assert error.code == "invalid_input"  # the SDK's worker stops: reconnecting cannot help
    assert error.message.startswith(
        f"function 'raw/{FN_ID}': not enforced by this version of Tether yet")
    assert option in error.message and UNENFORCED[option] in error.message
    await nothing_registered(http)
    await still_serves(gw, http)


async def test_a_hello_with_one_refused_app_registers_none_of_its_apps(gw, http):
    error = await refused(gw, app_manifest("fine"), manifest(
        "flowy", debounce=Debounce(1.0), batch=Batch(2, 1.0)))

    assert "debounce with batch" in error.message
    await nothing_registered(http)


async def test_a_combination_without_one_meaning_is_refused_at_registration(gw, http):
    error = await refused(gw, manifest(batch=Batch(10, 2.0), cancel_on=[Cancel("raw/stop")]))

    assert error.code == "invalid_input"
    assert error.message.startswith(
        f"function 'raw/{FN_ID}': options that cannot be combined: batch with cancel_on: ")
    await nothing_registered(http)
    await still_serves(gw, http)


@pytest.mark.parametrize(("cron", "tz", "says"), [
    ("0 99 * * *", "UTC", "out of range"), ("0 9 * * MON", "Nowhere/Land", "unknown time zone")])
async def test_a_bad_cron_trigger_is_refused_at_registration(gw, http, cron, tz, says):
    app = manifest(triggers=[TriggerCron("0 9 * * MON")])
    trigger = app.functions[0].triggers[0]
    object.__setattr__(trigger, "cron", cron)  # as another SDK might send it
    object.__setattr__(trigger, "tz", tz)
    error = await refused(gw, app)

    assert says in error.message and "TriggerCron" in error.message
    await nothing_registered(http)
    await still_serves(gw, http)


@pytest.mark.parametrize("pattern", ["*", "raw*", "raw/go*"])
async def test_a_misplaced_wildcard_is_refused_at_registration(gw, http, pattern):
    error = await refused(gw, manifest(triggers=[TriggerEvent(pattern)]))

    assert error.code == "invalid_input"
    assert error.message.startswith(f"function 'raw/{FN_ID}': trigger {pattern!r}: ")
    await nothing_registered(http)
    await still_serves(gw, http)


# --- step.invoke: the child's user, the default timeout ----------------------------------


async def test_the_child_of_an_invoke_gets_the_user_given_or_none(harness):
    app = App("t")

    @app.function(id="child")
    async def child(ctx):
        return ctx.event.user

    @app.function(trigger=TriggerEvent("t/parent"))
    async def parent(ctx):
        explicit = await ctx.step.invoke("explicit", function=child, user={"id": 7})
        passed_on = await ctx.step.invoke("passed-on", function=child, user=ctx.event.user)
        none = await ctx.step.invoke("none", function="t/child")
        return [explicit, passed_on, none]

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "t/parent", "user": {"id": "ann"}})
    run = await harness.run_of(event_id)
    done = await harness.wait_status(run["id"], "Completed", "Failed")
    assert done["output"] == [{"id": 7}, {"id": "ann"}, None], done


# --- cancel_on's timeout, on an injected clock -------------------------------------------


@pytest.fixture
async def world(store) -> AsyncIterator[World]:
    async with running_world(store, [
        FunctionConfig(id="sleepy", triggers=[TriggerEvent("go.sleep")]),
        FunctionConfig(id="parent", triggers=[TriggerEvent("go.parent")]),
        FunctionConfig(id="child"),
        FunctionConfig(id="cancellable", triggers=[TriggerEvent("go.c")],
                       cancel_on=[Cancel("stop", if_="async.data.n == event.data.n",
                                         timeout=10.0)]),
    ]) as world:
        yield world


async def test_cancel_on_timeout_ends_the_cancel_window(world):
    early = await world.send("go.c", {"n": 1})
    late = await world.send("go.c", {"n": 2})
    [early_run] = await world.engine.store.runs_for_event(early)
    [late_run] = await world.engine.store.runs_for_event(late)
    world.clock.advance(9)
    await world.send("stop", {"n": 1})
    await world.settle()
    assert (await world.run(early_run.id))["status"] == "Cancelled"
    world.clock.advance(2)  # 11 s after the run began: its cancel_on has expired
    await world.settle()
    await world.send("stop", {"n": 2})
    await world.settle()
    assert (await world.run(late_run.id))["status"] == "Queued"


# --- the gateway's own bound on sleeps (a worker of another SDK may ask for more) ----------


@pytest.mark.parametrize("fields", [{"duration": YEAR * 2}, {"duration": YEAR + 1},
                                    {"until": 1e18}])
async def test_a_sleep_over_a_year_fails_its_step_with_a_message(world, fields):
    worker = world.worker("t/sleepy")
    await world.send("go.sleep")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="nap", **fields)
    await world.checkpoint(worker, lease, m.RunSuspended)

    again = await worker.lease()  # at once: nothing sleeps
    assert again.run_id == lease.run_id
    error = again.memos["nap"].error
    assert error is not None and error.name == "SleepTooLong"
    assert error.message == "step.sleep 'nap': longer than the longest sleep, one year (366d)"


async def test_a_sleep_of_a_year_sleeps(world):
    worker = world.worker("t/sleepy")
    await world.send("go.sleep")
    lease = await worker.lease()
    await world.checkpoint(worker, lease, m.SleepRequested, step_id="nap", duration=YEAR)
    await world.checkpoint(worker, lease, m.RunSuspended)
    assert (await world.run(lease.run_id))["status"] == "Sleeping"


async def test_an_invoke_without_a_timeout_times_out_after_a_year(world):
    # The Python SDK always sends one; another SDK's worker may not.
    parents, _, _ = await world.invoking(timeout=None)
    world.clock.advance(YEAR - 1)
    await world.settle()
    assert parents.leases() == []
    world.clock.advance(1)
    again = await parents.lease()
    assert again.memos["kid"].error.name == "InvokeTimeout"
