"""Webhook signatures: is this raw body signed with the webhook's secret? Pure functions.

Schemes (SPEC §4), each an HMAC-SHA256 of the raw body bytes, compared in constant time:

- ``github``: ``X-Hub-Signature-256: sha256=<hex>``;
- ``stripe``: ``Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...]`` over ``"{t}.{body}"``,
  refused when ``t`` is more than :data:`STRIPE_TOLERANCE` from the gateway's clock (either
  way: a replayed old request, or a clock far off);
- ``hmac-sha256``: ``<hex>`` (or ``sha256=<hex>``) in the header the webhook names.

``header`` may rename the header of any scheme. The secret is kept as given (HMAC needs it)
and never shown in full: :func:`masked` is what the API returns.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from protocol.errors import AuthError, InvalidInput
from protocol.names import check_no_nul

#: Where each scheme's signature is, by default (None: the webhook must name a header).
SCHEMES: dict[str, str | None] = {
    "github": "x-hub-signature-256",
    "stripe": "stripe-signature",
    "hmac-sha256": None,
}
#: Seconds a Stripe signature's timestamp may be from the gateway's clock (Stripe's default).
STRIPE_TOLERANCE = 300.0
MAX_SECRET = 1024
MAX_HEADER_NAME = 256
#: Characters of a secret the API shows; shorter secrets show none.
_SHOWN = 4
_SHOW_FROM = 12
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


class SignatureInvalid(AuthError):
    """A webhook request whose signature is missing, malformed, stale or wrong."""

    code = "signature_invalid"
    http_status = 401


def check_verify(value: Any) -> dict[str, Any] | None:
    """The ``verify`` of a new webhook, normalised (header names lower-cased).

    Raises:
        InvalidInput: naming the field that is wrong and what it accepts.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("'verify' must be null or an object {\"scheme\", \"secret\", "
                           "\"header\"?}")
    unknown = sorted(set(value) - {"scheme", "secret", "header"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} in 'verify'; allowed: header, "
                           "scheme, secret")
    scheme = value.get("scheme")
    if scheme not in SCHEMES:
        raise InvalidInput(f"'verify.scheme' must be one of {', '.join(SCHEMES)}, got "
                           f"{str(scheme)[:40]!r}")
    secret = value.get("secret")
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET:
        raise InvalidInput(f"'verify.secret' must be a non-empty string of at most "
                           f"{MAX_SECRET} characters (the secret the sender signs with)")
    check_no_nul(secret, "'verify.secret'")
    header = value.get("header", SCHEMES[scheme])
    if header is None:
        raise InvalidInput(f"'verify.header' is required with scheme {scheme!r}: the name of "
                           "the header that carries the hex signature")
    if (not isinstance(header, str) or not header or len(header) > MAX_HEADER_NAME
            or not set(header.lower()) <= _TOKEN):
        raise InvalidInput("'verify.header' must be an HTTP header name such as "
                           "'X-Signature'")
    return {"scheme": scheme, "secret": secret, "header": header.lower()}


def masked(verify: dict[str, Any] | None) -> dict[str, Any] | None:
    """``verify`` as the API shows it: the secret cut to its first characters."""
    if verify is None:
        return None
    secret = verify["secret"]
    shown = secret[:_SHOWN] if len(secret) >= _SHOW_FROM else ""
    return {**verify, "secret": f"{shown}…"}


def _sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode("ascii",
                                                                                 "replace"))


def verify(config: dict[str, Any], headers: Mapping[str, str], body: bytes, *,
           now: float) -> None:
    """Check the request's signature against ``config`` (a stored, normalised ``verify``).

    Raises:
        SignatureInvalid: saying what is wrong (never the expected signature).
    """
    header = config["header"]
    given = headers.get(header)
    if given is None:
        raise SignatureInvalid(f"webhook signature missing: no {header!r} header; the "
                               f"webhook verifies {config['scheme']} signatures")
    if config["scheme"] == "stripe":
        _verify_stripe(config["secret"], header, given, body, now)
        return
    if config["scheme"] == "github" and not given.startswith("sha256="):
        raise SignatureInvalid(f"webhook signature malformed: {header!r} must be "
                               "'sha256=<hex HMAC-SHA256 of the body>'")
    if not _matches(_sign(config["secret"], body), given.removeprefix("sha256=")):
        raise SignatureInvalid("webhook signature does not match the body; check that the "
                               "sender and the webhook share the same secret")


def _verify_stripe(secret: str, header: str, given: str, body: bytes, now: float) -> None:
    timestamp: str | None = None
    signatures: list[str] = []
    for part in given.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not timestamp.isdigit() or len(timestamp) > 12 or not signatures:
        raise SignatureInvalid(f"webhook signature malformed: {header!r} must be "
                               "'t=<unix seconds>,v1=<hex>'")
    skew = abs(now - int(timestamp))
    if skew > STRIPE_TOLERANCE:
        raise SignatureInvalid(f"webhook signature timestamp is {skew:.0f} s away from the "
                               f"gateway's clock, over the {STRIPE_TOLERANCE:.0f} s tolerance "
                               "(a replayed request, or a clock far off)")
    expected = _sign(secret, timestamp.encode() + b"." + body)
    # Every v1 entry is compared (no early exit), so timing says nothing of which matched.
    if not sum(_matches(expected, s) for s in signatures[:16]):
        raise SignatureInvalid("webhook signature does not match the body; check that the "
                               "sender and the webhook share the same secret")
