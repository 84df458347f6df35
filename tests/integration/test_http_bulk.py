"""Bulk replay, dry runs, status and text filters of bulk actions, GET /v1/functions/{id}
(SPEC §4), over an in-process gateway's real port; and what a run's timeline reads."""

from __future__ import annotations

import re
from itertools import pairwise

import httpx
import pytest

from gateway.http import bulk
from gateway.http.management import iso
from gateway.store import keys as keystore
from protocol.manifest import AppManifest, FunctionConfig, Throttle, TriggerEvent
from tests.helpers.keys import SIGNING_KEY as SIGNING
from tests.integration.raw_worker import EVENT, FUNCTION, RawWorker, app_manifest
from worker import App, RetryAfterError
from worker import TriggerEvent as OnEvent


@pytest.fixture
async def cancelled(harness):
    """Five runs of ``raw/fn`` (data.n = 0..4, data.who = "ann" for even n), all cancelled."""
    worker = await RawWorker.ready_on(harness.gateway.connect_port)
    ids = await harness.send(*({"name": EVENT, "data": {"n": n, "who": "ann" if n % 2 == 0
                                                         else "bob"}} for n in range(5)))
    runs = [(await harness.run_of(i))["id"] for i in ids]
    r = await harness.http.post(f"/v1/functions/{FUNCTION}/cancel", json={})
    assert r.json()["cancelled"] == 5
    yield runs
    await worker.close()


async def test_bulk_replay_starts_a_new_run_of_each_selected_run(harness, cancelled):
    http = harness.http
    r = await http.post(f"/v1/functions/{FUNCTION}/replay",
                        json={"if": "event.data.n >= 3", "dry_run": True})
    assert r.json() == {"matched": 2, "scanned": 5, "complete": True, "cursor": None}
    r = await http.post(f"/v1/functions/{FUNCTION}/replay", json={"if": "event.data.n >= 3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["replayed"], body["scanned"], body["complete"]) == (2, 5, True)
    old = {(await harness.run(run_id))["event_ids"][0] for run_id in cancelled[3:]}
    new = [await harness.run(run_id) for run_id in body["run_ids"]]
    assert {run["event_ids"][0] for run in new} == old
    assert {run["function_id"] for run in new} == {FUNCTION}
    # The new runs are live: a second replay (of ended runs) does not pick them up.
    r = await http.post(f"/v1/functions/{FUNCTION}/replay", json={"dry_run": True})
    assert r.json()["matched"] == 5


async def test_text_and_status_narrow_a_bulk_action_and_a_dry_run_changes_nothing(
        harness, cancelled):
    http = harness.http
    r = await http.post(f"/v1/functions/{FUNCTION}/replay",
                        json={"text": "BOB", "status": "Cancelled", "dry_run": True})
    assert r.json()["matched"] == 2
    r = await http.post(f"/v1/functions/{FUNCTION}/replay",
                        json={"text": "ann", "status": ["Completed"]})
    assert r.json()["replayed"] == 0 and r.json()["complete"] is True
    r = await http.post(f"/v1/functions/{FUNCTION}/cancel", json={"dry_run": True})
    assert r.json() == {"matched": 0, "scanned": 0, "complete": True, "cursor": None}
    r = await http.post(f"/v1/functions/{FUNCTION}/replay",
                        json={"queued_before": "2000-01-01T00:00:00Z"})
    assert r.json()["replayed"] == 0  # an empty selection is not an error
    # The Functions page's counts: live runs always, ended ones queued since an id.
    store = harness.gateway.store
    assert await store.recent_counts("") == await store.status_counts() \
        == {FUNCTION: {"Cancelled": 5}}
    assert await store.recent_counts("Z" * 27) == {}


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("replay", {"if": "event.data.n >"}, "'if'"),
    ("replay", {"if": "async.data.n == 1"}, "unknown variable"),
    ("replay", {"status": "Running"}, "status 'Running' cannot be replayed (ended runs)"),
    ("cancel", {"status": "Completed"}, "status 'Completed' cannot be cancelled (live runs)"),
    ("replay", {"status": []}, "'status' must be a status or a list"),
    ("replay", {"dry_run": "yes"}, "'dry_run' must be true or false"),
    ("replay", {"text": 7}, "'text' must be a string"),
    ("replay", {"queued_after": "yesterday"}, "'queued_after' must be an ISO 8601 time"),
    ("replay", {"ifff": "true"}, "unknown field 'ifff'"),
])
async def test_a_bad_bulk_request_is_400_and_changes_nothing(harness, cancelled, path, body,
                                                            fragment):
    r = await harness.http.post(f"/v1/functions/{FUNCTION}/{path}", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    listed = (await harness.http.get("/v1/runs", params={"limit": 100})).json()["data"]
    assert len(listed) == 5


async def test_a_function_with_counts_per_status_and_flow_control_keys(harness):
    http = harness.http
    throttled = AppManifest(id="t", version="7", functions=[FunctionConfig(
        id="slow", triggers=[TriggerEvent("t/go")],
        throttle=Throttle(limit=1, period=3600, key="event.data.user"))])
    worker = await RawWorker.open(harness.gateway.connect_port)
    await worker.handshake(apps=[app_manifest(), throttled])
    await harness.send(*({"name": "t/go", "data": {"user": user}}
                         for user in ("ann", "ann", "ann", "bob", "bob")))
    await harness.send({"name": EVENT})

    r = await http.get("/v1/functions/t/slow")
    assert r.status_code == 200, r.text
    fn = r.json()
    assert (fn["id"], fn["app_version"], fn["active"]) == ("t/slow", "7", True)
    assert [t["event"] for t in fn["triggers"]] == ["t/go"]
    assert fn["config"]["throttle"]["limit"] == 1
    assert sum(fn["counts"].values()) == 5 and set(fn["counts"]) >= {"Queued", "Completed"}
    keys = {k["key"]: k for k in fn["flow_keys"]}
    assert keys["ann"]["queued"] >= 2 and keys["bob"]["queued"] >= 1, fn["flow_keys"]
    assert fn["flow_keys"][0]["key"] == "ann" and fn["flow_keys"][0]["option"] == "throttle"
    assert (await http.get("/v1/functions/slow", params={"keys": 1})).json()["flow_keys"] \
        == fn["flow_keys"][:1]
    assert (await http.get(f"/v1/functions/{FUNCTION}")).json()["counts"]["Queued"] + \
        (await http.get(f"/v1/functions/{FUNCTION}")).json()["counts"]["Running"] == 1

    r = await http.get("/v1/functions/t/nope")
    assert r.status_code == 404 and "GET /v1/functions" in r.json()["error"]
    r = await http.get("/v1/functions/t/slow", params={"keys": "many"})
    assert r.status_code == 400 and "keys must be a whole number" in r.json()["error"]
    r = await http.get("/v1/functions/t/slow", params={"limit": "1"})
    assert r.status_code == 400 and "allowed: keys" in r.json()["error"]
    await worker.close()


async def test_a_read_only_key_reads_a_function_but_acts_on_no_runs(gateway_factory, db_url):
    async with keystore.connect(db_url) as db:
        _, read_only = await keystore.create(db, kind="api", name="ops", read_only=True,
                                             now=1.0)
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING])
    worker = await RawWorker.ready_on(gw.connect_port, key=SIGNING)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        looks = {"authorization": f"Bearer {read_only}"}
        assert (await client.get(f"/v1/functions/{FUNCTION}", headers=looks)).status_code == 200
        for action in ("cancel", "replay"):
            r = await client.post(f"/v1/functions/{FUNCTION}/{action}", json={}, headers=looks)
            assert r.status_code in (401, 403) and "read-only" in r.json()["error"], r.text
            r = await client.post(f"/v1/functions/{FUNCTION}/{action}", json={})
            assert r.status_code == 401
        r = await client.post(f"/v1/functions/{FUNCTION}/replay", json={"dry_run": True},
                              headers={"authorization": f"Bearer {SIGNING}"})
        assert r.status_code == 200 and r.json()["matched"] == 0
    await worker.close()


