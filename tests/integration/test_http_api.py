"""The HTTP API of an in-process gateway, over its real port (SPEC §4 and §5).

The gateway runs without ``--dev``: events need an event key, the management API a bearer.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.app import Gateway
from protocol import messages as m
from tests.helpers.waiting import bound, eventually
from tests.integration.raw_worker import EVENT, FUNCTION, RawWorker
from worker import App, NonRetriableError, RetryAfterError, StepError, TriggerEvent, Worker

KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
OPS_KEY = "apikey-K1lgsYty4FMQ5bbRsGSynQA0dccebdU70ZpOL0D8E3s"
KIB = 1024
MIB = 1024 * KIB

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
async def gw(gateway_factory):
    return await gateway_factory(dev=False, signing_keys=[KEY], event_keys=[EVENT_KEY])


@pytest.fixture
async def http(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                 headers={"authorization": f"Bearer {KEY}"},
                                 timeout=bound(10)) as client:
        yield client


@pytest.fixture
async def registered(gw):
    """A worker that declared ``raw/fn`` (triggered by ``raw/go``) and holds at most one run."""
    worker = await RawWorker.ready_on(gw.connect_port, key=KEY)
    yield worker
    await worker.close()


async def runs(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await http.get("/v1/runs", params={"limit": 100, **params})
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def metric(text: str, name: str) -> float:
    """The sum of ``tether_{name}``'s samples, whatever their labels (0 with none)."""
    return sum(float(v) for v in re.findall(rf"^tether_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def assert_nothing_stored(http: httpx.AsyncClient) -> None:
    assert await runs(http) == []
    assert await runs(http, function_id=FUNCTION) == []
    metrics = (await http.get("/metrics")).text
    assert metric(metrics, "events_accepted_total") == 0
    assert metric(metrics, "runs_created_total") == 0


def event(**fields: Any) -> dict[str, Any]:
    return {"name": EVENT, **fields}


# --- POST /e/{key}: bad input ----------------------------------------------------------------

BAD_BODIES = {
    "malformed JSON": (b'{"name": "raw/go", ', 400, "JSON"),
    "an empty body": (b"", 400, "JSON"),
    "bytes that are not text": (b"\xff\xfe\xfa\x00", 400, "JSON"),
    "NaN, which is not JSON": (b'{"name": "raw/go", "data": {"x": NaN}}', 400, "not valid JSON"),
    "a lone surrogate": (b'{"name": "raw/go", "data": {"x": "\\ud800"}}', 400, "not valid JSON"),
    "a lone surrogate in the name": (b'{"name": "raw/go\\udfff"}', 400, "not valid JSON"),
    "nesting too deep": (b"[" * 200_000 + b"]" * 200_000, 400, "JSON"),
    "null": (b"null", 400, "object"),
    "an array of numbers": (b"[1, 2]", 400, "object"),
    "a missing name": (json.dumps({"data": {}}).encode(), 400, "name"),
    "an empty name": (json.dumps({"name": "  "}).encode(), 400, "name"),
    "a name that is a number": (json.dumps({"name": 7}).encode(), 400, "name"),
    "a name too long": (json.dumps({"name": "n" * 300}).encode(), 400, "name"),
    "a reserved name": (json.dumps({"name": "tether/function.failed"}).encode(), 400,
                        "reserved"),
    "data that is an array": (json.dumps(event(data=[1, 2])).encode(), 400, "data"),
    "data that is a string": (json.dumps(event(data="x")).encode(), 400, "data"),
    "an id that is a number": (json.dumps(event(id=12)).encode(), 400, "id"),
    "a negative ts": (json.dumps(event(ts=-1)).encode(), 400, "ts"),
    "a ts in seconds as a float": (json.dumps(event(ts=1.5)).encode(), 400, "ts"),
    "a user that is a string": (json.dumps(event(user="bob")).encode(), 400, "user"),
    "one bad event among good ones": (json.dumps([event(), event(), {"data": {}}]).encode(),
                                      400, "event 2"),
}


async def test_a_bad_event_is_refused_and_nothing_is_stored(http, registered):
    # One gateway for every case (a gateway takes a while to start); each case says its name.
    for what, (body, status, says) in BAD_BODIES.items():
        r = await http.post(f"/e/{EVENT_KEY}", content=body,
                            headers={"content-type": "application/json"})
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        message = r.json()["error"]
        assert says in message, f"{what}: {message!r} does not mention {says!r}"
        await assert_nothing_stored(http)
    # The gateway is none the worse for it.
    r = await http.post(f"/e/{EVENT_KEY}", json=event())
    assert r.status_code == 200
    assert len(await runs(http, function_id=FUNCTION)) == 1


async def test_an_oversize_event_is_413(http, registered):
    r = await http.post(f"/e/{EVENT_KEY}", json=event(data={"x": "a" * (512 * KIB)}))
    assert r.status_code == 413
    assert "event too large" in r.json()["error"]
    assert "512 KiB" in r.json()["error"]

    r = await http.post(f"/e/{EVENT_KEY}",
                        json=[event(), event(data={"x": "a" * (600 * KIB)})])
    assert r.status_code == 413
    assert r.json()["error"].startswith("event 1:")
    await assert_nothing_stored(http)


async def test_an_event_just_under_the_limit_is_accepted(http, registered):
    r = await http.post(f"/e/{EVENT_KEY}", json=event(data={"x": "a" * (500 * KIB)}))
    assert r.status_code == 200, r.text
    assert len(r.json()["ids"]) == 1


async def test_an_oversize_request_is_413(http, registered):
    body = [event(data={"x": "a" * (400 * KIB)}) for _ in range(8)]  # 3.2 MiB > 3 MiB
    r = await http.post(f"/e/{EVENT_KEY}", json=body)
    assert r.status_code == 413
    assert "request too large" in r.json()["error"]
    await assert_nothing_stored(http)


async def test_an_oversize_chunked_request_is_413(http, registered):
    chunk = (b" " * (64 * KIB - 1)) + b"\n"

    async def body() -> AsyncIterator[bytes]:
        yield b'[{"name": "raw/go"},'
        for _ in range(4 * MIB // len(chunk)):
            yield chunk
        yield b'{"name": "raw/go"}]'

    request = http.build_request("POST", f"/e/{EVENT_KEY}", content=body())
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = await http.send(request)
    assert r.status_code == 413
    assert "request too large" in r.json()["error"]
    await assert_nothing_stored(http)


async def raw_post(gw: Gateway, head: str, body: bytes) -> tuple[int, bytes]:
    """Send a hand-made request on a fresh connection; return the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(64 * KIB), bound(5))
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


async def test_a_content_length_over_the_limit_is_413_without_reading_the_body(gw, http,
                                                                              registered):
    head = (f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {4 * MIB}\r\n")
    status, body = await raw_post(gw, head, b'{"name": "raw/go"}')
    assert status == 413
    assert b"request too large" in body
    await assert_nothing_stored(http)


async def test_a_content_length_under_the_real_size_stores_nothing(gw, http, registered):
    real = json.dumps(event(data={"x": "y" * 100})).encode()
    head = (f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 20\r\n")
    status, _ = await raw_post(gw, head, real)
    assert 400 <= status < 500
    await assert_nothing_stored(http)


async def test_too_many_events_in_one_request_are_refused(http, registered):
    r = await http.post(f"/e/{EVENT_KEY}", json=[{"name": EVENT}] * 5001)
    assert r.status_code in (400, 413)
    assert "5001" in r.json()["error"]
    await assert_nothing_stored(http)


async def test_an_unknown_event_key_is_401(http, registered):
    for key in ["wrong-key", KEY, EVENT_KEY.upper(), EVENT_KEY + "x", " " + EVENT_KEY]:
        with capture_logs() as logs:
            r = await http.post(f"/e/{key}", json=event())
        assert r.status_code == 401, key
        assert "event key" in r.json()["error"]
        assert any(e["event"] == "request_unauthorized" for e in logs), key
        await assert_nothing_stored(http)


# --- POST /e/{key}: good input ---------------------------------------------------------------


async def test_events_are_accepted_and_start_runs(http, registered):
    r = await http.post(f"/e/{EVENT_KEY}", json=[event(data={"n": 1}), {"name": "nobody.cares"}])
    assert r.status_code == 200
    ids = r.json()["ids"]
    assert len(ids) == 2 and len(set(ids)) == 2
    (run,) = (await http.get(f"/v1/events/{ids[0]}/runs")).json()["data"]
    assert run["function_id"] == FUNCTION
    assert run["event_ids"] == [ids[0]]
    assert (await http.get(f"/v1/events/{ids[1]}/runs")).json()["data"] == []
    # The run is leased to the worker that serves it, with the event as it was stored.
    lease = await registered.expect(m.LeaseGranted)
    assert lease.run_id == run["id"]
    (stored,) = lease.events
    assert json.loads(stored) | {"ts": 0} == {"name": EVENT, "data": {"n": 1}, "id": ids[0],
                                              "ts": 0, "user": None}


async def test_a_duplicate_event_id_returns_the_same_id_and_starts_one_run(http, registered):
    first = await http.post(f"/e/{EVENT_KEY}", json=event(id="order-1"))
    again = await http.post(f"/e/{EVENT_KEY}", json=event(id="order-1", data={"other": True}))
    both = await http.post(f"/e/{EVENT_KEY}", json=[event(id="order-2"), event(id="order-2")])

    assert first.json()["ids"] == again.json()["ids"] == ["order-1"]
    assert both.json()["ids"] == ["order-2", "order-2"]
    for event_id in ("order-1", "order-2"):
        assert len((await http.get(f"/v1/events/{event_id}/runs")).json()["data"]) == 1
    assert len(await runs(http, function_id=FUNCTION)) == 2
    metrics = (await http.get("/metrics")).text
    assert metric(metrics, "events_accepted_total") == 2
    assert metric(metrics, "events_duplicate_total") == 2


# --- errors and routes -----------------------------------------------------------------------


async def test_unknown_routes_and_methods_answer_json(http):
    for method, path, status in [
        ("GET", "/no/such/route", 404),
        ("POST", "/v1/nothing", 404),
        ("GET", f"/e/{EVENT_KEY}", 405),
        ("DELETE", "/v1/runs", 405),
        ("POST", "/health", 405),
    ]:
        r = await http.request(method, path)
        assert r.status_code == status, (method, path, r.status_code)
        assert r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {"error"}
        assert path in r.json()["error"]


async def test_an_unknown_run_is_404(http):
    r = await http.get("/v1/runs/01NOSUCHRUN")
    assert r.status_code == 404
    assert "01NOSUCHRUN" in r.json()["error"]


async def test_bad_run_list_parameters_are_400(http):
    for query in [{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "ten"},
                  {"limit": "1.5"}, {"status": "Done"}, {"status": "queued"}]:
        r = await http.get("/v1/runs", params=query)
        assert r.status_code == 400, query
        message = r.json()["error"]
        assert next(iter(query)) in message, (query, message)


MANAGEMENT = ["/v1/functions", "/v1/workers", "/v1/runs", "/v1/runs/x",
              "/v1/events/x/runs"]


async def test_the_management_api_needs_the_signing_key(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        for path in MANAGEMENT:
            for authorization in [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {EVENT_KEY}",
                                  "Bearer", KEY, f"Bearer {KEY}x"]:
                headers = {} if authorization is None else {"authorization": authorization}
                with capture_logs() as logs:
                    r = await client.get(path, headers=headers)
                assert r.status_code == 401, (path, authorization)
                assert "Bearer" in r.json()["error"]
                (line,) = [e for e in logs if e["event"] == "request_unauthorized"]
                assert line["path"] == path
                assert line["log_level"] == "warning"


async def test_the_management_api_answers_the_signing_key(http):
    for path in ["/v1/functions", "/v1/workers", "/v1/runs"]:
        r = await http.get(path)
        assert r.status_code == 200, path
        assert set(r.json()) == {"data", "cursor"}
    assert (await http.get("/v1/events/x/runs")).status_code == 404
    r = await http.get("/v1/runs/x", headers={"authorization": f"bearer {KEY}"})
    assert r.status_code == 404, "the scheme is case-insensitive"


async def test_health_and_metrics_are_open(gw, registered):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        health = await client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok"
        assert body["gateway_id"] == gw.gateway_id
        assert body["db"] in ("sqlite", "postgres")
        assert body["workers"] == 1
        assert isinstance(body["version"], str) and body["version"]
        assert body["uptime_seconds"] >= 0

        before = await client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        r = await client.post(f"/e/{EVENT_KEY}", json=event())
        assert r.status_code == 200
        after = (await client.get("/metrics")).text

    families = list(text_string_to_metric_families(before.text))
    assert families and all(f.name.startswith("tether_") for f in families)
    assert metric(before.text, "events_accepted_total") == 0
    assert metric(after, "events_accepted_total") == 1
    assert metric(after, "runs_created_total") == 1
    assert metric(after, "workers_connected") == 1


async def test_answers_do_not_wait_for_delayed_acks(gw, http):
    # Without TCP_NODELAY a response written in two parts waits for the client's delayed ACK
    # (40 ms on Linux): every connection the API accepts must set it. The answer time this
    # buys is a figure, printed by `python -m bench http`, not asserted here.
    for _ in range(3):
        assert (await http.get("/health")).status_code == 200
    connections = gw._http.server_state.connections
    sockets = [c.transport.get_extra_info("socket") for c in connections]
    assert sockets, "no open HTTP connection on the gateway"
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


async def test_run_lists_page_with_a_cursor(http, registered):
    r = await http.post(f"/e/{EVENT_KEY}", json=[event() for _ in range(5)])
    assert r.status_code == 200
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        params = {"limit": 2, "function_id": FUNCTION} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/v1/runs", params=params)).json()
        assert len(page["data"]) <= 2
        seen += [run["id"] for run in page["data"]]
        cursor = page["cursor"]
    assert cursor is None
    assert len(seen) == len(set(seen)) == 5
    queued = await runs(http, status="Queued")
    running = await runs(http, status="Running")
    assert len(queued) + len(running) == 5
    assert len(running) <= 1  # the worker holds one run at most
    assert await runs(http, function_id="raw/other") == []


# --- the run, as SPEC §4 shapes it -----------------------------------------------------------


def parse_time(text: str) -> datetime:
    assert ISO_UTC.match(text), f"{text!r} is not ISO 8601 UTC ending in Z"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


RUN_KEYS = {"id", "function_id", "status", "output", "error", "event_ids", "attempt",
            "queued_at", "started_at", "ended_at", "steps"}
STEP_KEYS = {"id", "kind", "status", "attempts", "output", "error", "started_at", "ended_at"}


@pytest.fixture
async def shop(gw):
    """A real worker serving app ``shop``, connected with the signing key."""
    app = App("shop")
    flaky_calls: list[int] = []

    async def fetch() -> dict[str, int]:
        return {"n": 1}

    def flaky() -> str:
        flaky_calls.append(1)
        if len(flaky_calls) == 1:
            raise RuntimeError("first call fails")
        return "ok"

    def refuse() -> None:
        raise NonRetriableError("card declined")

    @app.function(id="checkout", trigger=TriggerEvent("shop/checkout"), retries=2)
    async def checkout(ctx):
        fetched = await ctx.step.run("fetch", fetch)
        second = await ctx.step.run("flaky", flaky)
        try:
            await ctx.step.run("charge", refuse)
        except StepError as exc:
            return {"fetched": fetched, "flaky": second, "charge": exc.name}
        return None

    @app.function(id="doomed", trigger=TriggerEvent("shop/doomed"), retries=0)
    async def doomed(ctx):
        raise NonRetriableError("nothing to do")

    async def later() -> None:
        raise RetryAfterError("not now", float("inf"))

    @app.function(id="patient", trigger=TriggerEvent("shop/patient"))
    async def patient(ctx):
        await ctx.step.run("wait", later)

    worker = Worker([app], gateways=[f"ws://127.0.0.1:{gw.connect_port}/connect"],
                    signing_key=KEY, concurrency=4, drain_timeout=2)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.link.connected.wait(), bound(5))
    yield worker
    await asyncio.wait_for(worker.drain(), bound(10))
    await asyncio.wait_for(task, bound(10))


async def finished_run(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await http.post(f"/e/{EVENT_KEY}", json={"name": name, "data": {"cart": 3}})
    (event_id,) = r.json()["ids"]

    async def ended():
        found = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
        return found[0] if found and found[0]["ended_at"] else None

    run = await eventually(ended, timeout=10, what=f"the run of {name} to end")
    assert run["event_ids"] == [event_id]
    single: dict[str, Any] = (await http.get(f"/v1/runs/{run['id']}")).json()
    assert single == run
    return single


async def test_a_completed_run_has_the_shape_of_the_spec(http, shop):
    began = datetime.now(UTC)
    run = await finished_run(http, "shop/checkout")

    assert set(run) >= RUN_KEYS
    assert run["function_id"] == "shop/checkout"
    assert run["status"] == "Completed"
    assert run["error"] is None
    assert run["attempt"] == 0
    assert run["output"] == {"fetched": {"n": 1}, "flaky": "ok", "charge": "NonRetriableError"}
    queued, started, ended = (parse_time(run[k]) for k in ("queued_at", "started_at",
                                                           "ended_at"))
    slack = timedelta(seconds=1)
    assert began - slack <= queued <= started <= ended <= datetime.now(UTC) + slack

    steps = {step["id"]: step for step in run["steps"]}
    assert list(steps) == ["fetch", "flaky", "charge"]
    for step in steps.values():
        assert set(step) >= STEP_KEYS
        assert step["kind"] == "run"
        assert parse_time(step["started_at"]) <= parse_time(step["ended_at"])
        assert started - slack <= parse_time(step["started_at"])
    assert (steps["fetch"]["status"], steps["fetch"]["attempts"]) == ("Completed", 1)
    assert steps["fetch"]["output"] == {"n": 1}
    assert (steps["flaky"]["status"], steps["flaky"]["attempts"]) == ("Completed", 2)
    assert (steps["flaky"]["output"], steps["flaky"]["error"]) == ("ok", None)
    charge = steps["charge"]
    assert (charge["status"], charge["attempts"], charge["output"]) == ("Failed", 1, None)
    assert charge["error"]["name"] == "NonRetriableError"
    assert charge["error"]["message"] == "card declined"

    listed = await runs(http, function_id="shop/checkout", status="Completed")
    assert [r["id"] for r in listed] == [run["id"]]


async def test_a_failed_run_has_the_shape_of_the_spec(http, shop):
    run = await finished_run(http, "shop/doomed")
    assert set(run) >= RUN_KEYS
    assert run["status"] == "Failed"
    assert run["output"] is None
    assert {k: run["error"][k] for k in ("name", "message")} == {
        "name": "NonRetriableError", "message": "nothing to do"}
    assert parse_time(run["started_at"]) <= parse_time(run["ended_at"])
    assert run["steps"] == []


async def test_a_retry_after_of_forever_parks_the_run_for_a_day(http, shop):
    r = await http.post(f"/e/{EVENT_KEY}", json={"name": "shop/patient"})
    (event_id,) = r.json()["ids"]

    async def parked():
        found = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
        return found[0] if found and found[0]["status"] == "Queued" and found[0]["steps"] \
            else None

    run = await eventually(parked, timeout=10, what="the run to park")
    (step,) = run["steps"]
    assert (step["id"], step["status"], step["attempts"]) == ("wait", "Retrying", 1)
    assert step["error"]["name"] == "RetryAfterError"
    assert len((await http.get("/v1/workers")).json()["data"]) == 1
    assert metric((await http.get("/metrics")).text, "batches_failed_total") == 0


async def test_an_api_key_opens_the_management_api_but_not_the_worker_socket(gateway_factory):
    gw = await gateway_factory(dev=False, signing_keys=[KEY], event_keys=[EVENT_KEY],
                               api_keys=[OPS_KEY])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        r = await client.get("/v1/runs", headers={"authorization": f"Bearer {OPS_KEY}"})
        assert r.status_code == 200
        r = await client.get("/v1/runs", headers={"authorization": f"Bearer {OPS_KEY}x"})
        assert r.status_code == 401
    # A worker answering the challenge with the API key is refused: only signing keys serve.
    from protocol import auth as proof
    from protocol.errors import AuthError

    with pytest.raises(AuthError):
        gw.auth.check_worker(b"nonce", "w", proof.answer(OPS_KEY, b"nonce", "w"))
    gw.auth.check_worker(b"nonce", "w", proof.answer(KEY, b"nonce", "w"))


async def test_accepted_ids_come_back_as_json_dumps_writes_them(http):
    # The answer is written by orjson: the same bytes and type as Starlette's JSONResponse
    # (json.dumps, ensure_ascii=False, compact), whatever characters the ids hold.
    ids = ["plain", "ünïcödé ✓", "quote\" and \\ back", "tab\tnew\nline\x01\x1f\x7f",
           "line\u2028sep\u2029", "emoji 🎉", "</script>"]
    r = await http.post(f"/e/{EVENT_KEY}", json=[event(id=i) for i in ids])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.content == json.dumps({"ids": ids, "status": 200}, ensure_ascii=False,
                                   allow_nan=False, separators=(",", ":")).encode()
