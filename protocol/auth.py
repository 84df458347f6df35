"""The connect handshake's proof of key: an HMAC over a fresh challenge.

The signing key never crosses the wire. The MAC binds the gateway's nonce to the worker's
instance id, so an answer captured on one socket is worthless on another.
"""

from __future__ import annotations

import hashlib
import hmac

_CONTEXT = b"tether-connect-v1\x00"


def answer(signing_key: str, nonce: bytes, instance_id: str) -> bytes:
    """The MAC a worker holding ``signing_key`` sends back for ``nonce``."""
    message = _CONTEXT + nonce + b"\x00" + instance_id.encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).digest()


def verify(signing_keys: list[str], nonce: bytes, instance_id: str, mac: bytes) -> bool:
    """True when ``mac`` was made with one of ``signing_keys`` (several allow key rotation)."""
    return any(
        hmac.compare_digest(answer(key, nonce, instance_id), mac) for key in signing_keys
    )
