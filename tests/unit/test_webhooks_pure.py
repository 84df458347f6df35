"""The pure parts of webhooks: signature schemes, masking, and the CEL transform."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from gateway.http.signatures import (
    STRIPE_TOLERANCE,
    SignatureInvalid,
    check_verify,
    masked,
    verify,
)
from gateway.http.transform import apply, check_transform, request_body
from protocol.errors import ExpressionError, InvalidInput

SECRET = "whsec_unit-test-secret"
BODY = b'{"a": 1}'
NOW = 1_700_000_000.0


def sig(message: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_github_accepts_its_signature_only():
    config = check_verify({"scheme": "github", "secret": SECRET})
    assert config == {"scheme": "github", "secret": SECRET, "header": "x-hub-signature-256"}
    verify(config, {"x-hub-signature-256": f"sha256={sig(BODY)}"}, BODY, now=NOW)
    for value in (sig(BODY), f"sha256={sig(BODY, 'x')}", f"sha256={sig(BODY)[:-1]}", "sha256="):
        with pytest.raises(SignatureInvalid):
            verify(config, {"x-hub-signature-256": value}, BODY, now=NOW)
    with pytest.raises(SignatureInvalid, match="missing"):
        verify(config, {}, BODY, now=NOW)


@pytest.mark.parametrize("skew", [-STRIPE_TOLERANCE, 0, STRIPE_TOLERANCE])
def test_stripe_accepts_within_its_tolerance(skew):
    config = check_verify({"scheme": "stripe", "secret": SECRET})
    t = int(NOW + skew)
    header = f"t={t},v1={sig(b'bad')},v1={sig(f'{t}.'.encode() + BODY)}"
    verify(config, {"stripe-signature": header}, BODY, now=NOW)


@pytest.mark.parametrize("skew", [-STRIPE_TOLERANCE - 1, STRIPE_TOLERANCE + 1])
def test_stripe_refuses_outside_its_tolerance(skew):
    config = check_verify({"scheme": "stripe", "secret": SECRET})
    t = int(NOW + skew)
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify(config, {"stripe-signature": f"t={t},v1={sig(f'{t}.'.encode() + BODY)}"},
               BODY, now=NOW)


def test_hmac_reads_the_named_header_and_needs_one():
    with pytest.raises(InvalidInput, match=r"verify\.header"):
        check_verify({"scheme": "hmac-sha256", "secret": SECRET})
    config = check_verify({"scheme": "hmac-sha256", "secret": SECRET, "header": "X-Sig"})
    verify(config, {"x-sig": sig(BODY).upper()}, BODY, now=NOW)
    verify(config, {"x-sig": f"sha256={sig(BODY)}"}, BODY, now=NOW)
    with pytest.raises(SignatureInvalid):
        verify(config, {"x-sig": sig(BODY + b" ")}, BODY, now=NOW)


def test_secrets_are_masked():
    assert masked(None) is None
    assert masked({"scheme": "github", "secret": SECRET, "header": "h"})["secret"] == "whse…"
    assert masked({"scheme": "github", "secret": "short", "header": "h"})["secret"] == "…"


def test_transforms_read_body_headers_and_query_and_give_an_event():
    source = check_transform('{"name": "x/" + query.k, "data": {"b": body, "h": headers["h"]}}')
    event = orjson.loads(apply(source, {"n": 1}, {"h": "v"}, {"k": "y"}))
    assert event == {"name": "x/y", "data": {"b": {"n": 1}, "h": "v"}}
    with pytest.raises(ExpressionError, match="map"):
        check_transform('{"name": "x", "data": {"l": body.l.map(i, i)}}')
    with pytest.raises(InvalidInput, match="not a map"):
        apply(check_transform("[1]"), None, {}, {})
    with pytest.raises(InvalidInput, match="unknown field"):
        apply(check_transform('{"name": "x", "other": 1}'), None, {}, {})
    with pytest.raises(InvalidInput, match="transform failed"):
        apply(check_transform('{"name": body.missing}'), {}, {}, {})


def test_bodies_are_json_forms_or_empty():
    assert request_body(b"", None) is None
    assert request_body(b'{"a": [1]}', "application/json") == {"a": [1]}
    assert request_body(b"a=1&a=2&b=", "application/x-www-form-urlencoded; charset=utf-8") == {
        "a": "1", "b": ""}
    with pytest.raises(InvalidInput, match="not valid JSON"):
        request_body(b"a=1", "text/plain")
