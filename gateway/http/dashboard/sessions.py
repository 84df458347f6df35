"""Dashboard sessions: a random id in a cookie, mapped here to who logged in (never the key).

Sessions live in this gateway's memory: a restart, or another gateway behind the same address,
asks for the key again. Each session carries its own CSRF token, checked on every form post.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

#: How long a session lasts from login, in seconds.
SESSION_SECONDS = 12 * 3600
#: Sessions kept at most; logging in past this forgets the oldest.
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    """Who is looking: ``identity`` names the kind of key, never the key itself.

    ``stored_hash`` is the SHA-256 of a key from the store (None for one given on the command
    line, fixed for the gateway's life): such a session ends when that key is revoked.
    """

    id: str
    identity: str
    read_only: bool
    csrf: str
    expires_at: float
    stored_hash: str | None = None


class Sessions:
    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, identity: str, *, read_only: bool, now: float,
               stored_hash: str | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), identity, read_only,
                          secrets.token_urlsafe(32), now + SESSION_SECONDS, stored_hash)
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session of ``session_id``, or None (unknown or expired: it is dropped)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is not None and session.expires_at <= now:
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)