# --- what a run's timeline reads: each attempt of a retried step, and child runs ----------


async def test_the_store_keeps_each_attempt_of_a_retried_step_and_the_child_runs(harness):
    app = App("tl")
    calls: list[int] = []

    @app.function(id="leaf", trigger=OnEvent("tl/leaf"))
    async def leaf(ctx):
        return "leaf"

    @app.function(id="root", trigger=OnEvent("tl/root"))
    async def root(ctx):
        async def flaky():
            calls.append(1)
            if len(calls) < 3:
                raise RetryAfterError("not yet", 0.05)
            return "ok"

        await ctx.step.run("flaky", flaky)
        await ctx.step.run("plain", lambda: 1)
        return await ctx.step.invoke("kid", function=leaf, data={})

    await harness.start_worker([app])
    (event_id,) = await harness.send({"name": "tl/root"})
    run = await harness.run_of(event_id)
    await harness.wait_status(run["id"], "Completed")
    store = harness.gateway.store

    attempts = await store.step_attempts(run["id"])
    assert [(a.step_id, a.attempt, a.status) for a in attempts] == [
        ("flaky", 1, "Retrying"), ("flaky", 2, "Retrying"), ("flaky", 3, "Completed")]
    for before, after in pairwise(attempts):
        assert before.started_at <= before.ended_at <= before.retry_at <= after.started_at
        assert before.error is not None and before.error.message == "not yet"
    assert attempts[-1].retry_at is None and attempts[-1].error is None
    (step,) = [s for s in (await harness.run(run["id"]))["steps"] if s["id"] == "flaky"]
    assert step["attempts"] == 3  # and its started_at is still the first attempt's
    assert step["started_at"] == iso(attempts[0].started_at)

    (child,) = await store.child_runs(run["id"])
    assert (child.function_id, child.status, child.step_id) == ("tl/leaf", "Completed", "kid")
    assert await store.step_attempts(child.id) == []


async def test_a_dashboard_bulk_replay_past_its_budget_goes_on_where_it_stopped(
        harness, cancelled, monkeypatch):
    """Each confirmed step replays the next runs of the selection: none is replayed twice."""
    monkeypatch.setattr(bulk, "PAGE", 2)
    monkeypatch.setattr(bulk, "MAX_SCANNED", 2)
    http = harness.http
    csrf = re.search(r'name="csrf" value="([^"]+)"', (await http.get("/")).text).group(1)
    form = {"csrf": csrf, "action": "replay", "function_id": FUNCTION}
    page = (await http.post("/runs/bulk", data=form)).text
    assert "2</strong> runs" in page and "among the 2 examined" in page
    to = re.search(r'name="to" value="([^"]+)"', page).group(1)
    form |= {"confirm": "1", "to": to}
    replayed = 0
    for expected in (2, 2, 1):
        r = await http.post("/runs/bulk", data=form)
        assert r.status_code == 200, r.text
        assert f'id="done">{expected} run' in r.text
        replayed += expected
        cursor = re.search(r'name="cursor" value="([^"]+)"', r.text)
        if cursor is None:
            break
        form["cursor"] = cursor.group(1)
    assert replayed == 5 and cursor is None
    runs = (await http.get("/v1/runs", params={"limit": 100})).json()["data"]
    events = [run["event_ids"][0] for run in runs if run["id"] not in cancelled]
    assert sorted(events) == sorted({run["event_ids"][0] for run in runs})
