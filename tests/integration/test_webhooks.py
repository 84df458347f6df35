"""Webhooks and the event log through an in-process gateway's real port, on both backends.

The gateway runs without ``--dev`` and on a :class:`FakeClock`, so Stripe's timestamp
tolerance is tested by moving the clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from typing import Any

import httpx
import pytest

from gateway.clock import FakeClock
from protocol import messages as m
from tests.helpers.waiting import bound
from tests.integration.raw_worker import EVENT, FUNCTION, RawWorker

KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
SECRET = "whsec_5ecret-that-is-long-enough"
TRANSFORM = '{"name": "raw/" + body.action, "data": body, "id": headers["x-delivery"]}'


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def gw(gateway_factory, clock):
    return await gateway_factory(clock=clock, dev=False, signing_keys=[KEY],
                                 event_keys=[EVENT_KEY], max_event_size=64 * 1024)


@pytest.fixture
async def http(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                 headers={"authorization": f"Bearer {KEY}"},
                                 timeout=bound(10)) as client:
        yield client


async def make(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await http.post("/v1/webhooks", json={"name": "test", "transform": TRANSFORM, **fields})
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    return hook


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(http: httpx.AsyncClient, hook: dict[str, Any], body: bytes,
               **headers: str) -> httpx.Response:
    return await http.post(hook["url"], content=body, headers={
        "authorization": "", "content-type": "application/json", **headers})


async def event_log(http: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await http.get("/v1/events", params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


# --- managing webhooks --------------------------------------------------------------------


async def test_webhooks_are_made_listed_shown_and_deleted_with_the_secret_masked(http):
    verify = {"scheme": "github", "secret": SECRET}
    hook = await make(http, verify=verify)
    assert re.fullmatch(r"wh_[A-Za-z0-9_-]{22}", hook["id"])
    assert hook["verify"] == {"scheme": "github", "secret": "whse…",
                              "header": "x-hub-signature-256"}
    assert hook["transform"] == TRANSFORM and hook["name"] == "test"
    assert hook["created_at"].endswith("Z")
    listed = (await http.get("/v1/webhooks")).json()
    assert listed == {"data": [hook], "cursor": None}
    assert (await http.get(f"/v1/webhooks/{hook['id']}")).json() == hook
    assert SECRET not in (await http.get("/v1/webhooks")).text
    short = await make(http, verify={"scheme": "hmac-sha256", "secret": "tiny",
                                     "header": "X-Sig"})
    assert short["verify"] == {"scheme": "hmac-sha256", "secret": "…", "header": "x-sig"}

    r = await http.delete(f"/v1/webhooks/{hook['id']}")
    assert r.status_code == 200 and r.json() == {"id": hook["id"], "deleted": True}
    assert (await http.get(f"/v1/webhooks/{hook['id']}")).status_code == 404
    assert (await http.delete(f"/v1/webhooks/{hook['id']}")).status_code == 404
    r = await post(http, hook, b'{"action": "go"}')
    assert r.status_code == 404 and "no such webhook" in r.json()["error"]


BAD_WEBHOOKS = {
    "no name": ({"transform": TRANSFORM}, "'name'"),
    "no transform": ({"name": "x"}, "'transform' is required"),
    "an unknown field": ({"name": "x", "transform": TRANSFORM, "secret": "s"},
                         "unknown field 'secret'"),
    "a transform that does not parse": ({"name": "x", "transform": '{"name": '},
                                        "invalid CEL"),
    "a transform reading another variable": ({"name": "x", "transform": "event.data"},
                                             "unknown variable"),
    "a comprehension macro": ({"name": "x", "transform":
                               '{"name": "a", "data": {"x": body.xs.map(x, x)}}'}, "map"),
    "a transform too deep": ({"name": "x", "transform": "(" * 40 + "1" + ")" * 40},
                             "nested too deeply"),
    "an unknown scheme": ({"name": "x", "transform": TRANSFORM,
                           "verify": {"scheme": "md5", "secret": "s"}}, "verify.scheme"),
    "no secret": ({"name": "x", "transform": TRANSFORM, "verify": {"scheme": "github"}},
                  "verify.secret"),
    "hmac without a header": ({"name": "x", "transform": TRANSFORM,
                               "verify": {"scheme": "hmac-sha256", "secret": "s"}},
                              "verify.header"),
    "a field unknown to verify": ({"name": "x", "transform": TRANSFORM, "verify": {
        "scheme": "github", "secret": "s", "tolerance": 1}}, "unknown field 'tolerance'"),
}


async def test_a_bad_webhook_is_refused_saying_why(http):
    for what, (body, says) in BAD_WEBHOOKS.items():
        r = await http.post("/v1/webhooks", json=body)
        assert r.status_code == 400, f"{what}: {r.status_code} {r.text}"
        assert says in r.json()["error"], f"{what}: {r.json()['error']!r}"
    r = await http.post("/v1/webhooks", content=b"x" * (65 * 1024))
    assert r.status_code == 413
    assert (await http.get("/v1/webhooks")).json()["data"] == []
    assert (await http.get("/v1/webhooks", params={"all": "1"})).status_code == 400


async def test_managing_webhooks_needs_the_bearer(http, gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as anonymous:
        assert (await anonymous.get("/v1/webhooks")).status_code == 401
        r = await anonymous.post("/v1/webhooks", json={"name": "x", "transform": TRANSFORM})
        assert r.status_code == 401
        assert (await anonymous.get("/v1/events")).status_code == 401
    assert (await http.get("/v1/webhooks")).json()["data"] == []


# --- receiving: verification --------------------------------------------------------------


async def test_github_signatures_are_checked(http):
    hook = await make(http, verify={"scheme": "github", "secret": SECRET})
    body = b'{"action": "go", "n": 1}'
    good = await post(http, hook, body, **{"X-Hub-Signature-256": f"sha256={sign(body)}",
                                           "X-Delivery": "d-1"})
    assert good.status_code == 200, good.text
    assert good.json()["ids"] == ["d-1"]
    for headers in ({"X-Hub-Signature-256": f"sha256={sign(body, 'other')}"},
                    {"X-Hub-Signature-256": sign(body)},  # no sha256= prefix
                    {"X-Hub-Signature-256": f"sha256={sign(body + b' ')}"},
                    {}):
        r = await post(http, hook, body, **headers, **{"X-Delivery": "d-2"})
        assert r.status_code == 401, (headers, r.text)
        assert "signature" in r.json()["error"]
    assert [e["id"] for e in (await event_log(http))["data"]] == ["d-1"]


async def test_stripe_signatures_are_checked_within_five_minutes(http, clock):
    hook = await make(http, verify={"scheme": "stripe", "secret": SECRET})
    body = b'{"action": "go"}'

    def stripe(t: int, *secrets: str) -> str:
        return ",".join([f"t={t}"] + [f"v1={sign(f'{t}.'.encode() + body, s)}"
                                      for s in secrets])

    now = int(clock.now())
    ok = await post(http, hook, body, **{"Stripe-Signature": stripe(now, "old", SECRET),
                                         "X-Delivery": "s-1"})
    assert ok.status_code == 200, ok.text
    wrong = await post(http, hook, body, **{"Stripe-Signature": stripe(now, "old"),
                                            "X-Delivery": "s-2"})
    assert wrong.status_code == 401
    clock.advance(301)
    late = await post(http, hook, body, **{"Stripe-Signature": stripe(now, SECRET),
                                           "X-Delivery": "s-3"})
    assert late.status_code == 401 and "tolerance" in late.json()["error"]
    fresh = await post(http, hook, body, **{"Stripe-Signature": stripe(now + 1, SECRET),
                                            "X-Delivery": "s-4"})
    assert fresh.status_code == 200, fresh.text
    for header in ("v1=abc", f"t=x,v1={sign(body)}", f"t={now}"):
        r = await post(http, hook, body, **{"Stripe-Signature": header, "X-Delivery": "s-5"})
        assert r.status_code == 401 and "malformed" in r.json()["error"]
    assert {e["id"] for e in (await event_log(http))["data"]} == {"s-1", "s-4"}


async def test_plain_hmac_signatures_are_checked_in_the_named_header(http):
    hook = await make(http, verify={"scheme": "hmac-sha256", "secret": SECRET,
                                    "header": "X-Signature"})
    body = b'{"action": "go"}'
    ok = await post(http, hook, body, **{"X-Signature": sign(body).upper(), "X-Delivery": "h1"})
    assert ok.status_code == 200, ok.text
    r = await post(http, hook, body, **{"X-Signature": sign(b"{}"), "X-Delivery": "h2"})
    assert r.status_code == 401


# --- receiving: the transform -------------------------------------------------------------


async def test_a_webhook_starts_runs_like_an_event(http, gw):
    worker = await RawWorker.ready_on(gw.connect_port, key=KEY)
    try:
        hook = await make(http, transform='{"name": "raw/" + query.kind, "data": '
                                          '{"who": headers["x-who"], "n": body.n}}')
        r = await post(http, hook, b'{"n": 7}', **{"X-Who": "me"})
        assert r.status_code == 400 and "kind" in r.json()["error"]  # no ?kind=
        r = await http.post(hook["url"] + "?kind=go", content=b'{"n": 7}',
                            headers={"x-who": "me", "authorization": ""})
        assert r.status_code == 200, r.text
        (event_id,) = r.json()["ids"]
        lease = await worker.expect(m.LeaseGranted)
        assert lease.function_id == FUNCTION
        shown = (await http.get(f"/v1/events/{event_id}")).json()
        assert shown["name"] == EVENT and shown["data"] == {"who": "me", "n": 7}
        assert shown["run_ids"] == [lease.run_id]
        assert shown["user"] is None and isinstance(shown["ts"], int)
        assert shown["received_at"].endswith("Z")
    finally:
        await worker.close()


async def test_a_transform_error_answers_400_and_stores_nothing(http):
    hook = await make(http)
    cases = {
        b'{"n": 1}': "transform failed",  # body.action is missing
        b"not json": "not valid JSON",
        b'{"action": "go"}': "transform failed",  # no x-delivery header
    }
    for body, says in cases.items():
        r = await post(http, hook, body)
        assert r.status_code == 400, r.text
        assert says in r.json()["error"], r.json()
    shapes = {
        '"a string"': "not a map",
        '{"name": "raw/go", "data": [1]}': "'data' must be a JSON object",
        '{"name": "raw/go", "extra": 1}': "unknown field 'extra'",
        '{"name": "tether/function.failed"}': "reserved",
        '{"data": {}}': "'name' is required",
        '{"name": "raw/go", "data": {"b": b"bytes"}}': "JSON cannot hold",
    }
    for transform, says in shapes.items():
        odd = await make(http, transform=transform)
        r = await post(http, odd, b"{}")
        assert r.status_code == 400, (transform, r.text)
        assert says in r.json()["error"], (transform, r.json())
    big = await make(http, transform='{"name": "raw/go", "data": {"a": body.s, "b": body.s}}')
    r = await post(http, big, json.dumps({"s": "x" * 40_000}).encode())
    assert r.status_code == 413, r.text
    r = await post(http, big, json.dumps({"s": "x" * 70_000}).encode())
    assert r.status_code == 413 and "max-event-size" in r.json()["error"]
    assert (await event_log(http))["data"] == []


async def test_forms_empty_bodies_and_an_event_id_dedup(http):
    hook = await make(http, transform='{"name": "raw/go", "data": {"b": body}, '
                                      '"id": query.id}')
    r = await http.post(hook["url"] + "?id=form-1", content=b"a=1&b=two&a=3",
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert (await http.get("/v1/events/form-1")).json()["data"] == {"b": {"a": "1", "b": "two"}}
    r = await http.post(hook["url"] + "?id=empty-1")
    assert r.status_code == 200, r.text
    assert (await http.get("/v1/events/empty-1")).json()["data"] == {"b": None}
    again = await http.post(hook["url"] + "?id=empty-1")
    assert again.status_code == 200 and again.json()["ids"] == ["empty-1"]
    assert len((await event_log(http))["data"]) == 2


async def test_a_deleted_webhook_stops_on_another_gateway_promptly(gateway_factory, db_url):
    if not db_url.startswith("postgres"):
        pytest.skip("several gateways share a PostgreSQL database only")
    one = await gateway_factory(dev=True)
    two = await gateway_factory(dev=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{one.http_port}") as a, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{two.http_port}") as b:
        hook = (await a.post("/v1/webhooks", json={"name": "x", "transform":
                                                   '{"name": "raw/go"}'})).json()
        assert (await b.post(hook["url"])).status_code == 200
        assert (await a.delete(f"/v1/webhooks/{hook['id']}")).status_code == 200
        assert (await a.post(hook["url"])).status_code == 404
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound(5)
        while (await b.post(hook["url"])).status_code != 404:
            assert loop.time() < deadline, "the other gateway still serves a deleted webhook"
            await asyncio.sleep(0.05)


# --- the event log ------------------------------------------------------------------------


async def test_the_event_log_pages_newest_first_stably_while_events_arrive(http):
    async def send(*names: str) -> list[str]:
        r = await http.post(f"/e/{EVENT_KEY}", json=[{"name": n} for n in names])
        assert r.status_code == 200
        ids: list[str] = r.json()["ids"]
        return ids

    first = await send(*["a/one", "b/two"] * 5)
    page1 = await event_log(http, limit=3)
    assert [e["id"] for e in page1["data"]] == first[::-1][:3]
    later = await send("a/one", "a/one")
    page2 = await event_log(http, limit=3, cursor=page1["cursor"])
    assert [e["id"] for e in page2["data"]] == first[::-1][3:6]
    rest = await event_log(http, limit=100, cursor=page2["cursor"])
    assert [e["id"] for e in rest["data"]] == first[::-1][6:] and rest["cursor"] is None
    named = await event_log(http, name="a/one", limit=100)
    assert [e["id"] for e in named["data"]] == later[::-1] + first[::2][::-1]
    assert all(e["name"] == "a/one" for e in named["data"])
    for params, says in (({"cursor": "abc"}, "malformed cursor"),
                         ({"cursor": "9" * 19}, "malformed cursor"),
                         ({"limit": "0"}, "between 1 and 100"),
                         ({"limit": "101"}, "between 1 and 100"),
                         ({"limit": "x"}, "whole number"),
                         ({"nme": "a"}, "unknown query parameter 'nme'")):
        r = await http.get("/v1/events", params=params)
        assert r.status_code == 400 and says in r.json()["error"], (params, r.text)
    r = await http.get("/v1/events/nope")
    assert r.status_code == 404 and "no event" in r.json()["error"]
    assert (await http.get(f"/v1/events/{first[0]}", params={"x": 1})).status_code == 400


async def test_a_large_body_is_transformed_like_a_small_one(http):
    """Bodies over 16 KiB are transformed in a child process: same answers, same events."""
    hook = await make(http)
    items = [{"k": i, "v": [i, None, True, "é"]} for i in range(700)]
    body = json.dumps({"action": "go", "items": items}).encode()
    assert len(body) > 16 * 1024
    r = await post(http, hook, body, **{"X-Delivery": "big-1"})
    assert r.status_code == 200, r.text
    shown = (await http.get("/v1/events/big-1")).json()
    assert shown["name"] == "raw/go" and shown["data"]["items"] == items
    for bad, says in ((body.replace(b'"action"', b'"other"'), "transform failed"),
                      (b"x" * 20_000, "not valid JSON")):
        r = await post(http, hook, bad, **{"X-Delivery": "big-2"})
        assert r.status_code == 400 and says in r.json()["error"], r.text
    assert [e["id"] for e in (await event_log(http))["data"]] == ["big-1"]
