"""Time-ordered unique ids (ULIDs) for events, runs, sessions and leases.

Sorted by creation time, so listings and indexes keep insertion order, and readable in logs.
"""

from __future__ import annotations

import random

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUES = {char: index for index, char in enumerate(_ALPHABET)}
_random = random.Random()  # ids need uniqueness, not secrecy: no syscall per id


def new_id(now: float) -> str:
    """Return a 26-character ULID: 48 bits of ``now``'s milliseconds, then 80 random bits.

    ``now`` (epoch seconds) comes from the caller's clock: this module reads none.
    """
    ms = int(now * 1000)
    value = (ms << 80) | _random.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_time(value: str) -> float:
    """The creation time (epoch seconds, to the millisecond) of an id from :func:`new_id`."""
    ms = 0
    for char in value[:10]:
        ms = (ms << 5) | _VALUES[char]
    return ms / 1000
