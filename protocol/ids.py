"""Time-ordered unique ids (ULIDs) for events, runs, sessions and leases.

Sorted by creation time, so listings and indexes keep insertion order, and readable in logs.
"""

from __future__ import annotations

import random
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_random = random.Random()  # ids need uniqueness, not secrecy: no syscall per id


def new_id(now: float | None = None) -> str:
    """Return a 26-character ULID: 48 bits of milliseconds, then 80 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | _random.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
