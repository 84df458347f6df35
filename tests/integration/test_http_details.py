"""The management API's details, over an in-process gateway's real port (SPEC §4).

Short function ids, cursors and limits, unknown events, the steps of cancelled runs, bulk
cancel (filters, budget, unknown fields), and the HTTP server's own limits.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from gateway.http import bulk, server
from gateway.http.management import MAX_BODY, MAX_PAGE
from tests.helpers.keys import EVENT_KEY, SIGNING_KEY
from tests.helpers.waiting import bound, eventually
from tests.integration.raw_worker import EVENT, FUNCTION, RawWorker, app_manifest
from worker import App, TriggerEvent

# --- function ids, cursors, limits, events -------------------------------------------------


@pytest.fixture
async def http(harness):
    return harness.http


async def test_a_short_function_id_filters_when_it_names_one_function(harness, http):
    worker = await RawWorker.ready_on(harness.gateway.connect_port)
    (event_id,) = await harness.send({"name": EVENT})
    run = await harness.run_of(event_id)

    for function_id in (FUNCTION, "fn"):
        r = await http.get("/v1/runs", params={"function_id": function_id})
        assert r.status_code == 200, r.text
        assert [x["id"] for x in r.json()["data"]] == [run["id"]]
    r = await http.get("/v1/runs", params={"function_id": "nope"})
    assert r.status_code == 400
    assert "no function 'nope'" in r.json()["error"]
    await worker.close()


async def test_an_ambiguous_short_function_id_lists_the_full_ids(harness, http):
    worker = await RawWorker.open(harness.gateway.connect_port)
    await worker.handshake(apps=[app_manifest("raw"), app_manifest("other")])

    r = await http.get("/v1/runs", params={"function_id": "fn"})
    assert r.status_code == 400
    assert r.json()["error"] == "function id 'fn' is ambiguous: use one of other/fn, raw/fn"
    r = await http.post("/v1/functions/fn/cancel")
    assert r.status_code == 400 and "other/fn, raw/fn" in r.json()["error"]
    await worker.close()


@pytest.mark.parametrize("cursor", ["garbage", "Z" * 27, "01ARZ3NDEKTSV4RRFFQ69G5FA!", "' OR 1"])
async def test_a_malformed_cursor_is_refused(http, cursor):
    r = await http.get("/v1/runs", params={"cursor": cursor})
    assert r.status_code == 400
    assert "malformed cursor" in r.json()["error"]


async def test_limit_above_the_maximum_is_refused(http):
    assert (await http.get("/v1/runs", params={"limit": MAX_PAGE})).status_code == 200
    r = await http.get("/v1/runs", params={"limit": MAX_PAGE + 1})
    assert r.status_code == 400
    assert r.json()["error"] == f"limit must be between 1 and {MAX_PAGE}"


async def test_runs_of_an_unknown_event_is_404_and_of_a_known_one_200(harness, http):
    r = await http.get("/v1/events/no-such-event/runs")
    assert r.status_code == 404
    assert "no event with id 'no-such-event'" in r.json()["error"]
    (event_id,) = await harness.send({"name": "nobody/listens"})
    r = await http.get(f"/v1/events/{event_id}/runs")
    assert r.status_code == 200 and r.json() == {"data": [], "cursor": None}


# --- a cancelled run's pending steps end with it ---------------------------------------------


async def test_a_cancelled_run_ends_its_sleep_and_wait_steps(harness, http):
    app = App("t")

    @app.function(trigger=TriggerEvent("nap"))
    async def nap(ctx):
        await ctx.step.sleep("long", "1h")

    @app.function(trigger=TriggerEvent("hold"))
    async def hold(ctx):
        await ctx.step.wait_for_event("approval", event="approved", timeout="1h")

    await harness.start_worker([app])
    e1, e2 = await harness.send({"name": "nap"}, {"name": "hold"})
    r1, r2 = await harness.run_of(e1), await harness.run_of(e2)
    await harness.wait_status(r1["id"], "Sleeping")
    await harness.wait_status(r2["id"], "Waiting")
    for run in (r1, r2):
        assert (await http.post(f"/v1/runs/{run['id']}/cancel")).json()["cancelled"] is True

    for run_id, step_id in ((r1["id"], "long"), (r2["id"], "approval")):
        run = await harness.run(run_id)
        assert run["status"] == "Cancelled"
        (step,) = [s for s in run["steps"] if s["id"] == step_id]
        assert step["status"] == "Cancelled"
        assert step["ended_at"] is not None and step["ended_at"] == run["ended_at"]


# --- bulk cancel ----------------------------------------------------------------------------


@pytest.fixture
async def queued(harness):
    """Five runs of ``raw/fn`` (data.n = 0..4), one leased to a worker that holds it."""
    worker = await RawWorker.ready_on(harness.gateway.connect_port)
    ids = await harness.send(*({"name": EVENT, "data": {"n": n}} for n in range(5)))
    runs = [await harness.run_of(i) for i in ids]
    yield [r["id"] for r in runs]
    await worker.close()


async def statuses(harness, run_ids: list[str]) -> list[str]:
    return [(await harness.run(r))["status"] for r in run_ids]


async def test_bulk_cancel_with_a_filter_cancels_only_the_matching_runs(harness, http, queued):
    r = await http.post(f"/v1/functions/{FUNCTION}/cancel",
                        json={"if": "event.data.n % 2 == 0"})
    assert r.status_code == 200, r.text
    assert r.json() == {"cancelled": 3, "scanned": 5, "complete": True, "cursor": None}
    got = await statuses(harness, queued)
    assert [s == "Cancelled" for s in got] == [True, False, True, False, True]


async def test_bulk_cancel_by_short_id_and_time_range(harness, http, queued):
    r = await http.post("/v1/functions/fn/cancel", json={"queued_before": 0})
    assert r.json()["cancelled"] == 0
    r = await http.post("/v1/functions/fn/cancel", json={"queued_after": "2000-01-01T00:00:00Z"})
    assert r.json()["cancelled"] == 5
    assert set(await statuses(harness, queued)) == {"Cancelled"}


async def test_bulk_cancel_past_its_budget_answers_a_cursor_to_continue(
        harness, http, queued, monkeypatch):
    monkeypatch.setattr(bulk, "PAGE", 2)
    monkeypatch.setattr(bulk, "MAX_SCANNED", 2)
    body: dict[str, Any] = {"if": "event.data.n >= 1"}
    answers = []
    while True:
        r = await http.post(f"/v1/functions/{FUNCTION}/cancel", json=body)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        if answers[-1]["complete"]:
            break
        body["cursor"] = answers[-1]["cursor"]
    assert [a["scanned"] for a in answers] == [2, 2, 1]
    assert sum(a["cancelled"] for a in answers) == 4
    assert await statuses(harness, queued) != ["Cancelled"] * 5
    assert (await statuses(harness, queued)).count("Cancelled") == 4


@pytest.mark.parametrize(("body", "fragment"), [
    ({"iff": "event.data.n == 1"}, "unknown field 'iff' in the body of POST"),
    ({"if": "event.data.n == 1", "queued_afterr": 0}, "unknown field 'queued_afterr'"),
    ({"if": 3}, "'if' must be a CEL expression"),
    ({"if": "event" + ".a" * 1000}, "too complex"),
    ({"if": "1" + " + 1" * 3000}, "too long"),
    ({"if": "(" * 40 + "1" + ")" * 40}, "nested too deeply"),
    ({"if": "async.data.n == 1"}, "unknown variable"),
    ({"cursor": "nope"}, "'cursor' must be the cursor"),
])
async def test_a_bad_bulk_cancel_is_refused_and_cancels_nothing(harness, http, queued, body,
                                                                fragment):
    r = await http.post(f"/v1/functions/{FUNCTION}/cancel", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    if "unknown field" in fragment:
        assert ("allowed: cursor, dry_run, if, queued_after, queued_before, status, text"
                in r.json()["error"])
    assert "Cancelled" not in await statuses(harness, queued)


async def test_an_oversize_bulk_cancel_body_is_413(harness, http, queued):
    r = await http.post(f"/v1/functions/{FUNCTION}/cancel",
                        content=b'{"if": "' + b"x" * MAX_BODY + b'"}')
    assert r.status_code == 413
    assert "request too large" in r.json()["error"]
    assert "Cancelled" not in await statuses(harness, queued)


async def test_an_expensive_filter_is_stopped_at_its_budget_and_intake_goes_on(
        harness, http, monkeypatch):
    """The filter runs in a child process: the gateway keeps taking events meanwhile, and a
    filter over budget is killed and refused."""
    import multiprocessing

    monkeypatch.setattr(bulk, "BUDGET_SECONDS", 1.0)
    worker = await RawWorker.ready_on(harness.gateway.connect_port)
    await harness.send(*({"name": EVENT, "data": {"xs": list(range(20_000))}}
                         for _ in range(2)))
    finished: list[str] = []

    async def cancel() -> httpx.Response:
        r = await http.post(f"/v1/functions/{FUNCTION}/cancel",
                            # (the loop variable is named ``event``: check() takes only
                            # variables it knows, and the library reports loop variables)
                            json={"if": "event.data.xs.filter(event, event > 0).size() > 0"})
        finished.append("cancel")
        return r

    async def intake() -> None:
        await asyncio.sleep(0)  # let the cancel start first
        await harness.send({"name": "nobody/listens"})
        finished.append("event")

    r, _ = await asyncio.gather(cancel(), intake())
    assert r.status_code == 400
    assert "did not finish within 1 s" in r.json()["error"]
    assert finished == ["event", "cancel"]
    assert not [p for p in multiprocessing.active_children() if p.name == "tether-bulk-filter"]
    await worker.close()


# --- unknown fields on every management endpoint -------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/functions", "it takes none"),
    ("GET", "/v1/workers", "it takes none"),
    ("GET", "/v1/runs", "allowed: cursor, function_id, limit, status"),
    ("GET", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV", "it takes none"),
    ("GET", "/v1/events/x/runs", "it takes none"),
    ("POST", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", "it takes none"),
    ("POST", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/replay", "it takes none"),
    ("POST", f"/v1/functions/{FUNCTION}/cancel", "it takes none"),
])
async def test_every_management_endpoint_refuses_unknown_query_parameters(
        harness, http, method, path, allowed):
    worker = await RawWorker.ready_on(harness.gateway.connect_port)
    r = await http.request(method, path, params={"stauts": "Queued"})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("unknown query parameter 'stauts'")
    assert r.json()["error"].endswith(allowed)
    await worker.close()


@pytest.mark.parametrize("path", ["/v1/runs/{run}/cancel", "/v1/runs/{run}/replay"])
async def test_run_commands_refuse_unknown_body_fields(harness, http, queued, path):
    r = await http.post(path.format(run=queued[0]), json={"force": True})
    assert r.status_code == 400
    assert "unknown field 'force'" in r.json()["error"]
    assert "Cancelled" not in await statuses(harness, queued)
    assert (await http.post(path.format(run=queued[0]), json={})).status_code == 200


# --- the HTTP server's limits ---------------------------------------------------------------


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(bound(5)):
            return await reader.read()
    finally:
        writer.close()


async def test_too_many_headers_is_431(harness):
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(server.MAX_HEADERS + 1))
    answer = await raw_request(harness.gateway.http_port,
                               b"GET /health HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert f"more than {server.MAX_HEADERS} headers".encode() in answer


async def test_oversize_headers_are_431(harness):
    big = b"x-big: " + b"v" * server.MAX_HEADER_BYTES + b"\r\n"
    answer = await raw_request(harness.gateway.http_port,
                               b"GET /health HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_connection_over_the_cap_is_refused(harness, monkeypatch):
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    port = harness.gateway.http_port
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        answer = await raw_request(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"too many open connections" in answer
    finally:
        for sock in held:
            sock.close()

    async def served() -> bool:
        return (await harness.http.get("/health")).status_code == 200

    await eventually(served, 5, what="served again once the held connections closed")


async def test_a_body_that_never_arrives_is_408(harness, monkeypatch):
    from gateway.http import events

    async def read_body(request, limit, *, advice="", timeout=0.3):
        return await real(request, limit, advice=advice, timeout=timeout)

    real = events.read_body
    monkeypatch.setattr(events, "read_body", read_body)
    answer = await raw_request(
        harness.gateway.http_port,
        b"POST /e/dev HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"name\"")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 0.3 s" in answer


# --- --dev: no cross-origin writes ----------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "null"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
])
async def test_cross_origin_writes_are_refused_in_dev(harness, http, headers):
    r = await http.post("/e/dev", json={"name": "x/y"}, headers=headers)
    assert r.status_code == 403
    assert "cross-origin POST refused in --dev" in r.json()["error"]
    r = await http.post("/v1/functions/x/cancel", json={}, headers=headers)
    assert r.status_code == 403
    assert (await http.get("/v1/runs", headers=headers)).status_code == 200


async def test_same_origin_and_non_browser_writes_work_in_dev(harness, http):
    port = harness.gateway.http_port
    for headers in ({}, {"origin": f"http://127.0.0.1:{port}"},
                    {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}):
        r = await http.post("/e/dev", json={"name": "x/y"}, headers=headers)
        assert r.status_code == 200, (headers, r.text)


async def test_cross_origin_is_not_checked_with_auth(gateway_factory):
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        r = await client.post(f"/e/{EVENT_KEY}", json={"name": "x/y"},
                              headers={"origin": "http://app.example"})
    assert r.status_code == 200


@pytest.mark.parametrize("data", [b"", b"\r\n", b"GET /health HTTP/1.1\r\nhost:"])
async def test_a_request_whose_headers_never_arrive_is_closed_with_408(harness, monkeypatch,
                                                                       data):
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    answer = await raw_request(harness.gateway.http_port, data)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request headers not received within 0.3 s" in answer


async def test_a_keep_alive_connection_then_stalled_is_closed(harness, monkeypatch):
    """A bare CRLF after a response stops uvicorn's keep-alive timer; ours takes over."""
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.gateway.http_port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), bound(5))
        assert head.startswith(b"HTTP/1.1 200 ")
        (length,) = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")]
        await reader.readexactly(length)
        writer.write(b"\r\n")
        rest = await asyncio.wait_for(reader.read(), bound(3))  # keep-alive alone waits 5 s
        assert rest.startswith(b"HTTP/1.1 408 ")
    finally:
        writer.close()
