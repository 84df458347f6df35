"""Who may talk to the gateway: workers (signing key), senders (event keys), operators (bearer).

Without ``--dev`` a signing key is required; with ``--dev`` everything is open, for local use.
Secrets are compared in constant time, and a refusal never says which part was wrong.

Keys come from two places: the command line (``--signing-key``, ``--event-key``,
``--api-key``), fixed for the process's life, and the store (``python -m gateway keys
create``), kept there as SHA-256 hashes and re-read every ``--key-refresh`` seconds, so a
revoked key is refused within that time on every gateway. A signing key being rotated out is
given with ``--previous-signing-key`` and is accepted until ``previous_until``.

Key strength (checked at startup, and by ``keys create``): a signing or API key must carry
256 bits (32 random bytes: 64 hex or 43 base64url characters); an event key, which can only
send events, 128 bits (32 hex or 22 base64url characters). The estimate counts characters
times the bits of the smallest alphabet that holds them (hex 4, base64url 6, printable ASCII
6.5), ignores a ``signkey-``/``evtkey-``/``apikey-`` prefix, and gives nothing to a key of
fewer than 8 distinct characters.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from protocol import auth
from protocol.errors import AuthError, InvalidInput

#: Bits a signing or API key must carry: 32 random bytes.
MIN_KEY_BITS = 256
#: Bits an event key must carry: 16 random bytes (it can only send events).
MIN_EVENT_KEY_BITS = 128
#: The prefix ``keys create`` gives each kind of key, so a leaked key says what it opens.
PREFIXES = {"signing": "signkey-", "event": "evtkey-", "api": "apikey-"}
#: Methods a read-only API key may use.
READ_METHODS = frozenset({"GET", "HEAD"})

_HEX = frozenset(string.hexdigits)
_B64URL = frozenset(string.ascii_letters + string.digits + "-_")


def key_bits(key: str) -> float:
    """A conservative estimate of the randomness in ``key``, in bits (see module docstring)."""
    secret = key
    for prefix in PREFIXES.values():
        if secret.startswith(prefix):
            secret = secret[len(prefix):]
            break
    if len(set(secret)) < 8:
        return 0.0
    chars = set(secret)
    alphabet = 16 if chars <= _HEX else 64 if chars <= _B64URL else 95
    return len(secret) * math.log2(alphabet)


def check_strength(key: str, *, what: str, kind: str) -> None:
    """Refuse a key weaker than its kind's minimum, saying how to make a good one.

    The key itself never appears in the message (it ends up in logs and terminals).

    Raises:
        InvalidInput: naming ``what`` (e.g. "--signing-key #1") and the minimum.
    """
    minimum = MIN_EVENT_KEY_BITS if kind == "event" else MIN_KEY_BITS
    bits = key_bits(key)
    if bits >= minimum:
        return
    size = minimum // 8
    found = "empty" if not key else f"about {bits:.0f} bits"
    make = ("python -m gateway keys create --kind " + kind + " --db URL"
            if kind != "signing" else "python -m gateway keys create --kind signing")
    raise InvalidInput(
        f"{what} is too weak ({found}; at least {minimum} bits are needed: {size} random "
        f"bytes, written as {size * 2} hex or {math.ceil(size * 4 / 3)} base64url characters); "
        f"make one with `{make}` or "
        f"`python -c 'import secrets; print(secrets.token_urlsafe({size}))'`"
    )


def new_key(kind: str) -> str:
    """A fresh key of ``kind`` ("signing", "event" or "api"): its prefix and 32 random bytes."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """How a key is stored: SHA-256, hex. Keys are random, so no salt or slow hash is needed."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An active key from the store, as the gateway needs it to decide."""

    hash: str
    kind: str  # "event" or "api"
    read_only: bool = False


class Authenticator:
    def __init__(self, *, dev: bool, signing_keys: list[str], event_keys: list[str],
                 api_keys: list[str] | None = None,
                 previous_signing_keys: Sequence[str] = (),
                 previous_until: float | None = None,
                 now: Callable[[], float] | None = None) -> None:
        self.dev = dev
        self.signing_keys = signing_keys
        self.event_keys = event_keys
        self.api_keys = api_keys or []
        self.previous_signing_keys = list(previous_signing_keys)
        self.previous_until = previous_until
        self._now = now
        self._stored_events: frozenset[str] = frozenset()
        self._stored_api: dict[str, bool] = {}

    def load(self, stored: Iterable[StoredKey]) -> None:
        """Replace the keys read from the store (every refresh): revoked ones drop out."""
        keys = list(stored)
        self._stored_events = frozenset(k.hash for k in keys if k.kind == "event")
        self._stored_api = {k.hash: k.read_only for k in keys if k.kind == "api"}

    def worker_keys(self) -> list[str]:
        """The signing keys a worker may prove it holds now (previous ones during their grace)."""
        previous = [] if self.previous_expired() else self.previous_signing_keys
        return self.signing_keys + previous

    def check_worker(self, nonce: bytes, instance_id: str, mac: bytes) -> bool:
        """Raises AuthError unless ``mac`` proves the worker holds a signing key.

        Returns True when the key was a previous one: the socket is closed when it expires.
        """
        if self.dev:
            return False
        if auth.verify(self.signing_keys, nonce, instance_id, mac):
            return False
        if auth.verify(self.worker_keys()[len(self.signing_keys):], nonce, instance_id, mac):
            return True
        raise AuthError(
            "the worker's answer to the challenge does not match the gateway's signing key; "
            "start the worker with the same --signing-key (or TETHER_SIGNING_KEY)"
        )

    def previous_expired(self) -> bool:
        """Whether the previous signing keys' grace is over."""
        until, now = self.previous_until, self._now
        return until is not None and now is not None and now() >= until

    def check_event_key(self, key: str) -> None:
        """Raises AuthError unless ``key`` is a known event key (any key in --dev without keys)."""
        if self.dev and not self.event_keys and not self._stored_events:
            return
        if not (_known(key, self.event_keys) or key_hash(key) in self._stored_events):
            raise AuthError(
                "unknown event key; send events to /e/<key> with a key given to the gateway "
                "with --event-key (or TETHER_EVENT_KEY) or made with `python -m gateway keys "
                "create`"
            )

    def check_bearer(self, header: str | None, method: str = "GET") -> None:
        """Raises AuthError unless ``header`` is ``Bearer <signing or API key>`` (open in --dev).

        A read-only API key from the store opens only GET and HEAD.
        """
        if self.dev:
            return
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if _known(token, self.worker_keys() + self.api_keys):
                return
            read_only = self._stored_api.get(key_hash(token))
            if read_only is False or (read_only and method.upper() in READ_METHODS):
                return
            if read_only:
                raise AuthError(f"this API key is read-only: {method} is not allowed with it; "
                                "use a key made without --read-only")
        raise AuthError(
            "missing or wrong credentials; send 'Authorization: Bearer <signing key or "
            "API key>'"
        )

    def stored_api_key(self, hash_: str) -> bool | None:
        """Whether the stored API key with SHA-256 ``hash_`` is read-only; None once revoked
        (or never stored). The dashboard asks on every request of a session made with one."""
        return self._stored_api.get(hash_)


def _known(secret: str, keys: list[str]) -> bool:
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(secret.encode(), key.encode())
    return found
