"""Time-ordered unique ids (ULIDs) for events, runs, sessions and leases.

Sorted by creation time, so listings and indexes keep insertion order, and readable in logs.
"""

from __future__ import annotations

import random

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUES = {char: index for index, char in enumerate(_ALPHABET)}
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # index: 10 bits
_SHIFTS = range(120, -1, -10)
_random = random.Random()  # ids need uniqueness, not secrecy: no syscall per id


def new_id(now: float) -> str:
    """Return a 26-character ULID: 48 bits of ``now``'s milliseconds, then 80 random bits.

    ``now`` (epoch seconds) comes from the caller's clock: this module reads none.
    """
    value = (int(now * 1000) << 80) | _random.getrandbits(80)
    # 130 bits (2 leading zeros), ten bits (two characters) at a time, most significant first.
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def id_time(value: str) -> float:
    """The creation time (epoch seconds, to the millisecond) of an id from :func:`new_id`."""
    ms = 0
    for char in value[:10]:
        ms = (ms << 5) | _VALUES[char]
    return ms / 1000
