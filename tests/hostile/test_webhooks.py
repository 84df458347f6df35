"""Hostile requests to ``POST /webhooks/{id}`` of a real gateway process.

Bodies, headers and query strings from hypothesis (deep nesting, big and odd numbers, any
unicode, bytes that are not text) against webhooks whose transforms read them whole and in
part, signed and not: every answer is 200, 400, 401 or 413 with a JSON error, never a 5xx,
and afterwards a normal event still gets 200 and a normal run completes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import E2E
from tests.helpers.waiting import bound
from tests.hostile.support import serving_gateway, still_serves

pytestmark = pytest.mark.e2e

SECRET = "hostile-secret-0123456789"
TRANSFORMS = {
    "whole": '{"name": "hostile/whole", "data": {"b": body, "h": headers, "q": query}}',
    "fields": '{"name": "hostile/" + string(body.kind), "data": {"n": body.n + 1, '
              '"s": size(body.s)}, "id": query.id}',
    "headers": '{"name": "hostile/h", "data": {"x": headers["x-thing"]}, "id": headers["x-id"]}',
}
ALLOWED = {200, 400, 401, 413}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from serving_gateway(tmp_path_factory, "hostile-webhooks", "--max-event-size", "65536")


@pytest.fixture(scope="module")
def hooks(gw: E2E) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=gw.cluster.api, timeout=bound(10)) as client:
        for name, transform in TRANSFORMS.items():
            for signed in (False, True):
                body: dict[str, Any] = {"name": name, "transform": transform}
                if signed:
                    body["verify"] = {"scheme": "github", "secret": SECRET}
                r = client.post("/v1/webhooks", json=body)
                assert r.status_code == 201, r.text
                out[f"{name}{'-signed' if signed else ''}"] = r.json()["url"]
    return out


numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=50))
json_values = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                    st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30)


def deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"kind": json_values, "n": numbers, "s": json_values}).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.builds(deep, st.sampled_from([10, 200, 254, 255, 256, 1000, 1024, 1025, 5000]),
              st.sampled_from(["list", "map"])),
    st.sampled_from([b"", b"   ", b"NaN", b'{"n": Infinity}', b'"\\ud800"',
                     b'{"n": 1e400}', b"1" * 5000, b'{"s": "' + b"x" * 70_000 + b'"}',
                     # over 16 KiB: transformed in the child process
                     json.dumps({"kind": "a", "n": 1, "s": "x" * 30_000}).encode(),
                     b"[" + b"[]," * 8000 + b"[]]", b"\xff" * 20_000]),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=100).map(
    str.strip)  # h11 refuses to send a value with outer spaces
headers = st.dictionaries(
    st.sampled_from(["x-thing", "x-id", "x-hub-signature-256", "content-type", "x-other"]),
    header_text, max_size=4)
queries = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4)


def check(r: httpx.Response, what: str) -> None:
    assert r.status_code in ALLOWED, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code != 200:
        assert isinstance(r.json().get("error"), str), f"{what}: {r.text[:300]}"


def test_hostile_requests_get_a_clean_answer(gw, hooks):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies, extra=headers, query=queries, hook=st.sampled_from(sorted(TRANSFORMS)),
           signed=st.booleans(), sign_right=st.booleans())
    def attack(body, extra, query, hook, signed, sign_right):
        url = hooks[f"{hook}{'-signed' if signed else ''}"]
        sent = dict(extra)
        if signed and sign_right:
            digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            sent["x-hub-signature-256"] = f"sha256={digest}"
        with httpx.Client(base_url=gw.cluster.api, timeout=bound(30)) as client:
            r = client.post(url, content=body, params=query, headers=sent)
        check(r, f"{hook} signed={signed} body={body[:80]!r}")
        if signed and not sign_right and "x-hub-signature-256" not in extra:
            assert r.status_code in (401, 413), r.text

    attack()
    still_serves(gw)


def test_unknown_and_malformed_webhook_ids_are_404(gw):
    with httpx.Client(base_url=gw.cluster.api, timeout=bound(10)) as client:
        for path in ("/webhooks/wh_" + "A" * 22, "/webhooks/x", "/webhooks/" + "é" * 300,
                     "/webhooks/wh_%00" + "A" * 18):
            r = client.post(path, content=b"{}")
            assert r.status_code == 404 and "error" in r.json(), (path, r.text)
    still_serves(gw)


def test_the_gateway_still_serves_after_the_attacks(gw, hooks):
    with httpx.Client(base_url=gw.cluster.api, timeout=bound(10)) as client:
        r = client.post(hooks["whole"], json={"ok": True})
        assert r.status_code == 200, r.text
        large = {"ok": True, "pad": ["é" * 100] * 200}  # over 16 KiB: the child process
        r = client.post(hooks["whole"], json=large)
        assert r.status_code == 200, r.text
        (event_id,) = r.json()["ids"]
        assert client.get(f"/v1/events/{event_id}").json()["data"]["b"] == large
    still_serves(gw)
