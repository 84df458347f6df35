"""Who may talk to the gateway: workers (signing key), senders (event keys), operators (bearer).

Without ``--dev`` a signing key is required; with ``--dev`` everything is open, for local use.
Secrets are compared in constant time, and a refusal never says which part was wrong.
"""

from __future__ import annotations

import hmac

from protocol import auth
from protocol.errors import AuthError


class Authenticator:
    def __init__(self, *, dev: bool, signing_keys: list[str], event_keys: list[str],
                 api_keys: list[str] | None = None) -> None:
        self.dev = dev
        self.signing_keys = signing_keys
        self.event_keys = event_keys
        self.api_keys = api_keys or []

    def check_worker(self, nonce: bytes, instance_id: str, mac: bytes) -> None:
        """Raises AuthError unless ``mac`` proves the worker holds a signing key."""
        if self.dev:
            return
        if not auth.verify(self.signing_keys, nonce, instance_id, mac):
            raise AuthError(
                "the worker's answer to the challenge does not match the gateway's signing key; "
                "start the worker with the same --signing-key (or TETHER_SIGNING_KEY)"
            )

    def check_event_key(self, key: str) -> None:
        """Raises AuthError unless ``key`` is a known event key (any key in --dev without keys)."""
        if self.dev and not self.event_keys:
            return
        if not _known(key, self.event_keys):
            raise AuthError(
                "unknown event key; send events to /e/<key> with a key given to the gateway "
                "with --event-key (or TETHER_EVENT_KEY)"
            )

    def check_bearer(self, header: str | None) -> None:
        """Raises AuthError unless ``header`` is ``Bearer <signing or API key>`` (open in --dev)."""
        if self.dev:
            return
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not _known(token.strip(),
                                                    self.signing_keys + self.api_keys):
            raise AuthError(
                "missing or wrong credentials; send 'Authorization: Bearer <signing key or "
                "API key>'"
            )


def _known(secret: str, keys: list[str]) -> bool:
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(secret.encode(), key.encode())
    return found
