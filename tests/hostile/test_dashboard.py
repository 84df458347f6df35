"""Hostile browsers and scripts against the dashboard of a secured gateway process.

Pages without a session, forged sessions and CSRF tokens, cross-origin posts, an open redirect
through ``next``, markup in event data, oversized forms, garbage query strings and paths.
After each attack the gateway still answers a normal event with 200 and completes a normal run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e

KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
PAGES = ["/", "/functions", "/workers", "/events", "/runs/01M8P5EGG0ZEQQ2XV4FZB9VQNZ"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("dashboard")) / "cluster",
                      gateway_args=["--retry-base", "0.05", "--log-format", "json"])
    e2e = E2E(cluster)
    try:
        e2e.start_gateway("--signing-key", KEY, "--event-key", EVENT_KEY)
        e2e.headers = {"Authorization": f"Bearer {KEY}"}
        e2e.event_key = EVENT_KEY
        e2e.start_worker("--signing-key", KEY)
        e2e.wait_workers(1)
        yield e2e
    finally:
        cluster.stop()


@pytest.fixture
def client(gw: E2E) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.cluster.api, timeout=bound(10),
                      follow_redirects=False) as c:
        yield c


def still_serves(gw: E2E) -> None:
    key = gw.new_key()
    event_id = gw.send("e2e/three", key=key)
    run = gw.wait_final(gw.run_of(event_id)["id"])
    gw.check(run["status"] == "Completed", f"a normal run ended {run}")


def login(client: httpx.Client) -> str:
    """Log in with the signing key; the session's CSRF token."""
    r = client.post("/login", data={"key": KEY, "next": "/events"})
    assert r.status_code == 303, r.text
    page = client.get("/events")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_pages_need_a_session_and_forged_ones_get_nothing(gw: E2E, client: httpx.Client
                                                          ) -> None:
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    client.cookies.set("tether_session", "forged")
    assert client.get("/").status_code == 303
    for path in ("/runs/01M8P5EGG0ZEQQ2XV4FZB9VQNZ/cancel", "/events"):
        r = client.post(path, data={"csrf": "x", "name": "a", "data": "{}"})
        assert r.status_code == 403, (path, r.text)
    still_serves(gw)


def test_session_cookie_and_csrf(gw: E2E, client: httpx.Client) -> None:
    r = client.post("/login", data={"key": KEY})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert KEY not in cookie and "Secure" not in cookie  # plain http here
    csrf = login(client)
    r = client.post("/events", data={"name": "e2e/nothing", "data": "{}"})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = client.post("/events", data={"csrf": csrf + "x", "name": "e2e/nothing", "data": "{}"})
    assert r.status_code == 403
    # A stolen token is useless from another origin (and SameSite keeps the cookie home).
    r = client.post("/events", data={"csrf": csrf, "name": "e2e/nothing", "data": "{}"},
                    headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = client.post("/login", data={"key": KEY}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    still_serves(gw)


def test_login_refuses_wrong_keys_and_foreign_redirects(gw: E2E, client: httpx.Client
                                                        ) -> None:
    for key in ("", "x" * 10_000, EVENT_KEY, KEY + " ", "Bearer " + KEY):
        r = client.post("/login", data={"key": key})
        if key.strip() == KEY:
            continue  # surrounding blanks are trimmed, as a paste may carry them
        assert r.status_code == 401 and "set-cookie" not in r.headers, key[:20]
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:x"):
        r = client.post("/login", data={"key": KEY, "next": target})
        assert r.status_code == 303 and r.headers["location"] == "/", target
    still_serves(gw)


def test_markup_in_events_is_shown_as_text(gw: E2E, client: httpx.Client) -> None:
    csrf = login(client)
    evil = "<script>alert(1)</script>"
    r = client.post("/events", data={"csrf": csrf, "name": "e2e/" + evil,
                                     "data": '{"x": "' + evil.replace("/", "\\/") + '"}'})
    assert r.status_code == 200, r.text
    page = client.get("/events").text
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "script-src" not in client.get("/events").headers["content-security-policy"]
    still_serves(gw)


def test_oversized_and_garbage_input(gw: E2E, client: httpx.Client) -> None:
    csrf = login(client)
    r = client.post("/events", data={"csrf": csrf, "name": "e2e/big", "data": "x" * 300_000})
    assert r.status_code == 413, r.text
    r = client.post("/events", data={"csrf": csrf, "name": "e2e/bad", "data": "{not json"})
    assert r.status_code == 400 and "not valid JSON" in r.text
    for query in ("status=Nope", "cursor=%00" * 3, "cursor=" + "9" * 500,
                  "function_id=" + "f" * 5000, "status=Completed&status=Failed"):
        assert client.get("/?" + query).status_code == 200, query
    for query in ("cursor=" + "9" * 500, "cursor=-1", "name=%00"):
        assert client.get("/events?" + query).status_code == 200, query
    assert client.get("/runs/" + "x" * 3000).status_code == 404
    assert client.get("/runs/%00").status_code == 404
    r = client.post("/runs/%00/cancel", data={"csrf": csrf})
    assert r.status_code == 404, r.text
    for form in ({"action": "drop"}, {"action": "cancel", "status": "Nope"},
                 {"action": "cancel", "from": "yesterday"}, {"action": "replay", "if": "1 +"},
                 {"action": "replay", "cursor": "' OR 1"},
                 {"action": "cancel", "function_id": "\x00", "confirm": "1"}):
        r = client.post("/runs/bulk", data={"csrf": csrf, **form})
        assert r.status_code == 400, (form, r.text[:300])
    for query in ("if=1%20%2B", "from=soon", "to=" + "9" * 400, "text=" + "x" * 5000,
                  "if=" + "(" * 500):
        r = client.get("/?" + query)
        assert r.status_code == 200 and 'id="problem"' in r.text, query
    assert client.post("/runs/bulk", data={"action": "cancel"}).status_code == 403
    assert client.get("/static/../routes.py").status_code == 404
    assert client.get("/static/%2e%2e%2froutes.py").status_code == 404
    assert client.get("/static/live.js").status_code == 200
    still_serves(gw)
